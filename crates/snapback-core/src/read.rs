//! Reading a repository: the metadata cache, the master index, the
//! snapshot listing, selectors resolved against it, blobs, chunk lists and
//! random access to a file.

use std::collections::HashMap;
use std::sync::Arc;

use crate::chunklist::{self, ChunkRef};
use crate::dict::Dict;
use crate::error::{Error, Result};
use crate::fetch;
use crate::id::Id;
use crate::index::BlobLocation;
use crate::index::{decode_index_into, IndexedPack, MasterIndex};
use crate::layout::{dict_key, DICT_PREFIX};
use crate::layout::{
    pack_key, snapshot_id_from_key, snapshot_key, timeline_id_from_key, timeline_key, DATA_PREFIX,
    INDEX_PREFIX, SNAPSHOT_PREFIX, TIMELINE_PREFIX,
};
use crate::manifest::{FileEntry, Manifest};
use crate::object::{get_named, verify_name};
use crate::pack::{open_blob, BlobKind};
use crate::repo::{poisoned, Repository};
use crate::resolve::resolve_in;
use crate::segment::{replay, Segment};
use crate::selector::{holds_list, Selector, Snapshot};

/// A segment, its id, and when the store wrote it.
type ListedSegment = (Id, Arc<Segment>, Option<time::OffsetDateTime>);

impl Repository {
    /// Keeps local copies of manifests and indexes under
    /// `dir/<repo id>/`. Every copy is verified against its name (its
    /// SHA-256) when it is read, so a damaged cache is never trusted.
    pub fn with_cache_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Repository {
        self.cache_dir = Some(dir.into().join(&self.config.repo_id));
        self
    }

    /// Reads a content-named object, from the cache when it holds a copy
    /// that hashes to the name; verifies the name either way.
    pub(crate) fn get_immutable(&self, key: &str, prefix: &str) -> Result<Vec<u8>> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(key));
        if let Some(p) = &cached {
            if let Ok(b) = std::fs::read(p) {
                if verify_name(key, prefix, &b).is_ok() {
                    return Ok(b);
                }
                tracing::warn!(path = %p.display(), "ignoring a damaged cache entry");
            }
        }
        let bytes = get_named(self.store.as_ref(), key, prefix)?;
        if let Some(p) = cached {
            let write = || -> std::io::Result<()> {
                if let Some(dir) = p.parent() {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                }
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &p)
            };
            if let Err(e) = write() {
                tracing::debug!(path = %p.display(), error = %e, "cannot write the metadata cache");
            }
        }
        Ok(bytes)
    }

    /// The master index, loaded on first use; the index objects this
    /// handle's snapshots wrote since are read in then
    /// (`note_written_index`).
    pub fn index(&self) -> Result<Arc<MasterIndex>> {
        let unread = std::mem::take(&mut *self.unread_index_keys.lock().map_err(|_| poisoned())?);
        if unread.is_empty() {
            if let Some(i) = self.index.read().map_err(|_| poisoned())?.as_ref() {
                return Ok(i.clone());
            }
            return self.refresh_index();
        }
        let mut guard = self.index.write().map_err(|_| poisoned())?;
        if guard.is_none() {
            drop(guard);
            return self.refresh_index();
        }
        self.load_new_indexes(&mut guard, unread)
    }

    /// Notes an index object this handle has just written (a snapshot's),
    /// for the loaded index to read on its next use (`index`), so that a
    /// restore, check or mount in the same process finds its packs.
    /// Learning them at once put one entry per new blob into the cached
    /// index at the end of every snapshot, though a `snapback snapshot`
    /// process never reads it again.
    pub(crate) fn note_written_index(&self, key: &str) -> Result<()> {
        self.unread_index_keys
            .lock()
            .map_err(|_| poisoned())?
            .push(key.to_string());
        Ok(())
    }

    /// Forgets the loaded index and reads every index object again.
    pub fn refresh_index_from_scratch(&self) -> Result<Arc<MasterIndex>> {
        *self.index.write().map_err(|_| poisoned())? = None;
        self.refresh_index()
    }

    /// The repository's index as it is now. Index objects are named by the
    /// hash of their content, so while every object the loaded index was
    /// read from is still listed, only new ones need reading; when one is
    /// gone (a prune rewrote the indexes), every object is read again.
    pub fn current_index(&self) -> Result<Arc<MasterIndex>> {
        // Listed below with every other object.
        self.unread_index_keys
            .lock()
            .map_err(|_| poisoned())?
            .clear();
        let listed = self.index_keys()?;
        let mut guard = self.index.write().map_err(|_| poisoned())?;
        let unchanged = guard.as_ref().is_some_and(|i| {
            let keys: std::collections::HashSet<&str> = listed.iter().map(String::as_str).collect();
            i.index_keys.iter().all(|k| keys.contains(k.as_str()))
        });
        if !unchanged {
            *guard = None;
        }
        self.load_new_indexes(&mut guard, listed)
    }

    /// Loads index objects that appeared since the last load.
    /// When none appeared, the loaded index is returned as it is: copying it
    /// (one entry per blob) is what every snapshot would otherwise pay twice.
    pub fn refresh_index(&self) -> Result<Arc<MasterIndex>> {
        // Listed below with every other object.
        self.unread_index_keys
            .lock()
            .map_err(|_| poisoned())?
            .clear();
        let keys = self.index_keys()?;
        let mut guard = self.index.write().map_err(|_| poisoned())?;
        self.load_new_indexes(&mut guard, keys)
    }

    /// The keys of every index object, sorted (one LIST of index/).
    fn index_keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .store
            .list(INDEX_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Adds to the loaded index (none: an empty one) the objects of `keys`
    /// it was not read from.
    fn load_new_indexes(
        &self,
        guard: &mut Option<Arc<MasterIndex>>,
        keys: Vec<String>,
    ) -> Result<Arc<MasterIndex>> {
        let new: Vec<String> = match guard.as_deref() {
            Some(cur) => {
                let known: std::collections::HashSet<&str> =
                    cur.index_keys.iter().map(String::as_str).collect();
                keys.into_iter()
                    .filter(|k| !known.contains(k.as_str()))
                    .collect()
            }
            None => keys,
        };
        if let (Some(cur), true) = (guard.as_ref(), new.is_empty()) {
            return Ok(Arc::clone(cur));
        }
        // Grown in place when no reader holds the loaded index any more (a
        // long-lived watcher, between its uploads); copied otherwise. An
        // error below leaves no index loaded: the next use reads it again.
        let mut idx = match guard.take() {
            Some(cur) => Arc::try_unwrap(cur).unwrap_or_else(|shared| (*shared).clone()),
            None => MasterIndex::default(),
        };
        for key in new {
            let bytes = self.get_immutable(&key, INDEX_PREFIX)?;
            decode_index_into(&bytes, &key, &mut idx)?;
            idx.index_keys.push(key);
        }
        let idx = Arc::new(idx);
        *guard = Some(idx.clone());
        Ok(idx)
    }

    /// Adds the packs of the index object `key`, which this repository has
    /// just written, to its cached index (no request: the packs are known),
    /// so that a restore, check or mount in the same process finds them.
    pub(crate) fn learn_index(&self, key: &str, packs: &[IndexedPack]) -> Result<()> {
        let mut guard = self.index.write().map_err(|_| poisoned())?;
        // Not loaded yet: the first use loads every index object, this one
        // too.
        let Some(cur) = guard.as_mut() else {
            return Ok(());
        };
        if cur.index_keys.iter().any(|k| k == key) {
            return Ok(());
        }
        // In place when no reader holds the loaded index any more (a
        // snapshot lets go of its own first): a copy of the whole index,
        // one entry per blob of the repository, is what learning cost
        // otherwise.
        let idx = Arc::make_mut(cur);
        for p in packs {
            idx.insert_pack(p);
        }
        idx.index_keys.push(key.to_string());
        Ok(())
    }

    /// Every committed snapshot, oldest first. Manifests are cached, so a
    /// second call reads only new ones.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.load_snapshots(false)
    }

    /// Like `snapshots`, but a manifest that cannot be read is an error
    /// instead of a warning. Prune uses it: treating a damaged manifest's
    /// data as unreferenced would delete what a repair could still save.
    pub fn snapshots_strict(&self) -> Result<Vec<Snapshot>> {
        self.load_snapshots(true)
    }

    /// Every committed snapshot, oldest first. A damaged manifest is
    /// skipped with a warning (`check` reports it), unless `strict`.
    fn load_snapshots(&self, strict: bool) -> Result<Vec<Snapshot>> {
        let listing = self.store.list(SNAPSHOT_PREFIX)?;
        let mut out = Vec::with_capacity(listing.len());
        for o in listing {
            let Some(id) = snapshot_id_from_key(&o.key) else {
                tracing::warn!(key = %o.key, "ignoring an object that is not named like a snapshot");
                continue;
            };
            let cached = self
                .manifests
                .lock()
                .map_err(|_| poisoned())?
                .get(&id)
                .cloned();
            let manifest = match cached {
                Some(m) => m,
                None => {
                    let m = match self.load_manifest(&id) {
                        Ok(m) => Arc::new(m),
                        // Forgotten between the listing and the read (forget
                        // takes no lock): the snapshot no longer exists.
                        Err(Error::Store(e)) if e.is_not_found() => {
                            tracing::debug!(key = %o.key, "snapshot removed while listing; skipped");
                            continue;
                        }
                        // A damaged manifest is skipped (check names it); one
                        // from a newer snapback is not: an upgrade is needed.
                        Err(e @ Error::Corrupt { .. }) if !strict => {
                            tracing::warn!(key = %o.key, error = %e, "skipping a snapshot whose manifest cannot be read; run `snapback check`");
                            self.skipped
                                .lock()
                                .map_err(|_| poisoned())?
                                .insert(id, e.to_string());
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    self.manifests
                        .lock()
                        .map_err(|_| poisoned())?
                        .insert(id, m.clone());
                    m
                }
            };
            let time = match crate::time::parse_rfc3339(&manifest.time) {
                Ok(t) => t,
                Err(e) if strict => return Err(Error::corrupt(o.key.clone(), e)),
                Err(_) => continue,
            };
            let written = o.modified.and_then(crate::time::from_system);
            out.push(Snapshot {
                id,
                time,
                written,
                manifest,
                point: None,
            });
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Every committed timeline segment, oldest first (by its first
    /// point's time). A segment that cannot be read is skipped with a
    /// warning (`check` reports it).
    pub fn segments(&self) -> Result<Vec<(Id, Arc<Segment>)>> {
        Ok(self
            .load_segments(false)?
            .into_iter()
            .map(|(id, s, _)| (id, s))
            .collect())
    }

    /// Like `segments`, but a segment that cannot be read is an error:
    /// prune must not treat a damaged segment's blobs as unreferenced.
    pub fn segments_strict(&self) -> Result<Vec<(Id, Arc<Segment>)>> {
        Ok(self
            .load_segments(true)?
            .into_iter()
            .map(|(id, s, _)| (id, s))
            .collect())
    }

    /// The segments with the time the store wrote each. A format-1
    /// repository has none (whatever `timeline/` holds).
    fn load_segments(&self, strict: bool) -> Result<Vec<ListedSegment>> {
        let mut out = Vec::new();
        if !self.config.allows_partial_reads() {
            return Ok(out);
        }
        for o in self.store.list(TIMELINE_PREFIX)? {
            let Some(id) = timeline_id_from_key(&o.key) else {
                tracing::warn!(key = %o.key, "ignoring an object that is not named like a timeline segment");
                continue;
            };
            match self.segment(&id) {
                Ok(s) => out.push((id, s, o.modified.and_then(crate::time::from_system))),
                // Forgotten between the listing and the read.
                Err(Error::Store(e)) if e.is_not_found() => continue,
                Err(e @ Error::Corrupt { .. }) if !strict => {
                    tracing::warn!(key = %o.key, error = %e, "skipping a timeline segment that cannot be read; run `snapback check`");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            a.1.points[0]
                .time
                .cmp(&b.1.points[0].time)
                .then(a.0.cmp(&b.0))
        });
        Ok(out)
    }

    /// One segment, read and verified against its name (cached).
    pub fn segment(&self, id: &Id) -> Result<Arc<Segment>> {
        if let Some(s) = self.segments.lock().map_err(|_| poisoned())?.get(id) {
            return Ok(s.clone());
        }
        let key = timeline_key(id);
        let bytes = self.get_immutable(&key, TIMELINE_PREFIX)?;
        let seg = Arc::new(Segment::decode(&bytes, &key)?);
        self.segments
            .lock()
            .map_err(|_| poisoned())?
            .insert(*id, seg.clone());
        Ok(seg)
    }

    /// Every timeline point, oldest first, each seen as a snapshot of its
    /// base (see `Snapshot::point_of`). A segment whose base manifest is
    /// not among the snapshots is left out with a warning (`check`
    /// reports it).
    pub fn points(&self) -> Result<Vec<Snapshot>> {
        let manifests = self.snapshots()?;
        self.points_over(&manifests, true)
    }

    /// The points of every segment over `manifests`. With `once`, a point
    /// that two segments hold (a thinning interrupted between committing a
    /// segment's replacement and deleting it) is listed once, from the
    /// segment with the fewest points; without, every copy is (a point's
    /// name selects its copy).
    fn points_over(&self, manifests: &[Snapshot], once: bool) -> Result<Vec<Snapshot>> {
        let bases: std::collections::HashMap<Id, &Snapshot> =
            manifests.iter().map(|s| (s.id, s)).collect();
        let segments = self.load_segments(false)?;
        let copies = if once {
            let listed: Vec<(Id, Arc<Segment>)> =
                segments.iter().map(|(id, s, _)| (*id, s.clone())).collect();
            crate::segment::shadowed(&listed)
        } else {
            Default::default()
        };
        let mut out = Vec::new();
        for (id, seg, written) in segments {
            let Some(base) = bases.get(&seg.base) else {
                tracing::warn!(segment = %id.short(), base = %seg.base.short(), "leaving out the points of a timeline segment whose base snapshot is gone; run `snapback check`");
                continue;
            };
            for k in 0..seg.points.len() {
                if copies.contains_key(&(id, k)) {
                    continue;
                }
                match Snapshot::point_of(base, id, &seg, k, written) {
                    Some(p) => out.push(p),
                    None => {
                        tracing::warn!(segment = %id.short(), path = %seg.path, "leaving out the points of a timeline segment whose base does not hold its database; run `snapback check`");
                        break;
                    }
                }
            }
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Every committed snapshot and every timeline point, oldest first:
    /// what `latest`, `@TIME` and a point's name resolve among.
    /// Each point is listed once (see `points_over`).
    pub fn snapshots_and_points(&self) -> Result<Vec<Snapshot>> {
        self.snapshots_and_points_listed(true)
    }

    fn snapshots_and_points_listed(&self, once: bool) -> Result<Vec<Snapshot>> {
        let mut all = self.snapshots()?;
        let points = self.points_over(&all, once)?;
        all.extend(points);
        all.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    pub fn load_manifest(&self, id: &Id) -> Result<Manifest> {
        let key = snapshot_key(id);
        let bytes = self.get_immutable(&key, SNAPSHOT_PREFIX)?;
        Manifest::parse(&bytes, &key)
    }

    /// Resolves a selector among the snapshots and timeline points that
    /// `filter` accepts.
    pub fn resolve(&self, sel: &Selector, filter: impl Fn(&Snapshot) -> bool) -> Result<Snapshot> {
        // A point's name selects it even in a segment whose points another
        // one holds too; `latest` and `@T` see each point once.
        let all = self.snapshots_and_points_listed(!matches!(sel, Selector::Point { .. }))?;
        let r = resolve_in(&all, sel, &filter);
        // An id that exists but was filtered out (it does not hold the file
        // asked for): say that, and what it holds, not "no such id".
        if let (Err(_), Selector::Id(prefix)) = (&r, sel) {
            let named: Vec<&Snapshot> = all
                .iter()
                .filter(|s| s.id.to_hex().starts_with(prefix.as_str()))
                .collect();
            if let [one] = named[..] {
                return Err(Error::Selector(format!(
                    "snapshot {} exists but does not hold the file asked for; it holds: {}",
                    one.describe(),
                    holds_list(one)
                )));
            }
        }
        // An id that names a damaged manifest gets the damage, not "no such id".
        if let (Err(_), Selector::Id(prefix)) = (&r, sel) {
            let skipped = self.skipped.lock().map_err(|_| poisoned())?;
            if let Some((id, why)) = skipped
                .iter()
                .find(|(id, _)| id.to_hex().starts_with(prefix.as_str()))
            {
                return Err(Error::corrupt(
                    format!("snapshot {}", id.short()),
                    why.clone(),
                ));
            }
        }
        r
    }

    /// The packs the store holds now (one LIST of data/).
    pub(crate) fn present_packs(&self) -> Result<std::collections::HashSet<Id>> {
        Ok(self
            .store()
            .list(DATA_PREFIX)?
            .iter()
            .filter_map(|o| crate::layout::pack_id_from_key(&o.key))
            .collect())
    }

    /// Bytes of packs, indexes and dictionaries in the repository, as the
    /// store lists them.
    pub fn stored_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for prefix in [DATA_PREFIX, INDEX_PREFIX, DICT_PREFIX] {
            total += self.store.list(prefix)?.iter().map(|o| o.size).sum::<u64>();
        }
        Ok(total)
    }

    /// Resolves a selector for a path: among the snapshots that hold `path`
    /// (a file, or files under a directory) when it is given, and that carry
    /// none of `skip_tags`. An id that names a snapshot without the path is
    /// an error that says what that snapshot holds. The CLI and the repair
    /// engine both resolve through this.
    pub fn resolve_for_path(
        &self,
        sel: &Selector,
        path: Option<&str>,
        skip_tags: &[&str],
    ) -> Result<Snapshot> {
        self.resolve(sel, |s| {
            path.is_none_or(|p| s.holds(p))
                && !s
                    .manifest
                    .tags
                    .iter()
                    .any(|t| skip_tags.contains(&t.as_str()))
        })
    }

    /// Reads one blob: a range read from its pack, decompressed and verified.
    pub fn read_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| {
            Error::corrupt(
                format!("blob {}", id.short()),
                "is not in any index (run `snapback check`)",
            )
        })?;
        let key = pack_key(&loc.pack);
        let stored = self
            .store
            .get_range(&key, loc.offset as u64, loc.stored_len as u64)?;
        self.open_located(index, id, &loc, &stored, &key)
    }

    /// Opens a blob's stored bytes as its index location describes them:
    /// with the dictionary it names, if any (read once per handle).
    pub fn open_located(
        &self,
        index: &MasterIndex,
        id: &Id,
        loc: &BlobLocation,
        stored: &[u8],
        place: &str,
    ) -> Result<Vec<u8>> {
        let dict = match index.dict_of(loc) {
            Some(d) => Some(self.dict_for_blob(&d, id)?),
            None => None,
        };
        open_blob(&self.codec, id, stored, loc.raw_len, place, dict.as_deref())
    }

    /// `open_located` into `out`, the blob's place (see
    /// `BlobCodec::open_into`).
    pub(crate) fn open_located_into(
        &self,
        index: &MasterIndex,
        id: &Id,
        loc: &BlobLocation,
        stored: &[u8],
        out: &mut [u8],
        place: &str,
    ) -> Result<()> {
        let dict = match index.dict_of(loc) {
            Some(d) => Some(self.dict_for_blob(&d, id)?),
            None => None,
        };
        self.codec
            .open_into(id, stored, out, place, dict.as_deref())
    }

    /// The dictionary `dict` that blob `id` needs; an error that names both
    /// when it cannot be read.
    pub(crate) fn dict_for_blob(&self, dict: &Id, id: &Id) -> Result<Arc<Dict>> {
        self.dict(dict).map_err(|e| match e {
            Error::Corrupt { what, detail } => Error::corrupt(
                format!("blob {}", id.short()),
                format!(
                    "it needs dictionary {what}, which is damaged: {detail} (run `snapback check`)"
                ),
            ),
            Error::Store(s) if s.is_not_found() => Error::corrupt(
                format!("blob {}", id.short()),
                format!(
                    "it needs dictionary {}, which is missing (run `snapback check`)",
                    dict_key(dict)
                ),
            ),
            e => e,
        })
    }

    /// A dictionary, read once per handle and verified against its name
    /// (and opened, in an encrypted repository).
    pub(crate) fn dict(&self, id: &Id) -> Result<Arc<Dict>> {
        if let Some(d) = self.dicts.lock().map_err(|_| poisoned())?.get(id) {
            return Ok(d.clone());
        }
        let key = dict_key(id);
        let bytes = self.get_immutable(&key, DICT_PREFIX)?;
        let d = Arc::new(Dict::parse(bytes, self.config.compression_level, &key)?);
        self.dicts
            .lock()
            .map_err(|_| poisoned())?
            .insert(*id, d.clone());
        Ok(d)
    }

    /// The full chunk list of a file; of a point's database (`file.point`),
    /// the base's list with the point's changes replayed, every point's
    /// checksum checked on the way.
    pub fn chunk_list(&self, index: &MasterIndex, file: &FileEntry) -> Result<Vec<ChunkRef>> {
        let place = format!("chunk list of {}", file.path);
        // The base's parts and the patch in one batch of reads.
        let mut ids = file.chunks.base.clone();
        ids.extend(file.chunks.patch);
        let mut blobs = self.read_list_blobs(index, &ids)?;
        let patch = match (&file.chunks.patch, blobs.pop()) {
            (Some(_), Some(p)) => chunklist::decode_patch(&p, &place)?,
            (None, last) => {
                blobs.extend(last);
                vec![]
            }
            (Some(_), None) => return Err(Error::internal("a chunk list's patch was not read")),
        };
        let mut base = Vec::with_capacity(blobs.len() * chunklist::PART_LEN);
        for part in &blobs {
            base.extend(chunklist::decode_part(part, &place)?);
        }
        let list = chunklist::apply_patch(base, &patch, file.chunks.count, &place)?;
        let Some(p) = &file.point else {
            return Ok(list);
        };
        let seg = self.segment(&p.segment)?;
        replay(
            list,
            seg.page_size,
            &seg.points,
            p.index,
            &format!("timeline segment {}", p.segment.short()),
        )
    }

    pub(crate) fn base_list(
        &self,
        index: &MasterIndex,
        parts: &[Id],
        path: &str,
    ) -> Result<Vec<ChunkRef>> {
        let place = format!("chunk list of {path}");
        let mut out = Vec::with_capacity(parts.len() * chunklist::PART_LEN);
        for part in self.read_list_blobs(index, parts)? {
            out.extend(chunklist::decode_part(&part, &place)?);
        }
        Ok(out)
    }

    /// The chunk-list blobs `ids`, in that order, each checked as
    /// `read_list_blob` checks one, read all at once: grouped by pack,
    /// neighbours in one range read, `Tuning::read_parallelism` reads at a
    /// time (on S3 every read waits on the server: one by one, the 64
    /// parts of a 1 GiB database's list took seconds).
    pub(crate) fn read_list_blobs(&self, index: &MasterIndex, ids: &[Id]) -> Result<Vec<Vec<u8>>> {
        if ids.len() < 2 {
            return ids
                .iter()
                .map(|id| self.read_list_blob(index, id))
                .collect();
        }
        for id in ids {
            match index.get(id) {
                Some(loc) if loc.kind == BlobKind::ChunkList => {}
                // As `read_list_blob` and `read_blob` say it.
                _ => return self.read_list_blob(index, id).map(|_| Vec::new()),
            }
        }
        let mut seen = std::collections::HashSet::new();
        let wanted = ids
            .iter()
            .filter(|id| seen.insert(**id))
            .map(|id| (*id, ()));
        let reads = fetch::plan_reads(
            index,
            wanted,
            "a chunk list",
            fetch::range_limit(&*self.store),
        )?;
        let got: std::sync::Mutex<HashMap<Id, Vec<u8>>> = std::sync::Mutex::new(HashMap::new());
        fetch::run_parallel(&reads, self.store.tuning().read_parallelism, |r| {
            let range = self.store.get_range(&r.key, r.start, r.end - r.start)?;
            for (id, l, ()) in &r.blobs {
                let a = (l.offset as u64 - r.start) as usize;
                let stored = range.get(a..a + l.stored_len as usize).ok_or_else(|| {
                    Error::corrupt(&r.key, "the range read is shorter than asked")
                })?;
                let raw = self.open_located(index, id, l, stored, &r.key)?;
                got.lock()
                    .map_err(|_| crate::repo::poisoned())?
                    .insert(*id, raw);
            }
            Ok(())
        })?;
        let got = got.into_inner().map_err(|_| crate::repo::poisoned())?;
        ids.iter()
            .map(|id| {
                got.get(id).cloned().ok_or_else(|| {
                    Error::internal(format!(
                        "chunk-list blob {} was planned but not read",
                        id.short()
                    ))
                })
            })
            .collect()
    }

    pub(crate) fn read_list_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        if let Some(loc) = index.get(id) {
            if loc.kind != BlobKind::ChunkList {
                return Err(Error::corrupt(
                    format!("blob {}", id.short()),
                    "is not a chunk list",
                ));
            }
        }
        self.read_blob(index, id)
    }

    /// Random access to one file of a snapshot.
    pub fn file_reader(&self, file: &FileEntry) -> Result<FileReader> {
        let index = self.index()?;
        let chunks = self.chunk_list(&index, file)?;
        let mut offsets = Vec::with_capacity(chunks.len() + 1);
        let mut off = 0u64;
        for c in &chunks {
            offsets.push(off);
            off += c.len as u64;
        }
        if off != file.size {
            return Err(Error::corrupt(
                format!("chunk list of {}", file.path),
                format!("chunks add up to {off} bytes, the file has {}", file.size),
            ));
        }
        offsets.push(off);
        Ok(FileReader {
            chunks,
            offsets,
            index,
        })
    }
}

impl Repository {
    /// `file_reader`, with the chunk list bound to what the manifest
    /// recorded: its whole-file checksum (`db_checksum`) must be the
    /// manifest's before a byte is read.
    pub fn proven_reader(&self, file: &FileEntry) -> Result<ProvenReader> {
        let r = self.file_reader(file)?;
        if chunklist::checksum_of(&r.chunks).to_hex() != file.db_checksum {
            return Err(Error::corrupt(
                format!("chunk list of {}", file.path),
                "its checksum does not match the manifest's",
            ));
        }
        Ok(ProvenReader::proven(r, file))
    }
}

/// A file's chunk layout proven against its manifest entry (the
/// whole-file checksum and the size): made only by
/// `Repository::proven_reader` and by `PointWalk::prove`.
#[derive(Debug, Clone)]
pub struct ProvenReader {
    reader: FileReader,
    path: String,
    db_checksum: String,
}

impl ProvenReader {
    /// For the provers of this crate, after the proof.
    pub(crate) fn proven(reader: FileReader, file: &FileEntry) -> ProvenReader {
        ProvenReader {
            reader,
            path: file.path.clone(),
            db_checksum: file.db_checksum.clone(),
        }
    }

    /// Whether this is the layout proven for `file` (its path, checksum
    /// and size).
    pub fn is_for(&self, file: &FileEntry) -> bool {
        self.path == file.path
            && self.db_checksum == file.db_checksum
            && self.reader.size() == file.size
    }

    pub fn reader(&self) -> &FileReader {
        &self.reader
    }

    pub fn into_reader(self) -> FileReader {
        self.reader
    }
}

/// The chunk layout of one file, for reads at any offset.
#[derive(Debug, Clone)]
pub struct FileReader {
    pub chunks: Vec<ChunkRef>,
    /// offsets[i] is where chunk i starts; the last element is the size.
    pub offsets: Vec<u64>,
    pub index: Arc<MasterIndex>,
}

impl FileReader {
    pub fn size(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// The chunk that holds byte `offset`, if any.
    pub fn chunk_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.size() {
            return None;
        }
        Some(self.offsets.partition_point(|&o| o <= offset) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::InitOptions;
    use snapback_storage::Store;

    #[test]
    fn metadata_cache_is_used_and_verified() {
        use snapback_storage::LocalStore;
        let d = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::create(d.path().join("repo")).expect("store"));
        let repo = Repository::init(store.clone(), &InitOptions::default()).expect("init");
        let f = d.path().join("f.txt");
        std::fs::write(&f, b"hello").expect("write");
        let r = repo
            .snapshot(&[f], &crate::SnapshotOptions::default(), &crate::NoProgress)
            .expect("snapshot");
        let cached = Repository::open(store)
            .expect("open")
            .with_cache_dir(d.path().join("cache"));
        let m = cached.load_manifest(&r.id).expect("load");
        assert_eq!(m, r.manifest);
        let copy = d
            .path()
            .join("cache")
            .join(&cached.config().repo_id)
            .join(format!("snapshots/{}", r.id));
        assert!(copy.exists(), "the manifest was cached");
        // A damaged cache entry is never trusted: the store's copy is used.
        std::fs::write(&copy, b"{\"format_version\": 1}").expect("damage");
        assert_eq!(cached.load_manifest(&r.id).expect("reload"), r.manifest);
        assert_eq!(
            Id::of(&std::fs::read(&copy).expect("read")),
            r.id,
            "the entry was rewritten"
        );
    }

    #[test]
    fn file_reader_locates_chunks() {
        let r = FileReader {
            chunks: vec![],
            offsets: vec![0, 10, 25, 30],
            index: Arc::new(MasterIndex::default()),
        };
        assert_eq!(r.chunk_at(0), Some(0));
        assert_eq!(r.chunk_at(9), Some(0));
        assert_eq!(r.chunk_at(10), Some(1));
        assert_eq!(r.chunk_at(29), Some(2));
        assert_eq!(r.chunk_at(30), None);
    }

    #[test]
    fn resolve_for_path_narrows_to_snapshots_holding_the_path_without_skipped_tags() {
        use snapback_storage::LocalStore;
        let d = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::create(d.path().join("repo")).expect("store"));
        let repo = Repository::init(store, &InitOptions::default()).expect("init");
        let dir = d.path().join("src");
        std::fs::create_dir(&dir).expect("mkdir");
        let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
        std::fs::write(&a, b"a").expect("write");
        std::fs::write(&b, b"b").expect("write");
        let opts = crate::SnapshotOptions::default();
        let sa = repo
            .snapshot(std::slice::from_ref(&a), &opts, &crate::NoProgress)
            .expect("a");
        let sb = repo
            .snapshot(std::slice::from_ref(&b), &opts, &crate::NoProgress)
            .expect("b");
        let tagged = crate::SnapshotOptions {
            tags: vec!["pre-repair".into()],
            ..Default::default()
        };
        let sa2 = repo
            .snapshot(std::slice::from_ref(&a), &tagged, &crate::NoProgress)
            .expect("a2");
        let pa = repo.snapshots().expect("list")[0].manifest.files[0]
            .path
            .clone();
        let latest = Selector::Latest;
        let got = |path: Option<&str>, skip: &[&str]| {
            repo.resolve_for_path(&latest, path, skip)
                .expect("resolve")
                .id
        };
        assert_eq!(got(None, &[]), sa2.id);
        assert_eq!(got(Some(&pa), &[]), sa2.id);
        assert_eq!(got(Some(&pa), &["pre-repair"]), sa.id);
        let parent = std::path::Path::new(&pa).parent().expect("parent");
        assert_eq!(got(parent.to_str(), &["pre-repair"]), sb.id, "a directory");
        let by_id = Selector::Id(sb.id.to_hex()[..8].to_string());
        let e = repo
            .resolve_for_path(&by_id, Some(&pa), &[])
            .expect_err("b does not hold a");
        assert!(e.to_string().contains("exists but does not hold"), "{e}");
    }
}
