//! The event bus port and its implementations: [`InProcessEventBus`] and [`RedisEventBus`]. Events are published
//! only after their transaction committed; the bus carries notifications, the database keeps the truth.

mod redis;

pub use self::redis::RedisEventBus;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::EventRecord;

/// Carries committed events to live subscribers.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes committed events, in sequence order per workflow.
    fn publish(&self, events: Vec<EventRecord>);
    /// A receiver of every event published from now on. A receiver that lags gets `Lagged` and must re-read
    /// from the database.
    fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>>;
    /// Whether events published now reach other processes.
    fn healthy(&self) -> bool {
        true
    }
    /// Whether the bus carries the events of other processes too (Redis); an in-process bus carries this
    /// process's events only.
    fn shared(&self) -> bool {
        false
    }
}

/// Broadcast within one process.
pub struct InProcessEventBus {
    tx: broadcast::Sender<Arc<EventRecord>>,
}

impl InProcessEventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx }
    }
}

impl Default for InProcessEventBus {
    fn default() -> Self {
        Self::new(65_536)
    }
}

impl EventBus for InProcessEventBus {
    fn publish(&self, events: Vec<EventRecord>) {
        for e in events {
            // No receiver is not an error: nobody is watching.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.tx.subscribe()
    }
}
