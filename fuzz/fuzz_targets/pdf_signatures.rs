//! Any bytes as a PDF attachment: the signature locator (cross-reference
//! tables and streams, object streams, revisions, signature fields, byte
//! ranges, what changed after each signature) and the ZIP unpacking answer
//! with a report or a sentence, never a panic, and stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_pades as pades;
use lienthong_pki::signing::TrustAnchors;

fuzz_target!(|data: &[u8]| {
    let anchors = TrustAnchors::empty();
    let src = data.to_vec();
    // ZIP entries unpack in memory here, within the default limits.
    let opts = pades::Options::in_memory(pades::Moment::Now(pades::Time::now()));
    if let Ok(report) = pades::verify_attachment(&src, &anchors, &opts) {
        // A report is always self-consistent.
        assert!(report.signatures.iter().all(|s| s.covers_revision <= report.revisions));
        // The hashing stays within its budget.
        assert!(report.bytes_hashed <= (src.len() as u64 * 4).max(pades::MIN_HASH_BUDGET));
        let _ = report.summary();
        let _ = pades::decree30_warnings(&report, Some("Nguyễn Văn An"));
    }
});
