//! Fetching chunks: a worker pool, in-flight deduplication, caches and
//! deadlines.
//!
//! A reader never does backend I/O itself. It asks the `Fetcher` for the
//! chunks it needs; each missing chunk becomes one job on the pool (two
//! readers wanting the same chunk share one fetch), and the reader waits for
//! the results until its deadline. A fetch that is slow or stuck costs the
//! waiting reader an error (EIO) at the deadline, never a hang, and stalls no
//! other reader. Read-ahead uses a separate, bounded, lower-priority queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use snapback_core::{Id, MasterIndex, Repository};

use crate::cache::{DiskCache, Lru, MemCache};
use crate::error::VfsError;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queues {
    demand: VecDeque<Job>,
    background: VecDeque<Job>,
    shutdown: bool,
}

struct PoolInner {
    q: Mutex<Queues>,
    cv: Condvar,
    background_limit: usize,
}

/// A fixed set of threads running jobs; demand jobs go before background
/// ones. A panicking job is contained: its thread lives on.
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    pub(crate) fn new(name: &str, threads: usize, background_limit: usize) -> Pool {
        let inner = Arc::new(PoolInner {
            q: Mutex::new(Queues::default()),
            cv: Condvar::new(),
            background_limit,
        });
        for i in 0..threads.max(1) {
            let inner = inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&inner));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a worker thread");
            }
        }
        Pool { inner }
    }

    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if let Ok(mut q) = self.inner.q.lock() {
            q.demand.push_back(Box::new(job));
            self.inner.cv.notify_one();
        }
    }

    /// Queues a low-priority job; false (and the job dropped) when the
    /// background queue is full.
    pub(crate) fn spawn_background(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let Ok(mut q) = self.inner.q.lock() else {
            return false;
        };
        if q.background.len() >= self.inner.background_limit {
            return false;
        }
        q.background.push_back(Box::new(job));
        self.inner.cv.notify_one();
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut q) = self.inner.q.lock() {
            q.shutdown = true;
            q.demand.clear();
            q.background.clear();
        }
        self.inner.cv.notify_all();
    }
}

fn worker(inner: &PoolInner) {
    loop {
        let job = {
            let Ok(mut q) = inner.q.lock() else { return };
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(j) = q.demand.pop_front().or_else(|| q.background.pop_front()) {
                    break j;
                }
                q = match inner.cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            tracing::error!("a worker job panicked; its readers get EIO at their deadline");
        }
    }
}

/// Runs `f` on the pool and waits for its result until `deadline`.
pub(crate) fn run_with_deadline<T: Send + 'static>(
    pool: &Pool,
    deadline: Instant,
    what: &str,
    f: impl FnOnce() -> Result<T, VfsError> + Send + 'static,
) -> Result<T, VfsError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let started = Instant::now();
    pool.spawn(move || {
        let _ = tx.send(f());
    });
    let wait = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(r) => r,
        Err(_) => Err(VfsError::TimedOut {
            what: what.to_string(),
            secs: started.elapsed().as_secs_f64(),
        }),
    }
}

type SlotResult = Result<Arc<Vec<u8>>, VfsError>;

/// One chunk being fetched; every reader that wants it waits here.
struct Slot {
    started: AtomicBool,
    result: Mutex<Option<SlotResult>>,
    cv: Condvar,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            started: AtomicBool::new(false),
            result: Mutex::new(None),
            cv: Condvar::new(),
        })
    }

    fn fill(&self, r: SlotResult) {
        if let Ok(mut g) = self.result.lock() {
            *g = Some(r);
        }
        self.cv.notify_all();
    }

    fn wait(&self, deadline: Instant, what: &dyn Fn() -> String, since: Instant) -> SlotResult {
        let timed_out = || VfsError::TimedOut {
            what: what(),
            secs: since.elapsed().as_secs_f64(),
        };
        let mut g = self
            .result
            .lock()
            .map_err(|_| VfsError::Internal("fetch slot lock poisoned".into()))?;
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            g = match self.cv.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(_) => return Err(VfsError::Internal("fetch slot lock poisoned".into())),
            };
        }
    }
}

/// Counters, for the status file and for tests.
#[derive(Debug, Default)]
pub struct FetchStats {
    pub mem_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub fetches: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub prefetches: AtomicU64,
}

pub(crate) struct Fetcher {
    repo: Arc<Repository>,
    mem: MemCache,
    disk: Option<DiskCache>,
    inflight: Mutex<HashMap<Id, Arc<Slot>>>,
    fresh: Mutex<Option<(Instant, Arc<MasterIndex>)>>,
    pub(crate) pool: Pool,
    pub(crate) stats: FetchStats,
}

impl Fetcher {
    pub(crate) fn new(
        repo: Arc<Repository>,
        mem_bytes: u64,
        disk: Option<DiskCache>,
        threads: usize,
    ) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            repo,
            mem: Mutex::new(Lru::new(mem_bytes)),
            disk,
            inflight: Mutex::new(HashMap::new()),
            fresh: Mutex::new(None),
            pool: Pool::new("snapback-fetch", threads, 1024),
            stats: FetchStats::default(),
        })
    }

    pub(crate) fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    fn mem_get(&self, id: &Id) -> Option<Arc<Vec<u8>>> {
        self.mem.lock().ok()?.get(id)
    }

    pub(crate) fn mem_bytes(&self) -> u64 {
        self.mem.lock().map(|m| m.bytes()).unwrap_or(0)
    }

    pub(crate) fn disk_bytes(&self) -> Option<u64> {
        self.disk.as_ref().map(|d| d.bytes())
    }

    pub(crate) fn disk_corrupt_entries(&self) -> Option<u64> {
        self.disk
            .as_ref()
            .map(|d| d.corrupt_entries.load(Ordering::Relaxed))
    }

    /// Drops every chunk from the memory cache (tests: force a cold read).
    #[cfg(test)]
    pub(crate) fn clear_mem(&self) {
        if let Ok(mut m) = self.mem.lock() {
            m.clear();
        }
    }

    /// The slot for `id`, starting a fetch if none is in flight.
    fn start(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        id: Id,
        demand: bool,
    ) -> Option<Arc<Slot>> {
        let Ok(mut inflight) = self.inflight.lock() else {
            return None;
        };
        if let Some(s) = inflight.get(&id) {
            let s = s.clone();
            drop(inflight);
            if demand && !s.started.load(Ordering::Acquire) {
                // Queued as read-ahead behind other work: also queue it as
                // demand. Whichever job runs first does the fetch.
                self.queue(index, id, s.clone(), true);
            }
            return Some(s);
        }
        let s = Slot::new();
        inflight.insert(id, s.clone());
        drop(inflight);
        if !self.queue(index, id, s.clone(), demand) {
            if let Ok(mut inflight) = self.inflight.lock() {
                inflight.remove(&id);
            }
            return None;
        }
        Some(s)
    }

    fn queue(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        id: Id,
        slot: Arc<Slot>,
        demand: bool,
    ) -> bool {
        let me = self.clone();
        let index = index.clone();
        let job = move || me.run_fetch(&index, id, &slot);
        if demand {
            self.pool.spawn(job);
            true
        } else {
            self.pool.spawn_background(job)
        }
    }

    fn run_fetch(&self, index: &MasterIndex, id: Id, slot: &Arc<Slot>) {
        if slot.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let r = self.load(index, &id);
        if let Ok(data) = &r {
            if let Ok(mut m) = self.mem.lock() {
                m.insert(id, data.clone(), data.len() as u64);
            }
        } else {
            self.stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut inflight) = self.inflight.lock() {
            if inflight.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                inflight.remove(&id);
            }
        }
        slot.fill(r);
    }

    fn load(&self, index: &MasterIndex, id: &Id) -> SlotResult {
        if let Some(d) = &self.disk {
            if let Some(b) = d.get(id) {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::new(b));
            }
        }
        let b = match self.repo.read_blob(index, id) {
            Err(snapback_core::Error::Store(e)) if e.is_not_found() => {
                // The pack is gone: `prune` may have repacked the chunk
                // since this file was opened. Look it up in a freshly
                // loaded index (not the cached one, which keeps old
                // locations) and try once more.
                tracing::info!(chunk = %id.short(), error = %e, "pack not found; reloading the index");
                let fresh = self.fresh_index()?;
                self.repo.read_blob(&fresh, id)
            }
            other => other,
        }
        .map_err(|e| VfsError::repo(format!("chunk {}", id.short()), e))?;
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fetched_bytes
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        if let Some(d) = &self.disk {
            d.put(id, &b);
        }
        Ok(Arc::new(b))
    }

    /// The whole index, loaded anew from the store (at most every 10 s).
    fn fresh_index(&self) -> Result<Arc<MasterIndex>, VfsError> {
        let mut g = self
            .fresh
            .lock()
            .map_err(|_| VfsError::Internal("index lock poisoned".into()))?;
        if let Some((at, idx)) = g.as_ref() {
            if at.elapsed() < Duration::from_secs(10) {
                return Ok(idx.clone());
            }
        }
        let idx = Repository::open(self.repo.store().clone())
            .and_then(|r| r.index())
            .map_err(|e| VfsError::repo("the repository index", e))?;
        *g = Some((Instant::now(), idx.clone()));
        Ok(idx)
    }

    /// The chunks `ids`, in order, each verified; fetched in parallel. Fails
    /// as a whole if any chunk fails or the deadline passes.
    pub(crate) fn get_many(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        ids: &[Id],
        deadline: Instant,
    ) -> Result<Vec<Arc<Vec<u8>>>, VfsError> {
        let since = Instant::now();
        let mut pending: Vec<Result<Arc<Vec<u8>>, Arc<Slot>>> = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(d) = self.mem_get(id) {
                self.stats.mem_hits.fetch_add(1, Ordering::Relaxed);
                pending.push(Ok(d));
                continue;
            }
            match self.start(index, *id, true) {
                Some(s) => pending.push(Err(s)),
                None => return Err(VfsError::Internal("the fetch queue is unavailable".into())),
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for (p, id) in pending.into_iter().zip(ids) {
            match p {
                Ok(d) => out.push(d),
                Err(slot) => {
                    let what = || format!("chunk {}", id.short());
                    let r = slot.wait(deadline, &what, since);
                    if matches!(r, Err(VfsError::TimedOut { .. })) {
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    out.push(r?);
                }
            }
        }
        Ok(out)
    }

    /// Starts background fetches of chunks that are not cached or in flight.
    pub(crate) fn prefetch(self: &Arc<Self>, index: &Arc<MasterIndex>, ids: &[Id]) {
        for id in ids {
            let cached = self.mem.lock().map(|m| m.contains(id)).unwrap_or(true);
            if cached {
                continue;
            }
            if self.start(index, *id, false).is_none() {
                break;
            }
            self.stats.prefetches.fetch_add(1, Ordering::Relaxed);
        }
    }
}
