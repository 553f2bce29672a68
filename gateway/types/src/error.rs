//! The one error type of the gateway.
//!
//! Every refusal the gateway gives has a stable [`Reason`] (the kind), a
//! sentence saying what to fix, an optional source to walk to the cause, and
//! whether trying again can help. Adapters turn it into their own wire form
//! (a gRPC status with `google.rpc.ErrorInfo`, an AMQP dead-letter header).
//!
//! [`OrErr`] and [`Context`] keep call sites short: `read(path).or_err_with(
//! Reason::Malformed, |e| format!("cannot read {path}: {e}"))?` instead of a
//! `map_err` closure building the error by hand.

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
    /// The gateway failed on the request in a way that is neither the
    /// request's fault nor a passing outage (a database error it did not
    /// expect): sending it again unchanged will likely fail the same way.
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 22] = [
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
        Reason::Internal,
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
            Reason::Internal => "INTERNAL",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the same request may succeed later without being changed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Reason::Unavailable | Reason::RateLimited)
    }

    /// Whether the fault is the gateway's rather than the request's: a
    /// passing outage or an internal failure. A queue consumer holds such a
    /// message instead of refusing it at once.
    pub fn is_gateway_fault(self) -> bool {
        matches!(
            self,
            Reason::Unavailable | Reason::RateLimited | Reason::Internal
        )
    }
}

/// Whose fault a failure is: it decides whether the caller should change
/// the request, or wait and send it again (or tell the gateway's operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request: sending it again unchanged fails the same way.
    Caller,
    /// The gateway or a dependency of it: a passing outage, a rate limit or
    /// an internal failure.
    Gateway,
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

    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        if self.reason.is_gateway_fault() {
            Fault::Gateway
        } else {
            Fault::Caller
        }
    }

    /// The same error with `context` before its sentence (which file, which
    /// field, which certificate), keeping its reason and source.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The same sentence and source under another reason.
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = reason;
        self
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

/// `{}` prints the reason and the sentence; `{:#}` adds every cause.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            write!(f, "{}: {}", self.reason, self.chain())
        } else {
            write!(f, "{}: {}", self.reason, self.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Turns any error into the gateway's, with the original kept as its source.
pub trait OrErr<T, E> {
    /// This reason and sentence.
    fn or_err(self, reason: Reason, message: impl Into<String>) -> Result<T>;
    /// A sentence made from the error (for when it names what went wrong).
    fn or_err_with<M: Into<String>>(
        self,
        reason: Reason,
        message: impl FnOnce(&E) -> M,
    ) -> Result<T>;
    /// A passing fault of `what` (the database, the attachment store).
    fn or_unavailable(self, what: &str) -> Result<T>;
}

impl<T, E> OrErr<T, E> for std::result::Result<T, E>
where
    E: Into<Source>,
{
    fn or_err(self, reason: Reason, message: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::new(reason, message).with_source(e))
    }

    fn or_err_with<M: Into<String>>(
        self,
        reason: Reason,
        message: impl FnOnce(&E) -> M,
    ) -> Result<T> {
        self.map_err(|e| {
            let m = message(&e);
            Error::new(reason, m).with_source(e)
        })
    }

    fn or_unavailable(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::unavailable(what, e))
    }
}

/// Adds context to the gateway's own errors as they pass up.
pub trait Context<T> {
    /// `context` before the sentence, reason and source kept.
    fn context(self, context: impl fmt::Display) -> Result<T>;
    /// The same, made only on failure.
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.context(context()))
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
    fn helpers_keep_the_cause_and_say_whose_fault_it_is() {
        let r: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::other("permission denied"));
        let e = r
            .or_err_with(Reason::Malformed, |e| format!("cannot read key.pem ({e})"))
            .context("signing.key")
            .unwrap_err();
        assert_eq!(e.reason(), Reason::Malformed);
        assert_eq!(e.fault(), Fault::Caller);
        assert_eq!(
            e.message(),
            "signing.key: cannot read key.pem (permission denied)"
        );
        assert!(format!("{e:#}").ends_with(": permission denied"), "{e:#}");
        assert_eq!(
            e.to_string(),
            "MALFORMED: signing.key: cannot read key.pem (permission denied)"
        );
        let r: std::result::Result<(), std::io::Error> = Err(std::io::Error::other("EIO"));
        let e = r.or_unavailable("the attachment store").unwrap_err();
        assert_eq!(e.fault(), Fault::Gateway);
        assert!(e.is_retryable());
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
