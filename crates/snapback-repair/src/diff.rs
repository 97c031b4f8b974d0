//! Record-level diff of one table between a snapshot's database and a live
//! database.
//!
//! Both sides are read with one prepared statement each, ordered by the key,
//! and merged like a sort-merge join: memory stays flat whatever the size of
//! the table. Keys are ordered with SQLite's semantics (see `value`), values
//! compared exactly, as encoded bytes (see `scan`), and each side is checked
//! to arrive strictly in key order, so a collation or duplicate-key surprise
//! stops the diff instead of producing a wrong answer. The two scans run on
//! the merge's thread (`diff_table`) or each on a thread of its own
//! (`diff_table_threaded`).

use std::cmp::Ordering;

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::scan::{key_cmp, Cursor, RowRef, Scan, ScanSpec};
use crate::schema::{
    choose_key, column_list, key_is_rowid, quote_ident, table_info, Key, TableInfo,
};
use crate::value::Value;

/// One side of a diff: an open connection and a name for messages.
pub struct Side<'a> {
    pub conn: &'a Connection,
    pub place: String,
}

/// What to compare in one table.
#[derive(Debug, Clone, Default)]
pub struct TableSelection {
    pub table: String,
    /// Key columns to pair rows by, instead of the table's own key.
    pub key: Option<Vec<String>>,
    /// Columns to compare (and repair). Default: every column both sides
    /// have, except the key.
    pub columns: Option<Vec<String>>,
    /// Predicate on snapshot rows (SQL expression).
    pub where_snapshot: Option<String>,
    /// Predicate on live rows (SQL expression).
    pub where_live: Option<String>,
    /// Predicate on live rows: matching rows are reported, never changed.
    pub guard: Option<String>,
}

/// A difference in schema between the two sides.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SchemaDiff {
    pub table: String,
    pub what: String,
}

/// A table resolved against both schemas, ready to diff.
#[derive(Debug, Clone, Serialize)]
pub struct PreparedTable {
    pub table: String,
    pub key: Key,
    /// Columns read from both sides besides the key: every ordinary column
    /// that both sides have. Inserts copy all of them.
    pub data_columns: Vec<String>,
    /// Indexes into `data_columns` of the columns compared and repaired.
    pub compare: Vec<usize>,
    pub where_snapshot: Option<String>,
    pub where_live: Option<String>,
    pub guard: Option<String>,
    pub schema_diffs: Vec<SchemaDiff>,
    /// For a virtual table (FTS, R*Tree): its module. Such tables are
    /// compared, never repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_module: Option<String>,
    #[serde(skip)]
    snap_sql: String,
    #[serde(skip)]
    live_sql: String,
    /// The key columns alone, in key order: to prove the pairing sound.
    #[serde(skip)]
    snap_key_sql: String,
    #[serde(skip)]
    live_key_sql: String,
    /// Whether the key is the rowid on each side (snapshot, live): then
    /// SQLite keeps it unique and ordered, and `check_pairing` need not
    /// read that side.
    #[serde(skip)]
    rowid_key: (bool, bool),
    /// Whether the table is WITHOUT ROWID on either side.
    #[serde(skip)]
    without_rowid: bool,
    /// Each side's query of one run of rows (`pages`): `?2` rows from key
    /// `?1` on, in key order, filtered by the side's predicate.
    #[serde(skip)]
    snap_run_sql: String,
    #[serde(skip)]
    live_run_sql: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    OnlyInSnapshot,
    OnlyInLive,
    Changed,
}

/// One row that differs.
#[derive(Debug, Clone, Serialize)]
pub struct RowDiff {
    pub kind: DiffKind,
    /// The row's key: the snapshot's, when the snapshot has the row.
    pub key: Vec<Value>,
    /// For `Changed`: the live row's key, when its bytes differ from the
    /// snapshot's (rows paired under a NOCASE or RTRIM key: 'Alice' in the
    /// snapshot, 'alice' in live). `None` when the keys are the same bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_key: Option<Vec<Value>>,
    /// For `Changed`: indexes into the key columns whose bytes differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_changed: Vec<usize>,
    /// The snapshot row's `data_columns` values, when it has the row.
    pub snapshot: Option<Vec<Value>>,
    /// The live row's `data_columns` values, when it has the row.
    pub live: Option<Vec<Value>>,
    /// For `Changed`: indexes into `data_columns` of the compared columns
    /// that differ.
    pub changed: Vec<usize>,
    /// The live row matched the guard predicate.
    pub guarded: bool,
}

impl RowDiff {
    /// The key that finds the row in the live database as it is now.
    pub fn live_key(&self) -> &[Value] {
        self.live_key.as_deref().unwrap_or(&self.key)
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DiffCounts {
    pub only_in_snapshot: u64,
    pub only_in_live: u64,
    pub changed: u64,
    pub identical: u64,
    /// Differing rows whose live row matched the guard.
    pub guarded: u64,
}

impl DiffCounts {
    pub fn differences(&self) -> u64 {
        self.only_in_snapshot + self.only_in_live + self.changed
    }
}

fn check_predicate(side: &Side<'_>, table: &str, what: &str, pred: &str) -> Result<()> {
    let sql = format!("SELECT 1 FROM main.{} WHERE ({pred})", quote_ident(table));
    side.conn.prepare(&sql).map(|_| ()).map_err(|e| {
        Error::Input(format!(
            "{}: invalid SQL in the {what} predicate for table {table} ({pred:?}): {e}",
            side.place
        ))
    })
}

fn find_column<'t>(t: &'t TableInfo, name: &str, place: &str) -> Result<&'t crate::schema::Column> {
    t.column(name).ok_or_else(|| {
        Error::Input(format!(
            "{place}: table {} has no column {name:?}; its columns are: {}",
            t.name,
            column_list(t)
        ))
    })
}

/// Tables present on each side, and table-level schema differences.
pub fn compare_table_sets(
    snap: &Side<'_>,
    live: &Side<'_>,
) -> Result<(Vec<String>, Vec<SchemaDiff>)> {
    let a = crate::schema::list_tables(snap.conn, &snap.place)?;
    let b = crate::schema::list_tables(live.conn, &live.place)?;
    let mut common = Vec::new();
    let mut diffs = Vec::new();
    for t in &a {
        if b.iter().any(|x| x.eq_ignore_ascii_case(t)) {
            common.push(t.clone());
        } else {
            diffs.push(SchemaDiff {
                table: t.clone(),
                what: "table exists only in the snapshot".into(),
            });
        }
    }
    for t in &b {
        if !a.iter().any(|x| x.eq_ignore_ascii_case(t)) {
            diffs.push(SchemaDiff {
                table: t.clone(),
                what: "table exists only in the live database".into(),
            });
        }
    }
    Ok((common, diffs))
}

/// Virtual tables on each side: those present on both (to compare, or to
/// skip when [`virtual_table_comparable`] says they cannot be), and schema
/// differences (a virtual table on one side only, or a changed definition).
///
/// [`virtual_table_comparable`]: crate::schema::virtual_table_comparable
pub fn compare_virtual_tables(
    snap: &Side<'_>,
    live: &Side<'_>,
) -> Result<(Vec<crate::schema::VirtualTable>, Vec<SchemaDiff>)> {
    let a = crate::schema::list_virtual_tables(snap.conn, &snap.place)?;
    let b = crate::schema::list_virtual_tables(live.conn, &live.place)?;
    let mut common = Vec::new();
    let mut diffs = Vec::new();
    for t in &a {
        match b.iter().find(|x| x.name.eq_ignore_ascii_case(&t.name)) {
            None => diffs.push(SchemaDiff {
                table: t.name.clone(),
                what: format!("virtual table ({}) exists only in the snapshot", t.module),
            }),
            Some(l) => {
                if l.sql != t.sql {
                    diffs.push(SchemaDiff {
                        table: t.name.clone(),
                        what: format!(
                            "virtual table definition differs: {:?} in the snapshot, {:?} in the live database",
                            t.sql, l.sql
                        ),
                    });
                }
                common.push(l.clone());
            }
        }
    }
    for t in &b {
        if !a.iter().any(|x| x.name.eq_ignore_ascii_case(&t.name)) {
            diffs.push(SchemaDiff {
                table: t.name.clone(),
                what: format!(
                    "virtual table ({}) exists only in the live database",
                    t.module
                ),
            });
        }
    }
    Ok((common, diffs))
}

/// Resolves a selection against both schemas: checks the table, key,
/// columns and predicates (preparing each), and builds the two queries.
/// Nothing is read from the tables yet.
pub fn prepare_table(
    snap: &Side<'_>,
    live: &Side<'_>,
    sel: &TableSelection,
) -> Result<PreparedTable> {
    let (st, lt) = both_tables(snap, live, &sel.table)?;
    let key = choose_key(live.conn, &live.place, &lt, sel.key.as_deref())?;
    check_key_in_snapshot(&key, &st, &lt, &snap.place)?;
    let schema_diffs = column_schema_diffs(&st, &lt);
    let is_key = |n: &str| key.columns.iter().any(|k| k.eq_ignore_ascii_case(n));
    let data_columns: Vec<String> = lt
        .stored_columns()
        .filter(|c| !is_key(&c.name))
        .filter(|c| st.column(&c.name).is_some_and(|s| s.hidden == 0))
        .map(|c| c.name.clone())
        .collect();
    let compare = compared_columns(sel, &st, &lt, &data_columns, &is_key, snap, live)?;
    if let Some(p) = &sel.where_snapshot {
        check_predicate(snap, &lt.name, "snapshot `where`", p)?;
    }
    if let Some(p) = &sel.where_live {
        check_predicate(live, &lt.name, "live `where`", p)?;
    }
    if let Some(p) = &sel.guard {
        check_predicate(live, &lt.name, "guard", p)?;
    }
    let rowid_key = (
        key_is_rowid(snap.conn, &snap.place, &st, &key)?,
        key_is_rowid(live.conn, &live.place, &lt, &key)?,
    );
    let q = Queries::build(&key, &data_columns, &lt.name, sel);
    // Prepare both now, so that any error is reported before work starts.
    snap.conn.prepare(&q.snap_sql).map_err(|e| {
        Error::Input(format!(
            "{}: cannot read table {}: {e}",
            snap.place, lt.name
        ))
    })?;
    live.conn.prepare(&q.live_sql).map_err(|e| {
        Error::Input(format!(
            "{}: cannot read table {}: {e}",
            live.place, lt.name
        ))
    })?;

    Ok(PreparedTable {
        table: lt.name.clone(),
        key,
        data_columns,
        compare,
        where_snapshot: sel.where_snapshot.clone(),
        where_live: sel.where_live.clone(),
        guard: sel.guard.clone(),
        schema_diffs,
        virtual_module: lt.virtual_module.clone(),
        snap_sql: q.snap_sql,
        live_sql: q.live_sql,
        snap_key_sql: q.snap_key_sql,
        live_key_sql: q.live_key_sql,
        rowid_key,
        without_rowid: st.without_rowid || lt.without_rowid,
        snap_run_sql: q.snap_run_sql,
        live_run_sql: q.live_run_sql,
    })
}

/// The table `name` in the snapshot and in the live database; one that is
/// missing is bad input naming the tables that side has.
fn both_tables(snap: &Side<'_>, live: &Side<'_>, name: &str) -> Result<(TableInfo, TableInfo)> {
    let missing = |side: &Side<'_>| {
        let tables = crate::schema::list_tables(side.conn, &side.place).unwrap_or_default();
        Error::Input(format!(
            "{}: there is no table {:?}; tables: {}",
            side.place,
            name,
            if tables.is_empty() {
                "(none)".to_string()
            } else {
                tables.join(", ")
            }
        ))
    };
    let lt = table_info(live.conn, &live.place, name)?.ok_or_else(|| missing(live))?;
    let st = table_info(snap.conn, &snap.place, name)?.ok_or_else(|| missing(snap))?;
    Ok((st, lt))
}

/// The key chosen on the live side must pair rows in the snapshot too: not
/// a rowid on a WITHOUT ROWID table, and every key column present.
fn check_key_in_snapshot(
    key: &Key,
    st: &TableInfo,
    lt: &TableInfo,
    snap_place: &str,
) -> Result<()> {
    if key.is_rowid() && st.without_rowid {
        return Err(Error::Input(format!(
            "table {} is a WITHOUT ROWID table in the snapshot but pairs rows by rowid in the live database; give the key with --key",
            lt.name
        )));
    }
    if !key.is_rowid() {
        let fts_rowid = |k: &str| {
            key.source == crate::schema::KeySource::VirtualId && k.eq_ignore_ascii_case("rowid")
        };
        for k in key.columns.iter().filter(|k| !fts_rowid(k)) {
            find_column(st, k, snap_place).map_err(|_| {
                Error::Input(format!(
                    "key column {k:?} of table {} is missing in the snapshot ({}); the schemas differ, so give a key that both have with --key",
                    lt.name, snap_place
                ))
            })?;
        }
    }

    Ok(())
}

/// How the columns of the table differ between the snapshot (`st`) and the
/// live database (`lt`): reported, not refused.
fn column_schema_diffs(st: &TableInfo, lt: &TableInfo) -> Vec<SchemaDiff> {
    let mut schema_diffs = Vec::new();
    for c in &st.columns {
        match lt.column(&c.name) {
            None => schema_diffs.push(SchemaDiff {
                table: lt.name.clone(),
                what: format!("column {} exists only in the snapshot", c.name),
            }),
            Some(l) => {
                let mut what = Vec::new();
                if !l.decl_type.eq_ignore_ascii_case(&c.decl_type) {
                    what.push(format!("type {:?} -> {:?}", c.decl_type, l.decl_type));
                }
                if l.notnull != c.notnull {
                    what.push(format!("NOT NULL {} -> {}", c.notnull, l.notnull));
                }
                if l.default != c.default {
                    what.push(format!("default {:?} -> {:?}", c.default, l.default));
                }
                if l.pk != c.pk {
                    what.push(format!("primary key position {} -> {}", c.pk, l.pk));
                }
                if l.hidden != c.hidden {
                    what.push("generated-column status differs".into());
                }
                if !what.is_empty() {
                    schema_diffs.push(SchemaDiff {
                        table: lt.name.clone(),
                        what: format!("column {} (snapshot -> live): {}", c.name, what.join(", ")),
                    });
                }
            }
        }
    }
    for c in &lt.columns {
        if st.column(&c.name).is_none() {
            schema_diffs.push(SchemaDiff {
                table: lt.name.clone(),
                what: format!("column {} exists only in the live database", c.name),
            });
        }
    }
    if st.without_rowid != lt.without_rowid {
        schema_diffs.push(SchemaDiff {
            table: lt.name.clone(),
            what: format!(
                "WITHOUT ROWID {} in the snapshot, {} in the live database",
                st.without_rowid, lt.without_rowid
            ),
        });
    }
    schema_diffs
}

/// The indexes into `data_columns` of the columns to compare: all of them,
/// or those `sel.columns` names, each checked (present on both sides, not
/// generated, not part of the key).
fn compared_columns(
    sel: &TableSelection,
    st: &TableInfo,
    lt: &TableInfo,
    data_columns: &[String],
    is_key: &dyn Fn(&str) -> bool,
    snap: &Side<'_>,
    live: &Side<'_>,
) -> Result<Vec<usize>> {
    let compare: Vec<usize> = match &sel.columns {
        None => (0..data_columns.len()).collect(),
        Some(cols) => {
            let mut out = Vec::new();
            for c in cols {
                let lc = find_column(lt, c, &live.place)?;
                if st.column(c).is_none() {
                    return Err(Error::Input(format!(
                        "schema mismatch: column {c:?} of table {} is missing in the snapshot ({}), so it cannot be compared or repaired",
                        lt.name, snap.place
                    )));
                }
                if lc.hidden != 0 {
                    return Err(Error::Input(format!(
                        "column {c:?} of table {} is a generated column; it cannot be repaired (repair the columns it is computed from)",
                        lt.name
                    )));
                }
                if is_key(c) {
                    return Err(Error::Input(format!(
                        "column {c:?} of table {} is part of the key that pairs rows; it cannot also be a compared column",
                        lt.name
                    )));
                }
                let i = data_columns
                    .iter()
                    .position(|d| d.eq_ignore_ascii_case(c))
                    .ok_or_else(|| Error::Input(format!("column {c:?} cannot be compared")))?;
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            out
        }
    };

    Ok(compare)
}

/// The four queries of a prepared table: all compared columns of each side,
/// and the key columns alone, each in key order.
struct Queries {
    snap_sql: String,
    live_sql: String,
    snap_key_sql: String,
    live_key_sql: String,
    snap_run_sql: String,
    live_run_sql: String,
}

impl Queries {
    fn build(key: &Key, data_columns: &[String], table: &str, sel: &TableSelection) -> Queries {
        let cols: Vec<String> = key
            .columns
            .iter()
            .chain(data_columns.iter())
            .map(|c| quote_ident(c))
            .collect();
        let order: Vec<String> = key
            .columns
            .iter()
            .zip(&key.collations)
            .map(|(c, coll)| format!("{} COLLATE {}", quote_ident(c), coll.sql_name()))
            .collect();
        let build_from = |cols: &[String], pred: &Option<String>, guard: Option<&String>| {
            let mut s = format!("SELECT {}", cols.join(", "));
            if let Some(g) = guard {
                s.push_str(&format!(", CASE WHEN ({g}) THEN 1 ELSE 0 END"));
            }
            s.push_str(&format!(" FROM main.{}", quote_ident(table)));
            if let Some(p) = pred {
                s.push_str(&format!(" WHERE ({p})"));
            }
            s.push_str(&format!(" ORDER BY {}", order.join(", ")));
            s
        };
        let snap_sql = build_from(&cols, &sel.where_snapshot, None);
        let live_sql = build_from(&cols, &sel.where_live, sel.guard.as_ref());
        let key_cols = &cols[..key.columns.len()];
        let snap_key_sql = build_from(key_cols, &sel.where_snapshot, None);
        let live_key_sql = build_from(key_cols, &sel.where_live, None);
        // A run: LIMIT counts the rows read, not the rows that match, so
        // that the scan stops on the run's last row (see `pages`); the
        // predicate filters outside it.
        let run_from = |pred: &Option<String>| {
            let first = quote_ident(&key.columns[0]);
            let inner = |cols: &str| {
                format!(
                    "SELECT {cols} FROM main.{} WHERE {first} >= ?1 ORDER BY {} LIMIT ?2",
                    quote_ident(table),
                    order.join(", ")
                )
            };
            match pred {
                None => inner(&cols.join(", ")),
                Some(p) => {
                    let aliased: Vec<String> = cols
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{c} AS \"_sb{i}\""))
                        .collect();
                    let outer: Vec<String> =
                        (0..cols.len()).map(|i| format!("\"_sb{i}\"")).collect();
                    format!(
                        "SELECT {} FROM ({}) WHERE \"_sb_match\"",
                        outer.join(", "),
                        inner(&format!(
                            "{}, CASE WHEN ({p}) THEN 1 ELSE 0 END AS \"_sb_match\"",
                            aliased.join(", ")
                        ))
                    )
                }
            }
        };
        Queries {
            snap_sql,
            live_sql,
            snap_key_sql,
            live_key_sql,
            snap_run_sql: run_from(&sel.where_snapshot),
            live_run_sql: run_from(&sel.where_live),
        }
    }
}

/// Proves that the key pairs rows soundly on both sides: every key arrives
/// in order and is unique (a NULL or a duplicate in a key is an error).
/// Reads only the key columns, and not at all on a side where the key is
/// the rowid, which SQLite keeps unique and in order (a whole scan of the
/// table saved). Run it before printing anything for a table, inside the
/// same read transaction as the diff, so that no statement is printed for
/// a table whose pairing turns out to be wrong half-way.
pub fn check_pairing(snap: &Side<'_>, live: &Side<'_>, t: &PreparedTable) -> Result<()> {
    let sides = [
        (snap, &t.snap_key_sql, t.rowid_key.0),
        (live, &t.live_key_sql, t.rowid_key.1),
    ];
    for (side, sql, _) in sides.into_iter().filter(|(_, _, rowid)| !rowid) {
        let spec = t.scan_spec(&side.place, t.key.columns.len());
        let mut st = side.conn.prepare(sql).map_err(|e| spec_error(&spec, e))?;
        Scan::new(&mut st, spec)?.drain()?;
    }
    Ok(())
}

fn spec_error(spec: &ScanSpec, e: rusqlite::Error) -> Error {
    Error::sqlite(&spec.place, format!("cannot read table {}", spec.table), e)
}

impl PreparedTable {
    /// Whether the table is WITHOUT ROWID (on either side).
    pub fn is_without_rowid(&self) -> bool {
        self.without_rowid
    }

    /// Whether rows are paired by the rowid on both sides.
    pub fn rowid_keys(&self) -> bool {
        self.rowid_key.0 && self.rowid_key.1
    }

    pub fn compare_columns(&self) -> impl Iterator<Item = &str> {
        self.compare.iter().map(|&i| self.data_columns[i].as_str())
    }

    /// Schema differences on the key or the compared columns (a changed
    /// declared type), which make a repair of those columns unsafe.
    pub fn repair_blockers(&self) -> Vec<String> {
        let cols: Vec<&str> = self
            .compare_columns()
            .chain(self.key.columns.iter().map(String::as_str))
            .collect();
        self.schema_diffs
            .iter()
            .filter(|d| {
                cols.iter().any(|c| {
                    d.what
                        .starts_with(&format!("column {c} (snapshot -> live): type"))
                })
            })
            .map(|d| format!("table {}: {}", d.table, d.what))
            .collect()
    }

    /// A scan of this table at `place`, of rows of `ncols` columns.
    fn scan_spec(&self, place: &str, ncols: usize) -> ScanSpec {
        ScanSpec {
            place: place.to_string(),
            table: self.table.clone(),
            key_columns: self.key.columns.clone(),
            collations: self.key.collations.clone(),
            ncols,
        }
    }

    /// The scans of the snapshot's and the live side (the live rows carry
    /// the guard's result after the data columns).
    fn scan_specs(&self, snap: &str, live: &str) -> (ScanSpec, ScanSpec) {
        let n = self.key.columns.len() + self.data_columns.len();
        (
            self.scan_spec(snap, n),
            self.scan_spec(live, n + self.guard.is_some() as usize),
        )
    }
}

/// Streams the differences of one table into `sink`, in key order, with
/// both sides scanned on this thread: for a sink that reads either side's
/// connection while the diff runs (a repair's plan reads the whole live
/// row it deletes). [`diff_table_threaded`] scans each side on a thread of
/// its own.
pub fn diff_table(
    snap: &Side<'_>,
    live: &Side<'_>,
    t: &PreparedTable,
    sink: impl FnMut(RowDiff) -> Result<()>,
) -> Result<DiffCounts> {
    let (sa, sb) = t.scan_specs(&snap.place, &live.place);
    let mut qa = snap
        .conn
        .prepare(&t.snap_sql)
        .map_err(|e| spec_error(&sa, e))?;
    let mut qb = live
        .conn
        .prepare(&t.live_sql)
        .map_err(|e| spec_error(&sb, e))?;
    let mut a = Cursor::inline(Scan::new(&mut qa, sa)?)?;
    let mut b = Cursor::inline(Scan::new(&mut qb, sb)?)?;
    merge(t, &mut a, &mut b, sink)
}

/// One side of a diff whose scan runs on a thread of its own: its
/// connection is lent to that thread while the table is scanned.
pub struct ScanSide<'a> {
    pub conn: &'a mut Connection,
    pub place: String,
}

impl ScanSide<'_> {
    /// The same side, for everything but the threaded scan.
    pub fn side(&self) -> Side<'_> {
        Side {
            conn: self.conn,
            place: self.place.clone(),
        }
    }
}

/// What [`diff_table`] does, with each side scanned (SQLite decoding its
/// rows) by its own connection on a thread of its own, the rows streamed in
/// key order through a bounded channel to the merge on this thread. Same
/// results, same errors; `sink` runs on this thread. When the merge stops
/// early (an error on one side, or from `sink`), the other scan stops at
/// its next batch, before this returns.
pub fn diff_table_threaded(
    snap: &mut ScanSide<'_>,
    live: &mut ScanSide<'_>,
    t: &PreparedTable,
    sink: impl FnMut(RowDiff) -> Result<()>,
) -> Result<DiffCounts> {
    threaded(snap, live, t, None, sink)
}

/// How `diff_table_by_pages` diffed a table.
#[derive(Debug, Clone)]
pub struct PagesReport {
    pub decision: crate::pages::Decision,
}

/// What [`diff_table_threaded`] does, reading only the rows of the leaves
/// that differ between the two sides when the snapshot is a point of the
/// repository and that can be proven sound (`pages`); else, and with the
/// reason logged, the full scan. Same results, same order, same counts
/// (the rows of the skipped leaves are counted identical). The live side
/// must be inside its read transaction.
pub fn diff_table_by_pages(
    point: Option<&snapback_vfs::PointFile>,
    snap: &mut ScanSide<'_>,
    live: &mut ScanSide<'_>,
    t: &PreparedTable,
    sink: impl FnMut(RowDiff) -> Result<()>,
) -> Result<(DiffCounts, PagesReport)> {
    use crate::pages::Decision;
    let decision = match point {
        None => Decision::FullScan("the snapshot side is a file, not a point of the repository: its pages have no recorded hashes".into()),
        Some(p) => crate::pages::plan(p, snap.conn, live.conn, t)?,
    };
    let skip = match &decision {
        Decision::FullScan(why) => {
            tracing::info!(table = %t.table, "diff of table {} by the full scan: {why}", t.table);
            let counts = threaded(snap, live, t, None, sink)?;
            return Ok((counts, PagesReport { decision }));
        }
        Decision::Skip(s) => s,
    };
    let cells = match &skip.cell_rows {
        Ok(n) => format!("{n} more rows the same by their cells in the other leaves"),
        Err(why) => format!("the other leaves' cells not compared: {why}"),
    };
    tracing::info!(
        table = %t.table,
        "diff of table {} by page hash: {} of {} leaves the same on both sides, {cells} ({} rows in all, not read; {} overflow pages compared), {} + {} interior pages read; reading {} run(s) of the snapshot, {} of the live database",
        t.table,
        skip.skipped_leaves,
        skip.leaves.1,
        skip.skipped_rows,
        skip.overflow_compared,
        skip.interior.0,
        skip.interior.1,
        skip.snap_runs.len(),
        skip.live_runs.len()
    );
    if let Some(p) = point {
        // SQLite reads exactly the runs' pages: nothing is fetched ahead.
        p.set_scan_readahead(false);
    }
    let runs = (
        skip.snap_runs.iter().map(|r| (r.first, r.rows)).collect(),
        skip.live_runs.iter().map(|r| (r.first, r.rows)).collect(),
    );
    let counted = threaded(snap, live, t, Some(runs), sink);
    if let Some(p) = point {
        p.set_scan_readahead(true);
    }
    let mut counts = counted?;
    counts.identical += match &t.where_live {
        None => skip.skipped_rows,
        // The skipped rows that match: every live row that matches, less
        // those the runs read.
        Some(pred) => {
            let n: i64 = live
                .conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM main.{} WHERE ({pred})",
                        quote_ident(&t.table)
                    ),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| {
                    Error::sqlite(
                        &live.place,
                        format!("cannot count the rows of table {}", t.table),
                        e,
                    )
                })?;
            let read = counts.identical + counts.changed + counts.only_in_live;
            (n.max(0) as u64).checked_sub(read).ok_or_else(|| {
                snapback_core::Error::internal(format!(
                    "diff of table {}: the runs read more matching rows than the table has",
                    t.table
                ))
            })?
        }
    };
    Ok((counts, PagesReport { decision }))
}

/// The rows of each side to read: all of them, or runs of (first key,
/// rows) per side (snapshot, live).
type SideRuns = Option<(Vec<(i64, u64)>, Vec<(i64, u64)>)>;

fn threaded(
    snap: &mut ScanSide<'_>,
    live: &mut ScanSide<'_>,
    t: &PreparedTable,
    runs: SideRuns,
    sink: impl FnMut(RowDiff) -> Result<()>,
) -> Result<DiffCounts> {
    let (sa, sb) = t.scan_specs(&snap.place, &live.place);
    let (ca, cb) = (&mut *snap.conn, &mut *live.conn);
    let (ra, rb, qa, qb) = match runs {
        None => (None, None, &t.snap_sql, &t.live_sql),
        Some((a, b)) => (Some(a), Some(b), &t.snap_run_sql, &t.live_run_sql),
    };
    std::thread::scope(|s| {
        let (a, ha) = crate::scan::spawn(s, ca, qa, sa, ra)?;
        let (b, hb) = match crate::scan::spawn(s, cb, qb, sb, rb) {
            Ok(b) => b,
            Err(e) => {
                drop(a);
                let _ = ha.join();
                return Err(e);
            }
        };
        let merged = (|| {
            let mut a = a.cursor()?;
            let mut b = b.cursor()?;
            merge(t, &mut a, &mut b, sink)
        })();
        // The cursors are gone: a scan still running stops at its next
        // batch. A scan that panicked has already said so to its cursor
        // (its rows ended without their end), so `merged` is an error.
        let _ = ha.join();
        let _ = hb.join();
        merged
    })
}

/// The sort-merge join of the two sides' rows into `sink`.
fn merge(
    t: &PreparedTable,
    a: &mut Cursor<'_>,
    b: &mut Cursor<'_>,
    mut sink: impl FnMut(RowDiff) -> Result<()>,
) -> Result<DiffCounts> {
    let nk = t.key.columns.len();
    let nd = t.data_columns.len();
    let guarded = |row: RowRef<'_>| match t.guard {
        Some(_) => !matches!(row.get(nk + nd), ValueRef::Integer(0)),
        None => false,
    };
    let mut counts = DiffCounts::default();
    let mut changed = Vec::new();
    let mut key_changed = Vec::new();
    loop {
        let (ra, rb) = (a.current(), b.current());
        let ord = match (ra, rb) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => key_cmp(&t.key.collations, x, y),
        };
        match (ord, ra, rb) {
            (Ordering::Less, Some(x), _) => {
                counts.only_in_snapshot += 1;
                sink(RowDiff {
                    kind: DiffKind::OnlyInSnapshot,
                    key: x.values(0, nk),
                    snapshot: Some(x.values(nk, nd)),
                    live: None,
                    changed: vec![],
                    live_key: None,
                    key_changed: vec![],
                    guarded: false,
                })?;
                a.advance()?;
            }
            (Ordering::Greater, _, Some(y)) => {
                let g = guarded(y);
                counts.only_in_live += 1;
                counts.guarded += g as u64;
                sink(RowDiff {
                    kind: DiffKind::OnlyInLive,
                    key: y.values(0, nk),
                    snapshot: None,
                    live: Some(y.values(nk, nd)),
                    changed: vec![],
                    live_key: None,
                    key_changed: vec![],
                    guarded: g,
                })?;
                b.advance()?;
            }
            (Ordering::Equal, Some(x), Some(y)) => {
                compare_paired(t, (x, y), &mut changed, &mut key_changed);
                if changed.is_empty() && key_changed.is_empty() {
                    counts.identical += 1;
                } else {
                    let g = guarded(y);
                    counts.changed += 1;
                    counts.guarded += g as u64;
                    sink(RowDiff {
                        kind: DiffKind::Changed,
                        key: x.values(0, nk),
                        snapshot: Some(x.values(nk, nd)),
                        live: Some(y.values(nk, nd)),
                        changed: changed.clone(),
                        live_key: (!key_changed.is_empty()).then(|| y.values(0, nk)),
                        key_changed: key_changed.clone(),
                        guarded: g,
                    })?;
                }
                a.advance()?;
                b.advance()?;
            }
            _ => {
                return Err(snapback_core::Error::internal(format!(
                    "diff of table {}: the merge lost a row",
                    t.table
                ))
                .into())
            }
        }
    }
    Ok(counts)
}

/// Which key columns (by index) and which compared columns (by index in
/// the data columns) of a paired snapshot row `a` and live row `b` differ.
/// Compared as the rows' encoded bytes, equal exactly when the values are
/// the same value (storage class and bits): rows whose compared columns
/// are all equal cost one comparison of their bytes.
fn compare_paired(
    t: &PreparedTable,
    (a, b): (RowRef<'_>, RowRef<'_>),
    changed: &mut Vec<usize>,
    key_changed: &mut Vec<usize>,
) {
    let nk = t.key.columns.len();
    let nd = t.data_columns.len();
    changed.clear();
    key_changed.clear();
    // Paired under the key's collation ('Alice' NOCASE 'alice'), but the
    // bytes are what the row holds: a key whose text changed is a changed
    // row.
    if a.raw_span(0, nk) != b.raw_span(0, nk) {
        key_changed.extend((0..nk).filter(|&i| a.raw(i) != b.raw(i)));
    }
    if a.raw_span(nk, nk + nd) != b.raw_span(nk, nk + nd) {
        changed.extend(
            t.compare
                .iter()
                .copied()
                .filter(|&i| a.raw(nk + i) != b.raw(nk + i)),
        );
    }
}

/// SQL that turns the live row into the snapshot row, like sqldiff's output.
/// Inserts copy every data column; updates set the differing compared
/// columns (and key columns whose bytes differ); deletes remove the row.
/// The row is found by its live key, compared under the collation that
/// paired it, so the statement touches exactly the row that was compared.
pub fn sql_for(t: &PreparedTable, d: &RowDiff) -> String {
    let table = quote_ident(&t.table);
    let key_where = || {
        t.key
            .columns
            .iter()
            .zip(d.live_key())
            .zip(&t.key.collations)
            .map(|((c, v), coll)| match v {
                Value::Null => format!("{} IS NULL", quote_ident(c)),
                Value::Text(_) => {
                    // COLLATE binds tighter than ||: keep pieces together.
                    let lit = v.sql_literal();
                    let lit = if lit.contains("||") {
                        format!("({lit})")
                    } else {
                        lit
                    };
                    format!("{}={lit} COLLATE {}", quote_ident(c), coll.sql_name())
                }
                v => format!("{}={}", quote_ident(c), v.sql_literal()),
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    match d.kind {
        DiffKind::OnlyInSnapshot => {
            let cols: Vec<String> = t
                .key
                .columns
                .iter()
                .chain(&t.data_columns)
                .map(|c| quote_ident(c))
                .collect();
            let vals: Vec<String> = d
                .key
                .iter()
                .chain(d.snapshot.iter().flatten())
                .map(Value::sql_literal)
                .collect();
            format!(
                "INSERT INTO {table}({}) VALUES({});",
                cols.join(","),
                vals.join(",")
            )
        }
        DiffKind::OnlyInLive => format!("DELETE FROM {table} WHERE {};", key_where()),
        DiffKind::Changed => {
            let snap = d.snapshot.as_deref().unwrap_or(&[]);
            let keys = d.key_changed.iter().filter_map(|&i| {
                d.key
                    .get(i)
                    .map(|v| format!("{}={}", quote_ident(&t.key.columns[i]), v.sql_literal()))
            });
            let sets: Vec<String> = keys
                .chain(d.changed.iter().filter_map(|&i| {
                    snap.get(i)
                        .map(|v| format!("{}={}", quote_ident(&t.data_columns[i]), v.sql_literal()))
                }))
                .collect();
            format!(
                "UPDATE {table} SET {} WHERE {};",
                sets.join(", "),
                key_where()
            )
        }
    }
}
