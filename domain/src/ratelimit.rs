//! Rate limits as a sliding window: at most `limit` calls in any `period`. The state per subject is the times of
//! its calls inside the current window (at most `limit` of them), so the same rule runs in process over a deque or
//! in Redis over a sorted set.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// A quota: at most `limit` calls per `period_ms`. A limit of 0 means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period_ms: u64,
}

impl Quota {
    pub const fn per_minute(limit: u32) -> Self {
        Self { limit, period_ms: 60_000 }
    }

    pub fn is_unlimited(&self) -> bool {
        self.limit == 0
    }

    /// The same period with `factor` times the calls (0 stays unlimited).
    pub fn times(&self, factor: u32) -> Self {
        Self { limit: self.limit.saturating_mul(factor), ..*self }
    }
}

/// The outcome of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; the caller may try again after this many milliseconds.
    Limited {
        retry_after_ms: u64,
    },
}

/// Decides one call at `now_ms` for a subject whose calls in the window are `log` (oldest first); an allowed call
/// is recorded in it.
pub fn decide(quota: Quota, now_ms: u64, log: &mut VecDeque<u64>) -> Decision {
    if quota.is_unlimited() {
        return Decision::Allowed;
    }
    // Calls at or before `now - period` have left the window.
    if let Some(window_start) = now_ms.checked_sub(quota.period_ms) {
        while log.front().is_some_and(|t| *t <= window_start) {
            log.pop_front();
        }
    }
    if log.len() >= quota.limit as usize {
        let oldest = log.front().copied().unwrap_or(now_ms);
        return Decision::Limited { retry_after_ms: (oldest + quota.period_ms).saturating_sub(now_ms).max(1) };
    }
    log.push_back(now_ms);
    Decision::Allowed
}

/// Classes of operations, each with its own quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationClass {
    /// Lists (`workflows`): the seed's 100/min.
    List,
    /// Other queries.
    Read,
    /// Mutations.
    Write,
    /// Starting subscriptions.
    Subscribe,
    /// Login and token refresh (per client address).
    Login,
}

impl OperationClass {
    pub const ALL: [OperationClass; 5] = [Self::List, Self::Read, Self::Write, Self::Subscribe, Self::Login];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Read => "read",
            Self::Write => "write",
            Self::Subscribe => "subscribe",
            Self::Login => "login",
        }
    }

    /// Default quotas per minute.
    pub fn default_quota(self) -> Quota {
        Quota::per_minute(match self {
            Self::List => 100,
            Self::Read => 60_000,
            Self::Write => 30_000,
            Self::Subscribe => 6_000,
            Self::Login => 120,
        })
    }
}

impl fmt::Display for OperationClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperationClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| format!("`{s}` is not an operation class"))
    }
}

/// Quotas of every class, parsed from `class=limit` pairs (`list=100,read=6000`) over the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas([Quota; 5]);

impl Default for Quotas {
    fn default() -> Self {
        Self(OperationClass::ALL.map(OperationClass::default_quota))
    }
}

impl Quotas {
    pub fn get(&self, class: OperationClass) -> Quota {
        self.0[class as usize]
    }

    pub fn set(&mut self, class: OperationClass, quota: Quota) {
        self.0[class as usize] = quota;
    }

    /// Applies `class=limit` overrides (per minute; 0 for unlimited).
    pub fn parse_overrides<'a>(mut self, pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        for pair in pairs.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let (class, limit) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not `class=limit`"))?;
            let class: OperationClass = class.trim().parse()?;
            let limit: u32 = limit.trim().parse().map_err(|_| format!("`{limit}` is not a number of calls"))?;
            self.set(class, Quota::per_minute(limit));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(quota: Quota, times: &[u64]) -> Vec<bool> {
        let mut log = VecDeque::new();
        times.iter().map(|&now| decide(quota, now, &mut log) == Decision::Allowed).collect()
    }

    #[test]
    fn a_burst_of_the_limit_passes_and_the_next_call_is_refused() {
        let allowed = run(Quota::per_minute(100), &[1000; 150]);
        assert!(allowed[..100].iter().all(|a| *a));
        assert!(allowed[100..].iter().all(|a| !*a));
    }

    #[test]
    fn never_more_than_the_limit_in_any_window_however_the_calls_are_spread() {
        // 150 calls, one every 400 ms: a minute holds 150 of them, the limit is 100.
        let times: Vec<u64> = (0..150).map(|i| i * 400).collect();
        let allowed = run(Quota::per_minute(100), &times);
        assert!(allowed[..100].iter().all(|a| *a));
        assert!(allowed[100..150].iter().all(|a| !*a), "{allowed:?}");
    }

    #[test]
    fn refusals_say_when_the_oldest_call_leaves_the_window() {
        let quota = Quota::per_minute(2);
        let mut log = VecDeque::new();
        assert_eq!(decide(quota, 1_000, &mut log), Decision::Allowed);
        assert_eq!(decide(quota, 5_000, &mut log), Decision::Allowed);
        assert_eq!(decide(quota, 10_000, &mut log), Decision::Limited { retry_after_ms: 51_000 });
        assert_eq!(decide(quota, 61_000, &mut log), Decision::Allowed, "the first call has left the window");
        assert_eq!(decide(quota, 61_500, &mut log), Decision::Limited { retry_after_ms: 3_500 });
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(run(Quota::per_minute(0), &[5; 10_000]).into_iter().all(|a| a));
        assert!(Quota::per_minute(0).times(10).is_unlimited());
        assert_eq!(Quota::per_minute(100).times(10).limit, 1000);
    }

    #[test]
    fn overrides_parse_over_the_defaults_and_bad_ones_are_named() {
        let q = Quotas::default().parse_overrides(["list=5", " read = 0 "]).unwrap();
        assert_eq!(q.get(OperationClass::List), Quota::per_minute(5));
        assert!(q.get(OperationClass::Read).is_unlimited());
        assert_eq!(q.get(OperationClass::Write), OperationClass::Write.default_quota());
        assert!(Quotas::default().parse_overrides(["lists=5"]).unwrap_err().contains("lists"));
        assert!(Quotas::default().parse_overrides(["list=many"]).unwrap_err().contains("many"));
    }
}
