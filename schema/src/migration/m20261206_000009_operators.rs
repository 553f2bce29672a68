//! Operator accounts and their sessions.
//!
//! - `operators`: the people who run the gateway. `role` is `viewer`
//!   (dashboard, reports, traces) or `admin` (also maintenance and the
//!   directory); `password_hash` is an Argon2id PHC string, or NULL for an
//!   account that logs in only with a client certificate; `state` is
//!   `active`, `disabled` or `removed`. Rows are never deleted, so that the
//!   transfer log's lines keep naming someone who existed.
//! - `operator_sessions`: logged-in browsers. Only the SHA-256 of the
//!   session token is stored (a copy of the database lets nobody in); any
//!   replica honours a session because it lives here, not in a process.
//!
//! Client certificates bound to operators before accounts existed get an
//! `admin` account without a password, so that they keep the powers they
//! had.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("operators")
                .col(big_pk_auto("id"))
                .col(string("name").unique_key())
                .col(string("role"))
                .col(text_null("password_hash"))
                .col(string("state"))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .col(big_integer_null("password_changed_at"))
                .col(big_integer_null("last_login_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("operator_sessions")
                .col(string("token_sha256").primary_key())
                .col(big_integer("operator_id"))
                .col(string("csrf_token"))
                // `password` or `certificate`.
                .col(string("via"))
                .col(string("peer"))
                .col(big_integer("created_at"))
                .col(big_integer("last_seen_at"))
                .col(big_integer("expires_at"))
                .foreign_key(
                    ForeignKey::create()
                        .name("operator_sessions_operator")
                        .from("operator_sessions", "operator_id")
                        .to("operators", "id"),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("operator_sessions_operator")
                .table("operator_sessions")
                .col("operator_id")
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("operator_sessions_expires")
                .table("operator_sessions")
                .col("expires_at")
                .to_owned(),
        )
        .await?;
        m.get_connection()
            .execute_unprepared(
                "INSERT INTO operators (name, role, state, created_at, updated_at) \
                 SELECT organ_id, 'admin', 'active', MIN(bound_at), MIN(bound_at) \
                 FROM client_certs WHERE role = 'operator' GROUP BY organ_id",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("operator_sessions")
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table("operators").if_exists().to_owned())
            .await
    }
}
