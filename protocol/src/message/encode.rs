//! Writing messages straight to bytes.
//!
//! The wire layout is the one `Envelope::to_value` gives: every object's
//! keys in sorted order, because a `serde_json::Map` is sorted. The
//! messages the master sends for every task (acks, errors, events and
//! assignments) are written here field by field in that order, so the bytes
//! stay exactly what they were without building a `Value` tree per message.
//! The other messages are rare and go through their `Value`.

use super::{Envelope, Event, Message};
use crate::types::{Requirements, TaskSpec, TaskView};
use serde::ser::{Error as _, Serialize, SerializeMap, Serializer};

/// An envelope in its wire layout.
pub(super) struct EnvelopeOut<'a>(pub(super) &'a Envelope);

impl Serialize for EnvelopeOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let envelope = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("data", &DataOut(&envelope.message))?;
        if let Some(id) = &envelope.message_id {
            map.serialize_entry("message_id", id)?;
        }
        map.serialize_entry("message_type", envelope.message.message_type())?;
        map.serialize_entry("sender_id", &envelope.sender_id)?;
        map.serialize_entry("target_id", &envelope.target_id)?;
        if let Some(timestamp) = &envelope.timestamp {
            map.serialize_entry("timestamp", timestamp)?;
        }
        map.end()
    }
}

/// A message's `data` object.
struct DataOut<'a>(&'a Message);

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Message::Ack(ack) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("original_message_id", &ack.original_message_id)?;
                map.serialize_entry("result", &ack.result)?;
                map.end()
            }
            Message::Error(error) => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("code", error.code.as_str())?;
                map.serialize_entry("error", &error.error)?;
                map.serialize_entry("original_message_id", &error.original_message_id)?;
                map.end()
            }
            Message::TaskAssign(assign) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("attempt", &assign.attempt)?;
                map.serialize_entry("task", &SpecOut(&assign.task))?;
                map.end()
            }
            Message::Event(event) => EventOut(event).serialize(serializer),
            other => other.data_value().serialize(serializer),
        }
    }
}

/// An event: its fields and the `event` tag, in sorted order.
struct EventOut<'a>(&'a Event);

impl Serialize for EventOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            Event::TaskSubmitted { task_id, task_type } => {
                map.serialize_entry("event", "task_submitted")?;
                map.serialize_entry("task_id", task_id)?;
                map.serialize_entry("task_type", task_type)?;
            }
            Event::TaskAssigned {
                task_id,
                device_id,
                attempt,
            } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("device_id", device_id)?;
                map.serialize_entry("event", "task_assigned")?;
                map.serialize_entry("task_id", task_id)?;
            }
            Event::TaskProgress(progress) => {
                optional(&mut map, "attempt", &progress.attempt)?;
                optional(&mut map, "done", &progress.done)?;
                map.serialize_entry("event", "task_progress")?;
                optional(&mut map, "fraction", &progress.fraction)?;
                optional(&mut map, "message", &progress.message)?;
                map.serialize_entry("task_id", &progress.task_id)?;
                optional(&mut map, "total", &progress.total)?;
            }
            Event::TaskFinished { task } => {
                map.serialize_entry("event", "task_finished")?;
                map.serialize_entry("task", &ViewOut(task))?;
            }
            Event::DeviceEnrolled {
                device_id,
                enrolled_from,
            } => {
                map.serialize_entry("device_id", device_id)?;
                optional(&mut map, "enrolled_from", enrolled_from)?;
                map.serialize_entry("event", "device_enrolled")?;
            }
            Event::DeviceJoined { device_id } => {
                map.serialize_entry("device_id", device_id)?;
                map.serialize_entry("event", "device_joined")?;
            }
            Event::DeviceLeft { device_id, reason } => {
                map.serialize_entry("device_id", device_id)?;
                map.serialize_entry("event", "device_left")?;
                map.serialize_entry("reason", reason)?;
            }
            Event::DeviceDraining { device_id } => {
                map.serialize_entry("device_id", device_id)?;
                map.serialize_entry("event", "device_draining")?;
            }
            Event::StorageFailing => map.serialize_entry("event", "storage_failing")?,
            Event::StorageRecovered => map.serialize_entry("event", "storage_recovered")?,
        }
        map.end()
    }
}

/// A task as submitted or assigned, in sorted order.
struct SpecOut<'a>(&'a TaskSpec);

impl Serialize for SpecOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let spec = self.0;
        let mut map = serializer.serialize_map(None)?;
        optional(&mut map, "max_retries", &spec.max_retries)?;
        map.serialize_entry("payload", &spec.payload)?;
        map.serialize_entry("priority", &spec.priority)?;
        requirements(&mut map, &spec.requirements)?;
        optional(&mut map, "task_id", &spec.task_id)?;
        map.serialize_entry("task_type", &spec.task_type)?;
        optional(&mut map, "timeout", &spec.timeout)?;
        map.end()
    }
}

/// A task view, in sorted order.
struct ViewOut<'a>(&'a TaskView);

impl Serialize for ViewOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("attempt", &view.attempt)?;
        optional(&mut map, "device_id", &view.device_id)?;
        optional(&mut map, "error", &view.error)?;
        optional(&mut map, "execution_time", &view.execution_time)?;
        optional(&mut map, "exit_code", &view.exit_code)?;
        optional(&mut map, "finished_at", &view.finished_at)?;
        map.serialize_entry("max_retries", &view.max_retries)?;
        map.serialize_entry("payload", &view.payload)?;
        map.serialize_entry("priority", &view.priority)?;
        requirements(&mut map, &view.requirements)?;
        optional(&mut map, "result", &view.result)?;
        optional(&mut map, "retry_at", &view.retry_at)?;
        optional(&mut map, "started_at", &view.started_at)?;
        map.serialize_entry("state", &view.state)?;
        map.serialize_entry("submitted_at", &view.submitted_at)?;
        map.serialize_entry("task_id", &view.task_id)?;
        map.serialize_entry("task_type", &view.task_type)?;
        optional(&mut map, "timeout", &view.timeout)?;
        map.end()
    }
}

/// Writes `key` only when `value` is set, as `skip_serializing_if =
/// "Option::is_none"` does.
fn optional<M: SerializeMap, T: Serialize>(
    map: &mut M,
    key: &'static str,
    value: &Option<T>,
) -> Result<(), M::Error> {
    match value {
        Some(value) => map.serialize_entry(key, value),
        None => Ok(()),
    }
}

/// Writes `requirements` unless it is empty. Requirements are rare and
/// small, so they go through their `Value`, which sorts their keys.
fn requirements<M: SerializeMap>(map: &mut M, requirements: &Requirements) -> Result<(), M::Error> {
    if requirements.is_empty() {
        return Ok(());
    }
    let value = serde_json::to_value(requirements).map_err(M::Error::custom)?;
    map.serialize_entry("requirements", &value)
}
