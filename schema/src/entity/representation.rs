//! `agent` may send documents in the name of `principal`.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "representations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub principal: String,
    pub granted_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
