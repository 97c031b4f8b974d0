//! snapback-core: the repository format and the operations on it.
//!
//! A synchronous library: snapshot, restore, check and the read paths that
//! the mount and the repair engine build on. It knows nothing of the CLI.
//! The public surface is the `pub use` block below.

pub mod batch;
mod blob_set;
mod capture_state;
mod check;
mod chunklist;
mod config;
mod crypto;
mod dating;
mod delta;
#[cfg(test)]
mod delta_snapshot_tests;
mod dict;
mod error;
mod fetch;
mod fingerprint;
mod forget;
#[cfg(test)]
mod full_scan_tests;
#[doc(hidden)]
pub mod fuzzing;
mod id;
mod index;
mod keys;
pub mod layout;
mod lock;
mod manifest;
mod new_index;
pub mod object;
mod pack;
mod point_retention;
mod prune;
mod read;
mod repair_index;
mod repo;
mod resolve;
mod restore;
mod restore_inplace;
#[cfg(test)]
mod restore_inplace_tests;
#[cfg(test)]
mod restore_tests;
mod segment;
mod selector;
mod snapshot;
pub mod spool;
pub mod sqlite;
pub mod time;
mod timeline;
#[cfg(test)]
mod timeline_tests;
mod verify_live;
mod wal;
mod walk;
pub mod watch;
pub mod watch_status;

pub use check::{
    Affected, CheckOptions, CheckRecord, CheckReport, ClockAhead, LastChecks, Problem,
};
pub use chunklist::ChunkRef;
pub use config::{
    ChunkingParams, RepoConfig, DICT_FEATURE, FORMAT_VERSION, OLDEST_FORMAT_VERSION,
    TIMELINE_FEATURE,
};
pub use crypto::{KdfParams, KeyInfo, Passphrase, SEAL_OVERHEAD};
pub use dating::{Ahead, Dating};
pub use error::{Error, FailedFile, Kind, Result, SourceProblem};
pub use forget::{
    plan as plan_forget, plan_scoped, Decision, ForgetPlan, GroupPlan, KeepPolicy, PolicyScope,
    PRE_REPAIR_TAG, PRE_RESTORE_TAG,
};
pub use id::{DbChecksum, Id};
pub use index::{BlobLocation, MasterIndex};
pub use layout::{pack_key, CONFIG_KEY, KEYS_PREFIX};
pub use lock::{FoundLock, LockInfo, LockKind, LockState, ReadLock, RepoLock};
pub use manifest::{
    CaptureMethod, ChunkListRef, Chunking, DictUse, FileEntry, FileKind, Manifest, SnapshotStats,
    SqliteFacts,
};
pub use pack::BlobCodec;
pub use pack::BlobKind;
pub use point_retention::{PointDecision, PointPlan, PointsApplied, SegmentPlan};
pub use prune::{PruneOptions, PrunePlan, PruneReport, DEFAULT_MIN_PACK_AGE};
pub use read::{FileReader, ProvenReader};
pub use repair_index::{RepairIndexPlan, RepairIndexReport, UnreadablePack};
pub use repo::{EncryptionOptions, InitOptions, Repository};
pub use restore::{
    remove_sqlite_side_files, DeltaReport, RestoreItem, RestoreOptions, RestoreReport,
};
pub use restore_inplace::{
    check_live_path, check_writable, choose_file, InPlaceOptions, InPlaceReport,
};
pub use segment::{Point, Segment};
pub use selector::{group_key, path_matches, Selector, Snapshot};
pub use snapback_storage as storage;
pub use snapshot::{SnapshotOptions, SnapshotReport, DEFAULT_BUSY_TIMEOUT};
pub use time::{is_future, FUTURE_TOLERANCE};
pub use timeline::SegmentView;
pub use verify_live::{VerifyLiveOptions, VerifyLiveReport, DEFAULT_VERIFY_RATE};
pub use walk::PointWalk;

/// Progress of long work, for a progress bar. Every method has a no-op
/// default.
pub trait Progress: Send + Sync {
    fn set_total(&self, _bytes: u64) {}
    fn inc(&self, _bytes: u64) {}
    fn set_message(&self, _msg: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
