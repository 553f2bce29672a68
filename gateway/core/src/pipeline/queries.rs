//! Read-only questions: a message's trace, the directory's entries, the
//! metrics' gauges.

use std::collections::HashSet;

use lienthong_proto::v1::{Agency, TraceEvent, TraceHop};
use prost::Message as _;

use crate::error::{Error, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::rows::{AgencyRow, EventRow, MessageRow};
use lienthong_types::{now_micros, timestamp};

use super::{Access, Caller, Gateway, Hops};

/// A message's journey: the hops before this gateway, then its own.
pub(crate) fn hops_of(m: &MessageRow, gateway: &str) -> Vec<TraceHop> {
    let mut hops = m
        .upstream
        .as_deref()
        .and_then(|b| Hops::decode(b).ok())
        .map(|h| h.hops)
        .unwrap_or_default();
    hops.push(TraceHop {
        gateway: gateway.to_owned(),
        event: "accepted".to_owned(),
        at: Some(timestamp(m.accepted_at)),
    });
    hops
}

pub(super) fn trace_event(e: EventRow) -> TraceEvent {
    TraceEvent {
        seq: e.id.max(0) as u64,
        at: Some(timestamp(e.at)),
        kind: e.kind,
        message_id: e.message_id,
        from: e.sender,
        to: e.recipient.unwrap_or_default(),
        reason: e.reason.unwrap_or_default(),
        detail: e.detail,
    }
}

pub(super) fn agency_pb(a: AgencyRow) -> Agency {
    Agency {
        organ_id: a.organ_id,
        name: a.name,
        parent: a.parent.unwrap_or_default(),
        email: a.email,
        telephone: a.telephone,
        address: a.address,
        website: a.website,
        channel: a.channel,
        active: a.active,
    }
}

impl Gateway {
    /// The metrics text (OpenMetrics): the counters, and the gauges read
    /// now (one query for the inboxes; a database that does not answer gives
    /// `lienthong_database_up 0` and no inbox series, not an error).
    pub async fn metrics_text(&self) -> String {
        let up = self.ready().await.is_ok();
        let mut readings = crate::metrics::Readings {
            database_up: up,
            now: now_micros(),
            ..Default::default()
        };
        if up {
            readings.outbox_depth = self.outbox_depth().await.ok();
            readings.inboxes = match self.store().pending_inboxes().await {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "metrics: cannot read the inbox depths");
                    None
                }
            };
        }
        self.metrics().render(readings)
    }

    /// The transfer log of a message and of the statuses that answer it.
    /// `None` is the operator's view (command line), which sees everything.
    pub async fn trace(
        &self,
        caller: Option<&Caller>,
        from: &str,
        message_id: &str,
    ) -> Result<Vec<TraceEvent>> {
        let keys: Vec<(String, String)> = match caller {
            Some(c) => {
                self.authorised_message(c, from, message_id, Access::Trail)
                    .await?;
                self.inner
                    .store
                    .traced_messages(from, message_id)
                    .await?
                    .into_iter()
                    .map(|m| (m.sender, m.message_id))
                    .collect()
            }
            None => {
                let mut keys: Vec<(String, String)> = self
                    .inner
                    .store
                    .traced_messages(from, message_id)
                    .await?
                    .into_iter()
                    .map(|m| (m.sender, m.message_id))
                    .collect();
                if keys.is_empty() {
                    // A refused message has events but no message row.
                    keys.push((from.to_owned(), message_id.to_owned()));
                }
                keys
            }
        };
        let events = self.inner.store.events_of(&keys).await?;
        if events.is_empty() {
            return Err(Error::new(
                Reason::NotFound,
                format!("no events for message {message_id} from {from}"),
            ));
        }
        Ok(events.into_iter().map(trace_event).collect())
    }

    /// Operator view by message_id alone, whoever sent it.
    pub async fn trace_any(&self, message_id: &str) -> Result<Vec<TraceEvent>> {
        let events = self.inner.store.events_by_message_id(message_id).await?;
        let mut keys: Vec<(String, String)> = Vec::new();
        for e in &events {
            let k = (e.sender.clone(), e.message_id.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut all = Vec::new();
        for (s, m) in keys {
            for key in self.inner.store.traced_messages(&s, &m).await? {
                all.push((key.sender, key.message_id));
            }
        }
        let mut events = if all.is_empty() {
            events
        } else {
            all.push((String::new(), message_id.to_owned()));
            let mut evs = self.inner.store.events_of(&all).await?;
            // Refusals of repeats whose sender could be read are kept too.
            let seen: HashSet<i64> = evs.iter().map(|e| e.id).collect();
            evs.extend(events.into_iter().filter(|e| !seen.contains(&e.id)));
            evs
        };
        events.sort_by_key(|e| e.id);
        if events.is_empty() {
            return Err(Error::new(
                Reason::NotFound,
                format!("no events for message {message_id}"),
            ));
        }
        Ok(events.into_iter().map(trace_event).collect())
    }

    /// One agency of the directory.
    pub async fn lookup(&self, organ_id: &str) -> Result<Agency> {
        let id = OrganId::parse_with(organ_id, IdPolicy::Lenient)?;
        match self.inner.store.agency(id.as_str()).await? {
            Some(a) => Ok(agency_pb(a)),
            None => Err(Error::new(
                Reason::NotFound,
                format!("{id} is not in this gateway's directory"),
            )),
        }
    }

    /// The directory, or the part of it under `under`, in pages ordered by
    /// organ_id; the page token is the last organ_id of the previous page.
    pub async fn list(
        &self,
        under: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<Agency>, String)> {
        let under = if under.is_empty() {
            None
        } else {
            Some(OrganId::parse_with(under, IdPolicy::Lenient)?)
        };
        let size = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let all = self.inner.store.agencies().await?;
        let mut page: Vec<Agency> = all
            .into_iter()
            .filter(|a| page_token.is_empty() || a.organ_id.as_str() > page_token)
            .filter(|a| match &under {
                None => true,
                Some(u) => OrganId::parse_with(&a.organ_id, IdPolicy::Lenient)
                    .map(|id| id.is_under(u))
                    .unwrap_or(false),
            })
            .take(size + 1)
            .map(agency_pb)
            .collect();
        let next = if page.len() > size {
            page.truncate(size);
            page.last().map(|a| a.organ_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }
}
