//! `taskorch-subbench`: many concurrent `workflowEvents` subscriptions on one running server. Submits workflows
//! whose first task sleeps, opens the subscriptions over graphql-transport-ws (several per connection), then
//! measures, for every live event, the delay from its commit (`at`) to its arrival, and the server's memory.
//! Driven by `bench/subscriptions.sh`, which starts a release server; see BENCHMARKS.md.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser, Debug)]
#[command(name = "taskorch-subbench")]
struct Args {
    /// GraphQL endpoint, e.g. http://127.0.0.1:8080/graphql.
    #[arg(long)]
    url: String,
    /// Bearer credential.
    #[arg(long)]
    token: String,
    /// Server process id, for its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 10_000)]
    subscriptions: usize,
    /// Subscriptions per WebSocket.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    /// Workflows watched (each by subscriptions / workflows subscribers).
    #[arg(long, default_value_t = 100)]
    workflows: usize,
    /// How long the first task of each workflow sleeps: the time to open every subscription.
    #[arg(long, default_value_t = 8_000)]
    hold_ms: u64,
}

/// The parts of a graphql-transport-ws message the bench reads (borrowed: the client parses 200,000 of them on the
/// server's cores).
#[derive(serde::Deserialize)]
struct ServerMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    payload: Option<Payload<'a>>,
}

#[derive(serde::Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    data: Option<EventData<'a>>,
}

#[derive(serde::Deserialize)]
struct EventData<'a> {
    #[serde(rename = "workflowEvents", borrow)]
    workflow_events: Option<Event<'a>>,
}

#[derive(serde::Deserialize)]
struct Event<'a> {
    at: &'a str,
}

fn rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) a process has used so far, in seconds (Linux clock ticks of 1/100 s).
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name: state is the 3rd field, utime the 14th, stime the 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn gql(http: &reqwest::Client, args: &Args, query: &str, variables: Value) -> anyhow::Result<Value> {
    let body: Value = http
        .post(&args.url)
        .bearer_auth(&args.token)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(body["errors"].is_null(), "GraphQL errors: {body}");
    Ok(body["data"].clone())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    println!("idle server RSS: {:.1} MiB", rss_mib(args.pid).unwrap_or(f64::NAN));
    let mut ids = Vec::new();
    for w in 0..args.workflows {
        let mut tasks = vec![json!({ "key": "hold", "kind": "sleep", "payload": { "ms": args.hold_ms } })];
        let mut prev = "hold".to_owned();
        for i in 0..5 {
            let key = format!("t{i}");
            tasks.push(json!({ "key": key, "kind": "noop", "dependsOn": [prev] }));
            prev = key;
        }
        let data = gql(
            &http,
            &args,
            "mutation($i: SubmitWorkflowInput!) { submitWorkflow(input: $i) { id } }",
            json!({ "i": { "name": format!("sub{w}"), "tasks": tasks } }),
        )
        .await?;
        ids.push(data["submitWorkflow"]["id"].as_str().unwrap_or_default().to_owned());
    }

    let ws_url = args.url.replacen("http", "ws", 1) + "/ws";
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, bool)>();
    let opened = Instant::now();
    let connections = args.subscriptions.div_ceil(args.per_connection);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for c in 0..connections {
        let mut req = ws_url.as_str().into_client_request()?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        let init =
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", args.token) } });
        ws.send(Message::text(init.to_string())).await?;
        let _ack = ws.next().await;
        let n = args.per_connection.min(args.subscriptions - c * args.per_connection);
        for s in 0..n {
            let id = &ids[(c * args.per_connection + s) % ids.len()];
            let sub = json!({ "id": s.to_string(), "type": "subscribe", "payload": {
                "query": "subscription($id: ID!) { workflowEvents(workflowId: $id) { sequence type at } }",
                "variables": { "id": id } } });
            ws.send(Message::text(sub.to_string())).await?;
        }
        let (tx, ready_tx) = (tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let mut completed = 0;
            let mut subscribed_at: Option<chrono::DateTime<chrono::Utc>> = None;
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                match msg.kind {
                    "next" => {
                        let now = chrono::Utc::now();
                        let since = *subscribed_at.get_or_insert(now);
                        let at = msg.payload.and_then(|p| p.data).and_then(|d| d.workflow_events).map(|e| e.at);
                        if let Some(Ok(at)) = at.map(chrono::DateTime::parse_from_rfc3339) {
                            let at = at.with_timezone(&chrono::Utc);
                            // Events committed after this connection's first message are live, not replayed.
                            let live = at > since;
                            let delay = (now - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                            let _ = tx.send((delay, live));
                        }
                    }
                    "complete" => {
                        completed += 1;
                        if completed == n {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let _ = ready_tx.send(());
        });
    }
    drop(tx);
    drop(ready_tx);
    println!(
        "{} subscriptions on {connections} connections opened in {:.1} s; server RSS {:.1} MiB",
        args.subscriptions,
        opened.elapsed().as_secs_f64(),
        rss_mib(args.pid).unwrap_or(f64::NAN)
    );
    let mut peak = rss_mib(args.pid).unwrap_or(0.0);
    let (server_cpu, client_cpu) = (cpu_secs(args.pid), cpu_secs(None));
    let mut done = 0;
    while done < connections {
        tokio::select! {
            r = ready_rx.recv() => { if r.is_none() { break } done += 1; }
            _ = tokio::time::sleep(Duration::from_millis(200)) => { peak = peak.max(rss_mib(args.pid).unwrap_or(0.0)); }
        }
    }
    let mut live = Vec::new();
    let mut total = 0;
    while let Ok((delay, is_live)) = rx.try_recv() {
        total += 1;
        if is_live {
            live.push(delay);
        }
    }
    live.sort_by(|a, b| a.total_cmp(b));
    let used = |before: Option<f64>, pid| Some(cpu_secs(pid)? - before?);
    let pct = |p: f64| live.get(((live.len() as f64 * p) as usize).min(live.len().saturating_sub(1))).copied();
    println!(
        "events delivered: {total} ({} live); live delivery delay p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         peak server RSS {peak:.1} MiB",
        live.len(),
        pct(0.5).unwrap_or(f64::NAN),
        pct(0.99).unwrap_or(f64::NAN),
        live.last().copied().unwrap_or(f64::NAN)
    );
    // Everything after the subscriptions were open: the workflows' runs and the delivery of their events.
    println!(
        "CPU while streaming: server {:.2} s, this client {:.2} s",
        used(server_cpu, args.pid).unwrap_or(f64::NAN),
        used(client_cpu, None).unwrap_or(f64::NAN)
    );
    Ok(())
}
