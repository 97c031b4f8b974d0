//! `snapback diff` by page hash (snapback_repair::pages): a snapshot leaf
//! whose bytes are the live leaf's is skipped. Each test diffs a real
//! snapshot against a real live database through the real binary twice,
//! with the skip and with the full scan (SNAPBACK_DIFF_FULL_SCAN=1), and
//! requires the same output, row for row, and the same exit code.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::Connection;
use snapback_repair::pages::FULL_SCAN_ENV;

use crate::lab::{Lab, Rng};
use crate::util::Out;

/// A table `t` of `rows` rows of about 100 bytes, ids 10, 20, 30, ...
fn rows_lab(rows: u64, wal: bool) -> Lab {
    Lab::new(|c| {
        if wal {
            c.execute_batch("PRAGMA journal_mode = WAL;").expect("wal");
        }
        c.execute_batch(&format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
             CREATE TABLE other(id INTEGER PRIMARY KEY, b BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
             INSERT INTO t SELECT i * 10, printf('row %d %.80c', i, 'x'), i FROM s;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200)
             INSERT INTO other SELECT i, randomblob(500) FROM s;"
        ))
        .expect("setup")
    })
}

/// The diff's output with everything but what it read (the summary's
/// `snapshot_read`, which is what differs by design).
fn without_reads(o: &Out) -> String {
    o.stdout
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(mut v) if v["type"] == "summary" => {
                v.as_object_mut().map(|m| m.remove("snapshot_read"));
                v.to_string()
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the diff of table `table` (with `extra` flags) with the skip and
/// with the full scan, in JSON and as SQL, and requires the same output
/// and exit code; returns the skip's JSON run (`-v`: its log says how the
/// table was diffed) and the full scan's.
fn same_both_ways(lab: &Lab, snap: &str, table: &str, extra: &[&str]) -> (Out, Out) {
    let live = lab.live_str();
    let run = |json: bool, full: bool| {
        let mut args: Vec<&str> = vec!["-v"];
        if json {
            args.push("--json");
        }
        args.extend(["diff", snap, live, "--table", table]);
        if !json {
            args.push("--sql");
        }
        args.extend(extra);
        let env: &[(&str, &str)] = if full { &[(FULL_SCAN_ENV, "1")] } else { &[] };
        lab.run(&args, env)
    };
    let (skip, fullscan) = (run(true, false), run(true, true));
    assert!(matches!(skip.code, 0 | 3), "the diff ran: {skip:?}");
    assert_eq!(skip.code, fullscan.code, "{skip:?}\n{fullscan:?}");
    assert_eq!(without_reads(&skip), without_reads(&fullscan), "{skip:?}");
    assert!(fullscan.stderr.contains("by the full scan"), "{fullscan:?}");
    let (sql_skip, sql_full) = (run(false, false), run(false, true));
    assert_eq!(sql_skip.code, sql_full.code);
    assert_eq!(sql_skip.stdout, sql_full.stdout);
    (skip, fullscan)
}

fn pages_read(o: &Out) -> u64 {
    let last = o.stdout.lines().last().expect("a summary");
    let v: serde_json::Value = serde_json::from_str(last).expect("json");
    v["snapshot_read"]["pages_read"]
        .as_u64()
        .expect("pages_read")
}

fn by_page_hash(o: &Out) -> bool {
    o.stderr.contains("by page hash")
}

/// Every page of the live database, through SQLite's pager.
fn pages_of(db: &std::path::Path) -> Vec<Vec<u8>> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .expect("dbpage");
    st.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|r| r.expect("page"))
        .collect()
}

#[test]
fn diff_by_page_hash_equals_the_full_scan_after_random_updates_inserts_and_deletes() {
    let lab = rows_lab(6000, false);
    let snap = lab.snapshot();
    let mut rng = Rng::new(14);
    for round in 0..3 {
        let mut sql = String::from("BEGIN;");
        for _ in 0..25 {
            let id = (rng.below(6000) + 1) * 10;
            match rng.below(3) {
                0 => sql.push_str(&format!(
                    "UPDATE t SET v = 'changed {round} {}', n = n + 1 WHERE id = {id};",
                    rng.next()
                )),
                1 => sql.push_str(&format!(
                    "INSERT OR REPLACE INTO t VALUES({}, 'new {round}', {round});",
                    id + 1 + rng.below(8)
                )),
                _ => sql.push_str(&format!("DELETE FROM t WHERE id = {id};")),
            }
        }
        sql.push_str("COMMIT;");
        lab.exec(&sql);
        let (skip, full) = same_both_ways(&lab, &snap, "t", &[]);
        assert!(by_page_hash(&skip), "round {round}: {skip:?}");
        assert!(pages_read(&skip) < pages_read(&full), "{skip:?}\n{full:?}");
        // --where and --columns select the same rows either way.
        let (skip, _) = same_both_ways(&lab, &snap, "t", &["--where", "n % 3 = 1"]);
        assert!(by_page_hash(&skip), "{skip:?}");
        same_both_ways(&lab, &snap, "t", &["--columns", "n"]);
    }
}

#[test]
fn a_table_of_more_leaves_than_one_batch_of_live_pages_is_diffed_the_same_both_ways() {
    // About 5,000 leaves: the live pages are read in batches of 2,048,
    // the next read while the one before is hashed.
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
             INSERT INTO t SELECT i, printf('%d %.900c', i, 'x'), i FROM s;",
        )
        .expect("setup")
    });
    let leaves: i64 = Connection::open(&lab.live)
        .expect("open")
        .query_row(
            "SELECT count(*) FROM dbstat WHERE name = 't' AND pagetype = 'leaf'",
            [],
            |r| r.get(0),
        )
        .expect("dbstat");
    assert!(leaves > 2 * 2048, "{leaves} leaves");
    let snap = lab.snapshot();
    let mut rng = Rng::new(7);
    let mut sql = String::from("BEGIN;");
    for _ in 0..40 {
        sql.push_str(&format!(
            "UPDATE t SET n = -n WHERE id = {};",
            rng.below(20000) + 1
        ));
    }
    sql.push_str("DELETE FROM t WHERE id = 19999; INSERT INTO t VALUES(30000, 'new', 1); COMMIT;");
    lab.exec(&sql);
    let (skip, full) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
    assert!(
        pages_read(&skip) * 10 < pages_read(&full),
        "{skip:?}\n{full:?}"
    );
}

#[test]
fn a_diff_by_page_hash_reads_of_the_snapshot_only_the_interior_and_differing_pages() {
    let lab = rows_lab(6000, false);
    let snap = lab.snapshot();
    lab.exec("UPDATE t SET v = 'one change' WHERE id = 30000;");
    let (skip, full) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
    // Page 1 (the schema), the one interior page of `t` and its one leaf
    // that changed; the full scan reads every leaf of `t`.
    assert!(pages_read(&skip) <= 3, "{skip:?}");
    assert!(pages_read(&full) > 50, "{full:?}");
    assert!(
        skip.stdout.contains("\"changed\":1"),
        "the row that changed: {skip:?}"
    );
}

#[test]
fn in_a_differing_leaf_only_the_rows_whose_cells_differ_are_read() {
    let lab = rows_lab(6000, false);
    let snap = lab.snapshot();
    // Two rows of one leaf, one of another: the leaves' other rows hold
    // the same cells on both sides.
    lab.exec(
        "UPDATE t SET n = -1 WHERE id IN (30000, 30020); UPDATE t SET v = 'x' WHERE id = 50000;",
    );
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(skip.stdout.contains("\"changed\":3"), "{skip:?}");
    let log = skip
        .stderr
        .lines()
        .find(|l| l.contains("by page hash"))
        .unwrap_or_else(|| panic!("{skip:?}"));
    assert!(
        log.contains("reading 3 run(s) of the snapshot, 3 of the live database"),
        "each changed row read alone: {log}"
    );
    let same_by_cells: u64 = log
        .split(" more rows the same by their cells")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    assert!(same_by_cells > 10, "{log}");
}

#[test]
fn a_same_size_update_of_only_the_overflow_part_of_a_long_row_is_found() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 400)
             INSERT INTO t SELECT i, CASE WHEN i % 40 = 3 THEN printf('%.20000c', 'a') ELSE printf('short %d', i) END FROM s;",
        )
        .expect("setup")
    });
    let snap = lab.snapshot();
    let before = pages_of(&lab.live);
    // The same length: SQLite overwrites the payload in place, and only
    // the tail of the row, on its overflow pages, changes.
    lab.exec("UPDATE t SET v = substr(v, 1, 19990) || 'ZZZZZZZZZZ' WHERE id = 123;");
    let after = pages_of(&lab.live);
    assert_eq!(before.len(), after.len());
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(!changed.is_empty());
    // Page 1 (the schema's page) changes by its header's change counter
    // in rollback mode.
    for &i in changed.iter().filter(|&&i| i > 0) {
        assert!(
            after[i][0] != 0x0D && after[i][0] != 0x05,
            "only overflow pages changed, not page {} (a b-tree page)",
            i + 1
        );
    }
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
    assert!(
        skip.stdout.contains("\"changed\":1") && skip.stdout.contains("\"id\":123"),
        "the long row is found changed: {skip:?}"
    );
}

#[test]
fn in_a_differing_leaf_a_long_row_whose_cell_is_the_same_but_overflow_is_not_is_found() {
    // Every third row spills to two overflow pages; a leaf holds a few of
    // them among short rows.
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 600)
             INSERT INTO t SELECT i, CASE WHEN i % 3 = 0 THEN printf('%.5000c', 'a') ELSE printf('short %d', i) END FROM s;",
        )
        .expect("setup")
    });
    let snap = lab.snapshot();
    // Row 2 changes its cell (its leaf then differs); row 3, on the same
    // leaf, changes only the tail on its overflow pages (the same size:
    // SQLite writes it in place), so its cell on the leaf is the same.
    lab.exec(
        "UPDATE t SET v = 'changed' WHERE id = 2;
         UPDATE t SET v = substr(v, 1, 4990) || 'ZZZZZZZZZZ' WHERE id = 3;",
    );
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
    assert!(skip.stdout.contains("\"changed\":2"), "{skip:?}");
    for id in [2, 3] {
        assert!(
            skip.stdout.contains(&format!("\"id\":{id}}}"))
                || skip.stdout.contains(&format!("\"id\":{id},")),
            "row {id} is found changed: {skip:?}"
        );
    }
    let log = skip
        .stderr
        .lines()
        .find(|l| l.contains("by page hash"))
        .unwrap_or_else(|| panic!("{skip:?}"));
    let same_by_cells: u64 = log
        .split(" more rows the same by their cells")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        same_by_cells > 0,
        "the leaf's other rows (long ones among them) are the same by their cells: {log}"
    );
}

#[test]
fn rows_moved_between_pages_by_splits_and_merges_are_diffed_exactly() {
    let lab = rows_lab(3000, false);
    let snap = lab.snapshot();
    // Long rows between existing ones split leaves; deleting a range
    // empties and merges others.
    lab.exec(
        "WITH RECURSIVE s(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM s WHERE i < 160)
         INSERT INTO t SELECT i * 10 + 5, printf('%.900c', 'm'), 0 FROM s;
         DELETE FROM t WHERE id BETWEEN 20000 AND 21500;
         UPDATE t SET n = -1 WHERE id IN (10, 29990);",
    );
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
    assert!(skip.stdout.contains("\"only_in_live\":61"), "{skip:?}");
    assert!(skip.stdout.contains("\"only_in_snapshot\":151"), "{skip:?}");
}

#[test]
fn a_vacuum_between_the_two_sides_gives_the_same_diff() {
    let lab = rows_lab(3000, false);
    let snap = lab.snapshot();
    lab.exec(
        "DELETE FROM other; DELETE FROM t WHERE id % 7 = 0; UPDATE t SET v = 'after vacuum' WHERE id = 500; VACUUM;",
    );
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(skip.stdout.contains("\"changed\":1"), "{skip:?}");
}

#[test]
fn a_without_rowid_table_gives_the_same_diff_by_the_full_scan_and_says_why() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE w(k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
             INSERT INTO w SELECT printf('key%06d', i), i FROM s;",
        )
        .expect("setup")
    });
    let snap = lab.snapshot();
    lab.exec("UPDATE w SET v = 0 WHERE k = 'key000077'; DELETE FROM w WHERE k = 'key002000'; INSERT INTO w VALUES('key1', 1);");
    let (skip, _) = same_both_ways(&lab, &snap, "w", &[]);
    assert!(skip.stderr.contains("WITHOUT ROWID"), "{skip:?}");
    assert!(skip.stdout.contains("\"changed\":1"), "{skip:?}");
}

#[test]
fn uncheckpointed_wal_frames_of_the_live_side_are_what_the_diff_compares() {
    let lab = rows_lab(4000, true);
    let snap = lab.snapshot();
    // A connection that never checkpoints stays open, so the changes stay
    // in the -wal file only.
    let w = Connection::open(&lab.live).expect("open");
    w.execute_batch(
        "PRAGMA wal_autocheckpoint = 0;
         UPDATE t SET v = 'in the wal' WHERE id IN (50, 25000);
         DELETE FROM t WHERE id = 39990;",
    )
    .expect("write");
    let wal = std::fs::metadata(format!("{}-wal", lab.live.display())).expect("wal");
    assert!(wal.len() > 0);
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
    assert!(
        skip.stdout.contains("\"changed\":2") && skip.stdout.contains("\"only_in_snapshot\":1"),
        "{skip:?}"
    );
    drop(w);
}

/// Stops and joins the writer thread when the test ends or fails.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn a_live_side_written_during_the_diff_is_read_in_one_transaction() {
    let lab = rows_lab(4000, true);
    let snap = lab.snapshot();
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let live = lab.live.clone();
    let (s2, c2) = (stop.clone(), commits.clone());
    // Each transaction sets rows 10 and 39990 (far apart: other leaves) to
    // the same new value: a diff that read two states would show two.
    let handle = std::thread::spawn(move || {
        let c = Connection::open(&live).expect("open");
        c.busy_timeout(std::time::Duration::from_secs(10))
            .expect("busy");
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) && n < 100_000 {
            n += 1;
            let r = c.execute_batch(&format!(
                "BEGIN IMMEDIATE; UPDATE t SET v = 'w{n}' WHERE id IN (10, 39990); INSERT INTO t VALUES({}, 'w{n}', {n}); COMMIT;",
                100_000 + n
            ));
            if r.is_ok() {
                c2.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = c.execute_batch("ROLLBACK");
            }
        }
    });
    let writer = Writer {
        stop,
        handle: Some(handle),
    };
    while commits.load(Ordering::Relaxed) < 5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for _ in 0..3 {
        let o = lab.run(
            &[
                "-v",
                "--json",
                "diff",
                &snap,
                lab.live_str(),
                "--table",
                "t",
            ],
            &[],
        );
        assert_eq!(o.code, 3, "{o:?}");
        assert!(by_page_hash(&o), "{o:?}");
        let mut seen = Vec::new();
        for l in o.stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            if v["kind"] == "changed" {
                seen.push(v["changes"][0]["live"].clone());
            }
        }
        assert_eq!(seen.len(), 2, "{o:?}");
        assert_eq!(seen[0], seen[1], "one state of the live database: {o:?}");
    }
    drop(writer);
    let (skip, _) = same_both_ways(&lab, &snap, "t", &[]);
    assert!(by_page_hash(&skip), "{skip:?}");
}
