//! A budget: one key's ceiling (an action's account-wide limit, a source address's, an
//! instance's cap), held by a steady GCRA, a spacing GCRA for credit, a send window and the
//! adaptive rate. Invariant: no sliding second ever holds more calls than the window's limit
//! by the time each request was written, whatever the credit allows.
//!
//! The steady GCRA runs just under the window's limit and carries [`CATCH_UP`] of credit, so
//! calls a stall held back are made up, but no faster than twice the rate (the spacing); the
//! window drops credit that would only keep every second full, holding over the
//! [`DISPATCH_TICK`]'s own lag. A refusal by the steady pace is slept for a tick at least, so
//! the calls that fall due meanwhile go out together.

use std::time::Duration;

use super::adaptive::{AdaptiveRate, SlidingCount};
use super::gcra::Gcra;
use super::window::{SendMark, SendWindow};
use super::Pressure;

/// Headroom kept under a ceiling, so scheduling jitter cannot push one more call into a second.
pub(crate) const PACING_MARGIN: f64 = 0.001;
/// How much later than its place a call may reach the gateway (scheduling, loopback): a cap's
/// steady pace keeps this much room.
pub(crate) const ARRIVAL_JITTER: Duration = Duration::from_millis(5);
/// The shortest sleep after the steady pace refuses a ceiling's call: the calls that fall due
/// meanwhile go out together (about five at 490/s), where each would wake the runtime's
/// thread on its own. The send window still counts each call by its write time.
pub(crate) const DISPATCH_TICK: Duration = Duration::from_millis(10);
/// How far behind its schedule a ceiling may fall and still make the calls up (the host
/// descheduled the daemon, a slow write): missed calls within it are made up at up to twice
/// the rate, as far as the send window has room; beyond it they are lost to the rate.
pub(crate) const CATCH_UP: Duration = Duration::from_millis(50);
/// Overload answers (`SystemOverFlow`, `ApplyTokenOverFlow`, 503, ...) cut the rate only when
/// at least this share of the last second's answers were overload answers: a trickle of them is
/// the server's own noise.
pub(crate) const OVERLOAD_SHARE: f64 = 0.1;
/// ... and at least this many of them.
pub(crate) const OVERLOAD_MIN: u32 = 3;
/// After a cut, calls resume once the calls still in the gateway's second plus the new ones
/// stay under this share of what it accepted: the gateway also counts the calls in flight,
/// whose answers are not in the count yet.
pub(crate) const HOLD_OFF_MARGIN: f64 = 0.9;

/// What a budget holds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A ceiling of the vendor's (an action's account-wide limit, a source address's): the
    /// window keeps one call of room for arrival jitter, the steady pace runs just under it
    /// with [`CATCH_UP`] of credit, refusals are ticked, throttles cut it.
    Ceiling,
    /// An operator's cap on an instance: the steady pace keeps [`ARRIVAL_JITTER`] of room
    /// under the cap, with one call of credit from 50/s up, and refusals are waited out exactly.
    Cap,
}

/// How to spend a call a budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// From the steady pace.
    Steady,
    /// From the tick's lag held over when a full window dropped the credit.
    Held,
}

/// Why a budget refused a call, and how long to sleep before looking again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Refusal {
    pub(crate) wait: Duration,
    /// The least sleep: a tick for a ceiling's steady pace, nothing for an exact wait (a full
    /// window is waited out exactly: a place left empty is lost to the rate).
    pub(crate) at_least: Duration,
}

impl Refusal {
    fn exact(wait: Duration) -> Refusal {
        Refusal {
            wait,
            at_least: Duration::ZERO,
        }
    }

    /// How long to sleep.
    pub(crate) fn sleep(self) -> Duration {
        self.wait.max(self.at_least)
    }
}

/// One key's budget.
#[derive(Debug)]
pub(crate) struct Budget {
    shape: Shape,
    burst: u32,
    adaptive: AdaptiveRate,
    /// The rate the GCRAs are set for, calls/s.
    applied: f64,
    steady: Gcra,
    /// How fast credit may be spent: twice the rate.
    spacing: Gcra,
    /// Calls of credit held over from a drop (the tick's lag).
    held: u32,
    window: SendWindow,
    accepted: SlidingCount,
    overloaded: SlidingCount,
    /// No call before this (an `x-acs-retry-after`, or a hold-off after a cut).
    not_before: Option<Duration>,
    /// Held at its rate, whatever the adaptive curve says (tests of a rate under the ceiling).
    pinned: bool,
}

impl Budget {
    /// A budget of `ceiling` calls per sliding second with `burst` calls of credit, starting
    /// spent at `now` (the first call is one interval away).
    pub(crate) fn new(shape: Shape, ceiling: f64, burst: u32, now: Duration) -> Budget {
        let mut budget = Budget {
            shape,
            burst,
            adaptive: AdaptiveRate::new(ceiling),
            applied: ceiling,
            steady: Gcra::fresh(ceiling, Duration::ZERO),
            spacing: Gcra::fresh(2.0 * ceiling, Duration::ZERO),
            held: 0,
            window: SendWindow::new(window_limit(shape, ceiling)),
            accepted: SlidingCount::default(),
            overloaded: SlidingCount::default(),
            not_before: None,
            pinned: false,
        };
        budget.rebuild(ceiling, now);
        budget
    }

    /// A ceiling's budget held at `rate` under `ceiling` (as after a throttle), for tests.
    #[cfg(test)]
    pub(crate) fn pinned(ceiling: f64, rate: f64, burst: u32, now: Duration) -> Budget {
        let mut budget = Budget::new(Shape::Ceiling, ceiling, burst, now);
        budget.pinned = true;
        budget.rebuild(rate, now);
        budget
    }

    /// The configured ceiling, calls per second.
    pub(crate) fn ceiling(&self) -> f64 {
        self.adaptive.ceiling()
    }

    /// The current (adaptive) rate, calls per second.
    pub(crate) fn rate(&self) -> f64 {
        self.applied
    }

    /// Whether a call may go at `now`, without spending anything. A full window drops the
    /// credit the steady pace built up (but the tick's lag), since spending it would only keep
    /// every second full from then on.
    pub(crate) fn check(&mut self, now: Duration) -> Result<Grant, Refusal> {
        if let Some(at) = self.not_before {
            if now < at {
                return Err(Refusal::exact(at - now));
            }
            self.not_before = None;
        }
        self.regrow(now);
        if let Some(wait) = self.window.wait(now) {
            let dropped = self.steady.drain(now);
            self.held = (self.held + dropped).min(self.lag());
            return Err(Refusal::exact(wait));
        }
        if let Some(wait) = self.spacing.wait(now) {
            return Err(self.paced(wait));
        }
        match self.steady.wait(now) {
            None => Ok(Grant::Steady),
            Some(_) if self.held > 0 => Ok(Grant::Held),
            Some(wait) => Err(self.paced(wait)),
        }
    }

    /// Spends a call [`Budget::check`] allowed at `now`: it counts in the window under `mark`.
    pub(crate) fn take(&mut self, now: Duration, grant: Grant, mark: SendMark) {
        self.window.record(mark);
        self.spacing.take(now);
        match grant {
            Grant::Steady => self.steady.take(now),
            Grant::Held => self.held -= 1,
        }
    }

    /// Starts the pace afresh at `now`, as if a call had just gone: the credit built up while
    /// there was nothing to send (start-up, a probe's answer awaited, an idle queue) is owed
    /// to no one. Spent at twice the rate, it would fill the window in the first second, and
    /// the window would then hold the next second back as long.
    pub(crate) fn restart(&mut self, now: Duration) {
        self.rebuild(self.applied, now);
    }

    /// A new ceiling and burst (SIGHUP). A rate that was at the old ceiling moves to the new
    /// one; a curve regrowing after a cut stays under it.
    pub(crate) fn set_ceiling(&mut self, ceiling: f64, burst: u32, now: Duration) {
        self.burst = burst;
        self.adaptive.set_ceiling(ceiling);
        self.window.set_limit(window_limit(self.shape, ceiling));
        self.rebuild(self.adaptive.rate_at(secs(now)), now);
    }

    /// An answer the gateway did not push back on.
    pub(crate) fn on_accepted(&mut self, now: Duration) {
        self.accepted.add(tenth(now));
    }

    /// A pressure signal at `now` for a call that went at `sent`. A throttle (or any answer
    /// with a retry-after) cuts the rate; overload answers cut it only when they are a notable
    /// share of the last second's answers. Signals from calls sent before the last cut tell of
    /// the old rate and are ignored. Returns the new rate when it was cut.
    pub(crate) fn on_pressure(
        &mut self,
        pressure: Pressure,
        sent: Duration,
        retry_after: Option<Duration>,
        now: Duration,
    ) -> Option<f64> {
        let tenth = tenth(now);
        if let Some(wait) = retry_after {
            self.hold_off(now + wait.min(Duration::from_secs(60)));
        }
        if pressure == Pressure::Overloaded && retry_after.is_none() {
            self.overloaded.add(tenth);
            let overloaded = self.overloaded.total(tenth);
            let answers = overloaded + self.accepted.total(tenth);
            if overloaded < OVERLOAD_MIN || (overloaded as f64) < OVERLOAD_SHARE * answers as f64 {
                return None;
            }
        }
        if self.adaptive.last_cut().is_some_and(|cut| secs(sent) < cut) {
            return None;
        }
        let accepted = self.accepted.total(tenth) as f64;
        let rate = self.adaptive.cut(secs(now), accepted);
        self.rebuild(rate, now);
        // The gateway counts over a sliding second still full of calls sent at the old rate:
        // calls sent before enough of them age out would be throttled too, and each such
        // signal would cut again, down to the floor. Hold off until the calls accepted within
        // the last second fit the new rate.
        if let Some(wait) =
            self.accepted
                .until_fits(tenth, rate, accepted.max(rate) * HOLD_OFF_MARGIN)
        {
            self.hold_off(now + wait);
        }
        Some(rate)
    }

    fn hold_off(&mut self, until: Duration) {
        self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
    }

    /// Follows the regrowth curve; resets the pace when the rate moved enough to matter.
    fn regrow(&mut self, now: Duration) {
        if self.pinned {
            return;
        }
        let rate = self.adaptive.rate_at(secs(now));
        if (rate - self.applied).abs() >= (self.applied * 0.02).max(0.5)
            || (rate >= self.adaptive.ceiling() && self.applied < rate)
        {
            self.rebuild(rate, now);
        }
    }

    /// The GCRAs for `rate`, starting spent at `now`.
    fn rebuild(&mut self, rate: f64, now: Duration) {
        let (spacing_burst, credit) = self.credit_at(rate);
        let steady = self.steady_rate(rate);
        self.steady
            .set_rate(steady, Gcra::tolerance_for(steady, credit), now);
        let gap = Duration::from_secs_f64(0.5 / rate.max(0.1));
        self.spacing.reshape(
            2.0 * rate,
            (gap * spacing_burst.saturating_sub(1)).max(self.tick()),
        );
        self.held = 0;
        self.applied = rate;
    }

    /// The steady pace at `rate`.
    fn steady_rate(&self, rate: f64) -> f64 {
        let steady = match self.shape {
            Shape::Ceiling => window_limit(Shape::Ceiling, rate) as f64,
            Shape::Cap => rate - (self.burst as f64 - 1.0) - jitter_calls(rate),
        };
        (steady / (1.0 + PACING_MARGIN)).max(0.1)
    }

    /// `(spacing burst, credit)` at `rate`. A ceiling at its ceiling: the burst and
    /// [`CATCH_UP`]'s worth. Under it (after a throttle): only the tick's lag, so nothing else
    /// is made up while the gateway pushes back. A cap: its burst.
    fn credit_at(&self, rate: f64) -> (u32, u32) {
        match self.shape {
            Shape::Cap => (self.burst, self.burst),
            Shape::Ceiling if rate < self.adaptive.ceiling() => (1, tick_lag(rate)),
            Shape::Ceiling => (
                self.burst,
                self.burst.max(1) + (rate * CATCH_UP.as_secs_f64()).floor() as u32,
            ),
        }
    }

    /// The least sleep after the steady pace refused.
    fn tick(&self) -> Duration {
        match self.shape {
            Shape::Ceiling => DISPATCH_TICK,
            Shape::Cap => Duration::ZERO,
        }
    }

    fn paced(&self, wait: Duration) -> Refusal {
        Refusal {
            wait,
            at_least: self.tick(),
        }
    }

    /// Credit a full window may not drop: the tick's lag, for a ceiling.
    fn lag(&self) -> u32 {
        match self.shape {
            Shape::Ceiling => tick_lag(self.applied),
            Shape::Cap => 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn window_len(&self) -> usize {
        self.window.len()
    }
}

/// Calls allowed in any sliding second by the time each was written to its socket. For a
/// ceiling, one under it: a call that reaches the gateway a little late lets the next one
/// close up behind it, which adds at most one to a second. A cap keeps its room in the pace.
pub(crate) fn window_limit(shape: Shape, ceiling: f64) -> usize {
    match shape {
        Shape::Ceiling => (ceiling.ceil() as usize).saturating_sub(1).max(1),
        Shape::Cap => (ceiling.floor() as usize).max(1),
    }
}

/// The burst of an instance's cap: one call of credit from 50 calls/s up, so a wake-up a
/// little late (tokio's timer rounds up to the millisecond) is made up, not lost. The burst
/// comes out of the steady pace, which under 50/s costs more than the wake-ups lose.
pub(crate) fn cap_burst(cap: f64) -> u32 {
    if cap >= 50.0 {
        2
    } else {
        1
    }
}

/// Calls that fall due at `rate` over two [`DISPATCH_TICK`]s (a tick and the timer's rounding
/// of it): the lag the tick itself leaves, which is owed to the steady rate.
pub(crate) fn tick_lag(rate: f64) -> u32 {
    ((rate * 2.0 * DISPATCH_TICK.as_secs_f64()).ceil() as u32).max(1)
}

/// [`ARRIVAL_JITTER`]'s worth of calls at `rate` (at most 2.5).
fn jitter_calls(rate: f64) -> f64 {
    (rate * ARRIVAL_JITTER.as_secs_f64()).min(2.5)
}

fn secs(t: Duration) -> f64 {
    t.as_secs_f64()
}

fn tenth(t: Duration) -> u64 {
    (t.as_millis() / 100) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Calls a check would allow at `now`, taken (spending what it allows).
    fn take_all(b: &mut Budget, now: Duration) -> usize {
        std::iter::from_fn(|| {
            let grant = b.check(now).ok()?;
            b.take(now, grant, SendMark::at(now));
            Some(())
        })
        .count()
    }

    #[test]
    fn a_restart_drops_the_credit_a_deliberate_wait_built_up() {
        // 10/s: one call of credit per 100 ms.
        let mut b = Budget::new(Shape::Ceiling, 10.0, 3, Duration::ZERO);
        assert_eq!(
            take_all(&mut b, Duration::ZERO),
            0,
            "a new budget starts spent"
        );
        assert_eq!(
            take_all(&mut b, 350 * MS),
            3,
            "a wait builds credit, up to the burst"
        );
        b.restart(700 * MS);
        assert_eq!(
            take_all(&mut b, 700 * MS),
            0,
            "restarted: nothing to make up"
        );
    }

    #[test]
    fn the_tick_s_lag_is_held_over_when_a_full_window_drops_the_credit() {
        let mut b = Budget::new(Shape::Ceiling, 490.0, 3, Duration::ZERO);
        // Fill the window by hand: 489 calls written at 0.
        for _ in 0..window_limit(Shape::Ceiling, 490.0) {
            b.window.record(SendMark::at(Duration::ZERO));
        }
        // 60 ms on, the steady pace owes about 27 calls of credit; the window is full.
        let t = 60 * MS;
        assert!(b.steady.credit(t) > 10);
        assert!(b.check(t).is_err());
        assert_eq!(b.steady.credit(t), 0, "the credit was dropped");
        assert_eq!(
            b.held,
            tick_lag(490.0),
            "but the tick's lag is held: 10 calls"
        );
        assert_eq!(tick_lag(490.0), 10);
        // With room in the window again, the held calls go though the pace has no credit.
        b.window = SendWindow::new(window_limit(Shape::Ceiling, 490.0));
        for _ in 0..tick_lag(490.0) {
            assert_eq!(b.check(t), Ok(Grant::Held));
            b.take(t, Grant::Held, SendMark::at(t));
        }
        assert!(b.check(t).is_err(), "then the pace");
        b.held = 3;
        b.restart(t);
        assert_eq!(b.held, 0, "a new pace starts with nothing held");
    }

    #[test]
    fn a_retry_after_holds_every_call_until_it_has_passed() {
        let mut b = Budget::new(Shape::Ceiling, 100.0, 3, Duration::ZERO);
        let t = Duration::from_secs(1);
        b.on_pressure(Pressure::Throttled, t, Some(250 * MS), t);
        let refusal = b.check(t + 100 * MS).unwrap_err();
        assert_eq!(refusal.sleep(), 150 * MS, "waited out exactly");
        // Past it, only the (cut) pace decides.
        if let Err(refusal) = b.check(t + 260 * MS) {
            assert_eq!(refusal.at_least, DISPATCH_TICK, "{refusal:?}");
        }
    }
}
