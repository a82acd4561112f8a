use async_graphql::{ID, Json, Object};
use chrono::{DateTime, Utc};
use taskorch_engine::model::TaskRecord;

use super::TaskStatus;

/// A task of a workflow run.
pub struct Task(pub TaskRecord);

#[Object]
impl Task {
    /// Unique id of the task.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Key of the task within its workflow.
    async fn key(&self) -> &str {
        &self.0.key
    }
    /// Handler kind.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// Current status.
    async fn status(&self) -> TaskStatus {
        self.0.status.into()
    }
    /// Attempts started so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// Input given at submission.
    async fn payload(&self) -> Option<Json<serde_json::Value>> {
        (!self.0.payload.is_null()).then(|| Json(self.0.payload.clone()))
    }
    /// Result of the completed attempt.
    async fn result(&self) -> Option<Json<serde_json::Value>> {
        self.0.result.clone().map(Json)
    }
    /// Error of the last failed attempt.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// Keys of the tasks this one waits for.
    async fn depends_on(&self) -> &[String] {
        &self.0.depends_on
    }
    /// 0–9, higher runs first.
    async fn priority(&self) -> i32 {
        i32::from(self.0.priority)
    }
    /// Timeout of one attempt, in milliseconds.
    async fn timeout_ms(&self) -> Option<i64> {
        self.0.timeout_ms
    }
    /// Idempotency key handed to the handler.
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    /// When the task last became ready.
    async fn queued_at(&self) -> Option<DateTime<Utc>> {
        self.0.queued_at
    }
    /// When the latest attempt started.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    /// When the task finished.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
}
