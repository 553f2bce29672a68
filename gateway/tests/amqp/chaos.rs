//! Two replicas under fire: several thousand signed documents from agency
//! software that retries on `UNAVAILABLE`, spread over both replicas, with
//! receivers on both, and from another province over a RabbitMQ cluster of
//! three nodes of the test's own — while one replica is killed (kill -9)
//! and restarted, one broker node is stopped and started again, and both
//! replicas are restarted one after the other (a rolling upgrade).
//!
//! Afterwards, what agencies and the province would check: every document
//! whose sender got a receipt is there once and reached each recipient
//! through one delivery, acknowledged; no document without a receipt; the
//! queue-reading agency has every document in order per sender; the
//! deadline check (a job of one replica at a time) wrote one `overdue` line
//! per late recipient; the transfer log verifies.
//!
//! The size is CI's. A longer run: `LIENTHONG_CHAOS_SCALE=10 cargo test -p
//! lienthong --test amqp chaos -- --ignored --nocapture` (see
//! docs/operations.md).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::BasicAckOptions;
use lienthong_testkit::amqp::{self, CONTENT_TYPE_ENVELOPE, Client, EXCHANGE, X, Y};
use lienthong_testkit::rabbit_cluster::RabbitCluster;
use lienthong_testkit::*;
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

use crate::amqp::{broker_up, envelope_of_body};

/// Documents sent over gRPC by each of two agencies, each to B (which
/// follows its inbox on both replicas) and C (which reads a queue).
const GRPC_PER_SENDER: usize = 1000;
/// Documents from the other province over the broker, to B or C.
const AMQP_DOCUMENTS: usize = 1000;
/// How long the documents keep coming; the failures happen meanwhile.
const TRAFFIC_SECS: u64 = 60;
/// Every so many gRPC documents carries a due date already past: each of
/// its recipients is late, and the deadline check must say so once.
const OVERDUE_EVERY: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_lose_and_repeat_nothing_through_kills_restarts_and_a_broker_node_down() {
    chaos("chaos", 1).await;
}

/// The same, longer: `LIENTHONG_CHAOS_SCALE` times the documents and the
/// time (10 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak of several minutes; run it on purpose"]
async fn soak_two_replicas_through_kills_restarts_and_a_broker_node_down() {
    let scale = std::env::var("LIENTHONG_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    chaos("soak", scale).await;
}

#[derive(Default)]
struct Tally {
    /// message id → the delivery ids it came with (to B).
    deliveries: HashMap<String, Vec<String>>,
    /// Answers other than a receipt, by code, that the senders retried.
    retried: HashMap<String, usize>,
    /// Receipts that answered a retry of a document accepted already (its
    /// first answer lost with a replica): the original, marked duplicate.
    duplicates: usize,
}

async fn chaos(name: &'static str, scale: usize) {
    let Some(mut cluster) =
        tokio::task::spawn_blocking(move || RabbitCluster::start_or_skip(name, 3))
            .await
            .expect("cluster")
    else {
        return;
    };
    let (_t, pki) = amqp::federated_pki_dir(&[C]);
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        pki: Some(pki),
        // Unacknowledged deliveries (an ack lost with a killed replica) come
        // again after 10 s, within the test.
        extra_limits: "redelivery_after_secs = 10\n".to_owned(),
        extra_config: format!(
            "[lifecycle]\ncheck_every_secs = 1\n{}",
            amqp::config_with_url(&cluster.urls(), "H35", "")
        ),
        ..Default::default()
    };
    let Some(mut first) = TestGateway::start_with(name, opts).await else {
        return;
    };
    let mut second = first.start_replica("replica-2").await;
    broker_up(&first).await;

    let limit = Duration::from_secs(300 + 60 * scale as u64);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let report = within(limit, "the chaos run", async {
        // B's software follows its inbox on each replica.
        let followers: Vec<_> = [first.agency(B), second.agency(B)]
            .into_iter()
            .map(|b| tokio::spawn(follow(b, tally.clone(), stop_rx.clone())))
            .collect();

        let traffic = Duration::from_secs(TRAFFIC_SECS * scale as u64);
        let t0 = Instant::now() + Duration::from_millis(500);
        let senders: Vec<_> = [A, PROVINCE]
            .into_iter()
            .map(|from| {
                let replicas = [first.agency(from), second.agency(from)];
                tokio::spawn(send_all(
                    replicas,
                    GRPC_PER_SENDER * scale,
                    t0,
                    traffic,
                    tally.clone(),
                ))
            })
            .collect();
        // The other province publishes through the node that stays up.
        let publisher = Client::connect_url(&cluster.url(2)).await;
        let bodies = province_documents(&first, AMQP_DOCUMENTS * scale);
        let publishing = tokio::spawn(async move {
            let every = traffic / bodies.len().max(1) as u32;
            let mut sent: HashMap<(String, String), Vec<String>> = HashMap::new();
            for (k, (from, to, id, body)) in bodies.into_iter().enumerate() {
                tokio::time::sleep_until(t0 + every * k as u32).await;
                publisher
                    .publish(EXCHANGE, &to, &body, Some(CONTENT_TYPE_ENVELOPE), Some(&id))
                    .await;
                sent.entry((from, to)).or_default().push(id);
            }
            sent
        });

        // The failures, one after the other, while the documents come.
        let secs = |s: f64| t0 + traffic.mul_f64(s / TRAFFIC_SECS as f64);
        let kill_at = secs(5.0 + f64::from(uuid::Uuid::new_v4().as_bytes()[0] % 40) / 10.0);
        tokio::time::sleep_until(kill_at).await;
        eprintln!(
            "kill -9 of the first replica (it holds the jobs' leases) {:?} into the traffic",
            kill_at - t0
        );
        first.kill_9();
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.restart().await;

        tokio::time::sleep_until(secs(16.0)).await;
        eprintln!("stopping broker node 1 of 3 (the one the gateway connects to first)");
        tokio::task::block_in_place(|| {
            cluster.stop_node(0).expect("stop node 1");
            std::thread::sleep(Duration::from_secs(3));
            cluster.start_node(0).expect("start node 1 again");
        });
        eprintln!("broker node 1 runs again");

        tokio::time::sleep_until(secs(36.0)).await;
        eprintln!("rolling restart: the first replica, then the second");
        for gw in [&mut first, &mut second] {
            let status = tokio::task::block_in_place(|| gw.stop()).expect("running");
            assert!(
                status.success(),
                "{} did not stop cleanly during the rolling restart ({status}):\n{}",
                gw.name,
                gw.log_tails(40)
            );
            gw.restart().await;
        }

        let mut sent_grpc = Vec::new();
        for s in senders {
            sent_grpc.extend(s.await.expect("sender"));
        }
        let sent_amqp = publishing.await.expect("publisher");
        eprintln!("all sent; waiting for every delivery");

        // B: every document to it, through one delivery each.
        let to_b: HashSet<String> = sent_grpc
            .iter()
            .map(|s| s.message_id.clone())
            .chain(
                sent_amqp
                    .iter()
                    .filter(|((_, to), _)| to == B)
                    .flat_map(|(_, ids)| ids.iter().cloned()),
            )
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let missing = {
                let t = tally.lock().unwrap();
                to_b.iter().filter(|id| !t.deliveries.contains_key(*id)).count()
            };
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} documents never reached B:\n{}\n{}",
                to_b.len(),
                first.log_tails(30),
                second.log_tails(30)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Anything still to come (a document twice) comes now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop_tx.send(true);
        for f in followers {
            f.await.expect("follower");
        }
        let t = std::mem::take(&mut *tally.lock().unwrap());
        let unknown: Vec<&String> = t.deliveries.keys().filter(|id| !to_b.contains(*id)).collect();
        assert!(unknown.is_empty(), "B got documents nobody sent: {unknown:?}");
        let mut again = 0;
        for (id, deliveries) in &t.deliveries {
            let distinct: HashSet<&String> = deliveries.iter().collect();
            assert_eq!(
                distinct.len(),
                1,
                "document {id} reached B through {} deliveries: {deliveries:?}",
                distinct.len()
            );
            again += deliveries.len() - 1;
        }
        // A delivery comes again only when its acknowledgement was lost: a
        // stream cut while the document was on its way (a kill, a restart)
        // hands over what it held to the agency's next stream. A handful
        // per failure; hundreds means two streams are handed the same
        // deliveries.
        assert!(
            again <= 100,
            "B got {again} deliveries twice: its two streams (one per replica) were handed the same deliveries"
        );

        // C reads its queue: each document, in order per sender.
        let mut expected_c: HashMap<String, Vec<String>> = HashMap::new();
        for s in &sent_grpc {
            expected_c.entry(s.from.clone()).or_default().push(s.message_id.clone());
        }
        for ((from, to), ids) in &sent_amqp {
            if to == C {
                expected_c.entry(from.clone()).or_default().extend(ids.iter().cloned());
            }
        }
        let queue_repeats = queue_holds_each_in_order(&cluster, C, &expected_c).await;

        // The gateway's own records.
        let rows = first
            .sql_rows(
                "SELECT m.sender, m.message_id, d.recipient, d.state, count(*) AS n \
                 FROM deliveries d JOIN messages m ON m.id = d.message_pk \
                 WHERE m.kind = 'document' \
                 GROUP BY m.sender, m.message_id, d.recipient, d.state",
            )
            .await;
        let mut per_recipient: HashMap<(String, String), usize> = HashMap::new();
        for r in &rows {
            let (id, to) = (r.get::<String>("message_id"), r.get::<String>("recipient"));
            let n = r.get::<i64>("n") as usize;
            *per_recipient.entry((id.clone(), to.clone())).or_default() += n;
            if to == B {
                assert_eq!(r.get::<String>("state"), "acked", "{id} to B: {r:?}");
            }
        }
        let twice: Vec<_> = per_recipient.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "a recipient with several deliveries of one document: {twice:?}");
        let documents = first
            .sql_rows("SELECT count(*) AS n FROM messages WHERE kind = 'document'")
            .await[0]
            .get::<i64>("n") as usize;
        let amqp_total: usize = sent_amqp.values().map(Vec::len).sum();
        assert_eq!(
            documents,
            sent_grpc.len() + amqp_total,
            "documents kept against documents sent (every one with a receipt)"
        );
        for s in &sent_grpc {
            assert!(
                per_recipient.contains_key(&(s.message_id.clone(), C.to_owned())),
                "{} has a receipt but no delivery to C",
                s.message_id
            );
        }

        // The deadline check ran on one replica at a time: one overdue
        // line per late recipient, whichever replica held the job.
        let late: Vec<&Sent> = sent_grpc.iter().filter(|s| s.overdue).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let lines = loop {
            let lines = first
                .sql_rows(
                    "SELECT message_id, recipient, count(*) AS n FROM events \
                     WHERE kind = 'overdue' GROUP BY message_id, recipient",
                )
                .await;
            if lines.len() >= late.len() * 2 || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let late_ids: HashSet<&str> = late.iter().map(|s| s.message_id.as_str()).collect();
        for r in &lines {
            let id = r.get::<String>("message_id");
            assert!(late_ids.contains(id.as_str()), "an overdue line for {id}, which had no deadline");
            assert_eq!(r.get::<i64>("n"), 1, "overdue lines for {id}: {r:?}");
        }
        assert_eq!(
            lines.len(),
            late.len() * 2,
            "late recipients with their overdue line (two per late document)"
        );

        let verify = second.run_cli(&["log", "verify"]).await;
        assert!(verify.status.success(), "{}", describe_output(&verify));

        format!(
            "{} documents over gRPC, {amqp_total} over the broker; B got {again} deliveries again \
             (an acknowledgement lost with a replica), C's queue held {queue_repeats} copies twice \
             (published, not yet confirmed, when the relay's replica was killed); retried answers: {:?}, \
             of which {} had been accepted (the original receipt came back, marked duplicate)",
            sent_grpc.len(),
            t.retried,
            t.duplicates
        )
    })
    .await;
    eprintln!("{report}");
    for gw in [&mut second, &mut first] {
        let status = tokio::task::block_in_place(|| gw.stop()).expect("running");
        assert!(
            status.success(),
            "{} did not stop cleanly: {status}",
            gw.name
        );
    }
    drop(second);
    drop(first);
    drop(cluster);
}

struct Sent {
    from: String,
    message_id: String,
    overdue: bool,
}

/// Agency software sending one document after another, paced over
/// `traffic`, alternating between the replicas; an answer that says "try
/// again" (the replica is stopping, gone or not reachable) sends the same
/// signed envelope to the other replica, as long as it takes.
async fn send_all(
    replicas: [Agency; 2],
    n: usize,
    t0: Instant,
    traffic: Duration,
    tally: Arc<Mutex<Tally>>,
) -> Vec<Sent> {
    let every = traffic / n.max(1) as u32;
    let mut sent = Vec::with_capacity(n);
    for k in 0..n {
        tokio::time::sleep_until(t0 + every * k as u32).await;
        let agency = &replicas[0];
        let mut draft = agency.draft_document(&[B, C], &format!("Công văn số {k}"), &[]);
        let overdue = k % OVERDUE_EVERY == OVERDUE_EVERY / 2;
        if overdue {
            draft.document_mut().due_date = "2026-01-05".into();
        }
        let signed = agency.sign(&draft.envelope);
        let mut target = k % 2;
        let give_up = Instant::now() + Duration::from_secs(120);
        loop {
            match replicas[target]
                .send_signed(signed.clone(), Vec::new())
                .await
            {
                Ok(receipt) => {
                    assert_eq!(receipt.message_id, draft.envelope.message_id);
                    if receipt.duplicate {
                        tally.lock().unwrap().duplicates += 1;
                    }
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) =>
                {
                    *tally
                        .lock()
                        .unwrap()
                        .retried
                        .entry(format!("{:?}", s.code()))
                        .or_default() += 1;
                    assert!(
                        Instant::now() < give_up,
                        "document {k} of {}: no replica accepted it in 120 s; last: {s:?}",
                        agency.organ_id
                    );
                    target = 1 - target;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => panic!("document {k} of {} refused: {s:?}", agency.organ_id),
            }
        }
        sent.push(Sent {
            from: agency.organ_id.clone(),
            message_id: draft.envelope.message_id.clone(),
            overdue,
        });
    }
    sent
}

/// B's software on one replica: follows its inbox, acknowledges each
/// delivery, connects again whenever the stream ends.
async fn follow(b: Agency, tally: Arc<Mutex<Tally>>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let mut stream = match b.follow().await {
            Ok(s) => s,
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = stop.wait_for(|s| *s) => return,
            };
            let d = match item {
                Some(Ok(d)) => d,
                _ => break,
            };
            // A maintenance notice has no envelope.
            let Some(env) = d.envelope.as_ref() else {
                continue;
            };
            let id = decode_envelope(env).message_id;
            tally
                .lock()
                .unwrap()
                .deliveries
                .entry(id)
                .or_default()
                .push(d.delivery_id.clone());
            // A lost acknowledgement is no loss: the delivery comes again.
            let _ = b.ack(&d.delivery_id).await;
        }
    }
}

/// Documents of the other province (X, Y) to B and C, signed, as
/// (sender, recipient, message id, body).
fn province_documents(gw: &TestGateway, n: usize) -> Vec<(String, String, String, Vec<u8>)> {
    let agencies = [gw.agency(X), gw.agency(Y)];
    (0..n)
        .map(|i| {
            let from = &agencies[i % 2];
            let to = [B, C][(i / 2) % 2];
            let draft = from.draft_document(&[to], &format!("Văn bản liên tỉnh số {i}"), &[]);
            let id = draft.envelope.message_id.clone();
            let body = from.sign(&draft.envelope).encode_to_vec();
            (from.organ_id.clone(), to.to_owned(), id, body)
        })
        .collect()
}

/// Reads `reader`'s queue until every expected document has come and
/// nothing more for 3 s; asserts each sender's documents came in the order
/// sent (a copy published again after a kill may follow later: the agency
/// drops it by its message id). Returns how many copies came twice.
async fn queue_holds_each_in_order(
    cluster: &RabbitCluster,
    reader: &str,
    expected: &HashMap<String, Vec<String>>,
) -> usize {
    let client = Client::connect_url(&cluster.url(2)).await;
    let ch = client.conn.create_channel().await.expect("channel");
    let queue = format!("lienthong.agency.{reader}");
    let mut consumer = amqp::consumer(&ch, &queue, "chaos").await.expect("consume");
    let want: usize = expected.values().map(Vec::len).sum();
    let mut seen = HashSet::new();
    let mut first_seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut repeats = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let until = if seen.len() < want {
            deadline
        } else {
            Instant::now() + Duration::from_secs(3)
        };
        match tokio::time::timeout_at(until, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                let env = envelope_of_body(&d.data);
                if seen.insert(env.message_id.clone()) {
                    first_seen.entry(env.from).or_default().push(env.message_id);
                } else {
                    repeats += 1;
                }
            }
            _ => break,
        }
    }
    let _ = ch.close(200, "done".into()).await;
    for (from, ids) in expected {
        let got = first_seen.get(from).cloned().unwrap_or_default();
        let missing = ids.iter().filter(|id| !seen.contains(*id)).count();
        assert_eq!(
            missing, 0,
            "{missing} documents of {from} never reached {queue}"
        );
        assert!(
            got == *ids,
            "{queue}: the documents of {from} came out of order"
        );
    }
    repeats
}
