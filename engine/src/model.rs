//! Read models returned by the use cases, built from stored rows with typed ids and statuses.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use taskorch_domain::{EventType, TaskId, TaskStatus, TenantId, WorkflowId, WorkflowStatus};
use taskorch_entity::{event_chunk, task, workflow};

use crate::error::Error;
use crate::time::to_datetime;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkflowRecord {
    pub id: WorkflowId,
    pub tenant_id: TenantId,
    pub name: String,
    pub status: WorkflowStatus,
    pub idempotency_key: Option<String>,
    pub task_count: i32,
    pub completed_count: i32,
    /// Sequence of the last event: a cached copy older than an event a client saw is stale.
    pub last_sequence: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<workflow::Model> for WorkflowRecord {
    type Error = Error;
    fn try_from(m: workflow::Model) -> Result<Self, Error> {
        Ok(Self {
            id: WorkflowId(m.id),
            tenant_id: TenantId(m.tenant_id),
            status: m.status.parse().map_err(Error::corrupt)?,
            name: m.name,
            idempotency_key: m.idempotency_key,
            task_count: m.task_count,
            completed_count: m.completed_count,
            last_sequence: m.last_sequence,
            created_at: to_datetime(m.created_at),
            started_at: m.started_at.map(to_datetime),
            finished_at: m.finished_at.map(to_datetime),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub workflow_id: WorkflowId,
    pub key: String,
    pub kind: String,
    pub position: i32,
    pub status: TaskStatus,
    pub attempts: i32,
    pub payload: Json,
    pub result: Option<Json>,
    pub error: Option<String>,
    pub depends_on: Vec<String>,
    pub priority: i16,
    pub timeout_ms: Option<i64>,
    pub idempotency_key: Option<String>,
    pub compensation: Option<Json>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Raw timestamps in microseconds, for latency measurements.
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
}

impl TryFrom<task::Model> for TaskRecord {
    type Error = Error;
    fn try_from(m: task::Model) -> Result<Self, Error> {
        Ok(Self {
            id: TaskId(m.id),
            workflow_id: WorkflowId(m.workflow_id),
            status: m.status.parse().map_err(Error::corrupt)?,
            depends_on: serde_json::from_value(m.depends_on).map_err(Error::corrupt)?,
            key: m.key,
            kind: m.kind,
            position: m.position,
            attempts: m.attempts,
            payload: m.payload.unwrap_or(Json::Null),
            result: m.result,
            error: m.error,
            priority: m.priority,
            timeout_ms: m.timeout_ms,
            idempotency_key: m.idempotency_key,
            compensation: m.compensation,
            queued_at: m.queued_at.map(to_datetime),
            started_at: m.started_at.map(to_datetime),
            finished_at: m.finished_at.map(to_datetime),
            started_at_us: m.started_at,
            finished_at_us: m.finished_at,
        })
    }
}

/// A stored domain event.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    pub workflow_id: WorkflowId,
    pub sequence: i64,
    pub event_type: EventType,
    pub task_key: Option<String>,
    pub at: DateTime<Utc>,
    pub data: Json,
    /// Name of the workflow, for firehose filters.
    pub workflow_name: String,
    /// Owner of the workflow: subscribers see only their tenant's events.
    pub tenant_id: TenantId,
}

impl EventRecord {
    /// The events of a stored chunk, in sequence order.
    pub(crate) fn from_chunk(
        m: event_chunk::Model,
        workflow_name: &str,
        tenant_id: TenantId,
    ) -> Result<Vec<Self>, Error> {
        let events: Vec<(String, Option<String>, Json)> = serde_json::from_str(&m.events).map_err(|e| {
            Error::corrupt(format!("events {}..={} of {}: {e}", m.first_sequence, m.last_sequence, m.workflow_id))
        })?;
        if events.len() as i64 != m.last_sequence - m.first_sequence + 1 {
            return Err(Error::corrupt(format!(
                "events {}..={} of {}: {} stored",
                m.first_sequence,
                m.last_sequence,
                m.workflow_id,
                events.len()
            )));
        }
        let at = to_datetime(m.at);
        events
            .into_iter()
            .enumerate()
            .map(|(i, (event_type, task_key, data))| {
                Ok(Self {
                    workflow_id: WorkflowId(m.workflow_id),
                    sequence: m.first_sequence + i as i64,
                    event_type: event_type.parse().map_err(Error::corrupt)?,
                    task_key,
                    at,
                    data,
                    workflow_name: workflow_name.to_owned(),
                    tenant_id,
                })
            })
            .collect()
    }
}

/// Filter of the workflow list.
#[derive(Debug, Clone, Default)]
pub struct WorkflowFilter {
    /// Only this tenant's workflows (every API call sets it).
    pub tenant: Option<TenantId>,
    pub status: Option<WorkflowStatus>,
    pub name: Option<String>,
}

/// One page of workflows, newest first.
#[derive(Debug, Clone)]
pub struct WorkflowPage {
    pub items: Vec<WorkflowRecord>,
    pub has_next_page: bool,
}

/// A tenant (project).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub id: taskorch_domain::TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<taskorch_entity::tenant::Model> for TenantRecord {
    fn from(m: taskorch_entity::tenant::Model) -> Self {
        Self { id: taskorch_domain::TenantId(m.id), name: m.name, created_at: to_datetime(m.created_at) }
    }
}

/// A user (without its password hash).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: taskorch_domain::UserId,
    pub tenant_id: taskorch_domain::TenantId,
    pub email: String,
    pub role: taskorch_domain::Role,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<taskorch_entity::user::Model> for UserRecord {
    type Error = Error;
    fn try_from(m: taskorch_entity::user::Model) -> Result<Self, Error> {
        Ok(Self {
            id: taskorch_domain::UserId(m.id),
            tenant_id: taskorch_domain::TenantId(m.tenant_id),
            role: m.role.parse().map_err(Error::corrupt)?,
            email: m.email,
            created_at: to_datetime(m.created_at),
        })
    }
}

/// An API key (without its secret).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: taskorch_domain::ApiKeyId,
    pub tenant_id: taskorch_domain::TenantId,
    pub name: String,
    pub role: taskorch_domain::Role,
    /// The visible part of the token (`tok_<prefix>_…`).
    pub prefix: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl TryFrom<taskorch_entity::api_key::Model> for ApiKeyRecord {
    type Error = Error;
    fn try_from(m: taskorch_entity::api_key::Model) -> Result<Self, Error> {
        Ok(Self {
            id: taskorch_domain::ApiKeyId(m.id),
            tenant_id: taskorch_domain::TenantId(m.tenant_id),
            role: m.role.parse().map_err(Error::corrupt)?,
            name: m.name,
            prefix: m.prefix,
            created_at: m.created_at,
            expires_at: m.expires_at,
            revoked_at: m.revoked_at,
            last_used_at: m.last_used_at,
        })
    }
}
