//! Decoding a line into an [`Envelope`]: the one way every JSON message is
//! read.
//!
//! The envelope's fields are read as raw JSON text borrowed from the line
//! (a key given twice keeps its last value, as in any JSON object here),
//! and `data` is deserialized straight into the message's wire struct once
//! `message_type` says which one, without a `serde_json::Value` tree on the
//! way (for results, acks, submits and heartbeats that tree would cost more
//! than the rest of the work).
//!
//! Reading raw text skips the values nobody reads, and serde_json checks
//! less of what it skips than of what it reads: a lone surrogate escape
//! (`\ud800`), a number too large for an `f64`, or nesting deeper than its
//! limit of 128 levels pass unnoticed there. A message with any of those
//! anywhere is refused as `malformed_json` all the same, so a cheap scan
//! looks for them first ([`needs_strict_check`]) and the rare line where
//! one may be is parsed in full once to find out ([`check_strictly`]).

use super::{
    Ack, AuthHelloData, AuthProofData, Envelope, Heartbeat, HeartbeatWire, Message, Register,
    RegisterWire, TaskSubmit, TaskSubmitWire,
};
use crate::error::{DecodeError, ErrorCode};
use serde::de::{Deserialize, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// The nesting at which a line is parsed in full before it is decoded: a
/// little under serde_json's own limit (a document 128 containers deep is
/// refused), which the full parse then applies exactly.
const STRICT_DEPTH: usize = 120;

/// Decodes one JSON frame (without its newline).
pub(super) fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let malformed = |detail: String| {
        // A line too deep (or too broken) to parse still names the request
        // when its `message_id` can be found, so that the sender learns
        // which of its messages was refused (a worker then drops a refused
        // result instead of resending it).
        let mut error = DecodeError::new(ErrorCode::MalformedJson, detail);
        error.message_id = crate::limits::salvage_string(bytes, &["message_id"]);
        error
    };
    // Where raw reading fails, or may pass what it should not, the full
    // parse names the fault as every document's is named.
    let strictly = |fallback: String| match check_strictly(bytes) {
        Err(err) => malformed(err.to_string()),
        Ok(()) => malformed(fallback),
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|err| strictly(format!("the line is not UTF-8: {err}")))?;
    if needs_strict_check(text) {
        if let Err(err) = check_strictly(bytes) {
            return Err(malformed(err.to_string()));
        }
    }
    if !text.trim_start().starts_with('{') {
        // Valid JSON that is not an object, or not JSON at all.
        if let Err(err) = check_strictly(bytes) {
            return Err(malformed(err.to_string()));
        }
        return Err(DecodeError::new(
            ErrorCode::InvalidMessage,
            "a message must be a JSON object",
        ));
    }
    let raw: RawEnvelope<'_> =
        serde_json::from_str(text).map_err(|err| strictly(err.to_string()))?;
    raw.into_envelope()
}

/// Whether `text` may hold what reading raw text does not check (see the
/// module's comment).
fn needs_strict_check(text: &str) -> bool {
    may_hold_surrogate_escape(text) || may_hold_huge_number(text) || may_nest_deeply(text)
}

/// Parses the whole line, as serde_json checks a document it reads.
fn check_strictly(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Value>(bytes).map(drop)
}

/// The envelope's fields as raw JSON, borrowed from the line. A key that
/// appears twice keeps its last value; unknown keys are parsed (so they are
/// checked like any value) and dropped.
#[derive(Default)]
struct RawEnvelope<'a> {
    message_id: Option<&'a RawValue>,
    message_type: Option<&'a RawValue>,
    sender_id: Option<&'a RawValue>,
    target_id: Option<&'a RawValue>,
    receiver_id: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
}

impl RawEnvelope<'_> {
    /// The envelope: its own fields first, each in a fixed order (so a line
    /// with several faults always gets the same error), then the message.
    /// Every error carries the `message_id` once it is read.
    fn into_envelope(self) -> Result<Envelope, DecodeError> {
        let message_id = self.message_id.and_then(|raw| id_text(small_value(raw)));
        let with_id = |mut err: DecodeError| {
            err.message_id = message_id.clone();
            err
        };
        let message_type = match self.message_type.map(small_value) {
            Some(Value::String(name)) => name,
            Some(_) => {
                return Err(with_id(DecodeError::new(
                    ErrorCode::InvalidMessage,
                    "message_type must be a string",
                )))
            }
            None => {
                return Err(with_id(DecodeError::new(
                    ErrorCode::InvalidMessage,
                    "missing message_type",
                )))
            }
        };
        let sender_id = optional_string(self.sender_id, "sender_id").map_err(with_id)?;
        let mut target_id = optional_string(self.target_id, "target_id").map_err(with_id)?;
        if target_id.is_none() {
            target_id = optional_string(self.receiver_id, "receiver_id").map_err(with_id)?;
        }
        let timestamp = optional_string(self.timestamp, "timestamp").map_err(with_id)?;
        let data = match self.data.map(RawValue::get) {
            None | Some("null") => "{}",
            Some(data) if data.starts_with('{') => data,
            Some(_) => {
                return Err(with_id(DecodeError::new(
                    ErrorCode::InvalidMessage,
                    "data must be a JSON object",
                )))
            }
        };
        let message = message_from_data(&message_type, data).map_err(with_id)?;
        Ok(Envelope {
            sender_id,
            target_id,
            message_id,
            timestamp,
            message,
        })
    }
}

/// A raw envelope field as a value. The text was parsed once already, as
/// part of the line, so it parses again (the `Null` is never used). A
/// string, by far the most common, is read as one.
fn small_value(raw: &RawValue) -> Value {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(text) => Value::String(text),
        Err(_) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
    }
}

/// Message ids may arrive as strings or numbers; both become text. Any
/// other id is no id.
pub(super) fn id_text(value: Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A string field of the envelope: absent or `null` is none, a number
/// becomes its text, anything else is refused.
fn optional_string(raw: Option<&RawValue>, key: &str) -> Result<Option<String>, DecodeError> {
    match raw.map(small_value) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::new(
            ErrorCode::InvalidMessage,
            format!("{key} must be a string"),
        )),
    }
}

/// The message `message_type` names, from the text of its `data` object.
fn message_from_data(message_type: &str, data: &str) -> Result<Message, DecodeError> {
    let message = match message_type {
        "register" => Message::Register(Register::from_wire(parse::<RegisterWire>(data)?)),
        "heartbeat" => Message::Heartbeat(Heartbeat::from_wire(parse::<HeartbeatWire>(data)?)),
        "task_result" => Message::TaskResult(parse(data)?),
        "task_progress" => Message::TaskProgress(parse(data)?),
        "goodbye" | "unregister" | "disconnect" => Message::Goodbye(parse(data)?),
        "task_assign" => Message::TaskAssign(parse(data)?),
        "task_cancel" | "cancel_task" => Message::TaskCancel(parse(data)?),
        "task_submit" | "submit_task" => {
            Message::TaskSubmit(TaskSubmit::from_wire(parse::<TaskSubmitWire>(data)?)?)
        }
        "task_status" => Message::TaskStatus(parse(data)?),
        "task_retry" | "retry_task" => Message::TaskRetry(parse(data)?),
        "task_delete" => Message::TaskDelete(parse(data)?),
        "list_tasks" => Message::ListTasks(parse(data)?),
        // Its data, whatever it holds, says nothing.
        "status" | "cluster_status" | "get_cluster_status" => Message::Status,
        "list_devices" => Message::ListDevices(parse(data)?),
        "device_info" => Message::DeviceInfo(parse(data)?),
        "drain_device" | "drain" => Message::DrainDevice(parse(data)?),
        "subscribe" => Message::Subscribe(parse(data)?),
        "ack" => Message::Ack(Ack::from_data(data)?),
        "error" => Message::Error(parse(data)?),
        "event" => Message::Event(parse(data)?),
        "auth_hello" => Message::AuthHello(parse::<AuthHelloData>(data)?.into_domain()?),
        "auth_proof" => Message::AuthProof(parse::<AuthProofData>(data)?.into_domain()?),
        "revoke_device" | "revoke" => Message::RevokeDevice(parse(data)?),
        "prune" => Message::Prune(parse(data)?),
        "strategy" => Message::Strategy(parse(data)?),
        other => {
            return Err(DecodeError::new(
                ErrorCode::UnknownMessageType,
                format!("unknown message_type {other:?}"),
            ))
        }
    };
    message.check()?;
    Ok(message)
}

/// Deserializes `data` (an object's text) into its wire struct.
///
/// A key given twice keeps its last value, as it does in every JSON object
/// the protocol reads (the envelope's, or a free-form value's). A derived
/// struct reads the keys as they come instead: it refuses a field given
/// twice, or the first bad value of one, even one a later value replaces.
/// So an object the struct refuses is read once more, as a map (which keeps
/// the last of each key at every level), and the same struct is read from
/// that map: it decides, and a refusal names the first bad field in key
/// order, whatever order the peer wrote them in. Only refused objects pay
/// for the map.
fn parse<T: DeserializeOwned>(data: &str) -> Result<T, DecodeError> {
    serde_json::from_str(data).or_else(|_| {
        let object: Map<String, Value> = serde_json::from_str(data).map_err(invalid)?;
        serde_json::from_value(Value::Object(object)).map_err(invalid)
    })
}

/// A wire struct's error as an `invalid_message`.
pub(super) fn invalid(err: serde_json::Error) -> DecodeError {
    DecodeError::new(ErrorCode::InvalidMessage, err.to_string())
}

/// Whether `text` holds `\u` followed by `d8` to `df`: an escape that may be
/// half of a surrogate pair, which serde_json checks only where it reads.
fn may_hold_surrogate_escape(text: &str) -> bool {
    // Most lines hold no backslash at all: look only where there is one.
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'\\', bytes).any(|at| match bytes.get(at + 1..at + 4) {
        Some([b'u', d, x]) => (d | 0x20) == b'd' && matches!(x | 0x20, b'8' | b'9' | b'a'..=b'f'),
        _ => false,
    })
}

/// Whether `text` may hold a number too large for an `f64` (refused as
/// `malformed_json`). A number reaches 1e308 only with about 300 digits
/// before its point or with a positive exponent of two digits or more, so a
/// line with either is checked in full (digits inside strings count too:
/// such a line is only decoded more slowly).
fn may_hold_huge_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    // A run of 300 digits covers at least 36 whole aligned 8-byte chunks.
    let mut digit_chunks = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        if all_digits(u64::from_le_bytes(word)) {
            digit_chunks += 1;
            if digit_chunks >= 36 {
                return true;
            }
        } else {
            digit_chunks = 0;
        }
    }
    memchr::memchr2_iter(b'e', b'E', bytes).any(|at| {
        let after_digit = at > 0 && bytes[at - 1].is_ascii_digit();
        let exponent = bytes.get(at + 1..).unwrap_or_default();
        let exponent = exponent.strip_prefix(b"+").unwrap_or(exponent);
        after_digit && exponent.len() >= 2 && exponent[..2].iter().all(u8::is_ascii_digit)
    })
}

/// Whether all eight bytes of `word` are ASCII digits: each has the high
/// nibble 3, and adding 6 keeps it there (a low nibble of 9 at most).
fn all_digits(word: u64) -> bool {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    const SIXES: u64 = 0x0606_0606_0606_0606;
    word & HIGH == THREES && word.wrapping_add(SIXES) & HIGH == THREES
}

/// Whether `text` nests [`STRICT_DEPTH`] containers deep or more, outside
/// strings. Most lines open far fewer containers than that in all, which a
/// count finds out at once.
fn may_nest_deeply(text: &str) -> bool {
    let bytes = text.as_bytes();
    let opened = memchr::memchr2_iter(b'{', b'[', bytes)
        .take(STRICT_DEPTH)
        .count();
    if opened < STRICT_DEPTH {
        return false;
    }
    // One pass, a byte at a time: a call per string (to skip it) would
    // cost more than the bytes of the short strings most lines hold.
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth >= STRICT_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl<'de> Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawEnvelopeVisitor)
    }
}

struct RawEnvelopeVisitor;

impl<'de> Visitor<'de> for RawEnvelopeVisitor {
    type Value = RawEnvelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnvelope<'de>, A::Error> {
        let mut raw = RawEnvelope::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::MessageId => &mut raw.message_id,
                Key::MessageType => &mut raw.message_type,
                Key::SenderId => &mut raw.sender_id,
                Key::TargetId => &mut raw.target_id,
                Key::ReceiverId => &mut raw.receiver_id,
                Key::Timestamp => &mut raw.timestamp,
                Key::Data => &mut raw.data,
                Key::Other => {
                    let _: Value = map.next_value()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(raw)
    }
}

/// An envelope key, read without allocating.
enum Key {
    MessageId,
    MessageType,
    SenderId,
    TargetId,
    ReceiverId,
    Timestamp,
    Data,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "message_id" => Key::MessageId,
                    "message_type" => Key::MessageType,
                    "sender_id" => Key::SenderId,
                    "target_id" => Key::TargetId,
                    "receiver_id" => Key::ReceiverId,
                    "timestamp" => Key::Timestamp,
                    "data" => Key::Data,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_depth_scan_skips_strings_and_counts_only_containers() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(!may_nest_deeply(&nested(STRICT_DEPTH - 1)));
        assert!(may_nest_deeply(&nested(STRICT_DEPTH)));
        // Many containers side by side are not deep.
        let wide = format!("[{}]", vec!["{}"; 1000].join(","));
        assert!(!may_nest_deeply(&wide));
        // Brackets inside strings, escaped quotes included, are text.
        let quoted = format!(r#"["\"{}"]"#, "[".repeat(500));
        assert!(!may_nest_deeply(&quoted));
        let after = format!(r#"["\\",{}]"#, nested(STRICT_DEPTH));
        assert!(may_nest_deeply(&after));
    }
}
