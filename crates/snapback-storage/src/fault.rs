//! A fault-injecting [`Store`] wrapper, for tests (feature `fault`; enable
//! it from dev-dependencies only).
//!
//! [`FaultStore`] passes every call to the store it wraps, except those a
//! [`Fault`] matches: by operation, key prefix and the count of matching
//! calls (the Nth, from the Nth on, N times). A fault fails the call with an
//! error kind, returns the stored bytes truncated or with one bit flipped,
//! reports a put as done without writing it, or delays the call. Faults can
//! be added and cleared while the store is in use (it is shared behind an
//! `Arc`), and every call is counted, so a test can also assert how often
//! the layer above asked.
//!
//! ```
//! use std::sync::Arc;
//! use snapback_storage::fault::{Fault, FaultStore, Op};
//! use snapback_storage::{ErrorKind, LocalStore, Store};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(FaultStore::new(LocalStore::create(dir.path()).unwrap()));
//! store.add(Fault::fail(Op::Put, ErrorKind::Transient).prefix("data/").nth(1));
//! assert!(store.put_if_absent("data/ab/1", b"x").is_err());
//! assert!(store.put_if_absent("data/ab/1", b"x").is_ok());
//! assert_eq!(store.calls(Op::Put), 2);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::{ErrorKind, ObjectInfo, PutOutcome, RequestStats, Store, StoreError, Tuning};

/// The operations of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    GetRange,
    Stat,
    List,
    Delete,
}

const OPS: [Op; 6] = [
    Op::Put,
    Op::Get,
    Op::GetRange,
    Op::Stat,
    Op::List,
    Op::Delete,
];

impl Op {
    fn index(self) -> usize {
        match self {
            Op::Put => 0,
            Op::Get => 1,
            Op::GetRange => 2,
            Op::Stat => 3,
            Op::List => 4,
            Op::Delete => 5,
        }
    }
}

/// What a fault does to a call it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The call fails with an error of this kind; nothing is done.
    Fail(ErrorKind),
    /// A get or ranged get returns the stored bytes cut to half their
    /// length (a backend that breaks the no-short-read rule).
    Truncate,
    /// A get or ranged get returns the stored bytes with one bit flipped in
    /// the middle (bit rot, a lying proxy).
    Flip,
    /// A put answers `Created` without storing anything (a backend that
    /// acknowledges a write it lost).
    Drop,
    /// The call waits this long, then goes through.
    Delay(Duration),
}

/// One injected fault: which calls it matches and what it does to them.
#[derive(Debug, Clone)]
pub struct Fault {
    op: Op,
    prefix: String,
    /// The first matching call it applies to (1-based).
    from: u64,
    /// How many matching calls from `from` on; `None`: all of them.
    times: Option<u64>,
    action: Action,
    /// Matching calls seen so far.
    seen: u64,
}

impl Fault {
    /// A fault on every call of `op` (narrow it with [`Fault::prefix`],
    /// [`Fault::nth`], [`Fault::from_nth`], [`Fault::times`]).
    pub fn new(op: Op, action: Action) -> Fault {
        Fault {
            op,
            prefix: String::new(),
            from: 1,
            times: None,
            action,
            seen: 0,
        }
    }

    /// Calls of `op` fail with `kind`.
    pub fn fail(op: Op, kind: ErrorKind) -> Fault {
        Fault::new(op, Action::Fail(kind))
    }

    /// Reads of `op` (`Get` or `GetRange`) return half the bytes.
    pub fn truncate(op: Op) -> Fault {
        Fault::new(op, Action::Truncate)
    }

    /// Reads of `op` (`Get` or `GetRange`) return one bit flipped.
    pub fn flip(op: Op) -> Fault {
        Fault::new(op, Action::Flip)
    }

    /// Puts answer `Created` and store nothing.
    pub fn drop_puts() -> Fault {
        Fault::new(Op::Put, Action::Drop)
    }

    /// Calls of `op` wait `d` first.
    pub fn delay(op: Op, d: Duration) -> Fault {
        Fault::new(op, Action::Delay(d))
    }

    /// Only calls whose key (for `List`: whose prefix) starts with `p`.
    pub fn prefix(mut self, p: &str) -> Fault {
        self.prefix = p.to_string();
        self
    }

    /// Only the `n`-th matching call (1-based).
    pub fn nth(mut self, n: u64) -> Fault {
        self.from = n.max(1);
        self.times = Some(1);
        self
    }

    /// The `n`-th matching call and every one after it.
    pub fn from_nth(mut self, n: u64) -> Fault {
        self.from = n.max(1);
        self.times = None;
        self
    }

    /// `k` matching calls, from the first one it applies to.
    pub fn times(mut self, k: u64) -> Fault {
        self.times = Some(k);
        self
    }

    /// Counts a call and says whether this fault applies to it.
    fn hits(&mut self, op: Op, key: &str) -> bool {
        if op != self.op || !key.starts_with(&self.prefix) {
            return false;
        }
        self.seen += 1;
        self.seen >= self.from && self.times.is_none_or(|k| self.seen < self.from + k)
    }
}

/// A [`Store`] that passes every call to `inner` except those its faults
/// match. With no fault it is a plain pass-through.
#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    faults: Mutex<Vec<Fault>>,
    calls: [AtomicU64; 6],
    injected: AtomicU64,
}

impl<S: Store> FaultStore<S> {
    pub fn new(inner: S) -> FaultStore<S> {
        FaultStore {
            inner,
            faults: Mutex::new(vec![]),
            calls: Default::default(),
            injected: AtomicU64::new(0),
        }
    }

    /// Adds a fault; it counts matching calls from now on.
    pub fn add(&self, f: Fault) {
        self.lock().push(f);
    }

    /// Removes every fault: the store passes everything through again.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// How many calls of `op` came in (faulted or not).
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op.index()].load(Ordering::SeqCst)
    }

    /// How many calls in all came in.
    pub fn total_calls(&self) -> u64 {
        OPS.iter().map(|&op| self.calls(op)).sum()
    }

    /// How many calls a fault changed.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // A test that panicked while holding the lock leaves the list as
        // it was; go on with it.
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the call and returns what every matching fault does to it
    /// (delays first, then at most one other action: the first added).
    fn actions(&self, op: Op, key: &str) -> (Duration, Option<Action>) {
        self.calls[op.index()].fetch_add(1, Ordering::SeqCst);
        let mut delay = Duration::ZERO;
        let mut other = None;
        for f in self.lock().iter_mut() {
            if f.hits(op, key) {
                match &f.action {
                    Action::Delay(d) => delay += *d,
                    a if other.is_none() => other = Some(a.clone()),
                    _ => {}
                }
            }
        }
        if !delay.is_zero() || other.is_some() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        (delay, other)
    }

    /// Applies the faults to a call: `Err` to return at once, or the
    /// action to apply to a read's result.
    fn enter(&self, op: Op, key: &str) -> Result<Option<Action>, StoreError> {
        let (delay, action) = self.actions(op, key);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match action {
            Some(Action::Fail(kind)) => Err(StoreError::new(
                kind,
                key,
                format!("injected fault: {op:?} fails ({kind:?})"),
            )),
            a => Ok(a),
        }
    }
}

fn damage(mut bytes: Vec<u8>, action: Option<Action>) -> Vec<u8> {
    match action {
        Some(Action::Truncate) => {
            bytes.truncate(bytes.len() / 2);
            bytes
        }
        Some(Action::Flip) => {
            let mid = bytes.len() / 2;
            if let Some(b) = bytes.get_mut(mid) {
                *b ^= 0x10;
            }
            bytes
        }
        _ => bytes,
    }
}

impl<S: Store> Store for FaultStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        match self.enter(Op::Put, key)? {
            Some(Action::Drop) => {
                crate::validate_key(key)?;
                Ok(PutOutcome::Created)
            }
            _ => self.inner.put_if_absent(key, data),
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let a = self.enter(Op::Get, key)?;
        Ok(damage(self.inner.get(key)?, a))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let a = self.enter(Op::GetRange, key)?;
        Ok(damage(self.inner.get_range(key, offset, len)?, a))
    }

    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.enter(Op::Stat, key)?;
        self.inner.stat(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.enter(Op::List, prefix)?;
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.enter(Op::Delete, key)?;
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
    use crate::LocalStore;

    fn store() -> (tempfile::TempDir, FaultStore<LocalStore>) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = FaultStore::new(LocalStore::create(d.path().join("s")).expect("store"));
        (d, s)
    }

    #[test]
    fn fault_store_passes_conformance_with_no_fault() {
        let (_d, s) = store();
        crate::conformance::run_all(&s);
        assert_eq!(s.injected(), 0);
        assert!(s.calls(Op::Put) > 0 && s.calls(Op::List) > 0);
    }

    #[test]
    fn nth_call_of_an_op_under_a_prefix_fails_and_the_others_pass() {
        let (_d, s) = store();
        s.add(
            Fault::fail(Op::Put, ErrorKind::Transient)
                .prefix("data/")
                .nth(2),
        );
        s.put_if_absent("index/a", b"1").expect("another prefix");
        s.put_if_absent("data/a", b"1").expect("first");
        let e = s.put_if_absent("data/b", b"2").expect_err("second fails");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(
            s.inner().stat("data/b").expect("stat"),
            None,
            "nothing written"
        );
        s.put_if_absent("data/b", b"2").expect("third");
        assert_eq!(s.injected(), 1);
        assert_eq!(s.calls(Op::Put), 4);
    }

    #[test]
    fn reads_can_come_back_truncated_or_flipped() {
        let (_d, s) = store();
        let data: Vec<u8> = (0..100u8).collect();
        s.put_if_absent("k", &data).expect("put");
        s.add(Fault::truncate(Op::Get).nth(1));
        s.add(Fault::flip(Op::GetRange).times(1));
        assert_eq!(s.get("k").expect("get"), &data[..50]);
        let flipped = s.get_range("k", 10, 20).expect("range");
        assert_eq!(flipped.len(), 20);
        assert_ne!(flipped, &data[10..30]);
        assert_eq!(
            flipped
                .iter()
                .zip(&data[10..30])
                .filter(|(a, b)| a != b)
                .count(),
            1
        );
        assert_eq!(s.get("k").expect("get"), data, "the faults are used up");
        assert_eq!(s.get_range("k", 10, 20).expect("range"), &data[10..30]);
    }

    #[test]
    fn dropped_puts_are_acknowledged_and_lost_and_clear_restores_pass_through() {
        let (_d, s) = store();
        s.add(Fault::drop_puts().from_nth(1));
        assert_eq!(
            s.put_if_absent("a", b"x").expect("put"),
            PutOutcome::Created
        );
        assert_eq!(s.stat("a").expect("stat"), None);
        s.clear();
        s.put_if_absent("a", b"x").expect("put");
        assert_eq!(s.stat("a").expect("stat"), Some(1));
    }

    #[test]
    fn delayed_calls_wait_then_go_through() {
        let (_d, s) = store();
        s.put_if_absent("a", b"x").expect("put");
        s.add(Fault::delay(Op::List, Duration::from_millis(150)).times(1));
        s.add(Fault::fail(Op::Delete, ErrorKind::PermissionDenied));
        let t = std::time::Instant::now();
        assert_eq!(s.list("").expect("list").len(), 1);
        assert!(t.elapsed() >= Duration::from_millis(150));
        let t = std::time::Instant::now();
        s.list("").expect("list");
        assert!(t.elapsed() < Duration::from_millis(150), "one delay only");
        let e = s.delete("a").expect_err("delete refused");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(s.stat("a").expect("stat"), Some(1));
    }
}
