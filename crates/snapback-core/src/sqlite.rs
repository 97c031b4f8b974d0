//! Consistent capture of a live SQLite database.
//!
//! The pages are read through SQLite itself, from the `sqlite_dbpage`
//! virtual table, inside one read transaction. In WAL mode that transaction
//! sees every frame committed before it began (frames still in the `-wal`
//! file included) and blocks no writer; in rollback mode it holds a SHARED
//! lock, as any reader does. No checkpoint is forced, and the `-wal` file is
//! never copied. The connection is read-only, so closing it never
//! checkpoints or deletes the WAL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, SourceProblem};
use crate::id::Id;

pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Database files whose header was read here, by device and inode, kept
/// open until the process exits. SQLite holds its locks on a database file
/// as POSIX locks, and closing *any* descriptor of a file drops every POSIX
/// lock the process holds on it: a header read that closed its descriptor
/// would silently release the read transaction another connection of this
/// process holds on the same database (the watcher's pin; see `watch`), and
/// a last writer elsewhere could then delete the WAL under it. Files that
/// are not databases are closed as usual.
static DB_FILES: std::sync::Mutex<Vec<((u64, u64), std::fs::File)>> =
    std::sync::Mutex::new(Vec::new());

/// True when the file starts with the SQLite header string.
pub fn has_sqlite_header(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    let key = (m.dev(), m.ino());
    let mut open = DB_FILES
        .lock()
        .map_err(|_| std::io::Error::other("database file table poisoned"))?;
    if let Some((_, f)) = open.iter().find(|(k, _)| *k == key) {
        return header_is_sqlite(f);
    }
    let f = std::fs::File::open(path)?;
    let m = f.metadata()?;
    let is_db = header_is_sqlite(&f)?;
    if is_db {
        open.push(((m.dev(), m.ino()), f));
    }
    Ok(is_db)
}

fn header_is_sqlite(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 16];
    let mut n = 0;
    while n < 16 {
        match f.read_at(&mut b[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n == 16 && &b == SQLITE_MAGIC)
}

/// "wal" when header bytes 18 and 19 are both 2, else "rollback".
pub fn journal_mode_of_header(page1: &[u8]) -> &'static str {
    if page1.len() > 19 && page1[18] == 2 && page1[19] == 2 {
        "wal"
    } else {
        "rollback"
    }
}

/// How long SQLite's busy handler waits at a time before `Capture::begin`
/// looks at its own deadline again.
const BUSY_SLICE: Duration = Duration::from_millis(200);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// The SQLite errors that say something plain about the file: `Err(e)` back
/// for the others.
fn classify(path: &Path, busy: Duration, e: rusqlite::Error) -> Result<Error, rusqlite::Error> {
    use rusqlite::ErrorCode as C;
    let (problem, message) = match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => (
            SourceProblem::Locked,
            format!(
                "is locked by another process (a write transaction, or BEGIN EXCLUSIVE) and stayed locked for the {} s this snapshot waits (--busy-timeout); not snapshotted this time, the next snapshot tries again",
                busy.as_secs()
            ),
        ),
        Some(C::ReadOnly) => {
            let journal = PathBuf::from(format!("{}-journal", path.display()));
            if !journal.exists() {
                return Err(e);
            }
            (
                SourceProblem::HotJournal,
                format!(
                    "has a hot journal ({}): a writer was killed mid-transaction, and the transaction must be rolled back before the database can be read; snapback opens databases read-only and never does it. Let the application open the database, or run `sqlite3 {} 'PRAGMA quick_check'`, which rolls it back; the next snapshot then takes it",
                    journal.display(),
                    path.display()
                ),
            )
        }
        Some(C::NotADatabase | C::DatabaseCorrupt) => (
            SourceProblem::NotADatabase,
            format!("is not a valid SQLite database: it starts with the SQLite header, but SQLite refuses it ({e})"),
        ),
        _ => return Err(e),
    };
    Ok(Error::Source {
        path: path.to_path_buf(),
        problem,
        message,
    })
}

/// An open read transaction on a database.
pub struct Capture {
    conn: Connection,
    path: PathBuf,
    pub page_size: u32,
    pub page_count: u64,
    pub captured_at: time::OffsetDateTime,
}

/// The error of a SQLite call on the database at `path`.
fn sqlite_error(path: &Path, message: &str, cause: rusqlite::Error) -> Error {
    Error::Sqlite {
        path: path.to_path_buf(),
        message: message.into(),
        cause,
    }
}

/// Streams every page of the database `schema` of `conn`, in order, to
/// `sink`, `pages_per_call` pages at a time, checking that pages come in
/// order, whole, and `page_count` of them (the capture and the in-place
/// restore read through this).
#[allow(clippy::too_many_arguments)]
fn read_all_pages(
    conn: &Connection,
    path: &Path,
    schema: &str,
    page_size: u32,
    page_count: u64,
    pages_per_call: usize,
    mut fresh: impl FnMut() -> Vec<u8>,
    mut sink: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let err = |message: &str, cause| sqlite_error(path, message, cause);
    let mut stmt = conn
        .prepare_cached(&format!("SELECT pgno, data FROM sqlite_dbpage('{schema}')"))
        .map_err(|e| {
            err(
                "cannot read pages (is SQLITE_ENABLE_DBPAGE_VTAB compiled in?)",
                e,
            )
        })?;
    let mut rows = stmt.query([]).map_err(|e| err("cannot read pages", e))?;
    let ps = page_size as usize;
    let cap = pages_per_call.max(1) * ps;
    // A buffer from `fresh` (one the caller is done with, or a new one),
    // emptied and with room for one call's pages.
    let mut next = || {
        let mut b = fresh();
        b.clear();
        b.reserve(cap);
        b
    };
    let mut buf = next();
    let mut expect: i64 = 1;
    while let Some(row) = rows.next().map_err(|e| err("page read failed", e))? {
        let pgno: i64 = row.get(0).map_err(|e| err("page read failed", e))?;
        if pgno != expect {
            return Err(Error::Input {
                path: path.to_path_buf(),
                message: format!("page {pgno} came out of order (expected {expect})"),
            });
        }
        let data = row.get_ref(1).map_err(|e| err("page read failed", e))?;
        let data = data
            .as_blob()
            .map_err(|e| err("page read failed", rusqlite::Error::from(e)))?;
        if data.len() != ps {
            return Err(Error::Input {
                path: path.to_path_buf(),
                message: format!("page {pgno} has {} bytes, not {ps}", data.len()),
            });
        }
        buf.extend_from_slice(data);
        expect += 1;
        if buf.len() >= cap {
            sink(std::mem::replace(&mut buf, next()))?;
        }
    }
    if (expect - 1) as u64 != page_count {
        return Err(Error::Input {
            path: path.to_path_buf(),
            message: format!(
                "read {} pages but the database has {page_count}",
                expect - 1
            ),
        });
    }
    if !buf.is_empty() {
        sink(buf)?;
    }
    Ok(())
}

/// SHA-256 over the rows of the schema table of the database `schema`, in
/// name order.
fn schema_hash_of(conn: &Connection, path: &Path, schema: &str) -> Result<Id> {
    let err = |cause| sqlite_error(path, "cannot read the schema", cause);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM \"{schema}\".sqlite_schema ORDER BY type, name"
        ))
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut h = Sha256::new();
    while let Some(r) = rows.next().map_err(err)? {
        for i in 0..4 {
            let s: String = r.get(i).map_err(err)?;
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    Ok(Id(h.finalize().into()))
}

impl Capture {
    /// Opens `path` read-only and establishes a read transaction. Waits up to
    /// `busy` for another process's lock (a writer, `BEGIN EXCLUSIVE`),
    /// saying in the log what it waits for. A database that cannot be
    /// captured as it is gives [`Error::Source`], in plain words: locked,
    /// a hot journal to roll back, not a database.
    pub fn begin(path: &Path, busy: Duration) -> Result<Capture> {
        let err = |message: &str, cause| sqlite_error(path, message, cause);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            classify(path, busy, e).unwrap_or_else(|e| {
                err("has a SQLite header but cannot be opened as a database", e)
            })
        })?;
        // SQLite's own busy handler waits in silence: wait in slices, and
        // say once what for.
        conn.busy_timeout(BUSY_SLICE.min(busy))
            .map_err(|e| err("cannot set a busy timeout", e))?;
        let started = std::time::Instant::now();
        let mut said = false;
        let page_count: i64 = loop {
            // The first read establishes the transaction's snapshot.
            let r = conn
                .execute_batch("BEGIN")
                .and_then(|()| conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())))
                .and_then(|()| conn.query_row("PRAGMA page_count", [], |r| r.get(0)));
            match r {
                Ok(n) => break n,
                Err(e) if is_busy(&e) && started.elapsed() < busy => {
                    let _ = conn.execute_batch("ROLLBACK");
                    if !said {
                        tracing::warn!(
                            "{} is locked by another process (a write transaction, or BEGIN EXCLUSIVE); waiting up to {} s for it",
                            path.display(),
                            busy.as_secs()
                        );
                        said = true;
                    }
                }
                Err(e) => {
                    return Err(classify(path, busy, e).unwrap_or_else(|e| {
                        err("is not a readable SQLite database (it has the SQLite header, but SQLite refuses it)", e)
                    }))
                }
            }
        };
        let captured_at = crate::time::now();
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| err("cannot read the page size", e))?;
        let page_size = u32::try_from(page_size)
            .ok()
            .filter(|p| p.is_power_of_two() && (512..=65536).contains(p))
            .ok_or_else(|| Error::Input {
                path: path.into(),
                message: format!("invalid page size {page_size}"),
            })?;
        Ok(Capture {
            conn,
            path: path.to_path_buf(),
            page_size,
            page_count: page_count.max(0) as u64,
            captured_at,
        })
    }

    pub fn size(&self) -> u64 {
        self.page_count * self.page_size as u64
    }

    /// Streams every page, in order, to `sink`, `pages_per_call` pages at a
    /// time (the last call may carry fewer). The buffer handed to `sink` is
    /// the caller's to keep.
    pub fn read_pages(
        &self,
        pages_per_call: usize,
        sink: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        self.read_pages_into(pages_per_call, Vec::new, sink)
    }

    /// `read_pages`, each call's buffer taken from `fresh` (emptied
    /// first): a caller that hands back the buffers it is done with reads
    /// a whole database into a few buffers, instead of faulting in new
    /// memory for every 8 MiB of it.
    pub fn read_pages_into(
        &self,
        pages_per_call: usize,
        fresh: impl FnMut() -> Vec<u8>,
        sink: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        read_all_pages(
            &self.conn,
            &self.path,
            "main",
            self.page_size,
            self.page_count,
            pages_per_call,
            fresh,
            sink,
        )
    }

    /// Reads the listed pages (1-based, each at most the page count) of this
    /// transaction, handing them to `sink` in order, concatenated, up to
    /// `pages_per_call` at a time.
    pub fn read_listed(
        &self,
        pages: &[u64],
        pages_per_call: usize,
        mut sink: impl FnMut(&[u64], Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let err = |message: &str, cause| sqlite_error(&self.path, message, cause);
        let mut stmt = self
            .conn
            .prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
            .map_err(|e| {
                err(
                    "cannot read pages (is SQLITE_ENABLE_DBPAGE_VTAB compiled in?)",
                    e,
                )
            })?;
        let ps = self.page_size as usize;
        for group in pages.chunks(pages_per_call.max(1)) {
            let mut buf = Vec::with_capacity(group.len() * ps);
            for &pgno in group {
                if pgno == 0 || pgno > self.page_count {
                    return Err(Error::Input {
                        path: self.path.clone(),
                        message: format!(
                            "page {pgno} is outside the database ({} pages)",
                            self.page_count
                        ),
                    });
                }
                let got = stmt
                    .query_row([pgno as i64], |r| {
                        let d = r.get_ref(0)?;
                        let b = d.as_blob().map_err(rusqlite::Error::from)?;
                        if b.len() == ps {
                            buf.extend_from_slice(b);
                            Ok(true)
                        } else {
                            Ok(false)
                        }
                    })
                    .map_err(|e| err("page read failed", e))?;
                if !got {
                    return Err(Error::Input {
                        path: self.path.clone(),
                        message: format!("page {pgno} is not {ps} bytes"),
                    });
                }
            }
            sink(group, buf)?;
        }
        Ok(())
    }

    /// SHA-256 over the schema table's rows, in name order.
    pub fn schema_hash(&self) -> Result<Id> {
        schema_hash_of(&self.conn, &self.path, "main")
    }

    /// Ends the read transaction.
    pub fn finish(self) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| Error::Sqlite {
                path: self.path.clone(),
                message: "cannot end the read transaction".into(),
                cause: e,
            })
    }
}

/// The schema name under which [`PageWriter`] attaches the live database.
const LIVE: &str = "live";
/// Writes a page, or with a NULL page cuts the database before it. One
/// statement for both, prepared before the first page is written: a
/// statement prepared after page 1 (the schema) was written would make
/// SQLite look at a schema that is half restored.
const WRITE_PAGE: &str = "INSERT INTO sqlite_dbpage(pgno, data, schema) VALUES(?1, ?2, 'live')";
const READ_PAGE: &str = "SELECT data FROM sqlite_dbpage('live') WHERE pgno = ?1";

/// One write transaction on a live database, whose pages are read and
/// written through SQLite's `sqlite_dbpage` table, so that the pager
/// journals them (rollback journal or WAL, whichever the database uses)
/// and every other connection sees the old database or the new one.
///
/// The database is attached to an in-memory connection: statements on
/// `sqlite_dbpage` belong to the in-memory schema, so writing the live
/// database's page 1 (its schema) never makes SQLite reparse a schema that
/// is half written, and the statements are prepared once.
pub struct PageWriter {
    conn: Connection,
    path: PathBuf,
    pub page_size: u32,
    pub page_count: u64,
    /// The live page 1 as this transaction sees it.
    pub page1: Vec<u8>,
}

impl PageWriter {
    /// Opens `path` for writing and begins a write transaction
    /// (`BEGIN IMMEDIATE`), waiting at most `lock_wait` for another
    /// connection's write lock: `Error::Locked` then, with nothing written.
    pub fn begin(path: &Path, lock_wait: Duration) -> Result<PageWriter> {
        let mut w = PageWriter::open(path, lock_wait)?;
        w.begin_write(lock_wait)?;
        Ok(w)
    }

    /// Opens `path` for writing, with no transaction yet: then
    /// [`PageWriter::begin_read`] and [`PageWriter::end_read`] any number
    /// of times, and [`PageWriter::begin_write`] once.
    pub fn open(path: &Path, lock_wait: Duration) -> Result<PageWriter> {
        let err = |message: &str, cause| sqlite_error(path, message, cause);
        let conn = Connection::open_in_memory()
            .map_err(|e| err("cannot open an in-memory SQLite connection", e))?;
        // A defensive connection may not write sqlite_dbpage: ours is not,
        // and must not be.
        use rusqlite::config::DbConfig;
        let defensive = conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)
            .map_err(|e| err("cannot configure the connection", e))?;
        if defensive {
            return Err(Error::internal(format!(
                "{}: this SQLite build keeps SQLITE_DBCONFIG_DEFENSIVE on, which forbids writing pages through sqlite_dbpage; an in-place restore is not possible with it, and nothing was written. Restore to a new file with `snapback restore SNAP NEW_FILE` instead",
                path.display()
            )));
        }
        let uri = format!(
            "file:{}?mode=rw",
            path.to_string_lossy()
                .replace('%', "%25")
                .replace('?', "%3f")
                .replace('#', "%23")
        );
        conn.execute("ATTACH DATABASE ?1 AS live", [&uri])
            .map_err(|e| err("cannot open the live database for writing", e))?;
        conn.execute_batch("PRAGMA writable_schema = ON")
            .map_err(|e| err("cannot configure the connection", e))?;
        conn.busy_timeout(lock_wait)
            .map_err(|e| err("cannot set a busy timeout", e))?;
        conn.prepare_cached(WRITE_PAGE)
            .map_err(|e| err("cannot prepare to write pages", e))?;
        Ok(PageWriter {
            conn,
            path: path.to_path_buf(),
            page_size: 0,
            page_count: 0,
            page1: Vec::new(),
        })
    }

    /// Begins a read transaction (it blocks no writer in WAL mode) and
    /// reads the page size, page count and page 1 it sees.
    pub fn begin_read(&mut self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN")
            .map_err(|e| sqlite_error(&self.path, "cannot begin a read transaction", e))?;
        if let Err(e) = self.read_meta() {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }

    /// Ends the read transaction of [`PageWriter::begin_read`].
    pub fn end_read(&mut self) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| sqlite_error(&self.path, "cannot end the read transaction", e))
    }

    /// Begins the write transaction (`BEGIN IMMEDIATE`), waiting at most
    /// `lock_wait` for another connection's write lock: `Error::Locked`
    /// then, with nothing written.
    pub fn begin_write(&mut self, lock_wait: Duration) -> Result<()> {
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            if is_busy(&e) {
                return Err(Error::Locked(format!(
                    "{}: cannot lock: another connection held the database's write lock (a write transaction, or BEGIN EXCLUSIVE) for the whole --lock-wait of {} s; nothing was written. Run again when the writer is done, or with a longer --lock-wait",
                    self.path.display(),
                    lock_wait.as_secs_f64()
                )));
            }
            return Err(sqlite_error(
                &self.path,
                "cannot begin a write transaction",
                e,
            ));
        }
        if let Err(e) = self.read_meta() {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }

    /// `PRAGMA data_version` of the live database on this connection: two
    /// readings differ when another connection committed between the
    /// transactions they were read in.
    pub fn data_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA live.data_version", [], |r| r.get(0))
            .map_err(|e| sqlite_error(&self.path, "cannot read the data version", e))
    }

    /// The page size, page count and page 1 of the current transaction.
    fn read_meta(&mut self) -> Result<()> {
        let read = || -> rusqlite::Result<(i64, i64)> {
            let ps = self
                .conn
                .query_row("PRAGMA live.page_size", [], |r| r.get(0))?;
            let pc = self
                .conn
                .query_row("PRAGMA live.page_count", [], |r| r.get(0))?;
            Ok((ps, pc))
        };
        let (ps, pc) =
            read().map_err(|e| sqlite_error(&self.path, "cannot read the live database", e))?;
        self.page_size = u32::try_from(ps)
            .ok()
            .filter(|p| p.is_power_of_two() && (512..=65536).contains(p))
            .ok_or_else(|| Error::Input {
                path: self.path.clone(),
                message: format!("invalid page size {ps}"),
            })?;
        self.page_count = pc.max(0) as u64;
        self.page1 = self.read_page(1)?;
        Ok(())
    }

    /// Streams every page, in order (see [`Capture::read_pages`]).
    pub fn read_pages(
        &self,
        pages_per_call: usize,
        sink: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        read_all_pages(
            &self.conn,
            &self.path,
            LIVE,
            self.page_size,
            self.page_count,
            pages_per_call,
            Vec::new,
            sink,
        )
    }

    /// Page `pgno` as this transaction sees it (its own writes included).
    pub fn read_page(&self, pgno: u64) -> Result<Vec<u8>> {
        let mut stmt = self
            .conn
            .prepare_cached(READ_PAGE)
            .map_err(|e| sqlite_error(&self.path, "cannot read pages", e))?;
        let data: Vec<u8> = stmt
            .query_row([pgno as i64], |r| r.get(0))
            .map_err(|e| sqlite_error(&self.path, &format!("cannot read page {pgno}"), e))?;
        if data.len() != self.page_size as usize {
            return Err(Error::Input {
                path: self.path.clone(),
                message: format!("page {pgno} is not {} bytes", self.page_size),
            });
        }
        Ok(data)
    }

    /// SHA-256 over the live schema table's rows (as [`Capture::schema_hash`]).
    /// Read it before writing any page.
    pub fn schema_hash(&self) -> Result<Id> {
        schema_hash_of(&self.conn, &self.path, LIVE)
    }

    /// Writes page `pgno` (past the end extends the database).
    pub fn write_page(&self, pgno: u64, data: &[u8]) -> Result<()> {
        if data.len() != self.page_size as usize {
            return Err(Error::internal(format!(
                "page {pgno} to write has {} bytes, not {}",
                data.len(),
                self.page_size
            )));
        }
        let mut stmt = self
            .conn
            .prepare_cached(WRITE_PAGE)
            .map_err(|e| sqlite_error(&self.path, "cannot write pages", e))?;
        stmt.execute(rusqlite::params![pgno as i64, data])
            .map_err(|e| self.write_error(pgno, e))?;
        Ok(())
    }

    /// Cuts the database to `pages` pages, at COMMIT. Call it after the
    /// last `write_page`: a page written after it cancels the cut.
    pub fn truncate(&self, pages: u64) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached(WRITE_PAGE)
            .map_err(|e| sqlite_error(&self.path, "cannot truncate", e))?;
        stmt.execute(rusqlite::params![(pages + 1) as i64, rusqlite::types::Null])
            .map_err(|e| self.write_error(pages + 1, e))?;
        Ok(())
    }

    fn write_error(&self, pgno: u64, e: rusqlite::Error) -> Error {
        let text = e.to_string();
        if text.contains("read-only")
            && !matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly))
        {
            return Error::internal(format!(
                "{}: SQLite refused to write page {pgno} through sqlite_dbpage (SQLITE_DBCONFIG_DEFENSIVE is on); nothing was written",
                self.path.display()
            ));
        }
        sqlite_error(&self.path, &format!("cannot write page {pgno}"), e)
    }

    /// Commits, waiting up to the busy timeout for readers where the
    /// journal mode needs it (a rollback journal waits for readers to
    /// finish). On failure the transaction is rolled back: nothing written.
    pub fn commit(self) -> Result<()> {
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                if is_busy(&e) {
                    return Err(Error::Locked(format!(
                        "{}: cannot commit: readers kept the database busy for the whole --lock-wait; the transaction was rolled back and nothing was written. Run again, or with a longer --lock-wait",
                        self.path.display()
                    )));
                }
                Err(sqlite_error(
                    &self.path,
                    "cannot commit; the transaction was rolled back and nothing was written",
                    e,
                ))
            }
        }
    }

    /// Ends the transaction without writing anything.
    pub fn rollback(self) -> Result<()> {
        self.conn
            .execute_batch("ROLLBACK")
            .map_err(|e| sqlite_error(&self.path, "cannot roll back", e))
    }
}

/// Runs `PRAGMA integrity_check` on a database file (read-only); returns the
/// problems it reports (empty when it passes).
pub fn integrity_check(path: &Path) -> Result<Vec<String>> {
    let err = |cause| Error::Sqlite {
        path: path.into(),
        message: "integrity check failed to run".into(),
        cause,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(err)?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}
