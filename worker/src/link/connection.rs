//! One connection to the master: connecting (with a timeout per address), the
//! socket's options (no Nagle, a write timeout, TCP keepalive and `TCP_USER_TIMEOUT`),
//! a reader thread that turns the bytes into messages, and writing envelopes. This is
//! the only code of the worker that reads or writes the master's socket; the
//! [`client`](super::client) decides when.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use protocol::{DecodeError, Envelope, Frame, LineCodec, DEFAULT_MAX_LINE};
use serde_json::Value;

use crate::session::Outgoing;

/// How long one connection attempt (per resolved address) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write to the master may block before the connection counts as dead. A
/// master that stops reading would otherwise stall the worker's main loop for ever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The size of each read from the socket.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What the reader thread of a connection reports.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A decoded message (boxed: it is far larger than the other variants).
    Message(Box<Envelope>),
    /// A JSON frame that is not a valid message, with its `message_type` if readable.
    Undecodable {
        error: DecodeError,
        message_type: Option<String>,
    },
    /// The connection is over; the reader has ended.
    Closed(String),
}

/// One open connection to the master.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) stream: TcpStream,
    pub(super) incoming: Receiver<Incoming>,
    reader: Option<JoinHandle<()>>,
}

impl Connection {
    /// Configures a freshly connected socket and starts its reader thread.
    pub(super) fn open(stream: TcpStream) -> io::Result<Connection> {
        // Messages are small and each one matters now (an ack the master waits for, a
        // heartbeat), so Nagle's algorithm would only add latency.
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        set_keepalive(&stream);
        let read_half = stream.try_clone()?;
        let (sender, incoming) = crossbeam_channel::unbounded();
        let reader = thread::Builder::new()
            .name("master-reader".into())
            .spawn(move || read_loop(read_half, &sender))?;
        Ok(Connection {
            stream,
            incoming,
            reader: Some(reader),
        })
    }

    /// Writes `outgoing` in one go, each stamped with the current time: a message is
    /// encoded here, a result's line (encoded once, when it was saved) is written as it
    /// is, with the `timestamp` inserted.
    pub(super) fn write(&mut self, outgoing: Vec<Outgoing>) -> io::Result<()> {
        let timestamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let mut bytes = Vec::new();
        for item in outgoing {
            match item {
                Outgoing::Message(mut envelope) => {
                    log::trace!("sending {}", envelope.message.message_type());
                    envelope.timestamp = Some(timestamp.clone());
                    bytes.extend_from_slice(&envelope.to_line());
                }
                Outgoing::Encoded(line) => {
                    log::trace!("sending a saved line");
                    line.write_stamped(&timestamp, &mut bytes);
                }
            }
        }
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    /// Closes the socket, which ends the reader thread's blocking read, and joins it.
    pub(super) fn close(mut self) {
        // The socket may already be dead; shutting it down is only about waking the
        // reader, and a failure means it is awake already.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                log::error!("the connection's reader thread panicked");
            }
        }
    }
}

/// Sets TCP keepalive and TCP_USER_TIMEOUT (the numbers and why are in
/// [`daemon::KEEPALIVE_IDLE`] and its neighbours). A failure is only logged: the
/// session's silence check still catches a dead master.
fn set_keepalive(stream: &TcpStream) {
    for error in daemon::set_keepalive(stream) {
        log::warn!("on the connection to the master: {error}");
    }
}

/// Reads the socket until it closes, sending every frame to `incoming`.
fn read_loop(mut stream: TcpStream, incoming: &Sender<Incoming>) {
    let mut codec = LineCodec::new(DEFAULT_MAX_LINE);
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut frames = Vec::new();
    let reason = loop {
        let n_read = match stream.read(&mut buffer) {
            Ok(0) => break "the master closed the connection".to_string(),
            Ok(n_read) => n_read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => break format!("reading from the master failed: {error}"),
        };
        if let Err(error) = codec.decode(&buffer[..n_read], &mut frames) {
            break format!("the master sent a {error}");
        }
        for frame in frames.drain(..) {
            let item = match frame {
                Frame::Json(bytes) => decode_frame(&bytes),
                Frame::Text(text) => {
                    log::warn!("ignoring a text line from the master: {text:?}");
                    continue;
                }
            };
            if incoming.send(item).is_err() {
                // The main loop has given this connection up.
                return;
            }
        }
    };
    // The main loop may have given the connection up already, and then nobody needs
    // to hear that it closed.
    let _ = incoming.send(Incoming::Closed(reason));
}

/// Decodes one JSON frame, keeping its `message_type` when the rest is invalid so that
/// the session can tell whether the sender expects a reply.
fn decode_frame(bytes: &[u8]) -> Incoming {
    match Envelope::decode(bytes) {
        Ok(envelope) => Incoming::Message(Box::new(envelope)),
        Err(error) => {
            // Only a refused frame is read a second time, for its type: from the
            // document when it parses (the last `message_type` counts, as in the
            // decoder), else leniently, so that a line too deep (or too broken) to
            // parse is still refused by its id (the decoder found that the same way)
            // and its task does not wait on a slot that is not taken.
            let message_type = match serde_json::from_slice::<Value>(bytes) {
                Ok(value) => value
                    .get("message_type")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                Err(_) => protocol::limits::salvage_string(bytes, &["message_type"]),
            };
            Incoming::Undecodable {
                error,
                message_type,
            }
        }
    }
}

/// Resolves `master` (through the system, or Termux's files where the system has no
/// resolver configuration: [`super::dns`]) and connects to the first address that answers.
pub(super) fn connect(master: &str) -> io::Result<TcpStream> {
    let mut last_error = None;
    for address in super::dns::lookup(master)? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{master} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_into_messages_or_errors_with_their_type() {
        let frame = br#"{"message_type":"ack","data":{"original_message_id":"x","result":{}}}"#;
        assert!(matches!(decode_frame(frame), Incoming::Message(_)));
        match decode_frame(br#"{"message_type":"task_assign","message_id":"m","data":{}}"#) {
            Incoming::Undecodable {
                error,
                message_type,
            } => {
                assert_eq!(message_type.as_deref(), Some("task_assign"));
                assert_eq!(error.message_id.as_deref(), Some("m"));
            }
            other => panic!("expected an undecodable frame, got {other:?}"),
        }
        match decode_frame(b"{oops") {
            Incoming::Undecodable {
                error,
                message_type,
            } => {
                assert_eq!(message_type, None);
                assert_eq!(error.code, protocol::ErrorCode::MalformedJson);
            }
            other => panic!("expected an undecodable frame, got {other:?}"),
        }
    }
}
