//! The audit log: chaining, tamper detection, concurrent appends.

use std::sync::Arc;

use snapback_core::storage::{LocalStore, Store};
use snapback_repair::{audit_append, audit_list, audit_verify, AuditEntry, ChangeSet};

fn entry(id: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        prev: None,
        time: "2026-02-02T17:00:00Z".into(),
        user: "ops".into(),
        host: "h".into(),
        kind: "repair".into(),
        repair_id: id.into(),
        undoes: None,
        live: "/x.db".into(),
        script_path: None,
        script: Some("x = 1".into()),
        script_sha256: None,
        source_snapshot: None,
        source_db: None,
        pre_repair_snapshot: None,
        counts: vec![],
        changes: ChangeSet::default(),
        conflicts: vec![],
        sql_steps: vec![],
        remaining_differences: 0,
        snapback_version: "test".into(),
        failed: None,
    }
}

fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let d = tempfile::tempdir().expect("tempdir");
    let s = LocalStore::create(d.path().join("repo")).expect("store");
    (d, Arc::new(s))
}

#[test]
fn entries_chain_and_list_in_order() {
    let (_d, s) = store();
    let a = audit_append(s.as_ref(), entry("a")).expect("a");
    let b = audit_append(s.as_ref(), entry("b")).expect("b");
    assert_eq!((a.entry.seq, b.entry.seq), (1, 2));
    assert_eq!(a.entry.prev, None);
    assert_eq!(b.entry.prev.as_deref(), Some(a.hash.as_str()));
    let l = audit_list(s.as_ref()).expect("list");
    assert_eq!(
        l.iter()
            .map(|e| e.entry.repair_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn a_modified_entry_is_named_as_the_first_broken_link() {
    let (_d, s) = store();
    for id in ["a", "b", "c"] {
        audit_append(s.as_ref(), entry(id)).expect("append");
    }
    let l = audit_list(s.as_ref()).expect("list");
    let victim = &l[1];
    let mut bytes = s.get(&victim.key).expect("get");
    let pos = bytes
        .windows(5)
        .position(|w| w == b"x = 1")
        .expect("script text");
    bytes[pos + 4] = b'2';
    s.delete(&victim.key).expect("delete");
    s.put_if_absent(&victim.key, &bytes).expect("put");
    let r = audit_verify(s.as_ref()).expect("verify");
    let broken = r.broken.expect("broken");
    assert!(broken.starts_with("entry 2 "), "{broken}");
    assert!(broken.contains("modified"), "{broken}");
    assert_eq!(r.entries.len(), 1, "entry 1 still checks");
    assert!(audit_list(s.as_ref()).is_err());
}

#[test]
fn a_removed_entry_breaks_the_chain() {
    let (_d, s) = store();
    for id in ["a", "b", "c"] {
        audit_append(s.as_ref(), entry(id)).expect("append");
    }
    s.delete("audit/0000000002").expect("delete claim");
    let r = audit_verify(s.as_ref()).expect("verify");
    assert!(
        r.broken
            .as_deref()
            .unwrap_or("")
            .contains("entry 2 is missing"),
        "{:?}",
        r.broken
    );
}

#[test]
fn a_rewritten_history_is_caught_by_prev_links() {
    // Replace entry 1 and its claim with a new, self-consistent entry: entry
    // 2's `prev` no longer matches.
    let (_d, s) = store();
    for id in ["a", "b"] {
        audit_append(s.as_ref(), entry(id)).expect("append");
    }
    let l = audit_list(s.as_ref()).expect("list");
    s.delete(&l[0].key).expect("delete");
    s.delete("audit/0000000001").expect("delete claim");
    let mut forged = l[0].entry.clone();
    forged.user = "mallory".into();
    let bytes = serde_json::to_vec_pretty(&forged).expect("json");
    let h = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    s.put_if_absent(&format!("audit/0000000001-{h}"), &bytes)
        .expect("put");
    s.put_if_absent("audit/0000000001", h.as_bytes())
        .expect("claim");
    let r = audit_verify(s.as_ref()).expect("verify");
    let b = r.broken.expect("broken");
    assert!(b.starts_with("entry 2 ") && b.contains("prev"), "{b}");
}

#[test]
fn concurrent_appends_form_one_chain() {
    let (_d, s) = store();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s = s.clone();
            sc.spawn(move || {
                for i in 0..8 {
                    audit_append(s.as_ref(), entry(&format!("t{t}-{i}"))).expect("append");
                }
            });
        }
    });
    let r = audit_verify(s.as_ref()).expect("verify");
    assert_eq!(r.broken, None);
    assert_eq!(r.entries.len(), 32);
    assert!(r.unclaimed.is_empty(), "{:?}", r.unclaimed);
}

/// A real local store that confirms every write but keeps none under
/// `audit/`: a store losing data.
#[derive(Debug)]
struct LosesAuditWrites(LocalStore);

impl Store for LosesAuditWrites {
    fn location(&self) -> String {
        self.0.location()
    }
    fn put_if_absent(
        &self,
        key: &str,
        data: &[u8],
    ) -> Result<snapback_core::storage::PutOutcome, snapback_core::storage::StoreError> {
        if key.starts_with("audit/") {
            return Ok(snapback_core::storage::PutOutcome::Created);
        }
        self.0.put_if_absent(key, data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, snapback_core::storage::StoreError> {
        self.0.get(key)
    }
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, snapback_core::storage::StoreError> {
        self.0.get_range(key, offset, len)
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, snapback_core::storage::StoreError> {
        self.0.stat(key)
    }
    fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<snapback_core::storage::ObjectInfo>, snapback_core::storage::StoreError> {
        self.0.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), snapback_core::storage::StoreError> {
        self.0.delete(key)
    }
}

#[test]
fn audit_append_fails_when_the_store_loses_the_entry() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = LosesAuditWrites(LocalStore::create(d.path().join("repo")).expect("store"));
    let e = audit_append(&s, entry("lost")).expect_err("a lost entry is not appended");
    assert!(e.to_string().contains("missing right after"), "{e}");
    assert!(audit_list(&s).expect("list").is_empty());
}
