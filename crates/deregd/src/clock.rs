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

/// A duration for people: `45s`, `12m 5s`, `3h 20m`, `2d 4h`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(-3), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(725), "12m 5s");
        assert_eq!(human_duration(12_000), "3h 20m");
        assert_eq!(human_duration(187_200), "2d 4h");
    }

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
