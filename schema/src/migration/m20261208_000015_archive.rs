//! The archive: packages written, and the messages that left for them.
//!
//! - `messages.archived_in`, `messages.archive_entry`: the package (file
//!   name) and the folder in it that hold a copy of the message, set when
//!   the package is registered; `messages.purged_at`: when its content left
//!   the hot database. The row itself stays as the message's tombstone — its
//!   identity, digest, times and references — so the lifecycle, reports,
//!   `trace` and the integrity checks read it as before; only the envelope,
//!   the verification report and the attachments go.
//! - `archive_packages`: every package this database wrote, in order, with
//!   its manifest's SHA-256 (the next package links to it) and when its
//!   messages were purged.
//! - `stored_blobs.last_seen_at`: when a submission last found the blob
//!   already stored and used it. The purge removes a blob no message
//!   names only when nobody has used it for a while, so a submission that
//!   found it a moment ago never commits a reference to removed bytes.
//!
//! Only added: replicas of the previous release keep working on the
//! migrated schema during a rolling upgrade.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(string_null("archived_in"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(string_null("archive_entry"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(big_integer_null("purged_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("archive_packages")
                .col(big_integer("seq").primary_key())
                .col(string_uniq("name"))
                .col(big_integer("created_at"))
                .col(big_integer("period_from"))
                .col(big_integer("period_to"))
                .col(big_integer("documents"))
                .col(big_integer("messages"))
                .col(big_integer("bytes"))
                .col(string("manifest_sha256"))
                .col(string_null("previous_sha256"))
                .col(big_integer_null("purged_at"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("stored_blobs")
                .add_column(big_integer_null("last_seen_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("stored_blobs")
                .drop_column("last_seen_at")
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table("archive_packages").to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("purged_at")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("archive_entry")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("archived_in")
                .to_owned(),
        )
        .await
    }
}
