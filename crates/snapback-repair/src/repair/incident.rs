//! The three-way repair of a script with `[incident]` (docs/repair.md,
//! "Three-way repair"): three sides, `before` and `after` the incident
//! (points in the repository, materialized) and the live database.
//!
//! Per row of the selection, by key, on the key and compared columns,
//! with the exact value comparison of every diff:
//! - before == after: the incident did not touch it; left alone, whatever
//!   live holds (`changed_since_only` when live differs);
//! - before != after and after == live: the incident changed it and
//!   nobody since: restored to `before` by the enabled actions (an update,
//!   the re-insert of a row the incident deleted, the delete of a row it
//!   inserted);
//! - before != after and after != live: changed by the incident and since:
//!   a conflict, listed, never overwritten.
//!
//! Three streaming diffs: before/after (the incident's rows, kept in
//! memory: their number is what the incident changed), after/live (which
//! of them changed since), before/live (the row changes, as for any
//! script).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::key_string;
use super::plan::TableDraft;
use crate::diff::{diff_table, prepare_table, DiffKind, PreparedTable, RowDiff, Side};
use crate::error::{Error, Result};
use crate::report::{obj, row_json};
use crate::script::TableScript;
use crate::value::Value;

/// The incident of a three-way plan: the two points it lies between.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentInfo {
    /// The point before the incident (the source of restored values).
    pub before: String,
    pub before_snapshot: String,
    /// The point after the incident.
    pub after: String,
    pub after_snapshot: String,
}

/// One table of a three-way plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IncidentTable {
    /// Rows that differ between before and after.
    pub changed_by_incident: u64,
    /// Of those, rows that nobody changed since (after == live): what the
    /// enabled actions restore (`counts` says how many of each).
    pub unchanged_since: u64,
    /// Rows that differ between before and live which the incident did
    /// not change (written since): left alone.
    pub changed_since_only: u64,
    /// Rows changed by the incident and since: never overwritten. Every
    /// one is listed.
    pub conflicts: Vec<IncidentConflict>,
}

/// A row the incident changed and someone changed again since.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentConflict {
    pub key: serde_json::Value,
    /// The compared columns at each side; `null` where the row is absent.
    pub before: serde_json::Value,
    pub after: serde_json::Value,
    pub live: serde_json::Value,
    pub reason: String,
}

/// What the incident did to a row (before -> after), with the values of
/// the compared columns on each side.
struct IncidentRow {
    before: Option<Vec<Value>>,
    after: Option<Vec<Value>>,
}

/// The compared columns' values of `vals` (over `t.data_columns`).
fn compared(t: &PreparedTable, vals: &Option<Vec<Value>>) -> Option<Vec<Value>> {
    vals.as_ref().map(|v| {
        t.compare
            .iter()
            .filter_map(|&i| v.get(i).cloned())
            .collect()
    })
}

/// The tables of an incident script, prepared on the three sides with the
/// same key and the same compared columns (those the script names, or
/// every column the three sides have): before/live (what is applied and
/// verified), before/after and after/live.
pub(super) fn prepare_incident_table(
    before: &Side<'_>,
    after: &Side<'_>,
    live: &Side<'_>,
    ts: &TableScript,
) -> Result<(PreparedTable, PreparedTable, PreparedTable)> {
    let mut sel = ts.selection();
    let first = prepare_table(before, live, &sel)?;
    if sel.columns.is_none() {
        let ba = prepare_table(before, after, &sel)?;
        let cols: Vec<String> = first
            .compare_columns()
            .filter(|c| ba.data_columns.iter().any(|d| d.eq_ignore_ascii_case(c)))
            .map(str::to_string)
            .collect();
        if cols.is_empty() {
            return Err(Error::Input(format!(
                "table {}: no column besides the key is in all of before, after and the live database; nothing to compare",
                ts.name
            )));
        }
        sel.columns = Some(cols);
    }
    let bl = prepare_table(before, live, &sel)?;
    // The after side: rows filtered by `where` only (where_snapshot is
    // for before's rows, where_live for live's).
    let mut ba_sel = sel.clone();
    ba_sel.where_live = ts.where_both.clone();
    let ba = prepare_table(before, after, &ba_sel)?;
    let mut al_sel = sel.clone();
    al_sel.where_snapshot = ts.where_both.clone();
    let al = prepare_table(after, live, &al_sel)?;
    for (t, what) in [
        (&ba, "the point after the incident"),
        (&al, "the live database"),
    ] {
        if t.key.columns != bl.key.columns {
            return Err(Error::Input(format!(
                "table {}: rows are paired by ({}) between before and live, but by ({}) with {what}; give the key with `key = [...]`",
                ts.name,
                bl.key.columns.join(", "),
                t.key.columns.join(", ")
            )));
        }
    }
    Ok((bl, ba, al))
}

/// Plans one table three-way into `draft` (its counts, rows and changes):
/// the incident's rows first, then which of them changed since, then the
/// changes that set the others back to before.
pub(super) fn plan_incident_table(
    sides: [&Side<'_>; 3],
    tables: (&PreparedTable, &PreparedTable, &PreparedTable),
    draft: &mut TableDraft<'_>,
    keep_all_rows: bool,
) -> Result<IncidentTable> {
    let [before, after, live] = sides;
    let (bl, ba, al) = tables;
    let mut out = IncidentTable::default();
    let mut by_incident: HashMap<String, IncidentRow> = HashMap::new();
    diff_table(before, after, ba, |d| {
        out.changed_by_incident += 1;
        by_incident.insert(
            key_string(&d.key),
            IncidentRow {
                before: compared(ba, &d.snapshot),
                after: compared(ba, &d.live),
            },
        );
        Ok(())
    })?;
    let cols: Vec<String> = bl.compare_columns().map(str::to_string).collect();
    let values = |v: &Option<Vec<Value>>| match v {
        Some(v) => obj(cols.iter(), v),
        None => serde_json::Value::Null,
    };
    let mut conflicted: HashSet<String> = HashSet::new();
    diff_table(after, live, al, |d| {
        let k = key_string(&d.key);
        let Some(row) = by_incident.get(&k) else {
            return Ok(());
        };
        let now = compared(al, &d.live);
        let reason = conflict_reason(row, &now, &d);
        out.conflicts.push(IncidentConflict {
            key: obj(bl.key.columns.iter(), &d.key),
            before: values(&row.before),
            after: values(&row.after),
            live: values(&now),
            reason,
        });
        conflicted.insert(k);
        Ok(())
    })?;
    out.unchanged_since = out.changed_by_incident - conflicted.len() as u64;
    diff_table(before, live, bl, |d| {
        let k = key_string(&d.key);
        let action = if !by_incident.contains_key(&k) {
            out.changed_since_only += 1;
            "not_by_incident"
        } else if conflicted.contains(&k) {
            "conflict"
        } else {
            draft.take(live, &d)?
        };
        if keep_all_rows || draft.rows.len() < super::SAMPLE_ROWS {
            let mut j = row_json(bl, &d);
            j["action"] = serde_json::Value::from(action);
            draft.rows.push(j);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Why a row the incident changed is a conflict, in words.
fn conflict_reason(row: &IncidentRow, now: &Option<Vec<Value>>, d: &RowDiff) -> String {
    let incident = match (&row.before, &row.after) {
        (Some(_), None) => "the incident deleted it",
        (None, Some(_)) => "the incident inserted it",
        _ => "the incident changed it",
    };
    let since = match d.kind {
        DiffKind::OnlyInSnapshot => "it was deleted since",
        DiffKind::OnlyInLive => "it was inserted again since",
        DiffKind::Changed => "it was changed again since",
    };
    let same_as_before = match (&row.before, now) {
        (Some(b), Some(n)) => b == n,
        (None, None) => true,
        _ => false,
    };
    if same_as_before {
        format!("{incident}, and {since}: the live row already holds the values from before the incident; left alone")
    } else {
        format!("{incident}, and {since}: left alone, never overwritten; decide by hand")
    }
}
