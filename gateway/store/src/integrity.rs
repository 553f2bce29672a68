//! `lienthong verify`: whether the database and the attachment store still
//! hold together — every chain of the transfer log, the rows that point at
//! one another, the directory's bindings, and every attachment's bytes.
//!
//! Everything is read in pages or through anti-joins whose answers are
//! capped, so memory stays flat whatever the size of the database: a
//! database that is badly damaged is reported by counts beyond the first
//! [`LISTED_PER_CHECK`] rows of each check.

use sea_orm::DatabaseConnection;

use crate::blobs::BlobStore;
use crate::checkpoint::CheckpointVerifier;
use crate::error::Result;
use crate::sql::{Sql, int, text};
use crate::store::{LogVerification, Store};

/// Rows named one by one per check; the rest are counted.
pub const LISTED_PER_CHECK: usize = 100;

/// Rows read per page.
const PAGE: i64 = 1000;

/// Bytes asked of a blob per read in the full mode.
const READ_CHUNK: usize = 1 << 20;

/// How deep the check goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The log's chains, the references between rows, the directory, and
    /// each blob's presence (a stat, or its row).
    Fast,
    /// [`Depth::Fast`], and every blob read through and checked against
    /// its size and SHA-256.
    Full,
}

impl Depth {
    pub fn as_str(self) -> &'static str {
        match self {
            Depth::Fast => "fast",
            Depth::Full => "full",
        }
    }
}

/// One thing that does not hold, in a sentence naming the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check found it: `log`, `attachments`, `references`,
    /// `directory`, `blobs`.
    pub check: &'static str,
    pub what: String,
}

/// How far the blob pass is, for a progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub blobs_done: u64,
    pub blobs_total: u64,
    pub bytes_read: u64,
}

/// What `lienthong verify` found.
#[derive(Debug, Clone)]
pub struct IntegrityReport {
    pub depth: Depth,
    /// The transfer log's chains and checkpoints, as `lienthong log verify`
    /// reports them.
    pub log: LogVerification,
    /// Rows per table, and `blobs`: the distinct attachment blobs.
    pub counts: Vec<(&'static str, u64)>,
    /// Blobs looked at (present, or read through with [`Depth::Full`]).
    pub blobs_checked: u64,
    /// Bytes read with [`Depth::Full`].
    pub bytes_read: u64,
    /// Everything that does not hold, the log's broken links first.
    pub findings: Vec<Finding>,
    /// Findings beyond [`LISTED_PER_CHECK`] of a check, counted only.
    pub not_listed: u64,
}

impl IntegrityReport {
    /// Everything holds.
    pub fn holds(&self) -> bool {
        self.findings.is_empty() && self.not_listed == 0
    }

    /// Every finding, listed or not.
    pub fn problems(&self) -> u64 {
        self.findings.len() as u64 + self.not_listed
    }
}

const TABLES: &[&str] = &[
    "messages",
    "attachments",
    "deliveries",
    "outbox",
    "events",
    "agencies",
    "signing_certs",
    "client_certs",
    "representations",
];

struct Findings {
    list: Vec<Finding>,
    not_listed: u64,
}

impl Findings {
    /// Findings of one check: the first ones listed, the count of all.
    fn add(&mut self, check: &'static str, listed: Vec<String>, total: u64) {
        let n = listed.len() as u64;
        self.list
            .extend(listed.into_iter().map(|what| Finding { check, what }));
        self.not_listed += total.saturating_sub(n);
    }
}

/// Runs the check. `keys` checks the transfer log's checkpoints' signatures
/// (see [`Store::verify_log_with`]); `progress` is told how far the blob
/// pass is after every page (and every blob with [`Depth::Full`]).
pub async fn verify(
    store: &Store,
    blobs: &BlobStore,
    depth: Depth,
    keys: Option<&dyn CheckpointVerifier>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<IntegrityReport> {
    let db = store.connection();
    let log = store.verify_log_with(keys).await?;
    let mut found = Findings {
        list: Vec::new(),
        not_listed: 0,
    };
    let log_findings: Vec<String> = log
        .chains
        .iter()
        .filter_map(|c| {
            c.first_broken.as_ref().map(|(seq, what)| {
                format!(
                    "the transfer log's chain {} is broken at event {seq}: {what}",
                    c.chain
                )
            })
        })
        .chain(
            log.findings
                .iter()
                .map(|f| format!("the transfer log's checkpoints: {}", f.what)),
        )
        .collect();
    let n = log_findings.len() as u64;
    found.add("log", log_findings, n);

    let mut counts = Vec::with_capacity(TABLES.len() + 1);
    for table in TABLES {
        counts.push((
            *table,
            count(db, &format!("SELECT COUNT(*) AS n FROM {table}")).await?,
        ));
    }
    let blobs_total = count(db, "SELECT COUNT(DISTINCT sha256) AS n FROM attachments").await?;
    counts.push(("blobs", blobs_total));

    attachment_counts(db, &mut found).await?;
    references(db, &mut found).await?;
    directory(db, &mut found).await?;
    let (blobs_checked, bytes_read) =
        blob_pass(db, blobs, depth, blobs_total, &mut found, progress).await?;

    Ok(IntegrityReport {
        depth,
        log,
        counts,
        blobs_checked,
        bytes_read,
        findings: found.list,
        not_listed: found.not_listed,
    })
}

async fn count(db: &DatabaseConnection, sql: &str) -> Result<u64> {
    let mut q = Sql::new(db.get_database_backend());
    q.push(sql);
    let n = match q.one(db).await? {
        Some(row) => int(&row, "n")?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Each message's `attachment_count` against its attachment rows, a page
/// of messages at a time.
async fn attachment_counts(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    let mut after = 0i64;
    let mut listed = Vec::new();
    let mut total = 0u64;
    loop {
        let mut q = Sql::new(db.get_database_backend());
        q.push(
            "SELECT m.id, m.sender, m.message_id, CAST(m.attachment_count AS BIGINT) AS attachment_count, \
             (SELECT COUNT(*) FROM attachments a WHERE a.message_pk = m.id) AS rows_found \
             FROM messages m WHERE m.id > ",
        )
        .bind(after)
        .push(" ORDER BY m.id LIMIT ")
        .push(&PAGE.to_string());
        let rows = q.all(db).await?;
        let Some(last) = rows.last() else { break };
        after = int(last, "id")?;
        for row in &rows {
            let declared = int(row, "attachment_count")?;
            let present = int(row, "rows_found")?;
            if declared == present {
                continue;
            }
            total += 1;
            if listed.len() >= LISTED_PER_CHECK {
                continue;
            }
            let (id, sender, message_id) = (
                int(row, "id")?,
                text(row, "sender")?,
                text(row, "message_id")?,
            );
            listed.push(if present < declared {
                format!(
                    "message {message_id} from {sender} (row {id}) was accepted with {declared} \
                     attachment(s), but only {present} attachment row(s) are in the database: {} \
                     missing",
                    declared - present
                )
            } else {
                format!(
                    "message {message_id} from {sender} (row {id}) has {present} attachment \
                     row(s), more than the {declared} it was accepted with"
                )
            });
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    found.add("attachments", listed, total);
    Ok(())
}

/// One anti-join: the first rows (each turned into a sentence) and how
/// many there are in all.
async fn orphans(
    db: &DatabaseConnection,
    found: &mut Findings,
    check: &'static str,
    select: &str,
    from_where: &str,
    order: &str,
    sentence: impl Fn(&sea_orm::QueryResult) -> Result<String>,
) -> Result<()> {
    let total = count(db, &format!("SELECT COUNT(*) AS n {from_where}")).await?;
    if total == 0 {
        return Ok(());
    }
    let mut q = Sql::new(db.get_database_backend());
    q.push(&format!(
        "SELECT {select} {from_where} ORDER BY {order} LIMIT {LISTED_PER_CHECK}"
    ));
    let listed = q
        .all(db)
        .await?
        .iter()
        .map(&sentence)
        .collect::<Result<Vec<_>>>()?;
    found.add(check, listed, total);
    Ok(())
}

/// Rows that point at a row that is not there.
async fn references(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    orphans(
        db,
        found,
        "references",
        "a.message_pk, CAST(a.idx AS BIGINT) AS idx, a.name",
        "FROM attachments a WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = a.message_pk)",
        "a.message_pk, a.idx",
        |r| {
            Ok(format!(
                "attachment {} ({}) belongs to message row {}, which does not exist",
                int(r, "idx")?,
                text(r, "name")?,
                int(r, "message_pk")?
            ))
        },
    )
    .await?;
    orphans(
        db,
        found,
        "references",
        "d.id, d.delivery_id, d.recipient, d.message_pk",
        "FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = d.message_pk)",
        "d.id",
        |r| {
            Ok(format!(
                "delivery {} (row {}) to {} points at message row {}, which does not exist",
                text(r, "delivery_id")?,
                int(r, "id")?,
                text(r, "recipient")?,
                int(r, "message_pk")?
            ))
        },
    )
    .await?;
    orphans(
        db,
        found,
        "references",
        "o.id, o.routing_key, o.delivery_pk, o.message_pk",
        "FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = o.delivery_pk) \
         OR NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = o.message_pk)",
        "o.id",
        |r| {
            Ok(format!(
                "outbox row {} (routing key {}) points at delivery row {} and message row {}, \
                 of which at least one does not exist",
                int(r, "id")?,
                text(r, "routing_key")?,
                int(r, "delivery_pk")?,
                int(r, "message_pk")?
            ))
        },
    )
    .await?;
    // Refusals and duplicates are logged for messages never stored; an
    // acceptance is written in the message's own transaction, so its line
    // without the message means the message was removed.
    orphans(
        db,
        found,
        "references",
        "e.id, e.sender, e.message_id",
        "FROM events e WHERE e.kind = 'accepted' AND NOT EXISTS (SELECT 1 FROM messages m \
         WHERE m.sender = e.sender AND m.message_id = e.message_id)",
        "e.id",
        |r| {
            Ok(format!(
                "the transfer log says message {} from {} was accepted (event row {}), but the \
                 message is not in the database",
                text(r, "message_id")?,
                text(r, "sender")?,
                int(r, "id")?
            ))
        },
    )
    .await
}

/// Bindings naming an agency (or operator) the directory does not hold.
async fn directory(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    orphans(
        db,
        found,
        "directory",
        "c.spki_sha256, c.organ_id, c.subject",
        "FROM signing_certs c WHERE NOT EXISTS (SELECT 1 FROM agencies g WHERE g.organ_id = \
         c.organ_id)",
        "c.spki_sha256",
        |r| {
            Ok(format!(
                "signing certificate {} (key SHA-256 {}) is bound to {}, which is not in the \
                 directory",
                text(r, "subject")?,
                text(r, "spki_sha256")?,
                text(r, "organ_id")?
            ))
        },
    )
    .await?;
    orphans(
        db,
        found,
        "directory",
        "c.spki_sha256, c.organ_id, c.role, c.subject",
        "FROM client_certs c WHERE (c.role = 'agency' AND NOT EXISTS (SELECT 1 FROM agencies g \
         WHERE g.organ_id = c.organ_id)) OR (c.role = 'operator' AND NOT EXISTS (SELECT 1 FROM \
         operators o WHERE o.name = c.organ_id))",
        "c.spki_sha256",
        |r| {
            let role = text(r, "role")?;
            let whom = if role == "operator" {
                "operator account"
            } else {
                "agency"
            };
            Ok(format!(
                "client certificate {} (key SHA-256 {}) is bound to {whom} {}, which does not \
                 exist",
                text(r, "subject")?,
                text(r, "spki_sha256")?,
                text(r, "organ_id")?
            ))
        },
    )
    .await?;
    orphans(
        db,
        found,
        "directory",
        "r.agent, r.principal",
        "FROM representations r WHERE NOT EXISTS (SELECT 1 FROM agencies g WHERE g.organ_id = \
         r.agent) OR NOT EXISTS (SELECT 1 FROM agencies g WHERE g.organ_id = r.principal)",
        "r.agent, r.principal",
        |r| {
            Ok(format!(
                "{} represents {}, but at least one of them is not in the directory",
                text(r, "agent")?,
                text(r, "principal")?
            ))
        },
    )
    .await
}

/// Every distinct blob the attachment rows name, a page at a time in
/// SHA-256 order: present (fast) or read through and checked (full).
async fn blob_pass(
    db: &DatabaseConnection,
    blobs: &BlobStore,
    depth: Depth,
    blobs_total: u64,
    found: &mut Findings,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(u64, u64)> {
    let mut at = Progress {
        blobs_done: 0,
        blobs_total,
        bytes_read: 0,
    };
    let mut listed = Vec::new();
    let mut total = 0u64;
    let mut after = String::new();
    loop {
        let mut q = Sql::new(db.get_database_backend());
        q.push("SELECT sha256, MAX(size) AS size FROM attachments WHERE sha256 > ")
            .bind(after.clone())
            .push(" GROUP BY sha256 ORDER BY sha256 LIMIT ")
            .push(&PAGE.to_string());
        let rows = q.all(db).await?;
        let Some(last) = rows.last() else { break };
        after = text(last, "sha256")?;
        for row in &rows {
            let sha = text(row, "sha256")?;
            let size = u64::try_from(int(row, "size")?).unwrap_or(0);
            let problem = if !blobs.blob_present(&sha).await? {
                Some(format!("are missing from {}", blobs.place_name()))
            } else if depth == Depth::Full {
                read_through(blobs, &sha, size, &mut at, progress)
                    .await
                    .err()
            } else {
                None
            };
            at.blobs_done += 1;
            if let Some(problem) = problem {
                total += 1;
                if listed.len() < LISTED_PER_CHECK {
                    listed.push(format!(
                        "the stored bytes of {} {problem} (blob SHA-256 {sha}, {size} bytes)",
                        name_blob(db, &sha).await?
                    ));
                }
            }
        }
        progress(at);
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    found.add("blobs", listed, total);
    Ok((at.blobs_done, at.bytes_read))
}

/// Reads a blob to its end; `Err` is what is wrong with it, as a sentence's
/// predicate.
async fn read_through(
    blobs: &BlobStore,
    sha: &str,
    size: u64,
    at: &mut Progress,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> std::result::Result<(), String> {
    // The reader's sentences are written for a recipient; the operator
    // needs only what is wrong.
    let failed = |e: crate::error::Error| {
        let m = e.message();
        let m = m.split("; do not use").next().unwrap_or(m);
        format!("do not check out: {m}")
    };
    let mut reader = blobs.open_blob(sha, size).await.map_err(failed)?;
    while let Some(chunk) = reader.next_chunk(READ_CHUNK).await.map_err(failed)? {
        at.bytes_read += chunk.len() as u64;
        progress(*at);
    }
    Ok(())
}

/// The attachment a blob belongs to, for a finding: its first row, and how
/// many others share the blob.
async fn name_blob(db: &DatabaseConnection, sha: &str) -> Result<String> {
    let mut q = Sql::new(db.get_database_backend());
    q.push(
        "SELECT CAST(a.idx AS BIGINT) AS idx, a.name, m.sender, m.message_id FROM attachments \
         a JOIN messages m ON \
         m.id = a.message_pk WHERE a.sha256 = ",
    )
    .bind(sha.to_owned())
    .push(" ORDER BY a.message_pk, a.idx LIMIT 1");
    let first = q.one(db).await?;
    let mut q = Sql::new(db.get_database_backend());
    q.push("SELECT COUNT(*) AS n FROM attachments WHERE sha256 = ")
        .bind(sha.to_owned());
    let uses = match q.one(db).await? {
        Some(r) => int(&r, "n")?,
        None => 0,
    };
    let others = if uses > 1 {
        format!(" (and {} other attachment(s) sharing it)", uses - 1)
    } else {
        String::new()
    };
    Ok(match first {
        Some(r) => format!(
            "attachment {} ({}) of message {} from {}{others}",
            int(&r, "idx")?,
            text(&r, "name")?,
            text(&r, "message_id")?,
            text(&r, "sender")?
        ),
        None => format!("{uses} attachment row(s) whose message does not exist"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WriterId;

    async fn fixture() -> Result<(tempfile::TempDir, Store, BlobStore)> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::connect(&url, WriterId::main()).await?;
        let blobs = BlobStore::open(dir.path().join("blobs")).await?;
        Ok((dir, store, blobs))
    }

    async fn run(store: &Store, blobs: &BlobStore, depth: Depth) -> Result<IntegrityReport> {
        verify(store, blobs, depth, None, &mut |_| {}).await
    }

    #[tokio::test]
    async fn an_empty_database_holds() -> Result<()> {
        let (_dir, store, blobs) = fixture().await?;
        for depth in [Depth::Fast, Depth::Full] {
            let r = run(&store, &blobs, depth).await?;
            assert!(r.holds(), "{:?}", r.findings);
            assert!(r.counts.iter().all(|(_, n)| *n == 0), "{:?}", r.counts);
        }
        Ok(())
    }

    #[tokio::test]
    async fn dangling_rows_are_named_and_counted_past_the_listed_ones() -> Result<()> {
        let (_dir, store, blobs) = fixture().await?;
        let extra = 5;
        for i in 0..(LISTED_PER_CHECK + extra) {
            store
                .execute_sql(&format!(
                    "INSERT INTO deliveries (delivery_id, message_pk, recipient, route, state, \
                     attempts, created_at) VALUES ('d{i}', 999, 'B', 'local', 'pending', 0, 0)"
                ))
                .await?;
        }
        store
            .execute_sql(
                "INSERT INTO attachments (message_pk, idx, name, content_type, size, sha256) \
                 VALUES (999, 0, 'cv.pdf', 'application/pdf', 3, 'ab')",
            )
            .await?;
        store
            .execute_sql(
                "INSERT INTO signing_certs (spki_sha256, organ_id, subject, issuer, not_after, \
                 cert_der, bound_at) VALUES ('cd', '000.00.99.H35', 'CN=X', 'CN=CA', 0, X'00', 0)",
            )
            .await?;
        let r = run(&store, &blobs, Depth::Fast).await?;
        assert!(!r.holds());
        let of = |check: &str| r.findings.iter().filter(|f| f.check == check).count();
        assert_eq!(of("references"), LISTED_PER_CHECK + 1, "{:?}", r.findings);
        assert_eq!(r.not_listed, extra as u64);
        assert_eq!(r.problems(), (LISTED_PER_CHECK + extra + 3) as u64);
        let whats: Vec<&str> = r.findings.iter().map(|f| f.what.as_str()).collect();
        assert!(
            whats.contains(
                &"delivery d0 (row 1) to B points at message row 999, which does not exist"
            )
        );
        assert!(
            whats.contains(
                &"attachment 0 (cv.pdf) belongs to message row 999, which does not exist"
            )
        );
        assert!(whats.contains(
            &"signing certificate CN=X (key SHA-256 cd) is bound to 000.00.99.H35, which is not in the directory"
        ));
        assert!(
            whats.iter().any(|w| w.starts_with(
                "the stored bytes of 1 attachment row(s) whose message does not exist are missing"
            )),
            "{whats:?}"
        );
        Ok(())
    }
}
