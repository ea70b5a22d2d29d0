//! The one dispatcher per database: an exclusive lock on `<database>.lock` (released by the
//! kernel when the process dies, so a crash never leaves a stale lock). Two dispatchers on one
//! database would double the account's call rate.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

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
