//! What must still be published to AMQP: one row per delivery routed to an
//! exchange or an agency's queue, written with the message it belongs to.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub delivery_pk: i64,
    pub message_pk: i64,
    /// The exchange to publish to; `""` is the default exchange (an agency's
    /// own queue, named by `routing_key`).
    pub exchange: String,
    pub routing_key: String,
    /// `pending` until the broker confirms, then `sent`.
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
