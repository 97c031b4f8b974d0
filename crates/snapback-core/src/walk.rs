//! Walking the points of one database in time order, for reads that visit
//! many of them (`snapback history`): the chunk list of each point is
//! worked out from the previous one's, and proven only where it is read.
//!
//! A timeline point is its segment's base list with the segment's changes
//! applied up to it, so the step from one point to the next in a segment
//! is its own changes, and from a point to one of another segment over the
//! same base is the entries changed since that base, put back, then the
//! new segment's changes: no list is decoded or copied, nothing is hashed.
//! A snapshot's own list is decoded and compared entry by entry with the
//! current one. `prove` then binds the current list to the point's
//! manifest entry (its `db_checksum` and size) as `Repository::proven_reader`
//! does, with the checksum (a sum of one term per chunk) worked out from
//! the one proven last: only the entries that changed since are hashed.

use std::sync::Arc;

use crate::chunklist::ChunkRef;
use crate::error::{Error, Result};
use crate::id::{DbChecksum, Id};
use crate::index::MasterIndex;
use crate::manifest::FileEntry;
use crate::read::{FileReader, ProvenReader};
use crate::repo::Repository;
use crate::segment::apply_point;
use crate::selector::Snapshot;

/// A set of list entries, in the order they were first marked.
#[derive(Debug, Default)]
struct Marks {
    flag: Vec<bool>,
    list: Vec<usize>,
}

impl Marks {
    fn mark(&mut self, i: usize) {
        if i >= self.flag.len() {
            self.flag.resize(i + 1, false);
        }
        if !self.flag[i] {
            self.flag[i] = true;
            self.list.push(i);
        }
    }

    fn take(&mut self) -> Vec<usize> {
        for &i in &self.list {
            self.flag[i] = false;
        }
        std::mem::take(&mut self.list)
    }
}

/// The chunk list of one database at the point walked to last, and the
/// list proven last with its checksum.
#[derive(Debug)]
pub struct PointWalk<'r> {
    repo: &'r Repository,
    index: Arc<MasterIndex>,
    /// The list at the point walked to last (not proven yet).
    cur: Vec<ChunkRef>,
    /// Where each chunk of `cur` starts, when its chunks are not one page
    /// each (then page `p` is at `(p - 1) * page_size`).
    offsets: Option<Vec<u64>>,
    page_size: u64,
    /// The entry of the database at the point walked to last.
    file: Option<FileEntry>,
    /// The segment point `cur` is at.
    at: Option<(Id, usize)>,
    /// A base manifest's list (by the manifest's id) and the entries of
    /// `cur` that may differ from it.
    base: Option<(Id, Arc<Vec<ChunkRef>>)>,
    since_base: Marks,
    /// The list proven last, its page size and checksum, and the entries
    /// of `cur` that may differ from it.
    proven: Vec<ChunkRef>,
    proven_page_size: u64,
    proven_sum: DbChecksum,
    dirty: Marks,
    /// The next proof compares every entry (the chunks are not one page
    /// each, or the page size changed).
    full: bool,
    /// Checksum terms worked out (each one SHA-256), over the walk.
    terms: u64,
}

impl<'r> PointWalk<'r> {
    pub fn new(repo: &'r Repository, index: Arc<MasterIndex>) -> PointWalk<'r> {
        PointWalk {
            repo,
            index,
            cur: Vec::new(),
            offsets: None,
            page_size: 4096,
            file: None,
            at: None,
            base: None,
            since_base: Marks::default(),
            proven: Vec::new(),
            proven_page_size: 4096,
            proven_sum: DbChecksum::default(),
            dirty: Marks::default(),
            full: false,
            terms: 0,
        }
    }

    /// Moves to database `file` of `snap` (a snapshot or a timeline
    /// point, later than the one before, or not): its chunk list is
    /// worked out, and nothing is hashed.
    pub fn advance(&mut self, snap: &Snapshot, file: &FileEntry) -> Result<()> {
        let page_size = file
            .sqlite
            .as_ref()
            .map_or(4096, |s| u64::from(s.page_size))
            .max(1);
        let moved = match &file.point {
            Some(ps) => self.move_to_point(snap, file, ps.segment, ps.index, page_size),
            None => self.move_to_list(snap.id, file, page_size),
        };
        if let Err(e) = moved {
            // Whatever `cur` holds now is not a point's list.
            self.reset();
            return Err(e);
        }
        self.file = Some(file.clone());
        Ok(())
    }

    /// The database's size at the point walked to last.
    pub fn size(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.size)
    }

    /// The chunks (offset, id, length) that hold page `pgno` (numbered
    /// from 1) at the point walked to last: not proven, for comparing
    /// with the chunks of a point read before.
    pub fn page(&self, pgno: u64) -> Vec<(u64, Id, u32)> {
        let Some(i) = pgno.checked_sub(1) else {
            return vec![];
        };
        let start = i * self.page_size;
        match &self.offsets {
            None => usize::try_from(i)
                .ok()
                .and_then(|i| self.cur.get(i))
                .map(|c| vec![(start, c.id, c.len)])
                .unwrap_or_default(),
            Some(offs) => {
                let end = start + self.page_size;
                let first = offs.partition_point(|&o| o <= start).saturating_sub(1);
                offs.iter()
                    .zip(&self.cur)
                    .skip(first)
                    .take_while(|(o, _)| **o < end)
                    .map(|(o, c)| (*o, c.id, c.len))
                    .collect()
            }
        }
    }

    /// Checksum terms worked out so far (one SHA-256 each).
    pub fn terms_hashed(&self) -> u64 {
        self.terms
    }

    /// The chunk list of the point walked to last, proven against its
    /// manifest entry (the whole-file checksum and the size) before it is
    /// given out, as `Repository::proven_reader` proves it; only the
    /// entries changed since the last proof are hashed.
    pub fn prove(&mut self) -> Result<ProvenReader> {
        let file = self
            .file
            .clone()
            .ok_or_else(|| Error::internal("a point walk proved before it moved to a point"))?;
        let corrupt = |why: String| Error::corrupt(format!("chunk list of {}", file.path), why);
        let mut sum = self.proven_sum;
        let ps = self.page_size;
        if self.full || self.offsets.is_some() || self.proven_page_size != ps {
            // Position by position, with the offsets of both lists.
            sum = DbChecksum::default();
            let mut off = 0u64;
            for c in &self.cur {
                sum.add(off, &c.id);
                off += c.len as u64;
            }
            self.terms += self.cur.len() as u64;
            self.dirty.take();
            self.proven = self.cur.clone();
        } else {
            for i in self.dirty.take() {
                let (o, n) = (self.proven.get(i).copied(), self.cur.get(i).copied());
                if o == n {
                    continue;
                }
                if let Some(o) = o {
                    sum.remove(i as u64 * ps, &o.id);
                    self.terms += 1;
                }
                if let Some(n) = n {
                    sum.add(i as u64 * ps, &n.id);
                    self.terms += 1;
                }
                if i < self.proven.len() {
                    if let Some(n) = n {
                        self.proven[i] = n;
                    }
                }
            }
            // Entries past either end: `proven` takes `cur`'s.
            let (lp, lc) = (self.proven.len(), self.cur.len());
            self.proven.truncate(lc);
            if lc > lp {
                self.proven.extend_from_slice(&self.cur[lp..]);
            }
        }
        let size: u64 = self.cur.iter().map(|c| c.len as u64).sum();
        let proven = if sum.to_hex() != file.db_checksum {
            Err(corrupt(
                "its checksum does not match the manifest's; refusing to read the point".into(),
            ))
        } else if size != file.size {
            Err(corrupt(format!(
                "chunks add up to {size} bytes, the file has {}; refusing to read the point",
                file.size
            )))
        } else {
            Ok(())
        };
        if let Err(e) = proven {
            self.reset();
            return Err(e);
        }
        self.proven_sum = sum;
        self.proven_page_size = ps;
        self.full = false;
        let mut offsets = Vec::with_capacity(self.cur.len() + 1);
        let mut off = 0u64;
        for c in &self.cur {
            offsets.push(off);
            off += c.len as u64;
        }
        offsets.push(off);
        Ok(ProvenReader::proven(
            FileReader {
                chunks: self.cur.clone(),
                offsets,
                index: self.index.clone(),
            },
            &file,
        ))
    }

    /// Forgets every list: the next point is worked out and proven from
    /// scratch.
    fn reset(&mut self) {
        self.cur.clear();
        self.offsets = None;
        self.at = None;
        self.base = None;
        self.since_base.take();
        self.dirty.take();
        self.proven.clear();
        self.proven_sum = DbChecksum::default();
        self.full = true;
    }

    /// To point `k` of segment `seg_id`: from the point before it when
    /// that is where the walk is, else from the segment's base.
    fn move_to_point(
        &mut self,
        snap: &Snapshot,
        file: &FileEntry,
        seg_id: Id,
        k: usize,
        page_size: u64,
    ) -> Result<()> {
        let seg = self.repo.segment(&seg_id)?;
        let place = format!("timeline segment {}", seg_id.short());
        if k >= seg.points.len() || u64::from(seg.page_size) != page_size {
            return Err(Error::corrupt(
                &place,
                format!("it has no point {k} of {page_size}-byte pages"),
            ));
        }
        let from = match (k, self.at) {
            (k, Some((s, j))) if k > 0 && s == seg_id && j + 1 == k => k,
            _ => {
                let base = snap.point.map_or(seg.base, |p| p.base);
                self.move_to_base(base, file, page_size, &place)?;
                0
            }
        };
        let (dirty, since) = (&mut self.dirty, &mut self.since_base);
        for n in from..=k {
            apply_point(
                &mut self.cur,
                seg.page_size,
                &seg.points[n],
                n,
                &place,
                |i, _, _| {
                    dirty.mark(i);
                    since.mark(i);
                },
            )?;
        }
        self.at = Some((seg_id, k));
        Ok(())
    }

    /// `cur` becomes the base manifest's list of the database (the
    /// point's entry names the base's chunk list).
    fn move_to_base(
        &mut self,
        base: Id,
        file: &FileEntry,
        page_size: u64,
        place: &str,
    ) -> Result<()> {
        match &self.base {
            Some((id, list)) if *id == base && self.offsets.is_none() => {
                let list = list.clone();
                self.cur.resize(
                    list.len(),
                    ChunkRef {
                        id: Id([0; 32]),
                        len: 0,
                    },
                );
                for i in self.since_base.take() {
                    if let Some(c) = list.get(i) {
                        self.cur[i] = *c;
                    }
                    self.dirty.mark(i);
                }
            }
            _ => {
                let mut bf = file.clone();
                bf.point = None;
                let list = self.repo.chunk_list(&self.index, &bf)?;
                if let Some(i) = list.iter().position(|c| u64::from(c.len) != page_size) {
                    return Err(Error::corrupt(
                        place,
                        format!("chunk {i} of its base's list is not one page"),
                    ));
                }
                self.replace(list, page_size);
                self.base = Some((base, Arc::new(self.cur.clone())));
            }
        }
        self.page_size = page_size;
        Ok(())
    }

    /// To a snapshot's own list.
    fn move_to_list(&mut self, id: Id, file: &FileEntry, page_size: u64) -> Result<()> {
        let list = self.repo.chunk_list(&self.index, file)?;
        self.replace(list, page_size);
        self.at = None;
        // A segment over this snapshot starts from this list.
        self.base = (self.offsets.is_none()).then(|| (id, Arc::new(self.cur.clone())));
        Ok(())
    }

    /// `cur` becomes `list`, each entry that differs marked for the proof.
    fn replace(&mut self, list: Vec<ChunkRef>, page_size: u64) {
        let per_page = list.iter().all(|c| u64::from(c.len) == page_size);
        if per_page && self.offsets.is_none() && page_size == self.page_size {
            for i in 0..self.cur.len().max(list.len()) {
                if self.cur.get(i) != list.get(i) {
                    self.dirty.mark(i);
                }
            }
        } else {
            self.full = true;
        }
        self.offsets = (!per_page).then(|| {
            let mut off = 0u64;
            list.iter()
                .map(|c| {
                    let o = off;
                    off += c.len as u64;
                    o
                })
                .collect()
        });
        self.page_size = page_size;
        self.since_base.take();
        self.cur = list;
    }
}
