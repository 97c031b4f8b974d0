//! Hostile and bad input, as a table: each row is an input, the command it
//! goes to, the exit code and a part of the message it must get, and
//! whether "nothing written" is checked (the repository's objects, the live
//! database's schema and rows, and the scratch directory are compared
//! before and after). docs/reliability.md renders this table.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rel_util::{make_db, objects, rows};
use snapback_testkit::{bin, stderr, stdout, Env};

/// One bad input.
struct Row {
    name: &'static str,
    /// Arguments after `--repo REPO` (or the whole command line with
    /// `own_repo`).
    args: Vec<String>,
    own_repo: bool,
    code: i32,
    message: &'static str,
    nothing_written: bool,
}

fn row(name: &'static str, args: &[&str], code: i32, message: &'static str) -> Row {
    Row {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        own_repo: false,
        code,
        message,
        nothing_written: true,
    }
}

/// What a row must not change.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    repo: Vec<(String, u64)>,
    live_schema: Vec<String>,
    live_rows: Vec<(i64, String)>,
    scratch: Vec<String>,
}

fn fingerprint(env: &Env, live: &Path) -> Fingerprint {
    let repo = env.repo();
    let mut objs = vec![];
    for p in objects(&repo, "") {
        let rel = p
            .strip_prefix(&repo)
            .expect("under repo")
            .to_string_lossy()
            .into_owned();
        // Lock objects come and go; check records are written by design.
        if rel.starts_with("locks/") || rel.starts_with("checks/") {
            continue;
        }
        objs.push((rel, std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)));
    }
    let c = rusqlite::Connection::open_with_flags(live, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    let mut st = c
        .prepare("SELECT coalesce(sql, name) FROM sqlite_schema ORDER BY name")
        .expect("schema");
    let live_schema = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("schema rows");
    let mut scratch: Vec<String> = std::fs::read_dir(env.dir.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // SQLite's side files, and the repair lock (an empty SQLite file
        // beside the live database that repair holds while it runs).
        .filter(|n| {
            !n.ends_with("-shm") && !n.ends_with("-wal") && !n.ends_with(".snapback-repair.lock")
        })
        .collect();
    scratch.sort();
    Fingerprint {
        repo: objs,
        live_schema,
        live_rows: rows(live),
        scratch,
    }
}

fn run_rows(env: &Env, live: &Path, table: Vec<Row>) -> usize {
    let n = table.len();
    for r in table {
        let before = fingerprint(env, live);
        let out = if r.own_repo {
            Command::new(bin())
                .current_dir(env.dir.path())
                .env_remove("SNAPBACK_REPO")
                .args(&r.args)
                .output()
                .expect("run")
        } else {
            env.cmd(&r.args.iter().map(String::as_str).collect::<Vec<_>>())
                .current_dir(env.dir.path())
                .output()
                .expect("run")
        };
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(r.code),
            "{}: exit code; stdout {} stderr {err}",
            r.name,
            stdout(&out)
        );
        assert!(
            err.contains(r.message),
            "{}: the message contains {:?}: {err}",
            r.name,
            r.message
        );
        assert!(
            err.lines().count() <= 12 && !err.contains("panicked"),
            "{}: a short, clear error: {err}",
            r.name
        );
        if r.nothing_written {
            let after = fingerprint(env, live);
            assert_eq!(
                after.repo, before.repo,
                "{}: no repository object written",
                r.name
            );
            assert_eq!(after.scratch, before.scratch, "{}: no file written", r.name);
            assert!(
                after.live_schema == before.live_schema && after.live_rows == before.live_rows,
                "{}: the live database is unchanged",
                r.name
            );
        }
    }
    n
}

/// A repository with a snapshot of `live.db`; returns the snapshot id.
fn setup() -> (Env, PathBuf, String) {
    let env = Env::new();
    let live = env.path("live.db");
    make_db(&live, 200);
    let id = env.snapshot(&live);
    (env, live, id)
}

fn script(env: &Env, name: &str, text: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, text).expect("write script");
    p.to_string_lossy().into_owned()
}

#[test]
fn hostile_urls_selectors_and_sql_identifiers() {
    let (env, live, id) = setup();
    let l = live.to_str().expect("utf8").to_string();
    let out = |n: &str| env.path(n).to_string_lossy().into_owned();
    let mut t = vec![
        Row {
            own_repo: true,
            ..row(
                "unsupported URL scheme",
                &["--repo", "ftp://x/y", "snapshots"],
                1,
                "unsupported repository URL scheme 'ftp://'",
            )
        },
        Row {
            own_repo: true,
            ..row(
                "relative file URL",
                &["--repo", "file://relative/repo", "init"],
                1,
                "a file URL needs an absolute path",
            )
        },
        Row {
            own_repo: true,
            ..row(
                "empty URL",
                &["--repo", " ", "init"],
                1,
                "the repository URL is empty",
            )
        },
        Row {
            own_repo: true,
            ..row(
                "S3 URL without a bucket",
                &["--repo", "s3:///x", "snapshots"],
                1,
                "invalid S3 repository URL",
            )
        },
        Row {
            own_repo: true,
            ..row(
                "S3 bucket name too short",
                &["--repo", "s3://b", "init"],
                1,
                "the bucket name must be 3 to 63 characters",
            )
        },
        Row {
            own_repo: true,
            ..row(
                "no repository at the path",
                &["--repo", "no/such/repo", "snapshots"],
                10,
                "no/such/repo",
            )
        },
    ];
    for (name, sel, msg) in [
        (
            "selector: a word after @",
            "@yesterday",
            "invalid snapshot selector",
        ),
        (
            "selector: month 13",
            "@2026-13-01T00:00:00Z",
            "invalid snapshot selector",
        ),
        (
            "selector: SQL",
            "latest'; DROP TABLE t; --",
            "invalid snapshot selector",
        ),
        (
            "selector: path",
            "../../etc/passwd",
            "invalid snapshot selector",
        ),
        (
            "selector: 65 hex digits",
            &"a".repeat(65),
            "invalid snapshot selector",
        ),
        (
            "selector: before the first snapshot",
            "@1970-01-01T00:00:00Z",
            "no snapshot was taken at or before",
        ),
    ] {
        let dest = out("sel-out.db");
        t.push(Row {
            args: vec!["restore".into(), sel.into(), dest],
            ..row(name, &[], 1, msg)
        });
    }
    let long = "t".repeat(100_000);
    for (name, extra, msg) in [
        (
            "diff: table name with a quote and DROP",
            vec!["--table", "t\"; DROP TABLE t; --"],
            "there is no table",
        ),
        (
            "diff: table name with a single quote",
            vec!["--table", "t'"],
            "there is no table",
        ),
        (
            "diff: 100,000-character table name",
            vec!["--table", long.as_str()],
            "there is no table",
        ),
        (
            "diff: key column with a quote",
            vec!["--table", "t", "--key", "id\"; DROP TABLE t; --"],
            "has no column",
        ),
        (
            "diff: compared column with a comment",
            vec!["--table", "t", "--columns", "v /*"],
            "has no column",
        ),
        (
            "diff: where closes the parenthesis and adds a statement",
            vec!["--where", "0); DROP TABLE t; --"],
            "Multiple statements",
        ),
        (
            "diff: where with a trailing comment",
            vec!["--where", "id > 0 --"],
            "invalid SQL",
        ),
        (
            "diff: where with an unterminated comment",
            vec!["--where", "id > 0 /*"],
            "invalid SQL",
        ),
        (
            "diff: where calling load_extension",
            vec!["--where", "load_extension('x')"],
            "not authorized",
        ),
    ] {
        // A `--where` that does not parse leaves its table not compared: the
        // diff goes on with the other tables and exits 4 (INCOMPLETE). A name
        // that does not exist, or a predicate the authorizer refuses while the
        // table is read, fails the whole command (exit 1).
        let code = if msg == "Multiple statements" || msg == "invalid SQL" {
            4
        } else {
            1
        };
        let mut args: Vec<String> = vec!["diff".into(), id.clone(), l.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        t.push(Row {
            args,
            ..row(name, &[], code, msg)
        });
    }
    let n = run_rows(&env, &live, t);
    assert!(n >= 20, "{n} rows");
}

#[test]
fn hostile_restore_scripts() {
    let (env, live, id) = setup();
    let l = live.display();
    let head = format!("snapshot = \"{id}\"\nlive = \"{l}\"\n");
    let table = |body: &str| format!("{head}[[table]]\n{body}\n");
    let cases: Vec<(&'static str, String, &'static str)> = vec![
        ("table name with a quote and DROP", table("name = 't\"; DROP TABLE t; --'\nactions = [\"update_changed\"]"), "there is no table"),
        ("table name with a NUL", table("name = \"t\\u0000x\"\nactions = [\"update_changed\"]"), "there is no table"),
        ("100,000-character table name", table(&format!("name = \"{}\"\nactions = [\"update_changed\"]", "t".repeat(100_000))), "there is no table"),
        ("key column with a quote", table("name = \"t\"\nkey = [\"id\\\"; DROP TABLE t; --\"]\nactions = [\"update_changed\"]"), "has no column"),
        ("column with a comment", table("name = \"t\"\ncolumns = [\"v' --\"]\nactions = [\"update_changed\"]"), "has no column"),
        ("where with a second statement", table("name = \"t\"\nwhere = \"1=1; DROP TABLE t\"\nactions = [\"update_changed\"]"), "invalid SQL"),
        ("guard that closes the parenthesis", table("name = \"t\"\nguard = \"0); DROP TABLE t; --\"\nactions = [\"update_changed\"]"), "invalid SQL"),
        ("where_live with a trailing comment", table("name = \"t\"\nwhere_live = \"id > 0 --\"\nactions = [\"delete_extra\"]"), "invalid SQL"),
        ("unknown key in a table", table("name = \"t\"\nactions = [\"update_changed\"]\ndelete_extras = true"), "unknown field `delete_extras`"),
        ("unknown top-level key", format!("colour = 1\n{}", table("name = \"t\"\nactions = [\"update_changed\"]")), "unknown field `colour`"),
        ("unknown action", table("name = \"t\"\nactions = [\"upsert\"]"), "unknown variant `upsert`"),
        ("no actions", table("name = \"t\""), "has no `actions`"),
        ("snapshot = latest", table("name = \"t\"\nactions = [\"update_changed\"]").replace(&id, "latest"), "moves"),
        ("relative live path", table("name = \"t\"\nactions = [\"update_changed\"]").replace(&l.to_string(), "live.db"), "must be an absolute path"),
        ("not TOML", "snapshot = [[[\n".to_string(), "TOML parse error"),
    ];
    let mut t = vec![];
    for (i, (name, text, msg)) in cases.into_iter().enumerate() {
        let p = script(&env, &format!("s{i}.toml"), &text);
        t.push(Row {
            args: vec!["repair".into(), p, "--apply".into(), "--yes".into()],
            ..row(name, &[], 1, msg)
        });
    }
    let n = run_rows(&env, &live, t);
    assert!(n >= 15, "{n} rows");
    assert!(objects(&env.repo(), "audit").is_empty(), "no audit entry");
}

/// Writes `manifest` into the repository as a correctly named object.
fn put_manifest(env: &Env, manifest: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec_pretty(manifest).expect("json");
    let id = snapback_core::Id::of(&bytes).to_hex();
    std::fs::write(env.repo().join("snapshots").join(&id), bytes).expect("write");
    id
}

fn manifest_of(env: &Env, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(env.repo().join("snapshots").join(id)).expect("read"))
        .expect("json")
}

#[test]
fn hostile_restore_destinations() {
    // A manifest whose file path climbs out of the destination.
    let (env, live, id) = setup();
    let mut m = manifest_of(&env, &id);
    m["files"][0]["path"] = "/../../escaped.db".into();
    m["paths"][0] = "/../../escaped.db".into();
    let bad = put_manifest(&env, &m);
    let dest = env.path("dest");
    std::fs::create_dir(&dest).expect("mkdir");
    let mut t = vec![row(
        "manifest path with ..",
        &["restore", &bad, &format!("{}/", dest.display())],
        1,
        "would escape the destination",
    )];
    // A symbolic link inside the destination tree that points outside.
    let outside = env.path("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let first = live
        .components()
        .nth(1)
        .expect("a first component")
        .as_os_str()
        .to_owned();
    std::os::unix::fs::symlink(&outside, dest.join(&first)).expect("symlink");
    t.push(row(
        "symbolic link in the destination pointing outside",
        &["restore", &id, &format!("{}/", dest.display())],
        1,
        "is a symbolic link",
    ));
    // A symbolic link as the destination file itself is "an existing file".
    let link = env.path("link.db");
    std::os::unix::fs::symlink(outside.join("target.db"), &link).expect("symlink");
    std::fs::write(outside.join("target.db"), "precious").expect("write");
    t.push(row(
        "destination file is a symbolic link",
        &["restore", &id, link.to_str().expect("utf8")],
        1,
        "refusing to overwrite existing file",
    ));
    run_rows(&env, &live, t);
    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        1,
        "nothing was written outside the destination"
    );
    assert_eq!(
        std::fs::read(outside.join("target.db")).expect("read"),
        b"precious"
    );

    // A manifest with a relative file path is refused as malformed: listing
    // commands skip it with a warning, and naming it gets the damage.
    let (env, live, id) = setup();
    let mut m = manifest_of(&env, &id);
    m["files"][0]["path"] = "relative/escaped.db".into();
    let bad = put_manifest(&env, &m);
    let t = vec![row(
        "manifest with a relative file path",
        &["restore", &bad, env.path("r.db").to_str().expect("utf8")],
        1,
        "is malformed",
    )];
    run_rows(&env, &live, t);
}

#[test]
fn newer_format_versions_are_refused_clearly() {
    // A config from a newer snapback.
    let (env, live, id) = setup();
    let cfg = env.repo().join("config");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
    c["format_version"] = 3.into();
    c["new_setting"] = true.into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&c).expect("json")).expect("write");
    let dest = env.path("v.db");
    run_rows(
        &env,
        &live,
        vec![
            row(
                "config format_version 3",
                &["snapshots"],
                1,
                "format version 3",
            ),
            row(
                "config format_version 3 (restore)",
                &["restore", &id, dest.to_str().expect("utf8")],
                1,
                "Upgrade snapback",
            ),
        ],
    );

    // A manifest from a newer snapback.
    let (env, live, id) = setup();
    let mut m = manifest_of(&env, &id);
    m["format_version"] = 3.into();
    put_manifest(&env, &m);
    let dest = env.path("v.db");
    run_rows(
        &env,
        &live,
        vec![row(
            "manifest format_version 3",
            &["restore", &id, dest.to_str().expect("utf8")],
            1,
            "format version 3",
        )],
    );

    // An index object of a newer format (magic version 3; version 2 is
    // the index with dictionary tables, which this build reads).
    let (env, live, id) = setup();
    for p in objects(&env.repo(), "index") {
        let mut b = std::fs::read(&p).expect("read");
        b[6] = 3;
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(
            env.repo()
                .join("index")
                .join(snapback_core::Id::of(&b).to_hex()),
            b,
        )
        .expect("write");
    }
    let dest = env.path("v.db");
    run_rows(
        &env,
        &live,
        vec![row(
            "index object of format 3",
            &["restore", &id, dest.to_str().expect("utf8")],
            1,
            "format version 3",
        )],
    );
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("format version 3"),
        "{}",
        stdout(&out)
    );
}

/// A tmpfs of `size` at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, opts: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: mount -t tmpfs is not permitted here ({}); the full-disk and read-only rows need root",
                    stderr(&o).trim()
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: cannot run mount ({e}); the full-disk and read-only rows need it"
                );
                None
            }
        }
    }

    fn remount_ro(&self) {
        let o = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .output()
            .expect("mount");
        assert!(o.status.success(), "remount ro: {}", stderr(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn full_disk_locked_and_read_only_databases() {
    let (env, live, id) = setup();

    // A database another connection holds an EXCLUSIVE lock on.
    let locked = env.path("locked.db");
    {
        let c = rusqlite::Connection::open(&locked).expect("open");
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES (1, 'a');")
            .expect("schema");
    }
    let locked_snap = env.snapshot(&locked);
    let holder = rusqlite::Connection::open(&locked).expect("open");
    holder
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (2, 'b');")
        .expect("exclusive lock");
    let s = script(
        &env,
        "locked.toml",
        &format!(
            "snapshot = \"{locked_snap}\"\nlive = \"{}\"\nbusy_timeout_ms = 300\n[[table]]\nname = \"t\"\nactions = [\"update_changed\", \"insert_missing\", \"delete_extra\"]\n",
            locked.display()
        ),
    );
    let t = vec![
        Row {
            nothing_written: false,
            ..row(
                "diff: live database under an EXCLUSIVE lock",
                &[
                    "diff",
                    &locked_snap,
                    locked.to_str().expect("utf8"),
                    "--busy-timeout",
                    "1",
                ],
                11,
                "locked",
            )
        },
        Row {
            nothing_written: false,
            ..row(
                "repair: live database under an EXCLUSIVE lock",
                &["repair", &s, "--apply", "--yes", "--max-wait", "2"],
                11,
                "locked",
            )
        },
    ];
    // (The live database of these rows is the locked one, which cannot be
    // read for a fingerprint while it is locked; checked after.)
    let before = objects(&env.repo(), "snapshots");
    run_rows(&env, &live, t);
    holder.execute_batch("ROLLBACK").expect("rollback");
    drop(holder);
    assert_eq!(
        rows(&locked),
        vec![(1, "a".to_string())],
        "nothing was written"
    );
    assert_eq!(
        objects(&env.repo(), "snapshots"),
        before,
        "no pre-repair snapshot"
    );

    // A read-only file system.
    let Some(ro) = Tmpfs::mount(&env.path("ro"), "size=4m") else {
        return;
    };
    let ro_db = ro.0.join("ro.db");
    make_db(&ro_db, 100);
    {
        // Rollback mode: a WAL database on a read-only mount does not open
        // plainly (SQLITE-NOTES 2), and this row is about writes.
        let c = rusqlite::Connection::open(&ro_db).expect("open");
        c.execute_batch("PRAGMA journal_mode=DELETE;")
            .expect("journal mode");
    }
    let ro_snap = env.snapshot(&ro_db);
    ro.remount_ro();
    let s = script(
        &env,
        "ro.toml",
        &format!(
            "snapshot = \"{id}\"\nlive = \"{}\"\n[[table]]\nname = \"t\"\nactions = [\"update_changed\"]\n",
            ro_db.display()
        ),
    );
    let t = vec![
        row(
            "repair: live database on a read-only file system",
            &["repair", &s, "--apply", "--yes"],
            1,
            "is read-only",
        ),
        row(
            "restore into a read-only file system",
            &[
                "restore",
                &ro_snap,
                ro.0.join("new.db").to_str().expect("utf8"),
            ],
            1,
            "Read-only file system",
        ),
    ];
    run_rows(&env, &ro_db, t);

    // A full disk: a 2 MiB tmpfs for the repository, then for a restore.
    let full = Env::bare();
    let Some(small) = Tmpfs::mount(&full.repo(), "size=2m") else {
        return;
    };
    let out = full.run(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let big = full.path("big.bin");
    let data = snapback_testkit::random_bytes(4 << 20, 0x9E37_79B9_7F4A_7C15);
    std::fs::write(&big, &data).expect("write");
    let fdb = full.path("f.db");
    make_db(&fdb, 10);
    let t = vec![Row {
        nothing_written: false,
        ..row(
            "snapshot into a full repository file system",
            &["snapshot", big.to_str().expect("utf8")],
            1,
            "No space left on device",
        )
    }];
    run_rows(&full, &fdb, t);
    assert!(
        objects(&full.repo(), "snapshots").is_empty(),
        "nothing was committed"
    );
    let out = full.run(&["check"]);
    assert!(
        out.status.success(),
        "the repository still checks: {}{}",
        stdout(&out),
        stderr(&out)
    );
    drop(small);

    let Some(tiny) = Tmpfs::mount(&env.path("tiny"), "size=1m") else {
        return;
    };
    let big_db = env.path("big.db");
    make_db(&big_db, 8000);
    let big_snap = env.snapshot(&big_db);
    let target = tiny.0.join("restored.db");
    run_rows(
        &env,
        &live,
        vec![row(
            "restore onto a full file system",
            &["restore", &big_snap, target.to_str().expect("utf8")],
            1,
            "No space left on device",
        )],
    );
    assert_eq!(
        std::fs::read_dir(&tiny.0).expect("ls").count(),
        0,
        "no partial or temporary file is left"
    );
}
