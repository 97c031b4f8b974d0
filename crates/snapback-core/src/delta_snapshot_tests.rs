//! WAL-delta capture through `Repository::snapshot`: what it commits,
//! that it restores exactly what a full scan would, and that every way the
//! previous capture's knowledge can be lost or wrong falls back to a full
//! scan (recorded in the manifest) that is still right.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use snapback_storage::{LocalStore, Store};

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
        let w = Connection::open(&db).expect("open");
        w.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .expect("schema");
        let fx = Fx { dir, repo, db, w };
        fx.grow(300);
        fx
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn grow(&self, n: u32) {
        for _ in 0..n {
            self.w
                .execute("INSERT INTO t(v) VALUES (randomblob(900))", [])
                .expect("insert");
        }
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
        f.sha256.is_some(),
        "{what}: a full scan records the whole-file hash"
    );
    let (_, full, _) = fx.snap_with(None);
    assert_eq!(
        fx.restored(&f, "fallback.db"),
        fx.restored(&full, "full.db"),
        "{what}: the fallback's image is the database's"
    );
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
