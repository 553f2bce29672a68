//! The reports' acceptance test: generated traffic for a directory of 500
//! agencies goes through the real pipeline in-process (signed envelopes,
//! inboxes, acknowledgements, status notices, refusals); the report's
//! figures must equal counts kept independently while the traffic was made.
//!
//! - `a_generated_day_reports_what_was_sent`: 2,000 documents on SQLite.
//! - `a_generated_month_reports_what_was_sent`: 20,000 documents on
//!   PostgreSQL, in a database of its own (SKIPPED when the server is
//!   unreachable, failing under LIENTHONG_REQUIRE_SERVICES=1). About two
//!   minutes in a debug build: see docs/reports.md for the timings.
//!
//! The traffic is decided first, in one order, by a seeded generator, and
//! the expected figures are counted as it is decided; it is then sent
//! several calls at a time on PostgreSQL, as many agencies' systems would.
//!
//! The month's database commits without waiting for its write-ahead log to
//! reach the disk (`synchronous_commit = off`, set on that database only):
//! every submission, hand-out and acknowledgement is still its own
//! transaction through the same code, but 200,000 fsyncs one after another
//! (each transaction takes the transfer log's head row first, so commits do
//! not overlap) would take most of the time. That durability is what the
//! crash tests check (gateway/tests/resilience/crash.rs), not the report's figures.
//!
//! The pipeline stamps everything "now": the generated month is sent in
//! minutes, so the report covers today, and "without a 03 after N working
//! hours" / "past DueDate" are judged 30 days on.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt as _;

use lienthong_core as lt;
#[path = "../../core/tests/support/world.rs"]
mod world;

use lienthong_reports::{AgencyRow, Latency, Period, ReportSettings, Scope, summary_in};
use lienthong_schema::entity::{delivery, event, message};
use lienthong_store::error::OrDb;
use lt::error::{Reason, Result};
use lt::store::now_micros;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use world::{Doc, World};

const DAY: i64 = 86_400_000_000;

/// A small deterministic generator (no dependency, same traffic each run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// 50 departments and districts (level 2) and 450 bodies under them (level 3).
fn directory() -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(500);
    for d in 1..=50 {
        out.push((
            format!("000.00.{d:02}.H35"),
            format!("Cơ quan cấp 2 số {d}"),
        ));
    }
    for c in 1..=9 {
        for d in 1..=50 {
            out.push((
                format!("000.{c:02}.{d:02}.H35"),
                format!("Đơn vị {c} thuộc cơ quan {d}"),
            ));
        }
    }
    out
}

/// How an agency's software behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Habit {
    /// Takes, acknowledges and answers its documents.
    Diligent,
    /// Takes its documents but never acknowledges them.
    NoAck,
    /// Never takes its documents.
    Absent,
}

#[derive(Default, Clone)]
struct Expected {
    sent: u64,
    received: u64,
    delivered: u64,
    acknowledged: u64,
    refused: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    without_03: u64,
    overdue: u64,
    signature_refused: u64,
    answered_03: u64,
}

struct Pending {
    from: usize,
    document_id: String,
    due: i32,
}

/// How many submissions and inbox drains run at once on PostgreSQL: the
/// database's round trips and commits of one call overlap with the
/// signature checks of the others. (SQLite has one writer at a time and
/// makes the others wait and retry: there the traffic goes one call at a
/// time.)
const PARALLEL: usize = 8;

/// Runs `f` over `items`, up to `parallel` at once on the runtime's
/// threads; the results in the order of `items`.
async fn par<T, R, F, Fut>(parallel: usize, items: Vec<T>, f: F) -> Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R>> + Send + 'static,
{
    let handles = items.into_iter().map(|x| tokio::spawn(f(x)));
    let done: Vec<_> = futures::stream::iter(handles)
        .buffered(parallel.max(1))
        .collect()
        .await;
    done.into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("a traffic task failed: {e}")))
        .collect()
}

/// One generated document, decided before it is sent.
struct Planned {
    from: usize,
    to: Vec<usize>,
    due: i32,
    doc: Doc,
    /// A refused submission from the same agency after it (its kind).
    refusal: Option<u32>,
}

/// How a diligent agency answers one document it received.
struct Answer {
    pending: Pending,
    /// 0..5: 02 refused; 5..85: 03 accepted; the rest: no answer.
    answer: u64,
    /// A 06 after the 03.
    completed: bool,
}

/// Generates `documents` documents (and their statuses, refusals and
/// inbox handling) for the world's agencies, sending them through the
/// pipeline `parallel` calls at a time. Every random decision is drawn in
/// one order first, so the traffic, and the counts kept while it is
/// decided, do not depend on how the concurrent calls interleave.
async fn generate(
    world: &Arc<World>,
    documents: usize,
    seed: u64,
    parallel: usize,
) -> Result<Vec<Expected>> {
    let n = world.agents.len();
    let mut rng = Rng(seed);
    let habits: Vec<Habit> = (0..n)
        .map(|_| match rng.below(100) {
            0..=4 => Habit::Absent,
            5..=14 => Habit::NoAck,
            _ => Habit::Diligent,
        })
        .collect();
    let mut exp = vec![Expected::default(); n];
    // Documents waiting in each inbox: (sender, document_id, due: -1 past, 0 none, 1 future).
    let mut inbox: Vec<Vec<Pending>> = (0..n).map(|_| Vec::new()).collect();
    let mut noack_waiting: Vec<Vec<Pending>> = (0..n).map(|_| Vec::new()).collect();
    let batch = 1000;
    let mut sent = 0;
    while sent < documents {
        let mut plan = Vec::with_capacity(batch);
        for _ in 0..batch.min(documents - sent) {
            let from = rng.below(n as u64) as usize;
            let k = 1 + rng.below(3) as usize;
            let mut to = Vec::with_capacity(k);
            while to.len() < k {
                let t = rng.below(n as u64) as usize;
                if t != from && !to.contains(&t) {
                    to.push(t);
                }
            }
            let due = match rng.below(10) {
                0..=2 => -1,
                3..=5 => 1,
                _ => 0,
            };
            let today = lienthong_reports::local_date(now_micros());
            let due_date = match due {
                -1 => iso(today - time::Duration::days(1)),
                1 => iso(today + time::Duration::days(60)),
                _ => String::new(),
            };
            let doc = Doc {
                code_number: (sent + 1).to_string(),
                code_notation: "CV-UBND".to_owned(),
                subject: format!("Công văn số {}", sent + 1),
                due_date,
            };
            sent += 1;
            let refusal = rng.chance(2).then(|| rng.below(3) as u32);
            plan.push(Planned {
                from,
                to,
                due,
                doc,
                refusal,
            });
        }
        let outcomes = par(
            parallel,
            plan.iter()
                .map(|p| (p.from, p.to.clone(), p.doc.clone(), p.refusal))
                .collect(),
            |(from, to, doc, refusal)| {
                let world = world.clone();
                async move {
                    let (_, document_id) = world.send_document(from, &to, &doc).await?;
                    let refused = match refusal {
                        Some(kind) => Some(world.refused(from, kind).await),
                        None => None,
                    };
                    Ok((document_id, refused))
                }
            },
        )
        .await?;
        for (p, (document_id, refused)) in plan.into_iter().zip(outcomes) {
            exp[p.from].sent += 1;
            for &t in &p.to {
                exp[t].received += 1;
                inbox[t].push(Pending {
                    from: p.from,
                    document_id: document_id.clone(),
                    due: p.due,
                });
            }
            if let Some(reason) = refused {
                *exp[p.from]
                    .refused
                    .entry(reason.as_str().to_owned())
                    .or_default() += 1;
                if reason == Reason::CertificateNotBound {
                    exp[p.from].signature_refused += 1;
                }
            }
        }
        // Every agency deals with its inbox as it does.
        let mut work: Vec<(usize, Vec<Answer>)> = Vec::new();
        for a in 0..n {
            let waiting = std::mem::take(&mut inbox[a]);
            if waiting.is_empty() {
                continue;
            }
            match habits[a] {
                Habit::Absent => {
                    for p in waiting {
                        exp[a].without_03 += 1;
                        if p.due < 0 {
                            exp[a].overdue += 1;
                        }
                    }
                    continue;
                }
                Habit::NoAck => {
                    // Taken once, at the end: an unacknowledged delivery is
                    // handed out again on every drain.
                    noack_waiting[a].extend(waiting);
                    continue;
                }
                Habit::Diligent => {}
            }
            exp[a].delivered += waiting.len() as u64;
            exp[a].acknowledged += waiting.len() as u64;
            let mut answers = Vec::with_capacity(waiting.len());
            for p in waiting {
                let answer = rng.below(100);
                let mut completed = false;
                if answer < 5 {
                    *exp[p.from].statuses.entry("02".to_owned()).or_default() += 1;
                } else if answer < 85 {
                    *exp[p.from].statuses.entry("03".to_owned()).or_default() += 1;
                    exp[a].answered_03 += 1;
                    if rng.chance(50) {
                        *exp[p.from].statuses.entry("06".to_owned()).or_default() += 1;
                        completed = true;
                    }
                }
                if !(5..85).contains(&answer) {
                    exp[a].without_03 += 1;
                }
                if p.due < 0 && !completed {
                    exp[a].overdue += 1;
                }
                answers.push(Answer {
                    pending: p,
                    answer,
                    completed,
                });
            }
            work.push((a, answers));
        }
        // Each diligent agency takes and acknowledges its inbox (status
        // notices answering its own documents may be there too), then
        // answers; the agencies work side by side.
        let expected: Vec<(usize, usize)> = work.iter().map(|(a, w)| (*a, w.len())).collect();
        let got = par(parallel, work, |(a, answers)| {
            let world = world.clone();
            async move {
                let got = documents_in(world.drain(a, true).await?);
                for x in answers {
                    let p = &x.pending;
                    if x.answer < 5 {
                        world.send_status(a, p.from, &p.document_id, "02").await?;
                    } else if x.answer < 85 {
                        world.send_status(a, p.from, &p.document_id, "03").await?;
                        if x.completed {
                            world.send_status(a, p.from, &p.document_id, "06").await?;
                        }
                    }
                }
                Ok(got)
            }
        })
        .await?;
        for ((a, want), got) in expected.into_iter().zip(got) {
            assert_eq!(got, want, "{}'s inbox", world.id(a));
        }
        // Senders take their status notices.
        let diligent: Vec<usize> = (0..n).filter(|&a| habits[a] == Habit::Diligent).collect();
        par(parallel, diligent, |a| {
            let world = world.clone();
            async move { world.drain(a, true).await.map(|_| ()) }
        })
        .await?;
    }
    let noack: Vec<(usize, usize)> = noack_waiting
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.is_empty())
        .map(|(a, w)| (a, w.len()))
        .collect();
    let got = par(parallel, noack.iter().map(|&(a, _)| a).collect(), |a| {
        let world = world.clone();
        async move { Ok(documents_in(world.drain(a, false).await?)) }
    })
    .await?;
    for (&(a, want), got) in noack.iter().zip(got) {
        assert_eq!(got, want, "{}'s inbox", world.id(a));
    }
    for (a, waiting) in noack_waiting.into_iter().enumerate() {
        exp[a].delivered += waiting.len() as u64;
        for p in waiting {
            exp[a].without_03 += 1;
            if p.due < 0 {
                exp[a].overdue += 1;
            }
        }
    }
    Ok(exp)
}

/// How many of these deliveries carry a document (not a status notice).
fn documents_in(ds: Vec<lienthong_proto::v1::Delivery>) -> usize {
    use prost::Message as _;
    ds.iter()
        .filter(|d| {
            d.envelope
                .as_ref()
                .and_then(|s| lienthong_proto::v1::Envelope::decode(s.payload.clone()).ok())
                .is_some_and(|e| {
                    matches!(
                        e.body,
                        Some(lienthong_proto::v1::envelope::Body::Document(_))
                    )
                })
        })
        .count()
}

fn iso(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

fn nearest_rank(v: &mut [i64], p: i64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len() as i64;
    let rank = (n * p + 99) / 100;
    Some(v[(rank - 1) as usize].max(0) as f64 / 1e6)
}

/// The latencies recomputed from the rows, in Rust, per recipient.
async fn latencies_from_rows(
    db_url: &str,
) -> Result<(HashMap<String, Latency>, HashMap<String, Latency>)> {
    let db = &sea_orm::Database::connect(db_url).await.or_db()?;
    let msgs = message::Entity::find().all(db).await.or_db()?;
    let by_pk: HashMap<i64, &message::Model> = msgs.iter().map(|m| (m.id, m)).collect();
    let mut first_delivered: HashMap<(String, String, String), i64> = HashMap::new();
    for e in event::Entity::find()
        .filter(event::Column::Kind.eq("delivered"))
        .all(db)
        .await
        .or_db()?
    {
        let k = (e.sender, e.message_id, e.recipient.unwrap_or_default());
        let v = first_delivered.entry(k).or_insert(e.at);
        *v = (*v).min(e.at);
    }
    let mut first_03: HashMap<(String, String, String), i64> = HashMap::new();
    for m in msgs.iter().filter(|m| {
        m.kind == "status" && matches!(m.status_code.as_deref(), Some("03" | "04" | "05" | "06"))
    }) {
        let k = (
            m.sender.clone(),
            m.ref_from.clone().unwrap_or_default(),
            m.document_id.clone(),
        );
        let v = first_03.entry(k).or_insert(m.accepted_at);
        *v = (*v).min(m.accepted_at);
    }
    let mut d: HashMap<String, Vec<i64>> = HashMap::new();
    let mut a: HashMap<String, Vec<i64>> = HashMap::new();
    for dl in delivery::Entity::find().all(db).await.or_db()? {
        let Some(m) = by_pk.get(&dl.message_pk) else {
            continue;
        };
        if m.kind != "document" {
            continue;
        }
        let Some(&fd) =
            first_delivered.get(&(m.sender.clone(), m.message_id.clone(), dl.recipient.clone()))
        else {
            continue;
        };
        for key in [dl.recipient.clone(), "*".to_owned()] {
            d.entry(key.clone()).or_default().push(fd - dl.created_at);
            if let Some(&s) = first_03.get(&(
                dl.recipient.clone(),
                m.sender.clone(),
                m.document_id.clone(),
            )) {
                a.entry(key).or_default().push((s - fd).max(0));
            }
        }
    }
    let fold = |m: HashMap<String, Vec<i64>>| {
        m.into_iter()
            .map(|(k, mut v)| {
                let l = Latency {
                    count: v.len() as u64,
                    median_seconds: nearest_rank(&mut v, 50),
                    p95_seconds: nearest_rank(&mut v, 95),
                };
                (k, l)
            })
            .collect::<HashMap<_, _>>()
    };
    Ok((fold(d), fold(a)))
}

async fn check(world: &World, db_url: &str, exp: &[Expected]) -> Result<()> {
    let settings = ReportSettings::default();
    let today = lienthong_reports::local_date(now_micros());
    let period = Period::Range(
        today - time::Duration::days(1),
        today + time::Duration::days(1),
    );
    let as_of = now_micros() + 30 * DAY;
    // Số/ký hiệu, DueDate and trích yếu were read out of the envelopes as
    // each document was accepted: the sweep finds none left.
    let t = Instant::now();
    let indexed = lienthong_reports::index_documents(&world.store).await?;
    eprintln!("{indexed} documents indexed: {:?}", t.elapsed());
    let t = Instant::now();
    // The whole province, as a pattern.
    let r = summary_in(
        &world.store,
        period,
        &Scope::parse("#.H35")?,
        &settings,
        as_of,
    )
    .await?;
    eprintln!(
        "report over {} agencies: {:?}",
        r.agencies.len(),
        t.elapsed()
    );
    assert_eq!(r.agencies.len(), world.agents.len());
    let (lat_d, lat_a) = latencies_from_rows(db_url).await?;
    let rows: HashMap<&str, &AgencyRow> = r
        .agencies
        .iter()
        .map(|a| (a.organ_id.as_str(), a))
        .collect();
    let mut total = Expected::default();
    for (i, e) in exp.iter().enumerate() {
        let id = world.id(i);
        let row = rows
            .get(id)
            .copied()
            .unwrap_or_else(|| panic!("no row for {id}"));
        let got = (
            row.sent,
            row.received,
            row.delivered,
            row.acknowledged,
            row.without_03,
            row.overdue,
            row.signature_refused,
        );
        let want = (
            e.sent,
            e.received,
            e.delivered,
            e.acknowledged,
            e.without_03,
            e.overdue,
            e.signature_refused,
        );
        assert_eq!(
            got, want,
            "{id}: (sent, received, delivered, acknowledged, without_03, overdue, signature_refused)"
        );
        assert_eq!(row.refused_by_reason, e.refused, "{id}: refusals by reason");
        assert_eq!(
            row.refused,
            e.refused.values().sum::<u64>(),
            "{id}: refusals"
        );
        assert_eq!(row.statuses_received, e.statuses, "{id}: statuses by code");
        let share = (e.sent + e.signature_refused > 0)
            .then(|| e.sent as f64 / (e.sent + e.signature_refused) as f64);
        assert_eq!(
            row.signatures_verified_share, share,
            "{id}: signature share"
        );
        assert_eq!(
            row.accept_to_delivery.count, e.delivered,
            "{id}: deliveries timed"
        );
        assert_eq!(row.delivery_to_03.count, e.answered_03, "{id}: 03s timed");
        assert_eq!(
            &row.accept_to_delivery,
            lat_d.get(id).unwrap_or(&Latency::default()),
            "{id}: acceptance → delivery"
        );
        assert_eq!(
            &row.delivery_to_03,
            lat_a.get(id).unwrap_or(&Latency::default()),
            "{id}: delivery → 03"
        );
        total.sent += e.sent;
        total.received += e.received;
        total.delivered += e.delivered;
    }
    assert_eq!(
        (r.total.sent, r.total.received, r.total.delivered),
        (total.sent, total.received, total.delivered)
    );
    assert_eq!(
        &r.total.accept_to_delivery,
        lat_d.get("*").unwrap_or(&Latency::default())
    );
    assert_eq!(
        &r.total.delivery_to_03,
        lat_a.get("*").unwrap_or(&Latency::default())
    );
    // A statuses-by-code total a clerk can add up.
    let statuses: u64 = exp.iter().flat_map(|e| e.statuses.values()).sum();
    assert_eq!(r.total.statuses_received.values().sum::<u64>(), statuses);
    Ok(())
}

async fn run(db_url: &str, documents: usize, parallel: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let world = Arc::new(World::open(db_url, &dir.path().join("blobs"), &directory()).await?);
    eprintln!("directory of 500 agencies with keys: {:?}", t.elapsed());
    let t = Instant::now();
    let exp = generate(&world, documents, 0x9e37_79b9_7f4a_7c15, parallel).await?;
    let statuses: u64 = exp.iter().flat_map(|e| e.statuses.values()).sum();
    eprintln!(
        "{documents} documents and {statuses} status notices through the pipeline: {:?}",
        t.elapsed()
    );
    check(&world, db_url, &exp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_day_reports_what_was_sent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/month.db", dir.path().display());
    run(&url, 2_000, 1).await
}

fn require_services() -> bool {
    matches!(
        std::env::var("LIENTHONG_REQUIRE_SERVICES").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// The URL of database `name` on the server of `admin`, with its options.
/// On a loopback server without an `sslmode`, TLS is turned off: it would
/// only cost CPU on both sides of a connection that never leaves the host.
fn database_url(admin: &str, name: &str) -> String {
    let (url, query) = admin.split_once('?').unwrap_or((admin, ""));
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    let loopback = [
        "@127.0.0.1",
        "@localhost",
        "@[::1]",
        "//127.0.0.1",
        "//localhost",
    ]
    .iter()
    .any(|h| base.contains(h));
    let query = if loopback && !query.contains("sslmode") {
        [query, "sslmode=disable"]
            .iter()
            .filter(|q| !q.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("&")
    } else {
        query.to_owned()
    };
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

/// Runs on a database of its own on PostgreSQL, dropped afterwards;
/// `SKIPPED` when the server is unreachable (a failure under
/// LIENTHONG_REQUIRE_SERVICES=1). Its sessions commit without waiting for
/// the WAL flush (see the top of this file).
async fn on_postgres(test: &str, documents: usize) -> Result<()> {
    let admin = std::env::var("LIENTHONG_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let db = match sea_orm::Database::connect(&admin).await {
        Ok(db) => db,
        Err(e) => {
            assert!(
                !require_services(),
                "PostgreSQL at {admin} is unreachable: {e}"
            );
            // Straight to stderr: the test harness hides eprintln! of a
            // test that passes.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr().lock(),
                format_args!("SKIPPED: {test}: PostgreSQL at {admin} is unreachable ({e})\n"),
            );
            return Ok(());
        }
    };
    let name = format!("lienthong_{test}_{}", std::process::id());
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .or_db()?;
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .or_db()?;
    db.execute_unprepared(&format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    ))
    .await
    .or_db()?;
    let url = database_url(&admin, &name);
    // On its own task, so that a failed check still drops the database.
    let outcome = tokio::spawn(async move { run(&url, documents, PARALLEL).await }).await;
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .or_db()?;
    match outcome {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_month_reports_what_was_sent() -> Result<()> {
    on_postgres("report_month", 20_000).await
}
