//! Messages an operator reads: plain words, the right exit code, each cause
//! once, and no secret repeated.

use snapback_testkit::{stderr, stdout, Env};

#[test]
fn invalid_durations_exit_2_and_name_the_units() {
    let env = Env::new();
    for args in [
        &["forget", "--keep-within", "1mo"][..],
        &["forget", "--keep-within", "5x"][..],
        &["status", "--max-age", "12"][..],
    ] {
        let out = env.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("d (days)"),
            "{args:?}: the units are named: {err}"
        );
    }
    let err = stderr(&env.run(&["forget", "--keep-within", "1mo"]));
    assert!(err.contains("months have no fixed length"), "{err}");
    assert!(!err.contains("expected a number before 'o'"), "{err}");
}

#[test]
fn every_duration_flag_takes_the_one_syntax_and_refuses_months_and_years() {
    let env = Env::new();
    // Flags that took seconds take a duration, and still a bare number.
    for wait in ["2s", "1m30s", "0.5", "3"] {
        let out = env.run(&["check", "--lock-wait", wait]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "--lock-wait {wait}: {}",
            stderr(&out)
        );
    }
    for args in [
        &["check", "--lock-wait", "1y"][..],
        &["forget", "--keep-within", "2years"][..],
        &["status", "--max-age", "1M"][..],
        &["prune", "--min-pack-age", "1month"][..],
        &["mount", "--read-timeout", "1mo", "/nonexistent"][..],
    ] {
        let out = env.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("have no fixed length") && err.contains("use days (30d, 365d)"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn lock_message_keeps_its_timestamp_and_unlock_prints_plain_text() {
    let env = Env::new();
    let host = snapback_testkit::hostname();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    let live = format!(
        r#"{{"kind":"exclusive","host":"{}","pid":{},"time":"2099-01-01T00:00:00Z","command":"prune"}}"#,
        host,
        std::process::id()
    );
    std::fs::write(locks.join("00000000000000000002-live"), live).expect("write");
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let err = env.fails(&["snapshot", f.to_str().expect("utf8"), "--lock-wait", "1"]);
    assert!(
        err.contains("exclusive lock held by prune") && err.contains("since 2099-01-01T00:00:00Z"),
        "the timestamp keeps its case: {err}"
    );
    let out = env.run(&["unlock"]);
    assert_eq!(out.status.code(), Some(0));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("kept locks/00000000000000000002-live: exclusive lock held by prune (pid ")
            && text.contains("since 2099-01-01T00:00:00Z"),
        "{text}"
    );
    assert!(
        !text.contains("Some(") && !text.contains("(\""),
        "no Rust debug form: {text}"
    );
}

#[test]
fn missing_source_names_its_os_error_once() {
    let env = Env::new();
    let err = env.fails(&["snapshot", "/no/such/file"]);
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert!(err.contains("/no/such/file"), "{err}");
}

#[test]
fn s3_url_with_credentials_is_refused_without_repeating_the_secret() {
    let out = std::process::Command::new(snapback_testkit::bin())
        .args([
            "--repo",
            "s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket1/p",
            "snapshots",
        ])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("credentials"), "{err}");
    assert!(
        !err.contains("wJalr") && !err.contains("AKIAEXAMPLE"),
        "{err}"
    );
}

#[test]
fn whitespace_only_passphrase_is_refused_at_init_and_key_add() {
    let env = Env::bare();
    let pw = env.path("pw");
    std::fs::write(&pw, "   \n").expect("write");
    let mut init = snapback_testkit::init_encrypted();
    init.extend(["--password-file", pw.to_str().expect("utf8")]);
    let err = env.fails(&init);
    assert!(err.contains("only whitespace"), "{err}");
    assert!(!env.repo().join("config").exists(), "nothing was created");
    let mut env = Env::encrypted("a real passphrase");
    env.vars
        .push(("SNAPBACK_NEW_PASSWORD".into(), "  \t ".into()));
    let mut add = vec!["key", "add"];
    add.extend(snapback_testkit::CHEAP_KDF);
    let err = env.fails(&add);
    assert!(err.contains("only whitespace"), "{err}");
}

fn data_bytes(repo: &std::path::Path) -> u64 {
    let mut n = 0;
    for d in std::fs::read_dir(repo.join("data")).expect("data") {
        for f in std::fs::read_dir(d.expect("ent").path()).expect("dir") {
            n += f.expect("ent").metadata().expect("stat").len();
        }
    }
    n
}

#[test]
fn prune_reports_freed_bytes_apart_from_repacked_ones() {
    let env = Env::new();
    let f = env.path("f");
    // Incompressible bytes; the second version keeps the first quarter.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    let first = rnd(4 << 20);
    std::fs::write(&f, &first).expect("write");
    env.snapshot(&f);
    let mut second = first[..1 << 20].to_vec();
    second.extend(rnd(3 << 20));
    std::fs::write(&f, &second).expect("write");
    env.snapshot(&f);
    env.ok(&["forget", "--keep-last", "1"]);
    let before = data_bytes(&env.repo());
    let out = env.ok(&["--json", "prune", "--min-pack-age", "0s"]);
    let after = data_bytes(&env.repo());
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let r = &v["report"];
    assert!(
        r["packs_written"].as_u64().expect("n") > 0,
        "a repack happened: {v}"
    );
    let deleted = r["bytes_deleted"].as_u64().expect("deleted");
    let written = r["bytes_written"].as_u64().expect("written");
    let freed = r["bytes_freed"].as_u64().expect("freed");
    assert_eq!(
        freed,
        before - after,
        "freed is what the repository shrank by: {v}"
    );
    assert_eq!(deleted - written, freed, "{v}");
    assert!(written > 0 && deleted > freed, "{v}");
    let out = env.run(&[
        "forget",
        "--keep-last",
        "1",
        "--prune",
        "--min-pack-age",
        "0s",
    ]);
    assert!(stderr(&out).contains("freed"), "{}", stderr(&out));
    assert_eq!(
        env.ok(&[
            "restore",
            "latest",
            env.path("back").to_str().expect("utf8")
        ]),
        ""
    );
    assert_eq!(std::fs::read(env.path("back")).expect("read"), second);
}

#[test]
fn selector_messages_name_what_a_snapshot_holds() {
    let env = Env::new();
    let dir = env.path("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..13 {
        std::fs::write(dir.join(format!("f{i:02}")), format!("{i}")).expect("write");
    }
    let id = env.snapshot(&dir);
    // The "it holds:" list stops at 10 and says how many more.
    let err = env.fails(&[
        "restore",
        &id[..8],
        env.path("out").to_str().expect("utf8"),
        "--path",
        "/nowhere",
    ]);
    assert!(err.contains("f09") && !err.contains("f10"), "{err}");
    assert!(err.contains("… and 3 more"), "{err}");

    // An id that exists but does not hold the database asked for.
    let a = env.path("a.db");
    let b = env.path("b.db");
    for p in [&a, &b] {
        let c = rusqlite::Connection::open(p).expect("open");
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("schema");
    }
    let ida = env.snapshot(&a);
    env.snapshot(&b);
    let err = env.fails(&["diff", &ida[..8], b.to_str().expect("utf8")]);
    assert!(
        err.contains("exists but does not hold the file") && err.contains("a.db"),
        "{err}"
    );
    assert!(!err.contains("no snapshot id starts with"), "{err}");

    // Prefixes of fewer than 4 hex digits are refused, as documented.
    let out = env.run(&["restore", &id[..3], env.path("o2").to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("at least 4 hex digits"),
        "{}",
        stderr(&out)
    );
    env.ok(&["restore", &id[..4], env.path("o3").to_str().expect("utf8")]);
}

#[test]
fn mounting_over_a_non_empty_directory_warns() {
    let env = Env::bare();
    let mp = env.path("mp");
    std::fs::create_dir(&mp).expect("mkdir");
    std::fs::write(mp.join("precious"), "x").expect("write");
    // An empty directory, not a repository: the warning comes before the
    // repository is opened, and the mount then fails (no FUSE needed).
    std::fs::create_dir(env.repo()).expect("mkdir");
    let out = env.run(&["mount", mp.to_str().expect("utf8")]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("is not empty") && err.contains("hidden"),
        "{err}"
    );
    let empty = env.path("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = stderr(&env.run(&["mount", empty.to_str().expect("utf8")]));
    assert!(!err.contains("is not empty"), "{err}");
}
