//! Execution: fetching due tasks for dispatch, fenced claims, heartbeats and the reaper's scan.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, TransactionTrait, Value};
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
}

/// Lets the worker that reports a batch claim, in the same transaction, up to `max` of the dependents its
/// completions made ready (of the `kinds` it serves), and run them at once: a dependency hop is then one commit,
/// not a completion, a dispatch through the queue and a claim. `max` is the worker's free slots; zero turns it off.
#[derive(Debug, Clone, Default)]
pub struct Continuation {
    pub max: usize,
    pub kinds: Vec<String>,
}

const RUN_STATUSES: &str = "('QUEUED', 'RETRYING')";
/// What a run-phase claim returns, by index: key, kind, payload, attempts, idempotency_key, timeout_ms, depends_on,
/// available_at, whether it has dependents.
const RUN_CLAIM_COLUMNS: &str = "task.key, task.kind, task.payload, task.attempts, task.idempotency_key, task.timeout_ms, task.depends_on, \
     task.available_at, json_array_length(task.dependents) > 0";

impl Store {
    /// Marks up to `limit` due tasks as dispatched for `visibility_us` and returns them, highest priority first.
    /// A dispatched task that is still unclaimed when the visibility runs out is dispatched again.
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
        // Dispatches whose visibility ran out (never claimed: lost message, dead consumer) are due again.
        self.db
            .write
            .execute_raw(self.db.stmt(
                "UPDATE task SET dispatched_until = 0 WHERE status IN ('QUEUED', 'RETRYING', 'COMPENSATING') \
                 AND dispatched_until > 0 AND dispatched_until <= ? AND lease_until IS NULL",
                vec![now.into()],
            ))
            .await?;
        let lock = if self.db.backend == DbBackend::Postgres { " FOR UPDATE OF t SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE task SET dispatched_until = ? WHERE id IN (\
               SELECT t.id FROM task t JOIN workflow w ON w.id = t.workflow_id \
               WHERE t.status IN ('QUEUED', 'RETRYING', 'COMPENSATING') AND t.lease_until IS NULL \
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

    /// Makes dispatched tasks due again at once.
    pub async fn undispatch(&self, ids: &[TaskId]) -> Result<(), Error> {
        for chunk in ids.chunks(500) {
            let values: Vec<Value> = chunk.iter().map(|id| id.0.into()).collect();
            self.db
                .write
                .execute_raw(self.db.stmt(
                    &format!("UPDATE task SET dispatched_until = 0 WHERE id IN ({})", placeholders(chunk.len())),
                    values,
                ))
                .await?;
        }
        Ok(())
    }

    /// Claims dispatched tasks with fenced conditional updates, in one transaction. A duplicate or stale message
    /// (the row moved on) claims nothing and is dropped.
    pub async fn claim(&self, batch: &[Dispatch], lease_us: i64) -> Result<(Vec<Claimed>, Vec<EventRecord>), Error> {
        let now = now_us();
        let txn = self.db.write.begin().await?;
        let mut claimed = Vec::with_capacity(batch.len());
        let mut started: HashMap<Uuid, Vec<NewEvent>> = HashMap::new();
        // On PostgreSQL the run-phase claims of the batch are one statement; elsewhere one fenced update each.
        let set_based = self.db.backend == DbBackend::Postgres;
        let mut rows = if set_based { self.claim_runs(&txn, batch, now, lease_us).await? } else { Vec::new() };
        for d in batch.iter().filter(|d| !(set_based && d.phase == Phase::Run)) {
            let row = match d.phase {
                Phase::Run => {
                    txn.query_one_raw(self.db.stmt(
                        &format!(
                            "UPDATE task SET status = 'RUNNING', attempts = attempts + 1, lease_until = ?, \
                               started_at = ?, error = NULL \
                             WHERE id = ? AND attempts = ? AND status IN {RUN_STATUSES} AND EXISTS (\
                               SELECT 1 FROM workflow w WHERE w.id = task.workflow_id AND w.status = 'RUNNING') \
                             RETURNING {RUN_CLAIM_COLUMNS}"
                        ),
                        vec![(now + lease_us).into(), now.into(), d.task_id.0.into(), d.fence.into()],
                    ))
                    .await?
                }
                Phase::Compensate => {
                    txn.query_one_raw(self.db.stmt(
                        "UPDATE task SET lease_until = ?, comp_attempts = comp_attempts + 1 \
                         WHERE id = ? AND comp_attempts = ? AND status = 'COMPENSATING' AND lease_until IS NULL \
                         RETURNING key, comp_kind, compensation, comp_attempts, idempotency_key, timeout_ms, \
                           payload, result",
                        vec![(now + lease_us).into(), d.task_id.0.into(), d.fence.into()],
                    ))
                    .await?
                }
            };
            if let Some(row) = row {
                rows.push((d, row));
            }
        }
        for (d, row) in rows {
            let key: String = row.try_get_by_index(0)?;
            let attempt: i32 = row.try_get_by_index(3)?;
            let (kind, payload, inputs) = match d.phase {
                Phase::Run => {
                    let deps: Json = row.try_get_by_index(6)?;
                    let payload: Option<Json> = row.try_get_by_index(2)?;
                    (row.try_get_by_index::<String>(1)?, payload.unwrap_or(Json::Null), deps)
                }
                Phase::Compensate => {
                    let comp: Option<Json> = row.try_get_by_index(2)?;
                    let comp = comp.unwrap_or(Json::Null);
                    let original_payload: Option<Json> = row.try_get_by_index(6)?;
                    let original_result: Option<Json> = row.try_get_by_index(7)?;
                    let inputs = serde_json::json!({
                        "payload": original_payload.unwrap_or(Json::Null),
                        "result": original_result.unwrap_or(Json::Null),
                    });
                    let kind: Option<String> = row.try_get_by_index(1)?;
                    (kind.unwrap_or_default(), comp.get("payload").cloned().unwrap_or(Json::Null), inputs)
                }
            };
            if d.phase == Phase::Run {
                started.entry(d.workflow_id.0).or_default().push(
                    NewEvent::task(EventType::TaskStarted, key.clone())
                        .with_data(serde_json::json!({ "attempt": attempt })),
                );
            }
            claimed.push(Claimed {
                task_id: d.task_id,
                workflow_id: d.workflow_id,
                key,
                kind,
                phase: d.phase,
                attempt,
                payload,
                inputs,
                idempotency_key: row.try_get_by_index(4)?,
                timeout_ms: row.try_get_by_index(5)?,
                queue_wait_us: match d.phase {
                    Phase::Run => (now - row.try_get_by_index::<i64>(7)?).max(0),
                    Phase::Compensate => 0,
                },
                has_dependents: match d.phase {
                    Phase::Run => row.try_get_by_index(8)?,
                    Phase::Compensate => false,
                },
            });
        }
        let mut pending = Pending::default();
        for (wf, evs) in started {
            pending.extend(wf, evs);
        }
        let events = self.flush(&txn, pending, now).await?;
        txn.commit().await?;
        self.fill_inputs(&mut claimed).await?;
        Ok((claimed, events))
    }

    /// Inputs: the results of each run-phase task's dependencies (claimed with their names as `inputs`), read after
    /// the claim committed.
    pub(crate) async fn fill_inputs(&self, claimed: &mut [Claimed]) -> Result<(), Error> {
        for c in claimed.iter_mut().filter(|c| c.phase == Phase::Run) {
            let deps: Vec<String> = serde_json::from_value(std::mem::take(&mut c.inputs)).map_err(Error::corrupt)?;
            c.inputs = self.results_of(c.workflow_id, &deps).await?;
        }
        Ok(())
    }

    /// The continuation of a report (see [`Continuation`]): claims up to `cont.max` of the ready dependents, in
    /// the reporting transaction. Inputs are the dependencies' names until [`Store::fill_inputs`].
    pub(crate) async fn claim_ready(
        &self,
        txn: &DatabaseTransaction,
        ready: Vec<(Uuid, String)>,
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
            let mut values: Vec<Value> = vec![(now + lease_us).into(), now.into(), wf.into()];
            values.extend(keys.iter().map(|k| Value::from(k.clone())));
            values.extend(cont.kinds.iter().map(|k| Value::from(k.clone())));
            let rows = txn
                .query_all_raw(self.db.stmt(
                    &format!(
                        "UPDATE task SET status = 'RUNNING', attempts = attempts + 1, lease_until = ?, started_at = ?, \
                           error = NULL \
                         WHERE workflow_id = ? AND key IN ({}) AND status = 'QUEUED' AND kind IN ({}) AND EXISTS (\
                           SELECT 1 FROM workflow w WHERE w.id = task.workflow_id AND w.status = 'RUNNING') \
                         RETURNING {RUN_CLAIM_COLUMNS}, task.id, task.position",
                        placeholders(keys.len()),
                        placeholders(cont.kinds.len())
                    ),
                    values,
                ))
                .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let payload: Option<Json> = row.try_get_by_index(2)?;
                let position: i32 = row.try_get_by_index(10)?;
                claimed.push((
                    position,
                    Claimed {
                        task_id: TaskId(row.try_get_by_index(9)?),
                        workflow_id: WorkflowId(wf),
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
                    },
                ));
            }
            claimed.sort_by_key(|(position, _)| *position);
            out.extend(claimed.into_iter().map(|(_, c)| c));
        }
        Ok(out)
    }

    /// The run-phase claims of a batch as one fenced `UPDATE … FROM json_to_recordset` (PostgreSQL), in the
    /// batch's order (highest priority first). A dispatch whose row moved on claims nothing.
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
        let body = Json::Array(
            runs.iter().map(|(i, d)| serde_json::json!({ "id": d.task_id.0, "fence": d.fence, "idx": i })).collect(),
        )
        .to_string();
        let sql = format!(
            "UPDATE task SET status = 'RUNNING', attempts = task.attempts + 1, lease_until = $1, started_at = $2, \
               error = NULL \
             FROM (SELECT DISTINCT ON (id) id, fence, idx FROM json_to_recordset($3::json) AS r(id uuid, fence int, \
               idx int) ORDER BY id, idx) AS v \
             WHERE task.id = ANY($4::uuid[]) AND task.id = v.id AND task.attempts = v.fence \
               AND task.status IN {RUN_STATUSES} AND EXISTS (\
               SELECT 1 FROM workflow w WHERE w.id = task.workflow_id AND w.status = 'RUNNING') \
             RETURNING {RUN_CLAIM_COLUMNS}, v.idx"
        );
        let ids = super::bulk::uuid_array(runs.iter().map(|(_, d)| d.task_id.0));
        let values: [Value; 4] = [(now + lease_us).into(), now.into(), body.into(), ids.into()];
        let rows = txn.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
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

    /// Results of the named tasks of a workflow, as a JSON object by key.
    async fn results_of(&self, wf: WorkflowId, keys: &[String]) -> Result<Json, Error> {
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
        Ok(Json::Object(map))
    }

    /// Extends the leases of attempts still held; returns the tasks whose attempt is no longer held (cancelled,
    /// reaped or finished elsewhere), whose handlers should stop.
    pub async fn heartbeat(&self, held: &[(TaskId, Phase, i32)], lease_us: i64) -> Result<Vec<TaskId>, Error> {
        let until = now_us() + lease_us;
        let txn = self.db.write.begin().await?;
        let mut lost = Vec::new();
        for (id, phase, attempt) in held {
            let sql = match phase {
                Phase::Run => "UPDATE task SET lease_until = ? WHERE id = ? AND attempts = ? AND status = 'RUNNING'",
                Phase::Compensate => {
                    "UPDATE task SET lease_until = ? WHERE id = ? AND comp_attempts = ? AND status = 'COMPENSATING' \
                     AND lease_until IS NOT NULL"
                }
            };
            let res = txn.execute_raw(self.db.stmt(sql, vec![until.into(), id.0.into(), (*attempt).into()])).await?;
            if res.rows_affected() == 0 {
                lost.push(*id);
            }
        }
        txn.commit().await?;
        Ok(lost)
    }

    /// Attempts whose lease expired (their worker is gone), as failed outcomes for the reaper to report.
    pub async fn expired_leases(&self, limit: u64) -> Result<Vec<Outcome>, Error> {
        let rows = self
            .db
            .write
            .query_all_raw(self.db.stmt(
                "SELECT id, status, attempts, comp_attempts FROM task \
                 WHERE lease_until IS NOT NULL AND lease_until < ? LIMIT ?",
                vec![now_us().into(), (limit as i64).into()],
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
            });
        }
        Ok(out)
    }
}
