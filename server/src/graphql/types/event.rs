use async_graphql::{ID, Json, SimpleObject};
use chrono::{DateTime, Utc};
use taskorch_engine::model::EventRecord;

use super::EventType;

/// A domain event of a workflow.
#[derive(SimpleObject, Clone, Debug)]
pub struct WorkflowEvent {
    /// Position in the workflow's event log: 1, 2, 3, … without gaps.
    pub sequence: i64,
    /// What happened.
    #[graphql(name = "type")]
    pub event_type: EventType,
    /// The workflow it belongs to.
    pub workflow_id: ID,
    /// The task it is about, if any.
    pub task_key: Option<String>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Details (attempt, error, delay, …).
    pub data: Option<Json<serde_json::Value>>,
}

impl From<&EventRecord> for WorkflowEvent {
    fn from(e: &EventRecord) -> Self {
        Self {
            sequence: e.sequence,
            event_type: e.event_type.into(),
            workflow_id: ID(e.workflow_id.to_string()),
            task_key: e.task_key.clone(),
            at: e.at,
            data: if e.data.is_null() { None } else { Some(Json(e.data.clone())) },
        }
    }
}
