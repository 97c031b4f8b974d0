//! Values through every stored form of a repair (the plan stored in the
//! live database, the journal, the resume path, the audit log, `--json
//! audit`) and back: exactly, bit for bit.

use crate::lab::{dump, ok, Lab, Rng};

const ROWS: usize = 3000;

/// A table of random doubles, a snapshot of it, then every row changed.
fn doubles_lab() -> (Lab, String, Vec<Vec<crate::lab::Exact>>) {
    let lab = Lab::new(|c| {
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v REAL, w ANY);")
            .expect("schema");
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let tx = c.unchecked_transaction().expect("tx");
        for i in 0..ROWS {
            tx.execute(
                "INSERT INTO t VALUES(?1, ?2, ?3)",
                rusqlite::params![i as i64, rng.double(), rng.double() * 1e-300],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    });
    let snap = lab.snapshot();
    let orig = dump(&lab.live, "t");
    lab.exec("UPDATE t SET v = v * 1.1 + 0.3, w = w * 3.3;");
    (lab, snap, orig)
}

const BODY: &str = "[[table]]\nname = \"t\"\nactions = [\"update_changed\"]\nbatch_size = 250\n";

/// Repairs `t` from `snap` with BODY.
fn repair(lab: &Lab, snap: &str) {
    let s = lab.script("fix.toml", snap, BODY);
    ok(&lab.run(
        &["repair", s.to_str().expect("utf8"), "--apply", "--yes"],
        &[],
    ));
}

#[test]
fn undo_after_repair_of_random_doubles_is_exact_and_not_refused() {
    let (lab, snap, orig) = doubles_lab();
    let damaged = dump(&lab.live, "t");
    repair(&lab, &snap);
    assert!(dump(&lab.live, "t") == orig, "the repair is exact");
    let o = lab.undo_newest(&[]);
    ok(&o);
    assert!(!o.stdout.contains("left alone"), "{o:?}");
    assert!(
        dump(&lab.live, "t") == damaged,
        "undo gives back exactly the values the repair replaced"
    );
}

#[test]
fn undo_force_writes_reals_bit_for_bit() {
    let (lab, snap, _) = doubles_lab();
    let damaged = dump(&lab.live, "t");
    repair(&lab, &snap);
    ok(&lab.undo_newest(&["--force"]));
    let now = dump(&lab.live, "t");
    let off: Vec<_> = now.iter().zip(&damaged).filter(|(a, b)| a != b).collect();
    assert!(
        off.is_empty(),
        "{} row(s) differ, e.g. {:?}",
        off.len(),
        off.first()
    );
}

#[test]
fn a_killed_and_resumed_repair_of_doubles_has_no_false_conflicts() {
    let (lab, snap, orig) = doubles_lab();
    let s = lab.script("fix.toml", &snap, BODY);
    let s = s.to_str().expect("utf8");
    let o = lab.run(
        &["repair", s, "--apply", "--yes"],
        &[("SNAPBACK_REPAIR_EXIT_AFTER_BATCHES", "3")],
    );
    assert_eq!(
        o.code, 137,
        "the test hook stops the repair as a kill would: {o:?}"
    );
    assert!(dump(&lab.live, "t") != orig, "killed part-way");
    let o = lab.run(&["repair", s, "--apply", "--yes"], &[]);
    ok(&o);
    assert!(o.stderr.contains("resuming"), "{o:?}");
    assert!(o.stdout.contains("conflicts 0"), "{o:?}");
    assert!(!o.stdout.contains("left alone"), "{o:?}");
    assert!(dump(&lab.live, "t") == orig, "the resumed repair is exact");
    let a = lab.audit();
    assert_eq!(a.len(), 1, "one entry");
    assert_eq!(a[0]["entry"]["conflicts"].as_array().map(Vec::len), Some(0));
    assert_eq!(a[0]["entry"]["remaining_differences"], 0);
}

#[test]
fn json_audit_prints_the_exact_stored_real() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v REAL);
             INSERT INTO t VALUES(1, 123456789.12345679), (2, -929346.1975191133), (3, 5e-324);",
        )
        .expect("schema");
    });
    let snap = lab.snapshot();
    lab.exec("UPDATE t SET v = 1.5;");
    repair(&lab, &snap);
    let o = lab.run(&["--json", "audit"], &[]);
    ok(&o);
    for text in ["123456789.12345679", "-929346.1975191133", "5e-324"] {
        assert!(o.stdout.contains(text), "{text} missing from {}", o.stdout);
    }
    assert!(!o.stdout.contains("123456789.1234568,"), "{}", o.stdout);
}

#[test]
fn undo_of_delete_extra_restores_the_whole_row_with_live_only_columns() {
    let lab = Lab::new(|c| {
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b REAL);
             INSERT INTO t VALUES(1, 'x', 1.5), (2, 'y', 2.5);",
        )
        .expect("schema");
    });
    let snap = lab.snapshot();
    lab.exec(
        "ALTER TABLE t ADD COLUMN d DEFAULT 'dflt';
         ALTER TABLE t ADD COLUMN e BLOB;
         INSERT INTO t VALUES(3, 'extra', 0.30000000000000004, 'precious', x'00ff');",
    );
    let before = dump(&lab.live, "t");
    let s = lab.script(
        "fix.toml",
        &snap,
        "[[table]]\nname = \"t\"\ncolumns = [\"a\"]\nactions = [\"delete_extra\"]\n",
    );
    ok(&lab.run(
        &["repair", s.to_str().expect("utf8"), "--apply", "--yes"],
        &[],
    ));
    assert_eq!(dump(&lab.live, "t").len(), 2, "the extra row is deleted");
    let a = lab.audit();
    let ch = &a[0]["entry"]["changes"]["tables"][0]["changes"][0];
    assert_eq!(ch["op"], "delete");
    assert_eq!(
        ch["columns"],
        serde_json::json!(["a", "b", "d", "e"]),
        "{ch}"
    );
    ok(&lab.undo_newest(&[]));
    assert!(
        dump(&lab.live, "t") == before,
        "undo re-inserts the deleted row with every column: {:?}",
        dump(&lab.live, "t")
    );
}
