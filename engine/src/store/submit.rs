//! Writing a submitted workflow: the workflow, all its tasks and its first events in one transaction, with
//! batched inserts.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set, TransactionTrait};
use serde_json::{Value as Json, json};
use taskorch_domain::dag::ValidatedWorkflow;
use taskorch_domain::{EventType, NewEvent, TaskId, TaskStatus, TenantId, WorkflowId, WorkflowStatus};
use taskorch_entity::{task, workflow};

use super::{Store, is_unique_violation};
use crate::error::Error;
use crate::model::{EventRecord, WorkflowRecord};
use crate::time::now_us;

/// A validated workflow ready to be stored.
pub struct NewWorkflow {
    /// Owner.
    pub tenant: TenantId,
    pub validated: ValidatedWorkflow,
    /// Hash of the submitted content, to tell a true resubmission from a reused idempotency key.
    pub content_hash: String,
    /// Trace context of the submission.
    pub trace_parent: Option<String>,
}

/// What a submission did.
pub enum SubmitOutcome {
    Created(WorkflowRecord, Vec<EventRecord>),
    /// The same idempotency key and content were submitted before: the original, nothing written.
    Existing(WorkflowRecord),
}

const TASK_CHUNK: usize = 1000;

impl Store {
    /// Stores a new workflow and starts it: root tasks are QUEUED (ready for dispatch), the others PENDING.
    pub async fn insert_workflow(&self, new: NewWorkflow) -> Result<SubmitOutcome, Error> {
        let spec = &new.validated.spec;
        if let Some(key) = &spec.idempotency_key
            && let Some(existing) = self.find_by_idempotency_key(new.tenant, key, &new.content_hash).await?
        {
            return Ok(SubmitOutcome::Existing(existing));
        }
        let now = now_us();
        let wf_id = WorkflowId::new();
        let has_compensation = spec.tasks.iter().any(|t| t.compensation.is_some());
        let wf_row = workflow::ActiveModel {
            id: Set(wf_id.0),
            tenant_id: Set(new.tenant.0),
            name: Set(spec.name.clone()),
            status: Set(WorkflowStatus::Running.as_str().to_owned()),
            idempotency_key: Set(spec.idempotency_key.clone()),
            content_hash: Set(new.content_hash.clone()),
            task_count: Set(spec.tasks.len() as i32),
            completed_count: Set(0),
            has_compensation: Set(has_compensation),
            last_sequence: Set(0),
            created_at: Set(now),
            started_at: Set(Some(now)),
            finished_at: Set(None),
            updated_at: Set(now),
            trace_parent: Set(new.trace_parent.clone()),
        };

        let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
        for t in &spec.tasks {
            for d in &t.depends_on {
                dependents.entry(d.as_str()).or_default().push(t.key.as_str());
            }
        }
        let mut events = vec![NewEvent::workflow(EventType::WorkflowStarted)];
        let rows: Vec<task::Model> = spec
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let root = t.depends_on.is_empty();
                if root {
                    events.push(NewEvent::task(EventType::TaskQueued, t.key.clone()));
                }
                let status = if root { TaskStatus::Queued } else { TaskStatus::Pending };
                let compensation =
                    t.compensation.as_ref().map(|c| json!({ "kind": c.kind, "payload": c.payload, "retry": c.retry }));
                task::Model {
                    id: TaskId::new().0,
                    workflow_id: wf_id.0,
                    key: t.key.clone(),
                    kind: t.kind.clone(),
                    position: i as i32,
                    status: status.as_str().to_owned(),
                    payload: if t.payload.is_null() { None } else { Some(t.payload.clone()) },
                    result: None,
                    error: None,
                    depends_on: json!(t.depends_on),
                    dependents: json!(dependents.get(t.key.as_str()).cloned().unwrap_or_default()),
                    pending_deps: t.depends_on.len() as i32,
                    priority: i16::from(t.config.priority.get()),
                    attempts: 0,
                    attempt_base: 0,
                    retry: serde_json::to_value(&t.retry).unwrap_or(Json::Null),
                    timeout_ms: t.config.timeout_ms.map(|v| v as i64),
                    idempotency_key: t.config.idempotency_key.clone(),
                    compensation,
                    comp_kind: t.compensation.as_ref().map(|c| c.kind.clone()),
                    comp_attempts: 0,
                    comp_attempt_base: 0,
                    available_at: now,
                    dispatched_until: 0,
                    lease_until: None,
                    queued_at: root.then_some(now),
                    started_at: None,
                    finished_at: None,
                }
            })
            .collect();

        let txn = self.db.write.begin().await?;
        if let Err(err) = workflow::Entity::insert(wf_row).exec_without_returning(&txn).await {
            drop(txn);
            // A concurrent submission with the same key won the race.
            if is_unique_violation(&err)
                && let Some(key) = &spec.idempotency_key
                && let Some(existing) = self.find_by_idempotency_key(new.tenant, key, &new.content_hash).await?
            {
                return Ok(SubmitOutcome::Existing(existing));
            }
            return Err(err.into());
        }
        if self.db.backend == sea_orm::DbBackend::Postgres {
            let rows = rows.iter().map(task_json).collect::<Result<_, _>>()?;
            super::bulk::insert_json(&txn, "task", &super::bulk::TASK, rows).await?;
        } else {
            let mut rows = rows.into_iter().map(IntoActiveModel::into_active_model).peekable();
            while rows.peek().is_some() {
                let chunk: Vec<_> = rows.by_ref().take(TASK_CHUNK).collect();
                task::Entity::insert_many(chunk).exec_without_returning(&txn).await?;
            }
        }
        let records = self.append_events(&txn, wf_id.0, events, now).await?;
        txn.commit().await?;
        let row = workflow::Entity::find_by_id(wf_id.0)
            .one(&self.db.write)
            .await?
            .ok_or_else(|| Error::corrupt("workflow vanished after insert"))?;
        Ok(SubmitOutcome::Created(row.try_into()?, records))
    }

    /// The workflow first submitted with this idempotency key, if its content is the same; a `Conflict` if not.
    async fn find_by_idempotency_key(
        &self,
        tenant: TenantId,
        key: &str,
        content_hash: &str,
    ) -> Result<Option<WorkflowRecord>, Error> {
        let found = workflow::Entity::find()
            .filter(workflow::Column::TenantId.eq(tenant.0))
            .filter(workflow::Column::IdempotencyKey.eq(key))
            .one(&self.db.write)
            .await?;
        match found {
            None => Ok(None),
            Some(m) if m.content_hash == content_hash => Ok(Some(m.try_into()?)),
            Some(m) => Err(Error::Conflict(format!(
                "idempotency key `{key}` was already used by workflow {} with different content",
                m.id
            ))),
        }
    }
}

/// A task row as a JSON object keyed by column (the model's field names are its column names), for
/// `bulk::insert_json`; a `None` is JSON null, which `json_to_recordset` reads as SQL NULL.
fn task_json(t: &task::Model) -> Result<serde_json::Map<String, Json>, Error> {
    match serde_json::to_value(t).map_err(Error::corrupt)? {
        Json::Object(m) => Ok(m),
        other => Err(Error::corrupt(format!("a task row serialised as {other}"))),
    }
}
