//! Property test of `diff` between two database files (`--snapshot-db`):
//! random rows holding every kind of SQLite value (lab.rs's generator)
//! through the real binary. `--json` must report exactly the values each
//! side holds, and `--sql` piped into the real sqlite3 shell must turn the
//! live table into the snapshot's, bit for bit. every_path.rs takes the
//! same rows through a repository's snapshot and every other path.

use proptest::test_runner::TestCaseError;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::every_path::{check_diff_json, check_diff_sql, exited};
use crate::lab::{dump, prop_check, prop_config, Case, Exact};
use crate::util::Pair;

const CASES: u32 = 12;
const MAX_ROWS: usize = 40;

fn diff_of_two_files(case: Case) -> Result<(), TestCaseError> {
    let d = Pair::new("", "", "");
    case.fill(&Connection::open(&d.snap).expect("snap"));
    let l = Connection::open(&d.live).expect("live");
    case.fill(&l);
    case.damage(&l);
    drop(l);
    let snap_rows = dump(&d.snap, "t");
    let live_rows = dump(&d.live, "t");
    check_diff_json(&d.cli_diff(&["--json"]), &snap_rows, &live_rows)?;
    let o = d.cli_diff(&["--sql"]);
    check_diff_sql(&o, &d.live, &snap_rows)?;
    exited(
        "diff after the sqlite3 shell ran --sql",
        &d.cli_diff(&[]),
        0,
    )
}

#[test]
fn diff_json_and_sql_give_back_every_kind_of_value_exactly() {
    prop_check(
        prop_config(CASES),
        Case::strategy(MAX_ROWS),
        diff_of_two_files,
    );
}

#[test]
fn exact_dump_tells_negative_zero_apart() {
    // The comparison above would miss a lost sign otherwise.
    assert_ne!(
        Exact::of(ValueRef::Real(-0.0)),
        Exact::of(ValueRef::Real(0.0))
    );
}
