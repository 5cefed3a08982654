//! Registration, heartbeats and the heartbeat deadline.

use super::sim::{gib, register, register_json, Sim, T0};
use crate::core::records::StoreOp;
use crate::core::{CoreConfig, Output, Payload};
use protocol::{DeviceStatus, Envelope, ErrorCode, Heartbeat, Message};
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn register_ack_is_held_for_the_batch_take_batch_returns() {
    let mut sim = Sim::new();
    let conn = sim.connect();
    let envelope = Envelope::new(Message::Register(register(2)))
        .from_sender("pi")
        .with_id("r1");
    sim.core.handle_message(sim.now, conn, envelope);
    let mut outputs = Vec::new();
    sim.core.drain_outputs(sim.now, &mut outputs);
    let [Output::Send {
        conn: to,
        payload: Payload::Json(reply),
        after_batch,
        ..
    }] = outputs.as_slice()
    else {
        panic!("one reply, got {outputs:?}");
    };
    assert_eq!(*to, conn);
    let Message::Ack(ack) = &reply.message else {
        panic!("an ack, got {reply:?}");
    };
    assert_eq!(ack.original_message_id.as_deref(), Some("r1"));
    let result = ack.result.fields();
    assert_eq!(result["success"], json!(true));
    assert_eq!(result["heartbeat_interval"], json!(5.0));
    assert!(result["message"].as_str().is_some_and(|m| m.contains("pi")));

    let batch = sim.core.take_batch().expect("the registration is written");
    assert_eq!(*after_batch, Some(batch.id));
    assert!(batch.ops.iter().any(|op| matches!(
        op,
        StoreOp::PutDevice(d) if d.device_id == "pi" && d.slots == 2 && d.status == DeviceStatus::Online
    )));
    assert!(sim.core.take_batch().is_none(), "nothing else to write");
}

#[test]
fn register_without_sender_id_is_invalid_and_changes_nothing() {
    let mut sim = Sim::new();
    let conn = sim.connect();
    let reply = sim.request_as(conn, None, Message::Register(register(1)));
    assert_eq!(reply.code(), ErrorCode::InvalidMessage);
    assert_eq!(reply.after_batch, None);
    assert!(sim.core.registry.devices.is_empty());
    assert!(sim.batches.is_empty());
}

#[test]
fn register_with_a_bad_sender_id_is_invalid() {
    let mut sim = Sim::new();
    let conn = sim.connect();
    let reply = sim.request_as(conn, Some("two words"), Message::Register(register(1)));
    assert_eq!(reply.code(), ErrorCode::InvalidMessage);
    assert!(sim.core.registry.devices.is_empty());
}

#[test]
fn heartbeat_before_register_is_not_registered() {
    let mut sim = Sim::new();
    let conn = sim.connect();
    let reply = sim.request_as(conn, Some("pi"), Message::Heartbeat(Heartbeat::default()));
    assert_eq!(reply.code(), ErrorCode::NotRegistered);
    let reply = sim.request_as(conn, None, Message::Heartbeat(Heartbeat::default()));
    assert_eq!(reply.code(), ErrorCode::NotRegistered);
    assert!(sim.batches.is_empty());
}

#[test]
fn a_connection_speaks_for_one_device() {
    let mut sim = Sim::new();
    let conn = sim.add_worker("a", 1);
    let reply = sim.request_as(conn, Some("b"), Message::Register(register(1)));
    assert_eq!(reply.code(), ErrorCode::InvalidState);
    assert!(!sim.core.registry.devices.contains_key("b"));
}

/// Registers `data` (a register message's JSON `data`) and checks the
/// device the master made of it.
fn check_register(data: Value, expect: (u32, &str, &str, &str, u32)) {
    let (slots, role, platform, architecture, cores) = expect;
    let mut sim = Sim::new();
    let reply = sim.join("d", register_json(data.clone()));
    assert_eq!(reply.field("success"), json!(true), "{data}");
    let device = sim.device("d");
    assert_eq!(device.slots, slots, "slots of {data}");
    assert_eq!(device.role, role, "role of {data}");
    let registered = &sim.core.registry.devices["d"].record.profile;
    assert_eq!(registered.platform.as_deref(), Some(platform), "{data}");
    assert_eq!(
        registered.architecture.as_deref().unwrap_or(""),
        architecture,
        "{data}"
    );
    assert_eq!(registered.cpu_cores, Some(cores), "{data}");
}

#[test]
fn both_register_shapes() {
    // The design's shape: slots default to the cores.
    check_register(
        json!({"device_info":{"hostname":"android-phone","platform":"android","architecture":"aarch64","python_version":"3.11.0","role":"mobile"},
               "hardware_specs":{"cpu_cores":8,"memory_total":8_589_934_592_u64,"disk_space":128_849_018_880_u64,"network_interfaces":["wlan0"]},
               "capabilities":["computational","network_services","mobile_specific"]}),
        (8, "mobile", "android", "aarch64", 8),
    );
    // The design's shape with our own `slots`.
    check_register(
        json!({"device_info":{"platform":"linux","architecture":"x86_64"},
               "hardware_specs":{"cpu_cores":8},"slots":3,"task_types":["echo"]}),
        (3, "worker", "linux", "x86_64", 8),
    );
    // The older flat shape: `max_concurrent_tasks` gives the slots.
    check_register(
        json!({"role":"worker","platform":"linux","hostname":"pi","ip_address":"10.0.0.5","cpu_count":4,
               "memory_total_gb":7.6,"storage_total_gb":58.2,"capabilities":{"computational":["general_compute"]},
               "tags":["linux","worker"],"max_concurrent_tasks":2}),
        (2, "worker", "linux", "", 4),
    );
    // The flat shape without `max_concurrent_tasks`: one slot per core.
    check_register(
        json!({"role":"compute","platform":"linux","cpu_count":4}),
        (4, "compute", "linux", "", 4),
    );
}

#[test]
fn flat_register_keeps_memory_tags_and_address() {
    let mut sim = Sim::new();
    sim.join(
        "pi",
        register_json(json!({"platform":"linux","ip_address":"10.0.0.5","cpu_count":4,
                             "memory_total_gb":8.0,"tags":["linux","worker"],"max_concurrent_tasks":2})),
    );
    let device = sim.device("pi");
    assert_eq!(device.tags, ["linux", "worker"]);
    assert_eq!(device.ip_address, "10.0.0.5");
    assert_eq!(
        sim.core.registry.devices["pi"]
            .record
            .profile
            .memory_total_bytes,
        Some(gib(8))
    );
}

#[test]
fn heartbeat_is_acked_and_not_held() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let reply = sim.heartbeat("a");
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(reply.field("heartbeat_interval"), json!(5.0));
    assert_eq!(reply.after_batch, None);
}

#[test]
fn older_heartbeat_shape_is_accepted() {
    let mut sim = Sim::new();
    let conn = sim.add_worker("a", 1);
    let envelope = Envelope::from_value(json!({
        "message_type": "heartbeat", "sender_id": "a", "message_id": "h1",
        "data": {"metrics": {"cpu_usage": 10.0, "memory_usage": 20.0, "storage_usage": 30.0}}
    }))
    .unwrap();
    sim.core.handle_message(sim.now, conn, envelope);
    sim.drive();
    let metrics = sim.core.registry.devices["a"]
        .metrics
        .clone()
        .expect("metrics kept");
    assert_eq!(metrics.disk_usage, Some(30.0));
}

#[test]
fn next_deadline_is_the_heartbeat_expiry() {
    let mut sim = Sim::new();
    assert_eq!(sim.core.next_deadline(), None, "nothing to wait for");
    sim.add_worker("a", 1);
    let timeout = CoreConfig::default().heartbeat_timeout;
    assert_eq!(sim.core.next_deadline(), Some(T0.monotonic + timeout));
    sim.advance(Duration::from_secs(4));
    sim.heartbeat("a");
    assert_eq!(
        sim.core.next_deadline(),
        Some(T0.monotonic + Duration::from_secs(4) + timeout)
    );
    sim.leave("a");
    assert_eq!(
        sim.core.next_deadline(),
        None,
        "offline devices have no deadline"
    );
}

#[test]
fn heartbeats_keep_a_worker_alive() {
    let mut sim = Sim::new();
    let conn = sim.add_worker("a", 1);
    for _ in 0..10 {
        sim.advance(Duration::from_secs(5));
        sim.tick();
        sim.heartbeat("a");
    }
    assert!(sim.closed.is_empty());
    assert_eq!(sim.device("a").status, DeviceStatus::Online);
    assert_eq!(sim.core.registry.devices["a"].conn, Some(conn));
}

#[test]
fn goodbye_marks_the_device_offline_at_once() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(super::sim::spec("echo"));
    let reply = sim.goodbye("a");
    assert_eq!(reply.field("success"), json!(true));
    let batch = reply.after_batch.expect("durable");
    assert!(sim.batch_has_device(batch, "a"));
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert_eq!(sim.queue(), [id]);
}

#[test]
fn the_reported_address_wins_over_the_peer_address() {
    let mut sim = Sim::new();
    let conn = sim.connect_from(Some("192.168.1.7"));
    sim.request_as(conn, Some("a"), Message::Register(register(1)));
    assert_eq!(sim.device("a").ip_address, "192.168.1.7");
    let conn = sim.connect_from(Some("192.168.1.8"));
    let reported = protocol::Register {
        ip_address: Some("10.0.0.5".into()),
        ..register(1)
    };
    sim.request_as(conn, Some("b"), Message::Register(reported));
    assert_eq!(sim.device("b").ip_address, "10.0.0.5");
    let conn = sim.connect();
    sim.request_as(conn, Some("c"), Message::Register(register(1)));
    assert_eq!(sim.device("c").ip_address, "");
}
