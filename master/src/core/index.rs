//! Indexes the core keeps beside its maps, so that a turn of the event
//! loop, an event or a placement costs about O(log n) in the number of
//! devices, connections and queued tasks, not O(n):
//!
//! - [`Subscribers`]: the subscribed connections by the tasks they follow,
//!   so an event costs the connections it goes to, not every filter;
//! - [`FreeSlots`]: devices that can take a task now, least loaded first,
//!   and the total of their free slots;
//! - [`TaskListing`]: every task by state, newest first, so that a listing
//!   (which any reader may ask for on every line it sends) costs its page,
//!   not the history, and the count of tasks per state is at hand;
//! - [`DeviceListing`]: every device, newest registered first, so that a
//!   device listing costs its page too;
//! - [`DeviceTotals`]: the counts and resources of the connected devices,
//!   kept as devices connect, re-register and leave, so `status` adds
//!   nothing up.
//!
//! All of them are plain data, sans-IO like the rest of the core.

use super::timers::{TimerKey, TimerKind};
use super::{ConnId, Core, Device, Now};
use protocol::message::bytes_to_gib;
use protocol::{DeviceStatus, ResourceTotals, Subscribe, TaskState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// The index of the tasks' side; the devices' and connections' indexes
/// ([`Subscribers`], [`FreeSlots`], [`DeviceListing`], [`DeviceTotals`])
/// are held by the registry, next to what they index.
#[derive(Debug, Default)]
pub(super) struct Indexes {
    /// Every task by state, newest first.
    pub(super) listing: TaskListing,
}

/// What the indexes hold for one device, kept in the device itself so that
/// the index every connected device is in needs no map of its own (with
/// 10,000 workers, that is memory the master would notice).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Indexed {
    /// Its entry in [`Indexes::free`].
    pub(super) slots: Option<SlotEntry>,
}

/// Where a device stands in [`DeviceListing`]: when it first registered
/// (Unix milliseconds, kept across re-registrations and restarts), then its
/// id.
pub(super) type DeviceKey = (i64, String);

/// Every device, by when it first registered. Devices are never removed
/// (a revoked one stays, so that its revocation shows), and a device's
/// place never changes, so a keyset cursor (`before`, a device id) walks
/// every device that existed when the walk started exactly once.
#[derive(Debug, Default)]
pub(super) struct DeviceListing {
    order: BTreeSet<DeviceKey>,
}

impl DeviceListing {
    /// Adds a device (new, or restored).
    pub(super) fn insert(&mut self, registered_unix_ms: i64, device_id: &str) {
        self.order
            .insert((registered_unix_ms, device_id.to_string()));
    }

    /// Up to `limit` ids of devices for which `keep` holds, newest first,
    /// registered before `before` (all when `None`), and whether another
    /// such device follows. The walk visits the page and the devices
    /// `keep` turns down on the way (a comparison each, nothing copied);
    /// without a filter, that is `limit + 1` entries.
    pub(super) fn page<'a>(
        &'a self,
        before: Option<&DeviceKey>,
        limit: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Page<'a> {
        let walk: Box<dyn Iterator<Item = &'a DeviceKey>> = match before {
            Some(before) => Box::new(self.order.range(..before.clone()).rev()),
            None => Box::new(self.order.iter().rev()),
        };
        let mut ids = Vec::new();
        let mut more = false;
        for (_, id) in walk.filter(|(_, id)| keep(id)) {
            if ids.len() == limit {
                more = true;
                break;
            }
            ids.push(id.as_str());
        }
        Page { ids, more }
    }

    /// Every entry, for the consistency check.
    #[cfg(test)]
    pub(super) fn entries(&self) -> &BTreeSet<DeviceKey> {
        &self.order
    }
}

/// The totals `status` shows, over the connected devices (online or
/// draining): kept by adding a device when it connects and taking it away,
/// as it was added, before it re-registers or when it leaves. Sums are
/// integers (bytes, not GiB) so that taking a device away undoes adding it
/// exactly, and wide enough that hostile figures cannot overflow them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct DeviceTotals {
    online: u64,
    cpu_cores: u64,
    memory_bytes: u128,
    disk_bytes: u128,
    by_role: BTreeMap<String, u32>,
    by_platform: BTreeMap<String, u32>,
}

impl DeviceTotals {
    /// Counts `device` if it is connected.
    pub(super) fn add(&mut self, device: &Device) {
        if device.conn.is_none() {
            return;
        }
        let register = &device.register;
        self.online += 1;
        self.cpu_cores += u64::from(register.cpu_cores.unwrap_or(0));
        self.memory_bytes += u128::from(register.memory_total_bytes.unwrap_or(0));
        self.disk_bytes += u128::from(register.disk_total_bytes.unwrap_or(0));
        *self.by_role.entry(device.record.role.clone()).or_default() += 1;
        *self.by_platform.entry(platform_of(device)).or_default() += 1;
    }

    /// Stops counting `device`, which must be as it was when added.
    pub(super) fn remove(&mut self, device: &Device) {
        if device.conn.is_none() {
            return;
        }
        let register = &device.register;
        self.online = self.online.saturating_sub(1);
        self.cpu_cores = self
            .cpu_cores
            .saturating_sub(u64::from(register.cpu_cores.unwrap_or(0)));
        self.memory_bytes = self
            .memory_bytes
            .saturating_sub(u128::from(register.memory_total_bytes.unwrap_or(0)));
        self.disk_bytes = self
            .disk_bytes
            .saturating_sub(u128::from(register.disk_total_bytes.unwrap_or(0)));
        decrement(&mut self.by_role, &device.record.role);
        decrement(&mut self.by_platform, &platform_of(device));
    }

    /// Connected devices.
    pub(super) fn online(&self) -> u32 {
        u32::try_from(self.online).unwrap_or(u32::MAX)
    }

    /// Their summed resources, as `status` shows them.
    pub(super) fn resources(&self) -> ResourceTotals {
        let gib = |bytes: u128| bytes_to_gib(u64::try_from(bytes).unwrap_or(u64::MAX));
        ResourceTotals {
            cpu_cores: u32::try_from(self.cpu_cores).unwrap_or(u32::MAX),
            memory_gb: gib(self.memory_bytes),
            storage_gb: gib(self.disk_bytes),
        }
    }

    /// Connected devices per role.
    pub(super) fn by_role(&self) -> &BTreeMap<String, u32> {
        &self.by_role
    }

    /// Connected devices per platform.
    pub(super) fn by_platform(&self) -> &BTreeMap<String, u32> {
        &self.by_platform
    }
}

/// The platform a device counts under in `status`.
fn platform_of(device: &Device) -> String {
    device
        .register
        .platform
        .clone()
        .unwrap_or_else(|| "unknown".into())
}

/// Counts one less under `key`, forgetting keys that reach zero (so the
/// maps hold only what is connected now).
fn decrement(counts: &mut BTreeMap<String, u32>, key: &str) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
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

/// The subscribed connections, by what they follow: every event, or the
/// events of some tasks. A reader may subscribe (`watch`) with a filter as
/// long as its line allows, on as many connections as it may open, so an
/// event is matched by a lookup of its task, never by walking every
/// subscriber's filter: it costs the connections it goes to.
#[derive(Debug, Default)]
pub(super) struct Subscribers {
    /// Connections that follow every event.
    every: BTreeSet<ConnId>,
    /// Connections that follow the events of a task, by task id.
    by_task: HashMap<String, BTreeSet<ConnId>>,
}

impl Subscribers {
    /// Adds `conn` with `subscription` (after `remove` of its previous one).
    pub(super) fn add(&mut self, conn: ConnId, subscription: &Subscribe) {
        if subscription.task_ids.is_empty() {
            self.every.insert(conn);
        }
        for task_id in &subscription.task_ids {
            self.by_task
                .entry(task_id.clone())
                .or_default()
                .insert(conn);
        }
    }

    /// Takes `conn` out, with the subscription it was added with.
    pub(super) fn remove(&mut self, conn: ConnId, subscription: &Subscribe) {
        self.every.remove(&conn);
        for task_id in &subscription.task_ids {
            if let Some(conns) = self.by_task.get_mut(task_id) {
                conns.remove(&conn);
                if conns.is_empty() {
                    self.by_task.remove(task_id);
                }
            }
        }
    }

    /// The connections that want an event about `task_id` (`None`: an
    /// event about no task, which only those following everything get),
    /// in connection order.
    pub(super) fn targets(&self, task_id: Option<&str>) -> Vec<ConnId> {
        let following = task_id.and_then(|id| self.by_task.get(id));
        let mut targets: Vec<ConnId> = self.every.iter().copied().collect();
        if let Some(conns) = following {
            targets.extend(conns.iter().copied());
            targets.sort_unstable();
            targets.dedup();
        }
        targets
    }

    /// Whether anyone wants an event about `task_id`.
    pub(super) fn want(&self, task_id: &str) -> bool {
        !self.every.is_empty() || self.by_task.contains_key(task_id)
    }

    /// Each subscribed connection and the tasks it follows (none: every
    /// event), for checks.
    #[cfg(test)]
    pub(super) fn filters(&self) -> BTreeMap<ConnId, BTreeSet<String>> {
        let mut filters: BTreeMap<ConnId, BTreeSet<String>> = self
            .every
            .iter()
            .map(|&conn| (conn, BTreeSet::new()))
            .collect();
        for (task_id, conns) in &self.by_task {
            for &conn in conns {
                filters.entry(conn).or_default().insert(task_id.clone());
            }
        }
        filters
    }
}

/// Where a task stands in the listing: its submission order, then its id.
/// A task keeps its key for life (its `seq` never changes); the id makes
/// keys unique even if a store ever held two tasks with the same `seq`.
pub(super) type ListKey = (u64, String);

/// The number of task states, one ordered set each in [`TaskListing`].
const STATES: usize = TaskState::ALL.len();

/// Every task, one ordered set per state, newest (highest `seq`) last in
/// each set and so first when walked backwards.
///
/// Why this shape: a listing is asked for by any reader, as often as it
/// likes (a text `tasks` line is 6 bytes), so it must cost the page it
/// returns, whatever the history. A page of one state is a backwards walk
/// of that state's set from the cursor; a page of every state merges the
/// nine sets' walks (nine is a constant, and one set per state, rather than
/// one more set of every task, keeps a single entry per task in memory).
/// The walk is lazy and stops after `limit + 1` entries, the one past the
/// page saying whether there is a next page. The sets' lengths are the
/// counts per state, kept as tasks move, so `status` counts nothing.
#[derive(Debug, Default)]
pub(super) struct TaskListing {
    by_state: [BTreeSet<ListKey>; STATES],
}

/// One page of a listing: the ids, newest first, and whether older tasks
/// (of the same filter) follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page<'a> {
    /// The tasks' ids, newest first.
    pub(super) ids: Vec<&'a str>,
    /// Whether the walk found a task past the page.
    pub(super) more: bool,
}

impl TaskListing {
    fn set(&self, state: TaskState) -> &BTreeSet<ListKey> {
        &self.by_state[state_slot(state)]
    }

    fn set_mut(&mut self, state: TaskState) -> &mut BTreeSet<ListKey> {
        &mut self.by_state[state_slot(state)]
    }

    /// Adds a task (new, or restored) in `state`.
    pub(super) fn insert(&mut self, state: TaskState, seq: u64, task_id: &str) {
        self.set_mut(state).insert((seq, task_id.to_string()));
    }

    /// Takes a task out of the listing.
    pub(super) fn remove(&mut self, state: TaskState, seq: u64, task_id: &str) {
        self.set_mut(state).remove(&(seq, task_id.to_string()));
    }

    /// Moves a task from `old` to `new` (its key is moved, not copied).
    pub(super) fn update(&mut self, seq: u64, task_id: &str, old: TaskState, new: TaskState) {
        if old == new {
            return;
        }
        let key = self
            .set_mut(old)
            .take(&(seq, task_id.to_string()))
            .unwrap_or_else(|| (seq, task_id.to_string()));
        self.set_mut(new).insert(key);
    }

    /// Tasks in `state`: the length of its set, O(1).
    pub(super) fn count(&self, state: TaskState) -> usize {
        self.set(state).len()
    }

    /// The walks a page is merged from: one per state in the filter, each
    /// newest first and starting below `before` (exclusive).
    fn sources<'a>(
        &'a self,
        state: Option<TaskState>,
        before: Option<&ListKey>,
    ) -> Vec<impl Iterator<Item = &'a ListKey>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let upper = before.map_or(Unbounded, Excluded);
        let states: &[TaskState] = match &state {
            Some(state) => std::slice::from_ref(state),
            None => &TaskState::ALL,
        };
        states
            .iter()
            .map(|&state| self.set(state).range((Unbounded, upper)).rev())
            .collect()
    }

    /// Up to `limit` tasks of `state` (every state when `None`) older than
    /// `before`, newest first. Visits at most `limit + 1` entries for one
    /// state and `limit + STATES` for all (see [`merge_page`]).
    pub(super) fn page(
        &self,
        state: Option<TaskState>,
        before: Option<&ListKey>,
        limit: usize,
    ) -> Page<'_> {
        merge_page(self.sources(state, before), limit)
    }

    /// [`TaskListing::page`], and how many index entries its walk visited.
    #[cfg(test)]
    pub(super) fn page_counted(
        &self,
        state: Option<TaskState>,
        before: Option<&ListKey>,
        limit: usize,
    ) -> (Page<'_>, usize) {
        let visited = std::cell::Cell::new(0usize);
        let sources = self
            .sources(state, before)
            .into_iter()
            .map(|walk| walk.inspect(|_| visited.set(visited.get() + 1)))
            .collect();
        let page = merge_page(sources, limit);
        (page, visited.get())
    }

    /// Every key, with its state (for checks).
    #[cfg(test)]
    pub(super) fn entries(&self) -> std::collections::BTreeMap<ListKey, TaskState> {
        TaskState::ALL
            .into_iter()
            .flat_map(|state| self.set(state).iter().map(move |key| (key.clone(), state)))
            .collect()
    }
}

/// Where a state's set is in [`TaskListing::by_state`].
fn state_slot(state: TaskState) -> usize {
    match state {
        TaskState::Queued => 0,
        TaskState::Assigned => 1,
        TaskState::Running => 2,
        TaskState::Retrying => 3,
        TaskState::Completed => 4,
        TaskState::Failed => 5,
        TaskState::TimedOut => 6,
        TaskState::Cancelled => 7,
        TaskState::DeadLetter => 8,
    }
}

/// Merges walks that are each newest first into one page of `limit`,
/// newest first, plus whether an entry follows it.
///
/// Cost, by construction: each walk is pulled once to fill its head, then
/// once each time its head is taken, and the merge takes at most `limit`
/// heads (a head left over after that is the proof of a next page). So it
/// pulls at most `walks + limit` entries (`limit + 1` for one state) and
/// compares at most `walks` heads per entry taken, whatever the walks'
/// lengths; each pull is a step of a B-tree range iterator, whose start
/// costs O(log n) once.
fn merge_page<'a, I>(walks: Vec<I>, limit: usize) -> Page<'a>
where
    I: Iterator<Item = &'a ListKey>,
{
    let mut heads: Vec<(Option<&'a ListKey>, I)> = walks
        .into_iter()
        .map(|mut walk| (walk.next(), walk))
        .collect();
    let mut ids = Vec::with_capacity(limit.min(1024));
    loop {
        let newest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, (head, _))| head.map(|key| (i, key)))
            .max_by(|a, b| a.1.cmp(b.1))
            .map(|(i, _)| i);
        let Some(i) = newest else {
            return Page { ids, more: false };
        };
        if ids.len() == limit {
            return Page { ids, more: true };
        }
        let (head, walk) = &mut heads[i];
        if let Some((_, id)) = head.take() {
            ids.push(id.as_str());
        }
        *head = walk.next();
    }
}

impl Core {
    /// Records whether, and how loaded, device `device_id` can take a task
    /// now. Called after every change to a device's connection, status,
    /// pause, slots or active tasks.
    pub(super) fn refresh_slots(&mut self, device_id: &str) {
        self.registry.refresh_slots(device_id);
    }

    /// Sets when device `device_id`'s heartbeats stop counting (`None`:
    /// it is not connected).
    pub(super) fn set_heartbeat_due(&mut self, device_id: &str, due: Option<Duration>) {
        let key = TimerKey::Heartbeat(device_id.to_string());
        match due {
            Some(due) if self.registry.devices.contains_key(device_id) => self.timers.set(key, due),
            _ => {
                self.timers.remove(&key);
            }
        }
    }

    /// Adds a new (or restored) task to the listing under its state.
    pub(super) fn list_task(&mut self, task_id: &str) {
        let Some(task) = self.tasks.by_id.get_mut(task_id) else {
            return;
        };
        task.listed = task.record.state;
        self.index
            .listing
            .insert(task.record.state, task.record.seq, task_id);
    }

    /// Moves task `task_id` to the set of its current state, if it changed
    /// since it was listed. Called by `persist_task`: every change to a
    /// task's record is persisted, so every change of state passes here
    /// (and `check_indexes` checks, after every step of the sans-IO tests,
    /// that none was missed).
    pub(super) fn relist_task(&mut self, task_id: &str) {
        let Some(task) = self.tasks.by_id.get_mut(task_id) else {
            return;
        };
        let new = task.record.state;
        if task.listed != new {
            let old = std::mem::replace(&mut task.listed, new);
            self.index
                .listing
                .update(task.record.seq, task_id, old, new);
        }
    }

    /// Ends the pauses that are over; whether any ended.
    pub(super) fn resume_paused(&mut self, now: Now) -> bool {
        let mut resumed = false;
        for device_id in self.timers.pop_due_devices(TimerKind::Pause, now.monotonic) {
            let Some(device) = self.registry.devices.get_mut(&device_id) else {
                continue;
            };
            match device.paused_until {
                Some(until) if until <= now.monotonic => {
                    device.paused_until = None;
                    resumed = true;
                    self.refresh_slots(&device_id);
                }
                Some(until) => self.timers.set(TimerKey::Pause(device_id), until),
                None => {}
            }
        }
        resumed
    }

    /// The tasks waiting out a retry backoff, with when each may run again.
    #[cfg(test)]
    pub(super) fn retry_timers(&self) -> impl Iterator<Item = (Duration, &str)> {
        self.timers
            .iter(TimerKind::Retry)
            .filter_map(|(at, key)| match key {
                TimerKey::Retry(id) => Some((at, id.as_str())),
                _ => None,
            })
    }

    /// Panics unless every index agrees with the state it indexes.
    #[cfg(test)]
    pub(super) fn check_indexes(&self) {
        let mut heartbeats = 0;
        let mut free = 0;
        let mut free_total = 0;
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
            let entry = SlotEntry::of(device);
            assert_eq!(device.indexed.slots, entry, "device {id}: free slots");
            if let Some(entry) = entry {
                free += 1;
                free_total += entry.free;
                assert!(
                    self.registry.free.contains(id, entry),
                    "device {id}: free slots not indexed"
                );
            }
        }
        assert_eq!(
            self.timers.len(TimerKind::Heartbeat),
            heartbeats,
            "heartbeat entries"
        );
        assert_eq!(self.registry.free.len(), free, "free slot entries");
        assert_eq!(self.registry.free.total(), free_total, "free slot total");
        self.registry.check_connections();
        let listed: BTreeMap<ListKey, TaskState> = self
            .tasks
            .by_id
            .iter()
            .map(|(id, task)| {
                assert_eq!(task.listed, task.record.state, "task {id}: listed state");
                ((task.record.seq, id.clone()), task.record.state)
            })
            .collect();
        assert_eq!(self.index.listing.entries(), listed, "tasks by state");
        let devices: BTreeSet<DeviceKey> = self
            .registry
            .devices
            .iter()
            .map(|(id, device)| (device.record.registered_unix_ms, id.clone()))
            .collect();
        assert_eq!(
            self.registry.by_registration.entries(),
            &devices,
            "devices by registration"
        );
        let mut totals = DeviceTotals::default();
        for device in self.registry.devices.values() {
            totals.add(device);
        }
        assert_eq!(self.registry.totals, totals, "totals of connected devices");
        for state in TaskState::ALL {
            let count = listed.values().filter(|&&s| s == state).count();
            assert_eq!(self.index.listing.count(state), count, "{state} count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A listing of `size` tasks `t{seq}`: nine in ten completed, the rest
    /// spread over the other states, and the oldest one queued.
    fn listing(size: u64) -> TaskListing {
        let mut listing = TaskListing::default();
        for seq in 0..size {
            let state = match seq {
                0 => TaskState::Queued,
                _ if seq % 10 != 0 => TaskState::Completed,
                _ => TaskState::ALL[1 + (seq / 10 % 8) as usize],
            };
            listing.insert(state, seq, &format!("t{seq}"));
        }
        listing
    }

    #[test]
    fn task_listing_pages_newest_first_and_moves_tasks_between_states() {
        let mut listing = TaskListing::default();
        for (seq, state) in [
            (1, TaskState::Queued),
            (2, TaskState::Running),
            (3, TaskState::Queued),
        ] {
            listing.insert(state, seq, &format!("t{seq}"));
        }
        let page = |listing: &TaskListing, state, before: Option<(u64, &str)>, limit| {
            let before = before.map(|(seq, id)| (seq, id.to_string()));
            let page = listing.page(state, before.as_ref(), limit);
            (
                page.ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
                page.more,
            )
        };
        assert_eq!(
            page(&listing, None, None, 10),
            (vec!["t3".into(), "t2".into(), "t1".into()], false)
        );
        assert_eq!(
            page(&listing, None, None, 2),
            (vec!["t3".into(), "t2".into()], true)
        );
        assert_eq!(
            page(&listing, None, Some((2, "t2")), 2),
            (vec!["t1".into()], false)
        );
        assert_eq!(
            page(&listing, Some(TaskState::Queued), None, 1),
            (vec!["t3".into()], true)
        );
        assert_eq!(page(&listing, None, None, 0), (vec![], true));
        assert_eq!(
            page(&listing, Some(TaskState::Failed), None, 5),
            (vec![], false)
        );
        listing.update(3, "t3", TaskState::Queued, TaskState::Completed);
        listing.update(3, "t3", TaskState::Completed, TaskState::Completed);
        assert_eq!(listing.count(TaskState::Queued), 1);
        assert_eq!(listing.count(TaskState::Completed), 1);
        assert_eq!(page(&listing, None, None, 10).0, ["t3", "t2", "t1"]);
        assert_eq!(page(&listing, Some(TaskState::Queued), None, 10).0, ["t1"]);
        listing.remove(TaskState::Running, 2, "t2");
        assert_eq!(page(&listing, None, None, 10).0, ["t3", "t1"]);
    }

    #[test]
    fn a_page_visits_its_length_plus_one_entry_per_walked_state_whatever_the_history() {
        // The cost of a listing, counted rather than timed: the entries its
        // walk takes from the index, for 1,000 and for 100,000 tasks.
        let small = listing(1000);
        let large = listing(100_000);
        for (listing, size) in [(&small, 1000u64), (&large, 100_000)] {
            let cursors = [
                None,
                Some((size / 2, format!("t{}", size / 2))),
                Some((1, "t1".to_string())),
            ];
            for state in std::iter::once(None).chain(TaskState::ALL.map(Some)) {
                let walks = if state.is_some() { 1 } else { STATES };
                for before in &cursors {
                    for limit in [0, 1, 10, 100, 1000] {
                        let (page, visited) = listing.page_counted(state, before.as_ref(), limit);
                        assert_eq!(page, listing.page(state, before.as_ref(), limit));
                        assert!(
                            visited <= limit + walks,
                            "{size} tasks, {state:?} before {before:?}, limit {limit}: {visited} entries"
                        );
                        assert!(page.ids.len() <= limit);
                    }
                }
            }
        }
        // The same first page costs the same with a hundred times the
        // history: of all tasks, of a common state, and of a state that
        // only the oldest task is in (the scan walked all 100,000 for it).
        for (state, shown) in [
            (None, 100),
            (Some(TaskState::Completed), 100),
            (Some(TaskState::Queued), 1),
        ] {
            let (small_page, small_visits) = small.page_counted(state, None, 100);
            let (large_page, large_visits) = large.page_counted(state, None, 100);
            assert_eq!(small_visits, large_visits, "{state:?}");
            assert_eq!((small_page.ids.len(), large_page.ids.len()), (shown, shown));
        }
        let (queued, visits) = large.page_counted(Some(TaskState::Queued), None, 100);
        assert_eq!(
            queued.ids.len(),
            visits,
            "only the queued tasks were walked"
        );
    }
}
