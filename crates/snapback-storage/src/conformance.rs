//! The backend conformance suite: one body of checks that every [`Store`]
//! implementation must pass. Backends call [`run_all`] from their own tests
//! against a real instance (a temporary directory, a local S3 server).
//!
//! Every check panics with a message naming the broken rule.

use crate::{ErrorKind, PutOutcome, Store};

/// Runs every check. The store must be empty, or at least hold nothing under
/// the `conformance/` prefix.
pub fn run_all(store: &dyn Store) {
    run_all_sized(store, 20 << 20);
}

/// [`run_all`] with the large-object check at `large` bytes (at least
/// 2 MiB) instead of 20 MiB: for a wrapper whose own work per byte is slow in
/// an unoptimised test build (the encrypting store), while the backends
/// below it run the full size.
pub fn run_all_sized(store: &dyn Store, large: usize) {
    let large = large.max(2 << 20);
    put_get_roundtrip(store);
    put_if_absent_never_replaces(store);
    missing_objects(store);
    ranges(store);
    listing(store);
    delete_is_idempotent(store);
    empty_and_large_objects(store, large);
    invalid_keys(store);
}

fn put_get_roundtrip(s: &dyn Store) {
    let key = "conformance/rt/a";
    assert_eq!(
        s.put_if_absent(key, b"hello").expect("put"),
        PutOutcome::Created,
        "a new key is Created"
    );
    assert_eq!(
        s.get(key).expect("get"),
        b"hello",
        "get returns the stored bytes"
    );
    assert_eq!(s.stat(key).expect("stat"), Some(5), "stat returns the size");
}

fn put_if_absent_never_replaces(s: &dyn Store) {
    let key = "conformance/pia/a";
    s.put_if_absent(key, b"first").expect("put");
    assert_eq!(
        s.put_if_absent(key, b"second, longer").expect("second put"),
        PutOutcome::AlreadyExists,
        "put_if_absent on an existing key reports AlreadyExists"
    );
    assert_eq!(
        s.get(key).expect("get"),
        b"first",
        "put_if_absent never replaces an object"
    );
}

fn missing_objects(s: &dyn Store) {
    let key = "conformance/missing/none";
    let e = s.get(key).expect_err("get of a missing key fails");
    assert_eq!(
        e.kind(),
        ErrorKind::NotFound,
        "a missing object is NotFound: {e}"
    );
    let e = s
        .get_range(key, 0, 1)
        .expect_err("range of a missing key fails");
    assert_eq!(
        e.kind(),
        ErrorKind::NotFound,
        "a missing object is NotFound: {e}"
    );
    assert_eq!(
        s.stat(key).expect("stat"),
        None,
        "stat of a missing object is None"
    );
}

fn ranges(s: &dyn Store) {
    let key = "conformance/range/a";
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    s.put_if_absent(key, &data).expect("put");
    assert_eq!(s.get_range(key, 0, 10).expect("range"), &data[..10]);
    assert_eq!(
        s.get_range(key, 9_990, 10).expect("range at end"),
        &data[9_990..]
    );
    assert_eq!(
        s.get_range(key, 1234, 4321).expect("range"),
        &data[1234..1234 + 4321]
    );
    assert!(
        s.get_range(key, 9_995, 10).is_err(),
        "a range past the end is an error, never a short Ok"
    );
}

fn listing(s: &dyn Store) {
    for k in [
        "conformance/list/a/1",
        "conformance/list/a/2",
        "conformance/list/b/1",
        "conformance/listx",
    ] {
        s.put_if_absent(k, k.as_bytes()).expect("put");
    }
    let listed = s.list("conformance/list/").expect("list");
    // Prune's safety window for young packs rests on this time, so it must
    // be the store's record of the write (checked loosely: within a day).
    let now = std::time::SystemTime::now();
    for o in &listed {
        let m = o
            .modified
            .unwrap_or_else(|| panic!("list gives no time of writing for {}", o.key));
        let skew = now
            .duration_since(m)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap_or_default();
        assert!(
            skew < std::time::Duration::from_secs(86_400),
            "{}: listed as written {skew:?} away from now",
            o.key
        );
    }
    let mut keys: Vec<_> = listed.into_iter().map(|o| (o.key, o.size)).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("conformance/list/a/1".to_string(), 20),
            ("conformance/list/a/2".to_string(), 20),
            ("conformance/list/b/1".to_string(), 20),
        ],
        "list returns every object under the prefix with its size, and nothing else"
    );
    let mut keys: Vec<_> = s
        .list("conformance/list/a")
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["conformance/list/a/1", "conformance/list/a/2"],
        "a prefix need not end at a '/'"
    );
    assert!(
        s.list("conformance/nothing-here/")
            .expect("list")
            .is_empty(),
        "an empty prefix lists nothing"
    );
}

fn delete_is_idempotent(s: &dyn Store) {
    let key = "conformance/del/a";
    s.put_if_absent(key, b"x").expect("put");
    s.delete(key).expect("delete");
    assert_eq!(s.stat(key).expect("stat"), None, "a deleted object is gone");
    s.delete(key).expect("deleting a missing object is Ok");
    assert_eq!(
        s.put_if_absent(key, b"y").expect("put after delete"),
        PutOutcome::Created
    );
    assert_eq!(s.get(key).expect("get"), b"y");
}

fn empty_and_large_objects(s: &dyn Store, large: usize) {
    s.put_if_absent("conformance/size/empty", b"")
        .expect("put empty");
    assert_eq!(s.get("conformance/size/empty").expect("get"), b"");
    assert_eq!(s.stat("conformance/size/empty").expect("stat"), Some(0));
    let big: Vec<u8> = (0..large as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    s.put_if_absent("conformance/size/big", &big)
        .expect("put a large object");
    assert_eq!(
        s.stat("conformance/size/big").expect("stat"),
        Some(big.len() as u64)
    );
    assert!(
        s.get("conformance/size/big").expect("get") == big,
        "a {large}-byte object round-trips"
    );
    // A 1 MiB range three quarters in (15 MiB in of 20 MiB).
    let off = (large - (1 << 20)) / 4 * 3 + (1 << 18);
    assert!(
        s.get_range("conformance/size/big", off as u64, 1 << 20)
            .expect("range")
            == big[off..off + (1 << 20)]
    );
}

fn invalid_keys(s: &dyn Store) {
    for k in ["", "/x", "a/../b", "a b"] {
        let e = s.put_if_absent(k, b"x").expect_err("invalid key refused");
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "key {k:?}: {e}");
    }
}
