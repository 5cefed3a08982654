//! Replies to bodies: the CLI's `--json` documents as they are, and the
//! older design's shapes (its JSON envelope, pipe/CSV/TSV text, key-value
//! status lines, Prometheus gauges) built from the same replies.

use super::{Response, Status};
use protocol::{ClusterStats, DevicePage, DeviceView, Reply, StatusReply, TaskPage, TaskView};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// How the replies to a request's messages become its body.
#[derive(Debug, Clone, PartialEq)]
pub enum Render {
    /// The reply's document as is: what `retire --json` prints.
    Document,
    /// A task page, filtered (`/api/v1/tasks`, `/api/v1/dead`).
    TaskPage(TaskFilter),
    /// The older design's `/api/v1/devices`.
    CompatDevices,
    /// `/text/devices` in a format chosen by `Accept`.
    TextDevices(Format),
    /// `/text/status` (replies: status, devices).
    TextStatus,
    /// `/api/v1/cluster/status` (replies: status, devices).
    ClusterStatus,
    /// `/text/metrics` (replies: status, devices).
    TextMetrics,
    /// `/text/logs`: the core's recent log (the reply, `status`, only
    /// applies the read rule); rendered by the loop, which holds the core.
    TextLogs {
        /// Only lines about this device.
        device: Option<String>,
    },
    /// `/metrics` (replies: status, devices; plus the core's and the
    /// loop's counters, which the loop adds).
    Metrics,
    /// `POST /api/v1/command`.
    Command {
        /// The command as sent.
        command: String,
        /// The `format` as sent.
        format: String,
        /// How its output is written.
        kind: CommandKind,
    },
}

/// How a console command's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// As `/text/status`.
    Status,
    /// One word: `healthy`, `degraded` or `unavailable`.
    Health,
    /// As `/text/metrics`.
    Metrics,
    /// As `/text/devices`.
    Devices,
    /// One line per task: `id|state|type|device`.
    Tasks,
    /// The reply's document, as indented JSON.
    Json,
}

/// The text formats of `/text/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `id|status|cpu|memory|tasks`, no header.
    Pipe,
    /// A header line, then comma-separated rows.
    Csv,
    /// A header line, then tab-separated rows.
    Tsv,
}

impl Format {
    /// The format an `Accept` header asks for (pipe when it names neither).
    pub fn from_accept(accept: Option<&str>) -> Format {
        let accept = accept.unwrap_or("");
        if accept.contains("text/csv") {
            Format::Csv
        } else if accept.contains("text/tab-separated-values") {
            Format::Tsv
        } else {
            Format::Pipe
        }
    }
}

/// The filters of a task listing that the index does not have: applied to
/// one page of it ([`crate::core::MAX_LIST`] tasks), so a request costs
/// one page whatever it matches; `next_cursor` goes on from the last task
/// looked at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    /// Only this task type.
    pub task_type: Option<String>,
    /// Only tasks of this device (current or last attempt).
    pub device: Option<String>,
    /// Only tasks whose id, type, device or error contains this (lower
    /// case; listings are summaries, so payloads are not searched).
    pub text: Option<String>,
    /// The most tasks to return.
    pub limit: usize,
}

impl TaskFilter {
    /// Whether it filters anything.
    pub fn is_empty(&self) -> bool {
        self.task_type.is_none() && self.device.is_none() && self.text.is_none()
    }

    fn matches(&self, task: &TaskView) -> bool {
        if self
            .task_type
            .as_ref()
            .is_some_and(|t| *t != task.task_type)
        {
            return false;
        }
        if self
            .device
            .as_ref()
            .is_some_and(|d| task.device_id.as_ref() != Some(d))
        {
            return false;
        }
        if let Some(text) = &self.text {
            let hay = [
                Some(task.task_id.as_str()),
                Some(task.task_type.as_str()),
                task.device_id.as_deref(),
                task.error.as_deref(),
            ];
            return hay
                .iter()
                .flatten()
                .any(|field| field.to_lowercase().contains(text.as_str()));
        }
        true
    }
}

/// What the renderers need besides the replies.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Now, in Unix milliseconds.
    pub unix_ms: i64,
    /// Seconds since the master started.
    pub uptime_secs: u64,
}

/// A reply that is not the document its request expects.
fn unexpected(what: &str) -> Response {
    Response::text(
        Status::InternalError,
        format!("the master's reply was not {what}\n"),
    )
}

/// Renders `replies` (one per message of the plan, in order) with
/// `render`.
pub fn render(render: &Render, replies: &[Reply], context: Context) -> Response {
    let first = replies.first();
    match render {
        Render::Document => match first {
            Some(reply) => Response::json(Status::Ok, reply),
            None => unexpected("a document"),
        },
        Render::TaskPage(filter) => match first.map(Reply::parse::<TaskPage>) {
            Some(Ok(page)) => Response::json(Status::Ok, &filter_page(page, filter)),
            _ => unexpected("a task page"),
        },
        Render::CompatDevices => match first.map(Reply::parse::<DevicePage>) {
            Some(Ok(page)) => {
                let devices: Vec<Value> = page.devices.iter().map(compat_device).collect();
                let mut data = json!({
                    "devices": devices,
                    "count": page.count,
                    "timestamp": crate::core::rfc3339(context.unix_ms),
                });
                if let Some(cursor) = page.next_cursor {
                    data["next_cursor"] = Value::String(cursor);
                }
                Response::json(Status::Ok, &json!({ "status": "success", "data": data }))
            }
            _ => unexpected("a device page"),
        },
        Render::TextDevices(format) => match first.map(Reply::parse::<DevicePage>) {
            Some(Ok(page)) => {
                let content_type = match format {
                    Format::Pipe => "text/plain; charset=utf-8",
                    Format::Csv => "text/csv; charset=utf-8",
                    Format::Tsv => "text/tab-separated-values; charset=utf-8",
                };
                Response {
                    content_type,
                    ..Response::text(Status::Ok, devices_text(&page.devices, *format))
                }
            }
            _ => unexpected("a device page"),
        },
        Render::TextStatus | Render::ClusterStatus | Render::TextMetrics => {
            let Some(summary) = Summary::of(replies, context) else {
                return unexpected("a status and a device page");
            };
            match render {
                Render::TextStatus => Response::text(Status::Ok, summary.text()),
                Render::ClusterStatus => Response::json(Status::Ok, &summary.json()),
                _ => Response {
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    ..Response::text(Status::Ok, summary.gauges())
                },
            }
        }
        Render::TextLogs { .. } | Render::Metrics => unexpected("a plain reply"),
        Render::Command {
            command,
            format,
            kind,
        } => {
            let output = match kind {
                CommandKind::Status | CommandKind::Health | CommandKind::Metrics => {
                    let Some(summary) = Summary::of(replies, context) else {
                        return unexpected("a status and a device page");
                    };
                    match kind {
                        CommandKind::Status => summary.text(),
                        CommandKind::Health => format!("{}\n", summary.health()),
                        _ => summary.gauges(),
                    }
                }
                CommandKind::Devices => match first.map(Reply::parse::<DevicePage>) {
                    Some(Ok(page)) => devices_text(&page.devices, Format::Pipe),
                    _ => return unexpected("a device page"),
                },
                CommandKind::Tasks => match first.map(Reply::parse::<TaskPage>) {
                    Some(Ok(page)) => page
                        .tasks
                        .iter()
                        .map(|task| {
                            format!(
                                "{}|{}|{}|{}\n",
                                task.task_id,
                                task.state,
                                task.task_type,
                                task.device_id.as_deref().unwrap_or("-")
                            )
                        })
                        .collect(),
                    _ => return unexpected("a task page"),
                },
                CommandKind::Json => match first {
                    Some(reply) => serde_json::to_string_pretty(reply).unwrap_or_default() + "\n",
                    None => return unexpected("a document"),
                },
            };
            Response::json(
                Status::Ok,
                &json!({
                    "status": "success",
                    "command": command,
                    "format": format,
                    "output": output,
                    "exit_code": 0,
                }),
            )
        }
    }
}

/// A page with the filter applied: at most `limit` matches, and the cursor
/// after the last task looked at when more may follow.
fn filter_page(page: TaskPage, filter: &TaskFilter) -> TaskPage {
    if filter.is_empty() {
        return page;
    }
    let mut tasks = Vec::new();
    let mut next_cursor = page.next_cursor.clone();
    for task in page.tasks {
        if !filter.matches(&task) {
            continue;
        }
        if tasks.len() == filter.limit {
            next_cursor = tasks.last().map(|t: &TaskView| t.task_id.clone());
            break;
        }
        tasks.push(task);
    }
    TaskPage {
        count: tasks.len(),
        next_cursor,
        success: page.success,
        tasks,
    }
}

/// A device in the older design's shape: its view with `id` as well.
fn compat_device(device: &DeviceView) -> Value {
    let mut value = serde_json::to_value(device).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut value {
        map.insert("id".into(), Value::String(device.device_id.clone()));
        map.insert("cpu_usage".into(), json!(metric(device, "cpu_usage")));
        map.insert("memory_usage".into(), json!(metric(device, "memory_usage")));
    }
    value
}

/// A number among a device's last live metrics, if it reported it.
pub fn metric(device: &DeviceView, name: &str) -> Option<f64> {
    device
        .metrics
        .as_ref()
        .and_then(|metrics| metrics.get(name))
        .and_then(Value::as_f64)
}

/// `/text/devices`'s body.
fn devices_text(devices: &[DeviceView], format: Format) -> String {
    let separator = match format {
        Format::Pipe => "|",
        Format::Csv => ",",
        Format::Tsv => "\t",
    };
    let mut out = String::new();
    if format != Format::Pipe {
        out.push_str(&["id", "status", "cpu", "memory", "tasks"].join(separator));
        out.push('\n');
    }
    for device in devices {
        let cpu = metric(device, "cpu_usage").map_or(String::new(), |cpu| format!("{cpu:.1}"));
        let id = match format {
            // A field with the separator, a quote or a line break is quoted.
            Format::Csv if device.device_id.contains([',', '"', '\n']) => {
                format!("\"{}\"", device.device_id.replace('"', "\"\""))
            }
            _ => device.device_id.replace(['\n', '\t', '|'], " "),
        };
        let fields = [
            id,
            device.status.to_string(),
            cpu,
            format!("{:.1}", device.hardware.memory_total_gb),
            device.active_tasks.to_string(),
        ];
        out.push_str(&fields.join(separator));
        out.push('\n');
    }
    out
}

/// What the status views show, from a status and a device page.
struct Summary {
    stats: ClusterStats,
    cpu_usage: f64,
    memory_usage: f64,
    memory_total: f64,
    uptime_secs: u64,
}

impl Summary {
    fn of(replies: &[Reply], context: Context) -> Option<Summary> {
        let status: StatusReply = replies.first()?.parse().ok()?;
        let page: DevicePage = replies.get(1)?.parse().ok()?;
        let online: Vec<&DeviceView> = page
            .devices
            .iter()
            .filter(|d| d.status != protocol::DeviceStatus::Offline)
            .collect();
        let average = |name: &str| {
            let values: Vec<f64> = online.iter().filter_map(|d| metric(d, name)).collect();
            if values.is_empty() {
                0.0
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            }
        };
        Some(Summary {
            cpu_usage: average("cpu_usage"),
            memory_usage: average("memory_usage"),
            memory_total: status.cluster_stats.total_resources.memory_gb,
            stats: status.cluster_stats,
            uptime_secs: context.uptime_secs,
        })
    }

    fn count(&self, state: &str) -> u64 {
        self.stats.tasks.get(state).copied().unwrap_or(0)
    }

    fn active(&self) -> u64 {
        self.count("assigned") + self.count("running")
    }

    fn health(&self) -> &'static str {
        if self.stats.storage != "ok" && !self.stats.storage.is_empty() {
            "unavailable"
        } else if self.stats.total_devices == 0
            || self.stats.online_devices * 2 >= self.stats.total_devices
        {
            "healthy"
        } else {
            "degraded"
        }
    }

    fn text(&self) -> String {
        let uptime = self.uptime_secs;
        format!(
            "STATUS: {}\nNODES: {}/{} online\nCPU: {} cores ({:.0}% utilized)\n\
             MEMORY: {:.0}GB ({:.0}% used)\nTASKS: {} active, {} completed today\nUPTIME: {}d {}h {}m\n",
            self.health(),
            self.stats.online_devices,
            self.stats.total_devices,
            self.stats.total_resources.cpu_cores,
            self.cpu_usage,
            self.memory_total,
            self.memory_usage,
            self.active(),
            self.stats.completed_today,
            uptime / 86_400,
            uptime % 86_400 / 3600,
            uptime % 3600 / 60,
        )
    }

    fn json(&self) -> Value {
        json!({
            "status": "success",
            "data": {
                "cluster_status": self.health(),
                "nodes_online": self.stats.online_devices,
                "nodes_total": self.stats.total_devices,
                "cpu_cores": self.stats.total_resources.cpu_cores,
                "cpu_usage": round1(self.cpu_usage),
                "memory_total": round1(self.memory_total),
                "memory_usage": round1(self.memory_usage),
                "tasks_active": self.active(),
                "tasks_completed": self.count("completed"),
                "tasks_queued": self.count("queued"),
                "uptime": self.uptime_secs,
            }
        })
    }

    fn gauges(&self) -> String {
        let mut out = String::new();
        let gauges: [(&str, &str, f64); 5] = [
            (
                "cluster_devices_total",
                "Devices ever registered.",
                f64::from(self.stats.total_devices),
            ),
            (
                "cluster_devices_online",
                "Devices connected now.",
                f64::from(self.stats.online_devices),
            ),
            (
                "cluster_cpu_usage_percent",
                "Average CPU usage of the connected devices, in percent.",
                self.cpu_usage,
            ),
            (
                "cluster_memory_usage_percent",
                "Average memory usage of the connected devices, in percent.",
                self.memory_usage,
            ),
            (
                "cluster_tasks_active",
                "Tasks assigned or running.",
                self.active() as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{DeviceStatus, HardwareView, Priority, TaskState};

    fn device(id: &str, status: DeviceStatus, cpu: Option<f64>) -> DeviceView {
        DeviceView {
            active_tasks: 1,
            architecture: "aarch64".into(),
            device_id: id.into(),
            enrolled_at: None,
            enrolled_from: None,
            hardware: HardwareView {
                cpu_count: 4,
                memory_total_gb: 3.75,
                storage_total_gb: 0.0,
            },
            hostname: String::new(),
            ip_address: String::new(),
            last_heartbeat: None,
            metrics: cpu.map(|cpu| json!({ "cpu_usage": cpu, "memory_usage": 50.0 })),
            platform: "linux".into(),
            profile: None,
            role: "worker".into(),
            sandbox: None,
            slots: 4,
            status,
            tags: Vec::new(),
            task_types: Vec::new(),
        }
    }

    #[test]
    fn device_text_in_each_format() {
        let devices = [
            device("pi-1", DeviceStatus::Online, Some(12.5)),
            device("a,b", DeviceStatus::Offline, None),
        ];
        let check = |format: Format, expect: &str| {
            assert_eq!(devices_text(&devices, format), expect, "{format:?}");
        };
        check(Format::Pipe, "pi-1|online|12.5|3.8|1\na,b|offline||3.8|1\n");
        check(
            Format::Csv,
            "id,status,cpu,memory,tasks\npi-1,online,12.5,3.8,1\n\"a,b\",offline,,3.8,1\n",
        );
        check(
            Format::Tsv,
            "id\tstatus\tcpu\tmemory\ttasks\npi-1\tonline\t12.5\t3.8\t1\na,b\toffline\t\t3.8\t1\n",
        );
        assert_eq!(Format::from_accept(Some("text/csv")), Format::Csv);
        assert_eq!(
            Format::from_accept(Some("text/tab-separated-values;q=1")),
            Format::Tsv
        );
        assert_eq!(Format::from_accept(Some("*/*")), Format::Pipe);
        assert_eq!(Format::from_accept(None), Format::Pipe);
    }

    fn task(id: &str, task_type: &str, device: Option<&str>) -> TaskView {
        TaskView {
            attempt: 1,
            device_id: device.map(str::to_string),
            error: None,
            execution_time: None,
            exit_code: None,
            finished_at: None,
            max_retries: 0,
            payload: Value::Null,
            priority: Priority::default(),
            requirements: Default::default(),
            result: None,
            retry_at: None,
            started_at: None,
            state: TaskState::Completed,
            submitted_at: String::new(),
            task_id: id.into(),
            task_type: task_type.into(),
            timeout: None,
        }
    }

    #[test]
    fn a_filter_keeps_the_matches_of_one_page_and_says_where_to_go_on() {
        let page = TaskPage {
            count: 4,
            next_cursor: Some("t1".into()),
            success: protocol::Success,
            tasks: vec![
                task("t4", "echo", Some("pi")),
                task("t3", "shell", Some("pi")),
                task("t2", "echo", Some("nas")),
                task("t1", "echo", Some("pi")),
            ],
        };
        let ids = |page: &TaskPage| {
            page.tasks
                .iter()
                .map(|t| t.task_id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let check = |filter: TaskFilter, expect: &str, cursor: Option<&str>| {
            let filtered = filter_page(page.clone(), &filter);
            assert_eq!(ids(&filtered), expect, "{filter:?}");
            assert_eq!(filtered.count, filtered.tasks.len());
            assert_eq!(filtered.next_cursor.as_deref(), cursor, "{filter:?}");
        };
        let filter =
            |task_type: Option<&str>, device: Option<&str>, text: Option<&str>, limit| TaskFilter {
                task_type: task_type.map(str::to_string),
                device: device.map(str::to_string),
                text: text.map(str::to_string),
                limit,
            };
        check(filter(None, None, None, 100), "t4,t3,t2,t1", Some("t1"));
        check(
            filter(Some("echo"), None, None, 100),
            "t4,t2,t1",
            Some("t1"),
        );
        check(
            filter(Some("echo"), Some("pi"), None, 100),
            "t4,t1",
            Some("t1"),
        );
        check(filter(None, None, Some("nas"), 100), "t2", Some("t1"));
        check(filter(Some("echo"), None, None, 1), "t4", Some("t4"));
        check(filter(Some("nothing"), None, None, 10), "", Some("t1"));
    }
}
