//! Execution: fetching due tasks for dispatch, fenced claims, heartbeats and the reaper's scan.

use std::collections::{BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, TransactionTrait, Value};
use serde_json::Value as Json;
use taskorch_domain::{EventType, NewEvent, TaskId, WorkflowId};
use uuid::Uuid;

use super::{Pending, Store};
use crate::db::placeholders;
use crate::error::Error;
use crate::model::EventRecord;
use crate::queue::{Dispatch, Phase};
use crate::time::now_us;

/// A task claimed by a worker: everything its handler needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub task_id: TaskId,
    pub workflow_id: WorkflowId,
    pub key: String,
    pub kind: String,
    pub phase: Phase,
    /// 1-based attempt number; also the fence for reporting.
    pub attempt: i32,
    pub payload: Json,
    /// Results of the dependencies by key (run phase), or `{payload, result}` of the task being compensated.
    pub inputs: Json,
    pub idempotency_key: Option<String>,
    pub timeout_ms: Option<i64>,
    /// How long the task waited between becoming due and this claim, in microseconds (run phase).
    pub queue_wait_us: i64,
    /// Whether other tasks depend on it (its completion may make some ready: run phase).
    pub has_dependents: bool,
    /// Read by [`Store::peek`], not claimed yet: the claim is written with the attempt's outcome (its
    /// [`Outcome::started_at`]), or by [`Store::claim_started`] if the attempt runs long. `attempt` is the one the claim
    /// will record.
    pub deferred: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeKind {
    Completed(Json),
    Failed(String),
    /// Not finished (worker shutting down): back to the queue, not counted as an attempt.
    Released,
}

/// The end of an attempt, reported by the worker that holds it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub task_id: TaskId,
    pub phase: Phase,
    pub attempt: i32,
    pub kind: OutcomeKind,
    /// When the attempt started (µs), for an attempt whose claim was deferred (see [`Claimed::deferred`]): the
    /// report records the claim and the outcome together. `None` for a claimed attempt.
    pub started_at: Option<i64>,
}

/// What a batch of reports changed.
#[derive(Debug, Default)]
pub struct Report {
    pub events: Vec<EventRecord>,
    /// Tasks made ready for dispatch.
    pub made_ready: usize,
    /// Reports refused because the attempt no longer held the task.
    pub stale: usize,
    /// Tasks the reporting worker claimed in the same transaction (see [`Continuation`]), inputs filled (the
    /// engine hands them to the worker before publishing the events).
    pub continued: Vec<Claimed>,
    /// Dependents made ready by this batch's completions, in order: candidates for the continuation.
    pub(crate) ready: Vec<(Uuid, String)>,
    /// Events and counters written once at the end of the batch.
    pub(crate) pending: Pending,
    /// Results of this batch's completions that have dependents, by workflow and key.
    pub(crate) results: HashMap<(Uuid, String), Json>,
}

/// Lets the worker that reports a batch claim, in the same transaction, up to `max` of the dependents its
/// completions made ready (of the `kinds` it serves), and run them at once: a dependency hop is then one commit,
/// not a completion, a dispatch through the queue and a claim. `max` is the worker's free slots; zero turns it off.
#[derive(Debug, Clone, Default)]
pub struct Continuation {
    pub max: usize,
    pub kinds: Vec<String>,
}

pub(super) const RUN_STATUSES: &str = "('QUEUED', 'RETRYING')";
/// Statuses of tasks that wait for a worker (run, retry or compensation).
const DISPATCHABLE: &str = "('QUEUED', 'RETRYING', 'COMPENSATING')";
/// A claim keeps the dispatch's `dispatched_until` when it is no later than the new lease (the reaper then sees the
/// row by the time the lease runs out): no indexed column changes, so PostgreSQL writes the claim as a HOT update.
/// Otherwise (a dispatch made due again, a visibility longer than the lease) it becomes the lease. Placeholders:
/// the lease, twice.
macro_rules! keep_dispatch {
    () => {
        "CASE WHEN task.dispatched_until > 0 AND task.dispatched_until <= ? THEN task.dispatched_until ELSE ? END"
    };
}
const KEEP_DISPATCH: &str = keep_dispatch!();
/// The `SET` of a run-phase claim; its placeholders are [`run_claim_values`].
const RUN_CLAIM_SET: &str = concat!(
    "status = 'RUNNING', attempts = task.attempts + 1, lease_until = ?, started_at = ?, error = NULL, ",
    "dispatched_until = ",
    keep_dispatch!()
);

/// The values of [`RUN_CLAIM_SET`]'s placeholders.
fn run_claim_values(lease_until: i64, now: i64) -> Vec<Value> {
    vec![lease_until.into(), now.into(), lease_until.into(), lease_until.into()]
}
/// Tasks are claimed only while their workflow runs. A scalar subquery, looked up once per task row the statement
/// found through its own conditions: as `EXISTS` the planner may turn it into a join driven by the workflow table,
/// and with a new database's stale statistics it did (a scan of the workflows, each probing the whole batch of
/// task ids — 40–150 ms per batch instead of 2).
const WORKFLOW_RUNNING: &str = "(SELECT w.status FROM workflow w WHERE w.id = task.workflow_id) = 'RUNNING'";
/// A started attempt goes on through a pause of its workflow (deferred claims, see [`Store::peek`]).
/// As [`WORKFLOW_RUNNING`], a scalar subquery.
pub(super) const WORKFLOW_ACTIVE: &str =
    "(SELECT w.status FROM workflow w WHERE w.id = task.workflow_id) IN ('RUNNING', 'PAUSED')";
/// What a run-phase claim returns, by index: key, kind, payload, attempts, idempotency_key, timeout_ms, depends_on,
/// available_at, whether it has dependents.
const RUN_CLAIM_COLUMNS: &str = "task.key, task.kind, task.payload, task.attempts, task.idempotency_key, task.timeout_ms, task.depends_on, \
     task.available_at, json_array_length(task.dependents) > 0";

impl Store {
    /// Marks up to `limit` due tasks as dispatched for `visibility_us` and returns them, highest priority first.
    /// A dispatched task that is still unclaimed when the visibility runs out is made due again by
    /// [`Store::expire_dispatches`] (the reaper) and dispatched again.
    pub async fn fetch_due(
        &self,
        limit: usize,
        kinds: Option<&[String]>,
        visibility_us: i64,
    ) -> Result<Vec<Dispatch>, Error> {
        let now = now_us();
        let mut values: Vec<Value> = vec![(now + visibility_us).into(), now.into()];
        let mut kind_filter = String::new();
        if let Some(kinds) = kinds {
            let ph = placeholders(kinds.len());
            kind_filter = format!(
                " AND ((t.status <> 'COMPENSATING' AND t.kind IN ({ph})) \
                 OR (t.status = 'COMPENSATING' AND t.comp_kind IN ({ph})))"
            );
            for _ in 0..2 {
                values.extend(kinds.iter().map(|k| Value::from(k.clone())));
            }
        }
        values.push((limit as i64).into());
        let lock = if self.db.backend == DbBackend::Postgres { " FOR UPDATE OF t SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE task SET dispatched_until = ? WHERE id IN (\
               SELECT t.id FROM task t JOIN workflow w ON w.id = t.workflow_id \
               WHERE t.status IN {DISPATCHABLE} AND t.lease_until IS NULL \
                 AND t.dispatched_until = 0 AND t.available_at <= ? \
                 AND ((t.status <> 'COMPENSATING' AND w.status = 'RUNNING') \
                   OR (t.status = 'COMPENSATING' AND w.status = 'COMPENSATING')){kind_filter} \
               ORDER BY t.priority DESC, t.available_at LIMIT ?{lock}) \
             RETURNING id, workflow_id, status, kind, comp_kind, priority, attempts, comp_attempts, available_at"
        );
        let rows = self.db.write.query_all_raw(self.db.stmt(&sql, values)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get_by_index(2)?;
            let compensate = status == "COMPENSATING";
            let kind: String = row.try_get_by_index(3)?;
            let comp_kind: Option<String> = row.try_get_by_index(4)?;
            let available_at: i64 = row.try_get_by_index(8)?;
            out.push(Dispatch {
                task_id: TaskId(row.try_get_by_index(0)?),
                workflow_id: WorkflowId(row.try_get_by_index(1)?),
                phase: if compensate { Phase::Compensate } else { Phase::Run },
                kind: if compensate { comp_kind.unwrap_or(kind) } else { kind },
                priority: row.try_get_by_index(5)?,
                fence: if compensate { row.try_get_by_index(7)? } else { row.try_get_by_index(6)? },
                seq: available_at.max(0) as u64,
                trace: None,
            });
        }
        out.sort_by(|a, b| b.cmp(a));
        Ok(out)
    }

    /// Trace contexts of the given workflows' submissions.
    pub async fn trace_parents(&self, ids: &[WorkflowId]) -> Result<HashMap<WorkflowId, String>, Error> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let values: Vec<Value> = chunk.iter().map(|id| id.0.into()).collect();
            let rows = self
                .db
                .read
                .query_all_raw(self.db.stmt(
                    &format!(
                        "SELECT id, trace_parent FROM workflow WHERE trace_parent IS NOT NULL AND id IN ({})",
                        placeholders(chunk.len())
                    ),
                    values,
                ))
                .await?;
            for r in rows {
                out.insert(WorkflowId(r.try_get_by_index(0)?), r.try_get_by_index(1)?);
            }
        }
        Ok(out)
    }

    /// Makes dispatches whose visibility ran out (never claimed: a lost message, a dead consumer) due again;
    /// returns how many. Leased rows whose `dispatched_until` passed are looked at again when their (extended) lease
    /// runs out; a row in no queue that still shows one leaves it. Each is its own statement, and on PostgreSQL rows
    /// that a claim or report holds are left for the next pass (no lock waits, no deadlock with them).
    pub async fn expire_dispatches(&self) -> Result<u64, Error> {
        let now = now_us();
        let passed = "dispatched_until > 0 AND dispatched_until <= ?";
        let expired = self
            .sweep("0", &format!("{passed} AND lease_until IS NULL AND status IN {DISPATCHABLE}"), vec![now.into()])
            .await?;
        self.sweep("lease_until", &format!("{passed} AND lease_until >= ?"), vec![now.into(), now.into()]).await?;
        self.sweep(
            "-1",
            &format!("{passed} AND lease_until IS NULL AND status NOT IN {DISPATCHABLE}"),
            vec![now.into()],
        )
        .await?;
        Ok(expired)
    }

    /// `UPDATE task SET dispatched_until = {value}` of the rows matching `filter`, skipping locked rows on
    /// PostgreSQL; returns how many.
    async fn sweep(&self, value: &str, filter: &str, values: Vec<Value>) -> Result<u64, Error> {
        let sql = if self.db.backend == DbBackend::Postgres {
            format!(
                "UPDATE task SET dispatched_until = {value} WHERE id IN \
                   (SELECT id FROM task WHERE {filter} FOR UPDATE SKIP LOCKED)"
            )
        } else {
            format!("UPDATE task SET dispatched_until = {value} WHERE {filter}")
        };
        Ok(self.db.write.execute_raw(self.db.stmt(&sql, values)).await?.rows_affected())
    }

    /// Makes dispatched tasks due again at once.
    pub async fn undispatch(&self, ids: &[TaskId]) -> Result<(), Error> {
        for chunk in ids.chunks(500) {
            let values: Vec<Value> = chunk.iter().map(|id| id.0.into()).collect();
            self.db
                .write
                .execute_raw(self.db.stmt(
                    &format!(
                        "UPDATE task SET dispatched_until = 0 WHERE id IN ({}) AND lease_until IS NULL",
                        placeholders(chunk.len())
                    ),
                    values,
                ))
                .await?;
        }
        Ok(())
    }

    /// Reads what the run-phase dispatches of `batch` need to run, without claiming them (compensation dispatches
    /// are left out: they are claimed). A worker runs a peeked attempt at once and records its claim with its
    /// outcome — a short attempt then costs one row version and one transaction, not two — or claims it with
    /// [`Store::claim_started`] if it runs long. Until then the dispatch's visibility stands in for the lease. Dispatches
    /// whose row moved on (claimed, cancelled, workflow not running) or whose fence is stale are left out, and a
    /// task delivered twice in the batch is read once. Inputs are filled.
    pub async fn peek(&self, batch: &[Dispatch]) -> Result<Vec<Claimed>, Error> {
        let now = now_us();
        let runs: Vec<&Dispatch> = batch.iter().filter(|d| d.phase == Phase::Run).collect();
        let mut out = Vec::with_capacity(runs.len());
        let mut seen = std::collections::HashSet::with_capacity(runs.len());
        for chunk in runs.chunks(500) {
            let (filter, values): (String, Vec<Value>) = if self.db.backend == DbBackend::Postgres {
                ("task.id = ANY(?::uuid[])".into(), vec![super::bulk::uuid_array(chunk.iter().map(|d| d.task_id.0))])
            } else {
                (
                    format!("task.id IN ({})", placeholders(chunk.len())),
                    chunk.iter().map(|d| d.task_id.0.into()).collect(),
                )
            };
            // From the primary (a replica may not have the task yet); SQLite's readers see every commit and leave
            // its one writer free.
            let conn = if self.db.backend == DbBackend::Sqlite { &self.db.read } else { &self.db.write };
            let rows = conn
                .query_all_raw(self.db.stmt(
                    &format!(
                        "SELECT {RUN_CLAIM_COLUMNS}, task.id FROM task WHERE {filter} AND task.status IN {RUN_STATUSES} \
                         AND task.lease_until IS NULL AND {WORKFLOW_RUNNING}"
                    ),
                    values,
                ))
                .await?;
            let mut by_id = HashMap::with_capacity(rows.len());
            for row in rows {
                by_id.insert(row.try_get_by_index::<Uuid>(9)?, row);
            }
            for d in chunk {
                let Some(row) = by_id.get(&d.task_id.0) else { continue };
                let mut c = run_claimed(row, d.task_id, d.workflow_id, now)?;
                if c.attempt != d.fence || !seen.insert(d.task_id) {
                    continue;
                }
                c.attempt += 1;
                c.deferred = true;
                out.push(c);
            }
        }
        self.fill_inputs(&mut out, &HashMap::new()).await?;
        Ok(out)
    }

    /// Writes, in `txn`, the claim of attempt `attempt` of `task_id`, peeked and started at `started_at`: `Some`
    /// with the claim's TASK_STARTED once written, `None` if the row moved on. The workflow may be paused since the
    /// peek: a started attempt goes on through a pause, as a claimed one does.
    pub(crate) async fn claim_deferred<C: ConnectionTrait>(
        &self,
        txn: &C,
        task_id: TaskId,
        attempt: i32,
        started_at: i64,
        lease_until: i64,
    ) -> Result<Option<(Uuid, NewEvent)>, Error> {
        let row = txn
            .query_one_raw(self.db.stmt(
                &format!(
                    "UPDATE task SET {RUN_CLAIM_SET} WHERE id = ? AND attempts = ? AND status IN {RUN_STATUSES} \
                     AND lease_until IS NULL AND {WORKFLOW_ACTIVE} RETURNING task.workflow_id, task.key"
                ),
                [run_claim_values(lease_until, started_at), vec![task_id.0.into(), (attempt - 1).into()]].concat(),
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((row.try_get_by_index(0)?, started(row.try_get_by_index(1)?, attempt))))
    }

    /// Claims peeked attempts that run long (`(task, attempt, started_at)`), in one transaction; returns the tasks
    /// whose claims were written (the others moved on) and their TASK_STARTED events.
    pub async fn claim_started(
        &self,
        attempts: &[(TaskId, i32, i64)],
        lease_us: i64,
    ) -> Result<(Vec<TaskId>, Vec<EventRecord>), Error> {
        let now = now_us();
        let txn = self.db.write.begin().await?;
        let mut pending = Pending::default();
        let mut claimed = Vec::with_capacity(attempts.len());
        for (task_id, attempt, started_at) in attempts {
            if let Some((wf, started)) =
                self.claim_deferred(&txn, *task_id, *attempt, *started_at, now + lease_us).await?
            {
                pending.extend(wf, [started]);
                claimed.push(*task_id);
            }
        }
        let events = self.flush(&txn, pending, now).await?;
        txn.commit().await?;
        Ok((claimed, events))
    }

    /// Claims dispatched tasks with fenced conditional updates, in one transaction. A duplicate or stale message
    /// (the row moved on) claims nothing and is dropped.
    pub async fn claim(&self, batch: &[Dispatch], lease_us: i64) -> Result<(Vec<Claimed>, Vec<EventRecord>), Error> {
        let now = now_us();
        let txn = self.db.write.begin().await?;
        let mut claimed = Vec::with_capacity(batch.len());
        // On PostgreSQL the run-phase claims of the batch are one statement; elsewhere one fenced update each.
        let set_based = self.db.backend == DbBackend::Postgres;
        let mut rows = if set_based { self.claim_runs(&txn, batch, now, lease_us).await? } else { Vec::new() };
        for d in batch.iter().filter(|d| !(set_based && d.phase == Phase::Run)) {
            let row = match d.phase {
                Phase::Run => {
                    txn.query_one_raw(self.db.stmt(
                        &format!(
                            "UPDATE task SET {RUN_CLAIM_SET} WHERE id = ? AND attempts = ? \
                             AND status IN {RUN_STATUSES} AND {WORKFLOW_RUNNING} RETURNING {RUN_CLAIM_COLUMNS}"
                        ),
                        [run_claim_values(now + lease_us, now), vec![d.task_id.0.into(), d.fence.into()]].concat(),
                    ))
                    .await?
                }
                Phase::Compensate => {
                    let lease_until = now + lease_us;
                    txn.query_one_raw(self.db.stmt(
                        &format!(
                            "UPDATE task SET lease_until = ?, comp_attempts = comp_attempts + 1, \
                               dispatched_until = {KEEP_DISPATCH} \
                             WHERE id = ? AND comp_attempts = ? AND status = 'COMPENSATING' AND lease_until IS NULL \
                             RETURNING key, comp_kind, compensation, comp_attempts, idempotency_key, timeout_ms, \
                               payload, result"
                        ),
                        vec![
                            lease_until.into(),
                            lease_until.into(),
                            lease_until.into(),
                            d.task_id.0.into(),
                            d.fence.into(),
                        ],
                    ))
                    .await?
                }
            };
            if let Some(row) = row {
                rows.push((d, row));
            }
        }
        let mut pending = Pending::default();
        for (d, row) in rows {
            let c = match d.phase {
                Phase::Run => run_claimed(&row, d.task_id, d.workflow_id, now)?,
                Phase::Compensate => compensation_claimed(&row, d)?,
            };
            if c.phase == Phase::Run {
                pending.extend(c.workflow_id.0, [started_event(&c)]);
            }
            claimed.push(c);
        }
        let events = self.flush(&txn, pending, now).await?;
        txn.commit().await?;
        self.fill_inputs(&mut claimed, &HashMap::new()).await?;
        Ok((claimed, events))
    }

    /// Inputs: the results of each run-phase task's dependencies (claimed with their names as `inputs`), read after
    /// the claim committed, except those `known` (completed in the claiming transaction itself).
    /// One read per workflow, however many of its tasks were claimed together (a fan-in's dependents).
    pub(crate) async fn fill_inputs(
        &self,
        claimed: &mut [Claimed],
        known: &HashMap<(Uuid, String), Json>,
    ) -> Result<(), Error> {
        let mut deps_of: Vec<Vec<String>> = Vec::with_capacity(claimed.len());
        let mut wanted: HashMap<WorkflowId, BTreeSet<String>> = HashMap::new();
        for c in claimed.iter_mut() {
            let deps: Vec<String> = match c.phase {
                Phase::Run => serde_json::from_value(std::mem::take(&mut c.inputs)).map_err(Error::corrupt)?,
                Phase::Compensate => Vec::new(),
            };
            if !deps.is_empty() {
                wanted.entry(c.workflow_id).or_default().extend(deps.iter().cloned());
            }
            deps_of.push(deps);
        }
        let mut results: HashMap<WorkflowId, serde_json::Map<String, Json>> = HashMap::with_capacity(wanted.len());
        for (wf, keys) in wanted {
            let mut have = serde_json::Map::new();
            let mut missing = Vec::with_capacity(keys.len());
            for k in keys {
                let key = (wf.0, k);
                match known.get(&key) {
                    Some(result) => {
                        have.insert(key.1, result.clone());
                    }
                    None => missing.push(key.1),
                }
            }
            if !missing.is_empty() {
                have.extend(self.results_of(wf, &missing).await?);
            }
            results.insert(wf, have);
        }
        for (c, deps) in claimed.iter_mut().zip(deps_of) {
            if c.phase == Phase::Run {
                let of_wf = results.get(&c.workflow_id);
                let inputs = deps.into_iter().filter_map(|k| Some((k.clone(), of_wf?.get(&k)?.clone()))).collect();
                c.inputs = Json::Object(inputs);
            }
        }
        Ok(())
    }

    /// The continuation of a report (see [`Continuation`]): claims up to `cont.max` of the ready dependents, in
    /// the reporting transaction. Inputs are the dependencies' names until [`Store::fill_inputs`].
    ///
    /// On PostgreSQL the first claim also locks the workflow rows `lock` (sorted), as [`Store::lock_workflows`]
    /// would, without a round trip of its own: a `FOR UPDATE` CTE that waits for a concurrent change of a
    /// workflow to commit and then returns the row as committed, and the claim checks the status it returns (not
    /// the statement's snapshot, taken before the wait). PostgreSQL runs a CTE only as far as it is read: a claim
    /// that read no status may have locked nothing, so then the rows are locked by a statement of their own before
    /// the next workflow's claim.
    pub(crate) async fn claim_ready(
        &self,
        txn: &DatabaseTransaction,
        ready: Vec<(Uuid, String)>,
        mut lock: &[Uuid],
        cont: &Continuation,
        now: i64,
        lease_us: i64,
    ) -> Result<Vec<Claimed>, Error> {
        let mut by_workflow: Vec<(Uuid, Vec<String>)> = Vec::new();
        for (wf, key) in ready {
            match by_workflow.last_mut() {
                Some((w, keys)) if *w == wf => keys.push(key),
                _ => by_workflow.push((wf, vec![key])),
            }
        }
        let mut out = Vec::new();
        for (wf, keys) in by_workflow {
            let room = cont.max.saturating_sub(out.len());
            if room == 0 || cont.kinds.is_empty() {
                break;
            }
            let keys = &keys[..keys.len().min(room)];
            let mut values = Vec::new();
            let locking = self.db.backend == DbBackend::Postgres && !lock.is_empty();
            let (with, running) = if locking {
                values.push(super::bulk::uuid_array(lock.iter().copied()));
                (
                    "WITH locked AS MATERIALIZED (SELECT id, status FROM workflow WHERE id = ANY(?::uuid[]) \
                     ORDER BY id FOR UPDATE) ",
                    "(SELECT l.status FROM locked l WHERE l.id = task.workflow_id) = 'RUNNING'",
                )
            } else {
                ("", WORKFLOW_RUNNING)
            };
            values.extend(run_claim_values(now + lease_us, now));
            values.push(wf.into());
            values.extend(keys.iter().map(|k| Value::from(k.clone())));
            values.extend(cont.kinds.iter().map(|k| Value::from(k.clone())));
            let rows = txn
                .query_all_raw(self.db.stmt(
                    &format!(
                        "{with}UPDATE task SET {RUN_CLAIM_SET} WHERE workflow_id = ? AND key IN ({}) \
                         AND status = 'QUEUED' AND kind IN ({}) AND {running} \
                         RETURNING {RUN_CLAIM_COLUMNS}, task.id, task.position",
                        placeholders(keys.len()),
                        placeholders(cont.kinds.len())
                    ),
                    values,
                ))
                .await?;
            if locking {
                // A claimed row read the status through the CTE, which then ran to its end (a scalar subquery reads
                // all its rows): every row is locked. With none, the CTE may never have run.
                if rows.is_empty() {
                    self.lock_workflows(txn, lock).await?;
                }
                lock = &[];
            }
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let position: i32 = row.try_get_by_index(10)?;
                claimed.push((position, run_claimed(&row, TaskId(row.try_get_by_index(9)?), WorkflowId(wf), now)?));
            }
            claimed.sort_by_key(|(position, _)| *position);
            out.extend(claimed.into_iter().map(|(_, c)| c));
        }
        Ok(out)
    }

    /// The run-phase claims of a batch as one fenced `UPDATE … FROM json_to_recordset` (PostgreSQL), in the
    /// batch's order (highest priority first). A dispatch whose row moved on claims nothing; of one delivered twice
    /// the first claims.
    async fn claim_runs<'a>(
        &self,
        txn: &DatabaseTransaction,
        batch: &'a [Dispatch],
        now: i64,
        lease_us: i64,
    ) -> Result<Vec<(&'a Dispatch, QueryResult)>, Error> {
        let runs: Vec<(usize, &Dispatch)> = batch.iter().enumerate().filter(|(_, d)| d.phase == Phase::Run).collect();
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(serde::Serialize)]
        struct Run {
            id: Uuid,
            fence: i32,
            idx: usize,
        }
        let rows: Vec<Run> = runs.iter().map(|(idx, d)| Run { id: d.task_id.0, fence: d.fence, idx: *idx }).collect();
        let body = serde_json::to_string(&rows).map_err(Error::corrupt)?;
        let sql = format!(
            "UPDATE task SET {RUN_CLAIM_SET} \
             FROM (SELECT DISTINCT ON (id, fence) id, fence, idx FROM json_to_recordset(?::json) \
               AS r(id uuid, fence int, idx int) ORDER BY id, fence, idx) AS v \
             WHERE task.id = ANY(?::uuid[]) AND task.id = v.id AND task.attempts = v.fence \
               AND task.status IN {RUN_STATUSES} AND {WORKFLOW_RUNNING} \
             RETURNING {RUN_CLAIM_COLUMNS}, v.idx"
        );
        let ids = super::bulk::uuid_array(runs.iter().map(|(_, d)| d.task_id.0));
        let values = [run_claim_values(now + lease_us, now), vec![body.into(), ids]].concat();
        let rows = txn.query_all_raw(self.db.stmt(&sql, values)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let idx: i32 = row.try_get_by_index(9)?;
            let d =
                usize::try_from(idx).ok().and_then(|i| batch.get(i)).ok_or_else(|| Error::corrupt("claim index"))?;
            out.push((idx, d, row));
        }
        out.sort_by_key(|(idx, _, _)| *idx);
        Ok(out.into_iter().map(|(_, d, row)| (d, row)).collect())
    }

    /// Results of the named tasks of a workflow, by key.
    async fn results_of(&self, wf: WorkflowId, keys: &[String]) -> Result<serde_json::Map<String, Json>, Error> {
        let mut map = serde_json::Map::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut values: Vec<Value> = vec![wf.0.into()];
            values.extend(chunk.iter().map(|k| Value::from(k.clone())));
            // From the primary: a replica may not have the dependencies' results yet.
            let rows = self
                .db
                .write
                .query_all_raw(self.db.stmt(
                    &format!(
                        "SELECT key, result FROM task WHERE workflow_id = ? AND key IN ({})",
                        placeholders(chunk.len())
                    ),
                    values,
                ))
                .await?;
            for row in rows {
                let key: String = row.try_get_by_index(0)?;
                let result: Option<Json> = row.try_get_by_index(1)?;
                map.insert(key, result.unwrap_or(Json::Null));
            }
        }
        Ok(map)
    }

    /// Extends the leases of attempts still held; returns the tasks whose attempt is no longer held (cancelled,
    /// reaped or finished elsewhere), whose handlers should stop.
    pub async fn heartbeat(&self, held: &[(TaskId, Phase, i32)], lease_us: i64) -> Result<Vec<TaskId>, Error> {
        let until = now_us() + lease_us;
        // Rows locked in id order, the order of the set-based claims and completions (their `id = ANY(…)` walks
        // the primary key): in any other order the two deadlock on PostgreSQL.
        let mut held: Vec<&(TaskId, Phase, i32)> = held.iter().collect();
        held.sort_unstable_by_key(|(id, _, _)| id.0);
        let txn = self.db.write.begin().await?;
        let mut lost = Vec::new();
        for &&(id, phase, attempt) in &held {
            let sql = match phase {
                Phase::Run => "UPDATE task SET lease_until = ? WHERE id = ? AND attempts = ? AND status = 'RUNNING'",
                Phase::Compensate => {
                    "UPDATE task SET lease_until = ? WHERE id = ? AND comp_attempts = ? AND status = 'COMPENSATING' \
                     AND lease_until IS NOT NULL"
                }
            };
            let res = txn.execute_raw(self.db.stmt(sql, vec![until.into(), id.0.into(), attempt.into()])).await?;
            if res.rows_affected() == 0 {
                lost.push(id);
            }
        }
        txn.commit().await?;
        Ok(lost)
    }

    /// Attempts whose lease expired (their worker is gone), as failed outcomes for the reaper to report.
    pub async fn expired_leases(&self, limit: u64) -> Result<Vec<Outcome>, Error> {
        let now = now_us();
        let rows = self
            .db
            .write
            .query_all_raw(self.db.stmt(
                "SELECT id, status, attempts, comp_attempts FROM task \
                 WHERE dispatched_until > 0 AND dispatched_until <= ? AND lease_until < ? LIMIT ?",
                vec![now.into(), now.into(), (limit as i64).into()],
            ))
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get_by_index(1)?;
            let compensate = status == "COMPENSATING";
            out.push(Outcome {
                task_id: TaskId(row.try_get_by_index(0)?),
                phase: if compensate { Phase::Compensate } else { Phase::Run },
                attempt: if compensate { row.try_get_by_index(3)? } else { row.try_get_by_index(2)? },
                kind: OutcomeKind::Failed("worker lost: the attempt's lease expired".to_owned()),
                started_at: None,
            });
        }
        Ok(out)
    }
}

/// A run-phase claim from a row starting with [`RUN_CLAIM_COLUMNS`]; `inputs` holds the dependencies' names until
/// [`Store::fill_inputs`].
fn run_claimed(row: &QueryResult, task_id: TaskId, workflow_id: WorkflowId, now: i64) -> Result<Claimed, Error> {
    let payload: Option<Json> = row.try_get_by_index(2)?;
    Ok(Claimed {
        task_id,
        workflow_id,
        key: row.try_get_by_index(0)?,
        kind: row.try_get_by_index(1)?,
        phase: Phase::Run,
        attempt: row.try_get_by_index(3)?,
        payload: payload.unwrap_or(Json::Null),
        inputs: row.try_get_by_index(6)?,
        idempotency_key: row.try_get_by_index(4)?,
        timeout_ms: row.try_get_by_index(5)?,
        queue_wait_us: (now - row.try_get_by_index::<i64>(7)?).max(0),
        has_dependents: row.try_get_by_index(8)?,
        deferred: false,
    })
}

/// A compensation claim from a row of `key, comp_kind, compensation, comp_attempts, idempotency_key, timeout_ms,
/// payload, result`: the handler gets the compensation's payload, and the original payload and result as inputs.
fn compensation_claimed(row: &QueryResult, d: &Dispatch) -> Result<Claimed, Error> {
    let compensation: Option<Json> = row.try_get_by_index(2)?;
    let original_payload: Option<Json> = row.try_get_by_index(6)?;
    let original_result: Option<Json> = row.try_get_by_index(7)?;
    let kind: Option<String> = row.try_get_by_index(1)?;
    Ok(Claimed {
        task_id: d.task_id,
        workflow_id: d.workflow_id,
        key: row.try_get_by_index(0)?,
        kind: kind.unwrap_or_default(),
        phase: Phase::Compensate,
        attempt: row.try_get_by_index(3)?,
        payload: compensation.and_then(|c| c.get("payload").cloned()).unwrap_or(Json::Null),
        inputs: serde_json::json!({
            "payload": original_payload.unwrap_or(Json::Null),
            "result": original_result.unwrap_or(Json::Null),
        }),
        idempotency_key: row.try_get_by_index(4)?,
        timeout_ms: row.try_get_by_index(5)?,
        queue_wait_us: 0,
        has_dependents: false,
        deferred: false,
    })
}

/// TASK_STARTED of a claimed run attempt.
pub(crate) fn started_event(c: &Claimed) -> NewEvent {
    started(c.key.clone(), c.attempt)
}

/// TASK_STARTED of attempt `attempt` of task `key`.
pub(crate) fn started(key: String, attempt: i32) -> NewEvent {
    NewEvent::task(EventType::TaskStarted, key).with_data(serde_json::json!({ "attempt": attempt }))
}
