//! The client and the commands against a real socket.
//!
//! The peer is a tiny scripted stand-in for the master: a thread that
//! accepts one connection on `127.0.0.1:0`, reads requests and writes the
//! bytes each test dictates. Every step waits on the socket itself, never on
//! a sleep.

use clap::Parser;
use cli::args::Cli;
use cli::client::{Client, ClientError};
use protocol::{Event, ListTasks, Message};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Long enough never to fire on a slow machine; a test that would hang
/// fails with a timeout instead.
const GENEROUS: Duration = Duration::from_secs(20);

/// The master's side of one connection.
struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Peer {
    /// Reads one request line and checks that it carries a `message_id`.
    fn request(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a request line");
        assert!(
            line.ends_with('\n'),
            "requests end with a newline: {line:?}"
        );
        let request: Value = serde_json::from_str(&line).expect("a JSON request");
        assert!(
            request["message_id"].is_string(),
            "no message_id: {request}"
        );
        request
    }

    fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to the client");
        self.writer.flush().expect("flush to the client");
    }

    fn ack_line(request: &Value, result: Value) -> String {
        let mut fields = json!({"success": true});
        if let (Some(fields), Value::Object(result)) = (fields.as_object_mut(), result) {
            fields.extend(result);
        }
        let reply = json!({"message_type": "ack", "sender_id": "main-node",
            "data": {"original_message_id": request["message_id"], "result": fields}});
        format!("{reply}\n")
    }

    fn ack(&mut self, request: &Value, result: Value) {
        self.write(Self::ack_line(request, result).as_bytes());
    }

    fn event(&mut self, event: Value) {
        let line = json!({"message_type": "event", "sender_id": "main-node", "data": event});
        self.write(format!("{line}\n").as_bytes());
    }

    /// Reads until the client closes the connection, so the test decides
    /// when the conversation ends.
    fn until_closed(&mut self) {
        let mut rest = String::new();
        let read = self
            .reader
            .read_line(&mut rest)
            .expect("read until the client closes");
        assert_eq!(read, 0, "unexpected extra request: {rest:?}");
    }
}

/// Starts a peer that runs `script` on the first connection, and returns
/// its address.
fn peer(script: impl FnOnce(&mut Peer) + Send + 'static) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("a bound address").to_string();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept the client");
        stream.set_nodelay(true).expect("no delay");
        let writer = stream.try_clone().expect("clone the stream");
        let mut peer = Peer {
            reader: BufReader::new(stream),
            writer,
        };
        script(&mut peer);
    });
    (addr, handle)
}

fn connect(addr: &str) -> Client {
    Client::connect(addr, GENEROUS).expect("connect to the peer")
}

fn task_view(task_id: &str, state: &str) -> Value {
    json!({"task_id": task_id, "task_type": "shell", "state": state, "priority": "normal",
           "payload": {}, "attempt": 1, "submitted_at": "2024-01-15T10:30:00Z"})
}

#[test]
fn events_are_queued_while_a_reply_is_awaited_and_a_split_reply_is_read() {
    let (addr, handle) = peer(|peer| {
        let request = peer.request();
        assert_eq!(request["message_type"], "status");
        peer.event(json!({"event": "device_joined", "device_id": "pi"}));
        // A reply to some other request is not this request's answer.
        let stray = json!({"message_id": "someone-else"});
        peer.write(Peer::ack_line(&stray, json!({"cluster_stats": null})).as_bytes());
        // The answer comes in two writes and without a newline, as an
        // older master might send it; the connection stays open.
        let reply = Peer::ack_line(
            &request,
            json!({"cluster_stats": {"total_devices": 3,
            "online_devices": 2, "health_percentage": 66.7, "by_role": {}, "by_platform": {},
            "total_resources": {"cpu_cores": 12, "memory_gb": 15.5, "storage_gb": 100.0}}}),
        );
        let reply = reply.trim_end().as_bytes();
        let (first, second) = reply.split_at(reply.len() / 2);
        peer.write(first);
        peer.write(second);
        peer.until_closed();
    });
    let mut client = connect(&addr);
    let stats = client.cluster_status().expect("the status reply");
    assert_eq!((stats.total_devices, stats.online_devices), (3, 2));
    assert_eq!(stats.total_resources.cpu_cores, 12);
    let event = client
        .next_event(Some(Instant::now()))
        .expect("the queued event");
    assert_eq!(
        event,
        Some(Event::DeviceJoined {
            device_id: "pi".into()
        })
    );
    drop(client);
    handle.join().expect("the peer ran its script");
}

#[test]
fn an_error_reply_keeps_its_code_and_the_connection_stays_usable() {
    let (addr, handle) = peer(|peer| {
        let request = peer.request();
        assert_eq!(request["message_type"], "task_status");
        assert_eq!(request["data"]["task_id"], "nope");
        let reply = json!({"message_type": "error", "data": {
            "original_message_id": request["message_id"], "error": "no task nope",
            "code": "not_found"}});
        peer.write(format!("{reply}\r\n").as_bytes());

        // A code newer than this client still reaches the user.
        let request = peer.request();
        let reply = json!({"message_type": "error", "data": {
            "original_message_id": request["message_id"], "error": "token expired",
            "code": "auth_expired"}});
        peer.write(format!("{reply}\n").as_bytes());

        let request = peer.request();
        assert_eq!(request["message_type"], "list_tasks");
        assert_eq!(request["data"], json!({"state": "running", "limit": 5}));
        peer.ack(&request, json!({"tasks": [task_view("t-1", "running")]}));
        peer.until_closed();
    });
    let mut client = connect(&addr);
    let error = client.task_status("nope").expect_err("an error reply");
    assert_eq!(error.to_string(), "no task nope (not_found)");
    assert_eq!(error.master_code(), Some(protocol::ErrorCode::NotFound));

    let error = client.request(Message::Status).expect_err("an error reply");
    assert!(
        matches!(&error, ClientError::Master { code, .. } if code == "auth_expired"),
        "{error:?}"
    );
    assert_eq!(error.master_code(), None);

    let tasks = client
        .list_tasks(ListTasks {
            state: Some(protocol::TaskState::Running),
            limit: Some(5),
            before: None,
        })
        .expect("the task list");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, "t-1");
    drop(client);
    handle.join().expect("the peer ran its script");
}

#[test]
fn a_connection_closed_before_the_reply_is_reported() {
    let (addr, handle) = peer(|peer| {
        peer.request();
        // Dropping the peer closes the connection without an answer.
    });
    let mut client = connect(&addr);
    let error = client.cancel("t-1").expect_err("no reply");
    assert!(matches!(error, ClientError::Closed), "{error:?}");
    handle.join().expect("the peer ran its script");
}

#[test]
fn a_silent_master_times_out() {
    let (addr, handle) = peer(|peer| {
        peer.request();
        peer.until_closed();
    });
    let mut client = connect(&addr);
    client.set_reply_timeout(Some(Duration::from_millis(100)));
    let error = client.drain("pi").expect_err("no reply");
    assert!(
        matches!(
            error,
            ClientError::ReplyTimeout {
                request: "drain_device",
                ..
            }
        ),
        "{error:?}"
    );
    drop(client);
    handle.join().expect("the peer ran its script");
}

#[test]
fn nobody_listening_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("a bound address").to_string();
    drop(listener);
    let error = Client::connect(&addr, GENEROUS).expect_err("nobody listens");
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
}

/// Runs `retire ARGS…` against `addr` and returns the exit code (or the
/// error), standard output and standard error.
fn retire(addr: &str, args: &[&str]) -> (Result<u8, cli::Error>, String, String) {
    let argv = ["retire", "--master", addr]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).expect("valid flags");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = cli::run(&cli, &mut out, &mut err);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (result, text(out), text(err))
}

#[test]
fn submit_wait_subscribes_first_and_exits_with_the_tasks_code() {
    let (addr, handle) = peer(|peer| {
        let subscribe = peer.request();
        assert_eq!(subscribe["message_type"], "subscribe");
        let task_id = subscribe["data"]["task_ids"][0]
            .as_str()
            .expect("the subscription names the task")
            .to_string();
        assert!(task_id.starts_with("cli-"), "{task_id}");
        peer.ack(&subscribe, json!({}));

        let submit = peer.request();
        assert_eq!(submit["message_type"], "task_submit");
        assert_eq!(
            submit["data"]["task"],
            json!({"task_id": task_id, "task_type": "shell", "priority": "normal",
                   "payload": {"argv": ["sh", "-c", "echo hello"]}})
        );
        peer.ack(&submit, json!({"task_id": task_id}));

        let status = peer.request();
        assert_eq!(status["message_type"], "task_status");
        // The progress event overtakes the status reply.
        peer.event(
            json!({"event": "task_progress", "task_id": task_id, "fraction": 0.5,
                          "done": 1, "total": 2, "message": "halfway"}),
        );
        peer.ack(&status, json!({"task": task_view(&task_id, "running")}));
        peer.event(json!({"event": "task_finished", "task": task_view("other", "completed")}));
        let mut finished = task_view(&task_id, "failed");
        finished["result"] = json!({"output": "hello", "stderr": "careful\n", "exit_code": 3});
        finished["error"] = json!("exit status 3");
        peer.event(json!({"event": "task_finished", "task": finished}));
        peer.until_closed();
    });
    let (result, out, err) = retire(&addr, &["submit", "--wait", "--", "sh", "-c", "echo hello"]);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("the wait succeeded"), 3);
    assert_eq!(out, "hello\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(lines[0].starts_with("waiting for task cli-"), "{err}");
    assert!(lines[1].ends_with(": 50% 1/2 halfway"), "{err}");
    assert_eq!(lines[2], "careful");
    assert!(lines[3].ends_with(" failed: exit status 3"), "{err}");
}

/// `submit --wait --json` prints the finished task's document: the one
/// `task ID --json` prints, as the master answers `task_status`.
#[test]
fn submit_wait_json_prints_the_task_document() {
    let mut done = task_view("job-2", "completed");
    done["max_retries"] = json!(0);
    done["result"] = json!({"output": "hi", "exit_code": 0});
    let answer = done.clone();
    let (addr, handle) = peer(move |peer| {
        let subscribe = peer.request();
        peer.ack(&subscribe, json!({}));
        let submit = peer.request();
        peer.ack(&submit, json!({"task_id": "job-2"}));
        let status = peer.request();
        assert_eq!(status["message_type"], "task_status");
        peer.ack(&status, json!({"task": answer}));
        peer.until_closed();
    });
    let args = [
        "--json", "submit", "--type", "echo", "--id", "job-2", "--wait",
    ];
    let (result, waited, _) = retire(&addr, &args);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("the wait succeeded"), 0);
    let printed: Value = serde_json::from_str(&waited).expect("JSON output");
    assert_eq!(printed, json!({"success": true, "task": done}));

    let answer = done.clone();
    let (addr, handle) = peer(move |peer| {
        let status = peer.request();
        peer.ack(&status, json!({"task": answer}));
        peer.until_closed();
    });
    let (result, shown, _) = retire(&addr, &["--json", "task", "job-2"]);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("shown"), 0);
    assert_eq!(waited, shown);
}

#[test]
fn submit_wait_on_a_task_that_already_finished_needs_no_event() {
    let (addr, handle) = peer(|peer| {
        let subscribe = peer.request();
        assert_eq!(subscribe["data"]["task_ids"], json!(["job-1"]));
        peer.ack(&subscribe, json!({}));
        let submit = peer.request();
        assert_eq!(submit["data"]["task"]["task_id"], "job-1");
        peer.ack(&submit, json!({"task_id": "job-1"}));
        let status = peer.request();
        let mut done = task_view("job-1", "completed");
        done["result"] = json!({"output": {"sum": 4}});
        peer.ack(&status, json!({"task": done}));
        peer.until_closed();
    });
    let (result, out, _) = retire(
        &addr,
        &[
            "submit",
            "--type",
            "echo",
            "--payload",
            "{}",
            "--id",
            "job-1",
            "--wait",
        ],
    );
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("the wait succeeded"), 0);
    assert_eq!(out, "{\n  \"sum\": 4\n}\n");
}

#[test]
fn submit_prints_the_id_and_json_prints_the_result() {
    let (addr, handle) = peer(|peer| {
        let submit = peer.request();
        assert_eq!(
            submit["data"]["task"]["requirements"],
            json!({"tags": ["gpu"]})
        );
        peer.ack(&submit, json!({"task_id": "t-42"}));
        peer.until_closed();
    });
    let (result, out, err) = retire(&addr, &["submit", "--type", "echo", "--require", "tag=gpu"]);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("submitted"), 0);
    assert_eq!((out.as_str(), err.as_str()), ("t-42\n", ""));

    let (addr, handle) = peer(|peer| {
        let request = peer.request();
        assert_eq!(request["message_type"], "list_devices");
        assert_eq!(request["data"], json!({"role": "worker"}));
        peer.ack(&request, json!({"devices": []}));
        peer.until_closed();
    });
    let (result, out, _) = retire(&addr, &["devices", "--role", "worker", "--json"]);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("listed"), 0);
    let printed: Value = serde_json::from_str(&out).expect("JSON output");
    assert_eq!(printed, json!({"success": true, "devices": []}));
}

#[test]
fn a_master_error_surfaces_as_a_typed_error() {
    let (addr, handle) = peer(|peer| {
        let request = peer.request();
        assert_eq!(request["message_type"], "task_cancel");
        let reply = json!({"message_type": "error", "data": {
            "original_message_id": request["message_id"],
            "error": "task t-1 already completed", "code": "invalid_state"}});
        peer.write(format!("{reply}\n").as_bytes());
        peer.until_closed();
    });
    let (result, out, _) = retire(&addr, &["cancel", "t-1"]);
    handle.join().expect("the peer ran its script");
    let error = result.expect_err("the master refused");
    assert_eq!(
        error.to_string(),
        "task t-1 already completed (invalid_state)"
    );
    assert!(matches!(
        error,
        cli::Error::Client(ClientError::Master { .. })
    ));
    assert_eq!(out, "");
}

fn device_view(device_id: &str) -> Value {
    json!({"device_id": device_id, "role": "worker", "status": "online", "platform": "linux",
           "hardware": {"cpu_count": 4, "memory_total_gb": 8.0, "storage_total_gb": 64.0},
           "slots": 2, "active_tasks": 0})
}

#[test]
fn devices_pages_with_before_and_names_the_next_page_on_stderr() {
    let (addr, handle) = peer(|peer| {
        let first = peer.request();
        assert_eq!(first["message_type"], "list_devices");
        assert_eq!(first["data"], json!({"role": "worker", "limit": 2}));
        peer.ack(
            &first,
            json!({"count": 2, "devices": [device_view("pi-9"), device_view("pi-8")],
                   "next_cursor": "pi-8"}),
        );
        peer.until_closed();
    });
    let (result, out, err) = retire(&addr, &["devices", "--role", "worker", "--limit", "2"]);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("a listing"), 0);
    let rows: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().expect("an id"))
        .collect();
    assert_eq!(rows, ["pi-9", "pi-8"], "{out}");
    assert_eq!(
        err,
        "more: retire devices --role worker --limit 2 --before pi-8\n"
    );

    // The next page: `--before` is sent; the last page (or an older master,
    // which never sends a cursor) names no next one.
    let (addr, handle) = peer(|peer| {
        let next = peer.request();
        assert_eq!(
            next["data"],
            json!({"role": "worker", "limit": 2, "before": "pi-8"})
        );
        peer.ack(&next, json!({"count": 1, "devices": [device_view("pi-7")]}));
        peer.until_closed();
    });
    let args = [
        "devices", "--role", "worker", "--limit", "2", "--before", "pi-8",
    ];
    let (result, out, err) = retire(&addr, &args);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("a listing"), 0);
    assert!(out.contains("pi-7"), "{out}");
    assert_eq!(err, "");
}

#[test]
fn tasks_pages_with_before_and_names_the_next_page_on_stderr() {
    let (addr, handle) = peer(|peer| {
        let first = peer.request();
        assert_eq!(first["message_type"], "list_tasks");
        assert_eq!(first["data"], json!({"state": "queued", "limit": 2}));
        peer.ack(
            &first,
            json!({"count": 2, "tasks": [task_view("t-9", "queued"), task_view("t-8", "queued")],
                   "next_cursor": "t-8"}),
        );
        peer.until_closed();
    });
    let (result, out, err) = retire(&addr, &["tasks", "--state", "queued", "--limit", "2"]);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("a listing"), 0);
    let rows: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().expect("an id"))
        .collect();
    assert_eq!(rows, ["t-9", "t-8"], "{out}");
    assert_eq!(
        err,
        "more: retire tasks --state queued --limit 2 --before t-8\n"
    );

    // The next page: `--before` is sent; the last page (or an older master,
    // which never sends a cursor) names no next one.
    let (addr, handle) = peer(|peer| {
        let next = peer.request();
        assert_eq!(
            next["data"],
            json!({"state": "queued", "limit": 2, "before": "t-8"})
        );
        peer.ack(
            &next,
            json!({"count": 1, "tasks": [task_view("t-7", "queued")]}),
        );
        peer.until_closed();
    });
    let args = [
        "tasks", "--state", "queued", "--limit", "2", "--before", "t-8",
    ];
    let (result, out, err) = retire(&addr, &args);
    handle.join().expect("the peer ran its script");
    assert_eq!(result.expect("a listing"), 0);
    assert!(out.contains("t-7"), "{out}");
    assert_eq!(err, "");
}
