//! A blocking client for the master's TCP port.
//!
//! One [`Client`] owns one connection. Requests go out one at a time, each
//! with a fresh `message_id`, and [`Client::request`] reads until the `ack`
//! or `error` that carries that id back. Events the master pushes after a
//! `subscribe` may arrive at any moment, including while a reply is awaited,
//! so they are queued and handed out later by [`Client::next_event`].

use crate::lines::{Lines, LinesError};
use protocol::auth::{ClientHandshake, Method, Nonce, Token};
use protocol::{
    Ack, BatchSubmitted, ClusterStats, DevicePage, DeviceRef, DeviceReply, DeviceView, Draining,
    Envelope, ErrorCode, Event, Frame, ListDevices, ListTasks, Message, StatusReply, Submitted,
    Subscribe, TaskCancel, TaskChanged, TaskPage, TaskProgress, TaskRef, TaskReply, TaskSpec,
    TaskSubmit, TaskView, DEFAULT_MAX_LINE,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest line the client accepts from the master.
///
/// Much larger than the master's own limit for incoming lines, because one
/// `list_tasks` reply may carry a thousand tasks with their stored outputs.
pub const MAX_REPLY_LINE: usize = 256 * DEFAULT_MAX_LINE;

/// How long [`Client::wait_for_task`] listens for events before it asks for
/// the task's state, so that a master that went silent is noticed and a
/// missed event does not leave the client waiting forever.
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Numbers the messages of every client in this process, so that ids stay
/// unique even when a test opens several clients.
static MESSAGE_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Why a request or a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be opened.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address as given.
        addr: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The master closed the connection.
    #[error("the master closed the connection")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("lost the connection to the master")]
    Io {
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The master did not answer in time.
    #[error("the master did not answer `{request}` within {}", humantime::format_duration(*.after))]
    ReplyTimeout {
        /// The `message_type` of the request.
        request: &'static str,
        /// How long the client waited.
        after: Duration,
    },
    /// The master answered with an `error` reply.
    #[error("{error} ({code})")]
    Master {
        /// The human explanation.
        error: String,
        /// The machine code, kept as text so that a code newer than this
        /// client still reaches the user.
        code: String,
    },
    /// The master sent something this client cannot read.
    #[error("unreadable reply from the master: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The error code of a [`ClientError::Master`] reply, when it is one of
    /// the codes this client knows.
    pub fn master_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Master { code, .. } => ErrorCode::parse(code),
            _ => None,
        }
    }

    fn io(source: io::Error) -> ClientError {
        ClientError::Io { source }
    }
}

/// What one JSON frame from the master turned out to be.
enum Incoming {
    Ack(Ack),
    Error {
        original_message_id: Option<String>,
        error: String,
        code: String,
    },
    Event(Event),
    /// Anything a client has no use for, such as an event kind newer than
    /// this client.
    Ignored,
}

/// A connection to the master.
#[derive(Debug)]
pub struct Client {
    lines: Lines,
    events: VecDeque<Event>,
    reply_timeout: Option<Duration>,
}

impl Client {
    /// Connects to `addr` (`HOST:PORT`), trying every address the name
    /// resolves to, each for at most `timeout`. Replies are then awaited for
    /// at most `timeout` too; see [`Client::set_reply_timeout`].
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let candidates = addr.to_socket_addrs().map_err(connect_error)?;
        let mut last_error =
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, timeout) {
                Ok(stream) => {
                    let mut client = Client::from_stream(stream).map_err(connect_error)?;
                    client.set_reply_timeout(Some(timeout));
                    return Ok(client);
                }
                Err(err) => last_error = err,
            }
        }
        Err(connect_error(last_error))
    }

    /// Wraps a connected stream, with no reply timeout.
    pub fn from_stream(stream: TcpStream) -> io::Result<Client> {
        // Requests are single small lines and a reply is awaited after each,
        // so Nagle's algorithm would only add latency.
        stream.set_nodelay(true)?;
        Ok(Client {
            lines: Lines::new(stream, MAX_REPLY_LINE),
            events: VecDeque::new(),
            reply_timeout: None,
        })
    }

    /// Sets how long [`Client::request`] waits for a reply (and a write may
    /// block); `None` waits without limit.
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.reply_timeout = timeout;
    }

    /// Sends `message` with a fresh `message_id` and returns that id, without
    /// waiting for the reply.
    pub fn send(&mut self, message: Message) -> Result<String, ClientError> {
        let message_id = next_message_id();
        let line = Envelope::new(message).with_id(message_id.clone()).to_line();
        self.lines
            .write(&line, self.reply_timeout)
            .map_err(ClientError::io)?;
        Ok(message_id)
    }

    /// Sends `message` and waits for its reply. Events that arrive first
    /// are queued for [`Client::next_event`]; replies to other messages are
    /// skipped.
    pub fn request(&mut self, message: Message) -> Result<Ack, ClientError> {
        let request = message.message_type();
        let message_id = self.send(message)?;
        let deadline = self.reply_timeout.map(|timeout| Instant::now() + timeout);
        loop {
            let Some(frame) = self.next_json_frame(deadline)? else {
                return Err(ClientError::ReplyTimeout {
                    request,
                    after: self.reply_timeout.unwrap_or_default(),
                });
            };
            // A reply without an id can only be about this request: the
            // client never has more than one request outstanding.
            let answers = |original: &Option<String>| {
                original
                    .as_deref()
                    .is_none_or(|original| original == message_id)
            };
            match classify(&frame)? {
                Incoming::Ack(ack) if answers(&ack.original_message_id) => return Ok(ack),
                Incoming::Error {
                    original_message_id,
                    error,
                    code,
                } if answers(&original_message_id) => {
                    return Err(ClientError::Master { error, code })
                }
                Incoming::Event(event) => self.events.push_back(event),
                Incoming::Ack(_) | Incoming::Error { .. } | Incoming::Ignored => {}
            }
        }
    }

    /// Sends `message` and reads its reply as the document `R` the request
    /// is answered with (see [`protocol::reply`]).
    pub fn ask<R: DeserializeOwned>(&mut self, message: Message) -> Result<R, ClientError> {
        let ack = self.request(message)?;
        ack.result
            .parse()
            .map_err(|err| ClientError::Protocol(err.detail))
    }

    /// The next event, queued or read from the socket. Returns `None` once
    /// `deadline` has passed; `None` as deadline waits without limit.
    pub fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        while let Some(frame) = self.next_json_frame(deadline)? {
            if let Incoming::Event(event) = classify(&frame)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// Queues one task and returns its id.
    pub fn submit(&mut self, task: TaskSpec) -> Result<String, ClientError> {
        let submitted: Submitted = self.ask(Message::TaskSubmit(TaskSubmit {
            tasks: vec![task],
            batch: false,
        }))?;
        Ok(submitted.task_id)
    }

    /// Queues several tasks in one durable batch and returns their ids, in
    /// the order given.
    pub fn submit_batch(&mut self, tasks: Vec<TaskSpec>) -> Result<Vec<String>, ClientError> {
        let batch: BatchSubmitted =
            self.ask(Message::TaskSubmit(TaskSubmit { tasks, batch: true }))?;
        Ok(batch.task_ids)
    }

    /// One task's state and result.
    pub fn task_status(&mut self, task_id: &str) -> Result<TaskView, ClientError> {
        let reply: TaskReply = self.ask(Message::TaskStatus(TaskRef {
            task_id: task_id.to_string(),
        }))?;
        Ok(reply.task)
    }

    /// Tasks, newest first.
    pub fn list_tasks(&mut self, filter: ListTasks) -> Result<Vec<TaskView>, ClientError> {
        let page: TaskPage = self.ask(Message::ListTasks(filter))?;
        Ok(page.tasks)
    }

    /// Cluster totals.
    pub fn cluster_status(&mut self) -> Result<ClusterStats, ClientError> {
        let reply: StatusReply = self.ask(Message::Status)?;
        Ok(reply.cluster_stats)
    }

    /// One page of device summaries (newest registered first; the filter's
    /// `limit` and `before` choose the page), optionally filtered by role
    /// and status.
    pub fn list_devices(&mut self, filter: ListDevices) -> Result<Vec<DeviceView>, ClientError> {
        let page: DevicePage = self.ask(Message::ListDevices(filter))?;
        Ok(page.devices)
    }

    /// One device.
    pub fn device_info(&mut self, device_id: &str) -> Result<DeviceView, ClientError> {
        let reply: DeviceReply = self.ask(Message::DeviceInfo(DeviceRef {
            device_id: device_id.to_string(),
        }))?;
        Ok(reply.device)
    }

    /// Cancels a task and returns its state after the cancel.
    pub fn cancel(&mut self, task_id: &str) -> Result<TaskView, ClientError> {
        let reply: TaskChanged = self.ask(Message::TaskCancel(TaskCancel {
            task_id: task_id.to_string(),
            attempt: None,
        }))?;
        Ok(reply.task)
    }

    /// Stops giving a device new work and returns it as it now is.
    pub fn drain(&mut self, device_id: &str) -> Result<DeviceView, ClientError> {
        let reply: Draining = self.ask(Message::DrainDevice(DeviceRef {
            device_id: device_id.to_string(),
        }))?;
        Ok(reply.device)
    }

    /// Proves the admin token to the master (see [`protocol::auth`]) and checks the
    /// master's proof in turn; afterwards this connection may do everything.
    pub fn authenticate_admin(&mut self, token: &Token) -> Result<(), ClientError> {
        let mut nonce = [0u8; protocol::auth::SECRET_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|err| ClientError::Protocol(format!("no random bytes: {err}")))?;
        let mut handshake = ClientHandshake::new(Method::Admin, Nonce(nonce));
        let ack = self.request(Message::AuthHello(handshake.hello()))?;
        let proof = handshake
            .prove(&ack.result.fields(), |transcript| {
                transcript.client_mac(token)
            })
            .map_err(|err| ClientError::Protocol(err.to_string()))?;
        let ack = self.request(Message::AuthProof(proof))?;
        let proven = handshake.master_proves(token, &ack.result.fields());
        if proven {
            Ok(())
        } else {
            Err(ClientError::Protocol(
                "the master did not prove it holds the admin token: is this the right master?"
                    .into(),
            ))
        }
    }

    /// Asks for `event`s about these tasks on this connection; an empty
    /// list asks for every event.
    pub fn subscribe(&mut self, task_ids: Vec<String>) -> Result<(), ClientError> {
        self.request(Message::Subscribe(Subscribe { task_ids }))?;
        Ok(())
    }

    /// Waits until the task reaches a terminal state and returns it, or
    /// `None` once `deadline` has passed.
    ///
    /// The connection must already be subscribed to the task. Its progress
    /// reports go to `on_progress`. Every [`STATUS_POLL_INTERVAL`] without
    /// the awaited event the task's state is asked for, which both finds a
    /// task that finished before the subscription and notices a master that
    /// stopped answering.
    pub fn wait_for_task(
        &mut self,
        task_id: &str,
        deadline: Option<Instant>,
        mut on_progress: impl FnMut(&TaskProgress),
    ) -> Result<Option<TaskView>, ClientError> {
        loop {
            let poll_at = Instant::now() + STATUS_POLL_INTERVAL;
            let slice_end = deadline.map_or(poll_at, |deadline| deadline.min(poll_at));
            while let Some(event) = self.next_event(Some(slice_end))? {
                match event {
                    Event::TaskFinished { task } if task.task_id == task_id => {
                        // A connection that has not authenticated is sent
                        // the task without its payload and result (see
                        // docs/protocol.md, `task_finished`): ask for them.
                        if task.payload.is_null() && task.result.is_none() {
                            return self.task_status(task_id).map(Some);
                        }
                        return Ok(Some(*task));
                    }
                    Event::TaskProgress(progress) if progress.task_id == task_id => {
                        on_progress(&progress)
                    }
                    _ => {}
                }
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(None);
            }
            let task = self.task_status(task_id)?;
            if task.state.is_terminal() {
                return Ok(Some(task));
            }
        }
    }

    /// The next JSON frame, or `None` once `deadline` has passed. Text lines
    /// are skipped: the master only writes them to people using netcat.
    fn next_json_frame(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            match self.lines.next_frame(deadline) {
                Ok(Some(Frame::Json(bytes))) => return Ok(Some(bytes)),
                Ok(Some(Frame::Text(_))) => {}
                Ok(None) => return Ok(None),
                Err(LinesError::Closed) => return Err(ClientError::Closed),
                Err(LinesError::Io(err)) => return Err(ClientError::io(err)),
                Err(LinesError::Decode(err)) => return Err(ClientError::Protocol(err.to_string())),
            }
        }
    }
}

/// A message id unique within this process and distinguishable from other
/// clients' ids in the master's log.
fn next_message_id() -> String {
    let counter = MESSAGE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("cli-{}-{counter}", std::process::id())
}

/// Reads one JSON frame from the master.
///
/// `error` replies are read by hand rather than through [`Envelope`], whose
/// decoder refuses codes outside the closed list: a newer master's code must
/// still reach the user instead of turning into an unreadable reply.
fn classify(bytes: &[u8]) -> Result<Incoming, ClientError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| ClientError::Protocol(format!("invalid JSON: {err}")))?;
    let message_type = value.get("message_type").and_then(Value::as_str);
    match message_type {
        Some("error") => {
            let empty = Map::new();
            let data = value
                .get("data")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            let text = |key: &str| match data.get(key) {
                Some(Value::String(text)) => Some(text.clone()),
                Some(Value::Number(number)) => Some(number.to_string()),
                _ => None,
            };
            Ok(Incoming::Error {
                original_message_id: text("original_message_id"),
                error: text("error").unwrap_or_else(|| "unspecified error".into()),
                code: text("code").unwrap_or_else(|| "unknown".into()),
            })
        }
        Some("ack") | Some("event") => match Envelope::from_value(value) {
            Ok(Envelope {
                message: Message::Ack(ack),
                ..
            }) => Ok(Incoming::Ack(ack)),
            Ok(Envelope {
                message: Message::Event(event),
                ..
            }) => Ok(Incoming::Event(event)),
            // An ack always decodes, so this is an event this client does
            // not know yet; skipping it keeps older clients working.
            _ => Ok(Incoming::Ignored),
        },
        _ => Ok(Incoming::Ignored),
    }
}
