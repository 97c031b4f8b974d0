//! The parsers of repository objects that are otherwise private, for the
//! fuzz targets in `fuzz/` and their regression tests. A thin re-export
//! module: not part of the supported API, and nothing here writes.

pub use crate::chunklist::{apply_patch, decode_part, decode_patch, ChunkRef};
pub use crate::index::{decode_index, encode_index, IndexedPack};
pub use crate::pack::{parse_header, parse_prefix, BlobCodec, PackEntry};

/// An encrypted codec with a fixed, public key: only for fuzzing the
/// sealed-header path. Never used for a repository.
pub fn fixed_key_codec() -> BlobCodec {
    let key = crate::crypto::MasterKey::from_bytes([7u8; 64]);
    match crate::crypto::Crypto::new(&key) {
        Ok(c) => BlobCodec::encrypted(1, std::sync::Arc::new(c)),
        Err(_) => BlobCodec::plain(1),
    }
}
