//! The dispatcher's heartbeat, beside the loop: every few seconds it publishes the live state
//! in the `dispatcher` row for `deregd status`, reads which runs are paused (the loop releases
//! their jobs), rescues jobs left `running` by others (a process that died, a row set by hand)
//! and marks done the runs with no open job, checks that the database file is still the one opened, and
//! warns when the wall clock steps. A failing write is reported, never fatal; a replaced or
//! deleted database file is.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::stats::Shared;
use crate::clock::{now_ms, wall_step_ms};
use crate::store::dispatcher::{self, Heartbeat};
use crate::store::{jobs, run_records, Store};

/// How often the heartbeat runs.
const EVERY: Duration = Duration::from_secs(2);
/// Rescues run every this many heartbeats.
const RESCUE_EVERY: u32 = 5;
/// A wall-clock step larger than this is worth a warning, milliseconds.
const STEP_WARN_MS: i64 = 2000;
/// A failing heartbeat write is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Starts the heartbeat for `owner`, until the task is aborted. A reason sent on `fatal` stops
/// dispatch.
pub(crate) fn spawn(
    store: Store,
    owner: String,
    shared: Shared,
    fatal: watch::Sender<Option<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut beats = 0u32;
        let mut last_step = wall_step_ms();
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            if let Some(why) = store.file_changed() {
                tracing::error!(database = %store.path().display(), "{why}; stopping dispatch");
                let _ = fatal.send(Some(why));
                return;
            }
            let step = wall_step_ms();
            if (step - last_step).abs() > STEP_WARN_MS {
                tracing::warn!(clock.step_ms = step - last_step,
                    "the wall clock stepped; deregd keeps its own clock from start-up, so billed seconds and scheduled retries are not moved");
                last_step = step;
            }
            let mut failed = match run_records::controls(&store).await {
                Ok(runs) => {
                    shared.set_runs(runs);
                    None
                }
                Err(e) => Some(e),
            };
            let beat = heartbeat(&shared, &owner);
            failed = dispatcher::publish(&store, &beat).await.err().or(failed);
            if beats.is_multiple_of(RESCUE_EVERY) {
                match jobs::rescue_expired(&store, &owner).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        jobs.rescued = n,
                        "returned jobs left running by another process (or by hand) to pending"
                    ),
                    Err(e) => failed = Some(e),
                }
                if let Err(e) = run_records::mark_done(&store).await {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(tokio::time::Instant::now());
                    tracing::warn!(error = %e, "could not write the dispatcher heartbeat");
                }
            }
            beats = beats.wrapping_add(1);
            tokio::time::sleep(EVERY).await;
        }
    })
}

/// The live state as the `dispatcher` row holds it.
fn heartbeat(shared: &Shared, owner: &str) -> Heartbeat {
    let stats = shared.snapshot();
    let mut problems: Vec<String> = Vec::new();
    if let Some(p) = &stats.paused {
        problems.push(p.to_string());
    }
    problems.extend(
        stats
            .paused_instances
            .iter()
            .map(|(i, r)| format!("instance {i}: {r}")),
    );
    problems.extend(
        stats
            .paused_runs
            .iter()
            .map(|(run, why)| format!("run {run:?} paused: {why}")),
    );
    problems.extend(stats.outside_window.clone());
    problems.extend(
        stats
            .runs_outside_window
            .iter()
            .map(|(run, why)| format!("run {run:?} {why}")),
    );
    problems.extend(stats.store_problems().into_iter().map(str::to_string));
    Heartbeat {
        owner: owner.to_string(),
        pid: std::process::id() as i64,
        host: hostname(),
        heartbeat: now_ms(),
        paused: (!problems.is_empty()).then(|| problems.join("; ")),
        rate: Some(stats.rate),
    }
}

/// This host's name, for the lease owner and the heartbeat.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
