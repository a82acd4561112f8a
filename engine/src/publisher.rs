//! Publishing committed events, in commit order, from one task per engine: first the cached reads of their workflows
//! are marked stale (a Redis round trip on the production stack), then the events go to the bus. Callers that must
//! not return before their events are out (mutations) wait for their turn; the worker's reporter only queues its
//! batch, so its next commit does not wait for the round trip. Batches queued meanwhile share one invalidation.

use std::collections::HashMap;
use std::sync::Arc;

use taskorch_domain::{EventType, WorkflowId};
use tokio::sync::{mpsc, oneshot};

use crate::bus::EventBus;
use crate::cache::ReadCache;
use crate::model::EventRecord;

/// Batches queued before a detached publish waits for room.
const QUEUE: usize = 256;

struct Job {
    events: Vec<EventRecord>,
    done: Option<oneshot::Sender<()>>,
}

pub struct Publisher {
    tx: mpsc::Sender<Job>,
}

impl Publisher {
    /// Starts the publishing task (it ends when the publisher is dropped, after what was queued).
    pub fn start(bus: Arc<dyn EventBus>, cache: Arc<dyn ReadCache>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, bus, cache));
        Self { tx }
    }

    /// Publishes after everything queued before; returns once the events are on the bus.
    pub async fn publish(&self, events: Vec<EventRecord>) {
        let (done, published) = oneshot::channel();
        if self.tx.send(Job { events, done: Some(done) }).await.is_ok() {
            let _ = published.await;
        }
    }

    /// Queues the events behind everything queued before; returns at once unless the queue is full.
    pub async fn publish_detached(&self, events: Vec<EventRecord>) {
        if events.is_empty() {
            return;
        }
        let _ = self.tx.send(Job { events, done: None }).await;
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, bus: Arc<dyn EventBus>, cache: Arc<dyn ReadCache>) {
    let mut jobs = Vec::new();
    while rx.recv_many(&mut jobs, QUEUE).await > 0 {
        let mut newest: HashMap<WorkflowId, i64> = HashMap::new();
        for e in jobs.iter().flat_map(|j| &j.events) {
            let n = newest.entry(e.workflow_id).or_default();
            *n = (*n).max(e.sequence);
            count(e.event_type);
        }
        if !newest.is_empty() {
            let newest: Vec<_> = newest.into_iter().collect();
            cache.invalidate(&newest).await;
        }
        for job in jobs.drain(..) {
            if !job.events.is_empty() {
                bus.publish(job.events);
            }
            if let Some(done) = job.done {
                let _ = done.send(());
            }
        }
    }
}

fn count(event: EventType) {
    match event {
        EventType::TaskRetrying => metrics::counter!("taskorch_task_retries_total").increment(1),
        EventType::TaskCompensated => {
            metrics::counter!("taskorch_compensations_total", "outcome" => "compensated").increment(1)
        }
        EventType::TaskCompensationFailed => {
            metrics::counter!("taskorch_compensations_total", "outcome" => "failed").increment(1)
        }
        EventType::WorkflowCompleted
        | EventType::WorkflowFailed
        | EventType::WorkflowCompensated
        | EventType::WorkflowCancelled => {
            metrics::counter!("taskorch_workflows_finished_total", "event" => event.as_str()).increment(1)
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use chrono::Utc;

    use super::*;
    use crate::InProcessEventBus;
    use crate::model::WorkflowRecord;

    /// Records the order of invalidations; each waits for a release so the test controls when it finishes.
    struct SlowCache {
        log: Mutex<Vec<Vec<(WorkflowId, i64)>>>,
        release: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl ReadCache for SlowCache {
        async fn get(&self, _id: WorkflowId) -> Option<WorkflowRecord> {
            None
        }
        async fn put(&self, _record: &WorkflowRecord) {}
        async fn invalidate(&self, newest: &[(WorkflowId, i64)]) {
            if let Ok(permit) = self.release.acquire().await {
                permit.forget();
            }
            self.log.lock().unwrap_or_else(|e| e.into_inner()).push(newest.to_vec());
        }
    }

    fn event(workflow: WorkflowId, sequence: i64) -> EventRecord {
        EventRecord {
            workflow_id: workflow,
            tenant_id: taskorch_domain::TenantId::SYSTEM,
            workflow_name: "w".into(),
            sequence,
            event_type: EventType::TaskCompleted,
            task_key: None,
            at: Utc::now(),
            data: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn detached_batches_are_published_in_order_after_their_invalidation() {
        let bus = Arc::new(InProcessEventBus::default());
        let cache = Arc::new(SlowCache { log: Mutex::default(), release: tokio::sync::Semaphore::new(0) });
        let publisher = Publisher::start(bus.clone(), cache.clone());
        let mut live = bus.subscribe();
        let w = WorkflowId::new();

        // Returns while the invalidation of the first batch is still held back.
        publisher.publish_detached(vec![event(w, 1), event(w, 2)]).await;
        publisher.publish_detached(vec![event(w, 3)]).await;
        assert!(live.try_recv().is_err(), "nothing reaches the bus before its reads are marked stale");

        cache.release.add_permits(2);
        let published = publisher.publish(vec![event(w, 4)]);
        published.await;
        let sequences: Vec<i64> = std::iter::from_fn(|| live.try_recv().ok()).map(|e| e.sequence).collect();
        assert_eq!(sequences, [1, 2, 3, 4], "in the order queued, all out once publish returned");
        let log = cache.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(log.iter().all(|batch| batch.len() == 1), "one entry per workflow: {log:?}");
        assert_eq!(log.last().map(|b| b[0].1), Some(4), "the newest sequence invalidated last");
    }
}
