//! The one codec reads every line as the earlier decoders did, and writes
//! every message in the layout it always had.
//!
//! `data/decode_cases.jsonl` holds one case a line: a `line` as a peer
//! might send it and the outcome the protocol's first decoder (the one that
//! parsed every line into a `serde_json::Value`) gave it, recorded before
//! that decoder was removed: either `ok`, the message as `to_line` writes
//! it, or the `error` code with the `message_id` it salvaged (and its
//! `detail`). The cases are the odd lines that decoder and its faster twin
//! were once compared on (ids as numbers or `null`, keys twice, lone
//! surrogate escapes, numbers too large for an `f64`, `data` that is not an
//! object, `receiver_id`, nesting past serde_json's limit, older shapes),
//! and lines drawn from the message strategies, with unknown keys, numeric
//! ids, `receiver_id`, `null` data and keys given twice mixed in.
//!
//! One recorded detail was edited since: a task's `requirements` now
//! declare their fields in wire (sorted) order, so the names an unknown
//! requirement's error lists come in that order.

use crate::strategies::*;
use proptest::prelude::*;
use protocol::*;
use serde_json::Value;

/// The cases, recorded from the first decoder.
const CASES: &str = include_str!("data/decode_cases.jsonl");

/// What decoding `line` must give.
#[derive(Debug)]
enum Expect<'a> {
    /// This message, as written by `to_line` (without its newline).
    Message(&'a str),
    /// A refusal with this code, salvaged id and detail.
    Refused {
        code: &'a str,
        message_id: Option<&'a str>,
        detail: &'a str,
    },
}

/// Decodes `line` and compares the outcome with `expect`.
fn check(line: &str, expect: &Expect<'_>) {
    let decoded = Envelope::decode(line.as_bytes());
    match (expect, &decoded) {
        (Expect::Message(message), Ok(envelope)) => {
            let mut written = envelope.to_line();
            assert_eq!(written.pop(), Some(b'\n'), "{line}");
            assert_eq!(String::from_utf8_lossy(&written), *message, "{line}");
        }
        (
            Expect::Refused {
                code,
                message_id,
                detail,
            },
            Err(error),
        ) => {
            assert_eq!(error.code.as_str(), *code, "{line}: {error}");
            assert_eq!(error.message_id.as_deref(), *message_id, "{line}: {error}");
            assert_eq!(error.detail, *detail, "{line}");
        }
        _ => panic!("{line}\nexpected {expect:?}\ngot {decoded:?}"),
    }
}

fn cases() -> Vec<(String, Value)> {
    CASES
        .lines()
        .map(|case| {
            let case: Value = serde_json::from_str(case).expect("a recorded case");
            let line = case["line"].as_str().expect("a line").to_string();
            (line, case)
        })
        .collect()
}

#[test]
fn every_recorded_line_decodes_as_the_first_decoder_decoded_it() {
    let cases = cases();
    assert!(cases.len() > 600, "{}", cases.len());
    for (line, case) in &cases {
        let expect = match case.get("ok") {
            Some(message) => Expect::Message(message.as_str().expect("a message")),
            None => Expect::Refused {
                code: case["error"].as_str().expect("a code"),
                message_id: case["message_id"].as_str(),
                detail: case["detail"].as_str().expect("a detail"),
            },
        };
        check(line, &expect);
    }
}

#[test]
fn every_code_and_odd_case_is_among_the_recorded_ones() {
    // The recorded file keeps covering what the checks are about.
    let cases = cases();
    let count = |code: &str| {
        cases
            .iter()
            .filter(|(_, case)| case["error"].as_str() == Some(code))
            .count()
    };
    assert!(count("malformed_json") >= 40);
    assert!(count("invalid_message") >= 100);
    assert!(count("unknown_message_type") >= 1);
    for needle in [
        r"\ud800",
        "1e400",
        "receiver_id",
        r#""message_id":7"#,
        "[[[[[[[[",
    ] {
        assert!(
            cases.iter().any(|(line, _)| line.contains(needle)),
            "no case holds {needle}"
        );
    }
}

#[test]
fn a_line_that_is_not_utf8_is_malformed_and_keeps_its_id() {
    let line = r#"{"message_type":"heartbeat","sender_id":"sim-1","message_id":"hb-1-7","data":{"status":"online"}}"#;
    let mut bytes = line.as_bytes().to_vec();
    let at = line.find("online").expect("status") + 1;
    bytes[at] = 0xff;
    let error = Envelope::decode(&bytes).expect_err("not UTF-8");
    assert_eq!(error.code, ErrorCode::MalformedJson);
    assert_eq!(error.message_id.as_deref(), Some("hb-1-7"));
}

/// The messages the strategies never draw, with the bytes the first
/// encoder (a `Value` per message) wrote for them.
#[test]
fn the_messages_the_strategies_do_not_draw_keep_their_bytes() {
    use protocol::auth::{Hello, KeyPair, Method, Nonce, Proof};
    let key = KeyPair::from_seed([2; 32]).public();
    let hello = |method| {
        Message::AuthHello(Hello {
            method,
            client_nonce: Nonce([1; 32]),
        })
    };
    let nonce = "0101010101010101010101010101010101010101010101010101010101010101";
    let cases = [
        (
            Envelope::new(hello(Method::Join {
                device_id: "pi-1".into(),
                public_key: key,
            }))
            .with_id("a-1"),
            format!(r#"{{"data":{{"client_nonce":"{nonce}","device_id":"pi-1","method":"join","public_key":"8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"}},"message_id":"a-1","message_type":"auth_hello","sender_id":null,"target_id":null}}"#),
        ),
        (
            Envelope::new(hello(Method::Device {
                device_id: "pi-1".into(),
            }))
            .from_sender("pi-1"),
            format!(r#"{{"data":{{"client_nonce":"{nonce}","device_id":"pi-1","method":"device"}},"message_type":"auth_hello","sender_id":"pi-1","target_id":null}}"#),
        ),
        (
            Envelope::new(hello(Method::Admin)),
            format!(r#"{{"data":{{"client_nonce":"{nonce}","method":"admin"}},"message_type":"auth_hello","sender_id":null,"target_id":null}}"#),
        ),
        (
            Envelope::new(Message::AuthProof(Proof(vec![0xab; 32]))).with_id("a-2"),
            r#"{"data":{"proof":"abababababababababababababababababababababababababababababababab"},"message_id":"a-2","message_type":"auth_proof","sender_id":null,"target_id":null}"#.to_string(),
        ),
        (
            Envelope::new(Message::TaskRetry(TaskRef {
                task_id: "t-1".into(),
            }))
            .with_id("r-1"),
            r#"{"data":{"task_id":"t-1"},"message_id":"r-1","message_type":"task_retry","sender_id":null,"target_id":null}"#.to_string(),
        ),
        (
            Envelope::new(Message::RevokeDevice(DeviceRef {
                device_id: "pi-1".into(),
            }))
            .with_id("v-1"),
            r#"{"data":{"device_id":"pi-1"},"message_id":"v-1","message_type":"revoke_device","sender_id":null,"target_id":null}"#.to_string(),
        ),
        (
            Envelope::new(Message::Prune(protocol::Prune {
                before_unix_ms: 1_800_000_000_000,
            }))
            .with_id("p-1"),
            r#"{"data":{"before_unix_ms":1800000000000},"message_id":"p-1","message_type":"prune","sender_id":null,"target_id":null}"#.to_string(),
        ),
        (
            Envelope::new(Message::Status).from_sender("cli"),
            r#"{"data":{},"message_type":"status","sender_id":"cli","target_id":null}"#.to_string(),
        ),
    ];
    for (envelope, bytes) in cases {
        check(&bytes, &Expect::Message(&bytes));
        let mut line = envelope.to_line();
        assert_eq!(line.pop(), Some(b'\n'));
        assert_eq!(String::from_utf8_lossy(&line), bytes);
    }
}

proptest! {
    /// The `Serialize` of every message declares its keys in sorted order:
    /// the bytes equal those of its `Value` (whose maps are sorted), which
    /// is the layout every earlier encoder wrote.
    #[test]
    fn to_line_writes_every_object_s_keys_in_sorted_order(envelope in envelope(any_message())) {
        let mut expected = serde_json::to_vec(&envelope.to_value()).expect("a Value serializes");
        expected.push(b'\n');
        let line = envelope.to_line();
        prop_assert_eq!(String::from_utf8_lossy(&line), String::from_utf8_lossy(&expected));
    }
}

proptest! {
    /// A line encoded once and stamped at each write is byte for byte the
    /// line of the envelope with that timestamp.
    #[test]
    fn a_stamped_encoded_envelope_is_the_envelope_s_line(
        envelope in envelope(any_message()),
        timestamp in text(),
    ) {
        let encoded = EncodedEnvelope::new(&envelope);
        let mut unstamped = envelope.clone();
        unstamped.timestamp = None;
        let unstamped_line = unstamped.to_line();
        prop_assert_eq!(encoded.as_bytes(), &unstamped_line[..]);
        let mut stamped = Vec::new();
        encoded.write_stamped(&timestamp, &mut stamped);
        let mut expected = envelope;
        expected.timestamp = Some(timestamp);
        let expected = expected.to_line();
        prop_assert_eq!(String::from_utf8_lossy(&stamped), String::from_utf8_lossy(&expected));
    }
}
