//! The national exchange over AMQP, against the real RabbitMQ:
//! each test has its own virtual host; the broker-restart test takes the
//! broker for itself (the others hold the read side of `BROKER`).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use lienthong_testkit::amqp::{
    self, CONTENT_TYPE_ENVELOPE, CONTENT_TYPE_STREAM, Client, DEAD_LETTERS, EXCHANGE, Vhost, X, Y,
};
use lienthong_testkit::v1::{Delivery, SignedEnvelope};
use lienthong_testkit::*;
use prost::Message as _;
use tokio::sync::RwLock;

pub(crate) static BROKER: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

/// A gateway for `province` on `vhost` sharing the PKI in `pki`.
async fn gateway(
    name: &str,
    province: &str,
    vhost: &Vhost,
    pki: &std::path::Path,
    backend: Backend,
    extra_amqp: &str,
) -> Option<TestGateway> {
    gateway_as(name, province, &vhost.url, pki, backend, extra_amqp).await
}

/// [`gateway`] with the broker account of `url`.
async fn gateway_as(
    name: &str,
    province: &str,
    url: &str,
    pki: &std::path::Path,
    backend: Backend,
    extra_amqp: &str,
) -> Option<TestGateway> {
    let gw = TestGateway::start_with(
        name,
        GatewayOptions {
            backend,
            pki: Some(pki.to_path_buf()),
            extra_config: amqp::config_with_url(url, province, extra_amqp),
            ..Default::default()
        },
    )
    .await?;
    broker_up(&gw).await;
    Some(gw)
}

/// Receives until `n` deliveries have come (acknowledging each), or fails
/// after `limit`.
pub(crate) async fn receive_n(agency: &Agency, n: usize, limit: Duration) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n {
        // Agency software that respects the gateway's per-agency rate limit:
        // RATE_LIMITED means "slow down", so it waits and tries again.
        let batch = match agency.receive_all(0).await {
            Ok(b) => b,
            Err(s) if reason_of(&s).as_deref() == Some("RATE_LIMITED") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(s) => panic!("receive: {s:?}"),
        };
        for d in batch {
            loop {
                match agency.ack(&d.delivery_id).await {
                    Ok(()) => break,
                    Err(s) if reason_of(&s).as_deref() == Some("RATE_LIMITED") => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(s) => panic!("ack: {s:?}"),
                }
            }
            got.push(d);
        }
        if got.len() >= n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} got {} of {n} deliveries within {limit:?}",
            agency.organ_id,
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

pub(crate) fn dead_letter_queue(province: &str) -> String {
    format!("{DEAD_LETTERS}.{}", province.to_lowercase())
}

/// What a dead-lettered message says: (reason, detail).
pub(crate) fn reasons(dls: &[lapin::message::Delivery]) -> HashMap<String, (String, String)> {
    dls.iter()
        .map(|d| {
            (
                d.properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default(),
                (
                    amqp::header(d, "x-lienthong-reason").unwrap_or_default(),
                    amqp::header(d, "x-lienthong-detail").unwrap_or_default(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_envelope_published_by_an_independent_client_reaches_a_grpc_inbox() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("independent") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(gw) = gateway("amqp-independent", "H35", &vhost, &pki, Backend::Sqlite, "").await
    else {
        return;
    };
    let a = gw.agency(A);
    let b = gw.agency(B);
    let draft = a.draft_document(&[B], "Gửi qua hàng đợi", &[]);
    let signed = a.sign(&draft.envelope).encode_to_vec();

    amqp::amqp_publish(&vhost.url, EXCHANGE, B, CONTENT_TYPE_ENVELOPE, &signed).await;

    let got = receive_n(&b, 1, Duration::from_secs(20)).await;
    let env = decode_envelope(got[0].envelope.as_ref().expect("envelope"));
    assert_eq!(env.message_id, draft.envelope.message_id);
    assert_eq!(env.from, A);
    // The envelope arrives byte for byte as signed, and verifies.
    verify_signed(got[0].envelope.as_ref().unwrap()).expect("signature");
    let v = got[0].verification.as_ref().expect("verification");
    assert!(v.summary.contains(A), "{}", v.summary);
    let events = gw.trace_json(&draft.envelope.message_id, Some(A)).await;
    let accepted = events
        .iter()
        .find(|e| e["kind"] == "accepted")
        .expect("accepted event");
    assert!(
        accepted["detail"]
            .as_str()
            .unwrap_or("")
            .contains("over amqp"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_exchange_documents_and_statuses_and_queue_agencies_take_part() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("federation") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[C]);
    let Some(g35) = gateway("amqp-fed-h35", "H35", &vhost, &pki, Backend::Sqlite, "").await else {
        return;
    };
    let Some(g36) = gateway("amqp-fed-h36", "H36", &vhost, &pki, Backend::Sqlite, "").await else {
        return;
    };
    let (a, b) = (g35.agency(A), g35.agency(B));
    let x = g36.agency(X);

    // One document for a local agency and an agency of the other province:
    // split per route, with its attachment travelling whole.
    let attachment = AttachmentSpec::generated("bao-cao.pdf", 300_000, 7);
    let sent = a
        .send_document(
            &[B, X],
            "Văn bản liên tỉnh",
            std::slice::from_ref(&attachment),
        )
        .await
        .expect("send");
    let routes: HashMap<_, _> = sent
        .receipt
        .recipients
        .iter()
        .map(|r| (r.organ_id.as_str(), r.route.as_str()))
        .collect();
    assert_eq!(routes[B], "local");
    assert_eq!(routes[X], format!("exchange:{EXCHANGE}"));

    let at_b = receive_n(&b, 1, Duration::from_secs(20)).await;
    assert_eq!(
        decode_envelope(at_b[0].envelope.as_ref().unwrap()).message_id,
        sent.message_id()
    );
    let at_x = receive_n(&x, 1, Duration::from_secs(30)).await;
    let env = decode_envelope(at_x[0].envelope.as_ref().unwrap());
    assert_eq!(env.message_id, sent.message_id());
    verify_signed(at_x[0].envelope.as_ref().unwrap()).expect("signature as A made it");
    // Each gateway wrote its hop: H35's, then H36's.
    let hops: Vec<_> = at_x[0].trace.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(hops.len(), 2, "{:?}", at_x[0].trace);
    // The attachment arrived whole, with its digest.
    let (size, sha) = attachment.digest();
    let fetched = x
        .fetch_attachment_sha256(sent.message_id(), A, 0)
        .await
        .expect("fetch at H36");
    assert_eq!(fetched, (size, sha));

    // X answers with 03 (accepted); it goes back over the exchange to A.
    let doc_id = sent.document().document_id.clone();
    x.send_status(A, &doc_id, "03")
        .await
        .expect("status from X");
    let at_a = receive_n(&a, 1, Duration::from_secs(30)).await;
    let st = decode_envelope(at_a[0].envelope.as_ref().unwrap());
    assert_eq!(st.from, X);
    match st.body {
        Some(v1::envelope::Body::Status(s)) => assert_eq!(s.code, "03"),
        other => panic!("expected a status, got {other:?}"),
    }

    // Both logs tell the journey: H35 published it for X; H36 accepted it
    // from the exchange and delivered it.
    let t35 = g35.trace_json(sent.message_id(), Some(A)).await;
    assert!(
        t35.iter().any(|e| e["kind"] == "delivered"
            && e["to"] == X
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("broker confirmed")),
        "{t35:#?}"
    );
    let t36 = g36.trace_json(sent.message_id(), Some(A)).await;
    assert!(
        t36.iter()
            .any(|e| e["kind"] == "accepted"
                && e["detail"].as_str().unwrap_or("").contains("over amqp")),
        "{t36:#?}"
    );
    assert!(
        t36.iter().any(|e| e["kind"] == "routed"
            && e["to"] == B
            && e["detail"].as_str().unwrap_or("").contains("not forwarded")),
        "H36 must not forward A's copy for B: {t36:#?}"
    );
    // Health and metrics see the broker and the relay.
    let http = g35.http_addr.expect("HTTP listener");
    let (code, body) = amqp::http_get(http, "/health/ready").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"broker\":\"up\""), "{body}");
    let (_, metrics) = amqp::http_get(http, "/metrics").await;
    for line in [
        "lienthong_broker_up 1",
        "lienthong_outbox_depth 0",
        "lienthong_amqp_publishes_total{result=\"confirmed\"}",
    ] {
        assert!(
            metrics.contains(line),
            "no {line:?} in /metrics:\n{metrics}"
        );
    }
    // B got it once: the H36 gateway did not send it back. A copy sent back
    // would be published for B's routing key before anything X sends B
    // afterwards (one key's publications and the inbound queue keep their
    // order), so X's next document to B is the first thing B gets.
    let marker = x
        .send_document(&[B], "Sau văn bản liên tỉnh", &[])
        .await
        .expect("X sends B a document");
    let next = receive_n(&b, 1, Duration::from_secs(30)).await;
    let next: Vec<String> = next
        .iter()
        .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
        .collect();
    assert_eq!(
        next,
        [marker.message_id()],
        "B got something before X's next document"
    );

    // C reads a queue: its deliveries are published to lienthong.agency.C.
    let client = Client::connect(&vhost).await;
    let for_c = a
        .send_document(&[C], "Cho cơ quan đọc hàng đợi", &[])
        .await
        .unwrap();
    let queue = format!("lienthong.agency.{C}");
    let msgs = client.take(&queue, 1, Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), 1, "nothing on {queue}");
    let signed = SignedEnvelope::decode(&msgs[0].data[..]).expect("a SignedEnvelope body");
    assert_eq!(decode_envelope(&signed).message_id, for_c.message_id());
    assert_eq!(
        msgs[0].properties.message_id().as_ref().map(|m| m.as_str()),
        Some(for_c.message_id())
    );
    // ... and C sends by publishing its own signed envelope, routed by its
    // own code to its gateway, which treats it as a submission.
    let c = g35.agency(C);
    let draft = c.draft_document(&[B, Y], "Từ hàng đợi của C", &[]);
    client
        .publish(
            EXCHANGE,
            C,
            &c.sign(&draft.envelope).encode_to_vec(),
            Some(CONTENT_TYPE_ENVELOPE),
            Some(&draft.envelope.message_id),
        )
        .await;
    let at_b = receive_n(&b, 1, Duration::from_secs(20)).await;
    assert_eq!(decode_envelope(at_b[0].envelope.as_ref().unwrap()).from, C);
    let at_y = receive_n(&g36.agency(Y), 1, Duration::from_secs(30)).await;
    assert_eq!(
        decode_envelope(at_y[0].envelope.as_ref().unwrap()).message_id,
        draft.envelope.message_id
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_can_never_be_accepted_is_dead_lettered_with_its_reason() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("deadletter") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(gw) = gateway("amqp-deadletter", "H35", &vhost, &pki, Backend::Sqlite, "").await
    else {
        return;
    };
    let client = Client::connect(&vhost).await;
    let a = gw.agency(A);
    let x = gw.agency(X); // an H36 agency known to the directory, served elsewhere
    let mut expected = HashMap::new();

    client
        .publish(
            EXCHANGE,
            B,
            b"<not> a protobuf",
            Some("text/plain"),
            Some("m-text"),
        )
        .await;
    expected.insert("m-text", "MALFORMED");
    client
        .publish(
            EXCHANGE,
            B,
            b"\xff\xff\xff garbage",
            Some(CONTENT_TYPE_ENVELOPE),
            Some("m-garbage"),
        )
        .await;
    expected.insert("m-garbage", "MALFORMED");
    client
        .publish(
            EXCHANGE,
            B,
            b"\x05\x0a",
            Some(CONTENT_TYPE_STREAM),
            Some("m-stream"),
        )
        .await;
    expected.insert("m-stream", "MALFORMED");
    client
        .publish(
            EXCHANGE,
            B,
            b"<edXML/>",
            Some("application/xml"),
            Some("m-edxml"),
        )
        .await;
    expected.insert("m-edxml", "BAD_SIGNATURE");

    // Signed by A, but the payload changed after signing.
    let d = a.draft_document(&[B], "Bị sửa", &[]);
    let mut signed = a.sign(&d.envelope);
    let mut env = d.envelope.clone();
    env.to = vec![C.to_owned()];
    signed.payload = env.encode_to_vec().into();
    client
        .publish(EXCHANGE, B, &signed.encode_to_vec(), None, Some("m-badsig"))
        .await;
    expected.insert("m-badsig", "BAD_SIGNATURE");

    // A local code nobody has.
    let d = a.draft_document(&["000.00.99.H35"], "Không ai nhận", &[]);
    client
        .publish(
            EXCHANGE,
            "000.00.99.H35",
            &a.sign(&d.envelope).encode_to_vec(),
            None,
            Some("m-unknown"),
        )
        .await;
    expected.insert("m-unknown", "UNKNOWN_RECIPIENT");

    // From another province, for a code this gateway does not serve: sent
    // straight to its queue, and by the exchange with a misleading key.
    let d = x.draft_document(&["000.00.01.H37"], "Sai cổng", &[]);
    client
        .publish(
            "",
            "lienthong.inbound.h35",
            &x.sign(&d.envelope).encode_to_vec(),
            None,
            Some("m-wrong-gw"),
        )
        .await;
    expected.insert("m-wrong-gw", "NOT_ROUTABLE");
    let d = x.draft_document(&[Y], "Sai khóa định tuyến", &[]);
    client
        .publish(
            EXCHANGE,
            B,
            &x.sign(&d.envelope).encode_to_vec(),
            None,
            Some("m-wrong-key"),
        )
        .await;
    expected.insert("m-wrong-key", "NOT_ROUTABLE");

    // A good one among them still goes through.
    let good = a.draft_document(&[B], "Hợp lệ", &[]);
    client
        .publish(
            EXCHANGE,
            B,
            &a.sign(&good.envelope).encode_to_vec(),
            None,
            Some(&good.envelope.message_id),
        )
        .await;

    let dls = client
        .take(
            &dead_letter_queue("H35"),
            expected.len(),
            Duration::from_secs(30),
        )
        .await;
    let got = reasons(&dls);
    for (id, reason) in &expected {
        let (r, detail) = got
            .get(*id)
            .unwrap_or_else(|| panic!("{id} was not dead-lettered: {got:#?}"));
        assert_eq!(r, reason, "{id}: {detail}");
        assert!(detail.len() > 20, "{id} has no sentence: {detail:?}");
    }
    assert_eq!(dls.len(), expected.len(), "{got:#?}");
    let at_b = receive_n(&gw.agency(B), 1, Duration::from_secs(10)).await;
    assert_eq!(
        decode_envelope(at_b[0].envelope.as_ref().unwrap()).message_id,
        good.envelope.message_id
    );
    // The refusals are in the transfer log too.
    let events = gw.trace_json(&d.envelope.message_id, Some(X)).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "rejected" && e["reason"] == "NOT_ROUTABLE"),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_amqp_remote_recipients_are_refused_with_a_sentence() {
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(gw) = TestGateway::start_with(
        "amqp-off",
        GatewayOptions {
            pki: Some(pki.clone()),
            extra_config: "[[routes]]\npattern = \"#.H35\"\nto = \"local\"\n\n[[routes]]\npattern = \"#\"\nto = \"exchange:lienthong.documents\"\n".to_owned(),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let err = gw
        .agency(A)
        .send_document(&[B, X], "Ra ngoài tỉnh", &[])
        .await
        .expect_err("X is not reachable");
    assert_eq!(reason_of(&err).as_deref(), Some("UNKNOWN_RECIPIENT"));
    assert!(
        err.message()
            .contains("national exchange is not configured"),
        "{}",
        err.message()
    );
    assert!(err.message().contains(X), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_failing_is_set_aside_after_max_redeliveries() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("poison") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(mut gw) = gateway(
        "amqp-poison",
        "H35",
        &vhost,
        &pki,
        Backend::Sqlite,
        "max_redeliveries = 3",
    )
    .await
    else {
        return;
    };
    // The gateway is down; a consumer takes the message and fails on it
    // again and again, as a gateway crashing on it would.
    gw.kill_9();
    let client = Client::connect(&vhost).await;
    let a = gw.agency(A);
    let d = a.draft_document(&[B], "Thư độc", &[]);
    client
        .publish(
            EXCHANGE,
            B,
            &a.sign(&d.envelope).encode_to_vec(),
            None,
            Some(&d.envelope.message_id),
        )
        .await;
    for _ in 0..4 {
        assert!(client.get_and_return("lienthong.inbound.h35").await);
    }
    gw.restart().await;
    let dls = client
        .take(&dead_letter_queue("H35"), 1, Duration::from_secs(20))
        .await;
    let got = reasons(&dls);
    let (reason, detail) = &got[d.envelope.message_id.as_str()];
    assert_eq!(reason, "MALFORMED");
    assert!(detail.contains("max_redeliveries"), "{detail}");
    assert!(gw.agency(B).receive_all(0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_wait_unacknowledged_while_the_database_is_away() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("dbdown") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    // Nothing is counted against a message during an outage: were it, two
    // failures would set each message aside.
    let Some(gw) = gateway(
        "amqp-dbdown",
        "H35",
        &vhost,
        &pki,
        Backend::Postgres,
        "max_failures = 2",
    )
    .await
    else {
        return;
    };
    broker_up(&gw).await;
    let db = gw.db_url.rsplit('/').next().unwrap().to_owned();
    let admin = pg_admin(&db).await;
    admin
        .execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ))
        .await
        .unwrap();

    let client = Client::connect(&vhost).await;
    let a = gw.agency(A);
    let mut ids = Vec::new();
    for i in 0..20 {
        let d = a.draft_document(&[B], &format!("Khi CSDL ngừng {i}"), &[]);
        client
            .publish(
                EXCHANGE,
                B,
                &a.sign(&d.envelope).encode_to_vec(),
                None,
                Some(&d.envelope.message_id),
            )
            .await;
        ids.push(d.envelope.message_id);
    }
    // The database connection that held the AMQP lease went with the
    // outage: the gateway gives the queue up (another replica, if one could
    // reach the database, would take it) and every message waits in the
    // queue, unacknowledged — none tried and counted against it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let gave_up = gw.log_tails(1_000_000).contains("lost the AMQP lease");
        let waiting = client
            .ch
            .queue_declare(
                "lienthong.inbound.h35".into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("the inbound queue")
            .message_count();
        if gave_up && waiting == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "60 s into the outage: lease given up {gave_up}, {waiting} of 20 messages waiting in the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing was given up on.
    assert!(
        client
            .take(&dead_letter_queue("H35"), 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
    admin
        .execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let got = receive_n(&gw.agency(B), 20, Duration::from_secs(60)).await;
    let order: Vec<String> = got
        .iter()
        .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
        .collect();
    assert_eq!(order, ids, "every message, once, in the order published");
}

/// What `recipient` got, in the order it came: each document once, and the
/// documents of each sender in the order `sent` lists them for that sender
/// and `recipient`.
fn assert_each_once_in_order(
    recipient: &str,
    got: impl IntoIterator<Item = lienthong_testkit::v1::Envelope>,
    sent: &HashMap<(String, String), Vec<String>>,
) {
    let mut seen = HashSet::new();
    let mut by_sender: HashMap<String, Vec<String>> = HashMap::new();
    for env in got {
        assert!(
            seen.insert(env.message_id.clone()),
            "{recipient} got {} twice",
            env.message_id
        );
        by_sender.entry(env.from).or_default().push(env.message_id);
    }
    for (from, ids) in by_sender {
        assert_eq!(
            &ids,
            &sent[&(from.clone(), recipient.to_owned())],
            "{from} → {recipient}: missing, extra or out of order"
        );
    }
}

/// Takes what the agencies that read their own queues got: every document
/// sent to each, each once (nothing more comes within a quiet second or
/// two), in order per sender.
async fn queues_hold_each_once_in_order(
    client: &Client,
    readers: &[&str],
    sent: &HashMap<(String, String), Vec<String>>,
) {
    for reader in readers {
        let queue = format!("lienthong.agency.{reader}");
        let expected: usize = sent
            .iter()
            .filter(|((_, to), _)| to == reader)
            .map(|(_, ids)| ids.len())
            .sum();
        let (got, more) = client
            .take_then_more(
                &queue,
                expected,
                Duration::from_secs(300),
                Duration::from_secs(2),
            )
            .await;
        let more: Vec<String> = more
            .iter()
            .map(|d| envelope_of_body(&d.data).message_id)
            .collect();
        assert!(
            more.is_empty(),
            "{queue} got more than was sent to it (a document twice): {more:?}"
        );
        assert_eq!(
            got.len(),
            expected,
            "{queue}: {} of {expected} documents",
            got.len()
        );
        assert_each_once_in_order(reader, got.iter().map(|d| envelope_of_body(&d.data)), sent);
    }
}

/// Publishes `n` signed documents to the exchange, as the national exchange
/// would: five senders, each to the `readers` (agencies that read their own
/// queues) in turn. Returns what each (sender, recipient) pair was sent, in
/// order.
async fn publish_documents(
    gw: &TestGateway,
    client: &Client,
    readers: &[&str],
    n: usize,
) -> HashMap<(String, String), Vec<String>> {
    let senders = [A, B, C, X, Y];
    let agencies: HashMap<&str, Agency> = senders.iter().map(|s| (*s, gw.agency(s))).collect();
    let mut sent: HashMap<(String, String), Vec<String>> = HashMap::new();
    // Signed first, then published as fast as the broker confirms.
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let from = senders[i % senders.len()];
        let others: Vec<&str> = readers.iter().copied().filter(|r| *r != from).collect();
        let to = others[(i / senders.len()) % others.len()];
        let agency = &agencies[from];
        let draft = agency.draft_document(&[to], &format!("Văn bản số {i}"), &[]);
        let id = draft.envelope.message_id.clone();
        bodies.push((to, agency.sign(&draft.envelope).encode_to_vec(), id.clone()));
        sent.entry((from.to_owned(), to.to_owned()))
            .or_default()
            .push(id);
    }
    for (to, body, id) in &bodies {
        client
            .publish(EXCHANGE, to, body, Some(CONTENT_TYPE_ENVELOPE), Some(id))
            .await;
    }
    sent
}

async fn pg_admin(db: &str) -> Db {
    let _ = db;
    Db::connect(&pg_admin_url())
        .await
        .expect("connect to PostgreSQL as admin")
}

/// The broker restarts (`rabbitmqctl stop_app`/`start_app`) while 10,000
/// messages flow both ways between two gateways: each arrives exactly once,
/// in order per sender and recipient.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_messages_cross_a_broker_restart_exactly_once_in_order() {
    let _exclusive = BROKER.write().await;
    let Some(vhost) = Vhost::create_or_skip("restart") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(g35) = gateway("amqp-restart-h35", "H35", &vhost, &pki, Backend::Sqlite, "").await
    else {
        return;
    };
    let Some(g36) = gateway("amqp-restart-h36", "H36", &vhost, &pki, Backend::Sqlite, "").await
    else {
        return;
    };
    const EACH_WAY: usize = 5_000;
    // Two pairs each way, sent in sequence per pair.
    let pairs = [
        (g35.agency(A), X),
        (g35.agency(B), Y),
        (g36.agency(X), A),
        (g36.agency(Y), B),
    ];
    let mut senders = Vec::new();
    let sent_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent_count = || sent_so_far.load(std::sync::atomic::Ordering::SeqCst);
    for (from, to) in pairs.iter() {
        let from = from.clone();
        let to = to.to_string();
        let sent_so_far = sent_so_far.clone();
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EACH_WAY / 2);
            for i in 0..EACH_WAY / 2 {
                let draft = from.draft_document(&[&to], &format!("Thư {i}"), &[]);
                let sent = loop {
                    match from.send_draft(&draft).await {
                        Ok(s) => break s,
                        Err(s) if reason_of(&s).as_deref() == Some("RATE_LIMITED") => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(s) => panic!("send: {s:?}"),
                    }
                };
                ids.push(sent.message_id().to_owned());
                sent_so_far.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (from.organ_id.clone(), to, ids)
        }));
    }
    // The broker stops while the flow is under way.
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    while sent_count() < 200 {
        assert!(
            tokio::time::Instant::now() < until,
            "only {} sent in 120 s",
            sent_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ctl = |arg: &str| {
        let out = std::process::Command::new("rabbitmqctl")
            .arg(arg)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {arg}: {}",
            describe_output(&out)
        );
    };
    ctl("stop_app");
    // Readiness says so while the broker is away (agencies still send: the
    // outbox keeps what leaves).
    let http = g35.http_addr.expect("HTTP listener");
    // Within 15 s: a machine busy with the whole suite has taken more than
    // 5 s to notice the lost connection.
    let mut seen_down = false;
    for _ in 0..150 {
        let (code, body) = amqp::http_get(http, "/health/ready").await;
        if code == 503 && body.contains("\"broker\":\"down\"") {
            seen_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Agencies keep sending while the broker is away (the outbox keeps what
    // leaves), for a while, or to the end.
    let at_stop = sent_count();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while sent_count() < (at_stop + 200).min(2 * EACH_WAY) {
        assert!(
            tokio::time::Instant::now() < until,
            "{} sent in 60 s while the broker was away",
            sent_count() - at_stop
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What a load balancer in front of replicas checks, asked as an HTTP
    // client that is not ours would: this one still serves agencies.
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://{http}/health/grpc"))
        .output()
        .await
        .expect("run curl");
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        answer.ends_with("\n200") && answer.contains("\"status\":\"serving\""),
        "/health/grpc while the broker is away: {answer}"
    );
    ctl("start_app");
    assert!(seen_down, "/health/ready never reported the broker down");

    let mut sent: HashMap<(String, String), Vec<String>> = HashMap::new();
    for s in senders {
        let (from, to, ids) = s.await.unwrap();
        sent.insert((from, to), ids);
    }
    let receivers = [
        (g36.agency(X), X),
        (g36.agency(Y), Y),
        (g35.agency(A), A),
        (g35.agency(B), B),
    ];
    for (agency, code) in receivers.iter() {
        let got = receive_n(agency, EACH_WAY / 2, Duration::from_secs(600)).await;
        assert_each_once_in_order(
            code,
            got.iter()
                .map(|d| decode_envelope(d.envelope.as_ref().unwrap())),
            &sent,
        );
        // Nothing more comes: the sender's last message came last, and one
        // sender's copies for one recipient keep their order, so a late
        // duplicate would have come before it.
        assert!(agency.receive_all(0).await.unwrap().is_empty());
    }
    // The restart did cut both gateways off mid-flow, and they came back.
    for gw in [&g35, &g36] {
        let logs = gw.log_tails(1_000_000);
        assert!(
            logs.contains("AMQP connection lost or refused; reconnecting"),
            "{} never lost the broker: the test did not test a restart",
            gw.name
        );
    }
}

/// `amqps://` with rustls: the gateway proves itself with a client
/// certificate to a broker that requires one, and publishes over TLS; without
/// the certificate the broker refuses it and readiness says why.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_talks_to_a_tls_broker_with_its_client_certificate() {
    let (_t, pki) = amqp::federated_pki_dir(&[C]);
    let Some(broker) = amqp::TlsBroker::start_or_skip("amqps", &pki).await else {
        return;
    };
    let tls = |with_cert: bool| {
        let p = |f: &str| pki.join(f).display().to_string();
        let cert = if with_cert {
            format!(
                ", cert = \"{}\", key = \"{}\"",
                p(&format!("{PROVINCE}.client.pem")),
                p(&format!("{PROVINCE}.client.key.pem"))
            )
        } else {
            String::new()
        };
        format!(
            "[amqp]\nurl = \"amqps://guest:guest@localhost:{}/%2f\"\nreconnect_max_secs = 1\ntls = {{ ca = \"{}\"{cert} }}\n\n[[routes]]\npattern = \"#.H35\"\nto = \"local\"\n",
            broker.port,
            p("ca.pem")
        )
    };
    let Some(gw) = TestGateway::start_with(
        "amqps",
        GatewayOptions {
            pki: Some(pki.clone()),
            extra_config: tls(true),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let http = gw.http_addr.expect("HTTP listener");
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = amqp::http_get(http, "/health/ready").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(ready.1.contains("\"broker\":\"up\""), "{}", ready.1);
    // C reads a queue: its copy is published over TLS, confirmed.
    let sent = gw
        .agency(A)
        .send_document(&[C], "Qua TLS", &[])
        .await
        .expect("send");
    let mut confirmed = false;
    for _ in 0..100 {
        let events = gw.trace_json(sent.message_id(), Some(A)).await;
        if events.iter().any(|e| {
            e["kind"] == "delivered"
                && e["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("broker confirmed")
        }) {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(confirmed, "no confirmed publication over amqps");
    drop(gw);

    let Some(gw) = TestGateway::start_with(
        "amqps-nocert",
        GatewayOptions {
            pki: Some(pki.clone()),
            extra_config: tls(false),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    // Readiness says `down` from the start, before any attempt: wait for
    // the broker's answer itself — two attempts refused, and the reason
    // readiness gives is theirs — while the same configuration with the
    // certificate (above) was up.
    let http = gw.http_addr.expect("HTTP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Under TLS 1.3 the broker's certificate_required alert can race the
    // client's next write, and an attempt then ends as a reset connection:
    // readiness names the refusal once an attempt has read the alert.
    let (code, body) = loop {
        let (code, body) = amqp::http_get(http, "/health/ready").await;
        let attempts = gw
            .log_tails(1_000_000)
            .matches("AMQP connection lost or refused")
            .count();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_lowercase))
            .unwrap_or_default();
        if attempts >= 2 && reason.contains("certificate") {
            break (code, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness did not name the broker's refusal of the missing certificate in 60 s ({attempts} attempt(s)): {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"broker\":\"down\""), "{body}");
}

/// A code that no gateway serves yet: the broker returns its copies, they
/// wait in the outbox (in order, without holding up other recipients), and
/// go as soon as a gateway binds a queue for it.
#[tokio::test(flavor = "multi_thread")]
async fn copies_for_a_gateway_not_yet_bound_wait_in_order_and_go_when_it_binds() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("unbound") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[B]);
    let routes = "[[routes]]\npattern = \"*.*.31.H35\"\nto = \"exchange:district31\"\n";
    let Some(gw) = TestGateway::start_with(
        "amqp-unbound",
        GatewayOptions {
            pki: Some(pki.clone()),
            extra_config: format!("{}{routes}", amqp::config(&vhost, "H35", "")),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let a = gw.agency(A);
    let mut for_c = Vec::new();
    for i in 0..5 {
        let sent = a
            .send_document(&[C], &format!("Cho quận {i}"), &[])
            .await
            .expect("send");
        assert_eq!(sent.receipt.recipients[0].route, "exchange:district31");
        for_c.push(sent.message_id().to_owned());
    }
    // B reads its queue: its copy is not held up behind C's.
    let for_b = a.send_document(&[B], "Cho B", &[]).await.expect("send");
    let client = Client::connect(&vhost).await;
    let got = client
        .take(&format!("lienthong.agency.{B}"), 1, Duration::from_secs(20))
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.message_id().as_ref().map(|m| m.as_str()),
        Some(for_b.message_id())
    );
    let http = gw.http_addr.expect("HTTP");
    let (_, metrics) = amqp::http_get(http, "/metrics").await;
    assert!(
        metrics.contains("lienthong_amqp_publishes_total{result=\"returned\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("lienthong_outbox_depth 0"),
        "C's copies wait: {metrics}"
    );
    // The district's gateway comes: a queue bound on its exchange.
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    client
        .ch
        .queue_declare(
            "district31".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    client
        .ch
        .queue_bind(
            "district31".into(),
            "district31".into(),
            "#".into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let got = client.take("district31", 5, Duration::from_secs(90)).await;
    let ids: Vec<String> = got
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids, for_c, "every copy, in order");
}

/// Waits until the gateway says it is connected with its topology declared
/// (before that, a message published to the exchange has no queue to go to).
pub(crate) async fn broker_up(gw: &TestGateway) {
    let http = gw.http_addr.expect("HTTP listener");
    // Long enough for a loaded machine: serving gRPC comes first.
    for _ in 0..600 {
        let (code, body) = amqp::http_get(http, "/health/ready").await;
        if code == 200 && body.contains("\"broker\":\"up\"") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never connected to the broker", gw.name);
}

/// The envelope a message body carries (a bare envelope or a send stream).
pub(crate) fn envelope_of_body(body: &[u8]) -> lienthong_testkit::v1::Envelope {
    use lienthong_testkit::v1::{SendRequest, send_request::Item};
    if let Ok(signed) = SignedEnvelope::decode(body)
        && !signed.payload.is_empty()
    {
        return decode_envelope(&signed);
    }
    match SendRequest::decode_length_delimited(body) {
        Ok(SendRequest {
            item: Some(Item::Envelope(signed)),
        }) => decode_envelope(&signed),
        other => panic!("not a lienthong message body: {other:?}"),
    }
}

/// The send-stream body of a signed envelope and its attachments: each
/// `SendRequest` preceded by its length.
fn stream_body(signed: &SignedEnvelope, attachments: &[AttachmentSpec]) -> Vec<u8> {
    use lienthong_testkit::v1::{AttachmentChunk, SendRequest, send_request::Item};
    let mut body = SendRequest {
        item: Some(Item::Envelope(signed.clone())),
    }
    .encode_length_delimited_to_vec();
    for (i, a) in attachments.iter().enumerate() {
        for data in a.chunks() {
            body.extend(
                SendRequest {
                    item: Some(Item::Chunk(AttachmentChunk {
                        index: i as u32,
                        data,
                    })),
                }
                .encode_length_delimited_to_vec(),
            );
        }
    }
    body
}

/// A signed document with a NUL in a text field, published by an
/// independent client: refused `MALFORMED` and dead-lettered at once, naming
/// the field, on PostgreSQL (which cannot store a NUL); the message behind
/// it is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_with_a_nul_is_dead_lettered_and_the_one_behind_it_is_delivered() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("nul") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(gw) = gateway("amqp-nul", "H35", &vhost, &pki, Backend::Postgres, "").await else {
        return;
    };
    broker_up(&gw).await;
    let a = gw.agency(A);
    let mut poisoned = HashMap::new();
    type Change = fn(&mut lienthong_testkit::v1::Document);
    let changes: [(&str, Change); 2] = [
        ("document.document_id", |d| d.document_id.insert(4, '\0')),
        ("document.subject", |d| d.subject.push('\0')),
    ];
    for (field, change) in changes {
        let mut d = a.draft_document(&[B], "Thư có ký tự NUL", &[]);
        change(d.document_mut());
        let body = a.sign(&d.envelope).encode_to_vec();
        amqp::amqp_publish(&vhost.url, EXCHANGE, B, CONTENT_TYPE_ENVELOPE, &body).await;
        poisoned.insert(d.envelope.message_id.clone(), field);
    }
    let good = a.draft_document(&[B], "Thư hợp lệ phía sau", &[]);
    let body = a.sign(&good.envelope).encode_to_vec();
    amqp::amqp_publish(&vhost.url, EXCHANGE, B, CONTENT_TYPE_ENVELOPE, &body).await;

    let client = Client::connect(&vhost).await;
    let dls = client
        .take(&dead_letter_queue("H35"), 2, Duration::from_secs(30))
        .await;
    assert_eq!(
        dls.len(),
        2,
        "the poisoned messages were not dead-lettered (held, retried?)"
    );
    for d in &dls {
        let id = envelope_of_body(&d.data).message_id;
        let field = poisoned
            .get(&id)
            .unwrap_or_else(|| panic!("{id} was dead-lettered"));
        let reason = amqp::header(d, "x-lienthong-reason").unwrap_or_default();
        let detail = amqp::header(d, "x-lienthong-detail").unwrap_or_default();
        assert_eq!(reason, "MALFORMED", "{id}: {detail}");
        assert!(detail.contains(&format!("`{field}`")), "{id}: {detail}");
        let events = gw.trace_json(&id, Some(A)).await;
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!(kinds, ["rejected"], "{events:#?}");
    }
    let got = receive_n(&gw.agency(B), 1, Duration::from_secs(20)).await;
    assert_eq!(
        decode_envelope(got[0].envelope.as_ref().unwrap()).message_id,
        good.envelope.message_id
    );
}

/// A message that fails for a reason of the gateway's, not of its own — one
/// folder of the attachment store is damaged (a file where the folder of its
/// attachment's digest belongs), while the database answers and the store
/// takes other bytes — is set aside after `amqp.max_failures` attempts, with
/// its reason; the message behind it goes through; once the store is
/// repaired, the dead letter published again is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_failing_while_the_gateway_is_healthy_is_set_aside() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("failing") else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[]);
    let Some(gw) = gateway(
        "amqp-failing",
        "H35",
        &vhost,
        &pki,
        Backend::Sqlite,
        "max_failures = 3",
    )
    .await
    else {
        return;
    };
    broker_up(&gw).await;
    let a = gw.agency(A);
    let attachment = AttachmentSpec::text("to-trinh.txt", "Tờ trình về việc chuyển đổi số");
    let (_, sha) = attachment.digest();
    let folder = gw.storage_path.join("blobs").join(&hex::encode(sha)[..2]);
    assert!(!folder.exists(), "{} exists already", folder.display());
    std::fs::write(&folder, b"not a folder").unwrap();

    let client = Client::connect(&vhost).await;
    let stuck = a.draft_document(&[B], "Tờ trình", std::slice::from_ref(&attachment));
    let body = stream_body(&a.sign(&stuck.envelope), std::slice::from_ref(&attachment));
    client
        .publish(
            EXCHANGE,
            B,
            &body,
            Some(CONTENT_TYPE_STREAM),
            Some(&stuck.envelope.message_id),
        )
        .await;
    let behind = a.draft_document(&[B], "Văn bản phía sau", &[]);
    client
        .publish(
            EXCHANGE,
            B,
            &a.sign(&behind.envelope).encode_to_vec(),
            None,
            Some(&behind.envelope.message_id),
        )
        .await;

    let dls = client
        .take(&dead_letter_queue("H35"), 1, Duration::from_secs(30))
        .await;
    let got = reasons(&dls);
    let (reason, detail) = got
        .get(stuck.envelope.message_id.as_str())
        .unwrap_or_else(|| panic!("the failing message was not set aside: {got:#?}"));
    assert_eq!(reason, "UNAVAILABLE", "{detail}");
    assert!(detail.contains("max_failures"), "{detail}");
    assert!(detail.contains("attachment store"), "{detail}");
    let failures = amqp::header(&dls[0], "x-lienthong-failures").unwrap_or_default();
    assert!(failures.contains('3'), "{failures:?}");
    let at_b = receive_n(&gw.agency(B), 1, Duration::from_secs(20)).await;
    assert_eq!(
        decode_envelope(at_b[0].envelope.as_ref().unwrap()).message_id,
        behind.envelope.message_id,
        "the message behind it"
    );
    // Set aside by the consumer, which knows the message only by its id.
    let events = gw.trace_json(&stuck.envelope.message_id, None).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "rejected"
                && e["detail"].as_str().unwrap_or("").contains("set aside")),
        "{events:#?}"
    );

    // Repaired, and published again as docs/amqp.md says: nothing was lost.
    std::fs::remove_file(&folder).unwrap();
    client
        .publish(
            EXCHANGE,
            B,
            &dls[0].data,
            Some(CONTENT_TYPE_STREAM),
            Some(&stuck.envelope.message_id),
        )
        .await;
    let at_b = receive_n(&gw.agency(B), 1, Duration::from_secs(20)).await;
    assert_eq!(
        decode_envelope(at_b[0].envelope.as_ref().unwrap()).message_id,
        stuck.envelope.message_id
    );
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, lapin::Error>, what: &str) {
    match r {
        Err(e) => assert!(
            matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 403),
            "{what}: refused, but not for access: {e}"
        ),
        Ok(v) => panic!("{what}: the broker allowed it ({v:?})"),
    }
}

/// Two province gateways on one virtual host, each with a broker account
/// made by exactly the commands docs/amqp.md gives the broker's operator:
/// documents and statuses cross the exchange both ways and reach a
/// queue-reading agency; with the same account, nothing of the other
/// province can be read, bound to, declared or written into.
#[tokio::test(flavor = "multi_thread")]
async fn gateways_run_with_the_documented_least_privileges_and_no_more() {
    use lapin::options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;

    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("leastpriv") else {
        return;
    };
    // The broker's operator declares the shared exchange.
    let operator = Client::connect(&vhost).await;
    operator
        .ch
        .exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let u35 = amqp::BrokerUser::province_gateway(&vhost, "H35");
    let u36 = amqp::BrokerUser::province_gateway(&vhost, "H36");
    let own = |p: &str| {
        format!(
            "dead_letter_exchange = \"lienthong.dead.{p}\"\nagency_exchange = \"lienthong.agencies.{p}\""
        )
    };
    let (_t, pki) = amqp::federated_pki_dir(&[C]);
    let Some(g35) = gateway_as(
        "amqp-lp-h35",
        "H35",
        &u35.url,
        &pki,
        Backend::Sqlite,
        &own("h35"),
    )
    .await
    else {
        return;
    };
    let Some(g36) = gateway_as(
        "amqp-lp-h36",
        "H36",
        &u36.url,
        &pki,
        Backend::Sqlite,
        &own("h36"),
    )
    .await
    else {
        return;
    };
    let (a, x) = (g35.agency(A), g36.agency(X));

    // A → X (the other province) and C (a queue-reading agency here).
    let sent = a
        .send_document(&[X, C], "Văn bản liên tỉnh, quyền tối thiểu", &[])
        .await
        .expect("send");
    let at_x = receive_n(&x, 1, Duration::from_secs(30)).await;
    assert_eq!(
        decode_envelope(at_x[0].envelope.as_ref().unwrap()).message_id,
        sent.message_id()
    );
    let at_c = operator
        .take(&format!("lienthong.agency.{C}"), 1, Duration::from_secs(30))
        .await;
    assert_eq!(at_c.len(), 1, "C's queue got nothing");
    assert_eq!(
        envelope_of_body(&at_c[0].data).message_id,
        sent.message_id()
    );
    // X → A, back across the exchange.
    let back = x
        .send_document(&[A], "Trả lời liên tỉnh", &[])
        .await
        .expect("send back");
    let at_a = receive_n(&a, 1, Duration::from_secs(30)).await;
    assert_eq!(
        decode_envelope(at_a[0].envelope.as_ref().unwrap()).message_id,
        back.message_id()
    );

    // The H35 account and the other province's resources.
    let conn = lapin::Connection::connect(&u35.url, lapin::ConnectionProperties::default())
        .await
        .expect("the H35 account connects");
    let ch = || async { conn.create_channel().await.expect("channel") };
    for queue in ["lienthong.inbound.h36", "lienthong.dead.h36"] {
        let r = ch()
            .await
            .basic_get(queue.into(), BasicGetOptions::default())
            .await;
        assert_refused(r, &format!("H35 takes a message from {queue}"));
    }
    let r = ch()
        .await
        .queue_bind(
            "lienthong.inbound.h35".into(),
            EXCHANGE.into(),
            "#.H36".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_refused(r, "H35 binds its queue to H36's codes");
    let r = ch()
        .await
        .queue_declare(
            format!("lienthong.agency.{Y}").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_refused(r, "H35 declares an H36 agency's queue");
    let r = ch()
        .await
        .exchange_delete(EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await;
    assert_refused(r, "H35 deletes the documents exchange");
    let publisher = ch().await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let r = match publisher
        .basic_publish(
            "".into(),
            "lienthong.inbound.h36".into(),
            BasicPublishOptions::default(),
            b"straight into another province's queue",
            lapin::BasicProperties::default(),
        )
        .await
    {
        Ok(confirm) => confirm.await,
        Err(e) => Err(e),
    };
    assert_refused(r, "H35 publishes into H36's queue by the default exchange");
    // Its own inbound queue it may read (the gateway does).
    let own_queue = ch()
        .await
        .basic_get("lienthong.inbound.h35".into(), BasicGetOptions::default())
        .await;
    assert!(own_queue.is_ok(), "{own_queue:?}");
    let _ = conn.close(200, "done".into()).await;
    drop((g35, g36, u35, u36));
}

/// Five senders publish several hundred signed documents for four agencies
/// that read their own queues, while the gateway is stopped: it starts on a
/// full queue and takes many at once. Some documents carry an attachment
/// of a few hundred kilobytes, so their checks take longer than those of
/// the bare envelopes around them, and later ones of other senders and
/// recipients finish first. Every (sender, recipient) sequence still leaves
/// through the agencies' queues in the order published, each document once.
/// On PostgreSQL: the confirms the relay marks together go through its
/// placeholders (SQLite's are the store's own tests').
#[tokio::test(flavor = "multi_thread")]
async fn documents_taken_many_at_once_leave_in_order_per_sender_and_recipient_exactly_once() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("pipelined") else {
        return;
    };
    let readers = [PROVINCE, A, B, C];
    let (_t, pki) = amqp::federated_pki_dir(&readers);
    let Some(mut gw) = gateway(
        "amqp-pipelined",
        "H35",
        &vhost,
        &pki,
        Backend::Postgres,
        "prefetch = 64",
    )
    .await
    else {
        return;
    };
    broker_up(&gw).await;
    gw.stop();

    const DOCUMENTS: usize = 480;
    let senders = [A, B, C, X, Y];
    let agencies: HashMap<&str, Agency> = senders.iter().map(|s| (*s, gw.agency(s))).collect();
    let client = Client::connect(&vhost).await;
    let mut published = Vec::with_capacity(DOCUMENTS);
    let mut sent: HashMap<(String, String), Vec<String>> = HashMap::new();
    for i in 0..DOCUMENTS {
        let from = senders[i % senders.len()];
        let others: Vec<&str> = readers.iter().copied().filter(|r| *r != from).collect();
        let first = others[(i / senders.len()) % others.len()];
        let to = if i % 4 == 0 {
            vec![first, others[(i / senders.len() + 1) % others.len()]]
        } else {
            vec![first]
        };
        let attachments = if i % 6 == 1 {
            vec![AttachmentSpec::generated(
                "phu-luc.bin",
                300_000 + i as u64,
                i as u64,
            )]
        } else {
            Vec::new()
        };
        let agency = &agencies[from];
        let draft = agency.draft_document(&to, &format!("Văn bản số {i}"), &attachments);
        let signed = agency.sign(&draft.envelope);
        let (body, content_type) = if attachments.is_empty() {
            (signed.encode_to_vec(), CONTENT_TYPE_ENVELOPE)
        } else {
            (stream_body(&signed, &attachments), CONTENT_TYPE_STREAM)
        };
        let id = draft.envelope.message_id.clone();
        client
            .publish(EXCHANGE, to[0], &body, Some(content_type), Some(&id))
            .await;
        for r in &to {
            sent.entry((from.to_owned(), (*r).to_owned()))
                .or_default()
                .push(id.clone());
        }
        published.push(id);
    }
    gw.restart().await;
    queues_hold_each_once_in_order(&client, &readers, &sent).await;
    assert!(
        client
            .take(&dead_letter_queue("H35"), 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "a document was dead-lettered"
    );
    // The gateway did work on many at once: some documents were accepted
    // before others published (and delivered to it) earlier.
    let accepted: Vec<String> = gw
        .sql_rows("SELECT message_id FROM messages ORDER BY id")
        .await
        .iter()
        .map(|r| r.get::<String>("message_id"))
        .collect();
    assert_eq!(accepted.len(), DOCUMENTS);
    assert_ne!(
        accepted, published,
        "every document was accepted in the order published: nothing ran at once, so the order above was not put to the test"
    );
}

/// The IT office restarts the gateway (SIGTERM, as systemd does) again and
/// again while it takes several hundred documents from the inbound queue and
/// publishes them to agencies that read their own queues. Each stop finishes
/// what was started: the checks under way end and are acknowledged, the
/// publications waiting for their confirms are confirmed and marked sent. So
/// no agency's queue gets a document twice, and each (sender, recipient)
/// sequence keeps its order across the stops.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_stopped_again_and_again_sends_each_document_once_in_order() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("stops") else {
        return;
    };
    let readers = [PROVINCE, A, B, C];
    let (_t, pki) = amqp::federated_pki_dir(&readers);
    let Some(mut gw) = gateway("amqp-stops", "H35", &vhost, &pki, Backend::Sqlite, "").await else {
        return;
    };
    broker_up(&gw).await;
    gw.stop();

    const DOCUMENTS: usize = 1200;
    let client = Client::connect(&vhost).await;
    let sent = publish_documents(&gw, &client, &readers, DOCUMENTS).await;

    // Stopped at different moments, each time cleanly.
    let mut stopped_while_publishing = 0;
    for run_ms in [150u64, 250, 100, 300, 200, 350, 150, 250] {
        gw.restart().await;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        let status = gw.stop().expect("the gateway was running");
        assert!(
            status.success(),
            "the gateway did not stop cleanly ({status}):\n{}",
            gw.log_tails(40)
        );
        let outbox = gw
            .sql_rows("SELECT count(*) AS total, count(sent_at) AS sent FROM outbox")
            .await;
        let (total, sent_rows) = (outbox[0].get::<i64>("total"), outbox[0].get::<i64>("sent"));
        if sent_rows > 0 && (sent_rows < total || (total as usize) < DOCUMENTS) {
            stopped_while_publishing += 1;
        }
    }
    assert!(
        stopped_while_publishing >= 2,
        "no stop came while documents were being published: the stops did not put anything to the test"
    );
    gw.restart().await;
    queues_hold_each_once_in_order(&client, &readers, &sent).await;
}

/// Two replicas of one gateway (one PostgreSQL database, one broker): only
/// the replica that holds the AMQP lease consumes the inbound queue and
/// relays the outbox, so the order per sender and recipient holds; when it
/// is killed (-9) mid-way, the other takes over within seconds and nothing
/// is lost. After a kill a copy may go twice (its confirm died with the
/// replica); each still arrives, in order of first arrival.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_takes_over_the_queue_when_the_one_consuming_it_is_killed() {
    let _shared = BROKER.read().await;
    let Some(vhost) = Vhost::create_or_skip("replicas") else {
        return;
    };
    let readers = [PROVINCE, A, B, C];
    let (_t, pki) = amqp::federated_pki_dir(&readers);
    let Some(mut first) =
        gateway("amqp-replicas", "H35", &vhost, &pki, Backend::Postgres, "").await
    else {
        return;
    };
    broker_up(&first).await;
    let second = first.start_replica("replica-2").await;

    const DOCUMENTS: usize = 800;
    let client = Client::connect(&vhost).await;
    let sent = publish_documents(&first, &client, &readers, DOCUMENTS).await;
    // The first replica works through the queue; it dies mid-way.
    let accepted =
        || async { second.sql_rows("SELECT count(*) AS n FROM messages").await[0].get::<i64>("n") };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepted().await < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replicas took nothing from the queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_9();
    let at_kill = accepted().await;
    assert!(
        (at_kill as usize) < DOCUMENTS,
        "everything was accepted before the kill: nothing was left to take over"
    );
    // The second replica takes over the rest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (accepted().await as usize) < DOCUMENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second replica did not take over: {} of {DOCUMENTS} accepted",
            accepted().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first comes back, standing by.
    first.restart().await;

    for reader in readers {
        let queue = format!("lienthong.agency.{reader}");
        let expected: Vec<&String> = sent
            .iter()
            .filter(|((_, to), _)| to == reader)
            .flat_map(|(_, ids)| ids)
            .collect();
        let (got, more) = client
            .take_then_more(
                &queue,
                expected.len(),
                Duration::from_secs(300),
                Duration::from_secs(3),
            )
            .await;
        let mut seen = HashSet::new();
        let firsts: Vec<lienthong_testkit::v1::Envelope> = got
            .iter()
            .chain(&more)
            .map(|d| envelope_of_body(&d.data))
            .filter(|e| seen.insert(e.message_id.clone()))
            .collect();
        assert_eq!(
            firsts.len(),
            expected.len(),
            "{queue}: {} of {} documents",
            firsts.len(),
            expected.len()
        );
        assert_each_once_in_order(reader, firsts, &sent);
    }
    // One consumer at a time: the first replica's acceptances (chain
    // `main`) all come before the second's (`replica-2`), which took over.
    let by_chain = first
        .sql_rows(
            "SELECT chain, min(id) AS first, max(id) AS last, count(*) AS n FROM events \
             WHERE kind = 'accepted' GROUP BY chain ORDER BY chain",
        )
        .await;
    let span = |chain: &str| {
        by_chain
            .iter()
            .find(|r| r.get::<String>("chain") == chain)
            .map(|r| (r.get::<i64>("first"), r.get::<i64>("last")))
    };
    let (main, second_chain) = (span("main"), span("replica-2"));
    let (Some((_, main_last)), Some((second_first, _))) = (main, second_chain) else {
        panic!("both replicas should have accepted documents, one after the other: {by_chain:?}");
    };
    assert!(
        main_last < second_first,
        "both replicas consumed the queue at once: {by_chain:?}"
    );
    assert_eq!(
        accepted().await as usize,
        DOCUMENTS,
        "each document accepted once"
    );
    let verify = second.run_cli(&["log", "verify"]).await;
    assert!(verify.status.success(), "{}", describe_output(&verify));
    drop(second);
}
