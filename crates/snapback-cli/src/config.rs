//! `snapback.toml`: the repository, the sources with their tags and
//! retention, the cache, the heartbeat. Found at `--config`,
//! `SNAPBACK_CONFIG`, `./snapback.toml`,
//! `$XDG_CONFIG_HOME/snapback/snapback.toml` (default `~/.config`), then
//! `/etc/snapback/snapback.toml`: the first that is given or exists. Flags
//! override it.

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
    /// `status --max-rpo` for this source when the flag is not given,
    /// e.g. "30s".
    pub max_rpo: Option<String>,
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

/// The system-wide config file, the last place searched.
pub const SYSTEM_PATH: &str = "/etc/snapback/snapback.toml";

/// The variable naming the config file (as `--config`).
pub const ENV: &str = "SNAPBACK_CONFIG";

/// How the config file in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    /// `--config FILE`.
    Flag,
    /// `SNAPBACK_CONFIG`.
    Env,
    /// `./snapback.toml`.
    CurrentDir,
    /// `$XDG_CONFIG_HOME/snapback/snapback.toml` (default `~/.config`).
    User,
    /// `/etc/snapback/snapback.toml`.
    System,
}

impl FoundBy {
    pub fn describe(self) -> &'static str {
        match self {
            FoundBy::Flag => "--config",
            FoundBy::Env => "SNAPBACK_CONFIG",
            FoundBy::CurrentDir => "./snapback.toml in the current directory",
            FoundBy::User => "the user's config ($XDG_CONFIG_HOME/snapback/snapback.toml)",
            FoundBy::System => "the system-wide config (/etc/snapback/snapback.toml)",
        }
    }
}

/// Where the config comes from: the file and how it was found (None: no
/// file was given and none of the searched ones exists), and the places
/// searched, in order.
#[derive(Debug)]
pub struct Located {
    pub found: Option<(PathBuf, FoundBy)>,
    pub searched: Vec<PathBuf>,
}

/// Finds the config file. `--config` and `SNAPBACK_CONFIG` name a file that
/// must exist; the other places are used when they exist.
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<Located> {
    locate_in(explicit, |k| std::env::var_os(k), Path::new(SYSTEM_PATH))
}

fn locate_in(
    explicit: Option<&Path>,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    system: &Path,
) -> anyhow::Result<Located> {
    if let Some(p) = explicit {
        return Ok(Located {
            found: Some((crate::cli::absolute(p), FoundBy::Flag)),
            searched: vec![],
        });
    }
    if let Some(v) = var(ENV) {
        if v.is_empty() {
            anyhow::bail!("{ENV} is set but empty: unset it, or set it to the config file to use");
        }
        return Ok(Located {
            found: Some((crate::cli::absolute(Path::new(&v)), FoundBy::Env)),
            searched: vec![],
        });
    }
    // The XDG base directory rules: a relative XDG_CONFIG_HOME is ignored.
    let user_dir = var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            var("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".config"))
        });
    let mut candidates = vec![(
        crate::cli::absolute(Path::new("snapback.toml")),
        FoundBy::CurrentDir,
    )];
    if let Some(d) = user_dir {
        candidates.push((d.join("snapback").join("snapback.toml"), FoundBy::User));
    }
    candidates.push((system.to_path_buf(), FoundBy::System));
    let searched = candidates.iter().map(|(p, _)| p.clone()).collect();
    // Anything that exists counts, even if it cannot be read: a config
    // that is there but skipped would silently change what is backed up.
    let found = candidates
        .into_iter()
        .find(|(p, _)| std::fs::symlink_metadata(p).is_ok());
    Ok(Located { found, searched })
}

/// Loads the config file found by `locate` (an empty config when there is
/// none).
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    match locate(explicit)?.found {
        Some((path, by)) => load_file(&path, by),
        None => Ok(Config::default()),
    }
}

/// Reads and checks one config file.
pub fn load_file(path: &Path, by: FoundBy) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the config file {} (found as {}); fix it, or give --config FILE (--config /dev/null for none)",
            path.display(),
            by.describe()
        )
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_parses_and_rejects_unknown_keys() {
        // A directory of its own: removing the shared one raced with the
        // search-order test running beside it.
        let d = tempfile_dir().join("parse");
        std::fs::create_dir_all(&d).expect("mkdir");
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

    #[test]
    fn config_search_order_ends_at_the_system_wide_file() {
        let d = tempfile_dir().join("search");
        let _ = std::fs::remove_dir_all(&d);
        let xdg = d.join("xdg");
        let home = d.join("home");
        let system = d.join("etc/snapback/snapback.toml");
        let user = xdg.join("snapback/snapback.toml");
        let home_user = home.join(".config/snapback/snapback.toml");
        for f in [&system, &user, &home_user] {
            std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
            std::fs::write(f, "").expect("write");
        }
        // The tests run in the crate's directory, which has no snapback.toml.
        assert!(!Path::new("snapback.toml").exists());
        let vars = |pairs: Vec<(&'static str, PathBuf)>| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone().into_os_string())
            }
        };
        let found = |l: Located| l.found.expect("found");
        let l = locate_in(
            None,
            vars(vec![
                ("XDG_CONFIG_HOME", xdg.clone()),
                ("HOME", home.clone()),
            ]),
            &system,
        )
        .expect("locate");
        assert_eq!(l.searched.len(), 3);
        assert_eq!(found(l), (user.clone(), FoundBy::User));
        // No XDG_CONFIG_HOME (or a relative one): ~/.config.
        for x in [None, Some(PathBuf::from("relative/xdg"))] {
            let mut v = vec![("HOME", home.clone())];
            if let Some(x) = x {
                v.push(("XDG_CONFIG_HOME", x));
            }
            let l = locate_in(None, vars(v), &system).expect("locate");
            assert_eq!(found(l), (home_user.clone(), FoundBy::User));
        }
        std::fs::remove_file(&user).expect("rm");
        let l =
            locate_in(None, vars(vec![("XDG_CONFIG_HOME", xdg.clone())]), &system).expect("locate");
        assert_eq!(found(l), (system.clone(), FoundBy::System));
        std::fs::remove_file(&system).expect("rm");
        let l =
            locate_in(None, vars(vec![("XDG_CONFIG_HOME", xdg.clone())]), &system).expect("locate");
        assert!(l.found.is_none());
        assert_eq!(l.searched.last(), Some(&system));
        // SNAPBACK_CONFIG names a file that need not be searched for; empty
        // is refused; --config wins over it.
        let named = d.join("named.toml");
        let l = locate_in(None, vars(vec![(ENV, named.clone())]), &system).expect("env");
        assert_eq!(found(l), (named.clone(), FoundBy::Env));
        let e = locate_in(None, vars(vec![(ENV, PathBuf::new())]), &system).expect_err("empty");
        assert!(
            e.to_string().contains("SNAPBACK_CONFIG is set but empty"),
            "{e}"
        );
        let l = locate_in(Some(&user), vars(vec![(ENV, named)]), &system).expect("flag");
        assert_eq!(found(l), (user, FoundBy::Flag));
        let _ = std::fs::remove_dir_all(&d);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapback-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
