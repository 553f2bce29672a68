//! Accepted messages: the signed envelope exactly as received, and what the
//! gateway verified. Unique on (sender, message_id): the dedupe key.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub sender: String,
    pub message_id: String,
    /// `document` or `status`.
    pub kind: String,
    /// The document's id (for a status: the id of the document it answers).
    pub document_id: String,
    /// For a status: the agency that sent the document it answers.
    pub ref_from: Option<String>,
    /// For a status: its code (01..16).
    pub status_code: Option<String>,
    pub envelope_sha256: String,
    pub signed_envelope: Vec<u8>,
    /// A serialized `lienthong.v1.Verification`.
    pub verification: Vec<u8>,
    pub accepted_at: i64,
    pub attachment_count: i32,
    /// The hops made before this gateway (serialized `TraceHop`s), for
    /// messages that came from another gateway.
    pub upstream: Option<Vec<u8>>,
    /// 0 new, 1 recall, 2 update, 3 replace (`business.type`).
    pub business_type: i32,
    /// For a recall, update or replacement: the document_id it refers to.
    pub replaces: Option<String>,
    /// The document's priority (0 normal … 4 scheduled express).
    pub priority: i32,
    /// The end of its DueDate (Vietnam time), microseconds.
    pub due_at: Option<i64>,
    /// What the reports and the dashboard read out of a document's envelope
    /// (its DueDate `yyyy-MM-dd` or empty, số/ký hiệu, trích yếu), written
    /// when it is accepted; `NULL` `due_date` means "not read yet" (rows
    /// older than these columns, filled by the reports' indexing sweep).
    pub due_date: Option<String>,
    pub code: Option<String>,
    pub subject: Option<String>,
    /// The archive package holding a copy of it.
    pub archived_in: Option<String>,
    /// Its folder in that package.
    pub archive_entry: Option<String>,
    /// When its content left the hot database (the row is a tombstone).
    pub purged_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
