//! `deregd cancel --run LABEL`: pending jobs of a run become `cancelled`; running ones finish.

use std::io::Write;

use clap::Args;

use crate::cli::common::{self, check_run};
use crate::cli::UsageError;
use crate::config::Settings;
use crate::store::{run_records, runs};

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run to cancel.
    #[arg(long, value_name = "LABEL")]
    pub run: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: CancelArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    let db = common::open_existing(&settings).await?;
    if !runs::exists(&db, &args.run).await? {
        db.close().await;
        return Err(UsageError(format!("no jobs in run {:?}", args.run)).into());
    }
    let cancelled = runs::cancel(&db, &args.run).await;
    let marked = run_records::cancelled(&db, &args.run).await;
    let running = runs::counts(
        &db,
        &runs::Filter {
            run: Some(args.run.clone()),
            ..runs::Filter::default()
        },
    )
    .await;
    db.close().await;
    let cancelled = cancelled?;
    marked?;
    let running = running?
        .first()
        .map(|c| c.count(crate::job::Status::Running))
        .unwrap_or(0);
    let mut out = common::stdout();
    let result = if args.json {
        common::write_json(
            &mut out,
            &serde_json::json!({ "run": args.run, "cancelled": cancelled, "running": running }),
        )
    } else {
        (|| {
            writeln!(
                out,
                "run {:?}: cancelled {cancelled} pending jobs",
                args.run
            )?;
            if running > 0 {
                writeln!(
                    out,
                    "{running} running jobs will finish; any that end up retrying stay pending \
                     (cancel again once they have settled)"
                )?;
            }
            out.flush()?;
            Ok(())
        })()
    };
    common::quiet_on_broken_pipe(result)
}
