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
use lienthong_types::organ_id::{IdPolicy, OrganId};

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
    /// `directory`, `lifecycle`, `blobs`.
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
    parents(db, &mut found).await?;
    lifecycle(db, &mut found).await?;
    // `lienthong migrate` checks the previous release's schema too, before
    // it migrates: there nothing is archived yet.
    if column_exists(db, "messages", "archived_in").await? {
        archive(db, &mut found).await?;
    }
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

/// Whether `table` has `column`: the check also runs on the schema of the
/// release before (`lienthong migrate` checks before it migrates), which
/// may not have the newest columns.
async fn column_exists(db: &DatabaseConnection, table: &str, column: &str) -> Result<bool> {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => format!(
            "SELECT COUNT(*) AS n FROM pragma_table_info('{table}') WHERE name = '{column}'"
        ),
        _ => format!(
            "SELECT COUNT(*) AS n FROM information_schema.columns WHERE table_schema = \
             current_schema() AND table_name = '{table}' AND column_name = '{column}'"
        ),
    };
    Ok(count(db, &sql).await? > 0)
}

/// Each message's `attachment_count` against its attachment rows, a page
/// of messages at a time.
async fn attachment_counts(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    let mut after = 0i64;
    let mut listed = Vec::new();
    let mut total = 0u64;
    // Purged messages have no attachment rows left. `lienthong migrate`
    // checks the previous release's schema too, before it migrates: there
    // no message is purged yet.
    let live = if column_exists(db, "messages", "purged_at").await? {
        "m.purged_at IS NULL AND "
    } else {
        ""
    };
    loop {
        let mut q = Sql::new(db.get_database_backend());
        q.push(&format!(
            "SELECT m.id, m.sender, m.message_id, CAST(m.attachment_count AS BIGINT) AS attachment_count, \
             (SELECT COUNT(*) FROM attachments a WHERE a.message_pk = m.id) AS rows_found \
             FROM messages m WHERE {live}m.id > ",
        ))
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

/// The archive's tombstones against the register of packages: a message
/// archived into a package the database never registered, one whose
/// content left without a package, a tombstone that still has attachment
/// rows.
async fn archive(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    orphans(
        db,
        found,
        "archive",
        "m.id, m.sender, m.message_id, m.archived_in",
        "FROM messages m WHERE m.archived_in IS NOT NULL AND NOT EXISTS (SELECT 1 FROM \
         archive_packages p WHERE p.name = m.archived_in)",
        "m.id",
        |r| {
            Ok(format!(
                "message {} from {} (row {}) is archived in package {}, which this database \
                 never registered",
                text(r, "message_id")?,
                text(r, "sender")?,
                int(r, "id")?,
                text(r, "archived_in")?
            ))
        },
    )
    .await?;
    orphans(
        db,
        found,
        "archive",
        "m.id, m.sender, m.message_id",
        "FROM messages m WHERE LENGTH(m.signed_envelope) = 0 AND (m.archived_in IS NULL OR \
         m.purged_at IS NULL)",
        "m.id",
        |r| {
            Ok(format!(
                "message {} from {} (row {}) has lost its envelope, and no archive package was \
                 purged of it",
                text(r, "message_id")?,
                text(r, "sender")?,
                int(r, "id")?
            ))
        },
    )
    .await?;
    orphans(
        db,
        found,
        "archive",
        "m.id, m.sender, m.message_id, m.archived_in",
        "FROM messages m WHERE m.purged_at IS NOT NULL AND EXISTS (SELECT 1 FROM attachments a \
         WHERE a.message_pk = m.id)",
        "m.id",
        |r| {
            Ok(format!(
                "message {} from {} (row {}) was purged into package {}, but its attachment rows \
                 are still here",
                text(r, "message_id")?,
                text(r, "sender")?,
                int(r, "id")?,
                text(r, "archived_in")?
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

/// The status codes a notice is accepted with (the core's
/// `pipeline::STATUS_CODES`; a test keeps the two the same).
pub const STATUS_CODES: [&str; 9] = ["01", "02", "03", "04", "05", "06", "13", "15", "16"];

/// The states a delivery is written with: `pending` until handed over,
/// `acked` (by its recipient, or by the broker for an agency's queue),
/// `sent` (confirmed by the broker to another gateway's exchange),
/// `withdrawn` (recalled before it was handed out).
pub const DELIVERY_STATES: [&str; 4] = ["pending", "acked", "sent", "withdrawn"];

/// How many parents a cycle is followed through before giving up: a
/// directory changed while it is checked can make a walk that never ends.
const CYCLE_WALK: usize = 10_000;

/// The directory's parent pointers: each agency's parent is in the
/// directory, and no chain of parents leads back to where it started.
///
/// A parent the directory does not hold is a finding only when it is not
/// the code's own parent (`000.00.12.H35` → `000.00.00.H35`): the directory
/// file may leave out the agencies above its own, and each code's parent is
/// implied when the file names none.
async fn parents(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    let mut listed = Vec::new();
    let mut total = 0u64;
    let mut after = String::new();
    loop {
        let mut q = Sql::new(db.get_database_backend());
        q.push(
            "SELECT g.organ_id, g.name, g.parent FROM agencies g WHERE g.parent IS NOT NULL \
             AND g.parent <> '' AND NOT EXISTS (SELECT 1 FROM agencies p WHERE p.organ_id = \
             g.parent) AND g.organ_id > ",
        )
        .bind(after.clone())
        .push(" ORDER BY g.organ_id LIMIT ")
        .push(&PAGE.to_string());
        let rows = q.all(db).await?;
        let Some(last) = rows.last() else { break };
        after = text(last, "organ_id")?;
        for row in &rows {
            let (organ_id, parent) = (text(row, "organ_id")?, text(row, "parent")?);
            let implied = OrganId::parse_with(&organ_id, IdPolicy::Lenient)
                .ok()
                .and_then(|o| o.parent());
            if implied.as_ref().is_some_and(|p| p.as_str() == parent) {
                continue;
            }
            total += 1;
            if listed.len() < LISTED_PER_CHECK {
                listed.push(format!(
                    "agency {organ_id} ({}) has the parent {parent}, which is not in the \
                     directory{}",
                    text(row, "name")?,
                    match implied {
                        Some(p) => format!(" (its code's own parent is {p})"),
                        None => String::new(),
                    }
                ));
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    found.add("directory", listed, total);

    // Every agency whose chain of parents comes back to it: a walk up
    // from each agency, each (agency, ancestor) pair once, so it ends
    // whatever the directory holds. Only a directory with a cycle has any.
    let mut cycles: Vec<String> = Vec::new();
    let mut total = 0u64;
    let mut covered: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut after = String::new();
    loop {
        let mut q = Sql::new(db.get_database_backend());
        q.push(
            "WITH RECURSIVE up(start, cur) AS (SELECT organ_id, parent FROM agencies WHERE \
             parent IS NOT NULL AND parent <> '' UNION SELECT up.start, g.parent FROM up JOIN \
             agencies g ON g.organ_id = up.cur WHERE g.parent IS NOT NULL AND g.parent <> '' \
             AND up.cur <> up.start) SELECT DISTINCT start FROM up WHERE cur = start AND start > ",
        )
        .bind(after.clone())
        .push(" ORDER BY start LIMIT ")
        .push(&PAGE.to_string());
        let rows = q.all(db).await?;
        let Some(last) = rows.last() else { break };
        after = text(last, "start")?;
        for row in &rows {
            let start = text(row, "start")?;
            if covered.contains(&start) {
                continue;
            }
            // Named once, from its smallest code (the first met in order).
            let mut path = vec![start.clone()];
            let mut cur = start.clone();
            for _ in 0..CYCLE_WALK {
                let mut q = Sql::new(db.get_database_backend());
                q.push("SELECT parent FROM agencies WHERE organ_id = ")
                    .bind(cur.clone());
                let Some(next) = q.one(db).await? else { break };
                cur = text(&next, "parent")?;
                path.push(cur.clone());
                if cur == start || cur.is_empty() {
                    break;
                }
            }
            covered.extend(path.iter().cloned());
            total += 1;
            if cycles.len() < LISTED_PER_CHECK {
                let n = path.len().saturating_sub(1);
                cycles.push(if n <= 1 {
                    format!("agency {start} is its own parent")
                } else {
                    format!(
                        "the parents of agency {start} lead back to it, a cycle of {n} agencies: \
                         {}",
                        path.join(" → ")
                    )
                });
            }
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    found.add("directory", cycles, total);
    Ok(())
}

/// What a document's lifecycle is folded from (the lifecycle is not
/// stored: the core reads it from the messages, their deliveries and the
/// status notices answering them): rows the fold could not read, or whose
/// state says two things at once.
///
/// A status notice whose document is not in the database is not a
/// finding: the gateway accepts a notice before its document (it may
/// overtake it on the way from another gateway, or answer a document
/// carried some other way) and applies it when the document arrives.
async fn lifecycle(db: &DatabaseConnection, found: &mut Findings) -> Result<()> {
    orphans(
        db,
        found,
        "lifecycle",
        "m.id, m.sender, m.message_id, m.kind",
        "FROM messages m WHERE m.kind NOT IN ('document', 'status')",
        "m.id",
        |r| {
            Ok(format!(
                "message {} from {} (row {}) is of kind {:?}, neither a document nor a status \
                 notice: its document's lifecycle cannot be read",
                text(r, "message_id")?,
                text(r, "sender")?,
                int(r, "id")?,
                text(r, "kind")?
            ))
        },
    )
    .await?;
    let codes = STATUS_CODES.map(|c| format!("'{c}'")).join(", ");
    orphans(
        db,
        found,
        "lifecycle",
        "m.id, m.sender, m.message_id, m.document_id, m.ref_from, m.status_code, \
         CASE WHEN m.ref_from IS NULL OR m.ref_from = '' THEN 1 ELSE 0 END AS no_ref",
        &format!(
            "FROM messages m WHERE m.kind = 'status' AND (m.ref_from IS NULL OR m.ref_from = '' \
             OR m.status_code IS NULL OR m.status_code NOT IN ({codes}))"
        ),
        "m.id",
        |r| {
            let head = format!(
                "status notice {} from {} (row {}) about document {}",
                text(r, "message_id")?,
                text(r, "sender")?,
                int(r, "id")?,
                text(r, "document_id")?
            );
            Ok(if int(r, "no_ref")? == 1 {
                format!(
                    "{head} does not say who sent that document (ref_from is empty): it \
                     answers no document"
                )
            } else {
                let code = text(r, "status_code")?;
                let ref_from = text(r, "ref_from")?;
                if code.is_empty() {
                    format!("{head} of {ref_from} has no status code")
                } else {
                    format!(
                        "{head} of {ref_from} has the status code {code:?}, which is not one of {}",
                        STATUS_CODES.join(", ")
                    )
                }
            })
        },
    )
    .await?;
    let states = DELIVERY_STATES.map(|c| format!("'{c}'")).join(", ");
    // A delivery's timestamps as its state requires them: handed over or
    // withdrawn (`acked_at`), confirmed by the broker (`last_delivered_at`),
    // still waiting (no `acked_at`); only an exchange's copies are `sent`.
    orphans(
        db,
        found,
        "lifecycle",
        "d.id, d.delivery_id, d.recipient, d.route, d.state, d.message_pk, \
         CASE WHEN d.acked_at IS NULL THEN 0 ELSE 1 END AS has_acked, \
         CASE WHEN d.last_delivered_at IS NULL THEN 0 ELSE 1 END AS has_delivered",
        &format!(
            "FROM deliveries d WHERE d.state NOT IN ({states}) \
             OR NOT (d.route = 'local' OR d.route LIKE 'exchange:%' OR d.route LIKE 'queue:%') \
             OR (d.state = 'pending' AND d.acked_at IS NOT NULL) \
             OR (d.state = 'acked' AND d.acked_at IS NULL) \
             OR (d.state = 'withdrawn' AND (d.acked_at IS NULL OR d.last_delivered_at IS NOT NULL)) \
             OR (d.state = 'sent' AND (d.last_delivered_at IS NULL OR d.acked_at IS NOT NULL \
                 OR d.route NOT LIKE 'exchange:%'))"
        ),
        "d.id",
        |r| {
            let state = text(r, "state")?;
            let route = text(r, "route")?;
            let acked = int(r, "has_acked")? == 1;
            let delivered = int(r, "has_delivered")? == 1;
            let head = format!(
                "delivery {} (row {}) of message row {} to {} (route {route})",
                text(r, "delivery_id")?,
                int(r, "id")?,
                int(r, "message_pk")?,
                text(r, "recipient")?
            );
            let what = if !DELIVERY_STATES.contains(&state.as_str()) {
                format!(
                    "has the state {state:?}, which is not one of {}",
                    DELIVERY_STATES.join(", ")
                )
            } else if route != "local"
                && !route.starts_with("exchange:")
                && !route.starts_with("queue:")
            {
                "has a route that is not local, exchange:NAME or queue:NAME".to_owned()
            } else {
                match state.as_str() {
                    "pending" => "is pending, yet has a time it was acknowledged (acked_at)",
                    "acked" => "is acknowledged, but has no time it was acknowledged (acked_at)",
                    "withdrawn" if !acked => {
                        "is withdrawn, but has no time it was withdrawn (acked_at)"
                    }
                    "withdrawn" => {
                        "is withdrawn (recalled before it was handed out), yet was handed out \
                         (last_delivered_at)"
                    }
                    _ if !route.starts_with("exchange:") => {
                        "is sent, which only a copy for another gateway's exchange can be"
                    }
                    _ if !delivered => {
                        "is sent, but has no time the broker confirmed it (last_delivered_at)"
                    }
                    _ => "is sent to another gateway, yet has a time it was acknowledged here \
                          (acked_at)",
                }
                .to_owned()
            };
            Ok(format!("{head} {what}"))
        },
    )
    .await?;
    // A copy this gateway hands over itself (its inbox, or the agency's own
    // queue) goes to an agency of its directory; agencies are deactivated,
    // never removed. Copies for another gateway's exchange name agencies of
    // that gateway's directory. A delivery whose message is gone is named
    // by the references check.
    orphans(
        db,
        found,
        "lifecycle",
        "d.id, d.delivery_id, d.recipient, d.route, m.sender, m.message_id",
        "FROM deliveries d JOIN messages m ON m.id = d.message_pk WHERE (d.route = 'local' \
         OR d.route LIKE 'queue:%') AND NOT EXISTS (SELECT 1 FROM agencies g WHERE g.organ_id \
         = d.recipient)",
        "d.id",
        |r| {
            Ok(format!(
                "delivery {} (row {}) of message {} from {} goes to {} (route {}), which is not \
                 in the directory",
                text(r, "delivery_id")?,
                int(r, "id")?,
                text(r, "message_id")?,
                text(r, "sender")?,
                text(r, "recipient")?,
                text(r, "route")?
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

    async fn agency(store: &Store, organ_id: &str, parent: Option<&str>) -> Result<()> {
        let parent = parent.map_or("NULL".to_owned(), |p| format!("'{p}'"));
        store
            .execute_sql(&format!(
                "INSERT INTO agencies (organ_id, name, parent, email, telephone, address, \
                 website, channel, active, extra, updated_at) VALUES ('{organ_id}', 'Sở {organ_id}', \
                 {parent}, '', '', '', '', 'grpc', TRUE, '{{}}', 0)"
            ))
            .await?;
        Ok(())
    }

    fn whats<'a>(r: &'a IntegrityReport, check: &str) -> Vec<&'a str> {
        r.findings
            .iter()
            .filter(|f| f.check == check)
            .map(|f| f.what.as_str())
            .collect()
    }

    #[test]
    fn the_status_codes_are_the_cores() {
        assert_eq!(STATUS_CODES, lienthong_core::pipeline::STATUS_CODES);
    }

    #[tokio::test]
    async fn a_dangling_parent_and_a_parent_cycle_are_named() -> Result<()> {
        let (_dir, store, blobs) = fixture().await?;
        // Sound: a parent in the directory, and a code's own parent left
        // out of it (the directory file need not list the agencies above).
        agency(&store, "000.00.00.H35", None).await?;
        agency(&store, "000.00.01.H35", Some("000.00.00.H35")).await?;
        agency(&store, "000.00.12.H36", Some("000.00.00.H36")).await?;
        assert!(run(&store, &blobs, Depth::Fast).await?.holds());

        // A parent that is neither in the directory nor the code's own.
        agency(&store, "000.00.13.H35", Some("000.00.77.H35")).await?;
        agency(&store, "vxp.lone", Some("vxp.gone")).await?;
        // A cycle of two, a tail leading into it, and an agency that is
        // its own parent.
        agency(&store, "vxp.a", Some("vxp.b")).await?;
        agency(&store, "vxp.b", Some("vxp.a")).await?;
        agency(&store, "vxp.tail", Some("vxp.a")).await?;
        agency(&store, "vxp.self", Some("vxp.self")).await?;
        let r = run(&store, &blobs, Depth::Fast).await?;
        assert_eq!(
            whats(&r, "directory"),
            vec![
                "agency 000.00.13.H35 (Sở 000.00.13.H35) has the parent 000.00.77.H35, which is \
                 not in the directory (its code's own parent is 000.00.00.H35)",
                "agency vxp.lone (Sở vxp.lone) has the parent vxp.gone, which is not in the \
                 directory",
                "the parents of agency vxp.a lead back to it, a cycle of 2 agencies: vxp.a → \
                 vxp.b → vxp.a",
                "agency vxp.self is its own parent",
            ],
            "{:?}",
            r.findings
        );
        assert_eq!(r.problems(), 4);
        Ok(())
    }

    #[tokio::test]
    async fn inconsistent_deliveries_and_unreadable_notices_are_named() -> Result<()> {
        let (_dir, store, blobs) = fixture().await?;
        agency(&store, "A", None).await?;
        agency(&store, "B", None).await?;
        let message = |id: i64, kind: &str, document_id: &str, rest: &str| {
            format!(
                "INSERT INTO messages (id, sender, message_id, kind, document_id, ref_from, \
                 status_code, envelope_sha256, signed_envelope, verification, accepted_at, \
                 attachment_count, business_type, priority) VALUES ({id}, 'A', 'm{id}', \
                 '{kind}', '{document_id}', {rest}, 'ab', X'00', X'00', 0, 0, 0, 0)"
            )
        };
        store
            .execute_sql(&message(1, "document", "D1", "NULL, NULL"))
            .await?;
        // A notice answering a document not (yet) here: legitimate.
        store
            .execute_sql(&message(2, "status", "D9", "'C', '01'"))
            .await?;
        let delivery = |id: i64, route: &str, state: &str, delivered: &str, acked: &str| {
            format!(
                "INSERT INTO deliveries (id, delivery_id, message_pk, recipient, route, state, \
                 attempts, created_at, last_delivered_at, acked_at) VALUES ({id}, 'd{id}', 1, \
                 'B', '{route}', '{state}', 0, 0, {delivered}, {acked})"
            )
        };
        // Every state with the times it is written with.
        for sql in [
            delivery(1, "local", "pending", "NULL", "NULL"),
            delivery(2, "local", "pending", "5", "NULL"),
            delivery(3, "local", "acked", "5", "6"),
            delivery(4, "queue:b", "acked", "5", "5"),
            delivery(5, "exchange:x", "sent", "5", "NULL"),
            delivery(6, "local", "withdrawn", "NULL", "5"),
        ] {
            store.execute_sql(&sql).await?;
        }
        let r = run(&store, &blobs, Depth::Fast).await?;
        assert!(r.holds(), "{:?}", r.findings);

        for sql in [
            delivery(7, "local", "acked", "5", "NULL"),
            delivery(8, "local", "pending", "NULL", "5"),
            delivery(9, "local", "withdrawn", "5", "6"),
            delivery(10, "local", "sent", "5", "NULL"),
            delivery(11, "local", "lost", "NULL", "NULL"),
            message(3, "status", "D1", "'A', '99'"),
            message(4, "status", "D1", "NULL, '01'"),
            message(5, "receipt", "D1", "NULL, NULL"),
            // To an agency not in the directory: named for this gateway's
            // own inbox, not for another gateway's exchange.
            "INSERT INTO deliveries (id, delivery_id, message_pk, recipient, route, state, \
             attempts, created_at) VALUES (12, 'd12', 1, 'Z', 'local', 'pending', 0, 0), \
             (13, 'd13', 1, 'Z', 'exchange:x', 'pending', 0, 0)"
                .to_owned(),
        ] {
            store.execute_sql(&sql).await?;
        }
        let r = run(&store, &blobs, Depth::Fast).await?;
        assert_eq!(
            whats(&r, "lifecycle"),
            vec![
                "message m5 from A (row 5) is of kind \"receipt\", neither a document nor a \
                 status notice: its document's lifecycle cannot be read",
                "status notice m3 from A (row 3) about document D1 of A has the status code \
                 \"99\", which is not one of 01, 02, 03, 04, 05, 06, 13, 15, 16",
                "status notice m4 from A (row 4) about document D1 does not say who sent that \
                 document (ref_from is empty): it answers no document",
                "delivery d7 (row 7) of message row 1 to B (route local) is acknowledged, but \
                 has no time it was acknowledged (acked_at)",
                "delivery d8 (row 8) of message row 1 to B (route local) is pending, yet has a \
                 time it was acknowledged (acked_at)",
                "delivery d9 (row 9) of message row 1 to B (route local) is withdrawn (recalled \
                 before it was handed out), yet was handed out (last_delivered_at)",
                "delivery d10 (row 10) of message row 1 to B (route local) is sent, which only \
                 a copy for another gateway's exchange can be",
                "delivery d11 (row 11) of message row 1 to B (route local) has the state \
                 \"lost\", which is not one of pending, acked, sent, withdrawn",
                "delivery d12 (row 12) of message m1 from A goes to Z (route local), which is \
                 not in the directory",
            ],
            "{:?}",
            r.findings
        );
        assert_eq!(r.problems(), 9);
        Ok(())
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

    #[tokio::test]
    async fn tombstones_are_checked_against_the_register() -> Result<()> {
        let (_dir, store, blobs) = fixture().await?;
        let message = |id: i64, envelope: &str, archived: &str| {
            format!(
                "INSERT INTO messages (id, sender, message_id, kind, document_id, \
                 envelope_sha256, signed_envelope, verification, accepted_at, attachment_count, \
                 business_type, priority, archived_in, archive_entry, purged_at) VALUES ({id}, \
                 'A', 'm{id}', 'document', 'd{id}', 'ab', {envelope}, X'', 0, 1, 0, 0, {archived})"
            )
        };
        store
            .execute_sql(&message(1, "X''", "'nowhere.zip', 'messages/1/', 5"))
            .await?;
        store
            .execute_sql(&message(2, "X''", "NULL, NULL, NULL"))
            .await?;
        store
            .execute_sql(
                "INSERT INTO attachments (message_pk, idx, name, content_type, size, sha256) \
                 VALUES (1, 0, 'cv.pdf', 'application/pdf', 3, 'ab')",
            )
            .await?;
        let r = run(&store, &blobs, Depth::Fast).await?;
        let whats: Vec<&str> = r
            .findings
            .iter()
            .filter(|f| f.check == "archive")
            .map(|f| f.what.as_str())
            .collect();
        assert_eq!(
            whats,
            [
                "message m1 from A (row 1) is archived in package nowhere.zip, which this \
                 database never registered",
                "message m2 from A (row 2) has lost its envelope, and no archive package was \
                 purged of it",
                "message m1 from A (row 1) was purged into package nowhere.zip, but its \
                 attachment rows are still here",
            ],
            "{:?}",
            r.findings
        );
        Ok(())
    }
}
