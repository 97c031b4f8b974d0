//! `snapback when`: by bisection over the points that hold the database,
//! the point at which the set of rows matching a predicate changes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use snapback_core::{Repository, Selector, Snapshot};

use super::{db_file, points_of, row_object, select_rows, table_name};
use crate::error::{Error, Result};
use crate::source::{open_live_readonly, SnapshotDb};

#[derive(Debug, Clone)]
pub struct WhenQuery {
    pub table: String,
    /// An SQL expression on the table's rows.
    pub where_sql: String,
    /// Look only at the points from the first selector's to the
    /// second's (both included). Default: every point, then live.
    pub between: Option<(String, String)>,
    pub path: Option<String>,
    pub busy_timeout: Duration,
}

/// One end of the change: a point (`SEGMENT/INDEX` or a snapshot id) or
/// "live", its time, and how many rows matched there.
#[derive(Debug, Clone, Serialize)]
pub struct WhenSide {
    pub point: String,
    pub time: String,
    pub matching: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct WhenReport {
    /// False when the set of matching rows is the same at both ends of
    /// the range (then `before` and `after` are the ends).
    pub found: bool,
    /// The last point at which the set is as at the start of the range.
    pub before: WhenSide,
    /// The next point: the first at which the set differs.
    pub after: WhenSide,
    /// Rows that match at `before` and not (as they are) at `after`.
    pub removed: Vec<serde_json::Value>,
    /// Rows that match at `after` and not (as they were) at `before`.
    pub added: Vec<serde_json::Value>,
    /// Points in the range (live counted as one when it is in it).
    pub points: usize,
    /// Points read by the bisection.
    pub probes: usize,
}

/// The set of matching rows: each row's JSON text (exact values), sorted,
/// with the row itself.
type RowSet = BTreeMap<String, serde_json::Value>;

enum Probe<'a> {
    Point(&'a Snapshot),
    Live,
}

struct Prober<'r, 'q> {
    repo: &'r Repository,
    live: &'q Path,
    path: String,
    q: &'q WhenQuery,
    probes: usize,
}

impl Prober<'_, '_> {
    fn rows(&mut self, p: &Probe<'_>) -> Result<RowSet> {
        self.probes += 1;
        match p {
            Probe::Live => {
                let conn = open_live_readonly(self.live, self.q.busy_timeout)?;
                let place = self.live.display().to_string();
                conn.execute_batch("BEGIN")
                    .map_err(|e| Error::sqlite(&place, "cannot start a read transaction", e))?;
                let r = matching(&conn, &place, self.q);
                let _ = conn.execute_batch("COMMIT");
                r
            }
            Probe::Point(s) => {
                let file = db_file(s, &self.path)?;
                let db = SnapshotDb::in_place(self.repo, s, file)?;
                let conn = db.open()?;
                matching(&conn, &s.describe(), self.q)
            }
        }
    }
}

fn matching(conn: &rusqlite::Connection, place: &str, q: &WhenQuery) -> Result<RowSet> {
    let Some(table) = table_name(conn, place, &q.table)? else {
        return Ok(RowSet::new());
    };
    let (cols, rows) = select_rows(conn, place, &table, &q.where_sql, &[])?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let v = row_object(&cols, &r);
            (v.to_string(), v)
        })
        .collect())
}

/// Finds, by bisection, two neighbouring points of the range such that
/// the set of rows matching the predicate is at the first as at the start
/// of the range and differs at the second. When the change persists (the
/// set does not change back), that is the first point at which it changes.
pub fn when(repo: &Repository, live: &Path, q: &WhenQuery) -> Result<WhenReport> {
    let (path, all) = points_of(repo, live, q.path.as_deref())?;
    let seq: Vec<Probe<'_>> = match &q.between {
        None => all.iter().map(Probe::Point).chain([Probe::Live]).collect(),
        Some((a, b)) => {
            let find = |sel: &str| -> Result<&Snapshot> {
                let s: Selector = sel.parse()?;
                let p = repo.resolve_for_path(&s, Some(&path), &[])?;
                all.iter()
                    .find(|x| x.id == p.id)
                    .ok_or_else(|| Error::Input(format!("{sel} names no point holding {path}")))
            };
            let (a, b) = (find(a)?, find(b)?);
            if a.time >= b.time {
                return Err(Error::Input(format!(
                    "--between: {} is not earlier than {}; give the earlier point first",
                    a.describe(),
                    b.describe()
                )));
            }
            all.iter()
                .filter(|x| x.time >= a.time && x.time <= b.time)
                .map(Probe::Point)
                .collect()
        }
    };
    if seq.len() < 2 {
        return Err(Error::Input(
            "the range holds fewer than two points: nothing to compare".into(),
        ));
    }
    // The live database never has a point name or a fixed time.
    let now = snapback_core::time::format_rfc3339(snapback_core::time::now());
    let side = |p: &Probe<'_>, n: usize| match p {
        Probe::Point(s) => WhenSide {
            point: s.selector(),
            time: snapback_core::time::format_rfc3339(s.time),
            matching: n,
        },
        Probe::Live => WhenSide {
            point: "live".into(),
            time: now.clone(),
            matching: n,
        },
    };
    let mut pr = Prober {
        repo,
        live,
        path,
        q,
        probes: 0,
    };
    let mut seen: HashMap<usize, RowSet> = HashMap::new();
    let last = seq.len() - 1;
    let first_set = pr.rows(&seq[0])?;
    let last_set = pr.rows(&seq[last])?;
    let (mut lo, mut hi) = (0usize, last);
    let found = first_set != last_set;
    seen.insert(0, first_set);
    seen.insert(last, last_set);
    if found {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let s = pr.rows(&seq[mid])?;
            if s == seen[&0] {
                lo = mid;
            } else {
                hi = mid;
            }
            seen.insert(mid, s);
        }
    }
    let (a, b) = (&seen[&lo], &seen[&hi]);
    let removed = a
        .iter()
        .filter(|(k, _)| !b.contains_key(*k))
        .map(|(_, v)| v.clone())
        .collect();
    let added = b
        .iter()
        .filter(|(k, _)| !a.contains_key(*k))
        .map(|(_, v)| v.clone())
        .collect();
    let report = WhenReport {
        found,
        before: side(&seq[lo], a.len()),
        after: side(&seq[hi], b.len()),
        removed,
        added,
        points: seq.len(),
        probes: pr.probes,
    };
    Ok(report)
}
