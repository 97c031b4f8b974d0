//! Bad input gets a clear message and a non-zero exit, and writes nothing.

use snapback_testkit::{stderr, Env};

#[test]
fn missing_path_is_a_clear_error() {
    let env = Env::new();
    let err = env.fails(&["snapshot", "/no/such/path.db"]);
    assert!(
        err.contains("/no/such/path.db") && err.contains("exist"),
        "{err}"
    );
    assert!(env.snapshots_json().is_empty(), "nothing was committed");
}

#[test]
fn fake_sqlite_file_is_refused() {
    let env = Env::new();
    let p = env.path("fake.db");
    let mut b = b"SQLite format 3\0".to_vec();
    b.extend(std::iter::repeat_n(0xAB, 8192));
    std::fs::write(&p, b).expect("write");
    let err = env.fails(&["snapshot", p.to_str().expect("utf8")]);
    assert!(
        err.contains("fake.db") && err.contains("SQLite"),
        "the message names the file and says why: {err}"
    );
    assert!(env.snapshots_json().is_empty(), "nothing was committed");
}

#[test]
fn uninitialised_repository_is_a_clear_error() {
    let env = Env::bare();
    std::fs::create_dir_all(env.repo()).expect("mkdir");
    let f = env.path("f");
    std::fs::write(&f, "x").expect("write");
    let out = env.run(&["snapshot", f.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(10), "no repository: exit 10");
    let err = stderr(&out);
    assert!(
        err.contains("snapback init"),
        "the message says what to do: {err}"
    );
    let out = env.run(&["snapshots"]);
    assert!(!out.status.success());
    // A repository directory that does not exist at all.
    let out = snapback_testkit::Env::bare().run(&["check"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("repo"), "{}", stderr(&out));
}

#[test]
fn init_twice_is_refused() {
    let env = Env::new();
    let err = env.fails(&["init"]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn a_prefix_shorter_than_four_digits_is_refused_even_when_it_matches() {
    // A prefix must have 4 hex digits (as the docs say); a 4-digit prefix
    // shared by two snapshots is the core's unit test (repo.rs, "ambiguous").
    let env = Env::new();
    let f = env.path("f");
    // 17 snapshots must share a first hex digit somewhere (pigeonhole).
    let mut ids = vec![];
    for i in 0..17 {
        std::fs::write(&f, format!("{i}")).expect("write");
        ids.push(env.snapshot(&f));
    }
    let digit = (0..16u32)
        .map(|d| char::from_digit(d, 16).expect("digit"))
        .find(|d| ids.iter().filter(|id| id.starts_with(*d)).count() >= 2)
        .expect("a shared digit");
    let err = env.fails(&[
        "restore",
        &digit.to_string(),
        env.path("out").to_str().expect("utf8"),
    ]);
    assert!(
        err.contains("too short") && err.contains("at least 4"),
        "{err}"
    );
    assert!(!env.path("out").exists());
}

#[test]
fn malformed_selectors_and_urls() {
    let env = Env::new();
    for sel in ["@yesterday", "not-hex!", "@2026-13-01T00:00:00Z"] {
        let err = env.fails(&["restore", sel, env.path("o").to_str().expect("utf8")]);
        assert!(
            err.contains("selector") || err.contains("RFC 3339"),
            "{sel}: {err}"
        );
    }
    let out = std::process::Command::new(snapback_testkit::bin())
        .args(["--repo", "ftp://x/y", "snapshots"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unsupported repository URL"),
        "{}",
        stderr(&out)
    );
    let out = std::process::Command::new(snapback_testkit::bin())
        .args(["snapshots"])
        .env_remove("SNAPBACK_REPO")
        .output()
        .expect("run");
    assert!(stderr(&out).contains("--repo"), "{}", stderr(&out));
}

#[test]
fn mistyped_s3_url_creates_no_local_repository() {
    let dir = tempfile::tempdir().expect("tmp");
    for bad in ["s3:/bucket1/p", "s3:bucket1/p"] {
        let out = std::process::Command::new(snapback_testkit::bin())
            .args(["--repo", bad, "--s3-endpoint", "http://127.0.0.1:9", "init"])
            .current_dir(dir.path())
            .env_remove("SNAPBACK_REPO")
            .output()
            .expect("run");
        let err = snapback_testkit::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{bad} is refused: {err}");
        assert!(
            err.contains("s3://bucket1/p"),
            "{bad}: shows the right form: {err}"
        );
        assert!(
            std::fs::read_dir(dir.path()).expect("ls").next().is_none(),
            "{bad}: nothing was created in the working directory"
        );
    }
}
