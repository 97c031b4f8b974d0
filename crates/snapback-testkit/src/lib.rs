//! The one test kit of the workspace (a dev-dependency only, never
//! published): what the integration tests of every crate share.
//!
//! - [`bin`]: the `snapback` binary of this build, found from the test
//!   executable's own path (never a hard-coded `target/debug`).
//! - [`cli`]: a scratch directory with a repository ([`Env`]), commands run
//!   with the test process's settings kept out, bounded runs ([`Out`]).
//! - [`s3`]: the local S3 server (scripts/s3-server.sh), started once per
//!   test process unless the environment names one.
//! - [`db`]: SQLite databases with known rows, and their integrity check.
//! - [`mount`]: real FUSE mounts behind a guard that always unmounts.
//! - [`heartbeat`]: an HTTP endpoint on 127.0.0.1 that records its pings.
//! - [`data`]: seeded bytes and numbers, the same on every run.
//! - [`watch`]: a watcher's status reports and spool files, and waiting
//!   for a status (a watcher itself runs under [`KillOnDrop`], stopped by
//!   [`KillOnDrop::stop_with`]).
//! - [`fault`]: the fault-injecting store (`snapback_storage::fault`):
//!   fail the Nth put/get/list/delete, return truncated or flipped bytes,
//!   drop puts, delay.
//!
//! Every helper panics with a message saying what is missing or what went
//! wrong: a test that cannot set itself up fails, it never skips.

pub mod cli;
pub mod data;
pub mod db;
pub mod heartbeat;
pub mod mount;
pub mod s3;
pub mod watch;

mod binary;

pub use snapback_storage::fault;

pub use binary::{bin, vfs_extension, workspace};
pub use cli::{
    command, flip_byte_in_largest_pack, hostname, init_encrypted, run_bounded, signal, spawn,
    stderr, stdout, wait_out, KillOnDrop, CHEAP_KDF, ISOLATED_VARS, PASSWORD_VARS,
};
pub use cli::{Env, Out};
pub use data::{pattern, random_bytes, Rng};
pub use db::integrity;
