//! Recording how attempts ended: completion (making dependents ready and completing the workflow), failure
//! (retry, or fail the workflow / start the saga), release, and the saga's progress. Each batch is one
//! transaction.

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, TransactionTrait, Value};
use serde_json::{Value as Json, json};
use taskorch_domain::saga::{self, SagaNode, SagaProgress};
use taskorch_domain::{EventType, NewEvent, RetryPolicy, TaskStatus, WorkflowStatus};
use uuid::Uuid;

use super::complete::record_completion;
use super::exec::{Continuation, Outcome, OutcomeKind, Report, started, started_event};
use super::{Store, keys_in_order};
use crate::db::placeholders;
use crate::error::Error;
use crate::queue::Phase;
use crate::time::now_us;

/// The row of a peeked attempt as its claim finds it (besides the attempt number): still waiting for a worker, no
/// lease, its workflow running or paused. Shared by the one-row and the set-based claim-and-complete.
pub(super) fn still_waiting() -> String {
    format!(
        "task.status IN {} AND task.lease_until IS NULL AND {}",
        super::exec::RUN_STATUSES,
        super::exec::WORKFLOW_ACTIVE
    )
}

fn json_value(v: Json) -> Value {
    if v.is_null() { Option::<Json>::None.into() } else { Some(v).into() }
}

impl Store {
    /// Records a batch of attempt outcomes in one transaction. `jitter` draws samples in [0, 1] for retry delays.
    /// With a [`Continuation`], the reporting worker also claims dependents the completions made ready.
    pub async fn report(
        &self,
        outcomes: Vec<Outcome>,
        jitter: &mut (dyn FnMut() -> f64 + Send),
        cont: &Continuation,
        lease_us: i64,
    ) -> Result<Report, Error> {
        let now = now_us();
        let txn = self.db.write.begin().await?;
        let mut report = Report::default();
        // On PostgreSQL the batch's completions are one statement (and those of peeked attempts another, with their
        // claims); elsewhere (and for every other outcome) one fenced update each.
        let outcomes = if self.db.backend == DbBackend::Postgres {
            let (completions, rest): (Vec<Outcome>, Vec<Outcome>) = outcomes
                .into_iter()
                .partition(|o| o.phase == Phase::Run && matches!(o.kind, OutcomeKind::Completed(_)));
            let (peeked, claimed): (Vec<Outcome>, Vec<Outcome>) =
                completions.into_iter().partition(|o| o.started_at.is_some());
            self.complete_many(&txn, claimed, now, &mut report).await?;
            self.complete_many(&txn, peeked, now, &mut report).await?;
            rest
        } else {
            outcomes
        };
        let outcomes = self.claim_peeked(&txn, outcomes, now, lease_us, &mut report).await?;
        for o in outcomes {
            let done = match (o.phase, o.kind) {
                (Phase::Run, OutcomeKind::Completed(result)) => {
                    self.complete(&txn, &o.task_id.0, o.attempt, result, now, &mut report).await?
                }
                (Phase::Run, OutcomeKind::Failed(error)) => {
                    self.fail(&txn, &o.task_id.0, o.attempt, &error, now, jitter(), &mut report).await?
                }
                (Phase::Run, OutcomeKind::Released) => {
                    self.release(&txn, &o.task_id.0, o.attempt, now, &mut report).await?
                }
                (Phase::Compensate, OutcomeKind::Completed(_)) => {
                    self.compensated(&txn, &o.task_id.0, o.attempt, now, &mut report).await?
                }
                (Phase::Compensate, OutcomeKind::Failed(error)) => {
                    self.compensation_failed(&txn, &o.task_id.0, o.attempt, &error, now, jitter(), &mut report).await?
                }
                (Phase::Compensate, OutcomeKind::Released) => {
                    let res = txn
                        .execute_raw(self.db.stmt(
                            "UPDATE task SET comp_attempts = comp_attempts - 1, lease_until = NULL, dispatched_until = 0 \
                             WHERE id = ? AND comp_attempts = ? AND status = 'COMPENSATING' AND lease_until IS NOT NULL",
                            vec![o.task_id.0.into(), o.attempt.into()],
                        ))
                        .await?;
                    res.rows_affected() > 0
                }
            };
            if !done {
                report.stale += 1;
            }
        }
        let ready = std::mem::take(&mut report.ready);
        if cont.max > 0 && !ready.is_empty() {
            // A pause committed meanwhile must be seen by the claim (its check of the workflow's status). Every
            // workflow the batch will write is locked by the claim at once, in id order: locking only those with
            // ready dependents now and the others in `flush` would let two concurrent reports wait for each other.
            let mut workflows: Vec<Uuid> = ready.iter().map(|(wf, _)| *wf).collect();
            workflows.extend(report.pending.order.iter().copied());
            workflows.sort_unstable();
            workflows.dedup();
            report.continued = self.claim_ready(&txn, ready, &workflows, cont, now, lease_us).await?;
            report.made_ready -= report.continued.len();
            for c in &report.continued {
                report.pending.extend(c.workflow_id.0, [started_event(c)]);
            }
        }
        let pending = std::mem::take(&mut report.pending);
        report.events = self.flush(&txn, pending, now).await?;
        txn.commit().await?;
        let mut continued = std::mem::take(&mut report.continued);
        let known = std::mem::take(&mut report.results);
        self.fill_inputs(&mut continued, &known).await?;
        report.continued = continued;
        Ok(report)
    }

    /// The claims of the peeked attempts among `outcomes` (see [`Store::peek`]), written before their outcomes in
    /// the same transaction; returns the outcomes to record as those of claimed attempts. A released peeked
    /// attempt was never recorded: its task is only made due again. One whose row moved on is stale.
    async fn claim_peeked(
        &self,
        txn: &DatabaseTransaction,
        outcomes: Vec<Outcome>,
        now: i64,
        lease_us: i64,
        report: &mut Report,
    ) -> Result<Vec<Outcome>, Error> {
        let mut out = Vec::with_capacity(outcomes.len());
        for mut o in outcomes {
            let Some(started_at) = o.started_at.take() else {
                out.push(o);
                continue;
            };
            if o.kind == OutcomeKind::Released {
                txn.execute_raw(self.db.stmt(
                    "UPDATE task SET dispatched_until = 0 WHERE id = ? AND attempts = ? AND lease_until IS NULL \
                     AND status IN ('QUEUED', 'RETRYING')",
                    vec![o.task_id.0.into(), (o.attempt - 1).into()],
                ))
                .await?;
                continue;
            }
            if let OutcomeKind::Completed(result) = &mut o.kind {
                // Not on PostgreSQL (its peeked completions are one statement, `complete_many`): one fenced update
                // per task that claims and completes it.
                let row = txn
                    .query_one_raw(self.db.stmt(
                        &format!(
                            "UPDATE task SET status = 'COMPLETED', attempts = attempts + 1, started_at = ?, result = ?, \
                               error = NULL, lease_until = NULL, dispatched_until = -1, finished_at = ? \
                             WHERE task.id = ? AND task.attempts = ? AND {} \
                             RETURNING workflow_id, key, dependents",
                            still_waiting()
                        ),
                        vec![
                            started_at.into(),
                            json_value(result.clone()),
                            now.into(),
                            o.task_id.0.into(),
                            (o.attempt - 1).into(),
                        ],
                    ))
                    .await?;
                match row {
                    Some(row) => {
                        report.pending.extend(row.try_get_by_index(0)?, [started(row.try_get_by_index(1)?, o.attempt)]);
                        self.completed(txn, &row, o.attempt, std::mem::take(result), now, report).await?;
                    }
                    None => report.stale += 1,
                }
                continue;
            }
            match self.claim_deferred(txn, o.task_id, o.attempt, started_at, now + lease_us).await? {
                Some((wf, started)) => {
                    report.pending.extend(wf, [started]);
                    out.push(o);
                }
                None => report.stale += 1,
            }
        }
        Ok(out)
    }

    async fn complete(
        &self,
        txn: &DatabaseTransaction,
        id: &Uuid,
        attempt: i32,
        result: Json,
        now: i64,
        report: &mut Report,
    ) -> Result<bool, Error> {
        let Some(row) = txn
            .query_one_raw(self.db.stmt(
                "UPDATE task SET status = 'COMPLETED', result = ?, error = NULL, lease_until = NULL, \
                   dispatched_until = -1, finished_at = ? \
                 WHERE id = ? AND attempts = ? AND status = 'RUNNING' RETURNING workflow_id, key, dependents",
                vec![json_value(result.clone()), now.into(), (*id).into(), attempt.into()],
            ))
            .await?
        else {
            return Ok(false);
        };
        self.completed(txn, &row, attempt, result, now, report).await?;
        Ok(true)
    }

    /// After a one-row completion (`row` starts with `workflow_id, key, dependents`): the dependents it made ready
    /// and what every completion records (see [`record_completion`]).
    async fn completed(
        &self,
        txn: &DatabaseTransaction,
        row: &QueryResult,
        attempt: i32,
        result: Json,
        now: i64,
        report: &mut Report,
    ) -> Result<(), Error> {
        let wf: Uuid = row.try_get_by_index(0)?;
        let key: String = row.try_get_by_index(1)?;
        let dependents: Vec<String> =
            serde_json::from_value(row.try_get_by_index(2)?).map_err(crate::Error::corrupt)?;
        let mut ready = Vec::new();
        for chunk in dependents.chunks(500) {
            let mut values: Vec<Value> = vec![now.into(), now.into(), wf.into()];
            values.extend(chunk.iter().map(|k| Value::from(k.clone())));
            // One statement (one row version per dependent): count the dependency down and, for the last one,
            // queue the dependent. `pending_deps` on the right is the value before this update.
            let touched = txn
                .query_all_raw(self.db.stmt(
                    &format!(
                        "UPDATE task SET pending_deps = pending_deps - 1, \
                           status = CASE WHEN pending_deps = 1 THEN 'QUEUED' ELSE status END, \
                           queued_at = CASE WHEN pending_deps = 1 THEN ? ELSE queued_at END, \
                           available_at = CASE WHEN pending_deps = 1 THEN ? ELSE available_at END, \
                           dispatched_until = CASE WHEN pending_deps = 1 THEN 0 ELSE dispatched_until END \
                         WHERE workflow_id = ? AND key IN ({}) AND status = 'PENDING' \
                         RETURNING key, position, status",
                        placeholders(chunk.len())
                    ),
                    values,
                ))
                .await?;
            let mut queued = Vec::with_capacity(touched.len());
            for row in touched {
                if row.try_get_by_index::<String>(2)? == "QUEUED" {
                    queued.push(row);
                }
            }
            ready.extend(keys_in_order(&queued)?);
        }
        record_completion(report, wf, key, attempt, result, !dependents.is_empty(), ready);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        txn: &DatabaseTransaction,
        id: &Uuid,
        attempt: i32,
        error: &str,
        now: i64,
        sample: f64,
        report: &mut Report,
    ) -> Result<bool, Error> {
        let Some(row) = txn
            .query_one_raw(self.db.stmt(
                "UPDATE task SET lease_until = NULL, error = ? WHERE id = ? AND attempts = ? AND status = 'RUNNING' \
                 RETURNING workflow_id, key, retry, attempt_base",
                vec![error.into(), (*id).into(), attempt.into()],
            ))
            .await?
        else {
            return Ok(false);
        };
        let wf: Uuid = row.try_get_by_index(0)?;
        let key: String = row.try_get_by_index(1)?;
        let policy: RetryPolicy = serde_json::from_value(row.try_get_by_index(2)?).map_err(crate::Error::corrupt)?;
        let base: i32 = row.try_get_by_index(3)?;
        let failed =
            NewEvent::task(EventType::TaskFailed, key.clone()).with_data(json!({ "attempt": attempt, "error": error }));
        let status: WorkflowStatus = self.workflow_status(txn, wf).await?;
        let active = matches!(status, WorkflowStatus::Running | WorkflowStatus::Paused);
        let counted = (attempt - base).max(1) as u32;
        if active && policy.should_retry(counted) {
            let delay = policy.delay(counted, sample);
            let delay_us = delay.as_micros() as i64;
            txn.execute_raw(self.db.stmt(
                "UPDATE task SET status = 'RETRYING', available_at = ?, dispatched_until = 0 WHERE id = ?",
                vec![(now + delay_us).into(), (*id).into()],
            ))
            .await?;
            report.made_ready += 1;
            let retrying = NewEvent::task(EventType::TaskRetrying, key)
                .with_data(json!({ "attempt": attempt + 1, "delayMs": delay.as_millis() as u64 }));
            report.pending.extend(wf, vec![failed, retrying]);
            return Ok(true);
        }
        txn.execute_raw(self.db.stmt(
            "UPDATE task SET status = 'FAILED', dispatched_until = -1, finished_at = ? WHERE id = ?",
            vec![now.into(), (*id).into()],
        ))
        .await?;
        let mut events = vec![failed];
        if active {
            events.extend(self.fail_workflow(txn, wf, status, now, report).await?);
        }
        report.pending.extend(wf, events);
        Ok(true)
    }

    /// A task failed for good: cancel what has not finished, then compensate (if any completed task has a
    /// compensation) or fail the workflow.
    async fn fail_workflow(
        &self,
        txn: &DatabaseTransaction,
        wf: Uuid,
        status: WorkflowStatus,
        now: i64,
        report: &mut Report,
    ) -> Result<Vec<NewEvent>, Error> {
        let compensable = txn
            .query_one_raw(self.db.stmt(
                "SELECT COUNT(*) FROM task WHERE workflow_id = ? AND status = 'COMPLETED' AND compensation IS NOT NULL",
                vec![wf.into()],
            ))
            .await?
            .map(|r| r.try_get_by_index::<i64>(0))
            .transpose()?
            .unwrap_or(0);
        let mut events = Vec::new();
        let target = if compensable > 0 { WorkflowStatus::Compensating } else { WorkflowStatus::Failed };
        self.set_workflow_status(txn, wf, status, target, now).await?;
        if compensable > 0 {
            events.push(NewEvent::workflow(EventType::CompensationStarted));
        }
        events.extend(self.cancel_unfinished(txn, wf, now).await?);
        if compensable > 0 {
            events.extend(self.saga_step(txn, wf, now, report).await?);
        } else {
            events.push(NewEvent::workflow(EventType::WorkflowFailed));
        }
        Ok(events)
    }

    /// Cancels every task of the workflow that has not finished (running attempts lose their lease, so their
    /// workers stop them at the next heartbeat). Returns the TASK_CANCELLED events in definition order.
    pub(crate) async fn cancel_unfinished(
        &self,
        txn: &DatabaseTransaction,
        wf: Uuid,
        now: i64,
    ) -> Result<Vec<NewEvent>, Error> {
        let rows = txn
            .query_all_raw(self.db.stmt(
                "UPDATE task SET status = 'CANCELLED', lease_until = NULL, dispatched_until = -1, finished_at = ? \
                 WHERE workflow_id = ? AND status IN ('PENDING', 'QUEUED', 'RUNNING', 'RETRYING') \
                 RETURNING key, position",
                vec![now.into(), wf.into()],
            ))
            .await?;
        Ok(keys_in_order(&rows)?.into_iter().map(|k| NewEvent::task(EventType::TaskCancelled, k)).collect())
    }

    async fn release(
        &self,
        txn: &DatabaseTransaction,
        id: &Uuid,
        attempt: i32,
        now: i64,
        report: &mut Report,
    ) -> Result<bool, Error> {
        let Some(row) = txn
            .query_one_raw(self.db.stmt(
                "UPDATE task SET status = 'QUEUED', attempts = attempts - 1, lease_until = NULL, dispatched_until = 0, \
                   available_at = ? WHERE id = ? AND attempts = ? AND status = 'RUNNING' RETURNING workflow_id, key",
                vec![now.into(), (*id).into(), attempt.into()],
            ))
            .await?
        else {
            return Ok(false);
        };
        let wf: Uuid = row.try_get_by_index(0)?;
        let key: String = row.try_get_by_index(1)?;
        report.made_ready += 1;
        let ev =
            NewEvent::task(EventType::TaskQueued, key).with_data(json!({ "reason": "released by a stopping worker" }));
        report.pending.extend(wf, vec![ev]);
        Ok(true)
    }

    async fn compensated(
        &self,
        txn: &DatabaseTransaction,
        id: &Uuid,
        attempt: i32,
        now: i64,
        report: &mut Report,
    ) -> Result<bool, Error> {
        let Some(row) = txn
            .query_one_raw(self.db.stmt(
                "UPDATE task SET status = 'COMPENSATED', lease_until = NULL, dispatched_until = -1 \
                 WHERE id = ? AND comp_attempts = ? \
                 AND status = 'COMPENSATING' AND lease_until IS NOT NULL RETURNING workflow_id, key",
                vec![(*id).into(), attempt.into()],
            ))
            .await?
        else {
            return Ok(false);
        };
        let wf: Uuid = row.try_get_by_index(0)?;
        let key: String = row.try_get_by_index(1)?;
        let mut events = vec![NewEvent::task(EventType::TaskCompensated, key)];
        events.extend(self.saga_step(txn, wf, now, report).await?);
        report.pending.extend(wf, events);
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn compensation_failed(
        &self,
        txn: &DatabaseTransaction,
        id: &Uuid,
        attempt: i32,
        error: &str,
        now: i64,
        sample: f64,
        report: &mut Report,
    ) -> Result<bool, Error> {
        let Some(row) = txn
            .query_one_raw(self.db.stmt(
                "UPDATE task SET lease_until = NULL, error = ? WHERE id = ? AND comp_attempts = ? \
                 AND status = 'COMPENSATING' AND lease_until IS NOT NULL \
                 RETURNING workflow_id, key, compensation, comp_attempt_base",
                vec![error.into(), (*id).into(), attempt.into()],
            ))
            .await?
        else {
            return Ok(false);
        };
        let wf: Uuid = row.try_get_by_index(0)?;
        let key: String = row.try_get_by_index(1)?;
        let comp: Option<Json> = row.try_get_by_index(2)?;
        let policy: RetryPolicy =
            comp.and_then(|c| c.get("retry").cloned()).and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default();
        let base: i32 = row.try_get_by_index(3)?;
        let counted = (attempt - base).max(1) as u32;
        if policy.should_retry(counted) {
            let delay = policy.delay(counted, sample).as_micros() as i64;
            txn.execute_raw(self.db.stmt(
                "UPDATE task SET available_at = ?, dispatched_until = 0 WHERE id = ?",
                vec![(now + delay).into(), (*id).into()],
            ))
            .await?;
            report.made_ready += 1;
            return Ok(true);
        }
        txn.execute_raw(self.db.stmt(
            "UPDATE task SET status = 'COMPENSATION_FAILED', dispatched_until = -1 WHERE id = ?",
            vec![(*id).into()],
        ))
        .await?;
        let mut events = vec![
            NewEvent::task(EventType::TaskCompensationFailed, key)
                .with_data(json!({ "attempt": attempt, "error": error })),
        ];
        events.extend(self.saga_step(txn, wf, now, report).await?);
        report.pending.extend(wf, events);
        Ok(true)
    }

    /// Moves the saga on: starts the compensations whose dependents are all undone, or ends it.
    pub(crate) async fn saga_step(
        &self,
        txn: &DatabaseTransaction,
        wf: Uuid,
        now: i64,
        report: &mut Report,
    ) -> Result<Vec<NewEvent>, Error> {
        // Compensations ending at once in other transactions must be seen, or each leaves the next step to the other.
        self.lock_workflows(txn, &[wf]).await?;
        let rows = txn
            .query_all_raw(self.db.stmt(
                "SELECT key, status, compensation IS NOT NULL, dependents, id FROM task WHERE workflow_id = ? \
                 ORDER BY position",
                vec![wf.into()],
            ))
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut statuses = Vec::with_capacity(rows.len());
        let mut comps = Vec::with_capacity(rows.len());
        let mut dependents_keys: Vec<Vec<String>> = Vec::with_capacity(rows.len());
        for r in &rows {
            keys.push(r.try_get_by_index::<String>(0)?);
            statuses.push(r.try_get_by_index::<String>(1)?.parse::<TaskStatus>().map_err(crate::Error::corrupt)?);
            comps.push(r.try_get_by_index::<bool>(2)?);
            dependents_keys.push(serde_json::from_value(r.try_get_by_index(3)?).map_err(crate::Error::corrupt)?);
            ids.push(r.try_get_by_index::<Uuid>(4)?);
        }
        let index: std::collections::HashMap<&str, usize> =
            keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let nodes: Vec<SagaNode> = (0..keys.len())
            .map(|i| SagaNode {
                status: statuses[i],
                has_compensation: comps[i],
                dependents: dependents_keys[i].iter().filter_map(|k| index.get(k.as_str()).copied()).collect(),
            })
            .collect();
        let mut events = Vec::new();
        match saga::progress(&nodes) {
            SagaProgress::Continue(ready) => {
                for i in ready {
                    txn.execute_raw(self.db.stmt(
                        "UPDATE task SET status = 'COMPENSATING', available_at = ?, dispatched_until = 0, \
                           lease_until = NULL, comp_attempt_base = comp_attempts WHERE id = ? AND status = 'COMPLETED'",
                        vec![now.into(), ids[i].into()],
                    ))
                    .await?;
                    report.made_ready += 1;
                    events.push(NewEvent::task(EventType::TaskCompensating, keys[i].clone()));
                }
            }
            SagaProgress::Compensated => {
                self.set_workflow_status(txn, wf, WorkflowStatus::Compensating, WorkflowStatus::Compensated, now)
                    .await?;
                events.push(NewEvent::workflow(EventType::WorkflowCompensated));
            }
            SagaProgress::Failed => {
                self.set_workflow_status(
                    txn,
                    wf,
                    WorkflowStatus::Compensating,
                    WorkflowStatus::CompensationFailed,
                    now,
                )
                .await?;
            }
        }
        Ok(events)
    }

    pub(crate) async fn workflow_status<C: ConnectionTrait>(
        &self,
        conn: &C,
        wf: Uuid,
    ) -> Result<WorkflowStatus, Error> {
        let row = conn
            .query_one_raw(self.db.stmt("SELECT status FROM workflow WHERE id = ?", vec![wf.into()]))
            .await?
            .ok_or_else(|| crate::Error::corrupt("workflow vanished"))?;
        row.try_get_by_index::<String>(0)?.parse().map_err(crate::Error::corrupt)
    }

    /// Moves a workflow from `from` to `to` if the state machine allows it; `finished_at` is set on terminal
    /// statuses and cleared otherwise.
    pub(crate) async fn set_workflow_status<C: ConnectionTrait>(
        &self,
        conn: &C,
        wf: Uuid,
        from: WorkflowStatus,
        to: WorkflowStatus,
        now: i64,
    ) -> Result<(), Error> {
        from.transition(to).map_err(|_| Error::InvalidState { current: from, action: "changed" })?;
        let finished: Option<i64> = to.is_terminal().then_some(now);
        conn.execute_raw(self.db.stmt(
            "UPDATE workflow SET status = ?, finished_at = ?, updated_at = ? WHERE id = ? AND status = ?",
            vec![to.as_str().into(), finished.into(), now.into(), wf.into(), from.as_str().into()],
        ))
        .await?;
        Ok(())
    }
}
