//! A directory snapshot with one file that cannot be snapshotted (garbage
//! behind the SQLite header, a hot journal left by a killed writer, a
//! database held under BEGIN EXCLUSIVE by another process): every other
//! file is committed, the bad one is named with why in plain words, and the
//! exit code is 6 ("partly committed"). When no file can be snapshotted,
//! nothing is committed and the exit code is 1.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use snapback_testkit::{stderr, stdout, Env};

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A rollback-journal database with a table of `rows` rows of ~1000 bytes.
/// Closed, it has no side file, so its bytes are the snapshot's image.
fn rollback_db(path: &Path, rows: i64) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, x BLOB);")
        .expect("schema");
    let tx = c.unchecked_transaction().expect("tx");
    for i in 0..rows {
        tx.execute("INSERT INTO t VALUES (?1, randomblob(1000))", [i])
            .expect("insert");
    }
    tx.commit().expect("commit");
}

/// The good files of every test: two databases and a plain file, in
/// `dir`. Returns their paths.
fn good_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let a = dir.join("a.db");
    rollback_db(&a, 50);
    let b = dir.join("sub/b.db");
    std::fs::create_dir_all(b.parent().expect("parent")).expect("mkdir");
    rollback_db(&b, 20);
    let n = dir.join("notes.txt");
    std::fs::write(&n, "plain text\n").expect("write");
    vec![a, b, n]
}

/// Restores the latest snapshot and asserts that each good file comes back
/// byte for byte, and that the bad one is not in it.
fn good_files_restore_exactly(env: &Env, good: &[PathBuf], bad: &Path, tag: &str) {
    let dest = env.path(&format!("restored-{tag}/"));
    env.ok(&["restore", "latest", utf8(&dest)]);
    for f in good {
        let back = dest.join(f.strip_prefix("/").expect("absolute"));
        assert_eq!(
            std::fs::read(&back).unwrap_or_else(|e| panic!("{}: {e}", back.display())),
            std::fs::read(f).expect("read"),
            "{} restores byte for byte",
            f.display()
        );
    }
    assert!(
        !dest.join(bad.strip_prefix("/").expect("absolute")).exists(),
        "the bad file is not in the snapshot"
    );
}

/// Runs `--json snapshot DIR` and asserts exit 6, the bad file named on
/// stderr with `words`, and in `failed` with `problem`; returns stderr.
fn partly_committed(
    env: &Env,
    dir: &Path,
    bad: &Path,
    problem: &str,
    words: &[&str],
    extra: &[&str],
) -> String {
    let args = [&["--json", "snapshot", utf8(dir)][..], extra].concat();
    let out: Output = env.run(&args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(6),
        "partly committed: {}{err}",
        stdout(&out)
    );
    for w in words {
        assert!(err.contains(w), "stderr says {w:?}: {err}");
    }
    assert!(err.contains(utf8(bad)), "stderr names the file: {err}");
    let j: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let failed = j["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{j}");
    assert_eq!(failed[0]["path"], utf8(bad), "{j}");
    assert_eq!(failed[0]["problem"], problem, "{j}");
    assert!(
        failed[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{j}"
    );
    assert_eq!(j["files"], 3, "the good files are committed: {j}");
    let snaps = env.snapshots_json();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["id"], j["id"]);
    err
}

#[test]
fn a_garbage_file_with_the_sqlite_header_is_named_and_the_rest_is_committed() {
    let env = Env::new();
    let dir = env.path("src");
    let good = good_files(&dir);
    let bad = dir.join("junk.db");
    let mut b = b"SQLite format 3\0".to_vec();
    b.extend(snapback_testkit::random_bytes(8192, 7));
    std::fs::write(&bad, &b).expect("write");
    partly_committed(
        &env,
        &dir,
        &bad,
        "not_a_database",
        &["not a valid SQLite database", "committed without 1 file"],
        &[],
    );
    good_files_restore_exactly(&env, &good, &bad, "garbage");
    assert_eq!(
        std::fs::read(&bad).expect("read"),
        b,
        "the bad file is untouched"
    );
}

#[test]
fn a_hot_journal_left_by_a_killed_writer_is_named_with_how_to_roll_it_back() {
    let env = Env::new();
    let dir = env.path("src");
    let good = good_files(&dir);
    // A writer in the middle of a transaction that spilled to the file:
    // its database and journal, copied now, are what a writer killed at this
    // moment leaves behind (no process holds a lock on the copies).
    let w = env.path("writer.db");
    rollback_db(&w, 300);
    let bad = dir.join("hot.db");
    {
        let c = rusqlite::Connection::open(&w).expect("open");
        c.execute_batch("PRAGMA cache_size=2; BEGIN; UPDATE t SET x = randomblob(1000);")
            .expect("a transaction that spills");
        std::fs::copy(&w, &bad).expect("copy db");
        let journal = PathBuf::from(format!("{}-journal", w.display()));
        std::fs::copy(&journal, format!("{}-journal", bad.display())).expect("copy journal");
        c.execute_batch("ROLLBACK").expect("rollback");
    }
    let before = std::fs::read(&bad).expect("read");
    let err = partly_committed(
        &env,
        &dir,
        &bad,
        "hot_journal",
        &[
            "hot journal",
            "killed mid-transaction",
            "PRAGMA quick_check",
        ],
        &[],
    );
    assert!(
        !err.contains("readonly"),
        "no SQLite jargon that reads like corruption: {err}"
    );
    good_files_restore_exactly(&env, &good, &bad, "hot");
    assert_eq!(
        std::fs::read(&bad).expect("read"),
        before,
        "snapback never rolls it back itself"
    );

    // What the message says to do works: the next snapshot takes it.
    let c = rusqlite::Connection::open(&bad).expect("open");
    let ok: String = c
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .expect("quick_check");
    assert_eq!(ok, "ok");
    drop(c);
    env.ok(&["snapshot", utf8(&dir)]);
}

#[test]
fn a_database_locked_by_begin_exclusive_is_named_after_a_bounded_logged_wait() {
    let env = Env::new();
    let dir = env.path("src");
    let good = good_files(&dir);
    let bad = dir.join("busy.db");
    rollback_db(&bad, 30);
    // This test process holds the lock; snapback is another process.
    let holder = rusqlite::Connection::open(&bad).expect("open");
    holder
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("begin exclusive");
    let started = Instant::now();
    let err = partly_committed(
        &env,
        &dir,
        &bad,
        "locked",
        &[
            "is locked by another process",
            "waiting up to 2 s",
            "the next snapshot tries again",
        ],
        &["--busy-timeout", "2"],
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "it waits the busy timeout, not more: {took:?} {err}"
    );
    assert_eq!(
        err.matches("waiting up to").count(),
        1,
        "the wait is logged once: {err}"
    );
    holder.execute_batch("ROLLBACK").expect("release");
    drop(holder);
    good_files_restore_exactly(&env, &good, &bad, "locked");
    // Released, the next snapshot takes it.
    env.ok(&["snapshot", utf8(&dir)]);
    let dest = env.path("after/");
    env.ok(&["restore", "latest", "--path", utf8(&bad), utf8(&dest)]);
}

#[test]
fn a_snapshot_where_no_file_can_be_read_commits_nothing_and_exits_1() {
    let env = Env::new();
    let dir = env.path("src");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bad = dir.join("junk.db");
    let mut b = b"SQLite format 3\0".to_vec();
    b.extend(snapback_testkit::random_bytes(4096, 9));
    std::fs::write(&bad, &b).expect("write");
    let out = env.run(&["--json", "snapshot", utf8(&dir)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nothing was committed")
            && err.contains(utf8(&bad))
            && err.contains("not a valid SQLite database"),
        "{err}"
    );
    assert!(stdout(&out).trim().is_empty(), "no snapshot is reported");
    assert!(env.snapshots_json().is_empty(), "nothing was committed");
}
