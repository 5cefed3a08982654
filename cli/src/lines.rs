//! One connection's JSON-lines framing, the part every blocking client of the master
//! shares: the CLI's [`Client`](crate::client::Client) and the end-to-end tests' client
//! both read and write through [`Lines`]. It writes whole lines and reads frames, each
//! wait bounded by a deadline; what a frame means is the caller's business.

use protocol::{Frame, LineCodec, LineTooLong};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How much one `read` takes from the socket at most.
const READ_CHUNK: usize = 64 * 1024;

/// Why [`Lines::next_frame`] has no frame.
#[derive(Debug, thiserror::Error)]
pub enum LinesError {
    /// The master closed the connection.
    #[error("the master closed the connection")]
    Closed,
    /// Reading the socket failed.
    #[error("reading from the master failed: {0}")]
    Io(#[source] io::Error),
    /// The master sent a line the codec refuses (longer than the limit).
    #[error("{0}")]
    Decode(#[source] LineTooLong),
}

/// A connected socket with its line codec and the frames read but not yet taken.
#[derive(Debug)]
pub struct Lines {
    stream: TcpStream,
    codec: LineCodec,
    frames: VecDeque<Frame>,
    read_buffer: Vec<u8>,
}

impl Lines {
    /// Wraps a connected stream; lines longer than `max_line` bytes are refused.
    pub fn new(stream: TcpStream, max_line: usize) -> Lines {
        Lines {
            stream,
            codec: LineCodec::new(max_line),
            frames: VecDeque::new(),
            read_buffer: vec![0; READ_CHUNK],
        }
    }

    /// The socket, for callers that set its options, shut it down or read it
    /// themselves.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` (whole lines), blocking at most `timeout` (`None`: without
    /// limit).
    pub fn write(&mut self, bytes: &[u8], timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(timeout)?;
        self.stream.write_all(bytes)
    }

    /// The next frame, read from the socket when none is waiting, or `None` once
    /// `deadline` has passed (`None` as deadline waits without limit).
    pub fn next_frame(&mut self, deadline: Option<Instant>) -> Result<Option<Frame>, LinesError> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Ok(Some(frame));
            }
            let read_timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(left)
                }
            };
            self.stream
                .set_read_timeout(read_timeout)
                .map_err(LinesError::Io)?;
            let read = match self.stream.read(&mut self.read_buffer) {
                Ok(0) => return Err(LinesError::Closed),
                Ok(read) => read,
                // The timeout expired (the kind differs between platforms) or a signal
                // interrupted the read: the loop checks the deadline again.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(err) => return Err(LinesError::Io(err)),
            };
            let mut frames = Vec::new();
            self.codec
                .decode(&self.read_buffer[..read], &mut frames)
                .map_err(LinesError::Decode)?;
            self.frames.extend(frames);
        }
    }
}
