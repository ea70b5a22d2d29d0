//! Runs as records: a submit records who started a run and from what, a plain SQL insert with a
//! new label creates its run when a dispatcher first claims it, and `pause --run` / `resume
//! --run` stop and restart one run while the others keep their rate (the real binary).

use std::time::Duration;

use crate::common::*;
use onsmqtt_emulator::EmulatorSettings;

const OTHER: &str = "post-cn-0pp12gl0002";

/// The run's `(source, state, state_reason, created_by)`.
async fn record(app: &App, run: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT source, state, state_reason, created_by FROM runs WHERE label = ?1")
        .bind(run)
        .fetch_optional(&app.db.reader)
        .await
        .unwrap()
}

async fn deregd_out(app: &App, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = deregd(app);
    cmd.args(args);
    within(30, Child::spawn(cmd).wait()).await
}

#[tokio::test]
async fn a_submit_records_its_run_and_an_sql_insert_with_a_new_label_creates_one() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let list = app.dir.path().join("clients.txt");
    std::fs::write(&list, devices("s", 30).join("\n") + "\n").unwrap();
    let (code, _, err) = deregd_out(
        &app,
        &[
            "submit",
            "--instance",
            INSTANCE,
            "--run",
            "from-file",
            list.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (source, state, _, by) = record(&app, "from-file").await.expect("recorded");
    assert!(
        source.starts_with("file ") && source.ends_with("clients.txt (30 lines)"),
        "{source}"
    );
    assert_eq!(state, "active");
    assert!(by.is_some_and(|b| b.contains('@')));

    let out = sqlite3(
        &app.db_path(),
        &format!(
            "INSERT INTO jobs (instance_id, client_id, run) VALUES ('{INSTANCE}', 'GID_fleet@@@h1', 'by-hand');"
        ),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(record(&app, "by-hand").await, None, "not seen yet");
    app.run_until_empty("testsecret").await;
    let (source, state, _, by) = record(&app, "by-hand").await.expect("created at the claim");
    assert_eq!((source.as_str(), by), ("sql", None));
    assert_eq!(state, "active");
    assert_eq!(app.count("succeeded").await, 31);

    // A run with nothing open is marked done by the daemon's heartbeat.
    let mut cmd = deregd(&app);
    cmd.arg("run");
    let child = Child::spawn(cmd);
    within(
        20,
        until(|| async {
            record(&app, "by-hand").await.is_some_and(|r| r.1 == "done")
                && record(&app, "from-file")
                    .await
                    .is_some_and(|r| r.1 == "done")
        }),
    )
    .await;
    child.signal(libc::SIGTERM);
    let (code, _, err) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn a_paused_run_gets_no_call_while_the_others_keep_their_rate_and_resume_finishes_it() {
    let _cpu = cpu_exclusive().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let list = |name: &str, instance: &str, n: usize| {
        let path = app.dir.path().join(name);
        let rows: Vec<String> = devices(name, n)
            .into_iter()
            .map(|c| format!("{instance},{c}"))
            .collect();
        std::fs::write(
            &path,
            format!("instance_id,client_id\n{}\n", rows.join("\n")),
        )
        .unwrap();
        path
    };
    let a = list("a", INSTANCE, 1200);
    let b = list("b", OTHER, 1200);
    for (run, file) in [("run-a", &a), ("run-b", &b)] {
        let (code, _, err) =
            deregd_out(&app, &["submit", "--run", run, file.to_str().unwrap()]).await;
        assert_eq!(code, Some(0), "{err}");
    }
    let port = free_port();
    let mut cmd = deregd(&app);
    cmd.arg("run")
        .env("DEREGD_LIMITS__QPS", "100")
        .env("DEREGD_METRICS__LISTEN", format!("127.0.0.1:{port}"));
    let child = Child::spawn(cmd);
    let billed = |instance: &str| {
        app.emulator
            .stats()
            .successes_by_instance
            .get(instance)
            .copied()
            .unwrap_or(0)
    };
    within(20, until(|| async { billed(INSTANCE) >= 100 })).await;
    let (code, out, err) = deregd_out(
        &app,
        &[
            "pause",
            "--run",
            "run-a",
            "--reason",
            "change freeze on post-cn-0pp12gl0001",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("paused"), "{out}");
    // Within a heartbeat the claimed jobs go back; the calls in flight finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a_then, b_then) = (billed(INSTANCE), billed(OTHER));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a_now, b_now) = (billed(INSTANCE), billed(OTHER));
    assert_eq!(a_now, a_then, "a call went for the paused run");
    // The other run goes on at (nearly) the whole ceiling, since it has it to itself.
    assert!(b_now - b_then >= 200, "run-b: {b_then} -> {b_now} in 3 s");

    let (_, status, _) = deregd_out(&app, &["status", "--run", "run-a"]).await;
    assert!(status.contains("PAUSED: change freeze"), "{status}");
    assert!(status.contains("none while paused"), "{status}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("deregd_pause_info{scope=\"run\",run=\"run-a\""),
        "{metrics}"
    );
    let (_, report, _) = deregd_out(&app, &["report", "--run", "run-a"]).await;
    assert!(
        report.contains("run \"run-a\": paused (change freeze"),
        "{report}"
    );

    // Pausing twice is fine; resuming an unknown run is a usage error.
    let (code, _, _) = deregd_out(&app, &["pause", "--run", "run-a"]).await;
    assert_eq!(code, Some(0));
    let (code, _, err) = deregd_out(&app, &["resume", "--run", "no-such-run"]).await;
    assert_eq!(code, Some(2), "{err}");

    let (code, _, err) = deregd_out(&app, &["resume", "--run", "run-a"]).await;
    assert_eq!(code, Some(0), "{err}");
    within(
        60,
        until(|| async { billed(INSTANCE) == 1200 && billed(OTHER) == 1200 }),
    )
    .await;
    child.signal(libc::SIGTERM);
    let (code, _, err) = within(30, child.wait()).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(app.count("succeeded").await, 2400);
    assert_eq!(
        app.emulator.stats().successes,
        2400,
        "every job called once"
    );
}
