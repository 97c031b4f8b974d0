//! repair-index: rebuild the index objects from the packs alone.
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
