//! `deregd report`: billed (2xx) calls per instance per time bucket from `tps_usage`, totals and
//! peak per-second TPS per instance, and outcome counts per run. `tps_usage` has no run column:
//! `--run` narrows the window to the run's span and the instances to the run's instances.

use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;

use crate::cli::common::{self, check_run, Format};
use crate::cli::UsageError;
use crate::clock::{format_ms, now_ms};
use crate::config::Settings;
use crate::store::run_records::{self, RunRecord};
use crate::store::runs::{self, RunCounts};
use crate::store::tps_usage::{self, ActionUsage, BucketUsage, InstanceUsage};
use crate::store::verifications::{self, Verification};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bucket {
    Second,
    Minute,
    Hour,
    Day,
}

impl Bucket {
    /// Length, seconds (buckets are aligned to UTC).
    pub fn secs(self) -> i64 {
        match self {
            Bucket::Second => 1,
            Bucket::Minute => 60,
            Bucket::Hour => 3600,
            Bucket::Day => 86_400,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Only the run's instances, between its first job's creation and its last finish.
    #[arg(long, value_name = "LABEL")]
    pub run: Option<String>,
    /// Only this instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Start (inclusive): RFC 3339, a date (YYYY-MM-DD, UTC), `now`, or relative (-30m, -2h, -7d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// End (exclusive), same forms as --since. Default: now.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<String>,
    /// Bucket size.
    #[arg(long, value_enum, default_value_t = Bucket::Hour)]
    pub by: Bucket,
    /// table, csv (bucket rows only), or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// Parses a TIME argument into unix milliseconds: RFC 3339 (`2026-11-27T10:00:00Z`), a UTC date
/// (`2026-11-27`), `now`, or `-N` followed by s, m, h or d (N units before `now_ms`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(relative) = text.strip_prefix('-') {
        let split = relative
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(relative.len());
        let (digits, unit) = relative.split_at(split);
        let unit_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{text:?}: a relative time is -N with s, m, h or d, e.g. -30m"
                ))
            }
        };
        let n: i64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: a relative time is -N with s, m, h or d, e.g. -30m"))?;
        return n
            .checked_mul(unit_ms)
            .map(|ms| now_ms - ms)
            .ok_or_else(|| format!("{text:?} is too far back"));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        return Ok(DateTime::<Utc>::from_naive_utc_and_offset(midnight, Utc).timestamp_millis());
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-11-27T10:00:00Z), a date (2026-11-27), now, \
         or a relative time (-30m, -2h, -7d)"
    ))
}

/// Everything `report` prints.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Window start (inclusive), RFC 3339.
    pub since: String,
    /// Window end (exclusive), RFC 3339.
    pub until: String,
    /// Bucket length, seconds.
    pub bucket_secs: i64,
    /// How the window and instances were chosen (always set with --run).
    pub note: Option<String>,
    pub buckets: Vec<BucketUsage>,
    /// Per instance over the window: billed calls and peak calls in one second.
    pub instances: Vec<InstanceUsage>,
    /// Per instance and action over the window: billed calls (UnRegister, and the List and
    /// Get calls of `submit --group` and `verify`).
    pub actions: Vec<ActionUsage>,
    /// Current job counts per run (not limited to the window).
    pub outcomes: Vec<RunCounts>,
    /// With `--run`: the run's last `deregd verify`.
    pub last_verification: Option<Verification>,
    /// With `--run`: the run's record (state and why, created when, by whom, from what).
    pub run: Option<RunRecord>,
}

pub async fn run(settings: Settings, args: ReportArgs) -> anyhow::Result<()> {
    if let Some(run) = &args.run {
        check_run(run)?;
    }
    let now = now_ms();
    let parse = |flag: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| parse_time(v, now).map_err(|e| UsageError(format!("{flag}: {e}"))))
            .transpose()
    };
    let since = parse("--since", &args.since)?;
    let until = parse("--until", &args.until)?;
    let format = if args.json { Format::Json } else { args.format };
    let db = common::open_existing(&settings).await?;
    let report = build(&db, &args, since, until, now).await;
    db.close().await;
    let report = report?;
    common::quiet_on_broken_pipe(print(&report, format))
}

async fn build(
    db: &crate::store::Store,
    args: &ReportArgs,
    since: Option<i64>,
    until: Option<i64>,
    now: i64,
) -> anyhow::Result<Report> {
    let mut since_ms = since.unwrap_or(0);
    let mut until_ms = until.unwrap_or(now + 1);
    let mut instances: Vec<String> = args.instance.iter().cloned().collect();
    let mut note = None;
    if let Some(run) = &args.run {
        if !runs::exists(db, run).await? {
            return Err(UsageError(format!("no jobs in run {run:?}")).into());
        }
        let progress = runs::progress(db, run, 0).await?;
        let first = progress.first_created_at.unwrap_or(0);
        let last = progress.last_finished_at.unwrap_or(now).max(first);
        since_ms = since_ms.max(first);
        // finished_at is in ms; the bucket holding the last finish must be included.
        until_ms = until_ms.min(last + 1000);
        let run_instances = runs::instances_of(db, run).await?;
        if instances.is_empty() {
            instances = run_instances;
        } else {
            instances.retain(|i| run_instances.contains(i));
        }
        note = Some(format!(
            "tps_usage has no run column: counting every billed call of the run's {} instance(s) \
             between {} (first job created) and {} (last job finished); calls of other runs on \
             the same instances in that span are included",
            instances.len(),
            format_ms(first),
            format_ms(last)
        ));
        if instances.is_empty() {
            // An --instance outside the run: nothing of it belongs to the run.
            instances.push(String::new());
        }
    }
    if until_ms <= since_ms {
        return Err(UsageError(format!(
            "empty window: {} is not before {}",
            format_ms(since_ms),
            format_ms(until_ms)
        ))
        .into());
    }
    // tps_usage counts whole seconds: include the second holding a ms bound.
    let (since_s, until_s) = (since_ms.div_euclid(1000), (until_ms + 999).div_euclid(1000));
    let buckets =
        tps_usage::usage_by_bucket(&db.reader, &instances, since_s, until_s, args.by.secs())
            .await?;
    let totals = tps_usage::usage_by_instance(&db.reader, since_s, until_s)
        .await?
        .into_iter()
        .filter(|u| instances.is_empty() || instances.contains(&u.instance_id))
        .collect();
    let actions = tps_usage::usage_by_action(&db.reader, &instances, since_s, until_s).await?;
    let (last_verification, record) = match &args.run {
        Some(run) => (
            verifications::last(db, run).await?,
            run_records::get(db, run).await?,
        ),
        None => (None, None),
    };
    let outcomes = runs::counts(
        db,
        &runs::Filter {
            run: args.run.clone(),
            instance: args.instance.clone(),
            ..runs::Filter::default()
        },
    )
    .await?;
    Ok(Report {
        since: format_ms(since_s * 1000),
        until: format_ms(until_s * 1000),
        bucket_secs: args.by.secs(),
        note,
        buckets,
        instances: totals,
        actions,
        outcomes,
        last_verification,
        run: record,
    })
}

fn print(report: &Report, format: Format) -> anyhow::Result<()> {
    let mut out = common::stdout();
    match format {
        Format::Json => return common::write_json(&mut out, report),
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record(["bucket_start", "instance_id", "calls", "peak_tps"])?;
            for b in &report.buckets {
                csv.write_record([
                    format_ms(b.start * 1000),
                    b.instance_id.clone(),
                    b.calls.to_string(),
                    b.peak_tps.to_string(),
                ])?;
            }
            csv.flush()?;
            return Ok(());
        }
        Format::Table => {}
    }
    writeln!(
        out,
        "billed calls from {} to {} per {} s",
        report.since, report.until, report.bucket_secs
    )?;
    if let Some(note) = &report.note {
        writeln!(out, "note: {note}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<24}  {:<24}  {:>10}  {:>8}",
        "BUCKET", "INSTANCE", "CALLS", "PEAK_TPS"
    )?;
    for b in &report.buckets {
        writeln!(
            out,
            "{:<24}  {:<24}  {:>10}  {:>8}",
            format_ms(b.start * 1000),
            b.instance_id,
            b.calls,
            b.peak_tps
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<24}  {:>10}  {:>8}",
        "INSTANCE", "CALLS", "PEAK_TPS"
    )?;
    for i in &report.instances {
        writeln!(
            out,
            "{:<24}  {:>10}  {:>8}",
            i.instance_id, i.calls, i.peak_tps
        )?;
    }
    let total: i64 = report.instances.iter().map(|i| i.calls).sum();
    writeln!(out, "{:<24}  {total:>10}", "total")?;
    writeln!(out)?;
    writeln!(out, "{:<24}  {:<34}  {:>10}", "INSTANCE", "ACTION", "CALLS")?;
    for a in &report.actions {
        writeln!(
            out,
            "{:<24}  {:<34}  {:>10}",
            a.instance_id, a.action, a.calls
        )?;
    }
    writeln!(out)?;
    writeln!(out, "outcomes per run (current counts, all time):")?;
    for run in &report.outcomes {
        let counts: Vec<String> = run
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let label = if run.run.is_empty() { "\"\"" } else { &run.run };
        writeln!(out, "  {label}: {}", counts.join(", "))?;
    }
    if let Some(v) = &report.last_verification {
        writeln!(out, "last verification: {}", v.describe())?;
    }
    if let Some(r) = &report.run {
        writeln!(
            out,
            "run {:?}: {}{} since {}",
            r.label,
            r.state.as_str(),
            r.state_reason
                .as_deref()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default(),
            format_ms(r.state_changed_at)
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("-30s", NOW), Ok(NOW - 30_000));
        assert_eq!(parse_time("-30m", NOW), Ok(NOW - 1_800_000));
        assert_eq!(parse_time("-2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_time("-7d", NOW), Ok(NOW - 604_800_000));
        assert_eq!(parse_time("now", NOW), Ok(NOW));
    }

    #[test]
    fn absolute_times_accept_rfc3339_and_dates() {
        assert_eq!(
            parse_time("2026-11-27T10:00:00Z", NOW),
            Ok(1_795_773_600_000)
        );
        assert_eq!(
            parse_time("2026-11-27T11:00:00+01:00", NOW),
            Ok(1_795_773_600_000)
        );
        assert_eq!(parse_time("2026-11-27", NOW), Ok(1_795_737_600_000));
    }

    #[test]
    fn malformed_times_are_refused_with_the_accepted_forms() {
        for bad in [
            "-2x",
            "-h",
            "2h",
            "yesterday",
            "2026-13-01",
            "-99999999999999999d",
        ] {
            assert!(parse_time(bad, NOW).is_err(), "{bad}");
        }
        assert!(parse_time("tomorrow", NOW)
            .unwrap_err()
            .contains("RFC 3339"));
    }
}
