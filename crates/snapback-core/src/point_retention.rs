//! Retention of timeline points (`forget --keep-within-points D`).
//!
//! A point counts as a snapshot of its base's host, paths and tags. Every
//! point within D of the newest point or snapshot of its group is kept;
//! older ones are kept where a keep rule of a policy covering their base
//! keeps them, the rules counting points and snapshots together (the
//! newest of an hour is a point or a snapshot, whichever is newer). A
//! point over an unreleased `pre-repair` or `pre-restore` base, and one
//! dated in the future, is always kept.
//!
//! A segment that loses points is rewritten with the kept ones, each kept
//! point carrying the changes of the dropped points before it merged into
//! its own, and committed (`commit_segment` proves that every kept point
//! replays to its checksum) before the old segment is deleted; a segment
//! that keeps none is deleted. Prune then reclaims the pages only dropped
//! points named.
//!
//! A crash between the commit of the new segment and the delete of the old
//! one leaves both: the same point (path, base, time, checksum) in two
//! segments, with the same image. Every listing shows such a point once,
//! from the segment with the fewest points (see [`shadowed`]), and the next
//! thinning drops the other copy, so the old segment goes then.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::Result;
use crate::forget::{keep_reasons, PolicyScope, PRE_REPAIR_TAG, PRE_RESTORE_TAG};
use crate::id::Id;
use crate::layout::timeline_key;
use crate::repo::Repository;
use crate::segment::{shadowed, Point, Segment};
use crate::selector::{group_key, PointRef, Snapshot};
use crate::time::is_future;

/// The test hook that pauses a thinning between committing a segment's
/// replacement and deleting it (the crash tests kill it there).
const PAUSE_AFTER_REWRITE: &str = "SNAPBACK_TEST_DELAY_AFTER_SEGMENT_REWRITE_MS";

/// One point's fate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PointDecision {
    /// Its place in the segment, from 0.
    pub index: usize,
    /// `SEGMENT/INDEX`, as `snapshots --points` names it.
    pub name: String,
    pub time: String,
    /// Why it is kept; empty when it goes.
    pub reasons: Vec<String>,
    /// When it goes only because another segment holds the same point
    /// (left by a thinning that was interrupted), that copy's name: the
    /// point itself stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_kept: Option<String>,
}

/// What happens to one segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentPlan {
    pub segment: String,
    pub short_id: String,
    pub path: String,
    pub host: String,
    /// The snapshot its points replay over.
    pub base: String,
    pub keep: Vec<PointDecision>,
    pub drop: Vec<PointDecision>,
    #[serde(skip)]
    id: Id,
}

/// The points a retention run keeps and drops, per segment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PointPlan {
    pub segments: Vec<SegmentPlan>,
}

/// What applying a [`PointPlan`] did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PointsApplied {
    pub points_dropped: usize,
    pub segments_rewritten: usize,
    pub segments_deleted: usize,
}

impl PointPlan {
    /// How many points of each segment it covers remain once the plan is
    /// applied (a segment it does not cover is left as it is).
    pub fn remaining(&self) -> HashMap<Id, usize> {
        self.segments.iter().map(|s| (s.id, s.keep.len())).collect()
    }
}

fn point_name(segment: Id, index: usize, base: Id) -> String {
    PointRef {
        segment,
        index,
        base,
    }
    .name()
}

/// The kept points of `seg`, the dropped ones' changes merged into the next
/// kept one (a later change of a page wins; pages past the kept point's
/// count are cut, as its replay would cut them: a page that a later point
/// brings back past a cut is among that point's own changes). Dropped
/// points after the last kept one are simply gone. Every segment replays
/// from its base on its own, so no other segment depends on them.
pub(crate) fn thin(seg: &Segment, keep: &HashSet<usize>) -> Segment {
    let mut points = Vec::new();
    let mut pending: BTreeMap<u64, Id> = BTreeMap::new();
    for (k, p) in seg.points.iter().enumerate() {
        for (i, id) in &p.changes {
            pending.insert(*i, *id);
        }
        if keep.contains(&k) {
            let changes = std::mem::take(&mut pending)
                .into_iter()
                .filter(|(i, _)| *i < p.page_count)
                .collect();
            points.push(Point {
                changes,
                ..p.clone()
            });
        }
    }
    Segment {
        points,
        ..seg.clone()
    }
}

impl Repository {
    /// Plans which points to keep: every point within `within` of the
    /// newest point or snapshot of its group (host and paths of its base,
    /// by trusted time), every point over an unreleased pre-repair or
    /// pre-restore base, and older ones where a policy of `scopes` covering
    /// its base keeps it (points and that group's snapshots counted
    /// together). A segment over a snapshot not in `snaps` is left alone.
    pub fn plan_points(
        &self,
        snaps: &[Snapshot],
        scopes: &[PolicyScope],
        released: &HashSet<Id>,
        within: Duration,
        now: OffsetDateTime,
    ) -> Result<PointPlan> {
        let segments = self.segments_strict()?;
        let copies = shadowed(&segments);
        let dating = crate::dating::Dating::of(snaps);
        let by_id: HashMap<Id, &Snapshot> = snaps.iter().map(|s| (s.id, s)).collect();
        // Per group: (time, tags, Some((segment index, point index)) or None
        // for a snapshot).
        type Entry<'a> = (OffsetDateTime, &'a [String], Option<(usize, usize)>);
        let mut groups: BTreeMap<(String, Vec<String>), Vec<Entry>> = BTreeMap::new();
        for s in snaps.iter().filter(|s| !is_future(s.time, now)) {
            groups.entry(group_key(s)).or_default().push((
                dating.trusted(s),
                &s.manifest.tags,
                None,
            ));
        }
        let mut plans: Vec<Option<SegmentPlan>> = Vec::new();
        for (n, (id, seg)) in segments.iter().enumerate() {
            let Some(base) = by_id.get(&seg.base) else {
                plans.push(None);
                continue;
            };
            plans.push(Some(SegmentPlan {
                segment: id.to_hex(),
                short_id: id.short(),
                path: seg.path.clone(),
                host: base.manifest.host.clone(),
                base: seg.base.to_hex(),
                keep: vec![],
                drop: vec![],
                id: *id,
            }));
            let g = groups.entry(group_key(base)).or_default();
            for (k, p) in seg.points.iter().enumerate() {
                // A copy of a point another segment holds counts once.
                if !copies.contains_key(&(*id, k)) {
                    g.push((p.time, &base.manifest.tags, Some((n, k))));
                }
            }
        }
        let within = time::Duration::try_from(within).unwrap_or(time::Duration::MAX);
        let mut reasons: HashMap<(usize, usize), Vec<String>> = HashMap::new();
        for list in groups.values_mut() {
            list.sort_by_key(|e| std::cmp::Reverse(e.0));
            let Some(newest) = list.iter().find(|e| !is_future(e.0, now)).map(|e| e.0) else {
                continue;
            };
            for e in list.iter() {
                let Some(at) = e.2 else { continue };
                let r = reasons.entry(at).or_default();
                if is_future(e.0, now) {
                    r.push("dated in the future (clock ahead?)".into());
                } else if newest - e.0 <= within {
                    r.push("within points".into());
                }
                let base = &segments[at.0].1.base;
                for tag in [PRE_REPAIR_TAG, PRE_RESTORE_TAG] {
                    if e.1.iter().any(|t| t == tag) && !released.contains(base) {
                        r.push(format!("{tag} (not released)"));
                    }
                }
            }
            for sc in scopes {
                let Some(policy) = &sc.policy else { continue };
                let mine: Vec<&Entry> = list
                    .iter()
                    .filter(|e| !is_future(e.0, now))
                    .filter(|e| match e.2 {
                        Some((n, _)) => sc.covers.contains(&segments[n].1.base),
                        None => true,
                    })
                    .collect();
                let counted: Vec<(&[String], OffsetDateTime)> =
                    mine.iter().map(|e| (e.1, e.0)).collect();
                for ((_, _, at), rs) in mine.iter().copied().zip(keep_reasons(&counted, policy)) {
                    let Some(at) = at else { continue };
                    let r = reasons.entry(*at).or_default();
                    for x in rs {
                        let x = match &sc.source {
                            Some(src) => format!("{src}: {x}"),
                            None => x,
                        };
                        if !r.contains(&x) {
                            r.push(x);
                        }
                    }
                }
            }
        }
        // A copy goes when the point it copies stays (that one is kept) and
        // when it goes (with it).
        let place: HashMap<Id, usize> = segments
            .iter()
            .enumerate()
            .map(|(n, (id, _))| (*id, n))
            .collect();
        let mut out = PointPlan::default();
        for (n, plan) in plans.into_iter().enumerate() {
            let Some(mut plan) = plan else { continue };
            let (id, seg) = &segments[n];
            for (k, p) in seg.points.iter().enumerate() {
                let mut d = PointDecision {
                    index: k,
                    name: point_name(*id, k, seg.base),
                    time: crate::time::format_rfc3339_nanos(p.time),
                    reasons: vec![],
                    copy_kept: None,
                };
                match copies.get(&(*id, k)) {
                    Some((oid, ok)) => {
                        let owner_kept = place
                            .get(oid)
                            .and_then(|on| reasons.get(&(*on, *ok)))
                            .is_some_and(|r| !r.is_empty());
                        if owner_kept {
                            d.copy_kept = Some(point_name(*oid, *ok, seg.base));
                        }
                        plan.drop.push(d);
                    }
                    None => {
                        d.reasons = reasons.get(&(n, k)).cloned().unwrap_or_default();
                        if d.reasons.is_empty() {
                            plan.drop.push(d);
                        } else {
                            plan.keep.push(d);
                        }
                    }
                }
            }
            out.segments.push(plan);
        }
        Ok(out)
    }

    /// Applies a point plan: each segment that loses points is rewritten
    /// with the kept ones, committed (which proves every kept point still
    /// replays to its checksum) before the old one is deleted; one that
    /// keeps none is deleted. The caller holds the exclusive lock (as
    /// `snapback forget` does), so no watcher commits a segment and no
    /// reader replays one meanwhile.
    pub fn apply_points(&self, plan: &PointPlan) -> Result<PointsApplied> {
        let mut done = PointsApplied::default();
        for sp in plan.segments.iter().filter(|s| !s.drop.is_empty()) {
            let seg = self.segment(&sp.id)?;
            if !sp.keep.is_empty() {
                let keep: HashSet<usize> = sp.keep.iter().map(|d| d.index).collect();
                let thinned = thin(&seg, &keep);
                if thinned.points.len() != keep.len() {
                    return Err(crate::error::Error::Internal(format!(
                        "thinning timeline segment {} would keep {} point(s), not the {} planned; nothing of it was changed",
                        sp.short_id,
                        thinned.points.len(),
                        keep.len()
                    )));
                }
                let new = self.commit_segment(&thinned)?;
                if new == sp.id {
                    continue;
                }
                tracing::info!(old = %sp.short_id, new = %new.short(), kept = keep.len(), "timeline segment rewritten with its kept points");
                crate::snapshot::pause_for_tests(PAUSE_AFTER_REWRITE);
                done.segments_rewritten += 1;
            } else {
                done.segments_deleted += 1;
            }
            self.store().delete(&timeline_key(&sp.id))?;
            self.forget_segment(&sp.id)?;
            done.points_dropped += sp.drop.len();
            tracing::info!(segment = %sp.short_id, dropped = sp.drop.len(), kept = sp.keep.len(), "timeline points thinned");
        }
        Ok(done)
    }

    fn forget_segment(&self, id: &Id) -> Result<()> {
        self.segments
            .lock()
            .map_err(|_| crate::repo::poisoned())?
            .remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::DbChecksum;
    use std::sync::Arc;

    fn p(t: i64, count: u64, changes: &[(u64, u8)]) -> Point {
        Point {
            time: OffsetDateTime::from_unix_timestamp(t).expect("time"),
            page_count: count,
            db_checksum: DbChecksum(t as u128),
            changes: changes.iter().map(|(i, b)| (*i, Id([*b; 32]))).collect(),
        }
    }

    fn seg(points: Vec<Point>) -> Segment {
        Segment {
            path: "/db".into(),
            base: Id([0; 32]),
            page_size: 4096,
            points,
        }
    }

    #[test]
    fn thinning_merges_dropped_changes_into_the_next_kept_point() {
        let seg = seg(vec![
            p(1, 4, &[(0, 1), (2, 1)]),
            p(2, 2, &[(1, 2)]),
            p(3, 3, &[(0, 3), (2, 3)]),
            p(4, 3, &[(1, 4)]),
        ]);
        let thinned = thin(&seg, &[2].into_iter().collect());
        assert_eq!(
            thinned.points.len(),
            1,
            "the dropped point after it is gone"
        );
        let kept = &thinned.points[0];
        assert_eq!(kept.time, seg.points[2].time);
        assert_eq!(
            kept.changes,
            vec![(0, Id([3; 32])), (1, Id([2; 32])), (2, Id([3; 32]))],
            "later changes win, each page once, in order"
        );
        let cut = thin(&seg, &[1, 3].into_iter().collect());
        assert_eq!(
            cut.points[0].changes,
            vec![(0, Id([1; 32])), (1, Id([2; 32]))],
            "a change past the kept point's count is cut"
        );
        assert_eq!(cut.points[1].changes.len(), 3);
    }

    #[test]
    fn a_point_in_two_segments_is_shadowed_in_the_larger_one() {
        let old = Arc::new(seg(vec![p(1, 1, &[]), p(2, 1, &[]), p(3, 1, &[])]));
        let new = Arc::new(thin(&old, &[1, 2].into_iter().collect()));
        let (a, b) = (Id([1; 32]), Id([2; 32]));
        let s = shadowed(&[(a, old.clone()), (b, new.clone())]);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[&(a, 1)], (b, 0));
        assert_eq!(s[&(a, 2)], (b, 1));
        assert!(!s.contains_key(&(a, 0)), "a point only the old one has");
        // The same point with another checksum is another point.
        let mut other = (*new).clone();
        other.points[0].db_checksum = DbChecksum(99);
        let s = shadowed(&[(a, old), (b, Arc::new(other))]);
        assert_eq!(s.len(), 1, "{s:?}");
    }
}
