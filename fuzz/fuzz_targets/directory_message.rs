//! Any bytes from the directory exchange: a peer's update or snapshot is
//! decoded and every change checked (kind, codes in the peer's authority,
//! fields, certificates) with a reason code, or refused — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_core::national_directory::check_message;
use lienthong_core::organ_id::TopicPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(codes) = TopicPattern::parse("#.H53") else {
        return;
    };
    if let Err((code, why)) = check_message(&[codes], data) {
        assert!(!code.is_empty() && !why.is_empty());
    }
});
