//! edXML (QCVN 102:2016) packages to and from lienthong envelopes.
//!
//! A pure codec: no database, no network. [`decode`] reads a package from
//! any `Read` in one streaming pass: the header becomes an [`Envelope`], each
//! attachment's base64 text is decoded as it streams into an
//! [`AttachmentSink`] (a directory of temporary files, memory, or only a
//! digest), so neither an attachment nor the package is ever held whole.
//! [`encode`] writes an `Envelope` and its attachment bytes (from an
//! [`AttachmentSource`]) back as a package, optionally with one more
//! `TraceHeader` for the gateway's hop. [`validate`] lists what a package
//! lacks under a [`Policy`]; [`inspect_json`] describes it for people.
//!
//! What survives: `edXML → Envelope → edXML` keeps every element, attribute
//! and value (order, whitespace, comments, namespace prefixes and empty
//! versus absent standard elements may change): whatever has no field of its
//! own is kept verbatim in `Envelope.extensions`. `Envelope → edXML →
//! Envelope` is the identity for envelopes in the form [`decode`] produces;
//! for others see [`encode`].
//!
//! Security: DOCTYPE declarations are refused, so entities can neither be
//! declared nor expanded; references to undeclared entities are refused;
//! element depth, every text or tag outside attachment content, and the
//! header as a whole are bounded by [`Limits`].

mod decode;
mod encode;
mod sink;
mod validate;
mod values;
mod xml;

pub use decode::{DecodeOptions, Limits, Problem, decode};
pub use encode::{EncodeOptions, encode, encode_to_vec, trace_header};
pub use sink::{
    AttachmentMeta, AttachmentSink, AttachmentSource, DigestSink, DirSink, DirSource, FnSource,
    MemorySink, MemorySource, NoAttachments, ReadSeek, ZipEntry, not_begun, unzip_single,
};
pub use validate::{
    Policy, check, inspect_file, inspect_json, refusal, validate, validate_envelope,
};
pub use values::format_timestamp;
pub use xml::NAMESPACE;

use lienthong_proto::v1::{Envelope, envelope::Body};
use time::OffsetDateTime;

/// A decoded package: the envelope and what the codec learned on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    /// Ready for the pipeline: `message_id` is [`DecodeOptions::message_id`]
    /// or, without one, `edxml-` and the hex SHA-256 of the package bytes
    /// (the same package sent twice gets the same id). `created_at` is the
    /// first TraceHeader's Timestamp (a status's own Timestamp when it has
    /// none). Attachments carry name, content type, description, ContentId,
    /// size and SHA-256 of the decoded bytes.
    pub envelope: Envelope,
    /// One per `Document.attachments` entry, in the same order.
    pub attachments: Vec<AttachmentInfo>,
    /// The package's `Signature` element, if it has one. The gateway does
    /// not trust it (it cannot check an enveloped XML-DSig, and real
    /// packages carry placeholders); it is reported for people to read.
    pub signature: Option<SignatureInfo>,
    /// Things the decoder tolerated (text before the root element, an
    /// undeclared `edXML:` prefix…): problems under [`Policy::Strict`] only.
    pub notices: Vec<Problem>,
    /// SHA-256 of the package bytes as read.
    pub sha256: [u8; 32],
    /// Length of the package in bytes.
    pub size: u64,
}

/// Whether a package carries a document or a status notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Document,
    Status,
}

impl Package {
    pub fn kind(&self) -> Kind {
        kind_of(&self.envelope)
    }
}

pub(crate) fn kind_of(env: &Envelope) -> Kind {
    match env.body {
        Some(Body::Status(_)) => Kind::Status,
        _ => Kind::Document,
    }
}

/// What the decoder found out about one attachment beyond its `AttachmentRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The decoded bytes start like a ZIP archive.
    pub is_zip: bool,
    /// When the attachment is a ZIP holding exactly one file: that file.
    /// The ZIP itself stays the attachment that is carried and signed for;
    /// [`unzip_single`] writes the inner file out on demand. Only filled
    /// when the sink can read attachments back ([`MemorySink`], [`DirSink`]).
    pub zip_entry: Option<ZipEntry>,
}

/// The package's enveloped signature, as far as the gateway reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignatureInfo {
    /// Certificates from Signature/KeyInfo/X509Data/X509Certificate.
    pub certificates: Vec<Certificate>,
    /// Sentences about X509Certificate values that are not certificates
    /// (real packages carry truncated placeholders).
    pub unreadable: Vec<String>,
}

/// An X.509 certificate found in the package's Signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub subject: String,
    pub issuer: String,
    /// Hex, as the certificate writes it.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DER bytes, for whoever wants to check the chain.
    pub der: Vec<u8>,
}

impl Certificate {
    /// Whether `at` falls within the certificate's validity.
    pub fn is_valid_at(&self, at: OffsetDateTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}
