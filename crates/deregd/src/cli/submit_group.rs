//! `deregd submit --instance ID --group GID [--group GID ...]`: lists each group from the
//! vendor's registry, whole, then queues it as jobs of the run (see [`crate::groups`]). Exits 1
//! when any group could not be listed (nothing of that group is queued).

use std::io::Write;

use crate::api::ApiClient;
use crate::cli::common;
use crate::cli::submit::SubmitArgs;
use crate::cli::UsageError;
use crate::config::Settings;
use crate::credentials::Provider;
use crate::groups::{self, GroupSubmitted};
use crate::job;
use crate::registry::Registry;
use crate::store::{run_records, Store};

pub(crate) async fn run(settings: Settings, args: SubmitArgs) -> anyhow::Result<()> {
    let instance = args
        .instance
        .as_deref()
        .ok_or_else(|| UsageError("--group needs --instance ID".into()))?;
    job::check_instance_id(instance).map_err(|e| UsageError(format!("--instance: {e}")))?;
    for group in &args.groups {
        job::check_group_id(group).map_err(|e| UsageError(format!("--group {group}: {e}")))?;
    }
    let credentials = Provider::load(&settings).await?;
    let store = Store::open(&settings.database.path).await?;
    let client = ApiClient::new(&settings, credentials)?;
    let source = format!("groups {} on {instance}", args.groups.join(", "));
    if let Err(e) = run_records::open(
        &store,
        &args.run,
        &run_records::operator(),
        &source,
        &args.own(),
    )
    .await
    {
        store.close().await;
        return Err(e.into());
    }
    let mut registry = Registry::new(&settings, client, &store);
    let results = groups::submit(&store, &mut registry, instance, &args.groups, &args.run).await;
    store.close().await;
    let results = results?;
    let printed = if args.json {
        print_json(&args.run, instance, &results)
    } else {
        print_text(&args.run, instance, &results)
    };
    common::quiet_on_broken_pipe(printed)?;
    let failed: Vec<&GroupSubmitted> = results.iter().filter(|r| r.error.is_some()).collect();
    match failed.as_slice() {
        [] => Ok(()),
        failed => Err(anyhow::anyhow!(
            "nothing of {} was queued: {}",
            failed
                .iter()
                .map(|f| f.group.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            failed
                .iter()
                .filter_map(|f| f.error.as_deref())
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

fn totals(results: &[GroupSubmitted]) -> (u64, u64, u64) {
    results.iter().fold((0, 0, 0), |(l, q, d), r| {
        (l + r.listed, q + r.queued, d + r.duplicates)
    })
}

fn print_json(run: &str, instance: &str, results: &[GroupSubmitted]) -> anyhow::Result<()> {
    let (listed, queued, duplicates) = totals(results);
    let out = serde_json::json!({
        "run": run,
        "instance_id": instance,
        "listed": listed,
        "queued": queued,
        "duplicates": duplicates,
        "groups": results,
    });
    common::write_json(&mut common::stdout(), &out)
}

fn print_text(run: &str, instance: &str, results: &[GroupSubmitted]) -> anyhow::Result<()> {
    let mut out = common::stdout();
    for r in results {
        match &r.error {
            None => writeln!(
                out,
                "group {} on {instance}: listed {}, queued {}, duplicates {}",
                r.group, r.listed, r.queued, r.duplicates
            )?,
            Some(e) => writeln!(out, "group {} on {instance}: NOT QUEUED: {e}", r.group)?,
        }
    }
    let (listed, queued, duplicates) = totals(results);
    writeln!(
        out,
        "run {run:?}: listed {listed}, queued {queued}, duplicates {duplicates}"
    )?;
    out.flush()?;
    Ok(())
}
