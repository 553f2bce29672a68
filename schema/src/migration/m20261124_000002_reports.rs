//! Reports and the dashboard.
//!
//! - `messages.due_date`, `messages.code`, `messages.subject`: a document's
//!   DueDate (ISO `yyyy-MM-dd`, `''` when it has none), số/ký hiệu
//!   (`15/QĐ-UBND`) and trích yếu, copied out of the signed envelope so that
//!   reports can count overdue documents in SQL and the dashboard can find a
//!   document by its number. `NULL` in `due_date` means "not read yet": the
//!   core's `reports::index_documents` fills such rows from the envelope
//!   (statuses keep `NULL`).
//! - Indexes for the report queries: events by kind and time (refusals,
//!   first deliveries), deliveries by creation time, messages by kind and
//!   acceptance time, messages by số/ký hiệu, message_id alone (messages
//!   and events: search and trace), the rows still to index, and the
//!   unacknowledged deliveries (inbox depths).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One ALTER per column: SQLite adds a single column per statement.
        for col in [
            string_null("due_date"),
            string_null("code"),
            text_null("subject"),
        ] {
            m.alter_table(Table::alter().table("messages").add_column(col).to_owned())
                .await?;
        }
        m.create_index(
            Index::create()
                .name("events_kind_at")
                .table("events")
                .col("kind")
                .col("at")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("deliveries_created_at")
                .table("deliveries")
                .col("created_at")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("messages_kind_accepted_at")
                .table("messages")
                .col("kind")
                .col("accepted_at")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("messages_code")
                .table("messages")
                .col("code")
                .to_owned(),
        )
        .await?;
        // Search and trace by message_id alone (the dashboard, `trace`).
        m.create_index(
            Index::create()
                .name("messages_message_id")
                .table("messages")
                .col("message_id")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("events_message_id")
                .table("events")
                .col("message_id")
                .to_owned(),
        )
        .await?;
        // Both engines take a partial index in the same words.
        let db = m.get_connection();
        db.execute_unprepared(
            "CREATE INDEX messages_unindexed ON messages (id) \
             WHERE kind = 'document' AND due_date IS NULL",
        )
        .await?;
        // Inbox depths (dashboard, metrics): only unacknowledged deliveries.
        db.execute_unprepared(
            "CREATE INDEX deliveries_pending ON deliveries (recipient, created_at) \
             WHERE state = 'pending'",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("deliveries_pending", "deliveries"),
            ("messages_unindexed", "messages"),
            ("events_message_id", "events"),
            ("messages_message_id", "messages"),
            ("messages_code", "messages"),
            ("messages_kind_accepted_at", "messages"),
            ("deliveries_created_at", "deliveries"),
            ("events_kind_at", "events"),
        ] {
            m.drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
        for col in ["subject", "code", "due_date"] {
            m.alter_table(Table::alter().table("messages").drop_column(col).to_owned())
                .await?;
        }
        Ok(())
    }
}
