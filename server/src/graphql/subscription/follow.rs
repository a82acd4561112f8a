//! Other processes' events for the firehose when the bus is this process's alone (no Redis).
//!
//! `workflowEvents` finds events committed elsewhere through the hub's poll of the workflows it watches; the
//! firehose watches every workflow, so it follows the log itself: while it has subscribers, it reads the chunks
//! written since it started, in the order they were written (SQLite's `rowid`; PostgreSQL has no such order and
//! is run with Redis when several processes share it), and publishes on the process's bus the events of those this
//! process did not publish itself. A chunk is looked at once it is [`SETTLE`] old: by then its writer, if it was
//! this process, has published it, so no event is delivered twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use taskorch_domain::WorkflowId;
use taskorch_engine::Engine;
use tokio::sync::broadcast::error::TryRecvError;

/// How often the log is read while the firehose has subscribers.
const FOLLOW: Duration = Duration::from_millis(250);
/// How old a chunk is before it is looked at (µs).
const SETTLE: i64 = 1_500_000;
/// Chunks read per poll.
const PAGE: u64 = 2000;
/// How long the newest sequence published for a workflow is remembered.
const REMEMBER: Duration = Duration::from_secs(120);

/// Starts and stops following the log with the firehose's subscribers.
#[derive(Clone)]
pub struct LogFollower(Arc<Inner>);

struct Inner {
    engine: Engine,
    watchers: AtomicUsize,
    running: AtomicBool,
}

/// Keeps the follower running while a firehose subscriber lives.
pub struct Watch(Arc<Inner>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LogFollower {
    pub fn new(engine: Engine) -> Self {
        Self(Arc::new(Inner { engine, watchers: AtomicUsize::new(0), running: AtomicBool::new(false) }))
    }

    /// A firehose subscriber arrived: other processes' events are published on this process's bus until every
    /// subscriber has left.
    pub fn watch(&self) -> Watch {
        self.0.watchers.fetch_add(1, Ordering::SeqCst);
        if !self.0.engine.bus().shared() && !self.0.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(follow(self.0.clone()));
        }
        Watch(self.0.clone())
    }
}

async fn follow(inner: Arc<Inner>) {
    let engine = &inner.engine;
    // What this process publishes, from now on.
    let mut own = engine.bus().subscribe();
    let start = match engine.chunks_written_after(None, 1).await {
        Ok(Some(start)) => start,
        Ok(None) => {
            inner.running.store(false, Ordering::SeqCst);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow the event log");
            inner.running.store(false, Ordering::SeqCst);
            return;
        }
    };
    let mut cursor = start.first().map_or(0, |c| c.rowid);
    let mut published: HashMap<WorkflowId, (i64, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(FOLLOW).await;
        if inner.watchers.load(Ordering::SeqCst) == 0 {
            inner.running.store(false, Ordering::SeqCst);
            // A subscriber that arrived meanwhile saw `running` still set: go on for it.
            if inner.watchers.load(Ordering::SeqCst) == 0 || inner.running.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        loop {
            match own.try_recv() {
                Ok(e) => {
                    let entry = published.entry(e.workflow_id).or_insert((0, Instant::now()));
                    *entry = (entry.0.max(e.sequence), Instant::now());
                }
                Err(TryRecvError::Lagged(n)) => tracing::warn!(missed = n, "log follower lagged behind the bus"),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let settled = chrono::Utc::now().timestamp_micros() - SETTLE;
        let chunks = match engine.chunks_written_after(Some(cursor), PAGE).await {
            Ok(chunks) => chunks.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the event log failed; trying again");
                continue;
            }
        };
        for chunk in chunks {
            if chunk.at > settled {
                break;
            }
            cursor = chunk.rowid;
            let known = published.get(&chunk.workflow).map(|p| p.0);
            if known.is_some_and(|k| chunk.last_sequence <= k) {
                continue; // this process published it
            }
            // Another process's: its events after what was published of the workflow.
            let from = known.unwrap_or(chunk.first_sequence - 1);
            let count = (chunk.last_sequence - from).max(0) as u64;
            let Ok(events) = engine.events(chunk.workflow, from, count).await else { continue };
            published.insert(chunk.workflow, (chunk.last_sequence, Instant::now()));
            engine.bus().publish(events);
        }
        published.retain(|_, (_, at)| at.elapsed() < REMEMBER);
    }
}
