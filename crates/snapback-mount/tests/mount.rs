//! Real mounts: the `snapback` binary mounts a real repository through
//! /dev/fuse, and SQLite (rusqlite, the sqlite3 shell, Python) reads the
//! databases in it.
//!
//! Needs: fuse3 (fusermount3) and /dev/fuse, the sqlite3 shell, and the
//! binary built first (`cargo build --workspace --bins`); the test kit
//! (crates/snapback-testkit) finds it. Every mount is undone by a guard
//! (`fusermount3 -u -z`), and every wait is bounded.

use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use snapback_testkit::mount::{require_fuse, Mount};

const EIO: i32 = 5;
const EROFS: i32 = 30;

/// A scratch directory with a repository, whose commands run quiet.
struct Env {
    kit: snapback_testkit::Env,
}

impl Env {
    fn new() -> Env {
        require_fuse();
        Env {
            kit: snapback_testkit::Env::new(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.kit.path(p)
    }

    fn repo(&self) -> PathBuf {
        self.kit.repo()
    }

    fn cmd(&self) -> Command {
        self.kit.cmd(&["-q"])
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run snapback")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "snapback {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Takes a snapshot and returns its id.
    fn snapshot(&self, p: &Path) -> String {
        // --json: with -q alone, snapshot prints no id.
        let out = self.ok(&["--json", "snapshot", &p.to_string_lossy()]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("snapshot json");
        v["id"].as_str().expect("id").to_string()
    }

    fn restore(&self, snap: &str, file: &Path, dest: &Path) {
        self.ok(&[
            "restore",
            snap,
            &dest.to_string_lossy(),
            "--path",
            &file.to_string_lossy(),
        ]);
    }

    fn mount(&self, args: &[&str]) -> Mount {
        let mp = self.path(&format!("mnt{}", MOUNTS.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&mp).expect("mkdir mountpoint");
        let mut c = self.cmd();
        c.arg("mount").args(args).arg(&mp);
        Mount::start(c, mp)
    }
}

static MOUNTS: AtomicU64 = AtomicU64::new(0);

/// A database with a keyed table, an index and some text, in the given
/// journal mode.
fn make_db(p: &Path, journal_mode: &str, rows: i64) {
    let c = Connection::open(p).expect("open db");
    let mode: String = c
        .query_row(&format!("PRAGMA journal_mode={journal_mode}"), [], |r| {
            r.get(0)
        })
        .expect("journal mode");
    assert_eq!(mode, journal_mode);
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, k TEXT NOT NULL, n INTEGER NOT NULL, body TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS items_n ON items(n);",
    )
    .expect("schema");
    c.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
         INSERT INTO items(k, n, body) SELECT 'key-' || x, x % 97, hex(randomblob(150)) FROM c",
        [rows],
    )
    .expect("rows");
}

fn open_ro(p: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// A fixed set of queries and their results as text.
fn workload(c: &Connection) -> Vec<String> {
    let q = |sql: &str| -> String {
        let mut st = c.prepare(sql).expect("prepare");
        let cols = st.column_count();
        let rows = st
            .query_map([], |r| {
                let mut s = Vec::new();
                for i in 0..cols {
                    let v: rusqlite::types::Value = r.get(i)?;
                    s.push(format!("{v:?}"));
                }
                Ok(s.join("|"))
            })
            .expect("query")
            .collect::<rusqlite::Result<Vec<_>>>()
            .expect("rows");
        rows.join("\n")
    };
    vec![
        q("SELECT count(*), sum(n), sum(length(body)) FROM items"),
        q("SELECT * FROM items WHERE id IN (1, 77, 1500, 2999)"),
        q("SELECT id, k FROM items WHERE k = 'key-1234'"),
        q("SELECT n, count(*) FROM items WHERE n BETWEEN 10 AND 20 GROUP BY n"),
        q("SELECT id FROM items ORDER BY body LIMIT 5"),
        q("PRAGMA integrity_check"),
    ]
}

#[test]
fn queries_on_the_mounted_snapshot_equal_the_same_snapshot_restored() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 3000);
    let id = env.snapshot(&db);
    // Change the source after the snapshot: the mount must show the snapshot.
    make_db(&db, "delete", 10);
    let restored = env.path("restored.db");
    env.restore(&id, &db, &restored);
    let m = env.mount(&[]);
    let mounted = m.path(&format!("latest/{}", db.to_string_lossy()));
    let via_mount = workload(&open_ro(&mounted).expect("open mounted db"));
    let via_restore = workload(&open_ro(&restored).expect("open restored db"));
    assert_eq!(via_mount, via_restore);
    assert!(
        via_mount[0].starts_with("Integer(3000)|"),
        "{}",
        via_mount[0]
    );
    assert_eq!(via_mount[5], "Text(\"ok\")");
    // Same file under by-path and under snapshots/.
    let by_path = m.path(&format!("by-path/{}", db.to_string_lossy()));
    let times: Vec<_> = std::fs::read_dir(&by_path)
        .expect("by-path dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(times.len(), 1);
    assert_eq!(
        std::fs::read(&times[0]).expect("by-path read"),
        std::fs::read(&mounted).expect("latest read")
    );
    // Sizes and modes are the source's; the manifest names the snapshot.
    let md = std::fs::metadata(&mounted).expect("stat");
    assert_eq!(md.len(), std::fs::metadata(&restored).expect("stat").len());
    let manifest = std::fs::read(m.path("latest/.snapback-manifest.json")).expect("manifest");
    let v: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
    assert_eq!(v["id"], id.as_str());
}

#[test]
fn wal_source_opens_with_plain_sqlite3_rusqlite_and_python() {
    let env = Env::new();
    let db = env.path("wal.db");
    make_db(&db, "wal", 2000);
    // Keep a connection open so the WAL holds uncheckpointed frames.
    let live = Connection::open(&db).expect("live");
    live.execute("UPDATE items SET n = n + 1000 WHERE id <= 10", [])
        .expect("update");
    let id = env.snapshot(&db);
    let json = env.ok(&["--json", "snapshots"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let time = v[0]["time"].as_str().expect("time").to_string();
    assert_eq!(v[0]["id"], id.as_str());
    // One snapshot, chosen by time.
    let m = env.mount(&[&format!("@{time}")]);
    let p = m.path(&db.to_string_lossy());
    let out = Command::new("sqlite3")
        .arg(&p)
        .arg("PRAGMA journal_mode; SELECT count(*), sum(n >= 1000) FROM items;")
        .output()
        .expect("sqlite3 shell (apt-get install -y sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "delete\n2000|10\n");
    let c = open_ro(&p).expect("rusqlite read-only");
    let n: i64 = c
        .query_row("SELECT count(*) FROM items WHERE n >= 1000", [], |r| {
            r.get(0)
        })
        .expect("query");
    assert_eq!(n, 10, "the committed update is in the snapshot");
    let ic: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ic, "ok");
    // No side files were needed (nor could they be created).
    assert!(!m.path(&format!("{}-shm", db.to_string_lossy())).exists());
    if Command::new("python3").arg("-V").output().is_ok() {
        let out = Command::new("python3")
            .arg("-c")
            .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select count(*) from items').fetchone()[0])")
            .arg(&p)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "python sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2000");
    }
    drop(live);
}

#[test]
fn corrupted_pack_gives_eio_on_read_never_wrong_bytes() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 3000);
    let id = env.snapshot(&db);
    let restored = env.path("restored.db");
    env.restore(&id, &db, &restored);
    let good = std::fs::read(&restored).expect("restored");
    damage_every_pack(&env.repo());
    let m = env.mount(&["latest"]);
    let p = m.path(&db.to_string_lossy());
    let f = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) => {
            // The damage hit the chunk list: the open itself fails, with EIO.
            assert_eq!(e.raw_os_error(), Some(EIO), "{e}");
            return;
        }
    };
    let mut eio = 0;
    let mut buf = vec![0u8; 4096];
    for (i, want) in good.chunks(4096).enumerate() {
        match f.read_exact_at(&mut buf[..want.len()], (i * 4096) as u64) {
            Ok(()) if i == 0 => assert_eq!(&buf[20..], &want[20..]),
            Ok(()) => assert_eq!(&buf[..want.len()], want, "page {i} differs"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(EIO), "page {i}: {e}");
                eio += 1;
            }
        }
    }
    assert!(eio > 0, "reading the damaged chunk must fail");
}

#[test]
fn writes_are_refused_with_erofs() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 10);
    env.snapshot(&db);
    let m = env.mount(&[]);
    let p = m.path(&format!("latest/{}", db.to_string_lossy()));
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect_err("write open");
    assert_eq!(e.raw_os_error(), Some(EROFS), "{e}");
    let e = std::fs::create_dir(m.path("latest/new")).expect_err("mkdir");
    assert_eq!(e.raw_os_error(), Some(EROFS), "{e}");
    let e = std::fs::remove_file(&p).expect_err("unlink");
    assert_eq!(e.raw_os_error(), Some(EROFS), "{e}");
    let e = Connection::open(&p)
        .and_then(|c| c.execute("DELETE FROM items", []))
        .expect_err("sqlite write");
    assert!(
        e.to_string().contains("readonly")
            || e.to_string().contains("read-only")
            || e.to_string().contains("read only"),
        "{e}"
    );
}

#[test]
fn new_snapshots_appear_without_a_remount() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 10);
    env.snapshot(&db);
    let m = env.mount(&["--refresh-interval", "0.3"]);
    let count = || {
        std::fs::read_dir(m.path("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(count(), 1);
    make_db(&db, "delete", 10);
    let id2 = env.snapshot(&db);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() < 2 {
        assert!(Instant::now() < deadline, "the new snapshot did not appear");
        std::thread::sleep(Duration::from_millis(200));
    }
    let link = std::fs::read_link(m.path("latest")).expect("latest");
    assert!(
        link.to_string_lossy().ends_with(&id2[..8]),
        "latest -> {}",
        link.display()
    );
    let c = open_ro(&m.path(&format!("latest/{}", db.to_string_lossy()))).expect("open");
    let n: i64 = c
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 20);
}

#[test]
fn unmount_while_reads_are_in_flight_completes() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 20000);
    env.snapshot(&db);
    // A small cache so that reads keep going to the repository.
    let mut m = env.mount(&["--memory-cache-size", "64K"]);
    let p = m.path(&format!("latest/{}", db.to_string_lossy()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..4u64 {
        let p = p.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let Ok(f) = std::fs::File::open(&p) else {
                return 0u64;
            };
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut buf = vec![0u8; 65536];
            let mut n = 0u64;
            let mut off = t * 4096;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if f.read_at(&mut buf, off % size.max(1)).is_err() {
                    break;
                }
                n += 1;
                off += 65536 * 3 + 4096;
            }
            n
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("kill")
        .args(["-TERM", &m.pid().to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success());
    let status = m.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "the mount did not exit within 20 s of SIGTERM"
    );
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(!snapback_mount::is_mount_point(&m.mp), "still mounted");
    stop.store(true, Ordering::Relaxed);
    let total: u64 = readers
        .into_iter()
        .map(|r| r.join().expect("reader thread"))
        .sum();
    assert!(total > 0, "the readers were reading when the unmount came");
}

#[test]
fn snapback_umount_ends_the_mount_process() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 10);
    env.snapshot(&db);
    let mut m = env.mount(&[]);
    assert!(m.path(".snapback-status.json").exists());
    let out = env.run(&["umount", &m.mp.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = m.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(!snapback_mount::is_mount_point(&m.mp));
}

#[test]
fn sixteen_concurrent_readers_all_finish() {
    let env = Env::new();
    let a = env.path("a.db");
    let b = env.path("b.db");
    make_db(&a, "wal", 5000);
    make_db(&b, "delete", 5000);
    env.snapshot(&a);
    env.snapshot(&b);
    let m = env.mount(&["--memory-cache-size", "256K"]);
    let paths: Vec<PathBuf> = [&a, &b]
        .iter()
        .map(|p| m.path(&format!("by-path/{}", p.to_string_lossy())))
        .map(|d| {
            std::fs::read_dir(&d)
                .expect("by-path dir")
                .next()
                .expect("one snapshot")
                .expect("entry")
                .path()
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..16usize {
        let p = paths[t % 2].clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = (|| -> rusqlite::Result<u64> {
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut n = 0u64;
                let mut x = t as i64 * 7919;
                while Instant::now() < deadline {
                    // A fresh connection now and then, as applications do.
                    let c = open_ro(&p)?;
                    for _ in 0..20 {
                        x = (x * 1103515245 + 12345) % 5000 + 1;
                        let k: String =
                            c.query_row("SELECT k FROM items WHERE id = ?1", [x], |r| r.get(0))?;
                        assert_eq!(k, format!("key-{x}"));
                        let _: i64 = c.query_row(
                            "SELECT count(*) FROM items WHERE n = ?1",
                            [x % 97],
                            |r| r.get(0),
                        )?;
                        n += 2;
                    }
                }
                Ok(n)
            })();
            let _ = tx.send((t, r.map_err(|e| e.to_string())));
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = 0;
    while done < 16 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (t, r) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {done} of 16 readers finished within 60 s"));
        let n = r.unwrap_or_else(|e| panic!("reader {t} failed: {e}"));
        assert!(n > 0, "reader {t} ran no query");
        done += 1;
    }
    drop(m);
}

#[test]
fn mount_point_inside_the_repository_is_refused() {
    let env = Env::new();
    let inside = env.repo().join("mnt");
    std::fs::create_dir_all(&inside).expect("mkdir");
    let mut c = env.cmd();
    c.arg("mount").arg(&inside).stdin(Stdio::null());
    let out = c.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the repository"), "{err}");
    assert!(!snapback_mount::is_mount_point(&inside));
}

#[test]
fn systemd_notify_ready_then_watchdog_only_after_a_read_through_the_mount() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 10);
    env.snapshot(&db);
    let sock_path = env.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mp = env.path("mnt-notify");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let mut c = env.cmd();
    c.arg("mount")
        .arg(&mp)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "900000");
    let _m = Mount::start(c, mp);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline
        && !(got.iter().any(|m: &String| m.starts_with("READY=1"))
            && got.iter().any(|m| m == "WATCHDOG=1"))
    {
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    let ready = got.iter().position(|m| m.starts_with("READY=1"));
    let dog = got.iter().position(|m| m == "WATCHDOG=1");
    assert!(ready.is_some(), "no READY=1 in {got:?}");
    assert!(dog.is_some(), "no WATCHDOG=1 in {got:?}");
    assert!(ready < dog, "READY=1 comes first: {got:?}");
}

#[test]
fn an_open_file_survives_a_prune_that_repacks_its_chunks() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 4000);
    env.snapshot(&db);
    // Rewrite most pages, so that after the first snapshot is forgotten its
    // pack is mostly unused and prune repacks the pages still used.
    let c = Connection::open(&db).expect("open");
    c.execute(
        "UPDATE items SET body = hex(randomblob(150)) WHERE id % 10 != 0",
        [],
    )
    .expect("update");
    drop(c);
    let id2 = env.snapshot(&db);
    let restored = env.path("restored.db");
    env.restore(&id2, &db, &restored);
    let m = env.mount(&[&id2]);
    // Open now: the mount loads the chunk layout with the current index.
    let f = std::fs::File::open(m.path(&db.to_string_lossy())).expect("open");
    env.ok(&["forget", "--keep-last", "1"]);
    let out = env.ok(&["--json", "prune", "--min-pack-age", "0s"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("prune json");
    let repacked = v["plan"]["repack_packs"]
        .as_array()
        .or_else(|| v["repack_packs"].as_array())
        .map(|a| a.len())
        .unwrap_or(0);
    assert!(repacked > 0, "the test needs a repack: {out}");
    let want = std::fs::read(&restored).expect("restored");
    let mut got = vec![0u8; want.len()];
    f.read_exact_at(&mut got, 0)
        .expect("reads after the prune find the repacked chunks");
    assert_eq!(&got[20..], &want[20..]);
}

#[test]
fn mount_over_s3_serves_the_same_queries_as_a_restore() {
    require_fuse();
    let server = snapback_testkit::s3::server();
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!(
        "mount-{}",
        dir.path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .replace('.', "")
    );
    let url = format!("s3://{}/{prefix}", server.bucket);
    let cmd = || {
        let mut c = snapback_testkit::command(Path::new(&url));
        c.envs(server.vars())
            .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
            .args(["--s3-path-style", "-q"]);
        c
    };
    let ok = |args: &[&str]| {
        let o = cmd().args(args).output().expect("run snapback");
        assert!(
            o.status.success(),
            "snapback {args:?} on S3 failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    ok(&["init"]);
    let db = dir.path().join("s3.db");
    make_db(&db, "wal", 3000);
    let id = ok(&["--json", "snapshot", &db.to_string_lossy()]);
    let id = serde_json::from_str::<serde_json::Value>(&id).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let restored = dir.path().join("restored.db");
    ok(&[
        "restore",
        &id,
        &restored.to_string_lossy(),
        "--path",
        &db.to_string_lossy(),
    ]);
    let mp = dir.path().join("mnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let mut c = cmd();
    c.arg("mount")
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg(&mp);
    let m = Mount::start(c, mp);
    let mounted = m.path(&format!("latest/{}", db.to_string_lossy()));
    let out = Command::new("sqlite3")
        .arg(&mounted)
        .arg("SELECT count(*) FROM items;")
        .output()
        .expect("sqlite3");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3000\n");
    assert_eq!(
        workload(&open_ro(&mounted).expect("open over S3")),
        workload(&open_ro(&restored).expect("open restored"))
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.path(".snapback-status.json")).expect("status"))
            .expect("json");
    let requests = status["chunk_fetches"].as_u64().expect("fetches");
    let chunks = status["chunks_fetched"].as_u64().expect("chunks");
    assert!(requests > 0);
    assert!(
        chunks > requests,
        "over S3, range reads bring neighbouring chunks along: {status}"
    );
    assert_eq!(status["read_errors"], 0);
    assert!(
        status["repository"]
            .as_str()
            .is_some_and(|r| r.starts_with("s3://")),
        "{status}"
    );
}

#[test]
fn daemon_mode_returns_once_mounted_and_umount_ends_it() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "wal", 100);
    env.snapshot(&db);
    let mp = env.path("mnt-daemon");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let _guard = Mount::guard(mp.clone());
    let daemon = |snap: &str| {
        env.cmd()
            .args(["mount", "--daemon", snap])
            .arg(&mp)
            .stdin(Stdio::null())
            .output()
            .expect("run")
    };
    let started = Instant::now();
    let out = daemon("latest");
    assert!(
        out.status.success(),
        "mount --daemon: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        snapback_mount::is_mount_point(&mp),
        "mounted when --daemon returns"
    );
    let c = open_ro(&mp.join(db.to_string_lossy().trim_start_matches('/'))).expect("open");
    let n: i64 = c
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("query");
    assert_eq!(n, 100);
    drop(c);
    let out = env.run(&["umount", &mp.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!snapback_mount::is_mount_point(&mp));
    // Mounted again at once, twice: the old daemons, exiting after the
    // umount, must not take the new mount with them (they did: fuser's
    // mount handle unmounts its path on drop).
    for round in 0..2 {
        let out = daemon("latest");
        assert!(out.status.success(), "remount {round}");
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            snapback_mount::is_mount_point(&mp),
            "round {round}: the new mount is still there 2 s later"
        );
        let out = env.run(&["umount", &mp.to_string_lossy()]);
        assert!(out.status.success(), "umount {round}");
    }
    // A mount that fails in the background reports its error.
    let out = daemon("ffffffffff");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot id starts with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Flips a byte in every pack of the repository.
fn damage_every_pack(repo: &Path) {
    let mut packs = 0;
    for sub in std::fs::read_dir(repo.join("data")).expect("data") {
        for f in std::fs::read_dir(sub.expect("e").path()).expect("pack dir") {
            let p = f.expect("e").path();
            let mut b = std::fs::read(&p).expect("pack");
            let i = b.len() / 3;
            b[i] ^= 0xff;
            std::fs::write(&p, b).expect("write");
            packs += 1;
        }
    }
    assert!(packs > 0);
}

#[test]
fn daemon_mount_survives_its_log_lines_after_the_launcher_exits() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 3000);
    env.snapshot(&db);
    damage_every_pack(&env.repo());
    let log = env.path("mount.log");
    for (round, with_log) in [(0, false), (1, true)] {
        let mp = env.path(&format!("mnt-daemon-log{round}"));
        std::fs::create_dir_all(&mp).expect("mkdir");
        let _guard = Mount::guard(mp.clone());
        // Not -q: the warnings about the damaged chunks are logged.
        let mut c = env.kit.cmd(&["mount", "--daemon", "latest"]);
        c.arg(&mp);
        if with_log {
            c.arg("--log-file").arg(&log);
        }
        let out = c.stdin(Stdio::null()).output().expect("run");
        assert!(
            out.status.success(),
            "mount --daemon: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = mp.join(db.to_string_lossy().trim_start_matches('/'));
        let mut eio = 0;
        for _ in 0..3 {
            match std::fs::read(&file) {
                Ok(_) => panic!("every pack is damaged; the read cannot succeed"),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(EIO), "round {round}: {e}");
                    eio += 1;
                }
            }
        }
        assert_eq!(eio, 3);
        std::thread::sleep(Duration::from_millis(300));
        let status: serde_json::Value = serde_json::from_slice(
            &std::fs::read(mp.join(".snapback-status.json"))
                .expect("the mount still serves after logging its warnings"),
        )
        .expect("json");
        assert!(status["read_errors"].as_u64() > Some(0), "{status}");
        let out = env.run(&["umount", &mp.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).expect("the log file");
    assert!(text.contains("WARN"), "the warnings are in the log: {text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).expect("log").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the log is private");
}

#[test]
fn encrypted_mount_refuses_a_cache_dir_of_another_user_and_keeps_entries_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_fuse();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let cmd = || {
        let mut c = snapback_testkit::command(&repo);
        c.env("SNAPBACK_PASSWORD", "correct horse").arg("-q");
        c
    };
    let o = cmd()
        .args(snapback_testkit::init_encrypted())
        .output()
        .expect("init");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let db = dir.path().join("secret.db");
    make_db(&db, "delete", 200);
    let o = cmd().arg("snapshot").arg(&db).output().expect("snapshot");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let me = std::fs::metadata("/proc/self").expect("uid").uid();
    let mp = dir.path().join("mnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    if me == 0 {
        // A cache directory chmod 0700 but owned by another user.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        let ok = Command::new("chown")
            .arg("65534")
            .arg(&theirs)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let o = cmd()
            .args(["mount", "latest", "--cache-dir"])
            .arg(&theirs)
            .arg(&mp)
            .stdin(Stdio::null())
            .output()
            .expect("mount");
        assert!(!o.status.success(), "a cache owned by uid 65534 is refused");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not by the mounting user"), "{err}");
        assert!(!snapback_mount::is_mount_point(&mp));
        assert_eq!(
            std::fs::read_dir(&theirs).expect("ls").count(),
            0,
            "nothing written"
        );
    }
    let cache = dir.path().join("cache");
    let mut c = cmd();
    c.args(["mount", "latest", "--cache-dir"])
        .arg(&cache)
        .arg(&mp);
    let m = Mount::start(c, mp);
    let n: i64 = open_ro(&m.path(&db.to_string_lossy()))
        .expect("open")
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("query");
    assert_eq!(n, 200);
    drop(m);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    let mut entries = 0;
    for sub in std::fs::read_dir(&cache).expect("cache") {
        let sub = sub.expect("e").path();
        assert_eq!(mode(&sub), 0o700, "{}", sub.display());
        for f in std::fs::read_dir(&sub).expect("sub") {
            let f = f.expect("e").path();
            assert_eq!(mode(&f), 0o600, "{}", f.display());
            entries += 1;
        }
    }
    assert!(entries > 0, "the read filled the disk cache");
}

#[test]
fn a_read_of_a_snapshot_forgotten_and_pruned_while_mounted_is_logged_as_such_with_eio() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, "delete", 20_000);
    let id = env.snapshot(&db);
    let log = env.path("mount.log");
    let m = env.mount(&[
        "--readahead",
        "0",
        "--log-file",
        &log.to_string_lossy(),
        &id,
    ]);
    let f = std::fs::File::open(m.path(&db.to_string_lossy())).expect("open");
    let size = f.metadata().expect("stat").len();
    let mut page = vec![0u8; 4096];
    f.read_exact_at(&mut page, 0)
        .expect("read before the forget");

    env.ok(&["forget", "--keep-tag", "none-has-this-tag", "--allow-empty"]);
    env.ok(&["prune", "--min-pack-age", "0s"]);
    let err = f
        .read_exact_at(&mut page, size - 4096)
        .expect_err("its data is gone");
    assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
    drop(f);
    drop(m);
    let text = std::fs::read_to_string(&log).expect("the log file");
    assert!(
        text.contains(&format!(
            "snapshot {} was forgotten/pruned while mounted",
            &id[..8]
        )),
        "{text}"
    );
    assert!(!text.contains("corrupt"), "not reported as damage: {text}");
}
