//! `status`: what the watchers of this host report (their status files
//! under `$XDG_STATE_HOME/snapback/watch/`), judged.

use snapback_core::time::Timestamp;
use snapback_core::watch_status::{self, VerifyOutcome, WatchStatus};

/// One watcher's report as `status` shows it: the report as written, and
/// what `status` makes of it.
#[derive(Debug, serde::Serialize)]
pub struct WatchRow {
    #[serde(flatten)]
    pub report: WatchStatus,
    /// The watcher's process is alive on this host (null: it ran on
    /// another host, which cannot be told from here).
    pub running: Option<bool>,
    /// Seconds since its last tick ended (since its start when none has).
    pub tick_age_seconds: f64,
    /// Its last tick is older than three intervals (at least 10 s).
    pub falling_behind: bool,
    /// Its last upload failed and none succeeded since.
    pub upload_failing: bool,
    /// Its last live verification found pages that differ.
    pub verify_mismatch: bool,
    /// What makes `status` exit 3 for a monitored source, in words.
    pub problems: Vec<String>,
    /// What is worth knowing but is no failure (fallbacks to a full scan,
    /// a spool filling up), in words.
    pub warnings: Vec<String>,
}

/// Every report of this repository's watchers, judged at `now`. A state
/// directory that cannot be found or listed is said in the log and gives
/// no rows (there may be no watcher at all).
pub fn rows(repo_id: &str, now: Timestamp) -> anyhow::Result<Vec<WatchRow>> {
    let Some(root) = crate::repo_url::capture_state_root() else {
        return Ok(vec![]);
    };
    let dir = watch_status::dir(&root);
    let all = watch_status::load_all(&dir)?;
    Ok(all
        .into_iter()
        .filter(|s| s.repo_id == repo_id)
        .map(|s| judge(s, now))
        .collect())
}

fn secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        crate::cmd_ops::human_age(Some(d.as_secs() as i64))
    }
}

fn at(t: Timestamp) -> String {
    snapback_core::time::format_rfc3339(t)
}

pub fn judge(s: WatchStatus, now: Timestamp) -> WatchRow {
    let running = s.running();
    let tick_age = s.tick_age(now);
    let falling_behind = running != Some(false) && s.falling_behind(now);
    let upload_failing = s.upload_failing();
    let verify_mismatch = s
        .last_verify
        .as_ref()
        .is_some_and(|v| v.result == VerifyOutcome::Mismatch);
    let mut problems = vec![];
    let mut warnings = vec![];
    if let Some(stop) = &s.stopped {
        problems.push(format!(
            "the watcher stopped at {}: {}; nothing is captured until `snapback watch` runs again",
            at(stop.time),
            stop.message
        ));
    } else if running == Some(false) {
        problems.push(format!(
            "the watcher (pid {} on {}) is not running and did not stop on its own (killed?); its last tick was at {}. Start `snapback watch` again",
            s.pid,
            s.host,
            s.last_tick.map(at).unwrap_or_else(|| "never".into())
        ));
    }
    if falling_behind {
        problems.push(format!(
            "the watcher is falling behind: its last tick ended {} ago (it ticks every {}); the database may be changing faster than it captures, or the watcher is stuck",
            secs(tick_age),
            secs(std::time::Duration::from_millis(s.interval_ms))
        ));
    }
    if upload_failing {
        if let Some(e) = &s.last_upload_error {
            problems.push(format!(
                "the watcher cannot upload to the repository since {}: {} ({} point(s) pending, {} in the local spool)",
                at(e.time),
                e.message,
                s.pending_points,
                crate::output::human_bytes(s.spool_bytes)
            ));
        }
    }
    if let Some(v) = s.last_verify.as_ref().filter(|_| verify_mismatch) {
        problems.push(format!(
            "verify-live at {} found {} of {} page(s) differing between the live database and its captured image (pages {}{}); the next point was taken by a full scan. Find out what wrote to the database file outside SQLite",
            at(v.time),
            v.mismatch_count,
            v.pages_compared,
            v.mismatching_pages
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if v.mismatch_count as usize > v.mismatching_pages.len() {
                ", …"
            } else {
                ""
            }
        ));
    }
    if let Some(f) = &s.last_fallback {
        warnings.push(format!(
            "the watcher fell back to a full scan {} time(s) since it started, last at {}: {}",
            s.fallbacks,
            at(f.time),
            f.message
        ));
    }
    if s.spool_limit > 0 && s.spool_bytes.saturating_mul(5) >= s.spool_limit.saturating_mul(4) {
        warnings.push(format!(
            "the watcher's local spool holds {} of its {} bound; past it the watcher stops",
            crate::output::human_bytes(s.spool_bytes),
            crate::output::human_bytes(s.spool_limit)
        ));
    }
    WatchRow {
        running,
        tick_age_seconds: tick_age.as_secs_f64(),
        falling_behind,
        upload_failing,
        verify_mismatch,
        problems,
        warnings,
        report: s,
    }
}

/// One line for people: "running (pid 7), last tick 0.4s ago, 3 pending,
/// verify ok at …".
pub fn summary(w: &WatchRow) -> String {
    let s = &w.report;
    let mut parts = vec![match w.running {
        Some(true) => format!("running (pid {})", s.pid),
        Some(false) if s.stopped.is_some() => "STOPPED".to_string(),
        Some(false) => format!("NOT RUNNING (pid {} gone)", s.pid),
        None => format!("on host {} (pid {})", s.host, s.pid),
    }];
    parts.push(format!(
        "last tick {} ago{}",
        secs(std::time::Duration::from_secs_f64(w.tick_age_seconds)),
        if w.falling_behind {
            " (FALLING BEHIND)"
        } else {
            ""
        }
    ));
    if let Some(d) = &s.durable {
        parts.push(format!("durable point {}", at(d.time)));
    }
    parts.push(format!("{} pending", s.pending_points));
    if s.fallbacks > 0 {
        parts.push(format!("{} fallback(s) to a full scan", s.fallbacks));
    }
    if w.upload_failing {
        parts.push("UPLOAD FAILING".into());
    }
    match &s.last_verify {
        Some(v) if v.result == VerifyOutcome::Ok => {
            parts.push(format!("verify ok at {}", at(v.time)))
        }
        Some(v) => parts.push(format!(
            "VERIFY MISMATCH at {} ({} pages)",
            at(v.time),
            v.mismatch_count
        )),
        None => parts.push("not verified yet".into()),
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_core::watch_status::{Event, VerifyRecord};
    use std::time::Duration;

    fn report() -> WatchStatus {
        let mut s = WatchStatus::new(
            "r",
            "/srv/a.db",
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        s.last_tick = Some(snapback_core::time::now());
        s
    }

    #[test]
    fn a_healthy_watcher_has_no_problem() {
        let w = judge(report(), snapback_core::time::now());
        assert_eq!(w.running, Some(true));
        assert!(w.problems.is_empty(), "{:?}", w.problems);
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
    }

    #[test]
    fn watcher_that_falls_back_behind_or_cannot_upload_says_so() {
        let now = snapback_core::time::now();
        let mut s = report();
        s.last_tick = Some(now - Duration::from_secs(60));
        s.last_upload_error = Some(Event {
            time: now,
            message: "connection refused".into(),
        });
        s.last_fallback = Some(Event {
            time: now,
            message: "the WAL restarted".into(),
        });
        s.fallbacks = 1;
        s.last_verify = Some(VerifyRecord::new(now, 10, &[4]));
        let w = judge(s, now);
        let all = w.problems.join("\n");
        assert!(w.falling_behind && all.contains("falling behind"), "{all}");
        assert!(
            w.upload_failing && all.contains("connection refused"),
            "{all}"
        );
        assert!(w.verify_mismatch && all.contains("pages 4"), "{all}");
        assert!(w.warnings.join("\n").contains("the WAL restarted"));
        let line = summary(&w);
        for s in ["FALLING BEHIND", "UPLOAD FAILING", "VERIFY MISMATCH"] {
            assert!(line.contains(s), "{line}");
        }
    }

    #[test]
    fn a_dead_or_stopped_watcher_is_a_problem() {
        let now = snapback_core::time::now();
        let mut s = report();
        s.pid = u32::MAX;
        let w = judge(s.clone(), now);
        assert_eq!(w.running, Some(false));
        assert!(w.problems[0].contains("not running"), "{:?}", w.problems);
        assert!(
            !w.falling_behind,
            "a dead watcher is not said to fall behind"
        );
        s.stopped = Some(Event {
            time: now,
            message: "the spool is full".into(),
        });
        let w = judge(s, now);
        assert!(
            w.problems[0].contains("the spool is full"),
            "{:?}",
            w.problems
        );
    }
}
