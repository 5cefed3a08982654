//! Random sequences of operations against the invariants that must hold
//! after every step.

use super::sim::{gib, FakeWorker, Policy, Sim};
use crate::core::records::TaskRecord;
use crate::core::QueueKey;
use proptest::prelude::*;
use protocol::{
    DeviceStatus, ErrorCode, Message, Priority, Register, Requirements, ResultStatus, TaskResult,
    TaskSpec, TaskState,
};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Longest sequence of operations per case.
const MAX_OPS: usize = 40;

const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
const TYPES: [&str; 3] = ["echo", "shell", "python"];
const PRIORITIES: [Priority; 5] = [
    Priority::LOW,
    Priority::NORMAL,
    Priority::HIGH,
    Priority::URGENT,
    Priority(60),
];

/// Each worker's fixed profile (the same on every registration).
fn profile(w: usize) -> Register {
    match w {
        0 => Register {
            platform: Some("linux".into()),
            architecture: Some("x86_64".into()),
            cpu_cores: Some(4),
            memory_total_bytes: Some(gib(8)),
            slots: Some(2),
            tags: vec!["gpu".into()],
            ..Register::default()
        },
        1 => Register {
            platform: Some("android".into()),
            architecture: Some("arm64".into()),
            role: Some("mobile".into()),
            cpu_cores: Some(8),
            memory_total_bytes: Some(gib(4)),
            slots: Some(1),
            task_types: Some(vec!["echo".into(), "shell".into()]),
            ..Register::default()
        },
        _ => Register {
            platform: Some("linux".into()),
            architecture: Some("aarch64".into()),
            cpu_cores: Some(2),
            memory_total_bytes: Some(gib(2)),
            slots: Some(3),
            ..Register::default()
        },
    }
}

fn requirements(r: usize) -> Requirements {
    let mut requirements = Requirements::default();
    match r {
        0 => {}
        1 => requirements.min_cpu_cores = Some(8),
        2 => requirements.platform = Some("android".into()),
        3 => requirements.architecture = Some("aarch64".into()),
        4 => requirements.tags = vec!["gpu".into()],
        5 => requirements.device_id = Some("w2".into()),
        6 => requirements.min_memory_gb = Some(64.0),
        _ => requirements.role = Some("mobile".into()),
    }
    requirements
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        priority: usize,
        requirements: usize,
        kind: usize,
        client_id: Option<u8>,
    },
    Join {
        w: usize,
        policy: Policy,
    },
    Leave {
        w: usize,
    },
    Goodbye {
        w: usize,
    },
    Heartbeat {
        w: usize,
    },
    Answer {
        w: usize,
        refusal: Option<ErrorCode>,
    },
    Finish {
        w: usize,
        pick: usize,
        status: ResultStatus,
    },
    Orphan {
        w: usize,
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    Drain {
        w: usize,
    },
    Advance {
        ms: u64,
    },
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        4 => Just(Policy::Accept),
        2 => Just(Policy::Silent),
        1 => Just(Policy::Refuse(ErrorCode::UnsupportedTaskType)),
        1 => Just(Policy::Refuse(ErrorCode::NoFreeSlot)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS.len();
    let policy = policy();
    let status = prop_oneof![
        3 => Just(ResultStatus::Completed),
        1 => Just(ResultStatus::Failed),
        1 => Just(ResultStatus::Timeout),
        1 => Just(ResultStatus::Cancelled),
    ];
    let refusal = prop_oneof![
        2 => Just(None),
        1 => Just(Some(ErrorCode::UnsupportedTaskType)),
        1 => Just(Some(ErrorCode::NoFreeSlot)),
    ];
    prop_oneof![
        6 => (0..PRIORITIES.len(), 0..8usize, 0..TYPES.len(), proptest::option::weighted(0.3, 0..4u8))
            .prop_map(|(priority, requirements, kind, client_id)| Op::Submit { priority, requirements, kind, client_id }),
        3 => (w.clone(), policy).prop_map(|(w, policy)| Op::Join { w, policy }),
        1 => w.clone().prop_map(|w| Op::Leave { w }),
        1 => w.clone().prop_map(|w| Op::Goodbye { w }),
        2 => w.clone().prop_map(|w| Op::Heartbeat { w }),
        2 => (w.clone(), refusal).prop_map(|(w, refusal)| Op::Answer { w, refusal }),
        4 => (w.clone(), 0..8usize, status).prop_map(|(w, pick, status)| Op::Finish { w, pick, status }),
        2 => (w.clone(), 0..8usize).prop_map(|(w, pick)| Op::Orphan { w, pick }),
        2 => (0..16usize).prop_map(|pick| Op::Cancel { pick }),
        1 => w.prop_map(|w| Op::Drain { w }),
        // Mostly short steps; sometimes long enough for heartbeats to expire.
        2 => prop_oneof![3 => 0..3_000u64, 1 => 3_000..20_000u64].prop_map(|ms| Op::Advance { ms }),
    ]
}

fn connected(sim: &Sim, id: &str) -> bool {
    sim.workers.get(id).is_some_and(|w| w.conn.is_some())
}

/// The `w`-th (modulo) connected worker for which `wanted` holds, so
/// that operations which need, say, a running task rarely do nothing.
fn choose(sim: &Sim, w: usize, wanted: impl Fn(&FakeWorker) -> bool) -> Option<&'static str> {
    let candidates: Vec<&'static str> = WORKERS
        .into_iter()
        .filter(|id| {
            sim.workers
                .get(*id)
                .is_some_and(|worker| worker.conn.is_some() && wanted(worker))
        })
        .collect();
    (!candidates.is_empty()).then(|| candidates[w % candidates.len()])
}

fn apply(sim: &mut Sim, op: &Op) {
    match *op {
        Op::Submit {
            priority,
            requirements: r,
            kind,
            client_id,
        } => {
            let spec = TaskSpec {
                task_id: client_id.map(|c| format!("c{c}")),
                priority: PRIORITIES[priority],
                requirements: requirements(r),
                ..TaskSpec::new(TYPES[kind], json!({ "n": r }))
            };
            let existed = spec
                .task_id
                .as_ref()
                .and_then(|id| sim.core.tasks.get(id))
                .is_some();
            let reply = sim.submit_reply(spec);
            assert_eq!(reply.field("created"), json!(!existed));
            assert!(reply.after_batch.is_some());
        }
        Op::Join { w, policy } => {
            let reply = sim.join_with(WORKERS[w], profile(w), policy);
            assert_eq!(reply.field("success"), json!(true));
        }
        Op::Leave { w } => {
            if connected(sim, WORKERS[w]) {
                sim.leave(WORKERS[w]);
            }
        }
        Op::Goodbye { w } => {
            if connected(sim, WORKERS[w]) {
                assert_eq!(sim.goodbye(WORKERS[w]).field("success"), json!(true));
            }
        }
        Op::Heartbeat { w } => {
            if connected(sim, WORKERS[w]) {
                assert_eq!(sim.heartbeat(WORKERS[w]).field("success"), json!(true));
            }
        }
        Op::Answer { w, refusal } => {
            if let Some(id) = choose(sim, w, |worker| !worker.pending.is_empty()) {
                sim.answer(id, refusal);
            }
        }
        Op::Finish { w, pick, status } => {
            let Some(id) = choose(sim, w, |worker| !worker.running.is_empty()) else {
                return;
            };
            let running = &sim.worker(id).running;
            let (task_id, attempt) = running
                .iter()
                .nth(pick % running.len())
                .map(|(t, &a)| (t.clone(), a))
                .unwrap();
            let record = sim.task(&task_id).clone();
            // What the worker runs, the master counts as its current attempt.
            assert!(
                matches!(record.state, TaskState::Assigned | TaskState::Running),
                "{record:?}"
            );
            assert_eq!(
                (record.device_id.as_deref(), record.attempt),
                (Some(id), attempt)
            );
            let reply = sim.finish(
                id,
                &task_id,
                status,
                json!({ "output": "x", "exit_code": 0 }),
            );
            assert_eq!(reply.field("recorded"), json!(true));
            assert_eq!(sim.state(&task_id), status.task_state());
        }
        Op::Orphan { w, pick } => {
            // Sent on the worker's connection, or, while it is away, on a
            // one-shot connection as older workers do.
            let with_orphans: Vec<&'static str> = WORKERS
                .into_iter()
                .filter(|id| {
                    sim.workers
                        .get(*id)
                        .is_some_and(|worker| !worker.orphans.is_empty())
                })
                .collect();
            if with_orphans.is_empty() {
                return;
            }
            let id = with_orphans[w % with_orphans.len()];
            let orphans = &mut sim.worker_mut(id).orphans;
            let (task_id, attempt) = orphans.remove(pick % orphans.len());
            let before = sim.task(&task_id).clone();
            let result = TaskResult {
                task_id: task_id.clone(),
                attempt: Some(attempt),
                status: ResultStatus::Completed,
                execution_time: None,
                result: json!({ "output": "late" }),
                error: None,
            };
            let reply = if connected(sim, id) {
                sim.worker_request(id, Message::TaskResult(result))
            } else {
                let conn = sim.connect();
                let reply = sim.request_as(conn, Some(id), Message::TaskResult(result));
                sim.disconnect(conn);
                reply
            };
            // The attempt is still current when the task went back to the
            // queue and nobody has taken it since: then the late result is
            // the task's result. Otherwise it is stale and changes nothing.
            let still_current = before.state == TaskState::Queued
                && before.attempt == attempt
                && before.device_id.as_deref() == Some(id);
            if still_current {
                assert_eq!(reply.field("recorded"), json!(true));
                assert_eq!(sim.task(&task_id).state, TaskState::Completed);
            } else {
                assert_eq!(reply.field("recorded"), json!(false));
                assert_eq!(
                    sim.task(&task_id),
                    &before,
                    "a stale result changes nothing"
                );
            }
        }
        Op::Cancel { pick } => {
            let mut ids: Vec<String> = sim.core.tasks.keys().cloned().collect();
            ids.sort();
            ids.push("nope".into());
            let task_id = ids[pick % ids.len()].clone();
            let before = sim.core.tasks.get(&task_id).map(|t| t.record.state);
            let reply = sim.cancel(&task_id);
            match before {
                None => assert_eq!(reply.code(), ErrorCode::NotFound),
                Some(state) if state.is_terminal() => {
                    assert_eq!(reply.code(), ErrorCode::InvalidState)
                }
                Some(_) => {
                    assert_eq!(reply.field("success"), json!(true));
                    assert_eq!(sim.state(&task_id), TaskState::Cancelled);
                }
            }
        }
        Op::Drain { w } => {
            let id = WORKERS[w];
            let known = sim.core.devices.contains_key(id);
            let reply = sim.drain(id);
            if connected(sim, id) {
                assert_eq!(reply.field("success"), json!(true));
            } else if known {
                assert_eq!(reply.code(), ErrorCode::InvalidState);
            } else {
                assert_eq!(reply.code(), ErrorCode::NotFound);
            }
        }
        Op::Advance { ms } => {
            sim.advance(Duration::from_millis(ms));
            sim.tick();
        }
    }
}

/// Checks every invariant; `terminal` remembers each terminal task as it
/// was first seen so later steps cannot change it.
fn check_invariants(sim: &Sim, terminal: &mut HashMap<String, TaskRecord>) {
    let core = &sim.core;
    let queued: BTreeSet<&str> = core.queue.iter().map(|key| key.task_id.as_str()).collect();
    for key in &core.queue {
        let task = core.tasks.get(&key.task_id).expect("a queued task exists");
        assert_eq!(
            *key,
            QueueKey::of(&task.record),
            "the queue key matches the record"
        );
    }
    for (id, task) in &core.tasks {
        let record = &task.record;
        let holders: Vec<&str> = core
            .devices
            .values()
            .filter(|device| device.active.contains(id))
            .map(|device| device.record.device_id.as_str())
            .collect();
        let in_queue = queued.contains(id.as_str());
        match record.state {
            TaskState::Queued => {
                assert!(in_queue, "queued {id} is in the queue");
                assert!(holders.is_empty(), "queued {id} is held by {holders:?}");
            }
            TaskState::Assigned | TaskState::Running => {
                assert!(!in_queue, "held {id} is not queued");
                assert_eq!(
                    holders,
                    [record.device_id.as_deref().expect("a holder")],
                    "{id}"
                );
            }
            _ => {
                assert!(!in_queue, "terminal {id} is not queued");
                // A cancelled attempt holds its slot until the worker
                // reports it; nothing else terminal holds one.
                if !holders.is_empty() {
                    assert_eq!(
                        record.state,
                        TaskState::Cancelled,
                        "{id} held by {holders:?}"
                    );
                    assert_eq!(holders, [record.device_id.as_deref().expect("a holder")]);
                }
                match terminal.get(id) {
                    Some(first) => assert_eq!(first, record, "terminal {id} changed"),
                    None => {
                        terminal.insert(id.clone(), record.clone());
                    }
                }
            }
        }
    }
    assert!(
        terminal.keys().all(|id| core.tasks.contains_key(id)),
        "no task disappears"
    );
    for device in core.devices.values() {
        let id = &device.record.device_id;
        assert!(
            device.active.len() <= device.record.slots as usize,
            "{id} over its slots"
        );
        assert_eq!(
            device.conn.is_none(),
            device.record.status == DeviceStatus::Offline,
            "{id}"
        );
        if device.conn.is_none() {
            assert!(device.active.is_empty(), "offline {id} holds nothing");
        }
    }
    // The master's slot accounting matches what the workers really hold.
    for worker in sim.workers.values() {
        let device = core.devices.get(&worker.id);
        match worker.conn {
            None => assert!(
                device.is_none_or(|d| d.conn.is_none()),
                "{} offline",
                worker.id
            ),
            Some(conn) => {
                let device = device.expect("a connected worker is registered");
                assert_eq!(device.conn, Some(conn));
                let holds: BTreeSet<&String> =
                    worker.running.keys().chain(worker.pending.keys()).collect();
                let counted: BTreeSet<&String> = device.active.iter().collect();
                assert_eq!(counted, holds, "slots of {}", worker.id);
                for (task_id, attempt) in worker
                    .running
                    .iter()
                    .map(|(t, &a)| (t, a))
                    .chain(worker.pending.iter().map(|(t, p)| (t, p.attempt)))
                {
                    assert_eq!(core.tasks[task_id].record.attempt, attempt, "{task_id}");
                }
            }
        }
    }
}

fn run(ops: &[Op]) {
    let mut sim = Sim::new();
    let mut terminal = HashMap::new();
    for op in ops {
        apply(&mut sim, op);
        check_invariants(&sim, &mut terminal);
    }
    // And the database agrees with the core at the end.
    for (id, task) in &sim.core.tasks {
        assert_eq!(sim.db.tasks.get(id), Some(&task.record), "stored {id}");
    }
    for (id, device) in &sim.core.devices {
        assert_eq!(
            sim.db.devices.get(id).map(|d| d.status),
            Some(device.record.status),
            "stored {id}"
        );
    }
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_after_every_step(
        policies in proptest::array::uniform3(policy()),
        ops in proptest::collection::vec(op(), 1..MAX_OPS),
    ) {
        // Every worker joins first, so most steps have work in flight.
        let joins = policies.into_iter().enumerate().map(|(w, policy)| Op::Join { w, policy });
        let all: Vec<Op> = joins.chain(ops).collect();
        run(&all);
    }
}

#[test]
fn a_refusal_crossing_a_cancel_keeps_the_books_straight() {
    // The sequence the property test found first, kept as a plain test.
    run(&[
        Op::Join {
            w: 0,
            policy: Policy::Silent,
        },
        Op::Submit {
            priority: 1,
            requirements: 0,
            kind: 0,
            client_id: None,
        },
        Op::Cancel { pick: 0 },
        Op::Answer {
            w: 0,
            refusal: Some(ErrorCode::UnsupportedTaskType),
        },
    ]);
}
