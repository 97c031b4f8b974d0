//! Seeded data: the same bytes and numbers on every run, from a seed a
//! failing test can print.

/// A deterministic generator (xorshift64*), reproducible from its seed.
/// Not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number (named as the generators it replaced; not an
    /// iterator: it never ends).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = 0x9E37_79B9_7F4A_7C15;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// A double uniformly in [-1e6, 1e6): most need 16 or 17 digits.
    pub fn double(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2e6 - 1e6
    }
}

/// `len` pseudo-random bytes (xorshift64, reproducible from `seed`), which
/// neither compress nor deduplicate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Deterministic bytes that differ at every offset and between seeds.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_data_is_the_same_on_every_run_and_differs_between_seeds() {
        assert_eq!(random_bytes(64, 7), random_bytes(64, 7));
        assert_ne!(random_bytes(64, 7), random_bytes(64, 8));
        assert_eq!(pattern(64, 1), pattern(64, 1));
        assert_ne!(pattern(64, 1), pattern(64, 2));
        let (mut a, mut b) = (Rng(0), Rng(0));
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next()).collect::<Vec<_>>());
        assert!(xs.iter().all(|&x| x != 0), "a zero seed does not stick");
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert!((0..1000).all(|_| (-1e6..1e6).contains(&r.double())));
    }
}
