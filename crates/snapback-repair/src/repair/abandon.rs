//! Closing an unfinished run without finishing it.

use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;
use snapback_core::Repository;

use super::record::{append_once, record_committed, unfinished_entry};
use super::{take_lock, RepairOptions};
use crate::apply::{unfinished_runs, RunRecord};
use crate::audit::{self, AuditEntry};
use crate::error::{Error, Result};
use crate::source::{live_path, open_live_rw};

/// What `abandon` did.
#[derive(Debug, Clone, Serialize)]
pub struct AbandonOutcome {
    pub repair_id: String,
    pub kind: String,
    /// Row changes the run had committed; they stay in the database.
    pub rows_kept: u64,
    pub audit_key: String,
}

/// Closes an unfinished run (killed, or stopped by an error) of `live`
/// without finishing it: records what it committed in an audit entry of
/// kind `abandon` (so that `undo` can revert it) and marks it abandoned,
/// so that other scripts can run. Changes no row of the user's tables.
pub fn abandon(
    repo: &Repository,
    live: &Path,
    id: &str,
    opts: &RepairOptions,
) -> Result<AbandonOutcome> {
    let live = live_path(live)?;
    let _lock = take_lock(&live, opts.lock_wait)?;
    let conn = open_live_rw(&live, opts.busy_timeout)?;
    let place = live.display().to_string();
    let runs = unfinished_runs(&conn, &place)?;
    let m: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.repair_id.starts_with(id))
        .collect();
    let run = match m.as_slice() {
        [r] => *r,
        [] => {
            return Err(Error::Input(format!(
                "{place}: no unfinished repair or undo with id {id:?} is recorded in this database{}; nothing was changed",
                if runs.is_empty() {
                    " (there is none)".to_string()
                } else {
                    format!(
                        " (unfinished: {})",
                        runs.iter().map(|r| r.repair_id.as_str()).collect::<Vec<_>>().join(", ")
                    )
                }
            )))
        }
        _ => {
            return Err(Error::Input(format!(
                "run id prefix {id:?} is ambiguous; give more of it"
            )))
        }
    };
    let stored = abandon_run(repo, &conn, &place, run)?;
    Ok(AbandonOutcome {
        repair_id: run.repair_id.clone(),
        kind: run.kind.clone(),
        rows_kept: stored.entry.changes.len() as u64,
        audit_key: stored.key,
    })
}

/// `abandon` with the lock held and the run found.
pub(super) fn abandon_run(
    repo: &Repository,
    conn: &Connection,
    place: &str,
    run: &RunRecord,
) -> Result<audit::StoredEntry> {
    // SQL statements are not stored with the run: take them from the last
    // audit entry of this run, if there is one.
    let prev = audit::list(repo.store().as_ref())?
        .into_iter()
        .rev()
        .find(|e| e.entry.repair_id == run.repair_id);
    let statements: Vec<String> = prev
        .as_ref()
        .map(|p| {
            p.entry
                .script
                .as_deref()
                .and_then(|t| {
                    crate::script::LoadedScript::parse(
                        Path::new(&p.entry.script_path.clone().unwrap_or_default()),
                        t.to_string(),
                    )
                    .ok()
                })
                .map(|s| s.script.sql.into_iter().map(|q| q.statement).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let mut entry = AuditEntry {
        undoes: None,
        script_sha256: run.script_sha256.clone(),
        source_snapshot: run.source_snapshot.clone(),
        ..unfinished_entry(
            "abandon",
            &run.repair_id,
            place,
            run.pre_snapshot.clone(),
            None,
        )
    };
    if let Some(p) = &prev {
        entry.script_path = p.entry.script_path.clone();
        entry.script = p.entry.script.clone();
        entry.source_db = p.entry.source_db.clone();
        entry.undoes = p.entry.undoes.clone();
    }
    if run.kind == "undo" {
        entry.undoes = run
            .script_sha256
            .as_deref()
            .and_then(|m| m.strip_prefix("undo:"))
            .map(str::to_string);
    }
    record_committed(
        conn,
        place,
        &run.repair_id,
        &run.changes,
        &statements,
        &mut entry,
    )?;
    let stored = append_once(repo, entry)?;
    crate::apply::mark_run(conn, place, &run.repair_id, "abandoned", Some(&stored.key))?;
    Ok(stored)
}
