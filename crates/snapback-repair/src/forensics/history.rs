//! `snapback history`: every version of one record, from the first point
//! that had it to live.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;
use snapback_core::{ChunkRef, DbChecksum, FileEntry, Id, MasterIndex, Repository};
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
}

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

/// Where each page of a point's database is: its chunk list, and the
/// chunk list's offsets when its chunks are not one page each.
struct Layout {
    chunks: Vec<ChunkRef>,
    offsets: Option<Vec<u64>>,
    page_size: u64,
    size: u64,
    /// The whole-file checksum of `chunks` (what the manifest records).
    sum: DbChecksum,
}

impl Layout {
    /// The chunk list of `file`, proven against its manifest entry as
    /// `Repository::proven_chunks` proves it (the checksum and the size),
    /// with the checksum worked out from `prev`'s: it is a sum of one term
    /// per chunk and offset, so only the chunks that differ are hashed
    /// (a point of a 1 GiB database changes a few of its 262,144).
    fn proven(
        repo: &Repository,
        index: &MasterIndex,
        file: &FileEntry,
        prev: Option<&Layout>,
    ) -> Result<Layout> {
        let chunks = repo.chunk_list(index, file)?;
        let mut sum = prev.map_or(DbChecksum::default(), |p| p.sum);
        let old: &[ChunkRef] = prev.map_or(&[], |p| &p.chunks);
        let (mut off_old, mut off_new) = (0u64, 0u64);
        for i in 0..old.len().max(chunks.len()) {
            let (o, n) = (old.get(i), chunks.get(i));
            let same = matches!((o, n), (Some(o), Some(n)) if o.id == n.id && o.len == n.len)
                && off_old == off_new;
            if !same {
                if let Some(o) = o {
                    sum.remove(off_old, &o.id);
                }
                if let Some(n) = n {
                    sum.add(off_new, &n.id);
                }
            }
            off_old += o.map_or(0, |c| c.len as u64);
            off_new += n.map_or(0, |c| c.len as u64);
        }
        let corrupt = |why: String| {
            Error::from(snapback_core::Error::corrupt(
                format!("chunk list of {}", file.path),
                why,
            ))
        };
        if sum.to_hex() != file.db_checksum {
            return Err(corrupt(
                "its checksum does not match the manifest's; refusing to read the point".into(),
            ));
        }
        if off_new != file.size {
            return Err(corrupt(format!(
                "chunks add up to {off_new} bytes, the file has {}; refusing to read the point",
                file.size
            )));
        }
        let mut l = Layout::new(chunks, file);
        l.sum = sum;
        Ok(l)
    }

    fn new(chunks: Vec<ChunkRef>, file: &FileEntry) -> Layout {
        let page_size = file
            .sqlite
            .as_ref()
            .map_or(4096, |s| u64::from(s.page_size))
            .max(1);
        let per_page = chunks.iter().all(|c| c.len as u64 == page_size);
        let offsets = (!per_page).then(|| {
            let mut off = 0u64;
            chunks
                .iter()
                .map(|c| {
                    let o = off;
                    off += c.len as u64;
                    o
                })
                .collect()
        });
        Layout {
            chunks,
            offsets,
            page_size,
            size: file.size,
            sum: DbChecksum::default(),
        }
    }

    /// The chunks that hold page `pgno` (numbered from 1), with their
    /// offsets.
    fn page(&self, pgno: u64) -> Vec<(u64, Id, u32)> {
        let start = (pgno - 1) * self.page_size;
        let end = start + self.page_size;
        match &self.offsets {
            None => self
                .chunks
                .get((pgno - 1) as usize)
                .map(|c| vec![(start, c.id, c.len)])
                .unwrap_or_default(),
            Some(offs) => {
                let first = offs.partition_point(|&o| o <= start).saturating_sub(1);
                offs.iter()
                    .zip(&self.chunks)
                    .skip(first)
                    .take_while(|(o, _)| **o < end)
                    .map(|(o, c)| (*o, c.id, c.len))
                    .collect()
            }
        }
    }

    /// Whether every page of `pages` holds the same bytes here as in
    /// `other`, in a file of the same size: then a read that touched only
    /// those pages answers the same at both.
    fn same_pages(&self, other: &Layout, pages: &BTreeSet<u64>) -> bool {
        self.size == other.size
            && self.page_size == other.page_size
            && pages.iter().all(|&p| self.page(p) == other.page(p))
    }
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
    let index = repo.index()?;
    let shared = Arc::new(repo.share());
    // The layout of the point read last and the pages that read touched.
    let mut last: Option<(Layout, BTreeSet<u64>)> = None;
    // The layout of the point looked at last, when it was skipped: the
    // base the next chunk list is proven from.
    let mut proven: Option<Layout> = None;
    let mut read = 0usize;
    let mut pages_fetched = 0u64;
    for p in &points {
        let file = db_file(p, &path)?;
        let base = proven.as_ref().or(last.as_ref().map(|(l, _)| l));
        let layout = Layout::proven(repo, &index, file, base)?;
        if let Some((prev, touched)) = &last {
            if layout.same_pages(prev, touched) {
                proven = Some(layout);
                continue;
            }
        }
        let db = PointDb::open_tracking(shared.clone(), p, file)?;
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
        last = Some((layout, touched));
        proven = None;
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
