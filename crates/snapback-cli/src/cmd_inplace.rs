//! `restore SNAP LIVE_DB --in-place`: the dry run, `--apply` with its
//! confirmation, and the undo command. Documented in README.md (Restore),
//! docs/scripting.md and docs/runbook.md.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use snapback_core::{InPlaceOptions, InPlaceReport, Selector, Snapshot, SnapshotOptions};

use crate::cli::Global;
use crate::cmd_basic::RestoreArgs;
use crate::exit;
use crate::output::{chose, print_json};
use crate::repo_url::open_repo;

/// The wait for the live database's write lock when --lock-wait is not
/// given.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// `restore --in-place --json`.
#[derive(serde::Serialize)]
struct InPlaceJson<'a> {
    #[serde(flatten)]
    report: &'a InPlaceReport,
    dry_run: bool,
    pages_changed: u64,
    /// The command that undoes the restore (an in-place restore of the
    /// pre-restore snapshot); null in a dry run.
    undo: Option<String>,
}

/// Quotes a word for a POSIX shell when it needs it.
fn sh(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:@%+=,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command that restores the pre-restore snapshot `pre` into `live`,
/// with the global options that found the repository.
fn undo_command(g: &Global, pre: &str, live: &Path, file: &str) -> String {
    let mut w: Vec<String> = vec!["snapback".into()];
    if let Some(c) = &g.config {
        w.extend(["--config".into(), sh(&c.to_string_lossy())]);
    }
    if let Some(r) = &g.repo {
        w.extend(["--repo".into(), sh(r)]);
    }
    if let Some(e) = &g.s3_endpoint {
        w.extend(["--s3-endpoint".into(), sh(e)]);
    }
    if g.s3_path_style {
        w.push("--s3-path-style".into());
    }
    if let Some(p) = &g.password_file {
        w.extend(["--password-file".into(), sh(&p.to_string_lossy())]);
    }
    let live_s = live.to_string_lossy();
    w.extend([
        "restore".into(),
        pre.to_string(),
        sh(&live_s),
        "--in-place".into(),
        "--apply".into(),
    ]);
    if file != live_s {
        w.extend(["--path".into(), sh(file)]);
    }
    w.join(" ")
}

pub fn restore_in_place(g: &Global, a: RestoreArgs) -> anyhow::Result<u8> {
    let live = crate::config::canonical_path(&a.dest);
    let path = a.path.as_ref().map(|p| {
        crate::config::canonical_path(p)
            .to_string_lossy()
            .into_owned()
    });
    let wait = a.lock_wait.unwrap_or(DEFAULT_LOCK_WAIT);
    let repo = open_repo(g)?;
    let snap = in_place_snapshot(&repo, &a, &live, path.as_deref())?;
    chose(g, &snap);
    let opts = InPlaceOptions {
        path,
        lock_wait: wait,
        no_lock: a.no_lock,
        snapshot: SnapshotOptions {
            lock_wait: wait,
            busy_timeout: wait,
            state_dir: crate::repo_url::capture_state_root(),
            ..Default::default()
        },
    };
    if a.apply {
        // Before the dry run's read: a WAL database in a read-only
        // directory does not even open for reading.
        snapback_core::check_writable(&live)?;
    }
    if a.apply && a.yes {
        // Confirmed already: no dry run first. The restore's compare is
        // the read of its pre-restore snapshot, so the live database is
        // read once (or, with a capture state, only its changed pages).
        return apply(g, &repo, &snap, &live, &opts);
    }
    let plan = repo.plan_in_place(&snap, &live, &opts)?;
    if !a.apply {
        if g.json {
            print_json(&InPlaceJson {
                report: &plan,
                dry_run: true,
                pages_changed: plan.pages_changed(),
                undo: None,
            })?;
        } else if !g.quiet {
            print_plan(&plan);
            {
                eprintln!(
                    "dry run: nothing was changed; run again with --apply to restore in place"
                );
            }
        }
        return Ok(exit::OK);
    }
    if plan.pages_changed() == 0 {
        if g.json {
            print_json(&InPlaceJson {
                report: &plan,
                dry_run: false,
                pages_changed: 0,
                undo: None,
            })?;
        } else if !g.quiet {
            println!(
                "{} already holds the snapshot's database ({} pages); nothing was written",
                live.display(),
                plan.snapshot_pages
            );
        }
        return Ok(exit::OK);
    }
    if !g.json && !g.quiet {
        print_plan(&plan);
    }
    crate::cmd_repair::confirm(
        a.yes,
        "restore --in-place --apply",
        &format!(
            "Restore {} in place from snapshot {} ({} page(s) change)?",
            live.display(),
            snap.id.short(),
            plan.pages_changed()
        ),
    )?;
    apply(g, &repo, &snap, &live, &opts)
}

/// `--apply`, once confirmed: the restore, its report and the undo command.
fn apply(
    g: &Global,
    repo: &snapback_core::Repository,
    snap: &Snapshot,
    live: &Path,
    opts: &InPlaceOptions,
) -> anyhow::Result<u8> {
    let quiet = g.quiet || g.json;
    let r = repo
        .restore_in_place(snap, live, opts, &|m| {
            if !quiet {
                eprintln!("{m}");
            }
        })
        .context("in-place restore failed")?;
    let undo = r
        .pre_restore_snapshot
        .filter(|_| r.applied)
        .map(|p| undo_command(g, &p.to_hex(), live, &r.file));
    if g.json {
        print_json(&InPlaceJson {
            report: &r,
            dry_run: false,
            pages_changed: r.pages_changed(),
            undo,
        })?;
        return Ok(exit::OK);
    }
    if g.quiet {
        return Ok(exit::OK);
    }
    print_restored(&r, live, snap, undo.as_deref());
    Ok(exit::OK)
}

/// The snapshot `restore --in-place` restores: the one SNAP names among
/// those that hold the database (`path`, else the live database's own).
fn in_place_snapshot(
    repo: &snapback_core::Repository,
    a: &RestoreArgs,
    live: &std::path::Path,
    path: Option<&str>,
) -> anyhow::Result<Snapshot> {
    let sel: Selector = a.snap.parse()?;
    // 'latest' and '@TIME' choose among the snapshots that hold the
    // database, and never an undo point (a pre-restore or pre-repair
    // snapshot): a second restore of 'latest' would otherwise undo the
    // first. An id means that snapshot.
    let live_s = live.to_string_lossy().into_owned();
    let want = path.map_or_else(|| live_s.clone(), str::to_string);
    let is_id = matches!(sel, Selector::Id(_) | Selector::Point { .. });
    let (narrow, skip): (Option<&str>, &[&str]) = if is_id {
        (None, &[])
    } else {
        (
            Some(want.as_str()),
            &[
                snapback_core::PRE_RESTORE_TAG,
                snapback_core::PRE_REPAIR_TAG,
            ],
        )
    };
    snapback_core::check_live_path(live)?;
    match repo.resolve_for_path(&sel, narrow, skip) {
        Ok(s) => Ok(s),
        Err(e) if !is_id => {
            Err(anyhow::Error::new(e).context(format!(
                "no snapshot that '{}' can choose holds {want}; to restore a snapshot of another database into {live_s}, name that database with --path, or give the snapshot's id",
                a.snap
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// What `restore --in-place --apply` did, for people.
fn print_restored(r: &InPlaceReport, live: &std::path::Path, snap: &Snapshot, undo: Option<&str>) {
    if r.applied {
        println!(
            "restored {} in place from snapshot {}: {} page(s) rewritten, {} added, {} removed, in one transaction",
            live.display(),
            snap.id.short(),
            r.pages_rewritten,
            r.pages_added,
            r.pages_removed
        );
    } else {
        println!(
            "{} already held the snapshot's database; nothing was written",
            live.display()
        );
    }
    if let Some(p) = &r.pre_restore_snapshot {
        println!("  pre-restore snapshot: {}", p.to_hex());
    }
    if let (true, Some(u)) = (r.applied, undo) {
        println!("  undo: {u}");
    }
}

fn print_plan(p: &InPlaceReport) {
    println!(
        "in-place restore of {} from {} in snapshot {}",
        p.live.display(),
        p.file,
        p.snapshot.short()
    );
    println!(
        "  page size {}, {} mode; live database {} pages, snapshot {} pages",
        p.page_size, p.journal_mode, p.live_pages, p.snapshot_pages
    );
    println!(
        "  {} page(s) would change: {} rewritten, {} added, {} removed",
        p.pages_changed(),
        p.pages_rewritten,
        p.pages_added,
        p.pages_removed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_words_are_quoted_for_a_shell() {
        assert_eq!(sh("/srv/app.db"), "/srv/app.db");
        assert_eq!(sh("/srv/my app.db"), "'/srv/my app.db'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(sh(""), "''");
    }

    #[test]
    fn lock_wait_takes_durations_and_plain_seconds() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut args = vec!["snapback", "restore", "latest", "/tmp/x.db"];
            args.extend_from_slice(extra);
            crate::cli::Cli::try_parse_from(args).map(|c| match c.command {
                crate::cli::Command::Restore(a) => a.lock_wait,
                _ => panic!("not restore"),
            })
        };
        let wait = |extra: &[&str]| parse(extra).expect("parses");
        assert_eq!(wait(&[]), None, "absent: each mode's own default");
        assert_eq!(wait(&["--lock-wait", "3"]), Some(Duration::from_secs(3)));
        assert_eq!(wait(&["--lock-wait", "2m"]), Some(Duration::from_secs(120)));
        assert!(parse(&["--lock-wait", "soon"]).is_err());
    }
}
