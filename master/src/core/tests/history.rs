//! The history in the store: a finished task leaves the core's memory once
//! its last write has committed (`Sim::evict`), and is still served, read
//! from the store (the sim's `Db`, answered as the store's reader does):
//! its view, listings across memory and store, an idempotent submit of its
//! id, a retry, a cancel, the text commands, and `status`'s counts.

use super::sim::{spec, with_id, Sim};
use protocol::{ErrorCode, ListTasks, Message, ResultStatus, TaskPage, TaskState, TaskSubmit};
use serde_json::{json, Value};

/// A sim whose core forgets finished tasks once they commit.
fn evicting() -> Sim {
    let mut sim = Sim::new();
    sim.evict = true;
    sim
}

fn in_memory(sim: &Sim, task_id: &str) -> bool {
    sim.core.tasks.by_id.contains_key(task_id)
}

fn page(sim: &mut Sim, list: ListTasks) -> TaskPage {
    let conn = sim.client();
    let reply = sim.request(conn, Message::ListTasks(list));
    let result = Value::Object(reply.ack().result.fields().into_owned());
    serde_json::from_value(result).expect("a page of tasks")
}

fn ids(page: &TaskPage) -> Vec<String> {
    page.tasks.iter().map(|task| task.task_id.clone()).collect()
}

/// Every page of `list`, walked with its cursor: the ids, newest first.
fn walk(sim: &mut Sim, state: Option<TaskState>, limit: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut before = None;
    for _ in 0..100 {
        let list = ListTasks {
            state,
            limit: Some(limit),
            before: before.take(),
        };
        let page = page(sim, list);
        all.extend(ids(&page));
        match page.next_cursor {
            Some(cursor) => before = Some(cursor),
            None => return all,
        }
    }
    panic!("the listing did not end");
}

/// Submits `n` tasks, has worker `a` run them all, and fails every third:
/// returns their ids, oldest first.
fn run(sim: &mut Sim, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|_| sim.submit(spec("echo"))).collect();
    for (i, task_id) in ids.iter().enumerate() {
        if i % 3 == 2 {
            sim.finish("a", task_id, ResultStatus::Failed, json!({"error": "no"}));
        } else {
            sim.complete("a", task_id);
        }
    }
    ids
}

#[test]
fn a_finished_task_leaves_memory_once_committed_and_is_served_from_the_store() {
    let mut sim = evicting();
    sim.add_worker("a", 8);
    let t = run(&mut sim, 3);
    for task_id in &t {
        assert!(!in_memory(&sim, task_id), "{task_id} left memory");
        assert!(sim.db.tasks[task_id].state.is_terminal());
    }
    let reply = sim.task_status(&t[0]);
    assert_eq!(reply.field("task")["state"], json!("completed"));
    assert_eq!(reply.field("task")["result"]["output"], json!("ok"));
    let failed = sim.task_status(&t[2]);
    assert_eq!(failed.field("task")["state"], json!("failed"));
    assert_eq!(sim.task_status("nope").code(), ErrorCode::NotFound);
    // `status` still counts them (counters, not a scan).
    let conn = sim.client();
    let status = sim.request(conn, Message::Status);
    assert_eq!(
        status.field("cluster_stats")["tasks"]["completed"],
        json!(2)
    );
    assert_eq!(status.field("cluster_stats")["tasks"]["failed"], json!(1));
    // A live task is not evicted.
    let queued = sim.submit(spec("nobody-runs-this"));
    assert!(in_memory(&sim, &queued));
    sim.core.check_indexes();
}

#[test]
fn a_finished_task_stays_in_memory_until_its_write_commits() {
    // Without commits reported, nothing leaves (the reader would not see
    // the write yet); the sim reports them only when `evict` is on.
    let mut sim = Sim::new();
    sim.add_worker("a", 8);
    let t = run(&mut sim, 2);
    assert!(t.iter().all(|task_id| in_memory(&sim, task_id)));
    // Reported for an older batch only, the newer writes keep them.
    sim.core.handle_committed(0);
    assert!(t.iter().all(|task_id| in_memory(&sim, task_id)));
    let last = sim.batches.last().map(|batch| batch.id).unwrap();
    sim.core.handle_committed(last);
    assert!(t.iter().all(|task_id| !in_memory(&sim, task_id)));
}

#[test]
fn listings_page_across_memory_and_the_store_newest_first() {
    let mut sim = evicting();
    sim.add_worker("a", 4);
    let done = run(&mut sim, 7);
    // Live tasks, newer than the finished ones, stay in memory (queued:
    // the worker left).
    sim.leave("a");
    let live: Vec<String> = (0..3).map(|_| sim.submit(spec("nobody"))).collect();
    let mut everything: Vec<String> = done.iter().chain(&live).cloned().collect();
    everything.reverse();
    for limit in [1, 2, 3, 100] {
        assert_eq!(walk(&mut sim, None, limit), everything, "limit {limit}");
    }
    let failed: Vec<String> = done
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 2)
        .map(|(_, id)| id.clone())
        .rev()
        .collect();
    assert_eq!(walk(&mut sim, Some(TaskState::Failed), 1), failed);
    let queued: Vec<String> = live.iter().rev().cloned().collect();
    assert_eq!(walk(&mut sim, Some(TaskState::Queued), 2), queued);
    // A cursor that names a task in the store only.
    let page = page(
        &mut sim,
        ListTasks {
            state: None,
            limit: Some(2),
            before: Some(done[4].clone()),
        },
    );
    assert_eq!(ids(&page), [done[3].clone(), done[2].clone()]);
    assert_eq!(page.next_cursor.as_deref(), Some(done[2].as_str()));
    let conn = sim.client();
    let unknown = sim.request(
        conn,
        Message::ListTasks(ListTasks {
            before: Some("nope".into()),
            ..ListTasks::default()
        }),
    );
    assert_eq!(unknown.code(), ErrorCode::NotFound);
}

#[test]
fn a_client_chosen_id_of_a_finished_task_still_already_exists() {
    let mut sim = evicting();
    sim.add_worker("a", 2);
    let id = sim.submit(with_id("mine"));
    sim.complete("a", &id);
    assert!(!in_memory(&sim, "mine"));
    let again = sim.submit_reply(with_id("mine"));
    assert_eq!(again.field("created"), json!(false));
    assert_eq!(again.field("message"), json!("task already exists"));
    assert!(!in_memory(&sim, "mine"), "not queued again");
    assert_eq!(sim.db.tasks["mine"].state, TaskState::Completed);
    // In a batch: the stored one exists, the new one is created.
    let conn = sim.client();
    let batch = sim.request(
        conn,
        Message::TaskSubmit(TaskSubmit {
            tasks: vec![with_id("mine"), with_id("fresh")],
            batch: true,
        }),
    );
    assert_eq!(batch.field("task_ids"), json!(["mine", "fresh"]));
    assert_eq!(batch.field("message"), json!("2 tasks accepted (1 new)"));
}

#[test]
fn a_failed_task_in_the_store_is_retried_and_a_finished_one_is_not_cancelled() {
    let mut sim = evicting();
    sim.add_worker("a", 1);
    let t = sim.submit(spec("echo"));
    sim.finish("a", &t, ResultStatus::Failed, json!({"error": "no"}));
    assert!(!in_memory(&sim, &t));
    let cancel = sim.cancel(&t);
    assert_eq!(cancel.code(), ErrorCode::InvalidState);
    assert_eq!(sim.cancel("nope").code(), ErrorCode::NotFound);
    let retried = sim.retry(&t);
    assert_eq!(retried.field("task")["state"], json!("queued"));
    // Back in memory and given to the worker again.
    assert!(in_memory(&sim, &t));
    assert_eq!(sim.state(&t), TaskState::Running);
    sim.complete("a", &t);
    assert!(!in_memory(&sim, &t));
    assert_eq!(
        sim.task_status(&t).field("task")["state"],
        json!("completed")
    );
    let conn = sim.client();
    let status = sim.request(conn, Message::Status);
    assert_eq!(status.field("cluster_stats")["tasks"]["failed"], json!(0));
    assert_eq!(
        status.field("cluster_stats")["tasks"]["completed"],
        json!(1)
    );
    sim.core.check_indexes();
}

#[test]
fn text_commands_read_finished_tasks_from_the_store() {
    let mut sim = evicting();
    sim.add_worker("a", 2);
    let t = run(&mut sim, 3);
    let conn = sim.client();
    let (task, _) = sim.text(conn, &format!("task {}", t[0]));
    assert!(task.contains("completed"), "{task}");
    let (tasks, _) = sim.text(conn, "tasks failed");
    assert!(tasks.contains(&t[2]) && !tasks.contains(&t[0]), "{tasks}");
    let (cancel, _) = sim.text(conn, &format!("cancel {}", t[1]));
    assert!(cancel.starts_with("error:"), "{cancel}");
    let (retry, _) = sim.text(conn, &format!("retry {}", t[2]));
    assert!(
        retry.starts_with(&format!("queued {} again", t[2])),
        "{retry}"
    );
}

#[test]
fn a_page_where_the_store_and_memory_overlap_skips_and_repeats_nothing() {
    // Older finished tasks only in the store; newer ones finished but still
    // in memory (their commits not reported yet), so the store's newest
    // rows are tasks memory shows: the page stops where the store's rows
    // end and its cursor resumes right below.
    let mut sim = evicting();
    sim.add_worker("a", 4);
    let old = run(&mut sim, 5);
    sim.evict = false;
    let recent = run(&mut sim, 4);
    assert!(recent.iter().all(|id| in_memory(&sim, id)));
    assert!(old.iter().all(|id| !in_memory(&sim, id)));
    let mut everything: Vec<String> = old.iter().chain(&recent).cloned().collect();
    everything.reverse();
    for limit in [1, 2, 3, 4, 10] {
        assert_eq!(walk(&mut sim, None, limit), everything, "limit {limit}");
    }
    let completed: Vec<String> = everything
        .iter()
        .filter(|id| sim.db.tasks[*id].state == TaskState::Completed)
        .cloned()
        .collect();
    for limit in [1, 2, 5] {
        assert_eq!(walk(&mut sim, Some(TaskState::Completed), limit), completed);
    }
}

#[test]
fn a_late_result_for_a_finished_task_in_the_store_is_discarded_as_before() {
    let mut sim = evicting();
    sim.add_worker("a", 1);
    let t = sim.submit(spec("echo"));
    sim.complete("a", &t);
    assert!(!in_memory(&sim, &t));
    // The worker sends it again (it never saw the ack, say).
    let again = sim.report("a", &t, 1, ResultStatus::Completed);
    assert_eq!(again.field("recorded"), json!(false), "{:?}", again);
    assert_eq!(sim.db.tasks[&t].state, TaskState::Completed);
    let unknown = sim.report("a", "nope", 1, ResultStatus::Completed);
    assert_eq!(unknown.code(), ErrorCode::NotFound);
}

/// `status`'s count of `state`.
fn counted(sim: &mut Sim, state: &str) -> Value {
    let conn = sim.client();
    let status = sim.request(conn, Message::Status);
    status.field("cluster_stats")["tasks"][state].clone()
}

/// Retention deleted tasks from the store: `status` counts them no more,
/// and their views are gone.
#[test]
fn tasks_pruned_from_the_store_leave_the_counts() {
    let mut sim = evicting();
    sim.add_worker("a", 8);
    let t = run(&mut sim, 6);
    assert_eq!(counted(&mut sim, "completed"), json!(4));
    assert_eq!(counted(&mut sim, "failed"), json!(2));
    let last = sim.batches.last().map(|batch| batch.id).unwrap();
    // As the store does: the rows go, then the loop tells the core.
    for task_id in [&t[0], &t[2]] {
        sim.db.tasks.remove(task_id);
    }
    sim.core.handle_pruned(
        last,
        &[
            (t[0].clone(), TaskState::Completed),
            (t[2].clone(), TaskState::Failed),
        ],
    );
    assert_eq!(counted(&mut sim, "completed"), json!(3));
    assert_eq!(counted(&mut sim, "failed"), json!(1));
    assert_eq!(sim.task_status(&t[0]).code(), ErrorCode::NotFound);
    assert_eq!(walk(&mut sim, None, 2).len(), 4);
    sim.core.check_indexes();
}

/// A pruned task still in memory: written after the prune's last commit,
/// its newer write puts it back, so it stays and is counted; written
/// before, its row was the one deleted, so it leaves memory uncounted.
#[test]
fn a_pruned_task_in_memory_is_judged_by_its_last_write() {
    let mut sim = Sim::new();
    sim.add_worker("a", 8);
    let t = run(&mut sim, 1);
    let last = sim.batches.last().map(|batch| batch.id).unwrap();
    let pruned = [(t[0].clone(), TaskState::Completed)];
    sim.core.handle_pruned(last - 1, &pruned);
    assert!(in_memory(&sim, &t[0]));
    assert_eq!(counted(&mut sim, "completed"), json!(1));
    sim.core.handle_pruned(last, &pruned);
    assert!(!in_memory(&sim, &t[0]));
    assert_eq!(counted(&mut sim, "completed"), json!(0));
    // Its later commit does not count it again.
    sim.core.handle_committed(last);
    assert_eq!(counted(&mut sim, "completed"), json!(0));
    sim.core.check_indexes();
}

/// `prune` deletes the tasks that finished before its cutoff, in the
/// store and in memory alike, answers with the totals per state, and
/// leaves live and younger tasks; `status` follows.
#[test]
fn prune_deletes_what_finished_before_the_cutoff_and_answers_the_totals() {
    let mut sim = evicting();
    sim.add_worker("a", 8);
    let old = run(&mut sim, 3);
    sim.advance(std::time::Duration::from_secs(3600));
    let cutoff = sim.now.unix_ms;
    sim.advance(std::time::Duration::from_secs(60));
    let young = run(&mut sim, 1);
    sim.leave("a");
    let live = sim.submit(spec("nobody"));
    let conn = sim.client();
    let reply = sim.request(
        conn,
        Message::Prune(protocol::Prune {
            before_unix_ms: cutoff,
        }),
    );
    let result = Value::Object(reply.ack().result.fields().into_owned());
    assert_eq!(
        result,
        json!({
            "pruned": {"completed": 2, "failed": 1},
            "total": 3,
            "message": "pruned 3 finished tasks",
            "success": true,
        })
    );
    for task_id in &old {
        assert_eq!(sim.task_status(task_id).code(), ErrorCode::NotFound);
    }
    assert_eq!(
        sim.task_status(&young[0]).field("task")["state"],
        json!("completed")
    );
    assert_eq!(
        sim.task_status(&live).field("task")["state"],
        json!("queued")
    );
    assert_eq!(counted(&mut sim, "completed"), json!(1));
    assert_eq!(counted(&mut sim, "failed"), json!(0));
    assert_eq!(counted(&mut sim, "queued"), json!(1));
    sim.core.check_indexes();
}

#[test]
fn a_generated_id_never_clashes_with_a_finished_task_in_the_store_only() {
    // A client chose an id of the generated form a few numbers ahead; the
    // task finished and left memory (it is in the store only) before the
    // master got that far.
    let mut sim = evicting();
    let taken = format!("task-{:x}-6", sim.now.unix_ms);
    sim.submit(with_id(&taken));
    sim.cancel(&taken);
    assert!(!in_memory(&sim, &taken), "in the store only");
    let generated: Vec<String> = (0..10).map(|_| sim.submit(spec("echo"))).collect();
    assert!(!generated.contains(&taken), "{generated:?}");
    // Every generated number is past the client's.
    for id in &generated {
        let n = crate::core::records::generated_seq(id).expect("a generated id");
        assert!(n > 6, "{id}");
    }
    assert_eq!(
        sim.task_status(&taken).field("task")["state"],
        json!("cancelled")
    );
}
