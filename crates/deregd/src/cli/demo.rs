//! `deregd demo`: the whole product in one command. Starts the emulator in-process (about 30 ms of
//! latency, light transient faults), queues a labelled run of synthetic devices plus a few
//! malformed and unregistered ids, runs the real dispatch loop until the run is done, then prints
//! the report and cross-checks the daemon's counts against the emulator's. Exit 0 only if they
//! agree.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::config::Settings;
use crate::credentials::{Credentials, Secret};
use crate::store::runs::{Filter, RunCounts};
use crate::store::tps_usage;
use crate::store::Store;
use crate::worker::{self, RunOptions, Shared};
use onsmqtt_emulator::{Emulator, EmulatorSettings, Faults, Registry};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Synthetic devices to deregister.
    #[arg(long, default_value_t = 5000)]
    pub devices: usize,
    /// Ceiling on calls per second (default: limits.qps).
    #[arg(long)]
    pub qps: Option<u32>,
    /// Light transient faults in the emulator (SystemOverFlow, InternalError, resets, hangs,
    /// malformed answers).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub faults: String,
    /// Database file (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

const INSTANCES: [&str; 3] = [
    "post-cn-demo0000001",
    "post-cn-demo0000002",
    "mqtt-cn-demo0000003",
];
const MALFORMED: [&str; 5] = [
    "GID_fleet@@@dev 42",
    "GID_fleet-dev-43",
    "GRP_fleet@@@dev-44",
    "GID_fleet@@@dév-45",
    "GID_fleet@@@dev-46/../47",
];
const UNREGISTERED: usize = 5;
/// The registry's two groups on the first instance: the demo deregisters the first by
/// `submit --group` and leaves the second alone.
const GROUP_GONE: (&str, usize) = ("GID_meter_v1", 300);
const GROUP_KEPT: (&str, usize) = ("GID_meter_v2", 200);
/// Finished jobs of the group run asked for one by one (`verify --sample`).
const GROUP_SAMPLE: u32 = 20;

pub async fn run(mut settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    settings.database.path = args
        .db
        .clone()
        .unwrap_or_else(|| temp.path().join("demo.db"));
    if let Some(qps) = args.qps {
        settings.limits.qps = qps;
    }
    // Quick retries and timeouts so a rehearsal of a few thousand devices takes seconds.
    settings.retry.base_delay = Duration::from_millis(200);
    settings.retry.max_delay = Duration::from_millis(3000);
    settings.api.request_timeout = Duration::from_millis(2000);
    settings.api.connect_timeout = Duration::from_millis(1000);
    settings.worker.lease = settings.worker.lease.max(Duration::from_secs(10));
    let faults_on = args.faults == "on";
    let run_label = format!("demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));

    // 1. The emulator.
    let unregistered: Vec<(String, String)> = (0..UNREGISTERED)
        .map(|i| {
            (
                INSTANCES[i % 3].to_string(),
                format!("GID_fleet@@@never-{i}"),
            )
        })
        .collect();
    let emulator = Emulator::start(EmulatorSettings {
        registry: Registry::all_except(unregistered.clone())
            .with_group(INSTANCES[0], GROUP_GONE.0, GROUP_GONE.1)
            .with_group(INSTANCES[0], GROUP_KEPT.0, GROUP_KEPT.1),
        faults: demo_faults(faults_on),
        seed: 42,
        ..EmulatorSettings::default()
    })
    .await?;
    settings.api.endpoint = emulator.endpoint();
    settings.validate()?;
    println!("deregd demo: deregistering {} devices on {} instances against a local emulator of the vendor API", args.devices, INSTANCES.len());
    println!(
        "  emulator   {} (latency 30±10 ms, faults {}, gateway limit 500/s)",
        emulator.endpoint(),
        args.faults
    );
    println!("  database   {}", settings.database.path.display());
    println!(
        "  pacing     at most {} calls in any sliding second, {} in flight",
        settings.limits.qps, settings.limits.max_in_flight
    );

    // 2. The run's jobs, inserted as an operator would.
    let db = Store::open(&settings.database.path).await?;
    let mut rows: Vec<(String, String)> = (0..args.devices)
        .map(|i| (INSTANCES[i % 3].to_string(), format!("GID_fleet@@@dev-{i}")))
        .collect();
    rows.extend(unregistered);
    rows.extend(
        MALFORMED
            .iter()
            .enumerate()
            .map(|(i, c)| (INSTANCES[i % 3].to_string(), c.to_string())),
    );
    let pairs: Vec<(&str, &str)> = rows.iter().map(|(i, c)| (i.as_str(), c.as_str())).collect();
    crate::store::submit::submit(&db, &pairs, &run_label).await?;
    let total = rows.len() as u64;
    println!("  run        '{run_label}': {} devices + {UNREGISTERED} never registered + {} malformed = {total} jobs\n", args.devices, MALFORMED.len());

    // 3. The real dispatch loop, with progress.
    let credentials = Credentials {
        access_key_id: "testid".into(),
        access_key_secret: Secret::new("testsecret"),
        security_token: None,
    };
    let (elapsed, shared) = dispatch(&db, &settings, &credentials, total).await?;
    let emu = emulator.stats();

    // 4. The report and the cross-check.
    let counts = run_counts(&db, &run_label).await?;
    let get = |s: &str| counts.counts.get(s).copied().unwrap_or(0);
    let stats = shared.stats.lock().expect("not poisoned").clone();
    let usage = tps_usage::usage_by_instance(&db.reader, 0, i64::MAX).await?;
    let billed: i64 = usage.iter().map(|u| u.calls).sum();
    let rate = stats.calls as f64 / elapsed.as_secs_f64();
    println!(
        "\nrun '{run_label}' finished in {:.1} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  outcomes   {}",
        counts
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  calls      {} in all, {:.1} calls/s against a ceiling of {} ({:.0} %)",
        stats.calls,
        rate,
        settings.limits.qps,
        100.0 * rate / settings.limits.qps as f64
    );
    println!(
        "  busiest    {} calls in one sliding second, as the emulator saw them (ceiling {})",
        emu.max_arrivals_per_sliding_second, settings.limits.qps
    );
    println!(
        "  retries    {} scheduled; transient answers: {}",
        stats.retries_scheduled,
        transient_summary(&stats.calls_by_code)
    );
    println!("  billed     {billed} successful calls (each adds to its instance's TPS):");
    for u in &usage {
        println!(
            "             {:<22} {:>6} calls, peak {:>3} TPS",
            u.instance_id, u.calls, u.peak_tps
        );
    }

    let checks = [
        (
            "every job reached a final status",
            get("pending") + get("running") == 0,
        ),
        (
            "succeeded jobs = the emulator's successful answers",
            get("succeeded") as u64 == emu.successes,
        ),
        (
            "billed calls (tps_usage) = succeeded jobs",
            billed == get("succeeded"),
        ),
        (
            "calls made = requests the emulator received",
            stats.calls == emu.total_requests,
        ),
        (
            "malformed ids were rejected, never sent",
            get("rejected") == MALFORMED.len() as i64,
        ),
        (
            "not_found = never registered + deregistered under a fault",
            get("not_found") as u64 == UNREGISTERED as u64 + emu.deregistered_under_fault,
        ),
        ("no job failed", get("failed") == 0),
        (
            "no sliding second over the ceiling",
            emu.max_arrivals_per_sliding_second <= settings.limits.qps as u64,
        ),
        ("the gateway throttled nothing", emu.throttled == 0),
    ];
    println!("\ncross-check against the emulator:");
    let mut ok = true;
    for (what, good) in checks {
        println!("  [{}] {what}", if good { "ok" } else { "MISMATCH" });
        ok &= good;
    }
    if ok {
        ok = group_run(&db, &settings, &credentials, &emulator, &run_label).await?;
    }
    db.close().await;
    emulator.shutdown().await;
    if !ok {
        anyhow::bail!("the daemon's counts disagree with the emulator's (see above)");
    }
    println!("\nall counts agree. Next: README.md shows how to run this against the real API.");
    Ok(())
}

/// Runs the dispatch loop until nothing is open, with progress; the time it took and its stats.
async fn dispatch(
    db: &Store,
    settings: &Settings,
    credentials: &Credentials,
    total: u64,
) -> anyhow::Result<(Duration, Shared)> {
    let client = ApiClient::new(settings, credentials.clone())?;
    let shared = Shared::new(&settings.limits);
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(worker::run(
        db.clone(),
        client,
        settings.clone(),
        shutdown.clone(),
        RunOptions { until_empty: true },
        shared.clone(),
    ));
    let progress = tokio::spawn(show_progress(db.clone(), shared.clone(), total, started));
    let result = tokio::select! {
        r = worker => r?,
        _ = tokio::signal::ctrl_c() => { shutdown.cancel(); Ok(()) }
    };
    progress.abort();
    result?;
    Ok((started.elapsed(), shared))
}

/// The second part: a run taken from the registry by group (`deregd submit --group`), run,
/// then verified empty (`deregd verify`); the other group of the instance is untouched.
async fn group_run(
    db: &Store,
    settings: &Settings,
    credentials: &Credentials,
    emulator: &Emulator,
    run_label: &str,
) -> anyhow::Result<bool> {
    let instance = INSTANCES[0];
    let (gone, kept) = (GROUP_GONE.0, GROUP_KEPT.0);
    let run = format!("{run_label}-{gone}");
    println!("\na run from the registry: every credential of group {gone} on {instance} goes, {kept} stays");
    let client = ApiClient::new(settings, credentials.clone())?;
    let mut registry = crate::registry::Registry::new(settings, client, db);
    let submitted =
        crate::groups::submit(db, &mut registry, instance, &[gone.to_string()], &run).await?;
    let listed = submitted.first().map_or(0, |g| g.listed);
    println!(
        "  submit --group {gone}: listed {listed}, queued {}",
        submitted.first().map_or(0, |g| g.queued)
    );
    let (elapsed, _) = dispatch(db, settings, credentials, listed).await?;
    let counts = run_counts(db, &run).await?;
    let get = |s: &str| counts.counts.get(s).copied().unwrap_or(0);
    println!(
        "  run        '{run}' finished in {:.1} s: succeeded {}, not_found {}",
        elapsed.as_secs_f64(),
        get("succeeded"),
        get("not_found")
    );
    let verified =
        crate::groups::verify(db, &mut registry, &run, Some(GROUP_SAMPLE), false).await?;
    let relisted: u64 = verified.groups.iter().map(|g| g.listed).sum();
    let sample = verified.sample.clone().unwrap_or_default();
    println!("  verify --sample {GROUP_SAMPLE}: {gone} lists {relisted} now; {} of {} sampled confirmed gone", sample.confirmed, sample.asked);
    let checks = [
        (
            "the listing held the whole group",
            listed == GROUP_GONE.1 as u64,
        ),
        (
            "every job of the group ended succeeded or not_found",
            get("succeeded") + get("not_found") == listed as i64,
        ),
        ("verify lists the group empty", verified.clean()),
        (
            "the emulator holds none of the group",
            emulator.group_len(instance, gone) == 0,
        ),
        (
            "the other group was not touched",
            emulator.group_len(instance, kept) == GROUP_KEPT.1,
        ),
    ];
    let mut ok = true;
    for (what, good) in checks {
        println!("  [{}] {what}", if good { "ok" } else { "MISMATCH" });
        ok &= good;
    }
    Ok(ok)
}

fn demo_faults(on: bool) -> Faults {
    let mut faults = Faults {
        latency_ms: 30,
        jitter_ms: 10,
        ..Faults::default()
    };
    if on {
        faults.p_system_overflow = 0.01;
        faults.p_internal_error = 0.005;
        faults.p_reset = 0.002;
        faults.p_hang = 0.001;
        faults.hang_ms = 2500;
        faults.p_malformed = 0.002;
    }
    faults
}

fn transient_summary(by_code: &std::collections::BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = by_code
        .iter()
        .filter(|(code, _)| !matches!(code.as_str(), "OK" | "DeviceCredentialNotFound"))
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A bar on a terminal; a plain line every two seconds otherwise.
/// The run's counts by status.
async fn run_counts(db: &Store, run: &str) -> anyhow::Result<RunCounts> {
    let filter = Filter {
        run: Some(run.to_string()),
        ..Filter::default()
    };
    let counts = crate::store::runs::counts(db, &filter).await?;
    Ok(counts.into_iter().next().unwrap_or_default())
}

async fn show_progress(db: Store, shared: Shared, total: u64, started: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(total);
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {bar:40.cyan/blue} {pos}/{len} {msg}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = crate::store::jobs::counts(&db)
            .await
            .map_or(0, |c| c.finished());
        let (calls, rate, paused) = {
            let s = shared.stats.lock().expect("not poisoned");
            (s.calls, s.rate, s.paused.clone())
        };
        let secs = started.elapsed().as_secs_f64();
        let per_sec = calls as f64 / secs.max(0.001);
        let left = total.saturating_sub(done as u64);
        let eta = if per_sec > 0.0 {
            left as f64 / per_sec
        } else {
            0.0
        };
        let msg = match paused {
            Some(p) => format!("paused: {p}"),
            None => format!("{per_sec:.0} calls/s (pacing at {rate:.0}/s), ETA {eta:.0} s"),
        };
        if terminal {
            bar.set_position(done as u64);
            bar.set_message(msg);
        } else if last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            eprintln!("  {done}/{total} done, {msg}");
        }
    }
}
