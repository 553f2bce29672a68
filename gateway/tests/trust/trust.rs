//! Trust, given and taken back: a receipt is proof only when a gateway's
//! receipt certificate signed it; an operator unbinds a signing or client
//! certificate, or deactivates an agency, with the command line while the
//! gateway runs, and the next call — and a `Receive` stream already under
//! way — feels it; every change is a line of the transfer log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use lienthong_proto::v1::{self as pb, ReceiveRequest, SendReceipt};
use lienthong_testkit::*;
use prost::Message as _;
use tonic::Code;

/// The subject of a certificate file's leaf, as the gateway writes it.
fn subject_of(path: &Path) -> String {
    let der = pki::load_cert_der(path);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.subject().to_string()
}

/// SHA-256 of a certificate file's key (what bindings are keyed by).
fn key_sha256(path: &Path) -> String {
    let der = pki::load_cert_der(path);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(sha256(cert.public_key().raw))
}

async fn cli_ok(gw: &TestGateway, args: &[&str]) -> String {
    let out = gw.run_cli(args).await;
    assert!(
        out.status.success(),
        "`lienthong {}` failed:\n{}",
        args.join(" "),
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lienthong directory history [ORGAN_ID] --json`, newest first.
async fn history(gw: &TestGateway, organ_id: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["directory", "history", "--json"];
    args.extend(organ_id);
    cli_ok(gw, &args)
        .await
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The newest history line about `organ_id` says `words`, names the OS
/// user who ran the command (`cli:…`) and the transport.
async fn logged(gw: &TestGateway, organ_id: &str, words: &[&str]) -> serde_json::Value {
    let lines = history(gw, Some(organ_id)).await;
    let newest = lines
        .first()
        .unwrap_or_else(|| panic!("no directory_changed line about {organ_id}"))
        .clone();
    let detail = newest["detail"].as_str().unwrap_or_default();
    for w in words {
        assert!(detail.contains(w), "the line should say {w:?}: {newest}");
    }
    assert!(
        newest["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("cli:") && a.len() > 4),
        "the line should name who ran the command: {newest}"
    );
    assert_eq!(newest["transport"], "cli", "{newest}");
    assert!(
        !newest["at"].as_str().unwrap_or_default().is_empty(),
        "{newest}"
    );
    newest
}

async fn log_intact(gw: &TestGateway) {
    let out = cli_ok(gw, &["log", "verify"]).await;
    assert!(out.contains("intact"), "{out}");
}

/// Signs a receipt's payload with another key, as a forger holding an
/// agency's signing key (trusted by the same anchors) would.
fn resign(receipt: &SendReceipt, key: &Path, cert: &Path) -> SendReceipt {
    let signer = Signer::from_pkcs8_pem_file(key);
    let pae = pae(pb::RECEIPT_PAYLOAD_TYPE, &receipt.receipt_payload);
    let mut forged = receipt.clone();
    forged.signature = Some(pb::Signature {
        algorithm: signer.algorithm().to_owned(),
        value: signer.sign(&pae).into(),
        certificates: pki::load_certs_der(cert)
            .into_iter()
            .map(Into::into)
            .collect(),
    });
    forged
}

async fn verify_receipt(gw: &TestGateway, receipt: &SendReceipt, name: &str) -> serde_json::Value {
    let path = gw.dir.join(name);
    std::fs::write(&path, receipt.encode_to_vec()).unwrap();
    let out = gw
        .run_cli(&["verify-receipt".as_ref(), path.as_os_str()])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "verify-receipt printed no JSON ({e}):\n{}",
            describe_output(&out)
        )
    });
    assert_eq!(
        out.status.success(),
        v["valid"] == true,
        "the exit status should follow the verdict:\n{}",
        describe_output(&out)
    );
    v
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn append_config(gw: &TestGateway, text: &str) {
    let mut config = std::fs::read_to_string(&gw.config_path).unwrap();
    config.push_str(text);
    std::fs::write(&gw.config_path, config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_is_proof_only_when_a_gateways_receipt_certificate_signed_it() {
    let Some(mut gw) = TestGateway::start("trust_receipts", Backend::Sqlite).await else {
        return;
    };
    let pki_dir = gw.pki_dir.clone();
    append_config(
        &gw,
        &format!(
            "\n[receipts]\nkey = {}\ncert = {}\n",
            toml_path(&pki_dir.join("gateway.key.pem")),
            toml_path(&pki_dir.join("gateway.pem")),
        ),
    );
    gw.restart().await;
    within(Duration::from_secs(180), "the receipt checks", async {
        let sent = gw
            .agency(A)
            .send_document(&[B], "Công văn có biên nhận", &[])
            .await
            .expect("A sends");
        assert!(sent.receipt.signature.is_some(), "the receipt is signed");

        // The gateway's own receipt verifies.
        let own = verify_receipt(&gw, &sent.receipt, "own.pb").await;
        assert_eq!(own["valid"], true, "{own}");
        assert_eq!(
            own["signed_by"],
            subject_of(&pki_dir.join("gateway.pem")),
            "{own}"
        );

        // The same receipt signed with A's own key: a valid signature, a
        // certificate that chains to trust.anchors — and no proof at all.
        let a_cert = pki_dir.join(format!("{A}.pem"));
        let forged = resign(
            &sent.receipt,
            &pki_dir.join(format!("{A}.key.pem")),
            &a_cert,
        );
        let v = verify_receipt(&gw, &forged, "forged.pb").await;
        assert_eq!(
            v["valid"], false,
            "an agency's signature is no receipt: {v}"
        );
        assert_eq!(v["reason"], "CERTIFICATE_NOT_BOUND", "{v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&subject_of(&a_cert)) && error.contains(&key_sha256(&a_cert)),
            "the sentence should say whose signature it is: {error}"
        );
        assert!(
            error.contains(&subject_of(&pki_dir.join("gateway.pem"))),
            "the sentence should say what would be accepted: {error}"
        );

        // A peer gateway's receipt certificate (same national CA), named in
        // receipts.trusted_signers: its receipts verify; before it is
        // named, they do not.
        let ca = pki::Ca::load(&pki_dir.join("ca.pem"), &pki_dir.join("ca.key.pem"));
        let (peer_key, _) = pki::fresh_key();
        let now = time::OffsetDateTime::now_utc();
        let (_, peer_pem) = ca.reissue_pem(
            &pki::template_for("000.00.00.H53", "Cổng liên thông tỉnh Tây Ninh"),
            &peer_key,
            now - time::Duration::days(1),
            now + time::Duration::days(365),
        );
        let peer_cert = gw.dir.join("peer-gateway.pem");
        let peer_key_path = gw.dir.join("peer-gateway.key.pem");
        std::fs::write(&peer_cert, &peer_pem).unwrap();
        std::fs::write(&peer_key_path, peer_key.serialize_pem()).unwrap();
        let from_peer = resign(&sent.receipt, &peer_key_path, &peer_cert);
        let before = verify_receipt(&gw, &from_peer, "peer.pb").await;
        assert_eq!(before["valid"], false, "{before}");
        append_config(
            &gw,
            &format!("trusted_signers = [{}]\n", toml_path(&peer_cert)),
        );
        let after = verify_receipt(&gw, &from_peer, "peer.pb").await;
        assert_eq!(after["valid"], true, "{after}");
        assert_eq!(after["signed_by"], subject_of(&peer_cert), "{after}");
        let still = verify_receipt(&gw, &forged, "forged.pb").await;
        assert_eq!(still["valid"], false, "{still}");
        let own = verify_receipt(&gw, &sent.receipt, "own.pb").await;
        assert_eq!(own["valid"], true, "{own}");
    })
    .await;
}

async fn mtls_gateway(name: &str) -> Option<TestGateway> {
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    TestGateway::start_with(name, opts).await
}

/// A second signing certificate of `organ_id`'s own key type, issued by the
/// dev CA, written beside the PKI and bound while the gateway runs.
async fn second_signing_cert(gw: &TestGateway, organ_id: &str) -> (Agency, PathBuf) {
    let pki_dir = &gw.pki_dir;
    let ca = pki::Ca::load(&pki_dir.join("ca.pem"), &pki_dir.join("ca.key.pem"));
    let (kp, signer) = pki::fresh_key();
    let now = time::OffsetDateTime::now_utc();
    let (der, pem) = ca.reissue_pem(
        &pki::load_cert_der(&pki_dir.join(format!("{organ_id}.pem"))),
        &kp,
        now - time::Duration::days(1),
        now + time::Duration::days(365),
    );
    let path = gw.dir.join(format!("{organ_id}.second.pem"));
    std::fs::write(&path, pem).unwrap();
    cli_ok(
        gw,
        &["directory", "bind-cert", organ_id, path.to_str().unwrap()],
    )
    .await;
    let a = gw.agency(organ_id).with_key(Arc::new(signer), vec![der]);
    (a, path)
}

/// The gateway keeps a signer's verified chain from one document to the
/// next, and a revocation list read again drops it: once the CA's list in
/// `trust.crls` names A's signing certificate, A's next document is refused
/// as revoked (naming the certificate and the reason) while B goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_certificate_revoked_after_its_chain_was_kept_is_refused() {
    let Some(pki) = openssl_pki("trust_signing_revoked") else {
        return;
    };
    let crl = pki.path().join("intermediate.crl.pem");
    crate::mtls::publish_crl(pki.path(), &crl, None);
    let opts = GatewayOptions {
        pki: Some(pki.path().to_path_buf()),
        extra_trust: format!("crls = [\"{}\"]\n", crl.display()),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("trust_signing_revoked", opts).await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "a signing certificate revoked",
        async {
            let a = gw.agency(A);
            let b = gw.agency(B);
            // Two documents: the second is judged with the chain kept.
            for subject in ["Trước khi bị thu hồi", "Lần thứ hai"] {
                a.send_document(&[B], subject, &[])
                    .await
                    .expect("A's certificate is good for now");
            }

            // The CA revokes A's signing certificate and publishes its list.
            crate::mtls::revoke(pki.path(), &crl, &format!("{A}.leaf.pem"));

            // The gateway reads the list again within seconds.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let err = loop {
                match a.send_document(&[B], "Sau khi bị thu hồi", &[]).await {
                    Err(e) => break e,
                    Ok(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Ok(_) => panic!("a document signed with A's revoked certificate is accepted"),
                }
            };
            assert_eq!(
                reason_of(&err).as_deref(),
                Some("CERTIFICATE_REVOKED"),
                "{err:?}"
            );
            assert!(
                err.message().contains("was revoked") && err.message().contains("keyCompromise"),
                "{}",
                err.message()
            );
            b.send_document(&[A], "Vẫn gửi được", &[])
                .await
                .expect("B's certificate is not on the list");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_signing_certificate_signs_nothing_more() {
    let Some(gw) = TestGateway::start("trust_unbind_cert", Backend::Sqlite).await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "unbinding a signing certificate",
        async {
            let first = gw.agency(A);
            let first_cert = gw.pki_dir.join(format!("{A}.pem"));
            let (second, second_cert) = second_signing_cert(&gw, A).await;
            logged(
                &gw,
                A,
                &["signing certificate bound", &key_sha256(&second_cert)],
            )
            .await;
            first
                .send_document(&[B], "trước khi thu hồi", &[])
                .await
                .expect("A's first certificate is bound");

            // Another process (this command line) takes the first certificate
            // back; the running gateway refuses what it signs from the next
            // submission on.
            let out = cli_ok(
                &gw,
                &["directory", "unbind-cert", A, first_cert.to_str().unwrap()],
            )
            .await;
            assert!(out.contains(&key_sha256(&first_cert)), "{out}");
            let err = first
                .send_document(&[B], "ký bằng chứng thư đã thu hồi", &[])
                .await
                .expect_err("a document signed with an unbound certificate");
            assert_eq!(
                reason_of(&err).as_deref(),
                Some("CERTIFICATE_NOT_BOUND"),
                "{err:?}"
            );
            second
                .send_document(&[B], "ký bằng chứng thư còn lại", &[])
                .await
                .expect("A's other certificate is still bound");
            logged(
                &gw,
                A,
                &[
                    "signing certificate unbound",
                    &key_sha256(&first_cert),
                    &subject_of(&first_cert),
                ],
            )
            .await;

            // The key form; and a certificate bound to someone else is not
            // taken from them by mistake.
            let b_cert = gw.pki_dir.join(format!("{B}.pem"));
            let out = gw
                .run_cli(&["directory", "unbind-cert", A, b_cert.to_str().unwrap()])
                .await;
            assert!(!out.status.success(), "{}", describe_output(&out));
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains(&format!("bound to {B}")), "{said}");
            gw.agency(B)
                .send_document(&[A], "B vẫn ký được", &[])
                .await
                .expect("B's certificate stays bound");
            cli_ok(
                &gw,
                &[
                    "directory",
                    "unbind-cert",
                    A,
                    "--key",
                    &key_sha256(&second_cert),
                ],
            )
            .await;
            let err = second
                .send_document(&[B], "không còn chứng thư nào", &[])
                .await
                .expect_err("no certificate of A is bound any more");
            assert_eq!(
                reason_of(&err).as_deref(),
                Some("CERTIFICATE_NOT_BOUND"),
                "{err:?}"
            );
            let certs = cli_ok(&gw, &["directory", "certs", A]).await;
            assert!(!certs.contains("signing "), "{certs}");

            // A mistake is undone by binding again.
            cli_ok(
                &gw,
                &["directory", "bind-cert", A, first_cert.to_str().unwrap()],
            )
            .await;
            first
                .send_document(&[B], "bound again", &[])
                .await
                .expect("bound again");
            log_intact(&gw).await;
        },
    )
    .await;
}

/// A following `Receive` stream; yields each item as it comes.
async fn follow(a: &Agency) -> tonic::Streaming<pb::Delivery> {
    a.exchange()
        .receive(a.request(ReceiveRequest {
            follow: true,
            ..Default::default()
        }))
        .await
        .expect("open a following Receive")
        .into_inner()
}

/// The stream ends with a refusal within `limit`; notices and deliveries
/// handed out before it are skipped.
async fn ends_refused(stream: &mut tonic::Streaming<pb::Delivery>, limit: Duration, words: &str) {
    let end = tokio::time::timeout(limit, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the Receive stream under way did not end within {limit:?}"));
    let status = end.expect("the stream should end with a refusal, not quietly");
    assert_eq!(
        reason_of(&status).as_deref(),
        Some("PERMISSION_DENIED"),
        "{status:?}"
    );
    assert!(status.message().contains(words), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_client_certificate_gets_no_more_calls() {
    let Some(gw) = mtls_gateway("trust_unbind_client").await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "unbinding a client certificate",
        async {
            let a = gw.agency(A);
            let b = gw.agency(B);
            let b_client = gw.pki_dir.join(format!("{B}.client.pem"));
            let mut stream = follow(&b).await;
            a.send_document(&[B], "trước khi thu hồi", &[])
                .await
                .expect("A sends");

            cli_ok(
                &gw,
                &[
                    "directory",
                    "unbind-client-cert",
                    B,
                    b_client.to_str().unwrap(),
                ],
            )
            .await;
            // The same connection's next call is refused, with a sentence.
            let err = b
                .receive_all(0)
                .await
                .expect_err("B's certificate was taken back");
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            assert_eq!(
                reason_of(&err).as_deref(),
                Some("PERMISSION_DENIED"),
                "{err:?}"
            );
            assert!(err.message().contains("not bound"), "{err:?}");
            let err = b
                .send_document(&[A], "sau khi thu hồi", &[])
                .await
                .expect_err("B cannot send either");
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            // The stream B opened before ends within the documented bound.
            ends_refused(&mut stream, Duration::from_secs(10), "no longer bound").await;
            a.receive_all(0).await.expect("A is untouched");
            logged(
                &gw,
                B,
                &["client certificate unbound", &key_sha256(&b_client)],
            )
            .await;

            cli_ok(
                &gw,
                &[
                    "directory",
                    "bind-client-cert",
                    B,
                    b_client.to_str().unwrap(),
                ],
            )
            .await;
            let got = b.receive_all(0).await.expect("bound again, B receives");
            assert_eq!(got.len(), 1);
            log_intact(&gw).await;
        },
    )
    .await;
}

async fn deactivation(gw: &TestGateway) {
    let a = gw.agency(A);
    let b = gw.agency(B);
    let waiting = a
        .send_document(&[B], "chờ B", &[AttachmentSpec::text("a.txt", "nội dung")])
        .await
        .expect("A sends before B is deactivated");
    let mut stream = follow(&b).await;
    // What the stream hands out before the change does not matter here.
    let out = cli_ok(gw, &["directory", "deactivate", B]).await;
    assert!(out.contains("activate"), "{out}");

    // Nobody can send to B.
    let err = a
        .send_document(&[B], "gửi B khi B ngừng hoạt động", &[])
        .await
        .expect_err("B is inactive");
    assert_eq!(
        reason_of(&err).as_deref(),
        Some("UNKNOWN_RECIPIENT"),
        "{err:?}"
    );
    assert!(err.message().contains("no active agency"), "{err:?}");
    // B can neither receive, acknowledge, fetch nor send.
    let refused = |what: &str, r: Result<(), tonic::Status>| {
        let err = r.expect_err(what);
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("PERMISSION_DENIED"),
            "{what}: {err:?}"
        );
        assert!(err.message().contains("deactivated"), "{what}: {err:?}");
    };
    refused("Receive", b.receive_all(0).await.map(|_| ()));
    refused("Ack", b.ack("anything").await);
    refused(
        "FetchAttachment",
        b.fetch_attachment_sha256(waiting.message_id(), A, 0)
            .await
            .map(|_| ()),
    );
    refused(
        "Send",
        b.send_document(&[A], "B gửi khi ngừng hoạt động", &[])
            .await
            .map(|_| ()),
    );
    ends_refused(&mut stream, Duration::from_secs(10), "deactivated").await;
    logged(gw, B, &["deactivated"]).await;

    // Undone: B receives what waited, and everyone talks again.
    let out = cli_ok(gw, &["directory", "activate", B]).await;
    assert!(out.contains("active again"), "{out}");
    let got = b.receive_all(0).await.expect("B receives again");
    assert!(
        got.iter().any(|d| d
            .envelope
            .as_ref()
            .is_some_and(|e| decode_envelope(e).message_id == waiting.message_id())),
        "the document that waited is delivered"
    );
    for d in &got {
        b.ack(&d.delivery_id).await.expect("B acknowledges");
    }
    a.send_document(&[B], "sau khi B hoạt động lại", &[])
        .await
        .expect("B can be sent to again");
    b.send_document(&[A], "B gửi lại được", &[])
        .await
        .expect("B can send again");
    logged(gw, B, &["activated again"]).await;
    let lines = history(gw, Some(B)).await;
    assert!(lines.len() >= 2, "{lines:?}");
    log_intact(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_agency_neither_sends_nor_receives_under_mtls() {
    let Some(gw) = mtls_gateway("trust_deactivate_mtls").await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "deactivation under mTLS",
        deactivation(&gw),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_agency_neither_sends_nor_receives_on_postgres() {
    let Some(gw) = TestGateway::start("trust_deactivate_pg", Backend::Postgres).await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "deactivation (dev-header, PostgreSQL)",
        deactivation(&gw),
    )
    .await;
}

/// An import that deactivates a row takes the agency's trust back as
/// `deactivate` does, says so, and its lines name the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_deactivates_is_logged() {
    let Some(gw) = TestGateway::start("trust_import", Backend::Sqlite).await else {
        return;
    };
    within(Duration::from_secs(120), "a deactivating import", async {
        let csv = gw.dir.join("deactivate-b.csv");
        std::fs::write(
            &csv,
            format!("organ_id,name,active\n{B},Sở Khoa học và Công nghệ,false\n"),
        )
        .unwrap();
        let out = cli_ok(&gw, &["directory", "import", csv.to_str().unwrap()]).await;
        let err = gw
            .agency(A)
            .send_document(&[B], "gửi B", &[])
            .await
            .expect_err("B is inactive");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("UNKNOWN_RECIPIENT"),
            "{err:?}"
        );
        let err = gw
            .agency(B)
            .receive_all(0)
            .await
            .expect_err("an inactive agency does not receive");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("PERMISSION_DENIED"),
            "{err:?}"
        );
        assert!(err.message().contains("deactivated"), "{err:?}");

        assert!(out.contains("deactivated") && out.contains(B), "{out}");
        let about_b = history(&gw, Some(B)).await;
        assert!(
            about_b
                .iter()
                .any(|l| l["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("deactivated by an import of")
                        && d.contains("deactivate-b.csv"))
                    && l["actor"].as_str().is_some_and(|a| a.starts_with("cli:"))),
            "{about_b:?}"
        );
        let all = history(&gw, None).await;
        assert!(
            all[0]["detail"].as_str().is_some_and(
                |d| d.contains("directory imported from") && d.contains("1 deactivated")
            ),
            "{}",
            all[0]
        );
    })
    .await;
}

/// An operator's changes through the gRPC `Admin` service are lines of the
/// transfer log naming that operator; an operator's certificate is taken
/// back like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_changes_over_grpc_name_the_operator() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let Some(gw) = mtls_gateway("trust_operator").await else {
        return;
    };
    within(Duration::from_secs(180), "an operator over gRPC", async {
        let pki_dir = &gw.pki_dir;
        let ca = pki::Ca::load(&pki_dir.join("ca.pem"), &pki_dir.join("ca.key.pem"));
        let (kp, signer) = pki::fresh_key();
        let now = time::OffsetDateTime::now_utc();
        let (_, pem) = ca.reissue_pem(
            &pki::load_cert_der(&pki_dir.join(format!("{A}.client.pem"))),
            &kp,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        let ops_cert = gw.dir.join("ops.client.pem");
        std::fs::write(&ops_cert, &pem).unwrap();
        const OPS: &str = "Trung tâm CNTT";
        cli_ok(
            &gw,
            &["operator", "add", OPS, "--role", "admin", "--no-password"],
        )
        .await;
        cli_ok(
            &gw,
            &[
                "directory",
                "bind-operator",
                OPS,
                ops_cert.to_str().unwrap(),
            ],
        )
        .await;
        let newest = history(&gw, None).await.remove(0);
        assert!(
            newest["detail"]
                .as_str()
                .is_some_and(|d| d.contains(OPS) && d.contains(&key_sha256(&ops_cert))),
            "{newest}"
        );
        let tls = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(
                std::fs::read(pki_dir.join("ca.pem")).unwrap(),
            ))
            .identity(Identity::from_pem(pem, kp.serialize_pem()));
        let ops = Agency::with_tls(gw.grpc_addr, OPS, Arc::new(signer), Vec::new(), tls);
        let mut admin = pb::admin_client::AdminClient::new(ops.channel());

        let mut record = gw.agency(B).lookup(B).await.expect("look B up");

        record.active = false;
        admin
            .upsert_agency(ops.request(record.clone()))
            .await
            .expect("the operator deactivates B");
        let line = history(&gw, Some(B)).await.remove(0);
        assert_eq!(line["actor"], OPS, "{line}");
        assert_eq!(line["transport"], "grpc", "{line}");
        assert!(
            line["detail"]
                .as_str()
                .is_some_and(|d| d.contains("deactivated")),
            "{line}"
        );
        let err = gw
            .agency(B)
            .receive_all(0)
            .await
            .expect_err("B is inactive");
        assert!(err.message().contains("deactivated"), "{err:?}");

        record.active = true;
        admin
            .upsert_agency(ops.request(record))
            .await
            .expect("the operator activates B again");
        admin
            .represent(ops.request(pb::RepresentRequest {
                agent: A.to_owned(),
                principal: C.to_owned(),
                revoke: false,
            }))
            .await
            .expect("a representation");
        let line = history(&gw, Some(A)).await.remove(0);
        assert_eq!(line["actor"], OPS, "{line}");
        assert!(
            line["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("may send in the name of {C}"))),
            "{line}"
        );
        gw.agency(B)
            .receive_all(0)
            .await
            .expect("B is active again");
        // The log as the operator reads it: one chain, `main`, whose head
        // is its last event.
        let v = admin
            .verify_log(ops.request(pb::VerifyLogRequest {}))
            .await
            .expect("the operator checks the log")
            .into_inner();
        assert!(v.intact && v.problem.is_empty(), "{v:?}");
        assert_eq!(v.chains.len(), 1, "{v:?}");
        let main = &v.chains[0];
        assert_eq!(main.name, "main", "{v:?}");
        assert!(main.intact && main.has_head, "{v:?}");
        assert_eq!((main.checked, main.head_seq), (v.checked, v.checked as i64));
        assert_eq!(main.head_hash.len(), 64, "{v:?}");
        // The checkpoint written at start, unsigned: no receipts.key here.
        assert!(v.checkpoints >= 1 && v.findings.is_empty(), "{v:?}");
        assert_eq!(v.checkpoints_unsigned, v.checkpoints, "{v:?}");

        cli_ok(
            &gw,
            &[
                "directory",
                "unbind-operator",
                OPS,
                ops_cert.to_str().unwrap(),
            ],
        )
        .await;
        let err = admin
            .verify_log(ops.request(pb::VerifyLogRequest {}))
            .await
            .expect_err("the operator's certificate was taken back");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        log_intact(&gw).await;
    })
    .await;
}

/// An agency that reads its own queue (directory channel `amqp`): once
/// deactivated, nothing is routed to its queue, and what it publishes in
/// its own name is dead-lettered; activated again, both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_queue_agency_neither_publishes_nor_gets_copies() {
    use lienthong_testkit::amqp::{self, CONTENT_TYPE_ENVELOPE, Client, EXCHANGE, Vhost};
    let Some(vhost) = Vhost::create_or_skip("trust-queue") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[C]);
    let opts = GatewayOptions {
        pki: Some(pki.clone()),
        extra_config: amqp::config(&vhost, "H35", ""),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("trust_queue", opts).await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "a queue agency deactivated",
        async {
            let client = Client::connect(&vhost).await;
            let (a, c) = (gw.agency(A), gw.agency(C));
            let queue = format!("lienthong.agency.{C}");
            cli_ok(&gw, &["directory", "deactivate", C]).await;

            let err = a
                .send_document(&[C], "cho C khi C ngừng hoạt động", &[])
                .await
                .expect_err("C is inactive");
            assert_eq!(
                reason_of(&err).as_deref(),
                Some("UNKNOWN_RECIPIENT"),
                "{err:?}"
            );
            let draft = c.draft_document(&[B], "C gửi khi ngừng hoạt động", &[]);
            client
                .publish(
                    EXCHANGE,
                    C,
                    &c.sign(&draft.envelope).encode_to_vec(),
                    Some(CONTENT_TYPE_ENVELOPE),
                    Some(&draft.envelope.message_id),
                )
                .await;
            let dead = client
                .take("lienthong.dead.h35", 1, Duration::from_secs(20))
                .await;
            assert_eq!(dead.len(), 1, "C's message should be dead-lettered");
            assert_eq!(
                amqp::header(&dead[0], "x-lienthong-reason").as_deref(),
                Some("UNKNOWN_SENDER")
            );
            assert!(
                client
                    .take(&queue, 1, Duration::from_millis(500))
                    .await
                    .is_empty()
            );

            cli_ok(&gw, &["directory", "activate", C]).await;
            let sent = a
                .send_document(&[C], "cho C sau khi hoạt động lại", &[])
                .await
                .expect("C is active again");
            let got = client.take(&queue, 1, Duration::from_secs(20)).await;
            assert_eq!(got.len(), 1, "nothing on {queue}");
            assert_eq!(
                got[0].properties.message_id().as_ref().map(|m| m.as_str()),
                Some(sent.message_id())
            );
            let again = c.draft_document(&[B], "C gửi lại được", &[]);
            client
                .publish(
                    EXCHANGE,
                    C,
                    &c.sign(&again.envelope).encode_to_vec(),
                    Some(CONTENT_TYPE_ENVELOPE),
                    Some(&again.envelope.message_id),
                )
                .await;
            let at_b = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    let got = gw.agency(B).receive_all(0).await.expect("B receives");
                    if got.iter().any(|d| {
                        d.envelope.as_ref().is_some_and(|e| {
                            decode_envelope(e).message_id == again.envelope.message_id
                        })
                    }) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await;
            assert!(
                at_b.is_ok(),
                "C's message, published once active, reaches B"
            );
        },
    )
    .await;
}
