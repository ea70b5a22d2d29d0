//! Temporary credentials renewed during a run: 20-second sets from the ECS metadata service,
//! OIDC (its token file rewritten mid-run) and a RamRoleArn profile, at a steady rate; an
//! `InvalidSecurityToken.Expired` answer renewing at once without spending an attempt; and
//! the metadata service going away, briefly (no pause) and for longer than a set lives (a
//! pause with its reason, resumed when it is back).

use std::time::Duration;

use deregd::api::ApiClient;
use deregd::config::Settings;
use deregd::credentials::Provider;
use deregd::worker::{self, RunOptions, Shared};
use onsmqtt_emulator::{EmulatorSettings, MetadataServer, MetadataSettings};
use tokio_util::sync::CancellationToken;

use super::common::*;
use super::credentials::{env, with_endpoints, OIDC_TOKEN, PROVIDER, ROLE};

/// Runs the worker with `provider` until `shutdown` or until empty.
fn spawn_run(
    app: &App,
    settings: &Settings,
    provider: Provider,
    options: RunOptions,
    shutdown: CancellationToken,
) -> (Shared, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let client = ApiClient::new(settings, provider).unwrap();
    let shared = Shared::new(&settings.limits);
    let run = tokio::spawn(worker::run(
        app.db.clone(),
        client,
        settings.clone(),
        shutdown,
        options,
        shared.clone(),
    ));
    (shared, run)
}

/// `n` devices registered in the emulator and queued.
async fn queue(app: &App, n: usize) -> Vec<String> {
    let clients = devices("renew", n);
    for c in &clients {
        app.emulator.register(INSTANCE, c);
    }
    app.insert(INSTANCE, &clients).await;
    clients
}

/// The fewest successes in any 2-second window from 2 s after the first success to 2 s
/// before the last, as calls per second.
fn slowest_rate(offsets: &[Duration]) -> f64 {
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
        return 0.0;
    };
    let window = Duration::from_secs(2);
    let mut start = *first + window;
    let mut slowest = f64::MAX;
    while start + window + window <= *last {
        let n = offsets
            .iter()
            .filter(|o| **o >= start && **o < start + window)
            .count();
        slowest = slowest.min(n as f64 / window.as_secs_f64());
        start += Duration::from_millis(500);
    }
    slowest
}

const RATE: u32 = 50;
const RUN_SECS: usize = 90;

/// A 90-second run at 50/s with `provider`, whose sets live 20 s: every job succeeds, no
/// call meets an expired set, at least 4 renewals, and the rate holds through each.
async fn run_through_renewals(app: &App, settings: &Settings, provider: Provider) -> u64 {
    let mut settings = settings.clone();
    settings.limits.qps = RATE;
    settings.limits.burst = 3;
    settings.retry.max_attempts = 1;
    let total = RATE as usize * RUN_SECS;
    queue(app, total).await;
    let (_shared, run) = spawn_run(
        app,
        &settings,
        provider.clone(),
        RunOptions { until_empty: true },
        CancellationToken::new(),
    );
    within(RUN_SECS as u64 + 60, run).await.unwrap().unwrap();
    let stats = app.emulator.stats();
    assert_eq!(app.count("succeeded").await, total as i64, "{stats:?}");
    assert_eq!(stats.sts.expired_rejected, 0, "{:?}", stats.sts);
    assert!(!stats.by_code.contains_key("InvalidSecurityToken.Expired"));
    let renewals = provider.renewals();
    assert!(renewals >= 4, "{renewals} renewals");
    let slowest = slowest_rate(&app.emulator.success_offsets());
    assert!(
        slowest >= 0.95 * f64::from(RATE),
        "the rate fell to {slowest:.1}/s across a renewal"
    );
    renewals
}

#[tokio::test]
async fn an_ecs_role_with_20_second_credentials_runs_90_seconds_at_its_rate() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings {
        sts_duration_secs: 20,
        ..EmulatorSettings::default()
    })
    .await;
    let metadata = MetadataServer::start(&app.emulator, MetadataSettings::default())
        .await
        .unwrap();
    let settings = with_endpoints(&app, Some(&metadata));
    let provider = Provider::start(
        &settings,
        &env(&[("ALIBABA_CLOUD_ECS_METADATA", "EmulatorEcsRole")]),
    )
    .await
    .unwrap();
    assert_eq!(provider.source(), "ecs");
    run_through_renewals(&app, &settings, provider).await;
    assert!(
        app.emulator.stats().metadata.tokens_issued >= 5,
        "IMDSv2 each time"
    );
    metadata.shutdown().await;
}

#[tokio::test]
async fn oidc_credentials_are_renewed_with_the_token_file_rewritten_mid_run() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings {
        sts_duration_secs: 20,
        oidc_token: Some(OIDC_TOKEN.into()),
        ..EmulatorSettings::default()
    })
    .await;
    let settings = with_endpoints(&app, None);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, OIDC_TOKEN).unwrap();
    let provider = Provider::start(
        &settings,
        &env(&[
            ("ALIBABA_CLOUD_ROLE_ARN", ROLE),
            ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token.to_str().unwrap()),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(provider.source(), "oidc");
    // The platform rotates the token halfway: the old one is refused from then on.
    let rotated = "eyJhbGciOiJSUzI1NiJ9.rotated-token.c2lnbmF0dXJl";
    let run = run_through_renewals(&app, &settings, provider.clone());
    let (renewals, ()) = tokio::join!(run, async {
        tokio::time::sleep(Duration::from_secs(RUN_SECS as u64 / 2)).await;
        std::fs::write(&token, rotated).unwrap();
        app.emulator.set_oidc_token(Some(rotated.into()));
    });
    assert!(renewals >= 4);
    let issued = app.emulator.stats().sts.issued_by_source;
    assert!(
        issued.get("AssumeRoleWithOIDC").copied().unwrap_or(0) >= 5,
        "{issued:?}"
    );
}

#[tokio::test]
async fn a_ram_role_arn_profile_is_renewed_with_assume_role() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings {
        sts_duration_secs: 20,
        ..EmulatorSettings::default()
    })
    .await;
    let settings = with_endpoints(&app, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".aliyun")).unwrap();
    std::fs::write(
        dir.path().join(".aliyun/config.json"),
        format!(
            r#"{{"current":"ops","profiles":[{{"name":"ops","mode":"RamRoleArn",
            "access_key_id":"testid","access_key_secret":"testsecret","ram_role_arn":"{ROLE}"}}]}}"#
        ),
    )
    .unwrap();
    let provider = Provider::start(&settings, &env(&[("HOME", dir.path().to_str().unwrap())]))
        .await
        .unwrap();
    assert_eq!(provider.source(), "profile");
    run_through_renewals(&app, &settings, provider).await;
    let issued = app.emulator.stats().sts.issued_by_source;
    assert!(
        issued.get("AssumeRole").copied().unwrap_or(0) >= 5,
        "{issued:?}"
    );
}

#[tokio::test]
async fn an_expired_answer_renews_at_once_and_spends_no_attempt() {
    let _cpu = cpu_shared().await;
    // Sets live 3 s but are said to live an hour more: only the API's refusal tells.
    let app = spawn_app(EmulatorSettings {
        sts_duration_secs: 3,
        ..EmulatorSettings::default()
    })
    .await;
    let metadata = MetadataServer::start(
        &app.emulator,
        MetadataSettings {
            expiration_skew_secs: 3600,
            ..MetadataSettings::default()
        },
    )
    .await
    .unwrap();
    let mut settings = with_endpoints(&app, Some(&metadata));
    settings.limits.qps = 50;
    settings.retry.max_attempts = 1;
    let provider = Provider::start(
        &settings,
        &env(&[("ALIBABA_CLOUD_ECS_METADATA", "EmulatorEcsRole")]),
    )
    .await
    .unwrap();
    queue(&app, 500).await;
    let (shared, run) = spawn_run(
        &app,
        &settings,
        provider.clone(),
        RunOptions { until_empty: true },
        CancellationToken::new(),
    );
    within(60, run).await.unwrap().unwrap();
    let stats = app.emulator.stats();
    assert!(stats.sts.expired_rejected >= 2, "{:?}", stats.sts);
    assert!(provider.renewals() >= 2, "renewed after each refusal");
    assert_eq!(
        app.count("failed").await,
        0,
        "an Expired answer spends no attempt"
    );
    assert_eq!(app.count("succeeded").await, 500);
    assert!(shared.snapshot().paused.is_none());
    metadata.shutdown().await;
}

/// Samples the pause state every 100 ms until `stop`; returns every reason seen.
fn watch_pauses(shared: Shared, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.is_cancelled() {
            if let Some(p) = shared.snapshot().paused {
                let shown = p.to_string();
                if seen.last() != Some(&shown) {
                    seen.push(shown);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

#[tokio::test]
async fn the_metadata_service_down_for_30_seconds_with_60_left_pauses_nothing() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings {
        sts_duration_secs: 80,
        ..EmulatorSettings::default()
    })
    .await;
    let metadata = MetadataServer::start(&app.emulator, MetadataSettings::default())
        .await
        .unwrap();
    let addr = metadata.addr();
    let mut settings = with_endpoints(&app, Some(&metadata));
    settings.limits.qps = 20;
    let provider = Provider::start(
        &settings,
        &env(&[("ALIBABA_CLOUD_ECS_METADATA", "EmulatorEcsRole")]),
    )
    .await
    .unwrap();
    queue(&app, 20 * 70).await;
    let shutdown = CancellationToken::new();
    let (shared, run) = spawn_run(
        &app,
        &settings,
        provider.clone(),
        RunOptions { until_empty: true },
        shutdown.clone(),
    );
    let stop = CancellationToken::new();
    let pauses = watch_pauses(shared.clone(), stop.clone());
    // 60 s left: the service goes away for 30 s, across the renewal due at 40 s left.
    tokio::time::sleep(Duration::from_secs(20)).await;
    metadata.shutdown().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(provider.renewals(), 0, "nothing to renew from");
    let metadata = MetadataServer::start(
        &app.emulator,
        MetadataSettings {
            listen: addr,
            ..MetadataSettings::default()
        },
    )
    .await
    .unwrap();
    within(30, until(|| async { provider.renewals() >= 1 })).await;
    within(60, run).await.unwrap().unwrap();
    stop.cancel();
    let seen = pauses.await.unwrap();
    assert!(seen.is_empty(), "paused: {seen:?}");
    assert_eq!(app.count("succeeded").await, 20 * 70);
    assert_eq!(app.emulator.stats().sts.expired_rejected, 0);
    metadata.shutdown().await;
}

#[tokio::test]
async fn the_metadata_service_down_longer_than_a_set_lives_pauses_and_resumes() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings {
        sts_duration_secs: 20,
        ..EmulatorSettings::default()
    })
    .await;
    let metadata = MetadataServer::start(&app.emulator, MetadataSettings::default())
        .await
        .unwrap();
    let addr = metadata.addr();
    let mut settings = with_endpoints(&app, Some(&metadata));
    settings.limits.qps = 20;
    settings.retry.max_attempts = 1;
    let provider = Provider::start(
        &settings,
        &env(&[("ALIBABA_CLOUD_ECS_METADATA", "EmulatorEcsRole")]),
    )
    .await
    .unwrap();
    queue(&app, 20 * 45).await;
    let (shared, run) = spawn_run(
        &app,
        &settings,
        provider.clone(),
        RunOptions { until_empty: true },
        CancellationToken::new(),
    );
    metadata.shutdown().await;
    let paused = within(40, async {
        loop {
            if let Some(p) = shared.snapshot().paused {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(paused.code, worker::CREDENTIALS_EXPIRED, "{paused}");
    assert!(paused.message.contains("metadata service"), "{paused}");
    // Calls in flight when the pause began finish and are recorded; after that, nothing goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done_while_paused = app.count("succeeded").await;
    let sent_while_paused = app.emulator.stats().total_requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.emulator.stats().total_requests,
        sent_while_paused,
        "no call while paused"
    );
    assert_eq!(app.count("succeeded").await, done_while_paused);
    let metadata = MetadataServer::start(
        &app.emulator,
        MetadataSettings {
            listen: addr,
            ..MetadataSettings::default()
        },
    )
    .await
    .unwrap();
    within(20, until(|| async { shared.snapshot().paused.is_none() })).await;
    within(90, run).await.unwrap().unwrap();
    assert_eq!(app.count("succeeded").await, 20 * 45);
    assert_eq!(app.count("failed").await, 0);
    metadata.shutdown().await;
}
