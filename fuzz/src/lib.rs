//! The fuzz checks: one function per parser of repository objects. Each
//! feeds arbitrary bytes to the parser, which must return a value or an
//! error and never panic, hang or exhaust memory; where it accepts the
//! input, what it returns must satisfy the format's invariants and survive
//! a round trip through the encoder.
//!
//! Used by the cargo-fuzz targets in `fuzz_targets/` and, through
//! `#[path]`, by the normal test suite (`tests/e2e/fuzz_regressions.rs`),
//! which replays `fixtures/fuzz-regressions/<target>/` and `fuzz/seeds/`.
//! So this file depends on nothing but snapback-core, snapback-repair and
//! serde_json.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use snapback_core::fuzzing::{
    apply_patch, check_key_file, decode_index, decode_part, decode_patch, encode_index,
    fixed_key_codec, open_sealed, parse_header, parse_prefix, seal, BlobCodec,
};
use snapback_core::storage::{ErrorKind, ObjectInfo, PutOutcome, Store, StoreError};
use snapback_core::{Id, LockInfo, Manifest, RepoConfig};

/// Every target, by name (the names of `fuzz_targets/*.rs`).
pub const TARGETS: &[&str] = &[
    "config",
    "manifest",
    "index",
    "pack",
    "chunklist",
    "lock",
    "audit",
    "restore_script",
    "sealed",
];

/// Runs the check of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "config" => config(data),
        "manifest" => manifest(data),
        "index" => index(data),
        "pack" => pack(data),
        "chunklist" => chunklist(data),
        "lock" => lock(data),
        "audit" => audit(data),
        "restore_script" => restore_script(data),
        "sealed" => sealed(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// `sealed`: the parsers of encrypted repositories: a key file (parsed and
/// checked, without the KDF), and the sealed envelope of every encrypted
/// object, which must refuse anything it did not seal (the input split at
/// its first byte into associated data and message) and open what it did.
pub fn sealed(data: &[u8]) {
    let _ = check_key_file(data);
    let split = data
        .first()
        .map_or(0, |&n| (n as usize).min(data.len() - 1) + 1);
    let (aad, msg) = data.split_at(split.min(data.len()));
    assert!(open_sealed(aad, msg).is_err(), "forged a sealed message");
    let s = seal(aad, msg).expect("seal");
    assert_eq!(open_sealed(aad, &s).expect("open what was sealed"), msg);
}

/// `config`: RepoConfig::parse; what it accepts validates and round-trips.
pub fn config(data: &[u8]) {
    if let Ok(c) = RepoConfig::parse(data) {
        c.validate().expect("a parsed config is valid");
        let again = serde_json::to_vec(&c).expect("encode");
        assert_eq!(RepoConfig::parse(&again).expect("reparse"), c);
    }
}

/// `manifest`: Manifest::parse; what it accepts round-trips and has only
/// absolute file paths.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data, "fuzz") {
        for f in &m.files {
            assert!(f.path.starts_with('/'), "accepted a relative path");
        }
        let again = m.encode().expect("encode");
        assert_eq!(Manifest::parse(&again, "fuzz").expect("reparse"), m);
    }
}

/// `index`: decode_index; every entry lies inside its pack, and what it
/// accepts re-encodes to an object that decodes to the same packs.
pub fn index(data: &[u8]) {
    if let Ok(packs) = decode_index(data, "fuzz") {
        for p in &packs {
            for e in &p.entries {
                assert!(e.offset as u64 + e.stored_len as u64 <= p.size);
            }
        }
        let again = encode_index(&packs).expect("a decoded index re-encodes");
        assert_eq!(decode_index(&again, "fuzz").expect("redecode"), packs);
    }
}

/// `pack`: parse_prefix and parse_header, on the input as a whole pack and
/// with a pack size taken from the input; entries are contiguous, inside
/// the pack, and account for all of it.
pub fn pack(data: &[u8]) {
    // Both forms: a plain header, and a sealed one (encrypted repository).
    pack_with(&BlobCodec::plain(1), data);
    pack_with(&fixed_key_codec(), data);
}

fn pack_with(codec: &BlobCodec, data: &[u8]) {
    let Ok(prefix) = parse_prefix(codec, data, "fuzz") else {
        return;
    };
    let hlen = prefix.hlen as usize;
    let header = &data[12..data.len().min(12 + hlen)];
    let sizes = [
        data.len() as u64,
        data.get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .unwrap_or(0),
    ];
    for size in sizes {
        if let Ok(entries) = parse_header(codec, &prefix, header, size, "fuzz") {
            let mut at = 12 + header.len() as u64;
            for e in &entries {
                assert_eq!(e.offset as u64, at, "entries are back to back");
                at += e.stored_len as u64;
                assert!(at <= size, "entry inside the pack");
            }
            assert_eq!(at, size, "the header accounts for the whole pack");
        }
    }
}

/// `chunklist`: decode_part, decode_patch and apply_patch. The input is
/// `count u64 | part_len u32 | part | patch`.
pub fn chunklist(data: &[u8]) {
    let _ = decode_part(data, "fuzz");
    let _ = decode_patch(data, "fuzz");
    if data.len() < 12 {
        return;
    }
    let count = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let part_len = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
    let rest = &data[12..];
    let (part, patch) = rest.split_at(part_len.min(rest.len()));
    let base = decode_part(part, "fuzz").unwrap_or_default();
    let patch = decode_patch(patch, "fuzz").unwrap_or_default();
    if let Ok(list) = apply_patch(base.clone(), &patch, count, "fuzz") {
        assert_eq!(list.len() as u64, count);
        for (i, e) in list.iter().enumerate() {
            let patched = patch.iter().rev().find(|(j, _)| *j == i as u64);
            match patched {
                Some((_, p)) => assert_eq!(e, p),
                None => assert_eq!(Some(e), base.get(i), "entry {i} from the base"),
            }
        }
    }
}

/// `lock`: a lock object (LockInfo JSON) round-trips; its time parses or
/// is refused without a panic.
pub fn lock(data: &[u8]) {
    if let Ok(info) = serde_json::from_slice::<LockInfo>(data) {
        let again = serde_json::to_vec(&info).expect("encode");
        assert_eq!(
            serde_json::from_slice::<LockInfo>(&again).expect("reparse"),
            info
        );
        let _ = snapback_core::time::parse_rfc3339(&info.time);
    }
}

/// `audit`: audit entries as JSON, and as a log: the input split at NUL
/// bytes into up to four entries, each claimed in order, plus the input
/// itself under a key made of its first line. `audit verify` must not
/// panic, and the entries it accepts are numbered 1..n and chained.
pub fn audit(data: &[u8]) {
    let _ = serde_json::from_slice::<snapback_repair::AuditEntry>(data);
    let store = MemStore::default();
    for (i, part) in data.split(|b| *b == 0).take(4).enumerate() {
        let seq = i as u64 + 1;
        let hash = Id::of(part).to_hex();
        store.insert(&format!("audit/{seq:010}-{hash}"), part);
        store.insert(&format!("audit/{seq:010}"), hash.as_bytes());
    }
    if let Some(Ok(first)) = data.split(|b| *b == b'\n').next().map(std::str::from_utf8) {
        store.insert(&format!("audit/{first}"), data);
    }
    let r = snapback_repair::audit_verify(&store).expect("a memory store never fails");
    let mut prev: Option<String> = None;
    for (i, e) in r.entries.iter().enumerate() {
        assert_eq!(e.entry.seq, i as u64 + 1);
        assert_eq!(e.entry.prev, prev);
        prev = Some(e.hash.clone());
    }
}

/// `restore_script`: LoadedScript::parse; what it accepts has an absolute
/// live path, something to do, and actions for every table.
pub fn restore_script(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    if let Ok(s) = snapback_repair::LoadedScript::parse(Path::new("fuzz.toml"), text) {
        assert!(s.script.live.is_absolute());
        assert!(!s.script.tables.is_empty() || !s.script.sql.is_empty());
        for t in &s.script.tables {
            assert!(!t.actions.is_empty() && t.batch() > 0);
        }
    }
}

/// A store in memory, for the audit log.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    fn insert(&self, key: &str, data: &[u8]) {
        self.objects
            .lock()
            .expect("lock")
            .insert(key.to_string(), data.to_vec());
    }

    fn not_found(key: &str) -> StoreError {
        StoreError::new(ErrorKind::NotFound, key, "no such object")
    }
}

impl Store for MemStore {
    fn location(&self) -> String {
        "memory".into()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let mut m = self.objects.lock().expect("lock");
        if m.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        m.insert(key.to_string(), data.to_vec());
        Ok(PutOutcome::Created)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.objects
            .lock()
            .expect("lock")
            .get(key)
            .cloned()
            .ok_or_else(|| Self::not_found(key))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let all = self.get(key)?;
        let end = offset.checked_add(len).filter(|e| *e <= all.len() as u64);
        match end {
            Some(end) => Ok(all[offset as usize..end as usize].to_vec()),
            None => Err(StoreError::new(
                ErrorKind::Corrupt,
                key,
                "range past the end",
            )),
        }
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .objects
            .lock()
            .expect("lock")
            .get(key)
            .map(|v| v.len() as u64))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self
            .objects
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
                modified: None,
            })
            .collect())
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.objects.lock().expect("lock").remove(key);
        Ok(())
    }
}
