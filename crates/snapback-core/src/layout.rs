//! The repository's key layout: every object key is spelled here, once.
//!
//! ```text
//! config                                 RepoConfig (JSON), written by init;
//!                                        replaced only to add a feature
//! config.next                            the config being installed (see
//!                                        `Repository::ensure_feature`)
//! data/<xx>/<pack id>                    packs (xx: the first two hex digits)
//! index/<index id>                       index objects
//! snapshots/<snapshot id>                manifests (JSON), the commit records
//! timeline/<segment id>                  timeline segments (format 2)
//! dicts/<dictionary id>                  zstd dictionaries (format 2, feature
//!                                        "zstd-dict")
//! keys/<key id>                          key files (encrypted repositories only)
//! locks/<ns, 20 digits>-<random>         locks (JSON)
//! checks/<ns, 20 digits>-<kind>          check records (JSON); kind is
//!                                        `structure` or `read-data`
//! releases/<snapshot id>                 pre-repair snapshots released to retention
//! audit/<seq, 10 digits>-<sha256>        audit entries (JSON)
//! audit/<seq, 10 digits>                 audit claims: the sha256 of that entry
//! ```
//!
//! Content-named objects (packs, indexes, manifests, dictionaries, key
//! files) are named by the SHA-256 of their stored bytes (of the plaintext
//! in an encrypted repository); `object::get_named` checks that.

use crate::id::Id;

pub const CONFIG_KEY: &str = "config";
pub const CONFIG_NEXT_KEY: &str = "config.next";
pub const TIMELINE_PREFIX: &str = "timeline/";
pub const DICT_PREFIX: &str = "dicts/";
pub const DATA_PREFIX: &str = "data/";
pub const INDEX_PREFIX: &str = "index/";
pub const SNAPSHOT_PREFIX: &str = "snapshots/";
pub const KEYS_PREFIX: &str = "keys/";
pub const LOCK_PREFIX: &str = "locks/";
pub const CHECK_PREFIX: &str = "checks/";
pub const RELEASE_PREFIX: &str = "releases/";
pub const AUDIT_PREFIX: &str = "audit/";

/// `data/<xx>/<id>`.
pub fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("{DATA_PREFIX}{}/{}", &h[..2], h)
}

/// The pack a `data/` key names, if it is named like one.
pub fn pack_id_from_key(key: &str) -> Option<Id> {
    let rest = key.strip_prefix(DATA_PREFIX)?;
    let (dir, name) = rest.split_once('/')?;
    let id = Id::from_hex(name)?;
    (dir == &name[..2]).then_some(id)
}

/// `index/<id>`.
pub fn index_key(id: &Id) -> String {
    format!("{INDEX_PREFIX}{id}")
}

/// `snapshots/<id>`.
pub fn snapshot_key(id: &Id) -> String {
    format!("{SNAPSHOT_PREFIX}{id}")
}

/// The snapshot a `snapshots/` key names, if it is named like one.
pub fn snapshot_id_from_key(key: &str) -> Option<Id> {
    key.strip_prefix(SNAPSHOT_PREFIX).and_then(Id::from_hex)
}

/// `timeline/<id>`.
pub fn timeline_key(id: &Id) -> String {
    format!("{TIMELINE_PREFIX}{id}")
}

/// The segment a `timeline/` key names, if it is named like one.
pub fn timeline_id_from_key(key: &str) -> Option<Id> {
    key.strip_prefix(TIMELINE_PREFIX).and_then(Id::from_hex)
}

/// `dicts/<id>`.
pub fn dict_key(id: &Id) -> String {
    format!("{DICT_PREFIX}{id}")
}

/// The dictionary a `dicts/` key names, if it is named like one.
pub fn dict_id_from_key(key: &str) -> Option<Id> {
    key.strip_prefix(DICT_PREFIX).and_then(Id::from_hex)
}

/// `keys/<id>`.
pub fn key_file_key(id: &Id) -> String {
    format!("{KEYS_PREFIX}{id}")
}

/// The key file a `keys/` key names, if it is named like one.
pub fn key_file_id_from_key(key: &str) -> Option<Id> {
    key.strip_prefix(KEYS_PREFIX).and_then(Id::from_hex)
}

/// `locks/<ns>-<random>`: ordered by time, unique by the random part.
pub fn lock_key(unix_nanos: i128, random: &str) -> String {
    format!("{LOCK_PREFIX}{:020}-{random}", unix_nanos.max(0))
}

fn check_kind_suffix(read_data: bool) -> &'static str {
    if read_data {
        "-read-data"
    } else {
        "-structure"
    }
}

/// `checks/<ns>-<kind>`: ordered by time, each kind of check apart.
pub fn check_key(unix_nanos: i128, read_data: bool) -> String {
    format!(
        "{CHECK_PREFIX}{:020}{}",
        unix_nanos.max(0),
        check_kind_suffix(read_data)
    )
}

/// The kind a check record's key names: `Some(read_data)`, or `None` for
/// records written before keys carried their kind.
pub fn check_kind_of_key(key: &str) -> Option<bool> {
    if key.ends_with(check_kind_suffix(true)) {
        Some(true)
    } else if key.ends_with(check_kind_suffix(false)) {
        Some(false)
    } else {
        None
    }
}

/// `releases/<snapshot id>`.
pub fn release_key(id: &Id) -> String {
    format!("{RELEASE_PREFIX}{id}")
}

/// The snapshot a `releases/` key names, if it is named like one.
pub fn release_id_from_key(key: &str) -> Option<Id> {
    key.strip_prefix(RELEASE_PREFIX).and_then(Id::from_hex)
}

/// `audit/<seq>-<sha256>`: an audit entry.
pub fn audit_entry_key(seq: u64, sha256_hex: &str) -> String {
    format!("{AUDIT_PREFIX}{seq:010}-{sha256_hex}")
}

/// `audit/<seq>`: the claim of sequence number `seq`.
pub fn audit_claim_key(seq: u64) -> String {
    format!("{AUDIT_PREFIX}{seq:010}")
}

/// An `audit/` key's sequence number, and the entry hash it names (`None`
/// for a claim). `None` when the key is not named like either.
pub fn parse_audit_key(key: &str) -> Option<(u64, Option<&str>)> {
    let rest = key.strip_prefix(AUDIT_PREFIX)?;
    let (seq, hash) = match rest.split_once('-') {
        Some((s, h)) => (s, Some(h)),
        None => (rest, None),
    };
    if seq.len() != 10 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(h) = hash {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
    }
    Some((seq.parse().ok()?, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keys_roundtrip() {
        let id = Id::of(b"x");
        assert_eq!(pack_id_from_key(&pack_key(&id)), Some(id));
        assert_eq!(pack_id_from_key("data/zz/abc"), None);
    }

    #[test]
    fn layout_keys_keep_the_stored_format() {
        let id = Id::of(b"x");
        let h = id.to_hex();
        assert_eq!(pack_key(&id), format!("data/{}/{h}", &h[..2]));
        assert_eq!(index_key(&id), format!("index/{h}"));
        assert_eq!(snapshot_key(&id), format!("snapshots/{h}"));
        assert_eq!(snapshot_id_from_key(&snapshot_key(&id)), Some(id));
        assert_eq!(timeline_key(&id), format!("timeline/{h}"));
        assert_eq!(timeline_id_from_key(&timeline_key(&id)), Some(id));
        assert_eq!(dict_key(&id), format!("dicts/{h}"));
        assert_eq!(dict_id_from_key(&dict_key(&id)), Some(id));
        assert_eq!(key_file_key(&id), format!("keys/{h}"));
        assert_eq!(key_file_id_from_key(&key_file_key(&id)), Some(id));
        assert_eq!(release_key(&id), format!("releases/{h}"));
        assert_eq!(release_id_from_key(&release_key(&id)), Some(id));
        assert_eq!(lock_key(42, "abcdef"), "locks/00000000000000000042-abcdef");
        assert_eq!(check_key(7, true), "checks/00000000000000000007-read-data");
        assert_eq!(
            check_key(-1, false),
            "checks/00000000000000000000-structure"
        );
        assert_eq!(check_kind_of_key(&check_key(7, true)), Some(true));
        assert_eq!(check_kind_of_key(&check_key(7, false)), Some(false));
        assert_eq!(check_kind_of_key("checks/00000000000000000007"), None);
        assert_eq!(audit_claim_key(3), "audit/0000000003");
        assert_eq!(parse_audit_key(&audit_claim_key(3)), Some((3, None)));
        assert_eq!(
            parse_audit_key(&audit_entry_key(3, &h)),
            Some((3, Some(h.as_str())))
        );
        assert_eq!(parse_audit_key("audit/12-ab"), None);
    }
}
