//! Snapshots taken while a writer moves money between accounts: every one
//! restores to a database whose total is unchanged, that passes its
//! integrity check, and that holds every transaction committed before the
//! snapshot began.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use snapback_testkit::{integrity, Env};

const ACCOUNTS: i64 = 200;
const START: i64 = 1_000;

fn create_bank(path: &Path, wal: bool) {
    let c = Connection::open(path).expect("open");
    if wal {
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .expect("wal");
    } else {
        c.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))
            .expect("delete");
    }
    c.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE transfers(id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, memo BLOB);
         CREATE INDEX transfers_src ON transfers(src);",
    )
    .expect("schema");
    let tx = c.unchecked_transaction().expect("tx");
    for i in 0..ACCOUNTS {
        tx.execute(
            "INSERT INTO accounts(id, balance) VALUES (?1, ?2)",
            (i, START),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// Moves money in a loop until `stop`; counts committed transfers.
fn writer(
    path: &Path,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut c = Connection::open(&path).expect("open");
        c.busy_timeout(Duration::from_secs(30)).expect("busy");
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let src = (x % ACCOUNTS as u64) as i64;
            let dst = ((x >> 20) % ACCOUNTS as u64) as i64;
            let amount = ((x >> 40) % 50) as i64 + 1;
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .expect("begin");
            tx.execute(
                "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
                (amount, src),
            )
            .expect("debit");
            tx.execute(
                "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
                (amount, dst),
            )
            .expect("credit");
            // A memo makes the database grow, so that pages are added while
            // snapshots run.
            let memo = vec![(n % 251) as u8; 300 + (n % 700) as usize];
            tx.execute(
                "INSERT INTO transfers(src, dst, amount, memo) VALUES (?1, ?2, ?3, ?4)",
                (src, dst, amount, memo),
            )
            .expect("log");
            tx.commit().expect("commit");
            n += 1;
            committed.store(n, Ordering::SeqCst);
        }
    })
}

fn check_restored(env: &Env, id: &str, min_transfers: u64, i: usize) {
    let dest = env.path(&format!("restored-{i}.db"));
    env.ok(&["restore", id, dest.to_str().expect("utf8")]);
    assert_eq!(
        integrity(&dest),
        "ok",
        "snapshot {id} restores to a database that passes integrity_check"
    );
    let c = Connection::open(&dest).expect("open restored");
    let (total, n): (i64, i64) = c
        .query_row("SELECT sum(balance), count(*) FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("sum");
    assert_eq!(
        (total, n),
        (ACCOUNTS * START, ACCOUNTS),
        "snapshot {id}: the total balance is unchanged"
    );
    let transfers: i64 = c
        .query_row("SELECT count(*) FROM transfers", [], |r| r.get(0))
        .expect("count");
    assert!(
        transfers as u64 >= min_transfers,
        "snapshot {id} holds {transfers} transfers, but {min_transfers} were committed before it began"
    );
}

fn run(wal: bool) {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db, wal);
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let w = writer(&db, stop.clone(), committed.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut taken = vec![];
    while committed.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..6 {
        let before = committed.load(Ordering::SeqCst);
        let id = env.snapshot(&db);
        taken.push((id, before));
        std::thread::sleep(Duration::from_millis(100));
    }
    if wal {
        // While the writer runs, its commits sit in the -wal file: snapback
        // neither checkpointed nor removed it, and the snapshots above still
        // hold every transaction committed before they began.
        let wal_len = std::fs::metadata(env.path("bank.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(wal_len > 0, "the -wal file still holds frames");
    }
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    let total = committed.load(Ordering::SeqCst);
    assert!(
        total > taken[0].1,
        "the writer kept committing while snapshots were taken ({total} transfers)"
    );
    for (i, (id, before)) in taken.iter().enumerate() {
        check_restored(&env, id, *before, i);
    }
    // The restored database keeps the source's journal mode.
    let c = Connection::open(env.path("restored-0.db")).expect("open");
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, if wal { "wal" } else { "delete" });
    let out = env.run(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "check --read-data passes: {}",
        snapback_testkit::stderr(&out)
    );
}

#[test]
fn snapshots_under_concurrent_writes_are_consistent_wal() {
    run(true);
}

#[test]
fn snapshots_under_concurrent_writes_are_consistent_rollback() {
    run(false);
}

#[test]
fn unchanged_database_adds_no_pack_data() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db, true);
    env.snapshot(&db);
    let out = env.ok(&["--json", "snapshot", db.to_str().expect("utf8")]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["bytes_added"], 0,
        "an unchanged database adds nothing: {v}"
    );
    assert_eq!(v["new_chunks"], 0);
    // One changed row re-stores about one page.
    let c = Connection::open(&db).expect("open");
    c.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 7", [])
        .expect("update");
    drop(c);
    let out = env.ok(&["--json", "snapshot", db.to_str().expect("utf8")]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let new_chunks = v["new_chunks"].as_u64().expect("n");
    assert!(
        (1..=3).contains(&new_chunks),
        "one changed row stores 1-3 new pages, got {new_chunks}: {v}"
    );
    assert!(
        v["bytes_added"].as_u64().expect("n") < 16 * 1024,
        "a one-row change adds under 16 KiB: {v}"
    );
}

#[test]
fn unchanged_database_is_recognised_without_reading_it() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db, true);
    let snap = |env: &Env| -> serde_json::Value {
        serde_json::from_str(&env.ok(&["--json", "snapshot", db.to_str().expect("utf8")]))
            .expect("json")
    };
    // Written just now: the timestamps are too recent to trust, so the next
    // snapshot reads the database again even though nothing changed.
    snap(&env);
    let v = snap(&env);
    assert!(
        v["bytes_read"].as_u64().expect("n") > 0,
        "a racy fingerprint is not trusted: {v}"
    );
    // Once the files have settled, an unchanged database is not read at all.
    std::thread::sleep(Duration::from_millis(2200));
    let first = snap(&env);
    assert!(first["bytes_read"].as_u64().expect("n") > 0);
    let v = snap(&env);
    assert_eq!(
        v["bytes_read"], 0,
        "unchanged and settled: reused unread: {v}"
    );
    assert_eq!(v["bytes_added"], 0);
    // Any commit, even one that leaves the size alone, is seen.
    let c = Connection::open(&db).expect("open");
    c.execute("UPDATE accounts SET balance = balance + 5 WHERE id = 3", [])
        .expect("update");
    c.execute("UPDATE accounts SET balance = balance - 5 WHERE id = 4", [])
        .expect("update");
    let v = snap(&env);
    assert!(
        v["bytes_read"].as_u64().expect("n") > 0,
        "a commit changes the fingerprint: {v}"
    );
    drop(c);
    let id = v["id"].as_str().expect("id").to_string();
    let dest = env.path("after.db");
    env.ok(&["restore", &id, dest.to_str().expect("utf8")]);
    let r = Connection::open(&dest).expect("open");
    let b: i64 = r
        .query_row("SELECT balance FROM accounts WHERE id = 3", [], |x| {
            x.get(0)
        })
        .expect("row");
    assert_eq!(b, START + 5, "the snapshot after the commit holds it");
    // The reused snapshot records the same image as its parent.
    let all = env.snapshots_json();
    let sha = |id: &serde_json::Value| {
        let f = &all.iter().find(|s| s["id"] == *id).expect("listed")["files"][0];
        (f["sha256"].clone(), f["db_checksum"].clone())
    };
    assert_eq!(
        sha(&first["id"]),
        sha(&all[3]["id"]),
        "parent and reused snapshot hold the same image"
    );
}
