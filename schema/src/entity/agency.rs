//! The directory: one row per agency (mã định danh).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agencies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub organ_id: String,
    pub name: String,
    pub parent: Option<String>,
    pub email: String,
    pub telephone: String,
    pub address: String,
    pub website: String,
    /// `grpc` or `amqp`: how deliveries reach the agency.
    pub channel: String,
    pub active: bool,
    /// Extra CSV columns, as a JSON object of strings.
    pub extra: String,
    pub updated_at: i64,
    /// `None` for this gateway's own agencies; the peer gateway's name for
    /// an agency applied from its signed directory updates.
    pub source: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
