//! The one dispatcher per database: an exclusive `flock` on the database file itself, so a
//! symlink, a hard link or a relative path to the same file meets the same lock (it is the
//! inode that is locked, not a name). The kernel releases it when the process dies, so a crash
//! never leaves a stale lock. Two dispatchers on one database would double the account's
//! call rate and send each other's leased jobs again. SQLite's own locks are POSIX record
//! locks, which `flock` does not touch.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Held for the life of `deregd run`. Dropping it (closing the file) would also drop SQLite's
/// POSIX locks on the file in this process, so it must outlive the database's connections.
#[derive(Debug)]
pub(crate) struct DispatchLock {
    _file: File,
}

/// Another process already dispatches from this database.
#[derive(Debug, thiserror::Error)]
#[error(
    "another deregd run is already dispatching from {database} (its file is locked{holder}); \
     two dispatchers would double the account's call rate"
)]
pub(crate) struct AlreadyRunning {
    pub database: String,
    pub holder: String,
}

/// Takes the database's dispatcher lock (creating the file if missing), or says who holds it.
pub(crate) fn lock(database: &Path) -> anyhow::Result<DispatchLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(database)
        .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", database.display()))?;
    let mut note = database.as_os_str().to_owned();
    note.push(".lock");
    let note = PathBuf::from(note);
    match file.try_lock() {
        Ok(()) => {
            // `<database>.lock` says who holds it, for people.
            let _ = std::fs::write(&note, format!("pid {}\n", std::process::id()));
            Ok(DispatchLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = file
                .metadata()
                .ok()
                .and_then(|m| flock_holder(m.dev(), m.ino()))
                .map(|pid| format!(" by pid {pid}"))
                .unwrap_or_default();
            Err(AlreadyRunning {
                database: database.display().to_string(),
                holder,
            }
            .into())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// The pid holding a `flock` on the file `(dev, ino)`, from `/proc/locks`.
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let id = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str()))
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_by_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let held = lock(&db).unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&db, &link).unwrap();
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&db, &hard).unwrap();
        for other in [&db, &link, &hard] {
            // A lock is per open file description: a second open in this process conflicts.
            let err = lock(other).unwrap_err();
            let err = err.downcast::<AlreadyRunning>().expect("already running");
            assert!(
                err.holder.contains(&std::process::id().to_string()),
                "{}",
                err.holder
            );
        }
        drop(held);
        lock(&hard).expect("free once released");
    }
}
