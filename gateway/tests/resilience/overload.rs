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

/// The overload test: the load generator offers twice what the
/// gateway took in a closed-loop run, for 60 s, open loop. The gateway must
/// turn the excess away with UNAVAILABLE, keep its memory bounded, stay up,
/// and deliver every document it accepted exactly once, unaltered (the
/// bench checks each delivered payload's SHA-256 against what was signed).
#[test]
fn twice_the_capacity_for_a_minute_sheds_the_excess_and_loses_nothing() {
    let bench = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(bin_path())
            .arg("bench")
            .arg("grpc")
            .args(args)
            .args(["--baseline", "false", "--json"])
            .env("NO_COLOR", "1")
            .output()
            .expect("run lienthong bench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("bench printed no JSON ({e}): {}", describe_output(&out)));
        report
    };

    // Capacity: what a closed loop of 32 senders gets accepted per second.
    let probe = bench(&["--duration", "10", "--concurrency", "32"]);
    assert_eq!(probe["error_count"], 0, "the capacity run: {probe:#}");
    let capacity = probe["accepted_per_sec"].as_f64().unwrap();
    assert!(capacity > 1.0, "{probe:#}");
    let rate = format!("{:.0}", capacity * 2.0);
    notice(&format!(
        "overload: capacity {capacity:.0} documents/s, offering {rate}/s for 60 s"
    ));

    let r = bench(&["--rate", &rate, "--duration", "60", "--concurrency", "2000"]);
    // Nothing lost, duplicated, altered, misrouted or left unacknowledged,
    // and no failure other than the overload refusal (a crashed gateway
    // would show as send errors without a reason code).
    assert_eq!(r["error_count"], 0, "{r:#}");
    let accepted = r["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{r:#}");
    assert_eq!(r["expected_deliveries"].as_u64(), Some(accepted), "{r:#}");
    assert_eq!(r["delivered"].as_u64(), Some(accepted), "{r:#}");
    assert_eq!(r["acknowledged"].as_u64(), Some(accepted), "{r:#}");
    // The excess was turned away, and only as overload.
    let refused = r["refused"].as_object().unwrap();
    assert!(r["refused_count"].as_u64().unwrap() > 0, "{r:#}");
    for reason in refused.keys() {
        assert_eq!(reason, "send:Unavailable/UNAVAILABLE", "{r:#}");
    }
    // Bounded memory: a queue without bound would grow with the minute's
    // excess (tens of thousands of documents).
    let rss_mb = r["gateway"]["peak_rss_kb"].as_f64().unwrap() / 1024.0;
    assert!(
        rss_mb < 200.0,
        "peak RSS {rss_mb:.0} MB under overload: {r:#}"
    );
    notice(&format!(
        "overload: {} accepted, {} refused, peak RSS {rss_mb:.0} MB",
        accepted, r["refused_count"]
    ));
}
