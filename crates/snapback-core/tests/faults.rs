//! The core on a store that fails, lies and rots (the test kit's fault
//! store over a real local store, real SQLite databases): a failed pack
//! upload commits nothing, and bytes damaged on the way back are caught by
//! verification, never served.

use std::path::PathBuf;
use std::sync::Arc;

use snapback_core::layout::{DATA_PREFIX, SNAPSHOT_PREFIX};
use snapback_core::storage::fault::{Fault, FaultStore, Op};
use snapback_core::storage::{ErrorKind, LocalStore, Store};
use snapback_core::{
    CheckOptions, InitOptions, NoProgress, Repository, RestoreOptions, SnapshotOptions,
};
use snapback_testkit::db::{integrity, make_db, rows};

struct Lab {
    dir: tempfile::TempDir,
    store: Arc<FaultStore<LocalStore>>,
    repo: Repository,
    db: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalStore::create(dir.path().join("repo")).expect("store");
        let store = Arc::new(FaultStore::new(local));
        let repo = Repository::init(store.clone(), &InitOptions::default()).expect("init");
        let db = dir.path().join("app.db");
        make_db(&db, 2000);
        Lab {
            dir,
            store,
            repo,
            db,
        }
    }

    fn snapshot(&self) -> snapback_core::Result<snapback_core::SnapshotReport> {
        self.repo.snapshot(
            std::slice::from_ref(&self.db),
            &SnapshotOptions::default(),
            &NoProgress,
        )
    }

    /// The objects really stored under `prefix`, past the fault store.
    fn stored(&self, prefix: &str) -> usize {
        self.store.inner().list(prefix).expect("list").len()
    }

    /// Restores the newest snapshot (one file) to exactly `name`.
    fn restore_to(&self, name: &str) -> (PathBuf, snapback_core::Result<()>) {
        let dest = self.dir.path().join(name);
        let snaps = self.repo.snapshots().expect("snapshots");
        let snap = snaps.last().expect("a snapshot");
        let r = self
            .repo
            .restore(snap, &dest, &RestoreOptions::default(), &NoProgress)
            .map(|_| ());
        (dest, r)
    }
}

#[test]
fn snapshot_whose_pack_put_fails_reports_failure_and_commits_nothing() {
    let lab = Lab::new();
    lab.store.add(
        Fault::fail(Op::Put, ErrorKind::Other)
            .prefix(DATA_PREFIX)
            .nth(1),
    );
    let e = lab
        .snapshot()
        .expect_err("a failed pack upload fails the snapshot");
    assert!(
        e.to_string().contains("injected fault"),
        "the store's error is reported: {e}"
    );
    assert_eq!(lab.store.injected(), 1);
    assert_eq!(lab.stored(SNAPSHOT_PREFIX), 0, "no manifest was written");
    assert!(lab.repo.snapshots().expect("snapshots").is_empty());

    // The same store without the fault: the next snapshot commits, checks
    // and restores exactly.
    lab.store.clear();
    lab.snapshot().expect("snapshot");
    assert_eq!(lab.stored(SNAPSHOT_PREFIX), 1);
    let report = lab
        .repo
        .check(
            &CheckOptions {
                read_data: true,
                ..Default::default()
            },
            &NoProgress,
        )
        .expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (dest, r) = lab.restore_to("restored");
    r.expect("restore");
    let file = dest;
    assert_eq!(integrity(&file), "ok");
    assert_eq!(rows(&file), rows(&lab.db));
}

#[test]
fn flipped_or_truncated_pack_reads_are_caught_by_verification_and_never_restored() {
    let lab = Lab::new();
    lab.snapshot().expect("snapshot");
    for (name, fault) in [
        ("flipped", Fault::flip(Op::GetRange).prefix(DATA_PREFIX)),
        (
            "truncated",
            Fault::truncate(Op::GetRange).prefix(DATA_PREFIX),
        ),
    ] {
        lab.store.clear();
        lab.store.add(fault);
        let before = lab.store.injected();
        let (dest, r) = lab.restore_to(name);
        let e = r.expect_err("damaged bytes are refused");
        assert!(
            matches!(e, snapback_core::Error::Corrupt { .. }),
            "{name}: reported as damage: {e:?}"
        );
        assert!(
            lab.store.injected() > before,
            "{name}: the fault was hit: {e:?}"
        );
        let file = dest;
        assert!(
            !file.exists(),
            "{name}: no file is left at the destination: {e}"
        );
    }
    lab.store.clear();
    let (_, r) = lab.restore_to("clean");
    r.expect("the stored data was never damaged");
}

#[test]
fn restore_right_after_a_snapshot_in_the_same_process_finds_its_blobs() {
    // One Repository for both (as a long-lived process holds it): the
    // snapshot's own index is known to it at once.
    let lab = Lab::new();
    lab.snapshot().expect("snapshot");
    let (dest, r) = lab.restore_to("restored");
    r.expect("restore from the repository that took the snapshot");
    assert_eq!(rows(&dest), rows(&lab.db));
}

#[test]
fn snapshot_whose_every_pack_put_fails_reports_the_stores_error() {
    // Small packs, so that the capture still has packs to queue after every
    // upload thread has failed on its first: the store's error is what the
    // snapshot reports, with its kind, not that the upload threads stopped.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalStore::create(dir.path().join("repo")).expect("store");
    let store = Arc::new(FaultStore::new(local));
    let opts = InitOptions {
        pack_target_size: 1 << 16,
        ..InitOptions::default()
    };
    let repo = Repository::init(store.clone(), &opts).expect("init");
    let db = dir.path().join("app.db");
    make_db(&db, 20_000);
    store.add(Fault::fail(Op::Put, ErrorKind::Other).prefix(DATA_PREFIX));
    let e = repo
        .snapshot(
            std::slice::from_ref(&db),
            &SnapshotOptions {
                upload_threads: 2,
                ..SnapshotOptions::default()
            },
            &NoProgress,
        )
        .expect_err("no pack can be stored");
    assert!(
        e.to_string().contains("injected fault"),
        "the store's error is reported: {e}"
    );
    assert_eq!(e.kind(), snapback_core::Kind::Io, "{e}");
    // Every upload thread failed: two asked for, no more than the store
    // takes (`Tuning::write_parallelism`: one for a local directory).
    let threads = 2.min(store.tuning().write_parallelism) as u64;
    assert!(store.injected() >= threads, "every upload thread failed");
    assert!(repo.snapshots().expect("snapshots").is_empty());
}
