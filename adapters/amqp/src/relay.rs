//! The outbox → the broker, with publisher confirms.
//!
//! Order: a routing key (a recipient, or an agency's queue) has at most one
//! publication waiting for its confirm, and its rows go in `id` order, so a
//! nack or a lost connection can never let a later message of a sender to a
//! recipient overtake an earlier one. Different keys go in parallel, up to
//! `amqp.confirm_window` at once. A window of several publications per key
//! would not keep that: the broker confirms each publication on its own, so
//! the earlier of two may be nacked (or returned, when a binding went away
//! in between) while the later is confirmed and already in the queue; the
//! earlier one, published again, then arrives after it. Only a connection
//! lost with both unconfirmed republishes them in order. One per key it
//! stays.
//!
//! At-least-once: a row is marked sent only after the broker's confirm; a
//! connection lost in between publishes it again. The receiving gateway
//! drops the repeat by (sender, message_id); an agency reading its own
//! queue does the same with the message_id property.
//!
//! Stopping: nothing new is published, and what is waiting for its confirm
//! is settled and marked before the connection closes (within
//! `DRAIN_GRACE`, see the adapter), so a clean stop sends nothing twice.
//!
//! Marking: the confirms that have arrived together (the broker often
//! confirms several publications in one frame) are marked sent in one
//! transaction (`Gateway::outbox_sent_many`), not one each; a key's next row
//! is read only after its row was marked, so the order above holds.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};
use lienthong_core::error::Reason;
use lienthong_core::pipeline::{Gateway, Hops, Outbound, OutboxEntry};
use prost::Message as _;
use tokio::sync::watch;

use crate::wire::{self, CONTENT_TYPE_ENVELOPE, CONTENT_TYPE_STREAM, HEADER_GATEWAY, HEADER_HOPS};
use crate::{AmqpConfig, AmqpError, AmqpMetrics, declare_agency_queue};

type Key = (String, String);
type Confirmed = (OutboxEntry, Key, usize, lapin::Result<Confirmation>);

const READ_CHUNK: usize = 256 * 1024;

pub(crate) async fn run(
    gw: &Gateway,
    cfg: &AmqpConfig,
    metrics: &AmqpMetrics,
    ch: &Channel,
    topology: &Channel,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    let window = cfg.confirm_window.max(1);
    let budget = usize::try_from(cfg.max_message_bytes.saturating_mul(4)).unwrap_or(usize::MAX);
    // Heads of keys: one row per recipient or queue that has something to
    // send; generous, since keys waiting for a retry take places too.
    let scan = (window * 16).max(4096) as u64;
    let mut wake = gw.outbox_watch();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Confirmed>> = FuturesUnordered::new();
    let mut busy: HashSet<Key> = HashSet::new();
    let mut busy_rows: HashSet<i64> = HashSet::new();
    let mut retry_at: HashMap<Key, Instant> = HashMap::new();
    let mut declared: HashSet<String> = HashSet::new();
    let mut bytes_in_flight = 0usize;
    let mut stopping = false;
    loop {
        if stopping && in_flight.is_empty() {
            return Ok(());
        }
        if !stopping && in_flight.len() < window && bytes_in_flight < budget {
            let rows = match gw.outbox_heads(scan).await {
                Ok(r) => r,
                Err(e) => {
                    // The database is away: what is in flight still settles;
                    // new rows wait for it.
                    tracing::warn!(error = %e.chain(), "outbox: cannot read pending rows");
                    Vec::new()
                }
            };
            let now = Instant::now();
            let mut blocked: HashSet<Key> = HashSet::new();
            for row in rows {
                if in_flight.len() >= window || bytes_in_flight >= budget {
                    break;
                }
                let key = (row.exchange.clone(), row.routing_key.clone());
                if busy_rows.contains(&row.id)
                    || busy.contains(&key)
                    || blocked.contains(&key)
                    || retry_at.get(&key).is_some_and(|t| *t > now)
                {
                    // Later rows of the key wait behind this one.
                    blocked.insert(key);
                    continue;
                }
                let out = match gw.outbound(row.clone()).await {
                    Ok(o) => o,
                    Err(e) if e.reason() == Reason::PermissionDenied => {
                        tracing::info!(outbox_id = row.id, reason = %e.message(), "outbox: held back");
                        let _ = gw.outbox_failed(&row, e.message()).await;
                        retry_at.insert(key.clone(), now + backoff(row.attempts));
                        blocked.insert(key);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(outbox_id = row.id, error = %e.chain(), "outbox: cannot read a message to publish");
                        let _ = gw.outbox_failed(&row, e.message()).await;
                        retry_at.insert(key.clone(), now + backoff(row.attempts));
                        blocked.insert(key);
                        continue;
                    }
                };
                let message_id = out.message_id.clone();
                let (content_type, body) = match body_of(out).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(outbox_id = row.id, error = %e.chain(), "outbox: cannot read an attachment to publish");
                        let _ = gw.outbox_failed(&row, e.message()).await;
                        retry_at.insert(key.clone(), now + backoff(row.attempts));
                        blocked.insert(key);
                        continue;
                    }
                };
                // A row for an agency's queue names the queue (no exchange):
                // it goes through this gateway's agency exchange.
                let exchange = if row.exchange.is_empty() {
                    if !declared.contains(&row.routing_key) {
                        declare_agency_queue(topology, cfg, &row.routing_key).await?;
                        declared.insert(row.routing_key.clone());
                    }
                    cfg.agency_exchange.as_str()
                } else {
                    row.exchange.as_str()
                };
                let props = properties(gw, &message_id, content_type, &body.1);
                let confirm = ch
                    .basic_publish(
                        exchange.into(),
                        row.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body.0,
                        props,
                    )
                    .await?;
                let len = body.0.len();
                bytes_in_flight += len;
                busy.insert(key.clone());
                busy_rows.insert(row.id);
                in_flight.push(async move { (row, key, len, confirm.await) }.boxed());
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s).map(|_| ()), if !stopping => {
                // What is published waits for its confirm and is marked
                // sent: dropped unconfirmed, it would go again at the next
                // start and a queue-reading agency would get it twice.
                stopping = true;
            }
            Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                // Every confirm that has come meanwhile is settled with it:
                // the rows confirmed are marked together.
                let mut answers = vec![first];
                while let Some(Some(answer)) = in_flight.next().now_or_never() {
                    answers.push(answer);
                }
                let mut confirmed = Vec::with_capacity(answers.len());
                let mut lost = None;
                for (row, key, len, answer) in answers {
                    busy.remove(&key);
                    busy_rows.remove(&row.id);
                    bytes_in_flight = bytes_in_flight.saturating_sub(len);
                    match settle(gw, metrics, &row, &key, answer, &mut retry_at).await {
                        Ok(true) => confirmed.push(row),
                        Ok(false) => {}
                        Err(e) => {
                            lost.get_or_insert(e);
                        }
                    }
                }
                mark_sent(gw, &confirmed).await;
                if let Some(e) = lost {
                    return Err(e);
                }
            }
            changed = wake.changed() => {
                if changed.is_err() {
                    return Err(AmqpError::Setup("the gateway core stopped".to_owned()));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Notes the broker's answer to one publication; `Ok(true)` when it was
/// confirmed (the caller marks it sent, with the others confirmed at the
/// same time).
async fn settle(
    gw: &Gateway,
    metrics: &AmqpMetrics,
    row: &OutboxEntry,
    key: &Key,
    answer: lapin::Result<Confirmation>,
    retry_at: &mut HashMap<Key, Instant>,
) -> Result<bool, AmqpError> {
    let failed = |why: String| async move {
        tracing::warn!(outbox_id = row.id, exchange = %row.exchange, routing_key = %row.routing_key, error = %why, "outbox: not published; will try again");
        if let Err(e) = gw.outbox_failed(row, &why).await {
            tracing::warn!(error = %e.chain(), "outbox: cannot note a failed publication");
        }
    };
    match answer {
        Ok(Confirmation::Ack(None)) => {
            metrics.published("confirmed");
            retry_at.remove(key);
            return Ok(true);
        }
        Ok(Confirmation::Ack(Some(_))) => {
            metrics.published("returned");
            failed(format!(
                "no queue is bound for routing key {} on exchange {}: no gateway serves that code yet",
                row.routing_key, row.exchange
            ))
            .await;
            retry_at.insert(key.clone(), Instant::now() + backoff(row.attempts));
        }
        Ok(Confirmation::Nack(_)) | Ok(Confirmation::NotRequested) => {
            metrics.published("nacked");
            failed("the broker did not take the message (nack)".to_owned()).await;
            retry_at.insert(key.clone(), Instant::now() + backoff(row.attempts));
        }
        Err(e) => {
            metrics.published("failed");
            return Err(e.into());
        }
    }
    Ok(false)
}

/// Marks confirmed rows sent, in one transaction.
async fn mark_sent(gw: &Gateway, rows: &[OutboxEntry]) {
    if rows.is_empty() {
        return;
    }
    if let Err(e) = gw.outbox_sent_many(rows).await {
        // They stay pending and go again; the receiver drops the repeats
        // by (sender, message_id).
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        tracing::warn!(outbox_ids = ?ids, error = %e.chain(), "outbox: confirmed but cannot mark them sent");
    }
}

/// 1 s, 2 s, 4 s … at most 64 s between tries of one key.
fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 6).unsigned_abs())
}

/// The body: the envelope alone, or the envelope and its attachments as a
/// send stream. Attachments are read back through their digest check.
async fn body_of(
    mut out: Outbound,
) -> lienthong_core::error::Result<(&'static str, (Vec<u8>, Hops))> {
    let hops = Hops {
        hops: std::mem::take(&mut out.hops),
    };
    if out.attachments.is_empty() {
        return Ok((CONTENT_TYPE_ENVELOPE, (out.signed_envelope, hops)));
    }
    let mut body = wire::stream_start(&out.signed_envelope, 0);
    for reader in &mut out.attachments {
        let index = reader.index();
        while let Some(chunk) = reader.next_chunk(READ_CHUNK).await? {
            wire::stream_push(&mut body, index, &chunk);
        }
    }
    Ok((CONTENT_TYPE_STREAM, (body, hops)))
}

fn properties(gw: &Gateway, message_id: &str, content_type: &str, hops: &Hops) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_HOPS.into(),
        AMQPValue::LongString(LongString::from(hops.encode_to_vec())),
    );
    headers.insert(
        HEADER_GATEWAY.into(),
        AMQPValue::LongString(gw.gateway_id().into()),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(2)
        .with_timestamp(now)
        .with_app_id("lienthong".into())
        .with_message_id(message_id.into())
        .with_headers(headers)
}
