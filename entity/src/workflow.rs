//! A workflow run.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Owner; every read and action is scoped to it.
    pub tenant_id: Uuid,
    pub name: String,
    pub status: String,
    pub idempotency_key: Option<String>,
    pub content_hash: String,
    pub task_count: i32,
    /// Tasks COMPLETED so far; the workflow completes when it reaches `task_count`.
    pub completed_count: i32,
    pub has_compensation: bool,
    /// Sequence number of the last event appended.
    pub last_sequence: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// W3C `traceparent` of the submission, parent of every task's spans.
    pub trace_parent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
