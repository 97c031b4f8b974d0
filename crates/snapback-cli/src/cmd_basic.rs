//! init, snapshot, snapshots, restore, check.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use snapback_core::{
    CheckOptions, ChunkingParams, EncryptionOptions, InitOptions, Repository, RestoreOptions,
    Selector, Snapshot, SnapshotOptions,
};

use crate::cli::{absolute, Global};
use crate::config::Config;
use crate::exit;
use crate::output::{chose, human_bytes, print_json, Bar};
use crate::repo_url::{open_repo, open_store};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Pages per chunk for SQLite databases (1 stores the least per change).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub sqlite_pages_per_chunk: u32,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: i32,
    /// Encrypt the repository: a random master key, sealed by a passphrase
    /// (--password-file, SNAPBACK_PASSWORD, or asked twice on the terminal).
    #[arg(long)]
    pub encrypt: bool,
    /// Repository format version: 2 (the default) lets snapshots of a WAL
    /// database read only the pages written since the last capture; 1 can
    /// still be opened by older snapback releases (docs/format.md).
    #[arg(long, default_value_t = snapback_core::FORMAT_VERSION, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub format_version: u32,
    #[command(flatten)]
    pub kdf: crate::cmd_key::KdfArgs,
}

pub fn init(g: &Global, a: InitArgs) -> anyhow::Result<u8> {
    if !a.encrypt && crate::password::given(g) {
        // Every later command given this passphrase would refuse the
        // unencrypted repository: say so now.
        anyhow::bail!(
            "a passphrase was given (--password-file, --password-command, SNAPBACK_PASSWORD_FILE, SNAPBACK_PASSWORD_COMMAND or SNAPBACK_PASSWORD) but not --encrypt: add --encrypt for an encrypted repository, or unset the passphrase for an unencrypted one; nothing was created"
        );
    }
    let opts = InitOptions {
        chunking: ChunkingParams {
            sqlite_pages_per_chunk: a.sqlite_pages_per_chunk,
            ..Default::default()
        },
        compression_level: a.compression_level,
        encryption: None,
        format_version: a.format_version,
        ..Default::default()
    };
    let opts = if a.encrypt {
        let passphrase = crate::password::choose_initial(g)?;
        InitOptions {
            encryption: Some(EncryptionOptions {
                passphrase,
                kdf: a.kdf.params(),
            }),
            ..opts
        }
    } else {
        opts
    };
    // The passphrase first: a refused init leaves nothing behind.
    let store = open_store(g, true)?;
    let repo = Repository::init(store, &opts)?;
    if g.json {
        print_json(&crate::json::Init {
            repository: repo.store().location(),
            repo_id: repo.config().repo_id.clone(),
            encrypted: repo.is_encrypted(),
            format_version: repo.config().format_version,
        })?;
    } else if !g.quiet {
        println!(
            "created {}snapback repository {} at {}",
            if repo.is_encrypted() {
                "encrypted "
            } else {
                ""
            },
            repo.config().repo_id,
            repo.store().location()
        );
        if repo.is_encrypted() {
            println!("keep the passphrase safe: without it (or another key added with `snapback key add`) the data cannot be read by anyone, including you");
        }
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Files, directories and SQLite databases to capture. Without paths,
    /// every source in the config file, each as its own snapshot.
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Call this URL (http:// or https://, GET, 5 s at most) after every
    /// snapshot is committed, never on failure nor when files were left out
    /// (exit 6) (a dead man's switch such as healthchecks). If the call
    /// fails, the exit code is 5.
    #[arg(long)]
    pub heartbeat_url: Option<String>,
    /// How long to wait for a prune's exclusive lock (a duration, or
    /// seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
    /// How long to wait, per database, for another process's lock on it (a
    /// writer, BEGIN EXCLUSIVE; a duration, or seconds); the wait is logged.
    /// A database still locked then is left out of this snapshot (exit 6).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_BUSY_TIMEOUT_ARG, value_parser = crate::duration::parse_seconds_or_duration)]
    pub busy_timeout: Duration,
}

/// `snapshot --busy-timeout`'s default: the core's `DEFAULT_BUSY_TIMEOUT`,
/// in seconds (a test keeps them equal).
pub(crate) const DEFAULT_BUSY_TIMEOUT_ARG: &str = "10";

pub fn snapshot(g: &Global, cfg: &Config, a: SnapshotArgs) -> anyhow::Result<u8> {
    // A mistyped --heartbeat-url is refused before anything is done; a bad
    // one in the config must not stop the snapshots: it is reported after
    // them, with the heartbeat's exit code.
    let heartbeat: Option<Result<crate::heartbeat::Target, String>> =
        match (&a.heartbeat_url, &cfg.heartbeat_url) {
            (Some(u), _) => Some(Ok(crate::heartbeat::Target::parse(u)
                .map_err(|e| crate::Usage(format!("--heartbeat-url: {e}")))?)),
            (None, Some(u)) => Some(
                crate::heartbeat::Target::parse(u)
                    .map_err(|e| format!("heartbeat_url in the config: {e}")),
            ),
            (None, None) => None,
        };
    let repo = open_repo(g)?;
    let jobs = snapshot_jobs(cfg, &a)?;
    // Under --json, one document for the whole run, printed once every
    // source is done (docs/scripting.md).
    let one_job = jobs.len() == 1;
    let mut committed = Vec::new();
    let mut failed: Vec<(Vec<PathBuf>, anyhow::Error)> = Vec::new();
    let mut partial = 0;
    for (paths, tags) in jobs {
        let bar = Bar::new(g);
        let opts = SnapshotOptions {
            tags,
            lock_wait: a.lock_wait,
            state_dir: crate::repo_url::capture_state_root(),
            busy_timeout: a.busy_timeout,
            ..Default::default()
        };
        let r = repo.snapshot(&paths, &opts, &bar);
        bar.finish();
        let what = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let r = match r {
            Ok(r) => r,
            Err(e @ snapback_core::Error::NothingCaptured { .. }) => {
                eprintln!("error: snapshot of {what} failed; no file could be snapshotted, so nothing was committed:");
                if let snapback_core::Error::NothingCaptured { failed: files } = &e {
                    for f in files {
                        eprintln!("  {}: {}", f.path, f.reason);
                    }
                }
                failed.push((paths, anyhow::Error::new(e)));
                continue;
            }
            Err(e) => {
                let e = anyhow::Error::new(e)
                    .context(format!("snapshot of {what} failed; nothing was committed"));
                if one_job {
                    return Err(e);
                }
                eprintln!("error: {}", crate::output::error_lines(&e).join(": "));
                failed.push((paths, e));
                continue;
            }
        };
        if !r.failed.is_empty() {
            partial += 1;
            eprintln!(
                "error: snapshot {} of {what} is committed without {} file(s) that could not be snapshotted:",
                r.id.short(),
                r.failed.len()
            );
            for f in &r.failed {
                eprintln!("  {}: {}", f.path, f.reason);
            }
        }
        if !g.json && !g.quiet {
            println!("{}", r.id);
        }
        // The store's request counts so far, as each snapshot reported
        // them when it printed its own document.
        committed.push((r, repo.store().request_stats()));
    }
    if g.json {
        print_snapshot_json(one_job, &committed, &failed)?;
    }
    if let Some((_, first)) = failed.first() {
        return Err(failed_snapshots(first, &failed));
    }
    if partial > 0 {
        eprintln!(
            "error: {partial} snapshot(s) committed without some files (see above; exit {}); the heartbeat was not sent",
            exit::PARTIAL
        );
        return Ok(exit::PARTIAL);
    }
    let Some(target) = heartbeat else {
        return Ok(exit::OK);
    };
    match target.and_then(|t| crate::heartbeat::send(&t)) {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            eprintln!(
                "error: the heartbeat failed, but the snapshot is committed (exit {}): {e}",
                exit::HEARTBEAT_FAILED
            );
            Ok(exit::HEARTBEAT_FAILED)
        }
    }
}

/// The snapshots to take, each its paths and tags: the paths given (one
/// snapshot), else one per config source; every tag checked first.
fn snapshot_jobs(
    cfg: &Config,
    a: &SnapshotArgs,
) -> anyhow::Result<Vec<(Vec<PathBuf>, Vec<String>)>> {
    for t in &a.tags {
        crate::config::validate_tag(t)?;
    }
    if a.paths.is_empty() {
        for s in &cfg.sources {
            for t in &s.tags {
                crate::config::validate_tag(t).with_context(|| {
                    format!(
                        "in the config, tags of source {}; nothing was snapshotted",
                        s.path.display()
                    )
                })?;
            }
        }
    }
    Ok(if !a.paths.is_empty() {
        vec![(
            a.paths.iter().map(|p| absolute(p)).collect(),
            a.tags.clone(),
        )]
    } else if !cfg.sources.is_empty() {
        cfg.sources
            .iter()
            .map(|s| {
                (
                    vec![s.path.clone()],
                    [s.tags.clone(), a.tags.clone()].concat(),
                )
            })
            .collect()
    } else {
        anyhow::bail!(
            "nothing to snapshot: give PATH arguments, or list sources in snapback.toml (--config)"
        );
    })
}

/// `snapshot --json`: one snapshot's document, or the run's (every
/// snapshot committed and every source that failed).
fn print_snapshot_json(
    one_job: bool,
    committed: &[(
        snapback_core::SnapshotReport,
        snapback_storage::RequestStats,
    )],
    failed: &[(Vec<PathBuf>, anyhow::Error)],
) -> anyhow::Result<()> {
    if one_job {
        if let Some((r, req)) = committed.first() {
            print_json(&crate::json::Committed::new(r, req.clone()))?;
        }
    } else {
        print_json(&crate::json::SnapshotRun {
            snapshots: committed
                .iter()
                .map(|(r, req)| crate::json::Committed::new(r, req.clone()))
                .collect(),
            failed: failed
                .iter()
                .map(|(paths, e)| crate::json::FailedSource {
                    paths: paths.iter().map(|p| p.display().to_string()).collect(),
                    error: crate::output::error_object(e),
                })
                .collect(),
        })?;
    }
    Ok(())
}

/// The error of a run in which some snapshots failed: exit 11 only when
/// every failure was a held lock (waiting and running again would do it);
/// else the kind of the first other one.
fn failed_snapshots(
    first: &anyhow::Error,
    failed: &[(Vec<PathBuf>, anyhow::Error)],
) -> anyhow::Error {
    let kinds: Vec<_> = failed
        .iter()
        .map(|(_, e)| crate::output::error_kind(e))
        .collect();
    let kind = kinds
        .iter()
        .copied()
        .find(|k| *k != snapback_core::Kind::Locked)
        .unwrap_or_else(|| crate::output::error_kind(first));
    anyhow::Error::new(crate::Kinded(
        kind,
        format!(
            "{} snapshot(s) failed (see above); the heartbeat was not sent",
            failed.len()
        ),
    ))
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only snapshots holding this file, or files under this directory.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Only snapshots with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Accepted as on every reading command; listing never takes a lock.
    #[arg(long)]
    pub no_lock: bool,
    /// Also list timeline points (named SEGMENT/INDEX), each as a snapshot
    /// of its base's paths, host and tags.
    #[arg(long)]
    pub points: bool,
}

pub fn snapshots(g: &Global, a: SnapshotsArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    // Snapshots store canonical paths: match the same (a link, `..` or a
    // trailing slash must not hide them).
    let path = a.path.as_ref().map(|p| {
        crate::config::canonical_path(p)
            .to_string_lossy()
            .into_owned()
    });
    let all = if a.points {
        repo.snapshots_and_points()?
    } else {
        repo.snapshots()?
    };
    // Dated over every snapshot: a successor may be outside the filter.
    let dating = snapback_core::Dating::of(&all);
    let list: Vec<Snapshot> = all
        .into_iter()
        .filter(|s| path.as_deref().is_none_or(|p| s.holds(p)))
        .filter(|s| {
            a.tag
                .as_deref()
                .is_none_or(|t| s.manifest.tags.iter().any(|x| x == t))
        })
        .collect();
    let now = snapback_core::time::now();
    if !g.quiet {
        for s in list
            .iter()
            .filter(|s| snapback_core::is_future(s.time, now))
        {
            eprintln!(
                "warning: snapshot {} from host {} is dated {}, ahead of this host's clock (that host's clock was ahead when it was taken); `latest` and retention do not count it as the newest. Check the clock (NTP) of {}",
                s.name(),
                s.manifest.host,
                s.manifest.time,
                s.manifest.host
            );
        }
        for s in &list {
            if let Some(a) = dating.ahead(&s.id) {
                eprintln!(
                    "warning: snapshot {} from host {} is {}; `latest`, retention and `status` place it at {}. Check the clock (NTP) of {}",
                    s.name(),
                    s.manifest.host,
                    a.describe(),
                    snapback_core::time::format_rfc3339(dating.trusted(s)),
                    s.manifest.host
                );
            }
        }
    }
    if g.json {
        print_json(
            &list
                .iter()
                .map(|s| {
                    let changed = s.point.and_then(|p| {
                        let seg = repo.segment(&p.segment).ok()?;
                        seg.points.get(p.index).map(|x| x.changes.len())
                    });
                    crate::json::Listed::new(s, &dating, changed)
                })
                .collect::<Vec<_>>(),
        )?;
        return Ok(exit::OK);
    }
    // The time in full: pasted back as `@TIME`, it selects this snapshot.
    println!(
        "{:<10} {:<32} {:<12} {:<12} {:>10} {:>10}  paths",
        "id", "time", "host", "tags", "size", "added"
    );
    for s in &list {
        let m = &s.manifest;
        println!(
            "{:<10} {:<32} {:<12} {:<12} {:>10} {:>10}  {}",
            s.name(),
            format!(
                "{}{}",
                snapback_core::time::format_rfc3339_nanos(s.time),
                if snapback_core::is_future(s.time, now) {
                    " (future)"
                } else if dating.ahead(&s.id).is_some() {
                    " (clock ahead)"
                } else {
                    ""
                }
            ),
            m.host,
            m.tags.join(","),
            human_bytes(m.logical_size()),
            human_bytes(m.stats.bytes_added),
            m.paths.join(" ")
        );
    }
    if !g.quiet {
        let points = list.iter().filter(|s| s.point.is_some()).count();
        if a.points {
            eprintln!("{} snapshot(s), {points} point(s)", list.len() - points);
        } else {
            eprintln!("{} snapshot(s)", list.len());
        }
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot: an id or unique prefix, 'latest', or '@TIME' (RFC 3339).
    pub snap: String,
    /// Destination. A single file restores to DEST itself unless DEST is a
    /// directory (or ends with '/'); otherwise files go to DEST/<source path>.
    pub dest: PathBuf,
    /// Restore only this file, or the files under this directory.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// DEST is an existing copy of the file (a damaged or older database):
    /// read it once, write only the pages (chunks) that differ, extend or
    /// truncate it, and prove the result equals the snapshot. Writes into
    /// DEST in place: if interrupted, DEST is partly restored, and running
    /// the same command again finishes it. A DEST that does not exist is
    /// restored whole. Not for a database an application has open.
    #[arg(long, conflicts_with = "force")]
    pub delta: bool,
    /// Take no repository lock (as restic's --no-lock): for a repository
    /// that cannot be written. Nothing then stops a prune from deleting
    /// data while it is read (the restore would fail, never write wrong
    /// data). Without it, a read-only repository is read without a lock
    /// after one warning.
    #[arg(long)]
    pub no_lock: bool,
    /// How long to wait for a prune's exclusive lock (300s), and with
    /// --in-place also for the live database's write lock (10s): a
    /// duration (10s, 2m) or a number of seconds.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Option<Duration>,
    /// Restore into the live database DEST, open by its application:
    /// write only the pages that differ, through SQLite, in one
    /// transaction, after a pre-restore snapshot (the undo point). A dry
    /// run unless --apply.
    #[arg(long, conflicts_with_all = ["delta", "force"])]
    pub in_place: bool,
    /// With --in-place: write the pages (asks on a terminal).
    #[arg(long, requires = "in_place")]
    pub apply: bool,
    /// With --in-place --apply: do not ask (needed without a terminal).
    #[arg(long, requires = "apply")]
    pub yes: bool,
}

/// Resolves a selector, restricted to snapshots holding `path` if given, and
/// says which snapshot it chose.
pub fn resolve(
    g: &Global,
    repo: &Repository,
    sel: &str,
    path: Option<&str>,
) -> anyhow::Result<Snapshot> {
    let sel: Selector = sel.parse()?;
    // An explicit id means that snapshot; a path narrows 'latest' and '@TIME'
    // to the snapshots that hold it.
    let narrow = if matches!(sel, Selector::Id(_) | Selector::Point { .. }) {
        None
    } else {
        path
    };
    let snap = repo.resolve_for_path(&sel, narrow, &[])?;
    chose(g, &snap);
    Ok(snap)
}

pub fn restore(g: &Global, a: RestoreArgs) -> anyhow::Result<u8> {
    if a.in_place {
        return crate::cmd_inplace::restore_in_place(g, a);
    }
    let lock_wait = a.lock_wait.unwrap_or(Duration::from_secs(300));
    let repo = open_repo(g)?;
    // Canonical, as snapshots store paths (a link or `..` must match).
    let path = a.path.as_ref().map(|p| {
        crate::config::canonical_path(p)
            .to_string_lossy()
            .into_owned()
    });
    let snap = resolve(g, &repo, &a.snap, path.as_deref())?;
    let bar = Bar::new(g);
    let dest = if a.dest.to_string_lossy().ends_with('/') {
        a.dest.clone()
    } else {
        absolute(&a.dest)
    };
    let r = repo.restore(
        &snap,
        &dest,
        &RestoreOptions {
            force: a.force,
            path,
            lock_wait,
            no_lock: a.no_lock,
            delta: a.delta,
        },
        &bar,
    );
    bar.finish();
    let r = r.context("restore failed")?;
    if g.json {
        print_json(&crate::json::Restored {
            snapshot: snap.selector(),
            files: r.files,
            bytes: r.bytes,
            lock: r.lock.as_str(),
            delta: r.delta.as_ref().map(crate::json::DeltaRestored::from),
        })?;
    } else if !g.quiet {
        match &r.delta {
            Some(d) if d.dest_existed => {
                let (unit, compared, written) = match (d.pages_compared, d.pages_written) {
                    (Some(c), Some(w)) => ("pages", c, w),
                    _ => ("chunks", d.chunks_compared, d.chunks_written),
                };
                eprintln!(
                    "restored {} by delta: compared {compared} {unit}, wrote {written} {unit} ({}); proven equal to the snapshot",
                    dest.display(),
                    human_bytes(d.bytes_written)
                );
            }
            Some(_) => eprintln!(
                "{} did not exist: restored it whole, {}",
                dest.display(),
                human_bytes(r.bytes)
            ),
            None => eprintln!("restored {} file(s), {}", r.files, human_bytes(r.bytes)),
        }
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Read, decompress and hash every blob of every pack.
    #[arg(long)]
    pub read_data: bool,
    /// Take no repository lock (as restic's --no-lock), and record no
    /// result for `status`: for a repository that cannot be written. A
    /// prune at the same time could then make packs look missing. Without
    /// it, a read-only repository is checked without a lock after one
    /// warning.
    #[arg(long)]
    pub no_lock: bool,
    /// How long to wait for a prune's exclusive lock (a duration, or
    /// seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
}

pub fn check(g: &Global, a: CheckArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let bar = Bar::new(g);
    let r = repo.check(
        &CheckOptions {
            lock_wait: a.lock_wait,
            read_data: a.read_data,
            no_lock: a.no_lock,
        },
        &bar,
    );
    bar.finish();
    let r = r?;
    // Kept for `status`; a failure to record is reported but does not hide
    // the check's own result. Not tried where no lock could be written (the
    // repository is read-only: the warning said so) or none was wanted.
    match r.lock {
        snapback_core::LockState::Held => {
            if let Err(e) = repo.record_check(&r, a.read_data) {
                eprintln!("warning: could not record the check result for `status`: {e}");
            }
        }
        snapback_core::LockState::ReadOnly | snapback_core::LockState::Skipped => {
            tracing::info!("the check result is not recorded for `status` (no lock: the repository is read-only or --no-lock was given)");
        }
    }
    if g.json {
        print_json(&r)?;
    } else {
        for p in &r.problems {
            println!("PROBLEM {}: {}", p.object, p.problem);
            for af in &p.affects {
                println!(
                    "  affects snapshot {} ({}) file {}",
                    af.snapshot, af.time, af.file
                );
            }
        }
        if !g.quiet || !r.ok() {
            eprintln!(
                "checked {} snapshot(s), {} file(s), {} pack(s), {} blob(s){}: {}",
                r.snapshots,
                r.files,
                r.packs,
                r.blobs_checked,
                if a.read_data {
                    format!(", read {}", human_bytes(r.bytes_read))
                } else {
                    String::new()
                },
                if r.ok() {
                    "no problems".to_string()
                } else {
                    format!("{} PROBLEM(S)", r.problems.len())
                }
            );
        }
        for c in &r.clock_ahead {
            // A warning, not damage: the exit code stays that of the check.
            eprintln!(
                "warning: snapshot {} from host {} ({}) is {}; `latest`, retention and `status` place it at {}",
                &c.snapshot[..8.min(c.snapshot.len())],
                c.host,
                c.time,
                c.why.describe(),
                c.trusted_time
            );
        }
        if r.unindexed_packs > 0 && !g.quiet {
            eprintln!("note: {} pack(s) are not indexed (left by an interrupted snapshot); prune removes them", r.unindexed_packs);
        }
    }
    Ok(if r.ok() { exit::OK } else { exit::PROBLEMS })
}
