//! `deregd requeue --run LABEL`: failed (or cancelled) jobs go back to `pending` with a fresh
//! attempt budget; a pair already pending or running elsewhere is left alone.

use std::io::Write;

use clap::Args;

use crate::cli::common::{self, check_run};
use crate::cli::UsageError;
use crate::config::Settings;
use crate::job::Status;
use crate::store::runs;

#[derive(Debug, Args)]
pub struct RequeueArgs {
    /// The run whose jobs to requeue.
    #[arg(long, value_name = "LABEL")]
    pub run: String,
    /// Statuses to requeue: failed, cancelled (repeat or comma-separate). Default: failed.
    #[arg(long, value_name = "S", value_delimiter = ',')]
    pub status: Vec<String>,
    /// Only jobs whose last error code is CODE.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--status` values: only `failed` and `cancelled` may be requeued.
pub fn requeueable(values: &[String]) -> Result<Vec<Status>, UsageError> {
    if values.is_empty() {
        return Ok(vec![Status::Failed]);
    }
    let mut statuses = Vec::new();
    for value in values {
        match Status::parse(value.trim()) {
            Some(s @ (Status::Failed | Status::Cancelled)) => statuses.push(s),
            _ => {
                return Err(UsageError(format!(
                    "--status {value}: only failed and cancelled jobs can be requeued"
                )))
            }
        }
    }
    statuses.sort();
    statuses.dedup();
    Ok(statuses)
}

pub async fn run(settings: Settings, args: RequeueArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    let statuses = requeueable(&args.status)?;
    let db = common::open_existing(&settings).await?;
    if !runs::exists(&db, &args.run).await? {
        db.close().await;
        return Err(UsageError(format!("no jobs in run {:?}", args.run)).into());
    }
    let result = runs::requeue(&db, &args.run, &statuses, args.code.as_deref()).await;
    db.close().await;
    let result = result?;
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let mut out = common::stdout();
    let written = if args.json {
        common::write_json(
            &mut out,
            &serde_json::json!({
                "run": args.run,
                "statuses": names,
                "code": args.code,
                "requeued": result.requeued,
                "skipped": result.skipped,
            }),
        )
    } else {
        (|| {
            writeln!(
                out,
                "run {:?}: requeued {} jobs ({}{})",
                args.run,
                result.requeued,
                names.join(", "),
                args.code
                    .as_deref()
                    .map(|c| format!(", code {c}"))
                    .unwrap_or_default()
            )?;
            if result.skipped > 0 {
                writeln!(
                    out,
                    "skipped {}: the same pair is already pending or running",
                    result.skipped
                )?;
            }
            out.flush()?;
            Ok(())
        })()
    };
    common::quiet_on_broken_pipe(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failed_and_cancelled_can_be_requeued() {
        assert_eq!(requeueable(&[]).unwrap(), [Status::Failed]);
        let both = requeueable(&["cancelled".into(), "failed".into()]).unwrap();
        assert_eq!(both, [Status::Failed, Status::Cancelled]);
        assert!(requeueable(&["succeeded".into()]).is_err());
        assert!(requeueable(&["nonsense".into()]).is_err());
    }
}
