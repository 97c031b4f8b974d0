//! What `snapback watch` leaves under its state home (`$XDG_STATE_HOME`):
//! the status reports `snapback status` reads (`snapback/watch/`) and the
//! spool files (`snapback/spool/`), read the way the watch tests wait for
//! them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every JSON document in the files below `dir` (`*.json`, recursively);
/// a file that cannot be read or parsed (one being replaced) is left out.
pub fn walk_json(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_json(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            if let Ok(Ok(v)) =
                std::fs::read(&p).map(|b| serde_json::from_slice::<serde_json::Value>(&b))
            {
                out.push(v);
            }
        }
    }
    out
}

/// Every watch status report under the state home `state`.
pub fn watch_statuses(state: &Path) -> Vec<serde_json::Value> {
    walk_json(&state.join("snapback").join("watch"))
}

/// The watch status report under the state home `state` (the last one
/// found, when a test runs one watcher on one database: the only one).
pub fn watch_status(state: &Path) -> Option<serde_json::Value> {
    watch_statuses(state).pop()
}

/// Polls [`watch_status`] every 100 ms until `ok` holds for it, and
/// returns it; fails the test after `limit`, saying `what` was awaited.
pub fn wait_for_watch_status(
    state: &Path,
    what: &str,
    limit: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Some(s) = watch_status(state).filter(|s| ok(s)) {
            return s;
        }
        assert!(
            started.elapsed() < limit,
            "no watch status with {what}: {:?}",
            watch_status(state)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every spool file (`points.spool`) under the state home `state`.
pub fn spool_files(state: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "points.spool") {
                out.push(p);
            }
        }
    }
    let mut out = vec![];
    walk(&state.join("snapback").join("spool"), &mut out);
    out
}
