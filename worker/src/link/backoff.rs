//! When to try the master again: exponential backoff with full jitter, started afresh
//! only by a connection that worked.

use std::time::Duration;

/// The first reconnect delay's upper bound; it doubles after each failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

/// The largest reconnect delay's upper bound.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a connection must have lasted (after a register ack) before losing it starts
/// the reconnect backoff afresh; an acknowledged result on it counts as well. A master
/// that accepts and at once drops the connection (crash loop, overload, a proxy in the
/// way) therefore meets a growing backoff, not a tight reconnect loop.
pub const HEALTHY_CONNECTION: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter: each delay is drawn uniformly from zero to a
/// ceiling that doubles with every failure, so that many workers losing the same master
/// at once do not all come back in the same instant.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    n_failures: u32,
}

impl Backoff {
    /// A backoff that has seen no failure yet.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// The ceiling for the next delay: [`INITIAL_BACKOFF`] doubled once per earlier
    /// failure, at most [`MAX_BACKOFF`].
    pub fn ceiling(&self) -> Duration {
        let doublings = self.n_failures.min(16);
        INITIAL_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.n_failures = self.n_failures.saturating_add(1);
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=ceiling_nanos))
    }

    /// Forgets earlier failures, once a connection has worked.
    pub fn reset(&mut self) {
        self.n_failures = 0;
    }
}

/// Whether a connection that just ended worked well enough to start the backoff
/// afresh: it got a register ack, and it either lasted [`HEALTHY_CONNECTION`] or carried
/// an acknowledged result. `lived` is `None` when no connection was open.
pub(super) fn connection_earned_fresh_backoff(
    registered: bool,
    lived: Option<Duration>,
    n_results_acknowledged: u32,
) -> bool {
    registered
        && lived.is_some_and(|lived| lived >= HEALTHY_CONNECTION || n_results_acknowledged > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_that_worked_starts_the_backoff_afresh() {
        let short = Some(Duration::from_millis(50));
        let long = Some(HEALTHY_CONNECTION);
        assert!(!connection_earned_fresh_backoff(false, long, 3));
        assert!(!connection_earned_fresh_backoff(true, None, 3));
        assert!(!connection_earned_fresh_backoff(true, short, 0));
        assert!(connection_earned_fresh_backoff(true, short, 1));
        assert!(connection_earned_fresh_backoff(true, long, 0));
    }

    #[test]
    fn backoff_doubles_its_ceiling_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay();
            assert!(delay <= *ceilings.last().expect("just pushed"));
        }
        assert_eq!(ceilings[0], INITIAL_BACKOFF);
        assert_eq!(ceilings[1], INITIAL_BACKOFF * 2);
        assert_eq!(ceilings[3], INITIAL_BACKOFF * 8);
        assert_eq!(*ceilings.last().expect("twelve ceilings"), MAX_BACKOFF);
        backoff.reset();
        assert_eq!(backoff.ceiling(), INITIAL_BACKOFF);
    }
}
