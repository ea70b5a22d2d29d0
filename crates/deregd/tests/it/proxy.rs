//! Connectivity through a forward proxy, with the real binary: every call goes through it (the
//! emulator sees them from the proxy's outgoing address only), `NO_PROXY` bypasses it, STS is
//! proxied too, wrong proxy credentials pause the run with a clear reason and fail no job, and
//! the proxy password appears in no output, log or database.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::common::*;
use crate::credentials::ROLE;
use onsmqtt_emulator::{CountingProxy, EmulatorSettings, ProxySettings};

const PASSWORD: &str = "pr0xy-Pass-7c1e";
/// The proxy connects to the emulator from here, so the emulator tells proxied calls apart.
const PROXY_OUT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn proxy(credentials: bool) -> CountingProxy {
    CountingProxy::start(ProxySettings {
        listen: None,
        credentials: credentials.then(|| ("deregd".to_string(), PASSWORD.to_string())),
        outgoing_address: Some(PROXY_OUT),
    })
    .await
    .unwrap()
}

fn with_password(proxy: &CountingProxy, password: &str) -> String {
    format!("http://deregd:{password}@{}", proxy.addr())
}

/// Calls the emulator saw per source address.
fn calls_by_source(app: &App) -> Vec<(String, u64)> {
    app.emulator
        .stats()
        .by_source_ip
        .into_iter()
        .map(|(ip, s)| (ip, s.calls))
        .collect()
}

fn assert_no_password(what: &str, text: &str) {
    assert!(!text.contains(PASSWORD), "the proxy password is in {what}");
}

fn database_bytes(app: &App) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        let mut path = app.db_path().into_os_string();
        path.push(suffix);
        all.extend(std::fs::read(path).unwrap_or_default());
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn every_call_goes_through_the_proxy_and_its_password_goes_nowhere() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let proxy = proxy(true).await;
    app.insert(INSTANCE, &devices("p", 300)).await;
    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty"])
        .env("HTTP_PROXY", with_password(&proxy, PASSWORD))
        .env("RUST_LOG", "trace");
    let (code, stdout, stderr) = within(60, Child::spawn(cmd).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(app.count("succeeded").await, 300);
    assert_eq!(
        calls_by_source(&app),
        vec![(PROXY_OUT.to_string(), app.emulator.stats().successes)],
        "every call came from the proxy"
    );
    let stats = proxy.stats();
    let tunnels: u64 = stats.tunnels_by_target.values().sum();
    assert!(tunnels >= 1, "{stats:?}");
    assert_eq!(stats.auth_refused, 0, "{stats:?}");
    assert_no_password("stdout", &stdout);
    assert_no_password("the trace log", &stderr);
    assert_no_password("the database", &database_bytes(&app));

    // The configured proxy is shown masked by check, in text and JSON.
    for json in [false, true] {
        let mut cmd = deregd(&app);
        cmd.arg("check")
            .env("DEREGD_API__PROXY", with_password(&proxy, PASSWORD));
        if json {
            cmd.arg("--json");
        }
        let (code, stdout, stderr) = within(30, Child::spawn(cmd).wait()).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("deregd:***@"), "{stdout}");
        assert_no_password("check's output", &stdout);
        assert_no_password("check's log", &stderr);
    }
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy_and_sts_goes_through_it() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let proxy = proxy(false).await;
    app.insert(INSTANCE, &devices("n", 100)).await;
    // The OpenAPI at 127.0.0.1 is exempt; STS, at the same emulator named `localhost`, is not.
    let sts = format!("http://localhost:{}", app.emulator.addr().port());
    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty"])
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "127.0.0.1")
        .env("DEREGD_CREDENTIALS__ROLE_ARN", ROLE)
        .env("DEREGD_CREDENTIALS__STS_ENDPOINT", &sts);
    let (code, _, stderr) = within(60, Child::spawn(cmd).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(app.count("succeeded").await, 100);
    let stats = app.emulator.stats();
    assert_eq!(
        calls_by_source(&app),
        vec![(
            "127.0.0.1".to_string(),
            stats.total_requests - stats.sts.calls
        )],
        "the OpenAPI calls went straight"
    );
    assert!(
        stats.sts.issued_by_source.get("AssumeRole").copied() >= Some(1),
        "{:?}",
        stats.sts
    );
    let carried = proxy.stats();
    assert_eq!(
        carried.tunnels_by_target.keys().collect::<Vec<_>>(),
        vec![&format!("localhost:{}", app.emulator.addr().port())],
        "only STS went through the proxy: {carried:?}"
    );
}

#[tokio::test]
async fn wrong_proxy_credentials_pause_with_a_clear_reason_and_fail_no_job() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let proxy = proxy(true).await;
    app.insert(INSTANCE, &devices("w", 50)).await;
    let wrong = "not-the-Pass-19";
    let mut cmd = deregd(&app);
    cmd.args(["run", "--until-empty"])
        .env("DEREGD_API__PROXY", with_password(&proxy, wrong))
        .env("RUST_LOG", "debug");
    let child = Child::spawn(cmd);
    within(20, until(|| async { proxy.stats().auth_refused >= 2 })).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.signal(libc::SIGTERM);
    let (code, stdout, stderr) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the proxy refused its credentials"),
        "no clear reason in: {stderr}"
    );
    assert_eq!(app.emulator.stats().total_requests, 0);
    assert_eq!(app.count("failed").await, 0);
    assert_eq!(app.count("pending").await, 50);
    for (what, text) in [("stdout", &stdout), ("the log", &stderr)] {
        assert!(!text.contains(wrong), "the wrong password is in {what}");
    }
}
