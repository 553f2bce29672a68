//! Backups: `lienthong backup DIR` while a sender keeps sending, then
//! `lienthong restore DIR` into an empty database and attachment store.
//! Every document acknowledged before the backup began is restored, the
//! transfer log verifies, and the restored gateway takes a new document
//! whose events chain onto the restored log. A backup with one byte
//! changed (database, attachment, manifest) is refused naming the file; a
//! non-empty database is refused with nothing changed; a second backup
//! with the first as its base copies no unchanged attachment.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lienthong_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_encrypted_backup_while_sending_restores_and_chains_on() {
    run(Backend::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_while_sending_restores_and_chains_on() {
    run(Backend::Postgres, false).await;
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_tree(src: &Path, dest: &Path) {
    for f in files_under(src) {
        let to = dest.join(f.strip_prefix(src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to).unwrap();
    }
}

fn flip_byte(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

async fn message_ids(gw: &TestGateway) -> BTreeSet<String> {
    gw.sql_rows("SELECT message_id FROM messages")
        .await
        .iter()
        .map(|r| r.get::<String>("message_id"))
        .collect()
}

async fn count(gw: &TestGateway, sql: &str) -> i64 {
    gw.sql_rows(sql).await[0].get::<i64>("n")
}

async fn run(backend: Backend, encrypted: bool) {
    let side = tempfile::Builder::new()
        .prefix("lienthong-e2e-backup-")
        .tempdir()
        .unwrap();
    let extra_storage = if encrypted {
        let key_file = side.path().join("storage.keys");
        std::fs::write(
            &key_file,
            format!(
                "k1:{}\n",
                base64::engine::general_purpose::STANDARD.encode([9u8; 32])
            ),
        )
        .unwrap();
        format!("encryption_key_file = {:?}", key_file.display().to_string())
    } else {
        String::new()
    };
    let opts = GatewayOptions {
        backend,
        extra_storage,
        ..Default::default()
    };
    let Some(mut gw) = TestGateway::start_with("backup", opts).await else {
        return;
    };
    let pki = gw.pki_dir.clone();
    let path = |f: &str| toml_str(&pki.join(f).display().to_string());
    let mut config = std::fs::read_to_string(&gw.config_path).unwrap();
    config.push_str(&format!(
        "\n[receipts]\nkey = {}\ncert = {}\n",
        path("gateway.key.pem"),
        path("gateway.pem"),
    ));
    std::fs::write(&gw.config_path, config).unwrap();
    gw.restart().await;

    let a = gw.agency(A);
    let mut before_loop = Vec::new();
    for i in 0..6u64 {
        let attachments = if i % 2 == 0 {
            vec![AttachmentSpec::generated(
                &format!("phu-luc-{i}.bin"),
                200_000 + i * 1000,
                i,
            )]
        } else {
            Vec::new()
        };
        let sent = a
            .send_document(&[B], &format!("Công văn số {i}"), &attachments)
            .await
            .expect("A sends");
        before_loop.push(sent.message_id().to_owned());
    }

    // A sender that keeps sending while the backup runs.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (a, acked, stop) = (a.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 100u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let att = [AttachmentSpec::generated(
                    &format!("kem-theo-{i}.bin"),
                    50_000,
                    i,
                )];
                if let Ok(sent) = a
                    .send_document(&[B], &format!("Công văn đang gửi {i}"), &att)
                    .await
                {
                    acked.lock().unwrap().push(sent.message_id().to_owned());
                }
                i += 1;
            }
        })
    };
    while acked.lock().unwrap().len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut acknowledged: BTreeSet<String> = before_loop.iter().cloned().collect();
    acknowledged.extend(acked.lock().unwrap().iter().cloned());

    let backups = side.path().join("backups");
    let first = backups.join("first");
    let started = Instant::now();
    let out = gw.run_cli(&["backup".as_ref(), first.as_os_str()]).await;
    let took = started.elapsed();
    assert!(out.status.success(), "{}", describe_output(&out));
    let sent_during = acked.lock().unwrap().len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    let text = stdout(&out);
    let size: u64 = files_under(&first)
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    eprintln!(
        "backup of {backend:?} ({} documents sent, {sent_during} by the loop) took {took:?}, {size} bytes:\n{text}",
        acknowledged.len()
    );
    assert!(text.contains("chain main: head at event"), "{text}");
    assert!(first.join("manifest.json").is_file() && first.join("manifest.sig").is_file());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    let blob_entries: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .filter(|p| p.starts_with("blobs/"))
        .collect();
    assert!(blob_entries.len() >= 3 + 3, "{manifest}");
    if encrypted {
        // Sealed as stored: no blob in the backup is its plaintext.
        for rel in &blob_entries {
            let name = rel.rsplit('/').next().unwrap();
            let bytes = std::fs::read(first.join(rel)).unwrap();
            assert_ne!(hex_sha256(&bytes), name, "{rel} is in plaintext");
        }
        assert!(text.contains("NOT in the backup"), "{text}");
    }

    // A second backup on the first: unchanged attachments are links.
    let second = backups.join("second");
    let out = gw
        .run_cli(&[
            "backup".as_ref(),
            second.as_os_str(),
            "--base".as_ref(),
            first.as_os_str(),
        ])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text2 = stdout(&out);
    for rel in &blob_entries {
        let (i1, i2) = (
            first.join(rel).metadata().unwrap().ino(),
            second.join(rel).metadata().unwrap().ino(),
        );
        assert_eq!(i1, i2, "{rel} was copied again:\n{text2}");
    }
    assert!(
        // Those sent after the first backup are copied; none of the first's.
        text2.contains(&format!("{} unchanged from the base", blob_entries.len())),
        "{text2}"
    );

    // One byte changed anywhere: refused, naming the file.
    let blob = blob_entries[0].clone();
    let db_file = if backend == Backend::Sqlite {
        "database.sqlite"
    } else {
        "database.pgdump"
    };
    for (what, target) in [
        ("database", db_file.to_owned()),
        ("attachment", blob.clone()),
        ("manifest", "manifest.json".to_owned()),
    ] {
        let bad = backups.join(format!("bad-{what}"));
        copy_tree(&first, &bad);
        flip_byte(&bad.join(&target), 4000);
        let out = gw.run_cli(&["restore".as_ref(), bad.as_os_str()]).await;
        assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = if what == "manifest" {
            "manifest.json does not match its signature".to_owned()
        } else {
            format!("{target} does not match the manifest")
        };
        assert!(err.contains(&expected), "{what}: {err}");
    }

    // Into the serving gateway's database: refused, nothing changed.
    let ids_now = message_ids(&gw).await;
    let events_now = count(&gw, "SELECT count(*) AS n FROM events").await;
    let files_now = gw.storage_files().0;
    let out = gw.run_cli(&["restore".as_ref(), first.as_os_str()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not empty") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(message_ids(&gw).await, ids_now);
    assert_eq!(
        count(&gw, "SELECT count(*) AS n FROM events").await,
        events_now
    );
    assert_eq!(gw.storage_files().0, files_now);

    // The gateway's database and attachments are lost; the backup comes back.
    gw.stop();
    match backend {
        Backend::Sqlite => {
            let db = PathBuf::from(gw.db_url.strip_prefix("sqlite://").unwrap());
            for suffix in ["", "-wal", "-shm"] {
                let mut p = db.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
        }
        Backend::Postgres => {
            gw.sql_exec("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                .await;
        }
    }
    std::fs::remove_dir_all(&gw.storage_path).unwrap();
    let out = gw.run_cli(&["restore".as_ref(), first.as_os_str()]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = stdout(&out);
    eprintln!("restore:\n{text}");
    assert!(text.contains("the transfer log is intact"), "{text}");
    let restored = message_ids(&gw).await;
    let missing: Vec<_> = acknowledged.difference(&restored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup, not restored: {missing:?}"
    );

    // The restored gateway serves, and its events chain onto the restored log.
    let head_seq = manifest["heads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["chain"] == "main")
        .unwrap()["seq"]
        .as_i64()
        .unwrap();
    gw.restart().await;
    let a = gw.agency(A);
    let b = gw.agency(B);
    let fresh = a
        .send_document(
            &[B],
            "Công văn sau khi khôi phục",
            &[AttachmentSpec::text("ghi-chu.txt", "khôi phục xong")],
        )
        .await
        .expect("A sends after the restore");
    let deliveries = b.receive_all(0).await.expect("B receives");
    let got = deliveries.iter().any(|d| {
        d.envelope
            .as_ref()
            .is_some_and(|e| decode_envelope(e).message_id == fresh.message_id())
    });
    assert!(got, "the new document is not delivered");
    // An attachment restored from the backup still reads back.
    let (size, _) = b
        .fetch_attachment_sha256(&before_loop[0], A, 0)
        .await
        .expect("a restored attachment is fetched");
    assert_eq!(size, 200_000);
    for d in deliveries.iter().filter(|d| !d.delivery_id.is_empty()) {
        b.ack(&d.delivery_id).await.expect("B acknowledges");
    }
    let later = count(
        &gw,
        &format!(
            "SELECT count(*) AS n FROM events WHERE chain = 'main' AND chain_seq > {head_seq}"
        ),
    )
    .await;
    assert!(
        later > 0,
        "no event chained after the restored head {head_seq}"
    );
    let out = gw.run_cli(&["log", "verify"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        stdout(&out).contains("the transfer log is intact"),
        "{}",
        stdout(&out)
    );
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha256(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
