//! `snapback forget` while `snapback watch` runs: forget takes the
//! exclusive lock (it waits for the watcher to let its shared upload lock
//! go, and exits 11 when it cannot take it in time), it never removes a
//! base manifest that a segment replays from, and a watcher whose newest
//! base a forget removed before any segment named it writes a new base
//! instead of getting stuck with points it can never commit. Every point
//! the watcher reported durable stays restorable.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use snapback_testkit::{integrity, spawn, Env, Out};

use crate::watch::{
    assert_holds_transfers, create_bank, points, transfers_of, writer, ACCOUNTS, START,
};

/// Signals a thread to stop and joins it, also when the test fails.
pub(crate) struct Stopping(
    pub(crate) Arc<AtomicBool>,
    pub(crate) Option<std::thread::JoinHandle<()>>,
);

impl Stopping {
    pub(crate) fn join(mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            h.join().expect("thread");
        }
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// VACUUMs the database every `every` until told to stop: the WAL then
/// holds every page, so the watcher's next point is a new base manifest.
fn vacuumer(db: &Path, every: Duration) -> Stopping {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, db) = (stop.clone(), db.to_path_buf());
    let h = std::thread::spawn(move || {
        let c = Connection::open(&db).expect("open");
        c.busy_timeout(Duration::from_secs(10)).expect("busy");
        let mut next = Instant::now() + every;
        while !s.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                c.execute_batch("VACUUM").expect("vacuum");
                next = Instant::now() + every;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Stopping(stop, Some(h))
}

fn watch_cmd(env: &Env, db: &str, lock_hold_ms: Option<&str>) -> Command {
    let mut cmd = env.cmd(&[
        "--json",
        "watch",
        db,
        "--interval",
        "200ms",
        "--upload-interval",
        "600ms",
    ]);
    if let Some(ms) = lock_hold_ms {
        cmd.env("SNAPBACK_TEST_WATCH_LOCK_HOLD_MS", ms);
    }
    cmd
}

/// The points the watcher printed (it prints a point once it is durable).
fn reported(out: &Out) -> Vec<String> {
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            v["point"].as_str().expect("point").to_string()
        })
        .collect()
}

#[test]
fn every_point_a_watcher_reported_durable_stays_restorable_while_forget_runs_in_a_loop() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    // The watcher lets its lock go every second (not every minute), so
    // that each forget gets its exclusive lock within a few seconds.
    let watcher = spawn(watch_cmd(&env, db_s, Some("1000")));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = Stopping(stop.clone(), Some(writer(&db, stop, log.clone(), 0xF0E6)));
    // New base manifests every 1.5 s: each is for a moment named by no
    // segment, while a newer snapshot (below) makes it no longer the
    // newest, so `--keep-last 1` would remove it then.
    let v = vacuumer(&db, Duration::from_millis(1500));
    let started = Instant::now();
    let (mut forgets, mut removed) = (0, 0u64);
    while started.elapsed() < Duration::from_secs(10) {
        env.ok(&["snapshot", db_s]);
        let out = env.run_bounded(
            &[
                "--json",
                "forget",
                "--keep-last",
                "1",
                "--keep-within-points",
                "1h",
                "--lock-wait",
                "60s",
            ],
            Duration::from_secs(90),
        );
        assert_eq!(out.code, 0, "forget: {out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("forget --json");
        removed += v["removed"].as_u64().expect("removed");
        forgets += 1;
    }
    v.join();
    w.join();
    // Past one more upload, so the last commits are in a point.
    std::thread::sleep(Duration::from_millis(1500));
    let out = watcher.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(
        out.code, 0,
        "the watcher uploaded every point it took (none is stuck over a removed base): {out:?}"
    );
    assert!(forgets >= 3, "forget ran {forgets} times in 10 s");
    assert!(removed > 0, "the forgets removed snapshots");
    let log = log.lock().expect("log").clone();
    assert!(log.len() > 50, "the writer ran ({} transfers)", log.len());
    // Every timeline point reported durable is listed and restores to what
    // was committed before it (manifests are snapshots `--keep-last 1`
    // may remove once no segment names them).
    let listed = points(&env);
    let names: std::collections::HashSet<&str> = listed.iter().map(|p| p.0.as_str()).collect();
    let durable: Vec<String> = reported(&out)
        .into_iter()
        .filter(|p| p.contains('/'))
        .collect();
    assert!(durable.len() > 10, "{} timeline points", durable.len());
    for p in &durable {
        assert!(
            names.contains(p.as_str()),
            "point {p}, reported durable, is no longer listed: {}",
            out.stderr
        );
    }
    let step = durable.len().div_ceil(10).max(1);
    for (i, p) in durable.iter().enumerate() {
        if i % step != 0 && i != durable.len() - 1 {
            continue;
        }
        let dest = env.path(&format!("point-{i}.db"));
        env.ok(&["restore", p, dest.to_str().expect("utf8")]);
        assert_eq!(integrity(&dest), "ok", "point {p} passes integrity_check");
        let (ids, total) = transfers_of(&dest);
        assert_eq!(total, ACCOUNTS * START, "the total is unchanged at {p}");
        let time = listed
            .iter()
            .find(|l| l.0 == *p)
            .map(|l| l.1)
            .expect("listed");
        assert_holds_transfers(&ids, &log, time, time, &format!("point {p}"));
    }
    let check = env.run(&["check"]);
    assert!(
        check.status.success(),
        "check: {}",
        snapback_testkit::stderr(&check)
    );
}

#[test]
fn forget_waits_for_a_watchers_upload_lock_and_exits_11_when_it_cannot_take_it() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let watcher = spawn(watch_cmd(&env, db_s, None));
    let c = Connection::open(&db).expect("open");
    // Until a timeline point is durable, the watcher holds its upload lock
    // (for a minute at a time).
    let started = Instant::now();
    let mut n = 0;
    while !points(&env).iter().any(|p| p.0.contains('/')) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no timeline point within 30 s"
        );
        n += 1;
        c.execute(
            "UPDATE accounts SET balance = balance + 0 WHERE id = ?1",
            [n % ACCOUNTS],
        )
        .expect("update");
        c.execute(
            "INSERT INTO transfers VALUES (?1, 0, 0, 0, randomblob(100))",
            [n],
        )
        .expect("insert");
        std::thread::sleep(Duration::from_millis(300));
    }
    env.ok(&["snapshot", db_s]);
    let before = env.snapshots_json().len();
    let out = env.run_bounded(
        &["forget", "--keep-last", "1", "--lock-wait", "1s"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 11, "forget cannot take the lock: {out:?}");
    assert!(
        out.stderr.contains("locked") && out.stderr.contains("watch"),
        "the error names the watcher's lock: {}",
        out.stderr
    );
    assert_eq!(env.snapshots_json().len(), before, "nothing was removed");
    let out = watcher.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    // Once the watcher is gone, forget runs, and keeps the base of the
    // watcher's points.
    let out = env.run_bounded(
        &["--json", "forget", "--keep-last", "1", "--lock-wait", "1s"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let timeline: Vec<String> = points(&env)
        .into_iter()
        .map(|p| p.0)
        .filter(|p| p.contains('/'))
        .collect();
    assert!(
        !timeline.is_empty(),
        "the watcher's points are still listed"
    );
    for p in timeline {
        let dest = env.path("p.db");
        let _ = std::fs::remove_file(&dest);
        env.ok(&["restore", &p, dest.to_str().expect("utf8")]);
        assert_eq!(integrity(&dest), "ok", "point {p}");
    }
}
