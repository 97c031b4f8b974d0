//! `snapback watch` with a real writer in this process and the real binary:
//! points at @T hold exactly what was committed before them, under the
//! application's own checkpoints, across SIGKILLs and restarts.

use std::path::Path;

use snapback_testkit::KillOnDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use snapback_testkit::{integrity, spawn, Env, Out, Rng};

pub(crate) const ACCOUNTS: i64 = 50;
pub(crate) const START: i64 = 1_000;
pub(crate) const INTERVAL: &str = "200ms";

pub(crate) fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Nanoseconds since the epoch of an RFC 3339 UTC time as snapback writes it.
pub(crate) fn parse_time(s: &str) -> i128 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().expect("digits");
    let days = days_from_civil(n(0, 4), n(5, 7), n(8, 10));
    let secs = days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19);
    let frac = s[19..].trim_end_matches('Z');
    let ns = match frac.strip_prefix('.') {
        Some(f) => format!("{f:0<9}")[..9].parse::<i128>().expect("fraction"),
        None => 0,
    };
    secs as i128 * 1_000_000_000 + ns
}

pub(crate) fn format_time(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let sub = ns.rem_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{sub:09}Z",
        r / 3600,
        r / 60 % 60,
        r % 60
    )
}

pub(crate) fn create_bank(path: &Path) {
    let c = Connection::open(path).expect("open");
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("wal");
    c.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE transfers(id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, memo BLOB);",
    )
    .expect("schema");
    let tx = c.unchecked_transaction().expect("tx");
    for i in 0..ACCOUNTS {
        tx.execute("INSERT INTO accounts VALUES (?1, ?2)", (i, START))
            .expect("insert");
    }
    tx.commit().expect("commit");
}

/// One logged transfer: its id, when its transaction began and when its
/// COMMIT returned.
#[derive(Clone, Copy)]
pub(crate) struct Logged {
    pub(crate) id: i64,
    pub(crate) begin: i128,
    pub(crate) committed: i128,
}

/// Moves money until `stop`, now and then running the application's own
/// checkpoints (PASSIVE, RESTART, TRUNCATE) besides its auto-checkpoints.
pub(crate) fn writer(
    path: &Path,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Logged>>>,
    seed: u64,
) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let c = Connection::open(&path).expect("open");
        c.busy_timeout(Duration::from_secs(10)).expect("busy");
        c.execute_batch("PRAGMA wal_autocheckpoint=40")
            .expect("auto");
        let mut rng = Rng::new(seed);
        let mut next_id: i64 = c
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM transfers", [], |r| {
                r.get(0)
            })
            .expect("max id");
        while !stop.load(Ordering::Relaxed) {
            let x = rng.next();
            let src = (x % ACCOUNTS as u64) as i64;
            let dst = ((x >> 20) % ACCOUNTS as u64) as i64;
            let amount = ((x >> 40) % 50) as i64 + 1;
            let begin = now_ns();
            c.execute_batch("BEGIN IMMEDIATE").expect("begin");
            c.execute(
                "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
                (amount, src),
            )
            .expect("debit");
            c.execute(
                "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
                (amount, dst),
            )
            .expect("credit");
            c.execute(
                "INSERT INTO transfers VALUES (?1, ?2, ?3, ?4, randomblob(?5))",
                (next_id, src, dst, amount, 100 + (x % 900) as i64),
            )
            .expect("log");
            c.execute_batch("COMMIT").expect("commit");
            let committed = now_ns();
            log.lock().expect("log").push(Logged {
                id: next_id,
                begin,
                committed,
            });
            next_id += 1;
            // A checkpoint waits for the watcher's read transaction only
            // as long as the application lets it.
            let pick = ((x >> 8) % 40) as usize;
            if pick < 3 {
                let mode = ["PASSIVE", "RESTART", "TRUNCATE"][pick];
                c.busy_timeout(Duration::from_millis(20)).expect("busy");
                let _ = c.execute_batch(&format!("PRAGMA wal_checkpoint({mode})"));
                c.busy_timeout(Duration::from_secs(10)).expect("busy");
            }
            std::thread::sleep(Duration::from_millis(x % 15));
        }
    })
}

pub(crate) fn start_watch(env: &Env, db: &Path) -> KillOnDrop {
    spawn(env.cmd(&[
        "--json",
        "-v",
        "watch",
        db.to_str().expect("utf8"),
        "--interval",
        INTERVAL,
    ]))
}

/// SIGTERM, then the watcher's output; it must exit 0.
pub(crate) fn stop_watch(child: KillOnDrop) -> Out {
    let out = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "watch exits 0 on SIGTERM: {out:?}");
    out
}

/// The capture method of each point the watcher printed (`--json`: one
/// object per line).
pub(crate) fn methods_of(out: &Out) -> Vec<String> {
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            v["method"].as_str().expect("method").to_string()
        })
        .collect()
}

/// The points' (id, time) in time order: manifests and timeline points.
pub(crate) fn points(env: &Env) -> Vec<(String, i128, serde_json::Value)> {
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "snapshots", "--points"])).expect("json");
    let mut v: Vec<_> = listed
        .as_array()
        .expect("array")
        .iter()
        .cloned()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                parse_time(s["time"].as_str().expect("time")),
                s,
            )
        })
        .collect();
    v.sort_by_key(|p| p.1);
    v
}

/// Waits until the repository holds a point whose image has `transfers`
/// transfers (the watcher took the newest commit).
fn wait_for_point_with(env: &Env, transfers: i64, limit: Duration) {
    let started = Instant::now();
    loop {
        let pts = points(env);
        if let Some((id, _, _)) = pts.last() {
            let dest = env.path("newest.db");
            let _ = std::fs::remove_file(&dest);
            env.ok(&["restore", id, dest.to_str().expect("utf8")]);
            let n: i64 = Connection::open(&dest)
                .expect("open")
                .query_row("SELECT count(*) FROM transfers", [], |r| r.get(0))
                .expect("count");
            if n == transfers {
                return;
            }
        }
        assert!(
            started.elapsed() < limit,
            "no point with all {transfers} transfers within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that an image's transfers (`ids`) hold every transfer of `log`
/// committed before `point_time` (the start of the point's read
/// transaction), less 100 ms for the instant a read takes to begin, and
/// none begun after `latest`. `what` names the image in a failure.
pub(crate) fn assert_holds_transfers(
    ids: &std::collections::HashSet<i64>,
    log: &[Logged],
    point_time: i128,
    latest: i128,
    what: &str,
) {
    for l in log {
        if l.committed < point_time - 100_000_000 {
            assert!(
                ids.contains(&l.id),
                "{what}: transfer {} committed before it is missing",
                l.id
            );
        }
        if l.begin > latest {
            assert!(
                !ids.contains(&l.id),
                "{what}: transfer {} begun after it is in it",
                l.id
            );
        }
    }
}

pub(crate) fn transfers_of(db: &Path) -> (std::collections::HashSet<i64>, i64) {
    let c = Connection::open(db).expect("open");
    let mut st = c.prepare("SELECT id FROM transfers").expect("prepare");
    let ids = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let total: i64 = c
        .query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
        .expect("sum");
    (ids, total)
}

#[test]
fn watch_points_at_any_t_hold_exactly_the_transfers_committed_before_under_checkpoints() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let child = start_watch(&env, &db);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = writer(&db, stop.clone(), log.clone(), 0x5EED);
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    let log = log.lock().expect("log").clone();
    assert!(log.len() > 100, "the writer ran ({} transfers)", log.len());
    wait_for_point_with(&env, log.len() as i64, Duration::from_secs(30));
    let out = stop_watch(child);

    let methods = methods_of(&out);
    let pts = points(&env);
    assert_eq!(methods.len(), pts.len(), "one line per point");
    let full = methods.iter().filter(|m| *m == "full-scan").count();
    assert!(
        full <= 2,
        "after the first point, every point is a WAL delta, across the application's checkpoints: {methods:?}"
    );
    // While the writer ran, a point every few ticks at least.
    let first_commit = log.first().expect("a transfer").committed;
    let last_commit = log.last().expect("a transfer").committed;
    let during: Vec<i128> = pts
        .iter()
        .map(|p| p.1)
        .filter(|t| *t >= first_commit && *t <= last_commit)
        .collect();
    assert!(
        during.len() >= 10,
        "points while the writer ran: {}",
        during.len()
    );
    let max_gap = during.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(
        max_gap < 3_000_000_000,
        "the largest gap between points was {} ms",
        max_gap / 1_000_000
    );

    let mut rng = Rng::new(0xABCDEF);
    let span = last_commit + 500_000_000 - first_commit;
    for i in 0..16 {
        let t = first_commit + (rng.next() as i128 % span);
        let Some((id, p_time, _)) = pts.iter().rev().find(|p| p.1 <= t) else {
            continue;
        };
        let dest = env.path(&format!("at-{i}.db"));
        env.ok(&[
            "restore",
            &format!("@{}", format_time(t)),
            dest.to_str().expect("utf8"),
        ]);
        assert_eq!(
            integrity(&dest),
            "ok",
            "the image at @T passes integrity_check"
        );
        let (ids, total) = transfers_of(&dest);
        assert_eq!(
            total,
            ACCOUNTS * START,
            "the total is unchanged at @T ({id})"
        );
        assert_holds_transfers(&ids, &log, *p_time, t, &format!("the image at @T ({id})"));
    }
}

#[test]
fn watch_takes_no_point_while_nothing_changes_and_resumes_after_sigkill_without_gaps_or_duplicates()
{
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = writer(&db, stop.clone(), log.clone(), 0xC0FFEE);
    let mut rng = Rng::new(0x1234_5678);
    for _ in 0..3 {
        let child = start_watch(&env, &db);
        std::thread::sleep(Duration::from_millis(700 + rng.below(1500)));
        let _ = child.stop_with("KILL", Duration::from_secs(30));
    }
    let child = start_watch(&env, &db);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    let n = log.lock().expect("log").len() as i64;
    wait_for_point_with(&env, n, Duration::from_secs(30));
    // Idle: no new point, and none after a SIGKILL and a restart either.
    std::thread::sleep(Duration::from_secs(1));
    let before = points(&env).len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(points(&env).len(), before, "no point while nothing changes");
    let _ = child.stop_with("KILL", Duration::from_secs(30));
    let child = start_watch(&env, &db);
    std::thread::sleep(Duration::from_secs(1));
    let out = stop_watch(child);
    assert!(
        out.stdout.trim().is_empty(),
        "a restarted watcher takes no duplicate point: {out:?}"
    );
    assert_eq!(points(&env).len(), before);
    // Every point restores to a consistent bank, and the transfers only
    // ever grow from one point to the next.
    let mut prev = 0;
    for (i, (id, _, _)) in points(&env).iter().enumerate() {
        let dest = env.path(&format!("p-{i}.db"));
        env.ok(&["restore", id, dest.to_str().expect("utf8")]);
        assert_eq!(integrity(&dest), "ok");
        let (ids, total) = transfers_of(&dest);
        assert_eq!(total, ACCOUNTS * START);
        assert!(ids.len() >= prev, "point {id} lost transfers");
        prev = ids.len();
    }
    assert_eq!(prev as i64, n);
}

#[test]
fn watch_keeps_the_wal_when_the_applications_last_connection_closes() {
    let env = Env::new();
    let db = env.path("app.db");
    create_bank(&db);
    // The application runs when the watcher starts.
    let app = Connection::open(&db).expect("open");
    app.execute("UPDATE accounts SET balance = balance WHERE id = 0", [])
        .expect("write");
    let child = start_watch(&env, &db);
    wait_for_point_with(&env, 0, Duration::from_secs(30));
    drop(app);
    assert!(
        Path::new(&format!("{}-wal", db.display())).exists(),
        "the WAL is still there after the application's last close"
    );
    for round in 0..3 {
        // Open, commit, close: the application's last connection. The
        // watcher's held read transaction keeps SQLite from deleting the
        // WAL under it, so every point after the first is a delta.
        let c = Connection::open(&db).expect("open");
        c.execute(
            "INSERT INTO transfers VALUES (?1, 0, 0, 0, randomblob(500))",
            [round + 1],
        )
        .expect("insert");
        drop(c);
        assert!(
            Path::new(&format!("{}-wal", db.display())).exists(),
            "round {round}: the WAL is still there after the last close"
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    let out = stop_watch(child);
    let methods = methods_of(&out);
    assert_eq!(
        methods.len(),
        4,
        "a first point and one per commit: {out:?}"
    );
    let reasons: Vec<String> = points(&env)
        .iter()
        .map(|p| p.2["files"][0]["sqlite"]["capture"].to_string())
        .collect();
    assert!(
        methods[1..].iter().all(|m| m == "wal-delta"),
        "{methods:?}: {reasons:?}\n{}",
        out.stderr
    );
}

#[test]
fn watch_refuses_what_is_not_a_database_and_bad_intervals() {
    let env = Env::new();
    let f = env.path("notes.txt");
    std::fs::write(&f, b"hello").expect("write");
    let out = env.run_bounded(
        &["watch", f.to_str().expect("utf8")],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not a SQLite database"), "{out:?}");
    let db = env.path("a.db");
    create_bank(&db);
    let out = env.run_bounded(
        &["watch", db.to_str().expect("utf8"), "--interval", "1.5"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("invalid duration"), "{out:?}");
    let out = env.run_bounded(&["watch"], Duration::from_secs(30));
    assert_eq!(out.code, 2, "no paths and no config: {out:?}");
}

#[test]
fn watch_without_a_state_directory_refuses_to_start_and_says_what_to_set() {
    let env = Env::new();
    let db = env.path("a.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    for xdg in [None, Some("relative/state")] {
        let mut c = env.cmd(&["watch", db_s]);
        c.env_remove("HOME").env_remove("XDG_STATE_HOME");
        if let Some(x) = xdg {
            c.env("XDG_STATE_HOME", x);
        }
        let out = snapback_testkit::wait_out(snapback_testkit::spawn(c), Duration::from_secs(30));
        assert_eq!(out.code, 2, "{xdg:?}: {out:?}");
        assert!(
            out.stderr.contains("XDG_STATE_HOME") && out.stderr.contains("spool"),
            "{xdg:?}: says what to set: {}",
            out.stderr
        );
    }
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "snapshots"])).expect("json");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "nothing was captured"
    );
    // With the state directory given, it starts (and takes a point).
    let mut c = env.cmd(&["-q", "watch", db_s]);
    c.env_remove("HOME")
        .env("XDG_STATE_HOME", env.path("state"));
    let child = snapback_testkit::spawn(c);
    wait_for_point_with(&env, 0, Duration::from_secs(30));
    let out = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn watch_reports_its_durable_point_to_status_and_removes_the_report_on_sigterm() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let child = start_watch(&env, &db);
    wait_for_point_with(&env, 0, Duration::from_secs(30));
    let newest = points(&env).last().expect("a point").0.clone();
    // The report is written at the end of each tick.
    std::thread::sleep(Duration::from_millis(600));
    let s: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "status"])).expect("status json");
    let src = &s["sources"][0];
    assert_eq!(src["watch"]["running"], true, "{s}");
    assert_eq!(src["watch"]["durable"]["id"], newest.as_str(), "{s}");
    assert_eq!(src["rpo_basis"], "watcher", "{s}");
    stop_watch(child);
    let s: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "status"])).expect("status json");
    assert!(
        s["sources"][0]["watch"].is_null(),
        "a watcher stopped on request leaves no report: {s}"
    );
}
