//! WAL-delta capture through `Repository::snapshot`: what it commits,
//! that it restores exactly what a full scan would, and that every way the
//! previous capture's knowledge can be lost or wrong falls back to a full
//! scan (recorded in the manifest) that is still right.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use snapback_storage::{LocalStore, Store};
use snapback_testkit::db::{insert_blobs, wal_writer};

use crate::capture_state;
use crate::manifest::{CaptureMethod, FileEntry};
use crate::repo::{InitOptions, Repository};
use crate::snapshot::SnapshotOptions;
use crate::NoProgress;

struct Fx {
    dir: tempfile::TempDir,
    repo: Repository,
    db: PathBuf,
    w: Connection,
}

impl Fx {
    fn new(format_version: u32) -> Fx {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::create(dir.path().join("repo")).expect("store"));
        let repo = Repository::init(
            store,
            &InitOptions {
                format_version,
                ..Default::default()
            },
        )
        .expect("init");
        let db = dir.path().join("app.db");
        let w = wal_writer(&db);
        let fx = Fx { dir, repo, db, w };
        fx.grow(300);
        fx
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn grow(&self, n: u32) {
        insert_blobs(&self.w, n, 900);
    }

    fn touch(&self) {
        self.w
            .execute(
                "UPDATE t SET v = randomblob(900) WHERE id = (SELECT min(id) FROM t)",
                [],
            )
            .expect("update");
    }

    fn snap_with(&self, state_dir: Option<PathBuf>) -> (crate::id::Id, FileEntry, u32) {
        let opts = SnapshotOptions {
            state_dir,
            busy_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let r = self
            .repo
            .snapshot(std::slice::from_ref(&self.db), &opts, &NoProgress)
            .expect("snapshot");
        (r.id, r.manifest.files[0].clone(), r.manifest.format_version)
    }

    fn snap(&self) -> (crate::id::Id, FileEntry) {
        let (id, f, _) = self.snap_with(Some(self.state_dir()));
        (id, f)
    }

    fn restored(&self, f: &FileEntry, name: &str) -> Vec<u8> {
        let dest = self.dir.path().join(name);
        self.repo
            .restore_file(f, &dest, true, &NoProgress)
            .expect("restore");
        let c = Connection::open(&dest).expect("open restored");
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity");
        assert_eq!(ok, "ok", "{name} passes integrity_check");
        drop(c);
        std::fs::read(&dest).expect("read restored")
    }

    fn state_paths(&self) -> capture_state::StatePaths {
        let canon = std::fs::canonicalize(&self.db).expect("canon");
        capture_state::paths(
            &self.state_dir(),
            &self.repo.config().repo_id,
            &canon.to_string_lossy(),
        )
    }
}

fn reason(f: &FileEntry) -> String {
    match f.sqlite.as_ref().and_then(|s| s.capture.clone()) {
        Some(CaptureMethod::FullScan { reason }) => reason,
        other => panic!("expected a full scan, got {other:?}"),
    }
}

fn is_delta(f: &FileEntry) -> bool {
    matches!(
        f.sqlite.as_ref().and_then(|s| s.capture.clone()),
        Some(CaptureMethod::WalDelta { .. })
    )
}

/// Takes the next capture after `change`, asserts it fell back for
/// `why`, and that its image is the full scan's of the same content.
fn falls_back(fx: &Fx, what: &str, why: &str) {
    let (_, f) = fx.snap();
    let r = reason(&f);
    assert!(
        r.contains(why),
        "{what}: fell back for {r:?}, expected {why:?}"
    );
    assert!(
        f.sha256.is_none(),
        "{what}: a format-2 full scan hashes each page once (its id), no whole-file hash"
    );
    let (_, full, _) = fx.snap_with(None);
    assert_eq!(
        fx.restored(&f, "fallback.db"),
        fx.restored(&full, "full.db"),
        "{what}: the fallback's image is the database's"
    );
}

/// A format-2 full scan hashes each page once, for its id: no whole-file
/// SHA-256 (a second pass over every byte) is recorded, and the image is
/// still proven (restore checks each page against its id and the list
/// against `db_checksum`) and restores bit for bit. A format-1 repository
/// keeps the whole-file hash its manifests need.
#[test]
fn a_format_2_full_scan_hashes_each_page_once_and_restores_bit_for_bit() {
    for format in [1, 2] {
        let fx = Fx::new(format);
        fx.w.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        let file = std::fs::read(&fx.db).expect("read the database");
        let (_, f, _) = fx.snap_with(None);
        reason(&f); // a full scan (it panics on any other capture)
        assert_eq!(
            fx.restored(&f, &format!("format{format}.db")),
            file,
            "format {format}: the full scan restores bit for bit"
        );
        if format == 1 {
            assert_eq!(f.sha256, Some(crate::id::Id::of(&file)));
        } else {
            assert_eq!(f.sha256, None, "format 2: no whole-file hash");
        }
    }
}

#[test]
fn delta_snapshots_restore_bit_for_bit_like_a_full_scan() {
    let fx = Fx::new(2);
    let (_, first) = fx.snap();
    assert!(reason(&first).contains("no local capture state"));
    // The first state may carry the salts of a WAL that has not started
    // (its first writer draws new ones): one more scan settles it.
    fx.touch();
    fx.snap();
    let mut deltas = 0;
    for round in 0..6 {
        match round % 3 {
            0 => fx.touch(),
            1 => fx.grow(40),
            _ => {
                fx.w.execute("DELETE FROM t WHERE id % 5 = 0", [])
                    .expect("delete");
            }
        }
        let (_, f, version) = fx.snap_with(Some(fx.state_dir()));
        assert_eq!(version, 2);
        assert!(is_delta(&f), "round {round}: {:?}", f.sqlite);
        assert!(f.sha256.is_none(), "a delta records no whole-file hash");
        deltas += 1;
        let (_, full, _) = fx.snap_with(None);
        assert_eq!(
            fx.restored(&f, "delta.db"),
            fx.restored(&full, "full.db"),
            "round {round}: the delta's image is byte for byte the full scan's"
        );
        assert_eq!(f.db_checksum, full.db_checksum);
    }
    assert_eq!(deltas, 6);
}

#[test]
fn every_lost_or_wrong_capture_state_falls_back_to_a_full_scan() {
    let mut fx = Fx::new(2);
    let settle = |fx: &Fx| {
        fx.touch();
        fx.snap();
        fx.touch();
        let (_, f) = fx.snap();
        assert!(is_delta(&f), "a delta works again: {:?}", f.sqlite);
    };
    fx.touch();
    falls_back(&fx, "first capture", "no local capture state");
    settle(&fx);

    // Damaged state.
    let sp = fx.state_paths();
    let mut b = std::fs::read(&sp.file).expect("state");
    b[10] ^= 0x20;
    std::fs::write(&sp.file, &b).expect("damage");
    fx.touch();
    falls_back(&fx, "damaged state", "damaged");
    settle(&fx);

    // Missing state.
    std::fs::remove_file(&sp.file).expect("rm");
    fx.touch();
    falls_back(&fx, "missing state", "no local capture state");
    settle(&fx);

    // A state written on another host.
    let mut s = capture_state::load(&sp).expect("state");
    s.host = "elsewhere".into();
    capture_state::save(&sp, &s).expect("save");
    fx.touch();
    falls_back(&fx, "another host", "another host");
    settle(&fx);

    // Another capture of the same database is running.
    let held = capture_state::try_lock(&sp).expect("lock").expect("free");
    fx.touch();
    falls_back(&fx, "concurrent capture", "another capture");
    drop(held);
    settle(&fx);

    // The previous capture's snapshot was removed from the repository.
    let s = capture_state::load(&sp).expect("state");
    fx.repo
        .store()
        .delete(&format!("snapshots/{}", s.manifest))
        .expect("delete manifest");
    fx.touch();
    falls_back(&fx, "manifest gone", "no longer in the repository");
    settle(&fx);

    // The WAL restarted (a complete checkpoint, then a write).
    fx.w.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    fx.touch();
    falls_back(&fx, "WAL restarted", "restarted");
    settle(&fx);

    // VACUUM rewrites every page into the WAL: a valid (whole) delta.
    fx.w.execute("DELETE FROM t WHERE id % 3 = 0", [])
        .expect("delete");
    fx.w.execute_batch("VACUUM").expect("vacuum");
    let (_, f) = fx.snap();
    assert!(is_delta(&f), "VACUUM: {:?}", f.sqlite);
    let (_, full, _) = fx.snap_with(None);
    assert_eq!(fx.restored(&f, "vacuum.db"), fx.restored(&full, "full.db"));
    // When more than a quarter of a larger database changed, a scan is
    // cheaper than reading the pages one by one.
    fx.grow(4000);
    falls_back(&fx, "most pages changed", "more than a quarter");
    settle(&fx);

    // The database file was replaced by another one.
    let other = fx.dir.path().join("other.db");
    {
        let c = Connection::open(&other).expect("other");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
             INSERT INTO t(v) VALUES (randomblob(900));",
        )
        .expect("other db");
    }
    // The application closes it first (its last connection checkpoints
    // and removes the WAL), then the file is replaced and reopened.
    fx.w = Connection::open_in_memory().expect("close the writer");
    std::fs::rename(&other, &fx.db).expect("replace");
    fx.w = Connection::open(&fx.db).expect("reopen");
    fx.w.execute_batch("PRAGMA wal_autocheckpoint=0")
        .expect("wal");
    fx.touch();
    falls_back(&fx, "file replaced", "replaced");
    settle(&fx);

    // Rollback-journal mode.
    fx.w.execute_batch("PRAGMA journal_mode=DELETE")
        .expect("rollback");
    fx.touch();
    falls_back(&fx, "rollback mode", "rollback-journal");
}

#[test]
fn a_format_1_repository_keeps_full_scans_and_format_1_manifests() {
    let fx = Fx::new(1);
    fx.snap();
    fx.touch();
    fx.snap();
    fx.touch();
    let (_, f, version) = fx.snap_with(Some(fx.state_dir()));
    assert_eq!(version, 1, "a format-1 repository gets format-1 manifests");
    assert!(reason(&f).contains("format 1"), "{:?}", f.sqlite);
    assert!(f.sha256.is_some());
    assert!(
        !fx.state_dir().join("capture").exists(),
        "no capture state for a format-1 repository"
    );
}

#[test]
fn reading_the_wal_index_never_releases_a_read_transactions_locks() {
    // Closing any descriptor of a file drops every POSIX lock the process
    // holds on it. A capture reads the -shm file while its own read
    // transaction (or another connection of the process) holds WAL locks
    // there; those locks must survive, or a checkpoint could reset the
    // WAL under the reader.
    let d = tempfile::tempdir().expect("tmp");
    let db = d.path().join("app.db");
    let w = Connection::open(&db).expect("open");
    w.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(5000));",
    )
    .expect("setup");
    let cap = crate::sqlite::Capture::begin(&db, Duration::from_secs(5)).expect("begin");
    w.execute("INSERT INTO t VALUES (randomblob(5000))", [])
        .expect("a commit after the reader began");
    for _ in 0..3 {
        let b = crate::delta::before(&db);
        assert!(b.index.is_some(), "the wal-index header is read");
        let _ = crate::delta::position_of_full_scan(&db, &b, true, cap.page_size);
    }
    // The checkpoint runs in another process: within one process SQLite
    // sees its own connections' locks without asking the kernel.
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA wal_checkpoint(TRUNCATE);")
        .output()
        .expect("run the sqlite3 shell");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let busy: i64 = text
        .split('|')
        .next()
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("sqlite3 printed {text:?}"));
    assert_eq!(
        busy, 1,
        "the reader still holds its read mark, so a TRUNCATE checkpoint cannot complete"
    );
    cap.finish().expect("finish");
}

#[test]
fn the_current_index_is_read_again_whole_when_an_index_object_is_gone() {
    let fx = Fx::new(2);
    fx.snap();
    fx.grow(50);
    fx.snap();
    let all = fx.repo.current_index().expect("index").blob_count();
    let keys: Vec<String> = fx
        .repo
        .store()
        .list("index/")
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(keys.len() >= 2, "two snapshots wrote two index objects");
    assert_eq!(
        fx.repo.current_index().expect("index").blob_count(),
        all,
        "nothing changed"
    );
    fx.repo
        .store()
        .delete(&keys[0])
        .expect("delete an index object");
    let now = fx.repo.current_index().expect("index").blob_count();
    assert!(
        now < all,
        "blobs of the deleted index object are no longer indexed ({now} of {all})"
    );
}

#[test]
fn refreshing_an_index_with_no_new_object_reuses_the_loaded_one() {
    let fx = Fx::new(2);
    fx.snap();
    let first = fx.repo.refresh_index().expect("index");
    let again = fx.repo.current_index().expect("index");
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "no index object is new: the loaded index is returned, not a copy"
    );
    fx.grow(50);
    fx.snap();
    let after = fx.repo.refresh_index().expect("index");
    assert!(
        after.blob_count() > first.blob_count(),
        "a new index object is read ({} then {})",
        first.blob_count(),
        after.blob_count()
    );
    assert!(std::sync::Arc::ptr_eq(
        &after,
        &fx.repo.refresh_index().expect("index")
    ));
}

/// Takes the next capture, and asserts that its image is byte for byte a
/// full scan's of the same content, whichever way it was captured.
/// Returns the capture and why it fell back (`None`: it was a delta).
fn never_stale(fx: &Fx, what: &str) -> (FileEntry, Option<String>) {
    let (_, f) = fx.snap();
    let (_, full, _) = fx.snap_with(None);
    assert_eq!(
        fx.restored(&f, "next.db"),
        fx.restored(&full, "full.db"),
        "{what}: the capture's image is the database's"
    );
    let why = (!is_delta(&f)).then(|| reason(&f));
    (f, why)
}

/// Two captures, the second a delta: a state the next capture can use.
fn established(fx: &Fx) {
    fx.touch();
    fx.snap();
    fx.touch();
    let (_, f) = fx.snap();
    assert!(is_delta(&f), "the state is established: {:?}", f.sqlite);
}

/// The application opens the database again and changes one row.
fn reopen_and_touch(fx: &mut Fx) {
    fx.w = Connection::open(&fx.db).expect("reopen");
    fx.w.execute_batch("PRAGMA wal_autocheckpoint=0")
        .expect("wal");
    fx.touch();
}

#[test]
fn writes_in_rollback_mode_between_two_wal_captures_are_never_missed() {
    let mut fx = Fx::new(2);
    established(&fx);
    // The application leaves WAL mode (its WAL is checkpointed and
    // removed), writes straight into the database file, where no WAL frame
    // records it, and comes back to WAL mode for one small write.
    fx.w = Connection::open_in_memory().expect("close the writer");
    {
        let c = Connection::open(&fx.db).expect("open");
        c.execute_batch("PRAGMA journal_mode=DELETE;")
            .expect("rollback");
        c.execute("UPDATE t SET v = randomblob(900) WHERE id % 7 = 0", [])
            .expect("update in rollback mode");
        c.execute_batch("PRAGMA journal_mode=WAL;")
            .expect("wal again");
    }
    reopen_and_touch(&mut fx);
    let (_, why) = never_stale(&fx, "rollback-mode writes");
    let why = why.expect("no delta can see writes made in rollback mode");
    assert!(
        why.contains("restarted") || why.contains("no valid header"),
        "{why}"
    );
    // The next capture can be a delta again, and a right one.
    fx.touch();
    let (_, why) = never_stale(&fx, "after the switch");
    assert_eq!(why, None, "a delta works again");
}

#[test]
fn a_page_size_change_between_captures_is_never_a_stale_delta() {
    let mut fx = Fx::new(2);
    established(&fx);
    // In WAL mode VACUUM keeps the page size: the application leaves WAL
    // mode to change it.
    fx.w = Connection::open_in_memory().expect("close the writer");
    {
        let c = Connection::open(&fx.db).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode=DELETE; PRAGMA page_size=1024; VACUUM; PRAGMA journal_mode=WAL;",
        )
        .expect("new page size");
        let ps: u32 = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        assert_eq!(ps, 1024);
    }
    reopen_and_touch(&mut fx);
    let (_, why) = never_stale(&fx, "page size changed");
    let why = why.expect("a new page size is never a delta");
    assert!(why.contains("page size"), "{why}");
}

#[test]
fn closing_the_last_connection_and_reopening_is_never_a_stale_delta() {
    let mut fx = Fx::new(2);
    established(&fx);
    // The last connection closes (checkpoint, WAL and -shm removed); a
    // short-lived one writes and closes the same way; then the application
    // opens it again and writes one row: a new WAL, new salts.
    fx.w = Connection::open_in_memory().expect("close the writer");
    for _ in 0..2 {
        let c = Connection::open(&fx.db).expect("open");
        c.execute("UPDATE t SET v = randomblob(900) WHERE id % 5 = 0", [])
            .expect("update");
    }
    assert!(
        !crate::wal::wal_path(&fx.db).exists(),
        "the WAL was removed"
    );
    reopen_and_touch(&mut fx);
    let (_, why) = never_stale(&fx, "WAL removed and created again");
    assert!(why
        .expect("a new WAL is never a delta")
        .contains("restarted"));
}

#[test]
fn a_capture_without_a_shm_file_is_a_full_scan_and_keeps_the_old_state() {
    let mut fx = Fx::new(2);
    fx.touch();
    fx.snap();
    fx.touch();
    fx.snap();
    let sp = fx.state_paths();
    let kept = std::fs::read(&sp.file).expect("state");
    // No application has the database open: no -shm, no wal-index.
    fx.w = Connection::open_in_memory().expect("close the writer");
    assert!(!crate::wal::shm_path(&fx.db).exists());
    let (_, why) = never_stale(&fx, "no -shm");
    assert!(why.expect("no wal-index, no delta").contains("wal-index"));
    assert_eq!(
        std::fs::read(&sp.file).expect("state"),
        kept,
        "a capture that knows no WAL position leaves the state as it was"
    );
    // The application comes back: its new WAL is not the saved one.
    reopen_and_touch(&mut fx);
    let (_, why) = never_stale(&fx, "reopened after the full scan");
    assert!(why.expect("new salts").contains("restarted"));
}

#[test]
fn a_state_older_than_the_last_snapshot_still_gives_a_right_delta() {
    // A crash after the manifest was written but before its state was:
    // the state left behind is the previous capture's, still true.
    let fx = Fx::new(2);
    fx.touch();
    fx.snap();
    fx.touch();
    fx.snap();
    let sp = fx.state_paths();
    let older = std::fs::read(&sp.file).expect("state");
    fx.touch();
    // About 45 pages of new rows (200 rows of 900 bytes).
    fx.grow(200);
    let (_, f) = fx.snap();
    assert!(is_delta(&f));
    std::fs::write(&sp.file, &older).expect("put the older state back");
    fx.touch();
    let (f, why) = never_stale(&fx, "older state");
    assert_eq!(why, None, "the older position is still a valid start");
    let read = match f.sqlite.and_then(|s| s.capture) {
        Some(CaptureMethod::WalDelta { pages_read }) => pages_read,
        other => panic!("{other:?}"),
    };
    assert!(
        read >= 40,
        "it re-reads what the lost state would have skipped ({read} pages)"
    );
}

/// A snapshot that waits for a writer (here a rollback-mode database under
/// BEGIN EXCLUSIVE, so the reader must wait for the commit) holds that
/// writer's transaction; its manifest's time must not be before that commit,
/// or `@T` between the two would select an image holding a transaction
/// committed after T.
#[test]
fn manifest_time_is_never_before_a_transaction_its_image_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn Store> =
        Arc::new(LocalStore::create(dir.path().join("repo")).expect("store"));
    let repo = Repository::init(store, &InitOptions::default()).expect("init");
    let db = dir.path().join("app.db");
    let w = Connection::open(&db).expect("open");
    w.execute_batch("CREATE TABLE t(v TEXT); INSERT INTO t VALUES ('early');")
        .expect("schema");
    w.execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES ('late');")
        .expect("hold the write lock");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        let before_commit = crate::time::now();
        w.execute_batch("COMMIT").expect("commit");
        before_commit
    });
    let opts = SnapshotOptions {
        busy_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let r = repo
        .snapshot(std::slice::from_ref(&db), &opts, &NoProgress)
        .expect("snapshot");
    let before_commit = writer.join().expect("writer");
    let f = &r.manifest.files[0];
    let dest = dir.path().join("restored.db");
    repo.restore_file(f, &dest, true, &NoProgress)
        .expect("restore");
    let rows: i64 = Connection::open(&dest)
        .expect("open restored")
        .query_row("SELECT count(*) FROM t WHERE v = 'late'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 1, "the snapshot waited for the commit and holds it");
    let time = crate::time::parse_rfc3339(&r.manifest.time).expect("time");
    assert!(
        time >= before_commit,
        "manifest time {} is before the commit of a transaction its image holds ({})",
        r.manifest.time,
        crate::time::format_rfc3339(before_commit)
    );
}

#[test]
fn a_delta_snapshot_whose_unchanged_pages_lost_their_pack_is_refused() {
    let fx = Fx::new(2);
    fx.snap();
    established(&fx);
    // New pages in a pack of their own (with a patch the next capture
    // replaces), then one more delta over them.
    fx.grow(40);
    let (_, f) = fx.snap();
    assert!(is_delta(&f), "{:?}", f.sqlite);
    fx.touch();
    let (_, parent) = fx.snap();
    assert!(is_delta(&parent), "{:?}", parent.sqlite);
    let index = fx.repo.index().expect("index");
    let list = fx.repo.chunk_list(&index, &parent).expect("list");
    let pack_of = |id: &crate::id::Id| index.get(id).expect("indexed").pack;
    let list_packs: std::collections::HashSet<_> = parent.chunks.blob_ids().map(pack_of).collect();
    let lost = list
        .iter()
        .map(|c| pack_of(&c.id))
        .find(|p| !list_packs.contains(p))
        .expect("a pack holding pages and none of the chunk list");
    drop(index);
    fx.repo
        .store()
        .delete(&crate::layout::pack_key(&lost))
        .expect("delete the pack");
    fx.touch();
    let opts = SnapshotOptions {
        state_dir: Some(fx.state_dir()),
        busy_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let before = fx.repo.snapshots().expect("snapshots").len();
    let e = fx
        .repo
        .snapshot(std::slice::from_ref(&fx.db), &opts, &NoProgress)
        .expect_err("a snapshot referencing a lost pack is not committed");
    assert!(
        e.to_string().contains("pack(s) it references are missing"),
        "{e}"
    );
    assert!(e.to_string().contains(&lost.short()), "{e}");
    assert_eq!(fx.repo.snapshots().expect("snapshots").len(), before);
}

#[test]
fn a_full_scan_into_reused_buffers_reads_every_page_as_into_fresh_ones() {
    // The full scan hands each batch's buffer back to the page reader once
    // it is sealed; a reused buffer (of another size, holding another
    // batch's bytes) must give exactly the pages a fresh one does.
    let d = tempfile::tempdir().expect("tmp");
    let db = d.path().join("app.db");
    let w = Connection::open(&db).expect("open");
    w.execute_batch(
        "CREATE TABLE t(v); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t SELECT randomblob(700) FROM n;",
    )
    .expect("setup");
    let cap = crate::sqlite::Capture::begin(&db, Duration::from_secs(5)).expect("begin");
    let mut fresh = Vec::new();
    cap.read_pages(7, |b| {
        fresh.push(b);
        Ok(())
    })
    .expect("read into fresh buffers");
    assert!(fresh.len() > 3, "several batches: {}", fresh.len());
    let pool = std::cell::RefCell::new(vec![vec![0xA5u8; 3 * 4096], vec![0x5Au8; 40 * 4096]]);
    let mut reused = Vec::new();
    cap.read_pages_into(
        7,
        || pool.borrow_mut().pop().unwrap_or_default(),
        |b| {
            reused.push(b.clone());
            // Handed back dirty, as the scan hands back a sealed batch.
            pool.borrow_mut().push(b);
            Ok(())
        },
    )
    .expect("read into reused buffers");
    assert_eq!(fresh, reused, "the same pages, batch for batch");
    cap.finish().expect("finish");
}

/// Overwrites page `pgno` of `db` with random bytes from another
/// process (`dd`), as a tool writing the file outside SQLite would: a
/// descriptor of the file opened and closed here would drop this
/// process's POSIX locks on it, SQLite's included.
pub(crate) fn write_outside_sqlite(db: &Path, pgno: u64, page_size: u32) {
    // A new mtime even on a coarse clock.
    std::thread::sleep(Duration::from_millis(30));
    let st = std::process::Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", db.display()))
        .arg(format!("bs={page_size}"))
        .arg("count=1")
        .arg(format!("seek={}", pgno - 1))
        .args(["conv=notrunc", "status=none"])
        .status()
        .expect("dd");
    assert!(st.success(), "dd");
}
