//! Zstd dictionaries: trained per database from a sample of its pages, so
//! that each 4 KiB page, compressed on its own, compresses nearly as well
//! as the whole file would.
//!
//! A dictionary is stored as `dicts/<id>`, id = SHA-256 of its bytes (the
//! zstd dictionary as `ZDICT_trainFromBuffer` wrote it), verified against
//! its name on every read and, in an encrypted repository, sealed whole.
//! Every blob compressed with one names it in its pack's header (and its
//! index entry), so a reader always knows which one it needs
//! (docs/format.md, "Dictionaries").

use std::io;

use zstd::zstd_safe::{self, CDict, DDict};

use crate::error::{Error, Result};
use crate::id::Id;

/// The largest dictionary trained. Measured on the bench's two 256 MiB
/// databases (docs/benchmarks.md): 32 KiB stored no more than 64 KiB did
/// (145.8 and 35.3 MiB against 145.8 and 35.2) and compresses a little
/// faster.
pub const MAX_DICT_BYTES: usize = 32 * 1024;
/// At most this many pages are sampled to train one. Training time grows
/// with the sample (`ZDICT_trainFromBuffer` searches four parameter sets
/// over all of it): 20,000 pages took 6.7 s on the bench database, 1,000
/// take 0.3 s, and the stored bytes differed by under 0.5%. 1,000 pages of
/// 4 KiB is about 120 times the dictionary, zstd's advice being ~100.
pub const MAX_SAMPLE_PAGES: usize = 1_000;
/// Nor more than this many bytes of them (pages larger than 4 KiB).
pub const MAX_SAMPLE_BYTES: usize = 8 << 20;
/// A database of fewer pages gets no dictionary: the dictionary would cost
/// more than it saves.
pub const MIN_PAGES: u64 = 512;
/// The ratio on new pages is judged only over at least this many.
pub const RATIO_MIN_PAGES: u64 = 1000;

/// The magic number a zstd dictionary starts with (little-endian).
const ZDICT_MAGIC: u32 = 0xEC30_A437;

/// A dictionary, ready to compress (at the repository's level) and to
/// decompress with.
pub struct Dict {
    pub id: Id,
    bytes: Vec<u8>,
    level: i32,
    ddict: DDict<'static>,
}

impl std::fmt::Debug for Dict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dict")
            .field("id", &self.id)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Dict {
    /// A dictionary from its stored bytes (already verified against its
    /// name by the caller): it must be a zstd dictionary that zstd loads.
    pub fn parse(bytes: Vec<u8>, level: i32, place: &str) -> Result<Dict> {
        let magic = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if magic != Some(ZDICT_MAGIC) || zstd_safe::get_dict_id_from_dict(&bytes).is_none() {
            return Err(Error::corrupt(place, "not a zstd dictionary (bad magic)"));
        }
        let ddict = DDict::try_create(&bytes)
            .ok_or_else(|| Error::corrupt(place, "zstd cannot load this dictionary"))?;
        // Compression digests the dictionary per thread (`compress`);
        // digesting it once here proves zstd can compress with it.
        CDict::try_create(&bytes, level)
            .ok_or_else(|| Error::corrupt(place, "zstd cannot load this dictionary"))?;
        Ok(Dict {
            id: Id::of(&bytes),
            bytes,
            level,
            ddict,
        })
    }

    /// Trains a dictionary on `samples` (back to back, `sizes` each).
    pub fn train(samples: &[u8], sizes: &[usize], level: i32) -> Result<Dict> {
        let bytes = zstd::dict::from_continuous(samples, sizes, MAX_DICT_BYTES)
            .map_err(|e| Error::Verification(format!("zstd dictionary training failed: {e}")))?;
        Dict::parse(bytes, level, "new dictionary")
    }

    /// The dictionary as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

thread_local! {
    // One compression context per thread with the last dictionary it
    // compressed with loaded (digested once, reused for every page), and
    // one decompression context, as for compression without a dictionary
    // (pack.rs).
    static CCTX: std::cell::RefCell<Option<((Id, i32), zstd_safe::CCtx<'static>)>> = const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<zstd_safe::DCtx<'static>>> = const { std::cell::RefCell::new(None) };
}

fn zerr(code: usize) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

thread_local! {
    // The buffer a blob is compressed into (its bound, reused).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output of `compress` (into a reused buffer of zstd's bound for
/// `raw_len` bytes) as a vector of exactly its length: a compressed page
/// held until it is packed takes its size, not the 4 KiB bound (a batch
/// of 2,048 sealed pages held 8 MiB of mostly empty capacity).
/// Here, below pack.rs, which uses it too for blobs compressed without a
/// dictionary.
pub(crate) fn exact(
    raw_len: usize,
    compress: impl FnOnce(&mut Vec<u8>) -> std::io::Result<usize>,
) -> std::io::Result<Vec<u8>> {
    SCRATCH.with(|b| {
        let mut out = b.borrow_mut();
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw_len));
        compress(&mut out)?;
        Ok(out.to_vec())
    })
}

/// A compression context with `dict` loaded, at its level, writing
/// frames without the dictionary's id and without the content size: the
/// pack entry of every blob compressed with a dictionary names the
/// dictionary and gives the raw length (docs/format.md, "Dictionaries"),
/// so the 6 bytes a frame would spend on them (about 1.2% of a
/// well-compressing database's pages) are left out. Frames without them
/// decompress as before, with the dictionary given and a buffer of the
/// raw length.
fn dict_context(dict: &Dict) -> io::Result<zstd_safe::CCtx<'static>> {
    use zstd_safe::CParameter;
    let mut ctx = zstd_safe::CCtx::create();
    for p in [
        CParameter::CompressionLevel(dict.level),
        CParameter::ContentSizeFlag(false),
        CParameter::DictIdFlag(false),
        CParameter::ChecksumFlag(false),
    ] {
        ctx.set_parameter(p).map_err(zerr)?;
    }
    ctx.load_dictionary(&dict.bytes).map_err(zerr)?;
    Ok(ctx)
}

/// Compresses `raw` with `dict` (at the level it was loaded with).
pub(crate) fn compress(raw: &[u8], dict: &Dict) -> io::Result<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        let key = (dict.id, dict.level);
        if c.as_ref().is_none_or(|(k, _)| *k != key) {
            *c = Some((key, dict_context(dict)?));
        }
        let Some((_, ctx)) = c.as_mut() else {
            return Err(io::Error::other("no compression context"));
        };
        exact(raw.len(), |out| ctx.compress2(out, raw).map_err(zerr))
    })
}

/// Decompresses `stored` with `dict`, to at most `capacity` bytes.
pub(crate) fn decompress(stored: &[u8], capacity: usize, dict: &Dict) -> io::Result<Vec<u8>> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        let ctx = d.get_or_insert_with(zstd_safe::DCtx::create);
        let mut out = Vec::with_capacity(capacity);
        ctx.decompress_using_ddict(&mut out, stored, &dict.ddict)
            .map_err(zerr)?;
        Ok(out)
    })
}

/// Decompresses `stored` with `dict` into `out`; returns the length.
pub(crate) fn decompress_into(stored: &[u8], out: &mut [u8], dict: &Dict) -> io::Result<usize> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        let ctx = d.get_or_insert_with(zstd_safe::DCtx::create);
        ctx.decompress_using_ddict(out, stored, &dict.ddict)
            .map_err(zerr)
    })
}

/// Which pages to sample from a database of `page_count` pages: spread
/// evenly over the whole file (so every table and index has its share),
/// at most `MAX_SAMPLE_PAGES` and `MAX_SAMPLE_BYTES`. Page numbers from 1.
pub fn sample_pages(page_count: u64, page_size: u32) -> Vec<u64> {
    let by_bytes = (MAX_SAMPLE_BYTES / page_size.max(1) as usize).max(1) as u64;
    let n = page_count.min(MAX_SAMPLE_PAGES as u64).min(by_bytes);
    if n == 0 {
        return vec![];
    }
    let mut out: Vec<u64> = (0..n)
        .map(|i| 1 + (i as u128 * page_count as u128 / n as u128) as u64)
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut p = format!(
                "{{\"user\": \"user{}\", \"email\": \"user{}@example.com\", \"status\": \"active\", \"plan\": \"{}\"}}",
                i % 97,
                i % 89,
                ["free", "pro", "team"][i % 3]
            )
            .repeat(40)
            .into_bytes();
            p.resize(4096, (i % 251) as u8);
            out.extend(p);
        }
        out
    }

    #[test]
    fn a_trained_dictionary_round_trips_and_parses_back() {
        let data = pages(600);
        let sizes = vec![4096; 600];
        let d = Dict::train(&data, &sizes, 1).expect("train");
        assert!(d.bytes().len() <= MAX_DICT_BYTES);
        let again = Dict::parse(d.bytes().to_vec(), 1, "d").expect("parse");
        assert_eq!(again.id, d.id);
        let page = &data[4096 * 7..4096 * 8];
        let z = compress(page, &d).expect("compress");
        assert_eq!(decompress(&z, 4096, &again).expect("decompress"), page);
        // A frame made with one dictionary does not open with another.
        let other = Dict::train(&pages(700)[4096..], &vec![4096; 699], 1).expect("train");
        if other.id != d.id {
            assert!(decompress(&z, 4096, &other).map_or(true, |b| b != page));
        }
    }

    #[test]
    fn dictionary_frames_carry_no_dictionary_id_or_content_size() {
        let data = pages(600);
        let d = Dict::train(&data, &vec![4096; 600], 1).expect("train");
        let page = &data[4096 * 3..4096 * 4];
        let z = compress(page, &d).expect("compress");
        assert_eq!(zstd_safe::get_dict_id_from_frame(&z), None);
        assert!(matches!(zstd_safe::get_frame_content_size(&z), Ok(None)));
        let mut out = vec![0u8; 4096];
        assert_eq!(decompress_into(&z, &mut out, &d).expect("decompress"), 4096);
        assert_eq!(out, page);
        // Frames written before (dictionary id and content size in the
        // header, by zstd's one-shot call) still decompress.
        let mut old = Vec::with_capacity(zstd_safe::compress_bound(4096));
        let cdict = CDict::try_create(d.bytes(), 1).expect("cdict");
        zstd_safe::CCtx::create()
            .compress_using_cdict(&mut old, page, &cdict)
            .expect("old frame");
        assert!(zstd_safe::get_dict_id_from_frame(&old).is_some());
        assert_eq!(decompress(&old, 4096, &d).expect("old decompress"), page);
        // Smaller by those bytes.
        assert!(z.len() < old.len());
    }

    #[test]
    fn what_is_not_a_dictionary_is_refused() {
        assert!(Dict::parse(b"hello world".to_vec(), 1, "d").is_err());
        assert!(Dict::parse(vec![], 1, "d").is_err());
    }

    #[test]
    fn samples_are_spread_and_bounded() {
        assert_eq!(sample_pages(3, 4096), vec![1, 2, 3]);
        let s = sample_pages(1_000_000, 4096);
        assert_eq!(s.len(), MAX_SAMPLE_PAGES);
        assert_eq!(s[0], 1);
        assert!(*s.last().expect("last") > 990_000);
        assert!(sample_pages(1_000_000, 65536).len() * 65536 <= MAX_SAMPLE_BYTES);
    }
}
