//! The repository: the store plus the format's rules for reading it.
//!
//! The key layout is in `layout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use snapback_storage::{PutOutcome, Store};
use time::OffsetDateTime;

use crate::chunklist::{self, ChunkRef};
use crate::config::{ChunkingParams, RepoConfig, FORMAT_VERSION};
use crate::crypto::{
    key_info, make_key_file, open_key_file, Crypto, CryptoStore, EncryptionConfig, KdfParams,
    KeyInfo, MasterKey, Passphrase,
};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{decode_index, IndexedPack, MasterIndex};
use crate::layout::{
    key_file_id_from_key, key_file_key, pack_key, snapshot_id_from_key, snapshot_key, CONFIG_KEY,
    INDEX_PREFIX, KEYS_PREFIX, SNAPSHOT_PREFIX,
};
use crate::manifest::{FileEntry, Manifest};
use crate::object::{get_named, put_verified, random_hex, verify_name};
use crate::pack::{open_blob, BlobCodec, BlobKind};

/// At most this many key files are tried when a repository is opened (each
/// costs a KDF run); a planted flood of them cannot stall every open.
const MAX_KEY_FILES: usize = 32;

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunking: ChunkingParams,
    pub compression_level: i32,
    pub pack_target_size: u64,
    /// Encrypt the repository (see `crypto`).
    pub encryption: Option<EncryptionOptions>,
    /// The repository's format version (`FORMAT_VERSION` by default; 1 for
    /// repositories older releases must open).
    pub format_version: u32,
}

/// The first passphrase of an encrypted repository and its KDF cost.
#[derive(Clone)]
pub struct EncryptionOptions {
    pub passphrase: Passphrase,
    pub kdf: KdfParams,
}

impl std::fmt::Debug for EncryptionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionOptions")
            .field("passphrase", &"<redacted>")
            .field("kdf", &self.kdf)
            .finish()
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunking: ChunkingParams::default(),
            compression_level: 1,
            pack_target_size: 16 << 20,
            encryption: None,
            format_version: FORMAT_VERSION,
        }
    }
}

/// A committed snapshot: its id and manifest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: Id,
    /// The manifest's time: the writer's clock when the capture began.
    pub time: OffsetDateTime,
    /// When the store wrote the manifest, by the store's own clock (see
    /// `dating`); `None` where the store does not say.
    pub written: Option<OffsetDateTime>,
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

/// The fewest hex digits an id prefix may have (snapshots and keys).
pub const MIN_ID_PREFIX: usize = 4;

/// How many file paths a message lists before "… and N more".
const LISTED_FILES: usize = 10;

/// "a, b, c … and 12 more": the paths a snapshot holds, for messages.
pub fn holds_list(snap: &Snapshot) -> String {
    let files = &snap.manifest.files;
    let mut out = files
        .iter()
        .take(LISTED_FILES)
        .map(|f| f.path.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > LISTED_FILES {
        out.push_str(&format!(" … and {} more", files.len() - LISTED_FILES));
    }
    if files.is_empty() {
        out.push_str("no files");
    }
    out
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
            // As documented: a prefix of at least 4 hex digits (fewer would
            // match by luck, and mean another snapshot tomorrow).
            if lower.len() < MIN_ID_PREFIX {
                return Err(Error::Selector(format!(
                    "snapshot id prefix '{s}' is too short: give at least {MIN_ID_PREFIX} hex digits (the short ids of `snapback snapshots` have 8)"
                )));
            }
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
    codec: BlobCodec,
    /// Encrypted repositories: the master key and the key file that opened it.
    master: Option<Arc<MasterKey>>,
    key_id: Option<Id>,
}

impl Repository {
    /// Creates a new repository in an empty store.
    pub fn init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<Repository> {
        let config = RepoConfig {
            format_version: opts.format_version,
            repo_id: random_hex(16)?,
            created: crate::time::format_rfc3339(crate::time::now()),
            chunking: opts.chunking.clone(),
            compression_level: opts.compression_level,
            pack_target_size: opts.pack_target_size,
            encryption: opts
                .encryption
                .as_ref()
                .map(|_| EncryptionConfig::current()),
            features: vec![],
        };
        config
            .validate()
            .map_err(|e| Error::Invalid(format!("invalid repository settings: {e}")))?;
        if store.stat(CONFIG_KEY)?.is_some() {
            return Err(Error::AlreadyInitialised {
                location: store.location(),
            });
        }
        // An encrypted repository gets its first key file before its
        // config, so that a config never exists without a key.
        let mut unlocked = None;
        if let Some(e) = &opts.encryption {
            let master = MasterKey::generate()?;
            let kf = make_key_file(&master, &e.passphrase, &e.kdf, &config.repo_id)?;
            let kid = Id::of(&kf);
            put_verified(store.as_ref(), &key_file_key(&kid), &kf)?;
            unlocked = Some((master, kid));
        }
        let bytes =
            serde_json::to_vec_pretty(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        match store.put_if_absent(CONFIG_KEY, &bytes)? {
            PutOutcome::Created => {}
            PutOutcome::AlreadyExists => {
                if let Some((_, kid)) = &unlocked {
                    store.delete(&key_file_key(kid))?;
                }
                return Err(Error::AlreadyInitialised {
                    location: store.location(),
                });
            }
        }
        if store.stat(CONFIG_KEY)? != Some(bytes.len() as u64) {
            return Err(Error::Verification(format!(
                "the repository config at {} was not stored intact; check the store and run init again",
                store.location()
            )));
        }
        Repository::with_config(store, config, unlocked)
    }

    /// Opens an existing unencrypted repository. An encrypted one is an
    /// error that asks for a passphrase: use `open_with_passphrase`.
    pub fn open(store: Arc<dyn Store>) -> Result<Repository> {
        Repository::open_with_passphrase(store, || {
            Err(Error::Key(
                "the repository is encrypted: give its passphrase".into(),
            ))
        })
    }

    /// Opens an existing repository; `passphrase` is asked only if the
    /// repository is encrypted. Every key file under `keys/` is tried.
    pub fn open_with_passphrase(
        store: Arc<dyn Store>,
        passphrase: impl FnOnce() -> Result<Passphrase>,
    ) -> Result<Repository> {
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
        let mut keys: Vec<String> = store
            .list(KEYS_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        if config.encryption.is_none() {
            if !keys.is_empty() {
                return Err(Error::corrupt(
                    "config",
                    format!(
                        "it says the repository at {} is not encrypted, but keys/ holds {} key file(s): the config was replaced. Refusing to write unencrypted data; restore the original config",
                        store.location(),
                        keys.len()
                    ),
                ));
            }
            return Repository::with_config(store, config, None);
        }
        if keys.is_empty() {
            return Err(Error::corrupt(
                "keys/",
                format!(
                    "the repository at {} is encrypted but has no key file: without one its data cannot be decrypted",
                    store.location()
                ),
            ));
        }
        let pass = passphrase()?;
        let mut damaged = Vec::new();
        // Key files that say they were made for another repository.
        let mut foreign: Vec<(String, Vec<u8>, String)> = Vec::new();
        if keys.len() > MAX_KEY_FILES {
            tracing::warn!(
                count = keys.len(),
                "more key files than snapback tries; only the first {MAX_KEY_FILES} are tried"
            );
        }
        for key in keys.iter().take(MAX_KEY_FILES) {
            match store.stat(key) {
                Ok(Some(n)) if n <= crate::crypto::MAX_KEY_FILE_BYTES => {}
                Ok(n) => {
                    damaged.push(format!(
                        "{key}: {} bytes, more than a key file can be",
                        n.unwrap_or(0)
                    ));
                    continue;
                }
                Err(e) => {
                    damaged.push(format!("{key}: {e}"));
                    continue;
                }
            }
            let kf = match store.get(key) {
                Ok(b) => b,
                Err(e) => {
                    damaged.push(format!("{key}: {e}"));
                    continue;
                }
            };
            match open_key_file(&kf, key, &pass, &config.repo_id) {
                Ok(Some(master)) => {
                    let kid = key_file_id_from_key(key).unwrap_or_else(|| Id::of(&kf));
                    tracing::debug!(key = %kid.short(), "repository key opened");
                    return Repository::with_config(store, config, Some((master, kid)));
                }
                Ok(None) => {
                    if let Ok(Some(other)) = crate::crypto::check_key_file(&kf, key)
                        .map(|c| c.repo_id.filter(|r| *r != config.repo_id))
                    {
                        foreign.push((key.clone(), kf, other));
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "skipping an unreadable key file");
                    damaged.push(e.to_string());
                }
            }
        }
        // A key file copied from another repository never opens this one
        // (its master key is bound to that repository's id): when the
        // passphrase opens it as a key of the repository it names, say so
        // instead of "wrong passphrase".
        for (key, kf, other) in &foreign {
            if open_key_file(kf, key, &pass, other)?.is_some() {
                return Err(Error::WrongPassphrase(format!(
                    "this key belongs to repository {other}, not {}: {key} was copied from another repository, and the passphrase opens it only there. Use the passphrase of a key of this repository (`snapback key list` shows its keys; `snapback key remove` removes the copy)",
                    config.repo_id
                )));
            }
        }
        let mut msg = format!(
            "the passphrase opens none of the {} key(s) of the encrypted repository at {}; check SNAPBACK_PASSWORD or --password-file",
            keys.len(),
            store.location()
        );
        if !damaged.is_empty() {
            msg.push_str(&format!(
                " ({} key file(s) could not be read: {})",
                damaged.len(),
                damaged.join("; ")
            ));
        }
        Err(Error::WrongPassphrase(msg))
    }

    fn with_config(
        store: Arc<dyn Store>,
        config: RepoConfig,
        unlocked: Option<(MasterKey, Id)>,
    ) -> Result<Repository> {
        let level = config.compression_level;
        let (store, codec, master, key_id) = match unlocked {
            None => (store, BlobCodec::plain(level), None, None),
            Some((master, kid)) => {
                let crypto = Arc::new(Crypto::new(&master)?);
                let store: Arc<dyn Store> = Arc::new(CryptoStore::new(store, crypto.clone()));
                (
                    store,
                    BlobCodec::encrypted(level, crypto),
                    Some(Arc::new(master)),
                    Some(kid),
                )
            }
        };
        Ok(Repository {
            store,
            config,
            index: RwLock::new(None),
            manifests: Mutex::new(HashMap::new()),
            cache_dir: None,
            skipped: Mutex::new(HashMap::new()),
            codec,
            master,
            key_id,
        })
    }

    /// A second handle on the same repository (same store and keys) with
    /// nothing loaded: for a reader that needs a fresh view of the index.
    pub fn reopen(&self) -> Repository {
        Repository {
            store: self.store.clone(),
            config: self.config.clone(),
            index: RwLock::new(None),
            manifests: Mutex::new(HashMap::new()),
            cache_dir: self.cache_dir.clone(),
            skipped: Mutex::new(HashMap::new()),
            codec: self.codec.clone(),
            master: self.master.clone(),
            key_id: self.key_id,
        }
    }

    /// How blobs are stored and chunks named in this repository.
    pub fn codec(&self) -> &BlobCodec {
        &self.codec
    }

    pub fn is_encrypted(&self) -> bool {
        self.master.is_some()
    }

    fn require_encrypted(&self) -> Result<&MasterKey> {
        self.master.as_deref().ok_or_else(|| {
            Error::Invalid(
                "this repository is not encrypted, so it has no keys (create an encrypted one with `snapback init --encrypt`)".into(),
            )
        })
    }

    /// The key files of an encrypted repository.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        self.require_encrypted()?;
        let mut out = Vec::new();
        for o in self.store.list(KEYS_PREFIX)? {
            let Some(id) = key_file_id_from_key(&o.key) else {
                continue;
            };
            // A damaged key file is listed (so that it can be removed), not
            // an error that hides the others.
            let info = self.store.get(&o.key).map_err(Error::from).and_then(|b| {
                key_info(
                    &b,
                    &o.key,
                    id,
                    Some(id) == self.key_id,
                    &self.config.repo_id,
                )
            });
            out.push(info.unwrap_or_else(|e| KeyInfo {
                id,
                created: String::new(),
                host: String::new(),
                user: String::new(),
                memory_kib: 0,
                iterations: 0,
                current: false,
                foreign: None,
                damaged: Some(e.to_string()),
            }));
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds a passphrase: a new key file sealing the same master key.
    pub fn add_key(&self, passphrase: &str, kdf: &KdfParams) -> Result<Id> {
        let master = self.require_encrypted()?;
        let kf = make_key_file(master, passphrase, kdf, &self.config.repo_id)?;
        let kid = Id::of(&kf);
        put_verified(self.store.as_ref(), &key_file_key(&kid), &kf)?;
        // Prove that the new key file opens with the passphrase before
        // reporting success.
        let back = self.store.get(&key_file_key(&kid))?;
        if open_key_file(&back, "new key", passphrase, &self.config.repo_id)?.is_none() {
            self.store.delete(&key_file_key(&kid))?;
            return Err(Error::Verification(
                "the new key file does not open with its passphrase; it was not kept".into(),
            ));
        }
        Ok(kid)
    }

    /// Removes a key file by id or unique prefix. The key that opened the
    /// repository and the last key are never removed.
    pub fn remove_key(&self, prefix: &str) -> Result<Id> {
        self.require_encrypted()?;
        // Under the exclusive lock from the start: two removals at once
        // (each opened with the key the other removes) must not both pass
        // the "not the last key" check.
        let _lock = self.lock(
            crate::lock::LockKind::Exclusive,
            "key remove",
            std::time::Duration::ZERO,
        )?;
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < MIN_ID_PREFIX {
            return Err(Error::Selector(format!(
                "key id prefix '{prefix}' is too short: give at least {MIN_ID_PREFIX} hex digits (see `snapback key list`)"
            )));
        }
        let keys = self.keys()?;
        let m: Vec<&KeyInfo> = keys
            .iter()
            .filter(|k| !prefix.is_empty() && k.id.to_hex().starts_with(&prefix))
            .collect();
        let k = match m.as_slice() {
            [k] => *k,
            [] => {
                return Err(Error::Selector(format!(
                    "no key id starts with '{prefix}'; list them with `snapback key list`"
                )))
            }
            _ => {
                return Err(Error::Selector(format!(
                    "key prefix '{prefix}' matches {} keys; give more digits",
                    m.len()
                )))
            }
        };
        if k.current {
            return Err(Error::Invalid(format!(
                "key {} is the one this command opened the repository with; open it with another passphrase to remove this key",
                k.id.short()
            )));
        }
        if keys.len() < 2 {
            return Err(Error::Invalid(
                "refusing to remove the last key: the repository could never be opened again"
                    .into(),
            ));
        }
        self.store.delete(&key_file_key(&k.id))?;
        Ok(k.id)
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
    pub(crate) fn get_immutable(&self, key: &str, prefix: &str) -> Result<Vec<u8>> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(key));
        if let Some(p) = &cached {
            if let Ok(b) = std::fs::read(p) {
                if verify_name(key, prefix, &b).is_ok() {
                    return Ok(b);
                }
                tracing::warn!(path = %p.display(), "ignoring a damaged cache entry");
            }
        }
        let bytes = get_named(self.store.as_ref(), key, prefix)?;
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

    /// The repository's index as it is now. Index objects are named by the
    /// hash of their content, so while every object the loaded index was
    /// read from is still listed, only new ones need reading; when one is
    /// gone (a prune rewrote the indexes), every object is read again.
    pub fn current_index(&self) -> Result<Arc<MasterIndex>> {
        let listed: std::collections::HashSet<String> = self
            .store
            .list(INDEX_PREFIX)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let unchanged = self
            .index
            .read()
            .map_err(|_| poisoned())?
            .as_ref()
            .is_some_and(|i| i.index_keys.iter().all(|k| listed.contains(k)));
        if !unchanged {
            *self.index.write().map_err(|_| poisoned())? = None;
        }
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

    /// Adds the packs of the index object `key`, which this repository has
    /// just written, to its cached index (no request: the packs are known),
    /// so that a restore, check or mount in the same process finds them.
    pub(crate) fn learn_index(&self, key: &str, packs: &[IndexedPack]) -> Result<()> {
        let mut guard = self.index.write().map_err(|_| poisoned())?;
        // Not loaded yet: the first use loads every index object, this one
        // too.
        let Some(cur) = guard.as_deref() else {
            return Ok(());
        };
        if cur.index_keys.iter().any(|k| k == key) {
            return Ok(());
        }
        let mut idx = cur.clone();
        for p in packs {
            idx.insert_pack(p);
        }
        idx.index_keys.push(key.to_string());
        *guard = Some(Arc::new(idx));
        Ok(())
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
            let Some(id) = snapshot_id_from_key(&o.key) else {
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
                        // Forgotten between the listing and the read (forget
                        // takes no lock): the snapshot no longer exists.
                        Err(Error::Store(e)) if e.is_not_found() => {
                            tracing::debug!(key = %o.key, "snapshot removed while listing; skipped");
                            continue;
                        }
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
            let written = o.modified.and_then(crate::time::from_system);
            out.push(Snapshot {
                id,
                time,
                written,
                manifest,
            });
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub fn load_manifest(&self, id: &Id) -> Result<Manifest> {
        let key = snapshot_key(id);
        let bytes = self.get_immutable(&key, SNAPSHOT_PREFIX)?;
        Manifest::parse(&bytes, &key)
    }

    /// Resolves a selector among the snapshots that `filter` accepts.
    pub fn resolve(&self, sel: &Selector, filter: impl Fn(&Snapshot) -> bool) -> Result<Snapshot> {
        let all = self.snapshots()?;
        let r = resolve_in(&all, sel, &filter);
        // An id that exists but was filtered out (it does not hold the file
        // asked for): say that, and what it holds, not "no such id".
        if let (Err(_), Selector::Id(prefix)) = (&r, sel) {
            let named: Vec<&Snapshot> = all
                .iter()
                .filter(|s| s.id.to_hex().starts_with(prefix.as_str()))
                .collect();
            if let [one] = named[..] {
                return Err(Error::Selector(format!(
                    "snapshot {} exists but does not hold the file asked for; it holds: {}",
                    one.describe(),
                    holds_list(one)
                )));
            }
        }
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
        open_blob(&self.codec, id, &stored, loc.raw_len, &key)
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

    pub(crate) fn read_list_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
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
        // The newest snapshot not dated in the future: one taken with a
        // clock that was ahead is older than its time says, so it never
        // stands for "latest" while a real one exists (select it by id).
        Selector::Latest => {
            let now = crate::time::now();
            let dating = crate::dating::Dating::of(all);
            let real = dating.newest(cands.iter().copied(), now);
            for skipped in cands
                .iter()
                .filter(|s| real.is_some_and(|r| r.id != s.id && s.time > r.time))
            {
                let why = match dating.ahead(&skipped.id) {
                    Some(a) => a.describe(),
                    None => "dated in the future: its host's clock was ahead".into(),
                };
                tracing::warn!(
                    "'latest' skips snapshot {} ({}; {why}); select it by id if it is the one you mean",
                    skipped.id.short(),
                    skipped.manifest.time
                );
            }
            real.cloned()
                .ok_or_else(|| Error::Selector("there are no snapshots (for this selection) yet; take one with `snapback snapshot PATH`".into()))
        }
        // By trusted time: a snapshot dated ahead of the store's clock holds
        // what was committed before the store wrote it, not before its time.
        Selector::At(t) => {
            let dating = crate::dating::Dating::of(all);
            cands
                .iter()
                .filter(|s| dating.trusted(s) <= *t)
                .max_by(|a, b| dating.cmp(a, b))
                .map(|s| (*s).clone())
                .ok_or_else(|| {
                    let first = cands
                        .first()
                        .map(|s| format!("; the oldest is {}", s.describe()))
                        .unwrap_or_default();
                    Error::Selector(format!(
                        "no snapshot was taken at or before {}{first}",
                        crate::time::format_rfc3339(*t)
                    ))
                })
        }
        Selector::Id(prefix) => {
            let m: Vec<&&Snapshot> = cands
                .iter()
                .filter(|s| s.id.to_hex().starts_with(prefix.as_str()))
                .collect();
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

fn poisoned() -> Error {
    Error::Invalid("internal lock poisoned by an earlier panic".into())
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
            written: None,
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
    fn id_prefixes_need_four_hex_digits() {
        for short in ["a", "ab", "abc"] {
            let e = short.parse::<Selector>().expect_err(short).to_string();
            assert!(e.contains("at least 4 hex digits"), "{e}");
        }
        assert_eq!(
            "abcd".parse::<Selector>().expect("4"),
            Selector::Id("abcd".into())
        );
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
