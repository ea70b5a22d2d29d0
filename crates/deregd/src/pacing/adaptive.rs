//! The adaptive rate (AWS "adaptive" mode): a throttling signal cuts the rate to 0.7 of what the
//! gateway accepted over the last second, and it regrows on a cubic curve back to the ceiling.
//! A pure function of time, in seconds since any fixed origin; [`SlidingCount`] counts the
//! answers it is fed in 100 ms buckets.

use std::time::Duration;

/// Multiplier applied to the rate on a throttling signal.
pub(crate) const CUT_FACTOR: f64 = 0.7;
/// Cubic regrowth constant (calls/s per s^3), as in AWS's adaptive retry mode.
pub(crate) const CUBIC_C: f64 = 0.4;
/// The rate never drops below this, calls per second.
pub(crate) const FLOOR_RATE: f64 = 1.0;

/// The adaptive rate as a pure function of time (seconds since any fixed origin).
#[derive(Debug, Clone)]
pub(crate) struct AdaptiveRate {
    ceiling: f64,
    /// Rate just before the last cut; regrowth is a cubic centred on it.
    last_max: f64,
    /// Time of the last cut, seconds.
    last_cut: Option<f64>,
    current: f64,
}

impl AdaptiveRate {
    pub(crate) fn new(ceiling: f64) -> AdaptiveRate {
        AdaptiveRate {
            ceiling,
            last_max: ceiling,
            last_cut: None,
            current: ceiling,
        }
    }

    /// A throttling signal at `now`. `accepted` is how many calls the gateway accepted over the
    /// last second: when it is lower than the current rate, it is the better estimate of what
    /// the gateway allows. Returns the new rate.
    pub(crate) fn cut(&mut self, now: f64, accepted: f64) -> f64 {
        let from = self.rate_at(now).min(accepted.max(FLOOR_RATE));
        self.last_max = from;
        self.current = (from * CUT_FACTOR).max(FLOOR_RATE);
        self.last_cut = Some(now);
        self.current
    }

    /// The rate at `now`: the cubic `last_max + C (t - K)^3` since the last cut, capped.
    pub(crate) fn rate_at(&self, now: f64) -> f64 {
        let Some(cut_at) = self.last_cut else {
            return self.current.min(self.ceiling);
        };
        let k = (self.last_max * (1.0 - CUT_FACTOR) / CUBIC_C).cbrt();
        let t = (now - cut_at).max(0.0);
        let rate = self.last_max + CUBIC_C * (t - k).powi(3);
        rate.clamp(FLOOR_RATE, self.ceiling)
    }

    /// Time of the last cut, seconds.
    pub(crate) fn last_cut(&self) -> Option<f64> {
        self.last_cut
    }

    pub(crate) fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// A new ceiling (SIGHUP). A rate that was at the old ceiling moves to the new one; a
    /// curve regrowing after a cut is kept under it (and may now grow further).
    pub(crate) fn set_ceiling(&mut self, ceiling: f64) {
        if self.last_cut.is_none() && self.current >= self.ceiling {
            self.current = ceiling;
            self.last_max = ceiling;
        }
        self.ceiling = ceiling;
        self.last_max = self.last_max.min(ceiling);
        self.current = self.current.min(ceiling);
    }
}

/// Counts events over the last second in 100 ms buckets (accepted calls, for the cut estimate).
#[derive(Debug, Default)]
pub(crate) struct SlidingCount {
    buckets: [(u64, u32); 10],
}

impl SlidingCount {
    pub(crate) fn add(&mut self, tenth: u64) {
        let slot = &mut self.buckets[(tenth % 10) as usize];
        if slot.0 != tenth {
            *slot = (tenth, 0);
        }
        slot.1 += 1;
    }

    /// How long from `tenth` until calls can go at `rate` without the last second ever holding
    /// `limit` events or more: the events counted here age out bucket by bucket while the new
    /// calls add up, and their sum must stay under `limit` for the whole next second. `None`
    /// when calls can go at once.
    pub(crate) fn until_fits(&self, tenth: u64, rate: f64, limit: f64) -> Option<Duration> {
        let fits_from = |ahead: u64| {
            (ahead..=10)
                .all(|k| self.total(tenth + k) as f64 + rate * (k - ahead) as f64 / 10.0 < limit)
        };
        (0..=10u64)
            .find(|ahead| fits_from(*ahead))
            .or(Some(10))
            .filter(|ahead| *ahead > 0)
            .map(|ahead| Duration::from_millis(ahead * 100))
    }

    pub(crate) fn total(&self, tenth: u64) -> u32 {
        self.buckets
            .iter()
            .filter(|(t, _)| *t + 10 > tenth && *t <= tenth)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_cuts_to_what_the_gateway_accepted_then_regrows() {
        let mut rate = AdaptiveRate::new(300.0);
        assert_eq!(rate.rate_at(0.0), 300.0);
        let cut = rate.cut(10.0, 100.0);
        assert!((cut - 70.0).abs() < 1e-9, "{cut}");
        assert!(rate.rate_at(10.5) < 80.0);
        // Back near the accepted rate after K seconds, flat around it, then probing upwards.
        let k = (100.0f64 * 0.3 / CUBIC_C).cbrt();
        assert!((rate.rate_at(10.0 + k) - 100.0).abs() < 1e-6);
        assert!(rate.rate_at(10.0 + k + 1.0) < 101.0);
        assert!(rate.rate_at(10.0 + k + 20.0) > 150.0);
        assert_eq!(rate.rate_at(1000.0), 300.0);
    }

    #[test]
    fn a_new_ceiling_moves_a_rate_that_was_at_the_old_one() {
        let mut rate = AdaptiveRate::new(20.0);
        rate.set_ceiling(400.0);
        assert_eq!(rate.rate_at(1.0), 400.0);
        rate.set_ceiling(100.0);
        assert_eq!(rate.rate_at(2.0), 100.0);
        // After a cut the curve regrows towards the new ceiling, not the old one.
        rate.cut(3.0, 100.0);
        rate.set_ceiling(300.0);
        assert!(rate.rate_at(3.5) < 100.0);
        assert_eq!(rate.rate_at(1000.0), 300.0);
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let mut rate = AdaptiveRate::new(10.0);
        for i in 0..50 {
            rate.cut(i as f64, 0.0);
        }
        assert!(rate.rate_at(50.0) >= FLOOR_RATE);
    }

    #[test]
    fn sliding_count_forgets_after_a_second() {
        let mut c = SlidingCount::default();
        for t in 0..10 {
            c.add(t);
            c.add(t);
        }
        assert_eq!(c.total(9), 20);
        assert_eq!(c.total(14), 10);
        assert_eq!(c.total(30), 0);
    }

    #[test]
    fn hold_off_lasts_until_old_and_new_calls_fit_under_the_limit() {
        let mut c = SlidingCount::default();
        // A burst: 30 events in each of the tenths 0, 1 and 2, then 10 in tenth 3.
        for t in 0..3 {
            for _ in 0..30 {
                c.add(t);
            }
        }
        for _ in 0..10 {
            c.add(3);
        }
        // Cut to 70 at tenth 3 with 100 accepted: the window holds 100 until tenth 0 ages out
        // (tenth 10); from then on 70 + 7, 40 + 14, 10 + 21 and 0 + 28 all stay under 100.
        assert_eq!(
            c.until_fits(3, 70.0, 100.0),
            Some(Duration::from_millis(700))
        );
        // Under 90 (the margin): the same, since 70 + 7 < 90.
        assert_eq!(
            c.until_fits(3, 70.0, 90.0),
            Some(Duration::from_millis(700))
        );
        // Nothing in the window: no wait at all.
        assert_eq!(SlidingCount::default().until_fits(3, 70.0, 100.0), None);
        // Nothing fits a limit of 1 until every bucket has aged out.
        assert_eq!(c.until_fits(3, 0.5, 1.0), Some(Duration::from_millis(1000)));

        // A steady 100/s (10 per tenth) cut to 70, resuming under 90: two tenths age out
        // (80 < 90), and from then on the old calls leave faster than the new ones arrive.
        let mut steady = SlidingCount::default();
        for t in 0..10 {
            for _ in 0..10 {
                steady.add(t);
            }
        }
        assert_eq!(
            steady.until_fits(9, 70.0, 90.0),
            Some(Duration::from_millis(200))
        );
    }
}
