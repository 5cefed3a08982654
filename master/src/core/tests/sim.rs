//! `Sim`: a master core on simulated time with fake workers and clients,
//! after quinn-proto's `Pair`. Every helper feeds the core one input and
//! then drives it until idle: outputs are drained (running assignment),
//! the batch is "committed" into a fake database, fake workers answer what
//! they were sent, and connections the core closed are reported back as
//! disconnects, exactly as the event loop does.

use crate::core::records::{Batch, DeviceKeyRecord, DeviceRecord, StoreOp, TaskRecord};
use crate::core::{
    AuthPolicy, ConnId, Core, CoreConfig, Now, Output, Payload, ReadAnswer, ReadRequest, Secrets,
};
use protocol::{
    Ack, DeviceRef, Envelope, ErrorCode, ErrorReply, Event, Goodbye, Heartbeat, Message, Priority,
    Register, ResultStatus, RunningTask, TaskCancel, TaskRef, TaskResult, TaskSpec, TaskState,
    TaskSubmit,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The simulated time every `Sim` starts at.
pub const T0: Now = Now {
    monotonic: Duration::from_secs(1000),
    unix_ms: 1_700_000_000_000,
};

/// Bytes in `n` GiB.
pub fn gib(n: u64) -> u64 {
    n << 30
}

/// A plain linux worker profile with `slots` slots.
pub fn register(slots: u32) -> Register {
    Register {
        hostname: Some("host".into()),
        platform: Some("linux".into()),
        architecture: Some("x86_64".into()),
        cpu_cores: Some(4),
        memory_total_bytes: Some(gib(8)),
        disk_total_bytes: Some(gib(64)),
        slots: Some(slots),
        ..Register::default()
    }
}

/// A task of `task_type` with an empty payload and normal priority.
pub fn spec(task_type: &str) -> TaskSpec {
    TaskSpec::new(task_type, json!({}))
}

/// A task of type `echo` with `priority`.
pub fn prio(priority: Priority) -> TaskSpec {
    TaskSpec {
        priority,
        ..spec("echo")
    }
}

/// A task of type `echo` with a client-chosen id.
pub fn with_id(task_id: &str) -> TaskSpec {
    TaskSpec {
        task_id: Some(task_id.into()),
        ..spec("echo")
    }
}

/// Decodes a register envelope from its JSON `data`, as the wire would.
pub fn register_json(data: Value) -> Register {
    let value = json!({ "message_type": "register", "sender_id": "x", "data": data });
    match Envelope::from_value(value)
        .expect("a valid register")
        .message
    {
        Message::Register(register) => register,
        other => panic!("decoded {other:?}"),
    }
}

/// Decodes a task spec from JSON, as a client would send it.
pub fn spec_json(task: Value) -> TaskSpec {
    serde_json::from_value(task).expect("a valid task")
}

/// One thing the core sent on a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub payload: Payload,
    pub after_batch: Option<u64>,
}

impl Delivery {
    pub fn envelope(&self) -> Option<&Envelope> {
        match &self.payload {
            Payload::Json(envelope) => Some(envelope),
            // Stored as the envelope it stands for (see `drive`).
            Payload::Text(_) | Payload::HeartbeatAck(_) | Payload::Event(_) => None,
        }
    }
}

/// A reply (ack or error) to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub envelope: Envelope,
    pub after_batch: Option<u64>,
}

impl Reply {
    pub fn ack(&self) -> &Ack {
        match &self.envelope.message {
            Message::Ack(ack) => ack,
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    pub fn field(&self, key: &str) -> Value {
        self.ack()
            .result
            .fields()
            .get(key)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The ack's document, read as the reply type its request expects.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        self.ack().result.parse().expect("the reply document")
    }

    pub fn error(&self) -> &ErrorReply {
        match &self.envelope.message {
            Message::Error(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.error().code
    }
}

/// The store as the tests see it: every committed batch applied in order,
/// last write wins.
#[derive(Debug, Default, Clone)]
pub struct Db {
    pub devices: HashMap<String, DeviceRecord>,
    pub tasks: HashMap<String, TaskRecord>,
    pub device_keys: HashMap<String, DeviceKeyRecord>,
    /// Settings changed at run time, by name.
    pub settings: HashMap<String, String>,
}

impl Db {
    /// Applies a committed batch.
    pub fn apply(&mut self, batch: &Batch) {
        for op in &batch.ops {
            match op {
                StoreOp::PutDevice(device) => {
                    self.devices
                        .insert(device.device_id.clone(), device.clone());
                }
                StoreOp::PutTask(task) => {
                    let record = task.record().expect("the core encodes records it can read");
                    self.tasks.insert(task.task_id.clone(), record);
                }
                StoreOp::PutDeviceKey(key) => {
                    self.device_keys.insert(key.device_id.clone(), key.clone());
                }
                StoreOp::PutSetting(setting) => {
                    self.settings
                        .insert(setting.key.clone(), setting.value.clone());
                }
                // Run by the sim after the batch commits (`Sim::prune`).
                StoreOp::Prune(_) => {}
                // As the store's `DELETE … AND state = 'dead_letter'`.
                StoreOp::DeleteDeadLetter(task_id) => {
                    if self
                        .tasks
                        .get(task_id)
                        .is_some_and(|task| task.state == protocol::TaskState::DeadLetter)
                    {
                        self.tasks.remove(task_id);
                    }
                }
            }
        }
    }

    /// Devices, in an order unrelated to anything the core cares about.
    pub fn device_list(&self) -> Vec<DeviceRecord> {
        let mut devices: Vec<DeviceRecord> = self.devices.values().cloned().collect();
        devices.sort_by(|a, b| b.device_id.cmp(&a.device_id));
        devices
    }

    /// Answers a read as the store's `Reader` does, from what has
    /// committed (the store's semantics, kept in one place for the tests).
    pub fn answer(&self, request: &ReadRequest) -> ReadAnswer {
        match request {
            ReadRequest::Task { task_id } => ReadAnswer::Tasks {
                records: self.tasks.get(task_id).cloned().into_iter().collect(),
                before_seq: None,
                cut: false,
            },
            ReadRequest::Exists { task_ids } => ReadAnswer::Ids(
                task_ids
                    .iter()
                    .filter(|id| self.tasks.contains_key(*id))
                    .cloned()
                    .collect(),
            ),
            ReadRequest::Page {
                state,
                before,
                before_seq,
                limit,
            } => {
                let before_seq = match (before, before_seq) {
                    (Some(id), None) => match self.tasks.get(id) {
                        Some(record) => Some(record.seq),
                        None => return ReadAnswer::NoCursor,
                    },
                    (_, seq) => *seq,
                };
                let mut records: Vec<TaskRecord> = self
                    .tasks
                    .values()
                    .filter(|r| r.state.is_terminal())
                    .filter(|r| state.is_none_or(|state| r.state == state))
                    .filter(|r| before_seq.is_none_or(|seq| r.seq < seq))
                    .cloned()
                    .collect();
                records.sort_by_key(|r| std::cmp::Reverse(r.seq));
                records.truncate(limit + 1);
                ReadAnswer::Tasks {
                    records,
                    before_seq,
                    cut: false,
                }
            }
        }
    }

    /// Tasks, newest id first, so the core cannot rely on load order.
    pub fn task_list(&self) -> Vec<TaskRecord> {
        let mut tasks: Vec<TaskRecord> = self.tasks.values().cloned().collect();
        tasks.sort_by(|a, b| b.task_id.cmp(&a.task_id));
        tasks
    }
}

/// Has `db` answer `read` as the store's reader would, and puts the
/// core's replies at the front of `outputs`, as the event loop applies them
/// before anything else.
pub fn answer_read(
    core: &mut Core,
    db: &Db,
    now: Now,
    read: crate::core::Read,
    outputs: &mut std::collections::VecDeque<Output>,
) {
    let answer = db.answer(&read.request);
    core.handle_read(now, read, Ok(answer));
    let mut more = Vec::new();
    core.take_outputs(&mut more);
    for output in more.into_iter().rev() {
        outputs.push_front(output);
    }
}

/// How a fake worker answers `task_assign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `ack` at once, then run the task until told to finish it.
    Accept,
    /// Say nothing until [`Sim::answer`] (its answer is "in flight").
    Silent,
    /// Answer with an `error` of this code.
    Refuse(ErrorCode),
}

/// An assignment a silent worker has not answered yet.
#[derive(Debug, Clone)]
pub struct Pending {
    pub attempt: u32,
    pub message_id: Option<String>,
    /// A `task_cancel` arrived while the answer was still in flight.
    pub cancelled: bool,
}

/// A worker as the master sees it over the wire.
#[derive(Debug)]
pub struct FakeWorker {
    pub id: String,
    pub conn: Option<ConnId>,
    pub policy: Policy,
    /// Every `task_assign` received: task id and attempt, in order.
    pub offers: Vec<(String, u32)>,
    /// Assignments not answered yet (policy `Silent`).
    pub pending: BTreeMap<String, Pending>,
    /// Tasks it accepted and runs: task id → attempt.
    pub running: BTreeMap<String, u32>,
    /// Every `task_cancel` received.
    pub cancels: Vec<TaskCancel>,
    /// Whether a cancelled task keeps running until [`Sim::finish`]
    /// (a process slow to die) instead of being reported at once.
    pub slow_cancel: bool,
    /// Tasks it was running when its connection was lost: their results
    /// are stale by now.
    pub orphans: Vec<(String, u32)>,
    /// It declares leases: it keeps running its tasks while it has lost
    /// the master and lists them when it registers again (instead of
    /// orphaning them).
    pub keeps_tasks: bool,
}

impl FakeWorker {
    fn new(id: &str, policy: Policy) -> FakeWorker {
        FakeWorker {
            id: id.into(),
            conn: None,
            policy,
            offers: Vec::new(),
            pending: BTreeMap::new(),
            running: BTreeMap::new(),
            cancels: Vec::new(),
            slow_cancel: false,
            orphans: Vec::new(),
            keeps_tasks: false,
        }
    }

    fn envelope(&self, message: Message) -> Envelope {
        Envelope::new(message).from_sender(self.id.clone())
    }

    fn ack(&self, original: Option<String>) -> Envelope {
        self.envelope(Message::Ack(Ack::new(
            original,
            json!({ "message": "accepted" }),
        )))
    }

    fn refusal(&self, original: Option<String>, code: ErrorCode) -> Envelope {
        self.envelope(Message::Error(ErrorReply::new(original, code, "refused")))
    }

    fn result(&self, task_id: &str, attempt: u32, status: ResultStatus, result: Value) -> Envelope {
        self.envelope(Message::TaskResult(TaskResult {
            task_id: task_id.into(),
            attempt: Some(attempt),
            status,
            execution_time: Some(0.5),
            result,
            error: None,
        }))
    }

    /// Handles what the master sent; returns the answers.
    fn receive(&mut self, envelope: &Envelope) -> Vec<Envelope> {
        let mut answers = Vec::new();
        match &envelope.message {
            Message::TaskAssign(assign) => {
                let task_id = assign
                    .task
                    .task_id
                    .clone()
                    .expect("an assignment names its task");
                let attempt = assign.attempt;
                self.offers.push((task_id.clone(), attempt));
                let original = envelope.message_id.clone();
                match self.policy {
                    Policy::Accept => {
                        self.running.insert(task_id, attempt);
                        answers.push(self.ack(original));
                    }
                    Policy::Refuse(code) => answers.push(self.refusal(original, code)),
                    Policy::Silent => {
                        let pending = Pending {
                            attempt,
                            message_id: original,
                            cancelled: false,
                        };
                        self.pending.insert(task_id, pending);
                    }
                }
            }
            Message::TaskCancel(cancel) => {
                self.cancels.push(cancel.clone());
                let attempt = self.running.get(&cancel.task_id).copied();
                let attempt = attempt.filter(|&a| cancel.attempt.is_none_or(|c| c == a));
                if self.slow_cancel && attempt.is_some() {
                    // It keeps running until the test finishes it.
                } else if let Some(attempt) = attempt {
                    self.running.remove(&cancel.task_id);
                    answers.push(self.result(
                        &cancel.task_id,
                        attempt,
                        ResultStatus::Cancelled,
                        json!({}),
                    ));
                } else if let Some(pending) = self.pending.get_mut(&cancel.task_id) {
                    pending.cancelled = true;
                }
            }
            _ => {}
        }
        answers
    }

    /// The connection is gone: what it ran is orphaned, what it had not
    /// answered is forgotten.
    fn lost(&mut self) {
        self.conn = None;
        if !self.keeps_tasks {
            self.orphans.extend(std::mem::take(&mut self.running));
        }
        self.pending.clear();
    }
}

/// The core, a clock, fake workers and clients, and a fake database.
pub struct Sim {
    pub core: Core,
    pub config: CoreConfig,
    pub now: Now,
    next_conn: ConnId,
    next_message: u64,
    /// Everything the core sent, per connection.
    pub inbox: HashMap<ConnId, Vec<Delivery>>,
    /// Every `Output::Close`, in order.
    pub closed: Vec<ConnId>,
    /// Every batch taken, in order.
    pub batches: Vec<Batch>,
    pub db: Db,
    pub workers: BTreeMap<String, FakeWorker>,
    client: Option<ConnId>,
    /// The secrets a secured master was given (restored on restart).
    pub secrets: Option<Secrets>,
    /// Connections the core said authenticated, in order.
    pub trusted: Vec<ConnId>,
    /// Whether the core is told of each commit, so finished tasks leave
    /// its memory and are read from `db` (see `core/history.rs`).
    pub evict: bool,
}

impl Sim {
    pub fn new() -> Sim {
        Sim::with_config(CoreConfig::default())
    }

    /// A master with authentication off (every connection may do
    /// everything), for the tests of everything else.
    pub fn with_config(config: CoreConfig) -> Sim {
        Sim::secured(
            CoreConfig {
                auth: AuthPolicy::off(),
                ..config
            },
            None,
        )
    }

    /// A master with `config`'s authentication and these secrets.
    pub fn secured(config: CoreConfig, secrets: Option<Secrets>) -> Sim {
        let mut core = Core::new(config.clone(), vec![], vec![], T0);
        if let Some(secrets) = secrets.clone() {
            core.set_secrets(secrets);
        }
        let mut sim = Sim::around(core, config, T0, Db::default());
        sim.secrets = secrets;
        sim
    }

    fn around(core: Core, config: CoreConfig, now: Now, db: Db) -> Sim {
        Sim {
            core,
            config,
            now,
            next_conn: 1,
            next_message: 1,
            inbox: HashMap::new(),
            closed: Vec::new(),
            batches: Vec::new(),
            db,
            workers: BTreeMap::new(),
            client: None,
            secrets: None,
            trusted: Vec::new(),
            evict: false,
        }
    }

    /// The master restarts from what the database holds: every connection
    /// is gone, and a new core is built from the records.
    pub fn restart(mut self) -> Sim {
        let mut core = Core::new(
            self.config.clone(),
            self.db.device_list(),
            self.db.task_list(),
            self.now,
        );
        core.restore_device_keys(self.db.device_keys.values().cloned().collect());
        // As the master's start does (`lib.rs`).
        if let Some(stored) = self.db.settings.get(crate::core::STRATEGY_SETTING) {
            core.restore_strategy(stored.parse().expect("a strategy the core stored"));
        }
        if let Some(secrets) = self.secrets.clone() {
            core.set_secrets(secrets);
        }
        let mut sim = Sim::around(
            core,
            self.config.clone(),
            self.now,
            std::mem::take(&mut self.db),
        );
        sim.secrets = self.secrets.take();
        sim.next_conn = self.next_conn;
        sim.next_message = self.next_message;
        sim.workers = std::mem::take(&mut self.workers);
        for worker in sim.workers.values_mut() {
            worker.lost();
        }
        sim.drive();
        sim
    }

    // ----- time -----

    pub fn advance(&mut self, by: Duration) {
        self.now.monotonic += by;
        self.now.unix_ms += i64::try_from(by.as_millis()).expect("a short advance");
    }

    /// Runs the timer, as the loop does when `next_deadline` has passed.
    pub fn tick(&mut self) {
        self.core.handle_tick(self.now);
        self.drive();
    }

    /// Runs the `prune` requests of a committed batch as the store does:
    /// deletes the finished tasks that finished before the cutoff (in one
    /// go: the batches are the store's business), reports them, then
    /// hands the request back with the totals. Whether it ran any.
    fn prune(&mut self, batch: &Batch) -> bool {
        let mut ran = false;
        for op in &batch.ops {
            let StoreOp::Prune(job) = op else { continue };
            let mut deleted: Vec<(String, TaskState)> = self
                .db
                .tasks
                .values()
                .filter(|task| {
                    task.state.is_terminal()
                        && task.finished_unix_ms.unwrap_or(task.submitted_unix_ms)
                            < job.before_unix_ms
                })
                .map(|task| (task.task_id.clone(), task.state))
                .collect();
            deleted.sort_by(|a, b| a.0.cmp(&b.0));
            let mut counts: Vec<(TaskState, u64)> = Vec::new();
            for (task_id, state) in &deleted {
                self.db.tasks.remove(task_id);
                match counts.iter_mut().find(|(known, _)| known == state) {
                    Some((_, count)) => *count += 1,
                    None => counts.push((*state, 1)),
                }
            }
            self.core.handle_pruned(batch.id, &deleted);
            self.core.handle_prune_done(job.clone(), Ok(counts));
            ran = true;
        }
        ran
    }

    // ----- driving -----

    /// Drains outputs and commits batches until nothing more happens.
    pub fn drive(&mut self) {
        for _ in 0..1000 {
            let mut outputs = Vec::new();
            self.core.drain_outputs(self.now, &mut outputs);
            let mut pruned = false;
            if let Some(batch) = self.core.take_batch() {
                assert!(
                    self.batches.last().is_none_or(|last| last.id < batch.id),
                    "batch ids increase"
                );
                self.db.apply(&batch);
                if self.evict {
                    self.core.handle_committed(batch.id);
                }
                pruned = self.prune(&batch);
                self.batches.push(batch);
            }
            if outputs.is_empty() && pruned {
                // The replies to `prune` are outputs of their own.
                continue;
            }
            if outputs.is_empty() {
                self.core.check_indexes();
                return;
            }
            let mut answers = Vec::new();
            let mut closing = Vec::new();
            let mut outputs = std::collections::VecDeque::from(outputs);
            while let Some(output) = outputs.pop_front() {
                match output {
                    // Answered at once, before anything else, as the
                    // event loop does.
                    Output::Read(read) => {
                        answer_read(&mut self.core, &self.db, self.now, *read, &mut outputs);
                    }
                    Output::Send {
                        conn,
                        payload,
                        after_batch,
                        ..
                    } => {
                        // A heartbeat ack is looked at as the message it
                        // encodes.
                        let payload = match payload {
                            Payload::HeartbeatAck(ack) => {
                                Payload::Json(ack.envelope(&self.config.master_id))
                            }
                            // And an event as the one its subscriber gets.
                            Payload::Event(shared) => {
                                Payload::Json(std::sync::Arc::unwrap_or_clone(shared))
                            }
                            other => other,
                        };
                        if let Payload::Json(envelope) = &payload {
                            if let Some(worker) =
                                self.workers.values_mut().find(|w| w.conn == Some(conn))
                            {
                                answers.extend(
                                    worker.receive(envelope).into_iter().map(|e| (conn, e)),
                                );
                            }
                        }
                        self.inbox.entry(conn).or_default().push(Delivery {
                            payload,
                            after_batch,
                        });
                    }
                    Output::Close { conn } => closing.push(conn),
                    Output::Trusted { conn } => self.trusted.push(conn),
                }
            }
            for (conn, envelope) in answers {
                self.core.handle_message(self.now, conn, envelope);
            }
            for conn in closing {
                self.closed.push(conn);
                self.drop_conn(conn);
            }
        }
        panic!("the cluster did not go idle");
    }

    fn drop_conn(&mut self, conn: ConnId) {
        self.core.handle_disconnect(self.now, conn);
        if let Some(worker) = self.workers.values_mut().find(|w| w.conn == Some(conn)) {
            worker.lost();
        }
    }

    pub fn connect(&mut self) -> ConnId {
        self.connect_from(None)
    }

    /// A connection from `peer_ip`, when the loop knows it.
    pub fn connect_from(&mut self, peer_ip: Option<&str>) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&(conn as u64).to_le_bytes());
        self.core.handle_connect(
            self.now,
            conn,
            peer_ip.map(|ip| ip.parse().expect("an IP address")),
            protocol::auth::Nonce(nonce),
        );
        conn
    }

    /// The peer closed `conn`.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.drop_conn(conn);
        self.drive();
    }

    fn message_id(&mut self) -> String {
        let id = format!("m{}", self.next_message);
        self.next_message += 1;
        id
    }

    /// Sends `message` on `conn` (as `sender`), drives, and returns the one
    /// reply to it.
    pub fn request_as(&mut self, conn: ConnId, sender: Option<&str>, message: Message) -> Reply {
        self.request_checked(conn, sender, message, |_| {})
    }

    /// Like [`Sim::request_as`], with `check` run on the core right after
    /// it handled the message, before anything follows from it
    /// (assignment, the workers' answers).
    pub fn request_checked(
        &mut self,
        conn: ConnId,
        sender: Option<&str>,
        message: Message,
        check: impl FnOnce(&Core),
    ) -> Reply {
        let id = self.message_id();
        let mut envelope = Envelope::new(message).with_id(id.clone());
        envelope.sender_id = sender.map(str::to_string);
        self.core.handle_message(self.now, conn, envelope);
        check(&self.core);
        self.drive();
        let inbox = self.inbox.entry(conn).or_default();
        let is_reply = |delivery: &Delivery| match delivery.envelope().map(|e| &e.message) {
            Some(Message::Ack(ack)) => ack.original_message_id.as_deref() == Some(id.as_str()),
            Some(Message::Error(error)) => {
                error.original_message_id.as_deref() == Some(id.as_str())
            }
            _ => false,
        };
        let replies: Vec<Delivery> = inbox.iter().filter(|d| is_reply(d)).cloned().collect();
        inbox.retain(|d| !is_reply(d));
        assert_eq!(replies.len(), 1, "exactly one reply to {id}: {replies:?}");
        let delivery = replies.into_iter().next().expect("one reply");
        Reply {
            envelope: delivery.envelope().expect("a JSON reply").clone(),
            after_batch: delivery.after_batch,
        }
    }

    pub fn request(&mut self, conn: ConnId, message: Message) -> Reply {
        self.request_as(conn, None, message)
    }

    /// Sends a text command and returns the one text reply and its batch.
    pub fn text(&mut self, conn: ConnId, line: &str) -> (String, Option<u64>) {
        let before = self.inbox.get(&conn).map_or(0, Vec::len);
        self.core.handle_text(self.now, conn, line);
        self.drive();
        let texts: Vec<(String, Option<u64>)> = self.inbox[&conn][before..]
            .iter()
            .filter_map(|d| match &d.payload {
                Payload::Text(text) => Some((text.clone(), d.after_batch)),
                Payload::Json(_) | Payload::HeartbeatAck(_) | Payload::Event(_) => None,
            })
            .collect();
        assert_eq!(texts.len(), 1, "one text reply to {line:?}");
        texts.into_iter().next().expect("one reply")
    }

    // ----- workers -----

    /// Connects worker `id` on a new connection and registers it with
    /// `register`, listing the tasks it still runs. Its answers follow its
    /// current policy (`Accept` for a new worker).
    pub fn join(&mut self, id: &str, mut register: Register) -> Reply {
        let conn = self.connect();
        let worker = self
            .workers
            .entry(id.to_string())
            .or_insert_with(|| FakeWorker::new(id, Policy::Accept));
        worker.conn = Some(conn);
        worker.pending.clear();
        register.running_tasks = worker
            .running
            .iter()
            .map(|(task_id, &attempt)| RunningTask {
                task_id: task_id.clone(),
                attempt,
            })
            .collect();
        self.request_as(conn, Some(id), Message::Register(register))
    }

    /// Like [`Sim::join`], answering assignments by `policy` from the start.
    pub fn join_with(&mut self, id: &str, register: Register, policy: Policy) -> Reply {
        self.workers
            .entry(id.to_string())
            .or_insert_with(|| FakeWorker::new(id, policy))
            .policy = policy;
        self.join(id, register)
    }

    /// Joins a plain worker with `slots` slots.
    pub fn add_worker(&mut self, id: &str, slots: u32) -> ConnId {
        let reply = self.join(id, register(slots));
        assert_eq!(reply.field("success"), json!(true));
        self.conn_of(id)
    }

    pub fn worker(&self, id: &str) -> &FakeWorker {
        &self.workers[id]
    }

    pub fn set_policy(&mut self, id: &str, policy: Policy) {
        self.workers.get_mut(id).expect("a worker").policy = policy;
    }

    pub fn worker_mut(&mut self, id: &str) -> &mut FakeWorker {
        self.workers.get_mut(id).expect("a worker")
    }

    pub fn conn_of(&self, id: &str) -> ConnId {
        self.worker(id).conn.expect("a connected worker")
    }

    /// Task ids offered to worker `id`, in order.
    pub fn offered(&self, id: &str) -> Vec<String> {
        self.worker(id)
            .offers
            .iter()
            .map(|(task, _)| task.clone())
            .collect()
    }

    /// The worker's message, sent on its connection (with an id).
    pub fn worker_request(&mut self, id: &str, message: Message) -> Reply {
        let conn = self.conn_of(id);
        self.request_as(conn, Some(id), message)
    }

    /// Worker `id` reports the end of `task_id` (the attempt it runs).
    pub fn finish(
        &mut self,
        id: &str,
        task_id: &str,
        status: ResultStatus,
        result: Value,
    ) -> Reply {
        let worker = self.workers.get_mut(id).expect("a worker");
        let attempt = worker
            .running
            .remove(task_id)
            .expect("the worker runs the task");
        let envelope = worker.result(task_id, attempt, status, result);
        self.worker_request(id, envelope.message)
    }

    /// Worker `id` completes `task_id` with a little output.
    pub fn complete(&mut self, id: &str, task_id: &str) -> Reply {
        let reply = self.finish(
            id,
            task_id,
            ResultStatus::Completed,
            json!({ "output": "ok", "exit_code": 0 }),
        );
        assert_eq!(reply.field("recorded"), json!(true), "{task_id} recorded");
        reply
    }

    /// Worker `id` completes every task it runs, all reported before the
    /// core is driven once (as one read of the socket would hand them
    /// over), so that thousands of tasks cost one round.
    pub fn complete_all(&mut self, id: &str) {
        let worker = self.workers.get_mut(id).expect("a worker");
        let conn = worker.conn.expect("a connected worker");
        let running = std::mem::take(&mut worker.running);
        let envelopes: Vec<Envelope> = running
            .into_iter()
            .map(|(task_id, attempt)| {
                worker.result(&task_id, attempt, ResultStatus::Completed, json!({}))
            })
            .collect();
        for envelope in envelopes {
            self.core.handle_message(self.now, conn, envelope);
        }
        self.drive();
    }

    /// A silent worker answers every pending assignment: `ack` when
    /// `refusal` is `None`, else an `error` with that code. A task whose
    /// cancel arrived meanwhile is reported cancelled right after its ack.
    pub fn answer(&mut self, id: &str, refusal: Option<ErrorCode>) {
        let worker = self.workers.get_mut(id).expect("a worker");
        let conn = worker.conn.expect("a connected worker");
        let mut envelopes = Vec::new();
        for (task_id, pending) in std::mem::take(&mut worker.pending) {
            match refusal {
                Some(code) => envelopes.push(worker.refusal(pending.message_id, code)),
                None if pending.cancelled => {
                    envelopes.push(worker.ack(pending.message_id));
                    envelopes.push(worker.result(
                        &task_id,
                        pending.attempt,
                        ResultStatus::Cancelled,
                        json!({}),
                    ));
                }
                None => {
                    envelopes.push(worker.ack(pending.message_id));
                    worker.running.insert(task_id, pending.attempt);
                }
            }
        }
        for envelope in envelopes {
            self.core.handle_message(self.now, conn, envelope);
        }
        self.drive();
    }

    /// Joins worker `id` with `slots` slots, declaring leases: it keeps
    /// running its tasks while it has lost the master and lists them when
    /// it registers again.
    pub fn add_lease_worker(&mut self, id: &str, slots: u32) -> ConnId {
        self.keep_tasks(id);
        let reply = self.join(
            id,
            Register {
                leases: true,
                ..register(slots)
            },
        );
        assert_eq!(reply.field("success"), json!(true));
        self.conn_of(id)
    }

    /// Worker `id` (known from now on) declares leases: it keeps running
    /// its tasks while it has lost the master.
    pub fn keep_tasks(&mut self, id: &str) {
        self.workers
            .entry(id.to_string())
            .or_insert_with(|| FakeWorker::new(id, Policy::Accept))
            .keeps_tasks = true;
    }

    /// Worker `id` reports `status` for `attempt` of `task_id`, whatever it
    /// runs: on its connection, or, while it is away, on a one-shot
    /// connection as older workers do.
    pub fn report(&mut self, id: &str, task_id: &str, attempt: u32, status: ResultStatus) -> Reply {
        let worker = self.workers.get_mut(id).expect("a worker");
        if worker.running.get(task_id) == Some(&attempt) {
            worker.running.remove(task_id);
        }
        worker
            .orphans
            .retain(|(t, a)| !(t.as_str() == task_id && *a == attempt));
        let envelope = worker.result(task_id, attempt, status, json!({ "exit_code": 1 }));
        match worker.conn {
            Some(_) => self.worker_request(id, envelope.message),
            None => {
                let conn = self.connect();
                let reply = self.request_as(conn, Some(id), envelope.message);
                self.disconnect(conn);
                reply
            }
        }
    }

    /// A heartbeat with the worker's own `status`.
    pub fn heartbeat_status(&mut self, id: &str, status: &str) -> Reply {
        let heartbeat = Heartbeat {
            status: Some(status.into()),
            ..Heartbeat::default()
        };
        self.worker_request(id, Message::Heartbeat(heartbeat))
    }

    pub fn heartbeat(&mut self, id: &str) -> Reply {
        self.worker_request(id, Message::Heartbeat(Heartbeat::default()))
    }

    /// Worker `id` says goodbye and closes its connection.
    pub fn goodbye(&mut self, id: &str) -> Reply {
        let reply = self.worker_request(id, Message::Goodbye(Goodbye::default()));
        let conn = self.conn_of(id);
        self.disconnect(conn);
        reply
    }

    /// Worker `id`'s connection drops.
    pub fn leave(&mut self, id: &str) {
        let conn = self.conn_of(id);
        self.disconnect(conn);
    }

    // ----- clients -----

    /// The connection the one-line client helpers use.
    pub fn client(&mut self) -> ConnId {
        match self.client {
            Some(conn) => conn,
            None => {
                let conn = self.connect();
                self.client = Some(conn);
                conn
            }
        }
    }

    pub fn submit_reply(&mut self, spec: TaskSpec) -> Reply {
        let conn = self.client();
        let submit = TaskSubmit {
            tasks: vec![spec],
            batch: false,
        };
        self.request(conn, Message::TaskSubmit(submit))
    }

    /// Submits one task and returns its id.
    pub fn submit(&mut self, spec: TaskSpec) -> String {
        let reply = self.submit_reply(spec);
        reply
            .field("task_id")
            .as_str()
            .expect("a task id")
            .to_string()
    }

    pub fn cancel(&mut self, task_id: &str) -> Reply {
        let conn = self.client();
        let cancel = TaskCancel {
            task_id: task_id.into(),
            attempt: None,
        };
        self.request(conn, Message::TaskCancel(cancel))
    }

    pub fn retry(&mut self, task_id: &str) -> Reply {
        let conn = self.client();
        let task = TaskRef {
            task_id: task_id.into(),
        };
        self.request(conn, Message::TaskRetry(task))
    }

    pub fn task_status(&mut self, task_id: &str) -> Reply {
        let conn = self.client();
        let task = TaskRef {
            task_id: task_id.into(),
        };
        self.request(conn, Message::TaskStatus(task))
    }

    /// The store stops (or starts again) committing.
    pub fn set_storage(&mut self, available: bool) {
        self.core.set_storage_available(available);
        self.drive();
    }

    pub fn drain(&mut self, device_id: &str) -> Reply {
        let conn = self.client();
        let device = DeviceRef {
            device_id: device_id.into(),
        };
        self.request(conn, Message::DrainDevice(device))
    }

    // ----- looking inside -----

    pub fn task(&self, task_id: &str) -> &TaskRecord {
        &self.core.tasks.by_id[task_id].record
    }

    pub fn state(&self, task_id: &str) -> TaskState {
        self.task(task_id).state
    }

    /// Queued task ids in the order they will be handed out.
    pub fn queue(&self) -> Vec<String> {
        self.core
            .tasks
            .queue
            .keys()
            .into_iter()
            .map(|key| key.task_id)
            .collect()
    }

    /// Task ids the master counts against device `id`'s slots.
    pub fn active(&self, id: &str) -> Vec<String> {
        self.core.registry.devices[id]
            .active
            .iter()
            .cloned()
            .collect()
    }

    pub fn device(&self, id: &str) -> &DeviceRecord {
        &self.core.registry.devices[id].record
    }

    pub fn batch(&self, id: u64) -> &Batch {
        self.batches
            .iter()
            .find(|batch| batch.id == id)
            .unwrap_or_else(|| panic!("no batch {id} was taken"))
    }

    /// Whether batch `id` writes task `task_id` in `state`.
    pub fn batch_has_task(&self, id: u64, task_id: &str, state: TaskState) -> bool {
        self.batch(id)
            .ops
            .iter()
            .any(|op| matches!(op, StoreOp::PutTask(t) if t.task_id == task_id && t.state == state))
    }

    /// The state batch `id` writes task `task_id` in, if it writes it.
    pub fn batch_task_state(&self, id: u64, task_id: &str) -> Option<TaskState> {
        self.batch(id).ops.iter().find_map(|op| match op {
            StoreOp::PutTask(t) if t.task_id == task_id => Some(t.state),
            _ => None,
        })
    }

    /// Whether batch `id` writes device `device_id`.
    pub fn batch_has_device(&self, id: u64, device_id: &str) -> bool {
        self.batch(id)
            .ops
            .iter()
            .any(|op| matches!(op, StoreOp::PutDevice(d) if d.device_id == device_id))
    }

    /// JSON messages sent on `conn`, with their batches.
    pub fn json_sent(&self, conn: ConnId) -> Vec<(Envelope, Option<u64>)> {
        self.inbox
            .get(&conn)
            .into_iter()
            .flatten()
            .filter_map(|d| d.envelope().map(|e| (e.clone(), d.after_batch)))
            .collect()
    }

    /// Events streamed on `conn`, with their batches.
    pub fn events(&self, conn: ConnId) -> Vec<(Event, Option<u64>)> {
        self.json_sent(conn)
            .into_iter()
            .filter_map(|(envelope, after)| match envelope.message {
                Message::Event(event) => Some((event, after)),
                _ => None,
            })
            .collect()
    }
}
