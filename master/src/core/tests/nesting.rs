//! Issue 11, item 4, as a property: any payload the edge accepts (right up
//! to `protocol::MAX_VALUE_DEPTH`) goes through the store, a restart, an
//! assignment and every reply that shows it, each time as the bytes a peer
//! would read (`to_line`, then the decoder, with serde_json's own recursion
//! limit); any payload over the limit is refused at the edge, by JSON and by
//! text, and changes nothing.

use super::sim::{register, Sim};
use proptest::prelude::*;
use protocol::limits::value_depth;
use protocol::{
    Envelope, ErrorCode, ListTasks, Message, TaskRef, TaskSpec, TaskSubmit, MAX_VALUE_DEPTH,
};
use serde_json::{Map, Value};

/// A scalar or a small flat object or array: what sits at the bottom.
fn leaf() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z\"\\\\é ]{0,6}".prop_map(Value::String),
    ];
    prop_oneof![
        scalar.clone(),
        proptest::collection::vec(scalar.clone(), 0..3).prop_map(Value::Array),
        proptest::collection::btree_map("[a-z]{1,3}", scalar, 0..3)
            .prop_map(|map| Value::Object(map.into_iter().collect())),
    ]
}

/// A payload nested `depth`-ish deep (mostly near the limit, sometimes
/// just over it), each level an array or an object with a sibling or not.
fn payload() -> impl Strategy<Value = Value> {
    let depth = prop_oneof![
        0..MAX_VALUE_DEPTH - 2,
        Just(MAX_VALUE_DEPTH - 1),
        Just(MAX_VALUE_DEPTH),
        Just(MAX_VALUE_DEPTH + 1),
        Just(MAX_VALUE_DEPTH + 2),
    ];
    (
        depth,
        leaf(),
        proptest::collection::vec((any::<bool>(), "[a-z]{0,3}", leaf()), MAX_VALUE_DEPTH + 2),
    )
        .prop_map(|(depth, leaf, levels)| {
            let mut value = leaf;
            for (as_array, key, sibling) in levels {
                if value_depth(&value) >= depth {
                    break;
                }
                value = if as_array {
                    Value::Array(vec![value, sibling])
                } else {
                    let mut map = Map::new();
                    map.insert(format!("s{key}"), sibling);
                    map.insert(key, value);
                    Value::Object(map)
                };
            }
            value
        })
}

/// `envelope` as a peer reads it: written as a line, decoded again.
fn as_read(envelope: &Envelope) -> Envelope {
    let line = envelope.to_line();
    Envelope::decode(&line[..line.len() - 1]).expect("every line the master writes decodes")
}

/// The task view in a `task_status` reply, as the client reads it.
fn task_status_payload(sim: &mut Sim, task_id: &str) -> Value {
    let client = sim.client();
    let reply = sim.request(
        client,
        Message::TaskStatus(TaskRef {
            task_id: task_id.into(),
        }),
    );
    match as_read(&reply.envelope).message {
        Message::Ack(ack) => ack.result.fields()["task"]["payload"].clone(),
        other => panic!("task_status: {other:?}"),
    }
}

fn check(payload: Value) -> Result<(), TestCaseError> {
    let accepted = value_depth(&payload) <= MAX_VALUE_DEPTH;
    let mut sim = Sim::new();
    let client = sim.client();
    let mut spec = TaskSpec::new("echo", payload.clone());
    spec.task_id = Some("t-1".into());
    let submit = Envelope::new(Message::TaskSubmit(TaskSubmit {
        tasks: vec![spec],
        batch: false,
    }));
    // The JSON edge: the decoder either refuses the line or hands it on.
    let line = submit.to_line();
    let decoded = Envelope::decode(&line[..line.len() - 1]);
    // The text edge refuses exactly the same payloads.
    let (text_reply, _) = sim.text(client, &format!("submit echo {payload}"));
    prop_assert_eq!(
        text_reply.starts_with("submitted "),
        accepted,
        "{}",
        text_reply
    );
    if !accepted {
        let error = decoded.expect_err("over the limit");
        // A line deeper than serde_json reads at all is refused before the
        // limit is even checked.
        let expected = if serde_json::from_slice::<Value>(&line).is_ok() {
            ErrorCode::InvalidMessage
        } else {
            ErrorCode::MalformedJson
        };
        prop_assert_eq!(error.code, expected);
        prop_assert!(sim.core.tasks.by_id.is_empty() && sim.db.tasks.is_empty());
        return Ok(());
    }
    let reply = sim.request(client, decoded.expect("accepted").message);
    prop_assert_eq!(reply.field("task_id"), Value::from("t-1"));

    // Stored (the fake store reads each record back from its JSON), then
    // restored by a new core.
    prop_assert_eq!(&sim.db.tasks["t-1"].spec.payload, &payload);
    let mut sim = sim.restart();
    prop_assert_eq!(&sim.core.tasks.by_id["t-1"].record.spec.payload, &payload);

    // Shown: in full by `task_status`, and a listing reads.
    prop_assert_eq!(task_status_payload(&mut sim, "t-1"), payload.clone());
    let client = sim.client();
    let listing = sim.request(client, Message::ListTasks(ListTasks::default()));
    prop_assert!(matches!(
        as_read(&listing.envelope).message,
        Message::Ack(_)
    ));

    // Assigned: the worker reads the same payload from its `task_assign`.
    sim.join("a", register(2));
    let conn = sim.conn_of("a");
    let assigned: Vec<Value> = sim.inbox[&conn]
        .iter()
        .filter_map(|delivery| match delivery.envelope().map(as_read) {
            Some(Envelope {
                message: Message::TaskAssign(assign),
                ..
            }) => Some(assign.task.payload),
            _ => None,
        })
        .collect();
    prop_assert_eq!(assigned.len(), 2, "both tasks are assigned");
    for got in assigned {
        prop_assert_eq!(&got, &payload);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn accepted_payloads_round_trip_and_deeper_ones_are_refused(payload in payload()) {
        check(payload)?;
    }
}

#[test]
fn payloads_right_at_and_just_over_the_limit() {
    for depth in [MAX_VALUE_DEPTH, MAX_VALUE_DEPTH + 1, 126] {
        let mut payload = Value::from(1);
        for _ in 0..depth {
            payload = Value::Array(vec![payload]);
        }
        check(payload).unwrap_or_else(|err| panic!("depth {depth}: {err}"));
    }
}
