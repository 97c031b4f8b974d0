//! Which snapshot a command means: `Snapshot` (a committed snapshot, its
//! retention group, the paths it holds) and `Selector` (latest, `@TIME`,
//! an id prefix). How a selector resolves is in `resolve`.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::manifest::{FileEntry, Manifest};

/// A committed snapshot: its id and manifest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: Id,
    /// The manifest's time: the writer's clock when the capture began.
    pub time: OffsetDateTime,
    /// When the store wrote the manifest, by the store's own clock (see
    /// `dating`); `None` where the store does not say.
    pub written: Option<OffsetDateTime>,
    pub manifest: Arc<Manifest>,
}

impl Snapshot {
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
            "{} ({})",
            self.id.short(),
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
            "invalid snapshot selector '{s}': use a snapshot id or a unique prefix of it, 'latest', or '@TIME' (RFC 3339, e.g. @2026-02-02T17:17:00Z)"
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
}
