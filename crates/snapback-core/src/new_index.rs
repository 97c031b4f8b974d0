//! The index objects of the packs one snapshot writes, encoded while its
//! packs are stored and kept outside the process's memory until the
//! commit writes them.
//!
//! A snapshot's new index entries grow with the data it stores (one per
//! new blob: a page of a database). Held as `IndexedPack`s to the end
//! (80 bytes an entry), then encoded into one object, they were the
//! largest part of a full snapshot's memory that grew with the database.
//! Here the packs' entries are gathered only until they fill one index
//! object ([`ENTRIES_PER_OBJECT`], as prune and repair-index group
//! them), which is then encoded (and proven to parse back, by
//! `encode_index`) and written to an unnamed temporary file; what stays
//! in memory is each pack's id and the dictionaries the blobs name.
//! Where no temporary file can be made (or written: a full disk), the
//! encoded objects stay in memory (about 35 bytes an entry, compressed).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexedPack;

/// The entries of one index object a snapshot writes (the last one of a
/// snapshot holds the rest). Small in the crate's own tests, so that
/// their snapshots write several.
#[cfg(not(test))]
pub(crate) const ENTRIES_PER_OBJECT: usize = 65_536;
#[cfg(test)]
pub(crate) const ENTRIES_PER_OBJECT: usize = 64;

/// The packs stored so far and their encoded index objects.
#[derive(Default)]
pub(crate) struct NewIndex {
    /// Packs whose entries are not encoded yet, and how many entries.
    group: Vec<IndexedPack>,
    group_entries: usize,
    /// Every pack stored, and the dictionaries their blobs name.
    packs: Vec<Id>,
    dicts: Vec<Id>,
    /// How many blobs the stored packs hold.
    entries: u64,
    /// The encoded objects, in `spill` or held.
    objects: Vec<Encoded>,
    spill: Option<Spill>,
    /// No temporary file could be made: the objects are held.
    no_spill: bool,
}

enum Encoded {
    /// In the temporary file at `at`, with the hash of its bytes: what is
    /// read back is compared with it, so a file that returns other bytes
    /// than were proven by `encode_index` is never stored.
    Spilled {
        at: u64,
        len: usize,
        sum: Id,
    },
    Held(Vec<u8>),
}

struct Spill {
    file: File,
    len: u64,
}

/// An unnamed file in the temporary directory (`O_TMPFILE`: nothing to
/// remove, gone when closed).
pub(crate) fn unnamed_file() -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        std::env::temp_dir(),
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    Ok(File::from(fd))
}

impl NewIndex {
    /// Adds a stored pack. Returns the packs of a full index object, for
    /// the caller to encode (outside any lock) and hand back with
    /// [`NewIndex::store_encoded`].
    pub(crate) fn add(&mut self, pack: IndexedPack) -> Option<Vec<IndexedPack>> {
        self.packs.push(pack.id);
        self.entries += pack.entries.len() as u64;
        for d in pack.dicts() {
            if !self.dicts.contains(&d) {
                self.dicts.push(d);
            }
        }
        self.group_entries += pack.entries.len();
        self.group.push(pack);
        if self.group_entries < ENTRIES_PER_OBJECT {
            return None;
        }
        self.group_entries = 0;
        Some(std::mem::take(&mut self.group))
    }

    /// The packs not encoded yet (the last object's), taken.
    pub(crate) fn take_rest(&mut self) -> Vec<IndexedPack> {
        self.group_entries = 0;
        std::mem::take(&mut self.group)
    }

    /// Keeps an encoded index object (from `encode_index`) until
    /// [`NewIndex::object`] reads it back.
    pub(crate) fn store_encoded(&mut self, bytes: Vec<u8>) -> Result<()> {
        if self.spill.is_none() && !self.no_spill {
            match unnamed_file() {
                Ok(file) => self.spill = Some(Spill { file, len: 0 }),
                Err(e) => {
                    tracing::debug!(error = %e, "no temporary file for the new index objects; they stay in memory");
                    self.no_spill = true;
                }
            }
        }
        if let Some(s) = self.spill.as_mut().filter(|_| !self.no_spill) {
            let at = s.len;
            match s.file.write_all(&bytes) {
                Ok(()) => {
                    s.len += bytes.len() as u64;
                    self.objects.push(Encoded::Spilled {
                        at,
                        len: bytes.len(),
                        sum: Id::of(&bytes),
                    });
                    return Ok(());
                }
                // A full temporary directory costs memory, not the
                // snapshot: this object and the next stay in memory (the
                // ones written before are read back from the file).
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write the new index objects to a temporary file; they stay in memory");
                    self.no_spill = true;
                }
            }
        }
        self.objects.push(Encoded::Held(bytes));
        Ok(())
    }

    /// How many encoded objects there are.
    pub(crate) fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// The encoded object `i`, read back.
    pub(crate) fn object(&self, i: usize) -> Result<Vec<u8>> {
        match self.objects.get(i) {
            None => Err(Error::internal(format!("no new index object {i}"))),
            Some(Encoded::Held(b)) => Ok(b.clone()),
            Some(Encoded::Spilled { at, len, sum }) => {
                let s = self
                    .spill
                    .as_ref()
                    .ok_or_else(|| Error::internal("the new index objects' file is gone"))?;
                let mut buf = vec![0u8; *len];
                s.file.read_exact_at(&mut buf, *at).map_err(|e| {
                    Error::io(
                        std::env::temp_dir(),
                        "cannot read the new index objects back from their temporary file (in TMPDIR); nothing was committed",
                        e,
                    )
                })?;
                if Id::of(&buf) != *sum {
                    return Err(Error::corrupt(
                        format!("new index object {i} in a temporary file under {}", std::env::temp_dir().display()),
                        "the bytes read back differ from those written; nothing was committed (check the disk of TMPDIR)",
                    ));
                }
                Ok(buf)
            }
        }
    }

    /// How many blobs the stored packs hold, in all.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    /// Every pack stored.
    pub(crate) fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Every dictionary the stored packs' blobs name.
    pub(crate) fn dicts(&self) -> &[Id] {
        &self.dicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{decode_index, encode_index};
    use crate::pack::{BlobKind, PackEntry};

    /// Encodes the packs not encoded yet into a last object, as the
    /// snapshot does.
    fn finish(idx: &mut NewIndex) {
        let rest = idx.take_rest();
        if !rest.is_empty() {
            idx.store_encoded(encode_index(&rest).expect("encode"))
                .expect("store");
        }
    }

    fn pack(n: u64, entries: usize, dict: Option<Id>) -> IndexedPack {
        IndexedPack {
            id: Id::of(&n.to_le_bytes()),
            size: 1 << 20,
            entries: (0..entries)
                .map(|i| PackEntry {
                    kind: BlobKind::Data,
                    id: Id::of(&(n * 1000 + i as u64).to_le_bytes()),
                    offset: 100 + i as u32 * 10,
                    stored_len: 10,
                    raw_len: 4096,
                    dict,
                })
                .collect(),
        }
    }

    #[test]
    fn every_pack_comes_back_from_the_objects_in_order() {
        let d = Id::of(b"dict");
        let want: Vec<IndexedPack> = (0..20)
            .map(|n| pack(n, 7 + n as usize % 5, (n % 3 == 0).then_some(d)))
            .collect();
        let mut idx = NewIndex::default();
        let mut full = 0;
        for p in want.clone() {
            if let Some(g) = idx.add(p) {
                full += 1;
                assert!(g.iter().map(|p| p.entries.len()).sum::<usize>() >= ENTRIES_PER_OBJECT);
                idx.store_encoded(encode_index(&g).expect("encode"))
                    .expect("store");
            }
        }
        finish(&mut idx);
        assert!(full >= 2, "{full} full objects");
        assert_eq!(idx.object_count(), full + 1);
        // Spilled to a temporary file, where the temporary directory takes
        // an unnamed one (else held: the same bytes either way).
        assert_eq!(idx.spill.is_some(), !idx.no_spill);
        let mut got = Vec::new();
        for i in 0..idx.object_count() {
            got.extend(decode_index(&idx.object(i).expect("read"), "test").expect("decode"));
        }
        assert_eq!(got, want);
        assert_eq!(idx.packs(), want.iter().map(|p| p.id).collect::<Vec<_>>());
        assert_eq!(idx.dicts(), &[d]);
        assert_eq!(
            idx.entries(),
            want.iter().map(|p| p.entries.len() as u64).sum::<u64>()
        );
        assert!(idx.object(idx.object_count()).is_err());
    }

    #[test]
    fn an_object_that_comes_back_changed_from_the_temporary_file_is_refused() {
        let mut idx = NewIndex {
            spill: Some(Spill {
                file: unnamed_file().expect("an unnamed temporary file"),
                len: 0,
            }),
            ..NewIndex::default()
        };
        let g = vec![pack(1, 70, None)];
        idx.store_encoded(encode_index(&g).expect("encode"))
            .expect("store");
        assert!(idx.object(0).is_ok(), "read back as written");
        // One byte changed under it, as a failing disk would.
        let s = idx.spill.as_ref().expect("spilled");
        let mut b = [0u8; 1];
        s.file.read_exact_at(&mut b, 10).expect("read");
        s.file.write_all_at(&[b[0] ^ 1], 10).expect("write");
        let e = idx
            .object(0)
            .expect_err("changed bytes are never handed out");
        assert_eq!(e.kind(), crate::Kind::Damaged, "{e}");
        assert!(e.to_string().contains("differ"), "{e}");
    }

    #[test]
    fn an_object_the_temporary_file_refuses_is_held_in_memory() {
        // A file open for reading only refuses every write, as a full
        // disk refuses them.
        let file = File::open("/dev/null").expect("open /dev/null");
        let mut idx = NewIndex {
            spill: Some(Spill { file, len: 0 }),
            ..NewIndex::default()
        };
        let want = vec![pack(1, 70, None), pack(2, 70, None), pack(3, 5, None)];
        for p in want.clone() {
            if let Some(g) = idx.add(p) {
                idx.store_encoded(encode_index(&g).expect("encode"))
                    .expect("a refused write is not an error");
            }
        }
        finish(&mut idx);
        assert!(idx.no_spill);
        assert_eq!(idx.object_count(), 3);
        let mut got = Vec::new();
        for i in 0..idx.object_count() {
            got.extend(decode_index(&idx.object(i).expect("read"), "test").expect("decode"));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn held_in_memory_without_a_temporary_file() {
        let mut idx = NewIndex {
            no_spill: true,
            ..NewIndex::default()
        };
        let want = vec![pack(1, 3, None), pack(2, 4, None)];
        for p in want.clone() {
            assert!(idx.add(p).is_none());
        }
        finish(&mut idx);
        assert_eq!(idx.object_count(), 1);
        assert!(idx.spill.is_none());
        assert_eq!(
            decode_index(&idx.object(0).expect("read"), "test").expect("decode"),
            want
        );
    }
}
