//! The documented cron setup (docs/cron/snapback.crontab) is quiet: run as
//! cron runs it (no terminal, `-q`), every job prints nothing on success, and
//! still prints its warnings and errors.

use std::process::{Output, Stdio};

use snapback_testkit::{stderr, stdout, Env};

/// Runs like cron: stdin, stdout and stderr are not terminals.
fn cron(env: &Env, cfg: &std::path::Path, args: &[&str]) -> Output {
    env.cmd(&[&["-q", "--config", cfg.to_str().expect("utf8")][..], args].concat())
        .stdin(Stdio::null())
        .output()
        .expect("run")
}

fn assert_silent(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(out));
    assert_eq!(
        (stdout(out).as_str(), stderr(out).as_str()),
        ("", ""),
        "{what} prints nothing on success"
    );
}

#[test]
fn cron_jobs_with_q_print_nothing_on_success_and_speak_on_failure() {
    let env = Env::new();
    let db = env.path("app.db");
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES (1), (2);")
        .expect("schema");
    drop(c);
    let cfg = env.path("snapback.toml");
    std::fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\n[[source]]\npath = \"{}\"\n[source.retention]\nkeep_last = 1\n",
            env.repo().display(),
            db.display()
        ),
    )
    .expect("write");
    for _ in 0..3 {
        assert_silent(&cron(&env, &cfg, &["snapshot"]), "snapshot");
    }
    assert_silent(&cron(&env, &cfg, &["check"]), "check");
    assert_silent(
        &cron(&env, &cfg, &["check", "--read-data"]),
        "check --read-data",
    );
    assert_silent(&cron(&env, &cfg, &["forget", "--prune"]), "forget --prune");
    assert_eq!(env.snapshots_json().len(), 1, "forget did its work");
    // Results are still there when asked for.
    let out = cron(&env, &cfg, &["--json", "snapshot"]);
    assert!(stdout(&out).contains("\"short_id\""), "--json still prints");
    let out = cron(&env, &cfg, &["forget", "--dry-run"]);
    assert!(
        stdout(&out).contains("keep"),
        "a dry run still shows its plan"
    );

    // A warning is printed under -q (a symlink is not captured).
    let dir = env.path("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("f"), "x").expect("write");
    std::os::unix::fs::symlink("f", dir.join("link")).expect("symlink");
    let out = cron(&env, &cfg, &["snapshot", dir.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("skipping"),
        "the warning: {}",
        stderr(&out)
    );

    // Failures speak.
    snapback_testkit::flip_byte_in_largest_pack(&env.repo());
    let out = cron(&env, &cfg, &["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        !stdout(&out).is_empty() && !stderr(&out).is_empty(),
        "check reports damage"
    );
    std::fs::remove_file(&db).expect("rm");
    let out = cron(&env, &cfg, &["snapshot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("error"), "{}", stderr(&out));
    let out = std::process::Command::new(snapback_testkit::bin())
        .args(["-q", "--repo"])
        .arg(env.path("no-repo"))
        .args(["forget", "--keep-last", "1", "--prune"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        !stderr(&out).is_empty(),
        "forget --prune reports its failure"
    );
}
