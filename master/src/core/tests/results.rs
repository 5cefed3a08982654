//! Results, refusals and progress.

use super::sim::{register, spec, Policy, Sim};
use protocol::{
    ErrorCode, Event, Message, ResultStatus, Subscribe, TaskProgress, TaskResult, TaskState,
};
use serde_json::json;

#[test]
fn a_completed_result_is_recorded_and_streamed_after_its_batch() {
    let mut sim = Sim::new();
    let subscriber = sim.connect();
    let reply = sim.request(subscriber, Message::Subscribe(Subscribe::default()));
    assert_eq!(reply.field("success"), json!(true));
    sim.add_worker("a", 1);
    let id = sim.submit(spec("python_eval"));
    sim.advance(std::time::Duration::from_secs(3));
    let reply = sim.finish(
        "a",
        &id,
        ResultStatus::Completed,
        json!({"output":"4999950000","exit_code":0,"metrics":{"cpu_time":25.2}}),
    );
    assert_eq!(reply.field("recorded"), json!(true));
    let batch = reply.after_batch.expect("durable");

    let task = sim.task(&id);
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.exit_code, Some(0));
    assert_eq!(task.execution_time, Some(0.5));
    assert_eq!(task.finished_unix_ms, Some(sim.now.unix_ms));
    assert_eq!(task.result.as_ref().unwrap()["output"], json!("4999950000"));
    assert!(sim.active("a").is_empty(), "the slot is free again");
    assert!(sim.batch_has_task(batch, &id, TaskState::Completed));

    let finished: Vec<_> = sim
        .events(subscriber)
        .into_iter()
        .filter_map(|(event, after)| match event {
            Event::TaskFinished { task } => Some((task, after)),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 1);
    let (view, after) = &finished[0];
    assert_eq!(view.task_id, id);
    assert_eq!(view.state, TaskState::Completed);
    assert_eq!(view.exit_code, Some(0));
    assert_eq!(*after, Some(batch), "the event waits for the same commit");

    // The stream told the whole story, in order.
    let kinds: Vec<&str> = sim
        .events(subscriber)
        .iter()
        .map(|(event, _)| match event {
            Event::DeviceJoined { .. } => "joined",
            Event::TaskSubmitted { .. } => "submitted",
            Event::TaskAssigned { .. } => "assigned",
            Event::TaskFinished { .. } => "finished",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["joined", "submitted", "assigned", "finished"]);
}

#[test]
fn a_subscription_to_some_tasks_gets_only_theirs() {
    let mut sim = Sim::new();
    sim.add_worker("a", 2);
    let mine = sim.submit(super::sim::with_id("mine"));
    let other = sim.submit(spec("echo"));
    let subscriber = sim.connect();
    sim.request(
        subscriber,
        Message::Subscribe(Subscribe {
            task_ids: vec![mine.clone()],
        }),
    );
    sim.complete("a", &other);
    sim.complete("a", &mine);
    let events = sim.events(subscriber);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(&events[0].0, Event::TaskFinished { task } if task.task_id == mine));
}

#[test]
fn subscriptions_are_matched_by_task_replaced_by_a_new_one_and_gone_at_disconnect() {
    let mut sim = Sim::new();
    sim.add_worker("a", 4);
    let one = sim.submit(super::sim::with_id("one"));
    let two = sim.submit(super::sim::with_id("two"));
    let subscribe = |ids: &[&str]| {
        Message::Subscribe(Subscribe {
            task_ids: ids.iter().map(|id| id.to_string()).collect(),
        })
    };
    let (first, second, everything) = (sim.connect(), sim.connect(), sim.connect());
    // A filter naming a task twice, or a task that does not exist, is fine.
    sim.request(first, subscribe(&["one", "one", "nope"]));
    sim.request(second, subscribe(&["one", "two"]));
    // Subscribing again replaces the filter, even with overlapping ids.
    sim.request(second, subscribe(&["two", "nope"]));
    sim.request(everything, subscribe(&[]));
    sim.complete("a", &one);
    sim.disconnect(first);
    sim.complete("a", &two);
    sim.leave("a");
    let finished = |sim: &Sim, conn| -> Vec<String> {
        sim.events(conn)
            .into_iter()
            .map(|(event, _)| match event {
                Event::TaskFinished { task } => task.task_id,
                Event::DeviceLeft { device_id, .. } => format!("left {device_id}"),
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(finished(&sim, first), ["one"]);
    assert_eq!(finished(&sim, second), ["two"]);
    // Device events go only to the subscribers of everything.
    assert_eq!(finished(&sim, everything), ["one", "two", "left a"]);
}

#[test]
fn failed_result_keeps_its_error_and_exit_code() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("shell"));
    let reply = sim.finish(
        "a",
        &id,
        ResultStatus::Failed,
        json!({"output":"","exit_code":3,"error":"exit status 3"}),
    );
    assert_eq!(reply.field("recorded"), json!(true));
    let task = sim.task(&id);
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.exit_code, Some(3));
    assert_eq!(task.error.as_deref(), Some("exit status 3"));

    let id = sim.submit(spec("sleep"));
    sim.finish("a", &id, ResultStatus::Timeout, json!({}));
    assert_eq!(sim.state(&id), TaskState::TimedOut);
}

#[test]
fn a_result_from_a_device_that_does_not_hold_the_task_changes_nothing() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.add_worker("b", 1);
    let id = sim.submit(spec("echo"));
    assert_eq!(sim.offered("a"), [id.as_str()]);
    let before = sim.task(&id).clone();
    let batches = sim.batches.len();
    let result = TaskResult {
        task_id: id.clone(),
        attempt: Some(1),
        status: ResultStatus::Completed,
        execution_time: None,
        result: json!({"output":"forged"}),
        error: None,
    };
    let reply = sim.worker_request("b", Message::TaskResult(result.clone()));
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&id), &before);
    assert_eq!(sim.active("a"), [id.as_str()]);
    assert_eq!(sim.batches.len(), batches, "nothing written");

    // Without an attempt (older workers) it is still not b's task.
    let reply = sim.worker_request(
        "b",
        Message::TaskResult(TaskResult {
            attempt: None,
            ..result
        }),
    );
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&id), &before);

    // A result for a task that does not exist.
    let reply = sim.worker_request(
        "b",
        Message::TaskResult(TaskResult {
            task_id: "nope".into(),
            attempt: Some(1),
            status: ResultStatus::Completed,
            execution_time: None,
            result: json!({}),
            error: None,
        }),
    );
    assert_eq!(reply.code(), ErrorCode::NotFound);
}

#[test]
fn a_stale_attempt_is_acknowledged_and_discarded() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    // The connection drops; the same device comes back without the task
    // and gets it again as attempt 2.
    sim.leave("a");
    assert_eq!(sim.worker("a").orphans, [(id.clone(), 1)]);
    sim.join("a", register(1));
    assert_eq!(sim.worker("a").offers, [(id.clone(), 1), (id.clone(), 2)]);
    let before = sim.task(&id).clone();
    assert_eq!(before.attempt, 2);

    let stale = TaskResult {
        task_id: id.clone(),
        attempt: Some(1),
        status: ResultStatus::Completed,
        execution_time: None,
        result: json!({"output":"late"}),
        error: None,
    };
    let reply = sim.worker_request("a", Message::TaskResult(stale));
    assert_eq!(reply.field("success"), json!(true));
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&id), &before);
    assert_eq!(
        sim.active("a"),
        [id.as_str()],
        "attempt 2 still holds its slot"
    );

    sim.complete("a", &id);
    assert_eq!(sim.state(&id), TaskState::Completed);
    // A duplicate of the recorded result is discarded too.
    let duplicate = TaskResult {
        task_id: id.clone(),
        attempt: Some(2),
        status: ResultStatus::Failed,
        execution_time: None,
        result: json!({}),
        error: None,
    };
    let completed = sim.task(&id).clone();
    let reply = sim.worker_request("a", Message::TaskResult(duplicate));
    assert_eq!(reply.field("recorded"), json!(false));
    assert_eq!(sim.task(&id), &completed);
}

#[test]
fn unsupported_task_type_requeues_and_never_returns_to_that_device() {
    let mut sim = Sim::new();
    sim.join("a", register(1));
    sim.set_policy("a", Policy::Refuse(ErrorCode::UnsupportedTaskType));
    sim.add_worker("b", 1);
    let id = sim.submit(spec("gpu_render"));
    assert_eq!(sim.worker("a").offers, [(id.clone(), 1)]);
    assert_eq!(sim.worker("b").offers, [(id.clone(), 2)]);
    assert!(sim.active("a").is_empty());
    assert_eq!(sim.state(&id), TaskState::Running);

    // b goes away: a, although free, is never offered the task again.
    sim.leave("b");
    assert_eq!(sim.queue(), [id.as_str()]);
    assert_eq!(sim.offered("a"), [id.as_str()]);
    sim.set_policy("a", Policy::Accept);
    let other = sim.submit(spec("echo"));
    assert_eq!(
        sim.offered("a"),
        [id.clone(), other],
        "a still gets other work"
    );
    assert_eq!(sim.queue(), [id]);
}

#[test]
fn no_free_slot_pauses_the_device_and_the_task_goes_elsewhere() {
    let mut sim = Sim::new();
    sim.join("a", register(2));
    sim.set_policy("a", Policy::Refuse(ErrorCode::NoFreeSlot));
    sim.add_worker("b", 2);
    let first = sim.submit(spec("echo"));
    assert_eq!(sim.worker("a").offers, [(first.clone(), 1)]);
    assert_eq!(sim.worker("b").offers, [(first.clone(), 2)]);
    let pause = sim.config.full_worker_pause;
    assert_eq!(
        sim.core.registry.devices["a"].paused_until,
        Some(sim.now.monotonic + pause)
    );
    // While paused, a gets nothing even though it is the less loaded.
    let second = sim.submit(spec("echo"));
    assert_eq!(sim.offered("b"), [first, second]);
    assert_eq!(sim.offered("a").len(), 1);
}

#[test]
fn a_refusal_that_is_not_current_is_ignored() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    // The task already runs (acked); a late error naming the same
    // assignment changes nothing.
    let conn = sim.conn_of("a");
    let assign_id = sim
        .json_sent(conn)
        .into_iter()
        .find_map(|(e, _)| matches!(e.message, Message::TaskAssign(_)).then_some(e.message_id))
        .flatten();
    assert!(assign_id.is_some(), "an assignment carries a message id");
    let refusal = protocol::ErrorReply::new(assign_id, ErrorCode::UnsupportedTaskType, "no");
    let before = sim.task(&id).clone();
    sim.core.handle_message(
        sim.now,
        conn,
        protocol::Envelope::new(Message::Error(refusal)).from_sender("a"),
    );
    sim.drive();
    assert_eq!(sim.task(&id), &before);
    assert_eq!(sim.active("a"), [id]);
}

#[test]
fn progress_is_streamed_only_for_the_current_attempt_and_never_answered() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    let id = sim.submit(spec("echo"));
    let subscriber = sim.connect();
    sim.request(subscriber, Message::Subscribe(Subscribe::default()));
    let conn = sim.conn_of("a");
    let progress = |attempt| TaskProgress {
        task_id: id.clone(),
        attempt: Some(attempt),
        fraction: Some(0.5),
        done: None,
        total: None,
        message: Some("half".into()),
    };
    for attempt in [1, 7] {
        let envelope = protocol::Envelope::new(Message::TaskProgress(progress(attempt)))
            .from_sender("a")
            .with_id(format!("p{attempt}"));
        sim.core.handle_message(sim.now, conn, envelope);
        sim.drive();
    }
    let events = sim.events(subscriber);
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0], (Event::TaskProgress(p), None) if p.attempt == Some(1)));
    let replies = sim
        .json_sent(conn)
        .into_iter()
        .filter(|(e, _)| match &e.message {
            Message::Ack(ack) => ack
                .original_message_id
                .as_deref()
                .is_some_and(|id| id.starts_with('p')),
            Message::Error(error) => error
                .original_message_id
                .as_deref()
                .is_some_and(|id| id.starts_with('p')),
            _ => false,
        })
        .count();
    assert_eq!(replies, 0, "progress is never answered");
}

/// A worker refuses an assignment with `code`: checks whether the device
/// is paused (it may get the task again later) or excluded from the task
/// for good, and that the task goes to the other device either way.
fn check_refusal(code: ErrorCode, expect_paused: bool) {
    let mut sim = Sim::new();
    sim.join("a", register(1));
    sim.set_policy("a", Policy::Refuse(code));
    sim.add_worker("b", 1);
    let id = sim.submit(spec("echo"));
    assert_eq!(sim.worker("b").offers, [(id.clone(), 2)], "{code}");
    let paused = sim.core.registry.devices["a"].paused_until.is_some();
    let excluded = sim.core.tasks.by_id[&id].refused_by.contains("a");
    assert_eq!(
        (paused, excluded),
        (expect_paused, !expect_paused),
        "{code}"
    );
    assert!(sim.active("a").is_empty(), "{code}");
}

#[test]
fn refusals_pause_or_exclude() {
    check_refusal(ErrorCode::NoFreeSlot, true);
    check_refusal(ErrorCode::StorageUnavailable, true);
    check_refusal(ErrorCode::InternalError, true);
    check_refusal(ErrorCode::UnsupportedTaskType, false);
}

/// A worker that cannot read an assignment (or finds it invalid) refuses
/// it with `invalid_message`: no worker would take those bytes, so the task
/// fails at once with the worker's reason, and the slot is free again.
#[test]
fn an_assignment_a_worker_cannot_read_fails_the_task_and_frees_the_slot() {
    let mut sim = Sim::new();
    sim.join("a", register(1));
    sim.set_policy("a", Policy::Refuse(ErrorCode::InvalidMessage));
    sim.add_worker("b", 1);
    let id = sim.submit(spec("echo"));
    let record = &sim.core.tasks.by_id[&id].record;
    assert_eq!(record.state, TaskState::Failed);
    let error = record.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("device a could not accept the assignment"),
        "{error}"
    );
    assert!(sim.worker("b").offers.is_empty(), "not offered again");
    assert!(sim.active("a").is_empty());
    assert!(sim.core.registry.devices["a"].paused_until.is_none());
}

/// A value `depth` arrays deep around a number.
fn nested(depth: usize) -> serde_json::Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

/// The third attack, on the master's side: a `python_eval` result
/// nested deeper than the limit. It is not stored; the attempt fails with
/// the reason at once (not at its timeout), the slot is free again, and the
/// worker is answered with `invalid_message`, on which it drops the result.
/// A result right at the limit is recorded as sent.
#[test]
fn a_result_nested_too_deep_fails_the_attempt_and_is_refused() {
    let mut sim = Sim::new();
    sim.add_worker("a", 1);
    sim.set_policy("a", Policy::Accept);
    let id = sim.submit(spec("python_eval"));
    assert_eq!(sim.offered("a"), [id.as_str()]);
    let deep = TaskResult {
        task_id: id.clone(),
        attempt: Some(1),
        status: ResultStatus::Completed,
        execution_time: Some(0.1),
        result: json!({ "output": nested(protocol::MAX_VALUE_DEPTH + 1) }),
        error: None,
    };
    let reply = sim.worker_request("a", Message::TaskResult(deep.clone()));
    assert_eq!(reply.code(), ErrorCode::InvalidMessage);
    assert!(
        reply
            .error()
            .error
            .contains("\"output\" nests more than 64"),
        "{:?}",
        reply.error()
    );
    let record = sim.task(&id);
    assert_eq!(record.state, TaskState::Failed);
    assert_eq!(record.result, None, "nothing of it is stored");
    assert!(record
        .error
        .as_deref()
        .is_some_and(|e| e.contains("refused")));
    assert!(sim.active("a").is_empty(), "the slot is free");

    // One level less is exactly the limit (each field of a result may nest
    // as deep as a payload): recorded and shown.
    let id = sim.submit(spec("python_eval"));
    let fits = TaskResult {
        task_id: id.clone(),
        result: json!({ "output": nested(protocol::MAX_VALUE_DEPTH) }),
        ..deep
    };
    let reply = sim.worker_request("a", Message::TaskResult(fits.clone()));
    assert_eq!(reply.field("recorded"), json!(true));
    assert_eq!(sim.task(&id).result, Some(fits.result));
}

/// `status`'s `completed_today` (`/text/status`'s `completed today`):
/// a completion counts, a failure does not, the count starts again at
/// the next UTC midnight, and a start seeds it from the store.
#[test]
fn completions_count_for_the_current_utc_day_only() {
    let completed_today = |sim: &mut Sim| {
        let conn = sim.connect();
        sim.request(conn, Message::Status).field("cluster_stats")["completed_today"].clone()
    };
    let mut sim = Sim::new();
    // T0 is 22:13:20 UTC: midnight is 6400 s later.
    let to_midnight = std::time::Duration::from_millis(
        (crate::core::observe::utc_day_start(sim.now.unix_ms) + crate::core::observe::DAY_MS
            - sim.now.unix_ms) as u64,
    );
    assert_eq!(to_midnight.as_secs(), 6400);
    assert_eq!(completed_today(&mut sim), json!(null), "none: left out");
    sim.add_worker("a", 3);
    let first = sim.submit(spec("echo"));
    let second = sim.submit(spec("echo"));
    let failing = sim.submit(spec("echo"));
    sim.complete("a", &first);
    sim.complete("a", &second);
    sim.finish("a", &failing, ResultStatus::Failed, json!({"error": "no"}));
    assert_eq!(completed_today(&mut sim), json!(2));

    sim.advance(to_midnight - std::time::Duration::from_millis(1));
    assert_eq!(completed_today(&mut sim), json!(2), "still the same day");
    sim.advance(std::time::Duration::from_millis(1));
    assert_eq!(completed_today(&mut sim), json!(null), "a new day");
    sim.add_worker("b", 1);
    let next = sim.submit(spec("echo"));
    let holder = sim.task(&next).device_id.clone().expect("assigned");
    sim.complete(&holder, &next);
    assert_eq!(completed_today(&mut sim), json!(1));

    let now = sim.now;
    sim.core.restore_completed_today(now, 45);
    assert_eq!(completed_today(&mut sim), json!(45));
}
