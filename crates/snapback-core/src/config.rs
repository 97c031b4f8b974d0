use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The newest repository format version this build reads and writes; new
/// repositories get it. A repository keeps the version it was created with
/// (docs/format.md, "Format version 2"): into a format-1 repository this
/// build writes only format-1 objects.
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format version this build still reads and writes.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// The optional parts of format 2 that this build understands. A repository
/// whose `features` names any other is refused: a feature this build does
/// not know may change what the data means.
pub const KNOWN_FEATURES: &[&str] = &[TIMELINE_FEATURE, DICT_FEATURE];

/// The feature of a repository that holds timeline segments (`timeline/`):
/// set when the first segment is written.
pub const TIMELINE_FEATURE: &str = "timeline";

/// The feature of a repository that holds zstd dictionaries (`dicts/`)
/// and blobs compressed with them (version-2 packs and indexes): set just
/// before the first dictionary is stored.
pub const DICT_FEATURE: &str = "zstd-dict";

/// The `config` object: written once by `init`, never changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format_version: u32,
    /// Random id of this repository.
    pub repo_id: String,
    pub created: String,
    pub chunking: ChunkingParams,
    /// zstd level for blobs.
    pub compression_level: i32,
    /// Packs are closed when they reach this many stored bytes.
    pub pack_target_size: u64,
    /// Present when the repository is encrypted (`init --encrypt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::crypto::EncryptionConfig>,
    /// Optional parts of format 2 that the repository uses (see
    /// `KNOWN_FEATURES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChunkingParams {
    /// A SQLite database is cut into chunks of this many pages.
    pub sqlite_pages_per_chunk: u32,
    /// FastCDC sizes for other files.
    pub cdc_min: u32,
    pub cdc_avg: u32,
    pub cdc_max: u32,
}

impl Default for ChunkingParams {
    fn default() -> Self {
        ChunkingParams {
            sqlite_pages_per_chunk: 1,
            cdc_min: 256 * 1024,
            cdc_avg: 1024 * 1024,
            cdc_max: 4 * 1024 * 1024,
        }
    }
}

impl RepoConfig {
    pub fn parse(bytes: &[u8]) -> Result<RepoConfig> {
        // Read the version first so that a newer format gets a clear message
        // rather than an "unknown field" one.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt("config", format!("not a snapback config: {e}")))?;
        if v.format_version > FORMAT_VERSION || v.format_version == 0 {
            return Err(Error::UnsupportedVersion {
                found: v.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let c: RepoConfig =
            serde_json::from_slice(bytes).map_err(|e| Error::corrupt("config", e.to_string()))?;
        c.validate()?;
        if let Some(f) = c
            .features
            .iter()
            .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
        {
            return Err(Error::UnsupportedFeature { feature: f.clone() });
        }
        if let Some(e) = &c.encryption {
            e.validate()?;
        }
        Ok(c)
    }

    /// True when the repository is format 2 or newer: manifests may omit the
    /// whole-file SHA-256, so captures may read only what changed.
    pub fn allows_partial_reads(&self) -> bool {
        self.format_version >= 2
    }

    pub fn validate(&self) -> Result<()> {
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(Error::corrupt(
                "config",
                format!("format_version must be {OLDEST_FORMAT_VERSION}..={FORMAT_VERSION}"),
            ));
        }
        if !self.features.is_empty() && self.format_version < 2 {
            return Err(Error::corrupt("config", "format 1 has no features"));
        }
        // The id names local cache directories: hex only.
        if self.repo_id.is_empty()
            || self.repo_id.len() > 64
            || !self.repo_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Error::corrupt(
                "config",
                "repo_id must be 1 to 64 hexadecimal digits",
            ));
        }
        let ch = &self.chunking;
        if ch.sqlite_pages_per_chunk == 0 || ch.sqlite_pages_per_chunk > 1024 {
            return Err(Error::corrupt(
                "config",
                "sqlite_pages_per_chunk must be 1..=1024",
            ));
        }
        if !(64 <= ch.cdc_min
            && ch.cdc_min <= ch.cdc_avg
            && ch.cdc_avg <= ch.cdc_max
            && ch.cdc_max <= 64 << 20)
        {
            return Err(Error::corrupt(
                "config",
                "cdc sizes must satisfy 64 <= min <= avg <= max <= 64 MiB",
            ));
        }
        if !(1..=19).contains(&self.compression_level) {
            return Err(Error::corrupt("config", "compression_level must be 1..=19"));
        }
        if self.pack_target_size < 1 << 16 || self.pack_target_size > 1 << 30 {
            return Err(Error::corrupt(
                "config",
                "pack_target_size must be 64 KiB..=1 GiB",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RepoConfig {
        RepoConfig {
            format_version: FORMAT_VERSION,
            repo_id: "0123abcd".into(),
            created: "2026-01-01T00:00:00Z".into(),
            chunking: ChunkingParams::default(),
            compression_level: 3,
            pack_target_size: 16 << 20,
            encryption: None,
            features: vec![],
        }
    }

    #[test]
    fn roundtrip() {
        let c = sample();
        let b = serde_json::to_vec(&c).expect("ser");
        assert_eq!(RepoConfig::parse(&b).expect("parse"), c);
    }

    #[test]
    fn newer_version_is_refused_clearly() {
        let mut c = sample();
        c.format_version = 99;
        let b = serde_json::to_vec(&c).expect("ser");
        let e = RepoConfig::parse(&b).expect_err("newer");
        assert!(
            matches!(e, Error::UnsupportedVersion { found: 99, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("Upgrade snapback"));
    }

    #[test]
    fn unknown_features_are_refused_by_name() {
        let mut c = sample();
        c.features = vec!["timeline".into(), "zstd-dict".into(), "a-later-part".into()];
        let b = serde_json::to_vec(&c).expect("ser");
        let e = RepoConfig::parse(&b).expect_err("unknown feature");
        assert!(
            matches!(&e, Error::UnsupportedFeature { feature } if feature == "a-later-part"),
            "{e}"
        );
        assert!(e.to_string().contains("Upgrade snapback"), "{e}");
    }

    #[test]
    fn both_format_versions_parse() {
        for v in [1, 2] {
            let mut c = sample();
            c.format_version = v;
            let b = serde_json::to_vec(&c).expect("ser");
            assert_eq!(RepoConfig::parse(&b).expect("parse").format_version, v);
        }
    }

    #[test]
    fn garbage_is_corrupt() {
        assert!(matches!(
            RepoConfig::parse(b"\x00\x01"),
            Err(Error::Corrupt { .. })
        ));
        let mut c = sample();
        c.chunking.sqlite_pages_per_chunk = 0;
        let b = serde_json::to_vec(&c).expect("ser");
        assert!(matches!(RepoConfig::parse(&b), Err(Error::Corrupt { .. })));
    }
}
