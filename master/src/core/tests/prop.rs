//! Random sequences of operations against the invariants that must hold
//! after every step.

use super::sim::{gib, FakeWorker, Policy, Reply, Sim};
use crate::core::records::TaskRecord;
use crate::core::{Core, CoreConfig, QueueKey, DEFAULT_DEVICE_LIST, DEFAULT_LIST};
use proptest::prelude::*;
use protocol::message::bytes_to_gib;
use protocol::{
    ClusterStats, DevicePage, DeviceStatus, ErrorCode, Heartbeat, ListDevices, ListTasks, Message,
    Priority, Register, Requirements, ResultStatus, TaskPage, TaskResult, TaskSpec, TaskState,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Short task-life timers, so that random time advances cross backoffs,
/// the master's timeouts and leases.
fn config() -> CoreConfig {
    CoreConfig {
        timeout_grace: Duration::from_secs(2),
        lease_grace: Duration::from_secs(20),
        max_lost_attempts: 3,
        ..CoreConfig::default()
    }
}

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

/// Each worker's fixed profile (the same on every registration), with
/// leases or not.
fn profile(w: usize, leases: bool) -> Register {
    Register {
        leases,
        ..base_profile(w)
    }
}

fn base_profile(w: usize) -> Register {
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
        max_retries: Option<u32>,
        timeout: Option<u8>,
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
        draining: bool,
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
    Retry {
        pick: usize,
    },
    /// A client cancels a task a device holds and queues it again at once.
    CancelRetry {
        pick: usize,
    },
    Restart,
    Storage {
        available: bool,
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
    let max_retries = proptest::option::weighted(0.7, 0..3u32);
    let timeout = proptest::option::weighted(0.3, 1..6u8);
    prop_oneof![
        6 => (0..PRIORITIES.len(), prop_oneof![1 => Just(0usize), 1 => 0..8usize], 0..TYPES.len(), proptest::option::weighted(0.3, 0..4u8), max_retries, timeout)
            .prop_map(|(priority, requirements, kind, client_id, max_retries, timeout)| Op::Submit { priority, requirements, kind, client_id, max_retries, timeout }),
        3 => (w.clone(), policy).prop_map(|(w, policy)| Op::Join { w, policy }),
        1 => w.clone().prop_map(|w| Op::Leave { w }),
        1 => w.clone().prop_map(|w| Op::Goodbye { w }),
        2 => (w.clone(), proptest::bool::weighted(0.1)).prop_map(|(w, draining)| Op::Heartbeat { w, draining }),
        2 => (w.clone(), refusal).prop_map(|(w, refusal)| Op::Answer { w, refusal }),
        4 => (w.clone(), 0..8usize, status).prop_map(|(w, pick, status)| Op::Finish { w, pick, status }),
        2 => (w.clone(), 0..8usize).prop_map(|(w, pick)| Op::Orphan { w, pick }),
        2 => (0..16usize).prop_map(|pick| Op::Cancel { pick }),
        1 => w.prop_map(|w| Op::Drain { w }),
        // Mostly short steps; sometimes long enough for heartbeats,
        // timeouts or leases to expire.
        3 => prop_oneof![3 => 0..3_000u64, 1 => 3_000..20_000u64, 1 => 20_000..40_000u64].prop_map(|ms| Op::Advance { ms }),
        2 => (0..16usize).prop_map(|pick| Op::Retry { pick }),
        1 => (0..8usize).prop_map(|pick| Op::CancelRetry { pick }),
        1 => Just(Op::Restart),
        1 => proptest::bool::weighted(0.6).prop_map(|available| Op::Storage { available }),
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

/// What the checks remember from step to step.
#[derive(Debug, Default)]
struct Model {
    /// Each terminal task as it was first seen terminal; a `task_retry`
    /// is the only way out.
    terminal: HashMap<String, TaskRecord>,
    /// The highest attempt seen of each task.
    attempts: HashMap<String, u32>,
    /// Which workers declare leases.
    leases: [bool; 3],
    /// Which workers keep running a cancelled task until a `Finish`
    /// reports it (a process slow to die).
    slow: [bool; 3],
}

/// The state an attempt's reported end leads to (the default
/// `default_max_retries` is 0).
fn after_attempt(before: &TaskRecord, status: ResultStatus) -> TaskState {
    let max = before.spec.max_retries.unwrap_or(0);
    match status {
        ResultStatus::Completed | ResultStatus::Cancelled => status.task_state(),
        ResultStatus::Failed | ResultStatus::Timeout if before.failures < max => {
            TaskState::Retrying
        }
        _ if max == 0 => status.task_state(),
        _ => TaskState::DeadLetter,
    }
}

/// Worker `id` sends `result`: on its connection, or, while it is away, on
/// a one-shot connection as older workers do. Returns the reply and the
/// task just before and just after the core handled it (before anything
/// that follows, like an assignment to a slot it freed).
fn send_result(sim: &mut Sim, id: &str, result: TaskResult) -> (Reply, TaskRecord, TaskRecord) {
    let task_id = result.task_id.clone();
    let before = sim.task(&task_id).clone();
    let mut after = None;
    let check = |core: &Core| after = Some(core.tasks.by_id[&task_id].record.clone());
    let message = Message::TaskResult(result);
    let reply = if connected(sim, id) {
        let conn = sim.conn_of(id);
        sim.request_checked(conn, Some(id), message, check)
    } else {
        let conn = sim.connect();
        let reply = sim.request_checked(conn, Some(id), message, check);
        sim.disconnect(conn);
        reply
    };
    (reply, before, after.expect("checked"))
}

fn result_of(task_id: &str, attempt: u32, status: ResultStatus) -> TaskResult {
    TaskResult {
        task_id: task_id.to_string(),
        attempt: Some(attempt),
        status,
        execution_time: None,
        result: json!({ "output": "x", "exit_code": 0 }),
        error: None,
    }
}

fn apply(sim: &mut Sim, model: &mut Model, op: &Op) {
    let storage = sim.core.storage_available;
    match *op {
        Op::Submit {
            priority,
            requirements: r,
            kind,
            client_id,
            max_retries,
            timeout,
        } => {
            let spec = TaskSpec {
                task_id: client_id.map(|c| format!("c{c}")),
                priority: PRIORITIES[priority],
                requirements: requirements(r),
                max_retries,
                timeout: timeout.map(f64::from),
                ..TaskSpec::new(TYPES[kind], json!({ "n": r }))
            };
            let existed = spec
                .task_id
                .as_ref()
                .and_then(|id| sim.core.tasks.by_id.get(id))
                .is_some();
            let count = sim.core.tasks.by_id.len();
            let reply = sim.submit_reply(spec);
            if !storage {
                assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
                assert_eq!(sim.core.tasks.by_id.len(), count);
                return;
            }
            assert_eq!(reply.field("created"), json!(!existed));
            // A new task waits for its commit; an existing one may have
            // been committed before a restart, with nothing to wait for.
            assert!(existed || reply.after_batch.is_some());
        }
        Op::Join { w, policy } => {
            let register = profile(w, model.leases[w]);
            if !storage {
                let conn = sim.connect();
                let reply = sim.request_as(conn, Some(WORKERS[w]), Message::Register(register));
                assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
                sim.disconnect(conn);
                return;
            }
            let reply = sim.join_with(WORKERS[w], register, policy);
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
        Op::Heartbeat { w, draining } => {
            let id = WORKERS[w];
            if connected(sim, id) {
                let reply = if draining {
                    sim.heartbeat_status(id, "draining")
                } else {
                    sim.worker_request(id, Message::Heartbeat(Heartbeat::default()))
                };
                assert_eq!(reply.field("success"), json!(true));
                if draining {
                    assert_eq!(sim.device(id).status, DeviceStatus::Draining);
                }
            }
        }
        Op::Answer { w, refusal } => {
            // A cancelled assignment is answered with a result, which the
            // master cannot take while its store fails; the fake worker
            // does not send it again, so it waits.
            if !storage {
                return;
            }
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
            // Whether the worker runs the task's current attempt (it may
            // run one that ended: cancelled, timed out by the master).
            let current = record.device_id.as_deref() == Some(id)
                && record.attempt == attempt
                && matches!(record.state, TaskState::Assigned | TaskState::Running);
            assert!(attempt <= record.attempt, "{record:?}");
            if storage {
                sim.worker_mut(id).running.remove(&task_id);
            }
            let (reply, before, after) = send_result(sim, id, result_of(&task_id, attempt, status));
            if !storage {
                assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
                assert_eq!(after, before, "a refused result changes nothing");
                return;
            }
            assert_eq!(reply.field("recorded"), json!(current), "{before:?}");
            if current {
                assert_eq!(after.state, after_attempt(&before, status), "{before:?}");
            } else {
                assert_eq!(after, before, "a stale result changes nothing");
                let device = &sim.core.registry.devices[id];
                let holds_now = sim.task(&task_id).device_id.as_deref() == Some(id)
                    && matches!(
                        sim.state(&task_id),
                        TaskState::Assigned | TaskState::Running
                    );
                assert!(
                    holds_now || !device.active.contains(&task_id),
                    "the ended attempt's slot is free"
                );
            }
        }
        Op::Orphan { w, pick } => {
            let Some(id) = orphan_holder(sim, w) else {
                return;
            };
            let orphans = &mut sim.worker_mut(id).orphans;
            let (task_id, attempt) = orphans.remove(pick % orphans.len());
            let (reply, before, after) = send_result(
                sim,
                id,
                result_of(&task_id, attempt, ResultStatus::Completed),
            );
            if !storage {
                assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
                assert_eq!(after, before, "a refused result changes nothing");
                return;
            }
            // The attempt is still current when the task went back to the
            // queue and nobody has taken it since: then the late result is
            // the task's result. Otherwise it is stale and changes nothing.
            let still_current = before.state == TaskState::Queued
                && before.attempt == attempt
                && before.device_id.as_deref() == Some(id);
            if still_current {
                assert_eq!(reply.field("recorded"), json!(true));
                assert_eq!(after.state, TaskState::Completed);
            } else {
                assert_eq!(reply.field("recorded"), json!(false));
                assert_eq!(after, before, "a stale result changes nothing");
            }
        }
        Op::Cancel { pick } => {
            let task_id = pick_task(sim, pick);
            let before = sim.core.tasks.by_id.get(&task_id).map(|t| t.record.clone());
            let reply = sim.cancel(&task_id);
            match before {
                _ if !storage => {
                    assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
                    assert_eq!(
                        sim.core.tasks.by_id.get(&task_id).map(|t| &t.record),
                        before.as_ref()
                    );
                }
                None => assert_eq!(reply.code(), ErrorCode::NotFound),
                Some(record) if record.state.is_terminal() => {
                    assert_eq!(reply.code(), ErrorCode::InvalidState)
                }
                Some(_) => {
                    assert_eq!(reply.field("success"), json!(true));
                    assert_eq!(sim.state(&task_id), TaskState::Cancelled);
                }
            }
        }
        Op::Retry { pick } => {
            let task_id = pick_task(sim, pick);
            let before = sim.core.tasks.by_id.get(&task_id).map(|t| t.record.clone());
            let reply = sim.retry(&task_id);
            match before {
                _ if !storage => {
                    assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
                    assert_eq!(
                        sim.core.tasks.by_id.get(&task_id).map(|t| &t.record),
                        before.as_ref()
                    );
                }
                None => assert_eq!(reply.code(), ErrorCode::NotFound),
                Some(record)
                    if record.state.is_terminal() && record.state != TaskState::Completed =>
                {
                    assert_eq!(reply.field("success"), json!(true));
                    model.terminal.remove(&task_id);
                    let task = sim.task(&task_id);
                    assert!(!task.state.is_terminal(), "{task:?}");
                    assert_eq!((task.failures, task.lost), (0, 0));
                }
                Some(record) => {
                    assert_eq!(reply.code(), ErrorCode::InvalidState);
                    assert_eq!(sim.task(&task_id), &record);
                }
            }
        }
        Op::CancelRetry { pick } => {
            if !storage {
                return;
            }
            let Some(task_id) = held_task(sim, pick) else {
                return;
            };
            assert_eq!(sim.cancel(&task_id).field("success"), json!(true));
            assert_eq!(sim.retry(&task_id).field("success"), json!(true));
            let task = sim.task(&task_id);
            assert!(!task.state.is_terminal(), "{task:?}");
        }
        Op::Drain { w } => {
            let id = WORKERS[w];
            let known = sim.core.registry.devices.contains_key(id);
            let reply = sim.drain(id);
            if !storage {
                assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
            } else if connected(sim, id) {
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
        Op::Restart => {
            let old = std::mem::replace(sim, Sim::with_config(config()));
            *sim = old.restart();
            set_storage(sim, model, true);
        }
        Op::Storage { available } => set_storage(sim, model, available),
    }
}

/// The store fails or recovers. While it fails, every worker keeps
/// running a task it is told to cancel until a `Finish` reports it: the
/// fake worker does not send a refused result again, as a real one does.
fn set_storage(sim: &mut Sim, model: &Model, available: bool) {
    sim.set_storage(available);
    for (w, id) in WORKERS.into_iter().enumerate() {
        if let Some(worker) = sim.workers.get_mut(id) {
            worker.slow_cancel = !available || model.slow[w];
        }
    }
}

/// The `w`-th (modulo) worker with results of lost attempts to send.
fn orphan_holder(sim: &Sim, w: usize) -> Option<&'static str> {
    let with_orphans: Vec<&'static str> = WORKERS
        .into_iter()
        .filter(|id| {
            sim.workers
                .get(*id)
                .is_some_and(|worker| !worker.orphans.is_empty())
        })
        .collect();
    (!with_orphans.is_empty()).then(|| with_orphans[w % with_orphans.len()])
}

/// What an operation may change of the tasks that devices hold.
#[derive(Debug, PartialEq)]
enum Scope {
    /// Only the tasks of this worker.
    Worker(&'static str),
    /// Only this task.
    Task(String),
    /// None (submits, drains, the store failing or recovering).
    None,
    /// Anything (time passing, a restart).
    Any,
}

/// The scope of `op`, decided before it is applied.
fn scope(sim: &Sim, op: &Op) -> Scope {
    let worker = |id: Option<&'static str>| id.map_or(Scope::None, Scope::Worker);
    match *op {
        Op::Join { w, .. } | Op::Leave { w } | Op::Goodbye { w } | Op::Heartbeat { w, .. } => {
            Scope::Worker(WORKERS[w])
        }
        Op::Answer { w, .. } => worker(choose(sim, w, |worker| !worker.pending.is_empty())),
        Op::Finish { w, .. } => worker(choose(sim, w, |worker| !worker.running.is_empty())),
        Op::Orphan { w, .. } => worker(orphan_holder(sim, w)),
        Op::Cancel { pick } | Op::Retry { pick } => Scope::Task(pick_task(sim, pick)),
        Op::CancelRetry { pick } => held_task(sim, pick).map_or(Scope::None, Scope::Task),
        Op::Submit { .. } | Op::Drain { .. } | Op::Storage { .. } => Scope::None,
        Op::Advance { .. } | Op::Restart => Scope::Any,
    }
}

/// Tasks held by a device: id, device, attempt.
fn held(sim: &Sim) -> Vec<(String, String, u32)> {
    sim.core
        .tasks
        .by_id
        .values()
        .map(|task| &task.record)
        .filter(|record| matches!(record.state, TaskState::Assigned | TaskState::Running))
        .filter_map(|record| {
            let device = record.device_id.clone()?;
            Some((record.task_id.clone(), device, record.attempt))
        })
        .collect()
}

/// An operation by or about one worker, or on one task, never takes
/// another device's task from it.
fn check_locality(sim: &Sim, scope: &Scope, before: &[(String, String, u32)]) {
    for (task_id, device, attempt) in before {
        let may_change = match scope {
            Scope::Any => true,
            Scope::Worker(id) => id == device,
            Scope::Task(id) => id == task_id,
            Scope::None => false,
        };
        if may_change {
            continue;
        }
        let record = sim.task(task_id);
        assert!(
            matches!(record.state, TaskState::Assigned | TaskState::Running)
                && record.device_id.as_ref() == Some(device)
                && record.attempt == *attempt,
            "{scope:?} took {task_id} (attempt {attempt}) from {device}: {record:?}"
        );
    }
}

/// The `pick`-th (modulo) task a device holds.
fn held_task(sim: &Sim, pick: usize) -> Option<String> {
    let mut ids: Vec<String> = held(sim).into_iter().map(|(id, _, _)| id).collect();
    ids.sort();
    (!ids.is_empty()).then(|| ids[pick % ids.len()].clone())
}

/// The `pick`-th known task id (modulo), or an unknown one.
fn pick_task(sim: &Sim, pick: usize) -> String {
    let mut ids: Vec<String> = sim.core.tasks.by_id.keys().cloned().collect();
    ids.sort();
    ids.push("nope".into());
    ids[pick % ids.len()].clone()
}

/// The listing as it was made before the index: every task filtered,
/// sorted newest first, older than `before`, cut to `limit`.
fn listed_by_scan(
    core: &Core,
    state: Option<TaskState>,
    before: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let below = before.map(|id| (core.tasks.by_id[id].record.seq, id.to_string()));
    let mut matching: Vec<(u64, String)> = core
        .tasks
        .by_id
        .values()
        .filter(|task| state.is_none_or(|s| task.record.state == s))
        .map(|task| (task.record.seq, task.record.task_id.clone()))
        .filter(|key| below.as_ref().is_none_or(|below| key < below))
        .collect();
    matching.sort_unstable_by(|a, b| b.cmp(a));
    matching.into_iter().take(limit).map(|(_, id)| id).collect()
}

fn list(state: Option<TaskState>, limit: Option<usize>, before: Option<String>) -> ListTasks {
    ListTasks {
        state,
        limit,
        before,
    }
}

/// Every listing the index gives equals the scan's, for every filter,
/// limit and cursor, shows summaries of exactly the records, and pages
/// through every matching task once.
fn check_listing(core: &Core) {
    let ids = |page: &TaskPage| -> Vec<String> {
        page.tasks.iter().map(|task| task.task_id.clone()).collect()
    };
    let every = listed_by_scan(core, None, None, usize::MAX);
    let cursors = [
        None,
        every.first(),
        every.get(every.len() / 2),
        every.last(),
    ];
    for state in std::iter::once(None).chain(TaskState::ALL.map(Some)) {
        for before in cursors {
            for limit in [Some(0), Some(1), Some(3), None] {
                let page = core
                    .list_tasks(&list(state, limit, before.cloned()))
                    .expect("a listing");
                let limit = limit.unwrap_or(DEFAULT_LIST);
                let scan = listed_by_scan(core, state, before.map(String::as_str), limit + 1);
                let shown = &scan[..scan.len().min(limit)];
                assert_eq!(
                    ids(&page),
                    shown,
                    "{state:?} before {before:?} limit {limit}"
                );
                assert_eq!(page.count, shown.len());
                let more = scan.len() > limit;
                assert_eq!(page.next_cursor.as_ref(), shown.last().filter(|_| more));
                for view in &page.tasks {
                    let mut full = core.task_view(&view.task_id).expect("a listed task");
                    full.payload = Value::Null;
                    full.result = None;
                    assert_eq!(view, &full, "a listing shows summaries of the records");
                }
            }
        }
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page = core
                .list_tasks(&list(state, Some(2), before))
                .expect("a page");
            paged.extend(ids(&page));
            match page.next_cursor {
                Some(cursor) => before = Some(cursor),
                None => break,
            }
        }
        assert_eq!(
            paged,
            listed_by_scan(core, state, None, usize::MAX),
            "{state:?}"
        );
    }
    let stats = core.cluster_stats();
    for state in TaskState::ALL {
        let count = core
            .tasks
            .by_id
            .values()
            .filter(|t| t.record.state == state)
            .count();
        assert_eq!(stats.tasks[state.as_str()], count as u64, "{state} count");
    }
}

/// The devices a device listing shows, by scanning every device the way
/// `list_devices` did before it had an index (filter, then newest
/// registered first).
fn devices_by_scan(
    core: &Core,
    role: Option<&str>,
    status: Option<DeviceStatus>,
    before: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let below = before.map(|id| {
        (
            core.registry.devices[id].record.registered_unix_ms,
            id.to_string(),
        )
    });
    let mut matching: Vec<(i64, String)> = core
        .registry
        .devices
        .values()
        .filter(|device| role.is_none_or(|role| device.record.role == role))
        .filter(|device| status.is_none_or(|s| device.record.status == s))
        .map(|device| {
            (
                device.record.registered_unix_ms,
                device.record.device_id.clone(),
            )
        })
        .filter(|key| below.as_ref().is_none_or(|below| key < below))
        .collect();
    matching.sort_unstable_by(|a, b| b.cmp(a));
    matching.into_iter().take(limit).map(|(_, id)| id).collect()
}

/// `status`'s device figures as the master computed them before it kept
/// them up to date: a walk over every connected device.
fn device_stats_by_scan(core: &Core) -> ClusterStats {
    let mut stats = ClusterStats {
        total_devices: core.registry.devices.len() as u32,
        ..ClusterStats::default()
    };
    let (mut memory, mut disk) = (0u64, 0u64);
    for device in core.registry.devices.values().filter(|d| d.conn.is_some()) {
        stats.online_devices += 1;
        let register = &device.record.profile;
        stats.total_resources.cpu_cores += register.cpu_cores.unwrap_or(0);
        memory += register.memory_total_bytes.unwrap_or(0);
        disk += register.disk_total_bytes.unwrap_or(0);
        *stats.by_role.entry(device.record.role.clone()).or_default() += 1;
        let platform = register
            .platform
            .clone()
            .unwrap_or_else(|| "unknown".into());
        *stats.by_platform.entry(platform).or_default() += 1;
    }
    stats.total_resources.memory_gb = bytes_to_gib(memory);
    stats.total_resources.storage_gb = bytes_to_gib(disk);
    stats
}

/// Every device listing the index gives equals the scan's, for every
/// filter, limit and cursor, shows summaries (the full view without the
/// profile), pages through every matching device once; and `status`'s
/// device figures equal a recomputation.
fn check_device_listing(core: &Core) {
    let ids = |page: &DevicePage| -> Vec<String> {
        page.devices
            .iter()
            .map(|device| device.device_id.clone())
            .collect()
    };
    let every = devices_by_scan(core, None, None, None, usize::MAX);
    let cursors = [
        None,
        every.first(),
        every.get(every.len() / 2),
        every.last(),
    ];
    let statuses = [
        None,
        Some(DeviceStatus::Online),
        Some(DeviceStatus::Draining),
        Some(DeviceStatus::Offline),
    ];
    for role in [None, Some("worker"), Some("mobile")] {
        for status in statuses {
            for before in cursors {
                for limit in [Some(0), Some(1), Some(2), None] {
                    let list = ListDevices {
                        role: role.map(str::to_string),
                        status: status.map(|s| s.to_string()),
                        limit,
                        before: before.cloned(),
                    };
                    let page = core.list_devices(&list).expect("a listing");
                    let limit = limit.unwrap_or(DEFAULT_DEVICE_LIST);
                    let scan =
                        devices_by_scan(core, role, status, before.map(String::as_str), limit + 1);
                    let shown = &scan[..scan.len().min(limit)];
                    assert_eq!(ids(&page), shown, "{list:?}");
                    assert_eq!(page.count, shown.len());
                    let more = scan.len() > limit;
                    assert_eq!(page.next_cursor.as_ref(), shown.last().filter(|_| more));
                    for view in &page.devices {
                        let full = core.device_view(&view.device_id).expect("a listed device");
                        assert!(full.profile.is_some() && view.profile.is_none());
                        assert_eq!(
                            view.device_id, full.device_id,
                            "a listing shows summaries of the devices"
                        );
                        let mut summary = full.clone();
                        summary.profile = None;
                        assert_eq!(view, &summary);
                    }
                }
            }
            let mut paged = Vec::new();
            let mut before = None;
            loop {
                let list = ListDevices {
                    role: role.map(str::to_string),
                    status: status.map(|s| s.to_string()),
                    limit: Some(1),
                    before,
                };
                let page = core.list_devices(&list).expect("a page");
                paged.extend(ids(&page));
                match page.next_cursor {
                    Some(cursor) => before = Some(cursor),
                    None => break,
                }
            }
            assert_eq!(
                paged,
                devices_by_scan(core, role, status, None, usize::MAX),
                "{role:?} {status:?}"
            );
        }
    }
    let stats = core.cluster_stats();
    let scan = device_stats_by_scan(core);
    assert_eq!(
        (
            stats.total_devices,
            stats.online_devices,
            &stats.total_resources,
            &stats.by_role,
            &stats.by_platform
        ),
        (
            scan.total_devices,
            scan.online_devices,
            &scan.total_resources,
            &scan.by_role,
            &scan.by_platform
        ),
        "status equals a recomputation over every device"
    );
}

/// Checks every invariant after a step.
fn check_invariants(sim: &Sim, model: &mut Model) {
    let core = &sim.core;
    core.check_indexes();
    check_listing(core);
    check_device_listing(core);
    let keys = core.tasks.queue.keys();
    assert_eq!(keys.len(), core.tasks.queue.len(), "queued tasks");
    let queued: BTreeSet<&str> = keys.iter().map(|key| key.task_id.as_str()).collect();
    for key in &keys {
        let task = core
            .tasks
            .by_id
            .get(&key.task_id)
            .expect("a queued task exists");
        assert_eq!(
            *key,
            QueueKey::of(&task.record),
            "the queue key matches the record"
        );
    }
    let mut waits: HashMap<&str, usize> = HashMap::new();
    for (_, id) in core.retry_timers() {
        *waits.entry(id).or_default() += 1;
    }
    for (id, task) in &core.tasks.by_id {
        let record = &task.record;
        let state = record.state;
        let in_queue = queued.contains(id.as_str());
        let waiting = waits.get(id.as_str()).copied().unwrap_or(0);
        // Held: counted by the device of its current attempt.
        let held = matches!(state, TaskState::Assigned | TaskState::Running)
            && record
                .device_id
                .as_ref()
                .and_then(|d| core.registry.devices.get(d))
                .is_some_and(|device| device.active.contains(id));
        // Every task not finished is in exactly one place, the one its
        // state says; a finished one is in none.
        let places = usize::from(in_queue) + usize::from(held) + waiting;
        assert_eq!(places, usize::from(!state.is_terminal()), "{record:?}");
        match state {
            TaskState::Queued => assert!(in_queue, "{record:?}"),
            TaskState::Assigned | TaskState::Running => assert!(held, "{record:?}"),
            TaskState::Retrying => assert_eq!(waiting, 1, "{record:?}"),
            _ => match model.terminal.get(id) {
                Some(first) => assert_eq!(first, record, "terminal {id} changed"),
                None => {
                    model.terminal.insert(id.clone(), record.clone());
                }
            },
        }
        assert_eq!(
            record.retry_at_unix_ms.is_some(),
            state == TaskState::Retrying,
            "{record:?}"
        );
        assert_eq!(
            record.finished_unix_ms.is_some(),
            state.is_terminal(),
            "{record:?}"
        );
        let seen = model.attempts.entry(id.clone()).or_insert(0);
        assert!(record.attempt >= *seen, "the attempt of {id} went back");
        *seen = record.attempt;
    }
    assert!(
        waits.keys().all(|id| core.tasks.by_id.contains_key(*id)),
        "only known tasks wait"
    );
    assert!(
        model
            .terminal
            .keys()
            .all(|id| core.tasks.by_id.contains_key(id)),
        "no task disappears"
    );
    for device in core.registry.devices.values() {
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
        assert!(
            device
                .active
                .iter()
                .all(|t| core.tasks.by_id.contains_key(t)),
            "{id} counts known tasks"
        );
        if device.conn.is_some() {
            assert!(device.lease_until.is_none(), "{id}");
        } else if !device.active.is_empty() {
            // Only a lease keeps tasks with an offline device.
            assert!(
                device.record.leases && device.lease_until.is_some(),
                "offline {id} holds {:?} without a lease",
                device.active
            );
        }
    }
    // The master's slot accounting matches what the workers really hold.
    for worker in sim.workers.values() {
        let device = core.registry.devices.get(&worker.id);
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
                // The master counts no slot the worker does not use...
                for task_id in &device.active {
                    assert!(
                        holds.contains(task_id),
                        "{} is counted for {task_id}, which it does not hold",
                        worker.id
                    );
                }
                // ...and every current attempt it holds.
                for (task_id, attempt) in worker
                    .running
                    .iter()
                    .map(|(t, &a)| (t, a))
                    .chain(worker.pending.iter().map(|(t, p)| (t, p.attempt)))
                {
                    let record = &core.tasks.by_id[task_id].record;
                    assert!(attempt <= record.attempt, "{task_id}");
                    let current = record.device_id.as_deref() == Some(worker.id.as_str())
                        && record.attempt == attempt
                        && matches!(record.state, TaskState::Assigned | TaskState::Running);
                    if current {
                        assert!(device.active.contains(task_id), "{task_id}");
                    }
                }
            }
        }
    }
}

fn run(leases: [bool; 3], slow: [bool; 3], ops: &[Op]) {
    let mut sim = Sim::with_config(config());
    let model = &mut Model {
        leases,
        slow,
        ..Model::default()
    };
    for (w, &leases) in leases.iter().enumerate() {
        if leases {
            sim.keep_tasks(WORKERS[w]);
        }
    }
    for op in ops {
        let scope = scope(&sim, op);
        let held = held(&sim);
        apply(&mut sim, model, op);
        check_locality(&sim, &scope, &held);
        if let Op::Join { w, .. } = *op {
            // A worker joining for the first time is slow or not, too.
            let available = sim.core.storage_available;
            if let Some(worker) = sim.workers.get_mut(WORKERS[w]) {
                worker.slow_cancel = !available || model.slow[w];
            }
        }
        check_invariants(&sim, model);
    }
    // And the database agrees with the core at the end.
    for (id, task) in &sim.core.tasks.by_id {
        assert_eq!(sim.db.tasks.get(id), Some(&task.record), "stored {id}");
    }
    for (id, device) in &sim.core.registry.devices {
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
        leases in proptest::array::uniform3(proptest::bool::ANY),
        slow in proptest::array::uniform3(proptest::bool::weighted(0.5)),
        ops in proptest::collection::vec(op(), 1..MAX_OPS),
    ) {
        // Every worker joins first, so most steps have work in flight.
        let joins = policies.into_iter().enumerate().map(|(w, policy)| Op::Join { w, policy });
        let all: Vec<Op> = joins.chain(ops).collect();
        run(leases, slow, &all);
    }
}

/// Pages through the tasks of `state` (all when `None`), `limit` at a
/// time, applying each of `between` (a few random operations) between two
/// pages, and checks what paging promises (see `Core::list_tasks`).
fn page_while_changing(
    history: &[Op],
    between: &[Vec<Op>],
    limit: usize,
    state: Option<TaskState>,
) {
    let mut sim = Sim::with_config(config());
    let model = &mut Model::default();
    let joins = (0..WORKERS.len()).map(|w| Op::Join {
        w,
        policy: Policy::Accept,
    });
    for op in joins.chain(history.iter().cloned()) {
        apply(&mut sim, model, &op);
    }
    let at_start: BTreeMap<String, u64> = sim
        .core
        .tasks
        .by_id
        .iter()
        .map(|(id, task)| (id.clone(), task.record.seq))
        .collect();
    // Tasks in `state` every time a page was asked for: they must be shown.
    let mut always: BTreeSet<String> = at_start.keys().cloned().collect();
    let mut shown: Vec<(u64, String)> = Vec::new();
    let mut before = None;
    let mut between = between.iter();
    loop {
        let in_state = |sim: &Sim, id: &str| state.is_none_or(|s| sim.state(id) == s);
        always.retain(|id| in_state(&sim, id));
        let conn = sim.client();
        let reply = sim.request(conn, Message::ListTasks(list(state, Some(limit), before)));
        let page: TaskPage =
            serde_json::from_value(Value::Object(reply.ack().result.fields().into_owned()))
                .expect("a page");
        assert!(page.tasks.len() <= limit);
        for view in &page.tasks {
            assert!(in_state(&sim, &view.task_id), "{view:?} is not {state:?}");
            assert_eq!(Some(view.state), state.or(Some(view.state)));
            shown.push((sim.task(&view.task_id).seq, view.task_id.clone()));
        }
        let Some(cursor) = page.next_cursor else {
            break;
        };
        assert_eq!(Some(&cursor), page.tasks.last().map(|t| &t.task_id));
        before = Some(cursor);
        for op in between.next().into_iter().flatten() {
            apply(&mut sim, model, op);
        }
    }
    // Newest first, each task once: the keys only go down.
    assert!(
        shown.windows(2).all(|pair| pair[0] > pair[1]),
        "{shown:?} is not strictly newest first"
    );
    let shown: BTreeSet<String> = shown.into_iter().map(|(_, id)| id).collect();
    if state.is_none() {
        // Every task there was at the start, and none submitted since (they
        // are newer than the cursor).
        let expected: BTreeSet<String> = at_start.into_keys().collect();
        assert_eq!(shown, expected);
    } else {
        let missing: Vec<&String> = always.difference(&shown).collect();
        assert!(
            missing.is_empty(),
            "{missing:?} stayed {state:?} but was not shown"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn paging_visits_every_task_once_newest_first_while_tasks_change(
        history in proptest::collection::vec(op(), 1..MAX_OPS),
        between in proptest::collection::vec(proptest::collection::vec(op(), 0..4), 0..30),
        limit in 1..5usize,
        state in proptest::option::weighted(0.6, proptest::sample::select(TaskState::ALL.to_vec())),
    ) {
        page_while_changing(&history, &between, limit, state);
    }
}

fn submit(max_retries: Option<u32>, timeout: Option<u8>) -> Op {
    Op::Submit {
        priority: 1,
        requirements: 0,
        kind: 0,
        client_id: None,
        max_retries,
        timeout,
    }
}

#[test]
fn a_refusal_crossing_a_cancel_keeps_the_books_straight() {
    // The sequence the property test found first, kept as a plain test.
    run(
        [false; 3],
        [false; 3],
        &[
            Op::Join {
                w: 0,
                policy: Policy::Silent,
            },
            submit(None, None),
            Op::Cancel { pick: 0 },
            Op::Answer {
                w: 0,
                refusal: Some(ErrorCode::UnsupportedTaskType),
            },
        ],
    );
}
