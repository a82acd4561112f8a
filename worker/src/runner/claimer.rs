//! Late claims: peeked attempts that run longer than `WorkerOptions::claim_after` have their claims written here,
//! in batches (many long attempts passing the mark together are one transaction).

use std::collections::HashSet;
use std::time::Duration;

use taskorch_domain::{TaskId, WorkflowId};
use taskorch_engine::store::Claimed;
use taskorch_engine::{Dispatch, Engine, Phase};
use tokio::sync::{mpsc, oneshot};

/// What a late claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LateClaim {
    /// Written: the attempt now holds its task under a lease.
    Claimed,
    /// The row moved on (cancelled, claimed by a duplicate delivery): the attempt must stop.
    Lost,
    /// The database could not be reached: the attempt stays peeked and its claim goes with its outcome.
    Unwritten,
}

type Request = (Dispatch, oneshot::Sender<LateClaim>);

/// Sends late claims to the batching task; it ends when every handle is dropped.
#[derive(Clone)]
pub(super) struct Claimer {
    tx: mpsc::UnboundedSender<Request>,
}

/// Most claims per transaction.
const BATCH: usize = 512;

impl Claimer {
    pub(super) fn start(engine: Engine) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(engine, rx));
        Self { tx }
    }

    /// Claims the peeked attempt `attempt` of `task_id`.
    pub(super) async fn claim(&self, task_id: TaskId, workflow_id: WorkflowId, attempt: i32) -> LateClaim {
        let dispatch = Dispatch {
            task_id,
            workflow_id,
            phase: Phase::Run,
            kind: String::new(),
            priority: 0,
            // A peeked attempt's number is the one its claim records: the row's count is one less.
            fence: attempt - 1,
            seq: 0,
            trace: None,
        };
        let (reply, answer) = oneshot::channel();
        if self.tx.send((dispatch, reply)).is_err() {
            return LateClaim::Unwritten;
        }
        answer.await.unwrap_or(LateClaim::Unwritten)
    }
}

async fn run(engine: Engine, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let dispatches: Vec<Dispatch> = batch.iter().map(|(d, _)| d.clone()).collect();
        let answer = match claim(&engine, &dispatches).await {
            Some(claimed) => {
                let ids: HashSet<_> = claimed.iter().map(|c| c.task_id).collect();
                Some(ids)
            }
            None => None,
        };
        for (d, reply) in batch.drain(..) {
            let _ = reply.send(match &answer {
                Some(ids) if ids.contains(&d.task_id) => LateClaim::Claimed,
                Some(_) => LateClaim::Lost,
                None => LateClaim::Unwritten,
            });
        }
    }
}

/// A few tries: a claim that cannot be written leaves the attempts peeked, which is safe while their dispatches'
/// visibility lasts (their outcomes then carry the claims).
async fn claim(engine: &Engine, batch: &[Dispatch]) -> Option<Vec<Claimed>> {
    for attempt in 0..3u32 {
        match engine.claim(batch).await {
            Ok(c) => return Some(c),
            Err(err) => {
                tracing::warn!(error = %err, attempt, "late claim failed; retrying");
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    None
}
