//! A task's life around its workers: worker loss, heartbeat timeout,
//! reconnects, cancels, idempotent submits.

use super::sim::{prio, register, spec, with_id, Policy, Sim, T0};
use protocol::{
    DeviceStatus, ErrorCode, Event, Message, Priority, ResultStatus, Subscribe, TaskCancel,
    TaskSpec, TaskState, TaskSubmit,
};
use serde_json::json;
use std::time::Duration;

#[test]
fn a_lost_worker_s_tasks_return_to_their_place_in_the_queue() {
    let mut sim = Sim::new();
    sim.add_worker("a", 2);
    let t1 = sim.submit(prio(Priority::NORMAL));
    let t2 = sim.submit(prio(Priority::LOW));
    let t3 = sim.submit(prio(Priority::NORMAL));
    let t4 = sim.submit(prio(Priority::LOW));
    assert_eq!(sim.offered("a"), [t1.clone(), t2.clone()]);
    assert_eq!(sim.queue(), [t3.clone(), t4.clone()]);
    let subscriber = sim.connect();
    sim.request(subscriber, Message::Subscribe(Subscribe::default()));

    sim.leave("a");
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert_eq!(sim.db.devices["a"].status, DeviceStatus::Offline);
    assert!(sim.active("a").is_empty());
    assert_eq!(
        sim.queue(),
        [t1.clone(), t3.clone(), t2.clone(), t4.clone()]
    );
    for id in [&t1, &t2] {
        assert_eq!(sim.state(id), TaskState::Queued);
        assert_eq!(sim.db.tasks[id.as_str()].state, TaskState::Queued);
    }
    assert!(sim
        .events(subscriber)
        .iter()
        .any(|(e, _)| matches!(e, Event::DeviceLeft { device_id, .. } if device_id == "a")));

    sim.add_worker("b", 1);
    assert_eq!(sim.worker("b").offers, [(t1.clone(), 2)]);
    assert_eq!(sim.task(&t1).device_id.as_deref(), Some("b"));
    assert_eq!(sim.queue(), [t3, t2, t4]);
}

#[test]
fn heartbeat_timeout_closes_the_connection_and_requeues() {
    let mut sim = Sim::new();
    let conn = sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    let timeout = sim.config.heartbeat_timeout;
    let deadline = sim.core.next_deadline().expect("a deadline");
    assert_eq!(deadline, T0.monotonic + timeout);

    // Just before the deadline nothing happens.
    sim.advance(timeout - Duration::from_millis(1));
    assert!(sim
        .core
        .next_deadline()
        .is_some_and(|d| d > sim.now.monotonic));
    sim.tick();
    assert!(sim.closed.is_empty());
    assert_eq!(sim.state(&id), TaskState::Running);

    // At the deadline the tick has work: it closes the connection.
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.core.next_deadline(), Some(sim.now.monotonic));
    sim.tick();
    assert_eq!(sim.closed, [conn]);
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert_eq!(sim.state(&id), TaskState::Queued);
    assert_eq!(sim.queue(), [id.as_str()]);
    assert_eq!(sim.core.next_deadline(), None);

    // It comes back and gets the task as attempt 2.
    sim.join("a", register(1));
    assert_eq!(sim.worker("a").offers, [(id.clone(), 1), (id, 2)]);
}

#[test]
fn heartbeats_push_the_deadline() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    let timeout = sim.config.heartbeat_timeout;
    for _ in 0..5 {
        sim.advance(timeout - Duration::from_secs(1));
        sim.heartbeat("a");
        assert_eq!(sim.core.next_deadline(), Some(sim.now.monotonic + timeout));
        sim.tick();
    }
    assert!(sim.closed.is_empty());
    assert_eq!(sim.state(&id), TaskState::Running);
}

#[test]
fn a_reconnect_keeps_the_tasks_the_worker_still_runs() {
    let mut sim = Sim::new();
    let old = sim.add_worker("a", 2);
    let t1 = sim.submit(spec("echo"));
    let t2 = sim.submit(spec("echo"));
    assert_eq!(sim.active("a"), {
        let mut both = vec![t1.clone(), t2.clone()];
        both.sort();
        both
    });
    // The worker lost t2 and reconnects on a new connection before the
    // old one is noticed dead; it lists only t1.
    sim.worker_mut("a").running.remove(&t2);
    let reply = sim.join("a", register(2));
    assert_eq!(reply.field("success"), json!(true));
    let new = sim.conn_of("a");
    assert_ne!(old, new);
    assert_eq!(sim.closed, [old], "the old connection is closed");
    // Its disconnect (reported by the harness) did not take the device
    // offline: the new connection speaks for it.
    assert_eq!(sim.device("a").status, DeviceStatus::Online);
    assert_eq!(sim.core.registry.devices["a"].conn, Some(new));

    let task = sim.task(&t1);
    assert_eq!(
        (task.state, task.attempt, task.device_id.as_deref()),
        (TaskState::Running, 1, Some("a"))
    );
    // t2 went back to the queue and, a slot being free, came back as
    // attempt 2.
    assert_eq!(
        sim.worker("a").offers,
        [(t1.clone(), 1), (t2.clone(), 1), (t2.clone(), 2)]
    );
    assert_eq!(sim.task(&t2).attempt, 2);
    sim.complete("a", &t1);
    sim.complete("a", &t2);
}

#[test]
fn a_reconnect_listing_a_wrong_attempt_or_an_unknown_task_requeues() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let t1 = sim.submit(spec("echo"));
    // It claims attempt 5 of t1, and a task that does not exist.
    sim.worker_mut("a").running.insert(t1.clone(), 5);
    sim.worker_mut("a").running.insert("ghost".into(), 1);
    sim.join("a", register(1));
    // t1 went back to the queue, then to the free slot as attempt 2.
    assert_eq!(sim.worker("a").offers, [(t1.clone(), 1), (t1.clone(), 2)]);
    let task = sim.task(&t1);
    assert_eq!((task.state, task.attempt), (TaskState::Running, 2));
    assert_eq!(sim.active("a"), [t1]);
    assert!(!sim.core.tasks.by_id.contains_key("ghost"));
}

#[test]
fn cancel_a_queued_task_at_once() {
    let mut sim = Sim::new();
    let id = sim.submit(spec("echo"));
    let reply = sim.cancel(&id);
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(reply.field("task")["state"], json!("cancelled"));
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    assert!(sim.queue().is_empty());
    // A worker that joins later never sees it.
    sim.add_worker("a", 1);
    assert!(sim.offered("a").is_empty());
}

#[test]
fn cancel_a_running_task_keeps_the_slot_until_the_worker_reports() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.worker_mut("a").slow_cancel = true;
    let id = sim.submit(spec("sleep"));
    assert_eq!(sim.state(&id), TaskState::Running);
    let reply = sim.cancel(&id);
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    assert_eq!(
        sim.worker("a").cancels,
        [TaskCancel {
            task_id: id.clone(),
            attempt: Some(1)
        }]
    );
    // The process may still run: the slot stays busy.
    let next = sim.submit(spec("echo"));
    assert_eq!(sim.active("a"), [id.as_str()]);
    assert_eq!(sim.queue(), [next.as_str()]);
    // The worker reports the end of the cancelled attempt: nothing is
    // recorded over the cancel, and the slot is free.
    let reply = sim.finish("a", &id, ResultStatus::Cancelled, json!({}));
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    assert_eq!(sim.offered("a"), [id, next]);
}

#[test]
fn cancel_reaches_a_worker_that_reports_at_once() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("sleep"));
    let next = sim.submit(spec("echo"));
    sim.cancel(&id);
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    assert_eq!(sim.offered("a"), [id, next]);
}

#[test]
fn cancel_a_finished_or_unknown_task_is_refused() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    sim.complete("a", &id);
    let before = sim.task(&id).clone();
    let reply = sim.cancel(&id);
    assert_eq!(reply.code(), ErrorCode::InvalidState);
    assert_eq!(sim.task(&id), &before);
    assert_eq!(sim.cancel("nope").code(), ErrorCode::NotFound);
    // Twice is refused too.
    let queued = sim.submit(spec("echo"));
    sim.leave("a");
    sim.cancel(&queued);
    assert_eq!(sim.cancel(&queued).code(), ErrorCode::InvalidState);
}

#[test]
fn a_refusal_after_a_cancel_frees_the_slot() {
    // The worker's refusal of an assignment crosses the master's cancel
    // of the same task: the refusal must still give the slot back, or the
    // device would count a task it never runs for ever.
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.set_policy("a", Policy::Silent);
    let id = sim.submit(spec("echo"));
    assert_eq!(sim.state(&id), TaskState::Assigned);
    sim.cancel(&id);
    assert!(sim.worker("a").pending[&id].cancelled);
    assert_eq!(
        sim.active("a"),
        [id.as_str()],
        "busy until the worker answers"
    );
    sim.answer("a", Some(ErrorCode::NoFreeSlot));
    assert!(sim.active("a").is_empty(), "the refused task holds no slot");
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    sim.set_policy("a", Policy::Accept);
    let pause = sim.config.full_worker_pause;
    sim.advance(pause);
    sim.tick();
    let next = sim.submit(spec("echo"));
    assert_eq!(sim.offered("a"), [id, next]);
}

#[test]
fn an_ack_after_a_cancel_leads_to_a_cancelled_report() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.set_policy("a", Policy::Silent);
    let id = sim.submit(spec("echo"));
    sim.cancel(&id);
    sim.set_policy("a", Policy::Accept);
    sim.answer("a", None);
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    assert!(sim.active("a").is_empty());
}

#[test]
fn submit_with_a_client_id_is_idempotent() {
    let mut sim = Sim::new();
    let first = sim.submit_reply(with_id("job-1"));
    assert_eq!(first.field("task_id"), json!("job-1"));
    assert_eq!(first.field("created"), json!(true));
    let again = sim.submit_reply(TaskSpec {
        priority: Priority::URGENT,
        ..with_id("job-1")
    });
    assert_eq!(again.field("task_id"), json!("job-1"));
    assert_eq!(again.field("created"), json!(false));
    assert_eq!(sim.core.tasks.by_id.len(), 1);
    assert_eq!(
        sim.task("job-1").spec.priority,
        Priority::NORMAL,
        "the first one stands"
    );
    assert_eq!(sim.queue(), ["job-1"]);
    // Still idempotent once it has finished.
    sim.add_worker("a", 1);
    sim.complete("a", "job-1");
    let late = sim.submit_reply(with_id("job-1"));
    assert_eq!(late.field("created"), json!(false));
    assert_eq!(sim.state("job-1"), TaskState::Completed);
    assert_eq!(sim.offered("a"), ["job-1"]);
}

#[test]
fn batch_submit_gives_ids_in_order() {
    let mut sim = Sim::new();
    sim.submit(with_id("old"));
    let conn = sim.client();
    let submit = TaskSubmit {
        tasks: vec![
            with_id("x"),
            spec("echo"),
            with_id("old"),
            with_id("y"),
            with_id("x"),
        ],
        batch: true,
    };
    let reply = sim.request(conn, Message::TaskSubmit(submit));
    let ids = reply.parse::<protocol::BatchSubmitted>().task_ids;
    assert_eq!(ids.len(), 5);
    assert_eq!([&ids[0], &ids[2], &ids[3], &ids[4]], ["x", "old", "y", "x"]);
    assert!(ids[1].starts_with("task-"));
    assert_eq!(reply.field("message"), json!("5 tasks accepted (3 new)"));
    assert_eq!(sim.queue(), ["old", "x", ids[1].as_str(), "y"]);
    assert_eq!(sim.core.tasks.by_id.len(), 4);
}

#[test]
fn generated_ids_are_unique() {
    let mut sim = Sim::new();
    let ids: std::collections::BTreeSet<String> =
        (0..50).map(|_| sim.submit(spec("echo"))).collect();
    assert_eq!(ids.len(), 50);
}

#[test]
fn shutting_down_refuses_new_work() {
    let mut sim = Sim::new();
    sim.core.begin_shutdown();
    let reply = sim.submit_reply(spec("echo"));
    assert_eq!(reply.code(), ErrorCode::ShuttingDown);
    assert!(sim.core.tasks.by_id.is_empty());
}

#[test]
fn a_generated_id_never_replaces_a_client_s_task() {
    // A client chose the very id the master would generate next (the
    // master's ids are `task-<unix ms in hex>-<sequence number>`).
    let mut sim = Sim::new();
    let taken = format!("task-{:x}-2", sim.now.unix_ms);
    sim.submit(TaskSpec {
        payload: json!({"mine": true}),
        ..with_id(&taken)
    });
    let generated = sim.submit(spec("echo"));
    assert_ne!(generated, taken);
    assert_eq!(sim.core.tasks.by_id.len(), 2);
    assert_eq!(sim.task(&taken).spec.payload, json!({"mine": true}));
    assert_eq!(sim.queue(), [taken, generated]);
}

#[test]
fn a_worker_that_reconnects_after_its_loss_was_noticed_keeps_its_task() {
    let mut sim = Sim::new();
    let conn = sim.add_worker("a", 1);
    let t1 = sim.submit(spec("echo"));
    assert_eq!(sim.state(&t1), TaskState::Running);
    sim.disconnect(conn);
    assert_eq!(sim.state(&t1), TaskState::Queued, "requeued at once");
    // The worker kept running attempt 1 while it was away and says so.
    let worker = sim.worker_mut("a");
    worker.orphans.clear();
    worker.running.insert(t1.clone(), 1);
    sim.join("a", register(1));
    let task = sim.task(&t1);
    assert_eq!(
        (task.state, task.attempt, task.device_id.as_deref()),
        (TaskState::Running, 1, Some("a"))
    );
    assert_eq!(sim.active("a"), std::slice::from_ref(&t1));
    assert!(sim.queue().is_empty());
    assert_eq!(
        sim.worker("a").offers,
        [(t1.clone(), 1)],
        "never offered twice"
    );
    assert_eq!(sim.complete("a", &t1).field("recorded"), json!(true));
}

#[test]
fn a_late_result_for_a_requeued_task_nobody_took_is_the_result() {
    let mut sim = Sim::new();
    let conn = sim.add_worker("a", 1);
    let t1 = sim.submit(spec("echo"));
    sim.disconnect(conn);
    let one_shot = sim.connect();
    let result = protocol::TaskResult {
        task_id: t1.clone(),
        attempt: Some(1),
        status: ResultStatus::Completed,
        execution_time: Some(0.1),
        result: json!({ "output": "done while away", "exit_code": 0 }),
        error: None,
    };
    let reply = sim.request_as(one_shot, Some("a"), Message::TaskResult(result));
    assert_eq!(reply.field("recorded"), json!(true));
    assert_eq!(sim.state(&t1), TaskState::Completed);
    assert!(sim.queue().is_empty(), "it left the queue");
}

#[test]
fn a_task_too_large_to_assign_is_refused_at_submit() {
    let mut sim = Sim::with_config(crate::core::CoreConfig {
        max_task_bytes: 200,
        ..crate::core::CoreConfig::default()
    });
    let big = TaskSpec::new("echo", json!({ "message": "x".repeat(300) }));
    let reply = sim.submit_reply(big);
    assert_eq!(reply.code(), ErrorCode::InvalidMessage);
    assert!(sim.queue().is_empty() && sim.core.tasks.by_id.is_empty());
    let small = TaskSpec::new("echo", json!({ "message": "x" }));
    assert_eq!(sim.submit_reply(small).field("success"), json!(true));
}
