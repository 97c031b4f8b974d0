//! Taking a snapshot.
//!
//! The order of writes is the commit protocol:
//! 1. packs (each verified: its chunks were decompressed and re-hashed before
//!    sealing; each upload is confirmed present with its size);
//! 2. a last look: every blob the snapshot references, new or reused from
//!    earlier snapshots, is in the repository's current index or in a pack
//!    it just wrote, in a pack that exists (a prune that took this
//!    snapshot's lock for stale could have deleted one; then nothing is
//!    committed and the error says so);
//! 3. one index object for the new packs, confirmed like the packs;
//! 4. the manifest, last. Until it exists, nothing refers to the new data,
//!    and a crash leaves only unreferenced packs that `prune` removes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use snapback_storage::{PutOutcome, Store};
use time::OffsetDateTime;

use crate::blob_set::BlobSet;
use crate::capture_state::{self, CaptureState, StateLock, StatePaths};
use crate::chunklist::{self, ChunkRef, PART_LEN};
use crate::dict::Dict;
use crate::error::{Error, FailedFile, Result, SourceProblem};
use crate::id::{DbChecksum, Id, IdSet};
use crate::index::{encode_index, IndexedPack, MasterIndex};
use crate::layout::{index_key, pack_key, snapshot_key};
use crate::manifest::{
    CaptureMethod, ChunkListRef, Chunking, DictUse, FileEntry, FileKind, Manifest, SnapshotStats,
    SqliteFacts,
};
use crate::new_index::NewIndex;
use crate::object::put_verified;
use crate::pack::{seal_blob, BlobCodec, BlobKind, PackBuilder};
use crate::repo::Repository;
use crate::selector::Snapshot;
use crate::sqlite::{has_sqlite_header, journal_mode_of_header, Capture};
use crate::Progress;

#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub tags: Vec<String>,
    /// How long to wait for another process's lock on a database (a
    /// writer, `BEGIN EXCLUSIVE`), per database; the wait is logged. A
    /// database still locked then is left out (see `SnapshotReport::failed`).
    pub busy_timeout: Duration,
    /// Uploads in flight at once.
    pub upload_threads: usize,
    /// How long to wait for an exclusive lock (a prune) to go.
    pub lock_wait: Duration,
    /// Where the local capture state lives (`$XDG_STATE_HOME/snapback`):
    /// with it, a database in a format-2 repository is captured by reading
    /// only the pages written since its previous capture (`delta`). `None`:
    /// every capture is a full scan.
    pub state_dir: Option<PathBuf>,
    /// Set by `snapback watch` only: the id of a session in which the caller
    /// has held a read transaction on each database continuously, handed
    /// over before every capture (`watch::Pin`). A capture whose state was
    /// written in the same session may continue across a WAL restart
    /// instead of falling back to a full scan (docs/watch.md).
    pub pin_session: Option<String>,
    /// Set by the in-place restore only: the path, in the repository, of
    /// the database that the one captured is about to be made into. A
    /// database with no capture of its own yet then compresses with that
    /// database's dictionary (chosen as its own would be) instead of
    /// training one on its pages, which were mostly that database's.
    pub dict_from: Option<String>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            tags: vec![],
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            upload_threads: 4,
            lock_wait: Duration::from_secs(300),
            state_dir: None,
            pin_session: None,
            dict_from: None,
        }
    }
}

/// The default of `SnapshotOptions::busy_timeout` (`--busy-timeout`).
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub id: Id,
    pub manifest: Manifest,
    /// Files that could not be snapshotted, and why; the snapshot holds
    /// every other file. Empty when it holds them all.
    pub failed: Vec<FailedFile>,
}

impl FailedFile {
    /// The file an error is about, when the error is about that one file
    /// (it cannot be read or captured) rather than the repository.
    fn from_error(path: &Path, e: &Error) -> Option<FailedFile> {
        let (problem, reason) = match e {
            Error::Source {
                problem, message, ..
            } => (*problem, message.clone()),
            Error::Sqlite { message, cause, .. } => {
                (SourceProblem::Unreadable, format!("{message}: {cause}"))
            }
            Error::Io { message, cause, .. } => {
                (SourceProblem::Unreadable, format!("{message}: {cause}"))
            }
            Error::Input { message, .. } => (SourceProblem::Unreadable, message.clone()),
            _ => return None,
        };
        Some(FailedFile {
            path: path.to_string_lossy().into_owned(),
            problem,
            reason,
        })
    }
}

/// What the capture of one database read, kept for the caller of
/// `snapshot_keeping_images` (an in-place restore, whose compare is the
/// read of its pre-restore snapshot): the whole chunk list of the image,
/// its page 1, and where the WAL stood before the read transaction began.
#[derive(Debug, Clone)]
pub(crate) struct CapturedImage {
    pub path: String,
    pub page_size: u32,
    pub page_count: u64,
    /// Page 1 whole, as the read transaction saw it.
    pub page1: Vec<u8>,
    /// In the snapshot's chunking.
    pub refs: Vec<ChunkRef>,
    pub before: crate::delta::Before,
    /// A WAL position the image is known to include (WAL mode).
    pub position: Option<crate::delta::Position>,
}

/// A file to capture.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    sqlite: bool,
}

/// Expands the given paths into the files to capture. Directories are taken
/// recursively. A SQLite database is recognised by its header; its `-wal`,
/// `-shm` and `-journal` files are never captured as files of their own.
/// A file that cannot even be read for its header is returned in the third
/// list, not captured.
fn collect_sources(paths: &[PathBuf]) -> Result<(Vec<String>, Vec<Source>, Vec<FailedFile>)> {
    let mut roots = Vec::new();
    let mut files = Vec::new();
    let mut lost = NotPreserved::default();
    for p in paths {
        let abs = std::fs::canonicalize(p).map_err(|e| {
            Error::io(
                p,
                "cannot snapshot this path (check that it exists and is readable)",
                e,
            )
        })?;
        roots.push(abs.to_string_lossy().into_owned());
        walk(&abs, &mut files, &mut lost)?;
    }
    files.sort();
    files.dedup();
    lost.warn(&files);
    let mut sources = Vec::new();
    let mut failed = Vec::new();
    for f in &files {
        match has_sqlite_header(f) {
            Ok(sqlite) => sources.push(Source {
                path: f.clone(),
                sqlite,
            }),
            Err(e) => failed.push(FailedFile {
                path: f.to_string_lossy().into_owned(),
                problem: SourceProblem::Unreadable,
                reason: format!("cannot be read: {e}"),
            }),
        }
    }
    let dbs: HashSet<PathBuf> = sources
        .iter()
        .filter(|s| s.sqlite)
        .map(|s| s.path.clone())
        .collect();
    sources.retain(|s| {
        let name = s.path.to_string_lossy();
        for suffix in ["-wal", "-shm", "-journal"] {
            if let Some(base) = name.strip_suffix(suffix) {
                let base = PathBuf::from(base);
                if dbs.contains(&base) || has_sqlite_header(&base).unwrap_or(false) {
                    tracing::debug!(path = %s.path.display(), "skipping a SQLite side file; its database is captured through SQLite");
                    return false;
                }
            }
        }
        true
    });
    Ok((roots, sources, failed))
}

/// What format 1 does not keep of a directory tree: its manifests list
/// regular files only, each with its own content and mode.
#[derive(Debug, Default)]
struct NotPreserved {
    /// Directories with no regular file anywhere below them.
    empty_dirs: usize,
    /// Directories whose permission bits are not 0755 (restore and the
    /// mount give every directory 0755).
    dir_modes: Vec<u32>,
}

impl NotPreserved {
    /// One warning line for what the snapshot of `files` will not keep,
    /// hard links included (each name is stored, and restores, as its own
    /// file).
    fn warn(&self, files: &[PathBuf]) {
        use std::os::unix::fs::MetadataExt;
        let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
        for f in files {
            if let Ok(m) = std::fs::symlink_metadata(f) {
                if m.nlink() > 1 {
                    *inodes.entry((m.dev(), m.ino())).or_default() += 1;
                }
            }
        }
        let linked: Vec<usize> = inodes.into_values().filter(|&n| n > 1).collect();
        let mut parts = Vec::new();
        if self.empty_dirs > 0 {
            parts.push(format!(
                "{} empty director{}",
                self.empty_dirs,
                if self.empty_dirs == 1 { "y" } else { "ies" }
            ));
        }
        if !self.dir_modes.is_empty() {
            let mut modes: Vec<String> =
                self.dir_modes.iter().map(|m| format!("{m:04o}")).collect();
            modes.sort();
            modes.dedup();
            parts.push(format!(
                "{} director{} with a mode other than 0755 ({}; they restore as 0755)",
                self.dir_modes.len(),
                if self.dir_modes.len() == 1 {
                    "y"
                } else {
                    "ies"
                },
                modes.join(", ")
            ));
        }
        if !linked.is_empty() {
            parts.push(format!(
                "{} hard-linked file(s) with {} names (each name restores as a separate file with the same content)",
                linked.len(),
                linked.iter().sum::<usize>()
            ));
        }
        if !parts.is_empty() {
            tracing::warn!(
                "not preserved in format 1: {}; every regular file's content and mode is captured",
                parts.join(", ")
            );
        }
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>, lost: &mut NotPreserved) -> Result<()> {
    let meta = std::fs::symlink_metadata(p).map_err(|e| Error::io(p, "cannot stat", e))?;
    let ft = meta.file_type();
    if ft.is_file() {
        if p.to_str().is_none() {
            // Manifests hold paths as UTF-8 text: a lossy conversion would
            // give two such files one name, and restore would write one
            // over the other. Refuse before anything is written.
            use std::os::unix::ffi::OsStrExt;
            return Err(Error::Input {
                path: p.into(),
                message: format!(
                    "its name is not valid UTF-8 (bytes: {}), and snapback stores names as UTF-8; rename it (e.g. `convmv` or `mv`), or snapshot the other files without it",
                    p.as_os_str()
                        .as_bytes()
                        .escape_ascii()
                ),
            });
        }
        out.push(p.to_path_buf());
    } else if ft.is_dir() {
        let mut ents: Vec<_> = std::fs::read_dir(p)
            .map_err(|e| Error::io(p, "cannot list directory", e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(p, "cannot list directory", e))?;
        ents.sort_by_key(|e| e.file_name());
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode != 0o755 {
            lost.dir_modes.push(mode);
        }
        let before = out.len();
        for e in ents {
            walk(&e.path(), out, lost)?;
        }
        // No regular file anywhere below: restore cannot recreate it (each
        // directory of a tree of empty ones counts).
        if out.len() == before {
            lost.empty_dirs += 1;
        }
    } else {
        tracing::warn!(path = %p.display(), "skipping: not a regular file or directory (symlinks, sockets and devices are not captured)");
    }
    Ok(())
}

/// Collects blobs into packs and uploads them on a few threads.
struct BlobSink<'a> {
    index: &'a MasterIndex,
    /// Every blob the manifest will reference, new or already stored (and
    /// so every blob queued: one set of ids per snapshot, not two), in a
    /// compact set (`BlobSet`: about 13 bytes a blob in memory, the whole
    /// ids in a temporary file; a table of whole ids took 32, a hash set
    /// 38 to 75).
    referenced: BlobSet,
    /// Blobs referenced without a claim (an unchanged file's, a base chunk
    /// list's) that were not in the index when first referenced: the
    /// check before commit looks them up again (normally none).
    unindexed_reused: Vec<Id>,
    /// How many blobs `claim` gave to this snapshot to store: the check
    /// before commit counts them in the new packs.
    claimed: u64,
    /// Snapshots whose database images are reused whole (unchanged files).
    reused_from: HashSet<Id>,
    /// The chunk lists of WAL-delta images: their blobs are referenced
    /// too, checked where they are listed rather than copied into
    /// `referenced` (one set entry per page of the database, when only a
    /// few pages are new).
    images: Vec<DeltaImage>,
    pack: PackBuilder,
    /// The buffers of packs stored, handed back by the upload threads for
    /// the next packs (a bounded pool: the pipeline's packs in flight).
    recycled: Receiver<Vec<u8>>,
    codec: &'a BlobCodec,
    pack_target: usize,
    tx: Option<SyncSender<PackBuilder>>,
    /// Every upload thread has stopped (on an error of its own, which is
    /// the one to report).
    uploads_stopped: bool,
    stats: &'a Mutex<SnapshotStats>,
    /// Capture states to save once the manifest is committed (each with
    /// its lock, held until then).
    states: Vec<PendingState>,
    /// Base chunk lists already read (by their part ids), so that a delta's
    /// base is not read twice.
    bases: Vec<(Vec<Id>, Vec<ChunkRef>)>,
    /// The dictionary new data blobs are compressed with now (the database
    /// being captured's), and what it did: raw and stored bytes, blobs.
    dict: Option<std::sync::Arc<Dict>>,
    dict_tally: (u64, u64, u64),
    /// The images the databases' captures read, when the caller keeps
    /// them (`snapshot_keeping_images`).
    kept: Option<Vec<CapturedImage>>,
    /// A dictionary being trained on a thread of its own (`begin_dict`)
    /// while the capture reads and hashes the first pages; it becomes
    /// `dict` before the first page is compressed (`settle_dict`).
    training: Option<Training>,
}

/// A dictionary in training: its thread, and what the log says of it.
struct Training {
    handle: std::thread::JoinHandle<Result<Dict>>,
    path: String,
    sample_pages: usize,
    started: Instant,
}

impl BlobSink<'_> {
    /// True while a dictionary is still being trained.
    fn training_running(&self) -> bool {
        self.training
            .as_ref()
            .is_some_and(|t| !t.handle.is_finished())
    }
}

/// The pages a full scan reads, hashes and seals at a time. Every batch
/// in the pipeline (read ahead, queued, being sealed, waiting for reuse)
/// is a buffer of this size: 8 MiB held about twice the memory for no
/// measured gain in speed.
const SCAN_BATCH_BYTES: usize = 4 << 20;

/// At most this many batches of a full scan (`SCAN_BATCH_BYTES` each) are
/// read and hashed ahead while the database's dictionary is trained,
/// before the capture waits for it: the training then overlaps the
/// reading and hashing instead of preceding them, for a bounded 32 MiB.
const MAX_BATCHES_AHEAD_OF_TRAINING: usize = 8;

/// A batch read and hashed ahead of the training: its bytes, chunk bounds,
/// ids and the indexes of its new chunks.
type HeldBatch = (Vec<u8>, Vec<(usize, usize)>, Vec<Id>, Vec<usize>);

/// What a delta capture of one database starts from.
struct DeltaInput<'a> {
    path: &'a Path,
    path_s: &'a str,
    meta: &'a std::fs::Metadata,
    fingerprint: Option<crate::fingerprint::DbFingerprint>,
    state: &'a CaptureState,
    changed: &'a crate::delta::Changed,
    before: &'a crate::delta::Before,
}

/// What the capture of a snapshot's sources produced, before its index
/// and manifest are written.
struct Captured {
    files: Vec<FileEntry>,
    /// Every blob the manifest references.
    referenced: BlobSet,
    /// See `BlobSink::unindexed_reused`.
    unindexed_reused: Vec<Id>,
    /// See `BlobSink::claimed`.
    claimed: u64,
    /// Snapshots whose database images are reused whole.
    reused_from: HashSet<Id>,
    /// WAL-delta images, whose blobs the manifest references too.
    images: Vec<DeltaImage>,
    /// The local capture states to save once the manifest is committed.
    pending: Vec<PendingState>,
    /// The packs uploaded and their index objects, encoded but the last.
    new_index: NewIndex,
    stats: SnapshotStats,
    /// What the databases' captures read, when kept.
    kept: Vec<CapturedImage>,
}

/// The chunk list of a WAL-delta image, and the packs that `index` (the
/// snapshot's) gave for its unchanged blobs when the capture began.
struct DeltaImage {
    list: Vec<ChunkRef>,
    packs: Vec<Id>,
}

/// The image a capture state describes: the base chunk list it patches
/// (and that base's part ids), its chunk list, and the packs the index
/// gives for its blobs (every one is indexed).
pub(crate) struct StateImage {
    pub(crate) parts: Vec<Id>,
    pub(crate) base: Vec<ChunkRef>,
    pub(crate) list: Vec<ChunkRef>,
    pub(crate) packs: Vec<Id>,
}

struct PendingState {
    paths: StatePaths,
    state: CaptureState,
    _lock: StateLock,
}

impl BlobSink<'_> {
    /// True if the blob is neither in the repository nor already queued.
    /// A blob referenced before was either claimed then (and queued) or is
    /// indexed: the blobs referenced without a claim (an unchanged file's,
    /// a delta's unchanged pages, a base chunk list) are the repository's.
    fn claim(&mut self, id: &Id) -> Result<bool> {
        let new = self.referenced.insert(*id)? && !self.index.contains(id);
        self.claimed += u64::from(new);
        Ok(new)
    }

    /// References blobs that are the repository's already, without
    /// claiming them; one that is not indexed is noted for the check
    /// before commit (which then fails unless the index has it by then).
    fn reference(&mut self, ids: impl IntoIterator<Item = Id>) -> Result<()> {
        for id in ids {
            if self.referenced.insert(id)? && !self.index.contains(&id) {
                self.unindexed_reused.push(id);
            }
        }
        Ok(())
    }

    fn add_sealed(
        &mut self,
        kind: BlobKind,
        id: Id,
        stored: &[u8],
        raw_len: u32,
        dict: Option<Id>,
    ) -> Result<()> {
        if !self.pack.has_room_for(dict.as_ref()) {
            self.flush()?;
        }
        self.pack.add(kind, id, stored, raw_len, dict)?;
        if self.pack.size() >= self.pack_target {
            self.flush()?;
        }
        Ok(())
    }

    fn add_raw(&mut self, kind: BlobKind, raw: &[u8]) -> Result<Id> {
        let id = self.codec.blob_id(raw);
        if self.claim(&id)? {
            let stored = seal_blob(self.codec, &id, raw, None)?;
            if let Ok(mut s) = self.stats.lock() {
                s.bytes_new += raw.len() as u64;
            }
            self.add_sealed(kind, id, &stored, raw.len() as u32, None)?;
        }
        Ok(id)
    }

    fn flush(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let next = PackBuilder::with_buffer(self.recycled.try_recv().unwrap_or_default());
        let pack = std::mem::replace(&mut self.pack, next);
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::internal("upload queue closed"))?;
        tx.send(pack).map_err(|_| {
            self.uploads_stopped = true;
            Error::internal("the upload threads stopped")
        })
    }
}

/// What `read_full_scan` read: the capture back, the file's SHA-256 (a
/// format-1 repository's manifests need it; format 2's are proven by the
/// chunk list and `db_checksum`, so none is computed), the chunk list and
/// the file's first 100 bytes.
type ScanRead = (Capture, Option<[u8; 32]>, ScanList, Vec<u8>);

/// A full scan's chunk list: whole, or already stored as base parts.
enum ScanList {
    Whole(Vec<ChunkRef>),
    /// Stored part by part as the scan read it (`PartWriter`), so that
    /// at most a part's entries were held: the list and its checksum.
    Stored {
        chunks: ChunkListRef,
        sum: DbChecksum,
    },
}

/// Stores a chunk list as base parts while it grows: each part of
/// `PART_LEN` entries is encoded and queued as soon as it is complete,
/// and the list's checksum is summed part by part, so that a full scan
/// of a large database holds a part of its list, not all of it (36 bytes
/// a page).
#[derive(Default)]
struct PartWriter {
    parts: Vec<Id>,
    count: u64,
    sum: u128,
    offset: u64,
}

impl PartWriter {
    /// Stores the complete parts at the front of `refs` (every entry, when
    /// `last`) and removes them from it.
    fn store(&mut self, sink: &mut BlobSink, refs: &mut Vec<ChunkRef>, last: bool) -> Result<()> {
        let mut done = 0;
        while refs.len() - done >= PART_LEN || (last && done < refs.len()) {
            let part = &refs[done..(done + PART_LEN).min(refs.len())];
            for r in part {
                self.sum = self.sum.wrapping_add(DbChecksum::term(self.offset, &r.id));
                self.offset += r.len as u64;
            }
            self.count += part.len() as u64;
            let encoded = chunklist::encode_part(part);
            done += part.len();
            self.parts
                .push(sink.add_raw(BlobKind::ChunkList, &encoded)?);
        }
        refs.drain(..done);
        Ok(())
    }

    fn finish(self) -> ScanList {
        ScanList::Stored {
            chunks: ChunkListRef {
                count: self.count,
                base: self.parts,
                patch: None,
            },
            sum: DbChecksum(self.sum),
        }
    }
}

/// The base parts of the newest earlier list of `path` in `chunking`,
/// which a new list is stored as a patch on where that is small.
fn parent_base(path: &str, chunking: Chunking, history: &[Snapshot]) -> Option<Vec<Id>> {
    history.iter().rev().find_map(|s| {
        s.file(path)
            .filter(|f| f.chunking == chunking && !f.chunks.base.is_empty())
            .map(|f| f.chunks.base.clone())
    })
}

/// What `delta_over_prior` found: the delta (or why not) and the
/// wal-index header of before the transaction.
type DeltaOverPrior = (
    std::result::Result<(CaptureState, StateImage, crate::delta::Changed), String>,
    Option<crate::delta::Before>,
);

/// The prior capture's state and base with the pages changed since, when
/// this capture can be a delta over it, or why not; and the wal-index
/// header read before the transaction began, when it is of this same file.
fn delta_over_prior(
    path: &Path,
    cap: &Capture,
    opts: &SnapshotOptions,
    prior: std::result::Result<(CaptureState, StateImage), String>,
    before: Option<crate::delta::Before>,
) -> Result<DeltaOverPrior> {
    let page_size = cap.page_size;
    // The file is only stat'ed here, never opened: closing a descriptor
    // of it would drop the read transaction's POSIX locks.
    let same_file = std::fs::metadata(path).ok().map(|m| {
        (
            std::os::unix::fs::MetadataExt::dev(&m),
            std::os::unix::fs::MetadataExt::ino(&m),
        )
    });
    let (prior, before) = match before {
        Some(b) if same_file == Some((b.dev, b.ino)) => (prior, Some(b)),
        Some(_) => (
            Err("the database file was replaced while the capture began".to_string()),
            None,
        ),
        None => (prior, None),
    };
    // The journal mode of this transaction's image (header bytes 18/19).
    let mut wal_mode = false;
    if before.is_some() {
        cap.read_listed(&[1], 1, |_, page1| {
            wal_mode = journal_mode_of_header(&page1) == "wal";
            Ok(())
        })?;
    }
    let delta = prior.and_then(|(state, base)| {
        let b = before.as_ref().ok_or("the database file was replaced")?;
        let continuation = opts.pin_session.is_some() && state.session == opts.pin_session;
        let c = crate::delta::changed_pages(
            path,
            b,
            wal_mode,
            &state,
            page_size,
            cap.page_count,
            continuation,
        )?;
        let limit = (cap.page_count / 4).max(256);
        if c.pages.len() as u64 > limit {
            return Err(format!(
                "{} of {} pages changed since the previous capture (more than a quarter: a full scan reads them faster)",
                c.pages.len(),
                cap.page_count
            ));
        }
        Ok((state, base, c))
    });
    Ok((delta, before))
}

fn upload_worker(
    store: &dyn Store,
    codec: &BlobCodec,
    rx: &Mutex<Receiver<PackBuilder>>,
    done: &Mutex<NewIndex>,
    stats: &Mutex<SnapshotStats>,
    back: &SyncSender<Vec<u8>>,
) -> Result<()> {
    loop {
        let next = rx
            .lock()
            .map_err(|_| Error::internal("upload queue poisoned"))?
            .recv();
        let Ok(pack) = next else { return Ok(()) };
        let (bytes, id, entries) = pack.finish(codec)?;
        let key = pack_key(&id);
        let outcome = put_verified(store, &key, &bytes)?;
        tracing::info!(pack = %id.short(), bytes = bytes.len(), blobs = entries.len(), created = (outcome == PutOutcome::Created), "pack stored");
        if let Ok(mut s) = stats.lock() {
            if outcome == PutOutcome::Created {
                s.bytes_added += bytes.len() as u64;
                s.objects_written += 1;
            }
        }
        let size = bytes.len() as u64;
        // The buffer goes back to the capture for a next pack (dropped
        // when the pool is full or the capture is over).
        let _ = back.try_send(bytes);
        let poisoned = || Error::internal("upload results poisoned");
        let full = done
            .lock()
            .map_err(|_| poisoned())?
            .add(IndexedPack { id, size, entries });
        // A full index object is encoded here, outside the lock, while
        // the capture goes on; it waits in a temporary file for the commit.
        if let Some(group) = full {
            let encoded = encode_index(&group)?;
            drop(group);
            done.lock()
                .map_err(|_| poisoned())?
                .store_encoded(encoded)?;
        }
    }
}

/// Hashes one batch of chunks (in parallel), appends them to `refs` and
/// claims the new ones: returns the batch's ids and the indexes of the
/// chunks to seal.
fn identify(
    sink: &mut BlobSink,
    data: &[u8],
    bounds: &[(usize, usize)],
    refs: &mut Vec<ChunkRef>,
) -> Result<(Vec<Id>, Vec<usize>)> {
    let ids: Vec<Id> = bounds
        .par_iter()
        .map(|&(a, b)| sink.codec.blob_id(&data[a..b]))
        .collect();
    let mut new = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (a, b) = bounds[i];
        refs.push(ChunkRef {
            id: *id,
            len: (b - a) as u32,
        });
        if sink.claim(id)? {
            new.push(i);
        }
    }
    let mut s = sink
        .stats
        .lock()
        .map_err(|_| Error::internal("stats poisoned"))?;
    s.chunks += ids.len() as u64;
    s.bytes_read += data.len() as u64;
    Ok((ids, new))
}

/// The manifest's `time`: an instant after which nothing in any image was
/// written, so that `@T` never selects an image holding a transaction
/// committed after T. For databases that is the moment the newest read
/// transaction began (`sqlite.captured_at`); a plain file has no
/// transaction, so a snapshot holding one takes the end of the capture.
/// `none` is used for a snapshot without files.
fn image_time(files: &[FileEntry], none: OffsetDateTime) -> OffsetDateTime {
    let mut newest: Option<OffsetDateTime> = None;
    for f in files {
        let at = f
            .sqlite
            .as_ref()
            .and_then(|s| crate::time::parse_rfc3339(&s.captured_at).ok());
        match at {
            Some(t) => newest = Some(newest.map_or(t, |n| n.max(t))),
            None => return crate::time::now(),
        }
    }
    newest.unwrap_or(none)
}

impl Repository {
    /// Takes a snapshot of `paths` and commits it. Returns only after the
    /// manifest is stored and verified.
    pub fn snapshot(
        &self,
        paths: &[PathBuf],
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        self.snapshot_keeping_images(paths, opts, progress, false)
            .map(|(r, _)| r)
    }

    /// `snapshot`, also returning, when `keep` is set, what each database's
    /// capture read (see `CapturedImage`; none for a database reused whole
    /// from its parent snapshot, or replaced while its capture began).
    pub(crate) fn snapshot_keeping_images(
        &self,
        paths: &[PathBuf],
        opts: &SnapshotOptions,
        progress: &dyn Progress,
        keep: bool,
    ) -> Result<(SnapshotReport, Vec<CapturedImage>)> {
        let started = Instant::now();
        // Only for a snapshot with no file; otherwise the manifest's time
        // comes from its images (`image_time`).
        let time = crate::time::now();
        if paths.is_empty() {
            return Err(Error::Invalid(
                "nothing to snapshot: give at least one path".into(),
            ));
        }
        let (roots, sources, mut failed) = collect_sources(paths)?;
        let _lock = self.lock(crate::lock::LockKind::Shared, "snapshot", opts.lock_wait)?;
        // Read the indexes after the lock is held, so that a prune that just
        // finished is seen and nothing it deleted is taken as present.
        let index = self.refresh_index()?;
        let history = self.snapshots()?;
        let total: u64 = sources
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        progress.set_total(total);
        let Captured {
            files,
            referenced,
            unindexed_reused,
            claimed,
            reused_from,
            images,
            pending,
            mut new_index,
            mut stats,
            kept,
        } = self.capture_sources(
            &sources,
            &index,
            &history,
            opts,
            progress,
            &mut failed,
            keep,
        )?;
        if files.is_empty() && !failed.is_empty() {
            return Err(Error::NothingCaptured { failed });
        }

        // Index for the new packs, then the manifest.
        // Before the index too: a failed snapshot leaves only unindexed
        // packs, which `check` notes and prune removes, never an index entry
        // for a pack that is gone.
        // The last new index object is encoded (compressed and proven to
        // parse back) on a thread of its own while the check runs, on the
        // other core: both were the snapshot's end on one core. The index
        // objects are stored only once the check has passed.
        let rest = new_index.take_rest();
        let (needed, encoded) = std::thread::scope(|scope| {
            let encoding = scope.spawn(|| (!rest.is_empty()).then(|| encode_index(&rest)));
            let needed = self.verify_referenced(
                &index,
                &referenced,
                &unindexed_reused,
                &images,
                &reused_from,
                &new_index,
            );
            let encoded = encoding
                .join()
                .map_err(|_| Error::internal("the index encoder panicked"));
            (needed, encoded)
        });
        let needed = needed?;
        // Every blob claimed was sealed into a new pack that was stored:
        // the check above proves the blobs it did not claim by lookups and
        // the claimed ones only by their packs existing, so a claim without
        // a stored blob would commit a manifest that names a missing blob.
        if new_index.entries() != claimed {
            return Err(Error::internal(format!(
                "this snapshot took {claimed} new blob(s) to store, but its new packs hold {}; nothing was committed (its packs stay unindexed until a prune removes them)",
                new_index.entries()
            )));
        }
        if let Some(bytes) = encoded?.transpose()? {
            new_index.store_encoded(bytes)?;
        }
        drop(rest);
        // The check was the last use of the referenced set, the delta
        // images and the index of the capture (one entry per page).
        drop(referenced);
        drop(images);
        drop(index);
        self.write_snapshot_indexes(&new_index, &mut stats)?;
        stats.files = files.len() as u64;
        stats.duration_ms = started.elapsed().as_millis() as u64;
        let manifest = Manifest {
            // A repository keeps its format: a format-1 one gets format-1
            // manifests, which its older readers understand.
            format_version: self.config().format_version,
            time: crate::time::format_rfc3339(image_time(&files, time)),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            tags: opts.tags.clone(),
            paths: roots,
            files,
            stats,
        };
        let bytes = manifest.encode()?;
        let id = Id::of(&bytes);
        let store: &dyn Store = self.store().as_ref();
        pause_for_tests("SNAPBACK_TEST_DELAY_BEFORE_MANIFEST_MS");
        put_verified(store, &snapshot_key(&id), &bytes)?;
        // Checked once more now that the manifest protects its packs from
        // any prune that lists snapshots from here on: a snapshot paused
        // between the check above and this write (a prune that took its
        // lock for stale meanwhile) must not report success.
        if let Err(e) = self.verify_still_present(&needed, &reused_from, new_index.dicts()) {
            if let Err(d) = store.delete(&snapshot_key(&id)) {
                tracing::error!(snapshot = %id, error = %d, "cannot remove the manifest of a snapshot that lost its data; remove it with `snapback forget`");
            }
            return Err(e);
        }
        // The snapshot is committed; the states only help the next capture
        // (a lost one costs a full scan, never a wrong image).
        for mut p in pending {
            p.state.manifest = id;
            if let Err(e) = capture_state::save(&p.paths, &p.state) {
                tracing::warn!(path = %p.state.path, error = %e, "cannot save the local capture state; the next capture of this database will read all of it");
            }
        }
        tracing::info!(
            snapshot = %id,
            paths = ?manifest.paths,
            bytes_read = manifest.stats.bytes_read,
            bytes_new = manifest.stats.bytes_new,
            bytes_stored = manifest.stats.bytes_added,
            objects = manifest.stats.objects_written + 1,
            duration_ms = manifest.stats.duration_ms,
            "snapshot committed"
        );
        Ok((
            SnapshotReport {
                id,
                manifest,
                failed,
            },
            kept,
        ))
    }

    /// Captures every source into packs uploaded by
    /// `opts.upload_threads` threads. A file that cannot be captured is
    /// added to `failed` and the others go on; an error of the repository
    /// or the pipeline stops the capture. `keep`: keep what each database's
    /// capture read (`Captured::kept`).
    #[allow(clippy::too_many_arguments)]
    fn capture_sources(
        &self,
        sources: &[Source],
        index: &MasterIndex,
        history: &[Snapshot],
        opts: &SnapshotOptions,
        progress: &dyn Progress,
        failed: &mut Vec<FailedFile>,
        keep: bool,
    ) -> Result<Captured> {
        let stats = Mutex::new(SnapshotStats::default());
        let done = Mutex::new(NewIndex::default());
        // No more upload threads than the store gains from
        // (`Tuning::write_parallelism`): each holds a pack (16 MiB) while it
        // writes it; a local disk takes one, S3 hides each request's
        // latency behind the others and keeps `upload_threads`.
        let uploaders = opts
            .upload_threads
            .min(self.store().tuning().write_parallelism)
            .max(1);
        // No queue between the capture and the upload threads: each pack is
        // handed to a thread as it is finished, and with every thread busy
        // the capture waits. A pack is written several times faster than
        // the capture fills one, and each pack queued held another 16 MiB.
        let (tx, rx) = sync_channel::<PackBuilder>(0);
        // At most as many pack buffers as can be in flight come back.
        let (back, recycled) = sync_channel::<Vec<u8>>(uploaders);
        // Owned by the upload threads alone: when the last one stops (each
        // stops on its first error), the queue closes, and the capture's
        // next send fails instead of waiting for ever.
        let rx = Arc::new(Mutex::new(rx));
        let store: &dyn Store = self.store().as_ref();
        let codec = self.codec();
        type Referenced = (BlobSet, Vec<Id>, u64, HashSet<Id>, Vec<DeltaImage>);
        let mut pending: Vec<PendingState> = Vec::new();
        let mut kept = Vec::new();
        let files = std::thread::scope(|scope| -> Result<(Vec<FileEntry>, Referenced)> {
            let (done, stats) = (&done, &stats);
            let workers: Vec<_> = (0..uploaders)
                .map(|_| {
                    let rx = rx.clone();
                    let back = back.clone();
                    scope.spawn(move || upload_worker(store, codec, &rx, done, stats, &back))
                })
                .collect();
            drop(rx);
            let mut sink = BlobSink {
                index,
                referenced: BlobSet::default(),
                unindexed_reused: Vec::new(),
                claimed: 0,
                reused_from: HashSet::new(),
                images: Vec::new(),
                pack: PackBuilder::new(),
                recycled,
                codec,
                pack_target: self.config().pack_target_size as usize,
                tx: Some(tx),
                uploads_stopped: false,
                stats,
                states: Vec::new(),
                bases: Vec::new(),
                dict: None,
                dict_tally: (0, 0, 0),
                kept: keep.then(Vec::new),
                training: None,
            };
            let mut files = Vec::new();
            let mut result = Ok(());
            for s in sources {
                progress.set_message(&s.path.to_string_lossy());
                // Only a database's own capture sets a dictionary (a
                // training left by a capture that failed is dropped).
                sink.dict = None;
                sink.training = None;
                let r = if s.sqlite {
                    self.capture_sqlite(&s.path, opts, &mut sink, history, progress)
                } else {
                    self.capture_file(&s.path, &mut sink, history, progress)
                };
                match r {
                    Ok(f) => files.push(f),
                    // One bad file (locked, a hot journal, not a database,
                    // unreadable) does not stop the others; an error of the
                    // repository or the pipeline does. Blobs it queued
                    // before failing end up unreferenced, for prune.
                    Err(e) => match FailedFile::from_error(&s.path, &e) {
                        Some(f) => {
                            tracing::info!(path = %s.path.display(), reason = %f.reason, "not snapshotted");
                            failed.push(f);
                        }
                        None => {
                            result = Err(e);
                            break;
                        }
                    },
                }
            }
            if result.is_ok() {
                result = sink.flush();
            }
            let refs: Referenced = (
                std::mem::take(&mut sink.referenced),
                std::mem::take(&mut sink.unindexed_reused),
                sink.claimed,
                std::mem::take(&mut sink.reused_from),
                std::mem::take(&mut sink.images),
            );
            pending = std::mem::take(&mut sink.states);
            kept = sink.kept.take().unwrap_or_default();
            // When the capture stopped because no upload thread was left,
            // the first thread's own error (the store's) is the one to
            // report, with its kind.
            let mut uploads_stopped = sink.uploads_stopped;
            drop(sink.tx.take());
            drop(sink);
            for w in workers {
                let r = w
                    .join()
                    .map_err(|_| Error::internal("an upload thread panicked"))?;
                if result.is_ok() || (uploads_stopped && r.is_err()) {
                    uploads_stopped = false;
                    result = r;
                }
            }
            result.map(|()| (files, refs))
        })?;
        let (files, (referenced, unindexed_reused, claimed, reused_from, images)) = files;
        let new_index = done
            .into_inner()
            .map_err(|_| Error::internal("upload results poisoned"))?;
        let stats = stats
            .into_inner()
            .map_err(|_| Error::internal("stats poisoned"))?;
        Ok(Captured {
            files,
            referenced,
            unindexed_reused,
            claimed,
            reused_from,
            images,
            pending,
            new_index,
            stats,
            kept,
        })
    }

    /// Stores the index objects of a snapshot's new packs (encoded in
    /// `new_index`), counted in `stats`, and notes each one for this
    /// repository's cached index to read on its next use.
    fn write_snapshot_indexes(
        &self,
        new_index: &NewIndex,
        stats: &mut SnapshotStats,
    ) -> Result<()> {
        for i in 0..new_index.object_count() {
            let bytes = new_index.object(i)?;
            let key = index_key(&Id::of(&bytes));
            if put_verified(self.store().as_ref(), &key, &bytes)? == PutOutcome::Created {
                stats.bytes_added += bytes.len() as u64;
                stats.objects_written += 1;
            }
            // Before the manifest names them, so that a restore, check or
            // mount in the same process finds the new packs (before, it
            // reported them "not in any index" until it was reopened).
            self.note_written_index(&key)?;
        }
        Ok(())
    }

    /// Turns a chunk list into a `ChunkListRef`, as a patch on the parent's
    /// base where that is small, as a new base otherwise.
    fn store_chunk_list(
        &self,
        sink: &mut BlobSink,
        path: &str,
        chunking: Chunking,
        refs: &[ChunkRef],
        history: &[Snapshot],
    ) -> Result<ChunkListRef> {
        if let Some(base_ids) = parent_base(path, chunking, history) {
            // The patch and the base's length, from a base already read (a
            // delta's) without copying it, or read now.
            let known = sink.bases.iter().find(|(ids, _)| *ids == base_ids);
            let diffed = match known {
                Some((_, b)) => Ok((chunklist::diff(b, refs), b.len())),
                None => self
                    .base_list(sink.index, &base_ids, path)
                    .map(|b| (chunklist::diff(&b, refs), b.len())),
            };
            match diffed {
                Ok((patch, base_len)) => {
                    sink.reference(base_ids.iter().copied())?;
                    if patch.len() * 44 <= base_len * 36 / 8 {
                        let patch_id =
                            if patch.is_empty() && base_len == refs.len() {
                                None
                            } else {
                                Some(sink.add_raw(
                                    BlobKind::ChunkList,
                                    &chunklist::encode_patch(&patch),
                                )?)
                            };
                        return Ok(ChunkListRef {
                            count: refs.len() as u64,
                            base: base_ids,
                            patch: patch_id,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot read the parent's chunk list; writing a full one")
                }
            }
        }
        let mut base = Vec::new();
        for part in refs.chunks(PART_LEN) {
            base.push(sink.add_raw(BlobKind::ChunkList, &chunklist::encode_part(part))?);
        }
        Ok(ChunkListRef {
            count: refs.len() as u64,
            base,
            patch: None,
        })
    }

    /// Hashes, deduplicates and seals one batch of chunks.
    fn ingest(
        &self,
        sink: &mut BlobSink,
        data: &[u8],
        bounds: &[(usize, usize)],
        refs: &mut Vec<ChunkRef>,
    ) -> Result<()> {
        let (ids, new) = identify(sink, data, bounds, refs)?;
        self.seal_new(sink, data, bounds, &ids, &new)
    }

    /// Seals the chunks `new` (indexes into `bounds`, whose ids are `ids`)
    /// of one batch and adds them to packs, with the database's dictionary
    /// (waited for first, if it is still being trained).
    fn seal_new(
        &self,
        sink: &mut BlobSink,
        data: &[u8],
        bounds: &[(usize, usize)],
        ids: &[Id],
        new: &[usize],
    ) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        self.settle_dict(sink)?;
        let dict = sink.dict.clone();
        self.seal_with(sink, data, bounds, ids, new, dict)
    }

    /// `seal_new` with `dict` (or none), whatever the sink's is.
    fn seal_with(
        &self,
        sink: &mut BlobSink,
        data: &[u8],
        bounds: &[(usize, usize)],
        ids: &[Id],
        new: &[usize],
        dict: Option<Arc<Dict>>,
    ) -> Result<()> {
        if new.is_empty() {
            return Ok(());
        }
        let codec = sink.codec;
        let sealed: Vec<Result<Vec<u8>>> = new
            .par_iter()
            .map(|&i| {
                seal_blob(
                    codec,
                    &ids[i],
                    &data[bounds[i].0..bounds[i].1],
                    dict.as_deref(),
                )
            })
            .collect();
        let mut s = sink
            .stats
            .lock()
            .map_err(|_| Error::internal("stats poisoned"))?;
        s.new_chunks += new.len() as u64;
        s.bytes_new += new
            .iter()
            .map(|&i| (bounds[i].1 - bounds[i].0) as u64)
            .sum::<u64>();
        drop(s);
        let dict_id = dict.as_ref().map(|d| d.id);
        for (&i, stored) in new.iter().zip(sealed) {
            let (a, b) = bounds[i];
            let stored = stored?;
            if dict_id.is_some() {
                sink.dict_tally.0 += (b - a) as u64;
                sink.dict_tally.1 += stored.len() as u64;
                sink.dict_tally.2 += 1;
            }
            sink.add_sealed(BlobKind::Data, ids[i], &stored, (b - a) as u32, dict_id)?;
        }
        Ok(())
    }

    fn capture_sqlite(
        &self,
        path: &Path,
        opts: &SnapshotOptions,
        sink: &mut BlobSink,
        history: &[Snapshot],
        progress: &dyn Progress,
    ) -> Result<FileEntry> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot stat", e))?;
        // Taken before the read transaction begins (see fingerprint.rs).
        let fp = crate::fingerprint::take(path).map_err(|e| Error::io(path, "cannot stat", e))?;
        let fp_taken = crate::fingerprint::now_ns();
        if let Some((parent, entry)) = self.unchanged_since_parent(path, fp.as_ref(), sink, history)
        {
            // Its data blobs are the parent's: they exist while the parent
            // does, which `verify_referenced` checks before committing.
            sink.reference(entry.chunks.blob_ids().copied())?;
            sink.reused_from.insert(parent);
            return Ok(FileEntry {
                mode: mode_of(&meta),
                ..entry
            });
        }
        let path_s = path.to_string_lossy().into_owned();
        // What a delta needs, known before the read transaction begins.
        let mut lock = None;
        let prior = self.prior_capture(&path_s, opts, sink, history, &mut lock);
        // Only where a delta or a new state is possible (the lock is held):
        // reading the -shm file is harmless, but needless elsewhere.
        // (Also when the caller keeps the image: it rechecks it later.)
        let before = (lock.is_some() || sink.kept.is_some()).then(|| crate::delta::before(path));
        let cap = Capture::begin(path, opts.busy_timeout)?;
        let page_size = cap.page_size;
        // The dictionary this capture compresses the new pages with.
        let dict_baseline =
            self.begin_dict(&path_s, &cap, sink, history, opts.dict_from.as_deref())?;
        let (delta, before) = delta_over_prior(path, &cap, opts, prior, before)?;
        let (reason, delta) = match delta {
            Ok(d) => (None, Some(d)),
            Err(r) => (Some(r), None),
        };
        if let Some((state, base, changed)) = delta {
            let fp = fp.filter(|f| crate::fingerprint::settled(f, fp_taken));
            let entry = self.capture_delta(
                DeltaInput {
                    path,
                    path_s: &path_s,
                    meta: &meta,
                    fingerprint: fp,
                    state: &state,
                    changed: &changed,
                    before: before.as_ref().ok_or_else(|| {
                        Error::internal("a delta capture without the WAL's position")
                    })?,
                },
                &cap,
                sink,
                history,
                base,
            )?;
            cap.finish()?;
            let entry = self.end_dict(sink, entry, dict_baseline)?;
            let at = (changed.position, lock, before.as_ref());
            self.queue_state(sink, &path_s, at, page_size, &entry, &opts.pin_session);
            return Ok(entry);
        }
        let reason = reason.unwrap_or_default();
        tracing::info!(path = %path_s, reason = %reason, "capturing the database by a full scan");
        let chunk_size =
            page_size as usize * self.config().chunking.sqlite_pages_per_chunk as usize;
        // Whole chunks per batch, at least one: a chunk larger than a
        // batch (up to 1024 pages of 64 KiB) gets a batch of its own, never
        // one page (which would make chunks of one page while the manifest
        // says `chunk_size`).
        let chunk_pages = (self.config().chunking.sqlite_pages_per_chunk as usize).max(1);
        let pages_per_batch =
            ((SCAN_BATCH_BYTES / page_size as usize).max(1) / chunk_pages).max(1) * chunk_pages;
        let chunking = Chunking::Fixed {
            size: chunk_size as u32,
        };
        // With no parent list to patch and no image kept for the caller,
        // the chunk list is stored part by part as the scan goes.
        let whole = sink.kept.is_some() || parent_base(&path_s, chunking, history).is_some();
        let (cap, sha, list, header) =
            self.read_full_scan(cap, sink, chunk_size, pages_per_batch, whole, progress)?;
        let schema_hash = cap.schema_hash()?;
        let facts = SqliteFacts {
            page_size,
            page_count: cap.page_count,
            journal_mode: journal_mode_of_header(&header).to_string(),
            schema_hash,
            change_counter: header
                .get(24..28)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0),
            captured_at: crate::time::format_rfc3339(cap.captured_at),
            fingerprint: fp.filter(|f| crate::fingerprint::settled(f, fp_taken)),
            capture: Some(CaptureMethod::FullScan { reason }),
            dict: None,
        };
        let size = cap.size();
        let wal_mode = journal_mode_of_header(&header) == "wal";
        let position = before
            .as_ref()
            .and_then(|b| crate::delta::position_of_full_scan(path, b, wal_mode, page_size));
        cap.finish()?;
        let (refs, chunks, sum) = match list {
            ScanList::Whole(refs) => {
                let chunks = self.store_chunk_list(sink, &path_s, chunking, &refs, history)?;
                let sum = checksum_of(&refs);
                (refs, chunks, sum)
            }
            ScanList::Stored { chunks, sum } => (Vec::new(), chunks, sum),
        };
        let entry = FileEntry {
            path: path_s.clone(),
            kind: FileKind::Sqlite,
            size,
            mode: mode_of(&meta),
            mtime: meta
                .modified()
                .ok()
                .and_then(crate::time::from_system)
                .map(crate::time::format_rfc3339),
            sha256: sha.map(Id),
            db_checksum: sum.to_hex(),
            chunking,
            chunks,
            sqlite: Some(facts),
            point: None,
        };
        let entry = self.end_dict(sink, entry, dict_baseline)?;
        if let (Some(kept), Some(b)) = (sink.kept.as_mut(), &before) {
            kept.push(CapturedImage {
                path: path_s.clone(),
                page_size,
                page_count: entry.sqlite.as_ref().map_or(0, |f| f.page_count),
                page1: header,
                refs,
                before: b.clone(),
                position,
            });
        }
        if chunk_size == page_size as usize {
            let at = (position, lock, before.as_ref());
            self.queue_state(sink, &path_s, at, page_size, &entry, &opts.pin_session);
        }
        Ok(entry)
    }

    /// Reads every page of the capture's transaction (a reader thread,
    /// hashing the whole file as it reads in a format-1 repository) into
    /// chunks of `chunk_size`: the capture back, the file's SHA-256 (format
    /// 1 only), the chunk list and page 1 (its first 100 bytes are the
    /// header). In format 2 each page is hashed once, for its id: the
    /// whole-file hash was a second SHA-256 of every byte on the reader
    /// thread that nothing reads (restore proves a file by its chunk ids
    /// and `db_checksum`, docs/format.md "Manifests: what proves an image").
    fn read_full_scan(
        &self,
        cap: Capture,
        sink: &mut BlobSink,
        chunk_size: usize,
        pages_per_batch: usize,
        whole: bool,
        progress: &dyn Progress,
    ) -> Result<ScanRead> {
        // Two batches queued: the reader keeps ahead of the sealing, and
        // each batch more in flight held another buffer.
        let (btx, brx) = sync_channel::<Vec<u8>>(2);
        // The batches' buffers go back to the reader once sealed, so that
        // a scan reads into a few buffers instead of faulting in fresh
        // memory for every batch (a quarter of the reader's time). At
        // most one waits to be reused; the others are freed (the batches
        // held while a dictionary trains would otherwise stay allocated).
        let (give_back, reuse) = sync_channel::<Vec<u8>>(1);
        // Whole: one entry per chunk, reserved once (grown by doubling,
        // the list of a large database held up to twice its 36 bytes a
        // page). Else a part and a batch at most.
        let chunks = (cap.page_count as usize)
            .saturating_mul(cap.page_size as usize)
            .div_ceil(chunk_size.max(1));
        let batch_chunks = (pages_per_batch * cap.page_size as usize).div_ceil(chunk_size.max(1));
        let mut refs = Vec::with_capacity(if whole {
            chunks
        } else {
            chunks.min(PART_LEN + batch_chunks)
        });
        let mut parts = (!whole).then(PartWriter::default);
        let mut header = Vec::new();
        let ps = cap.page_size as usize;
        let whole_file_hash = !self.config().allows_partial_reads();
        let (cap, sha) = std::thread::scope(|scope| -> Result<(Capture, Option<[u8; 32]>)> {
            let reader = scope.spawn(move || {
                let mut h = whole_file_hash.then(Sha256::new);
                let fresh = || reuse.try_recv().unwrap_or_default();
                let r = cap.read_pages_into(pages_per_batch.max(1), fresh, |buf| {
                    if let Some(h) = h.as_mut() {
                        h.update(&buf);
                    }
                    btx.send(buf)
                        .map_err(|_| Error::internal("snapshot pipeline stopped"))
                });
                (cap, h.map(|h| h.finalize().into()), r)
            });
            let mut result = Ok(());
            // Batches read and hashed while the dictionary trains, sealed
            // once it is ready (at most MAX_BATCHES_AHEAD_OF_TRAINING).
            let mut ahead: Vec<HeldBatch> = Vec::new();
            let done = |b: Vec<u8>| {
                let _ = give_back.try_send(b);
            };
            for buf in brx.iter() {
                if result.is_err() {
                    continue; // drain so the reader can finish
                }
                if header.is_empty() {
                    header = buf[..ps.min(buf.len())].to_vec();
                }
                let bounds: Vec<(usize, usize)> = (0..buf.len())
                    .step_by(chunk_size)
                    .map(|a| (a, (a + chunk_size).min(buf.len())))
                    .collect();
                progress.inc(buf.len() as u64);
                result = identify(sink, &buf, &bounds, &mut refs).and_then(|(ids, new)| {
                    if let Some(p) = parts.as_mut() {
                        p.store(sink, &mut refs, false)?;
                    }
                    if sink.training_running() && ahead.len() < MAX_BATCHES_AHEAD_OF_TRAINING {
                        ahead.push((buf, bounds, ids, new));
                        return Ok(());
                    }
                    for (b, bo, i, n) in ahead.drain(..) {
                        self.seal_new(sink, &b, &bo, &i, &n)?;
                        done(b);
                    }
                    self.seal_new(sink, &buf, &bounds, &ids, &new)?;
                    done(buf);
                    Ok(())
                });
            }
            if result.is_ok() {
                for (b, bo, i, n) in ahead.drain(..) {
                    result = self.seal_new(sink, &b, &bo, &i, &n);
                    if result.is_err() {
                        break;
                    }
                }
            }
            let (cap, sha, r) = reader
                .join()
                .map_err(|_| Error::internal("the page reader panicked"))?;
            result?;
            r?;
            Ok((cap, sha))
        })?;
        let list = match parts {
            Some(mut p) => {
                p.store(sink, &mut refs, true)?;
                p.finish()
            }
            None => ScanList::Whole(refs),
        };
        Ok((cap, sha, list, header))
    }

    /// The previous capture of this database, if a delta can start from it:
    /// its local state (locked in `lock` for this capture) and the chunk
    /// list of the image it produced. Otherwise why not.
    fn prior_capture(
        &self,
        path_s: &str,
        opts: &SnapshotOptions,
        sink: &mut BlobSink,
        history: &[Snapshot],
        lock: &mut Option<(StatePaths, StateLock)>,
    ) -> std::result::Result<(CaptureState, StateImage), String> {
        if !self.config().allows_partial_reads() {
            return Err("the repository is format 1, whose manifests need a whole-file SHA-256 (`snapback init` makes format 2)".into());
        }
        if self.config().chunking.sqlite_pages_per_chunk != 1 {
            return Err("the repository cuts databases into chunks of several pages".into());
        }
        let Some(dir) = &opts.state_dir else {
            return Err("no local state directory".into());
        };
        let sp = capture_state::paths(dir, &self.config().repo_id, path_s);
        match capture_state::try_lock(&sp) {
            Ok(Some(l)) => *lock = Some((sp.clone(), l)),
            Ok(None) => {
                return Err(
                    "another capture of this database into this repository is running".into(),
                )
            }
            Err(e) => return Err(format!("the local capture state cannot be locked ({e})")),
        }
        let state = capture_state::load(&sp)?;
        let mut image = self.image_of_state(sink.index, &state, path_s, history)?;
        sink.bases.push((
            std::mem::take(&mut image.parts),
            std::mem::take(&mut image.base),
        ));
        Ok((state, image))
    }

    /// The image a capture state describes, if the state is this host's,
    /// for this database, and matches its snapshot in the repository, and
    /// every blob of it is indexed; otherwise why not.
    pub(crate) fn image_of_state(
        &self,
        index: &crate::index::MasterIndex,
        state: &CaptureState,
        path_s: &str,
        history: &[Snapshot],
    ) -> std::result::Result<StateImage, String> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        if state.repo_id != self.config().repo_id || state.path != path_s {
            return Err("the local capture state belongs to another database".into());
        }
        if state.host != host {
            return Err(format!(
                "the previous capture was made on another host ({})",
                state.host
            ));
        }
        let Some(snap) = history.iter().find(|s| s.id == state.manifest) else {
            return Err(format!(
                "the previous capture's snapshot {} is no longer in the repository",
                state.manifest.short()
            ));
        };
        let Some(entry) = snap.file(path_s) else {
            return Err("the previous capture's snapshot does not hold this database".into());
        };
        let matches = entry.kind == FileKind::Sqlite
            && entry.chunking
                == (Chunking::Fixed {
                    size: state.page_size,
                })
            && (state.point.is_some()
                || (entry.db_checksum == state.db_checksum
                    && entry.chunks.count == state.page_count));
        if !matches {
            return Err(
                "the previous capture's snapshot does not match the local capture state".into(),
            );
        }
        let unreadable =
            |e: Error| format!("the previous capture's chunk list cannot be read ({e})");
        let base = self
            .base_list(index, &entry.chunks.base, path_s)
            .map_err(unreadable)?;
        let place = format!("chunk list of {path_s}");
        let patch = match &entry.chunks.patch {
            Some(p) => {
                chunklist::decode_patch(&self.read_list_blob(index, p).map_err(unreadable)?, &place)
                    .map_err(unreadable)?
            }
            None => vec![],
        };
        let mut list = chunklist::apply_patch(base.clone(), &patch, entry.chunks.count, &place)
            .map_err(unreadable)?;
        if let Some(p) = state.point {
            // The image of a watcher's timeline point over this manifest.
            let seg = self.segment(&p.segment).map_err(|e| {
                format!(
                    "the previous capture's timeline segment {} cannot be read ({e})",
                    p.segment.short()
                )
            })?;
            if seg.base != state.manifest
                || seg.path != path_s
                || p.index as usize >= seg.points.len()
            {
                return Err("the previous capture's timeline segment does not match the local capture state".into());
            }
            list =
                crate::segment::replay(list, seg.page_size, &seg.points, p.index as usize, &place)
                    .map_err(unreadable)?;
            if checksum_of(&list).to_hex() != state.db_checksum {
                return Err(
                    "the previous capture's timeline point does not match the local capture state"
                        .into(),
                );
            }
        }
        let packs = index.packs_of(list.iter().map(|c| &c.id));
        let Some(packs) = packs.filter(|_| list.len() as u64 == state.page_count) else {
            return Err("blobs of the previous capture are missing from the index".into());
        };
        Ok(StateImage {
            parts: entry.chunks.base.clone(),
            base,
            list,
            packs,
        })
    }

    /// Queues the capture state of `entry` to be saved after the commit.
    fn queue_state(
        &self,
        sink: &mut BlobSink,
        path_s: &str,
        at: (
            Option<crate::delta::Position>,
            Option<(StatePaths, StateLock)>,
            Option<&crate::delta::Before>,
        ),
        page_size: u32,
        entry: &FileEntry,
        session: &Option<String>,
    ) {
        let (Some(pos), Some((paths, l)), Some(before)) = at else {
            return;
        };
        sink.states.push(PendingState {
            paths,
            state: CaptureState {
                version: capture_state::new_state_version(),
                repo_id: self.config().repo_id.clone(),
                path: path_s.to_string(),
                host: gethostname::gethostname().to_string_lossy().into_owned(),
                pid: std::process::id(),
                dev: before.dev,
                ino: before.ino,
                page_size,
                wal_salts: hex::encode(pos.salts),
                frame: pos.frame,
                frame_cksum: pos.cksum,
                manifest: Id([0; 32]),
                page_count: entry.chunks.count,
                db_checksum: entry.db_checksum.clone(),
                session: session.clone(),
                wal_ckpt: pos.ckpt,
                point: None,
                db_file: Some(before.db_file()),
            },
            _lock: l,
        });
    }

    /// A WAL-delta capture inside `cap`'s read transaction: reads the
    /// changed pages only and builds the new chunk list and `db_checksum`
    /// from the previous capture's.
    fn capture_delta(
        &self,
        input: DeltaInput,
        cap: &Capture,
        sink: &mut BlobSink,
        history: &[Snapshot],
        image: StateImage,
    ) -> Result<FileEntry> {
        let DeltaInput {
            path,
            path_s,
            meta,
            fingerprint,
            state,
            changed,
            before,
        } = input;
        let ps = cap.page_size as usize;
        let mut header = Vec::new();
        let mut page1 = Vec::new();
        let mut new_refs: Vec<ChunkRef> = Vec::with_capacity(changed.pages.len());
        cap.read_listed(&changed.pages, (8 << 20) / ps, |group, buf| {
            if group.first() == Some(&1) && header.is_empty() {
                header = buf[..100.min(buf.len())].to_vec();
                if sink.kept.is_some() {
                    page1 = buf[..ps.min(buf.len())].to_vec();
                }
            }
            let bounds: Vec<(usize, usize)> =
                (0..group.len()).map(|i| (i * ps, (i + 1) * ps)).collect();
            self.ingest(sink, &buf, &bounds, &mut new_refs)
        })?;
        let old_sum = state.checksum()?;
        let StateImage { list, packs, .. } = image;
        let (list, sum) = apply_delta(list, old_sum, changed, &new_refs, cap.page_count, ps as u64)
            .map_err(|m| Error::Input {
                path: path.into(),
                message: m,
            })?;
        if let Ok(mut s) = sink.stats.lock() {
            s.chunks += list.len() as u64 - new_refs.len() as u64;
            s.wal_delta_files += 1;
        }
        let chunking = Chunking::Fixed { size: ps as u32 };
        let chunks = self.store_chunk_list(sink, path_s, chunking, &list, history)?;
        if let Some(kept) = sink.kept.as_mut() {
            kept.push(CapturedImage {
                path: path_s.to_string(),
                page_size: cap.page_size,
                page_count: cap.page_count,
                page1,
                refs: list.clone(),
                before: before.clone(),
                position: changed.position,
            });
        }
        // The unchanged entries are the previous capture's blobs, checked
        // with the others before the commit (`verify_referenced`).
        sink.images.push(DeltaImage { list, packs });
        tracing::info!(path = %path_s, pages_read = changed.pages.len(), pages = cap.page_count, "captured the database by WAL delta (only the pages written since the previous capture)");
        let facts = SqliteFacts {
            page_size: cap.page_size,
            page_count: cap.page_count,
            journal_mode: journal_mode_of_header(&header).to_string(),
            schema_hash: cap.schema_hash()?,
            change_counter: header
                .get(24..28)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0),
            captured_at: crate::time::format_rfc3339(cap.captured_at),
            fingerprint,
            capture: Some(CaptureMethod::WalDelta {
                pages_read: changed.pages.len() as u64,
            }),
            dict: None,
        };
        Ok(FileEntry {
            path: path_s.to_string(),
            kind: FileKind::Sqlite,
            size: cap.size(),
            mode: mode_of(meta),
            mtime: meta
                .modified()
                .ok()
                .and_then(crate::time::from_system)
                .map(crate::time::format_rfc3339),
            sha256: None,
            db_checksum: sum.to_hex(),
            chunking,
            chunks,
            sqlite: Some(facts),
            point: None,
        })
    }

    /// Chooses the dictionary this capture of a database compresses its new
    /// pages with, and sets it on the sink: the one the database's newest
    /// earlier capture used, unless the ratio on its new pages fell off
    /// (then, or when there is none, a new one is trained on a sample of
    /// this transaction's pages and stored). A database never captured
    /// before starts from the newest capture of `dict_from`, when given
    /// (`SnapshotOptions::dict_from`). Format 1 and small databases get
    /// none. Returns the baseline ratio of the dictionary chosen (`None`
    /// inside: a new one), or `None` with no dictionary.
    fn begin_dict(
        &self,
        path_s: &str,
        cap: &Capture,
        sink: &mut BlobSink,
        history: &[Snapshot],
        dict_from: Option<&str>,
    ) -> Result<Option<Option<u32>>> {
        sink.dict = None;
        sink.dict_tally = (0, 0, 0);
        sink.training = None;
        if !self.config().allows_partial_reads() {
            return Ok(None);
        }
        let newest = |p: &str| history.iter().rev().find_map(|s| s.file(p));
        let parent = newest(path_s)
            .or_else(|| dict_from.and_then(newest))
            .and_then(|f| f.sqlite.as_ref())
            .and_then(|q| q.dict.clone());
        if let Some(u) = parent {
            let fell = u.baseline_per_mille > 0
                && u.new_pages >= crate::dict::RATIO_MIN_PAGES
                && u.new_per_mille as u64 * 4 > u.baseline_per_mille as u64 * 5;
            if fell {
                tracing::info!(path = path_s, dict = %u.id.short(), baseline_per_mille = u.baseline_per_mille, new_per_mille = u.new_per_mille, "the dictionary's ratio on new pages fell off; training a new one");
            } else {
                match self.dict(&u.id) {
                    Ok(d) => {
                        sink.dict = Some(d);
                        return Ok(Some(Some(u.baseline_per_mille)));
                    }
                    Err(e) => {
                        tracing::warn!(path = path_s, dict = %u.id.short(), error = %e, "cannot read the dictionary of the previous capture (run `snapback check`); training a new one")
                    }
                }
            }
        }
        if cap.page_count < crate::dict::MIN_PAGES {
            return Ok(None);
        }
        let started = Instant::now();
        let pages = crate::dict::sample_pages(cap.page_count, cap.page_size);
        let ps = cap.page_size as usize;
        let mut samples = Vec::with_capacity(pages.len() * ps);
        cap.read_listed(&pages, 1024, |_, buf| {
            samples.extend_from_slice(&buf);
            Ok(())
        })?;
        let sizes = vec![ps; pages.len()];
        let level = self.config().compression_level;
        // Trained on a thread of its own, so that the capture reads and
        // hashes the first pages meanwhile (`settle_dict` waits for it).
        let train = move || Dict::train(&samples, &sizes, level);
        let handle = std::thread::Builder::new()
            .name("snapback-dict".into())
            .spawn(train)
            .map_err(|e| Error::internal(format!("cannot start the dictionary trainer: {e}")))?;
        sink.training = Some(Training {
            handle,
            path: path_s.to_string(),
            sample_pages: pages.len(),
            started,
        });
        Ok(Some(None))
    }

    /// Waits for the dictionary being trained, if any, and makes it the
    /// sink's: stored (`dicts/<id>`, verified) before any blob names it.
    /// A failed training leaves the database's pages without one.
    fn settle_dict(&self, sink: &mut BlobSink) -> Result<()> {
        let Some(t) = sink.training.take() else {
            return Ok(());
        };
        let trained = t
            .handle
            .join()
            .map_err(|_| Error::internal("the dictionary trainer panicked"))?;
        let dict = match trained {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(path = t.path, error = %e, "no dictionary for this database; its pages are compressed without one");
                return Ok(());
            }
        };
        self.store_dict(&dict, sink)?;
        tracing::info!(path = t.path, dict = %dict.id.short(), bytes = dict.bytes().len(), sample_pages = t.sample_pages, ms = t.started.elapsed().as_millis() as u64, "trained a zstd dictionary for the database");
        let dict = std::sync::Arc::new(dict);
        if let Ok(mut c) = self.dicts.lock() {
            c.insert(dict.id, dict.clone());
        }
        sink.dict = Some(dict);
        Ok(())
    }

    /// `end_dict` once the dictionary in training, if any, is settled.
    fn end_dict(
        &self,
        sink: &mut BlobSink,
        entry: FileEntry,
        baseline: Option<Option<u32>>,
    ) -> Result<FileEntry> {
        self.settle_dict(sink)?;
        Ok(end_dict(sink, entry, baseline))
    }

    /// Stores a new dictionary (`dicts/<id>`, verified), adding the
    /// `zstd-dict` feature to the config first.
    fn store_dict(&self, dict: &Dict, sink: &BlobSink) -> Result<()> {
        self.ensure_feature(crate::config::DICT_FEATURE)?;
        let key = crate::layout::dict_key(&dict.id);
        let bytes = dict.bytes();
        if put_verified(self.store().as_ref(), &key, bytes)? == PutOutcome::Created {
            if let Ok(mut s) = sink.stats.lock() {
                s.bytes_added += bytes.len() as u64;
                s.objects_written += 1;
            }
        }
        Ok(())
    }

    /// The dictionaries the blobs of `packs` name that the store no longer
    /// holds (a prune that took this snapshot's lock for stale).
    fn missing_dicts(&self, dicts: &[Id]) -> Result<Vec<Id>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for d in dicts {
            if seen.insert(*d) && self.store().stat(&crate::layout::dict_key(d))?.is_none() {
                out.push(*d);
            }
        }
        Ok(out)
    }

    /// The parent's entry for `path`, if the database is provably unchanged
    /// since the parent captured it: same fingerprint, same chunking, and
    /// its chunk list still indexed.
    fn unchanged_since_parent(
        &self,
        path: &Path,
        fp: Option<&crate::fingerprint::DbFingerprint>,
        sink: &BlobSink,
        history: &[Snapshot],
    ) -> Option<(Id, FileEntry)> {
        let fp = fp?;
        let path_s = path.to_string_lossy();
        let (snap, prev) = history
            .iter()
            .rev()
            .find_map(|s| s.file(&path_s).map(|f| (s, f)))?;
        let facts = prev.sqlite.as_ref()?;
        let page_size = facts.page_size as usize;
        let same_chunking = prev.chunking
            == (Chunking::Fixed {
                size: (page_size * self.config().chunking.sqlite_pages_per_chunk as usize) as u32,
            });
        let indexed = prev.chunks.blob_ids().all(|id| sink.index.contains(id));
        if facts.fingerprint.as_ref() != Some(fp) || !same_chunking || !indexed {
            return None;
        }
        tracing::info!(path = %path_s, parent = %snap.id.short(), "database unchanged since the parent snapshot (same files, settled timestamps); reusing its image without reading it");
        let mut e = prev.clone();
        if let Some(f) = e.sqlite.as_mut() {
            f.captured_at = crate::time::format_rfc3339(crate::time::now());
            f.capture = Some(CaptureMethod::Unchanged);
        }
        if let Ok(mut s) = sink.stats.lock() {
            s.chunks += e.chunks.count;
        }
        Some((snap.id, e))
    }

    /// The last look before the index and manifest are written: every
    /// referenced blob is in the repository's current index (listed again,
    /// and read again whole when an index object it was loaded from is gone,
    /// so a prune that rewrote the indexes meanwhile is seen) or
    /// in a pack this snapshot wrote, in a pack that
    /// exists; every snapshot whose unchanged database image is reused still
    /// exists (its blobs are kept by prune for as long as it does). A prune
    /// can only have run meanwhile if it took this snapshot's lock for stale
    /// (a lock from a paused host, or a clock far off).
    ///
    /// A referenced blob that was not in the index at the capture was
    /// claimed then, and so queued into a pack this snapshot wrote (or
    /// noted in `unindexed_reused`, when it was referenced without a
    /// claim): every new pack must exist, and only the blobs indexed at
    /// the capture (and those noted) are looked up again, so the new
    /// blobs need no table of their packs here (it took 36 bytes a blob,
    /// and the new packs' entries 80 more, to the end of the snapshot).
    fn verify_referenced(
        &self,
        at_capture: &Arc<MasterIndex>,
        referenced: &BlobSet,
        unindexed_reused: &[Id],
        images: &[DeltaImage],
        reused_from: &HashSet<Id>,
        new_index: &NewIndex,
    ) -> Result<IdSet> {
        let fresh = self.current_index()?;
        let present = self.present_packs()?;
        let mut unindexed = 0usize;
        let mut missing: Vec<Id> = Vec::new();
        let mut needed = IdSet::default();
        for p in new_index.packs() {
            if present.contains(p) {
                needed.insert(*p);
            } else {
                missing.push(*p);
            }
        }
        // The unchanged blobs of delta images are in the packs the index
        // gave when their capture began, if that index is still the
        // repository's; looked up again otherwise.
        let same_index = Arc::ptr_eq(&fresh, at_capture);
        let listed = images
            .iter()
            .filter(|_| !same_index)
            .flat_map(|i| i.list.iter().map(|c| &c.id));
        if same_index {
            for p in images.iter().flat_map(|i| &i.packs) {
                if present.contains(p) {
                    needed.insert(*p);
                } else {
                    missing.push(*p);
                }
            }
        }
        let mut look_up = |id: &Id| match fresh.get(id).map(|l| l.pack) {
            None => unindexed += 1,
            Some(pack) if !present.contains(&pack) => missing.push(pack),
            Some(pack) => {
                needed.insert(pack);
            }
        };
        referenced.for_each(|id| {
            if at_capture.contains(id) {
                look_up(id);
            }
            Ok(())
        })?;
        for id in listed.filter(|id| at_capture.contains(id)) {
            look_up(id);
        }
        for id in unindexed_reused {
            look_up(id);
        }
        let gone = self.removed_snapshots(reused_from);
        let dicts = self.missing_dicts(new_index.dicts())?;
        if !dicts.is_empty() {
            return Err(lost_dicts(&dicts));
        }
        if unindexed == 0 && missing.is_empty() && gone.is_empty() {
            return Ok(needed);
        }
        Err(lost_while_running(&missing, unindexed, &gone))
    }

    /// The check after the manifest is written: every pack the first check
    /// found is still there, and so is every snapshot whose image is reused.
    fn verify_still_present(
        &self,
        packs: &IdSet,
        reused_from: &HashSet<Id>,
        new_dicts: &[Id],
    ) -> Result<()> {
        let dicts = self.missing_dicts(new_dicts)?;
        if !dicts.is_empty() {
            return Err(lost_dicts(&dicts));
        }
        let present = self.present_packs()?;
        let missing: Vec<Id> = packs
            .iter()
            .filter(|p| !present.contains(p))
            .copied()
            .collect();
        let gone = self.removed_snapshots(reused_from);
        if missing.is_empty() && gone.is_empty() {
            return Ok(());
        }
        Err(lost_while_running(&missing, 0, &gone))
    }

    /// The snapshots of `ids` whose manifests no longer exist.
    fn removed_snapshots(&self, ids: &HashSet<Id>) -> Vec<Id> {
        ids.iter()
            .filter(|p| {
                !self
                    .store()
                    .stat(&snapshot_key(p))
                    .is_ok_and(|s| s.is_some())
            })
            .copied()
            .collect()
    }
}

/// A test hook: sleeps for the milliseconds the variable `name` gives, so
/// that a test can run another command in a window that is otherwise too
/// short to hit (tests/e2e/prune_race.rs). Unset, it costs one lookup.
pub(crate) fn pause_for_tests(name: &str) {
    if let Some(ms) = std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!(variable = name, ms, "test hook: pausing");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The error of a snapshot whose data a prune removed while it ran.
fn lost_while_running(missing: &[Id], unindexed: usize, gone: &[Id]) -> Error {
    let mut missing = missing.to_vec();
    missing.sort();
    missing.dedup();
    let mut what = Vec::new();
    if !missing.is_empty() {
        what.push(format!(
            "{} pack(s) it references are missing ({})",
            missing.len(),
            missing
                .iter()
                .take(3)
                .map(pack_key)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if unindexed > 0 {
        what.push(format!(
            "{unindexed} blob(s) it references are missing (in no index)"
        ));
    }
    if !gone.is_empty() {
        what.push(format!(
            "snapshot(s) {} whose unchanged database images it reuses were removed",
            gone.iter()
                .map(|g| g.short())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Error::Verification(format!(
        "{} while the snapshot ran (a prune that took its lock for stale: a paused process, or a host clock far off?). Take the snapshot again; its data will be stored anew.",
        what.join("; ")
    ))
}

/// A snapshot whose dictionaries were deleted while it ran.
fn lost_dicts(dicts: &[Id]) -> Error {
    let names: Vec<String> = dicts.iter().map(|d| d.short()).collect();
    Error::Verification(format!(
        "the dictionar{} {} that this snapshot's new pages were compressed with {} deleted while it ran (a prune took its lock for stale); nothing was committed. Run the snapshot again",
        if dicts.len() == 1 { "y" } else { "ies" },
        names.join(", "),
        if dicts.len() == 1 { "was" } else { "were" },
    ))
}

/// Records on a database's entry which dictionary its capture used, and
/// how well it did on the pages it compressed (`begin_dict`'s baseline,
/// `None` inside for a new dictionary: this capture's ratio becomes it).
fn end_dict(sink: &mut BlobSink, mut entry: FileEntry, baseline: Option<Option<u32>>) -> FileEntry {
    let (Some(dict), Some(baseline)) = (sink.dict.take(), baseline) else {
        return entry;
    };
    let (raw, stored, pages) = std::mem::take(&mut sink.dict_tally);
    let new_per_mille = stored
        .saturating_mul(1000)
        .checked_div(raw)
        .map_or(0, |v| v.min(u32::MAX as u64) as u32);
    let baseline_per_mille = match baseline {
        Some(b) if b > 0 => b,
        _ if pages >= crate::dict::RATIO_MIN_PAGES => new_per_mille,
        _ => 0,
    };
    if let Some(f) = entry.sqlite.as_mut() {
        f.dict = Some(DictUse {
            id: dict.id,
            baseline_per_mille,
            new_pages: pages,
            new_per_mille,
        });
    }
    entry
}

impl Repository {
    fn capture_file(
        &self,
        path: &Path,
        sink: &mut BlobSink,
        history: &[Snapshot],
        progress: &dyn Progress,
    ) -> Result<FileEntry> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        let meta = f
            .metadata()
            .map_err(|e| Error::io(path, "cannot stat", e))?;
        let c = &self.config().chunking;
        let mut whole = Sha256::new();
        let mut refs = Vec::new();
        let mut batch: Vec<u8> = Vec::new();
        let mut bounds = Vec::new();
        let mut size = 0u64;
        for chunk in fastcdc::v2020::StreamCDC::new(
            f,
            c.cdc_min as usize,
            c.cdc_avg as usize,
            c.cdc_max as usize,
        ) {
            let chunk = chunk.map_err(|e| Error::Input {
                path: path.into(),
                message: format!("read failed: {e}"),
            })?;
            whole.update(&chunk.data);
            size += chunk.data.len() as u64;
            let a = batch.len();
            batch.extend_from_slice(&chunk.data);
            bounds.push((a, batch.len()));
            if batch.len() >= 32 << 20 {
                self.ingest(sink, &batch, &bounds, &mut refs)?;
                progress.inc(batch.len() as u64);
                batch.clear();
                bounds.clear();
            }
        }
        if !bounds.is_empty() {
            self.ingest(sink, &batch, &bounds, &mut refs)?;
            progress.inc(batch.len() as u64);
        }
        let path_s = path.to_string_lossy().into_owned();
        let chunks = self.store_chunk_list(sink, &path_s, Chunking::Cdc, &refs, history)?;
        Ok(FileEntry {
            path: path_s,
            kind: FileKind::File,
            size,
            mode: mode_of(&meta),
            mtime: meta
                .modified()
                .ok()
                .and_then(crate::time::from_system)
                .map(crate::time::format_rfc3339),
            sha256: Some(Id(whole.finalize().into())),
            db_checksum: checksum_of(&refs).to_hex(),
            chunking: Chunking::Cdc,
            chunks,
            sqlite: None,
            point: None,
        })
    }
}

/// The new chunk list and checksum: `base` (whose checksum is `old_sum`)
/// cut to `changed.keep` entries and extended to `page_count`, with the
/// changed pages (`new_refs`, in `changed.pages` order) in their places.
/// The checksum is updated per changed entry, without the rest of the list.
/// The image a WAL-delta capture gives, storing nothing: the `changed`
/// pages read from `cap` (named by `id_of`, the repository's blob id)
/// applied over `base` with `old`, the base's checksum. The outer error is
/// the read's; the inner one says why the delta does not apply.
pub(crate) fn delta_image(
    cap: &Capture,
    changed: &crate::delta::Changed,
    base: Vec<ChunkRef>,
    old: DbChecksum,
    id_of: impl Fn(&[u8]) -> Id,
) -> Result<std::result::Result<(Vec<ChunkRef>, DbChecksum), String>> {
    let ps = cap.page_size as usize;
    let mut new_refs = Vec::with_capacity(changed.pages.len());
    cap.read_listed(&changed.pages, ((8 << 20) / ps).max(1), |_, buf| {
        new_refs.extend(buf.chunks(ps).map(|p| ChunkRef {
            id: id_of(p),
            len: ps as u32,
        }));
        Ok(())
    })?;
    Ok(apply_delta(
        base,
        old,
        changed,
        &new_refs,
        cap.page_count,
        ps as u64,
    ))
}

pub(crate) fn apply_delta(
    mut base: Vec<ChunkRef>,
    mut sum: DbChecksum,
    changed: &crate::delta::Changed,
    new_refs: &[ChunkRef],
    page_count: u64,
    page_size: u64,
) -> std::result::Result<(Vec<ChunkRef>, DbChecksum), String> {
    if new_refs.len() != changed.pages.len() {
        return Err("read a different number of pages than listed".into());
    }
    let keep = changed.keep.min(base.len() as u64) as usize;
    for (i, c) in base.iter().enumerate().skip(keep) {
        sum.remove(i as u64 * page_size, &c.id);
    }
    base.truncate(keep);
    let filler = ChunkRef {
        id: Id([0; 32]),
        len: 0,
    };
    let count = usize::try_from(page_count).map_err(|_| "page count too large".to_string())?;
    base.resize(count, filler);
    let mut covered = keep;
    for (&p, r) in changed.pages.iter().zip(new_refs) {
        let i = (p - 1) as usize;
        let off = i as u64 * page_size;
        if i < keep {
            sum.remove(off, &base[i].id);
        } else if i == covered {
            covered += 1;
        } else {
            return Err(format!("page {p} past the reusable part is out of order"));
        }
        sum.add(off, &r.id);
        base[i] = *r;
    }
    if covered != count.max(keep) {
        return Err("pages past the reusable part of the previous capture were not read".into());
    }
    Ok((base, sum))
}

pub(crate) use crate::chunklist::checksum_of;

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}
