//! snapback-mount: every snapshot of a repository as a read-only file
//! system (FUSE), with databases that open as databases.
//!
//! `vfs` is the file system itself, with no FUSE in it (testable without a
//! mount); `fuse` is the thin fuser adapter; `daemon` runs a mount (signals,
//! systemd notifications and watchdog, unmount). docs/mount.md states the
//! semantics.

mod cache;
mod daemon;
mod error;
mod fetch;
mod fuse;
mod notify;
pub mod vfs;

pub use daemon::{check_mountpoint, is_mount_point, run, unmount, MountOptions};
pub use error::{MountError, VfsError};
pub use fetch::FetchStats;
pub use fuse::errno;
pub use notify::{notify, watchdog_interval};
pub use vfs::{Vfs, VfsOptions, View};
