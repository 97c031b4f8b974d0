//! The parsers of repository objects that are otherwise private, for the
//! fuzz targets in `fuzz/` and their regression tests. A thin re-export
//! module: not part of the supported API, and nothing here writes.

pub use crate::chunklist::{apply_patch, decode_part, decode_patch, ChunkRef};
pub use crate::index::{decode_index, encode_index, IndexedPack};
pub use crate::pack::{parse_header, parse_prefix, BlobCodec, PackEntry, PackPrefix};

/// Parses and checks a key file (`keys/<id>`) without running the KDF.
pub fn check_key_file(bytes: &[u8]) -> crate::Result<()> {
    crate::crypto::check_key_file(bytes, "fuzz").map(|_| ())
}

/// Opens a sealed message (the envelope of every encrypted object) with a
/// fixed, public key; and seals one, for round trips.
pub fn open_sealed(aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
    fixed_crypto().map_err(|e| e.to_string())?.open(aad, sealed)
}

pub fn seal(aad: &[u8], msg: &[u8]) -> crate::Result<Vec<u8>> {
    fixed_crypto()?.seal(aad, msg)
}

fn fixed_crypto() -> crate::Result<crate::crypto::Crypto> {
    crate::crypto::Crypto::new(&crate::crypto::MasterKey::from_bytes([7u8; 64]))
}

/// An encrypted codec with a fixed, public key: only for fuzzing the
/// sealed-header path. Never used for a repository.
pub fn fixed_key_codec() -> BlobCodec {
    let key = crate::crypto::MasterKey::from_bytes([7u8; 64]);
    match crate::crypto::Crypto::new(&key) {
        Ok(c) => BlobCodec::encrypted(1, std::sync::Arc::new(c)),
        Err(_) => BlobCodec::plain(1),
    }
}
