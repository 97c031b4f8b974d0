//! Errors of the mount.
//!
//! Each error says what went wrong and with which object. The FUSE adapter
//! turns them into errnos in exactly one place (`fuse::errno`); anything that
//! could mean wrong bytes (a failed verification, a backend error, a timeout)
//! becomes EIO there, never partial or unverified data.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum VfsError {
    #[error("no such entry")]
    NotFound,

    #[error("not a directory")]
    NotDir,

    #[error("is a directory")]
    IsDir,

    #[error("not a symbolic link")]
    NotSymlink,

    #[error("the snapback mount is read-only")]
    ReadOnly,

    #[error("inode {0} no longer exists (its snapshot was removed)")]
    Stale(u64),

    #[error("unknown file handle {0}")]
    BadHandle(u64),

    #[error("reading {what} timed out after {secs:.1}s")]
    TimedOut { what: String, secs: f64 },

    /// The message says the cause; it is not also the `source()` (each
    /// cause is said once).
    #[error("reading {what} failed: {cause}")]
    Repo {
        what: String,
        cause: std::sync::Arc<snapback_core::Error>,
    },

    /// A read of a snapshot whose manifest is gone (forgotten, then its
    /// data pruned, while it was mounted): not damage.
    #[error("snapshot {snapshot} was forgotten/pruned while mounted: its data is gone from the repository (not damage; `snapback snapshots` lists what is left)")]
    SnapshotGone { snapshot: String },

    #[error("{0}")]
    Internal(String),
}

impl VfsError {
    pub(crate) fn repo(what: impl Into<String>, e: snapback_core::Error) -> VfsError {
        VfsError::Repo {
            what: what.into(),
            cause: std::sync::Arc::new(e),
        }
    }

    /// True when the data the error is about is missing from the store
    /// (a pack not found, a chunk in no index), as after a prune.
    pub fn is_missing_data(&self) -> bool {
        match self {
            VfsError::Repo { cause, .. } => match &**cause {
                snapback_core::Error::Store(e) => e.is_not_found(),
                snapback_core::Error::Corrupt { .. } => true,
                _ => false,
            },
            _ => false,
        }
    }

    /// True for errors that mean "the data could not be served": the caller
    /// sees EIO.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            VfsError::TimedOut { .. }
                | VfsError::Repo { .. }
                | VfsError::SnapshotGone { .. }
                | VfsError::Internal(_)
        )
    }
}

/// Errors of setting up and running a mount.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{path}: {message}: {cause}")]
    Io {
        path: PathBuf,
        message: String,
        cause: std::io::Error,
    },

    #[error("refusing to mount at {mountpoint}: {reason}")]
    BadMountpoint { mountpoint: PathBuf, reason: String },

    #[error(transparent)]
    Repo(#[from] snapback_core::Error),

    #[error("cannot mount at {mountpoint}: {cause}. Check that fuse3 is installed (fusermount3), that /dev/fuse exists, and that the mount point is an empty directory that is not already mounted.")]
    Mount {
        mountpoint: PathBuf,
        cause: std::io::Error,
    },

    #[error("cannot unmount {mountpoint}: {message}")]
    Unmount {
        mountpoint: PathBuf,
        message: String,
    },
}

impl MountError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        cause: std::io::Error,
    ) -> MountError {
        MountError::Io {
            path: path.into(),
            message: message.into(),
            cause,
        }
    }

    /// What kind of failure this is (it decides the CLI's exit code).
    pub fn kind(&self) -> snapback_core::Kind {
        use snapback_core::Kind;
        match self {
            MountError::Io { .. } | MountError::Mount { .. } | MountError::Unmount { .. } => {
                Kind::Io
            }
            MountError::BadMountpoint { .. } => Kind::BadInput,
            MountError::Repo(e) => e.kind(),
        }
    }
}
