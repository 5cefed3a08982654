//! What every handler's change leaves behind: the records to persist in
//! the next batch (a task's change also refiles it in the listing), the
//! device's free slots refiled, and the events streamed to subscribers.

use super::records::{DeviceKeyRecord, DeviceRecord};
use super::{ConnId, Core};
use protocol::Event;

impl Core {
    /// Marks a task changed. The batch copies its record when it is taken
    /// (a task leaves memory only once its last write has committed), so
    /// callers need no copy of their own. Every change to a task's record
    /// passes here, so this is where the tasks refile it in their listing
    /// and note the batch a finished one waits for before it may leave.
    pub(super) fn persist_task(&mut self, task_id: &str) {
        self.changes.task(task_id);
        self.tasks.relist(task_id);
        self.tasks
            .note_written(task_id, self.changes.last_write_batch());
    }

    /// Records whether, and how loaded, device `device_id` can take a task
    /// now. Called after every change to a device's connection, status,
    /// pause, slots or active tasks.
    pub(super) fn refresh_slots(&mut self, device_id: &str) {
        self.registry.refresh_slots(device_id);
    }

    /// Marks a device's key record changed, for the next batch.
    pub(super) fn persist_device_key(&mut self, record: &DeviceKeyRecord) {
        self.changes.device_key(record);
    }

    /// Marks a device's record changed, for the next batch.
    pub(super) fn persist_device(&mut self, record: &DeviceRecord) {
        self.changes.device(record);
    }

    /// Streams an event to every subscriber that wants it (see
    /// `Outgoing::event`). Events about durable changes wait for the same
    /// commit as the change.
    pub(super) fn emit(&mut self, event: Event, durable: bool) {
        if !matches!(event, Event::TaskFinished { .. }) {
            // A finished task is noted by `emit_finished`, subscribers or not.
            self.observe_event(&event);
        }
        // From the index, by the event's task: the cost is the connections
        // it goes to, whatever the other subscribers follow.
        let targets = self.registry.subscribers.targets(event.task_id());
        if targets.is_empty() {
            return;
        }
        let targets: Vec<(ConnId, bool)> = targets
            .into_iter()
            .map(|conn| (conn, self.is_trusted(conn)))
            .collect();
        let after_batch = durable.then(|| self.changes.last_write_batch());
        self.out.event(event, after_batch, &targets);
    }

    /// Announces that a task finished, with the task in full, if anyone
    /// follows it.
    pub(super) fn emit_finished(&mut self, task_id: &str) {
        self.observe_finished(task_id);
        // The event carries the task in full: made only for someone.
        if !self.registry.subscribers.want(task_id) {
            return;
        }
        if let Ok(task) = self.task_view(task_id) {
            self.emit(
                Event::TaskFinished {
                    task: Box::new(task),
                },
                true,
            );
        }
    }
}
