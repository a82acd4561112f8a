//! The task queue port and its implementations: [`InProcessQueue`] (a priority queue within one process, the
//! embedded default) and [`RabbitMqQueue`]. A message only says "this task may be claimed at this fence"; the
//! claim itself is a conditional update in the database.

mod rabbitmq;

pub use rabbitmq::{RabbitMqOptions, RabbitMqQueue};

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use async_trait::async_trait;
use taskorch_domain::{TaskId, WorkflowId};
use tokio::sync::Notify;

/// Whether a message runs a task or its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    Run,
    Compensate,
}

/// A task handed to the queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dispatch {
    pub task_id: TaskId,
    pub workflow_id: WorkflowId,
    pub phase: Phase,
    /// Kind of the handler that runs it (the compensation's kind in the compensate phase).
    pub kind: String,
    pub priority: i16,
    /// Attempts made so far: the claim succeeds only if the row still says so.
    pub fence: i32,
    /// Order of dispatch, for FIFO within a priority.
    pub seq: u64,
    /// W3C `traceparent` of the dispatch span, when tracing is exported.
    #[serde(default)]
    pub trace: Option<String>,
}

impl Ord for Dispatch {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority.cmp(&other.priority).then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Dispatch {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Acknowledges a delivered message once its outcome is committed.
#[async_trait]
pub trait AckHandle: Send + Sync {
    async fn ack(&self);
}

/// A message taken from the queue.
pub struct Delivery {
    pub dispatch: Dispatch,
    ack: Option<Box<dyn AckHandle>>,
}

impl Delivery {
    /// A delivery that needs no acknowledgement (in-process).
    pub fn unacked(dispatch: Dispatch) -> Self {
        Self { dispatch, ack: None }
    }

    pub fn with_ack(dispatch: Dispatch, ack: Box<dyn AckHandle>) -> Self {
        Self { dispatch, ack: Some(ack) }
    }

    /// Splits the message from its acknowledgement.
    pub fn into_parts(self) -> (Dispatch, Option<Box<dyn AckHandle>>) {
        (self.dispatch, self.ack)
    }
}

/// Carries dispatches from the dispatcher to workers.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// Hands tasks to the queue; returns once the queue holds them durably (publisher confirms).
    async fn publish(&self, batch: Vec<Dispatch>) -> Result<(), QueueError>;
    /// Waits for at least one message and returns up to `max`, highest priority first.
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Messages waiting here, when this process holds them (0 when the broker holds them).
    fn backlog(&self) -> usize;
    /// Whether the queue can take and hand out messages now.
    async fn healthy(&self) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
#[error("queue unavailable: {0}")]
pub struct QueueError(pub String);

/// A priority queue in this process.
#[derive(Default)]
pub struct InProcessQueue {
    heap: Mutex<BinaryHeap<Dispatch>>,
    ready: Notify,
}

impl InProcessQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes every message still waiting (on shutdown).
    pub fn drain(&self) -> Vec<Dispatch> {
        self.heap.lock().map(|mut h| std::mem::take(&mut *h).into_vec()).unwrap_or_default()
    }
}

#[async_trait]
impl TaskQueue for InProcessQueue {
    async fn publish(&self, batch: Vec<Dispatch>) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        {
            let mut heap = self.heap.lock().map_err(|e| QueueError(e.to_string()))?;
            heap.extend(batch);
        }
        self.ready.notify_waiters();
        self.ready.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        loop {
            let notified = self.ready.notified();
            {
                let mut heap = self.heap.lock().map_err(|e| QueueError(e.to_string()))?;
                if !heap.is_empty() {
                    let mut out = Vec::with_capacity(max.min(heap.len()));
                    while out.len() < max {
                        match heap.pop() {
                            Some(d) => out.push(Delivery::unacked(d)),
                            None => break,
                        }
                    }
                    return Ok(out);
                }
            }
            notified.await;
        }
    }

    fn backlog(&self) -> usize {
        self.heap.lock().map(|h| h.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(priority: i16, seq: u64) -> Dispatch {
        Dispatch {
            task_id: TaskId::new(),
            workflow_id: WorkflowId::new(),
            phase: Phase::Run,
            kind: "noop".into(),
            priority,
            fence: 0,
            seq,
            trace: None,
        }
    }

    #[tokio::test]
    async fn higher_priority_first_then_fifo() {
        let q = InProcessQueue::new();
        q.publish(vec![d(5, 1), d(5, 2), d(9, 3), d(0, 4)]).await.unwrap();
        let got: Vec<(i16, u64)> =
            q.receive(10).await.unwrap().iter().map(|d| (d.dispatch.priority, d.dispatch.seq)).collect();
        assert_eq!(got, vec![(9, 3), (5, 1), (5, 2), (0, 4)]);
    }

    #[tokio::test]
    async fn receive_waits_for_a_publish() {
        let q = std::sync::Arc::new(InProcessQueue::new());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.receive(1).await.unwrap().len() });
        tokio::task::yield_now().await;
        q.publish(vec![d(1, 1)]).await.unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
