//! Restore scripts: the TOML format (docs/restore-scripts.md).
//!
//! Unknown keys are rejected everywhere, so a typo (`delete_extras`) is an
//! error instead of a silently ignored safety setting.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::diff::TableSelection;
use crate::error::{Error, Result};

/// Default rows per transaction.
pub const DEFAULT_BATCH_SIZE: usize = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// What the script is for; shown in the plan and the audit log.
    pub description: Option<String>,
    /// Snapshot selector: an id or unique prefix, or "@TIME" ("latest" is
    /// refused: it moves). Snapshots tagged `pre-repair` are never chosen.
    pub snapshot: Option<String>,
    /// Or: a database file to use as the snapshot side (e.g. inside a
    /// mounted snapshot). Exactly one of `snapshot` and `snapshot_db`.
    pub snapshot_db: Option<PathBuf>,
    /// The live database to repair (absolute path).
    pub live: PathBuf,
    /// The database's path inside the snapshot; default: `live`'s own
    /// path, or the snapshot's only database.
    pub path: Option<String>,
    /// How long one statement waits for the application's write lock.
    pub busy_timeout_ms: Option<u64>,
    /// Instead of `snapshot`: the incident, as two points. Then only the
    /// rows the incident changed (before != after) that nobody changed
    /// since (after == live) are restored to `before`; rows changed both
    /// by the incident and since are conflicts, never overwritten.
    pub incident: Option<Incident>,
    #[serde(default, rename = "table")]
    pub tables: Vec<TableScript>,
    #[serde(default, rename = "sql")]
    pub sql: Vec<SqlStep>,
}

/// The `[incident]` of a three-way restore script: a point before it and
/// a point after it (selectors: an id, a point's `SEGMENT/INDEX`, `@TIME`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub before: String,
    pub after: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Insert rows that the snapshot has and the live database lacks.
    InsertMissing,
    /// Set compared columns of rows that differ back to the snapshot's.
    UpdateChanged,
    /// Delete live rows that the snapshot lacks.
    DeleteExtra,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableScript {
    pub name: String,
    /// Columns that identify a row (default: the table's key).
    pub key: Option<Vec<String>>,
    /// Columns to compare and repair (default: all but the key).
    pub columns: Option<Vec<String>>,
    /// Predicate on rows of both sides.
    #[serde(rename = "where")]
    pub where_both: Option<String>,
    /// Predicate on snapshot rows (ANDed with `where`).
    pub where_snapshot: Option<String>,
    /// Predicate on live rows (ANDed with `where`).
    pub where_live: Option<String>,
    /// Which changes to make; none unless listed.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Live rows matching this predicate are never changed; they are
    /// reported (e.g. `updated_at > '2026-02-02T17:20:00Z'`).
    pub guard: Option<String>,
    /// Rows per transaction (default 500).
    pub batch_size: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub description: Option<String>,
    /// One SQL statement, run on the live database with the snapshot's
    /// database attached read-only as schema `snapshot`.
    pub statement: String,
}

/// A script as read from a file, with its exact text and hash.
#[derive(Debug, Clone)]
pub struct LoadedScript {
    pub path: PathBuf,
    pub text: String,
    pub sha256: String,
    pub script: Script,
}

fn and(a: &Option<String>, b: &Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("({a}) AND ({b})")),
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (None, None) => None,
    }
}

impl TableScript {
    pub fn selection(&self) -> TableSelection {
        TableSelection {
            table: self.name.clone(),
            key: self.key.clone(),
            columns: self.columns.clone(),
            where_snapshot: and(&self.where_both, &self.where_snapshot),
            where_live: and(&self.where_both, &self.where_live),
            guard: self.guard.clone(),
        }
    }

    pub fn has(&self, a: Action) -> bool {
        self.actions.contains(&a)
    }

    pub fn batch(&self) -> usize {
        self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE)
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl LoadedScript {
    pub fn load(path: &Path) -> Result<LoadedScript> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, "cannot read the restore script", e))?;
        LoadedScript::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<LoadedScript> {
        let bad = |message: String| Error::Script {
            path: path.to_path_buf(),
            message,
        };
        let script: Script = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(i) = &script.incident {
            if script.snapshot.is_some() || script.snapshot_db.is_some() {
                return Err(bad(
                    "give either [incident] (before and after) or `snapshot`/`snapshot_db`, not both: with [incident], the rows are restored from `before`".into(),
                ));
            }
            for (what, sel) in [("before", &i.before), ("after", &i.after)] {
                if sel.trim() == "latest" {
                    return Err(bad(format!(
                        "[incident] {what} = \"latest\" moves: name a fixed point (a snapshot id, a point's SEGMENT/INDEX, or \"@TIME\")"
                    )));
                }
                if sel.trim().is_empty() {
                    return Err(bad(format!("[incident] {what} is empty")));
                }
            }
            if i.before.trim() == i.after.trim() {
                return Err(bad(
                    "[incident] before and after name the same point: give a point before the incident and one after it".into(),
                ));
            }
            if let Some(t) = script.tables.iter().find(|t| t.guard.is_some()) {
                return Err(bad(format!(
                    "table {}: a `guard` and [incident] do not go together: with [incident], rows changed since the incident are never overwritten (they are listed as conflicts); remove the guard",
                    t.name
                )));
            }
        }
        match (&script.snapshot, &script.snapshot_db) {
            _ if script.incident.is_some() => {}
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give either `snapshot` (a selector) or `snapshot_db` (a file), not both".into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    "`snapshot` is missing: give a selector (a snapshot id or \"@TIME\"), or `snapshot_db` with a database file".into(),
                ))
            }
            _ => {}
        }
        if script.snapshot.as_deref().map(str::trim) == Some("latest") {
            return Err(bad(
                "`snapshot = \"latest\"` moves: after a repair (or the next scheduled snapshot) it names a different snapshot, so running the script again could undo the repair. Name a fixed point: a snapshot id, or \"@TIME\" just before the incident".into(),
            ));
        }
        if !script.live.is_absolute() {
            return Err(bad(format!(
                "`live` must be an absolute path, not {}",
                script.live.display()
            )));
        }
        if let Some(p) = &script.snapshot_db {
            if !p.is_absolute() {
                return Err(bad(format!(
                    "`snapshot_db` must be an absolute path, not {}",
                    p.display()
                )));
            }
        }
        if script.tables.is_empty() && script.sql.is_empty() {
            return Err(bad(
                "the script repairs nothing: add a [[table]] (or a [[sql]] step)".into(),
            ));
        }
        for (i, t) in script.tables.iter().enumerate() {
            if t.actions.is_empty() {
                return Err(bad(format!(
                    "table {} ([[table]] #{}) has no `actions`; list what to do: actions = [\"update_changed\"] (also \"insert_missing\", \"delete_extra\")",
                    t.name,
                    i + 1
                )));
            }
            if t.batch_size == Some(0) {
                return Err(bad(format!(
                    "table {}: batch_size must be at least 1",
                    t.name
                )));
            }
            if script.tables[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&t.name))
            {
                return Err(bad(format!(
                    "table {} appears twice; combine the entries (use `where` to select rows)",
                    t.name
                )));
            }
        }
        for s in &script.sql {
            if s.statement.trim().is_empty() {
                return Err(bad("a [[sql]] step has an empty statement".into()));
            }
        }
        Ok(LoadedScript {
            path: path.to_path_buf(),
            sha256: sha256_hex(text.as_bytes()),
            text,
            script,
        })
    }
}

/// Where the good data of an emitted script comes from.
#[derive(Debug, Clone)]
pub enum EmitSource {
    /// A selector that names exactly one snapshot or point (a full id, or
    /// a point's `SEGMENT/INDEX`), never one that moves.
    Snapshot(String),
    /// A database file used directly.
    File(PathBuf),
}

/// One table of an emitted script: the selection that was diffed, and
/// how many rows the diff found only in live (left to the operator).
#[derive(Debug, Clone)]
pub struct EmitTable {
    pub name: String,
    pub key: Option<Vec<String>>,
    pub columns: Option<Vec<String>>,
    pub where_both: Option<String>,
    pub only_in_live: u64,
}

/// What `snapback diff --emit-script` writes a restore script from.
#[derive(Debug, Clone)]
pub struct EmitScript {
    /// The diff's command line, for the script's header.
    pub command: String,
    /// Where the script is written, for the header's commands.
    pub file: PathBuf,
    pub source: EmitSource,
    pub live: PathBuf,
    pub path: Option<String>,
    pub tables: Vec<EmitTable>,
    /// Tables that were diffed but cannot be repaired (virtual tables,
    /// tables that could not be compared), and why: comments.
    pub left_out: Vec<(String, String)>,
}

/// A TOML string literal (quotes and escapes as TOML needs them).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", v.join(", "))
}

/// Writes the restore script (docs/restore-scripts.md) for exactly the
/// selection a diff compared: its source, live database, path, and per
/// table its key, columns and `where`. Actions: `update_changed` and
/// `insert_missing`; `delete_extra` (which deletes rows written since the
/// snapshot) only as a comment, to be enabled by a human. The text parses
/// back with `LoadedScript::parse`.
pub fn emit_script(e: &EmitScript) -> String {
    let mut o = String::new();
    o.push_str("# Restore script written by `snapback diff --emit-script`, for the selection\n");
    o.push_str("# that this diff compared:\n");
    for line in e.command.lines() {
        o.push_str(&format!("#   {line}\n"));
    }
    let f = e.file.display();
    o.push_str(&format!(
        "# Review it, then dry-run it:   snapback repair {f}\n"
    ));
    o.push_str(&format!(
        "# and apply it:                 snapback repair {f} --apply\n\n"
    ));
    o.push_str(&format!(
        "description = {}\n",
        toml_str(&format!(
            "Restore the selection diffed against {}",
            match &e.source {
                EmitSource::Snapshot(s) => format!("snapshot {s}"),
                EmitSource::File(f) => f.display().to_string(),
            }
        ))
    ));
    match &e.source {
        EmitSource::Snapshot(s) => o.push_str(&format!("snapshot = {}\n", toml_str(s))),
        EmitSource::File(f) => o.push_str(&format!(
            "snapshot_db = {}\n",
            toml_str(&f.display().to_string())
        )),
    }
    o.push_str(&format!(
        "live = {}\n",
        toml_str(&e.live.display().to_string())
    ));
    if let Some(p) = &e.path {
        o.push_str(&format!("path = {}\n", toml_str(p)));
    }
    for (t, why) in &e.left_out {
        o.push_str(&format!(
            "\n# table {t} is left out: {}\n",
            why.replace('\n', " ")
        ));
    }
    for t in &e.tables {
        o.push_str("\n[[table]]\n");
        o.push_str(&format!("name = {}\n", toml_str(&t.name)));
        if let Some(k) = &t.key {
            o.push_str(&format!("key = {}\n", toml_list(k)));
        }
        if let Some(c) = &t.columns {
            o.push_str(&format!("columns = {}\n", toml_list(c)));
        }
        if let Some(w) = &t.where_both {
            o.push_str(&format!("where = {}\n", toml_str(w)));
        }
        o.push_str("actions = [\"update_changed\", \"insert_missing\"]\n");
        o.push_str(&format!(
            "# The diff found {} row(s) only in the live database (written since the\n# snapshot, or re-created); they are kept. To delete them, add \"delete_extra\".\n",
            t.only_in_live
        ));
        o.push_str("# guard = \"...\"     # live rows matching this SQL are never changed\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LoadedScript> {
        LoadedScript::parse(Path::new("t.toml"), s.to_string())
    }

    #[test]
    fn a_full_script_parses() {
        let s = parse(
            r#"
            description = "x"
            snapshot = "@2026-02-02T17:00:00Z"
            live = "/var/lib/app/app.db"
            [[table]]
            name = "deploys"
            key = ["id"]
            columns = ["status"]
            where = "id < 10"
            where_live = "env = 'prod'"
            actions = ["update_changed", "insert_missing"]
            guard = "updated_at > '2026'"
            batch_size = 100
            [[sql]]
            statement = "UPDATE counters SET n = (SELECT n FROM snapshot.counters)"
        "#,
        )
        .expect("parses");
        let t = &s.script.tables[0];
        assert!(t.has(Action::UpdateChanged) && !t.has(Action::DeleteExtra));
        assert_eq!(
            t.selection().where_live.as_deref(),
            Some("(id < 10) AND (env = 'prod')")
        );
        assert_eq!(s.sha256.len(), 64);
    }

    #[test]
    fn unknown_keys_and_missing_safety_settings_are_rejected() {
        let base = "snapshot = \"abcd1234\"\nlive = \"/a.db\"\n";
        let e = parse(&format!(
            "{base}[[table]]\nname = \"t\"\nactions = [\"update_changed\"]\ndelete_extras = true\n"
        ))
        .expect_err("unknown key");
        assert!(e.to_string().contains("delete_extras"), "{e}");
        let e = parse(&format!(
            "{base}[[table]]\nname = \"t\"\nactions = [\"upsert\"]\n"
        ))
        .expect_err("unknown action");
        assert!(e.to_string().contains("upsert"), "{e}");
        let e = parse(&format!("{base}[[table]]\nname = \"t\"\n")).expect_err("no actions");
        assert!(e.to_string().contains("no `actions`"), "{e}");
        let e = parse("live = \"/a.db\"\n[[table]]\nname=\"t\"\nactions=[\"update_changed\"]\n")
            .expect_err("no snapshot");
        assert!(e.to_string().contains("snapshot"), "{e}");
        let e = parse(
            &format!("{base}[[table]]\nname=\"t\"\nactions=[\"update_changed\"]\n")
                .replace("abcd1234", "latest"),
        )
        .expect_err("latest moves");
        assert!(e.to_string().contains("moves"), "{e}");
        let e = parse("snapshot=\"abcd\"\nlive = \"a.db\"\n[[table]]\nname=\"t\"\nactions=[\"update_changed\"]\n")
            .expect_err("relative live");
        assert!(e.to_string().contains("absolute"), "{e}");
        assert!(parse(&format!("{base}colour = 1\n")).is_err());
    }
    #[test]
    fn an_incident_script_parses_and_its_mistakes_are_refused() {
        let tables = "[[table]]\nname = \"t\"\nactions = [\"update_changed\"]\n";
        let s = parse(&format!(
            "live = \"/a.db\"\n[incident]\nbefore = \"@2026-02-02T17:00:00Z\"\nafter = \"@2026-02-02T17:10:00Z\"\n{tables}"
        ))
        .expect("parses");
        let i = s.script.incident.expect("incident");
        assert_eq!(i.after, "@2026-02-02T17:10:00Z");
        for (bad, why) in [
            (
                "snapshot = \"abcd1234\"\n[incident]\nbefore = \"a1\"\nafter = \"b2\"\n",
                "not both",
            ),
            ("[incident]\nbefore = \"a1\"\nafter = \"latest\"\n", "moves"),
            (
                "[incident]\nbefore = \"a1\"\nafter = \"a1\"\n",
                "same point",
            ),
            ("[incident]\nbefore = \"a1\"\n", "after"),
            (
                "[incident]\nbefore = \"a1\"\nafter = \"b2\"\nwhen = 1\n",
                "when",
            ),
        ] {
            let e = parse(&format!("live = \"/a.db\"\n{bad}{tables}")).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let e = parse(&format!(
            "live = \"/a.db\"\n[incident]\nbefore = \"a1\"\nafter = \"b2\"\n{tables}guard = \"x > 1\"\n"
        ))
        .expect_err("guard");
        assert!(e.to_string().contains("guard"), "{e}");
    }

    #[test]
    fn an_emitted_script_parses_back_with_the_diffed_selection() {
        let e = EmitScript {
            command: "snapback diff abcd x.db --where \"a = 'it''s'\"".into(),
            file: PathBuf::from("/tmp/fix.toml"),
            source: EmitSource::Snapshot("abcd1234abcd1234".into()),
            live: PathBuf::from("/srv/a \"b\".db"),
            path: Some("/srv/old.db".into()),
            tables: vec![EmitTable {
                name: "we\"ird".into(),
                key: Some(vec!["id".into()]),
                columns: Some(vec!["status".into(), "note".into()]),
                where_both: Some("service = 'api' AND x <> \"q\"\nOR y".into()),
                only_in_live: 3,
            }],
            left_out: vec![("docs".into(), "a virtual table\nof fts5".into())],
        };
        let text = emit_script(&e);
        let s = parse(&text).expect("the emitted script parses");
        assert_eq!(s.script.snapshot.as_deref(), Some("abcd1234abcd1234"));
        assert_eq!(s.script.live, PathBuf::from("/srv/a \"b\".db"));
        assert_eq!(s.script.path.as_deref(), Some("/srv/old.db"));
        let t = &s.script.tables[0];
        assert_eq!(t.name, "we\"ird");
        assert_eq!(t.key.as_deref(), Some(&["id".to_string()][..]));
        assert_eq!(t.columns.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            t.where_both.as_deref(),
            Some("service = 'api' AND x <> \"q\"\nOR y")
        );
        assert!(t.has(Action::UpdateChanged) && t.has(Action::InsertMissing));
        assert!(!t.has(Action::DeleteExtra));
        assert!(text.contains("table docs is left out: a virtual table of fts5"));
    }
}
