//! Retention: which snapshots to keep, as a plan that can be printed before
//! anything is removed.
//!
//! Snapshots are grouped by their source paths; the policy applies to each
//! group on its own. Within a group, newest first:
//! - `last N` keeps the N newest;
//! - `hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each
//!   of the N newest hours/days/ISO weeks/months/years (UTC) that have one;
//! - `within D` keeps every snapshot taken within D of the group's newest;
//! - `tags` keeps every snapshot carrying one of the tags;
//! - a snapshot tagged `pre-repair` is always kept until it is released
//!   (`snapback release SNAP`).
//!
//! A plan that would remove every snapshot of a group is refused unless the
//! caller allows it, so a mistyped tag or rule never empties a repository.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{Repository, Snapshot};

pub const PRE_REPAIR_TAG: &str = "pre-repair";
pub const RELEASE_PREFIX: &str = "releases/";

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

/// Plans which snapshots to keep. `released` lists pre-repair snapshots the
/// operator released.
pub fn plan(
    snaps: &[Snapshot],
    policy: &KeepPolicy,
    released: &HashSet<Id>,
    allow_empty: bool,
) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no keep rule given: say what to keep (--keep-last, --keep-daily, --keep-within, --keep-tag, …); nothing was removed".into(),
        ));
    }
    let mut groups: BTreeMap<Vec<String>, Vec<&Snapshot>> = BTreeMap::new();
    for s in snaps {
        let mut key = s.manifest.paths.clone();
        key.sort();
        groups.entry(key).or_default().push(s);
    }
    let mut out = Vec::new();
    for (paths, mut list) in groups {
        list.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
        let newest = list[0].time;
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
            for (i, s) in list.iter().enumerate() {
                if seen >= n {
                    break;
                }
                let b = bucket(s.time, rule);
                if last_bucket.as_ref() != Some(&b) {
                    reasons[i].push(format!("{rule} {b}"));
                    last_bucket = Some(b);
                    seen += 1;
                }
            }
        }
        if let Some(d) = policy.within {
            let d = time::Duration::try_from(d).unwrap_or(time::Duration::MAX);
            for (i, s) in list.iter().enumerate() {
                if newest - s.time <= d {
                    reasons[i].push("within".into());
                }
            }
        }
        for (i, s) in list.iter().enumerate() {
            for t in &s.manifest.tags {
                if policy.tags.contains(t) {
                    reasons[i].push(format!("tag {t}"));
                }
                if t == PRE_REPAIR_TAG && !released.contains(&s.id) {
                    reasons[i].push("pre-repair (not released)".into());
                }
            }
        }
        let mut g = GroupPlan {
            paths: paths.clone(),
            keep: vec![],
            remove: vec![],
        };
        for (s, r) in list.iter().zip(reasons) {
            let d = Decision {
                id: s.id.to_hex(),
                short_id: s.id.short(),
                time: s.manifest.time.clone(),
                reasons: r,
            };
            if d.reasons.is_empty() {
                g.remove.push(d);
            } else {
                g.keep.push(d);
            }
        }
        if g.keep.is_empty() && !allow_empty {
            return Err(Error::Invalid(format!(
                "this policy would remove all {} snapshot(s) of {}; nothing was removed. Check the rules and tags, or pass --allow-empty if that is really meant.",
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
            .filter_map(|o| o.key.strip_prefix(RELEASE_PREFIX).and_then(Id::from_hex))
            .collect())
    }

    /// Lets retention remove a pre-repair snapshot.
    pub fn release(&self, id: &Id) -> Result<()> {
        crate::snapshot::put_verified(
            self.store().as_ref(),
            &format!("{RELEASE_PREFIX}{id}"),
            b"released\n",
        )?;
        Ok(())
    }

    /// Removes the manifests the plan removes. The data stays until prune.
    pub fn apply_forget(&self, plan: &ForgetPlan) -> Result<usize> {
        let mut n = 0;
        for d in plan.removals() {
            self.store()
                .delete(&format!("{}{}", crate::repo::SNAPSHOT_PREFIX, d.id))?;
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
        Snapshot {
            id: Id([n; 32]),
            time: crate::time::parse_rfc3339(t).expect("time"),
            manifest: Arc::new(Manifest {
                format_version: 1,
                time: t.into(),
                host: "h".into(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
                paths: vec!["/db".into()],
                files: vec![],
                stats: Default::default(),
            }),
        }
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
