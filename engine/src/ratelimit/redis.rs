//! Limits shared by every server through Redis: the GCRA step of `taskorch_domain::ratelimit::decide` as one
//! atomic script, one key per class and subject that expires once its burst has refilled.

use std::time::Duration;

use async_trait::async_trait;
use taskorch_domain::ratelimit::{Decision, OperationClass, Quotas};

use super::{RateLimiter, now_ms};

const GCRA: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return allow_at - now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return -1
";

pub struct RedisRateLimiter {
    conn: ::redis::aio::ConnectionManager,
    script: ::redis::Script,
    namespace: String,
    quotas: Quotas,
}

impl RedisRateLimiter {
    pub async fn connect(url: &str, namespace: &str, quotas: Quotas) -> Result<Self, ::redis::RedisError> {
        let client = ::redis::Client::open(url)?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| ::redis::RedisError::from((::redis::ErrorKind::Io, "connecting to Redis timed out")))??;
        Ok(Self { conn, script: ::redis::Script::new(GCRA), namespace: namespace.to_owned(), quotas })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, class: OperationClass, subject: &str) -> Decision {
        let quota = self.quotas.get(class);
        let now = now_ms();
        if quota.is_unlimited() {
            return Decision::Allowed { tat_ms: now };
        }
        let interval = quota.interval_ms();
        let tolerance = interval * u64::from(quota.limit - 1);
        let key = format!("{}:rl:{class}:{subject}", self.namespace);
        let mut conn = self.conn.clone();
        let answer: Result<i64, _> =
            self.script.key(key).arg(now).arg(interval).arg(tolerance).invoke_async(&mut conn).await;
        match answer {
            Ok(wait) if wait >= 0 => Decision::Limited { retry_after_ms: wait as u64 },
            Ok(_) => Decision::Allowed { tat_ms: now },
            Err(e) => {
                // Availability over strictness: a Redis outage does not lock every client out.
                tracing::warn!(error = %e, "rate limiter unavailable; allowing the call");
                Decision::Allowed { tat_ms: now }
            }
        }
    }
}
