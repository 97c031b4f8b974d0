//! Chunk caches: a bounded in-memory LRU and an optional on-disk cache.
//!
//! Chunks are named by their id (SHA-256, or the keyed HMAC-SHA256 of an
//! encrypted repository), so a cache entry is either the right bytes or
//! detectably wrong. The memory cache holds chunks that were
//! verified when they were fetched. The disk cache is re-verified on every
//! read: an entry that no longer hashes to its name is deleted and counts as
//! a miss, so a damaged cache costs a refetch, never wrong bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use snapback_core::{BlobCodec, Id};

/// A least-recently-used map from chunk id to a value with a size, bounded
/// by the sum of the sizes.
#[derive(Debug)]
pub(crate) struct Lru<V> {
    entries: HashMap<Id, (V, u64, u64)>,
    order: BTreeMap<u64, Id>,
    tick: u64,
    bytes: u64,
    max_bytes: u64,
}

impl<V: Clone> Lru<V> {
    pub(crate) fn new(max_bytes: u64) -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            max_bytes,
        }
    }

    pub(crate) fn get(&mut self, id: &Id) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let (v, _, t) = self.entries.get_mut(id)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, *id);
        Some(v.clone())
    }

    pub(crate) fn contains(&self, id: &Id) -> bool {
        self.entries.contains_key(id)
    }

    /// Inserts and returns the entries evicted to make room. A value larger
    /// than the whole budget is not kept.
    pub(crate) fn insert(&mut self, id: Id, v: V, size: u64) -> Vec<(Id, V)> {
        let mut evicted = Vec::new();
        if size > self.max_bytes {
            return evicted;
        }
        if let Some((old, _)) = self.remove(&id) {
            drop(old);
        }
        while self.bytes + size > self.max_bytes {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if let Some((v, s, _)) = self.entries.remove(&victim) {
                self.bytes -= s;
                evicted.push((victim, v));
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, id);
        self.entries.insert(id, (v, size, self.tick));
        self.bytes += size;
        evicted
    }

    pub(crate) fn remove(&mut self, id: &Id) -> Option<(V, u64)> {
        let (v, s, t) = self.entries.remove(id)?;
        self.order.remove(&t);
        self.bytes -= s;
        Some((v, s))
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Chunks on local disk: `DIR/<xx>/<chunk id>`, bounded in bytes, least
/// recently used evicted first.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    index: Mutex<Lru<()>>,
    tmp_counter: AtomicU64,
    pub(crate) corrupt_entries: AtomicU64,
    /// Names chunks as the repository does (keyed when it is encrypted).
    codec: BlobCodec,
}

impl DiskCache {
    /// Opens (creating) a cache directory and indexes what it already holds,
    /// oldest first by modification time.
    /// The directory is private (0700): in an encrypted repository the
    /// cached chunks are decrypted content.
    pub(crate) fn open(dir: &Path, max_bytes: u64, codec: BlobCodec) -> std::io::Result<DiskCache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let private = make_private(dir, codec.is_encrypted())?;
        let mut found: Vec<(std::time::SystemTime, Id, u64)> = Vec::new();
        for sub in fs::read_dir(dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            if private {
                fs::set_permissions(sub.path(), fs::Permissions::from_mode(0o700))?;
            }
            for f in fs::read_dir(sub.path())? {
                let f = f?;
                let name = f.file_name();
                let Some(id) = name.to_str().and_then(Id::from_hex) else {
                    // Leftover temporary files of an interrupted write.
                    let _ = fs::remove_file(f.path());
                    continue;
                };
                let m = f.metadata()?;
                if private && m.permissions().mode() & 0o077 != 0 {
                    // An entry of an older version (0644): make it private.
                    fs::set_permissions(f.path(), fs::Permissions::from_mode(0o600))?;
                }
                found.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), id, m.len()));
            }
        }
        found.sort_by_key(|e| e.0);
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            index: Mutex::new(Lru::new(max_bytes)),
            tmp_counter: AtomicU64::new(0),
            corrupt_entries: AtomicU64::new(0),
            codec,
        };
        for (_, id, len) in found {
            cache.track(id, len);
        }
        Ok(cache)
    }

    fn path(&self, id: &Id) -> PathBuf {
        let h = id.to_hex();
        self.dir.join(&h[..2]).join(h)
    }

    fn track(&self, id: Id, len: u64) {
        let evicted = match self.index.lock() {
            Ok(mut i) => i.insert(id, (), len),
            Err(_) => return,
        };
        for (victim, ()) in evicted {
            let _ = fs::remove_file(self.path(&victim));
        }
    }

    /// The chunk, if cached and still intact.
    pub(crate) fn get(&self, id: &Id) -> Option<Vec<u8>> {
        let known = self.index.lock().ok()?.get(id).is_some();
        if !known {
            return None;
        }
        let p = self.path(id);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(_) => {
                if let Ok(mut i) = self.index.lock() {
                    i.remove(id);
                }
                return None;
            }
        };
        if self.codec.blob_id(&bytes) != *id {
            tracing::warn!(chunk = %id.short(), path = %p.display(), "disk cache entry does not match its hash; deleting it and fetching again");
            self.corrupt_entries.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(&p);
            if let Ok(mut i) = self.index.lock() {
                i.remove(id);
            }
            return None;
        }
        Some(bytes)
    }

    /// Stores a verified chunk: temp file, then rename, so a crash leaves
    /// either nothing or the whole entry.
    pub(crate) fn put(&self, id: &Id, bytes: &[u8]) {
        if self.index.lock().map(|i| i.contains(id)).unwrap_or(true) {
            return;
        }
        let p = self.path(id);
        let Some(parent) = p.parent() else { return };
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".tmp-{}-{n}", std::process::id()));
        let res = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .and_then(|_| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
            })
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|_| fs::rename(&tmp, &p));
        match res {
            Ok(()) => self.track(*id, bytes.len() as u64),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                tracing::warn!(chunk = %id.short(), error = %e, "cannot write to the disk cache");
            }
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.index.lock().map(|i| i.bytes()).unwrap_or(0)
    }
}

/// The effective user of this process (the owner of /proc/self).
fn current_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Makes the cache directory private: owned by this user, mode 0700.
/// Returns whether it is (then entries are kept 0600 in 0700 directories).
/// For an encrypted repository, whose cached chunks are decrypted content,
/// a directory that cannot be made private is an error: another user who
/// owns it could read them, whatever its mode (the owner can always chmod).
fn make_private(dir: &Path, encrypted: bool) -> std::io::Result<bool> {
    let refuse = |why: String| -> std::io::Result<bool> {
        if encrypted {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{why}; the cache of an encrypted repository holds decrypted data, so it must be private: use a directory of your own (or let the mount create one)"),
            ))
        } else {
            tracing::warn!(dir = %dir.display(), "{why}");
            Ok(false)
        }
    };
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return refuse("the disk cache path is not a directory".into());
    }
    match current_uid() {
        Some(uid) if uid == meta.uid() => {}
        Some(uid) => {
            return refuse(format!(
                "the disk cache directory is owned by uid {}, not by the mounting user (uid {uid})",
                meta.uid()
            ))
        }
        None => return refuse("cannot tell which user this process runs as (/proc/self)".into()),
    }
    if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
        return refuse(format!(
            "cannot make the disk cache directory private (0700): {e}"
        ));
    }
    Ok(true)
}

/// The in-memory chunk cache shared by all files of a mount.
pub(crate) type MemCache = Mutex<Lru<Arc<Vec<u8>>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn lru_evicts_least_recently_used_within_budget() {
        let mut l: Lru<u8> = Lru::new(10);
        assert!(l.insert(id(1), 1, 4).is_empty());
        assert!(l.insert(id(2), 2, 4).is_empty());
        assert_eq!(l.get(&id(1)), Some(1), "touch 1 so 2 is the oldest");
        let ev = l.insert(id(3), 3, 4);
        assert_eq!(ev, vec![(id(2), 2)]);
        assert_eq!(l.bytes(), 8);
        assert_eq!(l.get(&id(2)), None);
        assert!(l.insert(id(4), 4, 11).is_empty(), "too large is not kept");
        assert_eq!(l.get(&id(4)), None);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn disk_cache_reverifies_entries_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = b"chunk data".to_vec();
        let cid = Id::of(&data);
        {
            let c = DiskCache::open(dir.path(), 1 << 20, BlobCodec::plain(1)).expect("open");
            assert_eq!(c.get(&cid), None);
            c.put(&cid, &data);
            assert_eq!(c.get(&cid), Some(data.clone()));
        }
        let c = DiskCache::open(dir.path(), 1 << 20, BlobCodec::plain(1)).expect("reopen");
        assert_eq!(c.get(&cid), Some(data.clone()), "indexed on reopen");
        // Damage the entry: it must be detected, removed and reported as a miss.
        let h = cid.to_hex();
        let p = dir.path().join(&h[..2]).join(&h);
        fs::write(&p, b"chunk dat!").expect("damage");
        assert_eq!(c.get(&cid), None);
        assert!(!p.exists(), "a damaged entry is deleted");
        assert_eq!(c.corrupt_entries.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn private_cache_entries_are_0600_in_0700_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("cache");
        let data = b"secret page".to_vec();
        let cid = Id::of(&data);
        let c = DiskCache::open(&root, 1 << 20, BlobCodec::plain(1)).expect("open");
        c.put(&cid, &data);
        let h = cid.to_hex();
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(&h[..2])), 0o700);
        assert_eq!(mode(&root.join(&h[..2]).join(&h)), 0o600);
        // Entries left open by an older version are made private on open.
        fs::set_permissions(root.join(&h[..2]), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(
            root.join(&h[..2]).join(&h),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        drop(c);
        let c = DiskCache::open(&root, 1 << 20, BlobCodec::plain(1)).expect("reopen");
        assert_eq!(mode(&root.join(&h[..2])), 0o700);
        assert_eq!(mode(&root.join(&h[..2]).join(&h)), 0o600);
        assert_eq!(c.get(&cid), Some(data));
    }

    #[test]
    fn a_cache_dir_owned_by_another_user_is_refused_when_encrypted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = if current_uid() == Some(0) { 65534 } else { 0 };
        let status = std::process::Command::new("chown")
            .arg(other.to_string())
            .arg(dir.path())
            .status();
        if current_uid() == Some(0) {
            assert!(status.is_ok_and(|s| s.success()), "root can chown");
        } else {
            // Not root: find a directory owned by someone else instead.
            return assert!(make_private(Path::new("/"), true).is_err());
        }
        let e = make_private(dir.path(), true).expect_err("owned by another user");
        assert!(e.to_string().contains("not by the mounting user"), "{e}");
        assert_eq!(
            make_private(dir.path(), false).ok(),
            Some(false),
            "a warning only"
        );
    }

    #[test]
    fn disk_cache_stays_within_its_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = DiskCache::open(dir.path(), 25, BlobCodec::plain(1)).expect("open");
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        for ch in &chunks {
            c.put(&Id::of(ch), ch);
        }
        assert!(c.bytes() <= 25, "{}", c.bytes());
        assert_eq!(c.get(&Id::of(&chunks[0])), None, "oldest evicted");
        assert_eq!(c.get(&Id::of(&chunks[4])), Some(chunks[4].clone()));
    }
}
