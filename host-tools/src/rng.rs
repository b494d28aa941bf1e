//! A small seeded random number generator whose streams never change: SplitMix64 (Steele, Lea and
//! Flood, 2014), the generator Java's `SplittableRandom` and many seeding routines use.
//!
//! The `rand` crate is not used on purpose: its streams may change between versions, and the
//! synthetic scenes, weight initialisation and data order must be reproducible from a seed forever.
//! Every method here is defined by integer arithmetic, except [`Rng::normal`] (Box–Muller, via
//! `ln`, `sqrt` and `cos`, whose last bit may differ between platforms' math libraries).

use std::ops::Range;

/// SplitMix64's state increment (2^64 / φ, odd).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 generator. Cheap to create, so code that needs independent, reproducible streams
/// (one per scene, one per epoch) derives a fresh one with [`Rng::derive`] instead of sharing one.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// Stream number `stream` of `seed`: item `stream`'s randomness depends only on
    /// (seed, stream), never on how many other streams were used before it.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        // Mixing the seed before combining keeps (s, t) and (t, s) or (s + 1, t - 1) apart.
        Rng::new(mix(mix(seed).wrapping_add(GAMMA) ^ stream.wrapping_mul(GAMMA)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1): the top 24 bits, so every value is exactly representable as an f32.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in `range` (unbiased: Lemire's multiply-and-reject). Panics on an empty range.
    pub fn range(&mut self, range: Range<usize>) -> usize {
        assert!(range.start < range.end, "Rng::range: empty range {range:?}");
        let span = (range.end - range.start) as u64;
        // Products whose low half falls below 2^64 mod span would make some values more likely.
        let threshold = span.wrapping_neg() % span;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(span);
            if (product as u64) >= threshold {
                return range.start + (product >> 64) as usize;
            }
        }
    }

    /// Standard normal (mean 0, variance 1), by the Box–Muller transform.
    pub fn normal(&mut self) -> f32 {
        // 53-bit uniforms; 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.range(0..i + 1));
        }
    }

    /// A uniformly chosen element. Panics on an empty slice.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0..items.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_fixed_forever() {
        // SplitMix64's published reference values for seed 1234567, so a change of algorithm shows.
        let mut r = Rng::new(1234567);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(first, [6457827717110365317, 3203168211198807973, 9817491932198370423]);
        let a: Vec<u64> = (0..5).map(|_| Rng::derive(7, 3).next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]), "derive must be deterministic");
        let streams: Vec<u64> = (0..100).map(|s| Rng::derive(7, s).next_u64()).collect();
        let mut unique = streams.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), streams.len(), "streams must differ");
        assert_ne!(Rng::derive(7, 3).next_u64(), Rng::derive(3, 7).next_u64());
    }

    #[test]
    fn uniform_and_range_stay_in_bounds_and_cover_them() {
        let mut r = Rng::new(1);
        let mut seen = [0usize; 7];
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            let k = r.range(3..10);
            assert!((3..10).contains(&k));
            seen[k - 3] += 1;
        }
        // Each of 7 values expected ~1429 times.
        assert!(seen.iter().all(|&n| (1200..1650).contains(&n)), "{seen:?}");
        assert_eq!(r.range(5..6), 5);
    }

    #[test]
    fn normal_has_mean_zero_and_unit_variance() {
        let mut r = Rng::new(2);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| f64::from(r.normal())).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        assert!(xs.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn shuffle_permutes_and_choose_picks_members() {
        let mut r = Rng::new(3);
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let mut again: Vec<u32> = (0..50).collect();
        Rng::new(3).shuffle(&mut again);
        assert_eq!(v, again, "same seed, same order");
        let items = ["a", "b", "c"];
        let picks: Vec<&str> = (0..300).map(|_| *r.choose(&items)).collect();
        assert!(items.iter().all(|i| picks.contains(i)));
    }
}
