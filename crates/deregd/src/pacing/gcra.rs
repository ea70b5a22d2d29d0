//! One exact GCRA (generic cell rate algorithm) over the caller's clock: time is a `Duration`
//! since any fixed origin, passed in, so the same type paces the daemon and a test's fake
//! clock. It can be asked without spending ([`Gcra::wait`]); only [`Gcra::take`] spends.
//! Invariant: calls taken whenever `wait` allows them never come closer together than
//! `interval`, after at most `tolerance / interval + 1` back to back.

use std::time::Duration;

/// A theoretical arrival time `tat`, an emission interval and a tolerance: a call may go at
/// `now` when `now >= tat - tolerance`, and moves `tat` one interval past `max(tat, now)`.
#[derive(Debug, Clone)]
pub(crate) struct Gcra {
    interval: Duration,
    tolerance: Duration,
    tat: Duration,
}

impl Gcra {
    /// `rate` calls per second with `tolerance` of lateness made up back to back; it starts
    /// spent, as if a call had just gone: the next one is due one interval from `now`.
    #[cfg(test)]
    pub(crate) fn new(rate: f64, tolerance: Duration, now: Duration) -> Gcra {
        let mut gcra = Gcra {
            interval: interval(rate),
            tolerance,
            tat: Duration::ZERO,
        };
        gcra.spend_all(now);
        gcra
    }

    /// A GCRA that starts with its whole tolerance available (nothing is owed to the past).
    pub(crate) fn fresh(rate: f64, tolerance: Duration) -> Gcra {
        Gcra {
            interval: interval(rate),
            tolerance,
            tat: Duration::ZERO,
        }
    }

    /// `capacity` calls back to back at `rate`: the tolerance that allows them.
    pub(crate) fn tolerance_for(rate: f64, capacity: u32) -> Duration {
        interval(rate) * capacity.max(1).saturating_sub(1)
    }

    /// How long from `now` until one call may go; `None` when it may now.
    pub(crate) fn wait(&self, now: Duration) -> Option<Duration> {
        let earliest = self.tat.saturating_sub(self.tolerance);
        (earliest > now).then(|| earliest - now)
    }

    /// Spends one call at `now` (whether or not [`Gcra::wait`] allowed it).
    pub(crate) fn take(&mut self, now: Duration) {
        self.tat = self.tat.max(now) + self.interval;
    }

    /// Calls that may go back to back at `now`.
    pub(crate) fn credit(&self, now: Duration) -> u32 {
        let start = self.tat.max(now);
        let reach = now + self.tolerance;
        if reach < start {
            return 0;
        }
        ((reach - start).as_nanos() / self.interval.as_nanos().max(1)) as u32 + 1
    }

    /// Spends every call of credit at `now`; returns how many there were.
    pub(crate) fn drain(&mut self, now: Duration) -> u32 {
        let credit = self.credit(now);
        self.tat = self.tat.max(now) + self.interval * credit;
        credit
    }

    /// A new rate and tolerance, starting spent at `now` (credit built up at the old rate is
    /// not carried over).
    pub(crate) fn set_rate(&mut self, rate: f64, tolerance: Duration, now: Duration) {
        self.interval = interval(rate);
        self.tolerance = tolerance;
        self.spend_all(now);
    }

    /// A new rate and tolerance, keeping the schedule (for a spacing whose next slot stands).
    pub(crate) fn reshape(&mut self, rate: f64, tolerance: Duration) {
        self.interval = interval(rate);
        self.tolerance = tolerance;
    }

    /// As if a call had just gone at `now`, with no credit left.
    pub(crate) fn spend_all(&mut self, now: Duration) {
        self.tat = now + self.interval + self.tolerance;
    }
}

/// The interval between calls at `rate` calls per second (at least 0.1/s).
fn interval(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate.max(0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_fresh_gcra_allows_its_capacity_back_to_back_then_one_per_interval() {
        let mut g = Gcra::fresh(10.0, Gcra::tolerance_for(10.0, 3));
        let t = Duration::from_secs(5);
        assert_eq!(g.credit(t), 3);
        for _ in 0..3 {
            assert_eq!(g.wait(t), None);
            g.take(t);
        }
        assert_eq!(g.wait(t), Some(100 * MS));
        assert_eq!(g.credit(t), 0);
        assert_eq!(g.wait(t + 100 * MS), None);
    }

    #[test]
    fn a_new_gcra_starts_spent_and_asking_spends_nothing() {
        let g = Gcra::new(100.0, Gcra::tolerance_for(100.0, 5), Duration::ZERO);
        assert_eq!(g.wait(Duration::ZERO), Some(10 * MS));
        assert_eq!(g.wait(Duration::ZERO), Some(10 * MS), "wait does not spend");
        assert_eq!(g.credit(10 * MS), 1);
        assert_eq!(g.credit(50 * MS), 5, "credit builds up to the capacity");
        assert_eq!(g.credit(Duration::from_secs(60)), 5, "and no further");
    }

    #[test]
    fn draining_spends_all_credit_and_a_new_rate_starts_spent() {
        let mut g = Gcra::fresh(100.0, Gcra::tolerance_for(100.0, 4));
        let t = Duration::from_secs(1);
        assert_eq!(g.drain(t), 4);
        assert_eq!(g.credit(t), 0);
        assert_eq!(g.wait(t), Some(10 * MS));
        g.set_rate(50.0, Duration::ZERO, t);
        assert_eq!(g.wait(t), Some(20 * MS));
    }

    #[test]
    fn calls_taken_when_allowed_never_beat_the_rate_beyond_the_tolerance() {
        let mut g = Gcra::new(490.0, Gcra::tolerance_for(490.0, 3), Duration::ZERO);
        let mut times = Vec::new();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(2) {
            if g.wait(t).is_none() {
                g.take(t);
                times.push(t);
            } else {
                t += Duration::from_micros(10);
            }
        }
        // Any n consecutive calls span at least (n - capacity) intervals.
        let interval = Duration::from_secs_f64(1.0 / 490.0);
        for w in times.windows(10) {
            assert!(w[9] - w[0] + Duration::from_micros(1) >= interval * 7);
        }
        assert!((975..=981).contains(&times.len()), "{}", times.len());
    }
}
