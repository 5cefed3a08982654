//! Matching queued tasks to devices and handing them out.

use super::{Core, Device, Now, Placement, QueueKey, Registry, Task};
use protocol::message::bytes_to_gib;
use protocol::{Event, Message, TaskAssign};

impl Core {
    /// Hands queued tasks, highest priority and oldest first, to devices
    /// with a free slot, least loaded first. A task no device can take now
    /// stays queued and does not block the tasks behind it.
    ///
    /// The queue is split by placement (type and requirements): the pass
    /// merges the heads of those queues in queue order, and a placement
    /// whose head no device can take is left for the rest of the pass, so
    /// tasks behind it that ask for the same thing cost nothing. Devices
    /// come from the index of those with a free slot, least loaded first,
    /// so a placement looks at no busy device.
    pub(super) fn dispatch(&mut self, now: Now) {
        // A pause that is over counts as over even before the timer ran.
        self.resume_paused(now);
        let mut free_slots = self.registry.free_slots();
        if free_slots == 0 {
            return;
        }
        let mut heads = self.tasks.queue.heads();
        while free_slots > 0 {
            let Some((key, placement)) = heads.pop_first() else {
                break;
            };
            let next = self.tasks.queue.next_after(placement, &key);
            let Some(task) = self.tasks.by_id.get(&key.task_id) else {
                self.tasks.queue.remove(&key);
                if let Some(next) = next {
                    heads.insert((next, placement));
                }
                continue;
            };
            match best_device(&mut self.placement, &self.registry, task) {
                Some(device_id) => {
                    self.assign(now, &key, &device_id);
                    free_slots -= 1;
                }
                // The same placement without this task's refusals cannot
                // do better: the placement waits for the next pass.
                None if task.refused_by.is_empty() => continue,
                None => {}
            }
            if let Some(next) = next {
                heads.insert((next, placement));
            }
        }
    }

    fn assign(&mut self, now: Now, key: &QueueKey, device_id: &str) {
        // Only the task goes out, and only to a connected device; the
        // record itself is copied once, into the batch.
        let conn = self.registry.conn_of(device_id);
        let Some(record) = self.tasks.assign(now, key, device_id) else {
            return;
        };
        let attempt = record.attempt;
        let assign = conn.map(|conn| {
            let assign = TaskAssign {
                task: record.spec.clone(),
                attempt,
            };
            (conn, assign)
        });
        self.persist_task(&key.task_id);
        self.watch_attempt(now, &key.task_id);
        if !self.registry.give(device_id, &key.task_id) {
            return;
        }
        if let Some((conn, assign)) = assign {
            self.out.send(conn, Message::TaskAssign(assign), None);
        }
        self.emit(
            Event::TaskAssigned {
                task_id: key.task_id.clone(),
                device_id: device_id.to_string(),
                attempt,
            },
            true,
        );
    }
}

/// The device `placement` chooses for `task` among the free devices that
/// match it and have not refused it (see `core/placement`).
fn best_device(placement: &mut Placement, registry: &Registry, task: &Task) -> Option<String> {
    let mut candidates = registry
        .free_devices()
        .filter(|device| !task.refused_by.contains(&device.record.device_id))
        .filter(|device| device_matches(device, task));
    placement
        .choose(task.record.spec.strategy, &mut candidates)
        .map(|device| device.record.device_id.clone())
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
    let register = &device.record.profile;
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
    if let Some(level) = &wanted.sandbox {
        if !sandbox_meets(register.sandbox.as_deref(), level) {
            return false;
        }
    }
    true
}

/// The sandbox levels a worker reports, weakest first: a requirement is met
/// by its own level and every stronger one.
const SANDBOX_LEVELS: [&str; 3] = ["none", "partial", "full"];

/// Whether a device whose sandbox is `have` meets `sandbox=want`. A device
/// that does not say meets nothing; an unknown level only itself.
fn sandbox_meets(have: Option<&str>, want: &str) -> bool {
    let Some(have) = have else {
        return false;
    };
    let rank = |level: &str| {
        SANDBOX_LEVELS
            .iter()
            .position(|known| known.eq_ignore_ascii_case(level))
    };
    match (rank(have), rank(want)) {
        (Some(have), Some(want)) => have >= want,
        _ => have.eq_ignore_ascii_case(want),
    }
}
