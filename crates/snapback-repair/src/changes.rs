//! Change sets: exactly which rows a repair changes, from what to what.
//!
//! A change set is data: it is planned, printed, stored in the live
//! database's journal before the first write (so a killed repair resumes
//! with the same plan), recorded in the audit log, and inverted by undo.

use serde::{Deserialize, Serialize};

use crate::value::{Collation, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// One row's change. `columns` names the values in `before` and `after`:
/// for an update, the columns it sets; for an insert or a delete, every
/// column it writes or removes (besides the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowChange {
    pub op: Op,
    pub key: Vec<Value>,
    pub columns: Vec<String>,
    /// The live row's values before (update, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Vec<Value>>,
    /// The row's values after (update, insert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<Value>>,
}

impl RowChange {
    /// The change that reverts this one.
    pub fn inverse(&self) -> RowChange {
        RowChange {
            op: match self.op {
                Op::Insert => Op::Delete,
                Op::Delete => Op::Insert,
                Op::Update => Op::Update,
            },
            key: self.key.clone(),
            columns: self.columns.clone(),
            before: self.after.clone(),
            after: self.before.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableChanges {
    pub table: String,
    /// Key columns (for a rowid key, the alias: rowid, _rowid_ or oid).
    pub key_columns: Vec<String>,
    /// The collations that paired rows by those columns; rows are found
    /// under them, so a key whose case was changed ('alice' for 'Alice'
    /// under NOCASE) still finds its row. Empty in plans stored before
    /// this was recorded: the columns' own collations are used then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_collations: Vec<Collation>,
    /// Live rows matching this predicate are never changed.
    #[serde(default)]
    pub guard: Option<String>,
    pub batch_size: usize,
    pub changes: Vec<RowChange>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChangeSet {
    pub tables: Vec<TableChanges>,
}

impl ChangeSet {
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.changes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batches(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.changes.len().div_ceil(t.batch_size.max(1)))
            .sum()
    }

    /// The change set that reverts this one, without guards.
    pub fn inverse(&self) -> ChangeSet {
        ChangeSet {
            tables: self
                .tables
                .iter()
                .map(|t| TableChanges {
                    table: t.table.clone(),
                    key_columns: t.key_columns.clone(),
                    key_collations: t.key_collations.clone(),
                    guard: None,
                    batch_size: t.batch_size,
                    changes: t.changes.iter().map(RowChange::inverse).collect(),
                })
                .collect(),
        }
    }
}

/// A row that was not changed, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conflict {
    pub table: String,
    pub key: Vec<Value>,
    pub op: Op,
    pub reason: String,
}

/// Counts per table, for plans, reports and audit entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableCounts {
    pub table: String,
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
    /// Differing rows left alone because the live row matched the guard.
    pub guard_skipped: u64,
    /// Differences no enabled action covers (e.g. extra live rows when
    /// `delete_extra` is off).
    pub not_selected: u64,
    /// Rows that changed between planning and applying (left alone).
    #[serde(default)]
    pub conflicts: u64,
    /// Planned changes that a UNIQUE index of the live database refuses at
    /// planning time (another live row holds the value); --apply leaves
    /// them alone unless that changed meanwhile.
    #[serde(default)]
    pub blocked: u64,
}
