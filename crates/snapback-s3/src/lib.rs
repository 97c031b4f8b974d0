//! The S3 backend of snapback: a [`snapback_storage::Store`] on AWS S3 or
//! any S3-compatible server (MinIO, Ceph RGW, Garage, Cloudflare R2, s3s-fs).
//!
//! # Opening a repository
//!
//! ```no_run
//! use snapback_s3::{S3Config, S3Store};
//! use snapback_storage::Store;
//!
//! # fn main() -> Result<(), snapback_storage::StoreError> {
//! // `--repo s3://BUCKET/PREFIX [--s3-endpoint URL] [--s3-path-style]`
//! let mut cfg = S3Config::from_url("s3://my-bucket/backups/db1")?;
//! cfg.endpoint = Some("http://127.0.0.1:9000".into()); // --s3-endpoint
//! cfg.path_style = true; // --s3-path-style
//! let store = S3Store::open(cfg)?;
//! println!("repository at {}", store.location());
//! # Ok(()) }
//! ```
//!
//! - Credentials: the standard AWS chain (environment variables, shared
//!   profile, web identity, ECS, EC2 instance role), or
//!   [`S3Config::credentials`].
//! - Endpoint: [`S3Config::endpoint`], else `AWS_ENDPOINT_URL`, else AWS.
//! - Region: [`S3Config::region`], else `AWS_REGION` / the profile, else
//!   `us-east-1`.
//! - [`S3Store::open`] sends no request; [`S3Store::check_bucket`] does one.
//!
//! # What the store guarantees
//!
//! Every upload carries the SHA-256 of its body (`x-amz-checksum-sha256`), so
//! the server rejects a body damaged in transit; the echoed checksum is
//! compared. Objects above [`S3Config::multipart_threshold`] go up in parts,
//! each with its own SHA-256, and a failed multipart upload is aborted.
//! `put_if_absent` is a conditional PUT (`If-None-Match: *`). Reads check the
//! body length (and the SHA-256 when the store kept it). Failures are retried
//! with exponential backoff and jitter inside the store, each attempt and
//! each operation under a time limit. See `docs/s3.md`.
//!
//! The store is synchronous (tokio stays inside this crate), `Send + Sync`,
//! and counts requests and bytes in [`Store::request_stats`].

mod config;
mod errors;
mod store;

#[cfg(feature = "fault-proxy")]
pub mod testing;

pub use config::{parse_repo_url, parse_s3_url, RepoUrl, S3Config, S3Credentials, Timeouts};
pub use store::S3Store;
