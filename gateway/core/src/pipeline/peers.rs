//! Calls refused before their caller was identified: counted, summed per
//! peer, and written as one `unauthenticated` line per peer per minute.

use super::{Gateway, Transport};
use crate::error::{Error, Result};
use crate::peers::{PeerKey, summary};
use crate::store::{NewEvent, now_micros};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

impl Gateway {
    /// Answers a call whose caller could not be identified: counted in the
    /// metrics and summed for the peer's next `unauthenticated` line, never
    /// written call by call. Returns `err` for the transport to answer with.
    pub fn refuse_unauthenticated(
        &self,
        transport: Transport,
        peer: Option<IpAddr>,
        err: Error,
    ) -> Error {
        self.metrics().call_unauthenticated(err.reason());
        let peer = peer.map(PeerKey::of);
        if self
            .unauthenticated_calls()
            .record(transport, peer, &err, now_micros())
        {
            // One line per peer per minute in the gateway's own log too.
            tracing::warn!(
                peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                transport = transport.as_str(),
                reason = %err.reason(),
                error = %err.message(),
                "refused a call before its caller was identified; further refusals of this peer are summed in the transfer log"
            );
        }
        err
    }

    /// Writes the sums of the refusals since the last call, one line per
    /// peer, in one transaction; returns how many lines.
    pub async fn flush_unauthenticated(&self) -> Result<usize> {
        let tallies = self.unauthenticated_calls().take();
        let events: Vec<NewEvent> = tallies
            .iter()
            .map(|((transport, who), t)| summary(transport, *who, t))
            .collect();
        let n = events.len();
        if let Err(e) = self.store().log_all(events.clone()).await {
            // The counts are in the metrics already; keep the sums here.
            for ev in &events {
                tracing::error!(detail = %ev.detail, "could not write this summary to the transfer log");
            }
            return Err(e);
        }
        Ok(n)
    }
}

/// Writes the sums every `every` (normally [`SUMMARY_INTERVAL`]) until
/// `stop`, then once more, so a stopping gateway loses none.
pub async fn watch_unauthenticated(gw: Gateway, every: Duration, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = tokio::time::sleep(every) => false,
        };
        if let Err(e) = gw.flush_unauthenticated().await {
            tracing::error!(error = %e.chain(), "could not write the unauthenticated calls' summary");
        }
        if stopping {
            break;
        }
    }
}
