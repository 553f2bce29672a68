//! An edXML package's attachments, decoded before they are submitted, are
//! kept only in the attachment store's temporary area, sealed when the
//! store encrypts: no plaintext of them in the system's temporary folder or
//! under `storage.path` while a package streams in, none after a SIGKILL
//! mid-upload, and the leftovers gone once the gateway starts again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lienthong_testkit::v1;
use lienthong_testkit::*;
use prost::bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;

/// The attachment's bytes: this line over and over, easy to find on disk.
const PLAINTEXT: &[u8] = b"BAN CHINH QUYET DINH SO 15/QD-UBND - NOI DUNG KHONG DUOC LO RA DIA. ";
const SIZE: u64 = 16 * 1024 * 1024;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The files under `dirs` that hold the attachment's plaintext.
fn plaintext_files(dirs: &[&Path]) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|d| files_under(d))
        .filter(|p| {
            std::fs::read(p).is_ok_and(|data| data.windows(PLAINTEXT.len()).any(|w| w == PLAINTEXT))
        })
        .collect()
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edxml_attachments_never_lie_in_plaintext_on_disk() {
    let side = tempfile::Builder::new()
        .prefix("lienthong-e2e-edxml-at-rest-")
        .tempdir()
        .unwrap();
    // The gateway's own system temporary folder, watched by the test.
    let system_tmp = side.path().join("system-tmp");
    std::fs::create_dir_all(&system_tmp).unwrap();
    let key_file = side.path().join("storage.keys");
    std::fs::write(
        &key_file,
        format!(
            "k1:{}\n",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32])
        ),
    )
    .unwrap();
    let opts = GatewayOptions {
        extra_storage: format!("encryption_key_file = {:?}", key_file.display().to_string()),
        env: vec![("TMPDIR".into(), system_tmp.display().to_string())],
        ..Default::default()
    };
    let Some(mut gw) = TestGateway::start_with("edxml_at_rest", opts).await else {
        return;
    };
    let storage = gw.storage_path.clone();
    let storage_tmp = storage.join("tmp");
    within(Duration::from_secs(300), "edXML at rest", async {
        let a = gw.agency(A);
        let document_id = format!("{A},2026/11/24,15/QD-UBND");
        let chunks: Vec<Bytes> =
            edxml::large_document(A, &[B], &document_id, "quyet-dinh.txt", PLAINTEXT, SIZE)
                .collect();
        let half = chunks.len() / 2;

        // Half the package goes in, then the sender holds the rest back.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let first_half: Vec<Bytes> = chunks[..half].to_vec();
        let feeder = tokio::spawn(async move {
            for c in first_half {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
            // Held open, never finished: the gateway is killed first.
            std::future::pending::<()>().await;
        });
        let sender = a.clone();
        let upload = tokio::spawn(async move {
            edxml::send_stream(&sender, "ban-lon-1", ReceiverStream::new(rx)).await
        });

        // Wait until the gateway has decoded a good part of the attachment
        // somewhere on disk.
        let watched = [system_tmp.as_path(), storage.as_path()];
        let deadline = Instant::now() + Duration::from_secs(120);
        let decoded = loop {
            let big: Vec<PathBuf> = watched
                .iter()
                .flat_map(|d| files_under(d))
                .filter(|p| size_of(p) > SIZE / 4)
                .collect();
            if !big.is_empty() {
                break big;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway wrote no decoded attachment: {:?}",
                watched
                    .iter()
                    .flat_map(|d| files_under(d))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            plaintext_files(&watched),
            Vec::<PathBuf>::new(),
            "the attachment lies in plaintext on disk while it is submitted"
        );
        assert!(
            decoded.iter().all(|p| p.starts_with(&storage_tmp)),
            "decoded into {decoded:?}, not the store's temporary area"
        );

        // SIGKILL mid-upload: still no plaintext, and the sealed leftover is
        // removed by the next start.
        gw.kill_9();
        upload.abort();
        feeder.abort();
        assert_eq!(plaintext_files(&watched), Vec::<PathBuf>::new());
        gw.restart().await;
        assert_eq!(
            files_under(&storage_tmp),
            Vec::<PathBuf>::new(),
            "leftovers in the store's temporary area after a restart"
        );
        assert_eq!(
            files_under(&system_tmp),
            Vec::<PathBuf>::new(),
            "leftovers in the system's temporary folder after a restart"
        );

        // The whole package now: accepted, stored sealed, delivered intact.
        let a = gw.agency(A);
        let receipt = edxml::send_chunks(&a, "ban-lon-2", chunks.into_iter())
            .await
            .expect("the package is accepted");
        assert_eq!(receipt.message_id, "ban-lon-2");
        let b = gw.agency(B);
        let got = b.receive_all(0).await.unwrap();
        let d = got
            .iter()
            .find(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id == "ban-lon-2")
            .expect("B got the document");
        let env = decode_envelope(d.envelope.as_ref().unwrap());
        let Some(v1::envelope::Body::Document(doc)) = &env.body else {
            panic!("not a document")
        };
        let want = AttachmentSpec::bytes(
            "quyet-dinh.txt",
            "text/plain",
            PLAINTEXT
                .iter()
                .copied()
                .cycle()
                .take(SIZE as usize)
                .collect(),
        )
        .digest();
        assert_eq!(
            (doc.attachments[0].size, doc.attachments[0].sha256.as_ref()),
            (want.0, want.1.as_slice())
        );
        assert_eq!(
            b.fetch_attachment_sha256("ban-lon-2", A, 0).await.unwrap(),
            want
        );
        assert_eq!(plaintext_files(&watched), Vec::<PathBuf>::new());
        assert_eq!(files_under(&storage_tmp), Vec::<PathBuf>::new());
        assert_eq!(files_under(&system_tmp), Vec::<PathBuf>::new());
    })
    .await;
}
