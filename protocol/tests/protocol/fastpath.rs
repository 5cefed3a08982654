//! The encoder and decoder that skip `serde_json::Value` trees give exactly
//! what the `Value`-based reference gives: the same bytes on the wire and
//! the same message (or the same coded error) from any line.

use crate::strategies::*;
use proptest::prelude::*;
use protocol::*;
use serde_json::{json, Value};

/// Both decoders agree on `line`.
fn agree(line: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(Envelope::decode(line), Envelope::decode_value_tree(line));
    Ok(())
}

fn assert_agree(line: &str) {
    assert_eq!(
        Envelope::decode(line.as_bytes()),
        Envelope::decode_value_tree(line.as_bytes()),
        "{line}"
    );
}

proptest! {
    #[test]
    fn to_line_writes_the_bytes_of_the_value_tree(envelope in envelope(any_message())) {
        let mut expected = serde_json::to_vec(&envelope.to_value()).expect("a Value serializes");
        expected.push(b'\n');
        let line = envelope.to_line();
        prop_assert_eq!(String::from_utf8_lossy(&line), String::from_utf8_lossy(&expected));
    }

    #[test]
    fn decode_agrees_with_the_value_tree(envelope in envelope(any_message())) {
        let line = envelope.to_line();
        agree(&line[..line.len() - 1])?;
    }

    /// Lines our encoder never writes: unknown keys at the top and inside
    /// `data`, keys given twice, ids as numbers or `null`, `receiver_id`.
    #[test]
    fn decode_agrees_on_other_shapes(
        envelope in envelope(any_message()),
        unknown in json_value(),
        twice in prop_oneof![
            Just("message_id"), Just("sender_id"), Just("data"), Just("timestamp"),
        ],
        numeric_id in any::<i64>(),
        shape in 0..6u8,
    ) {
        let mut value = envelope.to_value();
        let Value::Object(object) = &mut value else {
            return Err(TestCaseError::fail("an envelope is an object"));
        };
        match shape {
            0 => {
                object.insert("zz_unknown".into(), unknown.clone());
                if let Some(Value::Object(data)) = object.get_mut("data") {
                    data.insert("zz_unknown".into(), unknown);
                }
            }
            1 => {
                object.insert("message_id".into(), json!(numeric_id));
            }
            2 => {
                object.insert("message_id".into(), Value::Null);
                object.insert("sender_id".into(), json!(numeric_id));
            }
            3 => {
                if let Some(target) = object.remove("target_id") {
                    object.insert("receiver_id".into(), target);
                }
            }
            4 => {
                object.insert("data".into(), Value::Null);
            }
            _ => {}
        }
        let mut line = serde_json::to_string(&value).expect("a Value serializes");
        agree(line.as_bytes())?;
        if shape == 5 {
            // The same key twice: the last one counts.
            line.pop();
            line.push_str(&format!(",{:?}:{}}}", twice, unknown_text(numeric_id)));
            agree(line.as_bytes())?;
        }
    }
}

fn unknown_text(n: i64) -> String {
    if n % 2 == 0 {
        format!("\"{n}\"")
    } else {
        "null".into()
    }
}

#[test]
fn older_and_unusual_task_results_decode_as_before() {
    for line in [
        // The design's result: no attempt.
        r#"{"message_type":"task_result","sender_id":"device-001","timestamp":"2024-01-15T10:32:30Z","data":{"task_id":"task-abc123","status":"completed","execution_time":28.5,"result":{"output":"4999950000","exit_code":0,"metrics":{"cpu_time":25.2,"memory_peak":1048576}}}}"#,
        // Unknown fields are dropped, at the top and in `data`.
        r#"{"message_type":"task_result","version":"1.0","data":{"task_id":"t","status":"failed","worker":"py","result":{"error":"boom"},"error":"boom"}}"#,
        // `timed_out` for `timeout`, a numeric message id, receiver_id.
        r#"{"message_type":"task_result","message_id":7,"receiver_id":"m","data":{"task_id":"t","attempt":2,"status":"timed_out"}}"#,
        // The same key twice in `data`: the last one counts.
        r#"{"message_type":"task_result","data":{"task_id":"a","task_id":"b","status":"completed"}}"#,
        // Missing and mistyped fields keep their errors.
        r#"{"message_type":"task_result","data":{"status":"completed"}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","attempt":-1}}"#,
        r#"{"message_type":"task_result","data":[1]}"#,
        // A lone surrogate in a field nobody reads is still malformed.
        r#"{"message_type":"task_result","x":"\ud800","data":{"task_id":"t","status":"completed"}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":"\uDBFF"}}"#,
        // Numbers that do not fit an f64 are malformed anywhere, also as
        // the value of a key the message ignores.
        r#"{"message_type":"task_result","x":1e400,"data":{"task_id":"t","status":"completed"}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","result":{"x":1e400}}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1e400}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":-1.5E+309}}"#,
        r#"{"message_type":"task_submit","data":{"task":{"task_type":"echo","x":1e400}}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1e-400}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1e99}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1e-05}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1.7976931348623157e+308}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1.8e308}}"#,
        // A worker's answers to an assignment, in every shape.
        r#"{"message_type":"ack","sender_id":"w","data":{"original_message_id":"assign:1:t","result":{"success":true}}}"#,
        r#"{"message_type":"ack","data":{"original_message_id":3,"result":"ok"}}"#,
        r#"{"message_type":"ack","data":{"original_message_id":"x","success":true}}"#,
        r#"{"message_type":"ack","data":{"result":null}}"#,
        r#"{"message_type":"ack"}"#,
        // Submits, single and batched, valid and not.
        r#"{"message_type":"submit_task","data":{"task":{"task_type":"echo","payload":{"message":"hi"},"priority":"high"}}}"#,
        r#"{"message_type":"task_submit","data":{"tasks":[{"task_type":"echo"},{"task_type":"shell","requirements":{"arch":"arm64"}}]}}"#,
        r#"{"message_type":"task_submit","data":{"tasks":[]}}"#,
        r#"{"message_type":"task_submit","data":{"task":{"task_type":" "}}}"#,
        r#"{"message_type":"task_submit","data":{"task":{"task_type":"echo","requirements":{"gpu":true}}}}"#,
        // A key named `message_type` inside `data` is only data.
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","result":{"message_type":"ack"}}}"#,
        r#"{"data":{"task_id":"t","status":"completed","result":{"message_type":"task_submit"}},"message_type":"task_result"}"#,
        r#"{"data":{"original_message_id":"m","result":{"message_type":"task_result"}},"message_type":"ack"}"#,
        r#"{"message_type":"ack","data":{"result":{"x":"\"message_type\":\"task_result\""}}}"#,
        r#"{"message_type":"task_result","data":{"task_id":"t","status":"completed"},"x":{"message_type":"ack"}}"#,
        // Not objects, not JSON, escaped keys.
        r#"[1,2]"#,
        r#"{"message_type":"status"} x"#,
        r#"{"message_\u0074ype":"status"}"#,
        r#"{"message_type":"sta\u0074us","data":null}"#,
        r#"{"message_type":null}"#,
    ] {
        assert_agree(line);
    }
    for digits in [300, 301, 302, 303, 304, 305, 306, 307, 400] {
        let digits = "9".repeat(digits);
        assert_agree(&format!(
            r#"{{"message_type":"task_result","data":{{"task_id":"t","status":"completed","x":{digits}}}}}"#
        ));
        // A long mantissa with a small exponent.
        let digits = &digits[..250];
        assert_agree(&format!(
            r#"{{"message_type":"task_result","data":{{"task_id":"t","status":"completed","x":{digits}e99}}}}"#
        ));
    }
    assert!(
        Envelope::decode(
            br#"{"message_type":"task_result","data":{"task_id":"t","status":"completed","x":1e400}}"#
        )
        .is_err(),
        "a number that does not fit is refused even where nobody reads it"
    );
}
