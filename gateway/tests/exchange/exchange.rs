//! The core exchange, end to end: A sends a signed document with a small
//! text attachment and a 50 MB one to B and C; both receive and verify it
//! byte for byte; B acknowledges and answers with status 03; A receives the
//! status; the transfer log shows every step; repeats and conflicts are
//! answered as the contract says; the gateway's memory stays bounded.

use std::sync::Arc;
use std::time::Duration;

use lienthong_testkit::v1::{Delivery, envelope};
use lienthong_testkit::*;
use tonic::Code;

const BIG: u64 = 50 * 1024 * 1024;
/// "under 100 MB" of resident memory, in KiB (100 MiB).
const RSS_LIMIT_KIB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_sqlite() {
    let Some(gw) = TestGateway::start("exchange_sqlite", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(600),
        "the exchange scenario",
        exchange(&gw),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_postgres() {
    let Some(gw) = TestGateway::start("exchange_postgres", Backend::Postgres).await else {
        return;
    };
    within(
        Duration::from_secs(600),
        "the exchange scenario",
        exchange(&gw),
    )
    .await;
}

/// The same scenario with mutual TLS: every agency's software connects with
/// its own client certificate and sends no identity header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_sqlite_mtls() {
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("exchange_sqlite_mtls", opts).await else {
        return;
    };
    within(
        Duration::from_secs(600),
        "the exchange scenario over mutual TLS",
        exchange(&gw),
    )
    .await;
}

/// The same scenario with a PKI the gateway did not make: OpenSSL's command
/// line (`tests/openssl-pki.sh`: root CA → intermediate CA → leaves, RSA-2048
/// and EC P-256 keys, Vietnamese names), for signing and for mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_sqlite_mtls_openssl() {
    let name = "exchange_sqlite_mtls_openssl";
    let Some(pki) = openssl_pki(name) else {
        return;
    };
    let opts = GatewayOptions {
        mtls: true,
        pki: Some(pki.path().to_path_buf()),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with(name, opts).await else {
        return;
    };
    within(
        Duration::from_secs(600),
        "the exchange scenario over mutual TLS with OpenSSL's certificates",
        exchange(&gw),
    )
    .await;
    within(
        Duration::from_secs(120),
        "the OpenSSL chain checks",
        intermediate_chains(&gw),
    )
    .await;
}

/// Signing certificates issued through an intermediate: the signer sends
/// the leaf and the intermediate (`Signature.certificates`, leaf first), the
/// gateway builds the chain to the root and says so in the delivery's
/// `Verification`; the leaf alone does not chain, since only the root is a
/// trust anchor.
async fn intermediate_chains(gw: &TestGateway) {
    let subject_cn = |der: &[u8]| -> String {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        c.subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect()
    };
    let intermediate = pki::load_cert_der(&gw.pki_dir.join("intermediate.pem"));
    let intermediate_cn = subject_cn(&intermediate);
    let root_cn = subject_cn(&pki::load_cert_der(&gw.pki_dir.join("ca.pem")));
    let a = gw.agency(A);
    let b = gw.agency(B);
    assert_eq!(
        a.chain.len(),
        2,
        "A signs with the leaf and the intermediate of {A}.pem"
    );
    assert_eq!(a.chain[1], intermediate, "A's second certificate");
    // Both key types of the OpenSSL PKI sign.
    assert_eq!(a.signer.algorithm(), "RS256", "A's key is RSA-2048");
    assert_eq!(b.signer.algorithm(), "ES256", "B's key is EC P-256");

    let sent = a
        .send_document(&[B], "Công văn ký bằng chứng thư do OpenSSL cấp", &[])
        .await
        .unwrap_or_else(|s| {
            panic!(
                "A's Send with an OpenSSL leaf and intermediate was refused: {s:?} (reason {:?})",
                reason_of(&s)
            )
        });
    assert_eq!(sent.signed.signatures[0].certificates.len(), 2);
    let got = b.receive_all(0).await.unwrap();
    let d = got
        .iter()
        .find(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id == sent.message_id())
        .unwrap_or_else(|| panic!("B did not receive {}", sent.message_id()));
    let v = d
        .verification
        .as_ref()
        .expect("delivery without Verification");
    let s = v
        .signatures
        .first()
        .unwrap_or_else(|| panic!("Verification without signatures: {v:?}"));
    assert!(
        s.valid && s.bound_to == A && s.algorithm == "RS256",
        "{s:?}"
    );
    assert!(
        s.signer_subject
            .contains("Văn phòng Ủy ban nhân dân tỉnh Lai Châu"),
        "SignatureCheck.signer_subject should name A in Vietnamese: {s:?}"
    );
    assert_eq!(
        s.chain.len(),
        2,
        "SignatureCheck.chain should be the intermediate, then the root: {s:?}"
    );
    assert!(
        s.chain[0].contains(&intermediate_cn) && s.chain[1].contains(&root_cn),
        "SignatureCheck.chain should be [{intermediate_cn}, {root_cn}]: {s:?}"
    );
    assert!(
        s.trust_anchor.contains(&root_cn),
        "SignatureCheck.trust_anchor should be the root ({root_cn}): {s:?}"
    );
    b.ack(&d.delivery_id).await.unwrap();

    let leaf_only = a.with_key(Arc::clone(&a.signer), vec![a.chain[0].clone()]);
    let err = leaf_only
        .send_document(&[B], "Công văn thiếu chứng thư trung gian", &[])
        .await
        .expect_err("a leaf without its intermediate was accepted");
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("UNTRUSTED_CERTIFICATE"),
        "{err:?}"
    );
    assert!(
        b.receive_all(0).await.unwrap().is_empty(),
        "the refused Send reached B"
    );
}

fn check_delivery(who: &str, d: &Delivery, sent: &Sent, attempt: u32) {
    let env = d
        .envelope
        .as_ref()
        .unwrap_or_else(|| panic!("{who}: delivery without an envelope"));
    assert_eq!(
        env.payload, sent.signed.payload,
        "{who}: the delivered payload differs from the bytes A signed"
    );
    assert_eq!(
        env.payload_type, sent.signed.payload_type,
        "{who}: payload_type"
    );
    assert_eq!(
        env.signatures, sent.signed.signatures,
        "{who}: the delivered signatures differ from A's"
    );
    assert_eq!(
        decode_envelope(env),
        sent.envelope,
        "{who}: decoded envelope"
    );
    verify_signed(env)
        .unwrap_or_else(|e| panic!("{who}: the delivered envelope does not verify: {e}"));
    assert_eq!(d.attempt, attempt, "{who}: Delivery.attempt");
    assert!(!d.delivery_id.is_empty(), "{who}: empty delivery_id");
    assert_eq!(
        d.accepted_at, sent.receipt.accepted_at,
        "{who}: Delivery.accepted_at differs from the receipt's accepted_at"
    );
    let v = d
        .verification
        .as_ref()
        .unwrap_or_else(|| panic!("{who}: delivery without Verification"));
    assert!(
        v.attachments_verified,
        "{who}: Verification.attachments_verified is false: {v:?}"
    );
    assert!(
        v.signatures.iter().any(|s| s.valid
            && s.bound_to == A
            && s.algorithm == sent.signed.signatures[0].algorithm),
        "{who}: Verification does not say a valid signature bound to {A} was checked: {v:?}"
    );
    let s = v.signatures.iter().find(|s| s.valid).unwrap();
    let (_, cert) =
        x509_parser::parse_x509_certificate(&sent.signed.signatures[0].certificates[0]).unwrap();
    let spki = hex::encode(sha256(cert.public_key().raw));
    assert_eq!(
        s.spki_sha256.to_lowercase(),
        spki,
        "{who}: SignatureCheck.spki_sha256 is not the SHA-256 of A's SubjectPublicKeyInfo"
    );
    assert!(
        !v.summary.trim().is_empty(),
        "{who}: Verification.summary is empty"
    );
}

async fn check_attachments(who: &str, agency: &Agency, sent: &Sent) {
    for (i, spec) in sent.attachments.iter().enumerate() {
        let want = spec.digest();
        let got = within(
            Duration::from_secs(180),
            &format!("{who}: FetchAttachment #{i}"),
            agency.fetch_attachment_sha256(sent.message_id(), A, i as u32),
        )
        .await
        .unwrap_or_else(|s| {
            panic!(
                "{who}: FetchAttachment({}, {A}, {i}): {s:?}",
                sent.message_id()
            )
        });
        assert_eq!(
            got.0, want.0,
            "{who}: attachment #{i} ({}) size: got {} bytes, sent {}",
            spec.name, got.0, want.0
        );
        assert_eq!(
            hex::encode(got.1),
            hex::encode(want.1),
            "{who}: attachment #{i} ({}) SHA-256 differs from what A sent",
            spec.name
        );
    }
}

async fn exchange(gw: &TestGateway) {
    let a = gw.agency(A);
    let b = gw.agency(B);
    let c = gw.agency(C);

    // A small text file, read from disk, and 50 MB generated while streaming.
    let note = gw.dir.join("to-trinh.txt");
    std::fs::write(
        &note,
        "Tờ trình về việc triển khai liên thông văn bản điện tử tỉnh Lai Châu.\n".repeat(40),
    )
    .unwrap();
    let attachments = [
        AttachmentSpec::file(&note, "text/plain; charset=utf-8"),
        AttachmentSpec::generated("ho-so-50MB.bin", BIG, 0x5EED),
    ];

    // --- A sends to B and C ----------------------------------------------
    let sent = a
        .send_document(
            &[B, C],
            "Về việc thử nghiệm liên thông văn bản",
            &attachments,
        )
        .await
        .unwrap_or_else(|s| panic!("A's Send was refused: {s:?} (reason {:?})", reason_of(&s)));
    let r = &sent.receipt;
    assert_eq!(r.message_id, sent.message_id(), "receipt.message_id");
    assert_eq!(r.from, A, "receipt.from");
    assert!(!r.duplicate, "first Send answered as a duplicate");
    assert!(r.accepted_at.is_some(), "receipt without accepted_at");
    assert_eq!(
        hex::encode(&r.envelope_sha256),
        hex::encode(sha256(&prost::Message::encode_to_vec(&sent.signed))),
        "receipt.envelope_sha256 is not the SHA-256 of the SignedEnvelope A sent"
    );
    let mut routed: Vec<_> = r
        .recipients
        .iter()
        .map(|x| (x.organ_id.as_str(), x.route.as_str()))
        .collect();
    routed.sort();
    assert_eq!(
        routed,
        vec![(B, "local"), (C, "local")],
        "receipt.recipients"
    );
    assert_eq!(
        r.gateway, "lienthong-test",
        "receipt.gateway (the configured gateway.id)"
    );

    // --- B and C receive and verify ---------------------------------------
    let mut first_ids = Vec::new();
    for (who, agency) in [("B", &b), ("C", &c)] {
        let got = agency
            .receive_all(0)
            .await
            .unwrap_or_else(|s| panic!("{who}: Receive: {s:?}"));
        assert_eq!(
            got.len(),
            1,
            "{who}: expected exactly one delivery, got {}: {:?}",
            got.len(),
            got.iter().map(|d| &d.delivery_id).collect::<Vec<_>>()
        );
        check_delivery(who, &got[0], &sent, 1);
        check_attachments(who, agency, &sent).await;
        first_ids.push(got[0].delivery_id.clone());
    }
    let peak = gw.peak_rss_kib();
    assert!(
        peak < RSS_LIMIT_KIB,
        "the gateway's peak resident memory (VmHWM) reached {peak} KiB while a 50 MB attachment \
         was sent and fetched twice; the limit is {RSS_LIMIT_KIB} KiB"
    );
    eprintln!("peak RSS after the 50 MB transfer: {peak} KiB");

    // --- B acks; redelivery only for C -------------------------------------
    b.ack(&first_ids[0])
        .await
        .unwrap_or_else(|s| panic!("B: Ack: {s:?}"));
    let again_b = b.receive_all(0).await.unwrap();
    assert!(
        again_b.is_empty(),
        "B acknowledged its delivery, yet Receive gives it again: {:?}",
        again_b
            .iter()
            .map(|d| (&d.delivery_id, d.attempt))
            .collect::<Vec<_>>()
    );
    let again_c = c.receive_all(0).await.unwrap();
    assert_eq!(
        again_c.len(),
        1,
        "C did not acknowledge: its delivery must come again"
    );
    assert_eq!(
        again_c[0].delivery_id, first_ids[1],
        "C: redelivery has another delivery_id"
    );
    check_delivery("C (again)", &again_c[0], &sent, 2);
    // Acking someone else's delivery must not work.
    let err = a.ack(&first_ids[1]).await;
    assert!(err.is_err(), "A acknowledged C's delivery");
    assert_eq!(
        c.receive_all(0).await.unwrap().len(),
        1,
        "A's Ack removed C's delivery"
    );

    // --- B answers with status 03; A receives it ---------------------------
    let doc_id = sent.document().document_id.clone();
    let status = b.send_status(A, &doc_id, "03").await.unwrap_or_else(|s| {
        panic!(
            "B's status 03 was refused: {s:?} (reason {:?})",
            reason_of(&s)
        )
    });
    assert!(!status.receipt.duplicate);
    let inbox_a = a.receive_all(0).await.unwrap();
    assert_eq!(
        inbox_a.len(),
        1,
        "A should have exactly the status in its inbox"
    );
    let st_env = decode_envelope(inbox_a[0].envelope.as_ref().unwrap());
    assert_eq!(
        st_env, status.envelope,
        "A: the status envelope differs from what B sent"
    );
    match &st_env.body {
        Some(envelope::Body::Status(s)) => {
            assert_eq!(s.code, "03");
            assert_eq!(s.document_id, doc_id);
            assert_eq!(s.document_from, A);
        }
        other => panic!("A: expected a StatusNotice, got {other:?}"),
    }
    assert!(
        inbox_a[0]
            .verification
            .as_ref()
            .is_some_and(|v| v.signatures.iter().any(|s| s.valid && s.bound_to == B)),
        "A: the status' Verification does not name a valid signature bound to B: {:?}",
        inbox_a[0].verification
    );
    a.ack(&inbox_a[0].delivery_id).await.unwrap();
    assert!(
        a.receive_all(0).await.unwrap().is_empty(),
        "A's inbox after Ack"
    );

    // --- Trace (as A) ------------------------------------------------------
    let events = a
        .trace(sent.message_id(), A)
        .await
        .unwrap_or_else(|s| panic!("A: Trace: {s:?}"));
    let listing = format_events(&events);
    let has = |kind: &str, to: &str| {
        events.iter().any(|e| {
            e.kind == kind && e.message_id == sent.message_id() && (to.is_empty() || e.to == to)
        })
    };
    let count = |kind: &str| {
        events
            .iter()
            .filter(|e| e.kind == kind && e.message_id == sent.message_id())
            .count()
    };
    assert_eq!(
        count("accepted"),
        1,
        "Trace: one `accepted` event expected:\n{listing}"
    );
    assert!(
        has("routed", B) && has("routed", C),
        "Trace: `routed` to B and to C expected:\n{listing}"
    );
    assert!(
        has("delivered", B) && has("delivered", C),
        "Trace: `delivered` to B and C expected:\n{listing}"
    );
    assert!(
        has("acknowledged", B),
        "Trace: `acknowledged` by B expected:\n{listing}"
    );
    assert!(
        !has("acknowledged", C),
        "Trace: C never acknowledged:\n{listing}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "status_received" && e.reason == "03"),
        "Trace: the status 03 (`status_received`, reason 03) is missing:\n{listing}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.message_id == status.message_id() && e.kind == "accepted"),
        "Trace: the status message's own `accepted` event is missing:\n{listing}"
    );
    for w in events.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "Trace: events not in seq order:\n{listing}"
        );
        let (t0, t1) = (w[0].at.unwrap_or_default(), w[1].at.unwrap_or_default());
        assert!(
            (t0.seconds, t0.nanos) <= (t1.seconds, t1.nanos),
            "Trace: event times go backwards:\n{listing}"
        );
    }
    // The operator's view says the same.
    let cli = gw.trace_json(sent.message_id(), Some(A)).await;
    for kind in ["accepted", "routed", "delivered", "acknowledged"] {
        assert!(
            cli.iter().any(|e| e["kind"] == kind),
            "`lienthong trace --json` lacks `{kind}`: {cli:#?}"
        );
    }

    // --- A repeats the Send: the first receipt comes back --------------------
    let repeat = a
        .send_with_attachments(sent.signed.clone(), &sent.attachments)
        .await
        .unwrap_or_else(|s| {
            panic!(
                "a repeat of an accepted Send was refused: {s:?} ({:?})",
                reason_of(&s)
            )
        });
    assert!(
        repeat.duplicate,
        "a repeat of an accepted Send must say duplicate = true"
    );
    assert_eq!(repeat.message_id, sent.receipt.message_id);
    assert_eq!(
        repeat.accepted_at, sent.receipt.accepted_at,
        "a repeat must return the first receipt (same accepted_at)"
    );
    assert_eq!(repeat.envelope_sha256, sent.receipt.envelope_sha256);
    let c_inbox = c.receive_all(0).await.unwrap();
    assert_eq!(
        c_inbox.len(),
        1,
        "after A's repeat C must still have one delivery, got {}",
        c_inbox.len()
    );
    assert!(
        b.receive_all(0).await.unwrap().is_empty(),
        "A's repeat was delivered to B again"
    );

    // --- Same message_id, other bytes: DUPLICATE_CONFLICT --------------------
    let mut other = a.draft_document(&[B, C], "Nội dung khác", &attachments[..1]);
    other.envelope.message_id = sent.message_id().to_string();
    let err = a
        .send_draft(&other)
        .await
        .expect_err("the same message_id with other bytes was accepted");
    assert_eq!(
        err.code(),
        Code::AlreadyExists,
        "conflict: gRPC code ({err:?})"
    );
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("DUPLICATE_CONFLICT"),
        "conflict: reason ({err:?})"
    );
    assert_eq!(
        domain_of(&err).as_deref(),
        Some("lienthong"),
        "ErrorInfo.domain"
    );
    assert!(
        err.message().trim().len() > 10,
        "conflict: the message is not a sentence: {err:?}"
    );
    assert!(
        b.receive_all(0).await.unwrap().is_empty(),
        "the conflicting Send reached B"
    );

    let peak = gw.peak_rss_kib();
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak resident memory (VmHWM) {peak} KiB after the repeat; limit {RSS_LIMIT_KIB} KiB"
    );
}
