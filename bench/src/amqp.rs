//! `lienthong bench amqp`: documents arriving from the national exchange
//! and leaving over AMQP again.
//!
//! The bench plays the national exchange. Its throwaway gateway serves a
//! province of its own, H36 (`[[routes]] #.H36 → local`, everything else to
//! `lienthong.documents`), whose agencies read queues (directory `channel =
//! amqp`); the dev PKI's four H35 agencies belong to another gateway and
//! sign the documents. The bench publishes each signed envelope to
//! `lienthong.documents` with its recipient as routing key, as the H35
//! gateway's relay would (body: the `SignedEnvelope` bytes, content type
//! `application/x-protobuf`, `message_id`, persistent, publisher confirms).
//! The gateway's inbound queue (bound with `#.H36`) takes it, the one
//! pipeline checks and accepts it, and the relay publishes the copy:
//!
//! - `--out queue` (default): to `lienthong.agency.<recipient>` through the
//!   default exchange;
//! - `--out exchange`: recipients are agencies of a district (`*.*.31.H36`)
//!   served by a gateway below this one, reached through the exchange
//!   `lienthong.bench.district31` (a different exchange from the one the
//!   message came from, so the loop rule lets it pass).
//!
//! The bench consumes the copies with manual acks and checks each: a message
//! it published, for that recipient, once, the signed payload's SHA-256
//! unchanged, the `message_id` property naming the envelope. What the
//! gateway refuses arrives in its dead-letter queue and is counted as
//! `refused:<REASON>`.
//!
//! Publishing is an open loop by default: a publisher waits only for the
//! broker's confirm, so `published / s` is what the exchange can offer and
//! the inbound queue takes up the difference; `publish → delivered` then
//! includes the wait in that queue. `--max-in-flight N` bounds the
//! documents published and not yet delivered out, for latency at a bounded
//! load.
//!
//! In the same run, on the same virtual host: raw RabbitMQ — durable quorum
//! queue (as the gateway declares its queues), persistent messages with
//! publisher confirms, a consumer with manual acks, no gateway — with the
//! same body size, concurrency, in-flight bound and number of messages (at
//! most `--raw-max`); and the database's fsync'd insert rate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args, ValueEnum};
use futures::StreamExt as _;
use futures::stream::{BoxStream, SelectAll};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use lienthong_pki::devpki;
use lienthong_pki::signing::{self, SigningKey};
use lienthong_proto::v1::{self as pb, Envelope, SignedEnvelope};
use lienthong_testkit::{self as kit, amqp::Vhost};
use prost::Message as _;
use tokio::sync::{Notify, Semaphore};

use super::{
    Agency, DirectoryEdit, Extra, Gateway, GrpcArgs, cpu_secs, db_baseline, key_type_name, lock,
    peak_rss_kb, percentiles, pjson, sha256, start_gateway_with, ts,
};
use crate::KeyTypeArg;

/// The province the bench's gateway serves.
const PROVINCE: &str = "H36";
/// `--out exchange`: the district below it and its gateway's exchange.
const DISTRICT_PATTERN: &str = "*.*.31.H36";
const DISTRICT_EXCHANGE: &str = "lienthong.bench.district31";
/// The bench's queue on that exchange (it plays the district's gateway).
const DISTRICT_QUEUE: &str = "lienthong.bench.district31.inbound";
/// The raw baseline's queue.
const RAW_QUEUE: &str = "lienthong.bench.raw";
/// Unacknowledged messages each of the bench's consumers may hold.
const PREFETCH: u16 = 256;
/// The target of the issue: the gateway delivers at least this share of
/// what raw RabbitMQ carries.
const TARGET_RATIO: f64 = 0.6;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// Recipients read their own queues, `lienthong.agency.<organ_id>`.
    Queue,
    /// Recipients are served by a district gateway behind an exchange.
    Exchange,
}

#[derive(Args, Debug, Clone)]
pub struct AmqpArgs {
    /// Documents to publish (default 2000 unless --duration).
    #[arg(long, conflicts_with = "duration")]
    pub docs: Option<u64>,
    /// Publish for this many seconds instead of a number of documents.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent publishers; each waits for the broker's confirm before
    /// its next message.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Size of each document's signed content (bytes).
    #[arg(long, default_value_t = 2048)]
    pub payload_bytes: usize,
    /// Signing keys of the throwaway PKI.
    #[arg(long, value_enum, default_value_t = KeyTypeArg::EcP256)]
    pub key_type: KeyTypeArg,
    /// `sqlite`, or a PostgreSQL URL whose server the bench makes (and
    /// drops) a database of its own on.
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// Where the gateway's copies leave: agencies' queues, or an exchange.
    #[arg(long, value_enum, default_value_t = Out::Queue)]
    pub out: Out,
    /// Recipient agencies (1..=99); the relay keeps one publication per
    /// recipient waiting for its confirm, so this bounds its parallelism.
    #[arg(long, default_value_t = 16)]
    pub agencies: usize,
    /// At most this many documents published and not yet delivered out
    /// (0: no bound, publishers wait only for the broker's confirm).
    #[arg(long, default_value_t = 0)]
    pub max_in_flight: usize,
    /// RabbitMQ's AMQP listener (user guest). The bench makes its own
    /// virtual host there with `rabbitmqctl`, and deletes it at the end.
    #[arg(long, default_value = "127.0.0.1:5672")]
    pub broker: String,
    /// Messages of the raw RabbitMQ baseline at most.
    #[arg(long, default_value_t = 20_000)]
    pub raw_max: u64,
    /// Keep the temporary directory, PostgreSQL database and virtual host.
    #[arg(long)]
    pub keep: bool,
    /// Also measure the database's fsync'd single-row insert rate.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub baseline: bool,
    /// Also measure raw RabbitMQ (durable publish → consume, no gateway).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub rabbitmq_baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl AmqpArgs {
    /// The arguments `setup` and `db_baseline` read, every other one at its
    /// command-line default.
    fn grpc_args(&self) -> Result<GrpcArgs> {
        use clap::{Args as _, FromArgMatches as _};
        let m =
            GrpcArgs::augment_args(clap::Command::new("bench")).try_get_matches_from(["bench"])?;
        let mut g = GrpcArgs::from_arg_matches(&m)?;
        g.docs = self.docs;
        g.duration = self.duration;
        g.concurrency = self.concurrency;
        g.payload_bytes = self.payload_bytes;
        g.key_type = self.key_type;
        g.database = self.database.clone();
        g.keep = self.keep;
        g.baseline = self.baseline;
        g.json = self.json;
        Ok(g)
    }

    fn recipients(&self) -> Vec<String> {
        (1..=self.agencies)
            .map(|n| match self.out {
                Out::Queue => format!("000.00.{n:02}.{PROVINCE}"),
                Out::Exchange => format!("000.{n:02}.31.{PROVINCE}"),
            })
            .collect()
    }
}

/// `bench amqp`. The gateway's configuration plays no part: the bench
/// makes its own.
pub async fn run(args: AmqpArgs) -> Result<ExitCode> {
    go(args, false).await
}

/// `bench mixed`: gRPC and AMQP traffic at once, half each.
pub async fn run_mixed(args: AmqpArgs) -> Result<ExitCode> {
    go(args, true).await
}

async fn go(args: AmqpArgs, mixed: bool) -> Result<ExitCode> {
    if args.concurrency == 0 {
        bail!("--concurrency is at least 1");
    }
    if !(1..=99).contains(&args.agencies) {
        bail!("--agencies is 1 to 99");
    }
    let vhost = make_vhost(&args.broker, args.keep).await?;
    let r = with_vhost(&args, &vhost, mixed).await;
    finish_vhost(vhost, args.keep).await;
    let report = r?;
    if args.json {
        println!("{report}");
    } else if mixed {
        print_mixed(&report);
    } else {
        print_table(&report);
    }
    let errors = report["error_count"].as_u64().unwrap_or(1)
        + report["rabbitmq_baseline"]["error_count"]
            .as_u64()
            .unwrap_or(0);
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn with_vhost(args: &AmqpArgs, vhost: &Vhost, mixed: bool) -> Result<serde_json::Value> {
    let recipients = args.recipients();
    let mut config = format!(
        r##"
[amqp]
url = {url}

[[routes]]
pattern = "#.{PROVINCE}"
to = "local"

[[routes]]
pattern = "#"
to = "exchange:{exchange}"
"##,
        url = kit::toml_str(&vhost.url),
        exchange = lienthong_core::routing::DOCUMENTS_EXCHANGE,
    );
    if mixed {
        // The gRPC half: the dev PKI's agencies are this gateway's too.
        config.push_str("\n[[routes]]\npattern = \"#.H35\"\nto = \"local\"\n");
    }
    let directory: Option<DirectoryEdit> = match args.out {
        Out::Queue => {
            let ids = recipients.clone();
            Some(Box::new(move |csv: &str| with_queue_agencies(csv, &ids)))
        }
        Out::Exchange => {
            config.push_str(&format!(
                "\n[[routes]]\npattern = \"{DISTRICT_PATTERN}\"\nto = \"exchange:{DISTRICT_EXCHANGE}\"\n"
            ));
            None
        }
    };
    let extra = Extra { config, directory };
    let mut gw = start_gateway_with(&args.grpc_args()?, &extra).await?;
    let r = if mixed {
        drive_mixed(args, &gw, vhost, recipients).await
    } else {
        drive(args, &gw, vhost, recipients).await
    };
    let r = r.map(|mut report| {
        report["vhost"] = vhost.name.clone().into();
        report
    });
    let r = r.map_err(|e| {
        let log = std::fs::read_to_string(gw.dir.join("gateway.stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        if tail.is_empty() {
            e
        } else {
            anyhow::anyhow!("{e:#}\n(the gateway's log ends:\n{})", tail.join("\n"))
        }
    });
    gw.stop().await;
    r
}

/// directory.csv with a `channel` column (`grpc` for the dev PKI's
/// agencies) and a row for each of `ids` that reads a queue.
fn with_queue_agencies(csv: &str, ids: &[String]) -> Result<String> {
    let mut lines = csv.lines();
    let header = lines.next().context("directory.csv is empty")?;
    let cols: Vec<&str> = header.split(',').collect();
    let id_col = cols
        .iter()
        .position(|c| *c == "organ_id")
        .context("directory.csv has no organ_id column")?;
    let name_col = cols.iter().position(|c| *c == "name");
    let mut out = format!("{header},channel\n");
    for l in lines.filter(|l| !l.trim().is_empty()) {
        out.push_str(l);
        out.push_str(",grpc\n");
    }
    for (i, id) in ids.iter().enumerate() {
        let mut row = vec![String::new(); cols.len()];
        row[id_col] = id.clone();
        if let Some(n) = name_col {
            row[n] = format!("Cơ quan đọc hàng đợi {} (bench)", i + 1);
        }
        out.push_str(&row.join(","));
        out.push_str(",amqp\n");
    }
    Ok(out)
}

// ----- the virtual host -------------------------------------------------------

/// A RabbitMQ virtual host of the bench's own, made and deleted with
/// `rabbitmqctl` (as the end-to-end tests do). Deleting it deletes its
/// queues and exchanges.
async fn make_vhost(broker: &str, keep: bool) -> Result<Vhost> {
    let broker = broker.to_owned();
    let made = tokio::task::spawn_blocking(move || Vhost::create(&broker, "lienthong-bench"))
        .await?
        .map_err(anyhow::Error::msg)
        .context(
            "the bench makes a virtual host of its own with rabbitmqctl, so run it on the broker's machine as a user allowed to",
        );
    let mut v = made?;
    if keep {
        v.keep();
    }
    Ok(v)
}

/// Deletes the virtual host, unless kept.
async fn finish_vhost(vhost: Vhost, keep: bool) {
    if keep {
        eprintln!("bench: kept the RabbitMQ virtual host {}", vhost.name);
    }
    let _ = tokio::task::spawn_blocking(move || drop(vhost)).await;
}

// ----- one flow of messages: publishers → broker (→ gateway) → consumers ---------

struct Sent {
    sha: Vec<u8>,
    to: String,
    published: Instant,
    confirmed: bool,
    refused: bool,
}

#[derive(Default)]
struct Flow {
    sent: HashMap<String, Sent>,
    delivered: HashSet<(String, String)>,
    errors: BTreeMap<String, u64>,
    confirm_latency: Vec<Duration>,
    deliver_latency: Vec<Duration>,
    attempted: u64,
    confirmed: u64,
    dead_lettered: u64,
    expected: u64,
    delivered_ok: u64,
    acked: u64,
    body_bytes: u64,
    last_confirm: Option<Instant>,
    last_deliver: Option<Instant>,
    last_ack: Option<Instant>,
}

impl Flow {
    fn error(&mut self, reason: impl Into<String>) {
        *self.errors.entry(reason.into()).or_insert(0) += 1;
    }
}

/// A message to publish, and what its delivered copies must show.
struct Outgoing {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    message_id: String,
    /// SHA-256 of what a copy must carry (the signed payload, or the body).
    sha: Vec<u8>,
    /// The one recipient (or queue) that must receive it.
    to: String,
}

type Maker = Arc<dyn Fn(u64) -> Result<Outgoing> + Send + Sync>;
/// What a delivered copy is: (message_id, SHA-256), or why it is not one.
type Decoder = fn(&Delivery) -> std::result::Result<(String, Vec<u8>), &'static str>;
/// A delivery and the recipient its queue belongs to (`None`: the routing
/// key names it).
type Incoming = (Option<String>, lapin::Result<Delivery>);

struct Run {
    flow: Mutex<Flow>,
    progress: Notify,
    next: AtomicU64,
    total: u64,
    deadline: Option<Instant>,
    window: Option<Semaphore>,
}

impl Run {
    fn new(total: u64, duration: Option<Duration>, max_in_flight: usize) -> Run {
        Run {
            flow: Mutex::new(Flow::default()),
            progress: Notify::new(),
            next: AtomicU64::new(0),
            total,
            deadline: duration.map(|d| Instant::now() + d),
            window: (max_in_flight > 0).then(|| Semaphore::new(max_in_flight)),
        }
    }

    fn more(&self) -> Option<u64> {
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return None;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            return (i < self.total).then_some(i);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }

    fn release(&self) {
        if let Some(w) = &self.window {
            w.add_permits(1);
        }
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn publisher(run: Arc<Run>, conn: Arc<Connection>, make: Maker) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    while let Some(i) = run.more() {
        if let Some(w) = &run.window {
            w.acquire().await?.forget();
        }
        let m = make(i)?;
        let len = m.body.len() as u64;
        let started = Instant::now();
        {
            let mut f = lock(&run.flow);
            f.attempted += 1;
            f.sent.insert(
                m.message_id.clone(),
                Sent {
                    sha: m.sha,
                    to: m.to,
                    published: started,
                    confirmed: false,
                    refused: false,
                },
            );
        }
        let props = BasicProperties::default()
            .with_content_type(lienthong_amqp::wire::CONTENT_TYPE_ENVELOPE.into())
            .with_delivery_mode(2)
            .with_timestamp(unix_secs())
            .with_message_id(m.message_id.as_str().into());
        let answer = match ch
            .basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &m.body,
                props,
            )
            .await
        {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        let now = Instant::now();
        let failed = match answer {
            Ok(Confirmation::Ack(None)) => None,
            Ok(Confirmation::Ack(Some(_))) => Some("publish:unroutable".to_owned()),
            Ok(Confirmation::Nack(_)) => Some("publish:nack".to_owned()),
            Ok(Confirmation::NotRequested) => Some("publish:unconfirmed".to_owned()),
            Err(e) => Some(format!("publish:{e}")),
        };
        let mut g = lock(&run.flow);
        let f = &mut *g;
        let stop = match failed {
            None => {
                f.confirmed += 1;
                f.body_bytes += len;
                f.confirm_latency.push(now - started);
                f.last_confirm = Some(now);
                if let Some(s) = f.sent.get_mut(&m.message_id) {
                    s.confirmed = true;
                    if !s.refused {
                        f.expected += 1;
                    }
                }
                false
            }
            Some(reason) => {
                let stop = !(reason.starts_with("publish:unroutable")
                    || reason.starts_with("publish:nack"));
                f.sent.remove(&m.message_id);
                f.error(reason);
                run.release();
                stop
            }
        };
        drop(g);
        run.progress.notify_waiters();
        if stop {
            // The channel is gone: this publisher stops; the others go on.
            break;
        }
    }
    let _ = ch.close(200, "bench: done".into()).await;
    Ok(())
}

/// Takes the delivered copies, checks each against what was published and
/// acknowledges it.
async fn consume(
    run: Arc<Run>,
    mut stream: SelectAll<BoxStream<'static, Incoming>>,
    decode: Decoder,
) {
    while let Some((queue_of, item)) = stream.next().await {
        let d = match item {
            Ok(d) => d,
            Err(e) => {
                lock(&run.flow).error(format!("consume:{e}"));
                run.progress.notify_waiters();
                break;
            }
        };
        let now = Instant::now();
        let me = queue_of.unwrap_or_else(|| d.routing_key.as_str().to_owned());
        let mut fresh = false;
        {
            let mut g = lock(&run.flow);
            let f = &mut *g;
            match decode(&d) {
                Err(why) => f.error(why),
                Ok((message_id, sha)) => {
                    let verdict = match f.sent.get(&message_id) {
                        None => Some("unknown_delivery"),
                        Some(s) if s.sha != sha => Some("corrupted"),
                        Some(s) if s.to != me => Some("misrouted"),
                        Some(_) => None,
                    };
                    match verdict {
                        Some(v) => f.error(v),
                        None => {
                            let published = f.sent.get(&message_id).map(|s| s.published);
                            if f.delivered.insert((message_id, me)) {
                                fresh = true;
                                f.delivered_ok += 1;
                                f.last_deliver = Some(now);
                                if let Some(p) = published {
                                    f.deliver_latency.push(now - p);
                                }
                            } else {
                                f.error("duplicated");
                            }
                        }
                    }
                }
            }
        }
        if fresh {
            run.release();
        }
        let acked = d.acker.ack(BasicAckOptions::default()).await;
        {
            let mut f = lock(&run.flow);
            match acked {
                Ok(_) => {
                    f.acked += 1;
                    f.last_ack = Some(Instant::now());
                }
                Err(e) => f.error(format!("ack:{e}")),
            }
        }
        run.progress.notify_waiters();
    }
}

/// The gateway's copies: the `SignedEnvelope` bytes, whose `message_id`
/// property names the envelope.
fn decode_envelope(d: &Delivery) -> std::result::Result<(String, Vec<u8>), &'static str> {
    let signed = SignedEnvelope::decode(d.data.as_slice()).map_err(|_| "undecodable_body")?;
    let envelope = Envelope::decode(signed.payload.clone()).map_err(|_| "undecodable_payload")?;
    let property = d.properties.message_id().as_ref().map(|m| m.as_str());
    if property != Some(envelope.message_id.as_str()) {
        return Err("wrong_message_id_property");
    }
    Ok((envelope.message_id, sha256(&signed.payload)))
}

/// The raw baseline's messages: the body as published.
fn decode_raw(d: &Delivery) -> std::result::Result<(String, Vec<u8>), &'static str> {
    let id = d
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .ok_or("no_message_id_property")?;
    Ok((id, sha256(&d.data)))
}

/// The gateway's dead letters: what it refused, with the reason.
async fn dead_letters(run: Arc<Run>, mut consumer: lapin::Consumer) {
    while let Some(item) = consumer.next().await {
        let Ok(d) = item else { break };
        let reason = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(lienthong_amqp::wire::HEADER_REASON).cloned());
        let reason = match reason {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
            _ => "-".to_owned(),
        };
        let message_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let mut release = false;
        {
            let mut g = lock(&run.flow);
            let f = &mut *g;
            f.error(format!("refused:{reason}"));
            if let Some(s) = f.sent.get_mut(&message_id)
                && !s.refused
            {
                s.refused = true;
                f.dead_lettered += 1;
                if s.confirmed {
                    f.expected = f.expected.saturating_sub(1);
                }
                release = true;
            }
        }
        if release {
            run.release();
        }
        let _ = d.acker.ack(BasicAckOptions::default()).await;
        run.progress.notify_waiters();
    }
}

/// Opens a consumer on `queue` with the bench's prefetch, as a stream of
/// deliveries tagged with `recipient`.
async fn consumer_on(
    ch: &Channel,
    queue: &str,
    recipient: Option<String>,
) -> Result<BoxStream<'static, Incoming>> {
    let c = kit::amqp::consumer(ch, queue, "bench")
        .await
        .with_context(|| format!("cannot consume {queue}"))?;
    Ok(c.map(move |d| (recipient.clone(), d)).boxed())
}

/// Runs `concurrency` publishers to the end, then waits until every
/// confirmed message was delivered and acknowledged, or nothing moved for
/// 30 s. Returns when the publishers started.
async fn pump(
    run: &Arc<Run>,
    conn: &Arc<Connection>,
    concurrency: usize,
    make: &Maker,
) -> Result<Instant> {
    let start = Instant::now();
    let mut publishers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        publishers.push(tokio::spawn(publisher(
            run.clone(),
            conn.clone(),
            make.clone(),
        )));
    }
    for p in publishers {
        p.await??;
    }
    crate::drain(&run.progress, || {
        let f = lock(&run.flow);
        f.delivered_ok >= f.expected && f.acked >= f.expected
    })
    .await;
    Ok(start)
}

/// The figures of a flow, in the same terms for the gateway and the raw
/// baseline. Counts what is missing and unacknowledged as errors.
fn summary(f: &mut Flow, start: Instant) -> serde_json::Value {
    let missing = f.expected.saturating_sub(f.delivered_ok);
    if missing > 0 {
        *f.errors.entry("missing".to_owned()).or_insert(0) += missing;
    }
    let unacked = f.delivered_ok.saturating_sub(f.acked);
    if unacked > 0 {
        *f.errors.entry("not_acknowledged".to_owned()).or_insert(0) += unacked;
    }
    let rate = |n: u64, last: Option<Instant>| match last {
        Some(l) if l > start => n as f64 / (l - start).as_secs_f64(),
        _ => 0.0,
    };
    let error_count: u64 = f.errors.values().sum();
    serde_json::json!({
        "sent": f.attempted,
        "published": f.confirmed,
        "dead_lettered": f.dead_lettered,
        "body_bytes": f.body_bytes.checked_div(f.confirmed).unwrap_or(0),
        "expected_deliveries": f.expected,
        "delivered": f.delivered_ok,
        "acknowledged": f.acked,
        "window_secs": f.last_ack.or(f.last_deliver).or(f.last_confirm).map(|l| (l - start).as_secs_f64()).unwrap_or(0.0),
        "published_per_sec": rate(f.confirmed, f.last_confirm),
        "delivered_per_sec": rate(f.delivered_ok, f.last_deliver),
        "acknowledged_per_sec": rate(f.acked, f.last_ack),
        "publish_confirm_ms": pjson(&percentiles(std::mem::take(&mut f.confirm_latency))),
        "publish_to_deliver_ms": pjson(&percentiles(std::mem::take(&mut f.deliver_latency))),
        "errors": f.errors,
        "error_count": error_count,
    })
}

// ----- the run --------------------------------------------------------------------

fn load_agencies(gw: &Gateway) -> Result<Vec<Agency>> {
    let mut agencies = Vec::new();
    for (id, _) in devpki::default_agencies() {
        let id = id.to_string();
        let pem = std::fs::read_to_string(gw.pki.join(format!("{id}.key.pem")))?;
        let key = SigningKey::from_pkcs8_pem(&pem, None)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let chain = signing::load_certificates_pem(&gw.pki.join(format!("{id}.pem")))
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        agencies.push(Agency { id, key, chain });
    }
    if agencies.is_empty() {
        bail!("the dev PKI has no agencies");
    }
    Ok(agencies)
}

/// Signed documents from the H35 agencies to the bench's recipients,
/// published on the national exchange with the recipient as routing key.
fn gateway_maker(agencies: Vec<Agency>, recipients: Vec<String>, payload_bytes: usize) -> Maker {
    let content = "x".repeat(payload_bytes);
    Arc::new(move |i: u64| {
        let agency = &agencies[(i % agencies.len() as u64) as usize];
        let to = recipients[(i % recipients.len() as u64) as usize].clone();
        let message_id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope {
            message_id: message_id.clone(),
            from: agency.id.clone(),
            to: vec![to.clone()],
            created_at: Some(ts(SystemTime::now())),
            body: Some(pb::envelope::Body::Document(pb::Document {
                document_id: message_id.clone(),
                code_number: i.to_string(),
                code_notation: "BENCH".to_owned(),
                promulgation_date: "2026-01-01".to_owned(),
                subject: format!("bench document {i}"),
                content: content.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let signed = signing::sign_envelope(&envelope, &agency.key, &agency.chain)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        Ok(Outgoing {
            exchange: lienthong_core::routing::DOCUMENTS_EXCHANGE.to_owned(),
            routing_key: to.clone(),
            body: signed.encode_to_vec(),
            message_id,
            sha: sha256(&signed.payload),
            to,
        })
    })
}

/// Bodies of `len` bytes for the raw queue, each with its index in front.
fn raw_maker(len: usize) -> Maker {
    let template: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    Arc::new(move |i: u64| {
        let mut body = template.clone();
        for (b, x) in body.iter_mut().zip(i.to_be_bytes()) {
            *b = x;
        }
        Ok(Outgoing {
            exchange: String::new(),
            routing_key: RAW_QUEUE.to_owned(),
            sha: sha256(&body),
            body,
            message_id: uuid::Uuid::new_v4().to_string(),
            to: RAW_QUEUE.to_owned(),
        })
    })
}

/// Waits until the gateway consumes its inbound queue: its topology is
/// declared (exchanges, bindings, agencies' queues) once it does.
async fn wait_for_gateway(conn: &Connection, queue: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ch = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        // A passive declare of a queue not there yet closes the channel.
        if let Ok(q) = ch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            let _ = ch.close(200, "bench: checked".into()).await;
            if q.consumer_count() > 0 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the gateway did not start consuming {queue} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn raw_baseline(
    args: &AmqpArgs,
    pub_conn: &Arc<Connection>,
    sub_conn: &Connection,
    body_len: usize,
) -> Result<serde_json::Value> {
    let total = match args.duration {
        Some(_) => args.raw_max,
        None => args.docs.unwrap_or(2000).min(args.raw_max),
    };
    let ch = sub_conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    ch.queue_declare(RAW_QUEUE.into(), durable(), quorum())
        .await?;
    let mut streams = SelectAll::new();
    streams.push(consumer_on(&ch, RAW_QUEUE, Some(RAW_QUEUE.to_owned())).await?);
    let run = Arc::new(Run::new(
        total,
        args.duration.map(Duration::from_secs_f64),
        args.max_in_flight,
    ));
    let taker = tokio::spawn(consume(run.clone(), streams, decode_raw));
    let r = pump(&run, pub_conn, args.concurrency, &raw_maker(body_len)).await;
    // The channel first (it ends the consumer), then the queue: RabbitMQ
    // 3.10 drops the whole connection on a basic.cancel that crosses the
    // deletion of its quorum queue.
    let _ = ch.close(200, "bench: done".into()).await;
    taker.abort();
    let _ = taker.await;
    let ch = sub_conn.create_channel().await?;
    ch.queue_delete(RAW_QUEUE.into(), QueueDeleteOptions::default())
        .await?;
    let _ = ch.close(200, "bench: done".into()).await;
    let start = r?;
    let mut f = lock(&run.flow);
    let mut out = summary(&mut f, start);
    out["queue_type"] = "quorum".into();
    out["concurrency"] = args.concurrency.into();
    Ok(out)
}

/// The bench's connections to its virtual host (one publishes, one
/// consumes), once the gateway consumes its inbound queue, and the signed
/// documents it publishes.
struct Side {
    sub: Connection,
    publ: Arc<Connection>,
    make: Maker,
}

impl Side {
    async fn open(
        args: &AmqpArgs,
        gw: &Gateway,
        vhost: &Vhost,
        recipients: &[String],
    ) -> Result<Side> {
        let names = lienthong_amqp::AmqpConfig::default();
        let props = ConnectionProperties::default();
        let sub = Connection::connect(&vhost.url, props.clone())
            .await
            .with_context(|| format!("cannot connect to {}", vhost.url))?;
        let publ = Arc::new(Connection::connect(&vhost.url, props).await?);
        wait_for_gateway(&sub, &names.queue).await?;
        let make = gateway_maker(load_agencies(gw)?, recipients.to_vec(), args.payload_bytes);
        Ok(Side { sub, publ, make })
    }

    async fn close(&self) {
        let _ = self.publ.close(200, "bench: done".into()).await;
        let _ = self.sub.close(200, "bench: done".into()).await;
    }

    /// Consumers on the gateway's output, declared as the gateway declares
    /// it (the same arguments, or the broker refuses), and on its dead
    /// letters.
    async fn outlet(&self, args: &AmqpArgs, recipients: &[String]) -> Result<Outlet> {
        let ch = self.sub.create_channel().await?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        let mut streams = SelectAll::new();
        match args.out {
            Out::Queue => {
                for id in recipients {
                    let q = lienthong_core::routing::agency_queue(id);
                    ch.queue_declare(q.as_str().into(), durable(), quorum())
                        .await?;
                    streams.push(consumer_on(&ch, &q, Some(id.clone())).await?);
                }
            }
            Out::Exchange => {
                ch.exchange_declare(
                    DISTRICT_EXCHANGE.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
                ch.queue_declare(DISTRICT_QUEUE.into(), durable(), quorum())
                    .await?;
                ch.queue_bind(
                    DISTRICT_QUEUE.into(),
                    DISTRICT_EXCHANGE.into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
                streams.push(consumer_on(&ch, DISTRICT_QUEUE, None).await?);
            }
        }
        let dlq = lienthong_amqp::AmqpConfig::default().dead_letter_queue;
        ch.queue_declare(dlq.as_str().into(), durable(), quorum())
            .await?;
        let dead = ch
            .basic_consume(
                dlq.as_str().into(),
                "bench-dead-letters".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Outlet { ch, streams, dead })
    }

    /// Publishes `run`'s documents through the gateway with `concurrency`
    /// publishers and takes what comes out; returns when publishing
    /// started.
    async fn carry(&self, outlet: Outlet, run: &Arc<Run>, concurrency: usize) -> Result<Instant> {
        let taker = tokio::spawn(consume(run.clone(), outlet.streams, decode_envelope));
        let refusals = tokio::spawn(dead_letters(run.clone(), outlet.dead));
        let r = pump(run, &self.publ, concurrency, &self.make).await;
        let _ = outlet.ch.close(200, "bench: done".into()).await;
        taker.abort();
        refusals.abort();
        let _ = taker.await;
        let _ = refusals.await;
        r
    }
}

struct Outlet {
    ch: Channel,
    streams: SelectAll<BoxStream<'static, Incoming>>,
    dead: lapin::Consumer,
}

fn cpu_json(
    pid: u32,
    before: Option<f64>,
    after: Option<f64>,
    rss: Option<u64>,
    docs: u64,
) -> serde_json::Value {
    let cpu = match (before, after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    serde_json::json!({
        "pid": pid,
        "peak_rss_kb": rss,
        "cpu_secs": cpu,
        "cpu_secs_per_1000_docs": cpu.filter(|_| docs > 0).map(|c| c * 1000.0 / docs as f64),
    })
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(r), serde_json::Value::Object(e)) = (into.as_object_mut(), from) {
        r.extend(e);
    }
}

/// With --duration the clock ends the run.
fn total_of(docs: Option<u64>, duration: Option<Duration>) -> u64 {
    match duration {
        Some(_) => u64::MAX,
        None => docs.unwrap_or(2000),
    }
}

async fn drive(
    args: &AmqpArgs,
    gw: &Gateway,
    vhost: &Vhost,
    recipients: Vec<String>,
) -> Result<serde_json::Value> {
    let duration = args.duration.map(Duration::from_secs_f64);
    let total = total_of(args.docs, duration);
    let baseline = if args.baseline {
        Some(db_baseline(gw, &args.grpc_args()?, total.min(2000)).await?)
    } else {
        None
    };
    let side = Side::open(args, gw, vhost, &recipients).await?;
    let r = async {
        // A body of the run's size (its numbers have four digits).
        let body_len = (side.make)(1000)?.body.len();
        let raw = if args.rabbitmq_baseline {
            Some(raw_baseline(args, &side.publ, &side.sub, body_len).await?)
        } else {
            None
        };
        let outlet = side.outlet(args, &recipients).await?;
        let pid = gw.pid().context("the gateway is not running")?;
        let cpu_before = cpu_secs(pid);
        let run = Arc::new(Run::new(total, duration, args.max_in_flight));
        let start = side.carry(outlet, &run, args.concurrency).await?;
        let gateway = cpu_json(
            pid,
            cpu_before,
            cpu_secs(pid),
            peak_rss_kb(pid),
            lock(&run.flow).delivered_ok,
        );
        Ok::<_, anyhow::Error>((raw, run, start, gateway))
    }
    .await;
    side.close().await;
    let (raw, run, start, gateway) = r?;

    let mut report = summary(&mut lock(&run.flow), start);
    let delivered_per_sec = report["delivered_per_sec"].as_f64().unwrap_or(0.0);
    let baseline_json = match &baseline {
        Some(b) => {
            let per_sec = b.inserts as f64 / b.secs.max(1e-9);
            serde_json::json!({
                "db_inserts": b.inserts,
                "db_inserts_per_sec": per_sec,
                "gateway_delivered_ratio": delivered_per_sec / per_sec,
            })
        }
        None => serde_json::Value::Null,
    };
    let raw_json = match raw {
        Some(mut r) => {
            let raw_rate = r["delivered_per_sec"].as_f64().unwrap_or(0.0);
            let ratio = (raw_rate > 0.0).then(|| delivered_per_sec / raw_rate);
            r["gateway_delivered_ratio"] = ratio.into();
            r["target_ratio"] = TARGET_RATIO.into();
            r["meets_target"] = ratio.map(|x| x >= TARGET_RATIO).into();
            r
        }
        None => serde_json::Value::Null,
    };
    merge(&mut report, describe(args, gw));
    merge(
        &mut report,
        serde_json::json!({
            "gateway": gateway,
            "baseline": baseline_json,
            "rabbitmq_baseline": raw_json,
        }),
    );
    Ok(report)
}

/// What the run was.
fn describe(args: &AmqpArgs, gw: &Gateway) -> serde_json::Value {
    serde_json::json!({
        "mode": "amqp",
        "database": if gw.pg.is_some() { "postgres" } else { "sqlite" },
        "key_type": key_type_name(args.key_type),
        "concurrency": args.concurrency,
        "payload_bytes": args.payload_bytes,
        "attachment_bytes": 0,
        "recipients": 1,
        "out": match args.out { Out::Queue => "queue", Out::Exchange => "exchange" },
        "agencies": args.agencies,
        "max_in_flight": args.max_in_flight,
    })
}

/// `bench mixed`: gRPC (agency → agency in the gateway, H35) and AMQP
/// (exchange → gateway → H36 queues) at once on one gateway, half the
/// documents and half the concurrency each, reported per path.
async fn drive_mixed(
    args: &AmqpArgs,
    gw: &Gateway,
    vhost: &Vhost,
    recipients: Vec<String>,
) -> Result<serde_json::Value> {
    let duration = args.duration.map(Duration::from_secs_f64);
    let total = total_of(args.docs, duration);
    let (grpc_docs, amqp_docs) = match duration {
        Some(_) => (None, u64::MAX),
        None => (Some(total - total / 2), total / 2),
    };
    let (grpc_conc, amqp_conc) = (
        (args.concurrency / 2).max(1),
        (args.concurrency - args.concurrency / 2).max(1),
    );
    let mut g = args.grpc_args()?;
    g.docs = grpc_docs;
    g.concurrency = grpc_conc;
    g.baseline = false;
    g.mode = "mixed: grpc";
    let side = Side::open(args, gw, vhost, &recipients).await?;
    let r = async {
        let outlet = side.outlet(args, &recipients).await?;
        let pid = gw.pid().context("the gateway is not running")?;
        let cpu_before = cpu_secs(pid);
        let run = Arc::new(Run::new(amqp_docs, duration, args.max_in_flight));
        let (grpc, amqp) = tokio::join!(super::drive(&g, gw), side.carry(outlet, &run, amqp_conc));
        let docs = lock(&run.flow).delivered_ok;
        Ok::<_, anyhow::Error>((grpc?, run, amqp?, pid, cpu_before, docs))
    }
    .await;
    side.close().await;
    let (grpc, run, start, pid, cpu_before, amqp_docs_done) = r?;
    let mut amqp = summary(&mut lock(&run.flow), start);
    merge(&mut amqp, describe(args, gw));
    amqp["mode"] = "mixed: amqp".into();
    amqp["concurrency"] = amqp_conc.into();
    let docs = amqp_docs_done + grpc["accepted"].as_u64().unwrap_or(0);
    let gateway = cpu_json(pid, cpu_before, cpu_secs(pid), peak_rss_kb(pid), docs);
    let error_count =
        grpc["error_count"].as_u64().unwrap_or(1) + amqp["error_count"].as_u64().unwrap_or(1);
    Ok(serde_json::json!({
        "mode": "mixed",
        "database": if gw.pg.is_some() { "postgres" } else { "sqlite" },
        "key_type": key_type_name(args.key_type),
        "concurrency": args.concurrency,
        "payload_bytes": args.payload_bytes,
        "grpc": grpc,
        "amqp": amqp,
        "documents": docs,
        "error_count": error_count,
        "gateway": gateway,
    }))
}

fn print_table(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| match v.as_f64() {
        Some(x) => format!("{x:.1}"),
        None => "-".to_owned(),
    };
    let n = |v: &serde_json::Value| match v.as_u64() {
        Some(x) => x.to_string(),
        None => "-".to_owned(),
    };
    let raw = &r["rabbitmq_baseline"];
    println!(
        "lienthong bench {}: {} database, {} keys, concurrency {}, {} B content ({} B messages), out to {} ({} agencies){}",
        r["mode"].as_str().unwrap_or("amqp"),
        r["database"].as_str().unwrap_or("?"),
        r["key_type"].as_str().unwrap_or("?"),
        r["concurrency"],
        r["payload_bytes"],
        r["body_bytes"],
        match r["out"].as_str() {
            Some("exchange") => "an exchange",
            _ => "agencies' queues",
        },
        r["agencies"],
        match r["max_in_flight"].as_u64() {
            Some(m) if m > 0 => format!(", at most {m} in flight"),
            _ => String::new(),
        },
    );
    println!();
    println!("{:<34} {:>12} {:>14}", "", "gateway", "raw RabbitMQ");
    for (name, key) in [
        ("messages published (confirmed)", "published"),
        ("refused (dead-lettered)", "dead_lettered"),
        ("deliveries expected", "expected_deliveries"),
        ("deliveries delivered", "delivered"),
        ("deliveries acknowledged", "acknowledged"),
    ] {
        println!("{:<34} {:>12} {:>14}", name, n(&r[key]), n(&raw[key]));
    }
    for (name, key) in [
        ("window (s)", "window_secs"),
        ("published / s", "published_per_sec"),
        ("delivered / s", "delivered_per_sec"),
        ("acknowledged / s", "acknowledged_per_sec"),
    ] {
        println!("{:<34} {:>12} {:>14}", name, f(&r[key]), f(&raw[key]));
    }
    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p95", "p99", "max"
    );
    for (name, v) in [
        ("publish → confirm", &r["publish_confirm_ms"]),
        ("publish → delivered", &r["publish_to_deliver_ms"]),
        ("raw: publish → confirm", &raw["publish_confirm_ms"]),
        ("raw: publish → consumed", &raw["publish_to_deliver_ms"]),
    ] {
        println!(
            "{:<30} {:>9} {:>9} {:>9} {:>9}",
            name,
            f(&v["p50"]),
            f(&v["p95"]),
            f(&v["p99"]),
            f(&v["max"])
        );
    }
    let g = &r["gateway"];
    if !g.is_null() {
        println!();
        super::print_gateway(g);
    }
    let b = &r["baseline"];
    if !b.is_null() {
        println!(
            "{:<34} {:>12}",
            "baseline: db fsync'd inserts / s",
            f(&b["db_inserts_per_sec"])
        );
        println!(
            "{:<34} {:>12}",
            "delivered / s ÷ db baseline",
            match b["gateway_delivered_ratio"].as_f64() {
                Some(x) => format!("{x:.2}"),
                None => "-".to_owned(),
            }
        );
    }
    if !raw.is_null() {
        println!(
            "{:<34} {:>12}",
            "delivered / s ÷ raw RabbitMQ",
            match raw["gateway_delivered_ratio"].as_f64() {
                Some(x) => format!(
                    "{x:.2} ({} the {TARGET_RATIO:.2} target)",
                    if x >= TARGET_RATIO { "meets" } else { "below" }
                ),
                None => "-".to_owned(),
            }
        );
    }
    println!();
    println!("{:<34} {:>12}", "errors", n(&r["error_count"]));
    if let Some(errs) = r["errors"].as_object() {
        for (k, v) in errs {
            println!("  {k:<32} {:>12}", v.to_string());
        }
    }
    if raw["error_count"].as_u64().is_some_and(|e| e > 0) {
        println!(
            "{:<34} {:>12}",
            "raw RabbitMQ errors",
            n(&raw["error_count"])
        );
        if let Some(errs) = raw["errors"].as_object() {
            for (k, v) in errs {
                println!("  {k:<32} {:>12}", v.to_string());
            }
        }
    }
}

fn print_mixed(r: &serde_json::Value) {
    super::print_table(&r["grpc"]);
    println!();
    print_table(&r["amqp"]);
    println!();
    let g = &r["gateway"];
    println!(
        "lienthong bench mixed: both paths at once on one gateway ({} database)",
        r["database"].as_str().unwrap_or("?")
    );
    println!(
        "{:<34} {:>12}",
        "documents (both paths)",
        r["documents"].to_string()
    );
    println!(
        "{:<34} {:>12}",
        "gateway peak RSS (MB)",
        g["peak_rss_kb"]
            .as_f64()
            .map(|k| format!("{:.1}", k / 1024.0))
            .unwrap_or_else(|| "-".to_owned())
    );
    println!(
        "{:<34} {:>12}",
        "gateway CPU s / 1,000 documents",
        match g["cpu_secs_per_1000_docs"].as_f64() {
            Some(x) => format!("{x:.2}"),
            None => "-".to_owned(),
        }
    );
    println!(
        "{:<34} {:>12}",
        "errors (both paths)",
        r["error_count"].to_string()
    );
}
