//! The records that cross from the store into the rest of the gateway:
//! plain values in the domain's words, read out of the schema's rows here,
//! so that no query builder or column type travels with them.
//!
//! A stored string that has a type of its own (a delivery's route, a
//! message's kind) is read into it here. The store is the only writer of
//! those columns and writes them from those types, so a value that does not
//! read back was not written by this gateway: the read fails with an error
//! naming the row (which an operator can look up and repair), rather than
//! carrying a string every reader would have to judge again.

use lienthong_schema::entity::{
    agency, attachment, client_cert, delivery, event, message, signing_cert,
};
use lienthong_types::{MessageKind, Route};

use crate::error::{Error, Reason, Result};

/// An agency of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgencyRow {
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
    /// `None` for this gateway's own agencies; the peer gateway whose
    /// signed directory updates keep it, for a foreign one.
    pub source: Option<String>,
}

impl From<agency::Model> for AgencyRow {
    fn from(m: agency::Model) -> AgencyRow {
        AgencyRow {
            organ_id: m.organ_id,
            name: m.name,
            parent: m.parent,
            email: m.email,
            telephone: m.telephone,
            address: m.address,
            website: m.website,
            channel: m.channel,
            active: m.active,
            extra: m.extra,
            updated_at: m.updated_at,
            source: m.source,
        }
    }
}

/// An attachment of a message (its blob by SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRow {
    pub message_pk: i64,
    /// Its place among the message's attachments, from 0.
    pub idx: i32,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
}

impl From<attachment::Model> for AttachmentRow {
    fn from(m: attachment::Model) -> AttachmentRow {
        AttachmentRow {
            message_pk: m.message_pk,
            idx: m.idx,
            name: m.name,
            content_type: m.content_type,
            size: m.size,
            sha256: m.sha256,
        }
    }
}

/// A TLS client certificate bound to an agency or an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertRow {
    pub spki_sha256: String,
    /// The agency the software speaks for, or the operator's name.
    pub organ_id: String,
    /// `agency` or `operator`.
    pub role: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
    pub cert_der: Vec<u8>,
    pub bound_at: i64,
}

impl From<client_cert::Model> for ClientCertRow {
    fn from(m: client_cert::Model) -> ClientCertRow {
        ClientCertRow {
            spki_sha256: m.spki_sha256,
            organ_id: m.organ_id,
            role: m.role,
            subject: m.subject,
            issuer: m.issuer,
            not_after: m.not_after,
            cert_der: m.cert_der,
            bound_at: m.bound_at,
        }
    }
}

/// One recipient's copy of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// Orders a recipient's inbox.
    pub id: i64,
    /// The opaque id the recipient acknowledges.
    pub delivery_id: String,
    pub message_pk: i64,
    pub recipient: String,
    pub route: Route,
    /// `pending` until handed over for good: `acked`, `sent` (to another
    /// gateway) or `withdrawn` (recalled before it was delivered).
    pub state: String,
    pub attempts: i32,
    pub created_at: i64,
    pub last_delivered_at: Option<i64>,
    pub acked_at: Option<i64>,
}

impl DeliveryRow {
    /// The row as written, with the route it was written with.
    pub(crate) fn written(m: delivery::Model, route: Route) -> DeliveryRow {
        DeliveryRow {
            id: m.id,
            delivery_id: m.delivery_id,
            message_pk: m.message_pk,
            recipient: m.recipient,
            route,
            state: m.state,
            attempts: m.attempts,
            created_at: m.created_at,
            last_delivered_at: m.last_delivered_at,
            acked_at: m.acked_at,
        }
    }
}

impl TryFrom<delivery::Model> for DeliveryRow {
    type Error = Error;

    fn try_from(m: delivery::Model) -> Result<DeliveryRow> {
        match Route::parse(&m.route) {
            Some(route) => Ok(DeliveryRow::written(m, route)),
            None => Err(Error::new(
                Reason::Internal,
                format!(
                    "delivery {} (message {}, to {}) has a route this gateway cannot read ({:?})",
                    m.delivery_id, m.message_pk, m.recipient, m.route
                ),
            )),
        }
    }
}

/// A line of the transfer log. Its place in the hash chain stays in the
/// store, which alone writes and verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    /// What happened (`accepted`, `rejected`, `delivered`, …): the store's
    /// `EventKind` as written, kept as text since lines written by other
    /// versions of the gateway are read too.
    pub kind: String,
    /// The sender of the message the line is about (empty when a
    /// submission was refused before its sender could be read).
    pub sender: String,
    pub message_id: String,
    pub recipient: Option<String>,
    /// Reason code of a refusal, or status code of a status.
    pub reason: Option<String>,
    pub detail: String,
    /// The authenticated caller that caused it, when there was one.
    pub actor: Option<String>,
    /// The transport it came through: grpc, amqp, cli.
    pub transport: String,
}

impl From<event::Model> for EventRow {
    fn from(m: event::Model) -> EventRow {
        EventRow {
            id: m.id,
            at: m.at,
            kind: m.kind,
            sender: m.sender,
            message_id: m.message_id,
            recipient: m.recipient,
            reason: m.reason,
            detail: m.detail,
            actor: m.actor,
            transport: m.transport,
        }
    }
}

/// A message as accepted: the signed envelope exactly as received, and
/// what the gateway verified and read out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub id: i64,
    pub sender: String,
    pub message_id: String,
    pub kind: MessageKind,
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
    /// The hops made before this gateway (serialized `TraceHop`s).
    pub upstream: Option<Vec<u8>>,
    /// 0 new, 1 recall, 2 update, 3 replace (`business.type`).
    pub business_type: i32,
    /// For a recall, update or replacement: the document_id it refers to.
    pub replaces: Option<String>,
    /// 0 normal … 4 scheduled express.
    pub priority: i32,
    /// The end of its DueDate (Vietnam time), microseconds.
    pub due_at: Option<i64>,
    /// Its DueDate `yyyy-MM-dd` or empty; `None`: not read out yet.
    pub due_date: Option<String>,
    /// Số/ký hiệu.
    pub code: Option<String>,
    /// Trích yếu.
    pub subject: Option<String>,
    /// The archive package holding a copy of it; once purged, the row is a
    /// tombstone, its envelope and verification report empty.
    pub archived: Option<ArchivedAt>,
}

/// An archived message's place: the package file and the folder in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedAt {
    pub package: String,
    pub entry: String,
    /// When its content left the hot database; `None`: still here too.
    pub purged_at: Option<i64>,
}

impl MessageRow {
    /// Whether its content has left the hot database.
    pub fn purged(&self) -> bool {
        self.archived
            .as_ref()
            .is_some_and(|a| a.purged_at.is_some())
    }
}

impl MessageRow {
    /// The row as written, with the kind it was written with.
    pub(crate) fn written(m: message::Model, kind: MessageKind) -> MessageRow {
        MessageRow {
            id: m.id,
            sender: m.sender,
            message_id: m.message_id,
            kind,
            document_id: m.document_id,
            ref_from: m.ref_from,
            status_code: m.status_code,
            envelope_sha256: m.envelope_sha256,
            signed_envelope: m.signed_envelope,
            verification: m.verification,
            accepted_at: m.accepted_at,
            attachment_count: m.attachment_count,
            upstream: m.upstream,
            business_type: m.business_type,
            replaces: m.replaces,
            priority: m.priority,
            due_at: m.due_at,
            due_date: m.due_date,
            code: m.code,
            subject: m.subject,
            archived: m.archived_in.map(|package| ArchivedAt {
                package,
                entry: m.archive_entry.unwrap_or_default(),
                purged_at: m.purged_at,
            }),
        }
    }
}

impl TryFrom<message::Model> for MessageRow {
    type Error = Error;

    fn try_from(m: message::Model) -> Result<MessageRow> {
        match MessageKind::parse(&m.kind) {
            Some(kind) => Ok(MessageRow::written(m, kind)),
            None => Err(Error::new(
                Reason::Internal,
                format!(
                    "message {} ({} of {}) has a kind this gateway cannot read ({:?})",
                    m.id, m.message_id, m.sender, m.kind
                ),
            )),
        }
    }
}

/// A document-signing certificate bound to an agency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningCertRow {
    pub spki_sha256: String,
    pub organ_id: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
    pub cert_der: Vec<u8>,
    pub bound_at: i64,
}

impl From<signing_cert::Model> for SigningCertRow {
    fn from(m: signing_cert::Model) -> SigningCertRow {
        SigningCertRow {
            spki_sha256: m.spki_sha256,
            organ_id: m.organ_id,
            subject: m.subject,
            issuer: m.issuer,
            not_after: m.not_after,
            cert_der: m.cert_der,
            bound_at: m.bound_at,
        }
    }
}

/// Reads rows that all convert, or names the first that does not.
pub(crate) fn read_all<M, R>(models: Vec<M>) -> Result<Vec<R>>
where
    R: TryFrom<M, Error = Error>,
{
    models.into_iter().map(R::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(route: &str) -> delivery::Model {
        delivery::Model {
            id: 7,
            delivery_id: "d7".into(),
            message_pk: 3,
            recipient: "000.00.01.H35".into(),
            route: route.into(),
            state: "pending".into(),
            attempts: 0,
            created_at: 1,
            last_delivered_at: None,
            acked_at: None,
        }
    }

    #[test]
    fn a_route_reads_into_its_type_or_names_the_delivery() {
        let d = DeliveryRow::try_from(delivery("queue:lienthong.agency.x")).unwrap();
        assert_eq!(d.route, Route::Queue("lienthong.agency.x".into()));
        let e = DeliveryRow::try_from(delivery("pigeon")).unwrap_err();
        assert_eq!(e.reason(), Reason::Internal);
        let text = e.message();
        assert!(
            text.contains("delivery d7") && text.contains("\"pigeon\""),
            "{text}"
        );
    }
}
