//! The lienthong database: sea-orm entities and migrations.
//!
//! One schema for SQLite (the embedded default) and PostgreSQL (production).
//! Timestamps are stored as Unix microseconds (`i64`) so that both engines
//! compare and index them the same way; digests as lowercase hex.
//!
//! Architecture invariant: this crate holds table shapes only. What a row
//! means, and which rows change together in one transaction, is the core's
//! business (`lienthong-core`'s `store` module).

pub mod entity;
pub mod migration;

pub use migration::Migrator;

/// Re-exported so that callers run migrations without depending on
/// sea-orm-migration themselves.
pub use sea_orm_migration::MigratorTrait;
