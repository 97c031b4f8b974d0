//! Retention: which snapshots to keep, as a plan that can be printed before
//! anything is removed.
//!
//! Snapshots are grouped by their host and their source paths (as restic
//! does by default): two hosts that snapshot the same path are two groups,
//! and each keeps its own. A policy applies to each group on its own.
//! Within a group, newest first:
//! - `last N` keeps the N newest;
//! - `hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each
//!   of the N newest hours/days/ISO weeks/months/years (UTC) that have one;
//! - `within D` keeps every snapshot taken within D of the group's newest
//!   snapshot that is not dated in the future;
//! - every rule orders and measures by trusted time (`dating`): a snapshot
//!   dated ahead of the store's clock, or of a snapshot written after it,
//!   counts at the store's time, so it never takes the place of the newest;
//! - `tags` keeps every snapshot carrying one of the tags;
//! - a snapshot tagged `pre-repair` or `pre-restore` (the undo points of
//!   `repair --apply` and of `restore --in-place`) is always kept until it
//!   is released (`snapback release SNAP`);
//! - a snapshot dated in the future (more than [`FUTURE_TOLERANCE`] ahead of
//!   now: its host's clock was ahead) is always kept and never counted, so it
//!   cannot take the place of the really newest ones.
//!
//! Several policies can cover one snapshot (a snapshot of `[dir, b.db]` is
//! covered by the policy of `dir` and by that of `b.db`): it is removed only
//! when every policy that covers it allows it. A scope without a policy (a
//! configured source without retention) keeps everything it covers.
//!
//! A plan that would remove every snapshot of a group is refused unless the
//! caller allows it, so a mistyped tag or rule never empties a repository.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::layout::{release_id_from_key, release_key, RELEASE_PREFIX, SNAPSHOT_PREFIX};
use crate::repo::Repository;
use crate::selector::{group_key, Snapshot};
use crate::time::is_future;

pub const PRE_REPAIR_TAG: &str = "pre-repair";
/// The tag of the snapshot `restore --in-place` takes of the live database
/// before it writes: kept by retention like `pre-repair`.
pub const PRE_RESTORE_TAG: &str = "pre-restore";

#[derive(Debug, Clone, Default)]
pub struct KeepPolicy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    pub within: Option<Duration>,
    pub tags: Vec<String>,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// One policy and the snapshots it covers.
#[derive(Debug, Clone)]
pub struct PolicyScope {
    /// Named in the reasons ("/srv/b.db: last"); `None` when one policy
    /// covers every snapshot (the `--keep-*` flags).
    pub source: Option<String>,
    /// `None`: no retention is configured; every snapshot covered is kept.
    pub policy: Option<KeepPolicy>,
    /// The snapshots it covers.
    pub covers: HashSet<Id>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub short_id: String,
    pub time: String,
    /// Why it is kept; empty when it is removed.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    pub host: String,
    pub paths: Vec<String>,
    pub keep: Vec<Decision>,
    pub remove: Vec<Decision>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForgetPlan {
    pub groups: Vec<GroupPlan>,
}

impl ForgetPlan {
    pub fn removals(&self) -> impl Iterator<Item = &Decision> {
        self.groups.iter().flat_map(|g| g.remove.iter())
    }
}

fn bucket(t: OffsetDateTime, rule: &str) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    match rule {
        "hourly" => format!("{}-{:03}-{:02}", t.year(), t.ordinal(), t.hour()),
        "daily" => format!("{}-{:03}", t.year(), t.ordinal()),
        "weekly" => {
            let (y, w, _) = t.to_iso_week_date();
            format!("{y}-W{w:02}")
        }
        "monthly" => format!("{}-{:02}", t.year(), t.month() as u8),
        _ => format!("{}", t.year()),
    }
}

/// The reasons `policy` keeps each of `list` (newest first, none of them
/// dated in the future), each given by its tags and its trusted time (see
/// `dating`): snapshots, and timeline points with their base's tags.
pub(crate) fn keep_reasons(
    list: &[(&[String], OffsetDateTime)],
    policy: &KeepPolicy,
) -> Vec<Vec<String>> {
    let mut reasons: Vec<Vec<String>> = vec![vec![]; list.len()];
    if let Some(n) = policy.last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("last".into());
        }
    }
    for (rule, n) in [
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
        ("yearly", policy.yearly),
    ] {
        let Some(n) = n else { continue };
        let mut seen = 0u32;
        let mut last_bucket: Option<String> = None;
        for (i, (_, t)) in list.iter().enumerate() {
            if seen >= n {
                break;
            }
            let b = bucket(*t, rule);
            if last_bucket.as_ref() != Some(&b) {
                reasons[i].push(format!("{rule} {b}"));
                last_bucket = Some(b);
                seen += 1;
            }
        }
    }
    if let (Some(d), Some(newest)) = (policy.within, list.first()) {
        let d = time::Duration::try_from(d).unwrap_or(time::Duration::MAX);
        for (i, (_, t)) in list.iter().enumerate() {
            if newest.1 - *t <= d {
                reasons[i].push("within".into());
            }
        }
    }
    for (i, (tags, _)) in list.iter().enumerate() {
        for t in tags.iter() {
            if policy.tags.contains(t) {
                reasons[i].push(format!("tag {t}"));
            }
        }
    }
    reasons
}

/// Plans which snapshots to keep under one policy that covers them all.
/// `released` lists pre-repair snapshots the operator released.
pub fn plan(
    snaps: &[Snapshot],
    policy: &KeepPolicy,
    released: &HashSet<Id>,
    allow_empty: bool,
) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(no_rule());
    }
    let scope = PolicyScope {
        source: None,
        policy: Some(policy.clone()),
        covers: snaps.iter().map(|s| s.id).collect(),
    };
    plan_scoped(snaps, &[scope], released, allow_empty, crate::time::now())
}

fn no_rule() -> Error {
    Error::Invalid(
        "no keep rule given: say what to keep (--keep-last, --keep-daily, --keep-within, --keep-tag, …); nothing was removed".into(),
    )
}

/// Plans which snapshots to keep when several policies may cover one
/// snapshot: it is removed only when every scope that covers it allows it.
/// Snapshots no scope covers are left alone and not listed. `now` decides
/// which snapshots are dated in the future.
pub fn plan_scoped(
    snaps: &[Snapshot],
    scopes: &[PolicyScope],
    released: &HashSet<Id>,
    allow_empty: bool,
    now: OffsetDateTime,
) -> Result<ForgetPlan> {
    if let Some(s) = scopes
        .iter()
        .find(|s| s.policy.as_ref().is_some_and(KeepPolicy::is_empty))
    {
        return Err(match &s.source {
            Some(src) => Error::Invalid(format!(
                "the retention of {src} has no keep rule (keep_last, keep_daily, keep_within, keep_tag, …); nothing was removed"
            )),
            None => no_rule(),
        });
    }
    let covered: Vec<&Snapshot> = snaps
        .iter()
        .filter(|s| scopes.iter().any(|sc| sc.covers.contains(&s.id)))
        .collect();
    let mut groups: BTreeMap<(String, Vec<String>), Vec<&Snapshot>> = BTreeMap::new();
    for s in covered {
        groups.entry(group_key(s)).or_default().push(s);
    }
    // Ordered and counted by trusted time: a snapshot dated ahead of the
    // store's clock, or of its successor, never passes for a newer one.
    let dating = crate::dating::Dating::of(snaps);
    let mut out = Vec::new();
    for ((host, paths), mut list) in groups {
        list.sort_by(|a, b| dating.cmp(b, a));
        let mut reasons: BTreeMap<Id, Vec<String>> =
            list.iter().map(|s| (s.id, Vec::new())).collect();
        let mut add = |id: Id, r: String| {
            if let Some(v) = reasons.get_mut(&id) {
                if !v.contains(&r) {
                    v.push(r);
                }
            }
        };
        for s in &list {
            if is_future(s.time, now) {
                add(s.id, "dated in the future (clock ahead?)".into());
            }
            for tag in [PRE_REPAIR_TAG, PRE_RESTORE_TAG] {
                if s.manifest.tags.iter().any(|t| t == tag) && !released.contains(&s.id) {
                    add(s.id, format!("{tag} (not released)"));
                }
            }
        }
        for sc in scopes {
            let mine: Vec<&Snapshot> = list
                .iter()
                .filter(|s| sc.covers.contains(&s.id))
                .copied()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let label = |r: &str| match &sc.source {
                Some(src) => format!("{src}: {r}"),
                None => r.to_string(),
            };
            let Some(policy) = &sc.policy else {
                for s in &mine {
                    add(s.id, label("no retention policy"));
                }
                continue;
            };
            let counted: Vec<&Snapshot> = mine
                .iter()
                .filter(|s| !is_future(s.time, now))
                .copied()
                .collect();
            let timed: Vec<(&[String], OffsetDateTime)> = counted
                .iter()
                .map(|s| (&s.manifest.tags[..], dating.trusted(s)))
                .collect();
            for (s, rs) in counted.iter().zip(keep_reasons(&timed, policy)) {
                for r in rs {
                    add(s.id, label(&r));
                }
            }
        }
        let mut g = GroupPlan {
            host: host.clone(),
            paths: paths.clone(),
            keep: vec![],
            remove: vec![],
        };
        for s in &list {
            let d = Decision {
                id: s.id.to_hex(),
                short_id: s.id.short(),
                time: s.manifest.time.clone(),
                reasons: reasons.remove(&s.id).unwrap_or_default(),
            };
            if d.reasons.is_empty() {
                g.remove.push(d);
            } else {
                g.keep.push(d);
            }
        }
        if g.keep.is_empty() && !allow_empty {
            return Err(Error::Invalid(format!(
                "this policy would remove all {} snapshot(s) of {} on host {host}; nothing was removed. Check the rules and tags, or pass --allow-empty if that is really meant.",
                g.remove.len(),
                paths.join(" ")
            )));
        }
        out.push(g);
    }
    Ok(ForgetPlan { groups: out })
}

impl Repository {
    /// Pre-repair snapshots that the operator released.
    pub fn released(&self) -> Result<HashSet<Id>> {
        Ok(self
            .store()
            .list(RELEASE_PREFIX)?
            .into_iter()
            .filter_map(|o| release_id_from_key(&o.key))
            .collect())
    }

    /// Lets retention remove a pre-repair snapshot.
    pub fn release(&self, id: &Id) -> Result<()> {
        crate::object::put_verified(self.store().as_ref(), &release_key(id), b"released\n")?;
        Ok(())
    }

    /// Keeps every manifest of the plan's removals that a timeline segment
    /// names as its base (its points replay from it), with the reason
    /// "base of timeline points". Forget never leaves a segment without
    /// its base; the base goes once its segments are gone.
    pub fn keep_timeline_bases(&self, plan: &mut ForgetPlan) -> Result<()> {
        self.keep_timeline_bases_after(plan, None)
    }

    /// `keep_timeline_bases` for the segments that remain once a thinning
    /// of points (applied before the manifests are removed) is applied:
    /// `remaining` holds how many points of each segment it covers stay
    /// (`PointPlan::remaining`), so a base whose segments it deletes whole
    /// can go.
    pub fn keep_timeline_bases_after(
        &self,
        plan: &mut ForgetPlan,
        remaining: Option<&std::collections::HashMap<Id, usize>>,
    ) -> Result<()> {
        let mut bases: std::collections::HashMap<String, usize> = Default::default();
        for (id, seg) in self.segments_strict()? {
            let left = remaining
                .and_then(|r| r.get(&id).copied())
                .unwrap_or(seg.points.len());
            if left > 0 {
                *bases.entry(seg.base.to_hex()).or_default() += left;
            }
        }
        if bases.is_empty() {
            return Ok(());
        }
        for g in &mut plan.groups {
            let (keep, remove): (Vec<Decision>, Vec<Decision>) = std::mem::take(&mut g.remove)
                .into_iter()
                .partition(|d| bases.contains_key(&d.id));
            g.remove = remove;
            for mut d in keep {
                d.reasons.push(format!(
                    "base of timeline points ({} point(s) replay from it)",
                    bases[&d.id]
                ));
                g.keep.push(d);
            }
        }
        Ok(())
    }

    /// Removes the manifests the plan removes. The data stays until prune.
    /// A manifest that a timeline segment names as its base is kept (see
    /// `keep_timeline_bases`), even when the plan was made without it. The
    /// caller holds the exclusive lock, taken before the plan was made: a
    /// watcher (shared lock) then commits no segment over a base while it
    /// is removed, and every segment it committed is seen here.
    pub fn apply_forget(&self, plan: &ForgetPlan) -> Result<usize> {
        let mut plan = plan.clone();
        self.keep_timeline_bases(&mut plan)?;
        let mut n = 0;
        for d in plan.removals() {
            self.store().delete(&format!("{SNAPSHOT_PREFIX}{}", d.id))?;
            tracing::info!(snapshot = %d.id, time = %d.time, "snapshot forgotten");
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use std::sync::Arc;

    fn snap(n: u8, t: &str, tags: &[&str]) -> Snapshot {
        snap_of(n, t, tags, "h", &["/db"])
    }

    fn snap_of(n: u8, t: &str, tags: &[&str], host: &str, paths: &[&str]) -> Snapshot {
        Snapshot {
            id: Id([n; 32]),
            time: crate::time::parse_rfc3339(t).expect("time"),
            written: None,
            manifest: Arc::new(Manifest {
                format_version: 1,
                time: t.into(),
                host: host.into(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
                paths: paths.iter().map(|s| s.to_string()).collect(),
                files: vec![],
                stats: Default::default(),
            }),
            point: None,
        }
    }

    fn last(n: u32) -> KeepPolicy {
        KeepPolicy {
            last: Some(n),
            ..Default::default()
        }
    }

    fn scope(
        source: &str,
        policy: Option<KeepPolicy>,
        snaps: &[Snapshot],
        path: &str,
    ) -> PolicyScope {
        PolicyScope {
            source: Some(source.into()),
            policy,
            covers: snaps
                .iter()
                .filter(|s| s.manifest.paths.iter().any(|p| p == path))
                .map(|s| s.id)
                .collect(),
        }
    }

    fn now() -> OffsetDateTime {
        crate::time::parse_rfc3339("2026-03-01T00:00:00Z").expect("now")
    }

    #[test]
    fn a_snapshot_covered_by_two_policies_is_removed_only_when_both_allow_it() {
        // Six snapshots of [dir, b.db] together, two of dir alone.
        let mut snaps: Vec<Snapshot> = (1..=6)
            .map(|i| {
                snap_of(
                    i,
                    &format!("2026-01-0{i}T10:00:00Z"),
                    &[],
                    "h",
                    &["/dir", "/b.db"],
                )
            })
            .collect();
        snaps.push(snap_of(7, "2026-01-07T10:00:00Z", &[], "h", &["/dir"]));
        snaps.push(snap_of(8, "2026-01-08T10:00:00Z", &[], "h", &["/dir"]));
        let scopes = vec![
            scope("/dir", Some(last(1)), &snaps, "/dir"),
            scope("/b.db", Some(last(50)), &snaps, "/b.db"),
        ];
        let p = plan_scoped(&snaps, &scopes, &HashSet::new(), false, now()).expect("plan");
        assert_eq!(
            p.groups.len(),
            2,
            "one group per path set, each listed once"
        );
        assert_eq!(
            kept(&p),
            vec![1, 2, 3, 4, 5, 6, 8],
            "b.db's keep_last 50 keeps every snapshot holding it"
        );
        let both = p.groups.iter().find(|g| g.paths.len() == 2).expect("group");
        assert!(both.remove.is_empty());
        assert!(
            both.keep[0].reasons.iter().any(|r| r == "/b.db: last"),
            "{:?}",
            both.keep[0]
        );
        assert!(
            both.keep[0].reasons.iter().any(|r| r == "/dir: last"),
            "{:?}",
            both.keep[0]
        );
        // A source without retention keeps what it covers.
        let scopes = vec![
            scope("/dir", Some(last(1)), &snaps, "/dir"),
            scope("/b.db", None, &snaps, "/b.db"),
        ];
        let p = plan_scoped(&snaps, &scopes, &HashSet::new(), false, now()).expect("plan");
        assert_eq!(kept(&p), vec![1, 2, 3, 4, 5, 6, 8]);
    }

    #[test]
    fn retention_groups_by_host_and_path() {
        let snaps: Vec<Snapshot> = (1..=6)
            .map(|i| {
                let host = if i % 2 == 0 { "a" } else { "b" };
                snap_of(i, &format!("2026-01-0{i}T10:00:00Z"), &[], host, &["/db"])
            })
            .collect();
        let p = plan(&snaps, &last(2), &HashSet::new(), false).expect("plan");
        assert_eq!(p.groups.len(), 2);
        assert_eq!(kept(&p), vec![3, 4, 5, 6], "the two newest of each host");
    }

    #[test]
    fn a_snapshot_dated_in_the_future_neither_counts_nor_moves_keep_within() {
        let snaps = vec![
            snap(1, "2026-02-28T23:00:00Z", &[]),
            snap(2, "2026-02-28T23:50:00Z", &[]),
            // Taken with a clock an hour ahead.
            snap(3, "2026-03-01T00:40:00Z", &[]),
        ];
        let scopes = [PolicyScope {
            source: None,
            policy: Some(KeepPolicy {
                within: Some(Duration::from_secs(30 * 60)),
                ..Default::default()
            }),
            covers: snaps.iter().map(|s| s.id).collect(),
        }];
        let p = plan_scoped(&snaps, &scopes, &HashSet::new(), false, now()).expect("plan");
        assert_eq!(
            kept(&p),
            vec![2, 3],
            "the really newest is kept; the future one is kept and flagged"
        );
        let f = p.groups[0]
            .keep
            .iter()
            .find(|d| d.short_id == Id([3; 32]).short())
            .expect("future");
        assert!(f.reasons[0].contains("future"), "{:?}", f.reasons);
        let scopes = [PolicyScope {
            policy: Some(last(1)),
            ..scopes[0].clone()
        }];
        let p = plan_scoped(&snaps, &scopes, &HashSet::new(), false, now()).expect("plan");
        assert_eq!(
            kept(&p),
            vec![2, 3],
            "keep_last 1 keeps the newest real one"
        );
    }

    fn kept(p: &ForgetPlan) -> Vec<u8> {
        let mut v: Vec<u8> = p
            .groups
            .iter()
            .flat_map(|g| g.keep.iter())
            .map(|d| Id::from_hex(&d.id).expect("id").0[0])
            .collect();
        v.sort();
        v
    }

    fn series() -> Vec<Snapshot> {
        vec![
            snap(1, "2026-01-01T10:00:00Z", &[]),
            snap(2, "2026-01-01T10:30:00Z", &[]),
            snap(3, "2026-01-01T11:00:00Z", &["keep"]),
            snap(4, "2026-01-02T09:00:00Z", &[]),
            snap(5, "2026-01-09T09:00:00Z", &[]),
            snap(6, "2026-02-01T09:00:00Z", &[PRE_REPAIR_TAG]),
            snap(7, "2026-02-01T09:05:00Z", &[]),
        ]
    }

    #[test]
    fn table_of_policies() {
        let none = HashSet::new();
        let cases: Vec<(KeepPolicy, Vec<u8>)> = vec![
            (
                KeepPolicy {
                    last: Some(2),
                    ..Default::default()
                },
                vec![6, 7],
            ),
            (
                KeepPolicy {
                    hourly: Some(3),
                    ..Default::default()
                },
                vec![4, 5, 6, 7],
            ),
            (
                KeepPolicy {
                    daily: Some(3),
                    ..Default::default()
                },
                vec![4, 5, 6, 7],
            ),
            (
                KeepPolicy {
                    hourly: Some(6),
                    ..Default::default()
                },
                vec![2, 3, 4, 5, 6, 7],
            ),
            (
                KeepPolicy {
                    weekly: Some(2),
                    ..Default::default()
                },
                vec![5, 6, 7],
            ),
            (
                KeepPolicy {
                    monthly: Some(2),
                    ..Default::default()
                },
                vec![5, 6, 7],
            ),
            (
                KeepPolicy {
                    yearly: Some(1),
                    ..Default::default()
                },
                vec![6, 7],
            ),
            (
                KeepPolicy {
                    within: Some(Duration::from_secs(24 * 3600 * 8)),
                    ..Default::default()
                },
                vec![6, 7],
            ),
            (
                KeepPolicy {
                    within: Some(Duration::from_secs(30 * 24 * 3600 + 600)),
                    ..Default::default()
                },
                vec![4, 5, 6, 7],
            ),
            (
                KeepPolicy {
                    tags: vec!["keep".into()],
                    ..Default::default()
                },
                vec![3, 6],
            ),
            (
                KeepPolicy {
                    last: Some(1),
                    daily: Some(2),
                    ..Default::default()
                },
                vec![5, 6, 7],
            ),
        ];
        for (policy, want) in cases {
            let p = plan(&series(), &policy, &none, false).expect("plan");
            assert_eq!(kept(&p), want, "{policy:?}");
        }
    }

    #[test]
    fn pre_repair_is_kept_until_released() {
        let p = plan(
            &series(),
            &KeepPolicy {
                last: Some(1),
                ..Default::default()
            },
            &HashSet::new(),
            false,
        )
        .expect("plan");
        assert_eq!(kept(&p), vec![6, 7]);
        let released: HashSet<Id> = [Id([6; 32])].into();
        let p = plan(
            &series(),
            &KeepPolicy {
                last: Some(1),
                ..Default::default()
            },
            &released,
            false,
        )
        .expect("plan");
        assert_eq!(kept(&p), vec![7]);
    }

    #[test]
    fn pre_restore_is_kept_until_released_like_pre_repair() {
        let mut s = series();
        s.push(snap(8, "2026-01-05T09:00:00Z", &[PRE_RESTORE_TAG]));
        let last1 = KeepPolicy {
            last: Some(1),
            ..Default::default()
        };
        let p = plan(&s, &last1, &HashSet::new(), false).expect("plan");
        assert_eq!(kept(&p), vec![6, 7, 8]);
        let why: Vec<&Decision> = p.groups.iter().flat_map(|g| &g.keep).collect();
        assert!(
            why.iter()
                .any(|d| d.reasons.iter().any(|r| r == "pre-restore (not released)")),
            "{why:?}"
        );
        let released: HashSet<Id> = [Id([8; 32])].into();
        let p = plan(&s, &last1, &released, false).expect("plan");
        assert_eq!(kept(&p), vec![6, 7]);
    }

    #[test]
    fn a_policy_that_empties_a_group_is_refused() {
        let s: Vec<Snapshot> = series()
            .into_iter()
            .filter(|s| s.manifest.tags.is_empty())
            .collect();
        let typo = KeepPolicy {
            tags: vec!["kepe".into()],
            ..Default::default()
        };
        let e = plan(&s, &typo, &HashSet::new(), false).expect_err("refused");
        assert!(e.to_string().contains("would remove all"), "{e}");
        let p = plan(&s, &typo, &HashSet::new(), true).expect("allowed explicitly");
        assert!(kept(&p).is_empty());
        assert!(
            plan(&s, &KeepPolicy::default(), &HashSet::new(), true).is_err(),
            "no rule at all is refused"
        );
    }
}
