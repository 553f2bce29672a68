//! Client certificates for mutual TLS: the system certificate of an
//! agency's software (or of an operator), bound by the SHA-256 of its
//! SubjectPublicKeyInfo. With `auth.mode = "mtls"` the caller's identity
//! comes only from this binding.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("client_certs")
                .col(string("spki_sha256").primary_key())
                .col(string("organ_id"))
                // `agency` or `operator`.
                .col(string("role"))
                .col(text("subject"))
                .col(text("issuer"))
                .col(big_integer("not_after"))
                .col(ColumnDef::new("cert_der").blob().not_null())
                .col(big_integer("bound_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("client_certs_organ")
                .table("client_certs")
                .col("organ_id")
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("client_certs").if_exists().to_owned())
            .await
    }
}
