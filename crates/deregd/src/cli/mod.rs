//! The command line: one module per subcommand. Exit status: 0 success, 1 runtime failure,
//! 2 usage or configuration error (see [`exit_code`]).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, Settings};

pub mod cancel;
pub mod check;
pub mod common;
pub mod demo;
pub mod emulator;
pub mod jobs;
pub mod migrate;
pub mod pause;
pub mod plan;
pub mod report;
pub mod requeue;
pub mod run;
pub mod schedule;
pub mod status;
pub mod submit;
pub(crate) mod submit_group;
pub mod verify;

/// Bulk deregistration of ApsaraMQ for MQTT device credentials.
#[derive(Debug, Parser)]
#[command(name = "deregd", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML); also $DEREGD_CONFIG.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format: text or json (overrides log.format).
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dispatch pending jobs: paced, signed calls; outcomes recorded (the service).
    Run(run::RunArgs),
    /// Create or upgrade the database, then exit.
    Migrate,
    /// Validate the configuration, database and credentials; print the effective settings.
    Check(check::CheckArgs),
    /// Rehearse a whole run against a built-in emulator, then cross-check the counts.
    Demo(demo::DemoArgs),
    /// Serve a local emulator of the onsmqtt API (for rehearsals and tests).
    Emulator(emulator::EmulatorArgs),
    /// Queue ClientIds (one per line, or CSV `instance_id,client_id`) as jobs.
    Submit(submit::SubmitArgs),
    /// Progress per run: counts, rate, ETA, retries, error codes, dispatcher state.
    Status(status::StatusArgs),
    /// Billed calls per instance per time bucket, peak TPS, outcomes per run.
    Report(report::ReportArgs),
    /// Export jobs (the audit trail) as a table, CSV or JSON Lines.
    Jobs(jobs::JobsArgs),
    /// Check a run against the vendor's registry: its groups listed again, or a sample asked for.
    Verify(verify::VerifyArgs),
    /// Cancel the pending jobs of a run.
    Cancel(cancel::CancelArgs),
    /// What the open runs will take under the budgets (ETA and its bound, TPS added per
    /// instance, warnings); no API call.
    Plan(plan::PlanArgs),
    /// Pause a run: its jobs are not dispatched (calls in flight finish); other runs go on.
    Pause(pause::PauseArgs),
    /// Resume a paused run.
    Resume(pause::ResumeArgs),
    /// Give a run its own maintenance windows (or show the ones it is under).
    Schedule(schedule::ScheduleArgs),
    /// Return failed (or cancelled) jobs of a run to pending.
    Requeue(requeue::RequeueArgs),
}

/// A usage error found after parsing (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit status for an error: 2 for usage and configuration problems, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<ConfigError>().is_some()
        || error.downcast_ref::<UsageError>().is_some()
        || error
            .downcast_ref::<crate::lock::AlreadyRunning>()
            .is_some()
    {
        2
    } else {
        1
    }
}

/// Loads settings and installs logging the way every subcommand does.
pub fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(format) = cli.log_format {
        settings.log.format = match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    Ok(settings)
}

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::Emulator(args) = cli.command {
        crate::telemetry::init(LogFormat::Text, "info");
        return emulator::run(args).await;
    }
    let settings = load_settings(&cli)?;
    crate::telemetry::init(settings.log.format, &settings.log.level);
    let config = cli.config.clone();
    match cli.command {
        Command::Run(args) => run::run(settings, args, config).await,
        Command::Migrate => migrate::run(settings).await,
        Command::Check(args) => check::run(settings, args).await,
        Command::Demo(args) => demo::run(settings, args).await,
        Command::Submit(args) => submit::run(settings, args).await,
        Command::Status(args) => status::run(settings, args).await,
        Command::Report(args) => report::run(settings, args).await,
        Command::Jobs(args) => jobs::run(settings, args).await,
        Command::Verify(args) => verify::run(settings, args).await,
        Command::Cancel(args) => cancel::run(settings, args).await,
        Command::Plan(args) => plan::run(settings, args).await,
        Command::Pause(args) => pause::pause(settings, args).await,
        Command::Resume(args) => pause::resume(settings, args).await,
        Command::Schedule(args) => schedule::run(settings, args).await,
        Command::Requeue(args) => requeue::run(settings, args).await,
        Command::Emulator(_) => unreachable!("handled above"),
    }
}
