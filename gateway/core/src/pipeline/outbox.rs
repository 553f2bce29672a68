//! The outbox the AMQP relay drains: copies for other gateways and for
//! agencies served by their own queue, written in the acceptance's
//! transaction and marked sent only after the broker confirms.

use lienthong_proto::v1::TraceHop;

use tokio::sync::watch;

use crate::error::{Error, Reason, Result};
use crate::routing;

use super::queries::hops_of;
use super::{AttachmentReader, Gateway, Subject, Transport};

/// A row of the outbox (what the AMQP relay publishes).
pub use lienthong_store::store::OutboxEntry;

/// An outbox row with what it publishes.
#[derive(Debug)]
pub struct Outbound {
    pub row: OutboxEntry,
    pub sender: String,
    pub message_id: String,
    /// The `SignedEnvelope` bytes as accepted.
    pub signed_envelope: Vec<u8>,
    /// The attachments in order.
    pub attachments: Vec<AttachmentReader>,
    /// Where the message has been, this gateway last.
    pub hops: Vec<TraceHop>,
}

impl Gateway {
    /// The agencies whose directory channel is `amqp` (they read their own
    /// queue), for the AMQP adapter to declare those queues up front.
    pub async fn queue_agencies(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .store
            .agencies()
            .await?
            .into_iter()
            .filter(|a| a.active && a.channel == "amqp" && self.inner.routes.is_local(&a.organ_id))
            .map(|a| a.organ_id)
            .collect())
    }

    /// Changes whenever a commit adds rows to the outbox.
    pub fn outbox_watch(&self) -> watch::Receiver<u64> {
        self.inner.outbox_wake.subscribe()
    }

    /// Outbox rows still to publish with `id > after_id`, oldest first.
    pub async fn outbox_pending(&self, after_id: i64, limit: u64) -> Result<Vec<OutboxEntry>> {
        self.inner.store.outbox_pending(after_id, limit).await
    }

    /// The next row of each routing key, oldest first (see
    /// `Store::outbox_heads`).
    pub async fn outbox_heads(&self, limit: u64) -> Result<Vec<OutboxEntry>> {
        self.inner.store.outbox_heads(limit).await
    }

    pub async fn outbox_depth(&self) -> Result<u64> {
        self.inner.store.outbox_depth().await
    }

    /// What an outbox row publishes: the signed envelope as accepted, its
    /// attachments (read back and checked against their digests as they
    /// stream), and the hops so far, this gateway's included.
    /// A copy for the queue of an agency deactivated since it was accepted
    /// is held (`PERMISSION_DENIED`): it stays pending, and goes once the
    /// agency is activated again.
    pub async fn outbound(&self, row: OutboxEntry) -> Result<Outbound> {
        let inner = &self.inner;
        if row.exchange.is_empty()
            && let Some(organ_id) = routing::queue_agency(&row.routing_key)
            && inner
                .store
                .agency(organ_id)
                .await?
                .is_some_and(|a| !a.active)
        {
            return Err(Error::new(
                Reason::PermissionDenied,
                format!(
                    "{organ_id} is deactivated: its copy stays in the outbox until the operators activate it again"
                ),
            ));
        }
        let Some(m) = inner.store.message_by_pk(row.message_pk).await? else {
            return Err(Error::new(
                Reason::NotFound,
                format!("outbox row {} names a missing message", row.id),
            ));
        };
        let subject = Subject {
            sender: m.sender.clone(),
            message_id: m.message_id.clone(),
            actor: Some(inner.gateway_id.clone()),
            transport: Transport::Amqp,
        };
        let mut attachments = Vec::new();
        for (i, a) in inner.store.attachments(m.id).await?.into_iter().enumerate() {
            let reader = match inner.blobs.open_blob(&a.sha256, a.size.max(0) as u64).await {
                Ok(r) => r,
                Err(e) => {
                    inner.log_integrity(&subject, i as u32, &e).await;
                    return Err(e);
                }
            };
            attachments.push(AttachmentReader {
                gw: inner.clone(),
                subject: subject.clone(),
                index: i as u32,
                reader,
            });
        }
        Ok(Outbound {
            hops: hops_of(&m, &inner.gateway_id),
            sender: m.sender,
            message_id: m.message_id,
            signed_envelope: m.signed_envelope,
            attachments,
            row,
        })
    }

    /// The broker confirmed these rows: their deliveries are handed over,
    /// in one transaction. Rows marked before are left as they are; answers
    /// how many were marked now.
    pub async fn outbox_sent_many(&self, rows: &[OutboxEntry]) -> Result<usize> {
        self.inner.store.outbox_sent_many(rows).await
    }

    /// Publishing the row failed; it stays pending and is tried again.
    pub async fn outbox_failed(&self, row: &OutboxEntry, error: &str) -> Result<()> {
        self.inner.store.outbox_failed(row.id, error).await
    }
}
