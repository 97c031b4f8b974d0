//! Undo: reverting a repair's recorded change set.

use std::path::Path;

use serde::Serialize;
use snapback_core::Repository;

use super::abandon::abandon_run;
use super::record::{append_once, find_entry};
use super::{begin_run, key_string, now, pre_repair_snapshot, take_lock, RepairOptions};
use crate::apply::{apply_changes, check_expected, finish_run, unfinished_runs, ApplyOptions};
use crate::audit::{self, AuditEntry};
use crate::changes::{Conflict, Op, TableCounts};
use crate::error::{Error, Result};
use crate::source::{live_path, open_live_rw};

#[derive(Debug, Clone, Serialize)]
pub struct UndoOutcome {
    pub repair_id: String,
    pub undoes: String,
    pub pre_repair_snapshot: Option<String>,
    pub rows_changed: u64,
    pub conflicts: Vec<Conflict>,
    pub audit_key: String,
}

/// Reverts a repair's change set. Refuses, listing them, when rows it
/// would revert changed since the repair, unless `force`.
pub fn undo(
    repo: &Repository,
    id: &str,
    force: bool,
    opts: &RepairOptions,
    mut progress: impl FnMut(&str),
) -> Result<UndoOutcome> {
    let target = find_entry(repo, id)?;
    let mut t = target.entry;
    let all = audit::list(repo.store().as_ref())?;
    if let Some(prev) = all
        .iter()
        .find(|e| e.entry.undoes.as_deref() == Some(t.repair_id.as_str()))
    {
        if !force {
            return Err(Error::Input(format!(
                "repair {} was undone already by {} ({}); use --force to revert it again",
                t.repair_id, prev.entry.repair_id, prev.entry.time
            )));
        }
    }
    let sql_rows: u64 = t.sql_steps.iter().map(|s| s.rows_changed).sum();
    if sql_rows > 0 && !force {
        return Err(Error::Input(format!(
            "repair {} ran SQL steps that changed {sql_rows} row(s); those cannot be reverted row by row. Restore the rows from its pre-repair snapshot {} instead, or use --force to revert only the recorded row changes",
            t.repair_id,
            t.pre_repair_snapshot.as_deref().unwrap_or("(none)")
        )));
    }
    let live = live_path(Path::new(&t.live))?;
    let _lock = take_lock(&live, opts.lock_wait)?;
    let mut conn = open_live_rw(&live, opts.busy_timeout)?;
    let place = live.display().to_string();
    let marker = format!("undo:{}", t.repair_id);
    let unfinished = unfinished_runs(&conn, &place)?;
    let mut resume = None;
    for r in unfinished {
        if r.kind == "undo" && r.script_sha256.as_deref() == Some(marker.as_str()) {
            resume = Some(r);
        } else if r.repair_id == t.repair_id {
            // Undoing a run that stopped unfinished: close it first, from
            // what its journal says it committed.
            progress(&format!(
                "repair {} is unfinished; abandoning it so that its committed changes can be reverted",
                r.repair_id
            ));
            t = abandon_run(repo, &conn, &place, &r)?.entry;
        } else {
            return Err(Error::Input(format!(
                "{place}: an unfinished {} {} is recorded in this database; finish it (run the same script or undo again) or close it with `snapback repair --abandon {} --live {place}`; nothing was written",
                r.kind, r.repair_id, r.repair_id
            )));
        }
    }
    let inverse = t.changes.inverse();
    let (undo_id, pre, changes) = match resume {
        Some(r) => {
            progress(&format!("resuming undo {}", r.repair_id));
            (r.repair_id, r.pre_snapshot, r.changes)
        }
        None => {
            let conflicts = check_expected(&conn, &place, &inverse)?;
            if !conflicts.is_empty() && !force {
                let list: Vec<String> = conflicts
                    .iter()
                    .take(50)
                    .map(|c| format!("  {} key {}: {}", c.table, key_string(&c.key), c.reason))
                    .collect();
                return Err(Error::Conflict(format!(
                    "refusing to undo repair {}: {} row(s) changed since the repair, and reverting them would lose those changes:\n{}{}\nnothing was written; use --force to revert them anyway",
                    t.repair_id,
                    conflicts.len(),
                    list.join("\n"),
                    if conflicts.len() > 50 { "\n  ..." } else { "" }
                )));
            }
            progress("taking a pre-repair snapshot of the live database");
            let pre = pre_repair_snapshot(repo, &live, opts)?;
            let id = begin_run(&conn, &place, "undo", marker.clone(), &inverse, &pre, None)?;
            (id, Some(pre), inverse)
        }
    };
    let aopts = ApplyOptions {
        force,
        ..opts.apply.clone()
    };
    let report = apply_changes(&mut conn, &live, &undo_id, &changes, &aopts, |_, _| {})?;
    let applied = report.applied(&changes);
    let counts: Vec<TableCounts> = applied
        .tables
        .iter()
        .enumerate()
        .map(|(ti, tc)| TableCounts {
            table: tc.table.clone(),
            insert: tc.changes.iter().filter(|c| c.op == Op::Insert).count() as u64,
            update: tc.changes.iter().filter(|c| c.op == Op::Update).count() as u64,
            delete: tc.changes.iter().filter(|c| c.op == Op::Delete).count() as u64,
            conflicts: report.conflicts.iter().filter(|c| c.0 == ti).count() as u64,
            ..Default::default()
        })
        .collect();
    let conflicts: Vec<Conflict> = report.conflicts.iter().map(|c| c.2.clone()).collect();
    let entry = AuditEntry {
        seq: 0,
        prev: None,
        time: now(),
        user: audit::os_user(),
        host: audit::host(),
        kind: "undo".into(),
        repair_id: undo_id.clone(),
        undoes: Some(t.repair_id.clone()),
        live: place.clone(),
        script_path: None,
        script: None,
        script_sha256: None,
        source_snapshot: None,
        source_db: None,
        pre_repair_snapshot: pre.clone(),
        counts,
        changes: applied,
        conflicts: conflicts.clone(),
        sql_steps: vec![],
        remaining_differences: conflicts.len() as u64,
        snapback_version: env!("CARGO_PKG_VERSION").into(),
        failed: None,
    };
    let stored = append_once(repo, entry)?;
    finish_run(&conn, &place, &undo_id, &stored.key)?;
    Ok(UndoOutcome {
        repair_id: undo_id,
        undoes: t.repair_id.clone(),
        pre_repair_snapshot: pre,
        rows_changed: report.rows_changed,
        conflicts,
        audit_key: stored.key,
    })
}
