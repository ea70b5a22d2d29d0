//! What the operator subcommands share: output formats, quiet exit on a closed pipe
//! (`deregd jobs | head`), opening a database that must already exist, label checks.

use std::io::{self, Write};

use crate::cli::UsageError;
use crate::config::Settings;
use crate::store::Store;

/// Output format of a data-printing command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// JSON (one document, or JSON Lines for row streams).
    Json,
}

/// Longest run label the schema accepts, bytes.
pub const MAX_RUN_LEN: usize = 256;

/// Checks a `--run` label against the schema's limit.
pub fn check_run(run: &str) -> Result<(), UsageError> {
    if run.len() > MAX_RUN_LEN {
        return Err(UsageError(format!(
            "--run is {} bytes long; at most {MAX_RUN_LEN}",
            run.len()
        )));
    }
    Ok(())
}

/// Opens the configured database, refusing to create one: a reader pointed at the wrong path
/// should say so, not report an empty queue.
pub async fn open_existing(settings: &Settings) -> anyhow::Result<Store> {
    let path = &settings.database.path;
    if !path.exists() {
        return Err(UsageError(format!(
            "database {} does not exist (check database.path; `deregd submit` or `deregd migrate` creates it)",
            path.display()
        ))
        .into());
    }
    Store::open(path).await
}

/// True when `error` comes from writing to a closed pipe or socket.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(io::ErrorKind::BrokenPipe))
            || cause
                .downcast_ref::<csv::Error>()
                .is_some_and(|e| matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe))
    })
}

/// Turns a closed stdout into a quiet success: the reader has all it wanted.
pub fn quiet_on_broken_pipe(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Buffered stdout for whole-document output.
pub fn stdout() -> io::BufWriter<io::Stdout> {
    io::BufWriter::with_capacity(64 * 1024, io::stdout())
}

/// Writes `value` as pretty JSON plus a newline.
pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

pub use crate::clock::human_duration;

/// The counts of `run` (every run when `None`); a named run without jobs is a usage error.
pub(crate) async fn run_counts(
    db: &Store,
    run: Option<&str>,
) -> anyhow::Result<Vec<crate::store::runs::RunCounts>> {
    let filter = crate::store::runs::Filter {
        run: run.map(str::to_string),
        ..crate::store::runs::Filter::default()
    };
    let counts = crate::store::runs::counts(db, &filter).await?;
    if let (Some(run), true) = (run, counts.is_empty()) {
        return Err(UsageError(format!("no jobs in run {run:?}")).into());
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&e));
        let other = anyhow::Error::from(io::Error::from(io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other));
    }
}
