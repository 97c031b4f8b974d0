//! Index objects map every blob to its pack, offset and length.
//!
//! An index object is `"SNBIDX\x01\x00"` followed by a zstd frame of:
//! ```text
//! pack_count u32, then per pack:
//!   pack_id [32], pack_size u64, entry_count u32, then per entry:
//!     kind u8, id [32], offset u32, stored_len u32, raw_len u32
//! ```
//! It is stored under `index/<sha256 of its bytes>`. Every snapshot writes
//! index objects for the packs it wrote, one per 65,536 blobs
//! (`new_index.rs`). Indexes are a cache of what the pack headers say:
//! `repair-index` rebuilds them from the packs alone.
//!
//! An index object that lists a blob compressed with a dictionary is of
//! version 2, `"SNBIDX\x02\x00"`: each pack carries its dictionary table
//! and each entry one more byte, as in a version-2 pack header:
//! ```text
//!   pack_id [32], pack_size u64, dict_count u16, dict_count x id [32],
//!   entry_count u32, then per entry:
//!     kind u8, dict u8, id [32], offset u32, stored_len u32, raw_len u32
//! ```

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::id::{Id, IdMap};
use crate::pack::{dict_of_slot, BlobKind, PackEntry};

const INDEX_MAGIC: &[u8; 8] = b"SNBIDX\x01\x00";
const INDEX_MAGIC_V2: &[u8; 8] = b"SNBIDX\x02\x00";
const ENTRY_LEN: usize = 45;

/// One pack's part of an index object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl IndexedPack {
    /// The dictionaries its entries name, in order of first use.
    pub fn dicts(&self) -> Vec<Id> {
        let mut out: Vec<Id> = Vec::new();
        for d in self.entries.iter().filter_map(|e| e.dict) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }
}

pub fn encode_index(packs: &[IndexedPack]) -> Result<Vec<u8>> {
    let v2 = packs
        .iter()
        .any(|p| p.entries.iter().any(|e| e.dict.is_some()));
    let mut raw = Vec::new();
    raw.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        raw.extend_from_slice(&p.id.0);
        raw.extend_from_slice(&p.size.to_le_bytes());
        let dicts = p.dicts();
        if v2 {
            if dicts.len() > crate::pack::MAX_PACK_DICTS {
                return Err(Error::Verification(format!(
                    "pack {} names {} dictionaries, more than an index entry can",
                    p.id.short(),
                    dicts.len()
                )));
            }
            raw.extend_from_slice(&(dicts.len() as u16).to_le_bytes());
            for d in &dicts {
                raw.extend_from_slice(&d.0);
            }
        }
        raw.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
        for e in &p.entries {
            raw.push(e.kind.code());
            if v2 {
                let slot = e
                    .dict
                    .and_then(|d| dicts.iter().position(|x| *x == d))
                    .map_or(0, |i| i + 1);
                raw.push(slot as u8);
            }
            raw.extend_from_slice(&e.id.0);
            raw.extend_from_slice(&e.offset.to_le_bytes());
            raw.extend_from_slice(&e.stored_len.to_le_bytes());
            raw.extend_from_slice(&e.raw_len.to_le_bytes());
        }
    }
    let z = zstd::bulk::compress(&raw, 3)
        .map_err(|e| Error::Verification(format!("index compression failed: {e}")))?;
    // Gone before the proof below decompresses a copy of it.
    drop(raw);
    let mut out = Vec::with_capacity(8 + z.len());
    out.extend_from_slice(if v2 { INDEX_MAGIC_V2 } else { INDEX_MAGIC });
    out.extend_from_slice(&z);
    // Prove that what is stored parses back to what was meant, entry by
    // entry as it is parsed: decoding it into a second `Vec<IndexedPack>`
    // first held another 80 bytes per blob of the snapshot at its end.
    let mut same = SameAs {
        packs,
        next: 0,
        entry: 0,
        same: true,
    };
    visit_index(&out, "new index", &mut same)?;
    if !same.same || same.next != packs.len() {
        return Err(Error::Verification(
            "index encoding does not round-trip; nothing was stored".into(),
        ));
    }
    Ok(out)
}

/// Compares an index object, as it is parsed, with the packs it encodes.
struct SameAs<'a> {
    packs: &'a [IndexedPack],
    /// The pack the next `pack` call must be.
    next: usize,
    /// The entry of pack `next - 1` the next `entry` call must be.
    entry: usize,
    same: bool,
}

impl IndexSink for SameAs<'_> {
    fn reserve(&mut self, _: usize) {}
    fn pack(&mut self, id: Id, size: u64, entries: usize) {
        let p = self.packs.get(self.next);
        self.same &= p.is_some_and(|p| p.id == id && p.size == size && p.entries.len() == entries);
        self.next += 1;
        self.entry = 0;
    }
    fn entry(&mut self, e: PackEntry) {
        let want = self
            .next
            .checked_sub(1)
            .and_then(|p| self.packs.get(p))
            .and_then(|p| p.entries.get(self.entry));
        self.same &= want == Some(&e);
        self.entry += 1;
    }
}

pub fn decode_index(bytes: &[u8], place: &str) -> Result<Vec<IndexedPack>> {
    let mut packs: Vec<IndexedPack> = Vec::new();
    visit_index(bytes, place, &mut packs)?;
    Ok(packs)
}

/// Adds every pack of one index object to `idx` as it is parsed, without
/// building its `IndexedPack`s first (one entry per blob: for a large
/// database, tens of MiB of fresh memory a loading process paid for twice),
/// and with the object's entries added to the compact table in one merge
/// ([`IdTable::insert_many`]). On an error, `idx` holds part of the
/// object: the caller drops it.
pub fn decode_index_into(bytes: &[u8], place: &str, idx: &mut MasterIndex) -> Result<()> {
    let r = visit_index(bytes, place, &mut Loading { idx, pack: 0 });
    idx.end_loading();
    r
}

/// What an index object is parsed into.
trait IndexSink {
    /// An upper bound of the object's entries, before the first.
    fn reserve(&mut self, upper: usize);
    /// A pack (id, size, entry count), before its entries.
    fn pack(&mut self, id: Id, size: u64, entries: usize);
    fn entry(&mut self, e: PackEntry);
}

impl IndexSink for Vec<IndexedPack> {
    fn reserve(&mut self, _: usize) {}
    fn pack(&mut self, id: Id, size: u64, entries: usize) {
        self.push(IndexedPack {
            id,
            size,
            entries: Vec::with_capacity(entries),
        });
    }
    fn entry(&mut self, e: PackEntry) {
        if let Some(p) = self.last_mut() {
            p.entries.push(e);
        }
    }
}

/// A master index being loaded, and the number of the pack being parsed.
struct Loading<'a> {
    idx: &'a mut MasterIndex,
    pack: u32,
}

impl IndexSink for Loading<'_> {
    fn reserve(&mut self, upper: usize) {
        self.idx.loading.reserve_exact(upper);
    }
    fn pack(&mut self, id: Id, size: u64, _: usize) {
        self.pack = self.idx.pack_number(id, size);
    }
    fn entry(&mut self, e: PackEntry) {
        let slot = self.idx.slot(self.pack, &e);
        self.idx.loading.push((e.id, slot));
    }
}

/// Parses an index object into `out`, every entry checked against its
/// pack's size.
fn visit_index(bytes: &[u8], place: &str, out: &mut impl IndexSink) -> Result<()> {
    if bytes.len() >= 8 && &bytes[..6] == b"SNBIDX" && bytes[6] > INDEX_MAGIC_V2[6] {
        return Err(Error::UnsupportedVersion {
            found: bytes[6] as u32,
            supported: INDEX_MAGIC_V2[6] as u32,
        });
    }
    let v2 = match bytes.get(..8) {
        Some(m) if m == INDEX_MAGIC => false,
        Some(m) if m == INDEX_MAGIC_V2 => true,
        _ => return Err(Error::corrupt(place, "not a snapback index (bad magic)")),
    };
    let entry_len = if v2 { ENTRY_LEN + 1 } else { ENTRY_LEN };
    // Bound the decompressed size: at most 1 GiB of index per object.
    let raw = zstd::bulk::decompress(&bytes[8..], 1 << 30)
        .map_err(|e| Error::corrupt(place, format!("does not decompress: {e}")))?;
    out.reserve(raw.len() / entry_len);
    let mut r = Reader {
        b: &raw,
        pos: 0,
        place,
    };
    let n = r.u32()? as usize;
    for _ in 0..n {
        let id = Id(r.arr()?);
        let size = r.u64()?;
        let mut dicts = Vec::new();
        if v2 {
            let n = r.u16()? as usize;
            for _ in 0..n {
                dicts.push(Id(r.arr()?));
            }
        }
        let m = r.u32()? as usize;
        if m.saturating_mul(entry_len) > raw.len() - r.pos {
            return Err(Error::corrupt(place, "entry count exceeds the index size"));
        }
        out.pack(id, size, m);
        for _ in 0..m {
            let code = r.u8()?;
            let kind = BlobKind::from_code(code)
                .ok_or_else(|| Error::corrupt(place, format!("unknown blob kind {code}")))?;
            let dict = if v2 {
                dict_of_slot(&dicts, r.u8()?, place)?
            } else {
                None
            };
            let bid = Id(r.arr()?);
            let offset = r.u32()?;
            let stored_len = r.u32()?;
            let raw_len = r.u32()?;
            if offset as u64 + stored_len as u64 > size {
                return Err(Error::corrupt(
                    place,
                    format!("blob {} extends past its pack", bid.short()),
                ));
            }
            out.entry(PackEntry {
                kind,
                id: bid,
                offset,
                stored_len,
                raw_len,
                dict,
            });
        }
    }
    if r.pos != raw.len() {
        return Err(Error::corrupt(place, "trailing bytes after the last pack"));
    }
    Ok(())
}

/// Reads the little-endian fields of a binary object, each read checked
/// against its end (index objects, timeline segments).
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) place: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8], place: &'a str) -> Reader<'a> {
        Reader { b, pos: 0, place }
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.pos + n > self.b.len() {
            return Err(Error::corrupt(self.place, "truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&[u8]> {
        self.take(n)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    pub(crate) fn u128(&mut self) -> Result<u128> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(a))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn arr(&mut self) -> Result<[u8; 32]> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
}

/// Where a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub kind: BlobKind,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    /// The dictionary the blob was compressed with: 0 for none, else
    /// `MasterIndex::dict_of` names it (a small number, not an id, so that
    /// a location stays small).
    pub dict: u16,
}

/// What the master index keeps per blob: a [`BlobLocation`] with its pack
/// as a number into `MasterIndex::pack_ids` (4 bytes, not a 32-byte id),
/// so that the index of a large repository stays small in memory.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    dict: u16,
    kind: BlobKind,
}

/// A map of ids to small values, compact in memory: a sorted array of
/// `(id, value)` with no per-entry overhead (no hash table slots left
/// empty, no table doubling), found by a table of where each id prefix
/// starts and a binary search of the few entries that share it; new
/// entries go to a small hashed overlay, merged into the array (in place,
/// from its end) once it holds an eighth as many entries as the array.
/// So it costs its entries' own bytes plus at most about an eighth more,
/// where a hash map of them took 1.1 to 2.3 times as many slots as
/// entries (and twice that while it grew).
///
/// The master index holds one per repository (52 bytes a blob); a
/// snapshot's set of referenced blobs is a `BlobSet` (`blob_set.rs`).
#[derive(Debug, Clone)]
pub struct IdTable<V: Copy> {
    /// Sorted by id, each id once.
    sorted: Vec<(Id, V)>,
    /// `starts[p]`: the first entry of `sorted` whose id's first `bits`
    /// bits are `p` or more; `starts.len() == (1 << bits) + 1`.
    starts: Vec<u32>,
    bits: u32,
    /// Entries not merged into `sorted` yet; none of them is in `sorted`.
    overlay: IdMap<V>,
}

impl<V: Copy> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            sorted: Vec::new(),
            starts: vec![0, 0],
            bits: 0,
            overlay: IdMap::default(),
        }
    }
}

/// The overlay never holds fewer than this many entries before a merge
/// (so that a small table is not merged at every insert).
const OVERLAY_MIN: usize = 1 << 14;

impl<V: Copy> IdTable<V> {
    fn prefix(id: &Id, bits: u32) -> usize {
        if bits == 0 {
            return 0;
        }
        let top = u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
        (top >> (32 - bits)) as usize
    }

    fn find_sorted(&self, id: &Id) -> Option<usize> {
        let p = Self::prefix(id, self.bits);
        let (a, b) = (self.starts[p] as usize, self.starts[p + 1] as usize);
        self.sorted[a..b]
            .binary_search_by(|(x, _)| x.cmp(id))
            .ok()
            .map(|i| a + i)
    }

    pub fn get(&self, id: &Id) -> Option<&V> {
        match self.find_sorted(id) {
            Some(i) => Some(&self.sorted[i].1),
            None => self.overlay.get(id),
        }
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.overlay.len()
    }

    /// Adds `id` with `v` unless it is there already (then it keeps its
    /// first value); true if it was added.
    pub fn insert(&mut self, id: Id, v: V) -> bool {
        if self.find_sorted(&id).is_some() {
            return false;
        }
        match self.overlay.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(v);
            }
        }
        if self.overlay.len() >= OVERLAY_MIN.max(self.sorted.len() / 8) {
            self.merge();
        }
        true
    }

    /// Adds many entries at once (an index object's), each unless its id
    /// is there already or earlier in `new` (the first value is kept, as
    /// `insert` does), with one merge.
    pub fn insert_many(&mut self, mut new: Vec<(Id, V)>) {
        if new.len() < OVERLAY_MIN {
            for (id, v) in new {
                self.insert(id, v);
            }
            return;
        }
        // Stable: of equal ids, the first inserted stays first.
        new.sort_by_key(|a| a.0);
        new.dedup_by(|later, first| later.0 == first.0);
        new.retain(|(id, _)| !self.contains(id));
        new.extend(self.overlay.drain());
        new.sort_unstable_by_key(|a| a.0);
        self.merge_sorted(new);
    }

    /// Moves the overlay into the sorted array.
    fn merge(&mut self) {
        let mut new: Vec<(Id, V)> = self.overlay.drain().collect();
        self.overlay = IdMap::default();
        new.sort_unstable_by_key(|a| a.0);
        self.merge_sorted(new);
    }

    /// Merges `new` (sorted, none of its ids in the table) into `sorted`,
    /// from the end, in the array's own room grown once to fit.
    fn merge_sorted(&mut self, new: Vec<(Id, V)>) {
        if new.is_empty() {
            return;
        }
        let old = self.sorted.len();
        self.sorted.reserve_exact(new.len());
        let filler = new[0];
        self.sorted.resize(old + new.len(), filler);
        let (mut i, mut w) = (old, old + new.len());
        for e in new.into_iter().rev() {
            while i > 0 && self.sorted[i - 1].0 > e.0 {
                self.sorted[w - 1] = self.sorted[i - 1];
                i -= 1;
                w -= 1;
            }
            self.sorted[w - 1] = e;
            w -= 1;
        }
        self.rebuild_starts();
    }

    fn rebuild_starts(&mut self) {
        let sorted = &self.sorted;
        (self.starts, self.bits) =
            bucket_starts(sorted.len(), |i, bits| Self::prefix(&sorted[i].0, bits));
    }

    /// Every entry: the sorted ones in id order, then the overlay's.
    pub fn iter(&self) -> impl Iterator<Item = (&Id, &V)> {
        self.sorted
            .iter()
            .map(|(id, v)| (id, v))
            .chain(self.overlay.iter())
    }
}

/// Where each prefix bucket starts in a sorted table of `n` entries, for
/// about 8 entries a bucket (at most 2^20 buckets: 4 MiB): `(starts,
/// bits)`, where `bucket(i, bits)` is entry i's bucket (its top `bits`
/// bits) and `starts[p]` the first entry of bucket `p` or above.
pub(crate) fn bucket_starts(n: usize, bucket: impl Fn(usize, u32) -> usize) -> (Vec<u32>, u32) {
    let mut bits = 0;
    while bits < 20 && (n >> (bits + 3)) > 0 {
        bits += 1;
    }
    let buckets = 1usize << bits;
    let mut starts = Vec::with_capacity(buckets + 1);
    let mut at = 0usize;
    for p in 0..buckets {
        while at < n && bucket(at, bits) < p {
            at += 1;
        }
        starts.push(at as u32);
    }
    starts.push(n as u32);
    (starts, bits)
}

/// The in-memory union of every index object.
#[derive(Debug, Default, Clone)]
pub struct MasterIndex {
    blobs: IdTable<Slot>,
    /// The packs that slots name (`pack` i = `pack_ids[i]`).
    pack_ids: Vec<Id>,
    /// The dictionaries that locations name (`dict` i = `dicts[i - 1]`).
    dicts: Vec<Id>,
    /// pack id → size, as the index recorded it
    packs: HashMap<Id, u64>,
    /// Entries of the index object being loaded, added in one merge when
    /// it is parsed (`decode_index_into`).
    loading: Vec<(Id, Slot)>,
    /// index object keys that were loaded
    pub index_keys: Vec<String>,
}

impl MasterIndex {
    pub fn insert_pack(&mut self, p: &IndexedPack) {
        let pack = self.pack_number(p.id, p.size);
        let mut new = Vec::with_capacity(p.entries.len());
        for e in &p.entries {
            new.push((e.id, self.slot(pack, e)));
        }
        self.blobs.insert_many(new);
    }

    /// The number of pack `id` (a new one, or the one it already has).
    fn pack_number(&mut self, id: Id, size: u64) -> u32 {
        if self.packs.insert(id, size).is_some() {
            if let Some(n) = self.pack_ids.iter().rposition(|x| *x == id) {
                return n as u32;
            }
        }
        self.pack_ids.push(id);
        (self.pack_ids.len() - 1) as u32
    }

    /// What the index keeps of one blob of pack number `pack`.
    fn slot(&mut self, pack: u32, e: &PackEntry) -> Slot {
        let dict = e.dict.map_or(0, |d| self.dict_slot(d));
        Slot {
            pack,
            kind: e.kind,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            dict,
        }
    }

    /// Adds the entries parsed since the last call (a blob already
    /// indexed keeps its first location).
    fn end_loading(&mut self) {
        let new = std::mem::take(&mut self.loading);
        self.blobs.insert_many(new);
    }

    fn dict_slot(&mut self, d: Id) -> u16 {
        match self.dicts.iter().position(|x| *x == d) {
            Some(i) => i as u16 + 1,
            None => {
                self.dicts.push(d);
                self.dicts.len() as u16
            }
        }
    }

    fn location(&self, s: &Slot) -> BlobLocation {
        BlobLocation {
            pack: self.pack_ids[s.pack as usize],
            kind: s.kind,
            offset: s.offset,
            stored_len: s.stored_len,
            raw_len: s.raw_len,
            dict: s.dict,
        }
    }

    /// The dictionary a location names, if any.
    pub fn dict_of(&self, loc: &BlobLocation) -> Option<Id> {
        match loc.dict {
            0 => None,
            i => self.dicts.get(i as usize - 1).copied(),
        }
    }

    /// Every dictionary some location names.
    pub fn dicts(&self) -> &[Id] {
        &self.dicts
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.blobs.get(id).map(|s| self.location(s))
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains(id)
    }

    /// The packs holding the blobs `ids`, or `None` when one is not
    /// indexed.
    pub fn packs_of<'a>(&self, ids: impl IntoIterator<Item = &'a Id>) -> Option<Vec<Id>> {
        let mut used = vec![false; self.pack_ids.len()];
        for id in ids {
            used[self.blobs.get(id)?.pack as usize] = true;
        }
        Some(
            self.pack_ids
                .iter()
                .zip(used)
                .filter_map(|(p, u)| u.then_some(*p))
                .collect(),
        )
    }

    pub fn packs(&self) -> &HashMap<Id, u64> {
        &self.packs
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn blobs(&self) -> impl Iterator<Item = (&Id, BlobLocation)> {
        self.blobs.iter().map(|(id, s)| (id, self.location(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index objects of a committed fixture repository.
    fn fixture_indexes(repo: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/repos")
            .join(repo)
            .join("index");
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("fixture index dir")
            .map(|e| {
                let p = e.expect("entry").path();
                (
                    p.display().to_string(),
                    std::fs::read(&p).expect("index object"),
                )
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "{} has index objects", dir.display());
        out
    }

    /// The compact master index (a sorted array and its overlay) finds
    /// every blob of the format-1 and format-2 fixture repositories at the
    /// location its first index object gives, and misses an id that is in
    /// none.
    #[test]
    fn compact_index_lookup_finds_every_blob_of_format_1_and_2_fixtures_and_misses_an_absent_id() {
        for repo in ["v1/plain", "v2/plain", "v2/dicts", "v2/timeline"] {
            let objects = fixture_indexes(repo);
            let mut m = MasterIndex::default();
            let mut first: HashMap<Id, (Id, PackEntry)> = HashMap::new();
            for (place, bytes) in &objects {
                decode_index_into(bytes, place, &mut m).expect("loads");
                for p in decode_index(bytes, place).expect("decodes") {
                    for e in p.entries {
                        first.entry(e.id).or_insert((p.id, e));
                    }
                }
            }
            assert!(!first.is_empty(), "{repo}");
            assert_eq!(m.blob_count(), first.len(), "{repo}: each blob once");
            for (id, (pack, e)) in &first {
                let l = m
                    .get(id)
                    .unwrap_or_else(|| panic!("{repo}: {} found", id.short()));
                assert_eq!(
                    (
                        l.pack,
                        l.kind,
                        l.offset,
                        l.stored_len,
                        l.raw_len,
                        m.dict_of(&l)
                    ),
                    (*pack, e.kind, e.offset, e.stored_len, e.raw_len, e.dict),
                    "{repo}"
                );
                assert!(m.contains(id));
            }
            assert_eq!(m.blobs().count(), first.len());
            let absent = Id::of(b"no blob has this id");
            assert!(m.get(&absent).is_none() && !m.contains(&absent), "{repo}");
        }
    }

    /// The compact table stays an exact map across its merges: ids inserted
    /// one by one and in bulk, past many merges of the overlay, are each
    /// found with their first value, a repeated insert is refused, and
    /// absent ids (also ones sharing a prefix with present ones) miss.
    #[test]
    fn compact_id_table_keeps_first_values_across_merges_and_misses_absent_ids() {
        let id = |i: u32| Id::of(&i.to_le_bytes());
        let mut t: IdTable<u32> = IdTable::default();
        let n = 3 * OVERLAY_MIN as u32 + 123;
        for i in 0..n {
            assert!(t.insert(id(i), i), "new id {i}");
        }
        assert!(!t.sorted.is_empty(), "merged at least once");
        for i in (0..n).step_by(7) {
            assert!(!t.insert(id(i), u32::MAX), "a repeated insert is refused");
        }
        // In bulk: half already there (they keep their value), half new,
        // one new id twice (the first value wins).
        let mut bulk: Vec<(Id, u32)> = (n / 2..n + OVERLAY_MIN as u32)
            .map(|i| (id(i), i + 1_000_000))
            .collect();
        bulk.push((id(n), 7));
        t.insert_many(bulk);
        assert_eq!(t.len(), (n + OVERLAY_MIN as u32) as usize);
        for i in 0..n {
            assert_eq!(t.get(&id(i)), Some(&i));
        }
        for i in n..n + OVERLAY_MIN as u32 {
            assert_eq!(t.get(&id(i)), Some(&(i + 1_000_000)));
        }
        assert!(
            t.sorted.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, each id once"
        );
        for i in n + OVERLAY_MIN as u32..n + OVERLAY_MIN as u32 + 1000 {
            assert!(!t.contains(&id(i)), "absent {i}");
        }
        // An id one bit away from a present one shares its prefix bucket.
        let mut near = id(5);
        near.0[31] ^= 1;
        assert!(!t.contains(&near));
        assert_eq!(t.iter().count(), t.len());
    }

    /// The master index holds a pack number per blob, not the pack's id:
    /// 20 bytes a blob besides its id (was 48), and every location still
    /// names its pack, also when a pack is listed by two index objects.
    #[test]
    fn index_slots_name_their_pack_by_number_and_locations_give_its_id() {
        assert!(
            std::mem::size_of::<Slot>() <= 20,
            "{}",
            std::mem::size_of::<Slot>()
        );
        let entry = |name: &[u8], offset| PackEntry {
            kind: BlobKind::Data,
            id: Id::of(name),
            offset,
            stored_len: 10,
            raw_len: 20,
            dict: None,
        };
        let p1 = IndexedPack {
            id: Id::of(b"pack1"),
            size: 100,
            entries: vec![entry(b"a", 0), entry(b"b", 10)],
        };
        let p2 = IndexedPack {
            id: Id::of(b"pack2"),
            size: 50,
            entries: vec![entry(b"c", 0)],
        };
        let mut m = MasterIndex::default();
        m.insert_pack(&p1);
        m.insert_pack(&p2);
        // Listed again by another index object, with a blob more.
        let mut again = p1.clone();
        again.entries.push(entry(b"d", 20));
        m.insert_pack(&again);
        assert_eq!(m.pack_ids.len(), 2, "one number per pack");
        for (blob, pack, offset) in [
            (b"a", &p1, 0),
            (b"b", &p1, 10),
            (b"c", &p2, 0),
            (b"d", &p1, 20),
        ] {
            let l = m.get(&Id::of(blob)).expect("indexed");
            assert_eq!(
                (l.pack, l.offset, l.stored_len, l.raw_len),
                (pack.id, offset, 10, 20)
            );
        }
        assert_eq!(m.blobs().filter(|(_, l)| l.pack == p1.id).count(), 3);
        assert_eq!(m.packs().len(), 2);
    }

    /// The round-trip proof of `encode_index`, done as the object is
    /// parsed, still refuses an object that parses to other packs.
    #[test]
    fn the_index_round_trip_check_refuses_an_object_of_other_packs() {
        let e = |n: &[u8], off| PackEntry {
            kind: BlobKind::Data,
            id: Id::of(n),
            offset: off,
            stored_len: 10,
            raw_len: 20,
            dict: None,
        };
        let packs = vec![
            IndexedPack {
                id: Id::of(b"p"),
                size: 100,
                entries: vec![e(b"a", 0), e(b"b", 10)],
            },
            IndexedPack {
                id: Id::of(b"q"),
                size: 100,
                entries: vec![e(b"c", 0)],
            },
        ];
        let bytes = encode_index(&packs).expect("encode");
        let same = |other: &[IndexedPack]| {
            let mut s = SameAs {
                packs: other,
                next: 0,
                entry: 0,
                same: true,
            };
            visit_index(&bytes, "i", &mut s).expect("parses");
            s.same && s.next == other.len()
        };
        assert!(same(&packs));
        let mut moved = packs.clone();
        moved[1].entries[0].offset = 1;
        assert!(!same(&moved), "an entry differs");
        assert!(!same(&packs[..1]), "a pack fewer");
        let mut more = packs.clone();
        more.push(packs[0].clone());
        assert!(!same(&more), "a pack more");
        let mut short = packs.clone();
        short[0].entries.pop();
        assert!(!same(&short), "an entry fewer");
    }

    #[test]
    fn roundtrip_and_corruption() {
        let packs = vec![IndexedPack {
            id: Id::of(b"p"),
            size: 1000,
            entries: vec![
                PackEntry {
                    kind: BlobKind::Data,
                    id: Id::of(b"a"),
                    offset: 100,
                    stored_len: 10,
                    raw_len: 20,
                    dict: None,
                },
                PackEntry {
                    kind: BlobKind::ChunkList,
                    id: Id::of(b"b"),
                    offset: 110,
                    stored_len: 5,
                    raw_len: 5,
                    dict: None,
                },
            ],
        }];
        let bytes = encode_index(&packs).expect("encode");
        assert_eq!(decode_index(&bytes, "i").expect("decode"), packs);
        let mut bad = bytes.clone();
        let n = bad.len() - 2;
        bad[n] ^= 0xff;
        // Damage is caught by the object's name (SHA-256) when it is read;
        // the parser itself must never return the original content.
        assert_ne!(decode_index(&bad, "i").ok(), Some(packs.clone()));
        assert!(decode_index(&bytes[..bytes.len() - 4], "i").is_err());
        assert!(decode_index(b"garbage!", "i").is_err());
        let mut newer = bytes.clone();
        newer[6] = 3;
        assert!(matches!(
            decode_index(&newer, "i"),
            Err(Error::UnsupportedVersion { found: 3, .. })
        ));
        assert_eq!(&bytes[..8], INDEX_MAGIC, "no dictionary: version 1");
    }

    #[test]
    fn an_index_with_dictionary_entries_is_version_2_and_keeps_them() {
        let d = Id::of(b"dict");
        let e = |n: &[u8], off, dict| PackEntry {
            kind: BlobKind::Data,
            id: Id::of(n),
            offset: off,
            stored_len: 10,
            raw_len: 4096,
            dict,
        };
        let packs = vec![
            IndexedPack {
                id: Id::of(b"p"),
                size: 1000,
                entries: vec![e(b"a", 100, Some(d)), e(b"b", 110, None)],
            },
            IndexedPack {
                id: Id::of(b"q"),
                size: 1000,
                entries: vec![e(b"c", 100, None)],
            },
        ];
        let bytes = encode_index(&packs).expect("encode");
        assert_eq!(&bytes[..8], INDEX_MAGIC_V2);
        assert_eq!(decode_index(&bytes, "i").expect("decode"), packs);
        let mut m = MasterIndex::default();
        for p in &packs {
            m.insert_pack(p);
        }
        let loc = m.get(&Id::of(b"a")).expect("a");
        assert_eq!(m.dict_of(&loc), Some(d));
        assert_eq!(m.dict_of(&m.get(&Id::of(b"c")).expect("c")), None);
        assert_eq!(m.dicts(), &[d]);
    }
}
