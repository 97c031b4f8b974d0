//! `snapback verify-live`: the image the next WAL-delta capture would give,
//! compared page by page with the live database in one read transaction.

use std::io::{Seek, SeekFrom, Write};

use snapback_core::CaptureMethod;
use snapback_testkit::{stderr, stdout, Env};

use crate::timeline_kit::{open_repo, Db};

fn verify(env: &Env, db: &Db) -> (Option<i32>, serde_json::Value, String) {
    let out = env.run(&["--json", "verify-live", &db.name(), "--rate", "0"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), v, stderr(&out))
}

/// How the newest snapshot captured the database.
fn newest_capture(env: &Env, db: &Db) -> CaptureMethod {
    let repo = open_repo(env);
    let snaps = repo.snapshots().expect("snapshots");
    let newest = snaps.iter().max_by_key(|s| s.time).expect("a snapshot");
    newest
        .file(&db.name())
        .and_then(|f| f.sqlite.as_ref())
        .and_then(|s| s.capture.clone())
        .expect("capture method")
}

#[test]
fn verify_live_finds_the_delta_image_equal_after_real_changes() {
    let env = Env::new();
    let db = Db::new(&env, "app.db");
    env.snapshot(&db.path);
    for id in 1..=10 {
        db.update(id);
    }
    snapback_testkit::db::insert_blobs(&db.w, 30, 900);
    let (code, v, err) = verify(&env, &db);
    assert_eq!(code, Some(0), "{v} {err}");
    assert_eq!(v["result"], "ok");
    let pages: i64 =
        db.w.query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page_count");
    assert_eq!(v["pages_compared"], pages, "every page: {v}");
    assert!(v["delta_pages"].as_u64().expect("delta") > 1, "{v}");
    assert_eq!(v["mismatch_count"], 0);
    assert_eq!(v["state_dropped"], false);
    // Nothing was committed, and the state still serves a delta.
    assert_eq!(env.snapshots_json().len(), 1);
    env.snapshot(&db.path);
    assert!(
        matches!(newest_capture(&env, &db), CaptureMethod::WalDelta { .. }),
        "the next capture is still a delta"
    );
    let text = env.ok(&["verify-live", &db.name(), "--rate", "64"]);
    assert!(text.contains(": ok,"), "{text}");
}

#[test]
fn verify_live_reports_a_file_overwritten_in_place_and_the_next_snapshot_scans() {
    let env = Env::new();
    let db = Db::new(&env, "app.db");
    // Every page in the file, then frames in the WAL (of row 1's page
    // only), so its salts stay as the capture state saw them.
    db.image();
    db.update(1);
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&db.path).expect("meta"));
    env.snapshot(&db.path);
    // Overwrite the database file's last page in place (same inode), not
    // through SQLite: no WAL frame, no metadata a delta could see.
    let size = std::fs::metadata(&db.path).expect("meta").len();
    let last_page = size / 4096;
    assert!(last_page > 1, "more than one page in the file");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&db.path)
        .expect("open for write");
    f.seek(SeekFrom::Start((last_page - 1) * 4096 + 2000))
        .expect("seek");
    f.write_all(&[0x5a; 64]).expect("overwrite");
    f.sync_all().expect("sync");
    drop(f);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&db.path).expect("meta")),
        ino,
        "the same inode"
    );

    let (code, v, err) = verify(&env, &db);
    assert_eq!(code, Some(3), "a mismatch exits 3: {v} {err}");
    assert_eq!(v["result"], "mismatch");
    assert_eq!(
        v["mismatching_pages"],
        serde_json::json!([last_page]),
        "{v}"
    );
    assert_eq!(v["state_dropped"], true);

    // The next snapshot reads every page, and says why.
    env.snapshot(&db.path);
    match newest_capture(&env, &db) {
        CaptureMethod::FullScan { reason } => {
            assert!(reason.contains("verify-live"), "{reason}")
        }
        other => panic!("the next capture must be a full scan, not {other:?}"),
    }
    // The state it saved gives a delta again, equal to the live file.
    let (code, v, err) = verify(&env, &db);
    assert_eq!(code, Some(0), "{v} {err}");
    // With the right content: what SQLite reads now, overwritten page
    // included.
    let dest = env.path("restored.db");
    env.ok(&[
        "restore",
        "latest",
        dest.to_str().expect("utf8"),
        "--path",
        &db.name(),
    ]);
    let restored = if dest.is_dir() {
        std::fs::read(dest.join(db.path.strip_prefix("/").expect("abs"))).expect("restored")
    } else {
        std::fs::read(&dest).expect("restored")
    };
    let live = db.image();
    assert!(restored == live, "the restored image is the live one");
}

#[test]
fn verify_live_without_a_capture_state_says_take_a_snapshot_first() {
    let env = Env::new();
    let db = Db::new(&env, "app.db");
    let out = env.run(&["verify-live", &db.name()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("nothing to verify") && err.contains("take a snapshot first"),
        "{err}"
    );
    assert_eq!(
        env.run(&["verify-live", &db.name(), "--rate", "-1"])
            .status
            .code(),
        Some(2),
        "a negative rate is a usage error"
    );
}
