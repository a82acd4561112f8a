use std::sync::Arc;

use async_graphql::{ID, Json, Object};
use chrono::{DateTime, Utc};
use taskorch_engine::model::EventRecord;

use super::EventType;

/// A view over a shared event record: a live event reaches every subscriber of its workflow as the same
/// allocation, and only the fields a subscriber selected are converted.
#[derive(Clone, Debug)]
pub struct WorkflowEvent(Arc<EventRecord>);

/// A domain event of a workflow.
#[Object]
impl WorkflowEvent {
    /// Position in the workflow's event log: 1, 2, 3, … without gaps.
    async fn sequence(&self) -> i64 {
        self.0.sequence
    }

    /// What happened.
    #[graphql(name = "type")]
    async fn event_type(&self) -> EventType {
        self.0.event_type.into()
    }

    /// The workflow it belongs to.
    async fn workflow_id(&self) -> ID {
        ID(self.0.workflow_id.to_string())
    }

    /// The task it is about, if any.
    async fn task_key(&self) -> Option<&str> {
        self.0.task_key.as_deref()
    }

    /// When it was recorded.
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }

    /// Details (attempt, error, delay, …).
    async fn data(&self) -> Option<Json<&serde_json::Value>> {
        if self.0.data.is_null() { None } else { Some(Json(&self.0.data)) }
    }
}

impl From<Arc<EventRecord>> for WorkflowEvent {
    fn from(e: Arc<EventRecord>) -> Self {
        Self(e)
    }
}

impl From<EventRecord> for WorkflowEvent {
    fn from(e: EventRecord) -> Self {
        Self(Arc::new(e))
    }
}
