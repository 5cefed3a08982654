//! Read-only views of the registry and the tasks, for replies.
//!
//! Any reader (an anonymous loopback connection by default) may ask for
//! these as often as it likes, so none may cost more than what it returns:
//! `task_view` and `device_view` are lookups, `list_tasks` walks an index
//! and stops after its page, and `cluster_stats` reads counts kept as
//! tasks change, and devices connect and leave. `list_devices` walks an
//! index like `list_tasks` and shows summaries without the profile.

use super::records::TaskRecord;
use super::{
    Core, Device, ReplyError, DEFAULT_DEVICE_LIST, DEFAULT_LIST, MAX_DEVICE_LIST, MAX_LIST,
};
use protocol::message::bytes_to_gib;
use protocol::{
    ClusterStats, DevicePage, DeviceStatus, DeviceView, ErrorCode, HardwareView, ListDevices,
    ListTasks, Metrics, Success, TaskPage, TaskState, TaskView,
};
use std::time::{Duration, UNIX_EPOCH};

/// Formats Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl Core {
    /// One task in full. O(1): a lookup by id.
    pub(super) fn task_view(&self, task_id: &str) -> Result<TaskView, ReplyError> {
        let task =
            self.tasks.by_id.get(task_id).ok_or_else(|| {
                ReplyError::new(ErrorCode::NotFound, format!("no task {task_id}"))
            })?;
        Ok(self.view_of_task(&task.record, true))
    }

    /// A task as replies show it; without `payload` and `result` unless
    /// `full` (listings are summaries: both can be up to a line each, and
    /// they are not even copied for a summary).
    pub(super) fn view_of_task(&self, record: &TaskRecord, full: bool) -> TaskView {
        TaskView {
            task_id: record.task_id.clone(),
            task_type: record.spec.task_type.clone(),
            state: record.state,
            priority: record.spec.priority,
            payload: if full {
                record.spec.payload.clone()
            } else {
                serde_json::Value::Null
            },
            timeout: record.spec.timeout,
            requirements: record.spec.requirements.clone(),
            attempt: record.attempt,
            device_id: record.device_id.clone(),
            submitted_at: rfc3339(record.submitted_unix_ms),
            started_at: record.started_unix_ms.map(rfc3339),
            finished_at: record.finished_unix_ms.map(rfc3339),
            retry_at: record.retry_at_unix_ms.map(rfc3339),
            max_retries: self.max_retries(&record.spec),
            result: if full { record.result.clone() } else { None },
            exit_code: record.exit_code,
            error: record.error.clone(),
            execution_time: record.execution_time,
        }
    }

    /// One page of task summaries, newest first, from the listing index
    /// (`tasks::listing::TaskListing`): the cost is the page (at most `limit + 1`
    /// index entries for one state, `limit + 9` for all, and a lookup per
    /// task shown), never the history, because any reader may ask for it
    /// on every line it sends.
    ///
    /// Paging: `before` names the last task of the previous page (its
    /// `next_cursor`), and the page holds the tasks submitted before it
    /// that are in `state` now. A task's place never changes (it is its
    /// submission order), so walking every page of an unfiltered listing
    /// visits every task that existed when it started exactly once, newest
    /// first, whatever changes state meanwhile; tasks submitted meanwhile
    /// are newer than the cursor and show on a new first page. With a state
    /// filter, each page shows the tasks in that state when it is made: a
    /// task that changes state between pages is shown at most once, and
    /// not at all if it left the state before its page, or entered it after
    /// its place was passed.
    pub(super) fn list_tasks(&self, list: &ListTasks) -> Result<TaskPage, ReplyError> {
        let (records, next_cursor) = self.task_page(list)?;
        let tasks: Vec<TaskView> = records
            .into_iter()
            .map(|record| self.view_of_task(record, false))
            .collect();
        Ok(TaskPage {
            count: tasks.len(),
            tasks,
            next_cursor,
            success: Success,
        })
    }

    /// The records of one page of `list` (see [`Core::list_tasks`]), newest
    /// first, and the cursor of the next page if older tasks follow.
    pub(super) fn task_page(
        &self,
        list: &ListTasks,
    ) -> Result<(Vec<&TaskRecord>, Option<String>), ReplyError> {
        let state = list.state;
        let before = match &list.before {
            None => None,
            Some(task_id) => {
                let task = self.tasks.by_id.get(task_id).ok_or_else(|| {
                    ReplyError::new(
                        ErrorCode::NotFound,
                        format!("no task {task_id} (the cursor `before` names a task)"),
                    )
                })?;
                Some((task.record.seq, task_id.clone()))
            }
        };
        let limit = list.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
        let page = self.tasks.page(state, before.as_ref(), limit);
        let records: Vec<&TaskRecord> = page
            .ids
            .iter()
            .filter_map(|id| self.tasks.by_id.get(*id))
            .map(|task| &task.record)
            .collect();
        let next_cursor = page
            .more
            .then(|| records.last().map(|record| record.task_id.clone()))
            .flatten();
        Ok((records, next_cursor))
    }

    /// One device in full, with its registration profile. O(1).
    pub(super) fn device_view(&self, device_id: &str) -> Result<DeviceView, ReplyError> {
        self.registry
            .devices
            .get(device_id)
            .map(|device| self.view_of(device, true))
            .ok_or_else(|| ReplyError::new(ErrorCode::NotFound, format!("no device {device_id}")))
    }

    /// One page of device summaries, newest registered first, from the
    /// device listing index (`registry::index::DeviceListing`): without a filter the
    /// cost is the page (`limit + 1` index entries and a lookup per device
    /// shown), never the number of devices ever enrolled; a role or status
    /// filter also passes over the devices it turns down (a comparison
    /// each). Summaries leave out the profile and the metrics' unknown
    /// fields, which are what a device controls the size of, so a page
    /// costs at most `limit` small views however devices registered.
    ///
    /// Paging works as for tasks (see [`Core::list_tasks`]): `before` names
    /// the last device of the previous page, and a device's place (when it
    /// first registered) never changes.
    pub(super) fn list_devices(&self, list: &ListDevices) -> Result<DevicePage, ReplyError> {
        let (devices, next_cursor) = self.device_page(list)?;
        let devices: Vec<DeviceView> = devices
            .into_iter()
            .map(|device| self.view_of(device, false))
            .collect();
        Ok(DevicePage {
            count: devices.len(),
            devices,
            next_cursor,
            success: Success,
        })
    }

    /// The devices of one page of `list` (see [`Core::list_devices`]),
    /// newest registered first, and the cursor of the next page if more
    /// follow.
    pub(super) fn device_page(
        &self,
        list: &ListDevices,
    ) -> Result<(Vec<&Device>, Option<String>), ReplyError> {
        let status = match &list.status {
            None => None,
            Some(name) => Some(DeviceStatus::parse(name).ok_or_else(|| {
                ReplyError::new(
                    ErrorCode::InvalidMessage,
                    format!("unknown status {name:?}; use online, draining or offline"),
                )
            })?),
        };
        let before = match &list.before {
            None => None,
            Some(device_id) => {
                let device = self.registry.devices.get(device_id).ok_or_else(|| {
                    ReplyError::new(
                        ErrorCode::NotFound,
                        format!("no device {device_id} (the cursor `before` names a device)"),
                    )
                })?;
                Some((device.record.registered_unix_ms, device_id.clone()))
            }
        };
        let limit = list
            .limit
            .unwrap_or(DEFAULT_DEVICE_LIST)
            .min(MAX_DEVICE_LIST);
        let keep = |id: &str| {
            self.registry.devices.get(id).is_some_and(|device| {
                list.role
                    .as_ref()
                    .is_none_or(|role| &device.record.role == role)
                    && status.is_none_or(|s| device.record.status == s)
            })
        };
        let page = self
            .registry
            .by_registration
            .page(before.as_ref(), limit, keep);
        let devices: Vec<&Device> = page
            .ids
            .iter()
            .filter_map(|id| self.registry.devices.get(*id))
            .collect();
        let next_cursor = page
            .more
            .then(|| devices.last().map(|device| device.record.device_id.clone()))
            .flatten();
        Ok((devices, next_cursor))
    }

    /// Cluster totals. O(distinct roles and platforms connected): the
    /// device counts and resources are kept as devices connect and leave
    /// (`registry::index::DeviceTotals`), the task counts as tasks change state, so
    /// any reader may ask as often as it likes.
    pub(super) fn cluster_stats(&self) -> ClusterStats {
        let totals = &self.registry.totals;
        let mut stats = ClusterStats {
            total_devices: u32::try_from(self.registry.devices.len()).unwrap_or(u32::MAX),
            online_devices: totals.online(),
            total_resources: totals.resources(),
            by_role: totals.by_role().clone(),
            by_platform: totals.by_platform().clone(),
            ..ClusterStats::default()
        };
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
        // Counted as tasks change state (the listing index's set lengths),
        // not here: any reader may ask for `status` as often as it likes.
        for state in TaskState::ALL {
            let count = self.tasks.count(state) as u64;
            stats.tasks.insert(state.as_str().to_string(), count);
        }
        stats
    }
}

impl Core {
    /// A device as replies show it, with when and from where it enrolled
    /// (kept with its key, not with its registration); with its profile
    /// and every metric only when `full`.
    pub(super) fn view_of(&self, device: &Device, full: bool) -> DeviceView {
        let mut view = registered_view(device, full);
        if let Some(key) = self
            .registry
            .key(&device.record.device_id)
            .filter(|key| key.public_key.is_some())
        {
            view.enrolled_at = Some(rfc3339(key.enrolled_unix_ms));
            view.enrolled_from = key.enrolled_from.clone();
        }
        view
    }
}

/// The most load averages a summary shows (the 1, 5 and 15 minute ones).
const SUMMARY_LOAD_AVERAGES: usize = 3;

fn registered_view(device: &Device, full: bool) -> DeviceView {
    let record = &device.record;
    let register = &device.record.profile;
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
        sandbox: register.sandbox.clone(),
        slots: record.slots,
        active_tasks: device.active.len() as u32,
        metrics: device.metrics.as_ref().and_then(|metrics| {
            if full {
                serde_json::to_value(metrics).ok()
            } else {
                // The known figures only: a heartbeat's unknown fields and
                // a long load list are as big as the device makes them.
                let summary = Metrics {
                    cpu_usage: metrics.cpu_usage,
                    memory_usage: metrics.memory_usage,
                    disk_usage: metrics.disk_usage,
                    load_average: metrics
                        .load_average
                        .as_ref()
                        .map(|loads| loads.iter().copied().take(SUMMARY_LOAD_AVERAGES).collect()),
                    uptime: metrics.uptime,
                    extra: serde_json::Map::new(),
                };
                serde_json::to_value(summary).ok()
            }
        }),
        profile: full.then(|| super::records::profile_value(&record.profile)),
        enrolled_at: None,
        enrolled_from: None,
    }
}
