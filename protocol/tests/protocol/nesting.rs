//! The nesting limit on free-form values (`protocol::MAX_VALUE_DEPTH`,
//! issue 11): every place a peer puts one is checked by the decoder, and
//! whatever it accepts still reads back wrapped in the deepest envelope the
//! master writes it into.

use crate::strategies::{any_message, envelope, value_nested_near_the_limit};
use proptest::prelude::*;
use protocol::limits::value_depth;
use protocol::*;
use serde_json::{json, Value};

/// The value at the bottom of the deepest wrapping any reply gives a
/// free-form value (a `list_devices` reply around an unknown registration
/// field: 7 levels), as a line.
fn in_the_deepest_reply(value: &Value) -> String {
    json!({"data": {"result": {"devices": [{"profile": {"hardware_specs": {"x": value}}}]}}})
        .to_string()
}

/// The places a peer can put a free-form value, as `data` objects.
fn carriers(value: &Value) -> Vec<(&'static str, Value)> {
    vec![
        (
            "task_submit",
            json!({"task": {"task_type": "echo", "payload": value}}),
        ),
        (
            "task_submit",
            json!({"tasks": [{"task_type": "echo"}, {"task_type": "echo", "payload": value}]}),
        ),
        ("register", json!({"capabilities": value, "slots": 1})),
        ("register", json!({"device_info": {"os": value}})),
        ("register", json!({"hardware_specs": {"gpu": value}})),
        ("register", json!({"battery": value})),
        ("heartbeat", json!({"system_metrics": {"gpu": value}})),
        ("heartbeat", json!({"battery": value})),
        (
            "task_assign",
            json!({"task": {"task_id": "t", "task_type": "echo", "payload": value}}),
        ),
    ]
}

proptest! {
    // Each case decodes nine lines; 64 cases reach every depth
    // around the limit several times.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn values_up_to_the_limit_are_accepted_everywhere_and_deeper_ones_nowhere(
        value in value_nested_near_the_limit(),
    ) {
        let accepted = value_depth(&value) <= MAX_VALUE_DEPTH;
        for (message_type, data) in carriers(&value) {
            let line = json!({"message_type": message_type, "message_id": "m", "data": data})
                .to_string();
            match Envelope::decode(line.as_bytes()) {
                Ok(envelope) => {
                    prop_assert!(accepted, "{} accepted {}", message_type, line);
                    // What is accepted reads back from what the master writes.
                    let again = Envelope::decode(&envelope.to_line()[..]);
                    prop_assert!(again.is_ok(), "{:?}", again);
                }
                Err(error) => {
                    prop_assert!(!accepted, "{} refused {}: {}", message_type, line, error);
                    prop_assert_eq!(error.code, ErrorCode::InvalidMessage);
                    prop_assert_eq!(error.message_id.as_deref(), Some("m"));
                    prop_assert!(error.detail.contains("nests more than 64 levels deep"));
                }
            }
        }
        if accepted {
            let reply = in_the_deepest_reply(&value);
            prop_assert!(serde_json::from_str::<Value>(&reply).is_ok());
        }
    }
}

proptest! {
    /// The lenient scan finds exactly the id the decoder reads, in any
    /// message, whatever its fields hold (keys named `message_id` inside
    /// `data` included).
    #[test]
    fn the_salvaged_id_is_the_decoded_one(envelope in envelope(any_message())) {
        let line = envelope.to_line();
        let salvaged = protocol::limits::salvage_string(&line, &["message_id"]);
        prop_assert_eq!(salvaged, envelope.message_id.clone());
    }
}

/// The limit leaves room: a value at it, in the deepest reply, is still
/// far from serde_json's own limit (a document 128 containers deep fails).
#[test]
fn the_limit_leaves_room_below_serde_json_s_own() {
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    assert!(serde_json::from_str::<Value>(&nested(127)).is_ok());
    assert!(serde_json::from_str::<Value>(&nested(128)).is_err());
    let at_limit: Value = serde_json::from_str(&nested(MAX_VALUE_DEPTH)).expect("parses");
    let wrapped = in_the_deepest_reply(&at_limit);
    let margin = 127 - (MAX_VALUE_DEPTH + 7);
    assert!(margin >= 50, "{margin}");
    let deeper = wrapped.replace(&nested(MAX_VALUE_DEPTH), &nested(MAX_VALUE_DEPTH + margin));
    assert!(serde_json::from_str::<Value>(&deeper).is_ok());
}
