//! What the dispatch loop shares with the rest of the daemon: live counters and states for the
//! status line, `/metrics` and the heartbeat ([`DispatchStats`]), and the reloadable limits as
//! one `watch` value ([`Shared`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::pause::PauseReason;
use crate::config::LimitsSettings;
use crate::schedule::Schedule;
use crate::store::run_records::RunControls;

/// Live counters, shared with status lines and metrics.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DispatchStats {
    /// Calls answered or failed in transport, by code (`OK` for success; codes outside the
    /// known set as `other`).
    pub calls_by_code: BTreeMap<String, u64>,
    /// Billed (2xx) calls per instance.
    pub billed_by_instance: BTreeMap<String, u64>,
    pub calls: u64,
    pub billed: u64,
    pub retries_scheduled: u64,
    pub rejected: u64,
    pub in_flight: u64,
    /// Calls whose outcome is not committed yet (in flight or answered).
    pub unrecorded: u64,
    /// Places taken in the account's budget. Each became a call.
    pub permits: u64,
    /// Current pacing rate and ceiling of UnRegisterDeviceCredential, calls per second.
    pub rate: f64,
    pub ceiling: f64,
    /// Account-wide (or endpoint-wide) pause, if any.
    pub paused: Option<PauseReason>,
    /// Paused instances and why.
    pub paused_instances: BTreeMap<String, PauseReason>,
    /// Paused runs (`deregd pause --run`) and why.
    pub paused_runs: BTreeMap<String, String>,
    /// `outside maintenance window, next opens Tue 01:00 CST` while `worker.windows` are
    /// closed.
    pub outside_window: Option<String>,
    /// Runs held by their own maintenance windows, and why.
    pub runs_outside_window: BTreeMap<String, String>,
    /// Why outcomes cannot be written now (`outcomes not recorded: <error>`), if they cannot.
    pub recording: Option<String>,
    /// Why jobs cannot be claimed now, if they cannot.
    pub claiming: Option<String>,
    /// Unix ms of the last turn of the dispatch loop (watchdog).
    pub last_progress_ms: i64,
}

impl DispatchStats {
    /// The problems with the database right now, for status lines: empty when there are none.
    pub fn store_problems(&self) -> Vec<&str> {
        [self.recording.as_deref(), self.claiming.as_deref()]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Handles the daemon shares with the loop.
#[derive(Clone)]
pub struct Shared {
    pub stats: Arc<Mutex<DispatchStats>>,
    /// The limits in force; a SIGHUP sends new ones.
    limits: Arc<watch::Sender<LimitsSettings>>,
    /// Notified to probe a paused dispatch at once (SIGHUP).
    probe: Arc<Notify>,
    /// The runs' pauses and abort shares as the heartbeat last read them from the database.
    runs: Arc<watch::Sender<RunControls>>,
    /// The configured maintenance windows; a SIGHUP sends new ones.
    schedule: Arc<watch::Sender<Schedule>>,
}

impl Shared {
    pub fn new(limits: &LimitsSettings) -> Shared {
        Shared {
            stats: Arc::default(),
            limits: Arc::new(watch::channel(limits.clone()).0),
            probe: Arc::default(),
            runs: Arc::new(watch::channel(RunControls::default()).0),
            schedule: Arc::new(watch::channel(Schedule::always()).0),
        }
    }

    /// The runs' controls read from the database: the loop releases the claimed jobs of paused
    /// runs and claims none of them until they are resumed.
    pub(crate) fn set_runs(&self, runs: RunControls) {
        let paused = runs.paused.clone();
        self.runs.send_if_modified(|old| {
            if *old == runs {
                return false;
            }
            *old = runs;
            true
        });
        self.update(|s| s.paused_runs = paused);
    }

    pub(crate) fn runs(&self) -> watch::Receiver<RunControls> {
        self.runs.subscribe()
    }

    /// New limits (SIGHUP): in force as soon as the loop sees them; a paused dispatch probes
    /// at once.
    pub fn reload(&self, limits: LimitsSettings) {
        self.limits.send_replace(limits);
        self.probe.notify_one();
    }

    /// New maintenance windows (SIGHUP): in force at the loop's next turn.
    pub fn reload_schedule(&self, schedule: Schedule) {
        self.schedule.send_replace(schedule);
    }

    pub(crate) fn schedule(&self) -> watch::Receiver<Schedule> {
        self.schedule.subscribe()
    }

    /// Probes a paused dispatch at once, limits unchanged.
    pub fn probe_now(&self) {
        self.probe.notify_one();
    }

    pub(crate) fn limits(&self) -> watch::Receiver<LimitsSettings> {
        self.limits.subscribe()
    }

    pub(crate) fn probe(&self) -> Arc<Notify> {
        self.probe.clone()
    }

    /// Updates the stats under their lock.
    pub(crate) fn update(&self, f: impl FnOnce(&mut DispatchStats)) {
        let mut stats = self.stats.lock().expect("not poisoned");
        f(&mut stats);
    }

    /// A copy of the stats.
    pub fn snapshot(&self) -> DispatchStats {
        self.stats.lock().expect("not poisoned").clone()
    }
}
