//! Billing: the `tps_usage` table, successful (HTTP 2xx) calls per instance per unix second,
//! i.e. what deregd added to each instance's billed TPS. Written only inside the outcome
//! transaction of [`crate::queue::complete`], so a count and its job's outcome land together.

use sqlx::SqliteExecutor;

/// Adds one billed call to `(instance_id, second)`.
pub async fn record_call<'e>(
    exec: impl SqliteExecutor<'e>,
    instance_id: &str,
    second: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tps_usage (instance_id, second, calls) VALUES (?1, ?2, 1)
         ON CONFLICT (instance_id, second) DO UPDATE SET calls = calls + 1",
    )
    .bind(instance_id)
    .bind(second)
    .execute(exec)
    .await?;
    Ok(())
}

/// Billed calls and the peak calls in one second, per instance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceUsage {
    pub instance_id: String,
    pub calls: i64,
    pub peak_tps: i64,
}

/// Usage per instance over `[since, until)` unix seconds.
pub async fn usage_by_instance<'e>(
    exec: impl SqliteExecutor<'e>,
    since: i64,
    until: i64,
) -> sqlx::Result<Vec<InstanceUsage>> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT instance_id, SUM(calls), MAX(calls) FROM tps_usage
         WHERE second >= ?1 AND second < ?2 GROUP BY instance_id ORDER BY instance_id",
    )
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
