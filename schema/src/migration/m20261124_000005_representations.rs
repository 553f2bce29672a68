//! Who may send in whose name: an agency (the agent, e.g. Văn phòng UBND
//! tỉnh) sends documents for another (the principal, e.g. UBND tỉnh).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("representations")
                .col(string("agent"))
                .col(string("principal"))
                .col(big_integer("granted_at"))
                .primary_key(Index::create().col("agent").col("principal"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("representations")
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
