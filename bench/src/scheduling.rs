//! Scenario 5: the cost of one assignment in the master's sans-IO core,
//! with a deep queue and 10 → 10,000 workers of mixed kinds and tasks of
//! mixed requirements. No sockets and no disk: the core is driven exactly
//! as the event loop drives it (`handle_message`, then `drain_outputs` and
//! `take_batch` after every step), and its batches are dropped.

use crate::report::{round, thousands, Report};
use anyhow::{bail, Result};
use master::core::{AuthPolicy, ConnId, Core, CoreConfig, Now, Output, Payload};
use protocol::auth::Nonce;
use protocol::{
    Envelope, Message, Register, Requirements, ResultStatus, TaskResult, TaskSpec, TaskSubmit,
};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The target: cost per assignment at the largest size at most
/// this many times the cost at the smallest.
pub const TARGET_GROWTH: f64 = 2.0;

/// How the scheduling scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Worker counts to measure, smallest first.
    pub sizes: Vec<usize>,
    /// Tasks left in the queue once every slot is busy.
    pub queued: usize,
    /// Timed assignments per size.
    pub assignments: usize,
    /// The master's placement strategy (`docs/placement.md`).
    pub strategy: protocol::PlacementStrategy,
}

/// The simulated clock: advances a microsecond per step.
struct Clock {
    micros: u64,
}

impl Clock {
    fn tick(&mut self) -> Now {
        self.micros += 1;
        Now {
            monotonic: Duration::from_micros(self.micros),
            unix_ms: 1_800_000_000_000 + (self.micros / 1000) as i64,
        }
    }
}

/// The core plus what the bench needs to play its workers.
struct Bench {
    core: Core,
    clock: Clock,
    outputs: Vec<Output>,
    /// Assignments handed out and not yet reported: (conn, device, task, attempt).
    running: VecDeque<(ConnId, String, String, u32)>,
    devices: Vec<String>,
    assigned: u64,
}

impl Bench {
    /// Hands the core's outputs and batch out, as the event loop does, and
    /// notes the assignments.
    fn settle(&mut self) {
        let now = self.clock.tick();
        self.core.drain_outputs(now, &mut self.outputs);
        for output in self.outputs.drain(..) {
            if let Output::Send {
                conn,
                payload: Payload::Json(envelope),
                ..
            } = output
            {
                if let Message::TaskAssign(assign) = envelope.message {
                    let task_id = assign.task.task_id.unwrap_or_default();
                    // Workers are on connections 1..=n, device i on conn i + 1.
                    let device = self.devices[conn - 1].clone();
                    self.running
                        .push_back((conn, device, task_id, assign.attempt));
                    self.assigned += 1;
                }
            }
        }
        drop(self.core.take_batch());
    }

    fn message(&mut self, conn: ConnId, envelope: Envelope) {
        let now = self.clock.tick();
        self.core.handle_message(now, conn, envelope);
        self.settle();
    }
}

/// A worker's profile, varied by its index so that every size has every
/// kind (the pattern repeats every 10 workers).
fn worker_profile(index: usize) -> Register {
    let class = index % 10;
    let (platform, arch) = match class {
        7 | 8 => ("android", "aarch64"),
        9 => ("macos", "aarch64"),
        c if c % 2 == 0 => ("linux", "x86_64"),
        _ => ("linux", "aarch64"),
    };
    let mut types = vec!["echo", "sleep", "system_info"];
    if class != 4 {
        types.push("shell");
    }
    let tags: Vec<String> = match class {
        5 => vec!["gpu".into()],
        6 => vec!["garage".into(), "pi".into()],
        _ => Vec::new(),
    };
    Register {
        hostname: Some(format!("w{index}")),
        platform: Some(platform.into()),
        architecture: Some(arch.into()),
        role: Some(if class == 3 { "compute" } else { "worker" }.into()),
        cpu_cores: Some([1, 2, 4, 8][index % 4]),
        memory_total_bytes: Some([1u64, 2, 4, 8, 16][index % 5] << 30),
        disk_total_bytes: Some(64 << 30),
        tags,
        task_types: Some(types.into_iter().map(String::from).collect()),
        slots: Some(1 + (index % 4) as u32),
        ..Register::default()
    }
}

/// A task, its requirements varied by its index (8 kinds, each placeable
/// on some worker at every size).
fn task_spec(index: usize) -> TaskSpec {
    let task_type = if index % 5 == 0 { "shell" } else { "echo" };
    let mut spec = TaskSpec::new(task_type, json!({ "message": index }));
    spec.requirements = match index % 8 {
        3 => Requirements {
            platform: Some("linux".into()),
            ..Requirements::default()
        },
        4 => Requirements {
            architecture: Some("arm64".into()),
            ..Requirements::default()
        },
        5 => Requirements {
            min_cpu_cores: Some(4),
            ..Requirements::default()
        },
        6 => Requirements {
            tags: vec!["gpu".into()],
            ..Requirements::default()
        },
        7 => Requirements {
            role: Some("compute".into()),
            min_memory_gb: Some(2.0),
            ..Requirements::default()
        },
        _ => Requirements::default(),
    };
    spec
}

/// One size's figures.
struct Size {
    workers: usize,
    slots: u64,
    submit_ns: f64,
    submitted: usize,
    ns: f64,
    assignments: u64,
    first_tenth_ns: f64,
    last_tenth_ns: f64,
}

fn measure(workers: usize, params: &Params) -> Result<Size> {
    let mut clock = Clock { micros: 0 };
    let now = clock.tick();
    let mut bench = Bench {
        // The cost of authenticating is not what this measures: every
        // connection is trusted, as on a master with authentication off.
        core: Core::new(
            CoreConfig {
                auth: AuthPolicy::off(),
                strategy: params.strategy,
                ..CoreConfig::default()
            },
            Vec::new(),
            Vec::new(),
            now,
        ),
        clock,
        outputs: Vec::new(),
        running: VecDeque::new(),
        devices: Vec::new(),
        assigned: 0,
    };
    let mut slots = 0u64;
    for index in 0..workers {
        let conn = index + 1;
        let id = format!("w{index:05}");
        let profile = worker_profile(index);
        slots += u64::from(profile.slots.unwrap_or(1));
        let now = bench.clock.tick();
        bench.core.handle_connect(
            now,
            conn,
            Some(std::net::Ipv4Addr::LOCALHOST.into()),
            Nonce([0; 32]),
        );
        bench.devices.push(id.clone());
        bench.message(
            conn,
            Envelope::new(Message::Register(profile)).from_sender(id),
        );
    }
    let client = workers + 1;
    let now = bench.clock.tick();
    bench.core.handle_connect(now, client, None, Nonce([0; 32]));

    // Fill every slot, and leave `queued` tasks waiting behind them.
    let total = params.queued + slots as usize;
    let started = Instant::now();
    let mut next = 0;
    while next < total {
        let n = (total - next).min(protocol::message::MAX_BATCH);
        let tasks = (next..next + n).map(task_spec).collect();
        let submit = Message::TaskSubmit(TaskSubmit { tasks, batch: true });
        bench.message(client, Envelope::new(submit).with_id(format!("s{next}")));
        next += n;
    }
    let fill = started.elapsed();
    let fill_assignments = bench.assigned;
    if bench.core.queued() + fill_assignments as usize != total {
        bail!("the core lost tasks while filling");
    }

    // Timed: the oldest assignment reports its result, which frees a slot
    // that the core fills again from the queue.
    // The cost is also taken per tenth of the run: it drifts when tasks
    // that only busy workers can take pile up at the head of the queue.
    let before = bench.assigned;
    let tenth = (params.assignments as u64 / 10).max(1);
    let mut tenths = Vec::new();
    let mut mark = (Instant::now(), before);
    let started = mark.0;
    while bench.assigned - before < params.assignments as u64 {
        if bench.assigned - mark.1 >= tenth {
            let now = Instant::now();
            let done = bench.assigned - mark.1;
            tenths.push(now.duration_since(mark.0).as_nanos() as f64 / done as f64);
            mark = (now, bench.assigned);
        }
        let Some((conn, device, task_id, attempt)) = bench.running.pop_front() else {
            bail!("no task running with {workers} workers");
        };
        let result = TaskResult {
            task_id,
            attempt: Some(attempt),
            status: ResultStatus::Completed,
            execution_time: Some(0.001),
            result: json!({ "output": "ok", "exit_code": 0 }),
            error: None,
        };
        bench.message(
            conn,
            Envelope::new(Message::TaskResult(result)).from_sender(device),
        );
    }
    let elapsed = started.elapsed();
    let assignments = bench.assigned - before;
    Ok(Size {
        workers,
        slots,
        submit_ns: fill.as_nanos() as f64 / total.max(1) as f64,
        submitted: total,
        ns: elapsed.as_nanos() as f64 / assignments.max(1) as f64,
        assignments,
        first_tenth_ns: tenths.first().copied().unwrap_or(0.0),
        last_tenth_ns: tenths.last().copied().unwrap_or(0.0),
    })
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    if params.sizes.is_empty() {
        bail!("no worker counts to measure");
    }
    let mut sizes = Vec::new();
    for &workers in &params.sizes {
        sizes.push(measure(workers, params)?);
    }
    let first = sizes.first().map_or(1.0, |s| s.ns);
    let last = sizes.last().map_or(1.0, |s| s.ns);
    let growth = last / first;

    let mut report = Report::new("scheduling");
    report.note(format!(
        "master::core in process; {} tasks queued behind full slots; {} timed assignments per size; placement {}",
        thousands(params.queued as f64),
        thousands(params.assignments as f64),
        params.strategy
    ));
    for size in &sizes {
        report.info(
            format!(
                "{} workers ({} slots)",
                thousands(size.workers as f64),
                thousands(size.slots as f64)
            ),
            format!(
                "{} ns per result + assignment (first / last tenth {} / {}; submit and first fill {} per task)",
                thousands(size.ns),
                thousands(size.first_tenth_ns),
                thousands(size.last_tenth_ns),
                thousands(size.submit_ns)
            ),
        );
    }
    let smallest = sizes.first().map_or(0, |s| s.workers);
    let largest = sizes.last().map_or(0, |s| s.workers);
    report.target(
        format!("growth {smallest} -> {largest} workers"),
        format!("{growth:.1}x"),
        format!("<= {TARGET_GROWTH}x"),
        growth <= TARGET_GROWTH,
    );
    report.set("queued", params.queued);
    report.set("assignments", params.assignments);
    report.set(
        "sizes",
        sizes
            .iter()
            .map(|s| {
                json!({
                    "workers": s.workers,
                    "slots": s.slots,
                    "ns_per_assignment": round(s.ns, 1),
                    "assignments": s.assignments,
                    "first_tenth_ns_per_assignment": round(s.first_tenth_ns, 1),
                    "last_tenth_ns_per_assignment": round(s.last_tenth_ns, 1),
                    "submit_ns_per_task": round(s.submit_ns, 1),
                    "submitted": s.submitted,
                })
            })
            .collect::<Vec<Value>>(),
    );
    report.set("growth", round(growth, 2));
    report.set("target_growth", TARGET_GROWTH);
    Ok(report)
}
