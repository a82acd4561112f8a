//! How taskorch writes PostgreSQL (run by `.ci/run` with `TASKORCH_TEST_DATABASE_URL`; the embedded default has no
//! such storage detail to check).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, ServerOptions};
use serde_json::json;

/// `n_tup_upd, n_tup_hot_upd` of the `task` table, once the statistics show at least `updates` updates (PostgreSQL
/// publishes a backend's counts within about ten seconds).
fn task_updates(database_url: &str, updates: i64) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let out = Command::new("psql")
            .args([
                database_url,
                "-Atc",
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'task'",
            ])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (all, hot) = text.split_once('|').unwrap_or_else(|| panic!("statistics row: {text:?}"));
        let (all, hot): (i64, i64) = (all.parse().expect("count"), hot.parse().expect("count"));
        if all >= updates || Instant::now() > deadline {
            return (all, hot);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `n` independent noop tasks in one workflow on a server with `env`; returns the database URL.
async fn run_noops(n: usize, env: Vec<(String, String)>) -> (Server, String) {
    let server = Server::start_with(ServerOptions { env, ..ServerOptions::default() }).await;
    let tasks: Vec<_> = (0..n).map(|i| json!({ "key": format!("t{i}"), "kind": "noop" })).collect();
    let id = server.submit(json!({ "name": "hot", "tasks": tasks })).await;
    server.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(server.workflow(&id).await["status"], "COMPLETED");
    let url = server.database_url.clone();
    (server, url)
}

#[tokio::test]
async fn a_short_task_is_written_once_its_claim_going_with_its_completion() {
    if !common::postgres() {
        eprintln!("a_short_task_is_written_once…: needs TASKORCH_TEST_DATABASE_URL; .ci/run sets it");
        return;
    }
    let n = 300;
    // The claim mark far enough that no attempt of a slow CI machine reaches it.
    let (_server, url) = run_noops(n, vec![("TASKORCH_CLAIM_AFTER_MS".into(), "5000".into())]).await;
    // Stored already dispatched at submission, peeked, run, then claimed and completed in one update.
    let (all, _) = task_updates(&url, n as i64);
    assert_eq!(all, n as i64, "statistics show {all} updates of {n} tasks");
}

#[tokio::test]
async fn claims_are_written_as_hot_updates_of_the_task_row() {
    if !common::postgres() {
        eprintln!(
            "claims_are_written_as_hot_updates_of_the_task_row: needs TASKORCH_TEST_DATABASE_URL; .ci/run sets it"
        );
        return;
    }
    let n = 300;
    // Every attempt claimed before it runs (as a long one is at the claim mark).
    let (_server, url) = run_noops(n, vec![("TASKORCH_CLAIM_AFTER_MS".into(), "0".into())]).await;
    let n = n as i64;
    // Every task is claimed once and completed once: two updates each.
    let (all, hot) = task_updates(&url, 2 * n);
    assert!(all >= 2 * n, "statistics show {all} updates of {n} tasks");
    // A claim changes no indexed column and finds room on its page: at least most of the claims (half the
    // updates) are HOT. With the lease or the status in an index's condition, none is.
    assert!(hot * 10 >= n * 8, "{hot} HOT updates of {all}, for {n} claims");
}
