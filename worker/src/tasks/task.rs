//! The interface of a task type: what a running task is given besides its payload
//! ([`TaskContext`]: its id, attempt, cancel token and progress channel) and what it
//! gives back ([`TaskOutcome`]). Every task type, built-in, external or written in Rust
//! ([`Handler`]), meets here, so the modules that run them import this one and not each
//! other.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use protocol::{ResultStatus, TaskProgress, TaskResult, TaskSpec};
use serde_json::{json, Map, Value};

use crate::tasks::exec::CancelToken;

/// How one run of a task ended, before it is wrapped into a [`TaskResult`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    /// Completed, failed, timeout or cancelled.
    pub status: ResultStatus,
    /// The `result` object sent to the master; always holds `output` and `exit_code`.
    pub result: Map<String, Value>,
    /// A one-line reason when the task did not complete.
    pub error: Option<String>,
}

impl TaskOutcome {
    /// A successful outcome whose `output` is `output` and whose `exit_code` is 0.
    pub fn completed(output: Value) -> TaskOutcome {
        TaskOutcome {
            status: ResultStatus::Completed,
            result: base_result(output, Some(0)),
            error: None,
        }
    }

    /// An outcome that did not complete, with `null` output and exit code.
    pub fn unsuccessful(status: ResultStatus, error: impl Into<String>) -> TaskOutcome {
        TaskOutcome {
            status,
            result: base_result(Value::Null, None),
            error: Some(error.into()),
        }
    }

    /// A failed outcome, for bad payloads and handlers that could not do their work.
    pub fn failed(error: impl Into<String>) -> TaskOutcome {
        TaskOutcome::unsuccessful(ResultStatus::Failed, error)
    }

    /// Adds one more field to the `result` object.
    pub fn with_field(mut self, key: &str, value: Value) -> TaskOutcome {
        self.result.insert(key.to_string(), value);
        self
    }

    /// Wraps the outcome into the `task_result` a worker sends for attempt `attempt`.
    pub fn into_task_result(self, task_id: String, attempt: u32, elapsed: Duration) -> TaskResult {
        TaskResult {
            task_id,
            attempt: Some(attempt),
            status: self.status,
            execution_time: Some(elapsed.as_secs_f64()),
            result: Value::Object(self.result),
            error: self.error,
        }
    }
}

/// The `result` object every outcome starts from: `output` and `exit_code`.
pub(crate) fn base_result(output: Value, exit_code: Option<i32>) -> Map<String, Value> {
    let mut result = Map::new();
    result.insert("output".into(), output);
    result.insert("exit_code".into(), json!(exit_code));
    result
}

/// A task type implemented in Rust by a program that embeds the worker.
pub type Handler = Arc<dyn Fn(&TaskSpec, &TaskContext) -> TaskOutcome + Send + Sync>;

/// The least time between two progress messages of one task; reports in between are
/// dropped (except a final one, with `fraction` 1), so a chatty task cannot flood the
/// master.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// What a running task can see and do besides its payload.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task's id.
    pub task_id: String,
    /// The attempt being run.
    pub attempt: u32,
    /// Cancelled when the task must stop (cancel, timeout of a sleep, worker stopping).
    pub cancel: CancelToken,
    progress: ProgressReporter,
}

impl TaskContext {
    /// A context whose progress goes to `progress` (or nowhere when `None`).
    pub fn new(
        task_id: String,
        attempt: u32,
        cancel: CancelToken,
        progress: Option<Sender<TaskProgress>>,
    ) -> TaskContext {
        TaskContext {
            progress: ProgressReporter {
                task_id: task_id.clone(),
                attempt,
                sender: progress,
                last_sent: Arc::new(Mutex::new(None)),
            },
            task_id,
            attempt,
            cancel,
        }
    }

    /// A context that belongs to no session, for running a task outside a worker.
    pub fn detached(cancel: CancelToken) -> TaskContext {
        TaskContext::new(String::new(), 0, cancel, None)
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports progress; the worker sends it to the master as `task_progress`.
    pub fn report_progress(&self, progress: Progress) {
        self.progress.report(progress);
    }

    /// A reporter that can be moved to another thread.
    pub fn progress_reporter(&self) -> ProgressReporter {
        self.progress.clone()
    }
}

/// One progress report. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Fraction done, 0.0 to 1.0 (clamped).
    pub fraction: Option<f64>,
    /// Units done.
    pub done: Option<u64>,
    /// Units in all.
    pub total: Option<u64>,
    /// A short message (cut to 200 characters).
    pub message: Option<String>,
}

impl Progress {
    /// Reads one line of a handler's progress channel: a JSON object with `fraction`,
    /// `done`, `total`, `message`; a bare number (a fraction); or text (a message).
    pub fn parse_line(line: &str) -> Progress {
        let line = line.trim();
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(fields)) => Progress {
                fraction: fields.get("fraction").and_then(Value::as_f64),
                done: fields.get("done").and_then(Value::as_u64),
                total: fields.get("total").and_then(Value::as_u64),
                message: fields
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
            Ok(Value::Number(number)) => Progress {
                fraction: number.as_f64(),
                ..Progress::default()
            },
            _ => Progress {
                message: Some(line.to_string()),
                ..Progress::default()
            },
        }
    }
}

/// The longest progress message kept, in characters.
const MAX_PROGRESS_MESSAGE_CHARS: usize = 200;

/// Sends a task's progress to the worker's session, rate-limited.
#[derive(Debug, Clone)]
pub struct ProgressReporter {
    task_id: String,
    attempt: u32,
    sender: Option<Sender<TaskProgress>>,
    last_sent: Arc<Mutex<Option<Instant>>>,
}

impl ProgressReporter {
    /// Reports progress (see [`TaskContext::report_progress`]).
    pub fn report(&self, progress: Progress) {
        let Some(sender) = &self.sender else { return };
        let fraction = progress
            .fraction
            .filter(|fraction| fraction.is_finite())
            .map(|fraction| fraction.clamp(0.0, 1.0));
        let is_final = fraction == Some(1.0);
        {
            let mut last_sent = self
                .last_sent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if !is_final && last_sent.is_some_and(|last| now - last < MIN_PROGRESS_INTERVAL) {
                return;
            }
            *last_sent = Some(now);
        }
        let message = progress
            .message
            .map(|message| message.chars().take(MAX_PROGRESS_MESSAGE_CHARS).collect());
        // A full or closed channel means the worker is busy or stopping; progress is
        // only informative, so it is dropped rather than waited for.
        let _ = sender.try_send(TaskProgress {
            task_id: self.task_id.clone(),
            attempt: Some(self.attempt),
            fraction,
            done: progress.done,
            total: progress.total,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            Progress::parse_line(r#"{"fraction":0.5,"done":5,"total":10,"message":"half"}"#),
            Progress {
                fraction: Some(0.5),
                done: Some(5),
                total: Some(10),
                message: Some("half".into())
            }
        );
        assert_eq!(Progress::parse_line("0.25").fraction, Some(0.25));
        assert_eq!(
            Progress::parse_line(" resizing photos ").message.as_deref(),
            Some("resizing photos")
        );
    }

    #[test]
    fn progress_is_rate_limited_but_the_final_report_passes() {
        let (sender, received) = crossbeam_channel::unbounded();
        let context = TaskContext::new("t-1".into(), 2, CancelToken::new(), Some(sender));
        for step in 0..10 {
            context.report_progress(Progress {
                fraction: Some(f64::from(step) / 10.0),
                ..Progress::default()
            });
        }
        context.report_progress(Progress {
            fraction: Some(7.0),
            message: Some("x".repeat(1000)),
            ..Progress::default()
        });
        let sent: Vec<TaskProgress> = received.try_iter().collect();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0].fraction, Some(0.0));
        assert_eq!(sent[0].attempt, Some(2));
        assert_eq!(sent[1].fraction, Some(1.0));
        assert_eq!(sent[1].message.as_ref().map(String::len), Some(200));
    }
}
