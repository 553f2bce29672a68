//! Prometheus metrics (DESIGN.md §5): counters and a histogram the pipeline
//! feeds through the plain functions below, and gauges computed when
//! `/metrics` is scraped (inbox depths with one SQL query, database health).
//!
//! The exposition is the OpenMetrics text format (`prometheus-client`),
//! which Prometheus scrapes natively; serve it with [`CONTENT_TYPE`].
//!
//! Label values are bounded: routes (from the configuration), reason codes
//! (a closed list), and the 20 deepest inboxes plus `other` — never a
//! document or message id.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::error::Reason;
use lienthong_store::reports::PendingInbox;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many agencies get their own inbox series; the rest are `other`.
pub const TOP_INBOXES: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgencyLabel {
    agency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadlineLabel {
    deadline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

struct Metrics {
    /// Held only while scrape-time gauges are set and the text is encoded;
    /// never across an await.
    registry: Mutex<Registry>,
    accepted: Family<RouteLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    handed_out: Counter,
    acknowledged: Counter,
    accept_seconds: Histogram,
    inbox_depth: Family<AgencyLabel, Gauge>,
    inbox_oldest: Family<AgencyLabel, Gauge<f64, AtomicU64>>,
    database_up: Gauge,
    published: Family<ResultLabel, Counter>,
    dead_lettered: Family<ReasonLabel, Counter>,
    pdf_verified: Family<VerdictLabel, Counter>,
    pdf_bytes_hashed: Counter,
    pdf_limited: Counter,
    overdue: Family<DeadlineLabel, Counter>,
    redelivered: Counter,
    broker_up: Gauge,
    outbox_depth: Gauge,
    shed: Counter,
    in_flight: Gauge,
    unauthenticated: Family<ReasonLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::default();
    let accepted = Family::<RouteLabel, Counter>::default();
    r.register(
        "lienthong_messages_accepted",
        "Messages (documents and status notices) accepted, by route of their deliveries",
        accepted.clone(),
    );
    let refused = Family::<ReasonLabel, Counter>::default();
    r.register(
        "lienthong_messages_refused",
        "Submissions refused, by reason code",
        refused.clone(),
    );
    let handed_out = Counter::default();
    r.register(
        "lienthong_deliveries_handed_out",
        "Deliveries handed to a recipient (each attempt)",
        handed_out.clone(),
    );
    let acknowledged = Counter::default();
    r.register(
        "lienthong_deliveries_acknowledged",
        "Deliveries acknowledged by their recipient",
        acknowledged.clone(),
    );
    // 1 ms … about 33 s.
    let accept_seconds = Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]);
    r.register(
        "lienthong_accept_seconds",
        "Time from the start of a submission to its durable acceptance",
        accept_seconds.clone(),
    );
    let inbox_depth = Family::<AgencyLabel, Gauge>::default();
    r.register(
        "lienthong_inbox_depth",
        "Unacknowledged deliveries per agency (the 20 deepest inboxes, the rest as other)",
        inbox_depth.clone(),
    );
    let inbox_oldest = Family::<AgencyLabel, Gauge<f64, AtomicU64>>::default();
    r.register(
        "lienthong_inbox_oldest_unacknowledged_seconds",
        "Age of the oldest unacknowledged delivery per agency (the 20 deepest inboxes, the rest as other)",
        inbox_oldest.clone(),
    );
    let database_up = Gauge::default();
    r.register(
        "lienthong_database_up",
        "1 when the database answered at the last scrape, else 0",
        database_up.clone(),
    );
    let published = Family::<ResultLabel, Counter>::default();
    r.register(
        "lienthong_amqp_publishes",
        "AMQP publications of the outbox relay by broker answer: confirmed, nacked, returned (no queue bound), failed (connection lost before the confirm)",
        published.clone(),
    );
    let dead_lettered = Family::<ReasonLabel, Counter>::default();
    r.register(
        "lienthong_amqp_dead_lettered",
        "Messages taken from the inbound queue and dead-lettered, by reason code",
        dead_lettered.clone(),
    );
    let pdf_verified = Family::<VerdictLabel, Counter>::default();
    r.register(
        "lienthong_pdf_verifications",
        "PDF attachments whose signatures were checked, by verdict: valid, invalid, unsigned, indeterminate",
        pdf_verified.clone(),
    );
    let pdf_bytes_hashed = Counter::default();
    r.register(
        "lienthong_pdf_bytes_hashed",
        "Bytes fed to the digests of PDF signatures' byte ranges (bounded per PDF by limits.pdf_max_hash_multiple)",
        pdf_bytes_hashed.clone(),
    );
    let pdf_limited = Counter::default();
    r.register(
        "lienthong_pdf_checks_limited",
        "PDF attachments not fully checked because a limit was reached (signatures, hashing, unzipped size or ratio)",
        pdf_limited.clone(),
    );
    let overdue = Family::<DeadlineLabel, Counter>::default();
    r.register(
        "lienthong_documents_overdue",
        "Recipients that missed a deadline, by deadline: accept (no 03 within the priority's working hours), due (no 06 by the DueDate)",
        overdue.clone(),
    );
    let redelivered = Counter::default();
    r.register(
        "lienthong_amqp_redelivered",
        "Messages the broker delivered again to the consumer (redelivered flag set)",
        redelivered.clone(),
    );
    let broker_up = Gauge::default();
    r.register(
        "lienthong_broker_up",
        "1 while the AMQP connection is up with its topology declared, else 0 (always 0 without amqp.url)",
        broker_up.clone(),
    );
    let outbox_depth = Gauge::default();
    r.register(
        "lienthong_outbox_depth",
        "Outbox rows waiting for the broker's confirm",
        outbox_depth.clone(),
    );
    r.register(
        "lienthong_build",
        "The running version",
        Info::new(VersionLabel {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
    );
    let shed = Counter::default();
    r.register(
        "lienthong_submissions_shed",
        "Submissions turned away at once because the gateway was taking its limit of messages (UNAVAILABLE, nothing kept)",
        shed.clone(),
    );
    let in_flight = Gauge::default();
    r.register(
        "lienthong_submissions_in_flight",
        "Submissions being taken now (of limits.max_submissions_in_flight)",
        in_flight.clone(),
    );
    let unauthenticated = Family::<ReasonLabel, Counter>::default();
    r.register(
        "lienthong_calls_unauthenticated",
        "Calls refused before their caller was identified (no or unacceptable client certificate, a key bound to nobody, a peer over its rate), by reason code",
        unauthenticated.clone(),
    );
    let connections_refused = Family::<ReasonLabel, Counter>::default();
    r.register(
        "lienthong_connections_refused",
        "Connections to the gRPC listener closed before any call: peer_handshakes, handshakes, peer_connections (over a limit), handshake_failed, handshake_timeout",
        connections_refused.clone(),
    );
    Metrics {
        registry: Mutex::new(r),
        accepted,
        refused,
        handed_out,
        acknowledged,
        accept_seconds,
        inbox_depth,
        inbox_oldest,
        database_up,
        published,
        dead_lettered,
        pdf_verified,
        pdf_bytes_hashed,
        pdf_limited,
        overdue,
        redelivered,
        broker_up,
        outbox_depth,
        shed,
        in_flight,
        unauthenticated,
        connections_refused,
    }
});

/// A route as a label value: `local`, or `exchange:<name>` from the
/// configured routes (a bounded set); anything else is `other`.
fn route_label(route: &str) -> String {
    if route.starts_with("queue:") {
        // One queue per agency: the agency is not a label value.
        return "queue".to_owned();
    }
    let ok = route == "local"
        || route.strip_prefix("exchange:").is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 100
                && n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        });
    if ok {
        route.to_owned()
    } else {
        "other".to_owned()
    }
}

/// A message was accepted; call once per distinct route of its deliveries.
pub fn message_accepted(route: &str) {
    METRICS
        .accepted
        .get_or_create(&RouteLabel {
            route: route_label(route),
        })
        .inc();
}

/// A submission was refused.
pub fn message_refused(reason: Reason) {
    METRICS
        .refused
        .get_or_create(&ReasonLabel {
            reason: reason.as_str().to_owned(),
        })
        .inc();
}

/// A call was refused before its caller was identified.
pub fn call_unauthenticated(reason: Reason) {
    METRICS
        .unauthenticated
        .get_or_create(&ReasonLabel {
            reason: reason.as_str().to_owned(),
        })
        .inc();
}

/// A connection was closed before any call; `why` is one of a closed set
/// (see the metric's help).
pub fn connection_refused(why: &'static str) {
    METRICS
        .connections_refused
        .get_or_create(&ReasonLabel {
            reason: why.to_owned(),
        })
        .inc();
}

/// A submission was turned away because the gateway was at its limit of
/// messages being taken at once.
pub fn submission_shed() {
    METRICS.shed.inc();
}

/// A submission was admitted (`+1`) or answered (`-1`).
pub fn submissions_in_flight(delta: i64) {
    METRICS.in_flight.inc_by(delta);
}

/// A delivery was handed to its recipient (every attempt counts).
pub fn delivery_handed_out() {
    METRICS.handed_out.inc();
}

/// A delivery was acknowledged (the first time only).
pub fn delivery_acknowledged() {
    METRICS.acknowledged.inc();
}

/// The broker answered a publication of the outbox relay: `confirmed`,
/// `nacked`, `returned` or `failed`.
pub fn amqp_published(result: &'static str) {
    METRICS
        .published
        .get_or_create(&ResultLabel {
            result: result.to_owned(),
        })
        .inc();
}

/// A message of the inbound queue went to the dead-letter exchange.
pub fn amqp_dead_lettered(reason: Reason) {
    METRICS
        .dead_lettered
        .get_or_create(&ReasonLabel {
            reason: reason.as_str().to_owned(),
        })
        .inc();
}

/// A PDF attachment's signatures were checked (`verdict` is one of the
/// four verdicts, so the label stays bounded).
pub fn pdf_verified(verdict: lienthong_pades::Verdict) {
    METRICS
        .pdf_verified
        .get_or_create(&VerdictLabel {
            verdict: verdict.as_str().to_owned(),
        })
        .inc();
}

/// Bytes hashed for one PDF's signatures.
pub fn pdf_bytes_hashed(bytes: u64) {
    METRICS.pdf_bytes_hashed.inc_by(bytes);
}

/// A PDF was not fully checked: a bound of `limits.pdf_*` was reached.
pub fn pdf_check_limited() {
    METRICS.pdf_limited.inc();
}

/// A recipient missed a deadline (`accept` or `due`).
pub fn document_overdue(deadline: &'static str) {
    METRICS
        .overdue
        .get_or_create(&DeadlineLabel {
            deadline: deadline.to_owned(),
        })
        .inc();
}

/// The broker delivered a message again.
pub fn amqp_redelivered() {
    METRICS.redelivered.inc();
}

/// The AMQP connection came up (topology declared) or went down.
pub fn broker_up(up: bool) {
    METRICS.broker_up.set(i64::from(up));
}

/// How long a submission took from `begin_send` to its durable acceptance.
pub fn accept_seconds(seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        METRICS.accept_seconds.observe(seconds);
    }
}

/// What the gauges show, read by the gateway at each scrape
/// (`Gateway::metrics_text`).
#[derive(Debug, Default)]
pub struct Readings {
    pub database_up: bool,
    pub outbox_depth: Option<u64>,
    /// `None` when they could not be read: no inbox series then, rather
    /// than stale ones.
    pub inboxes: Option<Vec<PendingInbox>>,
    /// The instant the inboxes' ages are measured at.
    pub now: i64,
}

/// The metrics text: the counters, and the gauges of `readings`.
pub fn render(readings: Readings) -> String {
    let Readings {
        database_up: up,
        outbox_depth: outbox,
        inboxes: depths,
        now,
    } = readings;
    let m = &*METRICS;
    let registry = m.registry.lock().unwrap_or_else(|p| p.into_inner());
    m.database_up.set(i64::from(up));
    if let Some(depth) = outbox {
        m.outbox_depth.set(depth.min(i64::MAX as u64) as i64);
    }
    // Unknown depths are absent rather than stale.
    m.inbox_depth.clear();
    m.inbox_oldest.clear();
    if let Some(depths) = depths {
        let mut other: Option<(u64, f64)> = None;
        for (i, d) in depths.iter().enumerate() {
            if i < TOP_INBOXES {
                let l = AgencyLabel {
                    agency: d.recipient.clone(),
                };
                m.inbox_depth
                    .get_or_create(&l)
                    .set(d.depth.min(i64::MAX as u64) as i64);
                m.inbox_oldest.get_or_create(&l).set(d.oldest_seconds(now));
            } else {
                let o = other.get_or_insert((0, 0.0));
                o.0 += d.depth;
                o.1 = o.1.max(d.oldest_seconds(now));
            }
        }
        if let Some((depth, oldest)) = other {
            let l = AgencyLabel {
                agency: "other".to_owned(),
            };
            m.inbox_depth
                .get_or_create(&l)
                .set(depth.min(i64::MAX as u64) as i64);
            m.inbox_oldest.get_or_create(&l).set(oldest);
        }
    }
    let mut out = String::with_capacity(4096);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "metrics: cannot encode");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label("local"), "local");
        assert_eq!(
            route_label("exchange:lienthong.documents"),
            "exchange:lienthong.documents"
        );
        assert_eq!(route_label("exchange:"), "other");
        assert_eq!(route_label("exchange:a b\"c"), "other");
        assert_eq!(route_label("000.00.01.H35"), "other");
    }
}
