//! Rate limiting port: one GCRA decision per call, keyed by operation class and subject (a credential or a client
//! address). In process by default; in Redis when several servers must share the limit.

mod redis;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use taskorch_domain::ratelimit::{Decision, OperationClass, Quotas, decide};

pub use self::redis::RedisRateLimiter;

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one call of `class` by `subject` and decides it.
    async fn check(&self, class: OperationClass, subject: &str) -> Decision;
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Limits held in this process's memory.
pub struct InProcessRateLimiter {
    quotas: Quotas,
    tats: Mutex<HashMap<(OperationClass, String), u64>>,
}

/// Above this many subjects, entries whose burst has fully refilled are dropped.
const SWEEP_AT: usize = 100_000;

impl InProcessRateLimiter {
    pub fn new(quotas: Quotas) -> Self {
        Self { quotas, tats: Mutex::new(HashMap::new()) }
    }

    fn check_at(&self, class: OperationClass, subject: &str, now: u64) -> Decision {
        let quota = self.quotas.get(class);
        if quota.is_unlimited() {
            return Decision::Allowed { tat_ms: now };
        }
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        if tats.len() >= SWEEP_AT {
            tats.retain(|_, tat| *tat > now);
        }
        let key = (class, subject.to_owned());
        let decision = decide(quota, now, tats.get(&key).copied());
        if let Decision::Allowed { tat_ms } = decision {
            tats.insert(key, tat_ms);
        }
        decision
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn check(&self, class: OperationClass, subject: &str) -> Decision {
        self.check_at(class, subject, now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_classes_have_separate_budgets() {
        let quotas = Quotas::default().parse_overrides(["list=3", "read=0"]).unwrap();
        let limiter = InProcessRateLimiter::new(quotas);
        let allowed = |class, subject| matches!(limiter.check_at(class, subject, 1_000), Decision::Allowed { .. });
        for _ in 0..3 {
            assert!(allowed(OperationClass::List, "key:a"));
        }
        assert!(!allowed(OperationClass::List, "key:a"));
        assert!(allowed(OperationClass::List, "key:b"), "another key is unaffected");
        assert!(allowed(OperationClass::Write, "key:a"), "another class is unaffected");
        assert!((0..1000).all(|_| allowed(OperationClass::Read, "key:a")), "0 is unlimited");
    }
}
