//! The transfer log becomes tamper-evident: every event carries its place in
//! one chain (`chain_seq`), the hash of the event before it and its own hash.
//! `log_head` holds the chain's last position and hash; appending takes its
//! row lock, so events are chained in commit order.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One ALTER per column: SQLite adds a single column per statement.
        for col in [
            big_integer_null("chain_seq"),
            string_null("prev_hash"),
            string_null("hash"),
        ] {
            m.alter_table(Table::alter().table("events").add_column(col).to_owned())
                .await?;
        }
        m.create_index(
            Index::create()
                .name("events_chain_seq")
                .table("events")
                .col("chain_seq")
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("log_head")
                .col(integer("id").primary_key())
                .col(big_integer("seq"))
                .col(string("hash"))
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::insert()
                .into_table("log_head")
                .columns(["id", "seq", "hash"])
                .values_panic([1.into(), 0i64.into(), GENESIS.into()])
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("log_head").if_exists().to_owned())
            .await?;
        m.drop_index(
            Index::drop()
                .name("events_chain_seq")
                .table("events")
                .to_owned(),
        )
        .await?;
        for col in ["hash", "prev_hash", "chain_seq"] {
            m.alter_table(Table::alter().table("events").drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
