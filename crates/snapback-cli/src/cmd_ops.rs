//! Operations: forget, prune, unlock, release, status.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use snapback_core::{
    plan_forget, plan_scoped, KeepPolicy, PolicyScope, PruneOptions, PrunePlan, PruneReport,
    Repository, Selector,
};

use crate::cli::Global;
use crate::config::Config;
use crate::duration::parse_duration;
use crate::exit;
use crate::output::{chose, human_bytes, print_json};
use crate::repo_url::open_repo;

#[derive(Debug, Args, Default)]
pub struct ForgetArgs {
    /// Keep the N newest snapshots.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours.
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// … days.
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// … ISO weeks.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// … months.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// … years.
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot taken within DURATION (e.g. 2d, 12h) of the newest.
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable).
    #[arg(long)]
    pub keep_tag: Vec<String>,
    /// Keep every timeline point (of `snapback watch`) taken within
    /// DURATION (e.g. 24h) of the newest point or snapshot of its source;
    /// older points are kept only where a keep rule keeps them (counting
    /// points and snapshots together), the others are dropped. Without
    /// it, every point is kept.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_points: Option<String>,
    /// Show what would be kept and why; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: prune's --min-pack-age.
    #[arg(long, default_value = DEFAULT_MIN_PACK_AGE_ARG, value_name = "DURATION", requires = "prune")]
    pub min_pack_age: String,
    /// Allow a policy that removes every snapshot of a source.
    #[arg(long)]
    pub allow_empty: bool,
    /// How long to wait for the exclusive repository lock, which running
    /// snapshots and watchers hold off (a duration, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
}

fn policy_from_args(a: &ForgetArgs) -> anyhow::Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within.as_deref().map(parse_duration).transpose()?,
        tags: a.keep_tag.clone(),
    })
}

fn policy_from_config(r: &crate::config::Retention) -> anyhow::Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: r.keep_last,
        hourly: r.keep_hourly,
        daily: r.keep_daily,
        weekly: r.keep_weekly,
        monthly: r.keep_monthly,
        yearly: r.keep_yearly,
        within: r.keep_within.as_deref().map(parse_duration).transpose()?,
        tags: r.keep_tag.clone(),
    })
}

pub fn forget(g: &Global, cfg: &Config, a: ForgetArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let flags = policy_from_args(&a)?;
    // Exclusive, as prune's, and taken before anything is read, so that
    // the plan is made from the repository as it stays until the removals
    // are done: no snapshot or watcher (shared locks) writes a manifest or
    // a segment meanwhile. A watcher lets its lock go every minute, its
    // pending points uploaded first; a base manifest no segment names yet
    // is then a snapshot like any other, and a watcher that finds its base
    // removed writes a new one. A dry run removes nothing and takes none.
    let lock = if a.dry_run {
        None
    } else {
        Some(repo.lock(snapback_core::LockKind::Exclusive, "forget", a.lock_wait)?)
    };
    // Strict: a damaged manifest is a snapshot retention cannot see, so
    // `--keep-last N` would count past it and remove good ones.
    let snaps = repo.snapshots_strict().map_err(|e| {
        anyhow::anyhow!(
            "{e}\nforget refuses to apply a retention policy while a manifest is unreadable: it would count the wrong snapshots. Run `snapback check`, save what you need, then move the damaged manifest away"
        )
    })?;
    let released = repo.released()?;
    let points_within = a
        .keep_within_points
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--keep-within-points")?;
    let (plan, point_scopes) =
        plan_retention(cfg, &a, &flags, &snaps, &released, points_within.is_some())?;
    let points = match points_within {
        Some(d) => Some(repo.plan_points(
            &snaps,
            &point_scopes,
            &released,
            d,
            snapback_core::time::now(),
        )?),
        None => None,
    };
    // A manifest that timeline points are replayed from stays while they
    // do (the points are thinned first).
    let mut plan = plan;
    repo.keep_timeline_bases_after(&mut plan, points.as_ref().map(|p| p.remaining()).as_ref())?;
    // --json: one document, printed once the run is done (with --prune,
    // the prune's report is in it too).
    if g.json {
        if a.dry_run {
            print_json(&crate::json::ForgetDryRun {
                plan: &plan,
                points: points.as_ref(),
            })?;
        }
    } else if !g.quiet || a.dry_run {
        // A dry run exists to show its plan; -q hides the plan of a real run.
        print_forget_plan(&plan, points.as_ref());
    }
    if a.dry_run {
        if !g.quiet {
            eprintln!("dry run: nothing was removed");
        }
        return Ok(exit::OK);
    }
    // Points first: a base is removed only once no segment over it is
    // left (apply_forget checks that again against the segments then).
    let points_applied = points.as_ref().map(|p| repo.apply_points(p)).transpose()?;
    let removed = repo.apply_forget(&plan)?;
    // Let go before --prune takes its own exclusive lock.
    drop(lock);
    if !g.quiet && !g.json {
        eprintln!("removed {removed} snapshot(s)");
        if let Some(p) = &points_applied {
            eprintln!(
                "dropped {} timeline point(s): {} segment(s) rewritten, {} deleted",
                p.points_dropped, p.segments_rewritten, p.segments_deleted
            );
        }
    }
    let pruned = if a.prune {
        let p = PruneArgs {
            dry_run: false,
            lock_wait: a.lock_wait,
            min_pack_age: a.min_pack_age.clone(),
        };
        let (plan, report) = run_prune(g, &p)?;
        if !g.json {
            print_prune(g, &p, &plan, &report);
        }
        Some((plan, report))
    } else {
        None
    };
    if g.json {
        print_json(&crate::json::Forgotten {
            plan: &plan,
            removed,
            points: points.as_ref(),
            points_applied: points_applied.as_ref(),
            prune: pruned.as_ref().map(|(plan, report)| crate::json::Pruned {
                plan,
                report,
                dry_run: false,
            }),
        })?;
    }
    Ok(exit::OK)
}

/// The snapshots' retention plan, and the policies the points are thinned
/// by (the same as the snapshots'). Flags apply to every snapshot;
/// without flags, each configured source's retention covers the snapshots
/// that hold it, and a snapshot that holds several sources is removed
/// only when every one of their policies allows it: one plan, each group
/// listed once. With only --keep-within-points, every snapshot stays.
fn plan_retention(
    cfg: &Config,
    a: &ForgetArgs,
    flags: &KeepPolicy,
    snaps: &[snapback_core::Snapshot],
    released: &std::collections::HashSet<snapback_core::Id>,
    thin_points: bool,
) -> anyhow::Result<(snapback_core::ForgetPlan, Vec<PolicyScope>)> {
    if !flags.is_empty() {
        let scope = PolicyScope {
            source: None,
            policy: Some(flags.clone()),
            covers: snaps.iter().map(|s| s.id).collect(),
        };
        Ok((
            plan_forget(snaps, flags, released, a.allow_empty)?,
            vec![scope],
        ))
    } else if !cfg.sources.is_empty() {
        let scopes = source_scopes(cfg, snaps)?;
        let plan = plan_scoped(
            snaps,
            &scopes,
            released,
            a.allow_empty,
            snapback_core::time::now(),
        )?;
        Ok((plan, scopes))
    } else if thin_points {
        // Only points are thinned: every snapshot stays.
        let all = PolicyScope {
            source: None,
            policy: None,
            covers: snaps.iter().map(|s| s.id).collect(),
        };
        let mut p = plan_scoped(snaps, &[all], released, true, snapback_core::time::now())?;
        for d in p.groups.iter_mut().flat_map(|g| g.keep.iter_mut()) {
            for r in d.reasons.iter_mut().filter(|r| *r == "no retention policy") {
                *r = "no keep rule given (only points are thinned)".into();
            }
        }
        Ok((p, vec![]))
    } else {
        Ok((plan_forget(snaps, flags, released, a.allow_empty)?, vec![]))
    }
}

/// Each configured source's retention policy (none: its snapshots are
/// all kept) and the snapshots that hold the source.
fn source_scopes(
    cfg: &Config,
    snaps: &[snapback_core::Snapshot],
) -> anyhow::Result<Vec<PolicyScope>> {
    let mut scopes = vec![];
    for s in &cfg.sources {
        let p = s.path.to_string_lossy().into_owned();
        let policy = match &s.retention {
            Some(r) => {
                let pol = policy_from_config(r).with_context(|| {
                    format!("invalid retention of {p} in the config file; nothing was removed")
                })?;
                (!pol.is_empty()).then_some(pol)
            }
            None => None,
        };
        if policy.is_none() {
            tracing::warn!(
                "source {p} has no retention policy in the config ([source.retention] with keep_last, keep_daily, …): its snapshots are all kept"
            );
        }
        let covers = snaps
            .iter()
            .filter(|x| x.manifest.paths.contains(&p))
            .map(|x| x.id)
            .collect();
        scopes.push(PolicyScope {
            source: Some(p),
            policy,
            covers,
        });
    }
    Ok(scopes)
}

/// The plan of `forget`, for people: each group's snapshots kept (and
/// why) and removed, then each segment's points dropped.
fn print_forget_plan(plan: &snapback_core::ForgetPlan, points: Option<&snapback_core::PointPlan>) {
    for grp in &plan.groups {
        println!(
            "{} on {}: keep {}, remove {}",
            grp.paths.join(" "),
            grp.host,
            grp.keep.len(),
            grp.remove.len()
        );
        for d in &grp.keep {
            println!(
                "  keep   {} {}  ({})",
                d.short_id,
                d.time,
                d.reasons.join(", ")
            );
        }
        for d in &grp.remove {
            println!("  remove {} {}", d.short_id, d.time);
        }
    }
    for sp in points.iter().flat_map(|p| &p.segments) {
        println!(
            "points of {} on {} (segment {}): keep {}, drop {}",
            sp.path,
            sp.host,
            sp.short_id,
            sp.keep.len(),
            sp.drop.len()
        );
        for d in &sp.drop {
            match &d.copy_kept {
                Some(c) => println!(
                    "  drop point {} {} (a copy: the point stays as {c})",
                    d.name, d.time
                ),
                None => println!("  drop point {} {}", d.name, d.time),
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the exclusive repository lock (a duration, or
    /// seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
    /// Never delete or repack a pack the store wrote less than DURATION ago
    /// (a snapshot still running, paused, or on a host with a wrong clock
    /// may be writing it). Lower it only when no snapshot can be running.
    #[arg(long, default_value = DEFAULT_MIN_PACK_AGE_ARG, value_name = "DURATION")]
    pub min_pack_age: String,
}

/// `DEFAULT_MIN_PACK_AGE`, as the flag writes it.
const DEFAULT_MIN_PACK_AGE_ARG: &str = "24h";

pub fn prune(g: &Global, a: PruneArgs) -> anyhow::Result<u8> {
    let (plan, report) = run_prune(g, &a)?;
    if g.json {
        print_json(&crate::json::Pruned {
            plan: &plan,
            report: &report,
            dry_run: a.dry_run,
        })?;
    } else {
        print_prune(g, &a, &plan, &report);
    }
    Ok(exit::OK)
}

fn run_prune(g: &Global, a: &PruneArgs) -> anyhow::Result<(PrunePlan, PruneReport)> {
    let min_pack_age = parse_duration(&a.min_pack_age).context("invalid --min-pack-age")?;
    let repo = open_repo(g)?;
    Ok(repo.prune(&PruneOptions {
        lock_wait: a.lock_wait,
        dry_run: a.dry_run,
        min_pack_age,
    })?)
}

/// Prune's summary, on stderr, unless quiet.
fn print_prune(g: &Global, a: &PruneArgs, plan: &PrunePlan, report: &PruneReport) {
    if !g.quiet {
        eprintln!(
            "{} snapshot(s) reference {} blob(s); {} pack(s): delete {}, repack {} ({} to free, {} to move, {} kept)",
            plan.snapshots,
            plan.used_blobs,
            plan.packs_total,
            plan.delete_packs.len(),
            plan.repack_packs.len(),
            human_bytes(plan.bytes_deleted),
            human_bytes(plan.bytes_repacked),
            human_bytes(plan.bytes_kept)
        );
        if plan.young_packs > 0 {
            eprintln!(
                "kept {} pack(s) ({}) written less than {} ago, whether referenced or not (--min-pack-age)",
                plan.young_packs,
                human_bytes(plan.bytes_young),
                a.min_pack_age
            );
        }
        if a.dry_run {
            eprintln!("dry run: nothing was deleted");
        } else {
            eprintln!(
                "deleted {} pack(s) ({}), wrote {} repacked pack(s) ({}): freed {}",
                report.packs_deleted,
                human_bytes(report.bytes_deleted),
                report.packs_written,
                human_bytes(report.bytes_written),
                human_bytes(report.bytes_freed)
            );
        }
    }
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, not only stale ones. Only when no snapback process
    /// is running against this repository.
    #[arg(long)]
    pub force: bool,
}

pub fn unlock(g: &Global, a: UnlockArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let before = repo.locks()?;
    let removed = repo.unlock(a.force)?;
    if g.json {
        print_json(&crate::json::Unlocked {
            removed: &removed,
            remaining: before.len() - removed.len(),
        })?;
    } else {
        // The removed locks are the result (hidden by -q); a kept one is a
        // warning, always printed.
        if !g.quiet {
            for l in &removed {
                println!(
                    "removed {} ({}): {}",
                    l.key,
                    if l.stale { "stale" } else { "forced" },
                    l.describe()
                );
            }
        }
        for l in before
            .iter()
            .filter(|l| !removed.iter().any(|r| r.key == l.key))
        {
            eprintln!(
                "warning: kept {}: {}, a live process; use --force only if you are sure it is gone",
                l.key,
                l.describe()
            );
        }
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The pre-repair snapshot that retention may now remove.
    pub snap: String,
}

pub fn release(g: &Global, a: ReleaseArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let sel: Selector = a.snap.parse()?;
    let snap = repo.resolve_for_path(&sel, None, &[])?;
    if snap.point.is_some() {
        return Err(snapback_core::Error::Selector(format!(
            "{} is a timeline point, not a pre-repair snapshot; give the id of the pre-repair snapshot to release (`snapback snapshots --tag pre-repair`)",
            snap.describe()
        ))
        .into());
    }
    chose(g, &snap);
    repo.release(&snap.id)?;
    if !g.quiet {
        eprintln!("released {}: retention may remove it now", snap.describe());
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit 3 when a source's newest snapshot is older than this (e.g. 30m).
    #[arg(long)]
    pub max_age: Option<String>,
    /// Exit 3 when a source's RPO (the age of its newest durable point:
    /// a snapshot, or a point of `snapback watch`) is past this (e.g. 30s).
    /// Overrides each source's `max_rpo` in the config file.
    #[arg(long, value_name = "DURATION")]
    pub max_rpo: Option<String>,
    /// Print the Prometheus text format; with a FILE, write it there
    /// atomically (for node_exporter's textfile collector).
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    pub prometheus: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct FutureSnapshot {
    id: String,
    time: String,
    /// How far its time is ahead of this host's clock.
    ahead_seconds: i64,
}

#[derive(Debug, serde::Serialize)]
struct ClockAheadSnapshot {
    id: String,
    time: String,
    /// Where `status`, `latest` and retention place it.
    trusted_time: String,
    why: snapback_core::Ahead,
}

#[derive(Debug, serde::Serialize)]
struct SourceStatus {
    source: String,
    /// The host that took the snapshots; `None` for a configured source
    /// that no host has snapshotted.
    host: Option<String>,
    /// Listed in the config (or no config lists sources): judged by
    /// `--max-age` and in the exit code. Others are listed only.
    monitored: bool,
    /// The newest snapshot that is not dated in the future.
    last_snapshot: Option<String>,
    last_snapshot_time: Option<String>,
    /// Never negative: a snapshot up to a minute ahead counts as taken now.
    age_seconds: Option<i64>,
    size: u64,
    bytes_added: u64,
    duration_ms: u64,
    stale: bool,
    /// Snapshots dated ahead of this host's clock (the taking host's clock
    /// was ahead): suspicious, reported, and never counted as the newest.
    future_snapshots: Vec<FutureSnapshot>,
    /// Snapshots dated ahead of the store's clock or of a snapshot written
    /// after them: reported, and judged at their trusted time.
    clock_ahead_snapshots: Vec<ClockAheadSnapshot>,
    /// Seconds since the newest durable point of the source (the newest
    /// snapshot or timeline point, by trusted time); null when none.
    rpo_seconds: Option<f64>,
    /// What the RPO is measured from: "point" (the newest durable point)
    /// or "watcher" (the last tick of a healthy watcher that has nothing
    /// pending, i.e. found no change newer than that point); null with no
    /// point.
    rpo_basis: Option<&'static str>,
    /// The newest durable point's time.
    newest_point_time: Option<String>,
    /// The RPO bound applied (`--max-rpo`, else the source's `max_rpo`).
    max_rpo_seconds: Option<f64>,
    /// The RPO is past the bound (or there is no point at all).
    rpo_exceeded: bool,
    /// What the watcher of this source on this host reports; null when no
    /// watcher has run for it here.
    watch: Option<crate::status_watch::WatchRow>,
    /// ok, STALE, FUTURE, RPO, WATCH, never, or unmonitored.
    state: String,
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// "1h02m03s", "4m05s", "-" for none.
pub(crate) fn human_age(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(a) if a >= 3600 => format!("{}h{:02}m{:02}s", a / 3600, a % 3600 / 60, a % 60),
        Some(a) => format!("{}m{:02}s", a / 60, a % 60),
    }
}

pub fn status(g: &Global, cfg: &Config, a: StatusArgs) -> anyhow::Result<u8> {
    let limits = StatusLimits::of(cfg, &a)?;
    let repo = open_repo(g)?;
    let now = snapback_core::time::now();
    let snaps = repo.snapshots()?;
    let mut watchers = crate::status_watch::rows(&repo.config().repo_id, now)?;
    // The newest of a row is the newest by trusted time (see `Dating`): a
    // snapshot dated ahead of the store's clock or of its successor never
    // passes for the newest, nor makes a stale source look fresh.
    let dating = snapback_core::Dating::of(&snaps);
    let newest_points = newest_points(&repo, &snaps, now)?;
    let configured: Vec<String> = cfg
        .sources
        .iter()
        .map(|s| s.path.to_string_lossy().into_owned())
        .collect();
    let by_source = rows_by_source(&snaps, &dating, now, &newest_points, &watchers, &configured);
    let judge = Judge {
        now,
        dating: &dating,
        limits: &limits,
        configured: &configured,
        newest_points: &newest_points,
        snaps: &snaps,
    };
    let mut rows = vec![];
    for ((source, host), (snap, future)) in &by_source {
        let watch = host.as_ref().and_then(|h| {
            watchers
                .iter()
                .position(|w| &w.report.path == source && &w.report.host == h)
                .map(|i| watchers.swap_remove(i))
        });
        rows.push(judge.row(source, host, *snap, future, watch));
    }
    let checks = repo.last_checks()?;
    let problem = rows.iter().any(|r| {
        r.monitored
            && (r.stale
                || r.rpo_exceeded
                || !r.future_snapshots.is_empty()
                || r.watch.as_ref().is_some_and(|w| !w.problems.is_empty()))
    }) || checks.failed();
    if !g.quiet {
        warn_status(&rows);
    }

    if let Some(target) = &a.prometheus {
        let text = prometheus_text(&repo, &rows, &checks, snaps.len())?;
        write_prometheus(target, &text)?;
    } else if g.json {
        print_json(&crate::json::Status {
            ok: !problem,
            sources: &rows,
            checks: &checks,
            last_check: checks.newest(),
        })?;
    } else {
        print_status_table(&rows, &checks);
    }
    Ok(if problem { exit::PROBLEMS } else { exit::OK })
}

/// The bounds `status` judges by: `--max-age` (else the config's
/// `max_age`), `--max-rpo`, and each configured source's `max_rpo`.
struct StatusLimits {
    max_age: Option<Duration>,
    flag_rpo: Option<Duration>,
    source_rpo: BTreeMap<String, Duration>,
}

impl StatusLimits {
    fn of(cfg: &Config, a: &StatusArgs) -> anyhow::Result<StatusLimits> {
        let max_age = match (&a.max_age, &cfg.max_age) {
            (Some(m), _) => Some(parse_duration(m)?),
            (None, Some(m)) => Some(parse_duration(m).context(
                "invalid max_age in the config file (give --max-age, or fix the config)",
            )?),
            (None, None) => None,
        };
        let flag_rpo = a.max_rpo.as_deref().map(parse_duration).transpose()?;
        let mut source_rpo = BTreeMap::new();
        for src in &cfg.sources {
            if let Some(m) = &src.max_rpo {
                let d = parse_duration(m).with_context(|| {
                    format!(
                        "invalid max_rpo of source {} in the config file (give --max-rpo, or fix the config)",
                        src.path.display()
                    )
                })?;
                source_rpo.insert(src.path.to_string_lossy().into_owned(), d);
            }
        }
        Ok(StatusLimits {
            max_age,
            flag_rpo,
            source_rpo,
        })
    }
}

/// The newest point of each timeline segment, per database path and the
/// host of its base (points dated in the future are not counted).
fn newest_points(
    repo: &snapback_core::Repository,
    snaps: &[snapback_core::Snapshot],
    now: snapback_core::time::Timestamp,
) -> anyhow::Result<BTreeMap<(String, String), snapback_core::time::Timestamp>> {
    let mut newest_points: BTreeMap<(String, String), snapback_core::time::Timestamp> =
        BTreeMap::new();
    let hosts: BTreeMap<_, _> = snaps.iter().map(|s| (s.id, &s.manifest.host)).collect();
    for (_, seg) in repo.segments()? {
        let (Some(host), Some(last)) = (
            hosts.get(&seg.base),
            seg.points
                .iter()
                .rev()
                .find(|p| !snapback_core::is_future(p.time, now)),
        ) else {
            continue;
        };
        let e = newest_points
            .entry((seg.path.clone(), (*host).clone()))
            .or_insert(last.time);
        *e = (*e).max(last.time);
    }
    Ok(newest_points)
}

/// A row's newest snapshot by trusted time, and its snapshots dated in
/// the future.
type SourceRow<'a> = (
    Option<&'a snapback_core::Snapshot>,
    Vec<&'a snapback_core::Snapshot>,
);

/// One row per source path and host: each host's newest is judged on its
/// own, so a host that stopped snapshotting is noticed. Sources that only
/// have timeline points or a watcher get a row, and so does each
/// configured source that has nothing at all (host None).
fn rows_by_source<'a>(
    snaps: &'a [snapback_core::Snapshot],
    dating: &snapback_core::Dating,
    now: snapback_core::time::Timestamp,
    newest_points: &BTreeMap<(String, String), snapback_core::time::Timestamp>,
    watchers: &[crate::status_watch::WatchRow],
    configured: &[String],
) -> BTreeMap<(String, Option<String>), SourceRow<'a>> {
    let mut by_source: BTreeMap<(String, Option<String>), SourceRow> = BTreeMap::new();
    for s in snaps {
        for p in &s.manifest.paths {
            let row = by_source
                .entry((p.clone(), Some(s.manifest.host.clone())))
                .or_default();
            if snapback_core::is_future(s.time, now) {
                row.1.push(s);
            } else if row.0.is_none_or(|n| dating.cmp(s, n).is_gt()) {
                row.0 = Some(s);
            }
        }
    }
    for (path, host) in newest_points.keys() {
        by_source
            .entry((path.clone(), Some(host.clone())))
            .or_default();
    }
    for w in watchers {
        by_source
            .entry((w.report.path.clone(), Some(w.report.host.clone())))
            .or_default();
    }
    for c in configured {
        if !by_source.keys().any(|(p, _)| p == c) {
            by_source.insert((c.clone(), None), (None, vec![]));
        }
    }
    by_source
}

/// What a row of `status` is judged with.
struct Judge<'a> {
    now: snapback_core::time::Timestamp,
    dating: &'a snapback_core::Dating,
    limits: &'a StatusLimits,
    configured: &'a [String],
    newest_points: &'a BTreeMap<(String, String), snapback_core::time::Timestamp>,
    snaps: &'a [snapback_core::Snapshot],
}

impl Judge<'_> {
    /// The status of one source on one host: its newest snapshot, age,
    /// RPO and the state they give.
    fn row(
        &self,
        source: &String,
        host: &Option<String>,
        snap: Option<&snapback_core::Snapshot>,
        future: &[&snapback_core::Snapshot],
        watch: Option<crate::status_watch::WatchRow>,
    ) -> SourceStatus {
        let (now, dating) = (self.now, self.dating);
        let monitored = self.configured.is_empty() || self.configured.contains(source);
        let age_ms = snap.map(|s| (now - dating.trusted(s)).whole_milliseconds().max(0));
        let age = age_ms.map(|a| (a / 1000) as i64);
        let stale = monitored
            && match (self.limits.max_age, age_ms) {
                (Some(m), Some(a)) => a > m.as_millis() as i128,
                (Some(_), None) => true,
                _ => false,
            };
        let size = snap
            .map(|s| {
                s.manifest
                    .files
                    .iter()
                    .filter(|f| snapback_core::path_matches(&f.path, source))
                    .map(|f| f.size)
                    .sum()
            })
            .unwrap_or(0);
        let segment_point = host.as_ref().and_then(|h| {
            self.newest_points
                .get(&(source.clone(), h.clone()))
                .copied()
        });
        let newest_point = snap.map(|s| dating.trusted(s)).max(segment_point);
        let (rpo, rpo_basis) = rpo_of(newest_point, watch.as_ref(), now);
        let max_rpo = self
            .limits
            .flag_rpo
            .or_else(|| self.limits.source_rpo.get(source).copied());
        let rpo_exceeded = monitored
            && match (max_rpo, rpo) {
                (Some(m), Some(r)) => r > m.as_secs_f64(),
                (Some(_), None) => true,
                _ => false,
            };
        let watch_problem = watch.as_ref().is_some_and(|w| !w.problems.is_empty());
        let state = if !monitored {
            "unmonitored"
        } else if !future.is_empty() {
            "FUTURE"
        } else if stale {
            "STALE"
        } else if rpo_exceeded {
            "RPO"
        } else if watch_problem {
            "WATCH"
        } else if snap.is_none() {
            "never"
        } else {
            "ok"
        };
        SourceStatus {
            source: source.clone(),
            host: host.clone(),
            monitored,
            last_snapshot: snap.map(|s| s.id.to_hex()),
            last_snapshot_time: snap.map(|s| s.manifest.time.clone()),
            age_seconds: age,
            size,
            bytes_added: snap.map(|s| s.manifest.stats.bytes_added).unwrap_or(0),
            duration_ms: snap.map(|s| s.manifest.stats.duration_ms).unwrap_or(0),
            stale,
            future_snapshots: future
                .iter()
                .map(|s| FutureSnapshot {
                    id: s.id.to_hex(),
                    time: s.manifest.time.clone(),
                    ahead_seconds: (s.time - now).whole_seconds(),
                })
                .collect(),
            clock_ahead_snapshots: self.clock_ahead(source, host),
            rpo_seconds: rpo,
            rpo_basis,
            newest_point_time: newest_point.map(snapback_core::time::format_rfc3339),
            max_rpo_seconds: max_rpo.map(|m| m.as_secs_f64()),
            rpo_exceeded,
            watch,
            state: state.into(),
        }
    }

    /// The snapshots of `source` from `host` whose clock was ahead.
    fn clock_ahead(&self, source: &String, host: &Option<String>) -> Vec<ClockAheadSnapshot> {
        self.snaps
            .iter()
            .filter(|s| {
                s.manifest.host.as_str() == host.as_deref().unwrap_or("")
                    && s.manifest.paths.contains(source)
            })
            .filter_map(|s| {
                self.dating.ahead(&s.id).map(|a| ClockAheadSnapshot {
                    id: s.id.to_hex(),
                    time: s.manifest.time.clone(),
                    trusted_time: snapback_core::time::format_rfc3339(self.dating.trusted(s)),
                    why: a.clone(),
                })
            })
            .collect()
    }
}

/// The warnings of `status` on stderr: snapshots dated in the future or
/// from a clock that was ahead, and what each watcher reports.
fn warn_status(rows: &[SourceStatus]) {
    for r in rows {
        for f in &r.future_snapshots {
            eprintln!(
                "warning: snapshot {} of {} from host {} is dated {}, {} ahead of this host's clock: that host's clock was ahead when it was taken. It is not counted as the newest; check the clock (NTP) of {}",
                &f.id[..8],
                r.source,
                r.host.as_deref().unwrap_or("?"),
                f.time,
                human_age(Some(f.ahead_seconds)),
                r.host.as_deref().unwrap_or("?")
            );
        }
        if let Some(w) = &r.watch {
            for p in w.problems.iter().chain(&w.warnings) {
                eprintln!("warning: {}: {p}", r.source);
            }
        }
        for c in &r.clock_ahead_snapshots {
            eprintln!(
                "warning: snapshot {} of {} from host {} is {}; it is judged as taken at {}. Check the clock (NTP) of {}",
                &c.id[..8],
                r.source,
                r.host.as_deref().unwrap_or("?"),
                c.why.describe(),
                c.trusted_time,
                r.host.as_deref().unwrap_or("?")
            );
        }
    }
}

/// `--prometheus TARGET`: stdout for "-", else the file, replaced whole
/// (written beside it, synced, then renamed over it).
fn write_prometheus(target: &str, text: &str) -> anyhow::Result<()> {
    if target == "-" {
        print!("{text}");
        return Ok(());
    }
    let path = PathBuf::from(target);
    let tmp = path.with_extension("prom.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

/// The table `status` prints without `--json`: a line per row, a line per
/// watcher, and the last checks.
fn print_status_table(rows: &[SourceStatus], checks: &snapback_core::LastChecks) {
    println!(
        "{:<40} {:<12} {:<10} {:<32} {:>10} {:>10} {:>10}  state",
        "source", "host", "snapshot", "time", "age", "size", "rpo"
    );
    for r in rows {
        println!(
            "{:<40} {:<12} {:<10} {:<32} {:>10} {:>10} {:>10}  {}",
            r.source,
            r.host.as_deref().unwrap_or("-"),
            r.last_snapshot.as_deref().map(|s| &s[..8]).unwrap_or("-"),
            r.last_snapshot_time.as_deref().unwrap_or("never"),
            human_age(r.age_seconds),
            human_bytes(r.size),
            human_rpo(r.rpo_seconds),
            r.state
        );
    }
    for r in rows {
        if let Some(w) = &r.watch {
            println!("watch {}: {}", r.source, crate::status_watch::summary(w));
        }
    }
    for (name, c, hint) in [
        (
            "structure",
            &checks.structure,
            "run `snapback check` from cron",
        ),
        (
            "read-data",
            &checks.read_data,
            "run `snapback check --read-data` weekly",
        ),
    ] {
        match c {
            Some(c) => println!(
                "last check ({name}): {} at {} ({} problem(s))",
                if c.ok { "ok" } else { "FAILED" },
                c.time,
                c.problems
            ),
            None => println!("last check ({name}): never ({hint})"),
        }
    }
}

/// The RPO at `now` and what it is measured from. The age of the newest
/// durable point, or, when a healthy watcher of this host (running, not
/// falling behind, no upload failing) has nothing pending and the
/// repository holds the point it reported durable, the age of its last
/// tick: that tick found nothing newer to capture, so an idle database
/// does not look like a growing RPO.
fn rpo_of(
    newest: Option<snapback_core::time::Timestamp>,
    watch: Option<&crate::status_watch::WatchRow>,
    now: snapback_core::time::Timestamp,
) -> (Option<f64>, Option<&'static str>) {
    let Some(newest) = newest else {
        return (None, None);
    };
    let age = |t: snapback_core::time::Timestamp| (now - t).as_seconds_f64().max(0.0);
    let confirmed = watch.and_then(|w| {
        let r = &w.report;
        let healthy = w.running == Some(true)
            && !w.falling_behind
            && !w.upload_failing
            && r.pending_points == 0;
        let held = r.durable.as_ref().is_some_and(|d| d.time <= newest);
        r.last_tick.filter(|t| healthy && held && *t > newest)
    });
    match confirmed {
        Some(t) => (Some(age(t)), Some("watcher")),
        None => (Some(age(newest)), Some("point")),
    }
}

/// "0.4s", "12.0s", then as [`human_age`]; "-" for none.
fn human_rpo(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) => human_age(Some(s as i64)),
    }
}

/// A sample value in the Prometheus text format (+Inf, not Rust's "inf").
fn prom_value(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The text of a Prometheus exposition: `# HELP`, `# TYPE` and samples,
/// metric by metric, in the order written.
#[derive(Default)]
struct PromText(String);

/// Samples of a metric: (labels, value).
type Samples = Vec<(String, f64)>;

impl PromText {
    fn metric(&mut self, name: &str, help: &str, kind: &str, samples: Samples) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            self.0
                .push_str(&format!("{name}{labels} {}\n", prom_value(v)));
        }
    }
}

/// One sample per monitored row, labelled {KEY,host}: only the monitored
/// sources, since a one-off snapshot of another path must not feed an age
/// alert forever.
fn labelled(rows: &[SourceStatus], key: &str, f: &dyn Fn(&SourceStatus) -> Option<f64>) -> Samples {
    rows.iter()
        .filter(|r| r.monitored)
        .filter_map(|r| {
            f(r).map(|v| {
                (
                    format!(
                        "{{{key}=\"{}\",host=\"{}\"}}",
                        prom_escape(&r.source),
                        prom_escape(r.host.as_deref().unwrap_or(""))
                    ),
                    v,
                )
            })
        })
        .collect()
}

fn prometheus_text(
    repo: &Repository,
    rows: &[SourceStatus],
    checks: &snapback_core::LastChecks,
    snapshots: usize,
) -> anyhow::Result<String> {
    let mut p = PromText::default();
    // The snapshot metrics are labelled {source,host}, the RPO and the
    // watchers' {path,host}.
    snapshot_metrics(&mut p, rows);
    watch_metrics(&mut p, rows);
    check_metrics(&mut p, checks);
    let size = repo.stored_bytes()?;
    p.metric(
        "snapback_repository_size_bytes",
        "Bytes of packs and indexes in the repository.",
        "gauge",
        vec![(String::new(), size as f64)],
    );
    p.metric(
        "snapback_snapshots",
        "Committed snapshots in the repository.",
        "gauge",
        vec![(String::new(), snapshots as f64)],
    );
    Ok(p.0)
}

/// The metrics of each source's newest snapshot, labelled {source,host}.
fn snapshot_metrics(p: &mut PromText, rows: &[SourceStatus]) {
    let per = |f: &dyn Fn(&SourceStatus) -> Option<f64>| labelled(rows, "source", f);
    p.metric(
        "snapback_last_snapshot_timestamp_seconds",
        "Unix time of the newest committed snapshot of the source from the host (not counting snapshots dated in the future).",
        "gauge",
        per(&|r| {
            r.last_snapshot_time
                .as_deref()
                .and_then(|t| snapback_core::time::parse_rfc3339(t).ok())
                .map(|t| t.unix_timestamp() as f64)
        }),
    );
    p.metric(
        "snapback_last_snapshot_age_seconds",
        "Age of the newest committed snapshot of the source from the host; +Inf when it was never snapshotted.",
        "gauge",
        per(&|r| Some(r.age_seconds.map(|a| a as f64).unwrap_or(f64::INFINITY))),
    );
    p.metric(
        "snapback_last_snapshot_duration_seconds",
        "How long the newest snapshot took.",
        "gauge",
        per(&|r| {
            r.last_snapshot
                .as_ref()
                .map(|_| r.duration_ms as f64 / 1000.0)
        }),
    );
    p.metric(
        "snapback_last_snapshot_added_bytes",
        "Bytes the newest snapshot added to the repository.",
        "gauge",
        per(&|r| r.last_snapshot.as_ref().map(|_| r.bytes_added as f64)),
    );
    p.metric(
        "snapback_source_size_bytes",
        "Logical size of the source in its newest snapshot.",
        "gauge",
        per(&|r| r.last_snapshot.as_ref().map(|_| r.size as f64)),
    );
    p.metric(
        "snapback_source_stale",
        "1 when the newest snapshot is older than --max-age (or there is none).",
        "gauge",
        per(&|r| Some(if r.stale { 1.0 } else { 0.0 })),
    );
    p.metric(
        "snapback_source_never_snapshotted",
        "1 when no host has snapshotted this configured source.",
        "gauge",
        per(&|r| {
            Some(
                if r.last_snapshot.is_none() && r.future_snapshots.is_empty() {
                    1.0
                } else {
                    0.0
                },
            )
        }),
    );
    p.metric(
        "snapback_future_snapshots",
        "Snapshots of the source from the host dated ahead of this host's clock (a clock that was ahead).",
        "gauge",
        per(&|r| Some(r.future_snapshots.len() as f64)),
    );
    p.metric(
        "snapback_clock_ahead_snapshots",
        "Snapshots of the source from the host dated ahead of the store's clock when it wrote them, or of a snapshot written after them.",
        "gauge",
        per(&|r| Some(r.clock_ahead_snapshots.len() as f64)),
    );
}

/// The RPO and the watchers' metrics, labelled {path,host}.
fn watch_metrics(p: &mut PromText, rows: &[SourceStatus]) {
    let per_path = |f: &dyn Fn(&SourceStatus) -> Option<f64>| labelled(rows, "path", f);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    p.metric(
        "snapback_rpo_seconds",
        "Age of the newest durable point of the source (a snapshot or a timeline point) from the host; +Inf when there is none.",
        "gauge",
        per_path(&|r| Some(r.rpo_seconds.unwrap_or(f64::INFINITY))),
    );
    p.metric(
        "snapback_watch_up",
        "1 when the watcher of the source on this host is running, 0 when it stopped or died (only sources a watcher has run for).",
        "gauge",
        per_path(&|r| r.watch.as_ref().map(|w| flag(w.running == Some(true)))),
    );
    p.metric(
        "snapback_watch_last_tick_timestamp_seconds",
        "Unix time when the watcher's last tick ended.",
        "gauge",
        per_path(&|r| {
            r.watch
                .as_ref()
                .and_then(|w| w.report.last_tick)
                .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        }),
    );
    p.metric(
        "snapback_watch_falling_behind",
        "1 when the watcher's last tick is older than three intervals (at least 10 s).",
        "gauge",
        per_path(&|r| r.watch.as_ref().map(|w| flag(w.falling_behind))),
    );
    p.metric(
        "snapback_watch_upload_failing",
        "1 when the watcher's last upload failed and none succeeded since.",
        "gauge",
        per_path(&|r| r.watch.as_ref().map(|w| flag(w.upload_failing))),
    );
    p.metric(
        "snapback_watch_fallbacks",
        "Ticks that fell back to a full scan since the watcher started.",
        "gauge",
        per_path(&|r| r.watch.as_ref().map(|w| w.report.fallbacks as f64)),
    );
    p.metric(
        "snapback_watch_pending_points",
        "Points taken but not yet durable in the repository.",
        "gauge",
        per_path(&|r| r.watch.as_ref().map(|w| w.report.pending_points as f64)),
    );
    p.metric(
        "snapback_watch_spool_bytes",
        "Bytes in the watcher's local spool, waiting for the repository.",
        "gauge",
        per_path(&|r| r.watch.as_ref().map(|w| w.report.spool_bytes as f64)),
    );
    p.metric(
        "snapback_verify_live_mismatch",
        "1 when the last verify-live of the source found pages that differ from the captured image (only sources verified).",
        "gauge",
        per_path(&|r| {
            r.watch
                .as_ref()
                .and_then(|w| w.report.last_verify.as_ref().map(|_| flag(w.verify_mismatch)))
        }),
    );
}

/// The newest check of each kind, labelled {kind}.
fn check_metrics(p: &mut PromText, checks: &snapback_core::LastChecks) {
    let kinds = [
        ("structure", &checks.structure),
        ("read-data", &checks.read_data),
    ];
    p.metric(
        "snapback_last_check_timestamp_seconds",
        "Unix time of the newest check of each kind (structure, read-data).",
        "gauge",
        kinds
            .iter()
            .filter_map(|(k, c)| {
                c.as_ref().map(|c| {
                    (
                        format!("{{kind=\"{k}\"}}"),
                        snapback_core::time::parse_rfc3339(&c.time)
                            .map(|t| t.unix_timestamp() as f64)
                            .unwrap_or(0.0),
                    )
                })
            })
            .collect(),
    );
    p.metric(
        "snapback_last_check_success",
        "1 when the newest check of this kind (structure, read-data) found no problem.",
        "gauge",
        kinds
            .iter()
            .filter_map(|(k, c)| {
                c.as_ref()
                    .map(|c| (format!("{{kind=\"{k}\"}}"), if c.ok { 1.0 } else { 0.0 }))
            })
            .collect(),
    );
}
