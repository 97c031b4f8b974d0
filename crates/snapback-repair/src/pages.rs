//! Diff by page hash: which leaves of a table's b-tree hold the same bytes
//! on both sides, so that their rows need not be read at all.
//!
//! The snapshot's chunk list gives every page's chunk id (its SHA-256,
//! keyed in an encrypted repository) without fetching it; the live
//! database's pages are read through SQLite's pager (`sqlite_dbpage`) on
//! the diff's own live connection, inside the read transaction that the
//! diff's rows come from, and hashed the same way on every core. Both
//! sides' b-trees are walked from the table's root (the interior pages are
//! read; a snapshot page whose id equals the live page's hash is taken
//! from the live bytes, not fetched). A leaf whose page number is a leaf of
//! the table on both sides and holds the same bytes on both holds the same
//! rows on both, and since a rowid appears once in a table's b-tree, none
//! of its rows can be in another leaf of either side: it is skipped, its
//! rows counted identical. A leaf with a cell that spills to overflow pages
//! is skipped only when every page of every chain hashes the same on both
//! sides too (SQLite overwrites a payload of the same size in place, so a
//! long row's overflow pages can change while its leaf does not; the
//! chain's next pointers are inside those pages, so equal pages along the
//! chain are an equal chain).
//!
//! Within the other leaves, the same argument holds cell by cell: a rowid
//! whose cell (its payload size, rowid, the record's bytes kept on the leaf
//! and the first overflow page's number) holds the same bytes on both
//! sides, with an equal overflow chain, is the same row on both sides
//! (a row changed in place, or moved to another leaf by a split, shows a
//! different cell or none), so it is counted identical and not read
//! either. This needs both sides' differing leaves in memory at once (up
//! to [`CELLS_MAX`]); past that, and when a side's rowids are not strictly
//! increasing across its differing leaves, every row of the differing
//! leaves is read.
//!
//! The rows left are then diffed as before, each side reading only its own:
//! consecutive ones (in key order) make a run, read as
//! `key >= FIRST ORDER BY key LIMIT ROWS`, whose seek lands on the run's
//! first row and whose limit stops on its last, so that no neighbouring row
//! is read. Of the snapshot, only the table's interior pages, its differing
//! leaves and their overflow pages are fetched.
//!
//! Whatever cannot be proven this way is diffed by the full scan, and the
//! reason is logged (`-v`): see [`Decision::FullScan`].

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use rusqlite::Connection;
use snapback_core::Id;
use snapback_vfs::PointFile;

use crate::diff::PreparedTable;
use crate::error::{Error, Result};

/// Set (to anything but `0` or empty) to diff every table by the full
/// scan, as before the page-hash skip: for tests and benchmarks.
pub const FULL_SCAN_ENV: &str = "SNAPBACK_DIFF_FULL_SCAN";

/// The most levels a table b-tree is followed down (SQLite's own limit is
/// 20).
const MAX_DEPTH: usize = 20;

/// The most bytes of differing snapshot leaves fetched (to find their
/// rows) before the scan reads them: half the point's memory cache
/// (256 MiB), so that the scan finds them there and fetches none twice.
const FETCH_AHEAD_MAX: u64 = 128 << 20;

/// The most bytes of differing leaves (both sides together) held in
/// memory to compare their cells; past it, every row of those leaves is
/// read.
pub const CELLS_MAX: u64 = 128 << 20;

/// Live pages read and hashed at a time.
const LIVE_BATCH: usize = 2048;

/// Consecutive differing leaves of one side: `rows` rows from rowid
/// `first` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: i64,
    pub rows: u64,
}

/// What the page-hash skip found for one table.
#[derive(Debug, Clone)]
pub struct PageSkip {
    /// The runs of differing leaves to read, in key order, per side.
    pub snap_runs: Vec<Run>,
    pub live_runs: Vec<Run>,
    /// Rows not read because they are the same on both sides: those of
    /// the skipped leaves and those of `cell_rows`.
    pub skipped_rows: u64,
    /// Rows of differing leaves whose cells are the same on both sides
    /// (part of `skipped_rows`), or why the cells were not compared.
    pub cell_rows: std::result::Result<u64, String>,
    /// Leaves of the table (snapshot, live), and how many were skipped.
    pub leaves: (u64, u64),
    pub skipped_leaves: u64,
    /// Interior pages of the table (snapshot, live).
    pub interior: (u64, u64),
    /// Overflow pages compared by hash under leaves that are equal.
    pub overflow_compared: u64,
}

/// How one table is diffed.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Only the differing leaves' rows are read.
    Skip(PageSkip),
    /// Every row of both sides is read, because the skip cannot be proven
    /// (or is not worth it) for this table; the reason.
    FullScan(String),
}

fn full(why: impl Into<String>) -> Result<Decision> {
    Ok(Decision::FullScan(why.into()))
}

/// Whether the environment asks for the full scan.
pub fn full_scan_forced() -> bool {
    std::env::var_os(FULL_SCAN_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Decides how table `t` is diffed between `point` (read by `sconn`) and
/// the live database (`lconn`, inside the diff's read transaction), and
/// with the skip, which rows to read. Errors are what the full scan would also meet: a page of
/// the snapshot that cannot be verified, a live page that cannot be read.
pub fn plan(
    point: &PointFile,
    sconn: &Connection,
    lconn: &Connection,
    t: &PreparedTable,
) -> Result<Decision> {
    let pred = t.where_live.as_deref();
    if full_scan_forced() {
        return full(format!("{FULL_SCAN_ENV} is set"));
    }
    if let Some(m) = &t.virtual_module {
        return full(format!(
            "a virtual table ({m}): its rows are kept in other tables"
        ));
    }
    if t.is_without_rowid() {
        return full(
            "a WITHOUT ROWID table (an index b-tree): the skip is built for rowid tables only",
        );
    }
    if !t.rowid_keys() {
        return full(format!(
            "rows are paired by {}, not by the rowid that orders the table's b-tree",
            t.key.describe()
        ));
    }
    if t.guard.is_some() || t.where_snapshot.as_deref() != pred || t.where_live.as_deref() != pred {
        return full("the two sides are filtered differently");
    }
    if let Some(p) = pred {
        if has_word(p, "select") {
            return full("the --where predicate has a subquery, which could read other tables");
        }
    }
    if !t.schema_diffs.is_empty() {
        return full("the table's columns differ between the two sides");
    }
    let place_s = point.describe().to_string();
    let (sroot, ssql) = root_of(sconn, &place_s, &t.table)?;
    let (lroot, lsql) = root_of(lconn, "the live database", &t.table)?;
    if ssql != lsql {
        return full("the table's definition differs between the two sides");
    }
    let live = LivePages::new(lconn)?;
    let ps = point.page_size();
    if live.page_size != ps {
        return full(format!(
            "the page size differs ({ps} bytes in the snapshot, {} live)",
            live.page_size
        ));
    }
    let layout = point.layout().map_err(Error::from)?;
    let spages = point.size() / ps;
    if layout.chunks.len() as u64 != spages || layout.chunks.iter().any(|c| u64::from(c.len) != ps)
    {
        return full("the snapshot's chunks are not single pages");
    }
    let ids: Vec<Id> = layout.chunks.iter().map(|c| c.id).collect();
    drop(layout);
    // Page 1: the same page size, reserved bytes and text encoding on both
    // sides, or the same bytes do not mean the same rows.
    let s1 = point.read_pages(&[1]).map_err(Error::from)?;
    let l1 = live.read(&[1])?;
    let (Some(s1), Some(l1)) = (s1.first(), l1.first()) else {
        return full("page 1 could not be read");
    };
    if s1.get(16..18) != l1.get(16..18)
        || s1.get(20) != l1.get(20)
        || s1.get(56..60) != l1.get(56..60)
    {
        return full("the reserved bytes per page or the text encoding differ");
    }
    let usable = ps as usize - usize::from(l1.get(20).copied().unwrap_or(0));
    let mut s = Skipper {
        point,
        live: &live,
        ids: &ids,
        usable,
        lhash: HashMap::new(),
        linterior: HashMap::new(),
        lleaf: HashMap::new(),
        sleaf: HashMap::new(),
        sbytes: HashMap::new(),
        sleaves: HashSet::new(),
        lbytes: HashMap::new(),
        lbytes_held: 0,
        spare: Vec::new(),
    };
    s.plan(sroot, lroot)
}

/// Whether `text` has `word` as a whole word, in any case.
fn has_word(text: &str, word: &str) -> bool {
    let t = text.to_ascii_lowercase();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    t.match_indices(word).any(|(i, _)| {
        let before = t[..i].chars().next_back().is_none_or(|c| !ident(c));
        let after = t[i + word.len()..].chars().next().is_none_or(|c| !ident(c));
        before && after
    })
}

/// The root page and the `CREATE` statement of table `name`.
fn root_of(conn: &Connection, place: &str, name: &str) -> Result<(u32, String)> {
    conn.query_row(
        "SELECT rootpage, coalesce(sql, '') FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [name],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )
    .map_err(|e| Error::sqlite(place, format!("cannot find the root page of table {name}"), e))
    .map(|(root, sql)| (u32::try_from(root).unwrap_or(0), sql))
}

/// The live database's pages, read through SQLite's pager on the diff's
/// live connection (inside its read transaction).
struct LivePages<'c> {
    conn: &'c Connection,
    page_size: u64,
    pages: u64,
}

impl<'c> LivePages<'c> {
    fn new(conn: &'c Connection) -> Result<LivePages<'c>> {
        let err = |e| Error::sqlite("the live database", "cannot read its page size", e);
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(err)?;
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(err)?;
        Ok(LivePages {
            conn,
            page_size: page_size.max(1) as u64,
            pages: pages.max(0) as u64,
        })
    }

    /// Pages `pgnos` (each at most the page count), in order.
    fn read(&self, pgnos: &[u32]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.read_into(pgnos, &mut out)?;
        Ok(out)
    }

    /// Pages `pgnos` into `out`, one buffer each (its buffers reused).
    fn read_into(&self, pgnos: &[u32], out: &mut Vec<Vec<u8>>) -> Result<()> {
        let err = |e| {
            Error::sqlite(
                "the live database",
                "cannot read its pages (sqlite_dbpage)",
                e,
            )
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
            .map_err(err)?;
        out.resize_with(pgnos.len(), Vec::new);
        for (&p, buf) in pgnos.iter().zip(out.iter_mut()) {
            stmt.query_row([i64::from(p)], |r| {
                buf.clear();
                buf.extend_from_slice(r.get_ref(0)?.as_blob()?);
                Ok(())
            })
            .map_err(err)?;
            if buf.len() as u64 != self.page_size {
                return Err(Error::Input(format!(
                    "the live database: page {p} is {} bytes, not {}",
                    buf.len(),
                    self.page_size
                )));
            }
        }
        Ok(())
    }
}

/// A table b-tree page's header.
struct Header {
    kind: u8,
    cells: usize,
    /// Where the cell pointer array starts.
    ptrs: usize,
    right: u32,
}

fn header(page: &[u8]) -> Option<Header> {
    let kind = *page.first()?;
    let cells = usize::from(u16::from_be_bytes([*page.get(3)?, *page.get(4)?]));
    match kind {
        0x05 => Some(Header {
            kind,
            cells,
            ptrs: 12,
            right: u32::from_be_bytes(page.get(8..12)?.try_into().ok()?),
        }),
        0x0D => Some(Header {
            kind,
            cells,
            ptrs: 8,
            right: 0,
        }),
        _ => None,
    }
}

fn cell_offset(page: &[u8], h: &Header, i: usize) -> Option<usize> {
    let at = h.ptrs + 2 * i;
    let p = page.get(at..at + 2)?;
    let off = usize::from(u16::from_be_bytes([p[0], p[1]]));
    (off >= h.ptrs + 2 * h.cells && off < page.len()).then_some(off)
}

/// SQLite's varint at `b[0..]`: the value and its length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let c = *b.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(c), 9));
        }
        v = (v << 7) | u64::from(c & 0x7f);
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The children of a table interior page, left to right (right-most last).
fn children(page: &[u8]) -> Option<Vec<u32>> {
    let h = header(page).filter(|h| h.kind == 0x05)?;
    let mut out = Vec::with_capacity(h.cells + 1);
    for i in 0..h.cells {
        let off = cell_offset(page, &h, i)?;
        out.push(u32::from_be_bytes(page.get(off..off + 4)?.try_into().ok()?));
    }
    out.push(h.right);
    (!out.contains(&0)).then_some(out)
}

/// What a diff needs of a table leaf page: its rows, its first rowid,
/// and the overflow chains of its cells (first page, page count).
struct Leaf {
    rows: u64,
    first: Option<i64>,
    last: Option<i64>,
    chains: Vec<(u32, u64)>,
}

/// One cell of a table leaf page.
#[derive(Clone, Copy)]
struct Cell<'b> {
    rowid: i64,
    /// The whole cell: payload size, rowid, the payload kept on the page
    /// and, when it spills, the first overflow page's number.
    bytes: &'b [u8],
    /// The overflow chain: first page, page count.
    chain: Option<(u32, u64)>,
}

/// The cells of a table leaf page, in order; `None` when it is not one
/// (or a cell does not parse).
fn cells(page: &[u8], usable: usize) -> Option<Vec<Cell<'_>>> {
    let h = header(page).filter(|h| h.kind == 0x0D)?;
    let u = usable as u64;
    let max_local = u.checked_sub(35)?;
    let min_local = ((u.checked_sub(12)?) * 32 / 255).checked_sub(23)?;
    let mut out = Vec::with_capacity(h.cells);
    for i in 0..h.cells {
        let off = cell_offset(page, &h, i)?;
        let (payload, n1) = varint(page.get(off..)?)?;
        let (rowid, n2) = varint(page.get(off + n1..)?)?;
        let (local, spills) = if payload > max_local {
            let k = min_local + (payload - min_local) % (u - 4);
            (if k <= max_local { k } else { min_local }, true)
        } else {
            (payload, false)
        };
        let at = off + n1 + n2 + usize::try_from(local).ok()?;
        let (end, chain) = if spills {
            let p = u32::from_be_bytes(page.get(at..at + 4)?.try_into().ok()?);
            (at + 4, Some((p, (payload - local).div_ceil(u - 4))))
        } else {
            (at, None)
        };
        out.push(Cell {
            rowid: rowid as i64,
            bytes: page.get(off..end)?,
            chain,
        });
    }
    Some(out)
}

/// A table leaf page's rows and chains; `None` when it is not one.
fn leaf(page: &[u8], usable: usize) -> Option<Leaf> {
    let cells = cells(page, usable)?;
    Some(Leaf {
        rows: cells.len() as u64,
        first: cells.first().map(|c| c.rowid),
        last: cells.last().map(|c| c.rowid),
        chains: cells.iter().filter_map(|c| c.chain).collect(),
    })
}

/// One side's b-tree of the table: its interior pages and its leaves in
/// key order.
struct Tree {
    interior: u64,
    leaves: Vec<u32>,
}

struct Skipper<'a> {
    point: &'a PointFile,
    live: &'a LivePages<'a>,
    /// The snapshot's chunk ids, one per page.
    ids: &'a [Id],
    usable: usize,
    /// Live pages read: their hashes; the interior pages' bytes; the
    /// leaves, parsed (`None`: a leaf header on a page that does not parse).
    lhash: HashMap<u32, Id>,
    linterior: HashMap<u32, Vec<u8>>,
    lleaf: HashMap<u32, Option<Leaf>>,
    /// The snapshot's leaves fetched, parsed.
    sleaf: HashMap<u32, Option<Leaf>>,
    /// The bytes of the snapshot's differing leaves fetched, when their
    /// cells are to be compared.
    sbytes: HashMap<u32, Vec<u8>>,
    /// The snapshot's leaves, once its tree is walked.
    sleaves: HashSet<u32>,
    /// The bytes of the live leaves read that may differ (not the
    /// snapshot's leaf of the same hash), up to [`CELLS_MAX`] bytes.
    lbytes: HashMap<u32, Vec<u8>>,
    lbytes_held: u64,
    /// Page buffers to read live pages into.
    spare: Vec<Vec<u8>>,
}

/// Why the walk of one side's tree stopped: the full scan then reads it
/// (and SQLite says what is wrong, if anything is).
type Walk = std::result::Result<Tree, String>;

impl Skipper<'_> {
    fn plan(&mut self, sroot: u32, lroot: u32) -> Result<Decision> {
        // The snapshot's tree first (its interior pages only): then the
        // live walk knows, as it reads each leaf, whether the snapshot has
        // it, and keeps only the bytes of those it does not.
        let st = match self.walk_snapshot(sroot)? {
            Ok(t) => t,
            Err(why) => return full(format!("the snapshot table's b-tree: {why}")),
        };
        self.sleaves = st.leaves.iter().copied().collect();
        let lt = match self.walk_live(lroot)? {
            Ok(t) => t,
            Err(why) => return full(format!("the live table's b-tree: {why}")),
        };
        let snap_leaves = std::mem::take(&mut self.sleaves);
        // A leaf of both trees whose bytes are the same, and whose
        // overflow chains are the same too.
        let mut candidates: Vec<(u32, std::ops::Range<usize>)> = Vec::new();
        let mut chains: Vec<(u32, u64)> = Vec::new();
        for &p in &lt.leaves {
            if !snap_leaves.contains(&p) || !self.same(p) {
                continue;
            }
            match self.lleaf.get(&p) {
                Some(Some(l)) => {
                    let from = chains.len();
                    chains.extend_from_slice(&l.chains);
                    candidates.push((p, from..chains.len()));
                }
                _ => return full(format!("live page {p} is not a table leaf")),
            }
        }
        let same = self.same_chains(&chains)?;
        let mut equal: HashSet<u32> = HashSet::new();
        let mut overflow_compared = 0u64;
        for (p, range) in candidates {
            let verdicts = &same[range];
            if verdicts.iter().all(Option::is_some) {
                overflow_compared += verdicts.iter().flatten().sum::<u64>();
                equal.insert(p);
            }
        }
        let total = (lt.leaves.len() + st.leaves.len()) as u64;
        let differing = total - 2 * equal.len() as u64;
        if differing * 10 > total * 9 {
            return full(format!(
                "{differing} of its {total} leaves (both sides) differ: the full scan reads them in order, which is cheaper than reading them run by run"
            ));
        }
        // The snapshot's differing leaves: from the live bytes when they
        // are the same (a leaf whose overflow pages differ), else fetched.
        let fetch: Vec<u32> = st
            .leaves
            .iter()
            .copied()
            .filter(|p| !equal.contains(p) && !self.sleaf.contains_key(p))
            .filter(|p| !(self.same(*p) && self.lleaf.contains_key(p)))
            .collect();
        let bytes = fetch.len() as u64 * self.point.page_size();
        if bytes > FETCH_AHEAD_MAX {
            return full(format!(
                "{} of the snapshot's leaves differ ({} MiB): more than the point's memory cache keeps until the scan reads them again",
                fetch.len(),
                bytes >> 20
            ));
        }
        let live_differing = lt.leaves.len() - equal.len();
        let held = (st.leaves.len() - equal.len() + live_differing) as u64 * self.point.page_size();
        let keep = held <= CELLS_MAX;
        self.fetch_snapshot_leaves(&fetch, keep)?;
        let mut skipped_rows = 0u64;
        let mut live_runs = Runs::default();
        for &p in &lt.leaves {
            let Some(Some(l)) = self.lleaf.get(&p) else {
                return full(format!("live page {p} is not a table leaf"));
            };
            if equal.contains(&p) {
                skipped_rows += l.rows;
                live_runs.gap();
            } else {
                live_runs.leaf(l);
            }
        }
        let mut snap_runs = Runs::default();
        for &p in &st.leaves {
            if equal.contains(&p) {
                snap_runs.gap();
                continue;
            }
            let l = match self.sleaf.get(&p) {
                Some(l) => l.as_ref(),
                None if self.same(p) => self.lleaf.get(&p).and_then(Option::as_ref),
                None => None,
            };
            let Some(l) = l else {
                return full(format!("the snapshot's page {p} is not a table leaf"));
            };
            snap_runs.leaf(l);
        }
        let mut skip = PageSkip {
            snap_runs: snap_runs.done(),
            live_runs: live_runs.done(),
            skipped_rows,
            cell_rows: Err(format!(
                "the differing leaves ({} MiB) are more than {} MiB",
                held >> 20,
                CELLS_MAX >> 20
            )),
            leaves: (st.leaves.len() as u64, lt.leaves.len() as u64),
            skipped_leaves: equal.len() as u64,
            interior: (st.interior, lt.interior),
            overflow_compared,
        };
        if keep {
            match self.compare_cells(&st, &lt, &equal)? {
                Ok(c) => {
                    skip.snap_runs = c.snap_runs;
                    skip.live_runs = c.live_runs;
                    skip.skipped_rows += c.identical;
                    skip.cell_rows = Ok(c.identical);
                    skip.overflow_compared += c.overflow_compared;
                }
                Err(why) => skip.cell_rows = Err(why),
            }
        }
        Ok(Decision::Skip(skip))
    }

    /// Compares the cells of the differing leaves of both sides (`st`,
    /// `lt`, with the leaves of `equal` skipped): a rowid whose cell has
    /// the same bytes on both sides, with an equal overflow chain, is the
    /// same row on both; the runs of the other rows. `Err` says why the
    /// cells could not be compared (then every row of the differing
    /// leaves is read).
    fn compare_cells(
        &mut self,
        st: &Tree,
        lt: &Tree,
        equal: &HashSet<u32>,
    ) -> Result<std::result::Result<CellSkip, String>> {
        // The live differing leaves: kept as the walk read them, or (past
        // what it kept, or read before the snapshot's tree was known) read
        // again.
        let mut lbytes = std::mem::take(&mut self.lbytes);
        let again: Vec<u32> = lt
            .leaves
            .iter()
            .copied()
            .filter(|p| !equal.contains(p) && !lbytes.contains_key(p))
            .collect();
        for group in again.chunks(LIVE_BATCH) {
            lbytes.extend(group.iter().copied().zip(self.live.read(group)?));
        }
        // The snapshot's differing leaves: fetched, or the live bytes when
        // they hash the same (then the page is read live if it is not a
        // differing leaf there), or fetched again (from the point's memory
        // cache) when the walk fetched it.
        let mut sbytes = std::mem::take(&mut self.sbytes);
        for &p in st.leaves.iter().filter(|p| !equal.contains(p)) {
            if sbytes.contains_key(&p) {
                continue;
            }
            let b = if self.same(p) {
                match lbytes.get(&p) {
                    Some(b) => b.clone(),
                    None => self.live.read(&[p])?.pop().unwrap_or_default(),
                }
            } else {
                self.point
                    .read_pages(&[p])
                    .map_err(Error::from)?
                    .pop()
                    .unwrap_or_default()
            };
            sbytes.insert(p, b);
        }
        // The merge of both sides' items by rowid, each side's rowids
        // checked to increase strictly; a pair of the same cells is not read.
        let mut sc = Items::new(&st.leaves, equal, &sbytes, self.usable);
        let mut lc = Items::new(&lt.leaves, equal, &lbytes, self.usable);
        // First the merge, with the pairs of the same cells whose overflow
        // chains are still to be compared marked; then every such chain
        // compared at once (a batch of pages read and hashed per link);
        // then the runs.
        let mut steps: Vec<Step> = Vec::new();
        let mut chains: Vec<(u32, u64)> = Vec::new();
        loop {
            let (a, b) = match (sc.peek(&self.lleaf), lc.peek(&self.lleaf)) {
                (Err(why), _) => return Ok(Err(format!("the snapshot: {why}"))),
                (_, Err(why)) => return Ok(Err(format!("the live database: {why}"))),
                (Ok(a), Ok(b)) => (a, b),
            };
            match (a, b) {
                (None, None) => break,
                (Some(Item::Skipped), _) => {
                    steps.push(Step::SnapGap);
                    sc.next();
                }
                (_, Some(Item::Skipped)) => {
                    steps.push(Step::LiveGap);
                    lc.next();
                }
                (Some(Item::Cell(a)), None) => {
                    steps.push(Step::SnapRow(a.rowid));
                    sc.next();
                }
                (None, Some(Item::Cell(b))) => {
                    steps.push(Step::LiveRow(b.rowid));
                    lc.next();
                }
                (Some(Item::Cell(a)), Some(Item::Cell(b))) => match a.rowid.cmp(&b.rowid) {
                    std::cmp::Ordering::Less => {
                        steps.push(Step::SnapRow(a.rowid));
                        sc.next();
                    }
                    std::cmp::Ordering::Greater => {
                        steps.push(Step::LiveRow(b.rowid));
                        lc.next();
                    }
                    std::cmp::Ordering::Equal => {
                        steps.push(if a.bytes != b.bytes {
                            Step::Pair(a.rowid, Same::No)
                        } else if let Some(chain) = a.chain {
                            chains.push(chain);
                            Step::Pair(a.rowid, Same::IfChain(chains.len() - 1))
                        } else {
                            Step::Pair(a.rowid, Same::Yes)
                        });
                        sc.next();
                        lc.next();
                    }
                },
            }
        }
        let chain_same = self.same_chains(&chains)?;
        let (mut snap_runs, mut live_runs) = (Runs::default(), Runs::default());
        let (mut identical, mut overflow_compared) = (0u64, 0u64);
        for step in steps {
            match step {
                Step::SnapGap => snap_runs.gap(),
                Step::LiveGap => live_runs.gap(),
                Step::SnapRow(r) => snap_runs.rows(r, 1),
                Step::LiveRow(r) => live_runs.rows(r, 1),
                Step::Pair(r, same) => {
                    let same = match same {
                        Same::Yes => true,
                        Same::No => false,
                        Same::IfChain(i) => match chain_same.get(i).copied().flatten() {
                            Some(k) => {
                                overflow_compared += k;
                                true
                            }
                            None => false,
                        },
                    };
                    if same {
                        identical += 1;
                        snap_runs.gap();
                        live_runs.gap();
                    } else {
                        snap_runs.rows(r, 1);
                        live_runs.rows(r, 1);
                    }
                }
            }
        }
        Ok(Ok(CellSkip {
            snap_runs: snap_runs.done(),
            live_runs: live_runs.done(),
            identical,
            overflow_compared,
        }))
    }

    /// Whether the snapshot's page `p` is the live page `p` (as far as
    /// the live pages read so far say).
    fn same(&self, p: u32) -> bool {
        let i = (p as usize).wrapping_sub(1);
        match (self.ids.get(i), self.lhash.get(&p)) {
            (Some(s), Some(l)) => s == l,
            _ => false,
        }
    }

    /// Reads and hashes (on every core) the live pages not read yet,
    /// keeping interior pages' bytes and leaves parsed. Past one batch,
    /// reading (on this thread, which owns the live connection) and
    /// hashing (on another) overlap: the next batch is read while the one
    /// before is hashed, and the one before that is taken in.
    fn load_live(&mut self, pgnos: &[u32]) -> Result<()> {
        let need: Vec<u32> = pgnos
            .iter()
            .copied()
            .filter(|p| u64::from(*p) <= self.live.pages && !self.lhash.contains_key(p))
            .collect();
        let point = self.point;
        if need.len() <= LIVE_BATCH {
            let mut pages = std::mem::take(&mut self.spare);
            self.live.read_into(&need, &mut pages)?;
            let ids: Vec<Id> = pages.par_iter().map(|b| point.chunk_id_of(b)).collect();
            self.take_live(&need, &mut pages, ids);
            self.spare = pages;
            return Ok(());
        }
        let live = self.live;
        let groups: Vec<&[u32]> = need.chunks(LIVE_BATCH).collect();
        std::thread::scope(|scope| -> Result<()> {
            let (to_hash, hash_rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(1);
            let (hashed_tx, hashed) = std::sync::mpsc::sync_channel::<(Vec<Vec<u8>>, Vec<Id>)>(1);
            scope.spawn(move || {
                for pages in hash_rx {
                    let ids: Vec<Id> = pages.par_iter().map(|b| point.chunk_id_of(b)).collect();
                    if hashed_tx.send((pages, ids)).is_err() {
                        break;
                    }
                }
            });
            let lost = || Error::Input("the diff's hashing thread stopped".into());
            let mut spare = vec![std::mem::take(&mut self.spare)];
            for (i, group) in groups.iter().enumerate() {
                let mut pages = spare.pop().unwrap_or_default();
                live.read_into(group, &mut pages)?;
                to_hash.send(pages).map_err(|_| lost())?;
                if i > 0 {
                    let (mut pages, ids) = hashed.recv().map_err(|_| lost())?;
                    self.take_live(groups[i - 1], &mut pages, ids);
                    spare.push(pages);
                }
            }
            drop(to_hash);
            let (mut pages, ids) = hashed.recv().map_err(|_| lost())?;
            if let Some(last) = groups.last() {
                self.take_live(last, &mut pages, ids);
            }
            self.spare = pages;
            Ok(())
        })
    }

    /// Takes in live pages `group` (their bytes `pages`, their hashes
    /// `ids`): their hashes, the interior pages' bytes, the leaves parsed
    /// (and, for a leaf that may differ, its bytes).
    fn take_live(&mut self, group: &[u32], pages: &mut [Vec<u8>], ids: Vec<Id>) {
        for ((&p, b), id) in group.iter().zip(pages.iter_mut()).zip(ids) {
            self.lhash.insert(p, id);
            match header(b).map(|h| h.kind) {
                Some(0x05) => {
                    self.linterior.insert(p, std::mem::take(b));
                }
                Some(_) => {
                    let l = leaf(b, self.usable);
                    let same_as_snapshot = self.sleaves.contains(&p)
                        && self.ids.get((p as usize).wrapping_sub(1)) == Some(&id)
                        && l.as_ref().is_some_and(|l| l.chains.is_empty());
                    let len = b.len() as u64;
                    if !same_as_snapshot && self.lbytes_held + len <= CELLS_MAX {
                        self.lbytes_held += len;
                        self.lbytes.insert(p, std::mem::take(b));
                    }
                    self.lleaf.insert(p, l);
                }
                None => {}
            }
        }
    }

    /// Fetches (verified) and parses snapshot leaves, a batch at a time,
    /// keeping their bytes when `keep`.
    fn fetch_snapshot_leaves(&mut self, pgnos: &[u32], keep: bool) -> Result<()> {
        for group in pgnos.chunks(LIVE_BATCH) {
            let pages = self.point.read_pages(group).map_err(Error::from)?;
            for (&p, b) in group.iter().zip(pages) {
                self.sleaf.insert(p, leaf(&b, self.usable));
                if keep {
                    self.sbytes.insert(p, b);
                }
            }
        }
        Ok(())
    }

    /// Walks one side's tree from `root` down, a level at a time: `step`
    /// says whether a level is the leaves, or gives its pages' children.
    fn walk(
        &mut self,
        root: u32,
        pages: u64,
        mut step: impl FnMut(&mut Self, &[u32]) -> Result<Level>,
    ) -> Result<Walk> {
        let mut level = vec![root];
        let mut seen: HashSet<u32> = HashSet::new();
        let mut interior = 0u64;
        for _ in 0..MAX_DEPTH {
            if let Some(p) = level
                .iter()
                .find(|&&p| p < 2 || u64::from(p) > pages || !seen.insert(p))
            {
                return Ok(Err(format!(
                    "page {p} is outside the database or seen twice"
                )));
            }
            match step(self, &level)? {
                Level::Leaves => {
                    return Ok(Ok(Tree {
                        interior,
                        leaves: level,
                    }))
                }
                Level::Children(next) => {
                    interior += level.len() as u64;
                    level = next;
                }
                Level::Bad(p) => {
                    return Ok(Err(format!(
                        "page {p} is not a table b-tree page of the same kind as its neighbours"
                    )))
                }
            }
        }
        Ok(Err("deeper than SQLite makes a b-tree".into()))
    }

    /// The live tree: every page read (and hashed), level by level.
    fn walk_live(&mut self, root: u32) -> Result<Walk> {
        self.walk(root, self.live.pages, |s, level| {
            s.load_live(level)?;
            if level.iter().all(|p| s.lleaf.contains_key(p)) {
                return Ok(Level::Leaves);
            }
            Ok(children_of(level, |p| s.linterior.get(&p)))
        })
    }

    /// The snapshot's tree: its interior pages read (a page whose chunk id
    /// is the live page's hash from the live bytes, the others fetched
    /// and verified), its leaves known by number only. A level is a leaf
    /// level when its first page is a leaf; every leaf is checked to be
    /// one later (from the live bytes or when it is fetched).
    fn walk_snapshot(&mut self, root: u32) -> Result<Walk> {
        self.walk(root, self.ids.len() as u64, |s, level| {
            let p0 = level[0];
            s.load_live(&[p0])?;
            let first_is_leaf = if s.same(p0) {
                s.lleaf.contains_key(&p0)
            } else {
                let b = s.point.read_pages(&[p0]).map_err(Error::from)?;
                let b = b.first().map(Vec::as_slice).unwrap_or(&[]);
                let is_leaf = header(b).is_some_and(|h| h.kind == 0x0D);
                if is_leaf {
                    s.sleaf.insert(p0, leaf(b, s.usable));
                }
                is_leaf
            };
            if first_is_leaf {
                return Ok(Level::Leaves);
            }
            s.load_live(level)?;
            let fetch: Vec<u32> = level
                .iter()
                .copied()
                .filter(|p| !(s.same(*p) && s.linterior.contains_key(p)))
                .collect();
            let fetched = s.point.read_pages(&fetch).map_err(Error::from)?;
            let fetched: HashMap<u32, Vec<u8>> = fetch.into_iter().zip(fetched).collect();
            Ok(children_of(level, |p| {
                fetched.get(&p).or_else(|| s.linterior.get(&p))
            }))
        })
    }

    /// Whether each overflow chain (first page, page count) of `chains`
    /// is the same on both sides: the pages it compared, or `None` when
    /// one differs (or the chain leaves either database). The chains are
    /// followed together, a link at a time: each link's live pages are
    /// read in batches and hashed on every core.
    fn same_chains(&mut self, chains: &[(u32, u64)]) -> Result<Vec<Option<u64>>> {
        let mut out: Vec<Option<u64>> = vec![None; chains.len()];
        // (chain, its page to compare next, the pages compared before it)
        // A chain longer than the live database has pages would visit one
        // twice: it is not followed (a damaged payload size, which the
        // full scan then reports).
        let mut at: Vec<(usize, u32, u64)> = chains
            .iter()
            .enumerate()
            .filter(|(_, c)| c.1 > 0 && c.1 <= self.live.pages)
            .map(|(i, c)| (i, c.0, 0))
            .collect();
        for (i, c) in chains.iter().enumerate() {
            if c.1 == 0 {
                out[i] = Some(0);
            }
        }
        let mut pages = std::mem::take(&mut self.spare);
        while !at.is_empty() {
            at.retain(|&(_, p, _)| {
                p >= 2 && u64::from(p) <= self.live.pages && p as usize <= self.ids.len()
            });
            let mut next = Vec::new();
            for group in at.chunks(LIVE_BATCH) {
                let pgnos: Vec<u32> = group.iter().map(|c| c.1).collect();
                self.live.read_into(&pgnos, &mut pages)?;
                let point = self.point;
                let ids: Vec<Id> = pages.par_iter().map(|b| point.chunk_id_of(b)).collect();
                for ((&(i, p, k), b), id) in group.iter().zip(pages.iter()).zip(ids) {
                    if self.ids[p as usize - 1] != id {
                        continue;
                    }
                    if k + 1 < chains[i].1 {
                        match b.get(..4) {
                            Some(n) => {
                                next.push((i, u32::from_be_bytes([n[0], n[1], n[2], n[3]]), k + 1))
                            }
                            None => continue,
                        }
                    } else {
                        out[i] = Some(k + 1);
                    }
                }
            }
            at = next;
        }
        self.spare = pages;
        Ok(out)
    }
}

/// One step of the merge of both sides' cells by rowid.
enum Step {
    SnapGap,
    LiveGap,
    SnapRow(i64),
    LiveRow(i64),
    /// A rowid on both sides, and whether it is the same row.
    Pair(i64, Same),
}

/// Whether a rowid on both sides is the same row.
enum Same {
    Yes,
    No,
    /// When its overflow chain (`chains[i]`) is the same too.
    IfChain(usize),
}

/// One level of a b-tree walk.
enum Level {
    Leaves,
    /// The next level's pages, in key order.
    Children(Vec<u32>),
    /// A page that is not an interior page among interior pages.
    Bad(u32),
}

/// The children of every page of `level`, whose bytes `bytes` gives.
fn children_of<'b>(level: &[u32], bytes: impl Fn(u32) -> Option<&'b Vec<u8>>) -> Level {
    let mut next = Vec::new();
    for &p in level {
        match bytes(p).and_then(|b| children(b)) {
            Some(c) => next.extend(c),
            None => return Level::Bad(p),
        }
    }
    Level::Children(next)
}

/// What comparing the differing leaves' cells found.
struct CellSkip {
    snap_runs: Vec<Run>,
    live_runs: Vec<Run>,
    /// Rows whose cells are the same on both sides.
    identical: u64,
    overflow_compared: u64,
}

/// One item of a side's leaves in key order: a cell of a differing leaf,
/// or a skipped leaf.
#[derive(Clone, Copy)]
enum Item<'b> {
    Cell(Cell<'b>),
    Skipped,
}

/// One side's leaves in key order, item by item: each differing leaf's
/// cells (its bytes from `bytes`), each skipped leaf (`equal`) as one item;
/// the rowids checked to increase strictly across them, a skipped leaf's
/// from its first to its last.
struct Items<'a, 'b> {
    leaves: &'a [u32],
    equal: &'a HashSet<u32>,
    bytes: &'b HashMap<u32, Vec<u8>>,
    usable: usize,
    /// The next leaf to parse; the cells of the current one, and the next.
    at: usize,
    cells: Vec<Cell<'b>>,
    pos: usize,
    /// The item `peek` gave and its last rowid, until `next`.
    cur: Option<(Item<'b>, i64)>,
    /// The last rowid passed.
    prev: Option<i64>,
}

impl<'a, 'b> Items<'a, 'b> {
    fn new(
        leaves: &'a [u32],
        equal: &'a HashSet<u32>,
        bytes: &'b HashMap<u32, Vec<u8>>,
        usable: usize,
    ) -> Items<'a, 'b> {
        Items {
            leaves,
            equal,
            bytes,
            usable,
            at: 0,
            cells: Vec::new(),
            pos: 0,
            cur: None,
            prev: None,
        }
    }

    /// The next item (`None` past the last leaf), its rowids checked
    /// against the previous item's; a skipped leaf's rowids from `parsed`.
    /// The same item until `next`.
    fn peek(
        &mut self,
        parsed: &HashMap<u32, Option<Leaf>>,
    ) -> std::result::Result<Option<Item<'b>>, String> {
        if let Some((it, _)) = self.cur {
            return Ok(Some(it));
        }
        let disorder = || "its rowids do not increase from leaf to leaf".to_string();
        loop {
            if let Some(c) = self.cells.get(self.pos) {
                if self.prev.is_some_and(|q| q >= c.rowid) {
                    return Err(disorder());
                }
                self.cur = Some((Item::Cell(*c), c.rowid));
                return Ok(Some(Item::Cell(*c)));
            }
            let Some(&p) = self.leaves.get(self.at) else {
                return Ok(None);
            };
            self.at += 1;
            self.cells.clear();
            self.pos = 0;
            if self.equal.contains(&p) {
                let Some(Some(l)) = parsed.get(&p) else {
                    return Err(format!("page {p} is not a table leaf"));
                };
                let (Some(first), Some(last)) = (l.first, l.last) else {
                    continue;
                };
                if self.prev.is_some_and(|q| q >= first) || first > last {
                    return Err(disorder());
                }
                self.cur = Some((Item::Skipped, last));
                return Ok(Some(Item::Skipped));
            }
            let page = self.bytes.get(&p).map(Vec::as_slice).unwrap_or(&[]);
            match cells(page, self.usable) {
                Some(c) => self.cells = c,
                None => return Err(format!("page {p} is not a table leaf")),
            }
        }
    }

    /// Past the item `peek` gave.
    fn next(&mut self) {
        if let Some((it, last)) = self.cur.take() {
            self.prev = Some(last);
            if matches!(it, Item::Cell(_)) {
                self.pos += 1;
            }
        }
    }
}

/// Builds one side's runs from its leaves in key order.
#[derive(Default)]
struct Runs {
    out: Vec<Run>,
    cur: Option<Run>,
}

impl Runs {
    /// A differing leaf: its rows join the current run.
    fn leaf(&mut self, l: &Leaf) {
        if let Some(first) = l.first {
            self.rows(first, l.rows);
        }
    }

    /// `rows` rows from rowid `first` on join the current run.
    fn rows(&mut self, first: i64, rows: u64) {
        match &mut self.cur {
            Some(r) => r.rows += rows,
            None => self.cur = Some(Run { first, rows }),
        }
    }

    /// A skipped leaf: the current run ends before it.
    fn gap(&mut self) {
        if let Some(r) = self.cur.take() {
            self.out.push(r);
        }
    }

    fn done(mut self) -> Vec<Run> {
        self.gap();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_as_sqlite_writes_them() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
    }

    #[test]
    fn a_subquery_in_the_predicate_is_found_as_a_word() {
        assert!(has_word("id IN (SELECT id FROM x)", "select"));
        assert!(has_word("(select 1)", "select"));
        assert!(!has_word("selected = 1", "select"));
        assert!(!has_word("is_select = 1", "select"));
    }
}
