//! Scenario 4: what an idle master and an idle worker cost: resident
//! memory, and CPU time and wake-ups over an idle period.

use crate::client::Conn;
use crate::procs::{Master, ProcSample, Worker};
use crate::report::{mib, round, threads, threads_json, Report};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};

/// The targets, in KiB.
pub const TARGET_MASTER_RSS_KIB: u64 = 10 * 1024;
/// See [`TARGET_MASTER_RSS_KIB`].
pub const TARGET_WORKER_RSS_KIB: u64 = 6 * 1024;

/// The master's default heartbeat interval, which the worker follows.
const HEARTBEAT_SECS: f64 = 5.0;

/// How the footprint scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// The idle period over which CPU time and wake-ups are counted.
    pub idle: Duration,
    /// How long to let both settle after the worker joined.
    pub settle: Duration,
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let master = Master::start(dir.path(), &[])?;
    let master_fresh = ProcSample::of(master.pid())?;
    let worker = {
        let mut conn = Conn::connect(master.addr)?;
        conn.subscribe()?;
        // Slots as the worker picks them by default: one per CPU.
        let slots = std::thread::available_parallelism().map_or(1, usize::from);
        let worker = Worker::start(dir.path(), master.addr, "bench-idle", slots)?;
        conn.wait_joined(1)?;
        worker
        // The client connection closes here: only the worker stays.
    };
    std::thread::sleep(params.settle);
    let master_before = ProcSample::of(master.pid())?;
    let worker_before = ProcSample::of(worker.pid())?;
    let started = Instant::now();
    std::thread::sleep(params.idle);
    let secs = started.elapsed().as_secs_f64();
    let master_after = ProcSample::of(master.pid())?;
    let worker_after = ProcSample::of(worker.pid())?;

    let worker_cpu = worker_after.cpu_secs - worker_before.cpu_secs;
    let master_cpu = master_after.cpu_secs - master_before.cpu_secs;
    let worker_wakes = worker_after
        .context_switches
        .saturating_sub(worker_before.context_switches);
    let master_wakes = master_after
        .context_switches
        .saturating_sub(master_before.context_switches);
    let heartbeats = secs / HEARTBEAT_SECS;

    let mut report = Report::new("footprint");
    report.note(format!(
        "1 master, 1 worker, {secs:.0} s idle after {:?}",
        params.settle
    ));
    report.info("master RSS before any peer", mib(master_fresh.rss_kib));
    report.target(
        "idle master RSS",
        mib(master_after.rss_kib),
        "<= 10 MiB",
        master_after.rss_kib <= TARGET_MASTER_RSS_KIB,
    );
    report.target(
        "idle worker RSS",
        mib(worker_after.rss_kib),
        "<= 6 MiB",
        worker_after.rss_kib <= TARGET_WORKER_RSS_KIB,
    );
    report.info("worker peak RSS", mib(worker_after.peak_rss_kib));
    report.info(
        "worker CPU while idle",
        format!("{:.3} s ({} threads)", worker_cpu, worker_after.threads),
    );
    report.info(
        "worker context switches",
        format!(
            "{worker_wakes} ({:.1} per heartbeat)",
            worker_wakes as f64 / heartbeats
        ),
    );
    let worker_threads = worker_after.threads_since(&worker_before);
    report.detail(format!("worker threads: {}", threads(&worker_threads)));
    report.info(
        "master CPU / context switches",
        format!(
            "{master_cpu:.3} s / {master_wakes} ({} threads)",
            master_after.threads
        ),
    );

    report.set("idle_secs", round(secs, 2));
    report.set("master_rss_fresh_kib", master_fresh.rss_kib);
    report.set("master_rss_kib", master_after.rss_kib);
    report.set("master_peak_rss_kib", master_after.peak_rss_kib);
    report.set("master_threads", master_after.threads);
    report.set("master_cpu_secs", round(master_cpu, 3));
    report.set("master_context_switches", master_wakes);
    report.set("worker_rss_kib", worker_after.rss_kib);
    report.set("worker_peak_rss_kib", worker_after.peak_rss_kib);
    report.set("worker_threads", worker_after.threads);
    report.set("worker_cpu_secs", round(worker_cpu, 3));
    report.set("worker_context_switches", worker_wakes);
    report.set("worker_thread_detail", threads_json(&worker_threads));
    report.set(
        "master_thread_detail",
        threads_json(&master_after.threads_since(&master_before)),
    );
    report.set("heartbeats_expected", round(heartbeats, 1));
    report.set("target_master_rss_kib", TARGET_MASTER_RSS_KIB);
    report.set("target_worker_rss_kib", TARGET_WORKER_RSS_KIB);
    Ok(report)
}
