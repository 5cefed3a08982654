//! The registry's indexes, kept beside its maps so that a turn of the
//! event loop, an event or a placement costs about O(log n) in the number
//! of devices and connections, not O(n):
//!
//! - [`Subscribers`]: the subscribed connections by the tasks they follow,
//!   so an event costs the connections it goes to, not every filter;
//! - [`FreeSlots`]: devices that can take a task now, least loaded first,
//!   and the total of their free slots;
//! - [`DeviceListing`]: every device, newest registered first, so that a
//!   device listing costs its page;
//! - [`DeviceTotals`]: the counts and resources of the connected devices,
//!   kept as devices connect, re-register and leave, so `status` adds
//!   nothing up.
//!
//! All of them are plain data, sans-IO like the rest of the core.

use super::Device;
use crate::core::page::Page;
use crate::core::ConnId;
use protocol::message::bytes_to_gib;
use protocol::{DeviceStatus, ResourceTotals, Subscribe};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the indexes hold for one device, kept in the device itself so that
/// the index every connected device is in needs no map of its own (with
/// 10,000 workers, that is memory the master would notice).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::core) struct Indexed {
    /// Its entry in [`FreeSlots`].
    pub(in crate::core) slots: Option<SlotEntry>,
}

/// Where a device stands in [`DeviceListing`]: when it first registered
/// (Unix milliseconds, kept across re-registrations and restarts), then its
/// id.
pub(in crate::core) type DeviceKey = (i64, String);

/// Every device, by when it first registered. Devices are never removed
/// (a revoked one stays, so that its revocation shows), and a device's
/// place never changes, so a keyset cursor (`before`, a device id) walks
/// every device that existed when the walk started exactly once.
#[derive(Debug, Default)]
pub(in crate::core) struct DeviceListing {
    order: BTreeSet<DeviceKey>,
}

impl DeviceListing {
    /// Adds a device (new, or restored).
    pub(in crate::core) fn insert(&mut self, registered_unix_ms: i64, device_id: &str) {
        self.order
            .insert((registered_unix_ms, device_id.to_string()));
    }

    /// Up to `limit` ids of devices for which `keep` holds, newest first,
    /// registered before `before` (all when `None`), and whether another
    /// such device follows. The walk visits the page and the devices
    /// `keep` turns down on the way (a comparison each, nothing copied);
    /// without a filter, that is `limit + 1` entries.
    pub(in crate::core) fn page<'a>(
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
    pub(in crate::core) fn entries(&self) -> &BTreeSet<DeviceKey> {
        &self.order
    }
}

/// The totals `status` shows, over the connected devices (online or
/// draining): kept by adding a device when it connects and taking it away,
/// as it was added, before it re-registers or when it leaves. Sums are
/// integers (bytes, not GiB) so that taking a device away undoes adding it
/// exactly, and wide enough that hostile figures cannot overflow them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(in crate::core) struct DeviceTotals {
    online: u64,
    cpu_cores: u64,
    memory_bytes: u128,
    disk_bytes: u128,
    by_role: BTreeMap<String, u32>,
    by_platform: BTreeMap<String, u32>,
}

impl DeviceTotals {
    /// Counts `device` if it is connected.
    pub(in crate::core) fn add(&mut self, device: &Device) {
        if device.conn.is_none() {
            return;
        }
        let register = &device.record.profile;
        self.online += 1;
        self.cpu_cores += u64::from(register.cpu_cores.unwrap_or(0));
        self.memory_bytes += u128::from(register.memory_total_bytes.unwrap_or(0));
        self.disk_bytes += u128::from(register.disk_total_bytes.unwrap_or(0));
        *self.by_role.entry(device.record.role.clone()).or_default() += 1;
        *self.by_platform.entry(platform_of(device)).or_default() += 1;
    }

    /// Stops counting `device`, which must be as it was when added.
    pub(in crate::core) fn remove(&mut self, device: &Device) {
        if device.conn.is_none() {
            return;
        }
        let register = &device.record.profile;
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
    pub(in crate::core) fn online(&self) -> u32 {
        u32::try_from(self.online).unwrap_or(u32::MAX)
    }

    /// Their summed resources, as `status` shows them.
    pub(in crate::core) fn resources(&self) -> ResourceTotals {
        let gib = |bytes: u128| bytes_to_gib(u64::try_from(bytes).unwrap_or(u64::MAX));
        ResourceTotals {
            cpu_cores: u32::try_from(self.cpu_cores).unwrap_or(u32::MAX),
            memory_gb: gib(self.memory_bytes),
            storage_gb: gib(self.disk_bytes),
        }
    }

    /// Connected devices per role.
    pub(in crate::core) fn by_role(&self) -> &BTreeMap<String, u32> {
        &self.by_role
    }

    /// Connected devices per platform.
    pub(in crate::core) fn by_platform(&self) -> &BTreeMap<String, u32> {
        &self.by_platform
    }
}

/// The platform a device counts under in `status`.
fn platform_of(device: &Device) -> String {
    device
        .record
        .profile
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
pub(in crate::core) struct SlotEntry {
    load: u64,
    active: u64,
    free: usize,
}

impl SlotEntry {
    /// The entry of a device, or `None` when it cannot take a task now
    /// (offline, draining, paused, or every slot taken).
    pub(in crate::core) fn of(device: &Device) -> Option<SlotEntry> {
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
pub(in crate::core) struct FreeSlots {
    by_load: BTreeSet<(u64, u64, String)>,
    total: usize,
}

impl FreeSlots {
    /// Moves `id` from entry `old` to entry `new`.
    pub(in crate::core) fn update(
        &mut self,
        id: &str,
        old: Option<SlotEntry>,
        new: Option<SlotEntry>,
    ) {
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
    pub(in crate::core) fn total(&self) -> usize {
        self.total
    }

    /// Devices that can take a task, least loaded first.
    pub(in crate::core) fn least_loaded(&self) -> impl Iterator<Item = &str> {
        self.by_load.iter().map(|(_, _, id)| id.as_str())
    }

    /// Whether `id` is recorded with `entry`.
    #[cfg(test)]
    pub(in crate::core) fn contains(&self, id: &str, entry: SlotEntry) -> bool {
        self.by_load
            .contains(&(entry.load, entry.active, id.to_string()))
    }

    /// Number of devices recorded.
    #[cfg(test)]
    pub(in crate::core) fn len(&self) -> usize {
        self.by_load.len()
    }
}

/// The subscribed connections, by what they follow: every event, or the
/// events of some tasks. A reader may subscribe (`watch`) with a filter as
/// long as its line allows, on as many connections as it may open, so an
/// event is matched by a lookup of its task, never by walking every
/// subscriber's filter: it costs the connections it goes to.
#[derive(Debug, Default)]
pub(in crate::core) struct Subscribers {
    /// Connections that follow every event.
    every: BTreeSet<ConnId>,
    /// Connections that follow the events of a task, by task id.
    by_task: HashMap<String, BTreeSet<ConnId>>,
}

impl Subscribers {
    /// Adds `conn` with `subscription` (after `remove` of its previous one).
    pub(in crate::core) fn add(&mut self, conn: ConnId, subscription: &Subscribe) {
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
    pub(in crate::core) fn remove(&mut self, conn: ConnId, subscription: &Subscribe) {
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
    pub(in crate::core) fn targets(&self, task_id: Option<&str>) -> Vec<ConnId> {
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
    pub(in crate::core) fn want(&self, task_id: &str) -> bool {
        !self.every.is_empty() || self.by_task.contains_key(task_id)
    }

    /// Each subscribed connection and the tasks it follows (none: every
    /// event), for checks.
    #[cfg(test)]
    pub(in crate::core) fn filters(&self) -> BTreeMap<ConnId, BTreeSet<String>> {
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

#[cfg(test)]
/// The consistency check of the sans-IO tests, for the registry's side.
#[cfg(test)]
impl super::Registry {
    /// Panics unless every index of the registry agrees with the devices
    /// and connections. (The timer entries its devices should have are
    /// checked by `Core::check_indexes`, which holds the timer table.)
    pub(in crate::core) fn check_indexes(&self) {
        let mut free = 0;
        let mut free_total = 0;
        for (id, device) in &self.devices {
            let entry = SlotEntry::of(device);
            assert_eq!(device.indexed.slots, entry, "device {id}: free slots");
            if let Some(entry) = entry {
                free += 1;
                free_total += entry.free;
                assert!(
                    self.free.contains(id, entry),
                    "device {id}: free slots not indexed"
                );
            }
        }
        assert_eq!(self.free.len(), free, "free slot entries");
        assert_eq!(self.free.total(), free_total, "free slot total");
        self.check_connections();
        let devices: BTreeSet<DeviceKey> = self
            .devices
            .iter()
            .map(|(id, device)| (device.record.registered_unix_ms, id.clone()))
            .collect();
        assert_eq!(
            self.by_registration.entries(),
            &devices,
            "devices by registration"
        );
        let mut totals = DeviceTotals::default();
        for device in self.devices.values() {
            totals.add(device);
        }
        assert_eq!(self.totals, totals, "totals of connected devices");
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
}
