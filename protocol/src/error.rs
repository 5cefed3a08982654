//! The closed set of error codes that travel in `error` replies, and the
//! decoder's own error type.

use std::fmt;

/// Every machine-readable error code the cluster puts on the wire.
///
/// The set is closed on purpose: clients can match on it exhaustively, and
/// `docs/protocol.md` lists each one with its meaning. Adding a code is a
/// protocol change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A line exceeded the connection's maximum length; the connection closes.
    LineTooLong,
    /// The line started with `{` but is not valid JSON.
    MalformedJson,
    /// Valid JSON, but not a valid message (missing or mistyped fields).
    InvalidMessage,
    /// `message_type` names no message this peer understands.
    UnknownMessageType,
    /// A text command that does not exist or has wrong arguments.
    UnknownCommand,
    /// A worker message arrived on a connection that has not registered.
    NotRegistered,
    /// The task or device named in the request does not exist.
    NotFound,
    /// The request is valid but the target is in a state that forbids it
    /// (for example cancelling a task that already finished).
    InvalidState,
    /// The worker does not run this task type.
    UnsupportedTaskType,
    /// The worker has no free slot for another task.
    NoFreeSlot,
    /// The master could not make the change durable; retry later.
    StorageUnavailable,
    /// The master is shutting down and accepts no new work.
    ShuttingDown,
    /// The master holds as many connections as it allows; retry later.
    TooManyConnections,
    /// The request needs an authenticated connection (`auth_hello` /
    /// `auth_proof`, or `auth TOKEN` in text mode) first.
    AuthRequired,
    /// The token, key or proof was wrong, the device is unknown, or the
    /// handshake is out of order; the connection closes.
    AuthFailed,
    /// The connection is authenticated, but its role may not do this
    /// (for example a worker credential used to submit).
    Forbidden,
    /// The device was revoked; it may never connect again under this id.
    DeviceRevoked,
    /// Another device already enrolled under this id with another key.
    DeviceIdTaken,
    /// The connection did not authenticate in time; it closes.
    AuthTimeout,
    /// An unexpected internal failure; the message says more.
    InternalError,
}

impl ErrorCode {
    /// All codes, in documentation order.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::LineTooLong,
        ErrorCode::MalformedJson,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownMessageType,
        ErrorCode::UnknownCommand,
        ErrorCode::NotRegistered,
        ErrorCode::NotFound,
        ErrorCode::InvalidState,
        ErrorCode::UnsupportedTaskType,
        ErrorCode::NoFreeSlot,
        ErrorCode::StorageUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyConnections,
        ErrorCode::AuthRequired,
        ErrorCode::AuthFailed,
        ErrorCode::Forbidden,
        ErrorCode::DeviceRevoked,
        ErrorCode::DeviceIdTaken,
        ErrorCode::AuthTimeout,
        ErrorCode::InternalError,
    ];

    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownMessageType => "unknown_message_type",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::UnsupportedTaskType => "unsupported_task_type",
            ErrorCode::NoFreeSlot => "no_free_slot",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::DeviceRevoked => "device_revoked",
            ErrorCode::DeviceIdTaken => "device_id_taken",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::InternalError => "internal_error",
        }
    }

    /// Parses a wire code; `None` for a code outside the closed set.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }

    /// Whether a client may retry the same request later and expect success.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::NoFreeSlot
                | ErrorCode::TooManyConnections
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a line could not be turned into a message.
///
/// It carries the `message_id` when one could be read, so the `error` reply
/// can point back at the request even though the request was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct DecodeError {
    /// The code to put in the `error` reply.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub detail: String,
    /// The request's `message_id`, when it could be salvaged.
    pub message_id: Option<String>,
}

impl DecodeError {
    pub(crate) fn new(code: ErrorCode, detail: impl Into<String>) -> DecodeError {
        DecodeError {
            code,
            detail: detail.into(),
            message_id: None,
        }
    }
}
