//! The document lifecycle.
//!
//! - `messages.business_type`: 0 new, 1 recall, 2 update, 3 replace (the
//!   document's `business.type`), so the lifecycle finds a document's recall,
//!   updates and replacements without opening envelopes.
//! - `messages.replaces`: the document_id a recall, update or replacement
//!   refers to (the sender's own earlier document).
//! - `messages.priority` (0 normal … 4) and `messages.due_at` (the end of
//!   the DueDate, Vietnam time, in microseconds): what the deadline check
//!   needs without opening envelopes.
//! - An index for the documents referring to one (the statuses answering a
//!   document have theirs since the first migration).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(integer("business_type").default(0))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(string_null("replaces"))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(integer("priority").default(0))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .add_column(big_integer_null("due_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("messages_referring")
                .table("messages")
                .col("sender")
                .col("replaces")
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("messages_referring")
                .table("messages")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("due_at")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("priority")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("replaces")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("messages")
                .drop_column("business_type")
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
