//! The join token stays out of reach of tasks (issue 11, item 3): a task that
//! looks for it in its worker's `/proc/PID/cmdline` and `/proc/PID/environ`
//! finds nothing, however the worker was given it; the join command the
//! master prints keeps it out of the command line; a worker given `--token`
//! on its command line scrubs it and says so; enrolling a device is visible;
//! and an enrolled worker needs no token to come back.

use super::{setup, subscriber, wait_finished};
use protocol::{Event, Message, TaskSpec, TaskSubmit, TaskView};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use tests::{
    bin, retire, shared_dir, text_command, Client, MasterProcess, TokenVia, WorkerOptions,
    WorkerProcess,
};

/// The text every join token starts with.
const JOIN_PREFIX: &str = "rc-join-";

/// A task that does what the attacker's task did: it reads its parent's (the
/// worker's) command line and environment from `/proc`.
const SPY: &str = r#"p=$PPID
echo "comm=$(cat /proc/$p/comm)"
echo "cmdline=$(tr '\0' ' ' < /proc/$p/cmdline)"
echo "environ=$(tr '\0' ' ' < /proc/$p/environ)"
for t in /proc/$p/task/*; do tr '\0' ' ' < $t/environ; tr '\0' ' ' < $t/cmdline; done
echo done"#;

/// Runs one [`SPY`] task on `worker` and returns its result.
fn spy_on(master: SocketAddr, events: &mut Client, worker: &str) -> TaskView {
    let task_id = format!("spy-{worker}");
    let mut spec = TaskSpec::new("shell", json!({ "command": SPY }));
    spec.task_id = Some(task_id.clone());
    spec.requirements.device_id = Some(worker.to_string());
    Client::connect(master)
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit the spy task");
    wait_finished(events, &BTreeSet::from([task_id.clone()]))
        .remove(&task_id)
        .expect("the spy task finished")
}

fn cmdline_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .expect("read the worker's command line")
}

fn wait_joined(events: &mut Client, id: &str) {
    events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == id));
}

/// The attack of issue 11: a task reads the join token from its worker. It
/// must find nothing, whether the worker got the token on its command line
/// (scrubbed at start, with a warning), in its environment, or runs as the
/// same user as its tasks (no root: only the worker being non-dumpable
/// keeps `/proc/PID/environ` closed; Landlock is off so that it alone is
/// tested).
#[test]
fn a_task_finds_no_join_token_in_its_workers_proc_files() {
    let dir = setup();
    let master = MasterProcess::start(&dir.path().join("data"));
    let mut events = subscriber(master.addr);
    let shared = shared_dir(dir.path(), "shared");
    // When the test runs as root, its workers run tasks as `nobody`; a third
    // worker runs as `nobody` itself, so its tasks share its user.
    let is_root = std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .unwrap_or(false);
    let mut variants = vec![
        ("argv", TokenVia::Argv, None),
        ("env", TokenVia::Environment, None),
    ];
    if is_root {
        variants.push(("same-user", TokenVia::Environment, Some((65534, 65534))));
    }
    for (name, token_via, run_as) in variants {
        let log = dir.path().join(format!("{name}.log"));
        // Each worker its own task directory: the worker insists on owning it.
        let config = shared.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[sandbox]\nlandlock = false\nwork_dir = \"{}\"\n",
                shared.join(format!("work-{name}")).display()
            ),
        )
        .expect("write the worker config");
        let config_arg = config.to_string_lossy().into_owned();
        let state = shared.join(format!("state-{name}"));
        std::fs::create_dir_all(&state).expect("state dir");
        if run_as.is_some() {
            let status = Command::new("chown")
                .arg("65534:65534")
                .arg(&state)
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let state_arg = state.to_string_lossy().into_owned();
        let worker = WorkerProcess::start_with(
            master.addr,
            name,
            1,
            &["--config", &config_arg, "--state-dir", &state_arg],
            WorkerOptions {
                token_via,
                log: Some(log.clone()),
                run_as,
                ..WorkerOptions::default()
            },
        );
        wait_joined(&mut events, name);

        let task = spy_on(master.addr, &mut events, name);
        let output = task.result.clone().unwrap_or(Value::Null).to_string();
        assert!(
            output.contains("comm=retire-worker") && output.contains("done"),
            "{name}: the task read its worker's /proc files: {output}"
        );
        assert!(
            !output.contains(JOIN_PREFIX),
            "{name}: the task found the join token: {output}"
        );
        // Not even a masked value: the environment cannot be opened at all (for a
        // task of the worker's own user, because the worker is non-dumpable).
        let stderr = task
            .result
            .as_ref()
            .map(|result| result["stderr"].to_string());
        assert!(
            stderr.is_some_and(|stderr| stderr.contains("environ: Permission denied")),
            "{name}: the task could open its worker's environment: {output}"
        );
        let cmdline = cmdline_of(worker.pid());
        assert!(
            !cmdline.contains(JOIN_PREFIX),
            "{name}: the token is in the worker's command line: {cmdline}"
        );
        let logged = std::fs::read_to_string(&log).expect("read the worker's log");
        if token_via == TokenVia::Argv {
            assert!(
                cmdline.contains("--token"),
                "only the value is scrubbed: {cmdline}"
            );
            assert!(
                logged.contains("WARN") && logged.contains("command line"),
                "the worker warns about a token on its command line: {logged}"
            );
        }
        assert!(!logged.contains(JOIN_PREFIX), "{name}: {logged}");
        assert!(
            !logged.contains("could not mask") && !logged.contains("non-dumpable"),
            "{name}: the worker protected itself: {logged}"
        );
    }
}

/// `retire-master token show` prints a join command that passes the token
/// in the environment, and that command, run as printed, enrolls a worker
/// whose command line holds no token.
#[test]
fn the_printed_join_command_keeps_the_token_out_of_the_command_line() {
    let dir = setup();
    let data = dir.path().join("data");
    let master = MasterProcess::start(&data);
    let shown = Command::new(bin("retire-master"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(master.addr.to_string())
        .args(["token", "show"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run retire-master token show");
    assert!(shown.status.success(), "{shown:?}");
    let stdout = String::from_utf8_lossy(&shown.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|line| line.contains("retire-worker"))
        .unwrap_or_else(|| panic!("a join command: {stdout}"))
        .trim();
    assert!(
        line.starts_with(&format!("RETIRE_JOIN_TOKEN={JOIN_PREFIX}")),
        "{line}"
    );
    assert!(!line.contains("--token"), "{line}");

    // Run it as a shell would: leading NAME=VALUE words are the environment.
    let mut words = line.split_whitespace().peekable();
    let mut command = Command::new(bin("retire-worker"));
    command.env_remove("RETIRE_JOIN_TOKEN");
    while let Some((name, value)) = words.peek().and_then(|word| word.split_once('=')) {
        command.env(name, value);
        words.next();
    }
    assert_eq!(words.next(), Some("retire-worker"), "{line}");
    let state = dir.path().join("printed-state");
    let mut events = subscriber(master.addr);
    let mut child = command
        .args(words)
        .args(["--id", "printed", "--slots", "1", "--state-dir"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("run the printed command");
    wait_joined(&mut events, "printed");
    let cmdline = cmdline_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(!cmdline.contains(JOIN_PREFIX), "{cmdline}");
}

/// Reads the devices as `retire devices --json` shows them.
fn devices_json(master: SocketAddr) -> Vec<Value> {
    let output = retire(master, &["devices", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let reply: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    reply["devices"].as_array().cloned().expect("a device list")
}

fn device<'a>(devices: &'a [Value], id: &str) -> &'a Value {
    devices
        .iter()
        .find(|device| device["device_id"] == id)
        .unwrap_or_else(|| panic!("device {id} in {devices:?}"))
}

/// A new enrollment is an event, an info line in the master's log and two
/// columns of `retire devices` (kept across a restart of the master); a
/// worker that enrolled comes back with no token at all and runs tasks.
#[test]
fn an_enrollment_is_visible_and_an_enrolled_worker_needs_no_token() {
    let dir = setup();
    let data = dir.path().join("data");
    let log = dir.path().join("master.log");
    let mut master = MasterProcess::start_logged(&data, &[], &log);
    let mut events = subscriber(master.addr);
    let state = dir.path().join("state");
    let state_arg = state.to_string_lossy().into_owned();
    let mut worker = WorkerProcess::start(master.addr, "newcomer", 1, &["--state-dir", &state_arg]);
    let enrolled = events.wait_event(|e| matches!(e, Event::DeviceEnrolled { .. }));
    assert_eq!(
        enrolled,
        Event::DeviceEnrolled {
            device_id: "newcomer".into(),
            enrolled_from: Some("127.0.0.1".into()),
        }
    );
    wait_joined(&mut events, "newcomer");

    let logged = std::fs::read_to_string(&log).expect("read the master's log");
    assert!(
        logged.lines().any(|line| line.contains("INFO")
            && line.contains("device newcomer enrolled from 127.0.0.1")),
        "{logged}"
    );
    let before = devices_json(master.addr);
    let shown = device(&before, "newcomer");
    assert_eq!(shown["enrolled_from"], "127.0.0.1", "{shown}");
    let enrolled_at = shown["enrolled_at"]
        .as_str()
        .expect("enrolled_at")
        .to_string();
    let age = humantime_age(&enrolled_at);
    assert!(age < 120, "enrolled {age} s ago: {enrolled_at}");
    let table = String::from_utf8_lossy(&retire(master.addr, &["devices"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|header| header.contains("ENROLLED") && header.contains("FROM")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|row| row.starts_with("newcomer") && row.contains("127.0.0.1")),
        "{table}"
    );
    let text = text_command(master.addr, "devices");
    assert!(
        text.contains("ENROLLED") && text.contains(&enrolled_at),
        "{text}"
    );

    // Across a restart of the master; the worker comes back with no token.
    worker.kill9();
    master.terminate();
    let master = MasterProcess::start(&data);
    let after = devices_json(master.addr);
    let shown = device(&after, "newcomer");
    assert_eq!(shown["enrolled_from"], "127.0.0.1", "{shown}");
    assert_eq!(shown["enrolled_at"], enrolled_at.as_str(), "{shown}");

    let mut events = subscriber(master.addr);
    let _worker = WorkerProcess::start_with(
        master.addr,
        "newcomer",
        1,
        &["--state-dir", &state_arg],
        WorkerOptions {
            token_via: TokenVia::Nothing,
            ..WorkerOptions::default()
        },
    );
    wait_joined(&mut events, "newcomer");
    let mut spec = TaskSpec::new("echo", json!({ "message": "back" }));
    spec.task_id = Some("after-restart".into());
    Client::connect(master.addr)
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit");
    let task = wait_finished(&mut events, &BTreeSet::from(["after-restart".to_string()]))
        .remove("after-restart")
        .expect("finished");
    assert_eq!(task.state, protocol::TaskState::Completed, "{task:?}");
    assert_eq!(task.device_id.as_deref(), Some("newcomer"));
}

/// Seconds since an RFC 3339 time the master wrote.
fn humantime_age(rfc3339: &str) -> u64 {
    let then = humantime::parse_rfc3339(rfc3339).expect("an RFC 3339 time");
    std::time::SystemTime::now()
        .duration_since(then)
        .map_or(0, |age| age.as_secs())
}
