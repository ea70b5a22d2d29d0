//! `deregd verify --run LABEL [--requeue] [--sample N] [--json]`: checks a run against the
//! vendor's registry. Lists each group the run was taken from again, and with `--sample N`
//! asks for N of its finished jobs' credentials. Exit 0 when nothing of it is registered any
//! more, 1 when something is.

use std::io::Write;

use clap::Args;

use crate::api::ApiClient;
use crate::cli::common::{self, check_run};
use crate::cli::UsageError;
use crate::config::Settings;
use crate::credentials::Provider;
use crate::groups::{self, Verified};
use crate::registry::Registry;
use crate::store::{groups as run_groups, runs};

/// Ids shown per finding in text mode (`--json` lists them all).
const SHOWN_IDS: usize = 10;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The run to verify.
    #[arg(long, value_name = "LABEL")]
    pub run: String,
    /// Put still-registered jobs back to pending, and add newly registered ids to the run.
    #[arg(long)]
    pub requeue: bool,
    /// Also ask for the credentials of N random jobs of the run that ended succeeded or
    /// not_found (works for any run, also one from a file or an INSERT).
    #[arg(long, value_name = "N")]
    pub sample: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(settings: Settings, args: VerifyArgs) -> anyhow::Result<()> {
    check_run(&args.run)?;
    let store = common::open_existing(&settings).await?;
    if !runs::exists(&store, &args.run).await? {
        return Err(UsageError(format!("no jobs in run {:?}", args.run)).into());
    }
    if args.sample.is_none() && run_groups::of_run(&store, &args.run).await?.is_empty() {
        return Err(UsageError(format!(
            "run {:?} was not taken from groups: verify it with --sample N",
            args.run
        ))
        .into());
    }
    let credentials = Provider::load(&settings).await?;
    let client = ApiClient::new(&settings, credentials)?;
    let mut registry = Registry::new(&settings, client, &store);
    let verified =
        groups::verify(&store, &mut registry, &args.run, args.sample, args.requeue).await;
    store.close().await;
    let verified = verified?;
    let printed = if args.json {
        common::write_json(&mut common::stdout(), &verified)
    } else {
        print_text(&verified)
    };
    common::quiet_on_broken_pipe(printed)?;
    if verified.clean() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "run {:?} is not gone from the registry{}",
            args.run,
            if args.requeue {
                " (requeued: `deregd run`, then verify again)"
            } else {
                " (--requeue puts it back to work)"
            }
        ))
    }
}

fn ids(ids: &[String]) -> String {
    let mut shown = ids
        .iter()
        .take(SHOWN_IDS)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN_IDS {
        shown.push_str(&format!(", ... ({} in all)", ids.len()));
    }
    shown
}

fn print_text(v: &Verified) -> anyhow::Result<()> {
    let mut out = common::stdout();
    for g in &v.groups {
        writeln!(
            out,
            "group {} on {}: listed {}",
            g.group, g.instance_id, g.listed
        )?;
        if !g.still_registered_done.is_empty() {
            writeln!(
                out,
                "  ALARM: {} deregistered (succeeded or not_found) but listed again: {}",
                g.still_registered_done.len(),
                ids(&g.still_registered_done)
            )?;
        }
        if !g.still_registered_open.is_empty() {
            writeln!(
                out,
                "  {} not finished yet: {}",
                g.still_registered_open.len(),
                ids(&g.still_registered_open)
            )?;
        }
        if !g.new_since_snapshot.is_empty() {
            writeln!(
                out,
                "  {} registered since the run was taken: {}",
                g.new_since_snapshot.len(),
                ids(&g.new_since_snapshot)
            )?;
        }
        if g.requeued + g.added > 0 {
            writeln!(out, "  requeued {}, added {}", g.requeued, g.added)?;
        }
    }
    if let Some(s) = &v.sample {
        writeln!(
            out,
            "sample of {}: {} confirmed gone, {} still registered{}",
            s.asked,
            s.confirmed,
            s.found.len(),
            if s.requeued > 0 {
                format!(" ({} requeued)", s.requeued)
            } else {
                String::new()
            }
        )?;
        for (instance, client) in s.found.iter().take(SHOWN_IDS) {
            writeln!(out, "  still registered: {client} on {instance}")?;
        }
    }
    writeln!(
        out,
        "run {:?}: {}",
        v.run,
        if v.clean() {
            "gone from the registry"
        } else {
            "NOT gone from the registry"
        }
    )?;
    out.flush()?;
    Ok(())
}
