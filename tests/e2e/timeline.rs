//! Timeline points through the real binary: a real SQLite database changed
//! by a writer, points committed over a `snapback snapshot` with the core
//! API (as `snapback watch` commits them), then listed, restored by name,
//! by `@TIME` and as `latest`, and compared with `diff`, each byte for byte
//! against a copy of what SQLite had at that point.

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use snapback_core::storage::LocalStore;
use snapback_core::{Repository, Segment};
use snapback_testkit::Env;

/// What SQLite has now, byte for byte: the WAL checkpointed into the file,
/// which is then copied.
fn image(w: &Connection, db: &Path) -> Vec<u8> {
    w.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    std::fs::read(db).expect("read db")
}

struct Timeline {
    env: Env,
    db: std::path::PathBuf,
    /// The image at the base, then at each point.
    images: Vec<Vec<u8>>,
    seg: Segment,
    /// The point names, `SEGMENT/INDEX`.
    names: Vec<String>,
}

fn timeline() -> Timeline {
    let env = Env::new();
    let db = env.path("app.db");
    let w = Connection::open(&db).expect("open");
    w.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300)
         INSERT INTO acct(owner, balance) SELECT printf('owner-%04d', x), 1000 FROM c;",
    )
    .expect("schema");
    let mut images = vec![image(&w, &db)];
    let base = env.snapshot(&db);
    let repo = Repository::open(Arc::new(LocalStore::open(env.repo()).expect("store")))
        .expect("open repo");
    let steps = [
        "UPDATE acct SET balance = balance - 10 WHERE id = 7; UPDATE acct SET balance = balance + 10 WHERE id = 250;",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200)
         INSERT INTO acct(owner, balance) SELECT printf('new-%04d', x), 0 FROM c;",
        "DELETE FROM acct WHERE id > 300; UPDATE acct SET owner = 'renamed' WHERE id = 1;",
    ];
    let mut points = Vec::new();
    for sql in steps {
        w.execute_batch(sql).expect("write");
        let now = image(&w, &db);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let p = repo
            .point_between_images(
                images.last().expect("prev"),
                &now,
                4096,
                snapback_core::time::now(),
            )
            .expect("point");
        points.push(p);
        images.push(now);
    }
    let seg = Segment {
        path: std::fs::canonicalize(&db)
            .expect("canonical")
            .to_string_lossy()
            .into_owned(),
        base: snapback_core::Id::from_hex(&base).expect("base id"),
        page_size: 4096,
        points,
    };
    let id = repo.commit_segment(&seg).expect("commit segment");
    let names = (0..3)
        .map(|k| format!("{}/{k}", &id.to_hex()[..8]))
        .collect();
    // The live database moves on: restores must give the past, not this.
    w.execute_batch("UPDATE acct SET balance = 0;")
        .expect("later write");
    Timeline {
        env,
        db,
        images,
        seg,
        names,
    }
}

impl Timeline {
    fn restore(&self, sel: &str, name: &str) -> Vec<u8> {
        let dest = self.env.path(name);
        let out = self
            .env
            .run(&["restore", sel, dest.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "restore {sel}: {}",
            snapback_testkit::stderr(&out)
        );
        std::fs::read(dest).expect("restored")
    }
}

#[test]
fn points_restore_byte_identical_by_name_by_time_and_as_latest() {
    let t = timeline();
    for (k, name) in t.names.iter().enumerate() {
        assert!(
            t.restore(name, &format!("n{k}.db")) == t.images[k + 1],
            "point {name} is what SQLite had"
        );
        let at = snapback_core::time::format_rfc3339(t.seg.points[k].time);
        assert!(
            t.restore(&format!("@{at}"), &format!("t{k}.db")) == t.images[k + 1],
            "@{at} selects point {k}"
        );
        let just_before = snapback_core::time::format_rfc3339(
            t.seg.points[k].time - std::time::Duration::from_nanos(1),
        );
        assert!(
            t.restore(&format!("@{just_before}"), &format!("b{k}.db")) == t.images[k],
            "a nanosecond before point {k}: the capture before it"
        );
    }
    let dest = t.env.path("latest.db");
    let out = t
        .env
        .run(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", snapback_testkit::stderr(&out));
    assert!(
        snapback_testkit::stderr(&out).contains(&format!("using point {}", t.names[2])),
        "says which point: {}",
        snapback_testkit::stderr(&out)
    );
    assert!(std::fs::read(&dest).expect("latest") == t.images[3]);
    // The restored point is a database that passes its integrity check.
    let c = Connection::open(&dest).expect("open restored");
    let n: i64 = c
        .query_row("SELECT count(*) FROM acct", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 300);
    assert_eq!(snapback_testkit::integrity(&dest), "ok");
}

#[test]
fn snapshots_lists_points_only_with_the_points_flag() {
    let t = timeline();
    let plain: serde_json::Value =
        serde_json::from_str(&t.env.ok(&["--json", "snapshots"])).expect("json");
    assert_eq!(plain.as_array().expect("array").len(), 1, "{plain}");
    assert!(plain[0].get("point").is_none());
    let all: serde_json::Value =
        serde_json::from_str(&t.env.ok(&["--json", "snapshots", "--points"])).expect("json");
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 4, "the base and three points");
    for (k, name) in t.names.iter().enumerate() {
        let p = &all[k + 1];
        assert_eq!(p["id"], name.as_str(), "{p}");
        assert_eq!(p["point"]["index"], k);
        assert_eq!(p["point"]["base"], all[0]["id"]);
        assert_eq!(
            p["point"]["pages_changed"],
            t.seg.points[k].changes.len(),
            "{p}"
        );
        assert_eq!(
            p["files"][0]["size"],
            t.images[k + 1].len(),
            "the database's size at the point"
        );
    }
    // Its `id` selects it, as a manifest's does.
    let id = all[2]["id"].as_str().expect("id");
    assert!(t.restore(id, "by-json-id.db") == t.images[2]);
    let text = t.env.ok(&["snapshots", "--points"]);
    assert!(text.contains(&t.names[1]), "{text}");
}

#[test]
fn diff_compares_a_point_by_name_and_at_its_time_with_a_live_database() {
    let t = timeline();
    // A copy of what SQLite had at point 0: no differences.
    let copy = t.env.path("copy-at-0.db");
    std::fs::write(&copy, &t.images[1]).expect("copy");
    // By its name, and by `@T` at the point's own time (the newest point at
    // or before T), as for restore and mount.
    let at = format!(
        "@{}",
        snapback_core::time::format_rfc3339(t.seg.points[0].time)
    );
    for sel in [t.names[0].as_str(), at.as_str()] {
        let out = t.env.run(&[
            "diff",
            sel,
            copy.to_str().expect("utf8"),
            "--path",
            t.seg.path.as_str(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "diff {sel}: {}{}",
            snapback_testkit::stdout(&out),
            snapback_testkit::stderr(&out)
        );
    }
    // The live database, changed since: differences (exit 3).
    let out = t.env.run(&[
        "diff",
        &t.names[0],
        t.db.to_str().expect("utf8"),
        "--path",
        t.seg.path.as_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        snapback_testkit::stdout(&out),
        snapback_testkit::stderr(&out)
    );
}

#[test]
fn a_malformed_point_name_is_a_usage_error_that_shows_the_form() {
    let t = timeline();
    let err = t
        .env
        .fails(&["restore", "abc/1", t.env.path("x").to_str().expect("utf8")]);
    assert!(err.contains("SEGMENT/INDEX"), "{err}");
    let err = t.env.fails(&[
        "restore",
        &format!("{}9", &t.names[0][..t.names[0].len() - 1]),
        t.env.path("y").to_str().expect("utf8"),
    ]);
    assert!(err.contains("there is no point 9"), "{err}");
}
