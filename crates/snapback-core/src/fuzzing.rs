//! The parsers of repository objects that are otherwise private, for the
//! fuzz targets in `fuzz/` and their regression tests. A thin re-export
//! module: not part of the supported API, and nothing here writes.

pub use crate::chunklist::{apply_patch, decode_part, decode_patch, ChunkRef};
pub use crate::index::{decode_index, encode_index, IndexedPack};
pub use crate::pack::{parse_header, parse_prefix, PackEntry};
