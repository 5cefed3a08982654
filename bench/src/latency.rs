//! Scenario 2: one `echo` task at a time on an idle cluster, from the
//! moment the submit is written to the moment its `task_finished` event
//! (sent after the result is committed) arrives.

use crate::client::Conn;
use crate::procs::{Master, Worker};
use crate::report::{percentile, round, Report};
use anyhow::{bail, Context, Result};
use protocol::{Message, TaskSpec, TaskSubmit};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

/// The targets, in milliseconds.
pub const TARGET_P50_MS: f64 = 1.0;
/// See [`TARGET_P50_MS`].
pub const TARGET_P99_MS: f64 = 5.0;

/// How the latency scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Measured tasks.
    pub tasks: usize,
    /// Tasks run first and not measured.
    pub warmup: usize,
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let master = Master::start(dir.path(), &[])?;
    let mut conn = Conn::connect(master.addr)?;
    conn.subscribe()?;
    let _worker = Worker::start(dir.path(), master.addr, "bench-w0", 2)?;
    conn.wait_joined(1)?;

    let mut to_ack = Vec::with_capacity(params.tasks);
    let mut to_finish = Vec::with_capacity(params.tasks);
    for i in 0..params.warmup + params.tasks {
        let task_id = format!("lat-{i}");
        let mut spec = TaskSpec::new("echo", json!({ "message": i }));
        spec.task_id = Some(task_id.clone());
        let submit = Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        });
        let request = format!("sub-{i}");
        let started = Instant::now();
        conn.send(&request, submit)?;
        let mut acked = None;
        let finished = loop {
            let value = conn
                .next_value()
                .with_context(|| format!("waiting for {task_id}: {}", master.log_tail()))?;
            let data = &value["data"];
            match value["message_type"].as_str() {
                Some("ack") if data["original_message_id"] == request.as_str() => {
                    acked = Some(started.elapsed());
                }
                Some("error") => bail!("the master refused {task_id}: {data}"),
                Some("event")
                    if data["event"] == "task_finished"
                        && data["task"]["task_id"] == task_id.as_str() =>
                {
                    if data["task"]["state"] != "completed" {
                        bail!("{task_id} did not complete: {}", data["task"]);
                    }
                    break started.elapsed();
                }
                _ => {}
            }
        };
        if i >= params.warmup {
            let acked = acked.unwrap_or(finished);
            to_ack.push(acked.as_secs_f64() * 1e3);
            to_finish.push(finished.as_secs_f64() * 1e3);
        }
    }
    let mut floor = loopback_round_trips(params.tasks.min(2000))?;
    floor.sort_by(f64::total_cmp);
    to_ack.sort_by(f64::total_cmp);
    to_finish.sort_by(f64::total_cmp);
    let p50 = percentile(&to_finish, 50.0);
    let p99 = percentile(&to_finish, 99.0);
    let max = percentile(&to_finish, 100.0);

    let mut report = Report::new("latency");
    report.note(format!(
        "{} echo tasks one at a time ({} warm-up), 1 worker",
        params.tasks, params.warmup
    ));
    report.target(
        "submit -> task_finished p50",
        format!("{p50:.3} ms"),
        format!("<= {TARGET_P50_MS} ms"),
        p50 <= TARGET_P50_MS,
    );
    report.target(
        "submit -> task_finished p99",
        format!("{p99:.3} ms"),
        format!("<= {TARGET_P99_MS} ms"),
        p99 <= TARGET_P99_MS,
    );
    report.info("submit -> task_finished max", format!("{max:.3} ms"));
    report.info(
        "submit -> ack p50 / p99",
        format!(
            "{:.3} / {:.3} ms",
            percentile(&to_ack, 50.0),
            percentile(&to_ack, 99.0)
        ),
    );
    report.info(
        "for scale: loopback TCP round trip p50 / p99",
        format!(
            "{:.3} / {:.3} ms",
            percentile(&floor, 50.0),
            percentile(&floor, 99.0)
        ),
    );
    report.set("tasks", params.tasks);
    report.set("loopback_rtt_p50_ms", round(percentile(&floor, 50.0), 4));
    report.set("loopback_rtt_p99_ms", round(percentile(&floor, 99.0), 4));
    report.set("warmup", params.warmup);
    report.set("p50_ms", round(p50, 4));
    report.set("p99_ms", round(p99, 4));
    report.set("max_ms", round(max, 4));
    report.set("ack_p50_ms", round(percentile(&to_ack, 50.0), 4));
    report.set("ack_p99_ms", round(percentile(&to_ack, 99.0), 4));
    report.set("target_p50_ms", TARGET_P50_MS);
    report.set("target_p99_ms", TARGET_P99_MS);
    Ok(report)
}

/// Round trips of one short line between this thread and an echo thread
/// over loopback TCP, in milliseconds: what two wake-ups cost on this
/// machine, for scale (a task's path has several such hops).
fn loopback_round_trips(count: usize) -> Result<Vec<f64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || -> std::io::Result<()> {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            writer.write_all(&line)?;
        }
    });
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        writer.write_all(b"ping\n")?;
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            bail!("the echo thread closed the connection");
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}
