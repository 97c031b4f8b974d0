//! One point of a database, read through the mount's reader: the same
//! lazy, verified, cached reads that `snapback mount` serves (the chunk
//! list bound to the manifest's checksum before a byte is read, each chunk
//! verified against its id, a memory cache, read-ahead for scans, a WAL
//! database's header served as rollback). No code of its own reads chunks.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use snapback_core::{
    FileEntry, FileKind, FileReader, Id, ProvenReader, Repository, Selector, Snapshot,
};
use snapback_mount::{Vfs, VfsError, VfsOptions, View};

use crate::scan::ScanState;
use crate::Error;

/// The largest range read of one pack that fetches pages ahead of a scan:
/// a few of them per interior page, run in parallel by the fetch workers.
const SCAN_FETCH_SPAN: u64 = 256 << 10;

/// What a point's reads cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads SQLite made.
    pub reads: u64,
    /// Chunks (pages) fetched from the repository and verified.
    pub chunks_fetched: u64,
    /// Bytes of those chunks.
    pub bytes_fetched: u64,
    /// Chunk reads served from the memory cache.
    pub cache_hits: u64,
    /// Pages of the database.
    pub pages: u64,
    /// Pages' worth of bytes fetched (`bytes_fetched` / page size).
    pub pages_read: u64,
    /// Chunks queued to be fetched ahead of a scan (`scan.rs`).
    pub prefetched: u64,
}

/// An open database file of one point.
pub struct PointFile {
    vfs: Vfs,
    fh: u64,
    size: u64,
    page_size: u64,
    label: String,
    errors: AtomicU64,
    scan: Mutex<ScanState>,
    /// The pages read so far, when asked for (`with_page_tracking`).
    touched: Option<Mutex<BTreeSet<u64>>>,
    /// Whether a scan's read-ahead (`scan.rs`) is on: off while a diff
    /// reads only the pages it chose (`set_scan_readahead`).
    scan_ahead: AtomicBool,
}

impl std::fmt::Debug for PointFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointFile")
            .field("label", &self.label)
            .finish()
    }
}

impl PointFile {
    /// Opens `file` of `snap` (a snapshot or a timeline point).
    pub fn open(
        repo: Arc<Repository>,
        snap: &Snapshot,
        file: &FileEntry,
        opts: VfsOptions,
    ) -> Result<PointFile, Error> {
        Self::open_with(repo, snap, file, opts, None)
    }

    /// `open`, with the chunk layout proven for `file` already
    /// (`snapback_core::PointWalk::prove`) instead of loading and proving
    /// it again.
    pub fn open_with(
        repo: Arc<Repository>,
        snap: &Snapshot,
        file: &FileEntry,
        opts: VfsOptions,
        proven: Option<ProvenReader>,
    ) -> Result<PointFile, Error> {
        let label = format!("{} of {}", file.path, snap.describe());
        if file.kind != FileKind::Sqlite {
            return Err(Error::Input(format!(
                "{label} was captured as a plain file, not as a SQLite database"
            )));
        }
        let read = |e: VfsError| Error::Read {
            what: label.clone(),
            cause: e,
        };
        let vfs = Vfs::new(repo, View::One(snap.clone()), opts).map_err(read)?;
        let entry = vfs.resolve(&file.path).map_err(read)?;
        let opened = match proven {
            Some(p) => vfs.open_proven(entry.attr.ino, p),
            None => vfs.open(entry.attr.ino, false),
        }
        .map_err(read)?;
        Ok(PointFile {
            vfs,
            fh: opened.fh,
            size: entry.attr.size,
            page_size: file
                .sqlite
                .as_ref()
                .map_or(4096, |s| u64::from(s.page_size))
                .max(1),
            label,
            errors: AtomicU64::new(0),
            scan: Mutex::new(ScanState::default()),
            touched: None,
            scan_ahead: AtomicBool::new(true),
        })
    }

    /// Notes every page read from now on (`pages_touched`).
    pub fn with_page_tracking(mut self) -> PointFile {
        self.touched = Some(Mutex::new(BTreeSet::new()));
        self
    }

    /// The pages (numbered from 1, as SQLite numbers them) read so far,
    /// when the file tracks them. Whatever SQLite answered from this point
    /// depends only on the bytes of these pages.
    pub fn pages_touched(&self) -> Option<BTreeSet<u64>> {
        Some(self.touched.as_ref()?.lock().ok()?.clone())
    }

    /// "PATH of snapshot …".
    pub fn describe(&self) -> &str {
        &self.label
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads into `buf` at `offset`; the bytes read (fewer only at the end
    /// of the file). Every byte is verified; any failure fails the read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, VfsError> {
        let want = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        if let Some(t) = &self.touched {
            if let Ok(mut t) = t.lock() {
                let last = offset.saturating_add(buf.len().max(1) as u64 - 1);
                t.extend(offset / self.page_size + 1..=last / self.page_size + 1);
            }
        }
        let d = self.vfs.read(self.fh, offset, want)?;
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        if n as u64 == self.page_size && offset.is_multiple_of(self.page_size) {
            self.read_ahead(offset, &buf[..n]);
        }
        Ok(n)
    }

    /// Turns the read-ahead along a scanned b-tree (`scan.rs`) on or off:
    /// off, SQLite's reads fetch exactly the pages they read.
    pub fn set_scan_readahead(&self, on: bool) {
        self.scan_ahead.store(on, Ordering::Relaxed);
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The point's proven chunk layout: every chunk's id, known without
    /// fetching it.
    pub fn layout(&self) -> Result<Arc<FileReader>, Error> {
        self.vfs.layout(self.fh).map_err(|e| self.error(e))
    }

    fn error(&self, cause: VfsError) -> Error {
        Error::Read {
            what: self.label.clone(),
            cause,
        }
    }

    /// The id the point's chunk of these bytes would have: equal to a
    /// chunk list's entry exactly when the bytes are that chunk's.
    pub fn chunk_id_of(&self, raw: &[u8]) -> Id {
        self.vfs.chunk_id_of(raw)
    }

    /// Reads whole pages (numbered from 1), each verified, in the order
    /// given: the missing ones are fetched first in parallel (range reads
    /// of one pack of up to 256 KiB), and no other page is fetched ahead.
    pub fn read_pages(&self, pgnos: &[u32]) -> Result<Vec<Vec<u8>>, Error> {
        let ps = self.page_size;
        let ranges: Vec<(u64, u64)> = pgnos
            .iter()
            .map(|&p| ((u64::from(p).max(1) - 1) * ps, ps))
            .collect();
        self.vfs.prefetch(self.fh, &ranges, SCAN_FETCH_SPAN);
        let want = u32::try_from(ps).unwrap_or(u32::MAX);
        ranges
            .iter()
            .zip(pgnos)
            .map(|(&(off, _), &p)| {
                if let Some(t) = &self.touched {
                    if let Ok(mut t) = t.lock() {
                        t.insert(u64::from(p));
                    }
                }
                let d = self
                    .vfs
                    .read(self.fh, off, want)
                    .map_err(|e| self.error(e))?;
                if d.len() as u64 != ps {
                    return Err(Error::Input(format!(
                        "page {p} of {} is past its end",
                        self.label
                    )));
                }
                Ok(d)
            })
            .collect()
    }

    /// A whole page was read: fetch ahead the pages of the b-tree being
    /// scanned, if it is (`scan.rs`).
    fn read_ahead(&self, offset: u64, page: &[u8]) {
        if !self.scan_ahead.load(Ordering::Relaxed) {
            return;
        }
        let Ok(pgno) = u32::try_from(offset / self.page_size + 1) else {
            return;
        };
        let ahead = match self.scan.lock() {
            Ok(mut s) => s.on_read(pgno, page),
            Err(_) => return,
        };
        if ahead.is_empty() {
            return;
        }
        let ranges: Vec<(u64, u64)> = ahead
            .iter()
            .map(|&p| ((u64::from(p) - 1) * self.page_size, self.page_size))
            .collect();
        self.vfs.prefetch(self.fh, &ranges, SCAN_FETCH_SPAN);
    }

    /// Logs a failed read (SQLite gets SQLITE_IOERR_READ).
    pub(crate) fn note_error(&self, offset: u64, len: usize, e: &VfsError) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < 5 {
            tracing::warn!(point = %self.label, offset, len, error = %e, "a read of the point failed; SQLite gets an I/O error");
        }
    }

    pub fn stats(&self) -> ReadStats {
        let f = self.vfs.fetch_stats();
        let bytes_fetched = f.fetched_bytes.load(Ordering::Relaxed);
        ReadStats {
            reads: self.vfs.stats.reads.load(Ordering::Relaxed),
            chunks_fetched: f.chunks_fetched.load(Ordering::Relaxed),
            bytes_fetched,
            cache_hits: f.mem_hits.load(Ordering::Relaxed),
            pages: self.size.div_ceil(self.page_size),
            pages_read: bytes_fetched.div_ceil(self.page_size),
            prefetched: f.prefetches.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PointFile {
    fn drop(&mut self) {
        self.vfs.release(self.fh);
    }
}

/// The parameters of a `file:PATH?vfs=snapback&repo=…&at=…` URI.
#[derive(Debug, Clone, Default)]
pub struct UriParams {
    pub repo: Option<String>,
    pub at: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_path_style: Option<String>,
}

/// `at=`: a time (the newest point at or before it), or any selector
/// (`latest`, `@TIME`, an id, `SEGMENT/INDEX`).
pub fn parse_at(at: Option<&str>) -> Result<Selector, Error> {
    let at = at.map(str::trim).filter(|a| !a.is_empty());
    let text = match at {
        None => "latest".to_string(),
        Some(a) if a.as_bytes().first().is_some_and(u8::is_ascii_digit) && a.contains('T') => {
            format!("@{a}")
        }
        Some(a) => a.to_string(),
    };
    text.parse::<Selector>().map_err(|e| {
        Error::Input(format!(
            "at={}: {e}; give a time such as at=2026-02-02T17:04:59Z (the newest point at or before it), or a snapshot id or SEGMENT/INDEX",
            at.unwrap_or("")
        ))
    })
}

/// Repositories opened by URI, by their URL: a second open of a point of
/// the same repository does not read every index object again.
static REPOS: Mutex<Option<HashMap<String, Arc<Repository>>>> = Mutex::new(None);

/// Opens the point a URI names: database `db_path` of repository `repo` at
/// `at`.
pub fn open_uri(db_path: &str, p: &UriParams) -> Result<PointFile, Error> {
    let url = p.repo.as_deref().map(str::trim).filter(|u| !u.is_empty()).ok_or_else(|| {
        Error::Input(format!(
            "file:{db_path}?vfs=snapback needs the repository: add &repo=PATH (or s3://BUCKET/PREFIX) and &at=TIME"
        ))
    })?;
    let sel = parse_at(p.at.as_deref())?;
    let repo = repository(url, p)?;
    let snap = repo
        .resolve_for_path(&sel, Some(db_path), &[])
        .map_err(|e| Error::Input(format!("{e} (looking at the points that hold {db_path})")))?;
    let file = snap
        .file(db_path)
        .cloned()
        .ok_or_else(|| Error::Input(format!("{} does not hold {db_path}", snap.describe())))?;
    PointFile::open(repo, &snap, &file, VfsOptions::default())
}

fn repository(url: &str, p: &UriParams) -> Result<Arc<Repository>, Error> {
    let key = format!(
        "{url}\n{}\n{}",
        p.s3_endpoint.as_deref().unwrap_or(""),
        p.s3_path_style.as_deref().unwrap_or("")
    );
    if let Some(r) = REPOS
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned()))
    {
        return Ok(r);
    }
    let store = crate::store::open(url, p)?;
    let repo = Repository::open_with_passphrase(store, crate::store::passphrase)?;
    let repo = Arc::new(repo);
    if let Ok(mut m) = REPOS.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, repo.clone());
    }
    Ok(repo)
}
