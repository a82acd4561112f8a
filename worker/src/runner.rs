//! The worker loop: receive → claim (fenced, batched) → run with timeout and cancellation → report (batched),
//! with heartbeats extending the leases of running attempts and a graceful stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskorch_domain::{TaskId, WorkflowId};
use taskorch_engine::dispatcher::{DispatcherOptions, run_dispatcher, run_reaper};
use taskorch_engine::store::{Claimed, Continuation, Outcome, OutcomeKind};
use taskorch_engine::{Engine, InProcessQueue, Phase, TaskQueue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::registry::{Registry, TaskContext};

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
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self { concurrency: 64, kinds: None, grace: Duration::from_secs(10), heartbeat: Duration::from_secs(5) }
    }
}

/// Attempts running in this worker: phase, attempt, stop signal, and (workflow, key) to match events.
type Held = Arc<Mutex<HashMap<TaskId, HeldAttempt>>>;

type Ack = Box<dyn taskorch_engine::queue::AckHandle>;

struct HeldAttempt {
    phase: Phase,
    attempt: i32,
    lost: CancellationToken,
    workflow_id: taskorch_domain::WorkflowId,
    key: String,
}

/// An outcome on its way to the reporter.
struct Reported {
    outcome: Outcome,
    /// The message to acknowledge once the outcome is committed.
    ack: Option<Ack>,
    /// Trace context of the attempt's `task.execute` span.
    trace: Option<String>,
    workflow_id: WorkflowId,
    /// Whether the task has dependents (its completion may continue with one).
    continues: bool,
}

/// Starts claimed attempts: shared by the claim loop and the reporter's continuations.
#[derive(Clone)]
struct Launcher {
    registry: Arc<Registry>,
    held: Held,
    abort: CancellationToken,
}

impl Launcher {
    /// Runs `task` holding `permit` (a worker slot); its outcome goes to `report_tx` with `ack`.
    fn start(
        &self,
        task: Claimed,
        permit: OwnedSemaphorePermit,
        ack: Option<Ack>,
        parent: Option<&str>,
        report_tx: mpsc::UnboundedSender<Reported>,
    ) {
        let lost = CancellationToken::new();
        if let Ok(mut h) = self.held.lock() {
            h.insert(
                task.task_id,
                HeldAttempt {
                    phase: task.phase,
                    attempt: task.attempt,
                    lost: lost.clone(),
                    workflow_id: task.workflow_id,
                    key: task.key.clone(),
                },
            );
        }
        let registry = self.registry.clone();
        let held = self.held.clone();
        let abort = self.abort.clone();
        let span = tracing::info_span!(
            "task.execute",
            workflow.id = %task.workflow_id, task.id = %task.task_id, task.kind = %task.kind, attempt = task.attempt
        );
        // The dispatch span (possibly in another process) is the parent, through the message.
        taskorch_engine::trace::set_parent(&span, parent);
        let execute_trace = taskorch_engine::trace::traceparent(&span);
        let (continues, workflow_id) = (task.has_dependents, task.workflow_id);
        tokio::spawn(
            async move {
                let id = task.task_id;
                let outcome = execute(task, &registry, lost.clone(), abort).await;
                if let Ok(mut h) = held.lock() {
                    h.remove(&id);
                }
                // A lost attempt's result is not reported: the store would refuse it anyway.
                if !lost.is_cancelled() {
                    let _ = report_tx.send(Reported { outcome, ack, trace: execute_trace, workflow_id, continues });
                } else if let Some(ack) = ack {
                    ack.ack().await;
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Most dependents one report batch claims for its own worker.
const CONTINUE_MAX: usize = 32;

/// What the reporter needs to run, at once, the dependents its completions made ready (see
/// `taskorch_engine::store::Continuation`): free slots, the launcher, the kinds this worker serves.
struct Continue {
    slots: Arc<Semaphore>,
    launcher: Launcher,
    /// Weak, so that the reporter ends once the worker and its attempts are gone.
    report_tx: mpsc::WeakUnboundedSender<Reported>,
    kinds: Vec<String>,
    shutdown: CancellationToken,
}

impl Continue {
    /// Free slots reserved for the continuations of a batch with `completions` completions (none once stopping).
    fn reserve(&self, completions: usize) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::new();
        while !self.shutdown.is_cancelled() && permits.len() < completions.min(CONTINUE_MAX) {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        permits
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
    let launcher = Launcher { registry: registry.clone(), held: held.clone(), abort: abort.clone() };
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
        let claimed = claim_with_retry(&engine, &dispatches).await.unwrap_or_default();
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
}

async fn claim_with_retry(engine: &Engine, batch: &[taskorch_engine::Dispatch]) -> Option<Vec<Claimed>> {
    for attempt in 0..5u32 {
        match engine.claim(batch).await {
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

async fn execute(task: Claimed, registry: &Registry, lost: CancellationToken, abort: CancellationToken) -> Outcome {
    let cancel = CancellationToken::new();
    let ctx = TaskContext {
        workflow_id: task.workflow_id,
        task_id: task.task_id,
        key: task.key.clone(),
        kind: task.kind.clone(),
        phase: task.phase,
        payload: task.payload,
        inputs: task.inputs,
        attempt: task.attempt.max(1) as u32,
        idempotency_key: task.idempotency_key,
        cancel: cancel.clone(),
    };
    let outcome = |kind| Outcome { task_id: task.task_id, phase: task.phase, attempt: task.attempt, kind };
    let phase = match task.phase {
        Phase::Run => "run",
        Phase::Compensate => "compensate",
    };
    if task.phase == Phase::Run {
        metrics::histogram!("taskorch_task_queue_wait_seconds", "kind" => task.kind.clone())
            .record(task.queue_wait_us as f64 / 1e6);
    }
    let started = std::time::Instant::now();
    let record = |label: &'static str| {
        metrics::counter!("taskorch_task_executions_total", "kind" => task.kind.clone(), "outcome" => label, "phase" => phase)
            .increment(1);
        metrics::histogram!("taskorch_task_duration_seconds", "kind" => task.kind.clone(), "phase" => phase)
            .record(started.elapsed().as_secs_f64());
    };
    let Some(handler) = registry.get(&task.kind) else {
        record("failed");
        return outcome(OutcomeKind::Failed(format!("no handler is registered for task kind `{}`", task.kind)));
    };
    let run = tokio::spawn(async move { handler.run(ctx).await });
    let timeout = task.timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let timed = async {
        match timeout {
            Some(t) => tokio::time::timeout(t, run).await.ok(),
            None => Some(run.await),
        }
    };
    let result = tokio::select! {
        r = timed => r,
        _ = lost.cancelled() => {
            cancel.cancel();
            record("cancelled");
            return outcome(OutcomeKind::Failed("cancelled".into()));
        }
        _ = abort.cancelled() => {
            cancel.cancel();
            record("released");
            return outcome(OutcomeKind::Released);
        }
    };
    let timed_out = result.is_none();
    let kind = match result {
        None => {
            cancel.cancel();
            record("timed_out");
            OutcomeKind::Failed(format!("timed out after {} ms", task.timeout_ms.unwrap_or_default()))
        }
        Some(Err(join)) => OutcomeKind::Failed(format!("handler crashed: {join}")),
        Some(Ok(Err(e))) => OutcomeKind::Failed(e.0),
        Some(Ok(Ok(value))) => OutcomeKind::Completed(value),
    };
    match &kind {
        OutcomeKind::Failed(error) if !timed_out => {
            record("failed");
            tracing::info!(error = %error, "attempt failed");
        }
        OutcomeKind::Completed(_) => {
            record("completed");
            tracing::info!("attempt completed");
        }
        _ => tracing::info!("attempt failed"),
    }
    outcome(kind)
}

/// What the reporter gathered for one batch.
#[derive(Default)]
struct Intake {
    batch: Vec<Outcome>,
    acks: Vec<Ack>,
    /// One `task.complete` span per traced outcome, child of its `task.execute`, open across the commit.
    spans: Vec<tracing::Span>,
    /// A `task.complete` span per workflow: the parent of the continuations started in that workflow.
    parents: HashMap<WorkflowId, String>,
}

impl Intake {
    /// Takes one outcome; returns 1 for a completion of a task with dependents (room for a continuation).
    fn add(&mut self, r: Reported) -> usize {
        if let Some(t) = r.trace {
            let span = tracing::info_span!("task.complete", task.id = %r.outcome.task_id, attempt = r.outcome.attempt);
            taskorch_engine::trace::set_parent(&span, Some(&t));
            if let Some(tp) = taskorch_engine::trace::traceparent(&span) {
                self.parents.insert(r.workflow_id, tp);
            }
            self.spans.push(span);
        }
        let o = r.outcome;
        let continues = r.continues && o.phase == Phase::Run && matches!(o.kind, OutcomeKind::Completed(_));
        self.batch.push(o);
        self.acks.extend(r.ack);
        usize::from(continues)
    }

    fn clear(&mut self) {
        self.batch.clear();
        self.acks.clear();
        self.spans.clear();
        self.parents.clear();
    }
}

/// Group commit: reports everything waiting in one transaction.
async fn run_reporter(engine: Engine, mut rx: mpsc::UnboundedReceiver<Reported>, cont: Continue) {
    let mut intake = Intake::default();
    while let Some(first) = rx.recv().await {
        let mut completions = intake.add(first);
        while intake.batch.len() < 512 {
            match rx.try_recv() {
                Ok(r) => completions += intake.add(r),
                Err(_) => break,
            }
        }
        let mut permits = cont.reserve(completions);
        let continuation = Continuation { max: permits.len(), kinds: cont.kinds.clone() };
        let mut delay = Duration::from_millis(20);
        loop {
            let start = |continued: Vec<Claimed>| {
                for task in continued {
                    let (Some(permit), Some(tx)) = (permits.pop(), cont.report_tx.upgrade()) else { break };
                    // Started by a completion in its workflow: a child of that completion's span.
                    let parent = intake.parents.get(&task.workflow_id).map(String::as_str);
                    cont.launcher.start(task, permit, None, parent, tx);
                }
            };
            match engine.report_and_continue(intake.batch.clone(), &continuation, start).await {
                Ok(report) => {
                    if report.stale > 0 {
                        tracing::info!(
                            stale = report.stale,
                            "results from attempts that no longer hold their task were dropped"
                        );
                    }
                    break;
                }
                Err(err) => {
                    // Reports are fenced, so repeating one is harmless; give up only after long.
                    tracing::warn!(error = %err, "reporting outcomes failed; retrying");
                    if delay > Duration::from_secs(10) {
                        tracing::error!("dropping outcomes after repeated failures; their leases will expire");
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        drop(permits);
        // Acknowledge only now that the outcomes are committed: a crash before this redelivers the messages.
        futures::future::join_all(intake.acks.iter().map(|ack| ack.ack())).await;
        intake.clear();
    }
}

async fn run_heartbeat(engine: Engine, held: Held, period: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        let snapshot: Vec<(TaskId, Phase, i32)> = match held.lock() {
            Ok(h) => h.iter().map(|(id, a)| (*id, a.phase, a.attempt)).collect(),
            Err(_) => continue,
        };
        if snapshot.is_empty() {
            continue;
        }
        match engine.heartbeat(&snapshot).await {
            Ok(lost) => {
                if let Ok(h) = held.lock() {
                    for id in lost {
                        if let Some(a) = h.get(&id) {
                            tracing::info!(task.id = %id, "attempt no longer holds its task; cancelling it");
                            a.lost.cancel();
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
        }
    }
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
            for a in h.values().filter(|a| a.workflow_id == event.workflow_id && a.key == key) {
                tracing::info!(workflow.id = %a.workflow_id, task.key = %a.key, "task cancelled; stopping its attempt");
                a.lost.cancel();
            }
        }
    }
}
