//! `verify-live`: the copy checked against the source.
//!
//! A WAL-delta capture that missed a page would produce wrong points
//! silently: it trusts the local capture state and the WAL's frame headers
//! to say what changed. Some changes leave no trace there at all (a
//! database file overwritten in place, same inode, while its WAL keeps its
//! salts). So, in ONE read transaction on the live database, this computes
//! the image the next WAL-delta capture would give (the state's chunk list
//! with the pages of the WAL frames since, read through the transaction,
//! exactly as `snapshot` does, committing nothing) and a full scan of every
//! page with its hash, throttled, and compares them page by page. When they
//! differ, the state is dropped ([`capture_state::invalidate`]) so that the
//! next capture is a full scan.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::capture_state;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::sqlite::{journal_mode_of_header, Capture};

/// The default read rate of the full scan: 32 MiB/s, a small part of what
/// a disk serves, so the application barely notices it; a 1 GiB database
/// takes about 32 s.
pub const DEFAULT_VERIFY_RATE: u64 = 32 << 20;

/// How `verify_live` runs.
#[derive(Debug, Clone)]
pub struct VerifyLiveOptions {
    /// The local state root (`$XDG_STATE_HOME/snapback`), as for snapshots.
    pub state_dir: std::path::PathBuf,
    /// Bytes per second the full scan reads at most (0: as fast as it can).
    pub rate: u64,
    /// How long to wait for a lock on the database.
    pub busy_timeout: Duration,
    /// The watcher's pinned session (`SnapshotOptions::pin_session`), when
    /// the watcher calls this: a state of the same session may continue
    /// across a WAL restart, as its next capture would. `None` otherwise.
    pub pin_session: Option<String>,
}

/// What `verify_live` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyLiveReport {
    pub path: String,
    /// The snapshot the capture state (and so the delta) starts from.
    pub snapshot: Id,
    /// Pages of the database in the read transaction.
    pub page_count: u64,
    /// Pages compared (all of them).
    pub pages_compared: u64,
    /// Pages the delta read (those of the WAL frames since the state, and
    /// page 1).
    pub delta_pages: u64,
    /// Page numbers (from 1) whose content differs between the delta's
    /// image and the full scan; empty when they are equal.
    pub mismatching_pages: Vec<u64>,
    /// The capture state was dropped (after a mismatch): the next capture
    /// is a full scan.
    pub state_dropped: bool,
    pub bytes_read: u64,
    pub duration_ms: u64,
}

impl VerifyLiveReport {
    pub fn equal(&self) -> bool {
        self.mismatching_pages.is_empty()
    }
}

fn nothing_to_verify(path: &Path, why: &str) -> Error {
    Error::Input {
        path: path.into(),
        message: format!(
            "nothing to verify: {why}. verify-live compares the live database with the image the next WAL-delta capture would give, which starts from this host's last capture of it into this repository (format 2); take a snapshot first (`snapback snapshot {}`), then verify",
            path.display()
        ),
    }
}

impl Repository {
    /// Compares, in one read transaction, the image the next WAL-delta
    /// capture of `path` would give with a full scan of the live database,
    /// page by page; commits nothing. On a mismatch the local capture
    /// state is dropped, so the next capture is a full scan, and the
    /// mismatch is logged as an error. An error (kind bad input) when
    /// there is nothing to compare: no usable capture state, or one from
    /// which the next capture could not be a delta anyway (it will be a
    /// full scan). The watcher calls this hourly; `snapback verify-live`
    /// on demand.
    pub fn verify_live(&self, path: &Path, opts: &VerifyLiveOptions) -> Result<VerifyLiveReport> {
        let started = Instant::now();
        let path = std::fs::canonicalize(path)
            .map_err(|e| Error::io(path, "cannot find the database", e))?;
        let path_s = path.to_string_lossy().into_owned();
        if !self.config().allows_partial_reads() {
            return Err(nothing_to_verify(
                &path,
                "the repository is format 1, which takes no WAL-delta captures",
            ));
        }
        let sp = capture_state::paths(&opts.state_dir, &self.config().repo_id, &path_s);
        let Some(_lock) = capture_state::try_lock(&sp)? else {
            return Err(Error::Locked(format!(
                "{path_s}: a capture of this database into this repository is running (a snapshot, or `snapback watch` mid-tick); run verify-live again when it is done"
            )));
        };
        let state = capture_state::load(&sp).map_err(|why| nothing_to_verify(&path, &why))?;
        let history = self.snapshots()?;
        let index = self.index()?;
        let base = self
            .image_of_state(&index, &state, &path_s, &history)
            .map_err(|why| nothing_to_verify(&path, &why))?
            .list;
        let before = crate::delta::before(&path);
        let cap = Capture::begin(&path, opts.busy_timeout)?;
        let ps = cap.page_size as usize;
        let mut wal_mode = false;
        cap.read_listed(&[1], 1, |_, page1| {
            wal_mode = journal_mode_of_header(&page1) == "wal";
            Ok(())
        })?;
        let same_file = std::fs::metadata(&path).ok().map(|m| {
            (
                std::os::unix::fs::MetadataExt::dev(&m),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        });
        if same_file != Some((before.dev, before.ino)) {
            return Err(nothing_to_verify(
                &path,
                "the database file was replaced while verify-live began (the next capture is a full scan)",
            ));
        }
        // Content, not metadata: the file's timestamps are not consulted
        // (`CaptureState::db_file`), so that what they cannot show (a write
        // in the same clock tick as the capture's look at them, timestamps
        // set back) is compared too.
        let by_content = capture_state::CaptureState {
            db_file: None,
            ..state.clone()
        };
        let changed = crate::delta::changed_pages(
            &path,
            &before,
            wal_mode,
            &by_content,
            cap.page_size,
            cap.page_count,
            opts.pin_session.is_some() && state.session == opts.pin_session,
        )
        .map_err(|why| {
            nothing_to_verify(
                &path,
                &format!("the next capture cannot be a WAL delta ({why}), so it will be a full scan, which needs no check"),
            )
        })?;
        // The delta's image, as `snapshot` builds it.
        let old_sum = state.checksum()?;
        let (list, _) = crate::snapshot::delta_image(&cap, &changed, base, old_sum, |p| {
            self.codec().blob_id(p)
        })?
        .map_err(|why| nothing_to_verify(&path, &why))?;
        // The full scan, throttled, compared as it goes.
        let batch = (1usize << 20) / ps;
        let mut mismatching = Vec::new();
        let mut pgno = 0u64;
        let mut bytes = 0u64;
        let scan_started = Instant::now();
        cap.read_pages(batch.max(1), |buf| {
            for page in buf.chunks(ps) {
                pgno += 1;
                let id = self.codec().blob_id(page);
                if list.get(pgno as usize - 1).map(|c| c.id) != Some(id) {
                    mismatching.push(pgno);
                }
            }
            bytes += buf.len() as u64;
            if opts.rate > 0 {
                let due = Duration::from_secs_f64(bytes as f64 / opts.rate as f64);
                if let Some(wait) = due.checked_sub(scan_started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(())
        })?;
        // A delta list longer than the scan: its extra entries differ too.
        mismatching.extend(pgno + 1..=list.len() as u64);
        cap.finish()?;
        let mut state_dropped = false;
        if !mismatching.is_empty() {
            let why = format!(
                "verify-live found {} of {} page(s) of the live database differing from the image a WAL-delta capture would give (first: page {}); the next capture takes a full scan",
                mismatching.len(),
                pgno,
                mismatching[0]
            );
            tracing::error!(path = %path_s, pages = ?&mismatching[..mismatching.len().min(20)], "{why}");
            capture_state::invalidate(&sp, &why)?;
            state_dropped = true;
        }
        Ok(VerifyLiveReport {
            path: path_s,
            snapshot: state.manifest,
            page_count: pgno,
            pages_compared: pgno,
            delta_pages: changed.pages.len() as u64,
            mismatching_pages: mismatching,
            state_dropped,
            bytes_read: bytes + (changed.pages.len() * ps) as u64,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}
