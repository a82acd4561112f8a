//! Operator actions: cancel, pause, resume and retry, each one transaction with its events.

use sea_orm::{ConnectionTrait, EntityTrait, TransactionTrait};
use serde_json::json;
use taskorch_domain::lifecycle::{Action, RetryStep, retry_plan};
use taskorch_domain::{EventType, NewEvent, TaskStatus, WorkflowId, WorkflowStatus};
use taskorch_entity::workflow;
use uuid::Uuid;

use super::{DUE, IN_NO_QUEUE, Store, keys_in_order};
use crate::error::Error;
use crate::model::{EventRecord, WorkflowRecord};
use crate::time::now_us;

impl Store {
    /// Applies an operator action to a workflow; returns the events written. An action locks the workflow's row
    /// before its tasks', while claims and reports lock task rows first: on PostgreSQL the two can deadlock, and
    /// the one aborted is tried again (claims and reports retry their own).
    pub async fn apply_action(
        &self,
        id: WorkflowId,
        action: Action,
    ) -> Result<(WorkflowRecord, Vec<EventRecord>), Error> {
        let mut tries = 0;
        loop {
            match self.apply_action_once(id, action).await {
                Err(Error::Database(err)) if tries < 4 && super::is_deadlock(&err) => {
                    tries += 1;
                    tracing::info!(workflow.id = %id, tries, "action aborted by a deadlock; trying again");
                }
                other => return other,
            }
        }
    }

    async fn apply_action_once(
        &self,
        id: WorkflowId,
        action: Action,
    ) -> Result<(WorkflowRecord, Vec<EventRecord>), Error> {
        let now = now_us();
        let wf = id.0;
        let txn = self.db.write.begin().await?;
        // A write first, so SQLite takes its write lock before anything is read.
        let row = txn
            .query_one_raw(
                self.db.stmt(
                    "UPDATE workflow SET updated_at = ? WHERE id = ? RETURNING status",
                    vec![now.into(), wf.into()],
                ),
            )
            .await?
            .ok_or_else(|| Error::NotFound { what: "workflow", id: id.to_string() })?;
        let current: WorkflowStatus = row.try_get_by_index::<String>(0)?.parse().map_err(Error::corrupt)?;
        let target = action.target(current).ok_or(Error::InvalidState { current, action: action.past_participle() })?;
        self.set_workflow_status(&txn, wf, current, target, now).await?;
        let mut events = Vec::new();
        match (action, current) {
            (Action::Cancel, _) => {
                events.extend(self.cancel_unfinished(&txn, wf, now).await?);
                events.push(NewEvent::workflow(EventType::WorkflowCancelled));
            }
            (Action::Pause, _) => events.push(NewEvent::workflow(EventType::WorkflowPaused)),
            (Action::Resume, _) => {
                // Dispatches refused while paused go out again now, not after their redelivery delay.
                txn.execute_raw(self.db.stmt(
                    "UPDATE task SET dispatched_until = 0 WHERE workflow_id = ? AND status IN ('QUEUED', 'RETRYING')",
                    vec![wf.into()],
                ))
                .await?;
                events.push(NewEvent::workflow(EventType::WorkflowResumed));
            }
            (Action::Retry, WorkflowStatus::CompensationFailed) => {
                let rows = txn
                    .query_all_raw(self.db.stmt(
                        "UPDATE task SET status = 'COMPENSATING', lease_until = NULL, available_at = ?, \
                           dispatched_until = 0, comp_attempt_base = comp_attempts, error = NULL \
                         WHERE workflow_id = ? AND status = 'COMPENSATION_FAILED' RETURNING key, position",
                        vec![now.into(), wf.into()],
                    ))
                    .await?;
                let keys = keys_in_order(&rows)?;
                let data = json!({ "reason": "retry", "tasks": keys });
                events.push(NewEvent::workflow(EventType::WorkflowResumed).with_data(data));
                events.extend(keys.into_iter().map(|k| NewEvent::task(EventType::TaskCompensating, k)));
            }
            (Action::Retry, _) => {
                let (retried, queued) = self.rerun_failed(&txn, wf, now).await?;
                // The tasks put back, queued or waiting for their dependencies again: the log's record of the
                // change for the ones that get no TASK_QUEUED now.
                let data = json!({ "reason": "retry", "tasks": retried });
                events.push(NewEvent::workflow(EventType::WorkflowResumed).with_data(data));
                events.extend(queued);
            }
        }
        let records = self.append_events(&txn, wf, events, now).await?;
        let row = workflow::Entity::find_by_id(wf)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::NotFound { what: "workflow", id: id.to_string() })?;
        txn.commit().await?;
        Ok((row.try_into()?, records))
    }

    /// Puts FAILED and CANCELLED tasks back: queued when their dependencies are complete, pending otherwise.
    /// Returns the keys of the tasks put back and the TASK_QUEUED events of the queued ones.
    async fn rerun_failed<C: ConnectionTrait>(
        &self,
        conn: &C,
        wf: Uuid,
        now: i64,
    ) -> Result<(Vec<String>, Vec<NewEvent>), Error> {
        let rows = conn
            .query_all_raw(self.db.stmt(
                "SELECT id, key, status, depends_on FROM task WHERE workflow_id = ? ORDER BY position",
                vec![wf.into()],
            ))
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        let mut statuses = Vec::with_capacity(rows.len());
        let mut dep_keys: Vec<Vec<String>> = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(r.try_get_by_index::<Uuid>(0)?);
            keys.push(r.try_get_by_index::<String>(1)?);
            statuses.push(r.try_get_by_index::<String>(2)?.parse::<TaskStatus>().map_err(Error::corrupt)?);
            dep_keys.push(serde_json::from_value(r.try_get_by_index(3)?).map_err(Error::corrupt)?);
        }
        let index: std::collections::HashMap<&str, usize> =
            keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let deps: Vec<Vec<usize>> =
            dep_keys.iter().map(|ds| ds.iter().filter_map(|k| index.get(k.as_str()).copied()).collect()).collect();
        let mut events = Vec::new();
        let mut retried = Vec::new();
        for (i, step) in retry_plan(&statuses, &deps) {
            retried.push(keys[i].clone());
            let (status, pending, queued_at, dispatched_until) = match step {
                RetryStep::Queue => (TaskStatus::Queued, 0, Some(now), DUE),
                RetryStep::Wait { pending } => (TaskStatus::Pending, pending as i32, None, IN_NO_QUEUE),
            };
            conn.execute_raw(self.db.stmt(
                "UPDATE task SET status = ?, pending_deps = ?, queued_at = ?, available_at = ?, dispatched_until = ?, \
                   lease_until = NULL, error = NULL, result = NULL, finished_at = NULL, attempt_base = attempts \
                 WHERE id = ?",
                vec![
                    status.as_str().into(),
                    pending.into(),
                    queued_at.into(),
                    now.into(),
                    dispatched_until.into(),
                    ids[i].into(),
                ],
            ))
            .await?;
            if status == TaskStatus::Queued {
                events.push(NewEvent::task(EventType::TaskQueued, keys[i].clone()));
            }
        }
        Ok((retried, events))
    }

    /// Ids of the workflows matching a filter (for bulk actions).
    pub async fn workflow_ids(&self, filter: &crate::model::WorkflowFilter) -> Result<Vec<WorkflowId>, Error> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_workflows(filter, after, 1000).await?;
            out.extend(page.items.iter().map(|w| w.id));
            if !page.has_next_page {
                break;
            }
            after = out.last().copied();
        }
        Ok(out)
    }
}
