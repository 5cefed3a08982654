//! Nothing is acknowledged before it is durable: every reply that
//! promises a change waits for the batch that holds it; read-only replies
//! wait for nothing.

use super::sim::{register, spec, with_id, Sim};
use crate::core::records::StoreOp;
use protocol::{
    DeviceRef, DeviceStatus, ListDevices, ListTasks, Message, ResultStatus, Subscribe, TaskRef,
    TaskSpec, TaskState, TaskSubmit,
};
use serde_json::json;

#[test]
fn acks_of_changes_wait_for_the_batch_holding_them() {
    let mut sim = Sim::new();

    let reply = sim.join("a", register(1));
    let batch = reply.after_batch.expect("register is durable");
    assert!(sim.batch(batch).ops.iter().any(|op| matches!(
        op,
        StoreOp::PutDevice(d) if d.device_id == "a" && d.status == DeviceStatus::Online
    )));

    // The task is written queued and, a slot being free, assigned in the
    // same batch (the newest write of a batch wins).
    let reply = sim.submit_reply(with_id("t1"));
    let batch = reply.after_batch.expect("submit is durable");
    assert_eq!(sim.batch_task_state(batch, "t1"), Some(TaskState::Assigned));

    // The idempotent repeat writes nothing; it waits for a batch at least
    // as new as the one that holds the task.
    let again = sim.submit_reply(with_id("t1"));
    assert_eq!(again.field("created"), json!(false));
    assert!(again.after_batch.is_some_and(|b| b >= batch));

    let reply = sim.finish("a", "t1", ResultStatus::Completed, json!({ "output": "4" }));
    let batch = reply.after_batch.expect("a result is durable");
    assert!(sim.batch_has_task(batch, "t1", TaskState::Completed));

    let id = sim.submit(spec("echo"));
    let reply = sim.cancel(&id);
    let batch = reply.after_batch.expect("cancel is durable");
    assert!(sim.batch_has_task(batch, &id, TaskState::Cancelled));

    let reply = sim.drain("a");
    let batch = reply.after_batch.expect("drain is durable");
    assert!(sim.batch(batch).ops.iter().any(|op| matches!(
        op,
        StoreOp::PutDevice(d) if d.device_id == "a" && d.status == DeviceStatus::Draining
    )));
}

#[test]
fn batch_submit_waits_for_every_task() {
    let mut sim = Sim::new();
    let conn = sim.client();
    let submit = TaskSubmit {
        tasks: vec![with_id("x"), spec("echo"), with_id("y")],
        batch: true,
    };
    let reply = sim.request(conn, Message::TaskSubmit(submit));
    let batch = reply.after_batch.expect("durable");
    let ids = reply.parse::<protocol::BatchSubmitted>().task_ids;
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert!(
            sim.batch_has_task(batch, id, TaskState::Queued),
            "{id} in batch {batch}"
        );
    }
}

#[test]
fn reads_wait_for_the_newest_batch_and_heartbeat_acks_for_nothing() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    let conn = sim.client();
    let requests = [
        Message::Status,
        Message::ListTasks(ListTasks::default()),
        Message::ListDevices(ListDevices::default()),
        Message::TaskStatus(TaskRef { task_id: id }),
        Message::DeviceInfo(DeviceRef {
            device_id: "a".into(),
        }),
        Message::Subscribe(Subscribe::default()),
    ];
    // A read must not show state that a crash could still take back, so
    // every reply waits for the newest batch; only heartbeat acks, which
    // show nothing, go out at once.
    for request in requests {
        let reply = sim.request(conn, request.clone());
        assert_eq!(reply.field("success"), json!(true), "{request:?}");
        assert!(reply.after_batch.is_some(), "{request:?}");
    }
    assert_eq!(sim.heartbeat("a").after_batch, None);
}

#[test]
fn status_and_listings_answer_in_the_older_shapes() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.join("b", register(1));
    sim.leave("b");
    let conn = sim.client();

    let stats = sim.request(conn, Message::Status).field("cluster_stats");
    assert_eq!(stats["total_devices"], json!(2));
    assert_eq!(stats["online_devices"], json!(1));
    assert_eq!(stats["health_percentage"], json!(50.0));
    assert_eq!(stats["total_resources"]["cpu_cores"], json!(4));
    assert_eq!(stats["by_platform"]["linux"], json!(1));

    let devices = sim
        .request(conn, Message::ListDevices(ListDevices::default()))
        .field("devices");
    let statuses: Vec<(&str, &str)> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    // Newest registered first (registered in the same millisecond: by id,
    // last first).
    assert_eq!(statuses, [("b", "offline"), ("a", "online")]);

    let device = sim
        .request(
            conn,
            Message::DeviceInfo(DeviceRef {
                device_id: "a".into(),
            }),
        )
        .field("device");
    assert_eq!(device["hardware"]["cpu_count"], json!(4));
    assert_eq!(device["hardware"]["memory_total_gb"], json!(8.0));

    let missing = sim.request(
        conn,
        Message::DeviceInfo(DeviceRef {
            device_id: "zz".into(),
        }),
    );
    assert_eq!(missing.code(), protocol::ErrorCode::NotFound);
    let missing = sim.request(
        conn,
        Message::TaskStatus(TaskRef {
            task_id: "zz".into(),
        }),
    );
    assert_eq!(missing.code(), protocol::ErrorCode::NotFound);
}

#[test]
fn list_tasks_filters_by_state_newest_first() {
    let mut sim = Sim::new();
    let first = sim.submit(spec("echo"));
    let second = sim.submit(TaskSpec {
        task_id: Some("second".into()),
        ..spec("echo")
    });
    sim.cancel(&first);
    let conn = sim.client();
    let list = |state: Option<TaskState>| ListTasks {
        state,
        ..ListTasks::default()
    };
    let ids = |reply: super::sim::Reply| -> Vec<String> {
        reply
            .field("tasks")
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = sim.request(conn, Message::ListTasks(list(None)));
    assert_eq!(ids(all), [second.clone(), first.clone()]);
    let queued = sim.request(conn, Message::ListTasks(list(Some(TaskState::Queued))));
    assert_eq!(ids(queued), [second]);
    // A name that is no state is refused as the line is decoded, so the
    // core only ever sees a state.
    let bad = protocol::Envelope::decode(
        br#"{"message_type":"list_tasks","message_id":"q","data":{"state":"sleeping"}}"#,
    )
    .expect_err("no such state");
    assert_eq!(bad.code, protocol::ErrorCode::InvalidMessage);
    assert_eq!(bad.message_id.as_deref(), Some("q"));
}
