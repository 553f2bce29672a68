//! Logged-in operators. The token itself is only in the browser's cookie;
//! the row keys on its SHA-256.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "operator_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_sha256: String,
    pub operator_id: i64,
    /// What every state-changing request of the session must carry.
    pub csrf_token: String,
    /// `password` or `certificate`.
    pub via: String,
    /// Where the login came from (IP address).
    pub peer: String,
    pub created_at: i64,
    /// Moves forward as the session is used (at most once a minute).
    pub last_seen_at: i64,
    /// The absolute end, whatever the use.
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
