//! Completions as the report writes them: the bookkeeping every completion shares, and PostgreSQL's set-based
//! completion of a whole batch, which counts the dependents down in the same statement.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseTransaction, QueryResult};
use serde_json::{Value as Json, json};
use taskorch_domain::{EventType, NewEvent};
use uuid::Uuid;

use super::Store;
use super::exec::{Outcome, OutcomeKind, Report, started};
use super::report::still_waiting;
use crate::error::Error;

/// What a batch records for one completion: its event, then the queueing of the dependents it made ready (`ready`,
/// in definition order), and the workflow's count. The result of a task with dependents is kept for the inputs of
/// the ones the report continues (no read after the commit).
pub(super) fn record_completion(
    report: &mut Report,
    wf: Uuid,
    key: String,
    attempt: i32,
    result: Json,
    has_dependents: bool,
    ready: Vec<String>,
) {
    let mut events = Vec::with_capacity(1 + ready.len());
    events.push(NewEvent::task(EventType::TaskCompleted, key.clone()).with_data(json!({ "attempt": attempt })));
    if has_dependents {
        report.results.insert((wf, key), result);
    }
    report.made_ready += ready.len();
    report.ready.extend(ready.iter().map(|k| (wf, k.clone())));
    events.extend(ready.into_iter().map(|k| NewEvent::task(EventType::TaskQueued, k)));
    // The workflow's counters, its completion and the events are written once per batch (see `Store::flush`).
    report.pending.complete(wf);
    report.pending.extend(wf, events);
}

impl Store {
    /// Completions as one fenced statement (PostgreSQL): an `UPDATE … FROM json_to_recordset` of the tasks and, fed
    /// by what it returns, one `UPDATE` of their dependents that counts each down by the number of its dependencies
    /// completed here and queues those with none left. Stale outcomes are counted. Of two outcomes of one task, the
    /// one of the attempt that holds it completes it (the first, if both are). Completions of peeked attempts (all
    /// with `started_at`, or none) are written with their claims: one row version, TASK_STARTED and TASK_COMPLETED.
    /// A dependent is queued right after the last of its dependencies completed in the batch, as one completion at
    /// a time would have queued it.
    pub(super) async fn complete_many(
        &self,
        txn: &DatabaseTransaction,
        outcomes: Vec<Outcome>,
        now: i64,
        report: &mut Report,
    ) -> Result<(), Error> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let peeked = outcomes[0].started_at.is_some();
        let (mut tasks, mut attempts, mut results, mut starts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for o in outcomes {
            tasks.push(o.task_id.0);
            attempts.push(o.attempt);
            starts.push(o.started_at.unwrap_or(now));
            results.push(match o.kind {
                OutcomeKind::Completed(result) => result,
                _ => Json::Null,
            });
        }
        // The record set, serialised straight from the results (no copy of them into a JSON tree first).
        #[derive(serde::Serialize)]
        struct Row<'a> {
            id: Uuid,
            attempt: i32,
            idx: usize,
            started: i64,
            // A missing key is SQL NULL (no result), as the one-row path writes it.
            #[serde(skip_serializing_if = "Json::is_null")]
            result: &'a Json,
        }
        let rows: Vec<Row<'_>> = (0..tasks.len())
            .map(|idx| Row { id: tasks[idx], attempt: attempts[idx], idx, started: starts[idx], result: &results[idx] })
            .collect();
        let rows = serde_json::to_string(&rows).map_err(Error::corrupt)?;
        // A peeked attempt's row is still waiting (its attempt is the next one); a claimed one's is running.
        let (claim, held) = if peeked {
            (
                "attempts = task.attempts + 1, started_at = v.started,",
                format!("task.attempts = v.attempt - 1 AND {}", still_waiting()),
            )
        } else {
            ("", "task.attempts = v.attempt AND task.status = 'RUNNING'".to_owned())
        };
        let mut values = vec![rows.into(), now.into()];
        // `id = ANY(…)` keeps the planner on the primary key when it would rather join through the workflows; the
        // peeked statement has no such join (its workflow check is a scalar subquery), and there the array made
        // things worse: with the record set as the outer side of a nested loop, every probe walked the whole array
        // (auto_explain on the bench: 60–280 ms per batch instead of 2–4).
        // One task (a chain's hop) is named as such: with an array the generic plan's estimate (ten elements) loses
        // to the custom one's, so PostgreSQL planned the statement again at every hop (0.2 ms of about 1.2).
        let by_id = if peeked {
            ""
        } else if let [id] = tasks[..] {
            values.push(id.into());
            "task.id = ? AND "
        } else {
            values.push(super::bulk::uuid_array(tasks.iter().copied()));
            "task.id = ANY(?::uuid[]) AND "
        };
        values.extend([now.into(), now.into()]);
        // `deps`: per dependent, how many of its dependencies complete here and the last of them (by batch order).
        // `pending_deps` on the right of the second update is the value before it.
        let sql = format!(
            "WITH v AS (SELECT DISTINCT ON (id, attempt) id, attempt, started, result, idx \
               FROM json_to_recordset(?::json) AS r(id uuid, attempt int, started bigint, result json, idx int) \
               ORDER BY id, attempt, idx), \
             done AS (UPDATE task SET status = 'COMPLETED', {claim} result = v.result, error = NULL, \
               lease_until = NULL, dispatched_until = -1, finished_at = ? \
               FROM v WHERE {by_id}task.id = v.id AND {held} \
               RETURNING task.workflow_id, task.key, task.dependents, v.idx), \
             deps AS (SELECT d.workflow_id, k.key, count(*)::int AS n, max(d.idx) AS last \
               FROM done d CROSS JOIN LATERAL json_array_elements_text(d.dependents) AS k(key) \
               GROUP BY d.workflow_id, k.key), \
             touched AS (UPDATE task SET pending_deps = task.pending_deps - deps.n, \
               status = CASE WHEN task.pending_deps = deps.n THEN 'QUEUED' ELSE task.status END, \
               queued_at = CASE WHEN task.pending_deps = deps.n THEN ? ELSE task.queued_at END, \
               available_at = CASE WHEN task.pending_deps = deps.n THEN ? ELSE task.available_at END, \
               dispatched_until = CASE WHEN task.pending_deps = deps.n THEN 0 ELSE task.dispatched_until END \
               FROM deps WHERE task.workflow_id = deps.workflow_id AND task.key = deps.key \
                 AND task.status = 'PENDING' \
               RETURNING task.key, deps.last, task.position, task.status = 'QUEUED' AS ready) \
             SELECT workflow_id, key, dependents, idx, 0, false FROM done \
             UNION ALL SELECT NULL, key, NULL, last, position, true FROM touched WHERE ready"
        );
        let rows = txn.query_all_raw(self.db.stmt(&sql, values)).await?;
        let mut done = Vec::new();
        // The dependents made ready, by the batch index of the completion that queues them.
        let mut queued: HashMap<i32, Vec<(i32, String)>> = HashMap::new();
        for row in rows {
            let idx: i32 = row.try_get_by_index(3)?;
            if row.try_get_by_index::<bool>(5)? {
                queued.entry(idx).or_default().push((row.try_get_by_index(4)?, row.try_get_by_index(1)?));
            } else {
                done.push((idx, row));
            }
        }
        report.stale += attempts.len() - done.len();
        // In the order the outcomes were reported (RETURNING has no order of its own).
        done.sort_by_key(|(idx, _)| *idx);
        for (idx, row) in done {
            let i = usize::try_from(idx).ok().filter(|i| *i < attempts.len());
            let i = i.ok_or_else(|| Error::corrupt("completion index"))?;
            let (wf, key, dependents) = completion_row(&row)?;
            if peeked {
                report.pending.extend(wf, [started(key.clone(), attempts[i])]);
            }
            let mut ready = queued.remove(&idx).unwrap_or_default();
            ready.sort_unstable();
            let ready = ready.into_iter().map(|(_, k)| k).collect();
            let result = results.get_mut(i).map(std::mem::take).unwrap_or_default();
            record_completion(report, wf, key, attempts[i], result, dependents, ready);
        }
        Ok(())
    }
}

/// A completed row's workflow, key and whether it has dependents, from a row starting with `workflow_id, key,
/// dependents`.
fn completion_row(row: &QueryResult) -> Result<(Uuid, String, bool), Error> {
    let dependents: Json = row.try_get_by_index(2)?;
    Ok((row.try_get_by_index(0)?, row.try_get_by_index(1)?, dependents.as_array().is_some_and(|d| !d.is_empty())))
}
