//! Messages an operator reads: plain words, the right exit code, each cause
//! once, and no secret repeated.

use crate::util::{stderr, stdout, Env};

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
fn lock_message_keeps_its_timestamp_and_unlock_prints_plain_text() {
    let env = Env::new();
    let host = String::from_utf8(
        std::process::Command::new("hostname")
            .output()
            .expect("hostname")
            .stdout,
    )
    .expect("utf8");
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).expect("mkdir");
    let live = format!(
        r#"{{"kind":"exclusive","host":"{}","pid":{},"time":"2099-01-01T00:00:00Z","command":"prune"}}"#,
        host.trim(),
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
