//! What the previous capture of a database knew, kept locally so that the
//! next capture can read only the pages written since.
//!
//! One small file per (repository id, database path) under the state
//! directory (`$XDG_STATE_HOME/snapback`, chosen by the caller), written to
//! a temporary file, fsync'd, renamed into place and its directory fsync'd.
//! The file ends with the SHA-256 of its JSON, so a damaged or truncated
//! state is recognised and ignored. A state is a hint: `delta` checks every
//! part of it against the database, its WAL and the repository before it
//! trusts it, and falls back to a full scan otherwise.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::id::Id;

const STATE_VERSION: u32 = 1;

/// The state of one database after a committed capture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaptureState {
    pub version: u32,
    pub repo_id: String,
    pub path: String,
    pub host: String,
    pub pid: u32,
    pub dev: u64,
    pub ino: u64,
    pub page_size: u32,
    /// The WAL salts (hex of the 8 header bytes) the position belongs to.
    pub wal_salts: String,
    /// The last commit frame the captured image is known to include (0: the
    /// image includes no frame of this WAL generation beyond its start).
    pub frame: u32,
    /// The chain checksum stored in that frame's header.
    pub frame_cksum: [u32; 2],
    /// The manifest that holds the captured image.
    pub manifest: Id,
    pub page_count: u64,
    pub db_checksum: String,
    /// The pinned session of `snapback watch` that wrote the state (see
    /// `watch`): a capture of the same session may continue across a WAL
    /// restart. Absent for every other capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The WAL header's checkpoint sequence number of `wal_salts`'s
    /// generation, when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_ckpt: Option<u32>,
    /// Set by `snapback watch`: the image is that of this timeline point
    /// (a segment over `manifest`, the point's base), not the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<StatePoint>,
    /// The database file as the capture found it before its read
    /// transaction began (see `delta::changed_pages`: a file written since
    /// by something other than a checkpoint is no delta). Absent in states
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_file: Option<DbFile>,
}

/// The database file's size and timestamps, and the wal-index's checkpoint
/// counters, at one moment. In WAL mode SQLite writes the database file
/// only when a checkpoint copies frames into it, which moves the counters
/// (or restarts the WAL, which changes its salts): a file whose size or
/// timestamps changed while neither did was written from outside SQLite.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DbFile {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// `nBackfill` and `nBackfillAttempted` (none without a `-shm` file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<[u32; 2]>,
}

impl DbFile {
    /// True when the file's size or timestamps differ from `was`'s.
    pub fn written_since(&self, was: &DbFile) -> bool {
        (self.size, self.mtime_ns, self.ctime_ns) != (was.size, was.mtime_ns, was.ctime_ns)
    }
}

/// A timeline point named by a capture state: its segment and position.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatePoint {
    pub segment: Id,
    pub index: u32,
}

impl CaptureState {
    /// The `db_checksum` of the captured image.
    pub fn checksum(&self) -> Result<crate::id::DbChecksum> {
        crate::id::DbChecksum::from_hex(&self.db_checksum).ok_or_else(|| {
            Error::corrupt(
                format!("snapshot {}", self.manifest.short()),
                "its db_checksum is not hex",
            )
        })
    }

    pub fn salts(&self) -> Option<crate::wal::Salts> {
        let mut s = [0u8; 8];
        hex::decode_to_slice(&self.wal_salts, &mut s).ok()?;
        Some(s)
    }
}

/// The files of one database's state.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub file: PathBuf,
    pub lock: PathBuf,
}

pub fn paths(state_dir: &Path, repo_id: &str, db_path: &str) -> StatePaths {
    let name = hex::encode(Sha256::digest(db_path.as_bytes()));
    let dir = state_dir.join("capture").join(repo_id);
    StatePaths {
        file: dir.join(format!("{name}.json")),
        lock: dir.join(format!("{name}.lock")),
    }
}

impl StatePaths {
    /// The mark left by [`invalidate`]: why the state was dropped.
    pub fn dropped_mark(&self) -> PathBuf {
        self.file.with_extension("dropped")
    }
}

/// Holds the state file's lock for the length of a capture.
pub struct StateLock {
    _file: File,
}

/// Takes the state's lock without waiting: `Ok(None)` when another capture
/// of the same database into the same repository holds it.
pub fn try_lock(p: &StatePaths) -> Result<Option<StateLock>> {
    if let Some(d) = p.lock.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(d, "cannot create the capture state directory", e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p.lock)
        .map_err(|e| Error::io(&p.lock, "cannot open the capture state lock", e))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(StateLock { _file: f })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(&p.lock, "cannot lock the capture state", e))
        }
    }
}

/// The saved state, or why there is none that can be used.
pub fn load(p: &StatePaths) -> std::result::Result<CaptureState, String> {
    let bytes = match std::fs::read(&p.file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Ok(why) = std::fs::read_to_string(p.dropped_mark()) {
                return Err(format!(
                    "the local capture state was dropped: {}",
                    why.trim_end()
                ));
            }
            return Err("no local capture state (the first capture of this database into this repository from here)".into());
        }
        Err(e) => return Err(format!("the local capture state cannot be read ({e})")),
    };
    decode(&bytes).ok_or_else(|| format!("the local capture state {} is damaged", p.file.display()))
}

fn decode(bytes: &[u8]) -> Option<CaptureState> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (json, sum) = text.trim_end_matches('\n').rsplit_once('\n')?;
    if hex::encode(Sha256::digest(json.as_bytes())) != sum {
        return None;
    }
    let s: CaptureState = serde_json::from_str(json).ok()?;
    (s.version == STATE_VERSION).then_some(s)
}

fn encode(s: &CaptureState) -> Result<Vec<u8>> {
    let json = serde_json::to_string(s)
        .map_err(|e| Error::internal(format!("cannot encode the capture state: {e}")))?;
    let sum = hex::encode(Sha256::digest(json.as_bytes()));
    Ok(format!("{json}\n{sum}\n").into_bytes())
}

/// Replaces the saved state durably (temporary file, fsync, rename, fsync
/// of the directory).
pub fn save(p: &StatePaths, s: &CaptureState) -> Result<()> {
    let dir = p
        .file
        .parent()
        .ok_or_else(|| Error::internal("capture state path has no directory"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(dir, "cannot create the capture state directory", e))?;
    let tmp = p.file.with_extension(format!("tmp{}", std::process::id()));
    let bytes = encode(s)?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p.file)?;
        match std::fs::remove_file(p.dropped_mark()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&p.file, "cannot write the capture state", e)
    })
}

/// Drops the saved state durably, leaving a mark that says why: the next
/// capture finds no state (and says this reason) and takes a full scan;
/// the state it then saves removes the mark. Used when the state is known
/// to be wrong (verify-live found the image it describes differs from the
/// database).
pub fn invalidate(p: &StatePaths, why: &str) -> Result<()> {
    let dir = p
        .file
        .parent()
        .ok_or_else(|| Error::internal("capture state path has no directory"))?;
    let mark = p.dropped_mark();
    let drop_it = || -> std::io::Result<()> {
        let mut f = File::create(&mark)?;
        f.write_all(why.as_bytes())?;
        f.sync_all()?;
        match std::fs::remove_file(&p.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        File::open(dir)?.sync_all()
    };
    drop_it().map_err(|e| Error::io(&p.file, "cannot drop the capture state", e))
}

pub fn new_state_version() -> u32 {
    STATE_VERSION
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A capture state of no real database, for tests here and in spool.rs.
    pub(crate) fn sample() -> CaptureState {
        CaptureState {
            version: STATE_VERSION,
            repo_id: "ab".into(),
            path: "/x.db".into(),
            host: "h".into(),
            pid: 1,
            dev: 2,
            ino: 3,
            page_size: 4096,
            wal_salts: "0011223344556677".into(),
            frame: 9,
            frame_cksum: [1, 2],
            manifest: Id([7; 32]),
            page_count: 10,
            db_checksum: "0".into(),
            session: None,
            wal_ckpt: None,
            point: None,
            db_file: None,
        }
    }

    #[test]
    fn damaged_or_truncated_state_is_recognised() {
        let d = tempfile::tempdir().expect("tmp");
        let p = paths(d.path(), "ab", "/x.db");
        assert!(load(&p)
            .expect_err("none")
            .contains("no local capture state"));
        save(&p, &sample()).expect("save");
        assert_eq!(load(&p).expect("load"), sample());
        let good = std::fs::read(&p.file).expect("read");
        std::fs::write(&p.file, &good[..good.len() / 2]).expect("truncate");
        assert!(load(&p).expect_err("truncated").contains("damaged"));
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        std::fs::write(&p.file, &flipped).expect("flip");
        assert!(load(&p).expect_err("flipped").contains("damaged"));
    }

    #[test]
    fn invalidated_state_is_not_loaded_and_says_why_until_saved_again() {
        let d = tempfile::tempdir().expect("tmp");
        let p = paths(d.path(), "ab", "/x.db");
        save(&p, &sample()).expect("save");
        invalidate(&p, "verify-live found 1 page differing").expect("invalidate");
        let why = load(&p).expect_err("dropped");
        assert!(why.contains("dropped: verify-live found 1 page"), "{why}");
        save(&p, &sample()).expect("save again");
        assert_eq!(load(&p).expect("load"), sample());
        assert!(!p.dropped_mark().exists(), "the mark goes with a new state");
    }

    #[test]
    fn one_capture_at_a_time_holds_the_state_lock() {
        let d = tempfile::tempdir().expect("tmp");
        let p = paths(d.path(), "ab", "/x.db");
        let held = try_lock(&p).expect("lock").expect("free");
        assert!(try_lock(&p).expect("lock").is_none(), "held by the first");
        drop(held);
        assert!(try_lock(&p).expect("lock").is_some());
    }
}
