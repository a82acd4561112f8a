//! The worker loop: receive → claim (fenced, batched) → run with timeout and cancellation → report (batched),
//! with heartbeats extending the leases of running attempts and a graceful stop. `launch` starts and runs an
//! attempt; `reporter` commits outcomes in batches and starts the continuations they allow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskorch_domain::TaskId;
use taskorch_engine::dispatcher::{DispatcherOptions, run_dispatcher, run_reaper};
use taskorch_engine::store::Claimed;
use taskorch_engine::{Engine, InProcessQueue, Phase, TaskQueue};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

mod claimer;
mod launch;
mod reporter;

use claimer::Claimer;
use launch::Launcher;
use reporter::{Continue, Reported, run_reporter};

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Attempts run at once.
    pub concurrency: usize,
    /// Only these task kinds (all when `None`).
    pub kinds: Option<Vec<String>>,
    /// On shutdown, how long in-flight attempts may take to finish before they are released.
    pub grace: Duration,
    /// How often leases of running attempts are extended.
    pub heartbeat: Duration,
    /// How long a run attempt may run before its claim is written; one that ends sooner is recorded with its claim
    /// and outcome in one write (`Engine::peek`). Zero claims every attempt before it runs.
    pub claim_after: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 64,
            kinds: None,
            grace: Duration::from_secs(10),
            heartbeat: Duration::from_secs(5),
            claim_after: Duration::from_millis(50),
        }
    }
}

/// Attempts running in this worker: phase, attempt, stop signal, and (workflow, key) to match events.
type Held = Arc<Mutex<HashMap<TaskId, HeldAttempt>>>;

type Ack = Box<dyn taskorch_engine::queue::AckHandle>;

struct HeldAttempt {
    phase: Phase,
    attempt: i32,
    /// The claim is written (a peeked attempt has no lease to extend until then).
    claimed: bool,
    lost: CancellationToken,
    workflow_id: taskorch_domain::WorkflowId,
    key: String,
    kind: String,
}

impl HeldAttempt {
    /// Logs `message` about this attempt of task `id` with the ids every task log line carries.
    fn log(&self, id: TaskId, message: &str) {
        tracing::info!(
            workflow.id = %self.workflow_id, task.id = %id, task.kind = %self.kind, attempt = self.attempt,
            task.key = %self.key, "{message}"
        );
    }
}

/// Runs the dispatcher and reaper of this process plus a worker over an in-process queue (the embedded mode,
/// used by the server and by a separate worker process without a broker). Returns after a graceful stop.
pub async fn run_embedded(engine: Engine, registry: Arc<Registry>, opts: WorkerOptions, shutdown: CancellationToken) {
    let local = Arc::new(InProcessQueue::new());
    let queue: Arc<dyn TaskQueue> = local.clone();
    // Dispatching stops as soon as the stop begins, so nothing new is handed to a worker that is leaving.
    let dispatcher = tokio::spawn(run_dispatcher(
        engine.clone(),
        queue.clone(),
        DispatcherOptions { kinds: opts.kinds.clone(), max_backlog: opts.concurrency.max(256) * 2 },
        shutdown.clone(),
    ));
    let reaper = tokio::spawn(run_reaper(engine.clone(), engine.options().reaper_period, shutdown.clone()));
    run_worker(engine.clone(), queue, registry, opts, shutdown).await;
    let _ = dispatcher.await;
    let _ = reaper.await;
    // Dispatched but never claimed: make them due again now rather than after the redelivery delay.
    let left: Vec<_> = local.drain().into_iter().map(|d| d.task_id).collect();
    if !left.is_empty()
        && let Err(err) = engine.undispatch(&left).await
    {
        tracing::warn!(error = %err, "could not release unclaimed dispatches; they go out after the redelivery delay");
    }
}

/// Consumes `queue` until `shutdown`, then stops claiming, lets in-flight attempts finish within the grace
/// period and releases the rest back to the queue.
pub async fn run_worker(
    engine: Engine,
    queue: Arc<dyn TaskQueue>,
    registry: Arc<Registry>,
    opts: WorkerOptions,
    shutdown: CancellationToken,
) {
    let concurrency = opts.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let held: Held = Arc::new(Mutex::new(HashMap::new()));
    let abort = CancellationToken::new();
    let (report_tx, report_rx) = mpsc::unbounded_channel::<Reported>();
    let launcher = Launcher {
        registry: registry.clone(),
        held: held.clone(),
        abort: abort.clone(),
        claimer: Claimer::start(engine.clone()),
        claim_after: opts.claim_after,
    };
    let continuation = Continue {
        slots: slots.clone(),
        launcher: launcher.clone(),
        report_tx: report_tx.downgrade(),
        kinds: opts.kinds.clone().unwrap_or_else(|| registry.kinds()),
        shutdown: shutdown.clone(),
    };
    let reporter = tokio::spawn(run_reporter(engine.clone(), report_rx, continuation));
    let beats = CancellationToken::new();
    let heartbeat = tokio::spawn(run_heartbeat(engine.clone(), held.clone(), opts.heartbeat, beats.clone()));
    let signals = tokio::spawn(run_cancel_signals(engine.clone(), held.clone(), beats.clone()));

    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        // Only one slot is held while waiting: the others stay free for the reporter's continuations.
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = queue.receive(1 + slots.available_permits()) => match b {
                Ok(b) => b,
                Err(err) => {
                    tracing::warn!(error = %err, "queue receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        // A slot for every delivery (waiting for running attempts if continuations took some meanwhile).
        let mut permits = vec![first];
        while permits.len() < batch.len() {
            match slots.clone().acquire_owned().await {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut acks: HashMap<TaskId, Ack> = HashMap::with_capacity(batch.len());
        let mut dispatches = Vec::with_capacity(batch.len());
        for delivery in batch {
            let (dispatch, ack) = delivery.into_parts();
            if let Some(ack) = ack {
                // A duplicate delivery of the same task in one batch: acknowledge the extra one at once.
                if let Some(previous) = acks.insert(dispatch.task_id, ack) {
                    tokio::spawn(async move { previous.ack().await });
                }
            }
            dispatches.push(dispatch);
        }
        let claimed = take_with_retry(&engine, &dispatches, !opts.claim_after.is_zero()).await.unwrap_or_default();
        let mut traces: HashMap<TaskId, String> =
            dispatches.into_iter().filter_map(|d| Some((d.task_id, d.trace?))).collect();
        let mut claimed_acks = HashMap::with_capacity(claimed.len());
        for task in &claimed {
            if let Some(ack) = acks.remove(&task.task_id) {
                claimed_acks.insert(task.task_id, ack);
            }
        }
        // Stale or duplicate messages (and messages of a failed claim, which the dispatcher sends again later).
        if !acks.is_empty() {
            let ids: Vec<String> = acks.keys().map(|id| id.to_string()).collect();
            tracing::info!(count = acks.len(), tasks = %ids.join(","), "acknowledging deliveries that claimed nothing");
        }
        for (_, ack) in acks {
            tokio::spawn(async move { ack.ack().await });
        }
        for task in claimed {
            let Some(permit) = permits.pop() else { break };
            let ack = claimed_acks.remove(&task.task_id);
            let parent = traces.remove(&task.task_id);
            launcher.start(task, permit, ack, parent.as_deref(), report_tx.clone());
        }
    }

    // Graceful stop: no more claims; wait for in-flight attempts, then release what is left.
    let all = concurrency as u32;
    if tokio::time::timeout(opts.grace, slots.acquire_many(all)).await.is_err() {
        tracing::info!("grace period over: releasing unfinished attempts");
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
    }
    beats.cancel();
    let _ = heartbeat.await;
    let _ = signals.await;
    drop(report_tx);
    let _ = reporter.await;
    // The reporter's events are published in the background: out before the worker stops.
    engine.flush_events().await;
}

/// The deliveries' tasks, ready to run: run-phase ones peeked when `peek` (their claims are written later, see
/// `WorkerOptions::claim_after`), the others claimed.
async fn take_with_retry(engine: &Engine, batch: &[taskorch_engine::Dispatch], peek: bool) -> Option<Vec<Claimed>> {
    let take = || async {
        if !peek {
            return engine.claim(batch).await;
        }
        let mut tasks = engine.peek(batch).await?;
        let compensations: Vec<_> = batch.iter().filter(|d| d.phase == Phase::Compensate).cloned().collect();
        if !compensations.is_empty() {
            tasks.extend(engine.claim(&compensations).await?);
        }
        Ok(tasks)
    };
    for attempt in 0..5u32 {
        match take().await {
            Ok(c) => return Some(c),
            Err(err) => {
                tracing::warn!(error = %err, attempt, "claim failed; retrying");
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    // The tasks stay QUEUED and are dispatched again after the redelivery delay.
    None
}

async fn run_heartbeat(engine: Engine, held: Held, period: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let snapshot: Vec<(TaskId, Phase, i32)> = match held.lock() {
            Ok(h) => h.iter().filter(|(_, a)| a.claimed).map(|(id, a)| (*id, a.phase, a.attempt)).collect(),
            Err(_) => continue,
        };
        if snapshot.is_empty() {
            continue;
        }
        match engine.heartbeat(&snapshot).await {
            Ok(lost) => {
                if let Ok(h) = held.lock() {
                    for (id, a) in lost_attempts(&h, &snapshot, &lost) {
                        a.log(id, "attempt no longer holds its task; cancelling it");
                        a.lost.cancel();
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
    }
}

/// The held attempts a heartbeat found lost: only those it asked about. While it was in flight, the attempt it
/// asked about may have ended and a later attempt of the same task (a retry, or a compensation run again by
/// `retryWorkflow`) started here; that one holds its task and goes on.
fn lost_attempts<'a>(
    held: &'a HashMap<TaskId, HeldAttempt>,
    asked: &[(TaskId, Phase, i32)],
    lost: &[TaskId],
) -> Vec<(TaskId, &'a HeldAttempt)> {
    lost.iter()
        .filter_map(|id| {
            let (_, phase, attempt) = asked.iter().find(|(asked_id, _, _)| asked_id == id)?;
            held.get(id).filter(|a| a.phase == *phase && a.attempt == *attempt).map(|a| (*id, a))
        })
        .collect()
}

/// Stops running attempts as soon as their task is cancelled (workflow cancelled or compensating), instead of
/// waiting for the next heartbeat to find out.
async fn run_cancel_signals(engine: Engine, held: Held, stop: CancellationToken) {
    let mut events = engine.bus().subscribe();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = events.recv() => e,
        };
        let event = match event {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        if event.event_type != taskorch_domain::EventType::TaskCancelled {
            continue;
        }
        let Some(key) = event.task_key.as_deref() else {
            continue;
        };
        if let Ok(h) = held.lock() {
            for (id, a) in h.iter().filter(|(_, a)| a.workflow_id == event.workflow_id && a.key == key) {
                a.log(*id, "task cancelled; stopping its attempt");
                a.lost.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(phase: Phase, attempt: i32) -> HeldAttempt {
        HeldAttempt {
            phase,
            attempt,
            claimed: true,
            lost: CancellationToken::new(),
            workflow_id: taskorch_domain::WorkflowId(uuid::Uuid::nil()),
            key: "a".into(),
            kind: "noop".into(),
        }
    }

    #[test]
    fn a_lost_answer_stops_only_the_attempt_it_was_about() {
        let (ended, running) = (TaskId(uuid::Uuid::new_v4()), TaskId(uuid::Uuid::new_v4()));
        let asked = [(ended, Phase::Compensate, 1), (running, Phase::Run, 2)];
        let mut held = HashMap::new();
        // `ended`'s compensation failed while the heartbeat was in flight and was run again (attempt 2).
        held.insert(ended, attempt(Phase::Compensate, 2));
        held.insert(running, attempt(Phase::Run, 2));
        assert!(lost_attempts(&held, &asked, &[ended]).is_empty());
        let lost = lost_attempts(&held, &asked, &[running]);
        assert_eq!(
            lost.iter().map(|(id, a)| (*id, a.phase, a.attempt)).collect::<Vec<_>>(),
            vec![(running, Phase::Run, 2)]
        );
        assert!(lost_attempts(&held, &asked, &[TaskId(uuid::Uuid::new_v4())]).is_empty());
    }
}
