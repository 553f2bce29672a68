//! Bad input gets a clear error and loses nothing: each refusal
//! has the gRPC code and `ErrorInfo.reason` of DESIGN.md §4, a sentence, and
//! a `rejected` event in the transfer log; none leaves a message, blob or
//! delivery behind.

use std::sync::Arc;
use std::time::Duration;

use lienthong_testkit::v1::{AttachmentChunk, SendReceipt};
use lienthong_testkit::*;
use prost::bytes::Bytes;
use tonic::{Code, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_reason_and_leaves_nothing_behind() {
    let Some(gw) = TestGateway::start("bad_input", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(400),
        "the bad-input cases",
        bad_input(&gw),
    )
    .await;
}

struct Checker<'a> {
    gw: &'a TestGateway,
    failures: Vec<String>,
    cases: usize,
}

impl Checker<'_> {
    /// Checks one refusal. `message_id`: where to look for the `rejected`
    /// event (`lienthong trace --json`); `None` when the refused bytes have
    /// none (then the events table is counted).
    async fn refused(
        &mut self,
        case: &str,
        result: Result<SendReceipt, Status>,
        code: Code,
        reason: Option<&str>,
        message_id: Option<&str>,
        rejected_before: Option<i64>,
    ) {
        self.cases += 1;
        let mut problems = Vec::new();
        let status = match result {
            Ok(r) => {
                self.failures.push(format!(
                    "{case}: ACCEPTED (receipt {r:?}); expected {code:?} {reason:?}"
                ));
                return;
            }
            Err(s) => s,
        };
        if status.code() != code {
            problems.push(format!("gRPC code {:?}, expected {code:?}", status.code()));
        }
        let got_reason = reason_of(&status);
        if let Some(want) = reason {
            if got_reason.as_deref() != Some(want) {
                problems.push(format!(
                    "ErrorInfo.reason {got_reason:?}, expected {want:?}"
                ));
            }
            if domain_of(&status).as_deref() != Some("lienthong") {
                problems.push(format!(
                    "ErrorInfo.domain {:?}, expected \"lienthong\"",
                    domain_of(&status)
                ));
            }
        }
        let msg = status.message().trim();
        if msg.len() < 10 || !msg.contains(' ') {
            problems.push(format!(
                "message {msg:?} is not a sentence saying what to fix"
            ));
        }
        if let Some(want) = reason {
            if let Some(id) = message_id {
                let events = self.gw.trace_json(id, None).await;
                let ok = events
                    .iter()
                    .any(|e| e["kind"] == "rejected" && e["reason"] == want);
                if !ok {
                    problems.push(format!(
                        "no `rejected` event with reason {want} in `lienthong trace {id} --json`: {events:?}"
                    ));
                }
                let other: Vec<_> = events.iter().filter(|e| e["kind"] != "rejected").collect();
                if !other.is_empty() {
                    problems.push(format!(
                        "events other than `rejected` for a refused message: {other:?}"
                    ));
                }
            } else if let Some(before) = rejected_before {
                let after = rejected_events(self.gw, want).await;
                if after != before + 1 {
                    problems.push(format!(
                        "expected one new `rejected` {want} event in the events table, found {} new",
                        after - before
                    ));
                }
            }
        }
        eprintln!(
            "{case}: {:?} {:?} {:?}{}",
            status.code(),
            got_reason,
            status.message(),
            if problems.is_empty() {
                ""
            } else {
                "  <-- WRONG"
            }
        );
        if !problems.is_empty() {
            self.failures.push(format!(
                "{case}: {}\n    (status: {:?} {:?} {:?})",
                problems.join("; "),
                status.code(),
                got_reason,
                status.message()
            ));
        }
    }
}

/// `rejected` events with `reason` in the gateway's transfer log (SQLite),
/// read directly: for refusals that carry no message_id to trace by.
async fn rejected_events(gw: &TestGateway, reason: &str) -> i64 {
    assert_eq!(gw.backend, Backend::Sqlite);
    let url = format!("{}?mode=ro", gw.db_url);
    let db = Db::connect(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let rows = db
        .rows(&format!(
            "SELECT COUNT(*) AS n FROM events WHERE kind = 'rejected' AND reason = '{reason}'"
        ))
        .await
        .unwrap_or_else(|e| panic!("count rejected events in {url}: {e}"));
    let row = rows.first().expect("a row");
    let n: i64 = row.try_get("n").unwrap();
    db.close().await;
    n
}

fn small(seed: u64) -> AttachmentSpec {
    // Two chunks: a refusal that comes late would already have bytes to store.
    AttachmentSpec::generated(&format!("phu-luc-{seed}.bin"), 100 * 1024, seed)
}

async fn bad_input(gw: &TestGateway) {
    let a = gw.agency(A);
    let b = gw.agency(B);
    let (blobs_before, tmp_before) = gw.storage_files();
    assert!(
        tmp_before.is_empty(),
        "storage tmp/ not empty at start: {tmp_before:?}"
    );
    let mut ck = Checker {
        gw,
        failures: Vec::new(),
        cases: 0,
    };

    // Malformed identifier in `to`.
    let d = a.draft_document(&["000.1137.H35"], "Sai mã định danh", &[small(1)]);
    let r = a.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "malformed identifier in to",
        r,
        Code::InvalidArgument,
        Some("BAD_IDENTIFIER"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // Unknown recipient (well-formed, not in the directory).
    let d = a.draft_document(&["000.00.99.H35"], "Nơi nhận không có", &[small(2)]);
    let r = a.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "unknown recipient",
        r,
        Code::NotFound,
        Some("UNKNOWN_RECIPIENT"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // Unknown sender: a valid certificate from the trusted CA, for an id the
    // directory does not know, calling as that id.
    let dev_ca = pki::Ca::load(&gw.pki_dir.join("ca.pem"), &gw.pki_dir.join("ca.key.pem"));
    let stranger_id = "000.00.77.H35";
    let (stranger_kp, stranger_signer) = pki::fresh_key();
    let stranger_cert = dev_ca.reissue(
        &pki::template_for(stranger_id, "UBND huyện Không Có"),
        &stranger_kp,
        pki::date_time_ymd(2025, 1, 1),
        pki::date_time_ymd(2040, 1, 1),
    );
    let stranger = Agency::new(
        gw.grpc_addr,
        stranger_id,
        Arc::new(stranger_signer),
        vec![stranger_cert],
    );
    let d = stranger.draft_document(&[B], "Người gửi lạ", &[small(3)]);
    let r = stranger.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "unknown sender",
        r,
        Code::FailedPrecondition,
        Some("UNKNOWN_SENDER"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // `from` is A, the caller is B.
    let d = a.draft_document(&[C], "Mạo danh", &[small(4)]);
    let signed = a.sign(&d.envelope);
    let r = a
        .with_caller(Some(B))
        .send_with_attachments(signed, &d.attachments)
        .await;
    ck.refused(
        "from is not the caller",
        r,
        Code::PermissionDenied,
        Some("SENDER_MISMATCH"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // A signature that does not verify.
    let d = a.draft_document(&[B], "Chữ ký hỏng", &[small(5)]);
    let mut signed = a.sign(&d.envelope);
    let mut v = signed.signatures[0].value.to_vec();
    let mid = v.len() / 2;
    v[mid] ^= 0x01;
    signed.signatures[0].value = Bytes::from(v);
    let r = a.send_with_attachments(signed, &d.attachments).await;
    ck.refused(
        "signature does not verify",
        r,
        Code::InvalidArgument,
        Some("BAD_SIGNATURE"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // A's own key, certified by a CA the gateway does not trust.
    let a_key = pki::key_pair_from_pem_file(&gw.pki_dir.join(format!("{A}.key.pem")));
    let rogue = pki::Ca::generate("CA không được tin cậy");
    let rogue_cert = rogue.reissue(
        &a.chain[0],
        &a_key,
        pki::date_time_ymd(2025, 1, 1),
        pki::date_time_ymd(2040, 1, 1),
    );
    let a_rogue = a.with_key(a.signer.clone(), vec![rogue_cert, rogue.cert_der.clone()]);
    let d = a_rogue.draft_document(&[B], "Chứng thư không tin cậy", &[small(6)]);
    let r = a_rogue.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "certificate not chaining to an anchor",
        r,
        Code::FailedPrecondition,
        Some("UNTRUSTED_CERTIFICATE"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // A's own key, certified by the trusted dev CA, but expired in 2021.
    let expired = dev_ca.reissue(
        &a.chain[0],
        &a_key,
        pki::date_time_ymd(2020, 1, 1),
        pki::date_time_ymd(2021, 1, 1),
    );
    let a_expired = a.with_key(a.signer.clone(), vec![expired]);
    let d = a_expired.draft_document(&[B], "Chứng thư hết hạn", &[small(7)]);
    let r = a_expired.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "expired certificate",
        r,
        Code::FailedPrecondition,
        Some("CERTIFICATE_EXPIRED"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // B's valid key and certificate signing an envelope from A.
    let a_with_b_key = a.with_key(b.signer.clone(), b.chain.clone());
    let d = a_with_b_key.draft_document(&[C], "Ký bằng chứng thư của đơn vị khác", &[small(8)]);
    let r = a_with_b_key.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "certificate not bound to the sender",
        r,
        Code::FailedPrecondition,
        Some("CERTIFICATE_NOT_BOUND"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // Attachment bytes that differ from the signed digest (same size).
    let declared = AttachmentSpec::generated("bien-ban.bin", 300 * 1024, 9);
    let other = AttachmentSpec::generated("bien-ban.bin", 300 * 1024, 10);
    let d = a.draft_document(&[B], "Tệp bị sửa", std::slice::from_ref(&declared));
    let r = a.send_with_attachments(a.sign(&d.envelope), &[other]).await;
    ck.refused(
        "attachment digest differs",
        r,
        Code::InvalidArgument,
        Some("DIGEST_MISMATCH"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // More bytes than the signed size (the declared bytes, then 1000 more).
    let longer = AttachmentSpec::generated("bien-ban.bin", 300 * 1024 + 1000, 9);
    let d = a.draft_document(
        &[B],
        "Tệp dài hơn khai báo",
        std::slice::from_ref(&declared),
    );
    let r = a
        .send_with_attachments(a.sign(&d.envelope), &[longer])
        .await;
    ck.refused(
        "attachment size differs",
        r,
        Code::InvalidArgument,
        Some("DIGEST_MISMATCH"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // A stream that ends early: 100 KiB of the 300 KiB declared, then end.
    let shorter = AttachmentSpec::generated("bien-ban.bin", 100 * 1024, 9);
    let d = a.draft_document(&[B], "Luồng bị cắt", std::slice::from_ref(&declared));
    let r = a
        .send_with_attachments(a.sign(&d.envelope), &[shorter])
        .await;
    ck.refused(
        "stream ends early",
        r,
        Code::InvalidArgument,
        Some("MALFORMED"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // An envelope larger than limits.max_envelope_bytes (1 MiB). The gateway
    // may refuse it before decoding it, so its message_id need not be in the
    // log: count the events instead.
    let before = rejected_events(gw, "SIZE_LIMIT").await;
    let mut d = a.draft_document(&[B], "Phong bì quá lớn", &[]);
    d.document_mut().content = "Nội dung rất dài. ".repeat(60_000); // ~1.2 MB
    let r = a.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "envelope larger than max_envelope_bytes",
        r,
        Code::ResourceExhausted,
        Some("SIZE_LIMIT"),
        None,
        Some(before),
    )
    .await;

    // An attachment declared larger than limits.max_attachment_bytes (100 MiB).
    let mut d = a.draft_document(&[B], "Tệp quá lớn", &[small(11)]);
    d.document_mut().attachments[0].size = 104_857_600 + 1;
    let r = a.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "attachment larger than max_attachment_bytes",
        r,
        Code::ResourceExhausted,
        Some("SIZE_LIMIT"),
        Some(&d.envelope.message_id),
        None,
    )
    .await;

    // Garbage instead of a protobuf Envelope (validly signed by A).
    let before = rejected_events(gw, "MALFORMED").await;
    let garbage = Bytes::from_static(
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffthis is not a protobuf Envelope",
    );
    let signed = sign_payload(garbage, &a.signer, &a.chain);
    let r = a
        .send_signed(
            signed,
            vec![AttachmentChunk {
                index: 0,
                data: Bytes::from_static(b"junk"),
            }],
        )
        .await;
    ck.refused(
        "garbage bytes as payload",
        r,
        Code::InvalidArgument,
        Some("MALFORMED"),
        None,
        Some(before),
    )
    .await;

    // No x-organ-id at all.
    let anonymous = a.with_caller(None);
    let d = anonymous.draft_document(&[B], "Không xưng danh", &[small(12)]);
    let r = anonymous.send_draft(&d).await.map(|s| s.receipt);
    ck.refused(
        "missing x-organ-id",
        r,
        Code::Unauthenticated,
        None,
        None,
        None,
    )
    .await;

    // --- nothing left behind --------------------------------------------------
    let inbox_b = b.receive_all(0).await.unwrap();
    if !inbox_b.is_empty() {
        ck.failures.push(format!(
            "B's inbox is not empty after only refused sends: {:?}",
            inbox_b
                .iter()
                .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
                .collect::<Vec<_>>()
        ));
    }
    let inbox_c = gw.agency(C).receive_all(0).await.unwrap();
    if !inbox_c.is_empty() {
        ck.failures.push(format!(
            "C's inbox is not empty after only refused sends: {} deliveries",
            inbox_c.len()
        ));
    }
    let (blobs_after, tmp_after) = gw.storage_files();
    if blobs_after != blobs_before {
        ck.failures.push(format!(
            "refused sends left files in storage.path: before {blobs_before:?}, after {blobs_after:?}"
        ));
    }
    if !tmp_after.is_empty() {
        ck.failures.push(format!(
            "refused sends left partial files in storage tmp/: {tmp_after:?}"
        ));
    }

    let n = ck.cases;
    let failures = std::mem::take(&mut ck.failures);
    assert!(
        failures.is_empty(),
        "{} problem(s) across {n} bad-input cases:\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );

    // --- control: the same gateway accepts a good document -------------------
    let sent = a
        .send_document(&[B], "Văn bản hợp lệ", &[small(13)])
        .await
        .unwrap_or_else(|s| {
            panic!(
                "control: a valid document was refused: {s:?} ({:?})",
                reason_of(&s)
            )
        });
    let inbox_b = b.receive_all(0).await.unwrap();
    assert_eq!(
        inbox_b.len(),
        1,
        "control: B should have the valid document"
    );
    assert_eq!(
        decode_envelope(inbox_b[0].envelope.as_ref().unwrap()).message_id,
        sent.message_id()
    );
    let (blobs_final, tmp_final) = gw.storage_files();
    assert!(
        blobs_final.len() > blobs_before.len(),
        "control: an accepted attachment left no file in storage.path (the 'nothing left behind' check counts the wrong place?)"
    );
    assert!(
        tmp_final.is_empty(),
        "storage tmp/ not empty after an accepted send: {tmp_final:?}"
    );
}
