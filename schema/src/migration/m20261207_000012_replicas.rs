//! The replicas that have served from this database, with digests of the
//! configuration that must be the same on all of them (trust anchors,
//! routes): a replica that starts compares its own with those of the live
//! ones, and refuses to join with a sentence naming the difference.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("replicas")
                .col(string("name").primary_key())
                .col(string("trust_sha256"))
                .col(string("routes_sha256"))
                .col(big_integer("started_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("replicas").if_exists().to_owned())
            .await
    }
}
