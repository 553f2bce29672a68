//! Deliveries that land through one writer, heard by every other writer of
//! the same PostgreSQL database: replicas' `Receive` streams learn of a
//! document another replica accepted within milliseconds, without polling.
//!
//! The acceptance's transaction sends `NOTIFY` on [`CHANNEL`] with the
//! writer and the recipients whose deliveries it wrote (PostgreSQL delivers
//! it at commit, and never for a rollback); each replica `LISTEN`s on a
//! connection of its own. The notice carries only who to wake: the rows
//! stay the truth, and a stream that wakes reads them. A notice lost with
//! the listening connection is made good by waking everyone
//! ([`Heard::Missed`]), and by the streams' own periodic look.

use std::collections::BTreeSet;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use crate::error::{OrErr, Reason, Result};
use crate::writes::WriterId;

/// The notification channel; one per database, so two provinces' gateways
/// on one server (each its own database) never hear each other.
pub const CHANNEL: &str = "lienthong_landed";

/// PostgreSQL refuses a payload of 8,000 bytes or more.
const PAYLOAD_MAX: usize = 7_900;

/// What a replica heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Another writer committed deliveries for these recipients.
    Landed { recipients: Vec<String> },
    /// The listening connection was lost and made again: anything may have
    /// landed meanwhile.
    Missed,
}

/// Tells the other writers which recipients got deliveries, inside the
/// transaction that wrote them.
pub(crate) async fn notify<C: ConnectionTrait>(
    c: &C,
    writer: &WriterId,
    recipients: BTreeSet<&str>,
) -> std::result::Result<(), DbErr> {
    for payload in payloads(writer, recipients) {
        c.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), payload.into()],
        ))
        .await?;
    }
    Ok(())
}

/// `writer\nrecipient\nrecipient…`, split to fit PostgreSQL's payload limit.
fn payloads<'a>(writer: &WriterId, recipients: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for r in recipients {
        if !current.is_empty() && current.len() + 1 + r.len() > PAYLOAD_MAX {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(writer.as_str());
        }
        current.push('\n');
        current.push_str(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Reads a notice: `None` for one of this writer's own (its streams were
/// told from memory) or one that is not ours.
fn parse(own: &WriterId, payload: &str) -> Option<Vec<String>> {
    let mut lines = payload.split('\n');
    let writer = lines.next()?;
    if writer == own.as_str() {
        return None;
    }
    let recipients: Vec<String> = lines.filter(|l| !l.is_empty()).map(str::to_owned).collect();
    (!recipients.is_empty()).then_some(recipients)
}

/// A connection of its own that listens for the other writers' deliveries.
pub struct LandedListener {
    listener: sea_orm::sqlx::postgres::PgListener,
    writer: WriterId,
}

impl LandedListener {
    /// `None` on SQLite: one process writes it, and tells its own streams.
    pub async fn open(db: &DatabaseConnection, writer: WriterId) -> Result<Option<LandedListener>> {
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let pool = db.get_postgres_connection_pool();
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool)
            .await
            .or_err(
                Reason::Unavailable,
                "cannot open a connection to listen for deliveries",
            )?;
        listener
            .listen(CHANNEL)
            .await
            .or_err(Reason::Unavailable, "cannot listen for deliveries")?;
        Ok(Some(LandedListener { listener, writer }))
    }

    /// The next thing heard. An error is the database being away: the
    /// caller waits and asks again (the listener connects again itself).
    pub async fn next(&mut self) -> Result<Heard> {
        loop {
            let heard = self.listener.try_recv().await.or_err(
                Reason::Unavailable,
                "lost the connection that listens for deliveries",
            )?;
            match heard {
                None => return Ok(Heard::Missed),
                Some(n) => {
                    if let Some(recipients) = parse(&self.writer, n.payload()) {
                        return Ok(Heard::Landed { recipients });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_names_its_writer_and_recipients_and_fits_the_limit() {
        let a = WriterId::new("replica-a").expect("a name");
        let b = WriterId::new("replica-b").expect("a name");
        let many: Vec<String> = (0..2_000).map(|i| format!("000.00.{i:02}.H35")).collect();
        let sent = payloads(&a, many.iter().map(String::as_str));
        assert!(sent.len() > 1, "2,000 codes do not fit one notice");
        let mut heard = Vec::new();
        for p in &sent {
            assert!(p.len() < 8_000, "{} bytes", p.len());
            assert_eq!(
                parse(&a, p),
                None,
                "a writer's own notice is not news to it"
            );
            heard.extend(parse(&b, p).expect("another writer's notice"));
        }
        assert_eq!(heard, many);
        assert!(payloads(&a, []).is_empty(), "nothing landed, nothing sent");
    }
}
