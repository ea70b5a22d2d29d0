//! `deregd jobs`: the audit export. Rows are streamed from one read snapshot and written as they
//! come (table, CSV, or JSON Lines), so a million-row export runs in constant memory; a reader
//! that closes the pipe early (`| head`) ends it quietly with status 0.

use std::io::Write;

use clap::Args;
use futures_util::TryStreamExt;

use crate::cli::common::{self, check_run, Format};
use crate::cli::UsageError;
use crate::clock::format_ms;
use crate::config::Settings;
use crate::job::Status;
use crate::store::runs::{self, JobRecord};

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs of this run.
    #[arg(long, value_name = "LABEL")]
    pub run: Option<String>,
    /// Only jobs of this instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Only jobs in these statuses (repeat or comma-separate): pending, running, succeeded,
    /// not_found, failed, rejected, cancelled.
    #[arg(long, value_name = "S", value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only jobs whose last error code is CODE.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// table, csv, or json (JSON Lines: one object per line).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// Column names, in export order (CSV header and JSON keys).
pub const COLUMNS: [&str; 11] = [
    "id",
    "instance_id",
    "client_id",
    "run",
    "status",
    "code",
    "message",
    "request_id",
    "attempts",
    "created_at",
    "finished_at",
];

pub async fn run(settings: Settings, args: JobsArgs) -> anyhow::Result<()> {
    if let Some(run) = &args.run {
        check_run(run)?;
    }
    let statuses = args
        .status
        .iter()
        .map(|s| {
            Status::parse(s.trim())
                .ok_or_else(|| UsageError(format!("--status {s}: unknown status")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let format = if args.json { Format::Json } else { args.format };
    let filter = runs::Filter {
        run: args.run,
        instance: args.instance,
        statuses,
        code: args.code,
    };
    let db = common::open_existing(&settings).await?;
    let sql = runs::export_sql();
    let result = export(&db, &filter, &sql, format).await;
    db.close().await;
    common::quiet_on_broken_pipe(result)
}

async fn export(
    db: &crate::store::Store,
    filter: &runs::Filter,
    sql: &str,
    format: Format,
) -> anyhow::Result<()> {
    let mut rows = std::pin::pin!(runs::export(db, filter, sql));
    let mut out = common::stdout();
    match format {
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record(COLUMNS)?;
            while let Some(job) = rows.try_next().await? {
                csv.write_record(fields(&job))?;
            }
            csv.flush()?;
        }
        Format::Json => {
            while let Some(job) = rows.try_next().await? {
                serde_json::to_writer(&mut out, &json(&job))?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>9}  {:<20}  {:<40}  {:<12}  {:<10}  {:<24}  {:>3}  {:<24}  {:<24}  {:<36}  MESSAGE",
                "ID", "INSTANCE", "CLIENT_ID", "RUN", "STATUS", "CODE", "ATT", "CREATED", "FINISHED", "REQUEST_ID"
            )?;
            while let Some(job) = rows.try_next().await? {
                let [id, instance, client, run, status, code, message, request, attempts, created, finished] =
                    fields(&job);
                writeln!(
                    out,
                    "{id:>9}  {instance:<20}  {client:<40}  {:<12}  {status:<10}  {:<24}  {attempts:>3}  {created:<24}  {:<24}  {:<36}  {message}",
                    if run.is_empty() { "-" } else { &run },
                    if code.is_empty() { "-" } else { &code },
                    if finished.is_empty() { "-" } else { &finished },
                    if request.is_empty() { "-" } else { &request },
                    message = message.replace(['\n', '\r', '\t'], " "),
                )?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// One job as export fields (times RFC 3339, absent values empty).
fn fields(job: &JobRecord) -> [String; 11] {
    [
        job.id.to_string(),
        job.instance_id.clone(),
        job.client_id.clone(),
        job.run.clone(),
        job.status.clone(),
        job.code.clone().unwrap_or_default(),
        job.message.clone().unwrap_or_default(),
        job.request_id.clone().unwrap_or_default(),
        job.attempts.to_string(),
        format_ms(job.created_at),
        job.finished_at.map(format_ms).unwrap_or_default(),
    ]
}

/// One job as a JSON object (times RFC 3339, absent values null).
fn json(job: &JobRecord) -> serde_json::Value {
    serde_json::json!({
        "id": job.id,
        "instance_id": job.instance_id,
        "client_id": job.client_id,
        "run": job.run,
        "status": job.status,
        "code": job.code,
        "message": job.message,
        "request_id": job.request_id,
        "attempts": job.attempts,
        "created_at": format_ms(job.created_at),
        "finished_at": job.finished_at.map(format_ms),
    })
}
