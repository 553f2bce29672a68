//! The inbound queue → the pipeline: up to `amqp.prefetch` messages at once,
//! in order per sender and recipient.
//!
//! Each message goes through the one pipeline as it always did (decode,
//! checks, the group commit; a gateway's failure holds it and tries again).
//! Running several at once is what lets the store's group committer commit
//! them together; the window of messages in progress is the channel's
//! prefetch (`basic.qos`), so memory is bounded by it.
//!
//! Order. A message starts only when no earlier message that is still
//! unsettled shares a (sender, recipient) pair with it (`Window`). The pairs
//! are read from the envelope the way the pipeline reads it — the first
//! frame of a stream, `from` and `to` trimmed as `OrganId::parse_with`
//! trims them — so two messages the pipeline would accept for one pair
//! always have a pair in common here. A message whose envelope cannot be
//! read (the pipeline refuses it) waits for everything before it and holds
//! back everything after it: it goes through alone, in order. A held
//! message (retrying with backoff) blocks only the pairs it has; the others
//! go on. Messages of different pairs may be accepted in another order than
//! the queue's, which the pipeline allows for anything arriving from an
//! exchange (a notice or a recall may overtake its document on the way, and
//! the lifecycle applies it when the document comes); a reply to a message
//! can only be published after that message was accepted and delivered.
//!
//! Acknowledgement. A message is acknowledged to the broker only after its
//! outcome is durable: accepted (committed), or dead-lettered with the
//! broker's confirm of the copy. A run of settled messages at the front of
//! the window is acknowledged with one `multiple` ack of the last of them —
//! every delivery of this channel up to that tag is settled then, and the
//! ones acknowledged alone before have left the window; a settled message
//! behind an unsettled one is acknowledged alone at once, so that it does
//! not take a place of the prefetch while the one before it is held. What
//! is unsettled when the connection or the gateway stops stays
//! unacknowledged, and the broker hands it out again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Acker, Channel};
use lienthong_core::error::{Error, Reason, Result};
use lienthong_core::pipeline::{Arrival, Caller, Gateway, Hops};
use lienthong_core::{sha256, text::truncate};
use lienthong_proto::v1::Envelope;
use prost::Message as _;
use tokio::sync::watch;

use crate::wire::{self, HEADER_DETAIL, HEADER_FAILURES, HEADER_HOPS, HEADER_REASON};
use crate::{AmqpConfig, AmqpError, AmqpMetrics};

/// What became of one message.
enum Outcome {
    /// Durable in the gateway (or a repeat of what is): acknowledge it.
    Accepted,
    /// Can never be accepted: dead-letter it with this reason.
    Refused(Error),
    /// Failed `amqp.max_failures` times while the gateway was otherwise
    /// healthy: dead-letter it with the last failure, so that it stops
    /// holding up the queue.
    SetAside(Error, u32),
}

/// The failures of held messages, counted only while the gateway was
/// otherwise healthy, by the SHA-256 of the body: a message the broker hands
/// back after a lost connection keeps its count. In memory: a restart
/// starts every count again, and the broker's own `x-delivery-count`
/// (`amqp.max_redeliveries`) bounds what a restart could not.
///
/// Shared by the messages in progress; the lock is taken only to read or
/// change a count, never across an await.
#[derive(Debug, Default)]
pub(crate) struct FailureBook {
    counts: Mutex<HashMap<[u8; 32], u32>>,
}

impl FailureBook {
    /// Entries stay behind only for messages the broker took back; losing
    /// them restarts those counts, nothing more.
    const MAX_ENTRIES: usize = 1024;

    fn count(&self, key: [u8; 32]) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= Self::MAX_ENTRIES && !counts.contains_key(&key) {
            counts.clear();
        }
        let n = counts.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn forget(&self, key: &[u8; 32]) {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Whom a message is from and for, as far as order goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pairs {
    /// (sender, recipient) for every recipient in `to`.
    Known(Vec<(String, String)>),
    /// The envelope could not be read: it goes through alone.
    Unknown,
}

impl Pairs {
    fn of(d: &Delivery) -> Pairs {
        let content_type = d.properties.content_type().as_ref().map(|c| c.as_str());
        let envelope = wire::kind(content_type)
            .ok()
            .and_then(|kind| wire::envelope_only(kind, &d.data))
            .and_then(|signed| Envelope::decode(signed.payload).ok());
        let Some(env) = envelope else {
            return Pairs::Unknown;
        };
        let from = env.from.trim();
        if from.is_empty() || env.to.is_empty() {
            return Pairs::Unknown;
        }
        Pairs::Known(
            env.to
                .iter()
                .map(|to| (from.to_owned(), to.trim().to_owned()))
                .collect(),
        )
    }
}

enum State {
    Waiting(Box<Delivery>),
    Running,
    Settled,
}

struct Slot {
    tag: u64,
    acker: Acker,
    pairs: Pairs,
    state: State,
}

/// The messages taken from the queue and not yet acknowledged, in delivery
/// order: which may start, and which to acknowledge how.
#[derive(Default)]
struct Window {
    slots: VecDeque<Slot>,
}

impl Window {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn push(&mut self, d: Delivery) {
        self.slots.push_back(Slot {
            tag: d.delivery_tag,
            acker: d.acker.clone(),
            pairs: Pairs::of(&d),
            state: State::Waiting(Box::new(d)),
        });
    }

    /// The waiting messages that no earlier unsettled one shares a pair
    /// with, now marked running.
    fn start(&mut self) -> Vec<Delivery> {
        let mut ready = Vec::new();
        {
            let mut taken: HashSet<(&str, &str)> = HashSet::new();
            let mut earlier = false;
            for (i, slot) in self.slots.iter().enumerate() {
                let waiting = match slot.state {
                    State::Settled => continue,
                    State::Waiting(_) => true,
                    State::Running => false,
                };
                match &slot.pairs {
                    Pairs::Unknown => {
                        if waiting && !earlier {
                            ready.push(i);
                        }
                        // Nothing after it may start before it settles.
                        break;
                    }
                    Pairs::Known(pairs) => {
                        if waiting
                            && !pairs
                                .iter()
                                .any(|(f, t)| taken.contains(&(f.as_str(), t.as_str())))
                        {
                            ready.push(i);
                        }
                        taken.extend(pairs.iter().map(|(f, t)| (f.as_str(), t.as_str())));
                    }
                }
                earlier = true;
            }
        }
        ready
            .into_iter()
            .filter_map(|i| {
                let slot = &mut self.slots[i];
                match std::mem::replace(&mut slot.state, State::Running) {
                    State::Waiting(d) => Some(*d),
                    other => {
                        slot.state = other;
                        None
                    }
                }
            })
            .collect()
    }

    /// The message's outcome is durable: it may be acknowledged.
    fn settle(&mut self, tag: u64) {
        if let Ok(i) = self.slots.binary_search_by_key(&tag, |s| s.tag) {
            self.slots[i].state = State::Settled;
        }
    }

    /// Takes the settled messages out of the window, with the acks that
    /// acknowledge them: one `multiple` ack for the settled run at the
    /// front, one ack each for those behind an unsettled message: (the
    /// delivery's acker, whether the ack is `multiple`).
    fn acks(&mut self) -> Vec<(Acker, bool)> {
        let mut out = Vec::new();
        let mut run = 0;
        let mut last = None;
        while self
            .slots
            .front()
            .is_some_and(|s| matches!(s.state, State::Settled))
        {
            last = self.slots.pop_front();
            run += 1;
        }
        if let Some(s) = last {
            out.push((s.acker, run > 1));
        }
        self.slots.retain(|s| {
            if matches!(s.state, State::Settled) {
                out.push((s.acker.clone(), false));
                false
            } else {
                true
            }
        });
        out
    }
}

type Settled<'a> = BoxFuture<'a, (u64, Result<(), AmqpError>)>;

pub(crate) async fn run(
    gw: &Gateway,
    cfg: &AmqpConfig,
    metrics: &AmqpMetrics,
    ch: &Channel,
    dead: &Channel,
    book: &FailureBook,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    previous_consumer_gone(ch, &cfg.queue).await?;
    let mut consumer = ch
        .basic_consume(
            cfg.queue.as_str().into(),
            format!("lienthong-{}", gw.gateway_id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let room = usize::from(cfg.prefetch.max(1));
    let mut window = Window::default();
    let mut running: FuturesUnordered<Settled<'_>> = FuturesUnordered::new();
    // A stopping gateway takes no new message from the stream and takes
    // every message it started to a durable outcome, acknowledged; what it
    // had not started goes back to the broker when the channel closes, at
    // the head of the queue and in order.
    let mut stop = shutdown.clone();
    let mut stopping = false;
    loop {
        if stopping && running.is_empty() {
            // Closed with the subscription still on, so that the broker
            // takes back at once, to the head of the queue, whatever it had
            // handed over: dropped first, lapin's consumer would cancel the
            // subscription, and the deliveries the broker still writes after
            // a cancel (lapin drops them) would be taken back only later,
            // behind messages served to the next consumer.
            // A failed close must not end the relay's drain beside it: the
            // connection's close hands the rest back just the same.
            if let Err(e) = ch.close(200, "lienthong: stopping".into()).await {
                tracing::info!(error = %e, "AMQP: the consuming channel did not close cleanly; the connection's close hands its messages back");
            }
            return Ok(());
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s).map(|_| ()), if !stopping => {
                stopping = true;
            }
            next = consumer.next(), if !stopping && window.len() < room => {
                let Some(delivery) = next else { break };
                let delivery = delivery?;
                if delivery.redelivered {
                    metrics.redelivered();
                }
                window.push(delivery);
            }
            Some(first) = running.next(), if !running.is_empty() => {
                // What settled meanwhile (a group commit answers several at
                // once) is acknowledged with it; what is durable is
                // acknowledged even when another message ends the run.
                let ready = std::iter::from_fn(|| running.next().now_or_never().flatten());
                let mut failed = None;
                for (tag, settled) in std::iter::once(first).chain(ready) {
                    match settled {
                        Ok(()) => window.settle(tag),
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                for (acker, multiple) in window.acks() {
                    acker.ack(BasicAckOptions { multiple }).await?;
                }
                match failed {
                    // Held when the stop came (the gateway could not take
                    // it): not acknowledged, so the broker keeps it.
                    Some(e) if stopping => {
                        tracing::info!(error = %e, "AMQP consumer stopping with a message unacknowledged");
                    }
                    Some(e) => return Err(e),
                    None => {}
                }
            }
            else => {
                // Not reached: a full window always has a message running
                // (the first unsettled one may always start).
                return Err(AmqpError::Setup("the consumer's window is stuck".to_owned()));
            }
        }
        if stopping {
            continue;
        }
        for delivery in window.start() {
            let tag = delivery.delivery_tag;
            let shutdown = shutdown.clone();
            running.push(
                async move {
                    let r = handle(gw, cfg, metrics, dead, book, delivery, shutdown).await;
                    (tag, r)
                }
                .boxed(),
            );
        }
    }
    Err(AmqpError::Setup(
        "the broker ended the consumer (queue deleted or connection closed)".to_owned(),
    ))
}

/// Waits (a few seconds at most) until the queue has no consumer: the
/// previous run of this gateway, if its connection has only just closed,
/// still holds the messages it had not acknowledged, and a quorum queue
/// takes them back — to the head, in order — only when it has seen that
/// consumer go. Subscribing before that, the new consumer would be served
/// later messages of a sender first.
async fn previous_consumer_gone(ch: &Channel, queue: &str) -> Result<(), AmqpError> {
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    loop {
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        if q.consumer_count() == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                queue,
                consumers = q.consumer_count(),
                "AMQP: another consumer still reads the inbound queue; subscribing beside it (messages it holds and hands back may come after later ones of their sender)"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a starting gateway waits for the consumer of its previous run
/// to be gone.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// Takes one message to a durable outcome: accepted, or dead-lettered with
/// the broker's confirm (acknowledging it is the caller's).
async fn handle(
    gw: &Gateway,
    cfg: &AmqpConfig,
    metrics: &AmqpMetrics,
    dead: &Channel,
    book: &FailureBook,
    delivery: Delivery,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    // Redeliveries past the limit mean the gateway kept failing on the
    // message (or crashing): set it aside — but not during an outage,
    // which redelivers everything it held, poison or not.
    let over_limit = match redelivery_limit(&delivery, cfg.max_redeliveries) {
        Some(refusal) if gw.healthy().await.is_ok() => Some(refusal),
        _ => None,
    };
    let outcome = match over_limit {
        Some(refusal) => {
            let caller = caller_of(&delivery);
            let id = message_id_of(&delivery);
            Outcome::Refused(gw.refuse(Some(&caller), &id, refusal).await)
        }
        None => process_until_settled(gw, cfg, &delivery, book, &mut shutdown).await?,
    };
    match &outcome {
        Outcome::Accepted => {}
        Outcome::Refused(err) => dead_letter(dead, cfg, metrics, &delivery, err, None).await?,
        Outcome::SetAside(err, n) => {
            dead_letter(dead, cfg, metrics, &delivery, err, Some(*n)).await?
        }
    }
    Ok(())
}

/// Tries a message until it is accepted, refused, or set aside. A failure
/// that is the gateway's, not the message's (`UNAVAILABLE`, `INTERNAL`),
/// holds it — unacknowledged, so a crash hands it back to the broker — and
/// tries again with backoff; the messages behind it that share a (sender,
/// recipient) pair with it wait for it (see `Window`).
///
/// Such a failure counts against the message only while the gateway is
/// otherwise healthy (its database answers a ping, its attachment store
/// takes a write): then it is this message that fails, and after
/// `amqp.max_failures` counted failures it is set aside, so that no message
/// can hold the queue. During an outage nothing is counted, and the messages
/// wait, each pair in order, for the gateway to come back.
async fn process_until_settled(
    gw: &Gateway,
    cfg: &AmqpConfig,
    d: &Delivery,
    book: &FailureBook,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Outcome, AmqpError> {
    let key = sha256(&d.data);
    let max = cfg.max_failures.max(1);
    let mut backoff = Duration::from_millis(100);
    loop {
        let err = match process(gw, d).await {
            Ok(()) => {
                book.forget(&key);
                return Ok(Outcome::Accepted);
            }
            Err(e) if !e.reason().is_gateway_fault() => {
                book.forget(&key);
                return Ok(Outcome::Refused(e));
            }
            Err(e) => e,
        };
        match gw.healthy().await {
            Ok(()) => {
                let n = book.count(key);
                if n >= max {
                    book.forget(&key);
                    let aside = Error::new(
                        err.reason(),
                        format!(
                            "set aside after {n} attempts that failed while the gateway was otherwise healthy (amqp.max_failures is {max}); the last one: {} — once the cause is fixed, publish it again",
                            err.message()
                        ),
                    );
                    let caller = caller_of(d);
                    let aside = gw.refuse(Some(&caller), &message_id_of(d), aside).await;
                    return Ok(Outcome::SetAside(aside, n));
                }
                tracing::warn!(
                    message_id = %message_id_of(d),
                    error = %err.chain(),
                    failures = n,
                    max_failures = max,
                    retry_in_ms = backoff.as_millis() as u64,
                    "AMQP message failed while the gateway is otherwise healthy; holding it and trying again"
                );
            }
            Err(outage) => {
                tracing::warn!(
                    message_id = %message_id_of(d),
                    error = %err.chain(),
                    outage = %outage.chain(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "AMQP message not accepted during an outage; holding it (not counted against it) and trying again"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => {
                return Err(AmqpError::Setup("shutting down with a message held".to_owned()));
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The one pipeline: decode the body, then the same submission as gRPC.
async fn process(gw: &Gateway, d: &Delivery) -> Result<()> {
    let caller = caller_of(d);
    let content_type = d.properties.content_type().as_ref().map(|c| c.as_str());
    let kind = match wire::kind(content_type) {
        Ok(k) => k,
        Err(e) => return Err(gw.refuse(Some(&caller), &message_id_of(d), e).await),
    };
    if kind == wire::Kind::Edxml {
        let e = Error::new(
            Reason::BadSignature,
            "an edXML package carries no signature this gateway verifies, so over AMQP it cannot prove who sent it; publish a signed lienthong envelope, or send the edXML over gRPC (Exchange.SendEdxml) as an authenticated agency",
        );
        return Err(gw.refuse(Some(&caller), &message_id_of(d), e).await);
    }
    let decoded = match wire::decode(kind, d.data.clone()) {
        Ok(x) => x,
        Err(e) => return Err(gw.refuse(Some(&caller), &message_id_of(d), e).await),
    };
    let arrival = Arrival {
        exchange: d.exchange.as_str().to_owned(),
        upstream: hops_of(d),
    };
    let mut sub = gw
        .begin_send_arrived(&caller, decoded.envelope, decoded.envelope_len, arrival)
        .await?;
    for c in decoded.chunks {
        sub.write_chunk(c.index, &c.data).await?;
    }
    let receipt = sub.finish().await?;
    tracing::debug!(message_id = %receipt.message_id, from = %receipt.from, duplicate = receipt.duplicate, "AMQP message accepted");
    Ok(())
}

/// Who the transfer log names as having handed the message over.
fn caller_of(d: &Delivery) -> Caller {
    let via = if d.exchange.as_str().is_empty() {
        "the default exchange".to_owned()
    } else {
        format!("exchange {}", d.exchange)
    };
    Caller::exchange(format!(
        "amqp: {via}, routing key {}",
        truncate(d.routing_key.as_str(), 100)
    ))
}

fn message_id_of(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|m| truncate(m.as_str(), 200).to_owned())
        .unwrap_or_default()
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

fn hops_of(d: &Delivery) -> Vec<lienthong_proto::v1::TraceHop> {
    let bytes: &[u8] = match header(d, HEADER_HOPS) {
        Some(AMQPValue::LongString(s)) => s.as_bytes(),
        Some(AMQPValue::ByteArray(b)) => b.as_slice(),
        _ => return Vec::new(),
    };
    // Informative only (the signature is what is trusted): a broken header
    // loses the earlier hops, never the message.
    Hops::decode(bytes).map(|h| h.hops).unwrap_or_default()
}

/// A quorum queue counts deliveries in `x-delivery-count`.
fn redelivery_limit(d: &Delivery, max: u32) -> Option<Error> {
    let count = match header(d, "x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        _ => 0,
    };
    (count > i64::from(max)).then(|| {
        Error::new(
            Reason::Malformed,
            format!(
                "the message was delivered {} times without being accepted (amqp.max_redeliveries is {max}); it was set aside so that it stops holding up the queue — look for its message_id in the gateway's log",
                count + 1
            ),
        )
    })
}

/// Publishes a copy to the dead-letter exchange with the reason, and waits
/// for the broker's confirm; only then may the original be acknowledged.
async fn dead_letter(
    ch: &Channel,
    cfg: &AmqpConfig,
    metrics: &AmqpMetrics,
    d: &Delivery,
    err: &Error,
    failures: Option<u32>,
) -> Result<(), AmqpError> {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    if let Some(n) = failures {
        headers.insert(HEADER_FAILURES.into(), AMQPValue::LongUInt(n));
    }
    headers.insert(
        HEADER_REASON.into(),
        AMQPValue::LongString(err.reason().as_str().into()),
    );
    headers.insert(
        HEADER_DETAIL.into(),
        AMQPValue::LongString(LongString::from(err.message().to_owned())),
    );
    headers.insert(
        "x-lienthong-queue".into(),
        AMQPValue::LongString(cfg.queue.as_str().into()),
    );
    // The dead-letter exchange routes by inbound queue (one dead-letter
    // queue per gateway); the original key is kept in a header.
    headers.insert(
        "x-lienthong-routing-key".into(),
        AMQPValue::LongString(d.routing_key.as_str().into()),
    );
    headers.insert(
        "x-lienthong-exchange".into(),
        AMQPValue::LongString(d.exchange.as_str().into()),
    );
    let props = d.properties.clone().with_headers(headers);
    let confirm = ch
        .basic_publish(
            cfg.dead_letter_exchange.as_str().into(),
            cfg.queue.as_str().into(),
            BasicPublishOptions::default(),
            &d.data,
            props,
        )
        .await?
        .await?;
    if !confirm.is_ack() {
        return Err(AmqpError::Setup(
            "the broker refused a dead-lettered copy; the message stays in the queue".to_owned(),
        ));
    }
    metrics.dead_lettered(err.reason());
    tracing::warn!(
        message_id = %message_id_of(d),
        reason = %err.reason(),
        error = %err.message(),
        "AMQP message dead-lettered"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lienthong_proto::v1::SignedEnvelope;

    fn body(from: &str, to: &[&str]) -> Vec<u8> {
        let env = Envelope {
            message_id: "m".to_owned(),
            from: from.to_owned(),
            to: to.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        };
        SignedEnvelope {
            payload: env.encode_to_vec().into(),
            payload_type: "application/vnd.lienthong.envelope.v1+protobuf".to_owned(),
            signatures: Vec::new(),
        }
        .encode_to_vec()
    }

    fn delivery(tag: u64, data: Vec<u8>, content_type: &str) -> Delivery {
        let mut d = Delivery::mock(tag, "".into(), "".into(), false, data);
        d.properties = BasicProperties::default().with_content_type(content_type.into());
        d
    }

    fn letter(tag: u64, from: &str, to: &[&str]) -> Delivery {
        delivery(tag, body(from, to), wire::CONTENT_TYPE_ENVELOPE)
    }

    fn tags(ds: Vec<Delivery>) -> Vec<u64> {
        ds.into_iter().map(|d| d.delivery_tag).collect()
    }

    fn acker(tag: u64) -> Acker {
        Delivery::mock(tag, "".into(), "".into(), false, Vec::new()).acker
    }

    #[test]
    fn a_pair_goes_in_order_while_other_pairs_go_alongside() {
        let mut w = Window::default();
        w.push(letter(1, "A", &["B"]));
        w.push(letter(2, "A", &["B"]));
        w.push(letter(3, "C", &["B"]));
        w.push(letter(4, "X", &["D", "B"]));
        w.push(letter(5, "A", &["D", "B"]));
        w.push(letter(6, "B", &["A"]));
        assert_eq!(tags(w.start()), [1, 3, 4, 6]);
        // 1 is held (retrying): only what shares A → B waits for it.
        w.settle(3);
        w.settle(4);
        w.settle(6);
        assert!(w.start().is_empty(), "2 and 5 share A → B with 1");
        assert_eq!(
            w.acks(),
            [(acker(3), false), (acker(4), false), (acker(6), false)],
            "settled behind a held message: acknowledged at once, alone"
        );
        w.settle(1);
        assert_eq!(tags(w.start()), [2], "5 shares A → B with 2");
        assert_eq!(w.acks(), [(acker(1), false)]);
        w.settle(2);
        assert_eq!(tags(w.start()), [5]);
        w.settle(5);
        assert_eq!(w.acks(), [(acker(5), true)], "2 and 5: one ack");
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_settled_run_at_the_front_is_acknowledged_with_one_multiple_ack() {
        let mut w = Window::default();
        for (tag, from) in [(1, "A"), (2, "C"), (3, "X"), (4, "Y")] {
            w.push(letter(tag, from, &["B"]));
        }
        assert_eq!(tags(w.start()), [1, 2, 3, 4]);
        w.settle(2);
        w.settle(1);
        w.settle(4);
        // 1 and 2 up to 2; 4 alone (3 is unsettled between).
        assert_eq!(w.acks(), [(acker(2), true), (acker(4), false)]);
        w.settle(3);
        assert_eq!(w.acks(), [(acker(3), false)]);
        assert!(w.acks().is_empty());
    }

    #[test]
    fn a_message_whose_envelope_cannot_be_read_goes_through_alone() {
        let mut w = Window::default();
        w.push(letter(1, "A", &["B"]));
        w.push(delivery(
            2,
            b"\xff\xff not protobuf".to_vec(),
            "application/x-protobuf",
        ));
        w.push(letter(3, "C", &["D"]));
        w.push(delivery(4, b"<edXML/>".to_vec(), "application/xml"));
        w.push(letter(5, "E", &[]));
        w.push(letter(6, "F", &["G"]));
        assert_eq!(tags(w.start()), [1]);
        w.settle(1);
        assert_eq!(tags(w.start()), [2]);
        w.settle(2);
        assert_eq!(tags(w.start()), [3]);
        assert!(w.start().is_empty());
        w.settle(3);
        assert_eq!(tags(w.start()), [4]);
        w.settle(4);
        assert_eq!(
            tags(w.start()),
            [5],
            "no recipient: the pipeline refuses it, alone"
        );
        w.settle(5);
        assert_eq!(tags(w.start()), [6]);
    }

    #[test]
    fn pairs_are_read_as_the_pipeline_reads_them() {
        // A stream's envelope is its first frame; its attachments are not
        // read for this.
        let signed = SignedEnvelope::decode(&body(" A", &["B ", "C"])[..]).unwrap();
        let mut stream = wire::stream_start(&signed.encode_to_vec(), 0);
        wire::stream_push(&mut stream, 0, &vec![7u8; 300_000]);
        let d = delivery(1, stream, wire::CONTENT_TYPE_STREAM);
        let pairs = |v: &[(&str, &str)]| {
            Pairs::Known(
                v.iter()
                    .map(|(f, t)| ((*f).to_owned(), (*t).to_owned()))
                    .collect(),
            )
        };
        assert_eq!(Pairs::of(&d), pairs(&[("A", "B"), ("A", "C")]));
        // Identifiers are trimmed as the pipeline trims them: the same pair.
        let mut w = Window::default();
        w.push(d);
        w.push(letter(2, "A", &["C"]));
        assert_eq!(tags(w.start()), [1]);
        // A stream that starts with attachment bytes is refused: alone.
        let mut chunk_first = Vec::new();
        wire::stream_push(&mut chunk_first, 0, b"x");
        let d = delivery(3, chunk_first, wire::CONTENT_TYPE_STREAM);
        assert_eq!(Pairs::of(&d), Pairs::Unknown);
    }

    #[test]
    fn failures_are_counted_per_message_until_forgotten() {
        let book = FailureBook::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(book.count(a), 1);
        assert_eq!(book.count(a), 2);
        assert_eq!(book.count(b), 1);
        book.forget(&a);
        assert_eq!(book.count(a), 1);
    }
}
