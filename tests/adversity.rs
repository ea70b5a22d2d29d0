//! Adversity: a throttling gateway, wrong credentials, forbidden instances, kill -9, a fault
//! storm, hostile rows and configuration, a concurrent writer, and secrets that must never leak.
//! In-process runs use the real dispatch loop; process runs spawn the `deregd` binary against an
//! emulator hosted in the test.

mod common;

use std::time::Duration;

use common::*;
use deregd::emulator::EmulatorSettings;
use deregd::worker::RunOptions;
use tokio_util::sync::CancellationToken;

/// Successes per second between `from` and `to` (offsets since the emulator started).
fn rate_between(offsets: &[Duration], from: Duration, to: Duration) -> f64 {
    let n = offsets.iter().filter(|t| **t >= from && **t < to).count();
    n as f64 / (to - from).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_cuts_the_rate_which_settles_near_the_gateway_limit() {
    let mut app = spawn_app(EmulatorSettings {
        rate_limit: 100,
        ..Default::default()
    })
    .await;
    app.settings.limits.qps = 300;
    app.settings.limits.burst = 2;
    app.settings.retry.max_attempts = 50;
    app.insert(INSTANCE, &devices("d", 1500)).await;
    within(60, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 1500);
    let stats = app.emulator.stats();
    let throttled_share = stats.throttled as f64 / stats.total_requests as f64;
    eprintln!(
        "total {} throttled {} ({:.1} %) max/s {}",
        stats.total_requests,
        stats.throttled,
        throttled_share * 100.0,
        stats.max_accepted_per_sliding_second
    );
    assert!(throttled_share < 0.05, "{stats:?}");
    let successes = app.emulator.success_offsets();
    let last = *successes.last().unwrap();
    let per_second: Vec<f64> = (1..=last.as_secs())
        .map(|s| {
            rate_between(
                &successes,
                Duration::from_secs(s - 1),
                Duration::from_secs(s),
            )
        })
        .collect();
    eprintln!("successes per second: {per_second:?}");
    // The last full seconds (the tail of the queue excluded): near the gateway's 100/s.
    let settled = rate_between(
        &successes,
        last - Duration::from_secs(6),
        last - Duration::from_secs(1),
    );
    assert!((70.0..=100.0).contains(&settled), "settled at {settled}/s");
    // No cascade of cuts down towards the floor: after the first second, every full second
    // keeps a good part of the gateway's rate.
    let full = &per_second[1..per_second.len() - 1];
    assert!(
        full.iter().all(|r| *r >= 40.0),
        "a second fell below 40/s: {per_second:?}"
    );
}

/// Longest gap between consecutive accepted calls.
fn longest_gap(offsets: &[Duration]) -> Duration {
    offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_retry_after_header_delays_the_next_call() {
    let run = |retry_after_ms| async move {
        let mut app = spawn_app(EmulatorSettings {
            rate_limit: 20,
            retry_after_ms,
            ..Default::default()
        })
        .await;
        app.settings.limits.qps = 100;
        app.settings.retry.max_attempts = 50;
        app.insert(INSTANCE, &devices("d", 50)).await;
        within(30, app.run_until_empty("testsecret")).await;
        assert_eq!(app.count("succeeded").await, 50);
        (
            longest_gap(&app.emulator.accepted_offsets()),
            app.emulator.stats().throttled,
        )
    };
    let (gap, throttled) = run(Some(1500)).await;
    assert!(throttled >= 1, "the gateway throttled at least once");
    assert!(
        gap >= Duration::from_millis(1450),
        "no call for the retry-after: gap {gap:?}"
    );
    // Without the header, the daemon's own hold-off is shorter than that.
    let (gap, _) = run(None).await;
    assert!(
        gap < Duration::from_millis(1400),
        "gap without the header: {gap:?}"
    );
}

#[tokio::test]
async fn a_wrong_secret_pauses_the_process_and_the_fixed_secret_finishes_the_run() {
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 200)).await;
    let mut cmd = deregd(&app);
    cmd.env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong-secret")
        .args(["run", "--until-empty"]);
    let child = Child::spawn(cmd);
    within(
        10,
        until(|| async { app.emulator.stats().total_requests >= 1 }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.signal(libc::SIGTERM);
    let (code, _, stderr) = within(10, child.wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    let stats = app.emulator.stats();
    assert!(stats.total_requests <= 20, "{stats:?}");
    assert_eq!(stats.signature_failures, stats.total_requests);
    assert_eq!(app.count("failed").await, 0);
    assert_eq!(app.count("pending").await, 200);
    let line = stderr
        .lines()
        .find(|l| l.contains("paused"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("SignatureDoesNotMatch"), "{line}");
    assert!(
        line.contains("check ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        "{line}"
    );
    // Fix the secret and restart: the run finishes.
    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty"]);
    let (code, _, stderr) = within(30, Child::spawn(cmd).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(app.count("succeeded").await, 200);
}

#[tokio::test]
async fn an_instance_without_permission_is_paused_while_other_instances_finish() {
    const FORBIDDEN: &str = "post-cn-forbidden01";
    let app = spawn_app(EmulatorSettings {
        forbidden_instances: vec![FORBIDDEN.into()],
        ..Default::default()
    })
    .await;
    app.insert(FORBIDDEN, &devices("f", 100)).await;
    app.insert(INSTANCE, &devices("d", 200)).await;
    let shutdown = CancellationToken::new();
    let run = app.run_with(
        credentials("testsecret"),
        RunOptions::default(),
        shutdown.clone(),
    );
    let stop = async {
        until(|| async { app.count("succeeded").await == 200 }).await;
        // A while longer: the paused instance must stay untouched.
        tokio::time::sleep(Duration::from_millis(500)).await;
        shutdown.cancel();
    };
    let (result, ()) = within(30, async { tokio::join!(run, stop) }).await;
    result.unwrap();
    let stats = app.emulator.stats();
    let refused = stats
        .by_code
        .get("InstancePermissionCheckFailed")
        .copied()
        .unwrap_or(0);
    assert!(refused >= 1, "{stats:?}");
    // The calls already in flight when the first refusal came back, no more.
    assert!(
        refused <= app.settings.limits.max_in_flight as u64,
        "{stats:?}"
    );
    assert_eq!(stats.successes, 200);
    assert_eq!(app.count("pending").await, 100);
    assert_eq!(app.count("failed").await, 0);
    let counted: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(attempts), 0) FROM jobs WHERE instance_id = ?1")
            .bind(FORBIDDEN)
            .fetch_one(&app.db.reader)
            .await
            .unwrap();
    assert_eq!(counted, 0, "a pause costs no job an attempt");
}
