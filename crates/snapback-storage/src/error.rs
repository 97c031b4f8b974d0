use std::fmt;

/// What kind of failure a [`StoreError`] is. The retry layer reads
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
    /// Credentials or permissions refuse the operation.
    PermissionDenied,
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
