//! SQLite values: ordered with SQLite's own semantics, compared exactly.
//!
//! Ordering (`cmp_values`, used to pair keys) follows SQLite's: NULL <
//! INTEGER and REAL (compared as numbers, so `1 = 1.0`) < TEXT (by
//! collation) < BLOB (memcmp). The merge join of the diff depends on this
//! matching `ORDER BY ... COLLATE <same collation>` exactly; the diff also
//! checks, row by row, that each side really arrives in this order, and
//! stops with an error if it does not.
//!
//! Equality of stored values (`same_value`, and `Value`'s `==`) is stricter:
//! the same storage class and the same bits. A recovery tool must give back
//! exactly what the snapshot held, so INTEGER 1 and REAL 1.0, REAL 0.0 and
//! -0.0, 'a' and 'A' under NOCASE are different values to diff and repair.

use std::cmp::Ordering;
use std::fmt;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::ToSql;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An owned SQLite value. Text is kept as bytes: SQLite does not enforce
/// UTF-8, and a repair must write back exactly what it read. `==` is
/// `same_value`: storage class and bits.
#[derive(Clone)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

/// The collations that the diff can reproduce outside SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Collation {
    Binary,
    NoCase,
    Rtrim,
}

impl Collation {
    /// Parses a collation name as SQLite reports it (case-insensitive).
    pub fn parse(name: &str) -> Option<Collation> {
        match name.to_ascii_uppercase().as_str() {
            "BINARY" | "" => Some(Collation::Binary),
            "NOCASE" => Some(Collation::NoCase),
            "RTRIM" => Some(Collation::Rtrim),
            _ => None,
        }
    }

    pub fn sql_name(self) -> &'static str {
        match self {
            Collation::Binary => "BINARY",
            Collation::NoCase => "NOCASE",
            Collation::Rtrim => "RTRIM",
        }
    }
}

impl Value {
    pub fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// Overwrites `self` with `v`, reusing the allocation where it can.
    pub fn assign(&mut self, v: ValueRef<'_>) {
        match (self, v) {
            (Value::Text(buf), ValueRef::Text(t)) | (Value::Blob(buf), ValueRef::Blob(t)) => {
                buf.clear();
                buf.extend_from_slice(t);
            }
            (s, v) => *s = Value::from_ref(v),
        }
    }

    /// A SQL literal for this value, for `--sql` output, that reads back
    /// the same in every SQL client: control characters (CR, LF, NUL, ESC,
    /// C1 controls, U+2028/U+2029, BOM) never appear raw inside quotes but
    /// as `char(..)` pieces (`'one'||char(13,10)||'two'`; char() makes
    /// text in the database's own encoding); text that is not UTF-8 is
    /// written as `CAST(X'..' AS TEXT)`.
    pub fn sql_literal(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(r) => real_literal(*r),
            Value::Text(t) => match std::str::from_utf8(t) {
                Ok(s) => text_literal(s),
                Err(_) => format!("CAST(X'{}' AS TEXT)", hex::encode_upper(t)),
            },
            Value::Blob(b) => format!("X'{}'", hex::encode_upper(b)),
        }
    }

    /// A short human rendering, for the terminal: the SQL literal, so that
    /// ESC, CR, BEL, newlines and the like are shown as `char(..)` pieces,
    /// never sent raw to the terminal; a REAL with its shortest digits.
    pub fn display_short(&self, max: usize) -> String {
        let s = match self {
            Value::Real(r) if r.is_finite() => shortest(*r),
            v => v.sql_literal(),
        };
        if s.chars().count() > max {
            let cut: String = s.chars().take(max.saturating_sub(1)).collect();
            format!("{cut}…")
        } else {
            s
        }
    }
}

/// Characters that a SQL client may translate, drop or act on when they
/// appear raw in a script (a shell drops the CR of CR LF; a terminal acts
/// on ESC; some readers end a line at U+2028 or drop a BOM).
fn needs_char_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// The most arguments one `char(..)` piece takes: SQLite refuses a call
/// with more than SQLITE_MAX_FUNCTION_ARG (127 before SQLite 3.48, so in
/// the sqlite3 shell of many systems).
const CHAR_ARGS: usize = 100;

/// `'..'` pieces for printable runs and `char(..)` pieces (of at most
/// CHAR_ARGS codes) for the rest, joined with `||` as a balanced tree
/// (`join_balanced`); `''` for the empty string.
fn text_literal(s: &str) -> String {
    let mut pieces: Vec<String> = Vec::new();
    let mut run = String::new();
    let mut codes: Vec<String> = Vec::new();
    let char_piece = |codes: &mut Vec<String>, pieces: &mut Vec<String>| {
        for chunk in codes.chunks(CHAR_ARGS) {
            pieces.push(format!("char({})", chunk.join(",")));
        }
        codes.clear();
    };
    for c in s.chars() {
        if needs_char_escape(c) {
            if !run.is_empty() {
                pieces.push(format!("'{}'", run.replace('\'', "''")));
                run.clear();
            }
            codes.push((c as u32).to_string());
        } else {
            char_piece(&mut codes, &mut pieces);
            run.push(c);
        }
    }
    if !run.is_empty() {
        pieces.push(format!("'{}'", run.replace('\'', "''")));
    }
    char_piece(&mut codes, &mut pieces);
    if pieces.is_empty() {
        "''".into()
    } else {
        join_balanced(&pieces)
    }
}

/// `pieces` joined with `||`, parenthesized as a balanced tree: a plain
/// chain `a||b||c||..` is an expression as deep as it is long, and SQLite
/// refuses one deeper than SQLITE_MAX_EXPR_DEPTH (1000), which text that
/// alternates printable and control characters reaches at 500 lines.
/// Balanced, the depth grows with the logarithm of the number of pieces.
fn join_balanced(pieces: &[String]) -> String {
    const CHAIN: usize = 8;
    if pieces.len() <= CHAIN {
        return pieces.join("||");
    }
    let (a, b) = pieces.split_at(pieces.len() / 2);
    format!("({})||({})", join_balanced(a), join_balanced(b))
}

/// A REAL as SQL text that every SQLite reads back bit for bit, not only
/// a correctly rounding reader: the sqlite3 shell of SQLite 3.40 (Debian
/// 12, among others) reads the shortest form of about 1 double in 4000 one
/// unit off (`15.64771424004`, `5e+125`), and almost any decimal below
/// 1e-289 wrong. So: 17 significant digits, which it reads exactly, or
/// the shortest form where that is the same decimal (`1.5`, `100.0`); and
/// below 1e-289 (subnormals included) an exact product with a power of two
/// that it reads exactly, `(N*2.4099198651028841e-181)` (N × 2^-600).
fn real_literal(r: f64) -> String {
    if r.is_nan() {
        "NULL".into()
    } else if r.is_infinite() {
        if r > 0.0 { "9e999" } else { "-9e999" }.into()
    } else if r != 0.0 && r.abs() < TINY {
        // Scaling by a power of two is exact both ways while nothing
        // overflows: N = r·2^600 is a double, and N·2^-600 is r again.
        let n = r * 2f64.powi(600);
        format!("({}*{})", digits17(n), digits17(2f64.powi(-600)))
    } else {
        digits17(r)
    }
}

/// Below this, SQLite 3.40 reads almost no decimal exactly.
const TINY: f64 = 1e-289;

/// `r` with 17 significant digits, trailing zeros dropped (the shortest
/// form when that is the same decimal), always with a '.' or an exponent,
/// so that SQLite reads it as REAL.
fn digits17(r: f64) -> String {
    let short = shortest(r);
    let long = format!("{r:.16e}");
    let (mant, exp) = long.split_once('e').unwrap_or((&long, "0"));
    let mant = mant.trim_end_matches('0').trim_end_matches('.');
    let sig = |s: &str| {
        let m = s.split(['e', 'E']).next().unwrap_or(s);
        m.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .trim_matches('0')
            .len()
    };
    if sig(&short) >= sig(mant) {
        return short;
    }
    match exp.parse::<i32>() {
        // Plain notation where it is short: 0.10000000000000001.
        Ok(e @ -4..=15) => {
            let plain = format!("{r:.*}", (16 - e) as usize);
            let plain = plain.trim_end_matches('0');
            if plain.ends_with('.') {
                format!("{plain}0")
            } else {
                plain.to_string()
            }
        }
        _ => format!("{mant}e{exp}"),
    }
}

/// The shortest text that reads back as the same f64 (Rust's Debug),
/// always with a '.' or an exponent.
fn shortest(r: f64) -> String {
    let s = format!("{r:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") {
        s
    } else {
        format!("{s}.0")
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql_literal())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_short(usize::MAX))
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_ref()))
    }
}

/// JSON form: null, numbers (a REAL always carries a '.' or an exponent, an
/// INTEGER never does), strings for UTF-8 text, and objects for the rest:
/// `{"blob": "<hex>"}`, `{"text_hex": "<hex>"}` for text that is not UTF-8,
/// `{"real": "inf"}` / `{"real": "-inf"}`.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Value::Null => s.serialize_unit(),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Real(r) if r.is_finite() => s.serialize_f64(*r),
            Value::Real(r) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("real", if *r > 0.0 { "inf" } else { "-inf" })?;
                m.end()
            }
            Value::Text(t) => match std::str::from_utf8(t) {
                Ok(v) => s.serialize_str(v),
                Err(_) => {
                    let mut m = s.serialize_map(Some(1))?;
                    m.serialize_entry("text_hex", &hex::encode(t))?;
                    m.end()
                }
            },
            Value::Blob(b) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("blob", &hex::encode(b))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        use serde::de::Error as _;
        let j = serde_json::Value::deserialize(d)?;
        Ok(match j {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Integer(b as i64),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64().filter(|_| !n.is_f64()) {
                    Value::Integer(i)
                } else if let Some(f) = n.as_f64() {
                    Value::Real(f)
                } else {
                    return Err(D::Error::custom(format!("number {n} is out of range")));
                }
            }
            serde_json::Value::String(s) => Value::Text(s.into_bytes()),
            serde_json::Value::Object(m) if m.len() == 1 => {
                let (k, v) = m
                    .into_iter()
                    .next()
                    .ok_or_else(|| D::Error::custom("empty"))?;
                let v = v
                    .as_str()
                    .ok_or_else(|| D::Error::custom("expected a string"))?
                    .to_string();
                match k.as_str() {
                    "blob" => Value::Blob(hex::decode(&v).map_err(D::Error::custom)?),
                    "text_hex" => Value::Text(hex::decode(&v).map_err(D::Error::custom)?),
                    "real" if v == "inf" => Value::Real(f64::INFINITY),
                    "real" if v == "-inf" => Value::Real(f64::NEG_INFINITY),
                    _ => return Err(D::Error::custom(format!("unknown value form {k:?}"))),
                }
            }
            other => return Err(D::Error::custom(format!("not a SQLite value: {other}"))),
        })
    }
}

fn class_rank(v: &ValueRef<'_>) -> u8 {
    match v {
        ValueRef::Null => 0,
        ValueRef::Integer(_) | ValueRef::Real(_) => 1,
        ValueRef::Text(_) => 2,
        ValueRef::Blob(_) => 3,
    }
}

/// SQLite's `sqlite3IntFloatCompare`: exact comparison of an integer and a
/// double, without rounding the integer first.
pub fn int_float_cmp(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let y = r as i64;
    match i.cmp(&y) {
        Ordering::Equal => {}
        o => return o,
    }
    let s = i as f64;
    s.partial_cmp(&r).unwrap_or(Ordering::Equal)
}

fn memcmp(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

fn nocase_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    for i in 0..n {
        let (x, y) = (a[i].to_ascii_lowercase(), b[i].to_ascii_lowercase());
        if x != y {
            return x.cmp(&y);
        }
    }
    a.len().cmp(&b.len())
}

fn rtrim(a: &[u8]) -> &[u8] {
    let mut n = a.len();
    while n > 0 && a[n - 1] == b' ' {
        n -= 1;
    }
    &a[..n]
}

/// Compares two values as SQLite's ORDER BY does under `coll`.
pub fn cmp_values(a: ValueRef<'_>, b: ValueRef<'_>, coll: Collation) -> Ordering {
    let (ra, rb) = (class_rank(&a), class_rank(&b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => Ordering::Equal,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x.cmp(&y),
        (ValueRef::Real(x), ValueRef::Real(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (ValueRef::Integer(x), ValueRef::Real(y)) => int_float_cmp(x, y),
        (ValueRef::Real(x), ValueRef::Integer(y)) => int_float_cmp(y, x).reverse(),
        (ValueRef::Text(x), ValueRef::Text(y)) => match coll {
            Collation::Binary => memcmp(x, y),
            Collation::NoCase => nocase_cmp(x, y),
            Collation::Rtrim => memcmp(rtrim(x), rtrim(y)),
        },
        (ValueRef::Blob(x), ValueRef::Blob(y)) => memcmp(x, y),
        _ => Ordering::Equal,
    }
}

/// Whether two stored values are exactly the same value: the same storage
/// class (`typeof`) and the same bits. INTEGER 1 is not REAL 1.0, REAL -0.0
/// is not 0.0, TEXT and BLOB compare by bytes whatever the column's
/// collation. Stricter than SQLite's `IS` (and sqldiff), on purpose: what a
/// diff calls identical, a repair would not give back, so a migration that
/// turned 1 into 1.0 must be a difference. The one definition of value
/// equality of diff, plan, apply, undo and resume.
pub fn same_value(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => true,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
        (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x == y,
        _ => false,
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        same_value(self.as_ref(), other.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_reals_order_as_numbers() {
        let eq = |a, b| cmp_values(a, b, Collation::Binary) == Ordering::Equal;
        assert!(eq(ValueRef::Integer(1), ValueRef::Real(1.0)));
        assert!(!eq(ValueRef::Integer(1), ValueRef::Real(1.5)));
        assert!(eq(ValueRef::Real(0.0), ValueRef::Real(-0.0)));
        // 2^53 + 1 is not representable as f64: SQLite keeps them apart.
        let big = (1i64 << 53) + 1;
        assert_eq!(
            cmp_values(
                ValueRef::Integer(big),
                ValueRef::Real((1u64 << 53) as f64),
                Collation::Binary
            ),
            Ordering::Greater
        );
        assert_eq!(int_float_cmp(i64::MAX, 9.3e18), Ordering::Less);
        assert_eq!(int_float_cmp(i64::MIN, -9.3e18), Ordering::Greater);
    }

    #[test]
    fn same_value_is_storage_class_and_bits() {
        assert!(!same_value(ValueRef::Integer(1), ValueRef::Real(1.0)));
        assert!(!same_value(ValueRef::Real(0.0), ValueRef::Real(-0.0)));
        assert!(same_value(ValueRef::Real(-0.0), ValueRef::Real(-0.0)));
        assert!(same_value(ValueRef::Real(1.5), ValueRef::Real(1.5)));
        assert!(!same_value(ValueRef::Text(b"a"), ValueRef::Text(b"A")));
        assert!(!same_value(ValueRef::Text(b"a "), ValueRef::Text(b"a")));
        assert!(same_value(ValueRef::Null, ValueRef::Null));
        assert!(!same_value(ValueRef::Null, ValueRef::Integer(0)));
        assert!(Value::Real(-0.0) != Value::Real(0.0));
        assert!(Value::Integer(1) != Value::Real(1.0));
    }

    #[test]
    fn storage_classes_order_like_sqlite() {
        let vals = [
            ValueRef::Null,
            ValueRef::Integer(-5),
            ValueRef::Real(2.5),
            ValueRef::Integer(3),
            ValueRef::Text(b"A"),
            ValueRef::Text(b"a"),
            ValueRef::Blob(b""),
            ValueRef::Blob(b"\x00"),
        ];
        for w in vals.windows(2) {
            assert_eq!(
                cmp_values(w[0], w[1], Collation::Binary),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
        assert!(!same_value(ValueRef::Text(b"1"), ValueRef::Integer(1)));
        assert!(!same_value(ValueRef::Text(b"x"), ValueRef::Blob(b"x")));
    }

    #[test]
    fn collations() {
        let c = |a: &str, b: &str, k| {
            cmp_values(
                ValueRef::Text(a.as_bytes()),
                ValueRef::Text(b.as_bytes()),
                k,
            )
        };
        assert_eq!(c("ABC", "abc", Collation::NoCase), Ordering::Equal);
        assert_eq!(c("ABC", "abd", Collation::NoCase), Ordering::Less);
        assert_eq!(c("ab", "abc", Collation::NoCase), Ordering::Less);
        assert_eq!(c("ABC", "abc", Collation::Binary), Ordering::Less);
        assert_eq!(c("x  ", "x", Collation::Rtrim), Ordering::Equal);
        assert_eq!(c("x  ", "x", Collation::Binary), Ordering::Greater);
    }

    #[test]
    fn json_roundtrip_keeps_storage_class() {
        let vals = vec![
            Value::Null,
            Value::Integer(1),
            Value::Real(1.0),
            Value::Real(-2.5e-300),
            Value::Real(f64::INFINITY),
            Value::Text(b"it's".to_vec()),
            Value::Text(vec![0xff, 0x00]),
            Value::Blob(vec![1, 2, 3]),
            Value::Integer(i64::MIN),
        ];
        let j = serde_json::to_string(&vals).expect("encode");
        let back: Vec<Value> = serde_json::from_str(&j).expect("decode");
        assert_eq!(format!("{vals:?}"), format!("{back:?}"));
        assert!(matches!(back[2], Value::Real(_)), "1.0 stays REAL: {j}");
    }

    /// serde_json parses floats with a fast, not always correctly rounded
    /// algorithm unless its `float_roundtrip` feature is on: stored plans,
    /// journals and audit entries then came back one ULP off.
    #[test]
    fn json_roundtrip_is_bit_exact_for_reals() {
        let mut vals = vec![
            -929346.1975191133,
            123456789.12345679,
            14871.466378840501,
            -906834.6387644875,
            0.1 + 0.2,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            f64::MIN_POSITIVE / 3.0,
            5e-324,
            -5e-324,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            1e23,
            9007199254740993.0,
            f64::from_bits(0x000f_ffff_ffff_ffff),
        ];
        // Pseudo-random bit patterns, deterministic (xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                vals.push(f);
            }
            vals.push((x >> 11) as f64 / (1u64 << 53) as f64 * 2e6 - 1e6);
        }
        let vals: Vec<Value> = vals.into_iter().map(Value::Real).collect();
        let j = serde_json::to_string(&vals).expect("encode");
        let back: Vec<Value> = serde_json::from_str(&j).expect("decode");
        let pretty = serde_json::to_vec_pretty(&vals).expect("encode");
        let back2: Vec<Value> = serde_json::from_slice(&pretty).expect("decode");
        for (a, (b, c)) in vals.iter().zip(back.iter().zip(&back2)) {
            match (a, b, c) {
                (Value::Real(a), Value::Real(b), Value::Real(c)) => {
                    assert_eq!(a.to_bits(), b.to_bits(), "{a:?} came back as {b:?}");
                    assert_eq!(a.to_bits(), c.to_bits(), "{a:?} came back as {c:?}");
                }
                other => panic!("storage class changed: {other:?}"),
            }
        }
    }

    #[test]
    fn sql_literals() {
        assert_eq!(Value::Real(1.0).sql_literal(), "1.0");
        assert_eq!(Value::Real(1.5).sql_literal(), "1.5");
        assert_eq!(Value::Real(100.0).sql_literal(), "100.0");
        assert_eq!(Value::Real(0.1).sql_literal(), "0.10000000000000001");
        assert_eq!(Value::Real(-0.0).sql_literal(), "-0.0");
        assert_eq!(Value::Real(1e300).sql_literal(), "1.0000000000000001e300");
        assert_eq!(
            Value::Real(5e-324).sql_literal(),
            "(2.0501330894674953e-143*2.4099198651028841e-181)"
        );
        assert_eq!(Value::Real(0.1).display_short(40), "0.1");
        assert_eq!(Value::Text(b"it's".to_vec()).sql_literal(), "'it''s'");
        assert_eq!(Value::Blob(vec![0xab]).sql_literal(), "X'AB'");
        assert_eq!(Value::Text(vec![0xff]).sql_literal(), "CAST(X'FF' AS TEXT)");
        assert_eq!(Value::Text(vec![]).sql_literal(), "''");
        assert_eq!(
            Value::Text(b"one\r\ntwo's\x1b".to_vec()).sql_literal(),
            "'one'||char(13,10)||'two''s'||char(27)"
        );
        assert_eq!(Value::Text(b"\0".to_vec()).sql_literal(), "char(0)");
    }

    /// What `diff --sql` prints for a value must run in SQLite whatever the
    /// text: thousands of control characters in a row (char() takes at
    /// most 127 arguments in older shells) and thousands of lines (a chain
    /// of `||` deeper than 1000 is refused).
    #[test]
    fn sql_literal_of_long_control_runs_and_many_lines_reads_back_in_sqlite() {
        let c = rusqlite::Connection::open_in_memory().expect("db");
        for text in [
            vec![0u8; 3371],
            b"\x1b\r\n".repeat(1000),
            b"line\r\n".repeat(5000),
            b"'\x07".repeat(3000),
        ] {
            let lit = Value::Text(text.clone()).sql_literal();
            // The bundled library takes 1000 arguments; shells before
            // SQLite 3.48 take 127.
            let most = lit
                .split("char(")
                .skip(1)
                .map(|p| p.split(')').next().map_or(0, |a| a.split(',').count()))
                .max();
            assert!(most <= Some(CHAR_ARGS), "{most:?} arguments to char()");
            let back: Vec<u8> = c
                .query_row(&format!("SELECT CAST({lit} AS BLOB)"), [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{e}: {}", &lit[..lit.len().min(200)]));
            assert!(
                back == text,
                "{} bytes read back as {}",
                text.len(),
                back.len()
            );
        }
    }
}
