//! Any bytes: the decoder answers with a package or an error, never a
//! panic, and what it decodes survives encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_edxml::{
    decode, encode_to_vec, inspect_json, validate, DecodeOptions, EncodeOptions, MemorySink, MemorySource, Policy,
};

fuzz_target!(|data: &[u8]| {
    let mut sink = MemorySink::new();
    let Ok(package) = decode(data, &mut sink, &DecodeOptions::default()) else {
        return;
    };
    let _ = validate(&package, Policy::Strict);
    let _ = validate(&package, Policy::Lenient);
    let _ = inspect_json(&package);
    let Ok(xml) = encode_to_vec(&package.envelope, &mut MemorySource(sink.attachments.clone()), &EncodeOptions::default())
    else {
        // Only values XML cannot carry may refuse; decoded values never are.
        panic!("a decoded package could not be encoded");
    };
    let options = DecodeOptions {
        message_id: Some(package.envelope.message_id.clone()),
        ..DecodeOptions::default()
    };
    let mut again = MemorySink::new();
    match decode(xml.as_slice(), &mut again, &options) {
        Ok(p) => {
            assert_eq!(p.envelope, package.envelope);
            assert_eq!(again.attachments, sink.attachments);
        }
        Err(e) => panic!("the codec's own output was refused: {e}"),
    }
});
