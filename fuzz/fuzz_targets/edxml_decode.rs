//! Any bytes: the decoder answers with a package or an error, never a
//! panic; no decoded value holds a character no edXML value may (NUL and
//! other controls, noncharacters, bidi overrides), and no refusal quotes
//! one; what it decodes survives encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_edxml::{
    decode, encode_to_vec, inspect_json, validate, DecodeOptions, EncodeOptions, MemorySink, MemorySource, Policy,
};
use lienthong_types::text::{self, TextKind};

fuzz_target!(|data: &[u8]| {
    let mut sink = MemorySink::new();
    let package = match decode(data, &mut sink, &DecodeOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                e.message().chars().all(|c| text::allowed(c, TextKind::Line)),
                "the refusal quotes a refused character: {:?}",
                e.message()
            );
            return;
        }
    };
    text::visit_fields(&package.envelope, &mut |path, value, _| {
        assert!(
            value.chars().all(|c| text::allowed(c, TextKind::Free)),
            "{path} was decoded with {value:?}"
        );
        Ok(())
    })
    .expect("every field was visited");
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
