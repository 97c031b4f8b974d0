//! Corruption is found and never served: a bit flipped in, a truncation of,
//! or the deletion of a pack, an index object, a manifest or an audit
//! entry. `check` names the damaged object and every snapshot and file it
//! affects; `restore` and `diff` fail rather than return damaged data;
//! `audit verify` names the first broken link; `repair-index` rebuilds lost
//! or damaged index objects from the packs.

use std::path::PathBuf;

use crate::rel_util::{
    check_clean, damage_rows, diff_refused, largest, make_db, name, objects, repair_script,
    restore_exactly, restore_refused, rows, two_snapshots_in, Committed, Damage,
};
use snapback_testkit::{integrity, stderr, stdout, Env};

/// A repository with two snapshots of one database: the first full, the
/// second after 100 rows changed.
fn two_snapshots() -> (Env, PathBuf, Committed, Committed) {
    two_snapshots_in(Env::new())
}

#[test]
fn damaged_pack_is_named_by_check_and_never_served() {
    for damage in Damage::ALL {
        let (env, db, first, _) = two_snapshots();
        let pack = largest(objects(&env.repo(), "data"));
        damage.apply(&pack);
        let what = format!("pack {damage:?}");
        // A flipped bit needs --read-data; a truncated or deleted pack is
        // found by the structural check alone.
        let args: &[&str] = if damage == Damage::FlipBit {
            &["check", "--read-data"]
        } else {
            &["check"]
        };
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        let text = stdout(&out);
        for needle in [
            name(&pack),
            first.id[..8].to_string(),
            db.display().to_string(),
        ] {
            assert!(
                text.contains(&needle),
                "{what}: check names {needle}: {text}"
            );
        }
        let err = restore_refused(&env, &first.id, &what);
        assert!(
            [
                "corrupt",
                "missing",
                "hash",
                "No such file",
                "not found",
                "past the end"
            ]
            .iter()
            .any(|w| err.contains(w)),
            "{what}: the error says why: {err}"
        );
        diff_refused(&env, &first.id, &db, &what);
    }
}

#[test]
fn damaged_index_is_named_and_repair_index_rebuilds_it() {
    for damage in Damage::ALL {
        let (env, db, first, second) = two_snapshots();
        let index = largest(objects(&env.repo(), "index"));
        damage.apply(&index);
        let what = format!("index {damage:?}");
        let out = env.run(&["check"]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        let text = stdout(&out);
        let mut needles = vec![first.id[..8].to_string(), db.display().to_string()];
        if damage != Damage::Delete {
            needles.push(format!("index/{}", name(&index)));
        }
        for needle in needles {
            assert!(
                text.contains(&needle),
                "{what}: check names {needle}: {text}"
            );
        }
        restore_refused(&env, &first.id, &what);
        diff_refused(&env, &first.id, &db, &what);

        let out = env.run(&["repair-index", "--dry-run"]);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        assert_eq!(
            env.run(&["check"]).status.code(),
            Some(3),
            "{what}: a dry run changes nothing"
        );
        let out = env.run(&["repair-index"]);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        check_clean(&env, &what);
        for s in [&first, &second] {
            for p in restore_exactly(&env, s, &format!("{damage:?}")) {
                assert_eq!(integrity(&p), "ok");
            }
        }
    }
}

#[test]
fn all_index_objects_deleted_then_repair_index_restores_everything() {
    let (env, db, first, second) = two_snapshots();
    let before = rows(&db);
    let indexes = objects(&env.repo(), "index");
    assert_eq!(indexes.len(), 2, "one index object per snapshot");
    for p in &indexes {
        std::fs::remove_file(p).expect("rm");
    }
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("not in any index"),
        "{}",
        stdout(&out)
    );
    restore_refused(&env, "latest", "no index");

    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "repair-index"])).expect("json");
    assert_eq!(
        v["plan"]["unreadable_packs"].as_array().map(Vec::len),
        Some(0),
        "{v}"
    );
    assert_eq!(v["report"]["index_objects_written"], 1, "{v}");
    // Only each pack's 12-byte prefix and its header (4 bytes and 41 per
    // blob) were read, never a pack whole.
    let (packs, blobs) = (
        v["plan"]["packs"].as_u64().expect("n"),
        v["plan"]["blobs"].as_u64().expect("n"),
    );
    assert_eq!(packs, objects(&env.repo(), "data").len() as u64);
    assert_eq!(v["plan"]["bytes_read"], 16 * packs + 41 * blobs, "{v}");
    check_clean(&env, "after repair-index");
    restore_exactly(&env, &first, "a");
    let p = restore_exactly(&env, &second, "b");
    assert_eq!(rows(&p[0]), before, "the newest snapshot has the live rows");
    // A second run finds nothing to do.
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "repair-index"])).expect("json");
    assert_eq!(v["report"]["index_objects_written"], 0, "{v}");
    assert_eq!(v["report"]["index_objects_deleted"], 0, "{v}");
}

#[test]
fn damaged_manifest_is_named_and_its_snapshot_never_restored() {
    for damage in Damage::ALL {
        let (env, db, _, second) = two_snapshots();
        let manifest = env.repo().join("snapshots").join(&second.id);
        damage.apply(&manifest);
        let what = format!("manifest {damage:?}");
        let out = env.run(&["check"]);
        if damage == Damage::Delete {
            // A manifest is the commit record: without it the snapshot
            // does not exist (as after `forget`), and nothing else is
            // damaged. Asking for it is a clear "no such snapshot".
            assert!(out.status.success(), "{what}: {}", stdout(&out));
            let err = restore_refused(&env, &second.id, &what);
            assert!(err.contains("no snapshot id starts with"), "{what}: {err}");
            continue;
        }
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!("snapshots/{}", second.id))
                && text.contains("unreadable manifest")
                && text.contains(&format!("affects snapshot {}", &second.id[..8])),
            "{what}: check names the snapshot: {text}"
        );
        let err = restore_refused(&env, &second.id, &what);
        assert!(
            err.contains(&second.id),
            "{what}: the error names it: {err}"
        );
        diff_refused(&env, &second.id, &db, &what);
    }
}

/// A repository whose audit log has two repairs.
fn audited() -> (Env, PathBuf, Vec<PathBuf>) {
    let env = Env::new();
    let db = env.path("live.db");
    make_db(&db, 500);
    let s0 = env.snapshot(&db);
    let script = repair_script(&env, &s0, &db, "fix.toml");
    for seed in [11, 12] {
        damage_rows(&db, seed, 40);
        env.ok(&["repair", script.to_str().expect("utf8"), "--apply", "--yes"]);
    }
    let entries: Vec<PathBuf> = objects(&env.repo(), "audit")
        .into_iter()
        .filter(|p| name(p).contains('-'))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    (env, db, entries)
}

/// One way of damaging the audit log, given its entries.
type DamageFn = Box<dyn Fn(&Env, &[PathBuf])>;

#[test]
fn damaged_audit_log_is_named_by_audit_verify() {
    let mut cases: Vec<(String, DamageFn)> = vec![];
    for damage in Damage::ALL {
        cases.push((
            format!("entry 1 {damage:?}"),
            Box::new(move |_, e| damage.apply(&e[0])),
        ));
    }
    cases.push((
        "claim 1 deleted".into(),
        Box::new(|env, _| {
            std::fs::remove_file(env.repo().join("audit/0000000001")).expect("rm claim")
        }),
    ));
    for (what, damage) in cases {
        let (env, db, entries) = audited();
        let ok = env.ok(&["audit", "verify"]);
        assert!(ok.contains("2 entries, chain intact"), "{ok}");
        let repair_id = env.ok(&["--json", "audit"]);
        let v: serde_json::Value = serde_json::from_str(&repair_id).expect("json");
        let first_id = v[0]["entry"]["repair_id"].as_str().expect("id").to_string();
        let before = rows(&db);
        damage(&env, &entries);

        let out = env.run(&["audit", "verify"]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("BROKEN after 0 good entries") && text.contains("entry 1"),
            "{what}: the first broken link is named: {text}"
        );
        let out = env.run(&["--json", "audit", "verify"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["ok"], false, "{what}");
        assert!(
            v["broken"].as_str().expect("broken").contains("entry 1"),
            "{what}: {v}"
        );
        // Undo relies on the log: it refuses, and the live database is untouched.
        let out = env.run(&["undo", &first_id, "--yes"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert_eq!(rows(&db), before, "{what}: undo wrote nothing");
    }
}

/// `diff` scans the snapshot's side (through the VFS) and the live side
/// each on a thread of its own. A page of the snapshot that cannot be
/// verified half-way through the table, after many batches of rows (some
/// of them different) went through the merge, fails the whole diff: exit
/// 1, and nothing printed, not the rows merged before the failure.
#[test]
fn threaded_diff_whose_snapshot_side_fails_half_way_prints_nothing_and_exits_1() {
    let env = Env::new();
    let db = env.path("big.db");
    let c = rusqlite::Connection::open(&db).expect("open");
    // About 600 pages of one table, each page unlike any other.
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO t SELECT i, randomblob(100) FROM n;",
    )
    .expect("fill");
    let id = env.snapshot(&db);
    // Rows that differ from the start of the table on.
    c.execute_batch("UPDATE t SET v = x'00' WHERE id % 100 = 1")
        .expect("change");
    drop(c);
    let dbs = db.to_str().expect("utf8");
    let before = env.run(&["diff", &id, dbs, "--sql"]);
    assert_eq!(before.status.code(), Some(3), "{}", stderr(&before));
    assert_eq!(stdout(&before).lines().count(), 200, "{}", stdout(&before));

    // One byte flipped at 60% of the pack: a leaf page of t in the middle
    // of the scan (pages are packed in file order).
    let pack = largest(objects(&env.repo(), "data"));
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let at = bytes.len() * 6 / 10;
    bytes[at] ^= 0x40;
    std::fs::write(&pack, &bytes).expect("write pack");

    // The full scan (`SNAPBACK_DIFF_FULL_SCAN=1`) is the threaded scan of
    // every page; by page hash the damaged page, unchanged, is not read.
    for args in [
        &["diff", &id, dbs, "--sql"][..],
        &["--json", "diff", &id, dbs],
    ] {
        let out = env
            .cmd(args)
            .env("SNAPBACK_DIFF_FULL_SCAN", "1")
            .output()
            .expect("run snapback");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: the diff fails: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).is_empty(),
            "{args:?}: nothing printed: {}",
            stdout(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains("I/O error"),
            "{args:?}: the error says why: {err}"
        );
        // The failed read is past the first hundred pages: the scans had
        // merged rows (and differences) before it.
        let offset: u64 = err
            .split("offset=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{args:?}: the warning names the offset: {err}"));
        assert!(offset >= 100 * 4096, "{args:?}: failed at {offset}: {err}");
    }
}
