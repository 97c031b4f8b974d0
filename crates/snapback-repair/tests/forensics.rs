//! Incident forensics through the real binary (docs/forensics.md):
//! `diff --emit-script`, the three-way repair of an `[incident]` script,
//! `history` and `when`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::lab::{dump, ok, Exact, Lab};

/// Rows of `table` keyed by their first column (the rowid).
fn by_id(db: &Path, table: &str) -> std::collections::BTreeMap<Exact, Vec<Exact>> {
    dump(db, table)
        .into_iter()
        .map(|r| (r[0].clone(), r))
        .collect()
}

#[test]
fn diff_emit_script_repairs_exactly_the_diffed_selection_and_nothing_else() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, status TEXT, note TEXT, region TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200)
             INSERT INTO t SELECT i, 'ok', 'n' || i, CASE WHEN i % 2 THEN 'eu' ELSE 'us' END FROM n;
             CREATE TABLE other(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO other VALUES(1, 'a'), (2, 'b');",
        )
        .expect("setup")
    });
    let snap = lab.snapshot();
    let good = by_id(&lab.live, "t");
    // The incident: status and note of some rows in both regions, a row
    // deleted, a row of another table. Then new rows arrive.
    lab.exec(
        "UPDATE t SET status = 'broken', note = 'x' WHERE id % 5 = 0;
         DELETE FROM t WHERE id IN (3, 4);
         UPDATE other SET v = 'z' WHERE id = 1;
         INSERT INTO t VALUES(1000, 'new', 'n', 'eu');",
    );
    let before = by_id(&lab.live, "t");
    let other_before = dump(&lab.live, "other");
    let script = lab.dir.path().join("fix.toml");
    let script_s = script.to_str().expect("utf8");
    let args = [
        "diff",
        snap.as_str(),
        lab.live_str(),
        "--table",
        "t",
        "--columns",
        "status",
        "--where",
        "region = 'eu'",
        "--emit-script",
        script_s,
    ];
    let o = lab.run(&args, &[]);
    assert_eq!(o.code, 3, "differences found: {o:?}");
    assert!(o.stderr.contains("restore script written to"), "{o:?}");
    let text = std::fs::read_to_string(&script).expect("script written");
    assert!(text.contains(&format!("snapshot = \"{snap}\"")), "{text}");
    assert!(text.contains("columns = [\"status\"]"), "{text}");
    assert!(text.contains("where = \"region = 'eu'\""), "{text}");

    // An existing file is refused, with the way to replace it; nothing
    // is changed in it.
    let o = lab.run(&args, &[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("--overwrite"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&script).expect("read"), text);
    let mut over = args.to_vec();
    over.push("--overwrite");
    assert_eq!(lab.run(&over, &[]).code, 3);

    // The dry run shows the diffed selection: the eu rows (odd ids) whose
    // status differs, the deleted eu row 3; the new row 1000 is kept.
    let dry = lab.run(&["--json", "repair", script_s], &[]);
    ok(&dry);
    let plan: serde_json::Value = serde_json::from_str(&dry.stdout).expect("plan json");
    let t = &plan["tables"][0];
    assert_eq!(t["compared"], serde_json::json!(["status"]));
    assert_eq!(t["counts"]["update"], 20, "{t}");
    assert_eq!(t["counts"]["insert"], 1, "{t}");
    assert_eq!(t["counts"]["delete"], 0, "{t}");
    assert_eq!(t["counts"]["not_selected"], 1, "{t}");
    ok(&lab.run(&["repair", script_s, "--apply", "--yes"], &[]));

    let after = by_id(&lab.live, "t");
    let eu = Exact::Text(b"eu".to_vec());
    let ids: std::collections::BTreeSet<&Exact> = good.keys().chain(before.keys()).collect();
    for id in ids {
        let (g, b, a) = (good.get(id), before.get(id), after.get(id));
        let in_selection = g.or(b).is_some_and(|r| r[4] == eu);
        match (in_selection, g, b) {
            // A row of the selection that the incident deleted: back whole.
            (true, Some(g), None) => assert_eq!(a, Some(g), "row {id:?} re-inserted"),
            // A row of the selection: the snapshot's status, every other
            // column as live had it.
            (true, Some(g), Some(b)) => {
                let a = a.expect("row kept");
                assert_eq!(a[2], g[2], "row {id:?} has the snapshot's status");
                assert_eq!((&a[1], &a[3], &a[4]), (&b[1], &b[3], &b[4]), "row {id:?}");
            }
            // Everything else, exactly as before the repair.
            _ => assert_eq!(a, b, "row {id:?} outside the selection is untouched"),
        }
    }
    assert_eq!(
        after.len(),
        before.len() + 1,
        "one row re-inserted, none deleted"
    );
    assert_eq!(
        dump(&lab.live, "other"),
        other_before,
        "another table is untouched"
    );
}

/// The drill of fixtures/make-drill.py with a snapshot after the incident:
/// the migration damages 5% of `status`, and (here) also deletes one row
/// and inserts one; then the application keeps writing, some of it to
/// damaged rows, and deletes a damaged row. Copies of the database before
/// and after the incident are kept (`VACUUM INTO`) to compare with.
struct IncidentDrill {
    lab: Lab,
    before: String,
    after: String,
    before_db: PathBuf,
    damaged: BTreeSet<i64>,
    updated: BTreeSet<i64>,
}

fn incident_drill() -> IncidentDrill {
    let lab = Lab::drill("live.db");
    let before_db = lab.dir.path().join("before-copy.db");
    lab.exec(&format!("VACUUM INTO '{}'", before_db.display()));
    let before = lab.snapshot();
    let d = crate::e2e::fixture("damage", &lab.live);
    lab.exec(
        "DELETE FROM deploys WHERE id = 7;
         INSERT INTO deploys VALUES(90001, 'api', 'v9', 'succeeded', '2026-02-02T17:05:00Z', '2026-02-02T17:05:00Z');",
    );
    let after = lab.snapshot();
    let a = crate::e2e::fixture("after", &lab.live);
    // A damaged row deleted since (a conflict), and a row the migration
    // did not touch changed since (left alone).
    lab.exec("DELETE FROM deploys WHERE id = 43; UPDATE deploys SET version = 'v0' WHERE id = 2;");

    IncidentDrill {
        before,
        after,
        before_db,
        damaged: crate::e2e::ids(&d, "damaged"),
        updated: crate::e2e::ids(&a, "updated"),
        lab,
    }
}

#[test]
fn three_way_repair_restores_only_the_incidents_rows_untouched_since_and_lists_every_conflict() {
    let d = incident_drill();
    let lab = &d.lab;
    let good = by_id(&d.before_db, "deploys");
    let pre = by_id(&lab.live, "deploys");
    let script = lab.dir.path().join("incident.toml");
    std::fs::write(
        &script,
        format!(
            "description = \"three-way\"\nlive = \"{}\"\n[incident]\nbefore = \"{}\"\nafter = \"{}\"\n[[table]]\nname = \"deploys\"\nactions = [\"update_changed\", \"insert_missing\", \"delete_extra\"]\nbatch_size = 37\n",
            lab.live.display(),
            d.before,
            d.after
        ),
    )
    .expect("script");
    let s = script.to_str().expect("utf8");
    // Conflicts: damaged rows updated since, and the damaged row 43,
    // deleted since.
    let mut conflicts: BTreeSet<i64> = d.damaged.intersection(&d.updated).copied().collect();
    conflicts.insert(43);
    assert!(
        conflicts.len() >= 3,
        "the drill hits damaged rows: {conflicts:?}"
    );
    let restore: BTreeSet<i64> = d.damaged.difference(&conflicts).copied().collect();

    let dry = lab.run(&["--json", "repair", s], &[]);
    ok(&dry);
    let plan: serde_json::Value = serde_json::from_str(&dry.stdout).expect("plan json");
    assert_eq!(
        plan["incident"]["before_snapshot"],
        d.before.as_str(),
        "{}",
        plan["incident"]
    );
    assert_eq!(plan["incident"]["after_snapshot"], d.after.as_str());
    let t = &plan["tables"][0];
    let i = &t["incident"];
    // The incident: the damaged rows, one deleted, one inserted.
    assert_eq!(i["changed_by_incident"], d.damaged.len() as u64 + 2, "{i}");
    let listed: BTreeSet<i64> = i["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .map(|c| c["key"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(listed, conflicts, "every conflict is listed, nothing else");
    let c43 = i["conflicts"]
        .as_array()
        .expect("conflicts")
        .iter()
        .find(|c| c["key"]["id"] == 43)
        .expect("43");
    assert!(
        c43["live"].is_null()
            && c43["reason"]
                .as_str()
                .expect("reason")
                .contains("deleted since"),
        "{c43}"
    );
    assert_eq!(
        t["counts"]["update"],
        restore.len() as u64,
        "{}",
        t["counts"]
    );
    assert_eq!(t["counts"]["insert"], 1, "the row the incident deleted");
    assert_eq!(t["counts"]["delete"], 1, "the row the incident inserted");
    // Everything written since the incident (200 new rows, the rollbacks
    // of undamaged rows, row 2) differs from before but is left alone.
    assert!(i["changed_since_only"].as_u64().expect("n") > 200, "{i}");
    let human = lab.run(&["repair", s], &[]);
    ok(&human);
    assert!(
        human
            .stdout
            .contains(&format!("{} CONFLICT(S)", conflicts.len())),
        "{}",
        human.stdout
    );

    // The application keeps writing while the repair runs.
    let writer = crate::e2e::Writer::start(&lab.live);
    let o = lab.run(
        &["--json", "repair", s, "--apply", "--yes"],
        &[("SNAPBACK_REPAIR_BATCH_DELAY_MS", "20")],
    );
    let (written, errors) = writer.stop();
    ok(&o);
    assert!(errors.is_empty() && written > 0, "{written} {errors:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("outcome json");
    assert_eq!(v["outcome"]["remaining_differences"], 0, "{}", v["outcome"]);
    assert!(v["outcome"]["pre_repair_snapshot"].is_string());

    let after = by_id(&lab.live, "deploys");
    let ids: BTreeSet<&Exact> = good.keys().chain(pre.keys()).chain(after.keys()).collect();
    let by_writer = after
        .keys()
        .filter(|k| matches!(k, Exact::Integer(n) if *n > 100_000))
        .count();
    assert_eq!(
        by_writer as u64, written,
        "every row the writer wrote is there"
    );
    for id in ids {
        let n = match id {
            Exact::Integer(n) => *n,
            _ => panic!("integer ids"),
        };
        if n > 100_000 {
            continue;
        }
        let expect = if restore.contains(&n) || n == 7 || n == 90001 {
            good.get(id)
        } else {
            pre.get(id)
        };
        assert_eq!(
            after.get(id),
            expect,
            "row {n}: restored only when the incident changed it and nobody since"
        );
    }
    // Undo gives back the database as it was before the repair.
    ok(&lab.undo_newest(&[]));
    let mut undone = by_id(&lab.live, "deploys");
    undone.retain(|k, _| !matches!(k, Exact::Integer(n) if *n > 100_000));
    assert_eq!(undone, pre, "undo reverts exactly the repair");
    let audit = lab.audit();
    assert_eq!(audit.len(), 2, "the repair and its undo are audited");
    assert_eq!(audit[0]["entry"]["source_snapshot"], d.before.as_str());
}

/// Each snapshot's id and time, from `snapback --json snapshots`.
fn snapshot_times(lab: &Lab) -> std::collections::BTreeMap<String, String> {
    let o = lab.run(&["--json", "snapshots"], &[]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("snapshots json");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_string(),
                s["time"].as_str().expect("time").to_string(),
            )
        })
        .collect()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

/// `snapback --json history` of table `t`, `--key key`: the versions,
/// and the text printed.
fn history_json(lab: &Lab, key: &str) -> (Vec<serde_json::Value>, String) {
    let o = lab.run(
        &[
            "--json",
            "history",
            lab.live_str(),
            "--table",
            "t",
            "--key",
            key,
        ],
        &[],
    );
    ok(&o);
    (json_lines(&o.stdout), o.stdout)
}

#[test]
fn history_of_a_row_updated_deleted_and_reinserted_across_points_is_exact() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v, note TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
             INSERT INTO t SELECT i * 2, i, printf('%.200c', 'x') FROM n;
             CREATE TABLE other(id INTEGER PRIMARY KEY, v);",
        )
        .expect("setup")
    });
    let s0 = lab.snapshot(); // row 5 absent
    lab.exec("INSERT INTO t VALUES(5, 1, 'first')");
    let s1 = lab.snapshot();
    lab.exec("INSERT INTO other VALUES(1, 'elsewhere')");
    let s2 = lab.snapshot(); // no page of t changed
    lab.exec("UPDATE t SET v = 2.5 WHERE id = 5");
    let s3 = lab.snapshot();
    lab.exec("DELETE FROM t WHERE id = 5");
    let s4 = lab.snapshot();
    lab.exec("UPDATE t SET v = -1 WHERE id = 600");
    let s5 = lab.snapshot(); // t changed, row 5 still absent
    lab.exec("INSERT INTO t VALUES(5, 'x', NULL)");
    let s6 = lab.snapshot();
    lab.exec("UPDATE t SET v = X'00ff' WHERE id = 5"); // live only
    let times = snapshot_times(&lab);
    let at = |s: &String| serde_json::Value::from(times[s].as_str());

    let (v, text) = history_json(&lab, "id=5");
    let want = [
        (
            "insert",
            at(&s1),
            at(&s3),
            serde_json::json!({"id": 5, "v": 1, "note": "first"}),
        ),
        (
            "update",
            at(&s3),
            at(&s4),
            serde_json::json!({"id": 5, "v": 2.5, "note": "first"}),
        ),
        (
            "delete",
            at(&s4),
            at(&s6),
            serde_json::json!({"id": 5, "v": 2.5, "note": "first"}),
        ),
        (
            "insert",
            at(&s6),
            serde_json::Value::Null,
            serde_json::json!({"id": 5, "v": "x", "note": null}),
        ),
    ];
    assert_eq!(v.len(), 5, "{text}");
    for (got, (op, from, to, values)) in v.iter().zip(&want) {
        assert_eq!(got["op"], *op, "{got}");
        assert_eq!(got["from"], *from, "{got}");
        assert_eq!(got["values"], *values, "{got}");
        if !to.is_null() {
            assert_eq!(got["to"], *to, "{got}");
        }
        let mut keys: Vec<&String> = got.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(keys, ["from", "op", "to", "values"]);
    }
    // The last point's version ends when live shows the next one.
    assert_eq!(v[3]["to"], v[4]["from"]);
    assert!(v[4]["from"].as_str() > times[&s6].as_str().into());
    assert_eq!(v[4]["op"], "update");
    assert_eq!(v[4]["to"], serde_json::Value::Null, "the live version");
    assert_eq!(v[4]["values"]["v"], serde_json::json!({"blob": "00ff"}));
    // The points that changed no page on row 5's path were not read: s2
    // (a row of another table) and s5 (a row of t in another leaf).
    let o = lab.run(
        &["history", lab.live_str(), "--table", "t", "--key", "id=5"],
        &[],
    );
    ok(&o);
    assert!(
        o.stderr
            .contains("7 point(s) hold the database, the record was read at 5"),
        "{}",
        o.stderr
    );
    assert_eq!(o.stdout.lines().count(), 5, "{}", o.stdout);

    // A row that was there from the first point: `unchanged` first.
    let (v, text) = history_json(&lab, "id=600");
    assert_eq!(v.len(), 2, "{text}");
    assert_eq!(
        (&v[0]["op"], &v[0]["from"], &v[0]["to"]),
        (&"unchanged".into(), &at(&s0), &at(&s5))
    );
    assert_eq!(
        (&v[1]["op"], &v[1]["values"]["v"]),
        (&"update".into(), &(-1).into())
    );
    let _ = s2;

    // A key that names no row anywhere, and a column that does not exist.
    let o = lab.run(
        &["history", lab.live_str(), "--table", "t", "--key", "id=7"],
        &[],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("no row of table t with id=7"), "{o:?}");
    let o = lab.run(
        &["history", lab.live_str(), "--table", "t", "--key", "nope=1"],
        &[],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("nope"), "{o:?}");
    let o = lab.run(
        &["history", lab.live_str(), "--table", "t", "--key", "id"],
        &[],
    );
    assert_eq!(o.code, 2, "not COL=VALUE: {o:?}");
}

/// `snapback --json when` of `jobs` where `tree_sha IS NULL`, then `extra`.
fn when_null_sha(lab: &Lab, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--json",
        "when",
        lab.live_str(),
        "--table",
        "jobs",
        "--where",
        "tree_sha IS NULL",
    ];
    args.extend(extra);
    let o = lab.run(&args, &[]);
    ok(&o);
    serde_json::from_str(&o.stdout).expect("when json")
}

#[test]
fn when_finds_by_bisection_the_exact_point_at_which_matching_rows_change_among_hundreds() {
    const POINTS: usize = 200;
    const CHANGE_AT: usize = 137;
    let lab = Lab::new(|c| {
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE jobs(id INTEGER PRIMARY KEY, tree_sha TEXT, runs INTEGER);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
             INSERT INTO jobs SELECT i, hex(randomblob(20)), 0 FROM n;",
        )
        .expect("setup")
    });
    let mut ids = Vec::new();
    for k in 0..POINTS {
        // Activity on every point; at CHANGE_AT a bug starts clearing
        // tree_sha, and keeps clearing more rows afterwards.
        lab.exec(&format!(
            "UPDATE jobs SET runs = runs + 1 WHERE id % 7 = {}",
            k % 7
        ));
        if k == CHANGE_AT {
            lab.exec("UPDATE jobs SET tree_sha = NULL WHERE id IN (11, 222, 333)");
        }
        if k > CHANGE_AT {
            lab.exec(&format!(
                "UPDATE jobs SET tree_sha = NULL WHERE id = {}",
                400 + k - CHANGE_AT
            ));
        }
        ids.push(lab.snapshot());
    }
    let r = when_null_sha(&lab, &[]);
    assert_eq!(r["found"], true, "{r}");
    assert_eq!(r["before"]["point"], ids[CHANGE_AT - 1].as_str(), "{r}");
    assert_eq!(r["after"]["point"], ids[CHANGE_AT].as_str(), "{r}");
    assert_eq!(
        (&r["before"]["matching"], &r["after"]["matching"]),
        (&0.into(), &3.into())
    );
    let added: Vec<i64> = r["added"]
        .as_array()
        .expect("added")
        .iter()
        .map(|x| x["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(added, [11, 222, 333]);
    assert_eq!(r["removed"], serde_json::json!([]));
    assert_eq!(r["points"], POINTS + 1, "every point, then live");
    assert!(
        r["probes"].as_u64().expect("probes") <= 10,
        "bisection, not a scan: {r}"
    );

    // --between: the same point within a range; none in a range before it.
    let times = snapshot_times(&lab);
    let t = |k: usize| format!("@{}", times[&ids[k]]);
    let r = when_null_sha(&lab, &["--between", &t(100), &t(150)]);
    assert_eq!(r["after"]["point"], ids[CHANGE_AT].as_str(), "{r}");
    assert_eq!(r["points"], 51);
    let r = when_null_sha(&lab, &["--between", &t(3), &t(90)]);
    assert_eq!(r["found"], false, "{r}");
    let o = lab.run(
        &[
            "when",
            lab.live_str(),
            "--table",
            "jobs",
            "--where",
            "no_such_column = 1",
        ],
        &[],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("no_such_column"), "{o:?}");
}

/// A base snapshot of the lab's database, then a timeline segment over
/// it of one point per statement of `steps` (each connection checkpoints
/// as it closes, so the file is the image), committed: the repository,
/// the segment's id and its points.
fn segment_of_steps(
    lab: &Lab,
    steps: &[&str],
) -> (
    snapback_core::Repository,
    snapback_core::Id,
    Vec<snapback_core::Point>,
) {
    let base = lab.snapshot();
    let live = std::fs::canonicalize(&lab.live).expect("canonical");
    let repo = snapback_core::Repository::open(std::sync::Arc::new(
        snapback_core::storage::LocalStore::open(&lab.repo).expect("store"),
    ))
    .expect("open");
    let image = || std::fs::read(&live).expect("read the database");
    let mut prev = image();
    let mut points = Vec::new();
    for sql in steps {
        lab.exec(sql);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let now = image();
        points.push(
            repo.point_between_images(&prev, &now, 4096, snapback_core::time::now())
                .expect("point"),
        );
        prev = now;
    }
    let seg = snapback_core::Segment {
        path: live.to_str().expect("utf8").to_string(),
        base: snapback_core::Id::from_hex(&base).expect("id"),
        page_size: 4096,
        points,
    };
    let id = repo.commit_segment(&seg).expect("commit the segment");
    (repo, id, seg.points)
}

#[test]
fn history_and_when_read_timeline_points_through_their_chunk_lists() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE other(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t VALUES(5, 'a'), (6, 'keep');",
        )
        .expect("setup")
    });
    let (_repo, seg_id, points) = segment_of_steps(
        &lab,
        &[
            "UPDATE t SET v = 'b' WHERE id = 5",
            "INSERT INTO other VALUES(1, 'x')",
            "DELETE FROM t WHERE id = 5",
            "INSERT INTO t VALUES(5, 'c')",
        ],
    );
    let times: Vec<String> = points
        .iter()
        .map(|p| snapback_core::time::format_rfc3339(p.time))
        .collect();

    let (v, text) = history_json(&lab, "id=5");
    let ops: Vec<(&str, &str)> = v
        .iter()
        .map(|x| {
            (
                x["op"].as_str().expect("op"),
                x["values"]["v"].as_str().expect("v"),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("unchanged", "a"),
            ("update", "b"),
            ("delete", "b"),
            ("insert", "c")
        ],
        "{text}"
    );
    assert_eq!(v[1]["from"], times[0].as_str());
    assert_eq!(v[2]["from"], times[2].as_str());
    assert_eq!(
        (&v[3]["from"], &v[3]["to"]),
        (&times[3].as_str().into(), &serde_json::Value::Null)
    );

    let o = lab.run(
        &[
            "--json",
            "when",
            lab.live_str(),
            "--table",
            "t",
            "--where",
            "v = 'c'",
        ],
        &[],
    );
    ok(&o);
    let r: serde_json::Value = serde_json::from_str(&o.stdout).expect("when json");
    assert_eq!(r["before"]["point"], format!("{}/2", seg_id.short()), "{r}");
    assert_eq!(r["after"]["point"], format!("{}/3", seg_id.short()), "{r}");
    assert_eq!(r["added"], serde_json::json!([{"id": 5, "v": "c"}]));
}

/// A lab whose `t` holds record 5 with a 6,000-byte blob (a leaf cell
/// and an overflow page) and whose `other` fills pages of its own; its
/// base snapshot; and a segment of points over it, one per statement in
/// `steps` (`segment_of_steps`): the repository and the pages (indexes)
/// each point changed.
fn points_lab(steps: &[&str]) -> (Lab, snapback_core::Repository, Vec<Vec<u64>>) {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, big BLOB);
             INSERT INTO t VALUES(5, zeroblob(6000));
             CREATE TABLE other(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 400)
             INSERT INTO other SELECT i, printf('%0100d', i) FROM n;",
        )
        .expect("setup")
    });
    let (repo, _, points) = segment_of_steps(&lab, steps);
    let changed = points
        .iter()
        .map(|p| p.changes.iter().map(|(i, _)| *i).collect())
        .collect();
    (lab, repo, changed)
}

/// `history` of record 5 of `t` through the library, to see its costs.
fn history_of_5(lab: &Lab, repo: &snapback_core::Repository) -> snapback_repair::History {
    let live = std::fs::canonicalize(&lab.live).expect("canonical");
    snapback_repair::history(
        repo,
        &live,
        &snapback_repair::HistoryQuery {
            table: "t".into(),
            key: vec![("id".into(), "5".into())],
            path: None,
            busy_timeout: std::time::Duration::from_secs(5),
        },
    )
    .expect("history")
}

/// The page count of the live database.
fn page_count(lab: &Lab) -> u64 {
    rusqlite::Connection::open(&lab.live)
        .expect("open")
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .expect("page_count")
}

#[test]
fn a_point_whose_frames_touch_none_of_the_records_noted_pages_is_skipped_without_hashing() {
    let steps: Vec<String> = (0..30)
        .map(|k| {
            format!(
                "UPDATE other SET v = printf('%0100d', {k}) WHERE id = {}",
                1 + k * 13
            )
        })
        .collect();
    let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
    let (lab, repo, changed) = points_lab(&steps);
    assert!(
        changed.iter().all(|c| !c.is_empty() && !c.contains(&0)),
        "every point changes a page of `other`, never page 1: {changed:?}"
    );
    let h = history_of_5(&lab, &repo);
    assert_eq!(h.points, 31, "the base snapshot and 30 points");
    assert_eq!(h.read, 1, "only the first point is read: {h:?}");
    assert_eq!(h.versions.len(), 1, "{:?}", h.versions);
    // The first point's list is proven whole (one term per page); the 30
    // skipped points hash nothing at all.
    assert_eq!(h.terms_hashed, page_count(&lab), "{h:?}");
}

#[test]
fn a_point_that_changes_only_the_records_overflow_page_is_not_skipped_and_its_version_is_reported()
{
    let (lab, repo, changed) = points_lab(&[
        "UPDATE other SET v = 'x' WHERE id = 300",
        // The last bytes of the blob are on its overflow page only.
        "UPDATE t SET big = CAST(zeroblob(5990) || X'01020304050607080910' AS BLOB) WHERE id = 5",
        "UPDATE other SET v = 'y' WHERE id = 301",
    ]);
    let root: i64 = rusqlite::Connection::open(&lab.live)
        .expect("open")
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 't'",
            [],
            |r| r.get(0),
        )
        .expect("rootpage");
    assert_eq!(changed[1].len(), 1, "one page changed: {changed:?}");
    assert_ne!(
        changed[1][0] as i64 + 1,
        root,
        "not the leaf (t's root): {changed:?}"
    );
    let h = history_of_5(&lab, &repo);
    assert_eq!(h.points, 4);
    assert_eq!(h.read, 2, "the base and the overflow page's point: {h:?}");
    assert_eq!(h.versions.len(), 2, "{:?}", h.versions);
    let v = h.versions[1].json();
    assert_eq!(v["op"], "update", "{v}");
    let blob = v["values"]["big"]["blob"].as_str().expect("a blob");
    assert!(blob.ends_with("01020304050607080910"), "{v}");
    // Read two points: the first list whole, then the pages that differ
    // between the two (the blob's overflow page and `other`'s page), each
    // as one term out and one in.
    let diff: std::collections::BTreeSet<u64> =
        changed[0].iter().chain(&changed[1]).copied().collect();
    assert_eq!(
        h.terms_hashed,
        page_count(&lab) + 2 * diff.len() as u64,
        "{h:?}"
    );
}

/// Two tables: `small` (one page) and `big` (hundreds of pages).
fn two_tables_lab() -> Lab {
    Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE small(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO small VALUES(1, 'a'), (2, 'b');
             CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 3000)
             INSERT INTO big SELECT i, printf('%0300d', i) FROM n;",
        )
        .expect("setup")
    })
}

#[test]
fn diff_of_one_table_reads_only_that_tables_pages_from_the_repository() {
    let lab = two_tables_lab();
    let snap = lab.snapshot();
    lab.exec("UPDATE small SET v = 'z' WHERE id = 2; UPDATE big SET v = 'q' WHERE id = 7;");
    let o = lab.run(
        &["--json", "diff", &snap, lab.live_str(), "--table", "small"],
        &[],
    );
    assert_eq!(o.code, 3, "one difference: {o:?}");
    let summary: serde_json::Value =
        serde_json::from_str(o.stdout.lines().last().expect("a summary")).expect("json");
    let read = &summary["snapshot_read"];
    let pages = read["pages"].as_u64().expect("pages");
    let pages_read = read["pages_read"].as_u64().expect("pages_read");
    assert!(pages > 200, "the database has {pages} pages: {summary}");
    // Page 1 (the schema) and the one page of `small`, perhaps a
    // pointer-map or overflow page: never the pages of `big`.
    assert!(
        pages_read <= 4,
        "a diff of one small table read {pages_read} of {pages} pages: {summary}"
    );
    assert_eq!(summary["counts"]["changed"], 1, "{summary}");
    // The terminal summary says it too.
    let o = lab.run(&["diff", &snap, lab.live_str(), "--table", "small"], &[]);
    assert!(
        o.stderr.contains("pages of the snapshot's database"),
        "{o:?}"
    );
}

#[test]
fn diff_against_a_damaged_pack_fails_with_an_io_error_and_prints_no_rows() {
    let lab = two_tables_lab();
    let snap = lab.snapshot();
    snapback_testkit::flip_byte_in_largest_pack(&lab.repo);
    // Every row changes, so that every page of `big` is read from the
    // snapshot (a page whose hash is the live page's is never fetched).
    lab.exec("UPDATE big SET v = v || 'x'");
    let o = lab.run(
        &["--json", "diff", &snap, lab.live_str(), "--table", "big"],
        &[],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("disk I/O error"), "{o:?}");
    assert!(
        !o.stdout.contains("\"type\":\"changed\"") && !o.stdout.contains("only_in"),
        "no row differences from damaged data: {o:?}"
    );
}

#[test]
fn a_pre_repair_snapshot_reads_only_the_pages_written_since_the_previous_capture() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 3000)
             INSERT INTO t SELECT i, printf('%0200d', i) FROM n;",
        )
        .expect("setup")
    });
    // The application holds a connection, so the WAL and its index stay.
    let app = rusqlite::Connection::open(&lab.live).expect("open");
    let _: i64 = app
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("read");
    // A write first: the first one after the WAL emptied starts a new
    // generation of it, which no capture can continue across.
    lab.exec("CREATE TABLE app_log(x)");
    let snap = lab.snapshot();
    lab.exec("UPDATE t SET v = 'bad' WHERE id % 500 = 0");
    let script = lab.script(
        "fix.toml",
        &snap,
        "[[table]]\nname = \"t\"\ncolumns = [\"v\"]\nactions = [\"update_changed\"]\n",
    );
    let script = script.to_str().expect("utf8");
    ok(&lab.run(&["repair", script, "--apply", "--yes"], &[]));
    let undo_id = lab.last_id();
    ok(&lab.run(&["undo", &undo_id, "--yes"], &[]));
    let repo = snapback_core::Repository::open(std::sync::Arc::new(
        snapback_core::storage::LocalStore::open(&lab.repo).expect("store"),
    ))
    .expect("open");
    let pre: Vec<_> = repo
        .snapshots()
        .expect("snapshots")
        .into_iter()
        .filter(|s| s.manifest.tags.iter().any(|t| t == "pre-repair"))
        .collect();
    assert_eq!(pre.len(), 2, "one before the repair, one before its undo");
    for s in &pre {
        let capture = s.manifest.files[0]
            .sqlite
            .as_ref()
            .and_then(|q| q.capture.clone());
        assert!(
            matches!(capture, Some(snapback_core::CaptureMethod::WalDelta { pages_read }) if pages_read < 20),
            "the pre-repair snapshot read only the pages written since: {capture:?}"
        );
    }
    drop(app);
}
