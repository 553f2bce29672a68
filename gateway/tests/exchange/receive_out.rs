//! `lienthong receive --out DIR`: each document in DIR/<sender>/<message_id>/
//! (two senders may use the same message_id), its envelope beside an
//! `attachments/` folder, and no attachment name — `envelope.pb`, `../x`,
//! an absolute path, a repeated name — overwrites anything or leaves DIR.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lienthong_testkit::v1::{Envelope, SignedEnvelope};
use lienthong_testkit::*;
use prost::Message as _;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_documents_are_kept_apart_by_sender_and_attachments_stay_in_their_folder() {
    let Some(gw) = TestGateway::start("receive_out", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(180), "receive --out", async {
        let escaped = gw
            .dir
            .join(format!("escaped-{}.txt", uuid::Uuid::new_v4().simple()));
        let message_id = "cong-van-01";
        // A's document: names that would overwrite the envelope, climb out
        // of the folder, or be written elsewhere on the disk.
        let a_files = [
            ("envelope.pb", "tệp đính kèm tên envelope.pb"),
            ("package.edxml", "tệp đính kèm tên package.edxml"),
            ("../../thoat-ra.txt", "thoát ra ngoài"),
            (escaped.to_str().unwrap(), "đường dẫn tuyệt đối"),
            ("bao-cao.txt", "báo cáo thứ nhất"),
            ("BAO-CAO.TXT", "báo cáo thứ hai"),
            ("bao-cao.txt", "báo cáo thứ ba"),
        ];
        let specs: Vec<AttachmentSpec> = a_files
            .iter()
            .map(|(n, t)| AttachmentSpec::text(n, t))
            .collect();
        let a = gw.agency(A);
        let mut draft = a.draft_document(&[B], "Công văn của A", &specs);
        draft.envelope.message_id = message_id.into();
        a.send_draft(&draft).await.expect("A's document");
        // C's document, the same message_id.
        let c = gw.agency(C);
        let mut draft = c.draft_document(
            &[B],
            "Công văn của C",
            &[AttachmentSpec::text("envelope.pb", "tệp của C")],
        );
        draft.envelope.message_id = message_id.into();
        c.send_draft(&draft).await.expect("C's document");

        let out_dir = gw.dir.join("hop-thu-den");
        let out = gw
            .run_cli(&[
                "receive".as_ref(),
                "--as".as_ref(),
                B.as_ref(),
                "--ack".as_ref(),
                "--out".as_ref(),
                out_dir.as_os_str(),
            ])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");

        let mut expected: Vec<PathBuf> = Vec::new();
        for (sender, files) in [
            (A, a_files.to_vec()),
            (C, vec![("envelope.pb", "tệp của C")]),
        ] {
            let line = lines
                .iter()
                .find(|l| l["from"] == sender)
                .unwrap_or_else(|| panic!("no delivery from {sender}: {lines:#?}"));
            let folder = Path::new(sender).join(message_id);
            assert_eq!(
                PathBuf::from(line["saved_to"].as_str().unwrap()),
                out_dir.join(&folder)
            );
            // The envelope is the sender's own.
            let bytes = std::fs::read(out_dir.join(&folder).join("envelope.pb")).unwrap();
            let signed = SignedEnvelope::decode(bytes.as_slice()).expect("envelope.pb");
            let env = Envelope::decode(signed.payload.clone()).unwrap();
            assert_eq!(
                (env.from.as_str(), env.message_id.as_str()),
                (sender, message_id)
            );
            expected.push(folder.join("envelope.pb"));
            // Every attachment in attachments/, under a name of its own,
            // with its own bytes.
            let atts = line["attachments"].as_array().unwrap();
            assert_eq!(atts.len(), files.len());
            let mut names = BTreeMap::new();
            for (att, (name, text)) in atts.iter().zip(&files) {
                assert_eq!(att["name"], *name);
                let saved = att["saved_as"].as_str().expect("saved_as");
                let rel = folder.join(saved);
                assert!(
                    rel.starts_with(folder.join("attachments"))
                        && rel.components().count() == folder.components().count() + 2,
                    "{name:?} saved as {saved:?}"
                );
                assert_eq!(
                    std::fs::read_to_string(out_dir.join(&rel)).unwrap(),
                    *text,
                    "{name:?}"
                );
                assert!(
                    names.insert(saved.to_lowercase(), name).is_none(),
                    "{saved} twice"
                );
                expected.push(rel);
            }
        }
        expected.sort();
        assert_eq!(files_under(&out_dir), expected, "nothing else is written");
        assert!(!escaped.exists(), "an absolute name was written as such");
        assert!(!gw.dir.join("thoat-ra.txt").exists());
        assert!(!out_dir.join("thoat-ra.txt").exists());
    })
    .await;
}
