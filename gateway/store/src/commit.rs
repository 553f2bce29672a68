//! The group committer: one task writes the gateway's busy writes —
//! acceptances, acknowledgements, the marks of handed-out deliveries — as
//! many as are waiting, in one transaction (one fsync). On SQLite it does so
//! with a few statements per group rather than per document, and extends
//! the transfer log's chain from a head it keeps in memory. On PostgreSQL
//! it writes each acceptance with statements of its own in a savepoint, and
//! acknowledgements and marks commit on the pool instead (see
//! `commit_group` and `Store::commit_small`: measured, not assumed).
//!
//! Architecture invariant: nobody hears "accepted" or "acknowledged" before
//! the transaction that holds it has committed; a job that fails alone (a
//! duplicate, a constraint another writer broke) is answered alone, and the
//! others of its group still commit.
//!
//! Architecture invariant: the chain's head in memory is only ever what this
//! task saw commit. The committer extends its process's chain (its
//! `WriterId`); the other appenders of the process (the directory, refusals,
//! the relay) and its command-line tools append to the same chain through
//! its head row, and the committer's compare-and-set on that row notices
//! them and reads the head again. Other replicas extend chains of their own
//! and never move this one's row. After a crash the head is read again from
//! what committed.

use std::collections::{HashMap, HashSet};

use lienthong_schema::entity::{attachment, delivery, event, log_head, message, outbox};
use lienthong_types::Route;
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, QueryTrait, Set, SqlErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionSession, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::rows::{DeliveryRow, MessageRow};
use crate::sql::Sql;
use crate::writes::{AcceptError, AckOutcome, EventKind, NewEvent, NewMessage, WriterId};

/// A message row and its deliveries, as committed.
pub(crate) type Accepted = (MessageRow, Vec<DeliveryRow>);

/// One write waiting for the group commit.
pub(crate) enum Job {
    Accept {
        message: Box<NewMessage>,
        reply: oneshot::Sender<Result<Accepted, AcceptError>>,
    },
    Ack {
        ack: AckRequest,
        reply: oneshot::Sender<Result<Option<AckOutcome>, DbErr>>,
    },
    Delivered {
        marks: DeliveredMarks,
        reply: MarkReply,
    },
}

/// Deliveries about to be handed to their recipient (a batch an inbox
/// read, or deliveries it heard of as they landed).
pub(crate) struct DeliveredMarks {
    pub(crate) items: Vec<MarkItem>,
    /// Which of them may be marked (and so handed out).
    pub(crate) hand_out: HandOut,
    pub(crate) transport: String,
    pub(crate) at: i64,
}

/// A delivery to mark, with what its log line names.
pub(crate) struct MarkItem {
    pub(crate) id: i64,
    pub(crate) sender: String,
    pub(crate) message_id: String,
    pub(crate) recipient: String,
    pub(crate) route: String,
}

/// Which deliveries of a batch a stream may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HandOut {
    /// Every one still pending, whatever its past: a stream that starts
    /// takes over what the agency's earlier streams were handed and did
    /// not acknowledge.
    Pending,
    /// Only those not handed out at or after this time (µs): never handed
    /// out, or due again. Another stream of the same recipient — on this
    /// replica or another — may have handed it out since it was read.
    NotSince(i64),
}

impl HandOut {
    /// Only deliveries never handed out: those heard of as they landed.
    pub const NEW: HandOut = HandOut::NotSince(i64::MIN);
}

/// Each item's attempt number once marked; `None` for one not marked (no
/// longer pending, or handed out since, see [`HandOut`]).
pub(crate) type MarkReply = oneshot::Sender<Result<Vec<Option<i32>>, DbErr>>;

pub(crate) struct AckRequest {
    pub(crate) recipient: String,
    pub(crate) delivery_id: String,
    pub(crate) transport: String,
    pub(crate) at: i64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Accept { message, .. } => f
                .debug_struct("Accept")
                .field("message_id", &message.message_id)
                .finish(),
            Job::Ack { ack, .. } => f
                .debug_struct("Ack")
                .field("delivery_id", &ack.delivery_id)
                .finish(),
            Job::Delivered { marks, .. } => f
                .debug_struct("Delivered")
                .field("deliveries", &marks.items.len())
                .finish(),
        }
    }
}

/// The committer is the gateway's way to the database: when it has stopped
/// (the runtime is shutting down), the database is as good as unreachable.
pub(crate) fn committer_gone() -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::Internal(
        "the group committer stopped before answering".to_owned(),
    ))
}

/// The most jobs one transaction takes. A lone job never waits for
/// company: the committer takes what is queued when it is free.
const MAX_GROUP: usize = 128;

/// Jobs queued for the committer before senders wait (backpressure).
pub(crate) const COMMIT_QUEUE: usize = 256;

/// Rows per multi-row statement: far below SQLite's and PostgreSQL's limits
/// on bound values for the widest table (messages, about 20 columns).
const ROWS_PER_STATEMENT: usize = 256;

pub(crate) async fn commit_loop(
    db: DatabaseConnection,
    writer: WriterId,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut chain = Chain::new(writer);
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        commit_group(&db, &mut chain, group).await;
    }
}

/// Writes one job in a transaction of its own (no committer to share one).
pub(crate) async fn commit_alone(db: &DatabaseConnection, writer: &WriterId, job: Job) {
    commit_group(db, &mut Chain::new(writer.clone()), vec![job]).await;
}

/// A chain's head: its last position and that event's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    seq: i64,
    hash: String,
}

impl Head {
    pub(crate) fn seq(&self) -> i64 {
        self.seq
    }

    pub(crate) fn hash(&self) -> &str {
        &self.hash
    }
}

/// The chain a committer extends, and its head as the committer last saw
/// it commit (`None`: not known, read it under the row's lock).
pub(crate) struct Chain {
    writer: WriterId,
    head: Option<Head>,
}

impl Chain {
    fn new(writer: WriterId) -> Chain {
        Chain { writer, head: None }
    }
}

type AcceptReply = oneshot::Sender<Result<Accepted, AcceptError>>;
type AckReply = oneshot::Sender<Result<Option<AckOutcome>, DbErr>>;

/// What one group's jobs are, taken apart by kind.
#[derive(Default)]
struct Group {
    accepts: Vec<(Box<NewMessage>, AcceptReply)>,
    acks: Vec<(AckRequest, AckReply)>,
    marks: Vec<(DeliveredMarks, MarkReply)>,
}

impl Group {
    fn fail(self, err: &DbErr) {
        for (_, reply) in self.accepts {
            let _ = reply.send(Err(AcceptError::Db(err.clone())));
        }
        for (_, reply) in self.acks {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, reply) in self.marks {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

/// What a group's transaction came to, before it commits.
struct Written {
    accepted: Vec<Result<Accepted, AcceptError>>,
    acked: Vec<Option<AckOutcome>>,
    marked: Vec<Vec<Option<i32>>>,
}

/// Writes a group in one transaction. On SQLite the acceptances go in
/// with one statement per table for the whole group; if that fails, the
/// group is written again with each acceptance in a savepoint of its own,
/// so that the one at fault is refused alone (the way PostgreSQL always
/// writes them).
async fn commit_group(db: &DatabaseConnection, chain: &mut Chain, jobs: Vec<Job>) {
    let mut group = Group::default();
    for j in jobs {
        match j {
            Job::Accept { message, reply } => group.accepts.push((message, reply)),
            Job::Ack { ack, reply } => group.acks.push((ack, reply)),
            Job::Delivered { marks, reply } => group.marks.push((marks, reply)),
        }
    }
    // PostgreSQL writes acceptances one by one (a statement per row, each
    // in a savepoint): a multi-row insert is a new statement for every size
    // of group, and preparing one there cost more than the rows it saved
    // (docs/performance.md). A statement that takes arrays would give it
    // one statement for any size.
    let one_by_one = db.get_database_backend() == DbBackend::Postgres;
    let mut outcome = write_group(db, chain, &group, one_by_one).await;
    if let Err(Retry::OneByOne) = outcome {
        outcome = write_group(db, chain, &group, true).await;
    }
    match outcome {
        Ok(written) => {
            for ((_, reply), r) in group.accepts.into_iter().zip(written.accepted) {
                let _ = reply.send(r);
            }
            for ((_, reply), r) in group.acks.into_iter().zip(written.acked) {
                let _ = reply.send(Ok(r));
            }
            for ((_, reply), r) in group.marks.into_iter().zip(written.marked) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(Retry::OneByOne) => group.fail(&DbErr::Custom(
            "the group commit could not be written one by one either".to_owned(),
        )),
        Err(Retry::Failed(e)) => group.fail(&e),
    }
}

enum Retry {
    /// The group's acceptances failed together: write them one by one.
    OneByOne,
    /// The transaction failed; nothing of it is kept.
    Failed(DbErr),
}

impl From<DbErr> for Retry {
    fn from(e: DbErr) -> Retry {
        Retry::Failed(e)
    }
}

async fn write_group(
    db: &DatabaseConnection,
    chain: &mut Chain,
    group: &Group,
    one_by_one: bool,
) -> Result<Written, Retry> {
    // The first statements only read (which messages exist): a SQLite
    // transaction that reads first can fail to take the write lock later
    // if another connection wrote meanwhile, so it takes it at once.
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?;
    let messages: Vec<&NewMessage> = group.accepts.iter().map(|(m, _)| m.as_ref()).collect();
    let (accepted, mut events) = if one_by_one {
        accept_one_by_one(&txn, &messages).await?
    } else {
        match accept_all(&txn, &messages).await {
            Ok(done) => done,
            Err(e) => {
                // Whatever one message did to the group (a constraint, a
                // value the database refuses), the others must not pay for
                // it: written one by one, only that one fails. An outage
                // fails the second try as well.
                tracing::warn!(error = %e, "a group of acceptances failed together; writing them one by one");
                let _ = txn.rollback().await;
                return Err(Retry::OneByOne);
            }
        }
    };
    let acks: Vec<&AckRequest> = group.acks.iter().map(|(a, _)| a).collect();
    let (acked, ack_events) = ack_all(&txn, &acks).await?;
    events.extend(ack_events);
    // The group's hand-outs and their lines carry one time, as its
    // acknowledgements do: the rows and the log agree to the microsecond.
    let marks: Vec<&DeliveredMarks> = group.marks.iter().map(|(m, _)| m).collect();
    let (marked, mark_events) = mark_all(&txn, &marks).await?;
    events.extend(mark_events);
    // On PostgreSQL the acknowledgements and marks append from the pool
    // too, queueing for the head row's lock: a compare-and-set would wait
    // for one of them, fail, and queue again behind all the others. There
    // the head is taken with the locking update, in its turn. SQLite's
    // writer holds the write lock from its first statement: its set never
    // waits.
    let known = match db.get_database_backend() {
        DbBackend::Sqlite => chain.head.as_ref(),
        _ => None,
    };
    let new_head = append(&txn, &chain.writer, known, &events).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        // Other replicas' Receive streams for these recipients look.
        let local = accepted
            .iter()
            .flatten()
            .flat_map(|(_, deliveries)| deliveries.iter())
            .filter(|d| d.route.is_local())
            .map(|d| d.recipient.as_str())
            .collect();
        crate::landed::notify(&txn, &chain.writer, local).await?;
    }
    match txn.commit().await {
        Ok(()) => {
            if new_head.is_some() {
                chain.head = new_head;
            }
            Ok(Written {
                accepted,
                acked,
                marked,
            })
        }
        Err(e) => {
            // Whether it committed is unknown: read the head again next time.
            chain.head = None;
            Err(Retry::Failed(e))
        }
    }
}

// ----- acceptances --------------------------------------------------------

/// Writes every acceptance of a group with a few statements in all. A
/// message already accepted (before, or earlier in the same group) is
/// refused as a duplicate and writes nothing.
async fn accept_all<C: ConnectionTrait>(
    c: &C,
    messages: &[&NewMessage],
) -> Result<(Vec<Result<Accepted, AcceptError>>, Vec<(i64, NewEvent)>), DbErr> {
    let mut results: Vec<Option<Result<Accepted, AcceptError>>> =
        messages.iter().map(|_| None).collect();
    if messages.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let keys: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.sender.as_str(), m.message_id.as_str()))
        .collect();
    let existing = existing_messages(c, &keys).await?;
    let mut seen = HashSet::new();
    let mut fresh = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if existing.contains(key) || !seen.insert(*key) {
            results[i] = Some(Err(AcceptError::AlreadyExists));
        } else {
            fresh.push(i);
        }
    }
    let chosen: Vec<&NewMessage> = fresh.iter().map(|&i| messages[i]).collect();
    let (written, events) = insert_messages(c, &chosen).await?;
    for (i, w) in fresh.into_iter().zip(written) {
        results[i] = Some(Ok(w));
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or(Err(AcceptError::AlreadyExists)))
        .collect();
    Ok((results, events))
}

/// Each acceptance in a savepoint of its own: the slow way, for a group
/// that broke a constraint together.
async fn accept_one_by_one<C: ConnectionTrait + TransactionTrait>(
    c: &C,
    messages: &[&NewMessage],
) -> Result<(Vec<Result<Accepted, AcceptError>>, Vec<(i64, NewEvent)>), DbErr> {
    let mut results = Vec::with_capacity(messages.len());
    let mut events = Vec::new();
    for m in messages {
        let sp = c.begin().await?;
        match insert_messages(&sp, &[m]).await {
            Ok((mut written, evs)) => {
                sp.commit().await?;
                events.extend(evs);
                match written.pop() {
                    Some(w) => results.push(Ok(w)),
                    None => results.push(Err(AcceptError::Db(DbErr::Custom(
                        "an acceptance wrote no message row".to_owned(),
                    )))),
                }
            }
            Err(e) => {
                let _ = sp.rollback().await;
                results.push(Err(match e.sql_err() {
                    Some(SqlErr::UniqueConstraintViolation(_)) => AcceptError::AlreadyExists,
                    _ => AcceptError::Db(e),
                }));
            }
        }
    }
    Ok((results, events))
}

/// Which of these (sender, message_id) are accepted already.
async fn existing_messages<'k, C: ConnectionTrait>(
    c: &C,
    keys: &[(&'k str, &'k str)],
) -> Result<HashSet<(&'k str, &'k str)>, DbErr> {
    let mut known: HashSet<(String, String)> = HashSet::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut q = Sql::new(c.get_database_backend());
        q.push("SELECT sender, message_id FROM messages WHERE (sender, message_id) IN (VALUES ")
            .pairs(chunk.iter().copied())
            .push(")");
        for row in c.query_all_raw(q.statement()).await? {
            known.insert((row.try_get("", "sender")?, row.try_get("", "message_id")?));
        }
    }
    Ok(keys
        .iter()
        .filter(|(s, m)| known.contains(&((*s).to_owned(), (*m).to_owned())))
        .copied()
        .collect())
}

/// Inserts messages known to be new, with their attachments, deliveries,
/// outbox rows and recalls: one statement per table (and per recalled
/// delivery). Returns the rows written, in the order given, and the
/// transfer log's lines.
async fn insert_messages<C: ConnectionTrait>(
    c: &C,
    messages: &[&NewMessage],
) -> Result<(Vec<Accepted>, Vec<(i64, NewEvent)>), DbErr> {
    if messages.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // A recall takes the recalled document out of the inboxes that have
    // not yet had it; a copy handed out meanwhile gets the recall.
    let mut recipients: Vec<Vec<(String, Route)>> = Vec::with_capacity(messages.len());
    let mut withdrawn: Vec<Vec<String>> = Vec::with_capacity(messages.len());
    for m in messages {
        let (r, w) = withdraw(c, m).await?;
        recipients.push(r);
        withdrawn.push(w);
    }
    let ids = insert_message_rows(c, messages).await?;
    let attachments: Vec<attachment::ActiveModel> = messages
        .iter()
        .zip(&ids)
        .flat_map(|(m, &id)| {
            m.attachments
                .iter()
                .enumerate()
                .map(move |(i, a)| attachment::ActiveModel {
                    message_pk: Set(id),
                    idx: Set(i as i32),
                    name: Set(a.name.clone()),
                    content_type: Set(a.content_type.clone()),
                    size: Set(a.size as i64),
                    sha256: Set(a.sha256_hex.clone()),
                })
        })
        .collect();
    for chunk in chunks(attachments) {
        attachment::Entity::insert_many(chunk)
            .exec_without_returning(c)
            .await?;
    }
    // Delivery ids are made here, so that the rows read back can be told
    // apart by them.
    let mut planned: Vec<Vec<(String, String, Route)>> = Vec::with_capacity(messages.len());
    let mut delivery_rows = Vec::new();
    for ((m, &id), rs) in messages.iter().zip(&ids).zip(&recipients) {
        let mut mine = Vec::with_capacity(rs.len());
        for (recipient, route) in rs {
            let delivery_id = uuid::Uuid::now_v7().simple().to_string();
            delivery_rows.push(delivery::ActiveModel {
                delivery_id: Set(delivery_id.clone()),
                message_pk: Set(id),
                recipient: Set(recipient.clone()),
                route: Set(route.to_string()),
                state: Set("pending".to_owned()),
                attempts: Set(0),
                created_at: Set(m.accepted_at),
                last_delivered_at: Set(None),
                acked_at: Set(None),
                ..Default::default()
            });
            mine.push((delivery_id, recipient.clone(), route.clone()));
        }
        planned.push(mine);
    }
    let mut delivery_pks: HashMap<String, i64> = HashMap::new();
    for chunk in chunks(delivery_rows) {
        let stmt = delivery::Entity::insert_many(chunk)
            .into_query()
            .returning(
                Query::returning().columns([delivery::Column::Id, delivery::Column::DeliveryId]),
            )
            .to_owned();
        for row in c.query_all(&stmt).await? {
            delivery_pks.insert(row.try_get("", "delivery_id")?, row.try_get("", "id")?);
        }
    }
    // The outbox row commits with the message: what is accepted for
    // another gateway or a queue is published, whatever happens next.
    let mut outbox_rows = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    let mut events = Vec::new();
    for (((m, &id), mine), gone) in messages.iter().zip(&ids).zip(planned).zip(&withdrawn) {
        let mut deliveries = Vec::with_capacity(mine.len());
        for (delivery_id, recipient, route) in mine {
            let pk = *delivery_pks.get(&delivery_id).ok_or_else(|| {
                DbErr::Custom(format!("delivery {delivery_id} was not read back"))
            })?;
            if let Some((exchange, routing_key)) = route.amqp_destination(&recipient) {
                outbox_rows.push(outbox::ActiveModel {
                    delivery_pk: Set(pk),
                    message_pk: Set(id),
                    exchange: Set(exchange),
                    routing_key: Set(routing_key),
                    state: Set("pending".to_owned()),
                    attempts: Set(0),
                    last_error: Set(None),
                    created_at: Set(m.accepted_at),
                    sent_at: Set(None),
                    ..Default::default()
                });
            }
            deliveries.push(DeliveryRow {
                id: pk,
                delivery_id,
                message_pk: id,
                recipient,
                route,
                state: "pending".to_owned(),
                attempts: 0,
                created_at: m.accepted_at,
                last_delivered_at: None,
                acked_at: None,
            });
        }
        let recipients: Vec<(&str, &Route)> = deliveries
            .iter()
            .map(|d| (d.recipient.as_str(), &d.route))
            .collect();
        events.extend(
            acceptance_events(m, &recipients, gone)
                .into_iter()
                .map(|e| (m.accepted_at, e)),
        );
        out.push((message_row(m, id), deliveries));
    }
    for chunk in chunks(outbox_rows) {
        outbox::Entity::insert_many(chunk)
            .exec_without_returning(c)
            .await?;
    }
    Ok((out, events))
}

/// Inserts the message rows; returns their ids in the order given.
async fn insert_message_rows<C: ConnectionTrait>(
    c: &C,
    messages: &[&NewMessage],
) -> Result<Vec<i64>, DbErr> {
    let mut ids: HashMap<(String, String), i64> = HashMap::with_capacity(messages.len());
    for chunk in messages.chunks(ROWS_PER_STATEMENT) {
        let rows = chunk.iter().map(|m| message::ActiveModel {
            sender: Set(m.sender.clone()),
            message_id: Set(m.message_id.clone()),
            kind: Set(m.kind.as_str().to_owned()),
            document_id: Set(m.document_id.clone()),
            ref_from: Set(m.ref_from.clone()),
            status_code: Set(m.status_code.clone()),
            envelope_sha256: Set(m.envelope_sha256_hex.clone()),
            signed_envelope: Set(m.signed_envelope.clone()),
            verification: Set(m.verification.clone()),
            accepted_at: Set(m.accepted_at),
            attachment_count: Set(m.attachments.len() as i32),
            upstream: Set(m.upstream.clone()),
            business_type: Set(m.business_type),
            replaces: Set(m.replaces.clone()),
            priority: Set(m.priority),
            due_at: Set(m.due_at),
            due_date: Set(m.index.as_ref().map(|i| i.due_date.clone())),
            code: Set(m.index.as_ref().map(|i| i.code.clone())),
            subject: Set(m.index.as_ref().map(|i| i.subject.clone())),
            ..Default::default()
        });
        // Only the keys come back, not the envelopes just written.
        let stmt = message::Entity::insert_many(rows)
            .into_query()
            .returning(Query::returning().columns([
                message::Column::Id,
                message::Column::Sender,
                message::Column::MessageId,
            ]))
            .to_owned();
        for row in c.query_all(&stmt).await? {
            ids.insert(
                (row.try_get("", "sender")?, row.try_get("", "message_id")?),
                row.try_get("", "id")?,
            );
        }
    }
    messages
        .iter()
        .map(|m| {
            ids.get(&(m.sender.clone(), m.message_id.clone()))
                .copied()
                .ok_or_else(|| {
                    DbErr::Custom(format!(
                        "message {} of {} was not read back",
                        m.message_id, m.sender
                    ))
                })
        })
        .collect()
}

/// A recall's withdrawals: which of the recalled document's deliveries were
/// taken out of their inboxes, and the recipients the recall itself goes to
/// (those whose copy was handed out meanwhile get it delivered).
async fn withdraw<C: ConnectionTrait>(
    c: &C,
    m: &NewMessage,
) -> Result<(Vec<(String, Route)>, Vec<String>), DbErr> {
    let mut recipients = m.recipients.clone();
    let mut withdrawn = Vec::new();
    for (pk, recipient, route) in &m.withdraw {
        let taken = delivery::Entity::update_many()
            .col_expr(delivery::Column::State, Expr::value("withdrawn"))
            .col_expr(delivery::Column::AckedAt, Expr::value(m.accepted_at))
            .filter(delivery::Column::Id.eq(*pk))
            .filter(delivery::Column::State.eq("pending"))
            .filter(delivery::Column::LastDeliveredAt.is_null())
            .exec(c)
            .await?
            .rows_affected;
        if taken == 1 {
            outbox::Entity::update_many()
                .col_expr(outbox::Column::State, Expr::value("cancelled"))
                .filter(outbox::Column::DeliveryPk.eq(*pk))
                .filter(outbox::Column::State.eq("pending"))
                .exec(c)
                .await?;
            withdrawn.push(recipient.clone());
        } else if !recipients.iter().any(|(r, _)| r == recipient) {
            recipients.push((recipient.clone(), route.clone()));
        }
    }
    Ok((recipients, withdrawn))
}

fn message_row(m: &NewMessage, id: i64) -> MessageRow {
    MessageRow {
        id,
        sender: m.sender.clone(),
        message_id: m.message_id.clone(),
        kind: m.kind,
        document_id: m.document_id.clone(),
        ref_from: m.ref_from.clone(),
        status_code: m.status_code.clone(),
        envelope_sha256: m.envelope_sha256_hex.clone(),
        signed_envelope: m.signed_envelope.clone(),
        verification: m.verification.clone(),
        accepted_at: m.accepted_at,
        attachment_count: m.attachments.len() as i32,
        upstream: m.upstream.clone(),
        business_type: m.business_type,
        replaces: m.replaces.clone(),
        priority: m.priority,
        due_at: m.due_at,
        due_date: m.index.as_ref().map(|i| i.due_date.clone()),
        code: m.index.as_ref().map(|i| i.code.clone()),
        subject: m.index.as_ref().map(|i| i.subject.clone()),
        archived: None,
    }
}

/// The transfer log's lines of one acceptance.
fn acceptance_events(
    m: &NewMessage,
    recipients: &[(&str, &Route)],
    withdrawn: &[String],
) -> Vec<NewEvent> {
    let base = NewEvent {
        kind: EventKind::Accepted,
        sender: m.sender.clone(),
        message_id: m.message_id.clone(),
        recipient: None,
        reason: None,
        detail: String::new(),
        actor: Some(m.actor.clone()),
        transport: m.transport.clone(),
    };
    let mut accepted_detail = format!(
        "accepted over {} for {} recipient(s), {} attachment(s), envelope sha256 {}",
        m.transport,
        recipients.len(),
        m.attachments.len(),
        m.envelope_sha256_hex
    );
    if let Some(a) = &m.agent {
        accepted_detail.push_str(&format!("; sent by {a} for {}", m.sender));
    }
    if let (None, Some(n)) = (&m.status_code, &m.status_note) {
        accepted_detail.push_str("; ");
        accepted_detail.push_str(n);
    }
    let mut events = vec![NewEvent {
        detail: accepted_detail,
        ..base.clone()
    }];
    if let (Some(code), Some(doc_from)) = (&m.status_code, &m.ref_from) {
        let mut detail = format!("status {code} for document {} of {doc_from}", m.document_id);
        if let Some(n) = &m.status_note {
            detail.push_str(": ");
            detail.push_str(n);
        }
        events.push(NewEvent {
            kind: EventKind::StatusReceived,
            reason: Some(code.clone()),
            detail,
            ..base.clone()
        });
    }
    for recipient in withdrawn {
        events.push(NewEvent {
            kind: EventKind::Withdrawn,
            recipient: Some(recipient.clone()),
            detail: format!(
                "document {} recalled before it was delivered: taken out of the inbox",
                m.replaces.as_deref().unwrap_or_default()
            ),
            ..base.clone()
        });
    }
    for (recipient, route) in recipients {
        events.push(NewEvent {
            kind: EventKind::Routed,
            recipient: Some((*recipient).to_owned()),
            detail: format!("route {route}"),
            ..base.clone()
        });
    }
    for recipient in &m.elsewhere {
        events.push(NewEvent {
            kind: EventKind::Routed,
            recipient: Some(recipient.clone()),
            detail: "served by another gateway, which had it from the same exchange; not forwarded from here".to_owned(),
            ..base.clone()
        });
    }
    events
}

fn chunks<T>(rows: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        out.push(rows.by_ref().take(ROWS_PER_STATEMENT).collect());
    }
    out
}

// ----- acknowledgements and hand-out marks ----------------------------------

/// Acknowledges deliveries, each only for its own recipient: one update for
/// all of them, and a read of the messages' keys for the log lines. Returns
/// each one's outcome in order (`None`: no such delivery of that recipient;
/// nobody learns what is in another inbox).
pub(crate) async fn ack_all<C: ConnectionTrait>(
    c: &C,
    acks: &[&AckRequest],
) -> Result<(Vec<Option<AckOutcome>>, Vec<(i64, NewEvent)>), DbErr> {
    if acks.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let backend = c.get_database_backend();
    let at = acks.iter().map(|a| a.at).max().unwrap_or_default();
    let mut acked: HashMap<(String, String), i64> = HashMap::new();
    for chunk in acks.chunks(ROWS_PER_STATEMENT) {
        // One statement both changes the rows and names their messages.
        let mut q = Sql::new(backend);
        q.push("UPDATE deliveries SET state = 'acked', acked_at = ")
            .bind(at)
            .push(" WHERE state = 'pending' AND (delivery_id, recipient) IN (VALUES ")
            .pairs(
                chunk
                    .iter()
                    .map(|a| (a.delivery_id.as_str(), a.recipient.as_str())),
            )
            .push(") RETURNING delivery_id, recipient, message_pk");
        let rows = c.query_all_raw(q.statement()).await?;
        for row in rows {
            acked.insert(
                (
                    row.try_get("", "delivery_id")?,
                    row.try_get("", "recipient")?,
                ),
                row.try_get("", "message_pk")?,
            );
        }
    }
    // Those not changed now: acknowledged before, or not theirs.
    let others: Vec<(&str, &str)> = acks
        .iter()
        .filter(|a| !acked.contains_key(&(a.delivery_id.clone(), a.recipient.clone())))
        .map(|a| (a.delivery_id.as_str(), a.recipient.as_str()))
        .collect();
    let mut known: HashSet<(String, String)> = HashSet::new();
    for chunk in others.chunks(ROWS_PER_STATEMENT) {
        let mut q = Sql::new(backend);
        q.push("SELECT delivery_id, recipient FROM deliveries WHERE (delivery_id, recipient) IN (VALUES ")
            .pairs(chunk.iter().copied())
            .push(")");
        for row in c.query_all_raw(q.statement()).await? {
            known.insert((
                row.try_get("", "delivery_id")?,
                row.try_get("", "recipient")?,
            ));
        }
    }
    let pks: Vec<i64> = acked
        .values()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut keys: HashMap<i64, (String, String)> = HashMap::new();
    for chunk in pks.chunks(ROWS_PER_STATEMENT) {
        let rows = message::Entity::find()
            .select_only()
            .column(message::Column::Id)
            .column(message::Column::Sender)
            .column(message::Column::MessageId)
            .filter(message::Column::Id.is_in(chunk.iter().copied()))
            .into_tuple::<(i64, String, String)>()
            .all(c)
            .await?;
        for (id, sender, message_id) in rows {
            keys.insert(id, (sender, message_id));
        }
    }
    let mut outcomes = Vec::with_capacity(acks.len());
    let mut events = Vec::new();
    // A delivery acknowledged twice in one group is acknowledged once.
    let mut first = HashSet::new();
    for a in acks {
        let key = (a.delivery_id.clone(), a.recipient.clone());
        match acked.get(&key) {
            Some(pk) if first.insert(key.clone()) => {
                let (sender, message_id) = keys.get(pk).cloned().unwrap_or_default();
                events.push((
                    at,
                    NewEvent {
                        kind: EventKind::Acknowledged,
                        sender,
                        message_id,
                        recipient: Some(a.recipient.clone()),
                        reason: None,
                        detail: format!("delivery {} acknowledged", a.delivery_id),
                        actor: Some(a.recipient.clone()),
                        transport: a.transport.clone(),
                    },
                ));
                outcomes.push(Some(AckOutcome::Acknowledged));
            }
            Some(_) => outcomes.push(Some(AckOutcome::AlreadyAcknowledged)),
            None if known.contains(&key) => outcomes.push(Some(AckOutcome::AlreadyAcknowledged)),
            None => outcomes.push(None),
        }
    }
    Ok((outcomes, events))
}

/// Marks deliveries handed out: one update per kind of batch in the group
/// (see [`HandOut`]; a group holds few kinds), at the latest of their times, which their log lines carry
/// too. A delivery no longer pending is not marked: it was acknowledged or
/// taken out of the inbox since it was read. A delivery asked for twice in
/// one group goes to the first batch that asked.
pub(crate) async fn mark_all<C: ConnectionTrait>(
    c: &C,
    marks: &[&DeliveredMarks],
) -> Result<(Vec<Vec<Option<i32>>>, Vec<(i64, NewEvent)>), DbErr> {
    let at = marks.iter().map(|m| m.at).max().unwrap_or(0);
    let mut attempts: HashMap<i64, i32> = HashMap::new();
    let mut modes: Vec<HandOut> = marks.iter().map(|m| m.hand_out).collect();
    modes.sort_unstable();
    modes.dedup();
    for mode in modes {
        let mut ids: Vec<i64> = marks
            .iter()
            .filter(|m| m.hand_out == mode)
            .flat_map(|m| m.items.iter().map(|i| i.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 4) {
            let mut q = Sql::new(c.get_database_backend());
            q.push("UPDATE deliveries SET attempts = attempts + 1, last_delivered_at = ")
                .bind(at)
                .push(" WHERE state = 'pending'");
            match mode {
                HandOut::Pending => {}
                HandOut::NEW => {
                    q.push(" AND last_delivered_at IS NULL");
                }
                HandOut::NotSince(t) => {
                    q.push(" AND (last_delivered_at IS NULL OR last_delivered_at < ")
                        .bind(t)
                        .push(")");
                }
            }
            q.push(" AND id IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.bind(*id);
            }
            q.push(") RETURNING id, attempts");
            for row in c.query_all_raw(q.statement()).await? {
                attempts.insert(row.try_get("", "id")?, row.try_get("", "attempts")?);
            }
        }
    }
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(marks.len());
    for m in marks {
        let mut these = Vec::with_capacity(m.items.len());
        for item in &m.items {
            // `remove`: the first batch that asked takes it.
            let attempt = attempts.remove(&item.id);
            if let Some(attempt) = attempt {
                events.push((
                    at,
                    NewEvent {
                        kind: EventKind::Delivered,
                        sender: item.sender.clone(),
                        message_id: item.message_id.clone(),
                        recipient: Some(item.recipient.clone()),
                        reason: None,
                        detail: format!("attempt {attempt} via {}", item.route),
                        actor: Some(item.recipient.clone()),
                        transport: m.transport.clone(),
                    },
                ));
            }
            these.push(attempt);
        }
        outcomes.push(these);
    }
    Ok((outcomes, events))
}

// ----- the transfer log's chain ---------------------------------------------

/// Chains `events` after the head of `writer`'s chain inside the caller's
/// transaction and returns the new head, for the caller to keep once the
/// transaction has committed (`None`: nothing appended).
///
/// With a head known, one compare-and-set of the chain's head row both
/// checks it and moves it. Without one, or when another appender of the
/// same chain moved it meanwhile, the row is taken with an update that
/// reads it back: that update serialises the chain's appenders (a row lock
/// in PostgreSQL, the write lock in SQLite), so a chain follows commit
/// order. Appenders of other chains take other rows.
pub(crate) async fn append<C: ConnectionTrait>(
    c: &C,
    writer: &WriterId,
    known: Option<&Head>,
    events: &[(i64, NewEvent)],
) -> Result<Option<Head>, DbErr> {
    if events.is_empty() {
        return Ok(None);
    }
    let backend = c.get_database_backend();
    if let Some(start) = known {
        let (rows, end) = chained(writer, start, events);
        let sql = match backend {
            DbBackend::Postgres => {
                "UPDATE log_head SET seq = $1, hash = $2 WHERE chain = $3 AND seq = $4 AND hash = $5"
            }
            _ => "UPDATE log_head SET seq = ?, hash = ? WHERE chain = ? AND seq = ? AND hash = ?",
        };
        let moved = c
            .execute_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [
                    end.seq.into(),
                    end.hash.clone().into(),
                    writer.as_str().into(),
                    start.seq.into(),
                    start.hash.clone().into(),
                ],
            ))
            .await?
            .rows_affected();
        if moved == 1 {
            insert_events(c, rows).await?;
            return Ok(Some(end));
        }
    }
    let start = take_head(c, writer, events.len() as i64).await?;
    append_after(c, writer, &start, events).await.map(Some)
}

/// Writes `events` after `start`, the head [`take_head`] returned in the
/// same transaction (and moved on by as many positions), and sets the
/// row's hash to the new head's.
pub(crate) async fn append_after<C: ConnectionTrait>(
    c: &C,
    writer: &WriterId,
    start: &Head,
    events: &[(i64, NewEvent)],
) -> Result<Head, DbErr> {
    let (rows, end) = chained(writer, start, events);
    insert_events(c, rows).await?;
    log_head::Entity::update_many()
        .col_expr(log_head::Column::Hash, Expr::value(end.hash.clone()))
        .filter(log_head::Column::Chain.eq(writer.as_str()))
        .exec(c)
        .await?;
    Ok(end)
}

/// Moves the head of `writer`'s chain `n` positions on, holding its row
/// until the transaction ends, and returns where it stood. A writer's first
/// append makes its chain's row, in the transaction of its first events:
/// a chain's row never stands without them.
pub(crate) async fn take_head<C: ConnectionTrait>(
    c: &C,
    writer: &WriterId,
    n: i64,
) -> Result<Head, DbErr> {
    let backend = c.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "UPDATE log_head SET seq = seq + $1 WHERE chain = $2 RETURNING seq, hash"
        }
        _ => "UPDATE log_head SET seq = seq + ? WHERE chain = ? RETURNING seq, hash",
    };
    let take = Statement::from_sql_and_values(backend, sql, [n.into(), writer.as_str().into()]);
    let row = match c.query_one_raw(take.clone()).await? {
        Some(row) => row,
        None => {
            // Events of the chain without its row: the row was removed by
            // hand. Starting the chain again would clash with their
            // positions and hide what happened; `log verify` names it.
            let orphans = event::Entity::find()
                .select_only()
                .column(event::Column::Id)
                .filter(event::Column::Chain.eq(writer.as_str()))
                .limit(1)
                .into_tuple::<i64>()
                .one(c)
                .await?;
            if orphans.is_some() {
                return Err(DbErr::Custom(format!(
                    "the transfer log's chain {writer} has events but no head row; \
                     run `lienthong log verify`"
                )));
            }
            // Another process of the same writer may make it at the same
            // moment: then this one waits for it and takes that row.
            log_head::Entity::insert(log_head::ActiveModel {
                chain: Set(writer.as_str().to_owned()),
                id: Set(None),
                seq: Set(0),
                hash: Set(writer.genesis()),
            })
            .on_conflict(
                OnConflict::column(log_head::Column::Chain)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(c)
            .await?;
            c.query_one_raw(take).await?.ok_or_else(|| {
                DbErr::Custom(format!(
                    "the head row of the transfer log's chain {writer} could not be made"
                ))
            })?
        }
    };
    Ok(Head {
        seq: row.try_get::<i64>("", "seq")? - n,
        hash: row.try_get("", "hash")?,
    })
}

fn chained(
    writer: &WriterId,
    start: &Head,
    events: &[(i64, NewEvent)],
) -> (Vec<event::ActiveModel>, Head) {
    let mut prev = start.hash.clone();
    let mut rows = Vec::with_capacity(events.len());
    let mut seq = start.seq;
    for (at, e) in events {
        seq += 1;
        let hash = e.chain_hash(&prev, seq, *at);
        rows.push(event::ActiveModel {
            at: Set(*at),
            kind: Set(e.kind.as_str().to_owned()),
            sender: Set(e.sender.clone()),
            message_id: Set(e.message_id.clone()),
            recipient: Set(e.recipient.clone()),
            reason: Set(e.reason.clone()),
            detail: Set(e.detail.clone()),
            actor: Set(e.actor.clone()),
            transport: Set(e.transport.clone()),
            chain: Set(writer.as_str().to_owned()),
            chain_seq: Set(Some(seq)),
            prev_hash: Set(Some(prev)),
            hash: Set(Some(hash.clone())),
            ..Default::default()
        });
        prev = hash;
    }
    (rows, Head { seq, hash: prev })
}

async fn insert_events<C: ConnectionTrait>(
    c: &C,
    rows: Vec<event::ActiveModel>,
) -> Result<(), DbErr> {
    for chunk in chunks(rows) {
        event::Entity::insert_many(chunk)
            .exec_without_returning(c)
            .await?;
    }
    Ok(())
}
