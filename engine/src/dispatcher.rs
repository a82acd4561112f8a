//! Background loops: the dispatcher (due tasks → queue) and the reaper (expired leases → failed attempts).
//! Both are safe to run in several processes at once: dispatch marks rows (SKIP LOCKED on PostgreSQL) and every
//! state change downstream is fenced.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::queue::TaskQueue;
use crate::service::Engine;

/// Options of the dispatcher loop.
#[derive(Debug, Clone, Default)]
pub struct DispatcherOptions {
    /// Only these task kinds (all when `None`).
    pub kinds: Option<Vec<String>>,
    /// Stop fetching while the queue holds this many messages.
    pub max_backlog: usize,
}

/// Moves due tasks to the queue until `shutdown`.
pub async fn run_dispatcher(
    engine: Engine,
    queue: Arc<dyn TaskQueue>,
    opts: DispatcherOptions,
    shutdown: CancellationToken,
) {
    let batch = engine.options().dispatch_batch;
    let max_backlog = if opts.max_backlog == 0 { batch * 2 } else { opts.max_backlog };
    while !shutdown.is_cancelled() {
        if queue.backlog() >= max_backlog {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(2)) => continue,
            }
        }
        match engine.fetch_due(batch, opts.kinds.as_deref()).await {
            Ok(due) => {
                let full = due.len() == batch;
                let ids: Vec<_> = due.iter().map(|d| d.task_id).collect();
                if let Err(err) = queue.publish(due).await {
                    tracing::warn!(error = %err, "queue publish failed; the tasks wait in the database");
                    if let Err(err) = engine.undispatch(&ids).await {
                        tracing::warn!(error = %err, "could not release the dispatches; they go out after the redelivery delay");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
                if full {
                    continue;
                }
            }
            Err(err) => tracing::warn!(error = %err, "dispatch failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = engine.wait_for_work(Duration::from_millis(100)) => {}
        }
    }
}

/// Reaps expired leases every `period` until `shutdown`.
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
