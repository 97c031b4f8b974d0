//! The virtual filesystem without a mount: a real repository on disk, real
//! SQLite databases, snapshots through the core API.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use snapback_core::storage::fault::{Fault, FaultStore, Op};
use snapback_core::storage::LocalStore;
use snapback_core::time::format_rfc3339_nanos;
use snapback_core::{InitOptions, NoProgress, SnapshotOptions};

use super::*;
use crate::fuse::errno;

struct Fixture {
    dir: tempfile::TempDir,
    repo: Arc<Repository>,
    /// The repository's store: faults (slow reads, failed ranges) are set
    /// on it while the tests run.
    store: Arc<FaultStore<LocalStore>>,
}

/// The deadline tests' slow pack read.
const SLOW_READ: Duration = Duration::from_secs(6);
/// The deadline tests' slow listing.
const SLOW_LIST: Duration = Duration::from_secs(2);

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let store = LocalStore::create(&root).expect("store");
        Repository::init(Arc::new(store), &InitOptions::default()).expect("init");
        let store = Arc::new(FaultStore::new(LocalStore::open(&root).expect("open")));
        let repo = Arc::new(Repository::open(store.clone()).expect("open repo"));
        Fixture { dir, repo, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A WAL-mode database with `rows` rows of ~200 bytes.
    fn make_db(&self, name: &str, rows: i64) -> PathBuf {
        let p = self.path(name);
        let c = rusqlite::Connection::open(&p).expect("open db");
        c.pragma_update(None, "journal_mode", "wal").expect("wal");
        c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);")
            .expect("schema");
        c.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) \
             INSERT INTO t(v) SELECT hex(randomblob(100)) FROM c",
            [rows],
        )
        .expect("rows");
        p
    }

    fn snapshot(&self, paths: &[&Path]) -> Snapshot {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        let r = self
            .repo
            .snapshot(&paths, &SnapshotOptions::default(), &NoProgress)
            .expect("snapshot");
        // The repository's cached index does not learn of the packs that
        // its own snapshot wrote.
        self.repo.refresh_index().expect("refresh index");
        self.repo
            .resolve(&snapback_core::Selector::Id(r.id.to_hex()), |_| true)
            .expect("resolve")
    }

    fn vfs(&self, view: View, tweak: impl FnOnce(&mut VfsOptions)) -> Vfs {
        let mut o = VfsOptions {
            read_timeout: Duration::from_secs(10),
            ..VfsOptions::default()
        };
        tweak(&mut o);
        Vfs::new(self.repo.clone(), view, o).expect("vfs")
    }

    fn restored(&self, snap: &Snapshot, file: &str) -> Vec<u8> {
        let f = snap.file(file).expect("file in snapshot");
        let r = self.repo.file_reader(f).expect("reader");
        let mut out = Vec::new();
        for c in &r.chunks {
            out.extend(self.repo.read_blob(&r.index, &c.id).expect("blob"));
        }
        out
    }
}

fn read_all(vfs: &Vfs, path: &str) -> Result<Vec<u8>, VfsError> {
    let e = vfs.resolve(path)?;
    let o = vfs.open(e.attr.ino, false)?;
    let mut out = Vec::new();
    loop {
        let d = vfs.read(o.fh, out.len() as u64, 64 << 10)?;
        if d.is_empty() {
            break;
        }
        out.extend(d);
    }
    vfs.release(o.fh);
    Ok(out)
}

fn names(vfs: &Vfs, path: &str) -> Vec<String> {
    let e = vfs.resolve(path).expect("resolve");
    vfs.list(e.attr.ino)
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .filter(|n| n != "." && n != "..")
        .collect()
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

#[test]
fn layout_shows_every_snapshot_by_time_and_by_path() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 100);
    let s1 = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |_| {});
    let mut root = names(&vfs, "");
    root.sort();
    assert_eq!(root, vec![STATUS_NAME, "by-path", "latest", "snapshots"]);
    let dir = snapshot_dir_name(&s1);
    assert_eq!(names(&vfs, "snapshots"), vec![dir.clone()]);
    assert!(dir.ends_with(&format!("_{}", s1.id.short())), "{dir}");
    assert!(dir.contains('.'), "full precision: {dir}");
    let latest = vfs.resolve("latest").expect("latest");
    assert_eq!(latest.attr.kind, Kind::Symlink);
    assert_eq!(
        vfs.readlink(latest.attr.ino).expect("readlink"),
        format!("snapshots/{dir}")
    );
    let f = vfs
        .resolve(&format!("snapshots/{dir}/{}", rel(&db)))
        .expect("file under its snapshot");
    let entry = s1.file(&db.to_string_lossy()).expect("entry");
    assert_eq!(f.attr.size, entry.size);
    assert_eq!(f.attr.perm as u32, entry.mode & 0o7777);
    assert_eq!(f.ttl, vfs.options().immutable_ttl);
    // Absent names: remembered as long as their directory's listing.
    let parent = vfs.resolve(&format!("snapshots/{dir}")).expect("dir");
    assert_eq!(
        vfs.negative_ttl(parent.attr.ino),
        vfs.options().immutable_ttl
    );
    assert_eq!(vfs.negative_ttl(ROOT_INO), vfs.options().refresh_ttl);
    assert_eq!(
        vfs.negative_ttl(f.attr.ino),
        Duration::ZERO,
        "not a directory"
    );
    let times = names(&vfs, &format!("by-path/{}", rel(&db)));
    assert_eq!(times, vec![format_rfc3339_nanos(s1.time)]);
    let manifest = read_all(&vfs, &format!("snapshots/{dir}/{MANIFEST_NAME}")).expect("manifest");
    let v: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    assert_eq!(v["id"], s1.id.to_hex());
    assert_eq!(
        v["manifest"]["files"][0]["path"],
        db.to_string_lossy().as_ref()
    );
    assert_eq!(
        v["mount_notes"]["served_as_rollback_journal"][0],
        db.to_string_lossy().as_ref()
    );
}

#[test]
fn mount_names_select_their_snapshot_when_pasted_back_and_old_names_resolve() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 100);
    let s1 = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |_| {});
    let dir = snapshot_dir_name(&s1);
    let time = dir.split('_').next().expect("time part");
    // Pasted back as @TIME, the name's time selects this very snapshot.
    let sel: snapback_core::Selector = format!("@{time}").parse().expect("selector");
    assert_eq!(sel, snapback_core::Selector::At(s1.time), "{time}");
    let by_path = names(&vfs, &format!("by-path/{}", rel(&db)));
    assert_eq!(by_path, vec![time.to_string()]);
    // The older seconds-only names still resolve, without being listed.
    let secs = snapback_core::time::format_rfc3339_secs(s1.time);
    let old_dir = format!("{secs}_{}", s1.id.short());
    let a = vfs
        .resolve(&format!("snapshots/{old_dir}"))
        .expect("old dir name");
    let b = vfs
        .resolve(&format!("snapshots/{dir}"))
        .expect("new dir name");
    assert_eq!(a.attr.ino, b.attr.ino);
    let a = vfs
        .resolve(&format!("by-path/{}/{secs}", rel(&db)))
        .expect("old by-path name");
    let b = vfs
        .resolve(&format!("by-path/{}/{time}", rel(&db)))
        .expect("new by-path name");
    assert_eq!(a.attr.ino, b.attr.ino);
    assert!(vfs
        .resolve(&format!("by-path/{}/{secs}-journal", rel(&db)))
        .is_err());
}

#[test]
fn wal_database_is_served_as_rollback_and_otherwise_byte_identical() {
    let fx = Fixture::new();
    let db = fx.make_db("wal.db", 2000);
    let s = fx.snapshot(&[&db]);
    let stored = fx.restored(&s, &db.to_string_lossy());
    assert_eq!(
        (stored[18], stored[19]),
        (2, 2),
        "the source is in WAL mode"
    );
    let vfs = fx.vfs(View::One(s.clone()), |_| {});
    let served = read_all(&vfs, &rel(&db)).expect("read");
    assert_eq!(served.len(), stored.len());
    assert_eq!((served[18], served[19]), (1, 1));
    let diff: Vec<usize> = (0..served.len())
        .filter(|&i| served[i] != stored[i])
        .collect();
    assert_eq!(diff, vec![18, 19], "only the journal-mode bytes differ");
    // A read that starts at byte 19 is patched too.
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    assert_eq!(vfs.read(o.fh, 19, 2).expect("read"), vec![1, stored[20]]);
}

#[test]
fn new_snapshots_appear_after_the_ttl_and_inodes_stay_stable() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 10);
    let s1 = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |o| o.refresh_ttl = Duration::from_millis(200));
    let path1 = format!("snapshots/{}/{}", snapshot_dir_name(&s1), rel(&db));
    let ino1 = vfs.resolve(&path1).expect("first").attr.ino;
    fx.make_db("app.db", 10);
    let s2 = fx.snapshot(&[&db]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(names(&vfs, "snapshots").len(), 2, "the new snapshot shows");
    assert_eq!(vfs.resolve(&path1).expect("first again").attr.ino, ino1);
    let latest = vfs.resolve("latest").expect("latest");
    assert_eq!(
        vfs.readlink(latest.attr.ino).expect("readlink"),
        format!("snapshots/{}", snapshot_dir_name(&s2))
    );
    assert_eq!(names(&vfs, &format!("by-path/{}", rel(&db))).len(), 2);
}

#[test]
fn a_listing_that_starts_a_refresh_is_served_the_previous_list_while_it_runs() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 10);
    let s1 = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |o| o.refresh_ttl = Duration::from_millis(100));
    fx.make_db("app.db", 10);
    fx.snapshot(&[&db]);
    // The backend stalls: every LIST takes 2 s (a refresh makes two).
    fx.store.add(Fault::delay(Op::List, SLOW_LIST));
    std::thread::sleep(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(
        names(&vfs, "snapshots"),
        vec![snapshot_dir_name(&s1)],
        "the previous list"
    );
    assert!(names(&vfs, "").contains(&"latest".to_string()));
    let root = vfs.getattr(ROOT_INO).expect("getattr");
    assert_eq!(root.attr.kind, Kind::Dir);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered while the refresh runs, in {:?}",
        t.elapsed()
    );
    // The refresh finishes in the background, and the next access shows it.
    fx.store.clear();
    let deadline = Instant::now() + Duration::from_secs(15);
    while names(&vfs, "snapshots").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the background refresh never landed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn writes_are_refused_with_erofs() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 10);
    let s = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::One(s), |_| {});
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let err = vfs.open(e.attr.ino, true).expect_err("write open");
    assert_eq!(errno(&err), fuser::Errno::EROFS);
    assert_eq!(
        errno(&vfs.open(ROOT_INO, false).expect_err("dir")),
        fuser::Errno::EISDIR
    );
    assert_eq!(
        errno(&vfs.lookup(ROOT_INO, "nope").expect_err("missing")),
        fuser::Errno::ENOENT
    );
}

/// Flips one byte in the middle of every pack.
fn corrupt_packs(repo_root: &Path) -> usize {
    let mut n = 0;
    for sub in std::fs::read_dir(repo_root.join("data")).expect("data dir") {
        for f in std::fs::read_dir(sub.expect("entry").path()).expect("pack dir") {
            let p = f.expect("entry").path();
            let mut b = std::fs::read(&p).expect("read pack");
            let mid = b.len() / 2;
            b[mid] ^= 0x55;
            std::fs::write(&p, b).expect("write pack");
            n += 1;
        }
    }
    n
}

#[test]
fn corrupted_pack_gives_eio_never_wrong_bytes() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 3000);
    let s = fx.snapshot(&[&db]);
    let stored = fx.restored(&s, &db.to_string_lossy());
    let vfs = fx.vfs(View::One(s), |o| o.readahead_max = 0);
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open before damage");
    assert!(corrupt_packs(&fx.path("repo")) > 0);
    let mut eio = 0;
    let mut offset = 0u64;
    while offset < stored.len() as u64 {
        match vfs.read(o.fh, offset, 4096) {
            Ok(d) => {
                let want = &stored[offset as usize..offset as usize + d.len()];
                if offset == 0 {
                    assert_eq!(&d[20..], &want[20..]);
                } else {
                    assert_eq!(d, want, "bytes served at {offset} must be the stored ones");
                }
            }
            Err(e) => {
                assert_eq!(errno(&e), fuser::Errno::EIO, "{e}");
                eio += 1;
            }
        }
        offset += 4096;
    }
    assert!(eio > 0, "the damaged chunk must fail");
    assert_eq!(vfs.stats.read_errors.load(Ordering::Relaxed), eio);
}

#[test]
fn slow_backend_times_out_with_eio_and_stalls_no_cached_reader() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 3000);
    let s = fx.snapshot(&[&db]);
    let vfs = Arc::new(fx.vfs(View::One(s), |o| {
        o.read_timeout = Duration::from_millis(300);
        o.readahead_max = 0;
    }));
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    let head = vfs.read(o.fh, 0, 4096).expect("cached first page");
    fx.store
        .add(Fault::delay(Op::GetRange, SLOW_READ).prefix(snapback_core::layout::DATA_PREFIX));
    let started = Instant::now();
    let v2 = vfs.clone();
    let slow_reader = std::thread::spawn(move || v2.read(o.fh, 65536, 4096));
    // Meanwhile a cached read answers at once.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(vfs.read(o.fh, 0, 4096).expect("cached"), head);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let r = slow_reader.join().expect("join");
    let err = r.expect_err("slow fetch must time out");
    assert!(matches!(err, VfsError::TimedOut { .. }), "{err}");
    assert_eq!(errno(&err), fuser::Errno::EIO);
    // Well before the 6 s the backend takes: the deadline, not the fetch.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(vfs.fetch_stats().timeouts.load(Ordering::Relaxed), 1);
}

#[test]
fn disk_cache_serves_verified_chunks_when_the_repository_cannot() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 2000);
    let s = fx.snapshot(&[&db]);
    let cache = fx.path("cache");
    let first = {
        let vfs = fx.vfs(View::One(s.clone()), |o| {
            o.disk_cache = Some((cache.clone(), 64 << 20));
        });
        read_all(&vfs, &rel(&db)).expect("read through")
    };
    // Open the chunk list now (it is read from the packs), then damage the
    // packs: every data chunk must come from the verified disk cache.
    let vfs = fx.vfs(View::One(s), |o| {
        o.disk_cache = Some((cache.clone(), 64 << 20));
        o.readahead_max = 0;
    });
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    corrupt_packs(&fx.path("repo"));
    let mut again = Vec::new();
    loop {
        let d = vfs
            .read(o.fh, again.len() as u64, 65536)
            .expect("from disk cache");
        if d.is_empty() {
            break;
        }
        again.extend(d);
    }
    assert_eq!(again, first);
    assert!(vfs.fetch_stats().disk_hits.load(Ordering::Relaxed) > 0);
    assert_eq!(vfs.fetch_stats().fetches.load(Ordering::Relaxed), 0);
}

#[test]
fn sequential_reads_prefetch_and_a_seek_resets_the_window() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 5000);
    let s = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::One(s), |o| {
        o.readahead_initial = 16 << 10;
        o.readahead_max = 256 << 10;
    });
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    // Random reads: no read-ahead.
    for off in [40960u64, 8192, 81920, 4096] {
        vfs.read(o.fh, off, 4096).expect("read");
    }
    assert_eq!(vfs.fetch_stats().prefetches.load(Ordering::Relaxed), 0);
    // Sequential reads: read-ahead starts.
    let mut off = 200 << 10;
    for _ in 0..4 {
        vfs.read(o.fh, off, 4096).expect("read");
        off += 4096;
    }
    let p = vfs.fetch_stats().prefetches.load(Ordering::Relaxed);
    assert!(p > 0, "sequential reads prefetch");
    // Let the prefetches land, then the next sequential reads hit memory.
    assert!(vfs.wait_idle(Duration::from_secs(10)), "prefetches finish");
    let hits = vfs.fetch_stats().mem_hits.load(Ordering::Relaxed);
    vfs.read(o.fh, off, 4096).expect("read");
    assert!(vfs.fetch_stats().mem_hits.load(Ordering::Relaxed) > hits);
}

#[test]
fn cold_reads_fetch_only_the_chunks_they_need() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 5000);
    let s = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::One(s), |o| o.readahead_max = 0);
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    vfs.clear_mem_cache();
    let before = vfs.fetch_stats().chunks_fetched.load(Ordering::Relaxed);
    vfs.read(o.fh, 8192, 8192).expect("two pages");
    assert_eq!(
        vfs.fetch_stats().chunks_fetched.load(Ordering::Relaxed) - before,
        2,
        "two 4 KiB chunks for two pages"
    );
}

#[test]
fn a_fetch_window_reads_neighbouring_chunks_in_one_request() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 5000);
    let s = fx.snapshot(&[&db]);
    let stored = fx.restored(&s, &db.to_string_lossy());
    let vfs = fx.vfs(View::One(s), |o| {
        o.readahead_max = 0;
        o.fetch_window = 64 << 10;
        o.fetch_window_always = true;
    });
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    vfs.clear_mem_cache();
    let st = vfs.fetch_stats();
    let (req0, chunks0) = (
        st.fetches.load(Ordering::Relaxed),
        st.chunks_fetched.load(Ordering::Relaxed),
    );
    let d = vfs.read(o.fh, 65536, 8192).expect("two pages");
    assert_eq!(d, stored[65536..65536 + 8192]);
    assert_eq!(
        st.fetches.load(Ordering::Relaxed) - req0,
        1,
        "one range read"
    );
    let chunks = st.chunks_fetched.load(Ordering::Relaxed) - chunks0;
    assert!(chunks > 2, "neighbours came along: {chunks}");
    // The next pages are in memory now, and correct.
    let hits = st.mem_hits.load(Ordering::Relaxed);
    let d = vfs.read(o.fh, 65536 + 8192, 8192).expect("next pages");
    assert_eq!(d, stored[65536 + 8192..65536 + 16384]);
    assert_eq!(st.mem_hits.load(Ordering::Relaxed) - hits, 2);
    assert_eq!(st.fetches.load(Ordering::Relaxed) - req0, 1);
}

#[test]
fn without_always_the_fetch_window_serves_scans_not_random_reads() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 5000);
    let s = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::One(s), |o| {
        o.readahead_max = 0;
        o.fetch_window = 64 << 10;
    });
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    vfs.clear_mem_cache();
    let st = vfs.fetch_stats();
    let chunks = || st.chunks_fetched.load(Ordering::Relaxed);
    // Far apart: one chunk each.
    let c0 = chunks();
    vfs.read(o.fh, 409600, 4096).expect("read");
    vfs.read(o.fh, 8192, 4096).expect("read");
    assert_eq!(chunks() - c0, 2, "random reads fetch only what they need");
    // A little after the previous read: a scan, the window comes along.
    let c1 = chunks();
    vfs.read(o.fh, 8192 + 3 * 4096, 4096).expect("read");
    assert!(
        chunks() - c1 > 2,
        "a scan brings neighbours: {}",
        chunks() - c1
    );
}

#[test]
fn a_damaged_chunk_in_a_grouped_read_fails_only_itself() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 3000);
    let s = fx.snapshot(&[&db]);
    let stored = fx.restored(&s, &db.to_string_lossy());
    let vfs = fx.vfs(View::One(s), |o| {
        o.readahead_max = 0;
        o.fetch_window = 1 << 20;
        o.fetch_window_always = true;
    });
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    corrupt_packs(&fx.path("repo"));
    let mut eio = 0;
    let mut ok = 0;
    for off in (4096..stored.len() as u64).step_by(4096) {
        match vfs.read(o.fh, off, 4096) {
            Ok(d) => {
                assert_eq!(d, stored[off as usize..off as usize + d.len()]);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(errno(&e), fuser::Errno::EIO, "{e}");
                eio += 1;
            }
        }
    }
    assert_eq!(eio, 1, "exactly the damaged chunk fails");
    assert!(ok > 10);
}

#[test]
fn a_chunk_list_that_does_not_match_the_manifest_checksum_is_eio() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 100);
    let s = fx.snapshot(&[&db]);
    let good = fx.vfs(View::One(s.clone()), |_| {});
    let e = good.resolve(&rel(&db)).expect("resolve");
    assert!(
        good.open(e.attr.ino, false).is_ok(),
        "the real checksum matches"
    );
    let mut m = (*s.manifest).clone();
    m.files[0].db_checksum = format!("{:032x}", 1);
    let bad = Snapshot {
        manifest: Arc::new(m),
        ..s
    };
    let vfs = fx.vfs(View::One(bad), |_| {});
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let err = vfs.open(e.attr.ino, false).expect_err("mismatch");
    assert_eq!(errno(&err), fuser::Errno::EIO);
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn status_file_reports_counters() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 10);
    let s = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::One(s), |_| {});
    read_all(&vfs, &rel(&db)).expect("read");
    let st = read_all(&vfs, STATUS_NAME).expect("status");
    let v: serde_json::Value = serde_json::from_slice(&st).expect("json");
    assert!(v["reads"].as_u64().expect("reads") >= 1);
    assert_eq!(v["read_errors"], 0);
    let e = vfs.resolve(STATUS_NAME).expect("status attr");
    assert_eq!(e.ttl, Duration::ZERO);
    let o = vfs.open(e.attr.ino, false).expect("open");
    assert!(o.direct_io && !o.keep_cache);
    // Generated files are served from memory (the adapter's metadata pool);
    // snapshot files are not.
    assert!(vfs.is_generated(e.attr.ino) && vfs.is_memory_handle(o.fh));
    let f = vfs.resolve(&rel(&db)).expect("db");
    assert!(!vfs.is_generated(f.attr.ino));
    let fo = vfs.open(f.attr.ino, false).expect("open db");
    assert!(!vfs.is_memory_handle(fo.fh));
}

#[test]
fn file_permission_bits_are_the_sources_mode_0000_included() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let modes = [0o000, 0o400, 0o600, 0o640, 0o755, 0o1644, 0o4750];
    let files: Vec<PathBuf> = modes
        .iter()
        .map(|m| {
            let p = fx.path(&format!("f{m:o}"));
            std::fs::write(&p, format!("mode {m:o}")).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*m)).expect("chmod");
            p
        })
        .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let snap = fx.snapshot(&refs);
    let vfs = fx.vfs(View::One(snap), |_| {});
    for (m, p) in modes.iter().zip(&files) {
        let e = vfs.resolve(&rel(p)).expect("resolve");
        assert_eq!(
            e.attr.perm,
            *m as u16,
            "{} is served {:o}",
            p.display(),
            e.attr.perm
        );
    }
}

#[test]
fn a_failed_read_fails_again_at_once_and_starts_no_new_retry_cycles() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 3000);
    let s = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::One(s), |o| {
        o.read_timeout = Duration::from_secs(1);
        o.readahead_max = 0;
        o.fetch_window = 512 << 10;
        o.fetch_window_always = true;
    });
    let e = vfs.resolve(&rel(&db)).expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    // The store gives up on every range read: one request for the group of
    // chunks of a read, not one more per chunk.
    fx.store.add(
        Fault::fail(Op::GetRange, snapback_core::storage::ErrorKind::Transient)
            .prefix(snapback_core::layout::DATA_PREFIX),
    );
    let err = vfs.read(o.fh, 0, 128 << 10).expect_err("the store fails");
    assert_eq!(errno(&err), fuser::Errno::EIO);
    let requests = fx.store.injected();
    assert!(requests <= 2, "{requests} range reads for one failing read");
    assert!(vfs.fetch_stats().fetch_errors.load(Ordering::Relaxed) > 0);
    // The kernel re-issues the failed read at once: EIO again, no request.
    let t = Instant::now();
    let again = vfs.read(o.fh, 0, 4096).expect_err("fails again");
    assert_eq!(errno(&again), fuser::Errno::EIO);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fx.store.injected(), requests);
    fx.store.clear();
    // A timed-out read, re-issued, does not wait a second deadline.
    std::thread::sleep(Duration::from_millis(2100));
    fx.store
        .add(Fault::delay(Op::GetRange, SLOW_READ).prefix(snapback_core::layout::DATA_PREFIX));
    let t = Instant::now();
    let slow = vfs.read(o.fh, 0, 4096).expect_err("times out");
    assert_eq!(errno(&slow), fuser::Errno::EIO);
    let first = t.elapsed();
    assert!(first < Duration::from_secs(3), "{first:?}");
    let t = Instant::now();
    vfs.read(o.fh, 0, 4096).expect_err("re-issued");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    fx.store.clear();
    // After the failure memory, reads are tried again and succeed.
    std::thread::sleep(Duration::from_millis(2100));
    let deadline = Instant::now() + Duration::from_secs(15);
    while vfs.read(o.fh, 0, 4096).is_err() {
        assert!(Instant::now() < deadline, "reads never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn read_failure_warnings_are_rate_limited() {
    let l = RateLimit::default();
    let allowed: Vec<Option<u64>> = (0..100).map(|_| l.allow()).collect();
    assert_eq!(allowed.iter().filter(|a| a.is_some()).count(), 5);
    assert_eq!(allowed[0], Some(0));
    assert!(allowed[5..].iter().all(Option::is_none));
}

#[test]
fn a_read_of_a_snapshot_forgotten_and_pruned_while_mounted_says_so_not_corrupt() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 3000);
    let s = fx.snapshot(&[&db]);
    let size = s.file(&db.to_string_lossy()).expect("file").size;
    let vfs = fx.vfs(View::All, |o| o.readahead_max = 0);
    let dir = snapshot_dir_name(&s);
    let e = vfs
        .resolve(&format!("snapshots/{dir}/{}", rel(&db)))
        .expect("resolve");
    let o = vfs.open(e.attr.ino, false).expect("open");
    assert_eq!(vfs.read(o.fh, 0, 4096).expect("read before").len(), 4096);

    // forget, then prune at once (no minimum pack age).
    let snaps = fx.repo.snapshots().expect("list");
    let plan = snapback_core::plan_forget(
        &snaps,
        &snapback_core::KeepPolicy {
            tags: vec!["none-has-this-tag".into()],
            ..Default::default()
        },
        &std::collections::HashSet::new(),
        true,
    )
    .expect("plan");
    assert_eq!(fx.repo.apply_forget(&plan).expect("forget"), 1);
    let (_, report) = fx
        .repo
        .prune(&snapback_core::PruneOptions {
            min_pack_age: Duration::ZERO,
            ..Default::default()
        })
        .expect("prune");
    assert!(report.packs_deleted > 0, "{report:?}");

    let err = vfs
        .read(o.fh, size - 4096, 4096)
        .expect_err("its data is gone");
    assert_eq!(errno(&err), fuser::Errno::EIO, "{err}");
    assert!(
        matches!(&err, VfsError::SnapshotGone { snapshot } if *snapshot == s.id.short()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("forgotten/pruned while mounted")
            && !err.to_string().contains("corrupt"),
        "{err}"
    );
}

/// Rewrites the manifest of `id` in the unencrypted repository at `root`
/// with `time` and `tags`; returns the new id.
fn rewrite_manifest(root: &Path, id: &Id, time: &str, tags: &[String]) -> Id {
    let dir = root.join("snapshots");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(id.to_hex())).expect("manifest"))
            .expect("json");
    v["time"] = time.into();
    v["tags"] = tags.into();
    let bytes = serde_json::to_vec_pretty(&v).expect("encode");
    let new = Id::of(&bytes);
    std::fs::write(dir.join(new.to_hex()), bytes).expect("write");
    if new != *id {
        std::fs::remove_file(dir.join(id.to_hex())).expect("remove");
    }
    new
}

#[test]
fn snapshots_taken_in_the_same_second_are_listed_by_full_time_not_by_id() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 10);
    let a = fx.snapshot(&[&db]);
    let b = fx.snapshot(&[&db]);
    let root = fx.path("repo");
    let first = rewrite_manifest(&root, &a.id, "2026-03-01T10:00:00.1Z", &[]);
    // The later one gets an id below the earlier one's, so that an order by
    // id would put it first.
    let later = (0..256)
        .map(|i| {
            let cur = fx
                .repo
                .snapshots()
                .expect("list")
                .into_iter()
                .find(|s| s.id != first)
                .expect("the other");
            rewrite_manifest(&root, &cur.id, "2026-03-01T10:00:00.9Z", &[format!("t{i}")])
        })
        .find(|id| id.to_hex() < first.to_hex())
        .expect("an id below the first's");
    let _ = b;
    let listed: Vec<Id> = fx
        .repo
        .snapshots()
        .expect("list")
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![first, later], "oldest first, by full time");
    let vfs = fx.vfs(View::All, |_| {});
    let dirs = names(&vfs, "snapshots");
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(
        dirs[0].contains(&first.short()) && dirs[1].contains(&later.short()),
        "the mount's folders sort by time: {dirs:?}"
    );
    let latest = vfs.readlink(vfs.resolve("latest").expect("latest").attr.ino);
    assert!(
        latest.expect("link").contains(&later.short()),
        "latest is the later one"
    );
}

/// What SQLite has in `db` now, byte for byte (its WAL checkpointed).
fn db_image(db: &Path) -> Vec<u8> {
    let c = rusqlite::Connection::open(db).expect("open db");
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    std::fs::read(db).expect("read db")
}

#[test]
fn timeline_points_appear_without_a_remount_and_latest_follows_them() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 200);
    let before = db_image(&db);
    let s1 = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |o| o.refresh_ttl = Duration::from_millis(200));
    assert_eq!(names(&vfs, "snapshots").len(), 1);
    // A writer changes the database; a point of it is committed.
    fx.make_db("app.db", 50);
    let now = db_image(&db);
    let point = fx
        .repo
        .point_between_images(&before, &now, 4096, snapback_core::time::now())
        .expect("point");
    let seg = snapback_core::Segment {
        path: db.to_string_lossy().into_owned(),
        base: s1.id,
        page_size: 4096,
        points: vec![point],
    };
    let seg_id = fx.repo.commit_segment(&seg).expect("commit");
    std::thread::sleep(Duration::from_millis(300));
    let dirs = names(&vfs, "snapshots");
    assert_eq!(dirs.len(), 2, "the point shows: {dirs:?}");
    let point_dir = format!(
        "{}_{}-0",
        format_rfc3339_nanos(seg.points[0].time),
        seg_id.short()
    );
    assert!(dirs.contains(&point_dir), "{dirs:?}");
    let latest = vfs.resolve("latest").expect("latest");
    assert_eq!(
        vfs.readlink(latest.attr.ino).expect("readlink"),
        format!("snapshots/{point_dir}"),
        "latest is the newest point"
    );
    let served =
        read_all(&vfs, &format!("snapshots/{point_dir}/{}", rel(&db))).expect("read the point");
    assert_eq!(served.len(), now.len());
    let differ: Vec<usize> = (0..now.len()).filter(|&i| served[i] != now[i]).collect();
    assert_eq!(
        differ,
        vec![18, 19],
        "the point's image, served as rollback"
    );
    let old = read_all(
        &vfs,
        &format!("snapshots/{}/{}", snapshot_dir_name(&s1), rel(&db)),
    )
    .expect("read the base");
    assert_eq!(old.len(), before.len(), "the base is still the base");
    let manifest =
        read_all(&vfs, &format!("snapshots/{point_dir}/{MANIFEST_NAME}")).expect("manifest");
    let v: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    assert_eq!(v["point"]["name"], format!("{}/0", seg_id.short()));
    assert_eq!(v["point"]["base"], s1.id.to_hex());
    assert_eq!(names(&vfs, &format!("by-path/{}", rel(&db))).len(), 2);
}

/// Asserts that `text` is byte for byte what a `json!()` value of the same
/// content gives (keys sorted at every level, pretty, a newline), as the
/// mount wrote these files before they were built from structs. A Value
/// keeps its keys sorted (serde_json here lacks preserve_order), so the
/// text equals the Value's own rendering only when the text's keys are in
/// that order at every level.
fn assert_sorted_like_json_macro(text: &[u8], what: &str) {
    let v: serde_json::Value = serde_json::from_slice(text).expect("json");
    let mut want = serde_json::to_vec_pretty(&v).expect("pretty");
    want.push(b'\n');
    assert_eq!(
        String::from_utf8_lossy(text),
        String::from_utf8_lossy(&want),
        "{what}: keys in alphabetical order at every level, pretty, one newline"
    );
}

/// The keys of a JSON object, in order.
fn top_keys(v: &serde_json::Value) -> Vec<&str> {
    v.as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn status_json_keys_stay_in_alphabetical_order() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 50);
    fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |_| {});
    let text = read_all(&vfs, STATUS_NAME).expect("status file");
    assert_sorted_like_json_macro(&text, STATUS_NAME);
    let v: serde_json::Value = serde_json::from_slice(&text).expect("json");
    let keys = top_keys(&v);
    assert_eq!(
        keys,
        [
            "chunk_disk_hits",
            "chunk_fetch_errors",
            "chunk_fetched_bytes",
            "chunk_fetches",
            "chunk_mem_hits",
            "chunk_prefetches",
            "chunk_timeouts",
            "chunks_fetched",
            "disk_cache_bytes",
            "disk_cache_corrupt_entries",
            "mem_cache_bytes",
            "opens",
            "read_bytes",
            "read_errors",
            "reads",
            "refresh_age_secs",
            "refresh_error",
            "repository",
            "snapshots",
            "view",
        ]
    );
    assert_eq!(v["view"], "all");
    assert_eq!(v["snapshots"], 1);
    // The struct itself, with every optional field set, serializes the same
    // way: its declaration order is the alphabetical one.
    let doc = super::status::StatusDoc {
        chunk_disk_hits: 1,
        chunk_fetch_errors: 2,
        chunk_fetched_bytes: 3,
        chunk_fetches: 4,
        chunk_mem_hits: 5,
        chunk_prefetches: 6,
        chunk_timeouts: 7,
        chunks_fetched: 8,
        disk_cache_bytes: Some(9),
        disk_cache_corrupt_entries: Some(10),
        mem_cache_bytes: 11,
        opens: 12,
        read_bytes: 13,
        read_errors: 14,
        reads: 15,
        refresh_age_secs: 16,
        refresh_error: Some("a refresh error".into()),
        repository: "/r".into(),
        snapshots: 17,
        view: "all".into(),
    };
    assert_sorted_like_json_macro(&super::status::json_file(&doc), "StatusDoc");
}

#[test]
fn manifest_json_keys_stay_in_alphabetical_order() {
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 50);
    let s1 = fx.snapshot(&[&db]);
    let vfs = fx.vfs(View::All, |_| {});
    let dir = snapshot_dir_name(&s1);
    let text = read_all(&vfs, &format!("snapshots/{dir}/{MANIFEST_NAME}")).expect("manifest");
    assert_sorted_like_json_macro(&text, MANIFEST_NAME);
    let v: serde_json::Value = serde_json::from_slice(&text).expect("json");
    let keys = top_keys(&v);
    // A WAL-mode database: the mount notes are there; not a point.
    assert_eq!(keys, ["id", "manifest", "mount_notes", "short_id"]);
    // With a point, every field set: still sorted at every level.
    let mut doc = super::tree::manifest_doc(&s1);
    doc.point = Some(super::tree::PointDoc {
        base: s1.id.to_hex(),
        index: 3,
        name: "abcd1234/3".into(),
        segment: s1.id.to_hex(),
    });
    let text = super::status::json_file(&doc);
    assert_sorted_like_json_macro(&text, "ManifestDoc with a point");
    let v: serde_json::Value = serde_json::from_slice(&text).expect("json");
    assert_eq!(
        top_keys(&v),
        ["id", "manifest", "mount_notes", "point", "short_id"]
    );
}

/// The inode of `path` in `tree`, walking down from the root.
fn ino_in(tree: &Tree, path: &str) -> Option<u64> {
    let mut ino = ROOT_INO;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        match &tree.nodes.get(&ino)?.kind {
            tree::NodeKind::Dir { children, .. } => ino = *children.get(c)?,
            _ => return None,
        }
    }
    Some(ino)
}

#[test]
fn a_snapshot_listed_under_a_forgotten_ones_name_gets_new_inodes() {
    // The kernel keeps a file's pages across opens by inode number
    // (keep_cache): a number reused for other content would serve the old
    // snapshot's bytes as the new one's. A name is the time and an 8-hex
    // short id, so two snapshots can share it.
    let fx = Fixture::new();
    let db = fx.make_db("app.db", 10);
    let s1 = fx.snapshot(&[&db]);
    let mut twin = s1.clone();
    twin.id.0[31] ^= 1;
    assert_eq!(snapshot_dir_name(&twin), snapshot_dir_name(&s1));
    let path = format!("snapshots/{}/{}", snapshot_dir_name(&s1), rel(&db));
    let mut inos = Inodes {
        by_key: std::collections::HashMap::new(),
        next: ROOT_INO + 1,
    };
    let now = SystemTime::now();
    let first = tree::build(&View::All, std::slice::from_ref(&s1), &mut inos, now);
    let ino1 = ino_in(&first, &path).expect("s1's file");
    // s1 forgotten, its twin listed at the next refresh.
    let second = tree::build(&View::All, std::slice::from_ref(&twin), &mut inos, now);
    let ino2 = ino_in(&second, &path).expect("the twin's file");
    assert_ne!(
        ino1, ino2,
        "the same name with other content needs a new inode"
    );
    let again = tree::build(&View::All, std::slice::from_ref(&s1), &mut inos, now);
    assert_eq!(ino_in(&again, &path), Some(ino1), "s1 keeps its inode");
}
