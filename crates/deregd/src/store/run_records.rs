//! The `runs` table: each run's record (created when and by whom, from what) and its state.
//! Only the jobs of an `active` run are claimed; `deregd pause --run` and `resume --run` move
//! a run between `active` and `paused`, `cancel --run` makes it `cancelled`, and a run none of
//! whose jobs is open becomes `done`. A label that arrived by plain SQL gets its row when a
//! dispatcher first claims one of its jobs ([`super::jobs::claim`]).

use std::collections::BTreeMap;

use super::Store;
use crate::clock::now_ms;

/// A run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Active,
    Paused,
    Cancelled,
    Done,
}

impl RunState {
    fn parse(s: &str) -> RunState {
        match s {
            "paused" => RunState::Paused,
            "cancelled" => RunState::Cancelled,
            "done" => RunState::Done,
            _ => RunState::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Active => "active",
            RunState::Paused => "paused",
            RunState::Cancelled => "cancelled",
            RunState::Done => "done",
        }
    }
}

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    pub label: String,
    /// Unix ms.
    pub created_at: i64,
    /// `user@host` of the first submit; `None` for a run that arrived by SQL.
    pub created_by: Option<String>,
    /// `file clients.txt (1200 lines)`, `groups GID_a, GID_b on post-cn-x`, or `sql`.
    pub source: String,
    pub state: RunState,
    pub state_reason: Option<String>,
    /// Unix ms.
    pub state_changed_at: i64,
    /// Its own maintenance windows, if any.
    pub windows: Option<Vec<String>>,
}

type Row = (
    String,
    i64,
    Option<String>,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
);

fn record(
    (label, created_at, created_by, source, state, state_reason, changed, windows): Row,
) -> RunRecord {
    RunRecord {
        label,
        created_at,
        created_by,
        source,
        state: RunState::parse(&state),
        state_reason,
        state_changed_at: changed,
        windows: windows.map(|w| windows_from(&w).unwrap_or_default()),
    }
}

const COLUMNS: &str = "label, created_at, created_by, source, state, state_reason, \
    state_changed_at, CASE typeof(windows) WHEN 'text' THEN windows END";

/// Records the run `label` as a submit starts it. A run that exists keeps its record; one that
/// was `done` or `cancelled` is `active` again, since jobs are being added to it.
/// With `own`, the run's own settings (those a later submit leaves unset are kept).
pub(crate) async fn open(
    store: &Store,
    label: &str,
    created_by: &str,
    source: &str,
    own: &OwnSettings,
) -> sqlx::Result<()> {
    let abort_share = own.abort_share;
    let windows = own.windows_json();
    store
        .write(async |conn| {
            sqlx::query(
                "INSERT INTO runs (label, created_at, created_by, source, state, state_changed_at,
                                   abort_failure_share)
                 VALUES (?1, ?2, ?3, ?4, 'active', ?2, ?5)
                 ON CONFLICT (label) DO UPDATE SET state = 'active', state_reason = NULL,
                     state_changed_at = excluded.state_changed_at
                 WHERE runs.state IN ('done', 'cancelled')",
            )
            .bind(label)
            .bind(now_ms())
            .bind(created_by)
            .bind(source)
            .bind(abort_share)
            .execute(&mut *conn)
            .await?;
            if let Some(share) = abort_share {
                sqlx::query("UPDATE runs SET abort_failure_share = ?2 WHERE label = ?1")
                    .bind(label)
                    .bind(share)
                    .execute(&mut *conn)
                    .await?;
            }
            if let Some(windows) = &windows {
                sqlx::query("UPDATE runs SET windows = ?2 WHERE label = ?1")
                    .bind(label)
                    .bind(windows)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
        .await
}

/// A run's own settings, over the configured ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnSettings {
    /// Its abort rule share.
    pub abort_share: Option<f64>,
    /// Its maintenance windows (specs, read in `worker.timezone`).
    pub windows: Option<Vec<String>>,
}

impl OwnSettings {
    fn windows_json(&self) -> Option<String> {
        self.windows
            .as_ref()
            .map(|w| serde_json::to_string(w).expect("strings serialize"))
    }
}

/// Sets (or with `None` clears) the run's own maintenance windows.
pub(crate) async fn set_windows(
    store: &Store,
    label: &str,
    windows: Option<&[String]>,
) -> sqlx::Result<bool> {
    let json = windows.map(|w| serde_json::to_string(w).expect("strings serialize"));
    Ok(store
        .execute(
            sqlx::query("UPDATE runs SET windows = ?2 WHERE label = ?1")
                .bind(label)
                .bind(json),
        )
        .await?
        .rows_affected()
        > 0)
}

/// What the dispatcher needs of the runs: which are paused and why, and the runs' own abort
/// shares and windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunControls {
    pub paused: BTreeMap<String, String>,
    pub abort_share: BTreeMap<String, f64>,
    /// The open runs' own windows; a value that is not a list of strings (typed by hand) is an
    /// empty list with the reason, and holds the run.
    pub windows: BTreeMap<String, Result<Vec<String>, String>>,
}

/// A `runs.windows` value as specs.
pub(crate) fn windows_from(json: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(json)
        .map_err(|_| format!("runs.windows is not a JSON list of window specs: {json:.80}"))
}

/// The [`RunControls`] as the database holds them now.
/// A run's controls: label, state, reason, abort share, windows (JSON).
type ControlRow = (String, String, Option<String>, Option<f64>, Option<String>);

pub(crate) async fn controls(store: &Store) -> sqlx::Result<RunControls> {
    let rows: Vec<ControlRow> = sqlx::query_as(
        "SELECT label, state, state_reason, abort_failure_share,
                CASE typeof(windows) WHEN 'text' THEN windows END
         FROM runs
         WHERE state = 'paused' OR abort_failure_share IS NOT NULL
            OR (windows IS NOT NULL AND state IN ('active', 'paused'))",
    )
    .fetch_all(&store.reader)
    .await?;
    let mut controls = RunControls::default();
    for (label, state, reason, share, windows) in rows {
        if let Some(share) = share {
            controls.abort_share.insert(label.clone(), share);
        }
        if let Some(windows) = windows {
            controls
                .windows
                .insert(label.clone(), windows_from(&windows));
        }
        if state == "paused" {
            controls.paused.insert(label, reason.unwrap_or_default());
        }
    }
    Ok(controls)
}

/// Within a claim's transaction: the runs of the claimed rows (`due`, the claim's JSON array
/// of `[id, instance, client, run, attempts]`) get a record if they have none (`sql`: rows
/// inserted by hand), and a `done` or `cancelled` one is active again.
pub(crate) async fn seen(
    conn: &mut sqlx::SqliteConnection,
    due: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO runs (label, created_at, source, state, state_changed_at)
         SELECT DISTINCT value ->> 3, ?2, 'sql', 'active', ?2 FROM json_each(?1)
         WHERE value ->> 3 IS NOT NULL
         ON CONFLICT (label) DO UPDATE SET state = 'active', state_reason = NULL,
             state_changed_at = excluded.state_changed_at
         WHERE runs.state IN ('done', 'cancelled')",
    )
    .bind(due)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a change of state found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Changed {
    Done,
    /// The run was already in the state asked for, or in one it cannot leave that way.
    Unchanged(RunState),
    NoSuchRun,
}

/// Pauses `label` (only an active run) with `reason`.
pub(crate) async fn pause(store: &Store, label: &str, reason: &str) -> sqlx::Result<Changed> {
    set_state(store, label, RunState::Paused, Some(reason), &["active"]).await
}

/// Resumes a paused `label`.
pub(crate) async fn resume(store: &Store, label: &str) -> sqlx::Result<Changed> {
    set_state(store, label, RunState::Active, None, &["paused"]).await
}

/// Marks `label` cancelled (`deregd cancel --run`).
pub(crate) async fn cancelled(store: &Store, label: &str) -> sqlx::Result<Changed> {
    set_state(
        store,
        label,
        RunState::Cancelled,
        Some("cancelled by the operator"),
        &["active", "paused", "done"],
    )
    .await
}

async fn set_state(
    store: &Store,
    label: &str,
    to: RunState,
    reason: Option<&str>,
    from: &[&str],
) -> sqlx::Result<Changed> {
    let from = serde_json::to_string(from).expect("strings serialize");
    let changed = store
        .execute(
            sqlx::query(
                "UPDATE runs SET state = ?2, state_reason = ?3, state_changed_at = ?4
                 WHERE label = ?1 AND state IN (SELECT value FROM json_each(?5))",
            )
            .bind(label)
            .bind(to.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(&from),
        )
        .await?
        .rows_affected();
    if changed > 0 {
        return Ok(Changed::Done);
    }
    Ok(match get(store, label).await? {
        Some(r) => Changed::Unchanged(r.state),
        None => Changed::NoSuchRun,
    })
}

/// The record of `label`.
pub(crate) async fn get(store: &Store, label: &str) -> sqlx::Result<Option<RunRecord>> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM runs WHERE label = ?1"))
        .bind(label)
        .fetch_optional(&store.reader)
        .await?;
    Ok(row.map(record))
}

/// Marks `done` the active runs none of whose jobs is open. Returns how many.
pub(crate) async fn mark_done(store: &Store) -> sqlx::Result<u64> {
    Ok(store
        .execute(
            sqlx::query(
                "UPDATE runs SET state = 'done', state_reason = NULL, state_changed_at = ?1
                 WHERE state = 'active' AND NOT EXISTS (
                     SELECT 1 FROM jobs WHERE jobs.run = runs.label
                         AND jobs.status IN ('pending', 'running'))",
            )
            .bind(now_ms()),
        )
        .await?
        .rows_affected())
}

/// `user@host` of this process, for `created_by`.
pub(crate) fn operator() -> String {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(account_name);
    format!("{user}@{}", crate::worker::hostname())
}

/// This process's user name from the password database, else `uid N`.
fn account_name() -> String {
    // SAFETY: getuid(2) cannot fail; getpwuid(3) returns null or a pointer to a static record
    // whose pw_name is a NUL-terminated string, read at once (no other thread of this CLI
    // process calls getpw* meanwhile).
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if pw.is_null() || (*pw).pw_name.is_null() {
            return format!("uid {uid}");
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}
