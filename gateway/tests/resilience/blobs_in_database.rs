//! Two replicas with `storage.backend = "database"` and a `storage.path`
//! each of their own, as a province without a shared filesystem runs them:
//! an attachment of a few MiB accepted by one replica is fetched whole, with
//! its digest, from the other; it is in the database's rows, encrypted at
//! rest, and on neither replica's disk; `lienthong storage rotate-key`
//! re-encrypts the rows under the new key.

use std::time::Duration;

use lienthong_testkit::*;

/// 32 bytes in base64 each: the storage key of both replicas, and the one
/// it is rotated to.
const K1: &str = "k1:BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY=";
const K2: &str = "k2:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";

#[tokio::test(flavor = "multi_thread")]
async fn an_attachment_accepted_by_one_replica_is_fetched_from_the_other() {
    let keys = tempfile::tempdir().expect("temp dir");
    let key_file = keys.path().join("storage.keys");
    std::fs::write(&key_file, format!("{K1}\n")).expect("write the key file");
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        extra_storage: format!(
            "backend = \"database\"\nencryption_key_file = {}\n",
            toml_str(&key_file.display().to_string())
        ),
        ..Default::default()
    };
    let Some(first) = TestGateway::start_with("blobs_in_db", opts).await else {
        return;
    };
    let mut second = first.start_replica_with_own_storage("replica-2").await;
    assert_ne!(first.storage_path, second.storage_path);
    within(
        Duration::from_secs(180),
        "an attachment across replicas",
        async {
            let attachment =
                AttachmentSpec::generated("ho-so-4MB.bin", 4 * 1024 * 1024 + 4321, 0xB10B);
            let (size, digest) = attachment.digest();
            let sent = first
                .agency(A)
                .send_document(&[B], "Hồ sơ kèm tệp lớn", &[attachment])
                .await
                .expect("A sends through the first replica");
            let got = receive_message(&second.agency(B), sent.message_id()).await;
            assert!(got.envelope.is_some());
            let fetched = second
                .agency(B)
                .fetch_attachment_sha256(sent.message_id(), A, 0)
                .await
                .expect("B fetches the attachment from the second replica");
            assert_eq!(
                fetched,
                (size, digest),
                "the bytes the second replica hands out"
            );

            // In the rows, sealed: the stored form is longer than the bytes.
            let hex = hex::encode(digest);
            let rows = first
                .sql_rows(&format!(
                    "SELECT b.stored_size, b.key_id, count(c.n) AS chunks \
                 FROM stored_blobs b JOIN stored_blob_chunks c ON c.sha256 = b.sha256 \
                 WHERE b.sha256 = '{hex}' GROUP BY b.stored_size, b.key_id"
                ))
                .await;
            assert_eq!(rows.len(), 1, "one stored blob");
            assert_eq!(rows[0].get::<String>("key_id"), "k1");
            assert!(rows[0].get::<i64>("stored_size") as u64 > size);
            assert!(rows[0].get::<i64>("chunks") >= 16, "chunks of 256 KiB");

            // Neither replica keeps a file of it.
            for gw in [&first, &second] {
                let (files, tmp) = gw.storage_files();
                assert!(
                    !files.iter().any(|p| p.ends_with(&hex)),
                    "{}: {files:?}",
                    gw.name
                );
                assert!(tmp.is_empty(), "{}: {tmp:?}", gw.name);
            }

            // The new key first, the old one after it; a replica restarted
            // with them, then the rotation run beside it.
            std::fs::write(&key_file, format!("{K2}\n{K1}\n")).expect("write the key file");
            second.restart().await;
            let out = second.run_cli(&["storage", "rotate-key"]).await;
            assert!(out.status.success(), "{}", describe_output(&out));
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.contains("1 re-encrypted from an older key") && said.contains("key(s) k1"),
                "{said}"
            );
            let key_id = second
                .sql_rows(&format!(
                    "SELECT key_id FROM stored_blobs WHERE sha256 = '{hex}'"
                ))
                .await;
            assert_eq!(key_id[0].get::<String>("key_id"), "k2");
            let again = second
                .agency(B)
                .fetch_attachment_sha256(sent.message_id(), A, 0)
                .await
                .expect("B fetches the attachment after the rotation");
            assert_eq!(again, (size, digest));
        },
    )
    .await;
    drop(second);
}
