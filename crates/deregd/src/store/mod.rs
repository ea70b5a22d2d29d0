//! The store: every SQL statement the daemon and the CLI run, in modules that own their tables
//! ([`jobs`], [`submit`], [`tps_usage`], [`dispatcher`], [`runs`]). This module opens the SQLite
//! database: WAL, a busy timeout, migrations. Writes go through a pool of ONE connection
//! (SQLite has one writer; a single queue is fair), reads through a small pool. Every write
//! transaction is `BEGIN IMMEDIATE` and goes through [`Store::write`], which never leaves the
//! writer connection inside a failed transaction: after a failed BEGIN, statement or COMMIT
//! (a full disk, an immutable file) the connection is closed and the next write opens a fresh
//! one, so the fault clearing is enough for writes to succeed again.

pub(crate) mod dispatcher;
pub(crate) mod groups;
pub mod jobs;
pub(crate) mod listings;
pub mod run_records;
pub(crate) mod runs;
pub mod submit;
pub(crate) mod tps_usage;
pub(crate) mod verifications;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection, Transaction};

/// How long a statement waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read-only connections, all opened with the database.
const READERS: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The two pools of one database file.
#[derive(Clone, Debug)]
pub struct Store {
    /// One connection: every write goes here.
    pub writer: SqlitePool,
    /// Read-only connections for queries and reports.
    pub reader: SqlitePool,
    /// The database file, as opened.
    path: PathBuf,
    /// The file's device and inode when it was opened.
    identity: Option<(u64, u64)>,
}

impl Store {
    /// Opens (creating if missing) and migrates the database at `path`.
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
        let db = Self::open_unmigrated(path).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Opens without migrating (for `check`, which must not change anything).
    pub async fn open_unmigrated(path: &Path) -> anyhow::Result<Store> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-4000")
            // SQL text is for `RUST_LOG=trace`; a long export or bulk change is not a warning.
            .log_statements(log::LevelFilter::Trace)
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        // Connections are opened once and kept: one opened after the file at `path` was
        // replaced would pair the new file with the old one's WAL (and checkpoint one into the
        // other). Only a write that failed closes the writer, and then it is reopened only
        // while the path still names the file opened (see `write`).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(BUSY_TIMEOUT * 2)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot open database {}", path.display()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(READERS)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(BUSY_TIMEOUT * 2)
            .connect_with(options.read_only(true).create_if_missing(false))
            .await
            .with_context(|| format!("cannot open database {} for reading", path.display()))?;
        let identity = file_identity(path);
        Ok(Store {
            writer,
            reader,
            path: path.to_path_buf(),
            identity,
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.writer)
            .await
            .context("cannot migrate the database")
    }

    /// Migrations not yet applied (empty when up to date).
    pub async fn pending_migrations(&self) -> anyhow::Result<Vec<String>> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(&self.reader)
                .await
                .unwrap_or_default();
        Ok(MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect())
    }

    /// A write transaction that takes the write lock at once (`BEGIN IMMEDIATE`), so it waits
    /// on the busy timeout instead of failing with SQLITE_BUSY halfway. For tests and tools
    /// that write by hand; the store's own writes use [`Store::write`].
    pub async fn begin_write(&self) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction on the writer connection and commits
    /// it. On any error the transaction is abandoned with its connection, which SQLite rolls
    /// back as it closes; the pool opens a new one for the next write.
    pub async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> sqlx::Result<T>,
    ) -> sqlx::Result<T> {
        if self.writer.size() == 0 {
            if let Some(why) = self.file_changed() {
                // A new connection would open the other file.
                return Err(sqlx::Error::Configuration(why.into()));
            }
        }
        let mut conn = Unfinished(Some(self.writer.acquire().await?));
        let c = conn.0.as_mut().expect("just acquired");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut **c).await?;
        let value = work(&mut *c).await?;
        sqlx::query("COMMIT").execute(&mut **c).await?;
        // Committed: the connection goes back to the pool as it is.
        drop(conn.0.take());
        Ok(value)
    }

    /// One statement as its own write transaction, through [`Store::write`].
    pub async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> sqlx::Result<sqlx::sqlite::SqliteQueryResult> {
        self.write(async |conn| query.execute(&mut *conn).await)
            .await
    }

    /// True when another connection holds the database's write lock right now (a long
    /// transaction in the `sqlite3` shell, a backup). Asks with a connection of its own that
    /// does not wait, and takes nothing: the lock it gets, if any, is given back at once.
    pub async fn write_lock_held(&self) -> bool {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .busy_timeout(Duration::ZERO)
            .log_statements(log::LevelFilter::Trace);
        let Ok(mut conn) = options.connect().await else {
            return false;
        };
        let held = match sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await {
            Ok(_) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                false
            }
            Err(e) => is_locked(&e),
        };
        let _ = conn.close().await;
        held
    }

    /// Copies the WAL into the database file and empties it, through the writer connection
    /// (so into the file opened, even if another now stands at its path: SQLite does not
    /// checkpoint a moved file when it closes, and its WAL, left under the path's name, would
    /// otherwise be read as part of whatever file stands there next).
    pub async fn checkpoint(&self) -> sqlx::Result<()> {
        let mut conn = self.writer.acquire().await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The database file, as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the file at the database's path is no longer the one opened (deleted, or another
    /// file moved over it), if it is not.
    pub fn file_changed(&self) -> Option<String> {
        let opened = self.identity?;
        match file_identity(&self.path) {
            None => Some(format!(
                "the database file {} was deleted while open",
                self.path.display()
            )),
            Some(now) if now != opened => Some(format!(
                "the database file {} was replaced by another file while open",
                self.path.display()
            )),
            Some(_) => None,
        }
    }

    /// Gives the writer connection a page cache of `mib` MiB (bulk submission: the jobs indexes
    /// then stay in memory while a million rows go in). The daemon keeps the small default.
    pub async fn set_writer_cache_mib(&self, mib: u32) -> sqlx::Result<()> {
        sqlx::query(&format!("PRAGMA cache_size = -{}", mib as u64 * 1024))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// The writer connection while a transaction may be open on it: dropped before the COMMIT
/// went through (an error, or the caller's future dropped), it closes the connection instead
/// of handing it back inside the transaction.
struct Unfinished(Option<sqlx::pool::PoolConnection<Sqlite>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// The device and inode of the file at `path`, following links.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// True for an error that says the database is busy or locked by another connection.
pub fn is_locked(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e)
        if matches!(e.code().as_deref(), Some("5") | Some("6") | Some("517") | Some("261") | Some("262")))
        || matches!(error, sqlx::Error::PoolTimedOut)
}
