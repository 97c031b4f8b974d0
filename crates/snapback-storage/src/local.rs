use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{validate_key, ErrorKind, ObjectInfo, PutOutcome, Store, StoreError};

/// Temporary files live here, inside the store, so that the final rename or
/// link never crosses a file system. Listing never looks inside it.
const TMP_DIR: &str = "tmp";

/// A store in a local directory.
///
/// Writes go to a temporary file that is fsync'd, then hard-linked to the
/// final name (which fails if the name exists: put-if-absent without a race),
/// then the directory is fsync'd. Files are created 0600 and directories 0700.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    counter: AtomicU64,
}

impl LocalStore {
    /// Opens the store rooted at `root`, which must exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let meta = fs::metadata(&root).map_err(|e| {
            StoreError::from_io(
                "",
                &format!("cannot open repository directory {}", root.display()),
                e,
            )
        })?;
        if !meta.is_dir() {
            return Err(StoreError::new(
                ErrorKind::Other,
                "",
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(LocalStore {
            root,
            counter: AtomicU64::new(0),
        })
    }

    /// Creates `root` (0700) if needed and opens it.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| {
                StoreError::from_io("", &format!("cannot create {}", root.display()), e)
            })?;
        Self::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn ensure_dir(&self, dir: &Path, key: &str) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        // Create each missing level and fsync its parent, so that the new
        // directory entry itself survives a crash.
        let mut missing = vec![];
        let mut d = dir;
        while !d.is_dir() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for m in missing.iter().rev() {
            match fs::DirBuilder::new().mode(0o700).create(m) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::from_io(key, "cannot create directory", e)),
            }
            if let Some(p) = m.parent() {
                sync_dir(p, key)?;
            }
        }
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.root
            .join(TMP_DIR)
            .join(format!("{}-{}-{}.tmp", std::process::id(), n, nanos))
    }
}

fn sync_dir(dir: &Path, key: &str) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| {
        StoreError::from_io(key, &format!("cannot fsync directory {}", dir.display()), e)
    })
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let dest = self.path(key)?;
        if dest.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let tmp = self.tmp_path();
        if let Some(dir) = tmp.parent() {
            self.ensure_dir(dir, key)?;
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::from_io(key, "cannot write object", e));
        }
        let parent = dest.parent().unwrap_or(&self.root).to_path_buf();
        let linked =
            self.ensure_dir(&parent, key)
                .and_then(|()| match fs::hard_link(&tmp, &dest) {
                    Ok(()) => Ok(PutOutcome::Created),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Ok(PutOutcome::AlreadyExists)
                    }
                    Err(e) => Err(StoreError::from_io(key, "cannot link object into place", e)),
                });
        let _ = fs::remove_file(&tmp);
        let outcome = linked?;
        sync_dir(&parent, key)?;
        Ok(outcome)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.path(key)?;
        fs::read(&p).map_err(|e| StoreError::from_io(key, "cannot read object", e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let p = self.path(key)?;
        let mut f =
            File::open(&p).map_err(|e| StoreError::from_io(key, "cannot open object", e))?;
        let size = f
            .metadata()
            .map_err(|e| StoreError::from_io(key, "cannot stat object", e))?
            .len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                key,
                format!("range {offset}+{len} is past the end of the object ({size} bytes)"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| StoreError::from_io(key, "cannot read object range", e))?;
        Ok(buf)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let p = self.path(key)?;
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::from_io(key, "cannot stat object", e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // Walk the deepest directory that the prefix names completely, and
        // filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::from_io(prefix, "cannot list directory", e)),
            };
            for ent in rd {
                let ent =
                    ent.map_err(|e| StoreError::from_io(prefix, "cannot list directory", e))?;
                let name = ent.file_name();
                let Some(name) = name.to_str() else { continue };
                let key = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                if rel.is_empty() && name == TMP_DIR {
                    continue;
                }
                let ft = ent
                    .file_type()
                    .map_err(|e| StoreError::from_io(&key, "cannot stat", e))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || prefix.is_empty()
                    {
                        stack.push((ent.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let (size, modified) = match ent.metadata() {
                        Ok(m) => (m.len(), m.modified().ok()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(StoreError::from_io(&key, "cannot stat", e)),
                    };
                    out.push(ObjectInfo {
                        key,
                        size,
                        modified,
                    });
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(parent) = p.parent() {
                    sync_dir(parent, key)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io(key, "cannot delete object", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn local_store_passes_conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::create(dir.path().join("repo")).expect("create");
        crate::conformance::run_all(&store);
    }

    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::create(dir.path().join("repo")).expect("create");
        store.put_if_absent("data/ab/abc", b"x").expect("put");
        let f = fs::metadata(dir.path().join("repo/data/ab/abc")).expect("stat");
        assert_eq!(f.permissions().mode() & 0o777, 0o600);
        let d = fs::metadata(dir.path().join("repo/data/ab")).expect("stat");
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn temporary_files_are_never_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::create(dir.path().join("repo")).expect("create");
        fs::create_dir_all(dir.path().join("repo/tmp")).expect("mkdir");
        fs::write(dir.path().join("repo/tmp/1-2-3.tmp"), b"partial").expect("write");
        store.put_if_absent("data/x", b"x").expect("put");
        let keys: Vec<_> = store
            .list("")
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["data/x".to_string()]);
    }
}
