//! Writing messages: the one `Serialize` of the envelope and of each
//! message's `data`.
//!
//! The wire layout writes every object's keys in sorted order (the order a
//! `serde_json::Map` keeps, which is what the first encoder wrote and what
//! existing peers and tests compare byte for byte). The wire structs
//! declare their fields in that order, so the derived `Serialize` writes
//! straight to bytes in it; the few messages that carry fields of their
//! own choosing (`register`, `heartbeat`) build a sorted map of their
//! `data`, and an event, whose `event` tag sits among its fields, is
//! written field by field.

use super::{AuthHelloData, Envelope, Event, Message};
use serde::ser::{Serialize, SerializeMap, Serializer};

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("data", &self.message)?;
        if let Some(id) = &self.message_id {
            map.serialize_entry("message_id", id)?;
        }
        map.serialize_entry("message_type", self.message.message_type())?;
        map.serialize_entry("sender_id", &self.sender_id)?;
        map.serialize_entry("target_id", &self.target_id)?;
        if let Some(timestamp) = &self.timestamp {
            map.serialize_entry("timestamp", timestamp)?;
        }
        map.end()
    }
}

/// A message serializes as its `data` object.
impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Message::Register(register) => register.to_data().serialize(serializer),
            Message::Heartbeat(heartbeat) => heartbeat.to_data().serialize(serializer),
            Message::TaskResult(result) => result.serialize(serializer),
            Message::TaskProgress(progress) => progress.serialize(serializer),
            Message::Goodbye(goodbye) => goodbye.serialize(serializer),
            Message::TaskAssign(assign) => assign.serialize(serializer),
            Message::TaskCancel(cancel) => cancel.serialize(serializer),
            Message::TaskSubmit(submit) => {
                let mut map = serializer.serialize_map(Some(1))?;
                match (submit.batch, submit.tasks.as_slice()) {
                    (false, [task]) => map.serialize_entry("task", task)?,
                    _ => map.serialize_entry("tasks", &submit.tasks)?,
                }
                map.end()
            }
            Message::TaskStatus(task) | Message::TaskRetry(task) | Message::TaskDelete(task) => {
                task.serialize(serializer)
            }
            Message::ListTasks(list) => list.serialize(serializer),
            Message::Status => serializer.serialize_map(Some(0))?.end(),
            Message::ListDevices(list) => list.serialize(serializer),
            Message::DeviceInfo(device)
            | Message::DrainDevice(device)
            | Message::RevokeDevice(device) => device.serialize(serializer),
            Message::Subscribe(subscribe) => subscribe.serialize(serializer),
            Message::Prune(prune) => prune.serialize(serializer),
            Message::Strategy(request) => request.serialize(serializer),
            Message::Ack(ack) => ack.write_data(serializer),
            Message::Error(error) => error.serialize(serializer),
            Message::Event(event) => event.serialize(serializer),
            Message::AuthHello(hello) => AuthHelloData::from_domain(hello).serialize(serializer),
            Message::AuthProof(proof) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("proof", &proof.to_string())?;
                map.end()
            }
        }
    }
}

/// An event: its fields and the `event` tag, in sorted order.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
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
                map.serialize_entry("task", task)?;
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
