//! Wall-clock time as stored in the database: unix milliseconds, UTC.

use chrono::{DateTime, SecondsFormat, Utc};

/// Now, unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 with milliseconds (`2026-11-27T10:00:00.000Z`), for people and exports.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}
