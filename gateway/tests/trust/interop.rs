//! The contract as other vendors meet it: clients that are not ours, on
//! OpenSSL and BoringSSL, against the real `lienthong serve` under mutual
//! TLS. `openssl s_client` completes the handshake and reads the acceptable
//! CA names; a Python grpcio agency (tests/python/agency_client.py, in a
//! virtualenv this test makes from tests/python/requirements.txt) signs and
//! sends a document with an attachment, and another receives, checks and
//! acknowledges it.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use lienthong_testkit::*;

fn tests_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests"))
}

/// The interpreter of the tests' Python virtualenv
/// (`lienthong_testkit::python_venv`: tests/python/requirements.txt).
fn python_venv(test: &str) -> Option<PathBuf> {
    lienthong_testkit::python_venv(test, Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Runs the Python agency client; its one line of JSON.
async fn python_client(python: &Path, gw: &TestGateway, args: &[String]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(tests_dir().join("python/agency_client.py"))
        .args(args)
        .arg("--proto-root")
        .arg(tests_dir().join("../proto"))
        .arg("--target")
        .arg(gw.grpc_addr.to_string())
        .arg("--ca")
        .arg(gw.pki_dir.join("ca.pem"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the Python client finished within 120 s")
        .unwrap();
    assert!(
        out.status.success(),
        "agency_client.py {}:\n{}",
        args.join(" "),
        describe_output(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agency_client.py printed no JSON ({e}):\n{}",
            describe_output(&out)
        )
    })
}

fn client_args(gw: &TestGateway, organ_id: &str) -> Vec<String> {
    let p = |name: String| gw.pki_dir.join(name).display().to_string();
    vec![
        "--cert".into(),
        p(format!("{organ_id}.client.pem")),
        "--key".into(),
        p(format!("{organ_id}.client.key.pem")),
    ]
}

/// `openssl s_client` (OpenSSL, as Java, .NET on Linux and PHP use it)
/// completes mutual TLS with an agency's client certificate, TLS 1.2 and
/// 1.3, ALPN h2, and the CA names it was offered are the anchors' subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_completes_mutual_tls_and_reads_the_ca_names() {
    if StdCommand::new("openssl").arg("version").output().is_err() {
        missing::<()>("openssl_s_client", "openssl not found");
        return;
    }
    let opts = GatewayOptions {
        mtls: true,
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("interop_openssl", opts).await else {
        return;
    };
    let nameopt = "oneline,-esc_msb";
    let subject = StdCommand::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", nameopt, "-in"])
        .arg(gw.pki_dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(subject.status.success(), "{}", describe_output(&subject));
    let subject = String::from_utf8_lossy(&subject.stdout)
        .trim()
        .trim_start_matches("subject=")
        .trim()
        .to_owned();
    for version in ["-tls1_2", "-tls1_3"] {
        let out = tokio::process::Command::new("openssl")
            .arg("s_client")
            .arg(version)
            .args(["-connect", &gw.grpc_addr.to_string()])
            .args(["-servername", "localhost", "-verify_hostname", "localhost"])
            .arg("-CAfile")
            .arg(gw.pki_dir.join("ca.pem"))
            .arg("-cert")
            .arg(gw.pki_dir.join(format!("{A}.client.pem")))
            .arg("-key")
            .arg(gw.pki_dir.join(format!("{A}.client.key.pem")))
            .args(["-alpn", "h2", "-verify_return_error", "-nameopt", nameopt])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("s_client finished")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("parse_ca_names"),
            "openssl s_client {version}:\n{}",
            describe_output(&out)
        );
        let names: Vec<&str> = text
            .split("Acceptable client certificate CA names")
            .nth(1)
            .unwrap_or_else(|| panic!("no CA names offered ({version}):\n{text}"))
            .lines()
            .skip(1)
            .take_while(|l| l.contains(" = "))
            .map(str::trim)
            .collect();
        assert_eq!(names, vec![subject.as_str()], "{version}:\n{text}");
        for line in ["ALPN protocol: h2", "Verify return code: 0 (ok)"] {
            assert!(text.contains(line), "no {line:?} ({version}):\n{text}");
        }
        let protocol = if version == "-tls1_3" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert!(text.contains(protocol), "{version}:\n{text}");
    }
}

/// A Python grpcio agency (BoringSSL) signs a document itself, sends it
/// with an attachment over mutual TLS and gets the receipt; a refused call
/// carries its ErrorInfo in grpc-status-details-bin; another Python agency
/// receives it, checks the attachment's digest and acknowledges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_agency_sends_and_another_receives() {
    let Some(python) = python_venv("interop_python") else {
        return;
    };
    let Some(pki) = openssl_pki("interop_python") else {
        return;
    };
    let opts = GatewayOptions {
        mtls: true,
        pki: Some(pki.path().to_path_buf()),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("interop_python", opts).await else {
        return;
    };
    // B's keys are EC P-256 in the OpenSSL PKI: ES256, r||s.
    let mut send = vec!["send".to_owned()];
    send.extend(client_args(&gw, B));
    send.extend([
        "--sign-key".into(),
        gw.pki_dir
            .join(format!("{B}.key.pem"))
            .display()
            .to_string(),
        "--sign-chain".into(),
        gw.pki_dir.join(format!("{B}.pem")).display().to_string(),
        "--sender".into(),
        B.into(),
        "--to".into(),
        A.into(),
    ]);
    let sent = python_client(&python, &gw, &send).await;
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    let receipt = &sent["receipt"];
    assert_eq!(sent["algorithm"], "ES256", "{sent}");
    assert_eq!(receipt["message_id"], message_id.as_str(), "{sent}");
    assert_eq!(receipt["from"], B, "{sent}");
    assert_eq!(receipt["gateway"], "lienthong-test", "{sent}");
    assert_eq!(receipt["duplicate"], false, "{sent}");
    assert_eq!(
        receipt["recipients"],
        serde_json::json!([{"organ_id": A, "route": "local"}]),
        "{sent}"
    );
    assert_eq!(
        receipt["envelope_sha256"], sent["envelope_sha256"],
        "the receipt names the bytes Python sent: {sent}"
    );
    let refusal = &sent["damaged_signature"];
    assert_eq!(refusal["code"], "INVALID_ARGUMENT", "{sent}");
    assert_eq!(
        refusal["error_info"],
        serde_json::json!({"reason": "BAD_SIGNATURE", "domain": "lienthong"}),
        "{sent}"
    );
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not verify")),
        "{sent}"
    );

    let mut receive = vec!["receive".to_owned()];
    receive.extend(client_args(&gw, A));
    let got = python_client(&python, &gw, &receive).await;
    let deliveries = got["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{got}");
    let d = &deliveries[0];
    assert_eq!(d["message_id"], message_id.as_str(), "{got}");
    assert_eq!(d["from"], B, "{got}");
    assert_eq!(d["attempt"], 1, "{got}");
    let att = &d["attachments"][0];
    assert_eq!(att["matches_envelope"], true, "{got}");
    assert_eq!(att["sha256"], sent["attachment_sha256"], "{got}");
    assert_eq!(att["size"], sent["attachment_size"], "{got}");

    // Python's Ack took: A's inbox is empty, the log says acknowledged.
    assert!(gw.agency(A).receive_all(0).await.unwrap().is_empty());
    let trace = gw.trace_json(&message_id, Some(B)).await;
    for kind in ["accepted", "delivered", "acknowledged"] {
        assert!(
            trace.iter().any(|e| e["kind"] == kind),
            "no {kind}: {trace:?}"
        );
    }
}
