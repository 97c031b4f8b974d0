use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{validate_key, ErrorKind, ObjectInfo, PutOutcome, Store, StoreError, Tuning};

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

/// Objects at least this large (a pack) are written with direct I/O where
/// the file system takes it; smaller ones (indexes, manifests, locks)
/// through the page cache.
const DIRECT_MIN: usize = 1 << 20;
/// The alignment of memory, file offset and length that direct writes
/// need: the page size, which covers disks of 512- and 4096-byte blocks.
const DIRECT_ALIGN: usize = 4096;
/// Bytes copied into the aligned buffer per direct write.
const DIRECT_STEP: usize = 1 << 20;

thread_local! {
    // The aligned buffer direct writes go through (one per upload thread,
    // `DIRECT_STEP` bytes past its alignment offset, reused).
    static BOUNCE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `data` into the new file `tmp` and fsyncs it. A large object's
/// whole aligned blocks go past the page cache (`O_DIRECT`, through a
/// reused aligned buffer): a pack is written once and not read back by
/// the snapshot that wrote it, and copying it into the page cache (then
/// writing back the dirty pages at the fsync) cost more CPU time than
/// compressing a tenth of it. The tail that is not a whole block, and
/// every object where the file system refuses direct I/O, go through the
/// page cache. Either way the file is fsync'd before it is linked into
/// place, and the store's caller checks its size (`put_verified`).
fn write_object(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    let direct_len = if data.len() >= DIRECT_MIN {
        write_direct(tmp, &data[..data.len() / DIRECT_ALIGN * DIRECT_ALIGN])
    } else {
        0
    };
    f.seek(SeekFrom::Start(direct_len as u64))?;
    f.write_all(&data[direct_len..])?;
    f.sync_all()
}

/// Writes `data` (whole aligned blocks) at the start of `path` through an
/// `O_DIRECT` handle; returns how many bytes it wrote from the start: all
/// of them, or fewer where direct I/O is refused (opening the handle or a
/// write fails, with EINVAL on tmpfs): the caller writes the rest through
/// the page cache, where a failing disk fails again and is reported.
fn write_direct(path: &Path, data: &[u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let Ok(d) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    else {
        return 0;
    };
    BOUNCE.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < DIRECT_STEP + DIRECT_ALIGN {
            b.resize(DIRECT_STEP + DIRECT_ALIGN, 0);
        }
        let at = b.as_ptr().align_offset(DIRECT_ALIGN);
        let Some(buf) = b.get_mut(at..at + DIRECT_STEP) else {
            return 0;
        };
        let mut done = 0;
        for piece in data.chunks(DIRECT_STEP) {
            let out = &mut buf[..piece.len()];
            out.copy_from_slice(piece);
            if d.write_all_at(out, done as u64).is_err() {
                // Refused (or failed) part way: the caller writes from
                // here through the page cache, and a disk that fails
                // fails there too.
                return done;
            }
            done += piece.len();
        }
        done
    })
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

    /// One writer: a pack is written (past the page cache,
    /// `write_direct`) and fsync'd several times faster than a snapshot
    /// fills the next, and each writer holds its pack in memory.
    fn tuning(&self) -> Tuning {
        Tuning {
            write_parallelism: 1,
            ..Tuning::default()
        }
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
        if let Err(e) = write_object(&tmp, data) {
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

    /// Large objects of every awkward length (whole blocks, a tail, one
    /// byte past a step) land byte for byte, whether the directory takes
    /// direct I/O (the test's temporary directory, on disk) or refuses it
    /// (tmpfs, where they go through the page cache).
    #[test]
    fn large_objects_written_past_the_page_cache_read_back_byte_for_byte() {
        let lens = [
            DIRECT_MIN,
            DIRECT_MIN + 1,
            DIRECT_MIN + DIRECT_ALIGN - 1,
            3 * DIRECT_STEP + 17,
            16 << 20,
        ];
        let mut roots = vec![tempfile::tempdir().expect("tempdir")];
        if Path::new("/dev/shm").is_dir() {
            roots.push(tempfile::tempdir_in("/dev/shm").expect("tmpfs dir"));
        }
        for root in &roots {
            let store = LocalStore::create(root.path().join("repo")).expect("create");
            for (i, &len) in lens.iter().enumerate() {
                let data: Vec<u8> = (0..len)
                    .map(|j| {
                        (j as u32)
                            .wrapping_mul(2_654_435_761)
                            .rotate_left(i as u32 + 7) as u8
                    })
                    .collect();
                let key = format!("data/{i:02}/obj");
                store.put_if_absent(&key, &data).expect("put");
                assert_eq!(store.stat(&key).expect("stat"), Some(len as u64));
                assert!(
                    store.get(&key).expect("get") == data,
                    "object of {len} bytes under {} changed",
                    root.path().display()
                );
                let mid = len as u64 / 2;
                assert_eq!(
                    store.get_range(&key, mid, 4099).expect("range"),
                    data[mid as usize..mid as usize + 4099]
                );
            }
        }
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
