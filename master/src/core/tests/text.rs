//! Netcat mode: plain words in, aligned text out, a `.` line at the end.

use super::sim::{spec, Sim};
use protocol::{ResultStatus, TaskState};
use serde_json::json;

/// Checks the framing every text reply has, and returns its body lines
/// as a reader would: a line that starts with `..` loses its first `.`
/// (every body line that starts with `.` is sent with one more, as in
/// SMTP, so no body line can look like the end).
fn body(reply: &str) -> Vec<String> {
    assert!(reply.ends_with("\n.\n"), "{reply:?} ends with the dot line");
    let lines: Vec<&str> = reply.lines().collect();
    let (last, body) = lines.split_last().unwrap();
    assert_eq!(*last, ".");
    body.iter()
        .map(|line| match line.strip_prefix('.') {
            Some(rest) => {
                assert!(rest.starts_with('.'), "{line:?} in {reply:?} is stuffed");
                rest.to_string()
            }
            None => line.to_string(),
        })
        .collect()
}

/// Sends `line` and checks the reply's body contains each of `expect`.
fn check(sim: &mut Sim, line: &str, expect: &[&str]) -> String {
    let conn = sim.client();
    let (reply, _) = sim.text(conn, line);
    let text = body(&reply).join("\n");
    for want in expect {
        assert!(
            text.contains(want),
            "{line:?} → {text:?} should contain {want:?}"
        );
    }
    text
}

#[test]
fn commands_on_an_empty_cluster() {
    let mut sim = Sim::new();
    check(
        &mut sim,
        "help",
        &["commands:", "submit TYPE [JSON]", "cancel ID", "quit"],
    );
    check(&mut sim, "  HELP  ", &["commands:"]);
    check(
        &mut sim,
        "status",
        &["devices: 0 online of 0", "queued: 0", "tasks: none"],
    );
    check(&mut sim, "devices", &["no devices"]);
    check(&mut sim, "tasks", &["no tasks"]);
    check(&mut sim, "task nope", &["error: no task nope"]);
    check(&mut sim, "cancel nope", &["error: no task nope"]);
    check(
        &mut sim,
        "tasks sleeping",
        &["error: unknown state \"sleeping\""],
    );
}

#[test]
fn unknown_words_get_an_explanation() {
    let mut sim = Sim::new();
    let conn = sim.client();
    let (reply, after) = sim.text(conn, "frobnicate now");
    assert_eq!(
        reply,
        "error: unknown command \"frobnicate\"; type help\n.\n"
    );
    assert_eq!(after, None);
    check(&mut sim, "task", &["usage: task ID"]);
    check(&mut sim, "submit", &["usage: submit TYPE"]);
    check(
        &mut sim,
        "submit echo {oops",
        &["payload is not valid JSON"],
    );
    check(&mut sim, "status please", &["status takes no arguments"]);
}

#[test]
fn submit_status_tasks_task_cancel() {
    let mut sim = Sim::new();
    sim.add_worker("pi", 2);
    let conn = sim.client();

    let (reply, after) = sim.text(conn, r#"submit echo {"message":"hi"}"#);
    let text = body(&reply).join("\n");
    let id = text
        .strip_prefix("submitted ")
        .expect("submitted ID")
        .to_string();
    let batch = after.expect("a submit is held for its batch");
    assert!(sim.batch_task_state(batch, &id).is_some());
    assert_eq!(sim.task(&id).spec.payload, json!({"message":"hi"}));
    assert_eq!(sim.task(&id).spec.task_type, "echo");
    assert_eq!(sim.offered("pi"), [id.as_str()]);

    check(
        &mut sim,
        "status",
        &[
            "devices: 1 online of 1 (100%)",
            "cores: 4",
            "memory: 8.0 GiB",
            "running 1",
        ],
    );
    let devices = check(
        &mut sim,
        "devices",
        &["ID", "STATUS", "ACTIVE", "pi", "online", "linux", "1/2"],
    );
    assert_eq!(
        devices.lines().count(),
        2,
        "a header and one row: {devices:?}"
    );
    let tasks = check(
        &mut sim,
        "tasks",
        &["ID", "TYPE", "STATE", &id, "echo", "running", "pi"],
    );
    assert_eq!(tasks.lines().count(), 2);
    check(&mut sim, "tasks running", &[&id]);
    check(&mut sim, "tasks queued", &["no tasks"]);
    check(
        &mut sim,
        &format!("task {id}"),
        &[
            &format!("id:        {id}"),
            "state:     running",
            "device:    pi",
            r#"payload:   {"message":"hi"}"#,
        ],
    );

    let (reply, after) = sim.text(conn, &format!("cancel {id}"));
    assert_eq!(body(&reply), [format!("cancelled {id}")]);
    let batch = after.expect("a cancel is held for its batch");
    assert!(sim.batch_has_task(batch, &id, TaskState::Cancelled));
    assert_eq!(sim.state(&id), TaskState::Cancelled);
    check(
        &mut sim,
        &format!("task {id}"),
        &["state:     cancelled", "error:     cancelled by a client"],
    );
    check(
        &mut sim,
        &format!("cancel {id}"),
        &["error: task", "already cancelled"],
    );
}

#[test]
fn submit_without_a_payload() {
    let mut sim = Sim::new();
    let text = check(&mut sim, "submit noop", &["submitted "]);
    let id = text.strip_prefix("submitted ").unwrap();
    assert_eq!(sim.task(id).spec.payload, json!({}));
}

#[test]
fn body_lines_starting_with_a_dot_are_stuffed() {
    let mut sim = Sim::new();
    sim.add_worker("pi", 1);
    let id = sim.submit(spec("shell"));
    let output = "first\n.\n..\n.hidden\nlast";
    sim.finish(
        "pi",
        &id,
        ResultStatus::Completed,
        json!({"output": output, "exit_code": 0}),
    );
    let conn = sim.client();
    let (reply, _) = sim.text(conn, &format!("task {id}"));
    assert!(
        reply.contains("\nfirst\n..\n...\n..hidden\nlast\n.\n"),
        "{reply:?}"
    );
    let lines = body(&reply);
    let start = lines.iter().position(|l| l == "output:").unwrap();
    assert_eq!(lines[start + 1..].join("\n"), output);
    assert!(lines.contains(&"exit code: 0".to_string()));
}

#[test]
fn drain_auth_and_quit() {
    let mut sim = Sim::new();
    sim.add_worker("pi", 1);
    let conn = sim.client();
    let (reply, after) = sim.text(conn, "drain pi");
    assert_eq!(reply, "draining pi\n.\n");
    assert!(after.is_some());
    check(&mut sim, "drain nope", &["error: no device nope"]);
    check(&mut sim, "auth s3cret", &["ok"]);
    let (reply, _) = sim.text(conn, "quit");
    assert_eq!(reply, "bye\n.\n");
    assert_eq!(
        sim.closed,
        [conn],
        "quit closes the connection after the reply"
    );
}

#[test]
fn tasks_pages_a_hundred_at_a_time_and_names_the_next_page() {
    let mut sim = Sim::new();
    let ids: Vec<String> = (0..205).map(|_| sim.submit(spec("echo"))).collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let rows = |text: &str| -> Vec<String> {
        text.lines()
            .skip(1)
            .filter(|line| !line.starts_with("more: "))
            .map(|line| line.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let first = check(&mut sim, "tasks", &[]);
    assert_eq!(rows(&first), newest_first[..100]);
    let more = format!("more: tasks before {}", newest_first[99]);
    assert_eq!(first.lines().last(), Some(more.as_str()));
    let second = check(&mut sim, &more["more: ".len()..], &[]);
    assert_eq!(rows(&second), newest_first[100..200]);
    let third = check(
        &mut sim,
        &format!("tasks before {}", newest_first[199]),
        &[],
    );
    assert_eq!(rows(&third), newest_first[200..]);
    assert!(!third.contains("more: "), "the last page names no next one");
    // With a state, the next page keeps it.
    let queued = check(&mut sim, "tasks queued", &[]);
    assert!(queued.ends_with(&format!("more: tasks queued before {}", newest_first[99])));
    check(
        &mut sim,
        &format!("tasks queued before {}", ids[0]),
        &["no tasks"],
    );
    check(&mut sim, "tasks before nope", &["error: no task nope"]);
    check(
        &mut sim,
        "tasks before",
        &["error: usage: tasks [STATE] [before ID]"],
    );
}
