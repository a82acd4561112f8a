//! Decisions that two transactions could each make without seeing the other's change: a dependent claimed by the
//! worker that completes its dependency while a pause commits, and two branch compensations ending at once. Two
//! separate workers race for them; on PostgreSQL (CI) each transaction sees the other's commit only because the
//! workflow row is locked before the decision.

mod common;

use std::time::Duration;

use common::{Server, ServerOptions, WorkerProcess};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// A server without its own worker, and two separate workers.
async fn two_workers() -> (Server, Vec<WorkerProcess>) {
    let server = Server::start_with(ServerOptions { worker: false, ..ServerOptions::default() }).await;
    let workers = vec![server.spawn_worker(&[]), server.spawn_worker(&[])];
    (server, workers)
}

#[tokio::test]
async fn nothing_is_queued_and_started_after_a_pause_commits() {
    let (server, _workers) = two_workers().await;
    for round in 0..8u64 {
        let tasks: Vec<Value> = (0..200)
            .map(|i| {
                let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("t{}", i - 1)] };
                json!({ "key": format!("t{i}"), "kind": "noop", "dependsOn": deps })
            })
            .collect();
        let id = server.submit(json!({ "name": "paused", "tasks": tasks })).await;
        tokio::time::sleep(Duration::from_millis(20 + 15 * round)).await;
        let paused = server.gql("mutation($id: ID!) { pauseWorkflow(id: $id) { status } }", json!({ "id": id })).await;
        if paused["data"]["pauseWorkflow"]["status"] != "PAUSED" {
            continue; // finished before the pause
        }
        // Whatever was running when the pause committed ends; then the log stands still.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = server.events(&id).await;
        let pause = events.iter().position(|e| e["type"] == "WORKFLOW_PAUSED").expect("the pause is logged");
        let queued_after: Vec<&Value> =
            events[pause..].iter().filter(|e| e["type"] == "TASK_QUEUED").filter_map(|e| e.get("taskKey")).collect();
        let started_late: Vec<&Value> = events[pause..]
            .iter()
            .filter(|e| e["type"] == "TASK_STARTED" && queued_after.contains(&&e["taskKey"]))
            .collect();
        assert!(started_late.is_empty(), "round {round}: started while paused: {started_late:?}");
        server.data("mutation($id: ID!) { resumeWorkflow(id: $id) { status } }", json!({ "id": id })).await;
        server.wait_finished(&id, MINUTE).await;
        assert_eq!(server.workflow(&id).await["status"], "COMPLETED", "round {round}");
    }
}

#[tokio::test]
async fn branch_compensations_ending_at_once_move_the_saga_on() {
    let (server, _workers) = two_workers().await;
    let comp = json!({ "kind": "noop" });
    let mut ids = Vec::new();
    for _ in 0..16 {
        let tasks = json!([
            { "key": "r", "kind": "noop", "compensation": comp },
            { "key": "b0", "kind": "noop", "dependsOn": ["r"], "compensation": comp },
            { "key": "b1", "kind": "noop", "dependsOn": ["r"], "compensation": comp },
            { "key": "b2", "kind": "noop", "dependsOn": ["r"], "compensation": comp },
            { "key": "sink", "kind": "fail", "dependsOn": ["b0", "b1", "b2"], "retry": { "maxAttempts": 1 } },
        ]);
        ids.push(server.submit(json!({ "name": "diamond", "tasks": tasks })).await);
    }
    for id in &ids {
        server.wait_finished(id, MINUTE).await;
        let wf = server.workflow(id).await;
        assert_eq!(wf["status"], "COMPENSATED", "{wf}");
    }
}
