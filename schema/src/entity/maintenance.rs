//! Maintenance windows announced by the gateway's operators. Rows are
//! never deleted: a cancelled window keeps its row with `cancelled_at`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "maintenance_windows")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// When the maintenance begins (Unix microseconds).
    pub starts_at: i64,
    /// When it is over (Unix microseconds), after `starts_at`.
    pub ends_at: i64,
    /// What agencies and the dashboard are told (at most 500 characters).
    pub message: String,
    pub announced_at: i64,
    /// Set when an operator cancelled the window.
    pub cancelled_at: Option<i64>,
    /// False when the operators expect no interruption (a rolling upgrade
    /// of the replicas); true by default.
    pub interruption_expected: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
