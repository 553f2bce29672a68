//! The outbox: the copies that leave through AMQP, written with their
//! message's acceptance, published by the relay in `id` order per routing
//! key, and marked sent on the broker's confirm.

use std::collections::{HashMap, HashSet};

use lienthong_schema::entity::{delivery, outbox};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use crate::error::{OrDb, Result};
use crate::sql::{self, Sql};
use crate::store::{EventKind, NewEvent, OutboxEntry, Store, append_events, now_micros};

/// Ids in one `IN (…)` list at most: far below what SQLite and PostgreSQL
/// bind in one statement.
const IN_LIST: usize = 500;

impl Store {
    /// Outbox rows still to publish with `id > after_id`, oldest first.
    pub async fn outbox_pending(&self, after_id: i64, limit: u64) -> Result<Vec<OutboxEntry>> {
        outbox::Entity::find()
            .filter(outbox::Column::State.eq("pending"))
            .filter(outbox::Column::Id.gt(after_id))
            .order_by_asc(outbox::Column::Id)
            .limit(limit)
            .all(self.connection())
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(OutboxEntry::from).collect())
    }

    /// The oldest pending row of each (exchange, routing key), oldest first:
    /// the only rows the relay may publish next (a key's rows go in order),
    /// so keys held back by a retry never hide the others.
    pub async fn outbox_heads(&self, limit: u64) -> Result<Vec<OutboxEntry>> {
        let ids: Vec<i64> = outbox::Entity::find()
            .select_only()
            .column_as(outbox::Column::Id.min(), "head")
            .filter(outbox::Column::State.eq("pending"))
            .group_by(outbox::Column::Exchange)
            .group_by(outbox::Column::RoutingKey)
            .order_by_asc(outbox::Column::Id.min())
            .limit(limit)
            .into_tuple()
            .all(self.connection())
            .await
            .or_db()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        outbox::Entity::find()
            .filter(outbox::Column::Id.is_in(ids))
            .order_by_asc(outbox::Column::Id)
            .all(self.connection())
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(OutboxEntry::from).collect())
    }

    /// How many outbox rows wait for the broker.
    pub async fn outbox_depth(&self) -> Result<u64> {
        outbox::Entity::find()
            .filter(outbox::Column::State.eq("pending"))
            .count(self.connection())
            .await
            .or_db()
    }

    /// Records the broker's confirms of outbox rows, all in one transaction
    /// (one fsync): each row still `pending` becomes `sent`, and its delivery
    /// is handed over — to another gateway (`sent`), or into an agency's own
    /// queue, which is that agency's inbox (`acked`: what it does with its
    /// queue is between it and the broker) — with its lines in the transfer
    /// log. A row marked before (a confirm noted twice) is left as it is and
    /// gets no second line. Answers how many rows were marked.
    pub async fn outbox_sent_many(&self, rows: &[OutboxEntry]) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let now = now_micros();
        let backend = self.backend();
        let txn = self.connection().begin().await.or_db()?;
        // Written first (a SQLite transaction that reads before it writes
        // can fail to upgrade its lock); the rows that were still pending
        // come back.
        let mut pending: HashSet<i64> = HashSet::new();
        for chunk in rows.chunks(IN_LIST) {
            let mut q = Sql::new(backend);
            q.push("UPDATE outbox SET state = 'sent', sent_at = ")
                .bind(now)
                .push(", attempts = attempts + 1 WHERE state = 'pending' AND id IN (");
            bind_list(&mut q, chunk.iter().map(|r| r.id));
            q.push(") RETURNING id");
            for r in q.all(&txn).await? {
                pending.insert(sql::int(&r, "id")?);
            }
        }
        // Each row once, however often it was given.
        let marked: Vec<&OutboxEntry> = rows.iter().filter(|r| pending.remove(&r.id)).collect();
        if marked.is_empty() {
            txn.rollback().await.or_db()?;
            return Ok(0);
        }
        let (to_queue, to_exchange): (Vec<&OutboxEntry>, Vec<&OutboxEntry>) =
            marked.iter().partition(|r| r.exchange.is_empty());
        for (rows, to_queue) in [(to_queue, true), (to_exchange, false)] {
            for chunk in rows.chunks(IN_LIST) {
                let mut update = delivery::Entity::update_many()
                    .col_expr(
                        delivery::Column::State,
                        Expr::value(if to_queue { "acked" } else { "sent" }),
                    )
                    .col_expr(
                        delivery::Column::Attempts,
                        Expr::col(delivery::Column::Attempts).add(1),
                    )
                    .col_expr(delivery::Column::LastDeliveredAt, Expr::value(now));
                if to_queue {
                    update = update.col_expr(delivery::Column::AckedAt, Expr::value(now));
                }
                update
                    .filter(delivery::Column::Id.is_in(chunk.iter().map(|r| r.delivery_pk)))
                    .exec(&txn)
                    .await
                    .or_db()?;
            }
        }
        // Who sent what to whom, for the log lines: one read.
        let mut who: HashMap<i64, (String, String, String)> = HashMap::new();
        for chunk in marked.chunks(IN_LIST) {
            let mut q = Sql::new(backend);
            q.push(
                "SELECT d.id AS delivery_pk, d.recipient AS recipient, m.sender AS sender, \
                 m.message_id AS message_id FROM deliveries d \
                 LEFT JOIN messages m ON m.id = d.message_pk WHERE d.id IN (",
            );
            bind_list(&mut q, chunk.iter().map(|r| r.delivery_pk));
            q.push(")");
            for r in q.all(&txn).await? {
                who.insert(
                    sql::int(&r, "delivery_pk")?,
                    (
                        sql::text(&r, "recipient")?,
                        sql::text(&r, "sender")?,
                        sql::text(&r, "message_id")?,
                    ),
                );
            }
        }
        let mut events = Vec::with_capacity(marked.len() * 2);
        for row in &marked {
            let (recipient, sender, message_id) =
                who.get(&row.delivery_pk).cloned().unwrap_or_default();
            events.extend(sent_lines(row, sender, message_id, recipient));
        }
        append_events(&txn, self.writer(), events, now)
            .await
            .or_db()?;
        txn.commit().await.or_db()?;
        Ok(marked.len())
    }

    /// Notes a failed publication; the row stays pending.
    pub async fn outbox_failed(&self, id: i64, error: &str) -> Result<()> {
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::Attempts,
                Expr::col(outbox::Column::Attempts).add(1),
            )
            .col_expr(outbox::Column::LastError, Expr::value(error.to_owned()))
            .filter(outbox::Column::Id.eq(id))
            .exec(self.connection())
            .await
            .or_db()?;
        Ok(())
    }
}

/// `?, ?, …` (or `$n, …`) bound to `ids`.
fn bind_list(q: &mut Sql, ids: impl Iterator<Item = i64>) {
    for (i, id) in ids.enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(id);
    }
}

/// The transfer log's lines of a confirmed row: `delivered`, and for an
/// agency's queue also `acknowledged` (the queue is its inbox).
fn sent_lines(
    row: &OutboxEntry,
    sender: String,
    message_id: String,
    recipient: String,
) -> Vec<NewEvent> {
    let base = NewEvent {
        kind: EventKind::Delivered,
        sender,
        message_id,
        recipient: Some(recipient.clone()),
        reason: None,
        detail: String::new(),
        actor: Some(recipient),
        transport: "amqp".to_owned(),
    };
    if row.exchange.is_empty() {
        vec![
            NewEvent {
                detail: format!(
                    "published to the agency's queue {} (broker confirmed)",
                    row.routing_key
                ),
                ..base.clone()
            },
            NewEvent {
                kind: EventKind::Acknowledged,
                detail: format!("the queue {} holds it for the agency", row.routing_key),
                ..base
            },
        ]
    } else {
        vec![NewEvent {
            detail: format!(
                "published to exchange {} with routing key {} (broker confirmed)",
                row.exchange, row.routing_key
            ),
            ..base
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WriterId;
    use lienthong_schema::entity::message;
    use sea_orm::{ActiveModelTrait, Set};

    /// A message of `sender` accepted with one outbox row per copy
    /// (recipient, exchange; an empty exchange is the recipient's own queue).
    async fn copies(
        s: &Store,
        sender: &str,
        id: &str,
        to: &[(&str, &str)],
    ) -> Result<Vec<OutboxEntry>> {
        let db = s.connection();
        let m = message::ActiveModel {
            sender: Set(sender.to_owned()),
            message_id: Set(id.to_owned()),
            kind: Set("document".to_owned()),
            document_id: Set(format!("{sender},{id}")),
            envelope_sha256: Set("ab".repeat(32)),
            signed_envelope: Set(id.as_bytes().to_vec()),
            verification: Set(Vec::new()),
            accepted_at: Set(now_micros()),
            attachment_count: Set(0),
            business_type: Set(0),
            priority: Set(0),
            ..Default::default()
        }
        .insert(db)
        .await
        .or_db()?;
        let mut rows = Vec::new();
        for (recipient, exchange) in to {
            let (route, routing_key) = if exchange.is_empty() {
                let q = format!("lienthong.agency.{recipient}");
                (format!("queue:{q}"), q)
            } else {
                (format!("exchange:{exchange}"), (*recipient).to_owned())
            };
            let d = delivery::ActiveModel {
                delivery_id: Set(format!("{id}/{recipient}")),
                message_pk: Set(m.id),
                recipient: Set((*recipient).to_owned()),
                route: Set(route),
                state: Set("pending".to_owned()),
                attempts: Set(0),
                created_at: Set(m.accepted_at),
                ..Default::default()
            }
            .insert(db)
            .await
            .or_db()?;
            let mut q = Sql::new(s.backend());
            q.push("INSERT INTO outbox (delivery_pk, message_pk, exchange, routing_key, state, created_at) VALUES (")
                .bind(d.id)
                .push(", ")
                .bind(m.id)
                .push(", ")
                .bind((*exchange).to_owned())
                .push(", ")
                .bind(routing_key.clone())
                .push(", 'pending', ")
                .bind(d.created_at)
                .push(") RETURNING id");
            let row = q.one(db).await?.expect("the new row's id");
            rows.push(OutboxEntry {
                id: sql::int(&row, "id")?,
                delivery_pk: d.id,
                message_pk: m.id,
                exchange: (*exchange).to_owned(),
                routing_key,
                attempts: 0,
            });
        }
        Ok(rows)
    }

    /// (kind, recipient, detail) of a message's lines.
    async fn lines(s: &Store, sender: &str, id: &str) -> Result<Vec<(String, String, String)>> {
        Ok(s.events_of(&[(sender.to_owned(), id.to_owned())])
            .await?
            .into_iter()
            .map(|e| (e.kind, e.recipient.unwrap_or_default(), e.detail))
            .collect())
    }

    #[tokio::test]
    async fn confirms_are_marked_together_once_each_with_their_lines() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let s = Store::connect(
            &format!("sqlite://{}/o.db", dir.path().display()),
            WriterId::main(),
        )
        .await?;
        let m1 = copies(&s, "A", "m1", &[("B", ""), ("X", "lienthong.documents")]).await?;
        let m2 = copies(&s, "C", "m2", &[("B", "")]).await?;
        let m3 = copies(&s, "A", "m3", &[("D", "")]).await?;
        assert_eq!(s.outbox_depth().await?, 4);

        // Confirms for m1's two copies and m2's, one of them given twice.
        let batch = [m1[0].clone(), m1[1].clone(), m2[0].clone(), m1[0].clone()];
        assert_eq!(s.outbox_sent_many(&batch).await?, 3);
        assert_eq!(s.outbox_depth().await?, 1);
        assert_eq!(s.outbox_heads(10).await?, m3);
        let states: Vec<(String, String)> = s
            .deliveries_of(m1[0].message_pk)
            .await?
            .into_iter()
            .map(|d| (d.recipient, d.state))
            .collect();
        assert_eq!(
            states,
            [("B".into(), "acked".into()), ("X".into(), "sent".into())],
            "a queue is the agency's inbox; another gateway's copy is sent"
        );
        let m1_lines = lines(&s, "A", "m1").await?;
        let kinds: Vec<(&str, &str)> = m1_lines
            .iter()
            .map(|(k, r, _)| (k.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("delivered", "B"),
                ("acknowledged", "B"),
                ("delivered", "X")
            ]
        );
        assert!(
            m1_lines[0].2.contains("queue lienthong.agency.B"),
            "{m1_lines:?}"
        );
        assert!(
            m1_lines[2]
                .2
                .contains("exchange lienthong.documents with routing key X"),
            "{m1_lines:?}"
        );
        assert_eq!(lines(&s, "C", "m2").await?.len(), 2);

        // Confirms noted again (a repeat after a lost connection) change
        // nothing and write no line; the one still pending is marked.
        let again = [m1[1].clone(), m2[0].clone(), m3[0].clone()];
        assert_eq!(s.outbox_sent_many(&again).await?, 1);
        assert_eq!(s.outbox_sent_many(&again).await?, 0);
        assert_eq!(s.outbox_sent_many(&[]).await?, 0);
        assert_eq!(lines(&s, "A", "m1").await?.len(), 3);
        assert_eq!(lines(&s, "C", "m2").await?.len(), 2);
        assert_eq!(lines(&s, "A", "m3").await?.len(), 2);
        assert_eq!(s.outbox_depth().await?, 0);
        let log = s.verify_log().await?;
        assert_eq!(log.first_broken(), None, "{log:?}");
        assert_eq!(log.checked(), 7);
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_longer_than_one_list_is_marked_whole() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let s = Store::connect(
            &format!("sqlite://{}/o.db", dir.path().display()),
            WriterId::main(),
        )
        .await?;
        let mut rows = Vec::new();
        for i in 0..(IN_LIST + 7) {
            rows.extend(copies(&s, "A", &format!("m{i}"), &[("B", "")]).await?);
        }
        assert_eq!(s.outbox_sent_many(&rows).await?, IN_LIST + 7);
        assert_eq!(s.outbox_depth().await?, 0);
        let last = lines(&s, "A", &format!("m{}", IN_LIST + 6)).await?;
        assert_eq!(last.len(), 2, "{last:?}");
        assert_eq!(s.verify_log().await?.checked(), 2 * (IN_LIST as u64 + 7));
        Ok(())
    }
}
