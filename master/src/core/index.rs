//! Indexes the core keeps beside its maps, so that a turn of the event
//! loop, an event or a placement costs about O(log n) in the number of
//! devices, connections and queued tasks, not O(n):
//!
//! - [`Deadlines`]: per device, when its heartbeat, pause or lease may run
//!   out (the loop asks for the earliest one on every turn);
//! - the set of subscribed connections (every event goes to them);
//! - [`FreeSlots`]: devices that can take a task now, least loaded first,
//!   and the total of their free slots;
//! - [`PlacementQueues`]: the queue split by what decides where a task may
//!   run (type and requirements), so a pass of assignment looks at the head
//!   of each placement instead of walking tasks that nobody free can take.
//!
//! All of them are plain data, sans-IO like the rest of the core.

use super::{ConnId, Core, Device, Now, QueueKey};
use protocol::{DeviceStatus, TaskSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Every index of the core.
#[derive(Debug, Default)]
pub(super) struct Indexes {
    /// When a connected device's heartbeats stop counting:
    /// `last_seen + heartbeat_timeout`.
    pub(super) heartbeats: TimeIndex,
    /// When a device's pause may end: a lower bound of `paused_until`.
    pub(super) pauses: Deadlines,
    /// When a device's lease may run out: a lower bound of `lease_until`.
    pub(super) leases: Deadlines,
    /// Connections with a subscription.
    pub(super) subscribers: BTreeSet<ConnId>,
    /// Devices that can take a task now.
    pub(super) free: FreeSlots,
    /// Queued tasks by placement.
    pub(super) queues: PlacementQueues,
}

/// What the indexes hold for one device, kept in the device itself so that
/// the two indexes every connected device is in need no map of their own
/// (with 10,000 workers, that is memory the master would notice).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Indexed {
    /// Its entry in [`Indexes::heartbeats`].
    pub(super) heartbeat: Option<Duration>,
    /// Its entry in [`Indexes::free`].
    pub(super) slots: Option<SlotEntry>,
}

/// Keys ordered by time; the owner keeps each key's current time and
/// passes it when it changes.
#[derive(Debug, Default)]
pub(super) struct TimeIndex {
    by_time: BTreeSet<(Duration, String)>,
}

impl TimeIndex {
    /// Moves `id` from `old` to `new`.
    pub(super) fn update(&mut self, id: &str, old: Option<Duration>, new: Option<Duration>) {
        if old == new {
            return;
        }
        let entry = match old {
            Some(old) => self.by_time.take(&(old, id.to_string())),
            None => None,
        };
        if let Some(new) = new {
            let mut entry = entry.unwrap_or_else(|| (new, id.to_string()));
            entry.0 = new;
            self.by_time.insert(entry);
        }
    }

    /// The earliest time.
    pub(super) fn first(&self) -> Option<Duration> {
        self.by_time.first().map(|(due, _)| *due)
    }

    /// Removes and returns the keys due at or before `now`, in key order.
    /// The owner must forget their times.
    pub(super) fn pop_due(&mut self, now: Duration) -> Vec<String> {
        let mut due = Vec::new();
        while self.by_time.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.by_time.pop_first() {
                due.push(id);
            }
        }
        due.sort();
        due
    }

    /// Whether `id` is indexed at `at`.
    #[cfg(test)]
    pub(super) fn contains(&self, id: &str, at: Duration) -> bool {
        self.by_time.contains(&(at, id.to_string()))
    }

    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_time.len()
    }
}

/// Per key, the earliest time something may be due. Lazy: an entry is a
/// lower bound of the real deadline, which the owner checks when the entry
/// comes due (and schedules again if it moved on). So a deadline that only
/// moves later, like a heartbeat's, costs nothing to keep up to date.
#[derive(Debug, Default)]
pub(super) struct Deadlines {
    by_time: BTreeSet<(Duration, String)>,
    at: HashMap<String, Duration>,
}

impl Deadlines {
    /// Makes sure `id` comes due no later than `due` (an earlier entry is
    /// kept).
    pub(super) fn schedule(&mut self, id: &str, due: Duration) {
        match self.at.get_mut(id) {
            Some(at) if *at <= due => {}
            Some(at) => {
                self.by_time.remove(&(*at, id.to_string()));
                *at = due;
                self.by_time.insert((due, id.to_string()));
            }
            None => {
                self.at.insert(id.to_string(), due);
                self.by_time.insert((due, id.to_string()));
            }
        }
    }

    /// The earliest entry.
    pub(super) fn first(&self) -> Option<Duration> {
        self.by_time.first().map(|(due, _)| *due)
    }

    /// Removes and returns the keys due at or before `now`, in key order.
    pub(super) fn pop_due(&mut self, now: Duration) -> Vec<String> {
        let mut due = Vec::new();
        while self.by_time.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.by_time.pop_first() {
                self.at.remove(&id);
                due.push(id);
            }
        }
        due.sort();
        due
    }

    /// The entry for `id`, if any.
    #[cfg(test)]
    pub(super) fn get(&self, id: &str) -> Option<Duration> {
        self.at.get(id).copied()
    }

    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }
}

/// Where a device stands among those that can take a task: its load
/// (active per slot, in millionths), its active count, and its free slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotEntry {
    load: u64,
    active: u64,
    free: usize,
}

impl SlotEntry {
    /// The entry of a device, or `None` when it cannot take a task now
    /// (offline, draining, paused, or every slot taken).
    pub(super) fn of(device: &Device) -> Option<SlotEntry> {
        let accepts = device.conn.is_some()
            && device.record.status == DeviceStatus::Online
            && device.paused_until.is_none();
        let slots = device.record.slots as usize;
        let active = device.active.len();
        if !accepts || active >= slots {
            return None;
        }
        let active = active as u64;
        Some(SlotEntry {
            load: active * 1_000_000 / u64::from(device.record.slots.max(1)),
            active,
            free: slots - active as usize,
        })
    }
}

/// Devices that can take a task now, least loaded first (then fewest
/// active tasks, then by id), and the total of their free slots. The owner
/// keeps each device's entry and passes it when it changes.
#[derive(Debug, Default)]
pub(super) struct FreeSlots {
    by_load: BTreeSet<(u64, u64, String)>,
    total: usize,
}

impl FreeSlots {
    /// Moves `id` from entry `old` to entry `new`.
    pub(super) fn update(&mut self, id: &str, old: Option<SlotEntry>, new: Option<SlotEntry>) {
        if old == new {
            return;
        }
        let mut key = None;
        if let Some(old) = old {
            key = self.by_load.take(&(old.load, old.active, id.to_string()));
            self.total -= old.free;
        }
        if let Some(new) = new {
            let mut key = key.unwrap_or_else(|| (0, 0, id.to_string()));
            key.0 = new.load;
            key.1 = new.active;
            self.by_load.insert(key);
            self.total += new.free;
        }
    }

    /// Free slots over every device that can take a task.
    pub(super) fn total(&self) -> usize {
        self.total
    }

    /// Devices that can take a task, least loaded first.
    pub(super) fn least_loaded(&self) -> impl Iterator<Item = &str> {
        self.by_load.iter().map(|(_, _, id)| id.as_str())
    }

    /// Whether `id` is recorded with `entry`.
    #[cfg(test)]
    pub(super) fn contains(&self, id: &str, entry: SlotEntry) -> bool {
        self.by_load
            .contains(&(entry.load, entry.active, id.to_string()))
    }

    /// Number of devices recorded.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_load.len()
    }
}

/// What decides where a task may run: its type and its requirements.
pub(super) fn placement_signature(spec: &TaskSpec) -> String {
    // Most tasks have no requirements: their signature needs no encoder.
    if spec.requirements.is_empty() {
        return format!("{}\u{0}{{}}", spec.task_type);
    }
    format!(
        "{}\u{0}{}",
        spec.task_type,
        serde_json::to_string(&spec.requirements).unwrap_or_default()
    )
}

/// Identifies one placement while it has queued tasks.
pub(super) type PlacementId = u64;

/// The queued tasks, one ordered queue per placement.
#[derive(Debug, Default)]
pub(super) struct PlacementQueues {
    ids: HashMap<String, PlacementId>,
    queues: BTreeMap<PlacementId, (String, BTreeSet<QueueKey>)>,
    of_task: HashMap<String, PlacementId>,
    next_id: PlacementId,
}

impl PlacementQueues {
    /// Queues a task (its key and spec).
    pub(super) fn insert(&mut self, key: QueueKey, spec: &TaskSpec) {
        if let Some(&old) = self.of_task.get(&key.task_id) {
            // Already queued (under some key): replace it. The core never
            // does this; it costs a walk of that placement's queue.
            if let Some((_, queue)) = self.queues.get_mut(&old) {
                if let Some(stale) = queue.iter().find(|k| k.task_id == key.task_id).cloned() {
                    self.remove(&stale);
                }
            }
        }
        let signature = placement_signature(spec);
        let id = match self.ids.get(&signature) {
            Some(&id) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(signature.clone(), id);
                self.queues.insert(id, (signature, BTreeSet::new()));
                id
            }
        };
        self.of_task.insert(key.task_id.clone(), id);
        if let Some((_, queue)) = self.queues.get_mut(&id) {
            queue.insert(key);
        }
    }

    /// Takes a task out of its queue, if it is queued under `key`.
    pub(super) fn remove(&mut self, key: &QueueKey) {
        let Some(&id) = self.of_task.get(&key.task_id) else {
            return;
        };
        let Some((signature, queue)) = self.queues.get_mut(&id) else {
            return;
        };
        if !queue.remove(key) {
            return;
        }
        self.of_task.remove(&key.task_id);
        if queue.is_empty() {
            self.ids.remove(signature.as_str());
            self.queues.remove(&id);
        }
    }

    /// The first task of every placement.
    pub(super) fn heads(&self) -> BTreeSet<(QueueKey, PlacementId)> {
        self.queues
            .iter()
            .filter_map(|(&id, (_, queue))| Some((queue.first()?.clone(), id)))
            .collect()
    }

    /// The task after `key` in the queue of placement `id`.
    pub(super) fn next_after(&self, id: PlacementId, key: &QueueKey) -> Option<QueueKey> {
        let (_, queue) = self.queues.get(&id)?;
        queue
            .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
            .next()
            .cloned()
    }

    /// Number of queued tasks.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.of_task.len()
    }

    /// Every queued task's key (for checks).
    #[cfg(test)]
    pub(super) fn keys(&self) -> BTreeSet<QueueKey> {
        self.queues
            .values()
            .flat_map(|(_, queue)| queue.iter().cloned())
            .collect()
    }
}

impl Core {
    /// Records whether, and how loaded, device `device_id` can take a task
    /// now. Called after every change to a device's connection, status,
    /// pause, slots or active tasks.
    pub(super) fn refresh_slots(&mut self, device_id: &str) {
        let Some(device) = self.devices.get_mut(device_id) else {
            return;
        };
        let new = SlotEntry::of(device);
        let old = std::mem::replace(&mut device.indexed.slots, new);
        self.index.free.update(device_id, old, new);
    }

    /// Sets when device `device_id`'s heartbeats stop counting (`None`:
    /// it is not connected).
    pub(super) fn set_heartbeat_due(&mut self, device_id: &str, due: Option<Duration>) {
        let Some(device) = self.devices.get_mut(device_id) else {
            return;
        };
        let old = std::mem::replace(&mut device.indexed.heartbeat, due);
        self.index.heartbeats.update(device_id, old, due);
    }

    /// Ends the pauses that are over; whether any ended.
    pub(super) fn resume_paused(&mut self, now: Now) -> bool {
        let mut resumed = false;
        for device_id in self.index.pauses.pop_due(now.monotonic) {
            let Some(device) = self.devices.get_mut(&device_id) else {
                continue;
            };
            match device.paused_until {
                Some(until) if until <= now.monotonic => {
                    device.paused_until = None;
                    resumed = true;
                    self.refresh_slots(&device_id);
                }
                Some(until) => self.index.pauses.schedule(&device_id, until),
                None => {}
            }
        }
        resumed
    }

    /// Panics unless every index agrees with the state it indexes.
    #[cfg(test)]
    pub(super) fn check_indexes(&self) {
        let mut heartbeats = 0;
        let mut free = 0;
        let mut free_total = 0;
        for (id, device) in &self.devices {
            let due = device
                .conn
                .map(|_| device.last_seen + self.config.heartbeat_timeout);
            assert_eq!(device.indexed.heartbeat, due, "device {id}: heartbeat");
            if let Some(due) = due {
                heartbeats += 1;
                assert!(
                    self.index.heartbeats.contains(id, due),
                    "device {id}: heartbeat deadline not indexed"
                );
            }
            if let Some(until) = device.paused_until {
                let due = self.index.pauses.get(id);
                assert!(
                    due.is_some_and(|due| due <= until),
                    "device {id}: pause indexed as {due:?}"
                );
            }
            if let Some(until) = device.lease_until {
                let due = self.index.leases.get(id);
                assert!(
                    due.is_some_and(|due| due <= until),
                    "device {id}: lease indexed as {due:?}"
                );
            }
            let entry = SlotEntry::of(device);
            assert_eq!(device.indexed.slots, entry, "device {id}: free slots");
            if let Some(entry) = entry {
                free += 1;
                free_total += entry.free;
                assert!(
                    self.index.free.contains(id, entry),
                    "device {id}: free slots not indexed"
                );
            }
        }
        assert_eq!(self.index.heartbeats.len(), heartbeats, "heartbeat entries");
        assert_eq!(self.index.free.len(), free, "free slot entries");
        assert_eq!(self.index.free.total(), free_total, "free slot total");
        let subscribers: BTreeSet<ConnId> = self
            .conns
            .iter()
            .filter(|(_, state)| state.subscription.is_some())
            .map(|(&conn, _)| conn)
            .collect();
        assert_eq!(self.index.subscribers, subscribers, "subscribers");
        assert_eq!(self.index.queues.keys(), self.queue, "queues by placement");
        assert_eq!(self.index.queues.len(), self.queue.len(), "queued tasks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Requirements;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn deadlines_keep_the_earliest_entry_and_pop_what_is_due_in_key_order() {
        let mut deadlines = Deadlines::default();
        assert_eq!(deadlines.first(), None);
        deadlines.schedule("b", secs(10));
        deadlines.schedule("a", secs(12));
        deadlines.schedule("b", secs(20)); // later: the earlier entry stays
        assert_eq!(deadlines.get("b"), Some(secs(10)));
        deadlines.schedule("a", secs(5)); // earlier: replaces
        assert_eq!(deadlines.get("a"), Some(secs(5)));
        assert_eq!(deadlines.len(), 2);
        assert_eq!(deadlines.first(), Some(secs(5)));
        assert!(deadlines.pop_due(secs(4)).is_empty());
        deadlines.schedule("c", secs(7));
        assert_eq!(deadlines.pop_due(secs(10)), vec!["a", "b", "c"]);
        assert_eq!(deadlines.first(), None);
        assert_eq!(deadlines.len(), 0);
        deadlines.schedule("a", secs(30));
        assert_eq!(deadlines.first(), Some(secs(30)));
    }

    fn entry(active: u64, slots: u64) -> Option<SlotEntry> {
        (active < slots).then(|| SlotEntry {
            load: active * 1_000_000 / slots,
            active,
            free: (slots - active) as usize,
        })
    }

    #[test]
    fn free_slots_orders_by_load_and_keeps_the_total() {
        let mut free = FreeSlots::default();
        free.update("a", None, entry(1, 2));
        free.update("b", None, entry(0, 4));
        free.update("c", None, entry(1, 4));
        assert_eq!(free.total(), 1 + 4 + 3);
        assert_eq!(free.least_loaded().collect::<Vec<_>>(), ["b", "c", "a"]);
        free.update("b", entry(0, 4), entry(3, 4));
        assert_eq!(free.least_loaded().collect::<Vec<_>>(), ["c", "a", "b"]);
        assert_eq!(free.total(), 1 + 1 + 3);
        free.update("a", entry(1, 2), entry(2, 2)); // full: out
        free.update("c", entry(1, 4), None);
        free.update("c", None, None);
        assert_eq!(free.least_loaded().collect::<Vec<_>>(), ["b"]);
        assert_eq!(free.total(), 1);
        assert_eq!(free.len(), 1);
        assert!(free.contains("b", entry(3, 4).expect("free")));
        free.update("b", entry(3, 4), None);
        assert_eq!(free.total(), 0);
        assert_eq!(free.least_loaded().count(), 0);
    }

    #[test]
    fn time_index_moves_keys_and_pops_what_is_due() {
        let mut index = TimeIndex::default();
        index.update("a", None, Some(secs(10)));
        index.update("b", None, Some(secs(5)));
        index.update("a", Some(secs(10)), Some(secs(3)));
        assert_eq!(index.first(), Some(secs(3)));
        index.update("a", Some(secs(3)), Some(secs(20)));
        assert_eq!(index.first(), Some(secs(5)));
        assert!(index.contains("a", secs(20)));
        assert_eq!(index.len(), 2);
        assert!(index.pop_due(secs(4)).is_empty());
        assert_eq!(index.pop_due(secs(20)), vec!["a", "b"]);
        assert_eq!(index.first(), None);
        index.update("c", None, Some(secs(1)));
        index.update("c", Some(secs(1)), None);
        assert_eq!(index.len(), 0);
    }

    fn key(priority: u8, seq: u64) -> QueueKey {
        QueueKey {
            priority: std::cmp::Reverse(priority),
            seq,
            task_id: format!("t{seq}"),
        }
    }

    fn spec(task_type: &str, tag: Option<&str>) -> TaskSpec {
        TaskSpec {
            requirements: Requirements {
                tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
                ..Requirements::default()
            },
            ..TaskSpec::new(task_type, serde_json::Value::Null)
        }
    }

    #[test]
    fn placement_queues_split_by_type_and_requirements_and_merge_by_key() {
        let mut queues = PlacementQueues::default();
        queues.insert(key(5, 1), &spec("echo", None));
        queues.insert(key(5, 2), &spec("echo", Some("gpu")));
        queues.insert(key(9, 3), &spec("echo", None));
        queues.insert(key(5, 4), &spec("shell", None));
        queues.insert(key(5, 5), &spec("echo", Some("gpu")));
        assert_eq!(queues.len(), 5);
        let heads: Vec<QueueKey> = queues.heads().into_iter().map(|(k, _)| k).collect();
        assert_eq!(heads, [key(9, 3), key(5, 2), key(5, 4)]);
        let (_, gpu) = queues
            .heads()
            .into_iter()
            .find(|(k, _)| *k == key(5, 2))
            .expect("the gpu placement");
        assert_eq!(queues.next_after(gpu, &key(5, 2)), Some(key(5, 5)));
        assert_eq!(queues.next_after(gpu, &key(5, 5)), None);
        queues.remove(&key(5, 2));
        queues.remove(&key(5, 5));
        queues.remove(&key(5, 5)); // not queued: nothing
        queues.remove(&key(7, 3)); // not under this key: nothing
        assert_eq!(queues.heads().len(), 2, "an empty placement is dropped");
        assert_eq!(queues.len(), 3);
        // Queued again under another key (a new priority): moved.
        queues.insert(key(1, 1), &spec("echo", None));
        assert_eq!(queues.len(), 3);
        assert_eq!(
            queues.keys().into_iter().collect::<Vec<_>>(),
            [key(9, 3), key(5, 4), key(1, 1)]
        );
    }
}
