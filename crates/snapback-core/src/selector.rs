//! Which snapshot a command means: `Snapshot` (a committed snapshot or a
//! timeline point, its retention group, the paths it holds) and `Selector`
//! (latest, `@TIME`, an id prefix, a point's name). How a selector
//! resolves is in `resolve`.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::manifest::{FileEntry, Manifest, PointSource, SnapshotStats};
use crate::segment::Segment;

/// A committed snapshot: its id and manifest; or a timeline point, seen as
/// a snapshot of its base's paths, host and tags.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// A manifest's id. For a point, an id of its own that names no
    /// object (so that nothing deletes or releases its base by mistake):
    /// use `name()` and `point` for it.
    pub id: Id,
    /// The manifest's time: the writer's clock when the capture began.
    pub time: OffsetDateTime,
    /// When the store wrote the manifest (a point: its segment), by the
    /// store's own clock (see `dating`); `None` where the store does not
    /// say.
    pub written: Option<OffsetDateTime>,
    /// For a point: the base's manifest with the database's entry as it
    /// is at the point.
    pub manifest: Arc<Manifest>,
    /// Set when this is a timeline point.
    pub point: Option<PointRef>,
}

/// Where a point is: its segment, its position in it, its base manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointRef {
    pub segment: Id,
    /// From 0.
    pub index: usize,
    pub base: Id,
}

impl PointRef {
    /// `<first 8 hex digits of the segment id>/<index>`: how listings name a
    /// point, and a selector that selects it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.segment.short(), self.index)
    }
}

impl Snapshot {
    /// Point `k` of segment `seg` (id `segment`, written by the store at
    /// `written`) over its base snapshot: the base's manifest, with the
    /// database's entry showing the point's image.
    pub fn point_of(
        base: &Snapshot,
        segment: Id,
        seg: &Segment,
        k: usize,
        written: Option<OffsetDateTime>,
    ) -> Option<Snapshot> {
        let p = seg.points.get(k)?;
        let mut m = (*base.manifest).clone();
        let file = m.files.iter_mut().find(|f| f.path == seg.path)?;
        let time = crate::time::format_rfc3339(p.time);
        file.size = p.page_count.saturating_mul(seg.page_size as u64);
        file.sha256 = None;
        file.mtime = None;
        file.db_checksum = p.db_checksum.to_hex();
        file.point = Some(PointSource { segment, index: k });
        if let Some(q) = file.sqlite.as_mut() {
            q.page_count = p.page_count;
            q.captured_at = time.clone();
            q.fingerprint = None;
            q.capture = None;
        }
        m.time = time;
        m.stats = SnapshotStats {
            files: m.files.len() as u64,
            ..Default::default()
        };
        let name = format!("snapback point {segment}/{k}");
        Some(Snapshot {
            id: Id::of(name.as_bytes()),
            time: p.time,
            written,
            manifest: Arc::new(m),
            point: Some(PointRef {
                segment,
                index: k,
                base: base.id,
            }),
        })
    }

    /// What selects exactly it, for scripts: a manifest's full id, or a
    /// point's `SEGMENT/INDEX`.
    pub fn selector(&self) -> String {
        match &self.point {
            Some(p) => p.name(),
            None => self.id.to_hex(),
        }
    }

    /// How listings and messages name it: a manifest's short id, or a
    /// point's `SEGMENT/INDEX`.
    pub fn name(&self) -> String {
        match &self.point {
            Some(p) => p.name(),
            None => self.id.short(),
        }
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| f.path == path)
    }

    /// True when the snapshot holds the file `path`, or a file under the
    /// directory `path`.
    pub fn holds(&self, path: &str) -> bool {
        self.manifest
            .files
            .iter()
            .any(|f| path_matches(&f.path, path))
    }

    /// "abcd1234 (2026-02-02T17:17:00Z)", for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}{} ({})",
            if self.point.is_some() { "point " } else { "" },
            self.name(),
            crate::time::format_rfc3339(self.time)
        )
    }
}

/// True when `file` is `path` or lies under the directory `path`.
pub fn path_matches(file: &str, path: &str) -> bool {
    let p = path.trim_end_matches('/');
    file == p
        || (file.starts_with(p) && file.as_bytes().get(p.len()) == Some(&b'/'))
        || p.is_empty()
}

/// The retention group of a snapshot: its host and its sorted paths.
pub fn group_key(s: &Snapshot) -> (String, Vec<String>) {
    let mut paths = s.manifest.paths.clone();
    paths.sort();
    (s.manifest.host.clone(), paths)
}

/// The fewest hex digits an id prefix may have (snapshots and keys).
pub const MIN_ID_PREFIX: usize = 4;

/// How many file paths a message lists before "… and N more".
const LISTED_FILES: usize = 10;

/// "a, b, c … and 12 more": the paths a snapshot holds, for messages.
pub fn holds_list(snap: &Snapshot) -> String {
    let files = &snap.manifest.files;
    let mut out = files
        .iter()
        .take(LISTED_FILES)
        .map(|f| f.path.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > LISTED_FILES {
        out.push_str(&format!(" … and {} more", files.len() - LISTED_FILES));
    }
    if files.is_empty() {
        out.push_str("no files");
    }
    out
}

/// Which snapshot a command means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    /// The newest snapshot taken at or before this instant.
    At(OffsetDateTime),
    /// A full id or a unique prefix of one.
    Id(String),
    /// A timeline point: `SEGMENT/INDEX`, a prefix of its segment's id
    /// (at least 4 hex digits) and its position in it, from 0.
    Point {
        segment: String,
        index: usize,
    },
}

impl std::str::FromStr for Selector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Selector> {
        let s = s.trim();
        if s == "latest" {
            return Ok(Selector::Latest);
        }
        if let Some(t) = s.strip_prefix('@') {
            return crate::time::parse_rfc3339(t)
                .map(Selector::At)
                .map_err(|e| Error::Selector(format!("invalid snapshot selector '@{t}': {e}")));
        }
        let lower = s.to_ascii_lowercase();
        let hex =
            |t: &str| !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
        // Hex digits, a slash: a point (anything else is no selector).
        if let Some((seg, k)) = lower.split_once('/').filter(|(seg, _)| hex(seg)) {
            return match k.parse::<usize>() {
                Ok(index) if seg.len() >= MIN_ID_PREFIX && k.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Selector::Point {
                        segment: seg.to_string(),
                        index,
                    })
                }
                _ => Err(Error::Selector(format!(
                    "invalid point selector '{s}': a point is SEGMENT/INDEX, at least {MIN_ID_PREFIX} hex digits of its segment's id and its position from 0, as `snapback snapshots --points` lists it (e.g. 1a2b3c4d/0)"
                ))),
            };
        }
        if !lower.is_empty() && lower.len() <= 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            // As documented: a prefix of at least 4 hex digits (fewer would
            // match by luck, and mean another snapshot tomorrow).
            if lower.len() < MIN_ID_PREFIX {
                return Err(Error::Selector(format!(
                    "snapshot id prefix '{s}' is too short: give at least {MIN_ID_PREFIX} hex digits (the short ids of `snapback snapshots` have 8)"
                )));
            }
            return Ok(Selector::Id(lower));
        }
        Err(Error::Selector(format!(
            "invalid snapshot selector '{s}': use a snapshot id or a unique prefix of it, a point's SEGMENT/INDEX, 'latest', or '@TIME' (RFC 3339, e.g. @2026-02-02T17:17:00Z)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_prefixes_need_four_hex_digits() {
        for short in ["a", "ab", "abc"] {
            let e = short.parse::<Selector>().expect_err(short).to_string();
            assert!(e.contains("at least 4 hex digits"), "{e}");
        }
        assert_eq!(
            "abcd".parse::<Selector>().expect("4"),
            Selector::Id("abcd".into())
        );
    }

    #[test]
    fn point_selectors_name_a_segment_prefix_and_an_index() {
        assert_eq!(
            "1A2B3c4d/12".parse::<Selector>().expect("point"),
            Selector::Point {
                segment: "1a2b3c4d".into(),
                index: 12
            }
        );
        for bad in [
            "abc/1", "abcd/", "abcd/x", "abcd/-1", "zzzz/1", "abcd/1/2", "/3",
        ] {
            let e = bad.parse::<Selector>().expect_err(bad).to_string();
            assert!(e.contains("SEGMENT/INDEX"), "{bad}: {e}");
        }
    }
}
