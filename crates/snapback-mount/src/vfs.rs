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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use snapback_core::time::{format_rfc3339_nanos, strip_fraction};
use snapback_core::{
    DbChecksum, FileEntry, FileKind, FileReader, Id, Manifest, Repository, Snapshot,
};

use crate::cache::DiskCache;
use crate::error::VfsError;
use crate::fetch::{run_with_deadline, Fetcher};

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

/// A file of a snapshot.
#[derive(Debug)]
struct FileNode {
    snap: Id,
    manifest: Arc<Manifest>,
    idx: usize,
}

impl FileNode {
    fn entry(&self) -> &FileEntry {
        &self.manifest.files[self.idx]
    }

    fn is_sqlite(&self) -> bool {
        self.entry().kind == FileKind::Sqlite
    }
}

#[derive(Debug, Clone)]
enum NodeKind {
    Dir {
        children: BTreeMap<String, u64>,
        dynamic: bool,
    },
    File(Arc<FileNode>),
    Bytes(Arc<Vec<u8>>),
    Status,
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Node {
    parent: u64,
    mtime: SystemTime,
    kind: NodeKind,
}

#[derive(Debug, Default)]
struct Tree {
    nodes: HashMap<u64, Node>,
}

/// Inode numbers by node key, kept for the life of the mount.
#[derive(Debug)]
struct Inodes {
    by_key: HashMap<String, u64>,
    next: u64,
}

struct Builder<'a> {
    inos: &'a mut Inodes,
    nodes: HashMap<u64, Node>,
}

impl Builder<'_> {
    fn ino(&mut self, key: &str) -> u64 {
        if let Some(i) = self.inos.by_key.get(key) {
            return *i;
        }
        let i = self.inos.next;
        self.inos.next += 1;
        self.inos.by_key.insert(key.to_string(), i);
        i
    }

    fn dir(dynamic: bool, parent: u64, mtime: SystemTime) -> Node {
        Node {
            parent,
            mtime,
            kind: NodeKind::Dir {
                children: BTreeMap::new(),
                dynamic,
            },
        }
    }

    /// Adds `node` as `name` under `parent`; returns its inode, or None if
    /// the name is taken.
    fn add(&mut self, parent: u64, name: &str, key: &str, node: Node) -> Option<u64> {
        if !valid_name(name) {
            return None;
        }
        if let Some(Node {
            kind: NodeKind::Dir { children, .. },
            ..
        }) = self.nodes.get(&parent)
        {
            if children.contains_key(name) {
                return None;
            }
        } else {
            return None;
        }
        let ino = self.ino(key);
        self.nodes.insert(ino, node);
        if let Some(Node {
            kind: NodeKind::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            children.insert(name.to_string(), ino);
        }
        Some(ino)
    }

    /// The directory `name` under `parent`, created if missing; None if the
    /// name is taken by something else.
    fn subdir(
        &mut self,
        parent: u64,
        parent_key: &str,
        name: &str,
        dynamic: bool,
        mtime: SystemTime,
    ) -> Option<u64> {
        let existing = match self.nodes.get(&parent) {
            Some(Node {
                kind: NodeKind::Dir { children, .. },
                ..
            }) => children.get(name).copied(),
            _ => return None,
        };
        if let Some(i) = existing {
            return match self.nodes.get_mut(&i) {
                Some(n) if matches!(n.kind, NodeKind::Dir { .. }) => {
                    n.mtime = n.mtime.max(mtime);
                    Some(i)
                }
                _ => None,
            };
        }
        let key = format!("{parent_key}/{name}");
        self.add(parent, name, &key, Builder::dir(dynamic, parent, mtime))
    }

    /// Adds one snapshot's files (and its manifest) under `dir`.
    fn snapshot_content(&mut self, dir: u64, dir_key: &str, snap: &Snapshot) {
        let t: SystemTime = snap.time.into();
        let manifest = Arc::new(manifest_json(snap));
        self.add(
            dir,
            MANIFEST_NAME,
            &format!("{dir_key}/{MANIFEST_NAME}"),
            Node {
                parent: dir,
                mtime: t,
                kind: NodeKind::Bytes(manifest),
            },
        );
        for (idx, f) in snap.manifest.files.iter().enumerate() {
            let comps: Vec<&str> = f.path.split('/').filter(|c| !c.is_empty()).collect();
            let Some((leaf, dirs)) = comps.split_last() else {
                continue;
            };
            let mut parent = dir;
            let mut key = dir_key.to_string();
            let mut ok = true;
            for c in dirs {
                match self.subdir(parent, &key, c, false, t) {
                    Some(i) => {
                        parent = i;
                        key = format!("{key}/{c}");
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            let node = Node {
                parent,
                mtime: file_mtime(f, t),
                kind: NodeKind::File(Arc::new(FileNode {
                    snap: snap.id,
                    manifest: snap.manifest.clone(),
                    idx,
                })),
            };
            if !ok
                || self
                    .add(parent, leaf, &format!("{key}/{leaf}"), node)
                    .is_none()
            {
                tracing::warn!(snapshot = %snap.id.short(), path = %f.path, "not shown in the mount: its path clashes with another entry or has a '.' or '..' component");
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn file_mtime(f: &FileEntry, fallback: SystemTime) -> SystemTime {
    f.mtime
        .as_deref()
        .and_then(|m| snapback_core::time::parse_rfc3339(m).ok())
        .map(SystemTime::from)
        .unwrap_or(fallback)
}

/// The name of a snapshot's directory under `snapshots/`: its time in full
/// (so that `@TIME` with it selects this snapshot) and its short id.
pub fn snapshot_dir_name(s: &Snapshot) -> String {
    format!("{}_{}", format_rfc3339_nanos(s.time), s.id.short())
}

/// True for a name in the older, seconds-only form of the mount's time
/// names: `2026-02-02T17:17:00Z`, optionally with `_<8 hex>`.
fn is_legacy_time_name(name: &str) -> bool {
    let b = name.as_bytes();
    let time_ok = b.len() >= 20
        && b[19] == b'Z'
        && b[..19].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    time_ok
        && (b.len() == 20
            || (b.len() == 29 && b[20] == b'_' && b[21..].iter().all(u8::is_ascii_hexdigit)))
}

/// The `.snapback-manifest.json` of a snapshot: its id and manifest, and
/// what the mount serves differently from the stored image.
fn manifest_json(s: &Snapshot) -> Vec<u8> {
    let patched: Vec<&str> = s
        .manifest
        .files
        .iter()
        .filter(|f| {
            f.kind == FileKind::Sqlite && f.sqlite.as_ref().is_some_and(|q| q.journal_mode == "wal")
        })
        .map(|f| f.path.as_str())
        .collect();
    let mut v = json!({
        "id": s.id.to_hex(),
        "short_id": s.id.short(),
        "manifest": &*s.manifest,
    });
    if !patched.is_empty() {
        v["mount_notes"] = json!({
            "served_as_rollback_journal": patched,
            "explanation": "these WAL-mode databases are served with header bytes 18 and 19 set to 1 (rollback journal) so that they open read-only with no -wal or -shm file; every other byte is the stored image, whose SHA-256 the manifest records",
        });
    }
    let mut out = serde_json::to_vec_pretty(&v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

fn build(view: &View, snaps: &[Snapshot], inos: &mut Inodes, now: SystemTime) -> Tree {
    let mut b = Builder {
        inos,
        nodes: HashMap::new(),
    };
    match view {
        View::One(s) => {
            let t: SystemTime = s.time.into();
            b.nodes.insert(ROOT_INO, Builder::dir(false, ROOT_INO, t));
            b.snapshot_content(ROOT_INO, "", s);
            b.add(
                ROOT_INO,
                STATUS_NAME,
                &format!("/{STATUS_NAME}"),
                Node {
                    parent: ROOT_INO,
                    mtime: now,
                    kind: NodeKind::Status,
                },
            );
        }
        View::All => {
            let newest: SystemTime = snaps.last().map(|s| s.time.into()).unwrap_or(now);
            b.nodes
                .insert(ROOT_INO, Builder::dir(true, ROOT_INO, newest));
            b.add(
                ROOT_INO,
                STATUS_NAME,
                &format!("/{STATUS_NAME}"),
                Node {
                    parent: ROOT_INO,
                    mtime: now,
                    kind: NodeKind::Status,
                },
            );
            let snapdir = b
                .subdir(ROOT_INO, "", "snapshots", true, newest)
                .unwrap_or(ROOT_INO);
            let bypath = b
                .subdir(ROOT_INO, "", "by-path", true, newest)
                .unwrap_or(ROOT_INO);
            for s in snaps {
                let name = snapshot_dir_name(s);
                let key = format!("/snapshots/{name}");
                let t: SystemTime = s.time.into();
                if let Some(d) = b.add(snapdir, &name, &key, Builder::dir(false, snapdir, t)) {
                    b.snapshot_content(d, &key, s);
                }
                for (idx, f) in s.manifest.files.iter().enumerate() {
                    by_path_entry(&mut b, bypath, s, idx, f);
                }
            }
            // What `latest` means everywhere: not a snapshot dated ahead of
            // this host's clock, the store's, or its successor's.
            let dating = snapback_core::Dating::of(snaps);
            if let Some(s) = dating.newest(snaps, snapback_core::time::now()) {
                b.add(
                    ROOT_INO,
                    "latest",
                    "/latest",
                    Node {
                        parent: ROOT_INO,
                        mtime: s.time.into(),
                        kind: NodeKind::Symlink(format!("snapshots/{}", snapshot_dir_name(s))),
                    },
                );
            }
        }
    }
    Tree { nodes: b.nodes }
}

fn by_path_entry(b: &mut Builder<'_>, bypath: u64, s: &Snapshot, idx: usize, f: &FileEntry) {
    let t: SystemTime = s.time.into();
    let mut parent = bypath;
    let mut key = "/by-path".to_string();
    for c in f.path.split('/').filter(|c| !c.is_empty()) {
        match b.subdir(parent, &key, c, true, t) {
            Some(i) => {
                parent = i;
                key = format!("{key}/{c}");
            }
            None => {
                tracing::warn!(path = %f.path, "not shown under by-path: a component clashes with another entry");
                return;
            }
        }
    }
    let time = format_rfc3339_nanos(s.time);
    let node = Node {
        parent,
        mtime: file_mtime(f, t),
        kind: NodeKind::File(Arc::new(FileNode {
            snap: s.id,
            manifest: s.manifest.clone(),
            idx,
        })),
    };
    let node_key = format!("{key}/#{}", s.id.to_hex());
    if b.add(parent, &time, &node_key, node.clone()).is_none() {
        let name = format!("{time}_{}", s.id.short());
        if b.add(parent, &name, &node_key, node).is_none() {
            tracing::warn!(path = %f.path, snapshot = %s.id.short(), "not shown under by-path: name clash");
        }
    }
}

/// Sequential-read detection for one open file.
#[derive(Debug, Default)]
struct ReadAhead {
    next: u64,
    window: u64,
    prefetched_to: u64,
}

#[derive(Debug)]
enum Handle {
    File {
        node: Arc<FileNode>,
        reader: Arc<FileReader>,
        ra: Mutex<ReadAhead>,
    },
    Bytes(Arc<Vec<u8>>),
    Dir(Arc<Vec<DirEntry>>),
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

#[derive(Debug)]
struct RefreshState {
    at: Instant,
    last_error: Option<String>,
    snapshots: usize,
}

/// The snapshot list and the tree built from it, shared with the thread
/// that refreshes it in the background.
struct Listing {
    view: View,
    fetcher: Arc<Fetcher>,
    tree: RwLock<Arc<Tree>>,
    inodes: Mutex<Inodes>,
    state: Mutex<RefreshState>,
    /// A refresh is running (in the background or in `Vfs::refresh`).
    running: AtomicBool,
    started: SystemTime,
    stats: Arc<VfsStats>,
}

/// How long an access that starts a refresh waits for it before it answers
/// from the previous list: a quick backend shows new snapshots at once, a
/// stalled one holds nobody up.
const REFRESH_WAIT: Duration = Duration::from_millis(250);

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

impl Listing {
    /// Lists the snapshots (and loads new index objects) and rebuilds the
    /// tree. Existing paths keep their inode numbers.
    fn refresh(&self) -> Result<(), VfsError> {
        let snaps = match &self.view {
            View::One(s) => {
                self.fetcher
                    .repo()
                    .refresh_index()
                    .map_err(|e| VfsError::repo("the repository index", e))?;
                vec![s.clone()]
            }
            View::All => {
                let repo = self.fetcher.repo();
                let r = repo.refresh_index().and_then(|_| repo.snapshots());
                match r {
                    Ok(s) => s,
                    Err(e) => {
                        self.stats.refresh_errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut st) = self.state.lock() {
                            st.at = Instant::now();
                            st.last_error = Some(e.to_string());
                        }
                        return Err(VfsError::repo("the snapshot list", e));
                    }
                }
            }
        };
        let tree = {
            let mut inos = self
                .inodes
                .lock()
                .map_err(|_| VfsError::Internal("inode table lock poisoned".into()))?;
            build(&self.view, &snaps, &mut inos, self.started)
        };
        if let Ok(mut t) = self.tree.write() {
            *t = Arc::new(tree);
        }
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut st) = self.state.lock() {
            st.at = Instant::now();
            st.last_error = None;
            st.snapshots = snaps.len();
        }
        Ok(())
    }

    fn stale(&self, ttl: Duration) -> bool {
        self.state
            .lock()
            .map(|st| st.at.elapsed() >= ttl)
            .unwrap_or(false)
    }
}

/// At most `RateLimit::BURST` log lines per `RateLimit::WINDOW`.
#[derive(Debug, Default)]
struct RateLimit {
    /// Start of the current window, lines logged in it, lines suppressed.
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl RateLimit {
    const BURST: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(10);

    /// Whether to log now; if so, how many were suppressed before.
    fn allow(&self) -> Option<u64> {
        let mut g = self.state.lock().ok()?;
        let st = g.get_or_insert((Instant::now(), 0, 0));
        if st.0.elapsed() >= Self::WINDOW {
            st.0 = Instant::now();
            st.1 = 0;
        }
        if st.1 < Self::BURST {
            st.1 += 1;
            Some(std::mem::take(&mut st.2))
        } else {
            st.2 += 1;
            None
        }
    }
}

/// At most this many chunk lists are kept for files that are not open.
const READER_CACHE: usize = 256;

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

    fn repo(&self) -> &Arc<Repository> {
        self.fetcher.repo()
    }

    /// Lists the snapshots (and loads new index objects) and rebuilds the
    /// tree, now, in this thread. Existing paths keep their inode numbers.
    pub fn refresh(&self) -> Result<(), VfsError> {
        self.listing.refresh()
    }

    /// Refreshes if the snapshot list is older than the TTL: in the
    /// background, waiting for it at most `REFRESH_WAIT`; meanwhile every
    /// access (this one after the wait) is answered from the previous list.
    /// Only one refresh runs at a time. (It ran in the thread of the access
    /// that found the list stale, so with the backend frozen that `ls`
    /// hung for the whole retry budget of the S3 LIST, 5 minutes.)
    fn ensure_fresh(&self) {
        if matches!(self.view, View::One(_)) {
            return;
        }
        let l = &self.listing;
        if !l.stale(self.opts.refresh_ttl) {
            return;
        }
        if l.running.swap(true, Ordering::AcqRel) {
            return;
        }
        if !l.stale(self.opts.refresh_ttl) {
            l.running.store(false, Ordering::Release);
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let bg = l.clone();
        let spawned = std::thread::Builder::new()
            .name("snapback-refresh".into())
            .spawn(move || {
                if let Err(e) = bg.refresh() {
                    tracing::warn!(error = %e, "cannot refresh the snapshot list; showing the previous one");
                }
                bg.running.store(false, Ordering::Release);
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = rx.recv_timeout(REFRESH_WAIT);
            }
            Err(e) => {
                l.running.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot start the snapshot-list refresh");
            }
        }
    }

    fn tree(&self) -> Arc<Tree> {
        self.listing
            .tree
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn is_dynamic(tree: &Tree, ino: u64) -> bool {
        match tree.nodes.get(&ino) {
            Some(Node {
                kind: NodeKind::Dir { dynamic, .. },
                ..
            }) => *dynamic,
            Some(Node {
                kind: NodeKind::Symlink(_),
                ..
            }) => true,
            _ => false,
        }
    }

    fn attr_of(&self, ino: u64, n: &Node) -> Entry {
        let (kind, size, perm, ttl) = match &n.kind {
            NodeKind::Dir { dynamic, .. } => (
                Kind::Dir,
                0,
                0o555,
                if *dynamic {
                    self.opts.refresh_ttl
                } else {
                    self.opts.immutable_ttl
                },
            ),
            NodeKind::File(f) => {
                let e = f.entry();
                // The source's bits, exactly: 0000 is a mode like any other
                // (it was once taken for "unknown" and served as 0444).
                (
                    Kind::File,
                    e.size,
                    (e.mode & 0o7777) as u16,
                    self.opts.immutable_ttl,
                )
            }
            NodeKind::Bytes(b) => (Kind::File, b.len() as u64, 0o444, self.opts.immutable_ttl),
            NodeKind::Status => (
                Kind::File,
                self.status_json().len() as u64,
                0o444,
                Duration::ZERO,
            ),
            NodeKind::Symlink(t) => (Kind::Symlink, t.len() as u64, 0o777, self.opts.refresh_ttl),
        };
        Entry {
            attr: Attr {
                ino,
                kind,
                size,
                perm,
                nlink: if kind == Kind::Dir { 2 } else { 1 },
                mtime: n.mtime,
                uid: self.opts.uid,
                gid: self.opts.gid,
            },
            ttl,
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Entry, VfsError> {
        let mut tree = self.tree();
        if Self::is_dynamic(&tree, parent) {
            self.ensure_fresh();
            tree = self.tree();
        }
        let p = tree.nodes.get(&parent).ok_or(VfsError::Stale(parent))?;
        let NodeKind::Dir { children, .. } = &p.kind else {
            return Err(VfsError::NotDir);
        };
        let ino = match children.get(name) {
            Some(i) => *i,
            None => Self::legacy_child(&tree, children, name).ok_or(VfsError::NotFound)?,
        };
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        Ok(self.attr_of(ino, n))
    }

    /// Names of the older, seconds-only form still resolve (scripts and
    /// notes written before names carried the full time), without being
    /// listed: `…T17:17:00Z_9f2c4e1a` under `snapshots/`, and under
    /// `by-path` `…T17:17:00Z` (the first snapshot of that second) or
    /// `…T17:17:00Z_<short id>`.
    fn legacy_child(tree: &Tree, children: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
        if !is_legacy_time_name(name) {
            return None;
        }
        children.iter().find_map(|(child, ino)| {
            let old = strip_fraction(child)?;
            if old == name {
                return Some(*ino);
            }
            match tree.nodes.get(ino).map(|n| &n.kind) {
                Some(NodeKind::File(f)) if format!("{old}_{}", f.snap.short()) == name => {
                    Some(*ino)
                }
                _ => None,
            }
        })
    }

    /// How long the kernel may remember that a name is absent from
    /// directory `parent`: as long as the directory's own listing is cached.
    /// SQLite looks for `-journal` and `-wal` files at every transaction;
    /// without this, each of those lookups would come to us.
    pub fn negative_ttl(&self, parent: u64) -> Duration {
        let tree = self.tree();
        match tree.nodes.get(&parent) {
            Some(Node {
                kind: NodeKind::Dir { dynamic: false, .. },
                ..
            }) => self.opts.immutable_ttl,
            Some(Node {
                kind: NodeKind::Dir { .. },
                ..
            }) => self.opts.refresh_ttl,
            _ => Duration::ZERO,
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Entry, VfsError> {
        let mut tree = self.tree();
        if Self::is_dynamic(&tree, ino) {
            self.ensure_fresh();
            tree = self.tree();
        }
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        Ok(self.attr_of(ino, n))
    }

    pub fn readlink(&self, ino: u64) -> Result<String, VfsError> {
        let tree = self.tree();
        match &tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?.kind {
            NodeKind::Symlink(t) => Ok(t.clone()),
            _ => Err(VfsError::NotSymlink),
        }
    }

    /// The entries of a directory, `.` and `..` first.
    pub fn list(&self, ino: u64) -> Result<Vec<DirEntry>, VfsError> {
        let mut tree = self.tree();
        if Self::is_dynamic(&tree, ino) {
            self.ensure_fresh();
            tree = self.tree();
        }
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        let NodeKind::Dir { children, .. } = &n.kind else {
            return Err(VfsError::NotDir);
        };
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: n.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        for (name, c) in children {
            let Some(cn) = tree.nodes.get(c) else {
                continue;
            };
            let kind = match cn.kind {
                NodeKind::Dir { .. } => Kind::Dir,
                NodeKind::Symlink(_) => Kind::Symlink,
                _ => Kind::File,
            };
            out.push(DirEntry {
                ino: *c,
                kind,
                name: name.clone(),
            });
        }
        Ok(out)
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut hs) = self.handles.write() {
            hs.insert(fh, Arc::new(h));
        }
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, VfsError> {
        self.handles
            .read()
            .map_err(|_| VfsError::Internal("handle table lock poisoned".into()))?
            .get(&fh)
            .cloned()
            .ok_or(VfsError::BadHandle(fh))
    }

    /// Opens a directory: its listing is taken now, so that a listing read
    /// in several calls is consistent.
    pub fn opendir(&self, ino: u64) -> Result<u64, VfsError> {
        let entries = self.list(ino)?;
        Ok(self.new_handle(Handle::Dir(Arc::new(entries))))
    }

    /// Entries of an open directory from position `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>, VfsError> {
        match &*self.handle(fh)? {
            Handle::Dir(e) => Ok(e.iter().skip(offset as usize).cloned().collect()),
            _ => Err(VfsError::NotDir),
        }
    }

    /// Whether `ino` is generated content (a manifest or the status file),
    /// served from memory.
    pub fn is_generated(&self, ino: u64) -> bool {
        matches!(
            self.tree().nodes.get(&ino).map(|n| &n.kind),
            Some(NodeKind::Bytes(_) | NodeKind::Status)
        )
    }

    /// Whether reads of open file `fh` are served from memory.
    pub fn is_memory_handle(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| matches!(*h, Handle::Bytes(_) | Handle::Dir(_)))
    }

    /// Opens a file. `write` is whether write access was asked for.
    pub fn open(&self, ino: u64, write: bool) -> Result<Opened, VfsError> {
        if write {
            return Err(VfsError::ReadOnly);
        }
        let tree = self.tree();
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        self.stats.opens.fetch_add(1, Ordering::Relaxed);
        match &n.kind {
            NodeKind::Dir { .. } => Err(VfsError::IsDir),
            NodeKind::Symlink(_) => Err(VfsError::NotFound),
            NodeKind::Bytes(b) => Ok(Opened {
                fh: self.new_handle(Handle::Bytes(b.clone())),
                keep_cache: true,
                direct_io: false,
            }),
            NodeKind::Status => Ok(Opened {
                fh: self.new_handle(Handle::Bytes(Arc::new(self.status_json()))),
                keep_cache: false,
                direct_io: true,
            }),
            NodeKind::File(f) => {
                let reader = self.reader_for(f)?;
                Ok(Opened {
                    fh: self.new_handle(Handle::File {
                        node: f.clone(),
                        reader,
                        ra: Mutex::new(ReadAhead::default()),
                    }),
                    keep_cache: true,
                    direct_io: false,
                })
            }
        }
    }

    /// The chunk layout of a file, loaded on the fetch pool with the read
    /// timeout (a chunk list is read from the repository too).
    fn reader_for(&self, f: &Arc<FileNode>) -> Result<Arc<FileReader>, VfsError> {
        let key = (f.snap, f.idx);
        if let Some(r) = self.readers.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(r);
        }
        let repo = self.repo().clone();
        let node = f.clone();
        let what = format!("the chunk list of {}", f.entry().path);
        let what2 = what.clone();
        let deadline = Instant::now() + self.opts.read_timeout;
        let r = run_with_deadline(&self.fetcher.pool, deadline, &what, move || {
            let r = repo
                .file_reader(node.entry())
                .map_err(|e| VfsError::repo(what2.clone(), e))?;
            // The chunk list must add up to the whole-file checksum the
            // manifest recorded: this binds what we serve to what was
            // captured, before a byte is read.
            let mut sum = DbChecksum::default();
            for (c, off) in r.chunks.iter().zip(&r.offsets) {
                sum.add(*off, &c.id);
            }
            if sum.to_hex() != node.entry().db_checksum {
                return Err(VfsError::repo(
                    what2,
                    snapback_core::Error::corrupt(
                        format!("chunk list of {}", node.entry().path),
                        "its checksum does not match the manifest's",
                    ),
                ));
            }
            Ok(Arc::new(r))
        });
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                return Err(self.gone_or(f, e));
            }
        };
        if let Ok(mut m) = self.readers.lock() {
            if m.len() >= READER_CACHE {
                // Open handles keep their own reference; drop the map.
                m.clear();
            }
            m.insert(key, r.clone());
        }
        Ok(r)
    }

    pub fn release(&self, fh: u64) {
        if let Ok(mut hs) = self.handles.write() {
            hs.remove(&fh);
        }
    }

    /// Reads up to `size` bytes at `offset` of an open file. The bytes are
    /// verified chunk by chunk; any failure fails the whole read.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, VfsError> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let r = match &*self.handle(fh)? {
            Handle::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b[start..end].to_vec())
            }
            Handle::Dir(_) => Err(VfsError::IsDir),
            Handle::File { node, reader, ra } => self.read_file(node, reader, ra, offset, size),
        };
        match &r {
            Ok(d) => {
                self.stats
                    .read_bytes
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                // Rate-limited: one WARN per failed read made 7.6 MB of log
                // in 30 s of a failing backend.
                if let Some(suppressed) = self.read_warnings.allow() {
                    tracing::warn!(fh, offset, size, error = %e, suppressed, "read failed (EIO); suppressed counts the failed reads not logged since the last warning");
                }
            }
        }
        r
    }

    /// `e`, or "forgotten/pruned while mounted" when the data is missing
    /// because the snapshot's manifest is gone too: a snapshot forgotten
    /// and pruned under the mount, not a damaged repository.
    fn gone_or(&self, node: &FileNode, e: VfsError) -> VfsError {
        if !e.is_missing_data() {
            return e;
        }
        match self
            .repo()
            .store()
            .stat(&snapback_core::layout::snapshot_key(&node.snap))
        {
            Ok(None) => VfsError::SnapshotGone {
                snapshot: node.snap.short(),
            },
            _ => e,
        }
    }

    fn read_file(
        &self,
        node: &FileNode,
        reader: &Arc<FileReader>,
        ra: &Mutex<ReadAhead>,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, VfsError> {
        let fsize = reader.size();
        if offset >= fsize || size == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(size as u64).min(fsize);
        let (Some(first), Some(last)) = (reader.chunk_at(offset), reader.chunk_at(end - 1)) else {
            return Ok(Vec::new());
        };
        let ids: Vec<Id> = reader.chunks[first..=last].iter().map(|c| c.id).collect();
        // A scan: this read starts at or a little after where the previous
        // one ended. Random reads (B-tree descents of point lookups) would
        // mostly waste what a window brings along.
        let scanning = ra.lock().is_ok_and(|r| {
            r.next != 0 && offset >= r.next && offset - r.next <= self.opts.fetch_window
        });
        self.read_ahead(reader, ra, offset, end);
        // The chunks after the read, up to the fetch window, may come along
        // in the same range reads.
        let mut around = Vec::new();
        if scanning || self.opts.fetch_window_always {
            let mut span = 0u64;
            for c in reader.chunks.iter().skip(last + 1) {
                span += c.len as u64;
                if span > self.opts.fetch_window {
                    break;
                }
                around.push(c.id);
            }
        }
        let deadline = Instant::now() + self.opts.read_timeout;
        let datas = self
            .fetcher
            .get_many(&reader.index, &ids, &around, deadline)
            .map_err(|e| match e {
                VfsError::TimedOut { secs, .. } => VfsError::TimedOut {
                    what: format!("{} at offset {offset}", node.entry().path),
                    secs,
                },
                other => self.gone_or(node, other),
            })?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (k, d) in datas.iter().enumerate() {
            let i = first + k;
            let cstart = reader.offsets[i];
            let clen = reader.chunks[i].len as u64;
            if d.len() as u64 != clen {
                return Err(VfsError::Internal(format!(
                    "chunk {} of {} has {} bytes, its chunk list says {clen}",
                    reader.chunks[i].id.short(),
                    node.entry().path,
                    d.len()
                )));
            }
            let from = (offset.max(cstart) - cstart) as usize;
            let to = (end.min(cstart + clen) - cstart) as usize;
            out.extend_from_slice(&d[from..to]);
        }
        if node.is_sqlite() {
            patch_wal_header(&mut out, offset);
        }
        Ok(out)
    }

    /// Sequential reads widen a prefetch window ahead of the reader (from
    /// `readahead_initial`, doubling up to `readahead_max`); a seek resets it.
    fn read_ahead(&self, reader: &Arc<FileReader>, ra: &Mutex<ReadAhead>, offset: u64, end: u64) {
        let Ok(mut ra) = ra.lock() else { return };
        if offset == ra.next && offset != 0 {
            ra.window = if ra.window == 0 {
                self.opts.readahead_initial
            } else {
                (ra.window * 2).min(self.opts.readahead_max)
            };
        } else {
            ra.window = 0;
            ra.prefetched_to = 0;
        }
        ra.next = end;
        if ra.window == 0 || self.opts.readahead_max == 0 {
            return;
        }
        let target = end.saturating_add(ra.window).min(reader.size());
        let start = end.max(ra.prefetched_to);
        if target <= start {
            return;
        }
        ra.prefetched_to = target;
        drop(ra);
        let (Some(a), Some(b)) = (reader.chunk_at(start), reader.chunk_at(target - 1)) else {
            return;
        };
        let ids: Vec<Id> = reader.chunks[a..=b].iter().map(|c| c.id).collect();
        self.fetcher.prefetch(&reader.index, &ids);
    }

    /// The content of `.snapback-status.json`.
    pub fn status_json(&self) -> Vec<u8> {
        let (age, err, n) = self
            .listing
            .state
            .lock()
            .map(|s| (s.at.elapsed().as_secs(), s.last_error.clone(), s.snapshots))
            .unwrap_or((0, Some("lock poisoned".into()), 0));
        let f = &self.fetcher.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let v = json!({
            "repository": self.repo().store().location(),
            "view": match &self.view { View::All => "all".to_string(), View::One(s) => s.id.to_hex() },
            "snapshots": n,
            "refresh_age_secs": age,
            "refresh_error": err,
            "reads": l(&self.stats.reads),
            "read_bytes": l(&self.stats.read_bytes),
            "read_errors": l(&self.stats.read_errors),
            "opens": l(&self.stats.opens),
            "chunk_mem_hits": l(&f.mem_hits),
            "chunk_disk_hits": l(&f.disk_hits),
            "chunk_fetches": l(&f.fetches),
            "chunks_fetched": l(&f.chunks_fetched),
            "chunk_fetched_bytes": l(&f.fetched_bytes),
            "chunk_fetch_errors": l(&f.fetch_errors),
            "chunk_timeouts": l(&f.timeouts),
            "chunk_prefetches": l(&f.prefetches),
            "mem_cache_bytes": self.fetcher.mem_bytes(),
            "disk_cache_bytes": self.fetcher.disk_bytes(),
            "disk_cache_corrupt_entries": self.fetcher.disk_corrupt_entries(),
        });
        let mut out = serde_json::to_vec_pretty(&v).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        out
    }

    /// "12 snapshots" or "snapshot abcd1234", for the systemd status line.
    pub fn status_summary(&self) -> String {
        match &self.view {
            View::One(s) => format!("snapshot {}", s.id.short()),
            View::All => format!(
                "{} snapshot(s)",
                self.listing.state.lock().map(|s| s.snapshots).unwrap_or(0)
            ),
        }
    }

    /// Resolves a path relative to the root (tests and the health check).
    pub fn resolve(&self, path: &str) -> Result<Entry, VfsError> {
        let mut e = self.getattr(ROOT_INO)?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            e = self.lookup(e.attr.ino, c)?;
        }
        Ok(e)
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

/// A WAL-mode database (header bytes 18 and 19 both 2) cannot be opened on a
/// read-only mount: SQLite needs a -shm file it cannot create. Serving those
/// two bytes as 1 (rollback journal) makes the image open read-only with no
/// side files. The file is a consistent image (the capture read it in one
/// transaction), so nothing in a -wal file is missing.
fn patch_wal_header(buf: &mut [u8], offset: u64) {
    for pos in [18u64, 19] {
        if pos >= offset && pos < offset + buf.len() as u64 {
            let b = &mut buf[(pos - offset) as usize];
            if *b == 2 {
                *b = 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
