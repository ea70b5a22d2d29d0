//! The maintenance windows' side of dispatch: which runs may be called now. The configured
//! windows (`worker.windows`, reloaded by SIGHUP) hold every run without its own; a run with
//! its own windows (`deregd schedule`) is held by those alone. Outside a run's windows its
//! claimed jobs go back and no call of it starts; calls in flight finish.
//!
//! [`WindowGate::evaluate`] is given the time, so tests move the clock; the loop gives it
//! `clock::now_ms()` at each turn and wakes at [`WindowGate::next_change`] at the latest, so a
//! window that closes mid-second stops new calls at once, and one that opens resumes them.

use std::collections::{BTreeMap, BTreeSet};

use crate::schedule::Schedule;

/// What the claims may take while some windows are closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunFilter {
    /// Runs not to claim.
    pub held: Vec<String>,
    /// When set, only these runs may be claimed (the configured windows are closed).
    pub only: Option<Vec<String>>,
}

#[derive(Debug)]
pub(crate) struct WindowGate {
    configured: Schedule,
    /// Runs with their own windows; `Err`: windows that do not parse, which hold the run.
    own: BTreeMap<String, Result<Schedule, String>>,
    /// As evaluated last.
    configured_open: bool,
    open_runs: BTreeSet<String>,
    held_runs: BTreeMap<String, String>,
    next_change: Option<i64>,
    /// Whether anything changed since the last evaluation.
    dirty: bool,
}

impl WindowGate {
    pub(crate) fn new(configured: Schedule) -> WindowGate {
        WindowGate {
            configured,
            own: BTreeMap::new(),
            configured_open: true,
            open_runs: BTreeSet::new(),
            held_runs: BTreeMap::new(),
            next_change: None,
            dirty: true,
        }
    }

    /// New configured windows (SIGHUP); the runs' own ones are read in its zone.
    pub(crate) fn set_configured(&mut self, configured: Schedule) {
        let specs: BTreeMap<String, Result<Vec<String>, String>> = self
            .own
            .iter()
            .map(|(run, s)| {
                (
                    run.clone(),
                    s.as_ref().map(|s| s.specs().to_vec()).map_err(Clone::clone),
                )
            })
            .collect();
        self.configured = configured;
        self.set_runs(&specs);
        self.dirty = true;
    }

    /// The runs' own windows, as the heartbeat read them.
    pub(crate) fn set_runs(&mut self, windows: &BTreeMap<String, Result<Vec<String>, String>>) {
        let own = windows
            .iter()
            .map(|(run, specs)| {
                let schedule = specs.clone().and_then(|specs| {
                    self.configured
                        .with_specs(&specs)
                        .map_err(|e| format!("its windows do not parse: {e}"))
                });
                (run.clone(), schedule)
            })
            .collect::<BTreeMap<_, _>>();
        if own.keys().ne(self.own.keys())
            || own.iter().zip(self.own.values()).any(|((_, a), b)| a != b)
        {
            self.own = own;
            self.dirty = true;
        }
    }

    /// Evaluates the windows at `now` (unix ms) if something changed or a window opened or
    /// closed since. True when which runs are held may have changed.
    pub(crate) fn evaluate(&mut self, now: i64) -> bool {
        if !self.dirty && self.next_change.is_none_or(|at| now < at) {
            return false;
        }
        self.dirty = false;
        let configured = self.configured.state(now);
        self.configured_open = configured.open;
        let mut next = configured.until;
        self.open_runs.clear();
        self.held_runs.clear();
        for (run, schedule) in &self.own {
            match schedule {
                Ok(s) => {
                    let state = s.state(now);
                    next = match (next, state.until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    if state.open {
                        self.open_runs.insert(run.clone());
                    } else {
                        self.held_runs.insert(
                            run.clone(),
                            format!(
                                "outside its maintenance window, {}",
                                s.next_opening_text(now)
                            ),
                        );
                    }
                }
                Err(why) => {
                    self.held_runs.insert(run.clone(), why.clone());
                }
            }
        }
        self.next_change = next;
        true
    }

    /// Whether `run`'s jobs are not to be called now.
    pub(crate) fn holds(&self, run: &str) -> bool {
        if self.own.contains_key(run) {
            !self.open_runs.contains(run)
        } else {
            !self.configured_open
        }
    }

    /// Whether some run is held now.
    pub(crate) fn holds_any(&self) -> bool {
        !self.configured_open || !self.held_runs.is_empty()
    }

    /// Whether any run may be called now.
    pub(crate) fn any_open(&self) -> bool {
        self.configured_open || !self.open_runs.is_empty()
    }

    /// What the claims may take.
    pub(crate) fn filter(&self) -> RunFilter {
        RunFilter {
            held: self.held_runs.keys().cloned().collect(),
            only: (!self.configured_open).then(|| self.open_runs.iter().cloned().collect()),
        }
    }

    /// When the windows open or close next (unix ms).
    pub(crate) fn next_change(&self) -> Option<i64> {
        self.next_change
    }

    /// `outside maintenance window, next opens Tue 01:00 CST` while the configured windows are
    /// closed at `now`.
    pub(crate) fn outside(&self, now: i64) -> Option<String> {
        (!self.configured_open).then(|| {
            format!(
                "outside maintenance window, {}",
                self.configured.next_opening_text(now)
            )
        })
    }

    /// The runs held by their own windows, and why.
    pub(crate) fn held_runs(&self) -> &BTreeMap<String, String> {
        &self.held_runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02 00:00 UTC, a Wednesday.
    const WED: i64 = 1_796_169_600_000;
    const MIN: i64 = 60_000;

    fn schedule(specs: &[&str]) -> Schedule {
        Schedule::parse(
            &specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "UTC",
        )
        .unwrap()
    }

    #[test]
    fn a_moving_clock_opens_and_closes_the_configured_windows() {
        let mut gate = WindowGate::new(schedule(&["Wed 00:10-00:20"]));
        assert!(gate.evaluate(WED));
        assert!(!gate.any_open() && gate.holds("a"));
        assert_eq!(gate.next_change(), Some(WED + 10 * MIN));
        assert_eq!(
            gate.outside(WED).as_deref(),
            Some("outside maintenance window, next opens Wed 00:10 UTC")
        );
        assert_eq!(gate.filter().only, Some(vec![]));
        assert!(
            !gate.evaluate(WED + 10 * MIN - 1),
            "nothing changes before the opening"
        );
        // The opening itself, to the millisecond: calls may go.
        assert!(gate.evaluate(WED + 10 * MIN));
        assert!(gate.any_open() && !gate.holds("a"));
        assert_eq!(gate.filter(), RunFilter::default());
        // Closing mid-second: held from that millisecond on.
        assert!(gate.evaluate(WED + 20 * MIN));
        assert!(gate.holds("a"));
        assert_eq!(gate.next_change(), Some(WED + 7 * 1440 * MIN + 10 * MIN));
    }

    #[test]
    fn a_run_with_its_own_windows_is_held_by_them_alone() {
        let mut gate = WindowGate::new(schedule(&["Wed 00:10-00:20"]));
        let own: BTreeMap<String, Result<Vec<String>, String>> = [
            ("night".to_string(), Ok(vec!["00:00-00:05".to_string()])),
            ("typed".to_string(), Ok(vec!["whenever".to_string()])),
        ]
        .into();
        gate.set_runs(&own);
        gate.evaluate(WED + MIN);
        assert!(!gate.holds("night"), "its own window is open");
        assert!(gate.holds("other"), "the configured one is closed");
        assert!(
            gate.holds("typed"),
            "windows that do not parse hold the run"
        );
        assert!(gate.held_runs()["typed"].contains("do not parse"));
        assert_eq!(
            gate.filter(),
            RunFilter {
                held: vec!["typed".into()],
                only: Some(vec!["night".into()]),
            }
        );
        assert_eq!(
            gate.next_change(),
            Some(WED + 5 * MIN),
            "the soonest change"
        );
        gate.evaluate(WED + 12 * MIN);
        assert!(gate.holds("night") && !gate.holds("other"));
        assert!(gate.held_runs()["night"].contains("next opens Thu 00:00 UTC"));
        // SIGHUP: always open; the run keeps its own.
        gate.set_configured(Schedule::always());
        gate.evaluate(WED + 12 * MIN);
        assert!(!gate.holds("other") && gate.holds("night"));
        assert_eq!(gate.outside(WED), None);
    }
}
