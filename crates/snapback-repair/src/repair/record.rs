//! What a run leaves in the audit log: its final entry (once), the entry
//! of a run that stopped or was abandoned (from what its journal says it
//! committed), and finding a run's entry by id.

use rusqlite::{params, Connection};
use snapback_core::Repository;

use super::now;
use crate::apply::JOURNAL_TABLE;
use crate::audit::{self, AuditEntry, SqlStepRecord};
use crate::changes::{ChangeSet, Op, TableChanges, TableCounts};
use crate::error::{Error, Result};

/// Appends `entry` unless an entry for the same repair id and kind is in
/// the log already (a resumed run that had written it before being killed).
pub(super) fn append_once(repo: &Repository, entry: AuditEntry) -> Result<audit::StoredEntry> {
    let store = repo.store().as_ref();
    let v = audit::verify(store)?;
    if let Some(b) = &v.broken {
        tracing::warn!(problem = %b, "the audit chain is broken; appending anyway (run `snapback audit verify`)");
    }
    // A failed attempt is appended each time (each is a separate event);
    // the final entry of a run only once.
    if entry.failed.is_none() {
        if let Some(e) = v.entries.into_iter().find(|e| {
            e.entry.repair_id == entry.repair_id
                && e.entry.kind == entry.kind
                && e.entry.failed.is_none()
        }) {
            return Ok(e);
        }
    }
    audit::append(store, entry)
}

/// An audit entry for a run that ends unfinished (stopped by an error, or
/// abandoned); `changes`, `counts` and the rest are filled in by
/// `record_committed`.
pub(super) fn unfinished_entry(
    kind: &str,
    id: &str,
    place: &str,
    pre: Option<String>,
    failed: Option<String>,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        prev: None,
        time: now(),
        user: audit::os_user(),
        host: audit::host(),
        kind: kind.into(),
        repair_id: id.into(),
        undoes: None,
        live: place.into(),
        script_path: None,
        script: None,
        script_sha256: None,
        source_snapshot: None,
        source_db: None,
        pre_repair_snapshot: pre,
        counts: vec![],
        changes: ChangeSet::default(),
        conflicts: vec![],
        sql_steps: vec![],
        remaining_differences: 0,
        snapback_version: env!("CARGO_PKG_VERSION").into(),
        failed,
    }
}

/// Fills `entry` with what run `id` has committed, from the journal: the
/// committed batches' changes (minus the rows left alone), their
/// conflicts, the SQL steps that ran, per-table counts, and as remaining
/// differences the planned changes not made.
pub(super) fn record_committed(
    conn: &Connection,
    place: &str,
    id: &str,
    changes: &ChangeSet,
    statements: &[String],
    entry: &mut AuditEntry,
) -> Result<()> {
    let done = crate::apply::committed_batches(conn, place, id)?;
    let mut applied = ChangeSet::default();
    let mut conflicts = Vec::new();
    let mut counts = Vec::new();
    for (ti, t) in changes.tables.iter().enumerate() {
        let bs = t.batch_size.max(1);
        let mut tc = TableChanges {
            changes: vec![],
            ..t.clone()
        };
        let mut c = TableCounts {
            table: t.table.clone(),
            ..Default::default()
        };
        for (bi, chunk) in t.changes.chunks(bs).enumerate() {
            let Some(left) = done.get(&(ti, bi)) else {
                continue;
            };
            for (i, ch) in chunk.iter().enumerate() {
                if let Some((_, cf)) = left.iter().find(|(ci, _)| *ci == bi * bs + i) {
                    conflicts.push(cf.clone());
                    c.conflicts += 1;
                    continue;
                }
                match ch.op {
                    Op::Insert => c.insert += 1,
                    Op::Update => c.update += 1,
                    Op::Delete => c.delete += 1,
                }
                tc.changes.push(ch.clone());
            }
        }
        counts.push(c);
        applied.tables.push(tc);
    }
    let mut sql = Vec::new();
    for (i, st) in statements.iter().enumerate() {
        let n: Option<i64> = conn
            .query_row(
                &format!(
                    "SELECT applied FROM {JOURNAL_TABLE} WHERE repair_id = ?1 AND table_index = ?2"
                ),
                params![id, 1_000_000 + i as i64],
                |r| r.get(0),
            )
            .ok();
        match n {
            Some(n) => sql.push(SqlStepRecord {
                statement: st.clone(),
                rows_changed: n as u64,
            }),
            None => break,
        }
    }
    entry.remaining_differences =
        (changes.len() as u64).saturating_sub(applied.len() as u64 + conflicts.len() as u64);
    entry.changes = applied;
    entry.conflicts = conflicts;
    entry.counts = counts;
    entry.sql_steps = sql;
    Ok(())
}

/// A run stopped by `e` after it had started: records what it committed in
/// an audit entry (`failed` set), marks the run `failed` (still unfinished:
/// the same script resumes it), and returns an error that says what was
/// done and how to go on.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_stopped(
    repo: &Repository,
    conn: &Connection,
    place: &str,
    id: &str,
    changes: &ChangeSet,
    statements: &[String],
    mut entry: AuditEntry,
    e: Error,
) -> Error {
    let recorded =
        record_committed(conn, place, id, changes, statements, &mut entry).and_then(|()| {
            let n = entry.changes.len();
            audit::append(repo.store().as_ref(), entry).map(|s| (n, s.key))
        });
    let (what, key) = match recorded {
        Ok((n, key)) => (
            format!("{n} row change(s) it committed before the failure are recorded in audit entry {key}, and `snapback undo {id}` reverts them"),
            Some(key),
        ),
        Err(e2) => (
            format!("the changes it committed are recorded in the live database's journal, but the audit entry could not be written ({e2}); `snapback repair --abandon {id} --live {place}` records them"),
            None,
        ),
    };
    if let Err(e3) = crate::apply::mark_run(conn, place, id, "failed", key.as_deref()) {
        tracing::warn!(error = %e3, "cannot mark the run failed");
    }
    Error::Stopped(format!(
        "{e}\nrepair {id} stopped: {what}. To go on: fix the cause and run the same script again (it resumes from where it stopped), or close the run with `snapback repair --abandon {id} --live {place}` (its committed changes stay) and run a corrected script"
    ))
}

/// Finds the audit entry of a repair by id or unique prefix.
pub fn find_entry(repo: &Repository, id: &str) -> Result<audit::StoredEntry> {
    let entries = audit::list(repo.store().as_ref())?;
    // A run can have several entries (failed attempts, then the final
    // entry or an abandon): the latest one holds all it committed.
    let mut m: Vec<&audit::StoredEntry> = Vec::new();
    for e in entries.iter().filter(|e| e.entry.repair_id.starts_with(id)) {
        match m
            .iter_mut()
            .find(|x| x.entry.repair_id == e.entry.repair_id)
        {
            Some(x) => *x = e,
            None => m.push(e),
        }
    }
    match m.len() {
        0 => Err(Error::Input(format!(
            "no repair with id {id:?} in the audit log; list them with `snapback audit`"
        ))),
        1 => Ok(m[0].clone()),
        n => Err(Error::Input(format!(
            "repair id prefix {id:?} is ambiguous ({n} entries); give more of it"
        ))),
    }
}
