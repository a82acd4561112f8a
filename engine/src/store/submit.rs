//! Writing a submitted workflow: the workflow, all its tasks and its first events in one transaction, with
//! batched inserts.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, TransactionTrait};
use serde_json::{Value as Json, json};
use taskorch_domain::dag::ValidatedWorkflow;
use taskorch_domain::{EventType, NewEvent, RetryPolicy, TaskId, TaskStatus, TenantId, WorkflowId, WorkflowStatus};
use taskorch_entity::{task, workflow};

use super::{DUE, IN_NO_QUEUE, Store, is_unique_violation};
use crate::error::Error;
use crate::model::{EventRecord, WorkflowRecord};
use crate::queue::{Dispatch, Phase};
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
    /// Root tasks to hand straight to a queue after the commit, instead of leaving them to the dispatcher.
    pub dispatch: Option<DispatchAtSubmit>,
}

/// Root tasks (of `kinds`, or all) are stored as dispatched until `until` (µs) and returned as dispatches: the
/// submitting process publishes them itself. If it never does (a crash after the commit), the reaper makes them
/// due again when `until` passes, like any dispatch that was never claimed.
#[derive(Debug, Clone)]
pub struct DispatchAtSubmit {
    pub until: i64,
    pub kinds: Option<Vec<String>>,
}

/// What a submission did.
pub enum SubmitOutcome {
    /// Stored and started: the workflow, its first events and the root tasks to publish (see
    /// [`DispatchAtSubmit`]).
    Created(WorkflowRecord, Vec<EventRecord>, Vec<Dispatch>),
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

        let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
        for t in &spec.tasks {
            for d in &t.depends_on {
                dependents.entry(d.as_str()).or_default().push(t.key.as_str());
            }
        }
        let mut events = vec![NewEvent::workflow(EventType::WorkflowStarted)];
        let mut dispatches = Vec::new();
        let rows: Vec<task::Model> = spec
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let root = t.depends_on.is_empty();
                let id = TaskId::new();
                let mut dispatched_until = if root { DUE } else { IN_NO_QUEUE };
                if root {
                    events.push(NewEvent::task(EventType::TaskQueued, t.key.clone()));
                    if let Some(at_submit) = &new.dispatch
                        && at_submit.kinds.as_ref().is_none_or(|kinds| kinds.contains(&t.kind))
                    {
                        dispatched_until = at_submit.until;
                        dispatches.push(Dispatch {
                            task_id: id,
                            workflow_id: wf_id,
                            phase: Phase::Run,
                            kind: t.kind.clone(),
                            priority: i16::from(t.config.priority.get()),
                            fence: 0,
                            seq: now.max(0) as u64,
                            trace: None,
                        });
                    }
                }
                let status = if root { TaskStatus::Queued } else { TaskStatus::Pending };
                let compensation =
                    t.compensation.as_ref().map(|c| json!({ "kind": c.kind, "payload": c.payload, "retry": c.retry }));
                task::Model {
                    id: id.0,
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
                    // The default policy as `{}`: every later version of the row (claim, completion) is smaller.
                    retry: if t.retry == RetryPolicy::default() {
                        Json::Object(serde_json::Map::new())
                    } else {
                        serde_json::to_value(&t.retry).unwrap_or(Json::Null)
                    },
                    timeout_ms: t.config.timeout_ms.map(|v| v as i64),
                    idempotency_key: t.config.idempotency_key.clone(),
                    compensation,
                    comp_kind: t.compensation.as_ref().map(|c| c.kind.clone()),
                    comp_attempts: 0,
                    comp_attempt_base: 0,
                    available_at: now,
                    dispatched_until,
                    lease_until: None,
                    queued_at: root.then_some(now),
                    started_at: None,
                    finished_at: None,
                }
            })
            .collect();
        // A new workflow's events are numbered from 1: the row is inserted with its last sequence.
        let wf_row = workflow::Model {
            id: wf_id.0,
            tenant_id: new.tenant.0,
            name: spec.name.clone(),
            status: WorkflowStatus::Running.as_str().to_owned(),
            idempotency_key: spec.idempotency_key.clone(),
            content_hash: new.content_hash.clone(),
            task_count: spec.tasks.len() as i32,
            completed_count: 0,
            has_compensation,
            last_sequence: events.len() as i64,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            updated_at: now,
            trace_parent: new.trace_parent.clone(),
        };
        let records: Vec<EventRecord> = super::numbered(wf_id.0, &spec.name, new.tenant, 1, events, now).collect();

        let txn = self.db.write.begin().await?;
        if let Err(err) =
            workflow::Entity::insert(wf_row.clone().into_active_model()).exec_without_returning(&txn).await
        {
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
            super::bulk::insert_rows(&txn, "task", &super::bulk::TASK, rows.iter().map(super::bulk::task_cells))
                .await?;
        } else {
            let mut rows = rows.into_iter().map(IntoActiveModel::into_active_model).peekable();
            while rows.peek().is_some() {
                let chunk: Vec<_> = rows.by_ref().take(TASK_CHUNK).collect();
                task::Entity::insert_many(chunk).exec_without_returning(&txn).await?;
            }
        }
        super::insert_events(&txn, &records, now).await?;
        txn.commit().await?;
        Ok(SubmitOutcome::Created(wf_row.try_into()?, records, dispatches))
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
