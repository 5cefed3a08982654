//! A task's life beyond one attempt: retries with backoff, the dead-letter
//! state, `task_retry`, the master's own timeout, leases, draining
//! heartbeats, goodbyes, refusals while the store cannot commit, and
//! backoffs across a restart.

use super::sim::{register, spec, Policy, Sim};
use crate::core::records::TaskRecord;
use crate::core::CoreConfig;
use protocol::{
    DeviceRef, DeviceStatus, ErrorCode, Event, ListDevices, ListTasks, Message, Requirements,
    ResultStatus, Subscribe, TaskCancel, TaskResult, TaskSpec, TaskState, TaskSubmit,
};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// The default settings, with heartbeats that never expire, so that long
/// simulated waits test only the timers under test.
fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_timeout: Duration::from_secs(24 * 3600),
        ..CoreConfig::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An `echo` task with `max_retries`.
fn retries(max_retries: Option<u32>) -> TaskSpec {
    TaskSpec {
        max_retries,
        ..spec("echo")
    }
}

/// An `echo` task with a timeout (seconds) and `max_retries`.
fn timed(timeout: f64, max_retries: Option<u32>) -> TaskSpec {
    TaskSpec {
        timeout: Some(timeout),
        ..retries(max_retries)
    }
}

/// A task no device can take.
fn unplaceable() -> TaskSpec {
    TaskSpec {
        requirements: Requirements {
            device_id: Some("nobody".into()),
            ..Requirements::default()
        },
        ..spec("echo")
    }
}

/// When (monotonic) `task_id` leaves its retry backoff, per the core.
fn retry_due(sim: &Sim, task_id: &str) -> Duration {
    let due: Vec<Duration> = sim
        .core
        .retry_timers()
        .filter(|(_, id)| *id == task_id)
        .map(|(due, _)| due)
        .collect();
    assert_eq!(due.len(), 1, "{task_id} waits once: {due:?}");
    due[0]
}

/// `task_finished` events for `task_id` on `conn`, with their batches.
fn finished_events(sim: &Sim, conn: usize, task_id: &str) -> Vec<(TaskState, Option<u64>)> {
    sim.events(conn)
        .into_iter()
        .filter_map(|(event, after)| match event {
            Event::TaskFinished { task } if task.task_id == task_id => Some((task.state, after)),
            _ => None,
        })
        .collect()
}

fn subscriber(sim: &mut Sim) -> usize {
    let conn = sim.connect();
    let reply = sim.request(conn, Message::Subscribe(Subscribe::default()));
    assert_eq!(reply.field("success"), json!(true));
    conn
}

/// The worker reports `status` for the attempt of `task_id` it runs.
fn end_attempt(sim: &mut Sim, worker: &str, task_id: &str, status: ResultStatus) {
    let reply = sim.finish(worker, task_id, status, json!({ "exit_code": 1 }));
    assert_eq!(reply.field("recorded"), json!(true), "{task_id} recorded");
}

// ----- retries -----

/// A task with `max_retries` (the config's default `default_max_retries`)
/// whose every attempt ends with `status` runs `attempts` times, each
/// after its backoff, and ends `end`.
fn check_retries(
    max_retries: Option<u32>,
    default_max_retries: u32,
    status: ResultStatus,
    attempts: u32,
    end: TaskState,
) {
    let case = format!("{max_retries:?}/{default_max_retries}/{status:?}");
    let mut sim = Sim::with_config(CoreConfig {
        default_max_retries,
        max_retry_backoff: Duration::from_secs(5),
        ..config()
    });
    let events = subscriber(&mut sim);
    sim.add_worker("a", 1);
    let id = sim.submit(retries(max_retries));
    let view = sim.task_status(&id).field("task");
    assert_eq!(
        view["max_retries"],
        json!(max_retries.unwrap_or(default_max_retries)),
        "{case}"
    );
    for attempt in 1..=attempts {
        assert_eq!(
            sim.worker("a").offers.last(),
            Some(&(id.clone(), attempt)),
            "{case}: attempt {attempt} is offered"
        );
        assert_eq!(sim.worker("a").offers.len(), attempt as usize, "{case}");
        end_attempt(&mut sim, "a", &id, status);
        assert!(sim.active("a").is_empty(), "{case}: the slot is free");
        if attempt == attempts {
            break;
        }
        // Retrying, after a backoff between half and all of the doubled
        // base, capped.
        let task = sim.task(&id).clone();
        assert_eq!(task.state, TaskState::Retrying, "{case}: after {attempt}");
        assert_eq!(task.failures, attempt, "{case}");
        assert!(sim.queue().is_empty(), "{case}: not queued while waiting");
        let due = retry_due(&sim, &id);
        let delay = due - sim.now.monotonic;
        let full =
            (sim.config.retry_backoff * 2u32.pow(attempt - 1)).min(sim.config.max_retry_backoff);
        assert!(
            delay >= full / 2 && delay <= full,
            "{case}: retry {attempt} after {delay:?}, full {full:?}"
        );
        let retry_at = task.retry_at_unix_ms.expect("retry_at while retrying");
        assert_eq!(
            retry_at,
            sim.now.unix_ms + delay.as_millis() as i64,
            "{case}: retry_at is the wall-clock image of the backoff"
        );
        let view = sim.task_status(&id).field("task");
        assert_eq!(view["state"], json!("retrying"), "{case}");
        assert_eq!(view["retry_at"], json!(crate::core::rfc3339(retry_at)));
        assert_eq!(
            sim.core.next_deadline(),
            Some(due),
            "{case}: the loop wakes up"
        );
        assert!(
            finished_events(&sim, events, &id).is_empty(),
            "{case}: no task_finished while retrying"
        );
        // Not a moment before the backoff: a tick just before it, even
        // with the wall clock jumping past retry_at, offers nothing.
        sim.advance(delay - ms(1));
        sim.now.unix_ms += 3_600_000;
        sim.tick();
        assert_eq!(sim.state(&id), TaskState::Retrying, "{case}");
        assert_eq!(sim.worker("a").offers.len(), attempt as usize, "{case}");
        // At it, the task is queued and offered again as the next attempt.
        sim.advance(ms(1));
        sim.tick();
        assert_eq!(sim.state(&id), TaskState::Running, "{case}");
        assert_eq!(sim.task(&id).retry_at_unix_ms, None, "{case}");
    }
    let task = sim.task(&id).clone();
    assert_eq!(task.state, end, "{case}");
    assert_eq!(task.attempt, attempts, "{case}");
    assert_eq!(task.finished_unix_ms, Some(sim.now.unix_ms), "{case}");
    assert_eq!(task.retry_at_unix_ms, None, "{case}");
    assert_eq!(sim.core.retry_timers().count(), 0, "{case}");
    assert_eq!(sim.db.tasks[&id], task, "{case}: stored");
    let finished = finished_events(&sim, events, &id);
    assert_eq!(finished.len(), 1, "{case}: one task_finished: {finished:?}");
    let (state, after) = finished[0];
    assert_eq!(state, end, "{case}");
    let batch = after.expect("task_finished waits for a commit");
    assert!(sim.batch_has_task(batch, &id, end), "{case}");
    // Nothing more happens to it.
    sim.advance(Duration::from_secs(600));
    sim.tick();
    assert_eq!(sim.task(&id), &task, "{case}");
    assert_eq!(sim.worker("a").offers.len(), attempts as usize, "{case}");
}

#[test]
fn retries_with_backoff_then_a_terminal_state() {
    use ResultStatus::{Failed, Timeout};
    use TaskState::{DeadLetter, TimedOut};
    // max_retries, default_max_retries, each attempt ends, attempts, end
    check_retries(Some(2), 0, Failed, 3, DeadLetter);
    check_retries(Some(2), 0, Timeout, 3, DeadLetter);
    // No retries asked for: the first failure is final, not dead_letter.
    check_retries(None, 0, Failed, 1, TaskState::Failed);
    check_retries(None, 0, Timeout, 1, TimedOut);
    check_retries(Some(0), 3, Failed, 1, TaskState::Failed);
    // The config's default applies when the task does not say.
    check_retries(None, 1, Failed, 2, DeadLetter);
    check_retries(None, 2, Timeout, 3, DeadLetter);
    check_retries(Some(1), 5, Failed, 2, DeadLetter);
    // Backoffs of 1, 2, 4, then capped at 5 s.
    check_retries(Some(5), 0, Failed, 6, DeadLetter);
}

#[test]
fn a_retry_that_completes_ends_completed() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let id = sim.submit(retries(Some(3)));
    end_attempt(&mut sim, "a", &id, ResultStatus::Failed);
    sim.advance(retry_due(&sim, &id) - sim.now.monotonic);
    sim.tick();
    sim.complete("a", &id);
    let task = sim.task(&id);
    assert_eq!((task.state, task.attempt), (TaskState::Completed, 2));
    assert_eq!(task.retry_at_unix_ms, None);
    assert_eq!(task.result.as_ref().unwrap()["output"], json!("ok"));
}

#[test]
fn backoff_is_jittered_per_task_and_reproducible() {
    let delays = || {
        let mut sim = Sim::with_config(config());
        sim.add_worker("a", 40);
        let ids: Vec<String> = (0..40).map(|_| sim.submit(retries(Some(1)))).collect();
        for id in &ids {
            end_attempt(&mut sim, "a", id, ResultStatus::Failed);
        }
        ids.iter()
            .map(|id| retry_due(&sim, id) - sim.now.monotonic)
            .collect::<Vec<Duration>>()
    };
    let first = delays();
    for delay in &first {
        assert!(*delay >= ms(500) && *delay <= ms(1000), "{delay:?}");
    }
    let distinct: std::collections::BTreeSet<&Duration> = first.iter().collect();
    assert!(distinct.len() > 30, "spread apart: {first:?}");
    assert_eq!(delays(), first, "the same on a second run");
}

// ----- task_retry -----

#[derive(Debug, Clone, Copy, PartialEq)]
enum Before {
    Completed,
    Failed,
    TimedOut,
    CancelledQueued,
    CancelledRunning,
    DeadLetter,
    MasterTimedOut,
    LostTooOften,
    Queued,
    Running,
    Retrying,
}

/// Brings a new task to `before` on worker `a` (1 slot, free afterwards
/// unless the task runs); returns its id.
fn bring_to(sim: &mut Sim, before: Before) -> String {
    match before {
        Before::Completed => {
            let id = sim.submit(retries(Some(1)));
            sim.complete("a", &id);
            id
        }
        Before::Failed | Before::TimedOut => {
            let id = sim.submit(retries(None));
            let status = if before == Before::Failed {
                ResultStatus::Failed
            } else {
                ResultStatus::Timeout
            };
            end_attempt(sim, "a", &id, status);
            id
        }
        Before::CancelledQueued => {
            let id = sim.submit(unplaceable());
            sim.cancel(&id);
            id
        }
        Before::CancelledRunning => {
            let id = sim.submit(retries(None));
            sim.cancel(&id);
            assert!(sim.active("a").is_empty());
            id
        }
        Before::DeadLetter => {
            let id = sim.submit(retries(Some(1)));
            end_attempt(sim, "a", &id, ResultStatus::Failed);
            sim.advance(retry_due(sim, &id) - sim.now.monotonic);
            sim.tick();
            end_attempt(sim, "a", &id, ResultStatus::Failed);
            id
        }
        Before::MasterTimedOut => {
            let id = sim.submit(timed(1.0, None));
            sim.advance(Duration::from_secs(1) + sim.config.timeout_grace);
            sim.tick();
            // The worker stopped it at the master's cancel and reported.
            assert!(sim.active("a").is_empty());
            id
        }
        Before::LostTooOften => {
            let id = sim.submit(retries(None));
            sim.core.tasks.by_id.get_mut(&id).unwrap().record.lost = sim.config.max_lost_attempts;
            sim.worker_mut("a").running.clear();
            sim.join("a", register(1));
            id
        }
        Before::Queued => sim.submit(unplaceable()),
        Before::Running => sim.submit(retries(None)),
        Before::Retrying => {
            let id = sim.submit(retries(Some(1)));
            end_attempt(sim, "a", &id, ResultStatus::Failed);
            id
        }
    }
}

/// `task_retry` on a task in `before`: `Ok(state)` when it is queued
/// again from terminal `state`, else the error code.
fn check_task_retry(before: Before, expect: Result<TaskState, ErrorCode>) {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let id = bring_to(&mut sim, before);
    let was = sim.task(&id).clone();
    let batches = sim.batches.len();
    let reply = sim.retry(&id);
    match expect {
        Err(code) => {
            assert_eq!(reply.code(), code, "{before:?}");
            assert_eq!(sim.task(&id), &was, "{before:?}: unchanged");
            assert_eq!(sim.batches.len(), batches, "{before:?}: nothing written");
        }
        Ok(state) => {
            assert_eq!(was.state, state, "{before:?}");
            assert_eq!(reply.field("success"), json!(true), "{before:?}");
            assert_eq!(reply.field("task")["state"], json!("queued"), "{before:?}");
            assert_eq!(reply.field("task")["task_id"], json!(id));
            let batch = reply.after_batch.expect("the ack waits for a commit");
            // Durably out of its terminal state (queued, or already
            // handed out again in the same batch).
            let stored = sim.batch_task_state(batch, &id).expect("written");
            assert!(!stored.is_terminal(), "{before:?}: {stored:?}");
            // A fresh start: it runs again as the next attempt, at once
            // when it can.
            let task = sim.task(&id).clone();
            assert_eq!((task.failures, task.lost), (0, 0), "{before:?}");
            assert_eq!(task.finished_unix_ms, None, "{before:?}");
            assert_eq!(task.retry_at_unix_ms, None, "{before:?}");
            assert_eq!(task.error, None, "{before:?}");
            if before == Before::CancelledQueued {
                assert_eq!(task.state, TaskState::Queued);
                return;
            }
            assert_eq!(task.state, TaskState::Running, "{before:?}");
            assert_eq!(task.attempt, was.attempt + 1, "{before:?}");
            assert_eq!(
                sim.worker("a").offers.last(),
                Some(&(id.clone(), was.attempt + 1))
            );
            // With a fresh budget: a task that had used up its retries
            // gets them all again.
            let fails_again = if task.spec.max_retries == Some(1) {
                TaskState::Retrying
            } else {
                TaskState::Failed
            };
            end_attempt(&mut sim, "a", &id, ResultStatus::Failed);
            assert_eq!(sim.state(&id), fails_again, "{before:?}");
        }
    }
}

#[test]
fn task_retry_queues_a_finished_task_that_did_not_complete() {
    use TaskState as S;
    check_task_retry(Before::Failed, Ok(S::Failed));
    check_task_retry(Before::TimedOut, Ok(S::TimedOut));
    check_task_retry(Before::CancelledQueued, Ok(S::Cancelled));
    check_task_retry(Before::CancelledRunning, Ok(S::Cancelled));
    check_task_retry(Before::DeadLetter, Ok(S::DeadLetter));
    check_task_retry(Before::MasterTimedOut, Ok(S::TimedOut));
    check_task_retry(Before::LostTooOften, Ok(S::DeadLetter));
    check_task_retry(Before::Completed, Err(ErrorCode::InvalidState));
    check_task_retry(Before::Queued, Err(ErrorCode::InvalidState));
    check_task_retry(Before::Running, Err(ErrorCode::InvalidState));
    check_task_retry(Before::Retrying, Err(ErrorCode::InvalidState));
}

#[test]
fn task_retry_of_an_unknown_task() {
    let mut sim = Sim::new();
    assert_eq!(sim.retry("nope").code(), ErrorCode::NotFound);
    let conn = sim.connect();
    let (text, _) = sim.text(conn, "retry nope");
    assert!(text.contains("no task nope"), "{text}");
}

// ----- task_delete -----

/// `task_delete` on a task in `before`, held in memory or (`evict`) read
/// back from the store: `Ok` when the dead letter is gone for good, else
/// the error code and the task as it was.
fn check_task_delete(before: Before, evict: bool, expect: Result<(), ErrorCode>) {
    let case = format!("{before:?}, evict {evict}");
    let mut sim = Sim::with_config(config());
    sim.evict = evict;
    sim.add_worker("a", 1);
    let id = bring_to(&mut sim, before);
    let was = sim.task_status(&id).field("task");
    let conn = sim.client();
    let reply = sim.request(
        conn,
        Message::TaskDelete(protocol::TaskRef {
            task_id: id.clone(),
        }),
    );
    match expect {
        Err(code) => {
            assert_eq!(reply.code(), code, "{case}");
            assert_eq!(sim.task_status(&id).field("task"), was, "{case}: unchanged");
        }
        Ok(()) => {
            assert_eq!(reply.field("task_id"), json!(id), "{case}");
            assert!(reply.after_batch.is_some(), "{case}: waits for a commit");
            assert!(
                !sim.db.tasks.contains_key(&id),
                "{case}: deleted from the store"
            );
            assert_eq!(sim.task_status(&id).code(), ErrorCode::NotFound, "{case}");
            let status = sim.request(conn, Message::Status);
            assert_eq!(
                status.field("cluster_stats")["tasks"]["dead_letter"],
                json!(0),
                "{case}: not counted"
            );
            let again = sim.request(
                conn,
                Message::TaskDelete(protocol::TaskRef {
                    task_id: id.clone(),
                }),
            );
            assert_eq!(again.code(), ErrorCode::NotFound, "{case}");
        }
    }
    sim.core.check_indexes();
}

#[test]
fn task_delete_deletes_a_dead_letter_and_nothing_else() {
    for evict in [false, true] {
        check_task_delete(Before::DeadLetter, evict, Ok(()));
        check_task_delete(Before::LostTooOften, evict, Ok(()));
        for other in [
            Before::Completed,
            Before::Failed,
            Before::TimedOut,
            Before::CancelledQueued,
            Before::Queued,
            Before::Running,
            Before::Retrying,
        ] {
            check_task_delete(other, evict, Err(ErrorCode::InvalidState));
        }
    }
    let mut sim = Sim::new();
    let conn = sim.client();
    let unknown = sim.request(
        conn,
        Message::TaskDelete(protocol::TaskRef {
            task_id: "nope".into(),
        }),
    );
    assert_eq!(unknown.code(), ErrorCode::NotFound);
}

// ----- the master's own timeout -----

#[test]
fn the_master_times_out_an_attempt_at_its_timeout_plus_grace() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    sim.worker_mut("a").slow_cancel = true;
    let id = sim.submit(timed(5.0, None));
    let due = sim.now.monotonic + Duration::from_secs(5) + sim.config.timeout_grace;
    assert_eq!(sim.core.next_deadline(), Some(due));
    // Wall-clock jumps, forward and back, change nothing.
    for jump in [86_400_000, -2 * 86_400_000, 86_400_000] {
        sim.now.unix_ms += jump;
        sim.tick();
        assert_eq!(sim.state(&id), TaskState::Running);
        assert_eq!(sim.core.next_deadline(), Some(due));
    }
    sim.advance(due - sim.now.monotonic - ms(1));
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Running, "not before");
    assert!(sim.worker("a").cancels.is_empty());

    sim.advance(ms(1));
    sim.tick();
    let task = sim.task(&id).clone();
    assert_eq!(task.state, TaskState::TimedOut);
    assert_eq!(task.finished_unix_ms, Some(sim.now.unix_ms));
    assert!(
        task.error.as_deref().unwrap().contains("timeout"),
        "{task:?}"
    );
    assert_eq!(sim.db.tasks[&id].state, TaskState::TimedOut);
    assert_eq!(
        sim.worker("a").cancels,
        [TaskCancel {
            task_id: id.clone(),
            attempt: Some(1)
        }]
    );
    // The process may still run: the slot stays busy until the worker
    // reports, and its report is fenced.
    let next = sim.submit(spec("echo"));
    assert_eq!(sim.active("a"), [id.as_str()]);
    assert_eq!(sim.queue(), [next.as_str()]);
    let reply = sim.finish("a", &id, ResultStatus::Timeout, json!({ "exit_code": 137 }));
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&id), &task);
    assert_eq!(sim.active("a"), [next.as_str()]);
    assert_eq!(sim.offered("a"), [id, next]);
}

#[test]
fn a_task_without_a_timeout_is_never_timed_out_by_the_master() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    sim.advance(Duration::from_secs(3600));
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Running);
}

#[test]
fn a_result_before_the_master_s_deadline_wins() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let id = sim.submit(timed(5.0, Some(1)));
    sim.advance(Duration::from_secs(14));
    sim.complete("a", &id);
    sim.advance(Duration::from_secs(60));
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Completed);
    assert!(sim.worker("a").cancels.is_empty());
}

#[test]
fn a_master_timeout_with_retries_left_retries() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    sim.worker_mut("a").slow_cancel = true;
    let id = sim.submit(timed(5.0, Some(1)));
    sim.advance(Duration::from_secs(5) + sim.config.timeout_grace);
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Retrying);
    assert_eq!(sim.task(&id).failures, 1);
    assert_eq!(sim.worker("a").cancels.len(), 1);
    // After the backoff it is queued; the worker still holds its slot, so
    // another worker takes it.
    sim.advance(retry_due(&sim, &id) - sim.now.monotonic);
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Queued);
    assert_eq!(sim.active("a"), [id.as_str()]);
    sim.add_worker("b", 1);
    assert_eq!(sim.worker("b").offers, [(id.clone(), 2)]);
    // The old attempt's end is fenced, and frees a's slot.
    let reply = sim.finish("a", &id, ResultStatus::Cancelled, json!({}));
    assert_eq!(reply.field("recorded"), json!(false));
    assert!(sim.active("a").is_empty(), "a's slot is free again");
    let task = sim.task(&id);
    assert_eq!(
        (task.state, task.attempt, task.device_id.as_deref()),
        (TaskState::Running, 2, Some("b"))
    );
    assert_eq!(sim.active("b"), [id.as_str()]);
    // And the second attempt, timing out too, is final.
    sim.advance(Duration::from_secs(5) + sim.config.timeout_grace);
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::DeadLetter);
}

#[test]
fn a_huge_timeout_does_not_overflow_the_clock() {
    let mut sim = Sim::with_config(config());
    // A master that has run for a while.
    sim.advance(Duration::from_secs(100_000));
    sim.add_worker("a", 1);
    let id = sim.submit(timed(18_446_744_073_709_549_568.0, None));
    assert_eq!(sim.state(&id), TaskState::Running);
    sim.advance(Duration::from_secs(3600));
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Running);
}

// ----- leases -----

/// After the worker that holds the task comes back or does not.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// It re-registers (before the lease runs out) listing the task.
    ReturnsListing,
    /// It re-registers without it (it restarted, say).
    ReturnsWithout,
    /// It stays away past the lease.
    StaysAway,
}

/// Worker `a` (with or without leases) runs a task and its connection
/// drops while idle worker `b` is there; then `then`. `held`: the task
/// stays with `a` meanwhile; `expect`: the task's state, attempt, device
/// and lost count in the end.
fn check_lease(leases: bool, then: Then, held: bool, expect: (TaskState, u32, &str, u32)) {
    let case = format!("leases {leases}, {then:?}");
    let mut sim = Sim::with_config(config());
    if leases {
        sim.add_lease_worker("a", 1);
    } else {
        sim.add_worker("a", 1);
    }
    let id = sim.submit(spec("echo"));
    sim.add_worker("b", 1);
    assert!(sim.offered("b").is_empty());
    sim.leave("a");
    assert_eq!(sim.device("a").status, DeviceStatus::Offline, "{case}");
    let task = sim.task(&id).clone();
    if held {
        assert_eq!(
            (
                task.state,
                task.attempt,
                task.device_id.as_deref(),
                task.lost
            ),
            (TaskState::Running, 1, Some("a"), 0),
            "{case}"
        );
        assert_eq!(sim.active("a"), [id.as_str()], "{case}");
        assert!(sim.queue().is_empty(), "{case}");
        assert!(sim.offered("b").is_empty(), "{case}");
        let until = sim.now.monotonic + sim.config.lease_grace;
        assert_eq!(sim.core.next_deadline(), Some(until), "{case}");
        sim.advance(sim.config.lease_grace - ms(1));
        sim.tick();
        assert_eq!(sim.task(&id), &task, "{case}: held to the end of the lease");
        assert!(sim.offered("b").is_empty(), "{case}");
    } else {
        assert!(sim.active("a").is_empty(), "{case}");
        assert_eq!(sim.worker("b").offers, [(id.clone(), 2)], "{case}");
    }
    let rejoin = |sim: &mut Sim| {
        if leases {
            sim.add_lease_worker("a", 1);
        } else {
            sim.add_worker("a", 1);
        }
    };
    match then {
        Then::ReturnsListing => rejoin(&mut sim),
        Then::ReturnsWithout => {
            sim.worker_mut("a").running.clear();
            rejoin(&mut sim);
        }
        Then::StaysAway => {
            sim.advance(ms(1));
            sim.tick();
        }
    }
    let task = sim.task(&id).clone();
    assert_eq!(
        (
            task.state,
            task.attempt,
            task.device_id.as_deref(),
            task.lost
        ),
        (expect.0, expect.1, Some(expect.2), expect.3),
        "{case}"
    );
    assert_eq!(sim.active(expect.2), [id.as_str()], "{case}");
    assert!(sim.queue().is_empty(), "{case}");
    assert!(
        sim.core.registry.devices["a"].lease_until.is_none(),
        "{case}"
    );
    let attempt = task.attempt;
    if attempt == 1 {
        // Kept: it was never offered again, and its result is recorded.
        assert_eq!(sim.worker("a").offers, [(id.clone(), 1)], "{case}");
        assert!(sim.offered("b").is_empty(), "{case}");
        sim.complete("a", &id);
        return;
    }
    // Lost: whatever the old worker reports of attempt 1 now is fenced.
    let before = sim.task(&id).clone();
    let reply = sim.report("a", &id, 1, ResultStatus::Completed);
    assert_eq!(reply.field("recorded"), json!(false), "{case}");
    assert_eq!(sim.task(&id), &before, "{case}");
    sim.complete(expect.2, &id);
}

#[test]
fn leases_hold_tasks_for_a_worker_that_went_away() {
    use TaskState::Running;
    check_lease(true, Then::ReturnsListing, true, (Running, 1, "a", 0));
    // Not listed: that attempt is lost; the next goes to the least loaded
    // worker (a, by name, both being idle).
    check_lease(true, Then::ReturnsWithout, true, (Running, 2, "a", 1));
    check_lease(true, Then::StaysAway, true, (Running, 2, "b", 1));
    // Without leases the task is requeued at once.
    check_lease(false, Then::StaysAway, false, (Running, 2, "b", 1));
    check_lease(false, Then::ReturnsWithout, false, (Running, 2, "b", 1));
}

#[test]
fn a_heartbeat_timeout_starts_the_lease_too() {
    let mut sim = Sim::new();
    let conn = sim.add_lease_worker("a", 1);
    let id = sim.submit(spec("echo"));
    sim.advance(sim.config.heartbeat_timeout);
    sim.tick();
    assert_eq!(sim.closed, [conn]);
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert_eq!(sim.state(&id), TaskState::Running);
    assert_eq!(
        sim.core.next_deadline(),
        Some(sim.now.monotonic + sim.config.lease_grace)
    );
    sim.advance(sim.config.lease_grace);
    sim.tick();
    let task = sim.task(&id);
    assert_eq!((task.state, task.lost), (TaskState::Queued, 1));
    assert_eq!(sim.queue(), [id.as_str()]);
    assert!(sim.active("a").is_empty());
    assert_eq!(sim.core.next_deadline(), None);
}

#[derive(Debug, Clone, Copy)]
enum AfterRestart {
    /// The lease worker re-registers, listing one of its two tasks.
    ReRegisters,
    /// It stays away past the lease.
    StaysAway,
}

fn check_restart_with_leases(after: AfterRestart) {
    let mut sim = Sim::with_config(config());
    sim.add_worker("n", 1);
    let plain = sim.submit(spec("echo"));
    sim.add_lease_worker("a", 2);
    let t1 = sim.submit(spec("echo"));
    let t2 = sim.submit(spec("echo"));
    assert_eq!(sim.task(&plain).device_id.as_deref(), Some("n"));
    assert_eq!(sim.active("a"), [t1.clone(), t2.clone()]);

    let mut sim = sim.restart();

    // The lease worker's tasks stay with it; the other's are requeued.
    for id in [&t1, &t2] {
        let task = sim.task(id);
        assert_eq!(
            (
                task.state,
                task.attempt,
                task.device_id.as_deref(),
                task.lost
            ),
            (TaskState::Running, 1, Some("a"), 0),
            "{after:?}"
        );
    }
    let task = sim.task(&plain);
    assert_eq!((task.state, task.lost), (TaskState::Queued, 1));
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert_eq!(sim.active("a"), [t1.clone(), t2.clone()]);
    let until = sim.now.monotonic + sim.config.lease_grace;
    assert_eq!(sim.core.registry.devices["a"].lease_until, Some(until));
    assert_eq!(sim.core.next_deadline(), Some(until));
    sim.add_worker("b", 3);
    assert_eq!(sim.worker("b").offers, [(plain.clone(), 2)]);

    match after {
        AfterRestart::ReRegisters => {
            sim.advance(sim.config.lease_grace - ms(1));
            sim.tick();
            assert_eq!(sim.state(&t1), TaskState::Running);
            sim.worker_mut("a").running.remove(&t2);
            sim.add_lease_worker("a", 2);
            let task = sim.task(&t1);
            assert_eq!(
                (
                    task.state,
                    task.attempt,
                    task.device_id.as_deref(),
                    task.lost
                ),
                (TaskState::Running, 1, Some("a"), 0)
            );
            // t2 was not listed: lost, and offered again.
            let task = sim.task(&t2);
            assert_eq!(
                (task.state, task.attempt, task.lost),
                (TaskState::Running, 2, 1)
            );
            sim.complete("a", &t1);
            assert_eq!(sim.state(&t1), TaskState::Completed);
        }
        AfterRestart::StaysAway => {
            sim.advance(sim.config.lease_grace);
            sim.tick();
            for id in [&t1, &t2] {
                let task = sim.task(id);
                assert_eq!(
                    (
                        task.state,
                        task.attempt,
                        task.device_id.as_deref(),
                        task.lost
                    ),
                    (TaskState::Running, 2, Some("b"), 1)
                );
            }
            assert!(sim.active("a").is_empty());
            // The worker's late result for attempt 1 is fenced.
            let reply = sim.report("a", &t1, 1, ResultStatus::Completed);
            assert_eq!(reply.field("recorded"), json!(false));
            assert_eq!(sim.state(&t1), TaskState::Running);
        }
    }
}

#[test]
fn after_a_restart_leased_tasks_wait_for_their_worker() {
    check_restart_with_leases(AfterRestart::ReRegisters);
    check_restart_with_leases(AfterRestart::StaysAway);
}

/// How a task loses its worker.
#[derive(Debug, Clone, Copy)]
enum Lose {
    /// A worker without leases disconnects.
    Disconnect,
    /// A lease worker stays away past its lease.
    LeaseExpiry,
    /// A lease worker re-registers without listing it.
    Forgotten,
}

fn check_lost_too_often(lose: Lose) {
    let max = 2;
    let mut sim = Sim::with_config(CoreConfig {
        max_lost_attempts: max,
        ..config()
    });
    let events = subscriber(&mut sim);
    let join = |sim: &mut Sim| match lose {
        Lose::Disconnect => {
            sim.add_worker("a", 1);
        }
        Lose::LeaseExpiry | Lose::Forgotten => {
            sim.add_lease_worker("a", 1);
        }
    };
    join(&mut sim);
    let id = sim.submit(retries(Some(3)));
    for lost in 1..=max + 1 {
        assert_eq!(
            sim.worker("a").offers.last(),
            Some(&(id.clone(), lost)),
            "{lose:?}"
        );
        match lose {
            Lose::Disconnect => sim.leave("a"),
            Lose::LeaseExpiry => {
                sim.leave("a");
                sim.advance(sim.config.lease_grace);
                sim.tick();
                sim.worker_mut("a").running.clear();
            }
            Lose::Forgotten => {
                sim.worker_mut("a").running.clear();
                sim.add_lease_worker("a", 1);
            }
        }
        let task = sim.task(&id).clone();
        assert_eq!(task.lost, lost, "{lose:?}");
        assert_eq!(task.failures, 0, "{lose:?}: losses use no retries");
        if lost <= max {
            assert_ne!(task.state, TaskState::DeadLetter, "{lose:?}");
            if !matches!(lose, Lose::Forgotten) {
                assert_eq!(task.state, TaskState::Queued, "{lose:?}");
                join(&mut sim);
            }
            continue;
        }
        assert_eq!(task.state, TaskState::DeadLetter, "{lose:?}");
        assert!(
            task.error
                .as_deref()
                .is_some_and(|e| e.contains("lost its worker 3 times")),
            "{lose:?}: {task:?}"
        );
        assert_eq!(task.finished_unix_ms, Some(sim.now.unix_ms));
        assert!(sim.active("a").is_empty(), "{lose:?}");
        assert!(sim.queue().is_empty(), "{lose:?}");
        let finished = finished_events(&sim, events, &id);
        assert_eq!(finished.len(), 1, "{lose:?}");
        assert_eq!(finished[0].0, TaskState::DeadLetter);
        assert!(sim.batch_has_task(finished[0].1.unwrap(), &id, TaskState::DeadLetter));
    }
}

#[test]
fn a_task_that_loses_its_worker_too_often_is_dead_lettered() {
    check_lost_too_often(Lose::Disconnect);
    check_lost_too_often(Lose::LeaseExpiry);
    check_lost_too_often(Lose::Forgotten);
}

// ----- draining and goodbye -----

#[test]
fn a_draining_heartbeat_stops_new_work_and_lets_running_tasks_finish() {
    let mut sim = Sim::with_config(config());
    let events = subscriber(&mut sim);
    sim.add_worker("a", 2);
    let running = sim.submit(spec("echo"));
    // Other statuses change nothing.
    for status in ["online", "busy", "idle"] {
        assert_eq!(
            sim.heartbeat_status("a", status).field("success"),
            json!(true)
        );
        assert_eq!(sim.device("a").status, DeviceStatus::Online);
    }
    let reply = sim.heartbeat_status("a", "draining");
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(sim.device("a").status, DeviceStatus::Draining);
    assert_eq!(sim.db.devices["a"].status, DeviceStatus::Draining);
    sim.heartbeat_status("a", "draining");
    let draining = sim
        .events(events)
        .iter()
        .filter(|(e, _)| matches!(e, Event::DeviceDraining { device_id } if device_id == "a"))
        .count();
    assert_eq!(draining, 1, "one device_draining event");

    let waiting = sim.submit(spec("echo"));
    assert_eq!(sim.queue(), [waiting.as_str()]);
    assert_eq!(sim.offered("a"), [running.as_str()]);
    sim.complete("a", &running);
    assert_eq!(sim.state(&running), TaskState::Completed);
    assert_eq!(sim.queue(), [waiting.as_str()], "still no new work");
    assert!(sim.active("a").is_empty());
    // A plain heartbeat does not undo it; registering again does.
    sim.heartbeat("a");
    assert_eq!(sim.device("a").status, DeviceStatus::Draining);
    sim.join("a", register(2));
    assert_eq!(sim.device("a").status, DeviceStatus::Online);
    assert_eq!(sim.offered("a"), [running, waiting]);
}

fn check_goodbye(leases: bool) {
    let mut sim = Sim::with_config(config());
    if leases {
        sim.add_lease_worker("a", 2);
    } else {
        sim.add_worker("a", 2);
    }
    let t1 = sim.submit(spec("echo"));
    let t2 = sim.submit(spec("echo"));
    let reply = sim.goodbye("a");
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(sim.device("a").status, DeviceStatus::Offline);
    assert!(sim.active("a").is_empty(), "leases {leases}");
    assert_eq!(
        sim.core.registry.devices["a"].lease_until, None,
        "leases {leases}"
    );
    for id in [&t1, &t2] {
        let task = sim.task(id);
        assert_eq!(
            (task.state, task.attempt, task.lost),
            (TaskState::Queued, 1, 0),
            "leases {leases}: handed back, not lost"
        );
    }
    assert_eq!(sim.queue(), [t1.clone(), t2.clone()]);
    sim.add_worker("b", 2);
    assert_eq!(sim.worker("b").offers, [(t1, 2), (t2, 2)]);
}

#[test]
fn goodbye_hands_tasks_back_without_counting_them_lost() {
    check_goodbye(true);
    check_goodbye(false);
}

// ----- storage -----

/// Every task record, and each device's status and slots in use.
type Snapshot = (
    HashMap<String, TaskRecord>,
    Vec<(String, DeviceStatus, usize)>,
);

/// Every task and device record, to compare before and after.
fn snapshot(sim: &Sim) -> Snapshot {
    let tasks = sim
        .core
        .tasks
        .by_id
        .iter()
        .map(|(id, t)| (id.clone(), t.record.clone()))
        .collect();
    let devices = sim
        .core
        .registry
        .devices
        .values()
        .map(|d| (d.record.device_id.clone(), d.record.status, d.active.len()))
        .collect();
    (tasks, devices)
}

#[test]
fn while_storage_fails_changes_are_refused_and_reads_go_on() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let running = sim.submit(retries(Some(1)));
    let waiting = sim.submit(spec("echo"));
    // Cancelled before it could run (it waits for a device "b").
    let cancelled = sim.submit(TaskSpec {
        requirements: Requirements {
            device_id: Some("b".into()),
            ..Requirements::default()
        },
        ..spec("echo")
    });
    sim.cancel(&cancelled);
    let result = |attempt| {
        Message::TaskResult(TaskResult {
            task_id: running.clone(),
            attempt: Some(attempt),
            status: ResultStatus::Completed,
            execution_time: None,
            result: json!({ "output": "ok" }),
            error: None,
        })
    };

    sim.set_storage(false);
    let before = snapshot(&sim);
    let batches = sim.batches.len();
    let client = sim.client();
    let b = sim.connect();
    let refused = [
        sim.submit_reply(spec("echo")),
        sim.worker_request("a", result(1)),
        sim.request_as(b, Some("b"), Message::Register(register(1))),
        sim.worker_request("a", Message::Register(register(1))),
        sim.cancel(&waiting),
        sim.retry(&cancelled),
        sim.drain("a"),
    ];
    for (n, reply) in refused.iter().enumerate() {
        assert_eq!(reply.code(), ErrorCode::StorageUnavailable, "request {n}");
    }
    let text_conn = sim.connect();
    for line in ["submit echo", &format!("retry {cancelled}"), "drain a"] {
        let (text, _) = sim.text(text_conn, line);
        assert!(
            text.contains("error: the master cannot save changes"),
            "{line}: {text}"
        );
    }
    assert_eq!(sim.batches.len(), batches, "nothing was written");
    assert_eq!(snapshot(&sim), before, "nothing changed");

    // Reads and heartbeats are answered.
    assert_eq!(sim.heartbeat("a").field("success"), json!(true));
    let task = sim.task_status(&running).field("task");
    assert_eq!(task["state"], json!("running"));
    let reads = [
        Message::Status,
        Message::ListTasks(ListTasks::default()),
        Message::ListDevices(ListDevices::default()),
        Message::DeviceInfo(DeviceRef {
            device_id: "a".into(),
        }),
    ];
    for read in reads {
        let reply = sim.request(client, read);
        assert_eq!(reply.field("success"), json!(true));
    }
    assert_eq!(sim.batches.len(), batches, "nothing was written");
    assert_eq!(snapshot(&sim), before, "nothing changed");

    // Back: everything works again.
    sim.set_storage(true);
    assert_eq!(
        sim.worker_request("a", result(1)).field("recorded"),
        json!(true)
    );
    assert_eq!(sim.state(&running), TaskState::Completed);
    assert_eq!(
        sim.state(&waiting),
        TaskState::Running,
        "a took the next task"
    );
    let reply = sim.request_as(b, Some("b"), Message::Register(register(1)));
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(sim.cancel(&waiting).field("success"), json!(true));
    assert_eq!(sim.retry(&cancelled).field("success"), json!(true));
    assert_eq!(sim.task(&cancelled).device_id.as_deref(), Some("b"));
    let new = sim.submit(spec("echo"));
    assert!(sim.core.tasks.by_id.contains_key(&new));
    assert_eq!(sim.drain("a").field("success"), json!(true));
    assert!(sim.batches.len() > batches);
}

// ----- restart -----

#[test]
fn a_retrying_task_keeps_its_remaining_backoff_across_a_restart() {
    let mut sim = Sim::with_config(CoreConfig {
        retry_backoff: Duration::from_secs(20),
        ..config()
    });
    sim.add_worker("a", 1);
    let id = sim.submit(retries(Some(2)));
    end_attempt(&mut sim, "a", &id, ResultStatus::Failed);
    let remaining = retry_due(&sim, &id) - sim.now.monotonic;
    assert!(remaining >= Duration::from_secs(10), "{remaining:?}");
    sim.advance(Duration::from_secs(4));
    let remaining = remaining - Duration::from_secs(4);

    let mut sim = sim.restart();

    let task = sim.task(&id);
    assert_eq!((task.state, task.failures), (TaskState::Retrying, 1));
    assert!(sim.queue().is_empty());
    // The wall-clock retry_at has millisecond precision.
    let due = retry_due(&sim, &id) - sim.now.monotonic;
    assert!(
        due <= remaining && remaining - due < ms(1),
        "{due:?} vs {remaining:?}"
    );
    sim.add_worker("a", 1);
    sim.advance(due - ms(1));
    sim.tick();
    assert_eq!(sim.state(&id), TaskState::Retrying);
    assert_eq!(sim.worker("a").offers, [(id.clone(), 1)]);
    sim.advance(ms(1));
    sim.tick();
    assert_eq!(sim.worker("a").offers, [(id.clone(), 1), (id.clone(), 2)]);
    assert_eq!(sim.state(&id), TaskState::Running);
}

// ----- attempts that ended stay ended -----

#[test]
fn a_cancelled_backoff_does_not_fire_into_a_later_one() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let id = sim.submit(retries(Some(2)));
    end_attempt(&mut sim, "a", &id, ResultStatus::Failed);
    let first_due = retry_due(&sim, &id);
    sim.advance(ms(200));
    sim.cancel(&id);
    assert_eq!(
        sim.task(&id).retry_at_unix_ms,
        None,
        "cancelled: no retry_at"
    );
    sim.retry(&id);
    assert_eq!(sim.worker("a").offers.last(), Some(&(id.clone(), 2)));
    sim.advance(ms(100));
    end_attempt(&mut sim, "a", &id, ResultStatus::Failed);
    let due = retry_due(&sim, &id);
    assert!(due > first_due);
    sim.advance(first_due - sim.now.monotonic);
    sim.tick();
    assert_eq!(
        sim.state(&id),
        TaskState::Retrying,
        "not before its own backoff"
    );
    sim.advance(due - sim.now.monotonic);
    sim.tick();
    assert_eq!(sim.worker("a").offers.last(), Some(&(id.clone(), 3)));
}

#[test]
fn a_repeated_result_of_an_ended_attempt_is_fenced() {
    // a fails t (attempt 1) and takes u; t's backoff passes while a is
    // busy; a sends t's result again (it never saw the ack, say).
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    let t = sim.submit(retries(Some(1)));
    let u = sim.submit(spec("echo"));
    end_attempt(&mut sim, "a", &t, ResultStatus::Failed);
    assert_eq!(sim.offered("a"), [t.clone(), u.clone()]);
    sim.advance(retry_due(&sim, &t) - sim.now.monotonic);
    sim.tick();
    assert_eq!(sim.state(&t), TaskState::Queued);
    let before = sim.task(&t).clone();
    let reply = sim.report("a", &t, 1, ResultStatus::Failed);
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&t), &before, "the attempt ended already");
    assert_eq!(sim.active("a"), [u.as_str()]);
    // Nor does a worker listing it take it back.
    sim.worker_mut("a").running.insert(t.clone(), 1);
    sim.join("a", register(1));
    assert_eq!(sim.state(&t), TaskState::Queued);
    assert_eq!(sim.active("a"), [u]);
}

#[test]
fn a_late_cancel_report_does_not_undo_a_task_retry() {
    let mut sim = Sim::with_config(config());
    sim.add_worker("a", 1);
    sim.worker_mut("a").slow_cancel = true;
    let t = sim.submit(spec("echo"));
    sim.cancel(&t);
    assert_eq!(sim.retry(&t).field("success"), json!(true));
    // a still holds its slot for the cancelled attempt, so t waits.
    assert_eq!(sim.state(&t), TaskState::Queued);
    let reply = sim.finish("a", &t, ResultStatus::Cancelled, json!({}));
    assert_eq!(reply.field("recorded"), json!(false));
    // The slot is free and t runs again as attempt 2.
    let task = sim.task(&t);
    assert_eq!((task.state, task.attempt), (TaskState::Running, 2));
    assert_eq!(sim.worker("a").offers, [(t.clone(), 1), (t.clone(), 2)]);
}

/// Worker `a` (1 slot) still holds an ended attempt of a task that now
/// runs on `b`; then `a` goes away in some way.
fn check_stale_holder(go: &str) {
    let mut sim = Sim::with_config(config());
    sim.add_lease_worker("a", 1);
    sim.worker_mut("a").slow_cancel = true;
    let t = sim.submit(spec("echo"));
    sim.cancel(&t);
    sim.retry(&t);
    sim.add_worker("b", 1);
    assert_eq!(sim.worker("b").offers, [(t.clone(), 2)]);
    assert_eq!(sim.active("a"), [t.as_str()]);
    match go {
        "goodbye" => {
            sim.goodbye("a");
        }
        "leave" => sim.leave("a"),
        "lease expiry" => {
            sim.leave("a");
            sim.advance(sim.config.lease_grace);
            sim.tick();
        }
        "re-register" => {
            sim.add_lease_worker("a", 1);
        }
        "leave and re-register" => {
            sim.leave("a");
            sim.add_lease_worker("a", 1);
        }
        other => panic!("{other}"),
    }
    let task = sim.task(&t);
    assert_eq!(
        (
            task.state,
            task.attempt,
            task.device_id.as_deref(),
            task.lost
        ),
        (TaskState::Running, 2, Some("b"), 0),
        "{go}: b keeps it"
    );
    assert_eq!(sim.active("b"), [t.as_str()], "{go}");
    assert_eq!(sim.worker("b").offers.len(), 1, "{go}");
    assert!(sim.queue().is_empty(), "{go}");
}

#[test]
fn a_worker_with_an_ended_attempt_cannot_take_the_task_from_its_new_worker() {
    for go in [
        "goodbye",
        "leave",
        "lease expiry",
        "re-register",
        "leave and re-register",
    ] {
        check_stale_holder(go);
    }
}

#[test]
fn a_master_timeout_during_a_lease_then_the_worker_returns() {
    let mut sim = Sim::with_config(config());
    sim.add_lease_worker("a", 1);
    let t = sim.submit(timed(5.0, Some(1)));
    sim.leave("a");
    sim.advance(Duration::from_secs(5) + sim.config.timeout_grace);
    sim.tick();
    assert_eq!(sim.state(&t), TaskState::Retrying);
    sim.advance(retry_due(&sim, &t) - sim.now.monotonic);
    sim.tick();
    sim.add_worker("b", 1);
    assert_eq!(sim.worker("b").offers, [(t.clone(), 2)]);
    // a comes back still running attempt 1: it cannot take it back, and
    // b keeps it.
    sim.add_lease_worker("a", 1);
    let task = sim.task(&t);
    assert_eq!(
        (
            task.state,
            task.attempt,
            task.device_id.as_deref(),
            task.lost
        ),
        (TaskState::Running, 2, Some("b"), 0)
    );
    assert!(sim.active("a").is_empty());
    let reply = sim.report("a", &t, 1, ResultStatus::Timeout);
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&t).failures, 1);
    sim.complete("b", &t);
    // And a's lease, long over, never takes anything back.
    sim.advance(sim.config.lease_grace * 2);
    sim.tick();
    assert_eq!(sim.state(&t), TaskState::Completed);
}

#[test]
fn a_silent_worker_s_cancelled_assignment_frees_its_slot() {
    // The master times out an attempt a never confirmed; it is retried on
    // b; a's late answer frees a's slot.
    let mut sim = Sim::with_config(config());
    sim.join_with("a", register(1), Policy::Silent);
    let t = sim.submit(timed(1.0, Some(1)));
    sim.advance(Duration::from_secs(1) + sim.config.timeout_grace);
    sim.tick();
    assert_eq!(sim.state(&t), TaskState::Retrying);
    sim.advance(retry_due(&sim, &t) - sim.now.monotonic);
    sim.tick();
    sim.add_worker("b", 1);
    assert_eq!(sim.worker("b").offers, [(t.clone(), 2)]);
    sim.answer("a", None);
    assert!(sim.active("a").is_empty());
    assert_eq!(sim.task(&t).device_id.as_deref(), Some("b"));
}

#[test]
fn batch_submit_with_retries_while_storage_fails_is_one_refusal() {
    let mut sim = Sim::new();
    sim.set_storage(false);
    let conn = sim.client();
    let submit = TaskSubmit {
        tasks: vec![retries(Some(1)), retries(Some(2))],
        batch: true,
    };
    let reply = sim.request(conn, Message::TaskSubmit(submit));
    assert_eq!(reply.code(), ErrorCode::StorageUnavailable);
    assert!(sim.core.tasks.by_id.is_empty());
    assert!(sim.batches.is_empty());
}

/// A silent worker's unconfirmed attempt ends at the master's timeout
/// (with `max_retries`); then the worker refuses it after all.
fn check_refusal_after_a_master_timeout(max_retries: u32, end: TaskState) {
    let mut sim = Sim::with_config(config());
    sim.join_with("a", register(1), Policy::Silent);
    let t = sim.submit(timed(1.0, Some(max_retries)));
    sim.advance(Duration::from_secs(1) + sim.config.timeout_grace);
    sim.tick();
    assert_eq!(sim.state(&t), end);
    assert_eq!(
        sim.active("a"),
        [t.as_str()],
        "busy until the worker answers"
    );
    let before = sim.task(&t).clone();
    sim.answer("a", Some(ErrorCode::NoFreeSlot));
    assert_eq!(
        sim.task(&t),
        &before,
        "{end:?}: the refusal changes nothing"
    );
    assert!(sim.active("a").is_empty(), "{end:?}: the slot is free");
}

#[test]
fn a_refusal_after_a_master_timeout_frees_the_slot() {
    check_refusal_after_a_master_timeout(0, TaskState::TimedOut);
    check_refusal_after_a_master_timeout(1, TaskState::Retrying);
}
