//! Retry policy: exponential backoff, capped, with bounded jitter.

use std::time::Duration;

/// Spread of the jitter: a jittered delay lies in `[base * (1 - JITTER), base * (1 + JITTER)]`, capped at
/// `max_delay_ms`.
pub const JITTER: f64 = 0.2;

/// How a task is retried after a failed attempt.
/// Fields left out of its JSON form take their default (stores keep the default policy as `{}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_delay_ms: u64,
    /// Factor applied to the delay after each further failure.
    pub multiplier: f64,
    /// Upper bound of any delay.
    pub max_delay_ms: u64,
    /// Whether delays are spread randomly (by ±20 %) to avoid thundering herds.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, initial_delay_ms: 1000, multiplier: 2.0, max_delay_ms: 60_000, jitter: true }
    }
}

/// A retry policy that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("maxAttempts must be between 1 and 100, got {0}")]
    MaxAttempts(i64),
    #[error("initialDelayMs must be between 0 and 86400000, got {0}")]
    InitialDelay(i64),
    #[error("maxDelayMs must be between initialDelayMs and 86400000, got {0}")]
    MaxDelay(i64),
    #[error("multiplier must be a finite number between 1 and 100, got {0}")]
    Multiplier(f64),
}

const DAY_MS: i64 = 86_400_000;

impl RetryPolicy {
    /// Builds a policy from optional API fields, defaulting the missing ones and checking the bounds.
    pub fn from_parts(
        max_attempts: Option<i64>,
        initial_delay_ms: Option<i64>,
        multiplier: Option<f64>,
        max_delay_ms: Option<i64>,
        jitter: Option<bool>,
    ) -> Result<Self, Error> {
        let d = Self::default();
        let max_attempts = max_attempts.unwrap_or(d.max_attempts.into());
        if !(1..=100).contains(&max_attempts) {
            return Err(Error::MaxAttempts(max_attempts));
        }
        let initial = initial_delay_ms.unwrap_or(d.initial_delay_ms as i64);
        if !(0..=DAY_MS).contains(&initial) {
            return Err(Error::InitialDelay(initial));
        }
        let max_delay = max_delay_ms.unwrap_or((d.max_delay_ms as i64).max(initial));
        if !(initial..=DAY_MS).contains(&max_delay) {
            return Err(Error::MaxDelay(max_delay));
        }
        let multiplier = multiplier.unwrap_or(d.multiplier);
        if !multiplier.is_finite() || !(1.0..=100.0).contains(&multiplier) {
            return Err(Error::Multiplier(multiplier));
        }
        Ok(Self {
            max_attempts: max_attempts as u32,
            initial_delay_ms: initial as u64,
            multiplier,
            max_delay_ms: max_delay as u64,
            jitter: jitter.unwrap_or(d.jitter),
        })
    }

    /// Whether another attempt may follow the failed attempt number `attempt` (1-based).
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay before the attempt that follows failed attempt `attempt` (1-based), without jitter:
    /// `min(initialDelayMs * multiplier^(attempt-1), maxDelayMs)`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1000) as i32;
        let ms = (self.initial_delay_ms as f64) * self.multiplier.powi(exp);
        let capped = if ms.is_finite() { ms.min(self.max_delay_ms as f64) } else { self.max_delay_ms as f64 };
        Duration::from_millis(capped.round() as u64)
    }

    /// The delay before the attempt that follows failed attempt `attempt`, jittered with `sample` ∈ [0, 1]
    /// (from a random source) when jitter is on: `base * (1 - 0.2 + 0.4 * sample)`, capped at `maxDelayMs`.
    pub fn delay(&self, attempt: u32, sample: f64) -> Duration {
        let base = self.base_delay(attempt);
        if !self.jitter {
            return base;
        }
        let factor = 1.0 - JITTER + 2.0 * JITTER * sample.clamp(0.0, 1.0);
        let ms = (base.as_millis() as f64 * factor).min(self.max_delay_ms as f64);
        Duration::from_millis(ms.round() as u64)
    }

    /// The bounds a jittered `delay(attempt, _)` stays within.
    pub fn delay_bounds(&self, attempt: u32) -> (Duration, Duration) {
        (self.delay(attempt, 0.0), self.delay(attempt, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy { jitter: false, ..RetryPolicy::default() }
    }

    #[test]
    fn fields_left_out_of_the_json_form_take_their_default() {
        let stored: RetryPolicy = serde_json::from_value(serde_json::json!({})).expect("empty object");
        assert_eq!(stored, RetryPolicy::default());
        let partial: RetryPolicy = serde_json::from_value(serde_json::json!({ "maxAttempts": 5 })).expect("partial");
        assert_eq!(partial, RetryPolicy { max_attempts: 5, ..RetryPolicy::default() });
    }

    #[test]
    fn default_schedule_doubles_from_one_second_and_caps_at_a_minute() {
        let p = no_jitter();
        let ms: Vec<u128> = (1..=9).map(|a| p.delay(a, 0.7).as_millis()).collect();
        assert_eq!(ms, vec![1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
    }

    #[test]
    fn custom_multiplier_and_cap() {
        let p = RetryPolicy { initial_delay_ms: 100, multiplier: 3.0, max_delay_ms: 1000, ..no_jitter() };
        let ms: Vec<u128> = (1..=4).map(|a| p.base_delay(a).as_millis()).collect();
        assert_eq!(ms, vec![100, 300, 900, 1000]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_under_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0).as_millis(), 800);
        assert_eq!(p.delay(1, 0.5).as_millis(), 1000);
        assert_eq!(p.delay(1, 1.0).as_millis(), 1200);
        for i in 0..=100 {
            let d = p.delay(3, i as f64 / 100.0).as_millis();
            assert!((3200..=4800).contains(&d), "{d}");
            assert!(p.delay(20, i as f64 / 100.0).as_millis() <= 60_000);
        }
        assert_eq!(p.delay_bounds(2), (std::time::Duration::from_millis(1600), std::time::Duration::from_millis(2400)));
    }

    #[test]
    fn retries_stop_after_max_attempts() {
        let p = RetryPolicy::default();
        assert!(p.should_retry(1));
        assert!(p.should_retry(2));
        assert!(!p.should_retry(3));
    }

    #[test]
    fn from_parts_defaults_and_bounds() {
        assert_eq!(RetryPolicy::from_parts(None, None, None, None, None).unwrap(), RetryPolicy::default());
        let p = RetryPolicy::from_parts(Some(5), Some(10), Some(1.5), Some(100), Some(false)).unwrap();
        assert_eq!((p.max_attempts, p.initial_delay_ms, p.max_delay_ms, p.jitter), (5, 10, 100, false));
        assert_eq!(RetryPolicy::from_parts(Some(0), None, None, None, None), Err(Error::MaxAttempts(0)));
        assert_eq!(RetryPolicy::from_parts(None, Some(-1), None, None, None), Err(Error::InitialDelay(-1)));
        assert_eq!(RetryPolicy::from_parts(None, Some(500), None, Some(100), None), Err(Error::MaxDelay(100)));
        assert_eq!(RetryPolicy::from_parts(None, None, Some(0.5), None, None), Err(Error::Multiplier(0.5)));
        assert!(RetryPolicy::from_parts(None, None, Some(f64::NAN), None, None).is_err());
        // a large initial delay raises the default cap instead of failing
        assert_eq!(RetryPolicy::from_parts(None, Some(120_000), None, None, None).unwrap().max_delay_ms, 120_000);
    }
}
