//! Turning `--repo` into a store.

use std::sync::Arc;

use anyhow::{bail, Context};
use snapback_core::Repository;
use snapback_storage::{LocalStore, Store};

use crate::cli::Global;

pub use snapback_s3::RepoUrl;

/// `--repo` parsed: snapback-s3's `parse_repo_url`, the one parser of
/// repository URLs (the VFS's `repo=` uses it too).
pub fn parse(url: &str) -> anyhow::Result<RepoUrl> {
    snapback_s3::parse_repo_url(url).map_err(anyhow::Error::msg)
}

fn repo_arg(g: &Global) -> anyhow::Result<&str> {
    g.repo.as_deref().ok_or_else(|| {
        crate::Usage(
            "no repository given: give it in one of three ways: --repo PATH (or s3://BUCKET/PREFIX), the SNAPBACK_REPO environment variable, or `repo = \"PATH\"` in the config file (`snapback config` shows which config file is read)".into(),
        )
        .into()
    })
}

/// Opens the store behind `--repo`. `create` makes a missing local directory.
pub fn open_store(g: &Global, create: bool) -> anyhow::Result<Arc<dyn Store>> {
    let url = repo_arg(g)?;
    match parse(url)? {
        RepoUrl::Local(p) => {
            let s = if create {
                LocalStore::create(&p)
            } else {
                LocalStore::open(&p)
            };
            let s = match s {
                // No directory is no repository (exit 10), as no config is.
                Err(e) if e.is_not_found() && !create => {
                    return Err(snapback_core::Error::NotARepository {
                        location: p.display().to_string(),
                    }
                    .into())
                }
                s => s.with_context(|| format!("cannot open the repository at {}", p.display()))?,
            };
            Ok(Arc::new(s))
        }
        RepoUrl::S3 { .. } => {
            let mut cfg = snapback_s3::S3Config::from_url(url)?;
            cfg.endpoint = g.s3_endpoint.clone();
            cfg.path_style = g.s3_path_style;
            let store = snapback_s3::S3Store::open(cfg)?;
            if create {
                store
                    .check_bucket()
                    .with_context(|| format!("cannot use {url}"))?;
            }
            Ok(Arc::new(store))
        }
    }
}

/// True when the repository's config says it is encrypted.
pub fn is_encrypted(g: &Global) -> anyhow::Result<bool> {
    let store = open_store(g, false)?;
    let config = Repository::read_config(store.as_ref())
        .with_context(|| format!("cannot read the repository config at {}", store.location()))?;
    Ok(config.encryption.is_some())
}

pub fn open_repo(g: &Global) -> anyhow::Result<Repository> {
    let store = open_store(g, false)?;
    let repo = match Repository::open_with_passphrase(store, || {
        crate::password::current(g).map_err(|e| snapback_core::Error::Key(format!("{e:#}")))
    }) {
        Ok(r) => r,
        Err(e @ snapback_core::Error::NotARepository { .. }) => return Err(no_repository(g, e)),
        Err(e) => return Err(e.into()),
    };
    // A job that gives a passphrase expects an encrypted repository. If the
    // config says otherwise, it may have been replaced (and keys/ deleted)
    // to make this job write plaintext: refuse.
    if crate::password::given(g) && !repo.is_encrypted() {
        bail!(
            "a passphrase was given (--password-file, SNAPBACK_PASSWORD_FILE or SNAPBACK_PASSWORD), but the repository at {} is not encrypted. If it was created with --encrypt, its config has been replaced: do not write to it, and restore the original config. If it is meant to be unencrypted, unset the passphrase",
            repo.store().location()
        );
    }
    // A remote repository keeps local copies of its manifests and indexes
    // (immutable and verified by name on every read).
    let remote = matches!(parse(repo_arg(g)?)?, RepoUrl::S3 { .. });
    Ok(match metadata_cache_root() {
        Some(dir) if remote => repo.with_cache_dir(dir),
        _ => repo,
    })
}

/// No config object. On S3, "create one with `snapback init`" is only
/// right when the bucket exists (init does not create buckets): ask.
fn no_repository(g: &Global, e: snapback_core::Error) -> anyhow::Error {
    let Some(url) = g.repo.as_deref() else {
        return e.into();
    };
    if !matches!(parse(url), Ok(RepoUrl::S3 { .. })) {
        return e.into();
    }
    let probe = snapback_s3::S3Config::from_url(url).and_then(|mut cfg| {
        cfg.endpoint = g.s3_endpoint.clone();
        cfg.path_style = g.s3_path_style;
        snapback_s3::S3Store::open(cfg)?.check_bucket()
    });
    match probe {
        Ok(()) => e.into(),
        Err(b) => anyhow::Error::new(b).context(crate::Kinded(
            snapback_core::Kind::NoRepository,
            format!(
                "no snapback repository at {url}, and its bucket cannot be used (`snapback init` does not create buckets: create the bucket first, or fix --repo / --s3-endpoint)"
            ),
        )),
    }
}

/// Where local capture state lives (what the previous capture of each
/// database knew, so the next reads only what changed):
/// `$XDG_STATE_HOME/snapback` (an absolute one), else
/// `~/.local/state/snapback`.
pub fn capture_state_root() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
        })?;
    Some(base.join("snapback"))
}

fn metadata_cache_root() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("snapback"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_s3_urls_are_refused_not_taken_as_local_paths() {
        for bad in [
            "s3:/bucket1/p",
            "s3:bucket1/p",
            "S3://bucket1/p",
            "s3:///bucket1/p",
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            if bad == "s3:///bucket1/p" {
                // Two slashes then an empty bucket: the S3 parser refuses it.
                continue;
            }
            assert!(
                e.contains("s3://BUCKET/PREFIX") && e.contains("s3://bucket1/p"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            parse("./s3:odd").expect("an explicit local path"),
            RepoUrl::Local("./s3:odd".into())
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse("/var/repo").expect("path"),
            RepoUrl::Local("/var/repo".into())
        );
        assert_eq!(
            parse("file:///var/repo").expect("file"),
            RepoUrl::Local("/var/repo".into())
        );
        assert_eq!(
            parse("s3://bucket/p/q/").expect("s3"),
            RepoUrl::S3 {
                bucket: "bucket".into(),
                prefix: "p/q".into()
            }
        );
        assert!(parse("s3:///x").is_err());
        assert!(parse("ftp://x").is_err());
        assert!(parse("file://relative").is_err());
        assert!(parse("").is_err());
    }
}
