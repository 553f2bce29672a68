//! Any bytes as a PDF attachment: the signature locator (cross-reference
//! tables and streams, object streams, revisions, signature fields, byte
//! ranges, what changed after each signature) and the ZIP unpacking answer
//! with a report or a sentence, never a panic, and stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_core::pades;
use lienthong_core::signing::TrustAnchors;

fuzz_target!(|data: &[u8]| {
    let anchors = TrustAnchors::empty();
    let src = data.to_vec();
    if let Ok(report) = pades::verify_attachment(&src, &anchors, pades::Time::now()) {
        // A report is always self-consistent.
        assert!(report.signatures.iter().all(|s| s.covers_revision <= report.revisions));
        let _ = report.summary();
        let _ = pades::decree30_warnings(&report, Some("Nguyễn Văn An"));
    }
});
