//! Recipients' inboxes: live `Receive` streams woken when a delivery
//! lands, acknowledgements, and reading a delivered message's envelope and
//! attachments.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lienthong_proto::v1::{Delivery, SignedEnvelope, Verification};
use prost::Message as _;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::TryRecvError;

use crate::blobs::BlobReader;
use crate::error::{Error, OrErr, Reason, Result};

/// What was accepted was stored whole and checked; if it cannot be read
/// back, the gateway's data is damaged — its fault, and not one a retry
/// mends (not `UNAVAILABLE`).
const STORED_ENVELOPE_UNREADABLE: &str =
    "a stored envelope could not be read back; the gateway's data is damaged, tell its operators";
use crate::rows::{DeliveryRow, MessageRow};
use crate::store::{HandOut, PendingDelivery, now_micros};
use crate::text::truncate;
use lienthong_types::timestamp;

use super::queries::hops_of;
use super::{Access, Caller, Gateway, Inner, Role, Subject};

/// Deliveries heard of per recipient and not yet taken by its live streams;
/// a stream that falls further behind reads the database instead.
const FEED_DEPTH: usize = 64;
/// Bytes of envelopes held in memory for live streams, all recipients
/// together: beyond it (streams not reading), they read the database.
const FEED_BYTES: usize = 64 << 20;
/// A larger envelope is read from the database by the stream that wants it.
const FEED_ENVELOPE_MAX: usize = 1 << 20;

/// A delivery as it landed, for the live `Receive` streams of its
/// recipient. The rows stay the truth: a stream hands one out only after
/// marking it handed out (`HandOut::NEW`), so one that a read of the
/// database handed out already, or one acknowledged or recalled since, is
/// skipped.
#[derive(Debug, Clone)]
pub(super) enum Landed {
    /// A delivery just committed, with its message.
    Delivery(Arc<Fresh>),
    /// Something landed that is not carried here: look in the database.
    Look,
}

#[derive(Debug)]
pub(super) struct Fresh {
    pending: PendingDelivery,
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Tells the live `Receive` streams of a recipient what lands for it.
#[derive(Debug, Default)]
pub(super) struct Inboxes {
    // Held only for map access, never across an await.
    senders: Mutex<HashMap<String, broadcast::Sender<Landed>>>,
    held: Arc<AtomicUsize>,
}

impl Inboxes {
    pub(super) fn subscribe(&self, recipient: &str) -> broadcast::Receiver<Landed> {
        let mut map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(recipient.to_owned())
            .or_insert_with(|| broadcast::channel(FEED_DEPTH).0)
            .subscribe()
    }

    /// A delivery committed for a recipient of this gateway's inboxes. The
    /// message is copied only for a recipient with a stream listening.
    pub(super) fn landed(&self, delivery: &DeliveryRow, message: &MessageRow) {
        let map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = map.get(&delivery.recipient) else {
            return;
        };
        if tx.receiver_count() == 0 {
            return;
        }
        let pending = PendingDelivery {
            delivery: delivery.clone(),
            message: message.clone(),
        };
        let bytes = pending.message.signed_envelope.len() + pending.message.verification.len();
        let fits = bytes <= FEED_ENVELOPE_MAX
            && self
                .held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                    (h + bytes <= FEED_BYTES).then_some(h + bytes)
                })
                .is_ok();
        let landed = if fits {
            Landed::Delivery(Arc::new(Fresh {
                pending,
                bytes,
                held: self.held.clone(),
            }))
        } else {
            Landed::Look
        };
        // No receiver left since the count: nothing to tell.
        let _ = tx.send(landed);
    }
}

impl Inboxes {
    /// Something landed for `recipient` that this gateway did not commit
    /// itself (another replica did): its live streams look in the database.
    pub(super) fn look(&self, recipient: &str) {
        let map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(recipient) {
            let _ = tx.send(Landed::Look);
        }
    }

    /// Anything may have landed for anyone (a notice may have been lost).
    pub(super) fn look_all(&self) {
        let map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        for tx in map.values() {
            let _ = tx.send(Landed::Look);
        }
    }
}

/// Wakes this replica's live `Receive` streams when another replica of the
/// same PostgreSQL database commits deliveries for their recipients. Nothing
/// to do on SQLite (one process). While the database is away it tries
/// again, and after a lost connection it wakes every stream, since a notice
/// may have been missed.
pub async fn watch_landed(gw: Gateway, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut listener = loop {
        match gw.inner.store.listen_landed().await {
            Ok(Some(l)) => break l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "cannot listen for deliveries other replicas commit; trying again");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let heard = tokio::select! {
            _ = &mut stop => return,
            heard = listener.next() => heard,
        };
        match heard {
            Ok(lienthong_store::landed::Heard::Landed { recipients }) => {
                for r in &recipients {
                    gw.inner.inboxes.look(r);
                }
            }
            Ok(lienthong_store::landed::Heard::Missed) => gw.inner.inboxes.look_all(),
            Err(e) => {
                tracing::warn!(error = %e.chain(), "lost the connection that listens for other replicas' deliveries; the streams look for themselves meanwhile");
                gw.inner.inboxes.look_all();
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
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

/// A delivery about to be handed out: read from the database, or heard of
/// as it landed.
#[derive(Debug)]
pub(super) enum Handed {
    Read(Box<PendingDelivery>),
    Fresh(Arc<Fresh>),
}

impl Handed {
    fn pending(&self) -> &PendingDelivery {
        match self {
            Handed::Read(p) => p,
            Handed::Fresh(f) => &f.pending,
        }
    }
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
    pub(super) buffered: VecDeque<(Handed, i32)>,
    /// Deliveries the caller still wants (`Receive.max`); `None`: no bound.
    /// Nothing beyond it is read, so nothing beyond it is marked handed out.
    pub(super) remaining: Option<u32>,
    /// What lands for the caller while the stream is open.
    pub(super) feed: broadcast::Receiver<Landed>,
    /// Heard of and not yet looked at.
    pub(super) landed: VecDeque<Arc<Fresh>>,
    /// Something landed that only the database can tell.
    pub(super) look: bool,
    /// When the database was last read for deliveries due again.
    pub(super) scanned_at: tokio::time::Instant,
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
    ///
    /// The first pass reads the database, oldest first. Then a following
    /// stream hands out what lands from memory (marking each handed out
    /// first) and reads the database only when told to look, when it fell
    /// behind what memory keeps, and every `tick` for deliveries due again.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        if self.caller.role != Role::Agency {
            return Err(no_inbox());
        }
        let tick = (self.gw.limits.redelivery_after / 4).max(Duration::from_millis(250));
        loop {
            if let Some((p, attempt)) = self.buffered.pop_front() {
                self.gw.metrics.delivery_handed_out();
                return Ok(Some(self.delivery(p.pending(), attempt)?));
            }
            let limit = match self.remaining {
                Some(0) => return Ok(None),
                Some(n) => u64::from(n).min(64),
                None => 64,
            };
            if self.standing_at.elapsed() >= STANDING_CHECK {
                self.check_standing().await?;
            }
            if !self.first_pass {
                self.hear();
                if !self.landed.is_empty() {
                    self.claim(limit as usize).await?;
                    continue;
                }
            }
            if self.first_pass || self.look || self.scanned_at.elapsed() >= tick {
                // Whatever lands from now on is heard of: the read below
                // need not be told again.
                self.look = false;
                let (batch, hand_out) = if self.first_pass {
                    let batch = self
                        .gw
                        .store
                        .pending(&self.caller.organ_id, self.cursor, None, limit)
                        .await?;
                    (batch, HandOut::Pending)
                } else {
                    self.scanned_at = tokio::time::Instant::now();
                    let lease = self.gw.limits.redelivery_after.as_micros() as i64;
                    let due = now_micros() - lease;
                    let batch = self
                        .gw
                        .store
                        .pending(&self.caller.organ_id, 0, Some(due), limit)
                        .await?;
                    // Marked only if still due when marked: another stream
                    // of this recipient — on another replica, told of the
                    // same deliveries — may hand them out meanwhile.
                    (batch, HandOut::NotSince(due))
                };
                if let Some(last) = batch.last() {
                    self.cursor = self.cursor.max(last.delivery.id);
                    let full = batch.len() as u64 == limit;
                    // The whole batch is marked handed out at once, through
                    // the group committer: a recipient with a backlog costs
                    // a share of one fsync per batch, not one per document.
                    // What is marked and not yet sent when the stream ends
                    // comes again after `redelivery_after`, as any
                    // unacknowledged delivery does.
                    self.hand_out(
                        batch
                            .into_iter()
                            .map(|p| Handed::Read(Box::new(p)))
                            .collect(),
                        hand_out,
                    )
                    .await?;
                    // A full batch may have more behind it.
                    self.look = full;
                    continue;
                }
                if self.first_pass {
                    self.first_pass = false;
                    self.scanned_at = tokio::time::Instant::now();
                    if self.follow {
                        continue;
                    }
                }
            }
            if !self.follow {
                return Ok(None);
            }
            tokio::select! {
                heard = self.feed.recv() => match heard {
                    Ok(Landed::Delivery(fresh)) => self.landed.push_back(fresh),
                    Ok(Landed::Look) | Err(broadcast::error::RecvError::Lagged(_)) => self.look = true,
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                },
                _ = tokio::time::sleep_until(self.scanned_at + tick) => {}
                _ = tokio::time::sleep_until(self.standing_at + STANDING_CHECK) => {
                    self.check_standing().await?;
                }
            }
        }
    }

    /// Takes what was heard of without waiting.
    fn hear(&mut self) {
        loop {
            match self.feed.try_recv() {
                Ok(Landed::Delivery(fresh)) => self.landed.push_back(fresh),
                Ok(Landed::Look) | Err(TryRecvError::Lagged(_)) => self.look = true,
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return,
            }
        }
    }

    /// Marks up to `limit` of the deliveries heard of handed out, oldest
    /// first, and keeps those no read handed out before.
    async fn claim(&mut self, limit: usize) -> Result<()> {
        let n = limit.min(self.landed.len());
        let mut batch: Vec<Arc<Fresh>> = self.landed.drain(..n).collect();
        batch.sort_by_key(|f| f.pending.delivery.id);
        self.hand_out(batch.into_iter().map(Handed::Fresh).collect(), HandOut::NEW)
            .await
    }

    /// Marks a batch handed out (one commit for all of it) and keeps, with
    /// their attempt numbers, those the rows say are still to hand out.
    async fn hand_out(&mut self, batch: Vec<Handed>, hand_out: HandOut) -> Result<()> {
        let refs: Vec<&PendingDelivery> = batch.iter().map(Handed::pending).collect();
        let attempts = self
            .gw
            .store
            .mark_delivered_batch(&refs, self.caller.transport.as_str(), hand_out)
            .await?;
        for (p, attempt) in batch.into_iter().zip(attempts) {
            if let Some(attempt) = attempt {
                if let Some(n) = self.remaining.as_mut() {
                    *n = n.saturating_sub(1);
                }
                self.buffered.push_back((p, attempt));
            }
        }
        Ok(())
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

    pub(super) fn delivery(&self, p: &PendingDelivery, attempt: i32) -> Result<Delivery> {
        let envelope = SignedEnvelope::decode(p.message.signed_envelope.as_slice())
            .or_err(Reason::Internal, STORED_ENVELOPE_UNREADABLE)?;
        let verification = Verification::decode(p.message.verification.as_slice()).ok();
        Ok(Delivery {
            delivery_id: p.delivery.delivery_id.clone(),
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
            // Only a following stream listens: one that drains and ends
            // would make every acceptance copy its message for nothing.
            feed: if follow {
                self.inner.inboxes.subscribe(&caller.organ_id)
            } else {
                broadcast::channel(1).1
            },
            landed: VecDeque::new(),
            look: false,
            scanned_at: tokio::time::Instant::now(),
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
