//! Acceptance test of the offline GraphiQL playground: the page served at /playground loads in headless Chromium
//! on this machine (nothing may come from the network), a subscription typed into it shows the workflow's events
//! live, and the run leaves a screenshot in test-artifacts/playground.png (ignored by git).
//!
//! The browser is driven by web-playground/e2e/playground.mjs (playwright-core + the system Chromium; no browser is
//! ever downloaded). Needs Node.js >= 20, `apt-get install -y chromium` (or CHROMIUM=<path>) and
//! `cd web-playground && npm ci`. Missing tools fail the test; they are never a reason to skip it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, ServerOptions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const SETUP: &str = "the browser test needs Node.js >= 20 on PATH (Debian 12's own nodejs is 18: use NodeSource's), \
                     Chromium (`apt-get install -y chromium`, or CHROMIUM=<path>) and `cd web-playground && npm ci`";

fn repo() -> PathBuf {
    std::fs::canonicalize(REPO).unwrap_or_else(|_| Path::new(REPO).to_path_buf())
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails, with what to install, when node, Chromium or playwright-core is missing.
fn require_tools() {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| panic!("`node` is not on PATH: {SETUP}"));
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 20, "node {version} is too old: {SETUP}");
    let chromium = chromium();
    assert!(chromium.is_file(), "no Chromium at {} (or set CHROMIUM=<path>): {SETUP}", chromium.display());
    let playwright = repo().join("web-playground/node_modules/playwright-core/package.json");
    assert!(playwright.is_file(), "{} is missing: {SETUP}", playwright.display());
}

#[tokio::test]
async fn the_playground_shows_a_subscription_s_events_live_in_headless_chromium() {
    require_tools();
    // No worker in the server: the workflow waits (WORKFLOW_STARTED, TASK_QUEUED) until the browser follows it,
    // then a worker process runs it, so every later event reaches the page live whatever the browser's start-up time.
    let server = Server::start_with(ServerOptions { worker: false, ..ServerOptions::default() }).await;
    let tasks: Vec<_> = (1..=5)
        .map(|i| {
            let mut t = json!({ "key": format!("t{i}"), "kind": "sleep", "payload": { "ms": 400 } });
            if i > 1 {
                t["dependsOn"] = json!([format!("t{}", i - 1)]);
            }
            t
        })
        .collect();
    let id = server.submit(json!({ "name": "playground-e2e", "tasks": tasks })).await;

    let screenshot = repo().join("test-artifacts/playground.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut child = tokio::process::Command::new("node")
        .arg(repo().join("web-playground/e2e/playground.mjs"))
        .arg(&server.base)
        .arg(&id)
        .arg(&screenshot)
        .env("CHROMIUM", chromium())
        .env("TASKORCH_E2E_EMAIL", common::ADMIN_EMAIL)
        .env("TASKORCH_E2E_PASSWORD", common::ADMIN_PASSWORD)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}; {SETUP}"));
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stdout = String::new();
    let mut worker = None;
    let run = async {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
            if line.contains("SUBSCRIBED") && worker.is_none() {
                worker = Some(server.spawn_worker(&[]));
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        child.wait().await
    };
    let status = tokio::time::timeout(Duration::from_secs(120), run).await;
    if let Some(mut w) = worker.take() {
        let _ = w.kill();
        let _ = w.wait();
    }
    let stderr =
        tokio::time::timeout(Duration::from_secs(5), stderr).await.ok().and_then(Result::ok).unwrap_or_default();
    let report = format!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    let status = match status {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("waiting for node failed: {e}\n{report}"),
        Err(_) => panic!("the browser check did not finish within 120 s\n{report}"),
    };
    assert!(status.success(), "the browser check failed ({status})\n{report}");
    assert!(stdout.contains("SUBSCRIBED"), "the page never showed the first events\n{report}");
    for ty in ["TASK_STARTED", "WORKFLOW_COMPLETED"] {
        assert!(stdout.contains(ty), "{ty} not among the observed events\n{report}");
    }
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{report}", screenshot.display()));
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG"),
        "{} is not a PNG ({} bytes)",
        screenshot.display(),
        png.len()
    );
    assert_eq!(server.workflow(&id).await["status"], "COMPLETED");
}
