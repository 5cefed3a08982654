//! What the core asks the store to keep: one record per device and one per
//! task, each a full snapshot, so writing one is idempotent and the newest
//! write of a batch wins.

use protocol::{DeviceStatus, Register, Requirements, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest number [`generated_seq`] takes from an id, 2^53: the
/// master would need that many submits to generate it, so a larger one in
/// a client's id can never clash with a generated id and moves nothing.
pub const MAX_GENERATED_SEQ: u64 = 1 << 53;

/// The number `N` of an id in the form the master generates for a task
/// whose client chose none, `task-HEX-N` (the submission time in hex and
/// the task's `seq`), if `task_id` has that form and `N` is below
/// [`MAX_GENERATED_SEQ`]. The master never generates an id whose number
/// is at most the highest it has seen in any id, its own or a client's
/// (the store keeps that number even after the tasks are pruned), so a
/// generated id never clashes with a stored one.
pub fn generated_seq(task_id: &str) -> Option<u64> {
    let rest = task_id.strip_prefix("task-")?;
    let (time, number) = rest.split_once('-')?;
    let hex = !time.is_empty() && time.bytes().all(|b| b.is_ascii_hexdigit());
    let decimal = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    if !(hex && decimal) {
        return None;
    }
    number
        .parse::<u64>()
        .ok()
        .filter(|&n| n < MAX_GENERATED_SEQ)
}

/// A device as it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device's id.
    pub device_id: String,
    /// Its role.
    pub role: String,
    /// Its status when written.
    pub status: DeviceStatus,
    /// Its registration, stored as the register's `data` object in the
    /// design's JSON shape (so rows written when this was a JSON value read
    /// back as they are).
    pub profile: Register,
    /// Its tags.
    pub tags: Vec<String>,
    /// Task types it runs (`None`: it did not say).
    pub task_types: Option<Vec<String>>,
    /// Slots.
    pub slots: u32,
    /// Address it connected from.
    pub ip_address: String,
    /// First registration (Unix ms).
    pub registered_unix_ms: i64,
    /// Last message seen (Unix ms).
    pub last_seen_unix_ms: i64,
    /// It keeps running its tasks while away (see `Register::leases`).
    #[serde(default)]
    pub leases: bool,
}

/// A device's credential as it is stored: the public half of the key it
/// enrolled with, and whether it was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeyRecord {
    /// The device's id.
    pub device_id: String,
    /// Its Ed25519 public key as hex (`None`: revoked before it enrolled,
    /// an older worker without credentials).
    pub public_key: Option<String>,
    /// When it enrolled (Unix ms).
    pub enrolled_unix_ms: i64,
    /// The address it enrolled from, when known. Records written before
    /// masters kept it read back as `None`, so no migration is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_from: Option<String>,
    /// When it was revoked (Unix ms); a revoked device never comes back.
    pub revoked_unix_ms: Option<i64>,
}

/// A task as it is stored. Fields that are not set are left out of the
/// JSON (a record is written at every state change, so every byte counts
/// several times); a missing field reads back as not set, so records
/// written either way load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub task_id: String,
    /// Submission order, for FIFO within a priority after a restart.
    pub seq: u64,
    /// The task as submitted (with its id).
    pub spec: TaskSpec,
    /// Its state when written.
    pub state: TaskState,
    /// The current (or last) attempt.
    pub attempt: u32,
    /// The device of the current or last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Submission time (Unix ms).
    pub submitted_unix_ms: i64,
    /// Start of the last attempt (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<i64>,
    /// End of its life (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<i64>,
    /// The worker's result object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The handler's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the last attempt ran, per the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<f64>,
    /// Attempts that failed or timed out so far (since the last retry).
    #[serde(default)]
    pub failures: u32,
    /// Attempts lost with their worker so far (since the last retry).
    #[serde(default)]
    pub lost: u32,
    /// While retrying: when the next attempt may start (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_unix_ms: Option<i64>,
}

impl TaskRecord {
    /// A task just submitted: queued, never attempted.
    pub fn queued(task_id: String, seq: u64, spec: TaskSpec, submitted_unix_ms: i64) -> TaskRecord {
        TaskRecord {
            task_id,
            seq,
            spec,
            state: TaskState::Queued,
            attempt: 0,
            device_id: None,
            submitted_unix_ms,
            started_unix_ms: None,
            finished_unix_ms: None,
            result: None,
            exit_code: None,
            error: None,
            execution_time: None,
            failures: 0,
            lost: 0,
            retry_at_unix_ms: None,
        }
    }

    /// The requirements of the task.
    pub fn requirements(&self) -> &Requirements {
        &self.spec.requirements
    }
}

/// A registration as the JSON object it is stored and shown as.
pub fn profile_value(register: &Register) -> Value {
    // A registration holds only strings, numbers and JSON values with
    // string keys, so it always converts.
    serde_json::to_value(register).unwrap_or(Value::Null)
}

/// A task record as the store writes it, encoded once when the batch is
/// taken: the batch then carries one string per task rather than a copy of
/// its payload and result, which the store thread would encode and free
/// again (freeing another thread's many small allocations is slow too).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTask {
    /// The task's id.
    pub task_id: String,
    /// Submission order.
    pub seq: u64,
    /// Its state when written.
    pub state: TaskState,
    /// The whole [`TaskRecord`] as JSON.
    pub json: String,
    /// When a finished task finished (its submission time if the record
    /// has none); `None` for a live one. Retention prunes by it.
    pub finished_unix_ms: Option<i64>,
}

impl EncodedTask {
    /// Encodes `record`, using `scratch` as the encoder's buffer so that
    /// the string is allocated once, at its size.
    pub fn new(record: &TaskRecord, scratch: &mut Vec<u8>) -> EncodedTask {
        scratch.clear();
        // A record holds only strings, numbers and JSON values: encoding
        // it cannot fail, and serde_json writes UTF-8.
        let _ = serde_json::to_writer(&mut *scratch, record);
        EncodedTask {
            task_id: record.task_id.clone(),
            seq: record.seq,
            state: record.state,
            json: std::str::from_utf8(scratch).map_or_else(|_| String::new(), str::to_owned),
            finished_unix_ms: record
                .state
                .is_terminal()
                .then(|| record.finished_unix_ms.unwrap_or(record.submitted_unix_ms)),
        }
    }

    /// The record back, as the store will load it.
    pub fn record(&self) -> Result<TaskRecord, serde_json::Error> {
        serde_json::from_str(&self.json)
    }
}

/// One of the master's settings as the store keeps it (`settings` table):
/// those changed at run time, such as the placement strategy, which must
/// outlive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingRecord {
    /// The setting's name (`placement_strategy`).
    pub key: String,
    /// Its value, as text.
    pub value: String,
}

/// One change for the store.
// Each op is built once and moved into its batch; boxing the larger
// variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace a device.
    PutDevice(DeviceRecord),
    /// Insert or replace a device's credential record.
    PutDeviceKey(DeviceKeyRecord),
    /// Insert or replace a task.
    PutTask(EncodedTask),
    /// Insert or replace a setting.
    PutSetting(SettingRecord),
    /// Delete the task with this id if it is a dead letter (`task_delete`);
    /// a batch runs its deletes before its puts, so a task submitted again
    /// under the id after the delete is kept.
    DeleteDeadLetter(String),
    /// Not a write of this batch: once it has committed, delete the
    /// finished tasks that finished before a time, in small batches, and
    /// hand the job back (see `core/prune.rs`).
    Prune(PruneJob),
}

/// A `prune` request on its way through the store and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneJob {
    /// The connection that asked.
    pub conn: super::ConnId,
    /// The request's `message_id`, for the reply.
    pub reply_to: Option<String>,
    /// The cutoff: tasks that finished before this are deleted.
    pub before_unix_ms: i64,
}

/// Changes the store commits in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Increasing id; replies held for this batch go out once it commits.
    pub id: u64,
    /// The changes.
    pub ops: Vec<StoreOp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_of_an_id_of_the_generated_form() {
        let check = |id: &str, expect: Option<u64>| {
            assert_eq!(generated_seq(id), expect, "{id}");
        };
        check("task-18c1d2e3f4a-981", Some(981));
        check("task-0-0", Some(0));
        check("task-ABCdef-12", Some(12));
        check(
            &format!("task-1-{}", MAX_GENERATED_SEQ - 1),
            Some(MAX_GENERATED_SEQ - 1),
        );
        check(&format!("task-1-{MAX_GENERATED_SEQ}"), None);
        check("task-1-99999999999999999999999", None);
        check("task-18c1d2e3f4a", None);
        check("task--5", None);
        check("task-1-", None);
        check("task-xyz-5", None);
        check("task-1-5a", None);
        check("task-1-+5", None);
        check("Task-1-5", None);
        check("cli-0123456789abcdef", None);
        check("task-1-2-3", None);
    }
}
