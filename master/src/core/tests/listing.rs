//! `list_tasks` pages from the listing index: newest first, a cursor to
//! the next page, and counts per state that `status` reads. (The property
//! tests in `prop.rs` check every listing against a scan of every task,
//! and paging while tasks change state.)

use super::sim::{spec, Sim};
use protocol::{ErrorCode, ListTasks, Message, ResultStatus, TaskPage};
use serde_json::{json, Value};

fn page(sim: &mut Sim, list: ListTasks) -> (TaskPage, Value) {
    let conn = sim.client();
    let reply = sim.request(conn, Message::ListTasks(list));
    let result = Value::Object(reply.ack().result.fields().into_owned());
    let page = serde_json::from_value(result.clone()).expect("a page of tasks");
    (page, result)
}

fn ids(page: &TaskPage) -> Vec<&str> {
    page.tasks
        .iter()
        .map(|task| task.task_id.as_str())
        .collect()
}

#[test]
fn a_listing_pages_with_its_cursor_and_says_when_it_ends() {
    let mut sim = Sim::new();
    let t: Vec<String> = (0..5).map(|_| sim.submit(spec("echo"))).collect();
    let limit = |n: usize, before: Option<&String>| ListTasks {
        limit: Some(n),
        before: before.cloned(),
        ..ListTasks::default()
    };
    let (first, raw) = page(&mut sim, limit(2, None));
    assert_eq!(ids(&first), [&t[4], &t[3]]);
    assert_eq!(raw["count"], json!(2));
    assert_eq!(raw["next_cursor"], json!(t[3]));
    let (second, _) = page(&mut sim, limit(2, first.next_cursor.as_ref()));
    assert_eq!(ids(&second), [&t[2], &t[1]]);
    let (last, raw) = page(&mut sim, limit(2, second.next_cursor.as_ref()));
    assert_eq!(ids(&last), [&t[0]]);
    assert!(
        raw.get("next_cursor").is_none(),
        "the last page has no cursor (absent, not null): {raw}"
    );
    // A page that ends exactly at the oldest task knows there is no more.
    let (exact, _) = page(&mut sim, limit(1, Some(&t[1])));
    assert_eq!(
        (ids(&exact), exact.next_cursor.clone()),
        (vec![t[0].as_str()], None)
    );
    // An older client's request (no `before`, no `limit`) gets every field
    // it read before: `count` and `tasks`, newest first.
    let (all, raw) = page(&mut sim, ListTasks::default());
    assert_eq!(ids(&all), [&t[4], &t[3], &t[2], &t[1], &t[0]]);
    assert_eq!(raw["success"], json!(true));
    let conn = sim.client();
    let unknown = sim.request(
        conn,
        Message::ListTasks(ListTasks {
            before: Some("nope".into()),
            ..ListTasks::default()
        }),
    );
    assert_eq!(unknown.code(), ErrorCode::NotFound);
    assert!(unknown.error().error.contains("no task nope"));
}

#[test]
fn a_cursor_keeps_its_place_when_its_task_changes_state() {
    let mut sim = Sim::new();
    let t: Vec<String> = (0..4).map(|_| sim.submit(spec("echo"))).collect();
    let queued = |n: usize, before: Option<String>| ListTasks {
        state: Some(protocol::TaskState::Queued),
        limit: Some(n),
        before,
    };
    let (first, _) = page(&mut sim, queued(2, None));
    assert_eq!(ids(&first), [&t[3], &t[2]]);
    // The task the cursor names leaves the state, and a newer one too:
    // the next page still starts below the cursor's place.
    sim.cancel(&t[2]);
    sim.cancel(&t[3]);
    let (second, _) = page(&mut sim, queued(2, first.next_cursor));
    assert_eq!(
        (ids(&second), second.next_cursor.clone()),
        (vec![t[1].as_str(), &t[0]], None)
    );
}

#[test]
fn status_counts_every_state_without_looking_at_the_tasks() {
    let mut sim = Sim::new();
    sim.add_worker("pi", 1);
    let done = sim.submit(spec("echo"));
    sim.complete("pi", &done);
    let running = sim.submit(spec("echo"));
    let cancelled = sim.submit(spec("echo"));
    sim.cancel(&cancelled);
    let queued = sim.submit(spec("echo"));
    let conn = sim.client();
    let reply = sim.request(conn, Message::Status);
    let tasks = &reply.field("cluster_stats")["tasks"];
    assert_eq!(
        tasks,
        &json!({"queued": 1, "assigned": 0, "running": 1, "retrying": 0, "completed": 1,
                "failed": 0, "timed_out": 0, "cancelled": 1, "dead_letter": 0}),
        "{running}"
    );
    let finished = sim.finish("pi", &running, ResultStatus::Failed, json!({}));
    assert_eq!(finished.field("recorded"), json!(true));
    // The slot it freed went to the queued task.
    assert_eq!(sim.state(&queued), protocol::TaskState::Running);
    let reply = sim.request(conn, Message::Status);
    let tasks = &reply.field("cluster_stats")["tasks"];
    let counts = ["queued", "running", "failed"].map(|state| tasks[state].clone());
    assert_eq!(counts, [json!(0), json!(1), json!(1)]);
}
