//! `snapback history`: every version of one record, from the first point
//! that had it to live.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;
use snapback_core::{Id, PointWalk, Repository};
use snapback_vfs::PointDb;
use time::OffsetDateTime;

use super::{db_file, points_of, row_object, select_rows, table_name};
use crate::error::{Error, Result};
use crate::schema::quote_ident;
use crate::source::open_live_readonly;
use crate::value::Value;

/// Which record: a table and `COL=VALUE` pairs (values compared as SQL
/// compares a bound text parameter with the column: with its affinity).
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub table: String,
    pub key: Vec<(String, String)>,
    /// The database's path inside the snapshots (default: the live
    /// database's own path).
    pub path: Option<String>,
    pub busy_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionOp {
    /// The record already held these values at the first point examined.
    Unchanged,
    Insert,
    Update,
    Delete,
}

/// One version of the record: the values it held from `from` (the time
/// of the first point, or of the live read, that shows it) until `to`
/// (the next version's `from`; `None` for the version that is live now).
/// A `delete` version holds the values that were deleted.
#[derive(Debug, Clone)]
pub struct HistoryVersion {
    pub from: OffsetDateTime,
    /// The point that first shows it (`SEGMENT/INDEX`, a snapshot id), or
    /// "live".
    pub from_point: String,
    pub to: Option<OffsetDateTime>,
    pub op: VersionOp,
    pub columns: Vec<String>,
    pub values: Vec<Value>,
}

impl HistoryVersion {
    /// `{"from", "to", "op", "values"}`: the document of `history --json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "from": snapback_core::time::format_rfc3339(self.from),
            "to": self.to.map(snapback_core::time::format_rfc3339),
            "op": self.op,
            "values": row_object(&self.columns, &self.values),
        })
    }
}

#[derive(Debug, Clone)]
pub struct History {
    pub versions: Vec<HistoryVersion>,
    /// Points holding the database.
    pub points: usize,
    /// Points at which the record was read (the others changed none of
    /// the pages that the read at the previous point read touched).
    pub read: usize,
    /// Pages fetched from the repository for those reads.
    pub pages_fetched: u64,
    /// Checksum terms (one SHA-256 each) worked out to prove the chunk
    /// lists of the points read: the whole list of the first, then only
    /// the entries that changed between one point read and the next.
    pub terms_hashed: u64,
}

/// The chunks (offset, id, length) that hold one page.
type PageChunks = Vec<(u64, Id, u32)>;

type Row = (Vec<String>, Vec<Value>);

/// The record at `conn`, or `None` when no row (or no table) has it.
fn read_record(conn: &Connection, place: &str, q: &HistoryQuery) -> Result<Option<Row>> {
    let Some(table) = table_name(conn, place, &q.table)? else {
        return Ok(None);
    };
    let pred: Vec<String> = q
        .key
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{} = ?{}", quote_ident(c), i + 1))
        .collect();
    let params: Vec<&str> = q.key.iter().map(|(_, v)| v.as_str()).collect();
    let (cols, mut rows) = select_rows(conn, place, &table, &pred.join(" AND "), &params)?;
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.pop().map(|r| (cols, r))),
        n => Err(Error::Input(format!(
            "{place}: {n} rows of table {table} have {}; give key columns that identify one row",
            describe_key(q)
        ))),
    }
}

fn describe_key(q: &HistoryQuery) -> String {
    q.key
        .iter()
        .map(|(c, v)| format!("{c}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every version of one record across every snapshot and timeline point
/// that holds the database, oldest first, then the live database.
pub fn history(repo: &Repository, live: &Path, q: &HistoryQuery) -> Result<History> {
    if q.key.is_empty() {
        return Err(Error::Input(
            "name the record with --key COL=VALUE (repeat it for a key of several columns)".into(),
        ));
    }
    let lconn = open_live_readonly(live, q.busy_timeout)?;
    let lplace = live.display().to_string();
    if table_name(&lconn, &lplace, &q.table)?.is_some() {
        // Bad column names are reported now, not at the first point.
        lconn
            .execute_batch("BEGIN")
            .map_err(|e| Error::sqlite(&lplace, "cannot start a read transaction", e))?;
        let r = read_record(&lconn, &lplace, q);
        let _ = lconn.execute_batch("COMMIT");
        r?;
    }
    let (path, points) = points_of(repo, live, q.path.as_deref())?;
    let mut states: Vec<(OffsetDateTime, String, Option<Row>)> = Vec::new();
    let shared = Arc::new(repo.share());
    // Each point's chunk list is worked out from the one before (no
    // hashing), and proven against its manifest entry only where the
    // record is read.
    let mut walk = PointWalk::new(repo, repo.index()?);
    // The size of the database at the point read last, and the pages that
    // read touched with the chunks that held them there.
    let mut last: Option<(u64, Vec<(u64, PageChunks)>)> = None;
    let mut read = 0usize;
    let mut pages_fetched = 0u64;
    for p in &points {
        let file = db_file(p, &path)?;
        walk.advance(p, file)?;
        if let Some((size, noted)) = &last {
            // The same bytes on every page the read touched: the same
            // answer, so the point is not read (nor its list proven).
            if walk.size() == *size && noted.iter().all(|(pg, c)| walk.page(*pg) == *c) {
                continue;
            }
        }
        let proven = walk.prove()?;
        let db = PointDb::open_tracking_proven(shared.clone(), p, file, proven)?;
        let place = p.describe();
        let state = {
            let conn = db
                .connect()
                .map_err(|e| Error::sqlite(&place, "cannot open the point's database", e))?;
            read_record(&conn, &place, q)?
        };
        read += 1;
        pages_fetched += db.stats().pages_read;
        let touched = db
            .pages_touched()
            .ok_or_else(|| snapback_core::Error::internal("history: the point tracks no pages"))?;
        last = Some((
            walk.size(),
            touched.into_iter().map(|pg| (pg, walk.page(pg))).collect(),
        ));
        if states.last().map(|s| &s.2) != Some(&state) {
            states.push((p.time, p.selector(), state));
        }
    }
    lconn
        .execute_batch("BEGIN")
        .map_err(|e| Error::sqlite(&lplace, "cannot start a read transaction", e))?;
    let now = snapback_core::time::now();
    let state = read_record(&lconn, &lplace, q);
    let _ = lconn.execute_batch("COMMIT");
    let state = state?;
    if states.last().map(|s| &s.2) != Some(&state) {
        states.push((now, "live".into(), state));
    }
    let versions = versions_of(&states);
    if versions.is_empty() {
        return Err(Error::Input(format!(
            "no row of table {} with {} in any of the {} point(s) holding {path}, nor in the live database",
            q.table,
            describe_key(q),
            points.len()
        )));
    }
    Ok(History {
        versions,
        points: points.len(),
        read,
        pages_fetched,
        terms_hashed: walk.terms_hashed(),
    })
}

/// The versions of a record from its states (each different from the one
/// before), from the first state that has it.
fn versions_of(states: &[(OffsetDateTime, String, Option<Row>)]) -> Vec<HistoryVersion> {
    let mut out: Vec<HistoryVersion> = Vec::new();
    let mut prev: Option<&Row> = None;
    let mut absent_seen = false;
    for (time, point, state) in states {
        let (op, row) = match (prev, state) {
            (None, None) => {
                absent_seen = true;
                continue;
            }
            (None, Some(r)) if out.is_empty() && !absent_seen => (VersionOp::Unchanged, r),
            (None, Some(r)) => (VersionOp::Insert, r),
            (Some(_), Some(r)) => (VersionOp::Update, r),
            (Some(p), None) => (VersionOp::Delete, p),
        };
        if let Some(last) = out.last_mut() {
            last.to = Some(*time);
        }
        out.push(HistoryVersion {
            from: *time,
            from_point: point.clone(),
            to: None,
            op,
            columns: row.0.clone(),
            values: row.1.clone(),
        });
        prev = state.as_ref();
    }
    out
}
