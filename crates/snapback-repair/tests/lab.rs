//! A small lab for value-exactness tests: a repository, a live database, a
//! snapshot of it, restore scripts, an exact dump of a table (REALs by
//! their bits, text and blobs by their bytes, with the storage class), and
//! the one generator of random SQLite values (`value()`, a proptest
//! strategy) that the property tests share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::util::{snapback, Out};
pub use snapback_testkit::Rng;

pub const LIMIT: Duration = Duration::from_secs(120);

/// One stored value, compared exactly: a REAL by its bits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exact {
    Null,
    Integer(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Exact {
    pub fn of(v: ValueRef<'_>) -> Exact {
        match v {
            ValueRef::Null => Exact::Null,
            ValueRef::Integer(i) => Exact::Integer(i),
            ValueRef::Real(r) => Exact::Real(r.to_bits()),
            ValueRef::Text(t) => Exact::Text(t.to_vec()),
            ValueRef::Blob(b) => Exact::Blob(b.to_vec()),
        }
    }
}

impl Exact {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Exact::Null => ValueRef::Null,
            Exact::Integer(i) => ValueRef::Integer(*i),
            Exact::Real(b) => ValueRef::Real(f64::from_bits(*b)),
            Exact::Text(t) => ValueRef::Text(t),
            Exact::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// The storage class, as SQLite's typeof() names it.
    pub fn class(&self) -> &'static str {
        match self {
            Exact::Null => "null",
            Exact::Integer(_) => "integer",
            Exact::Real(_) => "real",
            Exact::Text(_) => "text",
            Exact::Blob(_) => "blob",
        }
    }
}

/// Every row of `table` (all columns, `rowid` first), in rowid order. Each
/// value's storage class is checked against SQLite's typeof() too.
pub fn dump(db: &Path, table: &str) -> Vec<Vec<Exact>> {
    let c = Connection::open(db).expect("open");
    let cols: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .and_then(|mut st| {
            st.query_map([table], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .expect("columns");
    let mut sql = String::from("SELECT rowid, typeof(rowid)");
    for n in &cols {
        let n = n.replace('"', "\"\"");
        sql.push_str(&format!(", \"{n}\", typeof(\"{n}\")"));
    }
    let mut st = c
        .prepare(&format!("{sql} FROM \"{table}\" ORDER BY rowid"))
        .expect("prepare");
    let n = st.column_count() / 2;
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                let v = Exact::of(r.get_ref(2 * i)?);
                let class: String = r.get(2 * i + 1)?;
                assert_eq!(class, v.class(), "typeof() of column {i} of {table}");
                Ok(v)
            })
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub live: PathBuf,
}

pub fn ok(o: &Out) {
    assert_eq!(o.code, 0, "{o:?}");
}

impl Lab {
    /// A repository and a live database made by `setup`.
    pub fn new(setup: impl FnOnce(&Connection)) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let live = dir.path().join("live.db");
        let c = Connection::open(&live).expect("open live");
        setup(&c);
        drop(c);
        let lab = Lab { dir, repo, live };
        ok(&lab.run(&["init"], &[]));
        lab
    }

    /// A repository and the drill's database (fixtures/make-drill.py, its
    /// phase `init`) at `name` in the lab's directory: the setup the drill
    /// tests (e2e.rs) and the forensics tests share.
    pub fn drill(name: &str) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let live = dir.path().join(name);
        crate::e2e::fixture("init", &live);
        let lab = Lab { dir, repo, live };
        ok(&lab.run(&["init"], &[]));
        lab
    }

    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        snapback(&self.repo, args, env, LIMIT)
    }

    pub fn live_str(&self) -> &str {
        self.live.to_str().expect("utf8 path")
    }

    /// Snapshots the live database; returns the snapshot id.
    pub fn snapshot(&self) -> String {
        let o = self.run(&["snapshot", self.live_str()], &[]);
        ok(&o);
        o.stdout.trim().to_string()
    }

    pub fn exec(&self, sql: &str) {
        Connection::open(&self.live)
            .expect("open live")
            .execute_batch(sql)
            .expect(sql);
    }

    /// Writes a restore script for `snap` and the live database, with
    /// `body` ([[table]] and [[sql]] entries); returns its path.
    pub fn script(&self, name: &str, snap: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "snapshot = \"{snap}\"\nlive = \"{}\"\n{body}",
                self.live.display()
            ),
        )
        .expect("write script");
        p
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        let o = self.run(&["--json", "audit"], &[]);
        ok(&o);
        serde_json::from_str(&o.stdout).expect("audit json")
    }

    /// `undo` of the newest repair in the audit log (`--yes`, then
    /// `flags`).
    pub fn undo_newest(&self, flags: &[&str]) -> Out {
        let id = self.last_id();
        let mut args = vec!["undo", id.as_str(), "--yes"];
        args.extend(flags);
        self.run(&args, &[])
    }

    /// The repair id of the last audit entry.
    pub fn last_id(&self) -> String {
        self.audit()
            .last()
            .and_then(|e| e["entry"]["repair_id"].as_str().map(str::to_string))
            .expect("an audit entry")
    }
}

/// The number of cases of a property test: `default`, or PROPTEST_CASES;
/// failures shrink for at most PROPTEST_MAX_SHRINK_ITERS (default 4096)
/// steps and PROPTEST_MAX_SHRINK_TIME (default 120000 ms). The seed is fixed (the same cases every run, so that CI does not
/// fail at random) unless PROPTEST_RNG_SEED is set; nothing is written to
/// the source tree.
pub fn prop_config(default: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let set = |v: &str| std::env::var_os(v).is_some();
    let mut c = Config::default();
    if !set("PROPTEST_CASES") {
        c.cases = default;
    }
    if !set("PROPTEST_MAX_SHRINK_ITERS") {
        c.max_shrink_iters = 4096;
    }
    if !set("PROPTEST_MAX_SHRINK_TIME") {
        c.max_shrink_time = 120_000; // ms
    }
    if !set("PROPTEST_RNG_SEED") {
        c.rng_seed = RngSeed::Fixed(0x5eed_5a9b_ac00_0016);
    }
    c.failure_persistence = None;
    c
}

/// Runs the property `test` over `strategy` with `config`; a failure
/// panics with the reason (which names the path that broke) and the
/// minimal failing input that shrinking found.
pub fn prop_check<S: proptest::strategy::Strategy>(
    config: proptest::test_runner::Config,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = config.cases;
    let mut runner = proptest::test_runner::TestRunner::new(config);
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(proptest::test_runner::TestError::Fail(why, minimal)) => {
            panic!("property failed ({cases} cases): {why}\nminimal failing input:\n{minimal:#?}")
        }
        Err(e) => panic!("property test aborted: {e}"),
    }
}

/// Pieces of text that break naive quoting, terminals and UTF-8 decoders;
/// `text()` joins a few of them.
pub const TEXT_PIECES: &[&[u8]] = &[
    b"plain",
    b"\r\n",
    b"\r",
    b"\n",
    b"\0",
    b"\x1b[1m",
    b"\x07",
    b"\t",
    b"'",
    b"\"",
    b"--",
    b";",
    b"\xff\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    "é€😀".as_bytes(),
    "\u{2028}\u{feff}\u{85}".as_bytes(),
    b"",
    b" ",
];

/// REALs that break printers and parsers: signed zeros, subnormals, the
/// extremes, infinities, integral values, and values that need all 17
/// significant digits to read back.
pub const EDGE_REALS: &[f64] = &[
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.225073858507201e-308,
    -2.2250738585072014e-308,
    f64::MIN_POSITIVE,
    f64::MAX,
    f64::MIN,
    f64::EPSILON,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1.0,
    -1.0,
    1e15,
    1e20,
    9.223_372_036_854_776e18, // 2^63, just past i64::MAX
    9007199254740993.0,
    0.1,
    0.30000000000000004,
    1.0000000000000002,
    123456789.12345679,
    -929346.1975191133,
    4.35,
    2.675,
];

/// Integers at the edges: of i64, and of what a double holds exactly.
pub const EDGE_INTEGERS: &[i64] = &[
    0,
    -1,
    1,
    i64::MIN,
    i64::MAX,
    i64::MIN + 1,
    (1 << 53) + 1,
    -(1 << 53) - 1,
];

/// Any INTEGER: an edge or random.
pub fn integer() -> impl proptest::strategy::Strategy<Value = i64> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::sample::select(EDGE_INTEGERS),
        any::<i64>(),
        -1000i64..1000,
    ]
}

/// Any REAL that SQLite stores (NaN is stored as NULL): an edge, random
/// bits (every exponent), a subnormal, or a plain double.
pub fn real() -> impl proptest::strategy::Strategy<Value = f64> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::sample::select(EDGE_REALS),
        any::<u64>()
            .prop_map(f64::from_bits)
            .prop_filter("SQLite stores NaN as NULL", |r| !r.is_nan()),
        (any::<bool>(), 1u64..(1 << 52))
            .prop_map(|(neg, m)| f64::from_bits(m | (u64::from(neg) << 63))),
        -1e6f64..1e6,
    ]
}

/// TEXT as bytes: a few of TEXT_PIECES (so not always UTF-8), sometimes
/// long enough for overflow pages.
pub fn text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(TEXT_PIECES), 0..5)
            .prop_map(|ps| ps.concat()),
        1 => (proptest::sample::select(TEXT_PIECES), 1000usize..6000)
            .prop_map(|(p, n)| p.repeat(n / p.len().max(1) + 1)),
    ]
}

/// A BLOB: short (empty included), or large-ish (past several overflow
/// pages), of bytes derived from a seed so that shrinking stays cheap.
pub fn blob() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..16),
        1 => (4000usize..70_000, any::<u64>())
            .prop_map(|(n, seed)| snapback_testkit::random_bytes(n, seed)),
    ]
}

/// Any SQLite value of every storage class, edge cases weighted up.
/// Shrinks towards NULL, then towards simpler values of the same class.
pub fn value() -> impl proptest::strategy::Strategy<Value = snapback_repair::Value> {
    use proptest::prelude::*;
    use snapback_repair::Value;
    prop_oneof![
        1 => Just(Value::Null),
        2 => integer().prop_map(Value::Integer),
        3 => real().prop_map(Value::Real),
        3 => text().prop_map(Value::Text),
        2 => blob().prop_map(Value::Blob),
    ]
}

/// The SQL expression that stores `v` bound as parameter `n`, and what to
/// bind: TEXT goes in as a BLOB cast to TEXT, so that bytes that are not
/// UTF-8 (and NULs) are stored as they are.
pub fn stored_as(v: &snapback_repair::Value, n: usize) -> (String, snapback_repair::Value) {
    use snapback_repair::Value;
    match v {
        Value::Text(t) => (format!("CAST(?{n} AS TEXT)"), Value::Blob(t.clone())),
        v => (format!("?{n}"), v.clone()),
    }
}

/// Inserts a row of `table`: `k` in the first column, then `vals`.
pub fn insert_row(
    c: &Connection,
    table: &str,
    cols: &[&str],
    k: i64,
    vals: &[snapback_repair::Value],
) {
    let bound: Vec<(String, snapback_repair::Value)> = vals
        .iter()
        .enumerate()
        .map(|(i, v)| stored_as(v, i + 2))
        .collect();
    let sql = format!(
        "INSERT INTO \"{table}\"({}) VALUES(?1, {})",
        cols.join(", "),
        bound
            .iter()
            .map(|(e, _)| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&k];
    params.extend(bound.iter().map(|(_, v)| v as &dyn rusqlite::ToSql));
    c.execute(&sql, params.as_slice()).expect("insert");
}

/// The value columns of the property tests' table
/// `t(k INTEGER PRIMARY KEY, a, b, c)`: no type, so no affinity changes
/// what is stored.
pub const COLS: [&str; 3] = ["a", "b", "c"];
pub const TABLE: &str = "CREATE TABLE t(k INTEGER PRIMARY KEY, a, b, c);";

/// What happens to a snapshot row in the live database.
#[derive(Clone, Debug)]
pub enum Damage {
    Keep,
    Delete,
    /// Column `.0` gets `.1` (when it is not exactly the old value; 1 to
    /// 1.0 and 0.0 to -0.0 are changes, which diff and repair must see).
    Change(usize, snapback_repair::Value),
}

/// Random rows of `t` in the snapshot (keys 0, 1, ...), what the incident
/// did to each in the live database, and rows only in live (keys after).
#[derive(Clone)]
pub struct Case {
    pub rows: Vec<Vec<snapback_repair::Value>>,
    pub damage: Vec<Damage>,
    pub extra: Vec<Vec<snapback_repair::Value>>,
}

impl Case {
    /// At most `max_rows` snapshot rows, every kind of value in them.
    pub fn strategy(max_rows: usize) -> impl proptest::strategy::Strategy<Value = Case> {
        use proptest::collection::vec;
        use proptest::prelude::*;
        let row = || vec(value(), COLS.len());
        let damage = prop_oneof![
            2 => Just(Damage::Keep),
            1 => Just(Damage::Delete),
            3 => (0..COLS.len(), value()).prop_map(|(i, v)| Damage::Change(i, v)),
        ];
        (
            vec(row(), 0..=max_rows),
            vec(damage, 0..=max_rows),
            vec(row(), 0..=3),
        )
            .prop_map(|(rows, damage, extra)| Case {
                rows,
                damage,
                extra,
            })
    }

    /// Creates `t` in `c` with the snapshot's rows.
    pub fn fill(&self, c: &Connection) {
        c.execute_batch(TABLE).expect("schema");
        for (k, r) in self.rows.iter().enumerate() {
            insert_row(c, "t", &["k", "a", "b", "c"], k as i64, r);
        }
    }

    /// Does to `t` in `c` (filled by `fill`) what the incident did.
    pub fn damage(&self, c: &Connection) {
        use snapback_repair::same_value;
        for (k, (r, d)) in self.rows.iter().zip(&self.damage).enumerate() {
            match d {
                Damage::Keep => {}
                Damage::Delete => {
                    c.execute("DELETE FROM t WHERE k = ?1", [k as i64])
                        .expect("delete");
                }
                Damage::Change(i, v) if !same_value(v.as_ref(), r[*i].as_ref()) => {
                    let (expr, bound) = stored_as(v, 2);
                    c.execute(
                        &format!("UPDATE t SET \"{}\" = {expr} WHERE k = ?1", COLS[*i]),
                        rusqlite::params![k as i64, bound],
                    )
                    .expect("update");
                }
                Damage::Change(..) => {}
            }
        }
        for (j, r) in self.extra.iter().enumerate() {
            insert_row(
                c,
                "t",
                &["k", "a", "b", "c"],
                (self.rows.len() + j) as i64,
                r,
            );
        }
    }
}

/// A value as a person reads it in a failure: text and blobs escaped (and
/// long ones cut), REALs with their bits.
pub fn show(v: &snapback_repair::Value) -> String {
    use snapback_repair::Value;
    let bytes = |b: &[u8]| {
        let cut = &b[..b.len().min(48)];
        let more = if b.len() > cut.len() {
            format!("… ({} bytes)", b.len())
        } else {
            String::new()
        };
        (cut.escape_ascii().to_string(), more)
    };
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => format!("{i}"),
        Value::Real(r) => format!("{r:e} (REAL 0x{:016x})", r.to_bits()),
        Value::Text(t) => {
            let (s, more) = bytes(t);
            format!("TEXT b\"{s}\"{more}")
        }
        Value::Blob(b) => {
            let (s, more) = bytes(b);
            format!("BLOB b\"{s}\"{more}")
        }
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |r: &[snapback_repair::Value]| r.iter().map(show).collect::<Vec<_>>().join(", ");
        for (k, r) in self.rows.iter().enumerate() {
            let d = match self.damage.get(k).unwrap_or(&Damage::Keep) {
                Damage::Keep => "kept".to_string(),
                Damage::Delete => "deleted in live".to_string(),
                Damage::Change(i, v) => format!("live {} = {}", COLS[*i], show(v)),
            };
            writeln!(f, "  snapshot row k={k}: [{}]; {d}", row(r))?;
        }
        for (j, r) in self.extra.iter().enumerate() {
            writeln!(f, "  live-only row k={}: [{}]", self.rows.len() + j, row(r))?;
        }
        Ok(())
    }
}
