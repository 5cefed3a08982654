//! Scenario `soak`: a million tasks in minutes with a retention of
//! seconds. A real `retire-master` runs with `--retention` and
//! `--retention-failed` of a few seconds and real workers; the bench
//! submits `echo` tasks continuously (never more than a window ahead of
//! the results, so the queue stays short) and samples, every few seconds,
//! the tasks done, the master's RSS, the database's size on disk (the
//! file plus its WAL) and the finished tasks `status` counts. After
//! warm-up (the first half of the samples) RSS and the database size
//! should stay flat: the verdict compares the peak of the last half with
//! the peak of the first (a leak or a database that never shrinks makes
//! it grow), and reports the max/min ratio over the last half (pruning
//! runs in batches and the WAL is checkpointed now and then, so the
//! database size is a sawtooth around its level, not a line).

use crate::client::{Conn, PATIENCE};
use crate::procs::{Master, ProcSample, Worker};
use crate::report::{mib, round, thousands, Report};
use crate::throughput;
use anyhow::{bail, Context, Result};
use protocol::{Envelope, Message, TaskSpec, TaskSubmit};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The band the verdict states: the largest sample of RSS and of the
/// database size in the last half of the run is at most this many times
/// the largest in the first half (warm-up included).
pub const FLAT_BAND: f64 = 1.2;

/// How the soak scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// The load, as the throughput scenario takes it, except that its
    /// `window` counts batches submitted but not yet finished (not yet
    /// acknowledged, there).
    pub load: throughput::Params,
    /// The master's `--retention` and `--retention-failed`, in seconds.
    pub retention_secs: u64,
    /// Time between samples.
    pub sample_every: Duration,
}

/// One point of the curve.
#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    done: u64,
    rss_kib: u64,
    db_bytes: u64,
    wal_bytes: u64,
    stored_finished: u64,
}

/// The database file plus its write-ahead log, and the log alone, in bytes.
fn db_bytes(db_dir: &Path) -> (u64, u64) {
    let file = master::store::DB_FILE;
    let size = |name: String| std::fs::metadata(db_dir.join(name)).map_or(0, |m| m.len());
    let wal = size(format!("{file}-wal"));
    (size(file.to_string()) + wal, wal)
}

/// The peak of `values` in the last half of the samples over the peak in
/// the first half.
fn growth(samples: &[Sample], value: impl Fn(&Sample) -> u64) -> f64 {
    let (warm, settled) = samples.split_at(samples.len() / 2);
    let before = warm.iter().map(&value).max().unwrap_or(0);
    let after = settled.iter().map(&value).max().unwrap_or(0);
    if before == 0 {
        1.0
    } else {
        after as f64 / before as f64
    }
}

/// Finished tasks the master's `status` counts (every finished state).
fn stored_finished(conn: &mut Conn, i: usize) -> Result<u64> {
    let status = conn.request(&format!("status-{i}"), Message::Status)?;
    let tasks = &status["data"]["result"]["cluster_stats"]["tasks"];
    Ok([
        "completed",
        "failed",
        "cancelled",
        "timed_out",
        "dead_letter",
    ]
    .iter()
    .map(|state| tasks[state].as_u64().unwrap_or(0))
    .sum())
}

/// Largest over smallest of `values` (1 when empty or all zero).
fn spread(values: impl Iterator<Item = u64>) -> f64 {
    let (min, max) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if min == 0 || min == u64::MAX {
        1.0
    } else {
        max as f64 / min as f64
    }
}

/// Runs the scenario.
pub fn run(soak: &Params) -> Result<Report> {
    let params = &soak.load;
    if params.batch == 0 || params.batch > protocol::message::MAX_BATCH {
        bail!(
            "--batch must be 1 to {} tasks",
            protocol::message::MAX_BATCH
        );
    }
    let dir = tempfile::tempdir().context("a temp dir")?;
    let retention = format!("{}s", soak.retention_secs.max(1));
    let mut master = Master::start(
        dir.path(),
        &[
            "--retention".into(),
            retention.clone(),
            "--retention-failed".into(),
            retention.clone(),
        ],
    )?;
    let db_dir = dir.path().join("db");
    let mut events = Conn::connect(master.addr)?;
    events.subscribe()?;
    let mut workers = (0..params.workers)
        .map(|i| Worker::start(dir.path(), master.addr, &format!("soak-w{i}"), params.slots))
        .collect::<Result<Vec<_>>>()?;
    events.wait_joined(params.workers)?;
    let mut probe = Conn::connect(master.addr)?;

    // A reader thread counts results; the main thread submits and samples.
    let done = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut writer = events.writer()?;
    {
        let (done, completed, failure) = (done.clone(), completed.clone(), failure.clone());
        std::thread::spawn(move || loop {
            let line = match events.next_line() {
                Ok(line) => line,
                Err(err) => {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{err:#}"));
                    return;
                }
            };
            let Ok(text) = std::str::from_utf8(line) else {
                continue;
            };
            if text.contains("\"event\":\"task_finished\"") {
                if text.contains("\"state\":\"completed\"") {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Release);
            } else if text.contains("\"message_type\":\"error\"") {
                *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.to_string());
                return;
            }
        });
    }

    let total = params.tasks as u64;
    let ahead = (params.window.max(1) * params.batch) as u64;
    let started = Instant::now();
    let (db, wal) = db_bytes(&db_dir);
    let mut samples = vec![Sample {
        secs: 0.0,
        done: 0,
        rss_kib: ProcSample::of(master.pid())?.rss_kib,
        db_bytes: db,
        wal_bytes: wal,
        stored_finished: stored_finished(&mut probe, 0)?,
    }];
    let mut next_sample = started + soak.sample_every;
    let mut submitted = 0u64;
    let mut last_done = 0;
    let mut heard_at = Instant::now();
    loop {
        let finished = done.load(Ordering::Acquire);
        if finished != last_done {
            last_done = finished;
            heard_at = Instant::now();
        }
        while submitted < total
            && submitted - finished.min(submitted) + params.batch as u64 <= ahead
        {
            let n = (total - submitted).min(params.batch as u64);
            let tasks = (submitted..submitted + n)
                .map(|i| TaskSpec::new("echo", json!({ "message": i })))
                .collect();
            let submit = Message::TaskSubmit(TaskSubmit { tasks, batch: true });
            let line = Envelope::new(submit)
                .with_id(format!("batch-{submitted}"))
                .to_line();
            writer.write_all(&line).context("submit a batch")?;
            submitted += n;
        }
        if let Some(err) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bail!("{err}; the master's log says:\n{}", master.log_tail());
        }
        let now = Instant::now();
        let all_done = finished >= total;
        if now >= next_sample || all_done {
            let (db, wal) = db_bytes(&db_dir);
            samples.push(Sample {
                secs: now.duration_since(started).as_secs_f64(),
                done: finished,
                rss_kib: ProcSample::of(master.pid())?.rss_kib,
                db_bytes: db,
                wal_bytes: wal,
                stored_finished: stored_finished(&mut probe, samples.len())?,
            });
            next_sample += soak.sample_every;
            if let Some(gone) = workers.iter_mut().position(|worker| !worker.running()) {
                bail!(
                    "a worker exited during the run; its log says:\n{}",
                    workers[gone].log_tail()
                );
            }
            if !master.running() {
                bail!("the master died: {}", master.log_tail());
            }
        }
        if all_done {
            break;
        }
        if heard_at.elapsed() > PATIENCE {
            bail!("no result for {PATIENCE:?} ({finished} of {total} done)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak = ProcSample::of(master.pid())?.peak_rss_kib;
    drop(workers);

    // After warm-up: the last half of the samples (at least one).
    let settled = &samples[samples.len() / 2..];
    let rss_spread = spread(settled.iter().map(|s| s.rss_kib));
    let db_spread = spread(settled.iter().map(|s| s.db_bytes));
    let rss_growth = growth(&samples, |s| s.rss_kib);
    let db_growth = growth(&samples, |s| s.db_bytes);
    let mut report = Report::new("soak");
    report.note(format!(
        "{} echo tasks, batches of {}, at most {} batches ahead, {} workers x {} slots, \
         retention {retention} (failed too), a sample every {:.1} s",
        params.tasks,
        params.batch,
        params.window,
        params.workers,
        params.slots,
        soak.sample_every.as_secs_f64()
    ));
    report.detail(format!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "secs", "done", "RSS MiB", "DB MiB", "of it WAL", "stored fin."
    ));
    for s in &samples {
        report.detail(format!(
            "{:>8.1} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            s.secs,
            s.done,
            s.rss_kib as f64 / 1024.0,
            s.db_bytes as f64 / (1024.0 * 1024.0),
            s.wal_bytes as f64 / (1024.0 * 1024.0),
            s.stored_finished
        ));
    }
    report.info("all results recorded", format!("{elapsed:.1} s"));
    report.info("tasks/s", thousands(total as f64 / elapsed));
    report.info(
        "tasks completed",
        format!("{} of {total}", completed.load(Ordering::Relaxed)),
    );
    report.info("master peak RSS", mib(peak));
    report.target(
        "RSS peak, last half / first half",
        format!("{rss_growth:.2}"),
        format!("<= {FLAT_BAND}"),
        rss_growth <= FLAT_BAND,
    );
    report.target(
        "DB size peak, last half / first half",
        format!("{db_growth:.2}"),
        format!("<= {FLAT_BAND}"),
        db_growth <= FLAT_BAND,
    );
    report.info("RSS max/min in the last half", format!("{rss_spread:.2}"));
    report.info(
        "DB size max/min in the last half",
        format!("{db_spread:.2}"),
    );
    report.set("tasks", params.tasks);
    report.set("batch", params.batch);
    report.set("window", params.window);
    report.set("workers", params.workers);
    report.set("slots", params.slots);
    report.set("retention_secs", soak.retention_secs);
    report.set("elapsed_secs", round(elapsed, 2));
    report.set("tasks_per_sec", round(total as f64 / elapsed, 1));
    report.set("master_peak_rss_kib", peak);
    report.set("rss_spread", round(rss_spread, 3));
    report.set("db_spread", round(db_spread, 3));
    report.set("rss_growth", round(rss_growth, 3));
    report.set("db_growth", round(db_growth, 3));
    report.set("flat_band", FLAT_BAND);
    report.set(
        "curve",
        samples
            .iter()
            .map(|s| {
                json!({
                    "secs": round(s.secs, 1),
                    "done": s.done,
                    "rss_kib": s.rss_kib,
                    "db_bytes": s.db_bytes,
                    "wal_bytes": s.wal_bytes,
                    "stored_finished": s.stored_finished,
                })
            })
            .collect::<Vec<_>>(),
    );
    Ok(report)
}
