//! Planning a repair, step by step, writing nothing: open the live
//! database (after the lock), find the snapshot side, prepare and check the
//! tables and SQL steps, find an interrupted run to resume, then diff each
//! table into its part of the change set.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};
use snapback_core::Repository;

use super::incident::{plan_incident_table, prepare_incident_table, IncidentInfo};
use super::sql_steps::check_sql_steps;
use super::{
    key_string, take_lock, Plan, RepairOptions, RepairSession, ResumeInfo, TablePlan,
    PRE_REPAIR_TAG, SAMPLE_ROWS,
};
use crate::apply::{
    check_expected, read_values, unfinished_runs, unique_conflicts, RunRecord, JOURNAL_TABLE,
};
use crate::changes::{ChangeSet, Conflict, Op, RowChange, TableChanges, TableCounts};
use crate::diff::{diff_table, prepare_table, DiffKind, PreparedTable, RowDiff, Side};
use crate::error::{Error, Result};
use crate::report::row_json;
use crate::schema::table_info;
use crate::script::{Action, LoadedScript, Script, TableScript};
use crate::source::{live_path, open_live_rw, resolve_snapshot, SnapshotDb};
use crate::value::Value;

impl RepairSession {
    /// Validates the script against the repository, the snapshot and the
    /// live database, and plans the repair. Writes nothing. With `lock`,
    /// the repair lock is taken first (and held until the session ends).
    pub fn plan(
        repo: Option<&Repository>,
        script: LoadedScript,
        opts: RepairOptions,
        lock: bool,
    ) -> Result<RepairSession> {
        let s = &script.script;
        let live = live_path(&s.live)?;
        let busy = s
            .busy_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(opts.busy_timeout);
        let lock = if lock {
            Some(take_lock(&live, opts.lock_wait)?)
        } else {
            None
        };
        let lconn = open_live_rw(&live, busy)?;
        let (sdb, after) = match &s.incident {
            None => (snapshot_side(repo, s, &live)?, None),
            Some(_) => {
                let (b, a, info) = incident_sides(repo, s, &live)?;
                (b, Some((a, info)))
            }
        };
        let sconn = sdb.open()?;
        let sside = Side {
            conn: &sconn,
            place: sdb.describe(),
        };
        let lside = Side {
            conn: &lconn,
            place: live.display().to_string(),
        };
        let aconn = after.as_ref().map(|(a, _)| a.open()).transpose()?;
        let aside = after.as_ref().zip(aconn.as_ref()).map(|((a, _), c)| Side {
            conn: c,
            place: a.describe(),
        });

        let (tables, three_way) = match &aside {
            None => (prepare_tables(s, &sside, &lside)?, vec![]),
            Some(aside) => {
                let mut bl = Vec::new();
                let mut rest = Vec::new();
                for ts in &s.tables {
                    let (t, ba, al) = prepare_incident_table(&sside, aside, &lside, ts)?;
                    for pt in [&t, &ba, &al] {
                        check_repairable(pt)?;
                    }
                    bl.push(t);
                    rest.push((ba, al));
                }
                (bl, rest)
            }
        };
        check_sql_steps(&lconn, &lside.place, &sdb, &script)?;
        let resume = run_to_resume(&lconn, &lside.place, &script)?;

        let mut plan_tables = Vec::new();
        let mut changes = ChangeSet::default();
        for (i, (ts, pt)) in s.tables.iter().zip(&tables).enumerate() {
            let three = aside
                .as_ref()
                .zip(three_way.get(i))
                .map(|(a, (ba, al))| (a, ba, al));
            let (table_plan, tc) = plan_table(&sside, &lside, ts, pt, opts.keep_all_rows, three)?;
            changes.tables.push(tc);
            plan_tables.push(table_plan);
        }

        let resume_info = match &resume {
            None => None,
            Some(r) => Some(resume_info(&lconn, &lside.place, r)?),
        };
        if let Some(r) = &resume {
            // The stored change set is what will be applied: show its counts.
            changes = r.changes.clone();
            count_from(&mut plan_tables, &changes);
        }
        let plan = Plan {
            script: script.path.display().to_string(),
            script_sha256: script.sha256.clone(),
            description: s.description.clone(),
            live: live.clone(),
            source: sdb.describe(),
            source_snapshot: sdb.snapshot_id().map(|i| i.to_hex()),
            source_db: sdb.db_path.clone(),
            tables: plan_tables,
            sql_steps: s.sql.iter().map(|q| q.statement.clone()).collect(),
            resume: resume_info,
            incident: after.map(|(_, info)| info),
            changes,
        };
        drop(aconn);
        drop(sconn);
        drop(lconn);
        Ok(RepairSession {
            script,
            live,
            plan,
            sdb,
            tables,
            lock,
            opts: RepairOptions {
                busy_timeout: busy,
                ..opts
            },
        })
    }

    /// Pins a reviewed change set (from `repair --plan-out`): checks, in
    /// the live database, that every row it changes is still as the plan
    /// saw it (no row to insert exists, every row to update or delete has
    /// its planned values); then the session applies exactly that change
    /// set. Returns the rows that moved, and pins nothing, when some did.
    /// A run being resumed keeps its own stored change set.
    pub fn pin(&mut self, reviewed: ChangeSet) -> Result<Vec<Conflict>> {
        if self.plan.resume.is_some() {
            return Ok(vec![]);
        }
        let conn = open_live_rw(&self.live, self.opts.busy_timeout)?;
        let place = self.live.display().to_string();
        let moved = check_expected(&conn, &place, &reviewed)?;
        if !moved.is_empty() {
            return Err(Error::Conflict(format!(
                "{place}: the live database moved beyond the reviewed plan: {} planned row(s) are no longer as the plan saw them, e.g. {} key {}: {}; nothing was written. Make a new plan (repair SCRIPT --plan-out FILE) and review it",
                moved.len(),
                moved[0].table,
                key_string(&moved[0].key),
                moved[0].reason
            )));
        }
        count_from(&mut self.plan.tables, &reviewed);
        self.plan.changes = reviewed;
        Ok(moved)
    }

    /// True when applying would change nothing.
    pub fn is_noop(&self) -> bool {
        self.plan.resume.is_none() && self.plan.changes.is_empty() && self.plan.sql_steps.is_empty()
    }
}

/// The snapshot side of the diff: the file the script names, or the
/// snapshot it selects, materialized.
fn snapshot_side(repo: Option<&Repository>, s: &Script, live: &Path) -> Result<SnapshotDb> {
    match (&s.snapshot_db, &s.snapshot) {
        (Some(f), _) => SnapshotDb::from_file(f),
        (None, Some(sel)) => {
            let repo = repo.ok_or_else(|| {
                Error::Input("the script names a snapshot: give the repository with --repo (or SNAPBACK_REPO)".into())
            })?;
            // Pre-repair snapshots hold the damage a repair removed:
            // never a source.
            let (snap, file) =
                resolve_snapshot(repo, sel, s.path.as_deref(), live, &[PRE_REPAIR_TAG])?;
            SnapshotDb::in_place(repo, &snap, &file)
        }
        (None, None) => Err(Error::Input("the script names no snapshot".into())),
    }
}

/// The two sides of an incident script, `before` (the source) and
/// `after`, each a point resolved as `snapshot` is (never a pre-repair
/// snapshot) and materialized; `before` must be the earlier.
fn incident_sides(
    repo: Option<&Repository>,
    s: &Script,
    live: &Path,
) -> Result<(SnapshotDb, SnapshotDb, IncidentInfo)> {
    let (Some(i), Some(repo)) = (&s.incident, repo) else {
        return Err(Error::Input(
            "the script names an [incident]: give the repository with --repo (or SNAPBACK_REPO)"
                .into(),
        ));
    };
    let find = |what: &str, sel: &str| {
        resolve_snapshot(repo, sel, s.path.as_deref(), live, &[PRE_REPAIR_TAG])
            .map_err(|e| Error::Input(format!("[incident] {what} = {sel:?}: {e}")))
    };
    let (b, bf) = find("before", &i.before)?;
    let (a, af) = find("after", &i.after)?;
    if b.time >= a.time {
        return Err(Error::Input(format!(
            "[incident] before ({}) is not earlier than after ({}): give the point before the incident as `before` and one after it as `after`; nothing was written",
            b.describe(),
            a.describe()
        )));
    }
    let info = IncidentInfo {
        before: b.describe(),
        before_snapshot: b.selector(),
        after: a.describe(),
        after_snapshot: a.selector(),
    };
    Ok((
        SnapshotDb::in_place(repo, &b, &bf)?,
        SnapshotDb::in_place(repo, &a, &af)?,
        info,
    ))
}

/// Refuses a virtual table, and columns to repair whose type changed.
fn check_repairable(pt: &PreparedTable) -> Result<()> {
    if let Some(m) = &pt.virtual_module {
        return Err(Error::Input(format!(
            "table {} is a virtual table ({m}): `snapback diff` compares its rows, but repair writes ordinary tables only; repair the table its content comes from, or rebuild the index (for FTS: INSERT INTO {}({}) VALUES('rebuild')); nothing was written",
            pt.table, pt.table, pt.table
        )));
    }
    let blockers = pt.repair_blockers();
    if !blockers.is_empty() {
        return Err(Error::Input(format!(
            "schema mismatch on the columns to repair: {}; nothing was written (limit `columns` to columns whose type did not change)",
            blockers.join("; ")
        )));
    }
    Ok(())
}

/// Pairs each table of the script on both sides, refusing a virtual table
/// and columns to repair whose type changed.
fn prepare_tables(s: &Script, sside: &Side<'_>, lside: &Side<'_>) -> Result<Vec<PreparedTable>> {
    let mut tables = Vec::new();
    for ts in &s.tables {
        let pt = prepare_table(sside, lside, &ts.selection())?;
        check_repairable(&pt)?;
        tables.push(pt);
    }
    Ok(tables)
}

/// The interrupted run of this same script, to be resumed; an error when
/// another unfinished run is recorded in the live database (it must be
/// finished or abandoned first).
fn run_to_resume(
    lconn: &Connection,
    place: &str,
    script: &LoadedScript,
) -> Result<Option<RunRecord>> {
    let mut resume = None;
    for r in &unfinished_runs(lconn, place)? {
        if r.kind == "repair" && r.script_sha256.as_deref() == Some(script.sha256.as_str()) {
            resume = Some(r.clone());
        } else {
            return Err(Error::Input(format!(
                "{place}: an unfinished {kind} {id} (started {started}) is recorded in this database, so no other repair runs until it is closed; nothing was written. Either finish it: {finish}; or close it with `snapback repair --abandon {id} --live {place}` (the changes it committed stay, are recorded in the audit log, and `snapback undo {id}` reverts them)",
                kind = r.kind,
                id = r.repair_id,
                started = r.started_at,
                finish = if r.kind == "undo" {
                    format!(
                        "run `snapback undo {}` again",
                        r.script_sha256.as_deref().and_then(|m| m.strip_prefix("undo:")).unwrap_or("?")
                    )
                } else {
                    format!(
                        "run the script it was started with again (sha256 {})",
                        r.script_sha256.as_deref().unwrap_or("?")
                    )
                }
            )));
        }
    }
    Ok(resume)
}

/// How far the interrupted run `r` got.
fn resume_info(lconn: &Connection, place: &str, r: &RunRecord) -> Result<ResumeInfo> {
    let done: i64 = lconn
        .query_row(
            &format!("SELECT count(*) FROM {JOURNAL_TABLE} WHERE repair_id = ?1 AND table_index < 1000000"),
            params![r.repair_id],
            |row| row.get(0),
        )
        .map_err(|e| Error::sqlite(place, "cannot read the repair journal", e))?;
    Ok(ResumeInfo {
        repair_id: r.repair_id.clone(),
        started_at: r.started_at.clone(),
        pre_repair_snapshot: r.pre_snapshot.clone(),
        batches_done: done as u64,
        batches_total: r.changes.batches() as u64,
    })
}

/// Diffs one table and turns each difference an enabled action covers into
/// a row change: the table's part of the plan and of the change set. With
/// `three_way` (the after side and the table prepared before/after and
/// after/live), only the rows the incident changed and nobody since.
fn plan_table(
    sside: &Side<'_>,
    lside: &Side<'_>,
    ts: &TableScript,
    pt: &PreparedTable,
    keep_all_rows: bool,
    three_way: Option<(&Side<'_>, &PreparedTable, &PreparedTable)>,
) -> Result<(TablePlan, TableChanges)> {
    let mut draft = TableDraft {
        ts,
        pt,
        whole_row: whole_row_columns(lside, pt)?,
        counts: TableCounts {
            table: pt.table.clone(),
            ..Default::default()
        },
        rows: Vec::new(),
        tc: TableChanges {
            table: pt.table.clone(),
            key_columns: pt.key.columns.clone(),
            key_collations: pt.key.collations.clone(),
            guard: ts.guard.clone(),
            batch_size: ts.batch(),
            changes: vec![],
        },
    };
    // One read transaction per table: the diff and the whole rows read for
    // deletions see the same state of the live database.
    lside
        .conn
        .execute_batch("BEGIN")
        .map_err(|e| Error::sqlite(&lside.place, "cannot start a read transaction", e))?;
    let incident = match three_way {
        Some((aside, ba, al)) => Some(plan_incident_table(
            [sside, aside, lside],
            (pt, ba, al),
            &mut draft,
            keep_all_rows,
        )?),
        None => {
            diff_table(sside, lside, pt, |d| {
                let action = draft.take(lside, &d)?;
                if keep_all_rows || draft.rows.len() < SAMPLE_ROWS {
                    let mut j = row_json(pt, &d);
                    j["action"] = serde_json::Value::from(action);
                    draft.rows.push(j);
                }
                Ok(())
            })?;
            None
        }
    };
    let TableDraft {
        mut counts,
        rows,
        mut tc,
        ..
    } = draft;
    // Deletes first, then updates, then inserts (each in key order): a row
    // re-created under another key frees its UNIQUE values before the
    // snapshot's row is inserted.
    tc.changes.sort_by_key(|c| match c.op {
        Op::Delete => 0,
        Op::Update => 1,
        Op::Insert => 2,
    });
    let blocked = unique_conflicts(lside.conn, &lside.place, &tc)?;
    lside
        .conn
        .execute_batch("COMMIT")
        .map_err(|e| Error::sqlite(&lside.place, "cannot end a read transaction", e))?;
    counts.blocked = blocked.len() as u64;
    let table_plan = TablePlan {
        table: pt.table.clone(),
        key: pt.key.clone(),
        compared: pt.compare_columns().map(str::to_string).collect(),
        actions: ts.actions.clone(),
        guard: ts.guard.clone(),
        counts,
        schema_diffs: pt.schema_diffs.clone(),
        blocked,
        incident,
        rows,
    };
    Ok((table_plan, tc))
}

/// Every stored column of the live table but the key: what a deleted row
/// is recorded with, so that undo brings it back exactly (also the columns
/// only live has).
fn whole_row_columns(lside: &Side<'_>, pt: &PreparedTable) -> Result<Vec<String>> {
    Ok(table_info(lside.conn, &lside.place, &pt.table)?
        .map(|ti| {
            ti.stored_columns()
                .filter(|c| {
                    !pt.key
                        .columns
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(&c.name))
                })
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_else(|| pt.data_columns.clone()))
}

/// One table's plan as its diff goes by: counts, sample rows, changes.
pub(super) struct TableDraft<'a> {
    ts: &'a TableScript,
    pt: &'a PreparedTable,
    whole_row: Vec<String>,
    counts: TableCounts,
    pub(super) rows: Vec<serde_json::Value>,
    tc: TableChanges,
}

impl TableDraft<'_> {
    /// Counts one difference and, when an enabled action covers it and no
    /// guard holds it back, records its change. Returns the action's name
    /// for the plan's rows.
    pub(super) fn take(&mut self, lside: &Side<'_>, d: &RowDiff) -> Result<&'static str> {
        let ts = self.ts;
        Ok(match d.kind {
            DiffKind::OnlyInSnapshot if ts.has(Action::InsertMissing) => {
                self.counts.insert += 1;
                self.tc.changes.push(RowChange {
                    op: Op::Insert,
                    key: d.key.clone(),
                    columns: self.pt.data_columns.clone(),
                    before: None,
                    after: d.snapshot.clone(),
                });
                "insert"
            }
            DiffKind::OnlyInLive if ts.has(Action::DeleteExtra) && d.guarded => {
                self.counts.guard_skipped += 1;
                "guard_skip"
            }
            DiffKind::OnlyInLive if ts.has(Action::DeleteExtra) => {
                self.counts.delete += 1;
                let change = self.delete(lside, d)?;
                self.tc.changes.push(change);
                "delete"
            }
            DiffKind::Changed if ts.has(Action::UpdateChanged) && d.guarded => {
                self.counts.guard_skipped += 1;
                "guard_skip"
            }
            DiffKind::Changed if ts.has(Action::UpdateChanged) => {
                self.counts.update += 1;
                let change = self.update(d);
                self.tc.changes.push(change);
                "update"
            }
            _ => {
                self.counts.not_selected += 1;
                "not_selected"
            }
        })
    }

    /// A row only live has, deleted: recorded whole (every stored column of
    /// the live table), read again when the diff did not carry them all.
    fn delete(&self, lside: &Side<'_>, d: &RowDiff) -> Result<RowChange> {
        let pt = self.pt;
        let before = if self.whole_row == pt.data_columns {
            d.live.clone()
        } else {
            let v = read_values(lside.conn, &pt.table, &pt.key, &self.whole_row, &d.key)
                .map_err(|e| Error::sqlite(&lside.place, "cannot read a row to delete", e))?;
            Some(v.ok_or_else(|| {
                Error::Input(format!(
                    "{}: table {}: the row with key {} vanished while it was being read; nothing was written, plan again",
                    lside.place,
                    pt.table,
                    key_string(&d.key)
                ))
            })?)
        };
        Ok(RowChange {
            op: Op::Delete,
            key: d.key.clone(),
            columns: self.whole_row.clone(),
            before,
            after: None,
        })
    }

    /// A changed row, set back: the compared columns that differ, and key
    /// columns whose bytes differ (a NOCASE or RTRIM key), before the
    /// others.
    fn update(&self, d: &RowDiff) -> RowChange {
        let pt = self.pt;
        let pick = |key: &[Value], v: &Option<Vec<Value>>| {
            v.as_ref().map(|v| {
                d.key_changed
                    .iter()
                    .filter_map(|&i| key.get(i).cloned())
                    .chain(d.changed.iter().filter_map(|&i| v.get(i).cloned()))
                    .collect()
            })
        };
        RowChange {
            op: Op::Update,
            key: d.key.clone(),
            columns: d
                .key_changed
                .iter()
                .map(|&i| pt.key.columns[i].clone())
                .chain(d.changed.iter().map(|&i| pt.data_columns[i].clone()))
                .collect(),
            before: pick(d.live_key(), &d.live),
            after: pick(&d.key, &d.snapshot),
        }
    }
}

/// Sets each table's insert/update/delete counts to those of the change set
/// that will be applied (a stored run's, or a reviewed plan's), so the plan
/// shows what really happens.
fn count_from(tables: &mut [TablePlan], changes: &ChangeSet) {
    for p in tables {
        let stored = changes.tables.iter().find(|t| t.table == p.table);
        let n = |op| {
            stored.map_or(0, |t| {
                t.changes.iter().filter(|c| c.op == op).count() as u64
            })
        };
        p.counts.insert = n(Op::Insert);
        p.counts.update = n(Op::Update);
        p.counts.delete = n(Op::Delete);
    }
}
