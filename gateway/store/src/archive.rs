//! The database's side of the archive: which documents may leave the hot
//! database, the register of packages written, and the purge that turns an
//! archived message's row into its tombstone.
//!
//! Registering a package marks its messages (`archived_in`,
//! `archive_entry`: the package and the folder holding a copy), so the next
//! package does not take them again. A tombstone is then the message's own
//! row with its content gone (`purged_at`): the envelope, the verification
//! report and the hops are emptied and its attachment rows deleted. Everything else — its identity,
//! digest, times, references, deliveries and transfer-log lines — stays,
//! so the lifecycle, the reports, `trace` and `log verify` read it as
//! before.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};

use lienthong_schema::entity::{archive_package, attachment, delivery, message};

use crate::error::{Error, OrDb, Reason, Result};
use lienthong_types::MessageKind;

use crate::rows::{MessageRow, read_all};
use crate::store::{Store, append_events};
use crate::writes::{EventKind, NewEvent};

/// A package as the register holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRow {
    pub seq: i64,
    pub name: String,
    pub created_at: i64,
    pub period_from: i64,
    pub period_to: i64,
    pub documents: i64,
    pub messages: i64,
    pub bytes: i64,
    pub manifest_sha256: String,
    pub previous_sha256: Option<String>,
    pub purged_at: Option<i64>,
}

impl From<archive_package::Model> for PackageRow {
    fn from(m: archive_package::Model) -> PackageRow {
        PackageRow {
            seq: m.seq,
            name: m.name,
            created_at: m.created_at,
            period_from: m.period_from,
            period_to: m.period_to,
            documents: m.documents,
            messages: m.messages,
            bytes: m.bytes,
            manifest_sha256: m.manifest_sha256,
            previous_sha256: m.previous_sha256,
            purged_at: m.purged_at,
        }
    }
}

/// One message of a package, as its purge checks it.
#[derive(Debug, Clone)]
pub struct PurgedMessage {
    pub pk: i64,
    pub sender: String,
    pub message_id: String,
    pub envelope_sha256: String,
    /// Its folder in the package.
    pub entry: String,
}

/// What a purge did.
#[derive(Debug, Clone, Default)]
pub struct Purged {
    pub messages: u64,
    pub attachment_rows: u64,
}

impl Store {
    /// Documents in no package yet accepted before `before`, after row
    /// `after_pk`, in acceptance order.
    pub async fn unarchived_documents(
        &self,
        before: i64,
        after_pk: i64,
        limit: u64,
    ) -> Result<Vec<MessageRow>> {
        read_all(
            message::Entity::find()
                .filter(message::Column::Kind.eq(MessageKind::Document.as_str()))
                .filter(message::Column::ArchivedIn.is_null())
                .filter(message::Column::AcceptedAt.lt(before))
                .filter(message::Column::Id.gt(after_pk))
                .order_by_asc(message::Column::Id)
                .limit(limit)
                .all(self.connection())
                .await
                .or_db()?,
        )
    }

    /// Whether any copy of message `pk` still waits to be handed over.
    pub async fn has_pending_delivery(&self, pk: i64) -> Result<bool> {
        Ok(delivery::Entity::find()
            .filter(delivery::Column::MessagePk.eq(pk))
            .filter(delivery::Column::State.eq("pending"))
            .one(self.connection())
            .await
            .or_db()?
            .is_some())
    }

    /// Every package in the register, in order.
    pub async fn archive_packages(&self) -> Result<Vec<PackageRow>> {
        Ok(archive_package::Entity::find()
            .order_by_asc(archive_package::Column::Seq)
            .all(self.connection())
            .await
            .or_db()?
            .into_iter()
            .map(PackageRow::from)
            .collect())
    }

    /// The package registered under file name `name`.
    pub async fn archive_package(&self, name: &str) -> Result<Option<PackageRow>> {
        Ok(archive_package::Entity::find()
            .filter(archive_package::Column::Name.eq(name))
            .one(self.connection())
            .await
            .or_db()?
            .map(PackageRow::from))
    }

    /// Registers a written package and marks its messages as held by it
    /// (`messages`: row and folder), in one transaction. Fails when its
    /// sequence number is taken or a message was taken by another package:
    /// another process wrote one since this one looked.
    pub async fn register_archive_package(
        &self,
        p: &PackageRow,
        messages: &[(i64, String)],
    ) -> Result<()> {
        let busy = |what: String| {
            Error::new(
                Reason::Unavailable,
                format!(
                    "package {} could not be registered as number {}: {what}; another archive \
                     run may have written one meanwhile: remove the file and run it again",
                    p.name, p.seq
                ),
            )
        };
        let txn = self.connection().begin().await.or_db()?;
        archive_package::ActiveModel {
            seq: Set(p.seq),
            name: Set(p.name.clone()),
            created_at: Set(p.created_at),
            period_from: Set(p.period_from),
            period_to: Set(p.period_to),
            documents: Set(p.documents),
            messages: Set(p.messages),
            bytes: Set(p.bytes),
            manifest_sha256: Set(p.manifest_sha256.clone()),
            previous_sha256: Set(p.previous_sha256.clone()),
            purged_at: Set(None),
        }
        .insert(&txn)
        .await
        .map_err(|e| busy(e.to_string()))?;
        for (pk, entry) in messages {
            let n = message::Entity::update_many()
                .col_expr(
                    message::Column::ArchivedIn,
                    sea_orm::sea_query::Expr::value(p.name.clone()),
                )
                .col_expr(
                    message::Column::ArchiveEntry,
                    sea_orm::sea_query::Expr::value(entry.clone()),
                )
                .filter(message::Column::Id.eq(*pk))
                .filter(message::Column::ArchivedIn.is_null())
                .exec(&txn)
                .await
                .or_db()?
                .rows_affected;
            if n != 1 {
                return Err(busy(format!(
                    "message row {pk} is in another package already"
                )));
            }
        }
        txn.commit().await.or_db()?;
        Ok(())
    }

    /// Turns the rows of `package`'s messages into tombstones, in one
    /// transaction: nothing changes unless every message is still as the
    /// package holds it (same envelope digest, not archived, no copy
    /// waiting to be handed over).
    pub async fn purge_archived(
        &self,
        package: &PackageRow,
        messages: &[PurgedMessage],
        actor: &str,
    ) -> Result<Purged> {
        let at = crate::store::now_micros();
        let db = self.connection();
        let txn = db.begin().await.or_db()?;
        let mut out = Purged::default();
        let mut events = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(row) = message::Entity::find_by_id(m.pk).one(&txn).await.or_db()? else {
                return Err(refused(format!(
                    "message {} from {} (row {}) is in package {} but not in the database",
                    m.message_id, m.sender, m.pk, package.name
                )));
            };
            if row.sender != m.sender
                || row.message_id != m.message_id
                || row.envelope_sha256 != m.envelope_sha256
            {
                return Err(refused(format!(
                    "row {} of the database is not message {} from {} as package {} holds it \
                     (another database's package?)",
                    m.pk, m.message_id, m.sender, package.name
                )));
            }
            match &row.archived_in {
                Some(p) if p == &package.name => {}
                Some(p) => {
                    return Err(refused(format!(
                        "message {} from {} is held by package {p}, not {}",
                        m.message_id, m.sender, package.name
                    )));
                }
                None => {
                    return Err(refused(format!(
                        "message {} from {} is not archived: package {} was never registered \
                         for it",
                        m.message_id, m.sender, package.name
                    )));
                }
            }
            if row.purged_at.is_some() {
                // Purged by an earlier run that stopped before the end.
                continue;
            }
            if delivery::Entity::find()
                .filter(delivery::Column::MessagePk.eq(m.pk))
                .filter(delivery::Column::State.eq("pending"))
                .one(&txn)
                .await
                .or_db()?
                .is_some()
            {
                return Err(refused(format!(
                    "message {} from {} has a copy waiting to be handed over since package {} was \
                     written; it stays in the hot database",
                    m.message_id, m.sender, package.name
                )));
            }
            out.attachment_rows += attachment::Entity::delete_many()
                .filter(attachment::Column::MessagePk.eq(m.pk))
                .exec(&txn)
                .await
                .or_db()?
                .rows_affected;
            let mut tomb: message::ActiveModel = row.into();
            tomb.signed_envelope = Set(Vec::new());
            tomb.verification = Set(Vec::new());
            tomb.upstream = Set(None);
            tomb.purged_at = Set(Some(at));
            tomb.update(&txn).await.or_db()?;
            events.push(NewEvent {
                kind: EventKind::Archived,
                sender: m.sender.clone(),
                message_id: m.message_id.clone(),
                recipient: None,
                reason: Some(package.name.clone()),
                detail: m.entry.clone(),
                actor: Some(actor.to_owned()),
                transport: "cli".to_owned(),
            });
            out.messages += 1;
        }
        append_events(&txn, self.writer(), events, at)
            .await
            .or_db()?;
        archive_package::Entity::update_many()
            .col_expr(
                archive_package::Column::PurgedAt,
                sea_orm::sea_query::Expr::value(at),
            )
            .filter(archive_package::Column::Seq.eq(package.seq))
            .exec(&txn)
            .await
            .or_db()?;
        txn.commit().await.or_db()?;
        Ok(out)
    }

    /// How many messages of package `name` are tombstones.
    pub async fn archived_count(&self, name: &str) -> Result<u64> {
        let db = self.connection();
        let n = db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                db.get_database_backend(),
                match db.get_database_backend() {
                    sea_orm::DbBackend::Postgres => {
                        "SELECT COUNT(*) AS n FROM messages WHERE archived_in = $1"
                    }
                    _ => "SELECT COUNT(*) AS n FROM messages WHERE archived_in = ?",
                },
                [name.into()],
            ))
            .await
            .or_db()?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()
            .or_db()?
            .unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn refused(what: String) -> Error {
    Error::new(Reason::Malformed, format!("{what}; nothing was purged"))
}
