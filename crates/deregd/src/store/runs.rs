//! Operator-side SQL over runs (the `jobs.run` label): status counts, progress, cancel, requeue
//! and the audit export. Invariant: every write here is a series of short single-statement
//! chunks of at most [`CHUNK_ROWS`] rows, so a running daemon never waits long for the lock.

use std::collections::BTreeMap;

use futures_util::{Stream, StreamExt};
use sqlx::Row;

use crate::clock::now_ms;
use crate::job::{lossy, shown, Status};
use crate::store::Store;

/// Rows changed per write statement.
pub(crate) const CHUNK_ROWS: i64 = 50_000;

/// Which jobs an operator command looks at. `None` means "any".
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub run: Option<String>,
    pub instance: Option<String>,
    pub statuses: Vec<Status>,
    pub code: Option<String>,
}

impl Filter {
    /// The statuses as a JSON array for `json_each`, or NULL for any.
    fn statuses_json(&self) -> Option<String> {
        (!self.statuses.is_empty()).then(|| {
            serde_json::to_string(&self.statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .expect("strings serialize")
        })
    }
}

/// Decodes a column selected through [`shown`].
fn text(row: &sqlx::sqlite::SqliteRow, index: usize) -> String {
    lossy(row.get(index))
}

/// The WHERE clause matching a [`Filter`] bound as ?1 run, ?2 instance, ?3 statuses, ?4 code.
const FILTER_SQL: &str = "(?1 IS NULL OR run = ?1) AND (?2 IS NULL OR instance_id = ?2)
    AND (?3 IS NULL OR status IN (SELECT value FROM json_each(?3)))
    AND (?4 IS NULL OR last_code = ?4)";

/// Job counts by status for one run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunCounts {
    pub run: String,
    /// Every status, zero included.
    pub counts: BTreeMap<&'static str, i64>,
}

impl RunCounts {
    fn new(run: String) -> RunCounts {
        let counts = Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        RunCounts { run, counts }
    }

    pub fn count(&self, status: Status) -> i64 {
        self.counts.get(status.as_str()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> i64 {
        self.counts.values().sum()
    }

    /// Pending plus running: jobs not finished yet.
    pub fn open(&self) -> i64 {
        self.count(Status::Pending) + self.count(Status::Running)
    }
}

/// Counts by status per run, ordered by run label.
pub(crate) async fn counts(db: &Store, filter: &Filter) -> sqlx::Result<Vec<RunCounts>> {
    let sql = format!(
        "SELECT {}, status, COUNT(*) FROM jobs WHERE {FILTER_SQL}
         GROUP BY run, status ORDER BY run",
        shown("run")
    );
    let rows = bind_filter(sqlx::query(&sql), filter)
        .fetch_all(&db.reader)
        .await?;
    let mut runs: Vec<RunCounts> = Vec::new();
    for row in rows {
        let run = text(&row, 0);
        let status: String = row.get(1);
        if runs.last().is_none_or(|r| r.run != run) {
            runs.push(RunCounts::new(run));
        }
        let last = runs.last_mut().expect("pushed above");
        if let Some(status) = Status::parse(&status) {
            last.counts.insert(status.as_str(), row.get(2));
        }
    }
    Ok(runs)
}

/// Progress figures of one run that counts alone do not give.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub(crate) struct Progress {
    /// Jobs that reached a final status in the last `window_ms`.
    pub finished_in_window: i64,
    /// The first of those finishes, unix ms (the rate is measured from it when the run began
    /// finishing less than a window ago).
    pub first_finished_in_window: Option<i64>,
    /// Earliest scheduled retry (pending with attempts > 0), unix ms.
    pub next_retry_at: Option<i64>,
    /// First job created, unix ms.
    pub first_created_at: Option<i64>,
    /// Last job finished, unix ms.
    pub last_finished_at: Option<i64>,
}

/// Progress of `run`, with finishes counted over `[now - window_ms, now]`.
pub(crate) async fn progress(db: &Store, run: &str, window_ms: i64) -> sqlx::Result<Progress> {
    let since = now_ms() - window_ms;
    let row = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE finished_at >= ?2),
                MIN(next_attempt_at) FILTER (WHERE status = 'pending' AND attempts > 0),
                MIN(created_at), MAX(finished_at), MIN(finished_at) FILTER (WHERE finished_at >= ?2)
         FROM jobs WHERE run = ?1",
    )
    .bind(run)
    .bind(since)
    .fetch_one(&db.reader)
    .await?;
    Ok(Progress {
        finished_in_window: row.get(0),
        next_retry_at: row.get(1),
        first_created_at: row.get(2),
        last_finished_at: row.get(3),
        first_finished_in_window: row.get(4),
    })
}

/// How many jobs of one run carry an error code, split by what happens next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CodeCount {
    pub code: String,
    /// Jobs that ended `failed` with this code.
    pub failed: i64,
    /// Pending jobs awaiting a retry after this code.
    pub retrying: i64,
}

/// The `limit` most frequent `last_code`s of failed and retrying jobs of `run`, most frequent first.
pub(crate) async fn top_codes(db: &Store, run: &str, limit: i64) -> sqlx::Result<Vec<CodeCount>> {
    let rows = sqlx::query(
        "SELECT last_code, COUNT(*) FILTER (WHERE status = 'failed'),
                COUNT(*) FILTER (WHERE status = 'pending')
         FROM jobs
         WHERE run = ?1 AND last_code IS NOT NULL
           AND (status = 'failed' OR (status = 'pending' AND attempts > 0))
         GROUP BY last_code ORDER BY COUNT(*) DESC, last_code LIMIT ?2",
    )
    .bind(run)
    .bind(limit)
    .fetch_all(&db.reader)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CodeCount {
            code: r.get(0),
            failed: r.get(1),
            retrying: r.get(2),
        })
        .collect())
}

/// The instances that have jobs in `run`.
pub(crate) async fn instances_of(db: &Store, run: &str) -> sqlx::Result<Vec<String>> {
    let sql = format!(
        "SELECT DISTINCT {} FROM jobs WHERE run = ?1 ORDER BY 1",
        shown("instance_id")
    );
    let instances: Vec<Vec<u8>> = sqlx::query_scalar(&sql)
        .bind(run)
        .fetch_all(&db.reader)
        .await?;
    Ok(instances.into_iter().map(lossy).collect())
}

/// True when at least one job carries the label `run`.
pub(crate) async fn exists(db: &Store, run: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE run = ?1 LIMIT 1")
        .bind(run)
        .fetch_optional(&db.reader)
        .await?;
    Ok(found.is_some())
}

/// Cancels the pending jobs of `run` (running ones finish). Returns how many were cancelled.
pub(crate) async fn cancel(db: &Store, run: &str) -> sqlx::Result<u64> {
    let mut cancelled = 0;
    loop {
        let now = now_ms();
        let result = db
            .execute(
                sqlx::query(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?2, updated_at = ?2
             WHERE id IN (SELECT id FROM jobs WHERE run = ?1 AND status = 'pending' LIMIT ?3)
               AND status = 'pending'",
                )
                .bind(run)
                .bind(now)
                .bind(CHUNK_ROWS),
            )
            .await?;
        cancelled += result.rows_affected();
        if result.rows_affected() == 0 {
            return Ok(cancelled);
        }
    }
}

/// What [`requeue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Requeued {
    pub requeued: u64,
    /// Matching jobs left alone because the same pair is already pending or running.
    pub skipped: u64,
}

/// Returns the jobs of `run` in `statuses` (and with `code`, if given) to `pending` with a fresh
/// attempt budget. The last code, message and RequestId stay until the next attempt replaces
/// them. A pair is requeued at most once, and never while the same pair is already open.
pub(crate) async fn requeue(
    db: &Store,
    run: &str,
    statuses: &[Status],
    code: Option<&str>,
) -> sqlx::Result<Requeued> {
    let filter = Filter {
        run: Some(run.to_string()),
        statuses: statuses.to_vec(),
        code: code.map(str::to_string),
        ..Filter::default()
    };
    // Choose the rows with a read (no lock): the newest job of each matching pair.
    let pick_sql = format!(
        "SELECT COALESCE(SUM(n), 0), json_group_array(id) FROM
             (SELECT MAX(id) AS id, COUNT(*) AS n FROM jobs WHERE {FILTER_SQL}
              GROUP BY instance_id, client_id)"
    );
    let row = bind_filter(sqlx::query(&pick_sql), &filter)
        .fetch_one(&db.reader)
        .await?;
    let matched: i64 = row.get(0);
    let ids: Vec<i64> = serde_json::from_str(row.get::<&str, _>(1))
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    // Each chunk re-checks status and code (the daemon may have moved a job since) and skips a
    // pair that is already open, all inside one short statement.
    let update_sql = format!(
        "UPDATE jobs SET status = 'pending', attempts = 0, next_attempt_at = 0, finished_at = NULL,
             lease_owner = NULL, lease_until = NULL, updated_at = ?5
         WHERE id IN (SELECT value FROM json_each(?6)) AND {FILTER_SQL}
           AND NOT EXISTS (SELECT 1 FROM jobs AS o
                           WHERE o.instance_id = jobs.instance_id AND o.client_id = jobs.client_id
                             AND o.status IN ('pending', 'running'))"
    );
    let mut requeued = 0;
    for chunk in ids.chunks(CHUNK_ROWS as usize) {
        let ids = serde_json::to_string(chunk).expect("numbers serialize");
        let query = bind_filter(sqlx::query(&update_sql), &filter)
            .bind(now_ms())
            .bind(ids);
        let result = db.execute(query).await?;
        requeued += result.rows_affected();
    }
    Ok(Requeued {
        requeued,
        skipped: (matched as u64).saturating_sub(requeued),
    })
}

/// One row of the audit export.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct JobRecord {
    pub id: i64,
    pub instance_id: String,
    pub client_id: String,
    pub run: String,
    pub status: String,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    pub attempts: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None` while pending or running.
    pub finished_at: Option<i64>,
}

/// The jobs matching `filter` in id order, one row at a time (never all in memory). The stream
/// holds one read snapshot for its whole life.
pub(crate) fn export<'a>(
    db: &'a Store,
    filter: &'a Filter,
    sql: &'a str,
) -> impl Stream<Item = sqlx::Result<JobRecord>> + 'a {
    bind_filter(sqlx::query(sql), filter)
        .fetch(&db.reader)
        .map(|row| {
            let r = row?;
            let optional = |index| r.get::<Option<Vec<u8>>, _>(index).map(lossy);
            Ok(JobRecord {
                id: r.get(0),
                instance_id: text(&r, 1),
                client_id: text(&r, 2),
                run: text(&r, 3),
                status: r.get(4),
                code: optional(5),
                message: optional(6),
                request_id: optional(7),
                attempts: r.get(8),
                created_at: r.get(9),
                finished_at: r.get(10),
            })
        })
}

/// The query text [`export`] runs (kept outside so the stream can borrow it).
pub(crate) fn export_sql() -> String {
    format!(
        "SELECT id, {}, {}, {}, status, {}, {}, {},
                CAST(attempts AS INTEGER), CAST(created_at AS INTEGER),
                CAST(finished_at AS INTEGER)
         FROM jobs WHERE {FILTER_SQL} ORDER BY id",
        shown("instance_id"),
        shown("client_id"),
        shown("run"),
        shown("last_code"),
        shown("last_message"),
        shown("request_id"),
    )
}

fn bind_filter<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    filter: &Filter,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(filter.run.clone())
        .bind(filter.instance.clone())
        .bind(filter.statuses_json())
        .bind(filter.code.clone())
}

/// The status of the newest job of `run` for each of `client_ids` on `instance` that has one.
pub(crate) async fn statuses_of(
    db: &Store,
    run: &str,
    instance: &str,
    client_ids: &[String],
) -> sqlx::Result<Vec<(String, String)>> {
    let ids = serde_json::to_string(client_ids).expect("strings serialize");
    sqlx::query_as(
        "SELECT client_id, status FROM jobs
         WHERE id IN (SELECT MAX(id) FROM jobs
                      WHERE run = ?1 AND instance_id = ?2
                        AND client_id IN (SELECT value FROM json_each(?3))
                      GROUP BY client_id)",
    )
    .bind(run)
    .bind(instance)
    .bind(ids)
    .fetch_all(&db.reader)
    .await
}

/// Up to `n` jobs of `run` that ended `succeeded` or `not_found`, picked at random:
/// `(instance_id, client_id)`.
pub(crate) async fn sample_finished(
    db: &Store,
    run: &str,
    n: u32,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT instance_id, client_id FROM jobs
         WHERE run = ?1 AND status IN ('succeeded', 'not_found')
           AND typeof(instance_id) = 'text' AND typeof(client_id) = 'text'
         ORDER BY random() LIMIT ?2",
    )
    .bind(run)
    .bind(i64::from(n))
    .fetch_all(&db.reader)
    .await
}

/// Returns the newest finished job of `run` for each of `client_ids` on `instance` to
/// `pending` with a fresh attempt budget, unless the pair is already open. Returns how many.
pub(crate) async fn requeue_pairs(
    db: &Store,
    run: &str,
    instance: &str,
    client_ids: &[String],
) -> sqlx::Result<u64> {
    let mut requeued = 0;
    for chunk in client_ids.chunks(CHUNK_ROWS as usize) {
        let ids = serde_json::to_string(chunk).expect("strings serialize");
        let result = db
            .execute(
                sqlx::query(
                    "UPDATE jobs SET status = 'pending', attempts = 0, next_attempt_at = 0,
                         finished_at = NULL, lease_owner = NULL, lease_until = NULL, updated_at = ?4
                     WHERE id IN (SELECT MAX(id) FROM jobs
                                  WHERE run = ?1 AND instance_id = ?2
                                    AND client_id IN (SELECT value FROM json_each(?3))
                                  GROUP BY client_id)
                       AND status NOT IN ('pending', 'running')
                       AND NOT EXISTS (SELECT 1 FROM jobs AS o
                                       WHERE o.instance_id = jobs.instance_id
                                         AND o.client_id = jobs.client_id
                                         AND o.status IN ('pending', 'running'))",
                )
                .bind(run)
                .bind(instance)
                .bind(ids)
                .bind(now_ms()),
            )
            .await?;
        requeued += result.rows_affected();
    }
    Ok(requeued)
}

/// Open jobs (pending or running) per run and instance, for `deregd plan`; only `run`'s when
/// given.
pub(crate) async fn open_by_instance(
    db: &Store,
    run: Option<&str>,
) -> sqlx::Result<Vec<(String, String, i64)>> {
    let sql = format!(
        "SELECT {}, {}, COUNT(*) FROM jobs
         WHERE status IN ('pending', 'running') AND (?1 IS NULL OR run = ?1)
         GROUP BY run, instance_id ORDER BY run, instance_id",
        shown("run"),
        shown("instance_id")
    );
    let rows = sqlx::query(&sql).bind(run).fetch_all(&db.reader).await?;
    Ok(rows
        .iter()
        .map(|row| (text(row, 0), text(row, 1), row.get(2)))
        .collect())
}

/// Open jobs created before `before_ms`, per run; only `run`'s when given.
pub(crate) async fn open_created_before(
    db: &Store,
    run: Option<&str>,
    before_ms: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    let sql = format!(
        "SELECT {}, COUNT(*) FROM jobs
         WHERE status IN ('pending', 'running') AND created_at < ?2 AND (?1 IS NULL OR run = ?1)
         GROUP BY run ORDER BY run",
        shown("run")
    );
    let rows = sqlx::query(&sql)
        .bind(run)
        .bind(before_ms)
        .fetch_all(&db.reader)
        .await?;
    Ok(rows.iter().map(|row| (text(row, 0), row.get(1))).collect())
}
