//! `lienthong verify [--full]`: a clean gateway holds; each kind of damage
//! done behind its back is named in a sentence (a transfer-log line edited
//! or deleted, a blob deleted, a blob with a flipped byte — found only by
//! `--full` — a delivery whose message is gone), with exit 1; and
//! `lienthong migrate` refuses a damaged database without `--force`.

use std::path::PathBuf;
use std::time::Duration;

use lienthong_testkit::*;

async fn verify(gw: &TestGateway, full: bool) -> (Option<i32>, String) {
    let args: &[&str] = if full {
        &["verify", "--full"]
    } else {
        &["verify"]
    };
    let out = gw.run_cli(args).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "`lienthong {}`:\n{text}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A and B exchange three documents: two attachments, one, none.
async fn documents(gw: &TestGateway) -> Vec<String> {
    let a = gw.agency(A);
    let mut ids = Vec::new();
    for (subject, files) in [
        (
            "Công văn có hai tệp",
            vec![
                AttachmentSpec::text("cv.txt", "Nội dung công văn số 1."),
                AttachmentSpec::text("phu-luc.txt", "Phụ lục kèm theo công văn số 1."),
            ],
        ),
        (
            "Công văn có một tệp",
            vec![AttachmentSpec::text("to-trinh.txt", "Tờ trình số 2.")],
        ),
        ("Công văn không có tệp", vec![]),
    ] {
        let sent = a.send_document(&[B], subject, &files).await.unwrap();
        ids.push(sent.message_id().to_string());
    }
    ids
}

fn blob_path(gw: &TestGateway, text: &str) -> PathBuf {
    let sha = hex::encode(sha256(text.as_bytes()));
    let (blobs, _) = gw.storage_files();
    blobs
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(sha.as_str()))
        .expect("the blob is stored under its SHA-256")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_damage_and_migrate_refuses_a_damaged_database() {
    let Some(mut gw) = TestGateway::start("integrity_check", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(240), "the integrity check", async {
        let ids = documents(&gw).await;

        // Clean: both modes hold, a report file and a log line each.
        let (code, text) = verify(&gw, false).await;
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("the database holds (fast check"), "{text}");
        assert!(text.contains("messages 3, attachments 3, deliveries 3"), "{text}");
        assert!(text.contains("blobs: 3 looked for"), "{text}");
        let (code, text) = verify(&gw, true).await;
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("the database holds (full check"), "{text}");
        assert!(text.contains("blobs: 3 read"), "{text}");
        let reports: Vec<_> = std::fs::read_dir(gw.dir.join("data/reports"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("verify-"))
            .collect();
        assert_eq!(reports.len(), 2, "{reports:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&reports[0]).unwrap()).unwrap();
        assert_eq!(report["holds"], true, "{report}");
        assert_eq!(report["counts"]["messages"], 3, "{report}");
        let lines = gw
            .sql_rows("SELECT detail FROM events WHERE kind = 'integrity_checked' ORDER BY id")
            .await;
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1]
                .get::<String>("detail")
                .starts_with("verify: full check, everything holds"),
            "{:?}",
            lines[1].get::<String>("detail")
        );
        let out = gw.run_cli(&["verify", "--json"]).await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["holds"], true, "{v}");
        assert_eq!(v["mode"], "fast", "{v}");

        // A flipped byte keeps the size: only reading the blob finds it.
        let flipped = blob_path(&gw, "Tờ trình số 2.");
        let original = std::fs::read(&flipped).unwrap();
        let mut bytes = original.clone();
        bytes[0] ^= 0x01;
        std::fs::write(&flipped, &bytes).unwrap();
        let (code, text) = verify(&gw, false).await;
        assert_eq!(code, Some(0), "the fast check does not read blobs: {text}");
        let (code, text) = verify(&gw, true).await;
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains(&format!(
                "PROBLEM (blobs): the stored bytes of attachment 0 (to-trinh.txt) of message {} \
                 from {A} do not check out",
                ids[1]
            )),
            "{text}"
        );
        std::fs::write(&flipped, &original).unwrap();

        // A blob file deleted: the fast check finds it.
        let deleted = blob_path(&gw, "Phụ lục kèm theo công văn số 1.");
        let kept = std::fs::read(&deleted).unwrap();
        std::fs::remove_file(&deleted).unwrap();
        let (code, text) = verify(&gw, false).await;
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains(&format!(
                "PROBLEM (blobs): the stored bytes of attachment 1 (phu-luc.txt) of message {} \
                 from {A} are missing from the attachment store",
                ids[0]
            )),
            "{text}"
        );
        std::fs::write(&deleted, &kept).unwrap();
        assert_eq!(verify(&gw, true).await.0, Some(0));

        // A line of the transfer log edited, then put back.
        let accepted = "(SELECT MIN(chain_seq) FROM events WHERE kind = 'accepted')";
        let before = gw
            .sql_rows(&format!(
                "SELECT detail FROM events WHERE chain_seq = {accepted}"
            ))
            .await[0]
            .get::<String>("detail");
        gw.sql_exec(&format!(
            "UPDATE events SET detail = 'đã sửa' WHERE chain_seq = {accepted}"
        ))
        .await;
        let (code, text) = verify(&gw, false).await;
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("transfer log: BROKEN in 1 chain(s)"), "{text}");
        assert!(
            text.contains("PROBLEM (log): the transfer log's chain main is broken at event"),
            "{text}"
        );
        gw.sql_exec(&format!(
            "UPDATE events SET detail = '{}' WHERE chain_seq = {accepted}",
            before.replace('\'', "''")
        ))
        .await;
        assert_eq!(verify(&gw, false).await.0, Some(0));

        // A message deleted: its deliveries, its attachments and its
        // acceptance in the log point at nothing.
        gw.sql_exec(&format!(
            "DELETE FROM messages WHERE message_id = '{}'",
            ids[2]
        ))
        .await;
        let (code, text) = verify(&gw, false).await;
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains("PROBLEM (references): delivery ")
                && text.contains(&format!("to {B} points at message row 3, which does not exist")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "PROBLEM (references): the transfer log says message {} from {A} was accepted",
                ids[2]
            )),
            "{text}"
        );

        // A line of the transfer log deleted.
        gw.sql_exec(
            "DELETE FROM events WHERE chain_seq = (SELECT MIN(chain_seq) FROM events WHERE kind = 'routed')",
        )
        .await;
        let (code, text) = verify(&gw, false).await;
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains("PROBLEM (log): the transfer log's chain main is broken at event"),
            "{text}"
        );

        // `migrate` with a migration pending refuses the damaged database,
        // and migrates it with --force.
        gw.stop();
        gw.sql_exec(
            "DELETE FROM seaql_migrations WHERE version = 'm20261207_000013_stored_blobs'; \
             DROP TABLE stored_blob_chunks; DROP TABLE stored_blobs; DROP TABLE storage_keychecks",
        )
        .await;
        let out = gw.run_cli(&["migrate"]).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
        assert!(
            text.contains("before migrating:")
                && text.contains("PROBLEM (references): delivery ")
                && text.contains("refusing to migrate")
                && text.contains("lienthong migrate --force"),
            "{text}"
        );
        let out = gw.run_cli(&["migrate", "--check"]).await;
        assert_eq!(out.status.code(), Some(1), "still pending: {}", describe_output(&out));
        let out = gw.run_cli(&["migrate", "--force"]).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{}", describe_output(&out));
        assert!(
            text.contains("migrating anyway (--force)")
                && text.contains("applied 1 migration(s)")
                && text.contains("after migrating:"),
            "{text}"
        );
        let out = gw.run_cli(&["migrate", "--check"]).await;
        assert!(out.status.success(), "{}", describe_output(&out));
    })
    .await;
}

/// On PostgreSQL with the attachments in the database: a clean gateway
/// holds in both modes; a blob's row deleted and a delivery's message
/// deleted are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_on_postgresql_with_blobs_in_the_database() {
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        extra_storage: "backend = \"database\"\n".to_owned(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("integrity_check_pg", opts).await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "the integrity check on PostgreSQL",
        async {
            let ids = documents(&gw).await;
            let (code, text) = verify(&gw, false).await;
            assert_eq!(code, Some(0), "{text}");
            let (code, text) = verify(&gw, true).await;
            assert_eq!(code, Some(0), "{text}");
            assert!(text.contains("blobs: 3 read"), "{text}");

            let sha = hex::encode(sha256("Tờ trình số 2.".as_bytes()));
            gw.sql_exec(&format!(
                "DELETE FROM stored_blob_chunks WHERE sha256 = '{sha}'; \
             DELETE FROM stored_blobs WHERE sha256 = '{sha}'"
            ))
            .await;
            gw.sql_exec(&format!(
                "DELETE FROM messages WHERE message_id = '{}'",
                ids[2]
            ))
            .await;
            let (code, text) = verify(&gw, false).await;
            assert_eq!(code, Some(1), "{text}");
            assert!(
            text.contains(&format!(
                "PROBLEM (blobs): the stored bytes of attachment 0 (to-trinh.txt) of message {} \
                 from {A} are missing from the attachment store in the database",
                ids[1]
            )),
            "{text}"
        );
            assert!(
                text.contains("PROBLEM (references): delivery ")
                    && text.contains("which does not exist"),
                "{text}"
            );
        },
    )
    .await;
}
