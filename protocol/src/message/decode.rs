//! Decoding a line straight into domain types.
//!
//! The reference decoder (`Envelope::decode_value_tree`) parses a line into
//! a `serde_json::Value` and converts that into the message. For the
//! messages that arrive once per task (results, the workers' acks of
//! assignments, batches of submitted tasks) that tree costs more than the
//! rest of the work, so [`decode_direct`] reads the envelope's fields as
//! raw JSON text borrowed from the line and deserializes `data` straight
//! into the message's type.
//!
//! It only ever gives the answer the reference decoder gives: whenever
//! anything is unusual (an error of any kind, a duplicate key inside a
//! typed `data`, an id sent as a number, a `\ud8..` escape that might be a
//! lone surrogate, a number that might not fit an `f64`) it declines, and
//! the caller runs the reference decoder, which then produces the same
//! message or the same coded error as always. (The last two matter because
//! the fast path skips the values of unknown keys without reading them,
//! where the reference decoder refuses such a value anywhere in the line.)

use super::{Ack, Envelope, Message, TaskResult, TaskSubmit, TaskSubmitWire};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// Decodes `bytes` without a `Value` tree, or returns `None` when the
/// reference decoder must decide.
pub(super) fn decode_direct(bytes: &[u8]) -> Option<Envelope> {
    let text = std::str::from_utf8(bytes).ok()?;
    if may_hold_surrogate_escape(text) || may_hold_huge_number(text) {
        return None;
    }
    let raw: RawEnvelope<'_> = serde_json::from_str(text).ok()?;
    let message_type: &str = serde_json::from_str(raw.message_type?.get()).ok()?;
    let message_id = match raw.message_id {
        None => None,
        // A `null` or numeric id is left to the reference decoder (it
        // drops the one and turns the other into text).
        Some(id) => Some(serde_json::from_str::<String>(id.get()).ok()?),
    };
    let sender_id = optional_string(raw.sender_id)?;
    let target_id = match optional_string(raw.target_id)? {
        Some(id) => Some(id),
        None => optional_string(raw.receiver_id)?,
    };
    let timestamp = optional_string(raw.timestamp)?;
    let data = match raw.data {
        None => "{}",
        Some(data) if data.get() == "null" => "{}",
        Some(data) if data.get().starts_with('{') => data.get(),
        Some(_) => return None,
    };
    let message = message_from_data(message_type, data)?;
    Some(Envelope {
        sender_id,
        target_id,
        message_id,
        timestamp,
        message,
    })
}

/// A string field that may be absent or `null`; `None` (decline) for any
/// other type.
fn optional_string(raw: Option<&RawValue>) -> Option<Option<String>> {
    match raw {
        None => Some(None),
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get()).ok(),
    }
}

fn message_from_data(message_type: &str, data: &str) -> Option<Message> {
    let message = match message_type {
        "task_result" => Message::TaskResult(serde_json::from_str::<TaskResult>(data).ok()?),
        "ack" => Message::Ack(ack_from_data(data)?),
        "task_submit" | "submit_task" => {
            let wire: TaskSubmitWire = serde_json::from_str(data).ok()?;
            Message::TaskSubmit(TaskSubmit::from_wire(wire).ok()?)
        }
        // Every other message is parsed as the reference decoder parses
        // it, from the object `data` holds.
        other => {
            let data: Map<String, Value> = serde_json::from_str(data).ok()?;
            return Message::from_parts(other, data).ok();
        }
    };
    message.check().ok()?;
    Some(message)
}

/// A worker's `ack`: `original_message_id` and an object `result`, nothing
/// else (other shapes are left to the reference decoder).
fn ack_from_data(data: &str) -> Option<Ack> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AckWire<'a> {
        #[serde(default)]
        original_message_id: Option<String>,
        #[serde(borrow, default, deserialize_with = "present")]
        result: Option<&'a RawValue>,
    }
    // `Option` would read `null` as absent; here `null` is a value.
    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    let wire: AckWire<'_> = serde_json::from_str(data).ok()?;
    let result = match wire.result {
        None => Map::new(),
        Some(result) if result.get().starts_with('{') => serde_json::from_str(result.get()).ok()?,
        Some(_) => return None,
    };
    Some(Ack {
        original_message_id: wire.original_message_id,
        result,
    })
}

/// Whether `text` holds `\u` followed by `d8` to `df`: an escape that may be
/// half of a surrogate pair. The raw parts of the fast path would pass a
/// lone one that the reference decoder refuses, so such lines go to it.
fn may_hold_surrogate_escape(text: &str) -> bool {
    // Most lines hold no backslash at all: look only where there is one.
    let bytes = text.as_bytes();
    memchr::memchr_iter(b'\\', bytes).any(|at| match bytes.get(at + 1..at + 4) {
        Some([b'u', d, x]) => (d | 0x20) == b'd' && matches!(x | 0x20, b'8' | b'9' | b'a'..=b'f'),
        _ => false,
    })
}

/// Whether `text` may hold a number too large for an `f64` (the reference
/// decoder refuses one as `malformed_json`). A number reaches 1e308 only
/// with about 300 digits before its point or with a positive exponent of
/// two digits or more, so a line with either goes the longer way (digits
/// inside strings count too: such a line is only decoded more slowly).
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

/// The envelope's fields as raw JSON, borrowed from the line. A key that
/// appears twice keeps its last value, as in a `Value`; unknown keys are
/// parsed (so they are checked exactly as before) and dropped.
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
