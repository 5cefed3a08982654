//! The changes the core has made since it last handed a batch to the
//! store, and the ids of the batches.
//!
//! Architecture invariant: every change to a task, device or device key
//! is noted here before anything that depends on it is sent, and
//! [`Changes::last_write_batch`] is the batch a reply made now must wait
//! for (the outbox holds it until then).

use super::records::{
    Batch, DeviceKeyRecord, DeviceRecord, EncodedTask, SettingRecord, StoreOp, TaskRecord,
};
use std::collections::{BTreeMap, BTreeSet};

/// Changes not yet handed to the store.
#[derive(Debug)]
pub(super) struct Changes {
    /// Tasks changed since the last batch; the batch takes their records
    /// as they are then (one copy per task and batch, however many times
    /// it changed).
    tasks: BTreeSet<String>,
    devices: BTreeMap<String, DeviceRecord>,
    keys: BTreeMap<String, DeviceKeyRecord>,
    /// Settings changed since the last batch, by name.
    settings: BTreeMap<String, SettingRecord>,
    /// Dead letters to delete (`task_delete`), in order.
    deletes: Vec<String>,
    /// Requests for the store that are not writes (`StoreOp::Prune`), in
    /// order.
    requests: Vec<StoreOp>,
    /// Id the next batch handed to the store will have.
    open_batch: u64,
    /// The newest batch (open or handed out) that holds any write.
    last_write_batch: u64,
    /// The buffer task records are encoded in for the store.
    scratch: Vec<u8>,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            tasks: BTreeSet::new(),
            devices: BTreeMap::new(),
            keys: BTreeMap::new(),
            settings: BTreeMap::new(),
            deletes: Vec::new(),
            requests: Vec::new(),
            open_batch: 1,
            last_write_batch: 0,
            scratch: Vec::new(),
        }
    }
}

impl Changes {
    /// Task `task_id` changed; its record is copied when the batch is taken.
    pub(super) fn task(&mut self, task_id: &str) {
        if !self.tasks.contains(task_id) {
            self.tasks.insert(task_id.to_string());
        }
        self.last_write_batch = self.open_batch;
    }

    /// A device's record changed.
    pub(super) fn device(&mut self, record: &DeviceRecord) {
        self.devices
            .insert(record.device_id.clone(), record.clone());
        self.last_write_batch = self.open_batch;
    }

    /// A device key's record changed.
    pub(super) fn device_key(&mut self, record: &DeviceKeyRecord) {
        self.keys.insert(record.device_id.clone(), record.clone());
        self.last_write_batch = self.open_batch;
    }

    /// A setting changed.
    pub(super) fn setting(&mut self, record: SettingRecord) {
        self.settings.insert(record.key.clone(), record);
        self.last_write_batch = self.open_batch;
    }

    /// Dead letter `task_id` is to be deleted: a write, which a reply made
    /// now waits for.
    pub(super) fn delete_dead_letter(&mut self, task_id: &str) {
        self.deletes.push(task_id.to_string());
        self.last_write_batch = self.open_batch;
    }

    /// A request for the store that is not a write (a reply made now
    /// does not wait for it), carried by the next batch.
    pub(super) fn store_op(&mut self, op: StoreOp) {
        self.requests.push(op);
    }

    /// The newest batch (open or handed out) that holds any write: what a
    /// reply made now waits for.
    pub(super) fn last_write_batch(&self) -> u64 {
        self.last_write_batch
    }

    /// Hands out the changes as one batch, with each changed task's record
    /// as `record_of` gives it now.
    pub(super) fn take_batch<'a>(
        &mut self,
        record_of: impl Fn(&str) -> Option<&'a TaskRecord>,
    ) -> Option<Batch> {
        if self.tasks.is_empty()
            && self.devices.is_empty()
            && self.keys.is_empty()
            && self.settings.is_empty()
            && self.deletes.is_empty()
            && self.requests.is_empty()
        {
            return None;
        }
        // Deletes first: a task submitted again under a deleted id in the
        // same batch is written after its delete.
        let mut ops: Vec<StoreOp> = std::mem::take(&mut self.deletes)
            .into_iter()
            .map(StoreOp::DeleteDeadLetter)
            .collect();
        ops.extend(
            std::mem::take(&mut self.keys)
                .into_values()
                .map(StoreOp::PutDeviceKey),
        );
        ops.extend(
            std::mem::take(&mut self.settings)
                .into_values()
                .map(StoreOp::PutSetting),
        );
        ops.extend(
            std::mem::take(&mut self.devices)
                .into_values()
                .map(StoreOp::PutDevice),
        );
        let scratch = &mut self.scratch;
        ops.extend(
            std::mem::take(&mut self.tasks)
                .into_iter()
                .filter_map(|id| record_of(&id))
                .map(|record| StoreOp::PutTask(EncodedTask::new(record, scratch))),
        );
        ops.append(&mut self.requests);
        let id = self.open_batch;
        self.open_batch += 1;
        Some(Batch { id, ops })
    }
}
