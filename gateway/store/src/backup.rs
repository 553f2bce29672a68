//! The database's side of `lienthong backup` and `lienthong restore`: a
//! consistent copy of a SQLite database while the gateway writes to it,
//! a PostgreSQL snapshot held open while `pg_dump` reads it, what a copy
//! holds (the chains' heads, the attachments it names), and whether a
//! database is empty enough to restore into. Running `pg_dump` and copying
//! files is the binary's; only the SQL is here.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lienthong_schema::entity::log_head;
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    EntityTrait, IsolationLevel, Statement, TransactionTrait,
};

pub use crate::checkpoint::ChainHead;
use crate::error::{Error, OrDb, OrErr, Reason, Result};
use crate::store::redact;

/// What a copy of the database holds that the backup's manifest records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseFacts {
    /// Every chain's head row, sorted by chain name.
    pub heads: Vec<ChainHead>,
    /// The SHA-256 (lowercase hex) of every blob an attachment names,
    /// once each, sorted.
    pub blobs: Vec<String>,
}

/// How much a database holds, for `restore`, which writes only into an
/// empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Whether the gateway's tables exist (a migrated, empty database).
    pub has_schema: bool,
    pub messages: i64,
    pub events: i64,
    /// Attachments kept in the database (`storage.backend = "database"`).
    pub stored_blobs: i64,
}

impl Occupancy {
    pub fn is_empty(&self) -> bool {
        self.messages == 0 && self.events == 0 && self.stored_blobs == 0
    }
}

/// The file of a `sqlite:` URL (`None` for an in-memory database).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// A `sqlite:` URL that reads `file` and nothing else: no lock, no
/// journal or shared-memory file made beside it (a backup's directory
/// holds only what its manifest lists).
pub fn sqlite_read_only_url(file: &Path) -> String {
    format!("sqlite://{}?mode=ro&immutable=true", file.display())
}

/// Connects for one command: one connection, no migrations (a backup
/// copies the schema as it is; a restore target may have none yet).
async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .max_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        // The gateway's writers hold the write lock for a group commit at
        // a time; a reader in WAL mode waits only for a checkpoint.
        opts.map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::from_secs(30)));
    }
    Database::connect(opts)
        .await
        .or_err_with(Reason::Unavailable, |_| {
            format!("cannot connect to the database at {}", redact(url))
        })
}

/// Writes a consistent copy of the SQLite database at `url` into `dest`
/// (which must not exist) with `VACUUM INTO`: one read transaction, so the
/// copy is the database as one commit left it, while the gateway goes on
/// writing (WAL mode: readers do not block the writer).
pub async fn sqlite_vacuum_into(url: &str, dest: &Path) -> Result<()> {
    if !url.starts_with("sqlite:") {
        return Err(Error::new(
            Reason::Internal,
            "VACUUM INTO is for SQLite databases only",
        ));
    }
    let db = connect(url).await?;
    let dest_text = dest.to_str().ok_or_else(|| {
        Error::malformed(format!("the backup's path {} is not UTF-8", dest.display()))
    })?;
    let done = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "VACUUM INTO ?",
            [dest_text.into()],
        ))
        .await
        .or_err_with(Reason::Unavailable, |_| {
            format!(
                "copying the database {} into {} failed",
                redact(url),
                dest.display()
            )
        });
    let _ = db.close().await;
    done.map(|_| ())
}

/// Reads what a database holds that a backup records: its chains' heads
/// and the blobs its attachments name.
pub async fn read_facts(url: &str) -> Result<DatabaseFacts> {
    let db = connect(url).await?;
    let facts = facts_in(&db).await;
    let _ = db.close().await;
    facts
}

async fn facts_in<C: ConnectionTrait>(db: &C) -> Result<DatabaseFacts> {
    let mut heads: Vec<ChainHead> = log_head::Entity::find()
        .all(db)
        .await
        .or_db()?
        .into_iter()
        .map(|h| ChainHead {
            chain: h.chain,
            hash: h.hash,
            seq: h.seq,
        })
        .collect();
    heads.sort();
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT DISTINCT sha256 FROM attachments ORDER BY sha256",
        ))
        .await
        .or_db()?;
    let mut blobs = Vec::with_capacity(rows.len());
    for r in rows {
        blobs.push(r.try_get::<String>("", "sha256").or_db()?);
    }
    Ok(DatabaseFacts { heads, blobs })
}

/// Holds a read-only snapshot of the PostgreSQL database at `url` open,
/// exports it, and hands its name to `dump` (which runs `pg_dump
/// --snapshot`), while the facts are read in that same snapshot: the
/// manifest's heads and blob list are those of the dump, whatever commits
/// meanwhile. Reading them after the dump instead would record heads
/// ahead of the dumped log, which a restore could not check against it.
pub async fn with_pg_snapshot<T, F, Fut>(url: &str, dump: F) -> Result<(T, DatabaseFacts)>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let db = connect(url).await?;
    if db.get_database_backend() != DbBackend::Postgres {
        return Err(Error::new(
            Reason::Internal,
            "an exported snapshot is for PostgreSQL databases only",
        ));
    }
    let txn = db
        .begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await
        .or_db()?;
    let row = txn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_export_snapshot() AS snapshot",
        ))
        .await
        .or_db()?
        .ok_or_else(|| Error::new(Reason::Internal, "pg_export_snapshot() answered nothing"))?;
    let snapshot: String = row.try_get("", "snapshot").or_db()?;
    let facts = facts_in(&txn).await?;
    // The snapshot can be imported only while this transaction lasts.
    let dumped = dump(snapshot).await;
    let _ = txn.rollback().await;
    let _ = db.close().await;
    Ok((dumped?, facts))
}

/// How much the database at `url` holds. A SQLite file that does not exist
/// holds nothing (and is not made).
pub async fn occupancy(url: &str) -> Result<Occupancy> {
    if let Some(file) = sqlite_path(url)
        && !file.exists()
    {
        return Ok(Occupancy::default());
    }
    let db = connect(url).await?;
    let found = occupancy_in(&db).await;
    let _ = db.close().await;
    found
}

async fn occupancy_in(db: &DatabaseConnection) -> Result<Occupancy> {
    let backend = db.get_database_backend();
    let count = |sql: String| async move {
        let row = db
            .query_one_raw(Statement::from_string(backend, sql))
            .await
            .or_db()?;
        match row {
            Some(r) => r.try_get::<i64>("", "n").or_db(),
            None => Ok(0),
        }
    };
    let exists = |table: &'static str| {
        let sql = match backend {
            DbBackend::Postgres => format!(
                "SELECT count(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '{table}'"
            ),
            _ => format!(
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
        };
        let count = &count;
        async move { Ok::<bool, Error>(count(sql).await? > 0) }
    };
    let mut found = Occupancy::default();
    // Any of the gateway's tables means pg_restore would collide with it.
    for table in ["messages", "events", "seaql_migrations", "agencies"] {
        found.has_schema |= exists(table).await?;
    }
    if exists("messages").await? {
        found.messages = count("SELECT count(*) AS n FROM messages".to_owned()).await?;
    }
    if exists("events").await? {
        found.events = count("SELECT count(*) AS n FROM events".to_owned()).await?;
    }
    if exists("stored_blobs").await? {
        found.stored_blobs = count("SELECT count(*) AS n FROM stored_blobs".to_owned()).await?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_read_from_urls() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/lienthong/db.sqlite?mode=rwc"),
            Some(PathBuf::from("/var/lib/lienthong/db.sqlite"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }
}
