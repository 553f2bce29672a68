//! Jobs that must run on one replica at a time (the AMQP consumer and relay,
//! the deadline checks, the monthly report) hold a lease: a PostgreSQL
//! session advisory lock on a connection of their own. PostgreSQL lets it go
//! when that connection ends — the holder crashed, was killed or lost the
//! network — and another replica, asking every second, takes it within
//! seconds. The holder checks its connection every `CHECK` and gives the
//! job up when it is gone, since the lock went with it.
//!
//! On SQLite one process writes the database: every lease is granted at
//! once and never lost.

use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{Connection, Executor, Row};
use sea_orm::{DatabaseConnection, DbBackend};

use crate::error::{OrErr, Reason, Result};

/// How often a holder checks that its lock is still held, and a replica
/// waiting for a lease asks again.
const CHECK: Duration = Duration::from_secs(1);
/// A check unanswered this long counts as a lost connection. Shorter than
/// the time PostgreSQL takes to find a silent peer dead (`KEEPALIVES`), so
/// that a holder cut off from the database gives its job up before another
/// replica can take it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's TCP keepalives on a lease's connection: idle seconds,
/// interval, probes. A replica whose host vanished (power, network) sends
/// no FIN; without these PostgreSQL would hold its locks for the kernel's
/// default of about two hours, and no other replica could take its jobs.
/// With them the lock goes within about 25 s.
const KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";

/// A job's lease, held as long as this value lives and its connection does.
pub struct Lease {
    job: String,
    conn: Option<PgConnection>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("job", &self.job).finish()
    }
}

/// The advisory lock's key: the job's name hashed, the same on every
/// replica and release, apart from any other application's keys by the
/// prefix.
fn key(job: &str) -> i64 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("lienthong.lease.{job}").as_bytes(),
    );
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

impl Lease {
    /// Waits until this process holds `job`'s lease. `Err` only when the
    /// database cannot be reached at all (the caller tries again).
    pub async fn take(db: &DatabaseConnection, job: &str) -> Result<Lease> {
        loop {
            if let Some(lease) = Self::try_take(db, job).await? {
                return Ok(lease);
            }
            tokio::time::sleep(CHECK).await;
        }
    }

    /// The lease if no other process holds it now, `None` if one does.
    pub async fn try_take(db: &DatabaseConnection, job: &str) -> Result<Option<Lease>> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(Some(Lease {
                job: job.to_owned(),
                conn: None,
            }));
        }
        let options: PgConnectOptions =
            (*db.get_postgres_connection_pool().connect_options()).clone();
        let mut conn = PgConnection::connect_with(&options).await.or_err(
            Reason::Unavailable,
            "cannot open a connection to hold a job's lease",
        )?;
        // Ignored (and harmless) over a Unix socket.
        conn.execute(KEEPALIVES).await.or_err(
            Reason::Unavailable,
            "cannot set keepalives on a job's lease connection",
        )?;
        let held: bool = conn
            .fetch_one(sea_orm::sqlx::query("SELECT pg_try_advisory_lock($1)").bind(key(job)))
            .await
            .and_then(|row| row.try_get(0))
            .or_err(Reason::Unavailable, "cannot ask for a job's lease")?;
        if !held {
            let _ = conn.close().await;
            return Ok(None);
        }
        Ok(Some(Lease {
            job: job.to_owned(),
            conn: Some(conn),
        }))
    }

    /// Resolves when the lease is lost: its connection broke, so PostgreSQL
    /// has let the lock go and another replica may hold it now. Never on
    /// SQLite.
    pub async fn lost(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(CHECK).await;
            let why = match tokio::time::timeout(CHECK_TIMEOUT, conn.ping()).await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!(
                    "the database did not answer within {} s",
                    CHECK_TIMEOUT.as_secs()
                ),
            };
            tracing::warn!(job = %self.job, error = %why, "the connection holding a job's lease is gone; giving the job up");
            self.conn = None;
            return;
        }
    }

    pub fn job(&self) -> &str {
        &self.job
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn each_job_has_its_own_key_and_every_replica_the_same() {
        assert_eq!(key("amqp"), key("amqp"));
        assert_ne!(key("amqp"), key("deadlines"));
    }
}
