//! Migrations, applied in order at start (`Migrator::up`). Never edit a
//! migration that has shipped: add a new one.

use sea_orm_migration::prelude::*;

mod m20261124_000001_core;
mod m20261124_000002_reports; // Report columns and indexes
mod m20261124_000003_log_chain;
mod m20261124_000004_client_certs;
mod m20261124_000005_representations;
mod m20261124_000006_outbox; // The AMQP outbox, upstream hops
mod m20261125_000007_lifecycle; // Business type and references
mod m20261125_000008_maintenance; // Maintenance notices
mod m20261206_000009_operators;
mod m20261207_000010_directory_version;
mod m20261207_000011_log_chains; // One chain per writer
mod m20261207_000012_replicas; // Replicas' configuration digests
mod m20261207_000013_stored_blobs; // Attachments in the database
mod m20261207_000014_maintenance_interruption; // Windows without interruption
mod m20261208_000015_archive; // Archive packages and tombstones
mod m20261209_000016_directory_exchange; // The national directory exchange

pub use m20261124_000003_log_chain::GENESIS;
pub use m20261207_000011_log_chains::MAIN_CHAIN;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_core::Migration),
            Box::new(m20261124_000002_reports::Migration),
            Box::new(m20261124_000003_log_chain::Migration),
            Box::new(m20261124_000004_client_certs::Migration),
            Box::new(m20261124_000005_representations::Migration),
            Box::new(m20261124_000006_outbox::Migration),
            Box::new(m20261125_000007_lifecycle::Migration),
            Box::new(m20261125_000008_maintenance::Migration),
            Box::new(m20261206_000009_operators::Migration),
            Box::new(m20261207_000010_directory_version::Migration),
            Box::new(m20261207_000011_log_chains::Migration),
            Box::new(m20261207_000012_replicas::Migration),
            Box::new(m20261207_000013_stored_blobs::Migration),
            Box::new(m20261207_000014_maintenance_interruption::Migration),
            Box::new(m20261208_000015_archive::Migration),
            Box::new(m20261209_000016_directory_exchange::Migration),
        ]
    }
}
