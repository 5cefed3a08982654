//! The queue of tasks waiting for a device, held once.
//!
//! Architecture invariant: a task is in the queue exactly when its state is
//! `queued`, under the key of its record (`QueueKey::of`); the core's
//! checks after every simulated step hold it to that.

use super::records::TaskRecord;
use protocol::TaskSpec;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Key of a queued task: higher priority first, then submission order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    pub(super) priority: std::cmp::Reverse<u8>,
    pub(super) seq: u64,
    pub(super) task_id: String,
}

impl QueueKey {
    pub(super) fn of(record: &TaskRecord) -> QueueKey {
        QueueKey {
            priority: std::cmp::Reverse(record.spec.priority.0),
            seq: record.seq,
            task_id: record.task_id.clone(),
        }
    }
}

/// What decides where a task may run: its type and its requirements.
fn placement_signature(spec: &TaskSpec) -> String {
    // Most tasks have no requirements: their signature needs no encoder.
    if spec.requirements.is_empty() {
        return format!("{}\u{0}{{}}", spec.task_type);
    }
    format!(
        "{}\u{0}{}",
        spec.task_type,
        serde_json::to_string(&spec.requirements).unwrap_or_default()
    )
}

/// Identifies one placement while it has queued tasks.
pub(super) type PlacementId = u64;

/// The queued tasks, held once: one ordered queue per placement (type and
/// requirements), so a pass of assignment looks at the head of each
/// placement instead of walking tasks that nobody free can take. The queue
/// order across placements is the order of their keys.
#[derive(Debug, Default)]
pub(super) struct TaskQueue {
    ids: HashMap<String, PlacementId>,
    queues: BTreeMap<PlacementId, (String, BTreeSet<QueueKey>)>,
    of_task: HashMap<String, PlacementId>,
    next_id: PlacementId,
}

impl TaskQueue {
    /// Queues a task (its key and spec).
    pub(super) fn insert(&mut self, key: QueueKey, spec: &TaskSpec) {
        if let Some(&old) = self.of_task.get(&key.task_id) {
            // Already queued (under some key): replace it. The core never
            // does this; it costs a walk of that placement's queue.
            if let Some((_, queue)) = self.queues.get_mut(&old) {
                if let Some(stale) = queue.iter().find(|k| k.task_id == key.task_id).cloned() {
                    self.remove(&stale);
                }
            }
        }
        let signature = placement_signature(spec);
        let id = match self.ids.get(&signature) {
            Some(&id) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(signature.clone(), id);
                self.queues.insert(id, (signature, BTreeSet::new()));
                id
            }
        };
        self.of_task.insert(key.task_id.clone(), id);
        if let Some((_, queue)) = self.queues.get_mut(&id) {
            queue.insert(key);
        }
    }

    /// Takes a task out of its queue, if it is queued under `key`.
    pub(super) fn remove(&mut self, key: &QueueKey) {
        let Some(&id) = self.of_task.get(&key.task_id) else {
            return;
        };
        let Some((signature, queue)) = self.queues.get_mut(&id) else {
            return;
        };
        if !queue.remove(key) {
            return;
        }
        self.of_task.remove(&key.task_id);
        if queue.is_empty() {
            self.ids.remove(signature.as_str());
            self.queues.remove(&id);
        }
    }

    /// The first task of every placement.
    pub(super) fn heads(&self) -> BTreeSet<(QueueKey, PlacementId)> {
        self.queues
            .iter()
            .filter_map(|(&id, (_, queue))| Some((queue.first()?.clone(), id)))
            .collect()
    }

    /// The task after `key` in the queue of placement `id`.
    pub(super) fn next_after(&self, id: PlacementId, key: &QueueKey) -> Option<QueueKey> {
        let (_, queue) = self.queues.get(&id)?;
        queue
            .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
            .next()
            .cloned()
    }

    /// Number of queued tasks.
    pub(super) fn len(&self) -> usize {
        self.of_task.len()
    }

    /// Every queued task's key (for checks).
    #[cfg(test)]
    pub(super) fn keys(&self) -> BTreeSet<QueueKey> {
        self.queues
            .values()
            .flat_map(|(_, queue)| queue.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Requirements;

    fn key(priority: u8, seq: u64) -> QueueKey {
        QueueKey {
            priority: std::cmp::Reverse(priority),
            seq,
            task_id: format!("t{seq}"),
        }
    }

    fn spec(task_type: &str, tag: Option<&str>) -> TaskSpec {
        TaskSpec {
            requirements: Requirements {
                tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
                ..Requirements::default()
            },
            ..TaskSpec::new(task_type, serde_json::Value::Null)
        }
    }

    #[test]
    fn placement_queues_split_by_type_and_requirements_and_merge_by_key() {
        let mut queues = TaskQueue::default();
        queues.insert(key(5, 1), &spec("echo", None));
        queues.insert(key(5, 2), &spec("echo", Some("gpu")));
        queues.insert(key(9, 3), &spec("echo", None));
        queues.insert(key(5, 4), &spec("shell", None));
        queues.insert(key(5, 5), &spec("echo", Some("gpu")));
        assert_eq!(queues.len(), 5);
        let heads: Vec<QueueKey> = queues.heads().into_iter().map(|(k, _)| k).collect();
        assert_eq!(heads, [key(9, 3), key(5, 2), key(5, 4)]);
        let (_, gpu) = queues
            .heads()
            .into_iter()
            .find(|(k, _)| *k == key(5, 2))
            .expect("the gpu placement");
        assert_eq!(queues.next_after(gpu, &key(5, 2)), Some(key(5, 5)));
        assert_eq!(queues.next_after(gpu, &key(5, 5)), None);
        queues.remove(&key(5, 2));
        queues.remove(&key(5, 5));
        queues.remove(&key(5, 5)); // not queued: nothing
        queues.remove(&key(7, 3)); // not under this key: nothing
        assert_eq!(queues.heads().len(), 2, "an empty placement is dropped");
        assert_eq!(queues.len(), 3);
        // Queued again under another key (a new priority): moved.
        queues.insert(key(1, 1), &spec("echo", None));
        assert_eq!(queues.len(), 3);
        assert_eq!(
            queues.keys().into_iter().collect::<Vec<_>>(),
            [key(9, 3), key(5, 4), key(1, 1)]
        );
    }
}
