//! Incident forensics over the points of a repository (docs/forensics.md):
//! `history` (every version of one record across every snapshot and
//! timeline point, then live) and `when` (by bisection, the point at which
//! the set of rows matching a predicate changes). Both open each point
//! they read in place, through the snapback VFS (`snapback_vfs::PointDb`):
//! only the pages a query touches are fetched, each verified.

mod history;
mod when;

use std::path::Path;

use rusqlite::Connection;
use snapback_core::{FileKind, Repository, Snapshot};

use crate::error::{Error, Result};
use crate::schema::quote_ident;
use crate::value::Value;

pub use history::{history, History, HistoryQuery, HistoryVersion, VersionOp};
pub use when::{when, WhenQuery, WhenReport, WhenSide};

/// Every snapshot and timeline point that holds `path` as a SQLite
/// database, oldest first, and `path`: `--path`, else the live
/// database's own path.
fn points_of(
    repo: &Repository,
    live: &Path,
    path: Option<&str>,
) -> Result<(String, Vec<Snapshot>)> {
    let path = path
        .map(str::to_string)
        .unwrap_or_else(|| live.to_string_lossy().into_owned());
    let points: Vec<Snapshot> = repo
        .snapshots_and_points()?
        .into_iter()
        .filter(|s| s.file(&path).is_some_and(|f| f.kind == FileKind::Sqlite))
        .collect();
    if points.is_empty() {
        return Err(Error::Input(format!(
            "no snapshot or timeline point holds the database {path}; if the snapshots hold it under another path, give that path with --path"
        )));
    }
    Ok((path, points))
}

/// The database entry `path` of a point, which must be a SQLite database.
fn db_file<'a>(p: &'a Snapshot, path: &str) -> Result<&'a snapback_core::FileEntry> {
    let f = p
        .file(path)
        .ok_or_else(|| Error::Input(format!("{} does not hold {path}", p.describe())))?;
    if f.kind != FileKind::Sqlite {
        return Err(Error::Input(format!(
            "{path} in {} was captured as a plain file, not as a SQLite database",
            p.describe()
        )));
    }
    Ok(f)
}

/// The table's name as the schema spells it, or `None` when `conn` has no
/// such table.
fn table_name(conn: &Connection, place: &str, table: &str) -> Result<Option<String>> {
    let mut st = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE")
        .map_err(|e| Error::sqlite(place, "cannot read the schema", e))?;
    let mut rows = st
        .query([table])
        .map_err(|e| Error::sqlite(place, "cannot read the schema", e))?;
    match rows
        .next()
        .map_err(|e| Error::sqlite(place, "cannot read the schema", e))?
    {
        Some(r) => {
            Ok(Some(r.get(0).map_err(|e| {
                Error::sqlite(place, "cannot read the schema", e)
            })?))
        }
        None => Ok(None),
    }
}

/// Rows of `SELECT * FROM table WHERE pred` with parameters, with the
/// column names; exact values.
fn select_rows(
    conn: &Connection,
    place: &str,
    table: &str,
    pred: &str,
    params: &[&str],
) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
    let sql = format!("SELECT * FROM main.{} WHERE ({pred})", quote_ident(table));
    let bad = |e| {
        Error::Input(format!(
            "{place}: cannot read table {table} where {pred}: {e}"
        ))
    };
    let mut st = conn.prepare(&sql).map_err(bad)?;
    let cols: Vec<String> = st.column_names().iter().map(|c| c.to_string()).collect();
    let n = cols.len();
    let mut rows = st
        .query(rusqlite::params_from_iter(params.iter()))
        .map_err(|e| Error::sqlite(place, format!("cannot read table {table}"), e))?;
    let mut out = Vec::new();
    while let Some(r) = rows
        .next()
        .map_err(|e| Error::sqlite(place, format!("cannot read table {table}"), e))?
    {
        out.push(
            (0..n)
                .map(|i| r.get_ref(i).map(Value::from_ref))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| Error::sqlite(place, format!("cannot read table {table}"), e))?,
        );
    }
    Ok((cols, out))
}

/// `{column: value}` of one row.
fn row_object(cols: &[String], vals: &[Value]) -> serde_json::Value {
    crate::report::obj(cols.iter(), vals)
}
