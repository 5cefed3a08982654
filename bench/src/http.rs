//! Scenario `http`: what the master's HTTP surface costs. The latency of
//! `GET /api/v1/tasks` (plain, by state, filtered by type and text, one
//! task) over a keep-alive connection with many tasks stored, and what
//! open Server-Sent Events clients cost the master in CPU and RSS while
//! tasks flow: the same load with none and with N streams open.

use crate::client::Conn as LineConn;
use crate::procs::{Master, ProcSample, Worker};
use crate::report::{mib, percentile, round, Report};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::http::Conn;

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Tasks stored (completed) before the reads are timed.
    pub stored: usize,
    /// Timed requests of each kind.
    pub requests: usize,
    /// Server-Sent Events clients held open.
    pub streams: usize,
    /// Seconds the load runs in each phase (without and with the streams).
    pub load_secs: f64,
    /// Tasks submitted per second during the load.
    pub rate: usize,
}

/// Submits `tasks` echo tasks in batches over HTTP and returns their ids.
fn submit(conn: &mut Conn, tasks: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(tasks);
    let mut left = tasks;
    while left > 0 {
        let n = left.min(5000);
        let batch: Vec<Value> = (0..n)
            .map(|i| json!({"task_type": "echo", "payload": {"n": i}}))
            .collect();
        let response = conn.request(
            "POST",
            "/api/v1/tasks",
            None,
            &Value::Array(batch).to_string(),
        );
        if response.status != 200 {
            bail!("submit answered {}: {}", response.status, response.body);
        }
        for id in response.json()["task_ids"].as_array().context("task ids")? {
            ids.push(id.as_str().unwrap_or_default().to_string());
        }
        left -= n;
    }
    Ok(ids)
}

/// Waits until `count` tasks have finished, counting `task_finished`
/// events on a line-protocol subscriber.
fn wait_finished(events: &mut LineConn, count: usize) -> Result<()> {
    let mut seen = 0;
    while seen < count {
        let value = events.next_value()?;
        if value["data"]["event"] == "task_finished" {
            seen += 1;
        }
    }
    Ok(())
}

/// Times `requests` GETs of `path` on one keep-alive connection; the
/// sorted latencies in milliseconds.
fn time_gets(addr: SocketAddr, path: &str, requests: usize) -> Result<Vec<f64>> {
    let mut conn = Conn::open(addr);
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let response = conn.request("GET", path, None, "");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if response.status != 200 {
            bail!("{path} answered {}: {}", response.status, response.body);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Submits `rate` tasks a second (in tenths) for `secs`, and returns the
/// master's CPU seconds and its largest RSS meanwhile.
fn load(addr: SocketAddr, master_pid: u32, rate: usize, secs: f64) -> Result<(f64, u64, usize)> {
    let mut conn = Conn::open(addr);
    let before = ProcSample::of(master_pid)?;
    let started = Instant::now();
    let mut peak = before.rss_kib;
    let mut submitted = 0;
    let per_tick = (rate / 10).max(1);
    let mut tick = 0u32;
    while started.elapsed().as_secs_f64() < secs {
        submitted += submit(&mut conn, per_tick)?.len();
        tick += 1;
        let next = Duration::from_millis(100) * tick;
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        peak = peak.max(ProcSample::of(master_pid)?.rss_kib);
    }
    let after = ProcSample::of(master_pid)?;
    Ok((after.cpu_secs - before.cpu_secs, peak, submitted))
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let master = Master::start(dir.path(), &[])?;
    let addr = master.addr;
    let mut events = LineConn::connect(addr)?;
    events.subscribe()?;
    let _worker = Worker::start(dir.path(), addr, "bench-http", 4)?;
    events.wait_joined(1)?;
    let ids = submit(&mut Conn::open(addr), params.stored)?;
    wait_finished(&mut events, params.stored)?;
    drop(events);

    let mut report = Report::new("http");
    report.note(format!(
        "1 master (--no-auth), 1 worker x 4 slots, {} completed tasks stored; GETs over one keep-alive connection",
        params.stored
    ));
    let one = format!(
        "/api/v1/tasks/{}",
        ids.first().map_or("none", String::as_str)
    );
    let reads = [
        ("GET /api/v1/tasks", "/api/v1/tasks".to_string(), "tasks"),
        (
            "GET /api/v1/tasks?state=completed&limit=100",
            "/api/v1/tasks?state=completed&limit=100".to_string(),
            "tasks_by_state",
        ),
        (
            "GET /api/v1/tasks?type=echo&q=7 (filters one page of 1,000)",
            "/api/v1/tasks?type=echo&q=7".to_string(),
            "tasks_filtered",
        ),
        ("GET /api/v1/tasks/ID", one, "task"),
    ];
    for (label, path, key) in reads {
        let times = time_gets(addr, &path, params.requests)?;
        let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
        let max = times.last().copied().unwrap_or(0.0);
        report.info(
            label,
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
        );
        report.set(&format!("{key}_p50_ms"), round(p50, 3));
        report.set(&format!("{key}_p99_ms"), round(p99, 3));
        report.set(&format!("{key}_max_ms"), round(max, 3));
    }

    // The same load without and with the streams open.
    let (cpu_without, rss_without, n_without) =
        load(addr, master.pid(), params.rate, params.load_secs)?;
    let idle_rss = ProcSample::of(master.pid())?.rss_kib;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..params.streams)
        .map(|_| {
            let mut stream = Conn::stream(addr, "/api/v1/events", None);
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    stream.event();
                    received.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let open_rss = ProcSample::of(master.pid())?.rss_kib;
    let (cpu_with, rss_with, n_with) = load(addr, master.pid(), params.rate, params.load_secs)?;
    stop.store(true, Ordering::SeqCst);
    // One more event wakes every reader, so each sees the stop (on a new
    // connection: the first one has been idle past the keep-alive limit).
    submit(&mut Conn::open(addr), 1)?;
    for reader in readers {
        let _ = reader.join();
    }
    let per_sec = |cpu: f64| cpu / params.load_secs * 100.0;
    report.info(
        format!("master CPU, {} tasks/s, no stream", params.rate),
        format!(
            "{:.1} % of a core ({n_without} tasks)",
            per_sec(cpu_without)
        ),
    );
    report.info(
        format!("master CPU, same load, {} streams", params.streams),
        format!(
            "{:.1} % of a core ({n_with} tasks, {} events delivered)",
            per_sec(cpu_with),
            received.load(Ordering::Relaxed)
        ),
    );
    report.info(
        "master RSS: before, streams open, peak under load",
        format!(
            "{} / {} / {} (peak without streams {})",
            mib(idle_rss),
            mib(open_rss),
            mib(rss_with),
            mib(rss_without)
        ),
    );
    report.set("streams", params.streams);
    report.set("rate", params.rate);
    report.set("cpu_pct_without_streams", round(per_sec(cpu_without), 1));
    report.set("cpu_pct_with_streams", round(per_sec(cpu_with), 1));
    report.set("rss_kib_before_streams", idle_rss);
    report.set("rss_kib_streams_open", open_rss);
    report.set("rss_kib_peak_with_streams", rss_with);
    report.set("rss_kib_peak_without_streams", rss_without);
    report.set("events_delivered", received.load(Ordering::Relaxed));
    Ok(report)
}
