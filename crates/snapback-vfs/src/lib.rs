//! snapback-vfs: a read-only SQLite VFS over a snapback repository. It
//! opens the database of any point (a snapshot or a timeline point) in
//! place, reading only the pages a query touches, through the mount's
//! lazy, verified, cached reader (`snapback_mount::Vfs`; one reader, not
//! two).
//!
//! Two ways in:
//! - **In process** (the repair engine: `diff`, `repair`): `PointDb::open`
//!   registers a point under a private name, and `PointDb::connect` opens
//!   it with rusqlite.
//! - **As a loadable extension** (`libsnapback_vfs.so`): `.load` it in any
//!   SQLite, then open `file:/srv/app/app.db?vfs=snapback&repo=…&at=…`
//!   (`point::open_uri`).
//!
//! Read-only: a write, a truncation, a delete or a lock above SHARED
//! answers SQLITE_READONLY; a read that cannot be verified (a damaged or
//! missing pack, a timeout) answers SQLITE_IOERR_READ, never other bytes.
//!
//! This is the one crate of the workspace with unsafe code, all of it in
//! `ffi.rs`, whose top says why each block is sound.

mod ffi;
pub mod point;
mod scan;
mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use snapback_core::{FileEntry, Kind, ProvenReader, Repository, Snapshot};
use snapback_mount::{VfsError, VfsOptions};

pub use ffi::VFS_NAME;
pub use point::{PointFile, ReadStats, UriParams};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] snapback_core::Error),

    /// The message says the cause; it is not also the `source()`.
    #[error("reading {what}: {cause}")]
    Read { what: String, cause: VfsError },

    #[error("{0}")]
    Input(String),

    #[error("cannot register the snapback SQLite VFS (SQLite error {0}); this is a bug")]
    Register(i32),
}

impl Error {
    /// What kind of failure this is (it decides the CLI's exit code).
    pub fn kind(&self) -> Kind {
        match self {
            Error::Core(e) => e.kind(),
            Error::Read { cause, .. } => match cause {
                VfsError::Repo { cause, .. } => cause.kind(),
                VfsError::TimedOut { .. } => Kind::Io,
                VfsError::SnapshotGone { .. } | VfsError::NotFound => Kind::BadInput,
                _ => Kind::Internal,
            },
            Error::Input(_) => Kind::BadInput,
            Error::Register(_) => Kind::Internal,
        }
    }
}

/// Points registered in this process, by name.
static POINTS: Mutex<Option<HashMap<String, Arc<PointFile>>>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(1);

pub(crate) fn registered_point(name: &str) -> Option<Arc<PointFile>> {
    POINTS.lock().ok()?.as_ref()?.get(name).cloned()
}

/// Says why a URI could not be opened: SQLite's error is only
/// "unable to open database file".
pub(crate) fn report_open_error(e: &Error) {
    tracing::error!(error = %e, "snapback VFS: cannot open the point");
    if std::env::var_os("SNAPBACK_VFS_QUIET").is_none() {
        eprintln!("snapback vfs: {e}");
    }
}

/// A point opened in this process, for as long as it lives.
#[derive(Debug)]
pub struct PointDb {
    name: String,
    file: Arc<PointFile>,
}

impl PointDb {
    /// Opens database `file` of `snap` (a snapshot or a timeline point).
    /// Nothing is read but its chunk list (checked against the manifest).
    pub fn open(
        repo: Arc<Repository>,
        snap: &Snapshot,
        file: &FileEntry,
    ) -> Result<PointDb, Error> {
        Self::open_with(repo, snap, file, false, None)
    }

    /// Like `open`, and notes every page read (`pages_touched`): what a
    /// query answered depends only on those pages' bytes.
    pub fn open_tracking(
        repo: Arc<Repository>,
        snap: &Snapshot,
        file: &FileEntry,
    ) -> Result<PointDb, Error> {
        Self::open_with(repo, snap, file, true, None)
    }

    /// `open_tracking`, with the chunk layout already proven for `file`
    /// (`snapback_core::PointWalk::prove`): nothing is read to open it.
    pub fn open_tracking_proven(
        repo: Arc<Repository>,
        snap: &Snapshot,
        file: &FileEntry,
        proven: ProvenReader,
    ) -> Result<PointDb, Error> {
        Self::open_with(repo, snap, file, true, Some(proven))
    }

    fn open_with(
        repo: Arc<Repository>,
        snap: &Snapshot,
        file: &FileEntry,
        track: bool,
        proven: Option<ProvenReader>,
    ) -> Result<PointDb, Error> {
        ffi::register_in_process().map_err(Error::Register)?;
        let opts = VfsOptions {
            // A diff reads a table's b-tree, whose pages are scattered: a
            // read-ahead window would fetch other tables' pages too.
            readahead_max: 0,
            ..VfsOptions::default()
        };
        let mut point = PointFile::open_with(repo, snap, file, opts, proven)?;
        if track {
            point = point.with_page_tracking();
        }
        let point = Arc::new(point);
        let name = format!(
            "snapback-point-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        POINTS
            .lock()
            .map_err(|_| Error::Input("the VFS's table of points is poisoned".into()))?
            .get_or_insert_with(HashMap::new)
            .insert(name.clone(), point.clone());
        Ok(PointDb { name, file: point })
    }

    /// The URI that opens (or ATTACHes) the point in this process.
    pub fn uri(&self) -> String {
        format!("file:{}?vfs={VFS_NAME}", self.name)
    }

    /// A new read-only connection to the point.
    pub fn connect(&self) -> rusqlite::Result<Connection> {
        Connection::open_with_flags_and_vfs(
            format!("file:{}", self.name),
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            VFS_NAME,
        )
    }

    /// "PATH of snapshot …".
    pub fn describe(&self) -> &str {
        self.file.describe()
    }

    pub fn stats(&self) -> ReadStats {
        self.file.stats()
    }

    /// The open point file: its chunk layout and page reads.
    pub fn file(&self) -> &PointFile {
        &self.file
    }

    /// The pages read so far (numbered from 1), for a point opened with
    /// `open_tracking`.
    pub fn pages_touched(&self) -> Option<std::collections::BTreeSet<u64>> {
        self.file.pages_touched()
    }
}

impl Drop for PointDb {
    fn drop(&mut self) {
        // Connections still open keep their own reference to the point.
        if let Ok(mut m) = POINTS.lock() {
            if let Some(m) = m.as_mut() {
                m.remove(&self.name);
            }
        }
    }
}

/// Registers the VFS with the SQLite of this process, so that URIs
/// `file:PATH?vfs=snapback&repo=…&at=…` open (what the extension does on
/// `.load`).
pub fn register() -> Result<(), Error> {
    ffi::register_in_process().map_err(Error::Register)
}
