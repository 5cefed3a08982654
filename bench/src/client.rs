//! A small JSON-lines client on a real socket: what a script or the
//! `retire` CLI does, without the parts the bench does not need. It reads
//! and writes through the CLI's framing (`cli::lines`), and hands out raw
//! lines so that the scenarios decode only what they measure.

use anyhow::{bail, Context, Result};
use cli::lines::Lines;
use protocol::{Envelope, Frame, Message, Subscribe};
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one read may wait before the bench gives up on the master.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// One connection to the master, read line by line.
pub struct Conn {
    lines: Lines,
    line: Vec<u8>,
    patience: Duration,
}

impl Conn {
    /// Connects, with `TCP_NODELAY` as every peer of the master sets it.
    pub fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).context("connect to the master")?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            lines: Lines::new(stream, cli::client::MAX_REPLY_LINE),
            line: Vec::new(),
            patience: PATIENCE,
        })
    }

    /// Sets how long one read may wait (default [`PATIENCE`]).
    pub fn set_patience(&mut self, patience: Duration) {
        self.patience = patience;
    }

    /// A second handle on the same socket, for writing from another
    /// thread while this one reads.
    pub fn writer(&self) -> Result<TcpStream> {
        Ok(self.lines.stream().try_clone()?)
    }

    /// Writes raw bytes (whole lines).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.lines.write(bytes, None).context("write to the master")
    }

    /// Sends `message` with `message_id` `id`.
    pub fn send(&mut self, id: &str, message: Message) -> Result<()> {
        let line = Envelope::new(message).with_id(id).to_line();
        self.send_raw(&line)
    }

    /// The next line from the master, without its newline (blank lines are
    /// skipped).
    pub fn next_line(&mut self) -> Result<&[u8]> {
        let deadline = Instant::now() + self.patience;
        self.line = match self
            .lines
            .next_frame(Some(deadline))
            .context("read from the master")?
        {
            Some(Frame::Json(bytes)) => bytes,
            Some(Frame::Text(text)) => text.into_bytes(),
            None => bail!("nothing from the master within {:?}", self.patience),
        };
        Ok(&self.line)
    }

    /// The next line, parsed.
    pub fn next_value(&mut self) -> Result<Value> {
        let line = self.next_line()?;
        serde_json::from_slice(line).context("the master sent a line that is not JSON")
    }

    /// Sends `message` and waits for its `ack`, dropping whatever comes
    /// before it; an `error` reply fails.
    pub fn request(&mut self, id: &str, message: Message) -> Result<Value> {
        self.send(id, message)?;
        loop {
            let value = self.next_value()?;
            if value["data"]["original_message_id"] != id {
                continue;
            }
            if value["message_type"] == "ack" {
                return Ok(value);
            }
            bail!("the master refused {id}: {}", value["data"]);
        }
    }

    /// Subscribes to every event on this connection.
    pub fn subscribe(&mut self) -> Result<()> {
        self.request("subscribe", Message::Subscribe(Subscribe::default()))?;
        Ok(())
    }

    /// After [`Conn::subscribe`]: waits until `count` `device_joined`
    /// events have arrived.
    pub fn wait_joined(&mut self, count: usize) -> Result<()> {
        let mut joined = 0;
        while joined < count {
            let value = self.next_value()?;
            if value["message_type"] == "event" && value["data"]["event"] == "device_joined" {
                joined += 1;
            }
        }
        Ok(())
    }
}
