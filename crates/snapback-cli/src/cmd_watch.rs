//! `snapback watch`: a foreground process that takes a restorable point of
//! each database every tick in which it changed (docs/watch.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use snapback_core::batch::{Batcher, Committed, Resumed, Spooled, Taken, UploadLock};
use snapback_core::watch::{new_session, Pin, Signature};
use snapback_core::watch_status::{self, Event, PointRef, WatchStatus};
use snapback_core::{CaptureMethod, Repository, SnapshotOptions, SnapshotReport};
use snapback_mount::notify;

use crate::cli::{absolute, Global};
use crate::config::Config;
use crate::duration::parse_duration;
use crate::exit;
use crate::repo_url::open_repo;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// SQLite databases to watch. Without paths, every source in the config
    /// file (each must be a database).
    pub paths: Vec<PathBuf>,
    /// How often to look for changes and take a point (e.g. 1s, 500ms, 1m).
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub interval: String,
    /// How often to write the points taken since the last upload to the
    /// repository, as one timeline segment per database (default: 10s for
    /// an S3 repository, --interval for a local one).
    #[arg(long, value_name = "DURATION")]
    pub upload_interval: Option<String>,
    /// Tag every point (repeatable; added to the config source's tags).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// How often to compare the live database with the image of its
    /// newest point, page by page, in one read transaction (verify-live;
    /// a duration; 0 or "off" turns it off).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub verify_interval: String,
    /// How long to wait for a prune's exclusive lock, per point (a
    /// duration, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
    /// How long to wait, per point, for another process's lock on a
    /// database in rollback-journal mode (a writer, BEGIN EXCLUSIVE; a
    /// duration, or seconds); in WAL mode no writer is ever waited for.
    #[arg(long, value_name = "DURATION", default_value = crate::cmd_basic::DEFAULT_BUSY_TIMEOUT_ARG, value_parser = crate::duration::parse_seconds_or_duration)]
    pub busy_timeout: Duration,
    /// The most the local spool of each database may hold (points taken
    /// and not yet in the repository; e.g. 512M, 1GiB, 2G). Past it the
    /// watcher exits 7, keeping the spool for its next start.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = crate::cmd_mount::parse_size)]
    pub spool_max: u64,
}

/// How long a pin may wait to begin (only a WAL recovery or restart in
/// progress makes a reader wait).
const PIN_BUSY: Duration = Duration::from_secs(1);

/// The longest the last upload waits for a forget's or a prune's lock
/// when the watcher is stopped (well inside the unit's TimeoutStopSec=60).
const STOP_LOCK_WAIT: Duration = Duration::from_secs(40);

/// `--upload-interval` on an S3 repository, when it is not given.
const DEFAULT_S3_UPLOAD_INTERVAL: Duration = Duration::from_secs(10);

/// One watched database.
struct Watched {
    path: PathBuf,
    tags: Vec<String>,
    /// The held read transaction (WAL mode only).
    pin: Option<Pin>,
    wal_mode: bool,
    /// The signature taken before the newest point's capture began (or at
    /// start, when the newest capture was provably current).
    last: Option<Signature>,
    /// The pinned session: renewed whenever the chain of pins breaks.
    session: String,
    points: u64,
    /// The newest point of this run: its short id and time.
    last_point: Option<(String, String)>,
    /// When the newest failure was logged, and its message.
    failing: Option<(Instant, String)>,
    /// The report `snapback status` reads.
    status: WatchStatus,
    /// The points taken and not yet uploaded, and the base they build on.
    batch: Batcher,
    /// Why the next point must be a new base manifest, when it must.
    needs_manifest: Option<String>,
    /// When the next live verification is due (none: turned off).
    next_verify: Option<Instant>,
}

enum Outcome {
    Unchanged,
    /// A point was taken and waits for the next upload.
    Pending,
    /// A point was taken but could not be spooled (why): it must be
    /// uploaded now, or the watcher stops.
    NotSpooled(String),
    /// A point was written as a manifest (a new base).
    Manifest(Box<SnapshotReport>),
}

pub fn watch(g: &Global, cfg: &Config, a: WatchArgs) -> anyhow::Result<u8> {
    let (interval, verify_interval, upload_given) = parse_intervals(&a)?;
    let sources = watch_sources(cfg, &a)?;
    let repo = open_repo(g)?;
    // On S3 a PUT costs money and time: points are batched for 10 s. On a
    // local disk every tick's points are written at once (RPO one tick).
    let upload_interval = upload_given.unwrap_or(if repo.store().location().starts_with("s3://") {
        DEFAULT_S3_UPLOAD_INTERVAL.max(interval)
    } else {
        interval
    });
    let state_root = crate::repo_url::capture_state_root().ok_or_else(|| {
        crate::Usage(
            "snapback watch needs a local state directory for its spool and capture state, and neither XDG_STATE_HOME (an absolute path) nor HOME is set: set one, e.g. XDG_STATE_HOME=/var/lib (the spool then goes under /var/lib/snapback; the systemd unit does this)"
                .into(),
        )
    })?;
    let state_dir = Some(state_root.clone());
    let status_dir = Some(watch_status::dir(&state_root));
    let mut watched = Vec::new();
    for (path, tags) in sources {
        let intervals = (interval, upload_interval, verify_interval);
        if let Some(w) = open_watched(&repo, &a, &state_root, path, tags, intervals, &watched)? {
            watched.push(w);
        }
    }
    let resumed_spool = resume_all(&repo, &state_root, &mut watched)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .context("cannot install the signal handlers")?;
    }
    tracing::info!(
        databases = watched.len(),
        interval_ms = interval.as_millis() as u64,
        upload_interval_ms = upload_interval.as_millis() as u64,
        "watching"
    );
    let mut lock = UploadLock::default();
    let ticks_per_upload = ticks_per_upload(upload_interval, interval);
    // Points left in the spool by the previous watcher go first.
    let mut ticks_since_upload = if resumed_spool { ticks_per_upload } else { 0 };
    let mut ready = false;
    let mut first = true;
    let mut next = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        // Whether every database's capture progressed this tick: its
        // change taken into the spool (or written as a new base), or
        // nothing to take. A failed upload does not count against it (the
        // points wait in the spool, bounded by --spool-max); a point that
        // failed, or a new base that cannot be written, does.
        let (mut captured, not_spooled) =
            take_points(g, &repo, &a, state_dir.as_ref(), &mut watched, first)?;
        // Every --upload-interval, and whenever a database needs a new
        // base (its pending points go first), or on the way out.
        // Counted in ticks, so that an upload interval equal to the tick
        // uploads every tick.
        ticks_since_upload += 1;
        if !not_spooled.is_empty() {
            // The spool cannot take the newest point: upload now, or stop
            // with the spool kept.
            lock.wait_out_gap();
        }
        let due = ticks_since_upload >= ticks_per_upload
            || stopping
            || !not_spooled.is_empty()
            || watched
                .iter()
                .any(|w| w.needs_manifest.is_some() || w.batch.rebase_due().is_some());
        if due && watched.iter().any(|w| !w.batch.pending().is_empty()) {
            ticks_since_upload = 0;
            if stopping {
                lock.release();
            }
            upload_pending(g, &repo, &mut lock, state_dir.as_deref(), &mut watched)?;
        } else if watched.iter().all(|w| w.batch.pending().is_empty()) {
            ticks_since_upload = 0;
        }
        if let Some(code) = spool_exhausted(&not_spooled, &mut watched, status_dir.as_deref()) {
            lock.release();
            notify("STOPPING=1");
            return Ok(code);
        }
        captured &= take_manifests_due(g, &repo, &a, state_dir.as_ref(), &mut watched)?;
        if let Some(every) = verify_interval {
            verify_due(&repo, &a, &state_root, every, &mut watched);
        }
        // The points pending go up before the lock is let go, so that a
        // forget run in the gap sees a segment naming every base in use.
        if lock.release_due() && watched.iter().any(|w| !w.batch.pending().is_empty()) {
            ticks_since_upload = 0;
            upload_pending(g, &repo, &mut lock, state_dir.as_deref(), &mut watched)?;
        }
        lock.maintain();
        save_statuses(&mut watched, status_dir.as_deref());
        first = false;
        // A database that needs a new base takes no point until it is
        // written, and it is written only after its pending points are
        // uploaded: while they cannot be, its capture is stalled.
        captured &= watched.iter().all(|w| w.needs_manifest.is_none());
        if captured {
            if !ready {
                notify("READY=1");
                ready = true;
            }
            notify("WATCHDOG=1");
            notify(&status_line(&watched));
        }
        if !wait_for_tick(&mut next, interval, &stop) {
            break;
        }
    }
    notify("STOPPING=1");
    stop_on_request(
        g,
        &repo,
        &a,
        &mut lock,
        state_dir.as_deref(),
        status_dir.as_deref(),
        &mut watched,
    )
}

/// How many ticks apart uploads start. The newest durable point is as old
/// as the time from one upload's start to the next one's commit, so an
/// upload every N ticks would let it reach N ticks plus the upload's own
/// time: uploads start one tick early (N - 1 ticks apart) so that the RPO
/// stays within `--upload-interval` while an upload takes less than a
/// tick. An upload interval of one or two ticks uploads every tick.
fn ticks_per_upload(upload_interval: Duration, interval: Duration) -> u64 {
    let ticks = (upload_interval.as_secs_f64() / interval.as_secs_f64()).round() as u64;
    ticks.saturating_sub(1).max(1)
}

/// `--interval`, `--verify-interval` (none: off) and `--upload-interval`
/// (when given), checked.
fn parse_intervals(
    a: &WatchArgs,
) -> anyhow::Result<(Duration, Option<Duration>, Option<Duration>)> {
    let interval = parse_duration(&a.interval).context("--interval")?;
    if interval < Duration::from_millis(10) {
        return Err(
            crate::Usage(format!("--interval {}: must be at least 10ms", a.interval)).into(),
        );
    }
    for t in &a.tags {
        crate::config::validate_tag(t)?;
    }
    let verify_interval = match a.verify_interval.trim() {
        "off" | "0" => None,
        v => Some(parse_duration(v).context("--verify-interval")?).filter(|d| !d.is_zero()),
    };
    let upload_arg = a.upload_interval.clone();
    let upload_given = match &upload_arg {
        Some(u) => Some(parse_duration(u).context("--upload-interval")?),
        None => None,
    };
    if let (Some(u), Some(d)) = (&upload_arg, upload_given) {
        if d < interval {
            return Err(crate::Usage(format!(
                "--upload-interval {u}: must be at least --interval ({}); points are taken every --interval and written every --upload-interval",
                a.interval
            ))
            .into());
        }
    }
    Ok((interval, verify_interval, upload_given))
}

/// The databases to watch and their tags: the paths given, else the
/// config's sources.
fn watch_sources(cfg: &Config, a: &WatchArgs) -> anyhow::Result<Vec<(PathBuf, Vec<String>)>> {
    if !a.paths.is_empty() {
        Ok(a.paths
            .iter()
            .map(|p| (absolute(p), a.tags.clone()))
            .collect())
    } else if !cfg.sources.is_empty() {
        Ok(cfg
            .sources
            .iter()
            .map(|s| (s.path.clone(), [s.tags.clone(), a.tags.clone()].concat()))
            .collect())
    } else {
        Err(crate::Usage(
            "nothing to watch: give database paths, or list sources in snapback.toml (--config)"
                .into(),
        )
        .into())
    }
}

/// One database to watch, checked, with its spool opened under
/// `state_root` (none: the same database is in `watched` already). `intervals`: the tick, the upload
/// interval and the verify interval.
fn open_watched(
    repo: &Repository,
    a: &WatchArgs,
    state_root: &std::path::Path,
    path: PathBuf,
    tags: Vec<String>,
    (interval, upload_interval, verify_interval): (Duration, Duration, Option<Duration>),
    watched: &[Watched],
) -> anyhow::Result<Option<Watched>> {
    for t in &tags {
        crate::config::validate_tag(t)?;
    }
    let path = std::fs::canonicalize(&path)
        .with_context(|| format!("cannot watch {} (check that it exists)", path.display()))?;
    let is_db = snapback_core::sqlite::has_sqlite_header(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !is_db {
        return Err(crate::Usage(format!(
            "{} is not a SQLite database: watch takes databases (use `snapback snapshot` for other files and directories)",
            path.display()
        ))
        .into());
    }
    if watched.iter().any(|w: &Watched| w.path == path) {
        return Ok(None);
    }
    let path_s = path.to_string_lossy().into_owned();
    let dir = snapback_core::spool::dir(state_root, &repo.config().repo_id, &path_s);
    let spool = snapback_core::spool::Spool::open(&dir)
        .with_context(|| format!("cannot watch {}", path.display()))?;
    let batch = Batcher::new(&path).with_spool(spool, a.spool_max);
    let mut status = WatchStatus::new(&repo.config().repo_id, &path_s, interval, upload_interval);
    status.spool_limit = a.spool_max;
    Ok(Some(Watched {
        tags,
        pin: None,
        wal_mode: true,
        last: None,
        session: new_session(),
        points: 0,
        last_point: None,
        failing: None,
        status,
        batch,
        needs_manifest: None,
        next_verify: verify_interval.map(|d| Instant::now() + d),
        path,
    }))
}

/// Loads every database's spool and continues from its previous watcher
/// (`resume`); true when spooled points are pending.
fn resume_all(
    repo: &Repository,
    root: &std::path::Path,
    watched: &mut [Watched],
) -> anyhow::Result<bool> {
    let mut resumed_spool = false;
    for w in watched {
        w.batch
            .load_spool()
            .with_context(|| format!("cannot watch {}", w.path.display()))?;
        match resume(repo, root, w) {
            Ok(spooled) => resumed_spool |= spooled,
            Err(e) => {
                tracing::warn!(path = %w.path.display(), error = %e, "cannot read the repository to continue from the newest point (retried at the next tick when points are spooled)")
            }
        }
    }
    Ok(resumed_spool)
}

/// Every database's tick (`tick`): false when one failed, and the
/// databases whose newest point the spool could not take (and why).
fn take_points(
    g: &Global,
    repo: &Repository,
    a: &WatchArgs,
    state_dir: Option<&PathBuf>,
    watched: &mut [Watched],
    first: bool,
) -> anyhow::Result<(bool, Vec<(PathBuf, String)>)> {
    let mut all_ok = true;
    let mut not_spooled = Vec::new();
    for w in watched {
        let r = tick(repo, a, state_dir, w, first);
        match r {
            Ok(Outcome::Unchanged | Outcome::Pending) => {}
            Ok(Outcome::NotSpooled(why)) => not_spooled.push((w.path.clone(), why)),
            Ok(Outcome::Manifest(r)) => {
                w.failing = None;
                report_manifest(g, w, &r)?;
            }
            Err(e) => {
                all_ok = false;
                failed(w, &e, "cannot take a point (retrying every tick)");
            }
        }
    }
    Ok((all_ok, not_spooled))
}

/// A new base manifest for each database with nothing pending that needs
/// one; false when one failed (it is retried every tick).
fn take_manifests_due(
    g: &Global,
    repo: &Repository,
    a: &WatchArgs,
    state_dir: Option<&PathBuf>,
    watched: &mut [Watched],
) -> anyhow::Result<bool> {
    let mut all_ok = true;
    for w in watched {
        if !w.batch.pending().is_empty() {
            continue;
        }
        let Some(why) = w.needs_manifest.take().or_else(|| w.batch.rebase_due()) else {
            continue;
        };
        let sig = Signature::take(&w.path, w.wal_mode);
        match rebase(repo, a, state_dir, w, &why) {
            Ok(r) => {
                w.last = Some(sig);
                w.failing = None;
                report_manifest(g, w, &r)?;
            }
            Err(e) => {
                all_ok = false;
                w.needs_manifest = Some(why);
                failed(w, &e, "cannot take a point (retrying every tick)");
            }
        }
    }
    Ok(all_ok)
}

/// The live verification of each database whose `--verify-interval` has
/// come, when it has nothing pending and a point was taken.
fn verify_due(
    repo: &Repository,
    a: &WatchArgs,
    dir: &std::path::Path,
    every: Duration,
    watched: &mut [Watched],
) {
    for w in watched {
        // With nothing pending the local capture state is the
        // newest point's image, which is what is compared.
        let due = w.next_verify.is_some_and(|t| Instant::now() >= t);
        if due && w.batch.pending().is_empty() && w.points > 0 {
            verify(repo, a, dir, w);
            w.next_verify = Some(Instant::now() + every);
        }
    }
}

/// Each database's report for `snapback status`, brought up to date and
/// written.
fn save_statuses(watched: &mut [Watched], status_dir: Option<&std::path::Path>) {
    for w in watched.iter_mut() {
        let p = w.batch.pending();
        w.status.pending_points = p.len() as u64;
        w.status.oldest_pending = p.first().map(|p| p.point.time);
        w.status.spool_bytes = w.batch.spool_bytes();
    }
    for w in watched.iter_mut() {
        w.status.last_tick = Some(snapback_core::time::now());
        if let Some(dir) = status_dir {
            if let Err(e) = watch_status::save(dir, &w.status) {
                tracing::warn!(path = %w.path.display(), error = %e, "cannot write the watch status that `snapback status` reads");
            }
        }
    }
}

/// Sleeps until the next tick (`next`, moved on by `interval`; a warning
/// when a tick took longer); false when a signal asked to stop, before
/// or while sleeping.
fn wait_for_tick(next: &mut Instant, interval: Duration, stop: &AtomicBool) -> bool {
    if stop.load(Ordering::Relaxed) {
        return false;
    }
    *next += interval;
    let now = Instant::now();
    if *next < now {
        let behind = now - *next;
        if behind > interval {
            tracing::warn!(
                behind_ms = behind.as_millis() as u64,
                "falling behind: a tick took longer than --interval; points are taken as fast as they can be"
            );
        }
        *next = now;
    }
    while Instant::now() < *next && !stop.load(Ordering::Relaxed) {
        std::thread::sleep((*next - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::Relaxed)
}

/// The way out after a signal: the points taken since the last upload go
/// up, and the exit code says whether any were left in the spool.
fn stop_on_request(
    g: &Global,
    repo: &Repository,
    a: &WatchArgs,
    lock: &mut UploadLock,
    state_dir: Option<&std::path::Path>,
    status_dir: Option<&std::path::Path>,
    watched: &mut [Watched],
) -> anyhow::Result<u8> {
    // The points taken since the last upload, before going: waiting for a
    // forget or a prune that holds the lock now (within systemd's stop
    // timeout), not giving up at once.
    lock.release();
    if watched.iter().any(|w| !w.batch.pending().is_empty()) {
        if let Err(e) = lock.take_for_stop(repo, a.lock_wait.min(STOP_LOCK_WAIT)) {
            tracing::warn!(error = %e, "cannot take the repository lock for the last upload");
        }
    }
    upload_pending(g, repo, lock, state_dir, watched)?;
    lock.release();
    let left: usize = watched.iter().map(|w| w.batch.pending().len()).sum();
    if left > 0 {
        for w in watched.iter_mut().filter(|w| !w.batch.pending().is_empty()) {
            let n = w.batch.pending().len();
            let msg = match w.batch.spool_path() {
                Some(p) => format!(
                    "stopped on request with {n} point(s) not uploaded; they stay in the local spool {} and are uploaded first when `snapback watch` starts again",
                    p.display()
                ),
                None => format!(
                    "stopped on request with {n} point(s) not uploaded and no local spool; they are lost"
                ),
            };
            tracing::error!(path = %w.path.display(), points = n, "{msg}");
            stop_report(w, status_dir, msg);
        }
        return Ok(exit::FAILURE);
    }
    // Stopped on request: no report is left for `status` to call stale.
    if let Some(dir) = status_dir {
        for w in watched.iter() {
            let _ = watch_status::remove(dir, &w.status.repo_id, &w.status.path);
        }
    }
    tracing::info!(
        points = watched.iter().map(|w| w.points).sum::<u64>(),
        "stopped by a signal; every point reported is committed"
    );
    Ok(exit::OK)
}

/// Picks up where the previous watcher of `w` left off (see
/// `Batcher::resume`), and says so in the log; true when spooled points
/// are pending. An error (the repository cannot be read) is retried at
/// the next tick while spooled points wait (`Batcher::spool_waits`).
fn resume(
    repo: &Repository,
    root: &std::path::Path,
    w: &mut Watched,
) -> snapback_core::Result<bool> {
    let r = w.batch.resume(repo, root)?;
    let t = snapback_core::time::format_rfc3339_nanos;
    match r {
        Resumed::Nothing(why) => {
            tracing::info!(path = %w.path.display(), reason = %why, "nothing to continue from: the first point is a new base manifest");
            Ok(false)
        }
        Resumed::FromState { at } => {
            tracing::info!(path = %w.path.display(), newest = %t(at), "continuing from the newest committed point: the next one is a WAL delta from it when the WAL still holds the frames since");
            Ok(false)
        }
        Resumed::Spooled {
            points,
            first,
            last,
            torn_bytes,
        } => {
            if torn_bytes > 0 {
                tracing::warn!(path = %w.path.display(), bytes = torn_bytes, "the spool ended inside a record (the previous watcher was killed while writing it); that record never counted as spooled and was dropped");
            }
            tracing::info!(path = %w.path.display(), points, first = %t(first), last = %t(last), "{points} spooled point(s) left by the previous watcher are uploaded first");
            Ok(true)
        }
        Resumed::Unusable {
            points,
            first,
            last,
            why,
            aside,
        } => {
            let msg = format!(
                "{points} spooled point(s) of {} from {} to {} cannot be uploaded: {why}. They were moved to {}; the next point is a new base manifest",
                w.path.display(),
                t(first),
                t(last),
                aside.display()
            );
            tracing::error!(path = %w.path.display(), "{msg}");
            w.status.last_upload_error = Some(Event {
                time: snapback_core::time::now(),
                message: msg,
            });
            Ok(false)
        }
    }
}

/// After an upload attempt forced by points the spool could not take: when
/// one is still pending, the watcher stops loudly (its pins released, so
/// the application's checkpoints go on; its spool kept for the next
/// start) and this is the exit code.
fn spool_exhausted(
    not_spooled: &[(PathBuf, String)],
    watched: &mut [Watched],
    status_dir: Option<&std::path::Path>,
) -> Option<u8> {
    let mut stuck = vec![];
    for (path, why) in not_spooled {
        let Some(w) = watched.iter_mut().find(|w| &w.path == path) else {
            continue;
        };
        if w.batch.pending().is_empty() {
            tracing::warn!(path = %w.path.display(), "{why}; the points were uploaded at once instead");
        } else {
            stuck.push((path.clone(), why.clone()));
        }
    }
    if stuck.is_empty() {
        return None;
    }
    // Release every read transaction first: nothing of the watcher holds
    // the application's WAL back once it is gone.
    for w in watched.iter_mut() {
        w.pin = None;
    }
    for (path, why) in stuck {
        let Some(w) = watched.iter_mut().find(|w| w.path == path) else {
            continue;
        };
        let spool = w
            .batch
            .spool_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let msg = format!(
            "{why}, and the repository cannot be written: the watcher stops. The points in the spool {spool} ({}) are kept and uploaded first when `snapback watch` starts again; nothing newer is captured until then. Make the repository writable again (see the last upload error in `snapback status`), or give the spool more room (--spool-max, free disk space), then start the watcher",
            crate::output::human_bytes(w.batch.spool_bytes()),
        );
        tracing::error!(path = %w.path.display(), "{msg}");
        stop_report(w, status_dir, msg);
    }
    Some(exit::SPOOL_FULL)
}

/// Marks the watcher's report stopped (`status` shows it as a problem).
fn stop_report(w: &mut Watched, status_dir: Option<&std::path::Path>, msg: String) {
    w.status.pending_points = w.batch.pending().len() as u64;
    w.status.spool_bytes = w.batch.spool_bytes();
    w.status.stopped = Some(Event {
        time: snapback_core::time::now(),
        message: msg,
    });
    if let Some(dir) = status_dir {
        if let Err(e) = watch_status::save(dir, &w.status) {
            tracing::warn!(path = %w.path.display(), error = %e, "cannot write the watch status that `snapback status` reads");
        }
    }
}

/// Uploads every database's pending points (one segment each). A failed
/// upload is logged and recorded for `status`; its points stay pending.
fn upload_pending(
    g: &Global,
    repo: &Repository,
    lock: &mut UploadLock,
    state_dir: Option<&std::path::Path>,
    watched: &mut [Watched],
) -> anyhow::Result<()> {
    for w in watched {
        if w.batch.pending().is_empty() {
            continue;
        }
        let r = lock.ready(repo).and_then(|ready| {
            if ready {
                w.batch.upload(repo, lock, state_dir)
            } else {
                Ok(None)
            }
        });
        match r {
            Ok(Some(c)) => {
                w.failing = None;
                report_segment(g, w, &c)?;
            }
            Ok(None) => {
                if let Some(why) = w.batch.base_lost() {
                    w.status.last_fallback = Some(Event {
                        time: snapback_core::time::now(),
                        message: format!("{why}; the points pending over it were dropped and the next point is a new base manifest"),
                    });
                }
            }
            Err(e) => {
                let n = w.batch.pending().len();
                let e = anyhow::Error::new(e).context(format!(
                    "upload of {n} point(s) of {} failed; they stay pending and are uploaded when the repository can be written",
                    w.path.display()
                ));
                failed(
                    w,
                    &e,
                    "cannot upload points (retrying every upload interval)",
                );
            }
        }
    }
    Ok(())
}

/// The periodic self-check: verify-live on the watcher's own pinned
/// session. A mismatch is an error in the log and the status file, and
/// the next point is a new base manifest by a full scan (verify-live has
/// dropped the local capture state).
fn verify(repo: &Repository, a: &WatchArgs, state_dir: &std::path::Path, w: &mut Watched) {
    let opts = snapback_core::VerifyLiveOptions {
        state_dir: state_dir.to_path_buf(),
        rate: snapback_core::DEFAULT_VERIFY_RATE,
        busy_timeout: a.busy_timeout,
        pin_session: w.pin.is_some().then(|| w.session.clone()),
    };
    match repo.verify_live(&w.path, &opts) {
        Ok(r) => {
            w.status.last_verify = Some(watch_status::VerifyRecord::new(
                snapback_core::time::now(),
                r.pages_compared,
                &r.mismatching_pages,
            ));
            if r.equal() {
                tracing::info!(path = %w.path.display(), pages = r.pages_compared, "verify-live: the newest point's image equals the live database");
            } else {
                tracing::error!(path = %w.path.display(), pages = ?&r.mismatching_pages[..r.mismatching_pages.len().min(20)], "verify-live: {} of {} page(s) of the live database differ from the newest point's image; the next point is a full scan", r.mismatching_pages.len(), r.pages_compared);
                w.batch.drop_head();
                w.needs_manifest =
                    Some("verify-live found the image in memory differs from the database".into());
            }
        }
        Err(e) if e.kind() == snapback_core::Kind::BadInput => {
            tracing::info!(path = %w.path.display(), error = %e, "verify-live skipped");
        }
        Err(e) => {
            tracing::warn!(path = %w.path.display(), error = %e, "verify-live could not run; it is tried again at the next --verify-interval");
        }
    }
}

/// Logs a failure (once a minute while the same one repeats) and records
/// it for `status`.
fn failed(w: &mut Watched, e: &anyhow::Error, what: &str) {
    let msg = crate::output::error_lines(e).join(": ");
    w.status.last_upload_error = Some(Event {
        time: snapback_core::time::now(),
        message: msg.clone(),
    });
    let again = w
        .failing
        .as_ref()
        .is_some_and(|(at, m)| *m == msg && at.elapsed() < Duration::from_secs(60));
    if !again {
        tracing::error!(path = %w.path.display(), "{what}: {msg}");
        w.failing = Some((Instant::now(), msg));
    }
}

/// One database's tick: hand the pin over, then take a point if anything
/// was committed since the newest one.
fn tick(
    repo: &Repository,
    a: &WatchArgs,
    state_dir: Option<&PathBuf>,
    w: &mut Watched,
    first: bool,
) -> anyhow::Result<Outcome> {
    // The new pin begins before the old one ends (the assignment drops it)
    // and before the capture begins.
    let pinned = match Pin::begin(&w.path, PIN_BUSY) {
        Ok(Some(p)) => {
            w.pin = Some(p);
            w.wal_mode = true;
            true
        }
        Ok(None) => {
            w.pin = None;
            w.wal_mode = false;
            false
        }
        Err(e) => {
            tracing::warn!(path = %w.path.display(), error = %e, "cannot hold a read transaction this tick; a WAL restart may cost the next point a full scan");
            w.pin = None;
            false
        }
    };
    if !pinned {
        w.session = new_session();
    }
    // Spooled points the start could not make pending yet go first: no
    // point is taken before them.
    if w.batch.spool_waits() {
        if let Some(root) = state_dir {
            resume(repo, root, w).with_context(|| {
                format!(
                    "cannot continue from the points spooled for {}; nothing is taken until then",
                    w.path.display()
                )
            })?;
        }
    }
    let sig = Signature::take(&w.path, w.wal_mode);
    if first && w.batch.pending().is_empty() {
        if let Some(dir) = state_dir {
            if snapback_core::watch::last_capture_is_current(repo, dir, &w.path) {
                tracing::info!(path = %w.path.display(), "the newest point is current; the next point is taken when the database changes");
                w.last = Some(sig);
                return Ok(Outcome::Unchanged);
            }
        }
    }
    if w.last.as_ref().is_some_and(|l| l.unchanged(&sig)) {
        return Ok(Outcome::Unchanged);
    }
    if w.needs_manifest.is_none() {
        let session = pinned.then_some(w.session.as_str());
        match w.batch.take_point(repo, a.busy_timeout, session) {
            Ok(Taken::Point { spooled, .. }) => {
                w.last = Some(sig);
                return Ok(match spooled {
                    Spooled::Yes | Spooled::NoSpool => Outcome::Pending,
                    Spooled::Full { needed, limit } => Outcome::NotSpooled(format!(
                        "the local spool is full: the newest point would make it {} (--spool-max {})",
                        crate::output::human_bytes(needed),
                        crate::output::human_bytes(limit)
                    )),
                    Spooled::Failed(why) => {
                        Outcome::NotSpooled(format!("the newest point cannot be spooled: {why}"))
                    }
                });
            }
            Ok(Taken::NeedsManifest(why)) => {
                if w.batch.has_head() || w.points > 0 {
                    tracing::info!(path = %w.path.display(), reason = %why, "the next point is a new base manifest");
                }
                w.needs_manifest = Some(why);
            }
            Err(e) => {
                // As below: no continuation after a failed capture.
                w.session = new_session();
                return Err(anyhow::Error::new(e).context(format!(
                    "point of {} failed; nothing was taken",
                    w.path.display()
                )));
            }
        }
    }
    // A new base: after the pending points are uploaded (this tick).
    if !w.batch.pending().is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let why = w.needs_manifest.take().unwrap_or_default();
    match rebase(repo, a, state_dir, w, &why) {
        Ok(r) => {
            w.last = Some(sig);
            Ok(Outcome::Manifest(Box::new(r)))
        }
        Err(e) => {
            w.needs_manifest = Some(why);
            Err(e)
        }
    }
}

/// A new base manifest of one database, by the snapshot path.
fn rebase(
    repo: &Repository,
    a: &WatchArgs,
    state_dir: Option<&PathBuf>,
    w: &mut Watched,
    why: &str,
) -> anyhow::Result<SnapshotReport> {
    let opts = SnapshotOptions {
        tags: w.tags.clone(),
        lock_wait: a.lock_wait,
        state_dir: state_dir.cloned(),
        busy_timeout: a.busy_timeout,
        pin_session: w.pin.is_some().then(|| w.session.clone()),
        ..Default::default()
    };
    tracing::debug!(path = %w.path.display(), reason = %why, "writing a new base manifest");
    match w.batch.rebase(repo, &opts, None) {
        Ok(r) => Ok(r),
        Err(e) => {
            // The chain of pins since the newest point's capture is kept,
            // but a pin handed over after a failed capture may hold a mark
            // past that capture: no continuation from it.
            w.session = new_session();
            Err(anyhow::Error::new(e).context(format!(
                "point of {} failed; nothing was committed",
                w.path.display()
            )))
        }
    }
}

#[derive(serde::Serialize)]
struct PointLine<'a> {
    point: String,
    path: String,
    time: &'a str,
    method: &'static str,
    pages_read: Option<u64>,
}

fn report_manifest(g: &Global, w: &mut Watched, r: &SnapshotReport) -> anyhow::Result<()> {
    let method = r
        .manifest
        .files
        .first()
        .and_then(|f| f.sqlite.as_ref())
        .and_then(|s| s.capture.as_ref());
    if let (Some(CaptureMethod::FullScan { reason }), true) = (method, w.points > 0) {
        tracing::warn!(path = %w.path.display(), reason = %reason, "the point was taken by a full scan (read every page)");
        w.status.fallbacks += 1;
        w.status.last_fallback = Some(Event {
            time: snapback_core::time::now(),
            message: reason.clone(),
        });
    }
    let (name, pages_read) = match method {
        Some(CaptureMethod::WalDelta { pages_read }) => ("wal-delta", Some(*pages_read)),
        Some(CaptureMethod::FullScan { .. }) => ("full-scan", None),
        Some(CaptureMethod::Unchanged) => ("unchanged", None),
        None => ("full-scan", None),
    };
    let now = snapback_core::time::now();
    let time = snapback_core::time::parse_rfc3339(&r.manifest.time).unwrap_or(now);
    report_durable(g, w, &r.id.to_string(), time, name, pages_read)
}

fn report_segment(g: &Global, w: &mut Watched, c: &Committed) -> anyhow::Result<()> {
    tracing::debug!(path = %w.path.display(), segment = %c.segment.short(), points = c.points.len(), "points committed as a timeline segment");
    for (name, time, pages_read) in &c.points {
        report_durable(g, w, name, *time, "wal-delta", Some(*pages_read))?;
    }
    Ok(())
}

/// Reports a point, only once it is committed and verified: stdout, the
/// status file, `STATUS=`.
fn report_durable(
    g: &Global,
    w: &mut Watched,
    id: &str,
    time: snapback_core::time::Timestamp,
    method: &'static str,
    pages_read: Option<u64>,
) -> anyhow::Result<()> {
    w.points += 1;
    w.status.durable = Some(PointRef {
        time,
        id: id.to_string(),
    });
    w.status.last_upload = Some(snapback_core::time::now());
    let time_s = snapback_core::time::format_rfc3339_nanos(time);
    if g.json {
        // One line per point (JSON Lines), as they come.
        let line = PointLine {
            point: id.to_string(),
            path: w.path.display().to_string(),
            time: &time_s,
            method,
            pages_read,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else if !g.quiet {
        println!("{id}");
    }
    w.last_point = Some((id.to_string(), time_s));
    Ok(())
}

fn status_line(watched: &[Watched]) -> String {
    let newest = watched
        .iter()
        .filter_map(|w| w.last_point.as_ref().map(|p| (w, p)))
        .max_by(|a, b| a.1 .1.cmp(&b.1 .1));
    let total: u64 = watched.iter().map(|w| w.points).sum();
    match newest {
        Some((w, (id, time))) => format!(
            "STATUS=newest point {id} of {} at {time}; {total} point(s) since start",
            w.path.display()
        ),
        None => format!(
            "STATUS=watching {} database(s); unchanged since start",
            watched.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::ticks_per_upload;
    use std::time::Duration;

    #[test]
    fn uploads_start_one_tick_early_so_the_rpo_stays_within_the_upload_interval() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(ticks_per_upload(s(10), s(1)), 9);
        assert_eq!(ticks_per_upload(s(10), ms(200)), 49);
        assert_eq!(ticks_per_upload(s(2), s(1)), 1);
        assert_eq!(ticks_per_upload(s(1), s(1)), 1, "local: every tick");
    }
}
