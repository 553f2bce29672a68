//! The AMQP adapter: the national exchange, other gateways, and agencies
//! that would rather read a queue than call gRPC (DESIGN.md §4).
//!
//! A source and a sink around the one pipeline:
//! - **consumer** (source): takes messages from the inbound queue, up to
//!   `amqp.prefetch` at once and in order per sender and recipient, feeds
//!   each to `Gateway::begin_send_arrived`, and acknowledges it to the
//!   broker only after the pipeline made it durable. What can never be
//!   accepted goes to the dead-letter exchange with its reason; what failed
//!   for a passing reason (the database is down) is held and tried again,
//!   unacknowledged, so nothing is lost and the order is kept.
//! - **relay** (sink): publishes the outbox — rows written in the same
//!   transaction that accepted their message — with publisher confirms, and
//!   marks a row sent only on the broker's confirm.
//!
//! A supervisor owns the connection: it declares the topology, runs both,
//! and when the broker goes away it reconnects with backoff and starts over.
//! The adapter knows nothing of the database: it talks to the core only.

mod consumer;
mod directory;
mod relay;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::{
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use lienthong_core::national_directory::DirectoryExchange;
use lienthong_core::pipeline::Gateway;
use lienthong_core::routing::RouteTable;
use lienthong_metrics::{Counter, Family, Gauge, ReasonLabel, Registry};
use prometheus_client::encoding::EncodeLabelSet;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The `[amqp]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://…`; for the nodes of
    /// a RabbitMQ cluster, one URL per node separated by commas. Without it
    /// AMQP is off.
    pub url: Option<String>,
    /// The topic exchange documents travel on (routing key: the recipient).
    pub exchange: String,
    /// This gateway's inbound queue, bound with every `local` route pattern.
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// The direct exchange this gateway publishes to its queue-reading
    /// agencies through (each agency's queue bound with its own name), so
    /// that its broker account needs no right on the default exchange,
    /// which reaches every queue of the virtual host.
    pub agency_exchange: String,
    /// Unacknowledged messages the broker may hand the consumer at once:
    /// the messages the consumer works on at once (in order per sender and
    /// recipient).
    pub prefetch: u16,
    /// Publications the relay may have waiting for their confirm at once.
    pub confirm_window: usize,
    /// A message delivered more often than this without being accepted is
    /// dead-lettered (it is poison: it keeps stopping the gateway).
    pub max_redeliveries: u32,
    /// A message whose processing failed this many times, for a reason of
    /// the gateway's (`UNAVAILABLE`, `INTERNAL`), while the gateway was
    /// otherwise healthy, is dead-lettered: no message can hold the queue.
    /// Failures during an outage are not counted.
    pub max_failures: u32,
    /// The largest message published or taken: RabbitMQ's own limit
    /// (`max_message_size`, 16 MiB by default since RabbitMQ 4).
    pub max_message_bytes: u64,
    /// The longest wait between two connection attempts.
    pub reconnect_max_secs: u64,
    pub tls: AmqpTls,
    /// The topic exchange of the national directory exchange (signed
    /// directory updates between gateways; `[[peers]]`).
    pub directory_exchange: String,
    /// This gateway's queue on it (default `lienthong.directory.<gateway.id>`).
    pub directory_queue: Option<String>,
    /// How often the directory is compared with what was announced to the
    /// peers (changes made meanwhile travel as one update).
    pub directory_interval_ms: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: None,
            exchange: lienthong_core::routing::DOCUMENTS_EXCHANGE.to_owned(),
            queue: "lienthong.inbound".to_owned(),
            dead_letter_exchange: "lienthong.dead".to_owned(),
            dead_letter_queue: "lienthong.dead".to_owned(),
            agency_exchange: "lienthong.agencies".to_owned(),
            prefetch: 32,
            confirm_window: 64,
            max_redeliveries: 10,
            max_failures: 10,
            max_message_bytes: 16 * 1024 * 1024,
            reconnect_max_secs: 30,
            tls: AmqpTls::default(),
            directory_exchange: lienthong_core::national_directory::DIRECTORY_EXCHANGE.to_owned(),
            directory_queue: None,
            directory_interval_ms: 1000,
        }
    }
}

/// TLS for `amqps://` URLs (rustls with ring).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpTls {
    /// PEM file of the authority that issued the broker's certificate
    /// (default: the public web roots).
    pub ca: Option<PathBuf>,
    /// The gateway's client certificate chain (PEM) and key (PKCS#8 PEM),
    /// for brokers that authenticate clients by certificate.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The adapter's metrics, registered into the gateway's registry.
#[derive(Debug, Clone)]
pub(crate) struct AmqpMetrics {
    published: Family<ResultLabel, Counter>,
    dead_lettered: Family<ReasonLabel, Counter>,
    redelivered: Counter,
    broker_up: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl AmqpMetrics {
    fn register(r: &Registry) -> AmqpMetrics {
        AmqpMetrics {
            published: r.counters(
                "lienthong_amqp_publishes",
                "AMQP publications of the outbox relay by broker answer: confirmed, nacked, returned (no queue bound), failed (connection lost before the confirm)",
            ),
            dead_lettered: r.counters(
                "lienthong_amqp_dead_lettered",
                "Messages taken from the inbound queue and dead-lettered, by reason code",
            ),
            redelivered: r.counter(
                "lienthong_amqp_redelivered",
                "Messages the broker delivered again to the consumer (redelivered flag set)",
            ),
            broker_up: r.gauge(
                "lienthong_broker_up",
                "1 while the AMQP connection is up with its topology declared, else 0 (always 0 without amqp.url)",
            ),
        }
    }

    /// The broker answered a publication of the outbox relay: `confirmed`,
    /// `nacked`, `returned` or `failed`.
    pub(crate) fn published(&self, result: &'static str) {
        self.published.get_or_create(&ResultLabel { result }).inc();
    }

    /// A message of the inbound queue went to the dead-letter exchange.
    pub(crate) fn dead_lettered(&self, reason: lienthong_core::error::Reason) {
        self.dead_lettered
            .get_or_create(&ReasonLabel::new(reason.as_str()))
            .inc();
    }

    /// The broker delivered a message again.
    pub(crate) fn redelivered(&self) {
        self.redelivered.inc();
    }
}

/// What `/health/ready` and the metrics read.
#[derive(Debug)]
pub struct BrokerState {
    up: AtomicBool,
    metrics: AmqpMetrics,
    // Held only to copy a string in or out, never across an await.
    last_error: std::sync::Mutex<String>,
}

impl BrokerState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why the connection is down, when it is.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn set_up(&self) {
        self.up.store(true, Ordering::Relaxed);
        self.metrics.broker_up.set(1);
    }

    /// Another replica holds the lease: nothing to connect for, and
    /// nothing wrong.
    fn set_standby(&self) {
        self.up.store(true, Ordering::Relaxed);
        self.metrics.broker_up.set(0);
        if let Ok(mut s) = self.last_error.lock() {
            "standing by: another replica consumes the inbound queue and relays the outbox"
                .clone_into(&mut s);
        }
    }

    fn set_down(&self, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.metrics.broker_up.set(0);
        if let Ok(mut s) = self.last_error.lock() {
            *s = why.to_owned();
        }
    }
}

/// Why a run of the connection ended.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("the broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("{0}")]
    Setup(String),
    #[error("the gateway's database: {0}")]
    Core(#[from] lienthong_core::error::Error),
}

/// The lease of the consumer and the relay (one replica at a time).
const LEASE: &str = "amqp";

/// A replica still waiting for the lease after this stands by: another
/// holds it.
const STANDBY_AFTER: Duration = Duration::from_secs(3);

/// How long a stopping gateway waits for the messages it is checking and
/// the confirms of what it published, before it closes the connection
/// anyway (well inside systemd's 90 s stop timeout).
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Starts the adapter: a task that keeps a connection to the broker until
/// `shutdown` turns true. Returns what health checks read.
pub fn spawn(
    gw: Gateway,
    cfg: AmqpConfig,
    routes: RouteTable,
    directory: Option<Arc<DirectoryExchange>>,
    mut shutdown: watch::Receiver<bool>,
) -> (Arc<BrokerState>, tokio::task::JoinHandle<()>) {
    let state = Arc::new(BrokerState {
        up: AtomicBool::new(false),
        metrics: AmqpMetrics::register(gw.metrics_registry()),
        last_error: Default::default(),
    });
    state.set_down("not connected yet");
    let st = state.clone();
    let task = tokio::spawn(async move {
        let max = Duration::from_secs(cfg.reconnect_max_secs.max(1));
        let mut backoff = Duration::from_millis(200);
        let book = consumer::FailureBook::default();
        // The consumer and the relay run on one replica at a time: two
        // consumers of the inbound queue, or two relays of the outbox, would
        // break the order per sender and recipient.
        let mut lease = None;
        let mut attempt = Attempt::default();
        loop {
            if lease.is_none() {
                let mut stop = shutdown.clone();
                let asking = gw.lease(LEASE);
                tokio::pin!(asking);
                // Granted at once to the only replica, or to the first: only
                // one that waits is standing by (and healthy).
                let standby = tokio::time::sleep(STANDBY_AFTER);
                tokio::pin!(standby);
                let mut standing_by = false;
                let taken = loop {
                    tokio::select! {
                        l = &mut asking => break l,
                        _ = &mut standby, if !standing_by => {
                            standing_by = true;
                            st.set_standby();
                        }
                        _ = stop.wait_for(|s| *s) => {
                            st.set_down("shut down");
                            return;
                        }
                    }
                };
                match taken {
                    Ok(l) => {
                        tracing::info!(
                            "AMQP: this replica consumes the inbound queue and relays the outbox"
                        );
                        lease = Some(l);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.chain(), "AMQP: cannot ask for the lease; trying again");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                }
            }
            let Some(held) = lease.as_mut() else {
                continue;
            };
            attempt.connected = false;
            let run = run_once(
                &gw,
                &cfg,
                (&routes, directory.as_ref()),
                &st,
                &mut attempt,
                &book,
                shutdown.clone(),
            );
            let mut stop = shutdown.clone();
            let mut lost = false;
            let ended = tokio::select! {
                r = run => r,
                _ = held.lost() => {
                    lost = true;
                    Err(AmqpError::Setup("this replica lost the AMQP lease (its database connection); another replica takes over".to_owned()))
                }
                _ = async {
                    let _ = stop.wait_for(|s| *s).await;
                    tokio::time::sleep(DRAIN_GRACE).await;
                } => {
                    tracing::warn!(grace_secs = DRAIN_GRACE.as_secs(), "AMQP: stopped before everything in flight was settled; the broker hands back what was not acknowledged, and unconfirmed publications go again at the next start");
                    Ok(())
                }
            };
            if lost {
                lease = None;
            }
            match ended {
                Ok(()) => {
                    st.set_down("shut down");
                    return;
                }
                Err(e) => {
                    let why = e.to_string();
                    st.set_down(&why);
                    if attempt.connected {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "AMQP connection lost or refused; reconnecting");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|s| *s) => {
                    st.set_down("shut down");
                    return;
                }
            }
            backoff = (backoff * 2).min(max);
        }
    });
    (state, task)
}

/// What one connection attempt leaves for the next.
#[derive(Default)]
struct Attempt {
    /// The node of `amqp.url` to try first.
    next_node: usize,
    /// Whether it got as far as the topology (the backoff starts again).
    connected: bool,
}

async fn run_once(
    gw: &Gateway,
    cfg: &AmqpConfig,
    (routes, directory): (&RouteTable, Option<&Arc<DirectoryExchange>>),
    state: &BrokerState,
    attempt: &mut Attempt,
    book: &consumer::FailureBook,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    let conn = connect_any(cfg, &mut attempt.next_node).await?;
    let mut topology = conn.create_channel().await?;
    declare(&conn, &mut topology, cfg, routes).await?;
    if let Some(x) = directory {
        directory::declare(&conn, &mut topology, cfg, x).await?;
    }
    // Agencies that read a queue get it now, so they can subscribe before
    // their first document (the relay declares newer ones as it goes).
    for id in gw.queue_agencies().await? {
        declare_agency_queue(&topology, cfg, &lienthong_core::routing::agency_queue(&id)).await?;
    }
    let consume_ch = conn.create_channel().await?;
    consume_ch
        .basic_qos(cfg.prefetch.max(1), BasicQosOptions::default())
        .await?;
    let dead_ch = conn.create_channel().await?;
    dead_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let relay_ch = conn.create_channel().await?;
    relay_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    attempt.connected = true;
    state.set_up();
    tracing::info!(queue = %cfg.queue, exchange = %cfg.exchange, "AMQP connected; topology declared");
    let stopping = shutdown.clone();
    // Either ends the connection when it fails; at a stop, each finishes
    // what it started and the connection closes after both.
    let result = tokio::try_join!(
        consumer::run(
            gw,
            cfg,
            &state.metrics,
            &consume_ch,
            &dead_ch,
            book,
            shutdown.clone()
        ),
        relay::run(
            gw,
            cfg,
            &state.metrics,
            &relay_ch,
            &topology,
            shutdown.clone()
        ),
        async {
            match directory {
                Some(x) => directory::run(x.clone(), cfg, &conn, shutdown).await,
                None => Ok(()),
            }
        },
    )
    .map(|_| ());
    // Best effort: the broker requeues what was not acknowledged.
    let why = if *stopping.borrow() {
        "lienthong: stopping"
    } else {
        "lienthong: reconnecting"
    };
    let _ = conn.close(200, why.into()).await;
    result
}

/// The URLs of `amqp.url`: one per node of the broker's cluster.
fn node_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Connects to the first node that answers, starting at `*next` and going
/// round. The node after the one connected is tried first next time: when
/// the connection is lost because its node went down, the next attempt does
/// not begin by waiting on it.
async fn connect_any(cfg: &AmqpConfig, next: &mut usize) -> Result<Connection, AmqpError> {
    let urls = node_urls(cfg.url.as_deref().unwrap_or_default());
    if urls.is_empty() {
        return Err(AmqpError::Setup("amqp.url is not set".to_owned()));
    }
    let mut last = None;
    for k in 0..urls.len() {
        let i = (*next + k) % urls.len();
        match connect(urls[i], &cfg.tls).await {
            Ok(conn) => {
                *next = (i + 1) % urls.len();
                if urls.len() > 1 {
                    tracing::info!(
                        node = i + 1,
                        nodes = urls.len(),
                        "AMQP: connected to node {} of amqp.url",
                        i + 1
                    );
                }
                return Ok(conn);
            }
            Err(e) => {
                if urls.len() > 1 {
                    tracing::warn!(node = i + 1, error = %e, "AMQP: node {} of amqp.url refused; trying the next", i + 1);
                }
                last = Some(e);
            }
        }
    }
    *next = (*next + 1) % urls.len();
    Err(last.unwrap_or_else(|| AmqpError::Setup("amqp.url is not set".to_owned())))
}

async fn connect(url: &str, tls: &AmqpTls) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_client_property(
        "connection_name".into(),
        LongString::from(format!("lienthong {}", env!("CARGO_PKG_VERSION"))),
    );
    if !url.starts_with("amqps://") {
        return Ok(Connection::connect(url, props).await?);
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| AmqpError::Setup(format!("cannot read {}: {e}", p.display())))
    };
    let mut config = lapin::tcp::OwnedTLSConfig::default();
    if let Some(ca) = &tls.ca {
        config.cert_chain = Some(
            String::from_utf8(read(ca)?)
                .map_err(|_| AmqpError::Setup(format!("{} is not PEM text", ca.display())))?,
        );
    }
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config.identity = Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read(cert)?,
                key: read(key)?,
            });
        }
        (None, None) => {}
        _ => {
            return Err(AmqpError::Setup(
                "amqp.tls.cert and amqp.tls.key go together; set both or neither".to_owned(),
            ));
        }
    }
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| AmqpError::Setup(format!("no async runtime for AMQP: {e}")))?;
    Ok(Connection::connect_with_config(url, props, config, runtime).await?)
}

/// Quorum queues replicate and survive restarts. An inbound queue names
/// the dead-letter exchange and, as routing key, its own name: what the
/// broker itself gives up on lands in this gateway's dead-letter queue,
/// not in those of other gateways sharing the exchange.
fn quorum_args(dead_letter: Option<(&str, &str)>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some((dlx, key)) = dead_letter {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(key.into()),
        );
    }
    args
}

/// Checks what can be checked before connecting: the URL's scheme and the
/// TLS files, so that a typo stops the start instead of a silent retry loop.
pub fn check(cfg: &AmqpConfig) -> Result<(), String> {
    let Some(url) = &cfg.url else {
        return Ok(());
    };
    let urls = node_urls(url);
    if urls.is_empty() {
        return Err(
            "amqp.url is empty: give the broker's URL, or leave it out to turn AMQP off".to_owned(),
        );
    }
    if urls
        .iter()
        .any(|u| !(u.starts_with("amqp://") || u.starts_with("amqps://")))
    {
        return Err("amqp.url must start with amqp:// or amqps:// (each URL, when several nodes are listed separated by commas)".to_owned());
    }
    let tls = urls[0].starts_with("amqps://");
    if urls.iter().any(|u| u.starts_with("amqps://") != tls) {
        return Err("amqp.url lists nodes with amqp:// and others with amqps://: one broker's nodes are reached the same way".to_owned());
    }
    let t = &cfg.tls;
    if t.cert.is_some() != t.key.is_some() {
        return Err("amqp.tls.cert and amqp.tls.key go together; set both or neither".to_owned());
    }
    for (key, path) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
        if let Some(p) = path
            && let Err(e) = std::fs::read(p)
        {
            return Err(format!("amqp.tls.{key}: cannot read {}: {e}", p.display()));
        }
    }
    if !tls && (t.ca.is_some() || t.cert.is_some()) {
        return Err("amqp.tls.* is set but amqp.url is not amqps://".to_owned());
    }
    Ok(())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Whether the broker answered "not found" (and closed the channel).
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 404)
}

fn is_access_refused(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a) if a.get_id() == 403)
}

/// Declares an exchange only when it is missing. A passive declaration
/// needs no permission: on a shared broker the exchanges every gateway uses
/// (the documents exchange, those of the routes) are the broker operator's,
/// and a gateway's account has no configure right on them — that right
/// would also let it delete them.
async fn ensure_exchange(
    conn: &Connection,
    ch: &mut Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), AmqpError> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(name.into(), kind.clone(), passive, FieldTable::default())
        .await
    {
        Ok(()) => return Ok(()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    *ch = conn.create_channel().await?;
    let active = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    match ch
        .exchange_declare(name.into(), kind, active, FieldTable::default())
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_access_refused(&e) => Err(AmqpError::Setup(format!(
            "the exchange {name} does not exist on the broker and this gateway's account may not create it ({e}); ask the broker's operator to declare it (see docs/amqp.md, \"Permissions on a shared broker\")"
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn declare(
    conn: &Connection,
    ch: &mut Channel,
    cfg: &AmqpConfig,
    routes: &RouteTable,
) -> Result<(), AmqpError> {
    ensure_exchange(conn, ch, &cfg.exchange, ExchangeKind::Topic).await?;
    for name in routes.exchanges() {
        if name != cfg.exchange {
            ensure_exchange(conn, ch, name, ExchangeKind::Topic).await?;
        }
    }
    ensure_exchange(conn, ch, &cfg.dead_letter_exchange, ExchangeKind::Direct).await?;
    ensure_exchange(conn, ch, &cfg.agency_exchange, ExchangeKind::Direct).await?;
    ch.queue_declare(
        cfg.dead_letter_queue.as_str().into(),
        durable(),
        quorum_args(None),
    )
    .await?;
    ch.queue_bind(
        cfg.dead_letter_queue.as_str().into(),
        cfg.dead_letter_exchange.as_str().into(),
        cfg.queue.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        cfg.queue.as_str().into(),
        durable(),
        quorum_args(Some((&cfg.dead_letter_exchange, &cfg.queue))),
    )
    .await?;
    for pattern in routes.local_patterns() {
        ch.queue_bind(
            cfg.queue.as_str().into(),
            cfg.exchange.as_str().into(),
            pattern.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// Declares an agency's own queue and binds it to the agency exchange with
/// its own name (before the first publication to it on a connection: the
/// exchange drops what no queue is bound for).
async fn declare_agency_queue(ch: &Channel, cfg: &AmqpConfig, name: &str) -> Result<(), AmqpError> {
    ch.queue_declare(name.into(), durable(), quorum_args(None))
        .await?;
    ch.queue_bind(
        name.into(),
        cfg.agency_exchange.as_str().into(),
        name.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> AmqpConfig {
        AmqpConfig {
            url: Some(url.to_owned()),
            ..AmqpConfig::default()
        }
    }

    #[test]
    fn the_nodes_of_a_cluster_are_listed_with_commas() {
        assert_eq!(
            node_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,amqp://c:5672/%2f,"),
            [
                "amqp://a:5672/%2f",
                "amqp://b:5672/%2f",
                "amqp://c:5672/%2f"
            ]
        );
        assert!(check(&with_url("amqp://a:5672/%2f,amqp://b:5672/%2f")).is_ok());
    }

    #[test]
    fn a_list_that_mixes_schemes_or_is_empty_is_refused() {
        let mixed = check(&with_url("amqp://a:5672/%2f,amqps://b:5671/%2f")).unwrap_err();
        assert!(mixed.contains("reached the same way"), "{mixed}");
        let bad = check(&with_url("amqp://a:5672/%2f,http://b")).unwrap_err();
        assert!(bad.contains("must start with amqp://"), "{bad}");
        let empty = check(&with_url(" , ")).unwrap_err();
        assert!(empty.contains("amqp.url is empty"), "{empty}");
    }
}
