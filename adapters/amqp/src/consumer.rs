//! The inbound queue → the pipeline, one message at a time, in order.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lienthong_core::error::{Error, Reason, Result};
use lienthong_core::pipeline::{Arrival, Caller, Gateway, Hops};
use lienthong_core::{sha256, text::truncate};
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
#[derive(Debug, Default)]
pub(crate) struct FailureBook {
    counts: HashMap<[u8; 32], u32>,
}

impl FailureBook {
    /// Entries stay behind only for messages the broker took back; losing
    /// them restarts those counts, nothing more.
    const MAX_ENTRIES: usize = 1024;

    fn count(&mut self, key: [u8; 32]) -> u32 {
        if self.counts.len() >= Self::MAX_ENTRIES && !self.counts.contains_key(&key) {
            self.counts.clear();
        }
        let n = self.counts.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn forget(&mut self, key: &[u8; 32]) {
        self.counts.remove(key);
    }
}

pub(crate) async fn run(
    gw: &Gateway,
    cfg: &AmqpConfig,
    metrics: &AmqpMetrics,
    ch: &Channel,
    dead: &Channel,
    book: &mut FailureBook,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    let mut consumer = ch
        .basic_consume(
            cfg.queue.as_str().into(),
            format!("lienthong-{}", gw.gateway_id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        if delivery.redelivered {
            metrics.redelivered();
        }
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
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    Err(AmqpError::Setup(
        "the broker ended the consumer (queue deleted or connection closed)".to_owned(),
    ))
}

/// Tries a message until it is accepted, refused, or set aside. A failure
/// that is the gateway's, not the message's (`UNAVAILABLE`, `INTERNAL`),
/// holds it — unacknowledged, so a crash hands it back to the broker — and
/// tries again with backoff; taking the next message instead would reorder
/// what one sender sent one recipient.
///
/// Such a failure counts against the message only while the gateway is
/// otherwise healthy (its database answers a ping, its attachment store
/// takes a write): then it is this message that fails, and after
/// `amqp.max_failures` counted failures it is set aside, so that no message
/// can hold the queue. During an outage nothing is counted, and the queue
/// waits, in order, for the gateway to come back.
async fn process_until_settled(
    gw: &Gateway,
    cfg: &AmqpConfig,
    d: &Delivery,
    book: &mut FailureBook,
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
