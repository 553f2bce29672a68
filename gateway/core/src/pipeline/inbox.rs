//! Recipients' inboxes: live `Receive` streams woken when a delivery
//! lands, acknowledgements, and reading a delivered message's envelope and
//! attachments.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lienthong_proto::v1::{Delivery, SignedEnvelope, Verification};
use prost::Message as _;

use tokio::sync::watch;

use crate::blobs::BlobReader;
use crate::error::{Error, OrErr, Reason, Result};

/// What was accepted was stored whole and checked; if it cannot be read
/// back, the gateway's data is damaged — its fault, and not one a retry
/// mends (not `UNAVAILABLE`).
const STORED_ENVELOPE_UNREADABLE: &str =
    "a stored envelope could not be read back; the gateway's data is damaged, tell its operators";
use crate::store::{PendingDelivery, now_micros};
use crate::text::truncate;
use lienthong_types::timestamp;

use super::queries::hops_of;
use super::{Access, Caller, Gateway, Inner, Role, Subject};

/// Wakes the live `Receive` streams of a recipient when a delivery lands.
#[derive(Debug, Default)]
pub(super) struct Inboxes {
    // Held only for map access, never across an await.
    pub(super) senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Inboxes {
    pub(super) fn subscribe(&self, recipient: &str) -> watch::Receiver<u64> {
        let mut map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(recipient.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub(super) fn notify(&self, recipient: &str) {
        let map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(recipient) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}

/// A stored attachment being read for a caller. A failed digest check is
/// written to the transfer log (`integrity_failed`) before it is returned.
#[derive(Debug)]
pub struct AttachmentReader {
    pub(super) gw: Arc<Inner>,
    pub(super) subject: Subject,
    pub(super) index: u32,
    pub(super) reader: BlobReader,
}

impl AttachmentReader {
    /// The attachment's position in the document.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The next chunk of at most `max` bytes; `None` at the end, after the
    /// digest has been checked.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        match self.reader.next_chunk(max).await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.gw.log_integrity(&self.subject, self.index, &e).await;
                Err(e)
            }
        }
    }
}

/// An operator's certificate (whatever its account is named) reads no
/// agency's inbox.
pub(super) fn no_inbox() -> Error {
    Error::new(
        Reason::PermissionDenied,
        "an operator has no inbox: Receive and Ack are for agencies' software",
    )
}

/// Pulls a recipient's deliveries, oldest first. The first pass hands out
/// every unacknowledged delivery; a following stream then gets new ones as
/// they land and, after `redelivery_after`, the ones still unacknowledged.
#[derive(Debug)]
pub struct Inbox {
    pub(super) gw: Arc<Inner>,
    pub(super) caller: Caller,
    pub(super) follow: bool,
    pub(super) first_pass: bool,
    pub(super) cursor: i64,
    /// Read and marked delivered (with their attempt numbers), not yet
    /// handed out.
    pub(super) buffered: VecDeque<(PendingDelivery, i32)>,
    /// Deliveries the caller still wants (`Receive.max`); `None`: no bound.
    /// Nothing beyond it is read, so nothing beyond it is marked handed out.
    pub(super) remaining: Option<u32>,
    pub(super) wake: watch::Receiver<u64>,
    /// When the caller's standing was last checked (see
    /// [`Gateway::standing`]).
    pub(super) standing_at: tokio::time::Instant,
}

/// How often a call that lasts (a following `Receive`) checks again that
/// its caller still stands: a certificate unbound or an agency deactivated
/// ends a stream under way within this (and one query's time).
pub const STANDING_CHECK: Duration = Duration::from_secs(5);

impl Inbox {
    /// At most `max` deliveries (0: no bound).
    pub fn with_max(mut self, max: u32) -> Inbox {
        self.remaining = (max > 0).then_some(max);
        self
    }

    /// The next delivery; `None` when the inbox is drained and the stream
    /// does not follow, or `max` deliveries were handed out.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        if self.caller.role != Role::Agency {
            return Err(no_inbox());
        }
        loop {
            if let Some((p, attempt)) = self.buffered.pop_front() {
                self.gw.metrics.delivery_handed_out();
                return Ok(Some(self.delivery(p, attempt)?));
            }
            let limit = match self.remaining {
                Some(0) => return Ok(None),
                Some(n) => u64::from(n).min(64),
                None => 64,
            };
            if self.standing_at.elapsed() >= STANDING_CHECK {
                self.check_standing().await?;
            }
            // Mark the current notification seen before looking, so a
            // delivery that lands during the query wakes us again.
            self.wake.borrow_and_update();
            let batch = if self.first_pass {
                self.gw
                    .store
                    .pending(&self.caller.organ_id, self.cursor, None, limit)
                    .await?
            } else {
                let lease = self.gw.limits.redelivery_after.as_micros() as i64;
                self.gw
                    .store
                    .pending(&self.caller.organ_id, 0, Some(now_micros() - lease), limit)
                    .await?
            };
            if let Some(last) = batch.last() {
                self.cursor = self.cursor.max(last.delivery.id);
                // The whole batch is marked handed out at once, through
                // the group committer: a recipient with a backlog costs a
                // share of one fsync per batch, not one per document. What is marked and not yet sent when the
                // stream ends comes again after `redelivery_after`, as any
                // unacknowledged delivery does.
                let attempts = self
                    .gw
                    .store
                    .mark_delivered_batch(&batch, self.caller.transport.as_str())
                    .await?;
                if let Some(n) = self.remaining.as_mut() {
                    *n = n.saturating_sub(batch.len() as u32);
                }
                self.buffered.extend(batch.into_iter().zip(attempts));
                continue;
            }
            if self.first_pass {
                self.first_pass = false;
                if self.follow {
                    continue;
                }
            }
            if !self.follow {
                return Ok(None);
            }
            let tick = (self.gw.limits.redelivery_after / 4).max(Duration::from_millis(250));
            let looked = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    changed = self.wake.changed() => {
                        if changed.is_err() {
                            return Ok(None);
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(looked + tick) => break,
                    _ = tokio::time::sleep_until(self.standing_at + STANDING_CHECK) => {
                        self.check_standing().await?;
                    }
                }
            }
        }
    }

    pub(super) async fn check_standing(&mut self) -> Result<()> {
        let gw = Gateway {
            inner: self.gw.clone(),
        };
        if let Err(e) = gw.standing(&self.caller).await {
            return Err(if e.reason() == Reason::PermissionDenied {
                gw.refuse(Some(&self.caller), "", e).await
            } else {
                e
            });
        }
        self.standing_at = tokio::time::Instant::now();
        Ok(())
    }

    pub(super) fn delivery(&self, p: PendingDelivery, attempt: i32) -> Result<Delivery> {
        let envelope = SignedEnvelope::decode(p.message.signed_envelope.as_slice())
            .or_err(Reason::Internal, STORED_ENVELOPE_UNREADABLE)?;
        let verification = Verification::decode(p.message.verification.as_slice()).ok();
        Ok(Delivery {
            delivery_id: p.delivery.delivery_id,
            envelope: Some(envelope),
            trace: hops_of(&p.message, &self.gw.gateway_id),
            accepted_at: Some(timestamp(p.message.accepted_at)),
            verification,
            attempt: attempt.max(1) as u32,
            edxml: Default::default(),
            notice: None,
        })
    }
}

impl Gateway {
    /// The caller's inbox, oldest first.
    pub fn inbox(&self, caller: &Caller, follow: bool) -> Inbox {
        Inbox {
            gw: self.inner.clone(),
            caller: caller.clone(),
            follow,
            first_pass: true,
            cursor: 0,
            buffered: VecDeque::new(),
            remaining: None,
            wake: self.inner.inboxes.subscribe(&caller.organ_id),
            // The caller's standing was checked when it was identified.
            standing_at: tokio::time::Instant::now(),
        }
    }

    /// Acknowledges a delivery of the caller's inbox.
    pub async fn ack(&self, caller: &Caller, delivery_id: &str) -> Result<()> {
        if caller.role != Role::Agency {
            return Err(no_inbox());
        }
        match self
            .inner
            .store
            .ack(&caller.organ_id, delivery_id, caller.transport.as_str())
            .await?
        {
            Some(outcome) => {
                if outcome == crate::store::AckOutcome::Acknowledged {
                    self.inner.metrics.delivery_acknowledged();
                }
                Ok(())
            }
            None => Err(Error::new(
                Reason::NotFound,
                format!(
                    "there is no delivery {} in your inbox",
                    truncate(delivery_id, 80)
                ),
            )),
        }
    }

    /// The signed envelope of a message the caller sent or received, exactly
    /// as it was accepted.
    pub async fn envelope_of(
        &self,
        caller: &Caller,
        from: &str,
        message_id: &str,
    ) -> Result<SignedEnvelope> {
        let m = self
            .authorised_message(caller, from, message_id, Access::Content)
            .await?;
        SignedEnvelope::decode(m.signed_envelope.as_slice())
            .or_err(Reason::Internal, STORED_ENVELOPE_UNREADABLE)
    }

    /// Opens an attachment of a message the caller sent or received.
    pub async fn fetch_attachment(
        &self,
        caller: &Caller,
        from: &str,
        message_id: &str,
        index: u32,
    ) -> Result<AttachmentReader> {
        let m = self
            .authorised_message(caller, from, message_id, Access::Content)
            .await?;
        let atts = self.inner.store.attachments(m.id).await?;
        let Some(a) = atts.get(index as usize) else {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "message {message_id} has {} attachment(s); there is no index {index}",
                    atts.len()
                ),
            ));
        };
        let subject = Subject {
            sender: m.sender.clone(),
            message_id: m.message_id.clone(),
            actor: Some(caller.organ_id.clone()),
            transport: caller.transport,
        };
        let opened = self
            .inner
            .blobs
            .open_blob(&a.sha256, a.size.max(0) as u64)
            .await;
        let reader = match opened {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(message_id, from, index, error = %e.chain(), "cannot read a stored attachment");
                self.inner.log_integrity(&subject, index, &e).await;
                return Err(e);
            }
        };
        Ok(AttachmentReader {
            gw: self.inner.clone(),
            subject,
            index,
            reader,
        })
    }
}
