//! Read-only views of the registry and the tasks, for replies.

use super::{Core, Device, ReplyError, DEFAULT_LIST, MAX_LIST};
use protocol::message::bytes_to_gib;
use protocol::{
    ClusterStats, DeviceStatus, DeviceView, ErrorCode, HardwareView, ListDevices, ListTasks,
    TaskState, TaskView,
};
use std::time::{Duration, UNIX_EPOCH};

/// Formats Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Core {
    pub(super) fn task_view(&self, task_id: &str) -> Result<TaskView, ReplyError> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| ReplyError::new(ErrorCode::NotFound, format!("no task {task_id}")))?;
        let record = &task.record;
        Ok(TaskView {
            task_id: record.task_id.clone(),
            task_type: record.spec.task_type.clone(),
            state: record.state,
            priority: record.spec.priority,
            payload: record.spec.payload.clone(),
            timeout: record.spec.timeout,
            requirements: record.spec.requirements.clone(),
            attempt: record.attempt,
            device_id: record.device_id.clone(),
            submitted_at: rfc3339(record.submitted_unix_ms),
            started_at: record.started_unix_ms.map(rfc3339),
            finished_at: record.finished_unix_ms.map(rfc3339),
            retry_at: record.retry_at_unix_ms.map(rfc3339),
            max_retries: self.max_retries(&record.spec),
            result: record.result.clone(),
            exit_code: record.exit_code,
            error: record.error.clone(),
            execution_time: record.execution_time,
        })
    }

    pub(super) fn list_tasks(&self, list: &ListTasks) -> Result<Vec<TaskView>, ReplyError> {
        let state = match &list.state {
            None => None,
            Some(name) => Some(TaskState::parse(name).ok_or_else(|| {
                ReplyError::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "unknown state {name:?}; use one of {}",
                        TaskState::ALL.map(TaskState::as_str).join(", ")
                    ),
                )
            })?),
        };
        let limit = list.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
        let mut matching: Vec<&super::Task> = self
            .tasks
            .values()
            .filter(|task| state.is_none_or(|s| task.record.state == s))
            .collect();
        matching.sort_unstable_by_key(|task| std::cmp::Reverse(task.record.seq));
        // Listings are summaries: payloads and results can be large (up to
        // a line each), so they are left out; `task_status` shows one task
        // in full.
        matching
            .into_iter()
            .take(limit)
            .map(|task| {
                self.task_view(&task.record.task_id).map(|mut view| {
                    view.payload = serde_json::Value::Null;
                    view.result = None;
                    view
                })
            })
            .collect()
    }

    pub(super) fn device_view(&self, device_id: &str) -> Result<DeviceView, ReplyError> {
        self.devices
            .get(device_id)
            .map(|device| self.view_of(device))
            .ok_or_else(|| ReplyError::new(ErrorCode::NotFound, format!("no device {device_id}")))
    }

    pub(super) fn list_devices(&self, list: &ListDevices) -> Result<Vec<DeviceView>, ReplyError> {
        let status = match &list.status {
            None => None,
            Some(name) => Some(DeviceStatus::parse(name).ok_or_else(|| {
                ReplyError::new(
                    ErrorCode::InvalidMessage,
                    format!("unknown status {name:?}; use online, draining or offline"),
                )
            })?),
        };
        Ok(self
            .devices
            .values()
            .filter(|device| {
                list.role
                    .as_ref()
                    .is_none_or(|role| &device.record.role == role)
            })
            .filter(|device| status.is_none_or(|s| device.record.status == s))
            .map(|device| self.view_of(device))
            .collect())
    }

    pub(super) fn cluster_stats(&self) -> ClusterStats {
        let mut stats = ClusterStats {
            total_devices: self.devices.len() as u32,
            ..ClusterStats::default()
        };
        for device in self.devices.values().filter(|d| d.conn.is_some()) {
            stats.online_devices += 1;
            let register = &device.register;
            stats.total_resources.cpu_cores += register.cpu_cores.unwrap_or(0);
            stats.total_resources.memory_gb +=
                bytes_to_gib(register.memory_total_bytes.unwrap_or(0));
            stats.total_resources.storage_gb +=
                bytes_to_gib(register.disk_total_bytes.unwrap_or(0));
            *stats.by_role.entry(device.record.role.clone()).or_default() += 1;
            let platform = register
                .platform
                .clone()
                .unwrap_or_else(|| "unknown".into());
            *stats.by_platform.entry(platform).or_default() += 1;
        }
        if stats.total_devices > 0 {
            stats.health_percentage =
                f64::from(stats.online_devices) * 100.0 / f64::from(stats.total_devices);
        }
        stats.storage = if self.storage_available {
            "ok"
        } else {
            "failing"
        }
        .to_string();
        stats.quarantined = self.quarantined;
        for state in TaskState::ALL {
            stats.tasks.insert(state.as_str().to_string(), 0);
        }
        for task in self.tasks.values() {
            *stats
                .tasks
                .entry(task.record.state.as_str().to_string())
                .or_default() += 1;
        }
        stats
    }
}

impl Core {
    /// A device as replies show it, with when and from where it enrolled
    /// (kept with its key, not with its registration).
    fn view_of(&self, device: &Device) -> DeviceView {
        let mut view = registered_view(device);
        if let Some(key) = self
            .device_keys
            .get(&device.record.device_id)
            .filter(|key| key.public_key.is_some())
        {
            view.enrolled_at = Some(rfc3339(key.enrolled_unix_ms));
            view.enrolled_from = key.enrolled_from.clone();
        }
        view
    }
}

fn registered_view(device: &Device) -> DeviceView {
    let record = &device.record;
    let register = &device.register;
    DeviceView {
        device_id: record.device_id.clone(),
        role: record.role.clone(),
        status: record.status,
        platform: register.platform.clone().unwrap_or_default(),
        architecture: register.architecture.clone().unwrap_or_default(),
        hostname: register.hostname.clone().unwrap_or_default(),
        ip_address: record.ip_address.clone(),
        last_heartbeat: Some(rfc3339(record.last_seen_unix_ms)),
        tags: record.tags.clone(),
        hardware: HardwareView {
            cpu_count: register.cpu_cores.unwrap_or(0),
            memory_total_gb: bytes_to_gib(register.memory_total_bytes.unwrap_or(0)),
            storage_total_gb: bytes_to_gib(register.disk_total_bytes.unwrap_or(0)),
        },
        task_types: record.task_types.clone().unwrap_or_default(),
        slots: record.slots,
        active_tasks: device.active.len() as u32,
        metrics: device
            .metrics
            .as_ref()
            .and_then(|metrics| serde_json::to_value(metrics).ok()),
        profile: Some(record.profile.clone()),
        enrolled_at: None,
        enrolled_from: None,
    }
}
