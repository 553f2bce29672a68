//! The gateway's error type (from `lienthong-types`), and what a database
//! error means for the request that met it.

pub use lienthong_types::error::*;

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

/// The gateway's error for a database error: only an outage is
/// `UNAVAILABLE` (try again); bad data is the request's fault; anything
/// else is `INTERNAL`.
pub fn db_error(e: sea_orm::DbErr) -> Error {
    {
        match DbFault::of(&e) {
            DbFault::Outage => Error::unavailable("the database", e),
            DbFault::Data => Error::malformed(format!(
                "the database refused a value of this request as invalid data ({}); text must hold no NUL or other control characters and numbers must be in range: fix the request, since sending it again unchanged fails the same way",
                lienthong_types::text::printable(&db_message(&e))
            ))
            .with_source(e),
            DbFault::TooLarge => Error::new(
                Reason::SizeLimit,
                format!(
                    "a value of this request is larger than the database can hold or index ({}); shorten it",
                    lienthong_types::text::printable(&db_message(&e))
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

/// `?` for database results: the error classified by [`db_error`].
pub trait OrDb<T> {
    fn or_db(self) -> Result<T>;
}

impl<T> OrDb<T> for std::result::Result<T, sea_orm::DbErr> {
    fn or_db(self) -> Result<T> {
        self.map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = db_error(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout));
        assert_eq!(e.reason(), Reason::Unavailable);
        let e = db_error(DbErr::Custom(
            "the transfer log's head row is missing".into(),
        ));
        assert_eq!(e.reason(), Reason::Internal);
        assert!(!e.is_retryable());
        assert!(e.reason().is_gateway_fault());
        assert!(!Reason::Malformed.is_gateway_fault());
    }
}
