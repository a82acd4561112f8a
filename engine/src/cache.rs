//! Hot-read cache port (seed L2) and its Redis implementation. An entry is stale as soon as its workflow has an
//! event newer than the entry: the engine records the newest sequence *before* publishing events, so a client that
//! received an event never reads a status older than it.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use taskorch_domain::WorkflowId;

use crate::model::WorkflowRecord;

/// A cache of workflow reads.
#[async_trait]
pub trait ReadCache: Send + Sync + 'static {
    async fn get(&self, id: WorkflowId) -> Option<WorkflowRecord>;
    async fn put(&self, record: &WorkflowRecord);
    /// Marks every cached copy of these workflows older than the given sequence as stale.
    async fn invalidate(&self, newest: &[(WorkflowId, i64)]);
    /// Whether the cache is shared by every process and invalidated by every event (not a no-op).
    fn is_shared(&self) -> bool {
        false
    }
    /// The generation of API key rows: a value replaced after every change to a key row (a revocation), never
    /// reused, so a process may keep key rows read under it while it is unchanged. `None` without a shared cache or
    /// when it cannot be read.
    async fn key_generation(&self) -> Option<String> {
        None
    }
    /// Replaces the generation (after the change committed); false when that failed.
    #[must_use]
    async fn bump_key_generation(&self) -> bool {
        true
    }
}

/// No cache (the embedded default reads SQLite directly).
pub struct NoCache;

#[async_trait]
impl ReadCache for NoCache {
    async fn get(&self, _id: WorkflowId) -> Option<WorkflowRecord> {
        None
    }
    async fn put(&self, _record: &WorkflowRecord) {}
    async fn invalidate(&self, _newest: &[(WorkflowId, i64)]) {}
}

/// Redis cache: `ns:wf:<id>` holds the record for a short TTL, `ns:wfseq:<id>` the newest event sequence.
pub struct RedisCache {
    conn: redis::aio::ConnectionManager,
    namespace: String,
    ttl: Duration,
}

impl RedisCache {
    pub async fn connect(url: &str, namespace: &str, ttl: Duration) -> Result<Self, redis::RedisError> {
        let client = crate::redis_client::client(url)?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connecting to Redis timed out")))??;
        Ok(Self { conn, namespace: namespace.to_owned(), ttl })
    }

    fn keys(&self, id: WorkflowId) -> (String, String) {
        (format!("{}:wf:{id}", self.namespace), format!("{}:wfseq:{id}", self.namespace))
    }

    fn key_generation_key(&self) -> String {
        format!("{}:apikeys:generation", self.namespace)
    }
}

/// A generation value no earlier one can equal (random, 128 bits).
fn new_generation() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl ReadCache for RedisCache {
    fn is_shared(&self) -> bool {
        true
    }

    async fn key_generation(&self) -> Option<String> {
        let key = self.key_generation_key();
        let mut conn = self.conn.clone();
        if let Some(generation) = conn.get::<_, Option<String>>(&key).await.ok()? {
            return Some(generation);
        }
        // None yet (or Redis lost it): start one; of racing processes the first write wins.
        let _: Option<String> =
            redis::cmd("SET").arg(&key).arg(new_generation()).arg("NX").query_async(&mut conn).await.ok()?;
        conn.get::<_, Option<String>>(&key).await.ok()?
    }

    async fn bump_key_generation(&self) -> bool {
        let mut conn = self.conn.clone();
        let set: Result<(), _> = conn.set(self.key_generation_key(), new_generation()).await;
        set.inspect_err(|e| tracing::error!(error = %e, "API key generation not replaced")).is_ok()
    }

    async fn get(&self, id: WorkflowId) -> Option<WorkflowRecord> {
        let (entry, seq) = self.keys(id);
        let mut conn = self.conn.clone();
        let (body, newest): (Option<Vec<u8>>, Option<i64>) = conn.mget(&[entry, seq]).await.ok()?;
        let record: WorkflowRecord = rmp_serde::from_slice(&body?).ok()?;
        (record.last_sequence >= newest.unwrap_or(0)).then_some(record)
    }

    async fn put(&self, record: &WorkflowRecord) {
        let (entry, _) = self.keys(record.id);
        if let Ok(body) = rmp_serde::to_vec_named(record) {
            let mut conn = self.conn.clone();
            let _: Result<(), _> = conn.set_ex(entry, body, self.ttl.as_secs().max(1)).await;
        }
    }

    async fn invalidate(&self, newest: &[(WorkflowId, i64)]) {
        if newest.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (id, seq) in newest {
            let (entry, seq_key) = self.keys(*id);
            // The marker outlives any entry written before it.
            pipe.set_ex(seq_key, *seq, self.ttl.as_secs().max(1) * 10).ignore().del(entry).ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "cache invalidation failed");
        }
    }
}
