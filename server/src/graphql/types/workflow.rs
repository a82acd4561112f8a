use async_graphql::{Context, ID, Object, Result};
use chrono::{DateTime, Utc};
use taskorch_engine::Engine;
use taskorch_engine::model::WorkflowRecord;

use super::{Task, WorkflowEvent, WorkflowStatus};
use crate::error::from_engine;
use crate::graphql::loaders::TaskLoaderCached;

/// A workflow run: a DAG of tasks.
pub struct Workflow(pub WorkflowRecord);

#[Object]
impl Workflow {
    /// Unique id of the workflow.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Name given at submission.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Current status.
    async fn status(&self) -> WorkflowStatus {
        self.0.status.into()
    }
    /// Idempotency key given at submission.
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    /// Number of tasks.
    async fn task_count(&self) -> i32 {
        self.0.task_count
    }
    /// When it was submitted.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it started.
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    /// When it reached a final status.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// Its tasks, in definition order.
    async fn tasks(&self, ctx: &Context<'_>) -> Result<Vec<Task>> {
        let tasks = ctx.data::<TaskLoaderCached>()?.load_one(self.0.id).await.map_err(|e| (*e).clone())?;
        Ok(tasks.map(|t| t.iter().cloned().map(Task).collect()).unwrap_or_default())
    }
    /// One task by key.
    async fn task(&self, ctx: &Context<'_>, key: String) -> Result<Option<Task>> {
        let tasks = ctx.data::<TaskLoaderCached>()?.load_one(self.0.id).await.map_err(|e| (*e).clone())?;
        Ok(tasks.and_then(|t| t.iter().find(|t| t.key == key).cloned().map(Task)))
    }
    /// Its events after `afterSequence` (default 0), in order.
    async fn events(&self, ctx: &Context<'_>, after_sequence: Option<i64>) -> Result<Vec<WorkflowEvent>> {
        let engine = ctx.data::<Engine>()?;
        let events = engine.events(self.0.id, after_sequence.unwrap_or(0), u64::MAX >> 1).await.map_err(from_engine)?;
        Ok(events.into_iter().map(WorkflowEvent::from).collect())
    }
}
