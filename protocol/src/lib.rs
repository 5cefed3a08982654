//! The Retire-Cluster wire protocol, with no I/O.
//!
//! - [`auth`] holds tokens, keys and the handshake's proofs.
//! - [`limits`] holds the nesting limit on free-form values.
//! - [`codec`] cuts a byte stream into frames (JSON lines, one-shot JSON
//!   objects without a newline, and text commands).
//! - [`message`] holds the envelope and every message as domain types, and
//!   converts them from and to both the design's and the older JSON shapes.
//! - [`reply`] holds the master's answers, one document type per reply,
//!   which `retire --json` prints as they are.
//! - [`text`] parses the plain-text commands a person types with netcat.
//! - [`types`] holds the values several messages share.
//!
//! Nothing here touches a socket, a thread or the clock, so every part is
//! tested with plain values.

pub mod auth;
pub mod codec;
pub mod error;
pub mod limits;
pub mod message;
pub mod reply;
pub mod text;
pub mod types;

pub use codec::{Frame, LineCodec, LineTooLong, DEFAULT_MAX_LINE};
pub use error::{DecodeError, ErrorCode};
pub use limits::MAX_VALUE_DEPTH;
pub use message::{
    Ack, DeviceRef, EncodedEnvelope, Envelope, ErrorReply, Event, Goodbye, Heartbeat, ListDevices,
    ListTasks, Message, Metrics, Prune, Register, RunningTask, StrategyRequest, Subscribe,
    TaskAssign, TaskCancel, TaskProgress, TaskRef, TaskResult, TaskSubmit,
};
pub use reply::{
    AuthChallenge, Authenticated, BatchSubmitted, DeviceReply, Done, Draining, HeartbeatReceived,
    Pruned, Registered, Reply, ResultRecorded, Revoked, StatusReply, StrategyReply, Submitted,
    Success, TaskChanged, TaskDeleted, TaskReply,
};
pub use types::{
    ClusterStats, DevicePage, DeviceStatus, DeviceView, HardwareView, PlacementStrategy, Power,
    Priority, Requirements, ResourceTotals, ResultStatus, TaskPage, TaskSpec, TaskState, TaskView,
    UnknownState,
};

/// The TCP port the master listens on by default.
pub const DEFAULT_PORT: u16 = 8080;

/// The DNS-SD service type a master announces over mDNS and `retire-worker --join
/// auto` looks for (docs/protocol.md, "Finding the master: mDNS").
pub const SERVICE_TYPE: &str = "_retire._tcp.local.";
