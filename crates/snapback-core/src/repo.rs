//! The repository handle: creating one (`init`), opening one (the config,
//! and for an encrypted repository its key files), and what every other
//! module reaches through it (the store, the config, the codec).
//!
//! The key layout is in `layout`; reading is in `read`, selectors in
//! `selector`, key management in `keys`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use snapback_storage::{PutOutcome, Store};

use crate::config::{ChunkingParams, RepoConfig, FORMAT_VERSION};
use crate::crypto::{
    make_key_file, open_key_file, Crypto, CryptoStore, EncryptionConfig, KdfParams, MasterKey,
    Passphrase,
};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::MasterIndex;
use crate::layout::{key_file_id_from_key, key_file_key, CONFIG_KEY, CONFIG_NEXT_KEY, KEYS_PREFIX};
use crate::manifest::Manifest;
use crate::object::{put_verified, random_hex};
use crate::pack::BlobCodec;
use crate::segment::Segment;

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

/// An open repository.
#[derive(Debug)]
pub struct Repository {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: RepoConfig,
    pub(crate) index: RwLock<Option<Arc<MasterIndex>>>,
    /// Index objects this handle wrote (a snapshot's) that the loaded
    /// index has not read yet: `index()` reads them on its next use.
    pub(crate) unread_index_keys: Mutex<Vec<String>>,
    pub(crate) manifests: Mutex<HashMap<Id, Arc<Manifest>>>,
    /// Local copies of immutable, content-named objects (manifests and
    /// indexes), so that a command against a remote store does not fetch
    /// every one of them again.
    pub(crate) cache_dir: Option<std::path::PathBuf>,
    /// Manifests skipped as damaged by the last listing, with the reason.
    pub(crate) skipped: Mutex<HashMap<Id, String>>,
    /// Timeline segments read so far (they are immutable, like manifests).
    pub(crate) segments: Mutex<HashMap<Id, Arc<Segment>>>,
    /// Dictionaries read so far (immutable, content-named).
    pub(crate) dicts: Mutex<HashMap<Id, Arc<crate::dict::Dict>>>,
    /// Features this handle added to the config (`ensure_feature`) since
    /// it was opened.
    pub(crate) added_features: Mutex<Vec<String>>,
    pub(crate) codec: BlobCodec,
    /// Encrypted repositories: the master key and the key file that opened it.
    pub(crate) master: Option<Arc<MasterKey>>,
    pub(crate) key_id: Option<Id>,
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
        // A config being installed (`ensure_feature` interrupted) is a
        // repository too.
        if store.stat(CONFIG_KEY)?.is_some() || store.stat(CONFIG_NEXT_KEY)?.is_some() {
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
        let bytes = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::internal(format!("cannot encode the config: {e}")))?;
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
        let config = Repository::read_config(store.as_ref())?;
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
                KEYS_PREFIX,
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

    /// Reads and parses the config of the repository in `store`, without
    /// opening it (no passphrase needed: the config is stored plain). No
    /// config is `Error::NotARepository`. A config whose replacement was
    /// interrupted (only `config.next` exists) is finished here: the next
    /// one is installed where the store can be written, and used either way.
    pub fn read_config(store: &dyn Store) -> Result<RepoConfig> {
        let bytes = match store.get(CONFIG_KEY) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => match store.get(CONFIG_NEXT_KEY) {
                Ok(next) => {
                    let config = RepoConfig::parse(&next)?;
                    match store.put_if_absent(CONFIG_KEY, &next) {
                        Ok(PutOutcome::Created) => {
                            tracing::info!("finished installing the repository config that an interrupted feature change left in {CONFIG_NEXT_KEY}");
                        }
                        // Installed meanwhile by its writer: read that one.
                        Ok(PutOutcome::AlreadyExists) => {
                            return RepoConfig::parse(&store.get(CONFIG_KEY)?)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot install {CONFIG_NEXT_KEY} as the config (read-only?); using it as it is");
                        }
                    }
                    return Ok(config);
                }
                Err(n) if n.is_not_found() => {
                    return Err(Error::NotARepository {
                        location: store.location(),
                    })
                }
                Err(n) => return Err(n.into()),
            },
            Err(e) => return Err(e.into()),
        };
        RepoConfig::parse(&bytes)
    }

    /// True when the repository's config lists `feature`, as stored or
    /// as this handle added it.
    pub fn has_feature(&self, feature: &str) -> Result<bool> {
        Ok(self.config.features.iter().any(|f| f == feature)
            || self
                .added_features
                .lock()
                .map_err(|_| poisoned())?
                .iter()
                .any(|f| f == feature))
    }

    /// Makes the stored config list `feature` (format 2 only), so that a
    /// reader that does not know it refuses the repository before it reads
    /// what the feature adds. Called before the first object of that
    /// feature is written.
    ///
    /// The config is replaced in steps that leave a readable repository
    /// after a crash at any point: the new config is stored as
    /// `config.next` (verified), `config` deleted, the new one stored as
    /// `config` (put-if-absent, verified), `config.next` deleted. A crash
    /// between the delete and the put leaves only `config.next`, which
    /// `read_config` installs. Nothing else changes.
    pub(crate) fn ensure_feature(&self, feature: &str) -> Result<()> {
        if self.has_feature(feature)? {
            return Ok(());
        }
        if self.config.format_version < 2 {
            return Err(Error::Invalid(format!(
                "the repository is format version 1, which has no format feature {feature:?}: upgrade the repository to format 2 (a repository that `snapback init` creates now is format 2)"
            )));
        }
        let store = self.store.as_ref();
        let current = Repository::read_config(store)?;
        if current.repo_id != self.config.repo_id {
            return Err(Error::Invalid(format!(
                "the config of {} now names repository {}, not {}, which was opened; nothing was changed",
                store.location(),
                current.repo_id,
                self.config.repo_id
            )));
        }
        if !current.features.iter().any(|f| f == feature) {
            let mut next = current.clone();
            next.features.push(feature.to_string());
            next.features.sort();
            let bytes = serde_json::to_vec_pretty(&next)
                .map_err(|e| Error::internal(format!("cannot encode the config: {e}")))?;
            // A leftover of an earlier interrupted change (the config
            // exists, so it was installed): it would block this one.
            store.delete(CONFIG_NEXT_KEY)?;
            put_verified(store, CONFIG_NEXT_KEY, &bytes)?;
            store.delete(CONFIG_KEY)?;
            if store.put_if_absent(CONFIG_KEY, &bytes)? == PutOutcome::AlreadyExists {
                // Another writer (or a reader finishing the change)
                // installed a config meanwhile: it must list the feature.
                let got = Repository::read_config(store)?;
                if !got.features.iter().any(|f| f == feature) {
                    return Err(Error::Verification(format!(
                        "another process replaced the config of {} while the feature {feature:?} was being added; run the command again",
                        store.location()
                    )));
                }
            } else if store.stat(CONFIG_KEY)? != Some(bytes.len() as u64) {
                return Err(Error::Verification(format!(
                    "the repository config at {} was not stored intact while adding the feature {feature:?}; {CONFIG_NEXT_KEY} holds it, and the next open installs it",
                    store.location()
                )));
            }
            store.delete(CONFIG_NEXT_KEY)?;
            tracing::info!(feature, "the repository config now lists the feature");
        }
        self.added_features
            .lock()
            .map_err(|_| poisoned())?
            .push(feature.to_string());
        Ok(())
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
            unread_index_keys: Mutex::new(Vec::new()),
            manifests: Mutex::new(HashMap::new()),
            cache_dir: None,
            skipped: Mutex::new(HashMap::new()),
            segments: Mutex::new(HashMap::new()),
            dicts: Mutex::new(HashMap::new()),
            added_features: Mutex::new(Vec::new()),
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
            unread_index_keys: Mutex::new(Vec::new()),
            manifests: Mutex::new(HashMap::new()),
            cache_dir: self.cache_dir.clone(),
            skipped: Mutex::new(HashMap::new()),
            segments: Mutex::new(HashMap::new()),
            dicts: Mutex::new(HashMap::new()),
            added_features: Mutex::new(
                self.added_features
                    .lock()
                    .map(|f| f.clone())
                    .unwrap_or_default(),
            ),
            codec: self.codec.clone(),
            master: self.master.clone(),
            key_id: self.key_id,
        }
    }

    /// A second handle on the same repository that starts with this one's
    /// loaded index (shared, not copied): for a reader on its own threads,
    /// such as a point opened in place, that would otherwise read every
    /// index object again. It loads what is new on its own from then on.
    pub fn share(&self) -> Repository {
        let r = self.reopen();
        if let (Ok(mine), Ok(mut theirs)) = (self.index.read(), r.index.write()) {
            theirs.clone_from(&mine);
        }
        if let (Ok(mine), Ok(mut theirs)) =
            (self.unread_index_keys.lock(), r.unread_index_keys.lock())
        {
            theirs.clone_from(&mine);
        }
        r
    }

    /// How blobs are stored and chunks named in this repository.
    pub fn codec(&self) -> &BlobCodec {
        &self.codec
    }

    pub fn is_encrypted(&self) -> bool {
        self.master.is_some()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
}

pub(crate) fn poisoned() -> Error {
    Error::internal("internal lock poisoned by an earlier panic")
}
