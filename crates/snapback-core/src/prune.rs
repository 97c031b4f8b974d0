//! Prune: delete data that no snapshot references, as a plan, then apply.
//!
//! Safety while other processes work: prune holds the **exclusive** lock for
//! its whole run, and snapshot, repair and check hold shared locks, so no
//! snapshot is in progress while prune decides what is unreferenced. A
//! snapshot that starts after prune reloads the indexes, which no longer
//! list deleted packs, and so stores those blobs anew.
//!
//! The lock alone is not enough: a lock from another host goes stale by its
//! age, and that host may only be paused (a frozen VM or container) or have
//! a slow clock. So prune never deletes or repacks a pack younger than
//! `min_pack_age` (default [`DEFAULT_MIN_PACK_AGE`], 24 h): a running
//! snapshot's packs are unreferenced until its manifest is written. A pack's
//! age is measured from the time the *store* records for it (file mtime,
//! S3 `LastModified`), so the clock of the host that wrote it does not
//! matter; only the skew between prune's clock and the store's, which must
//! stay well below the window. And a snapshot checks, right before it
//! writes its manifest, that every pack it references still exists.
//!
//! Order of writes, each step safe to interrupt:
//! 1. repack: the used blobs of mostly-unused packs are range-read (verified)
//!    and written to new packs (verified);
//! 2. new index objects for every kept and new pack are written (verified);
//! 3. the old index objects are deleted;
//! 4. unreferenced, repacked and unindexed packs are deleted;
//! 5. dictionaries (`dicts/`) that no kept index entry and no manifest
//!    names, and that the store wrote at least `min_pack_age` ago, are
//!    deleted (a running snapshot may be about to name a new one).
//!
//! An interruption before 3 leaves old and new indexes side by side (both
//! point at existing packs); between 3 and 4 it leaves packs no index lists,
//! which the next prune deletes. Prune never downloads a pack whole.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{decode_index, encode_index, IndexedPack, MasterIndex};
use crate::layout::{
    dict_id_from_key, index_key, pack_id_from_key, pack_key, DATA_PREFIX, DICT_PREFIX, INDEX_PREFIX,
};
use crate::lock::LockKind;
use crate::object::put_verified;
use crate::pack::{open_blob, PackBuilder, PackEntry};
use crate::repo::Repository;

/// Repack a pack when less than this fraction of its bytes is used.
const REPACK_BELOW: f64 = 0.5;

/// Packs younger than this are never deleted or repacked (kopia keeps
/// unreferenced blobs for 24 h as well): longer than any snapshot can run,
/// or be paused, without anyone noticing.
pub const DEFAULT_MIN_PACK_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// How long to wait for the exclusive lock.
    pub lock_wait: Duration,
    /// Plan only; delete nothing.
    pub dry_run: bool,
    /// Packs the store wrote less than this long ago are kept as they are.
    pub min_pack_age: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            lock_wait: Duration::from_secs(300),
            dry_run: false,
            min_pack_age: DEFAULT_MIN_PACK_AGE,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PrunePlan {
    pub snapshots: usize,
    pub used_blobs: usize,
    pub packs_total: usize,
    /// Packs with no used blob, or no index entry at all.
    pub delete_packs: Vec<String>,
    /// Packs whose used blobs move to new packs before they are deleted.
    pub repack_packs: Vec<String>,
    pub bytes_deleted: u64,
    pub bytes_repacked: u64,
    pub bytes_kept: u64,
    /// Packs kept whole because the store wrote them less than
    /// `min_pack_age` ago (a snapshot may still be writing them).
    pub young_packs: usize,
    pub bytes_young: u64,
    /// The window, in seconds.
    pub min_pack_age_secs: u64,
    /// Dictionaries that no kept blob and no snapshot names.
    pub delete_dicts: Vec<String>,
    #[serde(skip)]
    old_index_keys: Vec<String>,
    #[serde(skip)]
    keep: Vec<IndexedPack>,
    #[serde(skip)]
    repack: Vec<IndexedPack>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub packs_deleted: usize,
    pub packs_written: usize,
    /// Bytes of the packs deleted (repacked ones included).
    pub bytes_deleted: u64,
    /// Bytes of the new packs that repacking wrote.
    pub bytes_written: u64,
    /// What the repository shrank by: deleted minus written. The blobs a
    /// repack moved are still stored, so they are not freed.
    pub bytes_freed: u64,
    pub dicts_deleted: usize,
}

impl Repository {
    /// Every blob that some snapshot references (data and chunk lists),
    /// and every dictionary a manifest names (which the next capture of
    /// its database goes on with).
    fn used_blobs(&self, index: &MasterIndex) -> Result<(usize, HashSet<Id>, HashSet<Id>)> {
        let snaps = self.snapshots_strict()?;
        let mut used = HashSet::new();
        let mut dicts = HashSet::new();
        let mut lists_seen = HashSet::new();
        for s in &snaps {
            for f in &s.manifest.files {
                if let Some(d) = f.sqlite.as_ref().and_then(|q| q.dict.as_ref()) {
                    dicts.insert(d.id);
                }
                used.extend(f.chunks.blob_ids().copied());
                // A base shared by many snapshots is read once.
                let key: Vec<Id> = f.chunks.blob_ids().copied().collect();
                if !lists_seen.insert(key) {
                    continue;
                }
                for c in self.chunk_list(index, f)? {
                    used.insert(c.id);
                }
            }
        }
        // The pages timeline points changed (their bases are manifests,
        // counted above; forget keeps a base while a segment names it).
        for (_, seg) in self.segments_strict()? {
            for p in &seg.points {
                used.extend(p.changes.iter().map(|(_, id)| *id));
            }
        }
        Ok((snaps.len(), used, dicts))
    }

    /// Plans a prune. Takes no lock; `prune` re-plans under the exclusive lock.
    pub fn plan_prune(&self, min_pack_age: Duration) -> Result<PrunePlan> {
        let mut index = MasterIndex::default();
        let mut old_index_keys = Vec::new();
        let mut packs: HashMap<Id, IndexedPack> = HashMap::new();
        let mut keys: Vec<String> = self
            .store()
            .list(INDEX_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        for key in keys {
            let bytes = self.store().get(&key)?;
            for p in decode_index(&bytes, &key)? {
                index.insert_pack(&p);
                packs.entry(p.id).or_insert(p);
            }
            old_index_keys.push(key);
        }
        let (snapshots, used, mut named_dicts) = self.used_blobs(&index)?;
        // Packs that no index lists are deleted below. That is only safe when
        // every blob a snapshot uses is indexed: after an index object is
        // lost, its packs hold live data that only `repair-index` can find.
        let unindexed = used.iter().filter(|b| !index.contains(b)).count();
        if unindexed > 0 {
            return Err(Error::Verification(format!(
                "{unindexed} blob(s) that snapshots use are not in any index; nothing was deleted. Run `snapback repair-index` first, then `snapback check`."
            )));
        }
        let now = std::time::SystemTime::now();
        let existing: HashMap<Id, (u64, bool)> = self
            .store()
            .list(DATA_PREFIX)?
            .into_iter()
            .filter_map(|o| {
                // Young when the store wrote it within the window, or when
                // the store cannot say when (or says: in the future).
                let young = o
                    .modified
                    .is_none_or(|m| now.duration_since(m).map_or(true, |age| age < min_pack_age));
                pack_id_from_key(&o.key).map(|id| (id, (o.size, young)))
            })
            .collect();
        let mut plan = PrunePlan {
            snapshots,
            used_blobs: used.len(),
            packs_total: existing.len(),
            min_pack_age_secs: min_pack_age.as_secs(),
            old_index_keys,
            ..Default::default()
        };
        for (id, &(size, young)) in &existing {
            if young {
                // Kept exactly as it is, every index entry included: a
                // running snapshot's blobs are in it, unreferenced so far.
                plan.young_packs += 1;
                plan.bytes_young += size;
                plan.bytes_kept += size;
                if let Some(p) = packs.get(id) {
                    plan.keep.push(p.clone());
                }
                continue;
            }
            let Some(p) = packs.get(id) else {
                plan.delete_packs.push(pack_key(id));
                plan.bytes_deleted += size;
                continue;
            };
            // A blob counts as used in the pack the master index points to.
            let live: Vec<PackEntry> = p
                .entries
                .iter()
                .filter(|e| used.contains(&e.id) && index.get(&e.id).is_some_and(|l| l.pack == *id))
                .copied()
                .collect();
            let live_bytes: u64 = live.iter().map(|e| e.stored_len as u64).sum();
            let kept = IndexedPack {
                id: *id,
                size: p.size,
                entries: live,
            };
            if kept.entries.is_empty() {
                plan.delete_packs.push(pack_key(id));
                plan.bytes_deleted += size;
            } else if kept.entries.len() < p.entries.len()
                && (live_bytes as f64)
                    < REPACK_BELOW
                        * (p.entries.iter().map(|e| e.stored_len as u64).sum::<u64>() as f64)
            {
                // Only when blobs are dead, measured against blob bytes (a
                // small pack's header would otherwise always look wasted).
                plan.repack_packs.push(pack_key(id));
                plan.bytes_repacked += live_bytes;
                plan.bytes_deleted += size - live_bytes;
                plan.repack.push(kept);
            } else {
                plan.bytes_kept += size;
                plan.keep.push(kept);
            }
        }
        plan.delete_packs.sort();
        plan.repack_packs.sort();
        // A dictionary goes when no blob that stays names it, no manifest
        // does, and it is old enough that no running snapshot can be about
        // to.
        for p in plan.keep.iter().chain(&plan.repack) {
            named_dicts.extend(p.entries.iter().filter_map(|e| e.dict));
        }
        for o in self.store().list(DICT_PREFIX)? {
            let young = o
                .modified
                .is_none_or(|m| now.duration_since(m).map_or(true, |age| age < min_pack_age));
            if let Some(id) = dict_id_from_key(&o.key) {
                if !young && !named_dicts.contains(&id) {
                    plan.delete_dicts.push(o.key);
                }
            }
        }
        plan.delete_dicts.sort();
        Ok(plan)
    }

    /// Prunes under the exclusive lock: plans again (so the plan matches the
    /// repository as locked), then applies.
    pub fn prune(&self, opts: &PruneOptions) -> Result<(PrunePlan, PruneReport)> {
        let _lock = self.lock(LockKind::Exclusive, "prune", opts.lock_wait)?;
        let plan = self.plan_prune(opts.min_pack_age)?;
        if opts.dry_run {
            return Ok((plan, PruneReport::default()));
        }
        let store = self.store().as_ref();
        let mut report = PruneReport::default();
        let mut new_index = plan.keep.clone();

        // 1. Repack.
        let mut builder = PackBuilder::new();
        let flush = |b: PackBuilder,
                     out: &mut Vec<IndexedPack>,
                     report: &mut PruneReport|
         -> Result<()> {
            let (bytes, id, entries) = b.finish(self.codec())?;
            put_verified(store, &pack_key(&id), &bytes)?;
            tracing::info!(pack = %id.short(), bytes = bytes.len(), blobs = entries.len(), "repacked pack stored");
            out.push(IndexedPack {
                id,
                size: bytes.len() as u64,
                entries,
            });
            report.packs_written += 1;
            report.bytes_written += bytes.len() as u64;
            Ok(())
        };
        for p in &plan.repack {
            let key = pack_key(&p.id);
            for e in &p.entries {
                let stored = store.get_range(&key, e.offset as u64, e.stored_len as u64)?;
                let dict = match &e.dict {
                    Some(d) => Some(self.dict_for_blob(d, &e.id)?),
                    None => None,
                };
                open_blob(
                    self.codec(),
                    &e.id,
                    &stored,
                    e.raw_len,
                    &key,
                    dict.as_deref(),
                )?;
                if !builder.has_room_for(e.dict.as_ref()) {
                    flush(std::mem::take(&mut builder), &mut new_index, &mut report)?;
                }
                builder.add(e.kind, e.id, &stored, e.raw_len, e.dict)?;
                if builder.size() as u64 >= self.config().pack_target_size {
                    flush(std::mem::take(&mut builder), &mut new_index, &mut report)?;
                }
            }
        }
        if !builder.is_empty() {
            flush(builder, &mut new_index, &mut report)?;
        }

        // 2. New indexes (one object per 64k blobs), 3. old ones removed.
        let mut chunk: Vec<IndexedPack> = Vec::new();
        let mut n = 0usize;
        let mut written = HashSet::new();
        let mut write = |chunk: &mut Vec<IndexedPack>| -> Result<()> {
            if chunk.is_empty() {
                return Ok(());
            }
            let bytes = encode_index(chunk)?;
            let key = index_key(&Id::of(&bytes));
            put_verified(store, &key, &bytes)?;
            written.insert(key);
            chunk.clear();
            Ok(())
        };
        for p in new_index.iter().cloned() {
            n += p.entries.len();
            chunk.push(p);
            if n >= 65_536 {
                write(&mut chunk)?;
                n = 0;
            }
        }
        write(&mut chunk)?;
        for key in &plan.old_index_keys {
            if !written.contains(key) {
                store.delete(key)?;
            }
        }

        // 4. Packs. A pack this prune just wrote is never deleted, even if
        // a repack reproduced an existing pack byte for byte (same name).
        let rewritten: HashSet<String> = new_index.iter().map(|p| pack_key(&p.id)).collect();
        for key in plan
            .delete_packs
            .iter()
            .chain(&plan.repack_packs)
            .filter(|k| !rewritten.contains(*k))
        {
            let size = store.stat(key)?.unwrap_or(0);
            store.delete(key)?;
            tracing::info!(pack = %key, bytes = size, "pack deleted");
            report.packs_deleted += 1;
            report.bytes_deleted += size;
        }
        // 5. Dictionaries no blob needs any longer.
        for key in &plan.delete_dicts {
            store.delete(key)?;
            tracing::info!(dict = %key, "dictionary deleted");
            report.dicts_deleted += 1;
        }
        report.bytes_freed = report.bytes_deleted.saturating_sub(report.bytes_written);
        self.refresh_index_from_scratch()?;
        Ok((plan, report))
    }
}
