//! SQLite databases with known rows.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// A WAL-mode database with `t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)`
/// and rows `0..rows` of about 300 bytes ([`row_value`] of generation 0).
/// On an existing database, rows with those ids are replaced.
pub fn make_db(path: &Path, rows: i64) {
    let c = Connection::open(path).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .expect("schema");
    let tx = c.unchecked_transaction().expect("tx");
    for i in 0..rows {
        tx.execute(
            "INSERT OR REPLACE INTO t(id, v) VALUES (?1, ?2)",
            (i, row_value(i, 0)),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// The value [`make_db`] writes for row `i` in generation `gen`.
pub fn row_value(i: i64, gen: u64) -> String {
    format!(
        "row {i} gen {gen} {}",
        "abcdefghij".repeat(28 + (i % 7) as usize)
    )
}

/// Every row of `t`, in key order.
pub fn rows(path: &Path) -> Vec<(i64, String)> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    let mut st = c
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// The number of rows of `table`.
pub fn count(path: &Path, table: &str) -> i64 {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    c.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
        r.get(0)
    })
    .expect("count")
}

/// `PRAGMA integrity_check` of a database, read-only ("ok" when sound).
pub fn integrity(path: &Path) -> String {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .expect("integrity_check")
}

/// A writer's connection to a new WAL-mode database at `path` with
/// `t(id INTEGER PRIMARY KEY, v BLOB)` and automatic checkpoints off, so
/// that every frame stays in the WAL until the test checkpoints (what the
/// WAL-delta and timeline tests read). Keep it open: closing the last
/// connection checkpoints and deletes the WAL.
pub fn wal_writer(path: &Path) -> Connection {
    let w = Connection::open(path).expect("open");
    w.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .expect("schema");
    w
}

/// Inserts `n` rows of `size` random bytes into `t`, one transaction each.
pub fn insert_blobs(w: &Connection, n: u32, size: usize) {
    for _ in 0..n {
        w.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [size as i64])
            .expect("insert");
    }
}

/// Gives row `id` of `t` a new value of `size` random bytes.
pub fn update_blob(w: &Connection, id: i64, size: usize) {
    w.execute(
        "UPDATE t SET v = randomblob(?1) WHERE id = ?2",
        (size as i64, id),
    )
    .expect("update");
}

/// What SQLite has now at `path`, byte for byte: the WAL checkpointed into
/// the file through the writer `w`, and the file read.
pub fn checkpointed_image(w: &Connection, path: &Path) -> Vec<u8> {
    w.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    std::fs::read(path).expect("read db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_db_writes_the_rows_it_promises() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("a.db");
        make_db(&p, 50);
        assert_eq!(count(&p, "t"), 50);
        assert_eq!(integrity(&p), "ok");
        let r = rows(&p);
        assert_eq!(r[7], (7, row_value(7, 0)));
    }

    #[test]
    fn wal_writer_keeps_frames_in_the_wal_until_checkpointed() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("w.db");
        let w = wal_writer(&p);
        insert_blobs(&w, 10, 700);
        update_blob(&w, 3, 700);
        let wal = d.path().join("w.db-wal");
        assert!(
            std::fs::metadata(&wal).expect("wal").len() > 0,
            "the frames are in the WAL"
        );
        let image = checkpointed_image(&w, &p);
        assert_eq!(std::fs::metadata(&wal).expect("wal").len(), 0, "truncated");
        assert_eq!(image, std::fs::read(&p).expect("read"));
        assert_eq!(count(&p, "t"), 10);
        assert_eq!(integrity(&p), "ok");
    }
}
