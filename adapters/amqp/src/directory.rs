//! The national directory exchange's transport: publishes this gateway's
//! signed directory updates, takes its peers' updates and snapshots, and
//! answers their snapshot requests — all on one topic exchange
//! (`lienthong.directory`), one queue of this gateway's own. What the
//! messages mean is the core's (`lienthong_core::national_directory`).
//!
//! Routing keys: `update.<publisher>` for updates, `snapshot-request.<peer>`
//! for a request to that peer, `snapshot.<requester>` for the answer. The
//! queue is bound with `update.<peer>` for each configured peer and with
//! its own `snapshot-request.` and `snapshot.` keys, so a gateway never
//! takes its own updates, and an update from a gateway that is no peer
//! never reaches it (one that does anyway is refused by its signature).
//!
//! A message is acknowledged after the core has applied or refused it
//! durably; a passing fault (the database) hands it back, in order.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use lienthong_core::national_directory::{
    DirectoryExchange, Received, snapshot_key, snapshot_request_key, update_key,
};
use tokio::sync::watch;

use crate::{AmqpConfig, AmqpError, durable, ensure_exchange, quorum_args};

/// How often peers nothing was applied from are asked for a snapshot.
const ASK_EVERY: Duration = Duration::from_secs(15);

pub(crate) const CONTENT_TYPE_DIRECTORY: &str = "application/vnd.lienthong.directory.v1+protobuf";
const CONTENT_TYPE_REQUEST: &str = "application/vnd.lienthong.directory-request.v1+protobuf";

/// The queue of this gateway's directory messages.
pub(crate) fn queue_name(cfg: &AmqpConfig, me: &str) -> String {
    cfg.directory_queue
        .clone()
        .unwrap_or_else(|| format!("lienthong.directory.{me}"))
}

/// Declares the exchange and this gateway's queue with its bindings.
pub(crate) async fn declare(
    conn: &Connection,
    ch: &mut Channel,
    cfg: &AmqpConfig,
    x: &DirectoryExchange,
) -> Result<(), AmqpError> {
    ensure_exchange(conn, ch, &cfg.directory_exchange, ExchangeKind::Topic).await?;
    let queue = queue_name(cfg, x.me());
    ch.queue_declare(queue.as_str().into(), durable(), quorum_args(None))
        .await?;
    let mut keys: Vec<String> = x.peers().iter().map(|p| update_key(&p.name)).collect();
    keys.push(snapshot_request_key(x.me()));
    keys.push(snapshot_key(x.me()));
    for key in keys {
        ch.queue_bind(
            queue.as_str().into(),
            cfg.directory_exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

async fn publish(
    ch: &Channel,
    cfg: &AmqpConfig,
    key: &str,
    body: &[u8],
    content_type: &str,
) -> Result<bool, AmqpError> {
    let props = BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(2)
        .with_app_id("lienthong".into());
    let confirm = ch
        .basic_publish(
            cfg.directory_exchange.as_str().into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?
        .await?;
    Ok(matches!(confirm, Confirmation::Ack(_)))
}

/// Runs until the connection fails or `shutdown` turns true.
pub(crate) async fn run(
    x: Arc<DirectoryExchange>,
    cfg: &AmqpConfig,
    conn: &Connection,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AmqpError> {
    let consume = conn.create_channel().await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = queue_name(cfg, x.me());
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            format!("lienthong-directory-{}", x.me()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut compare = tokio::time::interval(Duration::from_millis(
        cfg.directory_interval_ms.clamp(10, 60_000),
    ));
    compare.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ask = tokio::time::interval(ASK_EVERY);
    ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s).map(|_| ()) => return Ok(()),
            _ = compare.tick() => {
                if let Err(e) = x.prepare_updates().await {
                    tracing::warn!(error = %e.chain(), "directory: cannot compare the directory with what was announced; trying again");
                    continue;
                }
                publish_pending(&x, cfg, &publisher).await?;
            }
            _ = ask.tick() => {
                match x.peers_to_ask().await {
                    Ok(asks) => {
                        for (peer, request) in asks {
                            tracing::info!(%peer, "directory: asking a peer for a snapshot");
                            publish(&publisher, cfg, &snapshot_request_key(&peer), &request, CONTENT_TYPE_REQUEST).await?;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e.chain(), "directory: cannot read the peers' progress"),
                }
            }
            next = consumer.next() => {
                let Some(delivery) = next else {
                    return Err(AmqpError::Setup("the broker ended the directory queue's subscription".to_owned()));
                };
                let delivery = delivery?;
                let key = delivery.routing_key.as_str().to_owned();
                let outcome = if key.starts_with("snapshot-request.") {
                    match x.answer_snapshot_request(&delivery.data).await {
                        Ok(Some((to, snapshot))) => {
                            publish(&publisher, cfg, &to, &snapshot, CONTENT_TYPE_DIRECTORY).await?;
                            Ok(())
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                } else {
                    match x.receive(&delivery.data).await {
                        Ok(Received::AskSnapshot { peer, request }) => {
                            publish(&publisher, cfg, &snapshot_request_key(&peer), &request, CONTENT_TYPE_REQUEST).await?;
                            Ok(())
                        }
                        Ok(Received::Applied { peer, sequence }) => {
                            tracing::debug!(%peer, sequence, "directory: applied");
                            Ok(())
                        }
                        Ok(Received::Refused) => Ok(()),
                        Err(e) => Err(e),
                    }
                };
                match outcome {
                    Ok(()) => {
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.chain(), "directory: a message could not be taken now (a passing fault); it is handed back");
                        delivery
                            .acker
                            .nack(BasicNackOptions { requeue: true, ..Default::default() })
                            .await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

/// Publishes the recorded updates in order, each marked once confirmed.
async fn publish_pending(
    x: &DirectoryExchange,
    cfg: &AmqpConfig,
    ch: &Channel,
) -> Result<(), AmqpError> {
    loop {
        let batch = match x.unpublished(100).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "directory: cannot read the updates to publish");
                return Ok(());
            }
        };
        if batch.is_empty() {
            return Ok(());
        }
        for (sequence, message) in batch {
            if !publish(
                ch,
                cfg,
                &update_key(x.me()),
                &message,
                CONTENT_TYPE_DIRECTORY,
            )
            .await?
            {
                tracing::warn!(
                    sequence,
                    "directory: the broker did not take an update (nack); trying again"
                );
                return Ok(());
            }
            if let Err(e) = x.published(sequence).await {
                // Published again next time: a peer refuses the copy as
                // not newer than what it applied.
                tracing::warn!(sequence, error = %e.chain(), "directory: published but cannot mark it so");
                return Ok(());
            }
        }
    }
}
