//! The heads of the transfer log's hash chains: one row per chain (per
//! writer), keyed by the chain's name.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "log_head")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub chain: String,
    /// `1` on the `main` chain's row, empty on the others: the name the
    /// releases before named chains knew that row by.
    pub id: Option<i32>,
    /// The chain's last position (0 before its first event).
    pub seq: i64,
    /// The hash of the event at `seq` (the chain's genesis hash at 0).
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
