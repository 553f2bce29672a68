//! Callers the gateway could not identify: refused, counted, and written to
//! the transfer log in aggregate.
//!
//! A call that fails identification (no or an unacceptable client
//! certificate, a key bound to nobody, a peer over its rate) is answered at
//! once, with its reason and a sentence, like any refusal. What it must not
//! do is write: a chained, fsynced line per call would let anyone who can
//! open a connection fill the log and take the database's writes from the
//! agencies. So such refusals are counted in
//! `lienthong_calls_unauthenticated_total{reason}` and summed here per peer
//! (its IP address; an IPv6 peer by its /64, what one host can pick from),
//! and [`watch_unauthenticated`] writes one `unauthenticated` line per peer
//! per minute with the count by reason and the last sentence — all of a
//! minute's lines in one transaction.
//!
//! Memory stays bounded whatever the number of peers: past
//! [`MAX_PEERS`] distinct peers in a minute, the others are summed in one
//! line of their own.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use crate::caller::Transport;
use crate::error::{Error, Reason};
use crate::store::{EventKind, NewEvent};

/// How often the sums are written: at most one line per peer this often.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Distinct peers summed one by one in a minute; the rest share a line.
pub const MAX_PEERS: usize = 1024;

/// The unit limits and summaries count by: an IPv4 address, or the /64
/// network of an IPv6 address (an IPv4-mapped IPv6 address is its IPv4
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(IpAddr);

impl PeerKey {
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => {
                    let mut seg = v6.segments();
                    seg[4..].fill(0);
                    PeerKey(IpAddr::V6(Ipv6Addr::from(seg)))
                }
            },
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Tally {
    first_at: i64,
    last_at: i64,
    by_reason: BTreeMap<Reason, u64>,
    last_sentence: String,
}

impl Tally {
    fn count(&self) -> u64 {
        self.by_reason.values().sum()
    }
}

/// Whose refusals a line sums: one peer, or every peer past [`MAX_PEERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Who {
    Peer(PeerKey),
    Unknown,
    Others,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Peer(p) => write!(f, "{p}"),
            Who::Unknown => f.write_str("an unknown address"),
            Who::Others => write!(f, "peers beyond the first {MAX_PEERS} of the minute"),
        }
    }
}

/// The refusals of the current minute, per (transport, peer).
#[derive(Debug, Default)]
pub struct UnauthenticatedCalls {
    // A plain map behind a lock never held across an await.
    tallies: Mutex<BTreeMap<(&'static str, Who), Tally>>,
}

impl UnauthenticatedCalls {
    /// Counts one refusal; true when it is the peer's first of the minute.
    pub(crate) fn record(
        &self,
        transport: Transport,
        peer: Option<PeerKey>,
        err: &Error,
        at: i64,
    ) -> bool {
        let mut map = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let mut who = peer.map_or(Who::Unknown, Who::Peer);
        let key = (transport.as_str(), who);
        if !map.contains_key(&key) && map.len() >= MAX_PEERS {
            who = Who::Others;
        }
        let mut first = false;
        let t = map.entry((transport.as_str(), who)).or_insert_with(|| {
            first = true;
            Tally {
                first_at: at,
                last_at: at,
                by_reason: BTreeMap::new(),
                last_sentence: String::new(),
            }
        });
        t.last_at = at;
        *t.by_reason.entry(err.reason()).or_default() += 1;
        if t.last_sentence != err.message() {
            t.last_sentence = err.message().to_owned();
        }
        first
    }

    pub(crate) fn take(&self) -> BTreeMap<(&'static str, Who), Tally> {
        let mut map = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *map)
    }
}

/// The transfer-log line summing one peer's refusals.
pub(crate) fn summary(transport: &'static str, who: Who, t: &Tally) -> NewEvent {
    let n = t.count();
    let reasons = t
        .by_reason
        .iter()
        .map(|(r, k)| format!("{r} ×{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The reason of the line: the commonest, so a search by reason finds it.
    let top = t
        .by_reason
        .iter()
        .max_by_key(|(_, k)| **k)
        .map(|(r, _)| r.as_str().to_owned());
    let span = (t.last_at - t.first_at).max(0) / 1_000_000;
    NewEvent {
        kind: EventKind::Unauthenticated,
        sender: String::new(),
        message_id: String::new(),
        recipient: None,
        reason: top,
        detail: format!(
            "{n} call(s) from {who} refused before the caller was identified, over {span} s: \
             {reasons}; the last: {}",
            t.last_sentence
        ),
        actor: match who {
            Who::Peer(p) => Some(format!("peer {p}")),
            Who::Unknown | Who::Others => None,
        },
        transport: transport.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(PeerKey::of(a), PeerKey::of(b));
        assert_eq!(PeerKey::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(PeerKey::of(mapped).to_string(), "10.1.2.3");
    }

    #[test]
    fn refusals_are_summed_per_peer_and_bounded() {
        let calls = UnauthenticatedCalls::default();
        let e = Error::new(Reason::PermissionDenied, "not bound");
        let peer = |i: u32| Some(PeerKey::of(IpAddr::from(i.to_be_bytes())));
        assert!(calls.record(Transport::Grpc, peer(1), &e, 0));
        assert!(!calls.record(Transport::Grpc, peer(1), &e, 1_000_000));
        let r = Error::new(Reason::RateLimited, "too fast");
        assert!(!calls.record(Transport::Grpc, peer(1), &r, 2_000_000));
        for i in 2..(MAX_PEERS as u32 + 50) {
            calls.record(Transport::Grpc, peer(i), &e, 0);
        }
        let taken = calls.take();
        assert_eq!(taken.len(), MAX_PEERS + 1, "the rest share one line");
        let one = &taken[&("grpc", Who::Peer(PeerKey::of(IpAddr::from([0, 0, 0, 1]))))];
        let line = summary(
            "grpc",
            Who::Peer(PeerKey::of(IpAddr::from([0, 0, 0, 1]))),
            one,
        );
        assert_eq!(line.reason.as_deref(), Some("PERMISSION_DENIED"));
        assert!(
            line.detail.starts_with("3 call(s) from 0.0.0.1")
                && line
                    .detail
                    .contains("PERMISSION_DENIED ×2, RATE_LIMITED ×1")
                && line.detail.ends_with("the last: too fast"),
            "{}",
            line.detail
        );
        let others = &taken[&("grpc", Who::Others)];
        assert_eq!(others.count(), 49);
        assert!(calls.take().is_empty(), "taking empties the sums");
    }
}
