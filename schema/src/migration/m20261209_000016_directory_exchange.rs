//! The national directory exchange.
//!
//! - `agencies.source`: `NULL` for this gateway's own agencies; the peer
//!   gateway's name for an agency applied from that peer's signed updates
//!   (read-only here, replaced by the peer's next update or snapshot).
//! - `directory_peers`: per peer, the last update applied (its sequence and
//!   the directory digest it announced) and the last one seen at all, for
//!   the lag the dashboard shows.
//! - `directory_publisher` (one row), `directory_published`,
//!   `directory_publications`: what this gateway has announced to its
//!   peers — its sequence, the agencies as announced (what a snapshot
//!   carries) and the signed updates, kept until published and after.
//! - `directory_blocks`: a foreign agency or certificate this gateway's
//!   operator refused locally; the peer's updates cannot undo it.
//!
//! Only added: replicas of the previous release keep working on the
//! migrated schema during a rolling upgrade (their agencies have no source:
//! local).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("agencies")
                .add_column(string_null("source"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("directory_peers")
                .col(string("peer").primary_key())
                .col(big_integer("sequence"))
                .col(string("state_sha256"))
                .col(big_integer("applied_at"))
                .col(big_integer("seen_sequence"))
                .col(big_integer("seen_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("directory_publisher")
                .col(integer("id").primary_key())
                .col(big_integer("sequence"))
                .col(string("state_sha256"))
                .col(big_integer("seen_version"))
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::insert()
                .into_table("directory_publisher")
                .columns(["id", "sequence", "state_sha256", "seen_version"])
                .values_panic([1.into(), 0i64.into(), "".into(), (-1i64).into()])
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("directory_published")
                .col(string("organ_id").primary_key())
                .col(blob("entry"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("directory_publications")
                .col(big_integer("sequence").primary_key())
                .col(blob("message"))
                .col(big_integer("created_at"))
                .col(big_integer_null("published_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("directory_blocks")
                .col(string("organ_id"))
                .col(string("spki_sha256"))
                .col(string("reason"))
                .col(string("actor"))
                .col(big_integer("blocked_at"))
                .primary_key(Index::create().col("organ_id").col("spki_sha256"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "directory_blocks",
            "directory_publications",
            "directory_published",
            "directory_publisher",
            "directory_peers",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        m.alter_table(
            Table::alter()
                .table("agencies")
                .drop_column("source")
                .to_owned(),
        )
        .await
    }
}
