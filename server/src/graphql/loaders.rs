//! Dataloaders: tasks of many workflows in one statement.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use taskorch_domain::WorkflowId;
use taskorch_engine::Engine;
use taskorch_engine::model::TaskRecord;

/// Loads the tasks of workflows, batched.
pub struct TaskLoader {
    engine: Engine,
}

impl TaskLoader {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

impl Loader<WorkflowId> for TaskLoader {
    type Value = Arc<Vec<TaskRecord>>;
    type Error = Arc<async_graphql::Error>;

    async fn load(&self, keys: &[WorkflowId]) -> Result<HashMap<WorkflowId, Self::Value>, Self::Error> {
        let mut by_wf = self.engine.tasks_of(keys).await.map_err(|e| Arc::new(crate::error::from_engine(e)))?;
        Ok(keys.iter().map(|k| (*k, Arc::new(by_wf.remove(k).unwrap_or_default()))).collect())
    }
}

/// The per-request task loader (with a cache, so a page can be prefetched in one statement).
pub type TaskLoaderCached = async_graphql::dataloader::DataLoader<TaskLoader, async_graphql::dataloader::HashMapCache>;
