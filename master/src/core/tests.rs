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
    /// timer entries of the devices (the heartbeats of the connected ones,
    /// pauses, leases), the registry's indexes and the tasks' listing.
    pub(super) fn check_indexes(&self) {
        let mut heartbeats = 0;
        for (id, device) in &self.registry.devices {
            let due = device
                .conn
                .map(|_| device.last_seen + self.config.heartbeat_timeout);
            let timer = self.timers.get(&TimerKey::Heartbeat(id.clone()));
            assert_eq!(timer, due, "device {id}: heartbeat");
            heartbeats += usize::from(due.is_some());
            if let Some(until) = device.paused_until {
                let due = self.timers.get(&TimerKey::Pause(id.clone()));
                assert!(
                    due.is_some_and(|due| due <= until),
                    "device {id}: pause indexed as {due:?}"
                );
            }
            if let Some(until) = device.lease_until {
                let due = self.timers.get(&TimerKey::Lease(id.clone()));
                assert!(
                    due.is_some_and(|due| due <= until),
                    "device {id}: lease indexed as {due:?}"
                );
            }
        }
        assert_eq!(
            self.timers.len(TimerKind::Heartbeat),
            heartbeats,
            "heartbeat entries"
        );
        self.registry.check_indexes();
        self.tasks.check_indexes();
    }
}

mod sim;

mod auth;
mod devices;
mod durability;
mod held;
mod history;
mod life;
mod lifecycle;
mod listing;
mod nesting;
mod placement;
mod prop;
mod registration;
mod replies;
mod restart;
mod results;
mod scheduling;
mod text;
