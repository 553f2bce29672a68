//! `lienthong pdf verify` on PDFs signed by an independent signer, pyHanko
//! (tests/pdf/generate_pyhanko.py made them; expected.json records what
//! pyHanko's own validator said and what a correct verifier must report).

use std::path::PathBuf;
use std::process::Command;

use lienthong_testkit::{bin_path, describe_output};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pdf/pyhanko")
}

fn verify(file: &str, with_crl: bool) -> Value {
    let dir = fixtures();
    let mut cmd = Command::new(bin_path());
    cmd.arg("pdf")
        .arg("verify")
        .arg(dir.join(file))
        .arg("--anchors")
        .arg(dir.join("root.pem"));
    if with_crl {
        cmd.arg("--crl").arg(dir.join("root.crl"));
    }
    let out = cmd.output().expect("run lienthong pdf verify");
    assert_eq!(
        out.status.code(),
        Some(0),
        "pdf verify {file}: {}",
        describe_output(&out)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn every_pyhanko_file_gets_the_expected_verdict_and_fields() {
    let expected: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("expected.json")).expect("expected.json"),
    )
    .expect("expected.json is JSON");
    let files = expected["files"].as_object().expect("files");
    assert!(
        files.len() >= 6,
        "the generator wrote {} files",
        files.len()
    );
    for (name, want) in files {
        let got = verify(name, true);
        assert_eq!(got["revisions"], want["revisions"], "{name}: revisions");
        let want_sigs = want["signatures"].as_array().expect("signatures");
        let got_sigs = got["signatures"].as_array().expect("signatures");
        assert_eq!(got_sigs.len(), want_sigs.len(), "{name}: signature count");
        let mut want_verdict = "valid";
        for (g, w) in got_sigs.iter().zip(want_sigs) {
            let field = w["field"].as_str().unwrap_or_default();
            let ctx = format!("{name} / {field}: {g:#}");
            assert_eq!(g["field"], w["field"], "{ctx}");
            assert_eq!(g["algorithm"], w["algorithm"], "{ctx}");
            assert_eq!(g["covers_revision"], w["covers_revision"], "{ctx}");
            assert_eq!(g["changes_after"], w["changes_after"], "{ctx}");
            assert_eq!(g["timestamped"], w["timestamped"], "{ctx}");
            assert_eq!(g["signer_organization"], w["signer_o"], "{ctx}");
            let subject = g["signer_subject"].as_str().unwrap_or_default();
            let cn = w["signer_cn"].as_str().unwrap_or_default();
            assert!(subject.contains(&format!("CN={cn}")), "{ctx}");
            for flag in ["digest_ok", "signature_ok", "chain_ok"] {
                assert_eq!(g[flag], true, "{ctx}: {flag}");
            }
            assert_eq!(g["revoked"], false, "{ctx}: the CRL lists nobody");
            assert_eq!(g["expired_at_signing"], false, "{ctx}");
            assert_eq!(
                g["trusted_anchor"], "C=VN, O=Lienthong Test PKI, CN=Lienthong pyHanko Test Root",
                "{ctx}"
            );
            // Only a verified timestamp proves when a signature was made;
            // the time the signer wrote is reported as its claim.
            if w["timestamped"] == true {
                assert_eq!(g["signing_time"], w["timestamp_time"], "{ctx}");
                assert_eq!(g["judged_at"], w["timestamp_time"], "{ctx}");
            } else {
                assert_eq!(g["signing_time"], Value::Null, "{ctx}");
                assert_eq!(g["claimed_signing_time"], w["signing_time"], "{ctx}");
            }
            if w["verdict"] == "invalid" {
                want_verdict = "invalid";
            }
        }
        assert_eq!(got["verdict"], want_verdict, "{name}: {got:#}");
        if want_verdict == "invalid" {
            let reasons = got["reasons"].as_array().expect("reasons");
            assert!(
                reasons
                    .iter()
                    .any(|r| r.as_str().is_some_and(|s| s.contains("changed after"))),
                "{name}: the reasons say the content changed: {reasons:?}"
            );
        }
    }
}

#[test]
fn without_a_revocation_list_revocation_is_unknown_not_false() {
    let got = verify("rsa-signed.pdf", false);
    assert_eq!(got["verdict"], "valid", "{got:#}");
    assert_eq!(got["signatures"][0]["revoked"], Value::Null, "{got:#}");
}
