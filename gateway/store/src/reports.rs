//! The reports' and the dashboard's queries: SQL aggregation over
//! `messages`, `deliveries` and `events`, the same text on SQLite and
//! PostgreSQL (placeholders aside). The figures come back as rows; what
//! they mean, the scopes and the rendering are the core's.
//!
//! These are reads. The columns copied out of the envelopes (DueDate,
//! số/ký hiệu, trích yếu) are filled by [`Store::index_documents`], which
//! the writers and the jobs call, never a read.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend};
use serde::Serialize;

use crate::error::{OrDb, Result};
use crate::sql::{self, Sql, int, like_escape, text};
use crate::store::Store;

pub use crate::sql::Filter;

/// The answers of a document are found through `messages_answers`
/// (ref_from, document_id). In those subqueries `s.kind || ''` and
/// `s.accepted_at + 0` keep the planner (SQLite's, without statistics) from
/// scanning every status by (kind, accepted_at) instead.
///
/// Status codes that mean the recipient registered the document (03) or
/// went further with it.
const REGISTERED_OR_LATER: &str = "('03', '04', '05', '06')";

/// The instants a report's figures are judged by (Unix microseconds).
#[derive(Debug, Clone)]
pub struct ReportWindow {
    /// The period: documents accepted in `t0..t1`.
    pub t0: i64,
    pub t1: i64,
    /// Deliveries created at or before it have waited the working hours
    /// within which a 03 is expected.
    pub cutoff: i64,
    pub as_of: i64,
    /// The Vietnam date of `as_of`, `yyyy-MM-dd`.
    pub today: String,
}

/// A recipient's deliveries of the period's documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub received: u64,
    pub delivered: u64,
    pub acknowledged: u64,
    /// Created before the cutoff, and no 03 (or later status) by `as_of`.
    pub without_03: u64,
    /// Past DueDate without a 06 by `as_of`.
    pub overdue: u64,
}

/// Which duration a [`Percentiles`] row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Duration {
    /// Acceptance → first hand-out to the recipient.
    AcceptToDelivery,
    /// First hand-out → the recipient's first 03-or-later status.
    DeliveryTo03,
}

/// Nearest-rank median and 95th percentile of a duration, microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: i64,
    pub p95: i64,
}

/// A report's rows, all read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct ReportRows {
    /// Documents accepted, per sender.
    pub sent: Vec<(String, u64)>,
    /// Status notices delivered in the period, per (recipient, status code).
    pub statuses: Vec<(String, String, u64)>,
    /// Refused submissions, per (sender, reason code).
    pub refusals: Vec<(String, String, u64)>,
    /// Per recipient.
    pub deliveries: HashMap<String, DeliveryCounts>,
    /// Per (duration, recipient); recipient `*` for the whole filter (the
    /// same rows, ranked without the agency).
    pub latencies: HashMap<(Duration, String), Percentiles>,
}

/// Counts over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Documents accepted.
    pub documents: u64,
    /// Status notices accepted.
    pub statuses: u64,
    /// Deliveries created (one per recipient).
    pub deliveries: u64,
    /// Deliveries acknowledged by their recipients.
    pub acknowledged: u64,
    /// Submissions refused.
    pub refused: u64,
}

/// An agency's unacknowledged deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInbox {
    pub recipient: String,
    pub depth: u64,
    /// When the oldest of them was created.
    pub oldest_at: i64,
}

impl PendingInbox {
    /// How long the oldest has waited at `now`, in seconds (never less
    /// than zero).
    pub fn oldest_seconds(&self, now: i64) -> f64 {
        ((now - self.oldest_at).max(0) as f64) / 1e6
    }
}

/// A `rejected` line of the transfer log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalRow {
    pub at: i64,
    pub sender: String,
    pub message_id: String,
    pub reason: String,
    pub detail: String,
}

/// A `backup` line of the transfer log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRow {
    pub at: i64,
    /// Empty when the backup finished; `BACKUP_FAILED` when it failed.
    pub reason: String,
    /// The JSON object the backup wrote (see `EventKind::Backup`).
    pub detail: String,
}

/// A delivery of a document past its DueDate without a 06 from its
/// recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueRow {
    pub sender: String,
    pub message_id: String,
    pub code: String,
    pub subject: String,
    pub due_date: String,
    pub recipient: String,
}

/// A message found by a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHit {
    pub sender: String,
    pub message_id: String,
    pub kind: String,
    pub document_id: String,
    pub code: String,
    pub subject: String,
    pub accepted_at: i64,
}

pub use crate::store::DocumentIndex;

fn count(n: i64) -> u64 {
    n.max(0) as u64
}

impl Store {
    /// The rows of a report over `w`'s period and the agencies `filter`
    /// keeps, read in one read-only snapshot.
    pub async fn report_rows(&self, w: &ReportWindow, filter: &Filter) -> Result<ReportRows> {
        let backend = self.backend();
        let txn = sql::snapshot(self.connection()).await?;
        let mut out = ReportRows::default();

        // Documents sent.
        let mut q = Sql::new(backend);
        q.push("SELECT sender AS agency, COUNT(*) AS n FROM messages WHERE kind = 'document' AND accepted_at >= ")
            .bind(w.t0)
            .push(" AND accepted_at < ")
            .bind(w.t1)
            .filter("sender", filter)
            .push(" GROUP BY sender");
        for r in q.all(&txn).await? {
            out.sent.push((text(&r, "agency")?, count(int(&r, "n")?)));
        }

        // Statuses addressed to the agency.
        let mut q = Sql::new(backend);
        q.push(
            "SELECT d.recipient AS agency, m.status_code AS code, COUNT(*) AS n \
             FROM deliveries d JOIN messages m ON m.id = d.message_pk \
             WHERE m.kind = 'status' AND d.created_at >= ",
        )
        .bind(w.t0)
        .push(" AND d.created_at < ")
        .bind(w.t1)
        .filter("d.recipient", filter)
        .push(" GROUP BY d.recipient, m.status_code");
        for r in q.all(&txn).await? {
            out.statuses
                .push((text(&r, "agency")?, text(&r, "code")?, count(int(&r, "n")?)));
        }

        // Refusals, by sender and reason.
        let mut q = Sql::new(backend);
        q.push(
            "SELECT sender AS agency, reason, COUNT(*) AS n FROM events \
             WHERE kind = 'rejected' AND at >= ",
        )
        .bind(w.t0)
        .push(" AND at < ")
        .bind(w.t1)
        .filter("sender", filter)
        .push(" GROUP BY sender, reason");
        for r in q.all(&txn).await? {
            out.refusals.push((
                text(&r, "agency")?,
                text(&r, "reason")?,
                count(int(&r, "n")?),
            ));
        }

        deliveries(&txn, backend, w, filter, &mut out).await?;
        txn.commit().await.or_db()?;
        Ok(out)
    }

    /// Documents, statuses, deliveries, acknowledgements and refusals in
    /// `t0..t1`.
    pub async fn traffic(&self, t0: i64, t1: i64) -> Result<Traffic> {
        let mut q = Sql::new(self.backend());
        q.push("SELECT (SELECT COUNT(*) FROM messages WHERE kind = 'document' AND accepted_at >= ")
            .bind(t0)
            .push(" AND accepted_at < ")
            .bind(t1)
            .push(") AS documents, (SELECT COUNT(*) FROM messages WHERE kind = 'status' AND accepted_at >= ")
            .bind(t0)
            .push(" AND accepted_at < ")
            .bind(t1)
            .push(") AS statuses, (SELECT COUNT(*) FROM deliveries WHERE created_at >= ")
            .bind(t0)
            .push(" AND created_at < ")
            .bind(t1)
            .push(") AS deliveries, (SELECT COUNT(*) FROM events WHERE kind = 'acknowledged' AND at >= ")
            .bind(t0)
            .push(" AND at < ")
            .bind(t1)
            .push(") AS acknowledged, (SELECT COUNT(*) FROM events WHERE kind = 'rejected' AND at >= ")
            .bind(t0)
            .push(" AND at < ")
            .bind(t1)
            .push(") AS refused");
        let Some(r) = q.one(self.connection()).await? else {
            return Ok(Traffic::default());
        };
        let n = |c: &str| int(&r, c).map(count);
        Ok(Traffic {
            documents: n("documents")?,
            statuses: n("statuses")?,
            deliveries: n("deliveries")?,
            acknowledged: n("acknowledged")?,
            refused: n("refused")?,
        })
    }

    /// Every agency with unacknowledged deliveries (one query), the deepest
    /// inbox first, then the one waiting longest, then by code.
    pub async fn pending_inboxes(&self) -> Result<Vec<PendingInbox>> {
        let mut q = Sql::new(self.backend());
        q.push(
            "SELECT recipient, COUNT(*) AS n, MIN(created_at) AS oldest FROM deliveries \
             WHERE state = 'pending' GROUP BY recipient",
        );
        let mut out = Vec::new();
        for r in q.all(self.connection()).await? {
            out.push(PendingInbox {
                recipient: text(&r, "recipient")?,
                depth: count(int(&r, "n")?),
                oldest_at: int(&r, "oldest")?,
            });
        }
        out.sort_by(|a, b| {
            b.depth
                .cmp(&a.depth)
                .then(a.oldest_at.cmp(&b.oldest_at))
                .then(a.recipient.cmp(&b.recipient))
        });
        Ok(out)
    }

    /// When the newest `backup` line written by `actor` was (finished or
    /// not): the scheduled backup's last try, whichever replica made it.
    pub async fn last_backup_try(&self, actor: &str) -> Result<Option<i64>> {
        let mut q = Sql::new(self.backend());
        q.push("SELECT at FROM events WHERE kind = 'backup' AND actor = ")
            .bind(actor.to_owned())
            .push(" ORDER BY at DESC, id DESC LIMIT 1");
        match q.all(self.connection()).await?.first() {
            Some(r) => Ok(Some(int(r, "at")?)),
            None => Ok(None),
        }
    }

    /// The newest `backup` line of any replica, and the newest of a backup
    /// that finished.
    pub async fn last_backups(&self) -> Result<(Option<BackupRow>, Option<BackupRow>)> {
        let mut found = Vec::new();
        for finished in [false, true] {
            let mut q = Sql::new(self.backend());
            q.push(if finished {
                "SELECT at, reason, detail FROM events WHERE kind = 'backup' \
                 AND (reason IS NULL OR reason = '') ORDER BY at DESC, id DESC LIMIT 1"
            } else {
                "SELECT at, reason, detail FROM events WHERE kind = 'backup' \
                 ORDER BY at DESC, id DESC LIMIT 1"
            });
            let row = match q.all(self.connection()).await?.first() {
                Some(r) => Some(BackupRow {
                    at: int(r, "at")?,
                    reason: text(r, "reason")?,
                    detail: text(r, "detail")?,
                }),
                None => None,
            };
            found.push(row);
        }
        let finished = found.pop().flatten();
        let any = found.pop().flatten();
        Ok((any, finished))
    }

    /// The latest `limit` refusals, newest first.
    pub async fn recent_refusals(&self, limit: i64) -> Result<Vec<RefusalRow>> {
        let mut q = Sql::new(self.backend());
        q.push(
            "SELECT at, sender, message_id, reason, detail FROM events WHERE kind = 'rejected' \
             ORDER BY at DESC, id DESC LIMIT ",
        )
        .bind(limit);
        let mut out = Vec::new();
        for r in q.all(self.connection()).await? {
            out.push(RefusalRow {
                at: int(&r, "at")?,
                sender: text(&r, "sender")?,
                message_id: text(&r, "message_id")?,
                reason: text(&r, "reason")?,
                detail: text(&r, "detail")?,
            });
        }
        Ok(out)
    }

    /// How many deliveries of documents accepted since `accepted_since` are
    /// past their DueDate (before the date `today`, `yyyy-MM-dd`) without
    /// a 06 from their recipient, and the 20 most overdue of them.
    pub async fn overdue_deliveries(
        &self,
        accepted_since: i64,
        today: &str,
    ) -> Result<(u64, Vec<OverdueRow>)> {
        let overdue_where = |q: &mut Sql| {
            q.push(
                " FROM deliveries d JOIN messages m ON m.id = d.message_pk \
                 WHERE m.kind = 'document' AND m.accepted_at >= ",
            )
            .bind(accepted_since)
            .push(" AND m.due_date IS NOT NULL AND m.due_date <> '' AND m.due_date < ")
            .bind(today.to_owned())
            .push(
                " AND NOT EXISTS (SELECT 1 FROM messages s WHERE s.ref_from = m.sender \
                 AND s.document_id = m.document_id AND s.kind || '' = 'status' AND s.sender = d.recipient \
                 AND s.status_code = '06')",
            );
        };
        let mut q = Sql::new(self.backend());
        q.push("SELECT COUNT(*) AS n");
        overdue_where(&mut q);
        let total = match q.one(self.connection()).await? {
            Some(r) => count(int(&r, "n")?),
            None => 0,
        };
        let mut q = Sql::new(self.backend());
        q.push("SELECT m.sender, m.message_id, m.code, m.subject, m.due_date, d.recipient");
        overdue_where(&mut q);
        q.push(" ORDER BY m.due_date, d.id LIMIT 20");
        let mut rows = Vec::new();
        for r in q.all(self.connection()).await? {
            rows.push(OverdueRow {
                sender: text(&r, "sender")?,
                message_id: text(&r, "message_id")?,
                code: text(&r, "code")?,
                subject: text(&r, "subject")?,
                due_date: text(&r, "due_date")?,
                recipient: text(&r, "recipient")?,
            });
        }
        Ok((total, rows))
    }

    /// How many deliveries of documents, created in `created_since..=cutoff`,
    /// have no 03 (or later status) from their recipient.
    pub async fn deliveries_without_03(&self, created_since: i64, cutoff: i64) -> Result<u64> {
        let mut q = Sql::new(self.backend());
        q.push(
            "SELECT COUNT(*) AS n FROM deliveries d JOIN messages m ON m.id = d.message_pk \
             WHERE m.kind = 'document' AND d.created_at >= ",
        )
        .bind(created_since)
        .push(" AND d.created_at <= ")
        .bind(cutoff)
        .push(
            " AND NOT EXISTS (SELECT 1 FROM messages s WHERE s.ref_from = m.sender \
             AND s.document_id = m.document_id AND s.kind || '' = 'status' AND s.sender = d.recipient \
             AND s.status_code IN ",
        )
        .push(REGISTERED_OR_LATER)
        .push(")");
        Ok(match q.one(self.connection()).await? {
            Some(r) => count(int(&r, "n")?),
            None => 0,
        })
    }

    /// Messages whose message_id or số/ký hiệu is `q`, else documents with
    /// `q` in their số/ký hiệu, document_id or trích yếu; newest first, at
    /// most 10.
    pub async fn search_messages(&self, q: &str) -> Result<Vec<MessageHit>> {
        let cols = "SELECT id, sender, message_id, kind, document_id, code, subject, accepted_at FROM messages";
        let mut exact = Sql::new(self.backend());
        exact
            .push(cols)
            .push(" WHERE message_id = ")
            .bind(q.to_owned())
            .push(" OR code = ")
            .bind(q.to_owned())
            .push(" ORDER BY id DESC LIMIT 10");
        let mut rows = exact.all(self.connection()).await?;
        if rows.is_empty() {
            let pat = format!("%{}%", like_escape(q));
            let mut like = Sql::new(self.backend());
            like.push(cols)
                .push(" WHERE kind = 'document' AND (code LIKE ")
                .bind(pat.clone())
                .push(" ESCAPE '\\' OR document_id LIKE ")
                .bind(pat.clone())
                .push(" ESCAPE '\\' OR subject LIKE ")
                .bind(pat)
                .push(" ESCAPE '\\') ORDER BY id DESC LIMIT 10");
            rows = like.all(self.connection()).await?;
        }
        let mut out = Vec::new();
        for r in rows {
            out.push(MessageHit {
                sender: text(&r, "sender")?,
                message_id: text(&r, "message_id")?,
                kind: text(&r, "kind")?,
                document_id: text(&r, "document_id")?,
                code: text(&r, "code")?,
                subject: text(&r, "subject")?,
                accepted_at: int(&r, "accepted_at")?,
            });
        }
        Ok(out)
    }

    /// Copies DueDate, số/ký hiệu and trích yếu out of the envelopes of
    /// documents that do not have them in their columns yet (`due_date IS
    /// NULL`), a page at a time; `facts` reads them out of a stored
    /// `SignedEnvelope`. Returns how many documents it indexed.
    pub async fn index_documents<F>(&self, facts: F) -> Result<u64>
    where
        F: Fn(&[u8]) -> DocumentIndex,
    {
        let backend = self.backend();
        let mut done = 0u64;
        loop {
            let mut q = Sql::new(backend);
            q.push(
                "SELECT id, signed_envelope FROM messages WHERE kind = 'document' \
                 AND due_date IS NULL ORDER BY id LIMIT 200",
            );
            let page = q.all(self.connection()).await?;
            if page.is_empty() {
                return Ok(done);
            }
            // One statement per page (WITH … VALUES, UPDATE … FROM: PostgreSQL
            // and SQLite 3.33+ alike).
            let mut u = Sql::new(backend);
            u.push("WITH v (id, d, c, s) AS (VALUES ");
            for (i, r) in page.iter().enumerate() {
                let id: i64 = r.try_get("", "id").or_db()?;
                let bytes: Vec<u8> = r.try_get("", "signed_envelope").or_db()?;
                let f = facts(&bytes);
                u.push(if i == 0 { "(CAST(" } else { ", (CAST(" })
                    .bind(id)
                    .push(" AS BIGINT), ")
                    .bind(f.due_date)
                    .push(", ")
                    .bind(f.code)
                    .push(", ")
                    .bind(f.subject)
                    .push(")");
            }
            u.push(
                ") UPDATE messages SET due_date = v.d, code = v.c, subject = v.s \
                 FROM v WHERE messages.id = v.id",
            );
            self.connection().execute_raw(u.statement()).await.or_db()?;
            done += page.len() as u64;
        }
    }
}

/// Per recipient: received, delivered, acknowledged, without_03, overdue;
/// and median and p95 per (duration, agency), agency `*` for the whole
/// filter. One statement: the deliveries of the period's documents are
/// joined once with the first answers of their recipients.
///
/// A delivery handed out once (`attempts = 1`) was first handed out at
/// `last_delivered_at` (the same instant as its `delivered` event); only
/// redelivered ones look their first `delivered` event up in the log.
async fn deliveries<C: ConnectionTrait>(
    c: &C,
    backend: DbBackend,
    w: &ReportWindow,
    filter: &Filter,
    out: &mut ReportRows,
) -> Result<()> {
    let mut q = Sql::new(backend);
    q.push(
        "WITH ans AS (SELECT sender, ref_from, document_id, \
         MIN(CASE WHEN status_code IN ",
    )
    .push(REGISTERED_OR_LATER)
    .push(
        " THEN accepted_at END) AS at3, \
         MIN(CASE WHEN status_code = '06' THEN accepted_at END) AS at6 \
         FROM messages WHERE kind = 'status' AND accepted_at >= ",
    )
    .bind(w.t0)
    .push(
        " GROUP BY sender, ref_from, document_id), \
         base AS (SELECT d.recipient AS agency, d.created_at, d.state, d.last_delivered_at, \
         m.due_date, a.at3, a.at6, \
         CASE WHEN d.last_delivered_at IS NULL THEN NULL \
         WHEN d.attempts <= 1 THEN d.last_delivered_at \
         ELSE (SELECT MIN(e.at) FROM events e WHERE e.sender = m.sender \
         AND e.message_id = m.message_id AND e.kind = 'delivered' AND e.recipient = d.recipient) \
         END AS first_at \
         FROM deliveries d JOIN messages m ON m.id = d.message_pk \
         LEFT JOIN ans a ON a.sender = d.recipient AND a.ref_from = m.sender \
         AND a.document_id = m.document_id \
         WHERE m.kind = 'document' AND d.created_at >= ",
    )
    .bind(w.t0)
    .push(" AND d.created_at < ")
    .bind(w.t1)
    .filter("d.recipient", filter)
    .push(
        "), counts AS (SELECT agency, COUNT(*) AS received, \
         SUM(CASE WHEN last_delivered_at IS NOT NULL THEN 1 ELSE 0 END) AS delivered, \
         SUM(CASE WHEN state = 'acked' THEN 1 ELSE 0 END) AS acknowledged, \
         SUM(CASE WHEN created_at <= ",
    )
    .bind(w.cutoff)
    .push(" AND (at3 IS NULL OR at3 > ")
    .bind(w.as_of)
    .push(
        ") THEN 1 ELSE 0 END) AS without_03, \
         SUM(CASE WHEN due_date IS NOT NULL AND due_date <> '' AND due_date < ",
    )
    .bind(w.today.clone())
    .push(" AND (at6 IS NULL OR at6 > ")
    .bind(w.as_of)
    .push(
        ") THEN 1 ELSE 0 END) AS overdue FROM base GROUP BY agency), \
         timed AS (SELECT agency, first_at - created_at AS dv, \
         CASE WHEN at3 IS NULL THEN NULL WHEN at3 > first_at THEN at3 - first_at ELSE 0 END AS av \
         FROM base WHERE first_at IS NOT NULL), \
         ",
    );
    // Nearest-rank percentiles: rank ceil(p × n) of the sorted durations.
    // PostgreSQL sorts each group's durations once in an ordered aggregate;
    // SQLite ranks them with window functions.
    match backend {
        DbBackend::Postgres => q.push(
            "g AS (SELECT CAST(0 AS BIGINT) AS metric, agency, COUNT(*) AS n, \
             (array_agg(dv ORDER BY dv))[(COUNT(*) * 50 + 99) / 100] AS p50, \
             (array_agg(dv ORDER BY dv))[(COUNT(*) * 95 + 99) / 100] AS p95 \
             FROM timed GROUP BY agency \
             UNION ALL SELECT 0, '*', COUNT(*), \
             (array_agg(dv ORDER BY dv))[(COUNT(*) * 50 + 99) / 100], \
             (array_agg(dv ORDER BY dv))[(COUNT(*) * 95 + 99) / 100] FROM timed \
             UNION ALL SELECT 1, agency, COUNT(*), \
             (array_agg(av ORDER BY av))[(COUNT(*) * 50 + 99) / 100], \
             (array_agg(av ORDER BY av))[(COUNT(*) * 95 + 99) / 100] \
             FROM timed WHERE av IS NOT NULL GROUP BY agency \
             UNION ALL SELECT 1, '*', COUNT(*), \
             (array_agg(av ORDER BY av))[(COUNT(*) * 50 + 99) / 100], \
             (array_agg(av ORDER BY av))[(COUNT(*) * 95 + 99) / 100] \
             FROM timed WHERE av IS NOT NULL) ",
        ),
        _ => q.push(
            "v AS (SELECT 0 AS metric, agency, dv AS v FROM timed \
             UNION ALL SELECT 1, agency, av FROM timed WHERE av IS NOT NULL), \
             r AS (SELECT metric, agency, v, \
             ROW_NUMBER() OVER (PARTITION BY metric, agency ORDER BY v) AS rn, \
             COUNT(*) OVER (PARTITION BY metric, agency) AS n, \
             ROW_NUMBER() OVER (PARTITION BY metric ORDER BY v) AS trn, \
             COUNT(*) OVER (PARTITION BY metric) AS tn FROM v), \
             g AS (SELECT metric, agency, MAX(n) AS n, \
             MAX(CASE WHEN rn = (n * 50 + 99) / 100 THEN v END) AS p50, \
             MAX(CASE WHEN rn = (n * 95 + 99) / 100 THEN v END) AS p95 \
             FROM r GROUP BY metric, agency \
             UNION ALL SELECT metric, '*', MAX(tn), \
             MAX(CASE WHEN trn = (tn * 50 + 99) / 100 THEN v END), \
             MAX(CASE WHEN trn = (tn * 95 + 99) / 100 THEN v END) \
             FROM r GROUP BY metric) ",
        ),
    };
    q.push(
        "SELECT metric, agency, n, p50, p95, 0 AS delivered, 0 AS acknowledged, \
         0 AS without_03, 0 AS overdue FROM g \
         UNION ALL SELECT 2, agency, received, 0, 0, delivered, acknowledged, without_03, overdue \
         FROM counts",
    );
    for r in q.all(c).await? {
        let n = int(&r, "n")?.max(0);
        let metric = match int(&r, "metric")? {
            0 => Duration::AcceptToDelivery,
            1 => Duration::DeliveryTo03,
            _ => {
                out.deliveries.insert(
                    text(&r, "agency")?,
                    DeliveryCounts {
                        received: count(n),
                        delivered: count(int(&r, "delivered")?),
                        acknowledged: count(int(&r, "acknowledged")?),
                        without_03: count(int(&r, "without_03")?),
                        overdue: count(int(&r, "overdue")?),
                    },
                );
                continue;
            }
        };
        out.latencies.insert(
            (metric, text(&r, "agency")?),
            Percentiles {
                count: n as u64,
                p50: int(&r, "p50")?.max(0),
                p95: int(&r, "p95")?.max(0),
            },
        );
    }
    Ok(())
}
