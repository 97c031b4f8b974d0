//! The set of blob ids one snapshot references, in about 13 bytes a blob
//! instead of 32.
//!
//! A full scan references every page of the database, so this set grows
//! with it: as a table of whole ids (`IdTable<()>`) it was 32 bytes a page,
//! the largest part of a full snapshot's memory that still grew with the
//! database. Here the table keeps each id's first 8 bytes and the number
//! of its entry in a log of whole ids (12 bytes), and the log is written to
//! an unnamed temporary file as it fills ([`LOG_TAIL`] ids stay in memory).
//! The set stays exact: when an id's first 8 bytes are in the table, the
//! whole id is read back from the log and compared (only a page the
//! database holds more than once does that, or, once in about 2^64 pairs,
//! two ids that share their first 8 bytes; such a second id is kept whole
//! in a small set of its own). Where no temporary file can be made (or
//! written: a full disk), the rest of the log stays in memory (32 bytes a
//! blob, as before).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::id::Id;

/// Whole ids kept in memory at the log's end before they are written out.
const LOG_TAIL: usize = 1 << 15;

/// Entries in the overlay before a merge, at least.
const OVERLAY_MIN: usize = 1 << 14;

/// A sorted table of (8-byte prefix, log number), 12 bytes an entry, with
/// a hashed overlay for new entries merged in once it holds an eighth as
/// many (as `IdTable`).
#[derive(Default)]
struct PrefixTable {
    /// Prefixes (big-endian) and log numbers, sorted by prefix, in two
    /// arrays so that an entry takes 12 bytes, not a padded 16.
    keys: Vec<u64>,
    slots: Vec<u32>,
    /// `starts[p]`: the first entry whose top `bits` bits are `p` or more.
    starts: Vec<u32>,
    bits: u32,
    overlay: HashMap<u64, u32>,
}

impl PrefixTable {
    fn bucket(key: u64, bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            (key >> (64 - bits)) as usize
        }
    }

    fn get(&self, key: u64) -> Option<u32> {
        if !self.keys.is_empty() {
            let p = Self::bucket(key, self.bits);
            let (a, b) = (self.starts[p] as usize, self.starts[p + 1] as usize);
            if let Ok(i) = self.keys[a..b].binary_search(&key) {
                return Some(self.slots[a + i]);
            }
        }
        self.overlay.get(&key).copied()
    }

    /// Adds `key` (not in the table) with `slot`.
    fn insert(&mut self, key: u64, slot: u32) {
        self.overlay.insert(key, slot);
        if self.overlay.len() >= OVERLAY_MIN.max(self.keys.len() / 8) {
            self.merge();
        }
    }

    fn merge(&mut self) {
        let mut new: Vec<(u64, u32)> = self.overlay.drain().collect();
        self.overlay = HashMap::new();
        new.sort_unstable_by_key(|e| e.0);
        let old = self.keys.len();
        let total = old + new.len();
        self.keys.resize(total, 0);
        self.slots.resize(total, 0);
        // From the end, in the arrays' own room.
        let (mut i, mut w) = (old, total);
        for (k, s) in new.into_iter().rev() {
            while i > 0 && self.keys[i - 1] > k {
                self.keys[w - 1] = self.keys[i - 1];
                self.slots[w - 1] = self.slots[i - 1];
                i -= 1;
                w -= 1;
            }
            self.keys[w - 1] = k;
            self.slots[w - 1] = s;
            w -= 1;
        }
        let keys = &self.keys;
        (self.starts, self.bits) =
            crate::index::bucket_starts(keys.len(), |i, bits| Self::bucket(keys[i], bits));
    }
}

/// The whole ids, in the order they were added: written out to `file`
/// but the last `tail`.
#[derive(Default)]
struct IdLog {
    file: Option<File>,
    /// Ids written to `file`.
    written: usize,
    tail: Vec<Id>,
    /// No temporary file could be made: every id stays in `tail`.
    in_memory: bool,
}

fn log_error(e: std::io::Error) -> Error {
    Error::internal(format!(
        "cannot use the temporary file of a snapshot's blob ids: {e}"
    ))
}

impl IdLog {
    fn len(&self) -> usize {
        self.written + self.tail.len()
    }

    fn push(&mut self, id: Id) -> Result<()> {
        self.tail.push(id);
        if self.tail.len() < LOG_TAIL || self.in_memory {
            return Ok(());
        }
        if self.file.is_none() {
            match crate::new_index::unnamed_file() {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::debug!(error = %e, "no temporary file for the snapshot's blob ids; they stay in memory");
                    self.in_memory = true;
                    return Ok(());
                }
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let bytes: Vec<u8> = self.tail.iter().flat_map(|id| id.0).collect();
        match f.write_all(&bytes) {
            Ok(()) => {
                self.written += self.tail.len();
                self.tail.clear();
            }
            // A full temporary directory costs memory, not the snapshot:
            // the ids from here on stay in memory (those written before
            // are read back from the file).
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the snapshot's blob ids to a temporary file; they stay in memory");
                self.in_memory = true;
            }
        }
        Ok(())
    }

    fn get(&self, n: usize) -> Result<Id> {
        if n >= self.written {
            return self
                .tail
                .get(n - self.written)
                .copied()
                .ok_or_else(|| Error::internal(format!("no blob id {n} in the snapshot's log")));
        }
        let f = self
            .file
            .as_ref()
            .ok_or_else(|| Error::internal("the snapshot's blob id file is gone"))?;
        let mut b = [0u8; 32];
        f.read_exact_at(&mut b, n as u64 * 32).map_err(log_error)?;
        Ok(Id(b))
    }

    /// Calls `f` with every id, in the order they were added.
    fn for_each(&self, mut f: impl FnMut(&Id) -> Result<()>) -> Result<()> {
        if let Some(file) = &self.file {
            const STEP: usize = 1 << 14;
            let mut buf = vec![0u8; STEP * 32];
            let mut at = 0usize;
            while at < self.written {
                let n = STEP.min(self.written - at);
                file.read_exact_at(&mut buf[..n * 32], at as u64 * 32)
                    .map_err(log_error)?;
                for c in buf[..n * 32].chunks_exact(32) {
                    let mut b = [0u8; 32];
                    b.copy_from_slice(c);
                    f(&Id(b))?;
                }
                at += n;
            }
        }
        for id in &self.tail {
            f(id)?;
        }
        Ok(())
    }
}

/// An exact set of blob ids, compact in memory (see the module's text).
#[derive(Default)]
pub(crate) struct BlobSet {
    table: PrefixTable,
    log: IdLog,
    /// Ids whose first 8 bytes another id in the set has.
    collided: HashSet<Id>,
    /// The last id found by its prefix, per a few slots: a page repeated
    /// many times (all zeros) is compared from memory, not read back.
    recent: Vec<(u32, Id)>,
}

fn prefix(id: &Id) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

const RECENT: usize = 64;

impl BlobSet {
    /// Adds `id`; true if it was not in the set.
    pub(crate) fn insert(&mut self, id: Id) -> Result<bool> {
        let key = prefix(&id);
        let Some(slot) = self.table.get(key) else {
            let slot = u32::try_from(self.log.len())
                .map_err(|_| Error::internal("more than 2^32 blobs in one snapshot"))?;
            self.table.insert(key, slot);
            self.log.push(id)?;
            return Ok(true);
        };
        if self.recent.len() < RECENT {
            self.recent.resize(RECENT, (u32::MAX, Id([0; 32])));
        }
        let r = slot as usize % RECENT;
        let known = if self.recent[r].0 == slot {
            self.recent[r].1
        } else {
            let known = self.log.get(slot as usize)?;
            self.recent[r] = (slot, known);
            known
        };
        if known == id {
            return Ok(false);
        }
        Ok(self.collided.insert(id))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.log.len() + self.collided.len()
    }

    /// Calls `f` with every id of the set.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Id) -> Result<()>) -> Result<()> {
        self.log.for_each(&mut f)?;
        for id in &self.collided {
            f(id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id::of(&n.to_le_bytes())
    }

    #[test]
    fn an_id_is_new_once_across_merges_and_the_file() {
        let mut s = BlobSet::default();
        let n = 3 * LOG_TAIL as u64 + 77;
        for i in 0..n {
            assert!(s.insert(id(i)).expect("insert"), "{i} is new");
        }
        // The log went to a temporary file (where the temporary directory
        // takes an unnamed one), but its tail.
        assert_eq!(s.log.file.is_some(), !s.log.in_memory);
        if !s.log.in_memory {
            assert_eq!(s.log.written, 3 * LOG_TAIL);
        }
        // Every one again, from the file, the tail and the overlay.
        for i in (0..n).rev() {
            assert!(!s.insert(id(i)).expect("insert"), "{i} is known");
        }
        assert_eq!(s.len(), n as usize);
        let mut seen = HashSet::new();
        s.for_each(|x| {
            assert!(seen.insert(*x));
            Ok(())
        })
        .expect("each");
        assert_eq!(seen.len(), n as usize);
        assert!((0..n).all(|i| seen.contains(&id(i))));
    }

    #[test]
    fn two_ids_that_share_their_first_eight_bytes_are_both_kept() {
        let mut s = BlobSet::default();
        let a = Id([7; 32]);
        let mut b = a;
        b.0[31] = 8;
        let mut c = a;
        c.0[8] = 0;
        assert!(s.insert(a).expect("a"));
        assert!(s.insert(b).expect("b"), "a different id, same prefix");
        assert!(s.insert(c).expect("c"));
        assert!(!s.insert(b).expect("b again"));
        assert!(!s.insert(a).expect("a again"));
        assert!(!s.insert(c).expect("c again"));
        assert_eq!(s.len(), 3);
        let mut all = Vec::new();
        s.for_each(|x| {
            all.push(*x);
            Ok(())
        })
        .expect("each");
        all.sort();
        let mut want = vec![a, b, c];
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn ids_the_temporary_file_refuses_are_held_in_memory() {
        let mut s = BlobSet::default();
        for i in 0..(LOG_TAIL as u64) {
            assert!(s.insert(id(i)).expect("insert"));
        }
        // From here on every write is refused (a file open for reading
        // only, as a full disk refuses them); the ids written so far are
        // not read again below.
        let written = s.log.written;
        s.log.file = Some(File::open("/dev/null").expect("open /dev/null"));
        s.log.in_memory = false;
        let n = 3 * LOG_TAIL as u64;
        for i in LOG_TAIL as u64..n {
            assert!(s.insert(id(i)).expect("a refused write is not an error"));
        }
        assert!(s.log.in_memory);
        assert_eq!(s.log.written, written);
        for i in (written as u64..n).rev() {
            assert!(!s.insert(id(i)).expect("insert"), "{i} is known");
        }
        assert_eq!(s.len(), n as usize);
    }

    #[test]
    fn held_in_memory_without_a_temporary_file() {
        let mut s = BlobSet::default();
        s.log.in_memory = true;
        for i in 0..(LOG_TAIL as u64 + 10) {
            assert!(s.insert(id(i)).expect("insert"));
        }
        assert!(s.log.file.is_none());
        assert!(!s.insert(id(3)).expect("known"));
        assert_eq!(s.len(), LOG_TAIL + 10);
    }
}
