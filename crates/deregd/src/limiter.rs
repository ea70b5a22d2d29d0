//! Pacing: the account-wide ceiling (`limits.qps`, never exceeded in any sliding second), the
//! per-instance caps, and the adaptive rate that drops on throttling signals and regrows on a
//! cubic curve (AWS "adaptive" mode). Calls are spaced evenly by governor's GCRA, never sent in
//! per-second batches. The account's ceiling is also held by a log of the last sends
//! ([`SendWindow`]), stamped when each request goes to its socket ([`SendTicket`]): a burst that
//! catches up after a late wake-up, or a call held up between its permit and its write, can
//! never put more than the ceiling into any sliding second, so the steady rate need not give up
//! the burst's room.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::LimitsSettings;
use crate::outcome::Pressure;

/// Headroom kept under a ceiling, so scheduling jitter cannot push one more call into a second.
pub const PACING_MARGIN: f64 = 0.001;
/// How much later than its permit a call may reach the gateway (scheduling, loopback): the
/// per-instance caps count calls by permit time, so they keep this much room.
pub const ARRIVAL_JITTER: Duration = Duration::from_millis(5);
/// How often the send window looks again at a full second whose oldest call has its permit but
/// has not reached its socket yet (a connection still being set up). Written, that call would
/// hold its place for a second more; only its being given up (a connect error) frees it sooner,
/// and that is what the window looks for.
const UNWRITTEN_POLL: Duration = Duration::from_millis(10);
/// The shortest sleep between two looks at the account's gates. The calls that fall due during
/// it go out together when it ends: about five at 490/s, where each had a wake-up of its own
/// before. Waking the runtime thread (the timer, the scheduler, the kernel's context switch)
/// was the largest cost of a call left: with the tick, the daemon's voluntary context switches
/// went from 1.86 to 1.23 a call at 490/s and its CPU a call to about 0.8x. The send window
/// still counts every call by the time it was written, so no sliding second holds more.
pub const DISPATCH_TICK: Duration = Duration::from_millis(10);
/// How far behind its schedule the account limiter may fall and still make the calls up (the
/// host descheduled the daemon for a while, a slow write): calls missed within it are made up
/// at up to twice the rate, as far as the send window has room. Beyond it they are lost to the
/// rate, never sent on top of it.
pub const CATCH_UP: Duration = Duration::from_millis(50);
/// Multiplier applied to the rate on a throttling signal.
pub const CUT_FACTOR: f64 = 0.7;
/// Cubic regrowth constant (calls/s per s^3), as in AWS's adaptive retry mode.
pub const CUBIC_C: f64 = 0.4;
/// The rate never drops below this, calls per second.
pub const FLOOR_RATE: f64 = 1.0;
/// Overload answers (`SystemOverFlow`, `ApplyTokenOverFlow`, 503, ...) cut the rate only when at
/// least this share of the last second's answers were overload answers: a steady trickle of them
/// is the server's own noise, and cutting on each would sink the rate to the floor.
pub const OVERLOAD_SHARE: f64 = 0.1;
/// ... and at least this many of them.
pub const OVERLOAD_MIN: u32 = 3;

/// The GCRA quota that keeps any sliding second at or under `ceiling` calls with `burst`
/// calls allowed back to back: a burst of B then one call per period gives at most
/// `B - 1 + 1s/period` permits in any second; one call of headroom more covers arrival jitter.
pub fn quota_for(ceiling: f64, burst: u32) -> Quota {
    let burst = burst.max(1);
    // `burst - 1` calls for the burst, and the arrival jitter's worth of calls.
    let steady =
        ((ceiling - (burst as f64 - 1.0) - jitter_calls(ceiling)) / (1.0 + PACING_MARGIN)).max(0.1);
    let period = Duration::from_secs_f64(1.0 / steady);
    Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"))
}

/// Calls allowed in any sliding second under `ceiling`, by the time each call was written to
/// its socket: one under it. From socket to gateway a call's way may vary by a little, and a
/// call that arrives a little late lets the next one close up behind it; as long as that
/// variation is shorter than the gap between two calls, it adds at most one to a second.
pub fn window_limit(ceiling: f64) -> usize {
    (ceiling.ceil() as usize).saturating_sub(1).max(1)
}

/// The burst of an instance's cap: one call of credit from 50 calls/s up, so a wake-up a
/// little late (tokio's timer rounds up to the millisecond) is made up, not lost. Without it
/// a cap of 300/s gave 228 calls/s: a millisecond lost on most calls of 3.3 ms. The burst comes
/// out of the steady rate ([`quota_for`]), which under 50/s costs more than the wake-ups lose.
pub fn instance_burst(cap: f64) -> u32 {
    if cap >= 50.0 {
        2
    } else {
        1
    }
}

/// [`ARRIVAL_JITTER`]'s worth of calls at `ceiling` (at most 2.5): a call that reaches the
/// gateway a little late lets the next ones close up behind it.
fn jitter_calls(ceiling: f64) -> f64 {
    (ceiling * ARRIVAL_JITTER.as_secs_f64()).min(2.5)
}

/// The account limiter's GCRA quota: the steady rate just under [`window_limit`], with `burst`
/// calls of credit for late wake-ups. It is not safe alone (credit spent on top of a full
/// second would overshoot); [`SendWindow`] caps every sliding second and [`Spacing`] keeps
/// credit from being spent back to back.
pub fn account_quota(ceiling: f64, burst: u32) -> Quota {
    let steady = (window_limit(ceiling) as f64 / (1.0 + PACING_MARGIN)).max(0.1);
    Quota::with_period(Duration::from_secs_f64(1.0 / steady))
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst >= 1"))
}

/// The account limiter's credit at `rate`: `burst` calls, plus [`CATCH_UP`]'s worth.
pub fn account_credit(rate: f64, burst: u32) -> u32 {
    burst.max(1) + (rate * CATCH_UP.as_secs_f64()).floor() as u32
}

/// Calls that fall due at `rate` over two [`DISPATCH_TICK`]s (a tick and the timer's rounding
/// of it): the lag the tick itself leaves, which is owed to the steady rate.
pub fn tick_lag(rate: f64) -> u32 {
    ((rate * 2.0 * DISPATCH_TICK.as_secs_f64()).ceil() as u32).max(1)
}

/// The account limiter's `(spacing burst, credit)` at `rate` under `ceiling`. At the ceiling:
/// the burst and [`CATCH_UP`]'s worth. Under it (after a throttle): only the tick's lag, so
/// nothing else is made up while the gateway pushes back; with one call of credit, a sleep of
/// a tick would let one call through and the rate would sink to one call a tick.
fn account_at(rate: f64, ceiling: f64, burst: u32) -> (u32, u32) {
    if rate < ceiling {
        (1, tick_lag(rate))
    } else {
        (burst, account_credit(rate, burst))
    }
}

/// The account's GCRA limiter at `rate` with `credit` calls of credit, all of it spent, as if
/// the calls had just left: pacing starts one interval from now, not with a burst.
fn spent_account<C: Clock>(
    rate: f64,
    credit: u32,
    clock: C,
) -> RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>> {
    let account = RateLimiter::direct_with_clock(account_quota(rate, credit), clock);
    let _ = account.check_n(NonZeroU32::new(credit.max(1)).expect("credit >= 1"));
    account
}

/// `burst` calls (or a [`DISPATCH_TICK`]'s worth at twice `rate`, if more) back to back, then
/// no faster than twice `rate`: how credit owed after a stall is spent (a hand-made GCRA, so it
/// can be asked without spending). It also holds the few calls of credit that a full send
/// window would otherwise drop but that are the dispatch tick's own lag (see [`take_account`]).
#[derive(Debug)]
pub struct Spacing {
    gap: Duration,
    tolerance: Duration,
    /// The theoretical time of the next call (since any fixed origin).
    next: Duration,
    /// Calls of credit held over from a drop.
    held: u32,
}

impl Spacing {
    pub fn new(rate: f64, burst: u32) -> Spacing {
        let mut spacing = Spacing {
            gap: Duration::ZERO,
            tolerance: Duration::ZERO,
            next: Duration::ZERO,
            held: 0,
        };
        spacing.set_rate(rate, burst);
        spacing
    }

    pub fn set_rate(&mut self, rate: f64, burst: u32) {
        self.gap = Duration::from_secs_f64(0.5 / rate.max(0.1));
        self.tolerance = (self.gap * (burst.max(1) - 1)).max(DISPATCH_TICK);
        self.held = 0;
    }

    /// How long from `now` until one more call may start, or `None` when it may now.
    pub fn wait(&self, now: Duration) -> Option<Duration> {
        let earliest = self.next.saturating_sub(self.tolerance);
        (earliest > now).then(|| earliest - now)
    }

    pub fn record(&mut self, now: Duration) {
        self.next = self.next.max(now) + self.gap;
    }

    /// Holds on to up to [`tick_lag`] calls of `dropped` credit.
    fn hold(&mut self, dropped: usize) {
        let rate = 0.5 / self.gap.as_secs_f64();
        self.held = (self.held as usize + dropped).min(tick_lag(rate) as usize) as u32;
    }

    /// Spends one call of held credit, if any is held.
    fn take_held(&mut self) -> bool {
        let some = self.held > 0;
        self.held = self.held.saturating_sub(1);
        some
    }
}

/// One look at the account's gates at `now` (since the pacer's origin): the send window, the
/// spacing of credit, then the GCRA. `Ok` takes a call and records it in the window with the
/// mark `sent` makes; `Err` is how long to wait before looking again.
///
/// When the send window is full the calls are caught up with the ceiling, and credit left over
/// would only keep the window full from then on, every sliding second at the limit with no room
/// for arrival jitter (the GCRA's steady rate is just under the window's, so it would take a
/// minute to drain by itself). It is dropped here; it builds up again while dispatch is held up.
/// Only the dispatch tick's own lag is held over ([`Spacing`]): the calls that fell due while the
/// dispatcher slept out its tick are owed to the steady rate, and dropping them each time a
/// grouped send fills the window cost 0.3 % of the rate.
fn take_account<C: Clock>(
    account: &RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    window: &mut SendWindow,
    spacing: &mut Spacing,
    now: Duration,
    sent: impl FnOnce() -> SendMark,
) -> Result<SendMark, Refusal> {
    if let Some(wait) = window.wait(now) {
        spacing.hold(std::iter::from_fn(|| account.check().ok()).count());
        return Err(Refusal::WindowFull(wait));
    }
    if let Some(wait) = spacing.wait(now) {
        return Err(Refusal::Pace(wait));
    }
    if let Err(not_until) = account.check() {
        if !spacing.take_held() {
            return Err(Refusal::Pace(
                not_until.wait_time_from(account.clock().now()),
            ));
        }
    }
    let mark = sent();
    window.record(mark.clone());
    spacing.record(now);
    Ok(mark)
}

/// Why [`take_account`] refused a call, and how long from now until it may look again.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    /// The send window holds its limit until its oldest call ages out. Waited out exactly: a
    /// place left empty for a tick is lost to the rate (0.9915 of the cap instead of 0.9945
    /// at 490/s, when the window's waits were ticked too).
    WindowFull(Duration),
    /// The steady pace (the GCRA or the spacing of credit). Waited out for a
    /// [`DISPATCH_TICK`] at least: the calls due meanwhile go out together.
    Pace(Duration),
}

impl Refusal {
    /// How long to sleep before looking again.
    fn sleep(self) -> Duration {
        match self {
            Refusal::WindowFull(wait) => wait,
            Refusal::Pace(wait) => wait.max(DISPATCH_TICK),
        }
    }
}

/// When one call was written to its socket, shared between the send window and the call's
/// [`SendTicket`]: nanoseconds since the pacer's origin plus one; zero until then, all ones when
/// the call was given up before it was written.
#[derive(Debug, Clone, Default)]
pub struct SendMark(Arc<AtomicU64>);

/// What a [`SendMark`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Pending,
    At(Duration),
    Unsent,
}

impl SendMark {
    const PENDING: u64 = 0;
    const UNSENT: u64 = u64::MAX;

    /// A call written at `at` (since the origin).
    #[cfg(test)]
    fn at(at: Duration) -> SendMark {
        let mark = SendMark::default();
        mark.set(at);
        mark
    }

    /// The latest write wins: a request retried on a fresh connection counts when it left.
    fn set(&self, at: Duration) {
        let stamp = (at.as_nanos() + 1).min(u128::from(Self::UNSENT - 1)) as u64;
        self.0.store(stamp, Ordering::Relaxed);
    }

    fn give_up(&self) {
        let _ = self.0.compare_exchange(
            Self::PENDING,
            Self::UNSENT,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn read(&self) -> Sent {
        match self.0.load(Ordering::Relaxed) {
            Self::PENDING => Sent::Pending,
            Self::UNSENT => Sent::Unsent,
            nanos => Sent::At(Duration::from_nanos(nanos - 1)),
        }
    }
}

/// One call's place in the send window, from [`Pacer::until_ready`]. The HTTP client calls
/// [`SendTicket::writing`] as the request goes to its socket; a ticket dropped before that
/// tells the window the call never left.
#[derive(Debug)]
#[must_use = "a ticket dropped unused takes its call out of the send window"]
pub struct SendTicket {
    origin: Instant,
    mark: SendMark,
}

impl SendTicket {
    /// A ticket outside any pacer (a test's one-off call): its mark goes nowhere.
    #[cfg(test)]
    pub(crate) fn unpaced() -> SendTicket {
        SendTicket {
            origin: Instant::now(),
            mark: SendMark::default(),
        }
    }

    /// The request is being written to its socket now.
    pub fn writing(&self) {
        self.mark.set(self.origin.elapsed());
    }

    /// What the window will see of this ticket, kept after the ticket is handed on.
    #[cfg(test)]
    pub(crate) fn watch(&self) -> SendWatch {
        SendWatch {
            origin: self.origin,
            mark: self.mark.clone(),
        }
    }
}

/// A test's view of a [`SendTicket`] it has handed on.
#[cfg(test)]
pub(crate) struct SendWatch {
    origin: Instant,
    mark: SendMark,
}

#[cfg(test)]
impl SendWatch {
    /// When the request was written, if it was.
    pub(crate) fn written_at(&self) -> Option<Instant> {
        match self.mark.read() {
            Sent::At(at) => Some(self.origin + at),
            Sent::Pending | Sent::Unsent => None,
        }
    }

    /// The ticket was dropped before its request was written.
    pub(crate) fn given_up(&self) -> bool {
        self.mark.read() == Sent::Unsent
    }
}

impl Drop for SendTicket {
    fn drop(&mut self) {
        self.mark.give_up();
    }
}

/// The calls written within the last second, and those with a permit not written yet: one more
/// is allowed only while fewer than `limit` of them are within a second of now, so no sliding
/// second ever holds more than `limit` writes. Calls are kept in permit order; one written out
/// of that order stays counted until the ones before it age out (it only ever counts more).
#[derive(Debug)]
pub struct SendWindow {
    limit: usize,
    /// Oldest permit first.
    sends: std::collections::VecDeque<SendMark>,
}

impl SendWindow {
    pub fn new(limit: usize) -> SendWindow {
        SendWindow {
            limit: limit.max(1),
            sends: std::collections::VecDeque::with_capacity(limit.max(1)),
        }
    }

    /// How long from `now` until one more send fits, or `None` when it fits now.
    pub fn wait(&mut self, now: Duration) -> Option<Duration> {
        while let Some(oldest) = self.sends.front() {
            match oldest.read() {
                Sent::Unsent => {}
                Sent::At(at) if at + Duration::from_secs(1) <= now => {}
                Sent::At(_) | Sent::Pending => break,
            }
            self.sends.pop_front();
        }
        if self.sends.len() < self.limit {
            return None;
        }
        match self.sends.front().map(SendMark::read) {
            Some(Sent::At(at)) => Some(at + Duration::from_secs(1) - now),
            _ => Some(UNWRITTEN_POLL),
        }
    }

    pub fn record(&mut self, mark: SendMark) {
        self.sends.push_back(mark);
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }
}

/// The adaptive rate as a pure function of time (seconds since any fixed origin).
#[derive(Debug, Clone)]
pub struct AdaptiveRate {
    ceiling: f64,
    /// Rate just before the last cut; regrowth is a cubic centred on it.
    last_max: f64,
    /// Time of the last cut, seconds.
    last_cut: Option<f64>,
    current: f64,
}

impl AdaptiveRate {
    pub fn new(ceiling: f64) -> AdaptiveRate {
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
    pub fn cut(&mut self, now: f64, accepted: f64) -> f64 {
        let from = self.rate_at(now).min(accepted.max(FLOOR_RATE));
        self.last_max = from;
        self.current = (from * CUT_FACTOR).max(FLOOR_RATE);
        self.last_cut = Some(now);
        self.current
    }

    /// The rate at `now`: the cubic `last_max + C (t - K)^3` since the last cut, capped.
    pub fn rate_at(&self, now: f64) -> f64 {
        let Some(cut_at) = self.last_cut else {
            return self.current.min(self.ceiling);
        };
        let k = (self.last_max * (1.0 - CUT_FACTOR) / CUBIC_C).cbrt();
        let t = (now - cut_at).max(0.0);
        let rate = self.last_max + CUBIC_C * (t - k).powi(3);
        rate.clamp(FLOOR_RATE, self.ceiling)
    }

    /// Time of the last cut, seconds.
    pub fn last_cut(&self) -> Option<f64> {
        self.last_cut
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// A new ceiling (SIGHUP). A rate that was at the old ceiling moves to the new one; a
    /// curve regrowing after a cut is kept under it (and may now grow further).
    pub fn set_ceiling(&mut self, ceiling: f64) {
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
struct SlidingCount {
    buckets: [(u64, u32); 10],
}

impl SlidingCount {
    fn add(&mut self, tenth: u64) {
        let slot = &mut self.buckets[(tenth % 10) as usize];
        if slot.0 != tenth {
            *slot = (tenth, 0);
        }
        slot.1 += 1;
    }

    /// How long from `tenth` until fewer than `limit` events remain within the last second,
    /// or `None` when that is already so.
    fn until_below(&self, tenth: u64, limit: f64) -> Option<Duration> {
        (0..=10u64)
            .find(|ahead| (self.total(tenth + ahead) as f64) < limit)
            .filter(|ahead| *ahead > 0)
            .map(|ahead| Duration::from_millis(ahead * 100))
    }

    fn total(&self, tenth: u64) -> u32 {
        self.buckets
            .iter()
            .filter(|(t, _)| *t + 10 > tenth && *t <= tenth)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The dispatcher's pacing: one account limiter, per-instance caps, the adaptive rate.
pub struct Pacer {
    burst: u32,
    adaptive: AdaptiveRate,
    /// The rate the account limiter was built for, calls/s.
    applied: f64,
    account: DefaultDirectRateLimiter,
    /// The ceiling by send times, whatever the GCRA's credit allows.
    window: SendWindow,
    /// How fast credit may be spent.
    spacing: Spacing,
    instances: HashMap<String, DefaultDirectRateLimiter>,
    caps: HashMap<String, u32>,
    origin: Instant,
    accepted: SlidingCount,
    /// Overload answers over the last second.
    overloaded: SlidingCount,
    /// No call before this (an `x-acs-retry-after` answer).
    not_before: Option<Instant>,
}

impl Pacer {
    pub fn new(limits: &LimitsSettings) -> Pacer {
        let ceiling = limits.qps as f64;
        let burst = limits.burst;
        let mut pacer = Pacer {
            burst,
            adaptive: AdaptiveRate::new(ceiling),
            applied: ceiling,
            account: spent_account(
                ceiling,
                account_credit(ceiling, burst),
                DefaultClock::default(),
            ),
            window: SendWindow::new(window_limit(ceiling)),
            spacing: Spacing::new(ceiling, burst),
            instances: HashMap::new(),
            caps: HashMap::new(),
            origin: Instant::now(),
            accepted: SlidingCount::default(),
            overloaded: SlidingCount::default(),
            not_before: None,
        };
        pacer.set_caps(&limits.instance_tps);
        pacer
    }

    fn set_caps(&mut self, caps: &std::collections::BTreeMap<String, u32>) {
        self.instances = caps
            .iter()
            .map(|(id, cap)| {
                let quota = quota_for(*cap as f64, instance_burst(*cap as f64));
                (id.clone(), RateLimiter::direct(quota))
            })
            .collect();
        self.caps = caps.iter().map(|(k, v)| (k.clone(), *v)).collect();
    }

    /// Applies reloaded `limits.*` (SIGHUP).
    pub fn reload(&mut self, limits: &LimitsSettings) {
        self.burst = limits.burst;
        self.adaptive.set_ceiling(limits.qps as f64);
        self.window.set_limit(window_limit(limits.qps as f64));
        self.set_caps(&limits.instance_tps);
        self.rebuild(self.adaptive.rate_at(self.now()));
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    fn tenth(&self) -> u64 {
        (self.origin.elapsed().as_millis() / 100) as u64
    }

    /// Current target rate, calls per second.
    pub fn rate(&self) -> f64 {
        self.applied
    }

    /// Configured ceiling, calls per second.
    pub fn ceiling(&self) -> f64 {
        self.adaptive.ceiling()
    }

    /// Waits until the account limiter and the send window allow one call (and any
    /// retry-after has passed). The call counts in the window from now; its ticket stamps when
    /// it was written, or takes it out again if it never is. Refused, it sleeps at least a
    /// [`DISPATCH_TICK`], so the calls due meanwhile go out together.
    pub async fn until_ready(&mut self) -> SendTicket {
        self.regrow();
        if let Some(at) = self.not_before.take() {
            tokio::time::sleep_until(at.into()).await;
        }
        // governor's own `until_ready` sleeps on the futures-timer thread: one more thread
        // hand-off per call. tokio's timer wakes this task directly, once a tick at most.
        loop {
            match take_account(
                &self.account,
                &mut self.window,
                &mut self.spacing,
                self.origin.elapsed(),
                SendMark::default,
            ) {
                Ok(mark) => {
                    return SendTicket {
                        origin: self.origin,
                        mark,
                    }
                }
                Err(refusal) => tokio::time::sleep(refusal.sleep()).await,
            }
        }
    }

    /// Takes one call from `instance_id`'s cap. `Err(wait)` when the cap allows none now.
    pub fn take_instance(&self, instance_id: &str) -> Result<(), Duration> {
        match self.instances.get(instance_id) {
            None => Ok(()),
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(limiter.clock().now())),
        }
    }

    /// True when `instance_id` has a cap.
    pub fn is_capped(&self, instance_id: &str) -> bool {
        self.caps.contains_key(instance_id)
    }

    /// An accepted (not throttled) answer.
    pub fn on_accepted(&mut self) {
        let tenth = self.tenth();
        self.accepted.add(tenth);
    }

    /// A pressure signal for a call sent at `sent_at`. A throttle (or any answer with a
    /// retry-after) cuts the rate; overload answers cut it only when they are a notable share
    /// of the last second's answers ([`OVERLOAD_SHARE`]). Signals from calls sent before the
    /// last cut are ignored: they tell of the old rate. Returns the new rate when it was cut.
    pub fn on_pressure(
        &mut self,
        pressure: Pressure,
        sent_at: Instant,
        retry_after: Option<Duration>,
    ) -> Option<f64> {
        let tenth = self.tenth();
        if let Some(wait) = retry_after {
            let until = Instant::now() + wait.min(Duration::from_secs(60));
            self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
        }
        if pressure == Pressure::Overloaded && retry_after.is_none() {
            self.overloaded.add(tenth);
            let overloaded = self.overloaded.total(tenth);
            let answers = overloaded + self.accepted.total(tenth);
            if overloaded < OVERLOAD_MIN || (overloaded as f64) < OVERLOAD_SHARE * answers as f64 {
                return None;
            }
        }
        let sent = sent_at.saturating_duration_since(self.origin).as_secs_f64();
        if self.adaptive.last_cut().is_some_and(|cut| sent < cut) {
            return None;
        }
        let accepted = self.accepted.total(tenth) as f64;
        let now = self.now();
        let rate = self.adaptive.cut(now, accepted);
        self.rebuild(rate);
        // The gateway counts over a sliding second that is still full of calls sent at the old
        // rate: calls sent before enough of them age out would be throttled too, and each such
        // signal would cut again (a cascade down to the floor). Hold off until the calls
        // accepted within the last second fit the new rate.
        if let Some(wait) = self.accepted.until_below(tenth, rate) {
            let until = Instant::now() + wait;
            self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
        }
        Some(rate)
    }

    /// Starts the account's pace afresh, as if a call had just left: the credit built up
    /// while there was nothing to send (start-up, a probe's answer awaited, an idle queue) is
    /// not owed to anyone. Spent at twice the rate, it would fill the send window within the
    /// first second, and the window would then hold the next second back as long.
    pub fn restart(&mut self) {
        self.rebuild(self.applied);
    }

    /// Follows the regrowth curve; rebuilds the limiter when the rate moved enough to matter.
    pub fn regrow(&mut self) {
        let rate = self.adaptive.rate_at(self.now());
        if (rate - self.applied).abs() >= (self.applied * 0.02).max(0.5)
            || (rate >= self.adaptive.ceiling() && self.applied < rate)
        {
            self.rebuild(rate);
        }
    }

    /// A fresh account limiter for `rate`, with its credit ([`account_at`]).
    fn rebuild(&mut self, rate: f64) {
        let (burst, credit) = account_at(rate, self.adaptive.ceiling(), self.burst);
        self.account = spent_account(rate, credit, DefaultClock::default());
        self.spacing.set_rate(rate, burst);
        self.applied = rate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(qps: u32, burst: u32) -> LimitsSettings {
        LimitsSettings {
            qps,
            burst,
            max_in_flight: 64,
            max_unrecorded: 1000,
            pause_probe: Duration::from_secs(60),
            instance_tps: Default::default(),
        }
    }

    /// Credit the account limiter would grant at once, taken.
    fn take_credit(pacer: &Pacer) -> usize {
        std::iter::from_fn(|| pacer.account.check().ok()).count()
    }

    #[test]
    fn a_restart_drops_the_credit_a_deliberate_wait_built_up() {
        // 10/s: one call of credit per 100 ms, so the checks below are far from the next one.
        let mut pacer = Pacer::new(&limits(10, 3));
        assert_eq!(
            take_credit(&pacer),
            0,
            "a new pacer starts with its credit spent"
        );
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(
            take_credit(&pacer),
            3,
            "a wait builds credit, up to the burst"
        );
        std::thread::sleep(Duration::from_millis(350));
        pacer.restart();
        assert_eq!(take_credit(&pacer), 0, "restarted: nothing to make up");
    }

    /// Greedy caller: asks every 100 us for 5 fake seconds; returns the allowed call times.
    fn drive(quota: Quota) -> Vec<Duration> {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        let mut times = Vec::new();
        let step = Duration::from_micros(100);
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(5) {
            while limiter.check().is_ok() {
                times.push(t);
            }
            clock.advance(step);
            t += step;
        }
        times
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

    #[test]
    fn no_sliding_second_exceeds_the_ceiling_with_a_burst() {
        for (qps, burst) in [(100.0, 1), (100.0, 2), (280.0, 2), (490.0, 2), (280.0, 20)] {
            let times = drive(quota_for(qps, burst));
            let max = max_in_sliding_second(&times);
            assert!(max <= qps as usize, "qps {qps} burst {burst}: {max}");
            // And the budget is used: at least 99 % of the ceiling over the steady seconds.
            let steady = steady_rate(&times);
            assert!(
                steady >= qps * 0.99 - burst as f64,
                "qps {qps} burst {burst}: {steady}/s"
            );
        }
    }

    /// The account's pacing (GCRA + send window) driven by a caller that asks every 10 us
    /// for 5 fake seconds but, after each call, sleeps through `late(i)` more.
    fn drive_account(qps: f64, burst: u32, late: impl Fn(usize) -> Duration) -> Vec<Duration> {
        let clock = FakeRelativeClock::default();
        let limiter = spent_account(qps, account_credit(qps, burst), clock.clone());
        let mut window = SendWindow::new(window_limit(qps));
        let mut spacing = Spacing::new(qps, burst);
        let mut times = Vec::new();
        let step = Duration::from_micros(10);
        let mut t = Duration::ZERO;
        let mut asleep_until = Duration::ZERO;
        while t < Duration::from_secs(5) {
            if t >= asleep_until
                && take_account(&limiter, &mut window, &mut spacing, t, || SendMark::at(t)).is_ok()
            {
                times.push(t);
                asleep_until = t + late(times.len());
                continue;
            }
            clock.advance(step);
            t += step;
        }
        times
    }

    #[test]
    fn the_account_pacing_uses_the_ceiling_and_never_exceeds_it_even_when_woken_late() {
        for (qps, burst) in [
            (100.0, 1),
            (280.0, 3),
            (490.0, 3),
            (490.0, 20),
            (280.0, 140),
        ] {
            let punctual = drive_account(qps, burst, |_| Duration::ZERO);
            let max = max_in_sliding_second(&punctual);
            assert!(max <= window_limit(qps), "qps {qps} burst {burst}: {max}");
            // The budget is used: 99 % of the ceiling (small ceilings lose their one call of
            // jitter room to rounding, so they are held to the window instead).
            let steady = steady_rate(&punctual);
            let floor = if qps >= 200.0 {
                qps * 0.99
            } else {
                window_limit(qps) as f64 * 0.99
            };
            assert!(steady >= floor, "qps {qps} burst {burst}: {steady}/s");

            // Every 50th call wakes 30 ms late (at 490/s, 15 calls' worth: a lot more than the
            // burst): the credit makes the calls up, the window holds, the rate is kept.
            let late = drive_account(qps, burst, |i| {
                Duration::from_millis(if i % 50 == 0 { 30 } else { 0 })
            });
            let max = max_in_sliding_second(&late);
            assert!(
                max <= window_limit(qps),
                "late, qps {qps} burst {burst}: {max}"
            );
            // (Asleep about a third of the time at 490/s. With only the burst to catch up with,
            // 490/s fell to 395/s here and 280/s to 251/s; now 472.5 and 268.25. What is still
            // lost is the credit dropped whenever the window fills: see take_account.)
            let steady = steady_rate(&late);
            assert!(
                steady >= floor * 0.95,
                "late, qps {qps} burst {burst}: {steady}/s"
            );
            // Made up at most twice as fast as the rate, after the burst (or the tick's worth
            // at twice the rate, if more): any n calls span (n - 1) half-periods, less that.
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
        // Without the window the same burst would overshoot after a late wake-up.
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(account_quota(280.0, 140), clock.clone());
        let mut times = Vec::new();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(3) {
            while limiter.check().is_ok() {
                times.push(t);
            }
            clock.advance(Duration::from_millis(1));
            t += Duration::from_millis(1);
        }
        assert!(max_in_sliding_second(&times) > 280);
    }

    /// Calls per second over seconds 1-5 of a 5-second drive (the first second is the start).
    fn steady_rate(times: &[Duration]) -> f64 {
        times.iter().filter(|t| t.as_secs() >= 1).count() as f64 / 4.0
    }

    /// A sleep as tokio's timer makes it: rounded up to the millisecond.
    fn on_the_millisecond(sleep: Duration) -> Duration {
        Duration::from_millis(sleep.as_nanos().div_ceil(1_000_000) as u64)
    }

    /// The account's pacing driven the way [`Pacer::until_ready`] drives it: after a refusal,
    /// asleep for the wait or a tick, whichever is longer, rounded up to tokio's millisecond.
    /// Returns the call times and the number of wake-ups.
    fn drive_ticked(rate: f64, ceiling: f64, burst: u32) -> (Vec<Duration>, usize) {
        let clock = FakeRelativeClock::default();
        let (burst, credit) = account_at(rate, ceiling, burst);
        let limiter = spent_account(rate, credit, clock.clone());
        let mut window = SendWindow::new(window_limit(ceiling));
        let mut spacing = Spacing::new(rate, burst);
        let (mut times, mut wakes) = (Vec::new(), 0);
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(5) {
            match take_account(&limiter, &mut window, &mut spacing, t, || SendMark::at(t)) {
                Ok(_) => times.push(t),
                Err(refusal) => {
                    let sleep = on_the_millisecond(refusal.sleep());
                    clock.advance(sleep);
                    t += sleep;
                    wakes += 1;
                }
            }
        }
        (times, wakes)
    }

    #[test]
    fn the_dispatch_tick_groups_calls_and_keeps_the_rate_and_the_ceiling() {
        // At 20/s a tick groups nothing: a call and a look at the window each.
        for (qps, burst, most_wakes_per_call) in [(490.0, 3, 0.25), (280.0, 3, 0.4), (20.0, 3, 1.5)]
        {
            let (times, wakes) = drive_ticked(qps, qps, burst);
            let max = max_in_sliding_second(&times);
            assert!(max <= window_limit(qps), "qps {qps}: {max}");
            let steady = steady_rate(&times);
            let floor = if qps >= 200.0 {
                qps
            } else {
                window_limit(qps) as f64
            };
            assert!(steady >= floor * 0.99, "qps {qps}: {steady}/s");
            let per_call = wakes as f64 / times.len() as f64;
            assert!(
                per_call <= most_wakes_per_call,
                "qps {qps}: {per_call} wake-ups a call"
            );
        }
    }

    /// An instance cap's limiter driven the way the dispatch loop drives it: refused, asleep
    /// for the wait rounded up to tokio's millisecond and 0.3 ms of scheduling more.
    fn drive_instance(cap: f64, burst: u32) -> Vec<Duration> {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota_for(cap, burst), clock.clone());
        let mut times = Vec::new();
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(5) {
            match limiter.check() {
                Ok(()) => times.push(t),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(clock.now());
                    let sleep = on_the_millisecond(wait) + Duration::from_micros(300);
                    clock.advance(sleep);
                    t += sleep;
                }
            }
        }
        times
    }

    #[test]
    fn an_instance_cap_makes_up_late_wake_ups_and_never_exceeds_the_cap() {
        for cap in [300.0, 100.0, 50.0, 20.0] {
            let times = drive_instance(cap, instance_burst(cap));
            let max = max_in_sliding_second(&times);
            assert!(max <= cap as usize, "cap {cap}: {max}");
            let steady = steady_rate(&times);
            assert!(steady >= cap * 0.97, "cap {cap}: {steady}/s");
        }
        // Without the call of credit, each late wake-up is lost from the rate.
        let steady = steady_rate(&drive_instance(300.0, 1));
        assert!(steady < 250.0, "{steady}/s");
    }

    #[test]
    fn under_the_ceiling_after_a_throttle_the_tick_still_keeps_the_rate() {
        // The adaptive rate cut 490/s to 343/s (and later regrows through rates like 400/s).
        for rate in [343.0, 400.0, 150.0] {
            let (times, _) = drive_ticked(rate, 490.0, 3);
            let steady = steady_rate(&times);
            assert!(steady >= rate * 0.99, "rate {rate}: {steady}/s");
            let max = max_in_sliding_second(&times);
            assert!(max <= rate.ceil() as usize, "rate {rate}: {max}");
        }
    }

    #[test]
    fn the_tick_s_lag_is_held_over_when_a_full_window_drops_the_credit() {
        let mut spacing = Spacing::new(490.0, 3);
        // Two ticks at 490/s: 9.8 calls, so 10 at most.
        spacing.hold(3);
        spacing.hold(30);
        assert_eq!(
            std::iter::from_fn(|| spacing.take_held().then_some(())).count(),
            10
        );
        spacing.hold(4);
        spacing.set_rate(490.0, 3);
        assert!(!spacing.take_held(), "a new rate starts with nothing held");
    }

    #[test]
    fn the_send_window_waits_for_the_oldest_send_to_age_out() {
        let ms = Duration::from_millis;
        let mut w = SendWindow::new(3);
        for t in [0, 10, 20] {
            assert_eq!(w.wait(ms(t)), None);
            w.record(SendMark::at(ms(t)));
        }
        assert_eq!(w.wait(ms(500)), Some(ms(500)));
        assert_eq!(w.wait(ms(1000)), None);
        w.record(SendMark::at(ms(1000)));
        assert_eq!(w.wait(ms(1000)), Some(ms(10)));
        w.set_limit(5);
        assert_eq!(w.wait(ms(1000)), None);
        w.set_limit(1);
        assert_eq!(
            w.wait(ms(1500)),
            Some(ms(500)),
            "a lower limit waits longer"
        );
    }

    #[test]
    fn a_call_counts_from_its_permit_until_a_second_after_it_was_written() {
        let ms = Duration::from_millis;
        let origin = Instant::now();
        let mut w = SendWindow::new(1);
        let ticket = SendTicket {
            origin,
            mark: SendMark::default(),
        };
        w.record(ticket.mark.clone());
        // Not written yet (a connection being set up): it holds its place however long.
        assert_eq!(w.wait(ms(1500)), Some(UNWRITTEN_POLL));
        assert_eq!(ticket.watch().written_at(), None);
        // Written 900 ms after the origin: free a second after that, not after the permit.
        ticket.mark.set(ms(900));
        assert_eq!(ticket.watch().written_at(), Some(origin + ms(900)));
        assert_eq!(w.wait(ms(1500)), Some(ms(400)));
        assert_eq!(w.wait(ms(1900)), None);
        // Dropping a written ticket changes nothing.
        drop(ticket);
        w.record(SendMark::at(ms(1900)));
        assert_eq!(w.wait(ms(2000)), Some(ms(900)));
    }

    #[test]
    fn a_call_given_up_before_it_was_written_leaves_the_window() {
        let ms = Duration::from_millis;
        let mut w = SendWindow::new(2);
        let given_up = SendTicket::unpaced();
        w.record(given_up.mark.clone());
        w.record(SendMark::at(ms(10)));
        assert_eq!(w.wait(ms(20)), Some(UNWRITTEN_POLL));
        drop(given_up);
        assert_eq!(w.wait(ms(20)), None, "the never-sent call no longer counts");
    }

    #[test]
    fn a_call_written_out_of_order_still_counts_until_the_ones_before_it_age_out() {
        let ms = Duration::from_millis;
        let mut w = SendWindow::new(2);
        let first = SendMark::default();
        w.record(first.clone());
        w.record(SendMark::at(ms(5))); // the second permit's call left first
        first.set(ms(40));
        assert_eq!(
            w.wait(ms(1010)),
            Some(ms(30)),
            "both count until the first ages out"
        );
        assert_eq!(w.wait(ms(1040)), None);
    }

    #[tokio::test]
    async fn the_pacer_hands_out_tickets_that_the_window_counts() {
        let mut pacer = Pacer::new(&limits(10, 1));
        let ticket = pacer.until_ready().await;
        assert_eq!(pacer.window.sends.len(), 1);
        ticket.writing();
        let written = ticket.watch().written_at().expect("stamped");
        assert!(written <= Instant::now());
        let unsent = pacer.until_ready().await;
        let watch = unsent.watch();
        drop(unsent);
        assert!(watch.given_up());
        assert_eq!(pacer.window.sends.len(), 2);
    }

    #[test]
    fn a_naive_burst_equal_to_the_rate_would_overshoot() {
        // What NOTES.md warns of: per_second(N) has a burst of N and lets ~2N through.
        let times = drive(Quota::per_second(NonZeroU32::new(100).unwrap()));
        assert!(max_in_sliding_second(&times) > 150);
    }

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
    fn hold_off_lasts_until_the_last_second_fits_the_new_rate() {
        let mut c = SlidingCount::default();
        // 30 events in each of the tenths 0, 1 and 2, then 10 in tenth 3: 100 within a second.
        for t in 0..3 {
            for _ in 0..30 {
                c.add(t);
            }
        }
        for _ in 0..10 {
            c.add(3);
        }
        // Cut to 70 at tenth 3: 70 remain once tenth 0 ages out (tenth 10), fewer at tenth 11.
        assert_eq!(c.until_below(3, 70.0), Some(Duration::from_millis(800)));
        assert_eq!(c.until_below(3, 101.0), None);
        // Nothing fits a rate of 1 until every bucket has aged out.
        assert_eq!(c.until_below(3, 1.0), Some(Duration::from_millis(1000)));
    }
}
