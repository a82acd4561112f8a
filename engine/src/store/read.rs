//! Reads. Lists page by id (ids are time-ordered UUIDv7), newest first.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use taskorch_domain::WorkflowId;
use taskorch_entity::{event_chunk, task, workflow};

use super::Store;

/// Where a chunk of events stands in the log (see [`Store::chunks_written_after`]).
#[derive(Debug, Clone, Copy)]
pub struct ChunkHead {
    /// Its place in the order chunks were written.
    pub rowid: i64,
    pub workflow: WorkflowId,
    pub first_sequence: i64,
    pub last_sequence: i64,
    /// When it was written (µs).
    pub at: i64,
}

/// Counts for metrics.
#[derive(Debug, Default)]
pub struct TaskStats {
    pub by_status: Vec<(String, i64)>,
    pub backlog: i64,
}
use crate::error::Error;
use crate::model::{EventRecord, TaskRecord, WorkflowFilter, WorkflowPage, WorkflowRecord};

impl Store {
    pub(crate) async fn workflow_row(&self, id: WorkflowId) -> Result<Option<workflow::Model>, Error> {
        Ok(workflow::Entity::find_by_id(id.0).one(&self.db.read).await?)
    }

    /// One workflow.
    pub async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>, Error> {
        self.workflow_row(id).await?.map(TryInto::try_into).transpose()
    }

    /// Several workflows by id (for batch loading).
    pub async fn workflows_by_ids(&self, ids: &[WorkflowId]) -> Result<Vec<WorkflowRecord>, Error> {
        let rows = workflow::Entity::find()
            .filter(workflow::Column::Id.is_in(ids.iter().map(|i| i.0)))
            .all(&self.db.read)
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// A page of workflows after the cursor `after` (an id), newest first.
    pub async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<WorkflowId>,
        first: u64,
    ) -> Result<WorkflowPage, Error> {
        let mut q = workflow::Entity::find();
        if let Some(tenant) = filter.tenant {
            q = q.filter(workflow::Column::TenantId.eq(tenant.0));
        }
        if let Some(status) = filter.status {
            q = q.filter(workflow::Column::Status.eq(status.as_str()));
        }
        if let Some(name) = &filter.name {
            q = q.filter(workflow::Column::Name.eq(name.as_str()));
        }
        if let Some(after) = after {
            q = q.filter(workflow::Column::Id.lt(after.0));
        }
        let mut rows = q.order_by_desc(workflow::Column::Id).limit(first + 1).all(&self.db.read).await?;
        let has_next_page = rows.len() as u64 > first;
        rows.truncate(first as usize);
        Ok(WorkflowPage { items: rows.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?, has_next_page })
    }

    /// All tasks of the given workflows, in definition order, in one statement.
    pub async fn tasks_of(&self, ids: &[WorkflowId]) -> Result<HashMap<WorkflowId, Vec<TaskRecord>>, Error> {
        let rows = task::Entity::find()
            .filter(task::Column::WorkflowId.is_in(ids.iter().map(|i| i.0)))
            .order_by_asc(task::Column::WorkflowId)
            .order_by_asc(task::Column::Position)
            .all(&self.db.read)
            .await?;
        let mut out: HashMap<WorkflowId, Vec<TaskRecord>> = HashMap::with_capacity(ids.len());
        for row in rows {
            let t = TaskRecord::try_from(row)?;
            out.entry(t.workflow_id).or_default().push(t);
        }
        Ok(out)
    }

    /// One task by its key.
    pub async fn task_by_key(&self, id: WorkflowId, key: &str) -> Result<Option<TaskRecord>, Error> {
        task::Entity::find()
            .filter(task::Column::WorkflowId.eq(id.0))
            .filter(task::Column::Key.eq(key))
            .one(&self.db.read)
            .await?
            .map(TryInto::try_into)
            .transpose()
    }

    /// Events of a workflow after `after_sequence`, in order, at most `limit`.
    pub async fn events(&self, id: WorkflowId, after_sequence: i64, limit: u64) -> Result<Vec<EventRecord>, Error> {
        let Some(wf) = self.workflow_row(id).await? else {
            return Ok(Vec::new());
        };
        // Every chunk that ends after `after_sequence` holds at least one wanted event, so `limit` chunks hold enough.
        let chunks = event_chunk::Entity::find()
            .filter(event_chunk::Column::WorkflowId.eq(id.0))
            .filter(event_chunk::Column::LastSequence.gt(after_sequence))
            .order_by_asc(event_chunk::Column::LastSequence)
            .limit(limit)
            .all(&self.db.read)
            .await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for chunk in chunks {
            for record in EventRecord::from_chunk(chunk, &wf.name, taskorch_domain::TenantId(wf.tenant_id))? {
                if out.len() == limit {
                    return Ok(out);
                }
                if record.sequence > after_sequence {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// Event chunks in the order they were written (SQLite's `rowid`), after `cursor`: `(rowid, workflow,
    /// first_sequence, last_sequence, at)`, at most `limit`. `None` on PostgreSQL, whose rows have no such order. With no `cursor`,
    /// the newest rowid alone (where following starts).
    pub async fn chunks_written_after(&self, cursor: Option<i64>, limit: u64) -> Result<Option<Vec<ChunkHead>>, Error> {
        if self.db.backend != sea_orm::DbBackend::Sqlite {
            return Ok(None);
        }
        let rows = match cursor {
            None => {
                self.db
                    .read
                    .query_all_raw(
                        self.db.stmt("SELECT COALESCE(MAX(rowid), 0), NULL, 0, 0, 0 FROM event_chunk", vec![]),
                    )
                    .await?
            }
            Some(after) => {
                self.db
                    .read
                    .query_all_raw(self.db.stmt(
                        "SELECT rowid, workflow_id, first_sequence, last_sequence, at FROM event_chunk WHERE rowid > ? \
                         ORDER BY rowid LIMIT ?",
                        vec![after.into(), (limit as i64).into()],
                    ))
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let workflow = r.try_get_by_index::<Option<uuid::Uuid>>(1)?.unwrap_or_default();
            out.push(ChunkHead {
                rowid: r.try_get_by_index(0)?,
                workflow: WorkflowId(workflow),
                first_sequence: r.try_get_by_index(2)?,
                last_sequence: r.try_get_by_index(3)?,
                at: r.try_get_by_index(4)?,
            });
        }
        Ok(Some(out))
    }

    /// The newest event sequence of each workflow (for subscribers polling the log).
    pub async fn last_sequences(&self, ids: &[WorkflowId]) -> Result<HashMap<WorkflowId, i64>, Error> {
        let rows: Vec<(uuid::Uuid, i64)> = workflow::Entity::find()
            .select_only()
            .column(workflow::Column::Id)
            .column(workflow::Column::LastSequence)
            .filter(workflow::Column::Id.is_in(ids.iter().map(|i| i.0)))
            .into_tuple()
            .all(&self.db.read)
            .await?;
        Ok(rows.into_iter().map(|(id, seq)| (WorkflowId(id), seq)).collect())
    }

    /// Tasks by status and the dispatch backlog (due, not handed to a queue), for metrics.
    pub async fn task_stats(&self) -> Result<TaskStats, Error> {
        let rows = self
            .db
            .read
            .query_all_raw(self.db.stmt("SELECT status, COUNT(*) FROM task GROUP BY status", vec![]))
            .await?;
        let mut by_status = Vec::with_capacity(rows.len());
        for r in rows {
            by_status.push((r.try_get_by_index::<String>(0)?, r.try_get_by_index::<i64>(1)?));
        }
        let now = crate::time::now_us();
        let backlog = self
            .db
            .read
            .query_one_raw(self.db.stmt(
                "SELECT COUNT(*) FROM task WHERE status IN ('QUEUED', 'RETRYING', 'COMPENSATING') \
                 AND lease_until IS NULL AND available_at <= ? AND dispatched_until <= ?",
                vec![now.into(), now.into()],
            ))
            .await?
            .map(|r| r.try_get_by_index::<i64>(0))
            .transpose()?
            .unwrap_or(0);
        Ok(TaskStats { by_status, backlog })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.read.ping().await?;
        Ok(())
    }
}
