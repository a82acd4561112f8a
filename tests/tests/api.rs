//! Black-box tests of the workflow API (submit, read, list, idempotency, validation errors, schema).

mod common;

use common::{Server, ServerOptions};
use serde_json::{Value, json};

const LIST: &str = "query($first: Int, $after: String, $filter: WorkflowFilter) { workflows(first: $first, after: $after, filter: $filter) { edges { cursor node { id name status } } pageInfo { hasNextPage endCursor } } }";

fn no_worker() -> ServerOptions {
    ServerOptions { worker: false, ..ServerOptions::default() }
}

async fn count_workflows(server: &Server) -> usize {
    let data = server.data(LIST, json!({ "first": 1000 })).await;
    data["workflows"]["edges"].as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test]
async fn submitted_workflow_reads_back_with_its_tasks() {
    let server = Server::start_with(no_worker()).await;
    let id = server
        .submit(json!({
            "name": "orders",
            "tasks": [
                { "key": "charge", "kind": "echo", "payload": { "amount": 42 }, "priority": 7, "timeoutMs": 5000 },
                { "key": "ship", "kind": "noop", "dependsOn": ["charge"] },
            ]
        }))
        .await;
    let wf = server.workflow(&id).await;
    assert_eq!(wf["name"], "orders");
    assert_eq!(wf["status"], "RUNNING");
    assert!(wf["createdAt"].is_string() && wf["startedAt"].is_string() && wf["finishedAt"].is_null());
    let tasks = wf["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["key"], "charge");
    assert_eq!(tasks[0]["status"], "QUEUED");
    assert_eq!(tasks[0]["payload"], json!({ "amount": 42 }));
    assert_eq!(tasks[0]["priority"], 7);
    assert_eq!(tasks[0]["attempts"], 0);
    assert_eq!(tasks[1]["status"], "PENDING");
    assert_eq!(tasks[1]["dependsOn"], json!(["charge"]));
    assert_eq!(tasks[1]["priority"], 5, "default priority");

    let one = server
        .data("query($id: ID!) { workflow(id: $id) { task(key: \"ship\") { kind } } }", json!({ "id": id }))
        .await;
    assert_eq!(one["workflow"]["task"]["kind"], "noop");
    let events = server.events(&id).await;
    assert_eq!(common::types(&events), vec!["WORKFLOW_STARTED", "TASK_QUEUED"]);
    assert_eq!(events[1]["taskKey"], "charge");
    common::assert_gapless(&events, 1);

    let missing = server
        .gql("query($id: ID!) { workflow(id: $id) { id } }", json!({ "id": uuid::Uuid::new_v4().to_string() }))
        .await;
    assert!(missing["data"]["workflow"].is_null(), "{missing}");
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND", "{missing}");
    let (code, message) = server.error("{ workflow(id: \"nope\") { id } }", json!({})).await;
    assert_eq!(code, "VALIDATION_FAILED");
    assert!(message.contains("nope"), "{message}");
}

#[tokio::test]
async fn a_thousand_workflows_paginate_with_cursors_and_filters() {
    let server = Server::start_with(no_worker()).await;
    let mut submitted = Vec::new();
    for i in 0..1000 {
        let name = if i % 4 == 0 { "even-quarter" } else { "rest" };
        submitted.push(server.submit(json!({ "name": name, "tasks": [{ "key": "a", "kind": "noop" }] })).await);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let data = server.data(LIST, json!({ "first": 100, "after": after })).await;
        let conn = &data["workflows"];
        let edges = conn["edges"].as_array().unwrap();
        seen.extend(edges.iter().map(|e| e["node"]["id"].as_str().unwrap().to_owned()));
        pages += 1;
        if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
        assert!(pages <= 10, "more pages than expected");
    }
    assert_eq!(pages, 10);
    submitted.reverse();
    assert_eq!(seen, submitted, "every workflow once, newest first");

    let data = server.data(LIST, json!({ "first": 1000, "filter": { "name": "even-quarter" } })).await;
    assert_eq!(data["workflows"]["edges"].as_array().unwrap().len(), 250);
    let data = server.data(LIST, json!({ "first": 1000, "filter": { "status": "COMPLETED" } })).await;
    assert_eq!(data["workflows"]["edges"].as_array().unwrap().len(), 0);
    let data = server.data(LIST, json!({ "first": 1000, "filter": { "status": "RUNNING", "name": "rest" } })).await;
    assert_eq!(data["workflows"]["edges"].as_array().unwrap().len(), 750);

    let (code, _) = server.error(LIST, json!({ "first": 5000 })).await;
    assert_eq!(code, "VALIDATION_FAILED");
    let (code, _) = server.error(LIST, json!({ "first": 10, "after": "garbage" })).await;
    assert_eq!(code, "VALIDATION_FAILED");
}

#[tokio::test]
async fn resubmitting_with_the_same_idempotency_key_returns_the_original() {
    let server = Server::start_with(no_worker()).await;
    let input = json!({ "name": "pay", "idempotencyKey": "order-17", "tasks": [{ "key": "a", "kind": "noop", "payload": { "x": 1 } }] });
    let first = server.submit(input.clone()).await;
    let again = server.submit(input.clone()).await;
    assert_eq!(first, again);
    assert_eq!(count_workflows(&server).await, 1);

    let mut other = input.clone();
    other["tasks"][0]["payload"] = json!({ "x": 2 });
    let (code, message) = server
        .error("mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }", json!({ "i": other }))
        .await;
    assert_eq!(code, "CONFLICT");
    assert!(message.contains("order-17"), "{message}");
    assert_eq!(count_workflows(&server).await, 1);
}

#[tokio::test]
async fn every_bad_input_has_its_code_and_writes_nothing() {
    let server = Server::start_with(ServerOptions {
        worker: false,
        env: vec![("TASKORCH_MAX_TASKS".into(), "5".into()), ("TASKORCH_MAX_PAYLOAD_BYTES".into(), "100".into())],
        ..ServerOptions::default()
    })
    .await;
    let t = |key: &str, deps: &[&str]| json!({ "key": key, "kind": "noop", "dependsOn": deps });
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([t("a", &["c"]), t("b", &["a"]), t("c", &["b"])]), "CYCLE_DETECTED", "->"),
        (json!([t("a", &["a"])]), "VALIDATION_FAILED", "depends on itself"),
        (json!([t("a", &["ghost"])]), "VALIDATION_FAILED", "ghost"),
        (json!([t("a", &[]), t("a", &[])]), "VALIDATION_FAILED", "more than once"),
        (json!([t("a", &[]), t("b", &["a", "a"])]), "VALIDATION_FAILED", "dependency `a` more than once"),
        (json!([{ "key": "a", "kind": "noop", "idempotencyKey": "" }]), "VALIDATION_FAILED", "idempotency keys"),
        (json!([]), "VALIDATION_FAILED", "at least one task"),
        (json!((0..6).map(|i| t(&format!("t{i}"), &[])).collect::<Vec<_>>()), "VALIDATION_FAILED", "at most 5"),
        (
            json!([{ "key": "a", "kind": "noop", "payload": { "blob": "x".repeat(200) } }]),
            "VALIDATION_FAILED",
            "limit of 100",
        ),
        (
            json!([{ "key": "a", "kind": "noop", "payload": (0..101).fold(json!(1), |v, _| json!([v])) }]),
            "VALIDATION_FAILED",
            "101 levels deep",
        ),
        (
            json!([{ "key": "a", "kind": "noop", "idempotencyKey": "é".repeat(257) }]),
            "VALIDATION_FAILED",
            "idempotency keys",
        ),
        (json!([t("bad key!", &[])]), "VALIDATION_FAILED", "bad key!"),
        (json!([{ "key": "a", "kind": "noop", "priority": 10 }]), "VALIDATION_FAILED", "priorit"),
        (json!([{ "key": "a", "kind": "noop", "timeoutMs": 0 }]), "VALIDATION_FAILED", "timeoutMs"),
        (json!([{ "key": "a", "kind": "noop", "retry": { "maxAttempts": 0 } }]), "VALIDATION_FAILED", "maxAttempts"),
        (json!([{ "key": "a", "kind": "noop", "retry": { "multiplier": 0.5 } }]), "VALIDATION_FAILED", "multiplier"),
    ];
    for (tasks, code, needle) in cases {
        let (got, message) = server
            .error(
                "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }",
                json!({ "i": { "name": "bad", "tasks": tasks } }),
            )
            .await;
        assert_eq!(got, code, "{tasks}: {message}");
        assert!(message.contains(needle), "message `{message}` should mention `{needle}`");
    }
    let (code, message) = server
        .error(
            "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }",
            json!({ "i": { "name": "", "tasks": [t("a", &[])] } }),
        )
        .await;
    assert_eq!(code, "VALIDATION_FAILED", "{message}");
    assert_eq!(count_workflows(&server).await, 0, "nothing was written");
}

#[tokio::test]
async fn the_cycle_error_names_the_cycle() {
    let server = Server::start_with(no_worker()).await;
    let body = server
        .gql(
            "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }",
            json!({ "i": { "name": "c", "tasks": [
                { "key": "a", "kind": "noop", "dependsOn": ["c"] },
                { "key": "b", "kind": "noop", "dependsOn": ["a"] },
                { "key": "c", "kind": "noop", "dependsOn": ["b"] },
                { "key": "d", "kind": "noop" },
            ] } }),
        )
        .await;
    let err = &body["errors"][0];
    assert_eq!(err["extensions"]["code"], "CYCLE_DETECTED");
    let message = err["message"].as_str().unwrap();
    assert!(
        ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"].iter().any(|c| message.contains(c)),
        "{message}"
    );
    assert!(body["data"].is_null());
}

#[tokio::test]
async fn ten_thousand_task_workflows_are_accepted_and_readable() {
    let server = Server::start_with(no_worker()).await;
    let chain: Vec<Value> = (0..10_000)
        .map(|i| {
            if i == 0 {
                json!({ "key": "t0", "kind": "noop" })
            } else {
                json!({ "key": format!("t{i}"), "kind": "noop", "dependsOn": [format!("t{}", i - 1)] })
            }
        })
        .collect();
    let fan: Vec<Value> = std::iter::once(json!({ "key": "root", "kind": "noop" }))
        .chain((0..9_999).map(|i| json!({ "key": format!("leaf{i}"), "kind": "noop", "dependsOn": ["root"] })))
        .collect();
    for tasks in [chain, fan] {
        let id = server.submit(json!({ "name": "big", "tasks": tasks })).await;
        let wf = server.workflow(&id).await;
        let tasks = wf["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 10_000);
        assert_eq!(tasks.iter().filter(|t| t["status"] == "QUEUED").count(), 1);
        assert_eq!(tasks.iter().filter(|t| t["status"] == "PENDING").count(), 9_999);
    }
}

#[tokio::test]
async fn task_lists_of_a_page_cost_a_constant_number_of_statements() {
    let server = Server::start_with(no_worker()).await;
    for i in 0..100 {
        server.submit(json!({ "name": format!("w{i}"), "tasks": [{ "key": "a", "kind": "noop" }, { "key": "b", "kind": "noop" }] })).await;
    }
    let query = "query($first: Int) { workflows(first: $first) { edges { node { id tasks { key status } } } } }";
    // A scrape itself reads the database (gauges): measure that first and leave it out.
    let s1 = statements(&server).await;
    let s2 = statements(&server).await;
    let scrape = s2 - s1;
    let mut costs = Vec::new();
    for first in [1, 10, 100] {
        let before = statements(&server).await;
        let data = server.data(query, json!({ "first": first })).await;
        let after = statements(&server).await;
        assert_eq!(data["workflows"]["edges"].as_array().unwrap().len(), first);
        costs.push(after - before - scrape);
    }
    assert_eq!(costs[0], costs[2], "statements for 1 and 100 workflows: {costs:?}");
    assert_eq!(costs[2], 2, "one page query plus one batched task query: {costs:?}");
}

async fn statements(server: &Server) -> u64 {
    let text = server.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("taskorch_db_statements_total{pool=\"read\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("taskorch_db_statements_total{pool=\"read\"} in /metrics")
}

#[tokio::test]
async fn queries_work_over_get_and_mutations_do_not() {
    let server = Server::start_with(no_worker()).await;
    let url =
        format!("{}?query={}", server.graphql_url(), "%7B%20workflows%20%7B%20edges%20%7B%20cursor%20%7D%20%7D%20%7D");
    let body: Value = server.http().get(url).send().await.unwrap().json().await.unwrap();
    assert!(body["data"]["workflows"]["edges"].is_array(), "{body}");
    let url = format!(
        "{}?query={}",
        server.graphql_url(),
        "mutation%20%7B%20submitWorkflow(input%3A%7Bname%3A%22x%22%2Ctasks%3A%5B%5D%7D)%20%7B%20id%20%7D%20%7D"
    );
    let resp = server.http().get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn health_endpoints_answer() {
    let server = Server::start_with(no_worker()).await;
    let r = server.http().get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = server.http().get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn schema_graphql_matches_the_server() {
    let out =
        std::process::Command::new(common::binary("taskorch")).arg("print-schema").output().expect("print-schema");
    assert!(out.status.success());
    let live = String::from_utf8(out.stdout).expect("utf8");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../schema.graphql")).unwrap_or_default();
    assert!(
        live == committed,
        "schema.graphql is out of date; regenerate it with:\n  cargo run -q -p taskorch-server --bin taskorch -- print-schema > schema.graphql"
    );
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let server = Server::start_with(ServerOptions {
        worker: false,
        env: vec![("TASKORCH_CORS_ORIGINS".into(), "http://dash.example".into())],
        ..ServerOptions::default()
    })
    .await;
    let preflight = |origin: &'static str| {
        server
            .http()
            .request(reqwest::Method::OPTIONS, server.graphql_url())
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let allowed = preflight("http://dash.example").await.unwrap();
    assert_eq!(allowed.headers().get("access-control-allow-origin").unwrap(), "http://dash.example");
    let refused = preflight("http://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_read_after_another_process_changed_the_workflow_is_never_stale() {
    let a = Server::start_with(no_worker()).await;
    let b = a.sibling(no_worker()).await;
    let id = a.submit(json!({ "name": "watched", "tasks": [{ "key": "t", "kind": "noop" }] })).await;
    let read = "query($id: ID!) { workflow(id: $id) { status tasks { key status } } }";
    // Read three times on A: on the embedded default and with Redis the repeats are kept answers (`server::hot`) ...
    let s1 = statements(&a).await;
    let s2 = statements(&a).await;
    let scrape = s2 - s1;
    let mut costs = Vec::new();
    for _ in 0..3 {
        let before = statements(&a).await;
        let wf = a.data(read, json!({ "id": id })).await;
        costs.push(statements(&a).await - before - scrape);
        assert_eq!(wf["workflow"]["status"], "RUNNING");
        assert_eq!(wf["workflow"]["tasks"][0]["status"], "QUEUED");
    }
    let set = |v: &str| std::env::var(v).is_ok_and(|u| !u.is_empty());
    if !set("TASKORCH_TEST_DATABASE_URL") && !set("TASKORCH_TEST_REDIS_URL") {
        assert_eq!(costs, vec![2, 0, 0], "the repeated read costs no statement");
    }
    if !set("TASKORCH_TEST_DATABASE_URL") || set("TASKORCH_TEST_REDIS_URL") {
        assert_eq!(a.metric("taskorch_graphql_cached_answers_total").await, 2.0, "both repeats were kept answers");
    }
    // ... then another process changes it: A's very next read shows the change.
    b.data("mutation($id: ID!) { cancelWorkflow(id: $id) { id } }", json!({ "id": id })).await;
    let wf = a.data(read, json!({ "id": id })).await;
    assert_eq!(wf["workflow"]["status"], "CANCELLED", "{wf}");
    assert_eq!(wf["workflow"]["tasks"][0]["status"], "CANCELLED", "{wf}");
}
