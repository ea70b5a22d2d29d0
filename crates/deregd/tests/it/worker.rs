//! End-to-end: jobs in the database, the real dispatch loop, the in-process emulator.

use std::time::Duration;

use crate::common::*;
use deregd::worker::RunOptions;
use onsmqtt_emulator::{EmulatorSettings, Faults, Registry};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn every_job_succeeds_once_and_each_success_is_billed() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 120)).await;
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 120);
    let (status, attempts, code, _, request_id) = app.job("GID_fleet@@@d-7").await;
    assert_eq!((status.as_str(), attempts, code), ("succeeded", 1, None));
    assert!(request_id.is_some_and(|r| !r.is_empty()));
    let stats = app.emulator.stats();
    assert_eq!(stats.successes, 120);
    assert_eq!(stats.total_requests, 120, "no call twice: {stats:?}");
    assert_eq!(app.billed_total().await, 120);
}

#[tokio::test]
async fn a_credential_already_gone_ends_not_found() {
    let _cpu = cpu_shared().await;
    let gone = (
        "post-cn-0pp12gl0001".to_string(),
        "GID_fleet@@@d-3".to_string(),
    );
    let app = spawn_app(EmulatorSettings {
        registry: Registry::all_except(vec![gone]),
        ..Default::default()
    })
    .await;
    app.insert(INSTANCE, &devices("d", 10)).await;
    within(30, app.run_until_empty("testsecret")).await;
    let (status, attempts, code, _, request_id) = app.job("GID_fleet@@@d-3").await;
    assert_eq!(status, "not_found");
    assert_eq!(attempts, 1);
    assert_eq!(code.as_deref(), Some("DeviceCredentialNotFound"));
    assert!(request_id.is_some());
    assert_eq!(app.count("succeeded").await, 9);
    assert_eq!(
        app.billed_total().await,
        9,
        "a not_found answer is not billed"
    );
}

#[tokio::test]
async fn transient_errors_are_retried_until_success() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings {
        faults: Faults {
            p_internal_error: 0.4,
            ..Faults::default()
        },
        seed: 7,
        ..Default::default()
    })
    .await;
    app.insert(INSTANCE, &devices("d", 60)).await;
    within(60, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 60);
    let retried: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE attempts > 1")
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
    assert!(retried > 5, "some jobs needed retries: {retried}");
    let stats = app.emulator.stats();
    assert_eq!(stats.successes, 60);
    assert_eq!(app.billed_total().await, 60);
}

#[tokio::test]
async fn a_job_fails_only_when_its_retries_are_spent() {
    let _cpu = cpu_shared().await;
    let mut app = spawn_app(EmulatorSettings {
        faults: Faults {
            p_internal_error: 1.0,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    app.settings.retry.max_attempts = 3;
    app.insert(INSTANCE, &devices("d", 4)).await;
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("failed").await, 4);
    let (_, attempts, code, message, _) = app.job("GID_fleet@@@d-0").await;
    assert_eq!(attempts, 3);
    assert_eq!(code.as_deref(), Some("InternalError"));
    assert!(message.is_some());
    assert_eq!(app.emulator.stats().total_requests, 12);
}

#[tokio::test]
async fn an_unreachable_api_pauses_dispatch_and_spends_no_attempt() {
    let _cpu = cpu_shared().await;
    let mut app = spawn_app(EmulatorSettings::default()).await;
    // Nothing listens on this port.
    let port = free_port();
    app.settings.api.endpoint = format!("http://127.0.0.1:{port}");
    app.settings.retry.max_attempts = 2;
    app.insert(INSTANCE, &devices("d", 20)).await;
    let shutdown = CancellationToken::new();
    let shared = deregd::worker::Shared::new(&app.settings.limits);
    let client = deregd::api::ApiClient::new(&app.settings, credentials("testsecret")).unwrap();
    let run = tokio::spawn(deregd::worker::run(
        app.db.clone(),
        client,
        app.settings.clone(),
        shutdown.clone(),
        RunOptions { until_empty: true },
        shared.clone(),
    ));
    // Several probes' worth of time (1 s, 2 s, ...): far more calls than max_attempts would
    // allow, were they counted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let paused = shared.snapshot().paused.expect("paused");
    assert_eq!(paused.code, "EndpointUnreachable", "{paused}");
    assert!(paused.message.contains("refused"), "{paused}");
    shutdown.cancel();
    within(30, run).await.unwrap().unwrap();
    assert_eq!(app.count("failed").await, 0);
    assert_eq!(app.count("pending").await, 20);
    let spent: i64 = sqlx::query_scalar("SELECT MAX(attempts) FROM jobs")
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
    assert_eq!(
        spent, 0,
        "no attempt spent on an endpoint that cannot be reached"
    );
}

#[tokio::test]
async fn malformed_rows_are_rejected_with_a_reason_and_never_sent() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let bad = vec![
        "".to_string(),
        "   ".to_string(),
        "GID_fleet@@@dev 1".to_string(),
        "GID_fleet@@@dev\u{7}".to_string(),
        "GID_fleet@@@dév".to_string(),
        "GID_fleet@@@a%2F".to_string(),
        "GID_fleetdev".to_string(),
        "GRP_fleet@@@dev".to_string(),
        "GID_ab@@@dev".to_string(),
        format!("GID_fleet@@@{}", "x".repeat(60)),
        "'); DROP TABLE jobs; --".to_string(),
    ];
    app.insert(INSTANCE, &bad).await;
    app.insert(" ", &["GID_fleet@@@ok-but-bad-instance".to_string()])
        .await;
    app.insert(INSTANCE, &devices("good", 3)).await;
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("rejected").await, bad.len() as i64 + 1);
    assert_eq!(app.count("succeeded").await, 3);
    let (_, attempts, code, message, _) = app.job("GID_fleet@@@dev 1").await;
    assert_eq!(attempts, 0);
    assert_eq!(code.as_deref(), Some("InvalidInput"));
    assert!(message.unwrap().contains("space"));
    assert_eq!(
        app.emulator.stats().total_requests,
        3,
        "only the good rows were sent"
    );
}

#[tokio::test]
async fn a_crashed_workers_lease_is_rescued() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 3)).await;
    sqlx::query(
        "UPDATE jobs SET status = 'running', lease_owner = 'dead-host:1:0', lease_until = 1
         WHERE client_id = 'GID_fleet@@@d-1'",
    )
    .execute(&app.db.writer)
    .await
    .unwrap();
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 3);
    assert_eq!(app.count("running").await, 0);
}

#[tokio::test]
async fn rows_inserted_by_another_process_while_running_are_picked_up() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let shutdown = CancellationToken::new();
    let run = app.run_with(
        credentials("testsecret"),
        RunOptions::default(),
        shutdown.clone(),
    );
    let path = app.db_path();
    let insert_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The sqlite3 shell, as an operator would.
        let out = tokio::process::Command::new("sqlite3")
            .arg(&path)
            .arg(".timeout 5000")
            .arg("INSERT INTO jobs (instance_id, client_id, run) VALUES ('post-cn-0pp12gl0001','GID_fleet@@@late-1','late')")
            .output()
            .await
            .expect("sqlite3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let inserted = std::time::Instant::now();
        loop {
            if app.count("succeeded").await == 1 {
                break inserted.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (result, picked_up) = within(20, async {
        tokio::join!(run, async {
            let took = insert_later.await;
            shutdown.cancel();
            took
        })
    })
    .await;
    result.unwrap();
    assert_eq!(app.count("succeeded").await, 1);
    eprintln!("picked up in {picked_up:?}");
}

#[tokio::test]
async fn no_sliding_second_holds_more_calls_than_the_ceiling() {
    let _cpu = cpu_shared().await;
    let mut app = spawn_app(EmulatorSettings::default()).await;
    app.settings.limits.qps = 100;
    app.settings.limits.burst = 2;
    app.insert(INSTANCE, &devices("d", 260)).await;
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 260);
    let stats = app.emulator.stats();
    assert!(
        stats.max_arrivals_per_sliding_second <= 100,
        "max arrivals in a sliding second: {}",
        stats.max_arrivals_per_sliding_second
    );
    assert_eq!(stats.throttled, 0);
}

#[tokio::test]
async fn per_instance_caps_bound_each_instances_calls() {
    let _cpu = cpu_shared().await;
    let mut app = spawn_app(EmulatorSettings::default()).await;
    app.settings.limits.qps = 200;
    app.settings
        .limits
        .instance_tps
        .insert("post-cn-capped0001".into(), 20);
    app.insert("post-cn-capped0001", &devices("c", 50)).await;
    app.insert(INSTANCE, &devices("u", 100)).await;
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 150);
    let peak: i64 = sqlx::query_scalar(
        "SELECT MAX(calls) FROM tps_usage WHERE instance_id = 'post-cn-capped0001'",
    )
    .fetch_one(&app.db.reader)
    .await
    .unwrap();
    // tps_usage buckets are calendar seconds; a sliding second holds at most 20.
    assert!(peak <= 20, "peak {peak}");
    let offsets = app.emulator.success_offsets();
    assert!(!offsets.is_empty());
}

#[tokio::test]
async fn a_capped_instance_spends_no_account_permit_on_nothing() {
    let _cpu = cpu_shared().await;
    // One instance, capped well under `qps`: most looks at the buffer find its cap closed. A
    // permit taken from the account's budget then must wait for the cap, not be thrown away
    // (each one thrown away was a call of the account's rate lost).
    let mut app = spawn_app(EmulatorSettings::default()).await;
    app.settings.limits.qps = 200;
    app.settings.limits.instance_tps.insert(INSTANCE.into(), 40);
    app.insert(INSTANCE, &devices("c", 80)).await;
    let shared = deregd::worker::Shared::new(&app.settings.limits);
    let client = deregd::api::ApiClient::new(&app.settings, credentials("testsecret")).unwrap();
    within(
        30,
        deregd::worker::run(
            app.db.clone(),
            client,
            app.settings.clone(),
            CancellationToken::new(),
            RunOptions { until_empty: true },
            shared.clone(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(app.count("succeeded").await, 80);
    let stats = shared.stats.lock().unwrap().clone();
    assert_eq!(stats.calls, 80);
    assert_eq!(stats.permits, stats.calls, "permits taken vs calls made");
}

#[tokio::test]
async fn v2_signatures_and_sts_tokens_are_accepted() {
    let _cpu = cpu_shared().await;
    let mut app = spawn_app(EmulatorSettings {
        keys: vec![onsmqtt_emulator::AccessKey {
            id: "stsid".into(),
            secret: "stssecret".into(),
            security_token: Some("token-123".into()),
        }],
        ..Default::default()
    })
    .await;
    app.settings.api.signature = deregd::config::SignatureVersion::V2;
    app.insert(INSTANCE, &devices("d", 5)).await;
    let creds = deregd::credentials::Credentials {
        access_key_id: "stsid".into(),
        access_key_secret: deregd::credentials::Secret::new("stssecret"),
        security_token: Some(deregd::credentials::Secret::new("token-123")),
    };
    within(
        30,
        app.run_with(
            creds.clone(),
            RunOptions { until_empty: true },
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(app.count("succeeded").await, 5);
    // And V3 with the token.
    app.settings.api.signature = deregd::config::SignatureVersion::V3;
    app.insert(INSTANCE, &devices("e", 5)).await;
    within(
        30,
        app.run_with(
            creds,
            RunOptions { until_empty: true },
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(app.count("succeeded").await, 10);
}

#[tokio::test]
async fn a_wrong_secret_pauses_dispatch_without_failing_any_job() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("d", 200)).await;
    let shutdown = CancellationToken::new();
    let run = app.run_with(
        credentials("wrong-secret"),
        RunOptions { until_empty: true },
        shutdown.clone(),
    );
    let stop = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        shutdown.cancel();
    };
    let (result, ()) = within(20, async { tokio::join!(run, stop) }).await;
    result.unwrap();
    let stats = app.emulator.stats();
    assert!(
        stats.total_requests >= 1 && stats.total_requests <= 20,
        "{stats:?}"
    );
    assert_eq!(stats.signature_failures, stats.total_requests);
    assert_eq!(app.count("failed").await, 0);
    assert_eq!(app.count("pending").await, 200);
    assert_eq!(app.count("running").await, 0);
    let (_, attempts, code, _, _) = app.job("GID_fleet@@@d-0").await;
    assert_eq!(
        (attempts, code.as_deref()),
        (0, Some("SignatureDoesNotMatch"))
    );
    // Fix the secret and restart: the run finishes.
    within(30, app.run_until_empty("testsecret")).await;
    assert_eq!(app.count("succeeded").await, 200);
}

#[tokio::test]
async fn calls_stop_at_max_unrecorded_while_outcomes_cannot_be_written() {
    let _cpu = cpu_shared().await;
    use sqlx::Connection;
    const JOBS: usize = 400;
    const UNRECORDED: u32 = 20;
    let mut app = spawn_app(EmulatorSettings::default()).await;
    app.settings.limits.qps = 200;
    app.settings.limits.max_in_flight = 8;
    app.settings.limits.max_unrecorded = UNRECORDED;
    app.settings.validate().unwrap();
    app.insert(INSTANCE, &devices("d", JOBS)).await;
    let run = app.run_with(
        credentials("testsecret"),
        RunOptions { until_empty: true },
        CancellationToken::new(),
    );
    let hold_the_write_lock = async {
        until(|| async { app.emulator.stats().total_requests >= 50 }).await;
        // Another process takes the write lock: no outcome can be committed meanwhile.
        let url = format!("sqlite:{}", app.db_path().display());
        let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let at_lock = app.emulator.stats().total_requests;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let while_locked = app.emulator.stats().total_requests - at_lock;
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        while_locked
    };
    let (result, while_locked) = within(60, async { tokio::join!(run, hold_the_write_lock) }).await;
    result.unwrap();
    eprintln!("{while_locked} calls while the outcomes could not be written");
    // At 200 calls/s the jobs already claimed would have lasted the whole 1.5 s (~300 calls).
    assert!(
        while_locked <= UNRECORDED as u64,
        "{while_locked} calls sent while their outcomes could not be recorded"
    );
    assert_eq!(app.count("succeeded").await, JOBS as i64);
    assert_eq!(app.emulator.stats().total_requests, JOBS as u64);
    assert_eq!(app.billed_total().await, JOBS as i64);
}

#[tokio::test]
async fn a_pair_queued_by_someone_else_during_a_submission_is_not_queued_twice() {
    let _cpu = cpu_shared().await;
    use deregd::store::submit::{Inserted, Submission};
    let app = spawn_app(EmulatorSettings::default()).await;
    app.insert(INSTANCE, &devices("early", 1)).await;
    let mut submission = Submission::begin(&app.db, "r").await.unwrap();
    // The first chunk reads this instance's open pairs.
    submission
        .add(&[(INSTANCE, "GID_fleet@@@a-1")])
        .await
        .unwrap();
    // Then an operator queues, by hand, a pair the submission has not reached yet, and a row
    // with a BLOB ClientId, which the submission must read past.
    let out = sqlite3(
        &app.db_path(),
        "INSERT INTO jobs (instance_id, client_id) VALUES ('post-cn-0pp12gl0001', 'GID_fleet@@@a-2');
         INSERT INTO jobs (instance_id, client_id) VALUES ('post-cn-0pp12gl0001', X'FF00')",
    )
    .await;
    assert!(out.status.success());
    submission
        .add(&[
            (INSTANCE, "GID_fleet@@@a-2"),
            (INSTANCE, "GID_fleet@@@a-3"),
            (INSTANCE, "GID_fleet@@@early-0"),
        ])
        .await
        .unwrap();
    assert_eq!(
        submission.inserted,
        Inserted {
            queued: 2,
            already_open: 2
        }
    );
    let pairs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT client_id, COUNT(*) FROM jobs WHERE typeof(client_id) = 'text'
         GROUP BY client_id ORDER BY client_id",
    )
    .fetch_all(&app.db.reader)
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = ["a-1", "a-2", "a-3", "early-0"]
        .iter()
        .map(|c| (format!("GID_fleet@@@{c}"), 1))
        .collect();
    assert_eq!(pairs, expected);
}
