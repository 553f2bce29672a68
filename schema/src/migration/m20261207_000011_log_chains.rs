//! The transfer log becomes one hash chain per writer, so that gateway
//! replicas sharing a database each extend a chain of their own instead of
//! queueing for one head. Every event names its chain (`chain`: a writer
//! id, `main` for a gateway without `gateway.replica`); positions are unique
//! per (chain, chain_seq); `log_head` holds one row per chain, keyed by its
//! name. What was the one chain becomes `main`, hashes untouched, so a log
//! written before verifies as it did.
//!
//! Expand first: a gateway of the release before this one, running while
//! another migrates, keeps working on the new schema. It inserts events
//! without naming a chain (the column's default puts them in `main`) and
//! moves the head row it knows as `id = 1`, which is kept on `main`'s row.
//! Its `log verify` knows a single chain, so it reads right only while
//! `main` is the only one. Dropping the default and the `id` column is for
//! a later migration, once no such release runs.

use sea_orm_migration::sea_orm::{DbBackend, Statement};
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The chain of a writer without a name of its own, and of every event
/// written before chains had names.
pub const MAIN_CHAIN: &str = "main";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// SQLite too: its `log_head` is rebuilt, and a crash between dropping
    /// the old table and renaming the new one must not lose the head.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("events")
                .add_column(text("chain").default(MAIN_CHAIN))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("events_chain_position")
                .table("events")
                .col("chain")
                .col("chain_seq")
                .unique()
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("events_chain_seq")
                .table("events")
                .to_owned(),
        )
        .await?;
        let statements: &[&str] = match m.get_database_backend() {
            // In place: the table keeps its identity, so the statements the
            // release before prepared on it are planned again, not broken.
            DbBackend::Postgres => &[
                "ALTER TABLE log_head ADD COLUMN chain text NOT NULL DEFAULT 'main'",
                "ALTER TABLE log_head ALTER COLUMN chain DROP DEFAULT",
                "ALTER TABLE log_head DROP CONSTRAINT log_head_pkey",
                "ALTER TABLE log_head ALTER COLUMN id DROP NOT NULL",
                "ALTER TABLE log_head ADD PRIMARY KEY (chain)",
                "CREATE UNIQUE INDEX log_head_id ON log_head (id)",
            ],
            // SQLite cannot change a primary key: the table is made again.
            _ => &[
                "CREATE TABLE log_head_chains (chain text NOT NULL PRIMARY KEY, \
                 id integer UNIQUE, seq bigint NOT NULL, hash varchar NOT NULL)",
                "INSERT INTO log_head_chains (chain, id, seq, hash) \
                 SELECT 'main', id, seq, hash FROM log_head WHERE id = 1",
                "DROP TABLE log_head",
                "ALTER TABLE log_head_chains RENAME TO log_head",
            ],
        };
        for sql in statements {
            m.get_connection().execute_unprepared(sql).await?;
        }
        Ok(())
    }

    /// Back to one chain; refused while other chains hold events, since
    /// they could not be kept.
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let backend = m.get_database_backend();
        let others = db
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT COUNT(*) AS n FROM events WHERE chain <> 'main'",
            ))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if others > 0 {
            return Err(DbErr::Migration(format!(
                "the transfer log has {others} event(s) in chains other than main; \
                 one chain cannot hold them"
            )));
        }
        let statements: &[&str] = match backend {
            DbBackend::Postgres => &[
                "DELETE FROM log_head WHERE chain <> 'main'",
                "DROP INDEX log_head_id",
                "ALTER TABLE log_head DROP CONSTRAINT log_head_pkey",
                "ALTER TABLE log_head ALTER COLUMN id SET NOT NULL",
                "ALTER TABLE log_head ADD PRIMARY KEY (id)",
                "ALTER TABLE log_head DROP COLUMN chain",
            ],
            _ => &[
                "CREATE TABLE log_head_one (id integer NOT NULL PRIMARY KEY, \
                 seq bigint NOT NULL, hash varchar NOT NULL)",
                "INSERT INTO log_head_one (id, seq, hash) \
                 SELECT 1, seq, hash FROM log_head WHERE chain = 'main'",
                "DROP TABLE log_head",
                "ALTER TABLE log_head_one RENAME TO log_head",
            ],
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
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
        m.drop_index(
            Index::drop()
                .name("events_chain_position")
                .table("events")
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table("events")
                .drop_column("chain")
                .to_owned(),
        )
        .await
    }
}
