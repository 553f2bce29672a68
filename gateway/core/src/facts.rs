//! A document's report facts (DueDate, số/ký hiệu, trích yếu), read out of
//! its envelope when it is accepted so that reports and the dashboard only
//! read columns, never decode envelopes.

use lienthong_proto::v1::{Envelope, SignedEnvelope, envelope::Body};
use lienthong_store::reports::DocumentIndex;
use lienthong_types::calendar::{iso_date, parse_date};
use lienthong_types::text::truncate;
use prost::Message as _;

/// The facts of an envelope's document (`None` for a status notice):
/// DueDate as `yyyy-MM-dd` (empty when missing or invalid), số/ký hiệu as
/// `15/QĐ-UBND` (empty when the document has neither), trích yếu cut at
/// 500 bytes.
pub fn of(envelope: &Envelope) -> Option<DocumentIndex> {
    let Some(Body::Document(doc)) = &envelope.body else {
        return None;
    };
    let due_date = parse_date(&doc.due_date).map(iso_date).unwrap_or_default();
    let (n, k) = (doc.code_number.trim(), doc.code_notation.trim());
    let code = match (n.is_empty(), k.is_empty()) {
        (false, false) => format!("{n}/{k}"),
        (false, true) => n.to_owned(),
        (true, false) => k.to_owned(),
        (true, true) => String::new(),
    };
    Some(DocumentIndex {
        due_date,
        code: truncate(&code, 60).to_owned(),
        subject: truncate(doc.subject.trim(), 500).to_owned(),
    })
}

/// The facts of a stored `SignedEnvelope`; unreadable bytes give empty facts.
pub fn of_signed(bytes: &[u8]) -> DocumentIndex {
    SignedEnvelope::decode(bytes)
        .ok()
        .and_then(|s| Envelope::decode(s.payload).ok())
        .and_then(|e| of(&e))
        .unwrap_or_default()
}
