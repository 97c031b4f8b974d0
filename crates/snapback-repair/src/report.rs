//! Renderings of row differences: one JSON object, one terminal line.

use serde_json::{json, Map};

use crate::diff::{DiffKind, PreparedTable, RowDiff};
use crate::value::Value;

pub(crate) fn obj<'a>(cols: impl Iterator<Item = &'a String>, vals: &[Value]) -> serde_json::Value {
    let mut m = Map::new();
    for (c, v) in cols.zip(vals) {
        m.insert(
            c.clone(),
            serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(m)
}

/// `{"type":"row","table":..,"kind":..,"key":{..},"guarded":..,
///   "changes":[{"column","snapshot","live"}], "snapshot":{..}, "live":{..}}`
pub fn row_json(t: &PreparedTable, d: &RowDiff) -> serde_json::Value {
    let mut v = json!({
        "type": "row",
        "table": t.table,
        "kind": d.kind,
        "key": obj(t.key.columns.iter(), &d.key),
        "guarded": d.guarded,
    });
    if let Some(lk) = &d.live_key {
        v["live_key"] = obj(t.key.columns.iter(), lk);
    }
    if let (Some(s), Some(l)) = (&d.snapshot, &d.live) {
        let key_changes = d.key_changed.iter().map(|&i| {
            json!({
                "column": t.key.columns[i],
                "snapshot": d.key.get(i),
                "live": d.live_key().get(i),
            })
        });
        let changes: Vec<_> = key_changes
            .chain(d.changed.iter().map(|&i| {
                json!({
                    "column": t.data_columns[i],
                    "snapshot": s.get(i),
                    "live": l.get(i),
                })
            }))
            .collect();
        v["changes"] = json!(changes);
    }
    if let Some(s) = &d.snapshot {
        v["snapshot"] = obj(t.data_columns.iter(), s);
    }
    if let Some(l) = &d.live {
        v["live"] = obj(t.data_columns.iter(), l);
    }
    v
}

pub fn key_text(t: &PreparedTable, key: &[Value]) -> String {
    t.key
        .columns
        .iter()
        .zip(key)
        .map(|(c, v)| format!("{c}={}", v.display_short(40)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn row_text(t: &PreparedTable, vals: &[Value]) -> String {
    t.data_columns
        .iter()
        .zip(vals)
        .map(|(c, v)| format!("{c}={}", v.display_short(40)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line: `- key  only in snapshot: ..`, `+ key  only in live: ..`,
/// `~ key  col: before -> after, ..`; guarded rows are marked `[guard]`.
pub fn row_human(t: &PreparedTable, d: &RowDiff) -> String {
    let g = if d.guarded { " [guard]" } else { "" };
    let k = key_text(t, &d.key);
    match d.kind {
        DiffKind::OnlyInSnapshot => format!(
            "- {k}{g}  only in snapshot: {}",
            row_text(t, d.snapshot.as_deref().unwrap_or(&[]))
        ),
        DiffKind::OnlyInLive => format!(
            "+ {k}{g}  only in live: {}",
            row_text(t, d.live.as_deref().unwrap_or(&[]))
        ),
        DiffKind::Changed => {
            let s = d.snapshot.as_deref().unwrap_or(&[]);
            let l = d.live.as_deref().unwrap_or(&[]);
            let part = |c: &str, a: Option<&Value>, b: Option<&Value>| {
                format!(
                    "{c}: {} -> {}",
                    a.map(|v| v.display_short(40)).unwrap_or_default(),
                    b.map(|v| v.display_short(40)).unwrap_or_default()
                )
            };
            let parts: Vec<String> = d
                .key_changed
                .iter()
                .map(|&i| part(&t.key.columns[i], d.key.get(i), d.live_key().get(i)))
                .chain(
                    d.changed
                        .iter()
                        .map(|&i| part(&t.data_columns[i], s.get(i), l.get(i))),
                )
                .collect();
            format!("~ {k}{g}  {} (snapshot -> live)", parts.join(", "))
        }
    }
}
