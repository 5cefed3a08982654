//! Starting from the records the store loaded: devices start offline,
//! tasks a device held stay with it on a lease when it supports leases
//! (the others go back to the queue), and retries keep their backoff.

use super::records::{self, DeviceRecord, TaskRecord};
use super::registry::{index, Device};
use super::timers::TimerKey;
use super::{Core, Now};
use protocol::{DeviceStatus, TaskState};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

impl Core {
    /// Restores one stored device, offline; a profile stored before the
    /// cap on its size is cut down to what the master uses.
    pub(super) fn restore_device(&mut self, mut record: DeviceRecord, now: Now) {
        let mut changed = record.status != DeviceStatus::Offline;
        record.status = DeviceStatus::Offline;
        let profile = records::profile_value(&record.profile);
        if let Err(why) = protocol::limits::check_profile_size(&profile) {
            // Stored by an older master, before the cap: keep what the
            // master uses (resources, platform, role) and drop the
            // free-form rest, which the device sends again when it
            // registers. It is readable, so not quarantined.
            log::warn!(
                "device {}: {why}; keeping it without its capabilities and extra fields",
                record.device_id
            );
            let bytes = protocol::limits::json_len(&profile);
            let register = &mut record.profile;
            register.capabilities = None;
            register.extra.clear();
            register.network_interfaces.clear();
            register.running_tasks.clear();
            register
                .extra
                .insert("profile_truncated_from_bytes".into(), json!(bytes));
            changed = true;
        }
        if changed {
            self.persist_device(&record);
        }
        self.registry
            .by_registration
            .insert(record.registered_unix_ms, &record.device_id);
        self.registry.devices.insert(
            record.device_id.clone(),
            Device {
                record,
                conn: None,
                active: BTreeSet::new(),
                last_seen: now.monotonic,
                metrics: None,
                power: None,
                paused_until: None,
                lease_until: None,
                indexed: index::Indexed::default(),
            },
        );
    }

    /// Restores one stored task: held by its device on a lease, or queued
    /// again, or retrying with the rest of its backoff.
    pub(super) fn restore_task(&mut self, mut record: TaskRecord, now: Now) {
        let task_id = record.task_id.clone();
        if matches!(record.state, TaskState::Assigned | TaskState::Running) {
            let holder = record
                .device_id
                .as_ref()
                .and_then(|id| self.registry.devices.get_mut(id))
                .filter(|device| device.record.leases);
            match holder {
                Some(device) => {
                    device.active.insert(task_id.clone());
                    let until = now.monotonic + self.config.lease_grace;
                    device.lease_until = Some(until);
                    self.timers
                        .set(TimerKey::Lease(device.record.device_id.clone()), until);
                }
                None => {
                    record.state = TaskState::Queued;
                    record.lost += 1;
                    self.persist_task(&record.task_id);
                }
            }
        }
        if record.state == TaskState::Retrying {
            let wait_ms = record
                .retry_at_unix_ms
                .map_or(0, |at| (at - now.unix_ms).max(0));
            self.timers.set(
                TimerKey::Retry(task_id.clone()),
                now.monotonic + Duration::from_millis(wait_ms as u64),
            );
        }
        if record.state == TaskState::Queued {
            self.needs_dispatch = true;
        }
        let held = matches!(record.state, TaskState::Assigned | TaskState::Running);
        self.tasks.restore(record);
        if held {
            // The restart lost track of how long the attempt has run:
            // its timeout counts again from now, which errs on waiting.
            self.watch_attempt(now, &task_id);
        }
    }
}
