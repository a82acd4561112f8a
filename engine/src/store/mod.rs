//! The SeaORM repository: every SQL statement of taskorch lives under this module. Writes that belong together
//! (a state change, its events, the tasks it makes ready) share one transaction.

mod auth;
mod bulk;
mod complete;
mod exec;
mod lifecycle;
mod read;
mod report;
mod submit;
#[cfg(test)]
mod tests;

use sea_orm::{ConnectionTrait, DbErr, EntityTrait};
use taskorch_domain::NewEvent;
use taskorch_entity::event_chunk;
use uuid::Uuid;

pub(crate) use auth::KeyWithHash;
pub use exec::{Claimed, Continuation, Outcome, OutcomeKind, Report};
pub use read::{ChunkHead, TaskStats};
pub use submit::{DispatchAtSubmit, NewWorkflow, SubmitOutcome};

use crate::db::Database;
use crate::error::Error;
use crate::model::EventRecord;

/// `task.dispatched_until` of a task due for dispatch (once its `available_at` comes).
pub(crate) const DUE: i64 = 0;
/// `task.dispatched_until` of a task in no queue: waiting for its dependencies, or finished. Other values (`> 0`)
/// are a dispatch's visibility or, for a leased attempt, when the reaper looks at the row again — never later than
/// the lease, so the reaper finds expired leases through the same index (`task_dispatched`, migration 8). SQL
/// statements write these values as literals (`0`, `-1`).
pub(crate) const IN_NO_QUEUE: i64 = -1;

/// Repository over the database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Appends events to a workflow, numbering them after its last sequence, inside the caller's transaction.
    async fn append_events<C: ConnectionTrait>(
        &self,
        conn: &C,
        workflow_id: Uuid,
        events: Vec<NewEvent>,
        at: i64,
    ) -> Result<Vec<EventRecord>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let row = conn
            .query_one_raw(self.db.stmt(
                "UPDATE workflow SET last_sequence = last_sequence + ?, updated_at = ? WHERE id = ? \
                 RETURNING last_sequence, name, tenant_id",
                vec![(events.len() as i64).into(), at.into(), workflow_id.into()],
            ))
            .await?
            .ok_or_else(|| Error::corrupt(format!("workflow {workflow_id} vanished")))?;
        let last: i64 = row.try_get_by_index(0)?;
        let name: String = row.try_get_by_index(1)?;
        let tenant_id = taskorch_domain::TenantId(row.try_get_by_index(2)?);
        let first = last - events.len() as i64 + 1;
        let records: Vec<EventRecord> = numbered(workflow_id, &name, tenant_id, first, events, at).collect();
        insert_events(conn, &records, at).await?;
        Ok(records)
    }
}

impl Store {
    /// Locks workflow rows (in id order, as every transaction does) for the rest of the transaction, on PostgreSQL:
    /// a decision that reads the workflow's state (is it still running? are the saga's other compensations done?)
    /// then sees every change committed before it and none after it. Without the lock two transactions each saw
    /// the other's change as not yet made: a dependent was claimed after a pause had committed, and two branch
    /// compensations ending at once each left the root's compensation to the other. SQLite runs one writing
    /// transaction at a time.
    pub(crate) async fn lock_workflows<C: ConnectionTrait>(&self, conn: &C, ids: &[Uuid]) -> Result<(), Error> {
        if ids.is_empty() || self.db.backend != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        conn.query_all_raw(self.db.stmt(
            "SELECT id FROM workflow WHERE id = ANY(?::uuid[]) ORDER BY id FOR UPDATE",
            vec![bulk::uuid_array(ids.iter().copied())],
        ))
        .await?;
        Ok(())
    }
}

/// Events and completed-task counts of a batch, per workflow, in the order they happened.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    order: Vec<Uuid>,
    events: std::collections::HashMap<Uuid, Vec<NewEvent>>,
    completed: std::collections::HashMap<Uuid, i32>,
}

impl Pending {
    fn touch(&mut self, wf: Uuid) -> &mut Vec<NewEvent> {
        if !self.events.contains_key(&wf) {
            self.order.push(wf);
        }
        self.events.entry(wf).or_default()
    }

    pub(crate) fn extend(&mut self, wf: Uuid, events: impl IntoIterator<Item = NewEvent>) {
        self.touch(wf).extend(events);
    }

    pub(crate) fn complete(&mut self, wf: Uuid) {
        self.touch(wf);
        *self.completed.entry(wf).or_default() += 1;
    }
}

impl Store {
    /// Writes a batch's events and counters: the workflows' sequence numbers and completed counts (one `UPDATE` per
    /// workflow, or one for all of them on PostgreSQL), each workflow's completion when every task is done, and one
    /// multi-row `INSERT` for all events.
    pub(crate) async fn flush<C: ConnectionTrait>(
        &self,
        conn: &C,
        mut pending: Pending,
        now: i64,
    ) -> Result<Vec<EventRecord>, Error> {
        let mut records = Vec::new();
        // Workflow rows are locked in id order by every transaction, so concurrent batches never deadlock on them.
        let mut order = std::mem::take(&mut pending.order);
        order.sort_unstable();
        let work: Vec<(Uuid, Vec<NewEvent>, i32)> = order
            .into_iter()
            .map(|wf| {
                let events = pending.events.remove(&wf).unwrap_or_default();
                (wf, events, pending.completed.get(&wf).copied().unwrap_or(0))
            })
            .filter(|(_, events, done)| !events.is_empty() || *done > 0)
            .collect();
        let bumped: Vec<(i64, i32)> = work.iter().map(|(_, e, done)| (e.len() as i64, *done)).collect();
        let mut rows = self.bump_workflows(conn, &work.iter().map(|w| w.0).collect::<Vec<_>>(), &bumped, now).await?;
        let mut finished = Vec::new();
        for (wf, mut events, done) in work {
            let row = rows.remove(&wf).ok_or_else(|| Error::corrupt(format!("workflow {wf} vanished")))?;
            let mut last: i64 = row.try_get_by_index(1)?;
            let first = last - events.len() as i64 + 1;
            let (completed, total): (i32, i32) = (row.try_get_by_index(2)?, row.try_get_by_index(3)?);
            let status: taskorch_domain::WorkflowStatus =
                row.try_get_by_index::<String>(4)?.parse().map_err(Error::corrupt)?;
            let name: String = row.try_get_by_index(5)?;
            let tenant_id = taskorch_domain::TenantId(row.try_get_by_index(6)?);
            if done > 0
                && completed == total
                && matches!(status, taskorch_domain::WorkflowStatus::Running | taskorch_domain::WorkflowStatus::Paused)
            {
                status
                    .transition(taskorch_domain::WorkflowStatus::Completed)
                    .map_err(|_| Error::InvalidState { current: status, action: "completed" })?;
                finished.push(wf);
                events.push(NewEvent::workflow(taskorch_domain::EventType::WorkflowCompleted));
                last += 1;
            }
            debug_assert_eq!(first + events.len() as i64 - 1, last);
            records.extend(numbered(wf, &name, tenant_id, first, events, now));
        }
        self.complete_workflows(conn, &finished, now).await?;
        insert_events(conn, &records, now).await?;
        Ok(records)
    }

    /// Completes the workflows `ids` (all running or paused, their rows locked by this transaction) in one
    /// statement, with the sequence number of their WORKFLOW_COMPLETED.
    async fn complete_workflows<C: ConnectionTrait>(&self, conn: &C, ids: &[Uuid], now: i64) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut values: Vec<sea_orm::Value> = vec![now.into(), now.into()];
        let which = if self.db.backend == sea_orm::DbBackend::Postgres {
            values.push(bulk::uuid_array(ids.iter().copied()));
            "id = ANY(?::uuid[])".to_owned()
        } else {
            values.extend(ids.iter().map(|id| sea_orm::Value::from(*id)));
            format!("id IN ({})", crate::db::placeholders(ids.len()))
        };
        let done = conn
            .execute_raw(self.db.stmt(
                &format!(
                    "UPDATE workflow SET status = 'COMPLETED', finished_at = ?, updated_at = ?, \
                       last_sequence = last_sequence + 1 WHERE {which} AND status IN ('RUNNING', 'PAUSED')"
                ),
                values,
            ))
            .await?;
        if done.rows_affected() != ids.len() as u64 {
            return Err(Error::corrupt("a completed workflow changed status under its lock"));
        }
        Ok(())
    }

    /// Adds `bumps[i]` = (events, completed tasks) to workflow `ids[i]` (sorted); returns each workflow's row after
    /// the update: `id, last_sequence, completed_count, task_count, status, name, tenant_id`.
    async fn bump_workflows<C: ConnectionTrait>(
        &self,
        conn: &C,
        ids: &[Uuid],
        bumps: &[(i64, i32)],
        now: i64,
    ) -> Result<std::collections::HashMap<Uuid, sea_orm::QueryResult>, Error> {
        const RETURNING: &str = "workflow.id, workflow.last_sequence, workflow.completed_count, workflow.task_count, \
                                 workflow.status, workflow.name, workflow.tenant_id";
        let mut rows = std::collections::HashMap::with_capacity(ids.len());
        if self.db.backend == sea_orm::DbBackend::Postgres && ids.len() > 1 {
            // One statement for every workflow of the batch (a batch of independent tasks spans many). The index
            // scan over the sorted id array locks the rows in id order.
            #[derive(serde::Serialize)]
            struct Bump {
                id: Uuid,
                n: i64,
                done: i32,
            }
            let values: Vec<Bump> =
                ids.iter().zip(bumps).map(|(id, (n, done))| Bump { id: *id, n: *n, done: *done }).collect();
            let sql = format!(
                "UPDATE workflow SET last_sequence = workflow.last_sequence + v.n, \
                   completed_count = workflow.completed_count + v.done, updated_at = ? \
                 FROM json_to_recordset(?::json) AS v(id uuid, n bigint, done int) \
                 WHERE workflow.id = ANY(?::uuid[]) AND workflow.id = v.id RETURNING {RETURNING}"
            );
            let args = vec![
                now.into(),
                serde_json::to_string(&values).map_err(Error::corrupt)?.into(),
                bulk::uuid_array(ids.iter().copied()),
            ];
            for row in conn.query_all_raw(self.db.stmt(&sql, args)).await? {
                rows.insert(row.try_get_by_index::<Uuid>(0)?, row);
            }
            return Ok(rows);
        }
        for (id, (n, done)) in ids.iter().zip(bumps) {
            let row = conn
                .query_one_raw(self.db.stmt(
                    &format!(
                        "UPDATE workflow SET last_sequence = last_sequence + ?, completed_count = completed_count + ?, \
                           updated_at = ? WHERE id = ? RETURNING {RETURNING}"
                    ),
                    vec![(*n).into(), (*done).into(), now.into(), (*id).into()],
                ))
                .await?;
            if let Some(row) = row {
                rows.insert(*id, row);
            }
        }
        Ok(rows)
    }
}

/// `events` of workflow `wf` as records numbered from `first`, all at `at`.
fn numbered<'a>(
    wf: Uuid,
    name: &'a str,
    tenant_id: taskorch_domain::TenantId,
    first: i64,
    events: Vec<NewEvent>,
    at: i64,
) -> impl Iterator<Item = EventRecord> + 'a {
    let at = crate::time::to_datetime(at);
    events.into_iter().enumerate().map(move |(i, e)| EventRecord {
        workflow_id: taskorch_domain::WorkflowId(wf),
        sequence: first + i as i64,
        event_type: e.event_type,
        task_key: e.task_key,
        at,
        data: e.data,
        workflow_name: name.to_owned(),
        tenant_id,
    })
}

/// The most events one chunk row holds: a 10,000-task submission writes 40 rows, and a reader replaying from the
/// middle of a workflow parses at most this many events it does not need.
const CHUNK_EVENTS: usize = 256;

/// Inserts events as chunk rows (`event_chunk`): each run of one workflow's consecutive events, at most
/// [`CHUNK_EVENTS`] to a row. One `unnest` of array literals on PostgreSQL (`bulk`), multi-row chunks elsewhere.
async fn insert_events<C: ConnectionTrait>(conn: &C, records: &[EventRecord], at: i64) -> Result<(), DbErr> {
    let chunks = chunks(records, at)?;
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        return bulk::insert_rows(conn, "event_chunk", &bulk::EVENT_CHUNK, chunks.iter().map(bulk::event_chunk_cells))
            .await;
    }
    for part in chunks.chunks(500) {
        let models = part.iter().map(|c| event_chunk::ActiveModel {
            workflow_id: sea_orm::Set(c.workflow_id),
            last_sequence: sea_orm::Set(c.last_sequence),
            first_sequence: sea_orm::Set(c.first_sequence),
            at: sea_orm::Set(c.at),
            events: sea_orm::Set(c.events.clone()),
        });
        event_chunk::Entity::insert_many(models).exec_without_returning(conn).await?;
    }
    Ok(())
}

/// Events grouped into chunk rows: runs of one workflow's consecutive sequence numbers, in the records' order.
fn chunks(records: &[EventRecord], at: i64) -> Result<Vec<event_chunk::Model>, DbErr> {
    let mut out = Vec::new();
    let mut rest = records;
    while let Some(first) = rest.first() {
        let run = rest
            .iter()
            .take(CHUNK_EVENTS)
            .enumerate()
            .take_while(|(i, r)| r.workflow_id == first.workflow_id && r.sequence == first.sequence + *i as i64)
            .count();
        let (head, tail) = rest.split_at(run);
        let cells: Vec<(&str, &Option<String>, &serde_json::Value)> =
            head.iter().map(|r| (r.event_type.as_str(), &r.task_key, &r.data)).collect();
        out.push(event_chunk::Model {
            workflow_id: first.workflow_id.0,
            last_sequence: first.sequence + run as i64 - 1,
            first_sequence: first.sequence,
            at,
            events: serde_json::to_string(&cells).map_err(|e| DbErr::Custom(format!("events: {e}")))?,
        });
        rest = tail;
    }
    Ok(out)
}

/// Task keys from rows of `… RETURNING key, position`, in definition order (RETURNING has no order of its own).
fn keys_in_order(rows: &[sea_orm::QueryResult]) -> Result<Vec<String>, DbErr> {
    let mut keyed: Vec<(i32, String)> =
        rows.iter().map(|r| Ok((r.try_get_by_index(1)?, r.try_get_by_index(0)?))).collect::<Result<_, DbErr>>()?;
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, k)| k).collect())
}

/// Whether PostgreSQL aborted the transaction to break a deadlock (SQLSTATE 40P01).
fn is_deadlock(err: &DbErr) -> bool {
    err.to_string().contains("deadlock detected")
}

/// Whether an error is a unique-constraint violation.
fn is_unique_violation(err: &DbErr) -> bool {
    let text = err.to_string().to_lowercase();
    text.contains("unique") || text.contains("duplicate key")
}
