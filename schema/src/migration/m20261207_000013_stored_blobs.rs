//! Attachments kept in the database (`storage.backend = "database"`), so
//! that replicas on one PostgreSQL database share nothing else. A blob is
//! stored exactly as the filesystem store would have written its file
//! (plaintext, or the encrypted form with its header), cut into chunks:
//! `stored_blobs` holds one row per blob, written in the same transaction
//! as its chunks, so a row is never seen without all its bytes;
//! `stored_blob_chunks` the chunks, numbered from 0; `storage_keychecks`
//! the key check of every storage key the blobs in the database were
//! sealed under. Created on SQLite too (the schema is the same on both),
//! where nothing writes them.
//!
//! Expand only: a release before this one never reads these tables.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("stored_blobs")
                .col(string("sha256").primary_key())
                .col(big_integer("size"))
                .col(big_integer("stored_size"))
                .col(string_null("key_id"))
                .col(big_integer("chunks"))
                .col(big_integer("stored_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("stored_blob_chunks")
                .col(string("sha256"))
                .col(integer("n"))
                .col(ColumnDef::new("bytes").blob().not_null())
                .primary_key(Index::create().col("sha256").col("n"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("storage_keychecks")
                .col(string("key_id").primary_key())
                .col(ColumnDef::new("sealed").blob().not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in ["storage_keychecks", "stored_blob_chunks", "stored_blobs"] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
