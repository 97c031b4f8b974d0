//! `restore SNAP DEST --delta`: whatever happened to DEST (bit flips,
//! overwritten pages, truncation, growth, a missing file), it ends byte
//! for byte the snapshot's content, and only the pages that differ are
//! written; bad input (a directory, another database, a full disk) is
//! refused with nothing changed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use snapback_testkit::db::make_db;
use snapback_testkit::{random_bytes, stderr, Env};

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A repository with one snapshot of a database of a few hundred pages,
/// and the snapshot's content restored whole (`full.db`).
fn db_env() -> (Env, Vec<u8>) {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 2500);
    env.snapshot(&db);
    let full = env.path("full.db");
    env.ok(&["restore", "latest", utf8(&full)]);
    let want = std::fs::read(&full).expect("read full");
    (env, want)
}

fn delta_json(env: &Env, dest: &Path) -> serde_json::Value {
    let out = env.ok(&["--json", "restore", "latest", utf8(dest), "--delta"]);
    serde_json::from_str(&out).expect("json")
}

/// One kind of damage to DEST.
#[derive(Debug, Clone)]
enum Damage {
    FlipBit { at: u64, bit: u8 },
    OverwritePage { page: u64, seed: u64 },
    Truncate { to: u64 },
    Grow { by: u64 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<u64>(), 0u8..8).prop_map(|(at, bit)| Damage::FlipBit { at, bit }),
        (any::<u64>(), any::<u64>()).prop_map(|(page, seed)| Damage::OverwritePage { page, seed }),
        any::<u64>().prop_map(|to| Damage::Truncate { to }),
        (1u64..200_000).prop_map(|by| Damage::Grow { by }),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage, page: u64) {
    let len = bytes.len() as u64;
    match *d {
        Damage::FlipBit { at, bit } if len > 0 => bytes[(at % len) as usize] ^= 1 << bit,
        Damage::OverwritePage { page: p, seed } if len >= page => {
            let p = p % (len / page);
            let junk = random_bytes(page as usize, seed);
            bytes[(p * page) as usize..((p + 1) * page) as usize].copy_from_slice(&junk);
        }
        Damage::Truncate { to } => bytes.truncate((to % (len + 1)) as usize),
        Damage::Grow { by } => bytes.extend(random_bytes(by as usize, by)),
        _ => {}
    }
}

/// The pages of `want` that `have` does not hold at their place.
fn differing_pages(have: &[u8], want: &[u8], page: usize) -> u64 {
    want.chunks(page)
        .enumerate()
        .filter(|(i, p)| have.get(i * page..i * page + p.len()) != Some(*p))
        .count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn delta_restore_after_random_damage_is_byte_identical_and_writes_only_differing_pages(
        damages in prop::collection::vec(damage(), 1..5)
    ) {
        let (env, want) = db_env();
        let dest = env.path("dest.db");
        let mut bytes = want.clone();
        for d in &damages {
            apply(&mut bytes, d, 4096);
        }
        std::fs::write(&dest, &bytes).expect("write damaged copy");
        let expect_written = differing_pages(&bytes, &want, 4096);
        let inode = std::fs::metadata(&dest).expect("stat").ino();
        let j = delta_json(&env, &dest);
        let got = std::fs::read(&dest).expect("read dest");
        prop_assert!(got == want, "DEST is byte-identical to the snapshot after {damages:?}");
        let d = &j["delta"];
        prop_assert_eq!(d["dest_existed"].as_bool(), Some(true));
        prop_assert_eq!(d["pages_written"].as_u64(), Some(expect_written), "{}", j);
        prop_assert_eq!(d["bytes_written"].as_u64(), Some(expect_written * 4096));
        prop_assert_eq!(std::fs::metadata(&dest).expect("stat").ino(), inode, "written in place");
    }
}

#[test]
fn delta_restore_finds_every_damaged_page_across_scan_pieces_and_threads() {
    // DEST is read in pieces of about 1 MiB, taken in turn by one thread
    // per core: a damaged page in each piece, at its first and last page
    // and the file's, is found and rewritten, and nothing else.
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 30_000);
    env.snapshot(&db);
    let full = env.path("full.db");
    env.ok(&["restore", "latest", utf8(&full)]);
    let want = std::fs::read(&full).expect("read full");
    let pages = want.len() as u64 / 4096;
    assert!(
        pages > 4 * 256,
        "the database spans several pieces: {pages} pages"
    );
    let mut bytes = want.clone();
    let mut damaged = std::collections::BTreeSet::new();
    for p in (0..pages).step_by(256).flat_map(|p| [p, p + 255, p + 100]) {
        let p = p.min(pages - 1);
        let junk = random_bytes(4096, p);
        bytes[(p * 4096) as usize..((p + 1) * 4096) as usize].copy_from_slice(&junk);
        damaged.insert(p);
    }
    let dest = env.path("dest.db");
    std::fs::write(&dest, &bytes).expect("write damaged copy");
    let j = delta_json(&env, &dest);
    assert!(
        std::fs::read(&dest).expect("read") == want,
        "DEST is the snapshot's image"
    );
    assert_eq!(j["delta"]["pages_compared"].as_u64(), Some(pages), "{j}");
    assert_eq!(
        j["delta"]["pages_written"].as_u64(),
        Some(damaged.len() as u64),
        "{j}"
    );
}

#[test]
fn delta_restore_of_a_missing_dest_restores_it_whole() {
    let (env, want) = db_env();
    let dest = env.path("gone/dest.db");
    let j = delta_json(&env, &dest);
    assert_eq!(std::fs::read(&dest).expect("read"), want);
    assert_eq!(j["delta"]["dest_existed"], false, "{j}");
    assert_eq!(j["delta"]["pages_compared"], 0, "{j}");
}

#[test]
fn delta_restore_of_an_intact_copy_writes_nothing() {
    let (env, want) = db_env();
    let dest = env.path("full.db");
    let j = delta_json(&env, &dest);
    assert_eq!(std::fs::read(&dest).expect("read"), want);
    let pages = want.len() as u64 / 4096;
    assert_eq!(j["delta"]["pages_compared"], pages, "{j}");
    assert_eq!(j["delta"]["pages_written"], 0, "{j}");
    assert_eq!(j["delta"]["bytes_written"], 0, "{j}");
}

#[test]
fn delta_restore_removes_the_stale_wal_and_shm_of_dest() {
    let (env, want) = db_env();
    let dest = env.path("dest.db");
    let mut bytes = want.clone();
    bytes[5 * 4096 + 100] ^= 0xff;
    std::fs::write(&dest, &bytes).expect("write");
    for s in ["-wal", "-shm", "-journal"] {
        std::fs::write(env.path(&format!("dest.db{s}")), b"stale").expect("side");
    }
    delta_json(&env, &dest);
    assert_eq!(std::fs::read(&dest).expect("read"), want);
    for s in ["-wal", "-shm", "-journal"] {
        assert!(!env.path(&format!("dest.db{s}")).exists(), "{s} removed");
    }
    assert_eq!(snapback_testkit::integrity(&dest), "ok");
}

#[test]
fn delta_restore_of_a_plain_file_rewrites_only_changed_chunks() {
    let env = Env::new();
    let src = env.path("data.bin");
    let content = random_bytes(32 << 20, 11);
    std::fs::write(&src, &content).expect("write");
    env.snapshot(&src);
    let dest = env.path("copy.bin");
    let mut bytes = content.clone();
    bytes[12 << 20] ^= 1;
    bytes.truncate(28 << 20);
    std::fs::write(&dest, &bytes).expect("write");
    let j = delta_json(&env, &dest);
    assert_eq!(std::fs::read(&dest).expect("read"), content);
    let d = &j["delta"];
    assert!(
        d["pages_written"].is_null(),
        "a plain file has no pages: {j}"
    );
    let (compared, written) = (
        d["chunks_compared"].as_u64().expect("n"),
        d["chunks_written"].as_u64().expect("n"),
    );
    assert!(written >= 2 && written < compared, "{j}");
    assert!(
        d["bytes_written"].as_u64().expect("n") < 16 << 20,
        "only the changed chunk and the cut-off tail are written: {j}"
    );
}

/// The SHA-256 of a file, or of nothing when it is missing.
fn fingerprint(p: &Path) -> (Option<Vec<u8>>, Option<u64>) {
    (
        std::fs::read(p).ok(),
        std::fs::metadata(p).ok().map(|m| m.mtime_nsec() as u64),
    )
}

#[test]
fn delta_restore_into_a_directory_is_refused_and_changes_nothing() {
    let (env, _) = db_env();
    let dir = env.path("outdir");
    std::fs::create_dir(&dir).expect("mkdir");
    let err = env.fails(&["restore", "latest", utf8(&dir), "--delta"]);
    assert!(err.contains("is a directory"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).expect("ls").count(),
        0,
        "nothing restored under it"
    );
}

#[test]
fn delta_restore_over_a_database_with_another_page_size_is_refused_and_changes_nothing() {
    let (env, _) = db_env();
    let other = env.path("other.db");
    let c = rusqlite::Connection::open(&other).expect("open");
    c.execute_batch("PRAGMA page_size=8192; CREATE TABLE x(a); INSERT INTO x VALUES (1);")
        .expect("make");
    drop(c);
    let before = fingerprint(&other);
    let err = env.fails(&["restore", "latest", utf8(&other), "--delta"]);
    assert!(err.contains("8192-byte pages"), "{err}");
    assert!(err.contains("4096-byte pages"), "{err}");
    assert!(err.contains("--force"), "says what to do: {err}");
    assert_eq!(
        fingerprint(&other),
        before,
        "the other database is untouched"
    );
}

#[test]
fn delta_restore_of_a_snapshot_of_several_files_asks_for_one() {
    let env = Env::new();
    let dir = env.path("src");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("a"), b"a").expect("a");
    std::fs::write(dir.join("b"), b"b").expect("b");
    env.snapshot(&dir);
    let dest = env.path("a-copy");
    std::fs::write(&dest, b"x").expect("dest");
    let err = env.fails(&["restore", "latest", utf8(&dest), "--delta"]);
    assert!(err.contains("choose one with --path"), "{err}");
    assert_eq!(std::fs::read(&dest).expect("read"), b"x");
}

/// `cmd` run in a private mount namespace where `dir` is a tmpfs of
/// `size`, after `setup` (a shell script) ran in it.
fn on_small_tmpfs(dir: &Path, size: &str, setup: &str, cmd: &Command) -> std::process::Output {
    let mut c = Command::new("timeout");
    c.args([
        "120",
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
    ]);
    c.arg(format!(
        r#"set -e; mount -t tmpfs -o size={size} tmpfs "$T"; {setup}; exec "$@""#
    ));
    c.arg("sh").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("T", dir);
    c.output().expect("run unshare (util-linux)")
}

#[test]
fn restore_onto_a_full_disk_fails_clearly_and_changes_nothing() {
    assert_eq!(
        std::fs::metadata("/proc/self").expect("proc").uid(),
        0,
        "this test mounts a small tmpfs in a private mount namespace (`unshare -m`), which needs root"
    );
    let (env, want) = db_env();
    assert!(
        want.len() > 600 << 10,
        "the database is larger than the tmpfs"
    );
    let t = env.path("small");
    std::fs::create_dir(&t).expect("mkdir");
    let small = env.path("small-copy.db");
    std::fs::write(&small, &want[..256 << 10]).expect("write");
    // --delta: DEST must grow past what the disk holds.
    let dest = t.join("dest.db");
    let out = on_small_tmpfs(
        &t,
        "512k",
        &format!(
            r#"cp "{}" "$T/dest.db"; sha256sum "$T/dest.db" > "$T/../before"; trap 'sha256sum "$T/dest.db" > "$T/../after"; ls -a "$T" > "$T/../listing"' EXIT; "$@"; exit"#,
            small.display()
        ),
        &env.cmd(&["restore", "latest", utf8(&dest), "--delta"]),
    );
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a delta restore onto a full disk fails: {err}"
    );
    assert!(err.contains("not enough space"), "{err}");
    assert!(
        !err.contains("partly restored"),
        "nothing was written: {err}"
    );
    let (before, after) = (
        std::fs::read_to_string(env.path("before")).expect("before"),
        std::fs::read_to_string(env.path("after")).expect("after"),
    );
    assert_eq!(before, after, "DEST is unchanged");
    // A full restore: no temporary file is left behind, no DEST appears.
    let out = on_small_tmpfs(
        &t,
        "512k",
        r#"trap 'ls -a "$T" > "$T/../listing"' EXIT; "$@"; exit"#,
        &env.cmd(&["restore", "latest", utf8(&dest)]),
    );
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "a restore onto a full disk fails: {err}"
    );
    assert!(err.contains("not enough space"), "{err}");
    let listing = std::fs::read_to_string(env.path("listing")).expect("listing");
    assert_eq!(
        listing.trim(),
        ".\n..",
        "nothing left on the disk: {listing}"
    );
}

#[test]
fn delta_restore_works_in_an_encrypted_repository() {
    // Chunk ids are keyed hashes there: DEST's ranges are hashed the same way.
    let env = Env::encrypted("correct horse");
    let db = env.path("app.db");
    make_db(&db, 1500);
    env.snapshot(&db);
    let full = env.path("full.db");
    env.ok(&["restore", "latest", utf8(&full)]);
    let want = std::fs::read(&full).expect("read");
    let mut bytes = want.clone();
    bytes[7 * 4096 + 9] ^= 0x10;
    bytes[20 * 4096] ^= 0x01;
    std::fs::write(&full, &bytes).expect("damage");
    let j = delta_json(&env, &full);
    assert_eq!(std::fs::read(&full).expect("read"), want);
    assert_eq!(j["delta"]["pages_written"], 2, "{j}");
}
