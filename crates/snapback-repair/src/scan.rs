//! Key-ordered scans of one side of a diff, as batches of encoded rows.
//!
//! A scan steps one prepared statement (`SELECT key…, data… ORDER BY key`)
//! and copies each row into a [`Batch`]: every column as one tag byte (its
//! storage class) followed by its bytes (an INTEGER's or a REAL's eight
//! bytes, a TEXT's or a BLOB's own bytes). Two columns' encodings are
//! byte-equal exactly when their values are the same value (`same_value`:
//! storage class and bits, so INTEGER 1 and REAL 1.0, or TEXT and a BLOB of
//! the same bytes, differ), so the merge compares a paired row with one
//! `memcmp` and builds owned values only for rows that differ.
//!
//! The scan itself proves that keys arrive strictly in order (a duplicate
//! or a NULL key, or an order SQLite and snapback disagree on, is an error
//! at the row where it happens; the rows before it are delivered first).
//!
//! A scan runs either on the caller's thread ([`Cursor::inline`], for a
//! caller whose sink reads the same connection while the scan is open) or on
//! a thread of its own ([`spawn`]), which borrows its connection for the
//! scan and sends batches through a bounded channel: then the two sides of
//! a diff are decoded by SQLite on two threads at once.

use std::cmp::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::value::{cmp_values, Collation, Value};

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;
const TAG_BLOB: u8 = 4;

/// A batch ends at this many rows, or at the first row that takes its
/// bytes past `BATCH_BYTES` (a batch holds at least one row, whatever its
/// size).
const BATCH_ROWS: usize = 256;
const BATCH_BYTES: usize = 256 * 1024;

/// Batches in flight per threaded side: what the channel holds, besides
/// the one the scan fills and the one the merge reads.
const IN_FLIGHT: usize = 4;

/// Rows of one side, encoded (see the module's documentation).
pub(crate) struct Batch {
    buf: Vec<u8>,
    /// `ncols` offsets per row and one at the end: column `i` of row `r` is
    /// `buf[offs[r * ncols + i]..offs[r * ncols + i + 1]]`.
    offs: Vec<usize>,
    ncols: usize,
}

impl Batch {
    fn new(ncols: usize) -> Batch {
        Batch {
            buf: Vec::new(),
            offs: vec![0],
            ncols: ncols.max(1),
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.offs.clear();
        self.offs.push(0);
    }

    fn rows(&self) -> usize {
        (self.offs.len() - 1) / self.ncols
    }

    fn full(&self) -> bool {
        self.rows() >= BATCH_ROWS || self.buf.len() >= BATCH_BYTES
    }

    fn push_row(&mut self, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        for i in 0..self.ncols {
            match row.get_ref(i)? {
                ValueRef::Null => self.buf.push(TAG_NULL),
                ValueRef::Integer(v) => {
                    self.buf.push(TAG_INTEGER);
                    self.buf.extend_from_slice(&v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    self.buf.push(TAG_REAL);
                    self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
                }
                ValueRef::Text(t) => {
                    self.buf.push(TAG_TEXT);
                    self.buf.extend_from_slice(t);
                }
                ValueRef::Blob(b) => {
                    self.buf.push(TAG_BLOB);
                    self.buf.extend_from_slice(b);
                }
            }
            self.offs.push(self.buf.len());
        }
        Ok(())
    }

    /// Drops the last row (one that failed the order check).
    fn pop_row(&mut self) {
        let keep = self.offs.len() - self.ncols;
        self.offs.truncate(keep);
        self.buf.truncate(self.offs[keep - 1]);
    }

    fn row(&self, r: usize) -> RowRef<'_> {
        RowRef {
            batch: self,
            row: r,
        }
    }
}

/// One row of a batch.
#[derive(Clone, Copy)]
pub(crate) struct RowRef<'b> {
    batch: &'b Batch,
    row: usize,
}

impl<'b> RowRef<'b> {
    /// The encoded bytes of columns `from..to`.
    pub(crate) fn raw_span(&self, from: usize, to: usize) -> &'b [u8] {
        let base = self.row * self.batch.ncols;
        &self.batch.buf[self.batch.offs[base + from]..self.batch.offs[base + to]]
    }

    /// The encoded bytes of column `i`: equal for two columns exactly when
    /// `same_value` says so.
    pub(crate) fn raw(&self, i: usize) -> &'b [u8] {
        self.raw_span(i, i + 1)
    }

    /// Column `i`, borrowed from the batch.
    pub(crate) fn get(&self, i: usize) -> ValueRef<'b> {
        decode(self.raw(i))
    }

    /// Columns `from..from + n`, owned.
    pub(crate) fn values(&self, from: usize, n: usize) -> Vec<Value> {
        (from..from + n)
            .map(|i| Value::from_ref(self.get(i)))
            .collect()
    }
}

fn decode(raw: &[u8]) -> ValueRef<'_> {
    let (tag, rest) = raw.split_first().unwrap_or((&TAG_NULL, &[]));
    let word = || {
        let mut w = [0u8; 8];
        let n = rest.len().min(8);
        w[..n].copy_from_slice(&rest[..n]);
        w
    };
    match *tag {
        TAG_INTEGER => ValueRef::Integer(i64::from_le_bytes(word())),
        TAG_REAL => ValueRef::Real(f64::from_bits(u64::from_le_bytes(word()))),
        TAG_TEXT => ValueRef::Text(rest),
        TAG_BLOB => ValueRef::Blob(rest),
        _ => ValueRef::Null,
    }
}

/// Compares the first `collations.len()` columns of two rows as the
/// scans' `ORDER BY` does.
pub(crate) fn key_cmp(collations: &[Collation], a: RowRef<'_>, b: RowRef<'_>) -> Ordering {
    for (i, coll) in collations.iter().enumerate() {
        match cmp_values(a.get(i), b.get(i), *coll) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    Ordering::Equal
}

/// What a scan reads and how its rows must be ordered.
#[derive(Clone)]
pub(crate) struct ScanSpec {
    /// Where the rows come from, for messages (a database's path).
    pub place: String,
    pub table: String,
    /// The key's columns (the first columns of every row) and collations.
    pub key_columns: Vec<String>,
    pub collations: Vec<Collation>,
    /// Columns per row.
    pub ncols: usize,
}

impl ScanSpec {
    fn error(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.place, format!("cannot read table {}", self.table), e)
    }
}

/// A statement being stepped into batches, with the order check.
pub(crate) struct Scan<'s> {
    rows: rusqlite::Rows<'s>,
    state: ScanState,
}

/// What a scan knows across the statements it steps: the previous key
/// (for the order check), an error still to report, whether it is over.
struct ScanState {
    spec: ScanSpec,
    /// The previous row's key, encoded as in a batch.
    prev: Batch,
    /// An error met after the rows already handed out: returned by the
    /// next `fill`.
    pending: Option<Error>,
    done: bool,
}

impl<'s> Scan<'s> {
    pub(crate) fn new(stmt: &'s mut rusqlite::Statement<'_>, spec: ScanSpec) -> Result<Scan<'s>> {
        let rows = stmt.query([]).map_err(|e| spec.error(e))?;
        Ok(Scan {
            rows,
            state: ScanState::new(spec),
        })
    }

    /// Reads every row, for the order check alone.
    pub(crate) fn drain(mut self) -> Result<()> {
        let mut b = Batch::new(self.state.spec.ncols);
        while self.fill(&mut b)? {}
        Ok(())
    }

    /// Refills `b` with the next rows; `false` when the scan is over.
    fn fill(&mut self, b: &mut Batch) -> Result<bool> {
        b.clear();
        let st = &mut self.state;
        if let Some(e) = st.pending.take() {
            st.done = true;
            return Err(e);
        }
        if !st.done && st.append(&mut self.rows, b) {
            st.done = true;
        }
        if b.rows() == 0 {
            if let Some(e) = st.pending.take() {
                st.done = true;
                return Err(e);
            }
        }
        Ok(b.rows() > 0)
    }
}

impl ScanState {
    fn new(spec: ScanSpec) -> ScanState {
        let nk = spec.key_columns.len();
        ScanState {
            prev: Batch::new(nk),
            spec,
            pending: None,
            done: false,
        }
    }

    /// Adds rows of `rows` to `b` until `b` is full (`false`) or `rows`
    /// is over or failed (`true`; the failure is pending).
    fn append(&mut self, rows: &mut rusqlite::Rows<'_>, b: &mut Batch) -> bool {
        while !b.full() {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => return true,
                Err(e) => {
                    self.pending = Some(self.spec.error(e));
                    return true;
                }
            };
            if let Err(e) = b.push_row(row) {
                self.pending = Some(self.spec.error(e));
                return true;
            }
            if let Err(e) = self.check_order(b.row(b.rows() - 1)) {
                b.pop_row();
                self.pending = Some(e);
                return true;
            }
        }
        false
    }

    /// Proves that `row` comes strictly after the previous row in key
    /// order, and remembers its key.
    fn check_order(&mut self, row: RowRef<'_>) -> Result<()> {
        let nk = self.spec.collations.len();
        if self.prev.rows() > 0 {
            let prev = self.prev.row(0);
            match key_cmp(&self.spec.collations, prev, row) {
                Ordering::Less => {}
                Ordering::Equal => {
                    return Err(Error::NoKey(format!(
                        "{}: table {} has more than one row with key {:?} ({}); the key does not identify rows uniquely (NULLs in a key are never unique); give one that does with --key",
                        self.spec.place,
                        self.spec.table,
                        prev.values(0, nk),
                        self.spec.key_columns.join(", ")
                    )))
                }
                Ordering::Greater => {
                    return Err(Error::Input(format!(
                        "{}: rows of table {} did not arrive in key order (after {:?}); this is a bug in snapback's ordering rules for this key, please report it",
                        self.spec.place,
                        self.spec.table,
                        prev.values(0, nk)
                    )))
                }
            }
        }
        self.prev.clear();
        self.prev.buf.extend_from_slice(row.raw_span(0, nk));
        let mut at = 0;
        for i in 0..nk {
            at += row.raw(i).len();
            self.prev.offs.push(at);
        }
        Ok(())
    }
}

/// What a threaded scan sends: a batch, the end of the rows, or the error
/// that ended them.
enum Msg {
    Rows(Batch),
    End,
}

enum Source<'s> {
    Inline(Box<Scan<'s>>),
    Thread {
        rx: Receiver<Result<Msg>>,
        /// Batches the merge is done with, for the scan to refill.
        back: SyncSender<Batch>,
        place: String,
    },
}

/// The merge's view of one side: the current row, and the next.
pub(crate) struct Cursor<'s> {
    source: Source<'s>,
    batch: Batch,
    row: usize,
    over: bool,
}

impl<'s> Cursor<'s> {
    /// A scan stepped on this thread, as the merge asks for rows.
    pub(crate) fn inline(scan: Scan<'s>) -> Result<Cursor<'s>> {
        let ncols = scan.state.spec.ncols;
        let mut c = Cursor {
            source: Source::Inline(Box::new(scan)),
            batch: Batch::new(ncols),
            row: 0,
            over: false,
        };
        c.refill()?;
        Ok(c)
    }

    pub(crate) fn current(&self) -> Option<RowRef<'_>> {
        (!self.over && self.row < self.batch.rows()).then(|| self.batch.row(self.row))
    }

    pub(crate) fn advance(&mut self) -> Result<()> {
        if self.over {
            return Ok(());
        }
        self.row += 1;
        if self.row >= self.batch.rows() {
            self.refill()?;
        }
        Ok(())
    }

    fn refill(&mut self) -> Result<()> {
        self.row = 0;
        match &mut self.source {
            Source::Inline(scan) => {
                if !scan.fill(&mut self.batch)? {
                    self.over = true;
                }
            }
            Source::Thread { rx, back, place } => match rx.recv() {
                Ok(Ok(Msg::Rows(b))) => {
                    let old = std::mem::replace(&mut self.batch, b);
                    let _ = back.try_send(old);
                }
                Ok(Ok(Msg::End)) => self.over = true,
                Ok(Err(e)) => {
                    self.over = true;
                    return Err(e);
                }
                // The scan's thread ended without saying that the rows
                // are over: it panicked. Never taken for the end of rows.
                Err(mpsc::RecvError) => {
                    self.over = true;
                    return Err(snapback_core::Error::internal(format!(
                        "the scan of {place} stopped before its last row"
                    ))
                    .into());
                }
            },
        }
        Ok(())
    }
}

/// A threaded scan started by [`spawn`], before its first rows.
pub(crate) struct Started {
    cursor: Cursor<'static>,
}

impl Started {
    /// Waits for the scan's first rows.
    pub(crate) fn cursor(mut self) -> Result<Cursor<'static>> {
        self.cursor.refill()?;
        Ok(self.cursor)
    }
}

/// Starts a scan of `sql` over `conn` on a thread of `scope`; its cursor
/// reads the rows. With `runs`, `sql` takes two parameters (a first key
/// and a row count) and is run once per run, in order, its rows one
/// scan whose order is checked across runs. Dropping the cursor (or
/// `Started`) stops the scan at its next batch.
pub(crate) fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    conn: &'env mut Connection,
    sql: &'env str,
    spec: ScanSpec,
    runs: Option<Vec<(i64, u64)>>,
) -> Result<(Started, ScopedJoinHandle<'scope, ()>)> {
    let (tx, rx) = mpsc::sync_channel::<Result<Msg>>(IN_FLIGHT);
    let (back, recycled) = mpsc::sync_channel::<Batch>(IN_FLIGHT + 2);
    let ncols = spec.ncols;
    let place = spec.place.clone();
    let thread_err = |e| Error::Io {
        path: spec.place.clone().into(),
        message: format!("cannot start a thread to read table {}", spec.table),
        cause: e,
    };
    let builder = std::thread::Builder::new().name("snapback-diff-scan".into());
    let spec_t = spec.clone();
    let handle = builder.spawn_scoped(scope, move || {
        let spec = spec_t;
        let fresh = || recycled.try_recv().unwrap_or_else(|_| Batch::new(ncols));
        let run = || -> Result<()> {
            let mut stmt = conn.prepare(sql).map_err(|e| spec.error(e))?;
            let Some(runs) = runs else {
                let mut scan = Scan::new(&mut stmt, spec.clone())?;
                loop {
                    let mut b = fresh();
                    if !scan.fill(&mut b)? {
                        let _ = tx.send(Ok(Msg::End));
                        return Ok(());
                    }
                    if tx.send(Ok(Msg::Rows(b))).is_err() {
                        // The merge is done (it stopped early): so is the scan.
                        return Ok(());
                    }
                }
            };
            let mut st = ScanState::new(spec.clone());
            let mut b = fresh();
            b.clear();
            for (first, n) in runs {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                let mut rows = stmt
                    .query(rusqlite::params![first, n])
                    .map_err(|e| spec.error(e))?;
                loop {
                    let over = st.append(&mut rows, &mut b);
                    if b.full() {
                        if tx.send(Ok(Msg::Rows(b))).is_err() {
                            return Ok(());
                        }
                        b = fresh();
                        b.clear();
                    }
                    if over {
                        break;
                    }
                }
                if let Some(e) = st.pending.take() {
                    if b.rows() > 0 && tx.send(Ok(Msg::Rows(b))).is_err() {
                        return Ok(());
                    }
                    return Err(e);
                }
            }
            if b.rows() > 0 && tx.send(Ok(Msg::Rows(b))).is_err() {
                return Ok(());
            }
            let _ = tx.send(Ok(Msg::End));
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.send(Err(e));
        }
    });
    let handle = handle.map_err(thread_err)?;
    let cursor = Cursor {
        source: Source::Thread { rx, back, place },
        batch: Batch::new(ncols),
        row: 0,
        over: false,
    };
    Ok((Started { cursor }, handle))
}
