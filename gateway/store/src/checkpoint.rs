//! Checkpoints of the transfer log: each replica's signed record, in its
//! own chain, of where every chain stood.
//!
//! The chains' hashes are not keyed: someone who can write to the database
//! can remove a whole chain with its head row, or cut a chain's tail and
//! rewrite its head row to match, or recompute a chain from any event on,
//! and each chain alone still verifies. A checkpoint closes that: every
//! `log.checkpoint_every_secs` (and at start and at a clean stop) a replica
//! appends a `checkpoint` event naming every chain's head (name, position,
//! hash; its own as it stood just before the checkpoint), signed with the
//! gateway's receipt key. `log verify` then checks each checkpoint's
//! signature, and that every chain it names still holds, at the named
//! position, the event with the named hash. Rewriting a chain then means
//! forging the gateway's signature or removing every checkpoint of every
//! other chain that recorded it.
//!
//! The event's `detail` is a JSON object:
//!
//! ```text
//! {"checkpoint":{"at":1796616000000000,"chain":"main",
//!   "heads":[{"chain":"main","hash":"9a41…","seq":4209},
//!            {"chain":"replica-2","hash":"5c0e…","seq":612}],"v":1},
//!  "signature":{"alg":"ES256","key":"<hex SHA-256 of the signer's SubjectPublicKeyInfo>",
//!               "value":"<base64>"}}
//! ```
//!
//! What is signed is `checkpoint` in its canonical form ([`Checkpoint::signed_bytes`]):
//! compact JSON, keys in sorted order, `heads` sorted by chain name,
//! integers as JSON numbers, strings as serde_json escapes them; `v` is the
//! version of that encoding (1). The signature is over DSSE's
//! pre-authentication encoding of those bytes under
//! [`CHECKPOINT_PAYLOAD_TYPE`]. Without a receipt key `signature` is `null`
//! and `unsigned` says why.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use lienthong_schema::entity::{event, log_head};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};

use crate::error::{OrDb, OrErr, Reason, Result};
use crate::writes::{EventKind, NewEvent, WriterId};

/// The DSSE payload type a checkpoint is signed under: signed bytes of
/// another kind (a receipt) can never pass for a checkpoint.
pub const CHECKPOINT_PAYLOAD_TYPE: &str = "application/vnd.lienthong.log-checkpoint.v1+json";

/// The version of the signed encoding this release writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;

/// What a checkpoint records: the chain it was written in, when, and every
/// chain's head. Fields in the order of their keys: serde_json writes them
/// so, which makes the encoding canonical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Unix microseconds; the checkpoint event's `at`.
    pub at: i64,
    pub chain: String,
    pub heads: Vec<ChainHead>,
    pub v: u32,
}

/// One chain's head as a checkpoint recorded it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    pub chain: String,
    pub hash: String,
    pub seq: i64,
}

impl Checkpoint {
    /// The bytes the signature covers (before DSSE's pre-authentication
    /// encoding): see the module's documentation.
    pub fn signed_bytes(&self) -> Result<Vec<u8>> {
        let mut canonical = self.clone();
        canonical.heads.sort();
        serde_json::to_vec(&canonical).or_err(
            Reason::Internal,
            "a checkpoint of the transfer log could not be encoded",
        )
    }
}

/// A signature over a checkpoint's signed bytes: its algorithm (JOSE
/// names), the SHA-256 of the signer's SubjectPublicKeyInfo, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSignature {
    pub algorithm: String,
    pub key_sha256: [u8; 32],
    pub value: Vec<u8>,
}

/// Signs checkpoints: the gateway's receipt key (the store knows no keys).
pub trait CheckpointSigner: Send + Sync {
    /// Signs DSSE's pre-authentication encoding of `signed_bytes` under
    /// [`CHECKPOINT_PAYLOAD_TYPE`].
    fn sign(&self, signed_bytes: &[u8]) -> Result<CheckpointSignature>;
}

/// Checks checkpoints' signatures: the gateway's receipt certificates.
pub trait CheckpointVerifier: Send + Sync {
    /// `Ok` when `sig` over `signed_bytes` was made by one of the gateway's
    /// receipt keys; else an error whose message says why not.
    fn verify(&self, signed_bytes: &[u8], sig: &CheckpointSignature) -> Result<()>;
}

/// What the checkpoints of the log came to, counted by `log verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointCounts {
    /// Checkpoints read, in all chains (up to each chain's first break).
    pub read: u64,
    /// Their signatures verified with a receipt certificate.
    pub verified: u64,
    /// Written without a signature (no receipt key then).
    pub unsigned: u64,
    /// Signed, but not checked: no receipt certificate was given.
    pub unchecked: u64,
}

/// Something `log verify` found across chains, through the checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFinding {
    /// The chain found wrong: the one a checkpoint names, or the one whose
    /// checkpoint is not the gateway's.
    pub chain: String,
    /// Its position concerned.
    pub seq: i64,
    /// What is wrong, in a sentence for an operator.
    pub what: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Detail {
    checkpoint: Checkpoint,
    signature: Option<SignatureJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsigned: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureJson {
    alg: String,
    key: String,
    value: String,
}

const UNSIGNED: &str =
    "the gateway has no receipt key (receipts.key): this checkpoint is not signed";

fn detail(cp: &Checkpoint, sig: Option<&CheckpointSignature>) -> Result<String> {
    let d = Detail {
        checkpoint: cp.clone(),
        signature: sig.map(|s| SignatureJson {
            alg: s.algorithm.clone(),
            key: hex::encode(s.key_sha256),
            value: base64::engine::general_purpose::STANDARD.encode(&s.value),
        }),
        unsigned: sig.is_none().then(|| UNSIGNED.to_owned()),
    };
    serde_json::to_string(&d).or_err(
        Reason::Internal,
        "a checkpoint of the transfer log could not be encoded",
    )
}

/// Reads a checkpoint event's detail back: the checkpoint and its
/// signature, or why it cannot be read.
fn read_detail(
    text: &str,
) -> std::result::Result<(Checkpoint, Option<CheckpointSignature>), String> {
    let d: Detail =
        serde_json::from_str(text).map_err(|e| format!("its detail is not a checkpoint ({e})"))?;
    if d.checkpoint.v != CHECKPOINT_VERSION {
        return Err(format!(
            "it is of version {}, which this release does not know",
            d.checkpoint.v
        ));
    }
    let sig = match d.signature {
        None => None,
        Some(s) => {
            let key = hex::decode(&s.key)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or("its signature's key is not a SHA-256 in hex")?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(&s.value)
                .map_err(|_| "its signature's value is not base64")?;
            Some(CheckpointSignature {
                algorithm: s.alg,
                key_sha256: key,
                value,
            })
        }
    };
    Ok((d.checkpoint, sig))
}

/// `4210` → `4,210`: positions as an operator reads them.
fn number(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `checkpoint 17 of chain main (2026-12-07 10:00:00)`, Vietnam time.
fn named(chain: &str, seq: i64, at: i64) -> String {
    format!(
        "checkpoint {} of chain {chain} ({})",
        number(seq),
        lienthong_types::calendar::format_local(at)
    )
}

/// Appends a checkpoint to `writer`'s chain in a transaction of its own:
/// every chain's head as its row stands (this chain's as it stood just
/// before the checkpoint), signed by `signer` when there is one. Holds the
/// chain's head row for the length of one small transaction, never a
/// document's commit.
pub(crate) async fn write(
    db: &sea_orm::DatabaseConnection,
    writer: &WriterId,
    signer: Option<&dyn CheckpointSigner>,
) -> Result<Checkpoint> {
    let txn = db.begin().await.or_db()?;
    let at = lienthong_types::now_micros();
    // Taking this chain's row first serialises the checkpoint with the
    // chain's other appenders; other chains' rows are only read.
    let own = crate::commit::take_head(&txn, writer, 1).await.or_db()?;
    let mut heads: Vec<ChainHead> = log_head::Entity::find()
        .all(&txn)
        .await
        .or_db()?
        .into_iter()
        .map(|h| {
            if h.chain == writer.as_str() {
                ChainHead {
                    chain: h.chain,
                    hash: own.hash().to_owned(),
                    seq: own.seq(),
                }
            } else {
                ChainHead {
                    chain: h.chain,
                    hash: h.hash,
                    seq: h.seq,
                }
            }
        })
        .collect();
    heads.sort();
    let cp = Checkpoint {
        at,
        chain: writer.as_str().to_owned(),
        heads,
        v: CHECKPOINT_VERSION,
    };
    let sig = match signer {
        Some(s) => Some(s.sign(&cp.signed_bytes()?)?),
        None => None,
    };
    let line = NewEvent {
        kind: EventKind::Checkpoint,
        sender: String::new(),
        message_id: String::new(),
        recipient: None,
        reason: None,
        detail: detail(&cp, sig.as_ref())?,
        actor: None,
        transport: "gateway".to_owned(),
    };
    crate::commit::append_after(&txn, writer, &own, &[(at, line)])
        .await
        .or_db()?;
    txn.commit().await.or_db()?;
    Ok(cp)
}

/// A head a checkpoint recorded of another chain, kept while the log is
/// walked: only the furthest one per chain. A chain that verifies link by
/// link and holds the furthest recorded event holds every earlier recorded
/// one too (each event's hash commits to all before it), so memory stays
/// one entry per chain however many checkpoints there are.
struct Claim {
    seq: i64,
    hash: String,
    by_chain: String,
    by_seq: i64,
    at: i64,
}

/// `log verify`'s side of the checkpoints, fed each checkpoint event as
/// the chains are walked, then settled against the chains.
pub(crate) struct CheckpointWalk<'a> {
    keys: Option<&'a dyn CheckpointVerifier>,
    counts: CheckpointCounts,
    findings: Vec<LogFinding>,
    claims: BTreeMap<String, Claim>,
    /// Chains whose first checkpoint finding is told (one each: a chain
    /// recomputed whole would otherwise give one per checkpoint).
    told: BTreeSet<String>,
    /// Chains two checkpoints disagree about, told once each.
    disagreed: BTreeSet<String>,
    /// The last signed checkpoint of the chain being walked: (chain, seq).
    last_signed: Option<(String, i64)>,
}

impl<'a> CheckpointWalk<'a> {
    pub(crate) fn new(keys: Option<&'a dyn CheckpointVerifier>) -> Self {
        CheckpointWalk {
            keys,
            counts: CheckpointCounts::default(),
            findings: Vec::new(),
            claims: BTreeMap::new(),
            told: BTreeSet::new(),
            disagreed: BTreeSet::new(),
            last_signed: None,
        }
    }

    fn tell(&mut self, chain: &str, seq: i64, what: String) {
        if self.told.insert(chain.to_owned()) {
            self.findings.push(LogFinding {
                chain: chain.to_owned(),
                seq,
                what,
            });
        }
    }

    /// A checkpoint event at `seq` of `chain`, whose link to the event
    /// before it (`prev_hash`) verified.
    pub(crate) fn checkpoint(&mut self, chain: &str, seq: i64, e: &event::Model, prev_hash: &str) {
        self.counts.read += 1;
        let (cp, sig) = match read_detail(&e.detail) {
            Ok(read) => read,
            Err(why) => {
                let what = format!("{} cannot be read: {why}", named(chain, seq, e.at));
                self.tell(chain, seq, what);
                return;
            }
        };
        let own = cp.heads.iter().find(|h| h.chain == chain);
        let misplaced = if cp.chain != chain {
            Some(format!("it says it was written in chain {}", cp.chain))
        } else if cp.at != e.at {
            Some(format!(
                "it records the time {}",
                lienthong_types::calendar::format_local(cp.at)
            ))
        } else if !own.is_some_and(|h| h.seq == seq - 1 && h.hash == prev_hash) {
            Some(match own {
                Some(h) => format!("it records its own chain at event {}", number(h.seq)),
                None => "it does not record its own chain".to_owned(),
            })
        } else {
            None
        };
        if let Some(why) = misplaced {
            let what = format!(
                "{} was not written where it stands: {why}; it was copied from elsewhere",
                named(chain, seq, e.at)
            );
            self.tell(chain, seq, what);
        }
        let signed_before = self
            .last_signed
            .as_ref()
            .filter(|(c, _)| c == chain)
            .map(|(_, at)| *at);
        if sig.is_some() {
            self.last_signed = Some((chain.to_owned(), seq));
        }
        match (sig, self.keys) {
            (None, _) => {
                self.counts.unsigned += 1;
                // Stripping the signature is the cheapest forgery: a chain
                // whose checkpoints were signed stays signed, short of its
                // replica losing receipts.key.
                if let Some(before) = signed_before {
                    let what = format!(
                        "{} is unsigned, though checkpoint {} of the same chain was signed: a signed \
                         checkpoint was replaced (or that replica lost receipts.key)",
                        named(chain, seq, e.at),
                        number(before)
                    );
                    self.tell(chain, seq, what);
                }
            }
            (Some(_), None) => self.counts.unchecked += 1,
            (Some(sig), Some(keys)) => {
                match cp.signed_bytes().and_then(|b| keys.verify(&b, &sig)) {
                    Ok(()) => self.counts.verified += 1,
                    Err(err) => {
                        let what = format!(
                            "the signature of {} does not hold, so the checkpoint is not the gateway's: {}",
                            named(chain, seq, e.at),
                            err.message()
                        );
                        self.tell(chain, seq, what);
                    }
                }
            }
        }
        for h in cp.heads {
            // A chain at its genesis has no event to look for.
            if h.chain == chain || h.seq < 1 {
                continue;
            }
            let further = match self.claims.get(&h.chain) {
                None => true,
                Some(c) if c.seq < h.seq => true,
                Some(c) if c.seq == h.seq && c.hash != h.hash => {
                    let what = format!(
                        "checkpoints disagree about chain {} at event {}: {} and {} record different hashes",
                        h.chain,
                        number(h.seq),
                        named(&c.by_chain, c.by_seq, c.at),
                        named(chain, seq, e.at)
                    );
                    if self.disagreed.insert(h.chain.clone()) {
                        self.findings.push(LogFinding {
                            chain: h.chain.clone(),
                            seq: h.seq,
                            what,
                        });
                    }
                    false
                }
                Some(_) => false,
            };
            if further {
                self.claims.insert(
                    h.chain,
                    Claim {
                        seq: h.seq,
                        hash: h.hash,
                        by_chain: chain.to_owned(),
                        by_seq: seq,
                        at: e.at,
                    },
                );
            }
        }
    }

    /// Checks the furthest head recorded of each chain against the chains
    /// as they are now.
    pub(crate) async fn settle<C: ConnectionTrait>(
        mut self,
        db: &C,
        chains: &BTreeSet<&str>,
    ) -> Result<(CheckpointCounts, Vec<LogFinding>)> {
        for (chain, claim) in std::mem::take(&mut self.claims) {
            let by = named(&claim.by_chain, claim.by_seq, claim.at);
            if !chains.contains(chain.as_str()) {
                self.findings.push(LogFinding {
                    what: format!(
                        "chain {chain} is missing: {by} recorded it at event {}",
                        number(claim.seq)
                    ),
                    chain,
                    seq: claim.seq,
                });
                continue;
            }
            let found: Option<Option<String>> = event::Entity::find()
                .select_only()
                .column(event::Column::Hash)
                .filter(event::Column::Chain.eq(chain.as_str()))
                .filter(event::Column::ChainSeq.eq(claim.seq))
                .into_tuple()
                .one(db)
                .await
                .or_db()?;
            let what = match found {
                Some(hash) if hash.as_deref() == Some(claim.hash.as_str()) => continue,
                Some(_) => format!(
                    "chain {chain} was rewritten: its event {} is not the one {by} recorded",
                    number(claim.seq)
                ),
                None => {
                    let end: Option<Option<i64>> = event::Entity::find()
                        .select_only()
                        .column(event::Column::ChainSeq)
                        .filter(event::Column::Chain.eq(chain.as_str()))
                        .filter(event::Column::ChainSeq.is_not_null())
                        .order_by_desc(event::Column::ChainSeq)
                        .into_tuple()
                        .one(db)
                        .await
                        .or_db()?;
                    format!(
                        "chain {chain} was cut back to event {}: {by} recorded event {}",
                        number(end.flatten().unwrap_or(0)),
                        number(claim.seq)
                    )
                }
            };
            self.findings.push(LogFinding {
                chain,
                seq: claim.seq,
                what,
            });
        }
        Ok((self.counts, self.findings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_encoding_is_canonical() -> Result<()> {
        let cp = Checkpoint {
            at: 1_796_616_000_000_000,
            chain: "main".into(),
            heads: vec![
                ChainHead {
                    chain: "replica-2".into(),
                    hash: "bb".into(),
                    seq: 612,
                },
                ChainHead {
                    chain: "main".into(),
                    hash: "aa".into(),
                    seq: 4209,
                },
            ],
            v: 1,
        };
        assert_eq!(
            String::from_utf8_lossy(&cp.signed_bytes()?),
            r#"{"at":1796616000000000,"chain":"main","heads":[{"chain":"main","hash":"aa","seq":4209},{"chain":"replica-2","hash":"bb","seq":612}],"v":1}"#
        );
        let sig = CheckpointSignature {
            algorithm: "ES256".into(),
            key_sha256: [7; 32],
            value: vec![1, 2, 3],
        };
        let text = detail(&cp, Some(&sig))?;
        assert_eq!(read_detail(&text), Ok((cp.clone(), Some(sig))));
        let text = detail(&cp, None)?;
        assert!(text.contains("\"signature\":null") && text.contains("receipts.key"));
        assert_eq!(read_detail(&text), Ok((cp, None)));
        assert!(read_detail("nothing").is_err());
        Ok(())
    }

    #[test]
    fn positions_read_with_thousands() {
        assert_eq!(number(4210), "4,210");
        assert_eq!(number(90), "90");
        assert_eq!(number(1_234_567), "1,234,567");
        assert_eq!(number(100_000), "100,000");
    }
}
