//! `deregd schedule --run LABEL --window SPEC [--window SPEC ...]` gives a run its own
//! maintenance windows over `worker.windows`; `--clear` returns it to them. A running
//! dispatcher takes the change within one heartbeat. Without `--window` or `--clear`, it shows
//! the windows the run is under and whether they are open now.

use std::io::Write;

use clap::Args;

use crate::cli::common::{self, check_run};
use crate::cli::UsageError;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::schedule::Schedule;
use crate::store::run_records;

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The run.
    #[arg(long, value_name = "LABEL")]
    pub run: String,
    /// A window of the run's own, like "Mon-Fri 01:00-06:00" (repeatable), read in
    /// `worker.timezone`; they replace the run's earlier ones.
    #[arg(long = "window", value_name = "SPEC", value_parser = super::submit::parse_window,
          conflicts_with = "clear")]
    pub windows: Vec<String>,
    /// Drop the run's own windows: `worker.windows` applies again.
    #[arg(long)]
    pub clear: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: ScheduleArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    let configured = settings.worker.schedule()?;
    let db = common::open_existing(&settings).await?;
    let result = async {
        if args.clear || !args.windows.is_empty() {
            let windows = (!args.clear).then_some(args.windows.as_slice());
            if !run_records::set_windows(&db, &args.run, windows).await? {
                return Err(UsageError(format!("no run {:?}", args.run)).into());
            }
        }
        run_records::get(&db, &args.run)
            .await?
            .ok_or_else(|| anyhow::Error::from(UsageError(format!("no run {:?}", args.run))))
    }
    .await;
    db.close().await;
    let record = result?;
    let (schedule, own) = effective(&configured, record.windows.as_deref());
    let now = now_ms();
    let state = schedule.state(now);
    let mut out = common::stdout();
    let printed = if args.json {
        common::write_json(
            &mut out,
            &serde_json::json!({
                "run": args.run,
                "own_windows": own,
                "windows": schedule.specs(),
                "timezone": schedule.zone(),
                "open": state.open,
                "changes_at_ms": state.until,
            }),
        )
    } else {
        let whose = if own { "its own" } else { "worker.windows" };
        writeln!(
            out,
            "run {:?}: {} ({whose}); {}",
            args.run,
            schedule.describe(),
            window_state_text(&schedule, now)
        )
        .map_err(Into::into)
    };
    common::quiet_on_broken_pipe(printed)
}

/// The schedule a run is under: its own windows (read in the configured zone) or the
/// configured ones; and whether they are its own. Own windows that do not parse (typed by
/// hand) leave the run under the configured ones here; the dispatcher holds such a run.
pub(crate) fn effective(configured: &Schedule, own: Option<&[String]>) -> (Schedule, bool) {
    match own.map(|w| configured.with_specs(w)) {
        Some(Ok(s)) => (s, true),
        _ => (configured.clone(), false),
    }
}

/// `open now, until Wed 06:00 CST`, `outside maintenance window, next opens Tue 01:00 CST`, or
/// `always open`.
pub(crate) fn window_state_text(schedule: &Schedule, now: i64) -> String {
    if schedule.is_always() {
        return "always open".into();
    }
    let state = schedule.state(now);
    match (state.open, state.until) {
        (true, Some(at)) => format!("open now, until {}", schedule.local_text(at)),
        (true, None) => "open now".into(),
        (false, _) => format!(
            "outside maintenance window, {}",
            schedule.next_opening_text(now)
        ),
    }
}
