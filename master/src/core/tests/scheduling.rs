//! Priorities, matching, slots and load, draining.

use super::sim::{prio, register, register_json, spec, spec_json, Sim};
use protocol::{DeviceStatus, ErrorCode, Priority, TaskSpec, TaskState};
use serde_json::{json, Value};

/// Completes whatever worker `id` runs until it runs nothing.
fn run_all(sim: &mut Sim, id: &str) {
    while let Some(task) = sim.worker(id).running.keys().next().cloned() {
        sim.complete(id, &task);
    }
}

/// Submits tasks of `priorities` (in that order) to a cluster of one
/// single-slot worker that is busy meanwhile, and checks they run in the
/// order of the indices `expect`.
fn check_order(priorities: &[u8], expect: &[usize]) {
    let mut sim = Sim::new();
    sim.add_worker("w", 1);
    let blocker = sim.submit(spec("echo"));
    let ids: Vec<String> = priorities
        .iter()
        .map(|&p| sim.submit(prio(Priority(p))))
        .collect();
    assert_eq!(
        sim.offered("w"),
        [blocker.as_str()],
        "the busy worker gets nothing more"
    );
    run_all(&mut sim, "w");
    let ran: Vec<String> = sim.offered("w").into_iter().skip(1).collect();
    let expected: Vec<String> = expect.iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(ran, expected, "priorities {priorities:?}");
}

#[test]
fn priorities_then_submission_order() {
    let (low, normal, high, urgent) = (25, 50, 75, 100);
    check_order(&[low, normal, urgent, high, normal], &[2, 3, 1, 4, 0]);
    check_order(&[normal, normal, normal], &[0, 1, 2]);
    check_order(&[low, low, urgent, low], &[2, 0, 1, 3]);
    check_order(&[0, 100, 60, 50, 61], &[1, 4, 2, 3, 0]);
}

#[test]
fn queued_before_any_worker_joins() {
    let mut sim = Sim::new();
    let ids: Vec<String> = [
        Priority::LOW,
        Priority::NORMAL,
        Priority::URGENT,
        Priority::HIGH,
        Priority::NORMAL,
    ]
    .into_iter()
    .map(|p| sim.submit(prio(p)))
    .collect();
    assert_eq!(
        sim.queue(),
        [
            ids[2].as_str(),
            ids[3].as_str(),
            ids[1].as_str(),
            ids[4].as_str(),
            ids[0].as_str()
        ]
    );
    sim.add_worker("w", 1);
    run_all(&mut sim, "w");
    assert_eq!(
        sim.offered("w"),
        [
            ids[2].as_str(),
            ids[3].as_str(),
            ids[1].as_str(),
            ids[4].as_str(),
            ids[0].as_str()
        ]
    );
    assert!(ids.iter().all(|id| sim.state(id) == TaskState::Completed));
}

/// Registers one device (`device`: a register message's `data`) and
/// submits one task (`task`: JSON); checks whether the device gets it.
fn check_match(device: Value, task: Value, expect: bool) {
    let mut sim = Sim::new();
    sim.join("d", register_json(device.clone()));
    let id = sim.submit(spec_json(task.clone()));
    let got = sim.offered("d") == [id.as_str()];
    assert_eq!(got, expect, "device {device} task {task}");
    let state = sim.state(&id);
    assert_eq!(
        state,
        if expect {
            TaskState::Running
        } else {
            TaskState::Queued
        }
    );
}

#[test]
fn matching() {
    let pi = json!({"device_info":{"platform":"linux","architecture":"aarch64","role":"worker"},
                    "hardware_specs":{"cpu_cores":4,"memory_total":4_294_967_296_u64,"disk_space":68_719_476_736_u64},
                    "tags":["gpu","ssd"]});
    let phone = json!({"device_info":{"platform":"android","architecture":"arm64","role":"mobile"},
                       "hardware_specs":{"cpu_cores":8,"memory_total":8_589_934_592_u64},
                       "task_types":["echo","python_eval"]});
    let old = json!({"platform":"linux","cpu_count":2,"memory_total_gb":7.6,"tags":["linux"]});
    let bare = json!({});
    let task = |requirements: Value| json!({"task_type":"echo","requirements":requirements});

    check_match(pi.clone(), task(json!({})), true);
    check_match(bare.clone(), task(json!({})), true);
    // CPU cores.
    check_match(pi.clone(), task(json!({"min_cpu_cores":4})), true);
    check_match(pi.clone(), task(json!({"min_cpu_cores":5})), false);
    check_match(old.clone(), task(json!({"min_cpu_cores":2})), true);
    check_match(bare.clone(), task(json!({"min_cpu_cores":1})), false);
    // Memory and storage, in GiB.
    check_match(pi.clone(), task(json!({"min_memory_gb":4})), true);
    check_match(pi.clone(), task(json!({"min_memory_gb":4.5})), false);
    check_match(old.clone(), task(json!({"min_memory_gb":7.5})), true);
    check_match(old.clone(), task(json!({"min_memory_gb":8})), false);
    check_match(pi.clone(), task(json!({"min_storage_gb":64})), true);
    check_match(pi.clone(), task(json!({"min_storage_gb":65})), false);
    // Platform, any case.
    check_match(pi.clone(), task(json!({"platform":"linux"})), true);
    check_match(pi.clone(), task(json!({"platform":"Linux"})), true);
    check_match(pi.clone(), task(json!({"platform":"android"})), false);
    check_match(bare.clone(), task(json!({"platform":"linux"})), false);
    // Architecture: arm64 and aarch64 are one machine.
    check_match(pi.clone(), task(json!({"architecture":"aarch64"})), true);
    check_match(pi.clone(), task(json!({"architecture":"arm64"})), true);
    check_match(phone.clone(), task(json!({"architecture":"aarch64"})), true);
    check_match(phone.clone(), task(json!({"arch":"ARM64"})), true);
    check_match(pi.clone(), task(json!({"architecture":"x86_64"})), false);
    check_match(old.clone(), task(json!({"architecture":"aarch64"})), false);
    // Role.
    check_match(phone.clone(), task(json!({"role":"mobile"})), true);
    check_match(pi.clone(), task(json!({"role":"mobile"})), false);
    check_match(old.clone(), task(json!({"role":"worker"})), true);
    // Tags: all of them.
    check_match(pi.clone(), task(json!({"tags":["gpu"]})), true);
    check_match(pi.clone(), task(json!({"tags":["gpu","ssd"]})), true);
    check_match(pi.clone(), task(json!({"tags":["gpu","tpu"]})), false);
    check_match(phone.clone(), task(json!({"tags":["gpu"]})), false);
    // Pinning.
    check_match(pi.clone(), task(json!({"device_id":"d"})), true);
    check_match(pi.clone(), task(json!({"device":"d"})), true);
    check_match(pi.clone(), task(json!({"device_id":"e"})), false);
    // Sandbox: at least the level asked for; a device that does not say
    // (an older worker) meets none.
    let with_sandbox = |level: &str| json!({"device_info":{"platform":"linux"},"sandbox":level});
    for (have, want, expect) in [
        ("full", "full", true),
        ("full", "partial", true),
        ("full", "none", true),
        ("partial", "full", false),
        ("partial", "Partial", true),
        ("none", "partial", false),
        ("none", "none", true),
        ("future", "future", true),
        ("future", "full", false),
        ("full", "future", false),
    ] {
        check_match(with_sandbox(have), task(json!({"sandbox":want})), expect);
    }
    check_match(pi.clone(), task(json!({"sandbox":"none"})), false);
    // Everything at once.
    check_match(
        pi.clone(),
        task(
            json!({"min_cpu_cores":2,"min_memory_gb":2,"platform":"linux","architecture":"arm64","role":"worker","tags":["ssd"],"device_id":"d"}),
        ),
        true,
    );
    check_match(
        pi.clone(),
        task(
            json!({"min_cpu_cores":2,"min_memory_gb":2,"platform":"linux","architecture":"arm64","role":"worker","tags":["ssd"],"device_id":"e"}),
        ),
        false,
    );
    // Task types: a device that lists them gets only those; one that does
    // not list them gets anything.
    check_match(phone.clone(), json!({"task_type":"python_eval"}), true);
    check_match(phone.clone(), json!({"task_type":"shell"}), false);
    check_match(pi.clone(), json!({"task_type":"shell"}), true);
    check_match(json!({"task_types":[]}), json!({"task_type":"echo"}), false);
}

#[test]
fn a_task_no_one_can_take_does_not_block_the_queue() {
    let mut sim = Sim::new();
    sim.add_worker("w", 1);
    sim.set_policy("w", super::sim::Policy::Silent);
    let impossible = sim.submit(TaskSpec {
        priority: Priority::URGENT,
        ..spec_json(json!({"task_type":"echo","requirements":{"min_memory_gb":1000}}))
    });
    let normal = sim.submit(spec("echo"));
    assert_eq!(sim.state(&impossible), TaskState::Queued);
    assert_eq!(sim.state(&normal), TaskState::Assigned);
    assert_eq!(sim.offered("w"), [normal.as_str()]);
    // It stays queued, ahead of later tasks, and is never offered.
    let later = sim.submit(spec("echo"));
    assert_eq!(sim.queue(), [impossible.clone(), later.clone()]);
    // A device that can take it arrives and gets it first.
    sim.join("big", {
        let mut r = register(1);
        r.memory_total_bytes = Some(super::sim::gib(2000));
        r
    });
    assert_eq!(sim.offered("big"), [impossible]);
    assert_eq!(sim.queue(), [later]);
}

#[test]
fn slots_and_least_loaded_first() {
    let mut sim = Sim::new();
    sim.add_worker("a", 2);
    sim.add_worker("b", 4);
    let ids: Vec<String> = (0..6).map(|_| sim.submit(spec("echo"))).collect();
    assert_eq!(sim.active("a").len(), 2);
    assert_eq!(sim.active("b").len(), 4);
    // Least loaded by fraction of slots, ties to fewer tasks, then id:
    // a 0/2, b 0/4 → a; a 1/2, b 0/4 → b; a 1/2, b 1/4 → b;
    // a 1/2, b 2/4 → a (fewer tasks); then a is full → b, b.
    assert_eq!(sim.offered("a"), [ids[0].as_str(), ids[3].as_str()]);
    assert_eq!(
        sim.offered("b"),
        [
            ids[1].as_str(),
            ids[2].as_str(),
            ids[4].as_str(),
            ids[5].as_str()
        ]
    );

    // A seventh waits for a free slot.
    let seventh = sim.submit(spec("echo"));
    assert_eq!(sim.queue(), [seventh.as_str()]);
    sim.complete("b", &ids[2]);
    assert_eq!(sim.offered("b").last(), Some(&seventh));
    assert_eq!(sim.task(&seventh).device_id.as_deref(), Some("b"));
    assert!(sim.queue().is_empty());
}

#[test]
fn a_batch_is_spread_by_load() {
    let mut sim = Sim::new();
    sim.add_worker("a", 2);
    sim.add_worker("b", 4);
    let conn = sim.client();
    let submit = protocol::TaskSubmit {
        tasks: (0..7).map(|_| spec("echo")).collect(),
        batch: true,
    };
    let reply = sim.request(conn, protocol::Message::TaskSubmit(submit));
    let ids = reply.parse::<protocol::BatchSubmitted>().task_ids;
    assert_eq!(sim.offered("a"), [ids[0].as_str(), ids[3].as_str()]);
    assert_eq!(
        sim.offered("b"),
        [
            ids[1].as_str(),
            ids[2].as_str(),
            ids[4].as_str(),
            ids[5].as_str()
        ]
    );
    assert_eq!(sim.queue(), [ids[6].clone()]);
}

#[test]
fn a_draining_device_gets_no_new_tasks() {
    let mut sim = Sim::new();
    sim.add_worker("a", 2);
    let running = sim.submit(spec("echo"));
    let reply = sim.drain("a");
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(sim.device("a").status, DeviceStatus::Draining);
    let waiting = sim.submit(spec("echo"));
    assert_eq!(sim.offered("a"), [running.as_str()]);
    assert_eq!(sim.queue(), [waiting.as_str()]);
    // What it runs still finishes, and still it gets nothing.
    sim.complete("a", &running);
    assert_eq!(sim.state(&running), TaskState::Completed);
    assert_eq!(sim.queue(), [waiting.as_str()]);
    // Another device takes the work.
    sim.add_worker("b", 1);
    assert_eq!(sim.offered("b"), [waiting]);
    // Draining an unknown or offline device is refused.
    assert_eq!(sim.drain("zz").code(), ErrorCode::NotFound);
    sim.leave("b");
    assert_eq!(sim.drain("b").code(), ErrorCode::InvalidState);
}

#[test]
fn a_paused_device_gets_work_again_after_the_pause() {
    let mut sim = Sim::new();
    sim.join("a", register(1));
    sim.set_policy("a", super::sim::Policy::Refuse(ErrorCode::NoFreeSlot));
    let id = sim.submit(spec("echo"));
    // Refused for lack of a slot: the device is paused, not excluded.
    assert_eq!(sim.offered("a"), [id.as_str()]);
    assert_eq!(sim.queue(), [id.as_str()]);
    let pause = sim.config.full_worker_pause;
    assert_eq!(sim.core.next_deadline(), Some(sim.now.monotonic + pause));
    sim.set_policy("a", super::sim::Policy::Accept);
    sim.advance(pause / 2);
    sim.tick();
    assert_eq!(sim.offered("a").len(), 1, "still paused");
    sim.advance(pause / 2);
    assert!(sim
        .core
        .next_deadline()
        .is_some_and(|d| d <= sim.now.monotonic));
    sim.tick();
    assert_eq!(sim.worker("a").offers, [(id.clone(), 1), (id.clone(), 2)]);
    assert_eq!(sim.state(&id), TaskState::Running);
}
