//! Crash consistency: `snapshot`, `prune` (after `forget`), `repair --apply`,
//! `undo`, `restore --in-place --apply` and `watch` (while a writer
//! commits) are killed with SIGKILL at random points, over and over.
//! After every kill:
//! - `check --read-data` passes;
//! - every snapshot committed before the kill restores exactly (SHA-256 of
//!   the restored file = the manifest's `sha256`);
//! - the live database passes `PRAGMA integrity_check`;
//! - a lock left by the killed process is stale (its pid is dead on this
//!   host) and is passed over at once: an exclusive lock is taken with a
//!   2-second wait;
//! - the operation re-runs (or resumes) to completion, with the expected
//!   result.
//!
//! Bounded by `SNAPBACK_CRASH_ITERATIONS` (kills per operation, default 3)
//! and `SNAPBACK_CRASH_SECONDS` (time per operation, default 40).
//! `SNAPBACK_CRASH_SEED` replays a run; `SNAPBACK_CRASH_REPORT=FILE`
//! appends one JSON line per operation. `SNAPBACK_CRASH_ENCRYPTED=1` runs
//! every loop on an encrypted repository. `scripts/crash.sh` runs the long
//! loops.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::rel_util::{
    check_clean, committed, damage_rows, make_db, repair_script, restore_exactly, rows, Committed,
};
use snapback_testkit::{integrity, stderr, stdout, Env, KillOnDrop, Rng};

/// The repository of a crash loop: encrypted when SNAPBACK_CRASH_ENCRYPTED=1.
fn crash_env() -> Env {
    if encrypted() {
        Env::encrypted("crash harness passphrase")
    } else {
        Env::new()
    }
}

fn encrypted() -> bool {
    std::env::var("SNAPBACK_CRASH_ENCRYPTED").is_ok_and(|v| v == "1")
}

struct Budget {
    iterations: usize,
    deadline: Instant,
    seconds: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn budget() -> Budget {
    let seconds = env_u64("SNAPBACK_CRASH_SECONDS", 40);
    Budget {
        iterations: env_u64("SNAPBACK_CRASH_ITERATIONS", 3).clamp(1, 100_000) as usize,
        deadline: Instant::now() + Duration::from_secs(seconds),
        seconds,
    }
}

fn rng(op: &str) -> Rng {
    let seed = env_u64(
        "SNAPBACK_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    eprintln!("crash harness {op}: seed {seed} (SNAPBACK_CRASH_SEED={seed} replays it)");
    Rng(seed | 1)
}

/// What happened to one operation's kills.
#[derive(Debug, Default)]
struct Tally {
    op: &'static str,
    iterations: usize,
    /// Killed while the process was still running.
    killed_mid_operation: usize,
    /// The process had already exited (successfully) when the kill came.
    completed_before_kill: usize,
    /// Kills that left the killed process's lock object behind.
    stale_locks_left: usize,
    /// Lock objects already counted (encrypted runs, where a sealed lock's
    /// pid cannot be read).
    seen_locks: std::collections::HashSet<std::path::PathBuf>,
    /// Snapshots restored and compared after kills.
    restores_verified: usize,
    /// Re-runs that finished the operation.
    reruns_ok: usize,
    /// Re-runs of `repair` that resumed a stored, interrupted run.
    resumed: usize,
    /// Stopped snapshots that failed loudly after a prune deleted their
    /// data (the stop-and-prune loop).
    refused: usize,
    max_delay_ms: u64,
    seconds: f64,
}

impl Tally {
    /// One more iteration, whose kill came while the process ran (`mid`)
    /// or after it had exited.
    fn count_kill(&mut self, mid: bool) {
        if mid {
            self.killed_mid_operation += 1;
        } else {
            self.completed_before_kill += 1;
        }
        self.iterations += 1;
    }

    fn report(&self) {
        let line = format!(
            "{{\"op\":\"{}\",\"encrypted\":{},\"iterations\":{},\"killed_mid_operation\":{},\"completed_before_kill\":{},\"stale_locks_left\":{},\"restores_verified\":{},\"reruns_ok\":{},\"resumed\":{},\"refused\":{},\"max_delay_ms\":{},\"seconds\":{:.1}}}",
            self.op,
            encrypted(),
            self.iterations,
            self.killed_mid_operation,
            self.completed_before_kill,
            self.stale_locks_left,
            self.restores_verified,
            self.reruns_ok,
            self.resumed,
            self.refused,
            self.max_delay_ms,
            self.seconds
        );
        eprintln!("crash harness result: {line}");
        if let Ok(path) = std::env::var("SNAPBACK_CRASH_REPORT") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

/// Runs `args` to completion; returns its duration. Asserts success.
fn timed_ok(env: &Env, args: &[&str], extra_env: &[(&str, &str)]) -> Duration {
    let t = Instant::now();
    let mut c = env.cmd(args);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "snapback {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    t.elapsed()
}

/// Starts `args`, sleeps `delay`, then SIGKILLs it unless it has exited.
/// Returns (killed mid-operation, pid).
fn run_and_kill(
    env: &Env,
    args: &[&str],
    extra_env: &[(&str, &str)],
    delay: Duration,
) -> (bool, u32) {
    let mut c = env.cmd(args);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let mut child = KillOnDrop::new(
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let pid = child.id();
    std::thread::sleep(delay);
    let mid = match child.try_wait().expect("try_wait") {
        Some(status) => {
            let out = child.into_inner().wait_with_output().expect("output");
            assert!(
                status.success(),
                "snapback {args:?} finished before the kill, but failed: {}",
                stderr(&out)
            );
            false
        }
        None => {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
            true
        }
    };
    (mid, pid)
}

/// The invariants after a kill (see the module comment).
fn verify_after_kill(
    env: &Env,
    pid: u32,
    before: &[Committed],
    live: &Path,
    tally: &mut Tally,
    rng: &mut Rng,
    ctx: &str,
) {
    // Locks the killed process left behind. Sealed lock objects (encrypted
    // repository) cannot be read here; nothing else runs between kills, so
    // every lock not seen after an earlier kill is the killed process's.
    let left = crate::rel_util::objects(&env.repo(), "locks")
        .iter()
        .filter(|p| {
            (encrypted() && tally.seen_locks.insert(p.to_path_buf()))
                || std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .is_some_and(|v| v["pid"].as_u64() == Some(pid as u64))
        })
        .count();
    tally.stale_locks_left += left;
    // Stale locks are passed over at once: an exclusive lock (which any
    // live lock would block) is taken within 2 seconds.
    let t = Instant::now();
    let out = env.run(&["prune", "--dry-run", "--lock-wait", "2"]);
    assert!(
        out.status.success() && t.elapsed() < Duration::from_secs(10),
        "{ctx}: the killed process's lock ({left} left) is detected as stale: {}",
        stderr(&out)
    );

    check_clean(env, ctx);

    let now = committed(env);
    // Every snapshot committed before the kill is still there and restores
    // exactly. Up to 8 are restored each time (all of them while there are
    // at most 8: the newest 4 and 4 at random otherwise); `check
    // --read-data` above has verified every blob of every snapshot.
    let mut pick: Vec<&Committed> = before.iter().collect();
    if pick.len() > 8 {
        let newest: Vec<&Committed> = pick.split_off(pick.len() - 4);
        let mut others = vec![];
        for _ in 0..4 {
            let i = rng.below(pick.len() as u64) as usize;
            others.push(pick.swap_remove(i));
        }
        pick = newest.into_iter().chain(others).collect();
    }
    for s in before {
        assert!(
            now.iter().any(|n| n.id == s.id),
            "{ctx}: snapshot {} committed before the kill is still there",
            &s.id[..12]
        );
    }
    for s in pick {
        for p in restore_exactly(env, s, &format!("{}-{}", tally.op, tally.iterations)) {
            if p.extension().is_some_and(|e| e == "db") {
                assert_eq!(integrity(&p), "ok", "{ctx}: restored database");
            }
            let _ = std::fs::remove_file(&p);
        }
        tally.restores_verified += 1;
    }
    assert_eq!(integrity(live), "ok", "{ctx}: the live database is intact");
}

fn finish(mut tally: Tally, started: Instant, b: &Budget) {
    tally.seconds = started.elapsed().as_secs_f64();
    tally.report();
    assert!(
        tally.iterations >= 1,
        "at least one kill ({} s budget)",
        b.seconds
    );
    assert_eq!(
        tally.reruns_ok, tally.iterations,
        "every interrupted operation was finished by a re-run"
    );
}

/// A random delay up to 1.3 × the operation's measured duration, so that
/// most kills land part-way and some after completion.
fn delay(rng: &mut Rng, measured: Duration, tally: &mut Tally) -> Duration {
    let ms = rng.below((measured.as_millis() as u64 * 13 / 10).max(20));
    tally.max_delay_ms = tally.max_delay_ms.max(ms);
    Duration::from_millis(ms)
}

/// Prune without its window for young packs: nothing else runs in these
/// loops, and the garbage they make is seconds old.
const PRUNE_NOW: [&str; 3] = ["prune", "--min-pack-age", "0s"];

/// Keeps the loops' repositories small: at most `keep` snapshots (plus
/// pre-repair ones, which retention keeps).
fn trim(env: &Env, keep: usize) {
    if committed(env).len() > keep + 1 {
        env.ok(&[
            "forget",
            "--keep-last",
            &keep.to_string(),
            "--prune",
            "--min-pack-age",
            "0s",
            "--lock-wait",
            "5",
        ]);
    }
}

#[test]
fn crash_snapshot_killed_at_random_points() {
    let b = budget();
    let mut rng = rng("snapshot");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("app.db");
    make_db(&db, 3000);
    // A plain file too, so that a snapshot writes more than one pack.
    let blob = env.path("blob.bin");
    let data: Vec<u8> = (0..(12u32 << 20)).map(|_| rng.next() as u8).collect();
    std::fs::write(&blob, &data).expect("write");
    drop(data);
    let (dbs, blobs) = (db.to_str().expect("utf8"), blob.to_str().expect("utf8"));
    let measured = timed_ok(&env, &["snapshot", dbs, blobs], &[]);
    let mut tally = Tally {
        op: "snapshot",
        ..Default::default()
    };
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations as u64;
        damage_rows(&db, rng.next(), 60);
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&blob)
                .expect("open");
            let chunk: Vec<u8> = (0..(1u32 << 20)).map(|_| rng.next() as u8).collect();
            f.write_all_at(&chunk, rng.below(11) << 20).expect("write");
        }
        let before = committed(&env);
        let d = delay(&mut rng, measured, &mut tally);
        let (mid, pid) = run_and_kill(&env, &["snapshot", dbs, blobs], &[], d);
        tally.count_kill(mid);
        let ctx = format!("snapshot kill {i} at {d:?}");
        verify_after_kill(&env, pid, &before, &db, &mut tally, &mut rng, &ctx);
        // Re-run: it commits, and the new snapshot holds the live rows.
        let out = env.run(&["snapshot", dbs, blobs, "--lock-wait", "2"]);
        assert!(out.status.success(), "{ctx}: re-run: {}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        let now = committed(&env);
        let s = now.iter().find(|s| s.id == id).expect("the new snapshot");
        let p = restore_exactly(&env, s, &format!("rerun-{i}"));
        assert_eq!(
            rows(&p[0]),
            rows(&db),
            "{ctx}: re-run captured the live rows"
        );
        tally.reruns_ok += 1;
        trim(&env, 4);
    }
    finish(tally, started, &b);
}

#[test]
fn crash_prune_killed_at_random_points() {
    let b = budget();
    let mut rng = rng("prune");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("app.db");
    make_db(&db, 4000);
    let dbs = db.to_str().expect("utf8");
    let mut tally = Tally {
        op: "prune",
        ..Default::default()
    };
    // Garbage for prune to remove and packs for it to repack: snapshots of
    // a changing database, most of them then forgotten.
    let make_garbage = |rng: &mut Rng| {
        for _ in 0..3 {
            damage_rows(&db, rng.next(), 400);
            env.snapshot(&db);
        }
        env.ok(&["forget", "--keep-last", "2"]);
    };
    make_garbage(&mut rng);
    let measured = timed_ok(&env, &PRUNE_NOW, &[]);
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations;
        make_garbage(&mut rng);
        let before = committed(&env);
        let d = delay(&mut rng, measured, &mut tally);
        let (mid, pid) = run_and_kill(&env, &PRUNE_NOW, &[], d);
        tally.count_kill(mid);
        let ctx = format!("prune kill {i} at {d:?}");
        verify_after_kill(&env, pid, &before, &db, &mut tally, &mut rng, &ctx);
        let v: serde_json::Value = serde_json::from_str(&env.ok(&[
            "--json",
            "prune",
            "--min-pack-age",
            "0s",
            "--lock-wait",
            "2",
        ]))
        .expect("json");
        // After the re-run, a further prune finds nothing to delete.
        let again: serde_json::Value = serde_json::from_str(&env.ok(&[
            "--json",
            "prune",
            "--dry-run",
            "--min-pack-age",
            "0s",
            "--lock-wait",
            "2",
        ]))
        .expect("json");
        assert_eq!(
            again["plan"]["delete_packs"].as_array().map(Vec::len),
            Some(0),
            "{ctx}: the re-run finished the prune: {v} then {again}"
        );
        check_clean(&env, &ctx);
        tally.reruns_ok += 1;
        let _ = dbs;
    }
    finish(tally, started, &b);
}

#[test]
fn crash_repair_killed_at_random_points() {
    let b = budget();
    let mut rng = rng("repair");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("live.db");
    make_db(&db, 1500);
    let good = rows(&db);
    let s0 = env.snapshot(&db);
    let script = repair_script(&env, &s0, &db, "fix.toml");
    let sc = script.to_str().expect("utf8");
    // Small batches with a short pause between them, so that kills land
    // between batches as well as inside the pre-repair snapshot.
    let slow = [("SNAPBACK_REPAIR_BATCH_DELAY_MS", "3")];
    damage_rows(&db, rng.next(), 200);
    let measured = timed_ok(&env, &["repair", sc, "--apply", "--yes"], &slow);
    assert_eq!(rows(&db), good);
    let mut tally = Tally {
        op: "repair",
        ..Default::default()
    };
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations;
        damage_rows(&db, rng.next(), 200);
        let before = committed(&env);
        let d = delay(&mut rng, measured, &mut tally);
        let (mid, pid) = run_and_kill(&env, &["repair", sc, "--apply", "--yes"], &slow, d);
        tally.count_kill(mid);
        let ctx = format!("repair kill {i} at {d:?}");
        verify_after_kill(&env, pid, &before, &db, &mut tally, &mut rng, &ctx);
        let out = env.run(&["repair", sc, "--apply", "--yes", "--lock-wait", "5"]);
        assert!(
            out.status.success(),
            "{ctx}: re-run: {}{}",
            stdout(&out),
            stderr(&out)
        );
        if stdout(&out).contains("RESUME") {
            tally.resumed += 1;
        }
        assert_eq!(rows(&db), good, "{ctx}: the re-run repaired every row");
        let out = env.run(&["audit", "verify"]);
        assert!(out.status.success(), "{ctx}: {}", stdout(&out));
        tally.reruns_ok += 1;
    }
    finish(tally, started, &b);
}

/// Keeps the undo and in-place loops' repositories from growing without
/// bound: each iteration adds undo points (`pre-repair` or `pre-restore`
/// snapshots, kept by retention until released), and every check and
/// listing after a kill walks them all. Releases all but the newest two,
/// then keeps the newest four and the source snapshot (tag `source`).
fn trim_undo_points(env: &Env, tag: &str) {
    let snaps = env.snapshots_json();
    if snaps.len() <= 8 {
        return;
    }
    let pre: Vec<String> = snaps
        .iter()
        .filter(|s| {
            s["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == tag))
        })
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    for id in pre.iter().rev().skip(2) {
        env.ok(&["release", id]);
    }
    env.ok(&[
        "forget",
        "--keep-last",
        "4",
        "--keep-tag",
        "source",
        "--prune",
        "--min-pack-age",
        "0s",
        "--lock-wait",
        "5",
    ]);
}

#[test]
fn crash_undo_killed_at_random_points() {
    let b = budget();
    let mut rng = rng("undo");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("live.db");
    make_db(&db, 1500);
    // Tagged, so that trimming the repository keeps the repair's source.
    let s0 = env
        .ok(&["snapshot", db.to_str().expect("utf8"), "--tag", "source"])
        .trim()
        .to_string();
    let script = repair_script(&env, &s0, &db, "fix.toml");
    let sc = script.to_str().expect("utf8");
    let slow = [("SNAPBACK_REPAIR_BATCH_DELAY_MS", "3")];
    let last_repair = || -> String {
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["--json", "audit"])).expect("json");
        v.as_array()
            .expect("entries")
            .iter()
            .rev()
            .find(|e| e["entry"]["kind"] == "repair")
            .and_then(|e| e["entry"]["repair_id"].as_str())
            .expect("a repair")
            .to_string()
    };
    damage_rows(&db, rng.next(), 200);
    env.ok(&["repair", sc, "--apply", "--yes"]);
    let measured = timed_ok(&env, &["undo", &last_repair(), "--yes"], &slow);
    let mut tally = Tally {
        op: "undo",
        ..Default::default()
    };
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations;
        damage_rows(&db, rng.next(), 200);
        let damaged = rows(&db);
        env.ok(&["repair", sc, "--apply", "--yes"]);
        let id = last_repair();
        let before = committed(&env);
        let d = delay(&mut rng, measured, &mut tally);
        let (mid, pid) = run_and_kill(&env, &["undo", &id, "--yes"], &slow, d);
        tally.count_kill(mid);
        let ctx = format!("undo kill {i} at {d:?}");
        verify_after_kill(&env, pid, &before, &db, &mut tally, &mut rng, &ctx);
        // Re-run: it resumes or starts the undo, or says it is done.
        let out = env.run(&["undo", &id, "--yes", "--lock-wait", "5"]);
        assert!(
            out.status.success() || stderr(&out).contains("undone already"),
            "{ctx}: re-run: {}{}",
            stdout(&out),
            stderr(&out)
        );
        if stderr(&out).contains("resuming") {
            tally.resumed += 1;
        }
        assert_eq!(rows(&db), damaged, "{ctx}: the undo put every row back");
        let out = env.run(&["audit", "verify"]);
        assert!(out.status.success(), "{ctx}: {}", stdout(&out));
        tally.reruns_ok += 1;
        trim_undo_points(&env, "pre-repair");
    }
    finish(tally, started, &b);
}

/// `restore --in-place --apply` killed at random points: in its
/// pre-restore snapshot, in its write transaction, after it. After every
/// kill the live database is whole and is either the damaged one or the
/// snapshot's (never a mix), and a re-run restores it.
#[test]
fn crash_restore_in_place_killed_at_random_points() {
    let b = budget();
    let mut rng = rng("restore-in-place");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("live.db");
    make_db(&db, 1500);
    let good = rows(&db);
    let s0 = env
        .ok(&["snapshot", db.to_str().expect("utf8"), "--tag", "source"])
        .trim()
        .to_string();
    let live = db.to_str().expect("utf8");
    let args = [
        "restore",
        s0.as_str(),
        live,
        "--in-place",
        "--apply",
        "--yes",
    ];
    // A pause inside the write transaction, with every page written, so
    // that kills land there as well as in the pre-restore snapshot.
    let slow = [("SNAPBACK_TEST_DELAY_BEFORE_COMMIT_MS", "200")];
    damage_rows(&db, rng.next(), 200);
    let measured = timed_ok(&env, &args, &slow);
    assert_eq!(rows(&db), good);
    let mut tally = Tally {
        op: "restore-in-place",
        ..Default::default()
    };
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations;
        damage_rows(&db, rng.next(), 200);
        let damaged = rows(&db);
        let before = committed(&env);
        let d = delay(&mut rng, measured, &mut tally);
        let (mid, pid) = run_and_kill(&env, &args, &slow, d);
        tally.count_kill(mid);
        let ctx = format!("restore --in-place kill {i} at {d:?}");
        // The first connection rolls back what the killed transaction
        // wrote (a hot journal, or WAL frames without a commit).
        let now = rows(&db);
        assert!(
            now == damaged || now == good,
            "{ctx}: the live database is the old one or the restored one, never a mix"
        );
        verify_after_kill(&env, pid, &before, &db, &mut tally, &mut rng, &ctx);
        let mut rerun = args.to_vec();
        rerun.extend(["--lock-wait", "5s"]);
        let out = env.run(&rerun);
        assert!(
            out.status.success(),
            "{ctx}: re-run: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(rows(&db), good, "{ctx}: the re-run restored every row");
        tally.reruns_ok += 1;
        trim_undo_points(&env, "pre-restore");
    }
    finish(tally, started, &b);
}

/// Issue 17, item 1: the snapshot is stopped (SIGSTOP) at a random point, a
/// prune runs with a shifted clock, and the snapshot continues. Each round
/// picks one prune at random: 16 minutes ahead with the lock in place (a
/// live pid's lock is never stale: the prune must wait); the lock gone (as
/// another host's lock that went stale) and a prune at the right time (the
/// window keeps the young packs); the lock gone and a prune 25 hours ahead
/// (past the window: packs are deleted). The invariant: a snapshot that
/// exits 0 restores exactly; one that does not exits 1 and says that
/// nothing was committed; `check --read-data` passes either way.
#[test]
fn crash_snapshot_stopped_while_prune_runs_with_a_shifted_clock() {
    use crate::prune_race::{faked, signal};
    let b = budget();
    let mut rng = rng("stop-prune");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("app.db");
    crate::rel_util::make_db(&db, 3000);
    let blob = env.path("blob.bin");
    let (dbs, blobs) = (db.to_str().expect("utf8"), blob.to_str().expect("utf8"));
    let fresh_blob = |rng: &mut Rng| {
        std::fs::write(&blob, snapback_testkit::random_bytes(24 << 20, rng.next())).expect("write")
    };
    fresh_blob(&mut rng);
    let measured = timed_ok(&env, &["snapshot", dbs, blobs], &[]);
    let mut tally = Tally {
        op: "stop-prune",
        ..Default::default()
    };
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations;
        crate::rel_util::damage_rows(&db, rng.next(), 200);
        fresh_blob(&mut rng);
        let before = committed(&env);
        let d = delay(&mut rng, measured, &mut tally);
        let child = KillOnDrop::new(
            env.cmd(&["snapshot", dbs, blobs])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        );
        std::thread::sleep(d);
        let mut child = child;
        let running = child.try_wait().expect("try_wait").is_none();
        if running {
            signal(child.id(), "STOP");
            tally.killed_mid_operation += 1;
        } else {
            tally.completed_before_kill += 1;
        }
        let kind = rng.below(3);
        let ctx = format!("stop-prune {i}: stopped at {d:?}, prune kind {kind}");
        if kind > 0 {
            for l in crate::rel_util::objects(&env.repo(), "locks") {
                let _ = std::fs::remove_file(l);
            }
        }
        let (offset, window) = match kind {
            0 => ("+16m", "24h"),
            1 => ("", "24h"),
            _ => ("+25h", "24h"),
        };
        let p = faked(
            &env,
            offset,
            &["prune", "--min-pack-age", window, "--lock-wait", "1"],
        )
        .output()
        .expect("prune");
        if running {
            signal(child.id(), "CONT");
        }
        let out = child.into_inner().wait_with_output().expect("wait");
        if kind == 0 && !p.status.success() {
            assert!(stderr(&p).contains("locked"), "{ctx}: {}", stderr(&p));
        } else {
            assert!(p.status.success(), "{ctx}: prune runs: {}", stderr(&p));
        }
        let now = committed(&env);
        if out.status.success() {
            let new: Vec<&Committed> = now
                .iter()
                .filter(|n| !before.iter().any(|b| b.id == n.id))
                .collect();
            assert_eq!(new.len(), 1, "{ctx}: exit 0 committed one snapshot");
            restore_exactly(&env, new[0], &format!("stop-{i}"));
            tally.restores_verified += 1;
        } else {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{ctx}: {err}");
            assert!(err.contains("nothing was committed"), "{ctx}: {err}");
            assert_eq!(now.len(), before.len(), "{ctx}: nothing committed");
            tally.refused += 1;
        }
        tally.iterations += 1;
        check_clean(&env, &ctx);
        // The latest committed snapshot still restores after every prune.
        if let Some(last) = now.last() {
            restore_exactly(&env, last, &format!("stop-last-{i}"));
        }
        tally.reruns_ok += 1;
        trim(&env, 3);
    }
    finish(tally, started, &b);
}

/// The watcher's tick in the watch loop.
const WATCH_INTERVAL_MS: u64 = 100;
/// How often the watcher writes its points durably, when it batches them
/// (`--upload-interval`, given only when the binary has the flag; without
/// it every point is durable at its tick).
const WATCH_UPLOAD_INTERVAL_MS: u64 = 500;
/// How far the newest durable point may lag the kill beyond one upload
/// interval: the capture running at the kill, on a loaded machine. Checked
/// only once a run has reported two points (it is past its first, full
/// capture); the largest lag seen is printed at the end.
const WATCH_LAG_SLACK_NS: i128 = 3_000_000_000;

/// Every point of the repository (manifests and timeline points) as
/// `snapshots --points --json` lists them: (name, time in ns), by time.
fn listed_points(env: &Env) -> Vec<(String, i128)> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "snapshots", "--points"])).expect("json");
    let mut out: Vec<(String, i128)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                crate::watch::parse_time(s["time"].as_str().expect("time")),
            )
        })
        .collect();
    out.sort_by_key(|p| p.1);
    out
}

/// Restores `name` and checks it against the writer's log: an intact bank
/// with the total unchanged, every transfer committed before `at` (less
/// the instant a read takes to begin) in it, none begun after `at`.
fn check_point_content(
    env: &Env,
    name: &str,
    at: i128,
    log: &[crate::watch::Logged],
    tag: &str,
    ctx: &str,
) {
    let dest = env.path(&format!("watch-point-{tag}.db"));
    let _ = std::fs::remove_file(&dest);
    let out = env.run(&["restore", name, dest.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{ctx}: point {name} restores: {}",
        stderr(&out)
    );
    assert_eq!(integrity(&dest), "ok", "{ctx}: point {name} is intact");
    let (ids, total) = crate::watch::transfers_of(&dest);
    assert_eq!(
        total,
        crate::watch::ACCOUNTS * crate::watch::START,
        "{ctx}: the total at point {name}"
    );
    crate::watch::assert_holds_transfers(&ids, log, at, at, &format!("{ctx}: point {name}"));
    let _ = std::fs::remove_file(&dest);
}

/// The points a killed watcher reported durable: the ids it printed (one
/// JSON object per point, printed once the point is committed) and the
/// `durable` point of the report `status` reads (left by a SIGKILL).
fn reported_durable(env: &Env, stdout_file: &Path) -> (Vec<String>, Option<(String, i128)>) {
    let printed = std::fs::read_to_string(stdout_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["point"].as_str().map(str::to_string))
        .collect();
    let s: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["--json", "status"]))).unwrap_or_default();
    let durable = s["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|src| {
            let d = &src["watch"]["durable"];
            Some((
                d["id"].as_str()?.to_string(),
                crate::watch::parse_time(d["time"].as_str()?),
            ))
        });
    (printed, durable)
}

/// `snapback watch` SIGKILLed at random moments while a real writer moves
/// money (with its own checkpoints), then restarted: every point the
/// watcher reported durable is listed once and restores exactly what was
/// committed before it, check passes, the newest durable point lags the
/// kill by at most one interval (plus the capture running then), no point
/// is listed twice, and the restarted watcher goes on taking points that
/// hold every transfer.
#[test]
fn crash_watch_killed_at_random_points_while_a_writer_commits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let b = budget();
    let mut rng = rng("watch");
    let started = Instant::now();
    let env = crash_env();
    let db = env.path("bank.db");
    crate::watch::create_bank(&db);
    let dbs = db.to_str().expect("utf8").to_string();
    let interval = format!("{WATCH_INTERVAL_MS}ms");
    let mut args = vec!["--json", "watch", &dbs, "--interval", &interval];
    let upload = format!("{WATCH_UPLOAD_INTERVAL_MS}ms");
    let batches = env.ok(&["watch", "--help"]).contains("--upload-interval");
    if batches {
        args.extend(["--upload-interval", &upload]);
    }
    let durable_every_ms = if batches {
        WATCH_UPLOAD_INTERVAL_MS
    } else {
        WATCH_INTERVAL_MS
    };
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writer = crate::watch::writer(&db, stop.clone(), log.clone(), rng.next());
    let mut tally = Tally {
        op: "watch",
        ..Default::default()
    };
    let mut max_lag_ms = 0i128;
    while tally.iterations < b.iterations && Instant::now() < b.deadline {
        let i = tally.iterations;
        let before = committed(&env);
        let out_file = env.path(&format!("watch-{i}.jsonl"));
        let mut c = env.cmd(&args);
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_file).expect("stdout file"))
            .stderr(std::fs::File::create(env.path(&format!("watch-{i}.log"))).expect("log"));
        let mut child = KillOnDrop::new(c.spawn().expect("spawn watch"));
        let d = Duration::from_millis(300 + rng.below(2700));
        tally.max_delay_ms = tally.max_delay_ms.max(d.as_millis() as u64);
        std::thread::sleep(d);
        let exited = child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "watch kill {i}: the watcher exited on its own ({exited:?}): {}",
            std::fs::read_to_string(env.path(&format!("watch-{i}.log"))).unwrap_or_default()
        );
        let kill_at = crate::watch::now_ns();
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        tally.killed_mid_operation += 1;
        tally.iterations += 1;
        let ctx = format!("watch kill {i} at {d:?}");
        verify_after_kill(&env, child.id(), &before, &db, &mut tally, &mut rng, &ctx);

        let log_now = log.lock().expect("log").clone();
        let listed = listed_points(&env);
        for w in listed.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "{ctx}: two points at one time ({} and {}): a duplicate",
                w[0].0,
                w[1].0
            );
        }
        let (printed, durable) = reported_durable(&env, &out_file);
        let mut reported: Vec<(String, i128)> = vec![];
        for id in printed.iter().chain(durable.iter().map(|d| &d.0)) {
            let found: Vec<&(String, i128)> = listed.iter().filter(|p| p.0 == *id).collect();
            assert_eq!(
                found.len(),
                1,
                "{ctx}: point {id}, reported durable, is listed once"
            );
            if !reported.contains(found[0]) {
                reported.push(found[0].clone());
            }
        }
        // The newest reported, and a random other, restore exactly.
        reported.sort_by_key(|p| p.1);
        let mut check: Vec<&(String, i128)> = reported.iter().rev().take(1).collect();
        if reported.len() > 1 {
            check.push(&reported[rng.below(reported.len() as u64 - 1) as usize]);
        }
        for (k, (name, at)) in check.into_iter().enumerate() {
            check_point_content(&env, name, *at, &log_now, &format!("{i}-{k}"), &ctx);
            tally.restores_verified += 1;
        }
        // No gap: past its first capture, the watcher's newest durable
        // point holds every transfer committed up to one interval (and the
        // capture running at the kill) before it.
        if printed.len() >= 2 {
            let newest = reported.last().expect("reported").1;
            let lag = kill_at - newest;
            max_lag_ms = max_lag_ms.max(lag / 1_000_000);
            assert!(
                lag <= durable_every_ms as i128 * 1_000_000 + WATCH_LAG_SLACK_NS,
                "{ctx}: the newest durable point is {} ms older than the kill",
                lag / 1_000_000
            );
        }
        tally.reruns_ok += 1;
        if listed.len() > 80 {
            env.ok(&[
                "forget",
                "--keep-last",
                "20",
                "--keep-within-points",
                "5s",
                "--prune",
                "--min-pack-age",
                "0s",
                "--lock-wait",
                "10",
            ]);
        }
    }
    // The writer stops; a restarted watcher takes a point of every
    // transfer, then stops on SIGTERM.
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let log_all = log.lock().expect("log").clone();
    let child = snapback_testkit::spawn(env.cmd(&args));
    let t = Instant::now();
    loop {
        let (n, _) = listed_points(&env)
            .last()
            .map(|(name, _)| {
                let dest = env.path("watch-final.db");
                let _ = std::fs::remove_file(&dest);
                env.ok(&["restore", name, dest.to_str().expect("utf8")]);
                crate::watch::transfers_of(&dest)
            })
            .map(|(ids, total)| (ids.len(), total))
            .unwrap_or((0, 0));
        if n == log_all.len() {
            break;
        }
        if t.elapsed() >= Duration::from_secs(60) {
            let out = child.stop_with("KILL", Duration::from_secs(10));
            panic!(
                "the restarted watcher took no point of all {} transfers: {out:?}",
                log_all.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.stop_with("TERM", Duration::from_secs(60));
    assert_eq!(out.code, 0, "watch exits 0 on SIGTERM: {out:?}");
    check_clean(&env, "after the last restart");
    eprintln!(
        "crash harness watch: {} transfers, max lag of the durable point at a kill {max_lag_ms} ms",
        log_all.len()
    );
    finish(tally, started, &b);
}
