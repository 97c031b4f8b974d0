//! snapback-repair: record-level diff of a snapshot's SQLite database
//! against the live database, restore scripts, and audited, resumable,
//! undoable repairs.
//!
//! Layers, bottom up:
//! - `value`, `schema`: SQLite values compared with SQLite's semantics;
//!   tables, columns and the key that pairs rows.
//! - `diff`: a streaming merge of two key-ordered scans.
//! - `source`: where the snapshot side comes from (a materialized snapshot
//!   file, or a file given directly, e.g. in a mounted snapshot).
//!
//! The public surface is the `pub use` block below.

mod diff;
mod error;
mod report;
mod schema;
mod source;
mod value;

pub use diff::{
    compare_table_sets, diff_table, prepare_table, sql_for, DiffCounts, DiffKind, PreparedTable,
    RowDiff, SchemaDiff, Side, TableSelection,
};
pub use error::{is_busy, Error, Result};
pub use report::{key_text, row_human, row_json};
pub use schema::{quote_ident, Key, KeySource, JOURNAL_TABLES};
pub use source::{
    live_path, open_live_readonly, open_live_rw, resolve_snapshot, sqlite_uri, SnapshotDb,
};
pub use value::{cmp_values, same_value, Collation, Value};
