//! Every reply the master makes, byte for byte as it goes on the wire: the
//! documents are typed now, and these lines are the ones the master sent
//! when they were still JSON maps (keys sorted), so a typed reply whose
//! fields are declared out of order fails here.

use super::sim::{register, Sim};
use crate::core::{AuthPolicy, CoreConfig, Secrets};
use protocol::auth::{Hello, KeyPair, Method, Nonce, Token, TokenKind, Transcript};
use protocol::{
    DeviceRef, Envelope, ListDevices, ListTasks, Message, Requirements, ResultStatus, Subscribe,
    TaskSpec, TaskSubmit,
};
use serde_json::json;
use std::time::Duration;

/// The reply's line as the wire carries it, without the timestamp the
/// event loop adds.
fn line(envelope: &Envelope) -> String {
    String::from_utf8(envelope.to_line()).expect("UTF-8")
}

fn check(replies: Vec<(&str, String)>, expected: &[(&str, &str)]) {
    for ((name, got), (expected_name, expected)) in replies.iter().zip(expected) {
        assert_eq!(name, expected_name);
        assert_eq!(got.trim_end(), *expected, "the {name} reply changed");
    }
    assert_eq!(replies.len(), expected.len());
}

/// One of each reply, in the order a small cluster's life makes them.
fn replies_of_a_small_cluster() -> Vec<(&'static str, String)> {
    let mut sim = Sim::new();
    let mut replies = Vec::new();
    let registered = sim.join("pi", register(1));
    replies.push(("registered", line(&registered.envelope)));
    let client = sim.client();
    let subscribed = sim.request(client, Message::Subscribe(Subscribe::default()));
    replies.push(("subscribed", line(&subscribed.envelope)));
    let spec = TaskSpec {
        task_id: Some("t-1".into()),
        ..TaskSpec::new("echo", json!({"message": "hi"}))
    };
    replies.push(("submitted", line(&sim.submit_reply(spec.clone()).envelope)));
    replies.push(("submitted again", line(&sim.submit_reply(spec).envelope)));
    // A task with every optional field, so the views show them.
    let picky = TaskSpec {
        timeout: Some(30.0),
        max_retries: Some(2),
        requirements: Requirements {
            min_cpu_cores: Some(8),
            min_memory_gb: Some(1.5),
            platform: Some("linux".into()),
            architecture: Some("aarch64".into()),
            tags: vec!["gpu".into()],
            ..Requirements::default()
        },
        ..TaskSpec::new("sleep", json!(1))
    };
    let batch = sim.request(
        client,
        Message::TaskSubmit(TaskSubmit {
            tasks: vec![TaskSpec::new("echo", json!({})), picky],
            batch: true,
        }),
    );
    replies.push(("batch submitted", line(&batch.envelope)));
    let queued = batch.field("task_ids")[0]
        .as_str()
        .expect("an id")
        .to_string();
    sim.advance(Duration::from_millis(1500));
    let recorded = sim.finish(
        "pi",
        "t-1",
        ResultStatus::Completed,
        json!({"output": "hi", "exit_code": 0}),
    );
    replies.push(("result recorded", line(&recorded.envelope)));
    let discarded = sim.report("pi", "t-1", 1, ResultStatus::Completed);
    replies.push(("result discarded", line(&discarded.envelope)));
    replies.push(("task", line(&sim.task_status("t-1").envelope)));
    let page = sim.request(client, Message::ListTasks(ListTasks::default()));
    replies.push(("task page", line(&page.envelope)));
    let status = sim.request(client, Message::Status);
    replies.push(("status", line(&status.envelope)));
    let devices = sim.request(client, Message::ListDevices(ListDevices::default()));
    replies.push(("device page", line(&devices.envelope)));
    let device = sim.request(
        client,
        Message::DeviceInfo(DeviceRef {
            device_id: "pi".into(),
        }),
    );
    replies.push(("device", line(&device.envelope)));
    replies.push(("cancelled", line(&sim.cancel(&queued).envelope)));
    replies.push(("queued again", line(&sim.retry(&queued).envelope)));
    replies.push(("draining", line(&sim.drain("pi").envelope)));
    replies.push(("goodbye", line(&sim.goodbye("pi").envelope)));
    let revoked = sim.request(
        client,
        Message::RevokeDevice(DeviceRef {
            device_id: "pi".into(),
        }),
    );
    replies.push(("revoked", line(&revoked.envelope)));
    replies
}

/// The two replies of an admin's handshake.
fn replies_of_a_handshake() -> Vec<(&'static str, String)> {
    let secrets = Secrets {
        join: Token::from_bytes(TokenKind::Join, [1; 32]),
        admin: Token::from_bytes(TokenKind::Admin, [2; 32]),
        master_key: KeyPair::from_seed([3; 32]),
    };
    let token = secrets.admin.clone();
    let config = CoreConfig {
        auth: AuthPolicy::default(),
        ..CoreConfig::default()
    };
    let mut sim = Sim::secured(config, Some(secrets));
    let conn = sim.connect_from(Some("192.0.2.50"));
    let hello = Hello {
        method: Method::Admin,
        client_nonce: Nonce([7; 32]),
    };
    let challenge = sim.request(conn, Message::AuthHello(hello.clone()));
    let parsed = protocol::auth::Challenge::from_reply(&challenge.ack().result.fields())
        .expect("a challenge");
    let transcript = Transcript::new(&hello, &parsed);
    let proven = sim.request(conn, Message::AuthProof(transcript.client_mac(&token)));
    vec![
        ("challenge", line(&challenge.envelope)),
        ("authenticated", line(&proven.envelope)),
    ]
}

#[test]
fn every_reply_keeps_its_bytes() {
    let mut replies = replies_of_a_small_cluster();
    replies.extend(replies_of_a_handshake());
    check(
        replies,
        &[
            (
                "registered",
                r#"{"data":{"original_message_id":"m1","result":{"device_id":"pi","heartbeat_interval":5.0,"message":"registered pi","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "subscribed",
                r#"{"data":{"original_message_id":"m2","result":{"message":"subscribed","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "submitted",
                r#"{"data":{"original_message_id":"m3","result":{"created":true,"message":"task accepted","success":true,"task_id":"t-1"}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "submitted again",
                r#"{"data":{"original_message_id":"m4","result":{"created":false,"message":"task already exists","success":true,"task_id":"t-1"}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "batch submitted",
                r#"{"data":{"original_message_id":"m5","result":{"message":"2 tasks accepted (2 new)","success":true,"task_ids":["task-18bcfe56800-3","task-18bcfe56800-4"]}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "result recorded",
                r#"{"data":{"original_message_id":"m6","result":{"message":"result recorded","recorded":true,"success":true,"task_id":"t-1"}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "result discarded",
                r#"{"data":{"original_message_id":"m7","result":{"message":"result discarded: the attempt is no longer current","recorded":false,"success":true,"task_id":"t-1"}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "task",
                r#"{"data":{"original_message_id":"m8","result":{"success":true,"task":{"attempt":1,"device_id":"pi","execution_time":0.5,"exit_code":0,"finished_at":"2023-11-14T22:13:21.500Z","max_retries":0,"payload":{"message":"hi"},"priority":"normal","result":{"exit_code":0,"output":"hi"},"started_at":"2023-11-14T22:13:20.000Z","state":"completed","submitted_at":"2023-11-14T22:13:20.000Z","task_id":"t-1","task_type":"echo"}}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "task page",
                r#"{"data":{"original_message_id":"m9","result":{"count":3,"success":true,"tasks":[{"attempt":0,"max_retries":2,"payload":null,"priority":"normal","requirements":{"architecture":"aarch64","min_cpu_cores":8,"min_memory_gb":1.5,"platform":"linux","tags":["gpu"]},"state":"queued","submitted_at":"2023-11-14T22:13:20.000Z","task_id":"task-18bcfe56800-4","task_type":"sleep","timeout":30.0},{"attempt":1,"device_id":"pi","max_retries":0,"payload":null,"priority":"normal","started_at":"2023-11-14T22:13:21.500Z","state":"running","submitted_at":"2023-11-14T22:13:20.000Z","task_id":"task-18bcfe56800-3","task_type":"echo"},{"attempt":1,"device_id":"pi","execution_time":0.5,"exit_code":0,"finished_at":"2023-11-14T22:13:21.500Z","max_retries":0,"payload":null,"priority":"normal","started_at":"2023-11-14T22:13:20.000Z","state":"completed","submitted_at":"2023-11-14T22:13:20.000Z","task_id":"t-1","task_type":"echo"}]}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "status",
                r#"{"data":{"original_message_id":"m10","result":{"cluster_stats":{"by_platform":{"linux":1},"by_role":{"worker":1},"completed_today":1,"health_percentage":100.0,"online_devices":1,"storage":"ok","tasks":{"assigned":0,"cancelled":0,"completed":1,"dead_letter":0,"failed":0,"queued":1,"retrying":0,"running":1,"timed_out":0},"total_devices":1,"total_resources":{"cpu_cores":4,"memory_gb":8.0,"storage_gb":64.0}},"success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "device page",
                r#"{"data":{"original_message_id":"m11","result":{"count":1,"devices":[{"active_tasks":1,"architecture":"x86_64","device_id":"pi","hardware":{"cpu_count":4,"memory_total_gb":8.0,"storage_total_gb":64.0},"hostname":"host","ip_address":"","last_heartbeat":"2023-11-14T22:13:20.000Z","platform":"linux","role":"worker","slots":1,"status":"online","tags":[],"task_types":[]}],"success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "device",
                r#"{"data":{"original_message_id":"m12","result":{"device":{"active_tasks":1,"architecture":"x86_64","device_id":"pi","hardware":{"cpu_count":4,"memory_total_gb":8.0,"storage_total_gb":64.0},"hostname":"host","ip_address":"","last_heartbeat":"2023-11-14T22:13:20.000Z","platform":"linux","profile":{"device_info":{"architecture":"x86_64","hostname":"host","platform":"linux"},"hardware_specs":{"cpu_cores":4,"disk_space":68719476736,"memory_total":8589934592,"network_interfaces":[]},"slots":1,"tags":[]},"role":"worker","slots":1,"status":"online","tags":[],"task_types":[]},"success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "cancelled",
                r#"{"data":{"original_message_id":"m13","result":{"message":"task task-18bcfe56800-3 cancelled","success":true,"task":{"attempt":1,"device_id":"pi","error":"cancelled by a client","finished_at":"2023-11-14T22:13:21.500Z","max_retries":0,"payload":{},"priority":"normal","started_at":"2023-11-14T22:13:21.500Z","state":"cancelled","submitted_at":"2023-11-14T22:13:20.000Z","task_id":"task-18bcfe56800-3","task_type":"echo"}}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "queued again",
                r#"{"data":{"original_message_id":"m14","result":{"message":"task task-18bcfe56800-3 queued again","success":true,"task":{"attempt":1,"max_retries":0,"payload":{},"priority":"normal","started_at":"2023-11-14T22:13:21.500Z","state":"queued","submitted_at":"2023-11-14T22:13:20.000Z","task_id":"task-18bcfe56800-3","task_type":"echo"}}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "draining",
                r#"{"data":{"original_message_id":"m15","result":{"device":{"active_tasks":1,"architecture":"x86_64","device_id":"pi","hardware":{"cpu_count":4,"memory_total_gb":8.0,"storage_total_gb":64.0},"hostname":"host","ip_address":"","last_heartbeat":"2023-11-14T22:13:20.000Z","platform":"linux","profile":{"device_info":{"architecture":"x86_64","hostname":"host","platform":"linux"},"hardware_specs":{"cpu_cores":4,"disk_space":68719476736,"memory_total":8589934592,"network_interfaces":[]},"slots":1,"tags":[]},"role":"worker","slots":1,"status":"draining","tags":[],"task_types":[]},"message":"device pi is draining","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "goodbye",
                r#"{"data":{"original_message_id":"m16","result":{"message":"goodbye","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "revoked",
                r#"{"data":{"original_message_id":"m17","result":{"device_id":"pi","message":"revoked pi","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "challenge",
                r#"{"data":{"original_message_id":"m1","result":{"challenge":"0100000000000000000000000000000000000000000000000000000000000000","master_key":"ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
            (
                "authenticated",
                r#"{"data":{"original_message_id":"m2","result":{"device_id":null,"master_proof":"40105f32b3cf307bdb41469ce0f89c74df371a2b10bc51d9bfe2c45190f1d3c2","role":"admin","success":true}},"message_type":"ack","sender_id":"main-node","target_id":null}"#,
            ),
        ],
    );
}
