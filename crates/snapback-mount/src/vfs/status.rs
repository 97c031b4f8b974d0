//! `.snapback-status.json`: the counters and state of the mount.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::{Vfs, View};

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
        let v = json!({
            "repository": self.repo().store().location(),
            "view": match &self.view { View::All => "all".to_string(), View::One(s) => s.id.to_hex() },
            "snapshots": n,
            "refresh_age_secs": age,
            "refresh_error": err,
            "reads": l(&self.stats.reads),
            "read_bytes": l(&self.stats.read_bytes),
            "read_errors": l(&self.stats.read_errors),
            "opens": l(&self.stats.opens),
            "chunk_mem_hits": l(&f.mem_hits),
            "chunk_disk_hits": l(&f.disk_hits),
            "chunk_fetches": l(&f.fetches),
            "chunks_fetched": l(&f.chunks_fetched),
            "chunk_fetched_bytes": l(&f.fetched_bytes),
            "chunk_fetch_errors": l(&f.fetch_errors),
            "chunk_timeouts": l(&f.timeouts),
            "chunk_prefetches": l(&f.prefetches),
            "mem_cache_bytes": self.fetcher.mem_bytes(),
            "disk_cache_bytes": self.fetcher.disk_bytes(),
            "disk_cache_corrupt_entries": self.fetcher.disk_corrupt_entries(),
        });
        let mut out = serde_json::to_vec_pretty(&v).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        out
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
