//! What the core wants done on connections, in the order it decided it:
//! messages to send (each tagged with the batch it waits for), connections
//! to trust and connections to close. The event loop drains them
//! (`Core::drain_outputs`) into the [`super::outbox::Outbox`].

use super::{assign_message_id, ConnId, Output, Payload};
use protocol::{Envelope, ErrorCode, Event, Message};

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
}
