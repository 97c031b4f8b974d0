//! Errors of the core.
//!
//! The rules: every error says what went wrong, with which object, file or
//! snapshot, and where an operator can do something about it, what to do.
//! Nothing here is printed with a backtrace; the CLI prints the cause chain.

use std::path::PathBuf;

use snapback_storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("no snapback repository at {location} (there is no 'config' object). Create one with `snapback init`, or check --repo / SNAPBACK_REPO.")]
    NotARepository { location: String },

    #[error("a snapback repository already exists at {location}; nothing was changed")]
    AlreadyInitialised { location: String },

    #[error("the repository uses format version {found}, but this snapback understands up to version {supported}. Upgrade snapback; nothing was changed.")]
    UnsupportedVersion { found: u32, supported: u32 },

    #[error("the repository uses the format feature {feature:?}, which this snapback does not know. Upgrade snapback; nothing was changed.")]
    UnsupportedFeature { feature: String },

    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },

    #[error("{0}")]
    Selector(String),

    #[error("{path}: {message}: {source}")]
    Io {
        path: PathBuf,
        message: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {message}: {source}")]
    Sqlite {
        path: PathBuf,
        message: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },

    /// A database that cannot be captured as it is, said in plain words
    /// (locked, a hot journal, not a database).
    #[error("{path}: {message}")]
    Source {
        path: PathBuf,
        problem: crate::sqlite::SourceProblem,
        message: String,
    },

    #[error("{0}")]
    Invalid(String),

    /// Every file of a snapshot failed (each named, with why); nothing
    /// was committed.
    #[error("no file could be snapshotted, so nothing was committed: {}", failed.iter().map(|f| format!("{}: {}", f.path, f.reason)).collect::<Vec<_>>().join("; "))]
    NothingCaptured {
        failed: Vec<crate::snapshot::FailedFile>,
    },

    #[error("{0}")]
    Verification(String),

    #[error("{0}")]
    Locked(String),

    /// A command that writes found the repository read-only (its lock
    /// could not be written).
    #[error("the repository {location} cannot be written ({source}); `{command}` writes to it, so nothing was done. Reading commands (restore, check, snapshots, diff, mount) work from a read-only repository; to {command}, make it writable (remount the disk read-write, fix the permissions, or use a key that may write)")]
    ReadOnlyRepository {
        location: String,
        command: String,
        #[source]
        source: StoreError,
    },

    /// The repository is encrypted and no passphrase was given, or none of
    /// its keys opens with the one given.
    #[error("{0}")]
    Key(String),
}

impl Error {
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

    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
