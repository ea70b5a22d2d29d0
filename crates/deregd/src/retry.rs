//! Retry delays for transient failures: exponential with "equal jitter" (each delay between half
//! and all of `min(base * 2^(n-1), max)`), computed with backon. The delay is stored in the job
//! row (`next_attempt_at`), so a restart keeps the schedule and a waiting job holds no worker.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetrySettings;

/// The delay before the call that follows call number `attempt` (1-based) failed transiently.
pub(crate) fn delay_after(settings: &RetrySettings, attempt: i64) -> Duration {
    let (base, max) = (settings.base_delay, settings.max_delay);
    // backon's jitter adds [0, d) to d; halving min and max gives [d/2, d).
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(base / 2)
        .with_max_delay(max / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let n = attempt.clamp(1, 64) as usize;
    delays.nth(n - 1).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base: u64, max: u64) -> RetrySettings {
        RetrySettings {
            max_attempts: 8,
            base_delay: Duration::from_millis(base),
            max_delay: Duration::from_millis(max),
        }
    }

    #[test]
    fn delays_double_within_jitter_bounds_and_stay_under_the_cap() {
        let s = settings(1000, 20_000);
        for attempt in 1..=12 {
            let step = (1000u64 << (attempt - 1).min(20)).min(20_000);
            for _ in 0..50 {
                let d = delay_after(&s, attempt as i64).as_millis() as u64;
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempt}: {d} not in [{}, {step}]",
                    step / 2
                );
            }
        }
    }

    #[test]
    fn delays_are_jittered() {
        let s = settings(1000, 60_000);
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| delay_after(&s, 3).as_micros()).collect();
        assert!(samples.len() > 10, "{samples:?}");
    }
}
