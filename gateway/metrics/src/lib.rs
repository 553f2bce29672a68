//! The metrics registry (DESIGN.md §5), passed to each component that
//! counts something rather than kept in a global.
//!
//! Each component owns its metrics, in the manner of vector's internal
//! events: the pipeline's in `lienthong_core::metrics`, the connection
//! limits' in `lienthong_tls`, the broker's in `lienthong_amqp`. It
//! registers them once, when it is built, into the [`Registry`] it is given,
//! and then counts through methods named for what happened
//! (`message_refused`, `connection_refused`…). Nothing can count into a
//! registry it was not given, so two gateways in one process (as in the
//! tests) never mix their figures.
//!
//! Names follow one pattern, checked when they are registered:
//! `lienthong_<subject>_<what happened or what is measured>`, lower-case,
//! with a unit suffix where there is a unit (`_seconds`, `_bytes`), and
//! without `_total` (the encoder adds it to counters). Label values come
//! from closed sets (reason codes, configured routes, verdicts); never a
//! document or message id.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Metric;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// The content type of [`Registry::encode`]'s text (OpenMetrics, which
/// Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where every metric of one gateway is registered; cheap to clone (the
/// clones share the metrics).
#[derive(Clone)]
pub struct Registry {
    // Held only to register or to encode; never across an await.
    inner: Arc<Mutex<prometheus_client::registry::Registry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

impl Registry {
    /// A registry holding only `lienthong_build_info` (the running version).
    pub fn new() -> Registry {
        let registry = Registry {
            inner: Arc::new(Mutex::new(Default::default())),
        };
        registry.register(
            "lienthong_build",
            "The running version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        registry
    }

    /// Registers `metric` under `name`. A name outside the pattern of the
    /// module's documentation is a programming error, caught by the
    /// components' tests (every component registers at start-up).
    pub fn register(&self, name: &'static str, help: &'static str, metric: impl Metric) {
        debug_assert!(follows_pattern(name), "metric name {name:?}");
        self.lock().register(name, help, metric);
    }

    /// A counter registered under `name`.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        let c = Counter::default();
        self.register(name, help, c.clone());
        c
    }

    /// A gauge registered under `name`.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// A family of counters, one per label set, registered under `name`.
    pub fn counters<L>(&self, name: &'static str, help: &'static str) -> Family<L, Counter>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        let f = Family::<L, Counter>::default();
        self.register(name, help, f.clone());
        f
    }

    /// The OpenMetrics text of every metric registered.
    pub fn encode(&self) -> String {
        let registry = self.lock();
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "metrics: cannot encode");
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, prometheus_client::registry::Registry> {
        // A panic while registering leaves nothing half-done worth refusing
        // a scrape for.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `lienthong_` then lower-case words joined by `_`, not ending in `_total`.
pub fn follows_pattern(name: &str) -> bool {
    name.strip_prefix("lienthong_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('_')
                .all(|w| !w.is_empty() && w.bytes().all(|c| c.is_ascii_lowercase()))
            && !rest.ends_with("_total")
            && rest != "total"
    })
}

/// One label, `reason`: a reason code or another word of a closed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl ReasonLabel {
    pub fn new(reason: &str) -> ReasonLabel {
        ReasonLabel {
            reason: reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for ok in [
            "lienthong_messages_accepted",
            "lienthong_accept_seconds",
            "lienthong_inbox_oldest_unacknowledged_seconds",
        ] {
            assert!(follows_pattern(ok), "{ok}");
        }
        for bad in [
            "messages_accepted",
            "lienthong_",
            "lienthong_Messages",
            "lienthong_messages__accepted",
            "lienthong_messages_accepted_total",
            "lienthong_messages-accepted",
            "lienthong_accept_seconds2",
        ] {
            assert!(!follows_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn registries_do_not_share_counts() {
        let a = Registry::new();
        let b = Registry::new();
        a.counter("lienthong_things_seen", "Things seen").inc();
        let _unused = b.counter("lienthong_things_seen", "Things seen");
        assert!(a.encode().contains("lienthong_things_seen_total 1\n"));
        assert!(b.encode().contains("lienthong_things_seen_total 0\n"));
        assert!(a.encode().contains("lienthong_build_info{version=\""));
        assert!(a.encode().ends_with("# EOF\n"));
    }

    #[test]
    fn clones_share_their_metrics() {
        let a = Registry::new();
        let c = a
            .clone()
            .counters::<ReasonLabel>("lienthong_calls_refused", "Calls refused");
        c.get_or_create(&ReasonLabel::new("MALFORMED")).inc_by(2);
        assert!(
            a.encode()
                .contains("lienthong_calls_refused_total{reason=\"MALFORMED\"} 2\n")
        );
    }
}
