use std::time::Duration;

use crate::{ObjectInfo, PutOutcome, RequestStats, Store, StoreError};

/// How [`RetryStore`] retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the first retry; doubled on each further retry.
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `n` (1-based): exponential backoff with
    /// "full jitter" (a random delay between half and all of the step).
    pub fn delay(&self, n: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_delay);
        let nanos = step.as_nanos() as u64;
        if nanos == 0 {
            return step;
        }
        let half = nanos / 2;
        Duration::from_nanos(half + jitter() % (nanos - half + 1))
    }
}

fn jitter() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS; mixing in the time makes
    // every call differ. Good enough for spreading retries apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Wraps a store and retries retryable errors with backoff and jitter.
///
/// A `put_if_absent` that failed with a retryable error may have stored the
/// object anyway (a dropped response); the retry then sees `AlreadyExists`,
/// which the caller verifies like any other existing object.
#[derive(Debug)]
pub struct RetryStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: Store> RetryStore<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryStore { inner, policy }
    }

    fn run<T>(
        &self,
        what: &str,
        mut op: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.kind().is_retryable() && attempt < self.policy.attempts => {
                    let d = self.policy.delay(attempt);
                    tracing::warn!(op = what, key = e.key(), attempt, delay_ms = d.as_millis() as u64, error = %e, "retrying");
                    std::thread::sleep(d);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<S: Store> Store for RetryStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.run("put", || self.inner.put_if_absent(key, data))
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.run("get", || self.inner.get(key))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.run("get_range", || self.inner.get_range(key, offset, len))
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.run("stat", || self.inner.stat(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.run("list", || self.inner.list(prefix))
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("delete", || self.inner.delete(key))
    }
    fn request_stats(&self) -> RequestStats {
        self.inner.request_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Default)]
    struct Flaky {
        fails_left: AtomicU32,
        calls: AtomicU32,
    }

    impl Store for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        fn put_if_absent(&self, key: &str, _: &[u8]) -> Result<PutOutcome, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fails_left.load(Ordering::SeqCst) > 0 {
                self.fails_left.fetch_sub(1, Ordering::SeqCst);
                return Err(StoreError::new(ErrorKind::Transient, key, "503"));
            }
            Ok(PutOutcome::Created)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::new(ErrorKind::NotFound, key, "no such key"))
        }
        fn get_range(&self, key: &str, _: u64, _: u64) -> Result<Vec<u8>, StoreError> {
            self.get(key)
        }
        fn stat(&self, _: &str) -> Result<Option<u64>, StoreError> {
            Ok(None)
        }
        fn list(&self, _: &str) -> Result<Vec<ObjectInfo>, StoreError> {
            Ok(vec![])
        }
        fn delete(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[test]
    fn retry_store_passes_conformance() {
        let d = tempfile::tempdir().expect("tempdir");
        let local = crate::LocalStore::create(d.path().join("s")).expect("store");
        crate::conformance::run_all(&RetryStore::new(local, fast()));
    }

    #[test]
    fn transient_errors_are_retried_until_success() {
        let s = RetryStore::new(
            Flaky {
                fails_left: AtomicU32::new(3),
                ..Default::default()
            },
            fast(),
        );
        assert_eq!(
            s.put_if_absent("k", b"x").expect("put"),
            PutOutcome::Created
        );
        assert_eq!(s.inner.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn retries_are_bounded() {
        let s = RetryStore::new(
            Flaky {
                fails_left: AtomicU32::new(10),
                ..Default::default()
            },
            fast(),
        );
        let e = s.put_if_absent("k", b"x").expect_err("must fail");
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(s.inner.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let s = RetryStore::new(Flaky::default(), fast());
        assert!(s.get("k").expect_err("missing").is_not_found());
        assert_eq!(s.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for n in 1..10 {
            let d = p.delay(n);
            let step = Duration::from_millis(100 * (1 << (n - 1))).min(Duration::from_secs(1));
            assert!(d >= step / 2 && d <= step, "n={n} d={d:?}");
        }
    }
}
