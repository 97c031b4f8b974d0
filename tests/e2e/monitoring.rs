//! Monitoring of continuous capture: `status` reports each source's RPO
//! (the age of its newest durable point) and what the watcher of the source
//! reports in its status file, and exits 3 when either is not fine.

use std::path::PathBuf;
use std::time::Duration;

use snapback_core::watch_status::{self, Event, PointRef, VerifyRecord, WatchStatus};
use snapback_testkit::{stdout, Env};

fn repo_id(env: &Env) -> String {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).expect("config"))
            .expect("json");
    cfg["repo_id"].as_str().expect("repo_id").to_owned()
}

/// Where `snapback` run by the test kit looks for watcher reports.
fn watch_dir(env: &Env) -> PathBuf {
    watch_status::dir(&env.repo().with_file_name("xdg-state").join("snapback"))
}

fn snapshotted_file(env: &Env) -> String {
    let f = env.path("app.db");
    std::fs::write(&f, "x").expect("write");
    env.snapshot(&f);
    std::fs::canonicalize(&f)
        .expect("canonical")
        .to_string_lossy()
        .into_owned()
}

/// A report as a healthy watcher of `path` in this (live) process writes it.
fn healthy(env: &Env, path: &str) -> WatchStatus {
    let now = snapback_core::time::now();
    let mut s = WatchStatus::new(
        &repo_id(env),
        path,
        Duration::from_secs(1),
        Duration::from_secs(10),
    );
    s.last_tick = Some(now);
    s.durable = Some(PointRef {
        time: now,
        id: "p".into(),
    });
    s.last_upload = Some(now);
    s.last_verify = Some(VerifyRecord::new(now, 1, &[]));
    s
}

fn status_json(env: &Env, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = env.run(&[&["--json", "status"][..], args].concat());
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("json ({e}): {}", stdout(&out)));
    (out.status.code(), v)
}

/// The sample line of the metric starting with `prefix`.
fn prom_line<'a>(prom: &'a str, prefix: &str) -> &'a str {
    prom.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{prefix} in {prom}"))
}

fn row<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    v["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|r| r["source"] == path)
        .unwrap_or_else(|| panic!("a row for {path}: {v}"))
}

#[test]
fn status_reports_rpo_and_exits_3_past_max_rpo() {
    let env = Env::new();
    let path = snapshotted_file(&env);
    let (code, v) = status_json(&env, &["--max-rpo", "1h"]);
    assert_eq!(code, Some(0), "{v}");
    let r = row(&v, &path);
    let rpo = r["rpo_seconds"].as_f64().expect("rpo");
    assert!((0.0..60.0).contains(&rpo), "fresh: {r}");
    assert_eq!(r["max_rpo_seconds"], 3600.0);
    assert_eq!(r["rpo_exceeded"], false);
    assert!(r["newest_point_time"].is_string());
    assert!(r["watch"].is_null(), "no watcher ran: {r}");

    std::thread::sleep(Duration::from_millis(1100));
    let (code, v) = status_json(&env, &["--max-rpo", "1s"]);
    assert_eq!(code, Some(3), "past the bound: {v}");
    assert_eq!(row(&v, &path)["state"], "RPO");
    assert_eq!(row(&v, &path)["rpo_exceeded"], true);

    // The bound from the config file, per source; the flag overrides it.
    let cfg = env.path("snapback.toml");
    std::fs::write(
        &cfg,
        format!("[[source]]\npath = \"{path}\"\nmax_rpo = \"1s\"\n"),
    )
    .expect("write");
    let c = cfg.to_str().expect("utf8");
    assert_eq!(env.run(&["--config", c, "status"]).status.code(), Some(3));
    assert_eq!(
        env.run(&["--config", c, "status", "--max-rpo", "1h"])
            .status
            .code(),
        Some(0)
    );
    std::fs::write(
        &cfg,
        format!("[[source]]\npath = \"{path}\"\nmax_rpo = \"soon\"\n"),
    )
    .expect("write");
    let out = env.run(&["--config", c, "status"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        snapback_testkit::stderr(&out).contains("max_rpo"),
        "names the setting: {}",
        snapback_testkit::stderr(&out)
    );

    let prom = env.ok(&["status", "--prometheus"]);
    assert!(
        prom.contains(&format!("snapback_rpo_seconds{{path=\"{path}\",host=")),
        "{prom}"
    );
}

#[test]
fn status_shows_a_healthy_watcher_as_up() {
    let env = Env::new();
    let path = snapshotted_file(&env);
    watch_status::save(&watch_dir(&env), &healthy(&env, &path)).expect("save");
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, Some(0), "{v}");
    let w = &row(&v, &path)["watch"];
    assert_eq!(w["running"], true, "{w}");
    assert_eq!(w["falling_behind"], false);
    assert_eq!(w["problems"].as_array().expect("problems").len(), 0, "{w}");
    assert_eq!(w["pid"], std::process::id());
    let text = env.ok(&["status"]);
    assert!(
        text.contains(&format!("watch {path}: running")),
        "the table says it: {text}"
    );
    let prom = env.ok(&["status", "--prometheus"]);
    for m in [
        "snapback_watch_up{path=",
        "snapback_watch_last_tick_timestamp_seconds{path=",
        "snapback_verify_live_mismatch{path=",
    ] {
        let line = prom_line(&prom, m);
        if m.starts_with("snapback_watch_up") {
            assert!(line.ends_with(" 1"), "{line}");
        }
        if m.starts_with("snapback_verify_live_mismatch") {
            assert!(line.ends_with(" 0"), "{line}");
        }
    }
}

#[test]
fn status_says_a_watcher_falls_behind_cannot_upload_or_mismatches() {
    let env = Env::new();
    let path = snapshotted_file(&env);
    let now = snapback_core::time::now();
    let mut s = healthy(&env, &path);
    s.last_tick = Some(now - Duration::from_secs(120));
    s.last_upload = Some(now - Duration::from_secs(120));
    s.last_upload_error = Some(Event {
        time: now,
        message: "connection refused by 127.0.0.1:9".into(),
    });
    s.pending_points = 7;
    s.last_fallback = Some(Event {
        time: now,
        message: "the WAL restarted (salts changed)".into(),
    });
    s.fallbacks = 3;
    s.last_verify = Some(VerifyRecord::new(now, 20, &[2, 9]));
    watch_status::save(&watch_dir(&env), &s).expect("save");

    let out = env.run(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let err = snapback_testkit::stderr(&out);
    for said in [
        "falling behind",
        "connection refused by 127.0.0.1:9",
        "7 point(s) pending",
        "fell back to a full scan 3 time(s)",
        "the WAL restarted",
        "pages 2, 9",
    ] {
        assert!(err.contains(said), "{said:?} in {err}");
    }
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, Some(3));
    let r = row(&v, &path);
    assert_eq!(r["state"], "WATCH");
    let w = &r["watch"];
    assert_eq!(w["falling_behind"], true);
    assert_eq!(w["upload_failing"], true);
    assert_eq!(w["verify_mismatch"], true);
    assert_eq!(
        w["last_verify"]["mismatching_pages"],
        serde_json::json!([2, 9])
    );
    assert_eq!(w["problems"].as_array().expect("problems").len(), 3, "{w}");
    assert_eq!(w["warnings"].as_array().expect("warnings").len(), 1, "{w}");
    let prom = env.run(&["status", "--prometheus"]);
    let prom = stdout(&prom);
    for m in [
        "snapback_watch_falling_behind{",
        "snapback_watch_upload_failing{",
        "snapback_verify_live_mismatch{",
    ] {
        let line = prom_line(&prom, m);
        assert!(line.ends_with(" 1"), "{line}");
    }
}

#[test]
fn status_says_a_killed_watcher_is_not_running() {
    let env = Env::new();
    let path = snapshotted_file(&env);
    let mut s = healthy(&env, &path);
    // A pid no process has (past Linux's pid_max): the watcher was killed.
    s.pid = u32::MAX;
    watch_status::save(&watch_dir(&env), &s).expect("save");
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, Some(3), "{v}");
    let w = &row(&v, &path)["watch"];
    assert_eq!(w["running"], false);
    assert!(
        w["problems"][0]
            .as_str()
            .expect("problem")
            .contains("not running"),
        "{w}"
    );
    let prom = env.run(&["status", "--prometheus"]);
    assert!(
        stdout(&prom)
            .lines()
            .any(|l| l.starts_with("snapback_watch_up{") && l.ends_with(" 0")),
        "{}",
        stdout(&prom)
    );
}

#[test]
fn status_lists_a_watcher_of_another_repository_nowhere() {
    let env = Env::new();
    let path = snapshotted_file(&env);
    let mut s = healthy(&env, &path);
    s.repo_id = "0123456789abcdef0123456789abcdef".into();
    s.pid = u32::MAX;
    watch_status::save(&watch_dir(&env), &s).expect("save");
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, Some(0), "another repository's watcher: {v}");
    assert!(row(&v, &path)["watch"].is_null());
}

#[test]
fn status_measures_rpo_from_the_newest_timeline_point() {
    let env = Env::new();
    let db = crate::timeline_kit::Db::new(&env, "app.db");
    let image = db.image();
    let base = crate::timeline_kit::base(&env, &db);
    // The base is older than the point by at least this.
    std::thread::sleep(Duration::from_millis(1500));
    let repo = crate::timeline_kit::open_repo(&env);
    let (seg, _) = crate::timeline_kit::segment(&repo, &db, base, image, 2);
    repo.commit_segment(&seg).expect("commit");
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, Some(0), "{v}");
    let r = row(&v, &db.name());
    assert_eq!(
        r["newest_point_time"],
        snapback_core::time::format_rfc3339(seg.points[1].time),
        "the newest point, not the base: {r}"
    );
    assert_eq!(
        r["last_snapshot"],
        base.to_hex(),
        "the newest snapshot is the base"
    );
    assert_eq!(r["rpo_basis"], "point");
    let rpo = r["rpo_seconds"].as_f64().expect("rpo");
    let age = r["age_seconds"].as_i64().expect("age") as f64;
    assert!(
        rpo + 0.5 <= age,
        "rpo {rpo} from the point, age {age} from the base"
    );
}

#[test]
fn idle_database_with_a_healthy_watcher_has_the_rpo_of_its_last_tick() {
    let env = Env::new();
    let path = snapshotted_file(&env);
    let newest = env.snapshots_json()[0]["time"]
        .as_str()
        .map(|t| snapback_core::time::parse_rfc3339(t).expect("time"))
        .expect("time");
    std::thread::sleep(Duration::from_millis(1500));
    let mut s = healthy(&env, &path);
    s.durable = Some(PointRef {
        time: newest,
        id: "the snapshot".into(),
    });
    watch_status::save(&watch_dir(&env), &s).expect("save");
    let (code, v) = status_json(&env, &["--max-rpo", "1s"]);
    assert_eq!(code, Some(0), "nothing changed since the point: {v}");
    let r = row(&v, &path);
    assert_eq!(r["rpo_basis"], "watcher", "{r}");
    // Points pending: the RPO is the durable point's age again.
    s.pending_points = 1;
    watch_status::save(&watch_dir(&env), &s).expect("save");
    let (code, v) = status_json(&env, &["--max-rpo", "1s"]);
    assert_eq!(code, Some(3), "a pending point is not durable: {v}");
    assert_eq!(row(&v, &path)["rpo_basis"], "point");
}
