//! `deregd status`: per run, counts by status, the finishing rate over the last minute, ETA,
//! next scheduled retry, top error codes; and whether a dispatcher is running or paused.
//! `--watch` refreshes until the runs have nothing pending or running (or Ctrl-C).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use crate::cli::common::{self, check_run, human_duration};
use crate::cli::schedule::{effective, window_state_text};
use crate::clock::{format_ms, now_ms};
use crate::config::Settings;
use crate::schedule::Schedule;
use crate::store::dispatcher;
use crate::store::groups::{self as run_groups, RunGroup};
use crate::store::run_records::{self, RunRecord, RunState};
use crate::store::runs::{self, CodeCount, RunCounts};
use crate::store::tps_usage;
use crate::store::verifications::{self, Verification};
use crate::store::Store;

/// The window of "recent" progress, milliseconds.
const WINDOW_MS: i64 = 60_000;
/// A heartbeat older than this means no dispatcher is running, milliseconds.
const ALIVE_MS: i64 = 10_000;
/// Error codes shown per run.
const TOP_CODES: i64 = 5;
/// Refresh period of `--watch`.
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this run.
    #[arg(long, value_name = "LABEL")]
    pub run: Option<String>,
    /// Print JSON (with --watch: one JSON object per line per refresh).
    #[arg(long)]
    pub json: bool,
    /// Refresh every 2 s (slower on very large queues) until nothing is pending or running (or
    /// Ctrl-C): a progress bar on a terminal, one line per refresh otherwise.
    #[arg(long)]
    pub watch: bool,
}

/// Everything `status` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// When the snapshot was taken, RFC 3339.
    pub at: String,
    /// The last published dispatcher heartbeat (`null` if none was ever published).
    pub dispatcher: Option<DispatcherState>,
    /// Billed (2xx) calls per second over the last 60 s (or since the first billed second, when
    /// that is more recent), all instances (from tps_usage).
    pub billed_calls_per_sec: f64,
    pub runs: Vec<RunStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DispatcherState {
    /// True when the heartbeat is younger than 10 s, or its process runs on this host (a
    /// daemon that cannot write the database).
    pub running: bool,
    /// Age of the last heartbeat, seconds.
    pub heartbeat_age_secs: f64,
    pub owner: String,
    pub pid: i64,
    pub host: String,
    /// Why dispatch is paused (account- or instance-level), or null.
    pub paused: Option<String>,
    /// Current pacing rate, calls per second.
    pub rate: Option<f64>,
}

impl DispatcherState {
    /// True when the heartbeat's process runs on this host and is alive.
    fn alive_here(&self) -> bool {
        self.host == crate::worker::hostname()
            && std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunStatus {
    pub run: String,
    /// Jobs by status, every status present.
    pub counts: std::collections::BTreeMap<&'static str, i64>,
    pub total: i64,
    /// Pending plus running.
    pub open: i64,
    /// Jobs that reached a final status in the last 60 s.
    pub finished_last_minute: i64,
    /// Jobs finished per second over the last minute (or since the run's first finish, when
    /// that is more recent).
    pub finished_per_sec: f64,
    /// `open / finished_per_sec`, seconds; null when nothing finished in the last minute.
    pub eta_secs: Option<i64>,
    /// Earliest scheduled retry (pending with attempts > 0), RFC 3339.
    pub next_retry_at: Option<String>,
    /// Most frequent last error codes of failed and retrying jobs.
    pub top_codes: Vec<CodeCount>,
    /// The groups the run was taken from (`submit --group`).
    pub groups: Vec<RunGroup>,
    /// The last `deregd verify` of the run.
    pub last_verification: Option<Verification>,
    /// The run's record: created when, by whom and from what; its state and why.
    pub record: Option<RunRecord>,
    /// The maintenance windows it is under and whether they are open now (`outside
    /// maintenance window, next opens Tue 01:00 CST`); null when calls may go at any time.
    pub window: Option<String>,
}

pub async fn run(settings: Settings, args: StatusArgs) -> anyhow::Result<()> {
    if let Some(run) = &args.run {
        check_run(run)?;
    }
    let schedule = settings.worker.schedule()?;
    let db = common::open_existing(&settings).await?;
    let result = if args.watch {
        watch(&db, &schedule, &args).await
    } else {
        match snapshot(&db, &schedule, args.run.as_deref()).await {
            Ok(snap) => print(&snap, args.json),
            Err(e) => Err(e),
        }
    };
    db.close().await;
    common::quiet_on_broken_pipe(result)
}

/// Takes one snapshot; an unknown `--run` is a usage error.
pub async fn snapshot(
    db: &Store,
    schedule: &Schedule,
    run: Option<&str>,
) -> anyhow::Result<Snapshot> {
    let counts = common::run_counts(db, run).await?;
    let now = now_ms();
    let mut statuses = Vec::with_capacity(counts.len());
    for c in counts {
        statuses.push(run_status(db, schedule, c).await?);
    }
    // Newest first; a run no dispatcher has seen yet (inserted by SQL) counts as newest.
    statuses
        .sort_by_key(|r| std::cmp::Reverse(r.record.as_ref().map_or(i64::MAX, |r| r.created_at)));
    let mut dispatcher = dispatcher::last(db).await?.map(|beat| DispatcherState {
        running: now - beat.heartbeat < ALIVE_MS,
        heartbeat_age_secs: (now - beat.heartbeat) as f64 / 1000.0,
        owner: beat.owner,
        pid: beat.pid,
        host: beat.host,
        paused: beat.paused,
        rate: beat.rate,
    });
    if let Some(d) = dispatcher.as_mut().filter(|d| !d.running && d.alive_here()) {
        // The process lives but cannot write its heartbeat: the database is the problem.
        d.running = true;
        let why = if db.write_lock_held().await {
            "another process holds the database's write lock"
        } else {
            "the database cannot be written (see the daemon's log)"
        };
        d.paused = Some(format!(
            "outcomes not recorded: {why}; heartbeat {} old",
            human_duration(d.heartbeat_age_secs as i64)
        ));
    }
    let billed = tps_usage::recent_rate(&db.reader, now / 1000, WINDOW_MS / 1000).await?;
    Ok(Snapshot {
        at: format_ms(now),
        dispatcher,
        billed_calls_per_sec: billed,
        runs: statuses,
    })
}

async fn run_status(
    db: &Store,
    schedule: &Schedule,
    counts: RunCounts,
) -> anyhow::Result<RunStatus> {
    let progress = runs::progress(db, &counts.run, WINDOW_MS).await?;
    let top_codes = runs::top_codes(db, &counts.run, TOP_CODES).await?;
    let groups = run_groups::of_run(db, &counts.run).await?;
    let last_verification = verifications::last(db, &counts.run).await?;
    let record = run_records::get(db, &counts.run).await?;
    // Over the last minute, or since the run's first finish when that is more recent.
    let window_ms = progress
        .first_finished_in_window
        .map_or(WINDOW_MS, |first| (now_ms() - first).clamp(1000, WINDOW_MS));
    let per_sec = progress.finished_in_window as f64 * 1000.0 / window_ms as f64;
    let open = counts.open();
    let eta_secs = match (open, per_sec > 0.0) {
        (0, _) => Some(0),
        (_, true) => Some((open as f64 / per_sec).ceil() as i64),
        (_, false) => None,
    };
    let (under, _) = effective(schedule, record.as_ref().and_then(|r| r.windows.as_deref()));
    let window = (!under.is_always() && open > 0).then(|| {
        format!(
            "{}: {}",
            under.describe(),
            window_state_text(&under, now_ms())
        )
    });
    Ok(RunStatus {
        window,
        total: counts.total(),
        open,
        finished_last_minute: progress.finished_in_window,
        finished_per_sec: per_sec,
        eta_secs,
        next_retry_at: progress.next_retry_at.map(format_ms),
        top_codes,
        groups,
        last_verification,
        record,
        run: counts.run,
        counts: counts.counts,
    })
}

fn print(snap: &Snapshot, json: bool) -> anyhow::Result<()> {
    let mut out = common::stdout();
    if json {
        return common::write_json(&mut out, snap);
    }
    writeln!(out, "{}", dispatcher_line(snap))?;
    if snap.runs.is_empty() {
        writeln!(out, "no jobs")?;
    }
    for run in &snap.runs {
        writeln!(out)?;
        writeln!(
            out,
            "run {}: {} jobs, {} open",
            label(&run.run),
            run.total,
            run.open
        )?;
        if let Some(r) = &run.record {
            let state = match (&r.state, &r.state_reason) {
                (RunState::Paused, Some(why)) => format!("PAUSED: {why}"),
                (state, _) => state.as_str().to_string(),
            };
            writeln!(
                out,
                "  run:        {state} since {}; created {}{} from {}",
                format_ms(r.state_changed_at),
                format_ms(r.created_at),
                r.created_by
                    .as_deref()
                    .map(|by| format!(" by {by}"))
                    .unwrap_or_default(),
                r.source
            )?;
        }
        let counts: Vec<String> = run
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(out, "  status:     {}", counts.join(", "))?;
        if let Some(window) = &run.window {
            writeln!(out, "  windows:    {window}")?;
        }
        writeln!(
            out,
            "  rate:       {} finished in the last 60 s ({:.2}/s); ETA {}",
            run.finished_last_minute,
            run.finished_per_sec,
            eta(run)
        )?;
        if let Some(at) = &run.next_retry_at {
            writeln!(out, "  next retry: {at}")?;
        }
        for g in &run.groups {
            writeln!(
                out,
                "  group:      {} on {} ({} listed at {})",
                g.group_id,
                g.instance_id,
                g.listed,
                format_ms(g.listed_at)
            )?;
        }
        if let Some(v) = &run.last_verification {
            writeln!(out, "  verified:   {}", v.describe())?;
        }
        for code in &run.top_codes {
            writeln!(
                out,
                "  code {:<28} failed {:>8}  retrying {:>8}",
                code.code, code.failed, code.retrying
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn dispatcher_line(snap: &Snapshot) -> String {
    let billed = format!(
        "billed {:.1} calls/s over the last 60 s (or since billing began)",
        snap.billed_calls_per_sec
    );
    match &snap.dispatcher {
        None => format!("dispatcher: none has run on this database; {billed}"),
        Some(d) if !d.running => format!(
            "dispatcher: NOT RUNNING (last heartbeat {} ago, pid {} on {}); {billed}",
            human_duration(d.heartbeat_age_secs as i64),
            d.pid,
            d.host
        ),
        Some(d) => format!(
            "dispatcher: running (pid {} on {}, pacing {:.0}/s){}; {billed}",
            d.pid,
            d.host,
            d.rate.unwrap_or(0.0),
            d.paused
                .as_deref()
                .map(|p| format!(", PAUSED: {p}"))
                .unwrap_or_default()
        ),
    }
}

fn label(run: &str) -> String {
    if run.is_empty() {
        "\"\" (unlabelled)".into()
    } else {
        format!("{run:?}")
    }
}

fn eta(run: &RunStatus) -> String {
    if run
        .record
        .as_ref()
        .is_some_and(|r| r.state == RunState::Paused)
        && run.open > 0
    {
        return "none while paused".into();
    }
    match run.eta_secs {
        Some(0) if run.open == 0 => "done".into(),
        Some(secs) => human_duration(secs),
        None => "unknown (nothing finished in the last minute)".into(),
    }
}

/// One line summarising all runs of a snapshot, for piped `--watch` and the progress bar.
fn summary(snap: &Snapshot) -> (i64, i64, String) {
    let total: i64 = snap.runs.iter().map(|r| r.total).sum();
    let open: i64 = snap.runs.iter().map(|r| r.open).sum();
    let sum = |status: &str| -> i64 {
        snap.runs
            .iter()
            .map(|r| r.counts.get(status).copied().unwrap_or(0))
            .sum()
    };
    let per_sec: f64 = snap.runs.iter().map(|r| r.finished_per_sec).sum();
    let eta = match (open, per_sec > 0.0) {
        (0, _) => "done".to_string(),
        (_, true) => human_duration((open as f64 / per_sec).ceil() as i64),
        _ => "unknown".to_string(),
    };
    let paused = snap
        .dispatcher
        .as_ref()
        .and_then(|d| d.paused.as_deref().filter(|_| d.running))
        .map(|p| format!(" PAUSED: {p}"))
        .unwrap_or_default();
    let idle = match &snap.dispatcher {
        Some(d) if d.running => "",
        _ => " (no dispatcher running)",
    };
    let text = format!(
        "done {}/{total} pending {} running {} succeeded {} not_found {} failed {} rejected {} cancelled {} | {per_sec:.2}/s ETA {eta}{paused}{idle}",
        total - open,
        sum("pending"),
        sum("running"),
        sum("succeeded"),
        sum("not_found"),
        sum("failed"),
        sum("rejected"),
        sum("cancelled"),
    );
    (total, open, text)
}

async fn watch(db: &Store, schedule: &Schedule, args: &StatusArgs) -> anyhow::Result<()> {
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{wide_bar} {pos}/{len}\n{msg}")
                .expect("valid template"),
        );
        bar
    });
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let started = std::time::Instant::now();
        let snap = snapshot(db, schedule, args.run.as_deref()).await?;
        // On millions of rows a snapshot costs a few hundred ms of CPU: refresh no more often
        // than every 4x that, so watching never takes more than a fifth of a core.
        let pause = REFRESH.max(started.elapsed() * 4);
        let (total, open, text) = summary(&snap);
        match &bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position((total - open) as u64);
                bar.set_message(text);
            }
            None => {
                let mut out = common::stdout();
                if args.json {
                    serde_json::to_writer(&mut out, &snap)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{} {text}", snap.at)?;
                }
                out.flush()?;
            }
        }
        if open == 0 {
            if let Some(bar) = &bar {
                bar.finish();
            }
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut ctrl_c => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Ok(());
            }
        }
    }
}
