//! The runs' side of dispatch: which runs are paused (as the heartbeat last read them from the
//! database, plus those the abort rule paused until the database holds their pause), the runs'
//! own abort shares, and the abort rule's windows. The loop returns a paused run's claimed
//! jobs and calls none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::abort::Aborts;
use super::stats::Shared;
use crate::config::LimitsSettings;
use crate::job::Status;
use crate::store::run_records::{self, RunControls};
use crate::store::Store;

pub(crate) struct RunGate {
    rx: watch::Receiver<RunControls>,
    paused: BTreeSet<String>,
    abort_share: BTreeMap<String, f64>,
    /// The runs' own maintenance windows.
    windows: BTreeMap<String, Result<Vec<String>, String>>,
    aborts: Aborts,
    /// Runs the abort rule paused whose pause the database may not hold yet.
    tripped: BTreeSet<String>,
    /// The writes of those pauses.
    writes: Vec<JoinHandle<()>>,
}

impl RunGate {
    pub(crate) fn new(shared: &Shared) -> RunGate {
        let mut rx = shared.runs();
        // What the runs were at start is taken at the first step.
        rx.mark_changed();
        RunGate {
            rx,
            paused: BTreeSet::new(),
            abort_share: BTreeMap::new(),
            windows: BTreeMap::new(),
            aborts: Aborts::default(),
            tripped: BTreeSet::new(),
            writes: Vec::new(),
        }
    }

    /// Resolves when the heartbeat has new controls (never, once it is gone).
    pub(crate) async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        // `changed` marks the value seen; `refresh` is what takes it.
        self.rx.mark_changed();
    }

    /// Takes the controls the heartbeat read, if new. True when it took them.
    pub(crate) fn refresh(&mut self) -> bool {
        if !self.rx.has_changed().unwrap_or(false) {
            return false;
        }
        let controls = self.rx.borrow_and_update().clone();
        self.tripped
            .retain(|run| !controls.paused.contains_key(run));
        for run in controls.paused.keys() {
            if !self.paused.contains(run) {
                // Paused (by hand or by the rule): a resume starts a fresh window.
                self.aborts.reset(run);
            }
        }
        self.paused = controls.paused.into_keys().collect();
        self.paused.extend(self.tripped.iter().cloned());
        self.abort_share = controls.abort_share;
        self.windows = controls.windows;
        true
    }

    /// The runs' own maintenance windows.
    pub(crate) fn windows(&self) -> &BTreeMap<String, Result<Vec<String>, String>> {
        &self.windows
    }

    /// The runs whose jobs are not to be called.
    pub(crate) fn paused(&self) -> &BTreeSet<String> {
        &self.paused
    }

    /// Counts a job's final answer for the abort rule. When the rule trips, the run is paused
    /// here at once and in the database in the background, and the reason is returned.
    pub(crate) fn answer(
        &mut self,
        store: &Store,
        run: &str,
        status: Status,
        code: Option<&str>,
        limits: &LimitsSettings,
    ) -> Option<String> {
        let share = self
            .abort_share
            .get(run)
            .copied()
            .unwrap_or(limits.abort_failure_share);
        let reason = self
            .aborts
            .record(run, status, code, share, limits.abort_min_answers)?;
        tracing::warn!(run = %run, "pausing the run: {reason}; `deregd resume --run` when the cause is fixed");
        self.tripped.insert(run.to_string());
        self.paused.insert(run.to_string());
        let (store, run, why) = (store.clone(), run.to_string(), reason.clone());
        self.writes.retain(|w| !w.is_finished());
        self.writes.push(tokio::spawn(async move {
            let mut warned = false;
            // Retried for as long as it takes: until it lands, this process holds the run
            // paused itself, and its claims return the run's jobs at once.
            while let Err(e) = run_records::pause(&store, &run, &why).await {
                if !warned {
                    tracing::warn!(run = %run, error = %e, "could not record the run's pause yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
        Some(reason)
    }

    /// Waits, until `deadline`, for the abort rule's pauses to reach the database: without
    /// them the next start would go on calling.
    pub(crate) async fn drain(&mut self, deadline: Instant) {
        for write in std::mem::take(&mut self.writes) {
            if tokio::time::timeout_at(deadline, write).await.is_err() {
                tracing::warn!("a run paused by the abort rule could not be recorded before the stop deadline; pause it with `deregd pause --run`");
            }
        }
    }
}
