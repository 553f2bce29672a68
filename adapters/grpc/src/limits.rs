//! Per-agency limits against abuse: a token bucket of calls per second and a
//! cap on concurrent streams. A refusal is `RATE_LIMITED`
//! (RESOURCE_EXHAUSTED) with a sentence, written to the transfer log; the
//! agency may try again shortly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lienthong_core::error::{Error, Reason};
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

/// The limiter shared by every call. Its locks guard plain maps and are
/// never held across an await.
#[derive(Debug, Default)]
pub struct AgencyLimiter {
    limits: AgencyLimits,
    buckets: Mutex<HashMap<String, Bucket>>,
    streams: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl AgencyLimiter {
    pub fn new(limits: AgencyLimits) -> Self {
        AgencyLimiter {
            limits,
            ..Default::default()
        }
    }

    /// Takes one call from the agency's bucket.
    pub fn call(&self, organ_id: &str) -> Result<(), Error> {
        let l = self.limits;
        if l.calls_per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(organ_id.to_owned()).or_insert(Bucket {
            tokens: l.burst.max(1.0),
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * l.calls_per_second;
        b.tokens = (b.tokens + refill).min(l.burst.max(1.0));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Error::new(
                Reason::RateLimited,
                format!(
                    "{organ_id} is calling faster than the {} calls per second this gateway allows an agency; slow down and try again in a second",
                    l.calls_per_second
                ),
            ))
        }
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
        for _ in 0..3 {
            assert!(l.call("A").is_ok());
        }
        let e = l.call("A").err();
        assert_eq!(e.map(|e| e.reason()), Some(Reason::RateLimited));
        // Another agency has its own bucket.
        assert!(l.call("B").is_ok());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(l.call("A").is_ok(), "the bucket refills with time");
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
}
