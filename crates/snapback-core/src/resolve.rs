//! How a selector resolves among snapshots and timeline points: `latest`
//! and `@TIME` by trusted time (see `dating`) over both, an id by unique
//! prefix among manifests, a point by its segment's id prefix and index.

use crate::error::{Error, Result};
use crate::selector::{Selector, Snapshot};

pub(crate) fn resolve_in(
    all: &[Snapshot],
    sel: &Selector,
    filter: impl Fn(&Snapshot) -> bool,
) -> Result<Snapshot> {
    let cands: Vec<&Snapshot> = all.iter().filter(|s| filter(s)).collect();
    match sel {
        // The newest snapshot not dated in the future: one taken with a
        // clock that was ahead is older than its time says, so it never
        // stands for "latest" while a real one exists (select it by id).
        Selector::Latest => {
            let now = crate::time::now();
            let dating = crate::dating::Dating::of(all);
            let real = dating.newest(cands.iter().copied(), now);
            for skipped in cands
                .iter()
                .filter(|s| real.is_some_and(|r| r.id != s.id && s.time > r.time))
            {
                let why = match dating.ahead(&skipped.id) {
                    Some(a) => a.describe(),
                    None => "dated in the future: its host's clock was ahead".into(),
                };
                tracing::warn!(
                    "'latest' skips snapshot {} ({}; {why}); select it by id if it is the one you mean",
                    skipped.id.short(),
                    skipped.manifest.time
                );
            }
            real.cloned()
                .ok_or_else(|| Error::Selector("there are no snapshots (for this selection) yet; take one with `snapback snapshot PATH`".into()))
        }
        // By trusted time: a snapshot dated ahead of the store's clock holds
        // what was committed before the store wrote it, not before its time.
        Selector::At(t) => {
            let dating = crate::dating::Dating::of(all);
            cands
                .iter()
                .filter(|s| dating.trusted(s) <= *t)
                .max_by(|a, b| dating.cmp(a, b))
                .map(|s| (*s).clone())
                .ok_or_else(|| {
                    let first = cands
                        .first()
                        .map(|s| format!("; the oldest is {}", s.describe()))
                        .unwrap_or_default();
                    Error::Selector(format!(
                        "no snapshot was taken at or before {}{first}",
                        crate::time::format_rfc3339(*t)
                    ))
                })
        }
        Selector::Point { segment, index } => {
            let named = |s: &&&Snapshot| {
                s.point
                    .is_some_and(|p| p.segment.to_hex().starts_with(segment.as_str()))
            };
            let segs: std::collections::BTreeSet<_> = cands
                .iter()
                .filter(named)
                .filter_map(|s| s.point.map(|p| p.segment))
                .collect();
            if segs.len() > 1 {
                return Err(Error::Selector(format!(
                    "segment prefix '{segment}' is ambiguous: it matches {} timeline segments ({}); give more digits",
                    segs.len(),
                    segs.iter().take(5).map(|s| s.short()).collect::<Vec<_>>().join(", ")
                )));
            }
            let in_seg: Vec<&&Snapshot> = cands.iter().filter(named).collect();
            if in_seg.is_empty() {
                return Err(Error::Selector(format!(
                    "no timeline segment id starts with '{segment}'; list points with `snapback snapshots --points`"
                )));
            }
            in_seg
                .iter()
                .find(|s| s.point.is_some_and(|p| p.index == *index))
                .map(|s| (**s).clone())
                .ok_or_else(|| {
                    Error::Selector(format!(
                        "timeline segment {segment} has points 0 to {}; there is no point {index}",
                        in_seg.len() - 1
                    ))
                })
        }
        Selector::Id(prefix) => {
            // Ids name manifests; a point is named SEGMENT/INDEX.
            let m: Vec<&&Snapshot> = cands
                .iter()
                .filter(|s| s.point.is_none() && s.id.to_hex().starts_with(prefix.as_str()))
                .collect();
            match m.len() {
                1 => Ok((*m[0]).clone()),
                0 => Err(Error::Selector(format!("no snapshot id starts with '{prefix}'; list them with `snapback snapshots`"))),
                n => Err(Error::Selector(format!(
                    "snapshot prefix '{prefix}' is ambiguous: it matches {n} snapshots ({}); give more digits",
                    m.iter().take(5).map(|s| s.describe()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::manifest::Manifest;
    use std::sync::Arc;

    fn snap(hex_prefix: &str, t: &str) -> Snapshot {
        let mut id = [0u8; 32];
        hex::decode_to_slice(format!("{hex_prefix:0<64}"), &mut id).expect("hex");
        Snapshot {
            id: Id(id),
            time: crate::time::parse_rfc3339(t).expect("time"),
            written: None,
            manifest: Arc::new(Manifest {
                format_version: 1,
                time: t.into(),
                host: "h".into(),
                tags: vec![],
                paths: vec![],
                files: vec![],
                stats: Default::default(),
            }),
            point: None,
        }
    }

    #[test]
    fn selectors_resolve_around_exact_times() {
        let all = vec![
            snap("aaaa11", "2026-02-02T17:00:00Z"),
            snap("aaaa22", "2026-02-02T17:17:00Z"),
            snap("bbbb33", "2026-02-02T17:30:00Z"),
        ];
        let r = |s: &str| {
            resolve_in(&all, &s.parse().expect("selector"), |_| true).map(|s| s.id.short())
        };
        assert_eq!(r("latest").expect("latest"), "bbbb3300");
        assert_eq!(r("@2026-02-02T17:17:00Z").expect("exact"), "aaaa2200");
        assert_eq!(
            r("@2026-02-02T17:16:59.999Z").expect("just before"),
            "aaaa1100"
        );
        assert_eq!(r("@2026-02-02T18:17:00+01:00").expect("offset"), "aaaa2200");
        assert!(
            r("@2026-02-02T16:59:59Z").is_err(),
            "before the first snapshot"
        );
        assert_eq!(r("bbbb").expect("prefix"), "bbbb3300");
        let e = r("aaaa").expect_err("ambiguous");
        assert!(e.to_string().contains("ambiguous"), "{e}");
        assert!(r("cccc").is_err());
        assert!("zz".parse::<Selector>().is_err());
        assert!("@yesterday".parse::<Selector>().is_err());
    }
}
