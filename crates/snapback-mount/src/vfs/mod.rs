//! The virtual filesystem behind the mount, with no FUSE in it.
//!
//! It answers lookups, attributes, directory listings and reads over a tree
//! built from the repository's snapshots, so all of it can be tested without
//! mounting anything. `fuse.rs` is a thin adapter over it.
//!
//! Layout of the whole-repository view:
//! ```text
//! /.snapback-status.json                 counters and state of this mount
//! /latest -> snapshots/<newest>          symlink
//! /snapshots/<time>_<short id>/          one directory per snapshot
//!     .snapback-manifest.json            the snapshot's metadata
//!     <source path without leading />    its files, with their source attributes
//! /by-path/<source path>/<time>          the same files, grouped by source
//! ```
//! The one-snapshot view puts that snapshot's directory at the root (with
//! `.snapback-status.json` beside `.snapback-manifest.json`).
//!
//! Inode numbers are stable for the life of the mount: a path keeps its
//! inode across refreshes, and the content behind a file path never changes,
//! because snapshots are immutable and every file path includes its
//! snapshot's id (or, under by-path, is keyed by it).
//!
//! The pieces: `tree` builds the tree of nodes from the snapshot list (names,
//! inode numbers, manifests); `listing` keeps it fresh (a background
//! refresh); `names` answers lookups, attributes and directory listings;
//! `read` opens and reads files (handles, chunk lists, fetch windows,
//! read-ahead); `status` is `.snapback-status.json`.

mod listing;
mod names;
mod read;
mod status;
mod tree;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use snapback_core::{FileReader, Id, Repository, Snapshot};

use crate::cache::DiskCache;
use crate::error::VfsError;
use crate::fetch::Fetcher;

use listing::{Listing, RefreshState};
use read::{Handle, RateLimit};
use tree::{Inodes, Tree};

pub use tree::snapshot_dir_name;

pub const ROOT_INO: u64 = 1;
pub const MANIFEST_NAME: &str = ".snapback-manifest.json";
pub const STATUS_NAME: &str = ".snapback-status.json";

/// Which snapshots the mount shows.
#[derive(Debug, Clone)]
pub enum View {
    /// Every snapshot, refreshed as new ones are committed.
    All,
    /// One snapshot, at the root.
    One(Snapshot),
}

/// Settings of the virtual filesystem.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// In-memory chunk cache, bytes.
    pub mem_cache_bytes: u64,
    /// On-disk chunk cache: directory and size in bytes.
    pub disk_cache: Option<(PathBuf, u64)>,
    /// How long one read (or open) may take before it fails with EIO.
    pub read_timeout: Duration,
    /// How old the snapshot list may get before a directory access refreshes it.
    pub refresh_ttl: Duration,
    /// Kernel attribute and entry TTL for things that never change.
    pub immutable_ttl: Duration,
    /// Threads fetching chunks.
    pub fetch_threads: usize,
    /// A fetch also reads the chunks that follow in the file when they lie
    /// within this many bytes of the same pack, in one range read (0: one
    /// chunk per request). It applies to reads that land a little after the
    /// previous read of the same open file (a scan), or to every read with
    /// `fetch_window_always`.
    pub fetch_window: u64,
    /// Use the fetch window for random reads too: right where a request
    /// costs far more than its bytes (S3).
    pub fetch_window_always: bool,
    /// First read-ahead window, bytes.
    pub readahead_initial: u64,
    /// Largest read-ahead window, bytes (0 disables read-ahead).
    pub readahead_max: u64,
    /// Owner reported for every entry.
    pub uid: u32,
    pub gid: u32,
}

impl Default for VfsOptions {
    fn default() -> Self {
        VfsOptions {
            mem_cache_bytes: 256 << 20,
            disk_cache: None,
            read_timeout: Duration::from_secs(30),
            refresh_ttl: Duration::from_secs(5),
            immutable_ttl: Duration::from_secs(24 * 3600),
            fetch_threads: 8,
            fetch_window: 0,
            fetch_window_always: false,
            readahead_initial: 128 << 10,
            readahead_max: 4 << 20,
            uid: 0,
            gid: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

/// Attributes of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

/// A lookup or getattr answer: the attributes and how long the kernel may
/// cache them.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// The answer to an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Snapshot content never changes: the kernel may keep its page cache.
    pub keep_cache: bool,
    /// Generated content (the status file): every read comes to us.
    pub direct_io: bool,
}

/// Counters of the mount, shown in `.snapback-status.json`.
#[derive(Debug, Default)]
pub struct VfsStats {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    pub opens: AtomicU64,
    pub refreshes: AtomicU64,
    pub refresh_errors: AtomicU64,
}

/// The virtual filesystem.
pub struct Vfs {
    view: View,
    opts: VfsOptions,
    fetcher: Arc<Fetcher>,
    listing: Arc<Listing>,
    read_warnings: RateLimit,
    readers: Mutex<HashMap<(Id, usize), Arc<FileReader>>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    pub stats: Arc<VfsStats>,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs").field("view", &self.view).finish()
    }
}

impl Vfs {
    /// Builds the tree. For the whole-repository view this lists the
    /// snapshots once; a failure here is an error (nothing to show).
    pub fn new(repo: Arc<Repository>, view: View, opts: VfsOptions) -> Result<Vfs, VfsError> {
        let disk = match &opts.disk_cache {
            Some((dir, size)) => Some(DiskCache::open(dir, *size, repo.codec().clone()).map_err(
                |e| {
                    VfsError::Internal(format!(
                        "cannot open the disk cache at {}: {e}",
                        dir.display()
                    ))
                },
            )?),
            None => None,
        };
        let fetcher = Fetcher::new(
            repo,
            opts.mem_cache_bytes,
            disk,
            opts.fetch_threads,
            opts.fetch_window,
        );
        let started = SystemTime::now();
        let stats = Arc::new(VfsStats::default());
        let listing = Arc::new(Listing {
            view: view.clone(),
            fetcher: fetcher.clone(),
            tree: RwLock::new(Arc::new(Tree::default())),
            inodes: Mutex::new(Inodes {
                by_key: HashMap::new(),
                next: ROOT_INO + 1,
            }),
            state: Mutex::new(RefreshState {
                at: Instant::now(),
                last_error: None,
                snapshots: 0,
            }),
            running: AtomicBool::new(false),
            started,
            stats: stats.clone(),
        });
        let vfs = Vfs {
            view,
            opts,
            fetcher,
            listing,
            read_warnings: RateLimit::default(),
            readers: Mutex::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats,
        };
        vfs.refresh()?;
        Ok(vfs)
    }

    pub fn options(&self) -> &VfsOptions {
        &self.opts
    }

    pub fn fetch_stats(&self) -> &crate::fetch::FetchStats {
        &self.fetcher.stats
    }

    /// The chunk id the repository gives a chunk of these bytes (its
    /// SHA-256, keyed in an encrypted repository): equal to a chunk list's
    /// entry exactly when the bytes are that chunk's.
    pub fn chunk_id_of(&self, raw: &[u8]) -> snapback_core::Id {
        self.repo().codec().blob_id(raw)
    }

    fn repo(&self) -> &Arc<Repository> {
        self.fetcher.repo()
    }

    /// Lists the snapshots (and loads new index objects) and rebuilds the
    /// tree, now, in this thread. Existing paths keep their inode numbers.
    pub fn refresh(&self) -> Result<(), VfsError> {
        self.listing.refresh()
    }

    /// Waits until no fetch is in flight (tests).
    #[cfg(test)]
    fn wait_idle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.fetcher.in_flight() > 0 {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[cfg(test)]
    fn clear_mem_cache(&self) {
        self.fetcher.clear_mem();
    }
}

/// The attributes sent with a negative entry (the kernel uses only the
/// inode number 0 and the TTL).
pub fn negative_attr() -> Attr {
    Attr {
        ino: 0,
        kind: Kind::File,
        size: 0,
        perm: 0,
        nlink: 0,
        mtime: SystemTime::UNIX_EPOCH,
        uid: 0,
        gid: 0,
    }
}

#[cfg(test)]
mod tests;
