//! What the master observes for people and Prometheus: counters of
//! finished tasks by outcome, histograms of queue wait and run time per
//! task type, and a short log of recent events (`/text/logs`).
//!
//! Sans-IO like the rest of the core: fed from `emit` and `emit_finished`,
//! stamped with the turn's time in `drain_outputs`, and bounded: at most
//! [`MAX_METRIC_TYPES`] task types get their own label (later ones count
//! as `other`) and the log keeps [`RECENT_LOG_LINES`] lines.

use super::records::TaskRecord;
use super::Core;
use protocol::{Event, TaskState};
use std::collections::{BTreeMap, VecDeque};

/// The most task types with a label of their own in the metrics: 32.
/// Types are names clients choose, so later ones share the label `other`
/// and a client cannot grow the exposition without bound.
pub const MAX_METRIC_TYPES: usize = 32;

/// Lines the recent log keeps (`/text/logs`): 500.
pub const RECENT_LOG_LINES: usize = 500;

/// The upper bounds of the duration histograms' buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A histogram of durations in seconds, Prometheus style (cumulative
/// buckets are computed when it is written out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of [`BUCKETS`] (not cumulative); the last
    /// entry counts those above the largest bound.
    pub counts: [u64; BUCKETS.len() + 1],
    /// The sum of all observations.
    pub sum: f64,
    /// How many.
    pub count: u64,
}

impl Histogram {
    /// Counts one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// Milliseconds in a UTC day: 86,400,000 (Unix time has no leap seconds).
pub const DAY_MS: i64 = 86_400_000;

/// The start of the UTC day that holds `unix_ms`, in Unix milliseconds.
pub fn utc_day_start(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(DAY_MS) * DAY_MS
}

/// Tasks completed during one UTC day (`/text/status`'s `completed
/// today`): kept as tasks complete, so a reader asking costs nothing, and
/// started again when a completion or a read falls on a later day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompletedToday {
    /// The start of the day counted ([`utc_day_start`]).
    day: i64,
    /// Completions that day.
    count: u64,
}

impl CompletedToday {
    /// Starts from `count` completions on the day of `now_unix_ms` (what
    /// the store holds at start).
    pub fn seeded(now_unix_ms: i64, count: u64) -> CompletedToday {
        CompletedToday {
            day: utc_day_start(now_unix_ms),
            count,
        }
    }

    /// A task completed at `unix_ms`. One stamped before the day counted
    /// (the wall clock stepped back) belongs to no later day: not counted.
    pub fn note(&mut self, unix_ms: i64) {
        let day = utc_day_start(unix_ms);
        if day > self.day {
            *self = CompletedToday { day, count: 0 };
        }
        if day == self.day {
            self.count = self.count.saturating_add(1);
        }
    }

    /// The completions on the day of `now_unix_ms`: none on a later day
    /// than the one counted.
    pub fn on(&self, now_unix_ms: i64) -> u64 {
        if utc_day_start(now_unix_ms) == self.day {
            self.count
        } else {
            0
        }
    }
}

/// One line of the recent log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When (Unix milliseconds; the turn's time).
    pub unix_ms: i64,
    /// `INFO`, `WARN` or `ERROR`.
    pub level: &'static str,
    /// The device it is about, if any (`/stream/logs?device=`).
    pub device: Option<String>,
    /// What happened.
    pub message: String,
}

/// The log line an event reads as, without its time; `None` for events
/// too frequent to log (progress).
pub fn log_line(event: &Event) -> Option<(&'static str, Option<String>, String)> {
    let line = match event {
        Event::TaskSubmitted { task_id, task_type } => (
            "INFO",
            None,
            format!("Task {task_id} ({task_type}) submitted"),
        ),
        Event::TaskAssigned {
            task_id,
            device_id,
            attempt,
        } => (
            "INFO",
            Some(device_id.clone()),
            format!("Task {task_id} assigned to {device_id} (attempt {attempt})"),
        ),
        Event::TaskProgress(_) => return None,
        Event::TaskFinished { task } => {
            let level = match task.state {
                TaskState::Completed | TaskState::Cancelled => "INFO",
                _ => "WARN",
            };
            let on = task
                .device_id
                .as_ref()
                .map(|device| format!(" on {device}"))
                .unwrap_or_default();
            (
                level,
                task.device_id.clone(),
                format!("Task {} {}{on}", task.task_id, task.state),
            )
        }
        Event::DeviceEnrolled {
            device_id,
            enrolled_from,
        } => (
            "INFO",
            Some(device_id.clone()),
            format!(
                "Device {device_id} enrolled from {}",
                enrolled_from.as_deref().unwrap_or("an unknown address")
            ),
        ),
        Event::DeviceJoined { device_id } => (
            "INFO",
            Some(device_id.clone()),
            format!("Device {device_id} connected"),
        ),
        Event::DeviceLeft { device_id, reason } => (
            "WARN",
            Some(device_id.clone()),
            format!("Device {device_id} disconnected ({reason})"),
        ),
        Event::DeviceDraining { device_id } => (
            "INFO",
            Some(device_id.clone()),
            format!("Device {device_id} is draining"),
        ),
        Event::StorageFailing => (
            "ERROR",
            None,
            "Storage is failing: changes are refused".to_string(),
        ),
        Event::StorageRecovered => ("INFO", None, "Storage recovered".to_string()),
    };
    Some(line)
}

/// The observations.
#[derive(Debug, Default)]
pub struct Observed {
    /// Finished tasks by final state.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Seconds from submission to the start of the last attempt, per type.
    pub queue_wait: BTreeMap<String, Histogram>,
    /// Seconds the last attempt ran, per type.
    pub run_time: BTreeMap<String, Histogram>,
    /// The recent log, oldest first.
    pub log: VecDeque<LogLine>,
    /// Lines made since the last turn's time was known.
    unstamped: Vec<(&'static str, Option<String>, String)>,
    /// Tasks completed this UTC day.
    pub completed_today: CompletedToday,
}

impl Observed {
    /// The label a task type gets.
    fn type_label(&self, task_type: &str) -> String {
        if self.queue_wait.contains_key(task_type) || self.queue_wait.len() < MAX_METRIC_TYPES {
            task_type.to_string()
        } else {
            "other".to_string()
        }
    }

    fn finished(&mut self, record: &TaskRecord) {
        *self.outcomes.entry(record.state.as_str()).or_default() += 1;
        if record.state == TaskState::Completed {
            if let Some(finished) = record.finished_unix_ms {
                self.completed_today.note(finished);
            }
        }
        let label = self.type_label(&record.spec.task_type);
        if let Some(started) = record.started_unix_ms {
            let wait = (started - record.submitted_unix_ms) as f64 / 1000.0;
            self.queue_wait
                .entry(label.clone())
                .or_default()
                .observe(wait);
            if let Some(finished) = record.finished_unix_ms {
                let run = (finished - started) as f64 / 1000.0;
                self.run_time.entry(label).or_default().observe(run);
            }
        }
    }

    fn stamp(&mut self, unix_ms: i64) {
        for (level, device, message) in self.unstamped.drain(..) {
            if self.log.len() == RECENT_LOG_LINES {
                self.log.pop_front();
            }
            self.log.push_back(LogLine {
                unix_ms,
                level,
                device,
                message,
            });
        }
    }
}

impl Core {
    /// Notes an event in the recent log (stamped at the end of the turn).
    pub(super) fn observe_event(&mut self, event: &Event) {
        if let Some(line) = log_line(event) {
            self.observed.unstamped.push(line);
        }
    }

    /// Notes a task that reached its end: its outcome, queue wait and run
    /// time, and a log line.
    pub(super) fn observe_finished(&mut self, task_id: &str) {
        if let Some(record) = self.tasks.record(task_id) {
            self.observed.finished(record);
            let on = record
                .device_id
                .as_ref()
                .map(|device| format!(" on {device}"))
                .unwrap_or_default();
            let level = match record.state {
                TaskState::Completed | TaskState::Cancelled => "INFO",
                _ => "WARN",
            };
            let line = (
                level,
                record.device_id.clone(),
                format!("Task {task_id} {}{on}", record.state),
            );
            self.observed.unstamped.push(line);
        }
    }

    /// Gives the lines noted in this turn its time.
    pub(super) fn stamp_observed(&mut self, unix_ms: i64) {
        self.observed.stamp(unix_ms);
    }

    /// The observations, for `/metrics` and `/text/logs`.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }
}
