//! Scenario `history`: a master over a long history. A database is filled
//! (through the master's own store module) with many finished tasks and
//! some queued ones, then a real `retire-master` starts on it; measured:
//! its time from start to listening, its RSS, and the round trip of
//! `task_status` (what `retire task ID` sends) for finished tasks, which
//! the master reads from the store, plus a page of `list_tasks`.

use crate::client::Conn;
use crate::procs::{Master, ProcSample};
use crate::report::{mib, percentile, round, Report};
use anyhow::{Context, Result};
use master::core::records::{Batch, EncodedTask, StoreOp, TaskRecord};
use master::store::{Store, Synchronous};
use protocol::{ListTasks, Message, TaskRef, TaskSpec, TaskState};
use serde_json::json;
use std::time::{Duration, Instant};

/// The targets.
pub const TARGET_RSS_KIB: u64 = 64 * 1024;
/// See [`TARGET_RSS_KIB`].
pub const TARGET_START: Duration = Duration::from_secs(2);
/// See [`TARGET_RSS_KIB`]: p99 of `retire task ID` on a finished task.
pub const TARGET_TASK_P99_MS: f64 = 5.0;

/// Records written per transaction while filling.
const FILL_BATCH: usize = 50_000;

/// How the history scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Finished tasks in the database.
    pub finished: usize,
    /// Queued tasks after them.
    pub queued: usize,
    /// Timed `task_status` requests.
    pub requests: usize,
    /// Timed runs of the `retire task ID` command.
    pub cli_runs: usize,
}

/// The id of task number `n`.
pub fn task_id(n: usize) -> String {
    format!("h-{n:08}")
}

/// The record of task number `n` (its `seq` is `n + 1`), finished or
/// queued, as an echo task the master ran would be stored.
fn record(n: usize, finished: bool, now_ms: i64) -> TaskRecord {
    record_with_result(n, finished, now_ms, 0)
}

/// [`record`], with a result output of `result_bytes` bytes when that is
/// more than the echo's own few.
pub fn record_with_result(
    n: usize,
    finished: bool,
    now_ms: i64,
    result_bytes: usize,
) -> TaskRecord {
    let message = format!("task {n}");
    if !finished {
        let mut spec = TaskSpec::new("echo", json!({ "message": message }));
        spec.task_id = Some(task_id(n));
        return TaskRecord::queued(task_id(n), n as u64 + 1, spec, now_ms);
    }
    let mut output = format!("{message}\n");
    if output.len() < result_bytes {
        output.push_str(&"y".repeat(result_bytes - output.len()));
    }
    finished_record(task_id(n), n, message, output, now_ms + 3)
}

/// Finished echo task number `n` (its `seq` is `n + 1`, one in ten failed)
/// with id `task_id`, that took `message` and answered `output`, finished
/// at `finished_ms`, as the master stores one.
pub fn finished_record(
    task_id: String,
    n: usize,
    message: String,
    output: String,
    finished_ms: i64,
) -> TaskRecord {
    let mut spec = TaskSpec::new("echo", json!({ "message": message }));
    spec.task_id = Some(task_id.clone());
    let mut record = TaskRecord::queued(task_id, n as u64 + 1, spec, finished_ms - 3);
    record.state = if n % 10 == 9 {
        TaskState::Failed
    } else {
        TaskState::Completed
    };
    record.attempt = 1;
    record.device_id = Some("bench-worker".into());
    record.started_unix_ms = Some(finished_ms - 3);
    record.finished_unix_ms = Some(finished_ms);
    record.result = Some(json!({ "output": output, "exit_code": 0 }));
    record.exit_code = Some(0);
    record.execution_time = Some(0.003);
    record
}

/// Fills `dir/db` (where `Master::start` keeps its database).
fn fill(dir: &std::path::Path, params: &Params) -> Result<Duration> {
    let now_ms = 1_700_000_000_000;
    fill_with(dir, params.finished + params.queued, FILL_BATCH, |n| {
        record(n, n < params.finished, now_ms)
    })
}

/// Fills `dir/db` with `total` task records, the `n`th made by `record`,
/// `per_transaction` records a transaction, through the master's own
/// store module; returns how long it took.
pub fn fill_with(
    dir: &std::path::Path,
    total: usize,
    per_transaction: usize,
    mut record: impl FnMut(usize) -> TaskRecord,
) -> Result<Duration> {
    let started = Instant::now();
    let mut store = Store::open(&dir.join("db"), Synchronous::Normal).context("open the store")?;
    let mut scratch = Vec::new();
    for (id, first) in (1..).zip((0..total).step_by(per_transaction.max(1))) {
        let ops = (first..(first + per_transaction.max(1)).min(total))
            .map(|n| StoreOp::PutTask(EncodedTask::new(&record(n), &mut scratch)))
            .collect();
        store
            .commit(&[Batch { id, ops }])
            .context("write a batch")?;
        // The master's checkpointer would copy the WAL back meanwhile;
        // without it, the WAL would hold the whole fill.
        store.checkpoint().context("checkpoint")?;
    }
    Ok(started.elapsed())
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let filled = fill(dir.path(), params)?;
    let db_bytes = std::fs::metadata(dir.path().join("db").join(master::store::DB_FILE))
        .map_or(0, |m| m.len());

    let started = Instant::now();
    let master = Master::start(dir.path(), &[])?;
    let to_listening = started.elapsed();
    // The binary prints its address once the socket is bound; the first
    // answer comes once the store is loaded and the loop turns.
    let mut conn = Conn::connect(master.addr)?;
    conn.request("first", Message::Status)?;
    let to_answer = started.elapsed();
    // Let it settle (its first turn, the first commit of requeued work).
    std::thread::sleep(Duration::from_millis(500));
    let after_start = ProcSample::of(master.pid())?;

    let mut latencies = Vec::with_capacity(params.requests);
    let step = (params.finished / params.requests.max(1)).max(1);
    for i in 0..params.requests {
        // Spread over the whole history, so the reads are not all cached.
        let n = (i * step + i % 7) % params.finished.max(1);
        let task = TaskRef {
            task_id: format!("h-{n:08}"),
        };
        let sent = Instant::now();
        let reply = conn.request(&format!("s{i}"), Message::TaskStatus(task))?;
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        let state = &reply["data"]["result"]["task"]["state"];
        anyhow::ensure!(
            state == "completed" || state == "failed",
            "task h-{n:08} is {state}"
        );
    }
    latencies.sort_by(f64::total_cmp);
    let mut pages = Vec::new();
    let mut before = None;
    for i in 0..20 {
        let list = ListTasks {
            state: Some(TaskState::Completed),
            limit: Some(100),
            before: before.take(),
        };
        let sent = Instant::now();
        let reply = conn.request(&format!("l{i}"), Message::ListTasks(list))?;
        pages.push(sent.elapsed().as_secs_f64() * 1000.0);
        before = reply["data"]["result"]["next_cursor"]
            .as_str()
            .map(str::to_string);
    }
    pages.sort_by(f64::total_cmp);
    let status = conn.request("status", Message::Status)?;
    let tasks = &status["data"]["result"]["cluster_stats"]["tasks"];
    anyhow::ensure!(
        tasks["queued"] == params.queued && tasks["completed"].as_u64().unwrap_or(0) > 0,
        "status counts {tasks}"
    );
    let after_reads = ProcSample::of(master.pid())?;
    // The real `retire task ID`: a process, a connection and one request
    // each time, so it adds the CLI's start to the round trip above.
    let retire = crate::procs::binary("retire")?;
    let mut cli = Vec::with_capacity(params.cli_runs);
    for i in 0..params.cli_runs {
        let n = (i * 7919) % params.finished.max(1);
        let sent = Instant::now();
        let output = std::process::Command::new(&retire)
            .args([
                "--master",
                &master.addr.to_string(),
                "task",
                &format!("h-{n:08}"),
            ])
            .output()
            .context("run retire task")?;
        cli.push(sent.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            output.status.success(),
            "retire task h-{n:08}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    cli.sort_by(f64::total_cmp);

    let p99 = percentile(&latencies, 99.0);
    let mut report = Report::new("history");
    report.note(format!(
        "{} finished + {} queued tasks in the database ({}, filled in {:.1} s); no worker",
        params.finished,
        params.queued,
        mib(db_bytes / 1024),
        filled.as_secs_f64()
    ));
    report.target(
        "start to listening",
        format!("{:.0} ms", to_listening.as_secs_f64() * 1000.0),
        "<= 2 s",
        to_listening <= TARGET_START,
    );
    report.target(
        "start to the first answer (status)",
        format!("{:.0} ms", to_answer.as_secs_f64() * 1000.0),
        "<= 2 s",
        to_answer <= TARGET_START,
    );
    report.target(
        "master RSS after start",
        mib(after_start.rss_kib),
        "<= 64 MiB",
        after_start.rss_kib <= TARGET_RSS_KIB,
    );
    report.info("master RSS after the reads", mib(after_reads.rss_kib));
    report.target(
        "task_status of a finished task p99",
        format!("{p99:.2} ms"),
        "<= 5 ms",
        p99 <= TARGET_TASK_P99_MS,
    );
    report.info(
        "task_status p50 / max",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&latencies, 50.0),
            latencies.last().copied().unwrap_or(0.0)
        ),
    );
    report.info(
        "`retire task ID` (the process) p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&cli, 50.0),
            percentile(&cli, 99.0)
        ),
    );
    report.info(
        "list_tasks completed, 100 a page, p50 / max",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&pages, 50.0),
            pages.last().copied().unwrap_or(0.0)
        ),
    );
    report.set("finished", params.finished);
    report.set("queued", params.queued);
    report.set("db_bytes", db_bytes);
    report.set("fill_secs", round(filled.as_secs_f64(), 2));
    report.set("start_ms", round(to_listening.as_secs_f64() * 1000.0, 1));
    report.set(
        "first_answer_ms",
        round(to_answer.as_secs_f64() * 1000.0, 1),
    );
    report.set("rss_kib", after_start.rss_kib);
    report.set("rss_after_reads_kib", after_reads.rss_kib);
    report.set("task_status_p50_ms", round(percentile(&latencies, 50.0), 3));
    report.set("task_status_p99_ms", round(p99, 3));
    report.set("retire_task_p50_ms", round(percentile(&cli, 50.0), 3));
    report.set("retire_task_p99_ms", round(percentile(&cli, 99.0), 3));
    report.set("list_page_p50_ms", round(percentile(&pages, 50.0), 3));
    report.set("target_rss_kib", TARGET_RSS_KIB);
    report.set("target_start_ms", TARGET_START.as_millis() as u64);
    report.set("target_task_p99_ms", TARGET_TASK_P99_MS);
    Ok(report)
}
