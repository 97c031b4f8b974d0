//! Failed batches and SQL steps must not wedge later repairs: what the dry
//! run can find it reports, a row a constraint refuses is left alone, and
//! a failed run is auditable, undoable and can be abandoned.

use crate::lab::{dump, ok, Lab};

/// `u` with a UNIQUE email; after the snapshot, rows 2-4 are deleted and
/// the application re-creates row 3 under id 99 with the same email.
fn recreated_lab() -> (Lab, String) {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE, v);
             INSERT INTO u VALUES(1,'a@x',1),(2,'b@x',2),(3,'c@x',3),(4,'d@x',4),(5,'e@x',5);",
        )
        .expect("schema");
    });
    let snap = lab.snapshot();
    lab.exec("DELETE FROM u WHERE id IN (2, 3, 4); INSERT INTO u VALUES(99, 'c@x', 33);");
    (lab, snap)
}

const INSERT_MISSING: &str =
    "[[table]]\nname = \"u\"\nactions = [\"insert_missing\"]\nbatch_size = 1\n";

#[test]
fn a_unique_conflict_is_found_by_the_dry_run_and_left_alone_without_wedging() {
    let (lab, snap) = recreated_lab();
    let s = lab.script("fix.toml", &snap, INSERT_MISSING);
    let s = s.to_str().expect("utf8");
    let o = lab.run(&["repair", s], &[]);
    ok(&o);
    assert!(
        o.stdout.contains("BLOCKED 1") && o.stdout.contains("key [3]"),
        "{o:?}"
    );
    let o = lab.run(&["--json", "repair", s], &[]);
    let plan: serde_json::Value = serde_json::from_str(&o.stdout).expect("json plan");
    assert_eq!(plan["tables"][0]["counts"]["blocked"], 1, "{plan}");
    let o = lab.run(&["repair", s, "--apply", "--yes"], &[]);
    ok(&o);
    assert!(
        o.stdout.contains("left alone: u key [3]") && o.stdout.contains("UNIQUE"),
        "{o:?}"
    );
    let ids: Vec<_> = dump(&lab.live, "u")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(ids.len(), 5, "rows 2 and 4 inserted, 3 left alone: {ids:?}");
    // Nothing is left unfinished: another script runs.
    let other = lab.script(
        "other.toml",
        &snap,
        "[[table]]\nname = \"u\"\nactions = [\"update_changed\"]\n",
    );
    ok(&lab.run(
        &["repair", other.to_str().expect("utf8"), "--apply", "--yes"],
        &[],
    ));
}

#[test]
fn deletes_run_before_inserts_so_a_recreated_row_frees_its_unique_value() {
    let (lab, snap) = recreated_lab();
    let s = lab.script(
        "fix.toml",
        &snap,
        "[[table]]\nname = \"u\"\nactions = [\"insert_missing\", \"delete_extra\"]\nbatch_size = 1\n",
    );
    let s = s.to_str().expect("utf8");
    let o = lab.run(&["repair", s], &[]);
    ok(&o);
    assert!(!o.stdout.contains("BLOCKED"), "{o:?}");
    let o = lab.run(&["repair", s, "--apply", "--yes"], &[]);
    ok(&o);
    assert!(o.stdout.contains("conflicts 0"), "{o:?}");
    assert_eq!(dump(&lab.live, "u").len(), 5);
}

#[test]
fn a_sql_step_writing_the_attached_snapshot_is_refused_by_the_dry_run() {
    let (lab, snap) = recreated_lab();
    let s = lab.script(
        "fix.toml",
        &snap,
        "[[sql]]\nstatement = \"UPDATE snapshot.u SET v = 0\"\n",
    );
    let o = lab.run(&["repair", s.to_str().expect("utf8")], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("writes to the schema `snapshot`"),
        "{o:?}"
    );
    let fine = lab.script(
        "fine.toml",
        &snap,
        "[[sql]]\nstatement = \"UPDATE main.u SET v = (SELECT v FROM snapshot.u s WHERE s.id = u.id) WHERE id = 1\"\n",
    );
    ok(&lab.run(&["repair", fine.to_str().expect("utf8")], &[]));
}

/// Rows of `u` repaired in batches of 1, then a SQL step that fails at
/// apply (an integer overflow the dry run cannot see).
fn failing_step(lab: &Lab, snap: &str) -> std::path::PathBuf {
    lab.script(
        "fail.toml",
        snap,
        "[[table]]\nname = \"u\"\nactions = [\"update_changed\"]\nbatch_size = 1\n[[sql]]\nstatement = \"UPDATE u SET v = abs(-9223372036854775808) WHERE id = 1\"\n",
    )
}

/// `values_lab`, then the failing script applied: it stops at the SQL
/// step. Returns the lab, the snapshot, the damaged rows and the script.
fn failed_run() -> (Lab, String, Vec<Vec<crate::lab::Exact>>, std::path::PathBuf) {
    let (lab, snap) = values_lab();
    let damaged = dump(&lab.live, "u");
    let s = failing_step(&lab, &snap);
    let o = lab.run(
        &["repair", s.to_str().expect("utf8"), "--apply", "--yes"],
        &[],
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("integer overflow"), "{o:?}");
    (lab, snap, damaged, s)
}

fn values_lab() -> (Lab, String) {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u VALUES(1,1),(2,2),(3,3);",
        )
        .expect("schema");
    });
    let snap = lab.snapshot();
    lab.exec("UPDATE u SET v = 0;");
    (lab, snap)
}

#[test]
fn a_failed_sql_step_is_audited_and_abandon_unwedges_later_repairs() {
    let (lab, snap, damaged, _) = failed_run();
    let a = lab.audit();
    assert_eq!(a.len(), 1, "the failed run is audited");
    let id = a[0]["entry"]["repair_id"].as_str().expect("id").to_string();
    assert!(a[0]["entry"]["failed"].is_string(), "{:?}", a[0]);
    assert_eq!(
        a[0]["entry"]["changes"]["tables"][0]["changes"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    // The advice given works: another script is refused with it ...
    let other = lab.script(
        "other.toml",
        &snap,
        "[[table]]\nname = \"u\"\nactions = [\"update_changed\"]\n",
    );
    let other = other.to_str().expect("utf8");
    let o = lab.run(&["repair", other], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    let advice = format!("snapback repair --abandon {id} --live {}", lab.live_str());
    assert!(o.stderr.contains(&advice), "{o:?}");
    // ... and abandoning closes the run, with an audit entry.
    let o = lab.run(&["repair", "--abandon", &id, "--live", lab.live_str()], &[]);
    ok(&o);
    assert!(o.stdout.contains("3 row change(s)"), "{o:?}");
    let a = lab.audit();
    assert_eq!(a.len(), 2);
    assert_eq!(a[1]["entry"]["kind"], "abandon");
    assert_eq!(a[1]["entry"]["repair_id"], id.as_str());
    ok(&lab.run(&["repair", other], &[]));
    // Undo reverts what the abandoned run committed.
    ok(&lab.run(&["undo", &id, "--yes"], &[]));
    assert!(
        dump(&lab.live, "u") == damaged,
        "{:?}",
        dump(&lab.live, "u")
    );
}

#[test]
fn undo_of_a_failed_run_reverts_what_it_committed() {
    let (lab, _, damaged, s) = failed_run();
    ok(&lab.undo_newest(&[]));
    assert!(
        dump(&lab.live, "u") == damaged,
        "{:?}",
        dump(&lab.live, "u")
    );
    // Nothing is left unfinished.
    ok(&lab.run(&["repair", s.to_str().expect("utf8")], &[]));
}

#[test]
fn undo_without_a_terminal_asks_for_yes_not_apply() {
    let (lab, snap) = values_lab();
    let s = lab.script(
        "fix.toml",
        &snap,
        "[[table]]\nname = \"u\"\nactions = [\"update_changed\"]\n",
    );
    ok(&lab.run(
        &["repair", s.to_str().expect("utf8"), "--apply", "--yes"],
        &[],
    ));
    let o = lab.run(&["undo", &lab.last_id()], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("undo changes the live database") && o.stderr.contains("--yes"),
        "{o:?}"
    );
    assert!(!o.stderr.contains("--apply"), "{o:?}");
}

#[test]
fn apply_with_a_reviewed_plan_does_exactly_that_plan_and_refuses_if_live_moved() {
    let lab = Lab::new(|c| {
        c.execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u VALUES(1,1);")
            .expect("schema");
    });
    let snap = lab.snapshot();
    lab.exec("INSERT INTO u VALUES(2, 2), (3, 3);");
    let s = lab.script(
        "fix.toml",
        &snap,
        "[[table]]\nname = \"u\"\nactions = [\"delete_extra\"]\n",
    );
    let s = s.to_str().expect("utf8");
    let plan = lab.dir.path().join("plan.json");
    let plan = plan.to_str().expect("utf8");
    let o = lab.run(&["repair", s, "--plan-out", plan], &[]);
    ok(&o);
    assert!(o.stdout.contains("delete 2"), "{o:?}");
    // The application writes a row that a new plan would delete too.
    lab.exec("INSERT INTO u VALUES(4, 4);");
    let o = lab.run(&["repair", "--apply", "--yes", "--plan", plan], &[]);
    // Exit 3: the row written since the plan is a difference it leaves.
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stdout.contains("deleted 2") && o.stdout.contains("NOT VERIFIED: 1"),
        "{o:?}"
    );
    assert!(o.stderr.contains("differs from the reviewed plan"), "{o:?}");
    assert_eq!(dump(&lab.live, "u").len(), 2, "rows 1 and 4 remain");
    // A plan whose rows moved is refused.
    lab.exec("INSERT INTO u VALUES(5, 5);");
    let o = lab.run(&["repair", s, "--plan-out", plan], &[]);
    ok(&o);
    lab.exec("UPDATE u SET v = 50 WHERE id = 5;");
    let o = lab.run(&["repair", "--apply", "--yes", "--plan", plan], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("moved beyond the reviewed plan"), "{o:?}");
    assert_eq!(dump(&lab.live, "u").len(), 3, "nothing written");
}
