//! The benchmark suite, run by `bench/run [--quick]` (the release `deregd-bench` binary).
//!
//! Spawns the release `deregd` binary (daemon, emulator, submit) as separate processes so each
//! one's CPU and memory are its own, and uses the library in-process only for the queue
//! headroom (claim + complete with the API call replaced by an instant answer). Writes a
//! Markdown report (`--out`); exits non-zero only when a step fails, never on a missed target.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use deregd::clock::now_ms;
use deregd::job::Status;
use deregd::store::jobs::{self, Completion};
use deregd::store::Store;

mod listing;

/// The repository's root: bench/run's scripts and notes live there.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The release `deregd` binary beside this one (bench/run builds both).
fn deregd_binary() -> PathBuf {
    let me = std::env::current_exe().expect("the running program has a path");
    me.with_file_name("deregd")
}
const INSTANCE: &str = "mqtt-cn-bench0001";
/// The account limit, enforced by the emulator as a strict sliding second.
const EMULATOR_RATE_LIMIT: u32 = 500;
const LATENCY_MS: u32 = 30;
const JITTER_MS: u32 = 10;
const PACING_CAPS: [u32; 2] = [280, 490];
/// Claim/complete batch of the headroom run: what the worker claims at ~490/s is ~245, it
/// completes up to 512 at once.
const HEADROOM_BATCH: i64 = 256;

/// Sizes of one run.
struct Sizes {
    pacing_jobs: usize,
    /// deregd pacing runs per cap; the median of each figure is reported (this VM is noisy).
    pacing_repeats: usize,
    headroom_batched: usize,
    headroom_single: usize,
    /// Headroom rounds (batched, then one job per transaction); medians are reported.
    headroom_repeats: usize,
    submit_ids: usize,
    /// Bulk-submit rounds (deregd, then sqlite3's imports); medians are reported.
    submit_repeats: usize,
    memory_secs: u64,
    latency_samples: usize,
    /// Credentials in the group `submit --group` snapshots.
    listing_group: usize,
}

const FULL: Sizes = Sizes {
    pacing_jobs: 20_000,
    pacing_repeats: 3,
    headroom_batched: 200_000,
    headroom_single: 20_000,
    headroom_repeats: 3,
    submit_ids: 1_000_000,
    submit_repeats: 3,
    memory_secs: 60,
    latency_samples: 50,
    listing_group: 100_000,
};

const QUICK: Sizes = Sizes {
    pacing_jobs: 2_000,
    pacing_repeats: 1,
    headroom_batched: 20_000,
    headroom_single: 2_000,
    headroom_repeats: 1,
    submit_ids: 50_000,
    submit_repeats: 1,
    memory_secs: 10,
    latency_samples: 10,
    listing_group: 10_000,
};

struct Args {
    quick: bool,
    out: Option<PathBuf>,
    sdk_python: Option<PathBuf>,
    command: String,
    /// Run one section only (`--only NAME`).
    only: Option<String>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == section)
    }
}

/// The sections `--only` can pick (for profiling one of them).
const SECTIONS: [&str; 6] = [
    "pacing", "headroom", "submit", "memory", "latency", "listing",
];

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: None,
        sdk_python: std::env::var_os("BENCH_SDK_PYTHON")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        command: std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "bench/run".into()),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = Some(it.next().context("--out needs a path")?.into()),
            "--sdk-python" => {
                args.sdk_python = Some(it.next().context("--sdk-python needs a path")?.into())
            }
            "--only" => {
                let section = it.next().context("--only needs a section")?;
                ensure!(
                    SECTIONS.contains(&section.as_str()),
                    "--only takes one of {SECTIONS:?}"
                );
                args.only = Some(section);
            }
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(args)
}

/// One line of the report table.
struct Figure {
    benchmark: String,
    figure: String,
    value: String,
    target: String,
    /// `None` for figures shown for comparison only.
    pass: Option<bool>,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    details: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        benchmark: &str,
        figure: &str,
        value: String,
        target: &str,
        pass: Option<bool>,
    ) {
        let mark = match pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "-",
        };
        println!("  {benchmark} | {figure}: {value} (target {target}) {mark}");
        self.figures.push(Figure {
            benchmark: benchmark.into(),
            figure: figure.into(),
            value,
            target: target.into(),
            pass,
        });
    }

    fn detail(&mut self, line: String) {
        println!("  {line}");
        self.details.push(line);
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(FLOOR_CLIENT) {
        if let Err(e) = floor_client(&argv[2..]) {
            eprintln!("floor client failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    match try_main() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench suite failed: {e:#}");
            std::process::exit(1);
        }
    }
}

fn try_main() -> Result<()> {
    let args = parse_args()?;
    let sizes = if args.quick { &QUICK } else { &FULL };
    let dir = tempfile::Builder::new().prefix("deregd-bench").tempdir()?;
    let dir = dir.path();
    let started = Instant::now();
    let mut report = Report::default();

    let ids = dir.join("pacing-ids.txt");
    write_ids(&ids, "dev", sizes.pacing_jobs)?;
    let mut sdk_python = args.sdk_python.clone();
    let caps: &[u32] = if args.runs("pacing") {
        &PACING_CAPS
    } else {
        &[]
    };
    for &cap in caps {
        println!(
            "== pacing at limits.qps = {cap}, {} jobs",
            sizes.pacing_jobs
        );
        // Each deregd run is followed at once by a floor run, so each CPU ratio compares two
        // runs made a minute apart, not the noisiest and the quietest minute of the benchmark.
        let mut runs = Vec::new();
        let mut floors = Vec::new();
        for i in 0..sizes.pacing_repeats {
            runs.push(pacing_deregd(dir, &ids, sizes.pacing_jobs, cap, i)?);
            floors.push(pacing_floor(dir, sizes.pacing_jobs, cap, i)?);
        }
        let ours = PacingRun::median(&runs);
        let floor = PacingRun::median(&floors);
        let ratios: Vec<f64> = runs
            .iter()
            .zip(&floors)
            .map(|(r, f)| r.cpu_per_call_ms() / f.cpu_per_call_ms())
            .collect();
        let theirs = match &sdk_python {
            Some(python) => match pacing_sdk(dir, python, &ids, sizes.pacing_jobs, cap) {
                Ok(r) => Some(r),
                Err(e) if args.quick => {
                    println!("  SDK baseline failed, skipped in quick mode: {e:#}");
                    sdk_python = None;
                    None
                }
                Err(e) => return Err(e.context("SDK baseline")),
            },
            None if args.quick => {
                println!("  SDK baseline skipped: no venv (pip could not install the SDK)");
                None
            }
            None => bail!("the SDK baseline needs --sdk-python (bench/run installs the SDK)"),
        };
        report_pacing(
            &mut report,
            cap,
            &ours,
            &floor,
            median(&ratios),
            runs.iter()
                .map(PacingRun::plan_ratio)
                .collect::<Option<Vec<f64>>>()
                .map(|r| median(&r)),
            theirs.as_ref(),
        );
        if runs.len() > 1 {
            let list = |runs: &[PacingRun], f: &dyn Fn(&PacingRun) -> String| {
                runs.iter().map(f).collect::<Vec<_>>().join(", ")
            };
            report.detail(format!(
                "pacing {cap}/s, deregd's {} runs (the table has each figure's median): \
                 rate/cap {}; largest sliding second {}; CPU per call {} ms; \
                 planned ETA / measured {}; \
                 the floor run after each: CPU per call {} ms, deregd / floor {}",
                runs.len(),
                list(&runs, &|r| format!("{:.4}", r.rate / cap as f64)),
                list(&runs, &|r| r.max_sliding.to_string()),
                list(&runs, &|r| format!("{:.3}", r.cpu_per_call_ms())),
                list(&runs, &|r| format!(
                    "{:.3}",
                    r.plan_ratio().unwrap_or(f64::NAN)
                )),
                list(&floors, &|r| format!("{:.3}", r.cpu_per_call_ms())),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}x"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
    }

    if args.runs("headroom") {
        headroom_section(dir, sizes, &mut report)?;
    }
    if args.runs("submit") || args.runs("memory") {
        println!("== bulk submit, {} ids", sizes.submit_ids);
        let submit_db = bulk_submit(dir, &mut report, sizes.submit_ids, sizes.submit_repeats)?;
        if args.runs("memory") {
            println!(
                "== memory, {} s drain of {} queued jobs",
                sizes.memory_secs, sizes.submit_ids
            );
            memory(dir, &mut report, &submit_db, sizes)?;
        }
    }
    if args.runs("latency") {
        println!("== pick-up latency, {} inserts", sizes.latency_samples);
        pickup_latency(dir, &mut report, sizes.latency_samples)?;
    }
    if args.runs("listing") {
        println!("== submit --group, a group of {}", sizes.listing_group);
        listing::section(dir, &mut report, sizes.listing_group)?;
    }

    let elapsed = started.elapsed();
    println!("== benchmark time {:.0} s", elapsed.as_secs_f64());
    let markdown = render(&args, sizes, &report, elapsed)?;
    if let Some(out) = &args.out {
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(out, markdown).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    let misses = report
        .figures
        .iter()
        .filter(|f| f.pass == Some(false))
        .count();
    println!("{misses} figure(s) miss their target");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pacing precision and CPU per call, deregd against the vendor SDK.

/// What one client run at one cap did, as the emulator saw it.
struct PacingRun {
    calls: u64,
    successes: u64,
    throttled: u64,
    /// Calls per second from the first to the last arrival.
    rate: f64,
    max_sliding: u64,
    cpu_s: f64,
    /// From the client's start to its exit, seconds.
    wall_s: f64,
    /// deregd only: the ETA `deregd plan` gave before the run, seconds.
    planned_s: Option<f64>,
    /// SDK only: failed calls it never retried.
    not_retried: Option<u64>,
}

impl PacingRun {
    fn from_stats(
        stats: &Value,
        cpu_s: f64,
        wall_s: f64,
        not_retried: Option<u64>,
    ) -> Result<PacingRun> {
        let calls = num(stats, "total_requests")?;
        let first = num(stats, "first_arrival_unix_us")?;
        let last = num(stats, "last_arrival_unix_us")?;
        ensure!(calls > 1 && last > first, "too few calls to measure a rate");
        Ok(PacingRun {
            calls,
            successes: num(stats, "successes")?,
            throttled: num(stats, "throttled")?,
            rate: (calls - 1) as f64 / ((last - first) as f64 / 1e6),
            max_sliding: num(stats, "max_arrivals_per_sliding_second")?,
            cpu_s,
            wall_s,
            planned_s: None,
            not_retried,
        })
    }

    fn cpu_per_call_ms(&self) -> f64 {
        self.cpu_s * 1000.0 / self.calls as f64
    }

    /// The planned ETA over the measured duration.
    fn plan_ratio(&self) -> Option<f64> {
        self.planned_s.map(|p| p / self.wall_s)
    }

    /// Each figure's median over `runs` (an odd number), each taken on its own; throttled
    /// calls are the most any run had, since one throttled run is a failure.
    fn median(runs: &[PacingRun]) -> PacingRun {
        fn mid<T: Copy + PartialOrd>(runs: &[PacingRun], f: impl Fn(&PacingRun) -> T) -> T {
            median(&runs.iter().map(f).collect::<Vec<T>>())
        }
        PacingRun {
            calls: mid(runs, |r| r.calls),
            successes: mid(runs, |r| r.successes),
            throttled: runs.iter().map(|r| r.throttled).max().unwrap_or(0),
            rate: mid(runs, |r| r.rate),
            max_sliding: mid(runs, |r| r.max_sliding),
            cpu_s: mid(runs, |r| r.cpu_s),
            wall_s: mid(runs, |r| r.wall_s),
            planned_s: runs
                .iter()
                .all(|r| r.planned_s.is_some())
                .then(|| mid(runs, |r| r.planned_s.unwrap_or(0.0))),
            not_retried: None,
        }
    }
}

/// The median of an odd number of values (the upper middle one of an even number).
fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn pacing_deregd(dir: &Path, ids: &Path, jobs: usize, cap: u32, n: usize) -> Result<PacingRun> {
    let db = dir.join(format!("pacing-{cap}-{n}.db"));
    submit(&db, ids, "pacing")?;
    let planned = planned_eta(&db, cap, "pacing")?;
    let mut run = paced_client(
        dir,
        &format!("run-{cap}-{n}"),
        jobs,
        cap,
        true,
        |emulator| {
            let mut cmd = deregd(&db, Some(emulator), cap);
            cmd.args(["run", "--until-empty"]);
            cmd
        },
    )?;
    run.planned_s = Some(planned);
    Ok(run)
}

/// The ETA `deregd plan --json` gives `run` at `cap` (the settings the run then uses).
fn planned_eta(db: &Path, cap: u32, run: &str) -> Result<f64> {
    let out = deregd(db, None, cap)
        .args(["plan", "--json", "--run", run])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success(),
        "deregd plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout)?;
    plan["runs"][0]["estimate"]["eta_secs"]
        .as_f64()
        .context("deregd plan --json has no runs[0].estimate.eta_secs")
}

/// The floor run at `cap`: [`floor_client`] as its own process.
fn pacing_floor(dir: &Path, jobs: usize, cap: u32, n: usize) -> Result<PacingRun> {
    let exe = std::env::current_exe()?;
    let name = format!("floor-{cap}-{n}");
    paced_client(dir, &name, jobs, cap, false, |emulator| {
        let mut cmd = Command::new(&exe);
        cmd.arg(FLOOR_CLIENT)
            .args([emulator.address(), jobs.to_string(), cap.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    })
}

/// Runs the client `command` builds against a fresh emulator until it exits, and checks that
/// the emulator saw `jobs` calls (all successful, when `all_succeed`). Its stderr goes to
/// `NAME.log`.
fn paced_client(
    dir: &Path,
    name: &str,
    jobs: usize,
    cap: u32,
    all_succeed: bool,
    command: impl FnOnce(&EmulatorProc) -> Command,
) -> Result<PacingRun> {
    let emulator = EmulatorProc::start(dir, name)?;
    let started = Instant::now();
    let child = command(&emulator).stderr(log_file(dir, name)?).spawn()?;
    let limit = Duration::from_secs_f64(jobs as f64 / cap as f64 * 3.0 + 60.0);
    let reaped = wait_reaped(child, limit)?;
    let wall_s = started.elapsed().as_secs_f64();
    ensure!(
        reaped.code == 0,
        "{name} exited with {} (see {name}.log)",
        reaped.code
    );
    let stats = emulator.stop()?;
    let run = PacingRun::from_stats(&stats, reaped.cpu_s, wall_s, None)?;
    let done = if all_succeed {
        run.successes
    } else {
        run.calls
    };
    ensure!(
        done == jobs as u64,
        "{name}: {} calls, {} successes, for {jobs} jobs",
        run.calls,
        run.successes
    );
    Ok(run)
}

/// The argument that runs this binary as the floor client.
const FLOOR_CLIENT: &str = "--floor-client";

/// The floor of CPU per call on this host: what one signed exchange costs with nothing else.
/// Each call is signed as deregd signs it (V3, fresh timestamp and nonce) and written on a
/// kept-alive TCP connection; the answer is read up to its `content-length`, whatever its
/// status (a throttled call is an exchange too). No HTTP library, no queue, no database, no
/// retries; one timer tick per call paces the calls at the cap, on a current-thread runtime like
/// deregd's, and a late tick delays the ones after it rather than bunching them. Arguments:
/// `ADDR CALLS CAP`.
fn floor_client(args: &[String]) -> Result<()> {
    use deregd::api::signer::{sign_v3, CallToSign, SigningKey};
    use std::sync::{Arc, LazyLock, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let [addr, calls, cap] = args else {
        bail!("usage: {FLOOR_CLIENT} ADDR CALLS CAP");
    };
    let calls: usize = calls.parse()?;
    let cap: f64 = cap.parse()?;
    let addr: Arc<str> = addr.as_str().into();
    let idle: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();

    /// Made once, as deregd's client makes it.
    static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::v3("testsecret"));

    async fn call(addr: &str, idle: &Mutex<Vec<tokio::net::TcpStream>>, i: usize) -> Result<()> {
        let reused = idle.lock().expect("not poisoned").pop();
        let mut conn = match reused {
            Some(conn) => conn,
            None => {
                let conn = tokio::net::TcpStream::connect(addr).await?;
                conn.set_nodelay(true)?;
                conn
            }
        };
        let timestamp = deregd::api::signer::timestamp(chrono::Utc::now());
        let nonce = format!("{:032x}", rand::random::<u128>());
        let client = format!("GID_fleet@@@floor-{i}");
        let params = [("ClientId", client.as_str()), ("InstanceId", INSTANCE)];
        let signed = sign_v3(&CallToSign {
            host: addr,
            action: "UnRegisterDeviceCredential",
            version: "2020-04-20",
            params: &params,
            access_key_id: "testid",
            key: &KEY,
            security_token: None,
            timestamp: &timestamp,
            nonce: &nonce,
        });
        let mut request = format!(
            "POST /?{} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n",
            signed.query
        );
        for (name, value) in &signed.headers {
            write!(request, "{name}: {value}\r\n")?;
        }
        request.push_str("\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut answer = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = conn.read(&mut chunk).await?;
            ensure!(n > 0, "the emulator closed the connection");
            answer.extend_from_slice(&chunk[..n]);
            let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            ensure!(head.starts_with("http/1.1 "), "answer: {head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("no content-length")?
                .trim()
                .parse()?;
            if answer.len() >= end + 4 + length {
                break;
            }
        }
        idle.lock().expect("not poisoned").push(conn);
        Ok(())
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / cap));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..calls {
            ticks.tick().await;
            let (addr, idle) = (addr.clone(), idle.clone());
            tasks.spawn(async move { call(&addr, &idle, i).await });
            while let Some(done) = tasks.try_join_next() {
                done??;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    })
}

fn pacing_sdk(dir: &Path, python: &Path, ids: &Path, jobs: usize, cap: u32) -> Result<PacingRun> {
    let emulator = EmulatorProc::start(dir, &format!("sdk-{cap}"))?;
    let started = Instant::now();
    let script = Path::new(ROOT).join("bench/sdk_baseline.py");
    let mut child = Command::new(python)
        .arg(script)
        .args(["--endpoint", &emulator.address(), "--instance", INSTANCE])
        .arg("--ids")
        .arg(ids)
        .args(["--cap", &cap.to_string()])
        .stdout(Stdio::piped())
        .stderr(log_file(dir, &format!("sdk-{cap}"))?)
        .spawn()?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)?;
    let limit = Duration::from_secs_f64(jobs as f64 / cap as f64 * 3.0 + 120.0);
    let reaped = wait_reaped(child, limit)?;
    let wall_s = started.elapsed().as_secs_f64();
    ensure!(
        reaped.code == 0,
        "the SDK baseline exited with {} (see sdk-{cap}.log)",
        reaped.code
    );
    let summary: Value = serde_json::from_str(out.trim()).context("SDK baseline output")?;
    ensure!(
        num(&summary, "calls")? == jobs as u64,
        "SDK baseline skipped ids"
    );
    let stats = emulator.stop()?;
    PacingRun::from_stats(
        &stats,
        reaped.cpu_s,
        wall_s,
        Some(num(&summary, "not_retried")?),
    )
}

fn report_pacing(
    report: &mut Report,
    cap: u32,
    ours: &PacingRun,
    floor: &PacingRun,
    floor_ratio: f64,
    plan_ratio: Option<f64>,
    theirs: Option<&PacingRun>,
) {
    let b = format!("Pacing @ {cap}/s");
    let cap_f = cap as f64;
    report.add(
        &b,
        "deregd achieved rate / cap",
        format!("{:.4} ({:.1} calls/s)", ours.rate / cap_f, ours.rate),
        ">= 0.99",
        Some(ours.rate / cap_f >= 0.99),
    );
    report.add(
        &b,
        "deregd largest sliding second / cap",
        format!(
            "{:.4} ({} calls)",
            ours.max_sliding as f64 / cap_f,
            ours.max_sliding
        ),
        "<= 1.00",
        Some(ours.max_sliding <= cap as u64),
    );
    report.add(
        &b,
        "deregd throttled calls",
        ours.throttled.to_string(),
        "0",
        Some(ours.throttled == 0),
    );
    if let (Some(planned), Some(ratio)) = (ours.planned_s, plan_ratio) {
        report.add(
            &b,
            "deregd plan: planned ETA / measured duration (median of runs)",
            format!(
                "{ratio:.3} (planned {planned:.1} s, ran {:.1} s start to exit)",
                ours.wall_s
            ),
            "0.90-1.10",
            Some((0.9..=1.1).contains(&ratio)),
        );
    }
    report.add(
        &b,
        "deregd CPU per call",
        format!(
            "{:.4} ms ({:.2} s / {} calls)",
            ours.cpu_per_call_ms(),
            ours.cpu_s,
            ours.calls
        ),
        "<= 0.15 ms",
        Some(ours.cpu_per_call_ms() <= 0.15),
    );
    report.add(
        &b,
        "floor: a bare signed exchange, CPU per call",
        format!(
            "{:.4} ms ({:.2} s / {} calls)",
            floor.cpu_per_call_ms(),
            floor.cpu_s,
            floor.calls
        ),
        "comparison",
        None,
    );
    report.add(
        &b,
        "deregd vs the floor: CPU per call (median of back-to-back pairs)",
        format!("{floor_ratio:.2}x"),
        "comparison",
        None,
    );
    let Some(sdk) = theirs else {
        report.add(&b, "SDK baseline", "skipped".into(), "comparison", None);
        return;
    };
    report.add(
        &b,
        "SDK achieved rate / cap",
        format!("{:.4} ({:.1} calls/s)", sdk.rate / cap_f, sdk.rate),
        "comparison",
        None,
    );
    report.add(
        &b,
        "SDK largest sliding second / cap",
        format!(
            "{:.4} ({} calls)",
            sdk.max_sliding as f64 / cap_f,
            sdk.max_sliding
        ),
        "comparison",
        None,
    );
    report.add(
        &b,
        "SDK throttled / never-retried calls",
        format!(
            "{} / {} of {}",
            sdk.throttled,
            sdk.not_retried.unwrap_or(0),
            sdk.calls
        ),
        "comparison",
        None,
    );
    report.add(
        &b,
        "SDK CPU per call",
        format!(
            "{:.4} ms ({:.2} s / {} calls)",
            sdk.cpu_per_call_ms(),
            sdk.cpu_s,
            sdk.calls
        ),
        "comparison",
        None,
    );
    report.add(
        &b,
        "deregd vs SDK: CPU per call",
        format!(
            "{:.3}x (SDK uses {:.1}x deregd's CPU)",
            ours.cpu_per_call_ms() / sdk.cpu_per_call_ms(),
            sdk.cpu_per_call_ms() / ours.cpu_per_call_ms()
        ),
        "comparison",
        None,
    );
    report.add(
        &b,
        "deregd vs SDK: rate, largest sliding second",
        format!(
            "{:.3}x, {:.3}x",
            ours.rate / sdk.rate,
            ours.max_sliding as f64 / sdk.max_sliding as f64
        ),
        "comparison",
        None,
    );
    report.detail(format!(
        "pacing {cap}/s: deregd {} calls, {} successes; SDK {} calls, {} successes",
        ours.calls, ours.successes, sdk.calls, sdk.successes
    ));
}

fn headroom_section(dir: &Path, sizes: &Sizes, report: &mut Report) -> Result<()> {
    println!("== queue headroom");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut batched, mut single) = (Vec::new(), Vec::new());
    for round in 0..sizes.headroom_repeats {
        let label = |kind: &str| format!("{kind}-{round}");
        batched.push(rt.block_on(headroom(
            dir,
            &label("batched"),
            sizes.headroom_batched,
            HEADROOM_BATCH,
        ))?);
        single.push(rt.block_on(headroom(dir, &label("single"), sizes.headroom_single, 1))?);
    }
    if batched.len() > 1 {
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        report.detail(format!(
            "queue headroom, {} rounds (the table has the medians): batched {} jobs/s; one job \
             per transaction {} jobs/s",
            batched.len(),
            list(&batched),
            list(&single),
        ));
    }
    let (batched, single) = (median(&batched), median(&single));
    report.add(
        "Queue headroom",
        &format!("claim + complete, batches of {HEADROOM_BATCH}, jobs/s"),
        format!("{batched:.0}"),
        ">= 20000",
        Some(batched >= 20_000.0),
    );
    report.add(
        "Queue headroom",
        "same, one job per transaction, jobs/s",
        format!("{single:.0} ({:.1}x slower)", batched / single),
        "comparison",
        None,
    );

    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Queue headroom: the real claim/complete code, the API call replaced by an instant answer.

async fn headroom(dir: &Path, label: &str, jobs: usize, batch: i64) -> Result<f64> {
    let path = dir.join(format!("headroom-{label}.db"));
    let db = Store::open(&path).await?;
    let ids: Vec<String> = (0..jobs).map(|i| format!("GID_bench@@@hr{i:08}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|c| (INSTANCE, c.as_str())).collect();
    deregd::store::submit::submit(&db, &pairs, "headroom").await?;
    let owner = "bench-headroom";
    let started = Instant::now();
    let mut done = 0usize;
    loop {
        let claimed =
            jobs::claim(&db, owner, batch, now_ms() + 60_000, &Default::default()).await?;
        if claimed.is_empty() {
            break;
        }
        let second = now_ms() / 1000;
        let completions: Vec<Completion> = claimed
            .iter()
            .map(|job| Completion {
                job_id: job.id,
                instance_id: job.instance_id.clone(),
                status: Status::Succeeded,
                count_attempt: true,
                next_attempt_at: 0,
                code: None,
                message: None,
                request_id: Some(format!("00000000-0000-0000-0000-{:012}", job.id)),
                billed_second: Some(second),
            })
            .collect();
        let updated = jobs::complete(&db, owner, &completions).await?;
        ensure!(updated as usize == claimed.len(), "complete lost jobs");
        done += claimed.len();
    }
    let secs = started.elapsed().as_secs_f64();
    db.close().await;
    ensure!(done == jobs, "headroom: {done} of {jobs} jobs done");
    let rate = done as f64 / secs;
    println!("  {label}: {done} jobs in {secs:.2} s = {rate:.0} jobs/s");
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// Bulk submit against sqlite3 .import.

fn bulk_submit(dir: &Path, report: &mut Report, n: usize, repeats: usize) -> Result<PathBuf> {
    let ids = dir.join("submit-ids.txt");
    write_ids(&ids, "bulk", n)?;
    // Each round times deregd, then sqlite3's staged and bare imports, back to back.
    let mut rounds = Vec::new();
    for round in 0..repeats {
        rounds.push(bulk_round(dir, &ids, n, round)?);
    }
    let mid = |f: fn(&BulkRound) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let ours = mid(|r| r.ours);
    let staging = mid(|r| r.staging);
    let bare = mid(|r| r.bare);
    let vs_staging = mid(|r| r.ours / r.staging);
    let vs_bare = mid(|r| r.ours / r.bare);

    let b = "Bulk submit";
    let label = format!("{n} ids");
    report.add(
        b,
        &format!("deregd submit, {label}"),
        format!("{ours:.2} s"),
        "<= 5 s (at 1,000,000)",
        Some(ours <= 5.0),
    );
    report.add(
        b,
        "sqlite3 .import to staging + INSERT ... SELECT into jobs",
        format!("{staging:.2} s"),
        "comparison",
        None,
    );
    report.add(
        b,
        "deregd submit / staged import",
        format!("{vs_staging:.2}x"),
        "<= 1.5x",
        Some(vs_staging <= 1.5),
    );
    report.add(
        b,
        "bare .import into an unindexed table; deregd submit / bare",
        format!("{bare:.2} s; {vs_bare:.2}x"),
        "comparison",
        None,
    );
    if rounds.len() > 1 {
        let list =
            |f: &dyn Fn(&BulkRound) -> String| rounds.iter().map(f).collect::<Vec<_>>().join(", ");
        report.detail(format!(
            "bulk submit, {} rounds (the table has each figure's median; a ratio is the median \
             of each round's): deregd {} s; staged import {} s; bare import {} s",
            rounds.len(),
            list(&|r| format!("{:.2}", r.ours)),
            list(&|r| format!("{:.2}", r.staging)),
            list(&|r| format!("{:.2}", r.bare)),
        ));
    }
    Ok(dir.join("submit-0.db"))
}

/// Seconds of one bulk-submit round.
struct BulkRound {
    ours: f64,
    staging: f64,
    bare: f64,
}

/// `deregd submit` of `ids` into a fresh database, then the same file through `sqlite3`. The
/// first round's database is kept for the memory run; later rounds' are deleted.
fn bulk_round(dir: &Path, ids: &Path, n: usize, round: usize) -> Result<BulkRound> {
    let db = dir.join(format!("submit-{round}.db"));
    let started = Instant::now();
    submit(&db, ids, "bulk")?;
    let ours = started.elapsed().as_secs_f64();
    ensure!(count_jobs(&db)? == n as u64, "deregd submit lost ids");

    // Same table, same pragmas as the daemon: staging table, then INSERT ... SELECT.
    let staged = dir.join(format!("staged-{round}.db"));
    let status = deregd(&staged, None, 280)
        .arg("migrate")
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "deregd migrate failed");
    let script = format!(
        ".timeout 5000\nPRAGMA journal_mode=WAL;\nPRAGMA synchronous=NORMAL;\n\
         PRAGMA temp_store=MEMORY;\nCREATE TEMP TABLE staging(client_id TEXT);\n\
         .import --csv {ids} staging\nBEGIN IMMEDIATE;\n\
         INSERT INTO jobs (instance_id, client_id, run) SELECT '{INSTANCE}', client_id, 'bulk' FROM staging;\n\
         COMMIT;\n",
        ids = ids.display()
    );
    let staging = time_sqlite3(&staged, &script)?;
    ensure!(count_jobs(&staged)? == n as u64, "staged import lost ids");

    let bare_db = dir.join(format!("bare-{round}.db"));
    let script = format!(
        "PRAGMA journal_mode=WAL;\nPRAGMA synchronous=NORMAL;\nCREATE TABLE ids(client_id TEXT);\n\
         .import --csv {ids} ids\n",
        ids = ids.display()
    );
    let bare = time_sqlite3(&bare_db, &script)?;
    let mut spent = vec![staged, bare_db];
    if round > 0 {
        spent.push(db);
    }
    for db in spent {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = db.clone().into_os_string();
            path.push(suffix);
            let _ = fs::remove_file(path);
        }
    }
    Ok(BulkRound {
        ours,
        staging,
        bare,
    })
}

fn time_sqlite3(db: &Path, script: &str) -> Result<f64> {
    let started = Instant::now();
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("sqlite3 (the shell) is needed")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}

fn count_jobs(db: &Path) -> Result<u64> {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("SELECT count(*) FROM jobs")
        .output()?;
    ensure!(out.status.success(), "sqlite3 count failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

// ---------------------------------------------------------------------------------------------
// Memory while draining a large queue.

fn memory(dir: &Path, report: &mut Report, db: &Path, sizes: &Sizes) -> Result<()> {
    let emulator = EmulatorProc::start(dir, "memory")?;
    let child = deregd(db, Some(&emulator), 490)
        .arg("run")
        .stderr(log_file(dir, "memory")?)
        .spawn()?;
    let pid = child.id() as i32;
    let until = Instant::now() + Duration::from_secs(sizes.memory_secs);
    let mut hwm_kb = 0;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        hwm_kb = vm_hwm_kb(pid).context("deregd run died during the memory run")?;
    }
    terminate(pid);
    let reaped = wait_reaped(child, Duration::from_secs(30))?;
    ensure!(reaped.code == 0, "deregd run exited with {}", reaped.code);
    let stats = emulator.stop()?;
    let mb = hwm_kb as f64 / 1024.0;
    report.add(
        "Memory",
        &format!(
            "peak RSS (VmHWM) of deregd run, {} s drain of {} queued jobs",
            sizes.memory_secs, sizes.submit_ids
        ),
        format!("{mb:.1} MiB"),
        "<= 40 MB",
        Some(mb <= 40.0),
    );
    report.detail(format!(
        "memory run: {} calls in {} s; ru_maxrss {:.1} MiB",
        num(&stats, "total_requests")?,
        sizes.memory_secs,
        reaped.maxrss_kb as f64 / 1024.0
    ));
    Ok(())
}

fn vm_hwm_kb(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM (process gone?)")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

// ---------------------------------------------------------------------------------------------
// Pick-up latency: sqlite3 INSERT while idle -> the call reaching the emulator.

fn pickup_latency(dir: &Path, report: &mut Report, samples: usize) -> Result<()> {
    let db = dir.join("latency.db");
    let status = deregd(&db, None, 280)
        .arg("migrate")
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "deregd migrate failed");
    let emulator = EmulatorProc::start(dir, "latency")?;
    let child = deregd(&db, Some(&emulator), 280)
        .arg("run")
        .stderr(log_file(dir, "latency")?)
        .spawn()?;
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(1500));
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        // Spread the inserts over the daemon's poll phase.
        std::thread::sleep(Duration::from_millis(150 + (i as u64 * 137) % 400));
        let before = num(&emulator.stats()?, "total_requests")?;
        let sql = format!(
            "INSERT INTO jobs (instance_id, client_id) VALUES ('{INSTANCE}', 'GID_bench@@@lat{i:05}')"
        );
        let t0 = unix_us();
        let out = Command::new("sqlite3")
            .arg(&db)
            .args([".timeout 5000", &sql])
            .output()?;
        ensure!(
            out.status.success(),
            "sqlite3 insert failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let arrived = loop {
            let stats = emulator.stats()?;
            if num(&stats, "total_requests")? > before {
                break num(&stats, "last_arrival_unix_us")?;
            }
            ensure!(
                Instant::now() < deadline,
                "the inserted job never reached the emulator"
            );
            std::thread::sleep(Duration::from_millis(3));
        };
        latencies.push(arrived.saturating_sub(t0) as f64 / 1000.0);
    }
    terminate(pid);
    let reaped = wait_reaped(child, Duration::from_secs(30))?;
    ensure!(reaped.code == 0, "deregd run exited with {}", reaped.code);
    emulator.stop()?;
    latencies.sort_by(f64::total_cmp);
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    let b = "Pick-up latency";
    report.add(
        b,
        &format!("INSERT to call, p50 over {samples} inserts"),
        format!("{p50:.0} ms"),
        "comparison",
        None,
    );
    report.add(
        b,
        &format!("INSERT to call, p99 over {samples} inserts"),
        format!("{p99:.0} ms (max {:.0} ms)", latencies[latencies.len() - 1]),
        "<= 1000 ms",
        Some(p99 <= 1000.0),
    );
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// `deregd` with a database, an endpoint and a cap, configured through the environment.
fn deregd(db: &Path, emulator: Option<&EmulatorProc>, qps: u32) -> Command {
    let mut cmd = Command::new(deregd_binary());
    cmd.env_remove("DEREGD_CONFIG")
        .env("DEREGD_DATABASE__PATH", db)
        .env("DEREGD_LIMITS__QPS", qps.to_string())
        .env("DEREGD_API__SOURCE_ADDRESSES", source_addresses(qps))
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid")
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(e) = emulator {
        cmd.env("DEREGD_API__ENDPOINT", format!("http://{}", e.address()));
    }
    cmd
}

/// Source addresses for a cap: one source address may carry `limits.source_qps` (280), so a
/// cap above it is spread over two loopback addresses, as a host with two egress addresses
/// would be (the emulator counts each source's calls).
fn source_addresses(qps: u32) -> &'static str {
    if qps > 280 {
        "127.0.0.1,127.0.0.2"
    } else {
        ""
    }
}

fn submit(db: &Path, ids: &Path, run: &str) -> Result<()> {
    let out = deregd(db, None, 280)
        .args(["submit", "--instance", INSTANCE, "--run", run])
        .arg(ids)
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success(),
        "deregd submit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn write_ids(path: &Path, prefix: &str, n: usize) -> Result<()> {
    let mut out = std::io::BufWriter::new(fs::File::create(path)?);
    for i in 0..n {
        writeln!(out, "GID_bench@@@{prefix}{i:08}")?;
    }
    out.flush()?;
    Ok(())
}

fn log_file(dir: &Path, name: &str) -> Result<fs::File> {
    Ok(fs::File::create(dir.join(format!("{name}.log")))?)
}

fn terminate(pid: i32) {
    // SAFETY: plain kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// A child reaped with wait4: its exit code and resource usage (all its threads).
struct Reaped {
    code: i32,
    cpu_s: f64,
    maxrss_kb: i64,
}

/// Waits until `child` exits (killing it after `limit`), then reaps it with wait4 to read its
/// CPU time.
fn wait_reaped(child: Child, limit: Duration) -> Result<Reaped> {
    let pid = child.id() as i32;
    // Reaped here by wait4, not by std: dropping a Child neither waits nor kills.
    drop(child);
    let deadline = Instant::now() + limit;
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if state == Some("Z") || stat.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            reap(pid)?;
            bail!("pid {pid} ran longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reap(pid)
}

fn reap(pid: i32) -> Result<Reaped> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(
        r == pid,
        "wait4({pid}): {}",
        std::io::Error::last_os_error()
    );
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Reaped {
        code,
        cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        maxrss_kb: usage.ru_maxrss,
    })
}

/// `deregd emulator` as its own process, so its CPU is charged to neither client.
struct EmulatorProc {
    child: Child,
    port: u16,
}

impl EmulatorProc {
    fn start(dir: &Path, name: &str) -> Result<EmulatorProc> {
        EmulatorProc::start_with(dir, name, &[])
    }

    /// As [`EmulatorProc::start`], with more `deregd emulator` arguments.
    fn start_with(dir: &Path, name: &str, extra: &[String]) -> Result<EmulatorProc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(deregd_binary())
            .arg("emulator")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--rate-limit", &EMULATOR_RATE_LIMIT.to_string()])
            .args(["--latency-ms", &LATENCY_MS.to_string()])
            .args(["--jitter-ms", &JITTER_MS.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, &format!("emulator-{name}"))?)
            .spawn()?;
        let emulator = EmulatorProc { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while emulator.stats().is_err() {
            ensure!(Instant::now() < deadline, "the emulator did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(emulator)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `GET /__emulator/stats`.
    fn stats(&self) -> Result<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /__emulator/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let body = raw.split_once("\r\n\r\n").context("no HTTP body")?.1;
        let json =
            &body[body.find('{').context("no JSON")?..=body.rfind('}').context("no JSON")?];
        Ok(serde_json::from_str(json)?)
    }

    fn stop(mut self) -> Result<Value> {
        let stats = self.stats()?;
        terminate(self.child.id() as i32);
        self.child.wait()?;
        Ok(stats)
    }
}

impl Drop for EmulatorProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn num(v: &Value, key: &str) -> Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .with_context(|| format!("no number {key:?} in {v}"))
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// The report.

fn render(args: &Args, sizes: &Sizes, report: &Report, elapsed: Duration) -> Result<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::new();
    let title = if args.quick {
        "deregd benchmarks (quick mode: small sizes, checks the suite works)"
    } else {
        "deregd benchmarks"
    };
    writeln!(md, "# {title}\n")?;
    writeln!(md, "Generated by `{}`; do not edit by hand (the notes at the end come from `bench/notes.md`).\n", args.command)?;
    writeln!(
        md,
        "- Date: {} UTC",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    )?;
    writeln!(md, "- Machine: {cores} cores, {model}")?;
    match &args.only {
        Some(only) => writeln!(
            md,
            "- Command: `{} --only {only}` (one section)",
            args.command
        )?,
        None => writeln!(md, "- Command: `{}`", args.command)?,
    }
    writeln!(
        md,
        "- Emulator: `deregd emulator` as its own process, rate limit {EMULATOR_RATE_LIMIT}/s \
         (strict sliding second), latency {LATENCY_MS}±{JITTER_MS} ms"
    )?;
    writeln!(
        md,
        "- Sizes: {} jobs per pacing run ({} deregd runs per cap, each followed by a floor \
         run), {} / {} jobs for queue headroom (batched / single), {} ids submitted ({} rounds), \
         {} s memory run, {} latency samples",
        sizes.pacing_jobs,
        sizes.pacing_repeats,
        sizes.headroom_batched,
        sizes.headroom_single,
        sizes.submit_ids,
        sizes.submit_repeats,
        sizes.memory_secs,
        sizes.latency_samples
    )?;
    writeln!(
        md,
        "- Benchmark time: {:.0} s (build excluded)\n",
        elapsed.as_secs_f64()
    )?;
    writeln!(md, "| Benchmark | Figure | Value | Target | Result |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for f in &report.figures {
        let result = match f.pass {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "-",
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            f.benchmark, f.figure, f.value, f.target, result
        )?;
    }
    if !report.details.is_empty() {
        writeln!(md, "\nDetails:\n")?;
        for d in &report.details {
            writeln!(md, "- {d}")?;
        }
    }
    writeln!(md, "\n## How each figure is measured\n")?;
    md.push_str(METHOD);
    let notes = Path::new(ROOT).join("bench/notes.md");
    if let Ok(text) = fs::read_to_string(notes) {
        writeln!(md)?;
        md.push_str(&text);
    }
    Ok(md)
}

const METHOD: &str = "\
- **Pacing precision**: per cap, a fresh database gets the jobs through `deregd submit` \
(not timed), a fresh emulator process starts, and `deregd run --until-empty` drains the queue \
with `DEREGD_LIMITS__QPS` = the cap. The emulator records the wall-clock time of every request \
it receives, as the kernel stamped its bytes on receipt (`SO_TIMESTAMPNS`: a stall of the \
emulator's own threads does not bunch the stamps); the achieved rate is (calls - 1) / (last arrival - first arrival), i.e. the steady \
part from the first to the last call, start-up and the drain of the last answers excluded. \
The largest sliding second is the emulator's `max_arrivals_per_sliding_second` (every arrival, \
throttled or not, in any window [t, t + 1 s)). Throttled calls are the emulator's count. \
The full run does this three times per cap for deregd (a fresh database and emulator each \
time) and reports each figure's median (throttled calls: the most of any run); the details \
list every run. The SDK baseline runs once per cap.
- **CPU per call**: user + system seconds of the whole `deregd run` process (all threads, \
start-up and migration included), read with `wait4` when it is reaped, divided by the calls \
the emulator saw. The baseline is `bench/sdk_baseline.py`: the vendor's Python SDK \
(`alibabacloud-onsmqtt20200420`, default V3 signing, plain http), 64 threads, one client per \
thread, at most *cap* calls started per calendar second, no retries; same ids, its own fresh \
emulator; its CPU is the whole Python process's, measured the same way (interpreter start-up \
and imports included, as for deregd). Ratios are deregd / SDK. The floor is this benchmark \
run as a bare client (`suite --floor-client`) right after each deregd run, same number of \
calls, its own fresh emulator, its CPU measured the same way: each call is signed as deregd signs it (V3, \
fresh timestamp and nonce) and written on a kept-alive TCP connection, the answer read up to \
its `content-length`; no HTTP library, queue, database or retries; one timer tick per call on \
a current-thread runtime. It is what one signed exchange costs on this host. \
\"deregd vs the floor\" is the median of the ratios of each deregd run to the floor run after \
it, so each ratio compares two runs made within a minute or two of each other.
- **Queue headroom**: in-process, the real `deregd::store::jobs::claim` and `deregd::store::jobs::complete` \
on a fresh WAL database with the daemon's pragmas; each claimed job is completed at once as \
succeeded with a request id and a `tps_usage` count (what a real success writes). Batched: claim \
256, complete those 256 in one transaction. Single: claim 1, complete 1, per transaction.
- **Bulk submit**: wall time of `deregd submit --instance ... FILE` into a fresh database \
(creation and migration included), against `sqlite3` reading the same file into a migrated \
database with the daemon's pragmas: `.import --csv` into a TEMP staging table, then one \
`INSERT INTO jobs ... SELECT` (the `jobs` indexes are maintained); and a bare `.import` into an \
unindexed one-column table. deregd also validates and deduplicates every line. The full run \
makes three such rounds (deregd, then both imports, each into a fresh database) and reports \
each time's median, and each ratio as the median of the rounds' ratios.
- **Memory**: `deregd run` (at 490/s) drains the database of the bulk-submit step; VmHWM from \
`/proc/PID/status` is read every 250 ms and the last reading (the peak so far) is reported at \
the end of the run.
- **Pick-up latency**: `deregd run` idles on an empty database (default 250 ms poll interval); \
each sample takes the wall-clock time just before spawning `sqlite3 DB \"INSERT ...\"` (so it \
includes the shell's start-up) and the emulator's wall-clock arrival time of that job's call. \
Inserts are spread 150-550 ms apart. Percentiles are nearest-rank (p99 of 50 samples is the \
maximum).
";
