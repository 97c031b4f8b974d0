//! Chunk lists: the ordered chunks of one file.
//!
//! A 1 GiB database cut into 4 KiB pages has 262,144 chunks, so its full list
//! is about 9 MiB. Writing that with every snapshot would cost more than the
//! pages that changed. So a list is stored as `base` parts (content-addressed,
//! `PART_LEN` entries each, so unchanged parts deduplicate) plus an optional
//! `patch`: the entries that differ from the base. A snapshot writes a patch
//! against its parent's base while the patch stays under 1/8 of the base, and
//! a new base otherwise; patches never chain, so reading a list costs at most
//! the base parts plus one patch.
//!
//! Blob layout (little-endian):
//! ```text
//! base part: 0u8, count u32, count × (id [32], len u32)
//! patch:     1u8, count u32, count × (index u64, id [32], len u32)
//! ```

use crate::error::{Error, Result};
use crate::id::Id;

pub const PART_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: Id,
    pub len: u32,
}

pub fn encode_part(entries: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entries.len() * 36);
    out.push(0);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

pub fn encode_patch(entries: &[(u64, ChunkRef)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entries.len() * 44);
    out.push(1);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

fn header(b: &[u8], kind: u8, entry: usize, place: &str) -> Result<usize> {
    if b.len() < 5 || b[0] != kind {
        return Err(Error::corrupt(
            place,
            "not a chunk list of the expected kind",
        ));
    }
    let n = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize;
    if b.len() != 5 + n * entry {
        return Err(Error::corrupt(
            place,
            "chunk list length does not match its count",
        ));
    }
    Ok(n)
}

fn chunk_ref(e: &[u8]) -> ChunkRef {
    let mut id = [0u8; 32];
    id.copy_from_slice(&e[..32]);
    ChunkRef {
        id: Id(id),
        len: u32::from_le_bytes([e[32], e[33], e[34], e[35]]),
    }
}

pub fn decode_part(b: &[u8], place: &str) -> Result<Vec<ChunkRef>> {
    header(b, 0, 36, place)?;
    Ok(b[5..].chunks_exact(36).map(chunk_ref).collect())
}

pub fn decode_patch(b: &[u8], place: &str) -> Result<Vec<(u64, ChunkRef)>> {
    header(b, 1, 44, place)?;
    Ok(b[5..]
        .chunks_exact(44)
        .map(|e| {
            let mut i = [0u8; 8];
            i.copy_from_slice(&e[..8]);
            (u64::from_le_bytes(i), chunk_ref(&e[8..]))
        })
        .collect())
}

/// Applies a patch to a base list, producing a list of exactly `count`
/// entries. Every entry past the base must come from the patch.
pub fn apply_patch(
    mut base: Vec<ChunkRef>,
    patch: &[(u64, ChunkRef)],
    count: u64,
    place: &str,
) -> Result<Vec<ChunkRef>> {
    let count =
        usize::try_from(count).map_err(|_| Error::corrupt(place, "chunk count too large"))?;
    let base_len = base.len();
    // Every entry past the base comes from the patch, so a count beyond
    // both is corrupt; refuse it before allocating for it.
    if count > base_len.saturating_add(patch.len()) {
        return Err(Error::corrupt(
            place,
            format!(
                "chunk count {count} exceeds the base ({base_len}) and patch ({}) entries",
                patch.len()
            ),
        ));
    }
    base.truncate(count);
    let filler = ChunkRef {
        id: Id([0; 32]),
        len: 0,
    };
    base.resize(count, filler);
    let mut covered = vec![false; count.saturating_sub(base_len)];
    for (i, e) in patch {
        let i = *i as usize;
        if i >= count {
            return Err(Error::corrupt(
                place,
                format!("patch entry {i} is past the chunk count {count}"),
            ));
        }
        base[i] = *e;
        if i >= base_len {
            covered[i - base_len] = true;
        }
    }
    if covered.iter().any(|c| !c) {
        return Err(Error::corrupt(
            place,
            "patch leaves chunks past the base undefined",
        ));
    }
    Ok(base)
}

/// The patch that turns `base` into `new`.
pub fn diff(base: &[ChunkRef], new: &[ChunkRef]) -> Vec<(u64, ChunkRef)> {
    new.iter()
        .enumerate()
        .filter(|(i, e)| base.get(*i) != Some(e))
        .map(|(i, e)| (i as u64, *e))
        .collect()
}

/// The checksum of a chunk list: the sum of one term per chunk, of its
/// offset and id (see `DbChecksum`).
pub(crate) fn checksum_of(refs: &[ChunkRef]) -> crate::id::DbChecksum {
    use rayon::prelude::*;
    // A SHA-256 per chunk: a large list is folded on every core, block by
    // block from each block's offset (the fold is a sum, so its order does
    // not matter).
    const BLOCK: usize = 4096;
    let fold = |refs: &[ChunkRef], mut off: u64| {
        let mut c = crate::id::DbChecksum::default();
        for r in refs {
            c.add(off, &r.id);
            off += r.len as u64;
        }
        c.0
    };
    if refs.len() <= BLOCK {
        return crate::id::DbChecksum(fold(refs, 0));
    }
    let mut starts = Vec::with_capacity(refs.len() / BLOCK + 1);
    let mut off = 0u64;
    for b in refs.chunks(BLOCK) {
        starts.push(off);
        off += b.iter().map(|r| r.len as u64).sum::<u64>();
    }
    crate::id::DbChecksum(
        refs.par_chunks(BLOCK)
            .zip(starts)
            .map(|(b, off)| fold(b, off))
            .reduce(|| 0, u128::wrapping_add),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u8) -> ChunkRef {
        ChunkRef {
            id: Id([n; 32]),
            len: n as u32,
        }
    }

    #[test]
    fn checksum_of_a_long_list_is_the_serial_fold_of_its_chunks() {
        // Past one block the fold runs in parallel from each block's
        // offset: it must be the one serial fold, at every length around
        // a block boundary.
        for n in [0usize, 1, 4095, 4096, 4097, 9000, 12288] {
            let list: Vec<ChunkRef> = (0..n)
                .map(|i| ChunkRef {
                    id: Id::of(&(i as u64).to_le_bytes()),
                    len: 1 + (i % 7) as u32 * 100,
                })
                .collect();
            let mut want = crate::id::DbChecksum::default();
            let mut off = 0u64;
            for r in &list {
                want.add(off, &r.id);
                off += r.len as u64;
            }
            assert_eq!(checksum_of(&list), want, "{n} chunks");
        }
    }

    #[test]
    fn patch_roundtrip_grow_and_shrink() {
        let base: Vec<_> = (0..10).map(r).collect();
        for new in [
            (0..10)
                .map(|i| if i == 3 { r(99) } else { r(i) })
                .collect::<Vec<_>>(),
            (0..14).map(r).collect(),
            (0..5).map(r).collect(),
            vec![],
        ] {
            let p = diff(&base, &new);
            let enc = encode_patch(&p);
            let dec = decode_patch(&enc, "p").expect("decode");
            assert_eq!(
                apply_patch(base.clone(), &dec, new.len() as u64, "p").expect("apply"),
                new
            );
        }
    }

    #[test]
    fn part_roundtrip_and_bad_input() {
        let v: Vec<_> = (0..7).map(r).collect();
        let enc = encode_part(&v);
        assert_eq!(decode_part(&enc, "p").expect("decode"), v);
        assert!(decode_part(&enc[..enc.len() - 1], "p").is_err());
        assert!(decode_patch(&enc, "p").is_err(), "kind byte is checked");
        assert!(
            apply_patch(v.clone(), &[], 9, "p").is_err(),
            "uncovered tail is corrupt"
        );
        assert!(apply_patch(v.clone(), &[(20, r(1))], 9, "p").is_err());
    }

    #[test]
    fn huge_count_is_refused_without_allocating() {
        // Found by fuzzing (fixtures/fuzz-regressions/chunklist): a count
        // of 2^60 made apply_patch try to allocate for it and abort.
        let v: Vec<_> = (0..3).map(r).collect();
        let e = apply_patch(v, &[(0, r(9))], 1 << 60, "p").expect_err("corrupt");
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
