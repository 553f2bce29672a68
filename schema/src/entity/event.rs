//! The transfer log: append-only, one row per thing that happened to a
//! message. Rows are never updated or deleted.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: i64,
    /// accepted, rejected, delivered, acknowledged, status_received, duplicate.
    pub kind: String,
    /// The sender of the message the event is about (may be empty when a
    /// submission was refused before its sender could be read).
    pub sender: String,
    pub message_id: String,
    pub recipient: Option<String>,
    /// Reason code of a rejection, or status code of a status.
    pub reason: Option<String>,
    pub detail: String,
    /// The authenticated caller that caused the event, when there was one.
    pub actor: Option<String>,
    /// The transport it came through: grpc, amqp, cli.
    pub transport: String,
    /// The hash chain it belongs to: the writer that appended it (a gateway
    /// replica), `main` for a gateway without a replica name and for every
    /// event written before chains had names.
    pub chain: String,
    /// Position in its chain (1, 2, 3, ...).
    pub chain_seq: Option<i64>,
    /// Hash of the event at `chain_seq - 1` of the same chain (the chain's
    /// genesis hash for the first).
    pub prev_hash: Option<String>,
    /// SHA-256 over `prev_hash` and this event's fields (see the core's
    /// `store::chain_hash`).
    pub hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
