//! Matching queued tasks to devices and handing them out.

use super::{Core, Device, Now, QueueKey, Task};
use protocol::message::bytes_to_gib;
use protocol::{DeviceStatus, Event, Message, TaskAssign, TaskState};
use std::ops::Bound;

impl Core {
    /// Hands queued tasks, highest priority and oldest first, to devices
    /// with a free slot, least loaded first. A task no device can take now
    /// stays queued and does not block the tasks behind it.
    pub(super) fn dispatch(&mut self, now: Now) {
        let mut free_slots: usize = self
            .devices
            .values()
            .filter(|device| accepts_work(device, now))
            .map(free_slots)
            .sum();
        let mut cursor: Option<QueueKey> = None;
        // Tasks that ask for the same thing as a task no device could take
        // in this pass are skipped without looking at the devices again, so
        // a long backlog of unplaceable tasks costs little per pass.
        let mut unplaceable: std::collections::HashSet<String> = Default::default();
        while free_slots > 0 {
            let next = match &cursor {
                None => self.queue.iter().next().cloned(),
                Some(after) => self
                    .queue
                    .range((Bound::Excluded(after.clone()), Bound::Unbounded))
                    .next()
                    .cloned(),
            };
            let Some(key) = next else {
                break;
            };
            cursor = Some(key.clone());
            let Some(task) = self.tasks.get(&key.task_id) else {
                self.queue.remove(&key);
                continue;
            };
            let signature = task
                .refused_by
                .is_empty()
                .then(|| placement_signature(task));
            if signature.as_ref().is_some_and(|s| unplaceable.contains(s)) {
                continue;
            }
            let Some(device_id) = self.best_device(task, now) else {
                if let Some(signature) = signature {
                    unplaceable.insert(signature);
                }
                continue;
            };
            self.assign(now, &key, &device_id);
            free_slots -= 1;
        }
    }

    fn best_device(&self, task: &Task, now: Now) -> Option<String> {
        self.devices
            .values()
            .filter(|device| accepts_work(device, now) && free_slots(device) > 0)
            .filter(|device| !task.refused_by.contains(&device.record.device_id))
            .filter(|device| device_matches(device, task))
            .min_by_key(|device| {
                let active = device.active.len() as u64;
                let slots = u64::from(device.record.slots.max(1));
                (
                    active * 1_000_000 / slots,
                    active,
                    device.record.device_id.clone(),
                )
            })
            .map(|device| device.record.device_id.clone())
    }

    fn assign(&mut self, now: Now, key: &QueueKey, device_id: &str) {
        self.queue.remove(key);
        let Some(task) = self.tasks.get_mut(&key.task_id) else {
            return;
        };
        let record = &mut task.record;
        record.state = TaskState::Assigned;
        record.attempt += 1;
        record.device_id = Some(device_id.to_string());
        record.started_unix_ms = Some(now.unix_ms);
        let record = record.clone();
        self.persist_task(&record);
        self.watch_attempt(now, &key.task_id);
        let Some(device) = self.devices.get_mut(device_id) else {
            return;
        };
        device.active.insert(key.task_id.clone());
        if let Some(conn) = device.conn {
            let assign = TaskAssign {
                task: record.spec.clone(),
                attempt: record.attempt,
            };
            self.send(conn, Message::TaskAssign(assign), None);
        }
        self.emit(
            Event::TaskAssigned {
                task_id: key.task_id.clone(),
                device_id: device_id.to_string(),
                attempt: record.attempt,
            },
            true,
        );
    }
}

/// What decides where a task may run: its type and its requirements.
fn placement_signature(task: &Task) -> String {
    let spec = &task.record.spec;
    format!(
        "{}\u{0}{}",
        spec.task_type,
        serde_json::to_string(&spec.requirements).unwrap_or_default()
    )
}

fn accepts_work(device: &Device, now: Now) -> bool {
    device.conn.is_some()
        && device.record.status == DeviceStatus::Online
        && device
            .paused_until
            .is_none_or(|until| until <= now.monotonic)
}

fn free_slots(device: &Device) -> usize {
    (device.record.slots as usize).saturating_sub(device.active.len())
}

/// The architecture names that mean the same machine.
fn normalize_arch(arch: &str) -> String {
    match arch.to_ascii_lowercase().as_str() {
        "arm64" | "aarch64" => "aarch64".into(),
        "amd64" | "x86_64" | "x64" => "x86_64".into(),
        "armv7" | "armv7l" | "arm" | "armhf" => "arm".into(),
        other => other.to_string(),
    }
}

/// Whether the device offers everything the task requires. A requirement
/// on a value the device never reported is not met.
pub(super) fn device_matches(device: &Device, task: &Task) -> bool {
    let spec = &task.record.spec;
    let wanted = &spec.requirements;
    let register = &device.register;
    let record = &device.record;
    if let Some(types) = &record.task_types {
        if !types.iter().any(|t| t == &spec.task_type) {
            return false;
        }
    }
    if let Some(cores) = wanted.min_cpu_cores {
        if register.cpu_cores.unwrap_or(0) < cores {
            return false;
        }
    }
    if let Some(gb) = wanted.min_memory_gb {
        if bytes_to_gib(register.memory_total_bytes.unwrap_or(0)) < gb {
            return false;
        }
    }
    if let Some(gb) = wanted.min_storage_gb {
        if bytes_to_gib(register.disk_total_bytes.unwrap_or(0)) < gb {
            return false;
        }
    }
    let same = |want: &Option<String>, have: &Option<String>| match want {
        None => true,
        Some(want) => have
            .as_deref()
            .is_some_and(|have| have.eq_ignore_ascii_case(want)),
    };
    if !same(&wanted.platform, &register.platform) {
        return false;
    }
    if let Some(arch) = &wanted.architecture {
        let have = register.architecture.as_deref().map(normalize_arch);
        if have.as_deref() != Some(normalize_arch(arch).as_str()) {
            return false;
        }
    }
    if wanted
        .role
        .as_ref()
        .is_some_and(|role| !role.eq_ignore_ascii_case(&record.role))
    {
        return false;
    }
    if !wanted.tags.iter().all(|tag| record.tags.contains(tag)) {
        return false;
    }
    if wanted
        .device_id
        .as_ref()
        .is_some_and(|id| id != &record.device_id)
    {
        return false;
    }
    true
}
