//! Any bytes read as an Envelope: the text check answers without panicking;
//! what it accepts holds no refused character in any field, and what it
//! refuses is refused with a sentence that quotes none (it goes to the
//! transfer log and to PostgreSQL, which cannot hold a NUL).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_proto::v1::Envelope;
use lienthong_types::text::{self, TextKind};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    match text::check_envelope(&env) {
        Ok(()) => {
            text::visit_fields(&env, &mut |path, value, kind| {
                assert!(
                    value.chars().all(|c| text::allowed(c, kind)),
                    "{path} was accepted with {value:?}"
                );
                Ok(())
            })
            .expect("every field was visited");
        }
        Err(e) => {
            let m = e.message();
            assert!(
                m.chars().all(|c| text::allowed(c, TextKind::Line)),
                "the refusal quotes a refused character: {m:?}"
            );
        }
    }
});
