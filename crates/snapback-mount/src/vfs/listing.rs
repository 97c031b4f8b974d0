//! The snapshot list behind the tree, and its refresh: in the background,
//! so that a stalled backend holds no directory access up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::tree::{build, Inodes, Tree};
use super::{Vfs, VfsStats, View};
use crate::error::VfsError;
use crate::fetch::Fetcher;

#[derive(Debug)]
pub(super) struct RefreshState {
    pub(super) at: Instant,
    pub(super) last_error: Option<String>,
    pub(super) snapshots: usize,
}

/// The snapshot list and the tree built from it, shared with the thread
/// that refreshes it in the background.
pub(super) struct Listing {
    pub(super) view: View,
    pub(super) fetcher: Arc<Fetcher>,
    pub(super) tree: RwLock<Arc<Tree>>,
    pub(super) inodes: Mutex<Inodes>,
    pub(super) state: Mutex<RefreshState>,
    /// A refresh is running (in the background or in `Vfs::refresh`).
    pub(super) running: AtomicBool,
    pub(super) started: SystemTime,
    pub(super) stats: Arc<VfsStats>,
}

/// How long an access that starts a refresh waits for it before it answers
/// from the previous list: a quick backend shows new snapshots at once, a
/// stalled one holds nobody up.
const REFRESH_WAIT: Duration = Duration::from_millis(250);

impl Listing {
    /// Lists the snapshots (and loads new index objects) and rebuilds the
    /// tree. Existing paths keep their inode numbers.
    pub(super) fn refresh(&self) -> Result<(), VfsError> {
        let snaps = match &self.view {
            View::One(s) => {
                self.fetcher
                    .repo()
                    .refresh_index()
                    .map_err(|e| VfsError::repo("the repository index", e))?;
                vec![s.clone()]
            }
            View::All => {
                let repo = self.fetcher.repo();
                // Timeline points too: each shows as a snapshot of its own,
                // and `latest` may be one, with no remount.
                let r = repo
                    .refresh_index()
                    .and_then(|_| repo.snapshots_and_points());
                match r {
                    Ok(s) => s,
                    Err(e) => {
                        self.stats.refresh_errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut st) = self.state.lock() {
                            st.at = Instant::now();
                            st.last_error = Some(e.to_string());
                        }
                        return Err(VfsError::repo("the snapshot list", e));
                    }
                }
            }
        };
        let tree = {
            let mut inos = self
                .inodes
                .lock()
                .map_err(|_| VfsError::Internal("inode table lock poisoned".into()))?;
            build(&self.view, &snaps, &mut inos, self.started)
        };
        if let Ok(mut t) = self.tree.write() {
            *t = Arc::new(tree);
        }
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut st) = self.state.lock() {
            st.at = Instant::now();
            st.last_error = None;
            st.snapshots = snaps.len();
        }
        Ok(())
    }

    fn stale(&self, ttl: Duration) -> bool {
        self.state
            .lock()
            .map(|st| st.at.elapsed() >= ttl)
            .unwrap_or(false)
    }
}

impl Vfs {
    /// Refreshes if the snapshot list is older than the TTL: in the
    /// background, waiting for it at most `REFRESH_WAIT`; meanwhile every
    /// access (this one after the wait) is answered from the previous list.
    /// Only one refresh runs at a time. (It ran in the thread of the access
    /// that found the list stale, so with the backend frozen that `ls`
    /// hung for the whole retry budget of the S3 LIST, 5 minutes.)
    pub(super) fn ensure_fresh(&self) {
        if matches!(self.view, View::One(_)) {
            return;
        }
        let l = &self.listing;
        if !l.stale(self.opts.refresh_ttl) {
            return;
        }
        if l.running.swap(true, Ordering::AcqRel) {
            return;
        }
        if !l.stale(self.opts.refresh_ttl) {
            l.running.store(false, Ordering::Release);
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let bg = l.clone();
        let spawned = std::thread::Builder::new()
            .name("snapback-refresh".into())
            .spawn(move || {
                if let Err(e) = bg.refresh() {
                    tracing::warn!(error = %e, "cannot refresh the snapshot list; showing the previous one");
                }
                bg.running.store(false, Ordering::Release);
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = rx.recv_timeout(REFRESH_WAIT);
            }
            Err(e) => {
                l.running.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot start the snapshot-list refresh");
            }
        }
    }
}
