//! `random`: a device picked uniformly at random among the candidates, by
//! a generator (SplitMix64) seeded by the master: `placement_seed` in
//! [`crate::core::CoreConfig`], fresh at every start of the binary and
//! fixed in tests, so a run of the sans-IO core is repeatable. It looks
//! at every candidate (one pass, reservoir sampling).

use super::Strategy;
use crate::core::registry::Device;

/// See the module documentation.
#[derive(Debug)]
pub(in crate::core) struct Random {
    state: u64,
}

impl Random {
    /// A generator started from `seed`.
    pub(in crate::core) fn new(seed: u64) -> Random {
        Random { state: seed }
    }

    /// The next 64 random bits (SplitMix64: small, fast, and good enough
    /// to spread tasks; nothing here needs to be unpredictable).
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (at least 1), without the bias of a plain
    /// remainder worth mentioning for the counts of devices a cluster has
    /// (it is below n / 2^64).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

impl Strategy for Random {
    fn choose<'a>(
        &mut self,
        candidates: &mut dyn Iterator<Item = &'a Device>,
    ) -> Option<&'a Device> {
        // Reservoir sampling: the i-th candidate (from 1) replaces the
        // choice with probability 1/i, so each is chosen with 1/n.
        let mut chosen = None;
        for (seen, device) in (1u64..).zip(candidates) {
            if self.below(seen) == 0 {
                chosen = Some(device);
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::Random;

    #[test]
    fn the_generator_is_repeatable_and_spreads_evenly() {
        let draws = |seed| {
            let mut random = Random::new(seed);
            (0..8).map(|_| random.below(10)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let mut random = Random::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[random.below(4) as usize] += 1;
        }
        for count in counts {
            assert!((9_500..10_500).contains(&count), "{counts:?}");
        }
    }
}
