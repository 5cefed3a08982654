//! Measures the per-task overhead of the sandbox: the time from asking the worker's
//! executor to run a `shell` task with argv `["true"]` until its result is ready
//! (private directory, environment, rlimits, Landlock, spawn, wait, clean-up, result),
//! on the same code path a worker uses.
//!
//! ```sh
//! cargo run --release -p worker --example sandbox_overhead -- 500
//! ```
//!
//! It prints the p50, p90 and p99 of that many runs (default 300) after a warm-up, and
//! for comparison the same for `true` run by `exec::run` alone (process group, pipes,
//! wait, no sandbox).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::{ResultStatus, TaskSpec};
use serde_json::json;
use worker::tasks::exec::{self, CancelToken};
use worker::tasks::executor::Executor;
use worker::ExecutionConfig;
use worker::TaskContext;

fn main() -> anyhow::Result<()> {
    let n_runs: usize = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 300,
    };
    let executor = Executor::new(ExecutionConfig::default(), BTreeMap::new())?;
    let mut task = TaskSpec::new("shell", json!({"argv": ["true"]}));
    task.task_id = Some("overhead".into());
    task.timeout = Some(30.0);
    let run_once = || {
        let started = Instant::now();
        let outcome = executor.run(&task, &TaskContext::detached(CancelToken::new()));
        let took = started.elapsed();
        assert_eq!(outcome.status, ResultStatus::Completed, "{outcome:?}");
        (took, outcome)
    };
    let (_, first) = run_once();
    for _ in 0..20 {
        run_once();
    }
    let sandboxed: Vec<Duration> = (0..n_runs).map(|_| run_once().0).collect();
    report("sandboxed `true` (shell task, argv form)", sandboxed);
    let plain = exec::Command::Argv(vec!["true".into()]);
    let bare: Vec<Duration> = (0..n_runs)
        .map(|_| {
            let started = Instant::now();
            let outcome = exec::run(
                &plain,
                &worker::tasks::limits::TaskLimits::default(),
                &CancelToken::new(),
            );
            assert!(outcome.is_ok_and(|outcome| outcome.succeeded()));
            started.elapsed()
        })
        .collect();
    report("`true` without the sandbox (exec::run)", bare);
    println!("enforced: {}", first.result["sandbox"]);
    Ok(())
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |quantile: f64| times[((times.len() - 1) as f64 * quantile).round() as usize];
    println!(
        "{what}, {} runs: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        times.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    );
}
