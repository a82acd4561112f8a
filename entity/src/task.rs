//! A task of a workflow run; the row is also its dispatch record (`available_at`, `dispatched_until`) and its
//! lease (`attempts` fences claims, `lease_until` is extended by heartbeats).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "task")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub key: String,
    pub kind: String,
    /// Position in the submitted definition.
    pub position: i32,
    pub status: String,
    pub payload: Option<Json>,
    pub result: Option<Json>,
    pub error: Option<String>,
    /// Keys of the tasks this one depends on (JSON array of strings).
    pub depends_on: Json,
    /// Keys of the tasks that depend on this one (JSON array of strings).
    pub dependents: Json,
    /// Dependencies not yet completed.
    pub pending_deps: i32,
    pub priority: i16,
    pub attempts: i32,
    /// Attempts made before the last operator retry; the retry policy counts from here.
    pub attempt_base: i32,
    /// The retry policy (JSON).
    pub retry: Json,
    pub timeout_ms: Option<i64>,
    pub idempotency_key: Option<String>,
    /// The compensation (`{kind, payload, retry}`), if any.
    pub compensation: Option<Json>,
    /// Kind of the compensation, for routing.
    pub comp_kind: Option<String>,
    pub comp_attempts: i32,
    /// Compensation attempts made before the last operator retry.
    pub comp_attempt_base: i32,
    pub available_at: i64,
    pub dispatched_until: i64,
    pub lease_until: Option<i64>,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
