//! Queueing pairs into `jobs` in large `BEGIN IMMEDIATE` chunks. Invariant: a pair is not
//! queued while the same pair is already pending or running, whoever queued it, so a
//! re-submitted list is idempotent.

use std::collections::{HashMap, HashSet};

use super::Store;
use crate::clock::now_ms;
use crate::job;

/// Rows inserted per write transaction: large enough to amortise the commit, small enough that
/// the daemon never waits on the write lock for more than a fraction of a second.
pub const CHUNK_ROWS: usize = 50_000;

/// The pairs already pending or running, by instance: what a submission must not queue again.
#[derive(Debug, Default)]
pub struct OpenPairs(HashMap<String, rustc_hash::FxHashSet<String>>);

impl OpenPairs {
    pub fn contains(&self, instance_id: &str, client_id: &str) -> bool {
        self.0
            .get(instance_id)
            .is_some_and(|clients| clients.contains(client_id))
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(HashSet::is_empty)
    }

    fn extend(&mut self, other: OpenPairs) {
        for (instance, clients) in other.0 {
            self.0.entry(instance).or_default().extend(clients);
        }
    }

    fn insert(&mut self, instance_id: String, client_id: String) {
        self.0.entry(instance_id).or_default().insert(client_id);
    }
}

/// Loads the open pairs of `instances` in one pass over the `jobs_pair_open` index. One row per
/// instance (a JSON array of its ClientIds): a million single rows cost seconds in the driver.
pub async fn open_pairs(db: &Store, instances: &[&str]) -> sqlx::Result<OpenPairs> {
    use sqlx::Row;
    let instances = serde_json::to_string(instances).expect("strings serialize");
    // A hand-written BLOB ClientId is read as its literal: JSON cannot hold a BLOB.
    let sql = format!(
        "SELECT instance_id, json_group_array({}) FROM jobs INDEXED BY jobs_pair_open
         WHERE status IN ('pending', 'running')
           AND instance_id IN (SELECT value FROM json_each(?1))
         GROUP BY instance_id",
        job::shown("client_id")
    );
    let rows = sqlx::query(&sql)
        .bind(instances)
        .fetch_all(&db.reader)
        .await?;
    let mut open = OpenPairs::default();
    for row in rows {
        let clients = job::lossy(row.get(1));
        let clients: rustc_hash::FxHashSet<String> =
            serde_json::from_str(&clients).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        open.0.insert(job::lossy(row.get(0)), clients);
    }
    Ok(open)
}

/// What [`submit`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inserted {
    pub queued: u64,
    /// Pairs skipped because the same pair is already pending or running.
    pub already_open: u64,
}

impl std::ops::AddAssign for Inserted {
    fn add_assign(&mut self, other: Inserted) {
        self.queued += other.queued;
        self.already_open += other.already_open;
    }
}

/// Queues the pairs of `pairs` that are not already open, under `run`, in input order,
/// [`CHUNK_ROWS`] per `BEGIN IMMEDIATE` transaction.
pub async fn submit(db: &Store, pairs: &[(&str, &str)], run: &str) -> sqlx::Result<Inserted> {
    let mut submission = Submission::begin(db, run).await?;
    for chunk in pairs.chunks(CHUNK_ROWS) {
        submission.add(chunk).await?;
    }
    Ok(submission.inserted)
}

/// A submission in progress, chunk by chunk. Invariant: a pair is never queued while the same
/// pair is pending or running, whoever queued it (another `submit`, a `sqlite3` INSERT) and
/// whenever. Each instance's open pairs are read once, before its first chunk, outside any
/// write transaction; each chunk's write transaction then reads the open rows with an id above
/// the highest this submission has accounted for (rows queued by others since), which is
/// nothing at all unless someone else inserted meanwhile. (Job ids only grow, unless someone
/// deletes the newest jobs by hand: a row that then reuses a deleted id is not seen.)
pub struct Submission<'d> {
    db: &'d Store,
    run: String,
    open: OpenPairs,
    loaded: HashSet<String>,
    /// Every job with a higher id is unknown to `open`.
    seen_max_id: i64,
    pub inserted: Inserted,
}

impl<'d> Submission<'d> {
    pub async fn begin(db: &'d Store, run: &str) -> sqlx::Result<Submission<'d>> {
        // Read before any open pairs: a row inserted in between is both in them and above this
        // id, which only means it is looked at twice.
        let seen_max_id = max_job_id(&db.reader).await?;
        Ok(Submission {
            db,
            run: run.to_string(),
            open: OpenPairs::default(),
            loaded: HashSet::new(),
            seen_max_id,
            inserted: Inserted::default(),
        })
    }

    /// Queues the pairs of `chunk` that are not open, in one transaction.
    pub async fn add(&mut self, chunk: &[(&str, &str)]) -> sqlx::Result<()> {
        let new: Vec<&str> = chunk
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| !self.loaded.contains(*i))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !new.is_empty() {
            self.open.extend(open_pairs(self.db, &new).await?);
            self.loaded.extend(new.iter().map(|i| i.to_string()));
        }
        let db = self.db;
        let candidates = chunk.len();
        let written = db
            .write(async |conn| {
                let mut open_seen = Vec::new();
                if max_job_id(&mut *conn).await? > self.seen_max_id {
                    let sql = format!(
                        "SELECT {}, {} FROM jobs WHERE id > ?1 AND status IN ('pending', 'running')",
                        job::shown("instance_id"),
                        job::shown("client_id")
                    );
                    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(&sql)
                        .bind(self.seen_max_id)
                        .fetch_all(&mut *conn)
                        .await?;
                    open_seen = rows;
                }
                for (instance, client) in open_seen {
                    self.open.insert(job::lossy(instance), job::lossy(client));
                }
                let fresh: Vec<(&str, &str)>;
                let chunk = if self.open.is_empty() {
                    chunk
                } else {
                    fresh = chunk
                        .iter()
                        .copied()
                        .filter(|(i, c)| !self.open.contains(i, c))
                        .collect();
                    &fresh
                };
                let queued = if chunk.is_empty() {
                    0
                } else {
                    insert_chunk(&mut *conn, chunk, &self.run).await?
                };
                let max_id = max_job_id(&mut *conn).await?;
                Ok((queued, chunk.len(), max_id))
            })
            .await?;
        let (queued, inserted_candidates, max_id) = written;
        self.inserted.queued += queued;
        self.seen_max_id = max_id;
        let chunk_len = inserted_candidates;
        self.inserted.already_open += (candidates - chunk_len) as u64;
        Ok(())
    }
}

async fn max_job_id<'e>(exec: impl sqlx::SqliteExecutor<'e>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT IFNULL(MAX(id), 0) FROM jobs")
        .fetch_one(exec)
        .await
}

/// Inserts one chunk. A chunk of one instance (the usual case) is sent as a flat JSON array of
/// ClientIds, which SQLite reads several times faster than an array of pairs.
async fn insert_chunk(
    conn: &mut sqlx::SqliteConnection,
    chunk: &[(&str, &str)],
    run: &str,
) -> sqlx::Result<u64> {
    let now = now_ms();
    let first = chunk.first().map(|(i, _)| *i).unwrap_or_default();
    let single = chunk.iter().all(|(i, _)| *i == first);
    let query = if single {
        let clients: Vec<&str> = chunk.iter().map(|(_, c)| *c).collect();
        sqlx::query(
            "INSERT INTO jobs (instance_id, client_id, run, created_at, updated_at)
             SELECT ?4, value, ?2, ?3, ?3 FROM json_each(?1)",
        )
        .bind(serde_json::to_string(&clients).expect("strings serialize"))
        .bind(run)
        .bind(now)
        .bind(first)
    } else {
        sqlx::query(
            "INSERT INTO jobs (instance_id, client_id, run, created_at, updated_at)
             SELECT value ->> 0, value ->> 1, ?2, ?3, ?3 FROM json_each(?1)",
        )
        .bind(serde_json::to_string(chunk).expect("strings serialize"))
        .bind(run)
        .bind(now)
    };
    Ok(query.execute(&mut *conn).await?.rows_affected())
}
