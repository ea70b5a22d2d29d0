//! Adversity: a throttling gateway, wrong credentials, forbidden instances, kill -9, a fault
//! storm, hostile rows and configuration, a concurrent writer, and secrets that must never leak.
//! In-process runs use the real dispatch loop; process runs spawn the `deregd` binary against an
//! emulator hosted in the test.

use std::time::{Duration, Instant};

use crate::common::*;
use deregd::worker::RunOptions;
use onsmqtt_emulator::{AccessKey, EmulatorSettings, Faults, Registry};
use tokio_util::sync::CancellationToken;

/// Successes per second between `from` and `to` (offsets since the emulator started).
fn rate_between(offsets: &[Duration], from: Duration, to: Duration) -> f64 {
    let n = offsets.iter().filter(|t| **t >= from && **t < to).count();
    n as f64 / (to - from).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_cuts_the_rate_which_settles_near_the_gateway_limit() {
    let _cpu = cpu_exclusive().await;
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
    let _cpu = cpu_shared().await;
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
    let _cpu = cpu_shared().await;
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
    let _cpu = cpu_shared().await;
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

async fn scalar(app: &App, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.db.reader)
        .await
        .unwrap()
}

#[tokio::test]
async fn kill_9_three_times_loses_no_job_and_bounds_duplicate_calls() {
    let _cpu = cpu_shared().await;
    const JOBS: i64 = 2400;
    const IN_FLIGHT: u64 = 16;
    let app = spawn_app(EmulatorSettings {
        faults: Faults {
            latency_ms: 20,
            jitter_ms: 15,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    app.insert(INSTANCE, &devices("d", JOBS as usize)).await;
    let cmd = || {
        let mut cmd = deregd(&app);
        cmd.env("DEREGD_LIMITS__QPS", "300")
            .env("DEREGD_LIMITS__MAX_IN_FLIGHT", IN_FLIGHT.to_string())
            .env("DEREGD_LIMITS__MAX_UNRECORDED", IN_FLIGHT.to_string())
            .args(["run", "--until-empty"]);
        cmd
    };
    for kill in 0..3u64 {
        let child = Child::spawn(cmd());
        let before = app.emulator.stats().total_requests;
        // Random-ish: after 150-550 calls of this process.
        let at = before + 150 + rand::random::<u64>() % 400;
        within(
            20,
            until(|| async { app.emulator.stats().total_requests >= at }),
        )
        .await;
        child.signal(libc::SIGKILL);
        let (code, _, _) = within(10, child.wait()).await;
        assert_eq!(code, None, "kill {kill}: killed by the signal");
    }
    let (code, _, stderr) = within(60, Child::spawn(cmd()).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("returned jobs left running"), "{stderr}");

    let succeeded = app.count("succeeded").await;
    let not_found = app.count("not_found").await;
    let billed = app.billed_total().await;
    let stats = app.emulator.stats();
    eprintln!("succeeded {succeeded} not_found {not_found} billed {billed} {stats:?}");
    assert_eq!(succeeded + not_found, JOBS, "every job terminal, none lost");
    assert_eq!(
        scalar(
            &app,
            "SELECT COUNT(*) FROM jobs WHERE status NOT IN ('succeeded', 'not_found')"
        )
        .await,
        0
    );
    assert_eq!(stats.successes, JOBS as u64, "each credential removed once");
    // tps_usage holds exactly the successes the daemon recorded.
    assert_eq!(billed, succeeded);
    // A success answered to a killed process is lost to it: its retry finds nothing. Each kill
    // loses at most limits.max_unrecorded calls (sent, not yet committed).
    let bound = IN_FLIGHT as i64 * 3;
    assert!(not_found <= bound, "not_found {not_found} > {bound}");
    assert!(stats.successes as i64 - billed <= bound);
    let duplicates = stats
        .by_code
        .get("DeviceCredentialNotFound")
        .copied()
        .unwrap_or(0);
    assert!(
        duplicates as i64 <= bound,
        "duplicate calls {duplicates} > {bound}"
    );
}

#[tokio::test]
async fn a_fault_storm_ends_every_job_succeeded_or_not_found() {
    let _cpu = cpu_shared().await;
    const JOBS: usize = 800;
    let mut app = spawn_app(EmulatorSettings {
        faults: Faults {
            p_system_overflow: 0.05,
            p_internal_error: 0.02,
            p_apply_token_overflow: 0.01,
            p_reset: 0.01,
            p_hang: 0.01,
            hang_ms: 2000,
            p_malformed: 0.01,
            latency_ms: 3,
            jitter_ms: 2,
        },
        seed: 42,
        ..Default::default()
    })
    .await;
    app.settings.api.request_timeout = Duration::from_millis(500);
    app.settings.limits.qps = 300;
    app.settings.retry.max_attempts = 30;
    app.settings.retry.base_delay = Duration::from_millis(10);
    app.settings.retry.max_delay = Duration::from_millis(200);
    app.settings.validate().unwrap();
    let clients = devices("d", JOBS);
    app.insert(INSTANCE, &clients).await;
    within(90, app.run_until_empty("testsecret")).await;
    let stats = app.emulator.stats();
    eprintln!("{stats:?}");
    let f = &stats.faults_injected;
    assert!(
        f.hang >= 1 && f.reset >= 1 && f.system_overflow >= 10,
        "the storm blew: {f:?}"
    );
    let done = app.count("succeeded").await + app.count("not_found").await;
    assert_eq!(done, JOBS as i64, "failed {}", app.count("failed").await);
    assert_eq!(app.count("failed").await, 0);
    assert!(clients
        .iter()
        .all(|c| !app.emulator.is_registered(INSTANCE, c)));
    // A not_found only where an earlier call took effect without a readable answer.
    assert!(app.count("not_found").await as u64 <= stats.deregistered_under_fault);
}

#[tokio::test]
async fn hostile_rows_are_refused_by_the_schema_or_rejected_and_never_sent() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let db = app.db_path();
    // Refused by a named CHECK constraint, with that name in the message.
    let refused = [
        ("INSERT INTO jobs (instance_id, client_id) VALUES ('post-cn-0pp12gl0001', \
          replace(hex(zeroblob(524288)), '00', 'xx'))", "client_id_too_long"),
        ("INSERT INTO jobs (instance_id, client_id) VALUES (replace(hex(zeroblob(524288)), '00', 'xx'), \
          'GID_fleet@@@d')", "instance_id_too_long"),
        ("INSERT INTO jobs (instance_id, client_id, status) VALUES ('post-cn-0pp12gl0001', \
          'GID_fleet@@@d', 'done')", "status_unknown"),
        ("INSERT INTO jobs (instance_id, client_id, attempts) VALUES ('post-cn-0pp12gl0001', \
          'GID_fleet@@@d', -1)", "attempts_negative"),
        ("INSERT INTO jobs (instance_id, client_id) VALUES ('post-cn-0pp12gl0001', NULL)", "NOT NULL"),
        ("INSERT INTO jobs (instance_id, client_id, attempts) VALUES ('post-cn-0pp12gl0001', \
          'GID_fleet@@@word-attempts', 'two')", "attempts_not_integer"),
    ];
    for (sql, constraint) in refused {
        let out = sqlite3(&db, sql).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {sql}");
        assert!(stderr.contains(constraint), "{constraint}: {stderr}");
    }
    // Accepted by the schema, rejected by the daemon: (instance, client, words of the reason).
    let rows: Vec<(String, String, &str)> = vec![
        (INSTANCE.into(), "".into(), "empty"),
        (INSTANCE.into(), "   ".into(), "'@@@'"),
        (
            INSTANCE.into(),
            format!("GID_fleet@@@{}", "x".repeat(53)),
            "at most 64",
        ),
        (INSTANCE.into(), "GID_fleet@@@dev 1".into(), "space"),
        (
            INSTANCE.into(),
            "GID_fleet@@@dev\u{7}".into(),
            "control character",
        ),
        (
            INSTANCE.into(),
            "GID_fleet@@@dev\t1".into(),
            "control character",
        ),
        (INSTANCE.into(), "GID_fleet@@@dév".into(), "'é'"),
        (INSTANCE.into(), "GID_fleet@@@设备".into(), "'设'"),
        (INSTANCE.into(), "GID_fleet@@@a%2F".into(), "'%'"),
        (INSTANCE.into(), "GID_fleet@@@a/b".into(), "'/'"),
        (INSTANCE.into(), "GID_fleet@@@a:b".into(), "':'"),
        (INSTANCE.into(), "GID_fleetdev".into(), "no '@@@'"),
        (INSTANCE.into(), "GRP_fleet@@@dev".into(), "GID_"),
        (INSTANCE.into(), "GID_ab@@@dev".into(), "at least 7"),
        (
            INSTANCE.into(),
            "x'); DROP TABLE jobs; --".into(),
            "no '@@@'",
        ),
        (
            INSTANCE.into(),
            "GID_x'); DROP TABLE jobs;--@@@d".into(),
            "'\\''",
        ),
        (INSTANCE.into(), "GID_fleet@@@1 OR 1=1".into(), "space"),
        ("".into(), "GID_fleet@@@ok-1".into(), "InstanceId is empty"),
        (" ".into(), "GID_fleet@@@ok-2".into(), "space"),
        ("a".repeat(65), "GID_fleet@@@ok-3".into(), "at most 64"),
        ("post-cn-ünï".into(), "GID_fleet@@@ok-4".into(), "'ü'"),
        (
            "post-cn-0pp12gl****".into(),
            "GID_fleet@@@ok-5".into(),
            "'*'",
        ),
    ];
    // Half by the sqlite3 shell (quoted as SQL literals), half through sqlx.
    let (shell, bound) = rows.split_at(rows.len() / 2);
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql: String = shell
        .iter()
        .map(|(i, c, _)| {
            format!(
                "INSERT INTO jobs (instance_id, client_id) VALUES ({}, {});",
                quote(i),
                quote(c)
            )
        })
        .collect();
    let out = sqlite3(&db, &sql).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, c, _) in bound {
        app.insert(i, std::slice::from_ref(c)).await;
    }
    // A control character the shell inserts itself.
    let out = sqlite3(&db, "INSERT INTO jobs (instance_id, client_id) VALUES ('post-cn-0pp12gl0001', 'GID_fleet@@@nul' || char(1) || 'x')").await;
    assert!(out.status.success());
    // Values of the wrong type that the schema lets through (SQLite columns have an affinity,
    // not a type): BLOB ids, text that is not UTF-8. Each is rejected with its reason, and
    // none stops the claims of the others.
    let out = sqlite3(
        &db,
        "INSERT INTO jobs (instance_id, client_id) VALUES ('post-cn-0pp12gl0001', X'FF00');
         INSERT INTO jobs (instance_id, client_id) VALUES (X'706F7374', 'GID_fleet@@@blob-inst');
         INSERT INTO jobs (instance_id, client_id)
             VALUES ('post-cn-0pp12gl0001', CAST(X'4749445F666C656574404040FF' AS TEXT));",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let typed = [
        ("typeof(client_id) = 'blob'", "client_id is not text"),
        ("typeof(instance_id) = 'blob'", "instance_id is not text"),
        (
            "client_id = CAST(X'4749445F666C656574404040FF' AS TEXT)",
            "'\u{fffd}'",
        ),
    ];
    app.insert(INSTANCE, &devices("good", 5)).await;

    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty"]);
    let (code, _, stderr) = within(30, Child::spawn(cmd).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        app.count("rejected").await,
        (rows.len() + 1 + typed.len()) as i64
    );
    for (row, reason) in typed {
        let (status, code, message): (String, Option<String>, Option<String>) = sqlx::query_as(
            &format!("SELECT status, last_code, last_message FROM jobs WHERE {row}"),
        )
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
        assert_eq!(
            (status.as_str(), code.as_deref()),
            ("rejected", Some("InvalidInput")),
            "{row}"
        );
        let message = message.unwrap_or_default();
        assert!(message.contains(reason), "{row}: {message}");
    }
    assert_eq!(app.count("succeeded").await, 5);
    assert_eq!(
        app.emulator.stats().total_requests,
        5,
        "only the good rows were sent"
    );
    for (instance, client, reason) in &rows {
        let (status, attempts, code, message): (String, i64, Option<String>, Option<String>) =
            sqlx::query_as("SELECT status, attempts, last_code, last_message FROM jobs WHERE instance_id = ?1 AND client_id = ?2")
                .bind(instance)
                .bind(client)
                .fetch_one(&app.db.reader)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), attempts, code.as_deref()),
            ("rejected", 0, Some("InvalidInput")),
            "{client:?}"
        );
        let message = message.unwrap_or_default();
        assert!(
            message.contains(reason),
            "{instance:?} {client:?}: {message}"
        );
    }
}

#[tokio::test]
async fn malformed_configuration_exits_2_naming_the_key() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let file = app.dir.path().join("deregd.toml");
    type Case<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (Some("[limits\nqps = 3\n"), vec![], "deregd.toml"),
        (Some("[limits]\nqpss = 3\n"), vec![], "qpss"),
        (
            Some("[retry]\nmax_attempts = \"lots\"\n"),
            vec![],
            "max_attempts",
        ),
        (None, vec![("DEREGD_LIMITS__QPS", "0")], "limits.qps"),
        (None, vec![("DEREGD_LIMITS__QPS", "600")], "limits.qps"),
        (
            None,
            vec![("DEREGD_API__REQUEST_TIMEOUT_MS", "-5")],
            "api.request_timeout_ms",
        ),
        (
            None,
            vec![("DEREGD_API__CONNECT_TIMEOUT_MS", "-1")],
            "api.connect_timeout_ms",
        ),
        (
            None,
            vec![("DEREGD_API__ENDPOINT", "http://onsmqtt.example.com")],
            "api.endpoint",
        ),
        (
            None,
            vec![("DEREGD_API__ENDPOINT", "http://10.0.0.1:8080")],
            "api.endpoint",
        ),
        (
            None,
            vec![("DEREGD_LIMITS__MAX_IN_FLIGHT", "many")],
            "max_in_flight",
        ),
        (
            None,
            vec![("DEREGD_LIMITS__MAX_UNRECORDED", "10")],
            "limits.max_unrecorded",
        ),
        (Some("[limits]\nqps = 280.6\n"), vec![], "limits.qps"),
        (Some("[limits]\nqps = \"280\"\n"), vec![], "limits.qps"),
        (Some("[limits]\nqps = true\n"), vec![], "limits.qps"),
        (
            Some("[limits]\nmax_in_flight = 64.4\n"),
            vec![],
            "limits.max_in_flight",
        ),
        (
            None,
            vec![(
                "DEREGD_API__ENDPOINT",
                "https://u:hunter2@onsmqtt.cn-hangzhou.aliyuncs.com",
            )],
            "api.endpoint",
        ),
        (
            Some("[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
            vec![],
            "metrics.listen",
        ),
        (
            Some("[limits]\nburst = 3\n"),
            vec![("DEREGD_LIMITS__QPS", "5")],
            "limits.burst",
        ),
    ];
    for (toml, env, key) in cases {
        let mut cmd = deregd(&app);
        if let Some(text) = toml {
            std::fs::write(&file, text).unwrap();
            cmd.arg("--config").arg(&file);
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.args(["run", "--until-empty"]);
        let (code, _, stderr) = within(10, Child::spawn(cmd).wait()).await;
        assert_eq!(code, Some(2), "{toml:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{toml:?} {env:?} should name {key}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "a password is never repeated: {stderr}"
        );
    }
    assert_eq!(app.emulator.stats().total_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_sqlite3_writer_neither_fails_nor_slows_the_daemon() {
    let _cpu = cpu_exclusive().await;
    const QPS: f64 = 400.0;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 2400)).await;
    let mut cmd = deregd(&app);
    cmd.env("DEREGD_LIMITS__QPS", "400").arg("run");
    let child = Child::spawn(cmd);
    within(
        10,
        until(|| async { app.emulator.stats().successes >= 200 }),
    )
    .await;
    let base_from = app.emulator.stats().successes;
    let base_began = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let baseline =
        (app.emulator.stats().successes - base_from) as f64 / base_began.elapsed().as_secs_f64();
    eprintln!("baseline {baseline:.0}/s");
    // 100,000 rows in 20 transactions of 5,000, scheduled far ahead so the daemon leaves them.
    let chunk = "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
                 INSERT INTO jobs (instance_id, client_id, run, next_attempt_at) \
                 SELECT 'post-cn-0pp12gl0002', 'GID_bulk@@@d-' || i, 'bulk', 4000000000000 FROM n; COMMIT;";
    let started = app.emulator.stats().successes;
    let began = Instant::now();
    let mut insert = tokio::process::Command::new("sqlite3");
    insert.arg(app.db_path()).arg(".timeout 5000");
    for _ in 0..20 {
        insert.arg(chunk);
    }
    let out = within(60, insert.output()).await.unwrap();
    let took = began.elapsed();
    let calls = app.emulator.stats().successes - started;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "sqlite3: {stderr}"
    );
    within(30, until(|| async { app.count("succeeded").await == 2400 })).await;
    child.signal(libc::SIGTERM);
    let (code, _, log) = within(20, child.wait()).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        !log.contains("locked") && !log.contains("could not record"),
        "{log}"
    );
    assert_eq!(
        scalar(&app, "SELECT COUNT(*) FROM jobs WHERE run = 'bulk'").await,
        100_000
    );
    let rate = calls as f64 / took.as_secs_f64();
    eprintln!("insert took {took:?}; {calls} calls meanwhile, {rate:.0}/s");
    assert!(
        took >= Duration::from_millis(200),
        "the insert was too short to measure: {took:?}"
    );
    // Compared with the rate just before, in the same test: the machine may be slow, but the
    // writer must not stall the daemon.
    assert!(
        rate >= 0.75 * baseline.min(QPS),
        "the daemon slowed to {rate:.0}/s during the insert (baseline {baseline:.0}/s)"
    );
}

#[tokio::test]
async fn no_secret_or_token_appears_in_logs_database_or_check_output() {
    let _cpu = cpu_shared().await;
    const SECRET: &str = "Zq8sEcReTvAlUe4aB2xY";
    const WRONG: &str = "Wr0ngSeCrEtVaLuE77kk";
    const TOKEN: &str = "STS.tOkEn9MkL3pQ7rS1vW";
    let app = spawn_app(EmulatorSettings {
        keys: vec![AccessKey {
            id: "stsid0001".into(),
            secret: SECRET.into(),
            security_token: Some(TOKEN.into()),
        }],
        registry: Registry::all_except_clients(["GID_fleet@@@d-3"]),
        faults: Faults {
            p_internal_error: 0.2,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    app.insert(INSTANCE, &devices("d", 30)).await;
    app.insert(INSTANCE, &["GID_fleet@@@bad row".to_string()])
        .await;
    let with_keys = |secret: &str, args: &[&str]| {
        let mut cmd = deregd(&app);
        cmd.env("RUST_LOG", "trace")
            .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "stsid0001")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
            .env("ALIBABA_CLOUD_SECURITY_TOKEN", TOKEN)
            .args(args);
        cmd
    };
    let mut outputs = Vec::new();
    // Success, retries, not found and a rejected row.
    let (code, out, err) = within(
        30,
        Child::spawn(with_keys(SECRET, &["run", "--until-empty"])).wait(),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("TRACE"), "trace logging is on");
    outputs.extend([out, err]);
    assert_eq!(app.count("succeeded").await, 29);
    // A pause: the wrong secret.
    app.insert(INSTANCE, &devices("e", 10)).await;
    let child = Child::spawn(with_keys(WRONG, &["run"]));
    within(
        10,
        until(|| async { app.emulator.stats().signature_failures >= 1 }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.signal(libc::SIGTERM);
    let (code, out, err) = within(10, child.wait()).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    outputs.extend([out, err]);
    for args in [&["check"][..], &["check", "--json"][..]] {
        let (code, out, err) = within(10, Child::spawn(with_keys(SECRET, args)).wait()).await;
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(
            out.contains("stsid0001") || out.contains("sts***001"),
            "{out}"
        );
        outputs.extend([out, err]);
    }
    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut path = app.db_path().into_os_string();
        path.push(suffix);
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    assert!(!files.is_empty());
    for needle in [SECRET, WRONG, TOKEN] {
        for text in &outputs {
            assert!(!text.contains(needle), "{needle} printed");
        }
        for (path, bytes) in &files {
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{needle} stored in {path:?}");
        }
    }
}
