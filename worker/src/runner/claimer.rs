//! Late claims: peeked attempts that run longer than `WorkerOptions::claim_after` have their claims written here,
//! in batches (many long attempts passing the mark together are one transaction).

use std::collections::HashSet;
use std::time::Duration;

use taskorch_domain::TaskId;
use taskorch_engine::Engine;
use tokio::sync::{mpsc, oneshot};

/// What a late claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LateClaim {
    /// Written: the attempt now holds its task under a lease.
    Claimed,
    /// The row moved on (cancelled, claimed through another delivery): the attempt must stop.
    Lost,
    /// The database could not be reached: the attempt stays peeked (ask again later).
    Unwritten,
}

/// A peeked attempt (task, attempt, when it started) and where its answer goes.
type Request = ((TaskId, i32, i64), oneshot::Sender<LateClaim>);

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

    /// Claims attempt `attempt` of `task_id`, peeked and started at `started_at` (µs).
    pub(super) async fn claim(&self, task_id: TaskId, attempt: i32, started_at: i64) -> LateClaim {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(((task_id, attempt, started_at), reply)).is_err() {
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
        let attempts: Vec<(TaskId, i32, i64)> = batch.iter().map(|(a, _)| *a).collect();
        let mut claimed: Option<HashSet<TaskId>> = claim(&engine, &attempts).await.map(|ids| ids.into_iter().collect());
        for ((attempt, _, _), reply) in batch.drain(..) {
            let answer = match claimed.as_mut() {
                // One claim per task is written: a second request for it (a duplicate delivery) lost.
                Some(ids) => {
                    if ids.remove(&attempt) {
                        LateClaim::Claimed
                    } else {
                        LateClaim::Lost
                    }
                }
                None => LateClaim::Unwritten,
            };
            let _ = reply.send(answer);
        }
    }
}

/// A few tries; `None` if the claims could not be written.
async fn claim(engine: &Engine, attempts: &[(TaskId, i32, i64)]) -> Option<Vec<TaskId>> {
    for attempt in 0..3u32 {
        match engine.claim_started(attempts).await {
            Ok(c) => return Some(c),
            Err(err) => {
                tracing::warn!(error = %err, attempt, "late claim failed; retrying");
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    None
}
