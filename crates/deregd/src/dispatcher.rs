//! The one dispatcher per database: an exclusive lock on `<database>.lock` (released by the
//! kernel when the process dies, so a crash never leaves a stale lock), and the `dispatcher`
//! row where the running daemon publishes its heartbeat, pacing rate and pause state for
//! `deregd status`. Two dispatchers on one database would double the account's call rate.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use sqlx::Row;

use crate::clock::now_ms;
use crate::db::Db;

/// Held for the life of `deregd run`.
#[derive(Debug)]
pub struct DispatchLock {
    _file: File,
    pub path: PathBuf,
}

/// Another process already dispatches from this database.
#[derive(Debug, thiserror::Error)]
#[error(
    "another deregd run is already dispatching from {database} (lock {lock} is held{holder}); \
         two dispatchers would double the account's call rate"
)]
pub struct AlreadyRunning {
    pub database: String,
    pub lock: String,
    pub holder: String,
}

/// Takes the database's dispatcher lock, or says who holds it.
pub fn lock(database: &Path) -> anyhow::Result<DispatchLock> {
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {
            // Record who holds it, for the next one's message.
            use std::io::Write;
            let mut f = &file;
            let _ = f.set_len(0);
            let _ = writeln!(f, "pid {}", std::process::id());
            Ok(DispatchLock { _file: file, path })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| format!(" by {}", s.trim()))
                .filter(|s| s.len() > 4)
                .unwrap_or_default();
            Err(AlreadyRunning {
                database: database.display().to_string(),
                lock: path.display().to_string(),
                holder,
            }
            .into())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// What the running dispatcher last published.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Heartbeat {
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
pub async fn publish(db: &Db, beat: &Heartbeat) -> sqlx::Result<()> {
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
    .bind(beat.rate)
    .execute(&db.writer)
    .await?;
    Ok(())
}

/// Clears the row on a clean exit.
pub async fn clear(db: &Db, owner: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM dispatcher WHERE owner = ?1")
        .bind(owner)
        .execute(&db.writer)
        .await?;
    Ok(())
}

/// The last published heartbeat, if any.
pub async fn last(db: &Db) -> sqlx::Result<Option<Heartbeat>> {
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
