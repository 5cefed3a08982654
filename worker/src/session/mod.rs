//! The worker's side of the protocol as a state machine with no I/O.
//!
//! Modelled on quinn-proto: the [`Session`] never touches a socket, a thread or the
//! clock. The network client feeds it what happened through the `handle_*` methods,
//! each taking `now` as a [`Duration`] since an origin the caller chooses (the client
//! uses the moment it started; tests use simulated time), and then drains what the
//! session wants done:
//!
//! - [`Session::poll_transmit`]: messages to write to the master, in order ([`Outgoing`]:
//!   an envelope, or a result's line encoded once);
//! - [`Session::poll_event`]: tasks to start or cancel, and connections to give up on;
//! - [`Session::poll_timeout`]: when to call [`Session::handle_timeout`] next.
//!
//! The session owns registering (and re-registering after a reconnect, listing the
//! tasks still running), the heartbeat schedule, accepting or refusing assignments,
//! draining (a graceful leave), and the outbox: every finished task's result is kept
//! until the master acknowledges that exact message, and the whole outbox is sent again
//! after each register ack, so no result is lost to a dropped connection. The session
//! asks the caller to make each result durable ([`SessionEvent::SaveResult`], see
//! [`crate::state::outbox`]) before it is sent, and to delete it once it is settled
//! ([`SessionEvent::ForgetResult`]); results saved by an earlier run of the worker come
//! back through [`Session::restore_outbox`]. A result is encoded once, when it enters
//! the outbox ([`EncodedEnvelope`]): the caller saves those bytes and writes them to the
//! socket (stamped with the time of each write) on every send.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use protocol::{
    Ack, DecodeError, EncodedEnvelope, Envelope, ErrorCode, ErrorReply, Goodbye, Heartbeat,
    Message, Metrics, Power, Register, RunningTask, TaskAssign, TaskCancel, TaskProgress,
    TaskResult, TaskSpec,
};
use serde_json::{json, Map, Value};

mod auth;
mod types;
pub use auth::Credentials;
pub use types::{DeviceProfile, DiskInfo, LiveMetrics, StoredResult};

/// The heartbeat interval used until the master's register ack says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest heartbeat interval the session accepts from a master, so that a typo in
/// the master's configuration cannot make a worker spin.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// The longest heartbeat interval the session accepts from a master.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);

/// How long the session waits for the reply to its `register` before it gives the
/// connection up and lets the client reconnect.
pub const REGISTER_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many heartbeat intervals may pass without a single message from the master
/// before the connection counts as dead. The master acknowledges every heartbeat, so
/// silence this long means the connection is half-open or the master is stuck.
pub const SILENT_INTERVALS_BEFORE_RECONNECT: u32 = 4;

/// The shortest silence that counts as a dead connection, whatever the heartbeat
/// interval, so that a master pausing for a slow disk commit is not abandoned.
pub const MIN_SILENCE_BEFORE_RECONNECT: Duration = Duration::from_secs(15);

/// How many results may wait for the master's ack before the session refuses new
/// assignments (with `no_free_slot`): the same bound as the outbox on disk
/// (`state::outbox::MAX_RESULTS` is this number), so that a master that keeps refusing
/// results cannot make the worker pile up more of them than it can keep.
pub const MAX_UNACKNOWLEDGED_RESULTS: usize = 10_000;

/// Message types that never get a reply, so the session never answers them, not even
/// when they arrive malformed. Answering one could start an endless error exchange.
const NEVER_ANSWERED_TYPES: &[&str] = &["ack", "error", "event", "task_progress"];

/// What the session needs to know about the worker it speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The id this device registers under; the `sender_id` of every message.
    pub device_id: String,
    /// The task types this worker runs; assignments of other types are refused.
    pub task_types: Vec<String>,
    /// How many tasks run at once; assignments beyond this are refused.
    pub slots: usize,
    /// The role the worker registers with (`worker`, `mobile`, `compute`, …).
    pub role: String,
    /// Tags the worker registers with.
    pub tags: Vec<String>,
    /// Goes into every `message_id`, so that ids stay unique across restarts of the
    /// worker; the client picks a random one.
    pub message_id_prefix: String,
}

/// Something the caller must do that is not a message to send.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// An assignment was accepted: run it, and report with
    /// [`Session::handle_task_finished`] when it ends.
    StartTask {
        /// The task, with its id set (boxed: it is far larger than the other events).
        task: Box<TaskSpec>,
        /// The attempt the result must carry.
        attempt: u32,
    },
    /// Stop this running attempt; its result is still reported when it ends.
    CancelTask {
        /// The task's id.
        task_id: String,
        /// The attempt to stop.
        attempt: u32,
    },
    /// The connection is of no more use (no reply to register, master silent, master
    /// forgot us): close it, call [`Session::handle_disconnected`] and reconnect.
    Reconnect {
        /// Why, for the log.
        reason: String,
    },
    /// A finished result entered the outbox: make it durable (see [`crate::state::outbox`])
    /// before writing anything the session queued after this event, which includes the
    /// result itself.
    SaveResult {
        /// The id the result is sent with, every time.
        message_id: String,
        /// The task, for the log.
        task_id: String,
        /// The attempt, for the log.
        attempt: u32,
        /// The `task_result` line, exactly the bytes that are sent (but for the
        /// `timestamp` each write adds).
        line: EncodedEnvelope,
    },
    /// A result left the outbox (the master acknowledged it, or refused it for good):
    /// delete its durable copy.
    ForgetResult {
        /// The id it was saved under.
        message_id: String,
    },
    /// The worker enrolled: keep the master's public key, so later connections can
    /// check that they reach the same master.
    PinMasterKey {
        /// The master's key.
        key: protocol::auth::PublicKey,
    },
    /// The master refused this worker for good (revoked, wrong token, id taken, or
    /// authentication is needed and the worker has no credentials): stop, and say why.
    Refused {
        /// Why, for the operator.
        reason: String,
    },
}

/// Where the connection to the master stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// No connection.
    Disconnected,
    /// Connected; a handshake message sent with this id, no reply yet.
    Authenticating {
        request_id: String,
        step: Box<auth::Step>,
        reply_deadline: Duration,
    },
    /// Connected; `register` sent with this id, no reply yet.
    Registering {
        register_id: String,
        reply_deadline: Duration,
    },
    /// The master acknowledged the registration.
    Registered,
}

/// Something for the caller to write to the master.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A message: stamp its `timestamp` and encode it (boxed: it is far larger than
    /// a line).
    Message(Box<Envelope>),
    /// A result, encoded once when it entered the outbox: write these bytes with the
    /// `timestamp` stamped in ([`EncodedEnvelope::write_stamped`]).
    Encoded(EncodedEnvelope),
}

/// A finished task's result waiting for the master's ack.
#[derive(Debug, Clone, PartialEq)]
struct OutboxEntry {
    /// The id of the `task_result` message; the same on every resend, so an ack for
    /// any transmission settles it.
    message_id: String,
    /// The task the result is for.
    task_id: String,
    /// The attempt it is for (older results may lack one).
    attempt: Option<u32>,
    /// The `task_result` envelope, encoded once: saved and sent as these bytes.
    line: EncodedEnvelope,
    /// The master refused it with a retryable error: send it again at the next
    /// heartbeat.
    resend_at_heartbeat: bool,
}

/// One worker's protocol state. See the module documentation.
#[derive(Debug, Clone)]
pub struct Session {
    config: SessionConfig,
    register_template: Register,
    link: Link,
    heartbeat_interval: Duration,
    next_heartbeat: Option<Duration>,
    last_heard: Duration,
    /// Attempts accepted and not yet reported finished, as (task id, attempt).
    running: BTreeSet<(String, u32)>,
    outbox: Vec<OutboxEntry>,
    transmit: VecDeque<Outgoing>,
    events: VecDeque<SessionEvent>,
    next_message_seq: u64,
    /// Leaving gracefully: no new tasks, heartbeats say `draining`.
    draining: bool,
    stopping: bool,
    /// Attempts cancelled because the worker is stopping: the goodbye hands them back
    /// to the master, so their results are dropped, never sent.
    abandoned: BTreeSet<(String, u32)>,
    goodbye_id: Option<String>,
    goodbye_acknowledged: bool,
    /// Whether the master acknowledged the register on the current connection.
    registered_on_connection: bool,
    /// Results the master acknowledged on the current connection.
    acked_on_connection: u32,
    /// What the worker authenticates with; `None`: it does not.
    credentials: Option<Credentials>,
    /// Connections in a row that ended in a refusal from a peer that had not proven
    /// it is the master.
    unproven_refusals: u32,
    /// The master proved itself on the current connection.
    proven_on_connection: bool,
    /// The pinned master did not answer as itself (another key, or it does not know
    /// this device): with a join token, the next connection enrolls again.
    reenroll: bool,
    /// The address of this end of the current connection, for the register.
    local_ip: Option<String>,
    /// Why the master refused this worker for good.
    refused: Option<String>,
}

impl Session {
    /// A disconnected session for the device described by `profile`.
    pub fn new(config: SessionConfig, profile: &DeviceProfile) -> Session {
        let register_template = register_template(&config, profile);
        Session {
            config,
            register_template,
            link: Link::Disconnected,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            next_heartbeat: None,
            last_heard: Duration::ZERO,
            running: BTreeSet::new(),
            outbox: Vec::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            next_message_seq: 0,
            draining: false,
            stopping: false,
            abandoned: BTreeSet::new(),
            goodbye_id: None,
            goodbye_acknowledged: false,
            registered_on_connection: false,
            acked_on_connection: 0,
            credentials: None,
            unproven_refusals: 0,
            proven_on_connection: false,
            reenroll: false,
            local_ip: None,
            refused: None,
        }
    }

    /// Puts results that an earlier run of the worker saved (and the master never
    /// acknowledged) back in the outbox, to be sent after the next register ack under
    /// their old message ids. They are already durable: no
    /// [`SessionEvent::SaveResult`] is emitted for them. Each is encoded once here, with
    /// this device as its sender (a line an older worker saved has none).
    pub fn restore_outbox(&mut self, stored: Vec<StoredResult>) {
        for StoredResult { message_id, result } in stored {
            if self
                .outbox
                .iter()
                .any(|entry| entry.message_id == message_id)
            {
                continue;
            }
            let entry = self.outbox_entry(message_id, result);
            self.outbox.push(entry);
        }
    }

    /// A result's outbox entry: the result encoded once, under `message_id`.
    fn outbox_entry(&self, message_id: String, result: TaskResult) -> OutboxEntry {
        let task_id = result.task_id.clone();
        let attempt = result.attempt;
        let envelope = Envelope::new(Message::TaskResult(result))
            .from_sender(self.config.device_id.clone())
            .with_id(message_id.clone());
        OutboxEntry {
            message_id,
            task_id,
            attempt,
            line: EncodedEnvelope::new(&envelope),
            resend_at_heartbeat: false,
        }
    }

    /// The id this device registers under.
    pub fn device_id(&self) -> &str {
        &self.config.device_id
    }

    /// Whether the master has acknowledged the registration on the current connection.
    pub fn is_registered(&self) -> bool {
        self.link == Link::Registered
    }

    /// The heartbeat interval: the master's, once a register ack has told it.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The attempts this worker still holds: running, or finished with a
    /// result the master has not acknowledged yet. Listing the finished ones
    /// at re-register matters: the master then keeps them with this device
    /// instead of handing them to another before the resent result arrives.
    pub fn running_tasks(&self) -> Vec<RunningTask> {
        let running = self.running.iter().map(|(task_id, attempt)| RunningTask {
            task_id: task_id.clone(),
            attempt: *attempt,
        });
        let finished = self.outbox.iter().filter_map(|entry| {
            entry.attempt.map(|attempt| RunningTask {
                task_id: entry.task_id.clone(),
                attempt,
            })
        });
        let mut held: Vec<RunningTask> = running.chain(finished).collect();
        held.sort_by(|a, b| (&a.task_id, a.attempt).cmp(&(&b.task_id, b.attempt)));
        held.dedup();
        held
    }

    /// How many finished results still wait for the master's ack.
    pub fn n_unacknowledged_results(&self) -> usize {
        self.outbox.len()
    }

    /// Whether [`Session::handle_stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Whether [`Session::handle_drain`] (or [`Session::handle_stop`]) was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether a draining worker has nothing left to wait for: no task is running, and
    /// every result is acknowledged, or there is no connection to deliver them on (they
    /// stay in the outbox on disk for the next start).
    pub fn is_drained(&self) -> bool {
        self.running.is_empty() && (self.outbox.is_empty() || self.link == Link::Disconnected)
    }

    /// Whether the current connection got as far as a register ack. Reset by
    /// [`Session::handle_connected`], kept after [`Session::handle_disconnected`] so the
    /// caller can judge the connection that just ended.
    pub fn registered_on_this_connection(&self) -> bool {
        self.registered_on_connection
    }

    /// How many results the master acknowledged on the current (or just ended)
    /// connection.
    pub fn results_acknowledged_on_this_connection(&self) -> u32 {
        self.acked_on_connection
    }

    /// Whether the master has answered the `goodbye`.
    pub fn goodbye_acknowledged(&self) -> bool {
        self.goodbye_acknowledged
    }

    /// A new connection to the master is open: register on it.
    ///
    /// `local_ip` is the address of this end of the socket, which is the address the
    /// master can reach the device at more surely than any interface the profile found.
    pub fn handle_connected(&mut self, now: Duration, local_ip: Option<String>) {
        self.handle_connected_with_nonce(now, local_ip, None);
    }

    /// Like [`Session::handle_connected`], with a fresh random `nonce` for the
    /// handshake: with credentials set, the session authenticates before it registers.
    pub fn handle_connected_with_nonce(
        &mut self,
        now: Duration,
        local_ip: Option<String>,
        nonce: Option<protocol::auth::Nonce>,
    ) {
        self.transmit.clear();
        self.next_heartbeat = None;
        self.last_heard = now;
        self.registered_on_connection = false;
        self.acked_on_connection = 0;
        self.proven_on_connection = false;
        self.local_ip = local_ip;
        if let Some(nonce) = nonce {
            if self.start_handshake(now, nonce) {
                return;
            }
        }
        self.send_register(now);
    }

    fn send_register(&mut self, now: Duration) {
        let local_ip = self.local_ip.clone();
        let register_id = self.new_message_id("reg");
        let mut register = self.register_template.clone();
        if local_ip.is_some() {
            register.ip_address = local_ip;
        }
        register.running_tasks = self.running_tasks();
        self.push(Message::Register(register), Some(register_id.clone()));
        self.link = Link::Registering {
            register_id,
            reply_deadline: now + REGISTER_REPLY_TIMEOUT,
        };
    }

    /// The connection is gone. Nothing queued for it will be sent; results not yet
    /// acknowledged stay in the outbox for the next connection.
    pub fn handle_disconnected(&mut self, _now: Duration) {
        self.link = Link::Disconnected;
        self.transmit.clear();
        self.next_heartbeat = None;
    }

    /// A message arrived from the master.
    pub fn handle_message(&mut self, now: Duration, envelope: Envelope) {
        self.last_heard = now;
        let request_id = envelope.message_id;
        let kind = envelope.message.message_type();
        match envelope.message {
            Message::Ack(ack) => self.on_ack(now, ack),
            Message::Error(error) => self.on_error(error),
            // Work and orders come only from a master the worker registered with,
            // which, with credentials, has proven itself first: whatever answers at
            // the master's address cannot run a task by sending one early.
            Message::TaskAssign(_) | Message::TaskCancel(_) | Message::Goodbye(_)
                if self.link != Link::Registered =>
            {
                log::warn!(
                    "ignoring a {kind} that arrived before the worker registered on this connection"
                );
                self.reply_error(
                    request_id,
                    ErrorCode::InvalidState,
                    "this worker has not registered on this connection",
                );
            }
            Message::TaskAssign(assign) => self.on_assign(request_id, assign),
            Message::TaskCancel(cancel) => self.on_cancel(request_id, cancel),
            Message::Goodbye(goodbye) => {
                // The master is shutting down. It closes the connection itself once it
                // has said this; the worker then reconnects with backoff, keeping its
                // tasks (the master holds them on a lease) and its outbox.
                log::info!(
                    "the master says goodbye: {}",
                    goodbye.reason.as_deref().unwrap_or("no reason given")
                );
                self.reply_ack(request_id, json!({"message": "goodbye"}));
            }
            other if other.expects_reply() => {
                let detail = format!("a worker does not handle {} messages", other.message_type());
                log::warn!(
                    "the master sent a {} message, which workers do not handle",
                    other.message_type()
                );
                self.reply_error(request_id, ErrorCode::InvalidMessage, detail);
            }
            other => log::debug!(
                "ignoring a {} message from the master",
                other.message_type()
            ),
        }
    }

    /// A frame from the master could not be decoded. `message_type` is its
    /// `message_type` when that much could be read.
    ///
    /// It is answered with an `error` only when its type is one that expects a reply;
    /// acks, errors, events and unreadable frames are only logged.
    pub fn handle_undecodable(
        &mut self,
        now: Duration,
        error: DecodeError,
        message_type: Option<&str>,
    ) {
        self.last_heard = now;
        let answerable = message_type.is_some_and(|kind| !NEVER_ANSWERED_TYPES.contains(&kind));
        log::warn!(
            "could not decode a {} message from the master: {error}",
            message_type.unwrap_or("(unknown)")
        );
        if message_type == Some("task_assign") {
            // An assignment the worker cannot read is refused for good, by the id the
            // decoder found in the raw line: `invalid_message` tells the master that no
            // worker can take these bytes, so it fails the task with this reason
            // instead of offering it again. Nothing runs and no slot is taken.
            self.reply_error(
                error.message_id,
                ErrorCode::InvalidMessage,
                format!("could not read the assignment: {}", error.detail),
            );
        } else if answerable {
            self.reply_error(error.message_id, error.code, error.detail);
        }
    }

    /// A task attempt ended. Its result is saved ([`SessionEvent::SaveResult`]) and kept
    /// until the master acknowledges it, and sent at once when the worker is registered
    /// (else after the next register ack).
    ///
    /// Once the worker is stopping, results are dropped: the attempts still running then
    /// were cancelled and handed back to the master by the `goodbye` (or, without a
    /// connection, are requeued when their lease runs out), so a `cancelled` result sent
    /// later could be recorded as if someone had cancelled the task.
    pub fn handle_task_finished(&mut self, _now: Duration, result: TaskResult) {
        let attempt = result.attempt.unwrap_or(0);
        let key = (result.task_id.clone(), attempt);
        if !self.running.remove(&key) {
            log::debug!(
                "result for {} attempt {attempt}, which was not listed as running",
                result.task_id
            );
        }
        if self.stopping {
            self.abandoned.remove(&key);
            log::info!(
                "not reporting {} attempt {attempt}: it was handed back to the master",
                result.task_id
            );
            return;
        }
        let message_id = self.new_message_id("res");
        let entry = self.outbox_entry(message_id, result);
        self.events.push_back(SessionEvent::SaveResult {
            message_id: entry.message_id.clone(),
            task_id: entry.task_id.clone(),
            attempt,
            line: entry.line.clone(),
        });
        if self.link == Link::Registered {
            self.push_result(&entry);
        }
        self.outbox.push(entry);
    }

    /// A running attempt reported progress: send it to the master as `task_progress`.
    /// Progress is informative only, so it is sent only while registered, for attempts
    /// still running, and never kept for later.
    pub fn handle_task_progress(&mut self, _now: Duration, progress: TaskProgress) {
        let key = (progress.task_id.clone(), progress.attempt.unwrap_or(0));
        if self.link == Link::Registered && !self.stopping && self.running.contains(&key) {
            self.push(Message::TaskProgress(progress), None);
        }
    }

    /// Time has reached (or passed) [`Session::poll_timeout`]: send a heartbeat when one
    /// is due, calling `sample_metrics` for its numbers, or give up on a connection that
    /// has gone silent.
    pub fn handle_timeout(&mut self, now: Duration, sample_metrics: impl FnOnce() -> LiveMetrics) {
        if self.stopping {
            return;
        }
        match &self.link {
            Link::Disconnected => {}
            Link::Authenticating { reply_deadline, .. } => {
                if now >= *reply_deadline {
                    self.give_up(format!(
                        "no reply to the handshake within {} s",
                        REGISTER_REPLY_TIMEOUT.as_secs_f64()
                    ));
                }
            }
            Link::Registering { reply_deadline, .. } => {
                if now >= *reply_deadline {
                    self.give_up(format!(
                        "no reply to register within {} s",
                        REGISTER_REPLY_TIMEOUT.as_secs_f64()
                    ));
                }
            }
            Link::Registered => {
                if now >= self.last_heard + self.silence_limit() {
                    self.give_up(format!(
                        "nothing heard from the master for {} s",
                        (now - self.last_heard).as_secs_f64()
                    ));
                    return;
                }
                let Some(due) = self.next_heartbeat else {
                    return;
                };
                if now < due {
                    return;
                }
                self.push_heartbeat(sample_metrics());
                self.resend_refused_results();
                // Keep to the schedule, but after a long stall start afresh from now
                // rather than sending a burst of heartbeats to catch up.
                let next = due + self.heartbeat_interval;
                self.next_heartbeat = Some(if next > now {
                    next
                } else {
                    now + self.heartbeat_interval
                });
            }
        }
    }

    /// The worker wants to leave gracefully: from now on it refuses new tasks (with
    /// `shutting_down`) and its heartbeats say `status: "draining"`, which tells the
    /// master to send it no more work. One such heartbeat is due at once (or right after
    /// the next register ack, which ends the master's notion of draining). Tasks keep
    /// running and their results are sent as usual; the caller waits for
    /// [`Session::is_drained`] (up to its drain timeout) and then calls
    /// [`Session::handle_stop`].
    pub fn handle_drain(&mut self, now: Duration) {
        if self.draining {
            return;
        }
        self.draining = true;
        if self.link == Link::Registered {
            self.next_heartbeat = Some(now);
        }
    }

    /// The worker is stopping: say goodbye (when connected), which hands the tasks still
    /// running back to the master, refuse new tasks from now on, and ask for every
    /// running task to be cancelled. Results that arrive from now on are dropped (see
    /// [`Session::handle_task_finished`]); results already in the outbox stay there.
    pub fn handle_stop(&mut self, _now: Duration) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.draining = true;
        if self.link != Link::Disconnected {
            let goodbye_id = self.new_message_id("bye");
            let goodbye = Goodbye {
                reason: Some("worker stopping".into()),
            };
            self.push(Message::Goodbye(goodbye), Some(goodbye_id.clone()));
            self.goodbye_id = Some(goodbye_id);
        }
        for (task_id, attempt) in &self.running {
            self.abandoned.insert((task_id.clone(), *attempt));
            self.events.push_back(SessionEvent::CancelTask {
                task_id: task_id.clone(),
                attempt: *attempt,
            });
        }
    }

    /// The next message to write to the master.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.transmit.pop_front()
    }

    /// The next thing to do that is not a message.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should be called next; `None` when nothing is
    /// scheduled (disconnected or stopping).
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.stopping {
            return None;
        }
        match &self.link {
            Link::Disconnected => None,
            Link::Authenticating { reply_deadline, .. }
            | Link::Registering { reply_deadline, .. } => Some(*reply_deadline),
            Link::Registered => {
                let silence_deadline = self.last_heard + self.silence_limit();
                Some(
                    self.next_heartbeat
                        .map_or(silence_deadline, |due| due.min(silence_deadline)),
                )
            }
        }
    }

    // ----- replies from the master -----

    fn on_ack(&mut self, now: Duration, ack: Ack) {
        let original = ack.original_message_id.as_deref();
        if let Link::Authenticating { request_id, .. } = &self.link {
            if original.is_none() || original == Some(request_id.as_str()) {
                self.on_auth_ack(now, &ack.result.fields());
                return;
            }
        }
        if let Link::Registering { register_id, .. } = &self.link {
            // An older master may not echo the id; while registering, an ack without
            // one can only be the register's.
            if original.is_none() || original == Some(register_id.as_str()) {
                self.on_registered(now, &ack.result.fields());
                return;
            }
        }
        let Some(original) = original else {
            log::debug!("ignoring an ack without original_message_id");
            return;
        };
        if self.goodbye_id.as_deref() == Some(original) {
            self.goodbye_acknowledged = true;
            return;
        }
        if let Some(position) = self
            .outbox
            .iter()
            .position(|entry| entry.message_id == original)
        {
            let entry = self.outbox.remove(position);
            self.acked_on_connection = self.acked_on_connection.saturating_add(1);
            let recorded = ack.result.fields().get("recorded").and_then(Value::as_bool);
            log::debug!(
                "the master acknowledged the result of {} attempt {}{}",
                entry.task_id,
                entry.attempt.unwrap_or(0),
                if recorded == Some(false) {
                    " (discarded: the attempt was no longer current)"
                } else {
                    ""
                }
            );
            self.events.push_back(SessionEvent::ForgetResult {
                message_id: entry.message_id,
            });
            return;
        }
        // Heartbeat acks land here, as do acks for results already settled and for
        // registers of earlier connections; none of them changes anything.
        log::trace!("ignoring an ack for {original}");
    }

    fn on_registered(&mut self, now: Duration, result: &Map<String, Value>) {
        if let Some(interval) = heartbeat_interval_from(result) {
            self.heartbeat_interval = interval;
        }
        log::info!(
            "registered as {} (heartbeat every {} s, {} result(s) to deliver)",
            self.config.device_id,
            self.heartbeat_interval.as_secs_f64(),
            self.outbox.len()
        );
        self.link = Link::Registered;
        self.registered_on_connection = true;
        // Registering ends the master's notion of draining: say it again at once.
        self.next_heartbeat = Some(if self.draining {
            now
        } else {
            now + self.heartbeat_interval
        });
        if self.stopping {
            return;
        }
        for idx in 0..self.outbox.len() {
            self.outbox[idx].resend_at_heartbeat = false;
            let entry = self.outbox[idx].clone();
            self.push_result(&entry);
        }
    }

    fn on_error(&mut self, error: ErrorReply) {
        let original = error.original_message_id.as_deref();
        if let Link::Authenticating { request_id, .. } = &self.link {
            if original.is_none() || original == Some(request_id.as_str()) {
                self.on_auth_error(&error);
                return;
            }
        }
        let is_register_reply = matches!(
            (&self.link, original),
            (Link::Registering { register_id, .. }, Some(id)) if id == register_id
        ) || (matches!(self.link, Link::Registering { .. })
            && original.is_none());
        if is_register_reply {
            log::error!(
                "the master refused the registration: {} ({})",
                error.error,
                error.code
            );
            // A master that proved itself on this connection is believed at once;
            // a refusal from an unproven peer counts towards the limit.
            let proven = self.proven_on_connection;
            match error.code {
                ErrorCode::AuthRequired => self.refused_unproven(format!(
                    "the master requires authentication: start the worker with \
                     RETIRE_JOIN_TOKEN set or --token-file (the join token that `retire-master \
                     token show` prints) ({})",
                    error.error
                )),
                ErrorCode::DeviceRevoked if proven => self.refuse(error.error.clone()),
                ErrorCode::DeviceRevoked => self.refused_unproven(error.error.clone()),
                _ => self.give_up(format!("registration refused: {}", error.code)),
            }
            return;
        }
        if original.is_some() && original == self.goodbye_id.as_deref() {
            // The master will drop the connection either way; there is nothing to retry.
            self.goodbye_acknowledged = true;
            return;
        }
        let outbox_position =
            original.and_then(|id| self.outbox.iter().position(|entry| entry.message_id == id));
        match outbox_position {
            Some(position)
                if error.code.is_retryable() || error.code == ErrorCode::NotRegistered =>
            {
                let entry = &mut self.outbox[position];
                log::warn!(
                    "the master could not take the result of {} yet ({}: {}); it will be sent again",
                    entry.task_id,
                    error.code,
                    error.error
                );
                entry.resend_at_heartbeat = true;
            }
            Some(position) => {
                let entry = self.outbox.remove(position);
                log::error!(
                    "the master rejected the result of {} attempt {}: {} ({}); dropping it",
                    entry.task_id,
                    entry.attempt.unwrap_or(0),
                    error.error,
                    error.code
                );
                self.events.push_back(SessionEvent::ForgetResult {
                    message_id: entry.message_id,
                });
            }
            None => log::warn!(
                "the master replied with an error to {}: {} ({})",
                original.unwrap_or("a message without id"),
                error.error,
                error.code
            ),
        }
        if error.code == ErrorCode::NotRegistered && self.link == Link::Registered {
            self.give_up("the master no longer knows this worker".into());
        }
        // The master revokes a connected device by telling it so on its own,
        // authenticated, connection.
        if error.code == ErrorCode::DeviceRevoked && self.link == Link::Registered {
            if self.proven_on_connection {
                self.refuse(error.error);
            } else {
                self.refused_unproven(error.error);
            }
        }
    }

    // ----- requests from the master -----

    fn on_assign(&mut self, request_id: Option<String>, assign: TaskAssign) {
        let TaskAssign { task, attempt } = assign;
        if self.stopping {
            // After the goodbye: every task, even one it was running, is the master's.
            self.reply_error(
                request_id,
                ErrorCode::ShuttingDown,
                "the worker is stopping",
            );
            return;
        }
        let task_id = match (&task.task_id, task.validate()) {
            (Some(task_id), Ok(())) => task_id.clone(),
            (None, _) => {
                self.reply_error(
                    request_id,
                    ErrorCode::InvalidMessage,
                    "task_assign needs data.task.task_id",
                );
                return;
            }
            (_, Err(detail)) => {
                self.reply_error(request_id, ErrorCode::InvalidMessage, detail);
                return;
            }
        };
        let key = (task_id.clone(), attempt);
        let already_finished = self
            .outbox
            .iter()
            .any(|entry| entry.task_id == task_id && entry.attempt.unwrap_or(0) == attempt);
        if self.running.contains(&key) || already_finished {
            // The master sent the same attempt again (its first assign's ack was lost
            // with a connection): confirm it without running the task twice.
            self.reply_ack(
                request_id,
                json!({"message": "already accepted", "task_id": task_id, "attempt": attempt}),
            );
            return;
        }
        if self.draining {
            // Checked after the repeat above: refusing an attempt it is running would
            // make the master requeue a task that is still running here.
            self.reply_error(
                request_id,
                ErrorCode::ShuttingDown,
                "the worker is draining",
            );
            return;
        }
        if !self.config.task_types.contains(&task.task_type) {
            let detail = format!("this worker does not run {:?} tasks", task.task_type);
            self.reply_error(request_id, ErrorCode::UnsupportedTaskType, detail);
            return;
        }
        if self.running.len() >= self.config.slots {
            let detail = format!("all {} slots are busy", self.config.slots);
            self.reply_error(request_id, ErrorCode::NoFreeSlot, detail);
            return;
        }
        if self.outbox.len() >= MAX_UNACKNOWLEDGED_RESULTS {
            let detail = format!(
                "{} results wait for the master's acknowledgement",
                self.outbox.len()
            );
            self.reply_error(request_id, ErrorCode::NoFreeSlot, detail);
            return;
        }
        self.running.insert(key);
        self.reply_ack(
            request_id,
            json!({"message": "accepted", "task_id": task_id, "attempt": attempt}),
        );
        self.events.push_back(SessionEvent::StartTask {
            task: Box::new(task),
            attempt,
        });
    }

    fn on_cancel(&mut self, request_id: Option<String>, cancel: TaskCancel) {
        let matching: Vec<u32> = self
            .running
            .iter()
            .filter(|(task_id, attempt)| {
                *task_id == cancel.task_id && cancel.attempt.is_none_or(|wanted| wanted == *attempt)
            })
            .map(|(_, attempt)| *attempt)
            .collect();
        for attempt in &matching {
            self.events.push_back(SessionEvent::CancelTask {
                task_id: cancel.task_id.clone(),
                attempt: *attempt,
            });
        }
        // A cancel for a task that is not running is not an error: it may have finished
        // a moment ago, and its result is on its way.
        self.reply_ack(
            request_id,
            json!({"task_id": cancel.task_id, "cancelled": !matching.is_empty()}),
        );
    }

    // ----- helpers -----

    fn silence_limit(&self) -> Duration {
        (self.heartbeat_interval * SILENT_INTERVALS_BEFORE_RECONNECT)
            .max(MIN_SILENCE_BEFORE_RECONNECT)
    }

    /// Asks the caller to drop the connection, and stops using it at once so that
    /// nothing more is queued for it.
    fn give_up(&mut self, reason: String) {
        log::warn!("dropping the connection to the master: {reason}");
        self.link = Link::Disconnected;
        self.transmit.clear();
        self.next_heartbeat = None;
        self.events.push_back(SessionEvent::Reconnect { reason });
    }

    fn new_message_id(&mut self, kind: &str) -> String {
        self.next_message_seq += 1;
        format!(
            "{kind}-{}-{}",
            self.config.message_id_prefix, self.next_message_seq
        )
    }

    fn push(&mut self, message: Message, message_id: Option<String>) {
        let mut envelope = Envelope::new(message).from_sender(self.config.device_id.clone());
        envelope.message_id = message_id;
        self.transmit
            .push_back(Outgoing::Message(Box::new(envelope)));
    }

    fn push_result(&mut self, entry: &OutboxEntry) {
        self.transmit
            .push_back(Outgoing::Encoded(entry.line.clone()));
    }

    fn push_heartbeat(&mut self, live: LiveMetrics) {
        let heartbeat = Heartbeat {
            metrics: Metrics {
                cpu_usage: Some(live.cpu_usage),
                memory_usage: Some(live.memory_usage),
                disk_usage: Some(live.disk_usage),
                load_average: Some(live.load_average.to_vec()),
                uptime: Some(live.uptime_secs as f64),
                extra: Map::new(),
            },
            status: Some(if self.draining { "draining" } else { "online" }.into()),
            active_tasks: Some(u32::try_from(self.running.len()).unwrap_or(u32::MAX)),
            last_activity: None,
            // Left out while nothing is known, so a device without sensors sends what
            // it always sent.
            power: Some(live.power).filter(|power| *power != Power::default()),
            extra: Map::new(),
        };
        let heartbeat_id = self.new_message_id("hb");
        self.push(Message::Heartbeat(heartbeat), Some(heartbeat_id));
    }

    fn resend_refused_results(&mut self) {
        for idx in 0..self.outbox.len() {
            if self.outbox[idx].resend_at_heartbeat {
                self.outbox[idx].resend_at_heartbeat = false;
                let entry = self.outbox[idx].clone();
                self.push_result(&entry);
            }
        }
    }

    fn reply_ack(&mut self, original_message_id: Option<String>, fields: Value) {
        self.push(Message::Ack(Ack::new(original_message_id, fields)), None);
    }

    fn reply_error(
        &mut self,
        original_message_id: Option<String>,
        code: ErrorCode,
        detail: impl Into<String>,
    ) {
        let error = ErrorReply::new(original_message_id, code, detail);
        self.push(Message::Error(error), None);
    }
}

/// Reads `heartbeat_interval` (seconds) out of a register ack's result, clamped to a
/// sane range; `None` when it is missing or not a positive number.
fn heartbeat_interval_from(result: &Map<String, Value>) -> Option<Duration> {
    let seconds = result.get("heartbeat_interval")?.as_f64()?;
    if !seconds.is_finite() || seconds <= 0.0 {
        log::warn!("ignoring the master's heartbeat interval of {seconds} s");
        return None;
    }
    let interval = Duration::try_from_secs_f64(seconds).unwrap_or(MAX_HEARTBEAT_INTERVAL);
    Some(interval.clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL))
}

/// The `register` message without the parts that change per connection.
fn register_template(config: &SessionConfig, profile: &DeviceProfile) -> Register {
    let mut extra = Map::new();
    extra.insert("worker_version".into(), json!(env!("CARGO_PKG_VERSION")));
    extra.insert("disks".into(), json!(profile.disks));
    Register {
        hostname: Some(profile.hostname.clone()),
        platform: Some(profile.platform.clone()),
        architecture: Some(profile.architecture.clone()),
        os_version: profile.os_version.clone(),
        kernel_version: profile.kernel_version.clone(),
        cpu_model: profile.cpu_model.clone(),
        python_version: None,
        ip_address: profile.ip_address.clone(),
        role: Some(config.role.clone()),
        cpu_cores: Some(profile.cpu_cores),
        memory_total_bytes: Some(profile.memory_total_bytes),
        disk_total_bytes: Some(profile.disk_total_bytes),
        network_interfaces: profile.network_interfaces.clone(),
        capabilities: None,
        tags: config.tags.clone(),
        task_types: Some(config.task_types.clone()),
        slots: Some(u32::try_from(config.slots).unwrap_or(u32::MAX)),
        running_tasks: Vec::new(),
        // This worker keeps running its tasks and keeps their results while
        // it is away from the master, so the master may hold them for it.
        leases: true,
        sandbox: profile.sandbox.clone(),
        cpu_benchmark: profile.cpu_benchmark,
        power: None,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ResultStatus, TaskSpec};
    use std::collections::HashSet;

    const DEVICE: &str = "pi-kitchen";

    fn profile() -> DeviceProfile {
        DeviceProfile {
            hostname: "kitchen".into(),
            platform: "linux".into(),
            architecture: "aarch64".into(),
            os_version: Some("Debian GNU/Linux 12".into()),
            kernel_version: Some("6.1.0".into()),
            cpu_model: None,
            cpu_cores: 4,
            memory_total_bytes: 4 << 30,
            disk_total_bytes: 32 << 30,
            disks: vec![DiskInfo {
                mount_point: "/".into(),
                total_bytes: 32 << 30,
                available_bytes: 16 << 30,
            }],
            network_interfaces: vec!["eth0".into(), "lo".into()],
            ip_address: Some("192.168.1.20".into()),
            sandbox: Some("full".into()),
            cpu_benchmark: Some(250.0),
        }
    }

    fn session_with_slots(slots: usize) -> Session {
        let config = SessionConfig {
            device_id: DEVICE.into(),
            task_types: vec!["echo".into(), "sleep".into()],
            slots,
            role: "worker".into(),
            tags: vec!["kitchen".into()],
            message_id_prefix: "test".into(),
        };
        Session::new(config, &profile())
    }

    fn secs(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    fn metrics() -> LiveMetrics {
        LiveMetrics {
            cpu_usage: 12.5,
            memory_usage: 40.0,
            disk_usage: 50.0,
            load_average: [0.5, 0.25, 0.125],
            uptime_secs: 86_400,
            power: Power::default(),
        }
    }

    /// What the session wrote, each as the master reads it.
    fn sent(session: &mut Session) -> Vec<Envelope> {
        std::iter::from_fn(|| session.poll_transmit())
            .map(|outgoing| match outgoing {
                Outgoing::Message(envelope) => *envelope,
                Outgoing::Encoded(line) => {
                    let bytes = line.as_bytes();
                    Envelope::decode(&bytes[..bytes.len() - 1]).expect("a result's line decodes")
                }
            })
            .collect()
    }

    fn events(session: &mut Session) -> Vec<SessionEvent> {
        std::iter::from_fn(|| session.poll_event()).collect()
    }

    /// An envelope as the master would send it.
    fn from_master(message: Message, message_id: Option<&str>) -> Envelope {
        let mut envelope = Envelope::new(message).from_sender("main-node");
        envelope.message_id = message_id.map(str::to_string);
        envelope
    }

    fn ack(original: &str, fields: Value) -> Envelope {
        from_master(Message::Ack(Ack::new(Some(original.into()), fields)), None)
    }

    fn assign(task_id: &str, task_type: &str, attempt: u32) -> Envelope {
        let mut task = TaskSpec::new(task_type, json!({"message": "hi"}));
        task.task_id = Some(task_id.into());
        let message_id = format!("assign:{attempt}:{task_id}");
        from_master(
            Message::TaskAssign(TaskAssign { task, attempt }),
            Some(&message_id),
        )
    }

    fn cancel(task_id: &str, attempt: Option<u32>) -> Envelope {
        let cancel = TaskCancel {
            task_id: task_id.into(),
            attempt,
        };
        from_master(Message::TaskCancel(cancel), None)
    }

    fn finished(task_id: &str, attempt: u32) -> TaskResult {
        TaskResult {
            task_id: task_id.into(),
            attempt: Some(attempt),
            status: ResultStatus::Completed,
            execution_time: Some(0.5),
            result: json!({"output": "hi", "exit_code": 0}),
            error: None,
        }
    }

    fn only(mut envelopes: Vec<Envelope>) -> Envelope {
        assert_eq!(
            envelopes.len(),
            1,
            "expected one envelope, got {envelopes:?}"
        );
        envelopes.remove(0)
    }

    fn id_of(envelope: &Envelope) -> String {
        envelope
            .message_id
            .clone()
            .expect("requests carry a message_id")
    }

    /// Connects at `now` and answers the register with `interval` seconds.
    fn register(session: &mut Session, now: f64, interval: f64) {
        session.handle_connected(secs(now), None);
        let register = only(sent(session));
        session.handle_message(
            secs(now),
            ack(&id_of(&register), json!({"heartbeat_interval": interval})),
        );
        assert!(session.is_registered());
    }

    fn assert_error_reply(envelope: &Envelope, code: ErrorCode, original: Option<&str>) {
        match &envelope.message {
            Message::Error(error) => {
                assert_eq!(error.code, code, "{error:?}");
                assert_eq!(error.original_message_id.as_deref(), original);
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    fn assert_ack_reply(envelope: &Envelope, original: Option<&str>) -> Map<String, Value> {
        match &envelope.message {
            Message::Ack(ack) => {
                assert_eq!(ack.original_message_id.as_deref(), original);
                ack.result.fields().into_owned()
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// The registration as the master stores it and holds to
    /// `MAX_PROFILE_BYTES`: `data` without the tasks still running.
    fn stored_size(register: Register) -> usize {
        let wire = Envelope::new(Message::Register(register)).to_value();
        let mut data = wire["data"].clone();
        if let Some(data) = data.as_object_mut() {
            data.remove("running_tasks");
        }
        protocol::limits::json_len(&data)
    }

    #[test]
    fn what_the_worker_registers_stays_far_below_the_masters_cap() {
        let config = SessionConfig {
            device_id: DEVICE.into(),
            task_types: crate::tasks::executor::BUILTIN_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            slots: 64,
            role: "worker".into(),
            tags: (0..8).map(|n| format!("a-longish-tag-{n}")).collect(),
            message_id_prefix: "test".into(),
        };
        // This machine, whatever it is.
        let here = stored_size(register_template(&config, &DeviceProfile::collect()));
        // A big container host: 200 interfaces, 40 file systems, long names.
        let mut host = profile();
        host.cpu_model = Some("AMD EPYC 9654 96-Core Processor".into());
        host.network_interfaces = (0..200).map(|n| format!("veth{n:07x}")).collect();
        host.disks = (0..40)
            .map(|n| DiskInfo {
                mount_point: format!("/var/lib/docker/overlay2/{n:064x}/merged"),
                total_bytes: 1 << 40,
                available_bytes: 1 << 39,
            })
            .collect();
        let big = stored_size(register_template(&config, &host));
        eprintln!("register as stored: {here} bytes here, {big} bytes on a big host");
        assert!(
            here <= protocol::limits::MAX_PROFILE_BYTES / 4,
            "{here} bytes"
        );
        assert!(big < protocol::limits::MAX_PROFILE_BYTES, "{big} bytes");
    }

    #[test]
    fn register_message_has_profile_types_slots_role_and_tags() {
        let mut session = session_with_slots(3);
        session.handle_connected(secs(0.0), Some("10.0.0.7".into()));
        let register = only(sent(&mut session));
        assert!(!session.is_registered());
        let wire = register.to_value();
        assert_eq!(wire["message_type"], json!("register"));
        assert_eq!(wire["sender_id"], json!(DEVICE));
        assert!(wire["message_id"].as_str().is_some_and(|id| !id.is_empty()));
        let data = &wire["data"];
        assert_eq!(data["task_types"], json!(["echo", "sleep"]));
        assert_eq!(data["slots"], json!(3));
        assert_eq!(data["tags"], json!(["kitchen"]));
        assert_eq!(data["device_info"]["role"], json!("worker"));
        assert_eq!(data["device_info"]["hostname"], json!("kitchen"));
        assert_eq!(data["device_info"]["platform"], json!("linux"));
        assert_eq!(data["device_info"]["architecture"], json!("aarch64"));
        assert_eq!(data["device_info"]["ip_address"], json!("10.0.0.7"));
        assert_eq!(data["hardware_specs"]["cpu_cores"], json!(4));
        assert_eq!(data["hardware_specs"]["memory_total"], json!(4u64 << 30));
        assert_eq!(data["hardware_specs"]["cpu_benchmark"], json!(250.0));
        assert_eq!(
            data["hardware_specs"]["network_interfaces"],
            json!(["eth0", "lo"])
        );
        assert!(data.get("running_tasks").is_none(), "{data}");
        // What the worker writes, the protocol crate reads back.
        let decoded = Envelope::decode(&register.to_line()[..]).expect("register decodes");
        match decoded.message {
            Message::Register(register) => {
                assert_eq!(register.slots, Some(3));
                assert_eq!(
                    register.task_types,
                    Some(vec!["echo".into(), "sleep".into()])
                );
            }
            other => panic!("expected a register, got {other:?}"),
        }
    }

    #[test]
    fn register_after_reconnect_lists_running_tasks() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "echo", 2));
        sent(&mut session);
        session.handle_disconnected(secs(0.2));
        session.handle_connected(secs(0.3), None);
        let register_again = only(sent(&mut session)).to_value();
        assert_eq!(
            register_again["data"]["running_tasks"],
            json!([{"task_id": "t-1", "attempt": 2}])
        );

        session.handle_task_finished(secs(0.4), finished("t-1", 2));
        session.handle_disconnected(secs(0.5));
        session.handle_connected(secs(0.6), None);
        // Finished but not yet acknowledged: still held, so still listed.
        let third = only(sent(&mut session)).to_value();
        assert_eq!(
            third["data"]["running_tasks"],
            json!([{"task_id": "t-1", "attempt": 2}])
        );
    }

    #[test]
    fn heartbeat_is_due_exactly_one_interval_after_the_register_ack() {
        let mut session = session_with_slots(2);
        session.handle_connected(secs(0.0), None);
        let register = only(sent(&mut session));
        // Before the ack, the only deadline is the register reply timeout.
        assert_eq!(session.poll_timeout(), Some(REGISTER_REPLY_TIMEOUT));
        assert_eq!(session.heartbeat_interval(), DEFAULT_HEARTBEAT_INTERVAL);
        session.handle_message(
            secs(1.0),
            ack(
                &id_of(&register),
                json!({"message": "registered", "heartbeat_interval": 0.25}),
            ),
        );
        assert_eq!(session.heartbeat_interval(), secs(0.25));
        assert_eq!(session.poll_timeout(), Some(secs(1.25)));

        session.handle_timeout(secs(1.2499), metrics);
        assert!(sent(&mut session).is_empty());

        session.handle_message(secs(1.2), assign("t-1", "sleep", 1));
        sent(&mut session);
        session.handle_timeout(secs(1.25), metrics);
        let heartbeat = only(sent(&mut session));
        assert_eq!(heartbeat.sender_id.as_deref(), Some(DEVICE));
        let wire = heartbeat.to_value();
        assert_eq!(wire["message_type"], json!("heartbeat"));
        assert_eq!(wire["data"]["status"], json!("online"));
        assert_eq!(wire["data"]["active_tasks"], json!(1));
        assert_eq!(wire["data"]["system_metrics"]["cpu_usage"], json!(12.5));
        assert_eq!(
            wire["data"]["system_metrics"]["load_average"],
            json!([0.5, 0.25, 0.125])
        );
        assert_eq!(wire["data"]["system_metrics"]["uptime"], json!(86400.0));
        // Nothing known about power and heat: the heartbeat says nothing about them.
        assert_eq!(wire["data"].get("power"), None);
        assert_eq!(session.poll_timeout(), Some(secs(1.5)));
    }

    #[test]
    fn heartbeats_carry_the_power_readings_they_are_given() {
        fn check(power: Power, expect: Option<Value>) {
            let mut session = session_with_slots(1);
            session.handle_connected(secs(0.0), None);
            let register = only(sent(&mut session));
            session.handle_message(
                secs(0.0),
                ack(&id_of(&register), json!({"heartbeat_interval": 1})),
            );
            session.handle_timeout(secs(1.0), || LiveMetrics { power, ..metrics() });
            let wire = only(sent(&mut session)).to_value();
            assert_eq!(wire["data"].get("power"), expect.as_ref(), "{power:?}");
        }
        check(Power::default(), None);
        check(
            Power {
                battery_percent: Some(18.0),
                charging: Some(false),
                on_ac: Some(false),
                temperature_c: Some(39.5),
            },
            Some(json!({
                "battery_percent": 18.0, "charging": false, "on_ac": false, "temperature_c": 39.5
            })),
        );
        // A desktop knows only that it is on mains.
        check(
            Power {
                on_ac: Some(true),
                ..Power::default()
            },
            Some(json!({"on_ac": true})),
        );
    }

    #[test]
    fn heartbeat_interval_defaults_to_five_seconds_when_the_ack_does_not_say() {
        let mut session = session_with_slots(1);
        session.handle_connected(secs(0.0), None);
        let register = only(sent(&mut session));
        session.handle_message(
            secs(2.0),
            ack(&id_of(&register), json!({"message": "registered"})),
        );
        assert_eq!(
            session.poll_timeout(),
            Some(secs(2.0) + DEFAULT_HEARTBEAT_INTERVAL)
        );
    }

    #[test]
    fn accepted_assignment_is_acked_with_the_assign_id_and_started() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.5), assign("t-1", "echo", 3));
        let reply = only(sent(&mut session));
        assert_eq!(reply.sender_id.as_deref(), Some(DEVICE));
        let result = assert_ack_reply(&reply, Some("assign:3:t-1"));
        assert_eq!(result["success"], json!(true));
        match only_event(&mut session) {
            SessionEvent::StartTask { task, attempt } => {
                assert_eq!(task.task_id.as_deref(), Some("t-1"));
                assert_eq!(task.task_type, "echo");
                assert_eq!(attempt, 3);
            }
            other => panic!("expected StartTask, got {other:?}"),
        }
        assert_eq!(
            session.running_tasks(),
            vec![RunningTask {
                task_id: "t-1".into(),
                attempt: 3
            }]
        );
    }

    fn only_event(session: &mut Session) -> SessionEvent {
        let mut all = events(session);
        assert_eq!(all.len(), 1, "expected one event, got {all:?}");
        all.remove(0)
    }

    #[test]
    fn unsupported_type_is_refused() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.5), assign("t-1", "python_eval", 1));
        let reply = only(sent(&mut session));
        assert_error_reply(&reply, ErrorCode::UnsupportedTaskType, Some("assign:1:t-1"));
        assert!(events(&mut session).is_empty());
        assert!(session.running_tasks().is_empty());
    }

    #[test]
    fn assignment_beyond_the_slots_is_refused_until_a_slot_frees() {
        let mut session = session_with_slots(1);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        assert_ack_reply(&only(sent(&mut session)), Some("assign:1:t-1"));
        session.handle_message(secs(0.2), assign("t-2", "echo", 1));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::NoFreeSlot,
            Some("assign:1:t-2"),
        );
        assert_eq!(events(&mut session).len(), 1);

        session.handle_task_finished(secs(0.3), finished("t-1", 1));
        sent(&mut session);
        session.handle_message(secs(0.4), assign("t-2", "echo", 2));
        assert_ack_reply(&only(sent(&mut session)), Some("assign:2:t-2"));
    }

    #[test]
    fn the_same_attempt_assigned_twice_runs_once() {
        let mut session = session_with_slots(1);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        session.handle_message(secs(0.2), assign("t-1", "sleep", 1));
        let replies = sent(&mut session);
        assert_eq!(replies.len(), 2);
        for reply in &replies {
            assert_ack_reply(reply, Some("assign:1:t-1"));
        }
        assert_eq!(events(&mut session).len(), 1);
    }

    #[test]
    fn bad_assignments_get_invalid_message() {
        let mut session = session_with_slots(1);
        register(&mut session, 0.0, 1.0);
        // Without a task id the protocol decoder already refuses it.
        let line = br#"{"message_type":"task_assign","message_id":"assign:1:x","data":{"task":{"task_type":"echo"}}}"#;
        let error = Envelope::decode(line).expect_err("no task id");
        session.handle_undecodable(secs(0.1), error, Some("task_assign"));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::InvalidMessage,
            Some("assign:1:x"),
        );

        // A task id with whitespace decodes but fails validation.
        session.handle_message(secs(0.2), assign("bad id", "echo", 1));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::InvalidMessage,
            Some("assign:1:bad id"),
        );
        assert!(events(&mut session).is_empty());
    }

    #[test]
    fn result_stays_in_the_outbox_until_acked_and_is_resent_after_reconnect() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "echo", 4));
        sent(&mut session);
        session.handle_task_finished(secs(0.2), finished("t-1", 4));
        let result = only(sent(&mut session));
        let result_id = id_of(&result);
        assert_eq!(result.sender_id.as_deref(), Some(DEVICE));
        let wire = result.to_value();
        assert_eq!(wire["message_type"], json!("task_result"));
        assert_eq!(wire["data"]["task_id"], json!("t-1"));
        assert_eq!(wire["data"]["attempt"], json!(4));
        assert_eq!(wire["data"]["status"], json!("completed"));
        assert_eq!(wire["data"]["result"]["output"], json!("hi"));
        assert_eq!(session.n_unacknowledged_results(), 1);

        // The connection drops before the ack: the result waits for the register ack.
        session.handle_disconnected(secs(0.3));
        session.handle_connected(secs(0.4), None);
        let register = only(sent(&mut session));
        assert!(matches!(register.message, Message::Register(_)));
        session.handle_message(
            secs(0.5),
            ack(&id_of(&register), json!({"heartbeat_interval": 1.0})),
        );
        let resent = only(sent(&mut session));
        assert_eq!(id_of(&resent), result_id);
        assert_eq!(resent.message, result.message);

        session.handle_message(secs(0.6), ack(&result_id, json!({"recorded": true})));
        assert_eq!(session.n_unacknowledged_results(), 0);
        session.handle_disconnected(secs(0.7));
        register_and_expect_nothing_else(&mut session, 0.8);
    }

    fn register_and_expect_nothing_else(session: &mut Session, now: f64) {
        session.handle_connected(secs(now), None);
        let register = only(sent(session));
        session.handle_message(secs(now), ack(&id_of(&register), json!({})));
        assert!(sent(session).is_empty());
    }

    #[test]
    fn result_finished_while_disconnected_is_sent_after_the_register_ack() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "echo", 1));
        sent(&mut session);
        session.handle_disconnected(secs(0.2));
        session.handle_task_finished(secs(0.3), finished("t-1", 1));
        assert!(sent(&mut session).is_empty());
        session.handle_connected(secs(0.4), None);
        let register = only(sent(&mut session));
        session.handle_message(secs(0.5), ack(&id_of(&register), json!({})));
        let result = only(sent(&mut session));
        assert!(matches!(&result.message, Message::TaskResult(r) if r.task_id == "t-1"));
    }

    #[test]
    fn progress_of_running_attempts_is_sent_and_nothing_else() {
        let progress = |task_id: &str, attempt: u32| TaskProgress {
            task_id: task_id.into(),
            attempt: Some(attempt),
            fraction: Some(0.5),
            done: None,
            total: None,
            message: Some("half".into()),
        };
        let mut session = session_with_slots(2);
        session.handle_task_progress(secs(0.0), progress("t-1", 1));
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        sent(&mut session);
        session.handle_task_progress(secs(0.2), progress("t-1", 1));
        let envelope = only(sent(&mut session));
        assert_eq!(envelope.sender_id.as_deref(), Some(DEVICE));
        assert_eq!(envelope.message, Message::TaskProgress(progress("t-1", 1)));
        // Another attempt, an unknown task, or a finished one: dropped.
        session.handle_task_progress(secs(0.3), progress("t-1", 2));
        session.handle_task_progress(secs(0.3), progress("t-9", 1));
        session.handle_task_finished(secs(0.4), finished("t-1", 1));
        sent(&mut session);
        session.handle_task_progress(secs(0.5), progress("t-1", 1));
        assert!(sent(&mut session).is_empty());
    }

    #[test]
    fn cancel_is_routed_to_the_matching_attempts() {
        let mut session = session_with_slots(3);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        session.handle_message(secs(0.1), assign("t-1", "sleep", 2));
        session.handle_message(secs(0.1), assign("t-2", "sleep", 1));
        sent(&mut session);
        events(&mut session);

        session.handle_message(secs(0.2), cancel("t-1", Some(2)));
        let result = assert_ack_reply(&only(sent(&mut session)), None);
        assert_eq!(result["cancelled"], json!(true));
        assert_eq!(
            events(&mut session),
            vec![SessionEvent::CancelTask {
                task_id: "t-1".into(),
                attempt: 2
            }]
        );

        session.handle_message(secs(0.3), cancel("t-1", None));
        sent(&mut session);
        assert_eq!(events(&mut session).len(), 2);

        session.handle_message(secs(0.4), cancel("t-9", None));
        let result = assert_ack_reply(&only(sent(&mut session)), None);
        assert_eq!(result["cancelled"], json!(false));
        assert!(events(&mut session).is_empty());
    }

    #[test]
    fn stale_and_unknown_acks_are_ignored() {
        let mut session = session_with_slots(2);
        session.handle_connected(secs(0.0), None);
        let old_register = only(sent(&mut session));
        session.handle_disconnected(secs(0.1));
        session.handle_connected(secs(0.2), None);
        let new_register = only(sent(&mut session));
        assert_ne!(id_of(&old_register), id_of(&new_register));

        // The ack for the previous connection's register does not register this one.
        session.handle_message(
            secs(0.3),
            ack(&id_of(&old_register), json!({"heartbeat_interval": 0.1})),
        );
        assert!(!session.is_registered());
        assert_eq!(session.heartbeat_interval(), DEFAULT_HEARTBEAT_INTERVAL);
        session.handle_message(
            secs(0.4),
            ack(&id_of(&new_register), json!({"heartbeat_interval": 1.0})),
        );
        assert!(session.is_registered());

        session.handle_message(secs(0.5), assign("t-1", "echo", 1));
        sent(&mut session);
        events(&mut session);
        session.handle_task_finished(secs(0.6), finished("t-1", 1));
        let result_id = id_of(&only(sent(&mut session)));
        events(&mut session);
        session.handle_message(secs(0.7), ack("res-somebody-else-1", json!({})));
        session.handle_message(secs(0.7), ack(&id_of(&new_register), json!({})));
        assert_eq!(session.n_unacknowledged_results(), 1);
        assert!(events(&mut session).is_empty());
        session.handle_message(secs(0.8), ack(&result_id, json!({})));
        session.handle_message(secs(0.9), ack(&result_id, json!({})));
        assert_eq!(session.n_unacknowledged_results(), 0);
        assert!(sent(&mut session).is_empty(), "acks are never answered");
        // Only the first ack settles it.
        assert_eq!(
            events(&mut session),
            vec![SessionEvent::ForgetResult {
                message_id: result_id
            }]
        );
    }

    #[test]
    fn unexpected_messages_are_answered_only_when_they_expect_a_reply() {
        let mut session = session_with_slots(1);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), from_master(Message::Status, Some("s-1")));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::InvalidMessage,
            Some("s-1"),
        );

        let error = ErrorReply::new(Some("nothing".into()), ErrorCode::NotFound, "no such thing");
        session.handle_message(secs(0.2), from_master(Message::Error(error), None));
        let progress = protocol::TaskProgress {
            task_id: "t".into(),
            attempt: None,
            fraction: Some(0.5),
            done: None,
            total: None,
            message: None,
        };
        session.handle_message(
            secs(0.3),
            from_master(Message::TaskProgress(progress), None),
        );
        assert!(sent(&mut session).is_empty());

        let garbage =
            Envelope::decode(br#"{"message_type":"ack","data":[]}"#).expect_err("bad data");
        session.handle_undecodable(secs(0.4), garbage, Some("ack"));
        let unreadable = Envelope::decode(b"{not json").expect_err("bad json");
        session.handle_undecodable(secs(0.5), unreadable, None);
        assert!(sent(&mut session).is_empty());

        let unknown = Envelope::decode(br#"{"message_type":"teleport","message_id":"x-1"}"#)
            .expect_err("unknown type");
        session.handle_undecodable(secs(0.6), unknown, Some("teleport"));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::UnknownMessageType,
            Some("x-1"),
        );
    }

    #[test]
    fn every_request_has_a_unique_id_and_every_message_the_sender() {
        let mut session = session_with_slots(4);
        let mut all = Vec::new();
        session.handle_connected(secs(0.0), None);
        all.extend(sent(&mut session));
        let register_id = id_of(&all[0]);
        session.handle_message(
            secs(0.0),
            ack(&register_id, json!({"heartbeat_interval": 0.5})),
        );
        for (idx, now) in [0.5, 1.0, 1.5].into_iter().enumerate() {
            session.handle_message(secs(now), assign(&format!("t-{idx}"), "echo", 1));
            session.handle_task_finished(secs(now), finished(&format!("t-{idx}"), 1));
            session.handle_timeout(secs(now), metrics);
            all.extend(sent(&mut session));
        }
        session.handle_stop(secs(2.0));
        all.extend(sent(&mut session));
        assert!(all
            .iter()
            .all(|envelope| envelope.sender_id.as_deref() == Some(DEVICE)));
        let request_ids: Vec<String> = all
            .iter()
            .filter(|envelope| envelope.message.expects_reply())
            .map(id_of)
            .collect();
        let unique: HashSet<&String> = request_ids.iter().collect();
        assert_eq!(unique.len(), request_ids.len(), "{request_ids:?}");
        // Register, three heartbeats, three results and the goodbye.
        assert_eq!(request_ids.len(), 8, "{all:?}");
    }

    #[test]
    fn stop_says_goodbye_cancels_running_tasks_and_refuses_new_ones() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        sent(&mut session);
        events(&mut session);

        session.handle_stop(secs(0.2));
        let goodbye = only(sent(&mut session));
        assert_eq!(goodbye.to_value()["message_type"], json!("goodbye"));
        assert_eq!(goodbye.sender_id.as_deref(), Some(DEVICE));
        assert_eq!(
            events(&mut session),
            vec![SessionEvent::CancelTask {
                task_id: "t-1".into(),
                attempt: 1
            }]
        );
        assert_eq!(session.poll_timeout(), None);

        session.handle_message(secs(0.3), assign("t-2", "echo", 1));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::ShuttingDown,
            Some("assign:1:t-2"),
        );
        // A task killed by the stop is not reported: the master requeues it.
        session.handle_task_finished(secs(0.4), finished("t-1", 1));
        assert!(sent(&mut session).is_empty());
        assert!(!session.goodbye_acknowledged());
        session.handle_message(secs(0.5), ack(&id_of(&goodbye), json!({})));
        assert!(session.goodbye_acknowledged());
    }

    #[test]
    fn a_result_is_saved_before_it_is_sent_and_forgotten_once_settled() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "echo", 4));
        sent(&mut session);
        events(&mut session);
        session.handle_task_finished(secs(0.2), finished("t-1", 4));
        let result = only(sent(&mut session));
        let result_id = id_of(&result);
        assert_eq!(
            events(&mut session),
            vec![SessionEvent::SaveResult {
                message_id: result_id.clone(),
                task_id: "t-1".into(),
                attempt: 4,
                line: EncodedEnvelope::new(
                    &Envelope::new(Message::TaskResult(finished("t-1", 4)))
                        .from_sender(session.device_id())
                        .with_id(result_id.clone())
                ),
            }]
        );
        // A retryable refusal keeps it (on disk too); a final one forgets it.
        let refuse = |code| {
            let error = ErrorReply::new(Some(result_id.clone()), code, "nope");
            from_master(Message::Error(error), None)
        };
        session.handle_message(secs(0.3), refuse(ErrorCode::ShuttingDown));
        assert!(events(&mut session).is_empty());
        session.handle_message(secs(0.4), refuse(ErrorCode::NotFound));
        assert_eq!(
            events(&mut session),
            vec![SessionEvent::ForgetResult {
                message_id: result_id
            }]
        );
        assert_eq!(session.n_unacknowledged_results(), 0);
    }

    #[test]
    fn restored_results_are_sent_after_the_register_ack_under_their_old_ids() {
        let mut session = session_with_slots(1);
        session.restore_outbox(vec![
            StoredResult {
                message_id: "res-old-7".into(),
                result: finished("t-7", 2),
            },
            StoredResult {
                message_id: "res-old-7".into(),
                result: finished("t-7", 2),
            },
        ]);
        assert_eq!(session.n_unacknowledged_results(), 1);
        session.handle_connected(secs(0.0), None);
        let register = only(sent(&mut session));
        // The restarted worker runs nothing, but it still holds the result it
        // never got acknowledged, so it lists that attempt.
        assert_eq!(
            register.to_value()["data"]["running_tasks"],
            json!([{"task_id": "t-7", "attempt": 2}])
        );
        session.handle_message(secs(0.1), ack(&id_of(&register), json!({})));
        let resent = only(sent(&mut session));
        assert_eq!(id_of(&resent), "res-old-7");
        assert!(matches!(&resent.message, Message::TaskResult(r) if r.attempt == Some(2)));
        // Restored (perhaps from a line an older worker saved without a sender), it is
        // sent from this device, as every message is.
        assert_eq!(resent.sender_id.as_deref(), Some(session.device_id()));
        assert!(events(&mut session).is_empty(), "already on disk");
        // The same attempt assigned again is confirmed without running it twice.
        session.handle_message(secs(0.2), assign("t-7", "echo", 2));
        let reply = assert_ack_reply(&only(sent(&mut session)), Some("assign:2:t-7"));
        assert_eq!(reply["message"], json!("already accepted"));
        assert!(events(&mut session).is_empty());
        session.handle_message(secs(0.3), ack("res-old-7", json!({"recorded": false})));
        assert_eq!(
            events(&mut session),
            vec![SessionEvent::ForgetResult {
                message_id: "res-old-7".into()
            }]
        );
        assert_eq!(session.results_acknowledged_on_this_connection(), 1);
        assert!(session.registered_on_this_connection());
    }

    #[test]
    fn draining_says_so_at_once_refuses_new_work_and_waits_for_results() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 60.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        sent(&mut session);
        events(&mut session);

        session.handle_drain(secs(1.0));
        assert!(session.is_draining());
        assert!(!session.is_drained());
        assert_eq!(session.poll_timeout(), Some(secs(1.0)));
        session.handle_timeout(secs(1.0), metrics);
        let heartbeat = only(sent(&mut session)).to_value();
        assert_eq!(heartbeat["message_type"], json!("heartbeat"));
        assert_eq!(heartbeat["data"]["status"], json!("draining"));
        // Then on the usual schedule again.
        assert_eq!(session.poll_timeout(), Some(secs(61.0)));

        session.handle_message(secs(1.1), assign("t-2", "echo", 1));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::ShuttingDown,
            Some("assign:1:t-2"),
        );
        // A repeat of the running attempt is still confirmed.
        session.handle_message(secs(1.2), assign("t-1", "sleep", 1));
        assert_ack_reply(&only(sent(&mut session)), Some("assign:1:t-1"));
        assert!(events(&mut session).is_empty());

        // Results are still sent while draining; drained once acknowledged.
        session.handle_task_finished(secs(1.5), finished("t-1", 1));
        let result = only(sent(&mut session));
        assert!(!session.is_drained());
        session.handle_message(secs(1.6), ack(&id_of(&result), json!({})));
        assert!(session.is_drained());

        // A reconnect ends the master's draining: the first heartbeat says it again.
        session.handle_disconnected(secs(2.0));
        session.handle_connected(secs(2.1), None);
        let register = only(sent(&mut session));
        session.handle_message(
            secs(2.2),
            ack(&id_of(&register), json!({"heartbeat_interval": 60.0})),
        );
        assert_eq!(session.poll_timeout(), Some(secs(2.2)));
        session.handle_timeout(secs(2.2), metrics);
        let heartbeat = only(sent(&mut session)).to_value();
        assert_eq!(heartbeat["data"]["status"], json!("draining"));
    }

    #[test]
    fn a_disconnected_worker_is_drained_when_nothing_runs_its_results_are_on_disk() {
        let mut session = session_with_slots(1);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "echo", 1));
        sent(&mut session);
        session.handle_disconnected(secs(0.2));
        session.handle_drain(secs(0.3));
        assert!(!session.is_drained(), "a task runs");
        session.handle_task_finished(secs(0.4), finished("t-1", 1));
        assert!(session.is_drained());
        assert_eq!(session.n_unacknowledged_results(), 1);
    }

    #[test]
    fn results_of_tasks_handed_back_at_stop_are_dropped() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_message(secs(0.1), assign("t-1", "sleep", 1));
        session.handle_task_finished(secs(0.2), finished("t-0", 1));
        sent(&mut session);
        events(&mut session);
        session.handle_stop(secs(0.3));
        sent(&mut session);
        events(&mut session);
        let mut cancelled = finished("t-1", 1);
        cancelled.status = ResultStatus::Cancelled;
        session.handle_task_finished(secs(0.4), cancelled);
        assert!(sent(&mut session).is_empty());
        assert!(events(&mut session).is_empty(), "not saved either");
        // The result finished before the stop stays in the outbox.
        assert_eq!(session.n_unacknowledged_results(), 1);
    }

    #[test]
    fn a_full_outbox_refuses_new_work() {
        let mut session = session_with_slots(2);
        session.restore_outbox(
            (0..MAX_UNACKNOWLEDGED_RESULTS)
                .map(|idx| StoredResult {
                    message_id: format!("res-old-{idx}"),
                    result: finished(&format!("old-{idx}"), 1),
                })
                .collect(),
        );
        register(&mut session, 0.0, 1.0);
        sent(&mut session);
        session.handle_message(secs(0.1), assign("t-1", "echo", 1));
        assert_error_reply(
            &only(sent(&mut session)),
            ErrorCode::NoFreeSlot,
            Some("assign:1:t-1"),
        );
        session.handle_message(secs(0.2), ack("res-old-0", json!({})));
        session.handle_message(secs(0.3), assign("t-1", "echo", 1));
        assert_ack_reply(&only(sent(&mut session)), Some("assign:1:t-1"));
    }

    #[test]
    fn a_goodbye_from_the_master_is_acknowledged() {
        let mut session = session_with_slots(1);
        register(&mut session, 0.0, 1.0);
        let goodbye = Goodbye {
            reason: Some("the master is shutting down".into()),
        };
        session.handle_message(
            secs(0.1),
            from_master(Message::Goodbye(goodbye), Some("g-1")),
        );
        assert_ack_reply(&only(sent(&mut session)), Some("g-1"));
        assert!(events(&mut session).is_empty());
        assert!(session.is_registered());
    }

    #[test]
    fn silence_and_a_missing_register_reply_ask_for_a_reconnect() {
        let mut session = session_with_slots(1);
        session.handle_connected(secs(0.0), None);
        sent(&mut session);
        session.handle_timeout(REGISTER_REPLY_TIMEOUT, metrics);
        assert!(matches!(
            only_event(&mut session),
            SessionEvent::Reconnect { .. }
        ));
        assert_eq!(session.poll_timeout(), None);

        session.handle_connected(secs(20.0), None);
        let register = only(sent(&mut session));
        session.handle_message(
            secs(20.0),
            ack(&id_of(&register), json!({"heartbeat_interval": 1.0})),
        );
        // Heartbeats go out, but the master never answers them.
        let mut now = 20.0;
        while session.poll_event().is_none() {
            let Some(deadline) = session.poll_timeout() else {
                panic!("a registered session always has a deadline");
            };
            now = deadline.as_secs_f64();
            session.handle_timeout(deadline, metrics);
            sent(&mut session);
        }
        assert_eq!(secs(now), secs(20.0) + MIN_SILENCE_BEFORE_RECONNECT);
        assert!(!session.is_registered());
    }

    #[test]
    fn refused_results_are_retried_or_dropped_by_error_code() {
        let mut session = session_with_slots(2);
        register(&mut session, 0.0, 1.0);
        session.handle_task_finished(secs(0.1), finished("t-1", 1));
        session.handle_task_finished(secs(0.1), finished("t-2", 1));
        let results = sent(&mut session);
        let retry_id = id_of(&results[0]);
        let drop_id = id_of(&results[1]);
        let refuse = |id: &str, code| {
            let error = ErrorReply::new(Some(id.into()), code, "nope");
            from_master(Message::Error(error), None)
        };
        session.handle_message(secs(0.2), refuse(&retry_id, ErrorCode::StorageUnavailable));
        session.handle_message(secs(0.2), refuse(&drop_id, ErrorCode::InvalidMessage));
        assert_eq!(session.n_unacknowledged_results(), 1);
        assert!(sent(&mut session).is_empty());
        session.handle_timeout(secs(1.0), metrics);
        let again = sent(&mut session);
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(matches!(again[0].message, Message::Heartbeat(_)));
        assert_eq!(id_of(&again[1]), retry_id);
    }

    #[test]
    fn refused_registration_asks_for_a_reconnect() {
        let mut session = session_with_slots(1);
        session.handle_connected(secs(0.0), None);
        let register = only(sent(&mut session));
        let error = ErrorReply::new(Some(id_of(&register)), ErrorCode::InvalidMessage, "bad id");
        session.handle_message(secs(0.1), from_master(Message::Error(error), None));
        assert!(matches!(
            only_event(&mut session),
            SessionEvent::Reconnect { .. }
        ));
        assert!(!session.is_registered());
    }

    /// The worker's half of the handshake, against a master simulated here.
    mod authentication {
        use super::*;
        use protocol::auth::{
            Challenge, Hello, KeyPair, Method, Nonce, Token, TokenKind, Transcript,
        };

        fn join_token() -> Token {
            Token::from_bytes(TokenKind::Join, [1; 32])
        }

        fn master_key() -> KeyPair {
            KeyPair::from_seed([2; 32])
        }

        fn device_key() -> KeyPair {
            KeyPair::from_seed([3; 32])
        }

        fn session(join: bool, pinned: Option<&KeyPair>) -> Session {
            let mut session = session_with_slots(2);
            session.set_credentials(Credentials {
                key: device_key(),
                join_token: join.then(join_token),
                master_key: pinned.map(KeyPair::public),
            });
            session
        }

        /// Connects and returns the hello the worker sent.
        fn connect(session: &mut Session, now: f64) -> (String, Hello) {
            session.handle_connected_with_nonce(secs(now), None, Some(Nonce([9; 32])));
            let hello = only(sent(session));
            let Message::AuthHello(body) = &hello.message else {
                panic!("a hello first, got {hello:?}");
            };
            (id_of(&hello), body.clone())
        }

        /// Answers the hello as a master holding `key`; returns the worker's proof
        /// message and the transcript.
        fn challenge(
            session: &mut Session,
            hello_id: &str,
            hello: &Hello,
            key: &KeyPair,
        ) -> (Envelope, Transcript) {
            let challenge = Challenge {
                server_nonce: Nonce([8; 32]),
                master_key: key.public(),
            };
            session.handle_message(
                secs(0.0),
                ack(
                    hello_id,
                    json!({
                        "challenge": challenge.server_nonce.to_string(),
                        "master_key": challenge.master_key.to_string(),
                    }),
                ),
            );
            (only(sent(session)), Transcript::new(hello, &challenge))
        }

        fn refusal(original: &str, code: ErrorCode) -> Envelope {
            let error = ErrorReply::new(Some(original.into()), code, "no");
            from_master(Message::Error(error), None)
        }

        #[test]
        fn a_worker_enrolls_pins_the_master_and_then_proves_its_own_key() {
            let mut session = session(true, None);
            let (hello_id, hello) = connect(&mut session, 0.0);
            assert!(matches!(hello.method, Method::Join { .. }));
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &master_key());
            let Message::AuthProof(proof_body) = &proof.message else {
                panic!("a proof, got {proof:?}");
            };
            assert!(transcript.verify_client_mac(&join_token(), proof_body));
            let master_proof = transcript.master_mac(&join_token());
            session.handle_message(
                secs(0.0),
                ack(
                    &id_of(&proof),
                    json!({"role": "worker", "master_proof": master_proof.to_string()}),
                ),
            );
            assert!(events(&mut session).contains(&SessionEvent::PinMasterKey {
                key: master_key().public()
            }));
            assert!(
                session
                    .credentials
                    .as_ref()
                    .is_some_and(|credentials| credentials.join_token.is_none()),
                "the join token is dropped once enrolled"
            );
            let register = only(sent(&mut session));
            assert!(matches!(register.message, Message::Register(_)));

            // The next connection proves the device key, not the join token.
            session.handle_disconnected(secs(1.0));
            let (hello_id, hello) = connect(&mut session, 1.0);
            assert!(matches!(hello.method, Method::Device { .. }));
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &master_key());
            let Message::AuthProof(proof_body) = &proof.message else {
                panic!("a proof, got {proof:?}");
            };
            assert!(transcript.verify_device_signature(&device_key().public(), proof_body));
        }

        #[test]
        fn a_master_that_cannot_prove_itself_gets_no_register() {
            let mut session = session(true, None);
            let (hello_id, hello) = connect(&mut session, 0.0);
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &master_key());
            let wrong = transcript.master_mac(&Token::from_bytes(TokenKind::Join, [7; 32]));
            session.handle_message(
                secs(0.0),
                ack(&id_of(&proof), json!({"master_proof": wrong.to_string()})),
            );
            assert!(sent(&mut session).is_empty(), "no register");
            let events = events(&mut session);
            assert!(
                matches!(events.as_slice(), [SessionEvent::Reconnect { .. }]),
                "{events:?}"
            );
        }

        #[test]
        fn an_assignment_before_the_master_proved_itself_runs_nothing() {
            let master = master_key();
            let mut session = session(false, Some(&master));
            connect(&mut session, 0.0);
            session.handle_message(secs(0.0), assign("t-1", "echo", 1));
            session.handle_message(secs(0.0), cancel("t-1", Some(1)));
            assert!(events(&mut session).is_empty(), "no task starts");
            let replies = sent(&mut session);
            assert_error_reply(&replies[0], ErrorCode::InvalidState, Some("assign:1:t-1"));
            assert!(session.running_tasks().is_empty());
        }

        /// Answers a hello with a challenge from a master holding `key` and returns
        /// what the session did: the messages it sent and its events.
        fn answer_hello(
            session: &mut Session,
            hello_id: &str,
            key: &KeyPair,
            now: f64,
        ) -> (Vec<Envelope>, Vec<SessionEvent>) {
            session.handle_message(
                secs(now),
                ack(
                    hello_id,
                    json!({
                        "challenge": Nonce([8; 32]).to_string(),
                        "master_key": key.public().to_string(),
                    }),
                ),
            );
            (sent(session), events(session))
        }

        #[test]
        fn without_the_join_token_a_changed_master_key_is_never_pinned() {
            let pinned = master_key();
            let mut session = session(false, Some(&pinned));
            for round in 0..3 {
                let now = f64::from(round);
                let (hello_id, hello) = connect(&mut session, now);
                assert!(
                    matches!(hello.method, Method::Device { .. }),
                    "round {round}"
                );
                let impostor = KeyPair::from_seed([5; 32]);
                let (sent, events) = answer_hello(&mut session, &hello_id, &impostor, now);
                assert!(sent.is_empty(), "no proof for an impostor");
                assert!(
                    matches!(events.as_slice(), [SessionEvent::Reconnect { .. }]),
                    "{events:?}"
                );
                session.handle_disconnected(secs(now));
            }
            assert_eq!(session.refusal(), None, "it keeps trying");
        }

        /// With the join token, a master with another key makes the worker enroll
        /// again on the next connection; the new key is pinned only once that master
        /// has proven the token, and a master that cannot changes nothing.
        #[test]
        fn with_the_join_token_a_new_master_that_proves_it_is_enrolled_with() {
            let pinned = master_key();
            let new_master = KeyPair::from_seed([5; 32]);
            let mut session = session(true, Some(&pinned));
            let (hello_id, hello) = connect(&mut session, 0.0);
            assert!(matches!(hello.method, Method::Device { .. }), "{hello:?}");
            let (sent_now, events_now) = answer_hello(&mut session, &hello_id, &new_master, 0.0);
            assert!(sent_now.is_empty(), "no proof for another key");
            assert!(
                matches!(events_now.as_slice(), [SessionEvent::Reconnect { .. }]),
                "{events_now:?}"
            );
            session.handle_disconnected(secs(0.0));

            // An impostor without the token: it cannot prove it, nothing is pinned.
            let (hello_id, hello) = connect(&mut session, 1.0);
            assert!(matches!(hello.method, Method::Join { .. }), "{hello:?}");
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &new_master);
            let wrong = transcript.master_mac(&Token::from_bytes(TokenKind::Join, [7; 32]));
            session.handle_message(
                secs(1.0),
                ack(&id_of(&proof), json!({"master_proof": wrong.to_string()})),
            );
            assert!(sent(&mut session).is_empty(), "no register");
            let events_now = events(&mut session);
            assert!(
                matches!(events_now.as_slice(), [SessionEvent::Reconnect { .. }]),
                "{events_now:?}"
            );
            assert_eq!(
                session.credentials.as_ref().and_then(|c| c.master_key),
                Some(pinned.public()),
                "the pinned key stays"
            );
            session.handle_disconnected(secs(1.0));

            // The new master proves the token: its key is pinned, the token dropped.
            let (hello_id, hello) = connect(&mut session, 2.0);
            assert!(matches!(hello.method, Method::Join { .. }), "{hello:?}");
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &new_master);
            session.handle_message(
                secs(2.0),
                ack(
                    &id_of(&proof),
                    json!({"master_proof": transcript.master_mac(&join_token()).to_string()}),
                ),
            );
            assert!(events(&mut session).contains(&SessionEvent::PinMasterKey {
                key: new_master.public()
            }));
            assert!(matches!(
                only(sent(&mut session)).message,
                Message::Register(_)
            ));
            let credentials = session.credentials.clone().expect("credentials");
            assert_eq!(credentials.master_key, Some(new_master.public()));
            assert!(credentials.join_token.is_none());
            assert_eq!(session.refusal(), None);
        }

        /// A master that does not know the device (set up again with a new data dir)
        /// refuses its key: with the token that is no refusal, the next connection
        /// enrolls; without it, it counts, as any refusal from an unproven peer.
        #[test]
        fn a_master_that_forgot_the_device_is_joined_again_only_with_the_token() {
            let pinned = master_key();
            for with_token in [true, false] {
                let mut session = session(with_token, Some(&pinned));
                for round in 1..=3 {
                    let now = f64::from(round);
                    let (hello_id, hello) = connect(&mut session, now);
                    if with_token && round > 1 {
                        // Refused enrollments send it back to its key, and back.
                        let expect_join = round % 2 == 0;
                        assert_eq!(
                            matches!(hello.method, Method::Join { .. }),
                            expect_join,
                            "round {round}: {hello:?}"
                        );
                    } else {
                        assert!(matches!(hello.method, Method::Device { .. }));
                    }
                    session.handle_message(secs(now), refusal(&hello_id, ErrorCode::AuthFailed));
                    let _ = events(&mut session);
                    session.handle_disconnected(secs(now));
                }
                if with_token {
                    // Two Device refusals and one refused enrollment: one refusal counted.
                    assert_eq!(session.refusal(), None);
                } else {
                    assert!(session.refusal().is_some(), "three refusals stop it");
                }
            }
        }

        /// A join token held by an enrolled worker is dropped once its pinned master
        /// has proven itself.
        #[test]
        fn the_join_token_is_dropped_once_the_pinned_master_proved_itself() {
            let master = master_key();
            let mut session = session(true, Some(&master));
            let (hello_id, hello) = connect(&mut session, 0.0);
            assert!(matches!(hello.method, Method::Device { .. }));
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &master);
            session.handle_message(
                secs(0.0),
                ack(
                    &id_of(&proof),
                    json!({"master_proof": transcript.master_signature(&master).to_string()}),
                ),
            );
            assert!(matches!(
                only(sent(&mut session)).message,
                Message::Register(_)
            ));
            assert!(session
                .credentials
                .as_ref()
                .is_some_and(|credentials| credentials.join_token.is_none()));
            assert!(!events(&mut session)
                .iter()
                .any(|event| matches!(event, SessionEvent::PinMasterKey { .. })));
        }

        #[test]
        fn one_refusal_from_an_unproven_peer_does_not_stop_the_worker_three_do() {
            let master = master_key();
            let mut session = session(false, Some(&master));
            for round in 1..=3 {
                let now = f64::from(round);
                let (hello_id, _) = connect(&mut session, now);
                session.handle_message(secs(now), refusal(&hello_id, ErrorCode::DeviceRevoked));
                let events = events(&mut session);
                if round < 3 {
                    assert!(
                        matches!(events.as_slice(), [SessionEvent::Reconnect { .. }]),
                        "{events:?}"
                    );
                    assert_eq!(session.refusal(), None);
                    session.handle_disconnected(secs(now));
                } else {
                    assert!(
                        matches!(events.as_slice(), [SessionEvent::Refused { .. }]),
                        "{events:?}"
                    );
                    assert!(session.refusal().is_some());
                }
            }
        }

        #[test]
        fn a_revocation_on_a_proven_connection_stops_the_worker_at_once() {
            let master = master_key();
            let mut session = session(false, Some(&master));
            let (hello_id, hello) = connect(&mut session, 0.0);
            let (proof, transcript) = challenge(&mut session, &hello_id, &hello, &master);
            let master_proof = transcript.master_signature(&master);
            session.handle_message(
                secs(0.0),
                ack(
                    &id_of(&proof),
                    json!({"master_proof": master_proof.to_string()}),
                ),
            );
            let register = only(sent(&mut session));
            session.handle_message(secs(0.0), ack(&id_of(&register), json!({})));
            assert!(session.is_registered());
            let revoked = ErrorReply::new(None, ErrorCode::DeviceRevoked, "device pi was revoked");
            session.handle_message(secs(1.0), from_master(Message::Error(revoked), None));
            assert!(session.refusal().is_some());
        }
    }
}
