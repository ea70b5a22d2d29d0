//! Test helpers: a fresh database and an in-process emulator per test, settings tuned for speed
//! (millisecond backoffs, generous quotas), and a timeout around every end-to-end run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use deregd::api::ApiClient;
use deregd::config::Settings;
use deregd::credentials::{Credentials, Secret};
use deregd::store::Store;
use deregd::worker::{self, RunOptions, Shared};
use onsmqtt_emulator::{Emulator, EmulatorSettings};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

pub(crate) struct App {
    pub dir: tempfile::TempDir,
    pub db: Store,
    pub settings: Settings,
    pub emulator: Emulator,
}

/// Fails the test if `future` takes longer than `secs`.
pub(crate) async fn within<T>(secs: u64, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs} s"))
}

pub(crate) fn fast_settings(db_path: PathBuf, endpoint: &str) -> Settings {
    let mut s = Settings::load_from(None, &BTreeMap::new()).expect("defaults are valid");
    s.database.path = db_path;
    s.api.endpoint = endpoint.to_string();
    s.api.request_timeout = Duration::from_millis(2000);
    s.api.connect_timeout = Duration::from_millis(1000);
    s.limits.qps = 450;
    s.limits.max_in_flight = 32;
    s.limits.pause_probe = Duration::from_secs(60);
    s.retry.base_delay = Duration::from_millis(10);
    s.retry.max_delay = Duration::from_millis(100);
    s.retry.max_attempts = 8;
    s.worker.poll_interval = Duration::from_millis(50);
    s.worker.lease = Duration::from_secs(30);
    s.worker.shutdown_grace = Duration::from_secs(2);
    s.validate().expect("test settings are valid");
    s
}

pub(crate) fn credentials(secret: &str) -> Credentials {
    Credentials {
        access_key_id: "testid".into(),
        access_key_secret: Secret::new(secret),
        security_token: None,
    }
}

pub(crate) async fn spawn_app(emulator: EmulatorSettings) -> App {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deregd.db");
    spawn_app_at(dir, path, emulator).await
}

/// As [`spawn_app`], with the database at `path` (inside `dir`, which the app keeps).
pub(crate) async fn spawn_app_at(
    dir: tempfile::TempDir,
    path: PathBuf,
    emulator: EmulatorSettings,
) -> App {
    let emulator = Emulator::start(emulator).await.unwrap();
    let settings = fast_settings(path.clone(), &emulator.endpoint());
    let db = Store::open(&path).await.unwrap();
    App {
        dir,
        db,
        settings,
        emulator,
    }
}

impl App {
    pub(crate) fn db_path(&self) -> PathBuf {
        self.settings.database.path.clone()
    }

    /// Inserts jobs the way an operator does, by plain SQL.
    pub(crate) async fn insert(&self, instance: &str, clients: &[String]) {
        let mut tx = self.db.begin_write().await.unwrap();
        for c in clients {
            sqlx::query("INSERT INTO jobs (instance_id, client_id) VALUES (?1, ?2)")
                .bind(instance)
                .bind(c)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }

    /// Runs the worker until the queue is empty, with the given credentials secret.
    pub(crate) async fn run_until_empty(&self, secret: &str) {
        self.run_with(
            credentials(secret),
            RunOptions { until_empty: true },
            CancellationToken::new(),
        )
        .await
        .unwrap();
    }

    pub(crate) async fn run_with(
        &self,
        credentials: Credentials,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let client = ApiClient::new(&self.settings, credentials).unwrap();
        worker::run(
            self.db.clone(),
            client,
            self.settings.clone(),
            shutdown,
            options,
            Shared::new(&self.settings.limits),
        )
        .await
    }

    pub(crate) async fn count(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = ?1")
            .bind(status)
            .fetch_one(&self.db.reader)
            .await
            .unwrap()
    }

    pub(crate) async fn billed_total(&self) -> i64 {
        sqlx::query_scalar("SELECT COALESCE(SUM(calls), 0) FROM tps_usage")
            .fetch_one(&self.db.reader)
            .await
            .unwrap()
    }

    /// (status, attempts, last_code, last_message, request_id) of one job.
    pub(crate) async fn job(
        &self,
        client: &str,
    ) -> (String, i64, Option<String>, Option<String>, Option<String>) {
        let r = sqlx::query(
            "SELECT status, attempts, last_code, last_message, request_id FROM jobs WHERE client_id = ?1",
        )
        .bind(client)
        .fetch_one(&self.db.reader)
        .await
        .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    }
}

pub(crate) fn devices(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("GID_fleet@@@{prefix}-{i}"))
        .collect()
}

pub(crate) const INSTANCE: &str = "post-cn-0pp12gl0001";

/// `deregd` as a child process pointed at this app's database and emulator, with the test
/// settings of [`fast_settings`] as env vars and the emulator's default key. Output is piped.
pub(crate) fn deregd(app: &App) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deregd"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DEREGD_DATABASE__PATH", app.db_path())
        .env("DEREGD_API__ENDPOINT", app.emulator.endpoint())
        .env("DEREGD_API__REQUEST_TIMEOUT_MS", "2000")
        .env("DEREGD_API__CONNECT_TIMEOUT_MS", "1000")
        .env("DEREGD_LIMITS__QPS", "450")
        .env("DEREGD_LIMITS__MAX_IN_FLIGHT", "32")
        .env("DEREGD_LIMITS__PAUSE_PROBE_SECS", "60")
        .env("DEREGD_RETRY__BASE_DELAY_MS", "10")
        .env("DEREGD_RETRY__MAX_DELAY_MS", "100")
        .env("DEREGD_WORKER__POLL_INTERVAL_MS", "50")
        .env("DEREGD_WORKER__LEASE_SECS", "30")
        .env("DEREGD_WORKER__SHUTDOWN_GRACE_SECS", "2")
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "testid")
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testsecret")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A spawned child whose output is collected in the background, so it can be signalled.
pub(crate) struct Child {
    pub pid: i32,
    output: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
}

impl Child {
    pub(crate) fn spawn(mut cmd: tokio::process::Command) -> Child {
        let child = cmd.spawn().expect("deregd starts");
        let pid = child.id().expect("running") as i32;
        Child {
            pid,
            output: tokio::spawn(child.wait_with_output()),
        }
    }

    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped yet.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Waits for exit: (exit code, or None when killed by a signal; stdout; stderr).
    pub(crate) async fn wait(self) -> (Option<i32>, String, String) {
        let out = self.output.await.unwrap().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Runs the `sqlite3` shell on `db` with a busy timeout, as an operator would.
pub(crate) async fn sqlite3(db: &std::path::Path, sql: &str) -> std::process::Output {
    tokio::process::Command::new("sqlite3")
        .arg(db)
        .arg(".timeout 5000")
        .arg(sql)
        .output()
        .await
        .expect("sqlite3 runs")
}

/// Polls `check` every 20 ms until it holds.
pub(crate) async fn until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while !check().await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tests that measure a rate hold this exclusively; every other test shares it, so nothing in
/// this binary competes for the 2 cores while a rate is measured.
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A share of the machine, for an async test that measures no rate.
pub(crate) async fn cpu_shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.read().await
}

/// A share of the machine, for a test without a runtime (process-level CLI tests).
pub(crate) fn cpu_shared_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.blocking_read()
}

/// The whole machine, for a test that measures a rate.
pub(crate) async fn cpu_exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CPU.write().await
}

/// A loopback port nothing listens on, and that nothing else in this test process will be
/// handed: ports come in turn from below the kernel's ephemeral range (where every port-0
/// bind, each test's emulator among them, is given its port), so a port left free on purpose
/// (an endpoint that is down) is not taken meanwhile by another test's listener.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() * 97 % SPAN;
    loop {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Peak resident memory of process `pid`, KiB (`VmHWM`).
pub(crate) fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) process `pid` has used, seconds.
pub(crate) fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Holds the database's write lock from a connection of its own until `release` is
/// cancelled, as a long transaction in the `sqlite3` shell or a backup does. Resolves once
/// the lock is taken.
pub(crate) async fn hold_write_lock(
    db: &std::path::Path,
    release: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::spawn(async move {
        release.cancelled().await;
        sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    })
}
