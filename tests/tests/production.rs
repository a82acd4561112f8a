//! Scale-out and failure tests. The first three need the production services (run by `.ci/run` with
//! `TASKORCH_TEST_AMQP_URL` and `TASKORCH_TEST_REDIS_URL`); the others run on every backend.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{Server, ServerOptions, production_services};
use serde_json::{Value, json};

const NO_WORKER: ServerOptions = ServerOptions { worker: false, env: Vec::new(), log_file: None };

fn require_services(test: &str) -> bool {
    if production_services() {
        return true;
    }
    eprintln!("{test}: needs RabbitMQ and Redis (TASKORCH_TEST_AMQP_URL, TASKORCH_TEST_REDIS_URL); .ci/run sets them");
    false
}

fn chain(name: &str, n: usize, ms: u64) -> Value {
    let tasks: Vec<Value> = (0..n)
        .map(|i| {
            let mut t = json!({ "key": format!("t{i}"), "kind": "sleep", "payload": { "ms": ms },
                                "retry": { "maxAttempts": 10, "initialDelayMs": 20, "jitter": false } });
            if i > 0 {
                t["dependsOn"] = json!([format!("t{}", i - 1)]);
            }
            t
        })
        .collect();
    json!({ "name": name, "tasks": tasks })
}

/// Every workflow completed, each task exactly once, with gapless events.
async fn assert_all_completed_once(server: &Server, ids: &[String]) {
    for id in ids {
        let wf = server.workflow(id).await;
        assert_eq!(wf["status"], "COMPLETED", "{id}");
        let events = server.events(id).await;
        common::assert_gapless(&events, 1);
        let mut completed: HashMap<String, usize> = HashMap::new();
        for e in events.iter().filter(|e| e["type"] == "TASK_COMPLETED") {
            *completed.entry(e["taskKey"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        for t in wf["tasks"].as_array().unwrap() {
            assert_eq!(t["status"], "COMPLETED");
            assert_eq!(completed.get(t["key"].as_str().unwrap()), Some(&1), "task {} of {id} completed once", t["key"]);
        }
    }
}

#[tokio::test]
async fn two_servers_and_two_workers_share_the_work_and_subscribers_on_either_see_everything() {
    if !require_services("two_servers") {
        return;
    }
    let a = Server::start_with(NO_WORKER).await;
    let b = a.sibling(NO_WORKER).await;
    let mut w1 = a.spawn_worker(&[]);
    let mut w2 = a.spawn_worker(&[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(a.submit(chain(&format!("scale{i}"), 5, 10)).await);
    }
    // Subscriptions on server B, which submitted nothing: events reach it through Redis (or the log).
    let mut subs = Vec::new();
    for id in &ids {
        let events = b.wait_finished(id, Duration::from_secs(120));
        subs.push(events);
    }
    for (events, id) in futures::future::join_all(subs).await.into_iter().zip(&ids) {
        common::assert_gapless(&events, 1);
        assert_eq!(events.last().unwrap()["type"], "WORKFLOW_COMPLETED", "{id}");
        assert_eq!(events.len(), 1 + 5 * 3 + 1);
    }
    assert_all_completed_once(&a, &ids).await;
    let _ = w1.kill();
    let _ = w2.kill();
    let _ = w1.wait();
    let _ = w2.wait();
}

#[tokio::test]
async fn broker_and_bus_outages_and_a_killed_worker_lose_nothing() {
    if !require_services("outages") {
        return;
    }
    let a = Server::start_with(NO_WORKER).await;
    let b = a.sibling(NO_WORKER).await;
    let args = ["--lease-ms", "2000", "--heartbeat-ms", "400", "--reaper-period-ms", "500"];
    let mut w1 = a.spawn_worker(&args);
    let mut w2 = a.spawn_worker(&args);
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(a.submit(chain(&format!("chaos{i}"), 10, 5)).await);
    }
    // Subscribers on B for a sample of workflows, listening through the whole run.
    let watchers: Vec<_> = ids.iter().step_by(25).map(|id| b.wait_finished(id, Duration::from_secs(300))).collect();
    let watching = futures::future::join_all(watchers);
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = w1.kill(); // SIGKILL
        let _ = w1.wait();
        w1 = a.spawn_worker(&args);
        tokio::time::sleep(Duration::from_millis(800)).await;
        close_broker_connections(&a);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let out = Command::new("redis-cli").args(["CLIENT", "KILL", "TYPE", "pubsub"]).output().expect("redis-cli");
        assert!(out.status.success(), "redis-cli CLIENT KILL failed");
    };
    let (seen, ()) = tokio::join!(watching, chaos);
    for events in seen {
        common::assert_gapless(&events, 1);
        assert_eq!(events.last().unwrap()["type"], "WORKFLOW_COMPLETED");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    for id in &ids {
        a.wait_finished(id, deadline.saturating_duration_since(tokio::time::Instant::now())).await;
    }
    assert_all_completed_once(&a, &ids).await;
    let _ = w1.kill();
    let _ = w2.kill();
    let _ = w1.wait();
    let _ = w2.wait();
}

/// Closes this test's RabbitMQ connections (named after its namespace), like `rabbitmqctl close_all_connections`
/// but without disturbing tests running beside it.
fn close_broker_connections(server: &Server) {
    let ns = server.backend_env.iter().find(|(k, _)| k == "TASKORCH_NAMESPACE").map(|(_, v)| v.clone()).unwrap();
    let out = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(&ns)) {
        if let Some(pid) = line.split_whitespace().next() {
            let status = Command::new("rabbitmqctl").args(["-q", "close_connection", pid, "chaos test"]).status();
            closed += usize::from(status.is_ok_and(|s| s.success()));
        }
    }
    assert!(closed > 0, "no RabbitMQ connection of namespace {ns} found in:\n{text}");
}

#[tokio::test]
async fn a_kind_restricted_worker_never_receives_other_kinds() {
    let server = Server::start_with(NO_WORKER).await;
    let mut http_only = server.spawn_worker(&["--kinds", "http"]);
    let id = server
        .submit(json!({ "name": "kinds", "tasks": [
            { "key": "ping", "kind": "http", "payload": { "url": format!("{}/healthz", server.base) } },
            { "key": "nap", "kind": "sleep", "payload": { "ms": 10 } },
        ] }))
        .await;
    let mut sub = server
        .subscribe("subscription($id: ID!) { workflowEvents(workflowId: $id) { type taskKey } }", json!({ "id": id }))
        .await;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), sub.next()).await.expect("event").expect("open");
        let e = &e["workflowEvents"];
        assert!(!(e["type"] == "TASK_STARTED" && e["taskKey"] == "nap"), "the http-only worker started a sleep task");
        if e["type"] == "TASK_COMPLETED" && e["taskKey"] == "ping" {
            break;
        }
    }
    // Well after the http task: the sleep task is still waiting for a worker that serves it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let wf = server.workflow(&id).await;
    assert_eq!(wf["tasks"][0]["result"]["status"], 200);
    assert_eq!(wf["tasks"][1]["status"], "QUEUED");
    assert_eq!(wf["tasks"][1]["attempts"], 0);
    let mut any = server.spawn_worker(&[]);
    server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(server.workflow(&id).await["status"], "COMPLETED");
    for w in [&mut http_only, &mut any] {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[tokio::test]
async fn a_server_killed_during_a_large_submission_leaves_all_or_nothing() {
    for delay_ms in [30u64, 150, 400] {
        let mut server = Server::start_with(NO_WORKER).await;
        let tasks: Vec<Value> = (0..10_000)
            .map(|i| {
                if i == 0 {
                    json!({ "key": "t0", "kind": "noop" })
                } else {
                    json!({ "key": format!("t{i}"), "kind": "noop", "dependsOn": ["t0"] })
                }
            })
            .collect();
        let body = json!({ "query": "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }",
                           "variables": { "i": { "name": "big", "tasks": tasks } } });
        let http = server.http().clone();
        let request = http.post(server.graphql_url()).json(&body).send();
        let kill = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            server.kill_hard();
        };
        let (_, ()) = tokio::join!(request, kill);
        let again = server.sibling(NO_WORKER).await;
        let data =
            again.data("{ workflows(first: 10) { edges { node { id taskCount tasks { key } } } } }", json!({})).await;
        let edges = data["workflows"]["edges"].as_array().unwrap();
        assert!(edges.len() <= 1);
        if let Some(e) = edges.first() {
            assert_eq!(e["node"]["taskCount"], 10_000);
            assert_eq!(e["node"]["tasks"].as_array().unwrap().len(), 10_000, "a workflow is never half-written");
        }
    }
}

#[test]
fn an_unusable_service_url_is_a_one_line_error_naming_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let cases = [
        ("TASKORCH_DATABASE_URL", "mysql://nowhere/db".to_owned(), vec![]),
        ("TASKORCH_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none".to_owned(), vec![]),
        (
            "TASKORCH_AMQP_URL",
            "amqp://guest:secret@127.0.0.1:1/%2f".to_owned(),
            vec![("TASKORCH_DATABASE_URL", sqlite.clone())],
        ),
        ("TASKORCH_REDIS_URL", "redis://127.0.0.1:1".to_owned(), vec![("TASKORCH_DATABASE_URL", sqlite.clone())]),
    ];
    for (var, value, extra) in cases {
        for bin in ["taskorch", "taskorch-worker"] {
            let out = Command::new(common::binary(bin))
                .current_dir(dir.path())
                .env("TASKORCH_LISTEN", "127.0.0.1:0")
                .env(var, &value)
                .envs(extra.iter().cloned())
                .output()
                .expect("run");
            assert!(!out.status.success(), "{bin} started with {var}={value}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
            assert!(last.contains(var), "{bin}: `{last}` should name {var}");
            assert!(!stderr.contains("panicked"), "{bin} panicked: {stderr}");
            assert!(!stderr.contains("secret"), "{bin} printed a password: {stderr}");
        }
    }
}

/// Messages are transient: the database, not the broker, is the durable record of a dispatch. A message the broker
/// lost (here: purged, as a broker restart would drop it) is made due again once its redelivery delay passes and
/// published anew, and the task runs. (Persistent messages would be purged the same way: this tests the recovery
/// that transient messages rely on.)
#[tokio::test]
async fn a_dispatch_whose_message_the_broker_lost_is_published_again() {
    if !require_services("lost_message") {
        return;
    }
    let timing = vec![
        ("TASKORCH_REDELIVER_AFTER_MS".to_owned(), "1000".to_owned()),
        ("TASKORCH_REAPER_PERIOD_MS".to_owned(), "200".to_owned()),
    ];
    let server = Server::start_with(ServerOptions { worker: false, env: timing, log_file: None }).await;
    let ns = server.backend_env.iter().find(|(k, _)| k == "TASKORCH_NAMESPACE").map(|(_, v)| v.clone()).unwrap();
    let id = server.submit(json!({ "name": "lost", "tasks": [{ "key": "a", "kind": "noop" }] })).await;
    // No worker yet: the message waits in a queue of the namespace. Drop it there.
    let prefix = format!("{ns}.");
    let holding = || {
        let out =
            Command::new("rabbitmqctl").args(["-q", "list_queues", "name", "messages"]).output().expect("rabbitmqctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(name, n)| name.starts_with(&prefix) && n.trim().parse::<u64>().is_ok_and(|n| n > 0))
            .map(|(name, _)| name.to_owned())
            .collect::<Vec<String>>()
    };
    let mut purged = Vec::new();
    for _ in 0..100 {
        purged = holding();
        if !purged.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!purged.is_empty(), "the dispatch of {id} never reached a queue of {ns}");
    for queue in &purged {
        let status = Command::new("rabbitmqctl").args(["-q", "purge_queue", queue]).status().expect("rabbitmqctl");
        assert!(status.success(), "purge {queue}");
    }
    let _worker = server.spawn_worker(&[]);
    let events = server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(server.workflow(&id).await["status"], "COMPLETED");
    assert_eq!(events.iter().filter(|e| e["type"] == "TASK_COMPLETED").count(), 1);
}
