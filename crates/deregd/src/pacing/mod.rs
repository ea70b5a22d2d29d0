//! Pacing: every call needs a place in every budget that applies to it (its action's
//! account-wide ceiling, its source address's ceiling, its instance's cap) and takes a place in
//! all of them or in none. [`Pacer::acquire`] picks the first candidate whose budgets are all
//! open, so the dispatcher never holds a place it cannot use. Each budget ([`budget`]) is one
//! exact GCRA ([`gcra`]) under a send window ([`window`]) with an adaptive rate ([`adaptive`]).

mod adaptive;
mod budget;
mod gcra;
mod window;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub(crate) use window::SendTicket;

use crate::action::Action;
use budget::{cap_burst, Budget, Grant, Refusal, Shape};
use window::SendMark;

/// A sign that calls come too fast (the pacing's own input type; [`crate::outcome`] maps
/// answers to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// `Throttling*` (any status), 429: over the gateway's rate; cut at once.
    Throttled,
    /// `SystemOverFlow`, `ApplyTokenOverFlow`, `ServiceUnavailable`, 503: the service is
    /// overloaded; cut when these become frequent, not on a stray one.
    Overloaded,
}

/// Time for the pacer: a `Duration` since a fixed origin. The daemon's is monotonic; tests
/// drive a fake one.
pub(crate) trait Clock {
    fn now(&self) -> Duration;
    /// The `Instant` of the origin, for stamping writes.
    fn origin(&self) -> Instant;
}

/// The process's monotonic clock, from when the pacer was made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MonotonicClock(Instant);

impl MonotonicClock {
    pub(crate) fn new() -> MonotonicClock {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn origin(&self) -> Instant {
        self.0
    }
}

/// The ceilings a pacer holds to; a SIGHUP brings new ones.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ceilings {
    /// Account-wide ceiling per action, calls per second.
    pub(crate) actions: BTreeMap<Action, u32>,
    /// Ceiling per source address, calls per second (all actions together).
    pub(crate) source_qps: u32,
    /// How many source addresses calls are spread over (at least one).
    pub(crate) sources: usize,
    /// Caps per instance, calls per second.
    pub(crate) instances: BTreeMap<String, u32>,
    /// Calls of credit for a late wake-up (ceilings).
    pub(crate) burst: u32,
}

impl Ceilings {
    /// The ceilings of `limits`, over `sources` source addresses.
    pub(crate) fn from_limits(limits: &crate::config::LimitsSettings, sources: usize) -> Ceilings {
        Ceilings {
            actions: [
                (Action::UnRegister, limits.qps),
                (Action::List, limits.list_qps),
                (Action::Get, limits.get_qps),
            ]
            .into(),
            source_qps: limits.source_qps,
            sources,
            instances: limits.instance_tps.clone(),
            burst: limits.burst,
        }
    }
}

/// Which budgets a call took a place in: for the answer's feedback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub(crate) action: Action,
    /// Index into the source addresses.
    pub(crate) source: usize,
    /// The pacer's time when the call took its place.
    pub(crate) sent: Duration,
}

/// One call's places: its route and the ticket its request stamps when written.
#[derive(Debug)]
pub(crate) struct Permit {
    pub(crate) route: Route,
    pub(crate) ticket: SendTicket,
}

/// What [`Pacer::acquire`] found.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// Candidate `index` may go now, with these places.
    Go { index: usize, permit: Permit },
    /// None may go: look again after this long.
    Wait(Duration),
}

/// The dispatcher's pacing: a budget per action, per source address and per capped instance.
#[derive(Debug)]
pub(crate) struct Pacer<C: Clock = MonotonicClock> {
    clock: C,
    actions: BTreeMap<Action, Budget>,
    sources: Vec<Budget>,
    /// The source the next call tries first (calls are spread round-robin).
    next_source: usize,
    instances: HashMap<String, Budget>,
    ceilings: Ceilings,
}

impl Pacer<MonotonicClock> {
    pub(crate) fn new(ceilings: &Ceilings) -> Pacer {
        Pacer::with_clock(ceilings, MonotonicClock::new())
    }
}

impl<C: Clock> Pacer<C> {
    pub(crate) fn with_clock(ceilings: &Ceilings, clock: C) -> Pacer<C> {
        let now = clock.now();
        let mut pacer = Pacer {
            clock,
            actions: BTreeMap::new(),
            sources: Vec::new(),
            next_source: 0,
            instances: HashMap::new(),
            ceilings: ceilings.clone(),
        };
        pacer.apply(ceilings, now);
        pacer
    }

    /// Applies new ceilings (SIGHUP): budgets that exist keep their state under the new
    /// ceiling; new keys get fresh budgets; keys no longer configured are dropped.
    pub(crate) fn reload(&mut self, ceilings: &Ceilings) {
        let now = self.clock.now();
        self.apply(ceilings, now);
    }

    fn apply(&mut self, ceilings: &Ceilings, now: Duration) {
        let burst = ceilings.burst;
        let ceiling_budget = |qps: u32| Budget::new(Shape::Ceiling, qps as f64, burst, now);
        self.actions
            .retain(|action, _| ceilings.actions.contains_key(action));
        for (action, qps) in &ceilings.actions {
            let qps = *qps as f64;
            match self.actions.get_mut(action) {
                Some(b) => b.set_ceiling(qps, burst, now),
                None => {
                    self.actions.insert(*action, ceiling_budget(qps as u32));
                }
            }
        }
        let sources = ceilings.sources.max(1);
        self.sources.truncate(sources);
        for b in &mut self.sources {
            b.set_ceiling(ceilings.source_qps as f64, burst, now);
        }
        while self.sources.len() < sources {
            self.sources.push(ceiling_budget(ceilings.source_qps));
        }
        self.next_source %= sources;
        self.instances
            .retain(|id, b| ceilings.instances.get(id).map(|c| *c as f64) == Some(b.ceiling()));
        for (id, cap) in &ceilings.instances {
            let cap = *cap as f64;
            self.instances
                .entry(id.clone())
                .or_insert_with(|| Budget::new(Shape::Cap, cap, cap_burst(cap), now));
        }
        self.ceilings = ceilings.clone();
    }

    /// The first of `instances` (the candidates' instance ids, in order) whose budgets are all
    /// open for one call of `action`, with its places taken; or how long until one may be.
    pub(crate) fn acquire<'a>(
        &mut self,
        action: Action,
        instances: impl IntoIterator<Item = &'a str>,
    ) -> Acquired {
        let now = self.clock.now();
        let Some(account) = self.actions.get_mut(&action) else {
            // No budget for this action: it must never be called.
            return Acquired::Wait(Duration::from_secs(3600));
        };
        let account_grant = match account.check(now) {
            Ok(grant) => grant,
            Err(refusal) => return Acquired::Wait(refusal.sleep()),
        };
        let Some((source, source_grant)) = self.open_source(now) else {
            let wait = self.source_wait(now);
            return Acquired::Wait(wait);
        };
        let mut shortest: Option<Duration> = None;
        let mut looked: Vec<(&str, Result<Grant, Refusal>)> = Vec::new();
        for (index, instance) in instances.into_iter().enumerate() {
            let cap = self.instances.get_mut(instance).map(|budget| {
                match looked.iter().find(|(id, _)| *id == instance) {
                    Some((_, verdict)) => *verdict,
                    None => {
                        let verdict = budget.check(now);
                        looked.push((instance, verdict));
                        verdict
                    }
                }
            });
            match cap {
                Some(Err(refusal)) => {
                    let sleep = refusal.sleep();
                    shortest = Some(shortest.map_or(sleep, |s| s.min(sleep)));
                }
                Some(Ok(cap_grant)) => {
                    let mark = SendMark::default();
                    if let Some(budget) = self.instances.get_mut(instance) {
                        budget.take(now, cap_grant, mark.clone());
                    }
                    return self.go(
                        index,
                        action,
                        account_grant,
                        source,
                        source_grant,
                        mark,
                        now,
                    );
                }
                None => {
                    let mark = SendMark::default();
                    return self.go(
                        index,
                        action,
                        account_grant,
                        source,
                        source_grant,
                        mark,
                        now,
                    );
                }
            }
        }
        Acquired::Wait(
            shortest
                .unwrap_or(Duration::from_millis(10))
                .max(Duration::from_millis(1)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn go(
        &mut self,
        index: usize,
        action: Action,
        account_grant: Grant,
        source: usize,
        source_grant: Grant,
        mark: SendMark,
        now: Duration,
    ) -> Acquired {
        if let Some(account) = self.actions.get_mut(&action) {
            account.take(now, account_grant, mark.clone());
        }
        self.sources[source].take(now, source_grant, mark.clone());
        self.next_source = (source + 1) % self.sources.len();
        Acquired::Go {
            index,
            permit: Permit {
                route: Route {
                    action,
                    source,
                    sent: now,
                },
                ticket: SendTicket::new(self.clock.origin(), mark),
            },
        }
    }

    /// The first source, round-robin from the next one, open for a call at `now`.
    fn open_source(&mut self, now: Duration) -> Option<(usize, Grant)> {
        let n = self.sources.len();
        (0..n)
            .map(|i| (self.next_source + i) % n)
            .find_map(|i| self.sources[i].check(now).ok().map(|grant| (i, grant)))
    }

    /// How long until some source may take a call.
    fn source_wait(&mut self, now: Duration) -> Duration {
        self.sources
            .iter_mut()
            .filter_map(|b| b.check(now).err())
            .map(Refusal::sleep)
            .min()
            .unwrap_or(Duration::from_millis(1))
    }

    /// Waits until one call of `action` on `instance` may go, and takes its places (callers
    /// with a single candidate: the registry's listing and verification).
    pub(crate) async fn until_ready(&mut self, action: Action, instance: &str) -> Permit {
        loop {
            match self.acquire(action, [instance]) {
                Acquired::Go { permit, .. } => return permit,
                Acquired::Wait(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Starts every pace afresh: work arrives after none, and the credit built up meanwhile
    /// is owed to no one.
    pub(crate) fn restart(&mut self) {
        let now = self.clock.now();
        for budget in self.budgets_mut() {
            budget.restart(now);
        }
    }

    /// An answer that was not pushed back on, for a call on `route`.
    pub(crate) fn on_accepted(&mut self, route: &Route) {
        let now = self.clock.now();
        for budget in self.route_budgets(route) {
            budget.on_accepted(now);
        }
    }

    /// A pressure signal for a call on `route`: it cuts the action's and the source's budgets.
    /// Returns the action's new rate when it was cut.
    pub(crate) fn on_pressure(
        &mut self,
        route: &Route,
        pressure: Pressure,
        retry_after: Option<Duration>,
    ) -> Option<f64> {
        let now = self.clock.now();
        let source = self
            .sources
            .get_mut(route.source)
            .and_then(|b| b.on_pressure(pressure, route.sent, retry_after, now));
        let action = self
            .actions
            .get_mut(&route.action)
            .and_then(|b| b.on_pressure(pressure, route.sent, retry_after, now));
        action.or(source.map(|_| self.rate(route.action)))
    }

    fn route_budgets(&mut self, route: &Route) -> impl Iterator<Item = &mut Budget> {
        let action = self.actions.get_mut(&route.action);
        let source = self.sources.get_mut(route.source);
        action.into_iter().chain(source)
    }

    fn budgets_mut(&mut self) -> impl Iterator<Item = &mut Budget> {
        self.actions
            .values_mut()
            .chain(self.sources.iter_mut())
            .chain(self.instances.values_mut())
    }

    /// The rate `action` can go at now, calls per second: its own, or all sources' together if
    /// lower.
    pub(crate) fn rate(&self, action: Action) -> f64 {
        let own = self.actions.get(&action).map_or(0.0, Budget::rate);
        let sources: f64 = self.sources.iter().map(Budget::rate).sum();
        own.min(sources)
    }

    /// `action`'s configured ceiling, calls per second.
    pub(crate) fn ceiling(&self, action: Action) -> f64 {
        self.actions.get(&action).map_or(0.0, Budget::ceiling)
    }

    /// The ceilings in force.
    #[cfg(test)]
    pub(crate) fn ceilings(&self) -> &Ceilings {
        &self.ceilings
    }
}

#[cfg(test)]
mod tests;
