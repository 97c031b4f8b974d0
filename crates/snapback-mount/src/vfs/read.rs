//! Opening and reading files: handles, chunk lists, the fetch window,
//! read-ahead, and what a read serves differently from the stored image.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snapback_core::{FileReader, Id};

use super::tree::{FileNode, NodeKind};
use super::{DirEntry, Opened, Vfs};
use crate::error::VfsError;
use crate::fetch::run_with_deadline;

/// Sequential-read detection for one open file.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    next: u64,
    window: u64,
    prefetched_to: u64,
}

#[derive(Debug)]
pub(super) enum Handle {
    File {
        node: Arc<FileNode>,
        reader: Arc<FileReader>,
        ra: Mutex<ReadAhead>,
    },
    Bytes(Arc<Vec<u8>>),
    Dir(Arc<Vec<DirEntry>>),
}

/// At most `RateLimit::BURST` log lines per `RateLimit::WINDOW`.
#[derive(Debug, Default)]
pub(super) struct RateLimit {
    /// Start of the current window, lines logged in it, lines suppressed.
    pub(super) state: Mutex<Option<(Instant, u32, u64)>>,
}

impl RateLimit {
    const BURST: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(10);

    /// Whether to log now; if so, how many were suppressed before.
    pub(super) fn allow(&self) -> Option<u64> {
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
    pub(super) fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut hs) = self.handles.write() {
            hs.insert(fh, Arc::new(h));
        }
        fh
    }

    pub(super) fn handle(&self, fh: u64) -> Result<Arc<Handle>, VfsError> {
        self.handles
            .read()
            .map_err(|_| VfsError::Internal("handle table lock poisoned".into()))?
            .get(&fh)
            .cloned()
            .ok_or(VfsError::BadHandle(fh))
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

    /// Opens file `ino` with a chunk layout its caller has proven already
    /// (`snapback_core::PointWalk::prove`, for reads that visit many points
    /// of one database): it must be the one proven for the file's entry
    /// (its path, whole-file checksum and size), or the open is refused.
    pub fn open_proven(
        &self,
        ino: u64,
        proven: snapback_core::ProvenReader,
    ) -> Result<Opened, VfsError> {
        let tree = self.tree();
        let n = tree.nodes.get(&ino).ok_or(VfsError::Stale(ino))?;
        let NodeKind::File(f) = &n.kind else {
            return self.open(ino, false);
        };
        if !proven.is_for(f.entry()) {
            return Err(VfsError::Internal(format!(
                "a chunk layout proven for another file was given for {}",
                f.entry().path
            )));
        }
        if let Ok(mut m) = self.readers.lock() {
            if m.len() >= READER_CACHE {
                m.clear();
            }
            m.insert((f.snap, f.idx), Arc::new(proven.into_reader()));
        }
        self.open(ino, false)
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
            // The chunk list must add up to the whole-file checksum the
            // manifest recorded: this binds what we serve to what was
            // captured, before a byte is read.
            let r = repo
                .proven_reader(node.entry())
                .map_err(|e| VfsError::repo(what2, e))?;
            Ok(Arc::new(r.into_reader()))
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

    /// The proven chunk layout of open file `fh` (its chunk ids, bound to
    /// the manifest's whole-file checksum when the file was opened): what a
    /// caller compares pages with by hash, without fetching them.
    pub fn layout(&self, fh: u64) -> Result<Arc<FileReader>, VfsError> {
        match &*self.handle(fh)? {
            Handle::File { reader, .. } => Ok(reader.clone()),
            Handle::Dir(_) => Err(VfsError::IsDir),
            Handle::Bytes(_) => Err(VfsError::Internal(
                "a generated file has no chunk layout".into(),
            )),
        }
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

    /// Starts background fetches of the chunks that hold the byte ranges
    /// `ranges` (offset, length) of open file `fh`, which its reader says
    /// it will read next (the children of a b-tree page it scans). Chunks
    /// that lie close together in one pack come in one range read of at
    /// most `window` bytes. Already cached or fetching chunks are skipped;
    /// nothing is waited for, and a failure here only means the read
    /// fetches the chunk itself later.
    pub fn prefetch(&self, fh: u64, ranges: &[(u64, u64)], window: u64) {
        let Ok(h) = self.handle(fh) else { return };
        let Handle::File { reader, .. } = &*h else {
            return;
        };
        let mut idx: Vec<usize> = ranges
            .iter()
            .filter(|(_, len)| *len > 0)
            .filter_map(|&(off, len)| {
                let last = off
                    .saturating_add(len - 1)
                    .min(reader.size().saturating_sub(1));
                Some(reader.chunk_at(off)?..=reader.chunk_at(last)?)
            })
            .flatten()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        let ids: Vec<Id> = idx.iter().map(|&i| reader.chunks[i].id).collect();
        if !ids.is_empty() {
            self.fetcher.prefetch_grouped(&reader.index, &ids, window);
        }
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
