//! The `listings` table: a group's ClientIds while `deregd submit --group` lists it, under the
//! submission's token. They become jobs only once the whole group is listed, and a listing
//! that fails leaves nothing behind: no job is ever queued from half a group.

use super::submit::{Inserted, Submission, CHUNK_ROWS};
use super::Store;
use crate::clock::now_ms;

/// Listings older than this belong to a submission that died: they are removed.
const STALE_MS: i64 = 24 * 3600 * 1000;

/// Adds one page of `group`'s ClientIds under `token` (an id listed twice is kept once).
pub(crate) async fn add(
    store: &Store,
    token: &str,
    instance: &str,
    group: &str,
    client_ids: &[String],
) -> sqlx::Result<()> {
    let ids = serde_json::to_string(client_ids).expect("strings serialize");
    let now = now_ms();
    store
        .execute(
            sqlx::query(
                "INSERT OR IGNORE INTO listings (token, instance_id, group_id, client_id, listed_at)
                 SELECT ?1, ?2, ?3, value, ?4 FROM json_each(?5)",
            )
            .bind(token)
            .bind(instance)
            .bind(group)
            .bind(now)
            .bind(ids),
        )
        .await?;
    Ok(())
}

/// Removes what `token` listed of `group`.
pub(crate) async fn discard(store: &Store, token: &str, group: &str) -> sqlx::Result<()> {
    store
        .execute(
            sqlx::query("DELETE FROM listings WHERE token = ?1 AND group_id = ?2")
                .bind(token)
                .bind(group),
        )
        .await?;
    Ok(())
}

/// Removes the listings of submissions that died a day ago or more.
pub(crate) async fn purge_stale(store: &Store) -> sqlx::Result<u64> {
    let result = store
        .execute(sqlx::query("DELETE FROM listings WHERE listed_at < ?1").bind(now_ms() - STALE_MS))
        .await?;
    Ok(result.rows_affected())
}

/// Queues what `token` listed of `group` as jobs of `run` on `instance` (pairs already
/// pending or running are skipped), chunk by chunk, then removes the listing.
pub(crate) async fn queue(
    store: &Store,
    token: &str,
    instance: &str,
    group: &str,
    run: &str,
) -> sqlx::Result<Inserted> {
    let mut submission = Submission::begin(store, run).await?;
    let mut after = String::new();
    loop {
        let chunk: Vec<String> = sqlx::query_scalar(
            "SELECT client_id FROM listings WHERE token = ?1 AND group_id = ?2 AND client_id > ?3
             ORDER BY client_id LIMIT ?4",
        )
        .bind(token)
        .bind(group)
        .bind(&after)
        .bind(CHUNK_ROWS as i64)
        .fetch_all(&store.reader)
        .await?;
        let Some(last) = chunk.last() else { break };
        after = last.clone();
        let pairs: Vec<(&str, &str)> = chunk.iter().map(|c| (instance, c.as_str())).collect();
        submission.add(&pairs).await?;
    }
    discard(store, token, group).await?;
    Ok(submission.inserted)
}
