//! Operations: retention, prune (also concurrently with snapshots), locks,
//! status and monitoring, the heartbeat, and the config file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapback_testkit::{stderr, stdout, Env};

fn write_rows(db: &std::path::Path, from: i64, n: i64) {
    let c = rusqlite::Connection::open(db).expect("open");
    c.busy_timeout(Duration::from_secs(30)).expect("busy");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .expect("schema");
    let tx = c.unchecked_transaction().expect("tx");
    for i in from..from + n {
        let v: Vec<u8> = (0..300).map(|j| ((i * 7 + j) % 251) as u8).collect();
        tx.execute(
            "INSERT OR REPLACE INTO t(id, v) VALUES (?1, ?2)",
            (i % 5000, v),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

fn repo_bytes(env: &Env) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        let m = e.metadata().expect("meta");
                        if m.is_dir() {
                            walk(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&env.repo().join("data"))
}

#[test]
fn forget_dry_run_refusal_and_prune() {
    let env = Env::new();
    let db = env.path("app.db");
    for i in 0..5 {
        write_rows(&db, i * 3000, 3000);
        env.snapshot(&db);
    }
    let out = env.ok(&["forget", "--keep-last", "2", "--dry-run"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("remove "))
            .count(),
        3,
        "{out}"
    );
    assert_eq!(env.snapshots_json().len(), 5, "a dry run removes nothing");
    let err = env.fails(&["forget", "--keep-tag", "dialy"]);
    assert!(
        err.contains("would remove all"),
        "a mistyped tag never empties the repository: {err}"
    );
    assert_eq!(env.snapshots_json().len(), 5);
    let err = env.fails(&["forget"]);
    assert!(err.contains("no keep rule"), "{err}");

    let before = repo_bytes(&env);
    env.ok(&[
        "forget",
        "--keep-last",
        "2",
        "--prune",
        "--min-pack-age",
        "0s",
    ]);
    let after = repo_bytes(&env);
    assert_eq!(env.snapshots_json().len(), 2);
    assert!(after < before, "prune freed space: {before} -> {after}");
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for s in env.snapshots_json() {
        let dest = env.path(&format!("r-{}.db", s["short_id"].as_str().expect("id")));
        env.ok(&[
            "restore",
            s["id"].as_str().expect("id"),
            dest.to_str().expect("utf8"),
        ]);
        assert_eq!(snapback_testkit::integrity(&dest), "ok");
    }
    // Prune again: nothing left to do.
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "prune", "--min-pack-age", "0s"])).expect("json");
    assert_eq!(v["report"]["packs_deleted"], 0, "{v}");
}

#[test]
fn snapshot_and_prune_loop_concurrently_without_losing_data() {
    let env = Arc::new(Env::new());
    let db = env.path("app.db");
    write_rows(&db, 0, 5000);
    env.snapshot(&db);
    let stop = Arc::new(AtomicBool::new(false));
    let snaps = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(25);
    let snapper = {
        let (env, stop, snaps, db) = (env.clone(), stop.clone(), snaps.clone(), db.clone());
        std::thread::spawn(move || {
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 40 {
                write_rows(&db, i * 800, 800);
                let out = env.run(&["snapshot", db.to_str().expect("utf8"), "--lock-wait", "60"]);
                assert!(out.status.success(), "snapshot {i}: {}", stderr(&out));
                snaps.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let mut prunes = 0;
    while Instant::now() < deadline && prunes < 15 {
        let out = env.run(&["forget", "--keep-last", "3", "--prune", "--lock-wait", "60"]);
        assert!(out.status.success(), "forget+prune: {}", stderr(&out));
        prunes += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    snapper.join().expect("snapshot thread");
    assert!(
        snaps.load(Ordering::SeqCst) >= 3 && prunes >= 3,
        "both loops ran ({} snapshots, {prunes} prunes)",
        snaps.load(Ordering::SeqCst)
    );
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for s in env.snapshots_json() {
        let dest = env.path(&format!("c-{}.db", s["short_id"].as_str().expect("id")));
        env.ok(&[
            "restore",
            s["id"].as_str().expect("id"),
            dest.to_str().expect("utf8"),
        ]);
        assert_eq!(snapback_testkit::integrity(&dest), "ok");
    }
}

#[test]
fn stale_locks_are_detected_and_unlock_removes_only_them() {
    let env = Env::new();
    let host = snapback_testkit::hostname();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    // An exclusive lock of a process on this host that no longer exists.
    let dead = format!(
        r#"{{"kind":"exclusive","host":"{}","pid":999999999,"time":"2026-01-01T00:00:00Z","command":"prune"}}"#,
        host
    );
    std::fs::write(locks.join("00000000000000000001-dead"), dead).expect("write");
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    env.ok(&["snapshot", f.to_str().expect("utf8"), "--lock-wait", "2"]);
    // A live exclusive lock (this test process) blocks a snapshot, with a clear message.
    let live = format!(
        r#"{{"kind":"exclusive","host":"{}","pid":{},"time":"{}","command":"prune"}}"#,
        host,
        std::process::id(),
        "2099-01-01T00:00:00Z"
    );
    std::fs::write(locks.join("00000000000000000002-live"), live).expect("write");
    let err = env.fails(&["snapshot", f.to_str().expect("utf8"), "--lock-wait", "1"]);
    assert!(err.contains("locked") && err.contains("prune"), "{err}");
    let out = env.ok(&["unlock"]);
    assert!(
        out.contains("removed locks/00000000000000000001-dead"),
        "{out}"
    );
    assert!(
        locks.join("00000000000000000002-live").exists(),
        "a live lock survives plain unlock"
    );
    env.ok(&["unlock", "--force"]);
    assert!(!locks.join("00000000000000000002-live").exists());
    env.ok(&["snapshot", f.to_str().expect("utf8"), "--lock-wait", "1"]);
}

#[test]
fn status_reports_age_check_results_and_prometheus() {
    let env = Env::new();
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    env.snapshot(&f);
    let out = env.run(&["status", "--max-age", "1h"]);
    assert!(out.status.success(), "fresh snapshot: {}", stdout(&out));
    assert!(
        stdout(&out).contains("never"),
        "no check has run yet: {}",
        stdout(&out)
    );
    std::thread::sleep(Duration::from_millis(1100));
    let out = env.run(&["status", "--max-age", "1s"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a stale source exits 3: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("STALE"));

    env.ok(&["check"]);
    let prom = env.ok(&["status", "--prometheus"]);
    for m in [
        "snapback_last_snapshot_timestamp_seconds{source=",
        "snapback_last_check_success{kind=\"structure\"} 1",
        "snapback_repository_size_bytes",
        "snapback_last_snapshot_added_bytes",
    ] {
        assert!(prom.contains(m), "{m} in {prom}");
    }
    let file = env.path("snapback.prom");
    env.ok(&["status", "--prometheus", file.to_str().expect("utf8")]);
    assert!(std::fs::read_to_string(&file)
        .expect("prom file")
        .contains("# TYPE snapback_snapshots gauge"));

    // A failed check makes status fail.
    snapback_testkit::flip_byte_in_largest_pack(&env.repo());
    assert_eq!(env.run(&["check", "--read-data"]).status.code(), Some(3));
    let out = env.run(&["--json", "status"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["last_check"]["ok"], false);
}

#[test]
fn heartbeat_is_called_only_after_a_committed_snapshot() {
    let env = Env::new();
    let hb = snapback_testkit::heartbeat::Endpoint::ok();
    let url = hb.url("/ping");
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    env.ok(&[
        "snapshot",
        f.to_str().expect("utf8"),
        "--heartbeat-url",
        &url,
    ]);
    assert_eq!(hb.hits(), 1);
    env.fails(&["snapshot", "/no/such/file", "--heartbeat-url", &url]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(hb.hits(), 1, "a failed snapshot never calls the heartbeat");
}

#[test]
fn config_file_names_repository_sources_and_retention() {
    let env = Env::new();
    let a = env.path("a.db");
    let b = env.path("b.txt");
    write_rows(&a, 0, 100);
    std::fs::write(&b, "b").expect("write");
    let cfg = env.path("snapback.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[[source]]\npath = \"{}\"\ntags = [\"db\"]\n[source.retention]\nkeep_last = 1\n[[source]]\npath = \"{}\"\n[source.retention]\nkeep_last = 2\n",
            env.repo().display(),
            a.display(),
            b.display()
        ),
    )
    .expect("write");
    let run = |args: &[&str]| {
        std::process::Command::new(snapback_testkit::bin())
            .args(["--config", cfg.to_str().expect("utf8")])
            .args(args)
            .env_remove("SNAPBACK_REPO")
            .output()
            .expect("run")
    };
    for _ in 0..3 {
        let out = run(&["snapshot"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            stdout(&out).lines().count(),
            2,
            "one snapshot per configured source"
        );
    }
    assert_eq!(env.snapshots_json().len(), 6);
    let out = run(&["forget"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = env.snapshots_json();
    assert_eq!(left.len(), 3, "keep_last 1 for a.db and 2 for b.txt");
    assert_eq!(left.iter().filter(|s| s["tags"][0] == "db").count(), 1);
}
