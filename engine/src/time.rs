//! Wall-clock time as stored: microseconds since the Unix epoch.

use chrono::{DateTime, Utc};

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// A stored timestamp as a date-time.
pub fn to_datetime(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}
