//! The core's tests, on simulated time with no sockets: a `Sim` harness
//! (after quinn-proto's `Pair`) drives the core, fake workers and clients
//! until idle, and a fake database applies every batch.

#![allow(clippy::unwrap_used)]

use super::timers::{TimerKey, TimerKind};
use super::Core;
use std::time::Duration;

impl Core {
    /// The tasks waiting out a retry backoff, with when each may run again.
    pub(super) fn retry_timers(&self) -> impl Iterator<Item = (Duration, &str)> {
        self.timers
            .iter(TimerKind::Retry)
            .filter_map(|(at, key)| match key {
                TimerKey::Retry(id) => Some((at, id.as_str())),
                _ => None,
            })
    }

    /// Panics unless every index agrees with the state it indexes: the
    /// registry's (and the timer entries of its devices), and the tasks'.
    pub(super) fn check_indexes(&self) {
        self.registry
            .check_indexes(&self.timers, self.config.heartbeat_timeout);
        self.tasks.check_indexes();
    }
}

mod sim;

mod auth;
mod devices;
mod durability;
mod held;
mod life;
mod lifecycle;
mod listing;
mod nesting;
mod prop;
mod registration;
mod restart;
mod results;
mod scheduling;
mod text;
