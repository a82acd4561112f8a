//! Repository tests on a fresh database — a SQLite file, or a new PostgreSQL database when
//! `TASKORCH_TEST_DATABASE_URL` names a server (`.ci/run` runs them on both: claims and completions take set-based
//! paths on PostgreSQL) — for paths of the hop that the black-box suite passes through without being able to tell
//! which one ran.

use std::collections::HashMap;

use serde_json::json;
use taskorch_domain::dag::{self, TaskSpec, WorkflowSpec};
use taskorch_domain::{Limits, TaskStatus, TenantId};

use super::{Claimed, Continuation, DispatchAtSubmit, NewWorkflow, Outcome, OutcomeKind, Store, SubmitOutcome};
use crate::db::{Database, PoolOptions};
use crate::queue::{Dispatch, Phase};

const LEASE_US: i64 = 30_000_000;

/// Where a test's database lives; removed when the test ends.
enum Fixture {
    Dir(std::path::PathBuf),
    Postgres { admin_url: String, name: String },
}

impl Drop for Fixture {
    fn drop(&mut self) {
        match self {
            Fixture::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Fixture::Postgres { admin_url, name } => {
                let _ = std::process::Command::new("psql")
                    .args([admin_url.as_str(), "-q", "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                    .output();
            }
        }
    }
}

/// A new, empty database (no migration run) and what removes it.
fn fresh_database() -> (String, Fixture) {
    match std::env::var("TASKORCH_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(admin_url) => {
            let name = format!("taskorch_store_{}", uuid::Uuid::new_v4().simple());
            let out = std::process::Command::new("psql")
                .args([admin_url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", &format!("CREATE DATABASE {name}")])
                .output()
                .expect("psql runs");
            assert!(out.status.success(), "create database: {}", String::from_utf8_lossy(&out.stderr));
            let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
            (format!("{base}/{name}"), Fixture::Postgres { admin_url: admin_url.clone(), name })
        }
        None => {
            let dir = std::env::temp_dir().join(format!("taskorch-store-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            (format!("sqlite://{}?mode=rwc", dir.join("t.db").display()), Fixture::Dir(dir))
        }
    }
}

async fn store() -> (Store, Fixture) {
    let (url, fixture) = fresh_database();
    let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
    db.migrate().await.expect("migrate");
    (Store::new(db), fixture)
}

/// Stores `a → b` (both `noop`) and returns the workflow's id.
async fn submit_pair(store: &Store) -> uuid::Uuid {
    let tasks = vec![TaskSpec::new("a", "noop"), TaskSpec::new("b", "noop").after(&["a"])];
    submit(store, tasks, None).await.0
}

/// Stores a workflow of `tasks`; returns its id and the dispatches handed back for publishing.
async fn submit(
    store: &Store,
    tasks: Vec<TaskSpec>,
    dispatch: Option<DispatchAtSubmit>,
) -> (uuid::Uuid, Vec<Dispatch>) {
    let spec = WorkflowSpec { name: "wf".into(), idempotency_key: None, tasks };
    let content_hash = spec.content_hash();
    let validated = dag::validate(spec, &Limits::default()).expect("valid");
    let tenant = TenantId(uuid::Uuid::nil());
    let new = NewWorkflow { tenant, validated, content_hash, trace_parent: None, dispatch };
    match store.insert_workflow(new).await.expect("insert") {
        SubmitOutcome::Created(wf, events, dispatches) => {
            let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
            assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>(), "events numbered from 1");
            assert_eq!(wf.last_sequence, events.len() as i64);
            (wf.id.0, dispatches)
        }
        SubmitOutcome::Existing(_) => panic!("a fresh database has no earlier submission"),
    }
}

#[tokio::test]
async fn roots_dispatched_at_submit_skip_the_dispatcher_and_come_back_if_never_claimed() {
    let (store, _fixture) = store().await;
    let tasks = vec![TaskSpec::new("a", "noop"), TaskSpec::new("m", "mail"), TaskSpec::new("b", "noop").after(&["a"])];
    let until = crate::time::now_us() + 200_000;
    let at_submit = DispatchAtSubmit { until, kinds: Some(vec!["noop".into()]) };
    let (wf, dispatches) = submit(&store, tasks, Some(at_submit)).await;
    // Only the root of a kind the submitting process dispatches is handed back; `m` is left to a dispatcher.
    assert_eq!(dispatches.len(), 1);
    assert_eq!((dispatches[0].workflow_id.0, dispatches[0].fence, dispatches[0].phase), (wf, 0, Phase::Run));
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    assert_eq!(due.len(), 1, "the dispatcher sees only `m`");
    assert_eq!(due[0].kind, "mail");
    // Never published (the process died after the commit): once `until` passes, the reaper makes it due again.
    assert_eq!(store.expire_dispatches().await.expect("expire"), 0, "not before its time");
    while crate::time::now_us() <= until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.expire_dispatches().await.expect("expire"), 1);
    let again = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    assert_eq!(again.iter().map(|d| d.task_id).collect::<Vec<_>>(), vec![dispatches[0].task_id]);
    // The handed-back dispatch and the new one claim the same attempt once.
    let (claimed, _) = store.claim(&[dispatches[0].clone(), again[0].clone()], LEASE_US).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].key.as_str(), claimed[0].attempt), ("a", 1));
}

/// Claims the root task `a` as a worker would: dispatch, then a fenced claim.
async fn claim_root(store: &Store) -> Claimed {
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    assert_eq!(due.len(), 1, "only the root is due");
    let (mut claimed, _) = store.claim(&due, LEASE_US).await.expect("claim");
    claimed.pop().expect("claimed")
}

#[tokio::test]
async fn completing_a_task_continues_its_ready_dependent_with_the_reported_result_as_input() {
    let (store, _fixture) = store().await;
    let wf = submit_pair(&store).await;
    let a = claim_root(&store).await;
    assert!(a.has_dependents);
    let outcome = completed(&a, json!({ "n": 7 }));
    let cont = Continuation { max: 4, kinds: vec!["noop".into()] };
    let report = store.report(vec![outcome], &mut || 0.5, &cont, LEASE_US).await.expect("report");
    assert_eq!(report.continued.len(), 1, "b is claimed in the completing transaction");
    let b = &report.continued[0];
    assert_eq!((b.key.as_str(), b.attempt), ("b", 1));
    assert_eq!(b.inputs, json!({ "a": { "n": 7 } }));
    assert_eq!(report.made_ready, 0, "a continued task is not left for the dispatcher");
    let id = taskorch_domain::WorkflowId(wf);
    let tasks = store.tasks_of(&[id]).await.expect("tasks").remove(&id).expect("the workflow's tasks");
    let status: HashMap<_, _> = tasks.iter().map(|t| (t.key.as_str(), t.status)).collect();
    assert_eq!(status["a"], TaskStatus::Completed);
    assert_eq!(status["b"], TaskStatus::Running);
}

/// PostgreSQL: the continuation's claim waits for a pause being committed on its workflow and then sees it (the
/// lock it takes returns the row as committed; the statement's own snapshot still said RUNNING).
#[tokio::test]
async fn a_pause_committed_while_a_completion_continues_is_seen_by_its_claim() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let (store, _fixture) = store().await;
    if store.database().backend != sea_orm::DbBackend::Postgres {
        return; // SQLite runs one writing transaction at a time: the report cannot start while the pause writes
    }
    let wf = submit_pair(&store).await;
    let a = claim_root(&store).await;
    let db = &store.database().write;
    let pause = db.begin().await.expect("begin");
    let paused = sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "UPDATE workflow SET status = 'PAUSED' WHERE id = $1",
        [wf.into()],
    );
    pause.execute_raw(paused).await.expect("pause");
    let outcome = completed(&a, json!(1));
    let reporting = {
        let store = store.clone();
        tokio::spawn(async move {
            let cont = Continuation { max: 4, kinds: vec!["noop".into()] };
            store.report(vec![outcome], &mut || 0.5, &cont, LEASE_US).await
        })
    };
    // The report reaches the workflow's row and waits for the pause's lock.
    let waiting = sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    );
    loop {
        let row = db.query_one_raw(waiting.clone()).await.expect("activity").expect("a row");
        if row.try_get_by_index::<i64>(0).expect("count") > 0 {
            break;
        }
        assert!(!reporting.is_finished(), "the report did not wait for the workflow's lock");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    pause.commit().await.expect("commit the pause");
    let report = reporting.await.expect("joined").expect("report");
    assert!(report.continued.is_empty(), "no task of a paused workflow starts");
    assert_eq!(task_row(&store, wf, "b").await.status, "QUEUED", "b waits for the resume");
}

#[tokio::test]
async fn a_continued_task_takes_inputs_completed_in_its_own_transaction_without_reading_them() {
    let (store, _fixture) = store().await;
    let wf = submit_pair(&store).await;
    let b_of = |inputs| Claimed {
        task_id: taskorch_domain::TaskId::new(),
        workflow_id: taskorch_domain::WorkflowId(wf),
        key: "b".into(),
        kind: "noop".into(),
        phase: Phase::Run,
        attempt: 1,
        payload: json!(null),
        inputs,
        idempotency_key: None,
        timeout_ms: None,
        queue_wait_us: 0,
        has_dependents: false,
        deferred: false,
    };
    // Without the result at hand, the dependency's row is read (`a` has not run: its result is null).
    let mut read = [b_of(json!(["a"]))];
    store.fill_inputs(&mut read, &HashMap::new()).await.expect("inputs from the database");
    assert_eq!(read[0].inputs, json!({ "a": null }));
    // With it (completed in the claiming transaction), the database is not asked: it is closed here.
    store.database().write.close_by_ref().await.expect("close");
    let known = HashMap::from([((wf, "a".to_owned()), json!({ "n": 7 }))]);
    let mut continued = [b_of(json!(["a"]))];
    store.fill_inputs(&mut continued, &known).await.expect("no read needed");
    assert_eq!(continued[0].inputs, json!({ "a": { "n": 7 } }));
    // The same call without the result does need the (now closed) database: the path above did not read.
    let mut unknown = [b_of(json!(["a"]))];
    assert!(store.fill_inputs(&mut unknown, &HashMap::new()).await.is_err());
}

/// Rows go to PostgreSQL as array literals (`bulk`): whatever the text and JSON hold, they come back as written.
#[tokio::test]
async fn submitted_rows_come_back_exactly_as_written() {
    let (store, _fixture) = store().await;
    let awkward = r#"NULL, "quoted" {braced} \backslash\ é ✓ ' ;"#;
    // Keys are plain (validated), but `NULL` must stay a key in the array literals.
    let mut a = TaskSpec::new("NULL", "noop");
    a.payload = json!({ "s": awkward, "n": [1, null, 2.5, true], "o": {} });
    a.config.timeout_ms = Some(1500);
    a.config.idempotency_key = Some(format!("{awkward}-idem"));
    a.compensation = Some(dag::CompensationSpec {
        kind: "undo".into(),
        payload: json!([awkward]),
        retry: taskorch_domain::RetryPolicy::default(),
    });
    let mut b = TaskSpec::new("b", "noop").after(&["NULL"]);
    b.payload = json!(awkward);
    let (wf, _) = submit(&store, vec![a, b], None).await;

    let first = task_row(&store, wf, "NULL").await;
    assert_eq!(first.kind, "noop");
    assert_eq!(first.payload, Some(json!({ "s": awkward, "n": [1, null, 2.5, true], "o": {} })));
    assert_eq!(first.timeout_ms, Some(1500));
    assert_eq!(first.idempotency_key.as_deref(), Some(format!("{awkward}-idem").as_str()));
    assert_eq!(first.compensation.as_ref().map(|c| c["payload"].clone()), Some(json!([awkward])));
    assert_eq!(first.comp_kind.as_deref(), Some("undo"));
    assert_eq!(first.dependents, json!(["b"]));
    assert_eq!((first.status.as_str(), first.pending_deps, first.position), ("QUEUED", 0, 0));
    assert_eq!(
        (first.result.clone(), first.error.clone(), first.lease_until, first.started_at),
        (None, None, None, None)
    );

    let second = task_row(&store, wf, "b").await;
    assert_eq!(second.payload, Some(json!(awkward)));
    assert_eq!(second.depends_on, json!(["NULL"]));
    assert_eq!((second.status.as_str(), second.pending_deps, second.position), ("PENDING", 1, 1));
    assert_eq!((second.timeout_ms, second.idempotency_key.clone(), second.compensation.clone()), (None, None, None));

    let events = store.events(taskorch_domain::WorkflowId(wf), 0, 10).await.expect("events");
    let keys: Vec<Option<&str>> = events.iter().map(|e| e.task_key.as_deref()).collect();
    assert_eq!(keys, [None, Some("NULL")], "WORKFLOW_STARTED, then the root's TASK_QUEUED");
}

/// The task row of `key` in workflow `wf`.
async fn task_row(store: &Store, wf: uuid::Uuid, key: &str) -> taskorch_entity::task::Model {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use taskorch_entity::task;
    task::Entity::find()
        .filter(task::Column::WorkflowId.eq(wf))
        .filter(task::Column::Key.eq(key))
        .one(&store.db.write)
        .await
        .expect("read")
        .expect("the task exists")
}

async fn sleep_until(at_us: i64) {
    while crate::time::now_us() <= at_us {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_claim_keeps_its_dispatch_and_the_reaper_follows_the_extended_lease_until_it_runs_out() {
    let (store, _fixture) = store().await;
    let until = crate::time::now_us() + 150_000;
    let at_submit = DispatchAtSubmit { until, kinds: None };
    let tasks = vec![TaskSpec::new("a", "noop"), TaskSpec::new("b", "noop").after(&["a"])];
    let (wf, dispatches) = submit(&store, tasks, Some(at_submit)).await;
    assert_eq!(task_row(&store, wf, "b").await.dispatched_until, super::IN_NO_QUEUE, "b waits in no queue");
    // The claim leaves every indexed column as it was (a HOT update on PostgreSQL): the dispatch's visibility is no
    // later than the lease.
    let lease_us = 400_000;
    let (claimed, _) = store.claim(&dispatches, lease_us).await.expect("claim");
    let a = claimed.first().expect("claimed").clone();
    let row = task_row(&store, wf, "a").await;
    assert_eq!(row.dispatched_until, until, "the claim kept the dispatch's visibility");
    assert!(row.lease_until.is_some_and(|l| l >= until));
    // The visibility passes while the attempt is alive (heartbeats): not reaped, looked at again with the lease.
    sleep_until(until).await;
    let held = [(a.task_id, Phase::Run, a.attempt)];
    assert!(store.heartbeat(&held, lease_us).await.expect("heartbeat").is_empty(), "still held");
    assert_eq!(store.expire_dispatches().await.expect("expire"), 0, "a leased task is not dispatched again");
    assert!(store.expired_leases(10).await.expect("scan").is_empty(), "the lease is alive");
    let row = task_row(&store, wf, "a").await;
    let lease = row.lease_until.expect("leased");
    assert_eq!(row.dispatched_until, lease, "the reaper looks again when the extended lease runs out");
    // The worker is gone: no more heartbeats. Once the lease runs out, the reaper finds the attempt.
    sleep_until(lease).await;
    let expired = store.expired_leases(10).await.expect("scan");
    assert_eq!(expired.iter().map(|o| (o.task_id, o.attempt)).collect::<Vec<_>>(), vec![(a.task_id, a.attempt)]);
}

#[tokio::test]
async fn a_lease_shorter_than_the_dispatch_visibility_is_reaped_when_it_runs_out() {
    let (store, _fixture) = store().await;
    let at_submit = DispatchAtSubmit { until: crate::time::now_us() + 60_000_000, kinds: None };
    let (wf, dispatches) = submit(&store, vec![TaskSpec::new("a", "noop")], Some(at_submit)).await;
    let (claimed, _) = store.claim(&dispatches, 150_000).await.expect("claim");
    let a = claimed.first().expect("claimed").clone();
    let row = task_row(&store, wf, "a").await;
    let lease = row.lease_until.expect("leased");
    assert_eq!(row.dispatched_until, lease, "the reaper must not wait for the minute-long visibility");
    sleep_until(lease).await;
    let expired = store.expired_leases(10).await.expect("scan");
    assert_eq!(expired.iter().map(|o| o.task_id).collect::<Vec<_>>(), vec![a.task_id]);
}

#[tokio::test]
async fn finished_tasks_and_tasks_waiting_for_dependencies_are_in_no_queue() {
    let (store, _fixture) = store().await;
    let wf = submit_pair(&store).await;
    assert_eq!(task_row(&store, wf, "a").await.dispatched_until, super::DUE);
    assert_eq!(task_row(&store, wf, "b").await.dispatched_until, super::IN_NO_QUEUE);
    let a = claim_root(&store).await;
    let done = completed(&a, json!(1));
    let report = store.report(vec![done], &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    assert_eq!(report.made_ready, 1);
    assert_eq!(task_row(&store, wf, "a").await.dispatched_until, super::IN_NO_QUEUE, "completed");
    assert_eq!(task_row(&store, wf, "b").await.dispatched_until, super::DUE, "made ready");
    let b = claim_root(&store).await;
    assert_eq!(b.key, "b");
    let failed = Outcome {
        task_id: b.task_id,
        phase: Phase::Run,
        attempt: b.attempt,
        kind: OutcomeKind::Failed("no".into()),
        started_at: None,
    };
    store.report(vec![failed], &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    let row = task_row(&store, wf, "b").await;
    assert_eq!(row.status, "RETRYING");
    assert_eq!(row.dispatched_until, super::DUE, "a retry is due again");
}

#[tokio::test]
async fn a_batch_claims_each_fresh_dispatch_once_in_its_order_and_completes_with_the_reported_results() {
    let (store, _fixture) = store().await;
    let tasks = vec![TaskSpec::new("a", "noop"), TaskSpec::new("b", "noop"), TaskSpec::new("c", "noop")];
    let (wf, _) = submit(&store, tasks, None).await;
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    assert_eq!(due.len(), 3);
    // Which dispatch is which task: claim order is the batch's, so map them through the rows.
    let mut id_of = HashMap::new();
    for key in ["a", "b", "c"] {
        id_of.insert(key, task_row(&store, wf, key).await.id);
    }
    let dispatch = |key: &str| due.iter().find(|d| d.task_id.0 == id_of[key]).expect("dispatched").clone();
    let mut stale_b = dispatch("b");
    stale_b.fence = 5;
    // c first, a twice (a duplicate message), b with a fence its row moved past.
    let batch = [dispatch("c"), dispatch("a"), dispatch("a"), stale_b];
    let (claimed, _) = store.claim(&batch, LEASE_US).await.expect("claim");
    assert_eq!(claimed.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), vec!["c", "a"]);
    assert!(claimed.iter().all(|c| c.attempt == 1));
    assert_eq!(task_row(&store, wf, "b").await.status, "QUEUED", "the stale dispatch claimed nothing");
    let done = |c: &Claimed, attempt: i32, result: serde_json::Value| Outcome { attempt, ..completed(c, result) };
    let (c, a) = (&claimed[0], &claimed[1]);
    let outcomes = vec![done(c, 1, json!({ "z": 1, "a": [2] })), done(a, 7, json!("stale")), done(a, 1, json!(null))];
    let report = store.report(outcomes, &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    assert_eq!(report.stale, 1, "the completion with another attempt is refused");
    let c_row = task_row(&store, wf, "c").await;
    assert_eq!((c_row.status.as_str(), c_row.result), ("COMPLETED", Some(json!({ "z": 1, "a": [2] }))));
    let a_row = task_row(&store, wf, "a").await;
    assert_eq!((a_row.status.as_str(), a_row.result), ("COMPLETED", None), "a null result is no result");
    let completed: Vec<_> = report
        .events
        .iter()
        .filter(|e| e.event_type == taskorch_domain::EventType::TaskCompleted)
        .filter_map(|e| e.task_key.clone())
        .collect();
    assert_eq!(completed, vec!["c", "a"], "TASK_COMPLETED in the order reported");
}

/// On PostgreSQL a batch's completions count their dependents down in the statement that completes them.
#[tokio::test]
async fn dependencies_completed_in_one_batch_queue_each_dependent_once_after_the_last_of_them() {
    let (store, _fixture) = store().await;
    let tasks = vec![
        TaskSpec::new("a", "noop"),
        TaskSpec::new("b", "noop"),
        TaskSpec::new("c", "noop").after(&["a", "b"]),
        TaskSpec::new("d", "noop").after(&["a"]),
        TaskSpec::new("e", "noop").after(&["c"]),
    ];
    let (wf, _) = submit(&store, tasks, None).await;
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    let (claimed, _) = store.claim(&due, LEASE_US).await.expect("claim");
    let by_key: HashMap<_, _> = claimed.iter().map(|c| (c.key.as_str(), c)).collect();
    let done = |key: &str| completed(by_key[key], json!(key));
    let report = store
        .report(vec![done("a"), done("b")], &mut || 0.5, &Continuation::default(), LEASE_US)
        .await
        .expect("report");
    assert_eq!(report.made_ready, 2, "c (both of its dependencies) and d");
    use taskorch_domain::EventType::{TaskCompleted, TaskQueued};
    let events: Vec<_> = report.events.iter().map(|e| (e.event_type, e.task_key.clone().unwrap_or_default())).collect();
    let expected = [(TaskCompleted, "a"), (TaskQueued, "d"), (TaskCompleted, "b"), (TaskQueued, "c")];
    assert_eq!(events, expected.map(|(t, k)| (t, k.to_owned())), "each dependent queued after its last dependency");
    for (key, status, pending) in [("c", "QUEUED", 0), ("d", "QUEUED", 0), ("e", "PENDING", 1)] {
        let row = task_row(&store, wf, key).await;
        assert_eq!((row.status.as_str(), row.pending_deps), (status, pending), "{key}");
    }
    let mut due: Vec<_> =
        store.fetch_due(10, None, LEASE_US).await.expect("fetch").iter().map(|d| d.task_id.0).collect();
    let mut ready = vec![task_row(&store, wf, "c").await.id, task_row(&store, wf, "d").await.id];
    due.sort();
    ready.sort();
    assert_eq!(due, ready, "c and d are due");
}

#[tokio::test]
async fn migration_8_gives_existing_rows_their_queue_position_and_leased_rows_their_reaper_time() {
    use sea_orm::ConnectionTrait;
    use taskorch_migration::{Migrator, MigratorTrait};
    let (url, _fixture) = fresh_database();
    let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
    db.migrate().await.expect("migrate");
    let store = Store::new(db);
    let keys = ["done", "waiting", "running", "due", "dispatched"];
    let (wf, _) = submit(&store, keys.iter().map(|k| TaskSpec::new(*k, "noop")).collect(), None).await;
    Migrator::down(&store.db.write, Some(3)).await.expect("back to migration 7");
    // The rows as migration 7's code left them: `dispatched_until` 0 unless a dispatch is in flight.
    let lease = crate::time::now_us() - 1;
    for (key, status, dispatched_until, lease_until) in [
        ("done", "COMPLETED", 0, None),
        ("waiting", "PENDING", 0, None),
        ("running", "RUNNING", 12_345, Some(lease)),
        ("due", "QUEUED", 0, None),
        ("dispatched", "QUEUED", 67_890, None),
    ] {
        store
            .db
            .write
            .execute_raw(store.db.stmt(
                "UPDATE task SET status = ?, dispatched_until = ?, lease_until = ? WHERE workflow_id = ? AND key = ?",
                vec![status.into(), dispatched_until.into(), lease_until.into(), wf.into(), key.into()],
            ))
            .await
            .expect("old row");
    }
    Migrator::up(&store.db.write, None).await.expect("migration 8");
    let mut after = Vec::new();
    for key in keys {
        after.push((key, task_row(&store, wf, key).await.dispatched_until));
    }
    assert_eq!(
        after,
        vec![
            ("done", super::IN_NO_QUEUE),
            ("waiting", super::IN_NO_QUEUE),
            ("running", lease),
            ("due", super::DUE),
            ("dispatched", 67_890)
        ]
    );
    // The attempt whose lease ran out before the upgrade is found by the reaper after it.
    let expired = store.expired_leases(10).await.expect("scan");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].task_id.0, task_row(&store, wf, "running").await.id);
}

/// The completion of the claimed attempt `c`, with `result`.
fn completed(c: &Claimed, result: serde_json::Value) -> Outcome {
    Outcome {
        task_id: c.task_id,
        phase: Phase::Run,
        attempt: c.attempt,
        kind: OutcomeKind::Completed(result),
        started_at: None,
    }
}

/// The outcome of a peeked attempt that started at `started_at`.
fn peeked(c: &Claimed, kind: OutcomeKind, started_at: i64) -> Outcome {
    Outcome { task_id: c.task_id, phase: Phase::Run, attempt: c.attempt, kind, started_at: Some(started_at) }
}

/// Event types and task keys of a workflow, in sequence order, after its first `skip` events.
async fn events_after(store: &Store, wf: uuid::Uuid, skip: i64) -> Vec<(taskorch_domain::EventType, Option<String>)> {
    let events = store.events(taskorch_domain::WorkflowId(wf), skip, 100).await.expect("events");
    events.into_iter().map(|e| (e.event_type, e.task_key)).collect()
}

#[tokio::test]
async fn a_peeked_attempt_writes_nothing_until_its_outcome_records_claim_and_completion_together() {
    use taskorch_domain::EventType::{TaskCompleted, TaskQueued, TaskStarted};
    let (store, _fixture) = store().await;
    let tasks = vec![TaskSpec::new("a", "noop"), TaskSpec::new("b", "noop").after(&["a"]), TaskSpec::new("c", "noop")];
    let (wf, _) = submit(&store, tasks, None).await;
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    let a_id = task_row(&store, wf, "a").await.id;
    let a_due = due.iter().find(|d| d.task_id.0 == a_id).expect("a dispatched").clone();
    let c_due = due.iter().find(|d| d.task_id.0 != a_id).expect("c dispatched").clone();
    let mut stale_c = c_due.clone();
    stale_c.fence = 3;
    // A duplicate of `a` is read once; `c` with a fence its row never had is left out.
    let read = store.peek(&[a_due.clone(), a_due.clone(), stale_c]).await.expect("peek");
    assert_eq!(read.iter().map(|c| (c.key.as_str(), c.attempt, c.deferred)).collect::<Vec<_>>(), [("a", 1, true)]);
    let a = read[0].clone();
    assert!(a.has_dependents);
    // Nothing is written: the row still waits and no TASK_STARTED exists.
    let row = task_row(&store, wf, "a").await;
    assert_eq!((row.status.as_str(), row.attempts, row.lease_until, row.started_at), ("QUEUED", 0, None, None));
    let before = store.events(taskorch_domain::WorkflowId(wf), 0, 100).await.expect("events").len() as i64;
    assert_eq!(before, 3, "WORKFLOW_STARTED and the roots' TASK_QUEUED only");

    let started_at = crate::time::now_us() - 5_000;
    let cont = Continuation { max: 4, kinds: vec!["noop".into()] };
    let done = peeked(&a, OutcomeKind::Completed(json!({ "n": 7 })), started_at);
    let report = store.report(vec![done.clone()], &mut || 0.5, &cont, LEASE_US).await.expect("report");
    assert_eq!(report.stale, 0);
    let row = task_row(&store, wf, "a").await;
    assert_eq!((row.status.as_str(), row.attempts, row.result), ("COMPLETED", 1, Some(json!({ "n": 7 }))));
    assert_eq!((row.started_at, row.lease_until), (Some(started_at), None), "started when it ran, no lease left");
    // Its dependent continues with the result, as after a claimed attempt.
    assert_eq!(
        report.continued.iter().map(|c| (c.key.as_str(), c.inputs.clone())).collect::<Vec<_>>(),
        [("b", json!({ "a": { "n": 7 } }))]
    );
    assert_eq!(
        events_after(&store, wf, before).await,
        [
            (TaskStarted, Some("a".into())),
            (TaskCompleted, Some("a".into())),
            (TaskQueued, Some("b".into())),
            (TaskStarted, Some("b".into()))
        ]
    );
    let started = store.events(taskorch_domain::WorkflowId(wf), before, 1).await.expect("events");
    assert_eq!(started[0].data, json!({ "attempt": 1 }));
    // The same outcome again (a duplicate delivery that ran too) finds the row moved on.
    let again = store.report(vec![done], &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    assert_eq!((again.stale, again.events.len()), (1, 0));
    assert_eq!(task_row(&store, wf, "a").await.attempts, 1);
    // A claimed task cannot be peeked.
    assert_eq!(store.peek(std::slice::from_ref(&c_due)).await.expect("peek").len(), 1);
    store.claim(std::slice::from_ref(&c_due), LEASE_US).await.expect("claim");
    assert!(store.peek(&[c_due]).await.expect("peek").is_empty(), "c is running");
}

#[tokio::test]
async fn a_peeked_attempt_that_failed_is_counted_one_released_is_not_and_a_cancelled_one_records_nothing() {
    use taskorch_domain::EventType::{TaskFailed, TaskRetrying, TaskStarted};
    let (store, _fixture) = store().await;
    let tasks = vec![TaskSpec::new("f", "noop"), TaskSpec::new("r", "noop")];
    let (wf, _) = submit(&store, tasks, None).await;
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    let read = store.peek(&due).await.expect("peek");
    let of = |key: &str| read.iter().find(|c| c.key == key).expect("peeked").clone();
    let (f, r) = (of("f"), of("r"));
    let before = store.events(taskorch_domain::WorkflowId(wf), 0, 100).await.expect("events").len() as i64;
    let now = crate::time::now_us();
    let outcomes = vec![peeked(&f, OutcomeKind::Failed("boom".into()), now), peeked(&r, OutcomeKind::Released, now)];
    let report = store.report(outcomes, &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    assert_eq!(report.stale, 0);
    let f_row = task_row(&store, wf, "f").await;
    assert_eq!((f_row.status.as_str(), f_row.attempts, f_row.error.as_deref()), ("RETRYING", 1, Some("boom")));
    assert_eq!(f_row.dispatched_until, super::DUE, "the retry is due when its delay passes");
    let r_row = task_row(&store, wf, "r").await;
    assert_eq!((r_row.status.as_str(), r_row.attempts, r_row.dispatched_until), ("QUEUED", 0, super::DUE));
    assert_eq!(
        events_after(&store, wf, before).await,
        [(TaskStarted, Some("f".into())), (TaskFailed, Some("f".into())), (TaskRetrying, Some("f".into()))],
        "the released attempt left no trace"
    );

    // The workflow is cancelled while a peeked attempt of `r` runs: its completion is refused.
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    let r = store.peek(&due).await.expect("peek").into_iter().find(|c| c.key == "r").expect("r peeked again");
    store
        .apply_action(taskorch_domain::WorkflowId(wf), taskorch_domain::lifecycle::Action::Cancel)
        .await
        .expect("cancel");
    let done = peeked(&r, OutcomeKind::Completed(json!(1)), crate::time::now_us());
    let report = store.report(vec![done], &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    assert_eq!((report.stale, report.events.len()), (1, 0));
    let r_row = task_row(&store, wf, "r").await;
    assert_eq!((r_row.status.as_str(), r_row.attempts, r_row.result), ("CANCELLED", 0, None));
}

#[tokio::test]
async fn a_long_peeked_attempt_is_claimed_once_with_its_start_and_goes_on_through_a_pause() {
    use taskorch_domain::lifecycle::Action;
    let (store, _fixture) = store().await;
    let tasks = vec![TaskSpec::new("long", "noop"), TaskSpec::new("short", "noop"), TaskSpec::new("gone", "noop")];
    let (wf, _) = submit(&store, tasks, None).await;
    let due = store.fetch_due(10, None, LEASE_US).await.expect("fetch");
    let read = store.peek(&due).await.expect("peek");
    let of = |key: &str| read.iter().find(|c| c.key == key).expect("peeked").clone();
    let (long, short, gone) = (of("long"), of("short"), of("gone"));
    let started_at = crate::time::now_us() - 60_000;
    // A wrong attempt number claims nothing; the right one is claimed once, as RUNNING from when it started.
    let (claimed, events) = store.claim_started(&[(long.task_id, 2, started_at)], LEASE_US).await.expect("late claim");
    assert!(claimed.is_empty() && events.is_empty());
    let (claimed, events) = store
        .claim_started(&[(long.task_id, 1, started_at), (long.task_id, 1, started_at)], LEASE_US)
        .await
        .expect("late claim");
    assert_eq!(claimed, [long.task_id], "a second request for the same attempt finds it claimed");
    assert_eq!(
        events.iter().map(|e| (e.event_type, e.task_key.clone())).collect::<Vec<_>>(),
        [(taskorch_domain::EventType::TaskStarted, Some("long".into()))]
    );
    let row = task_row(&store, wf, "long").await;
    assert_eq!((row.status.as_str(), row.attempts, row.started_at), ("RUNNING", 1, Some(started_at)));
    assert!(row.lease_until.is_some());

    // Paused while the attempts run: they finish and are recorded, as claimed ones are.
    store.apply_action(taskorch_domain::WorkflowId(wf), Action::Pause).await.expect("pause");
    let now = crate::time::now_us();
    let outcomes = vec![
        Outcome { started_at: None, ..peeked(&long, OutcomeKind::Completed(json!("l")), now) },
        peeked(&short, OutcomeKind::Completed(json!("s")), now),
        // A peeked attempt whose number the row never had (its fence is stale) is refused.
        Outcome { attempt: 3, ..peeked(&gone, OutcomeKind::Completed(json!("g")), now) },
    ];
    let report = store.report(outcomes, &mut || 0.5, &Continuation::default(), LEASE_US).await.expect("report");
    assert_eq!(report.stale, 1);
    for (key, status, attempts) in [("long", "COMPLETED", 1), ("short", "COMPLETED", 1), ("gone", "QUEUED", 0)] {
        let row = task_row(&store, wf, key).await;
        assert_eq!((row.status.as_str(), row.attempts), (status, attempts), "{key}");
    }
    // A new attempt does not start while paused: the peek leaves it out.
    assert!(store.peek(&due).await.expect("peek").is_empty());
}

/// Rows of `table` holding `wf`'s events.
async fn event_rows(store: &Store, table: &str, wf: uuid::Uuid) -> i64 {
    use sea_orm::ConnectionTrait;
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE workflow_id = ?");
    let row = store.db.write.query_one_raw(store.db.stmt(&sql, vec![wf.into()])).await.expect("count");
    row.expect("a row").try_get_by_index(0).expect("count")
}

#[tokio::test]
async fn events_come_back_from_their_chunks_in_any_page_and_through_migration_10_both_ways() {
    use taskorch_domain::{EventType, NewEvent};
    use taskorch_migration::{Migrator, MigratorTrait};
    let (store, _fixture) = store().await;
    // 300 tasks: WORKFLOW_STARTED and 300 TASK_QUEUED, more than one chunk holds.
    let (wf, _) = submit(&store, (0..300).map(|i| TaskSpec::new(format!("t{i}"), "noop")).collect(), None).await;
    let data = json!({ "error": "say \"hi\" \\o/ ✓ {a,b} NULL", "n": [1, null, 2.5] });
    let failed = NewEvent::task(EventType::TaskFailed, "t7").with_data(data.clone());
    store.append_events(&store.db.write, wf, vec![failed], crate::time::now_us()).await.expect("append");
    assert_eq!(event_rows(&store, "event_chunk", wf).await, 3, "256 + 45 submitted events, then one");

    let id = taskorch_domain::WorkflowId(wf);
    let all = store.events(id, 0, 1000).await.expect("events");
    assert_eq!(all.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=302).collect::<Vec<_>>());
    assert_eq!(all[0].event_type, EventType::WorkflowStarted);
    assert_eq!((all[0].task_key.as_deref(), &all[0].data), (None, &serde_json::Value::Null));
    assert_eq!((all[1].event_type, all[1].task_key.as_deref()), (EventType::TaskQueued, Some("t0")));
    assert_eq!((all[301].event_type, all[301].task_key.as_deref()), (EventType::TaskFailed, Some("t7")));
    assert_eq!(all[301].data, data);
    // Pages start and end inside chunks and cross from one to the next.
    for (after, limit) in [(100, 5), (250, 10), (255, 1), (256, 1), (300, 10), (302, 10), (0, 1)] {
        let page = store.events(id, after, limit).await.expect("page");
        let want: Vec<_> = all.iter().filter(|e| e.sequence > after).take(limit as usize).cloned().collect();
        assert_eq!(page, want, "after {after}, at most {limit}");
    }

    // Down to one row per event and back: the same events.
    Migrator::down(&store.db.write, Some(1)).await.expect("migration 10 down");
    assert_eq!(event_rows(&store, "event", wf).await, 302);
    Migrator::up(&store.db.write, None).await.expect("migration 10 up");
    assert_eq!(event_rows(&store, "event_chunk", wf).await, 302, "an existing event becomes a chunk of its own");
    assert_eq!(store.events(id, 0, 1000).await.expect("events"), all);
    assert_eq!(store.events(id, 250, 10).await.expect("page"), all[250..260].to_vec());
}
