//! Black-box tests over graphql-transport-ws: exact event streams for the happy path, retries, sagas, lifecycle
//! actions, late subscribers, and subscriptions that clean up after their clients.

mod common;

use std::time::Duration;

use common::{Server, ServerOptions, Subscription, types};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);
const EVENTS: &str = "subscription($id: ID!, $after: Int) { workflowEvents(workflowId: $id, afterSequence: $after) { sequence type taskKey workflowId data } }";

fn keyed(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["taskKey"].as_str() {
            Some(k) => format!("{} {k}", e["type"].as_str().unwrap()),
            None => e["type"].as_str().unwrap().to_owned(),
        })
        .collect()
}

/// Tasks t0 → t1 → … each sleeping `ms`.
fn sleep_chain(n: usize, ms: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut t = json!({ "key": format!("t{i}"), "kind": "sleep", "payload": { "ms": ms } });
            if i > 0 {
                t["dependsOn"] = json!([format!("t{}", i - 1)]);
            }
            t
        })
        .collect()
}

async fn next_event(sub: &mut Subscription) -> Value {
    tokio::time::timeout(MINUTE, sub.next()).await.expect("event in time").expect("stream open")["workflowEvents"]
        .clone()
}

async fn until(sub: &mut Subscription, seen: &mut Vec<Value>, ty: &str, key: Option<&str>) {
    loop {
        let e = next_event(sub).await;
        let hit = e["type"] == ty && key.is_none_or(|k| e["taskKey"] == k);
        seen.push(e);
        if hit {
            return;
        }
    }
}

/// The rest of the stream of workflow `id`, until the server completes it (within a minute).
async fn rest(server: &Server, id: &str, sub: &mut Subscription, seen: &mut Vec<Value>) {
    match tokio::time::timeout(MINUTE, sub.collect_until_complete()).await {
        Ok(more) => seen.extend(more.into_iter().map(|v| v["workflowEvents"].clone())),
        Err(_) => panic!(
            "the stream did not complete within a minute; it gave {:?}; the workflow is now {}",
            keyed(seen),
            server.state(id).await
        ),
    }
}

#[tokio::test]
async fn happy_path_streams_every_event_in_order_and_completes() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "happy", "tasks": [
            { "key": "a", "kind": "noop" },
            { "key": "b", "kind": "noop", "dependsOn": ["a"] },
        ] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    assert_eq!(
        keyed(&events),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED a",
            "TASK_STARTED a",
            "TASK_COMPLETED a",
            "TASK_QUEUED b",
            "TASK_STARTED b",
            "TASK_COMPLETED b",
            "WORKFLOW_COMPLETED"
        ]
    );
    common::assert_gapless(&events, 1);
    assert!(events.iter().all(|e| e["workflowId"] == id.as_str()));
}

#[tokio::test]
async fn a_saga_chain_compensates_in_reverse() {
    let server = Server::start().await;
    let comp = |name: &str| json!({ "kind": "echo", "payload": { "undo": name } });
    let id = server
        .submit(json!({ "name": "saga", "tasks": [
            { "key": "a", "kind": "echo", "compensation": comp("a") },
            { "key": "b", "kind": "echo", "dependsOn": ["a"], "compensation": comp("b") },
            { "key": "c", "kind": "fail", "dependsOn": ["b"], "retry": { "maxAttempts": 1 }, "compensation": comp("c") },
        ] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    assert_eq!(
        keyed(&events),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED a",
            "TASK_STARTED a",
            "TASK_COMPLETED a",
            "TASK_QUEUED b",
            "TASK_STARTED b",
            "TASK_COMPLETED b",
            "TASK_QUEUED c",
            "TASK_STARTED c",
            "TASK_FAILED c",
            "COMPENSATION_STARTED",
            "TASK_COMPENSATING b",
            "TASK_COMPENSATED b",
            "TASK_COMPENSATING a",
            "TASK_COMPENSATED a",
            "WORKFLOW_COMPENSATED"
        ]
    );
    common::assert_gapless(&events, 1);
    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "COMPENSATED");
    let statuses: Vec<_> =
        wf["tasks"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(statuses, vec!["COMPENSATED", "COMPENSATED", "FAILED"]);
}

#[tokio::test]
async fn a_failing_diamond_sink_compensates_both_branches_in_parallel_then_the_root() {
    let server = Server::start().await;
    let slow = json!({ "kind": "sleep", "payload": { "ms": 300 } });
    let id = server
        .submit(json!({ "name": "diamond-saga", "tasks": [
            { "key": "a", "kind": "noop", "compensation": { "kind": "noop" } },
            { "key": "b", "kind": "noop", "dependsOn": ["a"], "compensation": slow },
            { "key": "c", "kind": "noop", "dependsOn": ["a"], "compensation": slow },
            { "key": "d", "kind": "fail", "dependsOn": ["b", "c"], "retry": { "maxAttempts": 1 } },
        ] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    let k = keyed(&events);
    let pos = |s: &str| k.iter().position(|x| x == s).unwrap_or_else(|| panic!("{s} missing in {k:?}"));
    assert!(pos("COMPENSATION_STARTED") > pos("TASK_FAILED d"));
    // both branch compensations start before either finishes: they run in parallel
    assert!(pos("TASK_COMPENSATING b") < pos("TASK_COMPENSATED c"));
    assert!(pos("TASK_COMPENSATING c") < pos("TASK_COMPENSATED b"));
    // the root's compensation waits for both
    assert!(pos("TASK_COMPENSATING a") > pos("TASK_COMPENSATED b"));
    assert!(pos("TASK_COMPENSATING a") > pos("TASK_COMPENSATED c"));
    assert_eq!(k.last().unwrap(), "WORKFLOW_COMPENSATED");
    let at = |s: &str| events[pos(s)]["sequence"].as_i64().unwrap();
    assert!(at("TASK_COMPENSATING a") > at("TASK_COMPENSATED b"));
    common::assert_gapless(&events, 1);
}

#[tokio::test]
async fn a_failed_compensation_resumes_with_retry_workflow() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "comp-retry", "tasks": [
            { "key": "a", "kind": "noop",
              "compensation": { "kind": "fail", "payload": { "message": "refund API down", "failTimes": 1 }, "retry": { "maxAttempts": 1 } } },
            { "key": "b", "kind": "fail", "dependsOn": ["a"], "retry": { "maxAttempts": 1 } },
        ] }))
        .await;
    let first = server.wait_finished(&id, MINUTE).await;
    assert_eq!(
        keyed(&first),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED a",
            "TASK_STARTED a",
            "TASK_COMPLETED a",
            "TASK_QUEUED b",
            "TASK_STARTED b",
            "TASK_FAILED b",
            "COMPENSATION_STARTED",
            "TASK_COMPENSATING a",
            "TASK_COMPENSATION_FAILED a"
        ]
    );
    assert_eq!(first.last().unwrap()["data"]["error"], "refund API down");
    assert_eq!(server.workflow(&id).await["status"], "COMPENSATION_FAILED");

    let retried = server.data("mutation($id: ID!) { retryWorkflow(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(retried["retryWorkflow"]["status"], "COMPENSATING");
    // Subscribing after the mutation: the log replays what already happened, the rest streams live.
    let mut sub = server.subscribe(EVENTS, json!({ "id": id, "after": first.len() })).await;
    let mut seen = Vec::new();
    rest(&server, &id, &mut sub, &mut seen).await;
    assert_eq!(
        keyed(&seen),
        vec!["WORKFLOW_RESUMED", "TASK_COMPENSATING a", "TASK_COMPENSATED a", "WORKFLOW_COMPENSATED"]
    );
    assert_eq!(seen[0]["data"], json!({ "reason": "retry", "tasks": ["a"] }));
    common::assert_gapless(&seen, first.len() as i64 + 1);
    assert_eq!(server.workflow(&id).await["status"], "COMPENSATED");
}

/// A saga fails without an event of its own: here with the compensation still running when the other one failed
/// for good. A live subscriber's stream still completes after that last event.
#[tokio::test]
async fn a_stream_completes_when_the_saga_fails_with_a_compensation_that_succeeds() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "comp-parallel", "tasks": [
            { "key": "x", "kind": "noop", "compensation": { "kind": "fail", "retry": { "maxAttempts": 1 } } },
            { "key": "y", "kind": "noop", "compensation": { "kind": "sleep", "payload": { "ms": 1500 } } },
            { "key": "z", "kind": "fail", "dependsOn": ["x", "y"], "retry": { "maxAttempts": 1 } },
        ] }))
        .await;
    let mut sub = server.subscribe(EVENTS, json!({ "id": id })).await;
    let mut seen = Vec::new();
    // Live from here on: y's compensation is still sleeping.
    until(&mut sub, &mut seen, "TASK_COMPENSATION_FAILED", Some("x")).await;
    rest(&server, &id, &mut sub, &mut seen).await;
    let keyed = keyed(&seen);
    assert_eq!(keyed.last().map(String::as_str), Some("TASK_COMPENSATED y"), "{keyed:?}");
    assert_eq!(server.workflow(&id).await["status"], "COMPENSATION_FAILED");
    common::assert_gapless(&seen, 1);
}

#[tokio::test]
async fn cancel_mid_run_stops_the_running_task_and_nothing_else_starts() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "cancel", "tasks": [
            { "key": "slow", "kind": "sleep", "payload": { "ms": 30000 } },
            { "key": "next", "kind": "noop", "dependsOn": ["slow"] },
        ] }))
        .await;
    let mut sub = server.subscribe(EVENTS, json!({ "id": id })).await;
    let mut seen = Vec::new();
    until(&mut sub, &mut seen, "TASK_STARTED", Some("slow")).await;
    let t = std::time::Instant::now();
    let data = server.data("mutation($id: ID!) { cancelWorkflow(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(data["cancelWorkflow"]["status"], "CANCELLED");
    rest(&server, &id, &mut sub, &mut seen).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        keyed(&seen),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED slow",
            "TASK_STARTED slow",
            "TASK_CANCELLED slow",
            "TASK_CANCELLED next",
            "WORKFLOW_CANCELLED"
        ]
    );
    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "CANCELLED");
    assert!(wf["tasks"].as_array().unwrap().iter().all(|t| t["status"] == "CANCELLED"));

    let body = server.gql("mutation($id: ID!) { cancelWorkflow(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "INVALID_STATE");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("CANCELLED"));
    // the cancelled attempt was stopped, not completed later
    let events = server.events(&id).await;
    assert!(!types(&events).contains(&"TASK_COMPLETED".to_owned()));
}

#[tokio::test]
async fn refused_transitions_name_the_current_state() {
    let server = Server::start().await;
    let id = server.submit(json!({ "name": "done", "tasks": [{ "key": "a", "kind": "noop" }] })).await;
    server.wait_finished(&id, MINUTE).await;
    for m in ["cancelWorkflow", "pauseWorkflow", "resumeWorkflow", "retryWorkflow"] {
        let body =
            server.gql(&format!("mutation($id: ID!) {{ {m}(id: $id) {{ status }} }}"), json!({ "id": id })).await;
        assert_eq!(body["errors"][0]["extensions"]["code"], "INVALID_STATE", "{m}: {body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("COMPLETED"), "{body}");
    }
    let body = server
        .gql(
            "mutation($id: ID!) { cancelWorkflow(id: $id) { status } }",
            json!({ "id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn pause_lets_running_tasks_finish_and_dispatches_nothing_until_resume() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "pause", "tasks": [
            { "key": "a", "kind": "sleep", "payload": { "ms": 300 } },
            { "key": "b", "kind": "noop", "dependsOn": ["a"] },
        ] }))
        .await;
    let mut sub = server.subscribe(EVENTS, json!({ "id": id })).await;
    let mut seen = Vec::new();
    until(&mut sub, &mut seen, "TASK_STARTED", Some("a")).await;
    let data = server.data("mutation($id: ID!) { pauseWorkflow(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(data["pauseWorkflow"]["status"], "PAUSED");
    until(&mut sub, &mut seen, "TASK_QUEUED", Some("b")).await;
    // b is ready but must not start while paused
    let quiet = tokio::time::timeout(Duration::from_millis(700), sub.next()).await;
    assert!(quiet.is_err(), "an event arrived while paused: {quiet:?}");
    assert_eq!(server.workflow(&id).await["tasks"][1]["status"], "QUEUED");
    let data = server.data("mutation($id: ID!) { resumeWorkflow(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(data["resumeWorkflow"]["status"], "RUNNING");
    rest(&server, &id, &mut sub, &mut seen).await;
    assert_eq!(
        keyed(&seen),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED a",
            "TASK_STARTED a",
            "WORKFLOW_PAUSED",
            "TASK_COMPLETED a",
            "TASK_QUEUED b",
            "WORKFLOW_RESUMED",
            "TASK_STARTED b",
            "TASK_COMPLETED b",
            "WORKFLOW_COMPLETED"
        ]
    );
    common::assert_gapless(&seen, 1);
}

#[tokio::test]
async fn retry_workflow_reruns_failed_and_downstream_and_keeps_completed_results() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "retry", "tasks": [
            { "key": "a", "kind": "echo", "payload": { "v": 1 } },
            { "key": "b", "kind": "fail", "payload": { "failTimes": 1 }, "dependsOn": ["a"], "retry": { "maxAttempts": 1 } },
            { "key": "c", "kind": "echo", "dependsOn": ["b"] },
        ] }))
        .await;
    let first = server.wait_finished(&id, MINUTE).await;
    assert_eq!(first.last().unwrap()["type"], "WORKFLOW_FAILED");
    let a_finished = server.workflow(&id).await["tasks"][0]["finishedAt"].clone();
    let data = server.data("mutation($id: ID!) { retryWorkflow(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(data["retryWorkflow"]["status"], "RUNNING");
    let mut sub = server.subscribe(EVENTS, json!({ "id": id, "after": first.len() })).await;
    let mut seen = Vec::new();
    rest(&server, &id, &mut sub, &mut seen).await;
    assert_eq!(
        keyed(&seen),
        vec![
            "WORKFLOW_RESUMED",
            "TASK_QUEUED b",
            "TASK_STARTED b",
            "TASK_COMPLETED b",
            "TASK_QUEUED c",
            "TASK_STARTED c",
            "TASK_COMPLETED c",
            "WORKFLOW_COMPLETED"
        ]
    );
    // The resume names every task put back: `c` waits for `b` again without an event of its own.
    assert_eq!(seen[0]["data"], json!({ "reason": "retry", "tasks": ["b", "c"] }));
    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "COMPLETED");
    assert_eq!(wf["tasks"][0]["finishedAt"], a_finished, "a was not re-run");
    assert_eq!(wf["tasks"][0]["attempts"], 1);
    assert_eq!(wf["tasks"][1]["attempts"], 2);
}

#[tokio::test]
async fn bulk_cancel_and_retry_return_counts() {
    let server = Server::start().await;
    let slow = json!([{ "key": "s", "kind": "sleep", "payload": { "ms": 60000 } }]);
    for i in 0..5 {
        server.submit(json!({ "name": "bulk", "tasks": slow })).await;
        let _ = i;
    }
    server.submit(json!({ "name": "other", "tasks": slow })).await;
    let data = server.data("mutation { cancelWorkflows(filter: { name: \"bulk\" }) }", json!({})).await;
    assert_eq!(data["cancelWorkflows"], 5);
    let data = server.data("mutation { cancelWorkflows(filter: { name: \"bulk\" }) }", json!({})).await;
    assert_eq!(data["cancelWorkflows"], 0, "already cancelled");
    let data = server.data("mutation { retryWorkflows(filter: { status: CANCELLED }) }", json!({})).await;
    assert_eq!(data["retryWorkflows"], 5);
    let data = server.data("mutation { cancelWorkflows }", json!({})).await;
    assert_eq!(data["cancelWorkflows"], 6);
}

#[tokio::test]
async fn a_late_subscriber_gets_the_rest_without_gap_or_duplicate() {
    let server = Server::start().await;
    let tasks = sleep_chain(6, 60);
    let id = server.submit(json!({ "name": "late", "tasks": tasks })).await;
    let mut early = server.subscribe(EVENTS, json!({ "id": id })).await;
    let mut first = Vec::new();
    while first.len() < 5 {
        first.push(next_event(&mut early).await);
    }
    let mut late = server.subscribe(EVENTS, json!({ "id": id, "after": 5 })).await;
    let mut tail = Vec::new();
    rest(&server, &id, &mut late, &mut tail).await;
    rest(&server, &id, &mut early, &mut first).await;
    assert_eq!(tail.first().unwrap()["sequence"], 6);
    common::assert_gapless(&tail, 6);
    assert_eq!(tail, first[5..].to_vec(), "the late subscriber saw exactly the rest");
    assert_eq!(tail.last().unwrap()["type"], "WORKFLOW_COMPLETED");
}

#[tokio::test]
async fn a_subscriber_that_starts_at_or_after_the_final_event_completes_when_the_workflow_ends() {
    let server = Server::start().await;
    // One task: WORKFLOW_STARTED, TASK_QUEUED, TASK_STARTED, TASK_COMPLETED, WORKFLOW_COMPLETED — 5 is the last.
    let id = server.submit(json!({ "name": "ahead", "tasks": sleep_chain(1, 400) })).await;
    let mut at_end = server.subscribe(EVENTS, json!({ "id": id, "after": 5 })).await;
    let mut beyond = server.subscribe(EVENTS, json!({ "id": id, "after": 100 })).await;
    for sub in [&mut at_end, &mut beyond] {
        let events = tokio::time::timeout(MINUTE, sub.collect_until_complete()).await.expect("the stream completes");
        assert_eq!(events, Vec::<Value>::new(), "nothing after the cursor");
    }
    assert_eq!(server.events(&id).await.len(), 5);
}

/// Subscribers with the same document, variables and credential share one execution of the stream (see
/// `server/src/fanout.rs`): whenever one joins, and whoever leaves, each still gets the whole stream.
#[tokio::test]
async fn identical_subscriptions_opened_at_different_times_each_get_the_whole_stream() {
    let server = Server::start().await;
    let tasks = sleep_chain(6, 60);
    let id = server.submit(json!({ "name": "watched by many", "tasks": tasks })).await;
    let mut first = server.subscribe(EVENTS, json!({ "id": id })).await;
    let mut seen_first = Vec::new();
    until(&mut first, &mut seen_first, "TASK_COMPLETED", Some("t1")).await;
    let mut second = server.subscribe(EVENTS, json!({ "id": id })).await;
    let mut seen_second = vec![next_event(&mut second).await];
    assert_eq!(server.metric("taskorch_active_subscriptions").await, 2.0);
    // The first subscriber, whose execution the others may share, leaves; then a third arrives.
    first.close().await;
    until(&mut second, &mut seen_second, "TASK_COMPLETED", Some("t3")).await;
    let mut third = server.subscribe(EVENTS, json!({ "id": id })).await;
    let (mut seen_third, mut more) = (Vec::new(), Vec::new());
    rest(&server, &id, &mut third, &mut seen_third).await;
    rest(&server, &id, &mut second, &mut more).await;
    seen_second.extend(more);
    for seen in [&seen_second, &seen_third] {
        common::assert_gapless(seen, 1);
        assert_eq!(seen.last().unwrap()["type"], "WORKFLOW_COMPLETED");
    }
    assert_eq!(seen_second, seen_third);
    assert_eq!(seen_first[..], seen_second[..seen_first.len()]);
    assert_eq!(seen_second.len(), server.events(&id).await.len(), "every stored event, once");
}

/// The server reads WebSockets in small pieces (`server::ws::READ_BUFFER`, 8 KiB); a client message many times that
/// size still arrives whole.
#[tokio::test]
async fn a_subscribe_message_far_larger_than_the_read_buffer_arrives_whole() {
    let server = Server::start().await;
    let id = server.submit(json!({ "name": "big", "tasks": sleep_chain(2, 10) })).await;
    let comment: String = (0..100_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let query = format!("{EVENTS}\n# {comment}\n");
    let mut sub = server.subscribe(&query, json!({ "id": id })).await;
    let mut seen = Vec::new();
    rest(&server, &id, &mut sub, &mut seen).await;
    common::assert_gapless(&seen, 1);
    assert_eq!(seen.last().unwrap()["type"], "WORKFLOW_COMPLETED");
    assert_eq!(seen.len(), server.events(&id).await.len(), "every stored event");
}

#[tokio::test]
async fn the_firehose_filters_by_name_and_type() {
    let server = Server::start().await;
    let mut sub = server
        .subscribe(
            "subscription { events(filter: { workflowName: \"watched\", types: [WORKFLOW_COMPLETED] }) { type workflowId } }",
            json!({}),
        )
        .await;
    let _ = server.submit(json!({ "name": "ignored", "tasks": [{ "key": "a", "kind": "noop" }] })).await;
    let watched = server.submit(json!({ "name": "watched", "tasks": [{ "key": "a", "kind": "noop" }] })).await;
    let e = tokio::time::timeout(MINUTE, sub.next()).await.unwrap().unwrap();
    assert_eq!(e["events"]["type"], "WORKFLOW_COMPLETED");
    assert_eq!(e["events"]["workflowId"], watched.as_str());
}

#[tokio::test]
async fn the_firehose_carries_the_events_of_a_separate_worker() {
    // On the embedded default the bus is the server's own: the worker's events come from following the log.
    let server = Server::start_with(ServerOptions { worker: false, ..ServerOptions::default() }).await;
    let mut worker = server.spawn_worker(&[]);
    let mut sub = server
        .subscribe(
            "subscription { events(filter: { workflowName: \"elsewhere\" }) { sequence type taskKey workflowId } }",
            json!({}),
        )
        .await;
    let id = server.submit(json!({ "name": "elsewhere", "tasks": sleep_chain(3, 50) })).await;
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(MINUTE, sub.next()).await.expect("an event in time").expect("open");
        let e = e["events"].clone();
        let done = e["type"] == "WORKFLOW_COMPLETED";
        seen.push(e);
        if done {
            break;
        }
    }
    let _ = worker.kill();
    let _ = worker.wait();
    common::assert_gapless(&seen, 1);
    assert_eq!(seen.len(), server.events(&id).await.len(), "every stored event, once: {seen:?}");
    assert!(seen.iter().all(|e| e["workflowId"] == id.as_str()));
}

#[tokio::test]
async fn a_thousand_subscribe_disconnect_cycles_leave_nothing_behind() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "idle", "tasks": [{ "key": "s", "kind": "sleep", "payload": { "ms": 600000 } }] }))
        .await;
    // warm up allocator and caches
    for _ in 0..50 {
        let mut sub = server.subscribe(EVENTS, json!({ "id": id })).await;
        next_event(&mut sub).await;
        sub.close().await;
    }
    let before = server.rss_kib();
    for _ in 0..1000 {
        let mut sub = server.subscribe(EVENTS, json!({ "id": id })).await;
        next_event(&mut sub).await;
        sub.close().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metric("taskorch_active_subscriptions").await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "subscriptions still active after their clients left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = server.rss_kib();
    assert!(after < before + 8 * 1024, "RSS grew from {before} KiB to {after} KiB over 1,000 cycles");
}

#[tokio::test]
async fn a_read_right_after_an_event_never_shows_an_older_status() {
    let server = Server::start().await;
    for round in 0..10 {
        let id = server
            .submit(json!({ "name": format!("fresh{round}"), "tasks": [
                { "key": "a", "kind": "noop" }, { "key": "b", "kind": "noop", "dependsOn": ["a"] },
            ] }))
            .await;
        // Keep the read path (and any cache behind it) busy while the workflow runs.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (http, url, id, stop) = (server.http().clone(), server.graphql_url(), id.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({ "query": "query($id: ID!) { workflow(id: $id) { status } }", "variables": { "id": id } });
                    let _ = http.post(&url).json(&body).send().await;
                }
            })
        };
        let mut sub = server.subscribe(EVENTS, json!({ "id": id })).await;
        while let Some(e) = tokio::time::timeout(MINUTE, sub.next()).await.expect("event") {
            let ty = e["workflowEvents"]["type"].as_str().unwrap().to_owned();
            let status = server.data("query($id: ID!) { workflow(id: $id) { status } }", json!({ "id": id })).await;
            let status = status["workflow"]["status"].as_str().unwrap().to_owned();
            if ty == "WORKFLOW_COMPLETED" {
                assert_eq!(status, "COMPLETED", "read after {ty}");
            } else {
                assert!(status == "RUNNING" || status == "COMPLETED", "read after {ty}: {status}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = reader.await;
    }
}
