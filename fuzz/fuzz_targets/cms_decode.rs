//! Any bytes as the /Contents of a PDF signature or as a timestamp token:
//! the CMS SignedData decoder, the signature check over its signed
//! attributes and the TSTInfo decoder answer, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_pades::cms;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = cms::decode(data) {
        let _ = signed.algorithm_name();
        let _ = signed.verify_signature();
        if let Some(content) = signed.content.as_deref() {
            let _ = cms::decode_tst_info(content);
        }
    }
    let _ = cms::decode_tst_info(data);
});
