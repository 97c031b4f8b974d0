//! repair-index: rebuild the index objects from the packs alone;
//! verify-live: compare a live database with its WAL-delta image.
//! Documented in docs/reliability.md.

use std::time::Duration;

use clap::Args;

use crate::cli::Global;
use crate::exit;
use crate::output::{human_bytes, print_json};
use crate::repo_url::open_repo;

#[derive(Debug, Args)]
pub struct RepairIndexArgs {
    /// Show what would be written and deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the exclusive repository lock (a duration, or
    /// seconds).
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = crate::duration::parse_seconds_or_duration)]
    pub lock_wait: Duration,
}

/// Exit 0 when every pack was indexed; 3 when some pack's header could not
/// be read (its blobs stay unindexed: run `snapback check` to see which
/// snapshots need them).
pub fn repair_index(g: &Global, a: RepairIndexArgs) -> anyhow::Result<u8> {
    let repo = open_repo(g)?;
    let (plan, report) = repo.repair_index(a.lock_wait, a.dry_run)?;
    if g.json {
        print_json(&crate::json::IndexRepaired {
            plan: &plan,
            report: &report,
            dry_run: a.dry_run,
        })?;
    } else {
        for u in &plan.unreadable_packs {
            println!("UNREADABLE {}: {}", u.key, u.problem);
        }
        if a.dry_run {
            for k in plan
                .new_index_objects
                .iter()
                .filter(|k| !plan.old_index_objects.contains(k))
            {
                println!("write  {k}");
            }
            for k in &plan.delete_index_objects {
                println!("delete {k}");
            }
        }
        if !g.quiet {
            eprintln!(
                "{} pack(s): {} indexed with {} blob(s), {} unreadable; read {} of pack headers",
                plan.packs,
                plan.packs_indexed,
                plan.blobs,
                plan.unreadable_packs.len(),
                human_bytes(plan.bytes_read)
            );
            if a.dry_run {
                eprintln!("dry run: nothing was changed");
            } else if plan.is_noop() {
                eprintln!("the index objects already match the packs; nothing was changed");
            } else {
                eprintln!(
                    "wrote {} index object(s), deleted {} old one(s); run `snapback check --read-data` to verify",
                    report.index_objects_written, report.index_objects_deleted
                );
            }
        }
    }
    Ok(if plan.unreadable_packs.is_empty() {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

#[derive(Debug, Args)]
pub struct VerifyLiveArgs {
    /// The live SQLite database (snapshotted before into this repository
    /// from this host).
    pub path: std::path::PathBuf,
    /// MiB per second the full scan reads at most (0: no limit). The
    /// default, 32, is a small part of what a disk serves.
    #[arg(long, value_name = "MIB_PER_S", default_value_t = (snapback_core::DEFAULT_VERIFY_RATE >> 20) as f64)]
    pub rate: f64,
    /// Seconds to wait for a lock on the database.
    #[arg(long, value_name = "SECONDS", default_value_t = snapback_core::DEFAULT_BUSY_TIMEOUT.as_secs())]
    pub busy_timeout: u64,
}

/// Exit 0 when the image the next WAL-delta capture would give equals the
/// live database page for page; 3 when pages differ (listed; the local
/// capture state is dropped, so the next capture is a full scan); 1 when
/// there is nothing to compare.
pub fn verify_live(g: &Global, a: VerifyLiveArgs) -> anyhow::Result<u8> {
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        return Err(crate::Usage(format!(
            "invalid --rate {}: give MiB per second, 0 for no limit",
            a.rate
        ))
        .into());
    }
    let Some(state_dir) = crate::repo_url::capture_state_root() else {
        anyhow::bail!("nothing to verify: there is no local state directory (set XDG_STATE_HOME or HOME); verify-live starts from the local capture state a snapshot leaves there");
    };
    let repo = open_repo(g)?;
    let opts = snapback_core::VerifyLiveOptions {
        state_dir,
        rate: (a.rate * (1u64 << 20) as f64) as u64,
        busy_timeout: Duration::from_secs(a.busy_timeout),
        pin_session: None,
    };
    let r = repo.verify_live(&crate::cli::absolute(&a.path), &opts)?;
    if g.json {
        print_json(&crate::json::VerifyLive {
            result: if r.equal() { "ok" } else { "mismatch" },
            mismatch_count: r.mismatching_pages.len() as u64,
            report: &r,
        })?;
    } else if r.equal() {
        println!(
            "verify-live {}: ok, the WAL-delta image equals the live database: {} pages compared ({} read by the delta) against snapshot {}, {} in {:.1} s",
            r.path,
            r.pages_compared,
            r.delta_pages,
            r.snapshot.short(),
            human_bytes(r.bytes_read),
            r.duration_ms as f64 / 1000.0
        );
    } else {
        let shown: Vec<String> = r
            .mismatching_pages
            .iter()
            .take(100)
            .map(|p| p.to_string())
            .collect();
        println!(
            "verify-live {}: MISMATCH, {} of {} pages differ between the live database and the image a WAL-delta capture would give: pages {}{}",
            r.path,
            r.mismatching_pages.len(),
            r.pages_compared,
            shown.join(", "),
            if r.mismatching_pages.len() > shown.len() { ", …" } else { "" }
        );
        println!(
            "the local capture state is dropped: the next snapshot of it takes a full scan. Something wrote to the database file outside SQLite's WAL (a copy over it, a restore in place by another tool, disk corruption): find out what"
        );
    }
    Ok(if r.equal() { exit::OK } else { exit::PROBLEMS })
}
