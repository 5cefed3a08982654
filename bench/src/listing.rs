//! Scenario 6: what one read costs the master's sans-IO core as the task
//! history grows (issue 11, item 2: any reader could make the master sort
//! its whole history with every `tasks` line). No sockets and no disk: the
//! core starts from N stored task records, as after a restart, and a
//! reader's requests go through `handle_message` / `handle_text`, then
//! `drain_outputs`, and each reply is encoded to the bytes the event loop
//! would write.
//!
//! The device reads (`list_devices`, `text_devices`, `device_status`) run
//! on a core with N devices connected and registered with a profile the
//! size of our worker's, as `--devices` says.
//!
//! Each read is its own never-inlined function (`list_all`, `list_queued`,
//! `text_tasks`, `status`, and the three above), so that `valgrind --tool=callgrind` can count
//! the instructions of one read, setup excluded, with
//! `--toggle-collect=bench::listing::list_all` (docs/benchmarks.md).

use crate::report::{round, thousands, Report};
use anyhow::{bail, Result};
use master::core::records::TaskRecord;
use master::core::{AuthPolicy, ConnId, Core, CoreConfig, Now, Output, Payload};
use protocol::auth::Nonce;
use protocol::{Envelope, ListDevices, ListTasks, Message, Register, TaskSpec, TaskState};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The issue's wish, as a target: a listing costs the page, not the
/// history, so its cost at the largest size is at most this many times
/// its cost at the smallest.
pub const TARGET_GROWTH: f64 = 2.0;

/// How the listing scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Stored task counts to measure, smallest first.
    pub sizes: Vec<usize>,
    /// Timed requests of each kind per size.
    pub requests: usize,
    /// Connected device counts to measure the device reads with, smallest
    /// first (none: skip them).
    pub device_sizes: Vec<usize>,
}

/// The reader's connection.
const CONN: ConnId = 1;

/// The stored history: mostly finished tasks with a small result, one in
/// twenty still queued, one in fifty failed, as a busy cluster's database
/// looks after a while.
fn history(size: usize, now: Now) -> Vec<TaskRecord> {
    (0..size)
        .map(|i| {
            let seq = i as u64 + 1;
            let task_id = format!("task-{:x}-{seq}", now.unix_ms);
            let spec = TaskSpec {
                task_id: Some(task_id.clone()),
                ..TaskSpec::new("echo", json!({ "message": i }))
            };
            let mut record = TaskRecord::queued(task_id, seq, spec, now.unix_ms - 1000);
            match i % 100 {
                0..=4 => {}
                5 | 6 => {
                    record.state = TaskState::Failed;
                    record.error = Some("exit status 1".into());
                    record.exit_code = Some(1);
                }
                _ => {
                    record.state = TaskState::Completed;
                    record.result = Some(json!({ "output": format!("{i}\n"), "exit_code": 0 }));
                    record.exit_code = Some(0);
                }
            }
            if record.state != TaskState::Queued {
                record.attempt = 1;
                record.device_id = Some(format!("w{}", i % 16));
                record.started_unix_ms = Some(now.unix_ms - 900);
                record.finished_unix_ms = Some(now.unix_ms - 800);
            }
            record
        })
        .collect()
}

/// The bytes a request's replies are, as the event loop writes them.
fn written(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    core.drain_outputs(now, outputs);
    let mut bytes = 0;
    for output in outputs.drain(..) {
        if let Output::Send { payload, .. } = output {
            bytes += match payload {
                Payload::Json(envelope) => black_box(envelope.to_line()).len(),
                Payload::Text(text) => black_box(text).len(),
                Payload::Event(shared) => black_box(shared.to_line()).len(),
                Payload::HeartbeatAck(_) => 0,
            };
        }
    }
    bytes
}

fn request(core: &mut Core, now: Now, outputs: &mut Vec<Output>, message: Message) -> usize {
    core.handle_message(now, CONN, Envelope::new(message).with_id("r"));
    written(core, now, outputs)
}

/// `list_tasks` with no filter and the default limit.
#[inline(never)]
fn list_all(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    request(core, now, outputs, Message::ListTasks(ListTasks::default()))
}

/// `list_tasks` of the queued tasks only (a state most of the history is
/// not in).
#[inline(never)]
fn list_queued(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    let list = ListTasks {
        state: Some(protocol::TaskState::Queued),
        ..ListTasks::default()
    };
    request(core, now, outputs, Message::ListTasks(list))
}

/// The text command `tasks`, the line of the issue's flood.
#[inline(never)]
fn text_tasks(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    core.handle_text(now, CONN, "tasks");
    written(core, now, outputs)
}

/// `status`: cluster totals, task counts per state included.
#[inline(never)]
fn status(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    request(core, now, outputs, Message::Status)
}

/// `list_devices` with no filter and the default limit.
#[inline(never)]
fn list_devices(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    request(
        core,
        now,
        outputs,
        Message::ListDevices(ListDevices::default()),
    )
}

/// The text command `devices`.
#[inline(never)]
fn text_devices(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    core.handle_text(now, CONN, "devices");
    written(core, now, outputs)
}

/// `status` with N connected devices (its own function, so callgrind
/// counts it apart from `status` over the task history).
#[inline(never)]
fn device_status(core: &mut Core, now: Now, outputs: &mut Vec<Output>) -> usize {
    request(core, now, outputs, Message::Status)
}

/// The device reads, each measured with N connected devices.
const DEVICE_READS: [Read; 3] = [
    ("list_devices", list_devices),
    ("text devices", text_devices),
    ("status", device_status),
];

/// A registration the size of our worker's on a small server (about
/// 1.4 KiB as stored): OS, CPU, a few file systems and interfaces.
fn worker_register(i: usize) -> Register {
    let mut register = Register {
        hostname: Some(format!("host-{i}")),
        platform: Some(if i % 4 == 0 { "android" } else { "linux" }.into()),
        architecture: Some("aarch64".into()),
        os_version: Some("Debian GNU/Linux 12 (bookworm)".into()),
        kernel_version: Some("6.1.0-18-arm64".into()),
        cpu_model: Some("Cortex-A76".into()),
        role: Some(if i % 3 == 0 { "compute" } else { "worker" }.into()),
        cpu_cores: Some(4),
        memory_total_bytes: Some(8 << 30),
        disk_total_bytes: Some(64 << 30),
        network_interfaces: vec!["eth0".into(), "lo".into(), "wlan0".into(), "docker0".into()],
        tags: vec!["linux".into(), "worker".into()],
        task_types: Some(vec!["echo".into(), "shell".into(), "python_eval".into()]),
        slots: Some(2),
        leases: true,
        ..Register::default()
    };
    let disks: Vec<_> = ["/", "/boot/firmware", "/home", "/var/lib/docker"]
        .iter()
        .map(|mount| {
            json!({"mount_point": mount, "file_system": "ext4",
                   "total_bytes": 32u64 << 30, "available_bytes": 12u64 << 30})
        })
        .collect();
    register.extra.insert("disks".into(), json!(disks));
    register
        .extra
        .insert("worker_version".into(), json!("0.1.0"));
    register
}

/// One size's figures for the device reads.
struct DeviceSize {
    devices: usize,
    reads: Vec<(f64, usize)>,
}

fn measure_devices(size: usize, requests: usize) -> Result<DeviceSize> {
    let now = Now {
        monotonic: Duration::from_secs(1),
        unix_ms: 1_800_000_000_000,
    };
    let config = CoreConfig {
        auth: AuthPolicy::off(),
        ..CoreConfig::default()
    };
    let mut core = Core::new(config, Vec::new(), Vec::new(), now);
    let mut outputs = Vec::new();
    // Every device connected and registered, as on a busy master.
    for i in 0..size {
        let conn = CONN + 1 + i as ConnId;
        core.handle_connect(now, conn, Some([192, 0, 2, 1].into()), Nonce([0; 32]));
        let envelope = Envelope::new(Message::Register(worker_register(i)))
            .from_sender(format!("dev-{i:05}"))
            .with_id("reg");
        core.handle_message(now, conn, envelope);
        core.drain_outputs(now, &mut outputs);
        outputs.clear();
        drop(core.take_batch());
    }
    core.handle_connect(
        now,
        CONN,
        Some(std::net::Ipv4Addr::LOCALHOST.into()),
        Nonce([0; 32]),
    );
    written(&mut core, now, &mut outputs);
    let reads = time_reads(
        &mut core,
        now,
        &DEVICE_READS,
        requests,
        &format!("{size} devices"),
    )?;
    Ok(DeviceSize {
        devices: size,
        reads,
    })
}

/// Per read kind, microseconds per request (over `requests` of them, after
/// one untimed) and the bytes of its reply.
fn time_reads(
    core: &mut Core,
    now: Now,
    kinds: &[Read],
    requests: usize,
    what: &str,
) -> Result<Vec<(f64, usize)>> {
    let mut outputs = Vec::new();
    let mut reads = Vec::new();
    for (name, read) in kinds {
        let bytes = read(core, now, &mut outputs);
        if bytes == 0 {
            bail!("{name} with {what} got no reply");
        }
        let started = Instant::now();
        for _ in 0..requests {
            read(core, now, &mut outputs);
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / requests.max(1) as f64;
        reads.push((us, bytes));
    }
    Ok(reads)
}

/// One read kind: its name and the function that makes one request.
type Read = (&'static str, fn(&mut Core, Now, &mut Vec<Output>) -> usize);

const READS: [Read; 4] = [
    ("list_tasks", list_all),
    ("list_tasks queued", list_queued),
    ("text tasks", text_tasks),
    ("status", status),
];

/// One size's figures: per read kind, microseconds per request and bytes
/// of its reply.
struct Size {
    tasks: usize,
    setup: Duration,
    reads: Vec<(f64, usize)>,
}

fn measure(size: usize, requests: usize) -> Result<Size> {
    let now = Now {
        monotonic: Duration::from_secs(1),
        unix_ms: 1_800_000_000_000,
    };
    let started = Instant::now();
    // A reader's cost is what this measures, not authentication: the
    // connection is trusted, as on a master with authentication off.
    let config = CoreConfig {
        auth: AuthPolicy::off(),
        ..CoreConfig::default()
    };
    let mut core = Core::new(config, Vec::new(), history(size, now), now);
    drop(core.take_batch());
    core.handle_connect(
        now,
        CONN,
        Some(std::net::Ipv4Addr::LOCALHOST.into()),
        Nonce([0; 32]),
    );
    let mut outputs = Vec::new();
    written(&mut core, now, &mut outputs);
    let setup = started.elapsed();
    let reads = time_reads(&mut core, now, &READS, requests, &format!("{size} tasks"))?;
    Ok(Size {
        tasks: size,
        setup,
        reads,
    })
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    if params.sizes.is_empty() {
        bail!("--tasks needs at least one size");
    }
    let mut sizes = Vec::new();
    for &size in &params.sizes {
        sizes.push(measure(size, params.requests)?);
    }
    let mut report = Report::new("listing");
    let mut json_sizes = Vec::new();
    for size in &sizes {
        let mut json_reads = serde_json::Map::new();
        for ((name, _), (us, bytes)) in READS.iter().zip(&size.reads) {
            report.info(
                format!("{name}, {} tasks", thousands(size.tasks as f64)),
                format!("{} us per request ({bytes} bytes)", round(*us, 1)),
            );
            json_reads.insert(
                (*name).to_string(),
                json!({ "us_per_request": round(*us, 2), "reply_bytes": bytes }),
            );
        }
        json_sizes.push(json!({
            "tasks": size.tasks,
            "setup_s": round(size.setup.as_secs_f64(), 2),
            "reads": json_reads,
        }));
    }
    let (first, last) = (&sizes[0], &sizes[sizes.len() - 1]);
    let growth = last.reads[0].0 / first.reads[0].0.max(f64::MIN_POSITIVE);
    report.note(format!(
        "{} requests of each kind per size; the core starts from the stored tasks (setup {})",
        params.requests,
        sizes
            .iter()
            .map(|s| format!("{} s", round(s.setup.as_secs_f64(), 1)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.target(
        format!(
            "list_tasks cost, {} -> {} tasks",
            thousands(first.tasks as f64),
            thousands(last.tasks as f64)
        ),
        format!("{}x", round(growth, 2)),
        format!("<= {TARGET_GROWTH}x"),
        growth <= TARGET_GROWTH,
    );
    let mut json_devices = Vec::new();
    for &size in &params.device_sizes {
        let measured = measure_devices(size, params.requests)?;
        let mut json_reads = serde_json::Map::new();
        for ((name, _), (us, bytes)) in DEVICE_READS.iter().zip(&measured.reads) {
            report.info(
                format!("{name}, {} devices", thousands(measured.devices as f64)),
                format!("{} us per request ({bytes} bytes)", round(*us, 1)),
            );
            json_reads.insert(
                (*name).to_string(),
                json!({ "us_per_request": round(*us, 2), "reply_bytes": bytes }),
            );
        }
        json_devices.push(json!({ "devices": measured.devices, "reads": json_reads }));
    }
    report.set("device_sizes", json!(json_devices));
    report.set("requests", params.requests);
    report.set("sizes", json!(json_sizes));
    report.set("list_tasks_growth", round(growth, 3));
    report.set("target_growth", TARGET_GROWTH);
    Ok(report)
}
