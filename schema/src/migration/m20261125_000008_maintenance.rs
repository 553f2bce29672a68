//! Maintenance notices.
//!
//! - `maintenance_windows`: the maintenance windows operators announced
//!   (`lienthong admin maintenance`). Agency software receives each current
//!   or upcoming window as a notice on its `Receive` stream, and the
//!   dashboard shows it. A window is never deleted: cancelling it sets
//!   `cancelled_at`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("maintenance_windows")
                .col(big_pk_auto("id"))
                .col(big_integer("starts_at"))
                .col(big_integer("ends_at"))
                .col(text("message"))
                .col(big_integer("announced_at"))
                .col(big_integer_null("cancelled_at"))
                .to_owned(),
        )
        .await?;
        // The gateway looks up the windows not yet over every few seconds.
        m.create_index(
            Index::create()
                .name("maintenance_windows_ends")
                .table("maintenance_windows")
                .col("ends_at")
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("maintenance_windows")
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
