//! Counts live subscriptions; the count drops when a stream is dropped (its client went away).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Live subscription count, shared through the schema data.
#[derive(Clone, Default)]
pub struct ActiveSubscriptions(Arc<AtomicI64>);

impl ActiveSubscriptions {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard held by a subscription stream for its lifetime.
    pub fn enter(&self) -> Guard {
        self.0.fetch_add(1, Ordering::Relaxed);
        Guard(self.0.clone())
    }

    /// Held by a stream that counts itself but runs on behalf of subscribers counted elsewhere (a shared stream,
    /// see `crate::fanout`): it takes itself out of the count again.
    pub fn exclude(&self) -> Exclusion {
        self.0.fetch_sub(1, Ordering::Relaxed);
        Exclusion(self.0.clone())
    }
}

pub struct Guard(Arc<AtomicI64>);

pub struct Exclusion(Arc<AtomicI64>);

impl Drop for Exclusion {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
