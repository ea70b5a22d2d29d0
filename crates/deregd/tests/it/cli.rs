//! The operator subcommands, end to end: the real binary against a temp database, checking exit
//! statuses, output and `--json` shapes. Rows the daemon would write are set with `sqlite3`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Every child process must finish within this, or the test fails instead of hanging.
const TIMEOUT: Duration = Duration::from_secs(60);

struct Env {
    _dir: tempfile::TempDir,
    db: PathBuf,
    dir: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("jobs.db");
        Env {
            dir: dir.path().to_path_buf(),
            db,
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deregd"));
        cmd.args(args)
            .env("DEREGD_DATABASE__PATH", &self.db)
            .env_remove("DEREGD_CONFIG")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs deregd with `stdin` as its input.
    fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn deregd");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        wait(child)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, b"")
    }

    /// Runs deregd, expects exit status 0, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "deregd {args:?}: {}",
            text(&out)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Runs deregd, expects exit status 0, parses stdout as JSON Lines.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        self.ok(args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {e}: {l}")))
            .collect()
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, content).expect("write input");
        path.to_str().expect("utf-8 path").to_string()
    }

    /// Runs SQL with the sqlite3 shell (as another process would).
    fn sql(&self, sql: &str) -> String {
        let out = Command::new("sqlite3")
            .arg("-cmd")
            .arg(".timeout 5000")
            .arg(&self.db)
            .arg(sql)
            .output()
            .expect("sqlite3 is installed");
        assert!(out.status.success(), "sqlite3 {sql}: {}", text(&out));
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Queues `ids` (ClientIds) for instance `post-cn-1` under `run`.
    fn submit(&self, run: &str, ids: &[&str]) -> Value {
        let out = self.run_with_input(
            &[
                "submit",
                "--instance",
                "post-cn-1",
                "--run",
                run,
                "--json",
                "-",
            ],
            ids.join("\n").as_bytes(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    }
}

fn wait(child: std::process::Child) -> Output {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(TIMEOUT)
        .expect("deregd finished in time")
        .expect("deregd ran")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("GID_fleet@@@dev-{i}")).collect()
}

#[test]
fn submit_queues_valid_lines_and_reports_malformed_ones_by_line_number() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    let file = env.write(
        "ids.txt",
        "# fleet A\nGID_fleet@@@dev-1\n\nGID_fleet@@@dev-2\nGID_fleet@@@dev 3\nGID_fleet@@@dev-1\r\n",
    );
    let out = env.json(&[
        "submit",
        "--instance",
        "post-cn-1",
        "--run",
        "r1",
        "--json",
        &file,
    ]);
    assert_eq!(out["queued"], 2);
    assert_eq!(out["duplicates"], 1);
    assert_eq!(out["duplicates_in_input"], 1);
    assert_eq!(out["rejected"], 1);
    assert_eq!(out["rejections"][0]["line"], 5);
    assert!(out["rejections"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("space"));
    assert_eq!(env.sql("SELECT COUNT(*) FROM jobs WHERE run = 'r1'"), "2");

    // Again: both pairs are still pending, so nothing new is queued.
    let text_out = env.run(&["submit", "--instance", "post-cn-1", "--run", "r1", &file]);
    assert_eq!(text_out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&text_out.stdout);
    assert!(
        stdout.contains("queued 0, duplicates 3, rejected 1"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&text_out.stderr).contains("line 5:"));
    assert_eq!(env.sql("SELECT COUNT(*) FROM jobs"), "2");
}

#[test]
fn submit_queues_a_pair_again_once_its_earlier_job_has_finished() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@dev-1"]);
    env.sql("UPDATE jobs SET status = 'failed', finished_at = 1");
    let out = env.submit("r2", &["GID_fleet@@@dev-1"]);
    assert_eq!(out["queued"], 1);
    assert_eq!(out["already_open"], 0);
}

#[test]
fn submit_reads_csv_with_an_instance_per_row_from_stdin() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    let csv = "instance_id,client_id\npost-cn-1,GID_fleet@@@a\npost-cn-2,GID_fleet@@@a\npost-cn-2,GID_fleet@@@a\npost-cn-2\n";
    let out = env.run_with_input(&["submit", "--run", "csv", "--json", "-"], csv.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["queued"], 2);
    assert_eq!(out["duplicates"], 1);
    assert_eq!(out["rejections"][0]["line"], 5);
    assert_eq!(
        env.sql(
            "SELECT group_concat(instance_id, ' ') FROM (SELECT instance_id FROM jobs ORDER BY id)"
        ),
        "post-cn-1 post-cn-2"
    );
}

#[test]
fn submit_of_a_csv_spanning_several_chunks_skips_pairs_open_before_an_instance_first_appears() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    // post-cn-2 has an open job before the submission; its rows only start after the first
    // chunk (50,000 rows) has been committed.
    let out = env.run_with_input(
        &["submit", "--instance", "post-cn-2", "--run", "early", "-"],
        b"GID_fleet@@@late-7\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut csv = String::from("instance_id,client_id\n");
    for i in 0..60_000 {
        csv.push_str(&format!("post-cn-1,GID_fleet@@@dev-{i}\n"));
    }
    for i in 0..10 {
        csv.push_str(&format!("post-cn-2,GID_fleet@@@late-{i}\n"));
    }
    csv.push_str("post-cn-1,GID_fleet@@@dev-3\n"); // repeats a line of the first chunk
    csv.push_str("post-cn-1,bad id\n");
    let out = env.run_with_input(&["submit", "--run", "csv", "--json", "-"], csv.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out["queued"], 60_009);
    assert_eq!(out["duplicates_in_input"], 1);
    assert_eq!(out["already_open"], 1);
    assert_eq!(out["rejections"][0]["line"], 60_013);
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM jobs WHERE client_id = 'GID_fleet@@@late-7'"),
        "1"
    );
    assert_eq!(
        env.sql("SELECT COUNT(*), COUNT(DISTINCT instance_id || client_id) FROM jobs"),
        "60010|60010"
    );
    // Input order is kept: the last queued row is post-cn-2's last.
    assert_eq!(
        env.sql("SELECT client_id FROM jobs ORDER BY id DESC LIMIT 1"),
        "GID_fleet@@@late-9"
    );
}

#[test]
fn submit_without_an_instance_or_a_csv_header_is_a_usage_error() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    let out = env.run_with_input(&["submit", "-"], b"GID_fleet@@@a\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--instance"));
    let bad = env.run_with_input(&["submit", "--instance", "bad id", "-"], b"GID_fleet@@@a\n");
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let missing = env.run(&["submit", "--instance", "post-cn-1", "/nonexistent/ids.txt"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        !env.db.exists(),
        "a usage error must not create the database"
    );
}

#[test]
fn readers_refuse_a_missing_database_instead_of_creating_it() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    for args in [
        &["status"][..],
        &["jobs"],
        &["report"],
        &["cancel", "--run", "x"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    }
    assert!(!env.db.exists());
}

#[test]
fn status_counts_jobs_by_status_and_shows_retries_codes_and_the_dispatcher() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    let all = ids(6);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    env.submit("r1", &refs[..4]);
    env.submit("r2", &refs[4..]);
    env.sql(
        "UPDATE jobs SET status = 'failed', last_code = 'Throttling.User',
             finished_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) WHERE id = 1;
         UPDATE jobs SET attempts = 2, next_attempt_at = 1795773600000,
             last_code = 'Throttling.User' WHERE id = 2;
         UPDATE jobs SET status = 'succeeded',
             finished_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) WHERE id = 3;
         INSERT INTO dispatcher (id, owner, pid, host, heartbeat, paused, rate)
         VALUES (1, 'o', 42, 'h', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
                 'account throttled', 120.0);",
    );
    // Billing began ten seconds ago at 100 calls/s: the rate is measured since then.
    env.sql(
        "WITH RECURSIVE s(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM s WHERE k < 10)
         INSERT INTO tps_usage (instance_id, second, calls)
         SELECT 'post-cn-1', CAST((julianday('now') - 2440587.5) * 86400 AS INTEGER) - k, 100
         FROM s;",
    );
    let all_runs = env.json(&["status", "--json"]);
    let billed = all_runs["billed_calls_per_sec"].as_f64().unwrap();
    assert!((80.0..=101.0).contains(&billed), "{billed}");
    let runs = all_runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(all_runs["dispatcher"]["running"], true);
    assert_eq!(all_runs["dispatcher"]["paused"], "account throttled");

    let r1 = &env.json(&["status", "--run", "r1", "--json"])["runs"][0];
    assert_eq!(r1["run"], "r1");
    assert_eq!(r1["total"], 4);
    assert_eq!(r1["open"], 2);
    assert_eq!(r1["counts"]["pending"], 2);
    assert_eq!(r1["counts"]["failed"], 1);
    assert_eq!(r1["counts"]["succeeded"], 1);
    assert_eq!(r1["counts"]["cancelled"], 0);
    assert_eq!(r1["finished_last_minute"], 2);
    assert!(r1["eta_secs"].as_i64().unwrap() > 0);
    assert_eq!(r1["next_retry_at"], "2026-11-27T10:00:00.000Z");
    assert_eq!(r1["top_codes"][0]["code"], "Throttling.User");
    assert_eq!(r1["top_codes"][0]["failed"], 1);
    assert_eq!(r1["top_codes"][0]["retrying"], 1);

    let table = env.ok(&["status", "--run", "r1"]);
    assert!(table.contains("PAUSED: account throttled"), "{table}");
    assert!(table.contains("failed 1"), "{table}");

    let unknown = env.run(&["status", "--run", "nope"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
}

#[test]
fn status_watch_prints_plain_lines_when_piped_and_exits_when_nothing_is_open() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("done", &["GID_fleet@@@a", "GID_fleet@@@b"]);
    env.sql("UPDATE jobs SET status = 'succeeded', finished_at = 1");
    let out = env.ok(&["status", "--run", "done", "--watch"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("done 2/2"), "{out}");
    assert!(out.contains("no dispatcher running"), "{out}");

    let json = env.ok(&["status", "--run", "done", "--watch", "--json"]);
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{json}");
    assert_eq!(lines[0]["runs"][0]["counts"]["succeeded"], 2);
    assert_eq!(lines[0]["runs"][0]["eta_secs"], 0);
}

#[test]
fn jobs_exports_csv_and_json_lines_with_rfc3339_times() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a", "GID_fleet@@@b", "GID_fleet@@@c"]);
    env.sql(
        "UPDATE jobs SET status = 'failed', last_code = 'Throttling', last_message = 'slow, down',
             request_id = 'REQ-1', attempts = 8, finished_at = 1795773600000 WHERE id = 2",
    );
    let csv = env.ok(&["jobs", "--run", "r1", "--format", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,instance_id,client_id,run,status,code,message,request_id,attempts,created_at,finished_at"
    );
    assert_eq!(lines.len(), 4);
    assert!(
        lines[2].starts_with(
            "2,post-cn-1,GID_fleet@@@b,r1,failed,Throttling,\"slow, down\",REQ-1,8,2026-"
        ),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].ends_with(",2026-11-27T10:00:00.000Z"),
        "{}",
        lines[2]
    );
    assert!(
        lines[1].ends_with(','),
        "pending: no finished_at: {}",
        lines[1]
    );

    let rows = env.json_lines(&["jobs", "--status", "failed", "--json"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["client_id"], "GID_fleet@@@b");
    assert_eq!(rows[0]["request_id"], "REQ-1");
    assert_eq!(rows[0]["finished_at"], "2026-11-27T10:00:00.000Z");
    assert!(rows[0]["created_at"].as_str().unwrap().ends_with('Z'));

    let by_code = env.ok(&["jobs", "--code", "Throttling", "--format", "json"]);
    assert_eq!(by_code.lines().count(), 1);
    let table = env.ok(&["jobs", "--run", "r1"]);
    assert_eq!(table.lines().count(), 4);

    let bad = env.run(&["jobs", "--status", "done"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

#[test]
fn operator_commands_show_hand_written_rows_of_the_wrong_type_instead_of_failing() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    // A BLOB label and a word for attempts are refused by the schema, naming the column.
    for (sql, constraint) in [
        (
            "INSERT INTO jobs (instance_id, client_id, run) VALUES ('post-cn-1', 'GID_fleet@@@c', X'7232')",
            "run_not_text",
        ),
        (
            "INSERT INTO jobs (instance_id, client_id, run, attempts) VALUES ('post-cn-1', 'GID_fleet@@@c', 'r1', 'two')",
            "attempts_not_integer",
        ),
    ] {
        let out = Command::new("sqlite3").arg(&env.db).arg(sql).output().unwrap();
        assert!(!out.status.success(), "accepted: {sql}");
        assert!(text(&out).contains(constraint), "{}", text(&out));
    }
    // What the schema lets through: BLOB ids, text that is not UTF-8.
    env.sql(
        "INSERT INTO jobs (instance_id, client_id, run) VALUES ('post-cn-1', X'FF00', 'r1');
         INSERT INTO jobs (instance_id, client_id, run) VALUES (X'706F7374', 'GID_fleet@@@b', 'r1');
         INSERT INTO jobs (instance_id, client_id, run)
             VALUES ('post-cn-1', CAST(X'4749445F666C656574404040FF' AS TEXT), 'r1');",
    );
    let rows = env.json_lines(&["jobs", "--json"]);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1]["client_id"], "X'FF00'");
    assert_eq!(rows[2]["instance_id"], "X'706F7374'");
    assert_eq!(rows[3]["client_id"], "GID_fleet@@@\u{fffd}");
    assert_eq!(rows[3]["attempts"], 0);
    let status = env.ok(&["status"]);
    assert!(status.contains("r1"), "{status}");
    env.ok(&["report", "--run", "r1"]);
    // Submit's duplicate check reads them too (rows written during a submission: a worker test).
    let out = env.submit("r2", &["GID_fleet@@@a", "GID_fleet@@@d"]);
    assert_eq!(
        (&out["queued"], &out["already_open"]),
        (&1.into(), &1.into())
    );
    env.sql("INSERT INTO jobs (instance_id, client_id, run) VALUES ('post-cn-1', X'00', 'r3')");
    let out = env.submit("r2", &["GID_fleet@@@e"]);
    assert_eq!(out["queued"], 1, "{out}");
}

#[test]
fn jobs_export_ends_quietly_when_the_reader_closes_the_pipe() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    let many = ids(30_000);
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(env.submit("big", &refs)["queued"], 30_000);
    for format in ["csv", "json", "table"] {
        let mut child = env
            .command(&["jobs", "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert!(!first.is_empty());
        drop(reader); // like `| head -1`
        let out = wait(child);
        assert_eq!(out.status.code(), Some(0), "{format}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{format}: {}", text(&out));
    }
}

#[test]
fn report_buckets_billed_calls_per_instance_with_totals_and_peaks() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    // 2026-11-27T10:00:00Z = 1795773600.
    env.sql(
        "INSERT INTO tps_usage (instance_id, second, calls) VALUES
           ('post-cn-1', 1795773600, 5), ('post-cn-1', 1795773601, 7),
           ('post-cn-1', 1795773660, 2), ('post-cn-2', 1795773630, 9),
           ('post-cn-1', 1795770000, 100)",
    );
    let report = env.json(&[
        "report",
        "--since",
        "2026-11-27T10:00:00Z",
        "--until",
        "2026-11-27T10:05:00Z",
        "--by",
        "minute",
        "--json",
    ]);
    let buckets = report["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3, "{report}");
    assert_eq!(buckets[0]["instance_id"], "post-cn-1");
    assert_eq!(buckets[0]["start"], 1795773600);
    assert_eq!(buckets[0]["calls"], 12);
    assert_eq!(buckets[0]["peak_tps"], 7);
    assert_eq!(buckets[1]["instance_id"], "post-cn-2");
    assert_eq!(buckets[2]["calls"], 2);
    assert_eq!(report["instances"][0]["calls"], 14);
    assert_eq!(report["instances"][0]["peak_tps"], 7);
    assert_eq!(report["instances"][1]["calls"], 9);
    assert_eq!(report["outcomes"][0]["counts"]["pending"], 1);

    let one = env.json(&[
        "report",
        "--instance",
        "post-cn-2",
        "--since",
        "2026-11-27",
        "--by",
        "hour",
        "--json",
    ]);
    assert_eq!(one["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(one["buckets"][0]["calls"], 9);

    let csv = env.ok(&[
        "report",
        "--since",
        "2026-11-27T10:00:00Z",
        "--until",
        "2026-11-27T10:05:00Z",
        "--format",
        "csv",
    ]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "bucket_start,instance_id,calls,peak_tps");
    assert_eq!(lines[1], "2026-11-27T10:00:00.000Z,post-cn-1,14,7");
}

#[test]
fn report_for_a_run_uses_the_run_span_and_says_so() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    env.sql(
        "UPDATE jobs SET created_at = 1795773600000, status = 'succeeded',
             finished_at = 1795773610500;
         INSERT INTO tps_usage (instance_id, second, calls) VALUES
           ('post-cn-1', 1795773599, 50), ('post-cn-1', 1795773605, 3),
           ('post-cn-1', 1795773610, 4), ('post-cn-1', 1795773612, 60),
           ('post-cn-2', 1795773605, 70)",
    );
    let report = env.json(&["report", "--run", "r1", "--by", "day", "--json"]);
    assert_eq!(report["instances"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["instances"][0]["calls"], 7, "{report}");
    assert!(report["note"].as_str().unwrap().contains("no run column"));
    let table = env.ok(&["report", "--run", "r1"]);
    assert!(
        table.contains("note: tps_usage has no run column"),
        "{table}"
    );
}

#[test]
fn report_refuses_a_malformed_time_with_status_2() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    for bad in [
        &["report", "--since", "yesterday"][..],
        &["report", "--until", "-3w"],
    ] {
        let out = env.run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("RFC 3339")
                || String::from_utf8_lossy(&out.stderr).contains("relative")
        );
    }
    let relative = env.run(&["report", "--since", "-2h", "--json"]);
    assert_eq!(relative.status.code(), Some(0), "{}", text(&relative));
}

#[test]
fn cancel_and_requeue_move_jobs_and_count_them() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a", "GID_fleet@@@b", "GID_fleet@@@c"]);
    env.sql("UPDATE jobs SET status = 'running', lease_owner = 'x', lease_until = 1 WHERE id = 3");
    let cancelled = env.json(&["cancel", "--run", "r1", "--json"]);
    assert_eq!(cancelled["cancelled"], 2);
    assert_eq!(cancelled["running"], 1);
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM jobs WHERE status = 'cancelled' AND finished_at IS NOT NULL"),
        "2"
    );

    // Default: failed only; there are none.
    assert_eq!(
        env.json(&["requeue", "--run", "r1", "--json"])["requeued"],
        0
    );
    let back = env.json(&["requeue", "--run", "r1", "--status", "cancelled", "--json"]);
    assert_eq!(back["requeued"], 2);
    assert_eq!(
        env.sql(
            "SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND attempts = 0
                 AND next_attempt_at = 0 AND finished_at IS NULL"
        ),
        "2"
    );

    env.sql(
        "UPDATE jobs SET status = 'failed', attempts = 8, next_attempt_at = 99, finished_at = 5,
             last_code = CASE id WHEN 1 THEN 'Throttling' ELSE 'InternalError' END
         WHERE id IN (1, 2)",
    );
    let by_code = env.json(&["requeue", "--run", "r1", "--code", "Throttling", "--json"]);
    assert_eq!(by_code["requeued"], 1);
    assert_eq!(
        env.sql("SELECT status, attempts FROM jobs WHERE id = 1"),
        "pending|0"
    );
    assert_eq!(env.sql("SELECT status FROM jobs WHERE id = 2"), "failed");

    let text_out = env.ok(&["cancel", "--run", "r1"]);
    assert!(text_out.contains("cancelled 1"), "{text_out}");
}

#[test]
fn requeue_leaves_a_pair_that_is_already_open_alone() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    env.sql("UPDATE jobs SET status = 'failed', finished_at = 1");
    env.submit("r2", &["GID_fleet@@@a"]);
    let out = env.json(&["requeue", "--run", "r1", "--json"]);
    assert_eq!(out["requeued"], 0);
    assert_eq!(out["skipped"], 1);
}

#[test]
fn requeue_and_cancel_refuse_bad_arguments_with_status_2() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    for args in [
        &["requeue", "--run", "r1", "--status", "succeeded"][..],
        &["requeue", "--run", "r1", "--status", "pending"],
        &["requeue", "--run", "no-such-run"],
        &["cancel", "--run", "no-such-run"],
        &["cancel"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert_eq!(env.sql("SELECT status FROM jobs"), "pending");
}

#[test]
fn commands_wait_for_another_writer_and_readers_are_not_blocked_by_it() {
    let _cpu = crate::common::cpu_shared_blocking();
    let env = Env::new();
    env.submit("r1", &["GID_fleet@@@a"]);
    // Another process (as the daemon would) holds the write lock for 2 s.
    let mut holder = Command::new("sqlite3")
        .arg(&env.db)
        .args([
            "BEGIN IMMEDIATE;",
            "UPDATE jobs SET attempts = 1;",
            ".shell sleep 2",
            "COMMIT;",
        ])
        .spawn()
        .expect("sqlite3 is installed");
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let status = env.json(&["status", "--json"]);
    assert_eq!(status["runs"][0]["counts"]["pending"], 1);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "status waited for the writer"
    );
    let out = env.submit("r1", &["GID_fleet@@@b"]);
    assert_eq!(out["queued"], 1);
    assert!(holder.wait().unwrap().success());
    assert_eq!(env.sql("SELECT COUNT(*) FROM jobs WHERE attempts = 1"), "1");
}
