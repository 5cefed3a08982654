//! A master restarted from what its batches wrote.

use super::sim::{prio, register, with_id, Policy, Sim};
use protocol::{DeviceStatus, Priority, TaskState};
use serde_json::json;
use std::collections::BTreeMap;

/// A task with a client id and a priority.
fn task(id: &str, priority: Priority) -> protocol::TaskSpec {
    protocol::TaskSpec {
        priority,
        ..with_id(id)
    }
}

fn states(sim: &Sim) -> BTreeMap<String, (TaskState, u32)> {
    sim.core
        .tasks
        .by_id
        .values()
        .map(|t| (t.record.task_id.clone(), (t.record.state, t.record.attempt)))
        .collect()
}

#[test]
fn restart_from_the_database() {
    use Priority as P;
    use TaskState::{Assigned, Cancelled, Completed, Queued, Running};
    let mut sim = Sim::new();
    for (id, priority) in [
        ("t1", P::NORMAL),
        ("t2", P::HIGH),
        ("t3", P::LOW),
        ("t4", P::NORMAL),
        ("t5", P::URGENT),
        ("t6", P::NORMAL),
        ("t7", P::NORMAL),
    ] {
        sim.submit(task(id, priority));
    }
    assert_eq!(sim.queue(), ["t5", "t2", "t1", "t4", "t6", "t7", "t3"]);
    sim.add_worker("a", 2);
    sim.complete("a", "t5");
    sim.set_policy("a", Policy::Silent);
    sim.complete("a", "t2");
    sim.cancel("t7");
    let expect_before: BTreeMap<String, (TaskState, u32)> = [
        ("t1", (Running, 1)),
        ("t2", (Completed, 1)),
        ("t3", (Queued, 0)),
        ("t4", (Assigned, 1)),
        ("t5", (Completed, 1)),
        ("t6", (Queued, 0)),
        ("t7", (Cancelled, 0)),
    ]
    .into_iter()
    .map(|(id, s)| (id.to_string(), s))
    .collect();
    assert_eq!(states(&sim), expect_before);
    assert_eq!(sim.queue(), ["t6", "t3"]);
    let finished = sim.task("t5").clone();
    let max_seq = sim
        .core
        .tasks
        .by_id
        .values()
        .map(|t| t.record.seq)
        .max()
        .unwrap();

    let mut sim = sim.restart();

    // Every acknowledged task is there; what a device held is queued
    // again, in its place; terminal tasks are as they were.
    let expect_after: BTreeMap<String, (TaskState, u32)> = [
        ("t1", (Queued, 1)),
        ("t2", (Completed, 1)),
        ("t3", (Queued, 0)),
        ("t4", (Queued, 1)),
        ("t5", (Completed, 1)),
        ("t6", (Queued, 0)),
        ("t7", (Cancelled, 0)),
    ]
    .into_iter()
    .map(|(id, s)| (id.to_string(), s))
    .collect();
    assert_eq!(states(&sim), expect_after);
    assert_eq!(sim.task("t5"), &finished);
    assert_eq!(sim.queue(), ["t1", "t4", "t6", "t3"]);
    // Devices are offline, and the database says so, as it says the
    // held tasks are queued.
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert_eq!(sim.db.devices["a"].status, DeviceStatus::Offline);
    assert_eq!(sim.db.tasks["t1"].state, Queued);
    assert_eq!(sim.db.tasks["t4"].state, Queued);

    // New work goes after the old work of its priority, and the old ids
    // are still known to the idempotent submit.
    sim.submit(task("t8", P::NORMAL));
    assert!(sim.task("t8").seq > max_seq);
    assert_eq!(sim.queue(), ["t1", "t4", "t6", "t8", "t3"]);
    assert_eq!(
        sim.submit_reply(with_id("t1")).field("created"),
        json!(false)
    );

    // The worker comes back: the held tasks run again as attempt 2, and
    // a late result of attempt 1 is discarded.
    assert_eq!(sim.worker("a").orphans, [("t1".to_string(), 1)]);
    sim.set_policy("a", Policy::Accept);
    sim.join("a", register(2));
    let offers = sim.worker("a").offers.clone();
    assert_eq!(
        offers[offers.len() - 2..],
        [("t1".to_string(), 2), ("t4".to_string(), 2)]
    );
    let stale = protocol::TaskResult {
        task_id: "t1".into(),
        attempt: Some(1),
        status: protocol::ResultStatus::Completed,
        execution_time: None,
        result: json!({}),
        error: None,
    };
    let reply = sim.worker_request("a", protocol::Message::TaskResult(stale));
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!((sim.state("t1"), sim.task("t1").attempt), (Running, 2));
}

#[test]
fn restart_of_an_empty_master() {
    let sim = Sim::new();
    let sim = sim.restart();
    assert!(sim.core.tasks.by_id.is_empty());
    assert!(sim.core.registry.devices.is_empty());
    assert!(sim.batches.is_empty(), "nothing to write");
}

#[test]
fn a_restarted_queue_is_handed_out_in_order() {
    let mut sim = Sim::new();
    let ids: Vec<String> = [
        Priority::LOW,
        Priority::NORMAL,
        Priority::URGENT,
        Priority::NORMAL,
    ]
    .into_iter()
    .map(|p| sim.submit(prio(p)))
    .collect();
    let mut sim = sim.restart();
    sim.add_worker("w", 1);
    while let Some(task) = sim.worker("w").running.keys().next().cloned() {
        sim.complete("w", &task);
    }
    assert_eq!(
        sim.offered("w"),
        [
            ids[2].as_str(),
            ids[1].as_str(),
            ids[3].as_str(),
            ids[0].as_str()
        ]
    );
}
