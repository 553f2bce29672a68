//! What the national directory exchange keeps: this gateway's
//! publications to its peers, each peer's progress, and the local blocks.
//!
//! Applying a peer's update goes through [`Store::change_directory`] like
//! every other change of the directory (with [`PeerAdvance`]): its rows,
//! its lines in the transfer log and the peer's new sequence commit
//! together, or nothing does (see `crate::peer_changes`).

use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::error::{Error, OrDb, Reason, Result};
pub use crate::peer_changes::{Block, PeerAdvance, PeerProgress};
use crate::peer_changes::{PEER_COLUMNS, progress, progress_of, u};
use crate::rows::{AgencyRow, SigningCertRow};
use crate::sql::{Sql, int, text};
use crate::store::Store;

/// What this gateway has announced: its last sequence and the digest of
/// the directory as announced, and the directory version it last compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherState {
    pub sequence: u64,
    pub state_sha256: String,
    pub seen_version: i64,
}

/// A new update of this gateway's: the entries it changed as announced
/// (`None`: no longer announced) and the signed message.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The sequence it follows (what [`Store::publisher_state`] said).
    pub after: u64,
    pub sequence: u64,
    pub state_sha256: String,
    /// The directory version the comparison read.
    pub version: i64,
    pub entries: Vec<(String, Option<Vec<u8>>)>,
    pub message: Vec<u8>,
}

impl Store {
    /// A peer's progress (`None`: nothing seen from it yet).
    pub async fn peer_progress(&self, peer: &str) -> Result<Option<PeerProgress>> {
        progress(self.connection(), peer).await
    }

    /// Every peer's progress, by name.
    pub async fn peers_progress(&self) -> Result<Vec<PeerProgress>> {
        let mut q = Sql::new(self.connection().get_database_backend());
        q.push("SELECT ")
            .push(PEER_COLUMNS)
            .push(" FROM directory_peers ORDER BY peer");
        q.all(self.connection())
            .await?
            .iter()
            .map(progress_of)
            .collect()
    }

    /// Notes that `peer`'s update `sequence` was seen at `at`, applied or
    /// not (the lag is what was seen and not applied).
    pub async fn note_peer_seen(&self, peer: &str, sequence: u64, at: i64) -> Result<()> {
        let c = self.connection();
        let mut q = Sql::new(c.get_database_backend());
        q.push("INSERT INTO directory_peers (")
            .push(PEER_COLUMNS)
            .push(") VALUES (")
            .bind(peer.to_owned())
            .push(", 0, '', 0, ")
            .bind(sequence as i64)
            .push(", ")
            .bind(at)
            .push(
                ") ON CONFLICT (peer) DO UPDATE SET seen_at = excluded.seen_at, \
                 seen_sequence = CASE WHEN directory_peers.seen_sequence > excluded.seen_sequence \
                 THEN directory_peers.seen_sequence ELSE excluded.seen_sequence END",
            );
        c.execute_raw(q.statement()).await.or_db()?;
        Ok(())
    }

    /// The directory's version: moved by every change of the directory.
    pub async fn directory_version(&self) -> Result<i64> {
        let mut q = Sql::new(self.connection().get_database_backend());
        q.push("SELECT version FROM directory_version WHERE id = 1");
        match q.one(self.connection()).await? {
            Some(r) => int(&r, "version"),
            None => Ok(0),
        }
    }

    pub async fn publisher_state(&self) -> Result<PublisherState> {
        publisher_state(self.connection()).await
    }

    /// The agencies as this gateway last announced them: (code, encoded
    /// entry), by code.
    pub async fn published_entries(&self) -> Result<Vec<(String, Vec<u8>)>> {
        published_entries(self.connection()).await
    }

    /// The announced state and its entries as of one moment (what a
    /// snapshot carries).
    pub async fn published_snapshot(&self) -> Result<(PublisherState, Vec<(String, Vec<u8>)>)> {
        let txn = crate::sql::snapshot(self.connection()).await?;
        let state = publisher_state(&txn).await?;
        let entries = published_entries(&txn).await?;
        txn.commit().await.or_db()?;
        Ok((state, entries))
    }

    /// Records a new update: the publisher's sequence moves from
    /// `p.after` to `p.sequence` (false, nothing written, when another
    /// process moved it meanwhile), the announced entries change, and the
    /// signed message waits to be published.
    pub async fn publish_directory_update(&self, p: Publication, at: i64) -> Result<bool> {
        let txn = self.connection().begin().await.or_db()?;
        let b = txn.get_database_backend();
        let mut q = Sql::new(b);
        q.push("UPDATE directory_publisher SET sequence = ")
            .bind(p.sequence as i64)
            .push(", state_sha256 = ")
            .bind(p.state_sha256.clone())
            .push(", seen_version = ")
            .bind(p.version)
            .push(" WHERE id = 1 AND sequence = ")
            .bind(p.after as i64);
        if txn
            .execute_raw(q.statement())
            .await
            .or_db()?
            .rows_affected()
            != 1
        {
            return Ok(false);
        }
        for (organ_id, entry) in p.entries {
            let mut q = Sql::new(b);
            match entry {
                Some(bytes) => {
                    q.push("INSERT INTO directory_published (organ_id, entry) VALUES (")
                        .bind(organ_id)
                        .push(", ")
                        .bind(bytes)
                        .push(") ON CONFLICT (organ_id) DO UPDATE SET entry = excluded.entry");
                }
                None => {
                    q.push("DELETE FROM directory_published WHERE organ_id = ")
                        .bind(organ_id);
                }
            }
            txn.execute_raw(q.statement()).await.or_db()?;
        }
        let mut q = Sql::new(b);
        q.push("INSERT INTO directory_publications (sequence, message, created_at) VALUES (")
            .bind(p.sequence as i64)
            .push(", ")
            .bind(p.message)
            .push(", ")
            .bind(at)
            .push(")");
        txn.execute_raw(q.statement()).await.or_db()?;
        txn.commit().await.or_db()?;
        Ok(true)
    }

    /// Notes that the directory at `version` was compared and nothing the
    /// peers know changed.
    pub async fn note_directory_compared(&self, after: u64, version: i64) -> Result<()> {
        let mut q = Sql::new(self.connection().get_database_backend());
        q.push("UPDATE directory_publisher SET seen_version = ")
            .bind(version)
            .push(" WHERE id = 1 AND sequence = ")
            .bind(after as i64);
        self.connection().execute_raw(q.statement()).await.or_db()?;
        Ok(())
    }

    /// Updates not yet confirmed by the broker, oldest first.
    pub async fn unpublished_directory_updates(&self, limit: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut q = Sql::new(self.connection().get_database_backend());
        q.push(
            "SELECT sequence, message FROM directory_publications WHERE published_at IS NULL \
             ORDER BY sequence LIMIT ",
        )
        .bind(limit as i64);
        q.all(self.connection())
            .await?
            .iter()
            .map(|r| {
                Ok((
                    u(int(r, "sequence")?),
                    r.try_get::<Vec<u8>>("", "message").or_db()?,
                ))
            })
            .collect()
    }

    pub async fn mark_directory_update_published(&self, sequence: u64, at: i64) -> Result<()> {
        let mut q = Sql::new(self.connection().get_database_backend());
        q.push("UPDATE directory_publications SET published_at = ")
            .bind(at)
            .push(" WHERE sequence = ")
            .bind(sequence as i64);
        self.connection().execute_raw(q.statement()).await.or_db()?;
        Ok(())
    }

    /// The codes of the agencies kept by `peer`.
    pub async fn agencies_of_peer(&self, peer: &str) -> Result<Vec<AgencyRow>> {
        Ok(self
            .agencies()
            .await?
            .into_iter()
            .filter(|a| a.source.as_deref() == Some(peer))
            .collect())
    }

    /// Every block, by code.
    pub async fn directory_blocks(&self) -> Result<Vec<Block>> {
        let mut q = Sql::new(self.connection().get_database_backend());
        q.push(
            "SELECT organ_id, spki_sha256, reason, actor, blocked_at FROM directory_blocks \
             ORDER BY organ_id, spki_sha256",
        );
        q.all(self.connection())
            .await?
            .iter()
            .map(|r| {
                let spki = text(r, "spki_sha256")?;
                Ok(Block {
                    organ_id: text(r, "organ_id")?,
                    spki_sha256: (!spki.is_empty()).then_some(spki),
                    reason: text(r, "reason")?,
                    actor: text(r, "actor")?,
                    blocked_at: int(r, "blocked_at")?,
                })
            })
            .collect()
    }
}

async fn publisher_state<C: ConnectionTrait>(c: &C) -> Result<PublisherState> {
    let mut q = Sql::new(c.get_database_backend());
    q.push("SELECT sequence, state_sha256, seen_version FROM directory_publisher WHERE id = 1");
    let r = q.one(c).await?.ok_or_else(|| {
        Error::new(
            Reason::Internal,
            "the database has no directory_publisher row: run `lienthong migrate`",
        )
    })?;
    Ok(PublisherState {
        sequence: u(int(&r, "sequence")?),
        state_sha256: text(&r, "state_sha256")?,
        seen_version: int(&r, "seen_version")?,
    })
}

async fn published_entries<C: ConnectionTrait>(c: &C) -> Result<Vec<(String, Vec<u8>)>> {
    let mut q = Sql::new(c.get_database_backend());
    q.push("SELECT organ_id, entry FROM directory_published ORDER BY organ_id");
    q.all(c)
        .await?
        .iter()
        .map(|r| {
            Ok((
                text(r, "organ_id")?,
                r.try_get::<Vec<u8>>("", "entry").or_db()?,
            ))
        })
        .collect()
}

impl Store {
    /// Every signing-certificate binding, by agency then key.
    pub async fn all_signing_certs(&self) -> Result<Vec<SigningCertRow>> {
        use sea_orm::{EntityTrait, QueryOrder};
        lienthong_schema::entity::signing_cert::Entity::find()
            .order_by_asc(lienthong_schema::entity::signing_cert::Column::OrganId)
            .order_by_asc(lienthong_schema::entity::signing_cert::Column::SpkiSha256)
            .all(self.connection())
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(SigningCertRow::from).collect())
    }
}
