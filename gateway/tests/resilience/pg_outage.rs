//! The database goes away under load and comes back: a gateway on a
//! PostgreSQL cluster of the test's own (the machine's server is never
//! stopped), with agencies sending one document after another, while the
//! cluster is stopped twice — at once (`-m immediate`, as a crash or a lost
//! machine does) and cleanly (`-m fast`, as an operator's restart does).
//!
//! While it is down, sends are refused with `UNAVAILABLE` and nothing else,
//! and health says not ready; started again, the gateway serves by itself
//! within seconds. Agency software sends a refused document again with the
//! same bytes; one that had committed after all is answered with its first
//! receipt, marked duplicate. In the end every receipt is one message in
//! the database and one delivery per recipient, handed out and acknowledged
//! once; a document refused while the database was down left nothing; the
//! transfer log verifies.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lienthong_testkit::*;
use tonic::Code;

/// How soon after the cluster accepts connections again every send must
/// succeed and health must say ready.
const BACK_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_outage_refuses_sends_with_unavailable_and_the_gateway_comes_back_by_itself() {
    let Some(cluster) = PgCluster::create_or_skip("pg_outage").await else {
        return;
    };
    let opts = GatewayOptions {
        backend: Backend::Postgres,
        pg_server: Some(cluster.admin_url()),
        ..Default::default()
    };
    let gw = TestGateway::start_with("pg_outage", opts)
        .await
        .expect("a gateway on the test's own cluster");
    within(
        Duration::from_secs(420),
        "the PostgreSQL outage scenario",
        outages(&gw, &cluster),
    )
    .await;
    // The gateway and its database go before the cluster.
    drop(gw);
    drop(cluster);
}

/// One call of `Send`.
#[derive(Clone, Debug)]
struct Attempt {
    began: Instant,
    ended: Instant,
    /// Wall-clock bounds, to place a receipt's `accepted_at`.
    began_wall: SystemTime,
    ended_wall: SystemTime,
    outcome: Result<v1::SendReceipt, Refusal>,
}

#[derive(Clone, Debug)]
struct Refusal {
    code: Code,
    reason: Option<String>,
    message: String,
}

/// A document one lane sent, and every attempt at it.
#[derive(Clone, Debug)]
struct Doc {
    lane: String,
    from: String,
    to: Vec<String>,
    message_id: String,
    has_attachment: bool,
    /// The sender's software sends again what was refused `UNAVAILABLE`.
    sends_again: bool,
    /// It did, for this document.
    retried_by_sender: bool,
    attempts: Vec<Attempt>,
}

impl Doc {
    fn receipt(&self) -> Option<&v1::SendReceipt> {
        self.attempts.iter().find_map(|a| a.outcome.as_ref().ok())
    }
}

/// When the cluster was stopped and started again.
#[derive(Clone, Copy, Debug)]
struct Outage {
    mode: StopMode,
    stop_began: Instant,
    /// The server had exited: nothing can commit from here to `start_began`.
    stop_done: Instant,
    start_began: Instant,
    /// The server accepts connections again.
    start_done: Instant,
}

/// What a health check answered (ready or not, and what it said), and when
/// the answer came.
#[derive(Clone, Debug)]
struct Probe {
    at: Instant,
    ready: Result<(), String>,
}

#[derive(Default)]
struct Shared {
    /// Documents still being sent, by lane.
    current: HashMap<String, Doc>,
    done: Vec<Doc>,
    /// HTTP `/health/ready`.
    http: Vec<Probe>,
    /// gRPC `grpc.health.v1.Health/Check("")`.
    grpc: Vec<Probe>,
}

impl Shared {
    fn all_attempts(&self) -> impl Iterator<Item = (&Doc, &Attempt)> {
        self.done
            .iter()
            .chain(self.current.values())
            .flat_map(|d| d.attempts.iter().map(move |a| (d, a)))
    }

    /// Successful sends per lane that began after `t`.
    fn successes_since(&self, t: Instant) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for (d, a) in self.all_attempts() {
            if a.outcome.is_ok() && a.began >= t {
                *n.entry(d.lane.clone()).or_insert(0) += 1;
            }
        }
        n
    }
}

/// The lanes: each of A, B and C has two clerks sending one document after
/// another, to one recipient and to two; PROVINCE's software does not send
/// again what was refused, so its refusals show what a refusal leaves.
fn lanes() -> Vec<(&'static str, Vec<&'static str>, bool)> {
    vec![
        (A, vec![B], true),
        (A, vec![B, C], true),
        (B, vec![C], true),
        (B, vec![A, C], true),
        (C, vec![A], true),
        (C, vec![A, B], true),
        (PROVINCE, vec![A], false),
    ]
}

async fn outages(gw: &TestGateway, cluster: &PgCluster) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let lanes = lanes();
    let lane_names: Vec<String> = (0..lanes.len()).map(|i| format!("lane-{i}")).collect();
    let mut tasks = Vec::new();
    for (i, (from, to, retries)) in lanes.into_iter().enumerate() {
        tasks.push(tokio::spawn(lane(
            lane_names[i].clone(),
            gw.agency(from),
            to,
            retries,
            shared.clone(),
            stop.clone(),
        )));
    }
    let http = gw.http_addr.expect("the gateway serves HTTP");
    let grpc = gw.grpc_addr;
    let probers = [
        tokio::spawn(probe(
            shared.clone(),
            stop.clone(),
            |s| &mut s.http,
            move || async move {
                // A ready check waits for a database connection as long as a
                // request does (the pool's acquire timeout) before it says no.
                let a = within(
                    Duration::from_secs(60),
                    "GET /health/ready",
                    http_request(http, "GET", "/health/ready", &[], b""),
                )
                .await;
                match a.status {
                    200 => Ok(()),
                    status => Err(format!("{status} {}", a.text())),
                }
            },
        )),
        tokio::spawn(probe(
            shared.clone(),
            stop.clone(),
            |s| &mut s.grpc,
            move || async move {
                let ep = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10));
                health_serving(ep).await
            },
        )),
    ];

    let t0 = Instant::now();
    wait_for_successes(&shared, &lane_names, t0, "before the first outage").await;

    let mut windows = Vec::new();
    for mode in [StopMode::Immediate, StopMode::Fast] {
        windows.push(outage(cluster, mode, &shared, &lane_names).await);
    }

    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within(Duration::from_secs(90), "the senders' last documents", t)
            .await
            .expect("a sender panicked");
    }
    for p in probers {
        within(Duration::from_secs(90), "the health probes", p)
            .await
            .expect("a health probe panicked");
    }
    let docs = std::mem::take(&mut shared.lock().unwrap().done);
    check_answers(&docs, &windows);
    check_stored_and_delivered(gw, &docs, &windows).await;

    let verify = gw.run_cli(&["log", "verify"]).await;
    assert!(
        verify.status.success(),
        "`lienthong log verify` after the outages:\n{}",
        describe_output(&verify)
    );
    let refused = docs
        .iter()
        .flat_map(|d| &d.attempts)
        .filter(|a| a.outcome.is_err())
        .count();
    eprintln!(
        "pg_outage: {} documents, {} sends, {refused} refused with UNAVAILABLE, {} repeats \
         answered as duplicates; outages (stopped → started): {}",
        docs.len(),
        docs.iter().map(|d| d.attempts.len()).sum::<usize>(),
        docs.iter()
            .filter(|d| d.receipt().is_some_and(|r| r.duplicate))
            .count(),
        windows
            .iter()
            .map(|w| format!("{:?} {:?}", w.mode, w.start_done - w.stop_began))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// One clerk's software: a document, sent until it has a receipt (again
/// with the very same bytes after `UNAVAILABLE` when `retries`), then the
/// next, until told to stop.
async fn lane(
    name: String,
    agency: Agency,
    to: Vec<&'static str>,
    retries: bool,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        // A small attachment on every third document: its bytes go to the
        // attachment store before the database's transaction.
        let attachments = if i.is_multiple_of(3) {
            vec![AttachmentSpec::generated(
                &format!("phu-luc-{name}-{i}.bin"),
                3 * 1024,
                i,
            )]
        } else {
            Vec::new()
        };
        let draft = agency.draft_document(&to, &format!("Công văn {i} ({name})"), &attachments);
        let signed = agency.sign(&draft.envelope);
        let message_id = draft.envelope.message_id.clone();
        shared.lock().unwrap().current.insert(
            name.clone(),
            Doc {
                lane: name.clone(),
                from: agency.organ_id.clone(),
                to: to.iter().map(|s| s.to_string()).collect(),
                message_id: message_id.clone(),
                has_attachment: !attachments.is_empty(),
                sends_again: retries,
                retried_by_sender: false,
                attempts: Vec::new(),
            },
        );
        loop {
            let (began, began_wall) = (Instant::now(), SystemTime::now());
            let result = agency
                .send_with_attachments(signed.clone(), &attachments)
                .await;
            let (ended, ended_wall) = (Instant::now(), SystemTime::now());
            let again = matches!(&result, Err(s) if retries && s.code() == Code::Unavailable);
            let outcome = result.map_err(|s| Refusal {
                code: s.code(),
                reason: reason_of(&s),
                message: s.message().to_owned(),
            });
            {
                let mut sh = shared.lock().unwrap();
                let doc = sh.current.get_mut(&name).expect("the lane's document");
                doc.retried_by_sender |= doc.attempts.last().is_some_and(|a| a.outcome.is_err());
                doc.attempts.push(Attempt {
                    began,
                    ended,
                    began_wall,
                    ended_wall,
                    outcome,
                });
            }
            if !again {
                break;
            }
            // As agency software does: a moment, then the same bytes again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let refused = {
            let mut sh = shared.lock().unwrap();
            let doc = sh.current.remove(&name).expect("the lane's document");
            let refused = doc.receipt().is_none();
            sh.done.push(doc);
            refused
        };
        // A clerk's next document comes a moment later; after a refusal
        // that was not sent again, a while later.
        let pause = if refused { 200 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Runs a health check over and over until told to stop, keeping its
/// answers in `into`.
async fn probe<F, Fut>(
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    into: fn(&mut Shared) -> &mut Vec<Probe>,
    check: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    while !stop.load(Ordering::SeqCst) {
        let ready = check().await;
        into(&mut shared.lock().unwrap()).push(Probe {
            at: Instant::now(),
            ready,
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When the first of `probes` after `t` answered `ready` (or not).
fn first_probe(probes: &[Probe], t: Instant, ready: bool) -> Option<Instant> {
    probes
        .iter()
        .find(|p| p.at >= t && p.ready.is_ok() == ready)
        .map(|p| p.at)
}

/// Waits until every lane has had three sends succeed that began after `t`.
async fn wait_for_successes(shared: &Mutex<Shared>, lanes: &[String], t: Instant, when: &str) {
    let limit = Duration::from_secs(90);
    let deadline = Instant::now() + limit;
    loop {
        let ok = shared.lock().unwrap().successes_since(t);
        if lanes.iter().all(|l| ok.get(l).copied().unwrap_or(0) >= 3) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: not every lane had three sends succeed within {limit:?}: {ok:?}; last \
             refusals: {:?}",
            last_refusals(shared)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn last_refusals(shared: &Mutex<Shared>) -> Vec<String> {
    let sh = shared.lock().unwrap();
    let mut r: Vec<(Instant, String)> = sh
        .all_attempts()
        .filter_map(|(d, a)| {
            let e = a.outcome.as_ref().err()?;
            Some((
                a.ended,
                format!("{} {}: {:?} {}", d.lane, d.message_id, e.code, e.message),
            ))
        })
        .collect();
    r.sort_by_key(|(t, _)| *t);
    r.into_iter().rev().take(5).map(|(_, s)| s).collect()
}

/// Stops the cluster, keeps it down until a send that began after the stop
/// was refused and both health checks said not ready, starts it, and waits
/// until every lane succeeds again and both health checks say ready.
async fn outage(
    cluster: &PgCluster,
    mode: StopMode,
    shared: &Mutex<Shared>,
    lanes: &[String],
) -> Outage {
    let stop_began = Instant::now();
    cluster.stop(mode).await;
    let stop_done = Instant::now();

    // Down long enough to see each way the gateway tells of it. A refusal
    // takes a while: the gateway waits for a connection, then for one to
    // log the refusal with.
    let limit = Duration::from_secs(120);
    let (refused_at, http_down_at, grpc_down_at) = loop {
        let seen = {
            let sh = shared.lock().unwrap();
            let refused = sh
                .all_attempts()
                .filter(|(_, a)| a.began >= stop_done && a.outcome.is_err())
                .map(|(_, a)| a.ended)
                .min();
            (
                refused,
                first_probe(&sh.http, stop_done, false),
                first_probe(&sh.grpc, stop_done, false),
            )
        };
        let down_for = stop_done.elapsed();
        if let (Some(r), Some(h), Some(g)) = seen
            && down_for >= Duration::from_secs(3)
        {
            break (r - stop_done, h - stop_done, g - stop_done);
        }
        assert!(
            down_for < limit,
            "{mode:?} stop: {limit:?} after the database went down, the first refusal of a \
             send begun after it, the first not-ready answers of /health/ready and of gRPC \
             health came after (None: not yet): {:?}",
            (
                seen.0.map(|t| t - stop_done),
                seen.1.map(|t| t - stop_done),
                seen.2.map(|t| t - stop_done)
            )
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let start_began = Instant::now();
    cluster.start().await;
    let start_done = Instant::now();
    wait_for_successes(
        shared,
        lanes,
        start_done,
        &format!("after the {mode:?} outage"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready_at = loop {
        let (http, grpc) = {
            let sh = shared.lock().unwrap();
            (
                first_probe(&sh.http, start_done, true),
                first_probe(&sh.grpc, start_done, true),
            )
        };
        if let (Some(h), Some(g)) = (http, grpc) {
            break h.max(g);
        }
        assert!(
            Instant::now() < deadline,
            "after the {mode:?} outage: a minute after the database's return, /health/ready \
             said ready: {}, gRPC health said serving: {}; last answers: {:?}",
            http.is_some(),
            grpc.is_some(),
            {
                let sh = shared.lock().unwrap();
                (sh.http.last().cloned(), sh.grpc.last().cloned())
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // An answer that said ready may have been asked before the start: it
    // counts from when it came.
    assert!(
        ready_at - start_done <= BACK_WITHIN,
        "after the {mode:?} outage, health said ready only {:?} after the database was back",
        ready_at - start_done
    );
    eprintln!(
        "pg_outage: {mode:?} stop took {:?}; down {:?}: first refusal of a send begun during \
         it after {refused_at:?}, /health/ready not ready after {http_down_at:?}, gRPC health \
         not serving after {grpc_down_at:?}; start took {:?}; ready {:?} after",
        stop_done - stop_began,
        start_began - stop_done,
        start_done - start_began,
        ready_at - start_done
    );
    Outage {
        mode,
        stop_began,
        stop_done,
        start_began,
        start_done,
    }
}

/// Timestamp → microseconds since the Unix epoch.
fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn wall_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

/// What the senders were answered: only receipts and `UNAVAILABLE`, the
/// refusals only while the database was away, at least one refusal per
/// outage, every sender that sends again getting its receipt, and each
/// receipt's acceptance within the very call that committed it.
fn check_answers(docs: &[Doc], windows: &[Outage]) {
    let mut wrong = Vec::new();
    let mut misplaced = Vec::new();
    for d in docs {
        for a in &d.attempts {
            let Err(e) = &a.outcome else { continue };
            if e.code != Code::Unavailable || e.reason.as_deref() != Some("UNAVAILABLE") {
                wrong.push(format!("{} {}: {e:?}", d.lane, d.message_id));
            }
            // A call under way when the database went, or begun before the
            // gateway served again.
            let near = windows
                .iter()
                .any(|w| a.ended >= w.stop_began && a.began <= w.start_done + BACK_WITHIN);
            if !near {
                misplaced.push(format!("{} {}: {e:?}", d.lane, d.message_id));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "sends were refused with something else than UNAVAILABLE (reason UNAVAILABLE): {wrong:#?}"
    );
    assert!(
        misplaced.is_empty(),
        "sends were refused while the database was up: {misplaced:#?}"
    );
    for (i, w) in windows.iter().enumerate() {
        let next_stop = windows.get(i + 1).map(|n| n.stop_began);
        let refused_inside = docs
            .iter()
            .flat_map(|d| &d.attempts)
            .filter(|a| a.outcome.is_err() && a.began >= w.stop_done && a.ended <= w.start_began)
            .count();
        assert!(
            refused_inside >= 1,
            "{:?} outage: no send begun and refused while the database was down",
            w.mode
        );
        // Back by itself: the refusals of this outage ended soon after it.
        let last_refusal = docs
            .iter()
            .flat_map(|d| &d.attempts)
            .filter(|a| a.outcome.is_err() && a.ended >= w.stop_began)
            .filter(|a| next_stop.is_none_or(|n| a.ended < n))
            .map(|a| a.ended)
            .max();
        if let Some(last) = last_refusal {
            assert!(
                last <= w.start_done + BACK_WITHIN,
                "{:?} outage: a send was still refused {:?} after the database was back",
                w.mode,
                last - w.start_done
            );
        }
    }

    for d in docs {
        let oks: Vec<&Attempt> = d.attempts.iter().filter(|a| a.outcome.is_ok()).collect();
        assert!(
            oks.len() <= 1,
            "{} was accepted by {} calls",
            d.message_id,
            oks.len()
        );
        let Some(ok) = oks.first() else {
            // Only software that does not send again ends without a receipt.
            assert!(
                !d.sends_again && d.attempts.len() == 1,
                "{} ({}) has no receipt: {:?}",
                d.message_id,
                d.lane,
                d.attempts
            );
            continue;
        };
        let receipt = ok.outcome.as_ref().unwrap();
        assert_eq!(receipt.message_id, d.message_id);
        assert_eq!(receipt.from, d.from);
        let accepted = micros(receipt.accepted_at.as_ref().expect("accepted_at"));
        // The committing call is the one during which the gateway stamped
        // the acceptance: this one, or (a repeat) an earlier refused one.
        let within_call = |a: &Attempt| {
            wall_micros(a.began_wall) <= accepted && accepted <= wall_micros(a.ended_wall)
        };
        if receipt.duplicate {
            let committed_by = d
                .attempts
                .iter()
                .take_while(|a| a.outcome.is_err())
                .find(|a| within_call(a));
            let committed_by = committed_by.unwrap_or_else(|| {
                panic!(
                    "{} was answered as a repeat, but no earlier call of its sender was under \
                     way when it was accepted (accepted_at {accepted}): {:?}",
                    d.message_id, d.attempts
                )
            });
            // Refused, yet committed: only a call the outage cut mid-way.
            let cut = windows.iter().any(|w| {
                committed_by.began <= w.stop_done && committed_by.ended >= w.stop_began
                    || committed_by.began <= w.start_done && committed_by.ended >= w.start_began
            });
            assert!(
                cut,
                "{}: a call refused with UNAVAILABLE had committed, though the database was \
                 neither going down nor coming back during it: {committed_by:?}",
                d.message_id
            );
        } else {
            assert!(
                within_call(ok),
                "{}: accepted at {accepted}, outside the call that got the receipt: {ok:?}",
                d.message_id
            );
        }
    }
}

/// What the database holds and the recipients get: each document with a
/// receipt is one message with its receipt's acceptance time and one
/// delivery per recipient; a document refused while the database was down
/// is not there; each recipient is handed each of its documents once and,
/// once it acknowledged them, nothing more.
async fn check_stored_and_delivered(gw: &TestGateway, docs: &[Doc], windows: &[Outage]) {
    let rows = gw
        .sql_rows(
            "SELECT m.sender, m.message_id, m.accepted_at, d.recipient \
             FROM messages m LEFT JOIN deliveries d ON d.message_pk = m.id",
        )
        .await;
    let mut stored: HashMap<(String, String), (i64, Vec<String>)> = HashMap::new();
    for r in &rows {
        let key = (r.get::<String>("sender"), r.get::<String>("message_id"));
        let accepted = r.get::<i64>("accepted_at");
        let e = stored.entry(key).or_insert((accepted, Vec::new()));
        if let Some(to) = r.get::<Option<String>>("recipient") {
            e.1.push(to);
        }
    }
    let rows_per_message = gw
        .sql_rows("SELECT sender, message_id, count(*) AS n FROM messages GROUP BY sender, message_id HAVING count(*) > 1")
        .await;
    assert!(
        rows_per_message.is_empty(),
        "messages stored more than once: {rows_per_message:?}"
    );

    let by_key: HashMap<(String, String), &Doc> = docs
        .iter()
        .map(|d| ((d.from.clone(), d.message_id.clone()), d))
        .collect();
    for key in stored.keys() {
        assert!(
            by_key.contains_key(key),
            "the database holds a message nobody sent: {key:?}"
        );
    }
    let mut expected: HashSet<(String, String)> = HashSet::new();
    for d in docs {
        let key = (d.from.clone(), d.message_id.clone());
        let row = stored.get(&key);
        match (d.receipt(), row) {
            (Some(r), Some((accepted, to))) => {
                assert_eq!(
                    *accepted,
                    micros(r.accepted_at.as_ref().unwrap()),
                    "{}: the receipt is not the stored acceptance",
                    d.message_id
                );
                let mut to = to.clone();
                to.sort();
                let mut want = d.to.clone();
                want.sort();
                assert_eq!(to, want, "{}: deliveries stored", d.message_id);
            }
            (Some(_), None) => panic!(
                "{} ({}) got a receipt but is not in the database: {:?}",
                d.message_id, d.lane, d.attempts
            ),
            (None, Some(_)) => {
                // Committed without an answer: only a call the outage cut.
                let a = &d.attempts[0];
                let cut = windows.iter().any(|w| {
                    a.began <= w.stop_done && a.ended >= w.stop_began
                        || a.began <= w.start_done && a.ended >= w.start_began
                });
                assert!(
                    cut,
                    "{} was refused while the database was down, yet it is stored: {a:?}",
                    d.message_id
                );
            }
            (None, None) => {}
        }
        if row.is_some() {
            for to in &d.to {
                expected.insert((to.clone(), d.message_id.clone()));
            }
        }
    }

    // Each recipient takes its inbox, acknowledging what it got.
    let mut handed: HashMap<(String, String), Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for who in [A, B, C] {
        let agency = gw.agency(who);
        loop {
            let batch = heeding_limits(|| agency.receive_all(0))
                .await
                .unwrap_or_else(|s| panic!("{who}: Receive after the outages: {s:?}"));
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let env = decode_envelope(d.envelope.as_ref().expect("a delivery's envelope"));
                let doc = by_key.get(&(env.from.clone(), env.message_id.clone()));
                let doc = doc.unwrap_or_else(|| {
                    panic!(
                        "{who} was handed {} from {}, which nobody sent",
                        env.message_id, env.from
                    )
                });
                if doc.has_attachment {
                    assert!(
                        d.verification
                            .as_ref()
                            .is_some_and(|v| v.attachments_verified),
                        "{}: attachment not verified: {:?}",
                        env.message_id,
                        d.verification
                    );
                }
                handed
                    .entry((who.to_owned(), env.message_id))
                    .or_default()
                    .push(d.delivery_id.clone());
                heeding_limits(|| agency.ack(&d.delivery_id))
                    .await
                    .unwrap_or_else(|s| panic!("{who}: Ack {}: {s:?}", d.delivery_id));
            }
            assert!(
                Instant::now() < deadline,
                "the recipients' inboxes did not empty within 120 s"
            );
        }
    }
    let twice: Vec<_> = handed.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "documents handed out again after their acknowledgement: {twice:?}"
    );
    let got: HashSet<(String, String)> = handed.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deliveries: {} missing {missing:?}, {} unexpected {extra:?}",
        missing.len(),
        extra.len()
    );
}
