//! The tasks: every task the master knows, by id, and the queue of those
//! waiting for a device.

use super::queue::{QueueKey, TaskQueue};
use super::records::TaskRecord;
use protocol::TaskState;
use std::collections::{BTreeSet, HashMap};

#[derive(Debug)]
pub(super) struct Task {
    pub(super) record: TaskRecord,
    /// Devices that refused this task; it is not offered to them again.
    pub(super) refused_by: BTreeSet<String>,
    /// The state it is filed under in the listing index (see
    /// `Core::relist_task`).
    pub(super) listed: TaskState,
}

impl Task {
    /// A task to be added to `Tasks::by_id` (and then listed with
    /// `Core::list_task`).
    pub(super) fn new(record: TaskRecord) -> Task {
        Task {
            listed: record.state,
            record,
            refused_by: BTreeSet::new(),
        }
    }
}

/// Every task, and the queue.
#[derive(Debug)]
pub(super) struct Tasks {
    /// Every task, by id. Tasks are never removed.
    pub(super) by_id: HashMap<String, Task>,
    /// The queued tasks, by placement.
    pub(super) queue: TaskQueue,
    /// The `seq` the next new task gets (submission order).
    pub(super) next_seq: u64,
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks {
            by_id: HashMap::new(),
            queue: TaskQueue::default(),
            next_seq: 1,
        }
    }
}

impl Tasks {
    /// Puts task `task_id`, whose state is `queued`, in the queue under
    /// its record's key (without copying the record).
    pub(super) fn enqueue(&mut self, task_id: &str) {
        if let Some(task) = self.by_id.get(task_id) {
            self.queue
                .insert(QueueKey::of(&task.record), &task.record.spec);
        }
    }

    /// The record of task `task_id`.
    pub(super) fn record(&self, task_id: &str) -> Option<&TaskRecord> {
        self.by_id.get(task_id).map(|task| &task.record)
    }
}
