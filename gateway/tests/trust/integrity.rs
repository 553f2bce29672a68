//! Tamper evidence: a blob edited on disk is caught when it is fetched
//! (DIGEST_MISMATCH, and an `integrity_failed` line in the transfer log), and
//! a transfer-log row edited in the database is named by `lienthong log
//! verify`.

use std::time::Duration;

use lienthong_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_a_blob_or_the_log_is_found() {
    let Some(gw) = TestGateway::start("integrity", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(120), "tamper evidence", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let text = "Nội dung gốc của công văn, không được sửa.";
        let sent = a
            .send_document(&[B], "Công văn", &[AttachmentSpec::text("cv.txt", text)])
            .await
            .unwrap();
        let id = sent.message_id().to_string();
        assert!(b.fetch_attachment_sha256(&id, A, 0).await.is_ok());

        // Someone with disk access edits the stored bytes.
        let (blobs, _) = gw.storage_files();
        let sha = hex::encode(sha256(text.as_bytes()));
        let blob = blobs
            .iter()
            .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(sha.as_str()))
            .expect("the blob is stored under its SHA-256")
            .clone();
        let mut bytes = std::fs::read(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&blob, bytes).unwrap();
        let err = b
            .fetch_attachment_sha256(&id, A, 0)
            .await
            .expect_err("an edited blob must not be handed out as the original");
        assert_eq!(reason_of(&err).as_deref(), Some("DIGEST_MISMATCH"), "{err:?}");
        let events = gw.trace_json(&id, Some(A)).await;
        assert!(
            events.iter().any(|e| e["kind"] == "integrity_failed"),
            "the transfer log should record the failed check: {events:?}"
        );

        // The log itself: intact, then an edited row is named.
        let out = gw.run_cli(&["log", "verify"]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
        gw.sql_exec(
            "UPDATE events SET detail = 'đã sửa' WHERE chain_seq = (SELECT MIN(chain_seq) FROM events WHERE kind = 'accepted')",
        )
        .await;
        let out = gw.run_cli(&["log", "verify"]).await;
        assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("BROKEN") && text.contains("changed"), "{text}");
    })
    .await;
}
