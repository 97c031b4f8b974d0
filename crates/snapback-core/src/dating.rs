//! Snapshot times checked against the store's clock.
//!
//! A snapshot's time is its writer's clock when the capture began, and that
//! clock can be wrong (an NTP correction after boot, a VM restored from a
//! suspend). Three checks catch a time that is ahead:
//!
//! - **ahead of now**: more than [`FUTURE_TOLERANCE`] ahead of this host's
//!   clock ([`is_future`]). Such a snapshot is skipped by `latest`, kept and
//!   never counted by retention, and `status` reports it as `FUTURE`.
//! - **ahead of the store**: more than [`FUTURE_TOLERANCE`] after the moment
//!   the store wrote its manifest, by the store's own clock
//!   (`ObjectInfo::modified`: the file's mtime, S3's `LastModified`). A
//!   capture begins before its manifest is written, so its writer's clock
//!   was ahead.
//! - **ahead of its successor**: more than [`FUTURE_TOLERANCE`] after a
//!   snapshot of its group (host and paths) that the store wrote after it
//!   had finished (its time plus its duration): the two clocks disagree with
//!   the order in which the store committed them.
//!
//! A snapshot ahead of the store or of its successor is placed at its
//! *trusted time*: the store's time of writing, or no later than its
//! successor began. `latest`, retention and `status` order by the trusted
//! time (then by the store's order, then by id), so such a snapshot never
//! stands in for the one really taken after it, and never hides that the
//! really newest one is old.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use time::OffsetDateTime;

use crate::id::Id;
use crate::selector::{group_key, Snapshot};
use crate::time::{is_future, FUTURE_TOLERANCE};

/// Why a snapshot's time is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ahead {
    /// Dated more than [`FUTURE_TOLERANCE`] ahead of this host's clock.
    OfNow { seconds: i64 },
    /// Dated after the store wrote its manifest.
    OfStore {
        /// When the store wrote the manifest, by its own clock.
        written: String,
        seconds: i64,
    },
    /// Dated after a snapshot of its group that the store wrote after it.
    OfSuccessor {
        successor: String,
        successor_time: String,
        seconds: i64,
    },
}

impl Ahead {
    /// "dated 59m59s after the store wrote it (…)", for messages.
    pub fn describe(&self) -> String {
        match self {
            Ahead::OfNow { seconds } => format!(
                "dated {} ahead of this host's clock: the clock of the host that took it was ahead",
                human_secs(*seconds)
            ),
            Ahead::OfStore { written, seconds } => format!(
                "dated {} after the store wrote it ({written}): the clock of the host that took it was ahead",
                human_secs(*seconds)
            ),
            Ahead::OfSuccessor {
                successor,
                successor_time,
                seconds,
            } => format!(
                "dated {} after snapshot {} ({successor_time}), which the store wrote after it: the clock of the host that took one of them was wrong",
                human_secs(*seconds),
                &successor[..successor.len().min(8)]
            ),
        }
    }
}

fn human_secs(s: i64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// The trusted time of every snapshot of a listing, and which are ahead.
#[derive(Debug, Clone, Default)]
pub struct Dating {
    trusted: HashMap<Id, OffsetDateTime>,
    ahead: HashMap<Id, Ahead>,
}

fn tolerance() -> time::Duration {
    time::Duration::try_from(FUTURE_TOLERANCE).unwrap_or(time::Duration::ZERO)
}

impl Dating {
    /// Dates `snaps` (every snapshot of the repository, or at least every
    /// snapshot of the groups that matter: successors are found within a
    /// group).
    pub fn of(snaps: &[Snapshot]) -> Dating {
        let tol = tolerance();
        let mut d = Dating::default();
        // Ahead of the store's time of writing.
        for s in snaps {
            let t = match s.written {
                Some(w) if s.time - w > tol => {
                    d.ahead.insert(
                        s.id,
                        Ahead::OfStore {
                            written: crate::time::format_rfc3339(w),
                            seconds: (s.time - w).whole_seconds(),
                        },
                    );
                    w
                }
                _ => s.time,
            };
            d.trusted.insert(s.id, t);
        }
        // Ahead of a successor: walk each group from the last written back,
        // keeping the earliest start and end among those written later.
        let mut groups: BTreeMap<(String, Vec<String>), Vec<&Snapshot>> = BTreeMap::new();
        for s in snaps.iter().filter(|s| s.written.is_some()) {
            groups.entry(group_key(s)).or_default().push(s);
        }
        for list in groups.values_mut() {
            list.sort_by(|a, b| b.written.cmp(&a.written).then(b.id.cmp(&a.id)));
            // (earliest start, its snapshot) and earliest end written later.
            let mut start: Option<(OffsetDateTime, &Snapshot)> = None;
            let mut end: Option<OffsetDateTime> = None;
            for s in list.iter() {
                let t = d.trusted.get(&s.id).copied().unwrap_or(s.time);
                if let (Some((st, succ)), Some(en)) = (start, end) {
                    if t - en > tol && !d.ahead.contains_key(&s.id) {
                        d.ahead.insert(
                            s.id,
                            Ahead::OfSuccessor {
                                successor: succ.id.to_hex(),
                                successor_time: succ.manifest.time.clone(),
                                seconds: (t - en).whole_seconds(),
                            },
                        );
                    }
                    if t - en > tol {
                        d.trusted.insert(s.id, st.min(t));
                    }
                }
                let t = d.trusted.get(&s.id).copied().unwrap_or(s.time);
                let dur = time::Duration::milliseconds(
                    i64::try_from(s.manifest.stats.duration_ms).unwrap_or(i64::MAX / 2),
                );
                if start.is_none_or(|(st, _)| t < st) {
                    start = Some((t, s));
                }
                let e = t + dur;
                if end.is_none_or(|en| e < en) {
                    end = Some(e);
                }
            }
        }
        d
    }

    /// When `s` was really taken, as far as the store's clock can tell.
    pub fn trusted(&self, s: &Snapshot) -> OffsetDateTime {
        self.trusted.get(&s.id).copied().unwrap_or(s.time)
    }

    /// Why `id`'s time is not trusted, if it is not (ahead of the store or
    /// of its successor; ahead of now is [`is_future`]).
    pub fn ahead(&self, id: &Id) -> Option<&Ahead> {
        self.ahead.get(id)
    }

    /// Every snapshot whose time is not trusted, with why.
    pub fn all_ahead(&self) -> impl Iterator<Item = (&Id, &Ahead)> {
        self.ahead.iter()
    }

    /// Why `s`'s time is not trusted at `now`: ahead of the store or of its
    /// successor, or else ahead of now.
    pub fn ahead_at(&self, s: &Snapshot, now: OffsetDateTime) -> Option<Ahead> {
        self.ahead(&s.id).cloned().or_else(|| {
            is_future(s.time, now).then(|| Ahead::OfNow {
                seconds: (s.time - now).whole_seconds(),
            })
        })
    }

    /// Orders `a` before `b` when `a` was taken first: by trusted time, then
    /// by the store's order of writing, then by id.
    pub fn cmp(&self, a: &Snapshot, b: &Snapshot) -> std::cmp::Ordering {
        self.trusted(a)
            .cmp(&self.trusted(b))
            .then(a.written.cmp(&b.written))
            .then(a.time.cmp(&b.time))
            .then(a.id.cmp(&b.id))
    }

    /// The newest of `cands` that is not dated ahead of `now`: what `latest`
    /// means. Falls back to the newest of them all when every one is ahead
    /// of now.
    pub fn newest<'a>(
        &self,
        cands: impl IntoIterator<Item = &'a Snapshot>,
        now: OffsetDateTime,
    ) -> Option<&'a Snapshot> {
        let cands: Vec<&Snapshot> = cands.into_iter().collect();
        let max =
            |it: &mut dyn Iterator<Item = &&'a Snapshot>| it.max_by(|a, b| self.cmp(a, b)).copied();
        max(&mut cands.iter().filter(|s| !is_future(s.time, now)))
            .or_else(|| max(&mut cands.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use std::sync::Arc;

    fn t(s: &str) -> OffsetDateTime {
        crate::time::parse_rfc3339(s).expect("time")
    }

    fn snap(n: u8, time: &str, written: Option<&str>) -> Snapshot {
        Snapshot {
            id: Id([n; 32]),
            time: t(time),
            written: written.map(t),
            manifest: Arc::new(Manifest {
                format_version: 1,
                time: time.into(),
                host: "h".into(),
                tags: vec![],
                paths: vec!["/db".into()],
                files: vec![],
                stats: Default::default(),
            }),
            point: None,
        }
    }

    #[test]
    fn a_snapshot_dated_after_the_store_wrote_it_is_placed_at_the_stores_time() {
        let snaps = vec![
            snap(1, "2026-03-01T10:00:00Z", Some("2026-03-01T10:00:01Z")),
            // Taken with a clock an hour ahead; the store wrote it at 10:05.
            snap(2, "2026-03-01T11:05:00Z", Some("2026-03-01T10:05:01Z")),
            snap(3, "2026-03-01T10:10:00Z", Some("2026-03-01T10:10:01Z")),
        ];
        let d = Dating::of(&snaps);
        assert!(
            matches!(d.ahead(&Id([2; 32])), Some(Ahead::OfStore { seconds, .. }) if *seconds == 3599)
        );
        assert_eq!(d.trusted(&snaps[1]), t("2026-03-01T10:05:01Z"));
        assert!(d.ahead(&Id([1; 32])).is_none() && d.ahead(&Id([3; 32])).is_none());
        let now = t("2026-03-01T12:00:00Z");
        assert_eq!(d.newest(&snaps, now).map(|s| s.id), Some(Id([3; 32])));
    }

    #[test]
    fn a_snapshot_dated_after_its_successor_never_wins_latest() {
        // Both written by a store whose clock agrees with the first writer;
        // the second snapshot's clock was slow, so the first is ahead of it.
        let snaps = vec![
            snap(1, "2026-03-01T10:30:00Z", Some("2026-03-01T10:30:01Z")),
            snap(2, "2026-03-01T10:00:00Z", Some("2026-03-01T10:40:00Z")),
        ];
        let d = Dating::of(&snaps);
        assert!(
            matches!(d.ahead(&Id([1; 32])), Some(Ahead::OfSuccessor { successor, .. }) if *successor == Id([2; 32]).to_hex()),
            "{:?}",
            d.ahead(&Id([1; 32]))
        );
        let now = t("2026-03-01T12:00:00Z");
        assert_eq!(d.newest(&snaps, now).map(|s| s.id), Some(Id([2; 32])));
        // Overlapping captures are not flagged: one that began before the
        // other finished may be written after it.
        let mut long = snap(3, "2026-03-01T10:00:00Z", Some("2026-03-01T10:31:00Z"));
        Arc::make_mut(&mut long.manifest).stats.duration_ms = 31 * 60 * 1000;
        let snaps = vec![
            snap(1, "2026-03-01T10:05:00Z", Some("2026-03-01T10:05:01Z")),
            long,
        ];
        assert!(Dating::of(&snaps).all_ahead().next().is_none());
    }

    #[test]
    fn without_the_stores_time_only_the_time_counts() {
        let snaps = vec![
            snap(1, "2026-03-01T10:30:00Z", None),
            snap(2, "2026-03-01T10:00:00Z", None),
        ];
        let d = Dating::of(&snaps);
        assert!(d.all_ahead().next().is_none());
        let now = t("2026-03-01T12:00:00Z");
        assert_eq!(d.newest(&snaps, now).map(|s| s.id), Some(Id([1; 32])));
        // Ahead of now: skipped while another exists.
        let now = t("2026-03-01T10:15:00Z");
        assert_eq!(d.newest(&snaps, now).map(|s| s.id), Some(Id([2; 32])));
    }
}
