//! The words every part of lienthong shares, and nothing that does I/O:
//! the error type and its reason codes ([`error`]), agency identifiers and
//! routing-key patterns ([`organ_id`]), a message's kind and a
//! delivery's [`Route`], which characters an envelope's text
//! fields may hold ([`text`]), Vietnam time, report periods and the working
//! calendar ([`calendar`]), and the time and digest helpers below.
//!
//! Architecture invariant: this crate depends on the protobuf messages
//! alone (no database, network, file or clock other than `now_micros`), so
//! the edXML codec, the PKI and the PDF checks can use it without linking
//! the gateway.

pub mod calendar;
pub mod error;
pub mod organ_id;
pub mod route;
pub mod text;

pub use error::{Context, Error, Fault, OrErr, Reason, Result};
pub use organ_id::OrganId;
pub use route::{MessageKind, Route};

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as Unix microseconds (the schema's time unit).
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Unix microseconds → protobuf timestamp.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}
