use std::fmt;

/// What kind of failure a [`StoreError`] is. A retry loop (the S3 store's) reads
/// [`ErrorKind::is_retryable`]; everything above decides on the kind, never
/// on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// A conditional write found an object already there.
    AlreadyExists,
    /// The key breaks the key rules.
    InvalidKey,
    /// Credentials or permissions refuse the operation (EACCES, EPERM, an
    /// S3 403 such as a read-only key's AccessDenied on PUT).
    PermissionDenied,
    /// The store is on a read-only file system (EROFS: a read-only mount,
    /// a write-protected backup disk).
    ReadOnly,
    /// A failure that may go away on retry: timeouts, 5xx, throttling,
    /// dropped connections, interrupted I/O.
    Transient,
    /// The store answered with something that breaks its contract (a short
    /// body, a wrong size, a checksum mismatch).
    Corrupt,
    /// The device is full or a quota is exhausted.
    NoSpace,
    /// Anything else; not retried.
    Other,
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Corrupt)
    }

    /// True when the store refuses the operation because this process may
    /// not write there ([`ErrorKind::ReadOnly`], [`ErrorKind::PermissionDenied`]).
    /// Reading commands go on without the lock they could not write.
    pub fn refuses_writes(self) -> bool {
        matches!(self, ErrorKind::ReadOnly | ErrorKind::PermissionDenied)
    }
}

/// An error from a [`crate::Store`]: its kind, the key it concerns, and a
/// message that says what happened.
#[derive(Debug, thiserror::Error)]
pub struct StoreError {
    kind: ErrorKind,
    key: String,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    pub fn new(kind: ErrorKind, key: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            key: key.into(),
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Classifies an I/O error on `key`.
    pub fn from_io(key: &str, what: &str, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match err.kind() {
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::ReadOnlyFilesystem => ErrorKind::ReadOnly,
            K::Interrupted | K::TimedOut | K::WouldBlock => ErrorKind::Transient,
            K::StorageFull | K::QuotaExceeded => ErrorKind::NoSpace,
            K::UnexpectedEof => ErrorKind::Corrupt,
            _ => ErrorKind::Other,
        };
        StoreError::new(kind, key, format!("{what}: {err}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "object '{}': {}", self.key, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_file_system_and_permission_denied_refuse_writes() {
        // Linux errno values: EROFS 30, EACCES 13, EPERM 1.
        let erofs = StoreError::from_io(
            "locks/x",
            "cannot write object",
            std::io::Error::from_raw_os_error(30),
        );
        assert_eq!(erofs.kind(), ErrorKind::ReadOnly, "{erofs}");
        for errno in [13, 1] {
            let e = StoreError::from_io(
                "locks/x",
                "cannot write object",
                std::io::Error::from_raw_os_error(errno),
            );
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            assert!(e.kind().refuses_writes());
        }
        assert!(erofs.kind().refuses_writes());
        assert!(!ErrorKind::NoSpace.refuses_writes() && !ErrorKind::Other.refuses_writes());
        assert!(
            !ErrorKind::ReadOnly.is_retryable(),
            "retrying a read-only disk cannot help"
        );
    }
}
