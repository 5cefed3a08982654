//! A task's life beyond one attempt: retries with backoff, the dead-letter
//! state, the master's own timeout, leases for workers that went away, and
//! `task_retry`.
//!
//! Every timer here runs on the monotonic clock the core is handed (`now`),
//! so a wall-clock jump changes none of them.
//!
//! The changes themselves are the parts' methods (`Tasks::end_attempt`,
//! `retry_due`, `time_out`, `Registry::end_lease`, `end_pause`, ...); this
//! file routes between them, the timer table, the changes to persist and
//! the events. It also sets devices' heartbeat deadlines and ends pauses.

use super::registry::Due;
use super::tasks::{Ended, Lost};
use super::timers::{TimerKey, TimerKind};
use super::{Core, Now, Reply, ReplyError};
use protocol::{
    ErrorCode, Event, Message, Success, TaskCancel, TaskChanged, TaskDeleted, TaskSpec, TaskState,
};
use std::time::Duration;

pub(super) use super::tasks::AttemptEnd;

impl Core {
    /// Sets when device `device_id`'s heartbeats stop counting (`None`:
    /// it is not connected).
    pub(super) fn set_heartbeat_due(&mut self, device_id: &str, due: Option<Duration>) {
        let key = TimerKey::Heartbeat(device_id.to_string());
        match due {
            Some(due) if self.registry.devices.contains_key(device_id) => self.timers.set(key, due),
            _ => {
                self.timers.remove(&key);
            }
        }
    }

    /// Ends the pauses that are over; whether any ended.
    pub(super) fn resume_paused(&mut self, now: Now) -> bool {
        let mut resumed = false;
        for device_id in self.timers.pop_due_devices(TimerKind::Pause, now.monotonic) {
            match self.registry.end_pause(&device_id, now.monotonic) {
                Due::Now(()) => resumed = true,
                Due::Later(until) => self.timers.set(TimerKey::Pause(device_id), until),
                Due::Not => {}
            }
        }
        resumed
    }

    /// Retries the task may use after its first attempt.
    pub(super) fn max_retries(&self, spec: &TaskSpec) -> u32 {
        spec.max_retries.unwrap_or(self.config.default_max_retries)
    }

    /// Moves a task whose current attempt just ended to its next state:
    /// terminal, or `retrying` with a backoff (see [`Tasks::end_attempt`]).
    /// The caller has recorded the attempt's result on the record already.
    pub(super) fn end_attempt(&mut self, now: Now, task_id: &str, end: AttemptEnd) {
        let Some(record) = self.tasks.record(task_id) else {
            return;
        };
        let max_retries = self.max_retries(&record.spec);
        let config = &self.config;
        let delay = |seq, failures| retry_delay(config, seq, failures);
        match self
            .tasks
            .end_attempt(now, task_id, end, max_retries, delay)
        {
            None => {}
            Some(Ended::Finished) => {
                self.persist_task(task_id);
                self.emit_finished(task_id);
            }
            Some(Ended::Retry(delay)) => {
                self.timers
                    .set(TimerKey::Retry(task_id.to_string()), now.monotonic + delay);
                self.persist_task(task_id);
            }
        }
    }

    /// A task lost its worker `device_id` (disconnect without a lease,
    /// lease expiry, a worker that no longer knows it): back to the queue,
    /// unless it has lost too many workers already. Only the attempt that
    /// device holds is lost: a task that has moved on since (its attempt
    /// ended, or it runs elsewhere) is only no longer counted there.
    pub(super) fn lose_attempt(&mut self, now: Now, device_id: &str, task_id: &str) {
        let max_lost = self.config.max_lost_attempts;
        match self.tasks.lose_attempt(now, device_id, task_id, max_lost) {
            None => {}
            Some(Lost::Requeue) => self.requeue(device_id, task_id),
            Some(Lost::NotHeld) => {
                self.registry.take_away(device_id, task_id);
            }
            Some(Lost::DeadLetter) => {
                self.registry.take_away(device_id, task_id);
                self.persist_task(task_id);
                self.emit_finished(task_id);
            }
        }
    }

    /// `task_retry`: a finished task that did not complete goes back to
    /// the queue with a fresh retry budget.
    pub(super) fn on_retry(&mut self, now: Now, task_id: &str) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        self.tasks.retry(task_id)?;
        self.persist_task(task_id);
        self.needs_dispatch = true;
        let _ = now;
        let view = self.task_view(task_id)?;
        Ok(Reply::from(TaskChanged {
            message: format!("task {task_id} queued again"),
            success: Success,
            task: view,
        }))
    }

    /// `task_delete`: a dead letter (in memory: the store's record was
    /// brought back first, see `core/history.rs`) is deleted for good. A
    /// task in any other state is refused and stays.
    pub(super) fn on_delete(&mut self, task_id: &str) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let Some(record) = self.tasks.record(task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            ));
        };
        if record.state != TaskState::DeadLetter {
            return Err(not_a_dead_letter(task_id, record.state));
        }
        self.tasks.forget(task_id);
        self.changes.delete_dead_letter(task_id);
        log::info!("dead letter {task_id} deleted");
        Ok(Reply::from(TaskDeleted {
            message: format!("dead letter {task_id} deleted"),
            success: Success,
            task_id: task_id.to_string(),
        }))
    }

    /// Fires the task-life timers that are due: retries whose backoff has
    /// passed, attempts past their timeout and grace, and leases that ran
    /// out.
    pub(super) fn tick_task_life(&mut self, now: Now) {
        while let Some(key) = self.timers.pop_due(TimerKind::Retry, now.monotonic) {
            let TimerKey::Retry(task_id) = key else {
                continue;
            };
            if self.tasks.retry_due(&task_id) {
                self.persist_task(&task_id);
                self.needs_dispatch = true;
            }
        }
        while let Some(key) = self.timers.pop_due(TimerKind::Attempt, now.monotonic) {
            let TimerKey::Attempt(task_id, attempt) = key else {
                continue;
            };
            self.master_timeout(now, &task_id, attempt);
        }
        // Only devices whose lease may have run out (the timer holds a
        // lower bound of each lease's end).
        let mut expired = Vec::new();
        for device_id in self.timers.pop_due_devices(TimerKind::Lease, now.monotonic) {
            match self.registry.end_lease(&device_id, now.monotonic) {
                Due::Now(held) => expired.push((device_id, held)),
                Due::Later(until) => self.timers.set(TimerKey::Lease(device_id), until),
                Due::Not => {}
            }
        }
        for (device_id, held) in expired {
            log::info!(
                "device {device_id} did not come back within its lease; requeueing {} tasks",
                held.len()
            );
            for task_id in held {
                self.lose_attempt(now, &device_id, &task_id);
            }
        }
    }

    /// Starts the master's own clock on an attempt that has a timeout.
    pub(super) fn watch_attempt(&mut self, now: Now, task_id: &str) {
        let grace = self.config.timeout_grace;
        if let Some((attempt, due)) = self.tasks.attempt_deadline(now, task_id, grace) {
            self.timers
                .set(TimerKey::Attempt(task_id.to_string(), attempt), due);
        }
    }

    /// The worker has not reported an attempt by its timeout plus grace:
    /// the master ends the attempt as timed out and tells the worker to
    /// stop it. The device keeps the slot until it reports, because its
    /// process may still be running.
    fn master_timeout(&mut self, now: Now, task_id: &str, attempt: u32) {
        let Some(holder) = self.tasks.time_out(task_id, attempt) else {
            return;
        };
        self.cancel_on_holder(holder.as_deref(), task_id, attempt);
        self.end_attempt(now, task_id, AttemptEnd::MasterTimeout);
    }

    /// Tells the device holding `attempt` of `task_id`, if it is
    /// connected, to stop it. The one place the master sends `task_cancel`:
    /// it names the attempt, so a worker never stops a later one.
    pub(super) fn cancel_on_holder(&mut self, holder: Option<&str>, task_id: &str, attempt: u32) {
        let conn = holder.and_then(|id| self.registry.conn_of(id));
        if let Some(conn) = conn {
            let cancel = TaskCancel {
                task_id: task_id.to_string(),
                attempt: Some(attempt),
            };
            self.out.send(conn, Message::TaskCancel(cancel), None);
        }
    }

    /// Refuses a change while the store cannot save changes.
    pub(super) fn check_storage(&self) -> Result<(), ReplyError> {
        if self.storage_available {
            Ok(())
        } else {
            Err(ReplyError::new(
                ErrorCode::StorageUnavailable,
                "the master cannot save changes right now (disk full or failing); retry later",
            ))
        }
    }

    /// The store reports whether it can commit; while it cannot, changes
    /// are refused with the retryable `storage_unavailable` and reads go on.
    pub fn set_storage_available(&mut self, available: bool) {
        if self.storage_available == available {
            return;
        }
        self.storage_available = available;
        if available {
            log::info!("storage is back: accepting changes again");
            self.emit(Event::StorageRecovered, false);
        } else {
            log::error!("storage is failing: refusing changes until it recovers");
            self.emit(Event::StorageFailing, false);
        }
    }
}

/// Exponential backoff with jitter for the `failures`-th retry: half the
/// doubled base, plus a random half (deterministic per task and retry, so
/// the core stays reproducible on simulated time).
fn retry_delay(config: &super::CoreConfig, seq: u64, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let full = config
        .retry_backoff
        .saturating_mul(1u32 << exponent)
        .min(config.max_retry_backoff);
    // Seeded from the task and the retry alone, never from a global source,
    // so the delay is a pure function of them.
    let fraction = fastrand::Rng::with_seed(seq ^ (u64::from(failures) << 40)).f64();
    full / 2 + full.mul_f64(fraction / 2.0)
}

/// `task_delete`'s refusal of a task in `state`, which is not a dead letter.
pub(super) fn not_a_dead_letter(task_id: &str, state: TaskState) -> ReplyError {
    ReplyError::new(
        ErrorCode::InvalidState,
        format!("task {task_id} is {state}: only a dead letter can be deleted"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let config = super::super::CoreConfig::default();
        for failures in 1..12u32 {
            let full = config
                .retry_backoff
                .saturating_mul(1u32 << (failures - 1))
                .min(config.max_retry_backoff);
            for seq in 0..50u64 {
                let delay = retry_delay(&config, seq, failures);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "{failures} {seq}: {delay:?}"
                );
            }
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..50u64).map(|seq| retry_delay(&config, seq, 3)).collect();
        assert!(spread.len() > 40, "jitter spreads retries apart");
    }
}
