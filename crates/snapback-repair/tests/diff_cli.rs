//! `snapback diff` through the real binary: what it prints, what it skips
//! and its exit codes. The snapshot side is given with --snapshot-db.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::util::{snapback, Out, Pair};

const LIMIT: Duration = Duration::from_secs(60);

/// The diff of two databases, the snapshot side given with --snapshot-db.
impl Pair {
    /// `snapback diff` of the pair through the real binary.
    pub fn cli_diff(&self, extra: &[&str]) -> Out {
        let repo = self.dir.path().join("no-repo");
        let snap = self.snap.to_string_lossy().into_owned();
        let live = self.live.to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec![];
        let json = extra.contains(&"--json");
        if json {
            args.push("--json");
        }
        args.extend(["diff", "--snapshot-db", &snap, &live]);
        args.extend(extra.iter().filter(|a| **a != "--json"));
        snapback(&repo, &args, &[], LIMIT)
    }
}

pub fn json_lines(o: &Out) -> Vec<serde_json::Value> {
    o.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Runs `sql` in the real sqlite3 shell against `db`.
pub fn sqlite3_shell(db: &Path, sql: &[u8]) {
    use std::io::Write;
    let mut child = std::process::Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the sqlite3 shell is needed (apt-get install sqlite3)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql)
        .expect("write sql");
    let out = child.wait_with_output().expect("sqlite3");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn diff_sql_prints_nothing_for_a_table_with_null_keys_and_goes_on_with_the_others() {
    let d = Pair::new(
        "CREATE TABLE u2(email TEXT PRIMARY KEY, v); CREATE TABLE zz(id INTEGER PRIMARY KEY, v);",
        "INSERT INTO u2 VALUES(NULL,'n1'),(NULL,'n2'); INSERT INTO zz VALUES(1,'a');",
        "INSERT INTO u2 VALUES(NULL,'zz'),(NULL,'zz'); INSERT INTO zz VALUES(1,'b');",
    );
    let o = d.cli_diff(&["--sql"]);
    assert_eq!(o.code, 4, "a table not compared: incomplete {o:?}");
    assert!(!o.stdout.contains("UPDATE \"u2\""), "{o:?}");
    assert!(
        o.stdout.contains("UPDATE \"zz\" SET \"v\"='a'"),
        "the other table goes on: {o:?}"
    );
    assert!(
        o.stderr.contains("table u2 was not compared") && o.stderr.contains("more than one row"),
        "{o:?}"
    );
    // Applying the output changes only the table that was compared.
    sqlite3_shell(&d.live, o.stdout.as_bytes());
    let c = Connection::open(&d.live).expect("live");
    let n: i64 = c
        .query_row("SELECT count(*) FROM u2 WHERE v = 'zz'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2, "u2 untouched");

    let o = d.cli_diff(&["--json"]);
    assert_eq!(o.code, 4, "{o:?}");
    let lines = json_lines(&o);
    assert!(
        lines
            .iter()
            .all(|l| l["table"] != "u2" || l["type"] == "skipped"),
        "{o:?}"
    );
    let sum = lines.last().expect("summary");
    assert_eq!(sum["type"], "summary");
    assert_eq!(sum["skipped"][0]["table"], "u2", "{sum}");
    assert!(sum["skipped"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("more than one row")));

    let o = d.cli_diff(&["--table", "u2"]);
    assert_eq!(o.code, 4, "a named table that cannot be paired: {o:?}");
    assert!(!o.stdout.contains("~"), "{o:?}");
}

/// Every row of `table` (columns k, v) as hex and storage class of each.
pub fn exact_rows(db: &Path, table: &str) -> Vec<(String, String, String)> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare(&format!(
            "SELECT typeof(k) || ':' || hex(k), hex(v), typeof(v) FROM \"{table}\" ORDER BY k"
        ))
        .expect("prepare");
    let v = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("rows");
    v
}

const AWKWARD: &[&[u8]] = &[
    b"line one\r\nline two\r\n",
    b"lone\rcr",
    b"nul\0inside",
    b"\x1b[31mred\x1b[0m\x07",
    b"tab\there",
    b"it's \"quoted\" -- not a comment; /* nor this */",
    b"",
    "sep\u{2028}para\u{2029}bom\u{feff}c1\u{85}".as_bytes(),
    b"\xff\xfe not utf-8 \xc3",
    b"trailing newline\n",
];

/// `diff --sql` piped into the real sqlite3 shell gives back every byte of
/// text holding CR LF, NUL, ESC, BEL, U+2028, a BOM or invalid UTF-8, in
/// values and in keys; the terminal diff never prints those raw.
#[test]
fn diff_sql_survives_the_sqlite3_shell_byte_for_byte_with_control_characters() {
    let d = Pair::new("CREATE TABLE t(k TEXT PRIMARY KEY, v TEXT);", "", "");
    {
        let s = Connection::open(&d.snap).expect("snap");
        let l = Connection::open(&d.live).expect("live");
        for (i, v) in AWKWARD.iter().enumerate() {
            let ins = "INSERT INTO t VALUES(CAST(?1 AS TEXT), CAST(?2 AS TEXT))";
            // The value as text, and as a key (only in the snapshot: inserted).
            s.execute(
                ins,
                rusqlite::params![format!("v{i}").into_bytes(), v.to_vec()],
            )
            .expect("snap value");
            s.execute(ins, rusqlite::params![v.to_vec(), b"as key".to_vec()])
                .expect("snap key");
            l.execute(
                ins,
                rusqlite::params![format!("v{i}").into_bytes(), b"damaged".to_vec()],
            )
            .expect("live value");
        }
        // A live-only row keyed by awkward text: deleted by the script.
        l.execute(
            "INSERT INTO t VALUES(CAST(?1 AS TEXT), 'extra')",
            rusqlite::params![b"del\r\n\x1b\xff".to_vec()],
        )
        .expect("extra");
    }
    let o = d.cli_diff(&["--sql"]);
    assert_eq!(o.code, 3, "{o:?}");
    for bad in ['\r', '\0', '\x1b', '\x07', '\u{2028}', '\u{feff}'] {
        assert!(!o.stdout.contains(bad), "raw {bad:?} in the SQL: {o:?}");
    }
    assert_eq!(o.stdout.lines().count(), 2 * AWKWARD.len() + 1, "{o:?}");
    sqlite3_shell(&d.live, o.stdout.as_bytes());
    assert_eq!(exact_rows(&d.live, "t"), exact_rows(&d.snap, "t"));
    assert_eq!(d.cli_diff(&[]).code, 0, "the diff now finds nothing");

    // The terminal rendering escapes them too.
    Connection::open(&d.live)
        .expect("live")
        .execute_batch("UPDATE t SET v = 'x'")
        .expect("damage");
    let o = d.cli_diff(&[]);
    assert_eq!(o.code, 3, "{o:?}");
    for bad in ['\r', '\0', '\x1b', '\x07', '\u{2028}', '\u{feff}'] {
        assert!(
            !o.stdout.contains(bad),
            "raw {bad:?} on the terminal: {o:?}"
        );
    }
    assert!(
        o.stdout.contains("'line one'||char(13,10)||'line two'"),
        "{o:?}"
    );
    assert!(
        o.stdout.lines().all(|l| !l.starts_with("line two")),
        "{o:?}"
    );
}

/// Text with thousands of control characters in a row, or thousands of
/// lines, once made `diff --sql` print a `char(..)` of thousands of
/// arguments (the sqlite3 shell takes 127) or a `||` chain deeper than
/// SQLite's limit of 1000; the shell refused the script. Found by the
/// property test (every_path.rs).
#[test]
fn diff_sql_of_long_control_runs_and_many_lines_runs_in_the_sqlite3_shell() {
    let d = Pair::new("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);", "", "");
    let texts: [Vec<u8>; 3] = [
        vec![0u8; 3371],
        b"\x1b\x07".repeat(2000),
        b"line\r\n".repeat(3000),
    ];
    {
        let s = Connection::open(&d.snap).expect("snap");
        let l = Connection::open(&d.live).expect("live");
        for (k, t) in texts.iter().enumerate() {
            s.execute(
                "INSERT INTO t VALUES(?1, CAST(?2 AS TEXT))",
                rusqlite::params![k as i64, t],
            )
            .expect("snap");
            // One row changed in live (an UPDATE), the others missing (INSERTs).
            if k == 0 {
                l.execute("INSERT INTO t VALUES(0, 'damaged')", [])
                    .expect("live");
            }
        }
    }
    let o = d.cli_diff(&["--sql"]);
    assert_eq!(o.code, 3, "{o:?}");
    sqlite3_shell(&d.live, o.stdout.as_bytes());
    assert_eq!(exact_rows(&d.live, "t"), exact_rows(&d.snap, "t"));
}

/// The sqlite3 shell of SQLite 3.40 reads the shortest decimal of about
/// 1 double in 4000 one unit off (15.64771424004, 5e+125), and almost any
/// decimal below 1e-289 wrong; `diff --sql` printed REALs in that form.
/// Found by the property test (every_path.rs, PROPTEST_RNG_SEED=7).
#[test]
fn diff_sql_reals_read_back_bit_for_bit_in_the_sqlite3_shell() {
    let d = Pair::new("CREATE TABLE t(k INTEGER PRIMARY KEY, v);", "", "");
    let mut rng = crate::lab::Rng::new(0x3401);
    let mut reals: Vec<f64> = vec![
        15.64771424004,
        -165.93957245,
        1.164e-10,
        5e125,
        -4e126,
        2.046167482828009e-308,
        8.068260470757224e-295,
        1e-289,
        5e-324,
        -5e-324,
        f64::MIN_POSITIVE,
        f64::MAX,
        0.1,
        -0.0,
    ];
    while reals.len() < 6000 {
        let r = match reals.len() % 3 {
            0 => f64::from_bits(rng.next()),
            // subnormals and tiny normals
            1 => f64::from_bits(rng.next() >> 10 | (rng.next() & 1) << 63),
            // short decimals of any size
            _ => format!(
                "{}.{}e{}",
                rng.below(1000),
                rng.below(100_000),
                rng.below(600) as i64 - 310
            )
            .parse()
            .expect("a decimal"),
        };
        if r.is_finite() {
            reals.push(r);
        }
    }
    {
        let s = Connection::open(&d.snap).expect("snap");
        let l = Connection::open(&d.live).expect("live");
        s.execute_batch("BEGIN").expect("begin");
        for (k, r) in reals.iter().enumerate() {
            s.execute(
                "INSERT INTO t VALUES(?1, ?2)",
                rusqlite::params![k as i64, r],
            )
            .expect("snap");
            // Every other row changed in live (an UPDATE), the rest missing.
            if k % 2 == 0 {
                l.execute("INSERT INTO t VALUES(?1, 'damaged')", [k as i64])
                    .expect("live");
            }
        }
        s.execute_batch("COMMIT").expect("commit");
    }
    let o = d.cli_diff(&["--sql"]);
    assert_eq!(o.code, 3, "{o:?}");
    sqlite3_shell(&d.live, o.stdout.as_bytes());
    let (snap, live) = (
        crate::lab::dump(&d.snap, "t"),
        crate::lab::dump(&d.live, "t"),
    );
    let off: Vec<_> = snap.iter().zip(&live).filter(|(a, b)| a != b).collect();
    assert!(
        off.is_empty() && snap.len() == live.len(),
        "{} of {} REALs read back otherwise, e.g. {:?}",
        off.len(),
        snap.len(),
        off.first()
    );
}

/// FTS5 and R*Tree rows are compared through the tables' own SELECT, by
/// their ids; virtual tables dropped or created are schema differences; a
/// contentless FTS table is reported as not compared, and the exit code
/// never says the databases match while something was skipped.
#[test]
fn whole_database_diff_reports_virtual_tables_compares_fts5_and_rtree_rows_and_never_claims_a_match(
) {
    let schema = "CREATE VIRTUAL TABLE docs USING fts5(title, body);
         CREATE VIRTUAL TABLE boxes USING rtree(id, minx, maxx);
         CREATE VIRTUAL TABLE gone USING fts5(x);
         CREATE TABLE plain(id INTEGER PRIMARY KEY, v);";
    let rows = "INSERT INTO docs(rowid, title, body) VALUES(5,'a','b'),(7,'c','d');
         INSERT INTO boxes VALUES(1,0.5,1.5),(2,1,2);
         INSERT INTO plain VALUES(1,'x');";
    let d = Pair::new(schema, rows, rows);
    Connection::open(&d.live)
        .expect("live")
        .execute_batch(
            "DELETE FROM docs WHERE rowid = 7; UPDATE docs SET body = 'B' WHERE rowid = 5;
             DELETE FROM boxes WHERE id = 2; DROP TABLE gone;
             CREATE VIRTUAL TABLE added USING rtree(id, a, b);",
        )
        .expect("damage");
    let o = d.cli_diff(&["--json"]);
    assert_eq!(o.code, 3, "differences, nothing skipped: {o:?}");
    let lines = json_lines(&o);
    let schema_of = |t: &str| {
        lines.iter().any(|l| {
            l["type"] == "schema"
                && l["table"] == t
                && l["what"]
                    .as_str()
                    .is_some_and(|w| w.contains("virtual table"))
        })
    };
    assert!(schema_of("gone") && schema_of("added"), "{o:?}");
    let counts = |t: &str| {
        lines
            .iter()
            .find(|l| l["type"] == "table" && l["table"] == t)
            .map(|l| l["counts"].clone())
            .unwrap_or_else(|| panic!("no summary of {t}: {o:?}"))
    };
    assert_eq!(
        (
            counts("docs")["changed"].as_u64(),
            counts("docs")["only_in_snapshot"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(counts("boxes")["only_in_snapshot"].as_u64(), Some(1));
    let sum = lines.last().expect("summary");
    assert_eq!(sum["schema_differences"], 2, "{sum}");

    // The SQL puts the rows back; the FTS index stays consistent.
    let o = d.cli_diff(&["--sql"]);
    assert!(
        o.stdout
            .contains("INSERT INTO \"docs\"(\"rowid\",\"title\",\"body\") VALUES(7,'c','d');"),
        "{o:?}"
    );
    sqlite3_shell(&d.live, o.stdout.as_bytes());
    let c = Connection::open(&d.live).expect("live");
    c.execute_batch("INSERT INTO docs(docs) VALUES('integrity-check');")
        .expect("fts5 index consistent");
    let hit: i64 = c
        .query_row("SELECT rowid FROM docs WHERE docs MATCH 'd'", [], |r| {
            r.get(0)
        })
        .expect("match");
    assert_eq!(hit, 7);
    drop(c);
    let o = d.cli_diff(&[]);
    assert_eq!(o.code, 3, "only the schema differences remain: {o:?}");
    assert!(
        o.stderr
            .contains("0 row difference(s), 2 schema difference(s)"),
        "{o:?}"
    );

    // Same schema, same rows, but a contentless FTS table: not a match.
    let d = Pair::new(
        "CREATE VIRTUAL TABLE idx USING fts5(x, content=''); CREATE TABLE plain(id INTEGER PRIMARY KEY);",
        "INSERT INTO idx(rowid, x) VALUES(1, 'one');",
        "",
    );
    let o = d.cli_diff(&[]);
    assert_eq!(o.code, 4, "skipped, so not 0: {o:?}");
    assert!(
        o.stderr
            .contains("table idx was not compared: contentless fts5"),
        "{o:?}"
    );
    let o = d.cli_diff(&["--json"]);
    let sum = json_lines(&o).pop().expect("summary");
    assert_eq!(sum["skipped"][0]["table"], "idx", "{sum}");
}

/// `diff` without SNAP, or with --sql and --json, is bad usage (exit 2); a
/// directory given as LIVE is named as a directory, not "disk I/O error".
#[test]
fn diff_without_snap_is_bad_usage_and_a_directory_as_live_is_named_as_such() {
    let d = Pair::new("CREATE TABLE t(id INTEGER PRIMARY KEY);", "", "");
    let repo = d.dir.path().join("no-repo");
    let live = d.live.to_string_lossy().into_owned();
    let o = snapback(&repo, &["diff", &live], &[], LIMIT);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("give SNAP and LIVE_DB"), "{o:?}");
    let o = d.cli_diff(&["--sql", "--json"]);
    assert_eq!(o.code, 2, "{o:?}");
    let dir = d.dir.path().to_string_lossy().into_owned();
    let snap = d.snap.to_string_lossy().into_owned();
    let o = snapback(&repo, &["diff", "--snapshot-db", &snap, &dir], &[], LIMIT);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("is a directory, not a database file"),
        "{o:?}"
    );
    assert!(!o.stderr.contains("disk I/O"), "{o:?}");
}
