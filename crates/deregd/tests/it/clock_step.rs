//! A real step of the wall clock under the real binary: libfaketime (LD_PRELOAD) moves the
//! daemon's CLOCK_REALTIME back 10 minutes mid-run, read from a file it rereads on each call,
//! while its monotonic clock runs on. The billed seconds must stay where the calls were made
//! (none reused, none an hour off), the retries already scheduled must not wait for the wall
//! clock to catch up, and the log must say the clock stepped.
//!
//! The step is 10 minutes because the emulator, like the vendor, refuses a signature
//! timestamp more than 15 minutes off its own clock. Where libfaketime is not installed the test
//! says so and passes, unless `DEREGD_TEST_REQUIRE_FAKETIME` is set (CI sets it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use onsmqtt_emulator::{EmulatorSettings, Faults};

/// libfaketime's multithreaded variant, from Debian's `faketime` package (or beside it).
fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    let mut candidates: Vec<PathBuf> = dirs
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .collect();
    candidates.push("/usr/lib/faketime/libfaketimeMT.so.1".into());
    candidates.push("/usr/local/lib/faketime/libfaketimeMT.so.1".into());
    candidates.into_iter().find(|p| p.exists())
}

#[tokio::test]
async fn a_backward_wall_clock_step_moves_no_billed_second_and_delays_no_retry() {
    let Some(lib) = libfaketime() else {
        if std::env::var_os("DEREGD_TEST_REQUIRE_FAKETIME").is_some() {
            panic!("libfaketime is not installed, and DEREGD_TEST_REQUIRE_FAKETIME is set");
        }
        eprintln!("SKIPPED: libfaketime is not installed (Debian: apt-get install faketime)");
        return;
    };
    let _cpu = cpu_shared().await;
    const JOBS: i64 = 1500;
    const QPS: i64 = 100;
    let app = spawn_app(EmulatorSettings {
        faults: Faults {
            p_internal_error: 0.1,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    app.insert(INSTANCE, &devices("step", JOBS as usize)).await;
    let offset = app.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();

    let mut cmd = deregd(&app);
    cmd.env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_NO_CACHE", "1")
        .env("DONT_FAKE_MONOTONIC", "1")
        .env("DEREGD_LIMITS__QPS", QPS.to_string())
        // Retries scheduled seconds ahead: a clock that waited for the wall clock would hold
        // them for the 10 minutes of the step.
        .env("DEREGD_RETRY__BASE_DELAY_MS", "2000")
        .env("DEREGD_RETRY__MAX_DELAY_MS", "4000")
        .args(["run", "--until-empty"]);
    let started = Instant::now();
    let child = Child::spawn(cmd);
    within(
        30,
        until(|| async { app.emulator.stats().successes >= 400 }),
    )
    .await;
    std::fs::write(&offset, "-600\n").unwrap();
    let (code, _, stderr) = within(90, child.wait()).await;
    let ran = started.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the wall clock stepped"), "{stderr}");
    assert!(
        ran < Duration::from_secs(60),
        "took {ran:?}: retries waited for the wall clock"
    );

    assert_eq!(app.count("succeeded").await, JOBS);
    assert_eq!(
        app.billed_total().await,
        JOBS,
        "one billed call per success"
    );
    let (first, last, busiest): (i64, i64, i64) = sqlx::query_as(
        "SELECT MIN(second), MAX(second), MAX(calls) FROM
             (SELECT second, SUM(calls) AS calls FROM tps_usage GROUP BY second)",
    )
    .fetch_one(&app.db.reader)
    .await
    .unwrap();
    assert!(
        busiest <= QPS,
        "{busiest} calls billed in one second: seconds were reused"
    );
    assert!(
        last - first <= ran.as_secs() as i64 + 2,
        "billed seconds span {} s over a run of {ran:?}: they followed the wall clock",
        last - first
    );
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - last).abs() <= 5,
        "the last billed second is {} s from now",
        now - last
    );
}
