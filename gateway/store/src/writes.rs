//! What the store writes, as the rest of the gateway hands it over: a
//! message to accept, a line of the transfer log (and the hash that chains
//! it), and what became of an acceptance or an acknowledgement.

use std::sync::Arc;

use lienthong_schema::migration::{GENESIS, MAIN_CHAIN};
use lienthong_types::error::Error;
use lienthong_types::{MessageKind, Route};
use sea_orm::DbErr;

/// What happened to a message. The strings are what the transfer log and
/// `Trace` show; reports count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Accepted,
    Routed,
    Rejected,
    Delivered,
    Acknowledged,
    StatusReceived,
    Duplicate,
    /// A stored attachment failed its digest check when it was read.
    IntegrityFailed,
    /// A recalled document taken out of an inbox before delivery.
    Withdrawn,
    /// A deadline passed with a recipient not there yet.
    Overdue,
    /// The directory changed: an agency added, changed, deactivated or
    /// activated, a certificate bound or unbound, a representation granted
    /// or revoked. `sender` is the agency concerned (empty for an import as
    /// a whole or an operator's certificate), `message_id` is empty, `actor`
    /// who made the change.
    DirectoryChanged,
    /// Calls from one peer refused before their caller was identified,
    /// summed over a minute (one line per peer, never one per call).
    Unauthenticated,
    /// An operator account was added, removed, disabled, enabled or given
    /// a new password (`actor`: who did it; `detail`: what).
    OperatorChanged,
    /// An operator logged in (`reason` empty), or logins failed (`reason`
    /// `LOGIN_FAILED`, one line per peer and minute at most).
    OperatorLogin,
    /// An operator logged out.
    OperatorLogout,
    /// A replica's signed record of every chain's head (`detail`: see
    /// `crate::checkpoint`); no sender, no message.
    Checkpoint,
    /// `lienthong verify` (or `migrate`'s checks around a migration) ran:
    /// `detail` the mode, whether everything held and what was found;
    /// `actor` who ran it. No sender, no message.
    IntegrityChecked,
    /// A backup finished (`reason` empty) or failed (`reason`
    /// `BACKUP_FAILED`): `detail` is a JSON object with `dir` (where),
    /// and `bytes` and `files` when it finished, `error` when it failed;
    /// `actor` who ran it (`schedule` under `serve`). No sender, no message.
    Backup,
    /// A message's content left the hot database for an archive package:
    /// `reason` the package's file name, `detail` the folder in it, `actor`
    /// who ran the purge. Its row stays as the tombstone.
    Archived,
    /// A peer gateway's directory update or snapshot was refused, or a
    /// snapshot asked for (`reason` the code, `detail` what and why,
    /// `actor` the peer, `sender` the agency concerned when there is one).
    /// What was applied is written as `directory_changed` lines.
    DirectoryRefused,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Routed => "routed",
            EventKind::Rejected => "rejected",
            EventKind::Delivered => "delivered",
            EventKind::Acknowledged => "acknowledged",
            EventKind::StatusReceived => "status_received",
            EventKind::Duplicate => "duplicate",
            EventKind::IntegrityFailed => "integrity_failed",
            EventKind::Withdrawn => "withdrawn",
            EventKind::Overdue => "overdue",
            EventKind::DirectoryChanged => "directory_changed",
            EventKind::Unauthenticated => "unauthenticated",
            EventKind::OperatorChanged => "operator_changed",
            EventKind::OperatorLogin => "operator_login",
            EventKind::OperatorLogout => "operator_logout",
            EventKind::Checkpoint => "checkpoint",
            EventKind::IntegrityChecked => "integrity_checked",
            EventKind::Backup => "backup",
            EventKind::Archived => "archived",
            EventKind::DirectoryRefused => "directory_refused",
        }
    }
}

/// One line of the transfer log, before it is written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventKind,
    pub sender: String,
    pub message_id: String,
    pub recipient: Option<String>,
    pub reason: Option<String>,
    pub detail: String,
    pub actor: Option<String>,
    pub transport: String,
}

/// Who appends to the transfer log, and so which of its hash chains: each
/// writer extends a chain of its own, named by it, so that gateway replicas
/// sharing one database never queue for one another's head. A process
/// writes to one chain only — its pipeline, directory changes, refusals,
/// relay and command-line tools alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WriterId(Arc<str>);

impl WriterId {
    /// The longest name: a host or pod name fits.
    pub const MAX_LEN: usize = 63;

    /// The default chain: a gateway without a replica name, and every event
    /// written before chains had names.
    pub fn main() -> WriterId {
        WriterId(Arc::from(MAIN_CHAIN))
    }

    /// A writer named `name`: 1 to 63 ASCII letters, digits, `.`, `_` or
    /// `-`, beginning with a letter or a digit, so that it reads the same
    /// in the log, in SQL and in a shell.
    pub fn new(name: &str) -> Result<WriterId, Error> {
        let well_formed = (1..=Self::MAX_LEN).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !well_formed {
            return Err(Error::malformed(format!(
                "{} cannot name a chain of the transfer log: use 1 to {} ASCII letters, digits, \
                 '.', '_' or '-', beginning with a letter or a digit",
                lienthong_types::text::quote(name),
                Self::MAX_LEN
            )));
        }
        Ok(WriterId(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash before this writer's first event.
    pub fn genesis(&self) -> String {
        chain_genesis(&self.0)
    }
}

impl Default for WriterId {
    fn default() -> Self {
        WriterId::main()
    }
}

impl std::fmt::Display for WriterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hash before a chain's first event.
///
/// The `main` chain keeps the genesis the one chain always had (zeros), so
/// that logs written before chains had names verify unchanged. Any other
/// chain starts from a hash of its name: its first link, and through it
/// every later one, commits to the chain it was written in. Positions and
/// links already catch one event moved into another chain; this also
/// catches a whole chain relabelled — one replica's events passed off as
/// another's, or as `main`'s — which would otherwise verify as well under
/// its new name as under its own.
pub fn chain_genesis(chain: &str) -> String {
    if chain == MAIN_CHAIN {
        return GENESIS.to_owned();
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"lienthong-log-chain-v1\n");
    ctx.update(format!("{}:", chain.len()).as_bytes());
    ctx.update(chain.as_bytes());
    hex::encode(ctx.finish())
}

impl NewEvent {
    /// Its hash at position `seq` of a chain, after the event whose hash is
    /// `prev_hash`, written at `at`.
    pub fn chain_hash(&self, prev_hash: &str, seq: i64, at: i64) -> String {
        chain_hash(
            prev_hash,
            seq,
            at,
            self.kind.as_str(),
            &self.sender,
            &self.message_id,
            self.recipient.as_deref(),
            self.reason.as_deref(),
            &self.detail,
            self.actor.as_deref(),
            &self.transport,
        )
    }
}

/// The hash of one transfer-log event, chained to the one before it.
///
/// Every field is length-prefixed so that no two different events encode
/// the same bytes; `None` and `Some("")` differ.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    at: i64,
    kind: &str,
    sender: &str,
    message_id: &str,
    recipient: Option<&str>,
    reason: Option<&str>,
    detail: &str,
    actor: Option<&str>,
    transport: &str,
) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"lienthong-log-v1\n");
    let mut field = |v: Option<&str>| match v {
        Some(v) => {
            ctx.update(format!("{}:", v.len()).as_bytes());
            ctx.update(v.as_bytes());
        }
        None => ctx.update(b"-:"),
    };
    field(Some(prev_hash));
    field(Some(&seq.to_string()));
    field(Some(&at.to_string()));
    field(Some(kind));
    field(Some(sender));
    field(Some(message_id));
    field(recipient);
    field(reason);
    field(Some(detail));
    field(actor);
    field(Some(transport));
    hex::encode(ctx.finish())
}

#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub sha256_hex: String,
}

/// Everything a message's acceptance writes.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender: String,
    pub message_id: String,
    pub kind: MessageKind,
    pub document_id: String,
    pub ref_from: Option<String>,
    pub status_code: Option<String>,
    pub envelope_sha256_hex: String,
    pub signed_envelope: Vec<u8>,
    pub verification: Vec<u8>,
    pub accepted_at: i64,
    pub attachments: Vec<NewAttachment>,
    /// (recipient, route): `local`, `exchange:<name>` or `queue:<name>`.
    pub recipients: Vec<(String, Route)>,
    /// Recipients another gateway serves, that it got from elsewhere: traced,
    /// not delivered (the loop rule of `routing`).
    pub elsewhere: Vec<String>,
    /// Serialized `pipeline::Hops`: where the message was before.
    pub upstream: Option<Vec<u8>>,
    pub actor: String,
    /// The agency that sent it in the sender's name (a representation),
    /// for the log line.
    pub agent: Option<String>,
    pub transport: String,
    /// `business.type` of a document (0 new, 1 recall, 2 update, 3 replace).
    pub business_type: i32,
    /// The document_id a recall, update or replacement refers to.
    pub replaces: Option<String>,
    /// A recall: the deliveries of the recalled document to take out of
    /// their inboxes (delivery pk, recipient, route), if they still have
    /// not been handed out when this commits; those that were meanwhile get
    /// the recall delivered instead.
    pub withdraw: Vec<(i64, String, Route)>,
    /// What the lifecycle says about it, for its log line: a status's
    /// effect on the recipient's state; a document sent late.
    pub status_note: Option<String>,
    pub priority: i32,
    pub due_at: Option<i64>,
    /// A document's facts for the reports and the dashboard, written with
    /// it so that they only read.
    pub index: Option<DocumentIndex>,
}

/// What [`Store::index_documents`] (and the pipeline, as it accepts) copies out of a document's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocumentIndex {
    /// `yyyy-MM-dd`, or empty.
    pub due_date: String,
    pub code: String,
    pub subject: String,
}

/// Why an acceptance did not commit.
#[derive(Debug)]
pub enum AcceptError {
    /// (sender, message_id) was accepted before, maybe concurrently.
    AlreadyExists,
    Db(DbErr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Acknowledged,
    AlreadyAcknowledged,
}
