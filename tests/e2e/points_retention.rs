//! Retention of timeline points through the real binary: `forget
//! --keep-within-points` thins a segment into a rewritten one whose kept
//! points restore exactly what SQLite had, prune reclaims the dropped
//! pages, and a forget killed between committing the rewritten segment and
//! deleting the old one leaves a repository that check passes and that
//! lists and resolves every point once.

use std::time::{Duration, Instant};

use snapback_core::{Id, Segment};
use snapback_testkit::Env;

use crate::timeline_kit::{base, open_repo, point, Db};

/// A segment of 5 points over a fresh base: points 0-2, then a pause of
/// 2.2 s, then points 3 and 4 (so `--keep-within-points 1s` keeps 3 and 4
/// only). The images SQLite had at the base and at each point.
fn five_points(env: &Env, db: &Db, tags: &[&str]) -> (Id, Segment, Vec<Vec<u8>>) {
    let mut images = vec![db.image()];
    let b = if tags.is_empty() {
        base(env, db)
    } else {
        let mut args = vec!["snapshot"];
        for t in tags {
            args.extend(["--tag", t]);
        }
        args.push(db.path.to_str().expect("utf8"));
        let id = env.ok(&args).trim().to_string();
        Id::from_hex(&id).unwrap_or_else(|| panic!("a snapshot id: {id:?}"))
    };
    let repo = open_repo(env);
    let mut points = Vec::new();
    for k in 0..5 {
        if k == 3 {
            std::thread::sleep(Duration::from_millis(2200));
        }
        // Points 0 and 2 change the same row: its page in the merged
        // point is point 2's.
        db.update([1, 7, 1, 13, 19][k]);
        let now = db.image();
        points.push(point(&repo, images.last().expect("prev"), &now));
        images.push(now);
    }
    let seg = Segment {
        path: db.name(),
        base: b,
        page_size: 4096,
        points,
    };
    let id = repo.commit_segment(&seg).expect("commit");
    (id, seg, images)
}

/// Thins `five_points` to points 2, 3 and 4 (the newest 3, two of them
/// within 1 s).
const THIN: [&str; 5] = ["forget", "--keep-within-points", "1s", "--keep-last", "3"];

/// `snapshots --points --json`, the points only.
fn listed_points(env: &Env) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["--json", "snapshots", "--points"])).expect("json");
    v.as_array()
        .expect("array")
        .iter()
        .filter(|s| s.get("point").is_some_and(|p| !p.is_null()))
        .cloned()
        .collect()
}

fn restore(env: &Env, sel: &str, name: &str) -> Vec<u8> {
    let dest = env.path(name);
    env.ok(&["restore", sel, dest.to_str().expect("utf8")]);
    std::fs::read(dest).expect("restored")
}

fn check_passes(env: &Env) {
    let out = env.run(&["check", "--read-data"]);
    assert!(
        out.status.success() && snapback_testkit::stderr(&out).contains("no problems"),
        "{}",
        snapback_testkit::stderr(&out)
    );
}

fn timeline_objects(env: &Env) -> usize {
    std::fs::read_dir(env.repo().join("timeline"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn keep_within_points_thins_older_points_into_a_rewritten_segment() {
    let env = Env::new();
    let db = Db::new(&env, "app.db");
    let (old, seg, images) = five_points(&env, &db, &[]);

    // A keep rule keeps older points too, counting points and snapshots
    // together: the 3 newest are points 4, 3 and 2.
    let out = env.ok(&[&["--json"][..], &THIN, &["--dry-run"]].concat());
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let sp = &v["points"]["segments"][0];
    let kept: Vec<u64> = sp["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|d| d["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(kept, vec![2, 3, 4], "{sp}");
    assert_eq!(sp["keep"][2]["reasons"][0], "within points", "{sp}");
    assert_eq!(sp["keep"][0]["reasons"][0], "last", "{sp}");
    assert_eq!(
        sp["drop"][0]["name"],
        format!("{}/0", old.short()),
        "the points that would go are named: {sp}"
    );
    assert_eq!(
        v["groups"][0]["keep"][0]["id"],
        seg.base.to_hex(),
        "the base stays: {v}"
    );
    assert_eq!(timeline_objects(&env), 1, "a dry run changes nothing");
    let text = env.ok(&["forget", "--keep-within-points", "1s", "--dry-run"]);
    assert!(
        text.contains(&format!("drop point {}/1", old.short())),
        "the text plan lists the points that go: {text}"
    );

    let before = open_repo(&env).stored_bytes().expect("bytes");
    let prune = ["--prune", "--min-pack-age", "0s"];
    let out = env.ok(&[
        &["--json", "forget", "--keep-within-points", "1s"][..],
        &prune,
    ]
    .concat());
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["points_applied"]["points_dropped"], 3, "{v}");
    assert_eq!(v["points_applied"]["segments_rewritten"], 1, "{v}");
    let segs = open_repo(&env).segments().expect("segments");
    assert_eq!(segs.len(), 1, "one rewritten segment");
    let (new, thinned) = &segs[0];
    assert_ne!(*new, old, "the old segment is gone");
    assert_eq!(thinned.points.len(), 2);
    assert_eq!(thinned.points[0].time, seg.points[3].time);
    for k in 0..2 {
        assert!(
            restore(&env, &format!("{}/{k}", new.short()), &format!("k{k}.db")) == images[4 + k],
            "kept point {k} restores what SQLite had at it"
        );
    }
    assert_eq!(env.snapshots_json().len(), 1, "the base stays");
    assert!(
        open_repo(&env).stored_bytes().expect("bytes") < before,
        "prune reclaimed the pages only the dropped points named"
    );
    check_passes(&env);
}

#[test]
fn keep_within_points_keeps_points_over_a_pre_repair_base_until_it_is_released() {
    let env = Env::new();
    let db = Db::new(&env, "app.db");
    let (_, seg, _) = five_points(&env, &db, &["pre-repair"]);
    let plan = |env: &Env| -> serde_json::Value {
        let out = env.ok(&[
            "--json",
            "forget",
            "--keep-within-points",
            "1s",
            "--dry-run",
        ]);
        serde_json::from_str(&out).expect("json")
    };
    let v = plan(&env);
    assert!(
        v["groups"][0]["remove"]
            .as_array()
            .expect("remove")
            .is_empty(),
        "no snapshot goes without a keep rule: {v}"
    );
    let sp = &v["points"]["segments"][0];
    assert_eq!(
        sp["keep"].as_array().expect("keep").len(),
        5,
        "every point over an unreleased pre-repair base stays: {sp}"
    );
    assert_eq!(
        sp["keep"][0]["reasons"][0], "pre-repair (not released)",
        "{sp}"
    );
    env.ok(&["release", &seg.base.to_hex()]);
    let v = plan(&env);
    let sp = &v["points"]["segments"][0];
    assert_eq!(
        sp["drop"].as_array().expect("drop").len(),
        3,
        "released: the points older than 1 s go: {sp}"
    );
}

/// The fault the rewrite is ordered for: the real binary killed after the
/// thinned segment is committed and before the old one is deleted.
#[test]
fn a_forget_killed_between_the_rewrite_and_the_delete_loses_and_duplicates_no_point() {
    let env = Env::new();
    let db = Db::new(&env, "app.db");
    let (old, seg, images) = five_points(&env, &db, &[]);
    let mut cmd = env.cmd(&THIN);
    cmd.env("SNAPBACK_TEST_DELAY_AFTER_SEGMENT_REWRITE_MS", "20000");
    let mut child = snapback_testkit::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while timeline_objects(&env) < 2 {
        assert!(
            Instant::now() < deadline,
            "the rewritten segment never appeared"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "forget ended before the pause"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert_eq!(timeline_objects(&env), 2, "both segments are left");

    // check passes, and every point is listed once and restores exactly.
    check_passes(&env);
    let listed = listed_points(&env);
    let times: Vec<&str> = listed
        .iter()
        .map(|p| p["time"].as_str().expect("time"))
        .collect();
    let mut unique = times.clone();
    unique.dedup();
    assert_eq!(times, unique, "each point listed once: {times:?}");
    assert_eq!(listed.len(), 5, "no point lost: {times:?}");
    for (k, p) in listed.iter().enumerate() {
        let name = p["id"].as_str().expect("name");
        assert!(
            restore(&env, name, &format!("l{k}.db")) == images[k + 1],
            "{name} restores what SQLite had at point {k}"
        );
        let at = snapback_core::time::format_rfc3339_nanos(seg.points[k].time);
        assert!(
            restore(&env, &format!("@{at}"), &format!("t{k}.db")) == images[k + 1],
            "@{at} resolves to point {k}"
        );
    }
    // A name of the old segment still selects its copy.
    assert!(restore(&env, &format!("{}/4", old.short()), "old4.db") == images[5]);

    // The next forget finishes the job: the old copies go, and nothing else.
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&[&["--json"][..], &THIN].concat())).expect("json");
    let sp = v["points"]["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .find(|s| s["segment"] == old.to_hex())
        .cloned()
        .expect("the old segment is in the plan");
    let copies = sp["drop"]
        .as_array()
        .expect("drop")
        .iter()
        .filter(|d| d["copy_kept"].is_string())
        .count();
    assert_eq!(copies, 3, "its 3 kept points are copies: {sp}");
    let segs = open_repo(&env).segments().expect("segments");
    assert_eq!(segs.len(), 1, "the old segment is gone");
    assert_eq!(segs[0].1.points.len(), 3);
    assert_ne!(segs[0].0, old);
    let listed = listed_points(&env);
    assert_eq!(listed.len(), 3);
    for (k, p) in listed.iter().enumerate() {
        let name = p["id"].as_str().expect("name");
        assert!(restore(&env, name, &format!("f{k}.db")) == images[k + 3]);
    }
    check_passes(&env);
}
