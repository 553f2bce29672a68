//! Mutual TLS: the caller is the agency its client certificate is bound to,
//! and nobody else. Each refusal is a gRPC status with a reason and a
//! sentence, not a bare TLS alert.

use std::sync::Arc;
use std::time::Duration;

use lienthong_testkit::*;
use rcgen::KeyPair;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn tls_with(gw: &TestGateway, cert_pem: &str, key_pem: &str) -> ClientTlsConfig {
    let ca = std::fs::read(gw.pki_dir.join("ca.pem")).unwrap();
    ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert_pem, key_pem))
}

/// `organ_id`'s signing identity, connecting with another client certificate.
fn agency_with_client(gw: &TestGateway, organ_id: &str, cert_pem: &str, key_pem: &str) -> Agency {
    let a = gw.agency(organ_id);
    Agency::with_tls(
        gw.grpc_addr,
        organ_id,
        Arc::clone(&a.signer),
        a.chain.clone(),
        tls_with(gw, cert_pem, key_pem),
    )
}

fn read(gw: &TestGateway, name: &str) -> String {
    std::fs::read_to_string(gw.pki_dir.join(name)).unwrap()
}

async fn assert_refused(a: &Agency, code: Code, reason: &str, words: &str) {
    let err = a
        .receive_all(0)
        .await
        .expect_err("the call should be refused");
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(reason_of(&err).as_deref(), Some(reason), "{err:?}");
    assert!(
        err.message().contains(words),
        "the sentence should say {words:?}: {}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_only_from_the_bound_client_certificate() {
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("mtls_identity", opts).await else {
        return;
    };
    within(Duration::from_secs(120), "the mTLS refusals", async {
        let a = gw.agency(A);
        let b = gw.agency(B);

        // A's software, with its own certificate, sends and B's receives.
        let sent = a
            .send_document(&[B], "Công văn qua TLS hai chiều", &[])
            .await
            .expect("A sends over mTLS");
        let got = b.receive_all(0).await.expect("B receives over mTLS");
        assert_eq!(got.len(), 1);
        assert_eq!(
            decode_envelope(got[0].envelope.as_ref().unwrap()).message_id,
            sent.message_id()
        );

        // B's software cannot send as A, whatever header it adds.
        let b_as_a = agency_with_client(
            &gw,
            A,
            &read(&gw, &format!("{B}.client.pem")),
            &read(&gw, &format!("{B}.client.key.pem")),
        )
        .with_caller(Some(A));
        let err = b_as_a
            .send_document(&[C], "giả danh", &[])
            .await
            .expect_err("B's certificate sending as A must be refused");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("SENDER_MISMATCH"));

        // A's key in a certificate from a CA the gateway does not trust.
        let a_key = KeyPair::from_pem(&read(&gw, &format!("{A}.client.key.pem"))).unwrap();
        let a_client_der = pki::load_cert_der(&gw.pki_dir.join(format!("{A}.client.pem")));
        let now = time::OffsetDateTime::now_utc();
        let rogue = pki::Ca::generate("Rogue CA");
        let (_, rogue_pem) = rogue.reissue_pem(
            &a_client_der,
            &a_key,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        let other_ca = agency_with_client(
            &gw,
            A,
            &rogue_pem,
            &read(&gw, &format!("{A}.client.key.pem")),
        );
        assert_refused(
            &other_ca,
            Code::Unauthenticated,
            "PERMISSION_DENIED",
            "not issued by an authority",
        )
        .await;

        // A's key in an expired certificate from the trusted CA.
        let dev_ca = pki::Ca::load(&gw.pki_dir.join("ca.pem"), &gw.pki_dir.join("ca.key.pem"));
        let (_, expired_pem) = dev_ca.reissue_pem(
            &a_client_der,
            &a_key,
            now - time::Duration::days(60),
            now - time::Duration::days(1),
        );
        let expired = agency_with_client(
            &gw,
            A,
            &expired_pem,
            &read(&gw, &format!("{A}.client.key.pem")),
        );
        assert_refused(
            &expired,
            Code::Unauthenticated,
            "PERMISSION_DENIED",
            "expired",
        )
        .await;

        // A valid certificate from the trusted CA whose key is bound to nobody.
        let new_key = KeyPair::generate().unwrap();
        let (_, unbound_pem) = dev_ca.reissue_pem(
            &a_client_der,
            &new_key,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        let unbound = agency_with_client(&gw, A, &unbound_pem, &new_key.serialize_pem());
        assert_refused(
            &unbound,
            Code::Unauthenticated,
            "PERMISSION_DENIED",
            "not bound",
        )
        .await;

        // Once an operator binds it to C, it speaks for C — and sees C's inbox.
        let pem_path = gw.dir.join("c-new-client.pem");
        std::fs::write(&pem_path, &unbound_pem).unwrap();
        let out = gw
            .run_cli(&[
                "directory".as_ref(),
                "bind-client-cert".as_ref(),
                C.as_ref(),
                pem_path.as_os_str(),
            ])
            .await;
        assert!(out.status.success(), "{}", describe_output(&out));
        let for_c = gw
            .agency(B)
            .send_document(&[C], "Gửi C, đọc qua chứng thư mới gắn", &[])
            .await
            .expect("B sends C a document");
        let as_c = agency_with_client(&gw, C, &unbound_pem, &new_key.serialize_pem());
        let inbox: Vec<String> = as_c
            .receive_all(0)
            .await
            .expect("bound now")
            .iter()
            .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
            .collect();
        assert_eq!(
            inbox,
            [for_c.message_id()],
            "C's inbox over the new certificate"
        );
        let a_over_c = agency_with_client(&gw, A, &unbound_pem, &new_key.serialize_pem());
        let err = a_over_c
            .send_document(&[B], "thư của A qua kết nối của C", &[])
            .await
            .expect_err("A's envelope over C's connection must be refused");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("SENDER_MISMATCH"),
            "{err:?}"
        );
    })
    .await;
}

/// The TLS files are re-read without a restart: an authority added to
/// `tls.client_anchors` is trusted within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_anchors_reload_without_a_restart() {
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("mtls_reload", opts).await else {
        return;
    };
    within(Duration::from_secs(120), "the TLS reload", async {
        // The anchors file the configuration names.
        let anchors = gw.pki_dir.join("ca.pem");
        let a_key_pem = read(&gw, &format!("{A}.client.key.pem"));
        let a_key = KeyPair::from_pem(&a_key_pem).unwrap();
        let a_client_der = pki::load_cert_der(&gw.pki_dir.join(format!("{A}.client.pem")));
        let now = time::OffsetDateTime::now_utc();
        let other = pki::Ca::generate("Another provincial CA");
        let (_, pem) = other.reissue_pem(
            &a_client_der,
            &a_key,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        );
        let client = agency_with_client(&gw, A, &pem, &a_key_pem);
        assert_refused(
            &client,
            Code::Unauthenticated,
            "PERMISSION_DENIED",
            "not issued by an authority",
        )
        .await;

        // The operators add that authority to the anchors file.
        let mut text = std::fs::read_to_string(&anchors).unwrap();
        text.push_str(&other.cert_pem);
        std::fs::write(&anchors, text).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Same key as A's bound client certificate: once the new
            // authority is trusted, the call goes through as A.
            match client.receive_all(0).await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.message().contains("not issued"), "{e:?}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("the new anchor was not picked up: {e:?}"),
            }
        }
    })
    .await;
}

/// `openssl ca` with the OpenSSL PKI's intermediate CA (which issued the
/// agencies' client certificates), and a section for version 2 lists.
fn intermediate_ca(pki: &std::path::Path, args: &[&str]) {
    let work = pki.join("openssl");
    let cnf = work.join("crl.cnf");
    if !cnf.exists() {
        let base = std::fs::read_to_string(work.join("openssl.cnf")).unwrap();
        std::fs::write(
            &cnf,
            format!("{base}\n[crl_ext]\nauthorityKeyIdentifier = keyid:always\n"),
        )
        .unwrap();
    }
    let out = std::process::Command::new("openssl")
        .arg("ca")
        .args(["-batch", "-config"])
        .arg(&cnf)
        .args(["-name", "intermediate_ca"])
        .args(args)
        .env("OPENSSL_CONF", &cnf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl ca {}:\n{}",
        args.join(" "),
        describe_output(&out)
    );
}

/// Writes the intermediate CA's revocation list to `path` in one step (the
/// gateway never sees half a file). `dates`: thisUpdate and nextUpdate as
/// `YYYYMMDDHHMMSSZ`, else a week from now.
pub(crate) fn publish_crl(
    pki: &std::path::Path,
    path: &std::path::Path,
    dates: Option<(&str, &str)>,
) {
    let tmp = path.with_extension("new");
    let tmp_s = tmp.display().to_string();
    let mut args = vec!["-gencrl", "-crlexts", "crl_ext", "-out", &tmp_s];
    match dates {
        Some((this, next)) => {
            args.extend(["-crl_lastupdate", this, "-crl_nextupdate", next]);
        }
        None => args.extend(["-crldays", "7"]),
    }
    intermediate_ca(pki, &args);
    std::fs::rename(&tmp, path).unwrap();
}

/// The intermediate CA revokes the certificate `openssl/LEAF` of the
/// OpenSSL PKI (keyCompromise) and publishes its list to `crl`.
pub(crate) fn revoke(pki: &std::path::Path, crl: &std::path::Path, leaf: &str) {
    let leaf = pki.join("openssl").join(leaf);
    intermediate_ca(
        pki,
        &[
            "-revoke",
            &leaf.display().to_string(),
            "-crl_reason",
            "keyCompromise",
        ],
    );
    publish_crl(pki, crl, None);
}

/// Revocation applies to client certificates: once the CA's list in
/// `trust.crls` names an agency's client certificate, its next call is
/// refused (UNAUTHENTICATED, CERTIFICATE_REVOKED, a sentence) while the
/// other agencies go on; a stale list is used under `stale_crl = "warn"`
/// and refuses every client under `"refuse"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused() {
    let Some(pki) = openssl_pki("mtls_revoked") else {
        return;
    };
    let crl = pki.path().join("intermediate.crl.pem");
    publish_crl(pki.path(), &crl, None);
    let opts = GatewayOptions {
        mtls: true,
        pki: Some(pki.path().to_path_buf()),
        extra_trust: format!("crls = [\"{}\"]\n", crl.display()),
        ..Default::default()
    };
    let Some(mut gw) = TestGateway::start_with("mtls_revoked", opts).await else {
        return;
    };
    within(
        Duration::from_secs(180),
        "the revoked client certificate",
        async {
            let a = gw.agency(A);
            let b = gw.agency(B);
            a.send_document(&[B], "Trước khi bị thu hồi", &[])
                .await
                .expect("A's certificate is good for now");

            // The CA revokes A's client certificate and publishes its list.
            revoke(pki.path(), &crl, &format!("{A}.client.leaf.pem"));

            // The gateway reads the list again within seconds.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let err = loop {
                match a.lookup(B).await {
                    Err(e) => break e,
                    Ok(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Ok(_) => panic!("A's revoked client certificate is still accepted"),
                }
            };
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            assert_eq!(
                reason_of(&err).as_deref(),
                Some("CERTIFICATE_REVOKED"),
                "{err:?}"
            );
            assert!(
                err.message().contains("client certificate")
                    && err.message().contains("was revoked")
                    && err.message().contains("keyCompromise")
                    && err.message().contains("bind-client-cert"),
                "{}",
                err.message()
            );
            let err = a
                .send_document(&[B], "Sau khi bị thu hồi", &[])
                .await
                .expect_err("no sending either");
            assert_eq!(reason_of(&err).as_deref(), Some("CERTIFICATE_REVOKED"));
            // B's certificate is not on the list.
            assert_eq!(b.receive_all(0).await.unwrap().len(), 1);

            // A stale list (its nextUpdate passed) under the default "warn":
            // used as it is — B goes on, A stays revoked.
            publish_crl(
                pki.path(),
                &crl,
                Some(("20200101000000Z", "20200108000000Z")),
            );
            // It is read again, used, and the operators are told.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                assert!(b.lookup(A).await.is_ok(), "warn: a stale list still serves");
                if gw.log_tails(200).contains("past its nextUpdate") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no warning about the stale list:\n{}",
                    gw.log_tails(40)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert_eq!(
                reason_of(&a.lookup(B).await.unwrap_err()).as_deref(),
                Some("CERTIFICATE_REVOKED")
            );
        },
    )
    .await;

    // Under stale_crl = "refuse" the gateway cannot tell, and says so.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        config.replacen("[trust]\n", "[trust]\nstale_crl = \"refuse\"\n", 1),
    )
    .unwrap();
    gw.restart().await;
    within(Duration::from_secs(60), "the stale list refused", async {
        let err = gw.agency(B).lookup(A).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert_eq!(
            reason_of(&err).as_deref(),
            Some("UNTRUSTED_CERTIFICATE"),
            "{err:?}"
        );
        assert!(
            err.message().contains("expired on") && err.message().contains("trust.crls"),
            "{}",
            err.message()
        );
    })
    .await;
}
