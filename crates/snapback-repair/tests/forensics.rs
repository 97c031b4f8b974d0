//! Incident forensics through the real binary (docs/forensics.md):
//! `diff --emit-script`, the three-way repair of an `[incident]` script,
//! `history` and `when`.

use std::path::Path;

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
