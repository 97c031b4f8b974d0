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
//!
//! The steps, one module each:
//! - `lock`: the repair lock file, one repair or undo of a database at a time.
//! - `plan`: `RepairSession::plan` (source, tables, unfinished runs, the
//!   change set table by table), `pin` of a reviewed plan.
//! - `sql_steps`: the script's SQL steps, checked at plan time, run at apply.
//! - `run`: `RepairSession::apply`, and the diff after it.
//! - `record`: the audit entries of finished, stopped and abandoned runs.
//! - `abandon`: closing an unfinished run.
//! - `undo`: reverting a repair.

mod abandon;
mod incident;
mod lock;
mod plan;
mod record;
mod run;
mod sql_steps;
mod undo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use snapback_core::{NoProgress, Repository, SnapshotOptions};

use crate::apply::ApplyOptions;
use crate::audit::SqlStepRecord;
use crate::changes::{ChangeSet, Conflict, TableCounts};
use crate::diff::{PreparedTable, SchemaDiff};
use crate::error::Result;
use crate::schema::Key;
use crate::script::{Action, LoadedScript};
use crate::source::SnapshotDb;

pub use abandon::{abandon, AbandonOutcome};
pub use incident::{IncidentConflict, IncidentInfo, IncidentTable};
pub use lock::{lock_path, take_lock, RepairLock};
pub use record::find_entry;
pub use undo::{undo, UndoOutcome};

/// The tag of the snapshot taken before every repair and undo; the core's
/// retention (`forget`) keeps these until they are released.
pub const PRE_REPAIR_TAG: &str = snapback_core::PRE_REPAIR_TAG;

/// Row diffs kept per table for the human plan.
pub const SAMPLE_ROWS: usize = 10;
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
    /// For a script with `[incident]`: what the incident changed, and the
    /// rows changed by it and since (conflicts, every one listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentTable>,
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
    /// For a script with `[incident]`: the points before and after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentInfo>,
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
    /// The local capture state directory (`SnapshotOptions::state_dir`)
    /// of the pre-repair snapshot, so that it reads only the pages written
    /// since the previous capture when it can, as `snapback snapshot` does.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for RepairOptions {
    fn default() -> Self {
        RepairOptions {
            apply: ApplyOptions::default(),
            lock_wait: Duration::ZERO,
            busy_timeout: Duration::from_secs(5),
            keep_all_rows: false,
            state_dir: None,
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

/// A repair run's id: 8 random bytes from the operating system (the same
/// source as the core's repository and lock ids), as hex.
fn random_id() -> Result<String> {
    Ok(snapback_core::object::random_hex(8)?)
}

/// Records a new run in the live database's journal (creating its tables
/// when missing), under a new random id, started now; returns the id.
fn begin_run(
    conn: &rusqlite::Connection,
    place: &str,
    kind: &str,
    script_sha256: String,
    changes: &crate::changes::ChangeSet,
    pre: &str,
    source_snapshot: Option<String>,
) -> Result<String> {
    crate::apply::ensure_journal(conn, place)?;
    let id = random_id()?;
    crate::apply::insert_run(
        conn,
        place,
        &crate::apply::RunRecord {
            repair_id: id.clone(),
            kind: kind.into(),
            script_sha256: Some(script_sha256),
            changes: changes.clone(),
            pre_snapshot: Some(pre.to_string()),
            source_snapshot,
            started_at: now(),
        },
    )?;
    Ok(id)
}

fn now() -> String {
    snapback_core::time::format_rfc3339(snapback_core::time::now())
}

fn key_string(key: &[crate::value::Value]) -> String {
    serde_json::to_string(key).unwrap_or_default()
}

/// Takes the `pre-repair` snapshot of `live` before a repair or undo
/// writes; its id.
fn pre_repair_snapshot(repo: &Repository, live: &Path, ro: &RepairOptions) -> Result<String> {
    let opts = SnapshotOptions {
        tags: vec![PRE_REPAIR_TAG.to_string()],
        state_dir: ro.state_dir.clone(),
        ..Default::default()
    };
    let r = repo
        .snapshot(&[live.to_path_buf()], &opts, &NoProgress)
        .map_err(|e| {
            // The cause's kind stays: a held lock is `locked`, the store `io`.
            snapback_core::Error::context(
                format!(
                    "the pre-repair snapshot of {} failed, so nothing was changed",
                    live.display()
                ),
                e,
            )
        })?;
    Ok(r.id.to_hex())
}
