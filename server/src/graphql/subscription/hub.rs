//! Per-workflow fan-out of events to `workflowEvents` subscribers. One task reads the process's event bus and
//! forwards each event to its workflow's subscribers only, so a subscriber wakes for its own workflow's events
//! and not for every event of the process. Events committed by processes whose events never reach this bus (a
//! separate worker without Redis) are found by one poll for all watched workflows (their `last_sequence`), not one
//! log read per subscriber; the missing events are read once and forwarded the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskorch_domain::WorkflowId;
use taskorch_engine::Engine;
use taskorch_engine::model::EventRecord;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

/// Events buffered per workflow for a slow subscriber (it re-reads the log when it falls further behind).
const PER_WORKFLOW: usize = 256;
/// How often the log is polled for events that did not come through the bus.
const POLL: Duration = Duration::from_millis(500);
/// Workflows polled per statement.
const POLL_CHUNK: usize = 500;

struct Topic {
    tx: broadcast::Sender<Arc<EventRecord>>,
    /// Highest sequence forwarded (or known to be in the log when the first subscriber arrived).
    last: Option<i64>,
}

#[derive(Clone)]
pub struct EventHub {
    topics: Arc<Mutex<HashMap<WorkflowId, Topic>>>,
}

impl EventHub {
    /// Starts the forwarding and polling tasks over `engine`'s bus and log.
    pub fn start(engine: Engine) -> Self {
        let hub = Self { topics: Arc::new(Mutex::new(HashMap::new())) };
        let mut bus = engine.bus().subscribe();
        let forward = hub.clone();
        tokio::spawn(async move {
            loop {
                match bus.recv().await {
                    Ok(e) => forward.forward(e),
                    // Subscribers see the gap in sequence numbers and re-read the log.
                    Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "subscription hub lagged behind the bus"),
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let poll = hub.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                poll.poll(&engine).await;
            }
        });
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkflowId, Topic>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live events of one workflow, from now on.
    pub fn subscribe(&self, id: WorkflowId) -> broadcast::Receiver<Arc<EventRecord>> {
        let mut topics = self.lock();
        let topic = topics.entry(id).or_insert_with(|| Topic { tx: broadcast::channel(PER_WORKFLOW).0, last: None });
        topic.tx.subscribe()
    }

    /// A subscriber read the workflow at `sequence`: later events are the hub's to deliver.
    pub fn observed(&self, id: WorkflowId, sequence: i64) {
        if let Some(topic) = self.lock().get_mut(&id)
            && topic.last.is_none()
        {
            topic.last = Some(sequence);
        }
    }

    /// The newest sequence of a watched workflow the hub knows of (forwarded, or seen in the log).
    pub fn newest(&self, id: WorkflowId) -> Option<i64> {
        self.lock().get(&id).and_then(|t| t.last)
    }

    fn forward(&self, e: Arc<EventRecord>) {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(&e.workflow_id) else { return };
        topic.last = Some(topic.last.unwrap_or(0).max(e.sequence));
        if topic.tx.send(e.clone()).is_err() {
            topics.remove(&e.workflow_id); // nobody listens any more
        }
    }

    async fn poll(&self, engine: &Engine) {
        let watched: Vec<(WorkflowId, i64)> = {
            let mut topics = self.lock();
            topics.retain(|_, t| t.tx.receiver_count() > 0);
            topics.iter().filter_map(|(id, t)| t.last.map(|l| (*id, l))).collect()
        };
        for chunk in watched.chunks(POLL_CHUNK) {
            let ids: Vec<WorkflowId> = chunk.iter().map(|(id, _)| *id).collect();
            let Ok(current) = engine.last_sequences(&ids).await else { return };
            for (id, known) in chunk {
                let Some(newest) = current.get(id) else { continue };
                if newest <= known {
                    continue;
                }
                let Ok(missed) = engine.events(*id, *known, (newest - known) as u64).await else { continue };
                for e in missed {
                    self.forward(Arc::new(e));
                }
            }
        }
    }
}
