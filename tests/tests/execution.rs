//! Black-box tests of execution: dependencies, retries, timeouts, priorities, crash safety, bad handler input.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono_free::parse_ms;
use common::{Server, ServerOptions, types};
use serde_json::{Value, json};

/// RFC 3339 timestamps to milliseconds, without a date library.
mod chrono_free {
    pub fn parse_ms(ts: &str) -> f64 {
        // 2026-11-26T09:24:42.398806+00:00 — same day in a test, so the clock part is enough
        let time = &ts[11..];
        let (h, rest) = time.split_at(2);
        let (m, rest) = rest[1..].split_at(2);
        let secs: String = rest[1..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let h: f64 = h.parse().unwrap();
        let m: f64 = m.parse().unwrap();
        let s: f64 = secs.parse().unwrap();
        ((h * 60.0 + m) * 60.0 + s) * 1000.0
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn seq_of(events: &[Value], ty: &str, key: &str) -> Vec<i64> {
    events.iter().filter(|e| e["type"] == ty && e["taskKey"] == key).map(|e| e["sequence"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn diamond_passes_results_downstream_in_dependency_order() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "diamond", "tasks": [
            { "key": "a", "kind": "echo", "payload": { "n": 1 } },
            { "key": "b", "kind": "echo", "payload": { "n": 2 }, "dependsOn": ["a"] },
            { "key": "c", "kind": "echo", "payload": { "n": 3 }, "dependsOn": ["a"] },
            { "key": "d", "kind": "echo", "dependsOn": ["b", "c"] },
        ] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    common::assert_gapless(&events, 1);
    assert_eq!(events.first().unwrap()["type"], "WORKFLOW_STARTED");
    assert_eq!(events.last().unwrap()["type"], "WORKFLOW_COMPLETED");
    let a_done = seq_of(&events, "TASK_COMPLETED", "a")[0];
    for k in ["b", "c"] {
        assert!(seq_of(&events, "TASK_STARTED", k)[0] > a_done, "{k} started before a completed");
        assert!(seq_of(&events, "TASK_QUEUED", k)[0] > a_done);
    }
    let d_start = seq_of(&events, "TASK_STARTED", "d")[0];
    assert!(d_start > seq_of(&events, "TASK_COMPLETED", "b")[0] && d_start > seq_of(&events, "TASK_COMPLETED", "c")[0]);
    assert_eq!(types(&events).len(), 1 + 4 * 3 + 1);

    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "COMPLETED");
    assert!(wf["finishedAt"].is_string());
    let d = &wf["tasks"][3];
    let b_result = json!({ "payload": { "n": 2 }, "inputs": { "a": { "payload": { "n": 1 }, "inputs": {} } } });
    let c_result = json!({ "payload": { "n": 3 }, "inputs": { "a": { "payload": { "n": 1 }, "inputs": {} } } });
    assert_eq!(d["result"], json!({ "payload": null, "inputs": { "b": b_result, "c": c_result } }));
}

#[tokio::test]
async fn a_dependent_starts_in_the_commit_that_completes_its_dependency() {
    let server = Server::start().await;
    let tasks: Vec<Value> = (0..4)
        .map(|i| {
            let mut t = json!({ "key": format!("s{i}"), "kind": "echo", "payload": { "step": i } });
            if i > 0 {
                t["dependsOn"] = json!([format!("s{}", i - 1)]);
            }
            t
        })
        .collect();
    let id = server.submit(json!({ "name": "continuation", "tasks": tasks })).await;
    let events = server.wait_finished(&id, MINUTE).await;
    assert_eq!(events.last().unwrap()["type"], "WORKFLOW_COMPLETED");
    for i in 1..4 {
        // The worker that completed s{i-1} claimed s{i} in the same transaction: the three events are one commit.
        let done = seq_of(&events, "TASK_COMPLETED", &format!("s{}", i - 1))[0];
        let queued = seq_of(&events, "TASK_QUEUED", &format!("s{i}"))[0];
        let started = seq_of(&events, "TASK_STARTED", &format!("s{i}"))[0];
        assert!(done < queued && queued < started, "s{i}: {done} {queued} {started}");
        let at = |seq: i64| events.iter().find(|e| e["sequence"] == seq).map(|e| e["at"].clone());
        assert_eq!(at(done), at(started), "s{i} did not start in the commit that completed s{}", i - 1);
    }
    let wf = server.workflow(&id).await;
    let tasks = wf["tasks"].as_array().unwrap();
    for i in 1..4 {
        assert_eq!(tasks[i]["startedAt"], tasks[i - 1]["finishedAt"]);
        assert_eq!(tasks[i]["attempts"], 1);
    }
    // Inputs still reach a task started this way.
    assert_eq!(tasks[1]["result"]["inputs"]["s0"]["payload"], json!({ "step": 0 }));
}

#[tokio::test]
async fn fan_out_of_a_thousand_fans_in_once() {
    let server = Server::start().await;
    let mut tasks = vec![json!({ "key": "root", "kind": "noop" })];
    tasks.extend((0..1000).map(|i| json!({ "key": format!("w{i}"), "kind": "noop", "dependsOn": ["root"] })));
    tasks.push(
        json!({ "key": "sink", "kind": "noop", "dependsOn": (0..1000).map(|i| format!("w{i}")).collect::<Vec<_>>() }),
    );
    let id = server.submit(json!({ "name": "fan", "tasks": tasks })).await;
    let events = server.wait_finished(&id, MINUTE * 2).await;
    common::assert_gapless(&events, 1);
    assert_eq!(events.last().unwrap()["type"], "WORKFLOW_COMPLETED");
    let sink_started = seq_of(&events, "TASK_STARTED", "sink");
    assert_eq!(sink_started.len(), 1, "fan-in starts once");
    let last_leaf = events
        .iter()
        .filter(|e| e["type"] == "TASK_COMPLETED" && e["taskKey"].as_str().is_some_and(|k| k.starts_with('w')))
        .map(|e| e["sequence"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(sink_started[0] > last_leaf);
    assert_eq!(seq_of(&events, "TASK_QUEUED", "sink").len(), 1);
    let completed = events.iter().filter(|e| e["type"] == "TASK_COMPLETED").count();
    assert_eq!(completed, 1002);
}

#[tokio::test]
async fn failing_task_is_retried_with_backoff_then_completes() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "flaky", "tasks": [{
            "key": "f", "kind": "fail", "payload": { "message": "boom", "failTimes": 2 },
            "retry": { "maxAttempts": 3, "initialDelayMs": 300, "multiplier": 2.0, "jitter": true }
        }] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    assert_eq!(
        types(&events),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED",
            "TASK_STARTED",
            "TASK_FAILED",
            "TASK_RETRYING",
            "TASK_STARTED",
            "TASK_FAILED",
            "TASK_RETRYING",
            "TASK_STARTED",
            "TASK_COMPLETED",
            "WORKFLOW_COMPLETED"
        ]
    );
    assert_eq!(events[3]["data"]["error"], "boom");
    assert_eq!(events[9]["data"]["attempt"], 3);
    // Gaps between a failure and the next start follow the policy: 300 ms then 600 ms, ±20 % jitter.
    let at = |i: usize| parse_ms(events[i]["at"].as_str().unwrap());
    for (fail_idx, start_idx, base) in [(3, 5, 300.0), (6, 8, 600.0)] {
        let gap = at(start_idx) - at(fail_idx);
        assert!(gap >= base * 0.8 - 5.0, "gap {gap} ms shorter than the policy allows (base {base})");
        assert!(gap <= base * 1.2 + 400.0, "gap {gap} ms far longer than the policy (base {base})");
        let delay = events[fail_idx + 1]["data"]["delayMs"].as_f64().unwrap();
        assert!((base * 0.8..=base * 1.2).contains(&delay), "announced delay {delay}");
    }
    let wf = server.workflow(&id).await;
    assert_eq!(wf["tasks"][0]["attempts"], 3);
    assert_eq!(wf["tasks"][0]["result"], json!({ "attempt": 3 }));
}

#[tokio::test]
async fn exhausted_retries_fail_the_workflow_and_cancel_downstream() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "doomed", "tasks": [
            { "key": "f", "kind": "fail", "payload": { "message": "nope", "failTimes": 2 },
              "retry": { "maxAttempts": 2, "initialDelayMs": 50, "jitter": false } },
            { "key": "after", "kind": "noop", "dependsOn": ["f"] },
            { "key": "later", "kind": "noop", "dependsOn": ["after"] },
        ] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    assert_eq!(
        types(&events),
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED",
            "TASK_STARTED",
            "TASK_FAILED",
            "TASK_RETRYING",
            "TASK_STARTED",
            "TASK_FAILED",
            "TASK_CANCELLED",
            "TASK_CANCELLED",
            "WORKFLOW_FAILED"
        ]
    );
    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "FAILED");
    assert!(wf["finishedAt"].is_string());
    let statuses: Vec<_> =
        wf["tasks"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap().to_owned()).collect();
    assert_eq!(statuses, vec!["FAILED", "CANCELLED", "CANCELLED"]);
    assert_eq!(wf["tasks"][0]["error"], "nope");
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_promptly() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "slow", "tasks": [{
            "key": "s", "kind": "sleep", "payload": { "ms": 5000 }, "timeoutMs": 200, "retry": { "maxAttempts": 1 }
        }] }))
        .await;
    let events = server.wait_finished(&id, MINUTE).await;
    assert_eq!(
        types(&events),
        vec!["WORKFLOW_STARTED", "TASK_QUEUED", "TASK_STARTED", "TASK_FAILED", "WORKFLOW_FAILED"]
    );
    assert_eq!(events[3]["data"]["error"], "timed out after 200 ms");
    let took = parse_ms(events[3]["at"].as_str().unwrap()) - parse_ms(events[2]["at"].as_str().unwrap());
    assert!(took < 1000.0, "timed out after {took} ms");
    assert_eq!(server.workflow(&id).await["tasks"][0]["error"], "timed out after 200 ms");
}

#[tokio::test]
async fn a_long_attempt_is_seen_running_while_it_runs_and_a_short_one_records_its_start_with_its_end() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "long", "tasks": [
            { "key": "quick", "kind": "noop" },
            { "key": "long", "kind": "sleep", "payload": { "ms": 1500 } }
        ] }))
        .await;
    let mut events = server
        .subscribe(
            "subscription($id: ID!) { workflowEvents(workflowId: $id, afterSequence: 0) { type taskKey at } }",
            json!({ "id": id }),
        )
        .await;
    // The long attempt's claim is written soon after it starts (TASKORCH_CLAIM_AFTER_MS), long before it ends.
    let started = loop {
        let event = tokio::time::timeout(MINUTE, events.next()).await.expect("events").expect("event");
        let e = &event["workflowEvents"];
        if e["type"] == "TASK_STARTED" && e["taskKey"] == "long" {
            break parse_ms(e["at"].as_str().unwrap());
        }
    };
    let wf = server.workflow(&id).await;
    let long = wf["tasks"].as_array().unwrap().iter().find(|t| t["key"] == "long").unwrap();
    assert_eq!(long["status"], "RUNNING", "{wf}");
    assert!(long["startedAt"].is_string());
    let all = server.wait_finished(&id, MINUTE).await;
    let of = |key: &str| -> Vec<String> {
        all.iter().filter(|e| e["taskKey"] == key).map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(of("quick"), ["TASK_QUEUED", "TASK_STARTED", "TASK_COMPLETED"]);
    assert_eq!(of("long"), ["TASK_QUEUED", "TASK_STARTED", "TASK_COMPLETED"]);
    let done = all.iter().find(|e| e["type"] == "TASK_COMPLETED" && e["taskKey"] == "long").unwrap();
    let ran = parse_ms(done["at"].as_str().unwrap()) - started;
    assert!(ran > 1000.0, "TASK_STARTED only {ran} ms before the end of a 1.5 s attempt");
    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "COMPLETED");
    for t in wf["tasks"].as_array().unwrap() {
        let (start, end) = (parse_ms(t["startedAt"].as_str().unwrap()), parse_ms(t["finishedAt"].as_str().unwrap()));
        assert!(start <= end, "{t}");
    }
}

#[tokio::test]
async fn a_high_priority_task_overtakes_the_backlog() {
    let server = Server::start_with(ServerOptions {
        worker: true,
        env: vec![("TASKORCH_WORKER_CONCURRENCY".into(), "1".into())],
        ..ServerOptions::default()
    })
    .await;
    // The single worker slot is busy with a gate task while the backlog and the urgent task are queued, so the
    // order in which they start is the queue's priority order alone (not a race with the submissions).
    let gate = server
        .submit(json!({ "name": "gate", "tasks": [{ "key": "gate", "kind": "sleep", "payload": { "ms": 2000 } }] }))
        .await;
    let mut gate_events = server
        .subscribe("subscription($id: ID!) { workflowEvents(workflowId: $id) { type } }", json!({ "id": gate }))
        .await;
    loop {
        let event = tokio::time::timeout(MINUTE, gate_events.next()).await.expect("gate starts").expect("event");
        if event["workflowEvents"]["type"] == "TASK_STARTED" {
            break;
        }
    }
    let backlog: Vec<Value> = (0..50)
        .map(|i| json!({ "key": format!("low{i}"), "kind": "sleep", "payload": { "ms": 5 }, "priority": 0 }))
        .collect();
    let low = server.submit(json!({ "name": "backlog", "tasks": backlog })).await;
    let high = server
        .submit(json!({ "name": "urgent", "tasks": [{ "key": "vip", "kind": "sleep", "payload": { "ms": 1 }, "priority": 9 }] }))
        .await;
    let gate_done = server.wait_finished(&gate, MINUTE).await;
    assert_eq!(types(&gate_done).last().map(String::as_str), Some("WORKFLOW_COMPLETED"));
    server.wait_finished(&high, MINUTE).await;
    server.wait_finished(&low, MINUTE).await;
    let vip_start = server.workflow(&high).await["tasks"][0]["startedAt"].as_str().map(parse_ms).unwrap();
    let lows = server.workflow(&low).await;
    let before: Vec<&str> = lows["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| parse_ms(t["startedAt"].as_str().unwrap()) < vip_start)
        .map(|t| t["key"].as_str().unwrap_or_default())
        .collect();
    assert!(before.is_empty(), "low-priority tasks {before:?} started before the high-priority one");
}

#[tokio::test]
async fn bad_handler_input_fails_the_task_with_a_clear_error_and_the_worker_goes_on() {
    let server = Server::start().await;
    let one = json!({ "maxAttempts": 1 });
    let cases = [
        (
            json!({ "key": "k", "kind": "no-such-kind", "retry": one }),
            "no handler is registered for task kind `no-such-kind`",
        ),
        (json!({ "key": "k", "kind": "sleep", "payload": { "ms": "soon" }, "retry": one }), "sleep expects"),
        (json!({ "key": "k", "kind": "http", "payload": { "method": "GET" }, "retry": one }), "http expects"),
        (json!({ "key": "k", "kind": "http", "payload": { "url": "not a url" }, "retry": one }), "invalid url"),
        (json!({ "key": "k", "kind": "shell", "payload": { "program": "true" }, "retry": one }), "--allow-shell"),
    ];
    for (task, needle) in cases {
        let id = server.submit(json!({ "name": "bad", "tasks": [task] })).await;
        server.wait_finished(&id, MINUTE).await;
        let wf = server.workflow(&id).await;
        assert_eq!(wf["status"], "FAILED");
        let error = wf["tasks"][0]["error"].as_str().unwrap();
        assert!(error.contains(needle), "`{error}` should contain `{needle}`");
    }
    let ok = server.submit(json!({ "name": "fine", "tasks": [{ "key": "a", "kind": "noop" }] })).await;
    server.wait_finished(&ok, MINUTE).await;
    assert_eq!(server.workflow(&ok).await["status"], "COMPLETED");
}

#[tokio::test]
async fn a_result_nested_too_deep_to_store_fails_its_task_and_the_workflow_stays_readable() {
    let server = Server::start().await;
    // Each `echo` returns `{payload, inputs: {dependency: result}}`: two levels deeper than its dependency's result.
    let tasks: Vec<Value> = (0..70)
        .map(|i| {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("t{}", i - 1)] };
            json!({ "key": format!("t{i}"), "kind": "echo", "dependsOn": deps, "retry": { "maxAttempts": 1 } })
        })
        .collect();
    let id = server.submit(json!({ "name": "deep", "tasks": tasks })).await;
    server.wait_finished(&id, MINUTE).await;
    let wf = server.workflow(&id).await;
    assert_eq!(wf["status"], "FAILED", "{wf}");
    let tasks = wf["tasks"].as_array().expect("the tasks read back");
    let failed: Vec<&Value> = tasks.iter().filter(|t| t["status"] == "FAILED").collect();
    assert_eq!(failed.len(), 1, "{wf}");
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("levels deep") && error.contains("limit of 100"), "{error}");
    assert!(tasks.iter().filter(|t| t["status"] == "COMPLETED").count() >= 45, "the tasks before it completed: {wf}");
    // The page of workflows reads too.
    let page = server.data("{ workflows(first: 5) { edges { node { tasks { key result } } } } }", json!({})).await;
    assert_eq!(page["workflows"]["edges"][0]["node"]["tasks"].as_array().map(Vec::len), Some(70));
}

#[tokio::test]
async fn sigterm_lets_running_attempts_finish_and_exits_cleanly() {
    let mut server = Server::start().await;
    let id = server
        .submit(json!({ "name": "drain", "tasks": [{ "key": "s", "kind": "sleep", "payload": { "ms": 800 } }] }))
        .await;
    let mut sub = server
        .subscribe("subscription($id: ID!) { workflowEvents(workflowId: $id) { type } }", json!({ "id": id }))
        .await;
    while let Some(e) = sub.next().await {
        if e["workflowEvents"]["type"] == "TASK_STARTED" {
            break;
        }
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let db = rusqlite_free_status(&server, &id).await;
    assert_eq!(db, "COMPLETED", "the in-flight attempt finished within the grace period");
}

/// Reads a workflow's status after its server stopped, through a second server on the same database.
async fn rusqlite_free_status(stopped: &Server, id: &str) -> String {
    let again = stopped.sibling(ServerOptions { worker: false, ..ServerOptions::default() }).await;
    again.workflow(id).await["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn attempts_that_cannot_finish_in_the_grace_period_are_released_and_rerun() {
    let mut server = Server::start_with(ServerOptions {
        env: vec![("TASKORCH_GRACE_MS".into(), "300".into())],
        ..ServerOptions::default()
    })
    .await;
    let id = server
        .submit(json!({ "name": "long", "tasks": [{ "key": "s", "kind": "sleep", "payload": { "ms": 3000 } }] }))
        .await;
    let mut sub = server
        .subscribe("subscription($id: ID!) { workflowEvents(workflowId: $id) { type } }", json!({ "id": id }))
        .await;
    while let Some(e) = sub.next().await {
        if e["workflowEvents"]["type"] == "TASK_STARTED" {
            break;
        }
    }
    assert!(server.terminate().success());
    let again = server.sibling(ServerOptions::default()).await;
    let events = again.wait_finished(&id, MINUTE).await;
    let t = types(&events);
    assert_eq!(
        t,
        vec![
            "WORKFLOW_STARTED",
            "TASK_QUEUED",
            "TASK_STARTED",
            "TASK_QUEUED",
            "TASK_STARTED",
            "TASK_COMPLETED",
            "WORKFLOW_COMPLETED"
        ]
    );
    let wf = again.workflow(&id).await;
    assert_eq!(wf["tasks"][0]["attempts"], 1, "a released attempt does not count");
}

#[tokio::test]
async fn killing_a_worker_process_repeatedly_loses_nothing() {
    let server = Server::start_with(ServerOptions { worker: false, ..ServerOptions::default() }).await;
    let worker_args =
        ["--lease-ms", "1500", "--heartbeat-ms", "300", "--reaper-period-ms", "300", "--redeliver-after-ms", "1000"];
    let mut ids = Vec::new();
    for w in 0..200 {
        let tasks: Vec<Value> = (0..10)
            .map(|i| {
                let mut t = json!({ "key": format!("t{i}"), "kind": "sleep", "payload": { "ms": 40 },
                                    "retry": { "maxAttempts": 10, "initialDelayMs": 10, "jitter": false } });
                if i > 0 && w % 2 == 0 {
                    t["dependsOn"] = json!([format!("t{}", i - 1)]);
                }
                t
            })
            .collect();
        ids.push(server.submit(json!({ "name": format!("crash{w}"), "tasks": tasks })).await);
    }
    let mut worker = server.spawn_worker(&worker_args);
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(700 + 150 * round)).await;
        let _ = worker.kill(); // SIGKILL
        let _ = worker.wait();
        worker = server.spawn_worker(&worker_args);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        server.wait_finished(id, remaining).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();
    let mut lost_attempts = 0;
    for id in &ids {
        let wf = server.workflow(id).await;
        assert_eq!(wf["status"], "COMPLETED", "{id}");
        let events = server.events(id).await;
        common::assert_gapless(&events, 1);
        let mut completed: HashMap<String, Vec<i64>> = HashMap::new();
        for e in events.iter().filter(|e| e["type"] == "TASK_COMPLETED") {
            completed
                .entry(e["taskKey"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["data"]["attempt"].as_i64().unwrap());
        }
        lost_attempts += events.iter().filter(|e| e["type"] == "TASK_FAILED").count();
        for t in wf["tasks"].as_array().unwrap() {
            assert_eq!(t["status"], "COMPLETED");
            let key = t["key"].as_str().unwrap();
            let attempts = completed.get(key).cloned().unwrap_or_default();
            assert_eq!(attempts.len(), 1, "task {key} of {id} has exactly one completed attempt");
            // The accepted result is from the attempt that held the task last, never from a lost one.
            assert_eq!(attempts[0], t["attempts"].as_i64().unwrap(), "task {key} of {id}");
        }
    }
    eprintln!("attempts lost to SIGKILL and recovered: {lost_attempts}");
}
