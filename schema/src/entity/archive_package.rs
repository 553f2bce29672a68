//! The archive packages this database wrote, in order (see the archive
//! migration).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "archive_packages")]
pub struct Model {
    /// 1, 2, 3…: a package links to the one before it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// Its file name.
    pub name: String,
    pub created_at: i64,
    /// The acceptance times of its first and last message (microseconds).
    pub period_from: i64,
    pub period_to: i64,
    pub documents: i64,
    pub messages: i64,
    /// The package file's size.
    pub bytes: i64,
    /// Hex SHA-256 of its `manifest.json`.
    pub manifest_sha256: String,
    /// The previous package's manifest SHA-256, as this one's manifest names it.
    pub previous_sha256: Option<String>,
    /// When its messages left the hot database (`None`: not purged yet).
    pub purged_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
