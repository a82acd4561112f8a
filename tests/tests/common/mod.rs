//! Harness: builds and starts the real `taskorch` (and `taskorch-worker`) binaries on port 0 with a database of
//! their own — a SQLite file in a temporary directory, or a fresh PostgreSQL database when
//! `TASKORCH_TEST_DATABASE_URL` names a PostgreSQL server — and speaks GraphQL over HTTP and graphql-transport-ws.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

static BUILD: Once = Once::new();

fn target_dir() -> PathBuf {
    // target/debug/deps/<test> → target
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()).expect("target dir").to_path_buf()
}

/// Path of a workspace binary, built (once per test process) so the tests always run the current code.
pub fn binary(name: &str) -> PathBuf {
    BUILD.call_once(|| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "-p", "taskorch-server", "-p", "taskorch-worker", "--bins", "--target-dir"])
            .arg(target_dir())
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build of the binaries");
        assert!(status.success(), "building the binaries failed");
    });
    target_dir().join("debug").join(name)
}

/// A PostgreSQL database made for one test and dropped after it.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    fn create(admin_url: &str) -> Self {
        let name = format!("taskorch_t_{}", uuid::Uuid::new_v4().simple());
        let out = Command::new("psql")
            .args([admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql must be installed to run the tests on PostgreSQL");
        assert!(
            out.status.success(),
            "cannot create a test database on {admin_url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin_url);
        Self { admin_url: admin_url.to_owned(), url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.admin_url, "-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}

/// Options of a test server.
#[derive(Clone)]
pub struct ServerOptions {
    /// Run the in-process worker.
    pub worker: bool,
    pub env: Vec<(String, String)>,
    /// Where the server's stderr (its logs) goes; inherited when `None`.
    pub log_file: Option<PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { worker: true, env: Vec::new(), log_file: None }
    }
}

/// A running server with its own database.
pub struct Server {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    /// Environment shared by every process of this test: database, broker, bus, namespace.
    pub backend_env: Vec<(String, String)>,
    _pg: Option<PgDatabase>,
    http: reqwest::Client,
    /// A client without default credentials, for requests with a credential of their own (or none).
    plain: reqwest::Client,
    /// Access token of the bootstrap admin (every helper request carries it).
    pub token: String,
}

/// The bootstrap admin of every test server.
pub const ADMIN_EMAIL: &str = "admin@example.test";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// Id of the system tenant (the bootstrap admin's).
pub const SYSTEM_TENANT: &str = "00000000-0000-0000-0000-000000000001";

/// The production services to use, from `TASKORCH_TEST_AMQP_URL` and `TASKORCH_TEST_REDIS_URL`, with a namespace
/// of this test's own so tests sharing a broker never see each other's messages.
fn service_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
    if let Some(url) = std::env::var("TASKORCH_TEST_AMQP_URL").ok().filter(|u| !u.is_empty()) {
        env.push(("TASKORCH_AMQP_URL".to_owned(), url));
    }
    if let Some(url) = std::env::var("TASKORCH_TEST_REDIS_URL").ok().filter(|u| !u.is_empty()) {
        env.push(("TASKORCH_REDIS_URL".to_owned(), url));
    }
    env.push(("TASKORCH_NAMESPACE".to_owned(), namespace));
    env.push(("TASKORCH_ADMIN_EMAIL".to_owned(), ADMIN_EMAIL.to_owned()));
    env.push(("TASKORCH_ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()));
    // Rate limits are tested on their own (security.rs); elsewhere they would only make load tests flaky.
    env.push(("TASKORCH_RATE_LIMITS".to_owned(), "list=0,read=0,write=0,subscribe=0,login=0".to_owned()));
    env
}

/// Whether the tests run against PostgreSQL.
pub fn postgres() -> bool {
    std::env::var("TASKORCH_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty())
}

/// Whether the tests run against RabbitMQ and Redis.
pub fn production_services() -> bool {
    std::env::var("TASKORCH_TEST_AMQP_URL").is_ok_and(|u| !u.is_empty())
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    pub async fn start_with(opts: ServerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg =
            std::env::var("TASKORCH_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).map(|u| PgDatabase::create(&u));
        let database_url = match &pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}/taskorch.db?mode=rwc", dir.path().display()),
        };
        let mut backend_env = service_env();
        backend_env.push(("TASKORCH_DATABASE_URL".to_owned(), database_url.clone()));
        Self::launch(opts, dir, backend_env, pg).await
    }

    /// Another server on the same database, broker, bus and namespace (scale-out).
    pub async fn sibling(&self, opts: ServerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::launch(opts, dir, self.backend_env.clone(), None).await
    }

    async fn launch(
        opts: ServerOptions,
        dir: tempfile::TempDir,
        mut backend_env: Vec<(String, String)>,
        pg: Option<PgDatabase>,
    ) -> Self {
        for (k, v) in &opts.env {
            if let Some(entry) = backend_env.iter_mut().find(|(key, _)| key == k) {
                entry.1 = v.clone();
            }
        }
        let database_url =
            backend_env.iter().find(|(k, _)| k == "TASKORCH_DATABASE_URL").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut cmd = Command::new(binary("taskorch"));
        cmd.current_dir(dir.path())
            .env("TASKORCH_LISTEN", "127.0.0.1:0")
            .envs(backend_env.iter().cloned())
            .env("TASKORCH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !opts.worker {
            cmd.env("TASKORCH_NO_WORKER", "true");
        }
        if let Some(path) = &opts.log_file {
            cmd.stderr(std::fs::File::create(path).expect("log file"));
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start taskorch");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).ok();
            // keep draining so the server never blocks on a full pipe
            std::thread::spawn(move || for _ in reader.lines() {});
            line
        });
        let line =
            tokio::time::timeout(Duration::from_secs(60), line).await.expect("server printed its URL").expect("join");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(|u| u.trim_end_matches("/graphql").to_owned())
            .unwrap_or_else(|| panic!("no URL in the first line of stdout: {line:?}"));
        // The bootstrap admin of this server's environment (a password file wins, as in the server).
        let var = |k: &str| backend_env.iter().chain(&opts.env).rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let email = var("TASKORCH_ADMIN_EMAIL").unwrap_or_else(|| ADMIN_EMAIL.to_owned());
        let password = match var("TASKORCH_ADMIN_PASSWORD_FILE") {
            Some(path) => std::fs::read_to_string(path).expect("password file").trim_end().to_owned(),
            None => var("TASKORCH_ADMIN_PASSWORD").unwrap_or_else(|| ADMIN_PASSWORD.to_owned()),
        };
        let token = login(&base, &email, &password).await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("token is a header value"),
        );
        let http = reqwest::Client::builder().default_headers(headers).build().expect("http client");
        Self { child, base, dir, database_url, backend_env, _pg: pg, http, plain: reqwest::Client::new(), token }
    }

    /// Sends a GraphQL request with the given bearer credential (none when `None`); returns the whole body.
    pub async fn gql_as(&self, credential: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = self.plain.post(self.graphql_url());
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        req.json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON response")
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.base)
    }

    /// Sends a GraphQL request as the admin; returns the whole response body.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(Some(&self.token), query, variables).await
    }

    /// Sends a GraphQL request that must succeed; returns `data`.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let body = self.gql(query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// The first error's `extensions.code` and message.
    pub async fn error(&self, query: &str, variables: Value) -> (String, String) {
        let body = self.gql(query, variables).await;
        let err = &body["errors"][0];
        assert!(!err.is_null(), "expected an error: {body}");
        (
            err["extensions"]["code"].as_str().unwrap_or_default().to_owned(),
            err["message"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Submits a workflow; returns its id.
    pub async fn submit(&self, input: Value) -> String {
        let data = self
            .data(
                "mutation($input: SubmitWorkflowInput!) { submitWorkflow(input: $input) { id status } }",
                json!({ "input": input }),
            )
            .await;
        data["submitWorkflow"]["id"].as_str().expect("id").to_owned()
    }

    pub async fn workflow(&self, id: &str) -> Value {
        self.data(
            "query($id: ID!) { workflow(id: $id) { id name status createdAt startedAt finishedAt \
             tasks { id key kind status attempts payload result error dependsOn priority startedAt finishedAt } } }",
            json!({ "id": id }),
        )
        .await["workflow"]
            .clone()
    }

    /// The stored events of a workflow.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let data = self
            .data(
                "query($id: ID!) { workflow(id: $id) { events { sequence type taskKey at data } } }",
                json!({ "id": id }),
            )
            .await;
        data["workflow"]["events"].as_array().cloned().unwrap_or_default()
    }

    /// Opens a graphql-transport-ws subscription as the admin.
    pub async fn subscribe(&self, query: &str, variables: Value) -> Subscription {
        self.subscribe_as(Some(&self.token), query, variables).await
    }

    /// Opens a graphql-transport-ws subscription with the given credential in `connection_init`.
    pub async fn subscribe_as(&self, credential: Option<&str>, query: &str, variables: Value) -> Subscription {
        Subscription::open(&self.base.replace("http://", "ws://"), credential, query, variables).await
    }

    /// Follows the workflow's live events until its final one; returns them all (fails after `timeout`).
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Vec<Value> {
        let mut sub = self
            .subscribe(
                "subscription($id: ID!) { workflowEvents(workflowId: $id) { sequence type taskKey workflowId at data } }",
                json!({ "id": id }),
            )
            .await;
        match tokio::time::timeout(timeout, sub.collect_until_complete()).await {
            Ok(events) => events.into_iter().map(|e| e["workflowEvents"].clone()).collect(),
            Err(_) => panic!("workflow {id} did not finish within {timeout:?}; it is now: {}", self.state(id).await),
        }
    }

    /// The workflow's status, tasks and event log, for a failing test to show.
    pub async fn state(&self, id: &str) -> Value {
        self.gql(
            "query($id: ID!) { workflow(id: $id) { status tasks { key status attempts error } \
             events { sequence type taskKey } } }",
            json!({ "id": id }),
        )
        .await
    }

    /// Starts a separate worker process on this server's database.
    pub fn spawn_worker(&self, args: &[&str]) -> WorkerProcess {
        WorkerProcess(
            Command::new(binary("taskorch-worker"))
                .current_dir(self.dir.path())
                .envs(self.backend_env.iter().cloned())
                .env("TASKORCH_LOG", "warn")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start taskorch-worker"),
        )
    }

    /// Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.base)).send().await.expect("metrics").text().await.expect("text")
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// A metric's value from `/metrics` (the first sample of that name).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ') || rest.starts_with('{')))
            .and_then(|rest| rest.rsplit(' ').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// SIGKILL, and wait.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait")
    }
}

/// A `taskorch-worker` process, killed when dropped: a test that fails must not leave it running (it holds the
/// test runner's stderr open, and the run would never end).
pub struct WorkerProcess(Child);

impl std::ops::Deref for WorkerProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for WorkerProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs in; returns the access token.
pub async fn login(base: &str, email: &str, password: &str) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({
            "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
            "variables": { "e": email, "p": password },
        }))
        .send()
        .await
        .expect("login request")
        .json()
        .await
        .expect("login response");
    body["data"]["login"]["accessToken"].as_str().unwrap_or_else(|| panic!("login failed: {body}")).to_owned()
}

/// A graphql-transport-ws subscription.
pub struct Subscription {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Subscription {
    pub async fn open(ws_base: &str, credential: Option<&str>, query: &str, variables: Value) -> Self {
        let mut req = format!("{ws_base}/graphql/ws").into_client_request().expect("ws request");
        req.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket connect");
        let payload = match credential {
            Some(c) => json!({ "Authorization": format!("Bearer {c}") }),
            None => json!({}),
        };
        ws.send(Message::text(json!({ "type": "connection_init", "payload": payload }).to_string()))
            .await
            .expect("init");
        loop {
            let msg = ws.next().await.expect("ack").expect("ack frame");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("json");
                assert_eq!(v["type"], "connection_ack", "{v}");
                break;
            }
        }
        let sub = json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } });
        ws.send(Message::text(sub.to_string())).await.expect("subscribe");
        Self { ws }
    }

    /// The next `data` payload; `None` once the server completes the subscription. Panics on an error message.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let msg = self.ws.next().await?.ok()?;
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    match v["type"].as_str() {
                        Some("next") => {
                            assert!(v["payload"].get("errors").is_none(), "subscription error: {v}");
                            return Some(v["payload"]["data"].clone());
                        }
                        Some("complete") => return None,
                        Some("error") => panic!("subscription error: {v}"),
                        Some("ping") => {
                            let _ = self.ws.send(Message::text(json!({ "type": "pong" }).to_string())).await;
                        }
                        _ => {}
                    }
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// The first raw message after subscribing (to look at errors).
    pub async fn raw(&mut self) -> Value {
        loop {
            if let Message::Text(t) = self.ws.next().await.expect("message").expect("frame") {
                return serde_json::from_str(&t).expect("json");
            }
        }
    }

    pub async fn collect_until_complete(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next().await {
            out.push(v);
        }
        out
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A bare WebSocket speaking `protocol` to /graphql/ws: JSON messages in and out, and the close frame at the end.
pub struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// The subprotocol the server chose (its `Sec-WebSocket-Protocol`).
    pub protocol: Option<String>,
}

/// What a [`RawWs`] received next.
#[derive(Debug, PartialEq)]
pub enum Received {
    Json(Value),
    /// The server closed the connection with this code (none without a close frame).
    Closed(Option<u16>),
}

impl RawWs {
    pub async fn connect(server: &Server, protocol: &str) -> Self {
        Self::connect_to(server, "/graphql/ws", protocol).await
    }

    /// A connection to another path of the server.
    pub async fn connect_to(server: &Server, path: &str, protocol: &str) -> Self {
        let url = format!("{}{path}", server.base.replace("http://", "ws://"));
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket connect");
        let protocol = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self { ws, protocol }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next JSON message or the close (fails after 30 s).
    pub async fn recv(&mut self) -> Received {
        let wait = Duration::from_secs(30);
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await.expect("a message in time") {
                Some(Ok(Message::Text(t))) => return Received::Json(serde_json::from_str(&t).expect("json")),
                Some(Ok(Message::Close(frame))) => return Received::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// The next JSON message (fails on a close).
    pub async fn json(&mut self) -> Value {
        match self.recv().await {
            Received::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// `connection_init` with the credential, then the `connection_ack`.
    pub async fn init(&mut self, token: &str) {
        self.send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
            .await;
        assert_eq!(self.json().await["type"], "connection_ack");
    }
}

/// Event types of a list of events.
pub fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Asserts sequences are 1..=n (or start..) without gap or duplicate.
pub fn assert_gapless(events: &[Value], first: i64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence"].as_i64(), Some(first + i as i64), "gap or duplicate at index {i}: {events:?}");
    }
}
