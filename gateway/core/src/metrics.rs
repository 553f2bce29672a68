//! The pipeline's metrics (DESIGN.md §5): counters and a histogram of what
//! happens to submissions and deliveries, and gauges computed when
//! `/metrics` is scraped (inbox depths with one SQL query, database health).
//! They are registered into the [`Registry`] the gateway is given
//! (`Settings::metrics`); the adapters register their own beside them.
//!
//! Label values are bounded: routes (from the configuration), reason codes
//! (a closed list), and the 20 deepest inboxes plus `other` — never a
//! document or message id.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use lienthong_metrics::{Counter, Family, Gauge, Histogram, ReasonLabel, Registry};
use prometheus_client::encoding::EncodeLabelSet;

use crate::error::Reason;
use lienthong_store::reports::PendingInbox;
use lienthong_types::route::Route;

/// How many agencies get their own inbox series; the rest are `other`.
pub const TOP_INBOXES: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgencyLabel {
    agency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadlineLabel {
    deadline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

/// The pipeline's metrics, registered once per gateway.
pub(crate) struct Metrics {
    registry: Registry,
    /// Held while the scrape-time gauges are set and the text encoded, so
    /// that two scrapes at once do not mix their readings; never across an
    /// await.
    scrape: Mutex<()>,
    accepted: Family<RouteLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    handed_out: Counter,
    acknowledged: Counter,
    accept_seconds: Histogram,
    inbox_depth: Family<AgencyLabel, Gauge>,
    inbox_oldest: Family<AgencyLabel, Gauge<f64, AtomicU64>>,
    database_up: Gauge,
    outbox_depth: Gauge,
    pdf_verified: Family<VerdictLabel, Counter>,
    pdf_bytes_hashed: Counter,
    pdf_limited: Counter,
    overdue: Family<DeadlineLabel, Counter>,
    shed: Counter,
    in_flight: Gauge,
    unauthenticated: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn register(r: &Registry) -> Metrics {
        let accepted = r.counters(
            "lienthong_messages_accepted",
            "Messages (documents and status notices) accepted, by route of their deliveries",
        );
        let refused = r.counters(
            "lienthong_messages_refused",
            "Submissions refused, by reason code",
        );
        let handed_out = r.counter(
            "lienthong_deliveries_handed_out",
            "Deliveries handed to a recipient (each attempt)",
        );
        let acknowledged = r.counter(
            "lienthong_deliveries_acknowledged",
            "Deliveries acknowledged by their recipient",
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
        let database_up = r.gauge(
            "lienthong_database_up",
            "1 when the database answered at the last scrape, else 0",
        );
        let pdf_verified = r.counters(
            "lienthong_pdf_verifications",
            "PDF attachments whose signatures were checked, by verdict: valid, invalid, unsigned, indeterminate",
        );
        let pdf_bytes_hashed = r.counter(
            "lienthong_pdf_bytes_hashed",
            "Bytes fed to the digests of PDF signatures' byte ranges (bounded per PDF by limits.pdf_max_hash_multiple)",
        );
        let pdf_limited = r.counter(
            "lienthong_pdf_checks_limited",
            "PDF attachments not fully checked because a limit was reached (signatures, hashing, unzipped size or ratio)",
        );
        let overdue = r.counters(
            "lienthong_documents_overdue",
            "Recipients that missed a deadline, by deadline: accept (no 03 within the priority's working hours), due (no 06 by the DueDate)",
        );
        let outbox_depth = r.gauge(
            "lienthong_outbox_depth",
            "Outbox rows waiting for the broker's confirm",
        );
        let shed = r.counter(
            "lienthong_submissions_shed",
            "Submissions turned away at once because the gateway was taking its limit of messages (UNAVAILABLE, nothing kept)",
        );
        let in_flight = r.gauge(
            "lienthong_submissions_in_flight",
            "Submissions being taken now (of limits.max_submissions_in_flight)",
        );
        let unauthenticated = r.counters(
            "lienthong_calls_unauthenticated",
            "Calls refused before their caller was identified (no or unacceptable client certificate, a key bound to nobody, a peer over its rate), by reason code",
        );
        Metrics {
            registry: r.clone(),
            scrape: Mutex::new(()),
            accepted,
            refused,
            handed_out,
            acknowledged,
            accept_seconds,
            inbox_depth,
            inbox_oldest,
            database_up,
            outbox_depth,
            pdf_verified,
            pdf_bytes_hashed,
            pdf_limited,
            overdue,
            shed,
            in_flight,
            unauthenticated,
        }
    }

    /// The registry the gateway was given, for the adapters to register
    /// their own metrics into.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A route as a label value: `local`, or `exchange:<name>` from the
/// configured routes (a bounded set); anything else is `other`.
fn route_label(route: &Route) -> String {
    match route {
        Route::Local => "local".to_owned(),
        // One queue per agency: the agency is not a label value.
        Route::Queue(_) => "queue".to_owned(),
        // Exchanges come from the configuration; a name no configuration
        // would hold is not let into a label.
        Route::Exchange(n)
            if !n.is_empty()
                && n.len() <= 100
                && n.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')) =>
        {
            format!("exchange:{n}")
        }
        Route::Exchange(_) => "other".to_owned(),
    }
}

impl Metrics {
    /// A message was accepted; call once per distinct route of its deliveries.
    pub(crate) fn message_accepted(&self, route: &Route) {
        self.accepted
            .get_or_create(&RouteLabel {
                route: route_label(route),
            })
            .inc();
    }

    /// A submission was refused.
    pub(crate) fn message_refused(&self, reason: Reason) {
        self.refused
            .get_or_create(&ReasonLabel::new(reason.as_str()))
            .inc();
    }

    /// A call was refused before its caller was identified.
    pub(crate) fn call_unauthenticated(&self, reason: Reason) {
        self.unauthenticated
            .get_or_create(&ReasonLabel::new(reason.as_str()))
            .inc();
    }

    /// A submission was turned away because the gateway was at its limit of
    /// messages being taken at once.
    pub(crate) fn submission_shed(&self) {
        self.shed.inc();
    }

    /// A submission was admitted (`+1`) or answered (`-1`).
    pub(crate) fn submissions_in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// A delivery was handed to its recipient (every attempt counts).
    pub(crate) fn delivery_handed_out(&self) {
        self.handed_out.inc();
    }

    /// A delivery was acknowledged (the first time only).
    pub(crate) fn delivery_acknowledged(&self) {
        self.acknowledged.inc();
    }

    /// A PDF attachment's signatures were checked (`verdict` is one of the
    /// four verdicts, so the label stays bounded).
    pub(crate) fn pdf_verified(&self, verdict: lienthong_pades::Verdict) {
        self.pdf_verified
            .get_or_create(&VerdictLabel {
                verdict: verdict.as_str().to_owned(),
            })
            .inc();
    }

    /// Bytes hashed for one PDF's signatures.
    pub(crate) fn pdf_bytes_hashed(&self, bytes: u64) {
        self.pdf_bytes_hashed.inc_by(bytes);
    }

    /// A PDF was not fully checked: a bound of `limits.pdf_*` was reached.
    pub(crate) fn pdf_check_limited(&self) {
        self.pdf_limited.inc();
    }

    /// A recipient missed a deadline (`accept` or `due`).
    pub(crate) fn document_overdue(&self, deadline: &'static str) {
        self.overdue
            .get_or_create(&DeadlineLabel {
                deadline: deadline.to_owned(),
            })
            .inc();
    }

    /// How long a submission took from `begin_send` to its durable acceptance.
    pub(crate) fn accept_seconds(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.accept_seconds.observe(seconds);
        }
    }

    /// The metrics text of the whole registry, with the pipeline's gauges
    /// set from `readings` first.
    pub(crate) fn render(&self, readings: Readings) -> String {
        let Readings {
            database_up: up,
            outbox_depth: outbox,
            inboxes: depths,
            now,
        } = readings;
        let _one_scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.database_up.set(i64::from(up));
        if let Some(depth) = outbox {
            self.outbox_depth.set(depth.min(i64::MAX as u64) as i64);
        }
        // Unknown depths are absent rather than stale.
        self.inbox_depth.clear();
        self.inbox_oldest.clear();
        if let Some(depths) = depths {
            let mut other: Option<(u64, f64)> = None;
            for (i, d) in depths.iter().enumerate() {
                if i < TOP_INBOXES {
                    let l = AgencyLabel {
                        agency: d.recipient.clone(),
                    };
                    self.inbox_depth
                        .get_or_create(&l)
                        .set(d.depth.min(i64::MAX as u64) as i64);
                    self.inbox_oldest
                        .get_or_create(&l)
                        .set(d.oldest_seconds(now));
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
                self.inbox_depth
                    .get_or_create(&l)
                    .set(depth.min(i64::MAX as u64) as i64);
                self.inbox_oldest.get_or_create(&l).set(oldest);
            }
        }
        self.registry.encode()
    }
}

/// What the gauges show, read by the gateway at each scrape
/// (`Gateway::metrics_text`).
#[derive(Debug, Default)]
pub(crate) struct Readings {
    pub database_up: bool,
    pub outbox_depth: Option<u64>,
    /// `None` when they could not be read: no inbox series then, rather
    /// than stale ones.
    pub inboxes: Option<Vec<PendingInbox>>,
    /// The instant the inboxes' ages are measured at.
    pub now: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_bounded() {
        let exchange = |n: &str| route_label(&Route::Exchange(n.to_owned()));
        assert_eq!(route_label(&Route::Local), "local");
        assert_eq!(
            route_label(&Route::Queue("lienthong.agency.x".into())),
            "queue"
        );
        assert_eq!(
            exchange("lienthong.documents"),
            "exchange:lienthong.documents"
        );
        assert_eq!(exchange(""), "other");
        assert_eq!(exchange("a b\"c"), "other");
    }
}
