//! Rate limiting port: one sliding-window decision per call, keyed by operation class and subject (a credential or
//! a client address), for a quota the caller picks. In process by default; in Redis when several servers must
//! share the limit.

mod redis;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use taskorch_domain::ratelimit::{Decision, OperationClass, Quota, decide};

pub use self::redis::RedisRateLimiter;

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one call of `class` by `subject` against `quota` and decides it.
    async fn check(&self, class: OperationClass, subject: &str, quota: Quota) -> Decision;
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Limits held in this process's memory.
#[derive(Default)]
pub struct InProcessRateLimiter {
    logs: Mutex<HashMap<(OperationClass, String), VecDeque<u64>>>,
}

/// Above this many subjects, those with no call in the last hour are dropped.
const SWEEP_AT: usize = 100_000;
const IDLE_MS: u64 = 3_600_000;

impl InProcessRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn check_at(&self, class: OperationClass, subject: &str, quota: Quota, now: u64) -> Decision {
        if quota.is_unlimited() {
            return Decision::Allowed;
        }
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() >= SWEEP_AT {
            logs.retain(|_, log| log.back().is_some_and(|t| t + IDLE_MS > now));
        }
        let log = logs.entry((class, subject.to_owned())).or_default();
        decide(quota, now, log)
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn check(&self, class: OperationClass, subject: &str, quota: Quota) -> Decision {
        self.check_at(class, subject, quota, now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_classes_have_separate_windows() {
        let limiter = InProcessRateLimiter::new();
        let three = Quota::per_minute(3);
        let allowed = |class, subject, quota| limiter.check_at(class, subject, quota, 1_000) == Decision::Allowed;
        for _ in 0..3 {
            assert!(allowed(OperationClass::List, "key:a", three));
        }
        assert!(!allowed(OperationClass::List, "key:a", three));
        assert!(allowed(OperationClass::List, "key:b", three), "another key is unaffected");
        assert!(allowed(OperationClass::Write, "key:a", three), "another class is unaffected");
        assert!((0..1000).all(|_| allowed(OperationClass::Read, "key:a", Quota::per_minute(0))), "0 is unlimited");
    }
}
