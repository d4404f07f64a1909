//! `inventory`: the rows the job keeps, one per name (the original demo's table, with a unique key on
//! `name` so that the job can upsert).

use sea_orm::entity::prelude::*;

/// One row of `inventory`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inventory")]
pub struct Model {
    /// Surrogate key (`serial`), as in the original demo.
    #[sea_orm(primary_key)]
    pub id: i32,
    /// The item; unique.
    #[sea_orm(unique)]
    pub name: String,
    /// How many.
    pub quantity: i32,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
