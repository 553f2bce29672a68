//! Maintenance notices: an operator announces a maintenance
//! window (`lienthong admin maintenance`), agency software learns of it on
//! its `Receive` stream ahead of time, and the dashboard shows it.
//!
//! A window is a row of `maintenance_windows`, written by the operator's
//! command on the database directly (like the directory commands), never
//! deleted: cancelling it sets `cancelled_at`.
//!
//! How a notice reaches the streams: `serve` runs [`watch_maintenance`],
//! which reads the windows not yet over every [`POLL_INTERVAL`] and
//! publishes them on a `watch` channel held by the [`Gateway`]. Each
//! `Receive` call takes a [`NoticeFeed`] ([`Gateway::notice_feed`]): it first
//! reads the table itself (so a new call is never staler than the
//! database), then follows the channel and turns every window it has not
//! told yet, and every cancellation of one it told, into a notice
//! `Delivery` (no envelope, no `delivery_id`, never acknowledged). Notices
//! travel beside the inbox, never through it: the order of deliveries,
//! their acknowledgement and redelivery do not see them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lienthong_proto::v1::{Delivery, GatewayNotice};
use serde::Serialize;
use tokio::sync::watch;

use crate::error::{Error, Reason, Result};
use crate::store::{Store, now_micros};
use lienthong_types::calendar::format_rfc3339;
use lienthong_types::timestamp;

/// The longest message of a window, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// How often `serve` looks for windows announced or cancelled by the
/// command line (another process, writing the database).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// `GatewayNotice.kind` of a maintenance window.
pub const KIND: &str = "maintenance";

/// A maintenance window, as the store keeps it. Times are Unix
/// microseconds.
pub use lienthong_store::maintenance::MaintenanceRow as Window;

/// A window as the command line and the dashboard's JSON show it: times in
/// Vietnam time (RFC 3339, `+07:00`) and as Unix seconds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WindowJson {
    pub id: i64,
    pub kind: &'static str,
    pub starts_at: String,
    pub ends_at: String,
    pub starts_at_unix: i64,
    pub ends_at_unix: i64,
    pub message: String,
    pub announced_at: String,
    pub cancelled: bool,
    pub cancelled_at: Option<String>,
    /// False when the operators expect no interruption (a rolling upgrade
    /// of the replicas).
    pub interruption: bool,
    /// `upcoming`, `ongoing`, `over` or `cancelled`, at the time of asking.
    pub state: &'static str,
}

/// `upcoming`, `ongoing`, `over` or `cancelled` at `now`.
fn state(w: &Window, now: i64) -> &'static str {
    if w.is_cancelled() {
        "cancelled"
    } else if w.ends_at <= now {
        "over"
    } else if w.starts_at <= now {
        "ongoing"
    } else {
        "upcoming"
    }
}

/// The notice of a window as a `Delivery` of a `Receive` stream: no
/// envelope, no delivery_id, not to be acknowledged.
fn notice_delivery(w: &Window) -> Delivery {
    Delivery {
        notice: Some(GatewayNotice {
            id: w.id.to_string(),
            kind: KIND.to_owned(),
            starts_at: Some(timestamp(w.starts_at)),
            ends_at: Some(timestamp(w.ends_at)),
            message: w.message.clone(),
            announced_at: Some(timestamp(w.announced_at)),
            cancelled: w.is_cancelled(),
            no_interruption_expected: !w.interruption_expected,
        }),
        ..Default::default()
    }
}

/// A window as the command line and the dashboard show it at `now`.
pub fn to_json(w: &Window, now: i64) -> WindowJson {
    WindowJson {
        id: w.id,
        kind: KIND,
        starts_at: format_rfc3339(w.starts_at),
        ends_at: format_rfc3339(w.ends_at),
        starts_at_unix: w.starts_at.div_euclid(1_000_000),
        ends_at_unix: w.ends_at.div_euclid(1_000_000),
        message: w.message.clone(),
        announced_at: format_rfc3339(w.announced_at),
        cancelled: w.is_cancelled(),
        cancelled_at: w.cancelled_at.map(format_rfc3339),
        interruption: w.interruption_expected,
        state: state(w, now),
    }
}

/// Checks a window before it is announced; the error is a sentence for the
/// operator. Returns the message as it will be stored (trimmed).
pub fn validate(starts_at: i64, ends_at: i64, message: &str, now: i64) -> Result<String> {
    if ends_at <= starts_at {
        return Err(Error::malformed(format!(
            "the maintenance must end after it starts: --to ({}) is not after --from ({})",
            format_rfc3339(ends_at),
            format_rfc3339(starts_at)
        )));
    }
    if ends_at <= now {
        return Err(Error::malformed(format!(
            "the maintenance window is already over (--to is {}, now is {}); announce a window that ends in the future",
            format_rfc3339(ends_at),
            format_rfc3339(now)
        )));
    }
    let message = message.trim();
    if message.is_empty() {
        return Err(Error::malformed(
            "the maintenance needs a --message telling the agencies what to expect",
        ));
    }
    let chars = message.chars().count();
    if chars > MAX_MESSAGE_CHARS {
        return Err(Error::malformed(format!(
            "the message has {chars} characters; keep it to {MAX_MESSAGE_CHARS}"
        )));
    }
    if message.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::malformed(
            "the message holds control characters; write plain text (line breaks are fine)",
        ));
    }
    Ok(message.to_owned())
}

/// Announces a window (after [`validate`]) and returns it as stored.
/// `interruption_expected` is false for a rolling upgrade of the replicas:
/// agencies are told they need not hold back sends.
pub async fn announce(
    store: &Store,
    starts_at: i64,
    ends_at: i64,
    message: &str,
    interruption_expected: bool,
) -> Result<Window> {
    let now = now_micros();
    let message = validate(starts_at, ends_at, message, now)?;
    let w = store
        .announce_maintenance(starts_at, ends_at, message, now, interruption_expected)
        .await?;
    tracing::info!(
        id = w.id,
        starts_at = %format_rfc3339(w.starts_at),
        ends_at = %format_rfc3339(w.ends_at),
        interruption_expected = w.interruption_expected,
        message = %w.message,
        "maintenance window announced"
    );
    Ok(w)
}

/// Cancels a window that is not over yet. Cancelling it again is no error:
/// the window is returned as it is.
pub async fn cancel(store: &Store, id: i64) -> Result<Window> {
    let Some(row) = store.maintenance_window(id).await? else {
        return Err(Error::new(
            Reason::NotFound,
            format!(
                "there is no maintenance window {id}; `lienthong admin maintenance --list` shows them"
            ),
        ));
    };
    if row.cancelled_at.is_some() {
        return Ok(row);
    }
    let now = now_micros();
    if row.ends_at <= now {
        return Err(Error::malformed(format!(
            "maintenance window {id} ended at {}; there is nothing left to cancel",
            format_rfc3339(row.ends_at)
        )));
    }
    let w = store.cancel_maintenance(row, now).await?;
    tracing::info!(id = w.id, message = %w.message, "maintenance window cancelled");
    Ok(w)
}

/// The windows still current or to come (not cancelled, not over), soonest
/// first.
pub async fn current(store: &Store) -> Result<Vec<Window>> {
    Ok(not_over(store)
        .await?
        .into_iter()
        .filter(|w| !w.is_cancelled())
        .collect())
}

/// The windows not over yet, cancelled ones included (a stream that told a
/// window must learn that it was cancelled).
pub(crate) async fn not_over(store: &Store) -> Result<Vec<Window>> {
    store.maintenance_windows_ending_after(now_micros()).await
}

/// The windows not over yet, as last read by [`watch_maintenance`], for the
/// `Receive` streams that follow. Held by the [`Gateway`].
#[derive(Debug)]
pub(crate) struct Notices {
    tx: watch::Sender<Arc<Vec<Window>>>,
}

impl Default for Notices {
    fn default() -> Self {
        Notices {
            tx: watch::channel(Arc::new(Vec::new())).0,
        }
    }
}

impl Notices {
    /// Publishes `windows` if they differ from what was published; returns
    /// whether they did.
    pub(crate) fn publish(&self, windows: Vec<Window>) -> bool {
        self.tx.send_if_modified(|cur| {
            if **cur == windows {
                false
            } else {
                *cur = Arc::new(windows);
                true
            }
        })
    }
}

/// The notices of one `Receive` call.
#[derive(Debug)]
pub struct NoticeFeed {
    rx: watch::Receiver<Arc<Vec<Window>>>,
    /// The windows this stream knows of: whether it knows them cancelled,
    /// and when they end (to forget them then).
    told: HashMap<i64, (bool, i64)>,
    initial: Vec<Delivery>,
}

impl NoticeFeed {
    /// A feed that learns of every change from now on: subscribed before
    /// the windows are read, so no change between the two is missed.
    pub(crate) fn subscribe(notices: &Notices) -> NoticeFeed {
        let mut rx = notices.tx.subscribe();
        rx.borrow_and_update();
        NoticeFeed {
            rx,
            told: HashMap::new(),
            initial: Vec::new(),
        }
    }

    /// Sets the initial notices from the windows read at the start.
    pub(crate) fn start(&mut self, windows: &[Window]) {
        self.initial = self.learn(windows, now_micros());
    }

    /// The notices to send before any delivery: one per window current or
    /// to come. Empty after the first call.
    pub fn initial(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.initial)
    }

    /// Waits for windows announced or cancelled since; `None` when the
    /// gateway is gone. Cancel-safe.
    pub async fn changed(&mut self) -> Option<Vec<Delivery>> {
        loop {
            self.rx.changed().await.ok()?;
            let windows = self.rx.borrow_and_update().clone();
            let out = self.learn(&windows, now_micros());
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    /// The notices `windows` call for, given what this stream was told: a
    /// window not told yet (unless it is cancelled already), the
    /// cancellation of one told. A cancellation is final, so a stale list
    /// never brings a cancelled window back.
    fn learn(&mut self, windows: &[Window], now: i64) -> Vec<Delivery> {
        self.told.retain(|_, (_, ends_at)| *ends_at > now);
        let mut out = Vec::new();
        for w in windows {
            if w.ends_at <= now {
                continue;
            }
            match self.told.get(&w.id) {
                Some((true, _)) => {}
                Some((false, _)) if !w.is_cancelled() => {}
                Some((false, _)) => {
                    out.push(notice_delivery(w));
                    self.told.insert(w.id, (true, w.ends_at));
                }
                None => {
                    if !w.is_cancelled() {
                        out.push(notice_delivery(w));
                    }
                    self.told.insert(w.id, (w.is_cancelled(), w.ends_at));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const H: i64 = 3_600_000_000;

    fn window(id: i64, starts_at: i64, ends_at: i64, cancelled: bool) -> Window {
        Window {
            id,
            starts_at,
            ends_at,
            message: format!("bảo trì {id}"),
            announced_at: 0,
            cancelled_at: cancelled.then_some(1),
            interruption_expected: true,
        }
    }

    fn feed() -> NoticeFeed {
        NoticeFeed {
            rx: watch::channel(Arc::new(Vec::new())).1,
            told: HashMap::new(),
            initial: Vec::new(),
        }
    }

    fn ids(ds: &[Delivery]) -> Vec<(String, bool)> {
        ds.iter()
            .map(|d| {
                let n = d.notice.as_ref().unwrap();
                assert!(d.delivery_id.is_empty() && d.envelope.is_none());
                assert_eq!(n.kind, "maintenance");
                (n.id.clone(), n.cancelled)
            })
            .collect()
    }

    #[test]
    fn validation_speaks_in_sentences() {
        let now = 100 * H;
        let e = validate(now + 2 * H, now + H, "x", now).unwrap_err();
        assert_eq!(e.reason(), Reason::Malformed);
        assert!(
            e.message().contains("end after it starts"),
            "{}",
            e.message()
        );
        let e = validate(now - 3 * H, now - H, "x", now).unwrap_err();
        assert!(e.message().contains("already over"), "{}", e.message());
        let e = validate(now, now + H, "   ", now).unwrap_err();
        assert!(e.message().contains("--message"), "{}", e.message());
        let long = "ă".repeat(MAX_MESSAGE_CHARS + 1);
        let e = validate(now, now + H, &long, now).unwrap_err();
        assert!(e.message().contains("501 characters"), "{}", e.message());
        let e = validate(now, now + H, "a\u{7}b", now).unwrap_err();
        assert!(e.message().contains("control"), "{}", e.message());
        // At the limit, and a window already begun, are fine.
        let ok = "ă".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(validate(now - H, now + H, &ok, now).unwrap(), ok);
        assert_eq!(
            validate(now, now + H, "  hi\n there ", now).unwrap(),
            "hi\n there"
        );
    }

    #[test]
    fn a_feed_tells_each_window_once_and_each_cancellation_once() {
        let now = 100 * H;
        let mut f = feed();
        let w1 = window(1, now + H, now + 2 * H, false);
        let w2 = window(2, now + H, now + 2 * H, true);
        assert_eq!(
            ids(&f.learn(&[w1.clone(), w2.clone()], now)),
            [("1".into(), false)]
        );
        // The same list again: nothing new.
        assert!(f.learn(&[w1.clone(), w2.clone()], now).is_empty());
        // A new window, and the first cancelled.
        let w3 = window(3, now + 3 * H, now + 4 * H, false);
        let w1c = window(1, now + H, now + 2 * H, true);
        assert_eq!(
            ids(&f.learn(&[w1c.clone(), w2.clone(), w3.clone()], now)),
            [("1".into(), true), ("3".into(), false)]
        );
        // A stale list showing window 1 uncancelled does not bring it back.
        assert!(f.learn(&[w1.clone(), w3.clone()], now).is_empty());
        // A window over is forgotten and never told.
        let over = window(4, now - 2 * H, now - H, false);
        assert!(f.learn(&[over], now).is_empty());
        assert!(f.learn(&[w3], now + 5 * H).is_empty());
        assert!(f.told.is_empty());
    }

    #[test]
    fn json_is_in_vietnam_time() {
        // 2026-11-30 15:00 UTC = 22:00 in Vietnam.
        let start = 1_796_050_800 * 1_000_000;
        let w = window(7, start, start + 2 * H, false);
        let j = to_json(&w, start - H);
        assert_eq!(j.starts_at, "2026-11-30T22:00:00+07:00");
        assert_eq!(j.ends_at, "2026-12-01T00:00:00+07:00");
        assert_eq!(j.state, "upcoming");
        assert_eq!(to_json(&w, start + H).state, "ongoing");
        assert_eq!(to_json(&w, start + 3 * H).state, "over");
        assert!(j.interruption);
    }

    #[test]
    fn a_window_without_interruption_says_so_in_its_notice_and_json() {
        let now = 100 * H;
        let mut w = window(5, now + H, now + 2 * H, false);
        let n = |w: &Window| notice_delivery(w).notice.unwrap();
        assert!(!n(&w).no_interruption_expected);
        w.interruption_expected = false;
        assert!(n(&w).no_interruption_expected);
        assert!(!to_json(&w, now).interruption);
    }
}
