use std::time::Duration;

/// How a backend that retries by itself (the S3 store) retries a retryable
/// error: how many attempts and how long between them.
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

#[cfg(test)]
mod tests {
    use super::*;

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
