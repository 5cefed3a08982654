//! End-to-end tests: the real `retire-master`, `retire-worker` and `retire`
//! binaries on loopback, each test in its own temp dir, waiting on events
//! rather than sleeping.

use protocol::{
    DeviceStatus, Event, Message, Priority, Subscribe, TaskRef, TaskSpec, TaskState, TaskSubmit,
    TaskView,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use tests::{retire, text_command, Client, MasterProcess, WorkerProcess, PATIENCE};

mod backup;
mod browser;
mod config_file;
mod dashboard;
mod discovery;
mod emulation;
mod faults;
mod hostile;
mod http;
mod join_token;
mod nesting;
mod placement;
mod reenroll;
mod retention;
mod sandbox;
mod security;
mod systemd;
mod termux;

fn setup() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// Subscribes to every event on a new connection.
fn subscriber(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    client
        .request(Message::Subscribe(Subscribe::default()))
        .expect("subscribe");
    client
}

/// Starts workers and waits until each has registered.
fn start_workers(master: SocketAddr, workers: &[(&str, usize)]) -> Vec<WorkerProcess> {
    let mut events = subscriber(master);
    let started: Vec<WorkerProcess> = workers
        .iter()
        .map(|(id, slots)| WorkerProcess::start(master, id, *slots, &[]))
        .collect();
    let mut waiting: BTreeSet<String> = workers.iter().map(|(id, _)| id.to_string()).collect();
    while !waiting.is_empty() {
        if let Event::DeviceJoined { device_id } =
            events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }))
        {
            waiting.remove(&device_id);
        }
    }
    started
}

fn task_status(client: &mut Client, task_id: &str) -> TaskView {
    let ack = client
        .request(Message::TaskStatus(TaskRef {
            task_id: task_id.to_string(),
        }))
        .unwrap_or_else(|err| panic!("task_status {task_id}: {}", err.error));
    let reply: protocol::TaskReply = ack.result.parse().expect("a task view");
    reply.task
}

/// Waits until every id in `ids` has finished; returns the final views.
fn wait_finished(events: &mut Client, ids: &BTreeSet<String>) -> BTreeMap<String, TaskView> {
    let mut done = BTreeMap::new();
    while done.len() < ids.len() {
        if let Event::TaskFinished { task } =
            events.wait_event(|e| matches!(e, Event::TaskFinished { .. }))
        {
            if ids.contains(&task.task_id) {
                done.insert(task.task_id.clone(), *task);
            }
        }
    }
    done
}

fn stdout_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "retire failed with {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn submitted_id(output: &std::process::Output) -> String {
    let text = stdout_of(output);
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON from submit --json: {text}"));
    value["task_id"].as_str().expect("a task_id").to_string()
}

#[test]
fn two_workers_run_200_mixed_tasks_submitted_through_the_cli() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let _workers = start_workers(master.addr, &[("alpha", 4), ("beta", 4)]);
    let mut events = subscriber(master.addr);

    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for i in 0..200 {
        let (args, expect): (Vec<String>, Value) = match i % 5 {
            0 => (
                vec![
                    "--type".into(),
                    "echo".into(),
                    "--payload".into(),
                    json!({ "message": format!("m-{i}") }).to_string(),
                ],
                json!(format!("m-{i}")),
            ),
            1 => (
                vec!["--".into(), "sh".into(), "-c".into(), format!("echo s-{i}")],
                json!(format!("s-{i}\n")),
            ),
            2 => (
                vec![
                    "--type".into(),
                    "shell".into(),
                    "--payload".into(),
                    json!({ "command": format!("expr {i} + 1") }).to_string(),
                ],
                json!(format!("{}\n", i + 1)),
            ),
            3 => (
                vec![
                    "--type".into(),
                    "sleep".into(),
                    "--payload".into(),
                    json!({ "seconds": 0.01 }).to_string(),
                ],
                Value::Null,
            ),
            _ => (vec!["--type".into(), "system_info".into()], Value::Null),
        };
        let mut all = vec!["--json", "submit"];
        all.extend(args.iter().map(String::as_str));
        let id = submitted_id(&retire(master.addr, &all));
        expected.insert(id, expect);
    }
    let ids: BTreeSet<String> = expected.keys().cloned().collect();
    let finished = wait_finished(&mut events, &ids);
    let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
    for (id, task) in &finished {
        assert_eq!(task.state, TaskState::Completed, "task {id}: {task:?}");
        let result = task.result.as_ref().expect("a result");
        match task.task_type.as_str() {
            "system_info" => assert!(result["output"].is_object(), "system_info output: {result}"),
            "sleep" => {}
            _ => assert_eq!(result["output"], expected[id], "task {id}"),
        }
        *per_device
            .entry(task.device_id.clone().expect("a device"))
            .or_default() += 1;
    }
    assert_eq!(
        per_device.len(),
        2,
        "both workers ran tasks: {per_device:?}"
    );
}

#[test]
fn submit_wait_streams_the_result_and_exits_with_the_task_code() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let _workers = start_workers(master.addr, &[("solo", 2)]);
    let output = retire(
        master.addr,
        &["submit", "--wait", "--", "sh", "-c", "echo out; exit 3"],
    );
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "out");
    let output = retire(
        master.addr,
        &[
            "submit",
            "--wait",
            "--type",
            "echo",
            "--payload",
            "{\"message\":\"hey\"}",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "hey");
}

#[test]
fn priorities_decide_the_order_and_fifo_breaks_ties() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let mut client = Client::connect(master.addr);
    let order = [
        ("low", Priority::LOW),
        ("normal-1", Priority::NORMAL),
        ("urgent", Priority::URGENT),
        ("normal-2", Priority::NORMAL),
        ("high", Priority::HIGH),
    ];
    for (id, priority) in order {
        let mut spec = TaskSpec::new("echo", json!({ "message": id }));
        spec.task_id = Some(id.to_string());
        spec.priority = priority;
        client
            .request(Message::TaskSubmit(TaskSubmit {
                tasks: vec![spec],
                batch: false,
            }))
            .expect("submit");
    }
    let mut events = subscriber(master.addr);
    let _worker = WorkerProcess::start(master.addr, "one-slot", 1, &[]);
    let mut assigned = Vec::new();
    while assigned.len() < order.len() {
        if let Event::TaskAssigned { task_id, .. } =
            events.wait_event(|e| matches!(e, Event::TaskAssigned { .. }))
        {
            assigned.push(task_id);
        }
    }
    assert_eq!(assigned, ["urgent", "high", "normal-1", "normal-2", "low"]);
}

#[test]
fn huge_output_is_truncated_and_the_worker_keeps_its_connection() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let _workers = start_workers(master.addr, &[("chatty", 1)]);
    let mut events = subscriber(master.addr);
    let mut client = Client::connect(master.addr);
    let mut ids = BTreeSet::new();
    for command in [
        "head -c 10000000 /dev/zero | tr '\\0' x",
        "head -c 3000000 /dev/zero",
        "echo after",
    ] {
        let ack = client
            .request(Message::TaskSubmit(TaskSubmit {
                tasks: vec![TaskSpec::new("shell", json!({ "command": command }))],
                batch: false,
            }))
            .expect("submit");
        let submitted: protocol::Submitted = ack.result.parse().expect("a task id");
        ids.insert(submitted.task_id);
    }
    let finished = wait_finished(&mut events, &ids);
    for task in finished.values() {
        assert_eq!(task.state, TaskState::Completed, "{task:?}");
        let result = task.result.as_ref().expect("a result");
        if task.payload["command"] == "echo after" {
            assert_eq!(result["output"], "after\n");
        } else {
            assert_eq!(result["output_truncated"], true, "flagged as truncated");
            assert!(result["output"].as_str().expect("text").len() <= 1024 * 1024);
        }
    }
    let devices = text_command(master.addr, "devices");
    assert!(
        devices.contains("chatty") && devices.contains("online"),
        "{devices}"
    );
}

#[test]
fn netcat_mode_answers_people() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let _workers = start_workers(master.addr, &[("nc-worker", 1)]);
    let help = text_command(master.addr, "help");
    for word in ["status", "devices", "tasks", "submit", "cancel"] {
        assert!(help.contains(word), "help mentions {word}: {help}");
    }
    let status = text_command(master.addr, "status");
    assert!(status.contains("devices: 1 online of 1"), "{status}");
    let devices = text_command(master.addr, "devices");
    assert!(
        devices.lines().next().is_some_and(|l| l.starts_with("ID")),
        "{devices}"
    );
    assert!(
        devices.contains("nc-worker") && devices.contains("online"),
        "{devices}"
    );

    // Submit and follow one task on one connection, as a person would.
    let mut events = subscriber(master.addr);
    let stream = TcpStream::connect(master.addr).expect("connect");
    let mut writer = stream.try_clone().expect("clone the socket");
    let mut reader = BufReader::new(stream);
    // Changes need the admin token, even from loopback; a wrong one closes
    // the connection.
    writer
        .write_all(b"submit echo {\"message\": \"typed by hand\"}\r\n")
        .expect("send");
    let refused = tests::read_text_reply(&mut reader);
    assert!(refused.contains("auth TOKEN"), "{refused}");
    let admin = tests::tokens_for(master.addr).expect("tokens").admin;
    writer
        .write_all(format!("auth {admin}\n").as_bytes())
        .expect("send");
    assert_eq!(
        tests::read_text_reply(&mut reader),
        "ok: authenticated as admin\n"
    );
    writer
        .write_all(b"submit echo {\"message\": \"typed by hand\"}\r\n")
        .expect("send");
    let reply = tests::read_text_reply(&mut reader);
    let task_id = reply
        .trim()
        .strip_prefix("submitted ")
        .expect("submitted ID")
        .to_string();
    events.wait_event(|e| matches!(e, Event::TaskFinished { task } if task.task_id == task_id));
    writer
        .write_all(format!("task {task_id}\n").as_bytes())
        .expect("send");
    let task = tests::read_text_reply(&mut reader);
    assert!(
        task.contains("state:     completed") && task.contains("typed by hand"),
        "{task}"
    );
    writer.write_all(b"tasks completed\n").expect("send");
    assert!(tests::read_text_reply(&mut reader).contains(&task_id));
    writer
        .write_all(format!("cancel {task_id}\n").as_bytes())
        .expect("send");
    assert!(
        tests::read_text_reply(&mut reader).starts_with("error: task"),
        "finished tasks cannot be cancelled"
    );
    writer.write_all(b"fly me to the moon\n").expect("send");
    assert!(tests::read_text_reply(&mut reader).contains("unknown command"));
    writer.write_all(b"quit\n").expect("send");
    assert_eq!(tests::read_text_reply(&mut reader), "bye\n");
    let mut rest = String::new();
    assert_eq!(
        reader.read_line(&mut rest).expect("read"),
        0,
        "quit closes the connection"
    );
}

/// Sends `json` on one line with no newline, as the older one-shot tools
/// do, and reads the one-line reply. (The examples below are laid out over
/// several lines for reading; on the wire a message is one line.)
fn one_shot(addr: SocketAddr, json: &str) -> Value {
    let line = serde_json::from_str::<Value>(json)
        .expect("the example is JSON")
        .to_string();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(line.as_bytes()).expect("send");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read the reply");
    assert!(line.ends_with('\n'), "replies end with a newline: {line:?}");
    serde_json::from_str(&line).expect("the reply is JSON")
}

#[test]
fn one_shot_clients_and_the_spec_examples_are_answered() {
    let dir = setup();
    // Older workers cannot authenticate: the legacy switch lets them in.
    let master = MasterProcess::start_with(dir.path(), "127.0.0.1:0", &["--allow-legacy-workers"]);
    let register = r#"{"message_type":"register","sender_id":"device-001","timestamp":"2024-01-15T10:30:00Z",
   "data":{"device_info":{"hostname":"android-phone","platform":"android","architecture":"aarch64","python_version":"3.11.0","role":"mobile"},
           "hardware_specs":{"cpu_cores":8,"memory_total":8589934592,"disk_space":128849018880,"network_interfaces":["wlan0"]},
           "capabilities":["computational","network_services","mobile_specific"]}}"#;
    let reply = one_shot(master.addr, register);
    assert_eq!(reply["message_type"], "ack", "{reply}");
    assert_eq!(reply["data"]["result"]["success"], true);
    assert!(reply["data"]["result"]["heartbeat_interval"]
        .as_f64()
        .is_some());

    let heartbeat = r#"{"message_type":"heartbeat","sender_id":"device-001","timestamp":"2024-01-15T10:31:00Z",
  "data":{"system_metrics":{"cpu_usage":25.5,"memory_usage":45.2,"disk_usage":12.8,"load_average":[0.5,0.3,0.2],"uptime":86400},
          "status":"online","active_tasks":2,"last_activity":"2024-01-15T10:30:45Z"}}"#;
    let reply = one_shot(master.addr, heartbeat);
    assert_eq!(reply["message_type"], "ack", "{reply}");
    assert_eq!(reply["data"]["result"]["success"], true);
    let older = r#"{"message_type":"heartbeat","sender_id":"device-001","data":{"metrics":{"cpu_usage":1.0,"memory_usage":2.0,"storage_usage":3.0}}}"#;
    assert_eq!(one_shot(master.addr, older)["message_type"], "ack");

    let flat = r#"{"message_type":"register","sender_id":"old-pi","data":{"role":"worker","platform":"linux","hostname":"pi","ip_address":"192.0.2.7","cpu_count":4,"memory_total_gb":7.6,"storage_total_gb":58.2,"capabilities":{"computational":["general_compute"]},"tags":["linux","worker"],"max_concurrent_tasks":2}}"#;
    assert_eq!(one_shot(master.addr, flat)["message_type"], "ack");

    let status = one_shot(
        master.addr,
        r#"{"message_type":"status","message_id":"s1"}"#,
    );
    assert_eq!(status["data"]["original_message_id"], "s1");
    let stats = &status["data"]["result"]["cluster_stats"];
    assert_eq!(stats["total_devices"], 2, "{stats}");
    assert!(
        stats["total_resources"].is_object()
            && stats["by_role"].is_object()
            && stats["by_platform"].is_object()
    );

    let info = one_shot(
        master.addr,
        r#"{"message_type":"device_info","data":{"device_id":"old-pi"}}"#,
    );
    let device = &info["data"]["result"]["device"];
    assert_eq!(device["hardware"]["cpu_count"], 4, "{device}");
    assert_eq!(device["slots"], 2);
    assert_eq!(device["tags"], json!(["linux", "worker"]));
    let memory = device["hardware"]["memory_total_gb"]
        .as_f64()
        .expect("memory");
    assert!((memory - 7.6).abs() < 1e-9, "{memory}");

    let list = one_shot(
        master.addr,
        r#"{"message_type":"list_devices","data":{"role":"mobile"}}"#,
    );
    let devices = list["data"]["result"]["devices"]
        .as_array()
        .expect("devices")
        .clone();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], "device-001");
    assert_eq!(
        devices[0]["status"],
        DeviceStatus::Offline.as_str(),
        "one-shot register leaves no live socket"
    );

    let bad = one_shot(
        master.addr,
        r#"{"message_type":"warp_drive","message_id":7}"#,
    );
    assert_eq!(bad["message_type"], "error");
    assert_eq!(bad["data"]["code"], "unknown_message_type");
    assert_eq!(bad["data"]["original_message_id"], "7");
}

#[test]
fn acknowledged_tasks_survive_kill_9_of_the_master_and_then_complete() {
    let dir = setup();
    let mut master = MasterProcess::start(dir.path());
    let addr = master.addr;

    // Some tasks finish before the crash; their results must survive too.
    let workers = start_workers(addr, &[("before", 2)]);
    let mut client = Client::connect(addr);
    let mut events = subscriber(addr);
    let early: Vec<TaskSpec> = (0..20)
        .map(|i| TaskSpec::new("echo", json!({ "message": format!("early-{i}") })))
        .collect();
    let ack = client
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: early,
            batch: true,
        }))
        .expect("batch submit");
    let batch: protocol::BatchSubmitted = ack.result.parse().expect("a batch's ids");
    let early_ids: BTreeSet<String> = batch.task_ids.into_iter().collect();
    wait_finished(&mut events, &early_ids);
    drop(workers);

    // Submissions race with the kill: a thread submits one task at a time
    // and records each id only once its ack has arrived.
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<String>();
    let submitter = std::thread::spawn(move || {
        let mut client = Client::connect(addr);
        for i in 0.. {
            let mut spec = TaskSpec::new("echo", json!({ "message": format!("late-{i}") }));
            spec.task_id = Some(format!("late-{i}"));
            let message = Message::TaskSubmit(TaskSubmit {
                tasks: vec![spec],
                batch: false,
            });
            let id = client.send(message, None);
            // Any failure to read means the master died: stop submitting.
            let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
                let envelope = client.next_message();
                if let Message::Ack(ack) = envelope.message {
                    if ack.original_message_id.as_deref() == Some(id.as_str()) {
                        let submitted: protocol::Submitted = ack.result.parse().expect("a task id");
                        return vec![submitted.task_id];
                    }
                }
            }));
            match reply {
                Ok(ids) => {
                    for id in ids {
                        if acked_tx.send(id).is_err() {
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    });
    let mut acked: Vec<String> = Vec::new();
    while acked.len() < 150 {
        acked.push(
            acked_rx
                .recv_timeout(PATIENCE)
                .expect("submits are acknowledged"),
        );
    }
    master.kill9();
    let _ = submitter.join();
    acked.extend(acked_rx.try_iter());

    let master = MasterProcess::start_with(dir.path(), &addr.to_string(), &[]);
    let mut client = Client::connect(master.addr);
    for id in &early_ids {
        let task = task_status(&mut client, id);
        assert_eq!(task.state, TaskState::Completed, "{id} kept its result");
        assert!(task.result.is_some());
    }
    let acked_set: BTreeSet<String> = acked.iter().cloned().collect();
    let mut events = subscriber(master.addr);
    let mut unfinished = BTreeSet::new();
    for id in &acked_set {
        let task = task_status(&mut client, id);
        assert_eq!(
            task.state,
            TaskState::Queued,
            "{id} is queued after the restart"
        );
        unfinished.insert(id.clone());
    }
    let _workers = start_workers(master.addr, &[("after", 4)]);
    let finished = wait_finished(&mut events, &unfinished);
    for (id, task) in finished {
        assert_eq!(task.state, TaskState::Completed);
        assert_eq!(task.result.expect("a result")["output"], json!(id));
    }
}

#[test]
fn dev_mode_runs_a_master_with_a_local_worker() {
    let dir = setup();
    let master = MasterProcess::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--dev"]);
    let output = retire(
        master.addr,
        &["submit", "--wait", "--", "echo", "hello from the cluster"],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "hello from the cluster"
    );
    let devices = stdout_of(&retire(master.addr, &["devices"]));
    assert!(devices.contains("local"), "{devices}");
}

#[test]
fn sigterm_stops_the_master_cleanly() {
    let dir = setup();
    let mut master = MasterProcess::start(dir.path());
    let mut client = Client::connect(master.addr);
    client
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![TaskSpec::new("echo", json!({}))],
            batch: false,
        }))
        .expect("submit");
    let status = master.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_handler_from_the_folder_reports_progress_to_subscribers_and_its_json_output() {
    let dir = setup();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).expect("mkdir");
    let script = handlers.join("thumbnail");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         payload=$(cat)\n\
         echo '{\"fraction\": 0.5, \"done\": 1, \"total\": 2, \"message\": \"one of two\"}' >&3\n\
         printf '{\"id\":\"%s\",\"got\":%s}' \"$RETIRE_TASK_ID\" \"$payload\"\n",
    )
    .expect("write the handler");
    // Tasks may run as another user (a root worker runs them as nobody), so the
    // handler and the folders above it must be readable and searchable by anyone.
    for (path, mode) in [
        (dir.path(), 0o755),
        (handlers.as_path(), 0o755),
        (script.as_path(), 0o755),
    ] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    }
    let master = MasterProcess::start(&dir.path().join("data"));
    let mut events = subscriber(master.addr);
    let handlers_arg = handlers.to_string_lossy().into_owned();
    let _worker = WorkerProcess::start(master.addr, "painter", 1, &["--handlers", &handlers_arg]);
    events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }));
    let mut client = Client::connect(master.addr);
    let mut task = TaskSpec::new("thumbnail", json!({"photo": "cat.jpg"}));
    task.task_id = Some("thumb-1".into());
    client
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![task],
            batch: false,
        }))
        .expect("submit");
    let progress = events.wait_event(|e| matches!(e, Event::TaskProgress(_)));
    let Event::TaskProgress(progress) = progress else {
        unreachable!("filtered above")
    };
    assert_eq!(progress.task_id, "thumb-1");
    assert_eq!(progress.fraction, Some(0.5));
    assert_eq!(progress.done, Some(1));
    assert_eq!(progress.total, Some(2));
    assert_eq!(progress.message.as_deref(), Some("one of two"));
    let finished = wait_finished(&mut events, &BTreeSet::from(["thumb-1".to_string()]));
    let task = &finished["thumb-1"];
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    let result = task.result.as_ref().expect("a result");
    assert_eq!(
        result["output"],
        json!({"id": "thumb-1", "got": {"photo": "cat.jpg"}})
    );
    assert!(
        result["sandbox"]["process_group"] == json!(true),
        "{result}"
    );
}
