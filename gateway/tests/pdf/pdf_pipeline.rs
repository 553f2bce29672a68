//! PDF signatures in the pipeline: a document whose PDF attachment is signed
//! (by pyHanko, an independent signer) reaches its recipient with the
//! verification result in the Delivery; an unsigned or altered one is
//! reported, and under `signatures.pdf = "require"` refused with its reason,
//! logged, and nothing of it kept.

use std::path::PathBuf;
use std::time::Duration;

use lienthong_testkit::*;
use tonic::{Code, Status};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/pdf/pyhanko")
        .join(name)
}

fn options(require: bool) -> GatewayOptions {
    GatewayOptions {
        extra_anchors: vec![fixture("root.pem")],
        extra_config: if require {
            "[signatures]\npdf = \"require\"\n".to_owned()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

/// A minimal PDF without any signature.
fn unsigned_pdf() -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    let objs = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
    ];
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(b"xref\n0 4\n0000000000 65535 f \n");
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size 4 /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes(),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pdf_verification_reaches_the_recipient() {
    let Some(gw) = TestGateway::start_with("pdf_pipeline_report", options(false)).await else {
        return;
    };
    within(Duration::from_secs(120), "the PDF report scenario", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let signed = AttachmentSpec::file(&fixture("two-signatures.pdf"), "application/pdf");
        let altered = AttachmentSpec::file(&fixture("changed-after.pdf"), "application/pdf");
        let plain = AttachmentSpec::bytes("phu-luc.pdf", "application/pdf", unsigned_pdf());
        let note = AttachmentSpec::text("ghi-chu.txt", "không phải PDF");
        let sent = a
            .send_document(
                &[B],
                "Quyết định có chữ ký số",
                &[signed, note, altered, plain],
            )
            .await
            .expect("accepted under the report policy, whatever the PDFs hold");
        let deliveries = b.receive_all(10).await.unwrap();
        let d = deliveries
            .iter()
            .find(|d| {
                d.envelope
                    .as_ref()
                    .is_some_and(|e| e.payload == sent.signed.payload)
            })
            .expect("B received the document");
        let v = d.verification.as_ref().expect("a verification report");
        assert_eq!(
            v.pdf.len(),
            3,
            "one report per PDF attachment, none for the .txt: {v:#?}"
        );

        let main = &v.pdf[0];
        assert_eq!(main.attachment_index, 0);
        assert_eq!(main.verdict, "valid", "{main:#?}");
        assert_eq!(main.revisions, 3);
        assert_eq!(main.signatures.len(), 2);
        let (person, org) = (&main.signatures[0], &main.signatures[1]);
        assert_eq!(person.field, "Signature1");
        assert!(
            person.signer_subject.contains("CN=Nguyễn Văn An"),
            "{person:#?}"
        );
        assert_eq!(person.changes_after, "signatures");
        assert_eq!(person.algorithm, "RSA-SHA256");
        assert_eq!(org.field, "OrgSeal");
        assert_eq!(org.algorithm, "ECDSA-P256-SHA256");
        assert!(person.digest_ok && person.signature_ok && person.chain_ok);
        // No timestamp: the time written in the signature reaches the clerk
        // as the signer's claim, and the certificate was judged when the
        // gateway received the document.
        assert_eq!(person.signing_time, None, "{person:#?}");
        assert_eq!(
            person.claimed_signing_time.as_ref().map(|t| t.seconds),
            Some(1_772_413_200),
            "pyHanko's signer claims 2026-03-02T01:00:00Z: {person:#?}"
        );
        let judged = person.judged_at.as_ref().map(|t| t.seconds).unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now - 300..=now).contains(&judged),
            "judged at the receipt ({judged}), not at the claim: {person:#?}"
        );
        assert_eq!(
            person.trusted_anchor,
            "C=VN, O=Lienthong Test PKI, CN=Lienthong pyHanko Test Root"
        );
        assert_eq!(
            person.revocation, "unknown",
            "no CRL of the pyHanko root is configured"
        );
        assert!(
            main.summary.contains("đã ký số hợp lệ bởi Nguyễn Văn An"),
            "{}",
            main.summary
        );
        // The envelope names another signer: a Decree 30 warning, not a refusal.
        assert!(
            main.warnings
                .iter()
                .any(|w| w.contains("Nguyễn Văn A") && w.contains("envelope")),
            "{:?}",
            main.warnings
        );

        let altered = &v.pdf[1];
        assert_eq!(altered.attachment_index, 2);
        assert_eq!(altered.verdict, "invalid", "{altered:#?}");
        assert_eq!(altered.signatures[0].changes_after, "content");
        assert!(
            altered.reasons.iter().any(|r| r.contains("changed after")),
            "{:?}",
            altered.reasons
        );

        let plain = &v.pdf[2];
        assert_eq!(plain.attachment_index, 3);
        assert_eq!(plain.verdict, "unsigned");
        assert!(plain.signatures.is_empty());
        assert!(
            v.summary.contains("PDF 0 (two-signatures.pdf)"),
            "{}",
            v.summary
        );

        // What a clerk using `lienthong receive` sees, per attachment.
        let out = gw.run_cli(&["receive", "--as", B, "--max", "10"]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|j| j["message_id"] == sent.envelope.message_id)
            .expect("the document in `lienthong receive`");
        let atts = line["attachments"].as_array().expect("attachments");
        assert_eq!(atts[0]["pdf_signatures"]["verdict"], "valid", "{line:#}");
        assert!(
            atts[1].get("pdf_signatures").is_none(),
            "the .txt has no PDF report: {line:#}"
        );
        assert_eq!(atts[2]["pdf_signatures"]["verdict"], "invalid", "{line:#}");
        assert_eq!(atts[3]["pdf_signatures"]["verdict"], "unsigned", "{line:#}");

        // The verdicts are counted.
        let m = http_metrics(&gw).await;
        for verdict in ["valid", "invalid", "unsigned"] {
            assert!(
                m.contains(&format!(
                    "lienthong_pdf_verifications_total{{verdict=\"{verdict}\"}} 1"
                )),
                "metric for {verdict} in:\n{m}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_unsigned_and_altered_documents() {
    let Some(gw) = TestGateway::start_with("pdf_pipeline_require", options(true)).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "the PDF require scenario",
        async {
            let a = gw.agency(A);
            let b = gw.agency(B);

            let cases = [
                (
                    AttachmentSpec::bytes("quyet-dinh.pdf", "application/pdf", unsigned_pdf()),
                    "DOCUMENT_UNSIGNED",
                    "carries no digital signature",
                ),
                (
                    AttachmentSpec::file(&fixture("changed-after.pdf"), "application/pdf"),
                    "DOCUMENT_SIGNATURE_INVALID",
                    "Signature1",
                ),
                (
                    AttachmentSpec::text("quyet-dinh.txt", "không có PDF"),
                    "DOCUMENT_UNSIGNED",
                    "no PDF attachment",
                ),
            ];
            for (att, reason, sentence) in cases {
                let draft = a.draft_document(&[B], "Văn bản phải có chữ ký số", &[att]);
                let err = a
                    .send_draft(&draft)
                    .await
                    .expect_err("refused under require");
                assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
                assert_eq!(reason_of(&err).as_deref(), Some(reason), "{err:?}");
                assert!(err.message().contains(sentence), "{}", err.message());
                assert!(
                    err.message().contains("signatures.pdf"),
                    "the sentence names the rule: {}",
                    err.message()
                );
                let events = gw.trace_json(&draft.envelope.message_id, Some(A)).await;
                assert!(
                    events
                        .iter()
                        .any(|e| e["kind"] == "rejected" && e["reason"] == reason),
                    "a `rejected` line in the transfer log: {events:?}"
                );
                assert!(
                    events.iter().all(|e| e["kind"] == "rejected"),
                    "nothing but the refusal is kept: {events:?}"
                );
            }
            let (blobs, tmp) = gw.storage_files();
            assert!(
                blobs.is_empty() && tmp.is_empty(),
                "no attachment kept: {blobs:?} {tmp:?}"
            );

            // A validly signed one goes through.
            let ok = AttachmentSpec::file(&fixture("rsa-signed.pdf"), "application/pdf");
            a.send_document(&[B], "Văn bản đã ký số", &[ok])
                .await
                .expect("a validly signed PDF is accepted under require");
            let got = b.receive_all(10).await.unwrap();
            assert_eq!(got.len(), 1, "B gets only the signed document");
            let v = got[0].verification.as_ref().unwrap();
            assert_eq!(v.pdf[0].verdict, "valid");
            // Signed by a person only: Decree 30 expects the organisation too.
            assert!(
                v.pdf[0]
                    .warnings
                    .iter()
                    .any(|w| w.contains("no signature of the organisation")),
                "{:?}",
                v.pdf[0].warnings
            );
        },
    )
    .await;
}

/// `err`, the answer to `draft`, is `require`'s refusal:
/// DOCUMENT_SIGNATURE_INVALID and a sentence holding each of `words`; the
/// transfer log has its `rejected` line, and nothing of it (no attachment,
/// no scratch file) is kept.
async fn refused_and_nothing_kept(gw: &TestGateway, draft: &Draft, err: Status, words: &[&str]) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("DOCUMENT_SIGNATURE_INVALID"),
        "{err:?}"
    );
    for w in words {
        assert!(
            err.message().contains(w),
            "the sentence says {w:?}: {}",
            err.message()
        );
    }
    let events = gw.trace_json(&draft.envelope.message_id, Some(A)).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "rejected" && e["reason"] == "DOCUMENT_SIGNATURE_INVALID"),
        "a `rejected` line in the transfer log: {events:?}"
    );
    assert!(
        events.iter().all(|e| e["kind"] == "rejected"),
        "nothing but the refusal is kept: {events:?}"
    );
    let (blobs, tmp) = gw.storage_files();
    assert!(
        blobs.is_empty() && tmp.is_empty(),
        "no attachment kept, no scratch file left: {blobs:?} {tmp:?}"
    );
}

/// The gateway's metrics text (the harness's gateways serve HTTP).
async fn http_metrics(gw: &TestGateway) -> String {
    let addr = gw.http_addr.expect("the test gateway serves HTTP");
    let (status, body) = lienthong_testkit::amqp::http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// A key revoked before the gateway received the document signs it and
/// backdates the signature to before its revocation: the claim proves
/// nothing, so under `require` the document is refused (the sentence says
/// why), logged, and nothing of it is kept. The same key's signature with a
/// trusted timestamp from before the revocation is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_revoked_key_backdating_its_signature() {
    use lienthong_testkit::pdf::{self, SignOptions, TimestampOptions};
    let trust = tempfile::tempdir().expect("temp dir");
    let pki = pdf::test_pki();
    let anchor = pki.write_anchor(trust.path());
    let crl = pki.write_crl(trust.path());
    let opts = GatewayOptions {
        extra_anchors: vec![anchor],
        extra_trust: format!("crls = [{:?}]\n", crl.display().to_string()),
        extra_config: "[signatures]\npdf = \"require\"\n".to_owned(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("pdf_pipeline_backdated", opts).await else {
        return;
    };
    within(
        Duration::from_secs(120),
        "the backdated-signature scenario",
        async {
            let a = gw.agency(A);
            let b = gw.agency(B);
            // Revoked 2026-06-01 on the CRL; signed now, claiming 2026-03-01.
            let mut sign = SignOptions::new(&pki.revoked_later);
            sign.signing_time = time::macros::datetime!(2026-03-01 08:00:00 UTC);
            let backdated = pdf::sign(&pdf::minimal_pdf("Quyet dinh so 15/QD-SNV"), &sign);
            let att = AttachmentSpec::bytes("quyet-dinh.pdf", "application/pdf", backdated);
            let draft = a.draft_document(&[B], "Quyết định ký lùi ngày", &[att]);
            let err = a
                .send_draft(&draft)
                .await
                .expect_err("a backdated signature of a revoked key is refused under require");
            refused_and_nothing_kept(
                &gw,
                &draft,
                err,
                &["revoked on 2026-06-01", "timestamp", "signatures.pdf"],
            )
            .await;
            assert!(b.receive_all(10).await.unwrap().is_empty(), "B got nothing");

            // Timestamped before the revocation: proved, accepted.
            let mut sign = SignOptions::new(&pki.revoked_later);
            sign.timestamp = Some(TimestampOptions {
                tsa: &pki.tsa,
                gen_time: time::macros::datetime!(2026-03-01 08:05:00 UTC),
            });
            let proved = pdf::sign(&pdf::minimal_pdf("Quyet dinh so 16/QD-SNV"), &sign);
            let att = AttachmentSpec::bytes("quyet-dinh.pdf", "application/pdf", proved);
            a.send_document(&[B], "Quyết định có dấu thời gian", &[att])
                .await
                .expect("a signature timestamped before the revocation is accepted");
            let got = b.receive_all(10).await.unwrap();
            assert_eq!(got.len(), 1);
            let v = &got[0].verification.as_ref().unwrap().pdf[0];
            assert_eq!(v.verdict, "valid", "{v:#?}");
            let s = &v.signatures[0];
            assert!(s.timestamped, "{s:#?}");
            assert_eq!(s.revocation, "not_revoked", "{s:#?}");
            let gen_time = 1_772_352_300; // 2026-03-01T08:05:00Z
            assert_eq!(s.signing_time.as_ref().map(|t| t.seconds), Some(gen_time));
            assert_eq!(s.judged_at.as_ref().map(|t| t.seconds), Some(gen_time));
            assert_eq!(
                s.claimed_signing_time.as_ref().map(|t| t.seconds),
                Some(gen_time - 300)
            );
        },
    )
    .await;
}

/// A ZIP bomb (64 MiB of zeros in some 64 KiB) as the document's PDF
/// under `require`: refused with a sentence naming the limit, logged,
/// nothing kept, and the gateway's memory does not grow with what the
/// archive expands to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_zip_bomb_without_memory_growth() {
    let Some(gw) = TestGateway::start_with("pdf_pipeline_zip_bomb", options(true)).await else {
        return;
    };
    within(Duration::from_secs(120), "the ZIP bomb scenario", async {
        let a = gw.agency(A);
        let dir = tempfile::tempdir().expect("temp dir");
        let zip = dir.path().join("quyet-dinh.zip");
        let mut zeros = std::io::Read::take(std::io::repeat(0), 64 << 20);
        let size = lienthong_testkit::pdf::write_zip(&zip, "quyet-dinh.pdf", &mut zeros, None)
            .expect("write the ZIP bomb");
        let before = gw.peak_rss_kib();
        let att = AttachmentSpec::file(&zip, "application/pdf");
        let draft = a.draft_document(&[B], "Quyết định nén", &[att]);
        let err = a
            .send_draft(&draft)
            .await
            .expect_err("a ZIP bomb is not a validly signed PDF");
        let after = gw.peak_rss_kib();
        notice(&format!(
            "a {size}-byte ZIP bomb: the gateway's peak RSS went from {before} to {after} KiB"
        ));
        assert!(
            after.saturating_sub(before) < 32 * 1024,
            "the gateway's peak RSS grew from {before} to {after} KiB checking a ZIP bomb: \
             it must not unpack into memory"
        );
        refused_and_nothing_kept(
            &gw,
            &draft,
            err,
            &[
                "could not be fully checked",
                "pdf_max_zip_ratio",
                "signatures.pdf",
            ],
        )
        .await;
    })
    .await;
}
