//! Whether a maintenance window interrupts the gateway.
//!
//! - `maintenance_windows.interruption_expected`: false when the operators
//!   expect no interruption (a rolling upgrade of the gateway's replicas),
//!   so agencies need not hold back sends. Only added, with a default of
//!   true (what every window meant before): replicas of the previous
//!   release keep announcing and reading windows on the migrated schema
//!   during a rolling upgrade.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("maintenance_windows")
                .add_column(boolean("interruption_expected").default(true))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("maintenance_windows")
                .drop_column("interruption_expected")
                .to_owned(),
        )
        .await
    }
}
