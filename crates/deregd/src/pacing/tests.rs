//! The pacing driven on a fake clock: each budget's ceiling and rate, late wake-ups, the tick,
//! and budgets composed for one call.

use std::cell::Cell;
use std::rc::Rc;

use super::budget::{tick_lag, window_limit, DISPATCH_TICK};
use super::gcra::Gcra;
use super::*;

/// A clock the test moves.
#[derive(Clone, Default)]
struct FakeClock(Rc<Cell<Duration>>);

impl FakeClock {
    fn advance(&self, by: Duration) {
        self.0.set(self.0.get() + by);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.0.get()
    }

    fn origin(&self) -> Instant {
        Instant::now()
    }
}

fn max_in_sliding_second(times: &[Duration]) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= Duration::from_secs(1) {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Calls per second over seconds 1-5 of a 5-second drive (the first second is the start).
fn steady_rate(times: &[Duration]) -> f64 {
    times.iter().filter(|t| t.as_secs() >= 1).count() as f64 / 4.0
}

/// A sleep as tokio's timer makes it: rounded up to the millisecond.
fn on_the_millisecond(sleep: Duration) -> Duration {
    Duration::from_millis(sleep.as_nanos().div_ceil(1_000_000) as u64)
}

/// One call through `budget` at `t` if it allows one; the call is written at `t`.
fn try_call(budget: &mut Budget, t: Duration) -> Result<(), Refusal> {
    let grant = budget.check(t)?;
    budget.take(t, grant, SendMark::at(t));
    Ok(())
}

/// A ceiling's budget driven by a caller that asks every 10 us for 5 fake seconds but, after
/// each call, sleeps through `late(i)` more.
fn drive_ceiling(qps: f64, burst: u32, late: impl Fn(usize) -> Duration) -> Vec<Duration> {
    let mut budget = Budget::new(Shape::Ceiling, qps, burst, Duration::ZERO);
    let mut times = Vec::new();
    let step = Duration::from_micros(10);
    let mut t = Duration::ZERO;
    let mut asleep_until = Duration::ZERO;
    while t < Duration::from_secs(5) {
        if t >= asleep_until && try_call(&mut budget, t).is_ok() {
            times.push(t);
            asleep_until = t + late(times.len());
            continue;
        }
        t += step;
    }
    times
}

#[test]
fn a_ceiling_is_used_and_never_exceeded_even_when_woken_late() {
    for (qps, burst) in [
        (100.0, 1),
        (280.0, 3),
        (490.0, 3),
        (490.0, 20),
        (280.0, 140),
    ] {
        let punctual = drive_ceiling(qps, burst, |_| Duration::ZERO);
        let limit = window_limit(Shape::Ceiling, qps);
        let max = max_in_sliding_second(&punctual);
        assert!(max <= limit, "qps {qps} burst {burst}: {max}");
        // The budget is used: 99 % of the ceiling (small ceilings lose their one call of
        // jitter room to rounding, so they are held to the window instead).
        let steady = steady_rate(&punctual);
        let floor = if qps >= 200.0 {
            qps * 0.99
        } else {
            limit as f64 * 0.99
        };
        assert!(steady >= floor, "qps {qps} burst {burst}: {steady}/s");

        // Every 50th call wakes 30 ms late (at 490/s, 15 calls' worth: a lot more than the
        // burst): the credit makes the calls up, the window holds, the rate is kept.
        let late = drive_ceiling(qps, burst, |i| {
            Duration::from_millis(if i % 50 == 0 { 30 } else { 0 })
        });
        let max = max_in_sliding_second(&late);
        assert!(max <= limit, "late, qps {qps} burst {burst}: {max}");
        let steady = steady_rate(&late);
        assert!(
            steady >= floor * 0.95,
            "late, qps {qps} burst {burst}: {steady}/s"
        );
        // Made up at most twice as fast as the rate, after the burst (or the tick's worth at
        // twice the rate, if more): any n calls span (n - 1) half-periods, less that.
        let gap = Duration::from_secs_f64(0.5 / qps);
        let together = (gap * (burst - 1)).max(DISPATCH_TICK);
        for n in [burst as usize + 1, 12, 40] {
            let tightest = late.windows(n).map(|w| w[n - 1] - w[0]).min().unwrap();
            let least = (gap * (n as u32 - 1)).saturating_sub(together);
            assert!(
                tightest + Duration::from_micros(20) >= least,
                "qps {qps} burst {burst}: {n} calls in {tightest:?}"
            );
        }
    }
}

/// A budget driven the way the dispatcher drives it: after a refusal, asleep for its sleep,
/// rounded up to tokio's millisecond (and `extra` of scheduling more). Returns the call times
/// and the number of wake-ups.
fn drive_ticked(mut budget: Budget, extra: Duration) -> (Vec<Duration>, usize) {
    let (mut times, mut wakes) = (Vec::new(), 0);
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(5) {
        match try_call(&mut budget, t) {
            Ok(()) => times.push(t),
            Err(refusal) => {
                t += on_the_millisecond(refusal.sleep()) + extra;
                wakes += 1;
            }
        }
    }
    (times, wakes)
}

#[test]
fn the_dispatch_tick_groups_calls_and_keeps_the_rate_and_the_ceiling() {
    // At 20/s a tick groups nothing: a call and a look at the window each.
    for (qps, most_wakes_per_call) in [(490.0, 0.25), (280.0, 0.4), (20.0, 1.5)] {
        let budget = Budget::new(Shape::Ceiling, qps, 3, Duration::ZERO);
        let (times, wakes) = drive_ticked(budget, Duration::ZERO);
        let limit = window_limit(Shape::Ceiling, qps);
        let max = max_in_sliding_second(&times);
        assert!(max <= limit, "qps {qps}: {max}");
        let floor = if qps >= 200.0 { qps } else { limit as f64 };
        let steady = steady_rate(&times);
        assert!(steady >= floor * 0.99, "qps {qps}: {steady}/s");
        let per_call = wakes as f64 / times.len() as f64;
        assert!(
            per_call <= most_wakes_per_call,
            "qps {qps}: {per_call} wake-ups a call"
        );
    }
}

#[test]
fn under_the_ceiling_after_a_throttle_the_tick_still_keeps_the_rate() {
    // The adaptive rate cut 490/s to 343/s (and later regrows through rates like 400/s).
    for rate in [343.0, 400.0, 150.0] {
        let budget = Budget::pinned(490.0, rate, 3, Duration::ZERO);
        let (times, _) = drive_ticked(budget, Duration::ZERO);
        let steady = steady_rate(&times);
        assert!(steady >= rate * 0.99, "rate {rate}: {steady}/s");
        let max = max_in_sliding_second(&times);
        assert!(max <= rate.ceil() as usize, "rate {rate}: {max}");
    }
}

#[test]
fn an_instance_cap_makes_up_late_wake_ups_and_never_exceeds_the_cap() {
    let late = Duration::from_micros(300);
    for cap in [300.0, 100.0, 50.0, 20.0] {
        let budget = Budget::new(Shape::Cap, cap, cap_burst(cap), Duration::ZERO);
        let (times, _) = drive_ticked(budget, late);
        let max = max_in_sliding_second(&times);
        assert!(max <= cap as usize, "cap {cap}: {max}");
        let steady = steady_rate(&times);
        assert!(steady >= cap * 0.97, "cap {cap}: {steady}/s");
    }
    // Without the call of credit, each late wake-up is lost from the rate.
    let budget = Budget::new(Shape::Cap, 300.0, 1, Duration::ZERO);
    let steady = steady_rate(&drive_ticked(budget, late).0);
    assert!(steady < 250.0, "{steady}/s");
}

#[test]
fn a_cap_with_a_burst_never_exceeds_itself_and_is_used() {
    for (cap, burst) in [(100.0, 1), (100.0, 2), (280.0, 2), (490.0, 2), (280.0, 20)] {
        let mut budget = Budget::new(Shape::Cap, cap, burst, Duration::ZERO);
        let mut times = Vec::new();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(5) {
            while try_call(&mut budget, t).is_ok() {
                times.push(t);
            }
            t += Duration::from_micros(100);
        }
        let max = max_in_sliding_second(&times);
        assert!(max <= cap as usize, "cap {cap} burst {burst}: {max}");
        let steady = steady_rate(&times);
        assert!(
            steady >= cap * 0.99 - burst as f64 - 2.5,
            "cap {cap} burst {burst}: {steady}/s"
        );
    }
}

#[test]
fn a_naive_burst_equal_to_the_rate_would_overshoot() {
    // What NOTES.md warns of: a burst of N at N/s lets about 2N through in the first second.
    let mut g = Gcra::fresh(100.0, Gcra::tolerance_for(100.0, 100));
    let mut times = Vec::new();
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(3) {
        while g.wait(t).is_none() {
            g.take(t);
            times.push(t);
        }
        t += Duration::from_millis(1);
    }
    assert!(max_in_sliding_second(&times) > 150);
}

fn ceilings(qps: u32, source_qps: u32, sources: usize, caps: &[(&str, u32)]) -> Ceilings {
    Ceilings {
        actions: [
            (Action::UnRegister, qps),
            (Action::List, 10),
            (Action::Get, 50),
        ]
        .into(),
        source_qps,
        sources,
        instances: caps.iter().map(|(i, c)| (i.to_string(), *c)).collect(),
        burst: 3,
    }
}

/// Drives `pacer` as the dispatcher does for 5 fake seconds, the candidates being `jobs`
/// instance ids (every call's job comes back as a new candidate of the same instance).
/// Returns each call's (time, source, instance).
fn drive_pacer(
    pacer: &mut Pacer<FakeClock>,
    clock: &FakeClock,
    jobs: &[&str],
) -> Vec<(Duration, usize, String)> {
    let mut calls = Vec::new();
    while clock.now() < Duration::from_secs(5) {
        match pacer.acquire(Action::UnRegister, jobs.iter().copied()) {
            Acquired::Go { index, permit } => {
                let now = clock.now();
                permit.ticket.mark_written_at(now);
                calls.push((now, permit.route.source, jobs[index].to_string()));
            }
            Acquired::Wait(wait) => clock.advance(on_the_millisecond(wait)),
        }
    }
    calls
}

fn times_of(
    calls: &[(Duration, usize, String)],
    keep: impl Fn(&(Duration, usize, String)) -> bool,
) -> Vec<Duration> {
    calls.iter().filter(|c| keep(c)).map(|c| c.0).collect()
}

#[test]
fn a_call_that_needs_three_budgets_never_overshoots_any_of_them() {
    // The account at 490/s, two source addresses of 280/s each, instance A capped at 100/s.
    let clock = FakeClock::default();
    let mut pacer = Pacer::with_clock(&ceilings(490, 280, 2, &[("A", 100)]), clock.clone());
    let calls = drive_pacer(&mut pacer, &clock, &["A", "B", "A", "B"]);
    let all = times_of(&calls, |_| true);
    assert!(max_in_sliding_second(&all) <= 489, "account");
    for source in 0..2 {
        let mine = times_of(&calls, |c| c.1 == source);
        assert!(max_in_sliding_second(&mine) <= 279, "source {source}");
    }
    let a = times_of(&calls, |c| c.2 == "A");
    assert!(max_in_sliding_second(&a) <= 100, "instance A");
    // Every budget is used as far as the others let it: the account runs at its ceiling, A
    // at its cap, and the calls are spread evenly over the sources.
    assert!(steady_rate(&all) >= 490.0 * 0.99, "{}/s", steady_rate(&all));
    assert!(steady_rate(&a) >= 100.0 * 0.97, "{}/s", steady_rate(&a));
    let first = times_of(&calls, |c| c.1 == 0).len() as f64;
    assert!((first / all.len() as f64 - 0.5).abs() < 0.01);
}

#[test]
fn one_source_address_bounds_the_account_at_its_own_ceiling() {
    let clock = FakeClock::default();
    let mut pacer = Pacer::with_clock(&ceilings(490, 280, 1, &[]), clock.clone());
    let calls = drive_pacer(&mut pacer, &clock, &["A"]);
    let all = times_of(&calls, |_| true);
    assert!(max_in_sliding_second(&all) <= 279);
    assert!(steady_rate(&all) >= 280.0 * 0.99);
    assert!(pacer.rate(Action::UnRegister) <= 280.0);
}

#[test]
fn a_closed_instance_cap_does_not_stall_calls_for_other_instances() {
    let clock = FakeClock::default();
    let mut pacer = Pacer::with_clock(&ceilings(280, 280, 1, &[("A", 5)]), clock.clone());
    // The buffer's head is full of A's jobs; B's job is behind them.
    let jobs = ["A", "A", "A", "A", "A", "A", "A", "A", "B"];
    let calls = drive_pacer(&mut pacer, &clock, &jobs);
    let a = times_of(&calls, |c| c.2 == "A");
    let b = times_of(&calls, |c| c.2 == "B");
    assert!(max_in_sliding_second(&a) <= 5);
    assert!(steady_rate(&b) >= 270.0, "B went at {}/s", steady_rate(&b));
    // A call refused by A's cap takes no place in the account's budget or the source's: the
    // account's places all went to calls.
    assert!(steady_rate(&(times_of(&calls, |_| true))) >= 280.0 * 0.99);
}

#[test]
fn the_pacer_hands_out_tickets_that_every_window_of_the_call_counts() {
    let clock = FakeClock::default();
    let mut pacer = Pacer::with_clock(&ceilings(10, 280, 1, &[("A", 5)]), clock.clone());
    clock.advance(Duration::from_secs(1));
    let Acquired::Go { permit, .. } = pacer.acquire(Action::UnRegister, ["A"]) else {
        panic!("a call is due");
    };
    let account = &pacer.actions[&Action::UnRegister];
    assert_eq!(account.window_len(), 1);
    assert_eq!(pacer.sources[0].window_len(), 1);
    assert_eq!(pacer.instances["A"].window_len(), 1);
    // Dropped unwritten, the call leaves every window.
    drop(permit);
    clock.advance(Duration::from_secs(1));
    let _ = pacer.acquire(Action::UnRegister, ["A"]);
    assert_eq!(pacer.sources[0].window_len(), 1, "only the new call counts");
}

#[test]
fn a_reload_lowers_and_raises_ceilings_and_caps() {
    let clock = FakeClock::default();
    let mut pacer = Pacer::with_clock(&ceilings(280, 280, 1, &[("A", 50)]), clock.clone());
    pacer.reload(&ceilings(100, 280, 2, &[]));
    assert_eq!(pacer.ceiling(Action::UnRegister), 100.0);
    assert_eq!(pacer.sources.len(), 2);
    assert!(pacer.instances.is_empty());
    let calls = drive_pacer(&mut pacer, &clock, &["A"]);
    assert!(max_in_sliding_second(&times_of(&calls, |_| true)) <= 99);
    pacer.reload(&ceilings(300, 280, 1, &[("A", 20)]));
    assert_eq!(pacer.instances["A"].ceiling(), 20.0);
    assert_eq!(pacer.ceilings().instances["A"], 20);
    assert_eq!(tick_lag(300.0), 6);
}
