//! Every column an operator may write, with a value of every wrong type: the schema refuses
//! it naming the column, or the daemon and every operator command read it (the row becoming
//! `rejected` with the reason when it cannot be a job). Never a panic, never an exit.

use onsmqtt_emulator::EmulatorSettings;

use crate::common::*;

const COLUMNS: [&str; 14] = [
    "instance_id",
    "client_id",
    "run",
    "status",
    "attempts",
    "next_attempt_at",
    "lease_owner",
    "lease_until",
    "last_code",
    "last_message",
    "request_id",
    "created_at",
    "updated_at",
    "finished_at",
];

/// Values of every kind: text, a date as text, real, the unix-ms expression without its CAST,
/// a BLOB, NULL, a huge integer, a huge text.
fn values() -> Vec<(&'static str, String)> {
    vec![
        ("text", "'text'".into()),
        ("date text", "datetime('now', '+1 hour')".into()),
        ("real", "1.5".into()),
        (
            "real ms",
            "(julianday('now') - 2440587.5) * 86400000".into(),
        ),
        ("blob", "X'FF00'".into()),
        ("null", "NULL".into()),
        ("huge integer", "9223372036854775807".into()),
        (
            "huge text",
            "replace(hex(zeroblob(2500)), '00', 'ab')".into(),
        ),
    ]
}

#[tokio::test]
async fn every_column_of_every_wrong_type_is_refused_or_read_without_failing() {
    let _cpu = cpu_shared().await;
    let app = spawn_app(EmulatorSettings::default()).await;
    let db = app.db_path();
    let (mut accepted, mut refused) = (0, 0);
    let mut n = 0;
    for column in COLUMNS {
        for (kind, value) in values() {
            n += 1;
            let instance = "'post-cn-0pp12gl0001'".to_string();
            let client = format!("'GID_fleet@@@typed-{n}'");
            // A job scheduled at the end of time would keep `--until-empty` waiting: its run
            // is cancelled before the daemon starts.
            let run = if column == "next_attempt_at" {
                "'later'".to_string()
            } else {
                "'typed'".to_string()
            };
            let mut cols = vec![
                ("instance_id", instance),
                ("client_id", client),
                ("run", run),
            ];
            match cols.iter_mut().find(|(c, _)| *c == column) {
                Some(slot) => slot.1 = value.clone(),
                None => cols.push((column, value.clone())),
            }
            let sql = format!(
                "INSERT INTO jobs ({}) VALUES ({})",
                cols.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", "),
                cols.iter()
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let out = sqlite3(&db, &sql).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                accepted += 1;
            } else {
                refused += 1;
                assert!(
                    stderr.contains(column),
                    "{column} {kind}: refused without naming the column: {stderr}"
                );
            }
        }
    }
    assert!(
        accepted > 10 && refused > 40,
        "{accepted} accepted, {refused} refused"
    );
    app.insert(INSTANCE, &devices("good", 3)).await;

    let mut cancel = deregd(&app);
    cancel.args(["cancel", "--run", "later"]);
    let (code, _, stderr) = within(30, Child::spawn(cancel).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");

    let mut run = deregd(&app);
    run.args(["run", "--until-empty"]);
    let (code, _, stderr) = within(60, Child::spawn(run).wait()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let open: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status IN ('pending', 'running')")
            .fetch_one(&app.db.reader)
            .await
            .unwrap();
    assert_eq!(open, 0, "every accepted row ends terminal");
    assert_eq!(
        app.count("succeeded").await,
        app.emulator.stats().successes as i64
    );
    let rejected_without_reason: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE status = 'rejected'
           AND (last_code IS NOT 'InvalidInput' OR last_message IS NULL)",
    )
    .fetch_one(&app.db.reader)
    .await
    .unwrap();
    assert_eq!(rejected_without_reason, 0);

    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["report"],
        vec!["report", "--run", "typed", "--format", "json"],
        vec!["jobs", "--format", "csv"],
        vec!["jobs", "--format", "json"],
        vec!["jobs", "--run", "typed"],
    ] {
        let mut cmd = deregd(&app);
        cmd.args(&args);
        let (code, _, stderr) = within(30, Child::spawn(cmd).wait()).await;
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
