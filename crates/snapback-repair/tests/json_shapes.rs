//! The key order of every `--json` document of diff, repair, audit and
//! undo, with the real binary: operators' scripts parse them as printed.
//! Documents that began as `json!()` values print every object's keys
//! sorted, at every depth (serde_json is built without `preserve_order`);
//! documents printed straight from a library type keep its field order.
//! Both are pinned here, so that a change of either is deliberate.

use crate::e2e::Drill;
use crate::util::Out;

/// The keys of every object in `text` (JSON), in the order they are written,
/// one list per object in the order the objects open.
fn objects(text: &str) -> Vec<Vec<String>> {
    let b = text.as_bytes();
    let mut done: Vec<(usize, Vec<String>)> = Vec::new();
    // Open containers: Some((index, keys)) for an object, None for an array.
    let mut open: Vec<Option<(usize, Vec<String>)>> = Vec::new();
    let mut opened = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => {
                open.push(Some((opened, Vec::new())));
                opened += 1;
            }
            b'[' => open.push(None),
            b'}' | b']' => {
                if let Some(Some(o)) = open.pop() {
                    done.push(o);
                }
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let s = &text[start..i];
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < b.len() && b[j] == b':' {
                    if let Some(Some((_, keys))) = open.last_mut() {
                        keys.push(s.to_string());
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    assert!(open.is_empty(), "unbalanced JSON: {text}");
    done.sort_by_key(|(n, _)| *n);
    done.into_iter().map(|(_, k)| k).collect()
}

/// The document's own keys (its first object's), checking it parses.
fn top(text: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(text).expect("a JSON document");
    objects(text).into_iter().next().expect("an object")
}

fn assert_sorted_everywhere(what: &str, text: &str) {
    for keys in objects(text) {
        let mut s = keys.clone();
        s.sort();
        assert_eq!(keys, s, "{what}: an object's keys are not sorted");
    }
}

fn ok(what: &str, o: &Out) -> String {
    assert_eq!(o.code, 0, "{what}: {o:?}");
    o.stdout.clone()
}

#[test]
fn repair_json_documents_keep_their_key_order() {
    let d = Drill::new();
    let script = d.example_script(Some(50));
    let s = script.to_str().expect("utf8");
    let live = d.live.to_str().expect("utf8");

    // diff: JSON lines, every object sorted.
    let o = d.run(&["--json", "diff", &d.snap_id, live], &[]);
    assert_eq!(o.code, 3, "differences found: {o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines.len() > 3);
    for l in &lines {
        assert_sorted_everywhere("diff line", l);
    }
    assert_eq!(
        top(lines[lines.len() - 2]),
        ["compared", "counts", "key", "table", "type"]
    );
    assert_eq!(
        top(lines[lines.len() - 1]),
        [
            "counts",
            "live",
            "schema_differences",
            "script",
            "skipped",
            "snapshot",
            "snapshot_db",
            "snapshot_read",
            "tables",
            "type"
        ]
    );
    // A table the key does not pair: a `skipped` line, and the summary's list.
    let o = d.run(
        &[
            "--json", "diff", &d.snap_id, live, "--table", "deploys", "--key", "service",
        ],
        &[],
    );
    assert_eq!(o.code, 4, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(top(lines[0]), ["reason", "table", "type"]);
    assert_sorted_everywhere("diff summary with skipped", lines[1]);
    assert_eq!(objects(lines[1])[2], ["reason", "table"]);

    // The dry run: the plan in its type's field order.
    let plan_file = d.dir.path().join("plan.json");
    let pf = plan_file.to_str().expect("utf8");
    let dry = ok(
        "dry run",
        &d.run(&["--json", "repair", s, "--plan-out", pf], &[]),
    );
    assert_eq!(
        top(&dry),
        [
            "script",
            "script_sha256",
            "description",
            "live",
            "source",
            "source_snapshot",
            "source_db",
            "tables",
            "sql_steps",
            "resume"
        ]
    );
    assert_eq!(
        objects(&dry)[1],
        [
            "table",
            "key",
            "compared",
            "actions",
            "guard",
            "counts",
            "schema_diffs",
            "blocked",
            "rows"
        ]
    );
    // The plan file: sorted everywhere.
    let text = std::fs::read_to_string(&plan_file).expect("plan file");
    assert_sorted_everywhere("plan file", &text);
    assert_eq!(
        top(&text),
        [
            "changes",
            "counts",
            "format",
            "live",
            "script",
            "script_path",
            "script_sha256",
            "source_snapshot",
            "version"
        ]
    );

    // The run: plan and outcome, sorted everywhere.
    let run = ok(
        "apply",
        &d.run(&["--json", "repair", "--apply", "--plan", pf, "--yes"], &[]),
    );
    assert_sorted_everywhere("repair --apply", &run);
    assert_eq!(top(&run), ["outcome", "plan"]);
    let v: serde_json::Value = serde_json::from_str(&run).expect("json");
    let repair_id = v["outcome"]["repair_id"].as_str().expect("id").to_string();
    // Nothing left to do: one line, sorted everywhere.
    let noop = ok(
        "noop",
        &d.run(&["--json", "repair", s, "--apply", "--yes"], &[]),
    );
    assert_eq!(noop.lines().count(), 1);
    assert_sorted_everywhere("nothing to repair", &noop);
    assert_eq!(top(&noop), ["message", "outcome", "plan"]);

    // The audit listing and its verification: sorted everywhere.
    let audit = ok("audit", &d.run(&["--json", "audit"], &[]));
    assert_sorted_everywhere("audit", &audit);
    assert_eq!(objects(&audit)[0], ["entry", "key", "sha256"]);
    let verify = ok("audit verify", &d.run(&["--json", "audit", "verify"], &[]));
    assert_sorted_everywhere("audit verify", &verify);
    assert_eq!(top(&verify), ["broken", "entries", "ok", "unclaimed"]);

    // Undo: its type's field order.
    let undo = ok(
        "undo",
        &d.run(&["--json", "undo", &repair_id, "--yes"], &[]),
    );
    assert_eq!(
        top(&undo),
        [
            "repair_id",
            "undoes",
            "pre_repair_snapshot",
            "rows_changed",
            "conflicts",
            "audit_key"
        ]
    );

    // A run stopped part-way, then abandoned: its type's field order.
    let o = d.run(
        &["--json", "repair", s, "--apply", "--yes"],
        &[("SNAPBACK_REPAIR_EXIT_AFTER_BATCHES", "1")],
    );
    assert_ne!(o.code, 0, "the run stopped: {o:?}");
    let c = rusqlite::Connection::open(&d.live).expect("open");
    let run_id: String = c
        .query_row(
            "SELECT repair_id FROM _snapback_repair_runs WHERE finished_at IS NULL",
            [],
            |r| r.get(0),
        )
        .expect("the unfinished run");
    let abandoned = ok(
        "abandon",
        &d.run(
            &["--json", "repair", "--abandon", &run_id, "--live", live],
            &[],
        ),
    );
    assert_eq!(
        top(&abandoned),
        ["repair_id", "kind", "rows_kept", "audit_key"]
    );

    // An error: the object on stderr's last line.
    let o = d.run(&["--json", "undo", "ffffffff", "--yes"], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    let last = o.stderr.lines().last().expect("stderr");
    assert_eq!(top(last), ["error"]);
    assert_eq!(objects(last)[1], ["kind", "message", "causes", "exit_code"]);
}
