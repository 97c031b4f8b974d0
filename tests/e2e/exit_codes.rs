//! Exit codes and the `--json` error object (docs/scripting.md): each kind
//! of failure has its code, driven through the real binary.

use std::process::Output;

use snapback_testkit::{hostname, stderr, stdout, Env};

/// The one JSON error object on stderr (the line that parses as JSON).
fn error_object(out: &Output) -> serde_json::Value {
    let objects: Vec<serde_json::Value> = stderr(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        objects.len(),
        1,
        "one JSON object on stderr: {}",
        stderr(out)
    );
    objects[0]["error"].clone()
}

/// Runs `args` with and without `--json`: the same exit code, and under
/// `--json` an error object of that kind and code.
fn fails_with(env: &Env, args: &[&str], code: i32, kind: &str) -> String {
    let out = env.run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: exit {code}: {}",
        stderr(&out)
    );
    let json = env.run(&[&["--json"][..], args].concat());
    assert_eq!(
        json.status.code(),
        Some(code),
        "--json {args:?}: {}",
        stderr(&json)
    );
    let e = error_object(&json);
    assert_eq!(e["kind"], kind, "{e}");
    assert_eq!(e["exit_code"], code, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert!(e["causes"].is_array(), "{e}");
    assert!(
        stdout(&json).trim().is_empty(),
        "nothing on stdout: {}",
        stdout(&json)
    );
    stderr(&out)
}

#[test]
fn missing_repository_exits_10() {
    // No directory at all, and a directory without a config.
    let env = Env::bare();
    let err = fails_with(&env, &["snapshots"], 10, "no_repository");
    assert!(err.contains("snapback init"), "says what to do: {err}");
    std::fs::create_dir_all(env.repo()).expect("mkdir");
    fails_with(&env, &["check"], 10, "no_repository");
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    fails_with(
        &env,
        &["snapshot", f.to_str().expect("utf8")],
        10,
        "no_repository",
    );
}

#[test]
fn held_lock_exits_11() {
    let env = Env::new();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    // A live exclusive lock: this test process, on this host.
    let live = format!(
        r#"{{"kind":"exclusive","host":"{}","pid":{},"time":"2099-01-01T00:00:00Z","command":"prune"}}"#,
        hostname(),
        std::process::id(),
    );
    std::fs::write(locks.join("00000000000000000002-live"), live).expect("write");
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let err = fails_with(
        &env,
        &["snapshot", f.to_str().expect("utf8"), "--lock-wait", "1"],
        11,
        "locked",
    );
    assert!(err.contains("locked") && err.contains("prune"), "{err}");
    fails_with(&env, &["prune", "--lock-wait", "1"], 11, "locked");
    // Several sources from the config, every one refused by the lock: 11,
    // and one JSON document on stdout naming both failures.
    let g = env.path("g");
    std::fs::write(&g, "y").expect("write");
    let cfg = env.path("snapback.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\npath = \"{}\"\n[[source]]\npath = \"{}\"\n",
            f.display(),
            g.display()
        ),
    )
    .expect("write");
    let cfg = cfg.to_str().expect("utf8");
    let out = env.run(&["--json", "--config", cfg, "snapshot", "--lock-wait", "1"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one document");
    assert_eq!(doc["snapshots"].as_array().map(Vec::len), Some(0), "{doc}");
    assert_eq!(doc["failed"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(doc["failed"][0]["error"]["kind"], "locked", "{doc}");
}

#[test]
fn wrong_passphrase_exits_12() {
    let mut env = Env::encrypted("the right passphrase");
    env.vars = vec![("SNAPBACK_PASSWORD".into(), "not it".into())];
    let err = fails_with(&env, &["snapshots"], 12, "wrong_passphrase");
    assert!(err.contains("opens none"), "{err}");
    // No passphrase at all (and no terminal) is not a wrong one: exit 1.
    env.vars.clear();
    let out = env
        .cmd(&["snapshots"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn json_error_object_on_stderr_for_usage_and_io_errors() {
    let env = Env::new();
    // A flag clap does not know: exit 2, kind usage.
    let out = env.run(&["--json", "snapshots", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let e = error_object(&out);
    assert_eq!(e["kind"], "usage", "{e}");
    assert_eq!(e["exit_code"], 2, "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("--no-such-flag")),
        "{e}"
    );
    // A value snapback checks itself: exit 2 too.
    fails_with(&env, &["forget", "--keep-within", "1mo"], 2, "usage");
    // A path that does not exist: exit 1, its cause said once, and under
    // --json the message and the causes as the text shows them.
    let missing = env.path("missing.db");
    let err = fails_with(
        &env,
        &["snapshot", missing.to_str().expect("utf8")],
        1,
        "io",
    );
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause is printed once: {err}"
    );
    // Without --json, no JSON object.
    let out = env.run(&["snapshots", "--no-such-flag"]);
    assert!(!stderr(&out).contains("\"error\""), "{}", stderr(&out));
}

#[test]
fn forget_prune_json_prints_one_document() {
    let env = Env::new();
    let f = env.path("f");
    for i in 0..3 {
        std::fs::write(&f, format!("version {i}")).expect("write");
        env.snapshot(&f);
    }
    let out = env.ok(&[
        "--json",
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--min-pack-age",
        "0s",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["removed"], 2, "{doc}");
    assert_eq!(
        doc["groups"][0]["remove"].as_array().map(Vec::len),
        Some(2),
        "{doc}"
    );
    assert!(doc["prune"]["report"]["packs_deleted"].is_u64(), "{doc}");
    assert_eq!(doc["prune"]["dry_run"], false, "{doc}");
    assert_eq!(env.snapshots_json().len(), 1);
}

#[test]
fn no_repository_given_exits_2_and_names_the_three_ways() {
    let env = Env::new();
    let mut c = std::process::Command::new(snapback_testkit::bin());
    for k in snapback_testkit::ISOLATED_VARS {
        c.env_remove(k);
    }
    c.env_remove("SNAPBACK_REPO")
        .env("XDG_CONFIG_HOME", env.path("no-config"))
        .env("XDG_STATE_HOME", env.path("state"))
        .current_dir(env.dir.path())
        .arg("snapshots");
    let out = c.output().expect("run snapback");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for way in ["--repo", "SNAPBACK_REPO", "repo = ", "config file"] {
        assert!(err.contains(way), "names {way}: {err}");
    }
}

/// The user's mistakes are `bad_input` (exit 1, with what to do), never
/// `internal`, which is kept for failures of snapback itself.
#[test]
fn bad_input_is_kind_bad_input_never_internal() {
    let env = Env::new();
    let db = env.path("app.db");
    snapback_testkit::db::make_db(&db, 100);
    let snap = env.snapshot(&db);
    let exists = env.path("exists.db");
    std::fs::write(&exists, "x").expect("write");
    let dir = env.path("a-directory");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let missing = env.path("missing.db");
    let script = env.path("bad.toml");
    std::fs::write(&script, "snapshot = \"latest\"\n").expect("write");
    let s = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["forget".into()], "keep rule"),
        (
            vec!["forget".into(), "--keep-tag".into(), "no-such-tag".into()],
            "--allow-empty",
        ),
        (vec!["restore".into(), snap.clone(), s(&exists)], "--force"),
        (
            vec!["restore".into(), snap.clone(), s(&dir), "--delta".into()],
            "is a directory",
        ),
        (
            vec![
                "restore".into(),
                snap.clone(),
                s(&missing),
                "--in-place".into(),
            ],
            "does not exist",
        ),
        (
            vec!["restore".into(), "no-such-snapshot".into(), s(&missing)],
            "selector",
        ),
        (vec!["key".into(), "list".into()], "not encrypted"),
        (vec!["repair".into(), s(&script)], "live"),
    ];
    for (args, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails_with(&env, &args, 1, "bad_input");
        assert!(err.contains(says), "{args:?} says {says:?}: {err}");
        assert!(!err.contains("internal error"), "{args:?}: {err}");
    }
    assert!(!missing.exists(), "nothing was written");
}
