//! Attachments of accepted messages; the bytes live in the content-addressed
//! blob store under `storage.path`, named by `sha256`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "attachments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_pk: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idx: i32,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
