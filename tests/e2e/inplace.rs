//! `restore SNAP LIVE_DB --in-place` with the real binary on real
//! databases: under a running reader and writer, killed inside its write
//! transaction, undone by the command it prints, and refusing bad input
//! with nothing written. Every loop is bounded in count and time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use snapback_testkit::{integrity, stderr, stdout, Env, Rng};

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A database whose table `data` is kept in step with `sums` by every
/// transaction: `sums.total` is the sum of `data.v`, `sums.n` the count.
fn make_checked_db(db: &Path, mode: &str, rows: i64) {
    let c = Connection::open(db).expect("open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode};
         CREATE TABLE data(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad TEXT NOT NULL);
         CREATE TABLE sums(k INTEGER PRIMARY KEY, total INTEGER NOT NULL, n INTEGER NOT NULL);
         BEGIN;
         WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<{rows})
           INSERT INTO data SELECT i, i, hex(randomblob(60)) FROM s;
         INSERT INTO sums SELECT 1, sum(v), count(*) FROM data;
         COMMIT;"
    ))
    .expect("schema");
}

/// `make_checked_db(db, mode, 400)`, then a snapshot of it in `env`.
fn snapshotted_db(env: &Env, db: &Path, mode: &str) {
    make_checked_db(db, mode, 400);
    env.snapshot(db);
}

/// `n` writer transactions on `db` (see `write_step`), on one connection.
fn write_steps(db: &Path, n: usize, rng: &mut Rng) {
    let c = Connection::open(db).expect("open");
    for _ in 0..n {
        write_step(&c, rng).expect("write");
    }
}

/// `restore latest DB --in-place --apply --yes`.
fn apply_args(db: &str) -> [&str; 6] {
    ["restore", "latest", db, "--in-place", "--apply", "--yes"]
}

/// One writer transaction: changes some rows (and adds one) and keeps the
/// sums in step.
fn write_step(c: &Connection, rng: &mut Rng) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        for _ in 0..5 {
            let id = rng.below(400) as i64 + 1;
            let d = rng.below(1000) as i64 - 500;
            c.execute("UPDATE data SET v = v + ?2 WHERE id = ?1", (id, d))?;
        }
        c.execute(
            "INSERT INTO data(v, pad) VALUES (?1, hex(randomblob(60)))",
            [rng.below(1000) as i64],
        )?;
        c.execute_batch(
            "UPDATE sums SET total = (SELECT sum(v) FROM data), n = (SELECT count(*) FROM data) WHERE k = 1",
        )
    })();
    match r {
        Ok(()) => c.execute_batch("COMMIT"),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Reads the data and the sums in one read transaction: None when they
/// are in step, else what differs.
fn read_check(c: &Connection) -> rusqlite::Result<Option<String>> {
    c.execute_batch("BEGIN")?;
    let r = (|| {
        let (sum, n): (i64, i64) = c.query_row("SELECT sum(v), count(*) FROM data", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        let (total, m): (i64, i64) =
            c.query_row("SELECT total, n FROM sums WHERE k = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(((sum, n) != (total, m)).then(|| format!("data {sum}/{n} rows, sums {total}/{m}")))
    })();
    let _ = c.execute_batch("COMMIT");
    r
}

/// Every page of a database as SQLite has it, with page 1's header bytes
/// that SQLite's pager writes at each commit (change counter, version
/// valid-for, SQLite version) zeroed.
fn pages(db: &Path) -> Vec<Vec<u8>> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .expect("sqlite_dbpage");
    let mut v: Vec<Vec<u8>> = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("pages");
    for i in (24..28).chain(92..100) {
        v[0][i] = 0;
    }
    v
}

fn rows(db: &Path) -> Vec<(i64, i64, String)> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT id, v, pad FROM data ORDER BY id")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn in_place_restore_under_a_running_reader_and_writer_keeps_every_read_consistent() {
    for mode in ["wal", "delete"] {
        let env = Env::new();
        let db = env.path("app.db");
        snapshotted_db(&env, &db, mode);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, stop, writes) = (db.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || {
                let c = Connection::open(&db).expect("writer");
                c.busy_timeout(Duration::from_secs(20)).expect("busy");
                let mut rng = Rng::new(7);
                while !stop.load(Ordering::Relaxed) {
                    write_step(&c, &mut rng).expect("writer transaction");
                    writes.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let reader = {
            let (db, stop, reads) = (db.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || -> Vec<String> {
                let c = Connection::open(&db).expect("reader");
                c.busy_timeout(Duration::from_secs(20)).expect("busy");
                let mut bad = vec![];
                while !stop.load(Ordering::Relaxed) {
                    match read_check(&c) {
                        Ok(None) => {}
                        Ok(Some(b)) => bad.push(b),
                        Err(e) => bad.push(format!("read failed: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                bad
            })
        };
        // Let the writer move the database away from the snapshot.
        let t0 = Instant::now();
        while writes.load(Ordering::Relaxed) < 30 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (w0, r0) = (
            writes.load(Ordering::Relaxed),
            reads.load(Ordering::Relaxed),
        );
        let out = env.run_bounded(
            &[
                "--json",
                "restore",
                "latest",
                utf8(&db),
                "--in-place",
                "--apply",
                "--yes",
                "--lock-wait",
                "30s",
            ],
            Duration::from_secs(120),
        );
        assert_eq!(out.code, 0, "{mode}: {out:?}");
        let doc = json(&out.stdout);
        assert_eq!(doc["applied"], true, "{mode}: {doc}");
        assert!(doc["pages_changed"].as_u64().expect("n") > 0, "{doc}");
        // The reader and the writer go on after the restore.
        let t1 = Instant::now();
        while (writes.load(Ordering::Relaxed) < w0 + 30 || reads.load(Ordering::Relaxed) < r0 + 30)
            && t1.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer thread");
        let bad = reader.join().expect("reader thread");
        assert!(
            bad.is_empty(),
            "{mode}: every read transaction sees data and sums in step: {bad:?}"
        );
        assert!(
            writes.load(Ordering::Relaxed) > w0 + 10,
            "{mode}: the writer went on"
        );
        assert!(
            reads.load(Ordering::Relaxed) > r0 + 10,
            "{mode}: the reader went on"
        );
        assert_eq!(integrity(&db), "ok", "{mode}");
        let c = Connection::open(&db).expect("open");
        assert_eq!(read_check(&c).expect("check"), None, "{mode}");
    }
}

#[test]
fn sigkill_inside_the_write_transaction_leaves_the_old_or_the_restored_database() {
    let seed = std::env::var("SNAPBACK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    eprintln!("in-place kill test: SNAPBACK_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    for mode in ["wal", "delete"] {
        let env = Env::new();
        let db = env.path("app.db");
        snapshotted_db(&env, &db, mode);
        let restored = pages(&db);
        write_steps(&db, 40, &mut rng);
        let old = pages(&db);
        assert_ne!(old, restored);
        for round in 0..3u64 {
            let mut cmd = env.cmd(&apply_args(utf8(&db)));
            cmd.env("SNAPBACK_TEST_DELAY_BEFORE_COMMIT_MS", "3000")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let side = |suffix: &str| {
                std::fs::metadata(format!("{}{suffix}", db.display())).map_or(0, |m| m.len())
            };
            let wal_before = side("-wal");
            let mut child = snapback_testkit::KillOnDrop::new(cmd.spawn().expect("spawn"));
            // Inside the write transaction: the restore holds the write
            // lock from BEGIN IMMEDIATE to COMMIT, which the hook delays.
            let probe = Connection::open(&db).expect("probe");
            probe.busy_timeout(Duration::ZERO).expect("no busy wait");
            let t0 = Instant::now();
            loop {
                let locked = probe
                    .execute_batch("BEGIN IMMEDIATE")
                    .and_then(|()| probe.execute_batch("ROLLBACK"))
                    .is_err();
                if locked || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{mode}: the restore took the lock"
            );
            // After the pages are written (milliseconds for this database),
            // before the hook's 3 s end.
            std::thread::sleep(Duration::from_millis(300 + rng.below(1700)));
            child.kill().expect("SIGKILL");
            let status = child.wait().expect("wait");
            assert!(!status.success(), "{mode} round {round}: killed");
            drop(probe);
            // Killed inside the transaction, with pages written: in
            // rollback mode the old pages are in a hot journal; in WAL mode
            // the pager appends frames only as it commits, so the WAL holds
            // no commit past what it had.
            if mode == "wal" {
                assert!(side("-wal") >= wal_before, "{mode} round {round}");
            } else {
                assert!(side("-journal") > 0, "{mode} round {round}: a hot journal");
            }
            // The first connection rolls a hot journal back (rollback mode);
            // a WAL without a commit frame is ignored.
            let now = pages(&db);
            assert_eq!(integrity(&db), "ok", "{mode} round {round}");
            assert!(
                now == old || now == restored,
                "{mode} round {round}: the database is the old one or the restored one"
            );
            assert!(
                now == old,
                "{mode} round {round}: killed before COMMIT: the old one"
            );
        }
        // Not killed, it restores.
        let out = env.run_bounded(&apply_args(utf8(&db)), Duration::from_secs(60));
        assert_eq!(out.code, 0, "{mode}: {out:?}");
        assert_eq!(pages(&db), restored, "{mode}");
        assert_eq!(integrity(&db), "ok", "{mode}");
    }
}

#[test]
fn the_printed_undo_command_brings_back_the_pre_restore_state_exactly() {
    for mode in ["wal", "delete"] {
        let env = Env::new();
        let db = env.path("app.db");
        snapshotted_db(&env, &db, mode);
        write_steps(&db, 60, &mut Rng::new(3));
        let (before_rows, before_pages) = (rows(&db), pages(&db));
        let mut args = vec!["--json"];
        args.extend(apply_args(utf8(&db)));
        let out = env.ok(&args);
        let doc = json(&out);
        let undo = doc["undo"].as_str().expect("undo command").to_string();
        let pre = doc["pre_restore_snapshot"].as_str().expect("pre id");
        assert!(
            undo.contains(pre) && undo.contains("--in-place --apply"),
            "{undo}"
        );
        assert_ne!(rows(&db), before_rows, "{mode}: restored");
        // The undo command, as printed (its words need no shell here).
        let words: Vec<&str> = undo.split_whitespace().collect();
        assert_eq!(words[0], "snapback");
        let o = Command::new(snapback_testkit::bin())
            .args(&words[1..])
            .arg("--yes")
            .output()
            .expect("run undo");
        assert!(o.status.success(), "{mode}: {undo}: {}", stderr(&o));
        assert_eq!(
            rows(&db),
            before_rows,
            "{mode}: the logical content is back"
        );
        assert_eq!(pages(&db), before_pages, "{mode}: every page is back");
        assert_eq!(integrity(&db), "ok");
        // The undo took its own undo point; neither is removed by retention.
        let list = env.snapshots_json();
        let pre_restore: Vec<_> = list
            .iter()
            .filter(|s| s["tags"].to_string().contains("pre-restore"))
            .collect();
        assert_eq!(pre_restore.len(), 2, "{list:?}");
        let f = env.ok(&["--json", "forget", "--keep-last", "1", "--dry-run"]);
        assert!(f.contains("pre-restore (not released)"), "{f}");
    }
}

/// The live database's file, byte for byte, and its pages.
fn unchanged(db: &Path, before: &(Vec<u8>, Vec<Vec<u8>>), what: &str) {
    assert_eq!(
        std::fs::read(db).expect("read"),
        before.0,
        "{what}: the file is untouched"
    );
    assert_eq!(pages(db), before.1, "{what}: nothing was written");
}

#[test]
fn bad_input_to_an_in_place_restore_gets_a_clear_error_and_changes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let db = src.join("app.db");
    snapshotted_db(&env, &db, "wal");
    write_steps(&db, 20, &mut Rng::new(5));
    Connection::open(&db)
        .expect("open")
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let before = (std::fs::read(&db).expect("read"), pages(&db));
    let apply = |live: &str, extra: &[&str]| {
        let mut a = apply_args(live).to_vec();
        a.extend_from_slice(extra);
        env.run(&a)
    };

    // A directory.
    let o = apply(utf8(&src), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));

    // A different database: not taken for the snapshot's without --path.
    let other = src.join("other.db");
    make_checked_db(&other, "wal", 50);
    let other_before = (std::fs::read(&other).expect("read"), pages(&other));
    let o = apply(utf8(&other), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--path"), "{}", stderr(&o));
    unchanged(&other, &other_before, "another database");

    // A database that is not SQLite.
    let text = src.join("notes.db");
    std::fs::write(&text, "not a database\n").expect("write");
    let o = apply(utf8(&text), &["--path", utf8(&db)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a SQLite database"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&text).expect("read"), b"not a database\n");

    // A database whose write lock another connection holds: exit 11 after
    // --lock-wait.
    let holder = Connection::open(&db).expect("holder");
    holder.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let t0 = Instant::now();
    let o = apply(utf8(&db), &["--lock-wait", "1s"]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot lock"), "{}", stderr(&o));
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "bounded by --lock-wait"
    );
    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);
    unchanged(&db, &before, "locked");

    // A live database on a read-only file system.
    crate::read_only::require_read_only_mounts(&env);
    let cmd = env.cmd(&apply_args(utf8(&db)));
    let o = crate::read_only::in_read_only_namespace(&src, r#"exec "$@""#, &cmd)
        .output()
        .expect("unshare");
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("cannot be written") && stderr(&o).contains("nothing was written"),
        "{}",
        stderr(&o)
    );
    unchanged(&db, &before, "read-only");

    // The dry run of each writes nothing either, and says what would change.
    let o = env.run(&["--json", "restore", "latest", utf8(&db), "--in-place"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&stdout(&o));
    assert_eq!(doc["dry_run"], true);
    assert!(doc["pages_changed"].as_u64().expect("n") > 0);
    assert!(doc["undo"].is_null());
    unchanged(&db, &before, "dry run");

    // Without a terminal, --apply needs --yes.
    let o = env.run(&["restore", "latest", utf8(&db), "--in-place", "--apply"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    unchanged(&db, &before, "not confirmed");
    let o = env.run(&["restore", "latest", utf8(&db), "--apply"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "--apply without --in-place is a usage error"
    );
}
