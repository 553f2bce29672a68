//! Limits against abuse.
//!
//! Per peer (an IPv4 address or an IPv6 /64), before the caller is
//! identified: a token bucket of calls per second, so that what a caller
//! costs before the gateway knows who it is stays bounded. A refusal is
//! `RATE_LIMITED` (RESOURCE_EXHAUSTED) with a sentence, counted and summed
//! like every refusal of an unidentified caller (`lienthong_core::peers`),
//! not written call by call.
//!
//! Per agency, once identified: a token bucket of calls per second and a
//! cap on concurrent streams. A refusal is `RATE_LIMITED` with a sentence,
//! written to the transfer log; the agency may try again shortly.
//!
//! Per upload (`Send`, `SendEdxml`): an [`UploadClock`] that gives up a
//! stream that is idle, slower than a minimum rate after a grace period, or
//! past an overall deadline.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lienthong_core::error::{Error, Reason};
use lienthong_core::peers::PeerKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The configured bounds; zero turns a bound off.
#[derive(Debug, Clone, Copy)]
pub struct AgencyLimits {
    /// Sustained calls per second per agency.
    pub calls_per_second: f64,
    /// Calls an agency may make at once above the sustained rate.
    pub burst: f64,
    /// Streams (Send, Receive, FetchAttachment, …) open at once per agency.
    pub max_streams: usize,
}

impl Default for AgencyLimits {
    fn default() -> Self {
        AgencyLimits {
            calls_per_second: 200.0,
            burst: 400.0,
            max_streams: 32,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Most keys a [`Buckets`] tracks; past it, full buckets (the same as no
/// bucket) are dropped, at most once a second.
const MAX_BUCKETS: usize = 65_536;

/// Token buckets by key: `rate` calls a second sustained, `burst` at once.
/// A plain map behind a lock never held across an await.
#[derive(Debug)]
struct Buckets<K> {
    rate: f64,
    burst: f64,
    map: Mutex<(HashMap<K, Bucket>, Option<Instant>)>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(rate: f64, burst: f64) -> Self {
        Buckets {
            rate,
            burst: burst.max(1.0),
            map: Mutex::new((HashMap::new(), None)),
        }
    }

    /// Takes one token of `key`'s bucket; false when it is empty.
    fn take(&self, key: &K) -> bool {
        self.take_at(key, Instant::now())
    }

    /// [`Buckets::take`] at the instant `now`: the clock is the caller's, so
    /// that a refill can be judged without depending on how fast code runs.
    fn take_at(&self, key: &K, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (map, pruned) = &mut *guard;
        if !map.contains_key(key) && map.len() >= MAX_BUCKETS {
            if pruned.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                // Too many keys to track right now: this one goes unmetered
                // rather than costing every call a sweep.
                return true;
            }
            *pruned = Some(now);
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The limiter shared by every call. Its locks guard plain maps and are
/// never held across an await.
#[derive(Debug)]
pub struct AgencyLimiter {
    limits: AgencyLimits,
    buckets: Buckets<String>,
    streams: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl AgencyLimiter {
    pub fn new(limits: AgencyLimits) -> Self {
        AgencyLimiter {
            limits,
            buckets: Buckets::new(limits.calls_per_second, limits.burst),
            streams: Mutex::default(),
        }
    }

    /// Takes one call from the agency's bucket.
    pub fn call(&self, organ_id: &str) -> Result<(), Error> {
        self.call_at(organ_id, Instant::now())
    }

    /// [`AgencyLimiter::call`] at the instant `now`.
    pub fn call_at(&self, organ_id: &str, now: Instant) -> Result<(), Error> {
        if self.buckets.take_at(&organ_id.to_owned(), now) {
            return Ok(());
        }
        Err(Error::new(
            Reason::RateLimited,
            format!(
                "{organ_id} is calling faster than the {} calls per second this gateway allows an agency; slow down and try again in a second",
                self.limits.calls_per_second
            ),
        ))
    }

    /// A slot for one open stream, released when the permit is dropped.
    pub fn stream(&self, organ_id: &str) -> Result<Option<OwnedSemaphorePermit>, Error> {
        let max = self.limits.max_streams;
        if max == 0 {
            return Ok(None);
        }
        let sem = {
            let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(organ_id.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(max)))
                .clone()
        };
        sem.try_acquire_owned().map(Some).map_err(|_| {
            Error::new(
                Reason::RateLimited,
                format!(
                    "{organ_id} already has {max} streams open, the most this gateway allows an agency; close one (or wait for it to finish) and try again"
                ),
            )
        })
    }
}

/// Per-peer bounds on calls before identification; zero turns it off.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Sustained calls per second from one peer, whoever the callers are.
    pub calls_per_second: f64,
    /// Calls above that rate one peer may make at once.
    pub burst: f64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        // One address may carry a whole province's shared software (many
        // agencies behind one NAT): generous, a bound on cost, not a quota.
        PeerLimits {
            calls_per_second: 2000.0,
            burst: 4000.0,
        }
    }
}

/// Takes a call from the peer's bucket, before anything else is done.
#[derive(Debug)]
pub struct PeerLimiter {
    limits: PeerLimits,
    buckets: Buckets<PeerKey>,
}

impl PeerLimiter {
    pub fn new(limits: PeerLimits) -> Self {
        PeerLimiter {
            limits,
            buckets: Buckets::new(limits.calls_per_second, limits.burst),
        }
    }

    /// One call from `peer` (a call whose address is unknown is not
    /// metered: only local transports have none).
    pub fn call(&self, peer: Option<IpAddr>) -> Result<(), Error> {
        let Some(key) = peer.map(PeerKey::of) else {
            return Ok(());
        };
        if self.buckets.take(&key) {
            return Ok(());
        }
        Err(Error::new(
            Reason::RateLimited,
            format!(
                "calls from {key} come faster than the {} per second this gateway takes from one \
                 address; slow down and try again in a second",
                self.limits.calls_per_second
            ),
        ))
    }
}

/// Bounds on one upload stream's pace.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Longest silence between two messages of the stream.
    pub idle: Duration,
    /// After `grace`, the stream must have brought at least this many bytes
    /// per second since it began (0: no minimum).
    pub min_bytes_per_second: u64,
    pub grace: Duration,
    /// Longest a whole upload may take (`None`: no overall deadline).
    pub deadline: Option<Duration>,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            idle: Duration::from_secs(60),
            min_bytes_per_second: 4096,
            grace: Duration::from_secs(30),
            deadline: Some(Duration::from_secs(6 * 3600)),
        }
    }
}

/// Why an upload was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    Idle,
    TooSlow,
    Deadline,
}

/// The pace of one upload stream: how long to wait for its next message,
/// and the refusal when that wait runs out.
#[derive(Debug)]
pub struct UploadClock {
    limits: UploadLimits,
    started: Instant,
    bytes: u64,
}

impl UploadClock {
    pub fn start(limits: UploadLimits) -> Self {
        UploadClock {
            limits,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts bytes received.
    pub fn add(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n as u64);
    }

    /// How long the next message may take, and what running out means.
    pub fn wait(&self) -> (Duration, Stall) {
        let now = Instant::now();
        let l = &self.limits;
        let mut until = (now + l.idle, Stall::Idle);
        if l.min_bytes_per_second > 0 {
            // Each byte buys 1/min of a second beyond the grace period.
            let earned = Duration::from_secs_f64(self.bytes as f64 / l.min_bytes_per_second as f64);
            let t = self.started + l.grace + earned;
            if t < until.0 {
                until = (t, Stall::TooSlow);
            }
        }
        if let Some(d) = l.deadline {
            let t = self.started + d;
            if t <= until.0 {
                until = (t, Stall::Deadline);
            }
        }
        (until.0.saturating_duration_since(now), until.1)
    }

    /// The refusal for a stream given up for `stall` (`stream` names it:
    /// "Send", "SendEdxml"). Slowness is `RATE_LIMITED`: the message is
    /// fine and may be sent again as it is, over a better link; an idle
    /// stream is `MALFORMED`, as it always was: the client stopped halfway.
    pub fn refusal(&self, stall: Stall, stream: &str) -> Error {
        let secs = self.started.elapsed().as_secs();
        let l = &self.limits;
        match stall {
            Stall::Idle => Error::malformed(format!(
                "the {stream} stream was idle for {} s; nothing was accepted, send the message again",
                l.idle.as_secs()
            )),
            Stall::TooSlow => Error::new(
                Reason::RateLimited,
                format!(
                    "the {stream} stream brought {} bytes in {secs} s, slower than the {} bytes per \
                     second this gateway requires after the first {} s; nothing was accepted: \
                     send the message again over a faster or less busy link",
                    self.bytes,
                    l.min_bytes_per_second,
                    l.grace.as_secs()
                ),
            ),
            Stall::Deadline => Error::new(
                Reason::RateLimited,
                format!(
                    "the {stream} stream took longer than the {} s this gateway allows one \
                     upload; nothing was accepted: send the message again over a faster link",
                    l.deadline.map_or(0, |d| d.as_secs())
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refuses_past_its_burst_and_refills() {
        let l = AgencyLimiter::new(AgencyLimits {
            calls_per_second: 1000.0,
            burst: 3.0,
            max_streams: 2,
        });
        // One instant for the burst: no refill can slip in between calls,
        // however slowly they run.
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.call_at("A", t0).is_ok());
        }
        let e = l.call_at("A", t0).err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::RateLimited));
        // Another agency has its own bucket.
        assert!(l.call_at("B", t0).is_ok());
        // Half a token later: still empty.
        let half = t0 + Duration::from_micros(500);
        assert!(l.call_at("A", half).is_err(), "half a token is not a call");
        // 5 ms at 1000 calls/s refill the bucket (to its burst of 3).
        let later = t0 + Duration::from_millis(5);
        for _ in 0..3 {
            assert!(
                l.call_at("A", later).is_ok(),
                "the bucket refills with time"
            );
        }
        assert!(l.call_at("A", later).is_err(), "refilled only to the burst");
    }

    #[test]
    fn streams_are_capped_per_agency_and_released() {
        let l = AgencyLimiter::new(AgencyLimits {
            calls_per_second: 0.0,
            burst: 0.0,
            max_streams: 2,
        });
        let a1 = l.stream("A").ok().flatten();
        let a2 = l.stream("A").ok().flatten();
        assert!(a1.is_some() && a2.is_some());
        assert!(l.stream("A").is_err());
        assert!(l.stream("B").is_ok());
        drop(a1);
        assert!(l.stream("A").is_ok());
    }

    #[test]
    fn peers_have_buckets_of_their_own_and_ipv6_counts_by_64() {
        let l = PeerLimiter::new(PeerLimits {
            calls_per_second: 0.001,
            burst: 2.0,
        });
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a2: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(l.call(Some(a)).is_ok());
        assert!(l.call(Some(a2)).is_ok());
        let e = l.call(Some(a)).unwrap_err();
        assert_eq!(e.reason(), Reason::RateLimited);
        assert!(e.message().contains("2001:db8::/64"), "{}", e.message());
        assert!(l.call(Some("192.0.2.1".parse().unwrap())).is_ok());
        assert!(l.call(None).is_ok());
    }

    #[test]
    fn an_upload_must_keep_a_minimum_pace_after_its_grace() {
        let limits = UploadLimits {
            idle: Duration::from_secs(60),
            min_bytes_per_second: 1000,
            grace: Duration::from_secs(5),
            deadline: Some(Duration::from_secs(3600)),
        };
        let mut c = UploadClock::start(limits);
        let (wait, why) = c.wait();
        assert_eq!(why, Stall::TooSlow);
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4));
        // 10,000 bytes buy 10 more seconds.
        c.add(10_000);
        let (wait, _) = c.wait();
        assert!(wait > Duration::from_secs(14), "{wait:?}");
        // Fast enough for long: the idle bound is what is left.
        c.add(10_000_000);
        assert_eq!(c.wait().1, Stall::Idle);
        assert_eq!(
            c.refusal(Stall::TooSlow, "Send").reason(),
            Reason::RateLimited
        );
        assert_eq!(c.refusal(Stall::Idle, "Send").reason(), Reason::Malformed);

        let mut d = UploadClock::start(UploadLimits {
            min_bytes_per_second: 0,
            deadline: Some(Duration::from_secs(2)),
            ..limits
        });
        d.add(1);
        assert_eq!(d.wait().1, Stall::Deadline);
    }
}
