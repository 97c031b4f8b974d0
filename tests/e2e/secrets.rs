//! Secrets hygiene: a local repository is private to its owner (files 0600,
//! directories 0700) after snapshot and prune; and a whole S3 session at
//! debug level with JSON logs never prints the secret access key or the
//! heartbeat URL's token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::rel_util::{damage_rows, make_db, objects};
use snapback_testkit::{bin, stderr, stdout, Env};

fn modes(root: &Path) -> Vec<(String, u32, bool)> {
    fn walk(p: &Path, out: &mut Vec<(String, u32, bool)>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let m = e.metadata().expect("meta");
            let path = e.path();
            out.push((
                path.display().to_string(),
                m.permissions().mode() & 0o777,
                m.is_dir(),
            ));
            if m.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = vec![(
        root.display().to_string(),
        std::fs::metadata(root).expect("meta").permissions().mode() & 0o777,
        true,
    )];
    walk(root, &mut out);
    out
}

#[test]
fn local_repository_is_private_after_snapshot_and_prune() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 2000);
    for seed in 1..=4 {
        damage_rows(&db, seed, 300);
        env.snapshot(&db);
    }
    env.ok(&["check"]);
    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    let all = modes(&env.repo());
    assert!(
        all.iter().filter(|(_, _, d)| !d).count() >= 5,
        "objects of every kind were checked: {all:?}"
    );
    for kind in ["config", "data", "index", "snapshots", "checks"] {
        assert!(
            all.iter()
                .any(|(p, _, _)| p.contains(&format!("/repo/{kind}"))),
            "{kind} exists"
        );
    }
    let loose: Vec<_> = all
        .iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .collect();
    assert!(
        loose.is_empty(),
        "every file is 0600 and every directory 0700: {loose:?}"
    );
    assert!(!objects(&env.repo(), "data").is_empty());
}

#[test]
fn s3_session_at_debug_level_never_prints_secrets() {
    let server = snapback_testkit::s3::server();
    let vars = server.vars();
    let secret = server.secret_key.clone();
    assert!(secret.len() >= 8, "a real secret to look for");
    let token = "hb-token-5f2c9e7a1d3b";
    let endpoint = snapback_testkit::heartbeat::Endpoint::ok();
    let hb = endpoint.url(&format!("/ping/{token}"));
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!(
        "s3://{}/secrets-{}",
        server.bucket,
        dir.path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .replace('.', "")
    );
    let db = dir.path().join("app.db");
    make_db(&db, 500);
    let dbs = db.to_str().expect("utf8");
    let restored = dir.path().join("restored.db");
    let run = |args: &[&str]| -> Output {
        let mut c = Command::new(bin());
        for (k, v) in &vars {
            c.env(k, v);
        }
        c.env_remove("SNAPBACK_REPO")
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args([
                "-vv",
                "--log-format",
                "json",
                "--repo",
                &url,
                "--s3-endpoint",
                &server.endpoint,
                "--s3-path-style",
            ])
            .args(args)
            .output()
            .expect("run")
    };
    let session: Vec<Vec<&str>> = vec![
        vec!["init"],
        vec!["snapshot", dbs, "--heartbeat-url", &hb],
        vec!["snapshot", dbs, "--heartbeat-url", &hb],
        vec!["snapshots"],
        vec!["check", "--read-data"],
        vec!["restore", "latest", restored.to_str().expect("utf8")],
        vec!["forget", "--keep-last", "1", "--prune"],
        vec!["status"],
    ];
    let mut all = String::new();
    for args in &session {
        let out = run(args);
        assert!(out.status.success(), "snapback {args:?}: {}", stderr(&out));
        all.push_str(&stdout(&out));
        all.push_str(&stderr(&out));
    }
    // A failing heartbeat, whose error is printed.
    let dead = format!("http://127.0.0.1:9/ping/{token}");
    let out = run(&["snapshot", dbs, "--heartbeat-url", &dead]);
    assert!(!out.status.success(), "a failed heartbeat is an error");
    all.push_str(&stdout(&out));
    all.push_str(&stderr(&out));

    assert_eq!(endpoint.hits(), 2, "the heartbeat was called");
    assert!(
        all.lines().filter(|l| l.starts_with('{')).count() > 20,
        "JSON debug logs were produced: {} bytes",
        all.len()
    );
    assert!(
        !all.contains(&secret),
        "the secret access key never appears in the output"
    );
    assert!(
        !all.contains(token),
        "the heartbeat URL's token never appears in the output"
    );
}
