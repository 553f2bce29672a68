//! Checkpoints: two chains, each recording the other's head under the
//! gateway's receipt key, and what `log verify` makes of a chain deleted
//! whole, a tail cut with its head row rewritten to match, a checkpoint
//! recomputed with every hash after it, and its signature stripped.

use super::*;
use lienthong_pki::devpki::{DevCa, KeyType};
use lienthong_pki::receipts::{DetachedSignature, ReceiptSigner, ReceiptSigners};
use lienthong_pki::signing::SigningKey;

const SECOND: &str = "gw-2";

struct Key(ReceiptSigner);

impl CheckpointSigner for Key {
    fn sign(&self, signed_bytes: &[u8]) -> Result<CheckpointSignature> {
        let d = self
            .0
            .sign_detached(CHECKPOINT_PAYLOAD_TYPE, signed_bytes)?;
        Ok(CheckpointSignature {
            algorithm: d.algorithm,
            key_sha256: d.key_sha256,
            value: d.value,
        })
    }
}

struct Certs(ReceiptSigners);

impl CheckpointVerifier for Certs {
    fn verify(&self, signed_bytes: &[u8], sig: &CheckpointSignature) -> Result<()> {
        let d = DetachedSignature {
            algorithm: sig.algorithm.clone(),
            key_sha256: sig.key_sha256,
            value: sig.value.clone(),
        };
        self.0
            .verify_detached(CHECKPOINT_PAYLOAD_TYPE, signed_bytes, &d)
            .map(|_| ())
    }
}

fn receipt_key() -> Result<(Key, Certs)> {
    let ca = DevCa::generate("Checkpoint Test CA", KeyType::EcP256)?;
    let now = time::OffsetDateTime::now_utc();
    let issued = ca.issue_signing(
        "000.00.00.H35",
        "Cổng liên thông tỉnh",
        KeyType::EcP256,
        (
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        ),
    )?;
    let mut pins = ReceiptSigners::default();
    pins.add_der(&issued.chain_der[0])?;
    let key = SigningKey::from_pkcs8_pem(&issued.key_pem, None)?;
    Ok((Key(ReceiptSigner::new(key, issued.chain_der)), Certs(pins)))
}

fn line(detail: &str) -> NewEvent {
    NewEvent {
        kind: EventKind::DirectoryChanged,
        sender: "A".into(),
        message_id: String::new(),
        recipient: None,
        reason: None,
        detail: detail.into(),
        actor: Some("cli:test".into()),
        transport: "cli".into(),
    }
}

/// `main` and `gw-2` on one database, three rounds of five lines each
/// and a checkpoint each (signed with `key` when given): 18 events a chain,
/// checkpoints at 6, 12 and 18.
async fn two_chains(key: Option<&Key>) -> Result<(tempfile::TempDir, Store, Store)> {
    let (dir, a) = store().await?;
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let b = Store::connect(&url, WriterId::new(SECOND)?).await?;
    let key = key.map(|k| k as &dyn CheckpointSigner);
    for round in 0..3 {
        for i in 0..5 {
            a.log(line(&format!("main {round}.{i}"))).await?;
            b.log(line(&format!("second {round}.{i}"))).await?;
        }
        let cp = a.write_checkpoint(key).await?;
        assert_eq!(cp.chain, MAIN_CHAIN);
        b.write_checkpoint(key).await?;
    }
    Ok((dir, a, b))
}

/// Every hash of `chain` recomputed from its first event, and its head row
/// set to match: what someone who can write to the database can do.
async fn rehash(s: &Store, chain: &str) -> Result<()> {
    let events = event::Entity::find()
        .filter(event::Column::Chain.eq(chain))
        .order_by_asc(event::Column::ChainSeq)
        .all(&s.db)
        .await
        .or_db()?;
    let mut prev = chain_genesis(chain);
    let mut seq = 0;
    for e in events {
        seq = e.chain_seq.unwrap_or_default();
        let hash = chain_hash(
            &prev,
            seq,
            e.at,
            &e.kind,
            &e.sender,
            &e.message_id,
            e.recipient.as_deref(),
            e.reason.as_deref(),
            &e.detail,
            e.actor.as_deref(),
            &e.transport,
        );
        event::Entity::update_many()
            .col_expr(event::Column::PrevHash, Expr::value(prev.clone()))
            .col_expr(event::Column::Hash, Expr::value(hash.clone()))
            .filter(event::Column::Id.eq(e.id))
            .exec(&s.db)
            .await
            .or_db()?;
        prev = hash;
    }
    log_head::Entity::update_many()
        .col_expr(log_head::Column::Seq, Expr::value(seq))
        .col_expr(log_head::Column::Hash, Expr::value(prev))
        .filter(log_head::Column::Chain.eq(chain))
        .exec(&s.db)
        .await
        .or_db()?;
    Ok(())
}

/// The detail of the checkpoint at `seq` of `chain`.
async fn detail_at(s: &Store, chain: &str, seq: i64) -> Result<String> {
    let e = event::Entity::find()
        .filter(event::Column::Chain.eq(chain))
        .filter(event::Column::ChainSeq.eq(seq))
        .one(&s.db)
        .await
        .or_db()?
        .ok_or_else(|| Error::malformed("no such event"))?;
    assert_eq!(e.kind, "checkpoint");
    Ok(e.detail)
}

async fn set_detail(s: &Store, chain: &str, seq: i64, detail: &str) -> Result<()> {
    event::Entity::update_many()
        .col_expr(event::Column::Detail, Expr::value(detail))
        .filter(event::Column::Chain.eq(chain))
        .filter(event::Column::ChainSeq.eq(seq))
        .exec(&s.db)
        .await
        .or_db()?;
    Ok(())
}

/// The findings, `n` of them, with every chain intact on its own.
fn findings(v: &LogVerification, n: usize) -> &[LogFinding] {
    assert!(
        v.chains.iter().all(|c| c.first_broken.is_none()),
        "each chain alone verifies: {v:?}"
    );
    assert!(!v.intact(), "{v:?}");
    assert_eq!(v.findings.len(), n, "{v:?}");
    &v.findings
}

fn only_finding(v: &LogVerification) -> &LogFinding {
    &findings(v, 1)[0]
}

/// A rewrite of gw-2 from before event 17 is also seen by main's last
/// checkpoint, which recorded gw-2 at 17.
fn rewritten_seen_by_main(f: &LogFinding) {
    assert_eq!((f.chain.as_str(), f.seq), (SECOND, 17), "{f:?}");
    assert!(
        f.what.starts_with(
            "chain gw-2 was rewritten: its event 17 is not the one checkpoint 18 of chain main ("
        ),
        "{}",
        f.what
    );
}

#[tokio::test]
async fn checkpoints_of_an_untouched_log_verify() -> Result<()> {
    let (key, certs) = receipt_key()?;
    let (_dir, a, b) = two_chains(Some(&key)).await?;
    let v = a.verify_log_with(Some(&certs)).await?;
    assert!(v.intact(), "{v:?}");
    assert_eq!(v.first_broken(), None);
    assert_eq!(
        v.checkpoints,
        CheckpointCounts {
            read: 6,
            verified: 6,
            unsigned: 0,
            unchecked: 0,
        }
    );
    assert_eq!(v.checked(), 36);
    // Without the certificates, the signatures are counted, not checked.
    let v = b.verify_log().await?;
    assert!(v.intact(), "{v:?}");
    assert_eq!((v.checkpoints.read, v.checkpoints.unchecked), (6, 6));

    // Each records every head: its own as it stood before it, the other's
    // as its row stood.
    let text = detail_at(&b, SECOND, 18).await?;
    assert!(text.contains(r#""chain":"gw-2","hash":"#), "{text}");
    assert!(
        text.contains(r#""seq":17"#) && text.contains(r#""seq":18"#),
        "{text}"
    );
    assert!(text.contains(r#""signature":{"alg":"ES256""#), "{text}");

    // Written while the other chain's committer appends, a checkpoint is
    // one more link of its chain.
    a.accept(new_message("A", "after", &["B"])).await?;
    a.write_checkpoint(Some(&key)).await?;
    a.accept(new_message("A", "after-2", &["B"])).await?;
    assert!(a.verify_log_with(Some(&certs)).await?.intact());
    Ok(())
}

#[tokio::test]
async fn a_chain_deleted_whole_is_named_missing() -> Result<()> {
    let (key, certs) = receipt_key()?;
    let (_dir, a, _b) = two_chains(Some(&key)).await?;
    a.execute_sql(&format!(
        "DELETE FROM events WHERE chain = '{SECOND}'; DELETE FROM log_head WHERE chain = '{SECOND}'"
    ))
    .await?;
    let v = a.verify_log_with(Some(&certs)).await?;
    assert_eq!(v.chains.len(), 1, "{v:?}");
    let f = only_finding(&v);
    // main's last checkpoint (event 18) recorded gw-2 at event 17: the
    // checkpoint of gw-2 at 18 came after it.
    assert_eq!((f.chain.as_str(), f.seq), (SECOND, 17), "{f:?}");
    assert!(
        f.what
            .starts_with("chain gw-2 is missing: checkpoint 18 of chain main (20")
            && f.what.ends_with(") recorded it at event 17"),
        "{}",
        f.what
    );
    assert_eq!(v.first_broken(), Some((SECOND, 17, f.what.as_str())));
    Ok(())
}

#[tokio::test]
async fn a_tail_cut_with_its_head_rewritten_is_named() -> Result<()> {
    let (key, certs) = receipt_key()?;
    let (_dir, a, _b) = two_chains(Some(&key)).await?;
    a.execute_sql(&format!(
        "DELETE FROM events WHERE chain = '{MAIN_CHAIN}' AND chain_seq > 9; \
         UPDATE log_head SET seq = 9, hash = (SELECT hash FROM events WHERE chain = '{MAIN_CHAIN}' AND chain_seq = 9) \
         WHERE chain = '{MAIN_CHAIN}'"
    ))
    .await?;
    // main alone verifies: that is the hole.
    let v = a.verify_log_with(Some(&certs)).await?;
    let f = only_finding(&v);
    // gw-2's checkpoint at 18 recorded main at 18, its last.
    assert_eq!((f.chain.as_str(), f.seq), (MAIN_CHAIN, 18), "{f:?}");
    assert!(
        f.what
            .starts_with("chain main was cut back to event 9: checkpoint 18 of chain gw-2 (")
            && f.what.ends_with(") recorded event 18"),
        "{}",
        f.what
    );

    // The replica writes on from the cut: the positions come back, not the
    // events recorded.
    a.execute_sql(&format!(
        "DELETE FROM events WHERE chain = '{SECOND}' AND chain_seq > 12; \
         UPDATE log_head SET seq = 12, hash = (SELECT hash FROM events WHERE chain = '{SECOND}' AND chain_seq = 12) \
         WHERE chain = '{SECOND}'"
    ))
    .await?;
    for i in 0..12 {
        a.log(line(&format!("written again {i}"))).await?;
    }
    let v = a.verify_log_with(Some(&certs)).await?;
    let f = only_finding(&v);
    assert_eq!((f.chain.as_str(), f.seq), (MAIN_CHAIN, 12), "{f:?}");
    assert!(
        f.what.starts_with(
            "chain main was rewritten: its event 12 is not the one checkpoint 12 of chain gw-2 ("
        ),
        "{}",
        f.what
    );
    Ok(())
}

#[tokio::test]
async fn a_checkpoint_recomputed_with_every_hash_after_it_fails_its_signature() -> Result<()> {
    let (key, certs) = receipt_key()?;
    let (_dir, a, _b) = two_chains(Some(&key)).await?;
    // gw-2's checkpoint at 12 no longer records main: whoever cuts main
    // later hopes to leave no witness.
    let text = detail_at(&a, SECOND, 12).await?;
    let mut d: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::malformed(e.to_string()))?;
    let heads = d["checkpoint"]["heads"]
        .as_array_mut()
        .ok_or_else(|| Error::malformed("no heads"))?;
    heads.retain(|h| h["chain"] != MAIN_CHAIN);
    set_detail(&a, SECOND, 12, &d.to_string()).await?;
    rehash(&a, SECOND).await?;

    let v = a.verify_log_with(Some(&certs)).await?;
    let both = findings(&v, 2);
    rewritten_seen_by_main(&both[1]);
    let f = &both[0];
    assert_eq!((f.chain.as_str(), f.seq), (SECOND, 12), "{f:?}");
    assert!(
        f.what
            .starts_with("the signature of checkpoint 12 of chain gw-2 (")
            && f.what.contains("does not hold")
            && f.what.contains("does not verify"),
        "{}",
        f.what
    );
    assert_eq!(v.checkpoints.verified, 5, "{v:?}");

    // The signature stripped instead: unsigned after signed ones.
    d["signature"] = serde_json::Value::Null;
    set_detail(&a, SECOND, 12, &d.to_string()).await?;
    rehash(&a, SECOND).await?;
    let v = a.verify_log_with(Some(&certs)).await?;
    let both = findings(&v, 2);
    rewritten_seen_by_main(&both[1]);
    let f = &both[0];
    assert_eq!((f.chain.as_str(), f.seq), (SECOND, 12), "{f:?}");
    assert!(
        f.what
            .contains("is unsigned, though checkpoint 6 of the same chain was signed"),
        "{}",
        f.what
    );

    // Signed by another key: not the gateway's.
    let (other, _) = receipt_key()?;
    let (_dir, a, _b) = two_chains(Some(&other)).await?;
    let v = a.verify_log_with(Some(&certs)).await?;
    assert!(!v.intact());
    assert_eq!(v.findings.len(), 2, "one per chain: {v:?}");
    assert!(
        v.findings[0]
            .what
            .contains("not one of the gateway's receipt certificates"),
        "{v:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unsigned_checkpoints_still_witness_each_other() -> Result<()> {
    let (_dir, a, _b) = two_chains(None).await?;
    let text = detail_at(&a, MAIN_CHAIN, 6).await?;
    assert!(
        text.contains("\"signature\":null") && text.contains("receipts.key"),
        "{text}"
    );
    let v = a.verify_log().await?;
    assert!(v.intact(), "{v:?}");
    assert_eq!((v.checkpoints.read, v.checkpoints.unsigned), (6, 6));

    // A checkpoint moved into another chain, re-chained there.
    let moved = detail_at(&a, MAIN_CHAIN, 12).await?;
    set_detail(&a, SECOND, 12, &moved).await?;
    rehash(&a, SECOND).await?;
    let v = a.verify_log().await?;
    let both = findings(&v, 2);
    rewritten_seen_by_main(&both[1]);
    let f = &both[0];
    assert_eq!((f.chain.as_str(), f.seq), (SECOND, 12), "{f:?}");
    assert!(
        f.what
            .contains("was not written where it stands: it says it was written in chain main"),
        "{}",
        f.what
    );
    Ok(())
}
