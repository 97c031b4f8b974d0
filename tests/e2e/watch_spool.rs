//! `snapback watch`'s local spool (docs/watch.md, "The spool"): points
//! taken while the repository cannot be written wait on local disk; a
//! watcher SIGKILLed then, or stopped by a full spool (`--spool-max`, exit
//! 7), loses none of them: the next one uploads them first and goes on
//! without a gap or a duplicate. A torn last spool record is dropped; a
//! damaged one stops the watcher before it reads anything.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use snapback_s3::testing::fault_proxy::{Fault, FaultProxy, Match};
use snapback_testkit::watch::{
    spool_files, wait_for_watch_status as wait_for, watch_status as status_in,
};
use snapback_testkit::{spawn, wait_out, Env};

use crate::s3::S3Repo;
use crate::watch::{create_bank, now_ns, transfers_of, writer, Logged};
use crate::watch_batch::{every_point_holds_exactly_what_was_committed_before_it, listed};
use crate::watch_forget::Stopping;

/// The bank writer, stopped and joined when dropped.
fn start_writer(db: &Path, seed: u64) -> (Stopping, Arc<Mutex<Vec<Logged>>>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let h = writer(db, stop.clone(), log.clone(), seed);
    (Stopping(stop, Some(h)), log)
}

/// Listed points: strictly increasing times (no point twice).
fn assert_no_duplicate(pts: &[(String, i128, serde_json::Value)], ctx: &str) {
    for w in pts.windows(2) {
        assert!(
            w[0].1 < w[1].1,
            "{ctx}: two points at one time ({} and {}): a duplicate",
            w[0].0,
            w[1].0
        );
    }
}

/// An S3 repository reached through a fault proxy, and the bank database
/// beside it.
fn s3_bank_behind_a_proxy() -> (S3Repo, std::path::PathBuf, FaultProxy) {
    let r = S3Repo::new();
    let db = r.path("bank.db");
    create_bank(&db);
    let proxy = FaultProxy::start(&snapback_testkit::s3::server().endpoint).expect("proxy");
    (r, db, proxy)
}

fn s3_watch(r: &S3Repo, proxy: &FaultProxy, args: &[&str]) -> Command {
    let mut c = r.cmd(args, Some(proxy));
    c.env("XDG_STATE_HOME", r.path("state"));
    c
}

#[test]
fn a_watcher_killed_while_s3_is_down_uploads_every_spooled_point_when_restarted_without_gaps_or_duplicates(
) {
    let (r, db, proxy) = s3_bank_behind_a_proxy();
    let db_s = db.to_str().expect("utf8");
    let state = r.path("state");
    let args = [
        "--json",
        "-v",
        "watch",
        db_s,
        "--interval",
        "200ms",
        "--upload-interval",
        "1s",
    ];
    let first = spawn(s3_watch(&r, &proxy, &args));
    let (w, log) = start_writer(&db, 0x5B001);
    wait_for(&state, "a durable point", Duration::from_secs(30), |s| {
        !s["durable"].is_null()
    });
    // S3 goes down: every PUT fails, half of them by a dropped connection.
    let outage_start = now_ns();
    proxy.inject_always(Match::method("PUT"), Fault::status(500, "InternalError"));
    let s = wait_for(&state, "spooled points", Duration::from_secs(30), |s| {
        s["pending_points"].as_u64().unwrap_or(0) >= 5 && s["spool_bytes"].as_u64().unwrap_or(0) > 0
    });
    assert!(
        s["last_upload_error"]["message"].is_string(),
        "the failing upload is in the status: {s}"
    );
    let pending = s["pending_points"].as_u64().expect("pending");
    let kill_at = now_ns();
    let out = first.stop_with("KILL", Duration::from_secs(60));
    assert_eq!(
        spool_files(&state).len(),
        1,
        "the spool is on disk: {out:?}"
    );
    // While no watcher runs, the application checkpoints the WAL away: the
    // restarted watcher cannot continue by delta after its spooled points.
    let c = Connection::open(&db).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(c);
    // S3 is back, but its first answers are cut short or lost.
    proxy.clear();
    let fired = proxy.faults_fired();
    proxy.inject(Match::method("GET"), Fault::TruncateBody { keep: 10 }, 2);
    proxy.inject(Match::method("PUT"), Fault::DropResponse, 1);
    let second = spawn(s3_watch(&r, &proxy, &args));
    std::thread::sleep(Duration::from_secs(3));
    w.join();
    std::thread::sleep(Duration::from_millis(2500));
    let out = second.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("uploaded first"),
        "the spooled points were found: {}",
        out.stderr
    );
    assert!(spool_files(&state).is_empty(), "the spool was emptied");
    assert!(
        proxy.faults_fired() >= fired + 2,
        "the faults after the restart fired"
    );
    let pts = listed(&r.ok(&["--json", "snapshots", "--points"]));
    assert_no_duplicate(&pts, "after the restart");
    let spooled = pts
        .iter()
        .filter(|p| p.1 > outage_start && p.1 < kill_at)
        .count() as u64;
    assert!(
        spooled >= pending,
        "the {pending} points spooled before the kill are in the repository ({spooled} in the outage)"
    );
    let log = log.lock().expect("log").clone();
    let restore = |id: &str, dest: &Path| {
        r.ok(&["restore", id, dest.to_str().expect("utf8")]);
    };
    every_point_holds_exactly_what_was_committed_before_it(&pts, &log, &restore, &r.path(""), 10);
    let out = r.run(&["check"], None);
    assert!(
        out.status.success(),
        "check: {}",
        snapback_testkit::stderr(&out)
    );
}

/// A watcher on a local repository that uploads only every minute, killed
/// once the writer stopped and it spooled some points: the state home and
/// how many points are spooled.
fn killed_with_a_spool(env: &Env, db: &Path) -> u64 {
    let db_s = db.to_str().expect("utf8");
    let state = env.path("xdg-state");
    let first = spawn(env.cmd(&[
        "--json",
        "watch",
        db_s,
        "--interval",
        "200ms",
        "--upload-interval",
        "60s",
    ]));
    wait_for(&state, "a durable point", Duration::from_secs(30), |s| {
        !s["durable"].is_null()
    });
    let (w, _log) = start_writer(db, 0x70A4);
    wait_for(&state, "spooled points", Duration::from_secs(30), |s| {
        s["pending_points"].as_u64().unwrap_or(0) >= 4
    });
    w.join();
    std::thread::sleep(Duration::from_millis(600));
    let s = status_in(&state).expect("status");
    let out = first.stop_with("KILL", Duration::from_secs(60));
    assert_eq!(spool_files(&state).len(), 1, "{out:?}");
    s["pending_points"].as_u64().expect("pending")
}

#[test]
fn a_torn_last_spool_record_is_dropped_and_a_damaged_one_stops_the_watcher() {
    let env = Env::new();
    let db = env.path("bank.db");
    create_bank(&db);
    let state = env.path("xdg-state");
    let pending = killed_with_a_spool(&env, &db);
    let file = spool_files(&state).pop().expect("spool");
    let good = std::fs::read(&file).expect("read");
    let db_s = db.to_str().expect("utf8");
    let args = ["--json", "watch", db_s, "--interval", "200ms"];

    // A byte of the first point (not the last record) flipped: the watcher
    // does not start, says what to do, and leaves the file as it is.
    let head_len = u32::from_le_bytes(good[12..16].try_into().expect("4 bytes")) as usize;
    let header = 12 + 8 + head_len + 32;
    let mut bad = good.clone();
    bad[header + 40] ^= 0x10;
    std::fs::write(&file, &bad).expect("damage");
    let out = wait_out(spawn(env.cmd(&args)), Duration::from_secs(30));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("spool is damaged") && out.stderr.contains("move the file aside"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&file).expect("read"), bad, "nothing was cut");

    // The last record torn (the watcher killed while writing it): dropped
    // with a warning; every other spooled point is uploaded, and the next
    // point holds what the torn one held.
    std::fs::write(&file, &good[..good.len() - 10]).expect("tear");
    let before = listed(&env.ok(&["--json", "snapshots", "--points"])).len() as u64;
    let second = spawn(env.cmd(&args));
    wait_for(&state, "an upload", Duration::from_secs(30), |s| {
        s["pending_points"] == 0 && !s["durable"].is_null()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let out = second.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("ended inside a record"),
        "{}",
        out.stderr
    );
    let pts = listed(&env.ok(&["--json", "snapshots", "--points"]));
    assert_no_duplicate(&pts, "after the torn record");
    assert_eq!(
        pts.len() as u64,
        before + (pending - 1) + 1,
        "the spooled points but the torn one, then one point of what it held: {:?}",
        pts.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let dest = env.path("latest.db");
    env.ok(&["restore", "latest", dest.to_str().expect("utf8")]);
    let (live, _) = transfers_of(&db);
    assert_eq!(
        transfers_of(&dest).0,
        live,
        "the newest point holds every transfer"
    );
    assert!(spool_files(&state).is_empty());
}

#[test]
fn a_full_spool_stops_the_watcher_with_exit_7_keeping_the_spool_and_never_blocking_the_writer() {
    let (r, db, proxy) = s3_bank_behind_a_proxy();
    let db_s = db.to_str().expect("utf8");
    let state = r.path("state");
    let args = [
        "--json",
        "watch",
        db_s,
        "--interval",
        "100ms",
        "--upload-interval",
        "1s",
        "--spool-max",
        "48K",
    ];
    let first = spawn(s3_watch(&r, &proxy, &args));
    wait_for(&state, "a durable point", Duration::from_secs(30), |s| {
        !s["durable"].is_null()
    });
    assert_eq!(status_in(&state).expect("status")["spool_limit"], 48 * 1024);
    proxy.inject_always(Match::method("PUT"), Fault::status(503, "SlowDown"));
    let outage_start = now_ns();
    let (w, log) = start_writer(&db, 0xF011);
    let out = wait_out(first, Duration::from_secs(60));
    let stopped_at = now_ns();
    assert_eq!(out.code, 7, "{out:?}");
    assert!(
        out.stderr.contains("the local spool is full") && out.stderr.contains("--spool-max"),
        "{}",
        out.stderr
    );
    let s = status_in(&state).expect("status");
    assert!(
        s["stopped"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("spool")),
        "{s}"
    );
    let file = spool_files(&state).pop().expect("the spool is kept");
    let size = std::fs::metadata(&file).expect("meta").len();
    assert!(size > 0 && size <= 48 * 1024, "{size} bytes");
    // The writer went on committing all along, and the watcher left
    // nothing that holds the WAL back: a TRUNCATE checkpoint completes.
    let n0 = log.lock().expect("log").len();
    std::thread::sleep(Duration::from_millis(500));
    let n1 = log.lock().expect("log").len();
    assert!(n1 > n0, "the writer commits after the watcher stopped");
    let c = Connection::open(&db).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    w.join();
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0, "the checkpoint completes");
    drop(c);
    let mut st = r.cmd(&["--json", "status"], None);
    st.env("XDG_STATE_HOME", r.path("state"));
    let out = st.output().expect("status");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the watcher stopped at"),
        "status shows the stopped watcher: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // With S3 back, the next watcher uploads the spool first.
    proxy.clear();
    let second = spawn(s3_watch(&r, &proxy, &args));
    wait_for(&state, "the spool uploaded", Duration::from_secs(30), |s| {
        s["stopped"].is_null() && s["pending_points"] == 0 && s["spool_bytes"] == 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let out = second.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    let pts = listed(&r.ok(&["--json", "snapshots", "--points"]));
    assert_no_duplicate(&pts, "after the full spool");
    assert!(
        pts.iter()
            .any(|p| p.1 > outage_start && p.1 < stopped_at && p.0.contains('/')),
        "points spooled before the stop are in the repository"
    );
    let log = log.lock().expect("log").clone();
    let restore = |id: &str, dest: &Path| {
        r.ok(&["restore", id, dest.to_str().expect("utf8")]);
    };
    every_point_holds_exactly_what_was_committed_before_it(&pts, &log, &restore, &r.path(""), 6);
}

/// systemd's notification socket, as the watcher sees it under
/// `Type=notify`: a datagram socket the test reads.
struct NotifySocket(std::os::unix::net::UnixDatagram);

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let s = std::os::unix::net::UnixDatagram::bind(path).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifySocket(s)
    }

    /// How many `WATCHDOG=1` arrive within `d` (and whether `READY=1` did).
    fn count(&self, d: Duration) -> (usize, bool) {
        let (mut pings, mut ready) = (0, false);
        let until = Instant::now() + d;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.0.recv(&mut buf) {
                for l in String::from_utf8_lossy(&buf[..n]).lines() {
                    pings += usize::from(l == "WATCHDOG=1");
                    ready |= l == "READY=1";
                }
            }
        }
        (pings, ready)
    }
}

#[test]
fn watchdog_pings_go_on_while_uploads_fail_and_points_spool_and_stop_while_captures_stall() {
    let r = S3Repo::new();
    let db = r.path("bank.db");
    create_bank(&db);
    let db_s = db.to_str().expect("utf8");
    let state = r.path("state");
    let proxy = FaultProxy::start(&snapback_testkit::s3::server().endpoint).expect("proxy");
    let sock = NotifySocket::bind(&r.path("notify.sock"));
    let args = [
        "-q",
        "watch",
        db_s,
        "--interval",
        "200ms",
        "--upload-interval",
        "1s",
    ];
    let mut cmd = s3_watch(&r, &proxy, &args);
    cmd.env("NOTIFY_SOCKET", r.path("notify.sock"))
        .env("WATCHDOG_USEC", "5000000");
    let watcher = spawn(cmd);
    let (w, _log) = start_writer(&db, 0xD06);
    wait_for(&state, "a durable point", Duration::from_secs(30), |s| {
        !s["durable"].is_null()
    });
    let (pings, ready) = sock.count(Duration::from_secs(2));
    assert!(
        ready || pings > 0,
        "READY=1 or pings once a point is durable"
    );
    assert!(
        pings >= 4,
        "healthy: {pings} WATCHDOG=1 in 2 s at 200 ms ticks"
    );
    // The repository fails every PUT: points go on into the spool, and
    // so do the pings (systemd must not restart a watcher that spools).
    proxy.inject_always(Match::method("PUT"), Fault::status(500, "InternalError"));
    let s = wait_for(&state, "spooled points", Duration::from_secs(30), |s| {
        s["pending_points"].as_u64().unwrap_or(0) >= 3 && s["last_upload_error"].is_object()
    });
    let spooled = s["pending_points"].as_u64().expect("pending");
    // An upload is tried in the watcher's loop, its retries included, so
    // a tick can wait out a failing upload: the window is 5 s (at least 5
    // of about 25 ticks), which a watcher that pings only after uploads
    // succeed fails with none.
    let (pings, _) = sock.count(Duration::from_secs(5));
    let s = status_in(&state).expect("status");
    assert!(
        s["pending_points"].as_u64().unwrap_or(0) > spooled,
        "points are still taken into the spool: {s}"
    );
    assert!(
        pings >= 5,
        "uploads fail but captures progress: {pings} WATCHDOG=1 in 5 s"
    );
    // A change of most of the database needs a new base manifest, which
    // cannot be written while the repository fails: the capture stalls,
    // and the pings stop.
    let c = Connection::open(&db).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    c.execute_batch("CREATE TABLE bulk(v BLOB)").expect("table");
    c.execute(
        "INSERT INTO bulk(v) VALUES (?1)",
        [snapback_testkit::random_bytes(4 << 20, 7)],
    )
    .expect("big insert");
    drop(c);
    // A tick that took its point before the insert committed still pings
    // once its upload has failed, retries included (2 to 4 s here: the
    // upload runs in the watcher's loop): wait for 6 quiet seconds, longer
    // than any such tick (a watcher that goes on pinging while its
    // capture stalls never has them), then the pings must stay off.
    let quiet = Instant::now() + Duration::from_secs(40);
    while sock.count(Duration::from_secs(6)).0 > 0 {
        assert!(
            Instant::now() < quiet,
            "a watcher whose capture stalls goes on sending WATCHDOG=1 for 40 s"
        );
    }
    let (pings, _) = sock.count(Duration::from_secs(3));
    assert_eq!(
        pings, 0,
        "a watcher that cannot take its next point sends no WATCHDOG=1"
    );
    // The repository is back: the base is written and the pings resume.
    proxy.clear();
    let (pings, _) = sock.count(Duration::from_secs(8));
    assert!(
        pings >= 3,
        "once the new base is written the pings resume: {pings} in 8 s"
    );
    w.join();
    let out = watcher.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    let s = r.ok(&["--json", "snapshots", "--points"]);
    assert!(!listed(&s).is_empty(), "points are listed");
}
