//! Verified object writes and reads, and random ids: the bottom layer that
//! every operation writes and reads the store through.

use snapback_storage::{PutOutcome, Store};

use crate::error::{Error, Result};
use crate::id::Id;

/// Writes an object if absent and proves the store kept it: a store that
/// confirms a write it did not keep (or kept short) is an error, so that
/// nothing is committed on top of a lost object. An object that already
/// existed must have the same size.
pub fn put_verified(store: &dyn Store, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
    let outcome = store.put_if_absent(key, bytes)?;
    match store.stat(key)? {
        Some(n) if n == bytes.len() as u64 => Ok(outcome),
        Some(n) => Err(Error::Verification(format!(
            "object {key} is {n} bytes in the store, but {} were written; the store did not keep the data intact",
            bytes.len()
        ))),
        None => Err(Error::Verification(format!(
            "object {key} is missing right after the store confirmed the write; the store lost or never stored it, so nothing was committed"
        ))),
    }
}

/// Reads a content-named object (`<prefix><sha256 of its bytes>`) and
/// verifies its bytes against its name. A store's own integrity failure is
/// reported as damage to that object.
pub fn get_named(store: &dyn Store, key: &str, prefix: &str) -> Result<Vec<u8>> {
    let bytes = store.get(key).map_err(|e| {
        if e.kind() == snapback_storage::ErrorKind::Corrupt {
            Error::corrupt(key, e.to_string())
        } else {
            Error::from(e)
        }
    })?;
    verify_name(key, prefix, &bytes)?;
    Ok(bytes)
}

/// Checks that `bytes` hash to the name `key` gives them after `prefix`.
pub(crate) fn verify_name(key: &str, prefix: &str, bytes: &[u8]) -> Result<()> {
    let name = key.get(prefix.len()..).unwrap_or_default();
    let got = Id::of(bytes);
    if got.to_hex() != name {
        return Err(Error::corrupt(
            key,
            format!("content hashes to {}, not to its name", got.short()),
        ));
    }
    Ok(())
}

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::internal(format!(
            "the operating system's random number generator failed: {e}"
        ))
    })
}

/// `n` random bytes as hex: repository ids, lock names.
pub fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    fill_random(&mut b)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapback_storage::LocalStore;

    #[test]
    fn random_ids_are_random_hex_of_the_asked_length() {
        let a = random_hex(16).expect("random");
        let b = random_hex(16).expect("random");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b, "two random ids are different");
    }

    #[test]
    fn named_objects_are_verified_against_their_name() {
        let d = tempfile::tempdir().expect("tmp");
        let store = LocalStore::create(d.path().join("s")).expect("store");
        let good = format!("index/{}", Id::of(b"hello"));
        put_verified(&store, &good, b"hello").expect("put");
        assert_eq!(get_named(&store, &good, "index/").expect("get"), b"hello");
        let bad = format!("index/{}", Id::of(b"other"));
        put_verified(&store, &bad, b"hello").expect("put");
        let e = get_named(&store, &bad, "index/").expect_err("misnamed");
        assert!(e.to_string().contains("not to its name"), "{e}");
    }

    #[test]
    fn put_verified_refuses_an_existing_object_of_another_size() {
        let d = tempfile::tempdir().expect("tmp");
        let store = LocalStore::create(d.path().join("s")).expect("store");
        put_verified(&store, "locks/x", b"one").expect("put");
        assert_eq!(
            put_verified(&store, "locks/x", b"two").expect("same size"),
            PutOutcome::AlreadyExists
        );
        let e = put_verified(&store, "locks/x", b"longer").expect_err("other size");
        assert!(
            e.to_string().contains("did not keep the data intact"),
            "{e}"
        );
    }
}
