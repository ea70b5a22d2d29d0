//! `deregd run` as a service: sd_notify, graceful stop, single dispatcher, SIGHUP, metrics, and
//! the unit file. Process-level: the daemon is a child, the emulator runs in the test.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::common::*;
use onsmqtt_emulator::{EmulatorSettings, Faults};

/// A NOTIFY_SOCKET the test reads, as systemd would.
/// Read continuously, as systemd does (a full queue would block the sender).
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::downgrade(&received);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Some(sink) = sink.upgrade() {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap().push(text);
                }
            }
        });
        NotifySocket {
            _dir: dir,
            path,
            received,
        }
    }

    /// Every message received so far.
    fn drain(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

fn slow_emulator() -> EmulatorSettings {
    EmulatorSettings {
        faults: Faults {
            latency_ms: 150,
            ..Faults::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn sigterm_mid_run_finishes_calls_in_flight_and_leaves_nothing_running() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(slow_emulator()).await;
    app.insert(INSTANCE, &devices("d", 3000)).await;
    let notify = NotifySocket::new();
    let mut cmd = deregd(&app);
    cmd.arg("run")
        .env("DEREGD_LIMITS__QPS", "200")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "600000");
    let child = Child::spawn(cmd);
    within(10, until(|| async { app.count("succeeded").await > 100 })).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let signalled = Instant::now();
    child.signal(libc::SIGTERM);
    let (code, _, stderr) = within(30, child.wait()).await;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    // Bounded by shutdown_grace_secs (2) + request timeout (2 s).
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(app.count("running").await, 0);
    let done = app.count("succeeded").await;
    assert!(done > 100 && done < 3000, "{done}");
    assert_eq!(done + app.count("pending").await, 3000);
    // Every call the emulator answered with success was recorded.
    let stats = app.emulator.stats();
    assert_eq!(stats.successes as i64, done, "{stderr}");
    assert_eq!(app.billed_total().await, done);
    let messages = notify.drain();
    let joined = messages.join("\n");
    assert!(messages.iter().any(|m| m.contains("READY=1")), "{joined}");
    assert!(
        messages.iter().any(|m| m.contains("STOPPING=1")),
        "{joined}"
    );
    assert!(
        messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "{joined}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("STATUS=") && m.contains("calls/s")),
        "{joined}"
    );
    assert!(stderr.contains("stopping"), "{stderr}");
}

#[tokio::test]
async fn a_second_dispatcher_on_the_same_database_is_refused() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let mut first = deregd(&app);
    first.arg("run");
    let first = Child::spawn(first);
    let lock = {
        let mut p = app.db_path().into_os_string();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    within(
        10,
        until(|| async { std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("pid")) }),
    )
    .await;
    let mut second = deregd(&app);
    second.arg("run");
    let out = within(10, second.output()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already dispatching"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid)), "{stderr}");
    first.signal(libc::SIGTERM);
    let (code, _, _) = within(10, first.wait()).await;
    assert_eq!(code, Some(0));
    // Once the first is gone, a new one starts.
    let mut third = deregd(&app);
    third.arg("run").arg("--until-empty");
    let out = within(10, third.output()).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_format() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 50)).await;
    app.insert(INSTANCE, &["GID_bad".to_string()]).await;
    let port = free_port();
    let mut cmd = deregd(&app);
    cmd.arg("run")
        .env("DEREGD_METRICS__LISTEN", format!("127.0.0.1:{port}"));
    let child = Child::spawn(cmd);
    within(10, until(|| async { app.count("succeeded").await == 50 })).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("deregd_calls_total{code=\"OK\"}"), 50.0);
    assert_eq!(
        value("deregd_billed_calls_total{instance=\"post-cn-0pp12gl0001\"}"),
        50.0
    );
    assert_eq!(value("deregd_jobs{status=\"succeeded\"}"), 50.0);
    assert_eq!(value("deregd_jobs{status=\"rejected\"}"), 1.0);
    assert_eq!(value("deregd_pacing_ceiling_calls_per_second"), 450.0);
    assert_eq!(value("deregd_paused"), 0.0);
    assert_eq!(value("deregd_calls_in_flight"), 0.0);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').expect("name value");
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample line {line:?}"));
    }
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    child.signal(libc::SIGTERM);
    assert_eq!(within(10, child.wait()).await.0, Some(0));
}

#[tokio::test]
async fn sighup_reloads_the_limits_without_a_restart() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let config = app.dir.path().join("deregd.toml");
    std::fs::write(&config, "[limits]\nqps = 20\n").unwrap();
    app.insert(INSTANCE, &devices("d", 400)).await;
    let mut cmd = deregd(&app);
    cmd.env_remove("DEREGD_LIMITS__QPS")
        .arg("run")
        .arg("--until-empty")
        .arg("--config")
        .arg(&config);
    let child = Child::spawn(cmd);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let slow = app.count("succeeded").await;
    assert!(slow <= 20 * 2 + 2, "paced at 20/s: {slow}");
    std::fs::write(&config, "[limits]\nqps = 400\n").unwrap();
    child.signal(libc::SIGHUP);
    // At 400/s the rest take about a second; at the old 20/s they would take 18.
    let (code, _, stderr) = within(8, child.wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("reloaded limits"), "{stderr}");
    assert!(stderr.contains("limits.qps=400"), "{stderr}");
    assert_eq!(app.count("succeeded").await, 400);
}

#[tokio::test]
async fn the_unit_file_passes_systemd_analyze_verify() {
    let _cpu = cpu_shared().await;
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/deregd.service"
    ))
    .unwrap();
    for needed in [
        "Type=notify",
        "ExecStart=/usr/local/bin/deregd run --config /etc/deregd/deregd.toml",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=deregd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "LoadCredential=access_key_secret:",
        "TimeoutStopSec=",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed:?}");
    }
    // Point ExecStart at the binary under test: verify wants it to exist.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deregd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/deregd", env!("CARGO_BIN_EXE_deregd")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(&*path.to_string_lossy()),
        "warnings about the unit: {stderr}"
    );
    // And the production config example loads and validates.
    deregd::config::Settings::load_from(
        Some(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/deregd.toml"
        ))),
        &Default::default(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_reload_or_a_stop_during_start_up_is_handled_not_fatal() {
    let _cpu = cpu_shared().await;
    // The lock file is written first thing, before the database is opened and migrated: a
    // signal sent the moment it appears reaches a daemon still starting up. SIGHUP's default
    // action would kill it (systemd counts that as a clean exit and does not restart it).
    let app = spawn_app(EmulatorSettings::default()).await;
    let lock = {
        let mut p = app.db_path().into_os_string();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    for (round, first) in [(0, libc::SIGHUP), (1, libc::SIGTERM), (2, libc::SIGHUP)] {
        let mut cmd = deregd(&app);
        cmd.arg("run");
        let child = Child::spawn(cmd);
        let mine = format!("pid {}", child.pid);
        let started = Instant::now();
        while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&mine)) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round {round}: no lock"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        child.signal(first);
        if first == libc::SIGHUP {
            tokio::time::sleep(Duration::from_millis(200)).await;
            child.signal(libc::SIGTERM);
        }
        let (code, _, stderr) = within(10, child.wait()).await;
        assert_eq!(code, Some(0), "round {round}, signal {first}: {stderr}");
        assert!(stderr.contains("stopping"), "round {round}: {stderr}");
    }
}
