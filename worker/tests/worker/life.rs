//! The `retire-worker` binary's life with a scripted master on a real socket: results
//! that survive a `kill -9` of the worker, a graceful leave on SIGTERM, and the power
//! readings its heartbeats carry from a fake sysfs tree.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// The longest any single step may take before the test counts as hung. Every wait ends
/// as soon as what it waits for happens.
const STEP_LIMIT: Duration = Duration::from_secs(20);

const DEVICE: &str = "life-worker";

/// The master's end of one worker connection, driven line by line.
struct ScriptedMaster {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl ScriptedMaster {
    /// Accepts the worker's next connection, failing the test if none comes.
    fn accept(listener: &TcpListener) -> ScriptedMaster {
        let listener = listener.try_clone().expect("clone the listener");
        let (sender, accepted) = crossbeam_channel::bounded(1);
        thread::spawn(move || {
            let _ = sender.send(listener.accept().map(|(stream, _)| stream));
        });
        let stream = accepted
            .recv_timeout(STEP_LIMIT)
            .expect("the worker connects")
            .expect("accept succeeds");
        stream
            .set_read_timeout(Some(STEP_LIMIT))
            .expect("set a read timeout");
        ScriptedMaster {
            reader: BufReader::new(stream.try_clone().expect("clone the stream")),
            writer: stream,
        }
    }

    /// Accepts a connection and answers its register; the heartbeat interval is an hour,
    /// so every heartbeat the test sees was sent on purpose.
    fn accept_registered(listener: &TcpListener) -> (ScriptedMaster, Value) {
        let mut master = ScriptedMaster::accept(listener);
        let register = master.recv();
        assert_eq!(register["message_type"], "register", "{register}");
        assert_eq!(register["sender_id"], DEVICE);
        master.ack(&register, json!({"heartbeat_interval": 3600}));
        (master, register)
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n_read = self.reader.read_line(&mut line).expect("read a line");
        assert!(n_read > 0, "the worker closed the connection");
        serde_json::from_str(&line).expect("the worker sends JSON")
    }

    fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .expect("write to the worker");
    }

    fn ack(&mut self, request: &Value, fields: Value) {
        let mut result = json!({"success": true});
        if let (Some(result), Value::Object(fields)) = (result.as_object_mut(), fields) {
            result.extend(fields);
        }
        self.send(json!({
            "message_type": "ack",
            "sender_id": "main-node",
            "data": {"original_message_id": request["message_id"], "result": result},
        }));
    }

    fn assign_accepted(&mut self, task_id: &str, attempt: u32, task_type: &str, payload: Value) {
        self.send(json!({
            "message_type": "task_assign",
            "sender_id": "main-node",
            "message_id": format!("assign:{attempt}:{task_id}"),
            "data": {
                "task": {"task_id": task_id, "task_type": task_type, "payload": payload},
                "attempt": attempt,
            },
        }));
        let reply = self.recv();
        assert_eq!(reply["message_type"], "ack", "{reply}");
        assert_eq!(
            reply["data"]["original_message_id"],
            json!(format!("assign:{attempt}:{task_id}"))
        );
    }

    /// Reads messages up to and including the goodbye, acknowledging it.
    fn until_goodbye(&mut self) -> Vec<Value> {
        let mut before = Vec::new();
        loop {
            let message = self.recv();
            if message["message_type"] == "goodbye" {
                self.ack(&message, json!({"message": "goodbye"}));
                return before;
            }
            if message["message_type"] == "heartbeat" {
                self.ack(&message, json!({}));
            }
            before.push(message);
        }
    }
}

fn start_worker(listener: &TcpListener, state: &Path, extra: &[&str]) -> Child {
    let address = listener.local_addr().expect("local address");
    Command::new(env!("CARGO_BIN_EXE_retire-worker"))
        .arg("--join")
        .arg(address.to_string())
        .arg("--id")
        .arg(DEVICE)
        .arg("--slots")
        .arg("2")
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start retire-worker")
}

fn signal(child: &Child, signal: i32) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill takes plain integers; the child is ours and not yet reaped.
    let outcome = unsafe { libc::kill(pid, signal) };
    assert_eq!(outcome, 0, "kill -{signal} {pid}");
}

/// Waits for the child to exit, failing the test after `limit`.
fn wait_within(child: Child, limit: Duration) -> ExitStatus {
    let (sender, exited) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let mut child = child;
        let _ = sender.send(child.wait());
    });
    exited
        .recv_timeout(limit)
        .expect("the worker exits in time")
        .expect("wait for the worker")
}

/// The results waiting in the worker's outbox under `state`, as a reader of the disk
/// sees them.
fn outbox_results(state: &Path) -> Vec<worker::session::StoredResult> {
    worker::state::outbox::Outbox::peek(state, DEVICE).expect("the outbox can be read")
}

fn task_results(messages: &[Value]) -> Vec<&Value> {
    messages
        .iter()
        .filter(|message| message["message_type"] == "task_result")
        .collect()
}

#[test]
fn a_result_not_acknowledged_before_kill_9_is_sent_once_by_the_restarted_worker() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let state = tempfile::tempdir().expect("a temp dir");

    // First run: the task finishes, its result is sent, and the worker is killed before
    // the master acknowledges it.
    let mut worker = start_worker(&listener, state.path(), &[]);
    let (mut master, _) = ScriptedMaster::accept_registered(&listener);
    master.assign_accepted("t-1", 3, "echo", json!({"message": "survives"}));
    let sent = master.recv();
    assert_eq!(sent["message_type"], "task_result", "{sent}");
    assert_eq!(sent["data"]["attempt"], json!(3));
    worker.kill().expect("kill -9 the worker");
    wait_within(worker, STEP_LIMIT);
    drop(master);
    assert_eq!(outbox_results(state.path()).len(), 1);

    // Second run, same state dir: nothing runs any more, but it still holds the
    // unacknowledged result, so it lists that attempt (the master then keeps the task
    // for it) and resends the result under the same id, once.
    let worker = start_worker(&listener, state.path(), &[]);
    let (mut master, register) = ScriptedMaster::accept_registered(&listener);
    assert_eq!(
        register["data"]["running_tasks"],
        json!([{"task_id": "t-1", "attempt": 3}]),
        "{register}"
    );
    let resent = master.recv();
    assert_eq!(resent["message_type"], "task_result", "{resent}");
    assert_eq!(resent["message_id"], sent["message_id"]);
    assert_eq!(resent["data"], sent["data"]);
    assert_eq!(resent["data"]["result"]["output"], "survives");
    master.ack(&resent, json!({"recorded": true}));
    signal(&worker, libc::SIGTERM);
    let before_goodbye = master.until_goodbye();
    assert!(
        task_results(&before_goodbye).is_empty(),
        "{before_goodbye:?}"
    );
    assert!(wait_within(worker, STEP_LIMIT).success());
    assert_eq!(outbox_results(state.path()), Vec::new());

    // Third run: nothing left to send. Its first messages after the register ack would
    // be any results; it goes straight to goodbye.
    let worker = start_worker(&listener, state.path(), &[]);
    let (mut master, _) = ScriptedMaster::accept_registered(&listener);
    signal(&worker, libc::SIGTERM);
    let before_goodbye = master.until_goodbye();
    assert!(
        task_results(&before_goodbye).is_empty(),
        "{before_goodbye:?}"
    );
    assert!(wait_within(worker, STEP_LIMIT).success());
}

#[test]
fn sigterm_drains_delivers_the_running_tasks_results_and_exits_zero() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let state = tempfile::tempdir().expect("a temp dir");
    let worker = start_worker(&listener, state.path(), &["--drain-timeout", "60"]);
    let (mut master, _) = ScriptedMaster::accept_registered(&listener);
    master.assign_accepted("nap", 1, "sleep", json!({"seconds": 2}));

    signal(&worker, libc::SIGTERM);
    // At once: a heartbeat that says draining (the interval is an hour).
    let heartbeat = master.recv();
    assert_eq!(heartbeat["message_type"], "heartbeat", "{heartbeat}");
    assert_eq!(heartbeat["data"]["status"], "draining");
    master.ack(&heartbeat, json!({}));
    // The running task finishes and its result is delivered before the goodbye.
    let result = master.recv();
    assert_eq!(result["message_type"], "task_result", "{result}");
    assert_eq!(result["data"]["task_id"], "nap");
    assert_eq!(result["data"]["status"], "completed");
    master.ack(&result, json!({"recorded": true}));
    let goodbye = master.recv();
    assert_eq!(goodbye["message_type"], "goodbye", "{goodbye}");
    master.ack(&goodbye, json!({"message": "goodbye"}));
    assert!(wait_within(worker, STEP_LIMIT).success());
    assert_eq!(outbox_results(state.path()), Vec::new());
}

#[test]
fn a_second_sigterm_hands_the_running_task_back_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let state = tempfile::tempdir().expect("a temp dir");
    let worker = start_worker(&listener, state.path(), &["--drain-timeout", "3600"]);
    let (mut master, _) = ScriptedMaster::accept_registered(&listener);
    master.assign_accepted("long", 1, "sleep", json!({"seconds": 3600}));
    signal(&worker, libc::SIGTERM);
    let heartbeat = master.recv();
    assert_eq!(heartbeat["data"]["status"], "draining", "{heartbeat}");
    signal(&worker, libc::SIGTERM);
    let before_goodbye = master.until_goodbye();
    assert!(
        task_results(&before_goodbye).is_empty(),
        "{before_goodbye:?}"
    );
    assert!(wait_within(worker, STEP_LIMIT).success());
    assert_eq!(outbox_results(state.path()), Vec::new());
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X") | None
        )
    })
}

/// The live processes as (pid, process group, command line), read from `/proc`.
fn processes() -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(pgid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|field| field.parse().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if alive(pid) {
            found.push((pid, pgid, String::from_utf8_lossy(&cmdline).into_owned()));
        }
    }
    found
}

/// Polls `probe` until it gives a value, failing the test after [`STEP_LIMIT`]. For
/// what shows up nowhere but in `/proc`: a task's processes starting or dying.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + STEP_LIMIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a failing test must not leave running: its workers and the task processes it
/// watches (only killed when the test panics, since on success they are gone and their
/// pids may be anyone's).
#[derive(Default)]
struct LeaveNothing {
    workers: Vec<u32>,
    tasks: Vec<u32>,
}

impl Drop for LeaveNothing {
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        for pid in self.workers.iter().chain(&self.tasks) {
            if let Ok(pid) = libc::pid_t::try_from(*pid) {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn a_task_left_running_by_kill_9_is_killed_when_the_worker_starts_again() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let state = tempfile::tempdir().expect("a temp dir");
    let mut leave_nothing = LeaveNothing::default();
    let token = format!(
        "left-by-kill-9-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    );
    let worker = start_worker(&listener, state.path(), &[]);
    leave_nothing.workers.push(worker.id());
    let (mut master, _) = ScriptedMaster::accept_registered(&listener);
    master.assign_accepted(
        "left",
        1,
        "shell",
        json!({"command": format!("sleep 3600 & wait # {token}")}),
    );
    // The task's shell (its command line carries the token) and the sleep in its group.
    let group: Vec<u32> = wait_for("the task's shell and its sleep run", || {
        let all = processes();
        let leader = all.iter().find(|(_, _, cmd)| cmd.contains(&token))?.0;
        let members: Vec<u32> = all
            .iter()
            .filter(|(_, pgid, _)| *pgid == leader)
            .map(|(pid, _, _)| *pid)
            .collect();
        (members.len() >= 2).then_some(members)
    });
    leave_nothing.tasks.extend(&group);

    let mut worker = worker;
    worker.kill().expect("kill -9 the worker");
    wait_within(worker, STEP_LIMIT);
    drop(master);
    // The worker's death does not reach its task: left alone, the master would run
    // the task again beside it.
    for pid in &group {
        assert!(alive(*pid), "{pid} died with the worker");
    }

    let worker = start_worker(&listener, state.path(), &[]);
    leave_nothing.workers.push(worker.id());
    let (mut master, _) = ScriptedMaster::accept_registered(&listener);
    wait_for("the processes the last run left are killed", || {
        group.iter().all(|pid| !alive(*pid)).then_some(())
    });
    assert_eq!(
        std::fs::read_dir(state.path().join(DEVICE).join("running"))
            .expect("the records' folder")
            .count(),
        0,
        "the records are removed"
    );
    signal(&worker, libc::SIGTERM);
    master.until_goodbye();
    assert!(wait_within(worker, STEP_LIMIT).success());
}

/// Starts a worker whose sysfs is a fake tree holding `files` (path, contents) and
/// returns the `power` of its register and of its first four heartbeats.
fn power_sent_with_sysfs(files: &[(&str, &str)]) -> Vec<Option<Value>> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let state = tempfile::tempdir().expect("a temp dir");
    let sysfs = tempfile::tempdir().expect("a temp dir");
    for (path, contents) in files {
        let path = sysfs.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, format!("{contents}\n")).expect("write");
    }
    let root = sysfs.path().to_str().expect("a UTF-8 temp dir");
    let worker = start_worker(&listener, state.path(), &["--sysfs-root", root]);
    let mut master = ScriptedMaster::accept(&listener);
    let register = master.recv();
    assert_eq!(register["message_type"], "register", "{register}");
    let mut sent = vec![register["data"].get("power").cloned()];
    master.ack(&register, json!({"heartbeat_interval": 0.05}));
    while sent.len() < 5 {
        let message = master.recv();
        if message["message_type"] == "heartbeat" {
            sent.push(message["data"].get("power").cloned());
            master.ack(&message, json!({}));
        }
    }
    signal(&worker, libc::SIGTERM);
    master.until_goodbye();
    assert!(wait_within(worker, STEP_LIMIT).success());
    sent
}

#[test]
fn heartbeats_carry_the_debounced_power_of_the_given_sysfs_tree() {
    fn check(files: &[(&str, &str)], expect: Vec<Option<Value>>) {
        assert_eq!(power_sent_with_sysfs(files), expect, "{files:?}");
    }
    // No sensors at all: no power, ever, so nothing constrains the device.
    check(&[], vec![None; 5]);
    // A phone on its battery: nothing in the register, and the readings from the third
    // heartbeat on, once three samples agree.
    let phone = json!({
        "battery_percent": 18.0, "charging": false, "on_ac": false, "temperature_c": 41.0
    });
    check(
        &[
            ("class/power_supply/battery/type", "Battery"),
            ("class/power_supply/battery/capacity", "18"),
            ("class/power_supply/battery/status", "Discharging"),
            ("class/power_supply/usb/type", "USB"),
            ("class/power_supply/usb/online", "0"),
            ("class/thermal/thermal_zone0/temp", "41000"),
        ],
        vec![None, None, None, Some(phone.clone()), Some(phone)],
    );
}
