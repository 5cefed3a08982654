//! The master under systemd: the shipped unit files pass `systemd-analyze verify`, the
//! real binary speaks the notify protocol to a socket the test owns, and it logs with
//! journald's priority prefixes when its standard error is the journal.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tests::launch::{master_command, wait_listening};
use tests::{
    bin, retire, shared_dir, signal, text_command, tokens_for, MasterProcess, WorkerOptions,
    WorkerProcess, PATIENCE,
};

/// What to install when `systemd-analyze` is missing.
const INSTALL_SCRIPT: &str = "scripts/install-test-deps";

/// The repository's `deploy/systemd/` folder.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("systemd")
}

/// The `KEY=VALUE` lines of a unit file, in order (comments and sections left out).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// `systemd-analyze` (Debian's `systemd` package), or a failure that says how to get it:
/// a test that needs it never passes without it.
fn systemd_analyze() -> Command {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "systemd-analyze is missing (Debian package `systemd`): run {INSTALL_SCRIPT} \
         (as root), which installs what the tests need"
    );
    Command::new("systemd-analyze")
}

/// Most exposure `systemd-analyze security` may find in the master's unit, in its
/// tenths (0 to 100): 2.0, where the unit as shipped scores 1.4 on Debian 12's systemd
/// 252. The master needs no privilege; what is left open is its network.
const MASTER_EXPOSURE: u32 = 20;

/// The same for the worker's unit: 4.0, where it scores 3.2. It keeps the capabilities
/// its task sandbox needs to run tasks as `nobody` (docs/systemd.md).
const WORKER_EXPOSURE: u32 = 40;

/// Both units as shipped, copied to `dir` with only the path of the binary in
/// `ExecStart=` pointed at the one this build made (verify checks that it exists and is
/// executable), with the most exposure each may have.
fn installed_units(dir: &Path) -> Vec<(PathBuf, u32)> {
    [
        ("retire-master.service", "retire-master", MASTER_EXPOSURE),
        ("retire-worker.service", "retire-worker", WORKER_EXPOSURE),
    ]
    .into_iter()
    .map(|(unit, binary, exposure)| {
        let shipped = std::fs::read_to_string(deploy_dir().join(unit)).expect("read the unit");
        let installed = format!("/usr/local/bin/{binary}");
        assert!(
            shipped.contains(&format!("ExecStart={installed} ")),
            "{unit} starts {installed}"
        );
        let path = dir.join(unit);
        let built = bin(binary);
        std::fs::write(
            &path,
            shipped.replace(&installed, &built.display().to_string()),
        )
        .expect("write the unit");
        (path, exposure)
    })
    .collect()
}

/// Both units pass `systemd-analyze verify` without a word of complaint, and `systemd-
/// analyze security` finds no more exposure than each is allowed.
#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let units = installed_units(dir.path());
    let output = systemd_analyze()
        .arg("verify")
        .arg("--man=no")
        .args(units.iter().map(|(path, _)| path))
        .output()
        .expect("run systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{complaints}",
        output.status
    );
    for (unit, exposure) in &units {
        let output = systemd_analyze()
            .arg("security")
            .arg("--offline=yes")
            .arg("--no-pager")
            .arg(format!("--threshold={exposure}"))
            .arg(unit)
            .output()
            .expect("run systemd-analyze security");
        let report = String::from_utf8_lossy(&output.stdout);
        let verdict = report
            .lines()
            .find(|line| line.contains("Overall exposure level"))
            .unwrap_or("no verdict");
        assert!(
            output.status.success(),
            "{}: more exposure than {exposure}/100: {verdict}\n{report}",
            unit.display()
        );
    }
}

/// The shipped sysusers file creates the `retire` user the master's unit runs as:
/// `systemd-sysusers` applies it to an empty root in a temp dir.
#[test]
fn the_sysusers_file_creates_the_masters_user() {
    systemd_analyze();
    let root = tempfile::tempdir().expect("a temp dir");
    std::fs::create_dir(root.path().join("etc")).expect("etc");
    let output = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy_dir().join("retire-cluster.sysusers"))
        .output()
        .expect("run systemd-sysusers (Debian package `systemd`)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("etc/passwd");
    let user = passwd
        .lines()
        .find(|line| line.starts_with("retire:"))
        .unwrap_or_else(|| panic!("no retire user in {passwd:?}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields.get(5), Some(&"/var/lib/retire-cluster"), "{user}");
    assert_eq!(fields.get(6), Some(&"/usr/sbin/nologin"), "{user}");
}

/// The hardening the issue asks for is in the units as shipped, and stays there.
#[test]
fn the_shipped_units_are_hardened() {
    let check = |unit: &str, key: &str, expect: &str| {
        let text = std::fs::read_to_string(deploy_dir().join(unit)).expect("read the unit");
        let values: Vec<String> = directives(&text)
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect();
        assert!(
            values.iter().any(|value| value == expect),
            "{unit}: {key}={expect} expected, found {values:?}"
        );
    };
    for (unit, state) in [
        ("retire-master.service", "retire-cluster"),
        ("retire-worker.service", "retire-worker"),
    ] {
        check(unit, "StateDirectory", state);
        check(unit, "ProtectSystem", "strict");
        check(unit, "ProtectHome", "yes");
        check(unit, "PrivateTmp", "yes");
        check(unit, "NoNewPrivileges", "yes");
        check(unit, "Restart", "on-failure");
        check(unit, "Type", "notify");
        check(unit, "WatchdogSec", "30s");
    }
    let master = "retire-master.service";
    check(master, "User", "retire");
    check(master, "LimitNOFILE", "65536");
    check(
        master,
        "RestrictAddressFamilies",
        "AF_INET AF_INET6 AF_UNIX",
    );
    check(master, "SystemCallFilter", "@system-service");
    let worker = "retire-worker.service";
    check(
        worker,
        "SystemCallFilter",
        "@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self",
    );
    check(
        worker,
        "RestrictAddressFamilies",
        "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    );
}

/// A started master, killed when the test ends however it ends, so a failing test
/// leaves no process behind.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A datagram the master sent to the notify socket, one `KEY=VALUE` per line.
fn next_datagram(socket: &UnixDatagram) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let len = socket
        .recv(&mut buf)
        .expect("a notification within the patience");
    String::from_utf8_lossy(&buf[..len])
        .lines()
        .map(str::to_string)
        .collect()
}

/// A notify socket bound in `dir`, owned by the test, and its path.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(PATIENCE))
        .expect("a read timeout");
    (socket, path)
}

/// Checks that the first datagram says READY=1 with the `status` line, and the next
/// one is a watchdog ping.
fn ready_then_ping(socket: &UnixDatagram, status: &str) {
    let ready = next_datagram(socket);
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");
    assert!(ready.iter().any(|line| line == status), "{ready:?}");
    assert_eq!(next_datagram(socket), ["WATCHDOG=1"]);
}

/// Waits for the datagram with `STOPPING=1` and a `STATUS=stopping…` line, allowing
/// only watchdog pings before it.
fn until_stopping(socket: &UnixDatagram) {
    loop {
        let datagram = next_datagram(socket);
        if datagram.contains(&"STOPPING=1".to_string()) {
            assert!(
                datagram
                    .iter()
                    .any(|line| line.starts_with("STATUS=stopping")),
                "{datagram:?}"
            );
            return;
        }
        assert_eq!(datagram, ["WATCHDOG=1"], "only pings come before the stop");
    }
}

/// Checks that nothing followed STOPPING=1 once the process exited: no ping from a
/// loop that has stopped.
fn assert_silent(socket: &UnixDatagram) {
    socket.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 512];
    assert!(
        socket.recv(&mut buf).is_err(),
        "a datagram after STOPPING=1"
    );
}

/// The real master with `NOTIFY_SOCKET` pointing at a datagram socket this test owns and
/// a watchdog of 200 ms: it says READY=1 with a status line naming its address, then
/// WATCHDOG=1 from its loop, and STOPPING=1 when it is told to stop, in that order.
#[test]
fn the_master_speaks_the_notify_protocol() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (socket, socket_path) = notify_socket(dir.path());
    let mut command = Command::new(bin("retire-master"));
    master_command(&mut command, "127.0.0.1:0", &dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    let mut master = Started(command.spawn().expect("start retire-master"));
    let child = &mut master.0;
    let addr = wait_listening(child, PATIENCE).expect("retire-master listens");

    ready_then_ping(
        &socket,
        &format!("STATUS=serving on {addr}: 0 workers online, 0 queued"),
    );

    signal(child.id(), 15);
    until_stopping(&socket);
    let exit = child.wait().expect("wait for retire-master");
    assert!(exit.success(), "{exit:?}");
    assert_silent(&socket);
}

/// The real worker with `NOTIFY_SOCKET` and a 200 ms watchdog: READY=1 once it has
/// registered (the master lists it by then), with a status line naming its master and
/// id, then WATCHDOG=1 from its main loop, and STOPPING=1 when told to stop.
#[test]
fn the_worker_says_ready_once_registered_and_pings_from_its_loop() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let master = MasterProcess::start(&dir.path().join("data"));
    let (socket, socket_path) = notify_socket(dir.path());
    let options = WorkerOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "200000".into()),
        ],
        ..WorkerOptions::default()
    };
    let mut worker = WorkerProcess::start_with(master.addr, "under-systemd", 1, &[], options);

    ready_then_ping(
        &socket,
        &format!(
            "STATUS=registered with {} as under-systemd: 0 tasks running",
            master.addr
        ),
    );
    let devices = text_command(master.addr, "devices");
    assert!(devices.contains("under-systemd"), "{devices}");

    signal(worker.pid(), 15);
    until_stopping(&socket);
    let exit = worker.wait_exit().expect("the worker stops");
    assert!(exit.success(), "{exit:?}");
    assert_silent(&socket);
}

/// Runs the real master with standard error in a file, `JOURNAL_STREAM` naming that
/// file (`journal`) or another stream, and returns what it logged. With `listen`, it
/// runs until it listens and is then stopped with SIGTERM; without, it fails at once.
fn logged(journal: bool, args: &[&str], listen: bool) -> String {
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).expect("create the log");
    let meta = file.metadata().expect("the log's metadata");
    let stream = if journal {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        // Inherited from a unit, but this standard error is not the journal.
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    };
    let mut command = Command::new(bin("retire-master"));
    master_command(&mut command, "127.0.0.1:0", &dir.path().join("data"))
        .args(args)
        .env("JOURNAL_STREAM", stream)
        .env("RUST_LOG", "info")
        .stderr(file);
    let mut master = Started(command.spawn().expect("start retire-master"));
    let child = &mut master.0;
    if listen {
        wait_listening(child, PATIENCE).expect("retire-master listens");
        signal(child.id(), 15);
    }
    let exit = child.wait().expect("wait for retire-master");
    assert_eq!(exit.success(), listen, "{exit:?}");
    std::fs::read_to_string(&log).expect("read the log")
}

/// Whether `line` holds an RFC 3339 date such as `2026-12-07T13:54:08`.
fn has_timestamp(line: &str) -> bool {
    line.as_bytes().windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == b'-'
            && w[8..10].iter().all(u8::is_ascii_digit)
            && w[10] == b'T'
    })
}

/// On the journal every line starts with its syslog priority and has no timestamp, so
/// `journalctl -p warning` finds the warnings; anywhere else the lines are as before.
#[test]
fn on_the_journal_lines_carry_priorities_and_no_timestamp() {
    let warning = "authentication is off";
    let info = "stopped cleanly";
    let serve = ["--no-auth"];
    let fail = ["--heartbeat-interval", "5", "--heartbeat-timeout", "1"];
    let error = "retire-master: error: flag --heartbeat-timeout";

    let journal = logged(true, &serve, true);
    assert!(!journal.trim().is_empty());
    for line in journal.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .and_then(|(n, _)| n.parse::<u8>().ok());
        assert!(priority.is_some_and(|n| n <= 7), "no priority: {line:?}");
        assert!(!has_timestamp(line), "a timestamp: {line:?}");
    }
    let has = |text: &str, prefix: &str, words: &str| {
        text.lines()
            .any(|line| line.starts_with(prefix) && line.contains(words))
    };
    assert!(has(&journal, "<4>", warning), "{journal}");
    assert!(has(&journal, "<6>", info), "{journal}");
    let failed = logged(true, &fail, false);
    assert!(has(&failed, &format!("<3>{error}"), ""), "{failed}");

    let elsewhere = logged(false, &serve, true);
    for line in elsewhere.lines() {
        assert!(line.starts_with('[') && has_timestamp(line), "{line:?}");
    }
    assert!(has(&elsewhere, "[", warning), "{elsewhere}");
    let failed = logged(false, &fail, false);
    assert!(has(&failed, error, ""), "{failed}");
}

/// The capabilities the worker's unit keeps (`CapabilityBoundingSet=`), in `setpriv`'s
/// spelling: `+setuid,+setgid,…`.
fn unit_capabilities() -> String {
    let unit = std::fs::read_to_string(deploy_dir().join("retire-worker.service"))
        .expect("read the worker's unit");
    let (_, caps) = directives(&unit)
        .into_iter()
        .find(|(key, _)| key == "CapabilityBoundingSet")
        .expect("the worker's unit bounds its capabilities");
    caps.split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The processes running `sleep 6017`.
fn sleeping_6017() -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| cmdline == b"sleep\x006017\x00")
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A real `shell` task runs on a worker confined as its unit confines it, as far as
/// that can be done without a running systemd: `setpriv` starts it with
/// `no_new_privs` and, when the test is root (as in CI), with only the capabilities in
/// the unit's `CapabilityBoundingSet=`. The task runs (as `nobody` under a root
/// worker), writes in its own directory, cannot write to `/etc`, and its directory is
/// gone afterwards. The system call filter and the unit's mount namespace need
/// systemd itself: docs/systemd.md reasons them through.
#[test]
fn a_task_runs_on_a_worker_with_only_its_units_capabilities() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let master = MasterProcess::start(&dir.path().join("data"));
    let (socket, socket_path) = notify_socket(dir.path());
    let shared = shared_dir(dir.path(), "shared");
    let work = shared.join("work");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!("[sandbox]\nwork_dir = \"{}\"\n", work.display()),
    )
    .expect("write the worker config");
    let is_root = std::fs::metadata("/proc/self")
        .map(|meta| meta.uid() == 0)
        .unwrap_or(false);
    let mut command = Command::new("setpriv");
    command.arg("--no-new-privs");
    if is_root {
        command.arg(format!("--bounding-set=-all,{}", unit_capabilities()));
    }
    command
        .arg("--")
        .arg(bin("retire-worker"))
        .args(["--join", &master.addr.to_string(), "--id", "confined"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(tokens) = tokens_for(master.addr) {
        command.env("RETIRE_JOIN_TOKEN", tokens.join);
    }
    let mut worker = Started(command.spawn().expect("run setpriv (util-linux)"));
    let ready = next_datagram(&socket);
    assert!(ready.contains(&"READY=1".to_string()), "{ready:?}");

    let output = retire(
        master.addr,
        &[
            "submit",
            "--wait",
            // A worker that cannot kill the `sleep` below waits for it to close the
            // task's output: fail then, rather than hang.
            "--wait-timeout",
            "60",
            "--",
            "sh",
            "-c",
            "id -u; echo written > here && cat here; \
             (echo x > /etc/retire-probe) 2>/dev/null && echo wrote-etc || echo no-etc; \
             sleep 6017 &",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let uid = if is_root {
        "65534".to_string()
    } else {
        std::fs::metadata("/proc/self")
            .map(|meta| meta.uid().to_string())
            .expect("my uid")
    };
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [uid.as_str(), "written", "no-etc"], "{stdout}");
    // The `sleep` the task left behind was killed with the task's group (as `nobody`'s
    // process, that takes the unit's CAP_KILL) before the result was reported.
    let left_running = sleeping_6017();
    assert!(left_running.is_empty(), "still running: {left_running:?}");

    signal(worker.0.id(), 15);
    until_stopping(&socket);
    let exit = worker.0.wait().expect("wait for the worker");
    assert!(exit.success(), "{exit:?}");
    let left: Vec<_> = std::fs::read_dir(&work)
        .expect("the worker made its work dir")
        .collect();
    assert!(left.is_empty(), "task directories left behind: {left:?}");
}
