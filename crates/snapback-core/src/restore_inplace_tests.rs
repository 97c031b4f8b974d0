//! In-place restore through `Repository::restore_in_place`, on real
//! databases in both journal modes, with other connections open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use snapback_storage::{LocalStore, Store};

use crate::error::Kind;
use crate::repo::{InitOptions, Repository};
use crate::restore_inplace::{InPlaceOptions, PAGER_OWNED};
use crate::selector::Snapshot;
use crate::snapshot::SnapshotOptions;
use crate::NoProgress;

struct Fx {
    _dir: tempfile::TempDir,
    repo: Repository,
    db: PathBuf,
}

fn fx(mode: &str) -> Fx {
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn Store> =
        Arc::new(LocalStore::create(dir.path().join("repo")).expect("store"));
    let repo = Repository::init(store, &InitOptions::default()).expect("init");
    let db = dir.path().join("app.db");
    let c = Connection::open(&db).expect("open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode};
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM n WHERE i<400)
         INSERT INTO t SELECT i, printf('row %d %s', i, hex(randomblob(40))) FROM n;"
    ))
    .expect("schema");
    Fx {
        _dir: dir,
        repo,
        db,
    }
}

fn opts() -> InPlaceOptions {
    InPlaceOptions {
        path: None,
        lock_wait: Duration::from_secs(5),
        no_lock: false,
        snapshot: SnapshotOptions::default(),
    }
}

impl Fx {
    fn snap(&self) -> Snapshot {
        let r = self
            .repo
            .snapshot(
                std::slice::from_ref(&self.db),
                &SnapshotOptions::default(),
                &NoProgress,
            )
            .expect("snapshot");
        self.repo
            .snapshots()
            .expect("list")
            .into_iter()
            .find(|s| s.id == r.id)
            .expect("listed")
    }

    fn live(&self) -> String {
        self.db.to_string_lossy().into_owned()
    }

    fn snapshot_by_id(&self, id: &crate::id::Id) -> Snapshot {
        self.repo
            .snapshots()
            .expect("list")
            .into_iter()
            .find(|s| s.id == *id)
            .expect("listed")
    }
}

/// Every page of a database, as SQLite has it (a WAL's frames included),
/// with page 1's pager-owned header bytes zeroed.
fn pages(db: &Path) -> Vec<Vec<u8>> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .expect("prepare");
    let mut v: Vec<Vec<u8>> = st
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    for r in PAGER_OWNED {
        for i in r {
            v[0][i] = 0;
        }
    }
    v
}

fn integrity(db: &Path) {
    assert!(crate::sqlite::integrity_check(db)
        .expect("check")
        .is_empty());
}

#[test]
fn in_place_restore_gives_back_the_snapshot_image_in_both_journal_modes_and_undoes() {
    for mode in ["wal", "delete"] {
        for change in ["update", "grow", "shrink", "schema"] {
            let f = fx(mode);
            let s = f.snap();
            let want_pages = pages(&f.db);
            let want_rows = snapback_testkit::db::rows(&f.db);
            let app = Connection::open(&f.db).expect("app");
            let sql = match change {
                "update" => "UPDATE t SET v = 'damaged' WHERE id % 7 = 0",
                "grow" => "WITH RECURSIVE n(i) AS (VALUES(1000) UNION ALL SELECT i+1 FROM n WHERE i<1600) INSERT INTO t SELECT i, hex(randomblob(100)) FROM n",
                "shrink" => "DELETE FROM t WHERE id > 50; VACUUM",
                _ => "CREATE TABLE extra(x); INSERT INTO extra VALUES(1); UPDATE t SET v = 'x' WHERE id = 3",
            };
            app.execute_batch(sql).expect("change");
            let before_pages = pages(&f.db);
            let before_rows = snapback_testkit::db::rows(&f.db);
            assert_ne!(before_pages, want_pages, "{mode} {change}");

            let plan = f.repo.plan_in_place(&s, &f.db, &opts()).expect("plan");
            assert!(!plan.applied);
            assert!(plan.pages_changed() > 0, "{mode} {change}: {plan:?}");
            assert_eq!(plan.snapshot_pages, want_pages.len() as u64);
            assert_eq!(plan.live_pages, before_pages.len() as u64);
            assert_eq!(pages(&f.db), before_pages, "a dry run writes nothing");

            let rep = f
                .repo
                .restore_in_place(&s, &f.db, &opts(), &|_| {})
                .unwrap_or_else(|e| panic!("{mode} {change}: restore: {e}"));
            assert!(rep.applied, "{mode} {change}");
            assert_eq!(
                rep.recheck,
                Some(crate::restore_inplace::Recheck::Unchanged),
                "{mode} {change}: no writer committed after the compare, so nothing was read again"
            );
            assert_eq!(
                rep.full_reads, 1,
                "{mode} {change}: the pre-restore snapshot's read is the compare"
            );
            assert_eq!(
                pages(&f.db),
                want_pages,
                "{mode} {change}: the snapshot's image"
            );
            integrity(&f.db);
            // The application's connection sees the restored database.
            let seen: Vec<(i64, String)> = {
                let mut st = app
                    .prepare("SELECT id, v FROM t ORDER BY id")
                    .expect("prepare");
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("query")
                    .collect::<rusqlite::Result<_>>()
                    .expect("rows")
            };
            assert_eq!(seen, want_rows, "{mode} {change}");
            if change == "schema" {
                let e = app.execute("INSERT INTO extra VALUES(2)", []);
                assert!(e.is_err(), "the application's schema cache was refreshed");
            }

            let pre = f.snapshot_by_id(&rep.pre_restore_snapshot.expect("pre"));
            assert!(pre.manifest.tags.iter().any(|t| t == "pre-restore"));
            let undo = f
                .repo
                .restore_in_place(&pre, &f.db, &opts(), &|_| {})
                .unwrap_or_else(|e| panic!("{mode} {change}: undo: {e}"));
            assert!(undo.applied);
            assert_eq!(
                pages(&f.db),
                before_pages,
                "{mode} {change}: undone exactly"
            );
            assert_eq!(snapback_testkit::db::rows(&f.db), before_rows);
            integrity(&f.db);
        }
    }
}

#[test]
fn nothing_to_change_writes_nothing() {
    let f = fx("wal");
    let s = f.snap();
    let plan = f.repo.plan_in_place(&s, &f.db, &opts()).expect("plan");
    assert_eq!(plan.pages_changed(), 0, "{plan:?}");
    let rep = f
        .repo
        .restore_in_place(&s, &f.db, &opts(), &|_| {})
        .expect("restore");
    assert!(!rep.applied);
}

#[test]
fn a_held_write_lock_is_refused_after_lock_wait_with_nothing_written() {
    let f = fx("wal");
    let s = f.snap();
    let app = Connection::open(&f.db).expect("app");
    app.execute_batch("UPDATE t SET v = 'changed' WHERE id < 10")
        .expect("change");
    let before = pages(&f.db);
    app.execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    let mut o = opts();
    o.lock_wait = Duration::from_millis(300);
    let e = f
        .repo
        .restore_in_place(&s, &f.db, &o, &|_| {})
        .expect_err("locked");
    assert_eq!(e.kind(), Kind::Locked, "{e}");
    assert!(e.to_string().contains("cannot lock"), "{e}");
    app.execute_batch("ROLLBACK").expect("release");
    assert_eq!(pages(&f.db), before);
}

#[test]
fn page_size_and_journal_mode_differences_are_refused() {
    let f = fx("wal");
    let s = f.snap();
    let c = Connection::open(&f.db).expect("open");
    c.execute_batch("PRAGMA journal_mode=DELETE").expect("mode");
    drop(c);
    let before = pages(&f.db);
    let e = f
        .repo
        .restore_in_place(&s, &f.db, &opts(), &|_| {})
        .expect_err("mode");
    assert!(e.to_string().contains("journal mode differs"), "{e}");
    assert_eq!(pages(&f.db), before);

    let c = Connection::open(&f.db).expect("open");
    c.execute_batch("PRAGMA page_size=8192; VACUUM; PRAGMA journal_mode=WAL")
        .expect("page size");
    drop(c);
    let before = pages(&f.db);
    let e = f
        .repo
        .plan_in_place(&s, &f.db, &opts())
        .expect_err("page size");
    assert!(e.to_string().contains("page size differs"), "{e}");
    let e = f
        .repo
        .restore_in_place(&s, &f.db, &opts(), &|_| {})
        .expect_err("page size");
    assert!(e.to_string().contains("page size differs"), "{e}");
    assert_eq!(pages(&f.db), before);
}

#[test]
fn another_database_of_the_snapshot_is_not_taken_silently() {
    let f = fx("wal");
    let s = f.snap();
    let other = f.db.with_file_name("other.db");
    std::fs::copy(&f.db, &other).expect("copy");
    let e = f
        .repo
        .plan_in_place(&s, &other, &opts())
        .expect_err("another database");
    assert!(e.to_string().contains("--path"), "{e}");
    let mut o = opts();
    o.path = Some(f.live());
    f.repo
        .plan_in_place(&s, &other, &o)
        .expect("named with --path");
    let e = f
        .repo
        .plan_in_place(&s, f.db.parent().expect("dir"), &opts())
        .expect_err("a directory");
    assert!(e.to_string().contains("is a directory"), "{e}");
}

/// The compare runs in a read transaction before the write lock: a writer
/// that commits between the two must neither be overwritten with a stale
/// compare (the result is still the snapshot's image exactly) nor be lost
/// from the undo point (restoring the pre-restore snapshot gives back the
/// database with that commit). In WAL mode only the pages of the frames
/// committed since are hashed again; with a rollback journal the whole
/// database is.
#[test]
fn a_writer_committing_between_the_compare_and_the_write_is_rechecked_and_kept_in_the_undo_point() {
    use crate::restore_inplace::Recheck;
    for mode in ["wal", "delete"] {
        for late in ["update", "grow", "shrink"] {
            let f = fx(mode);
            let s = f.snap();
            let want_pages = pages(&f.db);
            let app = Connection::open(&f.db).expect("app");
            app.execute_batch("UPDATE t SET v = 'damaged' WHERE id % 9 = 0")
                .expect("change");
            let sql = match late {
                "update" => "UPDATE t SET v = 'late' WHERE id % 5 = 0",
                "grow" => "WITH RECURSIVE n(i) AS (VALUES(2000) UNION ALL SELECT i+1 FROM n WHERE i<2600) INSERT INTO t SELECT i, hex(randomblob(100)) FROM n",
                _ => "DELETE FROM t WHERE id > 100; VACUUM",
            };
            let committed = std::cell::Cell::new(false);
            let after_late = std::cell::RefCell::new(None);
            let progress = |m: &str| {
                if m.starts_with("compared:") && !committed.get() {
                    app.execute_batch(sql).expect("late commit");
                    committed.set(true);
                    *after_late.borrow_mut() = Some(pages(&f.db));
                }
            };
            let rep = f
                .repo
                .restore_in_place(&s, &f.db, &opts(), &progress)
                .unwrap_or_else(|e| panic!("{mode} {late}: restore: {e}"));
            assert!(committed.get(), "the hook ran");
            let want_recheck = if mode == "wal" {
                matches!(rep.recheck, Some(Recheck::WalPages(n)) if n > 0)
            } else {
                rep.recheck == Some(Recheck::FullRead)
            };
            assert!(want_recheck, "{mode} {late}: {:?}", rep.recheck);
            assert_eq!(
                pages(&f.db),
                want_pages,
                "{mode} {late}: the snapshot's image"
            );
            integrity(&f.db);

            // The undo point holds the late commit: undoing gives back the
            // database as the writer left it.
            let pre = f.snapshot_by_id(&rep.pre_restore_snapshot.expect("pre"));
            f.repo
                .restore_in_place(&pre, &f.db, &opts(), &|_| {})
                .unwrap_or_else(|e| panic!("{mode} {late}: undo: {e}"));
            let after_late = after_late
                .borrow()
                .clone()
                .expect("pages after the late commit");
            assert_eq!(
                pages(&f.db),
                after_late,
                "{mode} {late}: undone to the late commit"
            );
            integrity(&f.db);
        }
    }
}

/// A live database in WAL mode that snapback already captures, as an
/// application has it: open and writing (the WAL has frames), with the
/// regular backup's capture state left behind.
struct Captured {
    f: Fx,
    _state: tempfile::TempDir,
    /// In-place options with the state directory.
    o: InPlaceOptions,
    app: Connection,
    /// The backup.
    s: Snapshot,
    /// Its image.
    want_pages: Vec<Vec<u8>>,
}

fn captured() -> Captured {
    let f = fx("wal");
    let state = tempfile::tempdir().expect("state dir");
    let mut o = opts();
    o.snapshot.state_dir = Some(state.path().to_path_buf());
    let app = Connection::open(&f.db).expect("app");
    app.execute_batch("PRAGMA wal_autocheckpoint=0; UPDATE t SET v = 'new' WHERE id = 1")
        .expect("a first commit");
    let id = f
        .repo
        .snapshot(std::slice::from_ref(&f.db), &o.snapshot, &NoProgress)
        .expect("backup")
        .id;
    let s = f.snapshot_by_id(&id);
    let want_pages = pages(&f.db);
    Captured {
        f,
        _state: state,
        o,
        app,
        s,
        want_pages,
    }
}

/// A live database that snapback already captures (a capture state, as
/// `snapback snapshot` and `snapback watch` leave) gets its undo point by
/// WAL delta, and that capture's chunk list is the compare: no page of the
/// live database is read whole, and the undo point still gives back the
/// state the restore replaced, bit for bit.
#[test]
fn with_a_capture_state_the_undo_point_and_the_compare_read_only_the_changed_pages() {
    let Captured {
        f,
        _state,
        o,
        app,
        s,
        want_pages,
    } = captured();
    app.execute_batch("UPDATE t SET v = 'damaged' WHERE id % 11 = 0")
        .expect("change");
    let before_pages = pages(&f.db);
    let rep = f
        .repo
        .restore_in_place(&s, &f.db, &o, &|_| {})
        .expect("restore");
    assert!(rep.applied);
    let pre = f.snapshot_by_id(&rep.pre_restore_snapshot.expect("pre"));
    let method = pre.manifest.files[0]
        .sqlite
        .as_ref()
        .and_then(|x| x.capture.clone());
    assert_eq!(rep.full_reads, 0, "{rep:?} {method:?}");
    assert_eq!(pages(&f.db), want_pages, "the snapshot's image");
    integrity(&f.db);
    assert!(
        matches!(
            method,
            Some(crate::manifest::CaptureMethod::WalDelta { .. })
        ),
        "{method:?}"
    );
    f.repo
        .restore_in_place(&pre, &f.db, &o, &|_| {})
        .expect("undo");
    assert_eq!(pages(&f.db), before_pages, "undone exactly");
    integrity(&f.db);
}

/// The undo point of a live database that was never captured (a copy at
/// another path, restored in place from the snapshot of the original)
/// compresses with the snapshot's own dictionary, as that database's next
/// capture would: no dictionary is trained for it (training was most of
/// the pre-restore snapshot's time), and the undo point still gives back
/// the replaced state bit for bit.
#[test]
fn the_undo_point_of_a_never_captured_database_reuses_the_targets_dictionary() {
    let f = fx("wal");
    let c = Connection::open(&f.db).expect("open");
    c.execute_batch(
        "WITH RECURSIVE n(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM n WHERE i<3000)
         INSERT INTO t SELECT 1000 + i, printf('doc %d %s', i, hex(randomblob(600))) FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .expect("grow");
    drop(c);
    let s = f.snap();
    let dict_of = |s: &Snapshot| {
        s.manifest.files[0]
            .sqlite
            .as_ref()
            .and_then(|q| q.dict.as_ref())
            .map(|u| u.id)
    };
    let want = dict_of(&s).expect("the snapshot's database has a dictionary");
    let other = f.db.with_file_name("other.db");
    std::fs::copy(&f.db, &other).expect("copy");
    let c = Connection::open(&other).expect("open copy");
    c.execute_batch("UPDATE t SET v = 'changed' WHERE id % 7 = 0")
        .expect("change the copy");
    drop(c);
    let before = pages(&other);
    let mut o = opts();
    o.path = Some(f.live());
    let rep = f
        .repo
        .restore_in_place(&s, &other, &o, &|_| {})
        .expect("restore");
    assert!(rep.applied);
    let pre = f.snapshot_by_id(&rep.pre_restore_snapshot.expect("pre"));
    assert_eq!(dict_of(&pre), Some(want), "the undo point's dictionary");
    let dicts = std::fs::read_dir(f._dir.path().join("repo").join("dicts"))
        .expect("dicts")
        .count();
    assert_eq!(dicts, 1, "no dictionary was trained for the copy");
    let mut u = opts();
    u.path = Some(other.to_string_lossy().into_owned());
    f.repo
        .restore_in_place(&pre, &other, &u, &|_| {})
        .expect("undo");
    assert_eq!(pages(&other), before, "undone exactly");
    integrity(&other);
}

/// A live database snapback already captures, with the application's
/// writer committing after the compare (the pre-restore snapshot's WAL
/// delta) and before the write lock: the transaction re-hashes only the
/// pages of the WAL frames committed since, the restored database is the
/// snapshot's image, and the undo point, taken again under the write lock,
/// holds the late commit.
#[test]
fn with_a_capture_state_a_writer_committing_before_the_write_is_rechecked_and_kept_in_the_undo_point(
) {
    use crate::restore_inplace::Recheck;
    let Captured {
        f,
        _state,
        o,
        app,
        s,
        want_pages,
    } = captured();
    app.execute_batch("UPDATE t SET v = 'damaged' WHERE id % 11 = 0")
        .expect("change");
    let after_late = std::cell::RefCell::new(None);
    let progress = |m: &str| {
        if m.starts_with("compared:") && after_late.borrow().is_none() {
            app.execute_batch("UPDATE t SET v = 'late' WHERE id % 7 = 0")
                .expect("late commit");
            *after_late.borrow_mut() = Some(pages(&f.db));
        }
    };
    let rep = f
        .repo
        .restore_in_place(&s, &f.db, &o, &progress)
        .expect("restore");
    assert!(rep.applied);
    assert_eq!(rep.full_reads, 0, "{rep:?}");
    assert!(
        matches!(rep.recheck, Some(Recheck::WalPages(n)) if n > 0),
        "{:?}",
        rep.recheck
    );
    assert_eq!(pages(&f.db), want_pages, "the snapshot's image");
    integrity(&f.db);
    let pre = f.snapshot_by_id(&rep.pre_restore_snapshot.expect("pre"));
    f.repo
        .restore_in_place(&pre, &f.db, &o, &|_| {})
        .expect("undo");
    let after_late = after_late.borrow().clone().expect("the late commit ran");
    assert_eq!(pages(&f.db), after_late, "undone to the late commit");
    integrity(&f.db);
}

/// A capture state made stale by a write into the database file from
/// outside SQLite (a new mtime, the pages in no WAL frame) is not trusted:
/// the pre-restore snapshot is a full scan, which is the compare, so the
/// page written outside SQLite is restored too, and the undo point holds
/// it.
#[test]
fn a_capture_state_made_stale_by_a_write_outside_sqlite_falls_back_to_the_full_compare() {
    let Captured {
        f,
        _state,
        o,
        app,
        s,
        want_pages,
    } = captured();
    app.execute_batch("UPDATE t SET v = 'changed' WHERE id = 2")
        .expect("change");
    // The last page, which no WAL frame holds (only the rows of the first
    // pages changed).
    let last = want_pages.len() as u64;
    crate::delta_snapshot_tests::write_outside_sqlite(&f.db, last, 4096);
    let before_pages = pages(&f.db);
    assert_ne!(
        before_pages[last as usize - 1],
        want_pages[last as usize - 1],
        "the page written outside SQLite is what SQLite reads"
    );
    let rep = f
        .repo
        .restore_in_place(&s, &f.db, &o, &|_| {})
        .expect("restore");
    assert!(rep.applied);
    assert_eq!(rep.full_reads, 1, "{rep:?}");
    let pre = f.snapshot_by_id(&rep.pre_restore_snapshot.expect("pre"));
    let method = pre.manifest.files[0]
        .sqlite
        .as_ref()
        .and_then(|x| x.capture.clone());
    assert!(
        matches!(&method, Some(crate::manifest::CaptureMethod::FullScan { reason }) if reason.contains("outside SQLite")),
        "{method:?}"
    );
    assert_eq!(pages(&f.db), want_pages, "the snapshot's image");
    integrity(&f.db);
    f.repo
        .restore_in_place(&pre, &f.db, &o, &|_| {})
        .expect("undo");
    assert_eq!(
        pages(&f.db),
        before_pages,
        "undone exactly, the outside write too"
    );
}
