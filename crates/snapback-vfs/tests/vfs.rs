//! The VFS on real repositories made by the real binary: a point opened
//! in place returns the point's rows, refuses every write, and answers an
//! I/O error, never other bytes, when a pack is damaged.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use snapback_core::{Repository, Selector};
use snapback_storage::LocalStore;
use snapback_testkit::{db, Env};
use snapback_vfs::PointDb;

fn open_repo(env: &Env) -> Arc<Repository> {
    let store = Arc::new(LocalStore::open(env.repo()).expect("store"));
    Arc::new(Repository::open(store).expect("repo"))
}

/// The point `sel` of database `live`, opened in place.
fn point(repo: &Arc<Repository>, sel: &str, live: &Path) -> PointDb {
    let path = live.to_str().expect("utf8");
    let snap = repo
        .resolve_for_path(&sel.parse::<Selector>().expect("selector"), Some(path), &[])
        .expect("resolve");
    let file = snap.file(path).expect("file").clone();
    PointDb::open(repo.clone(), &snap, &file).expect("open point")
}

fn rows(c: &Connection) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut st = c.prepare("SELECT id, v FROM t ORDER BY id")?;
    let r = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    r.collect()
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    e.sqlite_error_code()
}

#[test]
fn point_opened_in_place_returns_the_points_rows_bit_for_bit() {
    let env = Env::new();
    let live = std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db");
    db::make_db(&live, 300);
    let id = env.snapshot(&live);
    let at_snapshot = db::rows(&live);
    let c = Connection::open(&live).expect("live");
    c.execute_batch("UPDATE t SET v = 'changed' WHERE id < 100; DELETE FROM t WHERE id > 250;")
        .expect("change live");
    drop(c);
    let repo = open_repo(&env);
    let p = point(&repo, &id, &live);
    let conn = p.connect().expect("connect");
    assert_eq!(rows(&conn).expect("rows"), at_snapshot);
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(ok, "ok");
}

#[test]
fn one_row_lookup_reads_a_few_pages_not_the_database() {
    let env = Env::new();
    let live = std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db");
    db::make_db(&live, 3000);
    let id = env.snapshot(&live);
    let repo = open_repo(&env);
    let p = point(&repo, &id, &live);
    let conn = p.connect().expect("connect");
    let v: String = conn
        .query_row("SELECT v FROM t WHERE id = 1234", [], |r| r.get(0))
        .expect("lookup");
    assert_eq!(v, db::row_value(1234, 0));
    let s = p.stats();
    assert!(s.pages > 200, "the database has {} pages", s.pages);
    assert!(
        s.chunks_fetched <= 8,
        "a lookup by key read {} of {} pages",
        s.chunks_fetched,
        s.pages
    );
}

#[test]
fn table_scan_fetches_its_leaves_ahead_and_no_other_tables_pages() {
    let env = Env::new();
    let live = std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db");
    {
        // t and filler interleaved, so that their pages alternate in the
        // file: a read-ahead by file position would fetch filler's pages.
        let mut c = Connection::open(&live).expect("live");
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE filler(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .expect("schema");
        let tx = c.transaction().expect("tx");
        for i in 0..3000i64 {
            tx.execute("INSERT INTO t VALUES (?1, ?2)", (i, db::row_value(i, 0)))
                .expect("t");
            tx.execute("INSERT INTO filler VALUES (?1, zeroblob(300))", [i])
                .expect("filler");
        }
        tx.commit().expect("commit");
    }
    let t_pages: i64 = Connection::open(&live)
        .expect("live")
        .query_row("SELECT count(*) FROM dbstat WHERE name = 't'", [], |r| {
            r.get(0)
        })
        .expect("dbstat");
    let t_pages = t_pages as u64;
    let id = env.snapshot(&live);
    let repo = open_repo(&env);
    let p = point(&repo, &id, &live);
    let conn = p.connect().expect("connect");
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT id, v FROM t ORDER BY id)",
            [],
            |r| r.get(0),
        )
        .expect("scan");
    assert_eq!(n, 3000);
    let s = p.stats();
    assert!(t_pages > 100, "t has {t_pages} pages");
    assert!(
        s.prefetched >= t_pages - 10,
        "a scan of t's {t_pages} pages fetched only {} ahead",
        s.prefetched
    );
    // t's pages and the schema (page 1), nothing of filler.
    assert!(
        s.pages_read <= t_pages + 1,
        "a scan of t ({t_pages} pages) read {} of the {} pages",
        s.pages_read,
        s.pages
    );
    assert_eq!(rows(&conn).expect("rows").len(), 3000);
}

#[test]
fn writes_fail_with_sqlite_readonly_also_inside_begin_immediate() {
    let env = Env::new();
    let live = std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db");
    db::make_db(&live, 50);
    let id = env.snapshot(&live);
    let repo = open_repo(&env);
    let p = point(&repo, &id, &live);
    let conn = p.connect().expect("connect");
    let e = conn
        .execute("INSERT INTO t VALUES (1000, 'x')", [])
        .expect_err("a write");
    assert_eq!(code(&e), Some(ErrorCode::ReadOnly), "{e}");
    assert!(conn.is_readonly(rusqlite::MAIN_DB).expect("is_readonly"));
    // The point is immutable: SQLite takes no locks on it, and a write in
    // a write transaction fails as any other.
    let e = conn
        .execute_batch("BEGIN IMMEDIATE; UPDATE t SET v = 'x'; COMMIT;")
        .expect_err("a write in a write transaction");
    assert_eq!(code(&e), Some(ErrorCode::ReadOnly), "{e}");
    let _ = conn.execute_batch("ROLLBACK");
    // The URI way, asking for read-write, is read-only too.
    snapback_vfs::register().expect("register");
    let uri = format!(
        "file:{}?vfs=snapback&repo={}&at={id}",
        live.display(),
        env.repo().display()
    );
    let rw = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .expect("open by URI");
    let e = rw.execute("DELETE FROM t", []).expect_err("a write");
    assert_eq!(code(&e), Some(ErrorCode::ReadOnly), "{e}");
    assert_eq!(rows(&rw).expect("rows").len(), 50);
}

#[test]
fn damaged_pack_gives_an_io_error_never_wrong_rows() {
    let env = Env::new();
    let live = std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db");
    db::make_db(&live, 2000);
    let id = env.snapshot(&live);
    let good = db::rows(&live);
    snapback_testkit::flip_byte_in_largest_pack(&env.repo());
    let repo = open_repo(&env);
    let p = point(&repo, &id, &live);
    let conn = p.connect().expect("connect");
    match rows(&conn) {
        Ok(r) => panic!(
            "a damaged pack served {} rows (equal to the snapshot's: {})",
            r.len(),
            r == good
        ),
        Err(e) => assert_eq!(code(&e), Some(ErrorCode::SystemIoFailure), "{e}"),
    }
}

#[test]
fn uri_at_time_opens_the_newest_point_at_or_before_it() {
    let env = Env::new();
    let live = std::fs::canonicalize(env.dir.path())
        .expect("dir")
        .join("app.db");
    db::make_db(&live, 20);
    env.snapshot(&live);
    let first = db::rows(&live);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = snapback_core::time::format_rfc3339(time_now());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c = Connection::open(&live).expect("live");
    c.execute_batch("UPDATE t SET v = 'second' WHERE id = 3")
        .expect("change");
    drop(c);
    env.snapshot(&live);
    snapback_vfs::register().expect("register");
    let open = |at: &str| {
        Connection::open_with_flags(
            format!(
                "file:{}?vfs=snapback&repo={}&at={at}",
                live.display(),
                env.repo().display()
            ),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .expect("open by URI")
    };
    assert_eq!(rows(&open(&between)).expect("rows"), first);
    let latest = rows(&open("latest")).expect("rows");
    assert_eq!(latest[3], (3, "second".to_string()));
    // No point at or before the time: the open fails, it does not pick another.
    let e = Connection::open_with_flags(
        format!(
            "file:{}?vfs=snapback&repo={}&at=2001-01-01T00:00:00Z",
            live.display(),
            env.repo().display()
        ),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .and_then(|c| rows(&c))
    .expect_err("no point that early");
    assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{e}");
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
