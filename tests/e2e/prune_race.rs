//! Prune against a snapshot that is still running (issue 17, item 1): the
//! snapshot is stopped with SIGSTOP after its first pack (a Ctrl-Z, a paused
//! VM or a frozen container), a prune runs (with a clock ahead, or while the
//! snapshot's clock is behind), and the snapshot continues. It either
//! commits a snapshot that restores exactly, or fails with exit 1 and
//! commits nothing; it never reports success for data prune deleted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::rel_util::{check_clean, committed, objects, restore_exactly};
use snapback_testkit::{bin, random_bytes, stderr, Env, KillOnDrop};

/// Files of random bytes, `n` × `mb` MiB, in a fresh directory `name`.
pub fn random_files(env: &Env, name: &str, n: usize, mb: usize, seed: u64) -> PathBuf {
    let dir = env.path(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..n {
        let data = random_bytes(mb << 20, seed.wrapping_add(i as u64 * 7919));
        std::fs::write(dir.join(format!("f{i}")), data).expect("write");
    }
    dir
}

/// `snapback ARGS` under `faketime -f OFFSET` (libfaketime), or plainly
/// when `offset` is empty.
pub fn faked(env: &Env, offset: &str, args: &[&str]) -> Command {
    if offset.is_empty() {
        return env.cmd(args);
    }
    let mut c = Command::new("faketime");
    c.arg("-f")
        .arg(offset)
        .arg(bin())
        .arg("--repo")
        .arg(env.repo());
    c.args(args).env_remove("SNAPBACK_REPO");
    for k in snapback_testkit::PASSWORD_VARS {
        c.env_remove(k);
    }
    c.envs(env.vars.iter().map(|(k, v)| (k, v)));
    c
}

pub use snapback_testkit::signal;

/// Starts a snapshot of `dir` (under `offset`) and stops it once the
/// repository holds more than `packs_before` packs.
pub fn start_and_stop_after_a_pack(
    env: &Env,
    offset: &str,
    dir: &Path,
    packs_before: usize,
) -> KillOnDrop {
    let cmd = faked(env, offset, &["snapshot", dir.to_str().expect("utf8")]);
    let child = spawn_until_written(env, cmd, "data", packs_before);
    signal(child.id(), "STOP");
    child
}

/// Starts the snapshot `cmd` and returns once the repository holds more
/// than `before` objects under `prefix` (at most 2 minutes).
fn spawn_until_written(env: &Env, mut cmd: Command, prefix: &str, before: usize) -> KillOnDrop {
    let child = KillOnDrop::new(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn snapshot"),
    );
    let t = Instant::now();
    while objects(&env.repo(), prefix).len() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the snapshot wrote nothing under {prefix} within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn resume(child: KillOnDrop) -> Output {
    signal(child.id(), "CONT");
    child
        .into_inner()
        .wait_with_output()
        .expect("wait snapshot")
}

/// Makes every lock in the repository look as if another host took it
/// (its time as that host wrote it), so that prune judges it by age.
fn locks_from_another_host(env: &Env) {
    let locks = objects(&env.repo(), "locks");
    assert!(!locks.is_empty(), "the stopped snapshot holds a lock");
    for l in locks {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&l).expect("read lock")).expect("lock json");
        v["host"] = "another-host.example".into();
        std::fs::write(&l, serde_json::to_vec(&v).expect("json")).expect("write lock");
    }
}

/// The invariant: exit 0 means a committed snapshot that restores exactly
/// and a clean `check --read-data`.
fn committed_and_restores(env: &Env, out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: the snapshot succeeds: {}",
        stderr(out)
    );
    let snaps = committed(env);
    assert_eq!(snaps.len(), 1, "{what}: one snapshot committed");
    check_clean(env, what);
    restore_exactly(env, &snaps[0], "race");
}

#[test]
fn prune_with_its_clock_16m_ahead_leaves_a_stopped_snapshots_lock_alone() {
    let env = Env::new();
    let dir = random_files(&env, "src", 3, 18, 1);
    let snap = start_and_stop_after_a_pack(&env, "", &dir, 0);
    let out = faked(&env, "+16m", &["prune", "--lock-wait", "2"])
        .output()
        .expect("prune");
    let prune_err = stderr(&out);
    let snap_out = resume(snap);
    assert!(
        !out.status.success() && prune_err.contains("locked"),
        "a lock whose pid is alive on this host is never stale, whatever its age: {prune_err}"
    );
    committed_and_restores(&env, &snap_out, "prune 16 minutes ahead");
}

#[test]
fn prune_keeps_the_young_packs_of_a_snapshot_whose_host_clock_is_30m_slow() {
    let env = Env::new();
    let dir = random_files(&env, "src", 3, 18, 2);
    let snap = start_and_stop_after_a_pack(&env, "-30m", &dir, 0);
    // Seen from here, the lock of that host is 30 minutes old: stale.
    locks_from_another_host(&env);
    let packs = objects(&env.repo(), "data");
    let out = env.run(&["prune", "--lock-wait", "2"]);
    let prune_err = stderr(&out);
    assert!(out.status.success(), "prune runs: {prune_err}");
    assert!(
        prune_err.contains("kept") && prune_err.contains("--min-pack-age"),
        "prune says that it kept young packs: {prune_err}"
    );
    for p in &packs {
        assert!(
            p.exists(),
            "{}: an unreferenced pack younger than the window is kept",
            p.display()
        );
    }
    let snap_out = resume(snap);
    committed_and_restores(&env, &snap_out, "snapshot clock 30 minutes slow");
}

#[test]
fn snapshot_fails_loudly_when_prune_deleted_a_pack_it_wrote() {
    let env = Env::new();
    let dir = random_files(&env, "src", 3, 18, 3);
    let snap = start_and_stop_after_a_pack(&env, "", &dir, 0);
    locks_from_another_host(&env);
    for l in objects(&env.repo(), "locks") {
        std::fs::remove_file(l).expect("rm lock");
    }
    // No window: the first pack goes.
    env.ok(&["prune", "--min-pack-age", "0s", "--lock-wait", "2"]);
    refused_and_nothing_committed(&env, resume(snap), "a pack it wrote was deleted");
}

/// The other side of the invariant: exit 1, a message that says so, no
/// manifest, and a repository that checks clean.
fn refused_and_nothing_committed(env: &Env, out: Output, what: &str) {
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: the snapshot fails: {err}"
    );
    assert!(
        err.contains("nothing was committed") && err.contains("missing"),
        "{what}: the error says what happened: {err}"
    );
    assert!(committed(env).is_empty(), "{what}: no manifest was written");
    check_clean(env, what);
}

#[test]
fn snapshot_fails_loudly_when_prune_deleted_a_pack_it_reused() {
    let env = Env::new();
    let old = random_files(&env, "old", 1, 2, 4);
    let first = env.snapshot(&old);
    // The first snapshot's packs are two days old, as the store records it.
    let old_packs = packs_two_days_old(&env);
    // The second snapshot holds the same file (reused from the index) and
    // new data; it is stopped after its first new pack.
    let src = random_files(&env, "src", 2, 18, 5);
    std::fs::copy(old.join("f0"), src.join("a-reused")).expect("copy");
    let snap = start_and_stop_after_a_pack(&env, "", &src, old_packs.len());
    forget_and_prune_behind_its_lock(&env, &first, &old_packs);
    refused_and_nothing_committed(&env, resume(snap), "a pack it reused was deleted");
}

/// The window after the last check and before the manifest: a snapshot
/// paused there (a test hook holds it) while a prune that took its lock for
/// stale deletes a pack it reuses must still fail, remove its manifest and
/// say so, never exit 0.
#[test]
fn snapshot_paused_after_its_last_check_fails_when_prune_deleted_a_pack_it_reused() {
    let env = Env::new();
    let old = random_files(&env, "old", 1, 2, 6);
    let first = env.snapshot(&old);
    let old_packs = packs_two_days_old(&env);
    let src = random_files(&env, "src", 1, 1, 7);
    std::fs::copy(old.join("f0"), src.join("a-reused")).expect("copy");
    let indexes = objects(&env.repo(), "index").len();
    let mut cmd = env.cmd(&["snapshot", src.to_str().expect("utf8")]);
    cmd.env("SNAPBACK_TEST_DELAY_BEFORE_MANIFEST_MS", "8000");
    // Its index is written after the last check, right before the pause.
    let child = spawn_until_written(&env, cmd, "index", indexes);
    forget_and_prune_behind_its_lock(&env, &first, &old_packs);
    let out = child
        .into_inner()
        .wait_with_output()
        .expect("wait snapshot");
    refused_and_nothing_committed(
        &env,
        out,
        "a pack it reused was deleted after its last check",
    );
}

/// Makes the packs in the repository two days old, as the store records it.
fn packs_two_days_old(env: &Env) -> Vec<PathBuf> {
    let packs = objects(&env.repo(), "data");
    for p in &packs {
        let st = Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(p)
            .status()
            .expect("touch");
        assert!(st.success());
    }
    packs
}

/// A prune that took the running snapshot's lock for stale (its lock is
/// removed), after `first`, the only committed snapshot, was forgotten:
/// `old_packs` go.
fn forget_and_prune_behind_its_lock(env: &Env, first: &str, old_packs: &[PathBuf]) {
    for l in objects(&env.repo(), "locks") {
        std::fs::remove_file(l).expect("rm lock");
    }
    let manifest = objects(&env.repo(), "snapshots");
    assert_eq!(
        manifest.len(),
        1,
        "the running snapshot has no manifest yet"
    );
    assert!(manifest[0].to_string_lossy().contains(&first[..8]));
    std::fs::remove_file(&manifest[0]).expect("forget");
    env.ok(&["prune", "--lock-wait", "2"]);
    assert!(
        old_packs.iter().all(|p| !p.exists()),
        "the old unreferenced packs are pruned"
    );
}
