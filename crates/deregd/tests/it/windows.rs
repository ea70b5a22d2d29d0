//! Maintenance windows through the real binary: outside every window no call goes out and
//! status names the next opening; a SIGHUP that brings a window including now starts calls; a
//! window that opens later starts them by itself and one that closes stops them; a run's own
//! windows (`submit --window`, `deregd schedule`) hold it alone; a bad spec exits 2.
//!
//! The windows are written relative to the wall clock (with seconds), so nothing sleeps over
//! real hours; the unit tests of `schedule` and `worker::windows` move a clock instead.

use std::time::Duration;

use chrono::Utc;

use crate::common::*;
use onsmqtt_emulator::EmulatorSettings;

/// `HH:MM:SS` in UTC, `offset_secs` from now.
fn utc_in(offset_secs: i64) -> String {
    at(Utc::now().timestamp() + offset_secs)
}

/// `HH:MM:SS` in UTC of a unix time.
fn at(secs: i64) -> String {
    chrono::DateTime::<Utc>::from_timestamp(secs, 0)
        .expect("in range")
        .format("%H:%M:%S")
        .to_string()
}

/// A daily window from `from` to `to` seconds from now (it runs past midnight if it has to).
fn window(from: i64, to: i64) -> String {
    format!("daily {}-{}", utc_in(from), utc_in(to))
}

fn config_with(windows: &[String]) -> String {
    let specs: Vec<String> = windows.iter().map(|w| format!("{w:?}")).collect();
    format!("[worker]\nwindows = [{}]\n", specs.join(", "))
}

async fn deregd_out(app: &App, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = deregd(app);
    cmd.args(args);
    within(30, Child::spawn(cmd).wait()).await
}

#[tokio::test]
async fn outside_every_window_no_call_goes_until_a_sighup_brings_one_that_includes_now() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 300)).await;
    let config = app.dir.path().join("deregd.toml");
    // Two hours from now, for an hour: tomorrow's, when that is where it falls.
    let opens = utc_in(7200);
    let later = format!("daily {opens}-{}", utc_in(10_800));
    std::fs::write(&config, config_with(&[later])).unwrap();
    let port = free_port();
    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty", "--config"])
        .arg(&config)
        .env("DEREGD_METRICS__LISTEN", format!("127.0.0.1:{port}"));
    let child = Child::spawn(cmd);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, status, err) =
        deregd_out(&app, &["status", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        status.contains("outside maintenance window, next opens")
            && status.contains(&format!("{opens} UTC")),
        "{status}"
    );
    assert!(status.contains("dispatcher: running"), "{status}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("deregd_maintenance_window_open 0"),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "the daemon stays alive outside its windows"
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        app.emulator.stats().total_requests,
        0,
        "a call went out outside every window"
    );

    std::fs::write(&config, config_with(&[window(-3600, 3600)])).unwrap();
    child.signal(libc::SIGHUP);
    within(
        3,
        until(|| async { app.emulator.stats().total_requests > 0 }),
    )
    .await;
    let (code, _, stderr) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("reloaded maintenance windows"), "{stderr}");
    assert_eq!(app.count("succeeded").await, 300);
}

#[tokio::test]
async fn a_window_that_opens_starts_calls_by_itself_and_one_that_closes_stops_them() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 3000)).await;
    // Opens 4 s from now (to the second), closes 3 s later.
    let open_at = Utc::now().timestamp() + 4;
    let spec = format!("daily {}-{}", at(open_at), at(open_at + 3));
    let mut cmd = deregd(&app);
    cmd.arg("run")
        .env("DEREGD_WORKER__WINDOWS", &spec)
        .env("DEREGD_LIMITS__QPS", "100");
    let child = Child::spawn(cmd);
    while Utc::now().timestamp() < open_at - 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.emulator.stats().total_requests,
        0,
        "{spec}: before it opens"
    );
    within(
        4,
        until(|| async { app.emulator.stats().total_requests > 0 }),
    )
    .await;
    // After the close, the calls in flight are answered and no other goes out.
    while Utc::now().timestamp() < open_at + 4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_close = app.emulator.stats().total_requests;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.emulator.stats().total_requests, after_close, "{spec}");
    // Three seconds at 100/s, none billed in a second after the close.
    assert!(
        (200..=400).contains(&after_close),
        "{after_close} calls in 3 s at 100/s"
    );
    let last_second: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(second), 0) FROM tps_usage")
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
    assert!(
        last_second < open_at + 3,
        "billed at {last_second}, closed at {}",
        open_at + 3
    );
    child.signal(libc::SIGTERM);
    let (code, _, err) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(app.count("running").await, 0, "claimed jobs went back");
    assert_eq!(
        app.count("succeeded").await as u64,
        app.emulator.stats().successes
    );
}

#[tokio::test]
async fn a_run_with_its_own_closed_window_waits_while_the_others_go_and_schedule_opens_it() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let list = |name: &str, n: usize| {
        let path = app.dir.path().join(name);
        std::fs::write(&path, devices(name, n).join("\n") + "\n").unwrap();
        path
    };
    let (a, b) = (list("a", 200), list("b", 200));
    let closed = window(7200, 10_800);
    let (code, _, err) = deregd_out(
        &app,
        &[
            "submit",
            "--instance",
            INSTANCE,
            "--run",
            "night",
            "--window",
            &closed,
            a.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = deregd_out(
        &app,
        &[
            "submit",
            "--instance",
            INSTANCE,
            "--run",
            "any-time",
            b.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty"]);
    let child = Child::spawn(cmd);
    within(
        30,
        until(|| async { app.emulator.stats().successes >= 200 }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.emulator.stats().successes,
        200,
        "only run any-time was called"
    );
    let (_, status, _) = deregd_out(&app, &["status", "--run", "night"]).await;
    assert!(
        status.contains("windows:") && status.contains("outside maintenance window, next opens"),
        "{status}"
    );
    let (_, shown, _) = deregd_out(&app, &["schedule", "--run", "night"]).await;
    assert!(shown.contains("(its own)"), "{shown}");

    let open = window(-60, 3600);
    let (code, out, err) =
        deregd_out(&app, &["schedule", "--run", "night", "--window", &open]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("open now"), "{out}");
    let (code, _, err) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(app.count("succeeded").await, 400);

    let (code, out, _) = deregd_out(&app, &["schedule", "--run", "night", "--clear"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("always (worker.windows)"), "{out}");
}

#[tokio::test]
async fn a_bad_window_exits_2_naming_the_key_and_the_spec() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let mut cmd = deregd(&app);
    cmd.arg("status")
        .env("DEREGD_WORKER__WINDOWS", "Mon-Fry 01:00-06:00");
    let (code, _, err) = within(30, Child::spawn(cmd).wait()).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("worker.windows") && err.contains("Mon-Fry 01:00-06:00"),
        "{err}"
    );
    let mut cmd = deregd(&app);
    cmd.arg("status")
        .env("DEREGD_WORKER__TIMEZONE", "Asia/Shanghia");
    let (code, _, err) = within(30, Child::spawn(cmd).wait()).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("worker.timezone") && err.contains("Asia/Shanghia"),
        "{err}"
    );
    let (code, _, err) = deregd_out(
        &app,
        &["schedule", "--run", "x", "--window", "Mon 25:00-26:00"],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--window") && err.contains("25:00"), "{err}");
}
