//! Issue 11, item 4, against the release binaries: deeply nested JSON is
//! refused at the edge, a value at the limit goes all the way through a
//! real worker and back to `retire task`, and a poisoned record in the
//! database no longer stops the master from starting.

use super::{setup, start_workers, stdout_of, subscriber, task_status, wait_finished};
use protocol::{ListTasks, Message, TaskState, MAX_VALUE_DEPTH};
use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use tests::{check_database, read_text_reply, retire, tokens_for, Client, MasterProcess};

/// `depth` arrays around a number, as JSON text.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn nested_json_is_refused_at_the_edge_and_a_poisoned_record_does_not_stop_the_master() {
    let dir = setup();
    let mut master = MasterProcess::start(dir.path());
    let _workers = start_workers(master.addr, &[("deep-worker", 2)]);
    let mut events = subscriber(master.addr);

    // The attack as reproduced: a text-mode submit nested 126 deep.
    let stream = TcpStream::connect(master.addr).expect("connect");
    let mut writer = stream.try_clone().expect("clone the socket");
    let mut reader = BufReader::new(stream);
    let admin = tokens_for(master.addr).expect("tokens").admin;
    let mut text = |command: String| {
        writer
            .write_all(format!("{command}\n").as_bytes())
            .expect("send");
        read_text_reply(&mut reader)
    };
    assert!(text(format!("auth {admin}")).starts_with("ok"));
    let refused = text(format!("submit echo {}", nested(126)));
    assert!(
        refused.starts_with("error: payload nests more than 64 levels deep"),
        "{refused}"
    );
    // At the limit it runs on the real worker and comes back in full.
    let accepted = text(format!("submit echo {}", nested(MAX_VALUE_DEPTH)));
    let task_id = accepted
        .trim()
        .strip_prefix("submitted ")
        .unwrap_or_else(|| panic!("{accepted}"))
        .to_string();
    let finished = wait_finished(&mut events, &BTreeSet::from([task_id.clone()]));
    let task = &finished[&task_id];
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    let output = task
        .result
        .as_ref()
        .map(|result| result["output"].to_string());
    assert_eq!(output, Some(nested(MAX_VALUE_DEPTH)));
    // Every reader can show it: no "unreadable reply".
    assert!(stdout_of(&retire(master.addr, &["task", &task_id])).contains("completed"));
    stdout_of(&retire(master.addr, &["devices"]));
    // Nothing over the limit was stored.
    let mut client = Client::connect(master.addr);
    let listing = client
        .request(Message::ListTasks(ListTasks::default()))
        .expect("list");
    let tasks = listing.result.fields()["tasks"].clone();
    let tasks = tasks.as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    master.terminate();

    // A record no master of this version writes, put there by hand.
    let database = rusqlite::Connection::open(dir.path().join("retire.db")).expect("open");
    let record = format!(
        r#"{{"task_id":"poisoned","seq":99,"spec":{{"task_id":"poisoned","task_type":"echo","payload":{}}},"state":"assigned","attempt":1,"device_id":"deep-worker","submitted_unix_ms":0}}"#,
        nested(126)
    );
    database
        .execute(
            "INSERT INTO tasks (task_id, seq, state, record) VALUES ('poisoned', 99, 'assigned', ?1)",
            [record],
        )
        .expect("poison the database");
    drop(database);
    let check = check_database(dir.path());
    let report = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "--check must not say ok: {report}");
    assert!(
        report.contains("poisoned") && report.contains("recursion limit"),
        "{report}"
    );

    // The master starts, sets it aside, says so, and serves the rest.
    let master = MasterProcess::start(dir.path());
    let mut client = Client::connect(master.addr);
    assert_eq!(
        task_status(&mut client, &task_id).state,
        TaskState::Completed
    );
    let ack = client.request(Message::Status).expect("status");
    let stats = ack.result.fields()["cluster_stats"].clone();
    assert_eq!(stats["quarantined"], 1, "{stats}");
    assert!(stdout_of(&retire(master.addr, &["task", &task_id])).contains("completed"));
    let status = stdout_of(&retire(master.addr, &["status"]));
    assert!(
        status.contains("quarantined") && status.contains("1 records"),
        "{status}"
    );
    let status = tests::text_command(master.addr, "status");
    assert!(status.contains("quarantined: 1 records"), "{status}");
}
