//! Errors of the repair engine.
//!
//! The rules, as in the core: every error says what went wrong, with which
//! database, table, column or snapshot, and, where an operator can act, what
//! to do. Errors raised while validating input are raised before anything
//! is written; the messages say so where it matters.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] snapback_core::Error),

    #[error("{path}: {message}: {source}")]
    Sqlite {
        path: PathBuf,
        message: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{path}: {message}: {source}")]
    Io {
        path: PathBuf,
        message: String,
        #[source]
        source: std::io::Error,
    },

    /// Bad input found before anything was written.
    #[error("{0}")]
    Input(String),

    /// The restore script does not parse or is invalid.
    #[error("restore script {path}: {message}")]
    Script { path: PathBuf, message: String },

    #[error("{0}")]
    NoKey(String),

    #[error("the live database {path} is busy: {message}. Nothing is left half-applied; run the same command again to resume.")]
    Busy { path: PathBuf, message: String },

    #[error("another repair is running on {path} (lock file {lock}); wait for it to finish, then run this one again")]
    Locked { path: PathBuf, lock: PathBuf },

    #[error("audit log: {0}")]
    Audit(String),

    #[error("{0}")]
    Conflict(String),

    /// A repair stopped on an error after it had started writing; what it
    /// committed is recorded, and the message says how to go on.
    #[error("{0}")]
    Stopped(String),
}

impl Error {
    pub fn sqlite(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        source: rusqlite::Error,
    ) -> Error {
        Error::Sqlite {
            path: path.into(),
            message: message.into(),
            source,
        }
    }

    pub fn io(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            path: path.into(),
            message: message.into(),
            source,
        }
    }
}

/// True when a SQLite error is SQLITE_BUSY or SQLITE_LOCKED.
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
