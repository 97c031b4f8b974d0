//! The repository a URI names, and its passphrase, as the CLI takes them.

use std::sync::Arc;

use snapback_core::{Error as CoreError, Passphrase};
use snapback_s3::{parse_repo_url, RepoUrl, S3Config, S3Store};
use snapback_storage::{LocalStore, Store};

use crate::point::UriParams;
use crate::Error;

/// The store behind `repo=`, parsed as the CLI parses `--repo`
/// (`snapback_s3::parse_repo_url`): a local path, `file:///PATH` or
/// `s3://BUCKET/PREFIX`, with `s3_endpoint=URL` and `s3_path_style=1` for
/// what the CLI's `--s3-endpoint` and `--s3-path-style` say.
pub(crate) fn open(url: &str, p: &UriParams) -> Result<Arc<dyn Store>, Error> {
    match parse_repo_url(url).map_err(|e| Error::Input(format!("repo={url}: {e}")))? {
        RepoUrl::Local(path) => match LocalStore::open(&path) {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) if e.is_not_found() => Err(CoreError::NotARepository {
                location: path.display().to_string(),
            }
            .into()),
            Err(e) => Err(CoreError::Store(e).into()),
        },
        RepoUrl::S3 { .. } => {
            let mut cfg = S3Config::from_url(url).map_err(CoreError::Store)?;
            cfg.endpoint = p.s3_endpoint.clone().filter(|e| !e.is_empty());
            cfg.path_style = matches!(
                p.s3_path_style.as_deref().map(str::trim),
                Some("1" | "true" | "yes" | "on")
            );
            Ok(Arc::new(S3Store::open(cfg).map_err(CoreError::Store)?))
        }
    }
}

/// The passphrase of an encrypted repository: the first line of the file
/// SNAPBACK_PASSWORD_FILE names, else SNAPBACK_PASSWORD (one trailing line
/// ending dropped), as the CLI reads them. Asked only when the repository
/// is encrypted.
pub(crate) fn passphrase() -> snapback_core::Result<Passphrase> {
    if let Some(f) = std::env::var_os("SNAPBACK_PASSWORD_FILE") {
        let text = Passphrase::new(std::fs::read_to_string(&f).map_err(|e| {
            CoreError::Key(format!(
                "cannot read the passphrase file {} (SNAPBACK_PASSWORD_FILE): {e}",
                std::path::Path::new(&f).display()
            ))
        })?);
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(CoreError::Key(format!(
                "the passphrase file {} (SNAPBACK_PASSWORD_FILE) is empty",
                std::path::Path::new(&f).display()
            )));
        }
        return Ok(Passphrase::new(line.to_string()));
    }
    match std::env::var("SNAPBACK_PASSWORD") {
        Ok(v) => {
            let v = Passphrase::new(v);
            let t = v
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&v);
            if t.is_empty() {
                return Err(CoreError::Key("SNAPBACK_PASSWORD is set but empty".into()));
            }
            Ok(Passphrase::new(t.to_string()))
        }
        Err(_) => Err(CoreError::Key(
            "the repository is encrypted: set SNAPBACK_PASSWORD (or SNAPBACK_PASSWORD_FILE) in the environment of the process that opens the point".into(),
        )),
    }
}
