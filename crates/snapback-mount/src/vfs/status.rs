//! `.snapback-status.json`: the counters and state of the mount.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{Vfs, View};

/// The document `.snapback-status.json` holds. Its fields are declared in
/// alphabetical order: the file was first written from a `json!()` value,
/// whose keys serde_json sorts, and scripts may rely on its bytes (the test
/// `status_json_keys_stay_in_alphabetical_order` pins it).
#[derive(Debug, Serialize)]
pub(crate) struct StatusDoc {
    pub chunk_disk_hits: u64,
    pub chunk_fetch_errors: u64,
    pub chunk_fetched_bytes: u64,
    pub chunk_fetches: u64,
    pub chunk_mem_hits: u64,
    pub chunk_prefetches: u64,
    pub chunk_timeouts: u64,
    pub chunks_fetched: u64,
    pub disk_cache_bytes: Option<u64>,
    pub disk_cache_corrupt_entries: Option<u64>,
    pub mem_cache_bytes: u64,
    pub opens: u64,
    pub read_bytes: u64,
    pub read_errors: u64,
    pub reads: u64,
    pub refresh_age_secs: u64,
    pub refresh_error: Option<String>,
    pub repository: String,
    pub snapshots: usize,
    /// "all", or the id of the one snapshot mounted.
    pub view: String,
}

/// A document of the mount as its file holds it: pretty JSON and a newline.
pub(crate) fn json_file<T: Serialize>(doc: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(doc).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

impl Vfs {
    /// The content of `.snapback-status.json`.
    pub fn status_json(&self) -> Vec<u8> {
        let (age, err, n) = self
            .listing
            .state
            .lock()
            .map(|s| (s.at.elapsed().as_secs(), s.last_error.clone(), s.snapshots))
            .unwrap_or((0, Some("lock poisoned".into()), 0));
        let f = &self.fetcher.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json_file(&StatusDoc {
            repository: self.repo().store().location(),
            view: match &self.view {
                View::All => "all".to_string(),
                View::One(s) => s.id.to_hex(),
            },
            snapshots: n,
            refresh_age_secs: age,
            refresh_error: err,
            reads: l(&self.stats.reads),
            read_bytes: l(&self.stats.read_bytes),
            read_errors: l(&self.stats.read_errors),
            opens: l(&self.stats.opens),
            chunk_mem_hits: l(&f.mem_hits),
            chunk_disk_hits: l(&f.disk_hits),
            chunk_fetches: l(&f.fetches),
            chunks_fetched: l(&f.chunks_fetched),
            chunk_fetched_bytes: l(&f.fetched_bytes),
            chunk_fetch_errors: l(&f.fetch_errors),
            chunk_timeouts: l(&f.timeouts),
            chunk_prefetches: l(&f.prefetches),
            mem_cache_bytes: self.fetcher.mem_bytes(),
            disk_cache_bytes: self.fetcher.disk_bytes(),
            disk_cache_corrupt_entries: self.fetcher.disk_corrupt_entries(),
        })
    }

    /// "12 snapshots" or "snapshot abcd1234", for the systemd status line.
    pub fn status_summary(&self) -> String {
        match &self.view {
            View::One(s) => format!("snapshot {}", s.id.short()),
            View::All => format!(
                "{} snapshot(s)",
                self.listing.state.lock().map(|s| s.snapshots).unwrap_or(0)
            ),
        }
    }
}
