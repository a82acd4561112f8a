//! A submission hands its root tasks to the queue of the process's dispatcher itself (no dispatcher round), within
//! the dispatcher's kinds and backlog limit; the rest is left to the dispatcher.

use std::sync::Arc;

use taskorch_domain::{TaskSpec, TenantId, WorkflowSpec};
use taskorch_engine::db::{Database, PoolOptions};
use taskorch_engine::store::Store;
use taskorch_engine::{Engine, EngineOptions, InProcessEventBus, InProcessQueue, TaskQueue};
use tokio_util::sync::CancellationToken;

async fn engine() -> (Engine, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("taskorch-submit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
    db.migrate().await.expect("migrate");
    (Engine::new(Store::new(db), Arc::new(InProcessEventBus::default()), EngineOptions::default()), dir)
}

fn spec(tasks: Vec<TaskSpec>) -> WorkflowSpec {
    WorkflowSpec { name: "wf".into(), idempotency_key: None, tasks }
}

#[tokio::test]
async fn roots_of_the_dispatched_kinds_go_straight_to_the_queue_and_the_others_to_the_dispatcher() {
    let (engine, dir) = engine().await;
    let queue = Arc::new(InProcessQueue::new());
    engine.dispatch_roots_to(queue.clone(), Some(vec!["noop".into()]), 10, CancellationToken::new());
    let tasks = vec![TaskSpec::new("a", "noop"), TaskSpec::new("m", "mail"), TaskSpec::new("b", "noop").after(&["a"])];
    let wf = engine.submit(TenantId(uuid::Uuid::nil()), spec(tasks)).await.expect("submit");
    // No dispatcher runs here: the root `a` arrives from the submission itself.
    let delivered = tokio::time::timeout(std::time::Duration::from_secs(5), queue.receive(10))
        .await
        .expect("the root is published after the commit")
        .expect("receive");
    assert_eq!(delivered.len(), 1);
    assert_eq!((delivered[0].dispatch.workflow_id, delivered[0].dispatch.kind.as_str()), (wf.id, "noop"));
    // `mail` is not this dispatcher's kind: it is due for whichever dispatcher serves it.
    let due = engine.fetch_due(10, None).await.expect("fetch");
    assert_eq!(due.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), vec!["mail"]);
    let claimed = engine.claim(&[delivered[0].dispatch.clone()]).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), vec!["a"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn roots_that_would_overfill_the_queue_or_come_after_the_stop_are_left_to_the_dispatcher() {
    let (engine, dir) = engine().await;
    let queue = Arc::new(InProcessQueue::new());
    let stop = CancellationToken::new();
    engine.dispatch_roots_to(queue.clone(), None, 1, stop.clone());
    let two = vec![TaskSpec::new("a", "noop"), TaskSpec::new("b", "noop")];
    engine.submit(TenantId(uuid::Uuid::nil()), spec(two)).await.expect("submit");
    let due = engine.fetch_due(10, None).await.expect("fetch");
    assert_eq!(due.len(), 2, "two roots do not fit a backlog of one");
    stop.cancel();
    engine.submit(TenantId(uuid::Uuid::nil()), spec(vec![TaskSpec::new("c", "noop")])).await.expect("submit");
    let due = engine.fetch_due(10, None).await.expect("fetch");
    assert_eq!(due.len(), 1, "a stopped dispatcher's queue takes nothing new");
    assert_eq!(queue.backlog(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
