//! The sandbox guards the owner (issue 14): a real `retire-worker`, running
//! as a non-root user whose home holds an `~/.ssh/id_rsa` and the worker's
//! own state dir, joined to a real `retire-master`, gets `shell` tasks that
//! try to take what belongs to the owner or the worker. Each must fail, and
//! the worker must stay healthy. Ordinary tasks, the owner's extra paths and
//! `--require sandbox=…` work.
//!
//! CI runs as root: the test then creates the user `retire-owner` (once,
//! idempotently) and runs the worker as that user, so that its tasks run as
//! the same user as the owner's files, as on a Pi. A test run by a normal
//! user runs the worker as that user.
//!
//! What a task cannot do depends on the kernel: the sandbox level the worker
//! reports decides what each test expects (`full`: everything; `partial`: all
//! but signals; `none`: only what does not need Landlock), and a note says
//! what was not checked.

use super::{setup, subscriber, wait_finished};
use protocol::{Event, Message, TaskSpec, TaskState, TaskSubmit, TaskView};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tests::{retire, Client, MasterProcess, WorkerOptions, WorkerProcess, PATIENCE};

/// The user CI creates to stand for a device's owner.
const OWNER: &str = "retire-owner";

/// What the owner keeps in `~/.ssh/id_rsa`.
const SSH_SECRET: &str = "-----BEGIN OPENSSH PRIVATE KEY----- owner-ssh-secret";

/// A variable only the worker's environment holds.
const ENV_SECRET: &str = "worker-env-secret-4f1c";

/// The uid and gid the worker runs as: `retire-owner` when the test is root
/// (created on first use; a failure to create it fails the test), else the
/// test's own user.
fn owner() -> (u32, u32) {
    static OWNER_IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *OWNER_IDS.get_or_init(|| {
        let me = std::fs::metadata("/proc/self").expect("/proc/self");
        if me.uid() != 0 {
            println!(
                "NOTE: not root; the worker runs as this user ({}), which is not root either",
                me.uid()
            );
            return (me.uid(), me.gid());
        }
        if id_of(OWNER, "-u").is_none() {
            let status = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home"])
                .args(["--shell", "/usr/sbin/nologin", OWNER])
                .status()
                .expect("run useradd (Debian package `passwd`)");
            // 9: another test process made it in the meantime.
            assert!(
                status.success() || status.code() == Some(9),
                "useradd {OWNER} failed: {status:?}"
            );
        }
        let uid = id_of(OWNER, "-u").expect("the owner user exists now");
        let gid = id_of(OWNER, "-g").expect("the owner user has a group");
        assert_ne!(uid, 0, "{OWNER} must not be root");
        (uid, gid)
    })
}

/// `id FLAG NAME` as a number, when the user exists.
fn id_of(name: &str, flag: &str) -> Option<u32> {
    let output = Command::new("id").args([flag, name]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|error| panic!("chown {}: {error}", path.display()));
}

/// A device of the owner: the home with its private files, the worker's
/// state dir inside it (its default place), a work dir and a config file.
struct Device {
    /// Kept for its `Drop`.
    _root: tempfile::TempDir,
    home: PathBuf,
    state: PathBuf,
    work: PathBuf,
    config: PathBuf,
}

impl Device {
    /// `config` is the worker's config file, with `{work}` standing for the
    /// work dir.
    fn new(config: &str) -> Device {
        let ids = owner();
        let root = setup();
        // The owner's: the worker makes its work dir in it.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        chown(root.path(), ids);
        let home = root.path().join("home");
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).expect("mkdir ~/.ssh");
        std::fs::write(ssh.join("id_rsa"), SSH_SECRET).expect("write id_rsa");
        std::fs::write(home.join("notes.txt"), "owner-notes").expect("write notes");
        std::fs::set_permissions(ssh.join("id_rsa"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        for path in [&home, &ssh, &ssh.join("id_rsa"), &home.join("notes.txt")] {
            chown(path, ids);
        }
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let state = home.join(".local/state/retire-worker");
        let work = root.path().join("work");
        let config_path = root.path().join("worker.toml");
        std::fs::write(
            &config_path,
            config.replace("{work}", &work.to_string_lossy()),
        )
        .expect("write the config");
        Device {
            _root: root,
            home,
            state,
            work,
            config: config_path,
        }
    }

    /// Starts the worker as the owner with `slots` slots, its HOME the
    /// owner's home and a secret in its environment.
    fn start(&self, master: SocketAddr, id: &str, slots: usize) -> WorkerProcess {
        self.start_logged(master, id, slots, None)
    }

    /// Starts the worker like [`Device::start`], its log written to `log`.
    fn start_logged(
        &self,
        master: SocketAddr,
        id: &str,
        slots: usize,
        log: Option<PathBuf>,
    ) -> WorkerProcess {
        let state = self.state.to_string_lossy().into_owned();
        let config = self.config.to_string_lossy().into_owned();
        WorkerProcess::start_with(
            master,
            id,
            slots,
            &["--state-dir", &state, "--config", &config],
            WorkerOptions {
                run_as: Some(owner()),
                env: vec![
                    ("HOME".into(), self.home.to_string_lossy().into_owned()),
                    ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                    ("RETIRE_TEST_OWNER_SECRET".into(), ENV_SECRET.into()),
                ],
                log,
                ..WorkerOptions::default()
            },
        )
    }
}

/// Submits tasks pinned to `device` (and `require`d, when given).
pub(super) fn submit(master: SocketAddr, device: Option<&str>, tasks: Vec<(String, &str, Value)>) {
    let specs = tasks
        .into_iter()
        .map(|(id, task_type, payload)| {
            let mut spec = TaskSpec::new(task_type, payload);
            spec.task_id = Some(id);
            spec.timeout = Some(120.0);
            spec.requirements.device_id = device.map(str::to_string);
            spec
        })
        .collect();
    Client::connect(master)
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: specs,
            batch: false,
        }))
        .expect("submit");
}

/// Runs one `shell` task on `device` and returns it finished.
fn shell(
    master: SocketAddr,
    events: &mut Client,
    device: &str,
    id: &str,
    script: &str,
) -> TaskView {
    submit(
        master,
        Some(device),
        vec![(id.to_string(), "shell", json!({ "command": script }))],
    );
    wait_finished(events, &BTreeSet::from([id.to_string()]))
        .remove(id)
        .expect("finished")
}

/// Everything the task printed, stdout and stderr.
pub(super) fn printed(task: &TaskView) -> (String, String) {
    let result = task.result.clone().unwrap_or(Value::Null);
    (
        result["output"].as_str().unwrap_or_default().to_string(),
        result["stderr"].as_str().unwrap_or_default().to_string(),
    )
}

/// The level the task's result reports.
fn level_of(task: &TaskView) -> String {
    task.result.as_ref().map_or_else(String::new, |result| {
        result["sandbox"]["level"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

/// Whether `pid` is a live process (not gone, not a zombie, not stopped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X") | Some("T") | Some("t")
        )
    })
}

/// After the attacks: the worker process is the same and alive, and still
/// runs tasks.
fn assert_healthy(master: SocketAddr, events: &mut Client, worker: &WorkerProcess, tag: &str) {
    assert!(alive(worker.pid()), "{tag}: the worker is gone or stopped");
    let task = shell(
        master,
        events,
        &worker.id,
        &format!("{tag}-after"),
        "echo still-here",
    );
    assert_eq!(task.state, TaskState::Completed, "{tag}: {task:?}");
    assert_eq!(printed(&task).0, "still-here\n", "{tag}");
    assert!(alive(worker.pid()), "{tag}: the worker is gone or stopped");
}

/// Each attack on the owner's and the worker's files, memory and process,
/// from a task of the worker's own user. The owner's files, the worker's key
/// and everything outside the task's directory are out of reach (Landlock);
/// so are signals to the worker (Landlock ABI 6) and its memory and
/// environment (not dumpable).
#[test]
fn a_task_cannot_reach_the_owner_or_the_worker() {
    let dir = setup();
    let master = MasterProcess::start(&dir.path().join("data"));
    let mut events = subscriber(master.addr);
    let device = Device::new("[sandbox]\nwork_dir = \"{work}\"\n");
    let worker = device.start(master.addr, "owner-pi", 2);
    events
        .wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == "owner-pi"));
    let pid = worker.pid();
    let id = "owner-pi";
    let home = device.home.display().to_string();
    let state = device.state.join(id);
    let identity = std::fs::read_to_string(state.join("identity.key")).expect("the device key");
    assert!(!identity.trim().is_empty());

    // Which level this kernel gives decides what must hold.
    let probe = shell(master.addr, &mut events, id, "probe", "true");
    let level = level_of(&probe);
    println!("sandbox level here: {level}");
    assert!(
        matches!(level.as_str(), "full" | "partial" | "none"),
        "{probe:?}"
    );
    let confined = level != "none";

    // 1. The owner's ssh key and home.
    let task = shell(
        master.addr,
        &mut events,
        id,
        "ssh-key",
        &format!("cat {home}/.ssh/id_rsa; cat {home}/notes.txt; ls -a {home}; echo end"),
    );
    let (out, err) = printed(&task);
    if confined {
        assert!(
            !out.contains(SSH_SECRET) && !out.contains("owner-notes"),
            "{task:?}"
        );
        assert!(!out.contains(".ssh"), "the home cannot be listed: {task:?}");
        assert!(err.contains("Permission denied"), "{task:?}");
    } else {
        println!("NOTE: level none: the task read the owner's key, as docs/sandbox.md says");
    }

    // 2. The worker's own key, its pinned master key and its outbox.
    let task = shell(
        master.addr,
        &mut events,
        id,
        "device-key",
        &format!(
            "cat {s}/identity.key; cat {s}/master.pub; ls {s} {s}/outbox; echo end",
            s = state.display()
        ),
    );
    let (out, err) = printed(&task);
    if confined {
        assert!(!out.contains(identity.trim()), "{task:?}");
        assert!(!out.contains("outbox"), "{task:?}");
        assert!(err.contains("Permission denied"), "{task:?}");
    }

    // 3. Writing outside its own directory: the home, the state dir, /tmp,
    // the work dir that holds the task directories.
    let tmp_target = format!("/tmp/retire-escape-{}", std::process::id());
    let outside = [
        format!("{home}/pwned"),
        format!("{home}/.ssh/authorized_keys"),
        format!("{}/pwned", state.display()),
        tmp_target.clone(),
        format!("{}/pwned", device.work.display()),
    ];
    let script: String = outside
        .iter()
        .map(|path| format!("echo pwned > {path} && echo wrote {path}; "))
        .collect::<String>()
        + "echo inside > mine && cat mine";
    let task = shell(master.addr, &mut events, id, "write-outside", &script);
    let (out, _) = printed(&task);
    assert!(out.ends_with("inside\n"), "writing inside works: {task:?}");
    if confined {
        assert!(!out.contains("wrote"), "{task:?}");
        for path in &outside {
            assert!(!Path::new(path).exists(), "the task wrote {path}");
        }
    }
    let _ = std::fs::remove_file(&tmp_target);

    // 4. Signals and ptrace against the worker.
    let ptrace = "command -v python3 >/dev/null && python3 -c '\
import ctypes, sys\n\
libc = ctypes.CDLL(None, use_errno=True)\n\
print(\"ptrace\", libc.ptrace(16, int(sys.argv[1]), 0, 0), ctypes.get_errno())' PID \
|| echo ptrace no-python";
    // Below `full` a task of the worker's user can signal it (docs/sandbox.md):
    // the signals are sent only where they must fail, or they would kill the
    // worker this test goes on using.
    let signals = if level == "full" {
        format!(
            "kill -0 {pid}; echo kill0=$?; kill -STOP {pid}; echo stop=$?; \
             kill -TERM {pid}; echo term=$?; kill -KILL {pid}; echo kill=$?; "
        )
    } else {
        println!("NOTE: level {level}: signals to the worker are not scoped here, not sent");
        String::new()
    };
    let task = shell(
        master.addr,
        &mut events,
        id,
        "signals",
        &format!(
            "{signals}cat /proc/{pid}/mem; echo mem=$?; {}",
            ptrace.replace("PID", &pid.to_string())
        ),
    );
    let (out, err) = printed(&task);
    if level == "full" {
        for refused in ["kill0=1", "stop=1", "term=1", "kill=1"] {
            assert!(out.contains(refused), "{refused}: {task:?}");
        }
    }
    // Never dumpable: no memory, no tracing, whatever the level.
    assert!(out.contains("mem=1"), "{task:?}");
    assert!(err.contains("mem: Permission denied"), "{task:?}");
    if out.contains("ptrace no-python") {
        println!("NOTE: no python3: PTRACE_ATTACH itself was not tried");
    } else {
        assert!(
            out.contains("ptrace -1 1\n"),
            "PTRACE_ATTACH refused: {task:?}"
        );
    }
    assert_healthy(master.addr, &mut events, &worker, "signals");

    // 5. The worker's environment through /proc.
    let task = shell(
        master.addr,
        &mut events,
        id,
        "environ",
        &format!("cat /proc/{pid}/environ; tr '\\0' '\\n' < /proc/$PPID/environ; echo end"),
    );
    let (out, err) = printed(&task);
    assert!(!out.contains(ENV_SECRET), "{task:?}");
    assert!(err.contains("environ: Permission denied"), "{task:?}");

    assert_healthy(master.addr, &mut events, &worker, "attacks");
}

/// A task cannot read the directory of another task running at the same time
/// on the same worker, nor list the work dir that holds them.
#[test]
fn a_task_cannot_read_another_running_tasks_directory() {
    let dir = setup();
    let master = MasterProcess::start(&dir.path().join("data"));
    let mut events = subscriber(master.addr);
    let device = Device::new("[sandbox]\nwork_dir = \"{work}\"\n");
    let worker = device.start(master.addr, "two-slots", 2);
    events
        .wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == "two-slots"));
    submit(
        master.addr,
        Some("two-slots"),
        vec![(
            "victim".into(),
            "shell",
            json!({"command": "echo other-task-secret > mine; sleep 120"}),
        )],
    );
    // Wait until the victim's file is there (the test reads it as root or as
    // the same user).
    let deadline = Instant::now() + PATIENCE;
    let victim_file = loop {
        let found = std::fs::read_dir(&device.work).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path().join("mine"))
                .find(|path| {
                    path.parent()
                        .and_then(Path::file_name)
                        .is_some_and(|name| name.to_string_lossy().starts_with("victim-"))
                        && std::fs::read_to_string(path).is_ok_and(|text| text.ends_with('\n'))
                })
        });
        if let Some(path) = found {
            break path;
        }
        assert!(
            Instant::now() < deadline,
            "the victim task never wrote its file"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let task = shell(
        master.addr,
        &mut events,
        "two-slots",
        "thief",
        &format!(
            "cat {}; cat ../victim-*/mine; ls ..; echo end",
            victim_file.display()
        ),
    );
    let (out, err) = printed(&task);
    if level_of(&task) == "none" {
        println!("NOTE: level none: tasks of one user can read each other's directories");
    } else {
        assert!(!out.contains("other-task-secret"), "{task:?}");
        assert!(
            !out.contains("victim-"),
            "the work dir cannot be listed: {task:?}"
        );
        assert!(err.contains("Permission denied"), "{task:?}");
    }
    Client::connect(master.addr)
        .request(Message::TaskCancel(protocol::TaskCancel {
            attempt: None,
            task_id: "victim".into(),
        }))
        .expect("cancel the victim");
    wait_finished(&mut events, &BTreeSet::from(["victim".to_string()]));
    assert_healthy(master.addr, &mut events, &worker, "thief");
}

/// Ordinary tasks still work under the policy (sh, coreutils, /etc,
/// /proc/cpuinfo, /dev/stderr, echo, system_info), and the owner's `read`
/// and `write` paths do what they say; `retire devices` shows the level and
/// `--require sandbox=LEVEL` places a task only on a device that good.
#[test]
fn ordinary_tasks_and_the_owners_paths_work_and_the_level_places_tasks() {
    let dir = setup();
    let master = MasterProcess::start(&dir.path().join("data"));
    let mut events = subscriber(master.addr);
    let shared = tests::shared_dir(dir.path(), "shared");
    let readable = shared.join("readable");
    let writable = shared.join("writable");
    for path in [&readable, &writable] {
        std::fs::create_dir(path).expect("mkdir");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    std::fs::write(readable.join("data"), "shared-data").expect("write");
    std::fs::set_permissions(
        readable.join("data"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let guarded = Device::new(&format!(
        "[sandbox]\nwork_dir = \"{{work}}\"\nread = [\"{}\"]\nwrite = [\"{}\"]\n",
        readable.display(),
        writable.display()
    ));
    let open = Device::new("[sandbox]\nwork_dir = \"{work}\"\nlandlock = false\n");
    let guarded_log = dir.path().join("guarded.log");
    let open_log = dir.path().join("open.log");
    let _guarded = guarded.start_logged(master.addr, "guarded", 2, Some(guarded_log.clone()));
    let _open = open.start_logged(master.addr, "open", 2, Some(open_log.clone()));
    let mut joined = BTreeSet::new();
    while joined.len() < 2 {
        if let Event::DeviceJoined { device_id } =
            events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }))
        {
            joined.insert(device_id);
        }
    }

    let script = format!(
        "cat /etc/passwd >/dev/null && echo etc; grep -qi . /proc/cpuinfo && echo cpuinfo; \
         ls /usr/bin >/dev/null && echo usr; echo to-stderr >/dev/stderr && echo stderr; \
         date +%Y >/dev/null && echo date; echo mine > f && cat f; \
         cat {r}/data; echo; echo out > {w}/out && echo wrote; \
         echo no > {r}/new || echo read-only",
        r = readable.display(),
        w = writable.display()
    );
    let task = shell(master.addr, &mut events, "guarded", "ordinary", &script);
    let (out, err) = printed(&task);
    let level = level_of(&task);
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert!(
        out.starts_with("etc\ncpuinfo\nusr\nstderr\ndate\nmine\nshared-data\nwrote\n"),
        "{task:?}"
    );
    assert!(err.contains("to-stderr"), "{task:?}");
    assert_eq!(
        std::fs::read_to_string(writable.join("out")).expect("written"),
        "out\n"
    );
    if level != "none" {
        assert!(out.ends_with("read-only\n"), "{task:?}");
        assert!(!readable.join("new").exists());
    }
    submit(
        master.addr,
        Some("guarded"),
        vec![
            ("plain-echo".into(), "echo", json!({"message": "hi"})),
            ("plain-info".into(), "system_info", json!({})),
        ],
    );
    let done = wait_finished(
        &mut events,
        &BTreeSet::from(["plain-echo".to_string(), "plain-info".to_string()]),
    );
    for (task_id, task) in &done {
        assert_eq!(task.state, TaskState::Completed, "{task_id}: {task:?}");
    }

    // The level as `retire devices` shows it.
    let output = retire(master.addr, &["devices", "--json"]);
    let reply: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let shown = |id: &str| {
        reply["devices"]
            .as_array()
            .and_then(|devices| devices.iter().find(|d| d["device_id"] == id))
            .map(|device| device["sandbox"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(shown("guarded"), level);
    assert_eq!(shown("open"), "none");
    // Each worker said at start what its sandbox does.
    let said = |log: &Path| std::fs::read_to_string(log).expect("the worker's log");
    let guarded_said = said(&guarded_log);
    assert!(
        guarded_said.contains(&format!("sandbox: {level}")),
        "{guarded_said}"
    );
    let open_said = said(&open_log);
    assert!(
        open_said.lines().any(|line| line.contains("WARN")
            && line.contains("sandbox: none")
            && line.contains("can read every file")),
        "{open_said}"
    );
    let table = String::from_utf8_lossy(&retire(master.addr, &["devices"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|header| header.contains("SANDBOX")),
        "{table}"
    );

    // `--require sandbox=LEVEL`: only the guarded device runs these.
    if level == "none" {
        println!("NOTE: no Landlock here: `--require sandbox` cannot tell the devices apart");
        return;
    }
    let ids: Vec<String> = (0..4)
        .map(|n| {
            let output = retire(
                master.addr,
                &[
                    "submit",
                    "--type",
                    "echo",
                    "--payload",
                    &format!("{{\"message\": {n}}}"),
                    "--require",
                    &format!("sandbox={level}"),
                    "--id",
                    &format!("needs-{level}-{n}"),
                ],
            );
            assert!(output.status.success(), "{output:?}");
            format!("needs-{level}-{n}")
        })
        .collect();
    let done = wait_finished(&mut events, &ids.iter().cloned().collect());
    for (task_id, task) in done {
        assert_eq!(task.state, TaskState::Completed, "{task_id}");
        assert_eq!(task.device_id.as_deref(), Some("guarded"), "{task_id}");
    }
}
