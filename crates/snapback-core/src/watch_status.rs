//! What a running `snapback watch` tells `snapback status`.
//!
//! One small JSON file per (repository id, database path) under the watch
//! status directory (`$XDG_STATE_HOME/snapback/watch`, see [`dir`]), named
//! like the capture state (`<repo id>/<sha256 of the path>.json`). The
//! watcher replaces it after every tick with [`save`] (temporary file,
//! fsync, rename, fsync of the directory), so a reader never sees half a
//! file; `status` reads every file with [`load_all`].
//!
//! The file is a report, not a promise: a watcher killed with SIGKILL
//! leaves its last report behind. [`WatchStatus::running`] says whether the
//! process that wrote it is still alive, and [`WatchStatus::tick_age`] how
//! long ago it last ticked, so a reader can tell a watcher that stopped or
//! fell behind from one that keeps up.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::lock::{pid_alive, this_host};

/// The version of the file's layout; files of another version are skipped.
pub const WATCH_STATUS_VERSION: u32 = 1;

/// How many mismatching page numbers a verification result keeps (the
/// count is kept in full).
pub const MAX_LISTED_PAGES: usize = 100;

/// The watcher's report for one database into one repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchStatus {
    pub version: u32,
    pub repo_id: String,
    /// The database's path as the watcher captures it (absolute).
    pub path: String,
    pub pid: u32,
    pub host: String,
    #[serde(with = "rfc3339")]
    pub started: OffsetDateTime,
    /// The tick interval the watcher runs with, in milliseconds.
    pub interval_ms: u64,
    /// The upload interval (how often points are written durably), in
    /// milliseconds.
    pub upload_interval_ms: u64,
    /// The end of the last tick (changed or not).
    #[serde(with = "rfc3339::option", default)]
    pub last_tick: Option<OffsetDateTime>,
    /// The newest point the repository holds durably, as reported by the
    /// watcher.
    #[serde(default)]
    pub durable: Option<PointRef>,
    /// Points taken but not yet written durably to the repository (in
    /// memory or in the local spool).
    #[serde(default)]
    pub pending_points: u64,
    /// The oldest of those points' time.
    #[serde(with = "rfc3339::option", default)]
    pub oldest_pending: Option<OffsetDateTime>,
    /// The last time a tick could not use the WAL and read the whole
    /// database.
    #[serde(default)]
    pub last_fallback: Option<Event>,
    /// How many ticks fell back to a full scan since the watcher started.
    #[serde(default)]
    pub fallbacks: u64,
    /// The last failed upload.
    #[serde(default)]
    pub last_upload_error: Option<Event>,
    /// The end of the last upload that succeeded.
    #[serde(with = "rfc3339::option", default)]
    pub last_upload: Option<OffsetDateTime>,
    /// Bytes held in the local spool, waiting for the repository.
    #[serde(default)]
    pub spool_bytes: u64,
    /// The spool's bound (0: none set).
    #[serde(default)]
    pub spool_limit: u64,
    /// The last comparison of the live database with its captured image.
    #[serde(default)]
    pub last_verify: Option<VerifyRecord>,
    /// Set when the watcher stopped because it could not go on (an error,
    /// a full spool): when and why; `status` reports it as a problem. A
    /// watcher stopped on request (SIGTERM, SIGINT) removes its report
    /// instead ([`remove`]); one killed with SIGKILL leaves it as it was.
    #[serde(default)]
    pub stopped: Option<Event>,
}

/// A point, by its time and its id (a manifest id, or a point of a
/// timeline segment as the watcher names it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PointRef {
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
    pub id: String,
}

/// Something that happened, when, and in plain words why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
    pub message: String,
}

/// The outcome of one live verification.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerifyOutcome {
    Ok,
    Mismatch,
}

/// One live verification's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyRecord {
    #[serde(with = "rfc3339")]
    pub time: OffsetDateTime,
    pub result: VerifyOutcome,
    pub pages_compared: u64,
    /// How many pages differ.
    pub mismatch_count: u64,
    /// The first [`MAX_LISTED_PAGES`] of them (page numbers, from 1).
    pub mismatching_pages: Vec<u64>,
}

impl VerifyRecord {
    /// A record of `pages` mismatching pages of `compared`, listing at
    /// most [`MAX_LISTED_PAGES`].
    pub fn new(time: OffsetDateTime, compared: u64, pages: &[u64]) -> VerifyRecord {
        VerifyRecord {
            time,
            result: if pages.is_empty() {
                VerifyOutcome::Ok
            } else {
                VerifyOutcome::Mismatch
            },
            pages_compared: compared,
            mismatch_count: pages.len() as u64,
            mismatching_pages: pages.iter().take(MAX_LISTED_PAGES).copied().collect(),
        }
    }
}

impl WatchStatus {
    /// A fresh report for this process and host, started now.
    pub fn new(
        repo_id: &str,
        path: &str,
        interval: Duration,
        upload_interval: Duration,
    ) -> WatchStatus {
        WatchStatus {
            version: WATCH_STATUS_VERSION,
            repo_id: repo_id.to_owned(),
            path: path.to_owned(),
            pid: std::process::id(),
            host: this_host(),
            started: crate::time::now(),
            interval_ms: millis(interval),
            upload_interval_ms: millis(upload_interval),
            last_tick: None,
            durable: None,
            pending_points: 0,
            oldest_pending: None,
            last_fallback: None,
            fallbacks: 0,
            last_upload_error: None,
            last_upload: None,
            spool_bytes: 0,
            spool_limit: 0,
            last_verify: None,
            stopped: None,
        }
    }

    /// Whether the process that wrote this is alive: `Some(true/false)` on
    /// the host that wrote it, `None` on another host (it cannot be told).
    pub fn running(&self) -> Option<bool> {
        if self.host != this_host() {
            return None;
        }
        Some(self.stopped.is_none() && pid_alive(self.pid))
    }

    /// How long ago the last tick ended (since the start when none has).
    pub fn tick_age(&self, now: OffsetDateTime) -> Duration {
        let since = self.last_tick.unwrap_or(self.started);
        Duration::try_from(now - since).unwrap_or(Duration::ZERO)
    }

    /// True when the last tick is older than a healthy watcher lets it get:
    /// three intervals, and at least 10 seconds (a full scan of a large
    /// database takes a while).
    pub fn falling_behind(&self, now: OffsetDateTime) -> bool {
        self.tick_age(now) > self.stale_after()
    }

    /// The tick age past which [`falling_behind`](Self::falling_behind)
    /// holds.
    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.interval_ms.saturating_mul(3)).max(Duration::from_secs(10))
    }

    /// True when the last upload failed and none succeeded since.
    pub fn upload_failing(&self) -> bool {
        match (&self.last_upload_error, self.last_upload) {
            (Some(e), Some(ok)) => e.time >= ok,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The watch status directory under the state root
/// (`$XDG_STATE_HOME/snapback`): `<root>/watch`.
pub fn dir(state_root: &Path) -> PathBuf {
    state_root.join("watch")
}

/// The file of one (repository, database) under the watch status directory.
pub fn file(dir: &Path, repo_id: &str, db_path: &str) -> PathBuf {
    let name = hex::encode(Sha256::digest(db_path.as_bytes()));
    dir.join(repo_id).join(format!("{name}.json"))
}

/// Replaces the report of `s.repo_id`/`s.path` durably (temporary file,
/// fsync, rename, fsync of the directory).
pub fn save(dir: &Path, s: &WatchStatus) -> Result<()> {
    if s.repo_id.is_empty() || s.repo_id.contains(['/', '\\']) || s.repo_id.starts_with('.') {
        return Err(Error::internal(format!(
            "watch status: {:?} is not a repository id",
            s.repo_id
        )));
    }
    let path = file(dir, &s.repo_id, &s.path);
    let parent = path
        .parent()
        .ok_or_else(|| Error::internal("watch status path has no directory"))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(parent, "cannot create the watch status directory", e))?;
    let mut bytes = serde_json::to_vec_pretty(s)
        .map_err(|e| Error::internal(format!("cannot encode the watch status: {e}")))?;
    bytes.push(b'\n');
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(parent)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&path, "cannot write the watch status", e)
    })
}

/// Removes the report of one (repository, database), if there is one.
pub fn remove(dir: &Path, repo_id: &str, db_path: &str) -> Result<()> {
    let path = file(dir, repo_id, db_path);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&path, "cannot remove the watch status", e)),
    }
}

/// Every report under the watch status directory, sorted by repository id
/// and path. A missing directory is no report; a file that cannot be read
/// or parsed (another version, damaged) is skipped with a warning in the
/// log, as a half-written one never exists.
pub fn load_all(dir: &Path) -> Result<Vec<WatchStatus>> {
    let mut out = Vec::new();
    let repos = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, "cannot list the watch status directory", e)),
    };
    for repo in repos {
        let repo = repo.map_err(|e| Error::io(dir, "cannot list the watch status directory", e))?;
        let rdir = repo.path();
        if !rdir.is_dir() {
            continue;
        }
        let files = std::fs::read_dir(&rdir)
            .map_err(|e| Error::io(&rdir, "cannot list the watch status directory", e))?;
        for f in files {
            let f = f.map_err(|e| Error::io(&rdir, "cannot list the watch status directory", e))?;
            let p = f.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match read_one(&p) {
                Ok(s) => out.push(s),
                Err(why) => tracing::warn!(file = %p.display(), "watch status skipped: {why}"),
            }
        }
    }
    out.sort_by(|a, b| (&a.repo_id, &a.path).cmp(&(&b.repo_id, &b.path)));
    Ok(out)
}

/// The report of one (repository, database), if there is a readable one.
pub fn load(dir: &Path, repo_id: &str, db_path: &str) -> Option<WatchStatus> {
    read_one(&file(dir, repo_id, db_path)).ok()
}

fn read_one(p: &Path) -> std::result::Result<WatchStatus, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("cannot be read ({e})"))?;
    let s: WatchStatus =
        serde_json::from_slice(&bytes).map_err(|e| format!("cannot be parsed ({e})"))?;
    if s.version != WATCH_STATUS_VERSION {
        return Err(format!(
            "version {} (this snapback reads version {WATCH_STATUS_VERSION})",
            s.version
        ));
    }
    Ok(s)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::format_rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        crate::time::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<OffsetDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&crate::time::format_rfc3339(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<OffsetDateTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => crate::time::parse_rfc3339(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> OffsetDateTime {
        crate::time::parse_rfc3339(s).expect("time")
    }

    fn sample() -> WatchStatus {
        let mut s = WatchStatus::new(
            "ab12",
            "/srv/app.db",
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        s.started = t("2026-12-01T10:00:00Z");
        s.last_tick = Some(t("2026-12-01T10:05:00.5Z"));
        s.durable = Some(PointRef {
            time: t("2026-12-01T10:04:55Z"),
            id: "seg1/3".into(),
        });
        s.pending_points = 4;
        s.oldest_pending = Some(t("2026-12-01T10:04:56Z"));
        s.last_fallback = Some(Event {
            time: t("2026-12-01T10:01:00Z"),
            message: "the WAL restarted (salts changed)".into(),
        });
        s.fallbacks = 2;
        s.spool_bytes = 4096;
        s.last_verify = Some(VerifyRecord::new(t("2026-12-01T10:03:00Z"), 10, &[3, 7]));
        s
    }

    #[test]
    fn saved_status_loads_back_with_every_field() {
        let d = tempfile::tempdir().expect("tmp");
        assert!(load_all(d.path()).expect("empty").is_empty());
        assert!(load_all(&d.path().join("none"))
            .expect("missing")
            .is_empty());
        let s = sample();
        save(d.path(), &s).expect("save");
        let mut other = sample();
        other.path = "/srv/b.db".into();
        save(d.path(), &other).expect("save");
        let all = load_all(d.path()).expect("load");
        assert_eq!(all, vec![s.clone(), other]);
        assert_eq!(load(d.path(), "ab12", "/srv/app.db"), Some(s.clone()));
        // Saving again replaces the report, and leaves no temporary file.
        let mut later = s.clone();
        later.pending_points = 0;
        save(d.path(), &later).expect("save again");
        assert_eq!(load(d.path(), "ab12", "/srv/app.db"), Some(later));
        let names: Vec<_> = std::fs::read_dir(d.path().join("ab12"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "two reports, no leftovers: {names:?}");
        remove(d.path(), "ab12", "/srv/app.db").expect("remove");
        remove(d.path(), "ab12", "/srv/app.db").expect("remove twice");
        assert_eq!(load_all(d.path()).expect("load").len(), 1);
    }

    #[test]
    fn damaged_or_other_version_status_is_skipped() {
        let d = tempfile::tempdir().expect("tmp");
        save(d.path(), &sample()).expect("save");
        let f = file(d.path(), "ab12", "/srv/app.db");
        let good = std::fs::read(&f).expect("read");
        std::fs::write(&f, &good[..good.len() / 2]).expect("truncate");
        assert!(load_all(d.path()).expect("load").is_empty());
        let mut newer = sample();
        newer.version = WATCH_STATUS_VERSION + 1;
        std::fs::write(&f, serde_json::to_vec(&newer).expect("json")).expect("write");
        assert!(load_all(d.path()).expect("load").is_empty());
    }

    #[test]
    fn a_bad_repository_id_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let mut s = sample();
        s.repo_id = "../x".into();
        assert!(save(d.path(), &s).is_err());
    }

    #[test]
    fn running_is_this_live_process_on_this_host() {
        let mut s = sample();
        assert_eq!(s.running(), Some(true), "this test process is alive");
        s.stopped = Some(Event {
            time: crate::time::now(),
            message: "SIGTERM".into(),
        });
        assert_eq!(s.running(), Some(false), "it said it stopped");
        s.stopped = None;
        // A pid that cannot be alive (past Linux's pid_max).
        s.pid = u32::MAX;
        assert_eq!(s.running(), Some(false));
        s.host = "some-other-host.invalid".into();
        assert_eq!(s.running(), None, "another host's process cannot be told");
    }

    #[test]
    fn a_stale_tick_is_falling_behind() {
        let s = sample();
        let tick = s.last_tick.expect("tick");
        assert!(!s.falling_behind(tick + time::Duration::seconds(5)));
        assert!(s.falling_behind(tick + time::Duration::seconds(11)));
        let mut slow = s.clone();
        slow.interval_ms = 60_000;
        assert!(!slow.falling_behind(tick + time::Duration::seconds(100)));
        assert!(slow.falling_behind(tick + time::Duration::seconds(181)));
        let mut fresh = s;
        fresh.last_tick = None;
        assert_eq!(
            fresh.tick_age(fresh.started + time::Duration::seconds(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn upload_failing_until_an_upload_succeeds() {
        let mut s = sample();
        assert!(!s.upload_failing());
        s.last_upload_error = Some(Event {
            time: t("2026-12-01T10:02:00Z"),
            message: "connection refused".into(),
        });
        assert!(s.upload_failing());
        s.last_upload = Some(t("2026-12-01T10:01:00Z"));
        assert!(s.upload_failing(), "the success was before the error");
        s.last_upload = Some(t("2026-12-01T10:03:00Z"));
        assert!(!s.upload_failing());
    }

    #[test]
    fn verify_record_lists_a_bounded_number_of_pages() {
        let pages: Vec<u64> = (1..=500).collect();
        let r = VerifyRecord::new(crate::time::now(), 1000, &pages);
        assert_eq!(r.result, VerifyOutcome::Mismatch);
        assert_eq!(r.mismatch_count, 500);
        assert_eq!(r.mismatching_pages.len(), MAX_LISTED_PAGES);
        let ok = VerifyRecord::new(crate::time::now(), 1000, &[]);
        assert_eq!(ok.result, VerifyOutcome::Ok);
    }
}
