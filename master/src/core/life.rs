//! A task's life beyond one attempt: retries with backoff, the dead-letter
//! state, the master's own timeout, leases for workers that went away, and
//! `task_retry`.
//!
//! Every timer here runs on the monotonic clock the core is handed (`now`),
//! so a wall-clock jump changes none of them.

use super::tasks::Lost;
use super::timers::{TimerKey, TimerKind};
use super::{Core, Now, Reply, ReplyError};
use protocol::{ErrorCode, Event, Message, ResultStatus, TaskCancel, TaskSpec, TaskState};
use serde_json::json;
use std::time::Duration;

/// How an attempt ended, as far as the task's life is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptEnd {
    /// The worker reported it.
    Reported(ResultStatus),
    /// The master gave up waiting for it (timeout plus grace).
    MasterTimeout,
}

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
            let Some(device) = self.registry.devices.get_mut(&device_id) else {
                continue;
            };
            match device.paused_until {
                Some(until) if until <= now.monotonic => {
                    device.paused_until = None;
                    resumed = true;
                    self.refresh_slots(&device_id);
                }
                Some(until) => self.timers.set(TimerKey::Pause(device_id), until),
                None => {}
            }
        }
        resumed
    }

    /// Retries the task may use after its first attempt.
    pub(super) fn max_retries(&self, spec: &TaskSpec) -> u32 {
        spec.max_retries.unwrap_or(self.config.default_max_retries)
    }

    /// Moves a task whose current attempt just ended to its next state:
    /// terminal, or `retrying` with a backoff. The caller has recorded the
    /// attempt's result on the record already.
    pub(super) fn end_attempt(&mut self, now: Now, task_id: &str, end: AttemptEnd) {
        let Some(task) = self.tasks.by_id.get(task_id) else {
            return;
        };
        let max_retries = self.max_retries(&task.record.spec);
        let Some(task) = self.tasks.by_id.get_mut(task_id) else {
            return;
        };
        let record = &mut task.record;
        let failed_as = match end {
            AttemptEnd::Reported(ResultStatus::Completed) => None,
            AttemptEnd::Reported(ResultStatus::Cancelled) => {
                record.state = TaskState::Cancelled;
                record.finished_unix_ms = Some(now.unix_ms);
                self.persist_task(task_id);
                self.emit_finished(task_id);
                return;
            }
            AttemptEnd::Reported(ResultStatus::Failed) => Some(TaskState::Failed),
            AttemptEnd::Reported(ResultStatus::Timeout) | AttemptEnd::MasterTimeout => {
                Some(TaskState::TimedOut)
            }
        };
        let Some(failed_as) = failed_as else {
            record.state = TaskState::Completed;
            record.finished_unix_ms = Some(now.unix_ms);
            record.retry_at_unix_ms = None;
            self.persist_task(task_id);
            self.emit_finished(task_id);
            return;
        };
        record.failures += 1;
        if record.failures <= max_retries {
            let delay = retry_delay(&self.config, record.seq, record.failures);
            record.state = TaskState::Retrying;
            record.retry_at_unix_ms = Some(now.unix_ms + delay.as_millis() as i64);
            let record = record.clone();
            self.timers
                .set(TimerKey::Retry(task_id.to_string()), now.monotonic + delay);
            self.persist_task(&record.task_id);
            log::info!(
                "task {task_id} attempt {} {}; retry {} of {max_retries} in {delay:?}",
                record.attempt,
                failed_as,
                record.failures
            );
            return;
        }
        // A task that asked for no retries simply failed; one that used up
        // its retries goes to the dead-letter state, from which `retire
        // retry` can queue it again.
        record.state = if max_retries == 0 {
            failed_as
        } else {
            TaskState::DeadLetter
        };
        record.finished_unix_ms = Some(now.unix_ms);
        record.retry_at_unix_ms = None;
        self.persist_task(task_id);
        self.emit_finished(task_id);
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
            Some(lost) => {
                if let Some(device) = self.registry.devices.get_mut(device_id) {
                    device.active.remove(task_id);
                }
                if lost == Lost::DeadLetter {
                    self.persist_task(task_id);
                    self.refresh_slots(device_id);
                    self.emit_finished(task_id);
                } else {
                    self.refresh_slots(device_id);
                }
            }
        }
    }

    /// `task_retry`: a finished task that did not complete goes back to
    /// the queue with a fresh retry budget.
    pub(super) fn on_retry(&mut self, now: Now, task_id: &str) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let Some(task) = self.tasks.by_id.get_mut(task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            ));
        };
        let record = &mut task.record;
        if !record.state.is_terminal() || record.state == TaskState::Completed {
            return Err(ReplyError::new(
                ErrorCode::InvalidState,
                format!(
                    "task {task_id} is {}; only failed, timed-out, cancelled or dead-lettered tasks are retried",
                    record.state
                ),
            ));
        }
        record.state = TaskState::Queued;
        // As after a backoff: the last attempt ended, and nothing of it
        // counts for the task any more.
        record.device_id = None;
        record.failures = 0;
        record.lost = 0;
        record.finished_unix_ms = None;
        record.retry_at_unix_ms = None;
        record.error = None;
        task.refused_by.clear();
        self.tasks.enqueue(task_id);
        self.persist_task(task_id);
        self.needs_dispatch = true;
        let _ = now;
        let view = self.task_view(task_id)?;
        Ok(Reply::new(json!({
            "message": format!("task {task_id} queued again"),
            "task": view,
        })))
    }

    /// Fires the task-life timers that are due: retries whose backoff has
    /// passed, attempts past their timeout and grace, and leases that ran
    /// out.
    pub(super) fn tick_task_life(&mut self, now: Now) {
        while let Some(key) = self.timers.pop_due(TimerKind::Retry, now.monotonic) {
            let TimerKey::Retry(task_id) = key else {
                continue;
            };
            let Some(task) = self.tasks.by_id.get_mut(&task_id) else {
                continue;
            };
            if task.record.state != TaskState::Retrying {
                continue;
            }
            task.record.state = TaskState::Queued;
            task.record.retry_at_unix_ms = None;
            // The last attempt ended: no device's report of it may count as
            // the task's result any more, nor may a device take it back.
            task.record.device_id = None;
            self.tasks.enqueue(&task_id);
            self.persist_task(&task_id);
            self.needs_dispatch = true;
        }
        while let Some(key) = self.timers.pop_due(TimerKind::Attempt, now.monotonic) {
            let TimerKey::Attempt(task_id, attempt) = key else {
                continue;
            };
            self.master_timeout(now, &task_id, attempt);
        }
        // Only devices whose lease may have run out (the index holds a
        // lower bound of each lease's end).
        let mut expired = Vec::new();
        for device_id in self.timers.pop_due_devices(TimerKind::Lease, now.monotonic) {
            let Some(until) = self
                .registry
                .devices
                .get(&device_id)
                .and_then(|d| d.lease_until)
            else {
                continue;
            };
            if until <= now.monotonic {
                expired.push(device_id);
            } else {
                self.timers.set(TimerKey::Lease(device_id), until);
            }
        }
        for device_id in expired {
            let Some(device) = self.registry.devices.get_mut(&device_id) else {
                continue;
            };
            device.lease_until = None;
            let held: Vec<String> = device.active.iter().cloned().collect();
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
        let Some(task) = self.tasks.by_id.get(task_id) else {
            return;
        };
        let Some(timeout) = task
            .record
            .spec
            .timeout
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        else {
            return;
        };
        // A timeout too large to add to the clock is never reached.
        let Some(due) = now
            .monotonic
            .checked_add(timeout)
            .and_then(|due| due.checked_add(self.config.timeout_grace))
        else {
            return;
        };
        let key = TimerKey::Attempt(task_id.to_string(), task.record.attempt);
        self.timers.set(key, due);
    }

    /// The worker has not reported an attempt by its timeout plus grace:
    /// the master ends the attempt as timed out and tells the worker to
    /// stop it. The device keeps the slot until it reports, because its
    /// process may still be running.
    fn master_timeout(&mut self, now: Now, task_id: &str, attempt: u32) {
        let Some(task) = self.tasks.by_id.get_mut(task_id) else {
            return;
        };
        let record = &mut task.record;
        if record.attempt != attempt
            || !matches!(record.state, TaskState::Assigned | TaskState::Running)
        {
            return;
        }
        log::warn!("task {task_id} attempt {attempt} gave no result within its timeout and grace");
        record.error = Some("no result within the task's timeout and grace period".into());
        record.exit_code = None;
        let holder = record.device_id.clone();
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
