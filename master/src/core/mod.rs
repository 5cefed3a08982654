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
mod control;
mod dispatch;
mod edge;
mod effects;
mod handshake;
mod heartbeat_ack;
mod history;
mod life;
pub mod observe;
pub mod outbox;
mod outgoing;
mod page;
mod placement;
mod prune;
mod queue;
pub mod records;
mod register;
mod registry;
mod restore;
mod results;
mod tasks;
mod text;
mod timers;
mod views;

pub use auth::{
    parse_network, AuthPolicy, Network, Secrets, DEFAULT_AUTH_DEADLINE, DEFAULT_MAX_UNAUTHENTICATED,
};
pub use edge::Bearer;
pub use heartbeat_ack::HeartbeatAck;
pub use history::{Read, ReadAnswer, ReadRequest};
pub use placement::{DEFAULT_CPU_BENCHMARK, HOT_TEMPERATURE_C, STRATEGY_SETTING};
pub use views::rfc3339;

use changes::Changes;
use history::Routed;
use outgoing::Outgoing;
use placement::Placement;
use queue::QueueKey;
use registry::{Device, Registry};
use tasks::{Task, Tasks};
use timers::TimerTable;

use protocol::{
    Ack, DecodeError, DeviceReply, Envelope, ErrorCode, ErrorReply, Goodbye, Message, Reply,
    StatusReply, Success,
};
use records::{Batch, DeviceRecord, TaskRecord};
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
    /// The placement strategy when none was set with `strategy` (which the
    /// store keeps; see [`Core::restore_strategy`]).
    pub strategy: protocol::PlacementStrategy,
    /// The seed of the `random` strategy's generator: the core never
    /// draws randomness itself, so the binary passes a fresh one and tests
    /// a fixed one.
    pub placement_seed: u64,
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
            strategy: protocol::PlacementStrategy::default(),
            placement_seed: 0,
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
    /// How a device is chosen for a task.
    placement: Placement,
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
    lingering: std::collections::BTreeSet<String>,
    /// Failed authentications since the start (`/metrics`).
    auth_failures: u64,
    /// Outcomes, durations and the recent log (`/metrics`, `/text/logs`).
    observed: observe::Observed,
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
            placement: Placement::new(config.strategy, config.placement_seed),
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
            lingering: std::collections::BTreeSet::new(),
            auth_failures: 0,
            observed: observe::Observed::default(),
        };
        for record in devices {
            core.restore_device(record, now);
        }
        for record in tasks {
            core.restore_task(record, now);
        }
        core
    }

    /// Tells the core how many stored records the store quarantined at
    /// start, so that `status` shows them to the operator.
    pub fn set_quarantined(&mut self, records: u64) {
        self.quarantined = records;
    }

    /// Tells the core how many tasks the store holds as completed since
    /// the start of the UTC day of `now` (`Store::completed_since`), so
    /// that `status`'s `completed_today` counts them across a restart.
    pub fn restore_completed_today(&mut self, now: Now, count: u64) {
        self.observed.completed_today = observe::CompletedToday::seeded(now.unix_ms, count);
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
                | Message::Strategy(protocol::StrategyRequest { strategy: None })
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
            Message::TaskResult(result) => {
                match self.route_result(now, conn, sender, reply_to.clone(), result) {
                    Routed::Now(result) => result,
                    Routed::Deferred => return,
                }
            }
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
            Message::TaskDelete(task) => {
                match self.route_delete(conn, reply_to.clone(), &task.task_id) {
                    Routed::Now(result) => result,
                    Routed::Deferred => return,
                }
            }
            Message::ListTasks(list) => match self.route_list(conn, reply_to.clone(), list) {
                Routed::Now(result) => result,
                Routed::Deferred => return,
            },
            Message::Status => {
                let mut cluster_stats = self.cluster_stats();
                cluster_stats.completed_today = self.observed.completed_today.on(now.unix_ms);
                Ok(Reply::from(StatusReply {
                    cluster_stats,
                    success: Success,
                }))
            }
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
            Message::Prune(prune) => match self.check_storage() {
                Ok(()) => return self.on_prune(conn, reply_to, prune),
                Err(refused) => Err(refused),
            },
            Message::Strategy(request) => self.on_strategy(request),
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

    /// A timer fired: find workers whose heartbeats stopped.
    pub fn handle_tick(&mut self, now: Now) {
        self.expire_auth(now);
        self.tick_task_life(now);
        self.expire_heartbeats(now);
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
        self.stamp_observed(now.unix_ms);
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
