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

use snapback_core::{pack_key, BlobLocation, Id, MasterIndex, Repository};

use crate::cache::{DiskCache, Lru, MemCache};
use crate::error::VfsError;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queues {
    demand: VecDeque<Job>,
    background: VecDeque<Job>,
    shutdown: bool,
    /// Workers waiting for a job. A job is queued with a wake-up only when
    /// one waits: a busy worker takes it when it finishes its own (a
    /// wake-up per job was a futex call per job even with every worker
    /// busy).
    idle: usize,
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
            if q.idle > 0 {
                self.inner.cv.notify_one();
            }
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
        if q.idle > 0 {
            self.inner.cv.notify_one();
        }
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
                q.idle += 1;
                q = match inner.cv.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
                q.idle -= 1;
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

/// What a slot holds: the result once there is one, and whether a reader
/// sleeps on it (only then does filling it wake anyone: most chunks of a
/// scan are fetched ahead of their reader, and a wake-up per chunk was a
/// futex call per chunk).
#[derive(Default)]
struct SlotState {
    result: Option<SlotResult>,
    waiting: bool,
}

/// One chunk being fetched; every reader that wants it waits here.
struct Slot {
    started: AtomicBool,
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            started: AtomicBool::new(false),
            state: Mutex::new(SlotState::default()),
            cv: Condvar::new(),
        })
    }

    fn fill(&self, r: SlotResult) {
        let wake = match self.state.lock() {
            Ok(mut g) => {
                g.result = Some(r);
                g.waiting
            }
            // A poisoned slot is never read again (its readers fail); wake
            // them anyway so they do not sleep to their deadline.
            Err(_) => true,
        };
        if wake {
            self.cv.notify_all();
        }
    }

    fn wait(&self, deadline: Instant, what: &dyn Fn() -> String, since: Instant) -> SlotResult {
        let timed_out = || VfsError::TimedOut {
            what: what(),
            secs: since.elapsed().as_secs_f64(),
        };
        let mut g = self
            .state
            .lock()
            .map_err(|_| VfsError::Internal("fetch slot lock poisoned".into()))?;
        loop {
            if let Some(r) = g.result.as_ref() {
                return r.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            g.waiting = true;
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
    /// Backend requests for chunks (a grouped range read counts once).
    pub fetches: AtomicU64,
    /// Chunks read from the backend.
    pub chunks_fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub prefetches: AtomicU64,
}

/// How long a chunk that just failed is answered with EIO at once. The
/// kernel re-issues a failed read at once (a read-ahead read, then the
/// single page): each new read used to wait for the whole `--read-timeout`
/// again and to start a new fetch, with a new cycle of S3 retries.
const FAILURE_MEMORY: Duration = Duration::from_secs(2);

pub(crate) struct Fetcher {
    repo: Arc<Repository>,
    mem: MemCache,
    disk: Option<DiskCache>,
    inflight: Mutex<HashMap<Id, Arc<Slot>>>,
    /// Chunks whose fetch failed or whose reader timed out, and when: a
    /// read that needs one within `FAILURE_MEMORY` fails at once.
    failed: Mutex<HashMap<Id, (Instant, VfsError)>>,
    fresh: Mutex<Option<(Instant, Arc<MasterIndex>)>>,
    /// Largest span of a pack read at once for neighbouring chunks.
    window: u64,
    pub(crate) pool: Pool,
    pub(crate) stats: FetchStats,
}

impl Fetcher {
    pub(crate) fn new(
        repo: Arc<Repository>,
        mem_bytes: u64,
        disk: Option<DiskCache>,
        threads: usize,
        window: u64,
    ) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            repo,
            mem: Mutex::new(Lru::new(mem_bytes)),
            disk,
            inflight: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            fresh: Mutex::new(None),
            window,
            pool: Pool::new("snapback-fetch", threads, 1024),
            stats: FetchStats::default(),
        })
    }

    pub(crate) fn repo(&self) -> &Arc<Repository> {
        &self.repo
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

    /// Fetches in flight (tests: wait for read-ahead to land).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Drops every chunk from the memory cache (tests: force a cold read).
    #[cfg(test)]
    pub(crate) fn clear_mem(&self) {
        if let Ok(mut m) = self.mem.lock() {
            m.clear();
        }
    }

    /// Registers a slot for every chunk that is not in flight (and, among
    /// `around`, not cached either), groups the new ones into range reads,
    /// and queues one job per group. Returns the slot of every `wanted`
    /// chunk; `around` chunks are read along when they share a range read.
    fn start_all(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        wanted: &[Id],
        around: &[Id],
        demand: bool,
        window: u64,
    ) -> HashMap<Id, Arc<Slot>> {
        let around: Vec<Id> = match self.mem.lock() {
            Ok(m) => around
                .iter()
                .filter(|id| !m.contains(id))
                .copied()
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut slots = HashMap::new();
        let mut fresh: Vec<(Id, Arc<Slot>)> = Vec::new();
        let mut promote: Vec<(Id, Arc<Slot>)> = Vec::new();
        {
            let Ok(mut inflight) = self.inflight.lock() else {
                return slots;
            };
            for id in wanted.iter().chain(&around) {
                if slots.contains_key(id) {
                    continue;
                }
                if let Some(s) = inflight.get(id) {
                    if demand && !s.started.load(Ordering::Acquire) && wanted.contains(id) {
                        promote.push((*id, s.clone()));
                    }
                    slots.insert(*id, s.clone());
                    continue;
                }
                let s = Slot::new();
                inflight.insert(*id, s.clone());
                slots.insert(*id, s.clone());
                fresh.push((*id, s));
            }
        }
        // Queued as read-ahead behind other work: also queue it as demand.
        // Whichever job runs first does the fetch.
        for m in promote {
            self.queue(index, vec![m], true);
        }
        for group in group_by_pack(index, fresh, window) {
            if !demand {
                self.stats
                    .prefetches
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
            }
            if !self.queue(index, group.clone(), demand) {
                // The background queue is full: forget these.
                if let Ok(mut inflight) = self.inflight.lock() {
                    for (id, s) in &group {
                        if inflight.get(id).is_some_and(|x| Arc::ptr_eq(x, s)) {
                            inflight.remove(id);
                        }
                        slots.remove(id);
                    }
                }
            }
        }
        slots
    }

    fn queue(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        group: Vec<(Id, Arc<Slot>)>,
        demand: bool,
    ) -> bool {
        let me = self.clone();
        let index = index.clone();
        let job = move || me.run_group(&index, group);
        if demand {
            self.pool.spawn(job);
            true
        } else {
            self.pool.spawn_background(job)
        }
    }

    fn run_group(&self, index: &MasterIndex, group: Vec<(Id, Arc<Slot>)>) {
        let group: Vec<(Id, Arc<Slot>)> = group
            .into_iter()
            .filter(|(_, s)| !s.started.swap(true, Ordering::AcqRel))
            .collect();
        let ids: Vec<Id> = group.iter().map(|(id, _)| *id).collect();
        let results = match ids.as_slice() {
            [] => return,
            [one] => vec![self.load(index, one)],
            _ => self.load_group(index, &ids),
        };
        // Cache every chunk of the group before waking any reader, so that a
        // reader moving on to the next chunk finds it in memory. One lock of
        // each map for the whole group, not one per chunk.
        if let Ok(mut m) = self.mem.lock() {
            for ((id, _), r) in group.iter().zip(&results) {
                if let Ok(data) = r {
                    m.insert(*id, data.clone(), data.len() as u64);
                }
            }
        }
        for ((id, _), r) in group.iter().zip(&results) {
            if let Err(e) = r {
                self.stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
                self.remember_failure(*id, e.clone());
            }
        }
        if let Ok(mut inflight) = self.inflight.lock() {
            for (id, slot) in &group {
                if inflight.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                    inflight.remove(id);
                }
            }
        }
        for ((_, slot), r) in group.into_iter().zip(results) {
            slot.fill(r);
        }
    }

    /// Chunks that lie close together in one pack, with one range read.
    /// Each is decompressed and verified on its own: one bad chunk fails
    /// only itself. Any trouble with the range read falls back to reading
    /// the chunks one by one.
    fn load_group(&self, index: &MasterIndex, ids: &[Id]) -> Vec<SlotResult> {
        let mut out: Vec<Option<SlotResult>> = vec![None; ids.len()];
        if let Some(d) = &self.disk {
            for (i, id) in ids.iter().enumerate() {
                if let Some(b) = d.get(id) {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    out[i] = Some(Ok(Arc::new(b)));
                }
            }
        }
        let need: Vec<(usize, BlobLocation)> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_none())
            .filter_map(|(i, id)| index.get(id).map(|l| (i, l)))
            .collect();
        let pack = need.first().map(|(_, l)| l.pack);
        let complete = need.len() == out.iter().filter(|o| o.is_none()).count();
        if let (Some(pack), true, true) = (pack, complete, need.len() > 1) {
            let start = need.iter().map(|(_, l)| l.offset as u64).min().unwrap_or(0);
            let end = need
                .iter()
                .map(|(_, l)| l.offset as u64 + l.stored_len as u64)
                .max()
                .unwrap_or(0);
            let key = pack_key(&pack);
            let same_pack = need.iter().all(|(_, l)| l.pack == pack);
            match self.repo.store().get_range(&key, start, end - start) {
                Ok(bytes) if same_pack && bytes.len() as u64 == end - start => {
                    self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    for (i, l) in &need {
                        let from = (l.offset as u64 - start) as usize;
                        let stored = &bytes[from..from + l.stored_len as usize];
                        let r = self
                            .repo
                            .open_located(index, &ids[*i], l, stored, &key)
                            .map(Arc::new)
                            .map_err(|e| VfsError::repo(format!("chunk {}", ids[*i].short()), e));
                        if let Ok(b) = &r {
                            self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .fetched_bytes
                                .fetch_add(b.len() as u64, Ordering::Relaxed);
                            if let Some(d) = &self.disk {
                                d.put(&ids[*i], b);
                            }
                        }
                        out[*i] = Some(r);
                    }
                }
                Ok(_) => {}
                Err(e) if !e.is_not_found() => {
                    // The store gave up after its own retries: reading the
                    // chunks one by one would start a new cycle of retries
                    // for each (about 117 GETs for one read against a
                    // server answering SlowDown). Fail them all now.
                    let err = VfsError::repo(
                        format!("chunks of pack {}", pack.short()),
                        snapback_core::Error::Store(e),
                    );
                    for (i, _) in &need {
                        out[*i] = Some(Err(err.clone()));
                    }
                }
                Err(e) => {
                    tracing::debug!(pack = %pack.short(), error = %e, "pack not found for a chunk group; reading the chunks one by one (the index is reloaded)");
                }
            }
        }
        out.into_iter()
            .zip(ids)
            .map(|(r, id)| r.unwrap_or_else(|| self.load(index, id)))
            .collect()
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
        self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
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
        let idx = self
            .repo
            .reopen()
            .index()
            .map_err(|e| VfsError::repo("the repository index", e))?;
        *g = Some((Instant::now(), idx.clone()));
        Ok(idx)
    }

    /// The chunks `ids`, in order, each verified; fetched in parallel, and
    /// with the `around` chunks (the ones after them in the file) where they
    /// share a range read. Fails as a whole if any chunk fails or the
    /// deadline passes.
    pub(crate) fn get_many(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        ids: &[Id],
        around: &[Id],
        deadline: Instant,
    ) -> Result<Vec<Arc<Vec<u8>>>, VfsError> {
        let since = Instant::now();
        let mut out: Vec<Option<Arc<Vec<u8>>>> = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        // One lock of the memory cache for the whole read.
        match self.mem.lock() {
            Ok(mut m) => out.extend(ids.iter().map(|id| m.get(id))),
            Err(_) => out.resize(ids.len(), None),
        }
        for (d, id) in out.iter().zip(ids) {
            if d.is_none() {
                missing.push(*id);
            }
        }
        let hits = (ids.len() - missing.len()) as u64;
        self.stats.mem_hits.fetch_add(hits, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        if let Some(e) = self.recent_failure(&missing) {
            return Err(e);
        }
        let slots = self.start_all(index, &missing, around, true, self.window);
        let mut res = Vec::with_capacity(ids.len());
        for (d, id) in out.into_iter().zip(ids) {
            if let Some(d) = d {
                res.push(d);
                continue;
            }
            let slot = slots
                .get(id)
                .ok_or_else(|| VfsError::Internal("the fetch queue is unavailable".into()))?;
            let what = || format!("chunk {}", id.short());
            let r = slot.wait(deadline, &what, since);
            if let Err(e @ VfsError::TimedOut { .. }) = &r {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.remember_failure(*id, e.clone());
            }
            res.push(r?);
        }
        Ok(res)
    }

    fn remember_failure(&self, id: Id, why: VfsError) {
        if let Ok(mut f) = self.failed.lock() {
            f.retain(|_, (at, _)| at.elapsed() < FAILURE_MEMORY);
            f.insert(id, (Instant::now(), why));
        }
    }

    /// The error of a chunk of `ids` that failed less than `FAILURE_MEMORY`
    /// ago, if any.
    fn recent_failure(&self, ids: &[Id]) -> Option<VfsError> {
        let f = self.failed.lock().ok()?;
        ids.iter().find_map(|id| {
            let (at, why) = f.get(id)?;
            (at.elapsed() < FAILURE_MEMORY).then(|| {
                // Missing data stays what it is, so that the reader can
                // still tell a pruned snapshot from damage.
                if why.is_missing_data() {
                    return why.clone();
                }
                VfsError::Internal(format!(
                    "chunk {} failed {:.1} s ago ({why}); not fetched again yet",
                    id.short(),
                    at.elapsed().as_secs_f64()
                ))
            })
        })
    }

    /// Starts background fetches of chunks that are not cached or in flight.
    pub(crate) fn prefetch(self: &Arc<Self>, index: &Arc<MasterIndex>, ids: &[Id]) {
        self.start_all(index, &[], ids, false, self.window);
    }

    /// Like `prefetch`, with chunks that lie close together in one pack
    /// read in one range read of at most `window` bytes (whatever the fetch
    /// window is): for pages known to be read next, such as the children of
    /// a b-tree page being scanned.
    pub(crate) fn prefetch_grouped(
        self: &Arc<Self>,
        index: &Arc<MasterIndex>,
        ids: &[Id],
        window: u64,
    ) {
        self.start_all(index, &[], ids, false, window);
    }
}

/// Splits chunks (in file order) into groups that one range read of one
/// pack can serve: same pack, increasing offsets, gaps under 64 KiB, the
/// whole span within `window` bytes. With `window` 0, one chunk per group.
fn group_by_pack(
    index: &MasterIndex,
    chunks: Vec<(Id, Arc<Slot>)>,
    window: u64,
) -> Vec<Vec<(Id, Arc<Slot>)>> {
    const MAX_GAP: u64 = 64 << 10;
    let mut groups: Vec<Vec<(Id, Arc<Slot>)>> = Vec::new();
    let mut cur: Option<(Id, u64, u64)> = None; // pack, start, end
    for (id, slot) in chunks {
        let loc = index.get(&id);
        let extend = match (&cur, &loc) {
            (Some((pack, start, end)), Some(l)) => {
                let off = l.offset as u64;
                let new_end = off + l.stored_len as u64;
                window > 0
                    && l.pack == *pack
                    && off >= *end
                    && off - end <= MAX_GAP
                    && new_end - start <= window
            }
            _ => false,
        };
        match (extend, loc, groups.last_mut()) {
            (true, Some(l), Some(g)) => {
                g.push((id, slot));
                if let Some(c) = cur.as_mut() {
                    c.2 = l.offset as u64 + l.stored_len as u64;
                }
            }
            (_, l, _) => {
                cur = l.map(|l| {
                    (
                        l.pack,
                        l.offset as u64,
                        l.offset as u64 + l.stored_len as u64,
                    )
                });
                groups.push(vec![(id, slot)]);
            }
        }
    }
    groups
}
