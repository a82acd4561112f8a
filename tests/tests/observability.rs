//! Metrics, structured logs and readiness, observed from outside the processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, Subscription};
use serde_json::{Value, json};

/// The value of the sample of `name` carrying all `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn metrics_count_executions_by_kind_and_outcome() {
    let server = Server::start().await;
    let id = server
        .submit(json!({ "name": "metered", "tasks": [
            { "key": "a", "kind": "noop" },
            { "key": "b", "kind": "noop", "dependsOn": ["a"] },
            { "key": "f", "kind": "fail", "payload": { "failTimes": 1 }, "retry": { "maxAttempts": 2, "initialDelayMs": 50, "jitter": false } },
        ] }))
        .await;
    server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(server.workflow(&id).await["status"], "COMPLETED");
    let text = server.metrics().await;
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(get("taskorch_task_executions_total", &[("kind", "noop"), ("outcome", "completed")]), 2.0);
    assert_eq!(get("taskorch_task_executions_total", &[("kind", "fail"), ("outcome", "failed")]), 1.0);
    assert_eq!(get("taskorch_task_executions_total", &[("kind", "fail"), ("outcome", "completed")]), 1.0);
    assert_eq!(get("taskorch_task_duration_seconds_count", &[("kind", "noop")]), 2.0);
    assert_eq!(get("taskorch_task_duration_seconds_count", &[("kind", "fail")]), 2.0);
    assert_eq!(get("taskorch_task_queue_wait_seconds_count", &[("kind", "noop")]), 2.0);
    assert_eq!(get("taskorch_task_retries_total", &[]), 1.0);
    // Known series are there before their first occurrence.
    assert_eq!(get("taskorch_lease_expiries_total", &[]), 0.0);
    assert_eq!(get("taskorch_compensations_total", &[("outcome", "failed")]), 0.0);
    assert_eq!(get("taskorch_tasks", &[("status", "COMPLETED")]), 3.0);
    assert_eq!(get("taskorch_dispatch_backlog", &[]), 0.0);
    assert!(get("taskorch_graphql_request_duration_seconds_count", &[("type", "mutation")]) >= 1.0);
    assert!(get("taskorch_graphql_request_duration_seconds_count", &[("type", "query")]) >= 1.0);
    assert_eq!(get("taskorch_workflows_finished_total", &[("event", "WORKFLOW_COMPLETED")]), 1.0);
    assert!(get("taskorch_db_pool_connections", &[("pool", "read"), ("state", "idle")]) >= 0.0);
}

#[tokio::test]
async fn task_log_lines_are_json_with_ids_and_without_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut child = Command::new(common::binary("taskorch"))
        .current_dir(dir.path())
        .env("TASKORCH_LISTEN", "127.0.0.1:0")
        .env("TASKORCH_DATABASE_URL", format!("sqlite://{}/t.db?mode=rwc", dir.path().display()))
        .env("TASKORCH_LOG", "info")
        .env("TASKORCH_LOG_JSON", "true")
        .env("TASKORCH_ADMIN_EMAIL", common::ADMIN_EMAIL)
        .env("TASKORCH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base =
        line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches("/graphql").to_owned();
    let token = common::login(&base, common::ADMIN_EMAIL, common::ADMIN_PASSWORD).await;
    let http = reqwest::Client::new();
    let gql = |query: &'static str, variables: Value| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let body = json!({ "query": query, "variables": variables });
            let resp = http.post(format!("{base}/graphql")).bearer_auth(&token).json(&body).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let watch = |id: String| {
        let (base, token) = (base.replace("http://", "ws://"), token.clone());
        async move {
            let query = "subscription($id: ID!) { workflowEvents(workflowId: $id) { type } }";
            Subscription::open(&base, Some(&token), query, json!({ "id": id })).await
        }
    };
    const SUBMIT: &str = "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }";
    let resp = gql(
        SUBMIT,
        json!({ "i": { "name": "logged", "tasks": [
            { "key": "a", "kind": "echo", "payload": { "card": "4111-SECRET-PAYLOAD" } },
            { "key": "b", "kind": "fail", "retry": { "maxAttempts": 1 } },
        ] } }),
    )
    .await;
    let id = resp["data"]["submitWorkflow"]["id"].as_str().unwrap().to_owned();
    let mut sub = watch(id.clone()).await;
    tokio::time::timeout(Duration::from_secs(60), sub.collect_until_complete()).await.unwrap();
    // A running attempt stopped by a cancellation is logged outside its span, with the same ids.
    let submitted = gql(
        SUBMIT,
        json!({ "i": { "name": "stopped", "tasks": [{ "key": "slow", "kind": "sleep", "payload": { "ms": 30000 } }] } }),
    )
    .await;
    let slow = submitted["data"]["submitWorkflow"]["id"].as_str().unwrap().to_owned();
    let mut sub = watch(slow.clone()).await;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), sub.next()).await.unwrap().expect("open");
        if event["workflowEvents"]["type"] == "TASK_STARTED" {
            break;
        }
    }
    gql("mutation($id: ID!) { cancelWorkflow(id: $id) { status } }", json!({ "id": slow })).await;
    tokio::time::timeout(Duration::from_secs(60), sub.collect_until_complete()).await.unwrap();
    let stopped = |text: &str| text.contains("task cancelled; stopping its attempt");
    for _ in 0..100 {
        if stopped(&std::fs::read_to_string(&log).unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(stopped(&text), "the stop is logged:\n{text}");
    assert!(!text.contains("4111-SECRET-PAYLOAD"), "a payload reached the logs");
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "no JSON log lines:\n{text}");
    let about_tasks: Vec<&Value> = lines.iter().filter(|l| l["span"]["name"] == "task.execute").collect();
    assert!(about_tasks.len() >= 2, "task log lines:\n{text}");
    for l in about_tasks {
        let span = &l["span"];
        assert_eq!(span["workflow.id"], id.as_str(), "{l}");
        assert!(span["task.id"].is_string() && span["task.kind"].is_string() && span["attempt"].is_number(), "{l}");
    }
    // Lines about one task outside its span carry the ids themselves.
    let outside: Vec<&Value> = lines.iter().filter(|l| l["task.key"].is_string()).collect();
    assert!(!outside.is_empty(), "{text}");
    for l in outside {
        assert!(l["workflow.id"].is_string() && l["task.id"].is_string(), "{l}");
        assert!(l["task.kind"].is_string() && l["attempt"].is_number(), "{l}");
    }
}

#[tokio::test]
async fn readiness_follows_redis_going_away_and_coming_back() {
    if !common::production_services() {
        eprintln!("readiness test: needs redis-server (run by .ci/run with the production services)");
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let start_redis = || {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server")
    };
    let mut redis = start_redis();
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = Server::start_with(common::ServerOptions {
        env: vec![("TASKORCH_REDIS_URL".into(), url)],
        ..Default::default()
    })
    .await;
    let ready = || async {
        server.http().get(format!("{}/readyz", server.base)).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    assert_eq!(ready().await, 200);
    let _ = redis.kill();
    let _ = redis.wait();
    let t = std::time::Instant::now();
    while ready().await != 503 {
        assert!(t.elapsed() < Duration::from_secs(5), "/readyz still healthy 5 s after Redis stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut redis = start_redis();
    let t = std::time::Instant::now();
    while ready().await != 200 {
        assert!(t.elapsed() < Duration::from_secs(15), "/readyz not healthy 15 s after Redis returned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = redis.kill();
    let _ = redis.wait();
}

/// A minimal OTLP/HTTP (JSON) collector (Python's standard library), writing each export request to a file.
struct Collector {
    child: std::process::Child,
    url: String,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spans.jsonl");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_POST(self):\n\
             \x20       body = self.rfile.read(int(self.headers.get('content-length', 0)))\n\
             \x20       with open({file:?}, 'ab') as f: f.write(body.replace(b'\\n', b' ') + b'\\n')\n\
             \x20       self.send_response(200); self.send_header('content-type', 'application/json'); self.end_headers(); self.wfile.write(b'{{}}')\n\
             \x20   def log_message(self, *a): pass\n\
             http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n",
            file = file.display().to_string()
        );
        let child = Command::new("python3").args(["-c", &script]).spawn().expect("python3");
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url: format!("http://127.0.0.1:{port}"), file, _dir: dir }
    }

    /// (service name, span) of every span received so far.
    fn spans(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let mut out = Vec::new();
        for doc in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn one_trace_links_submission_dispatch_and_execution_in_another_process() {
    let collector = Collector::start();
    let env = vec![
        ("TASKORCH_OTLP_ENDPOINT".to_owned(), collector.url.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let server = Server::start_with(common::ServerOptions { worker: false, env: env.clone(), log_file: None }).await;
    let mut worker = std::process::Command::new(common::binary("taskorch-worker"))
        .current_dir(server.dir.path())
        .envs(server.backend_env.iter().cloned())
        .envs(env.iter().cloned())
        .env("TASKORCH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let id = server.submit(json!({ "name": "traced", "tasks": [{ "key": "a", "kind": "noop" }, { "key": "b", "kind": "noop", "dependsOn": ["a"] }] })).await;
    server.wait_finished(&id, Duration::from_secs(60)).await;
    let named = |spans: &[(String, Value)], service: &str, name: &str| -> Vec<Value> {
        spans.iter().filter(|(s, sp)| s == service && sp["name"] == name).map(|(_, sp)| sp.clone()).collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let all = collector.spans();
        let submit = named(&all, "taskorch", "workflow.submit");
        if let Some(root) = submit.first() {
            let trace = root["traceId"].as_str().unwrap_or_default().to_owned();
            let in_trace = |v: &Vec<Value>| v.iter().filter(|s| s["traceId"] == trace.as_str()).count();
            // Without a broker the worker process dispatches; with one, every process may.
            let dispatch: Vec<Value> =
                all.iter().filter(|(_, sp)| sp["name"] == "task.dispatch").map(|(_, sp)| sp.clone()).collect();
            let execute = named(&all, "taskorch-worker", "task.execute");
            let complete = named(&all, "taskorch-worker", "task.complete");
            if in_trace(&dispatch) >= 1 && in_trace(&execute) >= 2 && in_trace(&complete) >= 2 {
                // An execute span is the child of a dispatch span (carried through the queue from another process)
                // or, for a dependent the worker started in the commit that completed its dependency, of that
                // completion's span.
                let parents: Vec<&str> =
                    dispatch.iter().chain(&complete).filter_map(|d| d["spanId"].as_str()).collect();
                let executed: Vec<&Value> = execute.iter().filter(|e| e["traceId"] == trace.as_str()).collect();
                assert!(
                    executed.iter().all(|e| parents.contains(&e["parentSpanId"].as_str().unwrap_or_default())),
                    "execute spans outside the chain of dispatch/complete spans: {executed:#?}"
                );
                let dispatch_ids = dispatch.iter().filter_map(|d| d["spanId"].as_str()).collect::<Vec<_>>();
                assert!(
                    executed.iter().any(|e| dispatch_ids.contains(&e["parentSpanId"].as_str().unwrap_or_default()))
                );
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "spans of one trace not all received: {all:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = worker.kill();
    let _ = worker.wait();
}
