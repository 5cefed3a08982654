//! The envelope and every message, as domain types, with the conversion
//! from and to the JSON wire shapes.
//!
//! Decoding accepts both the design's nested shapes and the older flat
//! shapes that existing Python workers send, and turns both into one domain
//! type. Encoding always writes the design's shape.

mod decode;
mod encode;

use crate::auth;
use crate::error::{DecodeError, ErrorCode};
use crate::reply::Reply;
use crate::types::{PlacementStrategy, Power, ResultStatus, TaskSpec, TaskState, TaskView};
use decode::id_text;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Map, Value};

/// One message with its envelope fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Who sent it; required from workers.
    pub sender_id: Option<String>,
    /// Who it is for (`receiver_id` is accepted too).
    pub target_id: Option<String>,
    /// The sender's id for this message; replies carry it back.
    pub message_id: Option<String>,
    /// When it was sent (RFC 3339), as the sender says.
    pub timestamp: Option<String>,
    /// The message itself.
    pub message: Message,
}

impl Envelope {
    /// An envelope around `message` with no other fields set.
    pub fn new(message: Message) -> Envelope {
        Envelope {
            sender_id: None,
            target_id: None,
            message_id: None,
            timestamp: None,
            message,
        }
    }

    /// Sets `sender_id`.
    pub fn from_sender(mut self, sender_id: impl Into<String>) -> Envelope {
        self.sender_id = Some(sender_id.into());
        self
    }

    /// Sets `message_id`.
    pub fn with_id(mut self, message_id: impl Into<String>) -> Envelope {
        self.message_id = Some(message_id.into());
        self
    }

    /// The JSON value of the whole message, in the design's shape: the
    /// [`Envelope::to_line`] bytes as a `Value`, for callers that look
    /// inside a message.
    pub fn to_value(&self) -> Value {
        // Serializing a message cannot fail: it holds only strings, numbers
        // and maps with string keys.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The message as one line of JSON, ending in `\n`.
    ///
    /// Every object's keys are written in sorted order, straight from the
    /// message's fields (see `message/encode.rs`).
    pub fn to_line(&self) -> Vec<u8> {
        // The line is written into a buffer kept per thread and copied
        // out at its size: one allocation per line instead of a buffer
        // that grows (and is copied) several times while it is written.
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.clear();
                write_line(self, &mut scratch);
                let line = scratch.to_vec();
                if scratch.capacity() > MAX_SCRATCH {
                    // A rare large line (a listing, a batch's ids) does
                    // not keep its memory.
                    *scratch = Vec::new();
                }
                line
            }
            Err(_) => {
                let mut line = Vec::with_capacity(256);
                write_line(self, &mut line);
                line
            }
        })
    }

    /// Decodes one JSON frame (without its newline): the one way every
    /// JSON message is read (see `message/decode.rs`).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        decode::decode(bytes)
    }

    /// Decodes an already parsed JSON value, as [`Envelope::decode`] decodes
    /// its text.
    pub fn from_value(value: Value) -> Result<Envelope, DecodeError> {
        let line = serde_json::to_vec(&value)
            .map_err(|err| DecodeError::new(ErrorCode::MalformedJson, err.to_string()))?;
        Envelope::decode(&line)
    }
}

/// An envelope encoded once, without its `timestamp`, to be written any number of
/// times, each with the time of that write.
///
/// A worker's result is one: its line is saved to the outbox and sent (after a
/// reconnect, again) as these same bytes. The `timestamp` is the envelope's last key in
/// the wire layout (keys are sorted), so stamping it only inserts the field before the
/// closing brace: the bytes are exactly those of [`Envelope::to_line`] for the envelope
/// with that timestamp set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEnvelope(std::sync::Arc<[u8]>);

impl EncodedEnvelope {
    /// Encodes `envelope`, leaving its `timestamp` out.
    pub fn new(envelope: &Envelope) -> EncodedEnvelope {
        let line = if envelope.timestamp.is_some() {
            let mut unstamped = envelope.clone();
            unstamped.timestamp = None;
            unstamped.to_line()
        } else {
            envelope.to_line()
        };
        EncodedEnvelope(line.into())
    }

    /// The line without a timestamp, ending in `\n`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Appends the line with `timestamp` set to `out`.
    pub fn write_stamped(&self, timestamp: &str, out: &mut Vec<u8>) {
        // `to_line` always ends an envelope in `}\n`.
        let body = self.0.strip_suffix(b"}\n").unwrap_or(&self.0);
        out.extend_from_slice(body);
        out.extend_from_slice(b",\"timestamp\":");
        // Writing a string into a buffer cannot fail.
        let _ = serde_json::to_writer(&mut *out, timestamp);
        out.extend_from_slice(b"}\n");
    }
}

thread_local! {
    /// The buffer [`Envelope::to_line`] writes into.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest buffer [`Envelope::to_line`] keeps between lines.
const MAX_SCRATCH: usize = 64 * 1024;

fn write_line(envelope: &Envelope, out: &mut Vec<u8>) {
    // Straight into bytes: `to_string` goes through `fmt`; the output is
    // the same.
    let _ = serde_json::to_writer(&mut *out, envelope);
    out.push(b'\n');
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Worker → master: join with a profile.
    Register(Register),
    /// Worker → master: still alive, with live metrics.
    Heartbeat(Heartbeat),
    /// Worker → master: an attempt finished.
    TaskResult(TaskResult),
    /// Worker → master: an attempt's progress (never answered).
    TaskProgress(TaskProgress),
    /// Worker → master: leaving on purpose.
    Goodbye(Goodbye),
    /// Master → worker: run this task.
    TaskAssign(TaskAssign),
    /// Client → master, and master → worker: stop a task.
    TaskCancel(TaskCancel),
    /// Client → master: queue one task or a batch.
    TaskSubmit(TaskSubmit),
    /// Client → master: one task's state and result.
    TaskStatus(TaskRef),
    /// Client → master: queue a finished task (failed, timed out,
    /// cancelled or dead-lettered) again with a fresh retry budget.
    TaskRetry(TaskRef),
    /// Client → master (admin): delete one dead letter for good; a task in
    /// any other state is refused (`invalid_state`).
    TaskDelete(TaskRef),
    /// Client → master: tasks, optionally of one state.
    ListTasks(ListTasks),
    /// Client → master: cluster totals.
    Status,
    /// Client → master: devices, optionally of one role.
    ListDevices(ListDevices),
    /// Client → master: one device.
    DeviceInfo(DeviceRef),
    /// Client → master: give a device no new work.
    DrainDevice(DeviceRef),
    /// Client → master: stream `event`s on this connection.
    Subscribe(Subscribe),
    /// A successful reply.
    Ack(Ack),
    /// A failed reply.
    Error(ErrorReply),
    /// Master → subscriber: something happened.
    Event(Event),
    /// Peer → master: start authenticating (see [`crate::auth`]).
    AuthHello(auth::Hello),
    /// Peer → master: the proof that finishes authenticating.
    AuthProof(auth::Proof),
    /// Client → master: cut a device off at once and for good.
    RevokeDevice(DeviceRef),
    /// Client → master (admin): delete the finished tasks that finished
    /// before a time, now rather than at their retention.
    Prune(Prune),
    /// Client → master: the placement strategy in use; with a name (admin),
    /// switch to it from the next assignment on.
    Strategy(StrategyRequest),
}

impl Message {
    /// The `message_type` this message is written with.
    pub fn message_type(&self) -> &'static str {
        match self {
            Message::Register(_) => "register",
            Message::Heartbeat(_) => "heartbeat",
            Message::TaskResult(_) => "task_result",
            Message::TaskProgress(_) => "task_progress",
            Message::Goodbye(_) => "goodbye",
            Message::TaskAssign(_) => "task_assign",
            Message::TaskCancel(_) => "task_cancel",
            Message::TaskSubmit(_) => "task_submit",
            Message::TaskStatus(_) => "task_status",
            Message::TaskRetry(_) => "task_retry",
            Message::TaskDelete(_) => "task_delete",
            Message::ListTasks(_) => "list_tasks",
            Message::Status => "status",
            Message::ListDevices(_) => "list_devices",
            Message::DeviceInfo(_) => "device_info",
            Message::DrainDevice(_) => "drain_device",
            Message::Subscribe(_) => "subscribe",
            Message::Ack(_) => "ack",
            Message::Error(_) => "error",
            Message::Event(_) => "event",
            Message::AuthHello(_) => "auth_hello",
            Message::AuthProof(_) => "auth_proof",
            Message::RevokeDevice(_) => "revoke_device",
            Message::Prune(_) => "prune",
            Message::Strategy(_) => "strategy",
        }
    }

    /// Whether the receiver answers this message with an `ack` or `error`.
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self,
            Message::TaskProgress(_) | Message::Ack(_) | Message::Error(_) | Message::Event(_)
        )
    }

    /// The checks serde cannot make, after a message is decoded.
    ///
    /// Every free-form value a peer sends for the master to store or relay
    /// is held to [`crate::limits::MAX_VALUE_DEPTH`] here, whichever
    /// decoder read it. A worker's `task_result` is the exception: its
    /// `result` is checked by the master itself, which then fails the
    /// attempt instead of leaving the task waiting for its timeout.
    fn check(&self) -> Result<(), DecodeError> {
        self.check_depth()
            .map_err(|detail| DecodeError::new(ErrorCode::InvalidMessage, detail))?;
        if let Message::TaskSubmit(submit) = self {
            for task in &submit.tasks {
                task.validate()
                    .map_err(|detail| DecodeError::new(ErrorCode::InvalidMessage, detail))?;
            }
        }
        if let Message::TaskAssign(assign) = self {
            if assign.task.task_id.is_none() {
                return Err(DecodeError::new(
                    ErrorCode::InvalidMessage,
                    "task_assign needs data.task.task_id",
                ));
            }
        }
        Ok(())
    }

    /// Checks the nesting of every free-form value the message carries
    /// (see [`Message::check`]).
    fn check_depth(&self) -> Result<(), String> {
        use crate::limits::{check_depth, check_fields_depth};
        match self {
            Message::TaskSubmit(submit) => submit
                .tasks
                .iter()
                .try_for_each(|task| check_depth("payload", &task.payload)),
            Message::TaskAssign(assign) => check_depth("payload", &assign.task.payload),
            Message::Register(register) => {
                if let Some(capabilities) = &register.capabilities {
                    check_depth("capabilities", capabilities)?;
                }
                check_fields_depth("the field", &register.extra)
            }
            Message::Heartbeat(heartbeat) => {
                check_fields_depth("the metric", &heartbeat.metrics.extra)?;
                check_fields_depth("the field", &heartbeat.extra)
            }
            _ => Ok(()),
        }
    }
}

/// `auth_hello` as it is written on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct AuthHelloData {
    client_nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
}

impl AuthHelloData {
    fn from_domain(hello: &auth::Hello) -> AuthHelloData {
        let (device_id, public_key) = match &hello.method {
            auth::Method::Join {
                device_id,
                public_key,
            } => (Some(device_id.clone()), Some(public_key.to_string())),
            auth::Method::Device { device_id } => (Some(device_id.clone()), None),
            auth::Method::Admin => (None, None),
        };
        AuthHelloData {
            method: hello.method.name().into(),
            device_id,
            public_key,
            client_nonce: hello.client_nonce.to_string(),
        }
    }

    fn into_domain(self) -> Result<auth::Hello, DecodeError> {
        let invalid =
            |err: auth::AuthError| DecodeError::new(ErrorCode::InvalidMessage, err.to_string());
        let device_id = || -> Result<String, DecodeError> {
            let id = self.device_id.clone().ok_or_else(|| {
                DecodeError::new(ErrorCode::InvalidMessage, "auth_hello needs data.device_id")
            })?;
            crate::types::validate_id("device_id", &id)
                .map_err(|detail| DecodeError::new(ErrorCode::InvalidMessage, detail))?;
            Ok(id)
        };
        let method = match self.method.as_str() {
            "join" => {
                let key = self.public_key.as_deref().ok_or_else(|| {
                    DecodeError::new(ErrorCode::InvalidMessage, "a join needs data.public_key")
                })?;
                auth::Method::Join {
                    device_id: device_id()?,
                    public_key: key.parse().map_err(invalid)?,
                }
            }
            "device" => auth::Method::Device {
                device_id: device_id()?,
            },
            "admin" => auth::Method::Admin,
            other => return Err(invalid(auth::AuthError::UnknownMethod(other.into()))),
        };
        let client_nonce =
            auth::Nonce::parse("client_nonce", &self.client_nonce).map_err(invalid)?;
        Ok(auth::Hello {
            method,
            client_nonce,
        })
    }
}

/// `auth_proof` as it is written on the wire.
#[derive(Debug, Deserialize)]
struct AuthProofData {
    proof: String,
}

impl AuthProofData {
    fn into_domain(self) -> Result<auth::Proof, DecodeError> {
        auth::Proof::parse(&self.proof)
            .map_err(|err| DecodeError::new(ErrorCode::InvalidMessage, err.to_string()))
    }
}

/// A task the worker is still running when it (re)registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    /// The task's id.
    pub task_id: String,
    /// The attempt it is running.
    #[serde(default)]
    pub attempt: u32,
}

/// A worker joining, in one domain shape whichever wire shape it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Register {
    /// Host name.
    pub hostname: Option<String>,
    /// Platform (`linux`, `android`, …).
    pub platform: Option<String>,
    /// CPU architecture.
    pub architecture: Option<String>,
    /// Operating system name and version.
    pub os_version: Option<String>,
    /// Kernel version.
    pub kernel_version: Option<String>,
    /// CPU model name.
    pub cpu_model: Option<String>,
    /// Python version (older workers).
    pub python_version: Option<String>,
    /// Address the worker reports for itself.
    pub ip_address: Option<String>,
    /// Role (`worker`, `mobile`, `compute`, …).
    pub role: Option<String>,
    /// CPU cores.
    pub cpu_cores: Option<u32>,
    /// Memory in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Disk in bytes.
    pub disk_total_bytes: Option<u64>,
    /// Network interface names.
    pub network_interfaces: Vec<String>,
    /// Capabilities exactly as sent: a list (design) or a map (older).
    pub capabilities: Option<Value>,
    /// Tags.
    pub tags: Vec<String>,
    /// Task types the worker runs; `None` when it does not say.
    pub task_types: Option<Vec<String>>,
    /// Tasks it runs at once (`max_concurrent_tasks` in the older shape).
    pub slots: Option<u32>,
    /// Tasks it still runs from before a reconnect.
    pub running_tasks: Vec<RunningTask>,
    /// The worker keeps running its tasks and keeps their results when it
    /// loses the master, so the master may hold its tasks for it for a
    /// grace period instead of requeueing them at once.
    pub leases: bool,
    /// How well the worker's task sandbox guards the device's owner: `full`,
    /// `partial` or `none` (see docs/sandbox.md); `None` from a worker that does
    /// not say (older ones), which `--require sandbox=…` treats as unknown.
    pub sandbox: Option<String>,
    /// The score of the worker's CPU benchmark (`hardware_specs.cpu_benchmark`):
    /// work units per second on one core; `weighted` placement uses it.
    pub cpu_benchmark: Option<f64>,
    /// Its power and heat when it registers (see [`Power`]).
    pub power: Option<Power>,
    /// Every other field, kept as sent.
    pub extra: Map<String, Value>,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Converts GiB as older workers report them into bytes.
pub fn gib_to_bytes(gib: f64) -> u64 {
    if gib.is_finite() && gib > 0.0 {
        (gib * GIB).round() as u64
    } else {
        0
    }
}

/// Converts bytes into GiB.
pub fn bytes_to_gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeviceInfoWire {
    hostname: Option<String>,
    platform: Option<String>,
    architecture: Option<String>,
    os_version: Option<String>,
    kernel_version: Option<String>,
    cpu_model: Option<String>,
    python_version: Option<String>,
    ip_address: Option<String>,
    role: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HardwareSpecsWire {
    cpu_cores: Option<u32>,
    memory_total: Option<u64>,
    disk_space: Option<u64>,
    network_interfaces: Option<Vec<String>>,
    cpu_benchmark: Option<f64>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The keys [`RegisterWire`] reads at the top level of `data`; keep in step
/// with its fields.
const REGISTER_TOP_LEVEL_KEYS: [&str; 19] = [
    "device_info",
    "hardware_specs",
    "capabilities",
    "role",
    "platform",
    "hostname",
    "ip_address",
    "architecture",
    "cpu_count",
    "memory_total_gb",
    "storage_total_gb",
    "max_concurrent_tasks",
    "tags",
    "task_types",
    "slots",
    "running_tasks",
    "leases",
    "sandbox",
    "power",
];

#[derive(Deserialize, Default)]
#[serde(default)]
struct RegisterWire {
    device_info: Option<DeviceInfoWire>,
    hardware_specs: Option<HardwareSpecsWire>,
    capabilities: Option<Value>,
    // The older flat shape.
    role: Option<String>,
    platform: Option<String>,
    hostname: Option<String>,
    ip_address: Option<String>,
    architecture: Option<String>,
    cpu_count: Option<u32>,
    memory_total_gb: Option<f64>,
    storage_total_gb: Option<f64>,
    max_concurrent_tasks: Option<u32>,
    // Shared and ours.
    tags: Vec<String>,
    task_types: Option<Vec<String>>,
    slots: Option<u32>,
    running_tasks: Vec<RunningTask>,
    leases: bool,
    sandbox: Option<String>,
    power: Option<Power>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Register {
    fn from_wire(wire: RegisterWire) -> Register {
        let info = wire.device_info.unwrap_or_default();
        let hardware = wire.hardware_specs.unwrap_or_default();
        let mut extra = wire.extra;
        extra.extend(info.extra);
        extra.extend(hardware.extra);
        Register {
            hostname: info.hostname.or(wire.hostname),
            platform: info.platform.or(wire.platform),
            architecture: info.architecture.or(wire.architecture),
            os_version: info.os_version,
            kernel_version: info.kernel_version,
            cpu_model: info.cpu_model,
            python_version: info.python_version,
            ip_address: info.ip_address.or(wire.ip_address),
            role: info.role.or(wire.role),
            cpu_cores: hardware.cpu_cores.or(wire.cpu_count),
            memory_total_bytes: hardware
                .memory_total
                .or(wire.memory_total_gb.map(gib_to_bytes)),
            disk_total_bytes: hardware
                .disk_space
                .or(wire.storage_total_gb.map(gib_to_bytes)),
            network_interfaces: hardware.network_interfaces.unwrap_or_default(),
            capabilities: wire.capabilities,
            tags: wire.tags,
            task_types: wire.task_types,
            slots: wire.slots.or(wire.max_concurrent_tasks),
            running_tasks: wire.running_tasks,
            leases: wire.leases,
            sandbox: wire.sandbox,
            cpu_benchmark: hardware.cpu_benchmark,
            power: wire.power,
            extra,
        }
    }

    fn to_data(&self) -> Value {
        let mut device_info = Map::new();
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(value) = value {
                device_info.insert(key.into(), json!(value));
            }
        };
        put("hostname", &self.hostname);
        put("platform", &self.platform);
        put("architecture", &self.architecture);
        put("os_version", &self.os_version);
        put("kernel_version", &self.kernel_version);
        put("cpu_model", &self.cpu_model);
        put("python_version", &self.python_version);
        put("ip_address", &self.ip_address);
        put("role", &self.role);
        let mut hardware = Map::new();
        if let Some(cores) = self.cpu_cores {
            hardware.insert("cpu_cores".into(), json!(cores));
        }
        if let Some(bytes) = self.memory_total_bytes {
            hardware.insert("memory_total".into(), json!(bytes));
        }
        if let Some(bytes) = self.disk_total_bytes {
            hardware.insert("disk_space".into(), json!(bytes));
        }
        hardware.insert("network_interfaces".into(), json!(self.network_interfaces));
        if let Some(score) = self.cpu_benchmark {
            hardware.insert("cpu_benchmark".into(), json!(score));
        }
        // `extra` also collects the unknown keys of `device_info` and
        // `hardware_specs`, so it may hold a key such as `slots` or `tags`
        // that the top level reads as a field of its own. Such keys go into
        // `hardware_specs`, which knows none of them, so that decoding what
        // was encoded gives back the same `extra` instead of failing or
        // turning an unknown value into a known field.
        let mut data = Map::new();
        for (key, value) in &self.extra {
            if REGISTER_TOP_LEVEL_KEYS.contains(&key.as_str()) {
                hardware.insert(key.clone(), value.clone());
            } else {
                data.insert(key.clone(), value.clone());
            }
        }
        data.insert("device_info".into(), Value::Object(device_info));
        data.insert("hardware_specs".into(), Value::Object(hardware));
        if let Some(capabilities) = &self.capabilities {
            data.insert("capabilities".into(), capabilities.clone());
        }
        data.insert("tags".into(), json!(self.tags));
        if let Some(types) = &self.task_types {
            data.insert("task_types".into(), json!(types));
        }
        if let Some(slots) = self.slots {
            data.insert("slots".into(), json!(slots));
        }
        if !self.running_tasks.is_empty() {
            data.insert("running_tasks".into(), json!(self.running_tasks));
        }
        if self.leases {
            data.insert("leases".into(), json!(true));
        }
        if let Some(sandbox) = &self.sandbox {
            data.insert("sandbox".into(), json!(sandbox));
        }
        if let Some(power) = &self.power {
            data.insert("power".into(), json!(power));
        }
        Value::Object(data)
    }
}

/// A registration as a value is its `data` object in the design's shape:
/// the master stores it so, and reads it back through the wire's own
/// decoder, so a stored registration and a received one are the same value.
impl Serialize for Register {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_data().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Register {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Register, D::Error> {
        // `null` reads as an empty registration, as an absent `data` does.
        let wire = Option::<RegisterWire>::deserialize(deserializer)?;
        Ok(wire.map(Register::from_wire).unwrap_or_default())
    }
}

/// Live metrics, in one domain shape whichever wire shape they came in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// CPU use in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage: Option<f64>,
    /// Memory use in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage: Option<f64>,
    /// Disk use in percent (`storage_usage` in the older shape).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "storage_usage"
    )]
    pub disk_usage: Option<f64>,
    /// 1, 5 and 15 minute load averages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<Vec<f64>>,
    /// Seconds since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime: Option<f64>,
    /// Every other metric, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    /// Live metrics (`system_metrics`, or `metrics` in the older shape).
    pub metrics: Metrics,
    /// The worker's own view of its status.
    pub status: Option<String>,
    /// Tasks it is running.
    pub active_tasks: Option<u32>,
    /// When it last did something (RFC 3339).
    pub last_activity: Option<String>,
    /// Its power and heat now (see [`Power`]).
    pub power: Option<Power>,
    /// Every other field, kept as sent.
    pub extra: Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HeartbeatWire {
    system_metrics: Option<Metrics>,
    metrics: Option<Metrics>,
    status: Option<String>,
    active_tasks: Option<u32>,
    last_activity: Option<String>,
    power: Option<Power>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Heartbeat {
    fn from_wire(wire: HeartbeatWire) -> Heartbeat {
        Heartbeat {
            metrics: wire.system_metrics.or(wire.metrics).unwrap_or_default(),
            status: wire.status,
            active_tasks: wire.active_tasks,
            last_activity: wire.last_activity,
            power: wire.power,
            extra: wire.extra,
        }
    }

    fn to_data(&self) -> Value {
        let mut data = self.extra.clone();
        // Metrics hold only numbers and maps with string keys, so they
        // always serialize.
        let metrics = serde_json::to_value(&self.metrics).unwrap_or(Value::Null);
        data.insert("system_metrics".into(), metrics);
        if let Some(status) = &self.status {
            data.insert("status".into(), json!(status));
        }
        if let Some(active) = self.active_tasks {
            data.insert("active_tasks".into(), json!(active));
        }
        if let Some(last) = &self.last_activity {
            data.insert("last_activity".into(), json!(last));
        }
        if let Some(power) = &self.power {
            data.insert("power".into(), json!(power));
        }
        Value::Object(data)
    }
}

/// An attempt's outcome, from the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The attempt this result belongs to; older workers omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// A one-line reason for failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<f64>,
    /// Output, exit code, metrics, …: an object by convention.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
    /// How it ended.
    pub status: ResultStatus,
    /// The task's id.
    pub task_id: String,
}

/// An attempt's progress, from the worker. Never answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Units done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    /// Fraction done, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// A short message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The task's id.
    pub task_id: String,
    /// Units in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// A worker leaving on purpose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why, for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The master giving a worker a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssign {
    /// The attempt number; results must carry it back.
    #[serde(default)]
    pub attempt: u32,
    /// The task, with its id set.
    pub task: TaskSpec,
}

/// Stop a task (client → master), or stop an attempt (master → worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCancel {
    /// The attempt to stop (master → worker only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The task's id.
    pub task_id: String,
}

/// Queue one task or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSubmit {
    /// The tasks, at least one.
    pub tasks: Vec<TaskSpec>,
    /// Whether it came as `data.tasks` (a batch); the ack then lists ids.
    pub batch: bool,
}

#[derive(Deserialize)]
struct TaskSubmitWire {
    #[serde(default)]
    task: Option<TaskSpec>,
    #[serde(default)]
    tasks: Option<Vec<TaskSpec>>,
}

/// The most tasks one batch submit may carry.
pub const MAX_BATCH: usize = 10_000;

impl TaskSubmit {
    fn from_wire(wire: TaskSubmitWire) -> Result<TaskSubmit, DecodeError> {
        let submit = match (wire.task, wire.tasks) {
            (Some(task), None) => TaskSubmit {
                tasks: vec![task],
                batch: false,
            },
            (None, Some(tasks)) if !tasks.is_empty() && tasks.len() <= MAX_BATCH => {
                TaskSubmit { tasks, batch: true }
            }
            (None, Some(tasks)) => {
                return Err(DecodeError::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "data.tasks must hold 1 to {MAX_BATCH} tasks, got {}",
                        tasks.len()
                    ),
                ))
            }
            _ => {
                return Err(DecodeError::new(
                    ErrorCode::InvalidMessage,
                    "task_submit needs exactly one of data.task and data.tasks",
                ))
            }
        };
        Ok(submit)
    }
}

/// Names one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    /// The task's id.
    pub task_id: String,
}

/// Names one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    /// The device's id.
    pub device_id: String,
}

/// `prune`'s data: the finished tasks (completed, failed, timed out,
/// cancelled, dead-lettered) that finished before `before_unix_ms` are
/// deleted; live ones never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    /// The cutoff, in milliseconds since the Unix epoch.
    pub before_unix_ms: i64,
}

/// `strategy`'s data: without `strategy`, a read of the placement
/// strategy in use; with it, a switch (admin only) that takes effect from
/// the next assignment on and is kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyRequest {
    /// The strategy to switch to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PlacementStrategy>,
}

/// List tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTasks {
    /// Only tasks older than this one: the `next_cursor` of the previous
    /// page (a task id), to read the next page. Older masters ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// At most this many, newest first (default 100, at most 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only tasks in this state. A name that is no state is refused when
    /// the message is decoded (`invalid_message`, naming the states).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "state_filter"
    )]
    pub state: Option<TaskState>,
}

/// Reads `list_tasks`'s `state`: a state's wire name, `timeout`, or
/// `null`.
fn state_filter<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TaskState>, D::Error> {
    let name = Option::<String>::deserialize(deserializer)?;
    name.map(|name| name.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// List devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDevices {
    /// Only devices registered before this one: the `next_cursor` of the
    /// previous page (a device id), to read the next page. Older masters
    /// ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// At most this many, newest registered first (default 500, at most
    /// 1,000). Older masters ignore it and send every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only devices of this role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Only devices with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Stream events on this connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Only events about these tasks; all events when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_ids: Vec<String>,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The request's `message_id`, if it had one.
    pub original_message_id: Option<String>,
    /// The result document; it always holds `success: true`.
    pub result: Reply,
}

impl Ack {
    /// An ack whose result is the master's typed document `reply`.
    pub fn reply(original_message_id: Option<String>, reply: impl Into<Reply>) -> Ack {
        Ack {
            original_message_id,
            result: reply.into(),
        }
    }

    /// An ack whose result is `{"success": true}` plus `fields`: a worker's
    /// answer to an assignment or a cancel, which no request reads as a
    /// document.
    pub fn new(original_message_id: Option<String>, fields: Value) -> Ack {
        let mut result = Map::new();
        result.insert("success".into(), Value::Bool(true));
        if let Value::Object(fields) = fields {
            result.extend(fields);
        }
        Ack {
            original_message_id,
            result: Reply::Fields(result),
        }
    }

    // Decoding and encoding an ack's `data` are these two functions.

    /// An ack from the text of its `data` object: the design's `result`
    /// object, any other `result` as `{"value": …}`, or (the older flat
    /// shape) the other fields of `data` themselves.
    fn from_data(data: &str) -> Result<Ack, DecodeError> {
        /// The design's shape (a worker's ack of every assignment), read
        /// straight into its fields; any other shape, a numeric id or a key
        /// given twice is read from the object as a map below.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Design {
            #[serde(default)]
            original_message_id: Option<String>,
            result: Map<String, Value>,
        }
        if let Ok(Design {
            original_message_id,
            result,
        }) = serde_json::from_str(data)
        {
            return Ok(Ack {
                original_message_id,
                result: Reply::Fields(result),
            });
        }
        let mut data: Map<String, Value> = serde_json::from_str(data).map_err(decode::invalid)?;
        let original_message_id = data.remove("original_message_id").and_then(id_text);
        let result = match data.remove("result") {
            Some(Value::Object(result)) => result,
            Some(other) => {
                let mut result = Map::new();
                result.insert("value".into(), other);
                result
            }
            None => data,
        };
        Ok(Ack {
            original_message_id,
            result: Reply::Fields(result),
        })
    }

    /// Writes the ack's `data` object, its keys in sorted order.
    fn write_data<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("original_message_id", &self.original_message_id)?;
        map.serialize_entry("result", &self.result)?;
        map.end()
    }
}

/// A failed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable code.
    #[serde(with = "code_serde")]
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub error: String,
    /// The request's `message_id`, if it had one.
    #[serde(default)]
    pub original_message_id: Option<String>,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(
        original_message_id: Option<String>,
        code: ErrorCode,
        error: impl Into<String>,
    ) -> ErrorReply {
        ErrorReply {
            original_message_id,
            error: error.into(),
            code,
        }
    }
}

mod code_serde {
    use crate::error::ErrorCode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(code: &ErrorCode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(code.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ErrorCode, D::Error> {
        let text = String::deserialize(deserializer)?;
        ErrorCode::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {text:?}")))
    }
}

/// Something that happened, streamed to subscribers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A task was queued.
    TaskSubmitted {
        /// The task's id.
        task_id: String,
        /// Its type.
        task_type: String,
    },
    /// A task was given to a device.
    TaskAssigned {
        /// The task's id.
        task_id: String,
        /// The device.
        device_id: String,
        /// The attempt.
        attempt: u32,
    },
    /// A running task reported progress.
    TaskProgress(TaskProgress),
    /// A task reached a terminal state; the view holds its result.
    TaskFinished {
        /// The task as it now is (boxed: it is much larger than the other
        /// events).
        task: Box<TaskView>,
    },
    /// A new device enrolled with the join token (its key is stored). Comes
    /// before its `device_joined`; an enrolled device reconnecting does not
    /// enroll again, so an unexpected one may mean a leaked join token.
    DeviceEnrolled {
        /// The device's id.
        device_id: String,
        /// The address it enrolled from, when the master knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enrolled_from: Option<String>,
    },
    /// A device connected and registered.
    DeviceJoined {
        /// The device's id.
        device_id: String,
    },
    /// A device went offline.
    DeviceLeft {
        /// The device's id.
        device_id: String,
        /// Why (goodbye, disconnect, heartbeat timeout).
        reason: String,
    },
    /// A device stopped taking new work.
    DeviceDraining {
        /// The device's id.
        device_id: String,
    },
    /// The master cannot save changes (disk full, I/O error): changes are
    /// refused with `storage_unavailable` until `storage_recovered`.
    StorageFailing,
    /// The master saves changes again.
    StorageRecovered,
}

impl Event {
    /// The task this event is about, if any.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Event::TaskSubmitted { task_id, .. } | Event::TaskAssigned { task_id, .. } => {
                Some(task_id)
            }
            Event::TaskProgress(progress) => Some(&progress.task_id),
            Event::TaskFinished { task } => Some(&task.task_id),
            _ => None,
        }
    }
}
