//! Record-level diff: pairing, SQLite value semantics, awkward schemas, and
//! the property that applying `sql_for` output makes both sides equal.

use rusqlite::Connection;
use snapback_repair::{sql_for, DiffKind, KeySource, TableSelection, Value};

use crate::util::{diff_conns, sel, Pair};

#[test]
fn reports_only_in_each_side_and_column_changes() {
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v REAL, b BLOB);",
        "INSERT INTO t VALUES(1,'a',1.0,x'00'),(2,'b',2,NULL),(3,'c',3.5,x'ff');",
        "INSERT INTO t VALUES(1,'a',1,x'00'),(2,'B',2,NULL),(4,'d',NULL,NULL);",
    );
    let (t, rows, c) = p.diff(&sel("t")).expect("diff");
    assert_eq!(t.key.source, KeySource::PrimaryKey);
    assert_eq!(
        (c.changed, c.only_in_snapshot, c.only_in_live, c.identical),
        (1, 1, 1, 1)
    );
    assert_eq!(rows[0].kind, DiffKind::Changed);
    assert_eq!(rows[0].key, vec![Value::Integer(2)]);
    assert_eq!(rows[0].changed, vec![0], "only name differs");
    assert_eq!(rows[1].kind, DiffKind::OnlyInSnapshot);
    assert_eq!(rows[2].kind, DiffKind::OnlyInLive);
}

#[test]
fn diff_reports_integer_one_changed_to_real_one() {
    // A column without affinity keeps the storage class: 1 and 1.0 are
    // equal to SQLite's `=`, but a repair must give back what was there.
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, x);",
        "INSERT INTO t VALUES(1, 1.0),(2, 1),(3, NULL),(4, x'01'),(5, 7);",
        "INSERT INTO t VALUES(1, 1),(2, '1'),(3, NULL),(4, x'01'),(5, 7);",
    );
    let (_, rows, c) = p.diff(&sel("t")).expect("diff");
    assert_eq!((c.changed, c.identical), (2, 3), "{rows:?}");
    assert_eq!(rows[0].key, vec![Value::Integer(1)]);
    assert_eq!(rows[0].snapshot, Some(vec![Value::Real(1.0)]));
    assert_eq!(rows[0].live, Some(vec![Value::Integer(1)]));
    assert_eq!(rows[1].key, vec![Value::Integer(2)]);
}

#[test]
fn diff_reports_negative_zero_changed_to_zero() {
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, x);",
        "INSERT INTO t VALUES(1, -0.0),(2, 0.0),(3, -0.0);",
        "INSERT INTO t VALUES(1, 0.0),(2, 0.0),(3, -0.0);",
    );
    let (_, rows, c) = p.diff(&sel("t")).expect("diff");
    assert_eq!((c.changed, c.identical), (1, 2), "{rows:?}");
    assert_eq!(rows[0].key, vec![Value::Integer(1)]);
    match rows[0].snapshot.as_deref() {
        Some([Value::Real(r)]) => assert!(r.is_sign_negative(), "{r:?}"),
        other => panic!("snapshot side {other:?}"),
    }
}

#[test]
fn diff_compares_text_values_by_bytes_whatever_their_collation() {
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n TEXT COLLATE NOCASE, r TEXT COLLATE RTRIM);",
        "INSERT INTO t VALUES(1, 'Alice', 'x'),(2, 'bob', 'y  '),(3, 'same', 'same');",
        "INSERT INTO t VALUES(1, 'alice', 'x'),(2, 'bob', 'y'),(3, 'same', 'same');",
    );
    let (_, rows, c) = p.diff(&sel("t")).expect("diff");
    assert_eq!((c.changed, c.identical), (2, 1), "{rows:?}");
    assert_eq!(rows[0].changed, vec![0]);
    assert_eq!(rows[1].changed, vec![1]);
}

#[test]
fn text_is_not_a_number() {
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, x);",
        "INSERT INTO t VALUES(1, 1),(2, 'x'),(3, x'31');",
        "INSERT INTO t VALUES(1, '1'),(2, x'78'),(3, '1');",
    );
    let (_, _, c) = p.diff(&sel("t")).expect("diff");
    assert_eq!((c.changed, c.identical), (3, 0));
}

#[test]
fn nulls_blobs_in_keys_and_mixed_type_keys_pair_in_sqlite_order() {
    // A column without affinity holds any class; SQLite orders NULL <
    // numbers < text < blob, and so must the merge.
    let p = Pair::new(
        "CREATE TABLE t(k NOT NULL, v, UNIQUE(k));",
        "INSERT INTO t VALUES(1,'a'),(2.5,'b'),('1','c'),(x'01','d'),('z','e');",
        "INSERT INTO t VALUES(1.0,'a'),(2.5,'B'),('1','c'),(x'01','d'),(x'02','f');",
    );
    let (t, rows, c) = p.diff(&sel("t")).expect("diff");
    assert!(matches!(t.key.source, KeySource::UniqueIndex(_)));
    // 1 pairs with 1.0 (SQLite's order), but its bytes changed: the key is
    // reported as changed, so that a repair writes back the REAL.
    assert_eq!(c.identical, 2, "{rows:?}");
    assert_eq!((c.changed, c.only_in_snapshot, c.only_in_live), (2, 1, 1));
    let k = rows
        .iter()
        .find(|r| r.kind == DiffKind::Changed && !r.key_changed.is_empty())
        .expect("the key 1 -> 1.0 is a changed row");
    assert_eq!(k.key, vec![Value::Integer(1)]);
    assert_eq!(k.live_key, Some(vec![Value::Real(1.0)]));
}

#[test]
fn composite_keys_without_rowid_and_quoted_identifiers() {
    let p = Pair::new(
        r#"CREATE TABLE "od""d table"("the key" TEXT, "2nd" INT, "sel""ect", PRIMARY KEY("2nd", "the key")) WITHOUT ROWID;"#,
        r#"INSERT INTO "od""d table" VALUES('a',1,'x'),('b',1,'y'),('a',2,'z');"#,
        r#"INSERT INTO "od""d table" VALUES('a',1,'x'),('b',1,'Y'),('c',2,'w');"#,
    );
    let (t, rows, c) = p.diff(&sel("od\"d table")).expect("diff");
    assert_eq!(t.key.columns, vec!["2nd", "the key"]);
    assert_eq!((c.changed, c.only_in_snapshot, c.only_in_live), (1, 1, 1));
    assert_eq!(
        rows[0].key,
        vec![Value::Integer(1), Value::Text(b"b".to_vec())]
    );
}

#[test]
fn nocase_primary_key_orders_and_pairs_like_sqlite() {
    let p = Pair::new(
        "CREATE TABLE t(k TEXT COLLATE NOCASE PRIMARY KEY, v);",
        "INSERT INTO t VALUES('apple',1),('Banana',2),('cherry',3);",
        "INSERT INTO t VALUES('Apple',1),('banana',2),('Cherry',4),('date',5);",
    );
    let (_, rows, c) = p.diff(&sel("t")).expect("diff");
    // Paired case-insensitively, as the table's own key does (nothing is
    // only in the snapshot), but a key spelled differently is a change.
    assert_eq!(
        (c.identical, c.changed, c.only_in_snapshot, c.only_in_live),
        (0, 3, 0, 1),
        "{rows:?}"
    );
    assert_eq!(rows[2].changed, vec![0], "cherry's v differs too");
}

#[test]
fn falls_back_to_rowid_and_says_so_and_accepts_a_declared_key() {
    let p = Pair::new(
        "CREATE TABLE t(code TEXT, v INT);",
        "INSERT INTO t VALUES('x',1),('y',2);",
        "INSERT INTO t VALUES('y',2),('x',1);",
    );
    let (t, _, c) = p.diff(&sel("t")).expect("diff");
    assert!(t.key.is_rowid());
    assert!(t.key.describe().contains("not stable"));
    assert_eq!(c.changed, 2, "rowids paired the wrong rows, as they would");
    let mut s = sel("t");
    s.key = Some(vec!["code".into()]);
    let (t, _, c) = p.diff(&s).expect("diff by code");
    assert_eq!(t.key.source, KeySource::Declared);
    assert_eq!((c.identical, c.differences()), (2, 0));
}

#[test]
fn duplicate_declared_keys_are_an_error_not_a_wrong_answer() {
    let p = Pair::new(
        "CREATE TABLE t(code TEXT, v INT);",
        "INSERT INTO t VALUES('x',1),('x',2);",
        "INSERT INTO t VALUES('x',1);",
    );
    let mut s = sel("t");
    s.key = Some(vec!["code".into()]);
    let e = p.diff(&s).expect_err("duplicate keys");
    assert!(e.to_string().contains("more than one row"), "{e}");
}

#[test]
fn where_and_columns_restrict_the_selection() {
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b);",
        "INSERT INTO t VALUES(1,1,1),(2,2,2),(3,3,3);",
        "INSERT INTO t VALUES(1,9,1),(2,2,9),(3,9,9);",
    );
    let mut s = sel("t");
    s.columns = Some(vec!["a".into()]);
    s.where_snapshot = Some("id <= 2".into());
    s.where_live = Some("id <= 2".into());
    let (_, rows, c) = p.diff(&s).expect("diff");
    assert_eq!(c.changed, 1);
    assert_eq!(rows[0].key, vec![Value::Integer(1)]);
}

#[test]
fn bad_input_is_reported_clearly() {
    let p = Pair::new("CREATE TABLE t(id INTEGER PRIMARY KEY, a);", "", "");
    let msg = |s: TableSelection| p.diff(&s).expect_err("error").to_string();
    assert!(msg(sel("nope")).contains("no table \"nope\""));
    let mut s = sel("t");
    s.columns = Some(vec!["zz".into()]);
    assert!(msg(s).contains("no column \"zz\""));
    let mut s = sel("t");
    s.where_live = Some("a >>> 1".into());
    assert!(msg(s).contains("invalid SQL"));
    let mut s = sel("t");
    s.key = Some(vec!["zz".into()]);
    assert!(msg(s).contains("no column"));
}

#[test]
fn column_missing_in_snapshot_is_a_schema_difference_and_blocks_its_repair() {
    let p = Pair::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a);",
        "",
        "ALTER TABLE t ADD COLUMN b;",
    );
    let (t, _, _) = p.diff(&sel("t")).expect("diff");
    assert!(t
        .schema_diffs
        .iter()
        .any(|d| d.what.contains("column b exists only in the live")));
    let mut s = sel("t");
    s.columns = Some(vec!["b".into()]);
    assert!(p
        .diff(&s)
        .expect_err("mismatch")
        .to_string()
        .contains("schema mismatch"));
}

/// Applying the generated SQL to the live side makes the two sides equal,
/// over a table large enough to cross many pages, with every kind of value.
#[test]
fn applying_sql_output_converges_on_a_large_table() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT, r REAL, b BLOB, n);";
    let fill = |seed: i64| {
        format!(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 20000)
             INSERT INTO t SELECT i, 'row ' || i, i / 3.0, randomblob(8), CASE WHEN i % 7 = 0 THEN NULL ELSE i END FROM c
             WHERE (i * {seed}) % 101 != 0;"
        )
    };
    let p = Pair::new(schema, &fill(7), &fill(11));
    {
        let l = Connection::open(&p.live).expect("live");
        l.execute_batch("UPDATE t SET s = s || '!' WHERE id % 97 = 0; UPDATE t SET n = 'text' WHERE id % 89 = 0; DELETE FROM t WHERE id % 1000 = 1;")
            .expect("damage");
    }
    let (t, rows, c) = p.diff(&sel("t")).expect("diff");
    assert!(
        c.differences() > 20000 / 2,
        "blobs are random: every row differs ({c:?})"
    );
    let sql: String = rows.iter().map(|d| sql_for(&t, d) + "\n").collect();
    let (s, l) = p.conns();
    l.execute_batch(&format!("BEGIN;{sql}COMMIT;"))
        .expect("apply sql");
    let (_, rows, c) = diff_conns(&s, &l, &sel("t")).expect("diff again");
    assert_eq!(c.differences(), 0, "{:?}", rows.first());
    assert!(c.identical > 19000);
}

/// Rows are paired under the key's collation ('Alice' NOCASE 'alice'), but
/// a key whose text changed is still a changed row, and the SQL sets it back.
#[test]
fn nocase_and_rtrim_key_text_changes_are_differences_and_sql_restores_them() {
    let p = Pair::new(
        "CREATE TABLE users(email TEXT COLLATE NOCASE PRIMARY KEY, v);
         CREATE TABLE codes(code TEXT COLLATE RTRIM PRIMARY KEY, v);
         CREATE TABLE idx(k TEXT NOT NULL, v); CREATE UNIQUE INDEX idx_k ON idx(k COLLATE NOCASE);",
        "INSERT INTO users VALUES('Alice',1),('Bob',2),('carol',3);
         INSERT INTO codes VALUES('x  ',1),('y',2);
         INSERT INTO idx VALUES('Mixed',1);",
        "INSERT INTO users VALUES('alice',1),('Bob',2),('CAROL',9);
         INSERT INTO codes VALUES('x',1),('y',2);
         INSERT INTO idx VALUES('mixed',1);",
    );
    for (table, changed) in [("users", 2), ("codes", 1), ("idx", 1)] {
        let (t, rows, c) = p.diff(&sel(table)).expect("diff");
        assert_eq!(c.changed, changed, "{table}: {rows:?}");
        assert_eq!(c.differences(), changed, "{table}: paired, not missing");
        let first = &rows[0];
        assert_eq!(first.key_changed, vec![0], "{table}: the key bytes differ");
        assert_ne!(first.live_key(), first.key.as_slice());
        let sql: String = rows.iter().map(|d| sql_for(&t, d) + "\n").collect();
        let (s, l) = p.conns();
        l.execute_batch(&sql).expect("apply sql");
        let (_, rows, c) = diff_conns(&s, &l, &sel(table)).expect("diff again");
        assert_eq!(c.differences(), 0, "{table}: {rows:?}");
    }
    let l = Connection::open(&p.live).expect("live");
    let got: Vec<String> = l
        .prepare("SELECT email || v FROM users ORDER BY email")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(got, vec!["Alice1", "Bob2", "carol3"]);
    let code: String = l
        .query_row(
            "SELECT '[' || code || ']' FROM codes WHERE v = 1",
            [],
            |r| r.get(0),
        )
        .expect("code");
    assert_eq!(code, "[x  ]");
}

#[test]
fn rows_equal_in_value_but_not_in_encoding_are_reported_exactly_as_before_on_two_threads() {
    // 1,000 rows (several batches of the scans) whose values are equal to
    // SQLite's `=` or under the key's collation but not the same stored
    // value: INTEGER 1 and REAL 1.0, TEXT and a BLOB of the same bytes,
    // 0.0 and -0.0, 'Key' and 'key' under NOCASE. Each is a changed row,
    // with both sides' exact values, on one thread and on two (Pair::diff
    // checks that both give the same rows).
    let mut snap = String::from("INSERT INTO t VALUES");
    let mut live = snap.clone();
    for i in 0..1000u32 {
        let (s, l) = match i % 5 {
            0 => ("1".to_string(), "1.0".to_string()),
            1 => ("'abc'".to_string(), "x'616263'".to_string()),
            2 => ("0.0".to_string(), "-0.0".to_string()),
            3 => (format!("'same {i}'"), format!("'same {i}'")),
            _ => (format!("{i}"), format!("{i}")),
        };
        let key = if i.is_multiple_of(7) {
            format!("Key{i:04}")
        } else {
            format!("key{i:04}")
        };
        let sep = if i == 0 { "" } else { "," };
        snap.push_str(&format!("{sep}('key{i:04}', {s})"));
        live.push_str(&format!("{sep}('{key}', {l})"));
    }
    let p = Pair::new(
        "CREATE TABLE t(k TEXT COLLATE NOCASE PRIMARY KEY, v) WITHOUT ROWID;",
        &format!("{snap};"),
        &format!("{live};"),
    );
    let (_, rows, c) = p.diff(&sel("t")).expect("diff");
    // Rows 0, 1, 2 of every 5 differ in v; of the others, those whose key
    // differs in case (every 7th) differ in the key's bytes.
    let expected_changed = (0..1000)
        .filter(|i: &u32| i % 5 < 3 || i.is_multiple_of(7))
        .count() as u64;
    assert_eq!(c.changed, expected_changed, "{c:?}");
    assert_eq!((c.only_in_snapshot, c.only_in_live), (0, 0));
    assert_eq!(c.identical, 1000 - expected_changed);
    for r in &rows {
        let i: u32 = match &r.key[..] {
            [Value::Text(t)] => String::from_utf8_lossy(&t[3..]).parse().expect("n"),
            other => panic!("key {other:?}"),
        };
        let (s, l) = (r.snapshot.as_deref(), r.live.as_deref());
        let want: (Value, Value) = match i % 5 {
            0 => (Value::Integer(1), Value::Real(1.0)),
            1 => (Value::Text(b"abc".to_vec()), Value::Blob(b"abc".to_vec())),
            2 => (Value::Real(0.0), Value::Real(-0.0)),
            3 => {
                let v = Value::Text(format!("same {i}").into_bytes());
                (v.clone(), v)
            }
            _ => (Value::Integer(i as i64), Value::Integer(i as i64)),
        };
        assert_eq!(s, Some(&[want.0][..]), "row {i}");
        assert_eq!(l, Some(&[want.1][..]), "row {i}");
        assert_eq!(
            r.changed,
            if i % 5 < 3 { vec![0] } else { vec![] },
            "row {i}"
        );
        if i.is_multiple_of(7) {
            assert_eq!(r.key_changed, vec![0], "row {i}");
            assert_eq!(
                r.live_key.as_deref(),
                Some(&[Value::Text(format!("Key{i:04}").into_bytes())][..]),
                "row {i}"
            );
        } else {
            assert!(r.key_changed.is_empty() && r.live_key.is_none(), "row {i}");
        }
    }
}
