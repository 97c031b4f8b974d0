//! Zstd dictionaries (issue 15): a database's pages are compressed with a
//! dictionary trained on a sample of them, stored as `dicts/<id>`; every
//! reader (restore, the mount, check, prune) finds it through the blob's
//! pack and index entry. A damaged or missing dictionary is found by check
//! and never turns into wrong bytes.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use snapback_testkit::mount::{require_fuse, Mount};
use snapback_testkit::{integrity, stderr, stdout, Env};

use crate::rel_util::{
    check_clean, committed, name, objects, restore_exactly, restore_refused, Committed,
};

const PASS: &str = "dictionary test passphrase";

/// A WAL-mode database of JSON documents (`rows` of them, about 1 KiB
/// each): text that a dictionary compresses far better than 4 KiB pages on
/// their own.
fn json_db(path: &Path, rows: i64) {
    let c = Connection::open(path).expect("open");
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS docs(id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .expect("schema");
    add_json(&c, 0, rows);
}

fn add_json(c: &Connection, from: i64, rows: i64) {
    let words = [
        "invoice",
        "shipped",
        "warehouse",
        "customer",
        "priority",
        "standard",
        "express",
        "returned",
        "pending",
        "delivered",
    ];
    c.execute_batch("BEGIN").expect("begin");
    for i in from..from + rows {
        let w = |k: i64| words[((i * 7 + k * 13) % 10) as usize];
        let body = format!(
            r#"{{"id": {i}, "status": "{}", "customer": {{"name": "{} {}", "address": {{"street": "{} {} street", "city": "{}", "country": "DE"}}}}, "items": [{{"sku": "SKU-{:05}", "quantity": {}, "description": "Standard product description: durable, tested, shipped from the central warehouse."}}, {{"sku": "SKU-{:05}", "quantity": {}, "description": "Standard product description: durable, tested, shipped from the central warehouse."}}], "notes": "{} {} {} {} {} {}"}}"#,
            w(1),
            w(2),
            w(3),
            i % 300,
            w(4),
            w(5),
            i % 500,
            i % 9,
            (i * 3) % 500,
            i % 7,
            w(6),
            w(7),
            w(8),
            w(9),
            w(10),
            w(11)
        );
        c.execute(
            "INSERT INTO docs(id, body) VALUES (?1, ?2)",
            rusqlite::params![i, body],
        )
        .expect("insert");
    }
    c.execute_batch("COMMIT").expect("commit");
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

fn dicts(env: &Env) -> Vec<PathBuf> {
    objects(&env.repo(), "dicts")
}

fn config_features(env: &Env) -> Vec<String> {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).expect("config"))
            .expect("json");
    c["features"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The `sqlite.dict` of the database's entry in a (plain) manifest.
fn dict_use(env: &Env, snap: &Committed) -> serde_json::Value {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.repo().join("snapshots").join(&snap.id)).expect("manifest"),
    )
    .expect("json");
    m["files"][0]["sqlite"]["dict"].clone()
}

fn packs_of_version(env: &Env, v: u8) -> usize {
    objects(&env.repo(), "data")
        .iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| b.len() >= 8 && &b[..7] == b"SNBPACK" && b[7] == v)
        })
        .count()
}

fn rows_of(path: &Path) -> Vec<(i64, String)> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    let mut st = c
        .prepare("SELECT id, body FROM docs ORDER BY id")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Snapshot, restore, mount, check and prune of a repository whose pages
/// are compressed with a dictionary, plain and encrypted.
#[test]
fn dictionary_compressed_pages_restore_mount_check_and_survive_prune() {
    require_fuse();
    for encrypted in [false, true] {
        let what = if encrypted { "encrypted" } else { "plain" };
        let env = if encrypted {
            Env::encrypted(PASS)
        } else {
            Env::new()
        };
        let db = env.path("app.db");
        json_db(&db, 10_000);
        env.snapshot(&db);
        let first_rows = rows_of(&db);
        assert_eq!(dicts(&env).len(), 1, "{what}: one dictionary trained");
        assert_eq!(
            config_features(&env),
            vec!["zstd-dict".to_string()],
            "{what}: the config lists the feature"
        );
        assert!(
            packs_of_version(&env, 2) >= 1,
            "{what}: the pages are in a version-2 pack"
        );

        // A second capture (a WAL delta) goes on with the same dictionary.
        let c = Connection::open(&db).expect("open");
        add_json(&c, 10_000, 300);
        drop(c);
        env.snapshot(&db);
        assert_eq!(dicts(&env).len(), 1, "{what}: the dictionary is reused");
        let snaps = committed(&env);
        assert_eq!(snaps.len(), 2);
        if !encrypted {
            let u = dict_use(&env, &snaps[1]);
            assert_eq!(
                u["id"].as_str(),
                dicts(&env).first().map(|p| name(p)).as_deref(),
                "the manifest names the dictionary: {u}"
            );
            assert!(
                u["baseline_per_mille"]
                    .as_u64()
                    .is_some_and(|b| b > 0 && b < 400),
                "{u}"
            );
        }
        for s in &snaps {
            restore_exactly(&env, s, what);
        }
        check_clean(&env, what);

        // The mount reads through the dictionary too.
        let mp = env.path("mnt");
        std::fs::create_dir_all(&mp).expect("mkdir");
        let id = snaps[0].id.clone();
        {
            let m = Mount::start(env.cmd(&["mount", &id, utf8(&mp)]), mp.clone());
            let inside = m.path(utf8(&db));
            assert_eq!(
                rows_of(&inside),
                first_rows,
                "{what}: the mount serves the rows"
            );
            assert_eq!(integrity(&inside), "ok");
        }

        // Prune keeps the dictionary while blobs need it ...
        env.ok(&["forget", "--keep-last", "1"]);
        assert_eq!(
            committed(&env).len(),
            1,
            "{what}: the first snapshot is forgotten"
        );
        env.ok(&["prune", "--min-pack-age", "0s"]);
        assert_eq!(dicts(&env).len(), 1, "{what}: a needed dictionary is kept");
        restore_exactly(&env, &snaps[1], &format!("{what}-after-prune"));
        check_clean(&env, &format!("{what} after prune"));
        // ... and deletes it once nothing does.
        // (No policy removes a source's last snapshot: its manifest goes.)
        std::fs::remove_file(env.repo().join("snapshots").join(&snaps[1].id)).expect("rm");
        env.ok(&["prune", "--min-pack-age", "0s"]);
        assert!(
            dicts(&env).is_empty(),
            "{what}: an unneeded dictionary goes"
        );
        check_clean(&env, &format!("{what}, empty"));
    }
}

/// A dictionary with a flipped byte, or none at all: check names it, the
/// snapshot and the database it affects; restore fails and writes nothing.
#[test]
fn a_damaged_or_missing_dictionary_is_named_by_check_and_restore_refuses() {
    for encrypted in [false, true] {
        for delete in [false, true] {
            let what = format!(
                "{} dictionary, {}",
                if delete { "deleted" } else { "damaged" },
                if encrypted { "encrypted" } else { "plain" }
            );
            let env = if encrypted {
                Env::encrypted(PASS)
            } else {
                Env::new()
            };
            let db = env.path("app.db");
            json_db(&db, 8000);
            env.snapshot(&db);
            let snap = committed(&env).remove(0);
            let d = dicts(&env).remove(0);
            if delete {
                std::fs::remove_file(&d).expect("rm");
            } else {
                let mut b = std::fs::read(&d).expect("read");
                let i = b.len() / 2;
                b[i] ^= 0x04;
                std::fs::write(&d, b).expect("write");
            }
            for args in [&["check"][..], &["check", "--read-data"][..]] {
                let out = env.run(args);
                assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
                let text = stdout(&out);
                for needle in [name(&d), snap.id[..8].to_string(), utf8(&db).to_string()] {
                    assert!(
                        text.contains(&needle),
                        "{what}: check names {needle}: {text}"
                    );
                }
            }
            let err = restore_refused(&env, &snap.id, &what.replace([' ', ','], "-"));
            assert!(err.contains("dictionary"), "{what}: says why: {err}");
        }
    }
}

/// A format-1 repository gets no dictionary: its older readers must still
/// open it.
#[test]
fn a_format_1_repository_stays_without_dictionaries() {
    let env = Env::bare();
    env.ok(&["init", "--format-version", "1"]);
    let db = env.path("app.db");
    json_db(&db, 8000);
    env.snapshot(&db);
    assert!(dicts(&env).is_empty());
    assert!(config_features(&env).is_empty());
    assert_eq!(packs_of_version(&env, 2), 0);
    restore_exactly(&env, &committed(&env)[0], "v1");
}

/// New pages that compress much worse with the dictionary than the pages it
/// was trained on (a new table of other content) make the next capture
/// train a new one; the old blobs keep theirs, and every snapshot restores.
#[test]
fn a_dictionary_whose_ratio_falls_off_is_retrained_and_old_blobs_keep_theirs() {
    let env = Env::new();
    let db = env.path("app.db");
    json_db(&db, 10_000);
    env.snapshot(&db);
    let c = Connection::open(&db).expect("open");
    // Hex text of random bytes: about half its size compressed, against a
    // fifth or less for the documents.
    c.execute_batch(
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
         INSERT INTO blobs(v) SELECT hex(randomblob(700)) FROM n;",
    )
    .expect("other content");
    drop(c);
    env.snapshot(&db);
    let snaps = committed(&env);
    let u = dict_use(&env, &snaps[1]);
    assert!(
        u["new_per_mille"].as_u64() > u["baseline_per_mille"].as_u64().map(|b| b * 5 / 4),
        "the ratio fell off: {u}"
    );
    assert_eq!(
        dicts(&env).len(),
        1,
        "not retrained within the capture that saw it"
    );
    let c = Connection::open(&db).expect("open");
    add_json(&c, 10_000, 50);
    drop(c);
    env.snapshot(&db);
    let snaps = committed(&env);
    assert_eq!(dicts(&env).len(), 2, "a new dictionary");
    let (a, b) = (dict_use(&env, &snaps[1]), dict_use(&env, &snaps[2]));
    assert_ne!(a["id"], b["id"], "the third capture uses the new one");
    for s in &snaps {
        restore_exactly(&env, s, "retrained");
    }
    check_clean(&env, "after retraining");
}

/// A compressor that silently compresses other bytes than it was given
/// (the `SNAPBACK_TEST_COMPRESSOR_FAULT` hook: a valid zstd frame of each
/// page with one bit flipped) is caught before anything is committed, with
/// a dictionary and without one (a format-1 repository); the same snapshot
/// without the fault then commits and restores bit for bit.
#[test]
fn a_compressor_fault_is_never_committed() {
    for format in ["2", "1"] {
        let env = Env::bare();
        env.ok(&["init", "--format-version", format]);
        let db = env.path("app.db");
        json_db(&db, 8000);
        let out = env
            .cmd(&["snapshot", utf8(&db)])
            .env("SNAPBACK_TEST_COMPRESSOR_FAULT", "1")
            .output()
            .expect("run");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "format {format}: {err}");
        assert!(
            err.contains("changed in compression (compressor fault)"),
            "format {format}: {err}"
        );
        assert!(err.contains("nothing was stored"), "format {format}: {err}");
        assert!(
            env.snapshots_json().is_empty(),
            "format {format}: nothing committed"
        );
        assert!(
            objects(&env.repo(), "snapshots").is_empty(),
            "format {format}"
        );
        assert!(
            objects(&env.repo(), "index").is_empty(),
            "format {format}: no index"
        );
        assert_eq!(
            objects(&env.repo(), "data").len(),
            0,
            "format {format}: no pack of a refused blob is written"
        );
        env.snapshot(&db);
        let snap = &committed(&env)[0];
        restore_exactly(&env, snap, &format!("after-fault-v{format}"));
        check_clean(&env, &format!("format {format}, after the fault"));
        assert_eq!(
            !dicts(&env).is_empty(),
            format == "2",
            "format {format}: pages compressed with a dictionary in format 2 only"
        );
    }
}

/// The dictionary is trained while the full scan reads and hashes the
/// first batches (8 MiB each, at most four held ahead of it): a database
/// of more batches than that still has every page compressed with the
/// dictionary its manifest names, stored before the packs that need it,
/// and restores bit for bit.
#[test]
fn pages_read_ahead_of_the_dictionary_training_are_all_compressed_with_it() {
    let env = Env::new();
    let db = env.path("app.db");
    json_db(&db, 110_000);
    env.snapshot(&db);
    let snap = &committed(&env)[0];
    let u = dict_use(&env, snap);
    let pages: i64 = Connection::open(&db)
        .expect("open")
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("page_count");
    let pages = pages as u64;
    assert!(
        pages > 7 * 2048,
        "more batches than are read ahead: {pages} pages"
    );
    assert_eq!(
        u["new_pages"].as_u64(),
        Some(pages),
        "every page of the database was compressed with the dictionary: {u}"
    );
    assert_eq!(
        u["id"].as_str(),
        dicts(&env).first().map(|p| name(p)).as_deref(),
        "the one stored dictionary is the manifest's: {u}"
    );
    restore_exactly(&env, snap, "read-ahead");
    check_clean(&env, "read ahead of training");
}
