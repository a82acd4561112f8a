//! Background loops: the dispatcher (due tasks → queue) and the reaper (expired dispatches → due again, expired
//! leases → failed attempts).
//! Both are safe to run in several processes at once: dispatch marks rows (SKIP LOCKED on PostgreSQL) and every
//! state change downstream is fenced.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::queue::{Dispatch, TaskQueue};
use crate::service::Engine;

/// Options of the dispatcher loop.
#[derive(Debug, Clone, Default)]
pub struct DispatcherOptions {
    /// Only these task kinds (all when `None`).
    pub kinds: Option<Vec<String>>,
    /// Stop fetching while the queue holds this many messages.
    pub max_backlog: usize,
}

/// Batches being published (awaiting the broker's confirms) while the next one is fetched.
const PUBLISHES_IN_FLIGHT: u32 = 4;

/// Moves due tasks to the queue until `shutdown`. Publishing is pipelined: up to [`PUBLISHES_IN_FLIGHT`] batches
/// wait for their confirms while the next batch is fetched.
pub async fn run_dispatcher(
    engine: Engine,
    queue: Arc<dyn TaskQueue>,
    opts: DispatcherOptions,
    shutdown: CancellationToken,
) {
    let batch = engine.options().dispatch_batch;
    let max_backlog = if opts.max_backlog == 0 { batch * 2 } else { opts.max_backlog };
    // Submissions in this process hand their root tasks to the same queue themselves, under the same limits.
    engine.dispatch_roots_to(queue.clone(), opts.kinds.clone(), max_backlog, shutdown.clone());
    let in_flight = Arc::new(Semaphore::new(PUBLISHES_IN_FLIGHT as usize));
    while !shutdown.is_cancelled() {
        if queue.backlog() >= max_backlog {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(2)) => continue,
            }
        }
        // A slot first, so that a broker that stopped confirming stops the fetching too.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = in_flight.clone().acquire_owned() => match slot { Ok(s) => s, Err(_) => break },
        };
        match engine.fetch_due(batch, opts.kinds.as_deref()).await {
            Ok(due) if !due.is_empty() => {
                let full = due.len() == batch;
                let (engine, queue) = (engine.clone(), queue.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    hand_over(engine, queue, due).await;
                });
                if full {
                    continue;
                }
            }
            Ok(_) => drop(slot),
            Err(err) => {
                drop(slot);
                tracing::warn!(error = %err, "dispatch failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = engine.wait_for_work(Duration::from_millis(100)) => {}
        }
    }
    // Let the publishes in flight finish (or fail and release their tasks) before returning.
    let _ = in_flight.acquire_many(PUBLISHES_IN_FLIGHT).await;
}

/// Publishes one batch; on failure the tasks are made due again, after a pause (the caller's slot is held a while:
/// backoff).
pub(crate) async fn hand_over(engine: Engine, queue: Arc<dyn TaskQueue>, due: Vec<Dispatch>) {
    let ids: Vec<_> = due.iter().map(|d| d.task_id).collect();
    if let Err(err) = queue.publish(due).await {
        tracing::warn!(error = %err, "queue publish failed; the tasks wait in the database");
        if let Err(err) = engine.undispatch(&ids).await {
            tracing::warn!(error = %err, "could not release the dispatches; they go out after the redelivery delay");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reaps expired dispatches and leases every `period` until `shutdown`.
pub async fn run_reaper(engine: Engine, period: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
        }
        match engine.reap_once().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(reaped = n, "expired leases turned into failed attempts"),
            Err(err) => tracing::warn!(error = %err, "reaper failed; retrying"),
        }
    }
}
