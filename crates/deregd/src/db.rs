//! Opening the SQLite database: WAL, a busy timeout, migrations. Writes go through a pool of ONE
//! connection (SQLite has one writer; a single queue is fair), reads through a small pool.
//! Every write transaction is `BEGIN IMMEDIATE` (see [`Db::begin_write`]).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Sqlite, Transaction};

/// How long a statement waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The two pools of one database file.
#[derive(Clone, Debug)]
pub struct Db {
    /// One connection: every write goes here.
    pub writer: SqlitePool,
    /// Read-only connections for queries and reports.
    pub reader: SqlitePool,
}

impl Db {
    /// Opens (creating if missing) and migrates the database at `path`.
    pub async fn open(path: &Path) -> anyhow::Result<Db> {
        let db = Self::open_unmigrated(path).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Opens without migrating (for `check`, which must not change anything).
    pub async fn open_unmigrated(path: &Path) -> anyhow::Result<Db> {
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT * 2)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot open database {}", path.display()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT * 2)
            .connect_with(options.read_only(true).create_if_missing(false))
            .await
            .with_context(|| format!("cannot open database {} for reading", path.display()))?;
        Ok(Db { writer, reader })
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
    /// on the busy timeout instead of failing with SQLITE_BUSY halfway.
    pub async fn begin_write(&self) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Gives the writer connection a page cache of `mib` MiB (bulk submission: the jobs indexes
    /// then stay in memory while a million rows go in). The daemon keeps the small default.
    pub async fn set_writer_cache_mib(&self, mib: u32) -> sqlx::Result<()> {
        sqlx::query(&format!("PRAGMA cache_size = -{}", mib as u64 * 1024))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}
