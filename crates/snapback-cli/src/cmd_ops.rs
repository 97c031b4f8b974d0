//! Operations: forget, prune, unlock, release, status.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use snapback_core::{plan_forget, KeepPolicy, Repository, Selector};

use crate::cli::Global;
use crate::config::{parse_duration, Config};
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
    /// Show what would be kept and why; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune afterwards.
    #[arg(long)]
    pub prune: bool,
    /// Allow a policy that removes every snapshot of a source.
    #[arg(long)]
    pub allow_empty: bool,
    /// Seconds to wait for the repository lock.
    #[arg(long, default_value_t = 300)]
    pub lock_wait: u64,
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
    // Strict: a damaged manifest is a snapshot retention cannot see, so
    // `--keep-last N` would count past it and remove good ones.
    let snaps = repo.snapshots_strict().map_err(|e| {
        anyhow::anyhow!(
            "{e}\nforget refuses to apply a retention policy while a manifest is unreadable: it would count the wrong snapshots. Run `snapback check`, save what you need, then move the damaged manifest away"
        )
    })?;
    let released = repo.released()?;
    // Flags apply to every source; without flags, each configured source's
    // retention applies to its own snapshots.
    let mut plans = vec![];
    if !flags.is_empty() {
        plans.push(plan_forget(&snaps, &flags, &released, a.allow_empty)?);
    } else if !cfg.sources.is_empty() {
        for s in &cfg.sources {
            let p = s.path.to_string_lossy();
            let mine: Vec<_> = snaps
                .iter()
                .filter(|x| x.manifest.paths.iter().any(|q| *q == p))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let pol = policy_from_config(&s.retention)?;
            plans.push(
                plan_forget(&mine, &pol, &released, a.allow_empty)
                    .with_context(|| format!("retention of {p}"))?,
            );
        }
    } else {
        plan_forget(&snaps, &flags, &released, a.allow_empty)?;
    }
    if g.json {
        print_json(&serde_json::to_value(&plans)?)?;
    } else {
        for p in &plans {
            for grp in &p.groups {
                println!(
                    "{}: keep {}, remove {}",
                    grp.paths.join(" "),
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
        }
    }
    if a.dry_run {
        if !g.quiet {
            eprintln!("dry run: nothing was removed");
        }
        return Ok(exit::OK);
    }
    let mut removed = 0;
    {
        // Forget holds a shared lock: it only removes manifests, which a
        // concurrent snapshot never reads as a parent it depends on (a
        // missing parent only means a full chunk list is written).
        let _lock = repo.lock(
            snapback_core::LockKind::Shared,
            "forget",
            Duration::from_secs(a.lock_wait),
        )?;
        for p in &plans {
            removed += repo.apply_forget(p)?;
        }
    }
    if !g.quiet {
        eprintln!("removed {removed} snapshot(s)");
    }
    if a.prune {
        return prune(
            g,
            PruneArgs {
                dry_run: false,
                lock_wait: a.lock_wait,
            },
        );
    }
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for the exclusive repository lock.
    #[arg(long, default_value_t = 300)]
    pub lock_wait: u64,
}

pub fn prune(g: &Global, a: PruneArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let (plan, report) = repo.prune(Duration::from_secs(a.lock_wait), a.dry_run)?;
    if g.json {
        print_json(&json!({ "plan": plan, "report": report, "dry_run": a.dry_run }))?;
    } else if !g.quiet {
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
        if a.dry_run {
            eprintln!("dry run: nothing was deleted");
        } else {
            eprintln!(
                "deleted {} pack(s), wrote {}, freed {}",
                report.packs_deleted,
                report.packs_written,
                human_bytes(report.bytes_freed)
            );
        }
    }
    Ok(exit::OK)
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
        print_json(&json!({ "removed": removed, "remaining": before.len() - removed.len() }))?;
    } else {
        for l in &removed {
            println!(
                "removed {} ({})",
                l.key,
                if l.stale { "stale" } else { "forced" }
            );
        }
        for l in before
            .iter()
            .filter(|l| !removed.iter().any(|r| r.key == l.key))
        {
            println!("kept {}: held by a live process ({:?}); use --force only if you are sure it is gone", l.key, l.info.as_ref().map(|i| (&i.command, i.pid, &i.host)));
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
    let snap = repo.resolve(&sel, |_| true)?;
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
    /// Print the Prometheus text format; with a FILE, write it there
    /// atomically (for node_exporter's textfile collector).
    #[arg(long, num_args = 0..=1, default_missing_value = "-")]
    pub prometheus: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct SourceStatus {
    source: String,
    last_snapshot: Option<String>,
    last_snapshot_time: Option<String>,
    age_seconds: Option<i64>,
    size: u64,
    bytes_added: u64,
    duration_ms: u64,
    stale: bool,
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn status(g: &Global, cfg: &Config, a: StatusArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let max_age = a
        .max_age
        .as_deref()
        .or(cfg.max_age.as_deref())
        .map(parse_duration)
        .transpose()?;
    let now = snapback_core::time::now();
    let snaps = repo.snapshots()?;
    let mut by_source: BTreeMap<String, Option<&snapback_core::Snapshot>> = BTreeMap::new();
    for s in &cfg.sources {
        by_source.insert(s.path.to_string_lossy().into_owned(), None);
    }
    for s in &snaps {
        for p in &s.manifest.paths {
            by_source.insert(p.clone(), Some(s)); // oldest first, so the newest wins
        }
    }
    let mut rows = vec![];
    for (source, snap) in &by_source {
        let age_exact = snap.map(|s| now - s.time);
        let age = age_exact.map(|a| a.whole_seconds());
        let stale = match (max_age, age_exact) {
            (Some(m), Some(a)) => a.whole_milliseconds() > m.as_millis() as i128,
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
        rows.push(SourceStatus {
            source: source.clone(),
            last_snapshot: snap.map(|s| s.id.to_hex()),
            last_snapshot_time: snap.map(|s| s.manifest.time.clone()),
            age_seconds: age,
            size,
            bytes_added: snap.map(|s| s.manifest.stats.bytes_added).unwrap_or(0),
            duration_ms: snap.map(|s| s.manifest.stats.duration_ms).unwrap_or(0),
            stale,
        });
    }
    let check = repo.last_check()?;
    let check_failed = check.as_ref().is_some_and(|c| !c.ok);
    let problem = rows.iter().any(|r| r.stale) || check_failed;

    if let Some(target) = &a.prometheus {
        let text = prometheus_text(&repo, &rows, check.as_ref(), snaps.len())?;
        if target == "-" {
            print!("{text}");
        } else {
            let path = PathBuf::from(target);
            let tmp = path.with_extension("prom.tmp");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot move {} into place", path.display()))?;
        }
    } else if g.json {
        print_json(&json!({ "sources": rows, "last_check": check, "ok": !problem }))?;
    } else {
        println!(
            "{:<40} {:<10} {:<21} {:>9} {:>10}  state",
            "source", "snapshot", "time", "age", "size"
        );
        for r in &rows {
            println!(
                "{:<40} {:<10} {:<21} {:>9} {:>10}  {}",
                r.source,
                r.last_snapshot.as_deref().map(|s| &s[..8]).unwrap_or("-"),
                r.last_snapshot_time
                    .as_deref()
                    .map(|t| t
                        .split('.')
                        .next()
                        .unwrap_or(t)
                        .trim_end_matches('Z')
                        .to_string()
                        + "Z")
                    .unwrap_or_else(|| "never".into()),
                r.age_seconds
                    .map(|a| format!("{}m{}s", a / 60, a % 60))
                    .unwrap_or_else(|| "-".into()),
                human_bytes(r.size),
                if r.stale { "STALE" } else { "ok" }
            );
        }
        match &check {
            Some(c) => println!(
                "last check: {} at {} ({}{})",
                if c.ok { "ok" } else { "FAILED" },
                c.time,
                if c.read_data { "read-data, " } else { "" },
                format_args!("{} problem(s)", c.problems)
            ),
            None => println!("last check: never (run `snapback check` from cron)"),
        }
    }
    Ok(if problem { exit::PROBLEMS } else { exit::OK })
}

fn prometheus_text(
    repo: &Repository,
    rows: &[SourceStatus],
    check: Option<&snapback_core::CheckRecord>,
    snapshots: usize,
) -> anyhow::Result<String> {
    let mut t = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        t.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            t.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let per = |f: &dyn Fn(&SourceStatus) -> Option<f64>| -> Vec<(String, f64)> {
        rows.iter()
            .filter_map(|r| f(r).map(|v| (format!("{{source=\"{}\"}}", prom_escape(&r.source)), v)))
            .collect()
    };
    metric(
        "snapback_last_snapshot_timestamp_seconds",
        "Unix time of the newest committed snapshot of the source.",
        "gauge",
        per(&|r| {
            r.last_snapshot_time
                .as_deref()
                .and_then(|t| snapback_core::time::parse_rfc3339(t).ok())
                .map(|t| t.unix_timestamp() as f64)
        }),
    );
    metric(
        "snapback_last_snapshot_age_seconds",
        "Age of the newest committed snapshot of the source.",
        "gauge",
        per(&|r| r.age_seconds.map(|a| a as f64)),
    );
    metric(
        "snapback_last_snapshot_duration_seconds",
        "How long the newest snapshot took.",
        "gauge",
        per(&|r| {
            r.last_snapshot
                .as_ref()
                .map(|_| r.duration_ms as f64 / 1000.0)
        }),
    );
    metric(
        "snapback_last_snapshot_added_bytes",
        "Bytes the newest snapshot added to the repository.",
        "gauge",
        per(&|r| r.last_snapshot.as_ref().map(|_| r.bytes_added as f64)),
    );
    metric(
        "snapback_source_size_bytes",
        "Logical size of the source in its newest snapshot.",
        "gauge",
        per(&|r| r.last_snapshot.as_ref().map(|_| r.size as f64)),
    );
    metric(
        "snapback_source_stale",
        "1 when the newest snapshot is older than --max-age.",
        "gauge",
        per(&|r| Some(if r.stale { 1.0 } else { 0.0 })),
    );
    if let Some(c) = check {
        let ts = snapback_core::time::parse_rfc3339(&c.time)
            .map(|t| t.unix_timestamp() as f64)
            .unwrap_or(0.0);
        metric(
            "snapback_last_check_timestamp_seconds",
            "Unix time of the last check.",
            "gauge",
            vec![(String::new(), ts)],
        );
        metric(
            "snapback_last_check_success",
            "1 when the last check found no problem.",
            "gauge",
            vec![(String::new(), if c.ok { 1.0 } else { 0.0 })],
        );
    }
    let size: u64 = repo
        .store()
        .list("data/")?
        .iter()
        .chain(repo.store().list("index/")?.iter())
        .map(|o| o.size)
        .sum();
    metric(
        "snapback_repository_size_bytes",
        "Bytes of packs and indexes in the repository.",
        "gauge",
        vec![(String::new(), size as f64)],
    );
    metric(
        "snapback_snapshots",
        "Committed snapshots in the repository.",
        "gauge",
        vec![(String::new(), snapshots as f64)],
    );
    Ok(t)
}
