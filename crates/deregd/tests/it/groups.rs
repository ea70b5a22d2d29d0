//! Runs from the vendor's registry, through the real binary: `deregd submit --group` lists a
//! whole group before queueing any of it, `deregd verify` lists it again (or asks for a
//! sample one by one) and converges with `--requeue`; List and Get calls are paced, billed
//! with their action, and the device secret a Get answer carries goes nowhere.

use onsmqtt_emulator::{EmulatorSettings, ListPaging, PageFault, Registry};

use crate::common::*;

const LIST: &str = "ListDeviceCredentialClientId";
const GET: &str = "GetDeviceCredential";
const UNREGISTER: &str = "UnRegisterDeviceCredential";

fn registry_settings(registry: Registry, paging: ListPaging) -> EmulatorSettings {
    EmulatorSettings {
        registry,
        list_paging: paging,
        list_rate_limit: 100,
        ..EmulatorSettings::default()
    }
}

/// `deregd ARGS...` against the app, with List calls at 50/s; (exit code, stdout, stderr).
async fn deregd_cli(app: &App, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = deregd(app);
    cmd.args(args).env("DEREGD_LIMITS__LIST_QPS", "50");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("deregd runs");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn billed(app: &App, action: &str) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(SUM(calls), 0) FROM tps_usage WHERE action = ?1")
        .bind(action)
        .fetch_one(&app.db.reader)
        .await
        .unwrap()
}

async fn jobs_of_run(app: &App, run: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT client_id, status FROM jobs WHERE run = ?1 ORDER BY client_id")
        .bind(run)
        .fetch_all(&app.db.reader)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_group_over_50_pages_is_deleted_whole_in_both_paging_modes_and_its_neighbour_gets_no_call(
) {
    let _cpu = cpu_shared().await;
    for paging in [ListPaging::Offset, ListPaging::Cursor] {
        let registry = Registry::groups(INSTANCE, [("GID_big", 5000), ("GID_near", 300)]);
        let app = spawn_app(registry_settings(registry, paging)).await;
        let (code, out, err) = within(
            120,
            deregd_cli(
                &app,
                &[
                    "submit",
                    "--instance",
                    INSTANCE,
                    "--group",
                    "GID_big",
                    "--run",
                    "big",
                ],
                &[],
            ),
        )
        .await;
        assert_eq!(code, 0, "{paging:?}: {out}{err}");
        assert!(
            out.contains("listed 5000, queued 5000, duplicates 0"),
            "{paging:?}: {out}"
        );
        let jobs = jobs_of_run(&app, "big").await;
        assert_eq!(jobs.len(), 5000, "{paging:?}");
        assert!(jobs.iter().all(|(c, _)| c.starts_with("GID_big@@@")));

        within(120, app.run_until_empty("testsecret")).await;
        assert_eq!(app.count("succeeded").await, 5000, "{paging:?}");
        assert_eq!(app.emulator.group_len(INSTANCE, "GID_big"), 0, "{paging:?}");
        assert_eq!(
            app.emulator.group_len(INSTANCE, "GID_near"),
            300,
            "{paging:?}"
        );
        let stats = app.emulator.stats();
        // Every UnRegister went to the group: 5000 calls, 5000 of its devices gone.
        assert_eq!(stats.by_action[UNREGISTER].calls, 5000, "{paging:?}");
        let list = &stats.by_action[LIST];
        assert!(
            (50..=51).contains(&list.calls),
            "{paging:?}: {} pages",
            list.calls
        );
        assert!(list.max_accepted_per_sliding_second <= 50, "{paging:?}");
        // Billed: every UnRegister and every page, each under its action.
        assert_eq!(billed(&app, UNREGISTER).await, 5000, "{paging:?}");
        assert_eq!(
            billed(&app, LIST).await,
            list.successes as i64,
            "{paging:?}"
        );

        let (code, out, err) = deregd_cli(&app, &["verify", "--run", "big"], &[]).await;
        assert_eq!(code, 0, "{paging:?}: {out}{err}");
        assert!(out.contains("group GID_big on"), "{out}");
        assert!(out.contains("gone from the registry"), "{out}");
        let (_, status, _) = deregd_cli(&app, &["status", "--run", "big"], &[]).await;
        assert!(status.contains("group:      GID_big"), "{status}");
        assert!(
            status.contains("verified:") && status.contains("by groups: gone"),
            "{status}"
        );
    }
}

#[tokio::test]
async fn offset_paging_with_a_daemon_already_running_skips_nothing() {
    let _cpu = cpu_shared().await;
    let registry = Registry::groups(INSTANCE, [("GID_live", 2000)]);
    let app = spawn_app(registry_settings(registry, ListPaging::Offset)).await;
    let mut daemon = deregd(&app);
    daemon.arg("run");
    let daemon = Child::spawn(daemon);
    // The daemon is up (its heartbeat row) before the listing starts.
    until(|| async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM dispatcher")
            .fetch_one(&app.db.reader)
            .await
            .unwrap_or(0)
            > 0
    })
    .await;
    // At 10 pages a second, a listing that queued page by page would have its first pages
    // deleted under it and skip devices.
    let (code, out, err) = within(
        120,
        deregd_cli(
            &app,
            &[
                "submit",
                "--instance",
                INSTANCE,
                "--group",
                "GID_live",
                "--run",
                "live",
            ],
            &[("DEREGD_LIMITS__LIST_QPS", "10")],
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("listed 2000, queued 2000"), "{out}");
    within(60, until(|| async { app.count("succeeded").await == 2000 })).await;
    daemon.signal(libc::SIGTERM);
    let (code, _, err) = daemon.wait().await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(app.emulator.group_len(INSTANCE, "GID_live"), 0);
}

#[tokio::test]
async fn a_credential_registered_during_the_run_is_found_by_verify_and_requeue_converges() {
    let _cpu = cpu_shared().await;
    let registry = Registry::groups(INSTANCE, [("GID_grp", 500)]);
    let app = spawn_app(registry_settings(registry, ListPaging::Cursor)).await;
    let (code, out, err) = deregd_cli(
        &app,
        &[
            "submit",
            "--instance",
            INSTANCE,
            "--group",
            "GID_grp",
            "--run",
            "g",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    // Registered while the run goes on: the run never had it.
    within(60, async {
        tokio::join!(app.run_until_empty("testsecret"), async {
            until(|| async { app.count("succeeded").await >= 100 }).await;
            assert!(app.emulator.register(INSTANCE, "GID_grp@@@late-1"));
        })
    })
    .await;
    // A deletion that did not hold: the device is back after its job succeeded.
    assert!(app.emulator.register(INSTANCE, "GID_grp@@@dev-7"));

    let (code, out, err) = deregd_cli(&app, &["verify", "--run", "g", "--json"], &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let g = &v["groups"][0];
    assert_eq!(g["listed"], 2);
    assert_eq!(
        g["new_since_snapshot"],
        serde_json::json!(["GID_grp@@@late-1"])
    );
    assert_eq!(
        g["still_registered_done"],
        serde_json::json!(["GID_grp@@@dev-7"])
    );
    assert_eq!(g["still_registered_open"], serde_json::json!([]));

    let (code, out, _) = deregd_cli(&app, &["verify", "--run", "g", "--requeue"], &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ALARM: 1 deregistered"), "{out}");
    assert!(out.contains("requeued 1, added 1"), "{out}");
    within(60, app.run_until_empty("testsecret")).await;
    let (code, out, err) = deregd_cli(&app, &["verify", "--run", "g"], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(app.emulator.group_len(INSTANCE, "GID_grp"), 0);
    assert_eq!(jobs_of_run(&app, "g").await.len(), 501);
    let (_, report, _) = deregd_cli(&app, &["report", "--run", "g"], &[]).await;
    assert!(report.contains("last verification:"), "{report}");
    assert!(report.contains(LIST), "{report}");
    let verifications: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM verifications")
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
    assert_eq!(verifications, 3);
}

#[tokio::test]
async fn a_listing_that_fails_on_page_7_queues_nothing_and_exits_1() {
    let _cpu = cpu_shared().await;
    let registry = Registry::groups(INSTANCE, [("GID_broken", 1000), ("GID_fine", 150)]);
    let mut settings = registry_settings(registry, ListPaging::Offset);
    settings.list_page_faults = vec![PageFault {
        page: 7,
        code: "InternalError".into(),
        times: None,
    }];
    let app = spawn_app(settings).await;
    let (code, out, err) = within(
        120,
        deregd_cli(
            &app,
            &[
                "submit",
                "--instance",
                INSTANCE,
                "--group",
                "GID_broken",
                "--group",
                "GID_fine",
                "--run",
                "x",
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("group GID_broken on") && out.contains("NOT QUEUED"),
        "{out}"
    );
    assert!(err.contains("page 7"), "{err}");
    let jobs = jobs_of_run(&app, "x").await;
    // Page 7 of GID_fine does not exist (150 ids: two pages), so it is queued whole; nothing of
    // GID_broken is, though six of its pages were listed.
    assert_eq!(jobs.len(), 150);
    assert!(jobs.iter().all(|(c, _)| c.starts_with("GID_fine@@@")));
    let staged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM listings")
        .fetch_one(&app.db.reader)
        .await
        .unwrap();
    assert_eq!(staged, 0, "the failed listing's pages are discarded");
    assert_eq!(
        app.emulator
            .stats()
            .by_action
            .get(UNREGISTER)
            .map_or(0, |a| a.calls),
        0
    );
}

#[tokio::test]
async fn verify_sample_asks_exactly_n_within_get_qps_and_the_device_secret_goes_nowhere() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    // A run from SQL, as an operator inserts it.
    let clients = devices("s", 300);
    let values: Vec<String> = clients
        .iter()
        .map(|c| format!("('{INSTANCE}', '{c}', 'sampled')"))
        .collect();
    let out = sqlite3(
        &app.db_path(),
        &format!(
            "INSERT INTO jobs (instance_id, client_id, run) VALUES {};",
            values.join(",")
        ),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    within(60, app.run_until_empty("testsecret")).await;
    // Three come back after their deletion: Get finds them, with their secret.
    let back = &clients[10..13];
    let mut secrets = Vec::new();
    for c in back {
        assert!(app.emulator.register(INSTANCE, c));
        secrets.push(app.emulator.device_secret(INSTANCE, c).expect("registered"));
    }

    let (code, out, err) = within(
        60,
        deregd_cli(
            &app,
            &["verify", "--run", "sampled", "--sample", "300", "--json"],
            &[("DEREGD_LIMITS__GET_QPS", "40"), ("RUST_LOG", "trace")],
        ),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    let mut printed = vec![out.clone(), err.clone()];
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sample"]["asked"], 300);
    assert_eq!(v["sample"]["confirmed"], 297);
    let mut found: Vec<String> = v["sample"]["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[1].as_str().unwrap().to_string())
        .collect();
    found.sort();
    let mut expected = back.to_vec();
    expected.sort();
    assert_eq!(found, expected);
    let stats = app.emulator.stats();
    let get = &stats.by_action[GET];
    assert_eq!(get.calls, 300);
    assert!(
        get.max_accepted_per_sliding_second <= 40,
        "{}",
        get.max_accepted_per_sliding_second
    );
    // Found credentials are billed; not-found answers (400) are not.
    assert_eq!(billed(&app, GET).await, 3);

    let (code, out, err) = within(
        60,
        deregd_cli(
            &app,
            &["verify", "--run", "sampled", "--sample", "100", "--requeue"],
            &[("RUST_LOG", "trace")],
        ),
    )
    .await;
    // Whether the 100 drawn hold one of the three is chance: the exit code is not asserted.
    assert!(matches!(code, 0 | 1), "{err}");
    assert!(out.contains("sample of 100:"), "{out}");
    assert_eq!(
        app.emulator.stats().by_action[GET].calls,
        400,
        "exactly 100 more"
    );
    printed.extend([out, err]);

    app.db.close().await;
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        on_disk.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let on_disk = String::from_utf8_lossy(&on_disk);
    for secret in &secrets {
        assert!(
            printed.iter().all(|p| !p.contains(secret.as_str())),
            "the secret was printed"
        );
        assert!(
            !on_disk.contains(secret.as_str()),
            "the secret is in the database files"
        );
    }
    // The trace logs were on, and held the Get answers' other fields.
    assert!(
        printed[1].contains("TRACE"),
        "{}",
        &printed[1][..printed[1].len().min(2000)]
    );
}
