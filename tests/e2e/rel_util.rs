//! Helpers for the reliability tests (crash, corruption, hostile input,
//! secrets): databases, repository objects, damage, exact restores.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use snapback_testkit::db::{make_db, rows};
use snapback_testkit::{stderr, stdout, Env};

/// The SHA-256 of a file, as hex.
pub fn sha256_file(path: &Path) -> String {
    snapback_core::Id::of(&std::fs::read(path).expect("read")).to_hex()
}

/// Every object file under `repo/prefix`, sorted.
pub fn objects(repo: &Path, prefix: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = vec![];
    walk(&repo.join(prefix), &mut out);
    out.sort();
    out
}

/// Ways to damage an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// One bit flipped in the middle.
    FlipBit,
    /// Cut to half its length.
    Truncate,
    /// Removed.
    Delete,
}

impl Damage {
    pub const ALL: [Damage; 3] = [Damage::FlipBit, Damage::Truncate, Damage::Delete];

    pub fn apply(self, path: &Path) {
        match self {
            Damage::FlipBit => {
                let mut b = std::fs::read(path).expect("read");
                let i = b.len() / 2;
                b[i] ^= 0x10;
                std::fs::write(path, b).expect("write");
            }
            Damage::Truncate => {
                let len = std::fs::metadata(path).expect("stat").len();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .expect("open");
                f.set_len(len / 2).expect("truncate");
            }
            Damage::Delete => std::fs::remove_file(path).expect("rm"),
        }
    }
}

/// A committed snapshot as `snapshots --json` lists it: id and, per file,
/// path and identity: its SHA-256, or (a WAL-delta capture, which records
/// no whole-file hash) its `db_checksum`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub id: String,
    pub files: Vec<(String, String)>,
}

pub fn committed(env: &Env) -> Vec<Committed> {
    env.snapshots_json()
        .iter()
        .map(|s| Committed {
            id: s["id"].as_str().expect("id").to_string(),
            files: s["files"]
                .as_array()
                .expect("files")
                .iter()
                .map(|f| {
                    (
                        f["path"].as_str().expect("path").to_string(),
                        match f["sha256"].as_str() {
                            Some(sha) => sha.to_string(),
                            None => format!(
                                "db_checksum:{}",
                                f["db_checksum"].as_str().expect("sha256 or db_checksum")
                            ),
                        },
                    )
                })
                .collect(),
        })
        .collect()
}

/// Restores every file of `snap` under a fresh directory and asserts that
/// each hashes to the manifest's SHA-256; returns the restored paths.
pub fn restore_exactly(env: &Env, snap: &Committed, tag: &str) -> Vec<PathBuf> {
    let dest = env.path(&format!("restore-{tag}-{}/", &snap.id[..12]));
    let out = env.run(&["restore", &snap.id, dest.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "snapshot {} restores: {}",
        &snap.id[..12],
        stderr(&out)
    );
    let mut paths = vec![];
    for (path, sha) in &snap.files {
        let p = dest.join(path.trim_start_matches('/'));
        if sha.starts_with("db_checksum:") {
            // A WAL-delta capture: restore proved every chunk against the
            // chunk list before it exited 0; the database must be sound.
            assert_eq!(
                crate::util::integrity(&p),
                "ok",
                "restored {path} of {} (a WAL-delta capture) passes integrity_check",
                &snap.id[..12]
            );
        } else {
            assert_eq!(
                &sha256_file(&p),
                sha,
                "restored {path} of {} is exactly the captured content",
                &snap.id[..12]
            );
        }
        paths.push(p);
    }
    paths
}

/// `check --read-data` passes; returns its stdout.
pub fn check_clean(env: &Env, context: &str) -> String {
    let out = env.run(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "{context}: check --read-data passes: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// No temporary or partial file is left in `dir` (non-recursive).
pub fn no_temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp") || n.contains("snapback-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A restore script that puts table `t` of `live` back to snapshot `snap`.
pub fn repair_script(env: &Env, snap: &str, live: &Path, name: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(
        &p,
        format!(
            "description = \"put t back\"\nsnapshot = \"{snap}\"\nlive = \"{}\"\n[[table]]\nname = \"t\"\nactions = [\"update_changed\", \"insert_missing\", \"delete_extra\"]\nbatch_size = 10\n",
            live.display()
        ),
    )
    .expect("write script");
    p
}

/// Damages rows of `t` as an incident would: `n` rows changed, `n / 4`
/// deleted and `n / 4` inserted, chosen from `seed`.
pub fn damage_rows(db: &Path, seed: u64, n: i64) {
    let c = rusqlite::Connection::open(db).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    let tx = c.unchecked_transaction().expect("tx");
    let max: i64 = tx
        .query_row(
            "SELECT coalesce(max(id), 0) FROM t WHERE id < 100000",
            [],
            |r| r.get(0),
        )
        .expect("max");
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (max.max(1) as u64)) as i64
    };
    for _ in 0..n {
        let id = next();
        tx.execute(
            "UPDATE t SET v = ?2 WHERE id = ?1",
            (id, format!("damaged {seed}")),
        )
        .expect("update");
    }
    for _ in 0..n / 4 {
        tx.execute("DELETE FROM t WHERE id = ?1", [next()])
            .expect("delete");
    }
    for i in 0..n / 4 {
        tx.execute(
            "INSERT OR REPLACE INTO t(id, v) VALUES (?1, ?2)",
            (
                100_000 + ((seed % 1000) as i64) * 1000 + i,
                format!("inserted {seed}"),
            ),
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// `env`'s repository with two snapshots of one database: the first full, the
/// second after 100 rows changed.
pub fn two_snapshots_in(env: Env) -> (Env, PathBuf, Committed, Committed) {
    let db = env.path("app.db");
    make_db(&db, 3000);
    env.snapshot(&db);
    damage_rows(&db, 7, 100);
    env.snapshot(&db);
    let c = committed(&env);
    assert_eq!(c.len(), 2);
    (env, db, c[0].clone(), c[1].clone())
}

pub fn largest(files: Vec<PathBuf>) -> PathBuf {
    files
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("an object")
}

pub fn name(p: &Path) -> String {
    p.file_name().expect("name").to_string_lossy().into_owned()
}

/// Restore of `snap` fails, and writes nothing.
pub fn restore_refused(env: &Env, snap: &str, what: &str) -> String {
    let dest = env.path(&format!("out-{what}.db"));
    let out = env.run(&["restore", snap, dest.to_str().expect("utf8")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: restore fails: {}",
        stderr(&out)
    );
    assert!(!dest.exists(), "{what}: restore wrote nothing");
    let left = no_temp_files(env.dir.path());
    assert!(
        left.is_empty(),
        "{what}: no temporary file is left: {left:?}"
    );
    stderr(&out)
}

/// `diff` against the damaged snapshot fails (exit 1: neither "no
/// differences" nor a list of differences built from damaged data). The
/// diff runs as a full scan (`SNAPBACK_DIFF_FULL_SCAN=1`), so that every
/// page of the snapshot's table is read: by page hash, a page equal to the
/// live one is skipped unread, and damage in it is not the diff's to find.
pub fn diff_refused(env: &Env, snap: &str, db: &Path, what: &str) {
    let out = env
        .cmd(&["diff", snap, db.to_str().expect("utf8")])
        .env("SNAPBACK_DIFF_FULL_SCAN", "1")
        .output()
        .expect("run snapback");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: diff fails: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).trim().is_empty(),
        "{what}: diff printed no rows: {}",
        stdout(&out)
    );
}
