//! Termux on Android, stood in for (issue 14): the real static musl
//! `retire-worker` in a chroot laid out like a phone, with no `/etc/resolv.conf`,
//! no `/bin/sh`, no `/tmp` and no `/system`; a Termux prefix
//! (`/data/data/com.termux/files/usr`) holding a static busybox as `sh` and a
//! `resolv.conf` naming a DNS server (dnsmasq) on 127.0.0.2 (not 127.0.0.1,
//! where musl's resolver looks when it has no `/etc/resolv.conf`: the worker
//! must have read Termux's file to find it); an app's uid; and a
//! seccomp filter that, like Android's app policy, answers Landlock's system calls
//! with `SIGSYS`. The master, dnsmasq and the workers share a network namespace
//! the test makes (resolv.conf has no port: the DNS server must own
//! port 53, which the machine's own may hold).
//!
//! Two workers run there: one with Termux's environment (`ANDROID_ROOT`, so it
//! knows it is on Android) and one without it (a build that does not recognise
//! the phone, which must learn from its probe child that Landlock's calls kill).
//! Each joins the master by name, runs `shell`, `echo` and `system_info` tasks,
//! and reports sandbox level `none` with a start-up line saying why.
//!
//! Needs root (CI runs as root) for the chroot, the mounts and the namespace,
//! `x86_64-unknown-linux-musl` (rustup), busybox (`busybox-static`) and dnsmasq
//! (`dnsmasq-base`): scripts/install-test-deps. Each missing piece fails the
//! test, saying which.

use super::{sandbox::printed, sandbox::submit, setup, subscriber, wait_finished};
use protocol::{Event, TaskState, TaskView};
use serde_json::json;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use tests::{tokens_for, MasterProcess, PATIENCE};

/// Termux's prefix, as on a phone.
const PREFIX: &str = "/data/data/com.termux/files/usr";

/// Termux's home.
const HOME: &str = "/data/data/com.termux/files/home";

/// An Android app's uid (apps get 10000 and up); the Termux user.
const APP_UID: u32 = 10_234;

/// The master's name, known only to the test's DNS server.
const MASTER_NAME: &str = "master.phone.test";

/// Where the phone's DNS server listens: a loopback address musl does not
/// fall back to by itself.
const DNS_ADDRESS: &str = "127.0.0.2";

/// The musl target that runs with no dynamic loader in the chroot.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds the static musl worker once (in its own target dir, so that it never
/// waits on the lock of the build running this test) and returns its path.
fn musl_worker() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/e2e-HASH → target/
            let exe = std::env::current_exe().expect("the test's path");
            let target = exe
                .ancestors()
                .nth(3)
                .expect("the test runs from target/<profile>/deps")
                .join("termux-musl");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "worker", "--bin", "retire-worker"])
                .args(["--target", MUSL_TARGET, "--target-dir"])
                .arg(&target)
                .status()
                .expect("run cargo to build the static worker");
            assert!(
                status.success(),
                "building the static worker failed; is the target installed? \
                 `rustup target add {MUSL_TARGET}`"
            );
            target.join(MUSL_TARGET).join("debug/retire-worker")
        })
        .clone()
}

/// The path of a program on the machine, or a failure naming its package.
fn program(name: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is missing: install the Debian package `{package}` (scripts/install-test-deps)");
}

/// The phone's filesystem: the Termux prefix with busybox and the worker, its
/// `etc/resolv.conf`, its `tmp` and the home, owned by the app's uid; empty
/// `proc` and `dev` to mount on. Nothing else: no `/etc`, `/bin`, `/tmp` or
/// `/system`.
fn lay_out_phone(root: &Path, worker: &Path) {
    let prefix = root.join(PREFIX.trim_start_matches('/'));
    let bin = prefix.join("bin");
    std::fs::create_dir_all(&bin).expect("the prefix's bin");
    std::fs::create_dir_all(prefix.join("etc")).expect("the prefix's etc");
    std::fs::copy(program("busybox", "busybox-static"), bin.join("busybox")).expect("busybox");
    for applet in ["sh", "echo", "cat", "pwd", "test", "ls", "id"] {
        symlink("busybox", bin.join(applet)).expect("a busybox applet");
    }
    std::fs::copy(worker, bin.join("retire-worker")).expect("the worker");
    std::fs::write(
        prefix.join("etc/resolv.conf"),
        format!("nameserver {DNS_ADDRESS}\n"),
    )
    .expect("resolv.conf");
    let home = root.join(HOME.trim_start_matches('/'));
    for dir in [prefix.join("tmp"), home] {
        std::fs::create_dir_all(&dir).expect("a directory of the app");
        std::os::unix::fs::chown(&dir, Some(APP_UID), Some(APP_UID)).expect("chown");
    }
    for dir in ["proc", "dev"] {
        std::fs::create_dir_all(root.join(dir)).expect("a mount point");
    }
    // Every directory on the way must be searchable by the app's uid.
    for dir in [
        "data",
        "data/data",
        "data/data/com.termux",
        "data/data/com.termux/files",
    ] {
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for path in ["etc", "bin/sh", "tmp", "system", "etc/resolv.conf"] {
        assert!(!root.join(path).exists(), "the phone must have no /{path}");
    }
}

/// Installs `deploy/termux/service/retire-worker/run` in the phone as the
/// Termux docs say, with an env file that joins `join` with `token` as `phone`.
fn install_service(root: &Path, join: &str, token: &str) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let service = root
        .join(PREFIX.trim_start_matches('/'))
        .join("var/service/retire-worker");
    std::fs::create_dir_all(&service).expect("the service's directory");
    std::fs::copy(
        repo.join("deploy/termux/service/retire-worker/run"),
        service.join("run"),
    )
    .expect("the run script");
    let config = root
        .join(HOME.trim_start_matches('/'))
        .join(".config/retire-worker");
    std::fs::create_dir_all(&config).expect("the config directory");
    std::fs::write(
        config.join("env"),
        format!("RETIRE_JOIN={join}\nRETIRE_JOIN_TOKEN={token}\nRETIRE_DEVICE_ID=phone\nRETIRE_SLOTS=2\n"),
    )
    .expect("the env file");
}

/// A C string of a path, made before the fork (the child may not allocate).
fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

/// Turns a failed libc call in the child into its error (the child may not
/// allocate, so `_what` is for the reader: the calls are in order).
fn check(result: libc::c_int, _what: &str) -> std::io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A BPF statement.
fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A BPF conditional jump.
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Android's answer to a system call outside the app allowlist, for Landlock's
/// three calls (444–446 on x86_64): `SECCOMP_RET_TRAP`, a `SIGSYS` that kills a
/// process without a handler. Everything else is allowed; another architecture
/// is killed outright.
fn landlock_killing_filter() -> Vec<libc::sock_filter> {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_RET | BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_TRAP: u32 = 0x0003_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    vec![
        statement(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        statement(RET_K, RET_KILL_PROCESS),
        statement(LD_W_ABS, 0), // seccomp_data.nr
        jump(JEQ_K, 444, 3, 0), // landlock_create_ruleset
        jump(JEQ_K, 445, 2, 0), // landlock_add_rule
        jump(JEQ_K, 446, 1, 0), // landlock_restrict_self
        statement(RET_K, RET_ALLOW),
        statement(RET_K, RET_TRAP),
    ]
}

/// Starts `program` (a path in the phone) with `args` in the phone at `root`:
/// in a mount namespace of its own with `/proc` and `/dev` mounted in the
/// chroot, as the app's uid, under the seccomp filter, with `env` only,
/// logging to `log`.
fn start_phone_worker(
    root: &Path,
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Child {
    let root_c = c_path(root);
    let proc_c = c_path(&root.join("proc"));
    let dev_c = c_path(&root.join("dev"));
    let home_c = c_path(Path::new(HOME));
    let filter = landlock_killing_filter();
    let log = std::fs::File::create(log).expect("the worker's log");
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log"))
        .stderr(log);
    // SAFETY: the closure makes only system calls on values made before the
    // fork (no allocation, no lock).
    unsafe {
        command.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
            let none = std::ptr::null();
            check(
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
                "make / private",
            )?;
            check(
                libc::mount(
                    c"proc".as_ptr(),
                    proc_c.as_ptr(),
                    c"proc".as_ptr(),
                    0,
                    std::ptr::null(),
                ),
                "mount proc",
            )?;
            check(
                libc::mount(
                    c"/dev".as_ptr(),
                    dev_c.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
                "bind /dev",
            )?;
            check(libc::chroot(root_c.as_ptr()), "chroot")?;
            check(libc::chdir(home_c.as_ptr()), "chdir")?;
            check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
            check(libc::setgid(APP_UID), "setgid")?;
            check(libc::setuid(APP_UID), "setuid")?;
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                "no_new_privs",
            )?;
            let program = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr().cast_mut(),
            };
            check(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ),
                "seccomp",
            )
        });
    }
    command.spawn().expect("start the worker in the phone")
}

/// Prints the workers' logs when the test fails, so that a worker killed by
/// the filter or lost on the name shows why.
struct ShowLogsOnPanic(Vec<PathBuf>);

impl Drop for ShowLogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("--- {}:\n{log}", path.display());
            }
        }
    }
}

/// Kills a child the test started and reaps it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts dnsmasq on [`DNS_ADDRESS`], port 53, answering `MASTER_NAME` with 127.0.0.1 and
/// nothing else, waits until it serves, and returns it with a channel of the
/// lines it logs (one per query).
fn start_dns() -> (Reaped, mpsc::Receiver<String>) {
    let mut child = Command::new(program("dnsmasq", "dnsmasq-base"))
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg(format!("--listen-address={DNS_ADDRESS}"))
        .args(["--bind-interfaces", "--port=53"])
        .args([
            "--pid-file=",
            "--user=root",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--host-record={MASTER_NAME},127.0.0.1"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dnsmasq");
    let stderr = child.stderr.take().expect("dnsmasq's stderr");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("dnsmasq: {line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let dns = Reaped(child);
    loop {
        let line = received
            .recv_timeout(PATIENCE)
            .expect("dnsmasq says it started (or it failed: see its lines above)");
        if line.contains("started") {
            return (dns, received);
        }
    }
}

/// Waits until the log at `path` has a line containing `text`, and returns it.
fn wait_log_line(path: &Path, text: &str, worker: &mut Child) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains(text)) {
            return line.to_string();
        }
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker ended ({status}) before logging {text:?}:\n{log}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {text:?} in the worker's log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `body` on a thread of its own in a new network namespace with its
/// loopback up: every process it starts (dnsmasq, the master, the workers,
/// and the test's own connections) lives there, and the namespace goes when
/// they do.
fn in_network_namespace(body: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        // SAFETY: moves only this thread into a new network namespace.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            unshared,
            0,
            "a network namespace (needs root): {}",
            std::io::Error::last_os_error()
        );
        let status = Command::new(program("ip", "iproute2"))
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link set lo up");
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_static_worker_on_an_android_like_phone_joins_by_name_and_runs_tasks_with_a_degraded_sandbox() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (a chroot, mounts, a network namespace); CI runs as root"
    );
    let worker_binary = musl_worker();
    in_network_namespace(move || {
        let dir = setup();
        let root = dir.path().join("phone");
        lay_out_phone(&root, &worker_binary);
        let (_dns, queries) = start_dns();
        let master = MasterProcess::start(&dir.path().join("master"));
        let mut events = subscriber(master.addr);
        let tmp = format!("{PREFIX}/tmp");
        let path = format!("{PREFIX}/bin");
        let termux_env = [
            ("PREFIX", PREFIX),
            ("HOME", HOME),
            ("TMPDIR", tmp.as_str()),
            ("PATH", path.as_str()),
            ("ANDROID_ROOT", "/system"),
            ("ANDROID_DATA", "/data"),
            ("TERMUX_VERSION", "0.118.1"),
        ];
        // Not recognised as Android, without TMPDIR, and with an
        // XDG_STATE_HOME it cannot create: it must fall back to $PREFIX/tmp
        // and the home.
        let unknown_env = [
            ("PREFIX", PREFIX),
            ("HOME", HOME),
            ("PATH", path.as_str()),
            ("XDG_STATE_HOME", "/var/lib/state"),
        ];
        let phone_log = dir.path().join("phone.log");
        let unknown_log = dir.path().join("unknown.log");
        let _show = ShowLogsOnPanic(vec![phone_log.clone(), unknown_log.clone()]);
        let join = format!("{MASTER_NAME}:{}", master.addr.port());
        let token = tokens_for(master.addr).expect("the master's tokens").join;
        // The phone runs the shipped termux-services run script, which reads
        // its settings from ~/.config/retire-worker/env.
        install_service(&root, &join, &token);
        let run = format!("{PREFIX}/var/service/retire-worker/run");
        let mut phone = Reaped(start_phone_worker(
            &root,
            &run,
            &[],
            &termux_env,
            &phone_log,
        ));
        let args: Vec<String> = ["--join", &join, "--id", "unknown", "--token", &token]
            .map(str::to_string)
            .to_vec();
        let worker = format!("{PREFIX}/bin/retire-worker");
        let mut unknown = Reaped(start_phone_worker(
            &root,
            &worker,
            &args,
            &unknown_env,
            &unknown_log,
        ));
        let mut waiting = BTreeSet::from(["phone".to_string(), "unknown".to_string()]);
        while !waiting.is_empty() {
            if let Event::DeviceJoined { device_id } =
                events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }))
            {
                waiting.remove(&device_id);
            }
        }
        // Both asked the test's DNS server for the master's name.
        let asked = queries
            .try_iter()
            .filter(|line| line.contains(&format!("query[A] {MASTER_NAME}")))
            .count();
        assert!(
            asked >= 2,
            "each worker asks dnsmasq for {MASTER_NAME} (asked {asked} times)"
        );

        // The start-up lines: the probe child was killed, and the level is none.
        for (log, child, says) in [
            (&phone_log, &mut phone.0, "is never called on Android"),
            (
                &unknown_log,
                &mut unknown.0,
                "call policy (seccomp) forbids them",
            ),
        ] {
            let probe = wait_log_line(log, "Landlock's system calls:", child);
            assert!(probe.contains("killed by signal 31 (SIGSYS)"), "{probe}");
            let sandbox = wait_log_line(log, "sandbox: none", child);
            assert!(sandbox.contains(says), "{sandbox}");
        }

        let prefix_tmp = format!("{PREFIX}/tmp/retire-worker-{APP_UID}/");
        for device in ["phone", "unknown"] {
            let ids = [
                format!("{device}-shell"),
                format!("{device}-echo"),
                format!("{device}-info"),
            ];
            submit(
                master.addr,
                Some(device),
                vec![
                    (
                        ids[0].clone(),
                        "shell",
                        json!({ "command": "echo $0; pwd; test -e /bin/sh || test -e /tmp || \
                                            test -e /etc/resolv.conf || echo android-like" }),
                    ),
                    (ids[1].clone(), "echo", json!({ "message": "hello phone" })),
                    (ids[2].clone(), "system_info", json!({})),
                ],
            );
            let done = wait_finished(&mut events, &ids.iter().cloned().collect());
            let shell: &TaskView = &done[&ids[0]];
            assert_eq!(shell.state, TaskState::Completed, "{device}: {shell:?}");
            let (output, _) = printed(shell);
            let lines: Vec<&str> = output.lines().collect();
            assert_eq!(
                lines[0],
                format!("{PREFIX}/bin/sh"),
                "{device}: Termux's sh runs tasks"
            );
            assert!(
                lines[1].starts_with(&prefix_tmp),
                "{device}: the task directory is under $PREFIX/tmp: {output}"
            );
            assert_eq!(lines[2], "android-like", "{device}: {output}");
            let result = shell.result.as_ref().expect("a result");
            assert_eq!(result["sandbox"]["level"], "none", "{device}: {result}");
            let echo = &done[&ids[1]];
            assert_eq!(echo.state, TaskState::Completed, "{device}: {echo:?}");
            assert_eq!(
                echo.result.as_ref().expect("a result")["output"],
                "hello phone"
            );
            let info = &done[&ids[2]];
            assert_eq!(info.state, TaskState::Completed, "{device}: {info:?}");
            let profile = &info.result.as_ref().expect("a result")["output"]["profile"];
            assert_eq!(
                profile["architecture"],
                std::env::consts::ARCH,
                "{device}: {profile}"
            );
            let platform = if device == "phone" {
                "android"
            } else {
                "linux"
            };
            assert_eq!(profile["platform"], platform, "{device}: {profile}");
        }

        // Both keep their state in the home: the usual default for the first,
        // the fallback from an XDG_STATE_HOME it cannot create for the second.
        for device in ["phone", "unknown"] {
            let key = root
                .join(HOME.trim_start_matches('/'))
                .join(".local/state/retire-worker")
                .join(device)
                .join("identity.key");
            assert!(key.exists(), "{} is missing", key.display());
        }
        // Still alive: the seccomp filter never fired in the workers themselves.
        for worker in [&mut phone.0, &mut unknown.0] {
            assert!(matches!(worker.try_wait(), Ok(None)), "a worker ended");
        }
    });
}

/// The scripts of `deploy/termux/` parse with dash (Termux's `sh`, and
/// Debian's `/bin/sh`) and busybox, are executable, and start with Termux's
/// `sh` (Android has no `/bin/sh` to name). The run script also runs for real
/// in the test above.
#[test]
fn the_termux_scripts_parse_and_name_termuxs_shell() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let busybox = program("busybox", "busybox-static");
    for script in [
        "deploy/termux/service/retire-worker/run",
        "deploy/termux/service/retire-worker/log/run",
        "deploy/termux/boot/start-retire-worker",
    ] {
        let path = repo.join(script);
        let text = std::fs::read_to_string(&path).expect("the script");
        assert!(
            text.starts_with(&format!("#!{PREFIX}/bin/sh\n")),
            "{script} names Termux's sh"
        );
        let mode = std::fs::metadata(&path)
            .expect("the script")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is executable");
        for shell in [Command::new("/bin/sh"), {
            let mut command = Command::new(&busybox);
            command.arg("sh");
            command
        }] {
            let mut shell = shell;
            let output = shell.arg("-n").arg(&path).output().expect("run sh -n");
            assert!(output.status.success(), "{script}: {output:?}");
        }
    }
}
