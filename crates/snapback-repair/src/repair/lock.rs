//! The repair lock: one repair or undo of a live database at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{is_busy, Error, Result};

/// Holds `<live>.snapback-repair.lock`: an exclusive SQLite lock on a small
/// side database. The operating system drops it when the process dies, so
/// a killed repair never leaves a stale lock.
pub struct RepairLock {
    _conn: Connection,
    pub path: PathBuf,
}

pub fn lock_path(live: &Path) -> PathBuf {
    PathBuf::from(format!("{}.snapback-repair.lock", live.display()))
}

/// Takes the repair lock of `live`, waiting up to `wait` for another repair.
pub fn take_lock(live: &Path, wait: Duration) -> Result<RepairLock> {
    let path = lock_path(live);
    // A repair writes to the live database: refuse one that cannot be
    // written before anything (the lock file included) is created.
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(live) {
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound => Error::Input(format!(
                "the live database {} does not exist; nothing was written",
                live.display()
            )),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Error::Input(format!(
                    "the live database {} is read-only ({e}); a repair writes to it, so nothing was written. Check its permissions and its file system",
                    live.display()
                ))
            }
            _ => Error::Input(format!(
                "cannot open the live database {} for writing: {e}; nothing was written",
                live.display()
            )),
        });
    }
    let conn = Connection::open(&path)
        .map_err(|e| Error::sqlite(&path, "cannot open the repair lock file", e))?;
    conn.busy_timeout(wait)
        .map_err(|e| Error::sqlite(&path, "cannot set a busy timeout", e))?;
    match conn.execute_batch("BEGIN EXCLUSIVE") {
        Ok(()) => Ok(RepairLock { _conn: conn, path }),
        Err(e) if is_busy(&e) => Err(Error::Locked {
            path: live.to_path_buf(),
            lock: path,
        }),
        Err(e) => Err(Error::sqlite(&path, "cannot take the repair lock", e)),
    }
}
