//! End-to-end: the real `snapback` binary on real SQLite files built by
//! fixtures/make-drill.py (a `deploys` table, a snapshot, a bad migration
//! that overwrites `status` in 5% of rows, then legitimate activity).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::lab::{ok, Lab, LIMIT};
use crate::util::{snapback, spawn_snapback, wait_out, workspace, Out};

pub struct Drill {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub live: PathBuf,
    pub snap_id: String,
    /// id -> status before the incident.
    pub orig: BTreeMap<i64, String>,
    pub damaged: BTreeSet<i64>,
    pub inserted: BTreeSet<i64>,
    pub updated: BTreeSet<i64>,
}

pub fn fixture(phase: &str, db: &Path) -> serde_json::Value {
    let script = workspace().join("fixtures/make-drill.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(phase)
        .arg(db)
        .output()
        .expect("python3 is needed to build the drill fixture (apt-get install python3)");
    assert!(
        out.status.success(),
        "{phase}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fixture json")
}

/// The row ids listed under `k` in a drill phase's JSON report.
pub fn ids(v: &serde_json::Value, k: &str) -> BTreeSet<i64> {
    v[k].as_array()
        .expect("ids")
        .iter()
        .filter_map(|x| x.as_i64())
        .collect()
}

pub fn statuses(db: &Path) -> BTreeMap<i64, (String, String)> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT id, status, updated_at FROM deploys")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

impl Drill {
    pub fn new() -> Drill {
        let lab = Lab::drill("deploys.db");
        let orig = statuses(&lab.live)
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let snap_id = lab.snapshot();
        let Lab { dir, repo, live } = lab;
        let d = fixture("damage", &live);
        let a = fixture("after", &live);
        Drill {
            repo,
            snap_id,
            orig,
            damaged: ids(&d, "damaged"),
            inserted: ids(&a, "inserted"),
            updated: ids(&a, "updated"),
            live,
            dir,
        }
    }

    /// The shipped example script, pointed at this drill's snapshot and
    /// database; everything else as shipped.
    pub fn example_script(&self, batch_size: Option<usize>) -> PathBuf {
        let text =
            std::fs::read_to_string(workspace().join("docs/examples/deploys-bad-migration.toml"))
                .expect("example script");
        let mut text = text
            .replace(
                "snapshot = \"@2026-02-02T17:00:00Z\"",
                &format!("snapshot = \"{}\"", self.snap_id),
            )
            .replace(
                "live = \"/var/lib/deployd/deploys.db\"",
                &format!("live = \"{}\"", self.live.display()),
            );
        assert!(text.contains(&self.snap_id) && text.contains(self.live.to_str().expect("utf8")));
        if let Some(b) = batch_size {
            text = text.replace("batch_size = 200", &format!("batch_size = {b}"));
        }
        let p = self
            .dir
            .path()
            .join(format!("fix-{}.toml", batch_size.unwrap_or(0)));
        std::fs::write(&p, text).expect("write script");
        p
    }

    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        snapback(&self.repo, args, env, LIMIT)
    }

    /// The rows the repair must change: damaged, and not touched since.
    pub fn to_repair(&self) -> BTreeSet<i64> {
        self.damaged.difference(&self.updated).copied().collect()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        let o = self.run(&["--json", "audit"], &[]);
        ok(&o);
        serde_json::from_str::<Vec<serde_json::Value>>(&o.stdout).expect("audit json")
    }
}

/// A writer that inserts deploys until stopped, as the application would.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Writer {
    pub fn start(db: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let db = db.to_path_buf();
        let handle = std::thread::spawn(move || {
            let c = Connection::open(&db).expect("writer open");
            c.busy_timeout(Duration::from_secs(30)).expect("busy");
            let mut n = 0u64;
            let mut errors = Vec::new();
            let mut id = 100_000i64;
            while !s.load(Ordering::Relaxed) {
                id += 1;
                match c.execute(
                    "INSERT INTO deploys VALUES(?1, 'writer', 'v9', 'succeeded', '2026-02-02T18:00:00Z', '2026-02-02T18:00:00Z')",
                    [id],
                ) {
                    Ok(_) => n += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (n, errors)
        });
        Writer { stop, handle }
    }

    pub fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

/// Checks the live database against the drill's story: repaired rows have
/// their pre-incident status, every other row is as `before` had it.
fn assert_repaired(d: &Drill, before: &BTreeMap<i64, (String, String)>) {
    let after = statuses(&d.live);
    let fix = d.to_repair();
    for (id, (status, updated_at)) in before {
        let (s, u) = after
            .get(id)
            .unwrap_or_else(|| panic!("row {id} disappeared"));
        if fix.contains(id) {
            assert_eq!(s, &d.orig[id], "damaged row {id} not repaired");
        } else {
            assert_eq!(s, status, "row {id} was touched but should not have been");
        }
        assert_eq!(u, updated_at, "updated_at of {id} changed");
    }
}

#[test]
fn drill_example_script_repairs_exactly_the_damaged_rows_while_the_app_writes() {
    let d = Drill::new();
    assert_eq!(d.damaged.len(), 250, "5% of 5000");
    let script = d.example_script(Some(20));
    let s = script.to_str().expect("utf8");

    // Dry run: the plan, and nothing written.
    let before = statuses(&d.live);
    let o = d.run(&["repair", s], &[]);
    ok(&o);
    let fix = d.to_repair();
    // Guarded: rows legitimately updated after the incident whose status now
    // differs from the snapshot's (damaged or not).
    let guarded = d
        .updated
        .iter()
        .filter(|id| d.orig[id] != "rolled_back")
        .count();
    assert!(
        o.stdout.contains(&format!(
            "update {}, insert 0, delete 0, guard-skipped {guarded}, not selected {}",
            fix.len(),
            d.inserted.len()
        )),
        "{o:?}"
    );
    assert!(o.stderr.contains("dry run"));
    assert_eq!(statuses(&d.live), before);

    // Apply while the application inserts.
    let w = Writer::start(&d.live);
    let o = d.run(
        &["repair", s, "--apply", "--yes"],
        &[("SNAPBACK_REPAIR_BATCH_DELAY_MS", "30")],
    );
    let (written, errors) = w.stop();
    ok(&o);
    assert!(errors.is_empty(), "the application saw errors: {errors:?}");
    assert!(written > 10, "the writer ran during the repair ({written})");
    assert!(
        o.stdout.contains("verified: the selection now matches"),
        "{o:?}"
    );
    assert_repaired(&d, &before);
    let after = statuses(&d.live);
    assert_eq!(
        after.keys().filter(|k| **k > 100_000).count() as u64,
        written,
        "every row the application wrote is there"
    );

    // The audit entry holds exactly the change set.
    let a = d.audit();
    assert_eq!(a.len(), 1);
    let e = &a[0]["entry"];
    assert_eq!(e["kind"], "repair");
    assert_eq!(e["source_snapshot"], d.snap_id.as_str());
    assert!(e["pre_repair_snapshot"]
        .as_str()
        .is_some_and(|p| p.len() == 64));
    assert!(e["script"].as_str().is_some_and(|t| t.contains("guard")));
    let changes = e["changes"]["tables"][0]["changes"]
        .as_array()
        .expect("changes");
    let keys: BTreeSet<i64> = changes
        .iter()
        .filter_map(|c| c["key"][0].as_i64())
        .collect();
    assert_eq!(keys, fix);
    for c in changes {
        let id = c["key"][0].as_i64().expect("id");
        assert_eq!(c["op"], "update");
        assert_eq!(c["columns"][0], "status");
        assert_eq!(c["before"][0], "cancelled");
        assert_eq!(c["after"][0], d.orig[&id].as_str());
    }
    // The pre-repair snapshot exists and is tagged.
    let o = d.run(&["--json", "snapshots", "--tag", "pre-repair"], &[]);
    ok(&o);
    let snaps: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(snaps.as_array().map(Vec::len), Some(1));

    // The same script again changes nothing.
    let mid = statuses(&d.live);
    let o = d.run(&["repair", s, "--apply", "--yes"], &[]);
    ok(&o);
    assert!(o.stderr.contains("nothing to repair"), "{o:?}");
    assert_eq!(statuses(&d.live), mid);
    assert_eq!(d.audit().len(), 1, "no audit entry for a no-op");

    // Undo restores the damage exactly, and is audited.
    let id = e["repair_id"].as_str().expect("id").to_string();
    let o = d.run(&["undo", &id, "--yes"], &[]);
    ok(&o);
    let undone = statuses(&d.live);
    for (k, v) in &mid {
        let expect = if fix.contains(k) { &before[k] } else { v };
        assert_eq!(&undone[k], expect, "row {k} after undo");
    }
    let a = d.audit();
    assert_eq!(a.len(), 2);
    assert_eq!(a[1]["entry"]["kind"], "undo");
    assert_eq!(a[1]["entry"]["undoes"], id.as_str());
    let o = d.run(&["audit", "verify"], &[]);
    ok(&o);
    assert!(o.stdout.contains("chain intact"));
    // Undoing twice is refused.
    let o = d.run(&["undo", &id, "--yes"], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("undone already"), "{o:?}");
}

#[test]
fn undo_refuses_rows_changed_since_the_repair_unless_forced() {
    let d = Drill::new();
    let script = d.example_script(None);
    let o = d.run(
        &["repair", script.to_str().expect("utf8"), "--apply", "--yes"],
        &[],
    );
    ok(&o);
    let id = d.audit()[0]["entry"]["repair_id"]
        .as_str()
        .expect("id")
        .to_string();
    let victim = *d.to_repair().iter().next().expect("a repaired row");
    Connection::open(&d.live)
        .expect("open")
        .execute(
            "UPDATE deploys SET status = 'edited' WHERE id = ?1",
            [victim],
        )
        .expect("edit");
    let before = statuses(&d.live);
    let o = d.run(&["undo", &id, "--yes"], &[]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("refusing to undo") && o.stderr.contains(&format!("[{victim}]")),
        "{o:?}"
    );
    assert_eq!(statuses(&d.live), before, "nothing written");
    let o = d.run(&["undo", &id, "--yes", "--force"], &[]);
    ok(&o);
    assert_eq!(statuses(&d.live)[&victim].0, "cancelled");
}

#[test]
fn a_repair_killed_mid_way_resumes_without_loss_or_double_application() {
    let d = Drill::new();
    let script = d.example_script(Some(10));
    let s = script.to_str().expect("utf8");
    let before = statuses(&d.live);
    let mut child = spawn_snapback(
        &d.repo,
        &["repair", s, "--apply", "--yes"],
        &[("SNAPBACK_REPAIR_BATCH_DELAY_MS", "150")],
    );
    // Wait until a few batches are committed, then SIGKILL.
    let c = Connection::open(&d.live).expect("open");
    let start = std::time::Instant::now();
    loop {
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_snapback_repair_journal'",
                [],
                |r| r.get(0),
            )
            .expect("schema");
        if n > 0 {
            let b: i64 = c
                .query_row("SELECT count(*) FROM _snapback_repair_journal", [], |r| {
                    r.get(0)
                })
                .expect("journal");
            if b >= 3 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the repair never got going"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    // Every committed change is recorded, and nothing else was changed.
    let (batches, applied): (i64, i64) = c
        .query_row(
            "SELECT count(*), total(applied) FROM _snapback_repair_journal",
            [],
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)? as i64)),
        )
        .expect("journal");
    let now = statuses(&d.live);
    let repaired = d
        .to_repair()
        .iter()
        .filter(|id| now[id].0 != "cancelled")
        .count() as i64;
    assert_eq!(
        repaired, applied,
        "rows changed == rows recorded in the journal"
    );
    assert!(
        batches < 25,
        "killed before the end ({batches} of 25 batches)"
    );

    let o = d.run(&["repair", s, "--apply", "--yes"], &[]);
    ok(&o);
    assert!(
        o.stdout.contains("RESUME") || o.stderr.contains("resuming"),
        "{o:?}"
    );
    assert_repaired(&d, &before);
    let a = d.audit();
    assert_eq!(a.len(), 1, "one audit entry for the one repair");
    let changes = a[0]["entry"]["changes"]["tables"][0]["changes"]
        .as_array()
        .map(Vec::len);
    assert_eq!(changes, Some(d.to_repair().len()));
    let o = d.run(&["--json", "snapshots", "--tag", "pre-repair"], &[]);
    let snaps: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(
        snaps.as_array().map(Vec::len),
        Some(1),
        "one pre-repair snapshot"
    );
}

#[test]
fn two_repairs_at_once_one_fails_cleanly_or_waits() {
    let d = Drill::new();
    let script = d.example_script(Some(10));
    let s = script.to_str().expect("utf8");
    let first = spawn_snapback(
        &d.repo,
        &["repair", s, "--apply", "--yes"],
        &[("SNAPBACK_REPAIR_BATCH_DELAY_MS", "100")],
    );
    // Wait until the first one holds the lock and is applying.
    let c = Connection::open(&d.live).expect("open");
    let start = std::time::Instant::now();
    while c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = '_snapback_repair_journal'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("schema")
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first repair never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = d.run(&["repair", s, "--apply", "--yes"], &[]);
    assert_eq!(second.code, 11, "another repair holds the lock: {second:?}");
    assert!(
        second.stderr.contains("another repair is running"),
        "{second:?}"
    );
    // A third one waits for the lock, then finds nothing to do.
    let third = d.run(
        &["repair", s, "--apply", "--yes", "--lock-wait", "100"],
        &[],
    );
    let first = wait_out(first, LIMIT);
    ok(&first);
    ok(&third);
    assert!(third.stderr.contains("nothing to repair"), "{third:?}");
    assert_eq!(d.audit().len(), 1);
}

#[test]
fn diff_cli_reports_json_lines_and_sql_that_converges() {
    let d = Drill::new();
    let live = d.live.to_str().expect("utf8");
    let o = d.run(
        &[
            "--json",
            "diff",
            &d.snap_id,
            live,
            "--table",
            "deploys",
            "--columns",
            "status",
        ],
        &[],
    );
    assert_eq!(o.code, 3, "differences found: {o:?}");
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "row").collect();
    let changed: BTreeSet<i64> = rows
        .iter()
        .filter(|r| r["kind"] == "changed")
        .filter_map(|r| r["key"]["id"].as_i64())
        .collect();
    let expect: BTreeSet<i64> = d
        .damaged
        .union(&d.updated)
        .copied()
        .filter(|id| !(d.updated.contains(id) && d.orig[id] == "rolled_back"))
        .collect();
    assert_eq!(changed, expect);
    let only_live: BTreeSet<i64> = rows
        .iter()
        .filter(|r| r["kind"] == "only_in_live")
        .filter_map(|r| r["key"]["id"].as_i64())
        .collect();
    assert_eq!(only_live, d.inserted);
    assert_eq!(
        lines.last().map(|l| l["type"].clone()),
        Some("summary".into())
    );

    // --sql on a copy, then the copy matches the snapshot.
    let copy = d.dir.path().join("copy.db");
    Connection::open(&d.live)
        .expect("open")
        .backup(rusqlite::MAIN_DB, &copy, None)
        .expect("copy");
    let o = d.run(
        &[
            "diff",
            &d.snap_id,
            copy.to_str().expect("utf8"),
            "--path",
            live,
            "--sql",
        ],
        &[],
    );
    assert_eq!(o.code, 3, "{o:?}");
    Connection::open(&copy)
        .expect("copy")
        .execute_batch(&format!("BEGIN;{}COMMIT;", o.stdout))
        .expect("apply --sql output");
    let o = d.run(
        &[
            "diff",
            &d.snap_id,
            copy.to_str().expect("utf8"),
            "--path",
            live,
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{o:?}");

    // --snapshot-db: a database file given directly (as in a mounted snapshot).
    let restored = d.dir.path().join("restored.db");
    ok(&d.run(
        &["restore", &d.snap_id, restored.to_str().expect("utf8")],
        &[],
    ));
    let o = d.run(
        &[
            "diff",
            "--snapshot-db",
            restored.to_str().expect("utf8"),
            copy.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(o.code, 0, "{o:?}");
}
