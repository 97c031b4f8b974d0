//! The property test of issue 16: random rows holding every kind of SQLite
//! value (lab.rs's `value()`: REAL edge cases, text with CR/LF/NUL/ESC/BEL
//! and bytes that are not UTF-8, empty and large blobs, NULLs, the i64
//! extremes) through every path of the real binary, each of which must
//! give back exactly the values it was given: snapshot and restore (byte
//! for byte, and value for value), `diff --json` (decoded back),
//! `diff --sql` (run by the sqlite3 shell), `repair --apply` (and what
//! `--json audit` says it changed), `undo`, a
//! repair killed after its first batch and resumed, `undo --force`, and
//! a plan written with `--plan-out` and applied with `--apply --plan`.
//! Values are compared by storage class and bits (lab.rs's `Exact`).
//!
//! 24 cases by default (a few seconds); PROPTEST_CASES=N runs more and
//! PROPTEST_RNG_SEED=N other ones. A failure names the path that broke and
//! prints the smallest rows that still break it.

use std::collections::BTreeSet;
use std::path::Path;

use proptest::test_runner::TestCaseError;

use crate::diff_cli::sqlite3_shell;
use crate::lab::{dump, prop_check, prop_config, Case, Exact, Lab, COLS};
use crate::util::Out;

const CASES: u32 = 24;
const MAX_ROWS: usize = 10;
const BATCH: usize = 2;

pub type Rows = Vec<Vec<Exact>>;

pub fn fail<T>(path: &str, what: impl std::fmt::Display) -> Result<T, TestCaseError> {
    Err(TestCaseError::fail(format!("{path}: {what}")))
}

/// `o` exited with `code`, or the path failed.
pub fn exited(path: &str, o: &Out, code: i32) -> Result<(), TestCaseError> {
    if o.code == code {
        Ok(())
    } else {
        fail(path, format!("expected exit {code}, got {o:?}"))
    }
}

/// `got` holds exactly the rows of `want`, or the path failed, naming the
/// first row that differs.
pub fn same_rows(path: &str, got: &Rows, want: &Rows) -> Result<(), TestCaseError> {
    if got == want {
        return Ok(());
    }
    let keys: BTreeSet<&Exact> = got.iter().chain(want).map(|r| &r[0]).collect();
    for k in keys {
        let g = got.iter().find(|r| &r[0] == k);
        let w = want.iter().find(|r| &r[0] == k);
        if g != w {
            return fail(
                path,
                format!("row {k:?} is\n    {g:?}\n  instead of\n    {w:?}"),
            );
        }
    }
    fail(path, "the rows are in another order")
}

/// The row with key `k` (its values a, b, c).
fn row(rows: &Rows, k: i64) -> Option<&[Exact]> {
    rows.iter()
        .find(|r| r[0] == Exact::Integer(k))
        .map(|r| &r[2..])
}

/// Whether two values are the same to diff and repair: storage class and
/// bits (1 is not 1.0, 0.0 is not -0.0), decided here independently of
/// the crate's own `same_value`.
fn same(a: &Exact, b: &Exact) -> bool {
    a == b
}

/// The keys whose rows differ in any value (by storage class and bits), or
/// exist on one side only: what diff must report.
fn differing(snap: &Rows, live: &Rows) -> BTreeSet<i64> {
    let keys = |rows: &Rows| -> BTreeSet<i64> {
        rows.iter()
            .filter_map(|r| match r[0] {
                Exact::Integer(k) => Some(k),
                _ => None,
            })
            .collect()
    };
    keys(snap)
        .union(&keys(live))
        .copied()
        .filter(|k| match (row(snap, *k), row(live, *k)) {
            (Some(s), Some(l)) => s.iter().zip(l).any(|(a, b)| !same(a, b)),
            _ => true,
        })
        .collect()
}

/// A column that the repair wrote in a row it gave back (`repaired`) that
/// was `damaged` (or missing) before: the first that differs.
fn changed_column(repaired: &[Exact], damaged: Option<&[Exact]>) -> &'static str {
    let Some(d) = damaged else { return COLS[0] };
    (0..COLS.len())
        .find(|i| !same(&repaired[*i], &d[*i]))
        .map_or(COLS[0], |i| COLS[i])
}

/// A value of `diff --json` decoded as docs/repair.md describes the form
/// (not through the crate's own deserializer): null, an integer, a REAL
/// (with a '.' or an exponent), a string, or `{"blob"|"text_hex": HEX}`,
/// `{"real": "inf"|"-inf"}`.
fn decode(j: &serde_json::Value) -> Option<Exact> {
    use serde_json::Value as J;
    Some(match j {
        J::Null => Exact::Null,
        J::Number(n) if n.is_f64() => Exact::Real(n.as_f64()?.to_bits()),
        J::Number(n) => Exact::Integer(n.as_i64()?),
        J::String(s) => Exact::Text(s.as_bytes().to_vec()),
        J::Object(m) if m.len() == 1 => match m.iter().next()? {
            (k, J::String(h)) if k == "blob" => Exact::Blob(hex::decode(h).ok()?),
            (k, J::String(h)) if k == "text_hex" => Exact::Text(hex::decode(h).ok()?),
            (k, J::String(s)) if k == "real" && s == "inf" => Exact::Real(f64::INFINITY.to_bits()),
            (k, J::String(s)) if k == "real" && s == "-inf" => {
                Exact::Real(f64::NEG_INFINITY.to_bits())
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// `diff --json` reports exactly the differing rows, each side's values
/// decoding back to exactly what that side holds.
pub fn check_diff_json(o: &Out, snap: &Rows, live: &Rows) -> Result<(), TestCaseError> {
    const P: &str = "diff --json";
    let want = differing(snap, live);
    exited(P, o, if want.is_empty() { 0 } else { 3 })?;
    let mut reported = BTreeSet::new();
    for line in o.stdout.lines() {
        let l: serde_json::Value = match serde_json::from_str(line) {
            Ok(l) => l,
            Err(e) => return fail(P, format!("not JSON ({e}): {line}")),
        };
        if l["type"] != "row" {
            continue;
        }
        let Some(k) = l["key"]["k"].as_i64() else {
            return fail(P, format!("no integer key: {line}"));
        };
        reported.insert(k);
        for (side, rows) in [("snapshot", snap), ("live", live)] {
            let got: Option<Vec<Exact>> = match l.get(side) {
                None => None,
                Some(obj) => {
                    let vals: Option<Vec<Exact>> = COLS.iter().map(|c| decode(&obj[*c])).collect();
                    match vals {
                        Some(v) => Some(v),
                        None => return fail(P, format!("{side}: a value of unknown form: {line}")),
                    }
                }
            };
            if got.as_deref() != row(rows, k) {
                return fail(
                    P,
                    format!(
                        "{side} row {k} decodes to\n    {got:?}\n  but holds\n    {:?}\n  line: {line}",
                        row(rows, k)
                    ),
                );
            }
        }
    }
    if reported != want {
        return fail(P, format!("reported rows {reported:?}, differing {want:?}"));
    }
    Ok(())
}

/// `diff --sql` exited as it should and its statements, run by the sqlite3
/// shell on `db` (a copy of live), turn its rows into exactly `want`.
pub fn check_diff_sql(o: &Out, db: &Path, want: &Rows) -> Result<(), TestCaseError> {
    let differs = !differing(want, &dump(db, "t")).is_empty();
    exited("diff --sql", o, if differs { 3 } else { 0 })?;
    sqlite3_shell(db, o.stdout.as_bytes());
    same_rows(
        &format!("diff --sql applied by the sqlite3 shell\n{}", o.stdout),
        &dump(db, "t"),
        want,
    )
}

/// The newest audit entry (`--json audit`) records exactly the rows the
/// repair changed, each value as it was (`before`, the damaged rows) and as
/// the repair wrote it (`after`, the snapshot's rows).
fn check_audit(
    lab: &Lab,
    snap: &Rows,
    damaged: &Rows,
    want: &BTreeSet<i64>,
) -> Result<(), TestCaseError> {
    const P: &str = "--json audit";
    let a = lab.audit();
    let Some(e) = a.last() else {
        return fail(P, "no audit entry");
    };
    let mut seen = BTreeSet::new();
    for ch in e["entry"]["changes"]["tables"][0]["changes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(k) = ch["key"][0].as_i64() else {
            return fail(P, format!("no integer key: {ch}"));
        };
        seen.insert(k);
        let cols: Vec<usize> = ch["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| COLS.iter().position(|n| c.as_str() == Some(n)))
            .collect();
        for (side, rows) in [("before", damaged), ("after", snap)] {
            let Some(vals) = ch.get(side).and_then(|v| v.as_array()) else {
                continue;
            };
            let got: Option<Vec<Exact>> = vals.iter().map(decode).collect();
            let held = row(rows, k).map(|r| cols.iter().map(|i| r[*i].clone()).collect::<Vec<_>>());
            if got.is_none() || got != held || vals.len() != cols.len() {
                return fail(
                    P,
                    format!("{side} of row {k} is {got:?}, the row held {held:?}: {ch}"),
                );
            }
        }
    }
    if &seen != want {
        return fail(P, format!("changes of rows {seen:?}, differing {want:?}"));
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Runs the repair `script` (`--apply --yes`, with `env`); `path` names
/// the step in a failure.
fn repair(
    lab: &Lab,
    script: &Path,
    path: &str,
    env: &[(&str, &str)],
    code: i32,
) -> Result<(), TestCaseError> {
    let o = lab.run(&["repair", s(script), "--apply", "--yes"], env);
    exited(path, &o, code)
}

fn every_path(case: Case) -> Result<(), TestCaseError> {
    let lab = Lab::new(|c| case.fill(c));
    let orig = dump(&lab.live, "t");
    let image = std::fs::read(&lab.live).expect("read live");

    // snapshot, restore: the same bytes, the same values.
    let snap = lab.snapshot();
    let restored = lab.dir.path().join("restored.db");
    exited(
        "restore",
        &lab.run(&["restore", &snap, s(&restored)], &[]),
        0,
    )?;
    if std::fs::read(&restored).expect("read restored") != image {
        return fail(
            "restore",
            "the restored file differs from the snapshot's bytes",
        );
    }
    same_rows("restore (values)", &dump(&restored, "t"), &orig)?;

    // The incident.
    case.damage(&rusqlite::Connection::open(&lab.live).expect("live"));
    let damaged = dump(&lab.live, "t");
    let changes = differing(&orig, &damaged);

    let o = lab.run(&["--json", "diff", &snap, lab.live_str()], &[]);
    check_diff_json(&o, &orig, &damaged)?;

    // diff --sql, run by the sqlite3 shell on a copy of live.
    let o = lab.run(&["diff", &snap, lab.live_str(), "--sql"], &[]);
    let copy = lab.dir.path().join("copy.db");
    std::fs::copy(&lab.live, &copy).expect("copy live");
    check_diff_sql(&o, &copy, &orig)?;

    let script = lab.script(
        "fix.toml",
        &snap,
        &format!(
            "[[table]]\nname = \"t\"\nactions = [\"insert_missing\", \"update_changed\", \"delete_extra\"]\nbatch_size = {BATCH}\n"
        ),
    );
    repair(&lab, &script, "repair --apply", &[], 0)?;
    same_rows("repair --apply", &dump(&lab.live, "t"), &orig)?;
    if changes.is_empty() {
        return Ok(()); // nothing was repaired, so there is nothing to undo
    }
    check_audit(&lab, &orig, &damaged, &changes)?;
    exited("undo", &lab.undo_newest(&[]), 0)?;
    same_rows("undo", &dump(&lab.live, "t"), &damaged)?;

    // Killed after its first batch, then resumed.
    repair(
        &lab,
        &script,
        "repair killed after batch 1",
        &[("SNAPBACK_REPAIR_EXIT_AFTER_BATCHES", "1")],
        137,
    )?;
    repair(&lab, &script, "repair resumed", &[], 0)?;
    same_rows("repair killed and resumed", &dump(&lab.live, "t"), &orig)?;

    // The application writes to a value the repair wrote; undo --force
    // reverts it too, to exactly what the repair found.
    if let Some((k, col)) = changes
        .iter()
        .find_map(|k| Some((*k, changed_column(row(&orig, *k)?, row(&damaged, *k)))))
    {
        lab.exec(&format!(
            "UPDATE t SET {col} = 'the app wrote this' WHERE k = {k}"
        ));
    }
    exited("undo --force", &lab.undo_newest(&["--force"]), 0)?;
    same_rows("undo --force", &dump(&lab.live, "t"), &damaged)?;

    // A reviewed plan written to a file, then applied exactly.
    let plan = lab.dir.path().join("plan.json");
    let o = lab.run(&["repair", s(&script), "--plan-out", s(&plan)], &[]);
    exited("repair --plan-out", &o, 0)?;
    let o = lab.run(
        &["repair", s(&script), "--apply", "--plan", s(&plan), "--yes"],
        &[],
    );
    exited("repair --apply --plan", &o, 0)?;
    same_rows("repair --apply --plan", &dump(&lab.live, "t"), &orig)
}

#[test]
fn every_value_kind_round_trips_through_every_path() {
    prop_check(prop_config(CASES), Case::strategy(MAX_ROWS), every_path);
}
