//! Scenario `prune`: what deleting a long history costs the commits
//! behind it. A database is filled (through the master's own store
//! module, as `history` does) with many finished tasks of a chosen size
//! (payload and result), finished in the last hour so that no retention
//! reaches them by itself. Then:
//!
//! - the store alone: `Store::prune_before`, the call the store thread
//!   makes between commits (one pruning transaction, then the incremental
//!   vacuum), timed batch by batch for the oldest tasks; the store thread
//!   runs nothing else meanwhile, so this is how long a commit can wait
//!   behind one batch;
//! - a real `retire-master` on the rest: one client submits a task at a
//!   time (a type no worker runs, so it stays queued) and times each ack,
//!   first with nothing else going on, then while `prune` (what `retire
//!   prune --before` sends) deletes every finished task in the store's
//!   batches between the commits.

use crate::client::Conn;
use crate::procs::Master;
use crate::report::{mib, percentile, round, thousands, Report};
use anyhow::{bail, Context, Result};
use master::core::records::TaskRecord;
use master::store::retention::{next_limit, PRUNE_BATCH, PRUNE_BATCH_BYTES, PRUNE_BATCH_TIME};
use master::store::{Store, Synchronous};
use protocol::{Message, Prune, TaskSpec, TaskSubmit};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the `prune` request may take.
const PRUNE_PATIENCE: Duration = Duration::from_secs(3600);

/// Most bytes of records the fill writes in one transaction.
const FILL_BYTES: usize = 64 << 20;

/// How the prune scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Finished tasks in the database.
    pub finished: usize,
    /// Bytes of each task's payload.
    pub payload_bytes: usize,
    /// Bytes of each task's result output.
    pub result_bytes: usize,
    /// Pruning batches timed on the store alone (before the master starts).
    pub batches: usize,
    /// On the store alone, batches of `PRUNE_BATCH` rows with neither the
    /// byte bound nor the store thread's time adaptation (as before them);
    /// otherwise as the store thread runs them.
    pub rows_only: bool,
    /// How long submits are timed before the prune.
    pub quiet: Duration,
    /// Pause between one submit's ack and the next submit.
    pub pace: Duration,
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Finished task number `n`: an echo task that took its payload and gave
/// back a result of the chosen sizes, finished at `finished_ms`.
fn record(n: usize, params: &Params, finished_ms: i64) -> TaskRecord {
    crate::history::finished_record(
        format!("p-{n:08}"),
        n,
        "x".repeat(params.payload_bytes),
        "y".repeat(params.result_bytes),
        finished_ms,
    )
}

/// p50 / p99 / max of `values` (sorted here), in ms.
fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.2} / {:.2} / {:.2} ms",
        percentile(values, 50.0),
        percentile(values, 99.0),
        values.last().copied().unwrap_or(0.0)
    )
}

/// Submits one task nobody runs and waits for its ack; the time taken,
/// in ms.
fn timed_submit(conn: &mut Conn, i: usize) -> Result<f64> {
    let mut spec = TaskSpec::new("bench-idle", json!({ "n": i }));
    spec.task_id = Some(format!("idle-{i}"));
    let submit = Message::TaskSubmit(TaskSubmit {
        tasks: vec![spec],
        batch: false,
    });
    let sent = Instant::now();
    conn.request(&format!("sub-{i}"), submit)?;
    Ok(sent.elapsed().as_secs_f64() * 1000.0)
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    if params.finished == 0 {
        bail!("--finished must be at least 1");
    }
    let dir = tempfile::tempdir().context("a temp dir")?;
    let now = now_ms();
    // The oldest first, a millisecond apart, all within the last hour.
    let first_ms = now - 3_600_000;
    let row_bytes = params.payload_bytes + params.result_bytes + 600;
    let per_transaction = (FILL_BYTES / row_bytes).clamp(1, 50_000);
    let filled = crate::history::fill_with(dir.path(), params.finished, per_transaction, |n| {
        record(
            n,
            params,
            first_ms + (n as i64 * 3_600_000) / params.finished as i64,
        )
    })?;
    let db_path = dir.path().join("db").join(master::store::DB_FILE);
    let db_bytes = std::fs::metadata(&db_path).map_or(0, |m| m.len());

    // The store alone: one batch at a time, as the store thread runs them.
    let mut store = Store::open(&dir.path().join("db"), Synchronous::Normal)?;
    let mut batch_ms = Vec::new();
    let mut rows = 0;
    let (bytes, mut limit) = if params.rows_only {
        (u64::MAX, PRUNE_BATCH)
    } else {
        (PRUNE_BATCH_BYTES, PRUNE_BATCH)
    };
    for i in 0..params.batches {
        let started = Instant::now();
        let pruned = store.prune_before_within(now, limit, bytes)?;
        let took = started.elapsed();
        if pruned.tasks.is_empty() {
            break;
        }
        if !params.rows_only {
            limit = next_limit(limit, took, pruned.full);
        }
        batch_ms.push(took.as_secs_f64() * 1000.0);
        rows += pruned.tasks.len();
        if i % 8 == 7 {
            // What the master's checkpointer does as the WAL grows.
            store.checkpoint()?;
        }
    }
    store.checkpoint()?;
    drop(store);
    let timed_batches = batch_ms.len();
    let batch_summary = summary(&mut batch_ms);
    let batch_p99 = percentile(&batch_ms, 99.0);
    let batch_max = batch_ms.last().copied().unwrap_or(0.0);
    let left = params.finished - rows;
    // Said now, too, in case the rest of the run fails.
    eprintln!("prune: store alone, {timed_batches} batches, {rows} rows: {batch_summary}");

    // A real master on the rest.
    let master = Master::start(dir.path(), &[])?;
    let mut conn = Conn::connect(master.addr)?;
    let mut quiet = Vec::new();
    let mut i = 0;
    let started = Instant::now();
    while started.elapsed() < params.quiet {
        quiet.push(timed_submit(&mut conn, i)?);
        i += 1;
        std::thread::sleep(params.pace);
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut admin = Conn::connect(master.addr)?;
    // The whole history goes in one request: it may take minutes.
    admin.set_patience(PRUNE_PATIENCE);
    let pruner = {
        let done = done.clone();
        std::thread::spawn(move || -> Result<(Duration, u64)> {
            let started = Instant::now();
            let reply = admin.request(
                "prune",
                Message::Prune(Prune {
                    before_unix_ms: now,
                }),
            );
            done.store(true, Ordering::SeqCst);
            let reply = reply?;
            Ok((
                started.elapsed(),
                reply["data"]["result"]["total"].as_u64().unwrap_or(0),
            ))
        })
    };
    let mut during = Vec::new();
    while !done.load(Ordering::SeqCst) {
        during.push(timed_submit(&mut conn, i)?);
        i += 1;
        std::thread::sleep(params.pace);
    }
    let (took, total) = pruner
        .join()
        .map_err(|_| anyhow::anyhow!("the pruning client panicked"))??;
    if total != left as u64 {
        bail!("prune deleted {total} tasks, {left} were left");
    }
    let after_bytes = std::fs::metadata(&db_path).map_or(0, |m| m.len());
    // The checkpoints the store thread ran itself (the WAL at its hard
    // limit): each one delays the commit after it.
    let log = std::fs::read_to_string(dir.path().join("master.log")).unwrap_or_default();
    let restarts = log.matches("WAL at its limit").count();

    let mut report = Report::new("prune");
    report.note(format!(
        "{} finished tasks, payload {} B + result {} B each ({} database, filled in {:.1} s)",
        thousands(params.finished as f64),
        params.payload_bytes,
        params.result_bytes,
        mib(db_bytes / 1024),
        filled.as_secs_f64()
    ));
    report.info(
        format!(
            "store alone: one batch ({}, and the vacuum) p50 / p99 / max, {timed_batches} batches, {rows} rows",
            if params.rows_only {
                format!("{PRUNE_BATCH} rows")
            } else {
                format!(
                    "<= {PRUNE_BATCH} rows adapted to {} ms, <= {} KiB",
                    PRUNE_BATCH_TIME.as_millis(),
                    PRUNE_BATCH_BYTES >> 10
                )
            }
        ),
        batch_summary,
    );
    report.info(
        "master: submit ack p50 / p99 / max, no prune",
        format!("{} ({} submits)", summary(&mut quiet), quiet.len()),
    );
    report.info(
        "master: submit ack p50 / p99 / max, while pruning",
        format!("{} ({} submits)", summary(&mut during), during.len()),
    );
    report.info(
        "master: prune of the rest",
        format!(
            "{} tasks in {:.1} s ({} tasks/s)",
            thousands(total as f64),
            took.as_secs_f64(),
            thousands(total as f64 / took.as_secs_f64().max(1e-9))
        ),
    );
    report.info("database file after", mib(after_bytes / 1024));
    report.info(
        "master: WAL checkpoints on the store thread (at its limit)",
        restarts.to_string(),
    );
    report.set("wal_limit_checkpoints", restarts);
    report.set("finished", params.finished);
    report.set("payload_bytes", params.payload_bytes);
    report.set("result_bytes", params.result_bytes);
    report.set("db_bytes", db_bytes);
    report.set("rows_only", params.rows_only);
    report.set("batch_p50_ms", round(percentile(&batch_ms, 50.0), 3));
    report.set("batch_p99_ms", round(batch_p99, 3));
    report.set("batch_max_ms", round(batch_max, 3));
    report.set("submit_quiet_p99_ms", round(percentile(&quiet, 99.0), 3));
    report.set(
        "submit_quiet_max_ms",
        round(quiet.last().copied().unwrap_or(0.0), 3),
    );
    report.set("submit_pruning_p99_ms", round(percentile(&during, 99.0), 3));
    report.set(
        "submit_pruning_max_ms",
        round(during.last().copied().unwrap_or(0.0), 3),
    );
    report.set("pruned", total);
    report.set("prune_secs", round(took.as_secs_f64(), 2));
    report.set("db_bytes_after", after_bytes);
    Ok(report)
}
