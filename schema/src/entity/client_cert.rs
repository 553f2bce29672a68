//! Client (system) certificates for mutual TLS, bound to an agency or an
//! operator by the SHA-256 of their SubjectPublicKeyInfo.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "client_certs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub spki_sha256: String,
    /// The agency the software speaks for, or the operator's name.
    pub organ_id: String,
    /// `agency` or `operator`.
    pub role: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
    pub cert_der: Vec<u8>,
    pub bound_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
