//! Property-based round trips: every domain message, encoded as a line and
//! decoded again, is the value it was.

use crate::strategies::*;
use proptest::prelude::*;
use protocol::*;

/// Encodes `envelope`, checks that it is one line, decodes the line without
/// its newline and checks that the result is `envelope`; then checks that
/// the codec cuts the same line out of a stream as exactly one JSON frame.
fn round_trip(envelope: &Envelope) -> Result<(), TestCaseError> {
    let line = envelope.to_line();
    prop_assert_eq!(line.last(), Some(&b'\n'));
    let body = &line[..line.len() - 1];
    prop_assert!(!body.contains(&b'\n'), "the encoding spans several lines");
    prop_assert_eq!(Envelope::decode(body), Ok(envelope.clone()));

    let mut codec = LineCodec::new(DEFAULT_MAX_LINE);
    let mut frames = Vec::new();
    prop_assert_eq!(codec.decode(&line, &mut frames), Ok(()));
    prop_assert_eq!(frames, vec![Frame::Json(body.to_vec())]);
    prop_assert_eq!(codec.buffered(), 0);
    Ok(())
}

proptest! {
    #[test]
    fn register_round_trips(envelope in envelope(register().prop_map(Message::Register))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn heartbeat_round_trips(envelope in envelope(heartbeat().prop_map(Message::Heartbeat))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn task_submit_round_trips(envelope in envelope(task_submit().prop_map(Message::TaskSubmit))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn task_assign_round_trips(envelope in envelope(task_assign().prop_map(Message::TaskAssign))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn task_result_round_trips(envelope in envelope(task_result().prop_map(Message::TaskResult))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn task_progress_round_trips(
        envelope in envelope(task_progress().prop_map(Message::TaskProgress)),
    ) {
        round_trip(&envelope)?;
    }

    #[test]
    fn task_cancel_round_trips(envelope in envelope(task_cancel().prop_map(Message::TaskCancel))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn ack_round_trips(envelope in envelope(ack().prop_map(Message::Ack))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn error_reply_round_trips(envelope in envelope(error_reply().prop_map(Message::Error))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn task_finished_event_round_trips(
        envelope in envelope(task_view().prop_map(|task| {
            Message::Event(Event::TaskFinished { task: Box::new(task) })
        })),
    ) {
        round_trip(&envelope)?;
    }

    /// The `list_tasks` ack: a page of summaries and the cursor of the
    /// next page, which is left out (not `null`) on the last page.
    #[test]
    fn a_task_page_round_trips_in_its_ack(
        tasks in proptest::collection::vec(task_view(), 0..4),
        next_cursor in proptest::option::of(text()),
    ) {
        let page = TaskPage { count: tasks.len(), tasks, next_cursor, success: Success };
        let fields = serde_json::to_value(&page).expect("a page is JSON");
        let envelope = Envelope::new(Message::Ack(Ack::new(Some("l-1".into()), fields)))
            .from_sender("main-node");
        round_trip(&envelope)?;
        // The typed page is written as its sorted JSON map: the same bytes.
        let typed = Envelope::new(Message::Ack(Ack::reply(Some("l-1".into()), page.clone())))
            .from_sender("main-node");
        let (typed, untyped) = (typed.to_line(), envelope.to_line());
        prop_assert_eq!(String::from_utf8_lossy(&typed), String::from_utf8_lossy(&untyped));
        let decoded = Envelope::decode(&envelope.to_line()).expect("an ack");
        let Message::Ack(ack) = decoded.message else {
            return Err(TestCaseError::fail("not an ack"));
        };
        prop_assert_eq!(ack.result.fields().contains_key("next_cursor"), page.next_cursor.is_some());
        prop_assert_eq!(ack.result.parse::<TaskPage>().ok(), Some(page));
    }

    #[test]
    fn every_event_round_trips(envelope in envelope(event().prop_map(Message::Event))) {
        round_trip(&envelope)?;
    }

    #[test]
    fn the_other_messages_round_trip(envelope in envelope(small_message())) {
        round_trip(&envelope)?;
    }

    /// Decoding is stable: whatever a decoded message is, encoding it and
    /// decoding again gives the same message. This covers the older shapes,
    /// which the encoder never writes: each is decoded from a generated
    /// flat register or `metrics` heartbeat.
    #[test]
    fn older_shapes_decode_stably(
        hostname in proptest::option::of(text()),
        cpu_count in proptest::option::of(any::<u32>()),
        memory_gb in proptest::option::of(positive_decimal()),
        storage_gb in proptest::option::of(positive_decimal()),
        max_concurrent_tasks in proptest::option::of(any::<u32>()),
        capabilities in proptest::option::of(json_not_null()),
        storage_usage in proptest::option::of(decimal()),
        extra in extra_map(&[]),
    ) {
        let mut data = serde_json::json!({
            "hostname": hostname,
            "cpu_count": cpu_count,
            "memory_total_gb": memory_gb,
            "storage_total_gb": storage_gb,
            "max_concurrent_tasks": max_concurrent_tasks,
            "capabilities": capabilities,
        });
        // The unknown keys go into `device_info`, whose unknown keys the
        // decoder merges into `extra`; a key that `device_info` knows would
        // be read as that field instead, so those are skipped here.
        let device_info: serde_json::Map<_, _> = extra
            .into_iter()
            .filter(|(key, _)| !DEVICE_INFO_KEYS.contains(&key.as_str()))
            .collect();
        data["device_info"] = serde_json::Value::Object(device_info);
        let register = serde_json::json!({"message_type": "register", "data": data}).to_string();
        let decoded = Envelope::decode(register.as_bytes());
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        if let Ok(decoded) = decoded {
            let Message::Register(ref body) = decoded.message else {
                return Err(TestCaseError::fail(format!("not a register: {decoded:?}")));
            };
            prop_assert_eq!(body.memory_total_bytes, memory_gb.map(message::gib_to_bytes));
            prop_assert_eq!(body.disk_total_bytes, storage_gb.map(message::gib_to_bytes));
            prop_assert_eq!(body.slots, max_concurrent_tasks);
            round_trip(&decoded)?;
        }

        let heartbeat = serde_json::json!({"message_type": "heartbeat",
            "data": {"metrics": {"storage_usage": storage_usage}}}).to_string();
        let decoded = Envelope::decode(heartbeat.as_bytes());
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        if let Ok(decoded) = decoded {
            let Message::Heartbeat(ref body) = decoded.message else {
                return Err(TestCaseError::fail(format!("not a heartbeat: {decoded:?}")));
            };
            prop_assert_eq!(body.metrics.disk_usage, storage_usage);
            round_trip(&decoded)?;
        }
    }
}

/// The keys `device_info` reads.
const DEVICE_INFO_KEYS: &[&str] = &[
    "hostname",
    "platform",
    "architecture",
    "os_version",
    "kernel_version",
    "cpu_model",
    "python_version",
    "ip_address",
    "role",
];
