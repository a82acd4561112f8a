//! Stored domain events: a run of one workflow's consecutive events written by one transaction.

use sea_orm::entity::prelude::*;

/// Events `first_sequence..=last_sequence` of a workflow, all written at `at`. `events` is a JSON array with one
/// `[type, task key or null, data or null]` array per event, in sequence order. A transaction writes one row per
/// workflow it touched (a few hundred events at most) instead of a row per event: three rows per task were the
/// largest part of the database's writes.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "event_chunk")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub workflow_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub last_sequence: i64,
    pub first_sequence: i64,
    pub at: i64,
    #[sea_orm(column_type = "Text")]
    pub events: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
