//! The one error type of the core.
//!
//! Every refusal the gateway gives has a stable [`Reason`] (the kind), a
//! sentence saying what to fix, an optional source to walk to the cause, and
//! whether trying again can help. Adapters turn it into their own wire form
//! (a gRPC status with `google.rpc.ErrorInfo`, an AMQP dead-letter header).

use std::fmt;

/// The stable reason codes of DESIGN.md §4. Their `as_str` forms are part of
/// the contract: agency software matches on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    BadIdentifier,
    UnknownRecipient,
    UnknownSender,
    SenderMismatch,
    BadSignature,
    UntrustedCertificate,
    CertificateExpired,
    CertificateRevoked,
    CertificateNotBound,
    DigestMismatch,
    SizeLimit,
    Malformed,
    SecretDocument,
    DuplicateConflict,
    NotFound,
    PermissionDenied,
    NotRoutable,
    RateLimited,
    DocumentUnsigned,
    DocumentSignatureInvalid,
    /// A passing fault (database or disk unavailable): try again.
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 21] = [
        Reason::BadIdentifier,
        Reason::UnknownRecipient,
        Reason::UnknownSender,
        Reason::SenderMismatch,
        Reason::BadSignature,
        Reason::UntrustedCertificate,
        Reason::CertificateExpired,
        Reason::CertificateRevoked,
        Reason::CertificateNotBound,
        Reason::DigestMismatch,
        Reason::SizeLimit,
        Reason::Malformed,
        Reason::SecretDocument,
        Reason::DuplicateConflict,
        Reason::NotFound,
        Reason::PermissionDenied,
        Reason::NotRoutable,
        Reason::RateLimited,
        Reason::DocumentUnsigned,
        Reason::DocumentSignatureInvalid,
        Reason::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadIdentifier => "BAD_IDENTIFIER",
            Reason::UnknownRecipient => "UNKNOWN_RECIPIENT",
            Reason::UnknownSender => "UNKNOWN_SENDER",
            Reason::SenderMismatch => "SENDER_MISMATCH",
            Reason::BadSignature => "BAD_SIGNATURE",
            Reason::UntrustedCertificate => "UNTRUSTED_CERTIFICATE",
            Reason::CertificateExpired => "CERTIFICATE_EXPIRED",
            Reason::CertificateRevoked => "CERTIFICATE_REVOKED",
            Reason::CertificateNotBound => "CERTIFICATE_NOT_BOUND",
            Reason::DigestMismatch => "DIGEST_MISMATCH",
            Reason::SizeLimit => "SIZE_LIMIT",
            Reason::Malformed => "MALFORMED",
            Reason::SecretDocument => "SECRET_DOCUMENT",
            Reason::DuplicateConflict => "DUPLICATE_CONFLICT",
            Reason::NotFound => "NOT_FOUND",
            Reason::PermissionDenied => "PERMISSION_DENIED",
            Reason::NotRoutable => "NOT_ROUTABLE",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::DocumentUnsigned => "DOCUMENT_UNSIGNED",
            Reason::DocumentSignatureInvalid => "DOCUMENT_SIGNATURE_INVALID",
            Reason::Unavailable => "UNAVAILABLE",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the same request may succeed later without being changed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Reason::Unavailable | Reason::RateLimited)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A refusal or failure with its reason, a sentence for the person who must
/// fix it, and the underlying cause when there is one.
#[derive(Debug)]
pub struct Error {
    reason: Reason,
    message: String,
    source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Error {
            reason,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A passing fault of a dependency (database, disk): the request is fine
    /// and may be sent again.
    pub fn unavailable(what: &str, source: impl Into<Source>) -> Self {
        Error::new(
            Reason::Unavailable,
            format!("{what} is unavailable right now; nothing was accepted, send it again later"),
        )
        .with_source(source)
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Error::new(Reason::Malformed, message)
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The sentence for the person who must fix the request.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.reason.is_retryable()
    }

    /// The message followed by every cause, for logs.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        Error::unavailable("the database", e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::unavailable("the attachment store", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {r}");
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("NOPE"), None);
    }

    #[test]
    fn chain_walks_to_the_cause() {
        let io = std::io::Error::other("disk full");
        let e = Error::unavailable("the attachment store", io);
        assert_eq!(e.reason(), Reason::Unavailable);
        assert!(e.chain().ends_with(": disk full"), "{}", e.chain());
        assert!(e.is_retryable());
    }
}
