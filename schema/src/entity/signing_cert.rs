//! Document-signing certificates bound to agencies, keyed by the SHA-256 of
//! their SubjectPublicKeyInfo (a renewed certificate with the same key stays bound).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_certs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub spki_sha256: String,
    pub organ_id: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
    pub cert_der: Vec<u8>,
    pub bound_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
