//! The audit trail: an append-only, hash-chained log in the repository.
//!
//! Layout (keys from `snapback_core::layout`; objects are only ever
//! created, with the core's verified put: put-if-absent, then the size
//! checked):
//! ```text
//! audit/<seq, 10 digits>-<sha256 of the entry>   the entry (JSON)
//! audit/<seq, 10 digits>                          the claim: that sha256
//! ```
//! An entry carries the sha256 of the previous entry (`prev`), so changing
//! or removing any entry breaks the chain after it. Appending writes the
//! entry, then claims its sequence number; the claim is what orders the
//! log. When two writers race for a number, one claim wins; the loser
//! removes its unclaimed entry and appends again after the winner. An entry
//! left unclaimed by a crash is ignored (and reported by `verify`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use snapback_core::storage::{PutOutcome, Store};

use crate::changes::{ChangeSet, Conflict, TableCounts};
use crate::error::{Error, Result};
use crate::script::sha256_hex;

pub use snapback_core::layout::AUDIT_PREFIX;
use snapback_core::layout::{audit_claim_key, audit_entry_key, parse_audit_key};
use snapback_core::object::put_verified;

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub seq: u64,
    /// sha256 of the previous entry's bytes; `None` for the first.
    pub prev: Option<String>,
    pub time: String,
    pub user: String,
    pub host: String,
    /// "repair", "undo", or "abandon" (a run closed unfinished with
    /// `repair --abandon`; `changes` holds what it had committed).
    pub kind: String,
    pub repair_id: String,
    /// For an undo: the repair it reverts.
    #[serde(default)]
    pub undoes: Option<String>,
    pub live: String,
    #[serde(default)]
    pub script_path: Option<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub script_sha256: Option<String>,
    #[serde(default)]
    pub source_snapshot: Option<String>,
    #[serde(default)]
    pub source_db: Option<String>,
    pub pre_repair_snapshot: Option<String>,
    pub counts: Vec<TableCounts>,
    /// Exactly the rows changed: per row, table, key, before and after.
    pub changes: ChangeSet,
    /// Rows planned but left alone, and why.
    pub conflicts: Vec<Conflict>,
    /// Raw SQL steps that ran, with the number of rows each changed.
    #[serde(default)]
    pub sql_steps: Vec<SqlStepRecord>,
    /// Differences left in the selection after the repair (guards and
    /// conflicts aside); 0 when the repair verified.
    pub remaining_differences: u64,
    pub snapback_version: String,
    /// Set when the run stopped on an error: the error. `changes` then holds
    /// what the run had committed (undo reverts it); the run stays
    /// unfinished until the same script resumes it or it is abandoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SqlStepRecord {
    pub statement: String,
    pub rows_changed: u64,
}

/// A stored entry and its key.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub key: String,
    pub hash: String,
    pub entry: AuditEntry,
}

struct Listing {
    claims: BTreeMap<u64, String>,
    entries: BTreeMap<u64, Vec<String>>,
}

fn listing(store: &dyn Store) -> Result<Listing> {
    let mut claims = BTreeMap::new();
    let mut entries: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for o in store
        .list(AUDIT_PREFIX)
        .map_err(snapback_core::Error::from)?
    {
        match parse_audit_key(&o.key) {
            Some((seq, Some(_))) => entries.entry(seq).or_default().push(o.key),
            Some((seq, None)) => {
                claims.insert(seq, o.key);
            }
            None => {
                tracing::warn!(key = %o.key, "ignoring an object under audit/ that is not named like an audit entry")
            }
        }
    }
    Ok(Listing { claims, entries })
}

fn get(store: &dyn Store, key: &str) -> Result<Vec<u8>> {
    Ok(store.get(key).map_err(snapback_core::Error::from)?)
}

/// The claimed hash of the last entry, and the next sequence number.
fn tail(store: &dyn Store) -> Result<(Option<String>, u64)> {
    let l = listing(store)?;
    match l.claims.keys().next_back() {
        None => Ok((None, 1)),
        Some(&seq) => {
            let h = String::from_utf8(get(store, &audit_claim_key(seq))?)
                .map_err(|_| Error::Audit(format!("claim {} is not text", audit_claim_key(seq))))?;
            Ok((Some(h.trim().to_string()), seq + 1))
        }
    }
}

/// Appends an entry (its `seq` and `prev` are filled in here) and returns
/// its key.
pub fn append(store: &dyn Store, mut entry: AuditEntry) -> Result<StoredEntry> {
    for _ in 0..100 {
        let (prev, seq) = tail(store)?;
        entry.seq = seq;
        entry.prev = prev;
        let bytes = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::Audit(format!("cannot encode an entry: {e}")))?;
        let hash = sha256_hex(&bytes);
        let key = audit_entry_key(seq, &hash);
        put_verified(store, &key, &bytes)?;
        match put_verified(store, &audit_claim_key(seq), hash.as_bytes())? {
            PutOutcome::Created => {
                tracing::info!(key = %key, "audit entry appended");
                return Ok(StoredEntry { key, hash, entry });
            }
            PutOutcome::AlreadyExists => {
                // Lost the race for this number: our entry is unclaimed.
                let winner = get(store, &audit_claim_key(seq))?;
                if winner == hash.as_bytes() {
                    return Ok(StoredEntry { key, hash, entry });
                }
                store.delete(&key).map_err(snapback_core::Error::from)?;
            }
        }
    }
    Err(Error::Audit(
        "could not append after 100 attempts: other writers keep appending; try again".into(),
    ))
}

/// Every claimed entry in order, each checked against its name. Stops with
/// an error at the first entry that does not check; `verify` says more.
pub fn list(store: &dyn Store) -> Result<Vec<StoredEntry>> {
    let r = verify(store)?;
    if let Some(b) = r.broken {
        return Err(Error::Audit(format!(
            "the audit chain is broken: {b}; run `snapback audit verify`"
        )));
    }
    Ok(r.entries)
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Entries checked before the first broken link.
    pub entries: Vec<StoredEntry>,
    /// The first broken link, described.
    pub broken: Option<String>,
    /// Entries that no claim refers to (a crash while appending).
    pub unclaimed: Vec<String>,
}

/// Checks the whole chain: claims numbered 1..N without gaps, each naming
/// an entry whose content hashes to its name, whose `seq` matches, and
/// whose `prev` is the previous entry's hash.
pub fn verify(store: &dyn Store) -> Result<VerifyReport> {
    let l = listing(store)?;
    let mut report = VerifyReport::default();
    let mut prev: Option<String> = None;
    for (expected, (&seq, claim)) in (1u64..).zip(l.claims.iter()) {
        let fail = |why: String| Some(format!("entry {seq} ({claim}): {why}"));
        if seq != expected {
            report.broken = Some(format!(
                "entry {expected} is missing (the next claim is {seq}): an entry was removed"
            ));
            break;
        }
        let hash = match get(store, claim).map(String::from_utf8) {
            Ok(Ok(h)) => h.trim().to_string(),
            Ok(Err(_)) => {
                report.broken = fail("the claim is not text".into());
                break;
            }
            Err(e) => {
                report.broken = fail(format!("cannot read the claim: {e}"));
                break;
            }
        };
        let key = audit_entry_key(seq, &hash);
        let bytes = match get(store, &key) {
            Ok(b) => b,
            Err(e) => {
                report.broken = fail(format!("the claimed entry {key} cannot be read: {e}"));
                break;
            }
        };
        let got = sha256_hex(&bytes);
        if got != hash {
            report.broken = fail(format!(
                "content hashes to {got}, not to its name: the entry was modified"
            ));
            break;
        }
        let entry: AuditEntry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                report.broken = fail(format!("not an audit entry: {e}"));
                break;
            }
        };
        if entry.seq != seq {
            report.broken = fail(format!("it says it is entry {}", entry.seq));
            break;
        }
        if entry.prev != prev {
            report.broken = fail(format!(
                "its `prev` is {:?} but the previous entry hashes to {:?}: the chain was altered before it",
                entry.prev, prev
            ));
            break;
        }
        prev = Some(hash.clone());
        report.entries.push(StoredEntry { key, hash, entry });
    }
    for (seq, keys) in &l.entries {
        let claimed = report
            .entries
            .iter()
            .find(|e| e.entry.seq == *seq)
            .map(|e| e.key.clone());
        for k in keys {
            if Some(k) != claimed.as_ref() && report.broken.is_none() {
                report.unclaimed.push(k.clone());
            }
        }
    }
    Ok(report)
}

/// The OS user running snapback.
pub fn os_user() -> String {
    for v in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(v) {
            if !u.is_empty() {
                return u;
            }
        }
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| format!("uid {u}")))
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
