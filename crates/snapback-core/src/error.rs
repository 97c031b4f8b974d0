//! Errors of the core.
//!
//! The rules: every error says what went wrong, with which object, file or
//! snapshot, and where an operator can do something about it, what to do.
//! Nothing here is printed with a backtrace; the CLI prints the cause chain.
//!
//! Each cause is said once: a variant whose message includes a lower-level
//! error (`"{path}: {message}: {cause}"`) keeps it in a field named `cause`,
//! not as its `source()`, so that neither a log line (which shows only the
//! message) nor the CLI's cause chain (which shows every `source()`) loses
//! or repeats it.
//!
//! Every error has a [`Kind`], which the CLI turns into its exit code.

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

    #[error("{path}: {message}: {cause}")]
    Io {
        path: PathBuf,
        message: String,
        cause: std::io::Error,
    },

    #[error("{path}: {message}: {cause}")]
    Sqlite {
        path: PathBuf,
        message: String,
        cause: rusqlite::Error,
    },

    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },

    /// A database that cannot be captured as it is, said in plain words
    /// (locked, a hot journal, not a database).
    #[error("{path}: {message}")]
    Source {
        path: PathBuf,
        problem: SourceProblem,
        message: String,
    },

    /// Input that cannot be used, the user's to fix: an argument, a
    /// setting, a selector, a destination, a policy. The message says what
    /// is wrong and what to do. (A failure of snapback itself is
    /// [`Error::Internal`].)
    #[error("{0}")]
    Invalid(String),

    /// A failure of snapback itself or of what it runs on, never of the
    /// user's input or data: a broken invariant, a thread that panicked, a
    /// failed random number generator, data snapback built that fails its
    /// own check. Build it with [`Error::internal`].
    #[error("{0} (an internal error: a bug in snapback or a failure of its environment, not a problem with your input; please report it)")]
    Internal(String),

    /// Every file of a snapshot failed (each named, with why); nothing
    /// was committed.
    #[error("no file could be snapshotted, so nothing was committed: {}", failed.iter().map(|f| format!("{}: {}", f.path, f.reason)).collect::<Vec<_>>().join("; "))]
    NothingCaptured { failed: Vec<FailedFile> },

    #[error("{0}")]
    Verification(String),

    #[error("{0}")]
    Locked(String),

    /// A command that writes found the repository read-only (its lock
    /// could not be written).
    #[error("the repository {location} cannot be written ({cause}); `{command}` writes to it, so nothing was done. Reading commands (restore, check, snapshots, diff, mount) work from a read-only repository; to {command}, make it writable (remount the disk read-write, fix the permissions, or use a key that may write)")]
    ReadOnlyRepository {
        location: String,
        command: String,
        cause: StoreError,
    },

    /// The repository is encrypted and no passphrase could be had (none
    /// given, no terminal to ask on, a password command that failed).
    #[error("{0}")]
    Key(String),

    /// The repository is encrypted and none of its keys opens with the
    /// passphrase given.
    #[error("{0}")]
    WrongPassphrase(String),

    /// What failed, then why: the kind is the cause's (a pre-restore
    /// snapshot refused by a held lock is `locked`, by the store `io`).
    /// Build it with [`Error::context`].
    #[error("{message}: {cause}")]
    Context { message: String, cause: Box<Error> },

    /// `restore --delta` failed after it began writing into DEST: DEST is
    /// partly restored. The kind is the cause's.
    #[error("{cause}; {} is now partly restored: run the same command again to finish it (it rewrites only what still differs)", dest.display())]
    PartlyRestored { dest: PathBuf, cause: Box<Error> },
}

/// What kind of failure an error is: it decides the CLI's exit code
/// (docs/scripting.md) and is the `kind` of its `--json` error object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A flag or value the command cannot take (the CLI's usage errors).
    Usage,
    /// Input that cannot be used: a path that is not a database, a
    /// selector that matches nothing, an invalid setting, no passphrase.
    BadInput,
    /// No repository at the location given.
    NoRepository,
    /// The repository, or the live database, is locked by someone else.
    Locked,
    /// None of the repository's keys opens with the passphrase given.
    WrongPassphrase,
    /// Stored data is damaged or missing (a failed verification).
    Damaged,
    /// Reading or writing failed: a file, the store, the network.
    Io,
    /// A bug or a broken invariant of snapback itself.
    Internal,
}

impl Kind {
    /// The kind of a store error.
    pub fn of_store(e: &StoreError) -> Kind {
        use snapback_storage::ErrorKind as S;
        match e.kind() {
            S::NotFound | S::Corrupt => Kind::Damaged,
            S::InvalidKey | S::AlreadyExists => Kind::Internal,
            S::PermissionDenied | S::ReadOnly | S::Transient | S::NoSpace | S::Other => Kind::Io,
        }
    }

    /// The kind of a SQLite error on a database snapback reads or writes.
    pub fn of_sqlite(e: &rusqlite::Error) -> Kind {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => Kind::Locked,
            Some(C::NotADatabase) => Kind::BadInput,
            Some(C::DatabaseCorrupt) => Kind::Damaged,
            None => Kind::BadInput,
            Some(_) => Kind::Io,
        }
    }

    /// The name used in `--json` error objects and in docs/scripting.md.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::BadInput => "bad_input",
            Kind::NoRepository => "no_repository",
            Kind::Locked => "locked",
            Kind::WrongPassphrase => "wrong_passphrase",
            Kind::Damaged => "damaged",
            Kind::Io => "io",
            Kind::Internal => "internal",
        }
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Store(e) => Kind::of_store(e),
            Error::NotARepository { .. } => Kind::NoRepository,
            Error::AlreadyInitialised { .. }
            | Error::UnsupportedVersion { .. }
            | Error::UnsupportedFeature { .. }
            | Error::Selector(_)
            | Error::Input { .. }
            | Error::Invalid(_)
            | Error::Key(_) => Kind::BadInput,
            Error::Internal(_) => Kind::Internal,
            Error::Corrupt { .. } | Error::Verification(_) => Kind::Damaged,
            Error::Io { .. } => Kind::Io,
            Error::Sqlite { cause, .. } => Kind::of_sqlite(cause),
            Error::Locked(_) => Kind::Locked,
            Error::Source { problem, .. } => match problem {
                SourceProblem::Locked => Kind::Locked,
                SourceProblem::HotJournal | SourceProblem::NotADatabase => Kind::BadInput,
                SourceProblem::Unreadable => Kind::Io,
            },
            // Each file failed for its own reason: the kind of all of them
            // when they agree (every one locked: run again later).
            Error::NothingCaptured { failed } => {
                let kind = |f: &FailedFile| match f.problem {
                    SourceProblem::Locked => Kind::Locked,
                    SourceProblem::Unreadable => Kind::Io,
                    _ => Kind::BadInput,
                };
                match failed.first().map(kind) {
                    Some(k) if failed.iter().all(|f| kind(f) == k) => k,
                    _ => Kind::BadInput,
                }
            }
            Error::ReadOnlyRepository { .. } => Kind::Io,
            Error::WrongPassphrase(_) => Kind::WrongPassphrase,
            Error::PartlyRestored { cause, .. } | Error::Context { cause, .. } => cause.kind(),
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

    /// `message`, caused by `cause`, whose kind it keeps.
    pub fn context(message: impl Into<String>, cause: Error) -> Error {
        Error::Context {
            message: message.into(),
            cause: Box::new(cause),
        }
    }

    /// A failure of snapback itself (see [`Error::Internal`]).
    pub fn internal(what: impl Into<String>) -> Error {
        Error::Internal(what.into())
    }

    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a database could not be captured, for the snapshot's list of the
/// files it left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceProblem {
    /// Another process held a lock on it for longer than the busy timeout.
    Locked,
    /// A hot journal (left by a writer that died mid-transaction) must be
    /// rolled back first, which a read-only reader may not do.
    HotJournal,
    /// It starts with the SQLite header, but is not a valid database.
    NotADatabase,
    /// It could not be read (vanished, no permission, an I/O error).
    Unreadable,
}

/// A file a snapshot left out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedFile {
    pub path: String,
    pub problem: SourceProblem,
    /// Why, in plain words, and what to do.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_with_a_cause_say_it_once() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = io.to_string();
        let e = Error::io("/srv/a.db", "cannot read", io);
        assert!(
            e.to_string().contains(&text),
            "the message says the cause: {e}"
        );
        assert!(e.source().is_none(), "and the chain does not repeat it");
        let sq = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let e = Error::Sqlite {
            path: "/srv/a.db".into(),
            message: "cannot open".into(),
            cause: sq,
        };
        assert!(e.source().is_none());
        assert_eq!(e.kind(), Kind::Locked, "a busy database is a held lock");
    }

    #[test]
    fn internal_errors_have_their_own_kind_and_say_so() {
        let e = Error::internal("the upload threads stopped");
        assert_eq!(e.kind(), Kind::Internal);
        assert_eq!(Kind::Internal.name(), "internal");
        let text = e.to_string();
        assert!(text.starts_with("the upload threads stopped"), "{text}");
        assert!(
            text.contains("a bug in snapback or a failure of its environment"),
            "{text}"
        );
        // Context keeps its cause's kind, and says the cause once.
        let e = Error::context(
            "the pre-restore snapshot failed",
            Error::Locked("locked by prune".into()),
        );
        assert_eq!(e.kind(), Kind::Locked);
        assert_eq!(
            e.to_string(),
            "the pre-restore snapshot failed: locked by prune"
        );
        assert!(std::error::Error::source(&e).is_none());
        // Bad input stays bad input, and says only what is wrong.
        let e = Error::Invalid("no keep rule given".into());
        assert_eq!(e.kind(), Kind::BadInput);
        assert_eq!(e.to_string(), "no keep rule given");
    }
}
