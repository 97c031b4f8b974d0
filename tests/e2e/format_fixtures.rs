//! The compatibility fixtures: small repositories written by an earlier
//! `snapback` (fixtures/repos/v<format version>/, built once by
//! scripts/make-fixtures.py and never regenerated) must stay readable AND
//! writable by every later binary. For each committed format version:
//! the plain and the encrypted repository list the recorded snapshots,
//! pass `check --read-data`, and restore every snapshot bit for bit; the
//! damaged copy makes `check` exit 3 naming each damaged object, and still
//! restores exactly the snapshots the damage does not touch; and a new
//! snapshot, forget, prune and check on a copy of the old repository keep
//! every old and new snapshot restorable, without changing its config.
//!
//! From format version 2 on, each version also has `timeline/` (a base
//! manifest and segments written by `snapback watch`: every point restores
//! by name and by `@TIME` to its recorded SHA-256, and `diff` finds the
//! recorded changes), `dicts/` (pages compressed with a zstd dictionary)
//! and `encrypted-timeline/` (segments and dictionaries in an encrypted
//! repository: a point inside a segment restores at its time exactly), and
//! each stays writable too.
//!
//! The tests read only the committed files (a copy of each, in a temporary
//! directory): they never run the generator, and they fail if a fixture is
//! missing or cannot be read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::rel_util::sha256_file;
use snapback_testkit::{integrity, stderr, stdout, Env};

/// The format versions that have fixtures; v1 must be among them.
fn versions() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/repos");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: the compatibility fixtures: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('v'))
        })
        .collect();
    out.sort();
    assert!(
        out.iter().any(|p| p.ends_with("v1")),
        "fixtures/repos/v1 (format version 1) is committed: {out:?}"
    );
    out
}

fn expected(version: &Path) -> Value {
    let p = version.join("expected.json");
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: cannot read: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    let rd = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for e in rd {
        let e = e.expect("dir entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
    }
}

/// A fixture repository, copied into a scratch directory.
struct Fixture {
    env: Env,
    /// `expected.json` of its format version.
    all: Value,
    /// Its entry in `repositories`.
    me: Value,
    what: String,
}

impl Fixture {
    fn open(version: &Path, name: &str) -> Fixture {
        let all = expected(version);
        let me = all["repositories"][name].clone();
        let what = format!("{}/{name}", version.display());
        assert!(me.is_object(), "{what}: expected.json describes it");
        let src = version.join(name);
        assert!(
            src.join("config").is_file(),
            "{what}: the repository is committed"
        );
        let mut env = Env::bare();
        copy_dir(&src, &env.repo());
        if me["encrypted"].as_bool().expect("encrypted") {
            let pass = all["passphrase"].as_str().expect("passphrase");
            env.vars.push(("SNAPBACK_PASSWORD".into(), pass.into()));
        }
        Fixture { env, all, me, what }
    }

    fn snapshots(&self) -> Vec<Value> {
        self.me["snapshots"].as_array().expect("snapshots").clone()
    }

    fn by_story(&self, letter: &str) -> Value {
        self.snapshots()
            .into_iter()
            .find(|s| s["story"] == letter)
            .unwrap_or_else(|| panic!("{}: snapshot {letter} is recorded", self.what))
    }

    /// `check --read-data --json`: exit code and the report.
    fn check(&self) -> (Option<i32>, Value) {
        let out = self.env.run(&["--json", "check", "--read-data"]);
        let report = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
            panic!(
                "{}: check --json prints a report ({e}): {}{}",
                self.what,
                stdout(&out),
                stderr(&out)
            )
        });
        (out.status.code(), report)
    }

    fn check_clean(&self, when: &str) -> Value {
        let (code, report) = self.check();
        assert_eq!(
            code,
            Some(0),
            "{}: {when}: check --read-data: {report}",
            self.what
        );
        assert_eq!(
            report["problems"].as_array().map(Vec::len),
            Some(0),
            "{}: {when}: no problems: {report}",
            self.what
        );
        report
    }

    /// Restores `id` (a selector) under a fresh directory; returns the
    /// directory, or restore's stderr when it fails.
    fn restore(&self, id: &str, tag: &str) -> Result<PathBuf, String> {
        let name: String = id
            .chars()
            .take(40)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dest = self.env.path(&format!("restore-{tag}-{name}"));
        let arg = format!("{}/", dest.display());
        let out = self.env.run(&["restore", id, &arg]);
        if out.status.success() {
            Ok(dest)
        } else {
            Err(stderr(&out))
        }
    }

    /// `snapshot --tag new PATH --json` into the fixture, asserting that
    /// fewer than half of its chunks are new (it reuses the old ones).
    fn snapshot_reusing_chunks(&self, path: &Path) -> Value {
        let snap: Value = serde_json::from_str(&self.env.ok(&[
            "--json",
            "snapshot",
            "--tag",
            "new",
            path.to_str().expect("utf8"),
        ]))
        .expect("snapshot JSON");
        let chunks = snap["chunks"].as_u64().expect("chunks");
        let new_chunks = snap["new_chunks"].as_u64().expect("new_chunks");
        assert!(
            new_chunks < chunks / 2,
            "{}: the new snapshot reuses the old repository's chunks ({new_chunks} of {chunks} new)",
            self.what
        );
        snap
    }

    /// Restores `snap` (an entry of expected.json) and asserts that exactly
    /// its recorded files come back, each with its recorded SHA-256, and
    /// every database passes `PRAGMA integrity_check`.
    fn restore_exactly(&self, snap: &Value, tag: &str) {
        let id = snap["id"].as_str().expect("id");
        self.restore_exactly_as(id, snap, tag);
    }

    /// Restores `selector` and asserts that it gives exactly the recorded
    /// files of `snap` (as [`Fixture::restore_exactly`]).
    fn restore_exactly_as(&self, selector: &str, snap: &Value, tag: &str) {
        let story = &snap["story"];
        let dest = self.restore(selector, tag).unwrap_or_else(|e| {
            panic!(
                "{}: snapshot {story} restores as {selector}: {e}",
                self.what
            )
        });
        let want = files_of(snap);
        let got = files_under(&dest);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{}: snapshot {story} restores exactly its files",
            self.what
        );
        for (path, sha) in &want {
            assert_eq!(
                &got[path], sha,
                "{}: {path} of snapshot {story} is bit for bit what was captured",
                self.what
            );
            if path.ends_with(".db") {
                let p = dest.join(path.trim_start_matches('/'));
                assert_eq!(integrity(&p), "ok", "{}: {path} of {story}", self.what);
            }
        }
    }
}

/// path -> SHA-256 of a snapshot entry of expected.json.
fn files_of(snap: &Value) -> BTreeMap<String, String> {
    snap["files"]
        .as_object()
        .expect("files")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("sha256").to_string()))
        .collect()
}

/// Every file under `dest`, by the source path it was restored to
/// (`dest/<source path>`), with its SHA-256.
fn files_under(dest: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                out.insert(format!("/{}", rel.display()), sha256_file(&p));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dest, dest, &mut out);
    out
}

/// Lists, checks and restores a fixture exactly as recorded.
fn reads_checks_and_restores(name: &str) {
    for version in versions() {
        let fx = Fixture::open(&version, name);
        let listed = fx.env.snapshots_json();
        let want = fx.snapshots();
        assert!(
            want.len() >= 5,
            "{}: the story's snapshots are recorded",
            fx.what
        );
        let ids = |v: &[Value], k: &str| -> Vec<Value> { v.iter().map(|s| s[k].clone()).collect() };
        for k in ["id", "time", "tags", "paths"] {
            assert_eq!(
                ids(&listed, k),
                ids(&want, k),
                "{}: `snapshots` lists the recorded snapshots' {k}",
                fx.what
            );
        }
        let report = fx.check_clean("as committed");
        assert_eq!(report["snapshots"], want.len(), "{}: {report}", fx.what);
        for snap in &want {
            fx.restore_exactly(snap, "old");
        }
        fx.env.ok(&["audit", "verify"]);
        let audit: Value = serde_json::from_str(&fx.env.ok(&["--json", "audit"])).expect("json");
        assert_eq!(
            audit.as_array().map(Vec::len),
            fx.me["audit_entries"].as_u64().map(|n| n as usize),
            "{}: the audit log reads back: {audit}",
            fx.what
        );
        assert!(
            want.iter().any(|s| s["story"] == "P"
                && s["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&"pre-repair".into()))),
            "{}: the repair's pre-repair snapshot is recorded",
            fx.what
        );
    }
}

#[test]
fn plain_fixture_reads_checks_and_restores_bit_for_bit() {
    reads_checks_and_restores("plain");
    // The plain fixture covers incremental chunk lists: some manifest refers
    // to a chunk-list patch (manifests of a plain repository are JSON).
    for version in versions() {
        let mut patches = 0;
        for e in std::fs::read_dir(version.join("plain/snapshots")).expect("snapshots") {
            let text = std::fs::read_to_string(e.expect("entry").path()).expect("manifest");
            let m: Value = serde_json::from_str(&text).expect("manifest JSON");
            let files = m["files"].as_array().expect("files");
            patches += files
                .iter()
                .filter(|f| !f["chunks"]["patch"].is_null())
                .count();
        }
        assert!(
            patches > 0,
            "{}: a snapshot uses a chunk-list patch",
            version.display()
        );
    }
}

#[test]
fn encrypted_fixture_reads_checks_and_restores_bit_for_bit() {
    reads_checks_and_restores("encrypted");
    for version in versions() {
        let mut fx = Fixture::open(&version, "encrypted");
        let listed = fx.env.snapshots_json();
        assert!(!listed.is_empty(), "{}: lists with the passphrase", fx.what);
        fx.env.vars = vec![("SNAPBACK_PASSWORD".into(), "not the passphrase".into())];
        let out = fx.env.run(&["--json", "snapshots"]);
        assert!(
            !out.status.success() && !stdout(&out).contains(listed[0]["id"].as_str().expect("id")),
            "{}: a wrong passphrase opens nothing: {}",
            fx.what,
            stdout(&out)
        );
    }
}

#[test]
fn damaged_fixture_check_exits_3_naming_each_damaged_object() {
    for version in versions() {
        let fx = Fixture::open(&version, "damaged");
        let (code, report) = fx.check();
        assert_eq!(
            code,
            Some(3),
            "{}: check --read-data finds the damage: {report}",
            fx.what
        );
        let problems: BTreeMap<String, BTreeSet<String>> = report["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .map(|p| {
                let affects = p["affects"].as_array().cloned().unwrap_or_default();
                (
                    p["object"].as_str().expect("object").to_string(),
                    affects
                        .iter()
                        .map(|a| a["snapshot"].as_str().expect("snapshot").to_string())
                        .collect(),
                )
            })
            .collect();
        for d in fx.me["damage"].as_array().expect("damage") {
            let object = d["object"].as_str().expect("object");
            assert!(
                problems.contains_key(object),
                "{}: check names the damaged {object} ({}): {report}",
                fx.what,
                d["how"]
            );
        }
        // The snapshots check says are damaged are exactly the recorded
        // ones (how it words each problem may improve; which snapshots the
        // damage breaks may not change).
        let recorded: BTreeSet<String> = fx.me["check"]["problems"]
            .as_array()
            .expect("recorded problems")
            .iter()
            .flat_map(|p| p["affects"].as_array().expect("affects").clone())
            .map(|a| a.as_str().expect("id").to_string())
            .collect();
        let reported: BTreeSet<String> = problems.values().flatten().cloned().collect();
        assert_eq!(
            reported, recorded,
            "{}: check names the damaged snapshots that were recorded: {report}",
            fx.what
        );
        // The structural check alone (no --read-data) finds the deleted pack.
        let out = fx.env.run(&["check"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}: check: {}",
            fx.what,
            stderr(&out)
        );
        for d in fx.me["damage"].as_array().expect("damage") {
            if d["how"] == "deleted" {
                let object = d["object"].as_str().expect("object");
                assert!(
                    stdout(&out).contains(object),
                    "{}: check names the missing {object}: {}",
                    fx.what,
                    stdout(&out)
                );
            }
        }
        // Snapshots the damage does not touch restore bit for bit; the
        // others fail, and nothing they leave behind is wrong.
        let whole = &fx.me["restores"];
        let mut refused = 0;
        for snap in fx.snapshots() {
            let id = snap["id"].as_str().expect("id");
            assert_eq!(
                whole[id].as_bool(),
                Some(!recorded.contains(&id[..8])),
                "{}: expected.json: snapshot {id} restores unless check names it",
                fx.what
            );
            if whole[id].as_bool().expect("restores") {
                fx.restore_exactly(&snap, "whole");
                continue;
            }
            refused += 1;
            let dest = fx.env.path(&format!("restore-broken-{}", &id[..12]));
            let out = fx
                .env
                .run(&["restore", id, &format!("{}/", dest.display())]);
            assert!(
                !out.status.success(),
                "{}: snapshot {} touches damaged data and is not restored",
                fx.what,
                snap["story"]
            );
            let want = files_of(&snap);
            for (path, sha) in files_under(&dest) {
                assert_eq!(
                    Some(&sha),
                    want.get(&path),
                    "{}: a failed restore leaves no wrong {path}",
                    fx.what
                );
            }
        }
        assert!(refused > 0, "{}: the damage breaks a snapshot", fx.what);
        assert_eq!(fx.all["format_version"], version_number(&version));
    }
}

fn version_number(dir: &Path) -> u64 {
    let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
    name[1..].parse().expect("v<number>")
}

/// Writes into an old repository: a new snapshot (of a database that
/// shares most pages with an old one, and a new file), forget, prune and
/// check; every old snapshot that is kept and the new one restore exactly,
/// and the repository's config is not changed (an older binary must still
/// open it).
fn stays_writable(name: &str) {
    for version in versions() {
        let fx = Fixture::open(&version, name);
        let config = std::fs::read(fx.env.repo().join("config")).expect("config");
        // A live database that starts as snapshot E's app.db.
        let e = fx.by_story("E");
        let old = fx
            .restore(e["id"].as_str().expect("id"), "seed")
            .expect("E restores");
        let root = fx.all["source_root"].as_str().expect("source_root");
        let live_dir = fx.env.path("live");
        std::fs::create_dir_all(&live_dir).expect("mkdir");
        let live = live_dir.join("app.db");
        std::fs::copy(old.join(root.trim_start_matches('/')).join("app.db"), &live)
            .expect("copy app.db");
        let c = rusqlite::Connection::open(&live).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             UPDATE items SET status = 'written by a later binary' WHERE id = 42;",
        )
        .expect("update");
        drop(c);
        std::fs::write(live_dir.join("new.txt"), "a file of the new snapshot\n").expect("write");
        let snap = fx.snapshot_reusing_chunks(&live_dir);
        // C and D go (E is the newest of their source, A is tagged daily);
        // the pre-repair snapshot is kept until it is released.
        fx.env
            .ok(&["forget", "--keep-last", "1", "--keep-tag", "daily"]);
        fx.env.ok(&["prune"]);
        let new_id = snap["id"].as_str().expect("id").to_string();
        let listed: Vec<String> = fx
            .env
            .snapshots_json()
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect();
        let story_id = |l: &str| fx.by_story(l)["id"].as_str().expect("id").to_string();
        let mut want = vec![story_id("A"), story_id("P"), story_id("E"), new_id.clone()];
        want.sort();
        let mut got = listed.clone();
        got.sort();
        assert_eq!(
            got, want,
            "{}: forget kept A, P, E and the new snapshot",
            fx.what
        );
        fx.check_clean("after a new snapshot, forget and prune");
        for l in ["A", "P", "E"] {
            fx.restore_exactly(&fx.by_story(l), "after-prune");
        }
        // The new snapshot: the database comes back with the new row, the
        // file bit for bit.
        let dest = fx
            .restore(&new_id, "new")
            .expect("the new snapshot restores");
        let restored = dest.join(live_dir.strip_prefix("/").expect("absolute"));
        assert_eq!(integrity(&restored.join("app.db")), "ok");
        let c = rusqlite::Connection::open_with_flags(
            restored.join("app.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open restored");
        let status: String = c
            .query_row("SELECT status FROM items WHERE id = 42", [], |r| r.get(0))
            .expect("row 42");
        assert_eq!(status, "written by a later binary", "{}", fx.what);
        assert_eq!(
            sha256_file(&restored.join("new.txt")),
            sha256_file(&live_dir.join("new.txt")),
            "{}",
            fx.what
        );
        fx.env.ok(&["audit", "verify"]);
        assert_eq!(
            std::fs::read(fx.env.repo().join("config")).expect("config"),
            config,
            "{}: writing does not change the repository's config",
            fx.what
        );
    }
}

#[test]
fn plain_fixture_stays_writable_snapshot_forget_prune_check_restore() {
    stays_writable("plain");
}

#[test]
fn encrypted_fixture_stays_writable_snapshot_forget_prune_check_restore() {
    stays_writable("encrypted");
}

/// The version directories of format 2 and later (each must have the
/// format-2 repositories: `timeline/`, `dicts/` and `encrypted-timeline/`);
/// v2 is among them.
fn versions_from_2() -> Vec<PathBuf> {
    let out: Vec<PathBuf> = versions()
        .into_iter()
        .filter(|v| version_number(v) >= 2)
        .collect();
    assert!(
        out.iter().any(|p| p.ends_with("v2")),
        "fixtures/repos/v2 (format version 2) is committed: {out:?}"
    );
    out
}

/// Asserts that the config of a fixture copy lists `feature` in its
/// `features`.
fn assert_feature(fx: &Fixture, feature: &str) {
    let text = std::fs::read_to_string(fx.env.repo().join("config")).expect("config");
    let config: Value = serde_json::from_str(&text).expect("config JSON");
    assert!(
        config["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == feature)),
        "{}: the config names the feature {feature}: {config}",
        fx.what
    );
}

/// The recorded base manifests and points of the timeline fixture, in time
/// order, as `snapshots --points --json` lists them: (name, entry).
fn timeline_entries(fx: &Fixture) -> Vec<(String, Value)> {
    let mut all: Vec<(String, Value)> = fx
        .snapshots()
        .into_iter()
        .map(|s| (s["id"].as_str().expect("id").to_string(), s))
        .chain(
            fx.me["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| (p["name"].as_str().expect("name").to_string(), p.clone())),
        )
        .collect();
    all.sort_by(|a, b| a.1["time"].as_str().cmp(&b.1["time"].as_str()));
    all
}

/// `diff SELECTOR OTHER_DB --path DB --json`: the summary's counts of
/// changed rows, and the exit code.
fn diff_changed(fx: &Fixture, selector: &str, other: &Path, db: &str) -> (Option<i32>, u64) {
    let out = fx.env.run(&[
        "--json",
        "diff",
        selector,
        other.to_str().expect("utf8"),
        "--path",
        db,
    ]);
    let text = stdout(&out);
    let summary: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| {
            panic!(
                "{}: diff {selector} prints a summary: {text}{}",
                fx.what,
                stderr(&out)
            )
        });
    let changed = summary["counts"]["changed"].as_u64().expect("changed");
    (out.status.code(), changed)
}

/// A fixture written by `snapback watch` (base manifests and timeline
/// segments): `snapshots --points` lists the recorded bases and points,
/// `check --read-data` passes, every base restores exactly, and every
/// point restores by name and by `@TIME` (the newest point at or before
/// its own instant: itself, also inside its segment) to its recorded
/// SHA-256, and `diff` against the first base finds the rows its steps
/// changed.
fn timeline_reads_checks_and_restores(fx: &Fixture) {
    assert_feature(fx, "timeline");
    let listed: Vec<Value> =
        serde_json::from_str::<Value>(&fx.env.ok(&["--json", "snapshots", "--points"]))
            .expect("snapshots --points JSON")
            .as_array()
            .expect("array")
            .clone();
    let want = timeline_entries(fx);
    let points = fx.me["points"].as_array().expect("points");
    assert!(points.len() >= 3, "{}: several points", fx.what);
    let segments: BTreeSet<&str> = points
        .iter()
        .map(|p| p["segment"].as_str().expect("segment"))
        .collect();
    for seg in &segments {
        assert!(
            fx.env.repo().join("timeline").join(seg).is_file(),
            "{}: segment {seg} is committed",
            fx.what
        );
        let n = points.iter().filter(|p| p["segment"] == *seg).count();
        assert!(n >= 3, "{}: segment {seg} has several points", fx.what);
    }
    assert_eq!(
        listed
            .iter()
            .map(|s| (s["id"].clone(), s["time"].clone()))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(n, s)| (Value::from(n.as_str()), s["time"].clone()))
            .collect::<Vec<_>>(),
        "{}: `snapshots --points` lists the recorded bases and points",
        fx.what
    );
    fx.check_clean("as committed");
    for s in fx.snapshots() {
        fx.restore_exactly(&s, "base");
    }
    let db = fx.me["database"].as_str().expect("database");
    let base = fx
        .restore(fx.snapshots()[0]["id"].as_str().expect("id"), "diff-base")
        .expect("the first base restores");
    let base_db = base.join(db.trim_start_matches('/'));
    for p in points {
        let name = p["name"].as_str().expect("name");
        let time = p["time"].as_str().expect("time");
        // By name, and by its own instant (the newest point taken at or
        // before it: itself, inside its segment).
        fx.restore_exactly_as(name, p, "point");
        fx.restore_exactly_as(&format!("@{time}"), p, "at");
        let steps = p["steps"].as_u64().expect("steps");
        let (code, changed) = diff_changed(fx, name, &base_db, db);
        assert_eq!(
            (code, changed),
            (Some(3), steps),
            "{}: diff of point {name} against the first base finds the {steps} rows its steps changed",
            fx.what
        );
    }
}

#[test]
fn timeline_fixture_restores_every_point_by_name_and_at_time_bit_for_bit() {
    for version in versions_from_2() {
        timeline_reads_checks_and_restores(&Fixture::open(&version, "timeline"));
    }
}

/// The encrypted fixture of segments and dictionaries: its key file opens
/// with the recorded passphrase only, its base manifests name the recorded
/// dictionary, and it reads, checks and restores as the timeline fixture
/// does; a point inside a segment (neither its first nor its last)
/// restores at its time exactly.
#[test]
fn encrypted_timeline_fixture_restores_a_point_inside_a_segment_at_its_time_bit_for_bit() {
    for version in versions_from_2() {
        let fx = Fixture::open(&version, "encrypted-timeline");
        assert_eq!(fx.me["encrypted"], true, "{}", fx.what);
        assert_feature(&fx, "zstd-dict");
        let mut wrong = Env::bare();
        copy_dir(&fx.env.repo(), &wrong.repo());
        wrong
            .vars
            .push(("SNAPBACK_PASSWORD".into(), "not the passphrase".into()));
        let out = wrong.run(&["snapshots"]);
        assert_eq!(
            out.status.code(),
            Some(12),
            "{}: a wrong passphrase is refused: {}",
            fx.what,
            stderr(&out)
        );
        let dicts: Vec<&str> = fx.me["dicts"]
            .as_array()
            .expect("dicts")
            .iter()
            .map(|d| d.as_str().expect("dict id"))
            .collect();
        for d in &dicts {
            assert!(
                fx.env.repo().join("dicts").join(d).is_file(),
                "{}: dictionary {d} is committed",
                fx.what
            );
        }
        for s in fx.env.snapshots_json() {
            let d = &s["files"][0]["sqlite"]["dict"]["id"];
            assert!(
                d.as_str().is_some_and(|d| dicts.contains(&d)),
                "{}: base manifest {} names the recorded dictionary: {d}",
                fx.what,
                s["short_id"]
            );
        }
        timeline_reads_checks_and_restores(&fx);
        let points = fx.me["points"].as_array().expect("points");
        let inside = points
            .iter()
            .find(|p| {
                let (seg, i) = (&p["segment"], p["index"].as_u64().expect("index"));
                let last = points.iter().filter(|q| q["segment"] == *seg).count() as u64 - 1;
                i > 0 && i < last
            })
            .unwrap_or_else(|| panic!("{}: a segment has an inner point", fx.what));
        let time = inside["time"].as_str().expect("time");
        fx.restore_exactly_as(&format!("@{time}"), inside, "inner-at");
    }
}

#[test]
fn dicts_fixture_reads_checks_and_restores_bit_for_bit() {
    for version in versions_from_2() {
        let fx = Fixture::open(&version, "dicts");
        assert_feature(&fx, "zstd-dict");
        let dicts: Vec<String> = fx.me["dicts"]
            .as_array()
            .expect("dicts")
            .iter()
            .map(|d| d.as_str().expect("dict id").to_string())
            .collect();
        assert!(!dicts.is_empty(), "{}: a dictionary is recorded", fx.what);
        let listed = fx.env.snapshots_json();
        let want = fx.snapshots();
        assert_eq!(
            listed.iter().map(|s| s["id"].clone()).collect::<Vec<_>>(),
            want.iter().map(|s| s["id"].clone()).collect::<Vec<_>>(),
            "{}: `snapshots` lists the recorded snapshots",
            fx.what
        );
        for s in &listed {
            let d = &s["files"][0]["sqlite"]["dict"]["id"];
            assert!(
                d.as_str().is_some_and(|d| dicts.iter().any(|x| x == d)),
                "{}: snapshot {} names the recorded dictionary: {d}",
                fx.what,
                s["short_id"]
            );
        }
        fx.check_clean("as committed");
        for s in &want {
            fx.restore_exactly(s, "old");
        }
        // A damaged dictionary is damage, never other bytes: check names
        // it, and restore refuses what needs it.
        let dict = fx.env.repo().join("dicts").join(&dicts[0]);
        let mut bytes = std::fs::read(&dict).expect("dictionary");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        std::fs::write(&dict, &bytes).expect("damage the dictionary");
        let (code, report) = fx.check();
        assert_eq!(code, Some(3), "{}: check finds it: {report}", fx.what);
        assert!(
            report["problems"]
                .as_array()
                .expect("problems")
                .iter()
                .any(|p| p["object"].as_str() == Some(&format!("dicts/{}", dicts[0]))),
            "{}: check names dicts/{}: {report}",
            fx.what,
            dicts[0]
        );
        let id = want[0]["id"].as_str().expect("id");
        assert!(
            fx.restore(id, "broken-dict").is_err(),
            "{}: a snapshot whose pages need the damaged dictionary is not restored",
            fx.what
        );
    }
}

/// Writes a new snapshot into a copy of a format-2 fixture: a database that
/// starts as `from` (restored by `selector`) with `sql` applied, taken
/// from a new path; it reuses the old chunks, prune and check pass, every
/// recorded snapshot (and point) and the new one restore exactly, and the
/// config is not changed.
fn format2_stays_writable(fx: &Fixture, selector: &str, sql: &str, check_sql: &str) {
    let config = std::fs::read(fx.env.repo().join("config")).expect("config");
    let db = fx.me["database"].as_str().expect("database");
    let old = fx.restore(selector, "seed").expect("the seed restores");
    let live_dir = fx.env.path("live");
    std::fs::create_dir_all(&live_dir).expect("mkdir");
    let name = Path::new(db).file_name().expect("file name");
    let live = live_dir.join(name);
    std::fs::copy(old.join(db.trim_start_matches('/')), &live).expect("copy the database");
    let c = rusqlite::Connection::open(&live).expect("open");
    c.execute_batch(sql).expect("write");
    drop(c);
    let snap = fx.snapshot_reusing_chunks(&live);
    fx.env.ok(&["prune"]);
    fx.check_clean("after a new snapshot and prune");
    for s in fx.snapshots() {
        fx.restore_exactly(&s, "after-prune");
    }
    for p in fx.me["points"].as_array().into_iter().flatten() {
        fx.restore_exactly_as(p["name"].as_str().expect("name"), p, "after-prune");
    }
    let new_id = snap["id"].as_str().expect("id");
    let dest = fx
        .restore(new_id, "new")
        .expect("the new snapshot restores");
    let restored = dest.join(live.strip_prefix("/").expect("absolute"));
    assert_eq!(integrity(&restored), "ok", "{}", fx.what);
    let c = rusqlite::Connection::open_with_flags(
        &restored,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open restored");
    let got: String = c
        .query_row(check_sql, [], |r| r.get(0))
        .expect("the new row");
    assert_eq!(got, "written by a later binary", "{}", fx.what);
    assert_eq!(
        std::fs::read(fx.env.repo().join("config")).expect("config"),
        config,
        "{}: writing does not change the repository's config",
        fx.what
    );
}

/// [`format2_stays_writable`] on the watcher fixture `name`, seeded from
/// its newest point.
fn timeline_stays_writable(name: &str) {
    for version in versions_from_2() {
        let fx = Fixture::open(&version, name);
        let points = fx.me["points"].as_array().expect("points");
        let last = points.last().expect("a point")["name"]
            .as_str()
            .expect("name")
            .to_string();
        format2_stays_writable(
            &fx,
            &last,
            "PRAGMA journal_mode=WAL; UPDATE acct SET note = 'written by a later binary' WHERE id = 42;",
            "SELECT note FROM acct WHERE id = 42",
        );
    }
}

#[test]
fn timeline_fixture_stays_writable_snapshot_prune_check_restore() {
    timeline_stays_writable("timeline");
}

#[test]
fn encrypted_timeline_fixture_stays_writable_snapshot_prune_check_restore() {
    timeline_stays_writable("encrypted-timeline");
}

#[test]
fn dicts_fixture_stays_writable_snapshot_prune_check_restore() {
    for version in versions_from_2() {
        let fx = Fixture::open(&version, "dicts");
        let b = fx.by_story("B")["id"].as_str().expect("id").to_string();
        format2_stays_writable(
            &fx,
            &b,
            "PRAGMA journal_mode=WAL; UPDATE orders SET note = 'written by a later binary' WHERE id = 42;",
            "SELECT note FROM orders WHERE id = 42",
        );
    }
}
