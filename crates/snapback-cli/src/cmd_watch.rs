//! `snapback watch`: a foreground process that takes a restorable point of
//! each database every tick in which it changed (docs/watch.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use snapback_core::watch::{new_session, Pin, Signature};
use snapback_core::watch_status::{self, Event, PointRef, WatchStatus};
use snapback_core::{CaptureMethod, NoProgress, Repository, SnapshotOptions, SnapshotReport};
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
    /// Tag every point (repeatable; added to the config source's tags).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// How long to wait for a prune's exclusive lock, per point (a
    /// duration, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
    /// How long to wait, per point, for another process's lock on a
    /// database in rollback-journal mode (a writer, BEGIN EXCLUSIVE; a
    /// duration, or seconds); in WAL mode no writer is ever waited for.
    #[arg(long, value_name = "DURATION", default_value = crate::cmd_basic::DEFAULT_BUSY_TIMEOUT_ARG, value_parser = crate::duration::parse_seconds_or_duration)]
    pub busy_timeout: Duration,
}

/// How long a pin may wait to begin (only a WAL recovery or restart in
/// progress makes a reader wait).
const PIN_BUSY: Duration = Duration::from_secs(1);

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
}

enum Outcome {
    Unchanged,
    Point(Box<SnapshotReport>),
}

pub fn watch(g: &Global, cfg: &Config, a: WatchArgs) -> anyhow::Result<u8> {
    let interval = parse_duration(&a.interval).context("--interval")?;
    if interval < Duration::from_millis(10) {
        return Err(
            crate::Usage(format!("--interval {}: must be at least 10ms", a.interval)).into(),
        );
    }
    for t in &a.tags {
        crate::config::validate_tag(t)?;
    }
    let sources: Vec<(PathBuf, Vec<String>)> = if !a.paths.is_empty() {
        a.paths
            .iter()
            .map(|p| (absolute(p), a.tags.clone()))
            .collect()
    } else if !cfg.sources.is_empty() {
        cfg.sources
            .iter()
            .map(|s| (s.path.clone(), [s.tags.clone(), a.tags.clone()].concat()))
            .collect()
    } else {
        return Err(crate::Usage(
            "nothing to watch: give database paths, or list sources in snapback.toml (--config)"
                .into(),
        )
        .into());
    };
    let repo = open_repo(g)?;
    let state_dir = crate::repo_url::capture_state_root();
    let status_dir = state_dir.as_deref().map(watch_status::dir);
    let mut watched = Vec::new();
    for (path, tags) in sources {
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
            continue;
        }
        watched.push(Watched {
            tags,
            pin: None,
            wal_mode: true,
            last: None,
            session: new_session(),
            points: 0,
            last_point: None,
            failing: None,
            // Every point is durable when it is taken: the upload interval
            // is the tick.
            status: WatchStatus::new(
                &repo.config().repo_id,
                &path.to_string_lossy(),
                interval,
                interval,
            ),
            path,
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .context("cannot install the signal handlers")?;
    }
    tracing::info!(
        databases = watched.len(),
        interval_ms = interval.as_millis() as u64,
        "watching"
    );
    let mut ready = false;
    let mut first = true;
    let mut next = Instant::now();
    loop {
        let mut all_ok = true;
        for w in &mut watched {
            let r = tick(&repo, &a, state_dir.as_ref(), w, first);
            match r {
                Ok(Outcome::Unchanged) => w.failing = None,
                Ok(Outcome::Point(r)) => {
                    w.failing = None;
                    report_point(g, w, &r)?;
                }
                Err(e) => {
                    all_ok = false;
                    let msg = crate::output::error_lines(&e).join(": ");
                    w.status.last_upload_error = Some(Event {
                        time: snapback_core::time::now(),
                        message: msg.clone(),
                    });
                    let again = w
                        .failing
                        .as_ref()
                        .is_some_and(|(at, m)| *m == msg && at.elapsed() < Duration::from_secs(60));
                    if !again {
                        tracing::error!(path = %w.path.display(), "cannot take a point (retrying every tick): {msg}");
                        w.failing = Some((Instant::now(), msg));
                    }
                }
            }
        }
        first = false;
        for w in &mut watched {
            w.status.last_tick = Some(snapback_core::time::now());
            if let Some(dir) = &status_dir {
                if let Err(e) = watch_status::save(dir, &w.status) {
                    tracing::warn!(path = %w.path.display(), error = %e, "cannot write the watch status that `snapback status` reads");
                }
            }
        }
        if all_ok {
            if !ready {
                notify("READY=1");
                ready = true;
            }
            notify("WATCHDOG=1");
            notify(&status_line(&watched));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            let behind = now - next;
            if behind > interval {
                tracing::warn!(
                    behind_ms = behind.as_millis() as u64,
                    "falling behind: a tick took longer than --interval; points are taken as fast as they can be"
                );
            }
            next = now;
        }
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    notify("STOPPING=1");
    // Stopped on request: no report is left for `status` to call stale.
    if let Some(dir) = &status_dir {
        for w in &watched {
            let _ = watch_status::remove(dir, &w.status.repo_id, &w.status.path);
        }
    }
    tracing::info!(
        points = watched.iter().map(|w| w.points).sum::<u64>(),
        "stopped by a signal; every point reported is committed"
    );
    Ok(exit::OK)
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
    let sig = Signature::take(&w.path, w.wal_mode);
    if first {
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
    let opts = SnapshotOptions {
        tags: w.tags.clone(),
        lock_wait: a.lock_wait,
        state_dir: state_dir.cloned(),
        busy_timeout: a.busy_timeout,
        pin_session: pinned.then(|| w.session.clone()),
        ..Default::default()
    };
    match repo.snapshot(std::slice::from_ref(&w.path), &opts, &NoProgress) {
        Ok(r) => {
            w.last = Some(sig);
            Ok(Outcome::Point(Box::new(r)))
        }
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

fn report_point(g: &Global, w: &mut Watched, r: &SnapshotReport) -> anyhow::Result<()> {
    w.points += 1;
    let method = r
        .manifest
        .files
        .first()
        .and_then(|f| f.sqlite.as_ref())
        .and_then(|s| s.capture.as_ref());
    if let (Some(CaptureMethod::FullScan { reason }), true) = (method, w.points > 1) {
        tracing::warn!(path = %w.path.display(), reason = %reason, "the point was taken by a full scan (read every page)");
        w.status.fallbacks += 1;
        w.status.last_fallback = Some(Event {
            time: snapback_core::time::now(),
            message: reason.clone(),
        });
    }
    // Reported only now: the snapshot is committed and verified.
    let now = snapback_core::time::now();
    w.status.durable = Some(PointRef {
        time: snapback_core::time::parse_rfc3339(&r.manifest.time).unwrap_or(now),
        id: r.id.to_string(),
    });
    w.status.last_upload = Some(now);
    let (name, pages_read) = match method {
        Some(CaptureMethod::WalDelta { pages_read }) => ("wal-delta", Some(*pages_read)),
        Some(CaptureMethod::FullScan { .. }) => ("full-scan", None),
        Some(CaptureMethod::Unchanged) => ("unchanged", None),
        None => ("full-scan", None),
    };
    if g.json {
        // One line per point (JSON Lines), as they come.
        let line = PointLine {
            point: r.id.to_string(),
            path: w.path.display().to_string(),
            time: &r.manifest.time,
            method: name,
            pages_read,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else if !g.quiet {
        println!("{}", r.id);
    }
    w.last_point = Some((r.id.short(), r.manifest.time.clone()));
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
