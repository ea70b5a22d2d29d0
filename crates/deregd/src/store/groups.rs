//! The `run_groups` table: which groups a run was taken from (`deregd submit --group`), when,
//! and how many credentials each listed. `deregd verify` lists them again.

use super::Store;

/// One group a run was taken from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunGroup {
    pub instance_id: String,
    pub group_id: String,
    /// Unix ms of the listing.
    pub listed_at: i64,
    pub listed: i64,
}

/// Records that `run` was taken from `group` (a later listing of the same group replaces it).
pub(crate) async fn record(store: &Store, run: &str, group: &RunGroup) -> sqlx::Result<()> {
    store
        .execute(
            sqlx::query(
                "INSERT INTO run_groups (run, instance_id, group_id, listed_at, listed)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run, instance_id, group_id)
                 DO UPDATE SET listed_at = excluded.listed_at, listed = excluded.listed",
            )
            .bind(run)
            .bind(&group.instance_id)
            .bind(&group.group_id)
            .bind(group.listed_at)
            .bind(group.listed),
        )
        .await?;
    Ok(())
}

/// The groups `run` was taken from.
pub(crate) async fn of_run(store: &Store, run: &str) -> sqlx::Result<Vec<RunGroup>> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT instance_id, group_id, listed_at, listed FROM run_groups WHERE run = ?1
         ORDER BY instance_id, group_id",
    )
    .bind(run)
    .fetch_all(&store.reader)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(instance_id, group_id, listed_at, listed)| RunGroup {
            instance_id,
            group_id,
            listed_at,
            listed,
        })
        .collect())
}
