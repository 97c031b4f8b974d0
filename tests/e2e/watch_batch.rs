//! `snapback watch` writes its points in batches, as timeline segments
//! (`--upload-interval`), on a local and an S3 repository: every point is
//! restorable at its time with exactly what was committed before it, there
//! is one segment per upload, and a new base manifest is written once the
//! changes since the base are large.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use snapback_testkit::{integrity, spawn, Env, KillOnDrop, Out, Rng};

use crate::s3::S3Repo;
use crate::watch::{
    assert_holds_transfers, create_bank, parse_time, transfers_of, writer, Logged, ACCOUNTS, START,
};

/// Points as `snapshots --points --json` lists them: (name, time, entry),
/// oldest first.
pub(crate) fn listed(json: &str) -> Vec<(String, i128, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    let mut pts: Vec<_> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                parse_time(s["time"].as_str().expect("time")),
                s.clone(),
            )
        })
        .collect();
    pts.sort_by_key(|p| p.1);
    pts
}

/// The segments the points name (`SEGMENT/INDEX`), and the manifests.
fn segments_and_manifests(pts: &[(String, i128, serde_json::Value)]) -> (usize, usize) {
    let segs: std::collections::HashSet<&str> = pts
        .iter()
        .filter_map(|p| p.0.split_once('/').map(|(s, _)| s))
        .collect();
    let manifests = pts.iter().filter(|p| !p.0.contains('/')).count();
    (segs.len(), manifests)
}

/// Runs the bank writer for `secs` under a running watcher, then stops
/// both; returns the log and the watcher's output.
fn run_writer_under(child: KillOnDrop, db: &Path, secs: u64, seed: u64) -> (Vec<Logged>, Out) {
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = writer(db, stop.clone(), log.clone(), seed);
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    // Past one more upload, so the last commits are in a point.
    std::thread::sleep(Duration::from_millis(1500));
    let out = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "watch exits 0 on SIGTERM: {out:?}");
    let log = log.lock().expect("log").clone();
    assert!(log.len() > 50, "the writer ran ({} transfers)", log.len());
    (log, out)
}

/// Every point (at most `limit`, spread over the run) restores to a bank
/// holding every transfer committed before it and none begun after it; the
/// newest holds them all.
pub(crate) fn every_point_holds_exactly_what_was_committed_before_it(
    pts: &[(String, i128, serde_json::Value)],
    log: &[Logged],
    restore: &dyn Fn(&str, &Path),
    dir: &Path,
    limit: usize,
) {
    let step = pts.len().div_ceil(limit).max(1);
    let mut picked: Vec<usize> = (0..pts.len()).step_by(step).collect();
    picked.push(pts.len() - 1);
    for i in picked {
        let (id, p_time, _) = &pts[i];
        let dest = dir.join(format!("point-{i}.db"));
        let _ = std::fs::remove_file(&dest);
        restore(id, &dest);
        assert_eq!(integrity(&dest), "ok", "point {id} passes integrity_check");
        let (ids, total) = transfers_of(&dest);
        assert_eq!(total, ACCOUNTS * START, "the total is unchanged at {id}");
        assert_holds_transfers(&ids, log, *p_time, *p_time, &format!("point {id}"));
    }
    let newest = &pts[pts.len() - 1].0;
    let dest = dir.join("newest.db");
    let _ = std::fs::remove_file(&dest);
    restore(newest, &dest);
    assert_eq!(
        transfers_of(&dest).0.len(),
        log.len(),
        "the newest point holds every transfer"
    );
}

fn watch_args<'a>(db: &'a str, upload: &'a str) -> Vec<&'a str> {
    vec![
        "--json",
        "-v",
        "watch",
        db,
        "--interval",
        "200ms",
        "--upload-interval",
        upload,
    ]
}

/// The number of uploads a run of `span_ns` at `upload_s` seconds and
/// 200ms ticks makes, give or take one at each end: uploads start one tick
/// before the interval is up (docs/watch.md), so that the newest durable
/// point is never older than the upload interval.
fn assert_segments_match_uploads(segments: usize, span_ns: i128, upload_s: f64, what: &str) {
    let tick = 0.2;
    let every = ((upload_s / tick).round() - 1.0).max(1.0) * tick;
    let expected = span_ns as f64 / 1e9 / every;
    assert!(
        (segments as f64) >= expected - 2.0 && (segments as f64) <= expected + 2.0,
        "{what}: {segments} segments for {:.1} s of points at one upload per {upload_s} s",
        span_ns as f64 / 1e9
    );
}

#[test]
fn watch_on_a_local_repository_writes_one_segment_per_upload_and_every_point_restores_exactly() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let child = spawn(env.cmd(&watch_args(db_s, "1s")));
    let (log, out) = run_writer_under(child, &db, 5, 0xBA7C4);
    let pts = listed(&env.ok(&["--json", "snapshots", "--points"]));
    let printed = out.stdout.lines().count();
    assert_eq!(
        printed,
        pts.len(),
        "one line per durable point: {}",
        out.stderr
    );
    let (segments, manifests) = segments_and_manifests(&pts);
    assert!(
        manifests <= 2,
        "one base manifest (and at most one more): {manifests}"
    );
    let points_in_segments = pts.len() - manifests;
    assert!(
        points_in_segments >= 3 * segments,
        "several points per segment at 200ms ticks and 1s uploads: {points_in_segments} points in {segments} segments"
    );
    let span = pts[pts.len() - 1].1 - pts[0].1;
    assert_segments_match_uploads(segments, span, 1.0, "local");
    let restore = |id: &str, dest: &Path| {
        env.ok(&["restore", id, dest.to_str().expect("utf8")]);
    };
    every_point_holds_exactly_what_was_committed_before_it(
        &pts,
        &log,
        &restore,
        env.path("").as_path(),
        12,
    );
    let out = env.run(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "check: {}",
        snapback_testkit::stderr(&out)
    );
}

#[test]
fn watch_on_a_local_repository_uploads_every_tick_by_default() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let child = spawn(env.cmd(&["--json", "watch", db_s, "--interval", "300ms"]));
    let (_, _) = run_writer_under(child, &db, 3, 0x71C4);
    let pts = listed(&env.ok(&["--json", "snapshots", "--points"]));
    let (segments, manifests) = segments_and_manifests(&pts);
    // The RPO stays one tick: one segment per point.
    assert_eq!(
        segments,
        pts.len() - manifests,
        "one point per segment locally: {pts:?}"
    );
}

fn s3_watch(r: &S3Repo, args: &[&str]) -> Command {
    let mut c = r.cmd(args, None);
    c.env("XDG_STATE_HOME", r.path("state"));
    c
}

#[test]
fn watch_on_s3_batches_points_per_upload_interval_and_every_point_restores_exactly() {
    let r = S3Repo::new();
    let db = r.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let child = spawn(s3_watch(&r, &watch_args(db_s, "1s")));
    let (log, out) = run_writer_under(child, &db, 5, 0x53);
    let pts = listed(&r.ok(&["--json", "snapshots", "--points"]));
    assert_eq!(
        out.stdout.lines().count(),
        pts.len(),
        "one line per durable point: {}",
        out.stderr
    );
    let (segments, manifests) = segments_and_manifests(&pts);
    assert!(manifests <= 2, "{manifests} manifests");
    let span = pts[pts.len() - 1].1 - pts[0].1;
    assert_segments_match_uploads(segments, span, 1.0, "s3");
    let restore = |id: &str, dest: &Path| {
        r.ok(&["restore", id, dest.to_str().expect("utf8")]);
    };
    every_point_holds_exactly_what_was_committed_before_it(&pts, &log, &restore, &r.path(""), 8);

    // Without the flag, an S3 repository batches for 10 s (the status
    // file says the upload interval it runs with).
    let child = spawn(s3_watch(&r, &["watch", db_s, "--interval", "200ms"]));
    let s = snapback_testkit::watch::wait_for_watch_status(
        &r.path("state"),
        "an upload interval",
        Duration::from_secs(30),
        |_| true,
    );
    let upload_ms = s["upload_interval_ms"]
        .as_u64()
        .expect("upload_interval_ms");

    let _ = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(upload_ms, 10_000);
}

#[test]
fn watch_writes_a_new_base_manifest_when_the_changes_since_the_base_grow_large() {
    let env = Env::new();
    let db = env.path("big.db");
    let c = Connection::open(&db).expect("open");
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .expect("wal");
    c.execute_batch("CREATE TABLE t(v BLOB)").expect("create");
    let db_s = db.to_str().expect("utf8");
    let child = spawn(env.cmd(&["--json", "watch", db_s, "--interval", "100ms"]));
    // About 1,800 new pages in ~3 s: more page entries since the first
    // base than it has pages, and than the 1,024 of the floor.
    let mut rng = Rng::new(7);
    let started = Instant::now();
    for i in 0..60 {
        let tx = c.unchecked_transaction().expect("tx");
        for _ in 0..30 {
            tx.execute("INSERT INTO t VALUES (randomblob(3900))", [])
                .expect("insert");
        }
        tx.commit().expect("commit");
        std::thread::sleep(Duration::from_millis(30 + rng.below(40)));
        assert!(started.elapsed() < Duration::from_secs(60), "round {i}");
    }
    std::thread::sleep(Duration::from_millis(800));
    let out = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let manifests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| !l["point"].as_str().expect("id").contains('/'))
        .collect();
    assert!(
        manifests.len() >= 2,
        "a new base after the first: {}",
        out.stdout
    );
    assert!(
        manifests[1..].iter().all(|m| m["method"] == "wal-delta"),
        "a new base is a WAL-delta snapshot, not a full scan: {manifests:?}"
    );
    let pts = listed(&env.ok(&["--json", "snapshots", "--points"]));
    assert_eq!(pts.len(), lines.len());
    let dest = env.path("latest.db");
    env.ok(&["restore", "latest", dest.to_str().expect("utf8")]);
    let n: i64 = Connection::open(&dest)
        .expect("open")
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 60 * 30);
    let out = env.run(&["check"]);
    assert!(
        out.status.success(),
        "check: {}",
        snapback_testkit::stderr(&out)
    );
}

/// The watcher's status report (the only one under `env`'s state home).
fn watch_status_of(env: &Env) -> Option<serde_json::Value> {
    snapback_testkit::watch::watch_status(&env.path("xdg-state"))
}

fn wait_status(
    env: &Env,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let limit = Duration::from_secs(30);
    snapback_testkit::watch::wait_for_watch_status(&env.path("xdg-state"), what, limit, ok)
}

#[test]
fn watch_verifies_itself_every_verify_interval_and_a_mismatch_makes_the_next_point_a_full_scan() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    // The last pages hold a blob nothing else reads, in the database file,
    // not in the WAL. The application stays connected (its last close
    // would checkpoint and delete the WAL before the watcher starts).
    let app = Connection::open(&db).expect("open");
    app.execute_batch("CREATE TABLE pad(b); INSERT INTO pad VALUES (zeroblob(20000));")
        .expect("pad");
    app.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    // One commit: the WAL has a header (a delta can follow it) and the
    // frames of one page of the transfers table.
    app.execute("INSERT INTO transfers VALUES (0, 0, 0, 0, x'00')", [])
        .expect("write");
    let db_s = db.to_str().expect("utf8");
    let child = spawn(env.cmd(&[
        "--json",
        "watch",
        db_s,
        "--interval",
        "200ms",
        "--verify-interval",
        "1s",
    ]));
    let s = wait_status(&env, "a verification", |s| !s["last_verify"].is_null());
    assert_eq!(s["last_verify"]["result"], "ok", "{s}");
    assert!(
        s["last_verify"]["pages_compared"].as_u64().expect("n") > 5,
        "{s}"
    );
    // The database file changed in place (same inode, no WAL frame): only
    // a comparison of content can see it.
    let size = std::fs::metadata(&db).expect("meta").len();
    let last_page = size / 4096;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("open");
        f.seek(SeekFrom::Start((last_page - 1) * 4096 + 2000))
            .expect("seek");
        f.write_all(&[0x5a; 64]).expect("overwrite");
        f.sync_all().expect("sync");
    }
    let s = wait_status(&env, "a mismatch", |s| {
        s["last_verify"]["result"] == "mismatch"
    });
    assert_eq!(
        s["last_verify"]["mismatching_pages"],
        serde_json::json!([last_page]),
        "{s}"
    );
    // The next change is captured by a full scan (a new base manifest).
    app.execute("INSERT INTO transfers VALUES (1, 0, 0, 0, x'00')", [])
        .expect("write");
    std::thread::sleep(Duration::from_millis(1200));
    let out = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    drop(app);
    let methods: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["method"]
                .as_str()
                .expect("m")
                .to_string()
        })
        .collect();
    assert_eq!(
        methods.first().map(String::as_str),
        Some("full-scan"),
        "{methods:?}"
    );
    assert_eq!(
        methods.last().map(String::as_str),
        Some("full-scan"),
        "the point after the mismatch reads every page: {methods:?}\n{}",
        out.stderr
    );
    let dest = env.path("after.db");
    env.ok(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert_eq!(
        std::fs::read(&dest).expect("read")[((last_page - 1) * 4096 + 2000) as usize..][..64],
        [0x5a; 64],
        "the new point holds the database as it is"
    );
}

#[test]
fn watch_verify_interval_off_runs_no_verification() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let child = spawn(env.cmd(&[
        "watch",
        db_s,
        "--interval",
        "100ms",
        "--verify-interval",
        "off",
    ]));
    wait_status(&env, "a durable point", |s| !s["durable"].is_null());
    std::thread::sleep(Duration::from_millis(800));
    let s = watch_status_of(&env).expect("status");
    let _ = child.stop_with("TERM", Duration::from_secs(60));
    assert!(s["last_verify"].is_null(), "{s}");
}

#[test]
fn watch_keeps_points_while_s3_fails_and_lies_and_uploads_them_all_when_it_is_back() {
    use snapback_s3::testing::fault_proxy::{Fault, FaultProxy, Match};
    let r = S3Repo::new();
    let db = r.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let proxy = FaultProxy::start(&snapback_testkit::s3::server().endpoint).expect("proxy");
    let mut cmd = r.cmd(&watch_args(db_s, "1s"), Some(&proxy));
    cmd.env("XDG_STATE_HOME", r.path("state"));
    let child = spawn(cmd);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = writer(&db, stop.clone(), log.clone(), 0xFA17);
    std::thread::sleep(Duration::from_millis(1500));
    // The outage: errors, then answers that never come (the server acted),
    // then a PUT of a segment that "succeeds" and stores nothing.
    let outage_start = crate::watch::now_ns();
    proxy.inject_always(Match::method("PUT"), Fault::status(500, "InternalError"));
    std::thread::sleep(Duration::from_millis(2000));
    proxy.clear();
    proxy.inject_always(Match::method("PUT"), Fault::DropResponse);
    std::thread::sleep(Duration::from_millis(1500));
    proxy.clear();
    proxy.inject_always(Match::method("PUT").containing("/timeline/"), Fault::LieOk);
    std::thread::sleep(Duration::from_millis(1000));
    proxy.clear();
    let outage_end = crate::watch::now_ns();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    std::thread::sleep(Duration::from_millis(2500));
    let out = child.stop_with("TERM", Duration::from_secs(120));
    assert_eq!(out.code, 0, "every point was uploaded in the end: {out:?}");
    assert!(
        proxy.faults_fired() >= 3,
        "the faults fired: {}",
        proxy.faults_fired()
    );
    assert!(
        out.stderr.contains("cannot upload points"),
        "the failures were logged: {}",
        out.stderr
    );
    let log = log.lock().expect("log").clone();
    let pts = listed(&r.ok(&["--json", "snapshots", "--points"]));
    let printed: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["point"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    let listed_ids: std::collections::HashSet<&str> = pts.iter().map(|p| p.0.as_str()).collect();
    for id in &printed {
        assert!(
            listed_ids.contains(id.as_str()),
            "reported point {id} is in the repository"
        );
    }
    assert!(
        pts.iter()
            .filter(|p| p.1 > outage_start && p.1 < outage_end)
            .count()
            >= 5,
        "the points taken during the outage were uploaded after it"
    );
    let restore = |id: &str, dest: &Path| {
        r.ok(&["restore", id, dest.to_str().expect("utf8")]);
    };
    every_point_holds_exactly_what_was_committed_before_it(&pts, &log, &restore, &r.path(""), 8);
    let out = r.run(&["check"], None);
    assert!(
        out.status.success(),
        "check: {}",
        snapback_testkit::stderr(&out)
    );
}
