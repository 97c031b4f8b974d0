//! The repair engine through its library API: every action, guards, rows
//! changed between plan and apply, SQL steps, a busy database, and undo.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use snapback_core::storage::LocalStore;
use snapback_core::{InitOptions, Repository};
use snapback_repair::{undo, LoadedScript, Op, RepairOptions, RepairSession, UndoOutcome, Value};

struct Env {
    dir: tempfile::TempDir,
    repo: Repository,
    snap: PathBuf,
    live: PathBuf,
}

const SCHEMA: &str = r#"
    CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty REAL, blob BLOB, touched TEXT);
    CREATE TABLE counters(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;
"#;

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::create(dir.path().join("repo")).expect("store");
    let repo = Repository::init(Arc::new(store), &InitOptions::default()).expect("init");
    let snap = dir.path().join("snap.db");
    let live = dir.path().join("live.db");
    let rows = "INSERT INTO items VALUES(1,'a',1.0,x'01','old'),(2,'b',2,NULL,'old'),(3,'c',3.5,x'03','old'),(4,'d',4,NULL,'old'),(5,'e',5,NULL,'old');
                INSERT INTO counters VALUES('items', 5);";
    for p in [&snap, &live] {
        let c = Connection::open(p).expect("open");
        c.execute_batch("PRAGMA journal_mode = WAL;").expect("wal");
        c.execute_batch(SCHEMA).expect("schema");
        c.execute_batch(rows).expect("rows");
    }
    // The incident and what came after it, in the live database.
    Connection::open(&live)
        .expect("live")
        .execute_batch(
            "UPDATE items SET name = 'BAD', qty = 0 WHERE id IN (1, 2);
             DELETE FROM items WHERE id = 3;
             INSERT INTO items VALUES(6, 'junk', 0, NULL, 'old'), (7, 'legit', 7, NULL, 'new');
             UPDATE items SET name = 'renamed', touched = 'new' WHERE id = 4;
             UPDATE counters SET n = 0;",
        )
        .expect("incident");
    Env {
        dir,
        repo,
        snap,
        live,
    }
}

fn script(e: &Env, body: &str) -> LoadedScript {
    let text = format!(
        "snapshot_db = \"{}\"\nlive = \"{}\"\n{body}",
        e.snap.display(),
        e.live.display()
    );
    let p = e.dir.path().join("s.toml");
    std::fs::write(&p, &text).expect("write");
    LoadedScript::load(&p).expect("script")
}

/// Undoes the newest repair in the audit log (not forced, default options).
fn undo_newest(e: &Env) -> snapback_repair::Result<UndoOutcome> {
    let entries = snapback_repair::audit_list(e.repo.store().as_ref()).expect("audit");
    let newest = entries.last().expect("an audit entry");
    undo(
        &e.repo,
        &newest.entry.repair_id,
        false,
        &RepairOptions::default(),
        |_| {},
    )
}

fn dump(p: &Path) -> Vec<String> {
    let c = Connection::open(p).expect("open");
    let mut st = c
        .prepare("SELECT quote(id)||'|'||quote(name)||'|'||quote(qty)||'|'||quote(blob)||'|'||quote(touched) FROM items ORDER BY id")
        .expect("prepare");
    let mut v: Vec<String> = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    v.push(
        c.query_row("SELECT n FROM counters", [], |r| r.get::<_, i64>(0))
            .expect("counter")
            .to_string(),
    );
    v
}

const ALL: &str = r#"
[[table]]
name = "items"
actions = ["insert_missing", "update_changed", "delete_extra"]
where_live = "touched = 'old' OR id = 4"
guard = "touched = 'new'"
batch_size = 2
"#;

#[test]
fn every_action_guard_and_undo_round_trip() {
    let e = env();
    let before = dump(&e.live);
    let s = RepairSession::plan(
        Some(&e.repo),
        script(&e, ALL),
        RepairOptions::default(),
        true,
    )
    .expect("plan");
    let c = &s.plan.tables[0].counts;
    // 1, 2 changed; 3 missing; 6 extra; 4 guarded; 7 outside where_live.
    assert_eq!(
        (c.update, c.insert, c.delete, c.guard_skipped),
        (2, 1, 1, 1),
        "{c:?}"
    );
    let o = s.apply(&e.repo, |_| {}).expect("apply").expect("changes");
    assert_eq!(o.rows_changed, 4);
    assert_eq!(o.remaining_differences, 0);
    let after = dump(&e.live);
    let snap = dump(&e.snap);
    assert_eq!(
        after[..3],
        snap[..3],
        "1, 2 updated; 3 re-inserted with its blob"
    );
    assert_eq!(after[2], "3|'c'|3.5|X'03'|'old'");
    assert_eq!(
        after[3], before[2],
        "guarded row untouched (before has no row 3)"
    );
    assert!(after[3].contains("'renamed'"));
    assert_eq!(after[4], snap[4]);
    assert_eq!(after[5], before[5], "6 deleted, 7 kept");
    assert!(after[5].starts_with("7|"));
    drop(s);

    let entries = snapback_repair::audit_list(e.repo.store().as_ref()).expect("audit");
    let ops: Vec<Op> = entries[0].entry.changes.tables[0]
        .changes
        .iter()
        .map(|c| c.op)
        .collect();
    assert_eq!(ops.len(), 4);
    for op in [Op::Insert, Op::Update, Op::Delete] {
        assert!(ops.contains(&op), "{ops:?}");
    }

    let u = undo_newest(&e).expect("undo");
    assert_eq!(u.rows_changed, 4);
    assert_eq!(
        dump(&e.live),
        before,
        "undo restores the exact previous state"
    );
}

#[test]
fn a_row_changed_between_plan_and_apply_is_left_alone_and_reported() {
    let e = env();
    let s = RepairSession::plan(
        Some(&e.repo),
        script(&e, ALL),
        RepairOptions::default(),
        true,
    )
    .expect("plan");
    Connection::open(&e.live)
        .expect("app")
        .execute("UPDATE items SET name = 'app wrote this' WHERE id = 1", [])
        .expect("app write");
    let o = s.apply(&e.repo, |_| {}).expect("apply").expect("changes");
    assert_eq!(o.conflicts.len(), 1, "{:?}", o.conflicts);
    assert!(o.conflicts[0].reason.contains("changed since the plan"));
    assert_eq!(o.rows_changed, 3);
    assert!(dump(&e.live)[0].starts_with("1|'app wrote this'|"));
}

#[test]
fn sql_steps_see_the_snapshot_and_block_plain_undo() {
    let e = env();
    let body = r#"
[[table]]
name = "items"
columns = ["name"]
actions = ["update_changed"]
[[sql]]
description = "counter back from the snapshot"
statement = "UPDATE counters SET n = (SELECT n FROM snapshot.counters WHERE name = 'items') WHERE name = 'items'"
"#;
    let s = RepairSession::plan(
        Some(&e.repo),
        script(&e, body),
        RepairOptions::default(),
        true,
    )
    .expect("plan");
    let o = s.apply(&e.repo, |_| {}).expect("apply").expect("changes");
    assert_eq!(o.sql_steps.len(), 1);
    assert_eq!(o.sql_steps[0].rows_changed, 1);
    assert_eq!(dump(&e.live).last().map(String::as_str), Some("5"));
    // The snapshot was attached read-only: its database is unchanged.
    assert_eq!(dump(&e.snap).last().map(String::as_str), Some("5"));
    drop(s);
    let err = undo_newest(&e).expect_err("refused");
    assert!(err.to_string().contains("SQL steps"), "{err}");

    // An invalid step is refused before anything is written.
    let bad = body.replace("snapshot.counters", "snapshot.nope");
    let err = RepairSession::plan(
        Some(&e.repo),
        script(&e, &bad),
        RepairOptions::default(),
        false,
    )
    .err()
    .expect("invalid step");
    assert!(err.to_string().contains("SQL step 1"), "{err}");
}

#[test]
fn a_busy_live_database_is_waited_for_not_an_error() {
    let e = env();
    let s = RepairSession::plan(
        Some(&e.repo),
        script(&e, ALL),
        RepairOptions::default(),
        true,
    )
    .expect("plan");
    // The application holds the write lock for a while.
    let live = e.live.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let c = Connection::open(&live).expect("open");
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO items VALUES(100, 'app', 1, NULL, 'new');")
            .expect("lock");
        tx.send(()).expect("send");
        std::thread::sleep(Duration::from_millis(1500));
        c.execute_batch("COMMIT").expect("commit");
    });
    rx.recv().expect("locked");
    let o = s
        .apply(&e.repo, |_| {})
        .expect("apply waits")
        .expect("changes");
    holder.join().expect("holder");
    assert_eq!(o.rows_changed, 4);
    assert_eq!(o.remaining_differences, 0);
    assert!(dump(&e.live).iter().any(|r| r.starts_with("100|")));
}

#[test]
fn a_second_session_cannot_take_the_lock() {
    let e = env();
    let _first = RepairSession::plan(
        Some(&e.repo),
        script(&e, ALL),
        RepairOptions::default(),
        true,
    )
    .expect("plan");
    let err = RepairSession::plan(
        Some(&e.repo),
        script(&e, ALL),
        RepairOptions::default(),
        true,
    )
    .err()
    .expect("locked");
    assert!(
        err.to_string().contains("another repair is running"),
        "{err}"
    );
    // A dry run does not need the lock.
    RepairSession::plan(
        Some(&e.repo),
        script(&e, ALL),
        RepairOptions::default(),
        false,
    )
    .expect("dry run");
}

/// A repair writes 'Alice' back where the live NOCASE key now says 'alice'
/// (and 'x  ' where an RTRIM key was trimmed), verifies it, and undo puts
/// the live spelling back.
#[test]
fn repair_writes_back_the_text_of_a_nocase_or_rtrim_key_and_undo_reverts_it() {
    let e = env();
    for (p, rows) in [
        (
            &e.snap,
            "INSERT INTO users VALUES('Alice',1),('Bob',2); INSERT INTO codes VALUES('x  ',1);",
        ),
        (
            &e.live,
            "INSERT INTO users VALUES('alice',1),('Bob',2); INSERT INTO codes VALUES('x',1);",
        ),
    ] {
        Connection::open(p)
            .expect("open")
            .execute_batch(&format!(
                "CREATE TABLE users(email TEXT COLLATE NOCASE PRIMARY KEY, v);
                 CREATE TABLE codes(code TEXT COLLATE RTRIM PRIMARY KEY, v) WITHOUT ROWID; {rows}"
            ))
            .expect("setup");
    }
    let keys = |p: &Path| -> Vec<String> {
        let c = Connection::open(p).expect("open");
        let mut st = c
            .prepare("SELECT '[' || email || ']' FROM users UNION ALL SELECT '[' || code || ']' FROM codes")
            .expect("prepare");
        let v = st
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("rows");
        v
    };
    let before = keys(&e.live);
    let body = "[[table]]\nname = \"users\"\nactions = [\"update_changed\"]\n[[table]]\nname = \"codes\"\nactions = [\"update_changed\"]\n";
    let s = RepairSession::plan(
        Some(&e.repo),
        script(&e, body),
        RepairOptions::default(),
        true,
    )
    .expect("plan");
    assert_eq!(
        s.plan.tables[0].counts.update, 1,
        "'alice' differs from 'Alice'"
    );
    assert_eq!(s.plan.tables[1].counts.update, 1, "'x' differs from 'x  '");
    let o = s.apply(&e.repo, |_| {}).expect("apply").expect("changes");
    assert_eq!((o.rows_changed, o.remaining_differences), (2, 0));
    assert_eq!(keys(&e.live), vec!["[Alice]", "[Bob]", "[x  ]"]);
    drop(s);
    let u = undo_newest(&e).expect("undo");
    assert_eq!(u.rows_changed, 2);
    assert_eq!(keys(&e.live), before);
}

/// Plans `body` (default options, dry run allowed) against `e`.
fn plan(e: &Env, body: &str) -> RepairSession {
    RepairSession::plan(
        Some(&e.repo),
        script(e, body),
        RepairOptions::default(),
        true,
    )
    .expect("plan")
}

#[test]
fn repair_restores_negative_zero_bit_for_bit() {
    // Columns without affinity keep the storage class and the sign of a
    // zero: REAL -0.0, REAL 1.0 and INTEGER 1 are three values to restore.
    let e = env();
    for (p, rows) in [
        (&e.snap, "INSERT INTO m VALUES(1, -0.0, 1.0), (2, 5, 'a');"),
        (&e.live, "INSERT INTO m VALUES(1, 0.0, 1), (2, 5, 'a');"),
    ] {
        Connection::open(p)
            .expect("open")
            .execute_batch(&format!(
                "CREATE TABLE m(id INTEGER PRIMARY KEY, z, one); {rows}"
            ))
            .expect("setup");
    }
    // Value's == is storage class and bits.
    let row1 = |p: &Path| -> Vec<Value> {
        Connection::open(p)
            .expect("open")
            .query_row("SELECT z, one FROM m WHERE id = 1", [], |r| {
                Ok(vec![
                    Value::from_ref(r.get_ref(0)?),
                    Value::from_ref(r.get_ref(1)?),
                ])
            })
            .expect("row 1")
    };
    let before = row1(&e.live);
    let s = plan(
        &e,
        "[[table]]\nname = \"m\"\nactions = [\"update_changed\"]\n",
    );
    assert_eq!(s.plan.tables[0].counts.update, 1, "row 1 differs");
    let o = s.apply(&e.repo, |_| {}).expect("apply").expect("changes");
    assert_eq!((o.rows_changed, o.remaining_differences), (1, 0));
    let after = row1(&e.live);
    assert_eq!(after, vec![Value::Real(-0.0), Value::Real(1.0)]);
    assert!(matches!(after[0], Value::Real(z) if z.is_sign_negative()));
    drop(s);
    let u = undo_newest(&e).expect("undo");
    assert_eq!(u.rows_changed, 1);
    assert_eq!(row1(&e.live), before, "undo gives back 0.0 and INTEGER 1");
    assert_eq!(before, vec![Value::Real(0.0), Value::Integer(1)]);
}

#[test]
fn repair_refuses_a_virtual_table_before_writing_anything() {
    let e = env();
    for p in [&e.snap, &e.live] {
        Connection::open(p)
            .expect("open")
            .execute_batch("CREATE VIRTUAL TABLE docs USING fts5(body);")
            .expect("fts5");
    }
    Connection::open(&e.snap)
        .expect("snap")
        .execute_batch("INSERT INTO docs(rowid, body) VALUES(1, 'lost');")
        .expect("row");
    let body = "[[table]]\nname = \"docs\"\nactions = [\"insert_missing\"]\n";
    let err = RepairSession::plan(
        Some(&e.repo),
        script(&e, body),
        RepairOptions::default(),
        true,
    )
    .err()
    .expect("a virtual table is refused");
    assert!(err.to_string().contains("virtual table (fts5)"), "{err}");
}
