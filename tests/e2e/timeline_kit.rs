//! Real timeline segments for end-to-end tests: a WAL-mode database a
//! writer changes, and points made from what SQLite has, committed over a
//! snapshot the real binary took.

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::Connection;
use snapback_core::storage::LocalStore;
use snapback_core::{DbChecksum, Id, Point, Repository, Segment};
use snapback_testkit::db::{checkpointed_image, insert_blobs, update_blob, wal_writer};
use snapback_testkit::Env;

/// A database with a writer connection (auto-checkpoints off).
pub struct Db {
    pub path: PathBuf,
    pub w: Connection,
}

impl Db {
    pub fn new(env: &Env, name: &str) -> Db {
        let path = env.path(name);
        let w = wal_writer(&path);
        insert_blobs(&w, 20, 700);
        Db {
            path: std::fs::canonicalize(&path).expect("canonical"),
            w,
        }
    }

    pub fn update(&self, id: i64) {
        update_blob(&self.w, id, 700);
    }

    /// What SQLite has now, byte for byte (checkpointed into the file).
    pub fn image(&self) -> Vec<u8> {
        checkpointed_image(&self.w, &self.path)
    }

    pub fn name(&self) -> String {
        self.path.to_str().expect("utf-8 path").to_owned()
    }
}

pub fn open_repo(env: &Env) -> Repository {
    Repository::open(Arc::new(LocalStore::open(env.repo()).expect("store"))).expect("open")
}

/// Snapshots the database with the real binary; the new snapshot's id.
pub fn base(env: &Env, db: &Db) -> Id {
    let id = env.snapshot(&db.path);
    Id::from_hex(&id).unwrap_or_else(|| panic!("a snapshot id: {id:?}"))
}

fn pages(image: &[u8]) -> Vec<&[u8]> {
    image.chunks(4096).collect()
}

/// The point that turns `prev` into `now`: its changed pages stored, their
/// ids listed, its time strictly after every earlier one.
pub fn point(repo: &Repository, prev: &[u8], now: &[u8]) -> Point {
    let (old, new) = (pages(prev), pages(now));
    let changed: Vec<(u64, &[u8])> = new
        .iter()
        .enumerate()
        .filter(|(i, p)| old.get(*i) != Some(*p))
        .map(|(i, p)| (i as u64, *p))
        .collect();
    let raws: Vec<&[u8]> = changed.iter().map(|(_, p)| *p).collect();
    let ids = repo.store_pages(&raws).expect("store pages");
    std::thread::sleep(std::time::Duration::from_millis(2));
    let mut sum = DbChecksum::default();
    for (i, p) in new.iter().enumerate() {
        sum.add(i as u64 * 4096, &repo.codec().blob_id(p));
    }
    Point {
        time: snapback_core::time::now(),
        page_count: new.len() as u64,
        db_checksum: sum,
        changes: changed.iter().map(|(i, _)| *i).zip(ids).collect(),
    }
}

/// A segment of `n` points over `base` (each point an update of a row),
/// starting from the image the base holds; the images SQLite had at each.
pub fn segment(
    repo: &Repository,
    db: &Db,
    base: Id,
    base_image: Vec<u8>,
    n: usize,
) -> (Segment, Vec<Vec<u8>>) {
    let mut images = vec![base_image];
    let mut points = Vec::new();
    for k in 0..n {
        db.update(1 + (k as i64 % 20));
        let now = db.image();
        points.push(point(repo, images.last().expect("prev"), &now));
        images.push(now);
    }
    images.remove(0);
    (
        Segment {
            path: db.name(),
            base,
            page_size: 4096,
            points,
        },
        images,
    )
}
