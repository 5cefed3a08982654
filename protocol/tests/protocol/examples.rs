//! Every JSON example of `shared/spec/protocol.md` and of the design's
//! "Communication Protocol" section, decoded into domain values.

use protocol::message::gib_to_bytes;
use protocol::types::validate_id;
use protocol::*;
use serde_json::{json, Map, Value};

/// Decodes `input` and asserts that it gives exactly `expect`.
fn check(input: &str, expect: Envelope) {
    match Envelope::decode(input.as_bytes()) {
        Ok(envelope) => assert_eq!(envelope, expect, "input: {input}"),
        Err(err) => panic!("{input} did not decode: {err}"),
    }
}

/// An envelope with the given sender and nothing else set.
fn from(sender: &str, message: Message) -> Envelope {
    Envelope::new(message).from_sender(sender)
}

/// Turns a JSON object literal into a serde map.
fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Decodes `input` and returns its message, failing the test otherwise.
fn decoded_message(input: &str) -> Message {
    match Envelope::decode(input.as_bytes()) {
        Ok(envelope) => envelope.message,
        Err(err) => panic!("{input} did not decode: {err}"),
    }
}

const DESIGN_REGISTER: &str = r#"{
  "message_type": "register",
  "sender_id": "device-001",
  "timestamp": "2024-01-15T10:30:00Z",
  "data": {
    "device_info": {
      "hostname": "android-phone",
      "platform": "android",
      "architecture": "aarch64",
      "python_version": "3.11.0",
      "role": "mobile"
    },
    "hardware_specs": {
      "cpu_cores": 8,
      "memory_total": 8589934592,
      "disk_space": 128849018880,
      "network_interfaces": ["wlan0"]
    },
    "capabilities": [
      "computational",
      "network_services",
      "mobile_specific"
    ]
  }
}"#;

#[test]
fn register_in_the_design_shape() {
    let mut expect = from(
        "device-001",
        Message::Register(Register {
            hostname: Some("android-phone".into()),
            platform: Some("android".into()),
            architecture: Some("aarch64".into()),
            python_version: Some("3.11.0".into()),
            role: Some("mobile".into()),
            cpu_cores: Some(8),
            memory_total_bytes: Some(8_589_934_592),
            disk_total_bytes: Some(128_849_018_880),
            network_interfaces: vec!["wlan0".into()],
            capabilities: Some(json!([
                "computational",
                "network_services",
                "mobile_specific"
            ])),
            ..Register::default()
        }),
    );
    expect.timestamp = Some("2024-01-15T10:30:00Z".into());
    check(DESIGN_REGISTER, expect);
}

#[test]
fn register_in_the_older_flat_shape() {
    // This is the flat shape of the older Python workers, with two fields
    // that no shape knows: `python_version` sits inside `device_info` only in
    // the design's shape, so at the top level it is unknown too, and `gpu`.
    let input = r#"{"message_type":"register","sender_id":"pi-kitchen","message_id":"m-1",
        "data":{"role":"worker","platform":"linux","hostname":"pi-kitchen","ip_address":"192.168.1.20",
                "cpu_count":4,"memory_total_gb":7.6,"storage_total_gb":58.2,
                "capabilities":{"computational":["general_compute"],"storage":["file_storage"]},
                "tags":["linux","worker"],"max_concurrent_tasks":2,
                "python_version":"3.9.2","gpu":{"present":false}}}"#;
    let expect = from(
        "pi-kitchen",
        Message::Register(Register {
            hostname: Some("pi-kitchen".into()),
            platform: Some("linux".into()),
            ip_address: Some("192.168.1.20".into()),
            role: Some("worker".into()),
            cpu_cores: Some(4),
            memory_total_bytes: Some(gib_to_bytes(7.6)),
            disk_total_bytes: Some(gib_to_bytes(58.2)),
            capabilities: Some(json!({
                "computational": ["general_compute"],
                "storage": ["file_storage"],
            })),
            tags: vec!["linux".into(), "worker".into()],
            slots: Some(2),
            extra: map(json!({"python_version": "3.9.2", "gpu": {"present": false}})),
            ..Register::default()
        }),
    )
    .with_id("m-1");
    check(input, expect);
    // The conversion rounds to the byte: 7.6 GiB are 8,160,437,862 bytes.
    assert_eq!(gib_to_bytes(7.6), 8_160_437_862);
    assert_eq!(gib_to_bytes(1.0), 1 << 30);
}

#[test]
fn register_with_only_a_few_fields() {
    // Most fields of the flat shape are optional.
    check(
        r#"{"message_type":"register","sender_id":"w","data":{"hostname":"h"}}"#,
        from(
            "w",
            Message::Register(Register {
                hostname: Some("h".into()),
                ..Register::default()
            }),
        ),
    );
    check(
        r#"{"message_type":"register","sender_id":"w"}"#,
        from("w", Message::Register(Register::default())),
    );
}

#[test]
fn register_with_the_fields_of_our_own_worker() {
    let input = r#"{"message_type":"register","sender_id":"pi-1","data":{
        "device_info":{"hostname":"pi","platform":"linux","architecture":"aarch64",
                       "os_version":"Debian 12","kernel_version":"6.1.0","cpu_model":"Cortex-A72",
                       "ip_address":"10.0.0.5","role":"worker","battery_percent":81},
        "hardware_specs":{"cpu_cores":4,"memory_total":4294967296,"disk_space":1000,
                          "network_interfaces":["eth0","wlan0"],"cpu_score":123.5},
        "capabilities":["computational"],"tags":["arm"],
        "task_types":["echo","shell"],"slots":3,
        "running_tasks":[{"task_id":"t-1","attempt":2},{"task_id":"t-2"}],
        "sandbox":"partial","auth_token":"s3cret"}}"#;
    let expect = from(
        "pi-1",
        Message::Register(Register {
            hostname: Some("pi".into()),
            platform: Some("linux".into()),
            architecture: Some("aarch64".into()),
            os_version: Some("Debian 12".into()),
            kernel_version: Some("6.1.0".into()),
            cpu_model: Some("Cortex-A72".into()),
            python_version: None,
            ip_address: Some("10.0.0.5".into()),
            role: Some("worker".into()),
            cpu_cores: Some(4),
            memory_total_bytes: Some(4_294_967_296),
            disk_total_bytes: Some(1000),
            network_interfaces: vec!["eth0".into(), "wlan0".into()],
            capabilities: Some(json!(["computational"])),
            tags: vec!["arm".into()],
            task_types: Some(vec!["echo".into(), "shell".into()]),
            slots: Some(3),
            leases: false,
            sandbox: Some("partial".into()),
            running_tasks: vec![
                RunningTask {
                    task_id: "t-1".into(),
                    attempt: 2,
                },
                RunningTask {
                    task_id: "t-2".into(),
                    attempt: 0,
                },
            ],
            cpu_benchmark: None,
            power: None,
            // Unknown keys of the nested objects land in `extra` too.
            extra: map(json!({"battery_percent": 81, "cpu_score": 123.5, "auth_token": "s3cret"})),
        }),
    );
    check(input, expect);
}

#[test]
fn register_prefers_the_design_shape_and_slots() {
    // When both shapes name a value, the design's nested one wins, and our
    // `slots` wins over the older `max_concurrent_tasks`.
    let register = decoded_message(
        r#"{"message_type":"register","data":{
            "device_info":{"hostname":"new"},"hostname":"old",
            "hardware_specs":{"cpu_cores":8,"memory_total":1024},"cpu_count":2,"memory_total_gb":1.5,
            "slots":4,"max_concurrent_tasks":1}}"#,
    );
    let Message::Register(register) = register else {
        panic!("not a register: {register:?}");
    };
    assert_eq!(register.hostname.as_deref(), Some("new"));
    assert_eq!(register.cpu_cores, Some(8));
    assert_eq!(register.memory_total_bytes, Some(1024));
    assert_eq!(register.slots, Some(4));
    assert!(register.extra.is_empty(), "{:?}", register.extra);
}

#[test]
fn register_is_encoded_in_the_design_shape() {
    // Whatever shape came in, the encoder writes the design's, in bytes.
    let flat = r#"{"message_type":"register","sender_id":"w","data":{"hostname":"h","cpu_count":2,
        "memory_total_gb":7.6,"storage_total_gb":58.2,"max_concurrent_tasks":2,"hardware_specs":{"slots":"x"}}}"#;
    let envelope = Envelope::decode(flat.as_bytes()).expect("the flat register decodes");
    let value = envelope.to_value();
    assert_eq!(value["message_type"], "register");
    assert_eq!(value["data"]["device_info"]["hostname"], "h");
    assert_eq!(value["data"]["hardware_specs"]["cpu_cores"], 2);
    assert_eq!(
        value["data"]["hardware_specs"]["memory_total"],
        gib_to_bytes(7.6)
    );
    assert_eq!(
        value["data"]["hardware_specs"]["disk_space"],
        gib_to_bytes(58.2)
    );
    assert_eq!(value["data"]["slots"], 2);
    assert_eq!(value["data"].get("memory_total_gb"), None);
    // The unknown `slots` of `hardware_specs` is kept, and decoding the
    // encoded message gives the same value back rather than reading it as
    // the top-level `slots`.
    let line = envelope.to_line();
    assert_eq!(Envelope::decode(&line[..line.len() - 1]), Ok(envelope));
}

const DESIGN_HEARTBEAT: &str = r#"{
  "message_type": "heartbeat",
  "sender_id": "device-001",
  "timestamp": "2024-01-15T10:31:00Z",
  "data": {
    "system_metrics": {
      "cpu_usage": 25.5,
      "memory_usage": 45.2,
      "disk_usage": 12.8,
      "load_average": [0.5, 0.3, 0.2],
      "uptime": 86400
    },
    "status": "online",
    "active_tasks": 2,
    "last_activity": "2024-01-15T10:30:45Z"
  }
}"#;

#[test]
fn heartbeat_in_the_design_shape() {
    let mut expect = from(
        "device-001",
        Message::Heartbeat(Heartbeat {
            metrics: Metrics {
                cpu_usage: Some(25.5),
                memory_usage: Some(45.2),
                disk_usage: Some(12.8),
                load_average: Some(vec![0.5, 0.3, 0.2]),
                uptime: Some(86400.0),
                extra: Map::new(),
            },
            status: Some("online".into()),
            active_tasks: Some(2),
            last_activity: Some("2024-01-15T10:30:45Z".into()),
            power: None,
            extra: Map::new(),
        }),
    );
    expect.timestamp = Some("2024-01-15T10:31:00Z".into());
    check(DESIGN_HEARTBEAT, expect);
}

#[test]
fn heartbeat_in_the_older_shape() {
    let input = r#"{"message_type":"heartbeat","sender_id":"pi-kitchen",
        "data":{"metrics":{"cpu_usage":10,"memory_usage":50.5,"storage_usage":70.1,"temperature":48.2},
                "battery_level":80}}"#;
    let expect = from(
        "pi-kitchen",
        Message::Heartbeat(Heartbeat {
            metrics: Metrics {
                cpu_usage: Some(10.0),
                memory_usage: Some(50.5),
                disk_usage: Some(70.1),
                extra: map(json!({"temperature": 48.2})),
                ..Metrics::default()
            },
            extra: map(json!({"battery_level": 80})),
            ..Heartbeat::default()
        }),
    );
    check(input, expect);
}

#[test]
fn heartbeat_prefers_system_metrics_and_is_encoded_with_them() {
    let heartbeat = decoded_message(
        r#"{"message_type":"heartbeat","data":{"system_metrics":{"cpu_usage":1.5},"metrics":{"cpu_usage":99}}}"#,
    );
    let Message::Heartbeat(heartbeat) = heartbeat else {
        panic!("not a heartbeat: {heartbeat:?}");
    };
    assert_eq!(heartbeat.metrics.cpu_usage, Some(1.5));
    let envelope = Envelope::new(Message::Heartbeat(heartbeat));
    let value = envelope.to_value();
    assert_eq!(value["data"]["system_metrics"]["cpu_usage"], 1.5);
    assert_eq!(value["data"].get("metrics"), None);
}

const DESIGN_TASK_ASSIGN: &str = r#"{
  "message_type": "task_assign",
  "sender_id": "main-node",
  "target_id": "device-001",
  "timestamp": "2024-01-15T10:32:00Z",
  "data": {
    "task": {
      "task_id": "task-abc123",
      "task_type": "python_eval",
      "priority": "normal",
      "timeout": 300,
      "payload": {
        "expression": "sum(range(100000))",
        "environment": {}
      },
      "requirements": {
        "min_cpu_cores": 2,
        "min_memory_gb": 1
      }
    }
  }
}"#;

fn design_task() -> TaskSpec {
    TaskSpec {
        task_id: Some("task-abc123".into()),
        task_type: "python_eval".into(),
        payload: json!({"expression": "sum(range(100000))", "environment": {}}),
        priority: Priority::NORMAL,
        timeout: Some(300.0),
        requirements: Requirements {
            min_cpu_cores: Some(2),
            min_memory_gb: Some(1.0),
            ..Requirements::default()
        },
        strategy: None,
        max_retries: None,
    }
}

#[test]
fn task_assign_in_the_design_shape() {
    let mut expect = from(
        "main-node",
        Message::TaskAssign(TaskAssign {
            task: design_task(),
            // The design has no attempt; it defaults to 0.
            attempt: 0,
        }),
    );
    expect.target_id = Some("device-001".into());
    expect.timestamp = Some("2024-01-15T10:32:00Z".into());
    check(DESIGN_TASK_ASSIGN, expect);
}

#[test]
fn task_assign_with_an_attempt() {
    let input = r#"{"message_type":"task_assign","sender_id":"main-node","target_id":"pi",
        "data":{"task":{"task_id":"t-9","task_type":"echo","priority":80,"max_retries":3,
                        "requirements":{"arch":"x86_64","device":"pi","tags":["gpu"]}},"attempt":4}}"#;
    let mut expect = from(
        "main-node",
        Message::TaskAssign(TaskAssign {
            task: TaskSpec {
                task_id: Some("t-9".into()),
                priority: Priority(80),
                max_retries: Some(3),
                requirements: Requirements {
                    architecture: Some("x86_64".into()),
                    device_id: Some("pi".into()),
                    tags: vec!["gpu".into()],
                    ..Requirements::default()
                },
                ..TaskSpec::new("echo", json!({}))
            },
            attempt: 4,
        }),
    );
    expect.target_id = Some("pi".into());
    check(input, expect);
}

const DESIGN_TASK_RESULT: &str = r#"{
  "message_type": "task_result",
  "sender_id": "device-001",
  "timestamp": "2024-01-15T10:32:30Z",
  "data": {
    "task_id": "task-abc123",
    "status": "completed",
    "execution_time": 28.5,
    "result": {
      "output": "4999950000",
      "exit_code": 0,
      "metrics": {
        "cpu_time": 25.2,
        "memory_peak": 1048576
      }
    }
  }
}"#;

#[test]
fn task_result_in_the_design_shape() {
    let mut expect = from(
        "device-001",
        Message::TaskResult(TaskResult {
            task_id: "task-abc123".into(),
            attempt: None,
            status: ResultStatus::Completed,
            execution_time: Some(28.5),
            result: json!({
                "output": "4999950000",
                "exit_code": 0,
                "metrics": {"cpu_time": 25.2, "memory_peak": 1_048_576},
            }),
            error: None,
        }),
    );
    expect.timestamp = Some("2024-01-15T10:32:30Z".into());
    check(DESIGN_TASK_RESULT, expect);
}

#[test]
fn task_result_statuses() {
    for (wire, status, state) in [
        ("completed", ResultStatus::Completed, TaskState::Completed),
        ("failed", ResultStatus::Failed, TaskState::Failed),
        ("timeout", ResultStatus::Timeout, TaskState::TimedOut),
        ("timed_out", ResultStatus::Timeout, TaskState::TimedOut),
        ("cancelled", ResultStatus::Cancelled, TaskState::Cancelled),
    ] {
        let input = format!(
            r#"{{"message_type":"task_result","sender_id":"w","data":{{"task_id":"t","attempt":2,"status":"{wire}","error":"boom"}}}}"#
        );
        let expect = from(
            "w",
            Message::TaskResult(TaskResult {
                task_id: "t".into(),
                attempt: Some(2),
                status,
                execution_time: None,
                result: Value::Null,
                error: Some("boom".into()),
            }),
        );
        check(&input, expect);
        assert_eq!(status.task_state(), state);
    }
}

#[test]
fn the_envelope_example_of_the_contract() {
    let input = r#"{"message_type": "heartbeat", "sender_id": "pi-kitchen", "target_id": null,
 "message_id": "8c1e…", "timestamp": "2024-01-15T10:31:00Z", "data": {}}"#;
    let mut expect = from("pi-kitchen", Message::Heartbeat(Heartbeat::default())).with_id("8c1e…");
    expect.timestamp = Some("2024-01-15T10:31:00Z".into());
    check(input, expect);
}

#[test]
fn envelope_fields() {
    // `receiver_id` is another name for `target_id`.
    let mut expect = from(
        "main-node",
        Message::TaskCancel(TaskCancel {
            task_id: "t-1".into(),
            attempt: Some(3),
        }),
    );
    expect.target_id = Some("pi-kitchen".into());
    check(
        r#"{"message_type":"task_cancel","sender_id":"main-node","receiver_id":"pi-kitchen","data":{"task_id":"t-1","attempt":3}}"#,
        expect.clone(),
    );
    // When both are given, `target_id` wins.
    check(
        r#"{"message_type":"task_cancel","sender_id":"main-node","target_id":"pi-kitchen","receiver_id":"other","data":{"task_id":"t-1","attempt":3}}"#,
        expect,
    );
    // A numeric message_id becomes text; so does a numeric sender_id.
    check(
        r#"{"message_type":"status","message_id":42}"#,
        Envelope::new(Message::Status).with_id("42"),
    );
    check(
        r#"{"message_type":"status","sender_id":7,"message_id":-1.5}"#,
        Envelope::new(Message::Status)
            .from_sender("7")
            .with_id("-1.5"),
    );
    // A message_id of another type is dropped rather than refused.
    check(
        r#"{"message_type":"status","message_id":[1]}"#,
        Envelope::new(Message::Status),
    );
    // `data` defaults to `{}`, and `null` counts as absent.
    check(
        r#"{"message_type":"status"}"#,
        Envelope::new(Message::Status),
    );
    check(
        r#"{"message_type":"status","data":null}"#,
        Envelope::new(Message::Status),
    );
    // Unknown envelope fields are ignored (forward compatibility).
    check(
        r#"{"message_type":"status","version":2,"signature":{"alg":"none"},"data":{"verbose":true}}"#,
        Envelope::new(Message::Status),
    );
    // Leading and trailing blanks around the object are fine.
    check(
        " \t{\"message_type\":\"status\"}\r ",
        Envelope::new(Message::Status),
    );
}

#[test]
fn replies() {
    check(
        r#"{"message_type":"ack","sender_id":"main-node","data":{"original_message_id":"m-1",
            "result":{"success":true,"message":"registered","heartbeat_interval":30}}}"#,
        from(
            "main-node",
            Message::Ack(Ack::new(
                Some("m-1".into()),
                json!({"message": "registered", "heartbeat_interval": 30}),
            )),
        ),
    );
    check(
        r#"{"message_type":"error","sender_id":"main-node","data":{"original_message_id":"m-2",
            "error":"no such task","code":"not_found"}}"#,
        from(
            "main-node",
            Message::Error(ErrorReply::new(
                Some("m-2".into()),
                ErrorCode::NotFound,
                "no such task",
            )),
        ),
    );
    // An ack whose fields sit directly in `data` (no `result`) keeps them.
    let ack = decoded_message(
        r#"{"message_type":"ack","data":{"original_message_id":9,"success":true,"n":1}}"#,
    );
    assert_eq!(
        ack,
        Message::Ack(Ack {
            original_message_id: Some("9".into()),
            result: Reply::Fields(map(json!({"success": true, "n": 1}))),
        })
    );
    // An ack whose `result` is not an object keeps it under `value`.
    let ack = decoded_message(r#"{"message_type":"ack","data":{"result":5}}"#);
    assert_eq!(
        ack,
        Message::Ack(Ack {
            original_message_id: None,
            result: Reply::Fields(map(json!({"value": 5}))),
        })
    );
}

#[test]
fn replies_are_encoded_as_the_contract_says() {
    let ack = Envelope::new(Message::Ack(Ack::new(
        Some("m-1".into()),
        json!({"task_id": "t-1"}),
    )))
    .from_sender("main-node");
    let line = ack.to_line();
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    let value: Value = serde_json::from_slice(&line).expect("an ack is JSON");
    assert_eq!(value["message_type"], "ack");
    assert_eq!(value["sender_id"], "main-node");
    assert_eq!(value["data"]["original_message_id"], "m-1");
    assert_eq!(value["data"]["result"]["success"], true);
    assert_eq!(value["data"]["result"]["task_id"], "t-1");

    let error = Envelope::new(Message::Error(ErrorReply::new(
        None,
        ErrorCode::LineTooLong,
        "line longer than 1048576 bytes",
    )));
    let value = error.to_value();
    assert_eq!(value["message_type"], "error");
    assert_eq!(value["data"]["code"], "line_too_long");
    assert_eq!(value["data"]["error"], "line longer than 1048576 bytes");
    assert_eq!(value["data"]["original_message_id"], Value::Null);
}

#[test]
fn task_submit_single_and_batch() {
    let input = r#"{"message_type":"task_submit","sender_id":"cli","message_id":"s-1","data":{"task":{
        "task_type":"echo","payload":{"message":"hi"},"priority":"high","timeout":30,
        "requirements":{"platform":"linux","min_storage_gb":2.5,"role":"worker"},"max_retries":2}}}"#;
    let expect = from(
        "cli",
        Message::TaskSubmit(TaskSubmit {
            tasks: vec![TaskSpec {
                priority: Priority::HIGH,
                timeout: Some(30.0),
                requirements: Requirements {
                    platform: Some("linux".into()),
                    min_storage_gb: Some(2.5),
                    role: Some("worker".into()),
                    ..Requirements::default()
                },
                max_retries: Some(2),
                ..TaskSpec::new("echo", json!({"message": "hi"}))
            }],
            batch: false,
        }),
    )
    .with_id("s-1");
    check(input, expect);

    // This is a batch with a client-chosen id; a missing payload is {}.
    let input = r#"{"message_type":"submit_task","data":{"tasks":[
        {"task_id":"mine-1","task_type":"sleep","priority":"low"},
        {"task_type":"echo","payload":[1,2]}]}}"#;
    let expect = Envelope::new(Message::TaskSubmit(TaskSubmit {
        tasks: vec![
            TaskSpec {
                task_id: Some("mine-1".into()),
                priority: Priority::LOW,
                ..TaskSpec::new("sleep", json!({}))
            },
            TaskSpec::new("echo", json!([1, 2])),
        ],
        batch: true,
    }));
    check(input, expect);
}

#[test]
fn client_requests() {
    let cases: Vec<(&str, Message)> = vec![
        (r#"{"message_type":"status"}"#, Message::Status),
        (r#"{"message_type":"cluster_status"}"#, Message::Status),
        (r#"{"message_type":"get_cluster_status"}"#, Message::Status),
        (
            r#"{"message_type":"list_devices","data":{"role":"worker"}}"#,
            Message::ListDevices(ListDevices {
                role: Some("worker".into()),
                ..ListDevices::default()
            }),
        ),
        (
            r#"{"message_type":"list_devices","data":{"status":"online","limit":50,"before":"pi-2"}}"#,
            Message::ListDevices(ListDevices {
                role: None,
                status: Some("online".into()),
                limit: Some(50),
                before: Some("pi-2".into()),
            }),
        ),
        (
            r#"{"message_type":"list_devices"}"#,
            Message::ListDevices(ListDevices::default()),
        ),
        (
            r#"{"message_type":"device_info","data":{"device_id":"pi"}}"#,
            Message::DeviceInfo(DeviceRef {
                device_id: "pi".into(),
            }),
        ),
        (
            r#"{"message_type":"drain","data":{"device_id":"pi"}}"#,
            Message::DrainDevice(DeviceRef {
                device_id: "pi".into(),
            }),
        ),
        (
            r#"{"message_type":"task_status","data":{"task_id":"t-1"}}"#,
            Message::TaskStatus(TaskRef {
                task_id: "t-1".into(),
            }),
        ),
        (
            r#"{"message_type":"list_tasks","data":{"state":"running","limit":10}}"#,
            Message::ListTasks(ListTasks {
                state: Some(TaskState::Running),
                limit: Some(10),
                before: None,
            }),
        ),
        (
            r#"{"message_type":"list_tasks","data":{"limit":2,"before":"task-18c-7"}}"#,
            Message::ListTasks(ListTasks {
                state: None,
                limit: Some(2),
                before: Some("task-18c-7".into()),
            }),
        ),
        (
            r#"{"message_type":"cancel_task","data":{"task_id":"t-1"}}"#,
            Message::TaskCancel(TaskCancel {
                task_id: "t-1".into(),
                attempt: None,
            }),
        ),
        (
            r#"{"message_type":"subscribe","data":{"task_ids":["a","b"]}}"#,
            Message::Subscribe(Subscribe {
                task_ids: vec!["a".into(), "b".into()],
            }),
        ),
        (
            r#"{"message_type":"goodbye","data":{"reason":"shutdown"}}"#,
            Message::Goodbye(Goodbye {
                reason: Some("shutdown".into()),
            }),
        ),
        (
            r#"{"message_type":"unregister"}"#,
            Message::Goodbye(Goodbye::default()),
        ),
        (
            r#"{"message_type":"disconnect"}"#,
            Message::Goodbye(Goodbye::default()),
        ),
        (
            r#"{"message_type":"task_progress","data":{"task_id":"t","attempt":1,"fraction":0.5,"done":5,"total":10,"message":"half"}}"#,
            Message::TaskProgress(TaskProgress {
                task_id: "t".into(),
                attempt: Some(1),
                fraction: Some(0.5),
                done: Some(5),
                total: Some(10),
                message: Some("half".into()),
            }),
        ),
        (
            r#"{"message_type":"event","data":{"event":"device_left","device_id":"pi","reason":"goodbye"}}"#,
            Message::Event(Event::DeviceLeft {
                device_id: "pi".into(),
                reason: "goodbye".into(),
            }),
        ),
        (
            r#"{"message_type":"strategy"}"#,
            Message::Strategy(StrategyRequest { strategy: None }),
        ),
        (
            r#"{"message_type":"strategy","data":{"strategy":"round_robin"}}"#,
            Message::Strategy(StrategyRequest {
                strategy: Some(PlacementStrategy::RoundRobin),
            }),
        ),
    ];
    for (input, expect) in cases {
        check(input, Envelope::new(expect));
    }
}

/// The placement fields (`docs/protocol.md`, `docs/placement.md`): a
/// worker's CPU benchmark and power in `register`, its power in
/// `heartbeat`, a task's own strategy; an unknown strategy is refused.
#[test]
fn placement_fields() {
    let register = decoded_message(
        r#"{"message_type":"register","sender_id":"phone","data":{
            "hardware_specs":{"cpu_cores":8,"cpu_benchmark":412.5},
            "power":{"on_ac":false,"battery_percent":64,"charging":false,"temperature_c":31.5}}}"#,
    );
    let Message::Register(register) = register else {
        panic!("a register")
    };
    assert_eq!(register.cpu_benchmark, Some(412.5));
    let power = Power {
        battery_percent: Some(64.0),
        charging: Some(false),
        on_ac: Some(false),
        temperature_c: Some(31.5),
    };
    assert_eq!(register.power, Some(power));
    assert!(power.on_battery());
    assert!(register.extra.is_empty(), "{:?}", register.extra);
    let heartbeat = decoded_message(
        r#"{"message_type":"heartbeat","sender_id":"phone","data":{"power":{"on_ac":true}}}"#,
    );
    let Message::Heartbeat(heartbeat) = heartbeat else {
        panic!("a heartbeat")
    };
    let on_ac = heartbeat.power.expect("power");
    assert!(!on_ac.on_battery());
    assert!(
        !Power::default().on_battery(),
        "a device that does not say is on mains"
    );
    let submit = decoded_message(
        r#"{"message_type":"task_submit","data":{"task":{"task_type":"echo","strategy":"energy_aware"}}}"#,
    );
    let Message::TaskSubmit(submit) = submit else {
        panic!("a submit")
    };
    assert_eq!(
        submit.tasks[0].strategy,
        Some(PlacementStrategy::EnergyAware)
    );
    for input in [
        r#"{"message_type":"strategy","data":{"strategy":"fastest"}}"#,
        r#"{"message_type":"task_submit","data":{"task":{"task_type":"echo","strategy":"fastest"}}}"#,
        r#"{"message_type":"heartbeat","data":{"power":{"on_ac":"yes"}}}"#,
    ] {
        let error = Envelope::decode(input.as_bytes()).expect_err(input);
        assert_eq!(error.code, ErrorCode::InvalidMessage, "{input}");
    }
    for strategy in PlacementStrategy::ALL {
        assert_eq!(strategy.as_str().parse::<PlacementStrategy>(), Ok(strategy));
        assert_eq!(json!(strategy), json!(strategy.as_str()));
    }
    assert!("fastest".parse::<PlacementStrategy>().is_err());
}

#[test]
fn only_requests_expect_a_reply() {
    for (input, expects_reply) in [
        (DESIGN_REGISTER, true),
        (DESIGN_HEARTBEAT, true),
        (DESIGN_TASK_ASSIGN, true),
        (DESIGN_TASK_RESULT, true),
        (r#"{"message_type":"status"}"#, true),
        (r#"{"message_type":"goodbye"}"#, true),
        (
            r#"{"message_type":"task_progress","data":{"task_id":"t"}}"#,
            false,
        ),
        (r#"{"message_type":"ack"}"#, false),
        (
            r#"{"message_type":"error","data":{"error":"x","code":"internal_error"}}"#,
            false,
        ),
        (
            r#"{"message_type":"event","data":{"event":"device_joined","device_id":"d"}}"#,
            false,
        ),
    ] {
        assert_eq!(
            decoded_message(input).expects_reply(),
            expects_reply,
            "{input}"
        );
    }
}

#[test]
fn replies_are_read_as_the_document_their_request_expects() {
    let single = Ack::new(None, json!({"task_id": "t-1"}));
    let submitted: Submitted = single.result.parse().expect("a submit's document");
    assert_eq!(submitted.task_id, "t-1");
    let batch = Ack::new(None, json!({"task_ids": ["a", "b"]}));
    let batch: BatchSubmitted = batch.result.parse().expect("a batch's document");
    assert_eq!(batch.task_ids, vec!["a".to_string(), "b".to_string()]);
    let empty = Ack::new(None, json!({}));
    let refused = empty
        .result
        .parse::<BatchSubmitted>()
        .expect_err("no task_ids");
    assert_eq!(refused.code, ErrorCode::InvalidMessage);

    let stats = ClusterStats {
        total_devices: 2,
        online_devices: 1,
        health_percentage: 50.0,
        ..ClusterStats::default()
    };
    let ack = Ack::new(None, json!({"cluster_stats": stats}));
    let status: StatusReply = ack.result.parse().expect("a status document");
    assert_eq!(status.cluster_stats, stats);
    let missing = ack.result.parse::<TaskReply>().expect_err("no task");
    assert_eq!(missing.code, ErrorCode::InvalidMessage);
    let mistyped = Ack::new(None, json!({"task_ids": 5}));
    let mistyped = mistyped
        .result
        .parse::<BatchSubmitted>()
        .expect_err("not a list");
    assert_eq!(mistyped.code, ErrorCode::InvalidMessage);

    // A typed reply goes on the wire as the document a client reads back.
    let sent = Ack::reply(
        Some("m-1".into()),
        StatusReply {
            cluster_stats: stats.clone(),
            success: Success,
        },
    );
    let line = Envelope::new(Message::Ack(sent)).to_line();
    let received = Envelope::decode(&line).expect("an ack");
    let Message::Ack(received) = received.message else {
        panic!("decoded {received:?}");
    };
    assert_eq!(received.result.fields()["success"], json!(true));
    let status: StatusReply = received.result.parse().expect("a status document");
    assert_eq!(status.cluster_stats, stats);
}

#[test]
fn ids_are_validated() {
    for good in ["t-1", "task-abc123", "ünï", &"x".repeat(128)] {
        assert_eq!(validate_id("task_id", good), Ok(()), "{good:?}");
    }
    for bad in [
        "",
        "a b",
        "tab\there",
        "nl\n",
        "bell\u{7}",
        &"x".repeat(129),
    ] {
        assert!(validate_id("task_id", bad).is_err(), "{bad:?}");
    }
}
