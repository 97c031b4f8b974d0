//! A full scan's bounded memory: its chunk list stored part by part as
//! the scan reads (no parent list, no image kept), its index entries
//! encoded into several objects as packs are stored (`new_index.rs`; 64
//! entries an object in these tests), and the check before commit that
//! proves the new blobs by their packs. Each snapshot must restore byte
//! for byte, from this handle and from a fresh one that reads every index
//! object from the store, and pass `check --read-data`.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use snapback_storage::{LocalStore, Store};
use snapback_testkit::db::insert_blobs;

use crate::check::CheckOptions;
use crate::chunklist::PART_LEN;
use crate::layout::INDEX_PREFIX;
use crate::manifest::FileEntry;
use crate::repo::{InitOptions, Repository};
use crate::snapshot::SnapshotOptions;
use crate::NoProgress;

/// A rollback-journal database of 512-byte pages, so that a few MiB
/// hold several chunk-list parts.
fn small_page_db(path: &Path, rows: u32) -> Connection {
    let c = Connection::open(path).expect("open");
    c.execute_batch(
        "PRAGMA page_size = 512; PRAGMA journal_mode = DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .expect("schema");
    insert_blobs(&c, rows, 700);
    c
}

/// A new repository of `format_version` in `dir`, and its store: packs of
/// 64 KiB, the smallest a config allows, so that a few MiB make many packs
/// (and many index objects).
fn new_repo(dir: &Path, format_version: u32) -> (Arc<dyn Store>, Repository) {
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(dir.join("repo")).expect("store"));
    let opts = InitOptions {
        format_version,
        pack_target_size: 1 << 16,
        ..Default::default()
    };
    let repo = Repository::init(store.clone(), &opts).expect("init");
    (store, repo)
}

fn snap(repo: &Repository, db: &Path) -> FileEntry {
    repo.snapshot(
        std::slice::from_ref(&db.to_path_buf()),
        &SnapshotOptions::default(),
        &NoProgress,
    )
    .expect("snapshot")
    .manifest
    .files[0]
        .clone()
}

fn restores_exactly(repo: &Repository, f: &FileEntry, db: &Path, dest: &Path) {
    repo.restore_file(f, dest, false, &NoProgress)
        .expect("restore");
    let (got, want) = (
        std::fs::read(dest).expect("read restored"),
        std::fs::read(db).expect("read db"),
    );
    assert!(
        got == want,
        "restored bytes differ ({} / {} bytes)",
        got.len(),
        want.len()
    );
}

#[test]
fn a_full_scan_with_its_list_stored_part_by_part_restores_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, repo) = new_repo(dir.path(), InitOptions::default().format_version);
    let db = dir.path().join("app.db");
    let c = small_page_db(&db, 6000);
    let pages: i64 = c
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("page count");
    let pages = pages as u64;
    assert!(
        pages > 2 * PART_LEN as u64,
        "{pages} pages: fewer than three parts"
    );

    // No parent: the list is stored as the scan goes.
    let first = snap(&repo, &db);
    assert_eq!(first.chunks.count, pages);
    assert_eq!(first.chunks.base.len(), (pages as usize).div_ceil(PART_LEN));
    assert!(first.chunks.patch.is_none());
    let objects = store.list(INDEX_PREFIX).expect("list").len();
    assert!(objects >= 8, "{objects} index objects for {pages} blobs");
    restores_exactly(&repo, &first, &db, &dir.path().join("r1.db"));

    // A parent: the list is kept whole and written as a patch on it.
    c.execute("UPDATE t SET v = randomblob(700) WHERE id % 500 = 0", [])
        .expect("update");
    drop(c);
    let second = snap(&repo, &db);
    assert!(
        second.chunks.patch.is_some(),
        "a few changed pages: a patch"
    );
    assert_ne!(second.db_checksum, first.db_checksum);
    restores_exactly(&repo, &second, &db, &dir.path().join("r2.db"));

    // The first handle read the index objects it wrote on its next use of
    // the index (`note_written_index`); a new one reads them all from the
    // store.
    let fresh = repo.reopen();
    restores_exactly(&fresh, &second, &db, &dir.path().join("r3.db"));
    let read_data = CheckOptions {
        read_data: true,
        ..Default::default()
    };
    let report = fresh.check(&read_data, &NoProgress).expect("check");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.unindexed_packs, 0);
}

#[test]
fn a_format_1_full_scan_keeps_its_whole_file_hash() {
    // Format 1 reads the whole list too (its manifests need the file's
    // SHA-256): the streamed list must give the same file.
    let dir = tempfile::tempdir().expect("tmp");
    let (_, repo) = new_repo(dir.path(), 1);
    let db = dir.path().join("app.db");
    drop(small_page_db(&db, 3000));
    let f = snap(&repo, &db);
    assert!(f.sha256.is_some());
    assert!(f.chunks.base.len() >= 2);
    restores_exactly(&repo, &f, &db, &dir.path().join("r.db"));
}

#[test]
fn chunks_larger_than_a_scan_batch_keep_the_size_the_manifest_says() {
    // sqlite_pages_per_chunk may be 1..=1024; 1024 pages of 8 KiB is an
    // 8 MiB chunk, more than SCAN_BATCH_BYTES (4 MiB).
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn Store> =
        Arc::new(LocalStore::create(dir.path().join("repo")).expect("store"));
    let mut opts = InitOptions::default();
    opts.chunking.sqlite_pages_per_chunk = 1024;
    let repo = Repository::init(store, &opts).expect("init");
    let db = dir.path().join("app.db");
    let c = Connection::open(&db).expect("open");
    c.execute_batch(
        "PRAGMA page_size = 8192; PRAGMA journal_mode = DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .expect("schema");
    insert_blobs(&c, 30000, 700);
    let pages: i64 = c
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("pc");
    drop(c);
    let f = snap(&repo, &db);
    let want = (pages as u64).div_ceil(1024);
    assert_eq!(
        f.chunks.count, want,
        "chunks of 1024 pages, as the manifest's chunking says"
    );
    restores_exactly(&repo, &f, &db, &dir.path().join("r.db"));
}
