//! The database side of the core: which rows change together, in which
//! transaction.
//!
//! Architecture invariant: a message, its attachments' rows, its deliveries
//! and its `accepted`/`routed` events are written in one transaction. A
//! receipt is only given after that transaction has committed, and SQLite
//! runs with `synchronous = FULL` so that a commit is on disk.
//!
//! Architecture invariant: the `events` table (the transfer log) is only
//! ever inserted into.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lienthong_schema::Migrator;
use lienthong_schema::MigratorTrait;
use lienthong_schema::entity::{
    agency, attachment, client_cert, delivery, event, log_head, message, outbox, representation,
    signing_cert,
};
use lienthong_schema::migration::MAIN_CHAIN;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, PrimaryKeyTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    Statement, TransactionTrait,
};

use crate::error::{Error, OrDb, OrErr, Reason, Result, db_error};
use crate::rows::{
    AgencyRow, AttachmentRow, ClientCertRow, DeliveryRow, EventRow, MessageRow, SigningCertRow,
    read_all,
};
use lienthong_types::{MessageKind, Route};
use tokio::sync::{mpsc, oneshot};

pub use crate::checkpoint::{
    CHECKPOINT_PAYLOAD_TYPE, ChainHead, Checkpoint, CheckpointCounts, CheckpointSignature,
    CheckpointSigner, CheckpointVerifier, LogFinding,
};
pub use crate::commit::HandOut;
use crate::commit::{
    Accepted, AckRequest, COMMIT_QUEUE, DeliveredMarks, Job, MarkItem, committer_gone,
};
use crate::directory_cache::{self, DirectoryCache};
pub use crate::lease::Lease;
pub use crate::writes::{
    AcceptError, AckOutcome, DocumentIndex, EventKind, NewAttachment, NewEvent, NewMessage,
    WriterId, chain_genesis, chain_hash,
};

pub use lienthong_types::now_micros;

fn event_hash(e: &event::Model) -> Option<String> {
    Some(chain_hash(
        e.prev_hash.as_deref()?,
        e.chain_seq?,
        e.at,
        &e.kind,
        &e.sender,
        &e.message_id,
        e.recipient.as_deref(),
        e.reason.as_deref(),
        &e.detail,
        e.actor.as_deref(),
        &e.transport,
    ))
}

/// Appends events to `writer`'s hash chain inside the caller's
/// transaction, after its head row's position (see
/// [`crate::commit::append`]).
pub(crate) async fn append_events<C: ConnectionTrait>(
    c: &C,
    writer: &WriterId,
    events: Vec<NewEvent>,
    at: i64,
) -> Result<(), DbErr> {
    let events: Vec<(i64, NewEvent)> = events.into_iter().map(|e| (at, e)).collect();
    crate::commit::append(c, writer, None, &events)
        .await
        .map(|_| ())
}

/// What `lienthong log verify` found: every chain of the transfer log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogVerification {
    /// Each chain, by name: those with a head row and those with events.
    pub chains: Vec<ChainVerification>,
    /// Events written before the chain existed (no hash to check).
    pub unchained: u64,
    /// The checkpoints read and how their signatures stood.
    pub checkpoints: CheckpointCounts,
    /// What the checkpoints tell that no chain alone can: a chain missing,
    /// cut back or rewritten, a checkpoint that is not the gateway's.
    pub findings: Vec<LogFinding>,
}

/// What `lienthong log verify` found in one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerification {
    /// The chain's name: the writer that extends it.
    pub chain: String,
    /// Events checked in order, from the first to the end or to the first
    /// broken link.
    pub checked: u64,
    /// The position and hash its head row names (`None`: it has no row).
    pub head: Option<(i64, String)>,
    /// The first broken link, if any: the position and what is wrong.
    pub first_broken: Option<(i64, String)>,
}

impl LogVerification {
    /// No chain has a broken link, and the checkpoints found nothing.
    pub fn intact(&self) -> bool {
        self.chains.iter().all(|c| c.first_broken.is_none()) && self.findings.is_empty()
    }

    /// Chained events checked, in all chains.
    pub fn checked(&self) -> u64 {
        self.chains.iter().map(|c| c.checked).sum()
    }

    /// The first broken link of the first chain that has one, else the
    /// first finding of the checkpoints: the chain, the position and what
    /// is wrong.
    pub fn first_broken(&self) -> Option<(&str, i64, &str)> {
        self.chains
            .iter()
            .find_map(|c| {
                c.first_broken
                    .as_ref()
                    .map(|(seq, what)| (c.chain.as_str(), *seq, what.as_str()))
            })
            .or_else(|| {
                self.findings
                    .first()
                    .map(|f| (f.chain.as_str(), f.seq, f.what.as_str()))
            })
    }

    /// One chain's result, by name.
    pub fn chain(&self, name: &str) -> Option<&ChainVerification> {
        self.chains.iter().find(|c| c.chain == name)
    }
}

/// A copy waiting to leave through AMQP, as the relay reads it: which
/// delivery of which message, where it is published, and how often it was
/// tried. The row's state and timestamps stay in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub delivery_pk: i64,
    pub message_pk: i64,
    /// `""` is the default exchange: an agency's own queue, named by
    /// `routing_key`.
    pub exchange: String,
    pub routing_key: String,
    /// Publications tried so far (the relay backs off by it).
    pub attempts: i32,
}

impl From<outbox::Model> for OutboxEntry {
    fn from(m: outbox::Model) -> OutboxEntry {
        OutboxEntry {
            id: m.id,
            delivery_pk: m.delivery_pk,
            message_pk: m.message_pk,
            exchange: m.exchange,
            routing_key: m.routing_key,
            attempts: m.attempts,
        }
    }
}

/// A delivery with the message it carries.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub delivery: DeliveryRow,
    pub message: MessageRow,
}

/// One change of the directory with its lines in the transfer log: written
/// in one transaction, so that no change is without its line, and no line
/// without its change. Built by `crate::directory`, which words the lines.
#[derive(Debug, Default)]
pub struct DirectoryChange {
    /// Agencies inserted or replaced.
    pub agencies: Vec<AgencyRow>,
    /// (organ_id, active): an agency deactivated or activated.
    pub set_active: Vec<(String, bool)>,
    /// Signing certificates bound (re-binding a key moves it).
    pub bind_signing: Vec<SigningCertRow>,
    /// (key sha256, organ_id): signing certificates unbound.
    pub unbind_signing: Vec<(String, String)>,
    /// Client certificates bound.
    pub bind_client: Vec<ClientCertRow>,
    /// (key sha256, organ_id or operator name, role): client certificates
    /// unbound.
    pub unbind_client: Vec<(String, String, String)>,
    /// (agent, principal): representations granted.
    pub grant: Vec<(String, String)>,
    /// (agent, principal): representations revoked.
    pub revoke: Vec<(String, String)>,
    /// The transfer log's lines (kind `directory_changed`).
    pub log: Vec<NewEvent>,
    /// A peer gateway's signed update or snapshot, when that is what the
    /// change applies: its progress moves in the same transaction.
    pub peer: Option<crate::peer_changes::PeerAdvance>,
    /// Foreign agencies or keys blocked here by the operator.
    pub block: Vec<crate::peer_changes::Block>,
    /// (organ_id, key sha256): blocks lifted.
    pub unblock: Vec<(String, Option<String>)>,
}

/// Connects with the gateway's options: `sqlite:` URLs get their directory
/// created and run in WAL mode with full fsync on commit.
async fn connect_database(url: &str) -> Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    // During a database outage every call waits this long before it is
    // refused UNAVAILABLE ("try again"), and a call may need two
    // connections: short enough that agencies hear it well within their own
    // deadlines, long enough that a busy pool is not taken for an outage.
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    if url.starts_with("sqlite:") {
        if let Some(dir) = sqlite_dir(url) {
            std::fs::create_dir_all(&dir).or_err_with(Reason::Unavailable, |_| {
                    format!(
                        "cannot create the database directory {}; check database.url and the permissions",
                        dir.display()
                    )
                })?;
        }
        // Validate the URL here so that a typo gets a sentence, not a panic deep in sqlx.
        SqliteConnectOptions::from_str(url).or_err_with(Reason::Unavailable, |_| {
            format!("database.url {url:?} is not a usable SQLite URL")
        })?;
        opts.max_connections(8).map_sqlx_sqlite_opts(|o| {
            o.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                // A multi-row statement inside a transaction keeps a
                // statement journal (to undo itself alone); in a file,
                // that was a temporary file written per group.
                .pragma("temp_store", "memory")
        });
    } else {
        opts.max_connections(16);
    }
    let db = Database::connect(opts)
        .await
        .or_err_with(Reason::Unavailable, |_| {
            format!("cannot connect to the database at {}", redact(url))
        })?;
    Ok(db)
}

/// What `lienthong migrate` does: reads the database's schema against this
/// release and, with `apply`, applies what is pending. Refuses a schema
/// migrated by a newer release. Returns the state found before applying.
pub async fn migrate(url: &str, apply: bool) -> Result<SchemaState> {
    let db = connect_database(url).await?;
    let schema = SchemaState::read(&db).await?;
    schema.refuse_newer()?;
    if apply && !schema.pending.is_empty() {
        Migrator::up(&db, None)
            .await
            .or_err(Reason::Unavailable, "the database schema migration failed")?;
    }
    let _ = db.close().await;
    Ok(schema)
}

/// What opening the store does with a schema that is behind this release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Apply the pending migrations (the embedded default: one process).
    Apply,
    /// Refuse to start: `lienthong migrate` applies them, once, apart from
    /// the replicas (`database.migrate = "manual"`).
    Require,
    /// Leave the schema as it is: `lienthong migrate` checks the database
    /// before it migrates it.
    Leave,
}

/// The database's schema against the migrations this release knows.
#[derive(Debug, Default)]
pub struct SchemaState {
    /// Known to this release, not applied yet.
    pub pending: Vec<String>,
    /// Applied by a newer release, unknown to this one.
    pub unknown: Vec<String>,
}

impl SchemaState {
    /// Reads `seaql_migrations` itself: sea-orm's own check fails on an
    /// unknown migration with a sentence about missing files.
    pub async fn read(db: &DatabaseConnection) -> Result<SchemaState> {
        let known: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        let exists = match db.get_database_backend() {
            DbBackend::Sqlite => {
                "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'"
            }
            _ => {
                "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'seaql_migrations'"
            }
        };
        let n: i64 = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), exists))
            .await
            .or_err(
                Reason::Unavailable,
                "cannot read the database's schema version",
            )?
            .map(|r| r.try_get("", "n"))
            .transpose()
            .or_err(
                Reason::Unavailable,
                "cannot read the database's schema version",
            )?
            .unwrap_or(0);
        let applied: Vec<String> = if n == 0 {
            Vec::new()
        } else {
            db.query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT version FROM seaql_migrations ORDER BY version",
            ))
            .await
            .or_err(
                Reason::Unavailable,
                "cannot read the database's schema version",
            )?
            .iter()
            .map(|r| r.try_get::<String>("", "version"))
            .collect::<std::result::Result<_, _>>()
            .or_err(
                Reason::Unavailable,
                "cannot read the database's schema version",
            )?
        };
        Ok(SchemaState {
            pending: known
                .iter()
                .filter(|k| !applied.contains(k))
                .cloned()
                .collect(),
            unknown: applied.into_iter().filter(|a| !known.contains(a)).collect(),
        })
    }

    fn refuse_newer(&self) -> Result<()> {
        match self.unknown.first() {
            None => Ok(()),
            Some(v) => Err(Error::new(
                Reason::Internal,
                format!(
                    "the database's schema was migrated by a newer release of lienthong ({} migration(s) this release does not know, the first {v}); run that release or a newer one — a release never runs on a schema newer than it knows",
                    self.unknown.len()
                ),
            )),
        }
    }

    fn refuse_pending(&self) -> Result<()> {
        match self.pending.first() {
            None => Ok(()),
            Some(v) => Err(Error::new(
                Reason::Internal,
                format!(
                    "the database's schema is behind this release ({} migration(s) to apply, the first {v}) and database.migrate is \"manual\": run `lienthong migrate` once with this release, then start it",
                    self.pending.len()
                ),
            )),
        }
    }
}

/// The database, with the schema migrated.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Group commit: acceptances queue here and one task writes them, as
    /// many as are waiting, in one transaction (one fsync). `None` outside
    /// a runtime (then each acceptance commits alone).
    committer: Option<mpsc::Sender<Job>>,
    /// The directory's rows the pipeline reads on every call.
    directory: Arc<DirectoryCache>,
    /// The chain of the transfer log every append of this store extends.
    writer: WriterId,
}

impl Store {
    /// Connects and applies pending migrations. `sqlite:` URLs get their
    /// directory created and run in WAL mode with full fsync on commit.
    /// Everything this store appends to the transfer log goes to `writer`'s
    /// chain.
    pub async fn connect(url: &str, writer: WriterId) -> Result<Store> {
        Self::open(url, writer, Migrations::Apply).await
    }

    /// Connects; applies pending migrations or, with `Migrations::Require`,
    /// refuses a schema that is behind (naming `lienthong migrate`). Either
    /// way it refuses a schema migrated by a newer release.
    pub async fn open(url: &str, writer: WriterId, migrations: Migrations) -> Result<Store> {
        let db = connect_database(url).await?;
        let schema = SchemaState::read(&db).await?;
        schema.refuse_newer()?;
        match migrations {
            Migrations::Apply => {
                Migrator::up(&db, None)
                    .await
                    .or_err(Reason::Unavailable, "the database schema migration failed")?;
            }
            Migrations::Require => schema.refuse_pending()?,
            Migrations::Leave => {}
        }
        // Group commit runs on the runtime that opened the store.
        let committer = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
            rt.spawn(crate::commit::commit_loop(db.clone(), writer.clone(), rx));
            tx
        });
        Ok(Store {
            db,
            committer,
            directory: Arc::default(),
            writer,
        })
    }

    /// The chain of the transfer log this store appends to.
    pub fn writer(&self) -> &WriterId {
        &self.writer
    }

    /// Waits until this process holds the lease of `job`, a job that runs
    /// on one replica at a time (at once on SQLite).
    /// Appends a checkpoint of every chain's head to this replica's chain
    /// (see [`crate::checkpoint`]), signed by `signer` when there is one.
    pub async fn write_checkpoint(
        &self,
        signer: Option<&dyn CheckpointSigner>,
    ) -> Result<Checkpoint> {
        crate::checkpoint::write(&self.db, &self.writer, signer).await
    }

    pub async fn lease(&self, job: &str) -> Result<crate::lease::Lease> {
        crate::lease::Lease::take(&self.db, job).await
    }

    /// The lease of `job` if no other process holds it now.
    pub async fn try_lease(&self, job: &str) -> Result<Option<crate::lease::Lease>> {
        crate::lease::Lease::try_take(&self.db, job).await
    }

    /// Listens for deliveries the other writers of this database commit
    /// (`None` on SQLite, which has one writer).
    pub async fn listen_landed(&self) -> Result<Option<crate::landed::LandedListener>> {
        crate::landed::LandedListener::open(&self.db, self.writer.clone()).await
    }

    /// Hands a job to the group committer and waits for its answer, or,
    /// without a committer (no runtime, or it is shutting down), writes it
    /// alone here.
    async fn commit<T>(&self, job: Job, answer: oneshot::Receiver<T>) -> Option<T> {
        let job = match &self.committer {
            Some(tx) => match tx.send(job).await {
                Ok(()) => return answer.await.ok(),
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        crate::commit::commit_alone(&self.db, &self.writer, job).await;
        answer.await.ok()
    }

    /// Acknowledgements and hand-out marks: on SQLite, which has one
    /// writer at a time anyway, they share the committer's transactions;
    /// PostgreSQL writes them on the pool in parallel, where they commit
    /// faster than in turn through the one committer (measured:
    /// docs/performance.md).
    async fn commit_small<T>(&self, job: Job, answer: oneshot::Receiver<T>) -> Option<T> {
        if self.db.get_database_backend() == DbBackend::Postgres {
            crate::commit::commit_alone(&self.db, &self.writer, job).await;
            return answer.await.ok();
        }
        self.commit(job, answer).await
    }

    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(crate) fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// A cheap query that proves the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await.or_db()
    }

    // ----- directory -------------------------------------------------------

    /// Confirms the directory kept in memory against the database's
    /// version (one small read): a call does this when it begins, so that
    /// it sees every change made before, by whichever process.
    pub async fn confirm_directory(&self) -> Result<()> {
        let confirmation = match self.directory.confirmation().await {
            directory_cache::Confirm::Read(c) => c,
            directory_cache::Confirm::Confirmed => return Ok(()),
            directory_cache::Confirm::Unavailable => {
                return Err(Error::unavailable(
                    "the database",
                    "it did not answer the directory's confirmation this call waited for",
                ));
            }
        };
        let backend = self.db.get_database_backend();
        let read = async {
            let row = self
                .db
                .query_one_raw(Statement::from_string(
                    backend,
                    "SELECT version FROM directory_version WHERE id = 1",
                ))
                .await
                .or_db()?
                .ok_or_else(|| {
                    Error::new(
                        Reason::Internal,
                        "the directory's version row is missing; the database was changed by hand",
                    )
                })?;
            row.try_get::<i64>("", "version").or_db()
        };
        match read.await {
            Ok(version) => {
                self.directory.confirmed_by(confirmation.number, version);
                Ok(())
            }
            Err(e) => {
                // Each call waiting behind this one would otherwise wait as
                // long for the database again, one after the other: during
                // an outage, the last of them for minutes.
                if e.reason() == Reason::Unavailable {
                    self.directory.unreachable(confirmation.number);
                }
                Err(e)
            }
        }
    }

    /// A directory entry from memory, or read (and kept) when it is not
    /// there.
    async fn directory_entry<K, F>(&self, key: K::Key, read: F) -> Result<K::Value>
    where
        K: directory_cache::Kind,
        F: AsyncFnOnce(&DatabaseConnection) -> Result<K::Value>,
    {
        if !self.directory.fresh() {
            self.confirm_directory().await?;
        }
        match self.directory.get::<K>(&key) {
            Ok(v) => Ok(v),
            Err(generation) => {
                let v = read(&self.db).await?;
                self.directory.put::<K>(generation, key, v.clone());
                Ok(v)
            }
        }
    }

    pub async fn agency(&self, organ_id: &str) -> Result<Option<AgencyRow>> {
        let key = organ_id.to_owned();
        self.directory_entry::<directory_cache::Agencies, _>(key.clone(), async |db| {
            row_by_id::<agency::Entity, _>(db, key).await
        })
        .await
    }

    pub async fn agencies(&self) -> Result<Vec<AgencyRow>> {
        agency::Entity::find()
            .order_by_asc(agency::Column::OrganId)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(AgencyRow::from).collect())
    }

    /// Applies a directory change and appends its lines to the transfer
    /// log, in one transaction. An unbinding, revocation or (de)activation
    /// that finds no row to change (someone else changed it meanwhile)
    /// undoes the whole change: `NotFound`.
    pub async fn change_directory(&self, change: DirectoryChange) -> Result<()> {
        let DirectoryChange {
            agencies,
            set_active,
            bind_signing,
            unbind_signing,
            bind_client: clients,
            unbind_client,
            grant,
            revoke,
            log,
            peer,
            block,
            unblock,
        } = change;
        let txn = self.db.begin().await.or_db()?;
        let gone = |what: String| Error::new(Reason::NotFound, what);
        if let Some(p) = &peer {
            crate::peer_changes::before_peer_change(&txn, p, &agencies, &bind_signing).await?;
        }
        for chunk in agencies.chunks(200) {
            let models: Vec<agency::ActiveModel> = chunk
                .iter()
                .cloned()
                .map(|m| agency::ActiveModel {
                    organ_id: Set(m.organ_id),
                    name: Set(m.name),
                    parent: Set(m.parent),
                    email: Set(m.email),
                    telephone: Set(m.telephone),
                    address: Set(m.address),
                    website: Set(m.website),
                    channel: Set(m.channel),
                    active: Set(m.active),
                    extra: Set(m.extra),
                    updated_at: Set(m.updated_at),
                    source: Set(m.source),
                })
                .collect();
            if models.is_empty() {
                continue;
            }
            agency::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::column(agency::Column::OrganId)
                        .update_columns([
                            agency::Column::Name,
                            agency::Column::Parent,
                            agency::Column::Email,
                            agency::Column::Telephone,
                            agency::Column::Address,
                            agency::Column::Website,
                            agency::Column::Channel,
                            agency::Column::Active,
                            agency::Column::Extra,
                            agency::Column::UpdatedAt,
                            agency::Column::Source,
                        ])
                        .to_owned(),
                )
                .exec(&txn)
                .await
                .or_db()?;
        }
        let now = now_micros();
        for (organ_id, active) in set_active {
            let r = agency::Entity::update_many()
                .col_expr(agency::Column::Active, Expr::value(active))
                .col_expr(agency::Column::UpdatedAt, Expr::value(now))
                .filter(agency::Column::OrganId.eq(organ_id.as_str()))
                .exec(&txn)
                .await
                .or_db()?;
            if r.rows_affected == 0 {
                return Err(gone(format!("{organ_id} is not in the directory")));
            }
        }
        for c in bind_signing {
            bind_cert(&txn, c).await.or_db()?;
        }
        for (spki, organ_id) in unbind_signing {
            let r = signing_cert::Entity::delete_many()
                .filter(signing_cert::Column::SpkiSha256.eq(spki.as_str()))
                .filter(signing_cert::Column::OrganId.eq(organ_id.as_str()))
                .exec(&txn)
                .await
                .or_db()?;
            if r.rows_affected == 0 {
                return Err(gone(format!(
                    "the signing key {spki} is no longer bound to {organ_id}"
                )));
            }
        }
        for c in clients {
            bind_client(&txn, c).await.or_db()?;
        }
        for (spki, name, role) in unbind_client {
            let r = client_cert::Entity::delete_many()
                .filter(client_cert::Column::SpkiSha256.eq(spki.as_str()))
                .filter(client_cert::Column::OrganId.eq(name.as_str()))
                .filter(client_cert::Column::Role.eq(role.as_str()))
                .exec(&txn)
                .await
                .or_db()?;
            if r.rows_affected == 0 {
                return Err(gone(format!(
                    "the client key {spki} is no longer bound to {role} {name}"
                )));
            }
        }
        for (agent, principal) in grant {
            representation::Entity::insert(representation::ActiveModel {
                agent: Set(agent),
                principal: Set(principal),
                granted_at: Set(now),
            })
            .on_conflict(
                OnConflict::columns([
                    representation::Column::Agent,
                    representation::Column::Principal,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn)
            .await
            .or_db()?;
        }
        for (agent, principal) in revoke {
            let r = representation::Entity::delete_many()
                .filter(representation::Column::Agent.eq(agent.as_str()))
                .filter(representation::Column::Principal.eq(principal.as_str()))
                .exec(&txn)
                .await
                .or_db()?;
            if r.rows_affected == 0 {
                return Err(gone(format!(
                    "{agent} no longer sends in the name of {principal}"
                )));
            }
        }
        if let Some(p) = &peer {
            crate::peer_changes::after_peer_change(&txn, p, now).await?;
        }
        crate::peer_changes::write_blocks(&txn, &block, &unblock).await?;
        append_events(&txn, &self.writer, log, now).await.or_db()?;
        txn.execute_raw(Statement::from_string(
            txn.get_database_backend(),
            "UPDATE directory_version SET version = version + 1 WHERE id = 1",
        ))
        .await
        .or_db()?;
        // Whatever the commit's outcome, what is kept in memory may be old.
        let committed = txn.commit().await.or_db();
        self.directory.changed();
        committed
    }

    pub async fn signing_cert(&self, spki_sha256_hex: &str) -> Result<Option<SigningCertRow>> {
        let key = spki_sha256_hex.to_owned();
        self.directory_entry::<directory_cache::Signing, _>(key.clone(), async |db| {
            row_by_id::<signing_cert::Entity, _>(db, key).await
        })
        .await
    }

    /// Whether `agent` may send in the name of `principal`.
    pub async fn represents(&self, agent: &str, principal: &str) -> Result<bool> {
        let key = (agent.to_owned(), principal.to_owned());
        self.directory_entry::<directory_cache::Represents, _>(key.clone(), async |db| {
            Ok(
                row_by_id::<representation::Entity, representation::Model>(db, key)
                    .await?
                    .is_some(),
            )
        })
        .await
    }

    pub async fn client_cert(&self, spki_sha256_hex: &str) -> Result<Option<ClientCertRow>> {
        let key = spki_sha256_hex.to_owned();
        self.directory_entry::<directory_cache::Client, _>(key.clone(), async |db| {
            row_by_id::<client_cert::Entity, _>(db, key).await
        })
        .await
    }

    pub async fn signing_certs_of(&self, organ_id: &str) -> Result<Vec<SigningCertRow>> {
        signing_cert::Entity::find()
            .filter(signing_cert::Column::OrganId.eq(organ_id))
            .order_by_asc(signing_cert::Column::BoundAt)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(SigningCertRow::from).collect())
    }

    /// The client certificates bound to an agency or an operator's name.
    pub async fn client_certs_of(&self, name: &str) -> Result<Vec<ClientCertRow>> {
        client_cert::Entity::find()
            .filter(client_cert::Column::OrganId.eq(name))
            .order_by_asc(client_cert::Column::BoundAt)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(ClientCertRow::from).collect())
    }

    // ----- messages --------------------------------------------------------

    pub async fn message(&self, sender: &str, message_id: &str) -> Result<Option<MessageRow>> {
        message::Entity::find()
            .filter(message::Column::Sender.eq(sender))
            .filter(message::Column::MessageId.eq(message_id))
            .one(&self.db)
            .await
            .or_db()?
            .map(MessageRow::try_from)
            .transpose()
    }

    pub async fn message_by_pk(&self, pk: i64) -> Result<Option<MessageRow>> {
        message::Entity::find_by_id(pk)
            .one(&self.db)
            .await
            .or_db()?
            .map(MessageRow::try_from)
            .transpose()
    }

    /// The latest accepted document of `sender` with this document_id.
    pub async fn document(&self, sender: &str, document_id: &str) -> Result<Option<MessageRow>> {
        message::Entity::find()
            .filter(message::Column::Sender.eq(sender))
            .filter(message::Column::DocumentId.eq(document_id))
            .filter(message::Column::Kind.eq(MessageKind::Document.as_str()))
            .order_by_desc(message::Column::Id)
            .one(&self.db)
            .await
            .or_db()?
            .map(MessageRow::try_from)
            .transpose()
    }

    /// The status notices answering document `document_id` of `doc_from`,
    /// in acceptance order.
    pub async fn statuses_answering(
        &self,
        doc_from: &str,
        document_id: &str,
    ) -> Result<Vec<MessageRow>> {
        read_all(
            message::Entity::find()
                .filter(message::Column::RefFrom.eq(doc_from))
                .filter(message::Column::DocumentId.eq(document_id))
                .filter(message::Column::Kind.eq(MessageKind::Status.as_str()))
                .order_by_asc(message::Column::Id)
                .all(&self.db)
                .await
                .or_db()?,
        )
    }

    /// The recall, update and replacement documents `sender` sent about its
    /// document `document_id`, in acceptance order.
    pub async fn documents_referring(
        &self,
        sender: &str,
        document_id: &str,
    ) -> Result<Vec<MessageRow>> {
        read_all(
            message::Entity::find()
                .filter(message::Column::Sender.eq(sender))
                .filter(message::Column::Replaces.eq(document_id))
                .filter(message::Column::Kind.eq(MessageKind::Document.as_str()))
                .order_by_asc(message::Column::Id)
                .all(&self.db)
                .await
                .or_db()?,
        )
    }

    /// The senders of documents with this document_id (whoever sent them).
    pub async fn document_senders(&self, document_id: &str) -> Result<Vec<String>> {
        let rows = message::Entity::find()
            .filter(message::Column::DocumentId.eq(document_id))
            .filter(message::Column::Kind.eq(MessageKind::Document.as_str()))
            .limit(20)
            .all(&self.db)
            .await
            .or_db()?;
        let mut out: Vec<String> = rows.into_iter().map(|m| m.sender).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub async fn attachments(&self, message_pk: i64) -> Result<Vec<AttachmentRow>> {
        attachment::Entity::find()
            .filter(attachment::Column::MessagePk.eq(message_pk))
            .order_by_asc(attachment::Column::Idx)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(AttachmentRow::from).collect())
    }

    pub async fn deliveries_of(&self, message_pk: i64) -> Result<Vec<DeliveryRow>> {
        read_all(
            delivery::Entity::find()
                .filter(delivery::Column::MessagePk.eq(message_pk))
                .order_by_asc(delivery::Column::Id)
                .all(&self.db)
                .await
                .or_db()?,
        )
    }

    /// Whether any message with this attachment digest is stored.
    pub async fn blob_referenced(&self, sha256_hex: &str) -> Result<bool> {
        Ok(attachment::Entity::find()
            .filter(attachment::Column::Sha256.eq(sha256_hex))
            .one(&self.db)
            .await
            .or_db()?
            .is_some())
    }

    /// Writes a message with everything that belongs to it in one
    /// transaction — shared with the other acceptances waiting at that
    /// moment (group commit). Returns, once committed, the message row and
    /// its deliveries.
    pub async fn accept(&self, m: NewMessage) -> Result<Accepted, AcceptError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Accept {
            message: Box::new(m),
            reply,
        };
        self.commit(job, answer)
            .await
            .unwrap_or_else(|| Err(AcceptError::Db(committer_gone())))
    }
}

impl Store {
    /// Appends one event to the transfer log.
    pub async fn log(&self, e: NewEvent) -> Result<()> {
        self.log_all(vec![e]).await
    }

    /// Appends several lines in one transaction (one fsync).
    pub async fn log_all(&self, events: Vec<NewEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await.or_db()?;
        append_events(&txn, &self.writer, events, now_micros())
            .await
            .or_db()?;
        txn.commit().await.or_db()?;
        Ok(())
    }

    // ----- inboxes ---------------------------------------------------------

    /// A recipient's unacknowledged deliveries with `id > after_id`, oldest
    /// first. With `delivered_before`, only those never handed out or last
    /// handed out before that time (the redelivery scan).
    pub async fn pending(
        &self,
        recipient: &str,
        after_id: i64,
        delivered_before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<PendingDelivery>> {
        let mut q = delivery::Entity::find()
            .filter(delivery::Column::Recipient.eq(recipient))
            .filter(delivery::Column::Route.eq(Route::Local.to_string()))
            .filter(delivery::Column::State.eq("pending"))
            .filter(delivery::Column::Id.gt(after_id));
        if let Some(t) = delivered_before {
            q = q.filter(
                delivery::Column::LastDeliveredAt
                    .is_null()
                    .or(delivery::Column::LastDeliveredAt.lt(t)),
            );
        }
        let ds: Vec<DeliveryRow> = read_all(
            q.order_by_asc(delivery::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await
                .or_db()?,
        )?;
        if ds.is_empty() {
            return Ok(Vec::new());
        }
        let pks: Vec<i64> = ds.iter().map(|d| d.message_pk).collect();
        let msgs: Vec<MessageRow> = read_all(
            message::Entity::find()
                .filter(message::Column::Id.is_in(pks))
                .all(&self.db)
                .await
                .or_db()?,
        )?;
        let mut out = Vec::with_capacity(ds.len());
        for d in ds {
            match msgs.iter().find(|m| m.id == d.message_pk) {
                Some(m) => out.push(PendingDelivery {
                    delivery: d,
                    message: m.clone(),
                }),
                None => {
                    tracing::error!(delivery_id = %d.delivery_id, "a delivery refers to a missing message");
                }
            }
        }
        Ok(out)
    }

    /// Records that deliveries are being handed to their recipient, in one
    /// transaction for the batch (one fsync, one log append, however many);
    /// returns each one's attempt number, in order. `None` marks one not to
    /// hand out: acknowledged or taken out of the inbox since it was read,
    /// or handed out since as `hand_out` says (by another stream of the same
    /// recipient, on this replica or another, or the read that found it
    /// first).
    pub async fn mark_delivered_batch<P: std::borrow::Borrow<PendingDelivery>>(
        &self,
        batch: &[P],
        transport: &str,
        hand_out: HandOut,
    ) -> Result<Vec<Option<i32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let items = batch
            .iter()
            .map(|p| {
                let p = p.borrow();
                MarkItem {
                    id: p.delivery.id,
                    sender: p.message.sender.clone(),
                    message_id: p.message.message_id.clone(),
                    recipient: p.delivery.recipient.clone(),
                    route: p.delivery.route.to_string(),
                }
            })
            .collect();
        let marks = DeliveredMarks {
            items,
            hand_out,
            transport: transport.to_owned(),
            at: now_micros(),
        };
        let (reply, answer) = oneshot::channel();
        match self
            .commit_small(Job::Delivered { marks, reply }, answer)
            .await
        {
            Some(r) => r.or_db(),
            None => Err(db_error(committer_gone())),
        }
    }

    /// Acknowledges a delivery of `recipient`. Unknown ids, and ids of other
    /// recipients, are `None`: nobody learns what is in another inbox.
    pub async fn ack(
        &self,
        recipient: &str,
        delivery_id: &str,
        transport: &str,
    ) -> Result<Option<AckOutcome>> {
        let ack = AckRequest {
            recipient: recipient.to_owned(),
            delivery_id: delivery_id.to_owned(),
            transport: transport.to_owned(),
            at: now_micros(),
        };
        let (reply, answer) = oneshot::channel();
        match self.commit_small(Job::Ack { ack, reply }, answer).await {
            Some(r) => r.or_db(),
            None => Err(db_error(committer_gone())),
        }
    }

    /// Walks every chain of the transfer log from its start and reports,
    /// for each, its length, its head and its first broken link: an edited
    /// event (its hash no longer matches), a removed one (a gap in the
    /// positions), a removed tail (the head names a later position), a head
    /// row without its chain's events, or events without their head row.
    /// Reads in pages, one chain at a time: memory stays flat whatever the
    /// log's length. Checkpoints' signatures are counted, not checked: see
    /// [`Store::verify_log_with`].
    pub async fn verify_log(&self) -> Result<LogVerification> {
        self.verify_log_with(None).await
    }

    /// [`Store::verify_log`], and the checkpoints: each one's signature
    /// checked with `keys` (the gateway's receipt certificates; without
    /// them signed checkpoints are counted as unchecked), and every chain
    /// it names holding, at the position named, the event with the hash
    /// named. Memory stays one recorded head per chain.
    pub async fn verify_log_with(
        &self,
        keys: Option<&dyn CheckpointVerifier>,
    ) -> Result<LogVerification> {
        // One snapshot for the heads and the events: a replica appending
        // while the walk runs would otherwise show a chain longer than the
        // head read before it, as if the head had been set back.
        let txn = crate::sql::snapshot(&self.db).await?;
        let unchained = event::Entity::find()
            .filter(event::Column::ChainSeq.is_null())
            .count(&txn)
            .await
            .or_db()?;
        let heads: BTreeMap<String, log_head::Model> = log_head::Entity::find()
            .all(&txn)
            .await
            .or_db()?
            .into_iter()
            .map(|h| (h.chain.clone(), h))
            .collect();
        // A chain is known by its head row or by its events: either one
        // without the other is a break.
        let mut names: BTreeSet<String> = heads.keys().cloned().collect();
        names.extend(
            event::Entity::find()
                .select_only()
                .column(event::Column::Chain)
                .filter(event::Column::ChainSeq.is_not_null())
                .distinct()
                .into_tuple::<String>()
                .all(&txn)
                .await
                .or_db()?,
        );
        let mut walk = crate::checkpoint::CheckpointWalk::new(keys);
        let mut chains = Vec::with_capacity(names.len());
        for name in names {
            chains.push(Self::verify_chain(&txn, name.clone(), heads.get(&name), &mut walk).await?);
        }
        let names: BTreeSet<&str> = chains.iter().map(|c| c.chain.as_str()).collect();
        let (checkpoints, findings) = walk.settle(&txn, &names).await?;
        txn.rollback().await.or_db()?;
        Ok(LogVerification {
            chains,
            unchained,
            checkpoints,
            findings,
        })
    }

    async fn verify_chain<C: ConnectionTrait>(
        c: &C,
        chain: String,
        head: Option<&log_head::Model>,
        walk: &mut crate::checkpoint::CheckpointWalk<'_>,
    ) -> Result<ChainVerification> {
        let mut out = ChainVerification {
            checked: 0,
            head: head.map(|h| (h.seq, h.hash.clone())),
            first_broken: None,
            chain,
        };
        let mut expected_prev = chain_genesis(&out.chain);
        let mut expected_seq = 1i64;
        loop {
            let page = event::Entity::find()
                .filter(event::Column::Chain.eq(out.chain.as_str()))
                .filter(event::Column::ChainSeq.gte(expected_seq))
                .order_by_asc(event::Column::ChainSeq)
                .limit(1000)
                .all(c)
                .await
                .or_db()?;
            if page.is_empty() {
                break;
            }
            for e in page {
                let seq = e.chain_seq.unwrap_or(-1);
                if seq != expected_seq {
                    out.first_broken = Some((
                        expected_seq,
                        format!("event {expected_seq} is missing (the next one is {seq})"),
                    ));
                    return Ok(out);
                }
                if e.prev_hash.as_deref() != Some(expected_prev.as_str()) {
                    let what = if seq == 1 {
                        "does not start this chain (it was written in another)"
                    } else {
                        "does not follow the event before it"
                    };
                    out.first_broken = Some((seq, format!("event {seq} (id {}) {what}", e.id)));
                    return Ok(out);
                }
                let Some(h) = event_hash(&e) else {
                    out.first_broken = Some((seq, format!("event {seq} has no hash")));
                    return Ok(out);
                };
                if e.hash.as_deref() != Some(h.as_str()) {
                    out.first_broken = Some((
                        seq,
                        format!(
                            "event {seq} (id {}, {} of {} {}) was changed after it was written",
                            e.id, e.kind, e.sender, e.message_id
                        ),
                    ));
                    return Ok(out);
                }
                if e.kind == EventKind::Checkpoint.as_str() {
                    walk.checkpoint(&out.chain, seq, &e, &expected_prev);
                }
                out.checked += 1;
                expected_prev = h;
                expected_seq += 1;
            }
        }
        let last = expected_seq - 1;
        out.first_broken = match head {
            None => Some((
                0,
                format!("the chain has {last} event(s) but no head row: the row was removed"),
            )),
            Some(h) if h.seq == last && h.hash == expected_prev => {
                // A chain's row is written with its first events; only a
                // new database's `main` stands at its genesis with none.
                (last == 0 && h.chain != MAIN_CHAIN).then(|| {
                    (
                        0,
                        "the chain has a head row but no events, and a chain's row is written \
                         with its first events: they were removed"
                            .to_owned(),
                    )
                })
            }
            Some(h) if h.seq > last && last == 0 => Some((
                1,
                format!(
                    "the chain has no events but its head names event {}: they were removed",
                    h.seq
                ),
            )),
            Some(h) if h.seq > last => Some((
                expected_seq,
                format!(
                    "the chain ends at event {last} but its head names event {}: events were removed from the end",
                    h.seq
                ),
            )),
            Some(h) if h.seq < last => Some((
                h.seq + 1,
                format!(
                    "the chain goes on to event {last} but its head names event {}: the head row was set back",
                    h.seq
                ),
            )),
            Some(_) if last == 0 => Some((
                0,
                "the head's hash is not the chain's first: the head row was changed".to_owned(),
            )),
            Some(_) => Some((
                last,
                format!("the head's hash is not that of event {last}: the head row was changed"),
            )),
        };
        Ok(out)
    }

    // ----- transfer log ----------------------------------------------------

    /// The messages a trace of (sender, message_id) covers: the message
    /// itself and, for a document, the status notices that answer it.
    pub async fn traced_messages(&self, sender: &str, message_id: &str) -> Result<Vec<MessageRow>> {
        let Some(m) = self.message(sender, message_id).await? else {
            return Ok(Vec::new());
        };
        let answers = match m.kind {
            MessageKind::Document => self.statuses_answering(sender, &m.document_id).await?,
            MessageKind::Status => Vec::new(),
        };
        let mut out = vec![m];
        out.extend(answers);
        Ok(out)
    }

    /// Events of the given (sender, message_id) pairs, in log order.
    pub async fn events_of(&self, keys: &[(String, String)]) -> Result<Vec<EventRow>> {
        let mut all = Vec::new();
        for (sender, message_id) in keys {
            let evs = event::Entity::find()
                .filter(event::Column::Sender.eq(sender.as_str()))
                .filter(event::Column::MessageId.eq(message_id.as_str()))
                .order_by_asc(event::Column::Id)
                .all(&self.db)
                .await
                .or_db()?;
            all.extend(evs.into_iter().map(EventRow::from));
        }
        all.sort_by_key(|e| e.id);
        Ok(all)
    }

    /// The overdue events of one message.
    pub async fn overdue_events(&self, sender: &str, message_id: &str) -> Result<Vec<EventRow>> {
        event::Entity::find()
            .filter(event::Column::Sender.eq(sender))
            .filter(event::Column::MessageId.eq(message_id))
            .filter(event::Column::Kind.eq(EventKind::Overdue.as_str()))
            .order_by_asc(event::Column::Id)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(EventRow::from).collect())
    }

    /// Documents a deadline may concern: accepted since `since`, not
    /// recalls, with a priority in `priorities` or a due time passed by
    /// `now`. Oldest first, at most `limit`.
    pub async fn deadline_candidates(
        &self,
        since: i64,
        now: i64,
        priorities: &[i32],
        limit: u64,
    ) -> Result<Vec<MessageRow>> {
        read_all(
            message::Entity::find()
                .filter(message::Column::Kind.eq(MessageKind::Document.as_str()))
                .filter(message::Column::AcceptedAt.gte(since))
                .filter(message::Column::BusinessType.ne(1))
                .filter(
                    sea_orm::Condition::any()
                        .add(message::Column::Priority.is_in(priorities.iter().copied()))
                        .add(message::Column::DueAt.lte(now)),
                )
                .order_by_asc(message::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await
                .or_db()?,
        )
    }

    /// The transfer log's lines of one kind, newest first, at most `limit`;
    /// only those about `sender` when given.
    pub async fn events_of_kind(
        &self,
        kind: EventKind,
        sender: Option<&str>,
        limit: u64,
    ) -> Result<Vec<EventRow>> {
        let mut q = event::Entity::find().filter(event::Column::Kind.eq(kind.as_str()));
        if let Some(s) = sender {
            q = q.filter(event::Column::Sender.eq(s));
        }
        q.order_by_desc(event::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(EventRow::from).collect())
    }

    /// Events whose message_id is this one, whoever sent it (operator view).
    pub async fn events_by_message_id(&self, message_id: &str) -> Result<Vec<EventRow>> {
        event::Entity::find()
            .filter(event::Column::MessageId.eq(message_id))
            .order_by_asc(event::Column::Id)
            .all(&self.db)
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(EventRow::from).collect())
    }

    /// Raw statement execution for tests and tools.
    pub async fn execute_sql(&self, sql: &str) -> Result<u64> {
        Ok(self
            .db
            .execute_unprepared(sql)
            .await
            .or_db()?
            .rows_affected())
    }
}

/// One row by its primary key, as the store's own record.
async fn row_by_id<E, R>(
    db: &DatabaseConnection,
    id: <E::PrimaryKey as PrimaryKeyTrait>::ValueType,
) -> Result<Option<R>>
where
    E: EntityTrait,
    R: From<E::Model>,
{
    E::find_by_id(id)
        .one(db)
        .await
        .or_db()
        .map(|r| r.map(R::from))
}

/// Binds a signing certificate's key to an agency (re-binding moves it).
async fn bind_cert<C: ConnectionTrait>(c: &C, row: SigningCertRow) -> Result<(), DbErr> {
    signing_cert::Entity::insert(signing_cert::ActiveModel {
        spki_sha256: Set(row.spki_sha256),
        organ_id: Set(row.organ_id),
        subject: Set(row.subject),
        issuer: Set(row.issuer),
        not_after: Set(row.not_after),
        cert_der: Set(row.cert_der),
        bound_at: Set(row.bound_at),
    })
    .on_conflict(
        OnConflict::column(signing_cert::Column::SpkiSha256)
            .update_columns([
                signing_cert::Column::OrganId,
                signing_cert::Column::Subject,
                signing_cert::Column::Issuer,
                signing_cert::Column::NotAfter,
                signing_cert::Column::CertDer,
                signing_cert::Column::BoundAt,
            ])
            .to_owned(),
    )
    .exec(c)
    .await?;
    Ok(())
}

/// Binds a client certificate's key (re-binding moves it).
async fn bind_client<C: ConnectionTrait>(c: &C, row: ClientCertRow) -> Result<(), DbErr> {
    client_cert::Entity::insert(client_cert::ActiveModel {
        spki_sha256: Set(row.spki_sha256),
        organ_id: Set(row.organ_id),
        role: Set(row.role),
        subject: Set(row.subject),
        issuer: Set(row.issuer),
        not_after: Set(row.not_after),
        cert_der: Set(row.cert_der),
        bound_at: Set(row.bound_at),
    })
    .on_conflict(
        OnConflict::column(client_cert::Column::SpkiSha256)
            .update_columns([
                client_cert::Column::OrganId,
                client_cert::Column::Role,
                client_cert::Column::Subject,
                client_cert::Column::Issuer,
                client_cert::Column::NotAfter,
                client_cert::Column::CertDer,
                client_cert::Column::BoundAt,
            ])
            .to_owned(),
    )
    .exec(c)
    .await?;
    Ok(())
}

/// The directory of a `sqlite:` URL's database file, when it has one.
fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let p = std::path::Path::new(path);
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.to_path_buf())
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    // Several URLs (the nodes of a cluster), each with its own password.
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl From<AcceptError> for Error {
    fn from(e: AcceptError) -> Self {
        match e {
            AcceptError::AlreadyExists => Error::new(
                Reason::DuplicateConflict,
                "this message_id was accepted from this sender already",
            ),
            AcceptError::Db(e) => db_error(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sea_orm::Statement;

    mod chains;
    mod checkpoints;

    #[test]
    fn sqlite_dir_is_found() {
        assert_eq!(
            sqlite_dir("sqlite://./data/lienthong.db?mode=rwc"),
            Some("./data".into())
        );
        assert_eq!(
            sqlite_dir("sqlite:///var/lib/x/l.db"),
            Some("/var/lib/x".into())
        );
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("sqlite://l.db"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://lt:secret@db:5432/lienthong"),
            "postgres://lt:***@db:5432/lienthong"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
        assert_eq!(
            redact("amqp://lt:one@mq1:5672/%2f,amqp://lt:two@mq2:5672/%2f"),
            "amqp://lt:***@mq1:5672/%2f,amqp://lt:***@mq2:5672/%2f"
        );
    }

    async fn store() -> Result<(tempfile::TempDir, Store)> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let s = Store::connect(&url, WriterId::main()).await?;
        Ok((dir, s))
    }

    fn new_message(sender: &str, id: &str, to: &[&str]) -> NewMessage {
        NewMessage {
            sender: sender.into(),
            message_id: id.into(),
            kind: MessageKind::Document,
            document_id: format!("doc-{id}"),
            ref_from: None,
            status_code: None,
            envelope_sha256_hex: "00".repeat(32),
            signed_envelope: vec![1, 2, 3],
            verification: vec![],
            accepted_at: now_micros(),
            attachments: vec![],
            recipients: to.iter().map(|r| (r.to_string(), Route::Local)).collect(),
            elsewhere: vec![],
            upstream: None,
            actor: sender.into(),
            agent: None,
            transport: "test".into(),
            business_type: 0,
            replaces: None,
            withdraw: vec![],
            status_note: None,
            priority: 0,
            due_at: None,
            index: None,
        }
    }

    /// Group commit: acceptances queued together share a transaction, a
    /// duplicate among them is refused alone (its savepoint — on PostgreSQL
    /// a failed statement would otherwise abort the whole transaction), and
    /// the transfer log stays one unbroken chain.
    async fn burst_with_a_duplicate(s: &Store) -> Result<()> {
        record_log_appends(s).await?;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            // Message 7 is submitted twice, in the same burst.
            let id = if i == 199 {
                "m7".to_owned()
            } else {
                format!("m{i}")
            };
            tasks.push(tokio::spawn(async move {
                s.accept(new_message("A", &id, &["B"])).await
            }));
        }
        let mut accepted = 0;
        let mut duplicates = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => accepted += 1,
                Err(AcceptError::AlreadyExists) => duplicates += 1,
                Err(AcceptError::Db(e)) => panic!("{e}"),
            }
        }
        assert_eq!((accepted, duplicates), (199, 1));
        assert_eq!(s.pending("B", 0, None, 1000).await?.len(), 199);
        let log = s.verify_log().await?;
        assert!(log.intact(), "{log:?}");
        assert_eq!(
            log.checked(),
            199 * 2,
            "an accepted and a routed line per message"
        );
        // One append per committed group: an append of more than one
        // acceptance's two lines is a commit they shared.
        let appends: Vec<i64> =
            s.db.query_all_raw(Statement::from_string(
                s.db.get_database_backend(),
                "SELECT n FROM test_log_appends",
            ))
            .await
            .or_db()?
            .iter()
            .map(|r| r.try_get("", "n"))
            .collect::<Result<_, DbErr>>()
            .or_db()?;
        assert_eq!(appends.iter().sum::<i64>(), 199 * 2, "{appends:?}");
        assert!(
            appends.iter().any(|n| *n > 2),
            "every acceptance committed alone: {} appends",
            appends.len()
        );
        Ok(())
    }

    /// A trigger that notes how many lines each update of the log's head
    /// appended (`test_log_appends`): one row per group commit.
    async fn record_log_appends(s: &Store) -> Result<()> {
        let statements: &[&str] = match s.db.get_database_backend() {
            DbBackend::Postgres => &[
                "CREATE TABLE test_log_appends (n BIGINT NOT NULL)",
                "CREATE FUNCTION test_log_append() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO test_log_appends VALUES (NEW.seq - OLD.seq); RETURN NEW; END $$",
                "CREATE TRIGGER test_log_append AFTER UPDATE OF seq ON log_head \
                 FOR EACH ROW EXECUTE FUNCTION test_log_append()",
            ],
            _ => &[
                "CREATE TABLE test_log_appends (n INTEGER NOT NULL)",
                "CREATE TRIGGER test_log_append AFTER UPDATE OF seq ON log_head \
                 BEGIN INSERT INTO test_log_appends VALUES (NEW.seq - OLD.seq); END",
            ],
        };
        for sql in statements {
            s.db.execute_unprepared(sql).await.or_db()?;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_acceptances_share_commits_and_a_duplicate_fails_alone() -> Result<()> {
        let (_d, s) = store().await?;
        burst_with_a_duplicate(&s).await
    }

    /// A message the database itself refuses, inside a burst that shares
    /// commits: it fails alone; every other one is accepted, delivered and
    /// logged once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_the_database_refuses_fails_alone_in_its_group() -> Result<()> {
        let (_d, s) = store().await?;
        s.execute_sql(
            "CREATE TRIGGER test_refuse BEFORE INSERT ON messages \
             WHEN NEW.message_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .await?;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let s = s.clone();
            let id = if i == 50 {
                "poison".to_owned()
            } else {
                format!("m{i}")
            };
            tasks.push(tokio::spawn(async move {
                (id.clone(), s.accept(new_message("A", &id, &["B"])).await)
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            match t.await.expect("task") {
                (_, Ok(_)) => accepted += 1,
                (id, Err(AcceptError::Db(e))) => {
                    assert_eq!(id, "poison", "{id} failed with the one at fault: {e}")
                }
                (id, Err(AcceptError::AlreadyExists)) => panic!("{id}: not a duplicate"),
            }
        }
        assert_eq!(accepted, 99);
        assert_eq!(s.pending("B", 0, None, 1000).await?.len(), 99);
        assert!(s.message("A", "poison").await?.is_none());
        let log = s.verify_log().await?;
        assert!(log.intact(), "{log:?}");
        assert_eq!(log.checked(), 99 * 2, "an accepted and a routed line each");
        Ok(())
    }

    /// Runs `test` on a PostgreSQL database of its own (named after
    /// `label`), dropped afterwards whatever the outcome. Without a server
    /// it is skipped, saying so, unless `LIENTHONG_REQUIRE_SERVICES` is set.
    pub(crate) async fn on_postgres<F, Fut>(label: &str, test: F) -> Result<()>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let admin = std::env::var("LIENTHONG_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let db = match Database::connect(&admin).await {
            Ok(db) => db,
            Err(e) => {
                let required = matches!(
                    std::env::var("LIENTHONG_REQUIRE_SERVICES").as_deref(),
                    Ok("1") | Ok("true") | Ok("yes")
                );
                assert!(!required, "PostgreSQL at {admin} is unreachable: {e}");
                // Straight to stderr: the test harness hides eprintln! of a
                // test that passes.
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr().lock(),
                    format_args!(
                        "SKIPPED: {label} on PostgreSQL: PostgreSQL at {admin} is unreachable ({e})\n"
                    ),
                );
                return Ok(());
            }
        };
        let name = format!("lienthong_{label}_{}", std::process::id());
        db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .or_db()?;
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .or_db()?;
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin)
            .to_owned();
        let outcome = tokio::spawn(test(format!("{base}/{name}"))).await;
        db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .or_db()?;
        match outcome {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_on_postgres() -> Result<()> {
        on_postgres("group_commit", |url| async move {
            let s = Store::connect(&url, WriterId::main()).await?;
            let r = burst_with_a_duplicate(&s).await;
            s.db.clone().close().await.ok();
            r
        })
        .await
    }

    #[tokio::test]
    async fn accept_is_unique_per_sender_and_inbox_is_ordered() -> Result<()> {
        let (_d, s) = store().await?;
        s.accept(new_message("A", "m1", &["B", "C"])).await?;
        s.accept(new_message("A", "m2", &["B"])).await?;
        // Another sender may reuse the id.
        s.accept(new_message("X", "m1", &["B"])).await?;
        assert!(matches!(
            s.accept(new_message("A", "m1", &["B"])).await,
            Err(AcceptError::AlreadyExists)
        ));
        let inbox = s.pending("B", 0, None, 100).await?;
        let ids: Vec<_> = inbox
            .iter()
            .map(|p| (p.message.sender.as_str(), p.message.message_id.as_str()))
            .collect();
        assert_eq!(ids, [("A", "m1"), ("A", "m2"), ("X", "m1")]);

        // Ack removes it from the inbox, once; other recipients can't ack it.
        let first = &inbox[0].delivery;
        assert_eq!(s.ack("C", &first.delivery_id, "test").await?, None);
        assert_eq!(
            s.ack("B", &first.delivery_id, "test").await?,
            Some(AckOutcome::Acknowledged)
        );
        assert_eq!(
            s.ack("B", &first.delivery_id, "test").await?,
            Some(AckOutcome::AlreadyAcknowledged)
        );
        assert_eq!(s.pending("B", 0, None, 100).await?.len(), 2);
        assert_eq!(s.pending("C", 0, None, 100).await?.len(), 1);

        let events = s.events_of(&[("A".into(), "m1".into())]).await?;
        let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["accepted", "routed", "routed", "acknowledged"]);
        Ok(())
    }

    #[tokio::test]
    async fn redelivery_scan_skips_recently_delivered() -> Result<()> {
        let (_d, s) = store().await?;
        s.accept(new_message("A", "m1", &["B"])).await?;
        let p = s.pending("B", 0, None, 10).await?;
        assert_eq!(
            s.mark_delivered_batch(&p[..1], "test", HandOut::Pending)
                .await?,
            [Some(1)]
        );
        let long_ago = now_micros() - 60_000_000;
        assert!(s.pending("B", 0, Some(long_ago), 10).await?.is_empty());
        assert_eq!(
            s.pending("B", 0, Some(now_micros() + 1), 10).await?.len(),
            1
        );
        Ok(())
    }

    /// A delivery heard of as it landed is handed out only if no read
    /// handed it out first; one acknowledged since it was read is not
    /// handed out again, and only what is handed out has a log line.
    #[tokio::test]
    async fn only_deliveries_still_due_are_marked_handed_out() -> Result<()> {
        let (_d, s) = store().await?;
        s.accept(new_message("A", "m1", &["B"])).await?;
        s.accept(new_message("A", "m2", &["B"])).await?;
        let p = s.pending("B", 0, None, 10).await?;
        assert_eq!(p.len(), 2);
        assert_eq!(
            s.mark_delivered_batch(&p[..1], "test", HandOut::Pending)
                .await?,
            [Some(1)]
        );
        // The first was read and handed out: heard of again, it is not.
        assert_eq!(
            s.mark_delivered_batch(&p, "test", HandOut::NEW).await?,
            [None, Some(1)]
        );
        // A scan that found it due before that hand-out (a stream on
        // another replica, told of it too) does not hand it out again...
        let before = now_micros() - 60_000_000;
        assert_eq!(
            s.mark_delivered_batch(&p[..1], "test", HandOut::NotSince(before))
                .await?,
            [None]
        );
        // ...a scan that finds it due again does: a second attempt.
        assert_eq!(
            s.mark_delivered_batch(&p[..1], "test", HandOut::NotSince(now_micros() + 1))
                .await?,
            [Some(2)]
        );
        s.ack("B", &p[1].delivery.delivery_id, "test").await?;
        assert_eq!(
            s.mark_delivered_batch(&p[1..], "test", HandOut::Pending)
                .await?,
            [None]
        );
        let events = s
            .events_of(&[("A".into(), "m1".into()), ("A".into(), "m2".into())])
            .await?;
        let delivered = events
            .iter()
            .filter(|e| e.kind.as_str() == "delivered")
            .count();
        assert_eq!(delivered, 3);
        Ok(())
    }

    #[tokio::test]
    async fn transfer_log_is_a_hash_chain_and_tampering_is_found() -> Result<()> {
        let (_d, s) = store().await?;
        s.accept(new_message("A", "m1", &["B", "C"])).await?;
        let p = s.pending("B", 0, None, 10).await?;
        s.mark_delivered_batch(&p[..1], "test", HandOut::Pending)
            .await?;
        s.ack("B", &p[0].delivery.delivery_id, "test").await?;
        s.accept(new_message("A", "m2", &["B"])).await?;
        let v = s.verify_log().await?;
        assert_eq!(v.first_broken(), None, "{v:?}");
        assert_eq!(v.checked(), 7);

        // An edited detail is found at its position.
        s.execute_sql("UPDATE events SET detail = 'nothing to see' WHERE chain_seq = 5")
            .await?;
        let v = s.verify_log().await?;
        assert_eq!(
            v.first_broken().map(|b| (b.0, b.1)),
            Some(("main", 5)),
            "{v:?}"
        );
        assert!(v.first_broken().is_some_and(|b| b.2.contains("changed")));
        Ok(())
    }

    #[tokio::test]
    async fn removed_events_are_found() -> Result<()> {
        let (_d, s) = store().await?;
        for i in 0..3 {
            s.accept(new_message("A", &format!("m{i}"), &["B"])).await?;
        }
        assert_eq!(s.verify_log().await?.first_broken(), None);
        s.execute_sql("DELETE FROM events WHERE chain_seq = (SELECT MAX(chain_seq) FROM events)")
            .await?;
        let v = s.verify_log().await?;
        assert!(
            v.first_broken().is_some_and(|b| b.2.contains("removed")),
            "{v:?}"
        );
        s.execute_sql("DELETE FROM events WHERE chain_seq = 2")
            .await?;
        let v = s.verify_log().await?;
        assert_eq!(v.first_broken().map(|b| b.1), Some(2), "{v:?}");
        Ok(())
    }
}
