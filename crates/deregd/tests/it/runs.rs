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

/// `(failed + succeeded, failed)` of `run`.
async fn answered(app: &App, run: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(status = 'failed'), 0) FROM jobs
         WHERE run = ?1 AND status IN ('succeeded', 'failed')",
    )
    .bind(run)
    .fetch_one(&app.db.reader)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_run_failing_systematically_is_paused_by_the_abort_rule_and_resume_pauses_it_again() {
    let _cpu = cpu_shared().await;
    let mut app = spawn_app(EmulatorSettings {
        group_faults: vec!["GID_bad:InvalidParameter.GroupId".parse().unwrap()],
        ..EmulatorSettings::default()
    })
    .await;
    app.settings.limits.qps = 200;
    // 60 % of the run is in a group every answer refuses; a healthy run beside it.
    let clients: Vec<String> = (0..1000)
        .map(|i| {
            let group = if i % 5 < 3 { "GID_bad" } else { "GID_fleet" };
            format!("{group}@@@dev-{i}")
        })
        .collect();
    let mut tx = app.db.begin_write().await.unwrap();
    for (run, list) in [("doomed", &clients), ("healthy", &devices("h", 300))] {
        for c in list.iter() {
            sqlx::query("INSERT INTO jobs (instance_id, client_id, run) VALUES (?1, ?2, ?3)")
                .bind(INSTANCE)
                .bind(c)
                .bind(run)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    let bound = 100 + app.settings.limits.max_in_flight as i64;
    // A run that tolerates its failures (its own share of 0 turns the rule off).
    let tolerated = app.dir.path().join("tolerated.txt");
    let bad: Vec<String> = (0..150).map(|i| format!("GID_bad@@@t-{i}")).collect();
    std::fs::write(&tolerated, bad.join("\n")).unwrap();
    let (code, _, err) = deregd_out(
        &app,
        &[
            "submit",
            "--instance",
            INSTANCE,
            "--run",
            "tolerated",
            "--abort-share",
            "0",
            tolerated.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = deregd_out(
        &app,
        &[
            "submit",
            "--abort-share",
            "1.5",
            "--instance",
            INSTANCE,
            "-",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "a share above 1 is a usage error");

    within(60, app.run_until_empty("testsecret")).await;
    let (answers, failed) = answered(&app, "doomed").await;
    assert!(
        answers >= 100 && answers <= bound,
        "{answers} answers before the pause"
    );
    assert!(failed * 2 > answers, "{failed} of {answers}");
    assert_eq!(app.count("pending").await, 1000 - answers, "the rest wait");
    let (_, state, reason, _) = record(&app, "doomed").await.unwrap();
    assert_eq!(state, "paused");
    let reason = reason.unwrap();
    assert!(
        reason.contains("InvalidParameter.GroupId x") && reason.contains("% of the last 100"),
        "{reason}"
    );
    assert_eq!(
        answered(&app, "healthy").await,
        (300, 0),
        "the other run finished"
    );
    assert_eq!(record(&app, "healthy").await.unwrap().1, "active");
    assert_eq!(
        answered(&app, "tolerated").await,
        (150, 150),
        "its rule is off"
    );
    assert_ne!(record(&app, "tolerated").await.unwrap().1, "paused");

    let (code, _, err) = deregd_out(&app, &["resume", "--run", "doomed"]).await;
    assert_eq!(code, Some(0), "{err}");
    within(60, app.run_until_empty("testsecret")).await;
    let (again, _) = answered(&app, "doomed").await;
    assert!(
        again - answers >= 100 && again - answers <= bound,
        "{} more answers before the second pause",
        again - answers
    );
    assert_eq!(record(&app, "doomed").await.unwrap().1, "paused");
}

#[tokio::test]
async fn plan_names_the_cap_as_the_bound_and_its_eta_matches_the_run() {
    let _cpu = cpu_exclusive().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let config = app.dir.path().join("deregd.toml");
    std::fs::write(
        &config,
        format!("[limits]\nqps = 200\n[limits.instance_tps]\n\"{INSTANCE}\" = 50\n"),
    )
    .unwrap();
    // 300 jobs on the capped instance, 700 on the other, interleaved as a list would be.
    let rows: Vec<String> = (0..1000)
        .map(|i| {
            let instance = if i % 10 < 3 { INSTANCE } else { OTHER };
            format!("{instance},GID_fleet@@@p-{i}")
        })
        .collect();
    let list = app.dir.path().join("plan.csv");
    std::fs::write(
        &list,
        format!("instance_id,client_id\n{}\n", rows.join("\n")),
    )
    .unwrap();
    let with_config = |args: &[&str]| {
        let mut cmd = deregd(&app);
        cmd.env("DEREGD_CONFIG", &config)
            .env_remove("DEREGD_LIMITS__QPS")
            .args(args);
        Child::spawn(cmd)
    };
    let (code, _, err) = within(
        30,
        with_config(&["submit", "--run", "planned", list.to_str().unwrap()]).wait(),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");

    let (code, out, err) = within(30, with_config(&["plan", "--json"]).wait()).await;
    assert_eq!(code, Some(0), "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = &plan["runs"][0];
    assert_eq!(run["run"], "planned");
    assert_eq!(run["estimate"]["calls"], 1000);
    let bound = run["estimate"]["bound"].as_str().unwrap();
    assert_eq!(
        bound,
        format!("instance {INSTANCE} capped at 50/s (limits.instance_tps)")
    );
    let planned = run["estimate"]["eta_secs"].as_f64().unwrap();
    assert!((planned - 6.0).abs() < 1e-6, "{planned}");
    let peaks: Vec<f64> = run["estimate"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["peak_calls_per_sec"].as_f64().unwrap())
        .collect();
    assert_eq!(peaks, [50.0, 200.0]);
    let (_, text, _) = within(30, with_config(&["plan"]).wait()).await;
    assert!(text.contains("capped at 50/s"), "{text}");

    let (code, _, err) = within(60, with_config(&["run", "--until-empty"]).wait()).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(app.count("succeeded").await, 1000);
    let offsets = app.emulator.success_offsets();
    let measured = (*offsets.last().unwrap() - offsets[0]).as_secs_f64();
    eprintln!("planned {planned:.2} s, measured {measured:.2} s");
    assert!(
        (measured - planned).abs() <= 0.1 * planned,
        "planned {planned:.2} s, measured {measured:.2} s"
    );
}
