//! The national directory exchange between two gateways, H35 and H53, over
//! the real broker: each announces its own agencies and signing keys as
//! signed, numbered updates; the other applies them, refuses what is not
//! its peer's, and catches up after a stop.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lienthong_testkit::amqp::{self, CONTENT_TYPE_ENVELOPE, Client, EXCHANGE, Vhost};
use lienthong_testkit::v1;
use lienthong_testkit::*;
use prost::Message as _;

use crate::amqp::{BROKER, dead_letter_queue, reasons, receive_n};

/// Agencies of the second province, kept by the H53 gateway.
const P: &str = "000.00.01.H53";
const Q: &str = "000.00.12.H53";
const DIRECTORY: &str = "lienthong.directory";

/// `lienthong dev-pki` into `dir`, plus, from the same CA: P and Q's
/// signing certificates, each gateway's receipt certificate (what signs its
/// directory updates) and a stranger's.
fn two_province_pki(dir: &Path) {
    let out = StdCommand::new(bin_path())
        .arg("dev-pki")
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run lienthong dev-pki");
    assert!(out.status.success(), "{}", describe_output(&out));
    let ca = pki::Ca::load(&dir.join("ca.pem"), &dir.join("ca.key.pem"));
    let template = pki::load_cert_der(&dir.join(format!("{A}.pem")));
    let now = time::OffsetDateTime::now_utc();
    for id in [P, Q, "h35-gateway", "h53-gateway", "stranger"] {
        let key = rcgen::KeyPair::generate().expect("key");
        let (_, pem) = ca.reissue_pem(
            &template,
            &key,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        );
        std::fs::write(dir.join(format!("{id}.pem")), pem).expect("write cert");
        std::fs::write(dir.join(format!("{id}.key.pem")), key.serialize_pem()).expect("key");
    }
}

/// A gateway for `province` (its `gateway.id` too) whose peer is `peer`,
/// on the broker account of `url`.
async fn gateway(
    province: &str,
    peer: &str,
    url: &str,
    pki: &Path,
    backend: Backend,
    import_directory: bool,
) -> Option<TestGateway> {
    let me = province.to_lowercase();
    let other = peer.to_lowercase();
    // The province's own resources, as docs/amqp.md's least privileges
    // allow.
    let own = format!(
        "directory_interval_ms = 20\ndead_letter_exchange = \"lienthong.dead.{me}\"\n\
         agency_exchange = \"lienthong.agencies.{me}\"\ndirectory_queue = \"lienthong.directory.{me}\""
    );
    // The gateway's own copy of the PKI is where the test copied it.
    let extra = format!(
        r##"{amqp}
[receipts]
key = "pki/{me}-gateway.key.pem"
cert = "pki/{me}-gateway.pem"

[[peers]]
name = "{peer}"
codes = ["#.{peer}"]
cert = "pki/{other}-gateway.pem"
"##,
        amqp = amqp::config_with_url(url, province, &own),
    );
    TestGateway::start_with(
        &format!("dir-{me}"),
        GatewayOptions {
            backend,
            pki: Some(pki.to_path_buf()),
            import_directory,
            extra_config: extra,
            env: vec![("LIENTHONG_GATEWAY__ID".into(), province.into())],
            ..Default::default()
        },
    )
    .await
}

async fn cli_ok(gw: &TestGateway, args: &[&str]) -> String {
    let out = gw.run_cli(args).await;
    assert!(
        out.status.success(),
        "lienthong {}:\n{}",
        args.join(" "),
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Imports one CSV of `rows` (organ_id, name, signing cert file or "") at
/// `gw`, the certificates from its PKI directory.
async fn import(gw: &TestGateway, rows: &[(&str, &str, &str)]) {
    let mut csv = String::from("organ_id,name,parent,email,signing_cert\n");
    for (id, name, cert) in rows {
        csv.push_str(&format!("{id},{name},,,{cert}\n"));
    }
    let path = gw
        .pki_dir
        .join(format!("import-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(&path, csv).expect("write csv");
    cli_ok(gw, &["directory", "import", path.to_str().unwrap()]).await;
}

/// (code, name, active, source) of the H53 agencies `gw` holds, and the
/// keys bound to them.
async fn h53_directory(gw: &TestGateway) -> (Vec<(String, String, i64)>, Vec<(String, String)>) {
    let agencies = gw
        .sql_rows(
            "SELECT organ_id, name, CASE WHEN active THEN 1 ELSE 0 END AS active FROM agencies \
             WHERE organ_id LIKE '%.H53' ORDER BY organ_id",
        )
        .await
        .iter()
        .map(|r| {
            (
                r.try_get::<String>("organ_id").unwrap(),
                r.try_get::<String>("name").unwrap(),
                r.try_get::<i64>("active").unwrap(),
            )
        })
        .collect();
    let keys = gw
        .sql_rows(
            "SELECT organ_id, spki_sha256 FROM signing_certs WHERE organ_id LIKE '%.H53' \
             ORDER BY organ_id, spki_sha256",
        )
        .await
        .iter()
        .map(|r| {
            (
                r.try_get::<String>("organ_id").unwrap(),
                r.try_get::<String>("spki_sha256").unwrap(),
            )
        })
        .collect();
    (agencies, keys)
}

async fn applied_from(gw: &TestGateway, peer: &str) -> i64 {
    gw.sql_rows(&format!(
        "SELECT sequence FROM directory_peers WHERE peer = '{peer}'"
    ))
    .await
    .first()
    .map_or(0, |r| r.try_get::<i64>("sequence").unwrap())
}

async fn announced(gw: &TestGateway) -> i64 {
    gw.sql_rows("SELECT sequence FROM directory_publisher WHERE id = 1")
        .await[0]
        .try_get::<i64>("sequence")
        .unwrap()
}

/// Waits until `check` holds, polling; panics with `what` after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `gw` holds exactly what `publisher` keeps of the H53 agencies.
async fn same_h53_directory(gw: &TestGateway, publisher: &TestGateway) -> bool {
    h53_directory(gw).await == h53_directory(publisher).await
}

fn key_of(pem: &Path) -> String {
    let der = pki::load_cert_der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        cert.public_key().raw,
    ))
}

/// A directory message signed with `key_pem`, carrying `cert_pem`.
fn signed(payload_type: &str, payload: Vec<u8>, key_pem: &Path, cert_pem: &Path) -> Vec<u8> {
    let signer = Signer::from_pkcs8_pem_file(key_pem);
    let value = signer.sign(&pae(payload_type, &payload));
    v1::SignedDirectoryMessage {
        payload_type: payload_type.to_owned(),
        payload: payload.into(),
        signature: Some(v1::Signature {
            algorithm: signer.algorithm().to_owned(),
            value: value.into(),
            certificates: vec![pki::load_cert_der(cert_pem).into()],
        }),
    }
    .encode_to_vec()
}

fn update(sequence: u64, changes: Vec<v1::directory_change::Kind>) -> v1::DirectoryUpdate {
    v1::DirectoryUpdate {
        publisher: "H53".into(),
        sequence,
        issued_at: None,
        changes: changes
            .into_iter()
            .map(|k| v1::DirectoryChange { kind: Some(k) })
            .collect(),
        state_sha256: String::new(),
    }
}

fn renamed(id: &str, name: &str) -> v1::directory_change::Kind {
    v1::directory_change::Kind::AgencyChanged(v1::DirectoryEntry {
        organ_id: id.into(),
        name: name.into(),
        channel: "grpc".into(),
        active: true,
        ..Default::default()
    })
}

/// The digest a snapshot announces, as the gateways compute it.
fn state_sha256(entries: &[v1::DirectoryEntry]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for e in entries {
        let bytes = e.encode_to_vec();
        ctx.update(&(e.organ_id.len() as u64).to_be_bytes());
        ctx.update(e.organ_id.as_bytes());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    hex::encode(ctx.finish())
}

async fn q_active(gw: &TestGateway) -> Option<i64> {
    h53_directory(gw)
        .await
        .0
        .iter()
        .find(|(id, _, _)| id == Q)
        .map(|(_, _, a)| *a)
}

async fn refusals(gw: &TestGateway) -> Vec<(String, String)> {
    gw.sql_rows("SELECT reason, detail FROM events WHERE kind = 'directory_refused' ORDER BY id")
        .await
        .iter()
        .map(|r| {
            (
                r.try_get::<Option<String>>("reason")
                    .unwrap()
                    .unwrap_or_default(),
                r.try_get::<String>("detail").unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_bound_at_h53_is_accepted_at_h35_and_refused_once_unbound() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("directory") else {
        return;
    };
    let t = tempfile::Builder::new()
        .prefix("lienthong-e2e-directory-")
        .tempdir()
        .expect("temp dir");
    let pki_dir = t.path().join("pki");
    two_province_pki(&pki_dir);
    // The broker's operator declares the shared exchanges; each gateway
    // runs with the least privileges docs/amqp.md gives.
    let client = Client::connect(&vhost).await;
    for name in [EXCHANGE, DIRECTORY] {
        client
            .ch
            .exchange_declare(
                name.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the shared exchange");
    }
    let u53 = amqp::BrokerUser::province_gateway(&vhost, "H53");
    let u35 = amqp::BrokerUser::province_gateway(&vhost, "H35");
    let Some(g53) = gateway("H53", "H35", &u53.url, &pki_dir, Backend::Postgres, false).await
    else {
        return;
    };
    let Some(g35) = gateway("H35", "H53", &u35.url, &pki_dir, Backend::Sqlite, true).await else {
        return;
    };
    // A queue of the test's own sees every update H53 publishes.
    let capture = "test.capture.h53";
    client
        .ch
        .queue_declare(
            capture.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the capture queue");
    client
        .ch
        .queue_bind(
            capture.into(),
            DIRECTORY.into(),
            "update.H53".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the capture queue");

    // H53 adds Q with its key, then P, then binds P's key.
    import(&g53, &[(Q, "Sở Khoa học tỉnh H53", &format!("{Q}.pem"))]).await;
    import(&g53, &[(P, "Văn phòng UBND tỉnh H53", "")]).await;
    cli_ok(
        &g53,
        &["directory", "bind-cert", P, &format!("pki/{P}.pem")],
    )
    .await;
    let started = std::time::Instant::now();
    let p_key = key_of(&pki_dir.join(format!("{P}.pem")));
    until(
        Duration::from_secs(30),
        "H35 holds P's key from H53",
        || async {
            h53_directory(&g35)
                .await
                .1
                .contains(&(P.to_owned(), p_key.clone()))
        },
    )
    .await;
    eprintln!(
        "P's key reached H35 {:?} after it was bound at H53",
        started.elapsed()
    );
    assert!(same_h53_directory(&g35, &g53).await);
    let source = g35
        .sql_rows(&format!(
            "SELECT source FROM agencies WHERE organ_id = '{P}'"
        ))
        .await;
    assert_eq!(
        source[0]
            .try_get::<Option<String>>("source")
            .unwrap()
            .as_deref(),
        Some("H53"),
        "a foreign agency is marked with its source"
    );
    // The dashboard shows the peer, its last update and its lag.
    let op = g35.operator_session("Trực vận hành", "viewer").await;
    let peers = op.get("/api/peers").await.json();
    assert_eq!(peers[0]["name"], "H53", "{peers}");
    assert_eq!(peers[0]["codes"], "#.H53", "{peers}");
    assert_eq!(peers[0]["agencies"], 2, "{peers}");
    assert_eq!(peers[0]["lag"], 0, "{peers}");
    assert_eq!(
        peers[0]["applied_sequence"].as_i64(),
        Some(applied_from(&g35, "H53").await),
        "{peers}"
    );
    assert!(peers[0]["applied_at"].as_i64().unwrap() > 0, "{peers}");
    assert!(op.get("/").await.text().contains("id=\"peers\""));

    // P's document, sent at H53, is accepted at H35 and reaches B.
    let b = g35.agency(B);
    let sent = g53
        .agency(P)
        .send_document(&[B], "Văn bản từ tỉnh H53", &[])
        .await
        .expect("P sends to B");
    let got = receive_n(&b, 1, Duration::from_secs(30)).await;
    assert_eq!(
        decode_envelope(got[0].envelope.as_ref().unwrap()).message_id,
        sent.message_id()
    );
    // Every change H35 applied is a line of its transfer log.
    let applied = g35
        .sql_rows(&format!(
            "SELECT detail FROM events WHERE kind = 'directory_changed' AND actor = 'peer H53' \
             AND sender = '{P}'"
        ))
        .await;
    assert!(
        applied.iter().any(|r| r
            .try_get::<String>("detail")
            .unwrap()
            .contains(&format!("signing key {p_key} bound to {P}"))),
        "{applied:?}"
    );

    // H53 unbinds P's key: H35 refuses the next document signed with it.
    cli_ok(
        &g53,
        &["directory", "unbind-cert", P, &format!("pki/{P}.pem")],
    )
    .await;
    until(Duration::from_secs(30), "H35 drops P's key", || async {
        !h53_directory(&g35).await.1.iter().any(|(id, _)| id == P)
    })
    .await;
    let p = g35.agency(P);
    let draft = p.draft_document(&[B], "Sau khi thu hồi khóa", &[]);
    amqp::amqp_publish(
        &vhost.url,
        EXCHANGE,
        B,
        CONTENT_TYPE_ENVELOPE,
        &p.sign(&draft.envelope).encode_to_vec(),
    )
    .await;
    let dls = client
        .take(&dead_letter_queue("H35"), 1, Duration::from_secs(30))
        .await;
    let why = reasons(&dls);
    assert!(
        why.values().any(|(r, _)| r == "CERTIFICATE_NOT_BOUND"),
        "{why:?}"
    );

    // H35's operator cannot edit H53's entries.
    for args in [
        vec!["directory", "deactivate", P],
        vec!["directory", "bind-cert", P, &format!("pki/{P}.pem")],
    ] {
        let out = g35.run_cli(&args).await;
        assert!(!out.status.success(), "{}", describe_output(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("kept by the gateway H53"), "{err}");
    }
    let csv = g35.pki_dir.join("takeover.csv");
    std::fs::write(&csv, format!("organ_id,name\n{P},Chiếm quyền\n")).unwrap();
    let out = g35
        .run_cli(&["directory", "import", csv.to_str().unwrap()])
        .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
    let before = h53_directory(&g35).await;
    assert_eq!(before, h53_directory(&g53).await);

    // Updates that are not H53's, or not new, or not well formed.
    let n = applied_from(&g35, "H53").await as u64;
    let own = |name: &str| pki_dir.join(name);
    let forged = update(n + 1, vec![renamed(Q, "Giả mạo")]).encode_to_vec();
    let ty = v1::DIRECTORY_UPDATE_PAYLOAD_TYPE;
    let mut bodies: Vec<(&str, Vec<u8>)> = vec![
        (
            "update.H53",
            signed(
                ty,
                forged.clone(),
                &own("h35-gateway.key.pem"),
                &own("h35-gateway.pem"),
            ),
        ),
        (
            "update.H53",
            signed(
                ty,
                forged.clone(),
                &own("stranger.key.pem"),
                &own("stranger.pem"),
            ),
        ),
    ];
    // H53's real first update, again.
    let old = client.take(capture, 1, Duration::from_secs(10)).await;
    assert_eq!(old.len(), 1, "the capture queue has H53's updates");
    bodies.push(("update.H53", old[0].data.clone()));
    let h53_key = own("h53-gateway.key.pem");
    let h53_cert = own("h53-gateway.pem");
    bodies.push((
        "update.H53",
        signed(
            ty,
            update(n + 1, vec![renamed(B, "Không phải của H53")]).encode_to_vec(),
            &h53_key,
            &h53_cert,
        ),
    ));
    // A change of a kind this gateway does not know (field 7 of the oneof).
    let mut unknown = update(n + 1, vec![]).encode_to_vec();
    unknown.extend_from_slice(&[0x22, 0x02, 0x3a, 0x00]);
    bodies.push(("update.H53", signed(ty, unknown, &h53_key, &h53_cert)));
    bodies.push(("update.H53", b"\xffnot a directory message".to_vec()));
    // A snapshot at the sequence applied, saying something else.
    let lie = vec![v1::DirectoryEntry {
        organ_id: Q.into(),
        name: "Không khớp".into(),
        channel: "grpc".into(),
        active: true,
        ..Default::default()
    }];
    let snapshot = v1::DirectorySnapshot {
        publisher: "H53".into(),
        sequence: n,
        issued_at: None,
        state_sha256: state_sha256(&lie),
        entries: lie,
    };
    bodies.push((
        "snapshot.H35",
        signed(
            v1::DIRECTORY_SNAPSHOT_PAYLOAD_TYPE,
            snapshot.encode_to_vec(),
            &h53_key,
            &h53_cert,
        ),
    ));
    for (key, body) in &bodies {
        // An independent client (amqp-tools) publishes them.
        amqp::amqp_publish(&vhost.url, DIRECTORY, key, "application/octet-stream", body).await;
    }
    let expected = [
        "BAD_SIGNATURE",
        "BAD_SIGNATURE",
        "STALE_UPDATE",
        "OUTSIDE_AUTHORITY",
        "UNKNOWN_UPDATE_KIND",
        "MALFORMED",
        "SNAPSHOT_CONTRADICTS",
    ];
    until(
        Duration::from_secs(30),
        "H35 logs a refusal for each",
        || async { refusals(&g35).await.len() >= expected.len() },
    )
    .await;
    let got = refusals(&g35).await;
    let codes: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(codes, expected, "{got:#?}");
    assert!(got[0].1.contains("H53"), "{got:?}");
    assert!(got[3].1.contains(B), "{got:?}");
    assert_eq!(
        h53_directory(&g35).await,
        before,
        "the directory is unchanged"
    );
    assert_eq!(applied_from(&g35, "H53").await as u64, n);

    // H35 blocks Q locally: deactivated, logged, whatever H53 says; lifted,
    // H53's snapshot brings it back.
    cli_ok(&g35, &["directory", "block", Q, "--reason", "thư rác"]).await;
    assert_eq!(q_active(&g35).await, Some(0));
    let line = g35
        .sql_rows(&format!(
            "SELECT detail FROM events WHERE kind = 'directory_changed' AND sender = '{Q}' \
             ORDER BY id DESC LIMIT 1"
        ))
        .await;
    assert!(
        line[0]
            .try_get::<String>("detail")
            .unwrap()
            .contains("blocked here"),
        "{line:?}"
    );
    import(
        &g53,
        &[(Q, "Sở Khoa học và Công nghệ tỉnh H53", &format!("{Q}.pem"))],
    )
    .await;
    until(
        Duration::from_secs(30),
        "H35 applies Q's new name",
        || async {
            h53_directory(&g35)
                .await
                .0
                .iter()
                .any(|(id, name, _)| id == Q && name.contains("Công nghệ"))
        },
    )
    .await;
    assert_eq!(q_active(&g35).await, Some(0), "still blocked");
    cli_ok(&g35, &["directory", "unblock", Q]).await;
    until(
        Duration::from_secs(40),
        "the snapshot restores Q",
        || async { same_h53_directory(&g35, &g53).await },
    )
    .await;
    drop((u35, u53));
    drop(vhost);
    drop(t);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_stopped_while_its_peer_publishes_500_updates_catches_up() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("directory-catch-up") else {
        return;
    };
    let t = tempfile::Builder::new()
        .prefix("lienthong-e2e-directory-")
        .tempdir()
        .expect("temp dir");
    let pki_dir: PathBuf = t.path().join("pki");
    two_province_pki(&pki_dir);
    let Some(g53) = gateway("H53", "H35", &vhost.url, &pki_dir, Backend::Sqlite, false).await
    else {
        return;
    };
    let Some(mut g35) = gateway("H35", "H53", &vhost.url, &pki_dir, Backend::Postgres, true).await
    else {
        return;
    };
    // Q was entered at H35 by hand, as before the directory exchange: H53's
    // first update takes it over.
    import(&g35, &[(Q, "Sở Khoa học (nhập tay)", &format!("{Q}.pem"))]).await;
    import(&g53, &[(Q, "Sở Khoa học tỉnh H53", &format!("{Q}.pem"))]).await;
    until(Duration::from_secs(30), "H35 holds Q", || async {
        same_h53_directory(&g35, &g53).await && !h53_directory(&g35).await.0.is_empty()
    })
    .await;
    let taken = g35
        .sql_rows(&format!(
            "SELECT a.source, e.detail FROM agencies a JOIN events e ON e.sender = a.organ_id \
             WHERE a.organ_id = '{Q}' AND e.kind = 'directory_changed' AND e.actor = 'peer H53' \
             AND e.detail LIKE '%taken over%'"
        ))
        .await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(
        taken[0]
            .try_get::<Option<String>>("source")
            .unwrap()
            .as_deref(),
        Some("H53")
    );

    // Changes at H53 until it has published `count` more updates.
    async fn publish_updates(g53: &TestGateway, count: i64, round: usize) {
        let target = announced(g53).await + count;
        let mut k = 0usize;
        while announced(g53).await < target {
            for _ in 0..20 {
                k += 1;
                let verb = if !k.is_multiple_of(2) {
                    "deactivate"
                } else {
                    "activate"
                };
                cli_ok(g53, &["directory", verb, Q]).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if k.is_multiple_of(100) {
                let id = format!("000.00.{}.H53", 40 + round * 10 + k / 100);
                import(g53, &[(&id, &format!("Phòng số {k} tỉnh H53"), "")]).await;
            }
        }
        until(
            Duration::from_secs(30),
            "H53 publishes what it recorded",
            || async {
                g53.sql_rows(
                    "SELECT COUNT(*) AS n FROM directory_publications WHERE published_at IS NULL",
                )
                .await[0]
                    .try_get::<i64>("n")
                    .unwrap()
                    == 0
            },
        )
        .await;
    }

    // 250 updates while H35 is stopped: its queue keeps them, in order.
    g35.stop();
    publish_updates(&g53, 250, 0).await;
    g35.restart().await;
    let started = std::time::Instant::now();
    until(
        Duration::from_secs(60),
        "H35 replays 250 updates",
        || async { applied_from(&g35, "H53").await == announced(&g53).await },
    )
    .await;
    eprintln!(
        "H35 replayed 250 updates {:?} after its start",
        started.elapsed()
    );
    assert!(same_h53_directory(&g35, &g53).await);

    // 250 more, and its queue lost meanwhile: the next update shows the
    // gap, and H53's snapshot fills it.
    g35.stop();
    publish_updates(&g53, 250, 1).await;
    let client = Client::connect(&vhost).await;
    client
        .ch
        .queue_purge(
            "lienthong.directory.h35".into(),
            QueuePurgeOptions::default(),
        )
        .await
        .expect("purge H35's directory queue");
    g35.restart().await;
    import(&g53, &[(P, "Văn phòng UBND tỉnh H53", &format!("{P}.pem"))]).await;
    let started = std::time::Instant::now();
    until(
        Duration::from_secs(60),
        "H35 catches up by a snapshot",
        || async {
            applied_from(&g35, "H53").await == announced(&g53).await
                && same_h53_directory(&g35, &g53).await
        },
    )
    .await;
    eprintln!(
        "H35 caught up by a snapshot {:?} after H53's next update",
        started.elapsed()
    );
    let asked = refusals(&g35).await;
    assert!(
        asked.iter().any(|(r, _)| r == "SNAPSHOT_ASKED"),
        "H35 asked for a snapshot: {asked:?}"
    );
    let (agencies, keys) = h53_directory(&g35).await;
    assert!(agencies.len() >= 4, "{agencies:?}");
    assert_eq!(keys.len(), 2, "{keys:?}");
    drop(vhost);
    drop(t);
}
