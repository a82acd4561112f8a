//! Starting a claimed attempt and running it: handler, timeout, cancellation, metrics.

use std::sync::Arc;
use std::time::Duration;

use taskorch_engine::Phase;
use taskorch_engine::store::{Claimed, Outcome, OutcomeKind};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::claimer::{Claimer, LateClaim};
use super::{Ack, Held, HeldAttempt, Reported};
use crate::registry::{Registry, TaskContext};

/// Starts claimed attempts: shared by the claim loop and the reporter's continuations.
#[derive(Clone)]
pub(super) struct Launcher {
    pub(super) registry: Arc<Registry>,
    pub(super) held: Held,
    pub(super) abort: CancellationToken,
    /// Writes the claims of peeked attempts that run past `claim_after`.
    pub(super) claimer: Claimer,
    pub(super) claim_after: Duration,
}

impl Launcher {
    /// Runs `task` holding `permit` (a worker slot); its outcome goes to `report_tx` with `ack`.
    pub(super) fn start(
        &self,
        task: Claimed,
        permit: OwnedSemaphorePermit,
        ack: Option<Ack>,
        parent: Option<&str>,
        report_tx: mpsc::UnboundedSender<Reported>,
    ) {
        let lost = CancellationToken::new();
        if let Ok(mut h) = self.held.lock() {
            // A second delivery of a task this worker is already running unclaimed: the first one runs it.
            if task.deferred && h.contains_key(&task.task_id) {
                drop(permit);
                if let Some(ack) = ack {
                    tokio::spawn(async move { ack.ack().await });
                }
                return;
            }
            h.insert(
                task.task_id,
                HeldAttempt {
                    phase: task.phase,
                    attempt: task.attempt,
                    claimed: !task.deferred,
                    lost: lost.clone(),
                    workflow_id: task.workflow_id,
                    key: task.key.clone(),
                    kind: task.kind.clone(),
                },
            );
        }
        let registry = self.registry.clone();
        let held = self.held.clone();
        let abort = self.abort.clone();
        let late = self.claimer.clone();
        let claim_after = self.claim_after;
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
                let (id, phase, attempt) = (task.task_id, task.phase, task.attempt);
                let claim = LateClaimAfter { claimer: late, after: claim_after, held: held.clone() };
                let outcome = execute(task, &registry, lost.clone(), abort, claim).await;
                // Only this attempt's entry: a later attempt of the task may have started here meanwhile (this one
                // was reaped as lost, and the task retried).
                if let Ok(mut h) = held.lock()
                    && h.get(&id).is_some_and(|a| a.phase == phase && a.attempt == attempt)
                {
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

/// How a peeked attempt gets its claim written when it runs long.
struct LateClaimAfter {
    claimer: Claimer,
    after: Duration,
    held: Held,
}

async fn execute(
    task: Claimed,
    registry: &Registry,
    lost: CancellationToken,
    abort: CancellationToken,
    late: LateClaimAfter,
) -> Outcome {
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
    // Set while the claim of a peeked attempt is not written: the report writes it with the outcome.
    let mut started_at = task.deferred.then(taskorch_engine::time::now_us);
    let (task_id, task_phase, attempt) = (task.task_id, task.phase, task.attempt);
    let outcome = |kind, started_at| Outcome { task_id, phase: task_phase, attempt, kind, started_at };
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
        let error = format!("no handler is registered for task kind `{}`", task.kind);
        return outcome(OutcomeKind::Failed(error), started_at);
    };
    let run = tokio::spawn(async move { handler.run(ctx).await });
    let timeout = task.timeout_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
    let timed = async {
        match timeout {
            Some(t) => tokio::time::timeout(t, run).await.ok(),
            None => Some(run.await),
        }
    };
    tokio::pin!(timed);
    let claim_due = tokio::time::sleep(late.after);
    tokio::pin!(claim_due);
    let mut claim_pending = started_at.is_some();
    // The late claim in flight: polled beside the handler, so a timeout, a cancellation or a stop is noticed while
    // the database is slow to answer.
    let mut claiming: Option<std::pin::Pin<Box<dyn std::future::Future<Output = LateClaim> + Send + '_>>> = None;
    let settle = |answer: LateClaim, started_at: &mut Option<i64>, claim_pending: &mut bool| match answer {
        LateClaim::Claimed => {
            *started_at = None;
            if let Ok(mut h) = late.held.lock()
                && let Some(a) = h.get_mut(&task_id)
            {
                a.claimed = true;
            }
        }
        LateClaim::Lost => {
            tracing::info!("the task moved on before the attempt's claim was written; stopping it");
            lost.cancel();
        }
        // Until the dispatch's visibility runs out the task is still this attempt's: ask again at the next mark.
        LateClaim::Unwritten => *claim_pending = true,
    };
    let result = loop {
        tokio::select! {
            r = &mut timed => break r,
            _ = &mut claim_due, if claim_pending => {
                claim_pending = false;
                claim_due.as_mut().reset(tokio::time::Instant::now() + late.after);
                claiming = Some(Box::pin(late.claimer.claim(task_id, attempt, started_at.unwrap_or_default())));
            }
            answer = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                claiming = None;
                settle(answer, &mut started_at, &mut claim_pending);
            }
            _ = lost.cancelled() => {
                cancel.cancel();
                record("cancelled");
                return outcome(OutcomeKind::Failed("cancelled".into()), started_at);
            }
            _ = abort.cancelled() => {
                cancel.cancel();
                record("released");
                // Released as what it is: claimed or not.
                if let Some(c) = claiming.take() {
                    settle(c.await, &mut started_at, &mut claim_pending);
                }
                return outcome(OutcomeKind::Released, started_at);
            }
        }
    };
    // Ended while its late claim was in flight: its outcome is that of a claimed attempt only if the claim was
    // written.
    if let Some(c) = claiming.take() {
        settle(c.await, &mut started_at, &mut claim_pending);
        if lost.is_cancelled() {
            return outcome(OutcomeKind::Failed("cancelled".into()), started_at);
        }
    }
    let timed_out = result.is_none();
    let kind = match result {
        None => {
            cancel.cancel();
            record("timed_out");
            OutcomeKind::Failed(format!("timed out after {} ms", task.timeout_ms.unwrap_or_default()))
        }
        Some(Err(join)) => OutcomeKind::Failed(format!("handler crashed: {join}")),
        Some(Ok(Err(e))) => OutcomeKind::Failed(e.0),
        Some(Ok(Ok(value))) => match taskorch_domain::json::result_refusal(&value) {
            None => OutcomeKind::Completed(value),
            Some(refusal) => OutcomeKind::Failed(refusal),
        },
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
    outcome(kind, started_at)
}
