//! The repository a URI names, and its passphrase, as the CLI takes them.

use std::sync::Arc;

use snapback_core::{Error as CoreError, Passphrase};
use snapback_storage::{LocalStore, Store};

use crate::point::UriParams;
use crate::Error;

/// The store behind `repo=`: a local path or `file:///PATH`.
pub(crate) fn open(url: &str, _p: &UriParams) -> Result<Arc<dyn Store>, Error> {
    if url.starts_with("s3://") || url.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("s3:")) {
        return Err(Error::Input(format!(
            "repo={url}: S3 repositories are not supported by the VFS in this build; open a local repository (a path or file:///PATH)"
        )));
    }
    let path = match url.strip_prefix("file://") {
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) => {
            return Err(Error::Input(format!(
                "repo={url}: a file URL needs an absolute path, like file:///var/backups/repo"
            )))
        }
        None => url,
    };
    match LocalStore::open(path) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) if e.is_not_found() => Err(CoreError::NotARepository {
            location: path.to_string(),
        }
        .into()),
        Err(e) => Err(CoreError::Store(e).into()),
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
