//! Snapshot manifests: the commit record of a snapshot.
//!
//! A manifest is JSON, stored under `snapshots/<sha256 of its bytes>`, and it
//! is written last, after every object that it references is durably stored
//! and verified. A manifest that exists means a committed snapshot.

use serde::{Deserialize, Serialize};

use crate::config::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::id::Id;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    /// RFC 3339, UTC: nothing in any image was written after this instant
    /// (the newest read transaction's start; the end of the capture when
    /// plain files are held). See `snapshot::image_time`.
    pub time: String,
    pub host: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The source paths as given (absolute).
    pub paths: Vec<String>,
    pub files: Vec<FileEntry>,
    pub stats: SnapshotStats,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Sqlite,
    File,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Chunking {
    /// Fixed-size chunks of `size` bytes (the last may be shorter).
    Fixed { size: u32 },
    /// Content-defined chunks (FastCDC).
    Cdc,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Absolute source path.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    /// Modification time of the source (RFC 3339), informational.
    pub mtime: Option<String>,
    /// SHA-256 of the whole captured content. Always present in format 1;
    /// in format 2, absent when the capture read only what changed (the
    /// chunk ids and `db_checksum` prove the image then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Id>,
    /// Sum of per-chunk terms (see `DbChecksum`), hex.
    pub db_checksum: String,
    pub chunking: Chunking,
    pub chunks: ChunkListRef,
    pub sqlite: Option<SqliteFacts>,
    /// Set (never stored) on the database's entry in the view of a
    /// timeline point: its chunk list is `chunks` (the base's) with the
    /// point's changes replayed over it (see `segment::replay`).
    #[serde(skip)]
    pub point: Option<PointSource>,
}

/// Which point of which timeline segment a file entry shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointSource {
    pub segment: Id,
    /// The point's position in its segment, from 0.
    pub index: usize,
}

/// Where a file's chunk list is: `base` parts (up to `chunklist::PART_LEN`
/// entries each), optionally with a `patch` of changed entries on top.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkListRef {
    pub count: u64,
    pub base: Vec<Id>,
    pub patch: Option<Id>,
}

impl ChunkListRef {
    pub fn blob_ids(&self) -> impl Iterator<Item = &Id> {
        self.base.iter().chain(self.patch.iter())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SqliteFacts {
    pub page_size: u32,
    pub page_count: u64,
    /// "wal" or "rollback", from header bytes 18 and 19.
    pub journal_mode: String,
    /// SHA-256 over the schema table's rows.
    pub schema_hash: Id,
    /// Header offset 24. Informational only: it does not move in WAL mode.
    pub change_counter: u32,
    /// When the read transaction was established.
    pub captured_at: String,
    /// The database's and its WAL's file metadata, taken before the read
    /// transaction began, recorded only when no write was recent enough to
    /// hide behind timestamp granularity (see `fingerprint`). A later
    /// snapshot that finds exactly these files reuses this image unread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::fingerprint::DbFingerprint>,
    /// How the image was taken (absent in manifests written before this
    /// field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureMethod>,
    /// The zstd dictionary this capture compressed the database's new
    /// pages with (format 2, feature `zstd-dict`). Only for the next
    /// capture, which goes on with it or trains a new one: a reader finds
    /// each blob's dictionary in its pack's header and index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dict: Option<DictUse>,
}

/// Which dictionary a capture used, and how well it did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DictUse {
    /// `dicts/<id>`.
    pub id: Id,
    /// Stored bytes per 1000 raw bytes of the pages compressed with it by
    /// the capture that trained it (the ratio to keep).
    pub baseline_per_mille: u32,
    /// Pages this capture compressed with it, and their stored bytes per
    /// 1000 raw bytes.
    pub new_pages: u64,
    pub new_per_mille: u32,
}

/// How a database image was captured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum CaptureMethod {
    /// Only the pages written since the previous capture (found from the
    /// WAL's frame headers) were read.
    WalDelta { pages_read: u64 },
    /// Every page was read; `reason` says why no delta was possible.
    FullScan { reason: String },
    /// The fingerprint proved the database unchanged: nothing was read.
    Unchanged,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    pub files: u64,
    pub bytes_read: u64,
    /// Raw bytes of chunks the repository did not have.
    pub bytes_new: u64,
    /// Bytes of pack and index objects this snapshot wrote.
    pub bytes_added: u64,
    pub objects_written: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub duration_ms: u64,
    /// Databases captured by WAL delta (reading only the changed pages).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wal_delta_files: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Manifest {
    pub fn parse(bytes: &[u8], place: &str) -> Result<Manifest> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(place, format!("not a snapshot manifest: {e}")))?;
        if v.format_version > FORMAT_VERSION || v.format_version == 0 {
            return Err(Error::UnsupportedVersion {
                found: v.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| Error::corrupt(place, e.to_string()))?;
        crate::time::parse_rfc3339(&m.time)
            .map_err(|e| Error::corrupt(place, format!("bad time: {e}")))?;
        for f in &m.files {
            let parts_ok = f.chunks.base.len() as u64
                <= f.chunks.count.div_ceil(crate::chunklist::PART_LEN as u64) + 1;
            // Format 1 proves every file by its whole-file hash.
            let hash_ok = m.format_version >= 2 || f.sha256.is_some();
            if !parts_ok || !hash_ok || !f.path.starts_with('/') {
                return Err(Error::corrupt(
                    place,
                    format!("file entry {} is malformed", f.path),
                ));
            }
        }
        Ok(m)
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::internal(format!("cannot encode manifest: {e}")))
    }

    /// Sum of the logical sizes of its files.
    pub fn logical_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}
