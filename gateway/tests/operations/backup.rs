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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_encrypted_backup_seals_the_dump_and_restores() {
    run(Backend::Postgres, true).await;
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
    let db_file = match (backend, encrypted) {
        (Backend::Sqlite, false) => "database.sqlite",
        (Backend::Sqlite, true) => "database.sqlite.sealed",
        (Backend::Postgres, false) => "database.pgdump",
        (Backend::Postgres, true) => "database.pgdump.sealed",
    };
    if encrypted {
        // Sealed as stored: no blob in the backup is its plaintext.
        for rel in &blob_entries {
            let name = rel.rsplit('/').next().unwrap();
            let bytes = std::fs::read(first.join(rel)).unwrap();
            assert_ne!(hex_sha256(&bytes), name, "{rel} is in plaintext");
        }
        assert!(text.contains("NOT in the backup"), "{text}");
        // The database is sealed with the storage key too: neither a
        // subject nor an agency's code can be read in it.
        assert_eq!(manifest["database_key"], "k1", "{manifest}");
        assert!(!first.join(db_file.trim_end_matches(".sealed")).exists());
        let db = std::fs::read(first.join(db_file)).unwrap();
        for plain in ["Công văn số 0", A] {
            assert!(
                !db.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{plain:?} can be read in the backup's database file"
            );
        }
        assert!(
            text.contains("the database file is sealed with the storage key k1"),
            "{text}"
        );
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

/// Appends a `[backup]` section to the gateway's configuration.
fn set_backup_config(gw: &TestGateway, section: &str) {
    let mut config = std::fs::read_to_string(&gw.config_path).unwrap();
    if let Some(at) = config.find("\n[backup]\n") {
        config.truncate(at);
    }
    config.push_str(&format!("\n[backup]\n{section}\n"));
    std::fs::write(&gw.config_path, config).unwrap();
}

/// The `backup` lines of the transfer log: (actor, reason, detail).
async fn backup_lines(gw: &TestGateway) -> Vec<(String, String, serde_json::Value)> {
    gw.sql_rows("SELECT actor, reason, detail FROM events WHERE kind = 'backup' ORDER BY id")
        .await
        .iter()
        .map(|r| {
            (
                r.try_get::<String>("actor").unwrap_or_default(),
                r.try_get::<String>("reason").unwrap_or_default(),
                serde_json::from_str(&r.get::<String>("detail")).unwrap(),
            )
        })
        .collect()
}

/// Waits (at most 60 s) for the scheduled backup's line.
async fn scheduled_line(gw: &TestGateway) -> (String, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, reason, detail)) = backup_lines(gw)
            .await
            .into_iter()
            .find(|(actor, _, _)| actor == "schedule")
        {
            return (reason, detail);
        }
        assert!(Instant::now() < deadline, "no scheduled backup within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scheduled backup: a gateway started with `backup.schedule` and no
/// scheduled backup yet takes one at once into `backup.dir/<date>T<time>`,
/// hard-linking what the newest finished backup there holds, removes the
/// backups older than `backup.keep` days, and writes its line in the
/// transfer log; the dashboard shows it (when, size, where), and says so
/// when no backup is scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_scheduled_backup_links_prunes_and_shows_on_the_dashboard() {
    let side = tempfile::Builder::new()
        .prefix("lienthong-e2e-backup-schedule-")
        .tempdir()
        .unwrap();
    let Some(mut gw) = TestGateway::start("backup-schedule", Backend::Sqlite).await else {
        return;
    };
    let a = gw.agency(A);
    a.send_document(
        &[B],
        "Công văn sao lưu theo lịch",
        &[AttachmentSpec::generated("phu-luc.bin", 120_000, 7)],
    )
    .await
    .expect("A sends");

    // An old backup by hand, as if taken 40 days ago.
    let backups = side.path().join("backups");
    let old = backups.join("2000-01-01T013000");
    let out = gw
        .run_cli(&["backup".as_ref(), old.as_os_str(), "--unsigned".as_ref()])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let manifest_path = old.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["created_at"] = "2000-01-01T01:30:00Z".into();
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let blob_rel = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .find(|p| p.starts_with("blobs/"))
        .expect("a blob in the backup");
    let old_inode = old.join(&blob_rel).metadata().unwrap().ino();

    set_backup_config(
        &gw,
        &format!(
            "dir = {}\nschedule = \"03:00\"\nkeep = 30",
            toml_str(&backups.display().to_string())
        ),
    );
    gw.restart().await;
    let (reason, detail) = scheduled_line(&gw).await;
    assert_eq!(reason, "", "{detail}");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "the old backup was not removed: {dirs:?}");
    let new = &dirs[0];
    assert_eq!(detail["dir"], new.display().to_string(), "{detail}");
    let name = new.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.len() == 17 && name.as_bytes()[10] == b'T',
        "not named by date and time: {name}"
    );
    assert!(new.join("manifest.json").is_file());
    assert_eq!(
        new.join(&blob_rel).metadata().unwrap().ino(),
        old_inode,
        "the attachment was copied, not linked from the newest backup"
    );
    let bytes = detail["bytes"].as_u64().unwrap();
    assert!(bytes > 120_000, "{detail}");

    // What an operator sees.
    let op = gw.operator_session("Trực vận hành", "viewer").await;
    let page = op.get("/").await;
    assert!(page.text().contains("id=\"backup\""), "{}", page.text());
    let status = op.get("/api/backup").await;
    assert_eq!(status.status, 200, "{}", status.text());
    let s = status.json();
    assert_eq!(s["schedule"], "03:00", "{s}");
    assert_eq!(s["late"], false, "{s}");
    assert_eq!(s["last_dir"], new.display().to_string(), "{s}");
    assert_eq!(s["last_bytes"], bytes, "{s}");
    let message = s["message"].as_str().unwrap();
    assert!(
        message.starts_with("Bản sao lưu gần nhất:")
            && message.contains(&new.display().to_string())
            && message.contains("Sao lưu hằng ngày lúc 03:00"),
        "{message}"
    );

    // No schedule: said so, with no warning; the last backup still shown.
    set_backup_config(
        &gw,
        &format!("dir = {}", toml_str(&backups.display().to_string())),
    );
    gw.restart().await;
    let op = gw.operator_session("Trực vận hành 2", "viewer").await;
    let s = op.get("/api/backup").await.json();
    assert_eq!(s["schedule"], serde_json::Value::Null, "{s}");
    assert_eq!(s["late"], false, "{s}");
    assert_eq!(s["last_dir"], new.display().to_string(), "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("Chưa đặt lịch sao lưu tự động"),
        "{s}"
    );
}

/// `backup --file PATH.zip`: the same backup in one ZIP file, restored as
/// a directory is; a ZIP file with one byte changed, a file that is not a
/// ZIP and a ZIP that is not a backup are refused with a sentence, nothing
/// changed. A scheduled backup that fails writes its line, and the
/// dashboard warns that no backup finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_in_one_zip_file_round_trips_and_refuses_damage() {
    let side = tempfile::Builder::new()
        .prefix("lienthong-e2e-backup-zip-")
        .tempdir()
        .unwrap();
    let Some(mut gw) = TestGateway::start("backup-zip", Backend::Sqlite).await else {
        return;
    };
    // backup.dir is a file: the scheduled backup fails.
    let not_a_dir = side.path().join("not-a-dir");
    std::fs::write(&not_a_dir, "một tệp, không phải thư mục").unwrap();
    set_backup_config(
        &gw,
        &format!(
            "dir = {}\nschedule = \"03:00\"",
            toml_str(&not_a_dir.display().to_string())
        ),
    );
    gw.restart().await;
    let (reason, detail) = scheduled_line(&gw).await;
    assert_eq!(reason, "BACKUP_FAILED", "{detail}");
    assert!(!detail["error"].as_str().unwrap().is_empty(), "{detail}");
    let op = gw.operator_session("Trực vận hành", "viewer").await;
    let s = op.get("/api/backup").await.json();
    assert_eq!(s["late"], true, "{s}");
    let message = s["message"].as_str().unwrap();
    assert!(
        message.starts_with("CẢNH BÁO: sao lưu trễ")
            && message.contains("Chưa có bản sao lưu nào hoàn tất")
            && message.contains("thất bại"),
        "{message}"
    );

    let a = gw.agency(A);
    let mut sent = BTreeSet::new();
    for i in 0..3u64 {
        let m = a
            .send_document(
                &[B],
                &format!("Công văn nén {i}"),
                &[AttachmentSpec::generated(
                    &format!("kem-{i}.bin"),
                    80_000 + i,
                    i,
                )],
            )
            .await
            .expect("A sends");
        sent.insert(m.message_id().to_owned());
    }
    let zip_path = side.path().join("lienthong.zip");
    let out = gw
        .run_cli(&[
            "backup".as_ref(),
            "--file".as_ref(),
            zip_path.as_os_str(),
            "--unsigned".as_ref(),
        ])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(zip_path.is_file());
    assert!(
        std::fs::read_dir(side.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".parts")),
        "the gathered files were left beside the ZIP file"
    );
    // The hand-made backup counts: no more warning.
    let s = op.get("/api/backup").await.json();
    assert_eq!(s["late"], false, "{s}");
    assert_eq!(s["last_dir"], zip_path.display().to_string(), "{s}");

    let zip_bytes = std::fs::read(&zip_path).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.clone())).unwrap();
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).unwrap().name().unwrap().into_owned())
        .collect();
    assert_eq!(
        names.last().map(String::as_str),
        Some("manifest.json"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "database.sqlite"), "{names:?}");
    let blob = names
        .iter()
        .find(|n| n.starts_with("blobs/"))
        .unwrap()
        .clone();
    let blob_start = archive.by_name(&blob).unwrap().data_start().unwrap();

    let refused = |out: &std::process::Output, sentence: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", describe_output(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(sentence), "expected {sentence:?} in: {err}");
    };
    let ids_now = message_ids(&gw).await;
    // One byte changed in an attachment inside the ZIP file.
    let bad = side.path().join("bad.zip");
    let mut damaged = zip_bytes.clone();
    damaged[blob_start as usize + 1000] ^= 0x01;
    std::fs::write(&bad, &damaged).unwrap();
    let out = gw
        .run_cli(&["restore".as_ref(), bad.as_os_str(), "--unsigned".as_ref()])
        .await;
    refused(&out, &format!("{blob} in "));
    refused(&out, "is damaged");
    // Not a ZIP file at all.
    let text = side.path().join("ghi-chu.zip");
    std::fs::write(&text, "không phải bản sao lưu").unwrap();
    let out = gw
        .run_cli(&["restore".as_ref(), text.as_os_str(), "--unsigned".as_ref()])
        .await;
    refused(&out, "is not a backup");
    // A ZIP file without a manifest.
    let other = side.path().join("other.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&other).unwrap());
        w.start_file("readme.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        w.finish().unwrap();
    }
    let out = gw
        .run_cli(&["restore".as_ref(), other.as_os_str(), "--unsigned".as_ref()])
        .await;
    refused(&out, "is a ZIP file but not a backup");
    assert_eq!(message_ids(&gw).await, ids_now);

    // Everything lost; the ZIP file brings it back.
    gw.stop();
    let db = PathBuf::from(gw.db_url.strip_prefix("sqlite://").unwrap());
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::remove_dir_all(&gw.storage_path).unwrap();
    let out = gw
        .run_cli(&[
            "restore".as_ref(),
            zip_path.as_os_str(),
            "--unsigned".as_ref(),
        ])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        stdout(&out).contains("the transfer log is intact"),
        "{}",
        stdout(&out)
    );
    assert!(!side.path().join("lienthong.zip.restoring").exists());
    gw.restart().await;
    assert_eq!(message_ids(&gw).await, ids_now);
    assert!(sent.is_subset(&ids_now));
    let b = gw.agency(B);
    let first = sent.iter().next().unwrap();
    let (size, _) = b
        .fetch_attachment_sha256(first, A, 0)
        .await
        .expect("a restored attachment is fetched");
    assert!((80_000..80_003).contains(&size), "{size}");
}
