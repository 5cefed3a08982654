//! Decoding an envelope straight from its bytes, without building a tree
//! of JSON values for the whole line first.
//!
//! The envelope's fields are picked out of the line as borrowed slices of
//! raw JSON. A heartbeat's `data` (by far the most frequent message) is
//! then decoded into its wire struct directly; any other message's `data`
//! becomes a JSON value as before. Whenever this way fails, for whatever
//! reason (a field twice in a heartbeat, a bad value), it gives up and the
//! caller decodes the line through the tree, so every line decodes to
//! exactly what it always did, and every error stays the same.
//!
//! Skipping a value is less strict than parsing it: a skipped string is
//! not checked for invalid UTF-8 or lone surrogates in `\u` escapes, and a
//! skipped number not for its range. So only lines that are valid UTF-8
//! and hold no backslash at all are taken this way (a heartbeat has
//! none), unknown envelope fields are parsed rather than skipped, and
//! every field that is kept is parsed again on its own.

use super::{Envelope, Heartbeat, HeartbeatWire, Message};
use crate::error::DecodeError;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;

/// The envelope's fields as they appear in the line. A field that appears
/// twice keeps its last value, as in a parsed object.
#[derive(Default)]
struct RawEnvelope<'a> {
    message_type: Option<&'a RawValue>,
    sender_id: Option<&'a RawValue>,
    target_id: Option<&'a RawValue>,
    receiver_id: Option<&'a RawValue>,
    message_id: Option<&'a RawValue>,
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

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEnvelope::default();
        while let Some(key) = map.next_key::<&'de str>()? {
            let slot = match key {
                "message_type" => &mut raw.message_type,
                "sender_id" => &mut raw.sender_id,
                "target_id" => &mut raw.target_id,
                "receiver_id" => &mut raw.receiver_id,
                "message_id" => &mut raw.message_id,
                "timestamp" => &mut raw.timestamp,
                "data" => &mut raw.data,
                _ => {
                    // Parsed, not skipped, so that it is checked as
                    // strictly as the tree would check it.
                    map.next_value::<Value>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(raw)
    }
}

/// A raw field as a JSON value; `None` inside if it is absent, `None`
/// outside if it does not parse as a value on its own (the raw slice was
/// only skipped over, which checks less than parsing).
fn value(raw: Option<&RawValue>) -> Option<Option<Value>> {
    match raw {
        None => Some(None),
        Some(raw) => serde_json::from_str(raw.get()).ok().map(Some),
    }
}

/// Decodes `bytes` without a tree for the whole line, or returns `None`
/// when the caller must decode it through the tree (see the module).
pub(super) fn decode(bytes: &[u8]) -> Option<Result<Envelope, DecodeError>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.contains('\\') {
        return None;
    }
    let raw: RawEnvelope<'_> = serde_json::from_str(text).ok()?;
    let mut message_type = value(raw.message_type)?;
    let mut sender_id = value(raw.sender_id)?;
    let mut target_id = value(raw.target_id)?;
    let mut receiver_id = value(raw.receiver_id)?;
    let mut message_id = value(raw.message_id)?;
    let mut timestamp = value(raw.timestamp)?;
    let is_heartbeat = matches!(&message_type, Some(Value::String(name)) if name == "heartbeat");
    let data = match raw.data {
        Some(data) if is_heartbeat && data.get().starts_with('{') => {
            let wire: HeartbeatWire = serde_json::from_str(data.get()).ok()?;
            Data::Heartbeat(Heartbeat::from_wire(wire))
        }
        data => Data::Value(value(data)?),
    };
    Some(Envelope::from_fields(
        |key| match key {
            "message_type" => message_type.take(),
            "sender_id" => sender_id.take(),
            "target_id" => target_id.take(),
            "receiver_id" => receiver_id.take(),
            "message_id" => message_id.take(),
            "timestamp" => timestamp.take(),
            _ => None,
        },
        |message_type| match data {
            Data::Heartbeat(heartbeat) => Ok(Message::Heartbeat(heartbeat)),
            Data::Value(data) => Message::from_data_value(message_type, data),
        },
    ))
}

/// A message's `data`, decoded as far as it can be before the envelope's
/// own fields are checked.
enum Data {
    /// A heartbeat's, straight from the line.
    Heartbeat(Heartbeat),
    /// Any other message's, as a JSON value (or absent).
    Value(Option<Value>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    /// Decoding through the tree only, as every line was decoded before.
    fn through_the_tree(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| DecodeError::new(ErrorCode::MalformedJson, err.to_string()))?;
        Envelope::from_value(value)
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
        assert!(decode(HEARTBEAT.as_bytes()).is_some());
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
