//! `deregd submit`: queue a list of ClientIds (or CSV pairs) as jobs, validated with the worker's
//! rules, deduplicated, in chunked write transactions so a running daemon keeps dispatching.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::cli::common::{self, check_run};
use crate::cli::UsageError;
use crate::config::Settings;
use crate::intake::{self, InputError, SubmitError, Submitted};
use crate::job;
use crate::store::{run_records, Store};

/// Rejected lines printed in text mode (all of them are in `--json`).
const SHOWN_REJECTIONS: usize = 100;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// InstanceId of every ClientId in a plain list; optional for CSV input, where it then
    /// guards against rows of another instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Label of this batch (`jobs.run`), used by status, report, cancel, requeue.
    #[arg(long, value_name = "LABEL", default_value = "")]
    pub run: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Queue every credential of this GroupId on `--instance`, listed from the vendor's
    /// registry (repeatable; needs credentials and the api settings, like `run`).
    #[arg(long = "group", value_name = "GID", conflicts_with = "file")]
    pub groups: Vec<String>,
    /// The run's own abort rule: pause it when this share (0.0 to 1.0; 0 turns the rule off)
    /// of its last `limits.abort_min_answers` final answers failed.
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub abort_share: Option<f64>,
    /// The run's own maintenance window, over `worker.windows` (repeatable): like
    /// "Mon-Fri 01:00-06:00", read in `worker.timezone`.
    #[arg(long = "window", value_name = "SPEC", value_parser = parse_window)]
    pub windows: Vec<String>,
    /// One ClientId per line, or CSV with the header `instance_id,client_id`; `-` or nothing
    /// reads standard input.
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
}

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share between 0.0 and 1.0")),
    }
}

/// A window spec, checked as `--window` takes it.
pub(crate) fn parse_window(text: &str) -> Result<String, String> {
    crate::schedule::Schedule::check_spec(text)
        .map(|()| text.trim().to_string())
        .map_err(|e| e.to_string())
}

impl SubmitArgs {
    /// The run's own settings this submit sets.
    pub(crate) fn own(&self) -> run_records::OwnSettings {
        run_records::OwnSettings {
            abort_share: self.abort_share,
            windows: (!self.windows.is_empty()).then(|| self.windows.clone()),
        }
    }
}

pub async fn run(settings: Settings, args: SubmitArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    if !args.groups.is_empty() {
        return super::submit_group::run(settings, args).await;
    }
    if let Some(instance) = &args.instance {
        job::check_instance_id(instance).map_err(|e| UsageError(format!("--instance: {e}")))?;
    }
    let input = read_input(args.file.as_deref())?;
    intake::check_input(&input, args.instance.as_deref()).map_err(usage)?;
    // The parser thread borrows the input while the chunks are inserted; this process ends when
    // the submission does, so the input is leaked rather than copied or reference-counted.
    let input: &'static [u8] = Box::leak(input.into_boxed_slice());
    let instance: Option<&'static str> = args
        .instance
        .clone()
        .map(|i| &*Box::leak(i.into_boxed_str()));
    let db = Store::open(&settings.database.path).await?;
    db.set_writer_cache_mib(256).await?;
    let lines = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let from = match args.file.as_deref() {
        Some(path) if path.as_os_str() != "-" => format!("file {}", path.display()),
        _ => "standard input".to_string(),
    };
    let source = format!("{from} ({lines} lines)");
    if let Err(e) = run_records::open(
        &db,
        &args.run,
        &run_records::operator(),
        &source,
        &args.own(),
    )
    .await
    {
        db.close().await;
        return Err(e.into());
    }
    let submitted = intake::submit_input(&db, input, instance, &args.run).await;
    db.close().await;
    let Submitted { inserted, parse } = match submitted {
        Ok(submitted) => submitted,
        Err(SubmitError::Input(e)) => return Err(usage(e).into()),
        Err(e @ SubmitError::Database(_)) => return Err(e.into()),
    };

    let duplicates = parse.duplicates_in_input + inserted.already_open;
    let result = if args.json {
        let out = serde_json::json!({
            "run": args.run,
            "queued": inserted.queued,
            "duplicates": duplicates,
            "duplicates_in_input": parse.duplicates_in_input,
            "already_open": inserted.already_open,
            "rejected": parse.rejections.len(),
            "rejections": parse.rejections,
        });
        common::write_json(&mut common::stdout(), &out)
    } else {
        print_text(&args.run, &parse, inserted.queued, duplicates)
    };
    common::quiet_on_broken_pipe(result)
}

fn print_text(
    run: &str,
    parsed: &intake::ParseSummary,
    queued: u64,
    duplicates: u64,
) -> anyhow::Result<()> {
    let mut err = std::io::stderr().lock();
    for r in parsed.rejections.iter().take(SHOWN_REJECTIONS) {
        writeln!(err, "line {}: {}", r.line, r.reason)?;
    }
    if parsed.rejections.len() > SHOWN_REJECTIONS {
        writeln!(
            err,
            "... and {} more rejected lines (--json lists them all)",
            parsed.rejections.len() - SHOWN_REJECTIONS
        )?;
    }
    let mut out = common::stdout();
    writeln!(
        out,
        "run {run:?}: queued {queued}, duplicates {duplicates}, rejected {}",
        parsed.rejections.len()
    )?;
    out.flush()?;
    Ok(())
}

fn usage(error: InputError) -> UsageError {
    UsageError(error.to_string())
}

fn read_input(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    match file {
        None if std::io::stdin().is_terminal() => Err(UsageError(
            "no input: pass FILE, or pipe the list in (use `-` to type it)".into(),
        )
        .into()),
        None => read_stdin(),
        Some(path) if path.as_os_str() == "-" => read_stdin(),
        Some(path) => std::fs::read(path).map_err(|e| {
            // A missing or unreadable input file is the operator's mistake, not a failure.
            UsageError(format!("cannot read {}: {e}", path.display())).into()
        }),
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .context("cannot read standard input")?;
    Ok(input)
}
