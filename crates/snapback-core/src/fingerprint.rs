//! Recognising an unchanged database without reading it.
//!
//! SQLite's change counter does not move in WAL mode, so it proves nothing.
//! What does: every commit writes to the database file (rollback mode) or to
//! its `-wal` file (WAL mode), and every write updates the file's mtime and
//! ctime. So when the database file and its `-wal` file have the same device,
//! inode, size, mtime and ctime as when the previous snapshot was captured,
//! no transaction has committed since, and the previous image is still the
//! database's content.
//!
//! Timestamps are coarse (the kernel updates them at clock-tick granularity),
//! so a write in the same tick as the recorded stat could leave the mtime
//! unchanged. Like git's "racy" index entries, a fingerprint is therefore
//! recorded only when every timestamp in it is at least `RACY_WINDOW` older
//! than the moment it was taken; any later write then necessarily moves the
//! mtime. A `-journal` file (a transaction in progress or a hot journal)
//! means no fingerprint at all.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbFingerprint {
    pub db: FileStat,
    pub wal: Option<FileStat>,
}

fn stat(p: &Path) -> std::io::Result<Option<FileStat>> {
    match std::fs::metadata(p) {
        Ok(m) => Ok(Some(FileStat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            ctime_ns: m
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec()),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn side(db: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

/// The database's fingerprint now, or `None` when there is a journal file.
pub fn take(db: &Path) -> std::io::Result<Option<DbFingerprint>> {
    if stat(&side(db, "-journal"))?.is_some() {
        return Ok(None);
    }
    let Some(d) = stat(db)? else { return Ok(None) };
    // SQLite changes the -wal file's owner or mode to match the database
    // whenever a connection opens it (so its ctime moves even on a read);
    // content changes always move its mtime, which is kept.
    let wal = stat(&side(db, "-wal"))?.map(|w| FileStat { ctime_ns: 0, ..w });
    Ok(Some(DbFingerprint { db: d, wal }))
}

/// True when every timestamp of `f` is at least `RACY_WINDOW` before
/// `now_ns`, so that a later write must change it.
pub fn settled(f: &DbFingerprint, now_ns: i64) -> bool {
    let limit = now_ns.saturating_sub(RACY_WINDOW.as_nanos() as i64);
    std::iter::once(&f.db)
        .chain(f.wal.as_ref())
        .all(|s| s.mtime_ns < limit && s.ctime_ns < limit)
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_writes_are_not_settled_and_any_write_changes_the_fingerprint() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("a.db");
        std::fs::write(&db, b"x").expect("write");
        let f = take(&db).expect("stat").expect("some");
        assert!(!settled(&f, now_ns()), "a file written just now is racy");
        assert!(
            settled(&f, now_ns() + 3_000_000_000),
            "three seconds later it is settled"
        );
        std::fs::write(side(&db, "-wal"), b"frames").expect("wal");
        let g = take(&db).expect("stat").expect("some");
        assert_ne!(f, g, "a new WAL file changes the fingerprint");
        std::fs::write(side(&db, "-journal"), b"j").expect("journal");
        assert_eq!(
            take(&db).expect("stat"),
            None,
            "a journal means no fingerprint"
        );
    }
}
