//! What clients ask of the cluster: submitting tasks (one or a batch,
//! idempotent by id), cancelling one, draining a device, and subscribing
//! to events.

use super::{ConnId, Core, Now, ReplyError};
use protocol::{
    BatchSubmitted, Done, Draining, ErrorCode, Event, Reply, Submitted, Subscribe, Success,
    TaskCancel, TaskChanged, TaskSpec, TaskState, TaskSubmit,
};

impl Core {
    /// Starts (or replaces) `conn`'s subscription. A connection that has
    /// not authenticated takes one of the [`MAX_UNTRUSTED_SUBSCRIBERS`]
    /// places, kept until it leaves.
    pub(super) fn on_subscribe(
        &mut self,
        conn: ConnId,
        subscribe: Subscribe,
    ) -> Result<Reply, ReplyError> {
        let trusted = self.is_trusted(conn);
        self.registry.subscribe(conn, trusted, subscribe)?;
        Ok(Reply::from(Done {
            message: "subscribed".into(),
            success: Success,
        }))
    }

    /// Submits one task or a batch, each checked against the largest task
    /// a worker can be sent. `stored`: client-chosen ids the store holds
    /// (finished tasks no longer in memory), which exist as much as those
    /// in memory do.
    pub(super) fn on_submit(
        &mut self,
        now: Now,
        submit: TaskSubmit,
        stored: &std::collections::BTreeSet<String>,
    ) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        if self.shutting_down {
            return Err(ReplyError::new(
                ErrorCode::ShuttingDown,
                "the master is shutting down",
            ));
        }
        // A task must fit in the `task_assign` line a worker will receive;
        // otherwise every worker it is offered to drops the connection.
        for (index, spec) in submit.tasks.iter().enumerate() {
            let size = protocol::limits::json_len(spec);
            if size > self.config.max_task_bytes {
                return Err(ReplyError::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "task {index} is {size} bytes as JSON; the most a task may be is {} bytes",
                        self.config.max_task_bytes
                    ),
                ));
            }
        }
        let mut ids = Vec::with_capacity(submit.tasks.len());
        let mut created = 0usize;
        for spec in submit.tasks {
            let (task_id, new) = match spec.task_id.as_ref().filter(|id| stored.contains(*id)) {
                Some(id) => (id.clone(), false),
                None => self.submit_one(now, spec),
            };
            created += usize::from(new);
            ids.push(task_id);
        }
        let reply = if submit.batch {
            Reply::from(BatchSubmitted {
                message: format!("{} tasks accepted ({created} new)", ids.len()),
                success: Success,
                // Moved, not copied: a batch holds up to 10,000 ids.
                task_ids: ids,
            })
        } else {
            let message = if created == 1 {
                "task accepted"
            } else {
                "task already exists"
            };
            Reply::from(Submitted {
                created: created == 1,
                message: message.into(),
                success: Success,
                task_id: ids.into_iter().next().unwrap_or_default(),
            })
        };
        Ok(reply)
    }

    /// Queues one task; returns its id and whether it is new. A task whose
    /// client-chosen id already exists is not queued again (idempotent
    /// submit).
    pub(super) fn submit_one(&mut self, now: Now, spec: TaskSpec) -> (String, bool) {
        let (task_id, task_type) = match self.tasks.submit(now, spec) {
            Ok(new) => new,
            Err(existing) => return (existing, false),
        };
        self.persist_task(&task_id);
        self.needs_dispatch = true;
        self.emit(
            Event::TaskSubmitted {
                task_id: task_id.clone(),
                task_type,
            },
            true,
        );
        (task_id, true)
    }

    /// Cancels a task; a worker running it is told to stop.
    pub(super) fn on_cancel(&mut self, now: Now, cancel: TaskCancel) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let task_id = cancel.task_id;
        let (was, holder, attempt) = self.tasks.cancel(now, &task_id, &mut self.timers)?;
        self.persist_task(&task_id);
        if matches!(was, TaskState::Assigned | TaskState::Running) {
            // The device keeps the slot until it reports the attempt's end,
            // because its process may still be running until then.
            self.cancel_on_holder(holder.as_deref(), &task_id, attempt);
        }
        self.emit_finished(&task_id);
        let view = self.task_view(&task_id)?;
        Ok(Reply::from(TaskChanged {
            message: format!("task {task_id} cancelled"),
            success: Success,
            task: view,
        }))
    }

    /// Drains an online device: it finishes its tasks and gets no new ones.
    pub(super) fn on_drain(&mut self, device_id: &str) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let record = self.registry.drain(device_id)?;
        self.persist_device(&record);
        self.emit(
            Event::DeviceDraining {
                device_id: device_id.to_string(),
            },
            true,
        );
        let view = self.device_view(device_id)?;
        Ok(Reply::from(Draining {
            device: view,
            message: format!("device {device_id} is draining"),
            success: Success,
        }))
    }
}
