//! Group commit of outcomes, and the continuations a batch's completions start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use taskorch_domain::WorkflowId;
use taskorch_engine::store::{Claimed, Continuation, Outcome, OutcomeKind};
use taskorch_engine::{Engine, Phase};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Ack;
use super::launch::Launcher;

/// An outcome on its way to the reporter.
pub(super) struct Reported {
    pub(super) outcome: Outcome,
    /// The message to acknowledge once the outcome is committed.
    pub(super) ack: Option<Ack>,
    /// Trace context of the attempt's `task.execute` span.
    pub(super) trace: Option<String>,
    pub(super) workflow_id: WorkflowId,
    /// Whether the task has dependents (its completion may continue with one).
    pub(super) continues: bool,
}

/// Most dependents one report batch claims for its own worker.
const CONTINUE_MAX: usize = 32;

/// What the reporter needs to run, at once, the dependents its completions made ready (see
/// `taskorch_engine::store::Continuation`): free slots, the launcher, the kinds this worker serves.
pub(super) struct Continue {
    pub(super) slots: Arc<Semaphore>,
    pub(super) launcher: Launcher,
    /// Weak, so that the reporter ends once the worker and its attempts are gone.
    pub(super) report_tx: mpsc::WeakUnboundedSender<Reported>,
    pub(super) kinds: Vec<String>,
    pub(super) shutdown: CancellationToken,
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

/// Report transactions in flight at once: while one commits, the next batch is gathered and written, so a worker
/// draining a backlog does not wait for each commit's round trips before starting the next (they are fenced and
/// lock workflow rows in id order, as reports of separate workers always were).
const REPORTERS: usize = 2;

/// Group commit: each of [`REPORTERS`] loops reports everything waiting in one transaction.
pub(super) async fn run_reporter(engine: Engine, rx: mpsc::UnboundedReceiver<Reported>, cont: Continue) {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let cont = Arc::new(cont);
    let loops: Vec<_> =
        (0..REPORTERS).map(|_| tokio::spawn(report_loop(engine.clone(), rx.clone(), cont.clone()))).collect();
    futures::future::join_all(loops).await;
}

async fn report_loop(
    engine: Engine,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Reported>>>,
    cont: Arc<Continue>,
) {
    let mut intake = Intake::default();
    loop {
        let mut completions = 0;
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { break };
            completions += intake.add(first);
            while intake.batch.len() < 512 {
                match rx.try_recv() {
                    Ok(r) => completions += intake.add(r),
                    Err(_) => break,
                }
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
