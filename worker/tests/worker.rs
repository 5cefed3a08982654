//! Integration tests of the `retire-worker` binary against a scripted
//! master on `127.0.0.1:0`.

#[path = "worker/config_file.rs"]
mod config_file;
#[path = "worker/layout.rs"]
mod layout;
#[path = "worker/life.rs"]
mod life;

use protocol::{Envelope, Frame, LineCodec, Message};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn worker_bin() -> &'static str {
    env!("CARGO_BIN_EXE_retire-worker")
}

/// Reads messages from `stream` until `want` accepts one.
fn next_message(
    stream: &mut TcpStream,
    codec: &mut LineCodec,
    want: impl Fn(&Message) -> bool,
) -> Envelope {
    let mut buf = [0u8; 65536];
    let mut frames = Vec::new();
    loop {
        for frame in frames.drain(..) {
            if let Frame::Json(bytes) = frame {
                let envelope = Envelope::decode(&bytes).expect("the worker sends valid messages");
                if want(&envelope.message) {
                    return envelope;
                }
            }
        }
        let n = stream.read(&mut buf).expect("read from the worker");
        assert!(n > 0, "the worker closed the connection");
        codec.decode(&buf[..n], &mut frames).expect("short lines");
    }
}

#[test]
fn the_binary_registers_and_says_goodbye_on_sigterm() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let state = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(worker_bin())
        .args([
            "--join",
            &addr.to_string(),
            "--id",
            "bin-test",
            "--slots",
            "3",
            "--role",
            "compute",
        ])
        .args(["--tag", "pi", "--tag", "attic"])
        .arg("--state-dir")
        .arg(state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start retire-worker");
    let (mut stream, _) = listener.accept().expect("the worker connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut codec = LineCodec::new(protocol::DEFAULT_MAX_LINE);
    let register = next_message(&mut stream, &mut codec, |m| {
        matches!(m, Message::Register(_))
    });
    assert_eq!(register.sender_id.as_deref(), Some("bin-test"));
    let Message::Register(profile) = &register.message else {
        unreachable!("filtered above")
    };
    assert_eq!(profile.slots, Some(3));
    assert_eq!(profile.role.as_deref(), Some("compute"));
    assert_eq!(profile.tags, ["pi", "attic"]);
    let types = profile
        .task_types
        .clone()
        .expect("the worker lists its task types");
    for builtin in ["echo", "sleep", "system_info", "shell"] {
        assert!(types.iter().any(|t| t == builtin), "{types:?}");
    }
    assert!(profile.cpu_cores.unwrap_or(0) >= 1 && profile.memory_total_bytes.unwrap_or(0) > 0);
    let ack = Envelope::new(Message::Ack(protocol::Ack::new(
        register.message_id.clone(),
        serde_json::json!({ "heartbeat_interval": 30.0 }),
    )));
    stream.write_all(&ack.to_line()).expect("ack the register");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let goodbye = next_message(&mut stream, &mut codec, |m| {
        matches!(m, Message::Goodbye(_))
    });
    let ack = Envelope::new(Message::Ack(protocol::Ack::new(
        goodbye.message_id,
        serde_json::json!({}),
    )));
    let _ = stream.write_all(&ack.to_line());
    let exit = child.wait().expect("the worker exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let output = Command::new(worker_bin())
        .args(["--join", "not-an-address"])
        .output()
        .expect("run retire-worker");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not-an-address"), "{stderr}");
    let output = Command::new(worker_bin())
        .output()
        .expect("run retire-worker");
    assert_eq!(output.status.code(), Some(2), "--join is required");
}

// ----- attacks on the sandbox -----
//
// These run tasks through the worker's `Executor` (the same code path a worker uses,
// with real subprocesses) and, further down, through the `retire-worker` binary.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use protocol::{ResultStatus, TaskSpec};
use serde_json::{json, Value};
use worker::tasks::exec::CancelToken;
use worker::tasks::executor::Executor;
use worker::ExecutionConfig;
use worker::{TaskContext, TaskOutcome};

fn executor(config: &str) -> Executor {
    let config = ExecutionConfig::from_toml(config).expect("the test config parses");
    Executor::new(config, BTreeMap::new()).expect("the executor starts")
}

fn run_task(
    executor: &Executor,
    id: &str,
    task_type: &str,
    payload: Value,
    timeout: f64,
) -> TaskOutcome {
    let mut task = TaskSpec::new(task_type, payload);
    task.task_id = Some(id.to_string());
    task.timeout = Some(timeout);
    executor.run(&task, &TaskContext::detached(CancelToken::new()))
}

fn shell_task(executor: &Executor, id: &str, script: &str, timeout: f64) -> TaskOutcome {
    run_task(executor, id, "shell", json!({ "command": script }), timeout)
}

/// The pids of live (not zombie) processes whose environment contains `needle`.
fn processes_with_env(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, Some("Z") | Some("X") | None) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ
            .split(|byte| *byte == 0)
            .any(|entry| String::from_utf8_lossy(entry).contains(needle))
        {
            found.push(pid);
        }
    }
    found
}

/// Tells whether a process is gone: no such pid, or a zombie.
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
    }
}

fn limits_hit(outcome: &TaskOutcome) -> Vec<String> {
    outcome.result["limits_hit"]
        .as_array()
        .map(|hit| {
            hit.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_memory_hog_is_stopped_by_the_limit_and_reported() {
    let executor = executor("[types.shell]\nmemory_mb = 128\n");
    let started = Instant::now();
    // `tail` keeps every byte of a "line" that never ends, so it grows until the
    // address-space limit stops it.
    let outcome = shell_task(&executor, "memory-hog", "tail /dev/zero", 120.0);
    assert!(started.elapsed() < Duration::from_secs(60), "{outcome:?}");
    assert_eq!(outcome.status, ResultStatus::Failed, "{outcome:?}");
    assert!(
        limits_hit(&outcome).contains(&"memory".to_string()),
        "{outcome:?}"
    );
    let error = outcome.error.clone().unwrap_or_default();
    assert!(error.contains("memory limit"), "{error}");
    assert_eq!(
        outcome.result["sandbox"]["limits"]["memory_bytes"],
        json!(128 << 20)
    );
}

#[test]
fn a_fork_bomb_is_bounded_and_the_machine_stays_usable() {
    let executor = executor("[types.shell]\nprocesses = 20\nmemory_mb = 64\n");
    // Never start a fork bomb unless the sandbox says it bounds processes here: on a
    // shared machine an unbounded one would hurt everybody.
    let probe = shell_task(&executor, "fork-probe", "true", 10.0);
    let bound = &probe.result["sandbox"]["limits"]["processes"];
    assert_eq!(
        *bound,
        json!(20),
        "processes are not bounded here: {probe:?}"
    );

    let started = Instant::now();
    let outcome = shell_task(
        &executor,
        "fork-bomb",
        // The task's shell stays for two seconds, so the bomb keeps forking until
        // it runs into the bound (otherwise it may finish, or be killed with its
        // group, before any fork fails).
        "bomb() { bomb | bomb & }; bomb; sleep 2",
        3.0,
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?} {outcome:?}");
    // The bomb is still churning when the shell's sleep ends or the timeout kills
    // the group; either way its forks failed at the bound.
    let stderr = outcome.result["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.to_ascii_lowercase().contains("fork"),
        "the bomb never hit the process bound: {outcome:?}"
    );
    // The machine is usable: this process can still start programs, and nothing of
    // the bomb is left.
    let status = std::process::Command::new("true")
        .status()
        .expect("spawn true");
    assert!(status.success());
    let left = processes_with_env("/fork-bomb-");
    assert!(left.is_empty(), "processes of the bomb survived: {left:?}");
}

#[test]
fn a_grandchild_ignoring_sigterm_is_killed_at_the_timeout_even_after_setsid() {
    let executor = executor("");
    let started = Instant::now();
    let outcome = shell_task(
        &executor,
        "stubborn",
        "(trap '' TERM; exec sleep 60) & echo $!; \
         setsid sh -c 'trap \"\" TERM; exec sleep 60' & echo $!; wait",
        1.0,
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{outcome:?}");
    assert_eq!(outcome.status, ResultStatus::Timeout, "{outcome:?}");
    let pids: Vec<u32> = outcome.result["output"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{outcome:?}");
    for pid in pids {
        assert!(is_gone(pid), "process {pid} outlived the task's timeout");
    }
}

#[test]
fn writing_outside_the_task_directory_fails_where_landlock_is_available() {
    let executor = executor("");
    // A directory anybody may write to: without Landlock, file permissions would not
    // stop the task.
    let target = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        target.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod 777");
    let outside = target.path().join("outside");
    let script = format!(
        "echo inside > inside && cat inside; echo outside > '{}' && echo wrote-outside",
        outside.display()
    );
    let outcome = shell_task(&executor, "escape-write", &script, 30.0);
    let output = outcome.result["output"].as_str().unwrap_or_default();
    assert!(
        output.starts_with("inside\n"),
        "writing inside must work: {outcome:?}"
    );
    let landlock = &outcome.result["sandbox"]["landlock"];
    let state = landlock["state"].as_str().unwrap_or_default();
    if state == "enforced" || state == "partially_enforced" {
        assert!(!outside.exists(), "Landlock let the task write {outside:?}");
        assert!(!output.contains("wrote-outside"), "{outcome:?}");
        assert_eq!(outcome.status, ResultStatus::Failed, "{outcome:?}");
    } else {
        println!(
            "NOTE: Landlock is not available here ({landlock}); only file permissions \
             stop writes outside the task directory, and this test checks that the \
             result says so"
        );
        assert!(
            matches!(state, "unavailable" | "disabled" | "not_on_android"),
            "{landlock}"
        );
    }
}

/// `network = false` for a type reaches its tasks: a `shell` task of that type cannot
/// open a TCP connection where the kernel has Landlock's TCP rules (and its result says
/// what held), while another type keeps the network; `http_request`, which runs inside
/// the worker, is not offered once its network is off.
#[test]
fn a_type_whose_network_is_off_gets_no_tcp_and_http_request_is_not_offered() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    let offline = executor("[sandbox]\nnetwork = false\n[types.python_eval]\nnetwork = true\n");
    assert!(
        !offline.task_types().iter().any(|t| t == "http_request"),
        "{:?}",
        offline.task_types()
    );
    let script = format!("bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' && echo connected");
    let outcome = shell_task(&offline, "no-net", &script, 30.0);
    let network = outcome.result["sandbox"]["network"].clone();
    let connected = listener.accept().is_ok();
    if network == json!("tcp_denied") {
        assert!(!connected, "{outcome:?}");
        assert!(
            !outcome.result["output"]
                .as_str()
                .unwrap_or_default()
                .contains("connected"),
            "{outcome:?}"
        );
    } else {
        assert_eq!(network, json!("not_enforced"), "{outcome:?}");
        println!("NOTE: this kernel has no Landlock TCP rules: the network stayed on, as reported");
        assert!(connected, "{outcome:?}");
    }
    let online = executor("[sandbox]\nnetwork = false\n[types.shell]\nnetwork = true\n");
    let outcome = shell_task(&online, "net", &script, 30.0);
    assert_eq!(outcome.result["sandbox"]["network"], json!("allowed"));
    assert!(listener.accept().is_ok(), "{outcome:?}");
}

#[test]
fn the_task_directory_is_private_and_removed() {
    let executor = executor("");
    let outcome = shell_task(
        &executor,
        "private-dir",
        "pwd; ls -A | wc -l; stat -c %a .",
        30.0,
    );
    assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
    let output = outcome.result["output"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut lines = output.lines();
    let dir = lines.next().expect("pwd");
    assert_eq!(lines.next(), Some("0"), "the directory starts empty");
    assert_eq!(
        lines.next(),
        Some("700"),
        "only the task's user may enter it"
    );
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}

// ----- the worker binary end to end -----

/// A `retire-worker` process joined to a scripted master.
struct JoinedWorker {
    child: std::process::Child,
    stream: TcpStream,
    codec: LineCodec,
    /// Messages decoded but not yet wanted: one read can carry several.
    pending: std::collections::VecDeque<Envelope>,
    task_types: Vec<String>,
    /// The worker's state dir (its outbox), one per worker so tests never share it.
    _state: tempfile::TempDir,
}

impl JoinedWorker {
    fn start(args: &[&str], env: &[(&str, &str)]) -> JoinedWorker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let state = tempfile::tempdir().expect("temp dir");
        let child = Command::new(worker_bin())
            .args(["--join", &addr, "--id", "sandbox-test", "--slots", "2"])
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start retire-worker");
        let (mut stream, _) = listener.accept().expect("the worker connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut codec = LineCodec::new(protocol::DEFAULT_MAX_LINE);
        let register = next_message(&mut stream, &mut codec, |m| {
            matches!(m, Message::Register(_))
        });
        let Message::Register(profile) = &register.message else {
            unreachable!("filtered above")
        };
        let task_types = profile.task_types.clone().unwrap_or_default();
        let ack = Envelope::new(Message::Ack(protocol::Ack::new(
            register.message_id.clone(),
            json!({ "heartbeat_interval": 30.0 }),
        )));
        stream.write_all(&ack.to_line()).expect("ack the register");
        JoinedWorker {
            child,
            stream,
            codec,
            pending: std::collections::VecDeque::new(),
            task_types,
            _state: state,
        }
    }

    /// The next message `want` accepts; others are dropped, later ones kept.
    fn next(&mut self, want: impl Fn(&Message) -> bool) -> Envelope {
        let mut buf = [0u8; 65536];
        loop {
            while let Some(envelope) = self.pending.pop_front() {
                if want(&envelope.message) {
                    return envelope;
                }
            }
            let n = self.stream.read(&mut buf).expect("read from the worker");
            assert!(n > 0, "the worker closed the connection");
            let mut frames = Vec::new();
            self.codec
                .decode(&buf[..n], &mut frames)
                .expect("short lines");
            for frame in frames {
                if let Frame::Json(bytes) = frame {
                    self.pending
                        .push_back(Envelope::decode(&bytes).expect("valid messages"));
                }
            }
        }
    }

    fn assign(&mut self, task_id: &str, task_type: &str, payload: Value) {
        let mut task = TaskSpec::new(task_type, payload);
        task.task_id = Some(task_id.to_string());
        task.timeout = Some(60.0);
        let mut assign = Envelope::new(Message::TaskAssign(protocol::TaskAssign {
            task,
            attempt: 1,
        }));
        assign.message_id = Some(format!("assign:1:{task_id}"));
        self.stream.write_all(&assign.to_line()).expect("assign");
    }

    /// The worker's answer to the assignment of `task_id`.
    fn answer(&mut self, task_id: &str) -> Message {
        let id = format!("assign:1:{task_id}");
        let answer = self.next(|m| match m {
            Message::Ack(ack) => ack.original_message_id.as_deref() == Some(id.as_str()),
            Message::Error(error) => error.original_message_id.as_deref() == Some(id.as_str()),
            _ => false,
        });
        answer.message
    }

    /// Progress reports of `task_id` until its result, which is acknowledged.
    fn progress_and_result(
        &mut self,
        task_id: &str,
    ) -> (Vec<protocol::TaskProgress>, protocol::TaskResult) {
        let mut progress = Vec::new();
        loop {
            let envelope = self.next(|m| match m {
                Message::TaskProgress(p) => p.task_id == task_id,
                Message::TaskResult(r) => r.task_id == task_id,
                _ => false,
            });
            match envelope.message {
                Message::TaskProgress(report) => progress.push(report),
                Message::TaskResult(result) => {
                    let ack = Envelope::new(Message::Ack(protocol::Ack::new(
                        envelope.message_id.clone(),
                        json!({ "recorded": true }),
                    )));
                    self.stream
                        .write_all(&ack.to_line())
                        .expect("ack the result");
                    return (progress, result);
                }
                _ => unreachable!("filtered above"),
            }
        }
    }

    fn run(&mut self, task_id: &str, task_type: &str, payload: Value) -> protocol::TaskResult {
        self.assign(task_id, task_type, payload);
        self.progress_and_result(task_id).1
    }

    /// The worker process's peak resident memory so far (VmHWM), in bytes.
    fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the worker's status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("VmHWM")
            * 1024
    }
}

impl Drop for JoinedWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_task_printing_its_environment_shows_no_worker_secret() {
    let secret = "s3cr3t-value-that-must-not-leak";
    let mut worker = JoinedWorker::start(
        &[],
        &[("RETIRE_TOKEN", secret), ("AWS_SECRET_ACCESS_KEY", secret)],
    );
    // Besides the environment, try the worker's own environment through /proc: the
    // task's parent is the worker.
    let result = worker.run(
        "print-env",
        "shell",
        json!({"command": "env; cat /proc/$PPID/environ; tr '\\0' '\\n' < /proc/$PPID/environ"}),
    );
    let output = result.result["output"].as_str().unwrap_or_default();
    assert!(output.contains("RETIRE_TASK_DIR="), "{result:?}");
    assert!(!output.contains(secret), "the secret leaked: {output}");
    let stderr = result.result["stderr"].as_str().unwrap_or_default();
    assert!(!stderr.contains(secret), "the secret leaked: {stderr}");
}

#[test]
fn ten_megabytes_of_output_are_truncated_and_the_worker_memory_stays_bounded() {
    let mut worker = JoinedWorker::start(&[], &[]);
    let warm = worker.run("warm-up", "shell", json!({"command": "echo warm"}));
    assert_eq!(warm.status, ResultStatus::Completed, "{warm:?}");
    let before = worker.peak_memory();
    let result = worker.run(
        "flood",
        "shell",
        json!({"command": "head -c 10000000 /dev/zero | tr '\\0' a; head -c 10000000 /dev/zero | tr '\\0' b >&2"}),
    );
    assert_eq!(result.status, ResultStatus::Completed, "{result:?}");
    let output = result.result["output"].as_str().unwrap_or_default();
    assert!(
        !output.is_empty() && output.len() <= 1024 * 1024,
        "{}",
        output.len()
    );
    assert_eq!(result.result["output_truncated"], json!(true));
    assert_eq!(result.result["stderr_truncated"], json!(true));
    let grew = worker.peak_memory().saturating_sub(before);
    // 20 MB went through the worker; it keeps at most 1 MiB per stream plus the
    // encoded result, so its peak grows by a few MiB at most.
    assert!(
        grew < 12 << 20,
        "the worker's peak memory grew by {grew} bytes"
    );
}

#[test]
fn handlers_from_the_folder_run_end_to_end_with_progress() {
    let handlers = tempfile::tempdir().expect("temp dir");
    let script = handlers.path().join("resize");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         payload=$(cat)\n\
         echo '{\"fraction\": 0.5, \"message\": \"half way\"}' >&\"$RETIRE_PROGRESS_FD\"\n\
         echo 1 >&3\n\
         printf '{\"task\":\"%s\",\"type\":\"%s\",\"payload\":%s}' \"$RETIRE_TASK_ID\" \"$RETIRE_TASK_TYPE\" \"$payload\"\n",
    )
    .expect("write the handler");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    // The handler lives in a temp dir the task user must be able to reach.
    std::fs::set_permissions(
        handlers.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let dir = handlers.path().to_string_lossy().into_owned();
    let mut worker = JoinedWorker::start(&["--handlers", &dir], &[]);
    assert!(
        worker.task_types.iter().any(|t| t == "resize"),
        "{:?}",
        worker.task_types
    );
    worker.assign("photo-1", "resize", json!({"width": 640}));
    let (progress, result) = worker.progress_and_result("photo-1");
    assert_eq!(result.status, ResultStatus::Completed, "{result:?}");
    assert_eq!(
        result.result["output"],
        json!({"task": "photo-1", "type": "resize", "payload": {"width": 640}})
    );
    assert_eq!(progress.len(), 2, "{progress:?}");
    assert_eq!(progress[0].fraction, Some(0.5));
    assert_eq!(progress[0].message.as_deref(), Some("half way"));
    assert_eq!(progress[0].attempt, Some(1));
    assert_eq!(progress[1].fraction, Some(1.0));
}

#[test]
fn the_owner_policy_decides_what_is_advertised_and_refuses_the_rest() {
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config = config_dir.path().join("worker.toml");
    std::fs::write(
        &config,
        "deny_types = [\"sleep\"]\n[types.shell]\nmemory_mb = 100\n",
    )
    .expect("write the config");
    let config = config.to_string_lossy().into_owned();
    let mut worker = JoinedWorker::start(
        &["--config", &config, "--deny-types", "shell,http_request"],
        &[],
    );
    // The flag replaces the file's deny list: sleep is back, shell and http_request go.
    assert!(
        worker.task_types.iter().any(|t| t == "sleep"),
        "{:?}",
        worker.task_types
    );
    assert!(
        !worker.task_types.iter().any(|t| t == "shell"),
        "{:?}",
        worker.task_types
    );
    assert!(
        !worker.task_types.iter().any(|t| t == "http_request"),
        "{:?}",
        worker.task_types
    );
    worker.assign("refused-1", "shell", json!({"command": "echo no"}));
    match worker.answer("refused-1") {
        Message::Error(error) => assert_eq!(error.code, protocol::ErrorCode::UnsupportedTaskType),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(worker);

    let mut worker = JoinedWorker::start(&["--allow-types", "echo"], &[]);
    assert_eq!(worker.task_types, ["echo"]);
    let result = worker.run("allowed-1", "echo", json!({"message": "yes"}));
    assert_eq!(result.result["output"], json!("yes"));
}
