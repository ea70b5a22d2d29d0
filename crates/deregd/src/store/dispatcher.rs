//! The `dispatcher` table: where the running daemon publishes its heartbeat, pacing rate and
//! pause state for `deregd status`.

use sqlx::Row;

use super::Store;
use crate::clock::now_ms;

/// What the running dispatcher last published.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Heartbeat {
    pub owner: String,
    pub pid: i64,
    pub host: String,
    /// Unix ms of the last heartbeat.
    pub heartbeat: i64,
    /// `None` while dispatching; the reason while paused.
    pub paused: Option<String>,
    /// Current pacing rate, calls per second.
    pub rate: Option<f64>,
}

/// Publishes this dispatcher's state.
pub(crate) async fn publish(db: &Store, beat: &Heartbeat) -> sqlx::Result<()> {
    db.execute(
        sqlx::query(
            "INSERT INTO dispatcher (id, owner, pid, host, heartbeat, paused, rate)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET owner = ?1, pid = ?2, host = ?3, heartbeat = ?4,
             paused = ?5, rate = ?6",
        )
        .bind(&beat.owner)
        .bind(beat.pid)
        .bind(&beat.host)
        .bind(now_ms())
        .bind(beat.paused.as_deref())
        .bind(beat.rate),
    )
    .await?;
    Ok(())
}

/// Clears the row on a clean exit.
pub(crate) async fn clear(db: &Store, owner: &str) -> sqlx::Result<()> {
    db.execute(sqlx::query("DELETE FROM dispatcher WHERE owner = ?1").bind(owner))
        .await?;
    Ok(())
}

/// The last published heartbeat, if any.
pub(crate) async fn last(db: &Store) -> sqlx::Result<Option<Heartbeat>> {
    let row = sqlx::query("SELECT owner, pid, host, heartbeat, paused, rate FROM dispatcher")
        .fetch_optional(&db.reader)
        .await?;
    Ok(row.map(|r| Heartbeat {
        owner: r.get(0),
        pid: r.get(1),
        host: r.get(2),
        heartbeat: r.get(3),
        paused: r.get(4),
        rate: r.get(5),
    }))
}
