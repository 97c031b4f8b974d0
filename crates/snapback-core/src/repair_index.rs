//! repair-index: rebuilds the index objects from the packs alone.
//!
//! Index objects are a cache of what the pack headers say (docs/format.md),
//! so when one is lost or damaged the packs still hold everything needed to
//! find every blob. This module reads, for every pack, only its 12-byte
//! prefix and its header (two range reads; a pack is never downloaded
//! whole), and plans a new set of index objects from them. Plan, then
//! apply, under the **exclusive** lock:
//!
//! 1. the new index objects are written, each verified with put-then-stat
//!    (`put_verified`), exactly as a snapshot writes its index;
//! 2. only then are the old index objects that are not among the new ones
//!    deleted.
//!
//! Each step is safe to interrupt: before 2, old and new indexes stand side
//! by side and agree where both are readable. The new objects are encoded
//! deterministically (packs by id, entries in header order), so running
//! repair-index on a healthy repository writes and deletes nothing.
//!
//! A pack whose prefix or header cannot be read is reported. If a readable
//! old index object lists that pack (with the same size), its entries are
//! kept from there: the blobs themselves may be intact (in an encrypted
//! repository one flipped bit makes the whole sealed header unreadable while
//! every blob still authenticates), and each blob is verified on every read
//! anyway. Dropping them would leave the pack unindexed, and `prune` would
//! then delete data that can still be restored. A pack that no old index
//! knows stays unindexed, and `check` names the snapshots that need it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{decode_index, encode_index, IndexedPack};
use crate::layout::{index_key, pack_id_from_key, DATA_PREFIX, INDEX_PREFIX};
use crate::lock::LockKind;
use crate::object::put_verified;
use crate::pack::{parse_header, parse_prefix};
use crate::repo::Repository;

/// At most this many blob entries per new index object (as prune writes).
const ENTRIES_PER_INDEX: usize = 65_536;

/// A pack that could not be indexed, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnreadablePack {
    pub key: String,
    pub problem: String,
}

/// What repair-index found and would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairIndexPlan {
    /// Packs found under `data/`.
    pub packs: usize,
    /// Packs whose header was read and that go into the new index.
    pub packs_indexed: usize,
    /// Blob entries in the new index (a blob stored twice counts twice).
    pub blobs: usize,
    /// Packs whose prefix or header is unreadable, or with a name that is
    /// not a pack id.
    pub unreadable_packs: Vec<UnreadablePack>,
    /// Of those, the packs whose entries are kept from an old index object.
    pub packs_kept_from_old_index: usize,
    /// Index objects present now.
    pub old_index_objects: Vec<String>,
    /// Index objects the repair writes (the ones that exist already with
    /// the same content are not written again).
    pub new_index_objects: Vec<String>,
    /// Old index objects the repair deletes once the new ones are verified.
    pub delete_index_objects: Vec<String>,
    /// Bytes read from the store to build the plan (prefixes and headers).
    pub bytes_read: u64,
    #[serde(skip)]
    encoded: Vec<(String, Vec<u8>)>,
}

impl RepairIndexPlan {
    /// True when applying would change nothing.
    pub fn is_noop(&self) -> bool {
        self.delete_index_objects.is_empty()
            && self
                .new_index_objects
                .iter()
                .all(|k| self.old_index_objects.contains(k))
    }
}

/// What repair-index did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairIndexReport {
    pub index_objects_written: usize,
    pub index_objects_deleted: usize,
}

impl Repository {
    /// Reads every pack's prefix and header and plans the new index
    /// objects. Takes no lock; `repair_index` plans again under the
    /// exclusive lock.
    pub fn plan_repair_index(&self) -> Result<RepairIndexPlan> {
        let store = self.store();
        let mut plan = RepairIndexPlan::default();
        let mut found: BTreeMap<Id, IndexedPack> = BTreeMap::new();
        let mut old: Vec<String> = store
            .list(INDEX_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        old.sort();
        // What the readable old index objects say, for packs whose header
        // turns out to be unreadable.
        let mut known: HashMap<Id, (IndexedPack, String)> = HashMap::new();
        for key in &old {
            let r = self
                .get_immutable(key, INDEX_PREFIX)
                .and_then(|b| decode_index(&b, key));
            match r {
                Ok(packs) => {
                    for p in packs {
                        known.entry(p.id).or_insert_with(|| (p, key.clone()));
                    }
                }
                Err(e) => tracing::warn!(index = %key, error = %e, "old index object unreadable"),
            }
        }
        let mut listing = store.list(DATA_PREFIX)?;
        listing.sort_by(|a, b| a.key.cmp(&b.key));
        plan.packs = listing.len();
        for o in listing {
            let Some(id) = pack_id_from_key(&o.key) else {
                plan.unreadable_packs.push(UnreadablePack {
                    key: o.key.clone(),
                    problem: "not named like a pack".into(),
                });
                continue;
            };
            match self.read_pack_header(&o.key, o.size, &mut plan.bytes_read) {
                Ok(entries) => {
                    tracing::debug!(pack = %o.key, blobs = entries.len(), "pack header read");
                    found.insert(
                        id,
                        IndexedPack {
                            id,
                            size: o.size,
                            entries,
                        },
                    );
                }
                Err(e) => {
                    let mut problem = e.to_string();
                    match known.remove(&id) {
                        Some((p, from)) if p.size == o.size => {
                            tracing::warn!(pack = %o.key, error = %e, index = %from, "pack header unreadable; keeping its entries from the old index");
                            problem.push_str(&format!(
                                "; its {} blob entries are kept from {from} (each blob is still verified when read)",
                                p.entries.len()
                            ));
                            plan.packs_kept_from_old_index += 1;
                            found.insert(id, p);
                        }
                        _ => {
                            tracing::warn!(pack = %o.key, error = %e, "pack left out of the index");
                            problem.push_str(
                                "; no readable index lists it, so its blobs stay unindexed",
                            );
                        }
                    }
                    plan.unreadable_packs.push(UnreadablePack {
                        key: o.key.clone(),
                        problem,
                    });
                }
            }
        }
        plan.packs_indexed = found.len();
        plan.blobs = found.values().map(|p| p.entries.len()).sum();
        plan.old_index_objects = old;

        // Deterministic grouping, so that a healthy repository re-encodes to
        // the same objects.
        let mut group: Vec<IndexedPack> = Vec::new();
        let mut n = 0usize;
        let mut encoded = Vec::new();
        let mut flush = |group: &mut Vec<IndexedPack>| -> Result<()> {
            if group.is_empty() {
                return Ok(());
            }
            let bytes = encode_index(group)?;
            encoded.push((index_key(&Id::of(&bytes)), bytes));
            group.clear();
            Ok(())
        };
        for p in found.into_values() {
            n += p.entries.len();
            group.push(p);
            if n >= ENTRIES_PER_INDEX {
                flush(&mut group)?;
                n = 0;
            }
        }
        flush(&mut group)?;
        let new_keys: HashSet<&String> = encoded.iter().map(|(k, _)| k).collect();
        plan.new_index_objects = encoded.iter().map(|(k, _)| k.clone()).collect();
        plan.delete_index_objects = plan
            .old_index_objects
            .iter()
            .filter(|k| !new_keys.contains(k))
            .cloned()
            .collect();
        plan.encoded = encoded;
        Ok(plan)
    }

    /// The entries of one pack, from its prefix and header alone.
    fn read_pack_header(
        &self,
        key: &str,
        size: u64,
        bytes_read: &mut u64,
    ) -> Result<Vec<crate::pack::PackEntry>> {
        if size < 12 {
            return Err(Error::corrupt(
                key,
                format!("pack is {size} bytes, shorter than a pack prefix"),
            ));
        }
        let prefix = self.store().get_range(key, 0, 12)?;
        *bytes_read += prefix.len() as u64;
        let prefix = parse_prefix(self.codec(), &prefix, key)?;
        let hlen = prefix.hlen as u64;
        if 12 + hlen > size {
            return Err(Error::corrupt(
                key,
                format!("pack header of {hlen} bytes does not fit in the pack's {size} bytes"),
            ));
        }
        let header = self.store().get_range(key, 12, hlen)?;
        *bytes_read += header.len() as u64;
        parse_header(self.codec(), &prefix, &header, size, key)
    }

    /// Rebuilds the index objects from the packs under the exclusive lock:
    /// plans, then (unless `dry_run`) writes the new objects, verifies
    /// them, and deletes the old ones.
    pub fn repair_index(
        &self,
        lock_wait: Duration,
        dry_run: bool,
    ) -> Result<(RepairIndexPlan, RepairIndexReport)> {
        let _lock = self.lock(LockKind::Exclusive, "repair-index", lock_wait)?;
        let plan = self.plan_repair_index()?;
        let mut report = RepairIndexReport::default();
        if dry_run {
            return Ok((plan, report));
        }
        let store = self.store().as_ref();
        for (key, bytes) in &plan.encoded {
            if plan.old_index_objects.contains(key) {
                continue;
            }
            put_verified(store, key, bytes)?;
            tracing::info!(index = %key, bytes = bytes.len(), "index object written");
            report.index_objects_written += 1;
        }
        for key in &plan.delete_index_objects {
            store.delete(key)?;
            tracing::info!(index = %key, "old index object deleted");
            report.index_objects_deleted += 1;
        }
        self.refresh_index_from_scratch()?;
        Ok((plan, report))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use snapback_storage::{LocalStore, Store};

    use super::*;
    use crate::layout::pack_key;
    use crate::pack::{seal_blob, BlobKind, PackBuilder};

    fn repo() -> (tempfile::TempDir, Repository) {
        repo_with(false)
    }

    fn repo_with(encrypted: bool) -> (tempfile::TempDir, Repository) {
        let d = tempfile::tempdir().expect("tmp");
        let s: Arc<dyn Store> = Arc::new(LocalStore::create(d.path().join("r")).expect("store"));
        let opts = crate::timeline_tests::init_opts(crate::FORMAT_VERSION, encrypted);
        let r = Repository::init(s, &opts).expect("init");
        (d, r)
    }

    fn put_pack(r: &Repository, blobs: &[&[u8]]) -> (Id, Vec<Id>) {
        let mut b = PackBuilder::new();
        let mut ids = vec![];
        for raw in blobs {
            let id = r.codec().blob_id(raw);
            b.add(
                BlobKind::Data,
                id,
                &seal_blob(r.codec(), &id, raw, None).expect("seal"),
                raw.len() as u32,
                None,
            )
            .expect("add");
            ids.push(id);
        }
        let (bytes, id, _) = b.finish(r.codec()).expect("finish");
        put_verified(r.store().as_ref(), &pack_key(&id), &bytes).expect("put");
        (id, ids)
    }

    #[test]
    fn rebuilds_every_blob_from_headers_and_is_idempotent() {
        for encrypted in [false, true] {
            rebuilds(encrypted);
        }
    }

    fn rebuilds(encrypted: bool) {
        let (_d, r) = repo_with(encrypted);
        let (_, a) = put_pack(&r, &[b"one", b"two"]);
        let (_, b) = put_pack(&r, &[b"three"]);
        assert_eq!(r.refresh_index_from_scratch().expect("idx").blob_count(), 0);
        let (plan, rep) = r
            .repair_index(Duration::from_secs(1), false)
            .expect("repair");
        assert_eq!((plan.packs, plan.packs_indexed, plan.blobs), (2, 2, 3));
        assert_eq!(rep.index_objects_written, 1);
        let idx = r.index().expect("index");
        for id in a.iter().chain(&b) {
            assert!(idx.contains(id), "blob {id} is indexed again");
            let raw = r.read_blob(&idx, id).expect("read");
            assert_eq!(r.codec().blob_id(&raw), *id);
        }
        // A second run on the now healthy repository changes nothing.
        let (plan, rep) = r
            .repair_index(Duration::from_secs(1), false)
            .expect("again");
        assert!(plan.is_noop(), "{plan:?}");
        assert_eq!(
            (rep.index_objects_written, rep.index_objects_deleted),
            (0, 0)
        );
    }

    #[test]
    fn damaged_index_is_replaced_and_unreadable_pack_is_reported() {
        let (_d, r) = repo();
        let (_, a) = put_pack(&r, &[b"alpha"]);
        // A bogus index object and a pack with a damaged prefix.
        r.store()
            .put_if_absent("index/00", b"garbage")
            .expect("put");
        let mut bad = b"NOTAPACK".to_vec();
        bad.extend_from_slice(&[9, 0, 0, 0, 1, 2, 3]);
        r.store()
            .put_if_absent(&pack_key(&Id::of(&bad)), &bad)
            .expect("put");
        let (dry, _) = r.repair_index(Duration::from_secs(1), true).expect("dry");
        assert_eq!(dry.delete_index_objects, vec!["index/00".to_string()]);
        assert!(
            r.store().stat("index/00").expect("stat").is_some(),
            "dry run"
        );
        let (plan, rep) = r
            .repair_index(Duration::from_secs(1), false)
            .expect("repair");
        assert_eq!(plan.unreadable_packs.len(), 1, "{plan:?}");
        assert!(plan.unreadable_packs[0].problem.contains("bad magic"));
        assert_eq!(rep.index_objects_deleted, 1);
        assert!(r.store().stat("index/00").expect("stat").is_none());
        assert!(r.index().expect("index").contains(&a[0]));
    }

    #[test]
    fn an_unreadable_header_keeps_the_entries_of_the_old_index() {
        for encrypted in [false, true] {
            let (d, r) = repo_with(encrypted);
            let (pid, ids) = put_pack(&r, &[b"one", b"two"]);
            let (other, _) = put_pack(&r, &[b"three"]);
            r.repair_index(Duration::from_secs(1), false)
                .expect("index them");
            // Damage the header of the first pack: the entry count (plain),
            // any byte of the sealed header (encrypted). Its blobs are intact.
            let path = d.path().join("r").join(pack_key(&pid));
            let mut bytes = std::fs::read(&path).expect("read");
            let at = if encrypted { 12 + 30 } else { 12 };
            bytes[at] ^= 0x55;
            std::fs::write(&path, &bytes).expect("write");
            // A pack that no index lists and whose header is unreadable too.
            let (lost, lost_ids) = put_pack(&r, &[b"four"]);
            let lpath = d.path().join("r").join(pack_key(&lost));
            let mut lb = std::fs::read(&lpath).expect("read");
            lb[at] ^= 0x55;
            std::fs::write(&lpath, &lb).expect("write");

            let (plan, _) = r
                .repair_index(Duration::from_secs(1), false)
                .expect("repair");
            assert_eq!(plan.unreadable_packs.len(), 2, "{plan:?}");
            assert_eq!(plan.packs_kept_from_old_index, 1, "{plan:?}");
            let kept = plan
                .unreadable_packs
                .iter()
                .find(|u| u.key == pack_key(&pid))
                .expect("reported");
            assert!(kept.problem.contains("kept from"), "{}", kept.problem);
            let idx = r.refresh_index_from_scratch().expect("index");
            for id in &ids {
                assert_eq!(
                    r.codec()
                        .blob_id(&r.read_blob(&idx, id).expect("still readable")),
                    *id
                );
            }
            assert!(idx.packs().contains_key(&other));
            assert!(!idx.contains(&lost_ids[0]), "no index knew it");
        }
    }
}
