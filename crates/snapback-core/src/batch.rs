//! The watcher's batches: points of one database taken in memory by WAL
//! delta every tick, and written to the repository every upload interval
//! as one timeline segment over the current base manifest
//! (docs/watch.md, docs/format.md "Timeline segments").
//!
//! A point is taken in one read transaction, as a snapshot's capture is:
//! the pages of the WAL frames since the previous point are read, named
//! (their blob ids) and kept with the point; the new chunk list and its
//! `db_checksum` follow from the previous point's. Nothing is written
//! then. An upload stores the pending points' pages (`store_pages`: packs,
//! then one index object, each verified), then commits one segment
//! holding them (`commit_segment_over`, checked against what this process
//! keeps in memory while it holds a shared lock: no LIST request), then
//! saves the local capture state at the newest committed point, so that a
//! restarted watcher, a `snapback snapshot` and `verify-live` continue
//! from it.
//!
//! A new base (an ordinary manifest, by the snapshot path) is written when
//! there is none yet, when a point cannot be a delta (the snapshot then
//! decides between a delta and a full scan, as for any capture), and when
//! the page entries since the base reach 1/8 of its pages (and at least
//! [`REBASE_MIN_ENTRIES`]) or the points since it reach [`REBASE_POINTS`],
//! so restoring any point replays a bounded number of entries.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::capture_state::{self, CaptureState, StatePoint};
use crate::chunklist::{checksum_of, ChunkRef};
use crate::error::{Error, Result};
use crate::id::{DbChecksum, Id};
use crate::layout::{pack_key, snapshot_key};
use crate::lock::{LockKind, RepoLock};
use crate::manifest::{Chunking, FileKind, Manifest};
use crate::repo::Repository;
use crate::segment::{replay, Point, Segment};
use crate::snapshot::{apply_delta, SnapshotOptions, SnapshotReport};
use crate::spool::{Appended, Batch, BatchHead, Spool, SpoolPoint};
use crate::sqlite::{journal_mode_of_header, Capture};
use crate::timeline::SegmentView;
use crate::NoProgress;

/// Points over one base after which the next is a new full manifest.
pub const REBASE_POINTS: u64 = 3600;

/// The fewest page entries since the base that call for a new one: on a
/// small database 1/8 of its pages would be a manifest every few points,
/// while replaying 1024 entries costs nothing.
pub const REBASE_MIN_ENTRIES: u64 = 1024;

/// How long the watcher holds its shared upload lock before it lets go
/// for [`LOCK_GAP`], so that a waiting prune can take its exclusive lock.
pub const LOCK_HOLD: Duration = Duration::from_secs(60);
/// Longer than a waiting prune's longest pause between attempts (2 s and
/// at most 0.1 s of jitter).
pub const LOCK_GAP: Duration = Duration::from_secs(3);

/// The test hook that shortens [`LOCK_HOLD`] (so that a test's forget or
/// prune gets its exclusive lock in seconds, not a minute).
const LOCK_HOLD_FOR_TESTS: &str = "SNAPBACK_TEST_WATCH_LOCK_HOLD_MS";

fn lock_hold() -> Duration {
    std::env::var(LOCK_HOLD_FOR_TESTS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(LOCK_HOLD, Duration::from_millis)
}

/// The newest image of the database the watcher knows: the base manifest
/// it builds on and the image after the newest point (pending or not).
struct Head {
    base: Id,
    base_manifest: Manifest,
    base_list: Vec<ChunkRef>,
    /// The image at the newest committed point (the base's at first): a
    /// segment's first point holds its changes since the base, not since
    /// the previous segment, so every segment replays from its base alone.
    committed: Vec<ChunkRef>,
    page_size: u32,
    /// The position, page count and checksum after the newest point.
    state: CaptureState,
    list: Vec<ChunkRef>,
    sum: DbChecksum,
    /// Page entries and points since the base (committed and pending).
    entries: u64,
    points: u64,
    last_time: OffsetDateTime,
}

/// A point taken and not yet in the repository: as the spool keeps it
/// (the first of a batch holds its changes since the base manifest).
pub type PendingPoint = SpoolPoint;

/// Whether a point taken is in the local spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spooled {
    /// Appended and fsync'd.
    Yes,
    /// There is no spool (no local state directory): in memory only.
    NoSpool,
    /// Not appended: the spool would hold `needed` bytes, past `limit`.
    Full { needed: u64, limit: u64 },
    /// Not appended: the spool cannot be written (why).
    Failed(String),
}

/// What `take_point` did.
#[derive(Debug)]
pub enum Taken {
    /// A point is pending (and, as `spooled` says, in the spool or not).
    Point {
        time: OffsetDateTime,
        pages_read: u64,
        spooled: Spooled,
    },
    /// No point could be taken by delta: the next one must be a new base
    /// manifest (`rebase`), for this reason.
    NeedsManifest(String),
}

/// A committed segment's points, as the watcher reports them.
#[derive(Debug, Clone)]
pub struct Committed {
    pub segment: Id,
    /// (name `SEGMENT/INDEX`, time, pages read) of each point.
    pub points: Vec<(String, OffsetDateTime, u64)>,
}

/// The watcher's shared lock for uploads, and what it knows while it holds
/// it: no prune runs meanwhile, so the packs it listed when it took the
/// lock, and those it wrote since, stay. Held for [`LOCK_HOLD`] at a
/// time, then let go for [`LOCK_GAP`].
///
/// Only while it is not held can a forget or a prune (exclusive) run, and
/// forget may then remove a base manifest that no segment names yet. So
/// each time the lock is taken anew (`generation`), the first upload of
/// each database checks that its base is still there (`Batcher::upload`).
#[derive(Default)]
pub struct UploadLock {
    held: Option<(RepoLock, Instant)>,
    gap_until: Option<Instant>,
    packs: HashSet<Id>,
    /// How many times the lock was taken.
    generation: u64,
}

impl UploadLock {
    /// True when the lock has been held for [`LOCK_HOLD`] and the next
    /// `maintain` lets it go: the pending points are best uploaded first,
    /// so that every base they replay from is named by a segment while a
    /// forget may run.
    pub fn release_due(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= lock_hold())
    }

    /// Lets the lock go once it was held for [`LOCK_HOLD`]; called every
    /// tick, so an idle watcher does not keep a prune or a forget waiting.
    pub fn maintain(&mut self) {
        if self.release_due() {
            self.held = None;
            self.gap_until = Some(Instant::now() + LOCK_GAP);
        }
    }

    /// Waits until the lock may be taken again, when it was let go for
    /// [`LOCK_GAP`] (at most that long).
    pub fn wait_out_gap(&mut self) {
        if let Some(g) = self.gap_until {
            let now = Instant::now();
            if g > now {
                std::thread::sleep(g - now);
            }
        }
    }

    /// Lets the lock go now (before the watcher stops).
    pub fn release(&mut self) {
        self.held = None;
    }

    /// Takes the lock for the last upload before the watcher stops,
    /// waiting up to `wait` for a forget's or a prune's exclusive lock
    /// (and not for the gap, which only gives them their turn): a stop
    /// that comes while one runs, or in the gap, still uploads the pending
    /// points. False when the lock could not be taken in time.
    pub fn take_for_stop(&mut self, repo: &Repository, wait: Duration) -> Result<bool> {
        if self.held.is_some() {
            return Ok(true);
        }
        let lock = match repo.lock(LockKind::Shared, "watch", wait) {
            Ok(l) => l,
            Err(Error::Locked(m)) => {
                tracing::warn!(
                    "the repository stayed locked, the pending points cannot be uploaded: {m}"
                );
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.gap_until = None;
        self.hold(repo, lock)?;
        Ok(true)
    }

    /// Holds a lock just taken: a prune may have run while none was held,
    /// so the index is brought up to date and the packs are listed.
    fn hold(&mut self, repo: &Repository, lock: RepoLock) -> Result<()> {
        repo.current_index()?;
        self.packs = repo.present_packs()?;
        self.held = Some((lock, Instant::now()));
        self.generation += 1;
        Ok(())
    }

    /// True when the lock is held and uploads may go on; takes it when it
    /// is not (one attempt: a prune's exclusive lock makes this false, and
    /// the points wait). On taking it, the index is brought up to date and
    /// the packs are listed (the only LIST requests of the watcher, once
    /// per [`LOCK_HOLD`]).
    pub fn ready(&mut self, repo: &Repository) -> Result<bool> {
        self.maintain();
        if self.held.is_some() {
            return Ok(true);
        }
        if self.gap_until.is_some_and(|g| Instant::now() < g) {
            return Ok(false);
        }
        let lock = match repo.lock(LockKind::Shared, "watch", Duration::ZERO) {
            Ok(l) => l,
            Err(Error::Locked(m)) => {
                tracing::info!("the repository is locked, points wait: {m}");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.hold(repo, lock)?;
        Ok(true)
    }
}

/// One watched database's timeline.
pub struct Batcher {
    path: PathBuf,
    path_s: String,
    head: Option<Head>,
    pending: Vec<PendingPoint>,
    /// The upload lock's generation in which the base was last seen to
    /// exist (see [`UploadLock`]).
    base_seen: u64,
    /// Why the image in memory was dropped, when a forget removed its
    /// base: the reason the next point gives for being a new base.
    base_lost: Option<String>,
    spool: Option<Spool>,
    spool_max: u64,
    /// A pending point is not in the spool: no later one may be appended
    /// (the spool would have a gap) until an upload empties both.
    spool_gap: bool,
    /// The batch read from the spool at start, until `resume` uses it.
    loaded: Option<Batch>,
}

/// What [`Batcher::resume`] found to continue from.
#[derive(Debug)]
pub enum Resumed {
    /// Nothing usable: the next point is a new base manifest.
    Nothing(String),
    /// The newest committed point (or base manifest) named by the local
    /// capture state: the next point is a WAL delta from it.
    FromState { at: OffsetDateTime },
    /// Points left in the spool, now pending (the next upload commits
    /// them first), continued from the newest of them.
    Spooled {
        points: usize,
        first: OffsetDateTime,
        last: OffsetDateTime,
        torn_bytes: u64,
    },
    /// Spooled points that cannot be uploaded (their base manifest is gone,
    /// or they do not replay over it): the batch file was moved to
    /// `aside`, and the next point is a new base manifest.
    Unusable {
        points: usize,
        first: OffsetDateTime,
        last: OffsetDateTime,
        why: String,
        aside: PathBuf,
    },
}

impl Batcher {
    pub fn new(path: &Path) -> Batcher {
        Batcher {
            path: path.to_path_buf(),
            path_s: path.to_string_lossy().into_owned(),
            head: None,
            pending: Vec::new(),
            base_seen: 0,
            base_lost: None,
            spool: None,
            spool_max: u64::MAX,
            spool_gap: false,
            loaded: None,
        }
    }

    /// Reads the spool the previous watcher left (a torn last record is
    /// cut off; a damaged record is an error), for `resume`.
    pub fn load_spool(&mut self) -> Result<()> {
        if let Some(s) = self.spool.as_mut() {
            self.loaded = s.load()?;
        }
        Ok(())
    }

    /// True while spooled points read by `load_spool` wait for `resume`:
    /// no point may be taken before they are pending again.
    pub fn spool_waits(&self) -> bool {
        self.loaded.is_some()
    }

    /// Why the image in memory was dropped at the last upload, when its
    /// base manifest was found removed (by a forget that ran while the
    /// upload lock was let go): the points pending over it were dropped
    /// (none of them was reported durable) and the next point is a new
    /// base manifest, which holds every transaction they held.
    pub fn base_lost(&self) -> Option<&str> {
        self.base_lost.as_deref()
    }

    /// Keeps every point taken in `spool`, holding at most `max` bytes.
    pub fn with_spool(mut self, spool: Spool, max: u64) -> Batcher {
        self.spool = Some(spool);
        self.spool_max = max;
        self
    }

    /// Bytes in the spool.
    pub fn spool_bytes(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::bytes)
    }

    /// The spool's batch file, when there is a spool.
    pub fn spool_path(&self) -> Option<PathBuf> {
        self.spool.as_ref().map(Spool::path)
    }

    /// Points taken and not yet in the repository.
    pub fn pending(&self) -> &[PendingPoint] {
        &self.pending
    }

    /// Forgets the image in memory (verify-live found it wrong): the next
    /// point is a new base manifest.
    pub fn drop_head(&mut self) {
        self.head = None;
    }

    /// True when the next point can be taken by delta in memory.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Why the next point should be a new base manifest, when it should:
    /// the page entries since the base reached 1/8 of its pages (and
    /// [`REBASE_MIN_ENTRIES`]), or the points [`REBASE_POINTS`].
    pub fn rebase_due(&self) -> Option<String> {
        let h = self.head.as_ref()?;
        let pages = h.base_list.len() as u64;
        if h.entries >= (pages / 8).max(REBASE_MIN_ENTRIES) {
            return Some(format!(
                "{} page entries since the base manifest, 1/8 of its {pages} pages or more",
                h.entries
            ));
        }
        (h.points >= REBASE_POINTS).then(|| format!("{} points since the base manifest", h.points))
    }

    /// Takes a point in one read transaction, in memory: the pages of the
    /// WAL frames since the newest point, applied to its image. Nothing is
    /// written. When that is not possible (no base yet, the WAL restarted
    /// outside the pinned session, the file replaced, too many pages), the
    /// in-memory image is dropped and the reason returned: the next point
    /// is a new base manifest.
    pub fn take_point(
        &mut self,
        repo: &Repository,
        busy: Duration,
        pin_session: Option<&str>,
    ) -> Result<Taken> {
        let Some(mut head) = self.head.take() else {
            return Ok(Taken::NeedsManifest(
                self.base_lost
                    .take()
                    .unwrap_or_else(|| "no base manifest in memory yet".into()),
            ));
        };
        let r = take(
            &self.path,
            &mut head,
            &mut self.pending,
            repo,
            busy,
            pin_session,
        );
        // An error (the database locked, unreadable) leaves the image as it
        // was, for the next tick; a point that cannot be a delta drops it,
        // once the pending points (which need their base to be uploaded)
        // are gone: the caller takes no point until `rebase`, which
        // uploads them first.
        let base = head.base;
        let page_size = head.page_size;
        if !matches!(r, Ok(Taken::NeedsManifest(_))) || !self.pending.is_empty() {
            self.head = Some(head);
        }
        match r {
            Ok(Taken::Point {
                time, pages_read, ..
            }) => Ok(Taken::Point {
                time,
                pages_read,
                spooled: self.spool_newest(base, page_size),
            }),
            r => r,
        }
    }

    /// Appends the newest pending point to the spool.
    fn spool_newest(&mut self, base: Id, page_size: u32) -> Spooled {
        let (Some(spool), Some(p)) = (self.spool.as_mut(), self.pending.last()) else {
            return Spooled::NoSpool;
        };
        if self.spool_gap {
            return Spooled::Failed(
                "an earlier pending point could not be spooled, so no later one is (the spool would have a gap)".into(),
            );
        }
        let head = BatchHead {
            base,
            page_size,
            path: self.path_s.clone(),
        };
        let r = match spool.append(&head, p, self.spool_max) {
            Ok(Appended::Spooled) => return Spooled::Yes,
            Ok(Appended::Full { needed }) => Spooled::Full {
                needed,
                limit: self.spool_max,
            },
            Err(e) => Spooled::Failed(e.to_string()),
        };
        self.spool_gap = true;
        r
    }

    /// Continues from where the previous watcher of this database left
    /// off, before the first point: its spooled points become pending
    /// (uploaded first, in order, over their base manifest) and the next
    /// point is a WAL delta from the newest of them; with no spooled
    /// point, from the newest committed point the local capture state
    /// names. When neither can be used, the next point is a new base
    /// manifest. An error (the repository cannot be read) leaves nothing
    /// resumed, and may be retried.
    pub fn resume(&mut self, repo: &Repository, state_dir: &Path) -> Result<Resumed> {
        if let Some(b) = self.loaded.take() {
            let (first, last) = match (b.points.first(), b.points.last()) {
                (Some(f), Some(l)) => (f.point.time, l.point.time),
                _ => return Ok(Resumed::Nothing("the spool is empty".into())),
            };
            let n = b.points.len();
            match self.head_of_batch(repo, &b.head, &b.points) {
                Ok(h) => {
                    self.head = Some(h);
                    self.pending = b.points;
                    return Ok(Resumed::Spooled {
                        points: n,
                        first,
                        last,
                        torn_bytes: b.torn_bytes,
                    });
                }
                Err(Unusable::Retry(e)) => {
                    self.loaded = Some(b);
                    return Err(e);
                }
                Err(Unusable::Why(why)) => {
                    let aside = match self.spool.as_mut() {
                        Some(s) => s.set_aside()?,
                        None => PathBuf::new(),
                    };
                    return Ok(Resumed::Unusable {
                        points: n,
                        first,
                        last,
                        why,
                        aside,
                    });
                }
            }
        }
        let sp = capture_state::paths(state_dir, &repo.config().repo_id, &self.path_s);
        let state = match capture_state::load(&sp) {
            Ok(s) => s,
            Err(why) => return Ok(Resumed::Nothing(why)),
        };
        match self.head_of_state(repo, state) {
            Ok(h) => {
                let at = h.last_time;
                self.head = Some(h);
                Ok(Resumed::FromState { at })
            }
            Err(Unusable::Retry(e)) => Err(e),
            Err(Unusable::Why(why)) => Ok(Resumed::Nothing(why)),
        }
    }

    /// The image after the spooled `points` of a batch over `bh.base`.
    fn head_of_batch(
        &self,
        repo: &Repository,
        bh: &BatchHead,
        points: &[SpoolPoint],
    ) -> std::result::Result<Head, Unusable> {
        if bh.path != self.path_s {
            return Err(Unusable::Why(format!(
                "the spool holds points of {}, not of this database",
                bh.path
            )));
        }
        let mut h = self.base_head(repo, bh.base)?;
        if h.page_size != bh.page_size {
            return Err(Unusable::Why(format!(
                "the spooled points have {}-byte pages, their base manifest {}",
                bh.page_size, h.page_size
            )));
        }
        let pts: Vec<Point> = points.iter().map(|p| p.point.clone()).collect();
        let list = replay(
            h.base_list.clone(),
            h.page_size,
            &pts,
            pts.len() - 1,
            "the spooled points",
        )
        .map_err(|e| Unusable::Why(format!("they do not replay over their base manifest: {e}")))?;
        let last = &points[points.len() - 1];
        if pts[0].time <= h.last_time {
            return Err(Unusable::Why(
                "they are not after their base manifest's time".into(),
            ));
        }
        h.sum = checksum_of(&list);
        h.list = list;
        h.state = last.state.clone();
        h.last_time = last.point.time;
        h.entries = pts.iter().map(|p| p.changes.len() as u64).sum();
        h.points = pts.len() as u64;
        Ok(h)
    }

    /// The image of the newest capture the local capture state names.
    fn head_of_state(
        &self,
        repo: &Repository,
        state: CaptureState,
    ) -> std::result::Result<Head, Unusable> {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        if state.repo_id != repo.config().repo_id || state.path != self.path_s {
            return Err(Unusable::Why(
                "the local capture state belongs to another database".into(),
            ));
        }
        if state.host != host {
            return Err(Unusable::Why(format!(
                "the previous capture was made on another host ({})",
                state.host
            )));
        }
        let mut h = self.base_head(repo, state.manifest)?;
        if let Some(p) = state.point {
            let seg = match repo.segment(&p.segment) {
                Ok(s) => s,
                Err(Error::Store(e)) if e.is_not_found() => {
                    return Err(Unusable::Why(format!(
                        "the newest point's timeline segment {} is no longer in the repository",
                        p.segment.short()
                    )))
                }
                Err(e) => return Err(Unusable::Retry(e)),
            };
            let k = p.index as usize;
            if seg.base != state.manifest || seg.path != self.path_s || k >= seg.points.len() {
                return Err(Unusable::Why(
                    "the newest point's timeline segment does not match the local capture state"
                        .into(),
                ));
            }
            h.list = replay(
                h.base_list.clone(),
                seg.page_size,
                &seg.points,
                k,
                "the newest point",
            )
            .map_err(|e| Unusable::Why(e.to_string()))?;
            h.sum = checksum_of(&h.list);
            h.last_time = seg.points[k].time;
            h.entries = seg.changes_up_to(k) as u64;
            h.points = k as u64 + 1;
        }
        if h.sum.to_hex() != state.db_checksum || h.list.len() as u64 != state.page_count {
            return Err(Unusable::Why(
                "the repository's image of the newest point does not match the local capture state"
                    .into(),
            ));
        }
        h.committed = h.list.clone();
        h.state = state;
        Ok(h)
    }

    /// A head at base manifest `id` itself.
    fn base_head(&self, repo: &Repository, id: Id) -> std::result::Result<Head, Unusable> {
        let manifest = match repo.load_manifest(&id) {
            Ok(m) => m,
            Err(Error::Store(e)) if e.is_not_found() => {
                return Err(Unusable::Why(format!(
                    "their base manifest {} is no longer in the repository (forgotten and pruned)",
                    id.short()
                )))
            }
            Err(e) => return Err(Unusable::Retry(e)),
        };
        let (base_list, page_size, last_time) =
            self.base_of(repo, id, &manifest)
                .map_err(|e| match e.kind() {
                    crate::Kind::Damaged | crate::Kind::BadInput => Unusable::Why(e.to_string()),
                    _ => Unusable::Retry(e),
                })?;
        let sum = checksum_of(&base_list);
        Ok(Head {
            base: id,
            base_manifest: manifest,
            base_list: base_list.clone(),
            committed: base_list.clone(),
            page_size,
            state: placeholder_state(),
            list: base_list,
            sum,
            entries: 0,
            points: 0,
            last_time,
        })
    }

    /// Writes the pending points as one timeline segment: their pages
    /// (packs, index), then the segment, each verified; then the local
    /// capture state at the newest of them. `Ok(None)` when nothing is
    /// pending. On an error nothing is reported committed and the points
    /// stay pending.
    pub fn upload(
        &mut self,
        repo: &Repository,
        lock: &mut UploadLock,
        state_dir: Option<&Path>,
    ) -> Result<Option<Committed>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let head = self
            .head
            .as_ref()
            .ok_or_else(|| Error::internal("points are pending without a base manifest"))?;
        // Under a lock taken anew, once per database: a forget that ran
        // while it was let go may have removed a base that no segment
        // named yet. The pending points cannot be committed over it; they
        // are dropped (none was reported durable) and the next point is a
        // new base manifest, which holds every transaction they held.
        if self.base_seen != lock.generation {
            if repo.store().stat(&snapshot_key(&head.base))?.is_none() {
                let why = format!(
                    "the base manifest {} was removed (by a forget) before a segment named it",
                    head.base.short()
                );
                tracing::warn!(path = %self.path_s, points = self.pending.len(), "{why}: the {} point(s) taken over it since the previous upload are dropped, and the next point is a new base manifest holding every transaction they held", self.pending.len());
                self.pending.clear();
                self.head = None;
                // Their spooled copies cannot be uploaded either: kept
                // aside, as a restarted watcher does (docs/watch.md).
                self.spool_gap = false;
                if let Some(s) = self.spool.as_mut() {
                    match s.set_aside() {
                        Ok(to) => {
                            tracing::warn!(path = %self.path_s, "the dropped points' spool was moved to {}", to.display())
                        }
                        Err(e) => {
                            tracing::error!(path = %self.path_s, error = %e, "the dropped points cannot be moved out of the spool; no point is spooled until the next upload");
                            self.spool_gap = true;
                        }
                    }
                }
                self.base_lost = Some(why);
                return Ok(None);
            }
            self.base_seen = lock.generation;
        }
        let raws: Vec<&[u8]> = self
            .pending
            .iter()
            .flat_map(|p| p.pages.iter().flatten().map(Vec::as_slice))
            .collect();
        let (ids, written) = repo.store_pages_in_packs(&raws)?;
        let named: Vec<Id> = self
            .pending
            .iter()
            .flat_map(|p| {
                p.point
                    .changes
                    .iter()
                    .zip(&p.pages)
                    .filter(|(_, page)| page.is_some())
                    .map(|((_, id), _)| *id)
            })
            .collect();
        if ids != named {
            return Err(Error::Verification(
                "the stored pages are not named as the points name them; nothing was committed"
                    .into(),
            ));
        }
        lock.packs.extend(written);
        // The first point holds its changes since the base already (the
        // spool keeps the batch as the segment it becomes).
        let points: Vec<Point> = self.pending.iter().map(|p| p.point.clone()).collect();
        let seg = Segment {
            path: self.path_s.clone(),
            base: head.base,
            page_size: head.page_size,
            points,
        };
        let index = repo.index()?;
        // A page stored earlier (by a snapshot of this process, say, or an
        // earlier segment) is in a pack the lock did not list: it must exist now, and then stays
        // while the lock is held.
        let mut seen = HashSet::new();
        for id in seg
            .points
            .iter()
            .flat_map(|p| p.changes.iter().map(|(_, id)| id))
        {
            let Some(loc) = index.get(id) else { continue };
            if lock.packs.contains(&loc.pack) || !seen.insert(loc.pack) {
                continue;
            }
            if repo.store().stat(&pack_key(&loc.pack))?.is_some() {
                lock.packs.insert(loc.pack);
            }
        }
        let id = repo.commit_segment_over(
            &seg,
            &SegmentView {
                index: &index,
                packs: &lock.packs,
                base: &head.base_manifest,
                base_list: &head.base_list,
            },
        )?;
        let points = self
            .pending
            .iter()
            .enumerate()
            .map(|(k, p)| (format!("{}/{k}", id.short()), p.point.time, p.pages_read))
            .collect();
        let last = self.pending.len() - 1;
        if let (Some(dir), Some(p)) = (state_dir, self.pending.last()) {
            let mut state = p.state.clone();
            state.point = Some(StatePoint {
                segment: id,
                index: last as u32,
            });
            self.save_state(repo, dir, &state);
        }
        self.pending.clear();
        if let Some(h) = self.head.as_mut() {
            h.committed = h.list.clone();
        }
        // Durable now: out of the spool. A spool that cannot be emptied
        // takes no further point (they would follow these in its batch).
        self.spool_gap = false;
        if let Some(s) = self.spool.as_mut() {
            if let Err(e) = s.clear() {
                tracing::error!(path = %self.path_s, error = %e, "the uploaded points cannot be removed from the spool");
                self.spool_gap = true;
            }
        }
        Ok(Some(Committed {
            segment: id,
            points,
        }))
    }

    /// The capture state after a committed point: a lost one costs the
    /// next capture a full scan, never a wrong image.
    fn save_state(&self, repo: &Repository, dir: &Path, state: &CaptureState) {
        let sp = capture_state::paths(dir, &repo.config().repo_id, &self.path_s);
        let saved = match capture_state::try_lock(&sp) {
            Ok(Some(_l)) => capture_state::save(&sp, state),
            Ok(None) => Err(Error::Locked(
                "another capture of this database holds the local capture state".into(),
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            tracing::warn!(path = %self.path_s, error = %e, "cannot save the local capture state at the newest point; a restarted watcher or the next snapshot will read more of the database");
        }
    }

    /// Writes a new base: an ordinary snapshot of the database (by WAL
    /// delta from the local capture state when it allows, else a full
    /// scan), committed and verified. The pending points must have been
    /// uploaded first. With `full_scan`, the local state is dropped first
    /// (`why` says why), so the capture reads every page. Afterwards the
    /// new manifest is the base in memory, when the snapshot saved a state
    /// to continue from; otherwise the next point is a manifest again (as
    /// in a format-1 repository, where every point is one).
    pub fn rebase(
        &mut self,
        repo: &Repository,
        opts: &SnapshotOptions,
        full_scan: Option<&str>,
    ) -> Result<SnapshotReport> {
        if !self.pending.is_empty() {
            return Err(Error::internal(
                "a new base manifest was asked for while points are pending",
            ));
        }
        self.head = None;
        let sp = opts
            .state_dir
            .as_ref()
            .map(|d| capture_state::paths(d, &repo.config().repo_id, &self.path_s));
        if let (Some(sp), Some(why)) = (&sp, full_scan) {
            capture_state::invalidate(sp, why)?;
        }
        let r = repo.snapshot(std::slice::from_ref(&self.path), opts, &NoProgress)?;
        if let Some(sp) = &sp {
            if let Ok(state) = capture_state::load(sp) {
                if state.manifest == r.id && state.point.is_none() {
                    match self.head_of(repo, r.id, &r.manifest, state) {
                        Ok(h) => self.head = Some(h),
                        Err(e) => {
                            tracing::warn!(path = %self.path_s, error = %e, "cannot continue from the new base manifest in memory; the next point is a manifest too")
                        }
                    }
                }
            }
        }
        Ok(r)
    }

    fn head_of(
        &self,
        repo: &Repository,
        id: Id,
        manifest: &Manifest,
        state: CaptureState,
    ) -> Result<Head> {
        let place = format!("snapshot {}", id.short());
        let (list, page_size, last_time) = self.base_of(repo, id, manifest)?;
        let sum = checksum_of(&list);
        if manifest
            .files
            .iter()
            .any(|f| f.path == self.path_s && f.db_checksum != state.db_checksum)
        {
            return Err(Error::corrupt(
                &place,
                "its chunk list does not give its db_checksum",
            ));
        }
        Ok(Head {
            base: id,
            base_manifest: manifest.clone(),
            base_list: list.clone(),
            committed: list.clone(),
            page_size,
            state,
            list,
            sum,
            entries: 0,
            points: 0,
            last_time,
        })
    }

    /// The database's chunk list in base manifest `id` (checked against
    /// its `db_checksum`), its page size and the manifest's time.
    fn base_of(
        &self,
        repo: &Repository,
        id: Id,
        manifest: &Manifest,
    ) -> Result<(Vec<ChunkRef>, u32, OffsetDateTime)> {
        let place = format!("snapshot {}", id.short());
        let file = manifest
            .files
            .iter()
            .find(|f| f.path == self.path_s)
            .ok_or_else(|| Error::corrupt(&place, format!("it does not hold {}", self.path_s)))?;
        let page_size = file.sqlite.as_ref().map(|s| s.page_size).unwrap_or(0);
        if file.kind != FileKind::Sqlite || file.chunking != (Chunking::Fixed { size: page_size }) {
            return Err(Error::corrupt(
                &place,
                "its database is not cut one page per chunk",
            ));
        }
        let index = repo.index()?;
        let list = repo.chunk_list(&index, file)?;
        if checksum_of(&list).to_hex() != file.db_checksum {
            return Err(Error::corrupt(
                &place,
                "its chunk list does not give its db_checksum",
            ));
        }
        let last_time =
            crate::time::parse_rfc3339(&manifest.time).map_err(|e| Error::corrupt(&place, e))?;
        Ok((list, page_size, last_time))
    }
}

/// Why a resume cannot use what it found, or an error worth retrying.
enum Unusable {
    Why(String),
    Retry(Error),
}

impl From<Error> for Unusable {
    fn from(e: Error) -> Unusable {
        Unusable::Retry(e)
    }
}

/// The state of a head before its real one is set.
fn placeholder_state() -> CaptureState {
    CaptureState {
        version: capture_state::new_state_version(),
        repo_id: String::new(),
        path: String::new(),
        host: String::new(),
        pid: 0,
        dev: 0,
        ino: 0,
        page_size: 0,
        wal_salts: String::new(),
        frame: 0,
        frame_cksum: [0, 0],
        manifest: Id([0; 32]),
        page_count: 0,
        db_checksum: String::new(),
        session: None,
        wal_ckpt: None,
        point: None,
        db_file: None,
    }
}

/// `point` (whose changes are since the image `committed`) with its
/// changes since `base` instead: every entry of its image that is not the
/// base's.
fn since_base(base: &[ChunkRef], committed: &[ChunkRef], point: &Point) -> Point {
    let mut image = committed.to_vec();
    image.resize(
        point.page_count as usize,
        ChunkRef {
            id: Id([0; 32]),
            len: 0,
        },
    );
    for (i, id) in &point.changes {
        if let Some(c) = image.get_mut(*i as usize) {
            c.id = *id;
        }
    }
    let changes = image
        .iter()
        .enumerate()
        .filter(|(i, c)| base.get(*i).map(|b| b.id) != Some(c.id))
        .map(|(i, c)| (i as u64, c.id))
        .collect();
    Point {
        changes,
        ..point.clone()
    }
}

/// `Batcher::take_point`, over the image in `head`.
fn take(
    path: &Path,
    head: &mut Head,
    pending: &mut Vec<PendingPoint>,
    repo: &Repository,
    busy: Duration,
    pin_session: Option<&str>,
) -> Result<Taken> {
    let read = match read_changed_pages(path, head, busy, pin_session)? {
        Ok(r) => r,
        Err(why) => return Ok(Taken::NeedsManifest(why)),
    };
    let ChangedPages {
        changed,
        position,
        raws,
        time,
        page_count,
        page_size: ps,
        db_file,
    } = read;
    if time <= head.last_time {
        return Ok(Taken::NeedsManifest(
            "the clock went back: this point would not be after the previous one".into(),
        ));
    }
    let codec = repo.codec();
    let refs: Vec<ChunkRef> = raws
        .iter()
        .map(|p| ChunkRef {
            id: codec.blob_id(p),
            len: ps as u32,
        })
        .collect();
    // A page is a change when it is new or differs from the previous
    // point's (every page past the previous count is new).
    let prev: Vec<Option<Id>> = changed
        .pages
        .iter()
        .map(|p| head.list.get(*p as usize - 1).map(|c| c.id))
        .collect();
    let list = std::mem::take(&mut head.list);
    let (list, sum) = match apply_delta(list, head.sum, &changed, &refs, page_count, ps as u64) {
        Ok(x) => x,
        Err(why) => return Ok(Taken::NeedsManifest(why)),
    };
    let mut changes = Vec::new();
    let mut pages = Vec::new();
    for (((pgno, r), raw), old) in changed.pages.iter().zip(&refs).zip(raws).zip(prev) {
        if old != Some(r.id) {
            changes.push((pgno - 1, r.id));
            pages.push(raw);
        }
    }
    let mut state = head.state.clone();
    state.salts_from(position);
    state.db_file = Some(db_file);
    state.page_count = page_count;
    state.db_checksum = sum.to_hex();
    state.session = pin_session.map(str::to_string);
    state.pid = std::process::id();
    state.point = None;
    head.entries += changes.len() as u64;
    head.points += 1;
    head.last_time = time;
    head.list = list;
    head.sum = sum;
    head.state = state.clone();
    let mut point = Point {
        time,
        page_count,
        db_checksum: sum,
        changes,
    };
    let mut pages: Vec<Option<Vec<u8>>> = pages.into_iter().map(Some).collect();
    if pending.is_empty() {
        (point, pages) = first_of_batch(head, point, pages);
    }
    pending.push(PendingPoint {
        point,
        pages,
        pages_read: changed.pages.len() as u64,
        state,
    });
    Ok(Taken::Point {
        time,
        pages_read: changed.pages.len() as u64,
        spooled: Spooled::NoSpool,
    })
}

/// The pages of `path` changed since the image in `head`, read in one read
/// transaction; or why the next point must be a new base manifest.
fn read_changed_pages(
    path: &Path,
    head: &Head,
    busy: Duration,
    pin_session: Option<&str>,
) -> Result<std::result::Result<ChangedPages, String>> {
    let before = crate::delta::before(path);
    let cap = Capture::begin(path, busy)?;
    let same_file = std::fs::metadata(path).ok().map(|m| {
        (
            std::os::unix::fs::MetadataExt::dev(&m),
            std::os::unix::fs::MetadataExt::ino(&m),
        )
    });
    if same_file != Some((before.dev, before.ino)) {
        cap.finish()?;
        return Ok(Err(
            "the database file was replaced while the capture began".into(),
        ));
    }
    let mut wal_mode = false;
    cap.read_listed(&[1], 1, |_, page1| {
        wal_mode = journal_mode_of_header(&page1) == "wal";
        Ok(())
    })?;
    let continuation = pin_session.is_some() && head.state.session.as_deref() == pin_session;
    let changed = match crate::delta::changed_pages(
        path,
        &before,
        wal_mode,
        &head.state,
        cap.page_size,
        cap.page_count,
        continuation,
    ) {
        Ok(c) => c,
        Err(why) => {
            cap.finish()?;
            return Ok(Err(why));
        }
    };
    let limit = (cap.page_count / 4).max(256);
    if changed.pages.len() as u64 > limit {
        let why = format!(
            "{} of {} pages changed since the previous point (more than a quarter: a full scan reads them faster)",
            changed.pages.len(),
            cap.page_count
        );
        cap.finish()?;
        return Ok(Err(why));
    }
    let Some(position) = changed.position else {
        cap.finish()?;
        return Ok(Err(
            "the WAL position of the capture cannot be established".into()
        ));
    };
    let ps = cap.page_size as usize;
    let mut raws: Vec<Vec<u8>> = Vec::with_capacity(changed.pages.len());
    cap.read_listed(&changed.pages, ((8 << 20) / ps).max(1), |_, buf| {
        raws.extend(buf.chunks(ps).map(<[u8]>::to_vec));
        Ok(())
    })?;
    let time = cap.captured_at;
    let page_count = cap.page_count;
    cap.finish()?;
    Ok(Ok(ChangedPages {
        changed,
        position,
        raws,
        time,
        page_count,
        page_size: ps,
        db_file: before.db_file(),
    }))
}

/// What `read_changed_pages` read.
struct ChangedPages {
    changed: crate::delta::Changed,
    position: crate::delta::Position,
    /// The changed pages' bytes, in the order of `changed.pages`.
    raws: Vec<Vec<u8>>,
    time: OffsetDateTime,
    page_count: u64,
    page_size: usize,
    /// The database file before the read transaction (the next state's).
    db_file: crate::capture_state::DbFile,
}

/// The first point of a batch holds every page that differs from the
/// base: `point` (over the previous point) as a point over the base, with
/// the pages that come with it.
fn first_of_batch(
    head: &Head,
    point: Point,
    pages: Vec<Option<Vec<u8>>>,
) -> (Point, Vec<Option<Vec<u8>>>) {
    // The first point of a batch holds every page that differs from
    // the base; those changed by committed points are in the
    // repository already, so only its own pages come with it.
    let own: std::collections::HashMap<u64, (Id, Vec<u8>)> = point
        .changes
        .iter()
        .zip(pages)
        .filter_map(|((i, id), p)| Some((*i, (*id, p?))))
        .collect();
    let since = since_base(&head.base_list, &head.committed, &point);
    let mut own = own;
    let pages = since
        .changes
        .iter()
        .map(|(i, id)| match own.remove(i) {
            Some((oid, p)) if oid == *id => Some(p),
            _ => None,
        })
        .collect();
    (since, pages)
}

impl CaptureState {
    fn salts_from(&mut self, p: crate::delta::Position) {
        self.wal_salts = hex::encode(p.salts);
        self.frame = p.frame;
        self.frame_cksum = p.cksum;
        self.wal_ckpt = p.ckpt;
    }
}
