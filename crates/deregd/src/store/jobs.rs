//! All SQL on the `jobs` table's lifecycle: claim (lease), complete, reschedule, release, rescue.
//! Invariants: a claim is one short `BEGIN IMMEDIATE` transaction (read the due jobs, lease them);
//! no transaction is ever held across a network call; an outcome is written only by the process
//! that holds the job's lease, in the same short transaction as its `tps_usage` increment (see
//! [`crate::store::tps_usage`]).

use super::tps_usage;
use crate::clock::now_ms;
use crate::job::{Job, Status};
use crate::store::Store;

/// What to write for one claimed job once its call (or its validation) is over.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: i64,
    pub instance_id: String,
    /// `Pending` for a retry or a release; a terminal status otherwise.
    pub status: Status,
    /// Whether this call counts against `retry.max_attempts`.
    pub count_attempt: bool,
    /// For `Pending`: when the job becomes due again, unix ms.
    pub next_attempt_at: i64,
    /// Replaces `last_code`/`last_message` when set.
    pub code: Option<String>,
    pub message: Option<String>,
    /// Replaces `request_id` when set.
    pub request_id: Option<String>,
    /// The unix second of a billed (2xx) answer.
    pub billed_second: Option<i64>,
}

impl Completion {
    /// A completion that changes nothing but the status (and frees the lease); the caller sets
    /// what else it learnt. `Pending` jobs become due at once.
    pub fn new(job: &Job, status: Status) -> Completion {
        Completion {
            job_id: job.id,
            instance_id: job.instance_id.clone(),
            status,
            count_attempt: false,
            next_attempt_at: now_ms(),
            code: None,
            message: None,
            request_id: None,
            billed_second: None,
        }
    }
}

/// Which due jobs a claim leaves alone (besides those of paused runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFilter {
    /// Instances not to claim (paused ones).
    pub instances: Vec<String>,
    /// Runs not to claim (outside their own maintenance windows).
    pub runs: Vec<String>,
    /// When set, only these runs (the configured windows are closed; these have their own).
    pub only_runs: Option<Vec<String>>,
}

impl ClaimFilter {
    /// The instances, the runs and the only runs as JSON arrays, for `json_each`.
    fn as_json(&self) -> (String, String, Option<String>) {
        let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings serialize");
        (
            json(&self.instances),
            json(&self.runs),
            self.only_runs.as_ref().map(json),
        )
    }
}

/// Claims up to `limit` due jobs for `owner`, leased until `lease_until` (unix ms), in queue
/// order, leaving alone those of paused runs and those `filter` names.
///
/// The due jobs come back as ONE row (a JSON array), read and leased in one `BEGIN IMMEDIATE`
/// transaction: sqlx hands rows over from SQLite's thread one by one, and a claim of hundreds of
/// rows woke the dispatcher's thread for most of them. A column that does not hold what it
/// should (a BLOB an operator inserted by hand, say) comes back as `null` and the job as
/// [`Job::malformed`], and text that is not UTF-8 comes back with U+FFFD in its place (which
/// the job checks reject): such a job is rejected rather than stopping every claim.
pub async fn claim(
    db: &Store,
    owner: &str,
    limit: i64,
    lease_until: i64,
    filter: &ClaimFilter,
) -> sqlx::Result<Vec<Job>> {
    let now = now_ms();
    let (excluded, held, only) = filter.as_json();
    let (rows, _) = db
        .write(async |conn| {
            let due: Vec<u8> = sqlx::query_scalar(
                "SELECT json_group_array(json_array(id,
                            CASE typeof(instance_id) WHEN 'text' THEN instance_id END,
                            CASE typeof(client_id) WHEN 'text' THEN client_id END,
                            CASE typeof(run) WHEN 'text' THEN run END,
                            CASE typeof(attempts) WHEN 'integer' THEN attempts END))
                 FROM (SELECT id, instance_id, client_id, run, attempts FROM jobs
                       WHERE status = 'pending' AND next_attempt_at <= ?1
                         AND instance_id NOT IN (SELECT value FROM json_each(?3))
                         AND run NOT IN (SELECT label FROM runs WHERE state = 'paused')
                         AND run NOT IN (SELECT value FROM json_each(?4))
                         AND (?5 IS NULL OR run IN (SELECT value FROM json_each(?5)))
                       ORDER BY next_attempt_at, id LIMIT ?2)",
            )
            .bind(now)
            .bind(limit)
            .bind(&excluded)
            .bind(&held)
            .bind(&only)
            .fetch_one(&mut *conn)
            .await?;
            let due = crate::job::lossy(due);
            let rows: Vec<ClaimedRow> =
                serde_json::from_str(&due).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            if !rows.is_empty() {
                sqlx::query(
                    "UPDATE jobs SET status = 'running', lease_owner = ?1, lease_until = ?2,
                         updated_at = ?3
                     WHERE id IN (SELECT value ->> 0 FROM json_each(?4))",
                )
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(&due)
                .execute(&mut *conn)
                .await?;
                super::run_records::seen(&mut *conn, &due, now).await?;
            }
            Ok((rows, ()))
        })
        .await?;
    let mut jobs: Vec<Job> = rows.into_iter().map(job_from_row).collect();
    // json_group_array does not promise its input's order; keep the queue order.
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// A claimed row: id, instance_id, client_id, run, attempts; `None` where the column does not
/// hold its type.
type ClaimedRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// A claimed row as a [`Job`]; a column of the wrong type makes it [`Job::malformed`].
fn job_from_row((id, instance_id, client_id, run, attempts): ClaimedRow) -> Job {
    let wrong: Vec<&str> = [
        ("instance_id is not text (a BLOB?)", instance_id.is_none()),
        ("client_id is not text (a BLOB?)", client_id.is_none()),
        ("run is not text (a BLOB?)", run.is_none()),
        ("attempts is not an integer", attempts.is_none()),
    ]
    .into_iter()
    .filter_map(|(what, wrong)| wrong.then_some(what))
    .collect();
    let malformed = (!wrong.is_empty()).then(|| format!("malformed row: {}", wrong.join("; ")));
    Job {
        id,
        instance_id: instance_id.unwrap_or_default(),
        client_id: client_id.unwrap_or_default(),
        run: run.unwrap_or_default(),
        attempts: attempts.unwrap_or(0),
        malformed,
    }
}

/// Writes a batch of completions in one `BEGIN IMMEDIATE` transaction, as two statements
/// whatever its size (one round trip each to SQLite's thread). A job is updated only if
/// `owner` still holds its lease; a billed call is counted in `tps_usage` whatever happened to
/// the lease, since the vendor billed it. Returns how many jobs were updated.
pub async fn complete(db: &Store, owner: &str, batch: &[Completion]) -> sqlx::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let rows: Vec<serde_json::Value> = batch
        .iter()
        .map(|c| {
            serde_json::json!([
                c.job_id,
                c.status.as_str(),
                c.count_attempt as i64,
                c.next_attempt_at,
                c.code,
                c.message,
                c.request_id,
                c.status.is_terminal().then_some(now),
            ])
        })
        .collect();
    let billed = tps_usage::tally(
        crate::action::Action::UnRegister,
        batch.iter().filter_map(|c| {
            c.billed_second
                .map(|second| (c.instance_id.as_str(), second))
        }),
    );
    let rows = serde_json::Value::Array(rows).to_string();
    db.write(async |conn| {
        let updated = sqlx::query(
            "UPDATE jobs SET status = c.new_status, attempts = MIN(attempts + c.counted, 1000000),
                 next_attempt_at = c.new_next_attempt_at,
                 last_code = COALESCE(c.new_code, last_code),
                 last_message = COALESCE(c.new_message, last_message),
                 request_id = COALESCE(c.new_request_id, request_id), lease_owner = NULL,
                 lease_until = NULL, updated_at = ?3, finished_at = c.new_finished_at
             FROM (SELECT value ->> 0 AS job_id, value ->> 1 AS new_status, value ->> 2 AS counted,
                          value ->> 3 AS new_next_attempt_at, value ->> 4 AS new_code,
                          value ->> 5 AS new_message, value ->> 6 AS new_request_id,
                          value ->> 7 AS new_finished_at
                   FROM json_each(?1)) AS c
             WHERE jobs.id = c.job_id AND jobs.lease_owner = ?2 AND jobs.status = 'running'",
        )
        .bind(&rows)
        .bind(owner)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if !billed.is_empty() {
            tps_usage::record_calls(&mut *conn, &billed).await?;
        }
        Ok(updated)
    })
    .await
}

/// Returns every job leased by `owner` to `pending` (graceful shutdown). Returns the count.
pub async fn release_all(db: &Store, owner: &str) -> sqlx::Result<u64> {
    let now = now_ms();
    db.write(async |conn| {
        let result = sqlx::query(
            "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                 updated_at = ?2
             WHERE status = 'running' AND lease_owner = ?1",
        )
        .bind(owner)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(result.rows_affected())
    })
    .await
}

/// Returns to `pending` the `running` jobs not leased by `owner` whose lease has expired or
/// that have none (a process that died, a row set to `running` by hand). Returns the count.
pub async fn rescue_expired(db: &Store, owner: &str) -> sqlx::Result<u64> {
    let now = now_ms();
    db.write(async |conn| {
        let result = sqlx::query(
            "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                 updated_at = ?1
             WHERE status = 'running' AND lease_owner IS NOT ?2
               AND (lease_until IS NULL OR typeof(lease_until) != 'integer'
                    OR lease_until <= ?1)",
        )
        .bind(now)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
        Ok(result.rows_affected())
    })
    .await
}

/// Returns every `running` job to `pending`, whoever leased it. Only for a dispatcher that holds
/// the database's single-dispatcher lock: no other process can be calling for them.
pub async fn rescue_all(db: &Store) -> sqlx::Result<u64> {
    let now = now_ms();
    db.write(async |conn| {
        let result = sqlx::query(
            "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                 updated_at = ?1
             WHERE status = 'running'",
        )
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(result.rows_affected())
    })
    .await
}

/// The earliest `next_attempt_at` among the pending jobs a claim with `filter`'s runs may take
/// (unix ms), if any is pending.
pub async fn next_due(db: &Store, filter: &ClaimFilter) -> sqlx::Result<Option<i64>> {
    let (_, held, only) = filter.as_json();
    sqlx::query_scalar(
        "SELECT next_attempt_at FROM jobs WHERE status = 'pending'
             AND run NOT IN (SELECT label FROM runs WHERE state = 'paused')
             AND run NOT IN (SELECT value FROM json_each(?1))
             AND (?2 IS NULL OR run IN (SELECT value FROM json_each(?2)))
         ORDER BY next_attempt_at LIMIT 1",
    )
    .bind(held)
    .bind(only)
    .fetch_optional(&db.reader)
    .await
}

/// True while any job that may be dispatched is pending (due or scheduled) or running: the
/// jobs of a paused run wait for `deregd resume`, so they do not count.
pub async fn has_open_jobs(db: &Store) -> sqlx::Result<bool> {
    let open: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE status IN ('pending', 'running')
             AND run NOT IN (SELECT label FROM runs WHERE state = 'paused') LIMIT 1",
    )
    .fetch_optional(&db.reader)
    .await?;
    Ok(open.is_some())
}

/// Jobs by status, and retries scheduled (pending jobs with attempts), for metrics and progress.
#[derive(Debug, Clone, Default)]
pub struct JobCounts {
    pub by_status: Vec<(String, i64)>,
    pub scheduled_retries: i64,
}

impl JobCounts {
    pub fn count(&self, status: Status) -> i64 {
        self.by_status
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n)
    }

    /// Jobs in a final status.
    pub fn finished(&self) -> i64 {
        Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| self.count(s))
            .sum()
    }
}

/// Counts of every job by status.
pub async fn counts(db: &Store) -> sqlx::Result<JobCounts> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        .fetch_all(&db.reader)
        .await?;
    let scheduled_retries: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND attempts > 0")
            .fetch_one(&db.reader)
            .await?;
    Ok(JobCounts {
        by_status: rows.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
        scheduled_retries,
    })
}

/// The queue in a line: what is pending, and the run dispatch is working on.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub pending: i64,
    /// The run of the next due job, with its finished and total jobs.
    pub active_run: Option<(String, i64, i64)>,
}

/// [`Summary`] of the queue, for the status line.
pub async fn summary(db: &Store) -> sqlx::Result<Summary> {
    use sqlx::Row;
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'pending'")
        .fetch_one(&db.reader)
        .await?;
    let run: Option<Vec<u8>> = sqlx::query_scalar(&format!(
        "SELECT {} FROM jobs WHERE status = 'pending'
             AND run NOT IN (SELECT label FROM runs WHERE state = 'paused')
         ORDER BY next_attempt_at, id LIMIT 1",
        crate::job::shown("run")
    ))
    .fetch_optional(&db.reader)
    .await?;
    let active_run = match run.map(crate::job::lossy) {
        None => None,
        Some(run) => {
            let row = sqlx::query(
                "SELECT SUM(status NOT IN ('pending', 'running')), COUNT(*) FROM jobs WHERE run = ?1",
            )
            .bind(&run)
            .fetch_one(&db.reader)
            .await?;
            Some((run, row.get(0), row.get(1)))
        }
    };
    Ok(Summary {
        pending,
        active_run,
    })
}
