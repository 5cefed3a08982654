//! Scenario 1: many `echo` tasks submitted in batches, run end to end on
//! real workers, counted when their `task_finished` event arrives (that
//! event is only sent once the result is committed to the database).

use crate::client::{Conn, PATIENCE};
use crate::procs::{own_cpu_secs, Master, ProcSample, Worker};
use crate::report::{mib, round, thousands, threads, threads_json, Report};
use anyhow::{bail, Context, Result};
use protocol::{Envelope, Message, TaskSpec, TaskSubmit};
use serde_json::json;
use std::sync::mpsc;
use std::time::Instant;

/// How often the run checks that its workers are still there while it waits.
const LOOK_AROUND: std::time::Duration = std::time::Duration::from_secs(1);

/// The target, durable tasks per second end to end.
pub const TARGET_TASKS_PER_SEC: f64 = 40_000.0;

/// How the throughput scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Tasks in all.
    pub tasks: usize,
    /// Tasks per `task_submit` batch (at most 10,000).
    pub batch: usize,
    /// Batches sent before their acks arrive.
    pub window: usize,
    /// Worker processes.
    pub workers: usize,
    /// Slots per worker.
    pub slots: usize,
}

enum Note {
    Ack {
        id: String,
        at: Instant,
    },
    Refused(String),
    AllFinished {
        at: Instant,
        completed: usize,
        assigned: usize,
    },
    Failed(String),
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    if params.batch == 0 || params.batch > protocol::message::MAX_BATCH {
        bail!(
            "--batch must be 1 to {} tasks",
            protocol::message::MAX_BATCH
        );
    }
    let dir = tempfile::tempdir().context("a temp dir")?;
    let mut master = Master::start(dir.path(), &[])?;
    let mut conn = Conn::connect(master.addr)?;
    conn.subscribe()?;
    let mut workers = (0..params.workers)
        .map(|i| {
            Worker::start(
                dir.path(),
                master.addr,
                &format!("bench-w{i}"),
                params.slots,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    conn.wait_joined(params.workers)?;

    // Encode every request before the clock starts: the bench measures the
    // cluster, not its own JSON encoder.
    let mut lines = Vec::new();
    let mut left = params.tasks;
    while left > 0 {
        let n = left.min(params.batch);
        let first = params.tasks - left;
        let tasks = (first..first + n)
            .map(|i| TaskSpec::new("echo", json!({ "message": i })))
            .collect();
        let submit = Message::TaskSubmit(TaskSubmit { tasks, batch: true });
        let id = format!("batch-{}", lines.len());
        lines.push(Envelope::new(submit).with_id(id).to_line());
        left -= n;
    }
    let batches = lines.len();

    let mut writer = conn.writer()?;
    let (tx, rx) = mpsc::channel();
    let expected = params.tasks;
    std::thread::spawn(move || {
        let mut finished = 0;
        let mut completed = 0;
        let mut assigned = 0;
        loop {
            let line = match conn.next_line() {
                Ok(line) => line,
                Err(err) => {
                    let _ = tx.send(Note::Failed(format!("{err:#}")));
                    return;
                }
            };
            let Ok(text) = std::str::from_utf8(line) else {
                continue;
            };
            if text.contains("\"event\":\"task_finished\"") {
                finished += 1;
                if text.contains("\"state\":\"completed\"") {
                    completed += 1;
                }
                if finished == expected {
                    let _ = tx.send(Note::AllFinished {
                        at: Instant::now(),
                        completed,
                        assigned,
                    });
                    return;
                }
            } else if text.contains("\"event\":\"task_assigned\"") {
                assigned += 1;
            } else if text.contains("\"message_type\":\"ack\"") {
                let at = Instant::now();
                let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                let id = value["data"]["original_message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(Note::Ack { id, at });
            } else if text.contains("\"message_type\":\"error\"") {
                let _ = tx.send(Note::Refused(text.to_string()));
                return;
            }
        }
    });

    let pids: Vec<u32> = workers.iter().map(|worker| worker.pid()).collect();
    let master_before = ProcSample::of(master.pid())?;
    let workers_before = pids
        .iter()
        .map(|&pid| ProcSample::of(pid))
        .collect::<Result<Vec<_>>>()?;
    let bench_before = own_cpu_secs();
    let started = Instant::now();

    let mut sent = 0;
    let mut acked = 0;
    let mut all_acked = None;
    let mut finished = None;
    let mut heard_at = Instant::now();
    while finished.is_none() {
        while sent < batches && sent - acked < params.window.max(1) {
            std::io::Write::write_all(&mut writer, &lines[sent]).context("submit a batch")?;
            sent += 1;
        }
        let note = rx.recv_timeout(LOOK_AROUND);
        if note.is_ok() {
            heard_at = Instant::now();
        }
        match note {
            Ok(Note::Ack { id, at }) if id.starts_with("batch-") => {
                acked += 1;
                if acked == batches {
                    all_acked = Some(at);
                }
            }
            Ok(Note::Ack { .. }) => {}
            Ok(Note::AllFinished {
                at,
                completed,
                assigned,
            }) => finished = Some((at, completed, assigned)),
            Ok(Note::Refused(line)) => bail!("the master refused a request: {line}"),
            Ok(Note::Failed(err)) => bail!("{err}; the master's log says:\n{}", master.log_tail()),
            Err(_) => {
                // A worker that exited (a crash, or a state dir another worker holds)
                // would otherwise only show as a long wait.
                if let Some(gone) = workers.iter_mut().position(|worker| !worker.running()) {
                    bail!(
                        "a worker exited during the run; its log says:\n{}",
                        workers[gone].log_tail()
                    );
                }
                if heard_at.elapsed() > PATIENCE {
                    bail!(
                        "no progress for {PATIENCE:?} ({acked} of {batches} batches acknowledged)"
                    )
                }
            }
        }
    }
    let Some((done, completed, assigned)) = finished else {
        bail!("the run ended without its results");
    };
    let master_after = ProcSample::of(master.pid())?;
    let workers_after = pids
        .iter()
        .map(|&pid| ProcSample::of(pid))
        .collect::<Result<Vec<_>>>()?;
    let bench_cpu = own_cpu_secs() - bench_before;
    if !master.running() {
        bail!("the master died: {}", master.log_tail());
    }

    let elapsed = done.duration_since(started).as_secs_f64();
    let acked_secs = all_acked.map(|at| at.duration_since(started).as_secs_f64());
    let rate = params.tasks as f64 / elapsed;
    let master_cpu = master_after.cpu_secs - master_before.cpu_secs;
    let worker_cpu: f64 = workers_after
        .iter()
        .zip(&workers_before)
        .map(|(after, before)| after.cpu_secs - before.cpu_secs)
        .sum();

    let mut report = Report::new("throughput");
    report.note(format!(
        "{} echo tasks, batches of {}, window {}, {} workers x {} slots",
        params.tasks, params.batch, params.window, params.workers, params.slots
    ));
    report.info(
        "all batches acknowledged",
        acked_secs.map_or("-".into(), |s| format!("{s:.3} s")),
    );
    report.info("all results recorded", format!("{elapsed:.3} s"));
    report.target(
        "durable tasks/s end to end",
        thousands(rate),
        format!(">= {}", thousands(TARGET_TASKS_PER_SEC)),
        rate >= TARGET_TASKS_PER_SEC,
    );
    report.info(
        "tasks completed",
        format!("{completed} of {}", params.tasks),
    );
    report.info(
        "assignments (task_assigned events)",
        format!(
            "{assigned} (re-assignments after refusals: {})",
            assigned.saturating_sub(params.tasks)
        ),
    );
    report.info("master CPU", format!("{master_cpu:.2} s"));
    report.info(
        "master CPU per task",
        format!("{:.1} us", master_cpu * 1e6 / params.tasks as f64),
    );
    let master_threads = master_after.threads_since(&master_before);
    let master_switches = master_after
        .context_switches
        .saturating_sub(master_before.context_switches);
    report.detail(format!("master threads: {}", threads(&master_threads)));
    report.info(
        "master context switches per task",
        format!("{:.2}", master_switches as f64 / params.tasks as f64),
    );
    report.info("workers' CPU (all)", format!("{worker_cpu:.2} s"));
    report.info("bench client CPU", format!("{bench_cpu:.2} s"));
    report.info("master peak RSS", mib(master_after.peak_rss_kib));

    report.set("tasks", params.tasks);
    report.set("batch", params.batch);
    report.set("window", params.window);
    report.set("workers", params.workers);
    report.set("slots", params.slots);
    report.set("completed", completed);
    report.set("assigned", assigned);
    report.set("acked_secs", acked_secs.map(|s| round(s, 4)));
    report.set("elapsed_secs", round(elapsed, 4));
    report.set("tasks_per_sec", round(rate, 1));
    report.set("target_tasks_per_sec", TARGET_TASKS_PER_SEC);
    report.set("master_cpu_secs", round(master_cpu, 2));
    report.set("master_threads", threads_json(&master_threads));
    report.set("master_context_switches", master_switches);
    report.set(
        "worker_cpu_secs",
        workers_after
            .iter()
            .zip(&workers_before)
            .map(|(after, before)| round(after.cpu_secs - before.cpu_secs, 2))
            .collect::<Vec<_>>(),
    );
    report.set("bench_cpu_secs", round(bench_cpu, 2));
    report.set("master_peak_rss_kib", master_after.peak_rss_kib);
    if completed != params.tasks {
        bail!(
            "only {completed} of {} tasks completed\n{}",
            params.tasks,
            report.render()
        );
    }
    drop(workers);
    Ok(report)
}
