//! Property test of `diff` output: random rows holding every kind of
//! SQLite value (REAL edge cases, text with CR/LF/NUL/ESC and invalid
//! UTF-8, blobs, NULLs, big integers) through the real binary. `--json`
//! must report exactly the values each side holds, and `--sql` piped into
//! the real sqlite3 shell must turn the live table into the snapshot's, bit
//! for bit. Seeded, bounded: a few seconds.

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use snapback_repair::{same_value, Value};

use crate::diff_cli::{json_lines, sqlite3_shell};
use crate::lab::{dump, Exact, Rng};
use crate::util::Pair;

const CASES: u64 = 12;
const ROWS: i64 = 40;
const COLS: [&str; 3] = ["a", "b", "c"];

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[(rng.next() % xs.len() as u64) as usize]
}

fn value(rng: &mut Rng) -> Value {
    const TEXT: &[&[u8]] = &[
        b"plain",
        b"\r\n",
        b"\r",
        b"\n",
        b"\0",
        b"\x1b[1m",
        b"\x07",
        b"'",
        b"\"",
        b"--",
        b"\xff\xfe",
        b"\xc3",
        "é€😀".as_bytes(),
        "\u{2028}\u{feff}\u{85}".as_bytes(),
        b"",
        b" ",
    ];
    match rng.next() % 5 {
        0 => Value::Null,
        1 => {
            let (r1, r2) = (rng.next() as i64, (rng.next() % 1000) as i64);
            Value::Integer(*pick(
                rng,
                &[i64::MIN, i64::MAX, 0, -1, (1 << 53) + 1, r1, r2],
            ))
        }
        2 => {
            let d = rng.double();
            let (e, m) = (rng.next() % 2046 + 1, rng.next());
            Value::Real(*pick(
                rng,
                &[
                    0.0,
                    -0.0,
                    5e-324,
                    -2.2250738585072014e-308,
                    f64::MIN_POSITIVE,
                    f64::MAX,
                    f64::MIN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    0.1,
                    123456789.12345679,
                    -929346.1975191133,
                    d,
                    f64::from_bits((m & !(0x7ff << 52)) | (e << 52)),
                ],
            ))
        }
        3 => {
            let n = rng.next() % 5;
            Value::Text((0..n).flat_map(|_| pick(rng, TEXT).to_vec()).collect())
        }
        _ => {
            let n = rng.next() % 12;
            Value::Blob((0..n).map(|_| rng.next() as u8).collect())
        }
    }
}

/// A value that SQLite does not consider equal to `old` (so the diff must
/// report it): 1 and 1.0, or 0.0 and -0.0, are the same value to SQLite.
fn different(rng: &mut Rng, old: &Value) -> Value {
    loop {
        let v = value(rng);
        if !same_value(v.as_ref(), old.as_ref()) {
            return v;
        }
    }
}

fn insert(c: &Connection, k: i64, vals: &[Value]) {
    c.execute(
        "INSERT INTO t(k, a, b, c) VALUES(?1, ?2, ?3, ?4)",
        rusqlite::params![k, vals[0], vals[1], vals[2]],
    )
    .expect("insert");
}

fn exact(v: &Value) -> Exact {
    Exact::of(v.as_ref())
}

/// The row `k` of `db` as exact values of a, b, c.
fn row_of(rows: &[Vec<Exact>], k: i64) -> Option<Vec<Exact>> {
    rows.iter()
        .find(|r| r[0] == Exact::Integer(k))
        .map(|r| r[2..].to_vec())
}

#[test]
fn diff_json_and_sql_give_back_every_kind_of_value_exactly() {
    for case in 0..CASES {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (case + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let d = Pair::new("CREATE TABLE t(k INTEGER PRIMARY KEY, a, b, c);", "", "");
        {
            let s = Connection::open(&d.snap).expect("snap");
            let l = Connection::open(&d.live).expect("live");
            for k in 0..ROWS {
                let row: Vec<Value> = (0..3).map(|_| value(&mut rng)).collect();
                insert(&s, k, &row);
                match rng.next() % 4 {
                    0 => {} // deleted in live
                    1 => {
                        let mut live = row.clone();
                        let i = (rng.next() % 3) as usize;
                        live[i] = different(&mut rng, &row[i]);
                        insert(&l, k, &live);
                    }
                    _ => insert(&l, k, &row),
                }
            }
            for k in ROWS..ROWS + 5 {
                let row: Vec<Value> = (0..3).map(|_| value(&mut rng)).collect();
                insert(&l, k, &row);
            }
        }
        let snap_rows = dump(&d.snap, "t");
        let live_rows = dump(&d.live, "t");

        let o = d.cli_diff(&["--json"]);
        assert_eq!(o.code, 3, "case {case}: {o:?}");
        let mut reported = 0;
        for l in json_lines(&o).iter().filter(|l| l["type"] == "row") {
            reported += 1;
            let k = l["key"]["k"].as_i64().expect("integer key");
            for (side, rows) in [("snapshot", &snap_rows), ("live", &live_rows)] {
                let Some(obj) = l.get(side) else { continue };
                let got: Vec<Exact> = COLS
                    .iter()
                    .map(|c| {
                        let v: Value = serde_json::from_value(obj[*c].clone())
                            .unwrap_or_else(|e| panic!("case {case}: {side} {c}: {e}: {l}"));
                        exact(&v)
                    })
                    .collect();
                assert_eq!(
                    Some(got),
                    row_of(rows, k),
                    "case {case}: {side} row {k}: {l}"
                );
            }
        }
        assert!(reported >= 5, "case {case}: the extra live rows at least");

        let o = d.cli_diff(&["--sql"]);
        assert_eq!(o.code, 3, "case {case}: {o:?}");
        sqlite3_shell(&d.live, o.stdout.as_bytes());
        let after = dump(&d.live, "t");
        assert_eq!(
            after, snap_rows,
            "case {case}: the sqlite3 shell applied:\n{}",
            o.stdout
        );
        assert_eq!(d.cli_diff(&[]).code, 0, "case {case}");
    }
}

#[test]
fn exact_dump_tells_negative_zero_apart() {
    // The comparison above would miss a lost sign otherwise.
    assert_ne!(
        Exact::of(ValueRef::Real(-0.0)),
        Exact::of(ValueRef::Real(0.0))
    );
}
