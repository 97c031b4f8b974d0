//! Encryption at rest, end to end: an encrypted repository round-trips a
//! database written while it is snapshotted; nothing under it shows the
//! data, the passphrase or a page's SHA-256; the passphrase comes from
//! SNAPBACK_PASSWORD, --password-file or SNAPBACK_PASSWORD_FILE and is
//! never printed; a wrong or missing one writes nothing; keys are added
//! and removed; tampering fails authentication and is reported like
//! corruption; a config stripped of its encryption is refused; mount, S3,
//! diff and repair work on encrypted repositories.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapback_core::storage::{LocalStore, Store};
use snapback_core::{Id, Repository};

use crate::rel_util::{
    check_clean, committed, damage_rows, diff_refused, largest, make_db, name, objects,
    repair_script, restore_exactly, restore_refused, rows, two_snapshots_in, Committed,
};
use crate::s3::S3Repo;
use snapback_testkit::mount::{is_mounted, require_fuse, Mount};
use snapback_testkit::{init_encrypted, integrity, stderr, stdout, Env, CHEAP_KDF, PASSWORD_VARS};

/// The passphrase of the repositories here.
const PASS: &str = "correct-horse-7f3a9c-battery";
/// A second passphrase (`key add`).
const OTHER: &str = "second-key-51e0d2-staple";
/// A passphrase that opens nothing.
const WRONG: &str = "wrong-guess-0b9d4e-passphrase";
/// In every row of the marker databases.
const MARKER: &str = "PLAINTEXT-MARKER";
/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &str = "SQLite format 3";
/// What `snapback` says when there is no passphrase and no terminal.
const NO_TERMINAL_HINTS: [&str; 2] = ["SNAPBACK_PASSWORD", "--password-file"];

/// A WAL database (rel_util's schema) whose `rows` rows all hold the
/// marker, and a table `raw` of incompressible blobs that start with it
/// (so that it shows in a pack of an unencrypted repository).
fn marker_db(path: &Path, rows: i64) {
    make_db(path, 0);
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute(
        "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?1)
         INSERT INTO t(id, v) SELECT x, ?2 || '-' || x || '-' || hex(randomblob(40)) FROM c",
        (rows, MARKER),
    )
    .expect("marker rows");
    c.execute("CREATE TABLE raw(b BLOB NOT NULL)", [])
        .expect("raw table");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..20 {
        let mut b = MARKER.as_bytes().to_vec();
        b.extend((0..1500).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        c.execute("INSERT INTO raw(b) VALUES (?1)", [b])
            .expect("raw row");
    }
}

/// Inserts marker rows from id `first` on, one transaction each, until
/// `stop`; `done` counts the committed ones.
fn marker_writer(
    path: &Path,
    first: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicI64>,
) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&path).expect("open writer");
        c.busy_timeout(Duration::from_secs(30)).expect("busy");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            c.execute(
                "INSERT INTO t(id, v) VALUES (?1, ?2)",
                (first + n, format!("{MARKER}-live-{n}")),
            )
            .expect("insert");
            n += 1;
            done.store(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Every file under `root` with its size.
fn listing(root: &Path) -> Vec<(PathBuf, u64)> {
    objects(root, "")
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).expect("stat").len();
            (p, len)
        })
        .collect()
}

/// The SHA-256 of every page of a database file, raw.
fn page_hashes(db: &Path) -> HashSet<Vec<u8>> {
    let bytes = std::fs::read(db).expect("read db");
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    let size: i64 = c
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    let size = size as usize;
    assert_eq!(size, 4096, "the fixtures use 4 KiB pages");
    assert_eq!(bytes.len() % size, 0);
    bytes.chunks(size).map(|p| Id::of(p).0.to_vec()).collect()
}

/// Everything under `root` that gives away one of `needles` (as bytes) or
/// one of `hashes`: in an object's name (hex) or in any 32-byte window of
/// its bytes. One line per finding.
fn leaks(root: &Path, needles: &[&str], hashes: &HashSet<Vec<u8>>) -> Vec<String> {
    let hex: HashSet<String> = hashes
        .iter()
        .map(|h| Id(h.as_slice().try_into().expect("32 bytes")).to_hex())
        .collect();
    let mut found = vec![];
    for p in objects(root, "") {
        let shown = p
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        if hex.contains(&name(&p)) {
            found.push(format!("{shown}: named by a page's SHA-256"));
        }
        let b = std::fs::read(&p).expect("read");
        for n in needles {
            if b.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push(format!("{shown}: holds {n:?}"));
            }
        }
        if b.windows(32).any(|w| hashes.contains(w)) {
            found.push(format!("{shown}: holds a page's SHA-256"));
        }
    }
    found
}

/// The ids of every blob in the repository's index, read with the library.
fn blob_ids(env: &Env, pass: &str) -> HashSet<Vec<u8>> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(env.repo()).expect("store"));
    let repo =
        Repository::open_with_passphrase(store, || Ok(pass.to_string().into())).expect("open");
    let index = repo.index().expect("index");
    index.blobs().map(|(id, _)| id.0.to_vec()).collect()
}

/// Runs `c` in a new session, without a controlling terminal (so no
/// passphrase can be asked for), stdin closed.
fn without_terminal(c: &Command) -> Output {
    let mut s = Command::new("setsid");
    s.arg("-w").arg(c.get_program()).args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    s.stdin(Stdio::null()).output().expect("run setsid")
}

/// `c` with no passphrase in its environment.
fn no_passphrase(mut c: Command) -> Command {
    for k in PASSWORD_VARS {
        c.env_remove(k);
    }
    c
}

/// `c` with `pass` as its SNAPBACK_PASSWORD.
fn with_passphrase(mut c: Command, pass: &str) -> Command {
    c.env("SNAPBACK_PASSWORD", pass);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run snapback")
}

/// Asserts exit 1 with every one of `needles` in stderr.
fn refused(out: &Output, needles: &[&str], what: &str) {
    refused_with(out, 1, needles, what)
}

/// Asserts exit `code` with every one of `needles` in stderr.
fn refused_with(out: &Output, code: i32, needles: &[&str], what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exits {code}: {}{}",
        stdout(out),
        stderr(out)
    );
    for n in needles {
        assert!(
            stderr(out).contains(n),
            "{what}: the error says {n:?}: {}",
            stderr(out)
        );
    }
}

fn flip_at(path: &Path, i: usize) {
    let mut b = std::fs::read(path).expect("read");
    b[i] ^= 0x01;
    std::fs::write(path, b).expect("write");
}

/// The sealed header's length, from a pack's plaintext 12-byte prefix.
fn pack_header_len(pack: &Path) -> usize {
    let b = std::fs::read(pack).expect("read pack");
    assert_eq!(&b[..8], b"SNBPACK\x01", "the pack prefix stays plaintext");
    u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

#[test]
fn round_trip_of_snapshots_taken_while_a_writer_inserts() {
    let env = Env::encrypted(PASS);
    let db = env.path("app.db");
    marker_db(&db, 2000);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicI64::new(0));
    let w = marker_writer(&db, 10_000, stop.clone(), done.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the writer runs");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut taken = vec![];
    for _ in 0..2 {
        let before = done.load(Ordering::SeqCst);
        let id = env.snapshot(&db);
        taken.push((id, before, done.load(Ordering::SeqCst)));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    assert!(
        taken[1].1 > taken[0].1,
        "the writer committed between the snapshots: {taken:?}"
    );

    check_clean(&env, "encrypted repository");
    let listed = committed(&env);
    assert_eq!(listed.len(), 2);
    for (id, before, after) in &taken {
        let snap = listed.iter().find(|s| &s.id == id).expect("listed");
        let restored = restore_exactly(&env, snap, "rt");
        assert_eq!(integrity(&restored[0]), "ok");
        let got = rows(&restored[0]);
        let n = got.len() as i64;
        assert!(
            2000 + before <= n && n <= 2000 + after,
            "snapshot {}: {n} rows, between the {} committed before it began and the {} after it ended",
            &id[..8],
            2000 + before,
            2000 + after
        );
        assert!(
            got.iter().all(|(_, v)| v.starts_with(MARKER)),
            "the rows are the ones written"
        );
    }
}

/// Fills `env`'s repository with objects of every kind: two snapshots of
/// a marker database, a repair (its audit entry keeps the marker rows it
/// put back), a check. Returns the SHA-256 of every page of the first
/// snapshot.
fn populate(env: &Env) -> HashSet<Vec<u8>> {
    let db = env.path("app.db");
    marker_db(&db, 1500);
    let first = env.snapshot(&db);
    damage_rows(&db, 3, 40);
    let script = repair_script(env, &first, &db, "fix.toml");
    env.ok(&["repair", utf8(&script), "--apply", "--yes"]);
    env.snapshot(&db);
    check_clean(env, "populated");
    for kind in ["data", "index", "snapshots", "checks", "audit"] {
        assert!(
            !objects(&env.repo(), kind).is_empty(),
            "{kind} was written, so it is scanned"
        );
    }
    let image = env.path("image.db");
    env.ok(&["restore", &first, utf8(&image)]);
    let pages = page_hashes(&image);
    assert!(pages.len() > 20, "{} pages", pages.len());
    pages
}

#[test]
fn repository_shows_no_data_passphrase_or_page_hash() {
    let env = Env::encrypted(PASS);
    let pages = populate(&env);
    assert_eq!(objects(&env.repo(), "keys").len(), 1);
    let found = leaks(&env.repo(), &[MARKER, SQLITE_HEADER, PASS], &pages);
    assert!(found.is_empty(), "the repository gives away: {found:#?}");

    // The same scan of an unencrypted repository finds the marker and the
    // page hashes, so it is not blind.
    let plain = Env::new();
    let pages = populate(&plain);
    let found = leaks(&plain.repo(), &[MARKER, SQLITE_HEADER, PASS], &pages);
    for what in [
        "data/",
        "audit/",
        "holds \"PLAINTEXT-MARKER\"",
        "holds a page's SHA-256",
    ] {
        assert!(
            found.iter().any(|f| f.contains(what)),
            "in an unencrypted repository the scan finds {what}: {found:#?}"
        );
    }
}

#[test]
fn identical_databases_in_two_repositories_share_no_pack_or_chunk_id() {
    let a = Env::encrypted(PASS);
    let b = Env::encrypted(PASS);
    let db = a.path("app.db");
    marker_db(&db, 1000);
    a.snapshot(&db);
    b.snapshot(&db);
    // Both captured the same content: a format-2 manifest's checksum is
    // keyed in an encrypted repository, so compare what each restores.
    let (from_a, from_b) = (a.path("from-a.db"), a.path("from-b.db"));
    a.ok(&["restore", "latest", utf8(&from_a)]);
    b.ok(&["restore", "latest", utf8(&from_b)]);
    assert_eq!(
        std::fs::read(&from_a).expect("read a's restore"),
        std::fs::read(&from_b).expect("read b's restore"),
        "both captured the same content"
    );
    let packs = |e: &Env| -> HashSet<Vec<u8>> {
        objects(&e.repo(), "data")
            .iter()
            .map(|p| std::fs::read(p).expect("read pack"))
            .collect()
    };
    let names = |e: &Env| -> HashSet<String> {
        objects(&e.repo(), "data").iter().map(|p| name(p)).collect()
    };
    assert!(names(&a).is_disjoint(&names(&b)), "pack names differ");
    assert!(packs(&a).is_disjoint(&packs(&b)), "pack bytes differ");
    let (ids_a, ids_b) = (blob_ids(&a, PASS), blob_ids(&b, PASS));
    assert!(ids_a.len() > 10, "{} blobs", ids_a.len());
    assert!(ids_a.is_disjoint(&ids_b), "chunk ids differ");
    let image = a.path("image.db");
    a.ok(&["restore", "latest", utf8(&image)]);
    let pages = page_hashes(&image);
    assert!(
        ids_a.is_disjoint(&pages),
        "no chunk id is the SHA-256 of a page"
    );

    // Unencrypted, the same content gets the same, public ids.
    let (p, q) = (Env::new(), Env::new());
    p.snapshot(&image);
    q.snapshot(&image);
    let (ids_p, ids_q) = (blob_ids(&p, ""), blob_ids(&q, ""));
    assert_eq!(ids_p, ids_q);
    assert!(ids_p.is_superset(&pages), "plain chunk ids are page hashes");
}

/// An encrypted repository (passphrase PASS), a database of 300 rows, and
/// a file whose first line is `line` (a passphrase file).
fn with_db_and_file(line: &str) -> (Env, PathBuf, PathBuf) {
    let env = Env::encrypted(PASS);
    let db = env.path("app.db");
    make_db(&db, 300);
    let file = env.path("pass.txt");
    std::fs::write(&file, format!("{line}\nnot part of it\n")).expect("write");
    (env, db, file)
}

#[test]
fn passphrase_sources_and_wrong_or_missing_passphrases_write_nothing() {
    let (env, db, file) = with_db_and_file(PASS);
    let (dbs, files) = (utf8(&db), utf8(&file));

    env.snapshot(&db);
    let out = run(no_passphrase(env.cmd(&[
        "--password-file",
        files,
        "snapshot",
        dbs,
    ])));
    assert!(out.status.success(), "--password-file: {}", stderr(&out));
    let mut c = no_passphrase(env.cmd(&["snapshot", dbs]));
    c.env("SNAPBACK_PASSWORD_FILE", files);
    let out = run(c);
    assert!(
        out.status.success(),
        "SNAPBACK_PASSWORD_FILE: {}",
        stderr(&out)
    );
    let out = run(with_passphrase(
        env.cmd(&["--password-file", files, "snapshots"]),
        WRONG,
    ));
    assert!(
        out.status.success(),
        "--password-file comes before SNAPBACK_PASSWORD: {}",
        stderr(&out)
    );
    assert_eq!(env.snapshots_json().len(), 3);

    let wrong_file = env.path("wrong.txt");
    std::fs::write(&wrong_file, WRONG).expect("write");
    let dest = env.path("out.db");
    let commands: Vec<Vec<&str>> = vec![
        vec!["snapshot", dbs],
        vec!["snapshots"],
        vec!["check", "--read-data"],
        vec!["restore", "latest", utf8(&dest)],
        vec!["diff", "latest", dbs],
        vec!["key", "list"],
        vec!["key", "add", "--kdf-memory", "8"],
        vec!["forget", "--keep-last", "1", "--prune"],
        vec!["prune"],
        vec!["repair-index"],
        vec!["status"],
    ];
    let before = listing(&env.repo());
    for args in &commands {
        let mut c = with_passphrase(env.cmd(args), WRONG);
        c.env("SNAPBACK_NEW_PASSWORD", OTHER);
        refused_with(
            &run(c),
            12,
            &["the passphrase opens none of the 1 key(s)"],
            &format!("wrong passphrase: {args:?}"),
        );
        let mut with_file = vec!["--password-file", utf8(&wrong_file)];
        with_file.extend(args);
        refused_with(
            &run(no_passphrase(env.cmd(&with_file))),
            12,
            &["opens none"],
            &format!("wrong passphrase file: {args:?}"),
        );
        refused(
            &without_terminal(&no_passphrase(env.cmd(args))),
            &NO_TERMINAL_HINTS,
            &format!("no passphrase, no terminal: {args:?}"),
        );
    }
    assert_eq!(listing(&env.repo()), before, "nothing was written");
    assert!(!dest.exists());

    // init --encrypt with no passphrase and no terminal creates nothing.
    let bare = Env::bare();
    let out = without_terminal(&no_passphrase(bare.cmd(&["init", "--encrypt"])));
    refused(
        &out,
        &NO_TERMINAL_HINTS,
        "init --encrypt without a passphrase",
    );
    assert!(
        listing(&bare.repo()).is_empty(),
        "no repository was created"
    );
    let mut bare = bare;
    bare.vars.push(("SNAPBACK_PASSWORD".into(), PASS.into()));
    // A passphrase without --encrypt: refused, nothing created (every later
    // command given it would refuse the unencrypted repository).
    refused(
        &bare.run(&["init"]),
        &["a passphrase was given", "--encrypt"],
        "init with a passphrase but without --encrypt",
    );
    assert!(listing(&bare.repo()).is_empty(), "nothing was created");
    bare.ok(&init_encrypted());
}

#[test]
fn passphrases_never_appear_in_output_even_at_debug_level() {
    let mut env = Env::bare();
    env.vars.push(("SNAPBACK_PASSWORD".into(), PASS.into()));
    let db = env.path("app.db");
    marker_db(&db, 500);
    let (dbs, dest) = (utf8(&db), env.path("restored.db"));
    let other_file = env.path("other.txt");
    std::fs::write(&other_file, OTHER).expect("write");
    let debug = |args: &[&str]| -> Command {
        let mut all = vec!["-vv", "--log-format", "json"];
        all.extend(args);
        env.cmd(&all)
    };
    let mut all = String::new();
    let mut record = |out: &Output, ok: bool, what: &str| {
        assert_eq!(out.status.success(), ok, "{what}: {}", stderr(out));
        all.push_str(&stdout(out));
        all.push_str(&stderr(out));
    };
    record(&run(debug(&init_encrypted())), true, "init");
    for args in [
        vec!["snapshot", dbs],
        vec!["--json", "snapshot", dbs],
        vec!["--json", "snapshots"],
        vec!["check", "--read-data"],
        vec!["--json", "check", "--read-data"],
        vec!["restore", "latest", utf8(&dest)],
        vec!["diff", "latest", dbs],
        vec!["--json", "key", "list"],
        vec!["status"],
    ] {
        record(&run(debug(&args)), true, &format!("{args:?}"));
    }
    record(
        &run(debug(&key_add(&other_file))),
        true,
        "key add --new-password-file",
    );
    let mut c = debug(&[&["key", "add"][..], &CHEAP_KDF].concat());
    c.env("SNAPBACK_NEW_PASSWORD", OTHER);
    record(&run(c), true, "key add with SNAPBACK_NEW_PASSWORD");
    record(
        &run(with_passphrase(debug(&["snapshots"]), OTHER)),
        true,
        "the new key",
    );
    record(
        &run(with_passphrase(debug(&["--json", "snapshots"]), WRONG)),
        false,
        "a wrong passphrase",
    );
    assert!(
        all.lines().filter(|l| l.starts_with('{')).count() > 20,
        "JSON debug logs were produced: {} bytes",
        all.len()
    );
    for secret in [PASS, OTHER, WRONG] {
        assert!(
            !all.contains(secret),
            "the passphrase {secret:?} never appears in the output"
        );
    }
}

/// `--json key add` of the passphrase in `file`, with the cheapest KDF.
fn key_add(file: &Path) -> Vec<&str> {
    let add = ["--json", "key", "add", "--new-password-file", utf8(file)];
    [&add[..], &CHEAP_KDF].concat()
}

/// The keys as `key list --json` shows them to `pass`: (id, current).
fn keys(env: &Env, pass: &str) -> Vec<(String, bool)> {
    let out = run(with_passphrase(env.cmd(&["--json", "key", "list"]), pass));
    assert!(out.status.success(), "key list: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            assert_eq!(k["kdf_memory_kib"], 8192, "{k}");
            (
                k["id"].as_str().expect("id").to_string(),
                k["current"].as_bool().expect("current"),
            )
        })
        .collect()
}

#[test]
fn keys_are_added_listed_and_removed_but_never_the_current_or_last() {
    let (env, db, other_file) = with_db_and_file(OTHER);
    let dbs = utf8(&db);
    let first = keys(&env, PASS);
    assert_eq!(first.len(), 1);
    let added: serde_json::Value =
        serde_json::from_str(&env.ok(&key_add(&other_file))).expect("json");
    let a = first[0].0.clone();
    let b = added["added"].as_str().expect("added").to_string();
    assert_eq!(
        keys(&env, PASS),
        vec![(a.clone(), true), (b.clone(), false)]
    );
    assert_eq!(
        keys(&env, OTHER),
        vec![(a.clone(), false), (b.clone(), true)]
    );
    assert!(
        leaks(&env.repo(), &[PASS, OTHER], &HashSet::new()).is_empty(),
        "no key file holds a passphrase"
    );

    // Both open the same data.
    let out = run(with_passphrase(env.cmd(&["snapshot", dbs]), OTHER));
    assert!(out.status.success(), "{}", stderr(&out));
    let snap = committed(&env).pop().expect("a snapshot");
    restore_exactly(&env, &snap, "with-a");

    let remove = |id: &str, pass: &str| run(with_passphrase(env.cmd(&["key", "remove", id]), pass));
    refused(
        &remove(&a[..8], PASS),
        &["the one this command opened the repository with"],
        "removing the key in use",
    );
    refused(
        &remove(&b[..8], OTHER),
        &["the one this command opened"],
        "removing the key in use",
    );
    refused(
        &remove("ffff", PASS),
        &["no key id starts with"],
        "no such key",
    );
    assert_eq!(objects(&env.repo(), "keys").len(), 2, "both keys are kept");
    let out = remove(&b[..8], PASS);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keys(&env, PASS), vec![(a.clone(), true)]);
    refused_with(
        &run(with_passphrase(env.cmd(&["snapshots"]), OTHER)),
        12,
        &["the passphrase opens none of the 1 key(s)"],
        "the removed passphrase",
    );
    refused(&remove(&a, PASS), &[], "removing the last key");
    assert_eq!(
        objects(&env.repo(), "keys").len(),
        1,
        "the last key is kept"
    );
    restore_exactly(&env, &snap, "after-remove");

    // A new passphrase that cannot be had is refused too.
    let out = without_terminal(&env.cmd(&["key", "add"]));
    refused(
        &out,
        &["SNAPBACK_NEW_PASSWORD", "--new-password-file"],
        "key add without a new passphrase",
    );
    assert_eq!(objects(&env.repo(), "keys").len(), 1);

    // A damaged (or planted) key file: listed as damaged, does not stop the
    // repository from opening, and can be removed.
    let bogus = "0".repeat(64);
    std::fs::write(env.repo().join("keys").join(&bogus), b"not a key file").expect("plant");
    let listed: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "key", "list"])).expect("json");
    let damaged: Vec<&serde_json::Value> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| !k["damaged"].is_null())
        .collect();
    assert_eq!(damaged.len(), 1, "{listed}");
    assert_eq!(damaged[0]["id"], bogus.as_str());
    let out = remove("00000000", PASS);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keys(&env, PASS), vec![(a.clone(), true)]);
}

/// One way of tampering with an object: returns the object, what `check`
/// must say about it, and the id of the snapshot whose data it damages
/// (None when every blob is still intact).
type Tamper = fn(&Env, &Committed, &Committed) -> (PathBuf, String, Option<String>);

/// The repository id of an encrypted repository (its config is plaintext).
fn repo_id(env: &Env) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).expect("config"))
            .expect("json");
    v["repo_id"].as_str().expect("repo_id").to_string()
}

#[test]
fn a_key_file_copied_from_another_repository_is_marked_foreign_and_named_on_open() {
    let a = Env::encrypted(PASS);
    let b = Env::encrypted(OTHER);
    let (ida, idb) = (repo_id(&a), repo_id(&b));
    let copied = std::fs::read_dir(b.repo().join("keys"))
        .expect("keys")
        .next()
        .expect("a key")
        .expect("entry");
    std::fs::copy(
        copied.path(),
        a.repo().join("keys").join(copied.file_name()),
    )
    .expect("copy");
    let kid = copied.file_name().to_string_lossy().into_owned();

    // key list (opened with this repository's own key) marks the copy.
    let out = run(with_passphrase(a.cmd(&["--json", "key", "list"]), PASS));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let foreign: Vec<&serde_json::Value> = v["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| !k["foreign"].is_null())
        .collect();
    assert_eq!(foreign.len(), 1, "{v}");
    assert_eq!(foreign[0]["id"], kid.as_str(), "{v}");
    assert_eq!(foreign[0]["foreign"], idb.as_str(), "{v}");
    let text = stdout(&run(with_passphrase(a.cmd(&["key", "list"]), PASS)));
    assert!(
        text.contains("foreign: belongs to another repository"),
        "{text}"
    );

    // Its passphrase gets the reason, not "wrong passphrase".
    let out = run(with_passphrase(a.cmd(&["snapshots"]), OTHER));
    assert_eq!(
        out.status.code(),
        Some(12),
        "it opens none of this repository's keys: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("this key belongs to repository {idb}, not {ida}")),
        "{}",
        stderr(&out)
    );
    // A passphrase of no key is still just wrong.
    let out = run(with_passphrase(a.cmd(&["snapshots"]), WRONG));
    assert!(
        !out.status.success() && !stderr(&out).contains("belongs to repository"),
        "{}",
        stderr(&out)
    );
    // The copy goes away like any key; the repository's own still opens it.
    let out = run(with_passphrase(a.cmd(&["key", "remove", &kid[..8]]), PASS));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keys(&a, PASS).len(), 1);
}

#[test]
fn tampered_objects_fail_authentication_and_are_never_served() {
    let cases: [(&str, Tamper); 4] = [
        ("pack blob", |env, first, _| {
            let pack = largest(objects(&env.repo(), "data"));
            let (len, hlen) = (
                std::fs::metadata(&pack).expect("stat").len() as usize,
                pack_header_len(&pack),
            );
            flip_at(&pack, 12 + hlen + (len - 12 - hlen) / 2);
            let n = name(&pack);
            (pack, n, Some(first.id.clone()))
        }),
        // The blobs are sealed one by one and the index knows where they
        // are: a damaged header is reported, and the data still restores
        // exactly (every blob is authenticated on its own).
        ("pack header", |env, _, _| {
            let pack = largest(objects(&env.repo(), "data"));
            flip_at(&pack, 12 + pack_header_len(&pack) / 2);
            let n = name(&pack);
            (pack, n, None)
        }),
        ("index", |env, first, _| {
            let index = largest(objects(&env.repo(), "index"));
            flip_at(
                &index,
                std::fs::metadata(&index).expect("stat").len() as usize / 2,
            );
            let n = format!("index/{}", name(&index));
            (index, n, Some(first.id.clone()))
        }),
        ("manifest", |env, _, second| {
            let m = env.repo().join("snapshots").join(&second.id);
            flip_at(&m, std::fs::metadata(&m).expect("stat").len() as usize / 2);
            (
                m,
                format!("snapshots/{}", second.id),
                Some(second.id.clone()),
            )
        }),
    ];
    for (what, tamper) in cases {
        let (env, db, first, second) = two_snapshots_in(Env::encrypted(PASS));
        let (object, needle, broken) = tamper(&env, &first, &second);
        assert!(object.exists());
        let out = env.run(&["check", "--read-data"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{what}: check --read-data finds it: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(
            text.contains(&needle),
            "{what}: check names {needle}: {text}"
        );
        let Some(broken) = broken else {
            for s in [&first, &second] {
                restore_exactly(&env, s, "header");
            }
            continue;
        };
        assert!(
            text.contains(&format!("affects snapshot {}", &broken[..8])),
            "{what}: check names the snapshot: {text}"
        );
        restore_refused(&env, &broken, what);
        diff_refused(&env, &broken, &db, what);
        if what == "manifest" {
            // Retention cannot count a snapshot it cannot read: forget
            // refuses rather than keep the wrong ones.
            let before = listing(&env.repo());
            refused(
                &env.run(&["forget", "--keep-last", "1"]),
                &["forget refuses"],
                "forget with an unreadable manifest",
            );
            assert_eq!(listing(&env.repo()), before, "forget removed nothing");
        }
        if broken == second.id {
            restore_exactly(&env, &first, "intact");
        }
    }
}

#[test]
fn config_stripped_of_its_encryption_is_refused_and_nothing_is_written() {
    let (env, db, _) = with_db_and_file(PASS);
    let snap = env.snapshot(&db);
    let config = env.repo().join("config");
    let original = std::fs::read(&config).expect("read config");
    let mut v: serde_json::Value = serde_json::from_slice(&original).expect("json");
    assert!(v
        .as_object_mut()
        .expect("object")
        .remove("encryption")
        .is_some());
    std::fs::write(&config, serde_json::to_vec_pretty(&v).expect("json")).expect("write");

    let (dbs, dest) = (utf8(&db), env.path("out.db"));
    let before = listing(&env.repo());
    for args in [
        vec!["snapshot", dbs],
        vec!["snapshots"],
        vec!["restore", &snap, utf8(&dest)],
        vec!["check", "--read-data"],
        vec!["diff", &snap, dbs],
        vec!["key", "list"],
        vec!["forget", "--keep-last", "1", "--prune"],
        vec!["prune"],
        vec!["repair-index"],
        vec!["status"],
        vec!["audit", "verify"],
    ] {
        let what = format!("downgraded config: {args:?}");
        refused(&env.run(&args), &["keys/", "config"], &what);
        refused(
            &without_terminal(&no_passphrase(env.cmd(&args))),
            &["keys/", "config"],
            &format!("{what} without a passphrase"),
        );
    }
    assert_eq!(listing(&env.repo()), before, "nothing was written");
    assert!(!dest.exists());

    // The keys deleted as well: the repository now looks unencrypted, but a
    // job that gives a passphrase expects an encrypted one and refuses to
    // write plaintext into it.
    let keys_dir = env.repo().join("keys");
    let keys_backup = env.path("keys-backup");
    std::fs::rename(&keys_dir, &keys_backup).expect("move keys away");
    let before = listing(&env.repo());
    for args in [vec!["snapshot", dbs], vec!["snapshots"]] {
        refused(
            &env.run(&args),
            &["a passphrase was given", "is not encrypted"],
            &format!("config downgraded and keys deleted: {args:?}"),
        );
    }
    assert_eq!(listing(&env.repo()), before, "no plaintext was written");
    std::fs::rename(&keys_backup, &keys_dir).expect("keys back");

    // The original config makes it whole again.
    std::fs::write(&config, original).expect("write");
    check_clean(&env, "with the original config");
    restore_exactly(&env, &committed(&env)[0], "restored-config");
}

#[test]
fn mount_serves_the_decrypted_snapshot_in_the_foreground_and_as_a_daemon() {
    require_fuse();
    let env = Env::encrypted(PASS);
    let db = env.path("app.db");
    marker_db(&db, 1500);
    env.snapshot(&db);
    let expected = rows(&db);
    // The live database moves on: the mount must show the snapshot.
    damage_rows(&db, 9, 50);
    let inside = |mp: &Path| mp.join(utf8(&db).trim_start_matches('/'));

    let mp = env.path("mnt");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let m = Mount::start(env.cmd(&["mount", "latest", utf8(&mp)]), mp.clone());
    let file = inside(&mp);
    assert_eq!(rows(&file), expected, "rusqlite reads the snapshot's rows");
    assert_eq!(integrity(&file), "ok");
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(&file)
        .arg("SELECT count(*) FROM t WHERE v LIKE 'PLAINTEXT-MARKER-%';")
        .output()
        .expect("run sqlite3");
    assert!(out.status.success(), "sqlite3: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), expected.len().to_string());
    drop(m);
    assert!(!is_mounted(&mp));

    let mp = env.path("mnt-daemon");
    std::fs::create_dir_all(&mp).expect("mkdir");
    let _guard = Mount::guard(mp.clone());
    let started = Instant::now();
    let out = run(env.cmd(&["mount", "--daemon", "latest", utf8(&mp)]));
    assert!(out.status.success(), "mount --daemon: {}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(is_mounted(&mp), "mounted when --daemon returns");
    assert_eq!(rows(&inside(&mp)), expected, "the daemon serves the rows");
    env.ok(&["umount", utf8(&mp)]);
    assert!(!is_mounted(&mp));

    // Without a passphrase and a terminal, --daemon fails before mounting.
    let out = without_terminal(&no_passphrase(env.cmd(&[
        "mount",
        "--daemon",
        "latest",
        utf8(&mp),
    ])));
    refused(
        &out,
        &NO_TERMINAL_HINTS,
        "mount --daemon without a passphrase",
    );
    assert!(!is_mounted(&mp));
}

#[test]
fn s3_encrypted_round_trip() {
    let r = S3Repo::encrypted(PASS);
    let db = r.path("app.db");
    marker_db(&db, 1500);
    let id = r.ok(&["snapshot", utf8(&db)]).trim().to_string();
    let out = r.run(&["check", "--read-data"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let listed: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "snapshots"])).expect("json");
    assert_eq!(listed[0]["id"], id.as_str());
    let dest = r.path("restored.db");
    r.ok(&["restore", &id, utf8(&dest)]);
    assert_eq!(integrity(&dest), "ok");
    assert_eq!(rows(&dest), rows(&db));
    let keys: serde_json::Value =
        serde_json::from_str(&r.ok(&["--json", "key", "list"])).expect("json");
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");
}

#[test]
fn diff_and_repair_on_an_encrypted_repository() {
    let (env, db, _) = with_db_and_file(PASS);
    let snap = env.snapshot(&db);
    let before = rows(&db);
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute_batch("UPDATE t SET v = 'changed' WHERE id = 5; DELETE FROM t WHERE id = 7;")
        .expect("change");
    drop(c);
    let out = env.run(&["--json", "diff", &snap, utf8(&db)]);
    assert_eq!(out.status.code(), Some(3), "differences: {}", stderr(&out));
    let found: BTreeSet<(String, i64)> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|l| l["type"] == "row")
        .map(|l| {
            (
                l["kind"].as_str().expect("kind").to_string(),
                l["key"]["id"].as_i64().expect("id"),
            )
        })
        .collect();
    assert_eq!(
        found,
        BTreeSet::from([("changed".into(), 5), ("only_in_snapshot".into(), 7)])
    );
    let script = repair_script(&env, &snap, &db, "fix.toml");
    env.ok(&["repair", utf8(&script), "--apply", "--yes"]);
    assert_eq!(rows(&db), before, "the repair put the rows back");
    let out = env.run(&["diff", &snap, utf8(&db)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no differences: {}",
        stdout(&out)
    );
    assert!(env
        .ok(&["audit", "verify"])
        .contains("1 entries, chain intact"));
}

#[test]
fn an_empty_snapback_password_file_is_a_clear_usage_error() {
    let out = Command::new(snapback_testkit::bin())
        .env("SNAPBACK_PASSWORD_FILE", "")
        .args(["--repo", "/nonexistent-repo", "snapshots"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SNAPBACK_PASSWORD_FILE is set but empty"),
        "{err}"
    );
    assert!(!err.contains("--password-file <"), "{err}");
}
