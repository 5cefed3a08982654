//! The decoder's error paths, the error codes, and priorities.

use protocol::*;
use serde_json::json;

/// Decodes `input`, asserts that it fails with `code`, that the salvaged
/// `message_id` is `message_id`, and returns the detail text.
fn check_err(input: &[u8], code: ErrorCode, message_id: Option<&str>) -> String {
    match Envelope::decode(input) {
        Ok(envelope) => panic!("{} decoded: {envelope:?}", String::from_utf8_lossy(input)),
        Err(err) => {
            assert_eq!(
                err.code,
                code,
                "input: {}, detail: {}",
                String::from_utf8_lossy(input),
                err.detail
            );
            assert_eq!(
                err.message_id.as_deref(),
                message_id,
                "input: {}",
                String::from_utf8_lossy(input)
            );
            assert!(!err.detail.is_empty(), "an error needs an explanation");
            err.detail
        }
    }
}

#[test]
fn not_json_is_malformed() {
    for input in [
        &b"{nope"[..],
        b"",
        b"{\"message_type\":\"status\"",
        b"{\"message_type\":\"status\"}}",
        b"{\"message_type\":\"status\"} trailing",
        b"{'message_type':'status'}",
        b"{\"message_type\":\"status\",}",
        b"{\"message_type\":\"st\xffatus\"}",
        b"{\"message_type\":NaN}",
    ] {
        check_err(input, ErrorCode::MalformedJson, None);
    }
}

#[test]
fn json_of_the_wrong_shape_is_invalid() {
    for input in [
        &b"[1,2]"[..],
        b"[{\"message_type\":\"status\"}]",
        b"\"status\"",
        b"42",
        b"null",
        b"true",
        b"{}",
        b"{\"data\":{}}",
        b"{\"message_type\":5}",
        b"{\"message_type\":null}",
        b"{\"message_type\":\"status\",\"data\":[]}",
        b"{\"message_type\":\"status\",\"data\":\"x\"}",
        b"{\"message_type\":\"status\",\"sender_id\":{\"a\":1}}",
        b"{\"message_type\":\"status\",\"target_id\":[\"a\"]}",
        b"{\"message_type\":\"status\",\"timestamp\":true}",
        b"{\"message_type\":\"task_submit\",\"data\":{}}",
        b"{\"message_type\":\"task_cancel\",\"data\":{}}",
        b"{\"message_type\":\"device_info\",\"data\":{\"device_id\":5}}",
        b"{\"message_type\":\"heartbeat\",\"data\":{\"active_tasks\":-1}}",
        b"{\"message_type\":\"heartbeat\",\"data\":{\"system_metrics\":{\"cpu_usage\":\"high\"}}}",
        b"{\"message_type\":\"heartbeat\",\"data\":{\"metrics\":{\"disk_usage\":1,\"storage_usage\":2}}}",
        b"{\"message_type\":\"register\",\"data\":{\"cpu_count\":\"four\"}}",
        b"{\"message_type\":\"register\",\"data\":{\"hardware_specs\":{\"memory_total\":8.5}}}",
        b"{\"message_type\":\"register\",\"data\":{\"tags\":\"linux\"}}",
        b"{\"message_type\":\"event\",\"data\":{\"event\":\"meteor_strike\"}}",
        b"{\"message_type\":\"error\",\"data\":{\"error\":\"x\",\"code\":\"oops\"}}",
        b"{\"message_type\":\"task_result\",\"data\":{\"task_id\":\"t\",\"status\":\"exploded\"}}",
        b"{\"message_type\":\"task_result\",\"data\":{\"status\":\"completed\"}}",
    ] {
        check_err(input, ErrorCode::InvalidMessage, None);
    }
}

#[test]
fn task_submit_needs_exactly_one_valid_task_or_batch() {
    let submit = |data: serde_json::Value| {
        json!({"message_type": "task_submit", "message_id": "s-1", "data": data})
            .to_string()
            .into_bytes()
    };
    for data in [
        json!({}),
        json!({"task": null}),
        json!({"tasks": []}),
        json!({"task": {"task_type": "echo"}, "tasks": [{"task_type": "echo"}]}),
        json!({"task": {"payload": {}}}),
        json!({"task": {"task_type": "   "}}),
        json!({"task": {"task_type": "echo", "task_id": "has space"}}),
        json!({"task": {"task_type": "echo", "task_id": ""}}),
        json!({"task": {"task_type": "echo", "task_id": "x".repeat(129)}}),
        json!({"task": {"task_type": "echo", "timeout": 0}}),
        json!({"task": {"task_type": "echo", "timeout": -5}}),
        json!({"task": {"task_type": "echo", "max_retries": -1}}),
        json!({"task": "echo"}),
        json!({"tasks": [{"task_type": "echo"}, {"task_type": ""}]}),
        json!({"tasks": {"task_type": "echo"}}),
    ] {
        check_err(&submit(data), ErrorCode::InvalidMessage, Some("s-1"));
    }
    // The largest batch is accepted, one more is refused.
    let batch = |n: usize| json!({"tasks": vec![json!({"task_type": "echo"}); n]});
    let ok = Envelope::decode(&submit(batch(message::MAX_BATCH))).expect("a full batch decodes");
    let Message::TaskSubmit(ok) = ok.message else {
        panic!("not a submit: {ok:?}");
    };
    assert_eq!(ok.tasks.len(), message::MAX_BATCH);
    assert!(ok.batch);
    check_err(
        &submit(batch(message::MAX_BATCH + 1)),
        ErrorCode::InvalidMessage,
        Some("s-1"),
    );
}

#[test]
fn task_assign_needs_a_task_id() {
    check_err(
        br#"{"message_type":"task_assign","message_id":"a-1","data":{"task":{"task_type":"echo"}}}"#,
        ErrorCode::InvalidMessage,
        Some("a-1"),
    );
    check_err(
        br#"{"message_type":"task_assign","data":{"attempt":1}}"#,
        ErrorCode::InvalidMessage,
        None,
    );
}

#[test]
fn unknown_message_types() {
    for name in ["launch_rockets", "", "STATUS", "Register", "task-submit"] {
        let input = json!({"message_type": name}).to_string();
        let detail = check_err(input.as_bytes(), ErrorCode::UnknownMessageType, None);
        assert!(detail.contains(&format!("{name:?}")), "{detail}");
    }
}

#[test]
fn the_message_id_is_salvaged() {
    // The id is salvaged whether it is a string or a number, and on every
    // kind of refusal that happens after the line was read as an object.
    check_err(
        br#"{"message_type":"launch_rockets","message_id":"m-9"}"#,
        ErrorCode::UnknownMessageType,
        Some("m-9"),
    );
    check_err(
        br#"{"message_type":"launch_rockets","message_id":17}"#,
        ErrorCode::UnknownMessageType,
        Some("17"),
    );
    check_err(
        br#"{"message_id":"m-1"}"#,
        ErrorCode::InvalidMessage,
        Some("m-1"),
    );
    check_err(
        br#"{"message_id":"m-2","message_type":["status"]}"#,
        ErrorCode::InvalidMessage,
        Some("m-2"),
    );
    check_err(
        br#"{"message_type":"status","message_id":"m-3","data":[1]}"#,
        ErrorCode::InvalidMessage,
        Some("m-3"),
    );
    check_err(
        br#"{"message_type":"status","message_id":"m-4","sender_id":false}"#,
        ErrorCode::InvalidMessage,
        Some("m-4"),
    );
    check_err(
        br#"{"message_type":"status","message_id":"m-5","receiver_id":{}}"#,
        ErrorCode::InvalidMessage,
        Some("m-5"),
    );
    check_err(
        br#"{"message_type":"heartbeat","message_id":"m-6","data":{"status":1}}"#,
        ErrorCode::InvalidMessage,
        Some("m-6"),
    );
    // An id of a type that cannot be an id is not salvaged.
    check_err(
        br#"{"message_type":"launch_rockets","message_id":{"id":1}}"#,
        ErrorCode::UnknownMessageType,
        None,
    );
    // A line that does not parse still names its request when its
    // top-level `message_id` can be found, so a sender learns which of its
    // messages was refused: a broken line, and one nested past
    // serde_json's own limit (a worker's too-deep result, issue 11).
    check_err(
        br#"{"message_id":"m-7","message_type":"#,
        ErrorCode::MalformedJson,
        Some("m-7"),
    );
    let deep = format!(
        r#"{{"message_type":"task_result","data":{{"task_id":"t","status":"completed","result":{}1{}}},"message_id":"m-8"}}"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    let detail = check_err(deep.as_bytes(), ErrorCode::MalformedJson, Some("m-8"));
    assert!(detail.starts_with("recursion limit exceeded"), "{detail}");
    // Only a top-level string id counts; nothing is made up.
    check_err(
        br#"{"data":{"message_id":"inner"},"message_type":"#,
        ErrorCode::MalformedJson,
        None,
    );
}

#[test]
fn unknown_requirement_keys_are_refused() {
    for (message_type, data) in [
        (
            "task_submit",
            json!({"task": {"task_type": "echo", "requirements": {"gpu": true}}}),
        ),
        (
            "task_submit",
            json!({"tasks": [{"task_type": "echo", "requirements": {"min_cpu": 2}}]}),
        ),
        (
            "task_assign",
            json!({"task": {"task_id": "t", "task_type": "echo", "requirements": {"min_gpu_count": 1}}}),
        ),
    ] {
        let input =
            json!({"message_type": message_type, "message_id": "r", "data": data}).to_string();
        let detail = check_err(input.as_bytes(), ErrorCode::InvalidMessage, Some("r"));
        assert!(detail.contains("unknown field"), "{detail}");
    }
    // A requirement of the wrong type is refused too.
    let input = json!({"message_type": "task_submit",
        "data": {"task": {"task_type": "echo", "requirements": {"min_cpu_cores": "two"}}}})
    .to_string();
    check_err(input.as_bytes(), ErrorCode::InvalidMessage, None);
    // Every known key is accepted, including the aliases.
    let input = json!({"message_type": "task_submit", "data": {"task": {"task_type": "echo",
        "requirements": {"min_cpu_cores": 2, "min_memory_gb": 0.5, "min_storage_gb": 10,
                         "platform": "linux", "arch": "arm", "role": "worker", "tags": ["a"],
                         "device": "pi", "sandbox": "full"}}}})
    .to_string();
    let envelope = Envelope::decode(input.as_bytes()).expect("known requirement keys decode");
    let Message::TaskSubmit(submit) = envelope.message else {
        panic!("not a submit: {envelope:?}");
    };
    assert_eq!(
        submit.tasks[0].requirements,
        Requirements {
            min_cpu_cores: Some(2),
            min_memory_gb: Some(0.5),
            min_storage_gb: Some(10.0),
            platform: Some("linux".into()),
            architecture: Some("arm".into()),
            role: Some("worker".into()),
            tags: vec!["a".into()],
            device_id: Some("pi".into()),
            sandbox: Some("full".into()),
        }
    );
}

/// The priority a `task_submit` with `priority` decodes to, or the error.
fn submitted_priority(priority: serde_json::Value) -> Result<Priority, DecodeError> {
    let input = json!({"message_type": "task_submit", "message_id": "p",
        "data": {"task": {"task_type": "echo", "priority": priority}}})
    .to_string();
    let envelope = Envelope::decode(input.as_bytes())?;
    match envelope.message {
        Message::TaskSubmit(submit) => Ok(submit.tasks[0].priority),
        other => panic!("not a submit: {other:?}"),
    }
}

#[test]
fn priorities_parse_from_names_and_numbers() {
    for (wire, expect) in [
        (json!("low"), Priority::LOW),
        (json!("normal"), Priority::NORMAL),
        (json!("medium"), Priority::NORMAL),
        (json!("high"), Priority::HIGH),
        (json!("urgent"), Priority::URGENT),
        (json!("critical"), Priority::URGENT),
        (json!("HIGH"), Priority::HIGH),
        (json!(" Low "), Priority::LOW),
        (json!("42"), Priority(42)),
        (json!(0), Priority(0)),
        (json!(25), Priority::LOW),
        (json!(99), Priority(99)),
        (json!(100), Priority::URGENT),
    ] {
        assert_eq!(submitted_priority(wire.clone()), Ok(expect), "{wire}");
    }
    assert_eq!(Priority::default(), Priority::NORMAL);
    assert!(Priority::URGENT > Priority::HIGH && Priority::HIGH > Priority::NORMAL);
    assert!(Priority::NORMAL > Priority::LOW && Priority::LOW > Priority(0));
    // Named levels are written as names, the others as numbers.
    assert_eq!(
        serde_json::to_value(Priority::HIGH).expect("serializes"),
        json!("high")
    );
    assert_eq!(
        serde_json::to_value(Priority(60)).expect("serializes"),
        json!(60)
    );
    assert_eq!(Priority(60).to_string(), "60");
    assert_eq!(Priority::URGENT.to_string(), "urgent");
    for n in 0..=Priority::MAX {
        let priority = Priority(n);
        assert_eq!(Priority::parse(&priority.to_string()), Some(priority));
    }
}

#[test]
fn bad_priorities_are_refused() {
    for wire in [
        json!("extreme"),
        json!(""),
        json!("101"),
        json!("-1"),
        json!(101),
        json!(255),
        json!(-1),
        json!(2.5),
        json!(true),
        json!(null),
        json!([50]),
        json!({"level": "high"}),
    ] {
        let err = submitted_priority(wire.clone()).expect_err("a bad priority is refused");
        assert_eq!(err.code, ErrorCode::InvalidMessage, "{wire}");
        assert_eq!(err.message_id.as_deref(), Some("p"), "{wire}");
        assert!(err.detail.contains("priority"), "{wire}: {}", err.detail);
    }
    for text in ["", "extreme", "101", "1000", "-5", "5.0", "lowest"] {
        assert_eq!(Priority::parse(text), None, "{text:?}");
    }
}

#[test]
fn error_codes_form_a_closed_documented_list() {
    let mut seen = std::collections::HashSet::new();
    for code in ErrorCode::ALL {
        let text = code.as_str();
        assert!(seen.insert(text), "{text} twice");
        assert_eq!(ErrorCode::parse(text), Some(code));
        assert_eq!(code.to_string(), text);
        assert!(
            text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{text} is not snake_case"
        );
    }
    assert_eq!(ErrorCode::parse("nope"), None);
    assert_eq!(ErrorCode::parse("LINE_TOO_LONG"), None);
    // Capacity and availability problems may go away; malformed or refused
    // requests will be refused again.
    for code in [
        ErrorCode::NoFreeSlot,
        ErrorCode::StorageUnavailable,
        ErrorCode::ShuttingDown,
    ] {
        assert!(code.is_retryable(), "{code}");
    }
    for code in [
        ErrorCode::LineTooLong,
        ErrorCode::MalformedJson,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownMessageType,
        ErrorCode::UnknownCommand,
        ErrorCode::NotRegistered,
        ErrorCode::NotFound,
        ErrorCode::InvalidState,
        ErrorCode::UnsupportedTaskType,
        ErrorCode::InternalError,
    ] {
        assert!(!code.is_retryable(), "{code}");
    }
}

#[test]
fn decode_errors_display_code_and_detail() {
    let err = Envelope::decode(b"{\"message_type\":\"nope\"}").expect_err("unknown type");
    assert_eq!(
        err.to_string(),
        format!("unknown_message_type: {}", err.detail)
    );
}

#[test]
fn task_states_and_device_statuses_parse() {
    for state in TaskState::ALL {
        assert_eq!(TaskState::parse(state.as_str()), Some(state));
        assert_eq!(
            serde_json::to_value(state).expect("serializes"),
            json!(state.as_str())
        );
    }
    assert_eq!(TaskState::parse("timeout"), Some(TaskState::TimedOut));
    assert_eq!(TaskState::parse("done"), None);
    let terminal: Vec<_> = TaskState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        vec![
            TaskState::Completed,
            TaskState::Failed,
            TaskState::TimedOut,
            TaskState::Cancelled,
            TaskState::DeadLetter
        ]
    );
    for status in [
        DeviceStatus::Online,
        DeviceStatus::Draining,
        DeviceStatus::Offline,
    ] {
        assert_eq!(DeviceStatus::parse(status.as_str()), Some(status));
        assert_eq!(status.to_string(), status.as_str());
    }
    assert_eq!(DeviceStatus::parse("asleep"), None);
}

/// `list_tasks`'s `state` is read into a `TaskState` as the line is
/// decoded: a name that is no state is refused there, with the message the
/// master gave when it parsed the name itself, and `timeout` and `null`
/// still read.
#[test]
fn a_task_listing_filter_is_a_state() {
    let detail = check_err(
        br#"{"message_type":"list_tasks","message_id":"q-1","data":{"state":"sleeping"}}"#,
        ErrorCode::InvalidMessage,
        Some("q-1"),
    );
    assert_eq!(
        detail,
        "unknown state \"sleeping\"; use one of queued, assigned, running, retrying, \
         completed, failed, timed_out, cancelled, dead_letter"
    );
    for (state, expect) in [
        (json!("timeout"), Some(TaskState::TimedOut)),
        (json!("dead_letter"), Some(TaskState::DeadLetter)),
        (json!(null), None),
    ] {
        let line = json!({"message_type": "list_tasks", "data": {"state": state}}).to_string();
        match Envelope::decode(line.as_bytes()).map(|envelope| envelope.message) {
            Ok(Message::ListTasks(list)) => assert_eq!(list.state, expect, "{line}"),
            other => panic!("{line}: {other:?}"),
        }
    }
    assert_eq!(
        "done".parse::<TaskState>().map_err(|err| err.to_string()),
        Err(
            "unknown state \"done\"; use one of queued, assigned, running, retrying, \
             completed, failed, timed_out, cancelled, dead_letter"
                .to_string()
        )
    );
}
