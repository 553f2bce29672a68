//! The archive, end to end: documents whose lifecycle has ended leave the
//! hot database for signed, hash-linked packages. A package is written,
//! checked offline, purged (tombstones stay, attachments go); the
//! document's trail still says where it went, its content is refused to
//! the agencies with a sentence, `verify --full` and `log verify` hold, and
//! `archive extract` gives back the very envelope and attachment bytes. A
//! changed byte and a missing package in the chain are named; another
//! gateway's package, an unsigned one and a file that is not a package are
//! refused with nothing changed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lienthong_testkit::*;
use prost::Message as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_archive_round_trip() {
    run(Backend::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archive_round_trip() {
    run(Backend::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_attachments_in_database_archive_round_trip() {
    run(Backend::Postgres, true).await;
}

fn out_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn count(gw: &TestGateway, sql: &str) -> i64 {
    gw.sql_rows(sql).await[0].get::<i64>("n")
}

/// Gateway with a receipt key (packages are signed) and the archive
/// taking ended documents at once.
async fn archiving_gateway(
    name: &str,
    backend: Backend,
    blobs_in_database: bool,
    archive_dir: &Path,
) -> Option<TestGateway> {
    let mut gw = TestGateway::start_with(
        name,
        GatewayOptions {
            backend,
            extra_storage: if blobs_in_database {
                "backend = \"database\"\n".to_owned()
            } else {
                String::new()
            },
            ..Default::default()
        },
    )
    .await?;
    let pki = gw.pki_dir.clone();
    let path = |f: &str| toml_str(&pki.join(f).display().to_string());
    let mut config = std::fs::read_to_string(&gw.config_path).unwrap();
    config.push_str(&format!(
        "\n[receipts]\nkey = {}\ncert = {}\n\n[archive]\ndir = {}\nkeep_days = 0\n",
        path("gateway.key.pem"),
        path("gateway.pem"),
        toml_str(&archive_dir.display().to_string()),
    ));
    std::fs::write(&gw.config_path, config).unwrap();
    gw.restart().await;
    Some(gw)
}

/// A document from A to B, received and acknowledged by B, answered with
/// `codes`, whose notices A receives and acknowledges.
async fn exchanged(
    gw: &TestGateway,
    subject: &str,
    codes: &[&str],
    att: &[AttachmentSpec],
) -> Sent {
    let a = gw.agency(A);
    let b = gw.agency(B);
    let sent = a.send_document(&[B], subject, att).await.expect("A sends");
    receive_message(&b, sent.message_id()).await;
    for code in codes {
        let st = b
            .send_status(A, &sent.document().document_id, code)
            .await
            .expect("B answers");
        receive_message(&a, st.message_id()).await;
    }
    sent
}

/// Makes every stored attachment look unused for an hour (the purge keeps
/// blobs a submission used a moment ago): a file's modification time, or
/// a row's `last_seen_at`.
async fn age_blobs(gw: &TestGateway, blobs_in_database: bool) {
    if blobs_in_database {
        let hour_ago = (SystemTime::now() - Duration::from_secs(3600))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        gw.sql_exec(&format!(
            "UPDATE stored_blobs SET last_seen_at = {hour_ago}"
        ))
        .await;
    } else {
        age_blob_files(&gw.storage_path);
    }
}

/// Stored attachments: files, or rows.
async fn stored_blobs(gw: &TestGateway, blobs_in_database: bool) -> i64 {
    if blobs_in_database {
        count(gw, "SELECT COUNT(*) AS n FROM stored_blobs").await
    } else {
        gw.storage_files().0.len() as i64
    }
}

fn age_blob_files(storage: &Path) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(&storage.join("blobs"), &mut files);
    let past = SystemTime::now() - Duration::from_secs(3600);
    for f in files {
        std::fs::File::open(&f).unwrap().set_modified(past).unwrap();
    }
}

fn package_in(dir: &Path, seq: u32) -> PathBuf {
    let prefix = format!("archive-{seq:06}-");
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".zip"))
        })
        .unwrap_or_else(|| panic!("no package {seq} in {}", dir.display()))
}

/// A copy of `src` with one byte of `content` (stored as it is in the
/// package) flipped.
fn flip_in_content(src: &Path, dest: &Path, content: &[u8]) {
    let mut bytes = std::fs::read(src).unwrap();
    let mid = content.len() / 2;
    let needle = &content[mid..mid + 64];
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the attachment is stored in the package as it is");
    bytes[at + 10] ^= 0x01;
    std::fs::write(dest, bytes).unwrap();
}

async fn verify(gw: &TestGateway, files: &[&Path]) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["archive".as_ref(), "verify".as_ref()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    gw.run_cli(&args).await
}

async fn run(backend: Backend, blobs_in_database: bool) {
    let side = tempfile::Builder::new()
        .prefix("lienthong-e2e-archive-")
        .tempdir()
        .unwrap();
    let archive_dir = side.path().join("archive");
    let Some(mut gw) = archiving_gateway("archive", backend, blobs_in_database, &archive_dir).await
    else {
        return;
    };
    let pdf = AttachmentSpec::generated("quyet-dinh.bin", 300_000, 7);
    let (pdf_size, pdf_sha) = pdf.digest();
    let pdf_bytes: Vec<u8> = pdf.chunks().flat_map(|c| c.to_vec()).collect();
    // Ended: registered (03) and completed (06).
    let done = exchanged(&gw, "Quyết định đã xử lý xong", &["03", "06"], &[pdf]).await;
    // Received, still in progress: stays.
    let open = exchanged(&gw, "Công văn đang xử lý", &["03"], &[]).await;
    // Never received: stays.
    let waiting = gw
        .agency(A)
        .send_document(&[B], "Công văn chưa nhận", &[])
        .await
        .expect("A sends");

    // Package 1.
    let out = gw.run_cli(&["archive", "create"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = out_text(&out);
    eprintln!("archive create:\n{text}");
    assert!(text.contains("wrote package 1"), "{text}");
    assert!(text.contains("1 document(s), 3 message(s)"), "{text}");
    let p1 = package_in(&archive_dir, 1);
    let out = gw
        .run_cli(&["archive".as_ref(), "verify".as_ref(), p1.as_os_str()])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        out_text(&out).contains("signature valid"),
        "{}",
        out_text(&out)
    );

    // Before the purge B still reads the attachment; after it, B is told
    // where the document went, and its trail is still there.
    let b = gw.agency(B);
    assert_eq!(
        b.fetch_attachment_sha256(done.message_id(), A, 0)
            .await
            .expect("before the purge")
            .1,
        pdf_sha
    );
    let blobs_before = stored_blobs(&gw, blobs_in_database).await;
    let purge_args: [&std::ffi::OsStr; 3] = ["archive".as_ref(), "purge".as_ref(), p1.as_os_str()];
    let purge = || gw.run_cli(&purge_args);
    // The attachment was stored a moment ago: its rows go, its bytes stay.
    let out = purge().await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = out_text(&out);
    eprintln!("archive purge:\n{text}");
    assert!(text.contains("3 message(s) are tombstones now"), "{text}");
    assert!(
        text.contains("0 stored attachment(s) removed; 1 attachment(s) kept"),
        "{text}"
    );
    assert_eq!(stored_blobs(&gw, blobs_in_database).await, blobs_before);
    // Unused for an hour, the same purge again removes them.
    age_blobs(&gw, blobs_in_database).await;
    let out = purge().await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let text = out_text(&out);
    eprintln!("archive purge, again:\n{text}");
    assert!(text.contains("0 message(s) are tombstones now"), "{text}");
    assert!(text.contains("1 stored attachment(s) removed"), "{text}");
    assert_eq!(stored_blobs(&gw, blobs_in_database).await, blobs_before - 1);
    let p1_name = p1.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        count(
            &gw,
            &format!("SELECT COUNT(*) AS n FROM messages WHERE archived_in = '{p1_name}'")
        )
        .await,
        3
    );
    assert_eq!(count(&gw, "SELECT COUNT(*) AS n FROM attachments").await, 0);
    let err = b
        .fetch_attachment_sha256(done.message_id(), A, 0)
        .await
        .expect_err("archived content is not served");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("archived in package {p1_name}")),
        "{err:?}"
    );
    let trail = gw.trace_json(done.message_id(), Some(A)).await;
    let archived = trail
        .iter()
        .find(|e| e["kind"] == "archived" && e["message_id"] == done.message_id())
        .unwrap_or_else(|| panic!("no archived line in the trail: {trail:?}"));
    assert_eq!(archived["reason"], p1_name.as_str());
    let entry = archived["detail"].as_str().unwrap().to_owned();
    assert!(entry.starts_with("messages/"), "{archived}");
    // The others are untouched and still served.
    for m in [open.message_id(), waiting.message_id()] {
        assert_eq!(
            count(
                &gw,
                &format!("SELECT COUNT(*) AS n FROM messages WHERE message_id = '{m}' AND archived_in IS NULL")
            )
            .await,
            1,
            "{m} left the hot database"
        );
    }
    for args in [&["verify", "--full"][..], &["log", "verify"][..]] {
        let out = gw.run_cli(args).await;
        assert!(out.status.success(), "{args:?}: {}", describe_output(&out));
    }

    // Given back: the envelope's bytes are the ones signed and accepted,
    // the attachment's the ones sent.
    let back = side.path().join("extracted");
    let out = gw
        .run_cli(&[
            "archive".as_ref(),
            "extract".as_ref(),
            p1.as_os_str(),
            "--message-id".as_ref(),
            done.message_id().as_ref(),
            "--out".as_ref(),
            back.as_os_str(),
        ])
        .await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let envelope = std::fs::read(back.join("envelope.binpb")).unwrap();
    assert_eq!(envelope, done.signed.encode_to_vec());
    assert!(out_text(&out).contains("the digest it was accepted with"));
    let att = std::fs::read(back.join("attachments").join("0-quyet-dinh.bin")).unwrap();
    assert_eq!((att.len() as u64, sha256(&att)), (pdf_size, pdf_sha));

    // Package 2 links to package 1; package 3 to package 2.
    let b = gw.agency(B);
    let st = b
        .send_status(A, &open.document().document_id, "06")
        .await
        .expect("B completes");
    receive_message(&gw.agency(A), st.message_id()).await;
    let out = gw.run_cli(&["archive", "create"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    // Only what package 1 did not take (package 1 is not taken again).
    assert!(
        out_text(&out).contains("wrote package 2")
            && out_text(&out).contains("1 document(s), 3 message(s)"),
        "{}",
        out_text(&out)
    );
    let p2 = package_in(&archive_dir, 2);
    receive_message(&b, waiting.message_id()).await;
    let st = b
        .send_status(A, &waiting.document().document_id, "02")
        .await
        .expect("B refuses");
    receive_message(&gw.agency(A), st.message_id()).await;
    let out = gw.run_cli(&["archive", "create"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    // Package 2 is written but not purged: its documents are not taken again.
    assert!(
        out_text(&out).contains("wrote package 3")
            && out_text(&out).contains("1 document(s), 2 message(s)"),
        "{}",
        out_text(&out)
    );
    let p3 = package_in(&archive_dir, 3);
    let out = verify(&gw, &[&p3, &p1, &p2]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let out = verify(&gw, &[&p1, &p3]).await;
    eprintln!("archive verify with a gap:\n{}", out_text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        out_text(&out).contains("package(s) 2 to 2 are missing"),
        "{}",
        out_text(&out)
    );
    // Package 2 rewritten by someone else (here: the third one renamed in
    // its place) does not chain.
    let fake2 = side.path().join("fake").join(p2.file_name().unwrap());
    std::fs::create_dir_all(fake2.parent().unwrap()).unwrap();
    std::fs::copy(&p1, &fake2).unwrap();
    let out = verify(&gw, &[&p1, &fake2, &p3]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    // One byte changed in an attachment: named.
    let bad = side.path().join("bad.zip");
    flip_in_content(&p1, &bad, &pdf_bytes);
    let out = verify(&gw, &[&bad]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        out_text(&out).contains(&format!("{entry}attachments/0")),
        "{}",
        out_text(&out)
    );

    // Refused, nothing changed: a file that is not a package, a package
    // changed, another gateway's package.
    let tombstones = count(
        &gw,
        "SELECT COUNT(*) AS n FROM messages WHERE archived_in IS NOT NULL",
    )
    .await;
    let not_zip = side.path().join("not-a-package.zip");
    std::fs::write(&not_zip, b"PK? no").unwrap();
    let out = verify(&gw, &[&not_zip]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out_text(&out).contains("is not an archive package"),
        "{}",
        out_text(&out)
    );
    let out = gw
        .run_cli(&["archive".as_ref(), "purge".as_ref(), bad.as_os_str()])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        out_text(&out).contains("was not purged"),
        "{}",
        out_text(&out)
    );

    let other_dir = side.path().join("other-archive");
    let Some(other) = archiving_gateway("archive-other", Backend::Sqlite, false, &other_dir).await
    else {
        return;
    };
    exchanged(&other, "Công văn của cổng khác", &["03", "06"], &[]).await;
    let out = other.run_cli(&["archive", "create"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let foreign = package_in(&other_dir, 1);
    let out = gw
        .run_cli(&["archive".as_ref(), "verify".as_ref(), foreign.as_os_str()])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        out_text(&out).contains("does not match its signature"),
        "{}",
        out_text(&out)
    );
    let out = gw
        .run_cli(&["archive".as_ref(), "purge".as_ref(), foreign.as_os_str()])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    // Purged nothing of ours.
    assert_eq!(
        count(
            &gw,
            "SELECT COUNT(*) AS n FROM messages WHERE archived_in IS NOT NULL"
        )
        .await,
        tombstones
    );

    // The gateway still serves after all this.
    gw.restart().await;
    let sent = gw
        .agency(A)
        .send_document(&[B], "Công văn sau lưu trữ", &[])
        .await
        .expect("A sends after archiving");
    receive_message(&gw.agency(B), sent.message_id()).await;
    let out = gw.run_cli(&["verify"]).await;
    assert!(out.status.success(), "{}", describe_output(&out));
}
