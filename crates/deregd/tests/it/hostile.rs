//! A hostile network and hostile operators: answers without end or of absurd fields, an
//! endpoint that is down for a minute, a flood of idle connections to /metrics, other paths to
//! a database already dispatched from, and hand-typed values of every wrong type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onsmqtt_emulator::{Emulator, EmulatorSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::*;

/// What the fake gateway answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// A 200 whose body claims 100 MB, and keeps coming.
    Huge,
    /// A 200 with a chunked body that never ends.
    Endless,
    /// A 200 with a 60 KB RequestId.
    LongRequestId,
    /// A 400 with a 60 KB Code and Message.
    LongCode,
    /// A 400 with a code never seen before, every time.
    NewCodes,
    /// A proxy's HTML 502 that echoes the request line (with V2, the signed query and the STS
    /// token in it).
    EchoingProxy,
}

/// Serves `answer` to every request on a loopback port; returns its address.
async fn fake_gateway(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    // One request head.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&seen).into_owned();
                    seen.clear();
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let chunk = vec![b'A'; 64 * 1024];
                    match answer {
                        Answer::Huge => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
                                .await;
                            while socket.write_all(&chunk).await.is_ok() {}
                            return;
                        }
                        Answer::Endless => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                                .await;
                            loop {
                                let mut piece = b"10000\r\n".to_vec();
                                piece.extend_from_slice(&chunk);
                                piece.extend_from_slice(b"\r\n");
                                if socket.write_all(&piece).await.is_err() {
                                    return;
                                }
                            }
                        }
                        _ => {
                            let (status, body) = match answer {
                                Answer::LongRequestId => (
                                    "200 OK",
                                    format!(r#"{{"RequestId":"{}"}}"#, "R".repeat(60_000)),
                                ),
                                Answer::LongCode => (
                                    "400 Bad Request",
                                    format!(
                                        r#"{{"RequestId":"r","Code":"{}","Message":"{}"}}"#,
                                        "C".repeat(30_000),
                                        "m ".repeat(15_000)
                                    ),
                                ),
                                Answer::NewCodes => (
                                    "400 Bad Request",
                                    format!(r#"{{"RequestId":"r","Code":"Weird{n}","Message":"?"}}"#),
                                ),
                                _ => (
                                    "502 Bad Gateway",
                                    format!(
                                        "<html><body><h1>502 Bad Gateway</h1><p>upstream error for {}</p></body></html>",
                                        head.lines().next().unwrap_or("")
                                    ),
                                ),
                            };
                            let out = format!(
                                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if socket.write_all(out.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// What one run against a fake gateway left behind.
struct Left {
    peak_rss_mib: f64,
    metrics: String,
    stderr: String,
}

/// Runs the daemon against `answer` for a few seconds with 64 calls in flight.
async fn run_against(app: &App, answer: Answer, extra: &[(&str, &str)]) -> Left {
    let endpoint = fake_gateway(answer).await;
    let port = free_port();
    let mut cmd = deregd(app);
    cmd.env("DEREGD_API__ENDPOINT", &endpoint)
        .env("DEREGD_LIMITS__MAX_IN_FLIGHT", "64")
        .env("DEREGD_LIMITS__QPS", "280")
        .env("DEREGD_RETRY__MAX_ATTEMPTS", "3")
        .env("DEREGD_METRICS__LISTEN", format!("127.0.0.1:{port}"));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.arg("run");
    let child = Child::spawn(cmd);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak_rss_mib = peak_rss_kib(child.pid) as f64 / 1024.0;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    child.signal(libc::SIGTERM);
    let (_, _, stderr) = within(60, child.wait()).await;
    Left {
        peak_rss_mib,
        metrics,
        stderr,
    }
}

async fn longest(app: &App, column: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT COALESCE(MAX(length({column})), 0) FROM jobs"
    ))
    .fetch_one(&app.db.reader)
    .await
    .unwrap()
}

#[tokio::test]
async fn answers_without_end_are_never_buffered_whole() {
    let _cpu = cpu_shared().await;
    for answer in [Answer::Huge, Answer::Endless] {
        let app = spawn_app(EmulatorSettings::default()).await;
        app.insert(INSTANCE, &devices("big", 3000)).await;
        let left = run_against(&app, answer, &[]).await;
        assert!(
            left.peak_rss_mib < 100.0,
            "{} MiB with 64 in flight",
            left.peak_rss_mib
        );
        let (_, _, code, _, _) = app.job("GID_fleet@@@big-0").await;
        assert_eq!(code.as_deref(), Some("OversizedAnswer"));
        assert_eq!(app.count("succeeded").await, 0, "never billed as a success");
    }
}

#[tokio::test]
async fn absurd_fields_are_stored_logged_and_labelled_bounded() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("rid", 200)).await;
    let left = run_against(&app, Answer::LongRequestId, &[]).await;
    assert!(app.count("succeeded").await > 0);
    assert!(longest(&app, "request_id").await <= 64);

    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("code", 200)).await;
    let left_code = run_against(&app, Answer::LongCode, &[]).await;
    assert!(longest(&app, "last_code").await <= 64);
    assert!(longest(&app, "last_message").await <= 310);
    assert!(
        !left_code.stderr.contains(&"C".repeat(100)),
        "a 30 KB code logged"
    );
    assert!(
        left_code.metrics.contains("code=\"other\""),
        "{}",
        left_code.metrics
    );
    assert!(!left_code.metrics.contains("CCCCCCCCCC"));
    drop(left);

    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("new", 3000)).await;
    let left = run_against(&app, Answer::NewCodes, &[]).await;
    let series = left
        .metrics
        .lines()
        .filter(|l| l.starts_with("deregd_calls_total{"))
        .count();
    assert!(series <= 3, "{series} series: {}", left.metrics);
}

#[tokio::test]
async fn a_proxy_page_echoing_the_signed_query_keeps_no_token() {
    let _cpu = cpu_shared().await;
    let token = "CAIS9AF1q6Ft5B2yfSjIr5bkEOvZn5oQ2ZWtd1XQj2cGS5Q3Y";
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("proxy", 50)).await;
    let left = run_against(
        &app,
        Answer::EchoingProxy,
        &[
            ("DEREGD_API__SIGNATURE", "v2"),
            ("ALIBABA_CLOUD_SECURITY_TOKEN", token),
        ],
    )
    .await;
    let (_, _, code, message, _) = app.job("GID_fleet@@@proxy-0").await;
    assert_eq!(code.as_deref(), Some("HTTP502"));
    let message = message.unwrap_or_default();
    assert!(message.contains("502 Bad Gateway"), "{message}");
    let dump = sqlx::query_scalar::<_, String>(
        "SELECT group_concat(COALESCE(last_message, ''), ' ') FROM jobs",
    )
    .fetch_one(&app.db.reader)
    .await
    .unwrap();
    assert!(!dump.contains(token), "{dump}");
    assert!(!dump.contains("Signature="), "{dump}");
    assert!(!left.stderr.contains(token));
    let mut jobs = deregd(&app);
    jobs.args(["jobs", "--format", "csv"]);
    let out = within(30, jobs.output()).await.unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
}

#[tokio::test]
async fn an_endpoint_down_for_a_minute_fails_no_job_and_every_job_succeeds_once_it_is_back() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("down", 3000)).await;
    let port = free_port();
    let mut cmd = deregd(&app);
    cmd.env("DEREGD_API__ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("DEREGD_LIMITS__PAUSE_PROBE_SECS", "5")
        .args(["run", "--until-empty"]);
    let child = Child::spawn(cmd);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut status = deregd(&app);
    status.arg("status");
    let out = within(30, status.output()).await.unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("EndpointUnreachable"), "{shown}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(app.count("failed").await, 0);
    let emulator = Emulator::start(EmulatorSettings {
        listen: ([127, 0, 0, 1], port).into(),
        ..EmulatorSettings::default()
    })
    .await
    .unwrap();
    let (code, _, stderr) = within(120, child.wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(app.count("failed").await, 0);
    assert_eq!(app.count("succeeded").await, 3000);
    let max_attempts: i64 = sqlx::query_scalar("SELECT MAX(attempts) FROM jobs")
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
    assert!(
        max_attempts <= 2,
        "attempts spent on the outage: {max_attempts}"
    );
    drop(emulator);
}

#[tokio::test]
async fn a_flood_of_idle_connections_leaves_healthz_reachable_and_the_daemon_calm() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let port = free_port();
    let mut cmd = deregd(&app);
    cmd.env("DEREGD_METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .arg("run");
    let child = Child::spawn(cmd);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    within(10, until(|| async { reqwest::get(&healthz).await.is_ok() })).await;
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            idle.push(s);
        }
    }
    assert!(idle.len() > 1000, "{} connections opened", idle.len());
    let cpu_before = cpu_secs(child.pid);
    let started = Instant::now();
    let reached = within(20, async {
        loop {
            if let Ok(r) = reqwest::get(&healthz).await {
                return r.status();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(reached, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = (cpu_secs(child.pid) - cpu_before) / started.elapsed().as_secs_f64();
    assert!(
        busy < 0.5,
        "the daemon spun at {:.0} % of a core",
        busy * 100.0
    );
    drop(idle);
    child.signal(libc::SIGTERM);
    let (code, _, stderr) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn another_path_to_a_database_already_dispatched_from_is_refused() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let mut first = deregd(&app);
    first.arg("run");
    let first = Child::spawn(first);
    let note = app.dir.path().join("deregd.db.lock");
    within(
        10,
        until(|| async { std::fs::read_to_string(&note).is_ok_and(|s| s.contains("pid")) }),
    )
    .await;
    let symlink = app.dir.path().join("symlink.db");
    std::os::unix::fs::symlink(app.db_path(), &symlink).unwrap();
    let hard = app.dir.path().join("hard.db");
    std::fs::hard_link(app.db_path(), &hard).unwrap();
    let paths = [
        symlink.display().to_string(),
        hard.display().to_string(),
        "deregd.db".to_string(),
        "./sub/../deregd.db".to_string(),
    ];
    std::fs::create_dir(app.dir.path().join("sub")).unwrap();
    for path in paths {
        let mut second = deregd(&app);
        second
            .current_dir(app.dir.path())
            .env("DEREGD_DATABASE__PATH", &path)
            .arg("run");
        let out = within(10, second.output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert!(stderr.contains("already dispatching"), "{path}: {stderr}");
        assert!(stderr.contains(&format!("pid {}", first.pid)), "{stderr}");
    }
    first.signal(libc::SIGTERM);
    let (code, _, _) = within(10, first.wait()).await;
    assert_eq!(code, Some(0));
}
