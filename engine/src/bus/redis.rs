//! Redis pub/sub event bus: events go out on one channel per namespace; every process relays what it receives to
//! its local subscribers. Pub/sub drops messages while a connection is down, so subscribers re-read the database on
//! any gap (see the subscription resolver); this bus only reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;
use tokio::sync::{broadcast, mpsc};

use super::EventBus;
use crate::model::EventRecord;

/// The Redis adapter of [`EventBus`].
pub struct RedisEventBus {
    local: broadcast::Sender<Arc<EventRecord>>,
    outbox: mpsc::UnboundedSender<Vec<EventRecord>>,
    connected: Arc<AtomicBool>,
}

impl RedisEventBus {
    /// Connects (failing fast when Redis is unreachable) and starts the publisher and relay tasks.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, redis::RedisError> {
        let client = crate::redis_client::client(url)?;
        let manager = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connecting to Redis timed out")))??;
        let channel = format!("{namespace}:events");
        let (local, _) = broadcast::channel(65_536);
        let (outbox, rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(true));
        tokio::spawn(publish_loop(manager, channel.clone(), rx, local.clone()));
        tokio::spawn(relay_loop(client, channel, local.clone(), connected.clone()));
        Ok(Self { local, outbox, connected })
    }
}

impl EventBus for RedisEventBus {
    fn publish(&self, events: Vec<EventRecord>) {
        if !events.is_empty() {
            let _ = self.outbox.send(events);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.local.subscribe()
    }

    fn healthy(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Publishes in commit order; when Redis refuses, local subscribers still get the events.
async fn publish_loop(
    mut conn: redis::aio::ConnectionManager,
    channel: String,
    mut rx: mpsc::UnboundedReceiver<Vec<EventRecord>>,
    local: broadcast::Sender<Arc<EventRecord>>,
) {
    while let Some(events) = rx.recv().await {
        let body = match rmp_serde::to_vec_named(&events) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode events");
                continue;
            }
        };
        if let Err(e) = conn.publish::<_, _, ()>(&channel, body).await {
            tracing::warn!(error = %e, "publishing events to Redis failed; delivering them locally only");
            for event in events {
                let _ = local.send(Arc::new(event));
            }
        }
    }
}

/// Relays the channel to local subscribers, reconnecting with backoff.
async fn relay_loop(
    client: redis::Client,
    channel: String,
    local: broadcast::Sender<Arc<EventRecord>>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(pubsub)) => {
                connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let payload: Vec<u8> = match msg.get_payload() {
                        Ok(p) => p,
                        Err(_) => continue,
                    };
                    match rmp_serde::from_slice::<Vec<EventRecord>>(&payload) {
                        Ok(events) => {
                            for e in events {
                                let _ = local.send(Arc::new(e));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a message that is not an event batch"),
                    }
                }
                tracing::warn!("Redis subscription lost; reconnecting");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "Redis subscribe failed; retrying"),
            Err(_) => tracing::warn!("Redis subscribe timed out; retrying"),
        }
        connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
