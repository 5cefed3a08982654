//! What the core wants done on connections, in the order it decided it:
//! messages to send (each tagged with the batch it waits for), connections
//! to trust and connections to close. The event loop drains them
//! (`Core::drain_outputs`) into the [`super::outbox::Outbox`].

use super::{assign_message_id, ConnId, Output, Payload};
use protocol::{Envelope, ErrorCode, Event, Message};
use serde_json::Value;
use std::sync::Arc;

/// The outputs not yet taken by the event loop.
#[derive(Debug)]
pub(super) struct Outgoing {
    /// The master's `sender_id` on its own messages.
    master_id: String,
    outputs: Vec<Output>,
}

impl Outgoing {
    /// Nothing to do yet; messages go out under `master_id`.
    pub(super) fn new(master_id: String) -> Outgoing {
        Outgoing {
            master_id,
            outputs: Vec::new(),
        }
    }

    /// Queues an output as it is.
    pub(super) fn push(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// Closes `conn` once what is queued for it has been written.
    pub(super) fn close(&mut self, conn: ConnId) {
        self.outputs.push(Output::Close { conn });
    }

    /// Hands every output so far to `into`.
    pub(super) fn take(&mut self, into: &mut Vec<Output>) {
        into.append(&mut self.outputs);
    }

    /// Sends a JSON message on `conn`, after batch `after_batch` commits.
    pub(super) fn send(&mut self, conn: ConnId, message: Message, after_batch: Option<u64>) {
        let mut envelope = Envelope::new(message).from_sender(self.master_id.clone());
        if let Message::TaskAssign(assign) = &envelope.message {
            if let Some(task_id) = &assign.task.task_id {
                envelope.message_id = Some(assign_message_id(task_id, assign.attempt));
            }
        }
        // Messages that reveal no state need no commit and may overtake
        // held ones: storage events and `storage_unavailable` refusals (they
        // must arrive while the disk is failing, not after it recovers).
        // Heartbeat acks do too; they are sent by `handle_message` itself.
        let reveals_nothing = match &envelope.message {
            Message::Event(Event::StorageFailing | Event::StorageRecovered) => true,
            Message::Error(error) => error.code == ErrorCode::StorageUnavailable,
            _ => false,
        };
        let after_batch = if reveals_nothing { None } else { after_batch };
        self.outputs.push(Output::Send {
            conn,
            payload: Payload::Json(envelope),
            after_batch: after_batch.filter(|&batch| batch > 0),
            overtake: reveals_nothing,
        });
    }

    /// Sends the reply to a text command on `conn`, after batch
    /// `after_batch` commits.
    pub(super) fn send_text(&mut self, conn: ConnId, text: String, after_batch: Option<u64>) {
        self.outputs.push(Output::Send {
            conn,
            payload: Payload::Text(text),
            after_batch: after_batch.filter(|&batch| batch > 0),
            overtake: false,
        });
    }

    /// Sends `event` to each of `targets` (a connection, and whether it has
    /// authenticated), after batch `after_batch` commits.
    ///
    /// The event is built once and shared (see [`Payload::Event`]): its
    /// cost here is a pointer per subscriber, and the loop charges each
    /// connection its bytes as it queues them, against its caps. Peers that
    /// have not authenticated (anonymous readers) get a `task_finished`
    /// without the task's payload and result (see [`summary`]): they can
    /// ask `task ID` for them, a request that is charged to them, and one
    /// event then costs a few hundred bytes each.
    pub(super) fn event(
        &mut self,
        event: Event,
        after_batch: Option<u64>,
        targets: &[(ConnId, bool)],
    ) {
        // Messages that reveal no state need no commit and may overtake
        // held ones (see `send`): the storage events.
        let reveals_nothing = matches!(event, Event::StorageFailing | Event::StorageRecovered);
        let after_batch = if reveals_nothing {
            None
        } else {
            after_batch.filter(|&batch| batch > 0)
        };
        let envelope = |event: Event, master_id: &str| {
            Arc::new(Envelope::new(Message::Event(event)).from_sender(master_id))
        };
        // The summary is made only when someone gets it.
        let untrusted = targets
            .iter()
            .any(|&(_, trusted)| !trusted)
            .then(|| summary(&event))
            .flatten()
            .map(|event| envelope(event, &self.master_id));
        let full = envelope(event, &self.master_id);
        for &(conn, trusted) in targets {
            let shared = match &untrusted {
                Some(summary) if !trusted => summary,
                _ => &full,
            };
            self.outputs.push(Output::Send {
                conn,
                payload: Payload::Event(Arc::clone(shared)),
                after_batch,
                overtake: reveals_nothing,
            });
        }
    }
}

/// What a peer that has not authenticated gets instead of `event`, when
/// that differs: a `task_finished` without the task's payload and result
/// (`payload` is `null`, `result` absent), so that anonymous watchers cost
/// the master little per event. `None` when everyone gets `event` itself.
fn summary(event: &Event) -> Option<Event> {
    let Event::TaskFinished { task } = event else {
        return None;
    };
    // Field by field, so the payload and result are never copied.
    let task = protocol::TaskView {
        task_id: task.task_id.clone(),
        task_type: task.task_type.clone(),
        state: task.state,
        priority: task.priority,
        payload: Value::Null,
        timeout: task.timeout,
        requirements: task.requirements.clone(),
        attempt: task.attempt,
        device_id: task.device_id.clone(),
        submitted_at: task.submitted_at.clone(),
        started_at: task.started_at.clone(),
        finished_at: task.finished_at.clone(),
        retry_at: task.retry_at.clone(),
        max_retries: task.max_retries,
        result: None,
        exit_code: task.exit_code,
        error: task.error.clone(),
        execution_time: task.execution_time,
    };
    Some(Event::TaskFinished {
        task: Box::new(task),
    })
}
