//! Applying a change set to a live database, in batches, resumably.
//!
//! The protocol, for a database the application keeps writing:
//! - The whole change set is stored in `_snapback_repair_runs` (in the live
//!   database itself) before the first change, so a resumed repair applies
//!   exactly the plan that was shown, not a new one.
//! - Each batch is one `BEGIN IMMEDIATE` transaction: the rows' changes and
//!   the batch's row in `_snapback_repair_journal` commit together. A killed
//!   repair leaves whole batches, each recorded, and never an unrecorded
//!   change. Resuming skips the recorded batches.
//! - Inside the transaction, each row is read again before it is written:
//!   a row that no longer holds the planned "before" values (the
//!   application changed it since the plan), or that now matches the
//!   guard, is left alone and reported as a conflict.
//! - SQLITE_BUSY waits (busy timeout), then retries the batch with backoff;
//!   only after `max_wait` does the repair stop, with a clear error, and it
//!   can be resumed.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use crate::changes::{ChangeSet, Conflict, Op, RowChange, TableChanges};
use crate::error::{is_busy, Error, Result};
use crate::schema::quote_ident;
use crate::value::{same_value, Value};

pub const RUNS_TABLE: &str = "_snapback_repair_runs";
pub const JOURNAL_TABLE: &str = "_snapback_repair_journal";

/// A repair (or undo) recorded in the live database.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub repair_id: String,
    pub kind: String,
    pub script_sha256: Option<String>,
    pub changes: ChangeSet,
    pub pre_snapshot: Option<String>,
    pub source_snapshot: Option<String>,
    pub started_at: String,
}

pub fn ensure_journal(conn: &Connection, place: &str) -> Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {RUNS_TABLE}(
            repair_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            script_sha256 TEXT,
            changes TEXT NOT NULL,
            pre_snapshot TEXT,
            source_snapshot TEXT,
            state TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            audit_key TEXT);
         CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE}(
            repair_id TEXT NOT NULL,
            table_index INTEGER NOT NULL,
            batch INTEGER NOT NULL,
            applied INTEGER NOT NULL,
            conflicts TEXT NOT NULL,
            committed_at TEXT NOT NULL,
            PRIMARY KEY(repair_id, table_index, batch));"
    ))
    .map_err(|e| Error::sqlite(place, "cannot create the repair journal tables", e))
}

fn journal_exists(conn: &Connection, place: &str) -> Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        params![RUNS_TABLE],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(|e| Error::sqlite(place, "cannot read the schema", e))
}

/// Unfinished runs (state `applying`: running or killed; `failed`: stopped
/// by an error, recorded in the audit log), oldest first.
pub fn unfinished_runs(conn: &Connection, place: &str) -> Result<Vec<RunRecord>> {
    if !journal_exists(conn, place)? {
        return Ok(vec![]);
    }
    let err = |e| Error::sqlite(place, "cannot read the repair journal", e);
    let mut st = conn
        .prepare(&format!(
            "SELECT repair_id, kind, script_sha256, changes, pre_snapshot, source_snapshot, started_at
             FROM {RUNS_TABLE} WHERE state IN ('applying', 'failed') ORDER BY started_at"
        ))
        .map_err(err)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(err)?;
    let mut out = Vec::new();
    for (id, kind, sha, changes, pre, src, started) in rows {
        let changes: ChangeSet = serde_json::from_str(&changes).map_err(|e| {
            Error::Input(format!(
                "{place}: the stored change set of repair {id} is unreadable ({e}); close the run with `snapback repair --abandon {id} --live {place}`"
            ))
        })?;
        out.push(RunRecord {
            repair_id: id,
            kind,
            script_sha256: sha,
            changes,
            pre_snapshot: pre,
            source_snapshot: src,
            started_at: started,
        });
    }
    Ok(out)
}

/// Records a new run, with its whole change set, before any change.
pub fn insert_run(conn: &Connection, place: &str, run: &RunRecord) -> Result<()> {
    let changes = serde_json::to_string(&run.changes)
        .map_err(|e| Error::Input(format!("cannot encode the change set: {e}")))?;
    with_busy_retry(place, Duration::from_secs(600), || {
        conn.execute(
            &format!(
                "INSERT INTO {RUNS_TABLE}(repair_id, kind, script_sha256, changes, pre_snapshot, source_snapshot, state, started_at)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, 'applying', ?7)"
            ),
            params![
                run.repair_id,
                run.kind,
                run.script_sha256,
                changes,
                run.pre_snapshot,
                run.source_snapshot,
                run.started_at
            ],
        )
    })
    .map_err(|e| err_busy(place, "cannot record the repair in the journal", e))?;
    Ok(())
}

/// Sets a run's state: `failed` (stays unfinished: the same script resumes
/// it) or `abandoned` (closed; its committed changes stay).
pub fn mark_run(
    conn: &Connection,
    place: &str,
    id: &str,
    state: &str,
    audit_key: Option<&str>,
) -> Result<()> {
    with_busy_retry(place, Duration::from_secs(600), || {
        conn.execute(
            &format!("UPDATE {RUNS_TABLE} SET state = ?2, finished_at = ?3, audit_key = coalesce(?4, audit_key) WHERE repair_id = ?1"),
            params![id, state, now(), audit_key],
        )
    })
    .map_err(|e| err_busy(place, "cannot record the repair's state in the journal", e))?;
    Ok(())
}

pub fn finish_run(conn: &Connection, place: &str, id: &str, audit_key: &str) -> Result<()> {
    with_busy_retry(place, Duration::from_secs(600), || {
        conn.execute(
            &format!("UPDATE {RUNS_TABLE} SET state = 'done', finished_at = ?2, audit_key = ?3 WHERE repair_id = ?1"),
            params![id, now(), audit_key],
        )
    })
    .map_err(|e| err_busy(place, "cannot mark the repair done in the journal", e))?;
    Ok(())
}

fn now() -> String {
    snapback_core::time::format_rfc3339(snapback_core::time::now())
}

fn err_busy(place: &str, what: &str, e: rusqlite::Error) -> Error {
    if is_busy(&e) {
        Error::Busy {
            path: place.into(),
            message: format!("{what}: {e}"),
        }
    } else {
        Error::sqlite(place, what, e)
    }
}

/// Runs `f` until it succeeds, fails with something other than BUSY, or
/// `max_wait` has passed.
fn with_busy_retry<T>(
    place: &str,
    max_wait: Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match f() {
            Err(e) if is_busy(&e) && start.elapsed() < max_wait => {
                tracing::info!(db = place, "live database busy; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Give up on a busy database after this long (the repair can be resumed).
    pub max_wait: Duration,
    /// Write even where the live row is not in the expected state (undo
    /// --force). Guards still apply.
    pub force: bool,
    /// A pause after each batch: a testing knob (SNAPBACK_REPAIR_BATCH_DELAY_MS).
    pub batch_delay: Duration,
    /// A testing knob (SNAPBACK_REPAIR_EXIT_AFTER_BATCHES): after this many
    /// batches committed by this process, the process exits at once with
    /// code 137, as if it had been killed (nothing after the commit runs).
    /// Makes kill-and-resume tests deterministic.
    pub exit_after_batches: Option<u64>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_wait: Duration::from_secs(300),
            force: false,
            batch_delay: Duration::ZERO,
            exit_after_batches: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub batches_applied: u64,
    pub batches_resumed: u64,
    pub rows_changed: u64,
    /// (table index, change index) of every row left alone.
    pub conflicts: Vec<(usize, usize, Conflict)>,
}

impl ApplyReport {
    /// The change set that was really applied: `changes` minus conflicts.
    pub fn applied(&self, changes: &ChangeSet) -> ChangeSet {
        let skip: std::collections::HashSet<(usize, usize)> =
            self.conflicts.iter().map(|(t, c, _)| (*t, *c)).collect();
        ChangeSet {
            tables: changes
                .tables
                .iter()
                .enumerate()
                .map(|(ti, t)| TableChanges {
                    changes: t
                        .changes
                        .iter()
                        .enumerate()
                        .filter(|(ci, _)| !skip.contains(&(ti, *ci)))
                        .map(|(_, c)| c.clone())
                        .collect(),
                    ..t.clone()
                })
                .collect(),
        }
    }
}

fn key_where(t: &TableChanges, from: usize) -> String {
    t.key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| match t.key_collations.get(i) {
            Some(c) => format!(
                "{} IS ?{} COLLATE {}",
                quote_ident(k),
                from + i,
                c.sql_name()
            ),
            None => format!("{} IS ?{}", quote_ident(k), from + i),
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The live row's current values of `cols` and whether it matches the
/// guard; `None` when there is no row with the key.
fn read_row(
    conn: &Connection,
    t: &TableChanges,
    cols: &[String],
    key: &[Value],
) -> rusqlite::Result<Option<(Vec<Value>, bool)>> {
    let sel: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
    let guard = t
        .guard
        .as_ref()
        .map(|g| format!("CASE WHEN ({g}) THEN 1 ELSE 0 END"))
        .unwrap_or_else(|| "0".into());
    let sql = format!(
        "SELECT {}{}{guard} FROM main.{} WHERE {}",
        sel.join(", "),
        if sel.is_empty() { "" } else { ", " },
        quote_ident(&t.table),
        key_where(t, 1)
    );
    let mut st = conn.prepare_cached(&sql)?;
    st.query_row(params_from_iter(key.iter()), |r| {
        let mut v = Vec::with_capacity(cols.len());
        for i in 0..cols.len() {
            v.push(Value::from_ref(r.get_ref(i)?));
        }
        Ok((v, r.get::<_, i64>(cols.len())? != 0))
    })
    .optional()
}

/// The live row's current values of `cols` (`None` when there is no row
/// with the key), without a guard.
pub(crate) fn read_values(
    conn: &Connection,
    table: &str,
    key: &crate::schema::Key,
    cols: &[String],
    key_values: &[Value],
) -> rusqlite::Result<Option<Vec<Value>>> {
    let t = TableChanges {
        table: table.to_string(),
        key_columns: key.columns.clone(),
        key_collations: key.collations.clone(),
        guard: None,
        batch_size: 1,
        changes: vec![],
    };
    Ok(read_row(conn, &t, cols, key_values)?.map(|(v, _)| v))
}

/// For the dry run: the planned inserts and updates of `t` that a UNIQUE
/// index of the live database would refuse now, because another live row
/// (one the plan does not delete) holds the same values. Indexes on
/// expressions and partial indexes are not checked here; `--apply` leaves
/// any row a constraint refuses alone and reports it.
pub(crate) fn unique_conflicts(
    conn: &Connection,
    place: &str,
    t: &TableChanges,
) -> Result<Vec<Conflict>> {
    let err = |e| Error::sqlite(place, "cannot read the live database's indexes", e);
    let mut st = conn
        .prepare("SELECT name FROM pragma_index_list(?1, 'main') WHERE \"unique\" AND NOT partial")
        .map_err(err)?;
    let names: Vec<String> = st
        .query_map(params![t.table], |r| r.get(0))
        .and_then(|r| r.collect())
        .map_err(err)?;
    let mut indexes: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for n in names {
        let mut st = conn
            .prepare(
                "SELECT name, coll FROM pragma_index_xinfo(?1, 'main') WHERE key ORDER BY seqno",
            )
            .map_err(err)?;
        let cols: Vec<(Option<String>, String)> = st
            .query_map(params![n], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect())
            .map_err(err)?;
        if cols.iter().all(|(c, _)| c.is_some()) {
            let cols = cols
                .into_iter()
                .filter_map(|(c, k)| c.map(|c| (c, k)))
                .collect();
            indexes.push((n, cols));
        }
    }
    if indexes.is_empty() {
        return Ok(vec![]);
    }
    let deleted: Vec<&Vec<Value>> = t
        .changes
        .iter()
        .filter(|c| c.op == Op::Delete)
        .map(|c| &c.key)
        .collect();
    let keys_sel: Vec<String> = t.key_columns.iter().map(|k| quote_ident(k)).collect();
    let mut out = Vec::new();
    'change: for c in t.changes.iter().filter(|c| c.op != Op::Delete) {
        for (name, cols) in &indexes {
            let touched = cols
                .iter()
                .any(|(col, _)| c.columns.iter().any(|x| x.eq_ignore_ascii_case(col)));
            if c.op == Op::Update && !touched {
                continue;
            }
            let mut vals = Vec::with_capacity(cols.len());
            for (col, _) in cols {
                let v = if let Some(i) = t
                    .key_columns
                    .iter()
                    .position(|k| k.eq_ignore_ascii_case(col))
                {
                    c.key.get(i).cloned()
                } else if let Some(i) = c.columns.iter().position(|k| k.eq_ignore_ascii_case(col)) {
                    c.after.as_ref().and_then(|a| a.get(i).cloned())
                } else if c.op == Op::Update {
                    read_row(conn, t, std::slice::from_ref(col), &c.key)
                        .map_err(err)?
                        .and_then(|(v, _)| v.into_iter().next())
                } else {
                    None
                };
                match v {
                    Some(v) if v != Value::Null => vals.push(v),
                    // NULLs never collide in a UNIQUE index; an omitted
                    // column takes its default, which is not checked here.
                    _ => continue 'change,
                }
            }
            let cond: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, (col, coll))| {
                    format!(
                        "{} = ?{} COLLATE {}",
                        quote_ident(col),
                        i + 1,
                        quote_ident(coll)
                    )
                })
                .collect();
            let sql = format!(
                "SELECT {} FROM main.{} WHERE {} LIMIT 5",
                keys_sel.join(", "),
                quote_ident(&t.table),
                cond.join(" AND ")
            );
            let mut st = conn.prepare_cached(&sql).map_err(err)?;
            let n = t.key_columns.len();
            let found: Vec<Vec<Value>> = st
                .query_map(params_from_iter(vals.iter()), |r| {
                    (0..n).map(|i| r.get_ref(i).map(Value::from_ref)).collect()
                })
                .and_then(|r| r.collect())
                .map_err(err)?;
            if let Some(other) = found
                .iter()
                .find(|k| !same_row(k, &c.key) && !deleted.iter().any(|d| same_row(d, k)))
            {
                out.push(Conflict {
                    table: t.table.clone(),
                    key: c.key.clone(),
                    op: c.op,
                    reason: format!(
                        "UNIQUE index {name} ({}) refuses it: the live row with key {} holds the same value(s); --apply will leave this row alone",
                        cols.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", "),
                        serde_json::to_string(other).unwrap_or_default()
                    ),
                });
                continue 'change;
            }
        }
    }
    Ok(out)
}

fn same_row(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| same_value(x.as_ref(), y.as_ref()))
}

/// Applies one row's change inside the open transaction. `Ok(Some(reason))`
/// means it was left alone.
fn apply_row(
    conn: &Connection,
    t: &TableChanges,
    c: &RowChange,
    force: bool,
) -> rusqlite::Result<Option<String>> {
    let table = quote_ident(&t.table);
    let current = read_row(conn, t, &c.columns, &c.key)?;
    let empty: Vec<Value> = vec![];
    match c.op {
        Op::Insert => {
            if let Some((now, guarded)) = &current {
                if *guarded {
                    return Ok(Some("a live row with this key matches the guard".into()));
                }
                if !force {
                    if same_row(now, c.after.as_ref().unwrap_or(&empty)) {
                        return Ok(Some("already present with the same values".into()));
                    }
                    return Ok(Some(
                        "a row with this key exists now (inserted since the plan)".into(),
                    ));
                }
            }
            if current.is_some() {
                // Forced over a row that exists now: set its columns, by
                // its key. (INSERT OR REPLACE would also delete any other
                // row that shares a UNIQUE value with this one.)
                update_row(conn, t, c)?;
                return Ok(None);
            }
            let cols: Vec<String> = t
                .key_columns
                .iter()
                .chain(&c.columns)
                .map(|c| quote_ident(c))
                .collect();
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let sql = format!(
                "INSERT INTO main.{table}({}) VALUES({})",
                cols.join(", "),
                marks.join(", ")
            );
            let vals: Vec<&Value> = c.key.iter().chain(c.after.iter().flatten()).collect();
            conn.prepare_cached(&sql)?.execute(params_from_iter(vals))?;
            Ok(None)
        }
        Op::Update | Op::Delete => {
            let Some((now, guarded)) = current else {
                return Ok(Some("the row is gone (deleted since the plan)".into()));
            };
            if guarded {
                return Ok(Some("the live row matches the guard now".into()));
            }
            if !force && !same_row(&now, c.before.as_ref().unwrap_or(&empty)) {
                if c.op == Op::Update && same_row(&now, c.after.as_ref().unwrap_or(&empty)) {
                    return Ok(Some("already has the planned values".into()));
                }
                return Ok(Some("the live row changed since the plan".into()));
            }
            if c.op == Op::Delete {
                let sql = format!("DELETE FROM main.{table} WHERE {}", key_where(t, 1));
                conn.prepare_cached(&sql)?
                    .execute(params_from_iter(c.key.iter()))?;
            } else {
                update_row(conn, t, c)?;
            }
            Ok(None)
        }
    }
}

/// Sets the row's `columns` to `after`, by its key.
fn update_row(conn: &Connection, t: &TableChanges, c: &RowChange) -> rusqlite::Result<()> {
    let n = c.columns.len();
    if n == 0 {
        return Ok(());
    }
    let sets: Vec<String> = c
        .columns
        .iter()
        .enumerate()
        .map(|(i, col)| format!("{} = ?{}", quote_ident(col), i + 1))
        .collect();
    let sql = format!(
        "UPDATE main.{} SET {} WHERE {}",
        quote_ident(&t.table),
        sets.join(", "),
        key_where(t, n + 1)
    );
    let vals: Vec<&Value> = c.after.iter().flatten().chain(c.key.iter()).collect();
    conn.prepare_cached(&sql)?.execute(params_from_iter(vals))?;
    Ok(())
}

/// True for SQLITE_CONSTRAINT and its extended codes (UNIQUE, NOT NULL,
/// CHECK, FOREIGN KEY, a trigger's RAISE).
pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

/// `apply_row` inside a savepoint: a row that a constraint of the live
/// database refuses (e.g. a UNIQUE value that the application has given to
/// another row since) is rolled back alone and reported as left alone; it
/// never fails the batch.
fn apply_row_guarded(
    conn: &Connection,
    t: &TableChanges,
    c: &RowChange,
    force: bool,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SAVEPOINT snapback_row")?.execute([])?;
    match apply_row(conn, t, c, force) {
        Err(e) if is_constraint(&e) => {
            conn.prepare_cached("ROLLBACK TO snapback_row")?
                .execute([])?;
            conn.prepare_cached("RELEASE snapback_row")?.execute([])?;
            Ok(Some(format!(
                "a constraint of the live database refuses it: {e}"
            )))
        }
        Err(e) => Err(e),
        Ok(r) => {
            conn.prepare_cached("RELEASE snapback_row")?.execute([])?;
            Ok(r)
        }
    }
}

/// (table index, batch) -> the conflicts recorded with that batch, as
/// (change index, conflict).
pub(crate) type CommittedBatches = HashMap<(usize, usize), Vec<(usize, Conflict)>>;

/// Batches of `run` already committed, with the conflicts they recorded.
pub(crate) fn committed_batches(
    conn: &Connection,
    place: &str,
    id: &str,
) -> Result<CommittedBatches> {
    let err = |e| Error::sqlite(place, "cannot read the repair journal", e);
    let mut st = conn
        .prepare(&format!(
            "SELECT table_index, batch, conflicts FROM {JOURNAL_TABLE} WHERE repair_id = ?1"
        ))
        .map_err(err)?;
    let rows = st
        .query_map(params![id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(err)?;
    let mut out = HashMap::new();
    for (t, b, c) in rows {
        let c: Vec<(usize, Conflict)> = serde_json::from_str(&c).map_err(|e| {
            Error::Input(format!(
                "{place}: unreadable journal entry for repair {id}: {e}"
            ))
        })?;
        out.insert((t as usize, b as usize), c);
    }
    Ok(out)
}

/// Applies (or resumes) the recorded run `id`'s change set.
pub fn apply_changes(
    conn: &mut Connection,
    place: &Path,
    id: &str,
    changes: &ChangeSet,
    opts: &ApplyOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<ApplyReport> {
    let place_s = place.display().to_string();
    let done = committed_batches(conn, &place_s, id)?;
    let mut report = ApplyReport::default();
    let total = changes.batches();
    let mut n = 0;
    for (ti, t) in changes.tables.iter().enumerate() {
        let bs = t.batch_size.max(1);
        for (bi, chunk) in t.changes.chunks(bs).enumerate() {
            n += 1;
            if let Some(c) = done.get(&(ti, bi)) {
                report.batches_resumed += 1;
                report
                    .conflicts
                    .extend(c.iter().map(|(ci, cf)| (ti, *ci, cf.clone())));
                continue;
            }
            let start = Instant::now();
            let mut pause = Duration::from_millis(20);
            let (applied, conflicts) = loop {
                match apply_batch(conn, id, t, ti, bi, bs, chunk, opts.force) {
                    Ok(r) => break r,
                    Err(e) if is_busy(&e) && start.elapsed() < opts.max_wait => {
                        tracing::info!(db = %place_s, table = %t.table, batch = bi, "live database busy; retrying the batch");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    Err(e) if is_busy(&e) => {
                        return Err(Error::Busy {
                            path: place.to_path_buf(),
                            message: format!(
                                "gave up after {}s at table {} batch {} ({} of {} batches committed)",
                                opts.max_wait.as_secs(),
                                t.table,
                                bi + 1,
                                n - 1,
                                total
                            ),
                        })
                    }
                    Err(e) => {
                        return Err(Error::sqlite(
                            place,
                            format!("cannot apply batch {} of table {} (it was rolled back; earlier batches are committed and recorded, so running the repair again resumes here)", bi + 1, t.table),
                            e,
                        ))
                    }
                }
            };
            report.batches_applied += 1;
            report.rows_changed += applied;
            report
                .conflicts
                .extend(conflicts.into_iter().map(|(ci, cf)| (ti, ci, cf)));
            progress(n, total);
            if opts.exit_after_batches == Some(report.batches_applied) {
                tracing::warn!(
                    batches = report.batches_applied,
                    "SNAPBACK_REPAIR_EXIT_AFTER_BATCHES: exiting as if killed"
                );
                std::process::exit(137);
            }
            if !opts.batch_delay.is_zero() {
                std::thread::sleep(opts.batch_delay);
            }
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn apply_batch(
    conn: &mut Connection,
    id: &str,
    t: &TableChanges,
    ti: usize,
    bi: usize,
    bs: usize,
    chunk: &[RowChange],
    force: bool,
) -> rusqlite::Result<(u64, Vec<(usize, Conflict)>)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut applied = 0u64;
    let mut conflicts = Vec::new();
    for (i, c) in chunk.iter().enumerate() {
        match apply_row_guarded(&tx, t, c, force)? {
            None => applied += 1,
            Some(reason) => conflicts.push((
                bi * bs + i,
                Conflict {
                    table: t.table.clone(),
                    key: c.key.clone(),
                    op: c.op,
                    reason,
                },
            )),
        }
    }
    let cj = serde_json::to_string(&conflicts)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.execute(
        &format!("INSERT INTO {JOURNAL_TABLE}(repair_id, table_index, batch, applied, conflicts, committed_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"),
        params![id, ti as i64, bi as i64, applied as i64, cj, now()],
    )?;
    tx.commit()?;
    Ok((applied, conflicts))
}

/// For undo: rows whose live state is not what the change expects to find
/// (the repair's "after"), without writing anything.
pub fn check_expected(
    conn: &Connection,
    place: &str,
    changes: &ChangeSet,
) -> Result<Vec<Conflict>> {
    let mut out = Vec::new();
    let err = |e| Error::sqlite(place, "cannot read the live database", e);
    for t in &changes.tables {
        for c in &t.changes {
            let now = read_row(conn, t, &c.columns, &c.key).map_err(err)?;
            let empty = vec![];
            let reason = match (c.op, now) {
                (Op::Insert, Some(_)) => Some(
                    "a row with this key exists (the repair deleted it; it was re-created since)"
                        .to_string(),
                ),
                (Op::Insert, None) => None,
                (_, None) => Some("the row is gone (deleted since the repair)".to_string()),
                (_, Some((v, _))) if !same_row(&v, c.before.as_ref().unwrap_or(&empty)) => {
                    Some(format!(
                        "changed since the repair: now ({}) where the repair left ({})",
                        v.iter()
                            .map(|x| x.display_short(30))
                            .collect::<Vec<_>>()
                            .join(", "),
                        c.before
                            .iter()
                            .flatten()
                            .map(|x| x.display_short(30))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
                _ => None,
            };
            if let Some(reason) = reason {
                out.push(Conflict {
                    table: t.table.clone(),
                    key: c.key.clone(),
                    op: c.op,
                    reason,
                });
            }
        }
    }
    Ok(out)
}
