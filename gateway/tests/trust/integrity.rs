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

/// Two replicas on one PostgreSQL database, each writing a signed
/// checkpoint of every chain's head every second. One replica's whole
/// chain — its events and its head row — deleted with SQL leaves every
/// remaining chain intact on its own; `lienthong log verify` names the
/// missing chain from the other replica's checkpoints and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_chain_deleted_whole_is_named_by_the_others_checkpoints() {
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        ..Default::default()
    };
    let Some(mut first) = TestGateway::start_with("checkpoints", opts).await else {
        return;
    };
    let pki = first.pki_dir.clone();
    let path = |f: &str| toml_str(&pki.join(f).display().to_string());
    let mut config = std::fs::read_to_string(&first.config_path).unwrap();
    config.push_str(&format!(
        "\n[receipts]\nkey = {}\ncert = {}\n\n[log]\ncheckpoint_every_secs = 1\n",
        path("gateway.key.pem"),
        path("gateway.pem"),
    ));
    std::fs::write(&first.config_path, config).unwrap();
    first.restart().await;
    let mut second = first.start_replica("replica-2").await;
    within(
        Duration::from_secs(120),
        "checkpoints of two replicas",
        async {
            let a = first.agency(A);
            let b = second.agency(B);
            for i in 0..3 {
                a.send_document(&[B], &format!("Công văn số {i}"), &[])
                    .await
                    .expect("A sends through the first replica");
            }
            for d in b.receive_all(10).await.expect("B receives on the second") {
                b.ack(&d.delivery_id).await.expect("B acknowledges");
            }
            // A few rounds of checkpoints, each replica's recording the other.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let out = first.run_cli(&["log", "verify"]).await;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{}", describe_output(&out));
            assert!(
                text.contains("checkpoints: ") && text.contains("with a valid signature"),
                "{text}"
            );
            // The first start, before the receipt key was configured, wrote
            // the one unsigned checkpoint.
            assert!(
                text.contains(", 1 unsigned (") && !text.contains("not checked"),
                "{text}"
            );

            // The second replica stops (its last checkpoint written), the first
            // records where it left its chain, then the chain goes.
            second.stop();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            first
                .sql_exec(
                    "DELETE FROM events WHERE chain = 'replica-2'; \
                 DELETE FROM log_head WHERE chain = 'replica-2'",
                )
                .await;
            let out = first.run_cli(&["log", "verify"]).await;
            assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
            let text = String::from_utf8_lossy(&out.stdout);
            eprintln!("`lienthong log verify` after the chain went:\n{text}");
            assert!(
                text.contains("each of its 1 chain(s) verifies alone")
                    && text.contains("  chain main: intact"),
                "{text}"
            );
            assert!(
                text.contains("BROKEN: chain replica-2 is missing: checkpoint ")
                    && text.contains(" of chain main (")
                    && text.contains(") recorded it at event "),
                "{text}"
            );
        },
    )
    .await;
    drop(second);
}
