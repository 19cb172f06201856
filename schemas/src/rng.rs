//! SplitMix64: a small, fast pseudo-random generator fully determined by its seed. Used for the
//! reference data and by the load generator; never by the processor core, which takes no
//! randomness at all.

#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible for the small `n` used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Draws indexes `0..n` with given relative weights, by binary search over the cumulative sum.
#[derive(Debug, Clone)]
pub struct Weighted {
    cumulative: Vec<f64>,
}

impl Weighted {
    /// `weights` must be non-empty, non-negative and not all zero.
    pub fn new(weights: &[f64]) -> Weighted {
        let mut total = 0.0;
        let cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                total += w.max(0.0);
                total
            })
            .collect();
        assert!(total > 0.0, "weights must not all be zero");
        Weighted { cumulative }
    }

    /// Zipf-like popularity: the item of rank `k` (from 1) weighs `1 / k^s`.
    pub fn zipf(n: usize, s: f64) -> Weighted {
        Weighted::new(&(1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect::<Vec<_>>())
    }

    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let x = rng.unit() * self.cumulative.last().expect("non-empty");
        self.cumulative.partition_point(|c| *c <= x).min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_draws_follow_the_weights() {
        let w = Weighted::new(&[0.0, 3.0, 1.0]);
        let mut rng = SplitMix64::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[w.sample(&mut rng)] += 1;
        }
        assert_eq!(counts[0], 0);
        let ratio = f64::from(counts[1]) / f64::from(counts[2]);
        assert!((2.7..3.3).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (SplitMix64::new(1), SplitMix64::new(1));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
