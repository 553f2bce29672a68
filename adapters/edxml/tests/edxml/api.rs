//! The crate as the gateway uses it: a package decoded to files and fed on,
//! a stored envelope delivered as edXML with the gateway's hop, inspect.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use crate::common::*;
use lienthong_edxml::{
    DecodeOptions, DirSink, DirSource, EncodeOptions, FnSource, MemorySource, NAMESPACE,
    NoAttachments, Policy, check, decode, encode, encode_to_vec, inspect_json, trace_header,
    validate,
};
use lienthong_proto::v1::{Envelope, StatusNotice, envelope::Body};
use lienthong_types::error::Reason;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// (a) A submission: decode into a temporary directory, check under the
/// policy, then read each attachment back in order (as the gateway feeds
/// `Submission::write_chunk`).
#[test]
fn a_package_decoded_to_files_feeds_a_submission() {
    let tmp = ok(tempfile::tempdir(), "tempdir");
    let input = BufReader::new(ok(File::open(fixture("edoc_new.edxml")), "fixture"));
    let mut sink = DirSink::new(tmp.path());
    let opts = DecodeOptions {
        message_id: Some("amqp-message-id-1".into()),
        ..DecodeOptions::default()
    };
    let package = ok(decode(input, &mut sink, &opts), "decode");
    assert!(check(&package, Policy::Lenient).is_ok());
    assert_eq!(package.envelope.message_id, "amqp-message-id-1");
    assert_eq!(package.envelope.from, "000.00.01.H35");
    let Some(Body::Document(doc)) = &package.envelope.body else {
        panic!("not a document")
    };
    assert_eq!(sink.paths().len(), doc.attachments.len());
    for (i, a) in doc.attachments.iter().enumerate() {
        let mut bytes = Vec::new();
        let path = sink.path(i).map(PathBuf::from).unwrap_or_default();
        ok(
            ok(File::open(path), "attachment").read_to_end(&mut bytes),
            "read",
        );
        assert_eq!(bytes.len() as u64, a.size);
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
            a.sha256.as_ref()
        );
    }
    // The ZIP's inner file is reported; the ZIP stays the attachment.
    let entry = package.attachments[0].zip_entry.clone();
    assert_eq!(entry.map(|e| e.name), Some("cong-van.txt".to_owned()));
    assert_eq!(doc.attachments[0].content_type, "application/zip");
    // Without an id, the package's digest is the id: a resend is a duplicate.
    let again = ok(
        decode(
            BufReader::new(ok(File::open(fixture("edoc_new.edxml")), "fixture")),
            &mut DirSink::new(tmp.path()),
            &DecodeOptions::default(),
        ),
        "decode",
    );
    assert_eq!(
        again.envelope.message_id,
        format!("edxml-{}", hex::encode(again.sha256))
    );
}

/// (b) A delivery: the stored envelope and its blobs, written as edXML with
/// this gateway's TraceHeader appended.
#[test]
fn a_stored_envelope_is_delivered_with_the_gateways_hop() {
    let tmp = ok(tempfile::tempdir(), "tempdir");
    let (stored, _) = {
        let mut sink = DirSink::new(tmp.path());
        let input = BufReader::new(ok(File::open(fixture("edoc_update.edxml")), "fixture"));
        (
            ok(
                decode(input, &mut sink, &DecodeOptions::default()),
                "decode",
            ),
            sink,
        )
    };
    let at = ok(
        time::OffsetDateTime::from_unix_timestamp(1_772_500_000),
        "time",
    );
    let options = EncodeOptions {
        trace: Some(trace_header("000.00.00.H35", at)),
    };
    let mut out = Vec::new();
    ok(
        encode(
            &stored.envelope,
            &mut DirSource(tmp.path().to_owned()),
            &mut out,
            &options,
        ),
        "encode",
    );
    let (delivered, _) = decode_with_id(&out, &stored.envelope.message_id);
    let trace = &delivered.envelope.trace_headers;
    assert_eq!(trace.len(), stored.envelope.trace_headers.len() + 1);
    assert_eq!(
        trace.last().map(|t| t.organ_id.as_str()),
        Some("000.00.00.H35")
    );
    assert_eq!(
        trace.last().map(|t| t.timestamp.as_str()),
        Some("2026/03/03 08:06:40")
    );
    let mut without_hop = delivered.envelope.clone();
    without_hop.trace_headers.pop();
    assert_eq!(without_hop, stored.envelope);

    // A blob store that lost a byte is caught, not delivered.
    let mut corrupt = FnSource::new(|_, _| Ok(Box::new(&b"short"[..]) as Box<dyn Read>));
    let e = match encode_to_vec(&stored.envelope, &mut corrupt, &EncodeOptions::default()) {
        Ok(_) => panic!("encoded wrong bytes"),
        Err(e) => e,
    };
    assert_eq!(e.reason(), Reason::DigestMismatch, "{e}");
}

/// (c) inspect: the JSON the CLI prints.
#[test]
fn inspect_reports_the_documented_fields() {
    let (p, _) = decode_bytes(&ok(std::fs::read(fixture("edoc_replace.edxml")), "fixture"));
    let j = inspect_json(&p);
    let mut keys: Vec<&str> = j
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attachments",
            "business_type",
            "code_notation",
            "code_number",
            "document_id",
            "from",
            "kind",
            "problems",
            "promulgation_date",
            "status_code",
            "subject",
            "to",
            "trace"
        ]
    );
    assert_eq!(j["kind"], "edoc");
    assert_eq!(j["business_type"], 3);
    assert_eq!(j["status_code"], serde_json::Value::Null);
    assert_eq!(j["promulgation_date"], "2026/03/02");
    assert_eq!(
        j["to"],
        serde_json::json!(["000.00.12.H35", "000.00.13.H35"])
    );
    assert_eq!(j["attachments"][1]["name"], "ke-hoach.txt");
    assert_eq!(
        j["attachments"][1]["size"],
        "Kế hoạch chuyển đổi số năm 2026 (bản dự thảo).".len()
    );
    assert_eq!(j["trace"][0]["organ_id"], "000.00.01.H35");
    assert_eq!(j["problems"], serde_json::json!([]));
}

#[test]
fn a_certificate_in_the_signature_is_reported() {
    let key = ok(rcgen::KeyPair::generate(), "key");
    let mut params = ok(
        rcgen::CertificateParams::new(vec!["vanphong.laichau.gov.vn".to_owned()]),
        "params",
    );
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Văn phòng UBND tỉnh Lai Châu");
    let cert = ok(params.self_signed(&key), "cert");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert.der());
    // Wrapped in lines, as XML-DSig writers do.
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    let sig = format!(
        "<Signature><SignedInfo/><SignatureValue>AAAA</SignatureValue><KeyInfo><X509Data><X509Certificate>\n{}\n</X509Certificate></X509Data></KeyInfo></Signature>",
        lines.join("\n")
    );
    let xml = String::from_utf8_lossy(&ok(std::fs::read(fixture("status_03.edxml")), "fixture"))
        .replace("</edXMLHeader>", &format!("{sig}</edXMLHeader>"));
    let (p, _) = decode_bytes(xml.as_bytes());
    let Some(info) = p.signature.as_ref() else {
        panic!("no signature reported")
    };
    assert!(info.unreadable.is_empty(), "{:?}", info.unreadable);
    let c = &info.certificates[0];
    assert!(c.subject.contains("Lai Châu"), "{}", c.subject);
    assert!(c.is_valid_at(time::OffsetDateTime::now_utc()));
    assert_eq!(c.der, cert.der().to_vec());
    // The Signature is carried as it came.
    assert!(
        p.envelope
            .extensions
            .iter()
            .any(|e| e.path == "/edXML/edXMLEnvelope/edXMLHeader/Signature"
                && e.xml.contains("X509Certificate")),
    );
}

#[test]
fn tolerated_oddities_are_problems_only_under_the_strict_policy() {
    let body = String::from_utf8_lossy(&ok(std::fs::read(fixture("status_05.edxml")), "fixture"))
        .replace("<?xml version=\"1.0\" encoding=\"UTF-8\"?>", "")
        .replace(
            "<StatusCode>05</StatusCode>",
            "<edXML:StatusCode>05</edXML:StatusCode>",
        );
    assert!(body.contains(&format!("<edXML xmlns=\"{NAMESPACE}\">")));
    let xml = format!("1212\n{body}");
    let (p, _) = decode_bytes(xml.as_bytes());
    assert!(
        check(&p, Policy::Lenient).is_ok(),
        "{:?}",
        validate(&p, Policy::Lenient)
    );
    let strict: Vec<String> = validate(&p, Policy::Strict)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(strict.iter().any(|s| s.contains("\"1212\"")), "{strict:?}");
    assert!(
        strict
            .iter()
            .any(|s| s.contains("prefix edXML is used without being declared")),
        "{strict:?}"
    );
    // A declaration of another encoding is refused.
    let latin = format!("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{body}");
    let mut sink = lienthong_edxml::MemorySink::new();
    let e = match decode(latin.as_bytes(), &mut sink, &DecodeOptions::default()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert!(e.message().contains("UTF-8"), "{e}");
}

#[test]
fn statuses_to_someone_else_and_values_xml_cannot_carry() {
    let env = Envelope {
        message_id: "s-1".into(),
        from: "000.00.12.H35".into(),
        to: vec!["000.00.13.H35".into()],
        body: Some(Body::Status(StatusNotice {
            document_id: "000.00.01.H35,2026/03/02,15/VP-KGVX".into(),
            document_from: "000.00.01.H35".into(),
            code: "03".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let xml = ok(
        encode_to_vec(&env, &mut NoAttachments, &EncodeOptions::default()),
        "encode",
    );
    let (p, _) = decode_with_id(&xml, "s-1");
    assert_eq!(p.envelope, env);
    let mut bad = env.clone();
    bad.from = "000.00.12.H35\u{1}".into();
    let e = match encode_to_vec(
        &bad,
        &mut MemorySource::default(),
        &EncodeOptions::default(),
    ) {
        Ok(_) => panic!("encoded a control character"),
        Err(e) => e,
    };
    assert_eq!(e.reason(), Reason::Malformed);
    assert!(
        e.message().contains("U+0001") && e.message().contains("From/OrganId"),
        "{e}"
    );
}
