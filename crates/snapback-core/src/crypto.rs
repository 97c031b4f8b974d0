//! Encryption at rest (optional per repository; `init --encrypt`).
//!
//! Keys:
//! - a random 64-byte master key per repository: 32 bytes for the AEAD
//!   (XChaCha20-Poly1305), 32 bytes for the keyed chunk ids
//!   (HMAC-SHA256), so that identical content cannot be recognised from
//!   outside the repository;
//! - one key file per passphrase under `keys/`: the master key sealed with
//!   a key-encryption key derived from the passphrase by argon2id. Any one
//!   passphrase opens the repository; `snapback key add|list|remove`
//!   manages them.
//!
//! Sealed form of every encrypted object and blob:
//! `version (1 byte, 1) || nonce (24 random bytes) || ciphertext || tag (16)`,
//! with associated data that binds it to its place (the object key, the
//! blob id, or "pack header"), so a sealed object moved to another name
//! fails authentication. Nothing here logs or prints key material.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use snapback_storage::{
    ErrorKind, ObjectInfo, PutOutcome, RequestStats, Store, StoreError, Tuning,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::id::Id;
use crate::layout::{CONFIG_KEY, CONFIG_NEXT_KEY, DATA_PREFIX, KEYS_PREFIX};
use crate::object::fill_random;

/// Version byte of the sealed form.
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes that sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Where the key files are.
/// The one name for the cipher suite, in the config and the key files.
pub const ALGORITHM: &str = "xchacha20poly1305+hmac-sha256";
const KEY_FILE_VERSION: u32 = 1;
/// A key file is about 450 bytes; anything much larger is not one.
pub(crate) const MAX_KEY_FILE_BYTES: u64 = 4096;

/// A passphrase, wiped from memory when dropped.
pub type Passphrase = Zeroizing<String>;

/// The `encryption` field of the repository config (plaintext: it says only
/// that the repository is encrypted and how).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    pub algorithm: String,
    pub kdf: String,
}

impl EncryptionConfig {
    pub(crate) fn current() -> EncryptionConfig {
        EncryptionConfig {
            algorithm: ALGORITHM.into(),
            kdf: "argon2id".into(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.algorithm != ALGORITHM || self.kdf != "argon2id" {
            return Err(Error::Invalid(format!(
                "the repository is encrypted with {} / {}, which this snapback does not know (it knows {ALGORITHM} / argon2id); upgrade snapback",
                self.algorithm, self.kdf
            )));
        }
        Ok(())
    }
}

/// Cost of the passphrase KDF (argon2id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// RFC 9106's second recommended setting: 64 MiB, 3 passes, 1 lane
    /// (about 0.1-0.3 s on a server core).
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Refuses settings too weak to protect a passphrase, or so large that
    /// opening the repository would exhaust the machine.
    pub fn validate(&self) -> Result<()> {
        // Upper bounds too: a key file is read before the passphrase is
        // known to be right, so a hostile one must not make every open
        // allocate or compute without limit.
        if !(8 * 1024..=1024 * 1024).contains(&self.memory_kib) {
            return Err(Error::Invalid(format!(
                "KDF memory of {} KiB is out of range: use 8 to 1024 MiB",
                self.memory_kib
            )));
        }
        if !(1..=16).contains(&self.iterations) {
            return Err(Error::Invalid(format!(
                "KDF iterations {} out of range: use 1 to 16",
                self.iterations
            )));
        }
        if !(1..=4).contains(&self.parallelism) {
            return Err(Error::Invalid(format!(
                "KDF parallelism {} out of range: use 1 to 4",
                self.parallelism
            )));
        }
        Ok(())
    }
}

/// A key file under `keys/`. The name of the object is the SHA-256 of its
/// bytes (the key id).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    kdf: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    /// Hex, 16 random bytes.
    salt: String,
    created: String,
    host: String,
    user: String,
    /// Hex: the sealed master key.
    master: String,
    /// The id of the repository this key file was made for (the sealed
    /// master key is bound to it as associated data, so a copy in another
    /// repository never opens). Absent in key files made before it was
    /// recorded; they open as before, but a copy of one cannot be told
    /// from a key of this repository without its passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    repo_id: Option<String>,
}

/// What `key list` shows of a key file.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: Id,
    /// Why the key file cannot be read, if it cannot.
    pub damaged: Option<String>,
    pub created: String,
    pub host: String,
    pub user: String,
    pub memory_kib: u32,
    pub iterations: u32,
    /// The key that opened this repository.
    pub current: bool,
    /// The other repository's id when the key file says it was made for
    /// another repository (copied from there): it never opens this one.
    pub foreign: Option<String>,
}

/// The master key, wiped from memory when dropped.
pub(crate) struct MasterKey(Zeroizing<[u8; 64]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub(crate) fn from_bytes(b: [u8; 64]) -> MasterKey {
        MasterKey(Zeroizing::new(b))
    }

    pub(crate) fn generate() -> Result<MasterKey> {
        let mut k = Zeroizing::new([0u8; 64]);
        fill_random(&mut k[..])?;
        Ok(MasterKey(k))
    }
}

/// The open cipher state of an encrypted repository.
pub struct Crypto {
    aead: XChaCha20Poly1305,
    id_mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto { .. }")
    }
}

impl Crypto {
    pub(crate) fn new(master: &MasterKey) -> Result<Crypto> {
        let aead = XChaCha20Poly1305::new_from_slice(&master.0[..32])
            .map_err(|_| Error::internal("invalid encryption key length"))?;
        let id_mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&master.0[32..])
            .map_err(|_| Error::internal("invalid id key length"))?;
        Ok(Crypto { aead, id_mac })
    }

    /// Seals `msg`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
        seal_with(&self.aead, aad, msg)
    }

    /// Opens a sealed message; `Err` says why it does not authenticate.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> std::result::Result<Vec<u8>, String> {
        open_with(&self.aead, aad, sealed)
    }

    /// The keyed id of a chunk: HMAC-SHA256 under the repository's id key.
    pub fn chunk_id(&self, data: &[u8]) -> Id {
        let mut m = self.id_mac.clone();
        m.update(data);
        let mut out = [0u8; 32];
        out.copy_from_slice(&m.finalize().into_bytes());
        Id(out)
    }
}

/// The sealed form (module comment) of `msg` under `aead`.
fn seal_with(aead: &XChaCha20Poly1305, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let ct = aead
        .encrypt(&XNonce::from(nonce), Payload { msg, aad })
        .map_err(|_| Error::internal("encryption failed"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a sealed form under `aead`; `Err` says why it does not
/// authenticate.
fn open_with(
    aead: &XChaCha20Poly1305,
    aad: &[u8],
    sealed: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(format!(
            "sealed data is {} bytes, shorter than its envelope",
            sealed.len()
        ));
    }
    if sealed[0] != SEAL_VERSION {
        return Err(format!("unknown encryption envelope version {}", sealed[0]));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
    aead.decrypt(
        &XNonce::from(nonce),
        Payload {
            msg: &sealed[1 + NONCE_LEN..],
            aad,
        },
    )
    .map_err(|_| {
        "authentication failed: the data was modified, or was not written with this repository's key".to_string()
    })
}

fn key_aad(repo_id: &str) -> Vec<u8> {
    format!("snapback key file v1 {repo_id}").into_bytes()
}

fn derive_kek(pass: &str, salt: &[u8], p: &KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::internal(format!("invalid KDF settings: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass.as_bytes(), salt, &mut out[..])
        .map_err(|e| Error::internal(format!("key derivation failed: {e}")))?;
    Ok(out)
}

/// A new key file that seals `master` under `pass`. Returns its bytes.
pub(crate) fn make_key_file(
    master: &MasterKey,
    pass: &str,
    params: &KdfParams,
    repo_id: &str,
) -> Result<Vec<u8>> {
    params.validate()?;
    if pass.is_empty() {
        return Err(Error::Invalid(
            "the passphrase is empty; choose a non-empty one".into(),
        ));
    }
    let mut salt = [0u8; 16];
    fill_random(&mut salt)?;
    let kek = derive_kek(pass, &salt, params)?;
    let cipher = XChaCha20Poly1305::new_from_slice(&kek[..])
        .map_err(|_| Error::internal("invalid key length"))?;
    let sealed = seal_with(&cipher, &key_aad(repo_id), &master.0[..])?;
    let kf = KeyFile {
        version: KEY_FILE_VERSION,
        kdf: "argon2id".into(),
        memory_kib: params.memory_kib,
        iterations: params.iterations,
        parallelism: params.parallelism,
        salt: hex::encode(salt),
        created: crate::time::format_rfc3339(crate::time::now()),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        user: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default(),
        master: hex::encode(sealed),
        repo_id: Some(repo_id.to_string()),
    };
    serde_json::to_vec_pretty(&kf)
        .map_err(|e| Error::internal(format!("cannot encode a key file: {e}")))
}

fn parse_key_file(bytes: &[u8], key: &str) -> Result<KeyFile> {
    #[derive(Deserialize)]
    struct V {
        version: u32,
    }
    let v: V = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(key, format!("not a snapback key file: {e}")))?;
    if v.version != KEY_FILE_VERSION {
        return Err(Error::UnsupportedVersion {
            found: v.version,
            supported: KEY_FILE_VERSION,
        });
    }
    let kf: KeyFile =
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(key, e.to_string()))?;
    if kf.kdf != "argon2id" {
        return Err(Error::corrupt(key, format!("unknown KDF '{}'", kf.kdf)));
    }
    if let Some(r) = &kf.repo_id {
        if r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::corrupt(key, "repo_id is not a repository id (hex)"));
        }
    }
    Ok(kf)
}

/// A key file parsed and checked, ready for the KDF.
pub(crate) struct CheckedKeyFile {
    params: KdfParams,
    salt: Vec<u8>,
    sealed: Vec<u8>,
    /// The repository it says it was made for, if it says.
    pub(crate) repo_id: Option<String>,
}

/// Parses a key file and checks every field, without running the KDF.
pub(crate) fn check_key_file(bytes: &[u8], key: &str) -> Result<CheckedKeyFile> {
    let kf = parse_key_file(bytes, key)?;
    let params = KdfParams {
        memory_kib: kf.memory_kib,
        iterations: kf.iterations,
        parallelism: kf.parallelism,
    };
    params
        .validate()
        .map_err(|e| Error::corrupt(key, format!("bad KDF settings: {e}")))?;
    let salt = hex::decode(&kf.salt).map_err(|_| Error::corrupt(key, "salt is not hex"))?;
    let sealed = hex::decode(&kf.master).map_err(|_| Error::corrupt(key, "key is not hex"))?;
    if sealed.len() != SEAL_OVERHEAD + 64 || sealed[0] != SEAL_VERSION || salt.len() != 16 {
        return Err(Error::corrupt(key, "sealed master key has the wrong size"));
    }
    Ok(CheckedKeyFile {
        params,
        salt,
        sealed,
        repo_id: kf.repo_id,
    })
}

/// Tries `pass` on one key file: `Ok(None)` when the passphrase is not the
/// one of this key file.
pub(crate) fn open_key_file(
    bytes: &[u8],
    key: &str,
    pass: &str,
    repo_id: &str,
) -> Result<Option<MasterKey>> {
    let CheckedKeyFile {
        params,
        salt,
        sealed,
        ..
    } = check_key_file(bytes, key)?;
    let kek = derive_kek(pass, &salt, &params)?;
    let cipher = XChaCha20Poly1305::new_from_slice(&kek[..])
        .map_err(|_| Error::internal("invalid key length"))?;
    let Ok(plain) = open_with(&cipher, &key_aad(repo_id), &sealed) else {
        return Ok(None);
    };
    let plain = Zeroizing::new(plain);
    let mut m = Zeroizing::new([0u8; 64]);
    if plain.len() != 64 {
        return Err(Error::corrupt(key, "master key has the wrong size"));
    }
    m.copy_from_slice(&plain);
    Ok(Some(MasterKey(m)))
}

/// What `key list` shows of a key file of the repository `repo_id`.
pub(crate) fn key_info(
    bytes: &[u8],
    key: &str,
    id: Id,
    current: bool,
    repo_id: &str,
) -> Result<KeyInfo> {
    let kf = parse_key_file(bytes, key)?;
    Ok(KeyInfo {
        foreign: kf.repo_id.filter(|r| r != repo_id),
        id,
        damaged: None,
        created: kf.created,
        host: kf.host,
        user: kf.user,
        memory_kib: kf.memory_kib,
        iterations: kf.iterations,
        current,
    })
}

/// True for the objects that stay plaintext: the config (and the next one
/// being installed, read before any key is opened), the key files
/// (sealed by their passphrases) and packs (whose blobs and header are
/// sealed one by one, so that range reads still work).
pub(crate) fn stored_plain(key: &str) -> bool {
    key == CONFIG_KEY
        || key == CONFIG_NEXT_KEY
        || key.starts_with(KEYS_PREFIX)
        || key.starts_with(DATA_PREFIX)
}

/// The store as the repository sees it when encrypted: every object other
/// than the config, key files and packs is sealed whole on the way in and
/// opened (authenticated) on the way out. A failed authentication is a
/// `Corrupt` error, reported like any other damage.
pub(crate) struct CryptoStore {
    inner: Arc<dyn Store>,
    crypto: Arc<Crypto>,
}

impl CryptoStore {
    pub(crate) fn new(inner: Arc<dyn Store>, crypto: Arc<Crypto>) -> CryptoStore {
        CryptoStore { inner, crypto }
    }
}

impl std::fmt::Debug for CryptoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn sealed_size(key: &str, size: u64) -> u64 {
    if stored_plain(key) {
        size
    } else {
        size.saturating_sub(SEAL_OVERHEAD as u64)
    }
}

impl Store for CryptoStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> std::result::Result<PutOutcome, StoreError> {
        if stored_plain(key) {
            return self.inner.put_if_absent(key, data);
        }
        let sealed = self
            .crypto
            .seal(key.as_bytes(), data)
            .map_err(|e| StoreError::new(ErrorKind::Other, key, e.to_string()))?;
        self.inner.put_if_absent(key, &sealed)
    }

    fn get(&self, key: &str) -> std::result::Result<Vec<u8>, StoreError> {
        let bytes = self.inner.get(key)?;
        if stored_plain(key) {
            return Ok(bytes);
        }
        self.crypto
            .open(key.as_bytes(), &bytes)
            .map_err(|why| StoreError::new(ErrorKind::Corrupt, key, why))
    }

    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> std::result::Result<Vec<u8>, StoreError> {
        if stored_plain(key) {
            return self.inner.get_range(key, offset, len);
        }
        // A whole-sealed object authenticates only as a whole: open it all,
        // then cut the range (packs, the objects read by range, are stored
        // plain with their blobs sealed one by one).
        let whole = self.get(key)?;
        let size = whole.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(whole[offset as usize..end as usize].to_vec()),
            _ => Err(StoreError::new(
                ErrorKind::Corrupt,
                key,
                format!("range {offset}+{len} is past the end of the object ({size} bytes)"),
            )),
        }
    }

    fn stat(&self, key: &str) -> std::result::Result<Option<u64>, StoreError> {
        Ok(self.inner.stat(key)?.map(|n| sealed_size(key, n)))
    }

    fn list(&self, prefix: &str) -> std::result::Result<Vec<ObjectInfo>, StoreError> {
        let mut l = self.inner.list(prefix)?;
        for o in &mut l {
            o.size = sealed_size(&o.key, o.size);
        }
        Ok(l)
    }

    fn delete(&self, key: &str) -> std::result::Result<(), StoreError> {
        self.inner.delete(key)
    }

    fn request_stats(&self) -> RequestStats {
        self.inner.request_stats()
    }
    fn tuning(&self) -> Tuning {
        self.inner.tuning()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> Crypto {
        Crypto::new(&MasterKey::generate().expect("key")).expect("crypto")
    }

    #[test]
    fn range_reads_of_a_sealed_object_return_its_plaintext_bytes() {
        let d = tempfile::tempdir().expect("tempdir");
        let local = snapback_storage::LocalStore::create(d.path().join("s")).expect("store");
        let s = CryptoStore::new(Arc::new(local), Arc::new(crypto()));
        let data: Vec<u8> = (0..200u8).collect();
        s.put_if_absent("index/ab", &data).expect("put");
        assert_eq!(
            s.get_range("index/ab", 10, 5).expect("range"),
            &data[10..15]
        );
        assert_eq!(s.get_range("index/ab", 190, 10).expect("end"), &data[190..]);
        let e = s.get_range("index/ab", 195, 10).expect_err("past the end");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let e = s.get_range("index/none", 0, 1).expect_err("missing");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn crypto_store_passes_conformance() {
        let d = tempfile::tempdir().expect("tempdir");
        let local = snapback_storage::LocalStore::create(d.path().join("s")).expect("store");
        let s = CryptoStore::new(Arc::new(local), Arc::new(crypto()));
        // 4 MiB, not 20: the AEAD is generic code, compiled unoptimised in
        // the test build of this crate (20 MiB took 7 s).
        snapback_storage::conformance::run_all_sized(&s, 4 << 20);
    }

    #[test]
    fn seal_open_and_tamper() {
        let c = crypto();
        let s = c.seal(b"index/ab", b"hello").expect("seal");
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(c.open(b"index/ab", &s).expect("open"), b"hello");
        // Another place, a flipped bit, a truncation, another key: refused.
        assert!(c.open(b"index/cd", &s).is_err());
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(c.open(b"index/ab", &t).is_err(), "bit flip at {i}");
        }
        assert!(c.open(b"index/ab", &s[..s.len() - 1]).is_err());
        assert!(crypto().open(b"index/ab", &s).is_err());
        // Same plaintext, different ciphertext (random nonces).
        assert_ne!(
            c.seal(b"k", b"x").expect("a"),
            c.seal(b"k", b"x").expect("b")
        );
    }

    #[test]
    fn chunk_ids_are_keyed() {
        let (a, b) = (crypto(), crypto());
        assert_eq!(a.chunk_id(b"page"), a.chunk_id(b"page"));
        assert_ne!(a.chunk_id(b"page"), b.chunk_id(b"page"));
        assert_ne!(a.chunk_id(b"page"), Id::of(b"page"));
    }

    #[test]
    fn key_files_open_with_their_passphrase_only() {
        let m = MasterKey::generate().expect("key");
        let p = KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        let kf = make_key_file(&m, "correct horse", &p, "aaaa1111").expect("make");
        let text = String::from_utf8(kf.clone()).expect("utf8");
        assert!(!text.contains("correct horse"));
        let got = open_key_file(&kf, "keys/x", "correct horse", "aaaa1111")
            .expect("open")
            .expect("right passphrase");
        assert_eq!(&got.0[..], &m.0[..]);
        assert!(open_key_file(&kf, "keys/x", "wrong", "aaaa1111")
            .expect("parse")
            .is_none());
        // Bound to its repository, and says which it is.
        assert!(open_key_file(&kf, "keys/x", "correct horse", "bbbb2222")
            .expect("parse")
            .is_none());
        assert_eq!(
            check_key_file(&kf, "keys/x")
                .expect("check")
                .repo_id
                .as_deref(),
            Some("aaaa1111")
        );
        assert!(make_key_file(&m, "", &p, "aaaa1111").is_err());
        assert!(KdfParams {
            memory_kib: 1024,
            ..p
        }
        .validate()
        .is_err());
        // Hostile KDF settings and salts are refused before any KDF runs.
        let mut v: serde_json::Value = serde_json::from_slice(&kf).expect("json");
        v["memory_kib"] = serde_json::json!(4 * 1024 * 1024);
        let huge = serde_json::to_vec(&v).expect("json");
        assert!(matches!(
            check_key_file(&huge, "k"),
            Err(Error::Corrupt { .. })
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&kf).expect("json");
        v["salt"] = serde_json::json!("00".repeat(4096));
        let salty = serde_json::to_vec(&v).expect("json");
        assert!(matches!(
            check_key_file(&salty, "k"),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            open_key_file(b"{\"version\": 9}", "keys/x", "p", "r"),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
        assert!(matches!(
            open_key_file(b"garbage", "keys/x", "p", "r"),
            Err(Error::Corrupt { .. })
        ));
    }
}
