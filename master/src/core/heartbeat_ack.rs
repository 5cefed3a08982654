//! The answer to a heartbeat. With thousands of workers it is most of what
//! the master sends, and it is the same every time but for the id it
//! answers and its timestamp, so it is written straight into the
//! connection's buffer instead of going through a tree of JSON values.

use protocol::{Ack, Envelope, HeartbeatReceived, Message, Success};

/// The `ack` to one heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatAck {
    /// The heartbeat's `message_id`.
    pub original_message_id: Option<String>,
    /// How often the worker should heartbeat, in seconds.
    pub heartbeat_interval: f64,
}

impl HeartbeatAck {
    /// The ack as an envelope sent by `master_id`: what [`write_line`]
    /// writes, for whoever wants to look at it as a message.
    ///
    /// [`write_line`]: HeartbeatAck::write_line
    pub fn envelope(&self, master_id: &str) -> Envelope {
        let result = HeartbeatReceived {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_received: true,
            message: "heartbeat received".into(),
            success: Success,
        };
        Envelope::new(Message::Ack(Ack::reply(
            self.original_message_id.clone(),
            result,
        )))
        .from_sender(master_id)
    }

    /// Appends the ack as one line to `out`: the bytes `Envelope::to_line`
    /// makes of [`HeartbeatAck::envelope`] with this `timestamp`, keys in
    /// the same order.
    pub fn write_line(&self, master_id: &str, timestamp: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"data\":{\"original_message_id\":");
        write_json(out, &self.original_message_id);
        out.extend_from_slice(b",\"result\":{\"heartbeat_interval\":");
        write_json(out, &self.heartbeat_interval);
        out.extend_from_slice(
            b",\"heartbeat_received\":true,\"message\":\"heartbeat received\",\"success\":true}},\
              \"message_type\":\"ack\",\"sender_id\":",
        );
        write_json(out, master_id);
        out.extend_from_slice(b",\"target_id\":null,\"timestamp\":");
        write_json(out, timestamp);
        out.extend_from_slice(b"}\n");
    }
}

/// Appends `value` as JSON. Strings, numbers and `null` always serialize
/// (a number that is not finite becomes `null`, as in a JSON value), and
/// writing to a `Vec` cannot fail, so there is no error to report.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_what_the_envelope_encodes_to() {
        for (id, interval, master) in [
            (Some("hb-1-2"), 5.0, "main-node"),
            (None, 1.0, "main-node"),
            (Some("q\"uote\\back\nslash \u{1}é"), 0.25, "a \"master\""),
            (Some(""), 60.0, ""),
            (Some("7"), f64::NAN, "m"),
        ] {
            let ack = HeartbeatAck {
                original_message_id: id.map(str::to_string),
                heartbeat_interval: interval,
            };
            let timestamp = "2026-12-06T10:00:00.123Z";
            let mut envelope = ack.envelope(master);
            envelope.timestamp = Some(timestamp.to_string());
            let mut line = b"already queued\n".to_vec();
            ack.write_line(master, timestamp, &mut line);
            let mut expected = b"already queued\n".to_vec();
            expected.extend_from_slice(&envelope.to_line());
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&expected)
            );
        }
    }
}
