//! What applying a peer gateway's directory update changes besides the
//! directory's rows, inside [`Store::change_directory`]'s transaction: the
//! checks only the database can make at that moment (the sequence it
//! follows is still the last applied; nothing it writes is this gateway's
//! own or another peer's), the peer's progress, and the local blocks.
//!
//! [`Store::change_directory`]: crate::store::Store::change_directory

use sea_orm::{ConnectionTrait, DatabaseTransaction};

use crate::error::{Error, OrDb, Reason, Result};
use crate::rows::{AgencyRow, SigningCertRow};
use crate::sql::{Sql, int, text};

/// A peer's progress, moved by applying its update or snapshot.
#[derive(Debug, Clone)]
pub struct PeerAdvance {
    pub peer: String,
    /// The sequence this change expects to follow (what was applied
    /// before); another process that applied meanwhile undoes the change.
    pub after: u64,
    pub sequence: u64,
    pub state_sha256: String,
    /// A snapshot: the peer's agencies not in `agencies` are deactivated,
    /// and the signing keys bound to its agencies not in `bind_signing`
    /// unbound.
    pub replace: bool,
    /// Codes of agencies entered here by hand (no source) that the peer is
    /// trusted for and this gateway does not serve: the change takes them
    /// over, with their keys.
    pub adopt: Vec<String>,
}

impl PeerAdvance {
    /// Whether this change may take over the agency `id` whose source is
    /// `source`.
    fn adopts(&self, source: Option<&str>, id: &str) -> bool {
        source.is_none() && self.adopt.iter().any(|a| a == id)
    }
}

/// A peer's progress: the last update applied, and the last one seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub peer: String,
    /// The last update applied (0: none yet).
    pub sequence: u64,
    /// The directory digest that update (or snapshot) announced.
    pub state_sha256: String,
    pub applied_at: i64,
    /// The highest sequence seen from the peer, applied or not.
    pub seen_sequence: u64,
    pub seen_at: i64,
}

impl PeerProgress {
    /// Updates seen and not applied.
    pub fn lag(&self) -> u64 {
        self.seen_sequence.saturating_sub(self.sequence)
    }
}

/// A foreign agency (`spki_sha256` `None`) or one of its keys refused by
/// this gateway's operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub organ_id: String,
    pub spki_sha256: Option<String>,
    pub reason: String,
    pub actor: String,
    pub blocked_at: i64,
}

pub(crate) fn u(v: i64) -> u64 {
    v.max(0) as u64
}

pub(crate) fn progress_of(r: &sea_orm::QueryResult) -> Result<PeerProgress> {
    Ok(PeerProgress {
        peer: text(r, "peer")?,
        sequence: u(int(r, "sequence")?),
        state_sha256: text(r, "state_sha256")?,
        applied_at: int(r, "applied_at")?,
        seen_sequence: u(int(r, "seen_sequence")?),
        seen_at: int(r, "seen_at")?,
    })
}

pub(crate) const PEER_COLUMNS: &str =
    "peer, sequence, state_sha256, applied_at, seen_sequence, seen_at";

pub(crate) async fn progress<C: ConnectionTrait>(
    c: &C,
    peer: &str,
) -> Result<Option<PeerProgress>> {
    let mut q = Sql::new(c.get_database_backend());
    q.push("SELECT ")
        .push(PEER_COLUMNS)
        .push(" FROM directory_peers WHERE peer = ")
        .bind(peer.to_owned());
    q.one(c).await?.as_ref().map(progress_of).transpose()
}

/// Inside the transaction applying a peer's update or snapshot, before its
/// rows: the sequence it follows is still the last applied, and nothing it
/// writes belongs to this gateway or another peer. A snapshot first
/// deactivates the peer's agencies it no longer lists and unbinds every
/// key of the peer's agencies (it binds those it lists again).
pub(crate) async fn before_peer_change(
    txn: &DatabaseTransaction,
    p: &PeerAdvance,
    agencies: &[AgencyRow],
    bind_signing: &[SigningCertRow],
) -> Result<()> {
    let b = txn.get_database_backend();
    let applied = progress(txn, &p.peer).await?.map_or(0, |g| g.sequence);
    if applied != p.after {
        return Err(Error::new(
            Reason::DuplicateConflict,
            format!(
                "{}'s directory moved to update {applied} meanwhile (this one follows {}): \
                 another replica applied it",
                p.peer, p.after
            ),
        ));
    }
    for chunk in agencies.chunks(200) {
        let mut q = Sql::new(b);
        q.push("SELECT organ_id, source FROM agencies WHERE organ_id IN (");
        for (i, a) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(a.organ_id.clone());
        }
        q.push(")");
        for r in q.all(txn).await? {
            let source: Option<String> = r.try_get("", "source").or_db()?;
            let id = text(&r, "organ_id")?;
            if source.as_deref() != Some(p.peer.as_str()) && !p.adopts(source.as_deref(), &id) {
                return Err(not_theirs(&p.peer, &id, source.as_deref()));
            }
        }
    }
    for chunk in bind_signing.chunks(200) {
        let mut q = Sql::new(b);
        q.push(
            "SELECT s.spki_sha256, s.organ_id, a.source FROM signing_certs s \
             LEFT JOIN agencies a ON a.organ_id = s.organ_id WHERE s.spki_sha256 IN (",
        );
        for (i, c) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.bind(c.spki_sha256.clone());
        }
        q.push(")");
        for r in q.all(txn).await? {
            let source: Option<String> = r.try_get("", "source").or_db()?;
            let id = text(&r, "organ_id")?;
            if source.as_deref() != Some(p.peer.as_str()) && !p.adopts(source.as_deref(), &id) {
                return Err(Error::new(
                    Reason::PermissionDenied,
                    format!(
                        "the signing key {} is bound here to {id}, {}: {} cannot move it",
                        text(&r, "spki_sha256")?,
                        owner(source.as_deref()),
                        p.peer
                    ),
                ));
            }
        }
    }
    if p.replace {
        let listed: std::collections::HashSet<&str> =
            agencies.iter().map(|a| a.organ_id.as_str()).collect();
        let mut q = Sql::new(b);
        q.push("SELECT organ_id FROM agencies WHERE active = ")
            .bind(true)
            .push(" AND source = ")
            .bind(p.peer.clone());
        let gone: Vec<String> = q
            .all(txn)
            .await?
            .iter()
            .map(|r| text(r, "organ_id"))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|id| !listed.contains(id.as_str()))
            .collect();
        for id in gone {
            let mut q = Sql::new(b);
            q.push("UPDATE agencies SET active = ")
                .bind(false)
                .push(" WHERE organ_id = ")
                .bind(id);
            txn.execute_raw(q.statement()).await.or_db()?;
        }
        let mut q = Sql::new(b);
        q.push(
            "DELETE FROM signing_certs WHERE organ_id IN \
             (SELECT organ_id FROM agencies WHERE source = ",
        )
        .bind(p.peer.clone())
        .push(")");
        txn.execute_raw(q.statement()).await.or_db()?;
    }
    Ok(())
}

fn owner(source: Option<&str>) -> String {
    match source {
        None => "one of this gateway's own agencies".to_owned(),
        Some(s) => format!("an agency kept by the gateway {s}"),
    }
}

fn not_theirs(peer: &str, id: &str, source: Option<&str>) -> Error {
    Error::new(
        Reason::PermissionDenied,
        format!(
            "{id} is {} here: {peer}'s update cannot change it",
            owner(source)
        ),
    )
}

/// Inside the same transaction, after the rows: the peer's progress moves.
pub(crate) async fn after_peer_change(
    txn: &DatabaseTransaction,
    p: &PeerAdvance,
    now: i64,
) -> Result<()> {
    let mut q = Sql::new(txn.get_database_backend());
    q.push("INSERT INTO directory_peers (")
        .push(PEER_COLUMNS)
        .push(") VALUES (")
        .bind(p.peer.clone())
        .push(", ")
        .bind(p.sequence as i64)
        .push(", ")
        .bind(p.state_sha256.clone())
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(p.sequence as i64)
        .push(", ")
        .bind(now)
        .push(
            ") ON CONFLICT (peer) DO UPDATE SET sequence = excluded.sequence, \
             state_sha256 = excluded.state_sha256, applied_at = excluded.applied_at, \
             seen_sequence = CASE WHEN directory_peers.seen_sequence > excluded.seen_sequence \
             THEN directory_peers.seen_sequence ELSE excluded.seen_sequence END",
        );
    txn.execute_raw(q.statement()).await.or_db()?;
    Ok(())
}

/// Inside a change's transaction: blocks added, and blocks lifted. Lifting
/// a block sets the peer's progress back to nothing applied, so that its
/// next update asks for a snapshot, which brings the agency or key back as
/// the peer keeps it.
pub(crate) async fn write_blocks(
    txn: &DatabaseTransaction,
    block: &[Block],
    unblock: &[(String, Option<String>)],
) -> Result<()> {
    let b = txn.get_database_backend();
    for k in block {
        let mut q = Sql::new(b);
        q.push(
            "INSERT INTO directory_blocks (organ_id, spki_sha256, reason, actor, blocked_at) \
             VALUES (",
        )
        .bind(k.organ_id.clone())
        .push(", ")
        .bind(k.spki_sha256.clone().unwrap_or_default())
        .push(", ")
        .bind(k.reason.clone())
        .push(", ")
        .bind(k.actor.clone())
        .push(", ")
        .bind(k.blocked_at)
        .push(
            ") ON CONFLICT (organ_id, spki_sha256) DO UPDATE SET reason = excluded.reason, \
             actor = excluded.actor, blocked_at = excluded.blocked_at",
        );
        txn.execute_raw(q.statement()).await.or_db()?;
    }
    for (organ_id, spki) in unblock {
        let mut q = Sql::new(b);
        q.push("DELETE FROM directory_blocks WHERE organ_id = ")
            .bind(organ_id.clone())
            .push(" AND spki_sha256 = ")
            .bind(spki.clone().unwrap_or_default());
        if txn
            .execute_raw(q.statement())
            .await
            .or_db()?
            .rows_affected()
            == 0
        {
            return Err(Error::new(
                Reason::NotFound,
                match spki {
                    None => format!("{organ_id} is not blocked here"),
                    Some(k) => format!("the key {k} of {organ_id} is not blocked here"),
                },
            ));
        }
        let mut q = Sql::new(b);
        q.push(
            "UPDATE directory_peers SET sequence = 0, state_sha256 = '' WHERE peer = \
             (SELECT source FROM agencies WHERE organ_id = ",
        )
        .bind(organ_id.clone())
        .push(")");
        txn.execute_raw(q.statement()).await.or_db()?;
    }
    Ok(())
}
