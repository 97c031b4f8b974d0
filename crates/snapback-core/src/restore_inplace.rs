//! In-place restore of a live database (`restore SNAP LIVE_DB --in-place`).
//!
//! The live database stays where it is, open by its application: only the
//! pages that differ from the snapshot's are written, through SQLite itself
//! (`sqlite_dbpage`), in one write transaction. SQLite's pager journals
//! them (the rollback journal or the WAL, whichever the database uses), so
//! every other connection sees the old database or the restored one, never
//! a mix, and a crash at any moment leaves one of the two.
//!
//! The steps:
//! - **plan** (the dry run): in one read transaction, hash every live page
//!   as the snapshot's chunks are cut and compare with its chunk list;
//! - **apply**: take a `pre-restore` snapshot of the live database (the
//!   undo point) or refuse; its capture's image is the compare (a full
//!   scan's chunk list, or, with a capture state it trusts, the previous
//!   capture's list patched with the pages of the WAL frames since: no
//!   other page hashed), else compare in a read transaction (hashing on
//!   every core; in WAL mode no writer waits for it), noting `PRAGMA
//!   data_version` and the WAL position it saw; fetch the differing chunks
//!   (up to 64 MiB); `BEGIN IMMEDIATE` (waiting at most `lock_wait`); find
//!   what changed since the compare: nothing when the data version is the
//!   same (no other connection committed), else the pages of the WAL
//!   frames committed since (`delta::changed_pages`), whose chunks are
//!   hashed again, or, when those cannot be known (a rollback journal, a
//!   WAL restarted), the whole database read again; if the database changed
//!   since the pre-restore snapshot, take that snapshot again, now that no
//!   writer can commit, and check that it agrees with what the transaction
//!   reads; write each differing page, each read from the repository and
//!   verified by its hash; read each written page back; cut the database
//!   to the snapshot's page count; COMMIT.
//!
//! The pages that were not written hashed to the snapshot's chunk ids, and
//! the pages written read back as the snapshot's verified content, so the
//! transaction's view is the snapshot's image without a second full read.
//! One exception, which SQLite imposes: when page 1 is written, the pager
//! sets the header's change counter (offset 24), version-valid-for (92) and
//! SQLite version (96) as it commits, which is how other connections learn
//! that the database changed. Page 1 is compared without those 12 bytes.
//! When the snapshot's schema differs from the live one but carries the
//! same schema cookie (offset 40), other connections would keep their
//! cached schema: the cookie written is then the live one plus one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayon::prelude::*;
use serde::Serialize;

use crate::capture_state::CaptureState;
use crate::chunklist::{checksum_of, ChunkRef};
use crate::error::{Error, Result};
use crate::forget::PRE_RESTORE_TAG;
use crate::id::Id;
use crate::index::MasterIndex;
use crate::lock::LockState;
use crate::manifest::{Chunking, FileEntry, FileKind};
use crate::repo::Repository;
use crate::selector::{holds_list, Snapshot};
use crate::snapshot::{CapturedImage, SnapshotOptions};
use crate::sqlite::{journal_mode_of_header, Capture, PageWriter};
use crate::NoProgress;

/// Header bytes of page 1 that SQLite's pager writes itself when it
/// commits a change to page 1: the file change counter (24..28),
/// version-valid-for (92..96) and the SQLite version number (96..100).
pub(crate) const PAGER_OWNED: [std::ops::Range<usize>; 2] = [24..28, 92..100];
/// Chunks fetched from the repository at once (at most 8 MiB of 4 KiB pages).
const FETCH_BATCH: usize = 2048;
/// The differing chunks' bytes fetched before the write lock is taken; the
/// rest is fetched while it is held.
const PREFETCH_BYTES: u64 = 64 << 20;
/// The schema cookie in page 1.
const SCHEMA_COOKIE: std::ops::Range<usize> = 40..44;

#[derive(Debug, Clone)]
pub struct InPlaceOptions {
    /// The database's path inside the snapshot, when it is not LIVE_DB's.
    pub path: Option<String>,
    /// How long to wait for the live database's write lock, and for a
    /// prune's exclusive lock on the repository.
    pub lock_wait: Duration,
    /// Take no repository lock while reading (see `Repository::read_lock`).
    pub no_lock: bool,
    /// How the pre-restore snapshot is taken (its tags are set here).
    pub snapshot: SnapshotOptions,
}

/// What an in-place restore would change (the dry run) or changed.
#[derive(Debug, Clone, Serialize)]
pub struct InPlaceReport {
    /// The snapshot restored from.
    pub snapshot: Id,
    /// The database's path in the snapshot.
    pub file: String,
    /// The live database.
    pub live: PathBuf,
    pub page_size: u32,
    /// "wal" or "rollback" (both sides have the same).
    pub journal_mode: String,
    /// Pages of the live database (before the restore).
    pub live_pages: u64,
    /// Pages of the snapshot's database (the live one's after the restore).
    pub snapshot_pages: u64,
    /// Pages that differ, in both: rewritten.
    pub pages_rewritten: u64,
    /// Pages of the snapshot past the live database's end: added.
    pub pages_added: u64,
    /// Pages of the live database past the snapshot's end: cut off.
    pub pages_removed: u64,
    /// Whether the pages were written (false: a dry run, or nothing differed).
    pub applied: bool,
    /// The snapshot of the live database taken before writing: restoring
    /// it in place undoes this restore.
    pub pre_restore_snapshot: Option<Id>,
    /// The repository lock held while reading.
    pub lock: LockState,
    /// What was read again inside the write transaction (not in the JSON
    /// document; the log says it).
    #[serde(skip)]
    pub recheck: Option<Recheck>,
    /// How many times the live database was read whole (its pre-restore
    /// snapshot's full scan, a compare of its own, a full recheck; not in
    /// the JSON document): 1 at most when no writer commits meanwhile, 0
    /// when the pre-restore snapshot was a WAL-delta capture.
    #[serde(skip)]
    pub full_reads: u32,
}

/// What an in-place restore read again inside its write transaction, after
/// comparing in a read transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Nothing: no other connection committed since the compare.
    Unchanged,
    /// The pages of the WAL frames committed since the compare (this many).
    WalPages(usize),
    /// The whole database: what changed since could not be known.
    FullRead,
}

impl InPlaceReport {
    /// Pages that change: rewritten, added and removed.
    pub fn pages_changed(&self) -> u64 {
        self.pages_rewritten + self.pages_added + self.pages_removed
    }
}

/// Streams the live database's pages, `n` at a time, to a sink: a read
/// transaction's or the write transaction's.
type ReadPages<'a> = dyn Fn(usize, &mut dyn FnMut(Vec<u8>) -> Result<()>) -> Result<()> + 'a;

/// The snapshot's side: its database's entry, verified chunk list and
/// first page.
struct Target {
    file: FileEntry,
    chunks: Vec<ChunkRef>,
    /// Pages per chunk.
    chunk_pages: u64,
    page_size: u32,
    pages: u64,
    page1: Vec<u8>,
}

/// What differs.
struct Comparison {
    /// Indexes of the snapshot's chunks to write.
    chunks: Vec<usize>,
    rewritten: u64,
    added: u64,
    removed: u64,
}

/// The live image as chunk ids.
struct LiveImage {
    page_count: u64,
    page1: Vec<u8>,
    /// In the target's chunking.
    refs: Vec<ChunkRef>,
    /// In the pre-restore snapshot's chunking (pages per chunk, ids), when
    /// it is not the target's.
    pre_refs: Option<(u64, Vec<ChunkRef>)>,
}

impl LiveImage {
    /// The image's checksum as the pre-restore snapshot records it.
    fn pre_checksum(&self) -> String {
        match &self.pre_refs {
            Some((_, refs)) => checksum_of(refs).to_hex(),
            None => checksum_of(&self.refs).to_hex(),
        }
    }
}

/// The compare made in a read transaction, and how to tell later what
/// changed since.
struct Compared {
    img: LiveImage,
    /// `PRAGMA data_version` in that transaction, when it was the write
    /// connection's own (none when the compare is the pre-restore
    /// snapshot's read, on a connection of its own).
    version: Option<i64>,
    /// The wal-index header and file identity read before it began.
    seen: crate::delta::Before,
    /// A WAL position the transaction's image is known to include.
    position: Option<crate::delta::Position>,
    /// Whether a read transaction was held from before the compare to the
    /// write lock (`watch::Pin`): the WAL may then have restarted once,
    /// right after that position, and the frames since are still all
    /// the changes.
    pinned: bool,
}

/// Blobs fetched, by id.
type Blobs = std::collections::HashMap<Id, Vec<u8>>;

/// Compares the live image with the target, chunk by chunk.
fn diff(t: &Target, img: &LiveImage) -> Comparison {
    let live_pages = img.page_count;
    let mut chunks = Vec::new();
    let mut rewritten = 0u64;
    for (i, want) in t.chunks.iter().enumerate() {
        let same = match img.refs.get(i) {
            Some(have) if have == want => true,
            // Page 1 alone in its chunk: compared without the bytes
            // the pager owns.
            Some(_) if i == 0 && t.chunk_pages == 1 => same_page1(&img.page1, &t.page1),
            _ => false,
        };
        if !same {
            chunks.push(i);
            let first = i as u64 * t.chunk_pages + 1;
            let last = (first + t.chunk_pages - 1).min(t.pages).min(live_pages);
            rewritten += (last + 1).saturating_sub(first);
        }
    }
    Comparison {
        chunks,
        rewritten,
        added: t.pages.saturating_sub(live_pages),
        removed: live_pages.saturating_sub(t.pages),
    }
}

/// Brings chunk ids of `chunk_pages` pages each up to date with `changed`
/// (the pages written since they were hashed) and the new page count:
/// every chunk holding a changed page, a page past `changed.keep` or the
/// new end is hashed again from `read`; chunks past the end are dropped.
fn patch_refs(
    codec: &crate::pack::BlobCodec,
    refs: &mut Vec<ChunkRef>,
    chunk_pages: u64,
    changed: &crate::delta::Changed,
    page_count: u64,
    read: &dyn Fn(u64) -> std::result::Result<Vec<u8>, String>,
) -> std::result::Result<(), String> {
    let n = page_count.div_ceil(chunk_pages) as usize;
    refs.truncate(n);
    let mut todo: std::collections::BTreeSet<usize> = changed
        .pages
        .iter()
        .map(|p| ((p - 1) / chunk_pages) as usize)
        .collect();
    todo.extend((changed.keep / chunk_pages) as usize..n);
    todo.extend(refs.len().saturating_sub(1)..n);
    for j in todo.into_iter().filter(|&j| j < n) {
        let first = j as u64 * chunk_pages + 1;
        let last = ((j as u64 + 1) * chunk_pages).min(page_count);
        let mut buf = Vec::new();
        for p in first..=last {
            buf.extend(read(p)?);
        }
        let r = ChunkRef {
            id: codec.blob_id(&buf),
            len: buf.len() as u32,
        };
        match j.cmp(&refs.len()) {
            std::cmp::Ordering::Less => refs[j] = r,
            std::cmp::Ordering::Equal => refs.push(r),
            std::cmp::Ordering::Greater => {
                return Err(format!(
                    "chunk {j} is past the chunks known ({})",
                    refs.len()
                ))
            }
        }
    }
    Ok(())
}

/// Picks the database of `snap` to restore into `live`: `path` when given,
/// else the one at LIVE_DB's own path; never another database silently.
pub fn choose_file<'a>(
    snap: &'a Snapshot,
    live: &Path,
    path: Option<&str>,
) -> Result<&'a FileEntry> {
    let live_s = live.to_string_lossy();
    let want = path.unwrap_or(&live_s);
    let file = snap.file(want).ok_or_else(|| {
        let hint = if path.is_some() {
            String::new()
        } else {
            format!(
                "; to restore one of them into {live_s} (another database, or the same one moved), name it with --path"
            )
        };
        Error::Selector(format!(
            "snapshot {} holds no file {want}; it holds: {}{hint}; nothing was written",
            snap.describe(),
            holds_list(snap)
        ))
    })?;
    if file.kind != FileKind::Sqlite || file.sqlite.is_none() {
        return Err(Error::Invalid(format!(
            "the snapshot's file {} is not a SQLite database (it was captured as a plain file), so it cannot be restored in place through SQLite; restore it with `snapback restore {} DEST` instead; nothing was written",
            file.path,
            snap.id.short()
        )));
    }
    Ok(file)
}

/// Refuses a live database that cannot be restored in place: missing, a
/// directory, not a SQLite database.
pub fn check_live_path(live: &Path) -> Result<()> {
    let meta = std::fs::metadata(live).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "{} does not exist: an in-place restore writes into an existing live database. To create it from the snapshot, use `snapback restore SNAP {}` (without --in-place); nothing was written",
                live.display(),
                live.display()
            ))
        } else {
            Error::io(live, "cannot read the live database", e)
        }
    })?;
    if meta.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a directory: give the live database file itself (LIVE_DB); nothing was written",
            live.display()
        )));
    }
    let header = crate::sqlite::has_sqlite_header(live)
        .map_err(|e| Error::io(live, "cannot read the live database", e))?;
    if !header {
        return Err(Error::Input {
            path: live.to_path_buf(),
            message: "is not a SQLite database (no SQLite header): an in-place restore writes into the live database through SQLite, so LIVE_DB must be one; nothing was written".into(),
        });
    }
    Ok(())
}

/// Refuses a live database that cannot be written: the file (open for
/// writing, without changing it) and its directory (where SQLite creates
/// its journal, or the -wal and -shm files).
pub fn check_writable(live: &Path) -> Result<()> {
    let ro = |what: &str, e: std::io::Error| {
        Error::Invalid(format!(
            "{} cannot be written ({what}: {e}); an in-place restore writes into it through SQLite, so nothing was written. Make it writable for this user, or restore to a new file with `snapback restore SNAP NEW_FILE`",
            live.display()
        ))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(live)
        .map_err(|e| ro("the file", e))?;
    let dir = live
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".snapback-inplace-{}.probe", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| ro("its directory, where SQLite keeps its journal", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// True when page 1 of the live database and of the snapshot are the same
/// but for the header bytes the pager writes itself.
fn same_page1(live: &[u8], snap: &[u8]) -> bool {
    if live.len() != snap.len() || live.len() < 100 {
        return live == snap;
    }
    let masked = |i: usize| PAGER_OWNED.iter().any(|r| r.contains(&i));
    live.iter()
        .zip(snap)
        .enumerate()
        .all(|(i, (a, b))| a == b || masked(i))
}

/// Whether no other connection committed to the live database between the
/// compare and the write transaction `w` (in which no writer can commit):
/// the same `PRAGMA data_version` when the compare was `w`'s own read;
/// else, in WAL mode, a wal-index still ending at the position the
/// compare's image included (a commit moves it, a restart changes the
/// salts); with a rollback journal, the same file change counter and page
/// count in the header (bytes 24..40, which SQLite's own connections
/// compare to learn whether their cache is stale: every commit in rollback
/// mode increments the counter).
fn unchanged_since(w: &PageWriter, live: &Path, compared: &Compared) -> Result<bool> {
    if let Some(v) = compared.version {
        return Ok(w.data_version()? == v);
    }
    let img = &compared.img;
    let now = crate::delta::before(live);
    if (now.dev, now.ino) != (compared.seen.dev, compared.seen.ino)
        || w.page_count != img.page_count
        || w.page1.len() < 40
        || img.page1.len() < 40
    {
        return Ok(false);
    }
    if journal_mode_of_header(&w.page1) == "wal" {
        return Ok(match (compared.position, now.index) {
            (Some(p), Some(i)) => i.salts == p.salts && i.mx_frame == p.frame,
            _ => false,
        });
    }
    Ok(w.page1[24..40] == img.page1[24..40])
}

fn cookie(page1: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&page1[SCHEMA_COOKIE]);
    u32::from_be_bytes(b)
}

/// The chunk ids of an image, cut into chunks of `size` bytes, hashed in
/// parallel.
fn hash_chunks(codec: &crate::pack::BlobCodec, buf: &[u8], size: usize) -> Vec<ChunkRef> {
    buf.par_chunks(size)
        .map(|c| ChunkRef {
            id: codec.blob_id(c),
            len: c.len() as u32,
        })
        .collect()
}

fn chunk_size_of(file: &FileEntry, page_size: u32) -> Result<u64> {
    match file.chunking {
        Chunking::Fixed { size } if size > 0 && size % page_size == 0 => Ok(size as u64),
        _ => Err(Error::corrupt(
            format!("manifest entry of {}", file.path),
            "a SQLite database whose chunks are not whole pages",
        )),
    }
}

impl Repository {
    fn target(&self, index: &MasterIndex, snap: &Snapshot, file: &FileEntry) -> Result<Target> {
        let facts = file.sqlite.as_ref().ok_or_else(|| {
            Error::Invalid(format!(
                "the snapshot's file {} is not a SQLite database",
                file.path
            ))
        })?;
        let page_size = facts.page_size;
        let chunk_size = chunk_size_of(file, page_size)?;
        let chunks = self.proven_chunks(index, file)?;
        // Chunk i is written at page i * chunk_pages + 1: every chunk but
        // the last must be chunk_size long, and their count must cover the
        // file exactly, or pages would land in the wrong place.
        let (n, last) = (chunks.len() as u64, chunks.len().saturating_sub(1));
        let misplaced = chunks.iter().enumerate().position(|(i, c)| {
            (i < last && c.len as u64 != chunk_size) || c.len as u64 > chunk_size
        });
        if misplaced.is_some() || n != file.size.div_ceil(chunk_size.max(1)) {
            return Err(Error::Invalid(format!(
                "the snapshot's database {} of snapshot {} has {n} chunk(s) that do not match its chunking of {chunk_size}-byte chunks ({} bytes), so its pages cannot be placed in the live database; nothing was written. Restore it to a new file with `snapback restore SNAP NEW_FILE` (which places each chunk by its own length) and move the application to it",
                file.path,
                snap.describe(),
                file.size
            )));
        }
        let first = chunks.first().ok_or_else(|| {
            Error::Invalid(format!(
                "the snapshot's database {} is empty (0 pages); there is nothing to restore in place; nothing was written",
                file.path
            ))
        })?;
        let blob = self.read_blob(index, &first.id)?;
        if blob.len() < page_size as usize || !blob.starts_with(crate::sqlite::SQLITE_MAGIC) {
            return Err(Error::Invalid(format!(
                "the snapshot's file {} of snapshot {} does not start with a SQLite header, so it is not a SQLite database image; nothing was written",
                file.path,
                snap.describe()
            )));
        }
        let page1 = blob[..page_size as usize].to_vec();
        Ok(Target {
            file: file.clone(),
            chunk_pages: chunk_size / page_size as u64,
            pages: file.size / page_size as u64,
            page_size,
            page1,
            chunks,
        })
    }

    /// The refusals that need only both first pages: page size, journal
    /// mode.
    fn check_compatible(
        &self,
        t: &Target,
        live: &Path,
        live_ps: u32,
        live_page1: &[u8],
    ) -> Result<()> {
        if live_ps != t.page_size {
            return Err(Error::Invalid(format!(
                "the page size differs: the snapshot's database {} has {} byte pages, the live database {} has {}; an in-place restore writes whole pages, so nothing was written. Restore to a new file with `snapback restore SNAP NEW_FILE` and move the application to it",
                t.file.path,
                t.page_size,
                live.display(),
                live_ps
            )));
        }
        let (snap_mode, live_mode) = (
            journal_mode_of_header(&t.page1),
            journal_mode_of_header(live_page1),
        );
        if snap_mode != live_mode || t.page1[18..20] != live_page1[18..20] {
            return Err(Error::Invalid(format!(
                "the journal mode differs: the snapshot's database was in {snap_mode} mode (header bytes 18-19 = {}, {}), the live database is in {live_mode} mode ({}, {}). Header bytes 18 and 19 tell every connection whether to use the WAL, so writing the snapshot's page 1 would switch the application's database to another journal mode under it; nothing was written. Set the live database to the snapshot's mode first (PRAGMA journal_mode) while the application is stopped, or restore to a new file with `snapback restore SNAP NEW_FILE`",
                t.page1[18],
                t.page1[19],
                live_page1[18],
                live_page1[19]
            )));
        }
        Ok(())
    }

    /// Reads the live image once (through `read`) and hashes it in the
    /// target's chunking, and in the pre-restore snapshot's when that
    /// differs (`pre_chunk_size`), on every core.
    fn hash_live(
        &self,
        t: &Target,
        live_pages: u64,
        live_page1: &[u8],
        pre_chunk_size: Option<u64>,
        read: &ReadPages<'_>,
    ) -> Result<LiveImage> {
        let ps = t.page_size as u64;
        let chunk_size = (t.chunk_pages * ps) as usize;
        let per_call = ((8 << 20) / chunk_size).max(1) * t.chunk_pages as usize;
        let mut refs: Vec<ChunkRef> =
            Vec::with_capacity(live_pages as usize / t.chunk_pages as usize + 1);
        let pre_cs = pre_chunk_size.filter(|&cs| cs as usize != chunk_size);
        let mut pre_refs: Vec<ChunkRef> = Vec::new();
        let codec = self.codec();
        let mut sink = |buf: Vec<u8>| -> Result<()> {
            refs.extend(hash_chunks(codec, &buf, chunk_size));
            if let Some(cs) = pre_cs {
                pre_refs.extend(hash_chunks(codec, &buf, cs as usize));
            }
            Ok(())
        };
        read(per_call, &mut sink)?;
        Ok(LiveImage {
            page_count: live_pages,
            page1: live_page1.to_vec(),
            refs,
            pre_refs: pre_cs.map(|cs| (cs / ps, pre_refs)),
        })
    }

    /// Begins a read transaction on `live` and refuses what the snapshot's
    /// image cannot be written into (page size, journal mode, another
    /// database); the transaction and the live page 1.
    fn begin_compatible(
        &self,
        t: &Target,
        live: &Path,
        lock_wait: Duration,
    ) -> Result<(Capture, Vec<u8>)> {
        let cap = Capture::begin(live, lock_wait)?;
        let mut live_page1 = Vec::new();
        cap.read_listed(&[1], 1, |_, b| {
            live_page1 = b;
            Ok(())
        })?;
        self.check_compatible(t, live, cap.page_size, &live_page1)?;
        Ok((cap, live_page1))
    }

    /// The dry run of an in-place restore: what would change.
    pub fn plan_in_place(
        &self,
        snap: &Snapshot,
        live: &Path,
        opts: &InPlaceOptions,
    ) -> Result<InPlaceReport> {
        check_live_path(live)?;
        let file = choose_file(snap, live, opts.path.as_deref())?;
        let lock = self.read_lock("restore", opts.lock_wait, opts.no_lock)?;
        let index = self.index()?;
        let t = self.target(&index, snap, file)?;
        let (cap, live_page1) = self.begin_compatible(&t, live, opts.lock_wait)?;
        let img = self.hash_live(&t, cap.page_count, &live_page1, None, &|n, sink| {
            cap.read_pages(n, sink)
        })?;
        let cmp = diff(&t, &img);
        let live_pages = cap.page_count;
        cap.finish()?;
        Ok(report(snap, &t, live, live_pages, &cmp, lock.state))
    }

    /// Restores `snap`'s database into the live database `live` in place,
    /// in one write transaction, after a pre-restore snapshot (see the
    /// module's comment). Refuses, with nothing written, whatever it cannot
    /// do whole.
    pub fn restore_in_place(
        &self,
        snap: &Snapshot,
        live: &Path,
        opts: &InPlaceOptions,
        progress: &dyn Fn(&str),
    ) -> Result<InPlaceReport> {
        check_live_path(live)?;
        let file = choose_file(snap, live, opts.path.as_deref())?;
        check_writable(live)?;
        let lock = self.read_lock("restore", opts.lock_wait, opts.no_lock)?;
        let index = self.index()?;
        let t = self.target(&index, snap, file)?;
        {
            // The refusals that need no write lock, before anything is
            // written anywhere.
            let (cap, _) = self.begin_compatible(&t, live, opts.lock_wait)?;
            cap.finish()?;
        }
        // A read transaction held from before the pre-restore snapshot to
        // the end (WAL mode only; it never blocks a writer): the WAL then
        // restarts at most once, where the pin began, so that what is
        // committed after the snapshot and after the compare stays
        // readable from the WAL's frames (see `watch`), and the snapshot
        // taken again under the write lock is a delta capture.
        let pin = crate::watch::Pin::begin(live, opts.lock_wait)?;
        let pinned_opts;
        let opts = if pin.is_some() {
            let mut o = opts.clone();
            o.snapshot.pin_session = Some(crate::watch::new_session());
            pinned_opts = o;
            &pinned_opts
        } else {
            opts
        };
        progress("taking a pre-restore snapshot of the live database");
        let (mut pre, image) = self.pre_restore_snapshot(live, &t.file.path, opts)?;
        progress(&format!("pre-restore snapshot {}", pre.0.short()));

        let mut w = PageWriter::open(live, opts.lock_wait)?;
        let pre_chunk = chunk_size_of(&pre.1, t.page_size)?;
        // The compare is the pre-restore snapshot's own read when that
        // read's image is in the target's chunking (it always is within
        // one repository); else a read transaction of its own.
        let from_capture = image.filter(|im| {
            im.page_size == t.page_size
                && pre_chunk == t.chunk_pages * t.page_size as u64
                && im.refs.len() as u64 == pre.1.chunks.count
                && checksum_of(&im.refs).to_hex() == pre.1.db_checksum
        });
        let mut full_reads = u32::from(matches!(
            pre.1.sqlite.as_ref().and_then(|s| s.capture.as_ref()),
            Some(crate::manifest::CaptureMethod::FullScan { .. })
        ));
        let compared = match from_capture {
            Some(im) => {
                self.check_compatible(&t, live, im.page_size, &im.page1)?;
                let wal_mode = journal_mode_of_header(&im.page1) == "wal";
                Compared {
                    pinned: pin.is_some(),
                    position: im.position.filter(|_| wal_mode),
                    seen: im.before,
                    version: None,
                    img: LiveImage {
                        page_count: im.page_count,
                        page1: im.page1,
                        refs: im.refs,
                        pre_refs: None,
                    },
                }
            }
            None => {
                full_reads += 1;
                self.compare_read(&mut w, &t, live, pre_chunk, pin.is_some())?
            }
        };
        let cmp = diff(&t, &compared.img);
        progress(&format!(
            "compared: {} pages differ; fetching them before taking the write lock",
            cmp.rewritten + cmp.added
        ));
        let mut blobs = self.prefetch(&index, &t, &cmp)?;

        w.begin_write(opts.lock_wait)?;
        // How long writers are kept out: from the write lock to the end of
        // the transaction (logged; the benchmark reads it).
        let held = std::time::Instant::now();
        let r = self.write_in(
            &w,
            &t,
            live,
            opts,
            (&mut pre, compared),
            &mut blobs,
            progress,
        );
        let (cmp, live_pages, recheck) = match r {
            Ok(x) => x,
            Err(e) => {
                let _ = w.rollback();
                return Err(e);
            }
        };
        let applied = !cmp.chunks.is_empty() || cmp.removed > 0;
        if applied {
            // A test hook: the crash tests kill the restore here, inside
            // the write transaction, with every page written.
            crate::snapshot::pause_for_tests("SNAPBACK_TEST_DELAY_BEFORE_COMMIT_MS");
            w.commit()?;
            tracing::info!(live = %live.display(), snapshot = %snap.id.short(), pages = cmp.rewritten + cmp.added, removed = cmp.removed, "restored in place");
        } else {
            w.rollback()?;
        }
        tracing::info!(
            held_ms = held.elapsed().as_millis() as u64,
            recheck = ?recheck,
            "write transaction ended"
        );
        let mut rep = report(snap, &t, live, live_pages, &cmp, lock.state);
        rep.applied = applied;
        rep.pre_restore_snapshot = Some(pre.0);
        rep.recheck = Some(recheck);
        rep.full_reads = full_reads + u32::from(recheck == Recheck::FullRead);
        drop(pin);
        Ok(rep)
    }

    /// The compare in a read transaction of `w`'s own (which keeps no
    /// writer waiting in WAL mode), in the target's chunking and the
    /// pre-restore snapshot's; where the WAL stood before it began.
    fn compare_read(
        &self,
        w: &mut PageWriter,
        t: &Target,
        live: &Path,
        pre_chunk: u64,
        pinned: bool,
    ) -> Result<Compared> {
        let seen = crate::delta::before(live);
        w.begin_read()?;
        let read = self
            .check_compatible(t, live, w.page_size, &w.page1)
            .and_then(|()| {
                let img =
                    self.hash_live(t, w.page_count, &w.page1, Some(pre_chunk), &|n, sink| {
                        w.read_pages(n, sink)
                    })?;
                Ok((img, w.data_version()?))
            });
        let ended = w.end_read();
        let (img, version) = read?;
        ended?;
        let wal_mode = journal_mode_of_header(&img.page1) == "wal";
        Ok(Compared {
            pinned,
            position: crate::delta::position_of_full_scan(live, &seen, wal_mode, t.page_size),
            seen,
            version: Some(version),
            img,
        })
    }

    /// Fetches the blobs of the differing chunks, up to `PREFETCH_BYTES`,
    /// before the write lock is taken (each verified against its id).
    fn prefetch(&self, index: &MasterIndex, t: &Target, cmp: &Comparison) -> Result<Blobs> {
        let mut ids = Vec::new();
        let mut bytes = 0u64;
        for &i in &cmp.chunks {
            bytes += t.chunks[i].len as u64;
            if bytes > PREFETCH_BYTES {
                break;
            }
            ids.push(t.chunks[i].id);
        }
        self.fetch_map(index, &ids, t)
    }

    fn fetch_map(&self, index: &MasterIndex, ids: &[Id], t: &Target) -> Result<Blobs> {
        let got = std::sync::Mutex::new(Blobs::new());
        let place = format!("chunk list of {}", t.file.path);
        self.fetch_blobs(index, ids, &place, &|id, raw| {
            got.lock()
                .map_err(|_| crate::repo::poisoned())?
                .insert(*id, raw.to_vec());
            Ok(())
        })?;
        got.into_inner().map_err(|_| crate::repo::poisoned())
    }

    /// Inside the write transaction: find what changed since the compare
    /// (nothing, when the data version says no other connection committed;
    /// else the pages of the WAL frames committed since, or a full read
    /// when those cannot be known), make sure the pre-restore snapshot is
    /// the state being replaced, then write, verify, cut.
    #[allow(clippy::too_many_arguments)]
    fn write_in(
        &self,
        w: &PageWriter,
        t: &Target,
        live: &Path,
        opts: &InPlaceOptions,
        (pre, compared): (&mut (Id, FileEntry), Compared),
        blobs: &mut Blobs,
        progress: &dyn Fn(&str),
    ) -> Result<(Comparison, u64, Recheck)> {
        self.check_compatible(t, live, w.page_size, &w.page1)?;
        let pre_chunk = chunk_size_of(&pre.1, w.page_size)?;
        let full = |this: &Self| {
            this.hash_live(t, w.page_count, &w.page1, Some(pre_chunk), &|n, sink| {
                w.read_pages(n, sink)
            })
        };
        let (mut img, mut recheck) = if unchanged_since(w, live, &compared)? {
            (compared.img, Recheck::Unchanged)
        } else {
            match self.patch_from_wal(w, t, live, compared) {
                Ok((img, n)) => (img, Recheck::WalPages(n)),
                Err(why) => {
                    tracing::info!(why = %why, "the live database changed since the compare; comparing it again in full inside the write transaction");
                    (full(self)?, Recheck::FullRead)
                }
            }
        };
        if img.pre_checksum() != pre.1.db_checksum {
            // A writer committed after the pre-restore snapshot: take it
            // again, now that no writer can commit, so that undoing gives
            // back exactly what this restore replaces.
            progress("the live database changed since the pre-restore snapshot; taking it again while holding the write lock");
            *pre = self.pre_restore_snapshot(live, &t.file.path, opts)?.0;
            progress(&format!("pre-restore snapshot {}", pre.0.short()));
            let agrees = |img: &LiveImage| {
                chunk_size_of(&pre.1, w.page_size).ok() == Some(pre_chunk)
                    && img.pre_checksum() == pre.1.db_checksum
            };
            if !agrees(&img) && recheck != Recheck::FullRead {
                tracing::warn!("the pre-restore snapshot taken under the write lock does not match the pages re-checked since the compare; comparing in full");
                img = full(self)?;
                recheck = Recheck::FullRead;
            }
            if !agrees(&img) {
                return Err(Error::Verification(format!(
                    "the pre-restore snapshot {} taken while holding the write lock of {} does not match the database as the write transaction reads it; the transaction was rolled back and nothing was written",
                    pre.0.short(),
                    live.display()
                )));
            }
        }
        let cmp = diff(t, &img);
        if cmp.chunks.is_empty() && cmp.removed == 0 {
            return Ok((cmp, w.page_count, recheck));
        }
        self.write_pages(w, t, live, &cmp, blobs)?;
        Ok((cmp, w.page_count, recheck))
    }

    /// The image compared before the write lock, brought up to the write
    /// transaction's by re-hashing the chunks of the pages in the WAL
    /// frames committed since; or why that cannot be trusted.
    fn patch_from_wal(
        &self,
        w: &PageWriter,
        t: &Target,
        live: &Path,
        compared: Compared,
    ) -> std::result::Result<(LiveImage, usize), String> {
        let pos = compared
            .position
            .ok_or("the WAL position of the compare is not known (a rollback journal, or the WAL was restarting)")?;
        let state = CaptureState {
            version: crate::capture_state::new_state_version(),
            repo_id: String::new(),
            path: String::new(),
            host: String::new(),
            pid: 0,
            dev: compared.seen.dev,
            ino: compared.seen.ino,
            page_size: t.page_size,
            wal_salts: hex::encode(pos.salts),
            frame: pos.frame,
            frame_cksum: pos.cksum,
            manifest: Id([0; 32]),
            page_count: compared.img.page_count,
            db_checksum: String::new(),
            session: None,
            wal_ckpt: pos.ckpt,
            point: None,
            db_file: Some(compared.seen.db_file()),
        };
        // No writer can commit while the write lock is held: the WAL is
        // what this transaction reads.
        let now = crate::delta::before(live);
        let changed = crate::delta::changed_pages(
            live,
            &now,
            true,
            &state,
            t.page_size,
            w.page_count,
            compared.pinned,
        )?;
        let mut img = compared.img;
        let codec = self.codec();
        let read = |p: u64| w.read_page(p).map_err(|e| e.to_string());
        patch_refs(
            codec,
            &mut img.refs,
            t.chunk_pages,
            &changed,
            w.page_count,
            &read,
        )?;
        if let Some((cp, refs)) = img.pre_refs.as_mut() {
            patch_refs(codec, refs, *cp, &changed, w.page_count, &read)?;
        }
        img.page_count = w.page_count;
        img.page1 = w.page1.clone();
        tracing::debug!(
            pages = changed.pages.len(),
            "re-hashed the pages of the WAL frames committed since the compare"
        );
        Ok((img, changed.pages.len()))
    }

    /// Writes the differing chunks' pages, reads them back, writes page 1
    /// last and cuts the database to the snapshot's page count.
    fn write_pages(
        &self,
        w: &PageWriter,
        t: &Target,
        live: &Path,
        cmp: &Comparison,
        blobs: &mut Blobs,
    ) -> Result<()> {
        let live_schema = w.schema_hash()?;
        let index = self.index()?;
        let ps = t.page_size as usize;
        let lock_byte_page = crate::delta::lock_byte_page(t.page_size);
        let mut written: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut pages_written = 0u64;
        let mut page1: Option<Vec<u8>> = None;
        // A batch of chunks at a time: those not fetched before the write
        // lock fetched in parallel (each blob verified against its id as
        // it is opened), then written in order.
        for batch in cmp.chunks.chunks(FETCH_BATCH) {
            let missing: Vec<Id> = batch
                .iter()
                .map(|&i| t.chunks[i].id)
                .filter(|id| !blobs.contains_key(id))
                .collect();
            if !missing.is_empty() {
                blobs.extend(self.fetch_map(&index, &missing, t)?);
            }
            for &i in batch {
                let c = &t.chunks[i];
                let blob = blobs
                    .get(&c.id)
                    .filter(|b| b.len() == c.len as usize)
                    .ok_or_else(|| {
                        Error::corrupt(
                            format!("chunk {} of {}", c.id.short(), t.file.path),
                            "was not fetched whole",
                        )
                    })?;
                for (k, page) in blob.chunks(ps).enumerate() {
                    let pgno = i as u64 * t.chunk_pages + k as u64 + 1;
                    if pgno == lock_byte_page || page.len() != ps {
                        // SQLite never uses the lock-byte page, and refuses
                        // to write it.
                        continue;
                    }
                    if pgno == 1 {
                        let mut data = page.to_vec();
                        fix_schema_cookie(&mut data, &w.page1, t, live_schema)?;
                        page1 = Some(data);
                        continue;
                    }
                    w.write_page(pgno, page)?;
                    pages_written += 1;
                    if pgno <= w.page_count {
                        written.push((pgno, page.to_vec()));
                    }
                }
            }
            // Every page written reads back as written (the blobs were verified
            // against their ids as they were read): with the pages that matched,
            // the transaction's view is the snapshot's image. sqlite_dbpage
            // shows the transaction only the pages up to the database's former
            // end; the pages added past it are the pager's new pages, written
            // with the same verified content. The order is pages, read-backs,
            // page 1 (the header and the schema's root), the cut: reading pages
            // through sqlite_dbpage after page 1 was written made SQLite call
            // the database malformed at the cut or at COMMIT (restore_inplace_tests
            // found it; the order keeps it from happening).
            for (pgno, data) in &written {
                if w.read_page(*pgno)? != *data {
                    return Err(Error::Verification(format!(
                        "page {pgno} of {} did not read back as written; the transaction was rolled back and nothing was written",
                        live.display()
                    )));
                }
            }
            written.clear();
            for &i in batch {
                blobs.remove(&t.chunks[i].id);
            }
        }
        if let Some(data) = &page1 {
            w.write_page(1, data)?;
        }
        // The cut is the last write (a page written after it would cancel
        // it); SQLite applies it as it commits.
        if t.pages < w.page_count {
            w.truncate(t.pages)?;
        }
        tracing::debug!(
            written = pages_written + u64::from(page1.is_some()),
            "pages written and read back"
        );
        Ok(())
    }

    /// Takes the pre-restore snapshot of `live`; refuses (nothing written)
    /// when it fails. Returns its id and its entry for `live`, and the
    /// image its capture read (see `CapturedImage`), when it kept one.
    fn pre_restore_snapshot(
        &self,
        live: &Path,
        target_path: &str,
        opts: &InPlaceOptions,
    ) -> Result<((Id, FileEntry), Option<CapturedImage>)> {
        let mut sopts = opts.snapshot.clone();
        sopts.tags = vec![PRE_RESTORE_TAG.to_string()];
        // The live database is about to become the target's: a live
        // database never captured before compresses with the target's
        // dictionary rather than training one of its own.
        sopts.dict_from = Some(target_path.to_string());
        let fail = |why: String| {
            Error::Invalid(format!(
                "the pre-restore snapshot of {} failed, so nothing was written: {why}",
                live.display()
            ))
        };
        let (r, images) = self
            .snapshot_keeping_images(&[live.to_path_buf()], &sopts, &NoProgress, true)
            .map_err(|e| match e.kind() {
                crate::Kind::Locked => Error::Locked(format!(
                    "the pre-restore snapshot of {} could not be taken: {e}; nothing was written",
                    live.display()
                )),
                _ => Error::context(
                    format!(
                        "the pre-restore snapshot of {} failed, so nothing was written",
                        live.display()
                    ),
                    e,
                ),
            })?;
        if let Some(f) = r.failed.first() {
            return Err(fail(f.reason.clone()));
        }
        let entry = r
            .manifest
            .files
            .iter()
            .find(|f| f.kind == FileKind::Sqlite)
            .cloned()
            .ok_or_else(|| fail("it holds no database".into()))?;
        let image = images.into_iter().find(|im| im.path == entry.path);
        Ok(((r.id, entry), image))
    }
}

/// Other connections keep their parsed schema while the schema cookie
/// stays the same: when the snapshot's schema differs from the live one
/// but its cookie is the live one's, the page written gets the live cookie
/// plus one, so that every connection reads the schema again.
fn fix_schema_cookie(
    page1: &mut [u8],
    live_page1: &[u8],
    t: &Target,
    live_schema: Id,
) -> Result<()> {
    let snap_schema = t.file.sqlite.as_ref().map(|s| s.schema_hash);
    if cookie(page1) == cookie(live_page1) && snap_schema != Some(live_schema) {
        let bumped = cookie(live_page1).wrapping_add(1).max(1);
        page1[SCHEMA_COOKIE].copy_from_slice(&bumped.to_be_bytes());
        tracing::info!(cookie = bumped, "schema cookie raised: the snapshot's schema differs from the live one under the same cookie");
    }
    Ok(())
}

fn report(
    snap: &Snapshot,
    t: &Target,
    live: &Path,
    live_pages: u64,
    cmp: &Comparison,
    lock: LockState,
) -> InPlaceReport {
    InPlaceReport {
        snapshot: snap.id,
        file: t.file.path.clone(),
        live: live.to_path_buf(),
        page_size: t.page_size,
        journal_mode: journal_mode_of_header(&t.page1).to_string(),
        live_pages,
        snapshot_pages: t.pages,
        pages_rewritten: cmp.rewritten,
        pages_added: cmp.added,
        pages_removed: cmp.removed,
        applied: false,
        pre_restore_snapshot: None,
        lock,
        recheck: None,
        full_reads: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page1_is_compared_without_the_bytes_the_pager_writes() {
        let mut a = vec![7u8; 4096];
        let mut b = a.clone();
        for r in PAGER_OWNED {
            for i in r {
                b[i] = 0xee;
            }
        }
        assert!(same_page1(&a, &b));
        b[40] ^= 1; // the schema cookie is not the pager's
        assert!(!same_page1(&a, &b));
        a[40] ^= 1;
        a[4000] ^= 1;
        assert!(!same_page1(&a, &b));
    }
}
