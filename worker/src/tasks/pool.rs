//! A fixed pool of task threads, one per slot, fed by a channel.
//!
//! The pool knows nothing about the protocol: it takes [`Job`]s, runs each with the
//! [`Runner`] it was built with, and sends the finished [`TaskResult`] back over the
//! channel it was given. The session decides how many tasks run at once (it refuses
//! assignments beyond its slots), so the job channel never holds more jobs than there
//! are threads to take them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use protocol::{ResultStatus, TaskProgress, TaskResult, TaskSpec};

use crate::tasks::exec::CancelToken;
use crate::tasks::executor;
use crate::tasks::task::{TaskContext, TaskOutcome};

/// What runs one task: the worker's [`executor::Executor`], or anything an embedding
/// program supplies. The context carries the cancel token and the progress reporter.
pub type Runner = Arc<dyn Fn(&TaskSpec, &TaskContext) -> TaskOutcome + Send + Sync>;

/// One task attempt for the pool to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task, with its id set.
    pub task: TaskSpec,
    /// The attempt the result must carry back.
    pub attempt: u32,
    /// Stops the task when cancelled.
    pub cancel: CancelToken,
}

/// Why a job could not be handed to the pool.
#[derive(Debug, thiserror::Error)]
#[error("the task pool has shut down")]
pub struct PoolClosed(
    /// The job that was not taken (boxed to keep the error small).
    pub Box<Job>,
);

/// A fixed set of threads that run [`Job`]s.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// The number of slots a worker offers unless told otherwise: one per logical CPU.
pub fn default_slots() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

impl Pool {
    /// Starts `slots` threads (at least one) that run jobs with the built-in handlers and
    /// send each result to `results`.
    pub fn with_builtins(slots: usize, results: Sender<TaskResult>) -> std::io::Result<Pool> {
        let runner: Runner = Arc::new(|task: &TaskSpec, context: &TaskContext| {
            executor::run_builtin(task, &context.cancel)
        });
        Pool::new(slots, runner, results)
    }

    /// Starts `slots` threads (at least one) that run jobs with `runner` and send each
    /// result to `results`; progress reports are dropped.
    pub fn new(slots: usize, runner: Runner, results: Sender<TaskResult>) -> std::io::Result<Pool> {
        Pool::with_progress(slots, runner, results, None)
    }

    /// Like [`Pool::new`], and the progress that tasks report goes to `progress`.
    pub fn with_progress(
        slots: usize,
        runner: Runner,
        results: Sender<TaskResult>,
        progress: Option<Sender<TaskProgress>>,
    ) -> std::io::Result<Pool> {
        let (jobs, job_receiver) = crossbeam_channel::unbounded::<Job>();
        let mut pool = Pool {
            jobs: Some(jobs),
            threads: Vec::new(),
        };
        for slot_idx in 0..slots.max(1) {
            let job_receiver = job_receiver.clone();
            let runner = Arc::clone(&runner);
            let results = results.clone();
            let progress = progress.clone();
            let spawned = thread::Builder::new()
                .name(format!("task-slot-{slot_idx}"))
                .spawn(move || serve(&job_receiver, &runner, &results, progress.as_ref()));
            match spawned {
                Ok(handle) => pool.threads.push(handle),
                Err(error) => {
                    // Dropping the half-built pool stops and joins the threads already
                    // started, so none is left waiting for jobs that never come.
                    drop(pool);
                    return Err(error);
                }
            }
        }
        Ok(pool)
    }

    /// The number of task threads.
    pub fn slots(&self) -> usize {
        self.threads.len()
    }

    /// Queues `job`; a free thread picks it up at once.
    pub fn submit(&self, job: Job) -> Result<(), PoolClosed> {
        match &self.jobs {
            Some(jobs) => jobs
                .send(job)
                .map_err(|error| PoolClosed(Box::new(error.into_inner()))),
            None => Err(PoolClosed(Box::new(job))),
        }
    }

    /// Stops taking jobs, lets the threads finish the jobs they hold (cancel them first
    /// to make that quick), and waits for every thread to end.
    pub fn shutdown(&mut self) {
        self.jobs = None;
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                log::error!("a task thread panicked outside a task");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One slot's loop: run jobs until the job channel closes.
fn serve(
    jobs: &Receiver<Job>,
    runner: &Runner,
    results: &Sender<TaskResult>,
    progress: Option<&Sender<TaskProgress>>,
) {
    for job in jobs.iter() {
        let started = Instant::now();
        let task_id = job.task.task_id.clone().unwrap_or_default();
        let context = TaskContext::new(
            task_id.clone(),
            job.attempt,
            job.cancel.clone(),
            progress.cloned(),
        );
        let outcome = if job.cancel.is_cancelled() {
            // Cancelled while it waited for this thread: there is nothing to stop.
            TaskOutcome::unsuccessful(ResultStatus::Cancelled, "cancelled before it started")
        } else {
            // A panicking handler must cost one task, not a slot of the worker.
            catch_unwind(AssertUnwindSafe(|| runner(&job.task, &context))).unwrap_or_else(|panic| {
                TaskOutcome::failed(format!("the handler panicked: {}", panic_text(&panic)))
            })
        };
        let result = outcome.into_task_result(task_id, job.attempt, started.elapsed());
        // The receiver is gone only when the worker is shutting down, and then nobody
        // wants the result any more.
        let _ = results.send(result);
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn job(task_type: &str, payload: serde_json::Value, task_id: &str, attempt: u32) -> Job {
        let mut task = TaskSpec::new(task_type, payload);
        task.task_id = Some(task_id.to_string());
        Job {
            task,
            attempt,
            cancel: CancelToken::new(),
        }
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn runs_jobs_and_reports_results_with_their_attempt() {
        let (results, finished) = crossbeam_channel::unbounded();
        let mut pool = Pool::with_builtins(2, results).expect("pool starts");
        assert_eq!(pool.slots(), 2);
        pool.submit(job("echo", json!({"message": "a"}), "t-a", 1))
            .expect("submit");
        pool.submit(job("echo", json!({"message": "b"}), "t-b", 4))
            .expect("submit");
        let mut got: Vec<TaskResult> = (0..2)
            .map(|_| finished.recv_timeout(LIMIT).expect("a result"))
            .collect();
        got.sort_by(|left, right| left.task_id.cmp(&right.task_id));
        assert_eq!(got[0].task_id, "t-a");
        assert_eq!(got[0].attempt, Some(1));
        assert_eq!(got[0].result["output"], json!("a"));
        assert_eq!(got[1].task_id, "t-b");
        assert_eq!(got[1].attempt, Some(4));
        assert!(got[1].execution_time.is_some());
        pool.shutdown();
        assert!(pool.submit(job("echo", json!({}), "t-c", 1)).is_err());
    }

    #[test]
    fn cancelling_a_job_stops_it() {
        let (results, finished) = crossbeam_channel::unbounded();
        let pool = Pool::with_builtins(1, results).expect("pool starts");
        let sleeper = job("sleep", json!({"seconds": 60}), "t-sleep", 2);
        let cancel = sleeper.cancel.clone();
        pool.submit(sleeper).expect("submit");
        cancel.cancel();
        let result = finished.recv_timeout(LIMIT).expect("a result");
        assert_eq!(result.status, ResultStatus::Cancelled);
        assert_eq!(result.attempt, Some(2));
    }

    #[test]
    fn a_panicking_handler_fails_its_task_and_keeps_the_slot() {
        let (results, finished) = crossbeam_channel::unbounded();
        let runner: Runner = Arc::new(|task: &TaskSpec, _context: &TaskContext| {
            if task.task_type == "boom" {
                panic!("kaboom");
            }
            TaskOutcome::completed(json!("fine"))
        });
        let pool = Pool::new(1, runner, results).expect("pool starts");
        pool.submit(job("boom", json!({}), "t-1", 1))
            .expect("submit");
        pool.submit(job("ok", json!({}), "t-2", 1)).expect("submit");
        let first = finished.recv_timeout(LIMIT).expect("a result");
        assert_eq!(first.status, ResultStatus::Failed);
        assert!(first.error.unwrap_or_default().contains("kaboom"));
        let second = finished.recv_timeout(LIMIT).expect("a result");
        assert_eq!(second.status, ResultStatus::Completed);
    }
}
