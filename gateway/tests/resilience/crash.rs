//! Nothing acknowledged is lost: A sends to B in a loop while the gateway is
//! killed with SIGKILL; after a restart every message that got a receipt is
//! in B's inbox exactly once, with its attachment intact; after B acks them
//! all and the gateway restarts again, the inbox is empty.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lienthong_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sqlite() {
    on(Backend::Sqlite, "crash_sqlite", "the crash scenario", crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres() {
    on(
        Backend::Postgres,
        "crash_postgres",
        "the crash scenario",
        crash,
    )
    .await;
}

/// A scenario on a gateway of its own, within five minutes.
async fn on(
    backend: Backend,
    name: &str,
    what: &str,
    scenario: impl AsyncFnOnce(&mut TestGateway),
) {
    let Some(mut gw) = TestGateway::start(name, backend).await else {
        return;
    };
    within(Duration::from_secs(300), what, scenario(&mut gw)).await;
}

/// Sends in flight fail once the gateway is killed; the loops stop
/// shortly after.
async fn stop_senders(stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<()>>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        within(Duration::from_secs(60), "the sender tasks", t)
            .await
            .unwrap();
    }
}

#[derive(Default)]
struct Log {
    /// message_id → attachment (size, sha256), for every Send that got a receipt.
    receipted: Vec<(String, (u64, [u8; 32]))>,
    /// Sends that failed (after the kill, or in flight when it happened).
    failed: Vec<String>,
    attempted: usize,
    /// Sends that started before the kill and failed: cut mid-stream.
    interrupted: usize,
}

async fn crash(gw: &mut TestGateway) {
    let a = gw.agency(A);
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));

    // Two senders, so that a Send is almost surely in flight at the kill.
    let mut tasks = Vec::new();
    for lane in 0..2u64 {
        let a = a.clone();
        let log = log.clone();
        let stop = stop.clone();
        let killed = killed.clone();
        let in_flight = in_flight.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let seed = lane << 32 | i;
                // 64 KiB .. 448 KiB, so some sends span several chunks.
                let size = 64 * 1024 * (1 + (i % 7));
                let att = AttachmentSpec::generated(&format!("phu-luc-{lane}-{i}.bin"), size, seed);
                let draft =
                    a.draft_document(&[B], &format!("Văn bản số {i} (luồng {lane})"), &[att]);
                log.lock().unwrap().attempted += 1;
                let started_alive = !killed.load(Ordering::SeqCst);
                let (size, sha) = {
                    let r = &draft.document().attachments[0];
                    (r.size, <[u8; 32]>::try_from(&r.sha256[..]).unwrap())
                };
                in_flight.fetch_add(1, Ordering::SeqCst);
                let result = a.send_draft(&draft).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(sent) => {
                        assert_eq!(sent.receipt.message_id, draft.envelope.message_id);
                        log.lock()
                            .unwrap()
                            .receipted
                            .push((draft.envelope.message_id.clone(), (size, sha)));
                    }
                    Err(s) => {
                        if started_alive {
                            log.lock().unwrap().interrupted += 1;
                        }
                        log.lock().unwrap().failed.push(format!(
                            "{}: {:?} {}",
                            draft.envelope.message_id,
                            s.code(),
                            s.message()
                        ));
                        // The gateway is gone: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }

    // Let some sends succeed, then kill the gateway mid-stream.
    let t0 = Instant::now();
    loop {
        let n = log.lock().unwrap().receipted.len();
        if n >= 6 && t0.elapsed() >= Duration::from_millis(1200) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "only {n} sends got a receipt in 60 s; failures: {:?}",
            log.lock().unwrap().failed
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One upload held open across the kill: its envelope and first chunk
    // are sent, the rest only after the kill. The loop's sends may all
    // finish between the check below and the kill; this one cannot.
    let held_spec = AttachmentSpec::generated("phu-luc-giu.bin", 3 * CHUNK as u64, 0xdead);
    let held = a.draft_document(
        &[B],
        "Văn bản bị cắt giữa chừng",
        std::slice::from_ref(&held_spec),
    );
    let (held_tx, held_rx) = tokio::sync::mpsc::channel::<v1::SendRequest>(1);
    let mut held_chunks = held_spec.chunks();
    let held_call =
        tokio::spawn(a.send_stream(tokio_stream::wrappers::ReceiverStream::new(held_rx)));
    held_tx
        .send(v1::SendRequest {
            item: Some(v1::send_request::Item::Envelope(a.sign(&held.envelope))),
        })
        .await
        .unwrap();
    held_tx
        .send(chunk_request(held_chunks.next().unwrap()))
        .await
        .unwrap();
    // Room in the channel again: the call took the first chunk, so it is on
    // its way to the gateway, not waiting for a connection.
    drop(held_tx.reserve().await.unwrap());
    // Kill while a Send is under way.
    while in_flight.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before_kill = log.lock().unwrap().receipted.len();
    killed.store(true, Ordering::SeqCst);
    gw.kill_9().expect("the gateway was running");
    let killed_at = Instant::now();
    // The rest of the held upload: a gateway still alive would accept it.
    for data in held_chunks {
        if held_tx.send(chunk_request(data)).await.is_err() {
            break;
        }
    }
    drop(held_tx);
    let held_id = held.envelope.message_id.clone();
    match within(Duration::from_secs(60), "the held upload", held_call)
        .await
        .unwrap()
    {
        Ok(receipt) => panic!(
            "the upload held open across the kill got a receipt ({}): the gateway was not killed mid-stream",
            receipt.message_id
        ),
        Err(s) => {
            let mut log = log.lock().unwrap();
            log.interrupted += 1;
            log.failed
                .push(format!("{held_id}: {:?} {}", s.code(), s.message()));
        }
    }
    stop_senders(&stop, tasks).await;
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(
        log.receipted.len() >= before_kill,
        "receipts vanished from the log (test bug)"
    );
    eprintln!(
        "crash: {} sends attempted, {} receipted, {} failed ({} cut mid-way by the kill); killed after {:?}",
        log.attempted,
        log.receipted.len(),
        log.failed.len(),
        log.interrupted,
        killed_at - t0
    );
    assert!(
        log.interrupted >= 1,
        "no send that started before the kill was cut by it: the kill did not come mid-stream"
    );

    // --- restart; every receipted message is in B's inbox exactly once -------
    gw.restart().await;
    let b = gw.agency(B);
    let inbox = b
        .receive_all(0)
        .await
        .unwrap_or_else(|s| panic!("B: Receive after restart: {s:?}"));
    let ids: Vec<&str> = inbox.iter().map(|d| d.delivery_id.as_str()).collect();
    let dup_deliveries: Vec<_> = counts(ids.iter().copied())
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        dup_deliveries.is_empty(),
        "one Receive returned the same delivery more than once: {dup_deliveries:?}"
    );
    let messages: Vec<String> = inbox
        .iter()
        .map(|d| {
            decode_envelope(d.envelope.as_ref().expect("delivery without envelope")).message_id
        })
        .collect();
    let per_message = counts(messages.iter().map(String::as_str));
    let twice: Vec<_> = per_message.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "messages delivered more than once in one Receive: {twice:?}"
    );
    let lost: Vec<&str> = log
        .receipted
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !per_message.contains_key(id))
        .collect();
    assert!(
        !per_message.contains_key(held_id.as_str()),
        "the upload cut before its attachment was whole is in B's inbox"
    );
    assert!(
        lost.is_empty(),
        "{} of {} messages that got a receipt are missing from B's inbox after SIGKILL + restart: {lost:?}",
        lost.len(),
        log.receipted.len()
    );
    // Anything else in the inbox must be one of A's attempts (accepted but
    // the receipt was lost in the kill), never something unknown.
    let attempted_ok: HashSet<&str> = log
        .receipted
        .iter()
        .map(|(id, _)| id.as_str())
        .chain(log.failed.iter().map(|f| f.split(':').next().unwrap()))
        .collect();
    for m in &messages {
        assert!(
            attempted_ok.contains(m.as_str()),
            "B's inbox holds a message A never sent: {m}"
        );
    }
    for d in &inbox {
        let env = decode_envelope(d.envelope.as_ref().unwrap());
        assert_eq!(env.from, A);
        assert!(
            d.verification
                .as_ref()
                .is_some_and(|v| v.attachments_verified),
            "delivery {} after restart: attachments not verified: {:?}",
            d.delivery_id,
            d.verification
        );
    }

    // Attachments of receipted messages are intact.
    let want: HashMap<&str, (u64, [u8; 32])> = log
        .receipted
        .iter()
        .map(|(id, dg)| (id.as_str(), *dg))
        .collect();
    for (id, (size, sha)) in &want {
        let got = heeding_limits(|| b.fetch_attachment_sha256(id, A, 0))
            .await
            .unwrap_or_else(|s| panic!("FetchAttachment({id}) after restart: {s:?}"));
        assert_eq!(
            (got.0, hex::encode(got.1)),
            (*size, hex::encode(sha)),
            "attachment of {id} after restart differs from what A sent"
        );
    }

    // --- B acks everything; after another restart the inbox is empty -------
    for d in &inbox {
        heeding_limits(|| b.ack(&d.delivery_id))
            .await
            .unwrap_or_else(|s| panic!("Ack {}: {s:?}", d.delivery_id));
    }
    gw.restart().await;
    let b = gw.agency(B);
    let left = b.receive_all(0).await.unwrap();
    assert!(
        left.is_empty(),
        "B acknowledged everything, yet after a restart Receive gives {} deliveries again: {:?}",
        left.len(),
        left.iter()
            .map(|d| decode_envelope(d.envelope.as_ref().unwrap()).message_id)
            .collect::<Vec<_>>()
    );
}

fn chunk_request(data: prost::bytes::Bytes) -> v1::SendRequest {
    v1::SendRequest {
        item: Some(v1::send_request::Item::Chunk(v1::AttachmentChunk {
            index: 0,
            data,
        })),
    }
}

/// SIGKILL while many small sends share group commits: after a restart,
/// every receipt a sender got is a document in B's inbox, and nothing is
/// there that was sent after the kill. Each send that failed is then sent
/// again with the very same signed bytes: one that had committed before the
/// kill is answered as a repeat with its first receipt, the others are
/// accepted now, and B ends with every document exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_a_group_commit_sqlite() {
    on(
        Backend::Sqlite,
        "crash_group_sqlite",
        "the group-commit crash scenario",
        crash_in_group_commit,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_a_group_commit_postgres() {
    on(
        Backend::Postgres,
        "crash_group_postgres",
        "the group-commit crash scenario",
        crash_in_group_commit,
    )
    .await;
}

/// One send of the group-commit scenario.
struct Sent {
    signed: v1::SignedEnvelope,
    message_id: String,
    /// The gateway had been killed when the send began.
    after_kill: bool,
    receipt: Option<v1::SendReceipt>,
}

async fn crash_in_group_commit(gw: &mut TestGateway) {
    const SENDERS: usize = 24;
    let a = gw.agency(A);
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for lane in 0..SENDERS {
        let (a, sent, stop, killed, in_flight) = (
            a.clone(),
            sent.clone(),
            stop.clone(),
            killed.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let draft = a.draft_document(&[B], &format!("Công văn {i} (luồng {lane})"), &[]);
                let signed = a.sign(&draft.envelope);
                let after_kill = killed.load(Ordering::SeqCst);
                in_flight.fetch_add(1, Ordering::SeqCst);
                let result = a.send_signed(signed.clone(), Vec::new()).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let failed = result.is_err();
                sent.lock().unwrap().push(Sent {
                    signed,
                    message_id: draft.envelope.message_id.clone(),
                    after_kill,
                    receipt: result.ok(),
                });
                if failed {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    // Enough commits to be sure groups form, then kill with sends in flight.
    let t0 = Instant::now();
    loop {
        let receipted = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.receipt.is_some())
            .count();
        if receipted >= 300 && in_flight.load(Ordering::SeqCst) >= SENDERS / 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {receipted} receipts in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    killed.store(true, Ordering::SeqCst);
    gw.kill_9().expect("the gateway was running");
    stop_senders(&stop, tasks).await;
    let mut sent = std::mem::take(&mut *sent.lock().unwrap());
    let cut = sent
        .iter()
        .filter(|s| !s.after_kill && s.receipt.is_none())
        .count();
    eprintln!(
        "group crash: {} sends, {} receipted, {cut} cut by the kill",
        sent.len(),
        sent.iter().filter(|s| s.receipt.is_some()).count()
    );
    assert!(cut >= 1, "no send was under way at the kill");

    gw.restart().await;
    let b = gw.agency(B);
    let delivered = |inbox: &[v1::Delivery]| -> HashMap<String, usize> {
        let ids: Vec<String> = inbox
            .iter()
            .map(|d| {
                decode_envelope(d.envelope.as_ref().expect("delivery without envelope")).message_id
            })
            .collect();
        counts(ids.iter().map(String::as_str))
            .into_iter()
            .map(|(k, n)| (k.to_owned(), n))
            .collect()
    };
    let inbox = b
        .receive_all(0)
        .await
        .expect("B: Receive after the restart");
    let first = delivered(&inbox);
    for s in &sent {
        let n = first.get(&s.message_id).copied().unwrap_or(0);
        if s.receipt.is_some() {
            assert_eq!(
                n, 1,
                "{} got a receipt and is delivered {n} times",
                s.message_id
            );
        } else if s.after_kill {
            assert_eq!(
                n, 0,
                "{} was sent to a dead gateway, yet it is delivered",
                s.message_id
            );
        } else {
            assert!(n <= 1, "{} is delivered {n} times", s.message_id);
        }
    }
    let known: HashSet<&str> = sent.iter().map(|s| s.message_id.as_str()).collect();
    for id in first.keys() {
        assert!(
            known.contains(id.as_str()),
            "B holds a message nobody sent: {id}"
        );
    }

    // Every failed send again, the same bytes: a repeat of what committed
    // before the kill gets its first receipt, the rest are accepted now.
    let mut repeats = 0;
    for s in sent.iter_mut().filter(|s| s.receipt.is_none()) {
        let receipt = a
            .send_signed(s.signed.clone(), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{} sent again: {e:?}", s.message_id));
        let was_delivered = first.contains_key(&s.message_id);
        assert_eq!(
            receipt.duplicate, was_delivered,
            "{}: delivered before it was sent again, so it is a repeat (and only then)",
            s.message_id
        );
        repeats += usize::from(receipt.duplicate);
        s.receipt = Some(receipt);
    }
    eprintln!("group crash: {repeats} of the failed sends had committed before the kill");
    let all = delivered(&b.receive_all(0).await.expect("B: Receive at the end"));
    for s in &sent {
        assert_eq!(
            all.get(&s.message_id).copied(),
            Some(1),
            "{} after every send has its receipt",
            s.message_id
        );
    }
    assert_eq!(all.len(), sent.len(), "B holds exactly what was sent");
}
