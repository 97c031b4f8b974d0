//! What `snapback watch` needs from a live database between its captures:
//! a held read transaction (the pin) and a cheap test of "changed since".
//!
//! **The pin.** In WAL mode, SQLite restarts the WAL (overwrites it from
//! the start with new salts) only when every frame has been copied into
//! the database file and no reader holds a read mark above 0. A WAL
//! restart drops the frames that tell a WAL-delta capture which pages
//! changed. The watcher therefore always holds a read transaction on its
//! own read-only connection, and hands it over each tick: the new one
//! begins before the old one ends, and before the tick's capture begins.
//! While a pin holds a mark above 0, no restart can happen at all; a pin
//! at mark 0 (it began when the WAL was wholly checkpointed) blocks every
//! further copy into the database file, so a restart can then only happen
//! at the end of the frames it saw. When every pin since the previous
//! capture began at or before that capture's position, that end is the
//! previous capture's position exactly, and the new generation's frames
//! are all the changes since: `delta` uses this (its "continuation across
//! a WAL restart") for states written in the same pinned session.
//!
//! A pin never writes and never blocks a writer. In rollback-journal mode
//! a held read transaction would block every writer (a SHARED lock), so
//! there is no pin there.
//!
//! **Changed since.** In WAL mode every commit moves the wal-index's
//! `mxFrame` or its salts; both are read from the `-shm` file without
//! touching the database. In rollback mode (or with no readable wal-index)
//! the files' device, inode, size and timestamps are compared instead, and a
//! signature whose timestamps are too recent to be trusted (see
//! `fingerprint`) never counts as unchanged.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// A read transaction held on a WAL-mode database.
pub struct Pin {
    conn: Connection,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin")
    }
}

fn pin_error(db: &Path, message: &str, cause: rusqlite::Error) -> Error {
    Error::Sqlite {
        path: db.to_path_buf(),
        message: message.into(),
        cause,
    }
}

impl Pin {
    /// Begins a read transaction on its own read-only connection, waiting
    /// at most `busy` (a reader waits only for a WAL recovery or a restart
    /// in progress). `Ok(None)` when the database is not in WAL mode, where
    /// a held read would block writers.
    pub fn begin(db: &Path, busy: Duration) -> Result<Option<Pin>> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| pin_error(db, "cannot be opened to hold a read transaction", e))?;
        conn.busy_timeout(busy)
            .map_err(|e| pin_error(db, "cannot set a busy timeout", e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| pin_error(db, "cannot read the journal mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        conn.execute_batch("BEGIN")
            .and_then(|()| conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())))
            .map_err(|e| pin_error(db, "cannot begin the held read transaction", e))?;
        Ok(Some(Pin { conn }))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Read-only: ending the transaction and closing never checkpoints.
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

/// What "changed since" compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// WAL mode: the database file's identity and the wal-index's last
    /// commit frame and salts.
    Wal {
        dev: u64,
        ino: u64,
        mx_frame: u32,
        salts: crate::wal::Salts,
    },
    /// Otherwise: the database and `-wal` files' stat.
    Stat {
        fingerprint: crate::fingerprint::DbFingerprint,
        /// Timestamps too recent to prove that no write followed.
        racy: bool,
    },
    /// Nothing to compare (a `-journal` file: a write in progress).
    Unknown,
}

impl Signature {
    /// The signature now; `wal_mode` says whether the wal-index is to be
    /// trusted (the database was in WAL mode at the previous look).
    pub fn take(db: &Path, wal_mode: bool) -> Signature {
        use std::os::unix::fs::MetadataExt;
        if wal_mode {
            if let (Ok(m), Ok(Some(h))) = (std::fs::metadata(db), crate::wal::read_index_header(db))
            {
                return Signature::Wal {
                    dev: m.dev(),
                    ino: m.ino(),
                    mx_frame: h.mx_frame,
                    salts: h.salts,
                };
            }
        }
        match crate::fingerprint::take(db) {
            Ok(Some(f)) => {
                let racy = !crate::fingerprint::settled(&f, crate::fingerprint::now_ns());
                Signature::Stat {
                    fingerprint: f,
                    racy,
                }
            }
            _ => Signature::Unknown,
        }
    }

    /// True when `now` proves that nothing was committed since `self` was
    /// taken.
    pub fn unchanged(&self, now: &Signature) -> bool {
        match (self, now) {
            (Signature::Wal { .. }, Signature::Wal { .. }) => self == now,
            (
                Signature::Stat {
                    fingerprint: a,
                    racy: false,
                },
                Signature::Stat { fingerprint: b, .. },
            ) => a == b,
            _ => false,
        }
    }
}

/// True when the newest capture of `db` into `repo` (its local state under
/// `state_dir`) is provably still the database's content: the state's
/// snapshot (and timeline segment, for a point) exists, the file is the same (device, inode), and the
/// wal-index's last commit frame and salts are the state's position. A
/// restarted watcher then takes no new point until something changes.
pub fn last_capture_is_current(
    repo: &crate::repo::Repository,
    state_dir: &Path,
    db: &Path,
) -> bool {
    use std::os::unix::fs::MetadataExt;
    let path_s = db.to_string_lossy();
    let sp = crate::capture_state::paths(state_dir, &repo.config().repo_id, &path_s);
    let Ok(state) = crate::capture_state::load(&sp) else {
        return false;
    };
    let same_file =
        std::fs::metadata(db).is_ok_and(|m| (m.dev(), m.ino()) == (state.dev, state.ino));
    let same_position = crate::wal::read_index_header(db)
        .ok()
        .flatten()
        .is_some_and(|h| Some(h.salts) == state.salts() && h.mx_frame == state.frame);
    same_file
        && same_position
        && state.path == path_s
        && repo
            .store()
            .stat(&crate::layout::snapshot_key(&state.manifest))
            .is_ok_and(|s| s.is_some())
        && state.point.is_none_or(|p| {
            repo.store()
                .stat(&crate::layout::timeline_key(&p.segment))
                .is_ok_and(|s| s.is_some())
        })
}

/// A new random session id for [`crate::SnapshotOptions::pin_session`].
pub fn new_session() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Unique enough within this host: the pid and the clock.
        let t = crate::fingerprint::now_ns() as u64;
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(db: &Path) -> Connection {
        let c = Connection::open(db).expect("open");
        c.busy_timeout(Duration::from_secs(5)).expect("busy");
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE IF NOT EXISTS t(v);")
            .expect("setup");
        c
    }

    #[test]
    fn a_held_pin_keeps_the_wal_from_restarting_under_truncate_checkpoints() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("a.db");
        let c = writer(&db);
        c.execute("INSERT INTO t VALUES (randomblob(5000))", [])
            .expect("insert");
        let salts = crate::wal::read_index_header(&db)
            .expect("shm")
            .expect("header")
            .salts;
        let pin = Pin::begin(&db, Duration::from_secs(1))
            .expect("pin")
            .expect("wal mode");
        c.busy_timeout(Duration::from_millis(50)).expect("busy");
        let (busy, _, _): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!(busy, 1, "the pinned WAL cannot be truncated");
        c.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        let h = crate::wal::read_index_header(&db)
            .expect("shm")
            .expect("header");
        assert_eq!(h.salts, salts, "no restart while pinned");
        drop(pin);
    }

    #[test]
    fn the_signature_moves_with_every_commit_and_not_with_a_checkpoint() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("a.db");
        let c = writer(&db);
        c.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        let a = Signature::take(&db, true);
        assert!(matches!(a, Signature::Wal { .. }), "{a:?}");
        assert!(a.unchanged(&Signature::take(&db, true)));
        c.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
            .expect("checkpoint");
        assert!(
            a.unchanged(&Signature::take(&db, true)),
            "a checkpoint changes no content"
        );
        c.execute("INSERT INTO t VALUES (2)", []).expect("insert");
        assert!(!a.unchanged(&Signature::take(&db, true)));
        // Rollback mode: no pin, and a recent write is never "unchanged".
        drop(c);
        let r = d.path().join("r.db");
        let c = Connection::open(&r).expect("open");
        c.execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES (1);")
            .expect("setup");
        assert!(Pin::begin(&r, Duration::from_secs(1))
            .expect("open")
            .is_none());
        let s = Signature::take(&r, false);
        assert!(!s.unchanged(&Signature::take(&r, false)), "racy: {s:?}");
    }
}
