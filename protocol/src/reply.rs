//! The documents the master answers with: one type per kind of reply.
//!
//! Each is the `result` object of an `ack`, and the same document is what
//! `retire --json` prints and what an HTTP route serves, so it is defined
//! once, here. Their fields are declared in sorted order because the master
//! sent these documents as sorted JSON maps before they were typed, and the
//! bytes on the wire stay what they were (`master/src/core/tests/replies.rs`
//! holds every one of them byte for byte).
//!
//! A reply read off the wire cannot know which request it answers, so a
//! decoded `ack` carries [`Reply::Fields`]; the client that sent the request
//! reads it as the type it expects with [`Reply::parse`].

use crate::error::{DecodeError, ErrorCode};
use crate::types::{ClusterStats, DevicePage, DeviceView, TaskPage, TaskView};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The `success: true` every reply holds. It carries no information (a
/// failure is an `error` message, not an `ack`), so it is a unit that
/// always writes `true` and reads whatever an older peer sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Success;

impl Serialize for Success {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(true)
    }
}

impl<'de> Deserialize<'de> for Success {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Success, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Success)
    }
}

/// The answer to `register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The device the connection now speaks for.
    pub device_id: String,
    /// How often the worker should heartbeat, in seconds.
    pub heartbeat_interval: f64,
    /// `registered ID`.
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to a heartbeat (the master writes it without building it,
/// see the master's `heartbeat_ack.rs`, byte for byte this document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReceived {
    /// How often the worker should heartbeat, in seconds.
    pub heartbeat_interval: f64,
    /// Always `true`.
    pub heartbeat_received: bool,
    /// `heartbeat received`.
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `task_result`: recorded, or discarded because the attempt
/// is no longer current (acknowledged all the same, so the worker forgets
/// it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecorded {
    /// What happened, for people.
    pub message: String,
    /// Whether the result was recorded (`false`: discarded).
    pub recorded: bool,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
    /// The task the result was for.
    pub task_id: String,
}

/// An answer that only says it was done: `subscribe` (`subscribed`) and
/// `goodbye` (`goodbye`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// What was done.
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to a `task_submit` of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// Whether the task is new (`false`: a task with its client-chosen id
    /// already existed and was not queued again).
    #[serde(default)]
    pub created: bool,
    /// `task accepted` or `task already exists`.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
    /// The task's id.
    pub task_id: String,
}

/// The answer to a `task_submit` with `batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSubmitted {
    /// `N tasks accepted (M new)`.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
    /// The tasks' ids, in the order they were given.
    pub task_ids: Vec<String>,
}

/// The answer to `task_status`: one task in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReply {
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
    /// The task.
    pub task: TaskView,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The cluster's totals.
    pub cluster_stats: ClusterStats,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `device_info`: one device in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReply {
    /// The device.
    pub device: DeviceView,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `task_cancel` (`task ID cancelled`) and `task_retry`
/// (`task ID queued again`): the task as it now is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskChanged {
    /// What was done.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
    /// The task after the change.
    pub task: TaskView,
}

/// The answer to `drain_device`: the device as it now is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draining {
    /// The device, now draining.
    pub device: DeviceView,
    /// `device ID is draining`.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `revoke_device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoked {
    /// The device whose credential no longer works.
    pub device_id: String,
    /// `revoked ID`.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `prune`: how many finished tasks were deleted, per state
/// (only the states that had any) and in all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    /// Deleted tasks per state (`completed`, `failed`, ...).
    pub pruned: std::collections::BTreeMap<String, u64>,
    /// Deleted tasks in all.
    pub total: u64,
    /// `pruned N finished tasks`.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `strategy`: the placement strategy in use (after the
/// switch, when the request named one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyReply {
    /// `placement strategy NAME`, or `placement strategy NAME (was OLD)`
    /// after a switch.
    #[serde(default)]
    pub message: String,
    /// The strategy in use before the switch; absent for a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<crate::types::PlacementStrategy>,
    /// The strategy in use now.
    pub strategy: crate::types::PlacementStrategy,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to `task_delete`: the dead letter is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDeleted {
    /// `dead letter ID deleted`.
    #[serde(default)]
    pub message: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
    /// The task deleted.
    pub task_id: String,
}

/// The answer to `auth_hello`: the master's challenge (see
/// [`crate::auth::Challenge::from_reply`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthChallenge {
    /// The master's nonce, in hex.
    pub challenge: String,
    /// The master's public key, in hex.
    pub master_key: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// The answer to a good `auth_proof`: the connection's role, and the
/// master's proof that it holds the secret too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Authenticated {
    /// The device a worker connection speaks for; `null` for other roles.
    pub device_id: Option<String>,
    /// The master's proof, in hex.
    pub master_proof: String,
    /// `admin` or `worker`.
    pub role: String,
    /// Always `true`.
    #[serde(default)]
    pub success: Success,
}

/// Declares [`Reply`] with one variant per document, and a `From` for each
/// document so the master writes `Reply::from(Submitted { … })`.
macro_rules! replies {
    ($($(#[$doc:meta])* $variant:ident($document:ty => $stored:ty),)*) => {
        /// The `result` of an `ack`: one of the master's documents, or, for
        /// an ack read off the wire or sent by a worker, its fields as they
        /// are.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Reply {
            $($(#[$doc])* $variant($stored),)*
            /// Fields as they are: what a decoded `ack` holds, and what a
            /// worker answers an assignment or a cancel with.
            Fields(Map<String, Value>),
        }

        $(impl From<$document> for Reply {
            fn from(reply: $document) -> Reply {
                Reply::$variant(reply.into())
            }
        })*
    };
}

// The task and device documents are boxed: a task may carry a whole line of
// payload and result, and they are much larger than the small replies on
// the hot path (submits, results).
replies! {
    /// See [`Registered`].
    Registered(Registered => Registered),
    /// See [`HeartbeatReceived`].
    HeartbeatReceived(HeartbeatReceived => HeartbeatReceived),
    /// See [`ResultRecorded`].
    ResultRecorded(ResultRecorded => ResultRecorded),
    /// See [`Done`].
    Done(Done => Done),
    /// See [`Submitted`].
    Submitted(Submitted => Submitted),
    /// See [`BatchSubmitted`].
    BatchSubmitted(BatchSubmitted => BatchSubmitted),
    /// See [`TaskReply`].
    Task(TaskReply => Box<TaskReply>),
    /// The answer to `list_tasks`, see [`TaskPage`].
    TaskPage(TaskPage => TaskPage),
    /// See [`StatusReply`].
    Status(StatusReply => Box<StatusReply>),
    /// The answer to `list_devices`, see [`DevicePage`].
    DevicePage(DevicePage => DevicePage),
    /// See [`DeviceReply`].
    Device(DeviceReply => Box<DeviceReply>),
    /// See [`TaskChanged`].
    TaskChanged(TaskChanged => Box<TaskChanged>),
    /// See [`Draining`].
    Draining(Draining => Box<Draining>),
    /// See [`Revoked`].
    Revoked(Revoked => Revoked),
    /// See [`Pruned`].
    Pruned(Pruned => Pruned),
    /// See [`StrategyReply`].
    Strategy(StrategyReply => StrategyReply),
    /// See [`TaskDeleted`].
    TaskDeleted(TaskDeleted => TaskDeleted),
    /// See [`AuthChallenge`].
    AuthChallenge(AuthChallenge => AuthChallenge),
    /// See [`Authenticated`].
    Authenticated(Authenticated => Authenticated),
}

impl Reply {
    /// The document read as the reply `T` its request expects.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let read = match self {
            Reply::Fields(fields) => T::deserialize(FieldsRef(fields)),
            typed => serde_json::to_value(typed).and_then(serde_json::from_value),
        };
        read.map_err(|err| {
            DecodeError::new(
                ErrorCode::InvalidMessage,
                format!("unexpected ack result: {err}"),
            )
        })
    }

    /// The document's fields, as the wire carries them.
    pub fn fields(&self) -> Cow<'_, Map<String, Value>> {
        match self {
            Reply::Fields(fields) => Cow::Borrowed(fields),
            typed => match serde_json::to_value(typed) {
                Ok(Value::Object(fields)) => Cow::Owned(fields),
                // Every typed reply is a struct of plain fields, so it is
                // always an object.
                _ => Cow::Owned(Map::new()),
            },
        }
    }
}

/// Reads a borrowed map of fields as an object, without copying it into a
/// `Value` first.
struct FieldsRef<'a>(&'a Map<String, Value>);

impl<'de> Deserializer<'de> for FieldsRef<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::value::MapDeserializer;
        let entries = self.0.iter().map(|(key, value)| (key.as_str(), value));
        let mut map = MapDeserializer::new(entries);
        let value = visitor.visit_map(&mut map)?;
        map.end()?;
        Ok(value)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}
