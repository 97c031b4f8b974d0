//! Plain files round-trip exactly: empty, sparse, large, binary.

use std::io::{Seek, SeekFrom, Write};

use snapback_testkit::{random_bytes, Env};

#[test]
fn plain_files_roundtrip() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    std::fs::write(src.join("empty"), b"").expect("empty");
    std::fs::write(src.join("small.txt"), b"hello, world\n").expect("small");
    let big = random_bytes(24 << 20, 7);
    std::fs::write(src.join("sub/large.bin"), &big).expect("large");
    let mut sparse = std::fs::File::create(src.join("sub/deeper/sparse")).expect("sparse");
    sparse.seek(SeekFrom::Start(40 << 20)).expect("seek");
    sparse
        .write_all(b"tail after a 40 MiB hole")
        .expect("write");
    drop(sparse);
    // A file that merely mentions SQLite is not a database.
    std::fs::write(src.join("notes-wal"), b"not a WAL").expect("notes");

    let id = env.snapshot(&src);
    let out = env.path("out/");
    env.ok(&["restore", &id, out.to_str().expect("utf8")]);
    let restored = env.path("out").join(src.strip_prefix("/").expect("abs"));
    for rel in [
        "empty",
        "small.txt",
        "sub/large.bin",
        "sub/deeper/sparse",
        "notes-wal",
    ] {
        let a = std::fs::read(src.join(rel)).expect("src");
        let b = std::fs::read(restored.join(rel)).unwrap_or_else(|e| panic!("restored {rel}: {e}"));
        assert!(
            a == b,
            "{rel} round-trips byte for byte ({} vs {} bytes)",
            a.len(),
            b.len()
        );
    }
    // A second snapshot of the same tree stores nothing new.
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "snapshot", src.to_str().expect("utf8")]))
            .expect("json");
    assert_eq!(v["bytes_added"], 0, "{v}");
    // Restore refuses to overwrite without --force, then overwrites with it.
    let err = env.fails(&["restore", &id, out.to_str().expect("utf8")]);
    assert!(err.contains("--force"), "{err}");
    std::fs::write(restored.join("small.txt"), b"changed").expect("change");
    env.ok(&["restore", &id, out.to_str().expect("utf8"), "--force"]);
    assert_eq!(
        std::fs::read(restored.join("small.txt")).expect("read"),
        b"hello, world\n"
    );
}

#[test]
fn restore_single_file_with_path_filter() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a"), b"aaa").expect("a");
    std::fs::write(src.join("b"), b"bbb").expect("b");
    let id = env.snapshot(&src);
    let dest = env.path("only-b");
    env.ok(&[
        "restore",
        &id,
        dest.to_str().expect("utf8"),
        "--path",
        src.join("b").to_str().expect("utf8"),
    ]);
    assert_eq!(std::fs::read(&dest).expect("read"), b"bbb");
    let err = env.fails(&[
        "restore",
        &id,
        env.path("x").to_str().expect("utf8"),
        "--path",
        "/no/such/file",
    ]);
    assert!(err.contains("no"), "{err}");
}

#[test]
fn files_with_255_byte_names_restore() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    // NAME_MAX exactly for a plain file; for a SQLite database the longest
    // name whose NAME-journal still fits (SQLite needs it to write).
    let plain = "p".repeat(255);
    let db = format!("{}.db", "d".repeat(255 - "-journal".len() - 3));
    std::fs::write(src.join(&plain), b"the longest legal name").expect("write");
    let c = rusqlite::Connection::open(src.join(&db)).expect("db");
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42);")
        .expect("sql");
    drop(c);
    std::fs::write(src.join("short"), b"short").expect("write");
    let id = env.snapshot(&src);
    let out = env.path("out");
    env.ok(&["restore", &id, out.to_str().expect("utf8")]);
    let restored = out.join(src.strip_prefix("/").expect("abs"));
    for name in [&plain, &db, &"short".to_string()] {
        assert_eq!(
            std::fs::read(src.join(name)).expect("src"),
            std::fs::read(restored.join(name))
                .unwrap_or_else(|e| panic!("{}-byte name restored: {e}", name.len())),
        );
    }
    // Over an existing copy too (--force), where the side files are looked for.
    env.ok(&["restore", &id, out.to_str().expect("utf8"), "--force"]);
    let n: i64 = rusqlite::Connection::open(restored.join(&db))
        .expect("open")
        .query_row("SELECT x FROM t", [], |r| r.get(0))
        .expect("query");
    assert_eq!(n, 42);
}

#[test]
fn non_utf8_file_names_are_refused_never_merged() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let ff = src.join(std::ffi::OsStr::from_bytes(b"a\xff"));
    let fe = src.join(std::ffi::OsStr::from_bytes(b"a\xfe"));
    std::fs::write(&ff, b"first").expect("write");
    std::fs::write(&fe, b"second").expect("write");
    std::fs::write(src.join("ok"), b"fine").expect("write");
    let out = env.run(&["snapshot", src.to_str().expect("utf8")]);
    let err = snapback_testkit::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(
        err.contains("not valid UTF-8") && err.contains("nothing was committed"),
        "the error names the problem: {err}"
    );
    assert!(
        err.contains(r"a\xfe") || err.contains(r"a\xff"),
        "and the file, by its bytes: {err}"
    );
    assert!(
        env.snapshots_json().is_empty(),
        "no snapshot that would merge the two files"
    );
    // Without the offending names, the directory snapshots.
    std::fs::remove_file(&ff).expect("rm");
    std::fs::remove_file(&fe).expect("rm");
    env.snapshot(&src);
    assert_eq!(env.snapshots_json().len(), 1);
}

/// Format 1 keeps regular files only: an empty directory, a directory's own
/// mode and hard links are not kept, and `snapshot` says so in one warning;
/// every name of a hard-linked file still restores with its exact content.
#[test]
fn snapshot_warns_of_empty_dirs_dir_modes_and_hardlinks_and_linked_files_restore_exactly() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let src = env.path("tree");
    std::fs::create_dir_all(src.join("empty")).expect("mkdir");
    std::fs::create_dir_all(src.join("shared")).expect("mkdir");
    std::fs::create_dir_all(src.join("readonly")).expect("mkdir");
    std::fs::write(src.join("shared/x"), b"x").expect("write");
    std::fs::write(src.join("readonly/y"), b"y").expect("write");
    std::fs::set_permissions(src.join("shared"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    std::fs::set_permissions(src.join("readonly"), std::fs::Permissions::from_mode(0o555))
        .expect("chmod");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = random_bytes(300_000, 11);
    std::fs::write(src.join("a"), &data).expect("write");
    std::fs::hard_link(src.join("a"), src.join("b")).expect("link");
    std::fs::hard_link(src.join("a"), src.join("c")).expect("link");

    let out = env.run(&["snapshot", src.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", snapback_testkit::stderr(&out));
    let err = snapback_testkit::stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("not preserved in format 1"))
        .collect();
    assert_eq!(lines.len(), 1, "one warning line: {err}");
    for want in [
        "1 empty directory",
        "2 directories with a mode other than 0755 (0555, 1777",
        "1 hard-linked file(s) with 3 names",
    ] {
        assert!(lines[0].contains(want), "{want:?} in {}", lines[0]);
    }
    let id = snapback_testkit::stdout(&out).trim().to_string();

    let dest = env.path("out");
    env.ok(&["restore", &id, dest.to_str().expect("utf8")]);
    let restored = dest.join(src.strip_prefix("/").expect("abs"));
    for name in ["a", "b", "c"] {
        assert_eq!(
            std::fs::read(restored.join(name)).expect("restored"),
            data,
            "{name} restores exactly"
        );
    }
    assert_eq!(std::fs::read(restored.join("shared/x")).expect("x"), b"x");

    // A plain tree (0755 directories, no links, nothing empty) gets no warning.
    let plain = env.path("plain");
    std::fs::create_dir_all(plain.join("sub")).expect("mkdir");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(plain.join("sub"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(plain.join("sub/f"), b"f").expect("write");
    let out = env.run(&["snapshot", plain.to_str().expect("utf8")]);
    assert!(
        !snapback_testkit::stderr(&out).contains("not preserved"),
        "{}",
        snapback_testkit::stderr(&out)
    );
}
