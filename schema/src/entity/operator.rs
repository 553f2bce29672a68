//! The gateway's operators: who may open the dashboard, read reports and,
//! as `admin`, change maintenance windows and the directory. Rows are never
//! deleted: removing an operator sets `state = "removed"`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "operators")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    /// `viewer` or `admin`.
    pub role: String,
    /// Argon2id PHC string; `None`: logs in only with a client certificate.
    pub password_hash: Option<String>,
    /// `active`, `disabled` or `removed`.
    pub state: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub password_changed_at: Option<i64>,
    pub last_login_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
