//! Limits against abuse: an agency calling too fast, or holding too many
//! streams open, gets RATE_LIMITED (RESOURCE_EXHAUSTED) with a sentence,
//! while other agencies go on unhindered.

use std::time::Duration;

use lienthong_testkit::v1::ReceiveRequest;
use lienthong_testkit::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_over_its_limits_is_slowed_down_not_the_others() {
    let opts = GatewayOptions {
        extra_limits: "calls_per_second = 1.0\nburst = 3.0\nmax_streams_per_agency = 1\n".into(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("limits", opts).await else {
        return;
    };
    within(Duration::from_secs(120), "the limits", async {
        let a = gw.agency(A);
        let b = gw.agency(B);

        // One stream at a time for A: a following Receive holds its slot.
        let mut open = a
            .exchange()
            .receive(a.request(ReceiveRequest {
                follow: true,
                ..Default::default()
            }))
            .await
            .expect("the first stream is allowed")
            .into_inner();
        let err = a
            .receive_all(0)
            .await
            .expect_err("a second stream is over the limit");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("RATE_LIMITED"));
        assert!(err.message().contains("streams open"), "{}", err.message());

        // A's bucket holds 3 calls and refills one per second: a quick
        // series of calls runs it dry.
        let mut refused = None;
        for _ in 0..6 {
            if let Err(e) = a.lookup(B).await {
                refused = Some(e);
                break;
            }
        }
        let err = refused.expect("A was never slowed down");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("RATE_LIMITED"), "{err:?}");
        assert!(
            err.message().contains("calls per second"),
            "{}",
            err.message()
        );

        // B is not affected.
        assert!(b.lookup(A).await.is_ok());

        // Closing the stream frees the slot, and the bucket refills: A is
        // only slowed down, as RATE_LIMITED says, until a call goes through.
        drop(open.message());
        drop(open);
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match a.receive_all(0).await {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(reason_of(&e).as_deref(), Some("RATE_LIMITED"), "{e:?}");
                    assert!(
                        tokio::time::Instant::now() < until,
                        "A's slot and tokens are not back after 20 s: {e:?}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_given_up_and_leaves_nothing() {
    use lienthong_testkit::v1::{SendRequest, send_request};
    let opts = GatewayOptions {
        extra_limits: "idle_stream_secs = 1\n".into(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("limits_idle", opts).await else {
        return;
    };
    within(Duration::from_secs(60), "the idle upload", async {
        let a = gw.agency(A);
        let draft = a.draft_document(
            &[B],
            "Tải lên bị treo",
            &[AttachmentSpec::text("a.txt", "nội dung")],
        );
        let signed = a.sign(&draft.envelope);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(SendRequest {
            item: Some(send_request::Item::Envelope(signed)),
        })
        .await
        .unwrap();
        // The envelope, then silence: the attachment never comes, the
        // stream stays open.
        let started = std::time::Instant::now();
        let err = a
            .exchange()
            .send(a.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .expect_err("a stalled upload is given up");
        drop(tx);
        assert_eq!(reason_of(&err).as_deref(), Some("MALFORMED"), "{err:?}");
        assert!(err.message().contains("idle"), "{}", err.message());
        assert!(started.elapsed() < Duration::from_secs(30));
        let (_, tmp) = gw.storage_files();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
        assert!(gw.agency(B).receive_all(0).await.unwrap().is_empty());
    })
    .await;
}

/// One byte now and then holds no submission slot for long: an upload
/// slower than `limits.upload_min_bytes_per_second` after its grace period
/// is given up with RATE_LIMITED and a sentence, logged, nothing kept, and
/// its slot is free at once for the next sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_given_up_and_its_slot_freed() {
    use lienthong_testkit::v1::{AttachmentChunk, SendRequest, send_request};
    let opts = GatewayOptions {
        extra_limits: "upload_min_bytes_per_second = 2000\nupload_grace_secs = 2\n\
                       max_submissions_in_flight = 1\n"
            .into(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("limits_slow", opts).await else {
        return;
    };
    within(Duration::from_secs(90), "the slow upload", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let spec = AttachmentSpec::generated("bao-cao.bin", 64 * 1024, 3);
        let draft = a.draft_document(&[B], "Tải lên nhỏ giọt", std::slice::from_ref(&spec));
        let signed = a.sign(&draft.envelope);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(SendRequest {
            item: Some(send_request::Item::Envelope(signed)),
        })
        .await
        .unwrap();
        // A byte every 300 ms: never idle, always far too slow.
        let dripping = tokio::spawn(async move {
            let bytes = spec.chunks().next().unwrap();
            for i in 0..200 {
                let c = SendRequest {
                    item: Some(send_request::Item::Chunk(AttachmentChunk {
                        index: 0,
                        data: bytes.slice(i..i + 1),
                    })),
                };
                if tx.send(c).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let started = std::time::Instant::now();
        let mut client = a.exchange();
        let req = a.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let err = client
            .send(req)
            .await
            .expect_err("a dripping upload is given up");
        let took = started.elapsed();
        dripping.abort();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("RATE_LIMITED"), "{err:?}");
        assert!(
            err.message()
                .contains("slower than the 2000 bytes per second"),
            "{}",
            err.message()
        );
        assert!(
            took < Duration::from_secs(10),
            "given up after {took:?}, not at the idle timeout"
        );

        // Logged as a refusal of A's message.
        let trace = gw
            .trace_json(draft.envelope.message_id.as_str(), Some(A))
            .await;
        assert!(
            trace
                .iter()
                .any(|e| e["kind"] == "rejected" && e["reason"] == "RATE_LIMITED"),
            "{trace:?}"
        );

        // The same for an edXML package dripped into SendEdxml.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let drip = tokio::spawn(async move {
            let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><edXML:edXMLEnvelope>";
            for (i, b) in xml.iter().cycle().take(200).enumerate() {
                let c = lienthong_testkit::v1::EdxmlChunk {
                    data: vec![*b].into(),
                    message_id: if i == 0 {
                        "edxml-nho-giot".into()
                    } else {
                        String::new()
                    },
                };
                if tx.send(c).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let started = std::time::Instant::now();
        let err = a
            .exchange()
            .send_edxml(a.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .expect_err("a dripping edXML upload is given up");
        drip.abort();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("RATE_LIMITED"), "{err:?}");
        assert!(
            err.message().contains("SendEdxml stream") && err.message().contains("slower than"),
            "{}",
            err.message()
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let trace = gw.trace_json("edxml-nho-giot", Some(A)).await;
        assert!(
            trace
                .iter()
                .any(|e| e["kind"] == "rejected" && e["reason"] == "RATE_LIMITED"),
            "{trace:?}"
        );

        // Nothing kept, and the one submission slot is free again.
        let (_, tmp) = gw.storage_files();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
        let sent = a
            .send_document(
                &[B],
                "Văn bản tiếp theo",
                &[AttachmentSpec::text("a.txt", "ok")],
            )
            .await
            .expect("the slot is free at once");
        let got = b.receive_all(0).await.unwrap();
        assert_eq!(got.len(), 1, "only the next document arrived");
        assert_eq!(
            decode_envelope(got[0].envelope.as_ref().unwrap()).message_id,
            sent.message_id()
        );
    })
    .await;
}
