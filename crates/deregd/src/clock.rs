//! Time as stored in the database: unix milliseconds, UTC. Within one process the clock is
//! monotonic: it reads the wall clock once, then counts from the monotonic clock, so a step of
//! the wall clock (a manual `date`, a VM resumed) neither reuses billed seconds nor delays the
//! retries already scheduled. [`wall_step_ms`] tells how far the wall clock has moved from it.

use std::sync::OnceLock;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};

/// The wall clock's reading when the process first asked, and the monotonic instant of it.
static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();

fn anchor() -> (i64, Instant) {
    *ANCHOR.get_or_init(|| (Utc::now().timestamp_millis(), Instant::now()))
}

/// Now, unix milliseconds, from the process's anchored monotonic clock.
pub fn now_ms() -> i64 {
    let (wall, at) = anchor();
    wall + at.elapsed().as_millis() as i64
}

/// How far the wall clock is ahead of [`now_ms`] (negative: behind), milliseconds. Near zero
/// unless the wall clock was stepped since the process started.
pub fn wall_step_ms() -> i64 {
    Utc::now().timestamp_millis() - now_ms()
}

/// RFC 3339 with milliseconds (`2026-11-27T10:00:00.000Z`), for people and exports.
pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let first = now_ms();
        assert!((Utc::now().timestamp_millis() - first).abs() < 1000);
        let mut last = first;
        for _ in 0..1000 {
            let t = now_ms();
            assert!(t >= last);
            last = t;
        }
        assert!(wall_step_ms().abs() < 1000);
    }
}
