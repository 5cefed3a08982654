//! The master's sans-IO state machine: registry, heartbeats, the priority
//! queue, matching, assignment and results.
//!
//! The core never touches a socket, the disk, a thread or the clock. The
//! event loop feeds it inputs (`handle_*`, each with `now`) and drains its
//! outputs: messages to send ([`Output`]), changes to persist
//! ([`Core::take_batch`]) and the next time it wants to be woken
//! ([`Core::next_deadline`]). Messages that promise durability carry the
//! id of the batch they wait for; the loop puts them in an [`outbox::Outbox`],
//! which holds them until that batch has committed.

mod auth;
mod changes;
mod dispatch;
mod handshake;
mod heartbeat_ack;
mod history;
mod life;
pub mod outbox;
mod outgoing;
mod page;
mod queue;
pub mod records;
mod registry;
mod tasks;
mod text;
mod timers;
mod views;

pub use auth::{
    parse_network, AuthPolicy, Network, Secrets, DEFAULT_AUTH_DEADLINE, DEFAULT_MAX_UNAUTHENTICATED,
};
pub use heartbeat_ack::HeartbeatAck;
pub use history::{Read, ReadAnswer, ReadRequest};
pub use views::rfc3339;

use changes::Changes;
use history::Routed;
use outgoing::Outgoing;
use queue::QueueKey;
use registry::{index, Device, Due, Registry};
use tasks::{Task, Tasks};
use timers::{TimerKey, TimerKind, TimerTable};

use protocol::message::RunningTask;
use protocol::{
    Ack, BatchSubmitted, DecodeError, DeviceReply, DeviceStatus, Done, Draining, Envelope,
    ErrorCode, ErrorReply, Event, Goodbye, Heartbeat, Message, Register, Registered, Reply,
    ResultRecorded, StatusReply, Submitted, Subscribe, Success, TaskCancel, TaskChanged,
    TaskResult, TaskSpec, TaskState, TaskSubmit,
};
use records::{Batch, DeviceKeyRecord, DeviceRecord, TaskRecord};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Identifies one connection; the event loop's slab key.
pub type ConnId = usize;

/// The time, as the core sees it: a monotonic reading for deadlines and a
/// wall-clock reading for timestamps people read. Both are parameters so
/// tests can run on simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin (the loop's start).
    pub monotonic: Duration,
    /// Wall-clock time in milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

/// Core settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The master's `sender_id` on its own messages.
    pub master_id: String,
    /// How often workers should send a heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a worker's connection is considered dead.
    pub heartbeat_timeout: Duration,
    /// How long a worker that said it has no free slot gets no new task.
    pub full_worker_pause: Duration,
    /// The largest task (as JSON) a submit may carry: the line limit less
    /// room for the `task_assign` envelope around it.
    pub max_task_bytes: usize,
    /// Retries a task gets when it does not say (`max_retries`).
    pub default_max_retries: u32,
    /// Backoff before the first retry; it doubles for each further one.
    pub retry_backoff: Duration,
    /// The longest backoff between two attempts.
    pub max_retry_backoff: Duration,
    /// How long past its timeout the master waits for a result before it
    /// takes the attempt as timed out itself.
    pub timeout_grace: Duration,
    /// How long the master holds the tasks of a worker that supports
    /// leases after losing it, before it requeues them.
    pub lease_grace: Duration,
    /// How many times a task may lose its worker before it is
    /// dead-lettered (a task that crashes every device it touches).
    pub max_lost_attempts: u32,
    /// Who must authenticate, and the limits before they have.
    pub auth: AuthPolicy,
}

/// Room left in a line for the `task_assign` envelope around a task.
pub const ASSIGN_OVERHEAD: usize = 4096;

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            master_id: "main-node".into(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            full_worker_pause: Duration::from_secs(1),
            max_task_bytes: protocol::DEFAULT_MAX_LINE - ASSIGN_OVERHEAD,
            default_max_retries: 0,
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(300),
            timeout_grace: Duration::from_secs(10),
            lease_grace: Duration::from_secs(60),
            max_lost_attempts: 5,
            auth: AuthPolicy::default(),
        }
    }
}

/// What the core wants sent.
// Built once and moved to the event loop; boxing the envelope would only
// add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON message, written as one line.
    Json(Envelope),
    /// A reply to a text command; the loop writes it as is (it already
    /// ends with the `.` line).
    Text(String),
    /// The `ack` to a heartbeat, which the loop writes without building
    /// its envelope (see [`HeartbeatAck`]).
    HeartbeatAck(HeartbeatAck),
    /// An event, built once and shared by every subscriber it goes to:
    /// a `task_finished` event carries a whole task (payload and result,
    /// up to about 1 MiB each), so a copy per subscriber, all made before
    /// the loop counts any, let a few hundred idle watchers make the
    /// master hold hundreds of MiB. The loop encodes it once and charges
    /// each connection as it queues the bytes there.
    Event(std::sync::Arc<Envelope>),
}

/// One thing for the event loop to do.
// Moved once, from the core to the event loop (see `Payload`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `payload` on `conn`. When `after_batch` is set, hold it (and
    /// everything queued behind it on that connection) until that batch
    /// has committed.
    Send {
        /// The connection.
        conn: ConnId,
        /// What to send.
        payload: Payload,
        /// The batch whose commit this message waits for.
        after_batch: Option<u64>,
        /// The message reveals no state and may overtake messages held
        /// for a commit on the same connection (heartbeat acks, so a slow
        /// disk never looks like a dead master to a worker).
        overtake: bool,
    },
    /// `conn` authenticated: lift the limits on connections that have not
    /// (the small maximum line).
    Trusted {
        /// The connection.
        conn: ConnId,
    },
    /// Close `conn` once everything queued for it has been written.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Ask the store, then hand its answer to [`Core::handle_read`]
    /// before the connection's next frame (see `core/history.rs`).
    Read(Box<Read>),
}

/// The most tasks a listing returns.
pub const MAX_LIST: usize = 1000;
/// Tasks a listing returns when no limit is given.
pub const DEFAULT_LIST: usize = 100;
/// The most devices a `list_devices` page holds.
pub const MAX_DEVICE_LIST: usize = 1000;
/// Devices a `list_devices` page holds when no limit is given: enough that
/// a home cluster (and an older client, which does not page) sees every
/// device at once.
pub const DEFAULT_DEVICE_LIST: usize = 500;

/// The most connections that have not authenticated (anonymous readers)
/// subscribed at once; the next one's `subscribe` is refused with
/// `too_many_connections`. Their events are summaries (a few hundred bytes,
/// see `Outgoing::event`) and their backlogs share the 32 MiB untrusted total,
/// so this bounds the work one event costs for strangers, not memory.
pub const MAX_UNTRUSTED_SUBSCRIBERS: usize = 64;

/// The master's state machine.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    /// Devices, connections and keys.
    registry: Registry,
    /// Every task, and the queue.
    tasks: Tasks,
    /// What to do on connections, not yet taken by the loop.
    out: Outgoing,
    /// Changes not yet handed to the store, and the batch ids.
    changes: Changes,
    needs_dispatch: bool,
    shutting_down: bool,
    /// Every deadline: heartbeats, pauses, leases, retries, attempts and
    /// authentication.
    timers: TimerTable,
    /// Whether the store can commit; changes are refused while it cannot.
    storage_available: bool,
    /// Stored records the store set aside at start because they could not
    /// be read back (shown by `status`).
    quarantined: u64,
    /// The tokens and the master's key; `None` while authentication is off.
    secrets: Option<Secrets>,
    /// The newest batch the store has committed (`handle_committed`).
    committed: u64,
    /// Finished tasks whose last write committed but that a device still
    /// counts as running; they leave memory once it reports them.
    lingering: BTreeSet<String>,
}

impl Core {
    /// A core that starts from the records the store loaded. Devices start
    /// offline. Tasks that were handed to a device before the restart stay
    /// with it for a lease grace period when the device supports leases
    /// (it keeps running them and comes back with their results); the
    /// others go back to the queue. Retries keep their backoff.
    pub fn new(
        config: CoreConfig,
        devices: Vec<DeviceRecord>,
        tasks: Vec<TaskRecord>,
        now: Now,
    ) -> Core {
        let mut core = Core {
            out: Outgoing::new(config.master_id.clone()),
            config,
            registry: Registry::default(),
            tasks: Tasks::default(),
            changes: Changes::default(),
            needs_dispatch: false,
            shutting_down: false,
            timers: TimerTable::default(),
            secrets: None,
            storage_available: true,
            quarantined: 0,
            committed: 0,
            lingering: BTreeSet::new(),
        };
        for mut record in devices {
            let mut register = record.profile.clone();
            let mut changed = record.status != DeviceStatus::Offline;
            record.status = DeviceStatus::Offline;
            let profile = records::profile_value(&record.profile);
            if let Err(why) = protocol::limits::check_profile_size(&profile) {
                // Stored by an older master, before the cap: keep what the
                // master uses (resources, platform, role) and drop the
                // free-form rest, which the device sends again when it
                // registers. It is readable, so not quarantined.
                log::warn!(
                    "device {}: {why}; keeping it without its capabilities and extra fields",
                    record.device_id
                );
                let bytes = protocol::limits::json_len(&profile);
                register.capabilities = None;
                register.extra.clear();
                register.network_interfaces.clear();
                register.running_tasks.clear();
                register
                    .extra
                    .insert("profile_truncated_from_bytes".into(), json!(bytes));
                record.profile = register.clone();
                changed = true;
            }
            if changed {
                core.persist_device(&record);
            }
            core.registry
                .by_registration
                .insert(record.registered_unix_ms, &record.device_id);
            core.registry.devices.insert(
                record.device_id.clone(),
                Device {
                    record,
                    register,
                    conn: None,
                    active: BTreeSet::new(),
                    last_seen: now.monotonic,
                    metrics: None,
                    paused_until: None,
                    lease_until: None,
                    indexed: index::Indexed::default(),
                },
            );
        }
        for mut record in tasks {
            let task_id = record.task_id.clone();
            if matches!(record.state, TaskState::Assigned | TaskState::Running) {
                let holder = record
                    .device_id
                    .as_ref()
                    .and_then(|id| core.registry.devices.get_mut(id))
                    .filter(|device| device.record.leases);
                match holder {
                    Some(device) => {
                        device.active.insert(task_id.clone());
                        let until = now.monotonic + core.config.lease_grace;
                        device.lease_until = Some(until);
                        core.timers
                            .set(TimerKey::Lease(device.record.device_id.clone()), until);
                    }
                    None => {
                        record.state = TaskState::Queued;
                        record.lost += 1;
                        core.persist_task(&record.task_id);
                    }
                }
            }
            if record.state == TaskState::Retrying {
                let wait_ms = record
                    .retry_at_unix_ms
                    .map_or(0, |at| (at - now.unix_ms).max(0));
                core.timers.set(
                    TimerKey::Retry(task_id.clone()),
                    now.monotonic + Duration::from_millis(wait_ms as u64),
                );
            }
            if record.state == TaskState::Queued {
                core.needs_dispatch = true;
            }
            let held = matches!(record.state, TaskState::Assigned | TaskState::Running);
            core.tasks.restore(record);
            if held {
                // The restart lost track of how long the attempt has run:
                // its timeout counts again from now, which errs on waiting.
                core.watch_attempt(now, &task_id);
            }
        }
        core
    }

    /// Tells the core how many stored records the store quarantined at
    /// start, so that `status` shows them to the operator.
    pub fn set_quarantined(&mut self, records: u64) {
        self.quarantined = records;
    }

    /// A new connection was accepted from `peer_ip` (when known).
    /// `nonce` is a fresh random value: the challenge of its handshake.
    pub fn handle_connect(
        &mut self,
        now: Now,
        conn: ConnId,
        peer_ip: Option<std::net::IpAddr>,
        nonce: protocol::auth::Nonce,
    ) {
        self.auth_connect(now, conn, peer_ip, nonce);
    }

    /// A connection closed (by the peer, an error, or the loop).
    pub fn handle_disconnect(&mut self, now: Now, conn: ConnId) {
        let Some(state) = self.registry.disconnect(conn) else {
            return;
        };
        self.auth_disconnect(conn, state.auth());
        if let Some(device_id) = state.device_id {
            let bound_here = self
                .registry
                .devices
                .get(&device_id)
                .is_some_and(|device| device.conn == Some(conn));
            if bound_here {
                self.device_gone(now, &device_id, "disconnected", false);
            }
        }
    }

    /// A frame that could not be decoded: answer with its error. The
    /// connection stays open and nothing else changes.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: DecodeError) {
        let reply = ErrorReply::new(error.message_id, error.code, error.detail);
        self.out.send(conn, Message::Error(reply), None);
    }

    /// The connection sent a line longer than its limit: answer, then close.
    pub fn handle_line_too_long(&mut self, conn: ConnId, max: usize) {
        let reply = ErrorReply::new(
            None,
            ErrorCode::LineTooLong,
            format!("line longer than {max} bytes; closing the connection"),
        );
        self.out.send(conn, Message::Error(reply), None);
        self.out.close(conn);
    }

    /// The id the master sends its messages under (`sender_id`).
    pub fn master_id(&self) -> &str {
        &self.config.master_id
    }

    /// A decoded JSON message arrived on `conn`.
    pub fn handle_message(&mut self, now: Now, conn: ConnId, envelope: Envelope) {
        let reply_to = envelope.message_id.clone();
        let sender = envelope.sender_id.clone();
        if self.registry.is_closing(conn) {
            return;
        }
        if let Err(refusal) = self.authorize(conn, sender.as_deref(), &envelope.message) {
            // Replies to the master's own messages expect no answer.
            if envelope.message.expects_reply() {
                self.send_refusal(conn, reply_to, refusal);
            }
            return;
        }
        let is_read = matches!(
            envelope.message,
            Message::Status
                | Message::ListTasks(_)
                | Message::ListDevices(_)
                | Message::TaskStatus(_)
                | Message::DeviceInfo(_)
                | Message::Subscribe(_)
        );
        let result = match envelope.message {
            Message::Register(register) => self.on_register(now, conn, sender, register),
            Message::Heartbeat(heartbeat) => {
                match self.on_heartbeat(now, conn, sender, heartbeat) {
                    Ok(()) => {
                        // The ack reveals no state: it needs no commit and
                        // overtakes held replies, so a slow disk never
                        // looks like a dead master to a worker.
                        let ack = HeartbeatAck {
                            original_message_id: reply_to,
                            heartbeat_interval: self.config.heartbeat_interval.as_secs_f64(),
                        };
                        self.out.push(Output::Send {
                            conn,
                            payload: Payload::HeartbeatAck(ack),
                            after_batch: None,
                            overtake: true,
                        });
                        return;
                    }
                    Err(error) => Err(error),
                }
            }
            Message::TaskResult(result) => self.on_result(now, conn, sender, result),
            Message::TaskProgress(progress) => {
                self.on_progress(conn, sender, progress);
                return;
            }
            Message::Goodbye(goodbye) => self.on_goodbye(now, conn, sender, goodbye),
            // These may need a finished task from the store: answered
            // now from memory, or after a read (`core/history.rs`).
            Message::TaskSubmit(submit) => {
                match self.route_submit(now, conn, reply_to.clone(), submit) {
                    Routed::Now(result) => result,
                    Routed::Deferred => return,
                }
            }
            Message::TaskStatus(task) => {
                match self.route_task_status(conn, reply_to.clone(), &task.task_id) {
                    Routed::Now(result) => result,
                    Routed::Deferred => return,
                }
            }
            Message::TaskRetry(task) => {
                match self.route_retry(now, conn, reply_to.clone(), &task.task_id) {
                    Routed::Now(result) => result,
                    Routed::Deferred => return,
                }
            }
            Message::ListTasks(list) => match self.route_list(conn, reply_to.clone(), list) {
                Routed::Now(result) => result,
                Routed::Deferred => return,
            },
            Message::Status => Ok(Reply::from(StatusReply {
                cluster_stats: self.cluster_stats(),
                success: Success,
            })),
            Message::ListDevices(list) => self.list_devices(&list).map(Reply::from),
            Message::DeviceInfo(device) => self.device_view(&device.device_id).map(|device| {
                Reply::from(DeviceReply {
                    device,
                    success: Success,
                })
            }),
            Message::TaskCancel(cancel) => {
                match self.route_cancel(now, conn, reply_to.clone(), cancel) {
                    Routed::Now(result) => result,
                    Routed::Deferred => return,
                }
            }
            Message::DrainDevice(device) => self.on_drain(&device.device_id),
            Message::Subscribe(subscribe) => self.on_subscribe(conn, subscribe),
            Message::Ack(ack) => {
                self.on_worker_ack(now, conn, sender, ack);
                return;
            }
            Message::Error(error) => {
                self.on_worker_refusal(now, conn, sender, error);
                return;
            }
            Message::AuthHello(hello) => {
                self.on_auth_hello(conn, reply_to, hello);
                return;
            }
            Message::AuthProof(proof) => {
                self.on_auth_proof(now, conn, reply_to, proof);
                return;
            }
            Message::RevokeDevice(device) => self.on_revoke(now, &device.device_id),
            Message::TaskAssign(_) | Message::Event(_) => Err(ReplyError::new(
                ErrorCode::InvalidMessage,
                "the master does not accept this message type from peers",
            )),
        };
        // Every reply waits until everything the master had changed when it
        // was made is on disk: an ack promises the change it reports, and a
        // read must not show a state that a crash could still take back.
        // Heartbeat acks reveal nothing and overtake (see `send`).
        // While the store cannot commit, reads are answered from memory at
        // once: waiting for a commit that may take long would stop the
        // master from serving reads at all. They may then show changes
        // that were never acknowledged.
        let after = if self.storage_available || !is_read {
            Some(self.changes.last_write_batch())
        } else {
            None
        };
        match result {
            Ok(reply) => {
                self.out
                    .send(conn, Message::Ack(Ack::reply(reply_to, reply)), after);
            }
            Err(error) => {
                let reply = ErrorReply::new(reply_to, error.code, error.message);
                self.out.send(conn, Message::Error(reply), after);
            }
        }
    }

    /// Starts (or replaces) `conn`'s subscription. A connection that has
    /// not authenticated takes one of the [`MAX_UNTRUSTED_SUBSCRIBERS`]
    /// places, kept until it leaves.
    fn on_subscribe(&mut self, conn: ConnId, subscribe: Subscribe) -> Result<Reply, ReplyError> {
        let trusted = self.is_trusted(conn);
        self.registry.subscribe(conn, trusted, subscribe)?;
        Ok(Reply::from(Done {
            message: "subscribed".into(),
            success: Success,
        }))
    }

    /// A timer fired: find workers whose heartbeats stopped.
    pub fn handle_tick(&mut self, now: Now) {
        self.expire_auth(now);
        self.tick_task_life(now);
        // Only devices whose heartbeat deadline has passed, from the index.
        let mut expired: Vec<(String, ConnId)> = Vec::new();
        let timeout = self.config.heartbeat_timeout;
        for device_id in self
            .timers
            .pop_due_devices(TimerKind::Heartbeat, now.monotonic)
        {
            match self
                .registry
                .heartbeat_due(&device_id, now.monotonic, timeout)
            {
                Due::Now(conn) => expired.push((device_id, conn)),
                Due::Later(due) => self.set_heartbeat_due(&device_id, Some(due)),
                Due::Not => {}
            }
        }
        for (device_id, conn) in expired {
            log::warn!("device {device_id} missed its heartbeats; closing its connection");
            self.device_gone(now, &device_id, "heartbeat timeout", false);
            self.registry.unbind(conn);
            self.out.close(conn);
        }
        if self.resume_paused(now) {
            self.needs_dispatch = true;
        }
    }

    /// The master is shutting down: refuse new submissions from now on,
    /// and tell every connected worker, so it reconnects later instead of
    /// waiting for a heartbeat to fail (its tasks stay with it on a lease).
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let connected = self.registry.connected();
        for conn in connected {
            let goodbye = Goodbye {
                reason: Some("the master is shutting down".into()),
            };
            self.out.send(conn, Message::Goodbye(goodbye), None);
        }
    }

    /// The earliest monotonic time at which [`Core::handle_tick`] has work.
    pub fn next_deadline(&self) -> Option<Duration> {
        // From the timer table, which holds every deadline. An entry is
        // checked when it fires, so one whose reason went away only costs
        // a wake-up that finds nothing to do.
        self.timers.next()
    }

    /// Runs assignment if anything changed, then hands out what to send.
    pub fn drain_outputs(&mut self, now: Now, into: &mut Vec<Output>) {
        if self.needs_dispatch {
            self.needs_dispatch = false;
            self.dispatch(now);
        }
        self.out.take(into);
    }

    /// Hands out what to send so far, without running assignment: the
    /// event loop takes each request's replies as soon as the request is
    /// handled, to charge them to the connection's output budget before it
    /// hands the core another request from that connection.
    pub fn take_outputs(&mut self, into: &mut Vec<Output>) {
        self.out.take(into);
    }

    /// Hands out the changes made since the last call as one batch.
    pub fn take_batch(&mut self) -> Option<Batch> {
        let tasks = &self.tasks;
        self.changes.take_batch(|id| tasks.record(id))
    }

    /// Number of queued tasks.
    pub fn queued(&self) -> usize {
        self.tasks.queue.len()
    }

    /// Number of devices online now, for the status line the service
    /// manager shows (kept as devices come and go: O(1)).
    pub fn online_devices(&self) -> u32 {
        self.registry.totals.online()
    }

    // ----- worker messages -----

    fn on_register(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        register: Register,
    ) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let sender =
            sender.or_else(|| self.registry.authenticated_device(conn).map(str::to_string));
        let device_id = sender.ok_or_else(|| {
            ReplyError::new(
                ErrorCode::InvalidMessage,
                "register needs a sender_id (the device id)",
            )
        })?;
        protocol::types::validate_id("sender_id", &device_id)
            .map_err(|detail| ReplyError::new(ErrorCode::InvalidMessage, detail))?;
        if self.is_revoked(&device_id) {
            return Err(ReplyError::new(
                ErrorCode::DeviceRevoked,
                format!("device {device_id} was revoked; it cannot register again under this id"),
            ));
        }
        // A connection speaks for one device; a second register under
        // another id would leave the first one's tasks stranded.
        if let Some(bound) = self
            .registry
            .conns
            .get(&conn)
            .and_then(|c| c.device_id.clone())
        {
            if bound != device_id {
                return Err(ReplyError::new(
                    ErrorCode::InvalidState,
                    format!("this connection is already registered as {bound}"),
                ));
            }
        }
        let previous_conn = self.registry.devices.get(&device_id).and_then(|d| d.conn);
        if let Some(old) = previous_conn.filter(|&old| old != conn) {
            // The device reconnected before its old socket was noticed as
            // dead: the new connection wins and the old one is closed.
            if let Some(state) = self.registry.conns.get_mut(&old) {
                state.device_id = None;
            }
            self.out.close(old);
        }
        let still_running: BTreeMap<String, u32> = register
            .running_tasks
            .iter()
            .map(|RunningTask { task_id, attempt }| (task_id.clone(), *attempt))
            .collect();
        let role = register.role.clone().unwrap_or_else(|| "worker".into());
        let slots = register
            .slots
            .or(register.cpu_cores)
            .unwrap_or(1)
            .clamp(1, 1024);
        // The address the worker reports wins (it knows its LAN address
        // behind NAT); otherwise the address it connected from.
        let ip_address = register
            .ip_address
            .clone()
            .or_else(|| {
                self.registry
                    .conns
                    .get(&conn)
                    .and_then(|c| c.peer_ip)
                    .map(|ip| ip.to_string())
            })
            .unwrap_or_default();
        let profile = records::profile_value(&register);
        protocol::limits::check_profile_size(&profile)
            .map_err(|detail| ReplyError::new(ErrorCode::InvalidMessage, detail))?;
        let record = DeviceRecord {
            device_id: device_id.clone(),
            role,
            status: DeviceStatus::Online,
            profile: register.clone(),
            tags: register.tags.clone(),
            task_types: register.task_types.clone(),
            slots,
            ip_address,
            registered_unix_ms: self
                .registry
                .devices
                .get(&device_id)
                .map_or(now.unix_ms, |d| d.record.registered_unix_ms),
            last_seen_unix_ms: now.unix_ms,
            leases: register.leases,
        };
        let previous_active = self
            .registry
            .devices
            .get(&device_id)
            .map(|d| d.active.clone())
            .unwrap_or_default();
        let indexed = self
            .registry
            .devices
            .get(&device_id)
            .map(|d| d.indexed)
            .unwrap_or_default();
        self.persist_device(&record);
        match self.registry.devices.get(&device_id) {
            Some(old) => self.registry.totals.remove(old),
            None => self
                .registry
                .by_registration
                .insert(record.registered_unix_ms, &device_id),
        }
        let device = Device {
            record,
            register,
            conn: Some(conn),
            active: BTreeSet::new(),
            last_seen: now.monotonic,
            metrics: None,
            paused_until: None,
            lease_until: None,
            indexed,
        };
        self.registry.totals.add(&device);
        self.registry.devices.insert(device_id.clone(), device);
        self.set_heartbeat_due(
            &device_id,
            Some(now.monotonic + self.config.heartbeat_timeout),
        );
        if let Some(state) = self.registry.conns.get_mut(&conn) {
            state.device_id = Some(device_id.clone());
        }
        // Tasks the master thinks this device holds: keep the ones it says
        // it still runs, requeue the rest.
        for task_id in previous_active {
            let kept = self
                .tasks
                .by_id
                .get(&task_id)
                .is_some_and(|task| still_running.get(&task_id) == Some(&task.record.attempt));
            if !kept {
                // The worker no longer knows this task (it restarted, say):
                // the attempt is lost.
                self.lose_attempt(now, &device_id, &task_id);
            }
        }
        // The tasks the device says it still runs are its own again if their
        // attempt is still the current one, even when the master had already
        // put them back in the queue (after a disconnect it noticed, or a
        // restart) and nobody has taken them since.
        for (task_id, attempt) in &still_running {
            self.take_back(now, &device_id, task_id, *attempt);
        }
        self.refresh_slots(&device_id);
        self.needs_dispatch = true;
        self.emit(
            Event::DeviceJoined {
                device_id: device_id.clone(),
            },
            true,
        );
        self.note_legacy_register(conn, &device_id);
        log::info!("device {device_id} registered");
        Ok(Reply::from(Registered {
            message: format!("registered {device_id}"),
            device_id,
            heartbeat_interval: self.config.heartbeat_interval.as_secs_f64(),
            success: Success,
        }))
    }

    fn on_heartbeat(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        heartbeat: Heartbeat,
    ) -> Result<(), ReplyError> {
        let device_id =
            self.registry
                .speaker(conn, sender, self.config.auth.allow_legacy_workers)?;
        let Some(device) = self.registry.devices.get_mut(&device_id) else {
            return Err(not_registered());
        };
        device.last_seen = now.monotonic;
        device.record.last_seen_unix_ms = now.unix_ms;
        device.metrics = Some(heartbeat.metrics);
        if device.conn.is_some() {
            let due = now.monotonic + self.config.heartbeat_timeout;
            self.timers.set(TimerKey::Heartbeat(device_id.clone()), due);
        }
        // A worker that is leaving gracefully says so in its heartbeats: it
        // gets no new work from then on.
        if heartbeat.status.as_deref() == Some("draining")
            && device.record.status == DeviceStatus::Online
            && device.conn.is_some()
        {
            device.record.status = DeviceStatus::Draining;
            let record = device.record.clone();
            self.persist_device(&record);
            self.refresh_slots(&device_id);
            self.emit(
                Event::DeviceDraining {
                    device_id: device_id.clone(),
                },
                true,
            );
        }
        Ok(())
    }

    fn on_progress(
        &mut self,
        conn: ConnId,
        sender: Option<String>,
        progress: protocol::TaskProgress,
    ) {
        let Ok(device_id) =
            self.registry
                .speaker(conn, sender, self.config.auth.allow_legacy_workers)
        else {
            return;
        };
        let current = self.tasks.by_id.get(&progress.task_id).is_some_and(|task| {
            task.record.device_id.as_deref() == Some(device_id.as_str())
                && !task.record.state.is_terminal()
                && progress.attempt.is_none_or(|a| a == task.record.attempt)
        });
        if current {
            self.emit(Event::TaskProgress(progress), false);
        }
    }

    fn on_result(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        result: TaskResult,
    ) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let device_id =
            self.registry
                .speaker(conn, sender, self.config.auth.allow_legacy_workers)?;
        if let Some(device) = self.registry.devices.get_mut(&device_id) {
            device.last_seen = now.monotonic;
            if device.conn.is_some() {
                let due = now.monotonic + self.config.heartbeat_timeout;
                self.timers.set(TimerKey::Heartbeat(device_id.clone()), due);
            }
        }
        let Some(task) = self.tasks.by_id.get(&result.task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {}", result.task_id),
            ));
        };
        let record = &task.record;
        let same_attempt = record.device_id.as_deref() == Some(device_id.as_str())
            && result
                .attempt
                .is_none_or(|attempt| attempt == record.attempt);
        // A device that does not hold the task's current attempt counts the
        // task, if at all, for an attempt that ended since (cancelled, timed
        // out by the master, retried elsewhere): this report is that
        // attempt's end.
        let holds_current = record.device_id.as_deref() == Some(device_id.as_str())
            && matches!(record.state, TaskState::Assigned | TaskState::Running);
        if same_attempt || !holds_current {
            // Whatever happens to the record, this attempt no longer holds
            // one of the device's slots.
            if let Some(device) = self.registry.devices.get_mut(&device_id) {
                if device.active.remove(&result.task_id) {
                    self.needs_dispatch = true;
                }
            }
            // (`refresh_slots`, spelled out: `record` is still borrowed.)
            if let Some(device) = self.registry.devices.get_mut(&device_id) {
                let new = index::SlotEntry::of(device);
                let old = std::mem::replace(&mut device.indexed.slots, new);
                self.registry.free.update(&device_id, old, new);
            }
        }
        // A requeued task whose attempt nobody else has taken yet still
        // belongs to this attempt: its result is the task's result.
        let current = same_attempt
            && match record.state {
                TaskState::Assigned | TaskState::Running => true,
                TaskState::Queued => result.attempt.is_some(),
                _ => false,
            };
        if !current {
            // A result for an attempt that is no longer current is
            // acknowledged (so the worker forgets it) and never recorded.
            log::info!(
                "discarding stale result for {} attempt {:?} from {device_id}",
                result.task_id,
                result.attempt
            );
            return Ok(Reply::from(ResultRecorded {
                message: "result discarded: the attempt is no longer current".into(),
                recorded: false,
                success: Success,
                task_id: result.task_id,
            }));
        }
        let task_id = result.task_id.clone();
        // A result nested too deep could be stored but never sent back
        // (see `protocol::limits`). It is not kept: the attempt fails with
        // the reason, and the worker is told with an error, on which it
        // drops the result from its outbox instead of resending it.
        let too_deep = protocol::limits::check_result_depth(&result.result).err();
        let mut result = result;
        if let Some(reason) = &too_deep {
            log::warn!("refusing the result of {task_id} from {device_id}: {reason}");
            result.status = protocol::ResultStatus::Failed;
            result.result = Value::Null;
            result.error = Some(format!("the worker's result was refused: {reason}"));
        }
        let Some(task) = self.tasks.by_id.get_mut(&task_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            ));
        };
        if task.record.state == TaskState::Queued {
            let key = QueueKey::of(&task.record);
            self.tasks.queue.remove(&key);
        }
        let record = &mut task.record;
        record.exit_code = result
            .result
            .get("exit_code")
            .and_then(Value::as_i64)
            .and_then(|code| i32::try_from(code).ok());
        record.error = result.error.clone().or_else(|| {
            result
                .result
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        record.execution_time = result.execution_time;
        record.result = too_deep.is_none().then_some(result.result);
        self.end_attempt(now, &task_id, life::AttemptEnd::Reported(result.status));
        if let Some(reason) = too_deep {
            return Err(ReplyError::new(
                ErrorCode::InvalidMessage,
                format!("result of {task_id} refused, the attempt failed: {reason}"),
            ));
        }
        Ok(Reply::from(ResultRecorded {
            message: "result recorded".into(),
            recorded: true,
            success: Success,
            task_id,
        }))
    }

    fn on_goodbye(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        goodbye: Goodbye,
    ) -> Result<Reply, ReplyError> {
        let device_id =
            self.registry
                .speaker(conn, sender, self.config.auth.allow_legacy_workers)?;
        let reason = goodbye.reason.unwrap_or_else(|| "goodbye".into());
        log::info!("device {device_id} said goodbye: {reason}");
        if self
            .registry
            .devices
            .get(&device_id)
            .is_some_and(|d| d.conn == Some(conn))
        {
            self.device_gone(now, &device_id, &reason, true);
            if let Some(state) = self.registry.conns.get_mut(&conn) {
                state.device_id = None;
            }
        }
        Ok(Reply::from(Done {
            message: "goodbye".into(),
            success: Success,
        }))
    }

    /// A worker accepted an assignment: the task is running.
    fn on_worker_ack(&mut self, now: Now, conn: ConnId, sender: Option<String>, ack: Ack) {
        let Some((task_id, attempt)) = ack.original_message_id.as_deref().and_then(parse_assign_id)
        else {
            return;
        };
        let Ok(device_id) =
            self.registry
                .speaker(conn, sender, self.config.auth.allow_legacy_workers)
        else {
            return;
        };
        let Some(task) = self.tasks.by_id.get_mut(&task_id) else {
            return;
        };
        let record = &mut task.record;
        if record.attempt == attempt
            && record.device_id.as_deref() == Some(device_id.as_str())
            && record.state == TaskState::Assigned
        {
            record.state = TaskState::Running;
            record.started_unix_ms = Some(now.unix_ms);
            self.persist_task(&task_id);
        }
    }

    /// A worker refused an assignment: offer the task elsewhere.
    fn on_worker_refusal(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        error: ErrorReply,
    ) {
        let Some((task_id, attempt)) = error
            .original_message_id
            .as_deref()
            .and_then(parse_assign_id)
        else {
            log::debug!(
                "error from peer on conn {conn}: {} ({})",
                error.error,
                error.code
            );
            return;
        };
        let Ok(device_id) =
            self.registry
                .speaker(conn, sender, self.config.auth.allow_legacy_workers)
        else {
            return;
        };
        let current = self.tasks.by_id.get(&task_id).is_some_and(|task| {
            task.record.attempt == attempt
                && task.record.device_id.as_deref() == Some(device_id.as_str())
                && task.record.state == TaskState::Assigned
        });
        if !current {
            // A cancel or the master's timeout crossed this refusal: the
            // attempt ended but is still counted against the device until
            // the worker reports it. The worker never ran it and will send
            // no result, so the refusal is that end and gives the slot
            // back, unless the device holds the task's current attempt.
            let ended_here = self.tasks.by_id.get(&task_id).is_some_and(|task| {
                !(task.record.device_id.as_deref() == Some(device_id.as_str())
                    && matches!(task.record.state, TaskState::Assigned | TaskState::Running))
            });
            if ended_here {
                if let Some(device) = self.registry.devices.get_mut(&device_id) {
                    if device.active.remove(&task_id) {
                        self.needs_dispatch = true;
                    }
                }
                self.refresh_slots(&device_id);
            }
            return;
        }
        log::info!(
            "device {device_id} refused {task_id}: {} ({})",
            error.error,
            error.code
        );
        // A device that cannot take work right now is paused briefly; one
        // that will never run this task is not offered it again; an
        // assignment the worker could not read or accept at all
        // (`invalid_message`) fails the task, below.
        let unreadable = error.code == ErrorCode::InvalidMessage;
        let permanent = error.code == ErrorCode::UnsupportedTaskType || unreadable;
        if let Some(device) = self.registry.devices.get_mut(&device_id) {
            device.active.remove(&task_id);
            if !permanent {
                let until = now.monotonic + self.config.full_worker_pause;
                device.paused_until = Some(until);
                self.timers.set(TimerKey::Pause(device_id.clone()), until);
            }
        }
        self.refresh_slots(&device_id);
        if unreadable {
            // Every worker is sent the same bytes, so none would take it:
            // the task ends now, saying why, instead of waiting in the
            // queue (or on a slot) for a device that never comes.
            self.needs_dispatch = true;
            if let Some(task) = self.tasks.by_id.get_mut(&task_id) {
                let record = &mut task.record;
                record.state = TaskState::Failed;
                record.finished_unix_ms = Some(now.unix_ms);
                record.retry_at_unix_ms = None;
                record.error = Some(format!(
                    "device {device_id} could not accept the assignment: {}",
                    error.error
                ));
            }
            self.persist_task(&task_id);
            self.emit_finished(&task_id);
            return;
        }
        if permanent {
            if let Some(task) = self.tasks.by_id.get_mut(&task_id) {
                task.refused_by.insert(device_id.clone());
            }
        }
        self.requeue(&device_id, &task_id);
    }

    // ----- client messages -----

    /// `stored`: client-chosen ids the store holds (finished tasks no
    /// longer in memory), which exist as much as those in memory do.
    fn on_submit(
        &mut self,
        now: Now,
        submit: TaskSubmit,
        stored: &BTreeSet<String>,
    ) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        if self.shutting_down {
            return Err(ReplyError::new(
                ErrorCode::ShuttingDown,
                "the master is shutting down",
            ));
        }
        // A task must fit in the `task_assign` line a worker will receive;
        // otherwise every worker it is offered to drops the connection.
        for (index, spec) in submit.tasks.iter().enumerate() {
            let size = protocol::limits::json_len(spec);
            if size > self.config.max_task_bytes {
                return Err(ReplyError::new(
                    ErrorCode::InvalidMessage,
                    format!(
                        "task {index} is {size} bytes as JSON; the most a task may be is {} bytes",
                        self.config.max_task_bytes
                    ),
                ));
            }
        }
        let mut ids = Vec::with_capacity(submit.tasks.len());
        let mut created = 0usize;
        for spec in submit.tasks {
            let (task_id, new) = match spec.task_id.as_ref().filter(|id| stored.contains(*id)) {
                Some(id) => (id.clone(), false),
                None => self.submit_one(now, spec),
            };
            created += usize::from(new);
            ids.push(task_id);
        }
        let reply = if submit.batch {
            Reply::from(BatchSubmitted {
                message: format!("{} tasks accepted ({created} new)", ids.len()),
                success: Success,
                // Moved, not copied: a batch holds up to 10,000 ids.
                task_ids: ids,
            })
        } else {
            let message = if created == 1 {
                "task accepted"
            } else {
                "task already exists"
            };
            Reply::from(Submitted {
                created: created == 1,
                message: message.into(),
                success: Success,
                task_id: ids.into_iter().next().unwrap_or_default(),
            })
        };
        Ok(reply)
    }

    /// Queues one task; returns its id and whether it is new. A task whose
    /// client-chosen id already exists is not queued again (idempotent
    /// submit).
    fn submit_one(&mut self, now: Now, spec: TaskSpec) -> (String, bool) {
        let (task_id, task_type) = match self.tasks.submit(now, spec) {
            Ok(new) => new,
            Err(existing) => return (existing, false),
        };
        self.persist_task(&task_id);
        self.needs_dispatch = true;
        self.emit(
            Event::TaskSubmitted {
                task_id: task_id.clone(),
                task_type,
            },
            true,
        );
        (task_id, true)
    }

    fn on_cancel(&mut self, now: Now, cancel: TaskCancel) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let task_id = cancel.task_id;
        let (was, holder, attempt) = self.tasks.cancel(now, &task_id, &mut self.timers)?;
        self.persist_task(&task_id);
        if matches!(was, TaskState::Assigned | TaskState::Running) {
            // The device keeps the slot until it reports the attempt's end,
            // because its process may still be running until then.
            self.cancel_on_holder(holder.as_deref(), &task_id, attempt);
        }
        self.emit_finished(&task_id);
        let view = self.task_view(&task_id)?;
        Ok(Reply::from(TaskChanged {
            message: format!("task {task_id} cancelled"),
            success: Success,
            task: view,
        }))
    }

    fn on_drain(&mut self, device_id: &str) -> Result<Reply, ReplyError> {
        self.check_storage()?;
        let Some(device) = self.registry.devices.get_mut(device_id) else {
            return Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no device {device_id}"),
            ));
        };
        if device.conn.is_none() {
            return Err(ReplyError::new(
                ErrorCode::InvalidState,
                format!("device {device_id} is offline"),
            ));
        }
        device.record.status = DeviceStatus::Draining;
        let record = device.record.clone();
        self.persist_device(&record);
        self.refresh_slots(device_id);
        self.emit(
            Event::DeviceDraining {
                device_id: device_id.to_string(),
            },
            true,
        );
        let view = self.device_view(device_id)?;
        Ok(Reply::from(Draining {
            device: view,
            message: format!("device {device_id} is draining"),
            success: Success,
        }))
    }

    // ----- helpers -----

    /// A device lost its connection: it is offline and its tasks go back
    /// to the queue at once.
    fn device_gone(&mut self, now: Now, device_id: &str, reason: &str, handed_back: bool) {
        let Some(device) = self.registry.devices.get_mut(device_id) else {
            return;
        };
        self.registry.totals.remove(device);
        device.conn = None;
        device.record.status = DeviceStatus::Offline;
        let record = device.record.clone();
        self.timers
            .remove(&TimerKey::Heartbeat(device_id.to_string()));
        if !handed_back && device.record.leases && !device.active.is_empty() {
            // The worker keeps running its tasks while it is away and comes
            // back with their results: hold them for it for a while.
            let until = now.monotonic + self.config.lease_grace;
            device.lease_until = Some(until);
            self.timers
                .set(TimerKey::Lease(device_id.to_string()), until);
            log::info!(
                "device {device_id} holds {} tasks on a lease for {:?}",
                device.active.len(),
                self.config.lease_grace
            );
        } else {
            let active = std::mem::take(&mut device.active);
            self.persist_device(&record);
            for task_id in active {
                if handed_back {
                    self.requeue(device_id, &task_id);
                } else {
                    self.lose_attempt(now, device_id, &task_id);
                }
            }
        }
        self.persist_device(&record);
        self.refresh_slots(device_id);
        self.emit(
            Event::DeviceLeft {
                device_id: device_id.to_string(),
                reason: reason.to_string(),
            },
            true,
        );
        log::info!("device {device_id} is offline ({reason})");
    }

    /// Gives a task back to the device that reports it is still running
    /// `attempt` of it, if that attempt is still current; otherwise the
    /// device's copy is stale and its result will be fenced off.
    fn take_back(&mut self, now: Now, device_id: &str, task_id: &str, attempt: u32) {
        let Some(changed) = self.tasks.resume(now, device_id, task_id, attempt) else {
            return;
        };
        if changed {
            self.persist_task(task_id);
        }
        if let Some(device) = self.registry.devices.get_mut(device_id) {
            device.active.insert(task_id.to_string());
        }
        self.refresh_slots(device_id);
    }

    /// Puts a task that device `device_id` held back in the queue, in its
    /// original place. The device no longer counts it either way; a task
    /// whose current attempt is not that device's (it ended, or the task
    /// runs elsewhere now) stays as it is.
    fn requeue(&mut self, device_id: &str, task_id: &str) {
        self.registry.take_away(device_id, task_id);
        if self.tasks.requeue(device_id, task_id) {
            self.persist_task(task_id);
            self.needs_dispatch = true;
        }
    }

    /// Marks a task changed. The batch copies its record when it is taken
    /// (every task is in `tasks` by then, and is never removed), so callers
    /// need no copy of their own. Every change to a task's record passes
    /// here, so this is where the tasks refile it in their listing.
    fn persist_task(&mut self, task_id: &str) {
        self.changes.task(task_id);
        self.tasks.relist(task_id);
        self.tasks
            .note_written(task_id, self.changes.last_write_batch());
    }

    /// Records whether, and how loaded, device `device_id` can take a task
    /// now. Called after every change to a device's connection, status,
    /// pause, slots or active tasks.
    fn refresh_slots(&mut self, device_id: &str) {
        self.registry.refresh_slots(device_id);
    }

    fn persist_device_key(&mut self, record: &DeviceKeyRecord) {
        self.changes.device_key(record);
    }

    fn persist_device(&mut self, record: &DeviceRecord) {
        self.changes.device(record);
    }

    /// Streams an event to every subscriber that wants it (see
    /// `Outgoing::event`). Events about durable changes wait for the same
    /// commit as the change.
    fn emit(&mut self, event: Event, durable: bool) {
        // From the index, by the event's task: the cost is the connections
        // it goes to, whatever the other subscribers follow.
        let targets = self.registry.subscribers.targets(event.task_id());
        if targets.is_empty() {
            return;
        }
        let targets: Vec<(ConnId, bool)> = targets
            .into_iter()
            .map(|conn| (conn, self.is_trusted(conn)))
            .collect();
        let after_batch = durable.then(|| self.changes.last_write_batch());
        self.out.event(event, after_batch, &targets);
    }

    fn emit_finished(&mut self, task_id: &str) {
        // The event carries the task in full: made only for someone.
        if !self.registry.subscribers.want(task_id) {
            return;
        }
        if let Ok(task) = self.task_view(task_id) {
            self.emit(
                Event::TaskFinished {
                    task: Box::new(task),
                },
                true,
            );
        }
    }
}

/// A failed reply.
#[derive(Debug)]
struct ReplyError {
    code: ErrorCode,
    message: String,
}

impl ReplyError {
    fn new(code: ErrorCode, message: impl Into<String>) -> ReplyError {
        ReplyError {
            code,
            message: message.into(),
        }
    }
}

fn not_registered() -> ReplyError {
    ReplyError::new(
        ErrorCode::NotRegistered,
        "send register first: this connection speaks for no known device",
    )
}

/// Task ids the master makes up: time-ordered and unique within a master.
/// The `message_id` of an assignment, so the worker's `ack`/`error` names
/// the task and attempt it answers.
fn assign_message_id(task_id: &str, attempt: u32) -> String {
    format!("assign:{attempt}:{task_id}")
}

fn parse_assign_id(message_id: &str) -> Option<(String, u32)> {
    let rest = message_id.strip_prefix("assign:")?;
    let (attempt, task_id) = rest.split_once(':')?;
    Some((task_id.to_string(), attempt.parse().ok()?))
}

#[cfg(test)]
mod tests;
