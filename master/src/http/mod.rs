//! HTTP/1.1 on the master's own port: the edge codec that turns a request
//! into the message a CLI would send and the reply into a response.
//!
//! Nothing here touches a socket: the event loop (`event_loop/http.rs`)
//! reads the bytes, hands them to [`request::parse_head`], asks
//! [`routes::plan`] what a request needs, feeds the core the messages,
//! and renders the replies with [`render`]. Responses built from replies
//! wait for their batch's commit like every reply (the outbox holds them),
//! so HTTP acknowledges nothing that is not on disk either.
//!
//! - `request.rs`: sniffing, the head (limits, smuggling, traversal).
//! - `routes.rs`: the route table, from a request to a [`routes::Plan`].
//! - `render.rs`: replies to bodies (the CLI's `--json` documents, the
//!   older design's JSON, text, CSV and TSV, Server-Sent Events).
//! - `metrics.rs`: the Prometheus exposition of `/metrics`.
//! - `auth.rs`: the one authorization of state-changing requests.
//! - `session.rs`: the dashboard's sign-in (the `dash` part).
//! - `dashboard/`: the dashboard's pages, served from the binary.

pub mod auth;
pub mod dashboard;
pub mod metrics;
pub mod render;
pub mod request;
pub mod routes;
pub mod session;

use std::time::Duration;

/// The longest request head (request line and headers) a connection may
/// send: 8 KiB, as common servers allow. Past it: 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The most headers a request may carry: 64. Past it: 431.
pub const MAX_HEADERS: usize = 64;

/// The longest body of a request that carries no valid admin token: 4 KiB
/// (the master's pre-authentication line limit; reads have no body). A
/// request with the admin token may send up to the master's `--max-line`
/// (1 MiB), the largest message the protocol takes. Past it: 413.
pub const UNTRUSTED_MAX_BODY: usize = crate::DEFAULT_PRE_AUTH_MAX_LINE;

/// How long a request may take to arrive once its first byte has, on a
/// connection past its authentication deadline: 10 s. Past it the
/// connection gets 408 and is closed (a slowloris). Before a connection's
/// first request the authentication deadline (`--auth-deadline`, 5 s)
/// applies, as on the TCP protocol.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a keep-alive connection may stay idle between requests: 60 s.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most requests of one connection waiting for their responses
/// (pipelined): 16. The next is not read until one is answered.
pub const MAX_PIPELINED: usize = 16;

/// How often `/stream/devices` sends the device list: every 5 s.
pub const STREAM_DEVICES_INTERVAL: Duration = Duration::from_secs(5);

/// How long a Server-Sent Events stream (`/api/v1/events`, `/stream/devices`,
/// `/stream/logs`) may stay silent before the master sends a comment line
/// (`: keep-alive`), by default: 15 s. Proxies and browsers drop a stream
/// that sends nothing for a while (often 30 to 60 s); the comment keeps it
/// open and is ignored by `EventSource`. `--sse-keep-alive` sets it.
pub const SSE_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The comment a silent stream sends every
/// [`SSE_KEEP_ALIVE_INTERVAL`], as it goes on the wire (one chunk).
pub fn keep_alive_chunk() -> Vec<u8> {
    chunk(b": keep-alive\n\n")
}

/// A response status the master uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 100: go on sending the body (`Expect: 100-continue`).
    Continue,
    /// 200.
    Ok,
    /// 400: malformed, smuggling, traversal, or a bad argument.
    BadRequest,
    /// 401: the request needs the admin token, or the token is wrong.
    Unauthorized,
    /// 403: the credential may not do this.
    Forbidden,
    /// 404: no such route, task or device.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 409: the target's state forbids it.
    Conflict,
    /// 411: a chunked request body.
    LengthRequired,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 431: the head is too large or has too many headers.
    HeadersTooLarge,
    /// 500.
    InternalError,
    /// 503: the store does not take writes, or the master is full or
    /// shutting down.
    Unavailable,
}

impl Status {
    /// The code and reason phrase.
    pub fn line(self) -> (u16, &'static str) {
        match self {
            Status::Continue => (100, "Continue"),
            Status::Ok => (200, "OK"),
            Status::BadRequest => (400, "Bad Request"),
            Status::Unauthorized => (401, "Unauthorized"),
            Status::Forbidden => (403, "Forbidden"),
            Status::NotFound => (404, "Not Found"),
            Status::MethodNotAllowed => (405, "Method Not Allowed"),
            Status::RequestTimeout => (408, "Request Timeout"),
            Status::Conflict => (409, "Conflict"),
            Status::LengthRequired => (411, "Length Required"),
            Status::PayloadTooLarge => (413, "Payload Too Large"),
            Status::HeadersTooLarge => (431, "Request Header Fields Too Large"),
            Status::InternalError => (500, "Internal Server Error"),
            Status::Unavailable => (503, "Service Unavailable"),
        }
    }

    /// The status a protocol error code is answered with.
    pub fn of(code: protocol::ErrorCode) -> Status {
        use protocol::ErrorCode as E;
        match code {
            E::NotFound => Status::NotFound,
            E::AuthRequired | E::AuthFailed => Status::Unauthorized,
            E::Forbidden | E::DeviceRevoked => Status::Forbidden,
            E::InvalidState | E::DeviceIdTaken => Status::Conflict,
            E::StorageUnavailable | E::ShuttingDown | E::TooManyConnections => Status::Unavailable,
            E::AuthTimeout => Status::RequestTimeout,
            E::InternalError => Status::InternalError,
            E::LineTooLong => Status::PayloadTooLarge,
            _ => Status::BadRequest,
        }
    }
}

/// A request refused before it reached the core: its status and why.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    /// The status.
    pub status: Status,
    /// Why, for people.
    pub message: String,
    /// The `error_code` of the JSON body under `/api/`.
    pub code: String,
    /// The methods the route takes, for a 405's `Allow` header.
    pub allow: Option<&'static str>,
}

impl HttpError {
    /// An error with its status's usual code.
    pub fn new(status: Status, message: impl Into<String>) -> HttpError {
        let code = match status {
            Status::BadRequest => "BAD_REQUEST",
            Status::Unauthorized => "AUTH_REQUIRED",
            Status::Forbidden => "FORBIDDEN",
            Status::NotFound => "NOT_FOUND",
            Status::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Status::RequestTimeout => "REQUEST_TIMEOUT",
            Status::Conflict => "INVALID_STATE",
            Status::LengthRequired => "LENGTH_REQUIRED",
            Status::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Status::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Status::Unavailable => "UNAVAILABLE",
            Status::Continue | Status::Ok | Status::InternalError => "INTERNAL_ERROR",
        };
        HttpError {
            status,
            message: message.into(),
            code: code.to_string(),
            allow: None,
        }
    }

    /// The same error with another `error_code`.
    pub fn with_code(mut self, code: &str) -> HttpError {
        self.code = code.to_string();
        self
    }

    /// The error the core answered a request's message with: its status
    /// by code, and the protocol's code in capitals as `error_code`.
    pub fn from_reply(reply: &protocol::ErrorReply) -> HttpError {
        HttpError {
            status: Status::of(reply.code),
            message: reply.error.clone(),
            code: reply.code.as_str().to_ascii_uppercase(),
            allow: None,
        }
    }

    /// The response for a request to `path`: JSON under `/api/`, plain
    /// text elsewhere.
    pub fn response(&self, path: &str) -> Response {
        let response = self.body(path);
        match self.allow {
            Some(allow) => response.with_header("Allow", allow),
            None => response,
        }
    }

    fn body(&self, path: &str) -> Response {
        if path.starts_with("/api/") {
            let body = serde_json::json!({
                "status": "error",
                "message": self.message,
                "error_code": self.code,
            });
            Response::json(self.status, &body)
        } else {
            Response::text(self.status, format!("{}\n", self.message))
        }
    }
}

/// A whole response, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The status.
    pub status: Status,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// More headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: Status, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    /// A JSON response.
    pub fn json(status: Status, body: &impl serde::Serialize) -> Response {
        let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
        bytes.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: bytes,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire: status line, headers, and the body unless
    /// `head_only` (`HEAD`, whose `Content-Length` is still the body's).
    pub fn to_bytes(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let (code, reason) = self.status.line();
        let mut out = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: {}\r\n",
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The head of a Server-Sent Events response: chunked, never cached.
pub fn stream_head() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
X-Content-Type-Options: nosniff\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        .to_vec()
}

/// `bytes` as one chunk of a chunked body.
pub fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

/// One Server-Sent Event, as a chunk: `id`, `event` and one `data` line
/// (JSON holds no raw newline).
pub fn event_chunk(id: Option<&str>, event: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    chunk(&out)
}
