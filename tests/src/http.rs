//! A small blocking HTTP/1.1 client over a raw socket, for the tests of
//! the master's HTTP surface and the `http` bench scenario: it writes
//! whatever bytes a test wants (malformed ones too) and reads responses
//! and Server-Sent Events exactly as they arrive.

use crate::PATIENCE;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A response as the client reads it.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty after `HEAD`).
    pub body: String,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }
}

/// One connection, for keep-alive and raw bytes.
pub struct Conn {
    /// The socket's writing side.
    pub writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `addr`.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("a read timeout");
        Conn {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// Reads a response head and its `Content-Length` body (`head_only`:
    /// none, as after `HEAD`).
    pub fn response(&mut self, head_only: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("name: value");
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        let length: usize = response
            .header("content-length")
            .map_or(0, |n| n.parse().expect("a length"));
        if !head_only {
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body).expect("the body");
            response.body = String::from_utf8(body).expect("UTF-8");
        }
        response
    }

    /// Sends one request (with the admin's bearer `token`, if given) and
    /// reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Response {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(request.as_bytes());
        self.response(method == "HEAD")
    }

    /// The next Server-Sent Event of a chunked stream: its `event` and
    /// `data` (and `id`).
    pub fn event(&mut self) -> (String, Value, Option<String>) {
        let mut event = String::new();
        let mut data = String::new();
        let mut id = None;
        loop {
            let text = self.chunk();
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    event = value.to_string();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = value.to_string();
                } else if let Some(value) = line.strip_prefix("id: ") {
                    id = Some(value.to_string());
                }
            }
            if !event.is_empty() {
                let data = serde_json::from_str(&data).unwrap_or(Value::Null);
                return (event, data, id);
            }
        }
    }

    /// The text of the next chunk of a chunked body (a Server-Sent Event,
    /// a comment such as `: keep-alive`); panics at the last chunk.
    pub fn chunk(&mut self) -> String {
        let mut size = String::new();
        self.reader.read_line(&mut size).expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex size");
        assert!(size > 0, "the stream ended");
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).expect("a chunk");
        String::from_utf8_lossy(&chunk[..size]).to_string()
    }

    /// Opens a stream at `path` and checks its head.
    pub fn stream(addr: SocketAddr, path: &str, token: Option<&str>) -> Conn {
        let mut conn = Conn::open(addr);
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}\r\n").as_bytes());
        let head = conn.response(true);
        assert_eq!(head.status, 200, "{path}");
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        conn
    }

    /// Reads until the master closes the connection and returns what came
    /// before the close.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .expect("read until closed");
        rest
    }

    /// Reads until the master closes the connection; whether it did.
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}
