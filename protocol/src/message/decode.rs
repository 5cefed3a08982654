//! Decoding a line straight into domain types.
//!
//! The reference decoder (`Envelope::decode_value_tree`) parses a line into
//! a `serde_json::Value` and converts that into the message. For the
//! messages that arrive once per task (results, the workers' acks of
//! assignments, batches of submitted tasks) and for heartbeats (one per
//! worker per second) that tree costs more than the rest of the work, so [`decode_direct`] reads the envelope's fields as
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

use super::{
    Ack, Envelope, Heartbeat, HeartbeatWire, Message, TaskResult, TaskSubmit, TaskSubmitWire,
};
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
        // By far the most frequent message: straight into its wire struct. A
        // field twice is refused by the struct, so the reference decoder
        // decides that case (where the last one counts).
        "heartbeat" => Message::Heartbeat(Heartbeat::from_wire(
            serde_json::from_str::<HeartbeatWire>(data).ok()?,
        )),
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
        result: crate::reply::Reply::Fields(result),
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

/// Heartbeats and odd lines: the direct way and the tree agree.
#[cfg(test)]
mod heartbeat_tests {
    use super::*;
    use crate::error::DecodeError;
    use proptest::prelude::*;

    /// Decoding through the tree only, as every line was decoded before.
    fn through_the_tree(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        Envelope::decode_value_tree(bytes)
    }

    fn same(line: &str) {
        assert_eq!(
            Envelope::decode(line.as_bytes()),
            through_the_tree(line.as_bytes()),
            "{line}"
        );
    }

    const HEARTBEAT: &str = r#"{"message_type":"heartbeat","sender_id":"sim-1","message_id":"hb-1-7","data":{"active_tasks":0,"status":"online","system_metrics":{"cpu_usage":1.5,"disk_usage":40.2,"load_average":[0.1,0.2,0.3],"memory_usage":30.0,"uptime":7.0}}}"#;

    #[test]
    fn a_heartbeat_is_decoded_without_the_tree_to_the_same_message() {
        assert!(matches!(
            decode_direct(HEARTBEAT.as_bytes()),
            Some(Envelope {
                message: Message::Heartbeat(_),
                ..
            })
        ));
        same(HEARTBEAT);
    }

    #[test]
    fn every_odd_line_decodes_as_through_the_tree() {
        for line in [
            HEARTBEAT,
            // The older flat shape, extra fields, nulls, numbers as ids.
            r#"{"message_type":"heartbeat","sender_id":7,"message_id":8,"data":{"metrics":{"cpu_usage":2,"storage_usage":3,"gpu":"x"},"battery":50,"status":null}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":null}"#,
            r#"{"message_type":"heartbeat","sender_id":"a"}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":{}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":[1]}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":"x"}"#,
            r#" { "data" : { "status" : "draining" } , "message_type" : "heartbeat" } "#,
            // Bad values inside and outside the data.
            r#"{"message_type":"heartbeat","sender_id":"a","data":{"active_tasks":1.5}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":{"active_tasks":-1}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":{"system_metrics":{"cpu_usage":"high"}}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":{"system_metrics":{"cpu_usage":1e999}}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a","data":{"x":1e999}}"#,
            r#"{"message_type":"heartbeat","sender_id":{"a":1},"data":{}}"#,
            r#"{"message_type":"heartbeat","message_id":"m","timestamp":5,"data":{}}"#,
            r#"{"message_type":"heartbeat","target_id":null,"receiver_id":[],"data":{}}"#,
            r#"{"message_type":7,"message_id":"m"}"#,
            r#"{"message_id":"m"}"#,
            r#"{"message_type":"nonsense","message_id":"m","data":{}}"#,
            r#"{"message_type":"heartbeat","junk":1e999}"#,
            // A field twice: the last one counts.
            r#"{"message_type":"status","message_type":"heartbeat","data":{}}"#,
            r#"{"message_type":"heartbeat","data":{"status":"a","status":"draining"}}"#,
            r#"{"message_type":"heartbeat","data":{"x":1,"x":2}}"#,
            r#"{"message_type":"heartbeat","data":{"status":"a"},"data":{"status":"b"}}"#,
            // Escapes and what skipping would not check.
            r#"{"message_type":"heart\u0062eat","data":{}}"#,
            r#"{"message_type":"heartbeat","data":{"status":"\ud800"}}"#,
            r#"{"message_type":"heartbeat","x":"\ud800","data":{}}"#,
            r#"{"message_type":"heartbeat","sender_id":"a\"b","data":{}}"#,
            // Not an object, not JSON, trailing characters.
            r#"{"message_type":"heartbeat"}{}"#,
            r#"{"message_type":"heartbeat""#,
            r#"{"message_type":"heartbeat",}"#,
            "[1,2]",
            // Other messages.
            r#"{"message_type":"status","message_id":"s1"}"#,
            r#"{"message_type":"task_result","sender_id":"a","data":{"task_id":"t","status":"success","result":{"output":"hi"}}}"#,
            r#"{"message_type":"ack","data":{"original_message_id":"assign:t:1","result":{"success":true}}}"#,
        ] {
            same(line);
        }
        // Invalid UTF-8.
        let mut bytes = HEARTBEAT.as_bytes().to_vec();
        let at = HEARTBEAT.find("online").expect("status") + 1;
        bytes[at] = 0xff;
        assert_eq!(Envelope::decode(&bytes), through_the_tree(&bytes));
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z\"\\\\ ]{0,6}".prop_map(Value::from),
            Just(Value::from("draining")),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("status".to_string()),
            Just("active_tasks".to_string()),
            Just("last_activity".to_string()),
            Just("metrics".to_string()),
            Just("system_metrics".to_string()),
            Just("cpu_usage".to_string()),
            Just("storage_usage".to_string()),
            Just("disk_usage".to_string()),
            Just("load_average".to_string()),
            Just("uptime".to_string()),
            "[a-z]{1,3}",
        ]
    }

    /// A JSON object written out by hand, so that keys may repeat.
    fn object(depth: u32) -> BoxedStrategy<String> {
        let value = if depth == 0 {
            json_value().prop_map(|v| v.to_string()).boxed()
        } else {
            prop_oneof![
                3 => json_value().prop_map(|v| v.to_string()),
                1 => object(depth - 1),
            ]
            .boxed()
        };
        prop::collection::vec((key(), value), 0..6)
            .prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("{:?}:{value}", key))
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
            .boxed()
    }

    proptest! {
        #[test]
        fn any_heartbeat_line_decodes_as_through_the_tree(
            data in object(1),
            sender in scalar(),
            id in scalar(),
            extra in prop::option::of(json_value()),
        ) {
            let mut line = format!(
                "{{\"message_type\":\"heartbeat\",\"sender_id\":{sender},\"message_id\":{id},\"data\":{data}"
            );
            if let Some(extra) = extra {
                line.push_str(&format!(",\"x\":{extra}"));
            }
            line.push('}');
            prop_assert_eq!(Envelope::decode(line.as_bytes()), through_the_tree(line.as_bytes()), "{}", line);
        }
    }
}
