//! Schema introspection: tables, columns, and the key that pairs rows.
//!
//! Everything is read through SQLite's table-valued pragmas with bound
//! parameters, so table names never have to be quoted to be looked up.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::value::Collation;

/// `"name"` with embedded double quotes doubled: an identifier that SQLite
/// reads back exactly, whatever characters it holds.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Names of the tables that the repair engine keeps in a live database.
pub const JOURNAL_TABLES: [&str; 2] = ["_snapback_repair_runs", "_snapback_repair_journal"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    pub decl_type: String,
    pub notnull: bool,
    pub default: Option<String>,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub pk: u32,
    /// 0 for an ordinary column; 2 or 3 for a generated column.
    pub hidden: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<Column>,
    pub without_rowid: bool,
    /// For a virtual table whose rows can be compared (see
    /// [`virtual_table_comparable`]): its module, lower case.
    pub virtual_module: Option<String>,
}

/// A virtual table as the schema declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualTable {
    pub name: String,
    /// The module, lower case (`fts5`, `rtree`, ...).
    pub module: String,
    /// Its `CREATE VIRTUAL TABLE` statement.
    pub sql: String,
}

/// The module named by a `CREATE VIRTUAL TABLE ... USING module(...)`.
fn module_of(sql: &str) -> String {
    let upper = sql.to_ascii_uppercase();
    let Some(at) = upper.find(" USING ") else {
        return String::new();
    };
    sql[at + 7..]
        .trim_start()
        .split(|c: char| c == '(' || c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']' || c == '\'')
        .to_ascii_lowercase()
}

/// Virtual tables of the `main` schema, in name order. Read from
/// sqlite_schema, so that a table whose module this build lacks is still
/// listed.
pub fn list_virtual_tables(conn: &Connection, place: &str) -> Result<Vec<VirtualTable>> {
    let mut st = conn
        .prepare(
            "SELECT name, sql FROM main.sqlite_schema WHERE type = 'table' \
             AND sql LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
        )
        .map_err(sq(place, "cannot list virtual tables"))?;
    let v = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sq(place, "cannot list virtual tables"))?;
    Ok(v.into_iter()
        .map(|(name, sql)| VirtualTable {
            module: module_of(&sql),
            name,
            sql,
        })
        .collect())
}

/// Whether the rows of a virtual table can be compared soundly, through
/// its own SELECT paired by rowid; `Err(reason)` when they cannot.
///
/// FTS3/4/5 tables keep each document's column values and its rowid (the
/// document id, which VACUUM keeps); R*Tree tables keep each entry's id and
/// coordinates. Their shadow tables are not compared: the index b-trees
/// they hold depend on the order of inserts and merges, so equal content
/// can differ there. Contentless FTS tables keep no values, and other
/// modules may read rows from outside the database: those are reported,
/// never compared.
pub fn virtual_table_comparable(vt: &VirtualTable) -> std::result::Result<(), String> {
    let compact: String = vt
        .sql
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    match vt.module.as_str() {
        "fts3" | "fts4" | "fts5"
            if compact.contains("content=''") || compact.contains("content=\"\"") =>
        {
            Err(format!(
                "contentless {} table: it keeps no column values to compare (compare the table its text came from)",
                vt.module
            ))
        }
        "fts3" | "fts4" | "fts5" | "rtree" | "rtree_i32" => Ok(()),
        "" => Err("virtual table without a module name".into()),
        m => Err(format!(
            "virtual table of module {m}: its rows may come from outside the database, so they are not compared row by row (only FTS3/4/5 and R*Tree tables are)"
        )),
    }
}

impl TableInfo {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Ordinary (not generated) columns, which can be read and written.
    pub fn stored_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.hidden == 0)
    }
}

/// How rows are paired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The table's declared PRIMARY KEY.
    PrimaryKey,
    /// A UNIQUE index whose columns are all NOT NULL.
    UniqueIndex(String),
    /// Columns named by the operator (`--key` or `key = [...]`).
    Declared,
    /// The rowid: the last resort. Rowids are not stable across VACUUM.
    Rowid,
    /// A virtual table's own id: an FTS table's rowid (the document id) or
    /// an R*Tree's id column. Both are stored values, kept by VACUUM.
    VirtualId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Key {
    /// Column names as declared (for the rowid, the alias used: rowid,
    /// _rowid_ or oid).
    pub columns: Vec<String>,
    pub collations: Vec<Collation>,
    pub source: KeySource,
}

impl Key {
    pub fn is_rowid(&self) -> bool {
        self.source == KeySource::Rowid
    }

    pub fn describe(&self) -> String {
        let cols = self.columns.join(", ");
        match &self.source {
            KeySource::PrimaryKey => format!("primary key ({cols})"),
            KeySource::UniqueIndex(i) => format!("unique index {i} ({cols})"),
            KeySource::Declared => format!("declared key ({cols})"),
            KeySource::VirtualId => format!("the virtual table's id ({cols})"),
            KeySource::Rowid => "rowid: the table has no primary key or NOT NULL unique index; rowids are not stable keys (VACUUM may renumber them), so give a key with --key if the table has one".to_string(),
        }
    }
}

fn sq(path: &str, what: &str) -> impl FnOnce(rusqlite::Error) -> Error {
    let (path, what) = (path.to_string(), what.to_string());
    move |e| Error::sqlite(path, what, e)
}

/// User tables of the `main` schema, in name order. Internal `sqlite_`
/// tables, virtual tables and their shadow tables, and the repair engine's
/// own journal tables are left out.
pub fn list_tables(conn: &Connection, place: &str) -> Result<Vec<String>> {
    let mut st = conn
        .prepare(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .map_err(sq(place, "cannot list tables"))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .map_err(sq(place, "cannot list tables"))?;
    Ok(names
        .into_iter()
        .filter(|n| !JOURNAL_TABLES.contains(&n.as_str()))
        .collect())
}

/// The table's columns, or `None` when `main` has no such table.
pub fn table_info(conn: &Connection, place: &str, table: &str) -> Result<Option<TableInfo>> {
    let row: Option<(String, String, i64)> = conn
        .query_row(
            "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
            params![table],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sq(place, "cannot read the schema"))?;
    let Some((name, kind, wr)) = row else {
        return Ok(None);
    };
    let mut virtual_module = None;
    if kind == "virtual" {
        let vt = list_virtual_tables(conn, place)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| {
                Error::Input(format!(
                    "{place}: virtual table {name} is not in the schema"
                ))
            })?;
        virtual_table_comparable(&vt)
            .map_err(|why| Error::Input(format!("{place}: {name}: {why}")))?;
        virtual_module = Some(vt.module);
    } else if kind != "table" {
        return Err(Error::Input(format!(
            "{place}: {name} is a {kind}, not an ordinary table; only ordinary tables can be compared and repaired"
        )));
    }
    let mut st = conn
        .prepare(
            "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
        )
        .map_err(sq(place, "cannot read the schema"))?;
    let columns = st
        .query_map(params![name], |r| {
            Ok(Column {
                name: r.get(0)?,
                decl_type: r.get(1)?,
                notnull: r.get::<_, i64>(2)? != 0,
                default: r.get(3)?,
                pk: r.get::<_, i64>(4)? as u32,
                hidden: r.get::<_, i64>(5)? as i32,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<Column>>>())
        .map_err(sq(place, "cannot read the schema"))?;
    Ok(Some(TableInfo {
        name,
        columns,
        without_rowid: wr != 0,
        virtual_module,
    }))
}

/// Key columns of an index, with their collations, or `None` when the index
/// has an expression column.
fn index_key_columns(
    conn: &Connection,
    place: &str,
    index: &str,
) -> Result<Option<Vec<(String, String)>>> {
    let mut st = conn
        .prepare("SELECT cid, name, coll FROM pragma_index_xinfo(?1, 'main') WHERE key = 1 ORDER BY seqno")
        .map_err(sq(place, "cannot read an index"))?;
    let cols = st
        .query_map(params![index], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sq(place, "cannot read an index"))?;
    let mut out = Vec::new();
    for (cid, name, coll) in cols {
        match name {
            Some(n) if cid >= 0 => out.push((n, coll.unwrap_or_else(|| "BINARY".into()))),
            _ => return Ok(None),
        }
    }
    Ok(Some(out))
}

struct IndexDesc {
    name: String,
    origin: String,
    unique: bool,
    partial: bool,
}

fn indexes(conn: &Connection, place: &str, table: &str) -> Result<Vec<IndexDesc>> {
    let mut st = conn
        .prepare("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1, 'main') ORDER BY name")
        .map_err(sq(place, "cannot list indexes"))?;
    let v = st
        .query_map(params![table], |r| {
            Ok(IndexDesc {
                name: r.get(0)?,
                unique: r.get::<_, i64>(1)? != 0,
                origin: r.get(2)?,
                partial: r.get::<_, i64>(3)? != 0,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sq(place, "cannot list indexes"))?;
    Ok(v)
}

fn collations_of(place: &str, table: &str, cols: &[(String, String)]) -> Vec<Collation> {
    cols.iter()
        .map(|(c, coll)| {
            Collation::parse(coll).unwrap_or_else(|| {
                tracing::warn!(db = place, table, column = %c, collation = %coll,
                    "key column uses a collation snapback cannot reproduce; rows are ordered and paired with BINARY instead");
                Collation::Binary
            })
        })
        .collect()
}

/// Whether `key` is the rowid of table `t` on this side (the rowid itself,
/// or the INTEGER PRIMARY KEY that aliases it): then SQLite itself keeps it
/// unique, never NULL, and in order, and pairing by it needs no proof.
pub fn key_is_rowid(conn: &Connection, place: &str, t: &TableInfo, key: &Key) -> Result<bool> {
    if t.without_rowid || t.virtual_module.is_some() {
        return Ok(false);
    }
    if key.is_rowid() {
        return Ok(true);
    }
    let [col] = key.columns.as_slice() else {
        return Ok(false);
    };
    let pk: Vec<&Column> = t.columns.iter().filter(|c| c.pk > 0).collect();
    let [only] = pk.as_slice() else {
        return Ok(false);
    };
    if !only.name.eq_ignore_ascii_case(col) || !only.decl_type.eq_ignore_ascii_case("INTEGER") {
        return Ok(false);
    }
    // A primary key that is not the rowid has an index to enforce it (even
    // `INTEGER PRIMARY KEY DESC`); the rowid alias has none.
    Ok(!indexes(conn, place, &t.name)?
        .iter()
        .any(|i| i.origin == "pk"))
}

/// Chooses the key that pairs rows: `declared` columns if given, else the
/// primary key, else a UNIQUE index on NOT NULL columns (fewest columns,
/// then by name), else the rowid (saying so), else an error.
pub fn choose_key(
    conn: &Connection,
    place: &str,
    t: &TableInfo,
    declared: Option<&[String]>,
) -> Result<Key> {
    if let Some(cols) = declared.filter(|c| !c.is_empty()) {
        let mut names = Vec::new();
        for c in cols {
            let col = t.column(c).ok_or_else(|| {
                Error::Input(format!(
                    "{place}: table {} has no column {c:?} to use as a key; its columns are: {}",
                    t.name,
                    column_list(t)
                ))
            })?;
            names.push(col.name.clone());
        }
        return Ok(Key {
            collations: vec![Collation::Binary; names.len()],
            columns: names,
            source: KeySource::Declared,
        });
    }
    if let Some(module) = &t.virtual_module {
        // An R*Tree's first column is its id (the rowid); FTS tables have
        // the rowid, which no FTS column may be named.
        let id = match module.as_str() {
            "rtree" | "rtree_i32" => t.columns.first().map(|c| c.name.clone()),
            _ => Some("rowid".to_string()),
        }
        .ok_or_else(|| Error::NoKey(format!("{place}: virtual table {} has no columns", t.name)))?;
        return Ok(Key {
            columns: vec![id],
            collations: vec![Collation::Binary],
            source: KeySource::VirtualId,
        });
    }
    let mut pk: Vec<&crate::schema::Column> = t.columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    if !pk.is_empty() {
        let idx = indexes(conn, place, &t.name)?;
        if let Some(pk_index) = idx.iter().find(|i| i.origin == "pk") {
            if let Some(cols) = index_key_columns(conn, place, &pk_index.name)? {
                // A WITHOUT ROWID table's pk index lists the key columns first.
                let cols: Vec<_> = cols.into_iter().take(pk.len()).collect();
                return Ok(Key {
                    collations: collations_of(place, &t.name, &cols),
                    columns: cols.into_iter().map(|c| c.0).collect(),
                    source: KeySource::PrimaryKey,
                });
            }
        }
        // INTEGER PRIMARY KEY: the rowid alias, no index; integers only.
        return Ok(Key {
            columns: pk.iter().map(|c| c.name.clone()).collect(),
            collations: vec![Collation::Binary; pk.len()],
            source: KeySource::PrimaryKey,
        });
    }
    let idx = indexes(conn, place, &t.name)?;
    let mut best: Option<(String, Vec<(String, String)>)> = None;
    for i in idx.iter().filter(|i| i.unique && !i.partial) {
        let Some(cols) = index_key_columns(conn, place, &i.name)? else {
            continue;
        };
        let all_notnull = cols
            .iter()
            .all(|(c, _)| t.column(c).is_some_and(|col| col.notnull));
        if all_notnull && best.as_ref().is_none_or(|(_, b)| cols.len() < b.len()) {
            best = Some((i.name.clone(), cols));
        }
    }
    if let Some((name, cols)) = best {
        return Ok(Key {
            collations: collations_of(place, &t.name, &cols),
            columns: cols.into_iter().map(|c| c.0).collect(),
            source: KeySource::UniqueIndex(name),
        });
    }
    if !t.without_rowid {
        if let Some(alias) = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| t.column(a).is_none())
        {
            tracing::warn!(db = place, table = %t.name, "no primary key or NOT NULL unique index: pairing rows by rowid, which VACUUM may renumber; give a key with --key if the table has one");
            return Ok(Key {
                columns: vec![alias.to_string()],
                collations: vec![Collation::Binary],
                source: KeySource::Rowid,
            });
        }
    }
    Err(Error::NoKey(format!(
        "{place}: table {} has no usable key (no primary key, no UNIQUE index on NOT NULL columns, and no rowid it can be reached by); name the columns that identify a row with --key (or `key = [...]` in a restore script)",
        t.name
    )))
}

pub fn column_list(t: &TableInfo) -> String {
    t.columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().expect("mem");
        c.execute_batch(sql).expect("schema");
        c
    }

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("select"), "\"select\"");
    }

    #[test]
    fn keys_are_chosen_in_order_of_preference() {
        let c = db(r#"
            CREATE TABLE a(id INTEGER PRIMARY KEY, x);
            CREATE TABLE b(x TEXT COLLATE NOCASE, y INT, z, PRIMARY KEY(y, x)) WITHOUT ROWID;
            CREATE TABLE c(u TEXT NOT NULL, v, w INT);
            CREATE UNIQUE INDEX c_u ON c(u);
            CREATE UNIQUE INDEX c_w ON c(w);
            CREATE TABLE d(p, q);
            CREATE TABLE "we""ird"(rowid, _rowid_, oid);
        "#);
        let k = |t: &str| {
            let ti = table_info(&c, "m", t).expect("info").expect("exists");
            choose_key(&c, "m", &ti, None)
        };
        let a = k("a").expect("a");
        assert_eq!(
            (a.columns.clone(), a.source.clone()),
            (vec!["id".to_string()], KeySource::PrimaryKey)
        );
        let b = k("b").expect("b");
        assert_eq!(b.columns, vec!["y", "x"]);
        assert_eq!(b.collations, vec![Collation::Binary, Collation::NoCase]);
        let cc = k("c").expect("c");
        assert_eq!(cc.source, KeySource::UniqueIndex("c_u".into()));
        let d = k("d").expect("d");
        assert!(d.is_rowid());
        let e = k("we\"ird").expect_err("no key");
        assert!(e.to_string().contains("--key"), "{e}");
        let ti = table_info(&c, "m", "d").expect("info").expect("d");
        let decl = choose_key(&c, "m", &ti, Some(&["Q".to_string()])).expect("declared");
        assert_eq!(decl.columns, vec!["q"]);
        assert!(choose_key(&c, "m", &ti, Some(&["nope".to_string()])).is_err());
    }

    #[test]
    fn pairing_proof_is_skipped_only_for_keys_that_are_the_rowid() {
        let c = db(r#"
            CREATE TABLE a(id INTEGER PRIMARY KEY, x);
            CREATE TABLE b(id INT PRIMARY KEY, x);
            CREATE TABLE c(id INTEGER PRIMARY KEY DESC, x);
            CREATE TABLE d(p, q);
            CREATE TABLE e(id INTEGER PRIMARY KEY, x) WITHOUT ROWID;
            CREATE TABLE f(k TEXT NOT NULL, x);
            CREATE UNIQUE INDEX f_k ON f(k);
        "#);
        let rowid = |t: &str| {
            let ti = table_info(&c, "m", t).expect("info").expect("exists");
            let key = choose_key(&c, "m", &ti, None).expect("key");
            key_is_rowid(&c, "m", &ti, &key).expect("check")
        };
        assert!(rowid("a"), "INTEGER PRIMARY KEY aliases the rowid");
        assert!(
            !rowid("b"),
            "INT PRIMARY KEY is an indexed column, NULLs allowed"
        );
        assert!(!rowid("c"), "INTEGER PRIMARY KEY DESC is not the rowid");
        assert!(rowid("d"), "the rowid itself");
        assert!(!rowid("e"), "WITHOUT ROWID");
        assert!(!rowid("f"), "a unique index");
        let ti = table_info(&c, "m", "a").expect("info").expect("a");
        let declared = choose_key(&c, "m", &ti, Some(&["x".to_string()])).expect("declared");
        assert!(!key_is_rowid(&c, "m", &ti, &declared).expect("check"));
    }
}
