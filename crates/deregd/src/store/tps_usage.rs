//! Billing: the `tps_usage` table, successful (HTTP 2xx) calls per instance, per unix second
//! and per action, i.e. what deregd added to each instance's billed TPS (every action's
//! successes are billed). A dispatcher writes its counts only inside the outcome transaction
//! of [`crate::store::jobs::complete`], so a count and its job's outcome land together.

use sqlx::SqliteExecutor;

use super::Store;
use crate::action::Action;

/// Billed calls counted by `(instance_id, unix second, action)`.
pub(crate) type Tally = Vec<(String, i64, &'static str, i64)>;

/// Sums billed calls of `action` by instance and second.
pub(crate) fn tally<'a>(action: Action, calls: impl Iterator<Item = (&'a str, i64)>) -> Tally {
    let mut sums: std::collections::BTreeMap<(&str, i64), i64> = Default::default();
    for key in calls {
        *sums.entry(key).or_default() += 1;
    }
    sums.into_iter()
        .map(|((instance, second), calls)| (instance.to_string(), second, action.name(), calls))
        .collect()
}

/// Adds billed calls to `tps_usage`, one statement for the whole tally.
pub(crate) async fn record_calls<'e>(
    exec: impl SqliteExecutor<'e>,
    tally: &Tally,
) -> sqlx::Result<()> {
    let rows = serde_json::to_string(tally).expect("strings and numbers serialize");
    sqlx::query(
        "INSERT INTO tps_usage (instance_id, second, action, calls)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1) WHERE true
         ON CONFLICT (instance_id, second, action) DO UPDATE SET calls = calls + excluded.calls",
    )
    .bind(rows)
    .execute(exec)
    .await?;
    Ok(())
}

/// Records billed calls made outside a job's outcome (a listing, a verification), in a
/// transaction of their own.
pub(crate) async fn record(store: &Store, tally: &Tally) -> sqlx::Result<()> {
    if tally.is_empty() {
        return Ok(());
    }
    store
        .write(async |conn| record_calls(&mut *conn, tally).await)
        .await
}

/// Billed calls of one action on one instance over a window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActionUsage {
    pub instance_id: String,
    /// The OpenAPI action's name, e.g. `UnRegisterDeviceCredential`.
    pub action: String,
    pub calls: i64,
}

/// Billed calls per instance and action over `[since, until)` unix seconds, for the instances
/// in `instances` (all when empty).
pub(crate) async fn usage_by_action<'e>(
    exec: impl SqliteExecutor<'e>,
    instances: &[String],
    since: i64,
    until: i64,
) -> sqlx::Result<Vec<ActionUsage>> {
    let instances =
        (!instances.is_empty()).then(|| serde_json::to_string(instances).expect("strings"));
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT instance_id, action, SUM(calls) FROM tps_usage
         WHERE second >= ?1 AND second < ?2
           AND (?3 IS NULL OR instance_id IN (SELECT value FROM json_each(?3)))
         GROUP BY instance_id, action ORDER BY instance_id, action",
    )
    .bind(since)
    .bind(until)
    .bind(instances)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(instance_id, action, calls)| ActionUsage {
            instance_id,
            action,
            calls,
        })
        .collect())
}

/// `tps_usage` summed over actions: one row per instance and second.
const PER_SECOND: &str =
    "(SELECT instance_id, second, SUM(calls) AS calls FROM tps_usage GROUP BY instance_id, second)";

/// Billed calls and the peak calls in one second, per instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceUsage {
    pub instance_id: String,
    pub calls: i64,
    pub peak_tps: i64,
}

/// Usage per instance over `[since, until)` unix seconds.
pub(crate) async fn usage_by_instance<'e>(
    exec: impl SqliteExecutor<'e>,
    since: i64,
    until: i64,
) -> sqlx::Result<Vec<InstanceUsage>> {
    use sqlx::Row;
    let rows = sqlx::query(&format!(
        "SELECT instance_id, SUM(calls), MAX(calls) FROM {PER_SECOND}
             WHERE second >= ?1 AND second < ?2 GROUP BY instance_id ORDER BY instance_id"
    ))
    .bind(since)
    .bind(until)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| InstanceUsage {
            instance_id: r.get(0),
            calls: r.get(1),
            peak_tps: r.get(2),
        })
        .collect())
}

/// Billed calls of one instance in one time bucket.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BucketUsage {
    pub instance_id: String,
    /// Start of the bucket, unix seconds (UTC-aligned).
    pub start: i64,
    pub calls: i64,
    /// Most calls in any one second of the bucket.
    pub peak_tps: i64,
}

/// Usage per instance per `bucket_secs`-long bucket over `[since, until)` unix seconds, for the
/// instances in `instances` (all when empty); ordered by bucket, then instance.
pub(crate) async fn usage_by_bucket<'e>(
    exec: impl SqliteExecutor<'e>,
    instances: &[String],
    since: i64,
    until: i64,
    bucket_secs: i64,
) -> sqlx::Result<Vec<BucketUsage>> {
    use sqlx::Row;
    let instances =
        (!instances.is_empty()).then(|| serde_json::to_string(instances).expect("strings"));
    let rows = sqlx::query(&format!(
        "SELECT instance_id, (second / ?3) * ?3 AS start, SUM(calls), MAX(calls)
             FROM {PER_SECOND}
             WHERE second >= ?1 AND second < ?2
               AND (?4 IS NULL OR instance_id IN (SELECT value FROM json_each(?4)))
             GROUP BY start, instance_id ORDER BY start, instance_id"
    ))
    .bind(since)
    .bind(until)
    .bind(bucket_secs.max(1))
    .bind(instances)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| BucketUsage {
            instance_id: r.get(0),
            start: r.get(1),
            calls: r.get(2),
            peak_tps: r.get(3),
        })
        .collect())
}

/// Billed calls per second, account-wide, over the last `window_secs` seconds before `now_secs`;
/// measured from the first billed second when billing began less than a window ago, so a young
/// run does not read low.
pub(crate) async fn recent_rate<'e>(
    exec: impl SqliteExecutor<'e>,
    now_secs: i64,
    window_secs: i64,
) -> sqlx::Result<f64> {
    let (calls, first): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT SUM(calls), MIN(second) FROM tps_usage WHERE second >= ?1 AND second < ?2",
    )
    .bind(now_secs - window_secs)
    .bind(now_secs)
    .fetch_one(exec)
    .await?;
    let span = first.map_or(window_secs, |first| now_secs - first);
    Ok(calls.unwrap_or(0) as f64 / span.clamp(1, window_secs.max(1)) as f64)
}
