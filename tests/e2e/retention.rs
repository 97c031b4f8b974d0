//! Retention and monitoring over several sources, hosts and clocks: which
//! policy covers a snapshot, grouping by host and path, snapshots dated in
//! the future, the two kinds of check, and canonical config paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use snapback_testkit::{stderr, stdout, Env};

/// Writes a config file naming the repository and `sources` (TOML bodies of
/// `[[source]]` tables); returns its path.
fn config(env: &Env, body: &str) -> PathBuf {
    let cfg = env.path("snapback.toml");
    std::fs::write(&cfg, format!("repo = \"{}\"\n{body}", env.repo().display())).expect("write");
    cfg
}

/// Runs snapback with `--config cfg`.
fn run_cfg(cfg: &Path, args: &[&str]) -> Output {
    Command::new(snapback_testkit::bin())
        .args(["--config", cfg.to_str().expect("utf8")])
        .args(args)
        .env_remove("SNAPBACK_REPO")
        .env_remove("SNAPBACK_CONFIG")
        .output()
        .expect("run")
}

fn db(path: &Path) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES (randomblob(100));")
        .expect("write");
}

/// Rewrites a snapshot's manifest (an unencrypted repository stores it as
/// JSON named by its SHA-256), as if another host or clock had written it.
/// Returns the new id.
pub fn rewrite_manifest(env: &Env, id: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = env.repo().join("snapshots");
    let old = dir.join(id);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&old).expect("manifest")).expect("json");
    f(&mut v);
    let bytes = serde_json::to_vec_pretty(&v).expect("encode");
    let new = snapback_core::Id::of(&bytes).to_hex();
    std::fs::write(dir.join(&new), bytes).expect("write");
    std::fs::remove_file(old).expect("remove");
    new
}

fn ids(env: &Env) -> Vec<String> {
    env.snapshots_json()
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn a_snapshot_of_two_sources_is_removed_only_when_both_policies_allow_it() {
    let env = Env::new();
    let dir = env.path("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("f"), "f").expect("write");
    let b = env.path("b.db");
    let c = env.path("c.txt");
    std::fs::write(&c, "c").expect("write");
    let cfg = config(
        &env,
        &format!(
            "[[source]]\npath = \"{}\"\n[source.retention]\nkeep_last = 1\n\
             [[source]]\npath = \"{}\"\n[source.retention]\nkeep_last = 50\n\
             [[source]]\npath = \"{}\"\n",
            dir.display(),
            b.display(),
            c.display()
        ),
    );
    for _ in 0..6 {
        db(&b);
        env.ok(&[
            "snapshot",
            dir.to_str().expect("utf8"),
            b.to_str().expect("utf8"),
        ]);
    }
    for _ in 0..3 {
        env.snapshot(&dir);
    }
    for _ in 0..2 {
        env.snapshot(&c);
    }
    let out = run_cfg(&cfg, &["forget", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    let both = format!("{} {}", b.display(), dir.display());
    assert_eq!(
        plan.lines().filter(|l| l.starts_with(&both)).count(),
        1,
        "one plan, the group of [dir, b.db] listed once: {plan}"
    );
    assert!(
        stderr(&out).contains("no retention policy"),
        "the source without retention is named: {}",
        stderr(&out)
    );
    let out = run_cfg(&cfg, &["--json", "forget"]);
    assert!(
        out.status.success(),
        "one source without retention does not abort forget: {}",
        stderr(&out)
    );
    let left = env.snapshots_json();
    let with_b = left
        .iter()
        .filter(|s| s["paths"].as_array().expect("paths").len() == 2)
        .count();
    assert_eq!(
        with_b, 6,
        "b.db's keep_last 50 keeps every snapshot holding it"
    );
    let dir_alone = left
        .iter()
        .filter(|s| s["paths"] == serde_json::json!([dir.to_str().expect("utf8")]))
        .count();
    assert_eq!(dir_alone, 1, "dir's keep_last 1 thins its own group");
    let c_left = left
        .iter()
        .filter(|s| s["paths"] == serde_json::json!([c.to_str().expect("utf8")]))
        .count();
    assert_eq!(c_left, 2, "a source without retention keeps everything");
}

fn status_json(env: &Env, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = env.run(&[&["--json", "status"][..], args].concat());
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status json: {e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code(), v)
}

fn hours_ago(h: i64) -> String {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs((h * 3600) as u64);
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("epoch")
        .as_secs() as i64;
    // Civil date from days since the epoch (UTC).
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn retention_and_status_group_by_host_and_path() {
    let env = Env::new();
    let f = env.path("f");
    for i in 0..6 {
        std::fs::write(&f, format!("v{i}")).expect("write");
        env.snapshot(&f);
    }
    // Every other snapshot as if another host had taken it.
    for (i, id) in ids(&env).iter().enumerate() {
        if i % 2 == 0 {
            rewrite_manifest(&env, id, |v| v["host"] = "otherhost".into());
        }
    }
    env.ok(&["forget", "--keep-last", "2"]);
    let left = env.snapshots_json();
    assert_eq!(left.len(), 4, "two per host: {left:?}");
    assert_eq!(left.iter().filter(|s| s["host"] == "otherhost").count(), 2);

    let (code, v) = status_json(&env, &["--max-age", "1h"]);
    assert_eq!(code, Some(0), "{v}");
    let rows = v["sources"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "one row per host: {v}");
    // The other host stopped two hours ago: noticed although this host is fresh.
    for s in env.snapshots_json() {
        if s["host"] == "otherhost" {
            let t = hours_ago(2);
            rewrite_manifest(&env, s["id"].as_str().expect("id"), |v| {
                v["time"] = t.into()
            });
        }
    }
    let (code, v) = status_json(&env, &["--max-age", "1h"]);
    assert_eq!(code, Some(3), "a dead host is a stale source: {v}");
    let stale: Vec<&serde_json::Value> = v["sources"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["stale"] == true)
        .collect();
    assert_eq!(stale.len(), 1, "{v}");
    assert_eq!(stale[0]["host"], "otherhost");
    let text = stdout(&env.run(&["status", "--max-age", "1h"]));
    assert!(
        text.contains("otherhost") && text.contains("STALE"),
        "{text}"
    );
}

#[test]
fn a_snapshot_dated_in_the_future_never_wins_or_masks_staleness() {
    let env = Env::new();
    let f = env.path("f");
    std::fs::write(&f, "old").expect("write");
    let r1 = env.snapshot(&f);
    std::fs::write(&f, "ahead").expect("write");
    // Taken with a clock an hour ahead (before an NTP correction).
    let out = Command::new("faketime")
        .args(["-f", "+1h"])
        .arg(snapback_testkit::bin())
        .args(["--repo", env.repo().to_str().expect("utf8"), "snapshot"])
        .arg(&f)
        .env_remove("SNAPBACK_REPO")
        .output()
        .expect("faketime (apt-get install faketime)");
    assert!(out.status.success(), "{}", stderr(&out));
    let future = stdout(&out).trim().to_string();
    std::fs::write(&f, "newest").expect("write");
    let r2 = env.snapshot(&f);

    let out = env.run(&["snapshots"]);
    assert!(
        stderr(&out).contains(&future[..8]) && stderr(&out).contains("ahead"),
        "snapshots reports it: {}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("(future)"), "{}", stdout(&out));
    let js = env.snapshots_json();
    assert_eq!(
        js.iter().filter(|s| s["future"] == true).count(),
        1,
        "{js:?}"
    );

    let dest = env.path("latest");
    let out = env.run(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&dest).expect("restored"), "newest");
    assert!(stderr(&out).contains(&r2[..8]), "{}", stderr(&out));

    // --keep-within is measured from the newest real snapshot; the future one
    // is kept (and said why) but never counted.
    let out = env.ok(&["--json", "forget", "--keep-last", "1", "--dry-run"]);
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    let keep: Vec<&str> = plan["groups"][0]["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert!(
        keep.contains(&r2.as_str()) && keep.contains(&future.as_str()),
        "{plan}"
    );
    assert!(!keep.contains(&r1.as_str()), "{plan}");
    env.ok(&["forget", "--keep-within", "30m"]);
    let left: Vec<String> = ids(&env);
    assert!(left.contains(&r2) && left.contains(&future), "{left:?}");

    // status: the future snapshot is a problem, never an "ok" with a negative age.
    let (code, v) = status_json(&env, &["--max-age", "20m"]);
    assert_eq!(code, Some(3), "{v}");
    let row = &v["sources"][0];
    assert_eq!(row["state"], "FUTURE", "{v}");
    assert_eq!(row["last_snapshot"], r2.as_str(), "{v}");
    assert!(row["age_seconds"].as_i64().expect("age") >= 0, "{v}");
    // The real ones go stale: the future one does not hide it.
    for id in [&r1, &r2] {
        let t = hours_ago(1);
        rewrite_manifest(&env, id, |v| v["time"] = t.into());
    }
    let (code, v) = status_json(&env, &["--max-age", "20m"]);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["sources"][0]["stale"], true, "{v}");
}

/// Once this host's clock has passed a snapshot taken with a clock an hour
/// ahead, it is no longer "in the future"; the store's clock (the manifest
/// file's mtime, which libfaketime does not shift) still shows it was taken
/// before the snapshot that followed it.
#[test]
fn a_snapshot_dated_ahead_of_its_successor_never_wins_latest_retention_or_status() {
    let env = Env::new();
    let f = env.path("f");
    std::fs::write(&f, "old").expect("write");
    let r1 = env.snapshot(&f);
    std::fs::write(&f, "ahead").expect("write");
    let out = crate::prune_race::faked(&env, "+1h", &["snapshot", f.to_str().expect("utf8")])
        .output()
        .expect("faketime (apt-get install faketime)");
    assert!(out.status.success(), "{}", stderr(&out));
    let ahead = stdout(&out).trim().to_string();
    std::fs::write(&f, "newest").expect("write");
    let r2 = env.snapshot(&f);
    // An hour and a half later (by this host's clock), nothing is in the
    // future any more.
    let later = |args: &[&str]| {
        crate::prune_race::faked(&env, "+90m", args)
            .output()
            .expect("faketime")
    };

    let out = later(&["--json", "snapshots"]);
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let flagged: Vec<&serde_json::Value> = js
        .as_array()
        .expect("array")
        .iter()
        .filter(|s| !s["clock_ahead"].is_null())
        .collect();
    assert_eq!(flagged.len(), 1, "{js}");
    assert_eq!(flagged[0]["id"], ahead.as_str(), "{js}");
    assert_eq!(flagged[0]["future"], false, "{js}");
    assert_eq!(flagged[0]["clock_ahead"]["kind"], "of_store", "{js}");
    assert!(
        stderr(&out).contains(&ahead[..8]) && stderr(&out).contains("after the store wrote it"),
        "snapshots warns: {}",
        stderr(&out)
    );
    assert!(
        stdout(&later(&["snapshots"])).contains("(clock ahead)"),
        "the table marks it"
    );

    // latest is the snapshot really taken last: its data, and it says so.
    let dest = env.path("latest");
    let out = later(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&dest).expect("restored"), "newest");
    assert!(
        stderr(&out).contains(&r2[..8]) && stderr(&out).contains(&ahead[..8]),
        "names the one chosen and the one skipped: {}",
        stderr(&out)
    );

    // status: judged by the really newest (90 minutes old), never by the
    // one whose time says 30 minutes.
    let out = later(&["--json", "status", "--max-age", "45m"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(out.status.code(), Some(3), "stale: {v}");
    let row = &v["sources"][0];
    assert_eq!(row["last_snapshot"], r2.as_str(), "{v}");
    assert_eq!(row["stale"], true, "{v}");
    assert!(row["age_seconds"].as_i64().expect("age") >= 89 * 60, "{v}");
    assert_eq!(
        row["clock_ahead_snapshots"][0]["id"],
        ahead.as_str(),
        "status reports it: {v}"
    );
    let out = later(&["status", "--max-age", "2h"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&ahead[..8]), "{}", stderr(&out));

    // check reports it and stays a check of damage (exit 0).
    let out = later(&["--json", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["clock_ahead"][0]["snapshot"], ahead.as_str(), "{v}");

    // Retention counts it where the store put it: keep-last 1 keeps the
    // really newest alone; keep-within 30m is measured from it.
    let out = later(&["--json", "forget", "--keep-last", "1", "--dry-run"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keep: Vec<&str> = plan["groups"][0]["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|d| d["id"].as_str().expect("id"))
        .collect();
    assert_eq!(keep, vec![r2.as_str()], "{plan}");
    let out = later(&["forget", "--keep-within", "30m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = ids(&env);
    assert!(
        left.contains(&r2) && left.contains(&r1) && left.contains(&ahead),
        "all three were taken within seconds: {left:?}"
    );
}

#[test]
fn a_structural_check_does_not_clear_a_failed_read_data_check() {
    let env = Env::new();
    let f = env.path("f");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&f, data).expect("write");
    env.snapshot(&f);
    snapback_testkit::flip_byte_in_largest_pack(&env.repo());
    assert_eq!(env.run(&["check", "--read-data"]).status.code(), Some(3));
    let out = env.run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the structure is intact: {}",
        stderr(&out)
    );
    let (code, v) = status_json(&env, &[]);
    assert_eq!(code, Some(3), "the read-data failure still stands: {v}");
    assert_eq!(v["checks"]["read_data"]["ok"], false, "{v}");
    assert_eq!(v["checks"]["structure"]["ok"], true, "{v}");
    let text = stdout(&env.run(&["status"]));
    assert!(
        text.contains("last check (read-data): FAILED")
            && text.contains("last check (structure): ok"),
        "{text}"
    );
    let prom = stdout(&env.run(&["status", "--prometheus"]));
    assert!(
        prom.contains("snapback_last_check_success{kind=\"read-data\"} 0")
            && prom.contains("snapback_last_check_success{kind=\"structure\"} 1"),
        "{prom}"
    );
}

#[test]
fn non_canonical_config_paths_match_their_snapshots() {
    let env = Env::new();
    let real = env.path("real");
    std::fs::create_dir(&real).expect("mkdir");
    db(&real.join("app.db"));
    std::os::unix::fs::symlink(&real, env.path("link")).expect("symlink");
    let dir = env.path("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("x"), "x").expect("write");
    std::fs::create_dir(env.path("sub")).expect("mkdir");
    std::fs::write(env.path("c.txt"), "c").expect("write");
    let sources = [
        format!("{}/link/app.db", env.dir.path().display()),
        format!("{}/dir/", env.dir.path().display()),
        format!("{}/./sub/../c.txt", env.dir.path().display()),
    ];
    let cfg = config(
        &env,
        &sources
            .iter()
            .map(|p| format!("[[source]]\npath = \"{p}\"\n[source.retention]\nkeep_last = 1\n"))
            .collect::<String>(),
    );
    for _ in 0..2 {
        let out = run_cfg(&cfg, &["snapshot"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("is not canonical"),
            "{}",
            stderr(&out)
        );
    }
    let out = run_cfg(&cfg, &["--json", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v["sources"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{v}");
    assert!(
        rows.iter().all(|r| r["state"] == "ok"),
        "every source is found under its canonical path: {v}"
    );
    let out = run_cfg(&cfg, &["snapshots", "--path", &sources[0]]);
    assert_eq!(
        stdout(&out).lines().count(),
        3,
        "a header and two snapshots: {}",
        stdout(&out)
    );
    let dest = env.path("restored.db");
    let out = run_cfg(
        &cfg,
        &[
            "restore",
            "latest",
            dest.to_str().expect("utf8"),
            "--path",
            &sources[0],
        ],
    );
    assert!(
        out.status.success(),
        "restore --path through the link: {}",
        stderr(&out)
    );
    assert_eq!(snapback_testkit::integrity(&dest), "ok");
    let out = run_cfg(&cfg, &["forget"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.snapshots_json().len(),
        3,
        "keep_last 1 applied to each source"
    );
}

#[test]
fn status_judges_configured_sources_and_reports_never_snapshotted_ones() {
    let env = Env::new();
    let a = env.path("a");
    let b = env.path("b");
    let c = env.path("c");
    for p in [&a, &b, &c] {
        std::fs::write(p, "x").expect("write");
    }
    let cfg = config(&env, &format!("[[source]]\npath = \"{}\"\n", a.display()));
    env.snapshot(&a);
    // A one-off snapshot of a path outside the config, long ago.
    let one_off = env.snapshot(&c);
    let t = hours_ago(3);
    rewrite_manifest(&env, &one_off, |v| v["time"] = t.into());
    let out = run_cfg(&cfg, &["status", "--max-age", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("unmonitored"), "{}", stdout(&out));
    let prom = stdout(&run_cfg(&cfg, &["status", "--prometheus"]));
    assert!(!prom.contains(c.to_str().expect("utf8")), "{prom}");

    // A configured source that was never snapshotted has an age sample.
    let cfg = config(
        &env,
        &format!(
            "[[source]]\npath = \"{}\"\n[[source]]\npath = \"{}\"\n",
            a.display(),
            b.display()
        ),
    );
    let prom = stdout(&run_cfg(&cfg, &["status", "--prometheus"]));
    let want = format!(
        "snapback_last_snapshot_age_seconds{{source=\"{}\",host=\"\"}} +Inf",
        b.display()
    );
    assert!(prom.contains(&want), "{want} in {prom}");
    assert_eq!(
        run_cfg(&cfg, &["status", "--max-age", "1h"]).status.code(),
        Some(3),
        "a configured source never snapshotted is stale"
    );
}

#[test]
fn systemd_check_unit_writes_the_textfile_after_a_failed_check() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/snapback-check.service"),
    )
    .expect("unit");
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecStartPost=")),
        "ExecStartPost= does not run when the check fails: {unit}"
    );
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStopPost=-") && l.contains("status --prometheus")),
        "ExecStopPost= runs after success and failure alike: {unit}"
    );
}

#[test]
fn an_invalid_max_age_in_the_config_stops_only_status() {
    let env = Env::new();
    let a = env.path("a");
    std::fs::write(&a, "x").expect("write");
    let cfg = config(
        &env,
        &format!(
            "max_age = \"1 month\"\n[[source]]\npath = \"{}\"\n",
            a.display()
        ),
    );
    let out = run_cfg(&cfg, &["snapshot"]);
    assert!(
        out.status.success(),
        "snapshot does not use max_age: {}",
        stderr(&out)
    );
    let out = run_cfg(&cfg, &["status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("max_age"), "{}", stderr(&out));
    // Config tags are validated as --tag is, before anything is taken.
    let cfg = config(
        &env,
        &format!("[[source]]\npath = \"{}\"\ntags = [\"a,b\"]\n", a.display()),
    );
    let before = env.snapshots_json().len();
    let out = run_cfg(&cfg, &["snapshot"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid tag 'a,b'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.snapshots_json().len(), before);
}

#[test]
fn the_time_snapshots_prints_selects_that_snapshot_when_pasted_back() {
    let env = Env::new();
    let f = env.path("f");
    let mut ids = vec![];
    for i in 0..3 {
        std::fs::write(&f, format!("v{i}")).expect("write");
        ids.push(env.snapshot(&f));
    }
    let table = env.ok(&["snapshots"]);
    for id in &ids {
        let line = table
            .lines()
            .find(|l| l.starts_with(&id[..8]))
            .unwrap_or_else(|| panic!("{id} in {table}"));
        let time = line.split_whitespace().nth(1).expect("time column");
        let out = env.run(&[
            "restore",
            &format!("@{time}"),
            env.path("r").to_str().expect("utf8"),
            "--force",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("using snapshot {}", &id[..8])),
            "@{time} selects {id}: {}",
            stderr(&out)
        );
    }
}
