//! The national exchange.
//!
//! - `outbox`: what must still be published to AMQP — one row per delivery
//!   whose route is an exchange or an agency's queue, written in the same
//!   transaction that accepts the message, so an accepted message cannot be
//!   lost between the database and the broker. The relay publishes rows in
//!   `id` order per routing key and marks them `sent` only on the broker's
//!   confirm.
//! - `messages.upstream`: the hops a message made before this gateway (a
//!   serialized list of `lienthong.v1.TraceHop`), for traces across gateways.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("outbox")
                .col(big_pk_auto("id"))
                .col(big_integer_uniq("delivery_pk"))
                .col(big_integer("message_pk"))
                .col(string("exchange"))
                .col(string("routing_key"))
                // `pending` until the broker confirms, then `sent`.
                .col(string("state"))
                .col(integer("attempts").default(0))
                .col(text_null("last_error"))
                .col(big_integer("created_at"))
                .col(big_integer_null("sent_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("outbox_pending")
                .table("outbox")
                .col("state")
                .col("id")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(blob_null("upstream"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("upstream")
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table("outbox").if_exists().to_owned())
            .await
    }
}
