//! Security with the real binaries: nothing runs without credentials, a
//! revoked device stays out, a rotated join token stops new enrollments
//! only, secrets stay out of logs and task environments, and a flood of
//! sockets that never authenticate does not stop real workers.

use super::{setup, start_workers, stdout_of, subscriber, task_status, wait_finished};
use protocol::{ErrorCode, Event, ListTasks, Message, TaskSpec, TaskSubmit};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tests::{retire, tokens_for, Client, MasterProcess, WorkerOptions, WorkerProcess, PATIENCE};

fn echo(id: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("echo", json!({ "message": id }));
    spec.task_id = Some(id.to_string());
    spec
}

fn submit_message(id: &str) -> Message {
    Message::TaskSubmit(TaskSubmit {
        tasks: vec![echo(id)],
        batch: false,
    })
}

/// Every task id the master knows, asked as admin.
fn all_task_ids(addr: SocketAddr) -> BTreeSet<String> {
    let ack = Client::connect(addr)
        .request(Message::ListTasks(ListTasks {
            state: None,
            limit: Some(1000),
            before: None,
        }))
        .expect("list tasks");
    let page: protocol::TaskPage = ack.result.parse().expect("tasks");
    page.tasks.into_iter().map(|task| task.task_id).collect()
}

#[test]
fn nothing_runs_without_the_right_credential() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let state = dir.path().join("worker-state");
    let state_arg = state.to_string_lossy().into_owned();
    let _worker = {
        let mut events = subscriber(master.addr);
        let worker = WorkerProcess::start(master.addr, "pi", 1, &["--state-dir", &state_arg]);
        events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }));
        worker
    };

    // No token: reads from loopback work, a submit is refused.
    let mut anonymous = Client::connect_anonymous(master.addr).expect("connect");
    assert!(
        anonymous.request(Message::Status).is_ok(),
        "loopback may read"
    );
    let refusal = anonymous
        .request(submit_message("anonymous"))
        .expect_err("refused");
    assert_eq!(refusal.code, ErrorCode::AuthRequired);

    // A wrong admin token, through the CLI.
    let wrong = format!("rc-admin-{}", "0".repeat(64));
    let output = std::process::Command::new(tests::bin("retire"))
        .args(["--master", &master.addr.to_string(), "submit", "--", "true"])
        .env("RETIRE_TOKEN", &wrong)
        .output()
        .expect("run retire");
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("auth_failed"),
        "{output:?}"
    );

    // The right token from a file (RETIRE_TOKEN_FILE) works; nothing else
    // was set in this process's environment.
    let output = std::process::Command::new(tests::bin("retire"))
        .args(["--master", &master.addr.to_string(), "tasks"])
        .env(
            "RETIRE_TOKEN_FILE",
            dir.path().join("secrets").join("admin.token"),
        )
        .output()
        .expect("run retire");
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    // The worker's own credential, used to submit.
    let seed = std::fs::read_to_string(state.join("pi").join("identity.key"))
        .expect("the worker keeps its key");
    let mut stolen = Client::connect_anonymous(master.addr).expect("connect");
    stolen
        .authenticate_device("pi", seed.trim())
        .expect("talk")
        .expect("the device key authenticates");
    let refusal = stolen
        .request(submit_message("from-worker-key"))
        .expect_err("refused");
    assert_eq!(refusal.code, ErrorCode::Forbidden);

    // The join token is not an admin token.
    let join = tokens_for(master.addr).expect("tokens").join;
    let output = std::process::Command::new(tests::bin("retire"))
        .args(["--master", &master.addr.to_string(), "status"])
        .env("RETIRE_TOKEN", &join)
        .output()
        .expect("run retire");
    assert_eq!(output.status.code(), Some(2), "{output:?}");

    let known = all_task_ids(master.addr);
    assert!(known.is_empty(), "nothing was recorded: {known:?}");
}

#[test]
fn a_revoked_worker_is_cut_off_for_good_and_the_others_keep_working() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let state = dir.path().join("revoked-state");
    let state_arg = state.to_string_lossy().into_owned();
    let mut events = subscriber(master.addr);
    let mut doomed = WorkerProcess::start(master.addr, "doomed", 1, &["--state-dir", &state_arg]);
    let _kept = WorkerProcess::start(master.addr, "kept", 1, &[]);
    let mut joined = BTreeSet::new();
    while joined.len() < 2 {
        if let Event::DeviceJoined { device_id } =
            events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }))
        {
            joined.insert(device_id);
        }
    }

    let output = retire(master.addr, &["devices", "revoke", "doomed"]);
    assert!(stdout_of(&output).contains("revoked doomed"));
    let status = doomed.wait_exit().expect("the revoked worker stops");
    assert!(!status.success(), "it says it was refused: {status:?}");

    // It cannot come back, even with the join token it still has.
    let mut again = WorkerProcess::start(master.addr, "doomed", 1, &["--state-dir", &state_arg]);
    assert!(!again.wait_exit().expect("refused again").success());
    let fresh_state = dir.path().join("fresh-state");
    let fresh_arg = fresh_state.to_string_lossy().into_owned();
    let mut rejoin = WorkerProcess::start(master.addr, "doomed", 1, &["--state-dir", &fresh_arg]);
    assert!(!rejoin.wait_exit().expect("no new enrollment").success());

    // The other worker runs everything.
    let ids: BTreeSet<String> = (0..5).map(|i| format!("after-revoke-{i}")).collect();
    let mut client = Client::connect(master.addr);
    for id in &ids {
        client.request(submit_message(id)).expect("submit");
    }
    for task in wait_finished(&mut events, &ids).values() {
        assert_eq!(task.device_id.as_deref(), Some("kept"), "{task:?}");
    }
    let devices = stdout_of(&retire(master.addr, &["devices"]));
    assert!(devices.contains("kept"), "{devices}");
}

#[test]
fn a_rotated_join_token_stops_new_enrollments_and_keeps_enrolled_workers() {
    let dir = setup();
    let data = dir.path().join("data");
    let master = MasterProcess::start(&data);
    let old_join = tokens_for(master.addr).expect("tokens").join;
    let state = dir.path().join("enrolled");
    let state_arg = state.to_string_lossy().into_owned();
    let mut events = subscriber(master.addr);
    let mut enrolled =
        WorkerProcess::start(master.addr, "enrolled", 1, &["--state-dir", &state_arg]);
    events
        .wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == "enrolled"));

    let output = std::process::Command::new(tests::bin("retire-master"))
        .args([
            "--data-dir",
            &data.to_string_lossy(),
            "token",
            "rotate-join",
        ])
        .output()
        .expect("rotate the join token");
    assert!(output.status.success(), "{output:?}");
    let new_join = tests::read_tokens(&data).expect("tokens").join;
    assert_ne!(new_join, old_join);

    // A new worker with the old token is refused.
    let options = WorkerOptions {
        join_token: Some(old_join.clone()),
        ..WorkerOptions::default()
    };
    let mut late = WorkerProcess::start_with(master.addr, "late", 1, &[], options);
    assert!(!late.wait_exit().expect("refused").success());

    // The enrolled worker, restarted with only its old token, still gets in
    // with its own key.
    enrolled.kill9();
    let options = WorkerOptions {
        join_token: Some(old_join),
        ..WorkerOptions::default()
    };
    let _enrolled = WorkerProcess::start_with(
        master.addr,
        "enrolled",
        1,
        &["--state-dir", &state_arg],
        options,
    );
    events
        .wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == "enrolled"));
    let options = WorkerOptions {
        join_token: Some(new_join),
        ..WorkerOptions::default()
    };
    let _new = WorkerProcess::start_with(master.addr, "new", 1, &[], options);
    events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == "new"));
}

#[test]
fn tokens_appear_neither_in_logs_nor_in_a_task_environment() {
    let dir = setup();
    let data = dir.path().join("data");
    let master_log = dir.path().join("master.log");
    let worker_log = dir.path().join("worker.log");
    let master = MasterProcess::start_logged(&data, &[], &master_log);
    let tokens = tokens_for(master.addr).expect("tokens");
    let options = WorkerOptions {
        log: Some(worker_log.clone()),
        ..WorkerOptions::default()
    };
    let mut events = subscriber(master.addr);
    let _worker = WorkerProcess::start_with(master.addr, "logged", 1, &[], options);
    events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }));
    let mut client = Client::connect(master.addr);
    let mut spec = TaskSpec::new(
        "shell",
        json!({ "command": "env; cat /proc/self/environ | tr '\\0' '\\n'" }),
    );
    spec.task_id = Some("env".into());
    client
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit");
    let ids = BTreeSet::from(["env".to_string()]);
    let task = wait_finished(&mut events, &ids).remove("env").expect("env");
    let output = task.result.expect("a result")["output"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        output.contains("PATH="),
        "the task saw its environment: {output}"
    );
    // Failed handshakes are logged too, without the token they carried.
    let mut wrong = TcpStream::connect(master.addr).expect("connect");
    wrong
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    wrong
        .write_all(format!("auth {}x\n", tokens.admin).as_bytes())
        .expect("send");
    let mut reply = String::new();
    wrong.read_to_string(&mut reply).expect("read until closed");
    assert!(reply.contains("authentication failed"), "{reply}");

    let secret_parts = |token: &str| token.rsplit('-').next().unwrap_or_default().to_string();
    for secret in [secret_parts(&tokens.join), secret_parts(&tokens.admin)] {
        assert!(
            !output.contains(&secret),
            "a token reached the task's environment"
        );
        for log in [&master_log, &worker_log] {
            let text = std::fs::read_to_string(log).expect("read the log");
            assert!(!text.is_empty(), "{} has the debug log", log.display());
            assert!(!text.contains(&secret), "a token is in {}", log.display());
        }
    }
    let master_text = std::fs::read_to_string(&master_log).expect("read the log");
    assert!(
        master_text.contains("enrolled"),
        "the log says what happened, without secrets"
    );
    assert_eq!(
        task_status(&mut client, "env").state,
        protocol::TaskState::Completed
    );
}

/// Opens `count` sockets that never authenticate: half say nothing, half
/// send the start of a line and never finish it.
fn flood(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).expect("open a flood socket");
            if i % 2 == 1 {
                let _ = stream.write_all(b"{\"message_type\":\"status\",\"pad\":\"");
            }
            stream
        })
        .collect()
}

/// Connects and authenticates as admin while flood sockets may still be
/// reaching the master. A connection waiting to authenticate is closed when
/// more than `--max-unauthenticated` newer ones wait (the longest waiter makes
/// room) or at its deadline. Flood sockets are not all in the master's hands
/// when `flood` returns: past the listen backlog, the kernel completes a
/// connection only when its handshake is retried, seconds later, so on a
/// loaded machine hundreds can arrive after a real client and push it out.
/// A real client closed that way connects again, as a real worker does (it
/// is the worker's reconnection the test checks); any other failure, or no
/// success within `PATIENCE`, fails the test.
fn connect_during_flood(addr: SocketAddr) -> Client {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let error = match Client::try_connect(addr) {
            Ok(client) => return client,
            Err(error) => error,
        };
        let closed = matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        );
        let refused = ["waiting to authenticate", "did not authenticate within"]
            .iter()
            .any(|why| error.to_string().contains(why));
        assert!(
            (closed || refused) && Instant::now() < deadline,
            "connect to the master during the flood: {error}"
        );
        eprintln!("a real client was closed during the flood ({error}); connecting again");
    }
}

/// Subscribes `client` to every event.
fn subscribe(mut client: Client) -> Client {
    client
        .request(Message::Subscribe(protocol::Subscribe::default()))
        .expect("subscribe");
    client
}

/// Reads `stream` until the master closes it and returns what it sent. A
/// master that closes a socket whose last bytes it did not read (a flood
/// socket closed the turn it was accepted) makes the kernel reset the
/// connection instead of ending it; what was sent before still arrives, and
/// the reset ends the reading as the end of the stream would.
fn read_until_closed(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!("read until closed: {error}"),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Starts a worker while the flood may still be arriving and waits until it
/// has registered.
fn start_worker_during_flood(addr: SocketAddr, id: &str, slots: usize) -> WorkerProcess {
    let mut events = subscribe(connect_during_flood(addr));
    let worker = WorkerProcess::start(addr, id, slots, &[]);
    events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == id));
    worker
}

/// Runs `count` echo tasks one after another and returns each one's
/// submit-to-finished time, on connections made by `connect`.
fn dispatch_latencies(
    addr: SocketAddr,
    prefix: &str,
    count: usize,
    connect: fn(SocketAddr) -> Client,
) -> Vec<Duration> {
    let mut client = connect(addr);
    let mut events = subscribe(connect(addr));
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let started = Instant::now();
            client.request(submit_message(&id)).expect("submit");
            wait_finished(&mut events, &BTreeSet::from([id]));
            started.elapsed()
        })
        .collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[test]
fn a_thousand_sockets_that_never_authenticate_do_not_stop_real_workers() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let _workers = start_workers(master.addr, &[("steady-1", 2), ("steady-2", 2)]);
    let before = dispatch_latencies(master.addr, "before", 20, Client::connect);

    let mut sockets = flood(master.addr, 1000);
    // A worker that joins during the flood still gets in.
    let _late = start_worker_during_flood(master.addr, "joins-during-flood", 1);
    let during = dispatch_latencies(master.addr, "during", 20, connect_during_flood);
    eprintln!(
        "dispatch latency (submit to finished, median of 20): before the flood {:?}, \
         during 1,000 unauthenticated sockets {:?}",
        median(before),
        median(during)
    );

    // Every flood socket is closed by the master with a reason: past the
    // cap of waiting connections, or at the authentication deadline.
    let mut reasons = BTreeSet::new();
    for stream in sockets.iter_mut() {
        let reply = read_until_closed(stream);
        let code = ["too_many_connections", "auth_timeout", "line_too_long"]
            .into_iter()
            .find(|code| reply.contains(code))
            .unwrap_or_else(|| panic!("a closed flood socket says why: {reply:?}"));
        reasons.insert(code);
    }
    assert!(reasons.contains("too_many_connections"), "{reasons:?}");
    let known = all_task_ids(master.addr);
    assert_eq!(known.len(), 40, "only the real tasks were recorded");
}

#[test]
fn tokens_are_private_files_and_auth_can_be_off_only_on_loopback() {
    use std::os::unix::fs::PermissionsExt;
    let dir = setup();
    let data = dir.path().join("data");
    let master = |args: &[&str]| {
        std::process::Command::new(tests::bin("retire-master"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run retire-master")
    };
    let refused = master(&["--no-auth", "--listen", "0.0.0.0:0"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--no-auth is refused"),
        "{refused:?}"
    );

    let shown = master(&["token", "show"]);
    assert!(shown.status.success(), "{shown:?}");
    let tokens = tests::read_tokens(&data).expect("the tokens were created");
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        stdout.contains(&format!("RETIRE_JOIN_TOKEN={} retire-worker", tokens.join))
            && stdout.contains(&format!("RETIRE_TOKEN={}", tokens.admin)),
        "{stdout}"
    );
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    };
    let secrets = data.join("secrets");
    assert_eq!(mode(&secrets), 0o700);
    for file in ["join.token", "admin.token", "master.key"] {
        assert_eq!(mode(&secrets.join(file)), 0o600, "{file}");
    }
    let again = master(&["token", "show"]);
    assert_eq!(again.stdout, shown.stdout, "showing changes nothing");
}
