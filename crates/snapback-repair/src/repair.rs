//! Repairs and undo: plan, then apply.
//!
//! `RepairSession::plan` validates everything (script, tables, columns,
//! keys, predicates, SQL steps, snapshot selector, live database access)
//! and computes the change set without writing anything. `apply` then:
//! takes a `pre-repair` snapshot of the live database through the core API
//! (refusing to go on if that fails), records the run and its change set in
//! the live database, applies it in recorded batches, runs the SQL steps,
//! diffs again to show that the selection now matches, and appends an audit
//! entry. A second repair of the same database waits for, or fails on, the
//! lock file `<live>.snapback-repair.lock`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::Serialize;
use snapback_core::{Id, NoProgress, Repository, SnapshotOptions};

use crate::apply::{
    apply_changes, check_expected, ensure_journal, finish_run, insert_run, read_values,
    unfinished_runs, unique_conflicts, ApplyOptions, ApplyReport, RunRecord, JOURNAL_TABLE,
};
use crate::audit::{self, AuditEntry, SqlStepRecord};
use crate::changes::{ChangeSet, Conflict, Op, RowChange, TableChanges, TableCounts};
use crate::diff::{diff_table, prepare_table, DiffKind, PreparedTable, SchemaDiff, Side};
use crate::error::{is_busy, Error, Result};
use crate::report::row_json;
use crate::schema::{table_info, Key};
use crate::script::{Action, LoadedScript};
use crate::source::{live_path, open_live_rw, resolve_snapshot, sqlite_uri, SnapshotDb};

/// The tag of the snapshot taken before every repair and undo; the core's
/// retention (`forget`) keeps these until they are released.
pub const PRE_REPAIR_TAG: &str = snapback_core::PRE_REPAIR_TAG;

/// Row diffs kept per table for the human plan.
pub const SAMPLE_ROWS: usize = 10;

/// Holds `<live>.snapback-repair.lock`: an exclusive SQLite lock on a small
/// side database. The operating system drops it when the process dies, so
/// a killed repair never leaves a stale lock.
pub struct RepairLock {
    _conn: Connection,
    pub path: PathBuf,
}

pub fn lock_path(live: &Path) -> PathBuf {
    PathBuf::from(format!("{}.snapback-repair.lock", live.display()))
}

/// Takes the repair lock of `live`, waiting up to `wait` for another repair.
pub fn take_lock(live: &Path, wait: Duration) -> Result<RepairLock> {
    let path = lock_path(live);
    // A repair writes to the live database: refuse one that cannot be
    // written before anything (the lock file included) is created.
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(live) {
        return Err(match e.kind() {
            std::io::ErrorKind::NotFound => Error::Input(format!(
                "the live database {} does not exist; nothing was written",
                live.display()
            )),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Error::Input(format!(
                    "the live database {} is read-only ({e}); a repair writes to it, so nothing was written. Check its permissions and its file system",
                    live.display()
                ))
            }
            _ => Error::Input(format!(
                "cannot open the live database {} for writing: {e}; nothing was written",
                live.display()
            )),
        });
    }
    let conn = Connection::open(&path)
        .map_err(|e| Error::sqlite(&path, "cannot open the repair lock file", e))?;
    conn.busy_timeout(wait)
        .map_err(|e| Error::sqlite(&path, "cannot set a busy timeout", e))?;
    match conn.execute_batch("BEGIN EXCLUSIVE") {
        Ok(()) => Ok(RepairLock { _conn: conn, path }),
        Err(e) if is_busy(&e) => Err(Error::Locked {
            path: live.to_path_buf(),
            lock: path,
        }),
        Err(e) => Err(Error::sqlite(&path, "cannot take the repair lock", e)),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TablePlan {
    pub table: String,
    pub key: Key,
    pub compared: Vec<String>,
    pub actions: Vec<Action>,
    pub guard: Option<String>,
    pub counts: TableCounts,
    pub schema_diffs: Vec<SchemaDiff>,
    /// Planned changes that a UNIQUE index of the live database refuses
    /// now (see `TableCounts::blocked`), and why.
    pub blocked: Vec<Conflict>,
    /// Row differences as JSON objects (see `row_json`), each with an
    /// `"action"`: insert, update, delete, guard_skip or not_selected. All
    /// of them when the plan was made with `keep_all_rows`, else the first
    /// `SAMPLE_ROWS`.
    pub rows: Vec<serde_json::Value>,
}

/// A repair interrupted earlier, to be resumed.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeInfo {
    pub repair_id: String,
    pub started_at: String,
    pub pre_repair_snapshot: Option<String>,
    pub batches_done: u64,
    pub batches_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub script: String,
    pub script_sha256: String,
    pub description: Option<String>,
    pub live: PathBuf,
    pub source: String,
    pub source_snapshot: Option<String>,
    pub source_db: Option<String>,
    pub tables: Vec<TablePlan>,
    pub sql_steps: Vec<String>,
    /// Set when an interrupted run of this script will be resumed: then the
    /// change set is the stored one, not a new diff.
    pub resume: Option<ResumeInfo>,
    #[serde(skip)]
    pub changes: ChangeSet,
}

impl Plan {
    pub fn total(&self) -> TableCounts {
        let mut t = TableCounts {
            table: "(all)".into(),
            ..Default::default()
        };
        for p in &self.tables {
            t.insert += p.counts.insert;
            t.update += p.counts.update;
            t.delete += p.counts.delete;
            t.guard_skipped += p.counts.guard_skipped;
            t.not_selected += p.counts.not_selected;
            t.blocked += p.counts.blocked;
        }
        t
    }
}

#[derive(Debug, Clone)]
pub struct RepairOptions {
    pub apply: ApplyOptions,
    /// How long to wait for another repair of the same database.
    pub lock_wait: Duration,
    /// Busy timeout of each statement on the live database.
    pub busy_timeout: Duration,
    /// Keep every row diff in the plan (for `--json`), not just a sample.
    pub keep_all_rows: bool,
}

impl Default for RepairOptions {
    fn default() -> Self {
        RepairOptions {
            apply: ApplyOptions::default(),
            lock_wait: Duration::ZERO,
            busy_timeout: Duration::from_secs(5),
            keep_all_rows: false,
        }
    }
}

/// What an applied repair did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub repair_id: String,
    pub resumed: bool,
    pub pre_repair_snapshot: Option<String>,
    pub rows_changed: u64,
    pub batches_applied: u64,
    pub batches_resumed: u64,
    pub counts: Vec<TableCounts>,
    pub conflicts: Vec<Conflict>,
    pub sql_steps: Vec<SqlStepRecord>,
    /// Differences an enabled action covers that are still there (guards
    /// and conflicts aside): 0 means the selection now matches.
    pub remaining_differences: u64,
    pub remaining_sample: Vec<serde_json::Value>,
    pub audit_key: String,
}

/// A planned repair: validated input, the snapshot side, the plan.
pub struct RepairSession {
    pub script: LoadedScript,
    pub live: PathBuf,
    pub plan: Plan,
    sdb: SnapshotDb,
    tables: Vec<PreparedTable>,
    lock: Option<RepairLock>,
    opts: RepairOptions,
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        let t = snapback_core::time::now().unix_timestamp_nanos();
        let h = Id::of(format!("{t}-{}", std::process::id()).as_bytes());
        b.copy_from_slice(&h.0[..8]);
    }
    hex::encode(b)
}

fn now() -> String {
    snapback_core::time::format_rfc3339(snapback_core::time::now())
}

fn key_string(key: &[crate::value::Value]) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

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
        let sdb = match (&s.snapshot_db, &s.snapshot) {
            (Some(f), _) => SnapshotDb::from_file(f)?,
            (None, Some(sel)) => {
                let repo = repo.ok_or_else(|| {
                    Error::Input("the script names a snapshot: give the repository with --repo (or SNAPBACK_REPO)".into())
                })?;
                // Pre-repair snapshots hold the damage a repair removed:
                // never a source.
                let (snap, file) =
                    resolve_snapshot(repo, sel, s.path.as_deref(), &live, &[PRE_REPAIR_TAG])?;
                SnapshotDb::materialize(repo, &snap, &file)?
            }
            (None, None) => return Err(Error::Input("the script names no snapshot".into())),
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

        let mut tables = Vec::new();
        for ts in &s.tables {
            let pt = prepare_table(&sside, &lside, &ts.selection())?;
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
            tables.push(pt);
        }
        check_sql_steps(&lconn, &lside.place, &sdb, &script)?;

        let unfinished = unfinished_runs(&lconn, &lside.place)?;
        let mut resume = None;
        for r in &unfinished {
            if r.kind == "repair" && r.script_sha256.as_deref() == Some(script.sha256.as_str()) {
                resume = Some(r.clone());
            } else {
                return Err(Error::Input(format!(
                    "{place}: an unfinished {kind} {id} (started {started}) is recorded in this database, so no other repair runs until it is closed; nothing was written. Either finish it: {finish}; or close it with `snapback repair --abandon {id} --live {place}` (the changes it committed stay, are recorded in the audit log, and `snapback undo {id}` reverts them)",
                    place = lside.place,
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

        let mut plan_tables = Vec::new();
        let mut changes = ChangeSet::default();
        let mut all_blocked = Vec::new();
        for (ts, pt) in s.tables.iter().zip(&tables) {
            let mut counts = TableCounts {
                table: pt.table.clone(),
                ..Default::default()
            };
            let mut rows = Vec::new();
            let mut tc = TableChanges {
                table: pt.table.clone(),
                key_columns: pt.key.columns.clone(),
                key_collations: pt.key.collations.clone(),
                guard: ts.guard.clone(),
                batch_size: ts.batch(),
                changes: vec![],
            };
            let keep_all = opts.keep_all_rows;
            let whole_row: Vec<String> = table_info(&lconn, &lside.place, &pt.table)?
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
                .unwrap_or_else(|| pt.data_columns.clone());
            // One read transaction per table: the diff and the whole rows
            // read for deletions see the same state of the live database.
            lconn
                .execute_batch("BEGIN")
                .map_err(|e| Error::sqlite(&lside.place, "cannot start a read transaction", e))?;
            diff_table(&sside, &lside, pt, |d| {
                let action = match d.kind {
                    DiffKind::OnlyInSnapshot if ts.has(Action::InsertMissing) => {
                        counts.insert += 1;
                        tc.changes.push(RowChange {
                            op: Op::Insert,
                            key: d.key.clone(),
                            columns: pt.data_columns.clone(),
                            before: None,
                            after: d.snapshot.clone(),
                        });
                        "insert"
                    }
                    DiffKind::OnlyInLive if ts.has(Action::DeleteExtra) && d.guarded => {
                        counts.guard_skipped += 1;
                        "guard_skip"
                    }
                    DiffKind::OnlyInLive if ts.has(Action::DeleteExtra) => {
                        counts.delete += 1;
                        // A deleted row is recorded whole (every stored
                        // column of the live table, also those that only
                        // live has), so that undo brings it back exactly.
                        let before = if whole_row == pt.data_columns {
                            d.live.clone()
                        } else {
                            let v = read_values(&lconn, &pt.table, &pt.key, &whole_row, &d.key)
                                .map_err(|e| {
                                    Error::sqlite(&lside.place, "cannot read a row to delete", e)
                                })?;
                            Some(v.ok_or_else(|| {
                                Error::Input(format!(
                                    "{}: table {}: the row with key {} vanished while it was being read; nothing was written, plan again",
                                    lside.place,
                                    pt.table,
                                    key_string(&d.key)
                                ))
                            })?)
                        };
                        tc.changes.push(RowChange {
                            op: Op::Delete,
                            key: d.key.clone(),
                            columns: whole_row.clone(),
                            before,
                            after: None,
                        });
                        "delete"
                    }
                    DiffKind::Changed if ts.has(Action::UpdateChanged) && d.guarded => {
                        counts.guard_skipped += 1;
                        "guard_skip"
                    }
                    DiffKind::Changed if ts.has(Action::UpdateChanged) => {
                        counts.update += 1;
                        // Key columns whose bytes differ (a NOCASE or
                        // RTRIM key) are set back too, before the others.
                        let pick =
                            |key: &[crate::value::Value], v: &Option<Vec<crate::value::Value>>| {
                                v.as_ref().map(|v| {
                                    d.key_changed
                                        .iter()
                                        .filter_map(|&i| key.get(i).cloned())
                                        .chain(d.changed.iter().filter_map(|&i| v.get(i).cloned()))
                                        .collect()
                                })
                            };
                        tc.changes.push(RowChange {
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
                        });
                        "update"
                    }
                    _ => {
                        counts.not_selected += 1;
                        "not_selected"
                    }
                };
                if keep_all || rows.len() < SAMPLE_ROWS {
                    let mut j = row_json(pt, &d);
                    j["action"] = serde_json::Value::from(action);
                    rows.push(j);
                }
                Ok(())
            })?;
            // Deletes first, then updates, then inserts (each in key
            // order): a row re-created under another key frees its UNIQUE
            // values before the snapshot's row is inserted.
            tc.changes.sort_by_key(|c| match c.op {
                Op::Delete => 0,
                Op::Update => 1,
                Op::Insert => 2,
            });
            let blocked = unique_conflicts(&lconn, &lside.place, &tc)?;
            lconn
                .execute_batch("COMMIT")
                .map_err(|e| Error::sqlite(&lside.place, "cannot end a read transaction", e))?;
            counts.blocked = blocked.len() as u64;
            all_blocked.push(blocked);
            changes.tables.push(tc);
            plan_tables.push(TablePlan {
                table: pt.table.clone(),
                key: pt.key.clone(),
                compared: pt.compare_columns().map(str::to_string).collect(),
                actions: ts.actions.clone(),
                guard: ts.guard.clone(),
                counts,
                schema_diffs: pt.schema_diffs.clone(),
                blocked: all_blocked.pop().unwrap_or_default(),
                rows,
            });
        }

        let resume_info = match &resume {
            None => None,
            Some(r) => {
                let done: i64 = lconn
                    .query_row(
                        &format!("SELECT count(*) FROM {JOURNAL_TABLE} WHERE repair_id = ?1 AND table_index < 1000000"),
                        params![r.repair_id],
                        |row| row.get(0),
                    )
                    .map_err(|e| Error::sqlite(&lside.place, "cannot read the repair journal", e))?;
                Some(ResumeInfo {
                    repair_id: r.repair_id.clone(),
                    started_at: r.started_at.clone(),
                    pre_repair_snapshot: r.pre_snapshot.clone(),
                    batches_done: done as u64,
                    batches_total: r.changes.batches() as u64,
                })
            }
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
            changes,
        };
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

    /// Applies the plan (or resumes the interrupted run). Needs the lock:
    /// plan with `lock = true`.
    pub fn apply(
        &self,
        repo: &Repository,
        mut progress: impl FnMut(&str),
    ) -> Result<Option<Outcome>> {
        if self.lock.is_none() {
            return Err(Error::Input(
                "internal: apply needs the repair lock; plan with lock = true".into(),
            ));
        }
        if self.is_noop() {
            return Ok(None);
        }
        let place = self.live.display().to_string();
        let mut conn = open_live_rw(&self.live, self.opts.busy_timeout)?;
        let (repair_id, pre, resumed) = match &self.plan.resume {
            Some(r) => {
                progress(&format!(
                    "resuming repair {} ({} of {} batches were committed)",
                    r.repair_id, r.batches_done, r.batches_total
                ));
                (r.repair_id.clone(), r.pre_repair_snapshot.clone(), true)
            }
            None => {
                progress("taking a pre-repair snapshot of the live database");
                let pre = pre_repair_snapshot(repo, &self.live)?;
                progress(&format!("pre-repair snapshot {pre}"));
                ensure_journal(&conn, &place)?;
                let id = random_id();
                insert_run(
                    &conn,
                    &place,
                    &RunRecord {
                        repair_id: id.clone(),
                        kind: "repair".into(),
                        script_sha256: Some(self.script.sha256.clone()),
                        changes: self.plan.changes.clone(),
                        pre_snapshot: Some(pre.clone()),
                        source_snapshot: self.plan.source_snapshot.clone(),
                        started_at: now(),
                    },
                )?;
                (id, Some(pre), false)
            }
        };
        let changes = &self.plan.changes;
        let stopped = |conn: &Connection, e: Error| {
            let steps: Vec<String> = self
                .script
                .script
                .sql
                .iter()
                .map(|q| q.statement.clone())
                .collect();
            let entry = AuditEntry {
                script_path: Some(self.script.path.display().to_string()),
                script: Some(self.script.text.clone()),
                script_sha256: Some(self.script.sha256.clone()),
                source_snapshot: self.plan.source_snapshot.clone(),
                source_db: self.plan.source_db.clone(),
                ..unfinished_entry(
                    "repair",
                    &repair_id,
                    &place,
                    pre.clone(),
                    Some(e.to_string()),
                )
            };
            record_stopped(repo, conn, &place, &repair_id, changes, &steps, entry, e)
        };
        let report = match apply_changes(
            &mut conn,
            &self.live,
            &repair_id,
            changes,
            &self.opts.apply,
            |n, total| {
                tracing::info!(batch = n, of = total, "batch committed");
            },
        ) {
            Ok(r) => r,
            Err(e) => return Err(stopped(&conn, e)),
        };
        progress(&format!(
            "applied {} row change(s) in {} batch(es){}",
            report.rows_changed,
            report.batches_applied,
            if report.batches_resumed > 0 {
                format!(
                    " ({} batch(es) had been committed before)",
                    report.batches_resumed
                )
            } else {
                String::new()
            }
        ));
        let sql_steps = match self.run_sql_steps(&mut conn, &repair_id) {
            Ok(s) => s,
            Err(e) => {
                let _ = conn.execute_batch("DETACH DATABASE snapshot");
                return Err(stopped(&conn, e));
            }
        };

        // Diff again: what the enabled actions cover should be gone.
        let (remaining, remaining_sample) = self.verify(&conn, &report)?;
        let applied = report.applied(changes);
        let counts = self.counts_after(&report);
        let entry = AuditEntry {
            seq: 0,
            prev: None,
            time: now(),
            user: audit::os_user(),
            host: audit::host(),
            kind: "repair".into(),
            repair_id: repair_id.clone(),
            undoes: None,
            live: place.clone(),
            script_path: Some(self.script.path.display().to_string()),
            script: Some(self.script.text.clone()),
            script_sha256: Some(self.script.sha256.clone()),
            source_snapshot: self.plan.source_snapshot.clone(),
            source_db: self
                .plan
                .source_db
                .clone()
                .or_else(|| Some(self.sdb.path.display().to_string())),
            pre_repair_snapshot: pre.clone(),
            counts: counts.clone(),
            changes: applied,
            conflicts: report.conflicts.iter().map(|c| c.2.clone()).collect(),
            sql_steps: sql_steps.clone(),
            remaining_differences: remaining,
            snapback_version: env!("CARGO_PKG_VERSION").into(),
            failed: None,
        };
        let stored = append_once(repo, entry)?;
        finish_run(&conn, &place, &repair_id, &stored.key)?;
        Ok(Some(Outcome {
            repair_id,
            resumed,
            pre_repair_snapshot: pre,
            rows_changed: report.rows_changed,
            batches_applied: report.batches_applied,
            batches_resumed: report.batches_resumed,
            counts,
            conflicts: report.conflicts.into_iter().map(|c| c.2).collect(),
            sql_steps,
            remaining_differences: remaining,
            remaining_sample,
            audit_key: stored.key,
        }))
    }

    fn counts_after(&self, report: &ApplyReport) -> Vec<TableCounts> {
        let mut out: Vec<TableCounts> = Vec::new();
        for (ti, t) in self.plan.changes.tables.iter().enumerate() {
            let mut c = self
                .plan
                .tables
                .iter()
                .find(|p| p.table == t.table)
                .map(|p| p.counts.clone())
                .unwrap_or_default();
            c.table = t.table.clone();
            // Counts of the stored change set (a resumed run may differ
            // from a fresh diff), minus the rows left alone.
            c.insert = 0;
            c.update = 0;
            c.delete = 0;
            for (ci, ch) in t.changes.iter().enumerate() {
                if report
                    .conflicts
                    .iter()
                    .any(|(a, b, _)| *a == ti && *b == ci)
                {
                    continue;
                }
                match ch.op {
                    Op::Insert => c.insert += 1,
                    Op::Update => c.update += 1,
                    Op::Delete => c.delete += 1,
                }
            }
            c.conflicts = report.conflicts.iter().filter(|(a, _, _)| *a == ti).count() as u64;
            out.push(c);
        }
        out
    }

    fn run_sql_steps(&self, conn: &mut Connection, repair_id: &str) -> Result<Vec<SqlStepRecord>> {
        let place = self.live.display().to_string();
        let steps = &self.script.script.sql;
        if steps.is_empty() {
            return Ok(vec![]);
        }
        attach_snapshot(conn, &place, &self.sdb)?;
        let mut out = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let ti = 1_000_000 + i as i64;
            let done: Option<i64> = conn
                .query_row(
                    &format!("SELECT applied FROM {JOURNAL_TABLE} WHERE repair_id = ?1 AND table_index = ?2"),
                    params![repair_id, ti],
                    |r| r.get(0),
                )
                .ok();
            if let Some(n) = done {
                out.push(SqlStepRecord {
                    statement: s.statement.clone(),
                    rows_changed: n as u64,
                });
                continue;
            }
            let start = std::time::Instant::now();
            let n = loop {
                let r = (|| -> rusqlite::Result<u64> {
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let n = tx.execute(&s.statement, [])? as u64;
                    tx.execute(
                        &format!("INSERT INTO {JOURNAL_TABLE}(repair_id, table_index, batch, applied, conflicts, committed_at) VALUES(?1, ?2, 0, ?3, '[]', ?4)"),
                        params![repair_id, ti, n as i64, now()],
                    )?;
                    tx.commit()?;
                    Ok(n)
                })();
                match r {
                    Ok(n) => break n,
                    Err(e) if is_busy(&e) && start.elapsed() < self.opts.apply.max_wait => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => {
                        return Err(Error::sqlite(
                            &place,
                            format!("SQL step {} failed and was rolled back (the row changes and SQL steps before it are committed and recorded)", i + 1),
                            e,
                        ))
                    }
                }
            };
            out.push(SqlStepRecord {
                statement: s.statement.clone(),
                rows_changed: n,
            });
        }
        conn.execute_batch("DETACH DATABASE snapshot")
            .map_err(|e| Error::sqlite(&place, "cannot detach the snapshot", e))?;
        Ok(out)
    }

    /// Differences left that an enabled action covers, minus guarded rows
    /// and rows left alone as conflicts.
    fn verify(
        &self,
        conn: &Connection,
        report: &ApplyReport,
    ) -> Result<(u64, Vec<serde_json::Value>)> {
        let sconn = self.sdb.open()?;
        let sside = Side {
            conn: &sconn,
            place: self.sdb.describe(),
        };
        let lside = Side {
            conn,
            place: self.live.display().to_string(),
        };
        let skip: HashSet<(String, String)> = report
            .conflicts
            .iter()
            .map(|(_, _, c)| (c.table.clone(), key_string(&c.key)))
            .collect();
        let mut remaining = 0u64;
        let mut sample = Vec::new();
        for (ts, pt) in self.script.script.tables.iter().zip(&self.tables) {
            diff_table(&sside, &lside, pt, |d| {
                let covered = match d.kind {
                    DiffKind::OnlyInSnapshot => ts.has(Action::InsertMissing),
                    DiffKind::OnlyInLive => ts.has(Action::DeleteExtra),
                    DiffKind::Changed => ts.has(Action::UpdateChanged),
                };
                if covered && !d.guarded && !skip.contains(&(pt.table.clone(), key_string(&d.key)))
                {
                    remaining += 1;
                    if sample.len() < SAMPLE_ROWS {
                        sample.push(row_json(pt, &d));
                    }
                }
                Ok(())
            })?;
        }
        Ok((remaining, sample))
    }
}

fn check_sql_steps(
    conn: &Connection,
    place: &str,
    sdb: &SnapshotDb,
    script: &LoadedScript,
) -> Result<()> {
    if script.script.sql.is_empty() {
        return Ok(());
    }
    attach_snapshot(conn, place, sdb)?;
    let mut err = None;
    for (i, s) in script.script.sql.iter().enumerate() {
        match writes_snapshot(conn, &s.statement) {
            Err(e) => {
                err = Some(Error::Input(format!(
                    "SQL step {} ({:?}) is not valid SQL here: {e}; nothing was written",
                    i + 1,
                    s.statement
                )));
                break;
            }
            Ok(true) => {
                err = Some(Error::Input(format!(
                    "SQL step {} ({:?}) writes to the schema `snapshot`, the snapshot's database, which is attached read-only: it would fail at --apply. Write to the live database's tables (schema `main`, e.g. `UPDATE main.t SET ... FROM snapshot.t`); nothing was written",
                    i + 1,
                    s.statement
                )));
                break;
            }
            Ok(false) => {}
        }
    }
    conn.execute_batch("DETACH DATABASE snapshot")
        .map_err(|e| Error::sqlite(place, "cannot detach the snapshot", e))?;
    err.map_or(Ok(()), Err)
}

/// Whether `statement` (one statement; trailing ones are an error) would
/// open a write transaction on the attached schema `snapshot`: its
/// bytecode has a `Transaction` on that database with the write flag, or an
/// `OpenWrite` cursor on it.
fn writes_snapshot(conn: &Connection, statement: &str) -> rusqlite::Result<bool> {
    let idx: i64 = conn.query_row(
        "SELECT seq FROM pragma_database_list WHERE name = 'snapshot'",
        [],
        |r| r.get(0),
    )?;
    let mut st = conn.prepare(&format!("EXPLAIN {statement}"))?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    for row in rows {
        let (op, p1, p2, p3) = row?;
        if (op == "Transaction" && p1 == idx && p2 != 0) || (op == "OpenWrite" && p3 == idx) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn attach_snapshot(conn: &Connection, place: &str, sdb: &SnapshotDb) -> Result<()> {
    conn.execute(
        "ATTACH DATABASE ?1 AS snapshot",
        params![sqlite_uri(&sdb.path, "mode=ro&immutable=1")],
    )
    .map(|_| ())
    .map_err(|e| {
        Error::sqlite(
            place,
            "cannot attach the snapshot's database as `snapshot`",
            e,
        )
    })
}

fn pre_repair_snapshot(repo: &Repository, live: &Path) -> Result<String> {
    let opts = SnapshotOptions {
        tags: vec![PRE_REPAIR_TAG.to_string()],
        ..Default::default()
    };
    let r = repo
        .snapshot(&[live.to_path_buf()], &opts, &NoProgress)
        .map_err(|e| {
            Error::Input(format!(
                "the pre-repair snapshot of {} failed, so nothing was changed: {e}",
                live.display()
            ))
        })?;
    Ok(r.id.to_hex())
}

/// Appends `entry` unless an entry for the same repair id and kind is in
/// the log already (a resumed run that had written it before being killed).
fn append_once(repo: &Repository, entry: AuditEntry) -> Result<audit::StoredEntry> {
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
fn unfinished_entry(
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
fn record_committed(
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
fn record_stopped(
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
fn abandon_run(
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
            let pre = pre_repair_snapshot(repo, &live)?;
            ensure_journal(&conn, &place)?;
            let id = random_id();
            insert_run(
                &conn,
                &place,
                &RunRecord {
                    repair_id: id.clone(),
                    kind: "undo".into(),
                    script_sha256: Some(marker.clone()),
                    changes: inverse.clone(),
                    pre_snapshot: Some(pre.clone()),
                    source_snapshot: None,
                    started_at: now(),
                },
            )?;
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
