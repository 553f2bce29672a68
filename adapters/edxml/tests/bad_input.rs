//! Bad packages get a clear refusal, in bounded memory and time.
//!
//! A binary of its own: it measures the process's peak memory and its
//! threads' CPU time, which other themes' tests would add to.

#[path = "edxml/common.rs"]
mod common;

use std::io::{self, Read};
use std::time::{Duration, Instant};

use common::*;
use lienthong_edxml::{
    AttachmentMeta, AttachmentSink, DecodeOptions, DigestSink, Limits, MemorySink, NAMESPACE,
    Policy, check, decode, validate,
};
use lienthong_types::error::{Error, Reason};
use ring::digest;

fn refuse(xml: &[u8]) -> Error {
    match decode(xml, &mut MemorySink::new(), &DecodeOptions::default()) {
        Ok(p) => panic!("accepted: {:?}", p.envelope),
        Err(e) => e,
    }
}

fn assert_malformed(xml: &[u8], needle: &str) {
    let started = work_done();
    let e = refuse(xml);
    assert_eq!(e.reason(), Reason::Malformed, "{e}");
    assert!(e.message().contains(needle), "{needle:?} not in: {e}");
    let took = work_done() - started;
    assert!(took < Duration::from_secs(5), "took {took:?} of CPU");
}

/// The CPU time this thread has run, where Linux tells it (else the time
/// since the first call): what a refusal costs, which a 200 MB decode on
/// another test thread, or another process, does not add to as it adds to
/// the wall clock.
fn work_done() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_else(|| START.get_or_init(Instant::now).elapsed())
}

/// A small, valid document package around the given pieces.
fn package(header_extra: &str, manifest: &str, attachments: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="{NAMESPACE}">
  <edXMLEnvelope>
    <edXMLHeader>
      <MessageHeader>
        <From><OrganId>000.00.01.H35</OrganId><OrganName>Văn phòng UBND tỉnh Lai Châu</OrganName></From>
        <To><OrganId>000.00.12.H35</OrganId><OrganName>Sở Khoa học và Công nghệ</OrganName></To>
        <DocumentId>000.00.01.H35,2026/03/02,15/UBND-VP</DocumentId>
        <Code><CodeNumber>15</CodeNumber><CodeNotation>UBND-VP</CodeNotation></Code>
        <PromulgationInfo><Place>Lai Châu</Place><PromulgationDate>2026/03/02</PromulgationDate></PromulgationInfo>
        <Subject>V/v báo cáo tình hình chuyển đổi số</Subject>
        {header_extra}
      </MessageHeader>
      <TraceHeaderList><TraceHeader><OrganId>000.00.01.H35</OrganId><Timestamp>2026/03/02 08:30:00</Timestamp></TraceHeader></TraceHeaderList>
    </edXMLHeader>
    <edXMLBody><edXMLManifest version="1.0">{manifest}</edXMLManifest></edXMLBody>
  </edXMLEnvelope>
  <AttachmentEncoded>{attachments}</AttachmentEncoded>
</edXML>"#
    )
}

fn reference(cid: &str, name: &str) -> String {
    format!(
        "<Reference><ContentId>{cid}</ContentId><ContentType>text/plain</ContentType><AttachmentName>{name}</AttachmentName></Reference>"
    )
}

fn attachment(cid: &str, name: &str, b64: &str) -> String {
    format!(
        "<Attachment><ContentId>{cid}</ContentId><AttachmentName>{name}</AttachmentName><ContentType>text/plain</ContentType><ContentTransferEncoded>{b64}</ContentTransferEncoded></Attachment>"
    )
}

fn good() -> String {
    package(
        "",
        &reference("cid:1", "a.txt"),
        &attachment("cid:1", "a.txt", "eGluIGNow6Bv"),
    )
}

#[test]
fn the_baseline_package_is_accepted_under_both_policies() {
    let (p, atts) = decode_bytes(good().as_bytes());
    assert_eq!(atts, vec!["xin chào".as_bytes().to_vec()]);
    assert!(
        check(&p, Policy::Strict).is_ok(),
        "{:?}",
        validate(&p, Policy::Strict)
    );
    assert!(check(&p, Policy::Lenient).is_ok());
}

#[test]
fn not_xml() {
    assert_malformed(b"", "empty");
    assert_malformed(b"{\"from\": \"000.00.01.H35\"}", "no root element");
    assert_malformed(b"%PDF-1.7\n\xff\xfe binary", "UTF-8");
    assert_malformed(
        b"<edXML xmlns=\"http://www.mic.gov.vn/TBT/QCVN_102_2016\"><a></b></edXML>",
        "well-formed",
    );
}

#[test]
fn xml_of_another_namespace() {
    assert_malformed(
        b"<edXML xmlns=\"urn:not-edxml\"><x/></edXML>",
        "not an edXML package",
    );
    assert_malformed(b"<edXML><x/></edXML>", "no namespace");
    assert_malformed(
        b"<html xmlns=\"http://www.w3.org/1999/xhtml\"><body/></html>",
        "root element is <html>",
    );
}

#[test]
fn a_truncated_package() {
    let full = good();
    for cut in [full.len() / 3, full.len() - 40, full.len() - 12] {
        let e = refuse(&full.as_bytes()[..cut]);
        assert_eq!(e.reason(), Reason::Malformed, "cut at {cut}: {e}");
        assert!(
            e.message().contains("truncated") || e.message().contains("well-formed"),
            "cut at {cut}: {e}"
        );
    }
    // Inside the attachment's base64.
    let cut = full.find("eGluIGNo").unwrap_or(0) + 6;
    assert_malformed(&full.as_bytes()[..cut], "truncated");
}

#[test]
fn billion_laughs_is_refused_without_expanding_anything() {
    let mut xml =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE edXML [\n <!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        xml.push_str(&format!(
            " <!ENTITY lol{i} \"{}\">\n",
            format!("&lol{};", i - 1).repeat(10)
        ));
    }
    xml.push_str(&format!(
        "]>\n<edXML xmlns=\"{NAMESPACE}\"><x>&lol9;</x></edXML>"
    ));
    assert_malformed(xml.as_bytes(), "DOCTYPE");
    // Without the declaration the reference is refused too, not expanded.
    let bare = format!("<edXML xmlns=\"{NAMESPACE}\"><x>&lol9;</x></edXML>");
    assert_malformed(bare.as_bytes(), "&lol9;");
    let inside = good().replace("V/v báo cáo", "&lol9; báo cáo");
    assert_malformed(inside.as_bytes(), "not a predefined XML entity");
}

#[test]
fn an_external_entity_is_refused() {
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE edXML SYSTEM \"file:///etc/passwd\">\n<edXML xmlns=\"{NAMESPACE}\"/>"
    );
    assert_malformed(xml.as_bytes(), "DOCTYPE");
    let xml = format!(
        "<!DOCTYPE edXML [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><edXML xmlns=\"{NAMESPACE}\">&xxe;</edXML>"
    );
    assert_malformed(xml.as_bytes(), "DOCTYPE");
}

#[test]
fn base64_with_errors() {
    for (b64, needle) in [
        ("eGluIGNo$6Bv", "'$' at character 9"),
        ("eGluI", "middle of a group"),
        ("eGk=eGk=", "'=' at character 4"),
        ("eGluIGNow6Bv-_", "'-'"),
        ("${__StringFromFile(test.txt,,,)}", "'$' at character 1"),
    ] {
        let xml = package(
            "",
            &reference("cid:1", "a.txt"),
            &attachment("cid:1", "a.txt", b64),
        );
        let e = refuse(xml.as_bytes());
        assert_eq!(e.reason(), Reason::Malformed, "{b64}: {e}");
        assert!(
            e.message().contains(needle) && e.message().contains("a.txt"),
            "{b64}: {e}"
        );
    }
    // Line breaks, spaces and character references are not errors.
    let xml = package(
        "",
        &reference("cid:1", "a.txt"),
        &attachment("cid:1", "a.txt", "eGlu\r\n  IGNo&#13;&#10;w6\tBv"),
    );
    let (_, atts) = decode_bytes(xml.as_bytes());
    assert_eq!(atts, vec!["xin chào".as_bytes().to_vec()]);
}

#[test]
fn a_manifest_reference_without_its_attachment() {
    let xml = package(
        "",
        &format!(
            "{}{}",
            reference("cid:1", "a.txt"),
            reference("cid:2", "b.pdf")
        ),
        &attachment("cid:1", "a.txt", "eGluIGNow6Bv"),
    );
    assert_malformed(
        xml.as_bytes(),
        "manifest names the attachment cid:2 (b.pdf) but the package does not carry it",
    );
    let no_content = package(
        "",
        &reference("cid:1", "a.txt"),
        "<Attachment><ContentId>cid:1</ContentId><AttachmentName>a.txt</AttachmentName></Attachment>",
    );
    assert_malformed(no_content.as_bytes(), "has no ContentTransferEncoded");
}

#[test]
fn an_attachment_not_in_the_manifest() {
    let xml = package(
        "",
        &reference("cid:1", "a.txt"),
        &format!(
            "{}{}",
            attachment("cid:1", "a.txt", "eGluIGNow6Bv"),
            attachment("cid:9", "lạ.txt", "eGluIGNow6Bv")
        ),
    );
    assert_malformed(
        xml.as_bytes(),
        "attachment 2 (cid:9 (lạ.txt)) is not in the manifest",
    );
}

#[test]
fn a_status_with_attachments_is_refused() {
    let xml = good().replace("<Subject>", "<StatusCode>03</StatusCode><Subject>");
    assert_malformed(xml.as_bytes(), "status notice");
}

#[test]
fn invalid_dates_under_each_policy() {
    let with_date = |d: &str| {
        good().replace(
            "2026/03/02</PromulgationDate>",
            &format!("{d}</PromulgationDate>"),
        )
    };
    // A real producer's day-first date: lenient reads it, strict does not.
    let (p, _) = decode_bytes(with_date("02/03/2026").as_bytes());
    let doc_date = match &p.envelope.body {
        Some(lienthong_proto::v1::envelope::Body::Document(d)) => d.promulgation_date.clone(),
        _ => String::new(),
    };
    assert_eq!(doc_date, "2026-03-02");
    assert!(check(&p, Policy::Lenient).is_ok());
    let strict = validate(&p, Policy::Strict);
    assert_eq!(strict.len(), 1, "{strict:?}");
    assert_eq!(
        strict[0].location,
        "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/PromulgationInfo/PromulgationDate"
    );
    assert!(
        strict[0].message.contains("\"02/03/2026\""),
        "{}",
        strict[0]
    );
    // Not a date at all: refused under both, with MALFORMED and the location.
    for bad in ["2026/02/30", "hôm qua", "2026/13/01"] {
        let (p, _) = decode_bytes(with_date(bad).as_bytes());
        for policy in [Policy::Strict, Policy::Lenient] {
            let e = match check(&p, policy) {
                Ok(()) => panic!("{bad} accepted under {policy:?}"),
                Err(e) => e,
            };
            assert_eq!(e.reason(), Reason::Malformed);
            assert!(
                e.message().contains("PromulgationInfo/PromulgationDate")
                    && e.message().contains(bad),
                "{e}"
            );
        }
    }
    // A trace timestamp that is not one matters only to the strict policy.
    let xml = good().replace("2026/03/02 08:30:00", "02-03-2026 8h30");
    let (p, _) = decode_bytes(xml.as_bytes());
    assert!(check(&p, Policy::Lenient).is_ok());
    assert!(
        validate(&p, Policy::Strict)
            .iter()
            .any(|x| x.location.ends_with("TraceHeader[1]/Timestamp"))
    );
}

#[test]
fn overlong_fields_under_each_policy() {
    let xml = good()
        .replace(
            "<CodeNumber>15</CodeNumber>",
            "<CodeNumber>123456789012</CodeNumber>",
        )
        .replace(
            "V/v báo cáo tình hình chuyển đổi số",
            &"Báo cáo ".repeat(70),
        )
        .replace("Sở Khoa học và Công nghệ", &"Sở ".repeat(80));
    let (p, _) = decode_bytes(xml.as_bytes());
    assert!(
        check(&p, Policy::Lenient).is_ok(),
        "{:?}",
        validate(&p, Policy::Lenient)
    );
    let strict = validate(&p, Policy::Strict);
    let locations: Vec<&str> = strict.iter().map(|x| x.location.as_str()).collect();
    assert_eq!(
        locations,
        [
            "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[1]/OrganName",
            "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/Code/CodeNumber",
            "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/Subject",
        ]
    );
    assert!(
        strict[1].message.contains("12 characters") && strict[1].message.contains("at most 11")
    );
    let e = match check(&p, Policy::Strict) {
        Ok(()) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(e.reason(), Reason::Malformed);
    assert!(e.message().contains("3 problems"), "{e}");
    // Beyond any policy: a header text larger than the limit.
    let huge = good().replace("V/v báo cáo", &"x".repeat(1_200_000));
    let e = refuse(huge.as_bytes());
    assert_eq!(e.reason(), Reason::SizeLimit, "{e}");
}

#[test]
fn identifiers_under_each_policy() {
    let xml = good().replace("000.00.12.H35</OrganId>", "vxp.saas.03</OrganId>");
    let (p, _) = decode_bytes(xml.as_bytes());
    assert!(check(&p, Policy::Lenient).is_ok());
    let strict = validate(&p, Policy::Strict);
    assert_eq!(
        strict[0].location,
        "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[1]/OrganId"
    );
    // A mistyped code is not a test id: refused under both.
    let xml = good().replace("000.00.12.H35</OrganId>", "000.1137.H53</OrganId>");
    let (p, _) = decode_bytes(xml.as_bytes());
    assert!(check(&p, Policy::Lenient).is_err());
    // No From, no To.
    let xml = good()
        .replace("<OrganId>000.00.01.H35</OrganId>", "")
        .replace("<To><OrganId>000.00.12.H35</OrganId><OrganName>Sở Khoa học và Công nghệ</OrganName></To>", "");
    let (p, _) = decode_bytes(xml.as_bytes());
    let lenient: Vec<String> = validate(&p, Policy::Lenient)
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert!(
        lenient
            .iter()
            .any(|m| m.contains("From/OrganId: From has no OrganId")),
        "{lenient:?}"
    );
    assert!(
        lenient.iter().any(|m| m.contains("names no recipient")),
        "{lenient:?}"
    );
}

#[test]
fn deep_nesting_and_long_tags_are_bounded() {
    let deep = format!("<edXML xmlns=\"{NAMESPACE}\">{}", "<a>".repeat(100_000));
    assert_malformed(deep.as_bytes(), "deeper than 64");
    // A tag that never ends is not buffered whole.
    let endless = format!(
        "<edXML xmlns=\"{NAMESPACE}\"><a b=\"{}",
        "x".repeat(3_000_000)
    );
    let e = refuse(endless.as_bytes());
    assert_eq!(e.reason(), Reason::SizeLimit, "{e}");
    // Nor is a comment.
    let comment = format!(
        "<edXML xmlns=\"{NAMESPACE}\"><!--{}-->",
        "> ".repeat(1_000_000)
    );
    let e = refuse(comment.as_bytes());
    assert_eq!(e.reason(), Reason::SizeLimit, "{e}");
}

// ---------------------------------------------------------------------------
// Large packages, generated on the fly
// ---------------------------------------------------------------------------

/// A package whose single attachment is `size` bytes of a repeating
/// pattern, produced as it is read: nothing of that size exists in memory.
struct LargePackage {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// Raw bytes still to encode.
    remaining: u64,
    counter: u64,
    pending: Vec<u8>,
    stage: u8,
}

impl LargePackage {
    fn new(size: u64) -> Self {
        let xml = package(
            "",
            &reference("cid:big", "lon.bin"),
            &attachment("cid:big", "lon.bin", "@@CONTENT@@"),
        );
        let (head, tail) = xml.split_once("@@CONTENT@@").unwrap_or((&xml, ""));
        LargePackage {
            head: head.as_bytes().to_vec(),
            tail: tail.as_bytes().to_vec(),
            remaining: size,
            counter: 0,
            pending: Vec::new(),
            stage: 0,
        }
    }

    /// The bytes of the attachment, block by block (what the sink must get).
    fn block(counter: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (counter.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
            .collect()
    }

    fn expected(size: u64) -> (u64, [u8; 32]) {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut left = size;
        let mut counter = 0;
        while left > 0 {
            let n = left.min(57 * 1024) as usize;
            ctx.update(&Self::block(counter, n));
            counter += 1;
            left -= n as u64;
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(ctx.finish().as_ref());
        (size, d)
    }
}

impl Read for LargePackage {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.stage {
                0 => {
                    self.pending = std::mem::take(&mut self.head);
                    self.stage = 1;
                }
                1 if self.remaining > 0 => {
                    let n = self.remaining.min(57 * 1024) as usize;
                    let raw = Self::block(self.counter, n);
                    self.counter += 1;
                    self.remaining -= n as u64;
                    // Lines of 76 characters, as MIME writers do.
                    let text =
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw);
                    for line in text.as_bytes().chunks(76) {
                        self.pending.extend_from_slice(line);
                        self.pending.extend_from_slice(b"\r\n");
                    }
                }
                1 => {
                    self.pending = std::mem::take(&mut self.tail);
                    self.stage = 2;
                }
                _ => return Ok(0),
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// Checks the digest without keeping anything, and the largest write.
struct Measuring {
    inner: DigestSink,
    largest_write: usize,
}

impl AttachmentSink for Measuring {
    fn begin(&mut self, index: usize, meta: &AttachmentMeta) -> lienthong_types::error::Result<()> {
        self.inner.begin(index, meta)
    }
    fn write(&mut self, bytes: &[u8]) -> lienthong_types::error::Result<()> {
        self.largest_write = self.largest_write.max(bytes.len());
        self.inner.write(bytes)
    }
    fn end(&mut self) -> lienthong_types::error::Result<(u64, [u8; 32])> {
        self.inner.end()
    }
}

fn large(size: u64) {
    let started = Instant::now();
    let mut sink = Measuring {
        inner: DigestSink::new(),
        largest_write: 0,
    };
    let p = ok(
        decode(
            LargePackage::new(size),
            &mut sink,
            &DecodeOptions::default(),
        ),
        "large package",
    );
    let (want_size, want_sha) = LargePackage::expected(size);
    let Some(lienthong_proto::v1::envelope::Body::Document(doc)) = &p.envelope.body else {
        panic!("not a document")
    };
    assert_eq!(doc.attachments[0].size, want_size);
    assert_eq!(doc.attachments[0].sha256.as_ref(), want_sha.as_slice());
    assert!(p.size > size * 4 / 3, "the package was {} bytes", p.size);
    // The decoder hands bytes on in blocks, never the attachment whole.
    assert!(
        sink.largest_write <= 64 * 1024,
        "a write of {} bytes",
        sink.largest_write
    );
    println!("{size} bytes decoded in {:?}", started.elapsed());
}

#[test]
fn a_20_mb_package_streams_through() {
    large(20 * 1024 * 1024);
}

/// About 280 MB of package text, generated as it is read. Measured at about
/// 6 s in a debug build on two cores, so it always runs. Peak memory of the
/// whole test process stays far below the attachment's size.
#[test]
fn a_200_mb_package_streams_through() {
    large(200 * 1024 * 1024);
    if let Some(peak) = peak_memory_bytes() {
        assert!(peak < 150 * 1024 * 1024, "peak memory {peak} bytes");
    }
}

/// VmHWM of this process, where Linux tells it.
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn an_attachment_over_the_limit_is_refused_while_streaming() {
    let opts = DecodeOptions {
        limits: Limits {
            max_attachment_bytes: 1024 * 1024,
            ..Limits::default()
        },
        ..DecodeOptions::default()
    };
    let e = match decode(
        LargePackage::new(5 * 1024 * 1024),
        &mut DigestSink::new(),
        &opts,
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(e.reason(), Reason::SizeLimit, "{e}");
    assert!(e.message().contains("lon.bin"), "{e}");
}
