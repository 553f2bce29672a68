//! Any bytes under any content type: the AMQP body decoder answers with an
//! envelope and its chunks or an error, never a panic; what it decodes from
//! a send stream is written back to the same envelope and chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lienthong_amqp::wire::{self, Kind};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = match selector % 3 {
        0 => Kind::Envelope,
        1 => Kind::Stream,
        _ => Kind::Edxml,
    };
    let Ok(decoded) = wire::decode(kind, body.to_vec()) else {
        return;
    };
    if kind != Kind::Stream {
        return;
    }
    use prost::Message as _;
    let mut again = wire::stream_start(&decoded.envelope.encode_to_vec(), 0);
    for c in &decoded.chunks {
        wire::stream_push(&mut again, c.index, &c.data);
    }
    let round = wire::decode(Kind::Stream, again).expect("a written stream decodes");
    assert_eq!(round.envelope, decoded.envelope);
    let joined = |cs: &[lienthong_proto::v1::AttachmentChunk]| {
        cs.iter().map(|c| (c.index, c.data.to_vec())).fold(Vec::<(u32, Vec<u8>)>::new(), |mut acc, (i, d)| {
            match acc.last_mut() {
                Some((j, buf)) if *j == i => buf.extend_from_slice(&d),
                _ => acc.push((i, d)),
            }
            acc
        })
    };
    assert_eq!(joined(&round.chunks), joined(&decoded.chunks));
});
