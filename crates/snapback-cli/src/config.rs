//! `snapback.toml`: the repository, the sources with their tags and
//! retention, the cache, the heartbeat. Found with `--config`,
//! `SNAPBACK_CONFIG`, or `./snapback.toml`. Flags override it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub repo: Option<String>,
    /// Read by `mount` (the chunk cache).
    #[serde(default)]
    #[allow(dead_code)]
    pub cache: CacheConfig,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Called after every committed snapshot (a dead man's switch).
    pub heartbeat_url: Option<String>,
    /// `status --max-age` when the flag is not given, e.g. "30m".
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: Option<PathBuf>,
    pub size: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `None` when the source has no `[source.retention]` table: `forget`
    /// keeps its snapshots (and says so).
    #[serde(default)]
    pub retention: Option<Retention>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
    #[serde(default)]
    pub keep_tag: Vec<String>,
}

/// Loads the config file: the explicit path (which must exist), else
/// `./snapback.toml` if present, else an empty config.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from("snapback.toml");
            if !p.exists() {
                return Ok(Config::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let cfg: Config =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    let mut cfg = cfg;
    for s in &mut cfg.sources {
        if !s.path.is_absolute() {
            anyhow::bail!(
                "invalid config file {}: source path {} must be absolute",
                path.display(),
                s.path.display()
            );
        }
        // Snapshots store the canonical path (links resolved, no `.`, `..`
        // or trailing slash); match against the same, or retention and
        // monitoring would never find this source's snapshots.
        let canon = canonical_path(&s.path);
        if canon.as_os_str() != s.path.as_os_str() {
            tracing::warn!(
                "config file {}: source path {} is not canonical; it is used as {} (write that in the config to silence this warning)",
                path.display(),
                s.path.display(),
                canon.display()
            );
            s.path = canon;
        }
        // Only `snapshot` uses tags: a bad one is refused there, as on the
        // command line; `max_age` and `keep_within` are checked by the
        // commands that use them, so a typo never stops a snapshot.
    }
    Ok(cfg)
}

/// The path as snapshots store it: absolute, symbolic links resolved, no
/// `.`/`..` components and no trailing slash (what `snapshot` records, via
/// `std::fs::canonicalize`). A path that does not exist (yet) keeps its
/// missing tail, normalized lexically, under its longest existing ancestor,
/// resolved.
pub fn canonical_path(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Ok(c) = std::fs::canonicalize(&abs) {
        return c;
    }
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    let mut tail = Vec::new();
    let mut head = out.clone();
    loop {
        if let Ok(c) = std::fs::canonicalize(&head) {
            let mut r = c;
            for t in tail.iter().rev() {
                r.push(t);
            }
            return r;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(n), Some(parent)) => {
                tail.push(n);
                head = parent.to_path_buf();
            }
            _ => return out,
        }
    }
}

/// Tags as `snapshot --tag` and the config accept them.
pub fn validate_tag(t: &str) -> anyhow::Result<()> {
    if t.is_empty() || t.contains(',') || t.chars().any(char::is_whitespace) {
        anyhow::bail!("invalid tag '{t}': tags are non-empty and have no commas or spaces");
    }
    Ok(())
}

/// Parses a duration such as `30m`, `12h`, `7d` or `1d12h` (units s, m, h,
/// d, w, y). A bad one is a usage error (exit 2) whose message lists the
/// units: months have no fixed length, so `1mo` is refused with a hint.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    const UNITS: &str = "s (seconds), m (minutes), h (hours), d (days), w (weeks), y (365 days)";
    let bad = |why: String| crate::Usage(format!("invalid duration '{s}': {why}"));
    let t = s.trim();
    let mut total = 0u64;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad(format!(
            "write it like 30m, 12h, 7d or 1d12h; units: {UNITS}"
        ))
        .into());
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, after) = rest.split_at(digits);
        let letters = after.len() - after.trim_start_matches(|c: char| c.is_alphabetic()).len();
        let (unit, after) = after.split_at(letters);
        if num.is_empty() {
            let what = if unit.is_empty() {
                after
                    .chars()
                    .next()
                    .map(|c| format!("'{c}'"))
                    .unwrap_or_default()
            } else {
                format!("'{unit}'")
            };
            return Err(bad(format!(
                "expected a whole number before {what}; write it like 30m, 12h, 7d or 1d12h"
            ))
            .into());
        }
        let n: u64 = num
            .parse()
            .map_err(|_| bad("the number is too large".into()))?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            "y" => 31_536_000,
            "" if !after.is_empty() => {
                return Err(bad(format!(
                    "unexpected '{}' after {num}: use whole numbers, each with a unit (90m, not 1.5h); units: {UNITS}",
                    after.chars().next().unwrap_or(' ')
                ))
                .into());
            }
            "" => {
                return Err(bad(format!("'{num}' has no unit; units: {UNITS}")).into());
            }
            u if u.eq_ignore_ascii_case("mo") || u.to_ascii_lowercase().starts_with("month") => {
                return Err(bad(format!(
                    "months have no fixed length: use days (30d) or weeks (4w); units: {UNITS}"
                ))
                .into());
            }
            u => return Err(bad(format!("unknown unit '{u}'; units: {UNITS}")).into()),
        };
        total = total.saturating_add(n.saturating_mul(secs));
        rest = after;
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").expect("s").as_secs(), 90);
        assert_eq!(parse_duration("1d12h").expect("dh").as_secs(), 129_600);
        assert_eq!(parse_duration("2w").expect("w").as_secs(), 1_209_600);
        for bad in ["", "12", "5x", "h", "-1d", "1d 2h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_duration_is_a_usage_error_that_names_the_units() {
        for bad in ["1mo", "2months", "5x", "12", "h"] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.downcast_ref::<crate::Usage>().is_some(), "{bad}: exit 2");
            let msg = e.to_string();
            assert!(!msg.contains("expected a number before 'o'"), "{msg}");
            if bad != "h" {
                assert!(
                    msg.contains("d (days)"),
                    "{bad}: the units are named: {msg}"
                );
            }
        }
        let msg = parse_duration("1mo").expect_err("mo").to_string();
        assert!(
            msg.contains("months have no fixed length") && msg.contains("30d"),
            "{msg}"
        );
    }

    #[test]
    fn config_file_parses_and_rejects_unknown_keys() {
        let d = tempfile_dir();
        let p = d.join("snapback.toml");
        std::fs::write(
            &p,
            r#"
repo = "/var/backups/snapback"
heartbeat_url = "http://127.0.0.1:9/ping"
max_age = "30m"
[cache]
dir = "/var/cache/snapback"
size = "2GiB"
[[source]]
path = "/srv/app/app.db"
tags = ["app"]
[source.retention]
keep_last = 12
keep_daily = 7
keep_within = "2d"
"#,
        )
        .expect("write");
        let c = load(Some(&p)).expect("load");
        assert_eq!(c.repo.as_deref(), Some("/var/backups/snapback"));
        assert_eq!(c.sources.len(), 1);
        assert_eq!(
            c.sources[0].retention.as_ref().and_then(|r| r.keep_daily),
            Some(7)
        );
        std::fs::write(&p, "repo = \"/x\"\nrepository = \"/typo\"\n").expect("write");
        let e = load(Some(&p)).expect_err("unknown key");
        assert!(format!("{e:#}").contains("repository"), "{e:#}");
        let _ = std::fs::remove_dir_all(d);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapback-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
