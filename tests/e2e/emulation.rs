//! The builds for people's devices, run under emulation: each cross-built
//! binary is built the way `cargo xtask dist` builds it (the same toolchain
//! for the same target, from the `xtask` library; the debug profile, which
//! builds quicker than a release), then run under qemu's user-mode emulator
//! against real binaries of this machine.
//!
//! - An x86_64 master runs tasks on an aarch64 worker under
//!   `qemu-aarch64-static`, submitted by the aarch64 `retire`, emulated too.
//! - The same with the armv7 worker and CLI under `qemu-arm-static`, which
//!   load bookworm's armhf glibc (`-L /usr/arm-linux-gnueabihf`); the build
//!   itself was checked to need no glibc newer than bullseye's 2.31.
//! - An aarch64 master under `qemu-aarch64-static` serves an x86_64 worker
//!   and the x86_64 CLI.
//!
//! Each run executes a `shell`, an `echo` and a `system_info` task and checks
//! the architecture the worker reports, in its device profile and in
//! `system_info`. (A `shell` task's own programs run natively: qemu hands an
//! `exec` of an x86_64 `/bin/sh` to the kernel, so only the worker is
//! emulated, as on a real device only the worker is ours.)
//!
//! A missing emulator, target or toolchain fails the test with the command
//! that installs it (`scripts/install-test-deps`); nothing is skipped.

use crate::subscriber;
use protocol::Event;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tests::{retire_with, MasterProcess, Program, WorkerOptions, WorkerProcess};
use xtask::{Arch, Binary, Builder, Profile};

/// Builds `binaries` for `arch` with the debug profile, one build at a time
/// (two at once would only share the two cores and cargo's locks); cargo's
/// cache makes a second build of the same binaries a no-op.
fn cross_build(arch: Arch, binaries: &[Binary]) -> Vec<PathBuf> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    // target/debug/deps/e2e-HASH → target
    let exe = std::env::current_exe().expect("the test knows its own path");
    let target_dir = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from TARGET/debug/deps");
    Builder::new(workspace, target_dir, Profile::Debug)
        .quiet(true)
        .build(arch, binaries)
        .unwrap_or_else(|err| panic!("building {binaries:?} for {arch}: {err}"))
}

/// `binary` under the emulator for `arch`.
fn emulated(arch: Arch, binary: &Path) -> Program {
    let command = arch
        .qemu()
        .command(binary)
        .unwrap_or_else(|err| panic!("emulating {arch}: {err}"));
    Program::from_command(&command)
}

/// Starts `worker` joining `master` as `id` and waits until it has
/// registered.
fn join(master: SocketAddr, id: &str, worker: Program) -> WorkerProcess {
    let mut events = subscriber(master);
    let options = WorkerOptions {
        program: Some(worker),
        ..WorkerOptions::default()
    };
    let process = WorkerProcess::start_with(master, id, 1, &[], options);
    events
        .wait_event(|event| matches!(event, Event::DeviceJoined { device_id } if device_id == id));
    process
}

/// Runs `retire --json ARGS` with `cli` and returns the JSON it printed,
/// failing on any other exit than 0.
fn retire_json(cli: &Program, master: SocketAddr, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = retire_with(cli, master, &all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "retire {args:?} ended with {:?}: {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("JSON from retire {args:?}: {err}: {stdout}"))
}

/// Submits one task with `cli` and waits for it; checks that `device` ran
/// it to completion and returns its output.
fn run_task(cli: &Program, master: SocketAddr, device: &str, args: &[&str]) -> Value {
    let mut all = vec!["submit", "--wait", "--wait-timeout", "120"];
    all.extend_from_slice(args);
    let reply = retire_json(cli, master, &all);
    let task = &reply["task"];
    assert_eq!(task["state"], "completed", "{args:?}: {task}");
    assert_eq!(task["device_id"], device, "{args:?}: {task}");
    task["result"]["output"].clone()
}

/// The `shell`, `echo` and `system_info` tasks every emulated run executes,
/// through `cli`, on the one worker `device` of `master`, which must report
/// the architecture `arch`.
fn run_the_three_tasks(master: SocketAddr, cli: &Program, device: &str, arch: &str) {
    let shell = run_task(
        cli,
        master,
        device,
        &[
            "--type",
            "shell",
            "--payload",
            r#"{"command": "echo 6x7=$((6*7))"}"#,
        ],
    );
    assert_eq!(shell, "6x7=42\n");
    let argv = run_task(
        cli,
        master,
        device,
        &["--", "printf", "%s-%s", arch, device],
    );
    assert_eq!(argv, format!("{arch}-{device}"));

    let message = format!("hello from {arch}");
    let payload = serde_json::json!({ "message": message }).to_string();
    let echo = run_task(
        cli,
        master,
        device,
        &["--type", "echo", "--payload", &payload],
    );
    assert_eq!(echo, message.as_str());

    let info = run_task(cli, master, device, &["--type", "system_info"]);
    assert_eq!(info["profile"]["architecture"], arch, "system_info: {info}");
    assert!(
        info["profile"]["cpu_cores"]
            .as_u64()
            .is_some_and(|cores| cores > 0),
        "system_info: {info}"
    );

    let shown = retire_json(cli, master, &["device", device]);
    assert_eq!(
        shown["device"]["architecture"], arch,
        "device profile: {shown}"
    );
}

/// An x86_64 master, and `arch`'s worker (joining as `device`) and CLI
/// under qemu.
fn worker_and_cli_under_qemu(arch: Arch, device: &str) {
    let built = cross_build(arch, &[Binary::Worker, Binary::Cli]);
    let dir = crate::setup();
    let master = MasterProcess::start(dir.path());
    let _worker = join(master.addr, device, emulated(arch, &built[0]));
    run_the_three_tasks(
        master.addr,
        &emulated(arch, &built[1]),
        device,
        arch.reported(),
    );
}

#[test]
fn an_x86_64_master_runs_tasks_on_an_aarch64_worker_under_qemu() {
    worker_and_cli_under_qemu(Arch::Aarch64, "pi-64");
}

#[test]
fn an_x86_64_master_runs_tasks_on_an_armv7_worker_under_qemu() {
    worker_and_cli_under_qemu(Arch::Armv7, "pi-32");
}

#[test]
fn an_aarch64_master_under_qemu_serves_an_x86_64_worker_and_the_cli() {
    let built = cross_build(Arch::Aarch64, &[Binary::Master]);
    let dir = crate::setup();
    let master = MasterProcess::start_program(
        &emulated(Arch::Aarch64, &built[0]),
        dir.path(),
        "127.0.0.1:0",
        &[],
    );
    let _worker = join(master.addr, "laptop", Program::native("retire-worker"));
    run_the_three_tasks(
        master.addr,
        &Program::native("retire"),
        "laptop",
        std::env::consts::ARCH,
    );
}
