//! What workers report about the tasks they were given: progress, results
//! (fenced by attempt), the `ack` that starts an assignment running and
//! the `error` that refuses it, and putting a task a device held back in
//! the queue.

use super::life;
use super::queue::QueueKey;
use super::timers::TimerKey;
use super::{parse_assign_id, ConnId, Core, Now, ReplyError};
use protocol::{
    Ack, ErrorCode, ErrorReply, Event, Reply, ResultRecorded, Success, TaskResult, TaskState,
};
use serde_json::Value;

impl Core {
    /// A running task reports progress: streamed to subscribers if it is
    /// from the task's current attempt, never persisted.
    pub(super) fn on_progress(
        &mut self,
        conn: ConnId,
        sender: Option<String>,
        progress: protocol::TaskProgress,
    ) {
        let Ok(device_id) = self.speaker(conn, sender) else {
            return;
        };
        let current = self.tasks.by_id.get(&progress.task_id).is_some_and(|task| {
            task.record.device_id.as_deref() == Some(device_id.as_str())
                && !task.record.state.is_terminal()
                && progress.attempt.is_none_or(|a| a == task.record.attempt)
        });
        if current {
            self.emit(Event::TaskProgress(progress), false);
        }
    }

    /// A worker reports an attempt's end: recorded if the attempt is the
    /// task's current one, acknowledged and discarded otherwise.
    pub(super) fn on_result(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        result: TaskResult,
    ) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let device_id = self.speaker(conn, sender)?;
        if self.registry.seen(&device_id, now.monotonic) {
            let due = now.monotonic + self.config.heartbeat_timeout;
            self.timers.set(TimerKey::Heartbeat(device_id.clone()), due);
        }
        let Some(task) = self.tasks.by_id.get(&result.task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {}", result.task_id),
            ));
        };
        let record = &task.record;
        let same_attempt = record.device_id.as_deref() == Some(device_id.as_str())
            && result
                .attempt
                .is_none_or(|attempt| attempt == record.attempt);
        // A device that does not hold the task's current attempt counts the
        // task, if at all, for an attempt that ended since (cancelled, timed
        // out by the master, retried elsewhere): this report is that
        // attempt's end.
        let holds_current = record.device_id.as_deref() == Some(device_id.as_str())
            && matches!(record.state, TaskState::Assigned | TaskState::Running);
        if same_attempt || !holds_current {
            // Whatever happens to the record, this attempt no longer holds
            // one of the device's slots.
            if self.registry.take_away(&device_id, &result.task_id) {
                self.needs_dispatch = true;
            }
        }
        // A requeued task whose attempt nobody else has taken yet still
        // belongs to this attempt: its result is the task's result.
        let current = same_attempt
            && match record.state {
                TaskState::Assigned | TaskState::Running => true,
                TaskState::Queued => result.attempt.is_some(),
                _ => false,
            };
        if !current {
            // A result for an attempt that is no longer current is
            // acknowledged (so the worker forgets it) and never recorded.
            log::info!(
                "discarding stale result for {} attempt {:?} from {device_id}",
                result.task_id,
                result.attempt
            );
            return Ok(Reply::from(ResultRecorded {
                message: "result discarded: the attempt is no longer current".into(),
                recorded: false,
                success: Success,
                task_id: result.task_id,
            }));
        }
        let task_id = result.task_id.clone();
        // A result nested too deep could be stored but never sent back
        // (see `protocol::limits`). It is not kept: the attempt fails with
        // the reason, and the worker is told with an error, on which it
        // drops the result from its outbox instead of resending it.
        let too_deep = protocol::limits::check_result_depth(&result.result).err();
        let mut result = result;
        if let Some(reason) = &too_deep {
            log::warn!("refusing the result of {task_id} from {device_id}: {reason}");
            result.status = protocol::ResultStatus::Failed;
            result.result = Value::Null;
            result.error = Some(format!("the worker's result was refused: {reason}"));
        }
        let Some(task) = self.tasks.by_id.get_mut(&task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            ));
        };
        if task.record.state == TaskState::Queued {
            let key = QueueKey::of(&task.record);
            self.tasks.queue.remove(&key);
        }
        let record = &mut task.record;
        record.exit_code = result
            .result
            .get("exit_code")
            .and_then(Value::as_i64)
            .and_then(|code| i32::try_from(code).ok());
        record.error = result.error.clone().or_else(|| {
            result
                .result
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        record.execution_time = result.execution_time;
        record.result = too_deep.is_none().then_some(result.result);
        self.end_attempt(now, &task_id, life::AttemptEnd::Reported(result.status));
        if let Some(reason) = too_deep {
            return Err(ReplyError::new(
                ErrorCode::InvalidMessage,
                format!("result of {task_id} refused, the attempt failed: {reason}"),
            ));
        }
        Ok(Reply::from(ResultRecorded {
            message: "result recorded".into(),
            recorded: true,
            success: Success,
            task_id,
        }))
    }

    /// A worker accepted an assignment: the task is running.
    pub(super) fn on_worker_ack(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        ack: Ack,
    ) {
        let Some((task_id, attempt)) = ack.original_message_id.as_deref().and_then(parse_assign_id)
        else {
            return;
        };
        let Ok(device_id) = self.speaker(conn, sender) else {
            return;
        };
        let Some(task) = self.tasks.by_id.get_mut(&task_id) else {
            return;
        };
        let record = &mut task.record;
        if record.attempt == attempt
            && record.device_id.as_deref() == Some(device_id.as_str())
            && record.state == TaskState::Assigned
        {
            record.state = TaskState::Running;
            record.started_unix_ms = Some(now.unix_ms);
            self.persist_task(&task_id);
        }
    }

    /// A worker refused an assignment: offer the task elsewhere.
    pub(super) fn on_worker_refusal(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        error: ErrorReply,
    ) {
        let Some((task_id, attempt)) = error
            .original_message_id
            .as_deref()
            .and_then(parse_assign_id)
        else {
            log::debug!(
                "error from peer on conn {conn}: {} ({})",
                error.error,
                error.code
            );
            return;
        };
        let Ok(device_id) = self.speaker(conn, sender) else {
            return;
        };
        let current = self.tasks.by_id.get(&task_id).is_some_and(|task| {
            task.record.attempt == attempt
                && task.record.device_id.as_deref() == Some(device_id.as_str())
                && task.record.state == TaskState::Assigned
        });
        if !current {
            // A cancel or the master's timeout crossed this refusal: the
            // attempt ended but is still counted against the device until
            // the worker reports it. The worker never ran it and will send
            // no result, so the refusal is that end and gives the slot
            // back, unless the device holds the task's current attempt.
            let ended_here = self.tasks.by_id.get(&task_id).is_some_and(|task| {
                !(task.record.device_id.as_deref() == Some(device_id.as_str())
                    && matches!(task.record.state, TaskState::Assigned | TaskState::Running))
            });
            if ended_here && self.registry.take_away(&device_id, &task_id) {
                self.needs_dispatch = true;
            }
            return;
        }
        log::info!(
            "device {device_id} refused {task_id}: {} ({})",
            error.error,
            error.code
        );
        // A device that cannot take work right now is paused briefly; one
        // that will never run this task is not offered it again; an
        // assignment the worker could not read or accept at all
        // (`invalid_message`) fails the task, below.
        let unreadable = error.code == ErrorCode::InvalidMessage;
        let permanent = error.code == ErrorCode::UnsupportedTaskType || unreadable;
        self.registry.take_away(&device_id, &task_id);
        if !permanent {
            let until = now.monotonic + self.config.full_worker_pause;
            if self.registry.pause(&device_id, until) {
                self.timers.set(TimerKey::Pause(device_id.clone()), until);
            }
        }
        if unreadable {
            // Every worker is sent the same bytes, so none would take it:
            // the task ends now, saying why, instead of waiting in the
            // queue (or on a slot) for a device that never comes.
            self.needs_dispatch = true;
            if let Some(task) = self.tasks.by_id.get_mut(&task_id) {
                let record = &mut task.record;
                record.state = TaskState::Failed;
                record.finished_unix_ms = Some(now.unix_ms);
                record.retry_at_unix_ms = None;
                record.error = Some(format!(
                    "device {device_id} could not accept the assignment: {}",
                    error.error
                ));
            }
            self.persist_task(&task_id);
            self.emit_finished(&task_id);
            return;
        }
        if permanent {
            if let Some(task) = self.tasks.by_id.get_mut(&task_id) {
                task.refused_by.insert(device_id.clone());
            }
        }
        self.requeue(&device_id, &task_id);
    }

    /// Puts a task that device `device_id` held back in the queue, in its
    /// original place. The device no longer counts it either way; a task
    /// whose current attempt is not that device's (it ended, or the task
    /// runs elsewhere now) stays as it is.
    pub(super) fn requeue(&mut self, device_id: &str, task_id: &str) {
        self.registry.take_away(device_id, task_id);
        if self.tasks.requeue(device_id, task_id) {
            self.persist_task(task_id);
            self.needs_dispatch = true;
        }
    }
}
