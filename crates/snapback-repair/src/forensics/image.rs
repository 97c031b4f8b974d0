//! One temporary image of a database, moved from point to point by page
//! deltas: the first point is restored whole (verified), each later one
//! by writing only the chunks whose ids differ between the two points'
//! chunk lists (fetched and verified by the core), then the cut. The chunk
//! lists also say which pages changed, so a caller can skip a point
//! without reading anything.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use snapback_core::{
    ChunkRef, FileEntry, FileKind, Id, MasterIndex, NoProgress, Repository, Snapshot,
};

use crate::error::{Error, Result};
use crate::source::SnapshotDb;

/// A database image in a private temporary directory, at one point.
pub struct PointImage<'r> {
    repo: &'r Repository,
    index: Arc<MasterIndex>,
    _tmp: tempfile::TempDir,
    path: PathBuf,
    chunks: Vec<ChunkRef>,
    page_size: u64,
    /// Bytes fetched and written after the first restore.
    pub bytes_moved: u64,
}

/// The byte offset where each chunk of `list` starts.
fn offsets(list: &[ChunkRef]) -> Vec<u64> {
    let mut off = 0u64;
    list.iter()
        .map(|c| {
            let o = off;
            off += c.len as u64;
            o
        })
        .collect()
}

/// The database entry `path` of a point, which must be a SQLite database.
pub fn db_file<'a>(p: &'a Snapshot, path: &str) -> Result<&'a FileEntry> {
    let f = p
        .file(path)
        .ok_or_else(|| Error::Input(format!("{} does not hold {path}", p.describe())))?;
    if f.kind != FileKind::Sqlite {
        return Err(Error::Input(format!(
            "{path} in {} was captured as a plain file, not as a SQLite database",
            p.describe()
        )));
    }
    Ok(f)
}

impl<'r> PointImage<'r> {
    /// Restores `file` (of a snapshot or a point), verified, into a new
    /// private temporary directory.
    pub fn new(repo: &'r Repository, file: &FileEntry) -> Result<PointImage<'r>> {
        let tmp = tempfile::Builder::new()
            .prefix("snapback-forensics-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), "cannot create a private temp directory (set TMPDIR to a directory with room for the database)", e))?;
        let path = tmp.path().join("point.db");
        let index = repo.index()?;
        let chunks = repo.proven_chunks(&index, file)?;
        repo.restore_file(file, &path, false, &NoProgress)?;
        Ok(PointImage {
            repo,
            index,
            _tmp: tmp,
            path,
            chunks,
            page_size: file
                .sqlite
                .as_ref()
                .map_or(4096, |s| s.page_size as u64)
                .max(1),
            bytes_moved: 0,
        })
    }

    /// The chunk list of `file`, proven against its manifest entry.
    pub fn chunks_of(&self, file: &FileEntry) -> Result<Vec<ChunkRef>> {
        Ok(self.repo.proven_chunks(&self.index, file)?)
    }

    /// The pages (numbered from 1, as SQLite numbers them) whose bytes
    /// differ between the image and `list`, and the pages past the end of
    /// the shorter one.
    pub fn changed_pages(&self, list: &[ChunkRef]) -> BTreeSet<u64> {
        let (old_off, new_off) = (offsets(&self.chunks), offsets(list));
        let mut pages = BTreeSet::new();
        let ps = self.page_size;
        let mut mark = |start: u64, len: u64| {
            if len == 0 {
                return;
            }
            for p in start / ps..=(start + len - 1) / ps {
                pages.insert(p + 1);
            }
        };
        for (i, c) in list.iter().enumerate() {
            let same = self
                .chunks
                .get(i)
                .is_some_and(|o| o.id == c.id && o.len == c.len)
                && old_off.get(i) == new_off.get(i);
            if !same {
                mark(new_off[i], c.len as u64);
                if let (Some(o), Some(off)) = (self.chunks.get(i), old_off.get(i)) {
                    mark(*off, o.len as u64);
                }
            }
        }
        for (off, c) in old_off.iter().zip(&self.chunks).skip(list.len()) {
            mark(*off, c.len as u64);
        }
        pages
    }

    /// Makes the image `list` (a chunk list from `chunks_of`): fetches the
    /// chunks that differ, each verified, writes them at their offsets,
    /// and cuts the file to the new size.
    pub fn move_to(&mut self, list: Vec<ChunkRef>) -> Result<()> {
        let new_off = offsets(&list);
        let old_off = offsets(&self.chunks);
        let mut at: HashMap<Id, Vec<u64>> = HashMap::new();
        for (i, c) in list.iter().enumerate() {
            let same = self
                .chunks
                .get(i)
                .is_some_and(|o| o.id == c.id && o.len == c.len)
                && old_off.get(i) == Some(&new_off[i]);
            if !same {
                at.entry(c.id).or_default().push(new_off[i]);
            }
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, "cannot open the temporary image", e))?;
        let ids: Vec<Id> = at.keys().copied().collect();
        let place = self.path.display().to_string();
        let written = std::sync::atomic::AtomicU64::new(0);
        self.repo
            .fetch_blobs(&self.index, &ids, &place, &|id, bytes| {
                for &off in at.get(id).into_iter().flatten() {
                    file.write_all_at(bytes, off).map_err(|e| {
                        snapback_core::Error::io(&self.path, "cannot write the temporary image", e)
                    })?;
                    written.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })?;
        let size: u64 = list.iter().map(|c| c.len as u64).sum();
        file.set_len(size)
            .map_err(|e| Error::io(&self.path, "cannot cut the temporary image", e))?;
        self.bytes_moved += written.into_inner();
        self.chunks = list;
        Ok(())
    }

    /// The image, to open read-only (a new connection after each move).
    pub fn db(&self) -> Result<SnapshotDb> {
        SnapshotDb::from_file(&self.path)
    }
}
