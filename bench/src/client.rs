//! A small JSON-lines client on a real socket: what a script or the
//! `retire` CLI does, without the parts the bench does not need.

use anyhow::{bail, Context, Result};
use protocol::{Envelope, Message, Subscribe};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long one read may wait before the bench gives up on the master.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// One connection to the master, read line by line.
pub struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Conn {
    /// Connects, with `TCP_NODELAY` as every peer of the master sets it.
    pub fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).context("connect to the master")?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        let reader = BufReader::with_capacity(1 << 20, stream.try_clone()?);
        Ok(Conn {
            writer: stream,
            reader,
            line: Vec::new(),
        })
    }

    /// A second handle on the same socket, for writing from another
    /// thread while this one reads.
    pub fn writer(&self) -> Result<TcpStream> {
        Ok(self.writer.try_clone()?)
    }

    /// Writes raw bytes (whole lines).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).context("write to the master")
    }

    /// Sends `message` with `message_id` `id`.
    pub fn send(&mut self, id: &str, message: Message) -> Result<()> {
        let line = Envelope::new(message).with_id(id).to_line();
        self.send_raw(&line)
    }

    /// The next line from the master, without its newline.
    pub fn next_line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.line)
            .context("read from the master")?;
        if n == 0 {
            bail!("the master closed the connection");
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
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
