//! `deregd plan [--run LABEL] [--json]`: before a run starts (or while it runs), what is left
//! of it, how long it will take under the budgets in force and which bound sets that, the TPS
//! it adds per instance, and what deserves a second look. No API call.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;

use crate::cli::common::{self, check_run, human_duration};
use crate::cli::schedule::effective;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::plan::{self, Budgets, Estimate, OLD_JOB_DAYS};
use crate::store::run_records::{self, RunState};
use crate::store::runs::{self, RunCounts};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Only this run (default: every run with open jobs).
    #[arg(long, value_name = "LABEL")]
    pub run: Option<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The plan of one run.
#[derive(Debug, serde::Serialize)]
pub struct RunPlan {
    pub run: String,
    pub state: Option<RunState>,
    /// Whether the run has maintenance windows of its own (else `worker.windows` apply).
    pub own_windows: bool,
    /// Jobs by status, every status present.
    pub counts: BTreeMap<&'static str, i64>,
    /// The run alone under the budgets.
    pub estimate: Estimate,
}

/// The whole plan.
#[derive(Debug, serde::Serialize)]
pub struct Plan {
    /// The shared rate and what sets it.
    pub ceiling_calls_per_sec: f64,
    pub ceiling: String,
    pub runs: Vec<RunPlan>,
    /// Every open job of the runs shown, together: they share the budgets.
    pub all: Estimate,
    pub warnings: Vec<String>,
}

pub async fn run(settings: Settings, args: PlanArgs) -> anyhow::Result<()> {
    if let Some(run) = &args.run {
        check_run(run)?;
    }
    let db = common::open_existing(&settings).await?;
    let made = make(&db, &settings, args.run.as_deref()).await;
    db.close().await;
    let plan = made?;
    let mut out = common::stdout();
    let printed = if args.json {
        common::write_json(&mut out, &plan)
    } else {
        print(&mut out, &plan)
    };
    common::quiet_on_broken_pipe(printed)
}

async fn make(
    db: &crate::store::Store,
    settings: &Settings,
    run: Option<&str>,
) -> anyhow::Result<Plan> {
    let counts = common::run_counts(db, run).await?;
    let budgets = Budgets::from_limits(&settings.limits, settings.api.source_addresses.len());
    let configured = settings.worker.schedule()?;
    let now = now_ms();
    let (ceiling_calls_per_sec, ceiling) = budgets.ceiling();
    let mut per_run: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut all: BTreeMap<String, i64> = BTreeMap::new();
    for (r, instance, n) in runs::open_by_instance(db, run).await? {
        *all.entry(instance.clone()).or_default() += n;
        per_run.entry(r).or_default().insert(instance, n);
    }
    let mut warnings = plan::budget_warnings(&all, &budgets);
    let mut plans = Vec::new();
    for RunCounts { run: label, counts } in counts {
        let rejected = counts.get("rejected").copied().unwrap_or(0);
        if rejected > 0 {
            warnings.push(format!(
                "run {label:?} has {rejected} rejected jobs, never sent (`deregd jobs --run {label} --status rejected`)"
            ));
        }
        let open = per_run.remove(&label).unwrap_or_default();
        if open.is_empty() && run.is_none() {
            continue;
        }
        let record = run_records::get(db, &label).await?;
        let state = record.as_ref().map(|r| r.state);
        let (windows, own_windows) = effective(
            &configured,
            record.as_ref().and_then(|r| r.windows.as_deref()),
        );
        if state == Some(RunState::Paused) {
            warnings.push(format!(
                "run {label:?} is paused: none of it goes until `deregd resume --run {label}`"
            ));
        }
        plans.push(RunPlan {
            estimate: plan::under_windows(plan::estimate(&open, &budgets), &windows, now),
            own_windows,
            run: label,
            state,
            counts,
        });
    }
    let month_ago = now - OLD_JOB_DAYS * 86_400_000;
    for (label, n) in runs::open_created_before(db, run, month_ago).await? {
        warnings.push(format!(
            "run {label:?} has {n} open jobs queued more than {OLD_JOB_DAYS} days ago: is the list still right?"
        ));
    }
    Ok(Plan {
        ceiling_calls_per_sec,
        ceiling,
        all: plan::under_windows(plan::estimate(&all, &budgets), &configured, now),
        runs: plans,
        warnings,
    })
}

fn print(out: &mut impl Write, plan: &Plan) -> anyhow::Result<()> {
    writeln!(
        out,
        "budgets: {} shared by every job; no API call was made",
        plan.ceiling
    )?;
    if plan.runs.is_empty() {
        writeln!(out, "nothing open: no run to plan")?;
    }
    for r in &plan.runs {
        writeln!(out)?;
        let state = r
            .state
            .map_or("not yet seen by a dispatcher", RunState::as_str);
        writeln!(out, "run {:?} ({state})", r.run)?;
        let counts: Vec<String> = r
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(out, "  jobs:     {}", counts.join(", "))?;
        print_estimate(out, &r.estimate)?;
    }
    if plan.runs.len() > 1 {
        writeln!(out)?;
        writeln!(out, "all runs together (they share the budgets)")?;
        print_estimate(out, &plan.all)?;
    }
    if !plan.warnings.is_empty() {
        writeln!(out)?;
        for w in &plan.warnings {
            writeln!(out, "warning: {w}")?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_estimate(out: &mut impl Write, e: &Estimate) -> anyhow::Result<()> {
    writeln!(
        out,
        "  calls:    {} to make; ETA {} ({})",
        e.calls,
        human_duration(e.eta_secs.ceil() as i64),
        e.bound
    )?;
    if let Some(windows) = &e.windows {
        writeln!(
            out,
            "  windows:  {windows}: {} of calls inside them",
            human_duration(e.call_secs.ceil() as i64)
        )?;
    }
    for i in &e.instances {
        writeln!(
            out,
            "  adds to   {}: up to {:.0} calls/s, {} successful calls{}",
            i.instance_id,
            i.peak_calls_per_sec,
            i.calls,
            i.cap
                .map(|c| format!(" (capped at {c}/s)"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
