//! Errors of the repair engine.
//!
//! The rules, as in the core: every error says what went wrong, with which
//! database, table, column or snapshot, and, where an operator can act, what
//! to do. Errors raised while validating input are raised before anything
//! is written; the messages say so where it matters.

use std::path::PathBuf;

use snapback_core::Kind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] snapback_core::Error),

    /// Opening a point in place (the snapback VFS).
    #[error(transparent)]
    Vfs(Box<snapback_vfs::Error>),

    /// The message says the cause; it is not also the `source()` (see
    /// snapback-core's error module: each cause is said once).
    #[error("{path}: {message}: {cause}")]
    Sqlite {
        path: PathBuf,
        message: String,
        cause: rusqlite::Error,
    },

    #[error("{path}: {message}: {cause}")]
    Io {
        path: PathBuf,
        message: String,
        cause: std::io::Error,
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
    /// What kind of failure this is (it decides the CLI's exit code).
    pub fn kind(&self) -> Kind {
        match self {
            Error::Core(e) => e.kind(),
            Error::Vfs(e) => e.kind(),
            Error::Sqlite { cause, .. } => Kind::of_sqlite(cause),
            Error::Io { .. } => Kind::Io,
            Error::Input(_) | Error::Script { .. } | Error::NoKey(_) | Error::Conflict(_) => {
                Kind::BadInput
            }
            Error::Busy { .. } | Error::Locked { .. } => Kind::Locked,
            Error::Audit(_) => Kind::Damaged,
            Error::Stopped(_) => Kind::Io,
        }
    }

    pub fn sqlite(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        cause: rusqlite::Error,
    ) -> Error {
        Error::Sqlite {
            path: path.into(),
            message: message.into(),
            cause,
        }
    }

    pub fn io(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        cause: std::io::Error,
    ) -> Error {
        Error::Io {
            path: path.into(),
            message: message.into(),
            cause,
        }
    }
}

impl From<snapback_vfs::Error> for Error {
    fn from(e: snapback_vfs::Error) -> Error {
        Error::Vfs(Box::new(e))
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
