//! The agency directory: `directory import` validates every row first and
//! imports nothing when one is bad (unless `--skip-invalid`); a running
//! gateway sees changes within 5 s; `directory bind-cert`; `Directory.Lookup`
//! and `Directory.List`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lienthong_testkit::*;
use tonic::Code;

const D45: &str = "000.00.45.H35";
const D46: &str = "000.00.46.H35";
const BAD1: &str = "000.1137.H35";
const BAD2: &str = "000.00.4X.H35";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_import_bind_and_lookup() {
    let Some(gw) = TestGateway::start("directory", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(300),
        "the directory scenario",
        directory(&gw),
    )
    .await;
}

/// Whether `text` points at line `n` (English or Vietnamese wording, or file:line).
fn mentions_line(text: &str, n: usize) -> bool {
    let t = text.to_lowercase();
    [
        format!("line {n}"),
        format!("line: {n}"),
        format!("line={n}"),
        format!("\"line\":{n}"),
        format!("\"line\": {n}"),
        format!("dòng {n}"),
        format!("row {n}"),
        format!(".csv:{n}"),
    ]
    .iter()
    .any(|p| {
        t.match_indices(p.as_str()).any(|(i, _)| {
            // not "line 30" when looking for "line 3"
            !t[i + p.len()..].starts_with(|c: char| c.is_ascii_digit())
        })
    })
}

/// organ_ids in `lienthong directory list --json` (a JSON array, or one object per line).
async fn listed(gw: &TestGateway) -> Vec<String> {
    let out = gw.run_cli(&["directory", "list", "--json"]).await;
    assert!(
        out.status.success(),
        "`directory list --json` failed:\n{}",
        describe_output(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let values: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(v)) => v,
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("`directory list --json` printed a line that is not JSON ({e}): {l}")
                })
            })
            .collect(),
    };
    values
        .iter()
        .map(|v| {
            v["organ_id"]
                .as_str()
                .unwrap_or_else(|| panic!("`directory list --json` entry without organ_id: {v}"))
                .to_string()
        })
        .collect()
}

async fn directory(gw: &TestGateway) {
    let a = gw.agency(A);

    // --- Lookup / List on the dev-pki directory ------------------------------
    let rec = a
        .lookup(A)
        .await
        .unwrap_or_else(|s| panic!("Lookup({A}): {s:?}"));
    assert_eq!(rec.organ_id, A);
    assert!(!rec.name.trim().is_empty(), "Lookup({A}): empty name");
    assert_eq!(rec.parent, PROVINCE, "Lookup({A}).parent");
    assert!(rec.active, "Lookup({A}): not active");
    let err = a
        .lookup("000.00.99.H35")
        .await
        .expect_err("Lookup of an unknown agency succeeded");
    assert_eq!(err.code(), Code::NotFound, "Lookup(unknown): {err:?}");
    let err = a
        .lookup("not-an-id")
        .await
        .expect_err("Lookup of a malformed id succeeded");
    // Strictness about codes is a policy (test systems use ids like vxp.saas.03):
    // either answer is fine, as long as it is a clear refusal.
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::NotFound) && reason_of(&err).is_some(),
        "Lookup(malformed): {err:?}"
    );

    let all = a.list_all("").await.unwrap();
    let mut ids: Vec<_> = all.iter().map(|x| x.organ_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![PROVINCE, A, B, C],
        "List(all) on the dev-pki directory"
    );
    let under_a = a.list_all(A).await.unwrap();
    assert_eq!(
        under_a
            .iter()
            .map(|x| x.organ_id.as_str())
            .collect::<Vec<_>>(),
        vec![A],
        "List(under {A}): A has no children"
    );
    // Paging with page_size 2 gives everyone once.
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let r = a
            .directory()
            .list(a.request(v1::ListRequest {
                under: String::new(),
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.agencies.len() <= 2,
            "List(page_size 2) returned {} agencies",
            r.agencies.len()
        );
        paged.extend(r.agencies.into_iter().map(|x| x.organ_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    paged.sort();
    assert_eq!(paged, vec![PROVINCE, A, B, C], "List paged by 2");

    // --- import with bad rows: refused, each bad row named, nothing imported --
    let csv = gw.dir.join("them-co-quan.csv");
    std::fs::write(
        &csv,
        format!(
            "organ_id,name,parent,email\n\
             {D45},UBND huyện Thử Nghiệm,{PROVINCE},ubnd45@example.invalid\n\
             {BAD1},Dòng sai mã định danh,{PROVINCE},\n\
             {D46},Sở Thử Nghiệm,{PROVINCE},so46@example.invalid\n\
             {BAD2},Dòng sai thứ hai,{PROVINCE},\n"
        ),
    )
    .unwrap();
    let out = gw
        .run_cli(&["directory".as_ref(), "import".as_ref(), csv.as_os_str()])
        .await;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "`directory import` of a file with bad rows exited 0:\n{}",
        describe_output(&out)
    );
    assert!(
        mentions_line(&text, 3) && mentions_line(&text, 5),
        "`directory import` must report each bad row with its line number (3 and 5):\n{text}"
    );
    assert!(
        text.contains(BAD1) || text.contains("000.1137"),
        "`directory import` does not show the bad value {BAD1}:\n{text}"
    );
    let now = listed(gw).await;
    assert!(
        !now.iter().any(|x| x == D45 || x == D46),
        "a refused import still imported rows: {now:?}"
    );

    // --- with --skip-invalid the good rows go in --------------------------------
    let out = gw
        .run_cli(&[
            "directory".as_ref(),
            "import".as_ref(),
            csv.as_os_str(),
            "--skip-invalid".as_ref(),
        ])
        .await;
    assert!(
        out.status.success(),
        "`directory import --skip-invalid` failed:\n{}",
        describe_output(&out)
    );
    let imported_at = Instant::now();
    let now = listed(gw).await;
    assert!(
        now.iter().any(|x| x == D45) && now.iter().any(|x| x == D46),
        "good rows missing: {now:?}"
    );
    assert!(
        !now.iter().any(|x| x.contains("1137") || x == BAD2),
        "bad rows imported: {now:?}"
    );

    // --- the running gateway sees the new agency within 5 s ------------------
    let deadline = imported_at + Duration::from_secs(5);
    let sent = loop {
        match a
            .send_document(
                &[D45],
                "Gửi đơn vị mới",
                &[AttachmentSpec::text("ghi-chu.txt", "Xin chào")],
            )
            .await
        {
            Ok(s) => break s,
            Err(s)
                if reason_of(&s).as_deref() == Some("UNKNOWN_RECIPIENT")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!(
                "a send to {D45} {:?} after it was imported: {s:?} ({:?}); the running gateway must see \
                 directory changes within 5 s",
                imported_at.elapsed(),
                reason_of(&s)
            ),
        }
    };
    eprintln!("new agency visible after {:?}", imported_at.elapsed());
    let rec = a
        .lookup(D45)
        .await
        .unwrap_or_else(|s| panic!("Lookup({D45}) after import: {s:?}"));
    assert_eq!(rec.name, "UBND huyện Thử Nghiệm");
    assert_eq!(rec.parent, PROVINCE);
    assert_eq!(rec.email, "ubnd45@example.invalid");
    let mut under: Vec<_> = a
        .list_all(PROVINCE)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.organ_id)
        .collect();
    under.sort();
    let mut want: Vec<String> = [PROVINCE, A, B, C, D45, D46]
        .iter()
        .map(|s| s.to_string())
        .collect();
    want.sort();
    assert_eq!(under, want, "List(under {PROVINCE}) after the import");

    // --- bind-cert: D45 gets a signing certificate and can send ------------------
    let dev_ca = pki::Ca::load(&gw.pki_dir.join("ca.pem"), &gw.pki_dir.join("ca.key.pem"));
    let (kp, signer) = pki::fresh_key();
    let (der, pem) = dev_ca.reissue_pem(
        &pki::template_for(D45, "UBND huyện Thử Nghiệm"),
        &kp,
        pki::date_time_ymd(2025, 1, 1),
        pki::date_time_ymd(2040, 1, 1),
    );
    let d45 = Agency::new(gw.grpc_addr, D45, Arc::new(signer), vec![der]);
    // Before binding, its certificate is not bound to it.
    let err = d45
        .send_status(A, &sent.document().document_id, "01")
        .await
        .expect_err("an unbound certificate was accepted");
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("CERTIFICATE_NOT_BOUND"),
        "{err:?}"
    );
    let cert_path = gw.dir.join("d45.pem");
    std::fs::write(&cert_path, pem).unwrap();
    let out = gw
        .run_cli(&[
            "directory".as_ref(),
            "bind-cert".as_ref(),
            D45.as_ref(),
            cert_path.as_os_str(),
        ])
        .await;
    assert!(
        out.status.success(),
        "`directory bind-cert` failed:\n{}",
        describe_output(&out)
    );
    let bound_at = Instant::now();
    loop {
        match d45.send_status(A, &sent.document().document_id, "01").await {
            Ok(_) => break,
            Err(s) if bound_at.elapsed() < Duration::from_secs(5) => {
                let _ = s;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!(
                "{D45} still cannot send 5 s after `directory bind-cert`: {s:?} ({:?})",
                reason_of(&s)
            ),
        }
    }
    // D45 got A's document; A gets D45's status.
    let inbox = d45.receive_all(0).await.unwrap();
    assert_eq!(inbox.len(), 1, "{D45} should have A's document");
    assert_eq!(
        decode_envelope(inbox[0].envelope.as_ref().unwrap()).message_id,
        sent.message_id()
    );
    let inbox_a = a.receive_all(0).await.unwrap();
    assert_eq!(inbox_a.len(), 1, "A should have {D45}'s status");
}
