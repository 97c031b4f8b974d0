use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest: the name of a chunk, a pack, an index or a snapshot.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl std::hash::Hash for Id {
    /// A digest is uniformly distributed already: its first 8 bytes are as
    /// good a key as all 32 (and equal ids give equal keys), at a fraction
    /// of the hashing. The maps of every blob of a repository (hundreds of
    /// thousands of entries, built and probed by every snapshot) spent
    /// most of their time hashing.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(b));
    }
}

/// The hasher of maps keyed by [`Id`]: the key's 8 bytes as they are,
/// with no SipHash over them. Only for ids, which are digests of what they
/// name (SHA-256, or a keyed MAC in an encrypted repository), so that no
/// one can choose ids that fall together without breaking the digest.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Other keys (never an `Id`): FNV-1a, so the hasher stays correct.
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// `HashMap<Id, V>` without SipHash (see [`IdHasher`]).
pub type IdMap<V> = std::collections::HashMap<Id, V, std::hash::BuildHasherDefault<IdHasher>>;
/// `HashSet<Id>` without SipHash (see [`IdHasher`]).
pub type IdSet = std::collections::HashSet<Id, std::hash::BuildHasherDefault<IdHasher>>;

impl Id {
    pub fn of(data: &[u8]) -> Id {
        Id(Sha256::digest(data).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as shown in listings.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        Id::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not a SHA-256 hex id: {s:?}")))
    }
}

/// The whole-database checksum: a sum, modulo 2^128, of one term per chunk,
/// where a term is the first 16 bytes of SHA-256(offset as u64 LE || chunk id).
///
/// Because it is a sum, replacing one chunk updates it with one subtraction
/// and one addition, without reading the rest of the file. Because each term
/// binds the chunk's offset, moving content changes it. A restore or a mount
/// recomputes it from the chunks it verified, proving it rebuilt the captured
/// image chunk for chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbChecksum(pub u128);

impl DbChecksum {
    pub fn term(offset: u64, chunk: &Id) -> u128 {
        let mut h = Sha256::new();
        h.update(offset.to_le_bytes());
        h.update(chunk.0);
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        u128::from_le_bytes(b)
    }

    pub fn add(&mut self, offset: u64, chunk: &Id) {
        self.0 = self.0.wrapping_add(Self::term(offset, chunk));
    }

    pub fn remove(&mut self, offset: u64, chunk: &Id) {
        self.0 = self.0.wrapping_sub(Self::term(offset, chunk));
    }

    pub fn to_hex(&self) -> String {
        format!("{:032x}", self.0)
    }

    pub fn from_hex(s: &str) -> Option<DbChecksum> {
        u128::from_str_radix(s, 16).ok().map(DbChecksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        let id = Id::of(b"abc");
        assert_eq!(
            id.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_eq!(id.short(), "ba7816bf");
        assert_eq!(Id::from_hex("xyz"), None);
    }

    #[test]
    fn checksum_updates_page_by_page() {
        let a = Id::of(b"a");
        let b = Id::of(b"b");
        let c = Id::of(b"c");
        let mut full = DbChecksum::default();
        full.add(0, &a);
        full.add(4096, &b);
        let mut updated = full;
        updated.remove(4096, &b);
        updated.add(4096, &c);
        let mut direct = DbChecksum::default();
        direct.add(4096, &c);
        direct.add(0, &a);
        assert_eq!(updated, direct);
        let mut swapped = DbChecksum::default();
        swapped.add(0, &b);
        swapped.add(4096, &a);
        assert_ne!(swapped, full, "moving content changes the checksum");
    }
}
