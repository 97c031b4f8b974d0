//! Bad input gets a clear error before anything is written: the live
//! database is byte-for-byte unchanged, and no snapshot or audit entry is
//! added.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::util::{snapback, Out};

struct Case {
    dir: tempfile::TempDir,
    repo: std::path::PathBuf,
    live: std::path::PathBuf,
    snap: String,
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).expect("read")))
}

fn run(c: &Case, args: &[&str]) -> Out {
    snapback(&c.repo, args, &[], Duration::from_secs(60))
}

fn setup() -> Case {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let live = dir.path().join("app.db");
    Connection::open(&live)
        .expect("open")
        .execute_batch(
            r#"CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT);
               INSERT INTO t VALUES(1, 1, 'x'), (2, 2, 'y');
               CREATE TABLE nokey("rowid", "_rowid_", "oid");
               INSERT INTO nokey VALUES(1, 2, 3);"#,
        )
        .expect("schema");
    let o = snapback(&repo, &["init"], &[], Duration::from_secs(60));
    assert_eq!(o.code, 0, "{o:?}");
    let o = snapback(
        &repo,
        &["snapshot", live.to_str().expect("utf8")],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(o.code, 0, "{o:?}");
    let snap = o.stdout.trim().to_string();
    Connection::open(&live)
        .expect("open")
        .execute_batch("UPDATE t SET a = 9; ALTER TABLE t ADD COLUMN c;")
        .expect("change");
    Case {
        dir,
        repo,
        live,
        snap,
    }
}

fn script(c: &Case, body: &str) -> String {
    let p = c.dir.path().join("s.toml");
    let text = format!(
        "snapshot = \"{}\"\nlive = \"{}\"\n{body}",
        c.snap,
        c.live.display()
    );
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}

/// Runs `repair --apply --yes` on a script and checks the refusal.
fn refused(c: &Case, body: &str, expect: &str) {
    let before = sha(&c.live);
    let snaps = run(c, &["--json", "snapshots"]).stdout;
    let s = script(c, body);
    let o = run(c, &["repair", &s, "--apply", "--yes"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains(expect),
        "expected {expect:?} in the error: {o:?}"
    );
    assert_eq!(sha(&c.live), before, "the live database was written");
    assert_eq!(
        run(c, &["--json", "snapshots"]).stdout,
        snaps,
        "a snapshot was taken"
    );
    let audit = run(c, &["--json", "audit"]);
    assert_eq!(audit.stdout.trim(), "[]", "{audit:?}");
}

const ACT: &str = "actions = [\"update_changed\"]\n";

#[test]
fn unknown_table_column_key_and_bad_sql_are_refused_before_writing() {
    let c = setup();
    refused(
        &c,
        &format!("[[table]]\nname = \"nope\"\n{ACT}"),
        "no table \"nope\"",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"t\"\ncolumns = [\"zz\"]\n{ACT}"),
        "no column \"zz\"",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"nokey\"\n{ACT}"),
        "no usable key",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"t\"\nwhere_live = \"a >>> 1\"\n{ACT}"),
        "invalid SQL",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"t\"\nguard = \"nope_col > 1\"\n{ACT}"),
        "guard predicate",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"t\"\ncolumns = [\"c\"]\n{ACT}"),
        "schema mismatch",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"t\"\n{ACT}[[sql]]\nstatement = \"UPDATE nope SET x = 1\"\n"),
        "SQL step 1",
    );
    refused(
        &c,
        &format!("[[table]]\nname = \"t\"\n{ACT}delete_extras = true\n"),
        "unknown field `delete_extras`",
    );
}

#[test]
fn a_selector_matching_no_snapshot_and_a_missing_live_database_are_refused() {
    let c = setup();
    let before = sha(&c.live);
    let p = c.dir.path().join("s.toml");
    std::fs::write(
        &p,
        format!(
            "snapshot = \"@2001-01-01T00:00:00Z\"\nlive = \"{}\"\n[[table]]\nname = \"t\"\n{ACT}",
            c.live.display()
        ),
    )
    .expect("write");
    let o = run(
        &c,
        &["repair", p.to_str().expect("utf8"), "--apply", "--yes"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("no snapshot was taken at or before"),
        "{o:?}"
    );
    std::fs::write(
        &p,
        format!(
            "snapshot = \"{}\"\nlive = \"{}\"\n[[table]]\nname = \"t\"\n{ACT}",
            c.snap,
            c.dir.path().join("missing.db").display()
        ),
    )
    .expect("write");
    let o = run(
        &c,
        &["repair", p.to_str().expect("utf8"), "--apply", "--yes"],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("does not exist"), "{o:?}");
    assert!(
        !c.dir.path().join("missing.db").exists(),
        "the missing database was created"
    );
    assert_eq!(sha(&c.live), before);
}

#[test]
fn apply_without_a_terminal_needs_yes() {
    let c = setup();
    let before = sha(&c.live);
    let s = script(&c, &format!("[[table]]\nname = \"t\"\n{ACT}"));
    let o = run(&c, &["repair", &s, "--apply"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("--yes"), "{o:?}");
    assert_eq!(sha(&c.live), before);
    // The dry run works and writes nothing either.
    let o = run(&c, &["repair", &s]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("update 2"), "{o:?}");
    assert_eq!(sha(&c.live), before);
}
