//! HTTP connections in the event loop: the socket side of `crate::http`.
//!
//! A connection whose first bytes are a request line is HTTP (see
//! `http::request::sniff`); its bytes go to [`HttpConn`] instead of the
//! line codec. Each request becomes the messages a CLI would send, fed to
//! the core under the message ids `http:N`; the replies come back through
//! `EventLoop::apply` like any other, are rendered into a response, and go
//! through the same outbox, so a response waits for its batch's commit and
//! the connection's responses keep their order. Events for a stream
//! become Server-Sent Events in a chunked body, charged against the same
//! backlog caps as any subscriber's: one that never reads is closed.

use super::{EventLoop, Proto, Work};
use crate::core::{ConnId, Output, Payload};
use crate::http::render::{self, Context, Render};
use crate::http::request::{self, Head, Method, Parsed};
use crate::http::routes::{self, Plan, Stream};
use crate::http::session::{self, Fresh, SessionCheck, SessionRequest};
use crate::http::{self as edge, HttpError, Response, Status};
use protocol::{DevicePage, Envelope, ErrorReply, Message, Reply};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// An HTTP connection's state.
#[derive(Debug, Default)]
pub(super) struct HttpConn {
    /// Bytes of requests not handled yet.
    buf: Vec<u8>,
    /// Requests waiting for their replies, in order.
    pending: VecDeque<Pending>,
    /// The id of the next message (`http:N`).
    next_id: u64,
    /// The stream this connection has become, if any; it reads no more
    /// requests then.
    stream: Option<Stream>,
    /// When the first byte of the request being read arrived.
    request_started: Option<Duration>,
    /// When it last sent a request or was answered (for a device stream:
    /// when its last device update was asked for).
    active_at: Duration,
    /// When its stream last had something queued (an event, an update, a
    /// keep-alive comment): a stream silent for `LoopLimits::sse_keep_alive`
    /// gets a `: keep-alive` comment.
    stream_sent_at: Duration,
    /// Its key in `EventLoop::http_checks`.
    check_at: Option<Duration>,
    /// No more requests: a response said `Connection: close`.
    closing: bool,
    /// `100 Continue` was sent for the request being read.
    continue_sent: bool,
    /// The core holds it as an admin's because a request's session said so
    /// (`Core::grant_admin`); the next request without one takes it back.
    session_granted: bool,
}

impl HttpConn {
    /// Bytes it holds of requests not handled yet.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// What a request waits for.
#[derive(Debug)]
enum Waiting {
    /// A response rendered with this.
    Response(Render),
    /// The start of a stream.
    Open(Stream),
    /// The next `device_update` of `/stream/devices`.
    DevicesUpdate,
    /// A page of dead letters, whose tasks are then retried
    /// (`POST /api/v1/dead/retry`).
    DeadLetters,
    /// The retries of these dead letters; `more` when older ones follow.
    Retried {
        /// The tasks, in the order of their messages.
        task_ids: Vec<String>,
        /// Whether more dead letters follow the page.
        more: bool,
    },
}

/// A request waiting for the replies to its messages.
#[derive(Debug)]
struct Pending {
    first_id: u64,
    n: u64,
    replies: Vec<Reply>,
    error: Option<ErrorReply>,
    /// Every part that failed: its message's number and the error.
    errors: Vec<(u64, ErrorReply)>,
    waiting: Waiting,
    head_only: bool,
    keep_alive: bool,
    path: String,
    /// The newest batch any of its replies waits for.
    after: Option<u64>,
}

impl Pending {
    /// A request waiting for `waiting`, its messages not sent yet.
    fn new(waiting: Waiting, head_only: bool, keep_alive: bool, path: &str) -> Pending {
        Pending {
            first_id: 0,
            n: 0,
            replies: Vec::new(),
            error: None,
            errors: Vec::new(),
            waiting,
            head_only,
            keep_alive,
            path: path.to_string(),
            after: None,
        }
    }
}

/// The id of the event stream: the master's start and a count of events,
/// `START-N`.
fn event_id(boot: i64, seq: u64) -> String {
    format!("{boot}-{seq}")
}

fn event_name(event: &protocol::Event) -> &'static str {
    use protocol::Event as E;
    match event {
        E::TaskSubmitted { .. } => "task_submitted",
        E::TaskAssigned { .. } => "task_assigned",
        E::TaskProgress(_) => "task_progress",
        E::TaskFinished { .. } => "task_finished",
        E::DeviceEnrolled { .. } => "device_enrolled",
        E::DeviceJoined { .. } => "device_joined",
        E::DeviceLeft { .. } => "device_left",
        E::DeviceDraining { .. } => "device_draining",
        E::StorageFailing => "storage_failing",
        E::StorageRecovered => "storage_recovered",
    }
}

/// The loop's part of the event ids.
#[derive(Debug, Default)]
pub(super) struct EventIds {
    /// Events numbered so far.
    seq: u64,
    /// The last event numbered; held weakly so its address is not reused
    /// by a later one while it is remembered.
    last: Option<Weak<Envelope>>,
}

impl EventLoop {
    fn http(&mut self, conn: ConnId) -> Option<&mut HttpConn> {
        match self.conns.get_mut(conn).map(|c| &mut c.proto) {
            Some(Proto::Http(http)) => Some(http),
            _ => None,
        }
    }

    /// Takes `bytes` of an HTTP connection and handles the whole requests
    /// they complete while its work budget allows. Everything is taken
    /// (what is not handled yet waits in its buffer).
    pub(super) fn serve_http(&mut self, conn: ConnId, bytes: &[u8], work: &mut Work) -> usize {
        let now = self.now.monotonic;
        let Some(http) = self.http(conn) else {
            return bytes.len();
        };
        if http.stream.is_some() || http.closing {
            // A stream reads no more requests; what it sends is dropped.
            return bytes.len();
        }
        if !bytes.is_empty() {
            http.active_at = now;
        }
        if http.pending.len() >= edge::MAX_PIPELINED && http.buf.len() >= edge::MAX_HEAD_BYTES {
            // Backpressure: it sends requests faster than it takes the
            // answers. Nothing more is taken (the loop keeps this read in
            // `unread` and reads no more) until a response goes out.
            return 0;
        }
        http.buf.extend_from_slice(bytes);
        while let Some(connection) = self.conns.get(conn) {
            if connection.closed || connection.close_when_flushed {
                break;
            }
            let Some(http) = self.http(conn) else {
                break;
            };
            if http.stream.is_some() || http.closing || http.pending.len() >= edge::MAX_PIPELINED {
                break;
            }
            if http.buf.is_empty() {
                http.request_started = None;
                break;
            }
            if work.spent() {
                self.readable.insert(conn);
                break;
            }
            http.request_started.get_or_insert(now);
            let head = match request::parse_head(&http.buf) {
                Err(error) => {
                    self.http_fail(conn, &error, "/");
                    break;
                }
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Head(head)) => head,
            };
            let mut admin = false;
            if let Some(token) = head.bearer() {
                let token = token.to_string();
                match self.core.bearer(conn, &token) {
                    crate::core::Bearer::Admin => {
                        admin = true;
                        self.take_outputs();
                    }
                    crate::core::Bearer::Wrong => {
                        let error = HttpError::new(
                            Status::Unauthorized,
                            "the bearer token is not the admin token; closing the connection",
                        )
                        .with_code("AUTH_FAILED");
                        self.http_fail(conn, &error, &head.path);
                        break;
                    }
                }
            }
            let session = self.session_check(&head);
            let granted = self.http(conn).is_some_and(|http| http.session_granted);
            if session == SessionCheck::Admin && !admin {
                // A signed-in session (with its CSRF token when the request
                // changes something) proves what a bearer token proves, for
                // this request.
                self.core.grant_admin(conn);
                self.take_outputs();
                admin = true;
                if let Some(http) = self.http(conn) {
                    http.session_granted = true;
                }
            } else if granted && !admin {
                // An earlier request's session does not vouch for this one:
                // the core takes the admin role back, and the loop holds the
                // connection to a stranger's caps again.
                self.core.end_grant(conn);
                if let Some(http) = self.http(conn) {
                    http.session_granted = false;
                }
                self.untrust(conn);
            }
            // Read again: the session's grant may have ended above.
            let trusted = admin || self.conns.get(conn).is_some_and(|c| c.trusted);
            let max_body = if trusted {
                self.limits.max_line
            } else {
                edge::UNTRUSTED_MAX_BODY
            };
            if head.content_length > max_body {
                let error = HttpError::new(
                    Status::PayloadTooLarge,
                    format!(
                        "the body is {} bytes; at most {max_body} are accepted{}",
                        head.content_length,
                        if trusted {
                            ""
                        } else {
                            " without the admin token"
                        }
                    ),
                );
                self.http_fail(conn, &error, &head.path);
                break;
            }
            let Some(http) = self.http(conn) else {
                break;
            };
            let whole = head.head_len + head.content_length;
            if http.buf.len() < whole {
                let expects = head
                    .header("expect")
                    .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
                if expects && !http.continue_sent {
                    http.continue_sent = true;
                    self.queue_bytes(
                        conn,
                        b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                        None,
                        false,
                        false,
                    );
                }
                break;
            }
            let body = http.buf[head.head_len..whole].to_vec();
            http.buf.drain(..whole);
            http.request_started = None;
            http.continue_sent = false;
            work.frames = work.frames.saturating_sub(1);
            self.http_stats.http_requests += 1;
            self.http_request(conn, head, &body, admin, &session);
        }
        self.http_schedule(conn);
        bytes.len()
    }

    /// Answers a request that cannot be read on (malformed, too large, a
    /// wrong token) and closes the connection once the answer is written.
    fn http_fail(&mut self, conn: ConnId, error: &HttpError, path: &str) {
        log::debug!(
            "HTTP request on connection {conn} refused: {}",
            error.message
        );
        self.http_respond(conn, error.response(path), false, false, None);
    }

    /// Queues `response`, behind the connection's earlier ones.
    fn http_respond(
        &mut self,
        conn: ConnId,
        response: Response,
        head_only: bool,
        keep_alive: bool,
        after: Option<u64>,
    ) {
        let now = self.now.monotonic;
        let Some(http) = self.http(conn) else {
            return;
        };
        http.active_at = now;
        if !keep_alive {
            http.closing = true;
            http.buf = Vec::new();
        }
        self.queue_bytes(
            conn,
            response.to_bytes(head_only, keep_alive),
            after,
            false,
            false,
        );
        if !keep_alive {
            if let Some(connection) = self.conns.get_mut(conn) {
                connection.close_when_flushed = true;
                connection.unread = Vec::new();
                self.dirty.insert(conn);
                self.close_by(conn, self.now.monotonic + self.limits.drain_timeout);
            }
        }
    }

    /// What the request's session cookie and CSRF header say
    /// (`http/session.rs`); the sign-in route itself is judged by its body.
    fn session_check(&mut self, head: &Head) -> SessionCheck {
        if head.path == session::SESSION_PATH {
            return SessionCheck::NoSession;
        }
        let Some(admin) = self.core.admin_token() else {
            return SessionCheck::NoSession;
        };
        let changes = !matches!(head.method, Method::Get | Method::Head);
        self.sessions.check(
            self.now.monotonic,
            admin,
            head.header("cookie"),
            head.header(session::CSRF_HEADER_NAME),
            changes,
        )
    }

    /// `GET`, `POST` and `DELETE /api/v1/session`: the dashboard's sign-in,
    /// answered by `http/session.rs` with the admin token in force and 80
    /// random bytes from the operating system for a new session.
    fn http_session(&mut self, conn: ConnId, head: &Head, body: &[u8]) {
        let request = SessionRequest {
            method: &head.method_name,
            cookie: head.header("cookie"),
            csrf: head.header(session::CSRF_HEADER_NAME),
            body,
        };
        let admin = self.core.admin_token().cloned();
        let answer = self
            .sessions
            .answer(self.now.monotonic, admin.as_ref(), request, || {
                let mut bytes = [0u8; Fresh::BYTES];
                getrandom::fill(&mut bytes)
                    .ok()
                    .map(|()| Fresh::from_bytes(bytes))
            });
        if answer.status == Status::Unauthorized {
            self.core.sign_in_failed(conn);
        }
        let head_only = head.method == Method::Head;
        self.http_respond(conn, answer.response(), head_only, head.keep_alive, None);
    }

    fn http_request(
        &mut self,
        conn: ConnId,
        head: Head,
        body: &[u8],
        admin: bool,
        session: &SessionCheck,
    ) {
        let head_only = head.method == Method::Head;
        let keep_alive = head.keep_alive;
        if head.path == session::SESSION_PATH {
            self.http_session(conn, &head, body);
            return;
        }
        let required = self.core.auth_required();
        // A `POST` shows its credential before its body is read for
        // meaning; a console command that changes the cluster, once it is.
        let checked = (|| {
            if routes::changes(&head) {
                crate::http::auth::may_change(admin, required, session)?;
            }
            let plan = routes::plan(&head, body)?;
            if let Plan::Ask { change: true, .. } = plan {
                crate::http::auth::may_change(admin, required, session)?;
            }
            Ok::<Plan, HttpError>(plan)
        })();
        let plan = match checked {
            Ok(plan) => plan,
            Err(error) => {
                let response = error.response(&head.path);
                self.http_respond(conn, response, head_only, keep_alive, None);
                return;
            }
        };
        let pending = |waiting| Pending::new(waiting, head_only, keep_alive, &head.path);
        match plan {
            Plan::Respond(response) => {
                self.http_respond(conn, response, head_only, keep_alive, None);
            }
            Plan::Ready => {
                let response = if self.core.storage_available() {
                    Response::text(Status::Ok, "ready\n")
                } else {
                    Response::text(Status::Unavailable, "the store does not take writes\n")
                };
                self.http_respond(conn, response, head_only, keep_alive, None);
            }
            Plan::Ask {
                messages, render, ..
            } => {
                self.http_ask(conn, messages, pending(Waiting::Response(render)));
            }
            Plan::RetryDead(message) => {
                self.http_ask(conn, vec![*message], pending(Waiting::DeadLetters));
            }
            Plan::Stream(stream) if head_only => {
                let _ = stream;
                let response = Response {
                    content_type: "text/event-stream",
                    ..Response::text(Status::Ok, "")
                };
                self.http_respond(conn, response, true, keep_alive, None);
            }
            Plan::Stream(stream) => {
                let message = stream.message();
                self.http_ask(conn, vec![message], pending(Waiting::Open(stream)));
            }
        }
    }

    /// Sends `messages` to the core for `pending`, which waits for their
    /// replies behind the connection's other requests.
    fn http_ask(&mut self, conn: ConnId, messages: Vec<Message>, pending: Pending) {
        self.http_ask_at(conn, messages, pending, false);
    }

    /// [`EventLoop::http_ask`] for the request at the front (the next
    /// step of one that was answered).
    fn http_ask_first(&mut self, conn: ConnId, messages: Vec<Message>, pending: Pending) {
        self.http_ask_at(conn, messages, pending, true);
    }

    fn http_ask_at(
        &mut self,
        conn: ConnId,
        messages: Vec<Message>,
        mut pending: Pending,
        first: bool,
    ) {
        let Some(http) = self.http(conn) else {
            return;
        };
        pending.first_id = http.next_id;
        pending.n = messages.len() as u64;
        http.next_id += pending.n;
        if first {
            http.pending.push_front(pending);
        } else {
            http.pending.push_back(pending);
        }
        let first = http.next_id - messages.len() as u64;
        for (i, message) in messages.into_iter().enumerate() {
            let envelope = Envelope::new(message).with_id(format!("http:{}", first + i as u64));
            let now = self.now;
            self.core.handle_message(now, conn, envelope);
            self.take_outputs();
        }
    }

    /// What the core sent an HTTP connection: a reply to one of its
    /// requests, an event for its stream, or something it has no use for.
    pub(super) fn http_output(&mut self, conn: ConnId, payload: Payload, after_batch: Option<u64>) {
        match payload {
            Payload::Json(envelope) => {
                let (id, outcome) = match envelope.message {
                    Message::Ack(ack) => (ack.original_message_id.clone(), Ok(ack.result)),
                    Message::Error(error) => (error.original_message_id.clone(), Err(error)),
                    _ => return,
                };
                let Some(number) = id
                    .as_deref()
                    .and_then(|id| id.strip_prefix("http:"))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    // Unsolicited: the authentication deadline, a refusal
                    // that closes. Only a request that was never answered
                    // hears of it.
                    if let Err(error) = outcome {
                        self.http_unsolicited(conn, &error);
                    }
                    return;
                };
                let Some(http) = self.http(conn) else {
                    return;
                };
                let Some(pending) = http
                    .pending
                    .iter_mut()
                    .find(|p| (p.first_id..p.first_id + p.n).contains(&number))
                else {
                    return;
                };
                pending.after = pending.after.max(after_batch);
                match outcome {
                    Ok(reply) => pending.replies.push(reply),
                    Err(error) => {
                        pending.errors.push((number, error.clone()));
                        pending.error.get_or_insert(error);
                        // A failed part counts as answered.
                        pending.replies.push(Reply::Fields(Default::default()));
                    }
                }
                self.http_complete(conn);
            }
            Payload::Event(shared) => self.http_event(conn, shared, after_batch),
            Payload::Text(_) | Payload::HeartbeatAck(_) => {}
        }
    }

    /// An error the core sent on its own (no request's id): a 408 when the
    /// connection timed out before finishing a request, nothing otherwise
    /// (the core closes the connection after it anyway).
    fn http_unsolicited(&mut self, conn: ConnId, error: &ErrorReply) {
        let Some(http) = self.http(conn) else {
            return;
        };
        // Between requests (every one answered, no byte of the next): the
        // connection is closed as an idle kept-alive one is, without a 408
        // a client could take for the answer to the request it may be
        // sending on it just now (a health probe asking `/healthz` on one
        // connection, which never became a reader).
        let idle = http.buf.is_empty() && http.request_started.is_none();
        if http.stream.is_some() || !http.pending.is_empty() || idle {
            return;
        }
        let status = if error.code == protocol::ErrorCode::AuthTimeout {
            Status::RequestTimeout
        } else {
            Status::of(error.code)
        };
        let message = if status == Status::RequestTimeout {
            "no whole request arrived in time; closing the connection".to_string()
        } else {
            error.error.clone()
        };
        let error = HttpError::new(status, message);
        self.http_respond(conn, error.response("/"), false, false, None);
    }

    /// Renders the requests at the front whose replies have all come.
    fn http_complete(&mut self, conn: ConnId) {
        loop {
            let Some(http) = self.http(conn) else {
                return;
            };
            let done = http
                .pending
                .front()
                .is_some_and(|p| p.replies.len() as u64 >= p.n);
            if !done {
                break;
            }
            let Some(pending) = http.pending.pop_front() else {
                break;
            };
            self.http_finish(conn, pending);
        }
        self.http_schedule(conn);
        // A request may wait in the buffer, or a read the connection's
        // backpressure left unread, behind the one answered.
        let waiting = self.conns.get(conn).is_some_and(|connection| {
            let Proto::Http(http) = &connection.proto else {
                return false;
            };
            http.pending.len() < edge::MAX_PIPELINED
                && (!http.buf.is_empty() || !connection.unread.is_empty())
        });
        if waiting {
            self.readable.insert(conn);
        }
    }

    fn http_finish(&mut self, conn: ConnId, pending: Pending) {
        let answer = (pending.head_only, pending.keep_alive, pending.after);
        if let Waiting::Retried { task_ids, more } = &pending.waiting {
            // Each retry succeeds or fails on its own.
            let failed: Vec<serde_json::Value> = pending
                .errors
                .iter()
                .map(|(number, error)| {
                    let index = (number - pending.first_id) as usize;
                    serde_json::json!({
                        "task_id": task_ids.get(index),
                        "error": error.error,
                        "error_code": error.code.as_str().to_ascii_uppercase(),
                    })
                })
                .collect();
            let body = serde_json::json!({
                "success": true,
                "retried": task_ids.len() - failed.len(),
                "failed": failed,
                "more": more,
                "message": format!("{} dead letters queued again", task_ids.len() - failed.len()),
            });
            let response = Response::json(Status::Ok, &body);
            self.http_answer(conn, answer, response);
            return;
        }
        if let Some(error) = &pending.error {
            let response = HttpError::from_reply(error).response(&pending.path);
            if matches!(pending.waiting, Waiting::DevicesUpdate) {
                // The stream's next update failed: end the stream.
                self.http_end_stream(conn);
                return;
            }
            // A refusal for a wrong credential closes, as on the TCP port.
            let keep_alive = pending.keep_alive && error.code != protocol::ErrorCode::AuthFailed;
            self.http_respond(conn, response, pending.head_only, keep_alive, pending.after);
            return;
        }
        let context = Context {
            unix_ms: self.now.unix_ms,
            uptime_secs: self.started.elapsed().as_secs(),
        };
        match pending.waiting {
            Waiting::Response(Render::Metrics) => {
                let stats = self.loop_stats();
                let body = crate::http::metrics::render(
                    &pending.replies,
                    self.core.observed(),
                    &stats,
                    self.core.auth_failures(),
                );
                let response = match body {
                    Some(body) => Response {
                        content_type: "text/plain; version=0.0.4; charset=utf-8",
                        ..Response::text(Status::Ok, body)
                    },
                    None => Response::text(Status::InternalError, "no metrics\n"),
                };
                self.http_answer(conn, answer, response);
            }
            Waiting::Response(Render::TextLogs { device }) => {
                let mut body = String::new();
                for line in &self.core.observed().log {
                    if device.is_some() && line.device != device {
                        continue;
                    }
                    body.push_str(&format!(
                        "[{}] {}: {}\n",
                        log_time(line.unix_ms),
                        line.level,
                        line.message
                    ));
                }
                let response = Response::text(Status::Ok, body);
                self.http_answer(conn, answer, response);
            }
            Waiting::Response(render) => {
                let response = render::render(&render, &pending.replies, context);
                self.http_answer(conn, answer, response);
            }
            Waiting::Open(stream) => {
                let mut bytes = edge::stream_head();
                match &stream {
                    Stream::Events { last_event_id } => {
                        let current = event_id(self.boot_ms, self.event_ids.seq);
                        match last_event_id {
                            Some(last) if *last != current => {
                                let data = serde_json::json!({
                                    "reason": "the master keeps no log of past events: events after the one you saw may be lost; read the state again",
                                    "last_event_id": last,
                                });
                                bytes.extend(edge::event_chunk(
                                    Some(&current),
                                    "reset",
                                    data.to_string().as_bytes(),
                                ));
                            }
                            _ => bytes.extend(edge::chunk(b": subscribed\n\n")),
                        }
                    }
                    Stream::Logs { .. } => bytes.extend(edge::chunk(b": subscribed\n\n")),
                    Stream::Devices => {
                        bytes.extend(self.devices_update(&pending.replies, context));
                    }
                }
                let now = self.now.monotonic;
                if let Some(http) = self.http(conn) {
                    http.stream = Some(stream);
                    http.buf = Vec::new();
                    http.stream_sent_at = now;
                }
                self.queue_bytes(conn, bytes, pending.after, false, false);
            }
            Waiting::DeadLetters => {
                let page = pending
                    .replies
                    .first()
                    .and_then(|reply| reply.parse::<protocol::TaskPage>().ok())
                    .unwrap_or_default();
                let task_ids: Vec<String> =
                    page.tasks.into_iter().map(|task| task.task_id).collect();
                let messages = task_ids
                    .iter()
                    .map(|task_id| {
                        Message::TaskRetry(protocol::TaskRef {
                            task_id: task_id.clone(),
                        })
                    })
                    .collect();
                let waiting = Waiting::Retried {
                    task_ids,
                    more: page.next_cursor.is_some(),
                };
                let next = Pending::new(
                    waiting,
                    pending.head_only,
                    pending.keep_alive,
                    &pending.path,
                );
                // In the place of the page's request, so responses keep
                // their order.
                self.http_ask_first(conn, messages, next);
            }
            // Answered before any error is looked at (above).
            Waiting::Retried { .. } => {}
            Waiting::DevicesUpdate => {
                let bytes = self.devices_update(&pending.replies, context);
                self.stream_sent(conn);
                self.queue_bytes(conn, bytes, pending.after, false, true);
            }
        }
    }

    /// Queues the response to a request whose replies have all come:
    /// `answer` is its `HEAD`, keep-alive and batch.
    fn http_answer(&mut self, conn: ConnId, answer: (bool, bool, Option<u64>), response: Response) {
        let (head_only, keep_alive, after) = answer;
        self.http_respond(conn, response, head_only, keep_alive, after);
    }

    /// A `device_update` event of `/stream/devices`, as a chunk.
    fn devices_update(&self, replies: &[Reply], context: Context) -> Vec<u8> {
        let devices = replies
            .first()
            .and_then(|reply| reply.parse::<DevicePage>().ok())
            .map(|page| page.devices)
            .unwrap_or_default();
        let devices: Vec<serde_json::Value> = devices
            .iter()
            .map(|device| {
                let mut value = serde_json::to_value(device).unwrap_or_default();
                if let serde_json::Value::Object(map) = &mut value {
                    map.insert("id".into(), device.device_id.clone().into());
                }
                value
            })
            .collect();
        let data = serde_json::json!({
            "timestamp": crate::core::rfc3339(context.unix_ms),
            "devices": devices,
        });
        edge::event_chunk(None, "device_update", data.to_string().as_bytes())
    }

    /// An event for an HTTP connection: a Server-Sent Event if it streams
    /// events or logs.
    fn http_event(&mut self, conn: ConnId, shared: Arc<Envelope>, after_batch: Option<u64>) {
        // Numbered once per event (a summary for strangers counts as one
        // of its own).
        let is_new = self
            .event_ids
            .last
            .as_ref()
            .is_none_or(|last| last.as_ptr() != Arc::as_ptr(&shared));
        if is_new {
            self.event_ids.seq += 1;
            self.event_ids.last = Some(Arc::downgrade(&shared));
        }
        let id = event_id(self.boot_ms, self.event_ids.seq);
        let stream = self.http(conn).and_then(|http| http.stream.clone());
        let bytes = match stream {
            Some(Stream::Events { .. }) => {
                let Message::Event(event) = &shared.message else {
                    return;
                };
                let name = event_name(event);
                let line = self.event_line(shared);
                edge::event_chunk(Some(&id), name, &line)
            }
            Some(Stream::Logs { device }) => {
                let Message::Event(event) = &shared.message else {
                    return;
                };
                let Some((level, about, message)) = crate::core::observe::log_line(event) else {
                    self.forget_sent_event();
                    return;
                };
                if device.is_some() && about != device {
                    self.forget_sent_event();
                    return;
                }
                let data = serde_json::json!({
                    "timestamp": crate::core::rfc3339(self.now.unix_ms),
                    "level": level,
                    "device": about,
                    "message": message,
                });
                drop(shared);
                self.forget_sent_event();
                edge::event_chunk(Some(&id), "log", data.to_string().as_bytes())
            }
            _ => {
                drop(shared);
                self.forget_sent_event();
                return;
            }
        };
        self.stream_sent(conn);
        self.queue_bytes(conn, bytes, after_batch, false, true);
    }

    /// Notes that `conn`'s stream had something queued now, which puts off
    /// its next keep-alive comment. Its check is not filed again here (an
    /// event costs no timer work): when the old one comes due,
    /// [`EventLoop::http_due`] sees the stream was not silent and files the
    /// next.
    fn stream_sent(&mut self, conn: ConnId) {
        let now = self.now.monotonic;
        if let Some(http) = self.http(conn) {
            http.stream_sent_at = now;
        }
    }

    /// Ends a stream: the last chunk, then the connection closes.
    fn http_end_stream(&mut self, conn: ConnId) {
        if let Some(http) = self.http(conn) {
            http.closing = true;
        }
        self.queue_bytes(conn, b"0\r\n\r\n".to_vec(), None, false, false);
        if let Some(connection) = self.conns.get_mut(conn) {
            connection.close_when_flushed = true;
            self.dirty.insert(conn);
        }
    }

    /// Files the connection's next check: its request's timeout, its
    /// keep-alive idle limit, or its stream's next device update or
    /// keep-alive comment.
    pub(super) fn http_schedule(&mut self, conn: ConnId) {
        let keep_alive = self.limits.sse_keep_alive;
        let Some(http) = self.http(conn) else {
            return;
        };
        let at = match (&http.stream, http.request_started) {
            (Some(Stream::Devices), _) => Some(
                (http.active_at + edge::STREAM_DEVICES_INTERVAL)
                    .min(http.stream_sent_at + keep_alive),
            ),
            (Some(_), _) if http.closing => None,
            (Some(_), _) => Some(http.stream_sent_at + keep_alive),
            _ if !http.pending.is_empty() || http.closing => None,
            (None, Some(started)) => Some(started + edge::REQUEST_TIMEOUT),
            (None, None) => Some(http.active_at + edge::KEEP_ALIVE_TIMEOUT),
        };
        if http.check_at == at {
            return;
        }
        let old = std::mem::replace(&mut http.check_at, at);
        if let Some(old) = old {
            self.http_checks.remove(&(old, conn));
        }
        if let Some(at) = at {
            self.http_checks.insert((at, conn));
        }
    }

    /// Runs the HTTP checks that came due: timeouts and stream updates.
    pub(super) fn http_due(&mut self) {
        let now = self.now.monotonic;
        let keep_alive = self.limits.sse_keep_alive;
        while let Some(&(at, conn)) = self.http_checks.first() {
            if at > now {
                break;
            }
            self.http_checks.pop_first();
            let Some(http) = self.http(conn) else {
                continue;
            };
            http.check_at = None;
            match (&http.stream, http.request_started) {
                (Some(Stream::Devices), _)
                    if now >= http.active_at + edge::STREAM_DEVICES_INTERVAL =>
                {
                    http.active_at = now;
                    let message = Stream::Devices.message();
                    let pending =
                        Pending::new(Waiting::DevicesUpdate, false, true, "/stream/devices");
                    self.http_ask(conn, vec![message], pending);
                }
                (Some(_), _) if now >= http.stream_sent_at + keep_alive && !http.closing => {
                    // Silent for the whole interval: a comment, which
                    // `EventSource` ignores, so proxies keep the stream.
                    http.stream_sent_at = now;
                    self.queue_bytes(conn, edge::keep_alive_chunk(), None, false, true);
                }
                // Not silent since the check was filed: the next is filed
                // from the last thing sent.
                (Some(_), _) => {}
                (None, Some(_)) => {
                    let error = HttpError::new(
                        Status::RequestTimeout,
                        format!(
                            "the request did not arrive within {:?}; closing the connection",
                            edge::REQUEST_TIMEOUT
                        ),
                    );
                    self.http_fail(conn, &error, "/");
                }
                (None, None) => {
                    if let Some(connection) = self.conns.get_mut(conn) {
                        log::debug!("HTTP connection {conn} idle; closing it");
                        connection.close_when_flushed = true;
                        self.dirty.insert(conn);
                        self.close_by(conn, now + crate::CLOSE_GRACE);
                    }
                    continue;
                }
            }
            self.http_schedule(conn);
        }
    }

    /// The loop's own numbers for `/metrics`.
    fn loop_stats(&self) -> crate::http::metrics::LoopStats {
        let mut counts = [0u64; 3];
        for (_, connection) in self.conns.iter() {
            let i = match connection.proto {
                Proto::Http(_) => 0,
                Proto::Lines => 1,
                Proto::Undecided(_) => 2,
            };
            counts[i] += 1;
        }
        crate::http::metrics::LoopStats {
            connections: [
                ("http", counts[0]),
                ("lines", counts[1]),
                ("unknown", counts[2]),
            ],
            accepted: self.http_stats.accepted,
            http_requests: self.http_stats.http_requests,
            commit_latency: self.http_stats.commit_latency.clone(),
        }
    }

    /// Routes one output for an HTTP connection; `true` if it was one.
    pub(super) fn apply_http(&mut self, output: Output) -> Option<Output> {
        match output {
            Output::Send {
                conn,
                payload,
                after_batch,
                ..
            } if self.http(conn).is_some() => {
                self.http_output(conn, payload, after_batch);
                None
            }
            other => Some(other),
        }
    }
}

/// `2024-01-15 10:30:15`, in UTC.
fn log_time(unix_ms: i64) -> String {
    let stamp = crate::core::rfc3339(unix_ms);
    // `2024-01-15T10:30:15.123Z` → `2024-01-15 10:30:15`.
    stamp.get(..19).unwrap_or(&stamp).replace('T', " ")
}

/// The counters the loop keeps for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct HttpStats {
    /// Connections accepted since the start.
    pub(super) accepted: u64,
    /// HTTP requests handled since the start.
    pub(super) http_requests: u64,
    /// Seconds from handing a batch to the store to its commit.
    pub(super) commit_latency: crate::core::observe::Histogram,
}
