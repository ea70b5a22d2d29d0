//! `deregd pause --run LABEL [--reason TEXT]` and `deregd resume --run LABEL`: a paused run's
//! jobs are not claimed, and those a running dispatcher holds go back to pending within one
//! heartbeat (calls in flight finish); other runs go on.

use std::io::Write;

use clap::Args;

use crate::cli::common::{self, check_run};
use crate::cli::UsageError;
use crate::config::Settings;
use crate::store::run_records::{self, Changed, RunState};

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The run to pause.
    #[arg(long, value_name = "LABEL")]
    pub run: String,
    /// Why, shown by status, report, /metrics and the service's STATUS line.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The run to resume.
    #[arg(long, value_name = "LABEL")]
    pub run: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Longest reason kept, in characters.
const MAX_REASON: usize = 500;

pub async fn pause(settings: Settings, args: PauseArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    let reason = match args.reason.as_deref().map(str::trim) {
        Some("") | None => format!("paused by {}", run_records::operator()),
        Some(r) if r.chars().count() > MAX_REASON => {
            return Err(
                UsageError(format!("--reason is longer than {MAX_REASON} characters")).into(),
            )
        }
        Some(r) => r.to_string(),
    };
    let db = common::open_existing(&settings).await?;
    let changed = run_records::pause(&db, &args.run, &reason).await;
    db.close().await;
    report(&args.run, changed?, "paused", args.json, Some(&reason))
}

pub async fn resume(settings: Settings, args: ResumeArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    let db = common::open_existing(&settings).await?;
    let changed = run_records::resume(&db, &args.run).await;
    db.close().await;
    report(&args.run, changed?, "resumed", args.json, None)
}

fn report(
    run: &str,
    changed: Changed,
    done: &str,
    json: bool,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let state = match changed {
        Changed::NoSuchRun => return Err(UsageError(format!("no run {run:?}")).into()),
        Changed::Unchanged(RunState::Paused) if done == "paused" => {
            format!("run {run:?} is already paused")
        }
        Changed::Unchanged(RunState::Active) if done == "resumed" => {
            format!("run {run:?} is already active")
        }
        Changed::Unchanged(state) => {
            return Err(UsageError(format!(
                "run {run:?} is {}, so it cannot be {done}",
                state.as_str()
            ))
            .into())
        }
        Changed::Done => match reason {
            Some(why) => format!("run {run:?} {done}: {why}"),
            None => format!("run {run:?} {done}"),
        },
    };
    let mut out = common::stdout();
    let printed = if json {
        common::write_json(
            &mut out,
            &serde_json::json!({ "run": run, "result": state, "reason": reason }),
        )
    } else {
        writeln!(out, "{state}")
            .and_then(|_| out.flush())
            .map_err(Into::into)
    };
    common::quiet_on_broken_pipe(printed)
}
