//! Limits shared by every server through Redis: the sliding window of `taskorch_domain::ratelimit::decide` as one
//! atomic script over a sorted set of call times per class and subject, expiring with its window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use taskorch_domain::ratelimit::{Decision, OperationClass, Quota};

use super::{RateLimiter, now_ms};

const SLIDING_WINDOW: &str = r"
local now = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + period - now
  if wait < 1 then wait = 1 end
  return wait
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], period)
return -1
";

pub struct RedisRateLimiter {
    conn: ::redis::aio::ConnectionManager,
    script: ::redis::Script,
    namespace: String,
    /// Makes each call's member unique across servers.
    process: String,
    calls: AtomicU64,
}

impl RedisRateLimiter {
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, ::redis::RedisError> {
        let client = crate::redis_client::client(url)?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| ::redis::RedisError::from((::redis::ErrorKind::Io, "connecting to Redis timed out")))??;
        Ok(Self {
            conn,
            script: ::redis::Script::new(SLIDING_WINDOW),
            namespace: namespace.to_owned(),
            process: uuid::Uuid::new_v4().simple().to_string(),
            calls: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, class: OperationClass, subject: &str, quota: Quota) -> Decision {
        if quota.is_unlimited() {
            return Decision::Allowed;
        }
        let key = format!("{}:rl:{class}:{subject}", self.namespace);
        let member = format!("{}:{}", self.process, self.calls.fetch_add(1, Ordering::Relaxed));
        let mut conn = self.conn.clone();
        let answer: Result<i64, _> = self
            .script
            .key(key)
            .arg(now_ms())
            .arg(quota.period_ms)
            .arg(quota.limit)
            .arg(member)
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok(wait) if wait >= 0 => Decision::Limited { retry_after_ms: wait as u64 },
            Ok(_) => Decision::Allowed,
            Err(e) => {
                // Availability over strictness: a Redis outage does not lock every client out.
                tracing::warn!(error = %e, "rate limiter unavailable; allowing the call");
                Decision::Allowed
            }
        }
    }
}
