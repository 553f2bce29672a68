//! One row per (message, recipient). `id` orders each recipient's inbox.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Opaque id handed to the recipient for `Ack`.
    pub delivery_id: String,
    pub message_pk: i64,
    pub recipient: String,
    /// `local`, or `exchange:<name>`.
    pub route: String,
    /// `pending` until acknowledged, then `acked`.
    pub state: String,
    pub attempts: i32,
    pub created_at: i64,
    pub last_delivered_at: Option<i64>,
    pub acked_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
