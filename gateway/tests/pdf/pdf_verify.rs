//! `lienthong pdf verify FILE.pdf [--anchors CA.pem]... [--crl LIST.crl]...`:
//! PAdES signatures made by the harness's own toolkit (`lienthong_testkit::pdf`,
//! no code shared with the verifier), checked through the real binary.
//!
//! The contract: one JSON object on stdout (`signatures`, `revisions`,
//! `verdict`, `reasons`) and exit 0 for any verdict; exit 2 with a sentence
//! on stderr for a file that is not a PDF it can read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lienthong_testkit::pdf::{self, DigestAlg, Identity, RsaScheme, SignOptions, TimestampOptions};
use lienthong_testkit::{bin_path, notice};
use serde_json::{Value, json};
use time::macros::datetime;

// ---------------------------------------------------------------------------
// Running the verifier
// ---------------------------------------------------------------------------

/// One run of `lienthong pdf verify`.
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Highest VmHWM read from /proc/<pid>/status while it ran, in KiB.
    polled_peak_kib: u64,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "`lienthong {}`\nexit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }

    /// The report of a run that must have exited 0 with one JSON object.
    fn report(&self) -> Value {
        assert_eq!(
            self.status.code(),
            Some(0),
            "pdf verify must exit 0 for any verdict:\n{}",
            self.describe()
        );
        let v: Value = serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is not one JSON object ({e}):\n{}", self.describe())
        });
        check_shape(&v, self);
        v
    }

    /// A run that must have exited 2 with a sentence on stderr; returns stderr.
    fn refused(&self) -> String {
        assert_eq!(
            self.status.code(),
            Some(2),
            "pdf verify must exit 2 for a file it cannot read:\n{}",
            self.describe()
        );
        let err = self.stderr.trim();
        assert!(
            is_sentence(err),
            "exit 2 must come with a sentence on stderr:\n{}",
            self.describe()
        );
        assert!(
            !err.contains("Usage:") && !err.contains("unrecognized subcommand"),
            "that is a command-line usage error, not a refusal of the file (does this \
             binary have `pdf verify`?):\n{}",
            self.describe()
        );
        assert!(
            !err.contains("panicked"),
            "the verifier panicked instead of refusing the file:\n{}",
            self.describe()
        );
        assert!(
            self.stdout.trim().is_empty(),
            "a refused file must not get a report on stdout:\n{}",
            self.describe()
        );
        // Judge the sentence, not the file's path (the temp dirs' names hold
        // words such as "pdf" and "xref").
        let file = Path::new(&self.args[2]);
        err.replace(&self.args[2], "<FILE>")
            .replace(&file.parent().unwrap().display().to_string(), "<DIR>")
    }
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `lienthong pdf verify PDF --anchors A... --crl C...`.
fn run_verify(pdf: &Path, anchors: &[&Path], crls: &[&Path], limit: Duration) -> Run {
    let mut extra = Vec::new();
    for a in anchors {
        extra.push("--anchors".to_string());
        extra.push(a.display().to_string());
    }
    for c in crls {
        extra.push("--crl".to_string());
        extra.push(c.display().to_string());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    run_verify_full(pdf, &extra, limit)
}

/// `lienthong pdf verify PDF EXTRA...` with a clean environment, polling its
/// peak RSS while it runs.
fn run_verify_full(pdf: &Path, extra: &[&str], limit: Duration) -> Run {
    let mut args = vec![
        "pdf".to_string(),
        "verify".to_string(),
        pdf.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut cmd = Command::new(bin_path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LIENTHONG_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("NO_COLOR", "1")
        .current_dir(pdf.parent().unwrap())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run lienthong");
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = proc_status_kib(pid, "VmHWM:") {
            peak = peak.max(kib);
        }
        if let Some(st) = child.try_wait().expect("wait for lienthong") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`lienthong {}` did not finish within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        args,
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        polled_peak_kib: peak,
    }
}

const LIMIT: Duration = Duration::from_secs(60);

/// `lienthong pdf verify PDF ARGS...`.
fn run_verify_args(pdf: &Path, args: &[&str]) -> Run {
    run_verify_full(pdf, args, LIMIT)
}

/// A test's temp dir, with the trusted root and the CRL written in it.
struct Case {
    dir: tempfile::TempDir,
    anchor: PathBuf,
    crl: PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lienthong-e2e-pdf-{name}-"))
            .tempdir()
            .expect("temp dir");
        let pki = pdf::test_pki();
        let anchor = pki.write_anchor(dir.path());
        let crl = pki.write_crl(dir.path());
        Case { dir, anchor, crl }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).expect("write PDF");
        p
    }

    /// `pdf verify FILE --anchors root.pem`.
    fn verify(&self, pdf: &Path) -> Run {
        run_verify(pdf, &[&self.anchor], &[], LIMIT)
    }

    /// `pdf verify FILE --anchors root.pem --crl root.crl`.
    fn verify_with_crl(&self, pdf: &Path) -> Run {
        run_verify(pdf, &[&self.anchor], &[&self.crl], LIMIT)
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

fn is_sentence(s: &str) -> bool {
    let s = s.trim();
    s.split_whitespace().count() >= 3 && s.chars().any(char::is_alphabetic)
}

const CHANGES: [&str; 4] = ["none", "signatures", "annotations", "content"];
const VERDICTS: [&str; 4] = ["valid", "invalid", "unsigned", "indeterminate"];

/// Every field of the contract is there with its type.
fn check_shape(v: &Value, run: &Run) {
    let ctx = || run.describe();
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("the report is not an object:\n{}", ctx()));
    let revisions = obj
        .get("revisions")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("`revisions` is not a positive integer:\n{}", ctx()));
    let limit_reached = obj
        .get("limit_reached")
        .filter(|x| x.is_null() || x.as_str().is_some_and(is_sentence))
        .unwrap_or_else(|| panic!("`limit_reached` is neither null nor a sentence:\n{}", ctx()));
    assert!(
        obj.get("bytes_hashed").is_some_and(Value::is_u64),
        "`bytes_hashed` is not an integer:\n{}",
        ctx()
    );
    // A PDF the limits kept from being opened has no revisions to count.
    assert!(
        revisions >= 1 || !limit_reached.is_null(),
        "`revisions` is 0:\n{}",
        ctx()
    );
    let verdict = obj
        .get("verdict")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("`verdict` is not a string:\n{}", ctx()));
    assert!(
        VERDICTS.contains(&verdict),
        "`verdict` {verdict:?} is not one of {VERDICTS:?}:\n{}",
        ctx()
    );
    let reasons = obj
        .get("reasons")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("`reasons` is not an array:\n{}", ctx()));
    for r in reasons {
        let r = r
            .as_str()
            .unwrap_or_else(|| panic!("a reason is not a string:\n{}", ctx()));
        assert!(is_sentence(r), "reason {r:?} is not a sentence:\n{}", ctx());
    }
    if verdict == "invalid" || verdict == "indeterminate" {
        assert!(
            !reasons.is_empty(),
            "verdict {verdict} must come with reasons:\n{}",
            ctx()
        );
    }
    let sigs = obj
        .get("signatures")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("`signatures` is not an array:\n{}", ctx()));
    for s in sigs {
        let s = s
            .as_object()
            .unwrap_or_else(|| panic!("a signature is not an object:\n{}", ctx()));
        for k in [
            "field",
            "signer_subject",
            "signer_organization",
            "judged_at",
            "algorithm",
            "changes_after",
        ] {
            assert!(
                s.get(k).is_some_and(Value::is_string),
                "signature `{k}` is not a string:\n{}",
                ctx()
            );
        }
        for k in [
            "timestamped",
            "digest_ok",
            "signature_ok",
            "chain_ok",
            "expired_at_signing",
        ] {
            assert!(
                s.get(k).is_some_and(Value::is_boolean),
                "signature `{k}` is not a boolean:\n{}",
                ctx()
            );
        }
        assert!(
            s.get("trusted_anchor")
                .is_some_and(|x| x.is_string() || x.is_null()),
            "signature `trusted_anchor` is neither a string nor null:\n{}",
            ctx()
        );
        assert!(
            s.get("revoked")
                .is_some_and(|x| x.is_boolean() || x.is_null()),
            "signature `revoked` is neither a boolean nor null:\n{}",
            ctx()
        );
        let covers = s
            .get("covers_revision")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("signature `covers_revision` is not an integer:\n{}", ctx()));
        // The contract says 1-based; a ByteRange that ends at no revision's
        // end (an invalid signature) is reported as covering revision 0.
        let lowest = if verdict == "invalid" { 0 } else { 1 };
        assert!(
            (lowest..=revisions).contains(&covers),
            "covers_revision {covers} is outside {lowest}..={revisions}:\n{}",
            ctx()
        );
        let changes = s["changes_after"].as_str().unwrap();
        assert!(
            CHANGES.contains(&changes),
            "changes_after {changes:?} is not one of {CHANGES:?}:\n{}",
            ctx()
        );
        for k in ["signing_time", "claimed_signing_time", "judged_at"] {
            let Some(t) = s[k].as_str() else {
                assert!(
                    s.get(k).is_some_and(Value::is_null) && k != "judged_at",
                    "signature `{k}` is neither a time nor null:\n{}",
                    ctx()
                );
                continue;
            };
            assert!(
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .is_ok_and(|t| t.offset().is_utc())
                    && t.ends_with('Z'),
                "{k} {t:?} is not RFC 3339 UTC:\n{}",
                ctx()
            );
        }
        // Only a verified timestamp proves a signing time.
        assert_eq!(
            s["signing_time"].is_string(),
            s["timestamped"] == true,
            "`signing_time` is set exactly when `timestamped`:\n{}",
            ctx()
        );
    }
}

/// Asserts `report.signatures[field=field].key == expected`.
#[track_caller]
fn assert_sig(report: &Value, field: &str, key: &str, expected: Value) {
    let s = sig(report, field);
    assert_eq!(
        s.get(key),
        Some(&expected),
        "signature {field:?}: `{key}` should be {expected}; the report:\n{}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

#[track_caller]
fn sig<'a>(report: &'a Value, field: &str) -> &'a Value {
    report["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["field"] == field)
        .unwrap_or_else(|| {
            panic!(
                "no signature of field {field:?} in the report:\n{}",
                serde_json::to_string_pretty(report).unwrap()
            )
        })
}

#[track_caller]
fn assert_top(report: &Value, key: &str, expected: Value) {
    assert_eq!(
        report.get(key),
        Some(&expected),
        "`{key}` should be {expected}; the report:\n{}",
        serde_json::to_string_pretty(report).unwrap()
    );
}

fn organization(id: &Identity) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(&id.cert_der).unwrap();
    c.subject()
        .iter_organization()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// What a good signature by `signer` says, whatever the rest of the document.
#[track_caller]
fn assert_good_signature(report: &Value, field: &str, signer: &Identity, algorithm: &str) {
    let pki = pdf::test_pki();
    assert_sig(report, field, "signer_subject", json!(signer.subject()));
    assert_sig(
        report,
        field,
        "signer_organization",
        json!(organization(signer)),
    );
    assert_sig(report, field, "algorithm", json!(algorithm));
    assert_sig(report, field, "digest_ok", json!(true));
    assert_sig(report, field, "signature_ok", json!(true));
    assert_sig(report, field, "chain_ok", json!(true));
    assert_sig(report, field, "trusted_anchor", json!(pki.root.subject()));
    assert_sig(report, field, "expired_at_signing", json!(false));
}

/// The whole report of a valid document with one signature over its first revision.
#[track_caller]
fn assert_valid_single(report: &Value, signer: &Identity, algorithm: &str) {
    assert_top(report, "verdict", json!("valid"));
    assert_top(report, "revisions", json!(2));
    assert_eq!(
        report["signatures"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
    assert_good_signature(report, "Signature1", signer, algorithm);
    assert_sig(report, "Signature1", "timestamped", json!(false));
    // No timestamp: the time written in the signature is only claimed.
    assert_sig(report, "Signature1", "signing_time", Value::Null);
    assert_sig(
        report,
        "Signature1",
        "claimed_signing_time",
        json!(pdf::rfc3339(pdf::default_signing_time())),
    );
    // Revision 1 is the unsigned document; the signature's own update,
    // which its ByteRange covers to the end, is revision 2, the last one.
    assert_sig(report, "Signature1", "covers_revision", json!(2));
    assert_sig(report, "Signature1", "changes_after", json!("none"));
}

/// A document signed once with `opts` over `minimal_pdf`.
fn signed_once(opts: &SignOptions<'_>) -> Vec<u8> {
    pdf::sign(&pdf::minimal_pdf("Quyet dinh so 15/QD-SNV"), opts)
}

// ---------------------------------------------------------------------------
// Good signatures
// ---------------------------------------------------------------------------

#[test]
fn an_rsa_signature_is_valid() {
    let case = Case::new("rsa");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.rsa_signer);
    opts.include_chain = true; // the root travels in the CMS too: trust comes from --anchors
    let file = case.write("rsa.pdf", &signed_once(&opts));
    let report = case.verify(&file).report();
    assert_valid_single(&report, &pki.rsa_signer, "RSA-SHA256");
    // The contract's example, literally.
    assert_sig(
        &report,
        "Signature1",
        "signer_subject",
        json!("C=VN, O=Sở Nội vụ tỉnh Thử nghiệm, CN=Nguyễn Văn A"),
    );
    assert_sig(
        &report,
        "Signature1",
        "signer_organization",
        json!("Sở Nội vụ tỉnh Thử nghiệm"),
    );
    assert_sig(
        &report,
        "Signature1",
        "claimed_signing_time",
        json!("2026-03-01T08:00:00Z"),
    );
    // No CRL of the issuer given: revocation is unknown.
    assert_sig(&report, "Signature1", "revoked", Value::Null);
}

#[test]
fn an_ecdsa_signature_is_valid_and_not_revoked() {
    let case = Case::new("ecdsa");
    let pki = pdf::test_pki();
    let file = case.write("ec.pdf", &signed_once(&SignOptions::new(&pki.ec_signer)));
    let report = case.verify_with_crl(&file).report();
    assert_valid_single(&report, &pki.ec_signer, "ECDSA-P256-SHA256");
    // The issuer's CRL is given and does not list the signer.
    assert_sig(&report, "Signature1", "revoked", json!(false));
}

#[test]
fn an_rsa_pss_signature_is_valid() {
    let case = Case::new("pss");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.rsa_signer);
    opts.rsa_scheme = RsaScheme::Pss;
    let file = case.write("pss.pdf", &signed_once(&opts));
    let report = case.verify(&file).report();
    assert_valid_single(&report, &pki.rsa_signer, "RSA-PSS-SHA256");
}

#[test]
fn a_p384_sha384_signature_is_valid() {
    let case = Case::new("sha384");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.p384_signer);
    opts.digest = DigestAlg::Sha384;
    let file = case.write("p384.pdf", &signed_once(&opts));
    let report = case.verify(&file).report();
    assert_valid_single(&report, &pki.p384_signer, "ECDSA-P384-SHA384");
}

#[test]
fn signer_and_organisation_sign_in_two_revisions() {
    let case = Case::new("two");
    let pki = pdf::test_pki();
    let one = signed_once(&SignOptions::new(&pki.rsa_signer));
    let mut org = SignOptions::new(&pki.organisation);
    org.field_name = "Signature2".into();
    // sha256WithRSAEncryption as the SignerInfo's algorithm (the first
    // signature names rsaEncryption): both are RSA-SHA256.
    org.rsa_scheme = RsaScheme::Pkcs1WithHash;
    org.signing_time = datetime!(2026-03-01 09:30:00 UTC);
    let two = pdf::sign(&one, &org);
    let file = case.write("two.pdf", &two);
    let report = case.verify_with_crl(&file).report();
    assert_top(&report, "verdict", json!("valid"));
    assert_top(&report, "revisions", json!(3));
    assert_eq!(
        report["signatures"].as_array().unwrap().len(),
        2,
        "{report:#}"
    );
    assert_good_signature(&report, "Signature1", &pki.rsa_signer, "RSA-SHA256");
    assert_sig(&report, "Signature1", "covers_revision", json!(2));
    assert_sig(&report, "Signature1", "changes_after", json!("signatures"));
    assert_sig(
        &report,
        "Signature1",
        "claimed_signing_time",
        json!("2026-03-01T08:00:00Z"),
    );
    assert_good_signature(&report, "Signature2", &pki.organisation, "RSA-SHA256");
    assert_sig(&report, "Signature2", "covers_revision", json!(3));
    assert_sig(&report, "Signature2", "changes_after", json!("none"));
    assert_sig(
        &report,
        "Signature2",
        "claimed_signing_time",
        json!("2026-03-01T09:30:00Z"),
    );
    assert_sig(
        &report,
        "Signature2",
        "signer_subject",
        json!(format!("C=VN, O={org}, CN={org}", org = pdf::ORGANISATION)),
    );
    assert_sig(&report, "Signature2", "revoked", json!(false));
}

#[test]
fn a_timestamped_signature_takes_its_time_from_the_token() {
    let case = Case::new("timestamp");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.ec_signer);
    // The signed signingTime says 08:00; the TSA's genTime, 08:05, wins.
    opts.timestamp = Some(TimestampOptions {
        tsa: &pki.tsa,
        gen_time: datetime!(2026-03-01 08:05:00 UTC),
    });
    let file = case.write("ts.pdf", &signed_once(&opts));
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("valid"));
    assert_good_signature(&report, "Signature1", &pki.ec_signer, "ECDSA-P256-SHA256");
    assert_sig(&report, "Signature1", "timestamped", json!(true));
    assert_sig(
        &report,
        "Signature1",
        "signing_time",
        json!("2026-03-01T08:05:00Z"),
    );
    // The claim is still reported, as a claim; the chain was judged at the
    // proved time.
    assert_sig(
        &report,
        "Signature1",
        "claimed_signing_time",
        json!("2026-03-01T08:00:00Z"),
    );
    assert_sig(
        &report,
        "Signature1",
        "judged_at",
        json!("2026-03-01T08:05:00Z"),
    );
}

#[test]
fn a_base_document_with_xref_and_object_streams() {
    let case = Case::new("xref-stream");
    let pki = pdf::test_pki();
    let base = pdf::minimal_pdf_xref_stream("Cong van so 7/VP");
    let one = pdf::sign(&base, &SignOptions::new(&pki.ec_signer));
    let file = case.write("xs.pdf", &one);
    let report = case.verify(&file).report();
    assert_valid_single(&report, &pki.ec_signer, "ECDSA-P256-SHA256");

    // A second signature, again in a cross-reference stream.
    let mut org = SignOptions::new(&pki.organisation);
    org.field_name = "Signature2".into();
    let two = pdf::sign(&one, &org);
    let file = case.write("xs2.pdf", &two);
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("valid"));
    assert_top(&report, "revisions", json!(3));
    assert_sig(&report, "Signature1", "covers_revision", json!(2));
    assert_sig(&report, "Signature1", "changes_after", json!("signatures"));
    assert_sig(&report, "Signature2", "covers_revision", json!(3));
    assert_sig(&report, "Signature2", "changes_after", json!("none"));
    assert_good_signature(&report, "Signature2", &pki.organisation, "RSA-SHA256");
}

#[test]
fn an_unsigned_pdf_is_unsigned() {
    let case = Case::new("unsigned");
    let file = case.write("plain.pdf", &pdf::minimal_pdf("Khong ky"));
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("unsigned"));
    assert_top(&report, "signatures", json!([]));
    assert_top(&report, "revisions", json!(1));
}

// ---------------------------------------------------------------------------
// Changes after signing
// ---------------------------------------------------------------------------

#[test]
fn content_changed_after_signing_is_invalid() {
    let case = Case::new("content");
    let pki = pdf::test_pki();
    let signed = signed_once(&SignOptions::new(&pki.rsa_signer));
    let changed = pdf::append_content_change(&signed, "Quyet dinh so 16/QD-SNV");
    let file = case.write("changed.pdf", &changed);
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("invalid"));
    assert_top(&report, "revisions", json!(3));
    // The signature itself is still good over what it covers.
    assert_good_signature(&report, "Signature1", &pki.rsa_signer, "RSA-SHA256");
    assert_sig(&report, "Signature1", "covers_revision", json!(2));
    assert_sig(&report, "Signature1", "changes_after", json!("content"));
}

#[test]
fn a_text_annotation_after_signing_is_still_valid() {
    let case = Case::new("annotation");
    let pki = pdf::test_pki();
    let signed = signed_once(&SignOptions::new(&pki.rsa_signer));
    let annotated = pdf::append_text_annotation(&signed, "Đã xem, chuyển phòng Tổ chức");
    let file = case.write("annotated.pdf", &annotated);
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("valid"));
    assert_top(&report, "revisions", json!(3));
    assert_good_signature(&report, "Signature1", &pki.rsa_signer, "RSA-SHA256");
    assert_sig(&report, "Signature1", "covers_revision", json!(2));
    assert_sig(&report, "Signature1", "changes_after", json!("annotations"));
}

// ---------------------------------------------------------------------------
// Broken signatures
// ---------------------------------------------------------------------------

#[test]
fn a_byte_flipped_inside_the_signed_range_is_invalid() {
    let case = Case::new("flip");
    let pki = pdf::test_pki();
    let signed = signed_once(&SignOptions::new(&pki.ec_signer));
    let file = case.write("flipped.pdf", &pdf::flip_signed_byte(&signed));
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("invalid"));
    assert_sig(&report, "Signature1", "digest_ok", json!(false));
}

#[test]
fn a_tampered_signature_value_is_invalid() {
    let case = Case::new("tamper");
    let pki = pdf::test_pki();
    let signed = signed_once(&SignOptions::new(&pki.rsa_signer));
    let file = case.write("tampered.pdf", &pdf::tamper_signature_value(&signed));
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("invalid"));
    // The bytes the ByteRange covers are intact; the signature over the
    // signed attributes is not.
    assert_sig(&report, "Signature1", "digest_ok", json!(true));
    assert_sig(&report, "Signature1", "signature_ok", json!(false));
}

#[test]
fn a_byte_range_short_of_its_revision_is_invalid() {
    let case = Case::new("short-range");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.ec_signer);
    // The last bytes of the revision ("%%EOF\n") are outside the ByteRange.
    opts.uncovered_tail = 6;
    let file = case.write("short.pdf", &signed_once(&opts));
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("invalid"));
    // What it covers is signed correctly; what it leaves out is the fault.
    assert_sig(&report, "Signature1", "digest_ok", json!(true));
    assert_sig(&report, "Signature1", "signature_ok", json!(true));
}

#[test]
fn an_untrusted_ca_is_indeterminate() {
    let case = Case::new("untrusted");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.untrusted_signer);
    opts.include_chain = true; // its own root in the CMS must not make it trusted
    let file = case.write("untrusted.pdf", &signed_once(&opts));
    let report = case.verify_with_crl(&file).report();
    assert_top(&report, "verdict", json!("indeterminate"));
    assert_sig(&report, "Signature1", "digest_ok", json!(true));
    assert_sig(&report, "Signature1", "signature_ok", json!(true));
    assert_sig(&report, "Signature1", "chain_ok", json!(false));
    assert_sig(&report, "Signature1", "trusted_anchor", Value::Null);
    // The CRL given is the trusted root's, not the signer's issuer's.
    assert_sig(&report, "Signature1", "revoked", Value::Null);
    assert_sig(
        &report,
        "Signature1",
        "signer_subject",
        json!(pki.untrusted_signer.subject()),
    );
}

#[test]
fn a_revoked_signer_is_invalid_with_the_crl_and_unknown_without() {
    let case = Case::new("revoked");
    let pki = pdf::test_pki();
    let file = case.write("revoked.pdf", &signed_once(&SignOptions::new(&pki.revoked)));

    let report = case.verify_with_crl(&file).report();
    assert_top(&report, "verdict", json!("invalid"));
    assert_sig(&report, "Signature1", "revoked", json!(true));
    assert_sig(&report, "Signature1", "digest_ok", json!(true));
    assert_sig(&report, "Signature1", "signature_ok", json!(true));

    let report = case.verify(&file).report();
    assert_sig(&report, "Signature1", "revoked", Value::Null);
    assert_top(&report, "verdict", json!("valid"));
}

/// A key revoked before the document reached the verifier signs it and
/// writes an earlier date, before its revocation, into the signature: the
/// claim proves nothing, so the signature cannot be relied on.
#[test]
fn a_revoked_key_backdating_its_signature_is_not_valid() {
    let case = Case::new("backdated");
    let pki = pdf::test_pki();
    // Revoked 2026-06-01 (on the CRL); signed now, claiming 2026-03-01.
    let mut opts = SignOptions::new(&pki.revoked_later);
    opts.signing_time = datetime!(2026-03-01 08:00:00 UTC);
    let file = case.write("backdated.pdf", &signed_once(&opts));
    let report = case.verify_with_crl(&file).report();
    assert_top(&report, "verdict", json!("indeterminate"));
    assert_sig(&report, "Signature1", "revoked", json!(true));
    assert_sig(&report, "Signature1", "timestamped", json!(false));
    assert_sig(&report, "Signature1", "signing_time", Value::Null);
    assert_sig(
        &report,
        "Signature1",
        "claimed_signing_time",
        json!("2026-03-01T08:00:00Z"),
    );
    // Judged now, after the revocation.
    let judged = sig(&report, "Signature1")["judged_at"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        judged.as_str() > pdf::rfc3339(pdf::revoked_later_at()).as_str(),
        "judged at {judged}, not at the claimed time:\n{report:#}"
    );
    // The signature itself is intact: the doubt is only about when.
    assert_sig(&report, "Signature1", "digest_ok", json!(true));
    assert_sig(&report, "Signature1", "signature_ok", json!(true));
    let first = report["reasons"][0].as_str().unwrap();
    assert!(
        first.contains("revoked on 2026-06-01") && first.contains("timestamp"),
        "the first reason says it was revoked and nothing proves it signed before: {report:#}"
    );

    // Asked about a moment before the revocation (`--at`), it was valid then.
    let run = run_verify_args(
        &file,
        &[
            "--anchors",
            case.anchor.to_str().unwrap(),
            "--crl",
            case.crl.to_str().unwrap(),
            "--at",
            "2026-05-01T00:00:00Z",
        ],
    );
    let report = run.report();
    assert_top(&report, "verdict", json!("valid"));
    assert_sig(&report, "Signature1", "revoked", json!(false));
    assert_sig(
        &report,
        "Signature1",
        "judged_at",
        json!("2026-05-01T00:00:00Z"),
    );
}

/// A trusted timestamp proves the signature older than the revocation.
#[test]
fn a_signature_timestamped_before_its_revocation_is_valid() {
    let case = Case::new("timestamped-before-revocation");
    let pki = pdf::test_pki();
    let mut opts = SignOptions::new(&pki.revoked_later);
    opts.timestamp = Some(TimestampOptions {
        tsa: &pki.tsa,
        gen_time: datetime!(2026-03-01 08:05:00 UTC),
    });
    let file = case.write("ts-before.pdf", &signed_once(&opts));
    let report = case.verify_with_crl(&file).report();
    assert_top(&report, "verdict", json!("valid"));
    assert_sig(&report, "Signature1", "revoked", json!(false));
    assert_sig(&report, "Signature1", "timestamped", json!(true));
    assert_sig(
        &report,
        "Signature1",
        "judged_at",
        json!("2026-03-01T08:05:00Z"),
    );
}

#[test]
fn a_signer_expired_at_signing_time_is_invalid() {
    let case = Case::new("expired");
    let pki = pdf::test_pki();
    // Valid 2020–2021; signed 2026-03-01.
    let file = case.write("expired.pdf", &signed_once(&SignOptions::new(&pki.expired)));
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("invalid"));
    assert_sig(&report, "Signature1", "expired_at_signing", json!(true));
    assert_sig(&report, "Signature1", "digest_ok", json!(true));
    assert_sig(&report, "Signature1", "signature_ok", json!(true));
}

// ---------------------------------------------------------------------------
// Files that are not readable PDFs
// ---------------------------------------------------------------------------

/// Whether a refusal's sentence says something about why.
fn mentions_any(err: &str, words: &[&str]) -> bool {
    let e = err.to_lowercase();
    words.iter().any(|w| e.contains(w))
}

#[test]
fn a_truncated_pdf_is_refused() {
    let case = Case::new("truncated");
    let pki = pdf::test_pki();
    let signed = signed_once(&SignOptions::new(&pki.rsa_signer));
    // Cut inside the page object of the first revision: no cross-reference
    // table, no trailer, no complete page anywhere.
    let cut = signed
        .windows(7)
        .position(|w| w == b"3 0 obj")
        .expect("page object")
        + 30;
    let file = case.write("truncated.pdf", &pdf::truncate(&signed, cut));
    let run = case.verify(&file);
    let err = run.refused();
    let why = [
        "truncat",
        "end of file",
        "end-of-file",
        "incomplete",
        "startxref",
        "%%eof",
        "cross-reference",
        "xref",
        "trailer",
        "damaged",
        "corrupt",
        "unexpected end",
    ];
    assert!(
        mentions_any(&err, &why),
        "the sentence should say why (one of {why:?}):\n{}",
        run.describe()
    );
}

#[test]
fn a_file_that_is_not_a_pdf_is_refused() {
    let case = Case::new("not-pdf");
    for (name, bytes) in [
        (
            "letter.pdf",
            b"Kinh gui: So Noi vu\nDay la thu, khong phai PDF.\n".repeat(20),
        ),
        ("empty.pdf", Vec::new()),
    ] {
        let file = case.write(name, &bytes);
        let run = case.verify(&file);
        let err = run.refused();
        assert!(
            mentions_any(&err, &["pdf"]),
            "the sentence should say the file is not a PDF:\n{}",
            run.describe()
        );
    }
}

/// Exit 2 naming the cross-reference table, or exit 0 after recovering it
/// with the verdict `expected`; says which.
fn refused_or_recovered(run: &Run, what: &str, expected: &str) {
    match run.status.code() {
        Some(2) => {
            let err = run.refused();
            assert!(
                mentions_any(&err, &["cross-reference", "xref", "startxref"]),
                "{what}: refused, but the sentence does not mention the cross-reference \
                 table:\n{}",
                run.describe()
            );
            notice(&format!("{what}: refused (exit 2): {err}"));
        }
        Some(0) => {
            let report = run.report();
            assert_eq!(
                report["verdict"],
                expected,
                "{what}: the verifier recovered the cross-reference table, so the verdict \
                 should be {expected:?}:\n{}",
                run.describe()
            );
            notice(&format!(
                "{what}: recovered (exit 0, verdict {})",
                report["verdict"]
            ));
        }
        _ => panic!(
            "{what}: expected exit 2 (refused, naming the cross-reference table) or exit 0 \
             (recovered), got:\n{}",
            run.describe()
        ),
    }
}

#[test]
fn a_malformed_xref_is_refused_or_recovered() {
    let case = Case::new("xref");
    let pki = pdf::test_pki();

    // An unsigned document whose only `xref` keyword is garbage: if it is
    // recovered, it is still an unsigned document.
    let broken = pdf::corrupt_xref(&pdf::minimal_pdf("Hello"), pdf::XrefDamage::GarbageKeyword);
    let file = case.write("garbage-keyword.pdf", &broken);
    refused_or_recovered(&case.verify(&file), "garbage `xref` keyword", "unsigned");

    // A signed document whose newest table has wrong offsets: that table is
    // inside the signed range, so if it is recovered the digest fails.
    let signed = signed_once(&SignOptions::new(&pki.ec_signer));
    let broken = pdf::corrupt_xref(&signed, pdf::XrefDamage::WrongOffsets);
    let file = case.write("wrong-offsets.pdf", &broken);
    refused_or_recovered(&case.verify(&file), "wrong xref offsets", "invalid");
}

// ---------------------------------------------------------------------------
// A large document
// ---------------------------------------------------------------------------

const LARGE: u64 = 200 << 20;
const RSS_LIMIT_KIB: u64 = 100 * 1024;
const HELPER_ENV: &str = "LIENTHONG_E2E_LARGE_PDF_DIR";

/// Run by [`a_200_mb_signed_pdf_is_verified_in_bounded_memory`] in a child
/// process of its own (this test binary again), so that the peak memory of
/// writing and signing the large PDF is measured apart from the other tests
/// of this process: writes `large.pdf` in the directory named by the
/// environment, signs it in place with the key and certificate found there.
#[test]
#[ignore = "a helper: a_200_mb_signed_pdf_is_verified_in_bounded_memory runs it"]
fn large_pdf_writer() {
    let Some(dir) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let read = |name: &str| std::fs::read(dir.join(name)).expect("helper input");
    let signer = Identity::from_parts(
        read("signer.der"),
        pdf::KeyKind::Rsa2048,
        read("signer.pk8"),
        read("issuer.der"),
    );
    let file = dir.join("large.pdf");
    let size = pdf::write_large_pdf(&file, LARGE, "Bao cao tong hop").expect("write large PDF");
    assert!(
        size > LARGE - (8 << 20),
        "the large PDF is only {size} bytes"
    );
    pdf::sign_file_in_place(&file, &SignOptions::new(&signer)).expect("sign large PDF");
}

#[test]
fn a_200_mb_signed_pdf_is_verified_in_bounded_memory() {
    let case = Case::new("large");
    let pki = pdf::test_pki();
    let dir = case.dir.path();
    std::fs::write(dir.join("signer.der"), &pki.rsa_signer.cert_der).unwrap();
    std::fs::write(dir.join("signer.pk8"), pki.rsa_signer.key.pkcs8_der()).unwrap();
    std::fs::write(dir.join("issuer.der"), &pki.rsa_signer.issuer_der).unwrap();

    // Write and sign in a child process, polling its peak RSS.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pdf_verify::large_pdf_writer",
            "--ignored",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the large-PDF writer");
    let pid = child.id();
    let start = Instant::now();
    let mut writer_peak = 0;
    loop {
        if let Some(kib) = proc_status_kib(pid, "VmHWM:") {
            writer_peak = writer_peak.max(kib);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the large-PDF writer did not finish within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let file = dir.join("large.pdf");
    assert!(
        out.status.success() && file.is_file(),
        "the large-PDF writer failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(
        writer_peak < RSS_LIMIT_KIB,
        "writing and signing the {size}-byte PDF peaked at {writer_peak} KiB: the toolkit \
         must stream"
    );

    let run = run_verify(&file, &[&case.anchor], &[], Duration::from_secs(600));
    let report = run.report();
    assert_valid_single(&report, &pki.rsa_signer, "RSA-SHA256");
    // The verifier's own VmHWM, polled every few milliseconds while it ran.
    // Not getrusage(RUSAGE_CHILDREN): it is the largest child of this whole
    // test process, and Linux counts in a child's maximum the parent's RSS
    // at the moment it was spawned (the vfork before exec), so it measures
    // the test process as much as the verifier.
    let peak = run.polled_peak_kib;
    notice(&format!(
        "{size}-byte PDF: written and signed in {writer_peak} KiB; `pdf verify` peaked at \
         {peak} KiB"
    ));
    assert!(
        peak > 0,
        "could not read /proc/<pid>/status of the verifier while it ran"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "`pdf verify` of a {size}-byte PDF peaked at {peak} KiB (VmHWM); the limit is \
         {RSS_LIMIT_KIB} KiB: it must stream the file"
    );
}

// ---------------------------------------------------------------------------
// Bounded work per PDF
// ---------------------------------------------------------------------------

/// A configuration for `pdf verify --config` with these `[limits]` lines.
fn limits_config(case: &Case, lines: &str) -> PathBuf {
    case.write("lienthong.toml", format!("[limits]\n{lines}\n").as_bytes())
}

/// A PDF declaring a thousand signatures, each over (nearly) the whole
/// file, is checked up to the signature limit and within the hashing
/// budget (four times its size), and says it was not fully checked. (Its
/// added signatures' byte ranges do not match their /Contents: the ones
/// checked are invalid, and the verdict with them.)
#[test]
fn many_signatures_over_the_whole_file_are_cut_off_at_the_limits() {
    let case = Case::new("many-signatures");
    let pki = pdf::test_pki();
    let signed = signed_once(&SignOptions::new(&pki.ec_signer));
    let costly = pdf::append_overlapping_signatures(&signed, 1000);
    let size = costly.len() as u64;
    let file = case.write("costly.pdf", &costly);
    let anchor = case.anchor.display().to_string();

    // The default limits: 20 signatures.
    let report = run_verify_args(&file, &["--anchors", &anchor]).report();
    assert_top(&report, "verdict", json!("invalid"));
    assert_eq!(
        report["signatures"].as_array().unwrap().len(),
        20,
        "{report:#}"
    );
    let why = report["limit_reached"].as_str().unwrap_or_default();
    assert!(why.contains("pdf_max_signatures"), "{report:#}");
    assert!(
        report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == why),
        "the limit is among the reasons: {report:#}"
    );
    let hashed = report["bytes_hashed"].as_u64().unwrap();
    assert!(
        hashed <= 4 * size,
        "{hashed} bytes hashed for a {size}-byte file: more than 4 times its size"
    );

    // Signatures allowed, the hashing budget stops it.
    let config = limits_config(&case, "pdf_max_signatures = 5000");
    let config = config.display().to_string();
    let report = run_verify_args(&file, &["--anchors", &anchor, "--config", &config]).report();
    assert_top(&report, "verdict", json!("invalid"));
    let why = report["limit_reached"].as_str().unwrap_or_default();
    assert!(why.contains("pdf_max_hash_multiple"), "{report:#}");
    let hashed = report["bytes_hashed"].as_u64().unwrap();
    assert!(
        hashed <= 4 * size,
        "{hashed} bytes hashed for a {size}-byte file: more than 4 times its size"
    );
    notice(&format!(
        "1001 signatures over a {size}-byte file: cut off after {hashed} bytes hashed"
    ));
}

/// The signatures of a signed document share the bytes before their
/// /Contents: two signatures cost less than one reading of the file.
#[test]
fn the_signatures_of_a_signed_document_are_hashed_in_about_one_reading() {
    let case = Case::new("shared-hashing");
    let pki = pdf::test_pki();
    let one = signed_once(&SignOptions::new(&pki.rsa_signer));
    let mut org = SignOptions::new(&pki.organisation);
    org.field_name = "Signature2".into();
    let two = pdf::sign(&one, &org);
    let file = case.write("two.pdf", &two);
    let report = case.verify(&file).report();
    assert_top(&report, "verdict", json!("valid"));
    assert_top(&report, "limit_reached", Value::Null);
    let hashed = report["bytes_hashed"].as_u64().unwrap();
    assert!(
        hashed > 0 && hashed <= two.len() as u64,
        "{hashed} bytes hashed for a {}-byte file with two signatures",
        two.len()
    );
}

const BOMB_RSS_LIMIT_KIB: u64 = 40 * 1024;

/// A ZIP archive expanding to 64 MiB of zeros (a thousand times its size)
/// is unpacked no further than the limits allow (100 times the archive)
/// and never into memory; the report says it was not checked. One that
/// lies about its size is refused as damaged.
#[test]
fn a_zip_bomb_is_not_unpacked_past_the_limits() {
    let case = Case::new("zip-bomb");
    let zip = case.dir.path().join("bomb.zip");
    let mut zeros = std::io::repeat(0).take(64 << 20);
    let zip_size = pdf::write_zip(&zip, "quyet-dinh.pdf", &mut zeros, None).unwrap();
    let run = case.verify(&zip);
    let report = run.report();
    assert_top(&report, "verdict", json!("indeterminate"));
    assert_top(&report, "zip_entry", json!("quyet-dinh.pdf"));
    let why = report["limit_reached"].as_str().unwrap_or_default();
    assert!(
        why.contains("pdf_max_zip_ratio") && why.contains("unzipped"),
        "{report:#}"
    );
    let peak = run.polled_peak_kib;
    notice(&format!(
        "a {zip_size}-byte ZIP of 64 MiB: `pdf verify` peaked at {peak} KiB"
    ));
    assert!(
        peak > 0 && peak < BOMB_RSS_LIMIT_KIB,
        "`pdf verify` of a ZIP bomb peaked at {peak} KiB (VmHWM); the limit is \
         {BOMB_RSS_LIMIT_KIB} KiB: it must not unpack into memory"
    );
    // The scratch file went with the process.
    let tmp = case.dir.path().join("data/blobs/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");

    // Its directory claiming 1 MiB: the decompressor stops there.
    let liar = case.dir.path().join("liar.zip");
    let mut zeros = std::io::repeat(0).take(64 << 20);
    pdf::write_zip(&liar, "quyet-dinh.pdf", &mut zeros, Some(1 << 20)).unwrap();
    let run = case.verify(&liar);
    let err = run.refused();
    assert!(
        mentions_any(&err, &["declared", "unpacked", "zip"]),
        "{}",
        run.describe()
    );
    assert!(
        run.polled_peak_kib < BOMB_RSS_LIMIT_KIB,
        "{} KiB",
        run.polled_peak_kib
    );
}

/// A signed PDF of 100 MiB, zipped, is unpacked to the store's temporary
/// area (not into memory) and checked in bounded memory. (The toolkit's
/// filler lines compress 120 times, far more than a real PDF's compressed
/// streams: the ZIP ratio limit is raised for it.)
#[test]
fn a_large_zipped_pdf_is_checked_in_bounded_memory() {
    let case = Case::new("large-zip");
    let pki = pdf::test_pki();
    let dir = case.dir.path();
    let file = dir.join("large.pdf");
    let size = pdf::write_large_pdf(&file, 100 << 20, "Bao cao tong hop").unwrap();
    pdf::sign_file_in_place(&file, &SignOptions::new(&pki.ec_signer)).unwrap();
    let zip = dir.join("large.zip");
    let mut pdf_file = std::fs::File::open(&file).unwrap();
    pdf::write_zip(&zip, "bao-cao.pdf", &mut pdf_file, None).unwrap();
    std::fs::remove_file(&file).unwrap();

    let config = limits_config(&case, "pdf_max_zip_ratio = 1000");
    let run = run_verify_full(
        &zip,
        &[
            "--anchors",
            case.anchor.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        Duration::from_secs(600),
    );
    let report = run.report();
    assert_top(&report, "verdict", json!("valid"));
    assert_top(&report, "zip_entry", json!("bao-cao.pdf"));
    assert_good_signature(&report, "Signature1", &pki.ec_signer, "ECDSA-P256-SHA256");
    let peak = run.polled_peak_kib;
    notice(&format!(
        "a zipped {size}-byte PDF: `pdf verify` peaked at {peak} KiB"
    ));
    assert!(
        peak > 0 && peak < RSS_LIMIT_KIB,
        "`pdf verify` of a zipped {size}-byte PDF peaked at {peak} KiB (VmHWM); the limit \
         is {RSS_LIMIT_KIB} KiB: it must unpack to disk"
    );
}
