//! The bottom layer of snapback: a flat key/value object store.
//!
//! Everything a repository holds (config, packs, indexes, manifests, locks,
//! audit entries) is an object under a `/`-separated key. Every backend (the
//! local directory store here, the S3 store in `snapback-s3`) implements
//! [`Store`], and the generic [`conformance`] suite checks that they keep the
//! contract written on the trait. This crate knows nothing of the repository
//! format above it.

mod error;
mod local;
mod retry;

pub mod conformance;
#[cfg(any(test, feature = "fault"))]
pub mod fault;

pub use error::{ErrorKind, StoreError};
pub use local::LocalStore;
pub use retry::RetryPolicy;

/// Result of [`Store::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist; it is now durably stored with the given bytes.
    Created,
    /// An object already existed under the key; nothing was written. The
    /// caller decides whether the existing object is acceptable (for
    /// content-addressed keys it verifies size or content).
    AlreadyExists,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When the store wrote the object, by the store's own clock (the file's
    /// mtime; S3's `LastModified`), never by the writer's. `None` where the
    /// backend does not say.
    pub modified: Option<std::time::SystemTime>,
}

/// Counters of requests and bytes, by kind, for cost reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    pub puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub lists: u64,
    pub deletes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A flat object store.
///
/// Contract, for every implementation:
/// - Keys are `/`-separated, made of `[A-Za-z0-9._-]` segments, never empty,
///   never `.` or `..`, and never start with `/` ([`validate_key`]).
/// - Every method is fallible and safe to retry: calling it again after an
///   error (even one that hid a success, such as a timeout after the server
///   stored the object) converges to the same state.
/// - `put_if_absent` returns only once the object is durably stored (local:
///   fsync of the file and its directory; S3: a verified 200 response). It
///   never replaces an existing object.
/// - `get` and `get_range` return exactly the stored bytes or an error; a
///   short read is an error, never a truncated `Ok`.
/// - `list` returns every object whose key starts with `prefix`, in no
///   particular order, with its size and, where the backend records one,
///   the time the store wrote it. Objects still being written are not
///   listed.
/// - `delete` is idempotent: deleting a missing key is `Ok`.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages. Never contains credentials.
    fn location(&self) -> String;

    /// Stores `data` under `key` unless an object with that key exists.
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError>;

    /// Reads a whole object. A missing object is [`ErrorKind::NotFound`].
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;

    /// Reads `len` bytes at `offset`. Reading past the end is an error.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;

    /// The size of an object, or `None` when it does not exist.
    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// Every object whose key starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Removes an object; a missing object is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Requests and bytes so far, where the backend counts them.
    fn request_stats(&self) -> RequestStats {
        RequestStats::default()
    }

    /// How this backend is best read and written ([`Tuning`]). A store
    /// that wraps another (encryption, fault injection) passes its inner
    /// store's on whole.
    fn tuning(&self) -> Tuning {
        Tuning::default()
    }
}

/// How a backend is best read and written: the one set of hints a store
/// gives, so that a wrapping store passes them on in one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// How many reads at once suit this backend: restore runs this many
    /// range reads in parallel. A local disk gains nothing past the cores
    /// (the default); a network store hides each request's latency behind
    /// the others.
    pub read_parallelism: usize,
    /// How many writes of large objects at once suit this backend: a
    /// snapshot stores its packs on at most this many threads, each
    /// holding the pack it writes (16 MiB). By default as many as reads; a
    /// local disk takes one, as it writes a pack several times faster than
    /// a snapshot fills one.
    pub write_parallelism: usize,
    /// How many bytes a reader may fetch ahead of what it has used. 0 (the
    /// default) where a read costs only the reader's own work (a local
    /// disk: reading ahead would only move that work earlier). A network
    /// store, where every request waits on the other side and one stream
    /// is slower than several, is read fastest with large reads in flight
    /// ahead of their use: a full restore then fetches its range reads
    /// (of up to `read_ahead_range` bytes) up to this many bytes ahead of
    /// the window it fills, `read_parallelism` at a time.
    pub read_ahead: u64,
    /// The longest range read worth making of this store when reading
    /// ahead (see `read_ahead`): neighbouring blobs are read together up
    /// to this many bytes. 1 MiB by default.
    pub read_ahead_range: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Tuning {
            read_parallelism: cores,
            write_parallelism: cores,
            read_ahead: 0,
            read_ahead_range: 1 << 20,
        }
    }
}

/// Checks a key against the contract on [`Store`].
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = |why: &str| {
        Err(StoreError::new(
            ErrorKind::InvalidKey,
            key,
            format!("invalid object key: {why}"),
        ))
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return bad("leading or trailing '/'");
    }
    for seg in key.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, '.' or '..' segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return bad("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
        }
    }
    Ok(())
}

impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        (**self).put_if_absent(key, data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        (**self).get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        (**self).get_range(key, offset, len)
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        (**self).stat(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key)
    }
    fn request_stats(&self) -> RequestStats {
        (**self).request_stats()
    }
    fn tuning(&self) -> Tuning {
        (**self).tuning()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for good in ["config", "data/ab/abcdef", "snapshots/x.json", "a-b_c"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "a//b", "a/../b", "..", "a/", "sp ace", "a\\b"] {
            let e = validate_key(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidKey);
        }
    }
}
