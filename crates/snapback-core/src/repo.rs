//! The repository: the store plus the format's rules for reading it.
//!
//! Layout of keys:
//! ```text
//! config                     RepoConfig (JSON), written once
//! data/<xx>/<pack id>        packs
//! index/<index id>           index objects
//! snapshots/<snapshot id>    manifests (JSON), the commit records
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use snapback_storage::{PutOutcome, Store};
use time::OffsetDateTime;

use crate::chunklist::{self, ChunkRef};
use crate::config::{ChunkingParams, RepoConfig, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{decode_index, MasterIndex};
use crate::manifest::{FileEntry, Manifest};
use crate::pack::{open_blob, BlobKind};

pub const CONFIG_KEY: &str = "config";
pub const SNAPSHOT_PREFIX: &str = "snapshots/";
pub const INDEX_PREFIX: &str = "index/";
pub const DATA_PREFIX: &str = "data/";

pub fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

pub fn pack_id_from_key(key: &str) -> Option<Id> {
    let rest = key.strip_prefix(DATA_PREFIX)?;
    let (dir, name) = rest.split_once('/')?;
    let id = Id::from_hex(name)?;
    (dir == &name[..2]).then_some(id)
}

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunking: ChunkingParams,
    pub compression_level: i32,
    pub pack_target_size: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunking: ChunkingParams::default(),
            compression_level: 1,
            pack_target_size: 16 << 20,
        }
    }
}

/// A committed snapshot: its id and manifest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: Id,
    pub time: OffsetDateTime,
    pub manifest: Arc<Manifest>,
}

impl Snapshot {
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| f.path == path)
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
            return Ok(Selector::Id(lower));
        }
        Err(Error::Selector(format!(
            "invalid snapshot selector '{s}': use a snapshot id or a unique prefix of it, 'latest', or '@TIME' (RFC 3339, e.g. @2026-02-02T17:17:00Z)"
        )))
    }
}

/// An open repository.
#[derive(Debug)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
    index: RwLock<Option<Arc<MasterIndex>>>,
    manifests: Mutex<HashMap<Id, Arc<Manifest>>>,
    /// Local copies of immutable, content-named objects (manifests and
    /// indexes), so that a command against a remote store does not fetch
    /// every one of them again.
    cache_dir: Option<std::path::PathBuf>,
    /// Manifests skipped as damaged by the last listing, with the reason.
    skipped: Mutex<HashMap<Id, String>>,
}

impl Repository {
    /// Creates a new repository in an empty store.
    pub fn init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<Repository> {
        let config = RepoConfig {
            format_version: FORMAT_VERSION,
            repo_id: random_hex(16),
            created: crate::time::format_rfc3339(crate::time::now()),
            chunking: opts.chunking.clone(),
            compression_level: opts.compression_level,
            pack_target_size: opts.pack_target_size,
        };
        config
            .validate()
            .map_err(|e| Error::Invalid(format!("invalid repository settings: {e}")))?;
        let bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        match store.put_if_absent(CONFIG_KEY, &bytes)? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => {
                return Err(Error::AlreadyInitialised {
                    location: store.location(),
                })
            }
        }
        if store.stat(CONFIG_KEY)? != Some(bytes.len() as u64) {
            return Err(Error::Verification(format!(
                "the repository config at {} was not stored intact; check the store and run init again",
                store.location()
            )));
        }
        Ok(Repository::with_config(store, config))
    }

    /// Opens an existing repository.
    pub fn open(store: Arc<dyn Store>) -> Result<Repository> {
        let bytes = match store.get(CONFIG_KEY) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotARepository {
                    location: store.location(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let config = RepoConfig::parse(&bytes)?;
        Ok(Repository::with_config(store, config))
    }

    fn with_config(store: Arc<dyn Store>, config: RepoConfig) -> Repository {
        Repository {
            store,
            config,
            index: RwLock::new(None),
            manifests: Mutex::new(HashMap::new()),
            cache_dir: None,
            skipped: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps local copies of manifests and indexes under
    /// `dir/<repo id>/`. Every copy is verified against its name (its
    /// SHA-256) when it is read, so a damaged cache is never trusted.
    pub fn with_cache_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Repository {
        self.cache_dir = Some(dir.into().join(&self.config.repo_id));
        self
    }

    /// Reads a content-named object, from the cache when it holds a copy
    /// that hashes to the name; verifies the name either way.
    fn get_immutable(&self, key: &str, prefix: &str) -> Result<Vec<u8>> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(key));
        if let Some(p) = &cached {
            if let Ok(b) = std::fs::read(p) {
                if verify_name(key, prefix, &b).is_ok() {
                    return Ok(b);
                }
                tracing::warn!(path = %p.display(), "ignoring a damaged cache entry");
            }
        }
        let bytes = self.store.get(key)?;
        verify_name(key, prefix, &bytes)?;
        if let Some(p) = cached {
            let write = || -> std::io::Result<()> {
                if let Some(dir) = p.parent() {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                }
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &p)
            };
            if let Err(e) = write() {
                tracing::debug!(path = %p.display(), error = %e, "cannot write the metadata cache");
            }
        }
        Ok(bytes)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The master index, loaded on first use.
    pub fn index(&self) -> Result<Arc<MasterIndex>> {
        if let Some(i) = self.index.read().map_err(|_| poisoned())?.as_ref() {
            return Ok(i.clone());
        }
        self.refresh_index()
    }

    /// Forgets the loaded index and reads every index object again.
    pub fn refresh_index_from_scratch(&self) -> Result<Arc<MasterIndex>> {
        *self.index.write().map_err(|_| poisoned())? = None;
        self.refresh_index()
    }

    /// Loads index objects that appeared since the last load.
    pub fn refresh_index(&self) -> Result<Arc<MasterIndex>> {
        let mut guard = self.index.write().map_err(|_| poisoned())?;
        let mut idx = guard.as_deref().cloned().unwrap_or_default();
        let mut keys: Vec<String> = self
            .store
            .list(INDEX_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        let known: std::collections::HashSet<String> = idx.index_keys.iter().cloned().collect();
        for key in keys.into_iter().filter(|k| !known.contains(k)) {
            let bytes = self.get_immutable(&key, INDEX_PREFIX)?;
            for p in decode_index(&bytes, &key)? {
                idx.insert_pack(&p);
            }
            idx.index_keys.push(key);
        }
        let idx = Arc::new(idx);
        *guard = Some(idx.clone());
        Ok(idx)
    }

    /// Every committed snapshot, oldest first. Manifests are cached, so a
    /// second call reads only new ones.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.load_snapshots(false)
    }

    /// Like `snapshots`, but a manifest that cannot be read is an error
    /// instead of a warning. Prune uses it: treating a damaged manifest's
    /// data as unreferenced would delete what a repair could still save.
    pub fn snapshots_strict(&self) -> Result<Vec<Snapshot>> {
        self.load_snapshots(true)
    }

    /// Every committed snapshot, oldest first. A damaged manifest is
    /// skipped with a warning (`check` reports it), unless `strict`.
    fn load_snapshots(&self, strict: bool) -> Result<Vec<Snapshot>> {
        let listing = self.store.list(SNAPSHOT_PREFIX)?;
        let mut out = Vec::with_capacity(listing.len());
        for o in listing {
            let Some(id) = o.key.strip_prefix(SNAPSHOT_PREFIX).and_then(Id::from_hex) else {
                tracing::warn!(key = %o.key, "ignoring an object that is not named like a snapshot");
                continue;
            };
            let cached = self
                .manifests
                .lock()
                .map_err(|_| poisoned())?
                .get(&id)
                .cloned();
            let manifest = match cached {
                Some(m) => m,
                None => {
                    let m = match self.load_manifest(&id) {
                        Ok(m) => Arc::new(m),
                        // A damaged manifest is skipped (check names it); one
                        // from a newer snapback is not: an upgrade is needed.
                        Err(e @ Error::Corrupt { .. }) if !strict => {
                            tracing::warn!(key = %o.key, error = %e, "skipping a snapshot whose manifest cannot be read; run `snapback check`");
                            self.skipped
                                .lock()
                                .map_err(|_| poisoned())?
                                .insert(id, e.to_string());
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    self.manifests
                        .lock()
                        .map_err(|_| poisoned())?
                        .insert(id, m.clone());
                    m
                }
            };
            let time = match crate::time::parse_rfc3339(&manifest.time) {
                Ok(t) => t,
                Err(e) if strict => return Err(Error::corrupt(o.key.clone(), e)),
                Err(_) => continue,
            };
            out.push(Snapshot { id, time, manifest });
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub fn load_manifest(&self, id: &Id) -> Result<Manifest> {
        let key = format!("{SNAPSHOT_PREFIX}{id}");
        let bytes = self.get_immutable(&key, SNAPSHOT_PREFIX)?;
        Manifest::parse(&bytes, &key)
    }

    /// Resolves a selector among the snapshots that `filter` accepts.
    pub fn resolve(&self, sel: &Selector, filter: impl Fn(&Snapshot) -> bool) -> Result<Snapshot> {
        let all = self.snapshots()?;
        let r = resolve_in(&all, sel, filter);
        // An id that names a damaged manifest gets the damage, not "no such id".
        if let (Err(_), Selector::Id(prefix)) = (&r, sel) {
            let skipped = self.skipped.lock().map_err(|_| poisoned())?;
            if let Some((id, why)) = skipped
                .iter()
                .find(|(id, _)| id.to_hex().starts_with(prefix.as_str()))
            {
                return Err(Error::corrupt(
                    format!("snapshot {}", id.short()),
                    why.clone(),
                ));
            }
        }
        r
    }

    /// Reads one blob: a range read from its pack, decompressed and verified.
    pub fn read_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| {
            Error::corrupt(
                format!("blob {}", id.short()),
                "is not in any index (run `snapback check`)",
            )
        })?;
        let key = pack_key(&loc.pack);
        let stored = self
            .store
            .get_range(&key, loc.offset as u64, loc.stored_len as u64)?;
        open_blob(id, &stored, loc.raw_len, &key)
    }

    /// The full chunk list of a file.
    pub fn chunk_list(&self, index: &MasterIndex, file: &FileEntry) -> Result<Vec<ChunkRef>> {
        let base = self.base_list(index, &file.chunks.base, &file.path)?;
        let place = format!("chunk list of {}", file.path);
        let patch = match &file.chunks.patch {
            Some(p) => chunklist::decode_patch(&self.read_list_blob(index, p)?, &place)?,
            None => vec![],
        };
        chunklist::apply_patch(base, &patch, file.chunks.count, &place)
    }

    pub(crate) fn base_list(
        &self,
        index: &MasterIndex,
        parts: &[Id],
        path: &str,
    ) -> Result<Vec<ChunkRef>> {
        let place = format!("chunk list of {path}");
        let mut out = Vec::new();
        for p in parts {
            out.extend(chunklist::decode_part(
                &self.read_list_blob(index, p)?,
                &place,
            )?);
        }
        Ok(out)
    }

    fn read_list_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        if let Some(loc) = index.get(id) {
            if loc.kind != BlobKind::ChunkList {
                return Err(Error::corrupt(
                    format!("blob {}", id.short()),
                    "is not a chunk list",
                ));
            }
        }
        self.read_blob(index, id)
    }

    /// Random access to one file of a snapshot.
    pub fn file_reader(&self, file: &FileEntry) -> Result<FileReader> {
        let index = self.index()?;
        let chunks = self.chunk_list(&index, file)?;
        let mut offsets = Vec::with_capacity(chunks.len() + 1);
        let mut off = 0u64;
        for c in &chunks {
            offsets.push(off);
            off += c.len as u64;
        }
        if off != file.size {
            return Err(Error::corrupt(
                format!("chunk list of {}", file.path),
                format!("chunks add up to {off} bytes, the file has {}", file.size),
            ));
        }
        offsets.push(off);
        Ok(FileReader {
            chunks,
            offsets,
            index,
        })
    }
}

/// The chunk layout of one file, for reads at any offset.
#[derive(Debug, Clone)]
pub struct FileReader {
    pub chunks: Vec<ChunkRef>,
    /// offsets[i] is where chunk i starts; the last element is the size.
    pub offsets: Vec<u64>,
    pub index: Arc<MasterIndex>,
}

impl FileReader {
    pub fn size(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// The chunk that holds byte `offset`, if any.
    pub fn chunk_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.size() {
            return None;
        }
        Some(self.offsets.partition_point(|&o| o <= offset) - 1)
    }
}

pub(crate) fn resolve_in(
    all: &[Snapshot],
    sel: &Selector,
    filter: impl Fn(&Snapshot) -> bool,
) -> Result<Snapshot> {
    let cands: Vec<&Snapshot> = all.iter().filter(|s| filter(s)).collect();
    match sel {
        Selector::Latest => cands
            .last()
            .map(|s| (*s).clone())
            .ok_or_else(|| Error::Selector("there are no snapshots (for this selection) yet; take one with `snapback snapshot PATH`".into())),
        Selector::At(t) => cands.iter().rev().find(|s| s.time <= *t).map(|s| (*s).clone()).ok_or_else(|| {
            let first = cands.first().map(|s| format!("; the oldest is {}", s.describe())).unwrap_or_default();
            Error::Selector(format!("no snapshot was taken at or before {}{first}", crate::time::format_rfc3339(*t)))
        }),
        Selector::Id(prefix) => {
            let m: Vec<&&Snapshot> = cands.iter().filter(|s| s.id.to_hex().starts_with(prefix.as_str())).collect();
            match m.len() {
                1 => Ok((*m[0]).clone()),
                0 => Err(Error::Selector(format!("no snapshot id starts with '{prefix}'; list them with `snapback snapshots`"))),
                n => Err(Error::Selector(format!(
                    "snapshot prefix '{prefix}' is ambiguous: it matches {n} snapshots ({}); give more digits",
                    m.iter().take(5).map(|s| s.describe()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

fn verify_name(key: &str, prefix: &str, bytes: &[u8]) -> Result<()> {
    let name = &key[prefix.len()..];
    let got = Id::of(bytes);
    if got.to_hex() != name {
        return Err(Error::corrupt(
            key,
            format!("content hashes to {}, not to its name", got.short()),
        ));
    }
    Ok(())
}

fn poisoned() -> Error {
    Error::Invalid("internal lock poisoned by an earlier panic".into())
}

pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if f.read_exact(&mut b).is_ok() {
            return hex::encode(b);
        }
    }
    let t = crate::time::now().unix_timestamp_nanos();
    Id::of(format!("{t}-{}", std::process::id()).as_bytes()).to_hex()[..n * 2].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(hex_prefix: &str, t: &str) -> Snapshot {
        let mut id = [0u8; 32];
        hex::decode_to_slice(format!("{hex_prefix:0<64}"), &mut id).expect("hex");
        Snapshot {
            id: Id(id),
            time: crate::time::parse_rfc3339(t).expect("time"),
            manifest: Arc::new(Manifest {
                format_version: 1,
                time: t.into(),
                host: "h".into(),
                tags: vec![],
                paths: vec![],
                files: vec![],
                stats: Default::default(),
            }),
        }
    }

    #[test]
    fn selectors_resolve_around_exact_times() {
        let all = vec![
            snap("aaaa11", "2026-02-02T17:00:00Z"),
            snap("aaaa22", "2026-02-02T17:17:00Z"),
            snap("bbbb33", "2026-02-02T17:30:00Z"),
        ];
        let r = |s: &str| {
            resolve_in(&all, &s.parse().expect("selector"), |_| true).map(|s| s.id.short())
        };
        assert_eq!(r("latest").expect("latest"), "bbbb3300");
        assert_eq!(r("@2026-02-02T17:17:00Z").expect("exact"), "aaaa2200");
        assert_eq!(
            r("@2026-02-02T17:16:59.999Z").expect("just before"),
            "aaaa1100"
        );
        assert_eq!(r("@2026-02-02T18:17:00+01:00").expect("offset"), "aaaa2200");
        assert!(
            r("@2026-02-02T16:59:59Z").is_err(),
            "before the first snapshot"
        );
        assert_eq!(r("bbbb").expect("prefix"), "bbbb3300");
        let e = r("aaaa").expect_err("ambiguous");
        assert!(e.to_string().contains("ambiguous"), "{e}");
        assert!(r("cccc").is_err());
        assert!("zz".parse::<Selector>().is_err());
        assert!("@yesterday".parse::<Selector>().is_err());
    }

    #[test]
    fn metadata_cache_is_used_and_verified() {
        use snapback_storage::LocalStore;
        let d = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::create(d.path().join("repo")).expect("store"));
        let repo = Repository::init(store.clone(), &InitOptions::default()).expect("init");
        let f = d.path().join("f.txt");
        std::fs::write(&f, b"hello").expect("write");
        let r = repo
            .snapshot(&[f], &crate::SnapshotOptions::default(), &crate::NoProgress)
            .expect("snapshot");
        let cached = Repository::open(store)
            .expect("open")
            .with_cache_dir(d.path().join("cache"));
        let m = cached.load_manifest(&r.id).expect("load");
        assert_eq!(m, r.manifest);
        let copy = d
            .path()
            .join("cache")
            .join(&cached.config().repo_id)
            .join(format!("snapshots/{}", r.id));
        assert!(copy.exists(), "the manifest was cached");
        // A damaged cache entry is never trusted: the store's copy is used.
        std::fs::write(&copy, b"{\"format_version\": 1}").expect("damage");
        assert_eq!(cached.load_manifest(&r.id).expect("reload"), r.manifest);
        assert_eq!(
            Id::of(&std::fs::read(&copy).expect("read")),
            r.id,
            "the entry was rewritten"
        );
    }

    #[test]
    fn pack_keys_roundtrip() {
        let id = Id::of(b"x");
        assert_eq!(pack_id_from_key(&pack_key(&id)), Some(id));
        assert_eq!(pack_id_from_key("data/zz/abc"), None);
    }

    #[test]
    fn file_reader_locates_chunks() {
        let r = FileReader {
            chunks: vec![],
            offsets: vec![0, 10, 25, 30],
            index: Arc::new(MasterIndex::default()),
        };
        assert_eq!(r.chunk_at(0), Some(0));
        assert_eq!(r.chunk_at(9), Some(0));
        assert_eq!(r.chunk_at(10), Some(1));
        assert_eq!(r.chunk_at(29), Some(2));
        assert_eq!(r.chunk_at(30), None);
    }
}
