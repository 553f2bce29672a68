//! Overload: a gateway offered more than it can take turns the
//! excess away at once with UNAVAILABLE and a sentence — nothing kept,
//! "send again" — instead of queueing without bound, and loses nothing it
//! accepted.

use std::time::Duration;

use lienthong_testkit::v1::{AttachmentChunk, SendRequest, send_request::Item};
use lienthong_testkit::*;
use tonic::Code;

/// With room for two submissions at once, a third is turned away while the
/// two are still streaming; once one finishes there is room again, and the
/// two held open are accepted and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_beyond_the_limit_is_turned_away_with_a_sentence() {
    let opts = GatewayOptions {
        extra_limits: "max_submissions_in_flight = 2\n".into(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("overload_limit", opts).await else {
        return;
    };
    within(Duration::from_secs(120), "the submission limit", async {
        let a = gw.agency(A);
        let b = gw.agency(B);
        let spec = AttachmentSpec::generated("to-trinh.bin", 3 * CHUNK as u64, 7);

        // Two uploads that stop after their first chunk: each holds a place.
        let mut held = Vec::new();
        for _ in 0..2 {
            let draft = a.draft_document(&[B], "Giữ chỗ", std::slice::from_ref(&spec));
            let signed = a.sign(&draft.envelope);
            let (tx, rx) = tokio::sync::mpsc::channel::<SendRequest>(4);
            tx.send(SendRequest {
                item: Some(Item::Envelope(signed)),
            })
            .await
            .unwrap();
            let mut chunks = spec.chunks();
            tx.send(SendRequest {
                item: Some(Item::Chunk(AttachmentChunk {
                    index: 0,
                    data: chunks.next().unwrap(),
                })),
            })
            .await
            .unwrap();
            let mut client = a.exchange();
            let req = a.request(tokio_stream::wrappers::ReceiverStream::new(rx));
            let call = tokio::spawn(async move { client.send(req).await });
            held.push((draft, tx, chunks, call));
        }
        // Wait until the gateway holds both (its in-flight gauge says 2).
        let addr = gw.http_addr.expect("the test gateway serves HTTP");
        let metric = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let mut held_now = 0.0;
        for _ in 0..200 {
            let (_, text) = lienthong_testkit::amqp::http_get(addr, "/metrics").await;
            held_now = metric(&text, "lienthong_submissions_in_flight");
            if held_now >= 2.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(held_now, 2.0, "the two held uploads are in flight");
        let refusal = a
            .send_document(&[B], "Một văn bản quá nhiều", &[])
            .await
            .err();
        let err = refusal.expect("the third submission is refused");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(reason_of(&err).as_deref(), Some("UNAVAILABLE"), "{err:?}");
        assert!(
            err.message().contains("send the message again"),
            "the sentence says what to do: {}",
            err.message()
        );

        // Finish the two held uploads: both are accepted.
        let mut accepted = Vec::new();
        for (draft, tx, chunks, call) in held {
            for data in chunks {
                tx.send(SendRequest {
                    item: Some(Item::Chunk(AttachmentChunk { index: 0, data })),
                })
                .await
                .unwrap();
            }
            drop(tx);
            let receipt = call.await.unwrap().expect("the held upload is accepted");
            assert!(!receipt.into_inner().duplicate);
            accepted.push(draft.envelope.message_id);
        }
        // The places are free again: a new document goes through.
        let after = a
            .send_document(&[B], "Sau khi có chỗ", &[])
            .await
            .expect("room again once the held uploads are answered");
        accepted.push(after.message_id().to_owned());

        // Everything accepted reaches B; the refused one never does.
        let got = b.receive_all(0).await.expect("B receives");
        let mut ids: Vec<_> = got
            .iter()
            .filter_map(|d| d.envelope.as_ref())
            .map(|s| decode_envelope(s).message_id)
            .collect();
        ids.sort();
        accepted.sort();
        assert_eq!(ids, accepted);

        let (status, metrics) = lienthong_testkit::amqp::http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {metrics}");
        assert_eq!(
            metric(&metrics, "lienthong_submissions_shed_total"),
            1.0,
            "the refusal is counted:\n{metrics}"
        );
        assert_eq!(
            metric(&metrics, "lienthong_submissions_in_flight"),
            0.0,
            "every place is given back:\n{metrics}"
        );
    })
    .await;
}

/// Overload offered by agency software of the harness's own — its own
/// signatures, its own count of what arrived — not by the gateway's load
/// generator: 30 uploads at once against room for 4. The gateway turns the
/// excess away at once with UNAVAILABLE and nothing else, counts each
/// refusal, keeps its memory bounded, stays up, and every document it
/// accepted reaches its recipient exactly once, unaltered. The offer runs
/// until both outcomes have been seen often enough, however fast the
/// machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_it_can_take_is_shed_and_nothing_accepted_is_lost() {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let opts = GatewayOptions {
        // Only the submission limit may refuse: no per-agency call rate.
        extra_limits: "max_submissions_in_flight = 4\ncalls_per_second = 0\n".into(),
        ..Default::default()
    };
    let Some(gw) = TestGateway::start_with("overload_shed", opts).await else {
        return;
    };
    const ACCEPTED: usize = 120;
    const REFUSED: usize = 30;
    within(Duration::from_secs(300), "the overload", async {
        // message_id → its sender and its attachment's (size, SHA-256), as
        // signed.
        type Accepted = HashMap<String, (&'static str, (u64, [u8; 32]))>;
        let accepted: Arc<Mutex<Accepted>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let other_failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let enough = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (n, from) in [A, C, PROVINCE].into_iter().cycle().take(30).enumerate() {
            let agency = gw.agency(from);
            let (accepted, refused) = (accepted.clone(), refused.clone());
            let (other_failures, enough) = (other_failures.clone(), enough.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !enough.load(Ordering::SeqCst) {
                    i += 1;
                    let seed = (n as u64) << 32 | i;
                    let spec = AttachmentSpec::generated("phu-luc.bin", 2 * CHUNK as u64, seed);
                    let digest = spec.digest();
                    let draft = agency.draft_document(&[B], &format!("Quá tải {n}/{i}"), &[spec]);
                    match agency.send_draft(&draft).await {
                        Ok(sent) => {
                            accepted
                                .lock()
                                .unwrap()
                                .insert(sent.message_id().to_owned(), (from, digest));
                        }
                        Err(e)
                            if e.code() == Code::Unavailable
                                && reason_of(&e).as_deref() == Some("UNAVAILABLE")
                                && e.message().contains("send the message again") =>
                        {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            other_failures.lock().unwrap().push(format!("{e:?}"));
                            return;
                        }
                    }
                }
            }));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let (a, r) = (
                accepted.lock().unwrap().len(),
                refused.load(Ordering::SeqCst),
            );
            let failures = other_failures.lock().unwrap().clone();
            assert!(
                failures.is_empty(),
                "refused other than as overload: {failures:#?}"
            );
            if a >= ACCEPTED && r >= REFUSED {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "in 180 s: {a} accepted, {r} refused (want {ACCEPTED} and {REFUSED})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        enough.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        let failures = other_failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "refused other than as overload: {failures:#?}"
        );
        let accepted = std::mem::take(&mut *accepted.lock().unwrap());
        let refused = refused.load(Ordering::SeqCst);

        // Still up, memory bounded, and every refusal counted as shed.
        let after = gw
            .agency(A)
            .send_document(&[B], "Sau cơn quá tải", &[])
            .await
            .expect("the gateway takes documents again");
        let rss_mb = gw.peak_rss_kib() / 1024;
        assert!(rss_mb < 200, "peak RSS {rss_mb} MB under overload");
        let addr = gw.http_addr.expect("the test gateway serves HTTP");
        let (_, metrics) = lienthong_testkit::amqp::http_get(addr, "/metrics").await;
        let shed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lienthong_submissions_shed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert_eq!(shed, Some(refused as f64), "{metrics}");

        // B gets each accepted document once, as signed, with its
        // attachment's bytes; nothing else but the last one.
        let b = gw.agency(B);
        let mut seen = HashSet::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(120);
        while seen.len() < accepted.len() + 1 {
            assert!(
                tokio::time::Instant::now() < until,
                "B got {} of {} accepted documents",
                seen.len(),
                accepted.len() + 1
            );
            for d in b.receive_all(0).await.expect("B receives") {
                let signed = d.envelope.as_ref().expect("an envelope");
                verify_signed(signed).expect("delivered as signed");
                let id = decode_envelope(signed).message_id;
                assert!(
                    accepted.contains_key(&id) || id == after.message_id(),
                    "B got {id}, which was never accepted"
                );
                assert!(seen.insert(id.clone()), "B got {id} twice");
                b.ack(&d.delivery_id).await.expect("ack");
            }
        }
        for (id, (from, (size, sha))) in &accepted {
            let got = b
                .fetch_attachment_sha256(id, from, 0)
                .await
                .unwrap_or_else(|e| panic!("the attachment of {id}: {e:?}"));
            assert_eq!(got, (*size, *sha), "the attachment of {id}");
        }
        notice(&format!(
            "overload: {} accepted, {refused} refused, peak RSS {rss_mb} MB",
            accepted.len()
        ));
    })
    .await;
}
