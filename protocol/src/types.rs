//! Domain values shared by several messages: priorities, requirements,
//! task specifications, task states and the read-only views that replies
//! carry.

use crate::reply::Success;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// A task's priority. Higher runs first; tasks of equal priority run in
/// submission order.
///
/// On the wire it is a name (`low`, `normal`, `high`, `urgent`) or an
/// integer from 0 to 100; the names stand for 25, 50, 75 and 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub u8);

impl Priority {
    /// `low` (25).
    pub const LOW: Priority = Priority(25);
    /// `normal` (50), the default.
    pub const NORMAL: Priority = Priority(50);
    /// `high` (75).
    pub const HIGH: Priority = Priority(75);
    /// `urgent` (100), also accepted as `critical`.
    pub const URGENT: Priority = Priority(100);
    /// The largest numeric priority.
    pub const MAX: u8 = 100;

    /// Parses a name or a number from 0 to 100.
    pub fn parse(text: &str) -> Option<Priority> {
        match text.trim().to_ascii_lowercase().as_str() {
            "low" => Some(Priority::LOW),
            "normal" | "medium" => Some(Priority::NORMAL),
            "high" => Some(Priority::HIGH),
            "urgent" | "critical" => Some(Priority::URGENT),
            other => other
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= Priority::MAX)
                .map(Priority),
        }
    }

    /// The level's name if it is one of the named levels.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Priority::LOW => Some("low"),
            Priority::NORMAL => Some("normal"),
            Priority::HIGH => Some("high"),
            Priority::URGENT => Some("urgent"),
            _ => None,
        }
    }
}

impl Default for Priority {
    fn default() -> Priority {
        Priority::NORMAL
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => serializer.serialize_str(name),
            None => serializer.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Priority, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let parsed = match &value {
            Value::String(text) => Priority::parse(text),
            Value::Number(n) => n
                .as_u64()
                .filter(|&n| n <= u64::from(Priority::MAX))
                .map(|n| Priority(n as u8)),
            _ => None,
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "priority must be low, normal, high, urgent or 0-100, got {value}"
            ))
        })
    }
}

/// What a device must offer to receive a task. Every field is optional and
/// all given fields must hold. Unknown keys are refused rather than
/// ignored, because ignoring one would run the task somewhere it did not ask
/// for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Requirements {
    /// Exactly this CPU architecture (`x86_64`, `aarch64`, `arm`, …).
    #[serde(skip_serializing_if = "Option::is_none", alias = "arch")]
    pub architecture: Option<String>,
    /// Only this device (pinning).
    #[serde(skip_serializing_if = "Option::is_none", alias = "device")]
    pub device_id: Option<String>,
    /// At least this many CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cpu_cores: Option<u32>,
    /// At least this much memory, in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_memory_gb: Option<f64>,
    /// At least this much total disk, in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_storage_gb: Option<f64>,
    /// Exactly this platform (`linux`, `android`, `macos`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Exactly this role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A task sandbox at least this good: `full`, `partial` or `none` (the
    /// device's `sandbox` in its registration; see docs/sandbox.md). A device
    /// that does not say meets none of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Every one of these tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Requirements {
    /// Whether no requirement is set.
    pub fn is_empty(&self) -> bool {
        *self == Requirements::default()
    }
}

/// A task as a client submits it and as the master assigns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// How many times a failed attempt is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Handler input; an object by convention.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Scheduling priority.
    #[serde(default)]
    pub priority: Priority,
    /// Where the task may run.
    #[serde(default, skip_serializing_if = "Requirements::is_empty")]
    pub requirements: Requirements,
    /// How the master chooses among the devices that can take this task;
    /// the master's current strategy when not given (see
    /// `docs/placement.md`). Older masters ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PlacementStrategy>,
    /// A client-chosen id makes the submit idempotent; the master picks one
    /// otherwise. Assignments always carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Which handler runs the task (`echo`, `shell`, …).
    pub task_type: String,
    /// Seconds the task may run before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl TaskSpec {
    /// A task of `task_type` with `payload` and defaults elsewhere.
    pub fn new(task_type: impl Into<String>, payload: Value) -> TaskSpec {
        TaskSpec {
            task_id: None,
            task_type: task_type.into(),
            payload,
            priority: Priority::NORMAL,
            timeout: None,
            requirements: Requirements::default(),
            strategy: None,
            max_retries: None,
        }
    }

    /// Checks the values serde cannot: non-empty type, sane timeout, id
    /// characters. Returns a human explanation of the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.task_type.trim().is_empty() {
            return Err("task_type must not be empty".into());
        }
        if let Some(id) = &self.task_id {
            validate_id("task_id", id)?;
        }
        if let Some(timeout) = self.timeout {
            if !timeout.is_finite() || timeout <= 0.0 {
                return Err(format!(
                    "timeout must be a positive number of seconds, got {timeout}"
                ));
            }
        }
        Ok(())
    }
}

/// The longest id (task or device) the master accepts.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id: 1 to [`MAX_ID_LEN`] printable characters, no whitespace.
pub fn validate_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{what} must be 1 to {MAX_ID_LEN} bytes long"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} must not contain whitespace or control characters"
        ));
    }
    Ok(())
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a device.
    Queued,
    /// Sent to a device that has not yet confirmed it.
    Assigned,
    /// Confirmed by its device and running.
    Running,
    /// An attempt failed or timed out and another one will follow once
    /// its backoff has passed (`retry_at`).
    Retrying,
    /// Finished successfully.
    Completed,
    /// Its only attempt failed (it asked for no retries).
    Failed,
    /// Its only attempt ran past its timeout (it asked for no retries).
    TimedOut,
    /// Cancelled by a client.
    Cancelled,
    /// Every attempt it was allowed failed, or it lost its worker too many
    /// times; `retire retry` queues it again.
    DeadLetter,
}

impl TaskState {
    /// All states, in life order.
    pub const ALL: [TaskState; 9] = [
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::DeadLetter,
    ];

    /// The state's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::DeadLetter => "dead_letter",
        }
    }

    /// Parses a wire name (`timeout` is accepted for `timed_out`).
    pub fn parse(text: &str) -> Option<TaskState> {
        match text {
            "timeout" => Some(TaskState::TimedOut),
            _ => TaskState::ALL.into_iter().find(|s| s.as_str() == text),
        }
    }

    /// Whether the task's life is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed
                | TaskState::Failed
                | TaskState::TimedOut
                | TaskState::Cancelled
                | TaskState::DeadLetter
        )
    }
}

/// A task state name that is none of [`TaskState::ALL`] (nor `timeout`),
/// as a `list_tasks` filter or a `tasks STATE` text command may give one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown state {:?}; use one of {}",
            self.0,
            TaskState::ALL.map(TaskState::as_str).join(", ")
        )
    }
}

impl std::error::Error for UnknownState {}

impl std::str::FromStr for TaskState {
    type Err = UnknownState;

    /// Parses a wire name, as [`TaskState::parse`], saying which names
    /// there are when it is none of them.
    fn from_str(text: &str) -> Result<TaskState, UnknownState> {
        TaskState::parse(text).ok_or_else(|| UnknownState(text.to_string()))
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt ended, as a worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// The handler succeeded.
    Completed,
    /// The handler failed (non-zero exit, bad payload, …).
    Failed,
    /// The worker killed the task at its timeout.
    #[serde(alias = "timed_out")]
    Timeout,
    /// The worker stopped the task because it was cancelled.
    Cancelled,
}

impl ResultStatus {
    /// The terminal task state this status leads to.
    pub fn task_state(self) -> TaskState {
        match self {
            ResultStatus::Completed => TaskState::Completed,
            ResultStatus::Failed => TaskState::Failed,
            ResultStatus::Timeout => TaskState::TimedOut,
            ResultStatus::Cancelled => TaskState::Cancelled,
        }
    }
}

/// A device's connection status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Connected and taking work.
    Online,
    /// Connected but taking no new work.
    Draining,
    /// Not connected.
    Offline,
}

impl DeviceStatus {
    /// The status's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Online => "online",
            DeviceStatus::Draining => "draining",
            DeviceStatus::Offline => "offline",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<DeviceStatus> {
        match text {
            "online" => Some(DeviceStatus::Online),
            "draining" => Some(DeviceStatus::Draining),
            "offline" => Some(DeviceStatus::Offline),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as replies and events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The current (or last) attempt; 0 before the first assignment.
    pub attempt: u32,
    /// The device of the current or last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// A one-line reason for failure or cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the last attempt ran, as the worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<f64>,
    /// The exit code, when the handler had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When it reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Retries it may use after its first attempt.
    #[serde(default)]
    pub max_retries: u32,
    /// Its handler input.
    pub payload: Value,
    /// Its priority.
    pub priority: Priority,
    /// Its requirements.
    #[serde(default, skip_serializing_if = "Requirements::is_empty")]
    pub requirements: Requirements,
    /// The worker's `result` object once the task has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// While `retrying`: when the next attempt may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// When its last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Its current state.
    pub state: TaskState,
    /// When it was submitted (RFC 3339).
    pub submitted_at: String,
    /// The task's id.
    pub task_id: String,
    /// Its type.
    pub task_type: String,
    /// Its timeout in seconds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Hardware totals in the units older tools expect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareView {
    /// CPU cores.
    pub cpu_count: u32,
    /// Memory in GiB.
    pub memory_total_gb: f64,
    /// Disk in GiB.
    pub storage_total_gb: f64,
}

/// A device as replies and events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Tasks the master has given it that are not finished.
    pub active_tasks: u32,
    /// Its CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// The device's id.
    pub device_id: String,
    /// When it enrolled with the join token (RFC 3339); absent for a device
    /// that never enrolled (an older worker without credentials, a master
    /// without authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<String>,
    /// The address it enrolled from; absent when unknown (never enrolled,
    /// or enrolled before masters recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_from: Option<String>,
    /// Its totals.
    pub hardware: HardwareView,
    /// Its host name.
    #[serde(default)]
    pub hostname: String,
    /// The address it connected from, or reported.
    #[serde(default)]
    pub ip_address: String,
    /// Last message received (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Its last reported live metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    /// Its platform.
    pub platform: String,
    /// The rest of its registration profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Value>,
    /// Its role.
    pub role: String,
    /// How well its task sandbox guards the device's owner (`full`,
    /// `partial`, `none`); absent when the worker did not say (older ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Tasks it may run at once.
    pub slots: u32,
    /// Online, draining or offline.
    pub status: DeviceStatus,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Task types it runs; empty means it did not say (older workers).
    #[serde(default)]
    pub task_types: Vec<String>,
}

/// The answer to `list_tasks` (the `result` of its `ack`): one page of
/// task summaries, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskPage {
    /// How many tasks the page holds (absent from some older
    /// masters' replies).
    #[serde(default)]
    pub count: usize,
    /// Set when older tasks (of the same filter) follow: the `before` of
    /// the request for the next page. Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Always `true` (this page is the `result` of an `ack`).
    #[serde(default)]
    pub success: Success,
    /// The tasks, newest first, without `payload` (null) and `result`.
    pub tasks: Vec<TaskView>,
}

/// The answer to `list_devices` (the `result` of its `ack`): one page of
/// device summaries, newest registered first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DevicePage {
    /// How many devices the page holds (absent from some older
    /// masters' replies).
    #[serde(default)]
    pub count: usize,
    /// The devices, without `profile` and without the metrics' unknown
    /// fields (`device_status` shows one device in full).
    pub devices: Vec<DeviceView>,
    /// Set when devices registered earlier (of the same filter) follow: the
    /// `before` of the request for the next page. Absent on the last page,
    /// and from older masters' replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Always `true` (this page is the `result` of an `ack`).
    #[serde(default)]
    pub success: Success,
}

/// Cluster totals, in the shape older status tools read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Connected devices per platform.
    pub by_platform: std::collections::BTreeMap<String, u32>,
    /// Connected devices per role.
    pub by_role: std::collections::BTreeMap<String, u32>,
    /// Tasks completed since the start of the current UTC day; absent
    /// when there are none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub completed_today: u64,
    /// `online_devices / total_devices` as a percentage.
    pub health_percentage: f64,
    /// Devices connected now (online or draining).
    pub online_devices: u32,
    /// Stored records the master could not read back at its start and set
    /// aside (see `docs/guarantees.md`); absent when there are none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quarantined: u64,
    /// `ok`, or `failing` while the master cannot save changes.
    #[serde(default)]
    pub storage: String,
    /// Tasks per state.
    #[serde(default)]
    pub tasks: std::collections::BTreeMap<String, u64>,
    /// Devices ever registered.
    pub total_devices: u32,
    /// Sum over connected devices.
    pub total_resources: ResourceTotals,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Summed resources of the connected devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceTotals {
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory in GiB.
    pub memory_gb: f64,
    /// Disk in GiB.
    pub storage_gb: f64,
}

/// How the master chooses a device for a task among those that can take
/// it now (see `docs/placement.md`). A strategy only orders the devices
/// that match and have a free slot; it never leaves a task waiting while
/// one of them is free.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// The device with the smallest share of its slots in use (the default).
    #[default]
    LeastLoaded,
    /// Each device in turn, by id.
    RoundRobin,
    /// The device running the fewest tasks, whatever its slots.
    FewestTasks,
    /// A device picked at random (a seeded generator in the master).
    Random,
    /// Tasks in proportion to each device's measured CPU capacity.
    Weighted,
    /// Devices on mains power and cool first; devices on battery only
    /// when no other can take the task.
    EnergyAware,
}

impl PlacementStrategy {
    /// Every strategy, in the order help texts list them.
    pub const ALL: [PlacementStrategy; 6] = [
        PlacementStrategy::LeastLoaded,
        PlacementStrategy::RoundRobin,
        PlacementStrategy::FewestTasks,
        PlacementStrategy::Random,
        PlacementStrategy::Weighted,
        PlacementStrategy::EnergyAware,
    ];

    /// The name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementStrategy::LeastLoaded => "least_loaded",
            PlacementStrategy::RoundRobin => "round_robin",
            PlacementStrategy::FewestTasks => "fewest_tasks",
            PlacementStrategy::Random => "random",
            PlacementStrategy::Weighted => "weighted",
            PlacementStrategy::EnergyAware => "energy_aware",
        }
    }
}

impl std::fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no placement strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement strategy {0:?}; expected one of least_loaded, round_robin, fewest_tasks, random, weighted, energy_aware")]
pub struct UnknownStrategy(pub String);

impl std::str::FromStr for PlacementStrategy {
    type Err = UnknownStrategy;

    fn from_str(text: &str) -> Result<PlacementStrategy, UnknownStrategy> {
        PlacementStrategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == text.trim())
            .ok_or_else(|| UnknownStrategy(text.to_string()))
    }
}

/// What a worker says about its power and heat, in `register` and in every
/// `heartbeat` (`power`). Every field is optional: a missing one means the
/// worker cannot tell (no battery, no sensor), which is never read as a
/// constraint. Other keys inside `power` are ignored by this master.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// Battery charge in percent, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_percent: Option<f64>,
    /// Whether the battery is charging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    /// Whether the device runs on mains power (`false`: on its battery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_ac: Option<bool>,
    /// The hottest relevant temperature, in degrees Celsius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
}

impl Power {
    /// Whether the device said it runs on its battery. A device that does
    /// not say (no battery, an older worker) is taken as on mains.
    pub fn on_battery(&self) -> bool {
        self.on_ac == Some(false)
    }
}
