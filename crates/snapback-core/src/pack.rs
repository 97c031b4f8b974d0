//! Packs: many compressed blobs in one object, so that a snapshot of a few
//! changed pages writes a few objects, not thousands.
//!
//! Layout (all integers little-endian):
//! ```text
//! magic     8 bytes  "SNBPACK\x01"
//! hlen      u32      length of the header that follows
//! header    count u32, then count entries of 41 bytes:
//!             kind u8, id [32], stored_len u32, raw_len u32
//! blobs     the stored (zstd) blobs, in header order, back to back
//! ```
//! A pack is named by the SHA-256 of all its bytes, so it can be verified
//! without unpacking, and its header alone rebuilds its index entries.
//!
//! A pack that holds blobs compressed with a zstd dictionary (`dict`) is of
//! version 2, `"SNBPACK\x02"`, whose header begins with a dictionary table
//! and gives each entry one more byte, its dictionary:
//! ```text
//! header    dict_count u16, dict_count x id [32],
//!           count u32, then count entries of 42 bytes:
//!             kind u8, dict u8 (0 = none, i = the table's i-th), id [32],
//!             stored_len u32, raw_len u32
//! ```
//! Packs without such blobs are written as version 1, as before.
//!
//! In an encrypted repository the header (count and entries) is sealed as
//! one message (`hlen` is then its sealed length) and every blob is sealed
//! on its own (see `crypto`), so one blob is still one range read.

use std::sync::Arc;

use crate::crypto::{Crypto, SEAL_OVERHEAD};
use crate::dict::Dict;
use crate::error::{Error, Result};
use crate::id::Id;

pub const PACK_MAGIC: &[u8; 8] = b"SNBPACK\x01";
/// Packs with a dictionary table.
pub const PACK_MAGIC_V2: &[u8; 8] = b"SNBPACK\x02";
const ENTRY_LEN: usize = 41;
const ENTRY_LEN_V2: usize = 42;
/// At most this many dictionaries in one pack's table (the entry's byte).
pub const MAX_PACK_DICTS: usize = 255;
/// Associated data of a sealed pack header.
const HEADER_AAD: &[u8] = b"snapback pack header";

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A part of a file's chunk list (see `chunklist`).
    ChunkList,
}

impl BlobKind {
    pub fn code(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::ChunkList => 1,
        }
    }

    pub fn from_code(c: u8) -> Option<BlobKind> {
        match c {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::ChunkList),
            _ => None,
        }
    }
}

/// One blob's entry in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: Id,
    /// Offset of the stored bytes within the pack.
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    /// The zstd dictionary the blob was compressed with, if any.
    pub dict: Option<Id>,
}

thread_local! {
    // One compression and one decompression context per thread, reused:
    // creating a zstd context per 4 KiB page costs more than compressing it.
    static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match c.as_mut() {
            Some((_, ctx)) => crate::dict::exact(raw.len(), |out| ctx.compress_to_buffer(raw, out)),
            None => zstd::bulk::compress(raw, level),
        }
    })
}

fn decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(ctx) => ctx.decompress(stored, capacity),
            None => zstd::bulk::decompress(stored, capacity),
        }
    })
}

/// Decompresses a zstd frame into exactly `out` (the frame must fill it).
fn decompress_into(stored: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(ctx) => ctx.decompress_to_buffer(stored, out),
            None => zstd::bulk::Decompressor::new()?.decompress_to_buffer(stored, out),
        }
    })
}

thread_local! {
    // The buffer a new frame is decompressed into to prove it (one page,
    // reused).
    static PROOF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Compresses one blob at `level`, or with `dict`.
fn compress_blob(raw: &[u8], level: i32, dict: Option<&Dict>) -> std::io::Result<Vec<u8>> {
    if compressor_fault_for_tests() {
        // A compressor that silently changes what it compresses (its
        // output is a valid frame of other bytes).
        let mut changed = raw.to_vec();
        if let Some(b) = changed.last_mut() {
            *b ^= 1;
        }
        return compress_blob_as_is(&changed, level, dict);
    }
    compress_blob_as_is(raw, level, dict)
}

fn compress_blob_as_is(raw: &[u8], level: i32, dict: Option<&Dict>) -> std::io::Result<Vec<u8>> {
    match dict {
        Some(d) => crate::dict::compress(raw, d),
        None => compress(raw, level),
    }
}

/// A test hook: with `SNAPBACK_TEST_COMPRESSOR_FAULT=1`, every compressed
/// blob is a frame of its bytes with the last one flipped, which the proof
/// of `prove_frame` must refuse (tests/e2e/dictionaries.rs).
fn compressor_fault_for_tests() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| {
        let on = std::env::var_os("SNAPBACK_TEST_COMPRESSOR_FAULT").is_some_and(|v| v == "1");
        if on {
            tracing::warn!("test hook: every compressed blob is a frame of other bytes");
        }
        on
    })
}

/// Proves that the new frame `stored` decompresses (with `dict`) to
/// exactly `raw`, the bytes whose id `id` is: decompressed into a reused
/// buffer and compared byte for byte, which proves as much as hashing the
/// result again (equal bytes have the caller's id) at a fraction of the
/// cost.
fn prove_frame(id: &Id, stored: &[u8], raw: &[u8], dict: Option<&Dict>) -> Result<()> {
    PROOF.with(|b| {
        let mut back = b.borrow_mut();
        back.resize(raw.len(), 0);
        let n = match dict {
            Some(d) => crate::dict::decompress_into(stored, &mut back, d),
            None => decompress_into(stored, &mut back),
        }
        .map_err(|e| {
            Error::Verification(format!(
                "chunk {} does not decompress after compression{}: {e}; nothing was stored",
                id.short(),
                with_dict(dict)
            ))
        })?;
        if n != raw.len() || back[..n] != *raw {
            return Err(Error::Verification(format!(
                "chunk {} changed in compression (compressor fault); nothing was stored",
                id.short()
            )));
        }
        Ok(())
    })
}

/// " with dictionary X", for an error about a blob that has one.
fn with_dict(dict: Option<&Dict>) -> String {
    dict.map_or(String::new(), |d| {
        format!(" with dictionary {}", d.id.short())
    })
}

/// How blobs are stored: zstd at a level, then (in an encrypted
/// repository) sealed one by one; and how a chunk is named: SHA-256, or
/// HMAC-SHA256 under the repository's id key when encrypted.
#[derive(Debug, Clone)]
pub struct BlobCodec {
    level: i32,
    crypto: Option<Arc<Crypto>>,
}

impl BlobCodec {
    /// An unencrypted repository's codec.
    pub fn plain(level: i32) -> BlobCodec {
        BlobCodec {
            level,
            crypto: None,
        }
    }

    pub(crate) fn encrypted(level: i32, crypto: Arc<Crypto>) -> BlobCodec {
        BlobCodec {
            level,
            crypto: Some(crypto),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.crypto.is_some()
    }

    /// The id of a blob with this content.
    pub fn blob_id(&self, raw: &[u8]) -> Id {
        match &self.crypto {
            Some(c) => c.chunk_id(raw),
            None => Id::of(raw),
        }
    }

    /// Compresses (and seals) a blob, with `dict` when given, and proves
    /// that the stored form decompresses back to exactly `raw`, so that a
    /// compressor fault is never committed. `id` must be `raw`'s id (the
    /// caller hashed it): the proof compares bytes, it does not hash them
    /// again (one hash per page; see docs/format.md, "Packs").
    pub fn seal(&self, id: &Id, raw: &[u8], dict: Option<&Dict>) -> Result<Vec<u8>> {
        let stored = compress_blob(raw, self.level, dict).map_err(|e| {
            Error::Verification(format!(
                "zstd compression of chunk {} failed: {e}",
                id.short()
            ))
        })?;
        prove_frame(id, &stored, raw, dict)?;
        match &self.crypto {
            Some(c) => c.seal(&id.0, &stored),
            None => Ok(stored),
        }
    }

    /// The compressed form of a stored blob: itself, or opened
    /// (authenticated) in an encrypted repository.
    fn unseal<'a>(
        &self,
        id: &Id,
        stored: &'a [u8],
        what: &dyn Fn() -> String,
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        Ok(match &self.crypto {
            Some(c) => std::borrow::Cow::Owned(
                c.open(&id.0, stored)
                    .map_err(|why| Error::corrupt(what(), why))?,
            ),
            None => std::borrow::Cow::Borrowed(stored),
        })
    }

    /// `open` into `out`, which is the blob's place (its length is the
    /// blob's raw length): no allocation and no copy, and the hash checked
    /// against `id` is that of the bytes where they lie. On an error, `out`
    /// holds nothing proven.
    pub fn open_into(
        &self,
        id: &Id,
        stored: &[u8],
        out: &mut [u8],
        place: &str,
        dict: Option<&Dict>,
    ) -> Result<()> {
        let what = || format!("blob {} in {place}", id.short());
        let compressed = self.unseal(id, stored, &what)?;
        let n = match dict {
            Some(d) => crate::dict::decompress_into(&compressed, out, d),
            None => decompress_into(&compressed, out),
        }
        .map_err(|e| {
            Error::corrupt(
                what(),
                format!("does not decompress{}: {e}", with_dict(dict)),
            )
        })?;
        if n != out.len() {
            return Err(Error::corrupt(
                what(),
                format!("decompressed to {n} bytes, expected {}", out.len()),
            ));
        }
        let got = self.blob_id(out);
        if got != *id {
            return Err(Error::corrupt(
                what(),
                format!("content hash is {}, not the blob's id", got.short()),
            ));
        }
        Ok(())
    }

    /// Opens (authenticates), decompresses (with `dict`, the dictionary its
    /// entry names) and checks a stored blob against its id and length.
    pub fn open(
        &self,
        id: &Id,
        stored: &[u8],
        raw_len: u32,
        place: &str,
        dict: Option<&Dict>,
    ) -> Result<Vec<u8>> {
        let what = || format!("blob {} in {place}", id.short());
        let compressed = self.unseal(id, stored, &what)?;
        let raw = match dict {
            Some(d) => crate::dict::decompress(&compressed, raw_len as usize, d),
            None => decompress(&compressed, raw_len as usize),
        }
        .map_err(|e| {
            Error::corrupt(
                what(),
                format!("does not decompress{}: {e}", with_dict(dict)),
            )
        })?;
        if raw.len() != raw_len as usize {
            return Err(Error::corrupt(
                what(),
                format!("decompressed to {} bytes, expected {raw_len}", raw.len()),
            ));
        }
        let got = self.blob_id(&raw);
        if got != *id {
            return Err(Error::corrupt(
                what(),
                format!("content hash is {}, not the blob's id", got.short()),
            ));
        }
        Ok(raw)
    }

    /// Bytes that sealing adds to a pack header.
    fn header_overhead(&self) -> usize {
        if self.crypto.is_some() {
            SEAL_OVERHEAD
        } else {
            0
        }
    }
}

/// Compresses a blob with `codec` (see [`BlobCodec::seal`]).
pub fn seal_blob(codec: &BlobCodec, id: &Id, raw: &[u8], dict: Option<&Dict>) -> Result<Vec<u8>> {
    codec.seal(id, raw, dict)
}

/// Opens a stored blob with `codec` (see [`BlobCodec::open`]).
pub fn open_blob(
    codec: &BlobCodec,
    entry_id: &Id,
    stored: &[u8],
    raw_len: u32,
    place: &str,
    dict: Option<&Dict>,
) -> Result<Vec<u8>> {
    codec.open(entry_id, stored, raw_len, place, dict)
}

/// Builds a pack in memory.
#[derive(Debug, Default)]
pub struct PackBuilder {
    entries: Vec<(BlobKind, Id, u32, u32, u8)>,
    /// The dictionaries its blobs name (entry byte i = `dicts[i - 1]`).
    dicts: Vec<Id>,
    body: Vec<u8>,
}

impl PackBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that writes its body into `buf` (cleared first): the
    /// buffer of a pack already stored, so that a snapshot's packs reuse a
    /// few buffers of their size instead of each allocating its own.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        PackBuilder {
            body: buf,
            ..Self::default()
        }
    }

    /// False when adding a blob of `dict` would need a table entry more
    /// than a pack has: flush first.
    pub fn has_room_for(&self, dict: Option<&Id>) -> bool {
        dict.is_none_or(|d| self.dicts.contains(d) || self.dicts.len() < MAX_PACK_DICTS)
    }

    /// Adds a stored blob; `dict` is the dictionary it was compressed
    /// with. The caller checks `has_room_for` first (a blob whose
    /// dictionary does not fit is refused as an internal error).
    pub fn add(
        &mut self,
        kind: BlobKind,
        id: Id,
        stored: &[u8],
        raw_len: u32,
        dict: Option<Id>,
    ) -> Result<()> {
        let slot = match dict {
            None => 0,
            Some(d) => match self.dicts.iter().position(|x| *x == d) {
                Some(i) => i + 1,
                None if self.dicts.len() < MAX_PACK_DICTS => {
                    self.dicts.push(d);
                    self.dicts.len()
                }
                None => {
                    return Err(Error::internal(format!(
                        "a pack can name at most {MAX_PACK_DICTS} dictionaries"
                    )))
                }
            },
        };
        self.entries
            .push((kind, id, stored.len() as u32, raw_len, slot as u8));
        self.body.extend_from_slice(stored);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn size(&self) -> usize {
        self.body.len() + 12 + self.plain_header_len()
    }

    fn plain_header_len(&self) -> usize {
        if self.dicts.is_empty() {
            4 + self.entries.len() * ENTRY_LEN
        } else {
            2 + 32 * self.dicts.len() + 4 + self.entries.len() * ENTRY_LEN_V2
        }
    }

    /// Serializes the pack; returns its bytes, its id and its entries with
    /// their final offsets.
    pub fn finish(self, codec: &BlobCodec) -> Result<(Vec<u8>, Id, Vec<PackEntry>)> {
        let v2 = !self.dicts.is_empty();
        let plain_len = self.plain_header_len();
        let hlen = plain_len + codec.header_overhead();
        let mut header = Vec::with_capacity(plain_len);
        if v2 {
            header.extend_from_slice(&(self.dicts.len() as u16).to_le_bytes());
            for d in &self.dicts {
                header.extend_from_slice(&d.0);
            }
        }
        header.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut offset = (12 + hlen) as u32;
        let mut entries = Vec::with_capacity(self.entries.len());
        for (kind, id, stored_len, raw_len, slot) in &self.entries {
            header.push(kind.code());
            if v2 {
                header.push(*slot);
            }
            header.extend_from_slice(&id.0);
            header.extend_from_slice(&stored_len.to_le_bytes());
            header.extend_from_slice(&raw_len.to_le_bytes());
            entries.push(PackEntry {
                kind: *kind,
                id: *id,
                offset,
                stored_len: *stored_len,
                raw_len: *raw_len,
                dict: (*slot > 0).then(|| self.dicts[*slot as usize - 1]),
            });
            offset += stored_len;
        }
        let header = match &codec.crypto {
            Some(c) => c.seal(HEADER_AAD, &header)?,
            None => header,
        };
        debug_assert_eq!(header.len(), hlen);
        let mut prefix = Vec::with_capacity(12 + hlen);
        prefix.extend_from_slice(if v2 { PACK_MAGIC_V2 } else { PACK_MAGIC });
        prefix.extend_from_slice(&(hlen as u32).to_le_bytes());
        prefix.extend_from_slice(&header);
        // The prefix goes in front of the body in the body's own buffer
        // (one move of its bytes), not into a second buffer of the pack's
        // size: each pack in flight to the store held two copies of itself.
        let mut out = self.body;
        out.splice(0..0, prefix);
        let id = Id::of(&out);
        Ok((out, id, entries))
    }
}

/// What a pack's 12-byte prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackPrefix {
    /// 1, or 2 for a pack with a dictionary table.
    pub version: u8,
    /// The length of the (sealed) header that follows.
    pub hlen: u32,
}

/// Parses the 12-byte prefix.
pub fn parse_prefix(codec: &BlobCodec, prefix: &[u8], place: &str) -> Result<PackPrefix> {
    if prefix.len() >= 8 && &prefix[..7] == b"SNBPACK" && prefix[7] > PACK_MAGIC_V2[7] {
        return Err(Error::UnsupportedVersion {
            found: prefix[7] as u32,
            supported: PACK_MAGIC_V2[7] as u32,
        });
    }
    let version = match prefix.get(..8) {
        Some(m) if prefix.len() >= 12 && m == PACK_MAGIC => 1,
        Some(m) if prefix.len() >= 12 && m == PACK_MAGIC_V2 => 2,
        _ => return Err(Error::corrupt(place, "not a snapback pack (bad magic)")),
    };
    let hlen = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    let over = codec.header_overhead() as u32;
    let ok = match version {
        1 => hlen >= 4 + over && ((hlen - 4 - over) as usize).is_multiple_of(ENTRY_LEN),
        _ => hlen >= 2 + 32 + 4 + over,
    };
    if !ok {
        return Err(Error::corrupt(
            place,
            format!("pack header length {hlen} is invalid"),
        ));
    }
    Ok(PackPrefix { version, hlen })
}

/// The dictionary an entry's one-byte slot names in a version-2 pack
/// header or index table (`dicts`): 0 is none, `i` is `dicts[i - 1]`; a
/// slot past the table is damage at `place`.
pub(crate) fn dict_of_slot(dicts: &[Id], slot: u8, place: &str) -> Result<Option<Id>> {
    match slot as usize {
        0 => Ok(None),
        i => dicts.get(i - 1).copied().map(Some).ok_or_else(|| {
            Error::corrupt(
                place,
                format!("an entry names dictionary {i} of {}", dicts.len()),
            )
        }),
    }
}

/// Parses a pack header (the `hlen` bytes after the prefix) and checks every
/// entry against the pack's size.
pub fn parse_header(
    codec: &BlobCodec,
    prefix: &PackPrefix,
    sealed: &[u8],
    pack_size: u64,
    place: &str,
) -> Result<Vec<PackEntry>> {
    let opened;
    let header = match &codec.crypto {
        Some(c) => {
            opened = c
                .open(HEADER_AAD, sealed)
                .map_err(|why| Error::corrupt(place, format!("pack header: {why}")))?;
            &opened[..]
        }
        None => sealed,
    };
    let mut dicts: Vec<Id> = Vec::new();
    let mut header = header;
    if prefix.version >= 2 {
        if header.len() < 2 {
            return Err(Error::corrupt(place, "pack header is truncated"));
        }
        let n = u16::from_le_bytes([header[0], header[1]]) as usize;
        if n == 0 || n > MAX_PACK_DICTS || header.len() < 2 + 32 * n {
            return Err(Error::corrupt(
                place,
                format!("pack dictionary table of {n} entries is invalid"),
            ));
        }
        for d in header[2..2 + 32 * n].chunks_exact(32) {
            let mut id = [0u8; 32];
            id.copy_from_slice(d);
            dicts.push(Id(id));
        }
        header = &header[2 + 32 * n..];
    }
    let entry_len = if prefix.version >= 2 {
        ENTRY_LEN_V2
    } else {
        ENTRY_LEN
    };
    if header.len() < 4 {
        return Err(Error::corrupt(place, "pack header is truncated"));
    }
    let count = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if header.len() != 4 + count * entry_len {
        return Err(Error::corrupt(
            place,
            "pack header length does not match its entry count",
        ));
    }
    let mut offset = 12u64 + sealed.len() as u64;
    let mut out = Vec::with_capacity(count);
    for e in header[4..].chunks_exact(entry_len) {
        let kind = BlobKind::from_code(e[0])
            .ok_or_else(|| Error::corrupt(place, format!("unknown blob kind {}", e[0])))?;
        let (dict, e) = if prefix.version >= 2 {
            (dict_of_slot(&dicts, e[1], place)?, &e[1..])
        } else {
            (None, e)
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[1..33]);
        let stored_len = u32::from_le_bytes([e[33], e[34], e[35], e[36]]);
        let raw_len = u32::from_le_bytes([e[37], e[38], e[39], e[40]]);
        if offset + stored_len as u64 > pack_size {
            return Err(Error::corrupt(
                place,
                "a blob extends past the end of the pack",
            ));
        }
        out.push(PackEntry {
            kind,
            id: Id(id),
            offset: offset as u32,
            stored_len,
            raw_len,
            dict,
        });
        offset += stored_len as u64;
    }
    if offset != pack_size {
        return Err(Error::corrupt(
            place,
            format!("pack is {pack_size} bytes but its header accounts for {offset}"),
        ));
    }
    Ok(out)
}

/// Parses a whole pack held in memory: checks its name, its header, and every
/// blob (decompressed and hashed). Returns the entries.
#[cfg(test)]
pub fn verify_pack(
    codec: &BlobCodec,
    bytes: &[u8],
    expected: &Id,
    place: &str,
    dicts: Option<&[Dict]>,
) -> Result<Vec<PackEntry>> {
    let got = Id::of(bytes);
    if got != *expected {
        return Err(Error::corrupt(
            place,
            format!("pack content hashes to {}, not to its name", got.short()),
        ));
    }
    let prefix = parse_prefix(codec, bytes, place)?;
    let hlen = prefix.hlen as usize;
    if bytes.len() < 12 + hlen {
        return Err(Error::corrupt(place, "pack is shorter than its header"));
    }
    let entries = parse_header(
        codec,
        &prefix,
        &bytes[12..12 + hlen],
        bytes.len() as u64,
        place,
    )?;
    for e in &entries {
        let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
        let d = match (e.dict, dicts) {
            (Some(id), Some(ds)) => ds.iter().find(|d| d.id == id),
            _ => None,
        };
        open_blob(codec, &e.id, s, e.raw_len, place, d)?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codecs() -> Vec<BlobCodec> {
        let key = crate::crypto::MasterKey::generate().expect("key");
        vec![
            BlobCodec::plain(3),
            BlobCodec::encrypted(3, Arc::new(Crypto::new(&key).expect("crypto"))),
        ]
    }

    fn one_blob_pack(codec: &BlobCodec) -> (Vec<u8>, Id) {
        let mut b = PackBuilder::new();
        let raw = vec![7u8; 10000];
        let id = codec.blob_id(&raw);
        b.add(
            BlobKind::Data,
            id,
            &seal_blob(codec, &id, &raw, None).expect("seal"),
            raw.len() as u32,
            None,
        )
        .expect("add");
        let (bytes, pid, _) = b.finish(codec).expect("finish");
        (bytes, pid)
    }

    #[test]
    fn pack_roundtrip_and_verify() {
        for codec in codecs() {
            let mut b = PackBuilder::new();
            let blobs: Vec<Vec<u8>> = vec![
                b"hello".to_vec(),
                vec![0u8; 4096],
                (0..5000u32).map(|i| i as u8).collect(),
            ];
            for raw in &blobs {
                let id = codec.blob_id(raw);
                let s = seal_blob(&codec, &id, raw, None).expect("seal");
                b.add(BlobKind::Data, id, &s, raw.len() as u32, None)
                    .expect("add");
            }
            let (bytes, id, entries) = b.finish(&codec).expect("finish");
            assert_eq!(
                verify_pack(&codec, &bytes, &id, "p", None).expect("verify"),
                entries
            );
            for (e, raw) in entries.iter().zip(&blobs) {
                let s = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
                assert_eq!(
                    &open_blob(&codec, &e.id, s, e.raw_len, "p", None).expect("open"),
                    raw
                );
            }
            // Encrypted: neither the content nor the plain ids appear.
            if codec.is_encrypted() {
                let plain_id = Id::of(b"hello");
                assert!(!bytes.windows(32).any(|w| w == plain_id.0));
                assert!(!bytes.windows(5).any(|w| w == b"hello"));
                assert!(
                    !bytes.windows(32).any(|w| w == entries[0].id.0),
                    "the header is sealed"
                );
            }
        }
    }

    #[test]
    fn flipped_byte_is_detected() {
        for codec in codecs() {
            let (mut bytes, pid) = one_blob_pack(&codec);
            let last = bytes.len() - 3;
            bytes[last] ^= 0x40;
            assert!(matches!(
                verify_pack(&codec, &bytes, &pid, "p", None),
                Err(Error::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn a_pack_of_another_key_does_not_open() {
        let c = codecs();
        let (bytes, pid) = one_blob_pack(&c[1]);
        let other = &codecs()[1];
        assert!(matches!(
            verify_pack(other, &bytes, &pid, "p", None),
            Err(Error::Corrupt { .. })
        ));
        // Nor is an encrypted pack read as a plain one, or the reverse.
        assert!(verify_pack(&c[0], &bytes, &pid, "p", None).is_err());
        let (plain, ppid) = one_blob_pack(&c[0]);
        assert!(verify_pack(&c[1], &plain, &ppid, "p", None).is_err());
    }

    #[test]
    fn bad_headers_are_rejected() {
        let c = BlobCodec::plain(3);
        assert!(parse_prefix(&c, b"NOTAPACK\x05\x00\x00\x00", "p").is_err());
        // Version 2, with a header too short for its dictionary table.
        assert!(matches!(
            parse_prefix(&c, b"SNBPACK\x02\x05\x00\x00\x00", "p"),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            parse_prefix(&c, b"SNBPACK\x03\x05\x00\x00\x00", "p"),
            Err(Error::UnsupportedVersion { found: 3, .. })
        ));
        let v1 = PackPrefix {
            version: 1,
            hlen: 4,
        };
        assert!(parse_header(&c, &v1, &[1, 0, 0, 0], 100, "p").is_err());
        assert!(parse_header(&c, &v1, &[0, 0, 0, 0], 16, "p").is_ok());
        assert!(parse_header(&c, &v1, &[0, 0, 0, 0], 17, "p").is_err());
        // A version-2 entry that names a dictionary the table lacks.
        let v2 = PackPrefix {
            version: 2,
            hlen: 2 + 32 + 4 + 42,
        };
        let mut h = vec![1, 0];
        h.extend([9u8; 32]);
        h.extend(1u32.to_le_bytes());
        h.extend([0u8, 2]);
        h.extend([5u8; 32]);
        h.extend(0u32.to_le_bytes());
        h.extend(0u32.to_le_bytes());
        let size = 12 + h.len() as u64;
        let e = parse_header(&c, &v2, &h, size, "p").expect_err("no such dictionary");
        assert!(e.to_string().contains("names dictionary 2 of 1"), "{e}");
        h[39] = 1; // the entry's dictionary byte: the first of the table
        let entries = parse_header(&c, &v2, &h, size, "p").expect("v2 header");
        assert_eq!(entries[0].dict, Some(Id([9u8; 32])));
    }

    fn dict_pages() -> Vec<Vec<u8>> {
        (0..600)
            .map(|i| {
                let mut p = format!(
                    "{{\"id\": {i}, \"name\": \"row {}\", \"tags\": [\"a\", \"b\"]}}",
                    i % 37
                )
                .repeat(60)
                .into_bytes();
                p.resize(4096, 0);
                p
            })
            .collect()
    }

    #[test]
    fn dictionary_blobs_round_trip_through_a_version_2_pack_and_need_their_dictionary() {
        let pages = dict_pages();
        let flat: Vec<u8> = pages.concat();
        let dict = Dict::train(&flat, &vec![4096; pages.len()], 3).expect("train");
        for codec in codecs() {
            let mut b = PackBuilder::new();
            for (i, raw) in pages.iter().take(20).enumerate() {
                let id = codec.blob_id(raw);
                let d = (i % 2 == 0).then_some(&dict);
                let s = seal_blob(&codec, &id, raw, d).expect("seal");
                b.add(BlobKind::Data, id, &s, 4096, d.map(|d| d.id))
                    .expect("add");
            }
            let (bytes, pid, entries) = b.finish(&codec).expect("finish");
            assert_eq!(&bytes[..8], PACK_MAGIC_V2);
            let with = std::slice::from_ref(&dict);
            assert_eq!(
                verify_pack(&codec, &bytes, &pid, "p", Some(with)).expect("verify"),
                entries
            );
            assert_eq!(entries[0].dict, Some(dict.id));
            assert_eq!(entries[1].dict, None);
            // Without its dictionary a blob does not open: never wrong bytes.
            assert!(verify_pack(&codec, &bytes, &pid, "p", None).is_err());
        }
    }

    #[test]
    fn a_frame_of_other_bytes_is_refused_by_the_proof_with_or_without_a_dictionary() {
        let pages = dict_pages();
        let flat: Vec<u8> = pages.concat();
        let dict = Dict::train(&flat, &vec![4096; pages.len()], 3).expect("train");
        let raw = &pages[5];
        let id = Id::of(raw);
        for d in [None, Some(&dict)] {
            let good = compress_blob_as_is(raw, 3, d).expect("compress");
            prove_frame(&id, &good, raw, d).expect("the true frame is proven");
            // What a faulty compressor would give: a valid frame, of bytes
            // that differ in one bit, or one byte short, or one byte more.
            let mut flipped = raw.clone();
            flipped[4095] ^= 1;
            let mut longer = raw.clone();
            longer.push(0);
            for other in [flipped, raw[..4095].to_vec(), longer] {
                let bad = compress_blob_as_is(&other, 3, d).expect("compress");
                let e = prove_frame(&id, &bad, raw, d).expect_err("a frame of other bytes");
                assert!(matches!(e, Error::Verification(_)), "{e}");
                assert!(e.to_string().contains("nothing was stored"), "{e}");
            }
            // Nor does a frame that does not decompress (or not with this
            // dictionary) pass.
            let mut broken = good.clone();
            let last = broken.len() - 1;
            broken[last] ^= 0xff;
            broken.truncate(last - 2);
            assert!(prove_frame(&id, &broken, raw, d).is_err());
        }
        let with = compress_blob_as_is(raw, 3, Some(&dict)).expect("compress");
        assert!(
            prove_frame(&id, &with, raw, None).is_err(),
            "a dictionary frame without it"
        );
    }

    #[test]
    fn a_pack_without_dictionary_blobs_stays_version_1() {
        let codec = BlobCodec::plain(3);
        let (bytes, _) = one_blob_pack(&codec);
        assert_eq!(&bytes[..8], PACK_MAGIC);
    }
}
