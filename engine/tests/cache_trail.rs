//! A cached workflow trails the log between a commit and the publication of its events (which marks the copy
//! stale). A reader that has already read an event from the log (a subscription deciding whether the workflow has
//! ended) asks for the state as of that event and gets it, not the cached copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use taskorch_domain::{TaskSpec, TenantId, WorkflowId, WorkflowSpec, WorkflowStatus};
use taskorch_engine::cache::ReadCache;
use taskorch_engine::db::{Database, PoolOptions};
use taskorch_engine::model::WorkflowRecord;
use taskorch_engine::store::{Outcome, OutcomeKind, Store};
use taskorch_engine::{Engine, EngineOptions, InProcessEventBus, Phase};

/// A cache whose invalidations have not arrived yet: it keeps whatever was put.
#[derive(Default)]
struct Trailing(Mutex<HashMap<WorkflowId, WorkflowRecord>>);

#[async_trait]
impl ReadCache for Trailing {
    async fn get(&self, id: WorkflowId) -> Option<WorkflowRecord> {
        self.0.lock().ok()?.get(&id).cloned()
    }
    async fn put(&self, record: &WorkflowRecord) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(record.id, record.clone());
        }
    }
    async fn invalidate(&self, _newest: &[(WorkflowId, i64)]) {}
}

#[tokio::test]
async fn a_reader_of_the_log_gets_the_state_as_of_the_event_it_read() {
    let dir = std::env::temp_dir().join(format!("taskorch-trail-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
    db.migrate().await.expect("migrate");
    let bus = Arc::new(InProcessEventBus::default());
    let engine = Engine::with_cache(Store::new(db), bus, Arc::new(Trailing::default()), EngineOptions::default());

    let spec = WorkflowSpec { name: "wf".into(), idempotency_key: None, tasks: vec![TaskSpec::new("a", "noop")] };
    let wf = engine.submit(TenantId(uuid::Uuid::nil()), spec).await.expect("submit");
    assert_eq!(engine.workflow(wf.id).await.expect("read").expect("found").status, WorkflowStatus::Running);
    let due = engine.fetch_due(10, None).await.expect("fetch");
    let claimed = engine.claim(&due).await.expect("claim");
    let outcome = Outcome {
        task_id: claimed[0].task_id,
        phase: Phase::Run,
        attempt: claimed[0].attempt,
        kind: OutcomeKind::Completed(serde_json::json!({})),
        started_at: None,
    };
    engine.report(vec![outcome]).await.expect("report");
    let log = engine.events(wf.id, 0, 100).await.expect("log");
    let last = log.last().expect("events");
    assert_eq!(last.event_type, taskorch_domain::EventType::WorkflowCompleted);

    let cached = engine.workflow(wf.id).await.expect("read").expect("found");
    assert_eq!(cached.status, WorkflowStatus::Running, "the cached copy trails the log");
    let since = engine.workflow_since(wf.id, last.sequence).await.expect("read").expect("found");
    assert_eq!((since.status, since.last_sequence), (WorkflowStatus::Completed, last.sequence));
    let _ = std::fs::remove_dir_all(&dir);
}
