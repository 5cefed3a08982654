//! One table for every deadline the core keeps, after quinn-proto's
//! `TimerTable`: heartbeats, paused workers, leases, retries, attempt
//! deadlines and authentication deadlines.
//!
//! Each timer has a key ([`TimerKey`]) and at most one time. Setting,
//! moving and removing a timer cost O(log n), whatever its kind (cancelling
//! a retrying task removes its one entry). The entries of one kind are
//! kept in their own lane, in time order, so that a tick fires each kind
//! in the order the core handles them and [`TimerTable::next`] is the
//! earliest of six lane heads.
//!
//! Architecture invariant: every time the core wants to be woken is an
//! entry here, so [`TimerTable::next`] is the whole of what
//! `Core::next_deadline` reports. The table stores times only; what a timer
//! means is checked by its owner when it fires (a stale entry is harmless).

use super::ConnId;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// What a timer is for, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TimerKey {
    /// A connection that must authenticate by then.
    Auth(ConnId),
    /// A task that waits out its retry backoff until then.
    Retry(String),
    /// An attempt (task id, attempt) that the master times out itself then.
    Attempt(String, u32),
    /// An offline device whose tasks the master holds on a lease until then.
    Lease(String),
    /// A connected device whose heartbeats stop counting then.
    Heartbeat(String),
    /// A device that said it was full and gets no task until then.
    Pause(String),
}

/// The kinds of timer, one lane each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimerKind {
    /// See [`TimerKey::Auth`].
    Auth,
    /// See [`TimerKey::Retry`].
    Retry,
    /// See [`TimerKey::Attempt`].
    Attempt,
    /// See [`TimerKey::Lease`].
    Lease,
    /// See [`TimerKey::Heartbeat`].
    Heartbeat,
    /// See [`TimerKey::Pause`].
    Pause,
}

/// The number of [`TimerKind`]s.
const KINDS: usize = 6;

impl TimerKey {
    /// Its kind.
    pub(super) fn kind(&self) -> TimerKind {
        match self {
            TimerKey::Auth(_) => TimerKind::Auth,
            TimerKey::Retry(_) => TimerKind::Retry,
            TimerKey::Attempt(..) => TimerKind::Attempt,
            TimerKey::Lease(_) => TimerKind::Lease,
            TimerKey::Heartbeat(_) => TimerKind::Heartbeat,
            TimerKey::Pause(_) => TimerKind::Pause,
        }
    }
}

/// Every deadline of the core, by key and by time.
#[derive(Debug, Default)]
pub(super) struct TimerTable {
    /// Per kind, the entries in time order (then key order).
    lanes: [BTreeSet<(Duration, TimerKey)>; KINDS],
    /// Each key's time.
    at: HashMap<TimerKey, Duration>,
}

impl TimerTable {
    /// Sets `key` to fire at `at`, replacing its earlier time if any.
    pub(super) fn set(&mut self, key: TimerKey, at: Duration) {
        let lane = &mut self.lanes[key.kind() as usize];
        match self.at.get_mut(&key) {
            Some(old) if *old == at => {}
            Some(old) => {
                let old = std::mem::replace(old, at);
                // The key moves with its entry: no second copy of it.
                let probe = (old, key);
                match lane.take(&probe) {
                    Some(mut entry) => {
                        entry.0 = at;
                        lane.insert(entry);
                    }
                    None => {
                        lane.insert((at, probe.1));
                    }
                }
            }
            None => {
                self.at.insert(key.clone(), at);
                lane.insert((at, key));
            }
        }
    }

    /// Removes `key`'s timer; returns the time it had.
    pub(super) fn remove(&mut self, key: &TimerKey) -> Option<Duration> {
        let (key, at) = self.at.remove_entry(key)?;
        self.lanes[key.kind() as usize].remove(&(at, key));
        Some(at)
    }

    /// `key`'s time, if it is set.
    #[cfg(test)]
    pub(super) fn get(&self, key: &TimerKey) -> Option<Duration> {
        self.at.get(key).copied()
    }

    /// The earliest timer of every kind.
    pub(super) fn next(&self) -> Option<Duration> {
        self.lanes
            .iter()
            .filter_map(|lane| lane.first().map(|(at, _)| *at))
            .min()
    }

    /// The earliest timer of `kind`.
    pub(super) fn first(&self, kind: TimerKind) -> Option<(Duration, &TimerKey)> {
        self.lanes[kind as usize]
            .first()
            .map(|(at, key)| (*at, key))
    }

    /// Removes and returns the earliest timer of `kind` if it is due at
    /// `now`.
    pub(super) fn pop_due(&mut self, kind: TimerKind, now: Duration) -> Option<TimerKey> {
        let lane = &mut self.lanes[kind as usize];
        if lane.first().is_none_or(|(at, _)| *at > now) {
            return None;
        }
        let (_, key) = lane.pop_first()?;
        self.at.remove(&key);
        Some(key)
    }

    /// Removes and returns the ids of every device timer of `kind` due at
    /// `now`, in id order.
    pub(super) fn pop_due_devices(&mut self, kind: TimerKind, now: Duration) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(key) = self.pop_due(kind, now) {
            match key {
                TimerKey::Lease(id) | TimerKey::Heartbeat(id) | TimerKey::Pause(id) => {
                    due.push(id);
                }
                TimerKey::Auth(_) | TimerKey::Retry(_) | TimerKey::Attempt(..) => {}
            }
        }
        due.sort();
        due
    }

    /// The number of timers of `kind`.
    pub(super) fn len(&self, kind: TimerKind) -> usize {
        self.lanes[kind as usize].len()
    }

    /// The timers of `kind`, in time order.
    #[cfg(test)]
    pub(super) fn iter(&self, kind: TimerKind) -> impl Iterator<Item = (Duration, &TimerKey)> {
        self.lanes[kind as usize].iter().map(|(at, key)| (*at, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn heartbeat(id: &str) -> TimerKey {
        TimerKey::Heartbeat(id.into())
    }

    #[test]
    fn timers_move_are_removed_and_fire_by_kind_in_time_order() {
        let mut timers = TimerTable::default();
        assert_eq!(timers.next(), None);
        timers.set(heartbeat("a"), secs(10));
        timers.set(heartbeat("b"), secs(5));
        timers.set(heartbeat("a"), secs(3));
        assert_eq!(timers.next(), Some(secs(3)));
        timers.set(heartbeat("a"), secs(20)); // later: moves
        assert_eq!(timers.get(&heartbeat("a")), Some(secs(20)));
        assert_eq!(timers.next(), Some(secs(5)));
        timers.set(TimerKey::Retry("t".into()), secs(4));
        timers.set(TimerKey::Attempt("t".into(), 2), secs(1));
        assert_eq!(timers.next(), Some(secs(1)));
        assert_eq!(timers.len(TimerKind::Heartbeat), 2);
        assert_eq!(timers.remove(&TimerKey::Retry("t".into())), Some(secs(4)));
        assert_eq!(timers.remove(&TimerKey::Retry("t".into())), None);
        assert_eq!(timers.len(TimerKind::Retry), 0);
        assert!(timers
            .pop_due_devices(TimerKind::Heartbeat, secs(4))
            .is_empty());
        assert_eq!(
            timers.pop_due(TimerKind::Attempt, secs(1)),
            Some(TimerKey::Attempt("t".into(), 2))
        );
        assert_eq!(timers.pop_due(TimerKind::Attempt, secs(1)), None);
        assert_eq!(
            timers.pop_due_devices(TimerKind::Heartbeat, secs(20)),
            vec!["a", "b"]
        );
        assert_eq!(timers.next(), None);
        assert_eq!(timers.get(&heartbeat("a")), None);
        timers.set(TimerKey::Auth(7), secs(2));
        assert_eq!(
            timers.first(TimerKind::Auth),
            Some((secs(2), &TimerKey::Auth(7)))
        );
        assert_eq!(timers.first(TimerKind::Pause), None);
    }
}
