//! Rate limits as a generic cell rate algorithm (GCRA): a quota of `limit` calls per `period` allows a burst of
//! `limit` and then one call every `period / limit`. The only state per subject is one instant, the theoretical
//! arrival time (TAT), so the same rule runs in process or as one Redis script.

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

    /// Time between two calls at the sustained rate.
    pub fn interval_ms(&self) -> u64 {
        (self.period_ms / u64::from(self.limit.max(1))).max(1)
    }
}

/// The outcome of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the subject's new TAT.
    Allowed { tat_ms: u64 },
    /// Refused; the caller may try again after this many milliseconds.
    Limited { retry_after_ms: u64 },
}

/// Decides one call at `now_ms` for a subject whose stored TAT is `tat_ms` (none for a new subject).
pub fn decide(quota: Quota, now_ms: u64, tat_ms: Option<u64>) -> Decision {
    if quota.is_unlimited() {
        return Decision::Allowed { tat_ms: now_ms };
    }
    let interval = quota.interval_ms();
    let tolerance = interval * u64::from(quota.limit - 1);
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let allow_at = tat.saturating_sub(tolerance);
    if now_ms < allow_at {
        Decision::Limited { retry_after_ms: allow_at - now_ms }
    } else {
        Decision::Allowed { tat_ms: tat + interval }
    }
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
            Self::Read => 6000,
            Self::Write => 6000,
            Self::Subscribe => 600,
            Self::Login => 20,
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
        let mut tat = None;
        times
            .iter()
            .map(|&now| match decide(quota, now, tat) {
                Decision::Allowed { tat_ms } => {
                    tat = Some(tat_ms);
                    true
                }
                Decision::Limited { .. } => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_of_the_limit_passes_and_the_next_call_is_refused() {
        let quota = Quota::per_minute(100);
        let allowed = run(quota, &[1000; 150]);
        assert_eq!(allowed.iter().filter(|a| **a).count(), 100);
        assert!(allowed[..100].iter().all(|a| *a));
        assert!(allowed[100..].iter().all(|a| !*a));
    }

    #[test]
    fn refusals_say_when_to_come_back_and_the_rate_refills() {
        let quota = Quota::per_minute(60); // one per second sustained
        let mut tat = None;
        for _ in 0..60 {
            match decide(quota, 0, tat) {
                Decision::Allowed { tat_ms } => tat = Some(tat_ms),
                Decision::Limited { .. } => panic!("burst refused"),
            }
        }
        assert_eq!(decide(quota, 0, tat), Decision::Limited { retry_after_ms: 1000 });
        assert_eq!(decide(quota, 400, tat), Decision::Limited { retry_after_ms: 600 });
        assert!(matches!(decide(quota, 1000, tat), Decision::Allowed { .. }));
    }

    #[test]
    fn an_idle_subject_gets_its_full_burst_back() {
        let quota = Quota::per_minute(10);
        let mut times = vec![0; 10];
        times.extend([120_000; 10]);
        assert!(run(quota, &times).into_iter().all(|a| a));
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(run(Quota::per_minute(0), &[5; 10_000]).into_iter().all(|a| a));
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
