//! Continuous capture, the repository side: committing timeline segments
//! (batches of points of one database over a base manifest), listing them,
//! and the image of a database at a point.
//!
//! A segment is committed as a manifest is: its packs and their index are
//! stored first (by the caller, as a snapshot stores them), then the
//! segment object, last, under `timeline/<SHA-256 of its plaintext>`. A
//! segment that exists is committed. Before writing it, `commit_segment`
//! proves that every point replays: the base holds the database with that
//! page size, every blob is indexed in a pack that exists, and each point's
//! replayed chunk list gives its `db_checksum`. The encoding is in
//! `segment`; docs/format.md ("Timeline segments") is the design.

use std::sync::Arc;

use crate::chunklist::ChunkRef;
use crate::config::TIMELINE_FEATURE;
use crate::error::{Error, Result};
use crate::id::{DbChecksum, Id};
use crate::index::{encode_index, IndexedPack, MasterIndex};
use crate::layout::{index_key, pack_key, snapshot_key, timeline_key};
use crate::manifest::{Chunking, FileEntry, FileKind, Manifest};
use crate::object::put_verified;
use crate::pack::{seal_blob, BlobKind, PackBuilder};
use crate::repo::{poisoned, Repository};
use crate::segment::{replay, Segment};

impl Repository {
    /// Stores pages as data blobs and returns their ids, in order: the new
    /// ones (those no index holds yet) are sealed (compressed, checked by
    /// decompressing again), packed, each pack stored and verified, then
    /// one index object for them. What a segment's points name must be
    /// stored this way (or by a snapshot) before `commit_segment`.
    pub fn store_pages(&self, pages: &[&[u8]]) -> Result<Vec<Id>> {
        Ok(self.store_pages_in_packs(pages)?.0)
    }

    /// `store_pages`, also returning the packs it wrote.
    pub fn store_pages_in_packs(&self, pages: &[&[u8]]) -> Result<(Vec<Id>, Vec<Id>)> {
        let index = self.index()?;
        let ids: Vec<Id> = pages.iter().map(|p| self.codec.blob_id(p)).collect();
        let store = self.store.as_ref();
        let mut packs = Vec::new();
        let mut pack = PackBuilder::new();
        let mut seen = std::collections::HashSet::new();
        let mut flush = |pack: PackBuilder| -> Result<()> {
            let (bytes, id, entries) = pack.finish(&self.codec)?;
            put_verified(store, &pack_key(&id), &bytes)?;
            packs.push(IndexedPack {
                id,
                size: bytes.len() as u64,
                entries,
            });
            Ok(())
        };
        for (raw, id) in pages.iter().zip(&ids) {
            if index.contains(id) || !seen.insert(*id) {
                continue;
            }
            let len = u32::try_from(raw.len())
                .map_err(|_| Error::internal(format!("a page of {} bytes", raw.len())))?;
            pack.add(
                BlobKind::Data,
                *id,
                &seal_blob(&self.codec, id, raw, None)?,
                len,
                None,
            )?;
            if pack.size() as u64 >= self.config.pack_target_size {
                flush(std::mem::take(&mut pack))?;
            }
        }
        if !pack.is_empty() {
            flush(pack)?;
        }
        if !packs.is_empty() {
            let bytes = encode_index(&packs)?;
            let key = index_key(&Id::of(&bytes));
            put_verified(store, &key, &bytes)?;
            self.learn_index(&key, &packs)?;
        }
        Ok((ids, packs.iter().map(|p| p.id).collect()))
    }

    /// The point that turns the database image `prev` into `now` (whole
    /// images, `page_size`-byte pages), taken at `time`: the pages that
    /// differ (or are new) are stored with `store_pages`, and the point
    /// lists them with the checksum of `now`. For a capture that read
    /// every page anyway (a full scan), and for tests.
    pub fn point_between_images(
        &self,
        prev: &[u8],
        now: &[u8],
        page_size: u32,
        time: time::OffsetDateTime,
    ) -> Result<crate::segment::Point> {
        let ps = page_size as usize;
        if ps == 0 || !prev.len().is_multiple_of(ps) || !now.len().is_multiple_of(ps) {
            return Err(Error::Invalid(format!(
                "database images of {} and {} bytes are not whole {page_size}-byte pages",
                prev.len(),
                now.len()
            )));
        }
        let old: Vec<&[u8]> = prev.chunks(ps).collect();
        let changed: Vec<(u64, &[u8])> = now
            .chunks(ps)
            .enumerate()
            .filter(|(i, p)| old.get(*i) != Some(p))
            .map(|(i, p)| (i as u64, p))
            .collect();
        let raws: Vec<&[u8]> = changed.iter().map(|(_, p)| *p).collect();
        let ids = self.store_pages(&raws)?;
        let mut sum = DbChecksum::default();
        for (i, p) in now.chunks(ps).enumerate() {
            sum.add(i as u64 * ps as u64, &self.codec.blob_id(p));
        }
        Ok(crate::segment::Point {
            time,
            page_count: (now.len() / ps) as u64,
            db_checksum: sum,
            changes: changed.iter().map(|(i, _)| *i).zip(ids).collect(),
        })
    }

    /// Commits a timeline segment and returns its id. The caller has
    /// stored the packs holding every blob the points name, and their
    /// index, first. Refused, with nothing written, when the repository is
    /// format 1, the base manifest is absent or does not hold `path` as a
    /// database of that page size, the points are not in strictly
    /// increasing time order after the base's time, a blob is in no index
    /// (or not a data blob of one page, or its pack is gone), or a point's
    /// replayed chunk list does not give its `db_checksum`. The first
    /// segment of a repository adds the feature "timeline" to its config.
    pub fn commit_segment(&self, seg: &Segment) -> Result<Id> {
        let refuse = |why: String| refused(seg, why);
        if !self.config.allows_partial_reads() {
            return refuse(FORMAT_1.into());
        }
        if let Err(e) = seg.validate("the segment") {
            return refuse(e.to_string());
        }
        let base = match self.load_manifest(&seg.base) {
            Ok(m) => m,
            Err(Error::Store(e)) if e.is_not_found() => {
                return refuse(format!(
                    "its base manifest {} is not in the repository",
                    seg.base
                ))
            }
            Err(e) => return Err(e),
        };
        let file = match base_file(&base, seg) {
            Ok(f) => f,
            Err(why) => return refuse(why),
        };
        // The last look, as a snapshot's: every blob in the repository's
        // current index, in a pack that exists now.
        let index = self.current_index()?;
        let packs = self.present_packs()?;
        let list = self.base_chunk_list(&index, file, seg)?;
        self.commit_checked(
            seg,
            &SegmentView {
                index: &index,
                packs: &packs,
                base: &base,
                base_list: &list,
            },
        )
    }

    /// Commits a timeline segment as `commit_segment` does, but checks its
    /// blobs against `view` (an index and a set of packs the caller keeps
    /// current) instead of listing the repository, and its base against
    /// the base manifest and chunk list the caller holds (the base is
    /// `stat`ed, not read). For `snapback watch`, which holds a shared
    /// lock while it uploads, so no prune deletes what the view holds
    /// (docs/format.md, "Timeline segments"): no LIST request per upload.
    pub fn commit_segment_over(&self, seg: &Segment, view: &SegmentView) -> Result<Id> {
        let refuse = |why: String| refused(seg, why);
        if !self.config.allows_partial_reads() {
            return refuse(FORMAT_1.into());
        }
        if let Err(e) = seg.validate("the segment") {
            return refuse(e.to_string());
        }
        if let Err(why) = base_file(view.base, seg) {
            return refuse(why);
        }
        if self.store.stat(&snapshot_key(&seg.base))?.is_none() {
            return refuse(format!(
                "its base manifest {} is not in the repository",
                seg.base
            ));
        }
        self.commit_checked(seg, view)
    }

    /// The checks and the write both commits share: points after the base,
    /// every blob a one-page data blob indexed in a present pack, every
    /// point replaying to its checksum; then the feature, then the object.
    fn commit_checked(&self, seg: &Segment, view: &SegmentView) -> Result<Id> {
        let refuse = |why: String| refused(seg, why);
        let base_time = crate::time::parse_rfc3339(&view.base.time)
            .map_err(|e| Error::corrupt(format!("snapshot {}", seg.base.short()), e))?;
        if seg.points[0].time <= base_time {
            return refuse(format!(
                "its first point ({}) is not after its base's time ({})",
                crate::time::format_rfc3339_nanos(seg.points[0].time),
                view.base.time
            ));
        }
        for (k, p) in seg.points.iter().enumerate() {
            for (i, id) in &p.changes {
                let why = match view.index.get(id) {
                    None => "is in no index (store its pack and index first)",
                    Some(l) if l.kind != BlobKind::Data => "is not a data blob",
                    Some(l) if l.raw_len != seg.page_size => "is not one page long",
                    Some(l) if !view.packs.contains(&l.pack) => "is in a pack that is gone",
                    Some(_) => continue,
                };
                return refuse(format!(
                    "blob {} of point {k} (page index {i}) {why}",
                    id.short()
                ));
            }
        }
        if let Err(e) = replay(
            view.base_list.to_vec(),
            seg.page_size,
            &seg.points,
            seg.points.len() - 1,
            "its points",
        ) {
            return refuse(e.to_string());
        }
        let bytes = seg.encode()?;
        let id = Id::of(&bytes);
        let key = timeline_key(&id);
        // Decoded again and compared before it is stored, as an index is.
        if Segment::decode(&bytes, &key)? != *seg {
            return Err(Error::Verification(format!(
                "timeline segment {} does not decode to what was encoded; nothing was written",
                id.short()
            )));
        }
        self.ensure_feature(TIMELINE_FEATURE)?;
        put_verified(self.store.as_ref(), &key, &bytes)?;
        self.segments
            .lock()
            .map_err(|_| poisoned())?
            .insert(id, Arc::new(seg.clone()));
        tracing::debug!(segment = %id.short(), points = seg.points.len(), path = %seg.path, "timeline segment committed");
        Ok(id)
    }

    /// The chunk list of the database at point `k` of segment `id`: the
    /// base's list with the changes of points 0..=k applied, checked
    /// against every point's `db_checksum` on the way (a mismatch is
    /// damage, never a wrong image).
    pub fn point_chunk_list(
        &self,
        index: &MasterIndex,
        id: &Id,
        seg: &Segment,
        k: usize,
    ) -> Result<Vec<ChunkRef>> {
        let place = format!("timeline segment {}", id.short());
        if k >= seg.points.len() {
            return Err(Error::Selector(format!(
                "{place} has {} points; there is no point {k}",
                seg.points.len()
            )));
        }
        let base = self.load_manifest(&seg.base).map_err(|e| match e {
            Error::Store(s) if s.is_not_found() => Error::corrupt(
                &place,
                format!("its base manifest {} is gone", seg.base.short()),
            ),
            e => e,
        })?;
        let file = base_file(&base, seg).map_err(|why| Error::corrupt(&place, why))?;
        let list = self.base_chunk_list(index, file, seg)?;
        replay(list, seg.page_size, &seg.points, k, &place)
    }

    /// The base's chunk list of the segment's database, checked against
    /// the base's `db_checksum` and page size.
    fn base_chunk_list(
        &self,
        index: &MasterIndex,
        file: &FileEntry,
        seg: &Segment,
    ) -> Result<Vec<ChunkRef>> {
        let list = self.chunk_list(index, file)?;
        let place = format!("chunk list of {} in {}", file.path, seg.base.short());
        let mut sum = DbChecksum::default();
        for (i, c) in list.iter().enumerate() {
            if c.len != seg.page_size {
                return Err(Error::corrupt(
                    &place,
                    format!("chunk {i} is {} bytes, not one page", c.len),
                ));
            }
            sum.add(i as u64 * seg.page_size as u64, &c.id);
        }
        if DbChecksum::from_hex(&file.db_checksum) != Some(sum) {
            return Err(Error::corrupt(
                &place,
                "the chunk list does not give the manifest's db_checksum",
            ));
        }
        Ok(list)
    }
}

/// What `commit_segment_over` checks a segment against.
#[derive(Debug, Clone, Copy)]
pub struct SegmentView<'a> {
    /// An index holding every blob the points name.
    pub index: &'a MasterIndex,
    /// Packs known to exist.
    pub packs: &'a std::collections::HashSet<Id>,
    /// The base manifest and its database's chunk list (checked against
    /// its `db_checksum` by the caller).
    pub base: &'a Manifest,
    pub base_list: &'a [ChunkRef],
}

const FORMAT_1: &str = "the repository is format version 1, which has no timeline segments: upgrade the repository to format 2 (a repository that `snapback init` creates now is format 2)";

fn refused<T>(seg: &Segment, why: String) -> Result<T> {
    Err(Error::Invalid(format!(
        "timeline segment of {} over {} refused, nothing was written: {why}",
        seg.path,
        seg.base.short()
    )))
}

/// The base's entry for the segment's database, or why it cannot serve.
fn base_file<'a>(base: &'a Manifest, seg: &Segment) -> std::result::Result<&'a FileEntry, String> {
    let short = seg.base.short();
    let file = base
        .files
        .iter()
        .find(|f| f.path == seg.path)
        .ok_or_else(|| format!("its base manifest {short} does not hold {}", seg.path))?;
    let page_size = file.sqlite.as_ref().map(|s| s.page_size);
    if file.kind != FileKind::Sqlite
        || page_size != Some(seg.page_size)
        || file.chunking
            != (Chunking::Fixed {
                size: seg.page_size,
            })
    {
        return Err(format!(
            "its base manifest {short} holds {} {}, not as a database of {}-byte pages cut one page per chunk",
            seg.path,
            match page_size {
                Some(n) => format!("with {n}-byte pages"),
                None => "as a plain file".into(),
            },
            seg.page_size
        ));
    }
    Ok(file)
}
