//! The bodies and headers of lienthong messages on AMQP (DESIGN.md §4).
//!
//! - `application/x-protobuf`: the `SignedEnvelope` bytes alone — what an
//!   independent publisher sends for a message without attachments.
//! - `application/vnd.lienthong.send-stream.v1+protobuf`: the frames of a
//!   gRPC `Exchange.Send` stream, each a length-delimited (varint) encoded
//!   `SendRequest`: the envelope first, then the attachments' chunks in
//!   order. One message carries the document whole, so the receiving side
//!   needs no reassembly and a message is accepted or refused as one.
//! - `application/xml`: an edXML package (not accepted from the exchange:
//!   it carries no signature this gateway verifies).
//!
//! This module only decodes; checking what was decoded is the pipeline's
//! job.

use lienthong_core::error::{Error, OrErr, Reason, Result};
use lienthong_proto::v1::{AttachmentChunk, SendRequest, SignedEnvelope, send_request};
use prost::Message as _;
use prost::bytes::{Buf, Bytes};

pub const CONTENT_TYPE_ENVELOPE: &str = "application/x-protobuf";
pub const CONTENT_TYPE_STREAM: &str = "application/vnd.lienthong.send-stream.v1+protobuf";

/// The reason code of a dead-lettered message.
pub const HEADER_REASON: &str = "x-lienthong-reason";
/// The sentence that goes with it.
pub const HEADER_DETAIL: &str = "x-lienthong-detail";
/// How many times a set-aside message failed while the gateway was healthy.
pub const HEADER_FAILURES: &str = "x-lienthong-failures";
/// Serialized `lienthong_core::pipeline::Hops`: where the message has been.
pub const HEADER_HOPS: &str = "x-lienthong-hops";
/// The gateway that published the message.
pub const HEADER_GATEWAY: &str = "x-lienthong-gateway";

/// Attachment bytes per frame when a message is written.
const CHUNK: usize = 256 * 1024;

/// A decoded body.
#[derive(Debug)]
pub struct Decoded {
    pub envelope: SignedEnvelope,
    /// The encoded envelope's length (the pipeline's size limit).
    pub envelope_len: usize,
    pub chunks: Vec<AttachmentChunk>,
}

/// What a content type says the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Envelope,
    Stream,
    Edxml,
}

/// Reads the content type; an absent one is taken as a bare envelope (what
/// simple tools publish).
pub fn kind(content_type: Option<&str>) -> Result<Kind> {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match ct.as_str() {
        "" | CONTENT_TYPE_ENVELOPE | "application/protobuf" | "application/octet-stream" => {
            Ok(Kind::Envelope)
        }
        CONTENT_TYPE_STREAM => Ok(Kind::Stream),
        "application/xml" | "text/xml" => Ok(Kind::Edxml),
        other => Err(Error::malformed(format!(
            "the content type {:?} is not one this gateway reads; publish {CONTENT_TYPE_ENVELOPE} (a SignedEnvelope) or {CONTENT_TYPE_STREAM}",
            lienthong_core::text::truncate(other, 100)
        ))),
    }
}

/// Decodes a body of kind `Envelope` or `Stream`.
pub fn decode(kind: Kind, body: Vec<u8>) -> Result<Decoded> {
    let body = Bytes::from(body);
    match kind {
        Kind::Envelope => {
            let envelope_len = body.len();
            let envelope = SignedEnvelope::decode(body).or_err(
                Reason::Malformed,
                "the body is not a lienthong.v1.SignedEnvelope protobuf; publish the encoded SignedEnvelope bytes",
            )?;
            Ok(Decoded {
                envelope,
                envelope_len,
                chunks: Vec::new(),
            })
        }
        Kind::Stream => decode_stream(body),
        Kind::Edxml => Err(Error::malformed(
            "an edXML body is not a lienthong protobuf body",
        )),
    }
}

/// The signed envelope of a body, without reading or copying its
/// attachments: `decode` takes a stream's envelope from its first frame and
/// refuses a stream that starts otherwise, so whenever `decode` reads a
/// body, this reads the same envelope. `None` for what `decode` would
/// refuse (and for some bodies it would refuse later, which is no matter:
/// nothing of those is accepted).
pub fn envelope_only(kind: Kind, body: &[u8]) -> Option<SignedEnvelope> {
    match kind {
        Kind::Envelope => SignedEnvelope::decode(body).ok(),
        Kind::Stream => {
            let mut rest = body;
            let len = prost::encoding::decode_varint(&mut rest).ok()?;
            let frame = rest.get(..usize::try_from(len).ok()?)?;
            match SendRequest::decode(frame).ok()?.item? {
                send_request::Item::Envelope(e) => Some(e),
                send_request::Item::Chunk(_) => None,
            }
        }
        Kind::Edxml => None,
    }
}

fn decode_stream(mut body: Bytes) -> Result<Decoded> {
    let sentence = |what: &str| {
        format!(
            "the body is not a valid {CONTENT_TYPE_STREAM} stream: {what}; write length-delimited SendRequest frames, the envelope first"
        )
    };
    let bad = |what: &str| Error::malformed(sentence(what));
    let mut envelope = None;
    let mut chunks = Vec::new();
    while body.has_remaining() {
        let len = prost::encoding::decode_varint(&mut body)
            .or_err_with(Reason::Malformed, |_| {
                sentence("a frame length is not a varint")
            })?;
        let len = usize::try_from(len).map_err(|_| bad("a frame is longer than the body"))?;
        if len > body.remaining() {
            return Err(bad("a frame is longer than the body"));
        }
        let frame = body.split_to(len);
        let req = SendRequest::decode(frame.clone()).or_err_with(Reason::Malformed, |_| {
            sentence("a frame is not a SendRequest")
        })?;
        match (req.item, envelope.is_some()) {
            (Some(send_request::Item::Envelope(e)), false) => {
                // The frame's inner bytes are the envelope's encoding.
                let n = e.encoded_len();
                envelope = Some((e, n));
            }
            (Some(send_request::Item::Envelope(_)), true) => {
                return Err(bad("it has a second envelope"));
            }
            // An empty chunk carries nothing, and the stream written back
            // (the relay's `stream_push`) has no frame for it: dropped, so a
            // decoded stream re-encodes to the same chunks (found by
            // fuzz/amqp_body).
            (Some(send_request::Item::Chunk(c)), true) => {
                if !c.data.is_empty() {
                    chunks.push(c);
                }
            }
            (Some(send_request::Item::Chunk(_)), false) => {
                return Err(bad("attachment bytes come before the envelope"));
            }
            (None, _) => return Err(bad("a frame is empty")),
        }
    }
    let Some((envelope, envelope_len)) = envelope else {
        return Err(bad("it has no envelope"));
    };
    Ok(Decoded {
        envelope,
        envelope_len,
        chunks,
    })
}

/// Starts a stream body with the envelope frame; the envelope's bytes are
/// written as they were accepted, not re-encoded.
pub fn stream_start(signed_envelope: &[u8], capacity: usize) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let len = signed_envelope.len();
    let frame = key_len(1) + encoded_len_varint(len as u64) + len;
    let mut out = Vec::with_capacity(capacity + frame + 16);
    encode_varint(frame as u64, &mut out);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(len as u64, &mut out);
    out.extend_from_slice(signed_envelope);
    out
}

/// Appends attachment bytes as frames of at most [`CHUNK`] bytes.
pub fn stream_push(out: &mut Vec<u8>, index: u32, data: &[u8]) {
    for piece in data.chunks(CHUNK) {
        let frame = SendRequest {
            item: Some(send_request::Item::Chunk(AttachmentChunk {
                index,
                data: Bytes::copy_from_slice(piece),
            })),
        };
        if let Err(e) = frame.encode_length_delimited(out) {
            // A Vec grows as needed; encoding into it cannot run out of room.
            tracing::error!(error = %e, "could not encode an attachment frame");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> SignedEnvelope {
        SignedEnvelope {
            payload: Bytes::from_static(b"payload"),
            payload_type: "t".to_owned(),
            signatures: Vec::new(),
        }
    }

    #[test]
    fn a_stream_round_trips_with_the_envelope_bytes_unchanged() {
        let bytes = envelope().encode_to_vec();
        let mut body = stream_start(&bytes, 0);
        stream_push(&mut body, 0, &vec![7u8; CHUNK + 10]);
        stream_push(&mut body, 1, b"second");
        let d = decode(Kind::Stream, body).unwrap();
        assert_eq!(d.envelope, envelope());
        assert_eq!(d.envelope_len, bytes.len());
        assert_eq!(d.chunks.len(), 3);
        assert_eq!(d.chunks[0].data.len(), CHUNK);
        assert_eq!(d.chunks[1].data.len(), 10);
        assert_eq!(
            (d.chunks[2].index, &d.chunks[2].data[..]),
            (1, &b"second"[..])
        );
    }

    /// fuzz/amqp_body found it: an empty chunk frame decoded to a chunk the
    /// stream written back has no frame for.
    #[test]
    fn an_empty_chunk_carries_nothing_and_is_dropped() {
        let bytes = envelope().encode_to_vec();
        let mut body = stream_start(&bytes, 0);
        let empty = SendRequest {
            item: Some(send_request::Item::Chunk(AttachmentChunk {
                index: 0,
                data: Bytes::new(),
            })),
        };
        prost::encoding::encode_varint(empty.encoded_len() as u64, &mut body);
        empty.encode(&mut body).unwrap();
        stream_push(&mut body, 0, b"data");
        let d = decode(Kind::Stream, body).unwrap();
        assert_eq!(d.chunks.len(), 1);
        assert_eq!(&d.chunks[0].data[..], b"data");
    }

    #[test]
    fn broken_bodies_are_refused_with_what_is_wrong() {
        let msg = |r: Result<Decoded>| r.unwrap_err().message().to_owned();
        assert!(msg(decode(Kind::Stream, vec![])).contains("no envelope"));
        assert!(msg(decode(Kind::Stream, vec![200])).contains("varint"));
        assert!(msg(decode(Kind::Stream, vec![50, 1, 2])).contains("longer than the body"));
        let mut chunk_first = Vec::new();
        stream_push(&mut chunk_first, 0, b"x");
        assert!(msg(decode(Kind::Stream, chunk_first)).contains("before the envelope"));
        let bytes = envelope().encode_to_vec();
        let mut twice = stream_start(&bytes, 0);
        twice.extend(stream_start(&bytes, 0));
        assert!(msg(decode(Kind::Stream, twice)).contains("second envelope"));
        assert!(
            msg(decode(Kind::Envelope, b"\xff\xff not protobuf".to_vec()))
                .contains("SignedEnvelope")
        );
        assert!(
            kind(Some("text/plain"))
                .unwrap_err()
                .message()
                .contains("text/plain")
        );
        assert_eq!(kind(None).unwrap(), Kind::Envelope);
        assert_eq!(
            kind(Some("application/xml; charset=utf-8")).unwrap(),
            Kind::Edxml
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever a publisher sends, decoding answers; it never panics.
        #[test]
        fn any_bytes_decode_or_are_refused(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(Kind::Envelope, body.clone());
            let _ = decode(Kind::Stream, body);
        }

        /// A stream written by the relay is read back as written.
        #[test]
        fn written_streams_read_back(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            parts in proptest::collection::vec((0u32..4, proptest::collection::vec(any::<u8>(), 0..2000)), 0..6),
        ) {
            let env = SignedEnvelope {
                payload: payload.into(),
                payload_type: "application/vnd.lienthong.envelope.v1+protobuf".to_owned(),
                signatures: Vec::new(),
            };
            let bytes = env.encode_to_vec();
            let mut body = stream_start(&bytes, 0);
            for (i, d) in &parts {
                stream_push(&mut body, *i, d);
            }
            let got = decode(Kind::Stream, body).unwrap();
            prop_assert_eq!(&got.envelope, &env);
            prop_assert_eq!(got.envelope_len, bytes.len());
            let expected: Vec<(u32, Vec<u8>)> = parts.into_iter().filter(|(_, d)| !d.is_empty()).collect();
            let read: Vec<(u32, Vec<u8>)> = got.chunks.iter().map(|c| (c.index, c.data.to_vec())).collect();
            prop_assert_eq!(read, expected);
        }
    }
}
