//! snapback-repair: record-level diff of a snapshot's SQLite database
//! against the live database, restore scripts, and audited, resumable,
//! undoable repairs.
//!
//! Layers, bottom up:
//! - `value`, `schema`: SQLite values compared with SQLite's semantics;
//!   tables, columns and the key that pairs rows.
//! - `scan`: a key-ordered scan of one side as batches of encoded rows, on
//!   the caller's thread or a thread of its own.
//! - `diff`: a streaming merge of two key-ordered scans.
//! - `source`: where the snapshot side comes from (a point opened in place
//!   through the snapback VFS, or a file given directly, e.g. in a mounted
//!   snapshot).
//! - `script`: the restore-script format (TOML).
//! - `changes`, `apply`: change sets and their batched, journaled,
//!   resumable application to a live database.
//! - `audit`: the hash-chained audit log in the repository.
//! - `repair`: plan, then apply; undo.
//!
//! The public surface is the `pub use` block below.

mod apply;
mod audit;
mod changes;
mod diff;
mod error;
mod forensics;
pub mod pages;
mod repair;
mod report;
mod scan;
mod schema;
mod script;
mod source;
mod value;

pub use apply::{ApplyOptions, ApplyReport, JOURNAL_TABLE, RUNS_TABLE};
pub use audit::{
    append as audit_append, list as audit_list, verify as audit_verify, AuditEntry, SqlStepRecord,
    StoredEntry, VerifyReport, AUDIT_PREFIX,
};
pub use changes::{ChangeSet, Conflict, Op, RowChange, TableChanges, TableCounts};
pub use diff::{
    check_pairing, compare_table_sets, compare_virtual_tables, diff_table, diff_table_by_pages,
    diff_table_threaded, prepare_table, sql_for, DiffCounts, DiffKind, PagesReport, PreparedTable,
    RowDiff, ScanSide, SchemaDiff, Side, TableSelection,
};
pub use error::{is_busy, Error, Result};
pub use forensics::{
    history, when, History, HistoryQuery, HistoryVersion, VersionOp, WhenQuery, WhenReport,
    WhenSide,
};
pub use repair::{
    abandon, find_entry, lock_path, take_lock, undo, AbandonOutcome, IncidentConflict,
    IncidentInfo, IncidentTable, Outcome, Plan, RepairLock, RepairOptions, RepairSession,
    ResumeInfo, TablePlan, UndoOutcome, PRE_REPAIR_TAG, SAMPLE_ROWS,
};
pub use report::{key_text, row_human, row_json};
pub use schema::{
    quote_ident, virtual_table_comparable, Key, KeySource, VirtualTable, JOURNAL_TABLES,
};
pub use script::{
    emit_script, Action, EmitScript, EmitSource, EmitTable, Incident, LoadedScript, Script,
    SqlStep, TableScript, DEFAULT_BATCH_SIZE,
};
pub use snapback_vfs::{PointFile, ReadStats};
pub use source::{
    live_path, open_live_readonly, open_live_rw, resolve_snapshot, sqlite_uri, SnapshotDb,
};
pub use value::{cmp_values, same_value, Collation, Value};
