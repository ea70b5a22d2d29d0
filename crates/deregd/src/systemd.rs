//! Life under systemd (`Type=notify`): `READY=1` once configured, migrated and locked;
//! `STATUS=` every few seconds with a human line; `WATCHDOG=1` only while the dispatch loop
//! itself keeps turning (a stuck loop stops the pings and systemd restarts the service);
//! `STOPPING=1` on shutdown. Without `$NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::store::Store;
use crate::worker::Shared;

/// How often the status line is refreshed.
pub(crate) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sends off the async runtime's threads: the crate's send blocks while the manager's queue
/// is full, and a stalled manager must not stall the dispatch loop.
fn notify(state: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let message: Vec<String> = state.iter().map(|s| s.to_string()).collect();
    let send = move || {
        let states: Vec<NotifyState<'_>> = message.iter().map(|m| NotifyState::Custom(m)).collect();
        if let Err(e) = sd_notify::notify(false, &states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(send)),
        Err(_) => send(),
    }
}

pub(crate) fn ready() {
    notify(&[NotifyState::Ready]);
}

pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}

pub(crate) fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub(crate) fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
}

/// The watchdog period systemd asked for, if any. As libsystemd's `sd_watchdog_enabled`:
/// `WATCHDOG_USEC` set, and `WATCHDOG_PID`, when set, naming this process.
pub(crate) fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog while the loop progresses, and refreshes the status line (also logged
/// at info level every minute, so journald shows progress without the status line).
pub(crate) async fn supervise(db: Store, shared: Shared, shutdown: CancellationToken) {
    let watchdog = watchdog_period();
    let tick = watchdog
        .map(|w| (w / 3).min(STATUS_EVERY))
        .unwrap_or(STATUS_EVERY)
        .max(Duration::from_millis(100));
    let mut last_status = tokio::time::Instant::now() - STATUS_EVERY;
    let mut last_log = tokio::time::Instant::now();
    let mut last_calls = 0u64;
    let mut last_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => return,
        }
        let (progress_ms, calls) = {
            let s = shared.stats.lock().expect("not poisoned");
            (s.last_progress_ms, s.calls)
        };
        if let Some(period) = watchdog {
            if now_ms() - progress_ms < period.as_millis() as i64 / 2 {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::warn!(loop.stalled_ms = now_ms() - progress_ms, "dispatch loop is not turning; withholding the watchdog ping");
            }
        }
        if last_status.elapsed() >= STATUS_EVERY {
            let elapsed = last_at.elapsed().as_secs_f64().max(0.001);
            let rate = calls.saturating_sub(last_calls) as f64 / elapsed;
            last_calls = calls;
            last_at = tokio::time::Instant::now();
            last_status = tokio::time::Instant::now();
            let line = status_line(&db, &shared, rate).await;
            status(&line);
            if last_log.elapsed() >= Duration::from_secs(60) {
                last_log = tokio::time::Instant::now();
                tracing::info!(status = %line, "progress");
            }
        }
    }
}

/// `"84 calls/s, 12040 pending; run 'fleet-a' 5210/17250"` or `"paused: <reason>"`.
pub(crate) async fn status_line(db: &Store, shared: &Shared, calls_per_second: f64) -> String {
    let stats = shared.snapshot();
    let (paused, paused_instances, ceiling) = (
        stats.paused.clone(),
        stats.paused_instances.len(),
        stats.ceiling,
    );
    let problems = stats.store_problems().join("; ");
    if !problems.is_empty() {
        // The queue cannot be read reliably either; say what is wrong and nothing else.
        return match paused {
            Some(p) => format!("{problems}; paused: {p}"),
            None => problems,
        };
    }
    if let Some(p) = paused {
        return format!("paused: {p}");
    }
    let mut line = match &stats.outside_window {
        Some(outside) => format!("{outside}; {calls_per_second:.0} calls/s"),
        None => format!("{calls_per_second:.0} calls/s (ceiling {ceiling:.0})"),
    };
    match crate::store::jobs::summary(db).await {
        Ok(summary) => {
            line.push_str(&format!(", {} pending", summary.pending));
            if let Some((run, done, total)) = summary.active_run {
                line.push_str(&format!("; run '{run}' {done}/{total}"));
            }
        }
        Err(e) => line.push_str(&format!(", queue not readable: {e}")),
    }
    if paused_instances > 0 {
        line.push_str(&format!("; {paused_instances} instance(s) paused"));
    }
    for (run, why) in &stats.paused_runs {
        line.push_str(&format!("; run '{run}' paused: {why}"));
    }
    for (run, why) in &stats.runs_outside_window {
        line.push_str(&format!("; run '{run}' {why}"));
    }
    line
}
