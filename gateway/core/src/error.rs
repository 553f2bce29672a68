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

/// What a database error says about the request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFault {
    /// The database cannot serve anything right now (connection refused or
    /// lost, pool exhausted, disk full, shutting down, a serialization
    /// failure or deadlock): the same request may pass later.
    Outage,
    /// A value of the request is not valid data for the database (PostgreSQL
    /// SQLSTATE class 22: a NUL in text, an invalid byte sequence, a number
    /// out of range): the same request fails the same way every time.
    Data,
    /// A value is larger than the database can index or hold.
    TooLarge,
    /// Anything else (a constraint the gateway should have checked, an
    /// error in its own SQL): neither the request's fault nor passing.
    Internal,
}

/// PostgreSQL SQLSTATE classes (the first two characters).
fn pg_fault(sqlstate: &str) -> DbFault {
    match sqlstate.get(..2).unwrap_or("") {
        "22" => DbFault::Data,
        "54" => DbFault::TooLarge,
        // 08 connection exception, 40 serialization failure / deadlock,
        // 53 insufficient resources (disk full, out of memory, too many
        // connections), 57 operator intervention (shutdown, statement
        // timeout), 58 system error (I/O), 55 a lock or an object not
        // available, 3D the database does not exist (yet), 28 the
        // gateway's own credentials refused, XX the server's own failure.
        "08" | "40" | "53" | "57" | "58" | "55" | "3D" | "28" | "XX" => DbFault::Outage,
        // 25006: read-only transaction — a standby during a fail-over.
        "25" if sqlstate == "25006" => DbFault::Outage,
        _ => DbFault::Internal,
    }
}

/// SQLite result codes (the primary code is the low byte of the extended
/// code sqlx reports).
fn sqlite_fault(code: i32) -> DbFault {
    match code & 0xff {
        // BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, CORRUPT, FULL,
        // CANTOPEN, PROTOCOL, NOLFS, NOTADB
        5 | 6 | 7 | 8 | 9 | 10 | 11 | 13 | 14 | 15 | 22 | 26 => DbFault::Outage,
        // TOOBIG
        18 => DbFault::TooLarge,
        // MISMATCH, RANGE
        20 | 25 => DbFault::Data,
        _ => DbFault::Internal,
    }
}

fn sqlx_fault(e: &sea_orm::sqlx::Error) -> DbFault {
    use sea_orm::sqlx::Error as X;
    match e {
        X::Io(_)
        | X::Tls(_)
        | X::Protocol(_)
        | X::PoolTimedOut
        | X::PoolClosed
        | X::WorkerCrashed
        | X::BeginFailed => DbFault::Outage,
        X::Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or("");
            if d.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                pg_fault(code)
            } else if let Ok(n) = code.parse::<i32>() {
                sqlite_fault(n)
            } else {
                DbFault::Internal
            }
        }
        _ => DbFault::Internal,
    }
}

impl DbFault {
    /// Classifies a database error.
    pub fn of(e: &sea_orm::DbErr) -> DbFault {
        use sea_orm::{DbErr, RuntimeErr};
        match e {
            // Failing to reach the database at all is an outage, whatever
            // the server said while refusing the connection.
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbFault::Outage,
            DbErr::Exec(RuntimeErr::SqlxError(x)) | DbErr::Query(RuntimeErr::SqlxError(x)) => {
                sqlx_fault(x)
            }
            _ => DbFault::Internal,
        }
    }
}

/// The database's own words for a data error, without the driver's prefix.
fn db_message(e: &sea_orm::DbErr) -> String {
    use sea_orm::{DbErr, RuntimeErr};
    match e {
        DbErr::Exec(RuntimeErr::SqlxError(x)) | DbErr::Query(RuntimeErr::SqlxError(x)) => {
            match &**x {
                sea_orm::sqlx::Error::Database(d) => d.message().to_owned(),
                other => other.to_string(),
            }
        }
        other => other.to_string(),
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        match DbFault::of(&e) {
            DbFault::Outage => Error::unavailable("the database", e),
            DbFault::Data => Error::malformed(format!(
                "the database refused a value of this request as invalid data ({}); text must hold no NUL or other control characters and numbers must be in range: fix the request, since sending it again unchanged fails the same way",
                crate::text::printable(&db_message(&e))
            ))
            .with_source(e),
            DbFault::TooLarge => Error::new(
                Reason::SizeLimit,
                format!(
                    "a value of this request is larger than the database can hold or index ({}); shorten it",
                    crate::text::printable(&db_message(&e))
                ),
            )
            .with_source(e),
            DbFault::Internal => Error::new(
                Reason::Internal,
                "the gateway failed on this request with a database error that is not a passing outage; nothing was accepted, and sending it again unchanged will likely fail the same way: tell the gateway's operators, who find the cause in its log",
            )
            .with_source(e),
        }
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
    fn postgres_errors_are_classified_by_sqlstate_class() {
        // invalid byte sequence (a NUL), numeric out of range, bad datetime
        for code in ["22021", "22003", "22007", "22P05"] {
            assert_eq!(pg_fault(code), DbFault::Data, "{code}");
        }
        assert_eq!(pg_fault("54000"), DbFault::TooLarge);
        // connection failure, serialization failure, deadlock, disk full,
        // too many connections, admin shutdown, statement timeout, I/O
        // error, not accepting connections, standby
        for code in [
            "08006", "40001", "40P01", "53100", "53300", "57P01", "57014", "58030", "55000",
            "25006", "3D000",
        ] {
            assert_eq!(pg_fault(code), DbFault::Outage, "{code}");
        }
        // syntax error, undefined table, not-null and check violations,
        // an aborted transaction
        for code in ["42601", "42P01", "23502", "23514", "25P02", ""] {
            assert_eq!(pg_fault(code), DbFault::Internal, "{code:?}");
        }
    }

    #[test]
    fn sqlite_errors_are_classified_by_primary_code() {
        // BUSY, BUSY_SNAPSHOT, FULL, IOERR_FSYNC, READONLY_DBMOVED
        for code in [5, 517, 13, 1034, 1032] {
            assert_eq!(sqlite_fault(code), DbFault::Outage, "{code}");
        }
        assert_eq!(sqlite_fault(18), DbFault::TooLarge);
        assert_eq!(sqlite_fault(20), DbFault::Data);
        // CONSTRAINT_NOTNULL, generic ERROR (a bad statement)
        for code in [1299, 1] {
            assert_eq!(sqlite_fault(code), DbFault::Internal, "{code}");
        }
    }

    #[test]
    fn only_an_outage_is_unavailable() {
        use sea_orm::{ConnAcquireErr, DbErr};
        let e = Error::from(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout));
        assert_eq!(e.reason(), Reason::Unavailable);
        let e = Error::from(DbErr::Custom(
            "the transfer log's head row is missing".into(),
        ));
        assert_eq!(e.reason(), Reason::Internal);
        assert!(!e.is_retryable());
        assert!(e.reason().is_gateway_fault());
        assert!(!Reason::Malformed.is_gateway_fault());
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
