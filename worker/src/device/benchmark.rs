//! The CPU benchmark a worker runs once at start, whose score it sends in
//! its registration (`hardware_specs.cpu_benchmark`) for the master's
//! `weighted` placement (`docs/placement.md`).
//!
//! It is a fixed amount of pure-Rust integer work on one thread:
//! [`ROUNDS`] rounds of a 64-bit mixing function, each depending on the
//! one before (so neither the compiler nor the CPU can skip or overlap
//! them), timed [`RUNS`] times; the fastest run counts, since a slower one
//! only means something else had the core. The score is millions of rounds
//! per second on one core: the master multiplies it by the cores the
//! device can use. The three runs take a few tens of milliseconds on a
//! desktop core (see `docs/placement.md` for the figures measured), well
//! under a second on a Raspberry Pi.

use std::time::{Duration, Instant};

/// Rounds of work in one run: 2^20.
pub const ROUNDS: u64 = 1 << 20;

/// Runs timed; the fastest counts.
pub const RUNS: u32 = 3;

/// One run's work: `rounds` dependent rounds of SplitMix64's finalizer.
fn work(rounds: u64, seed: u64) -> u64 {
    let mut state = seed;
    for _ in 0..rounds {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state ^= z ^ (z >> 31);
    }
    state
}

/// The score of `rounds` rounds done in `elapsed`: millions of rounds per
/// second; `None` when the clock saw no time pass.
pub fn score(rounds: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (seconds > 0.0).then(|| rounds as f64 / seconds / 1e6)
}

/// Runs the benchmark on this thread and returns its score (see the
/// module documentation); `None` if the clock cannot time it.
pub fn run() -> Option<f64> {
    let mut fastest: Option<Duration> = None;
    for run in 0..RUNS {
        let started = Instant::now();
        std::hint::black_box(work(ROUNDS, std::hint::black_box(u64::from(run))));
        let elapsed = started.elapsed();
        fastest = Some(fastest.map_or(elapsed, |best| best.min(elapsed)));
    }
    // Two decimals are plenty, and keep the registration readable.
    score(ROUNDS, fastest?).map(|score| (score * 100.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_rounds_per_microsecond() {
        assert_eq!(score(2_000_000, Duration::from_secs(1)), Some(2.0));
        assert_eq!(score(ROUNDS, Duration::ZERO), None);
        // The same work gives the same result: it is fixed, not timed.
        assert_eq!(work(1000, 1), work(1000, 1));
        assert_ne!(work(1000, 1), work(1001, 1));
        let measured = run().expect("a clock that moves");
        assert!(measured > 0.0 && measured.is_finite(), "{measured}");
    }
}
