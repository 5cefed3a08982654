//! The held-reply rule across random histories: the core and the
//! [`Outbox`] as the event loop drives them, with batches that commit
//! late (a slow disk) and a store that fails for a while. Nothing that
//! promises durability may reach its peer before the change it reports is
//! committed, and a connection's messages keep their order.

use super::sim::{answer_read, register, with_id, Db, T0};
use crate::core::outbox::{Outbox, Weigh};
use crate::core::records::Batch;
use crate::core::{ConnId, Core, CoreConfig, Now, Output, Payload};
use proptest::prelude::*;
use protocol::{
    Ack, Envelope, Heartbeat, Message, ResultStatus, Subscribe, TaskCancel, TaskResult, TaskState,
    TaskSubmit,
};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// One message on its way, as the test tracks it.
#[derive(Debug)]
struct Sent {
    /// Its place among the messages pushed on its connection.
    seq: u64,
    after_batch: Option<u64>,
    overtake: bool,
    /// The message, when it is JSON (events as their subscriber gets them).
    envelope: Option<Envelope>,
}

impl Weigh for Sent {
    fn weight(&self) -> usize {
        1
    }
}

#[derive(Debug, Clone)]
enum Op {
    Submit { c: usize },
    Cancel { c: usize, pick: usize },
    Read { c: usize },
    Text { c: usize },
    Join { w: usize },
    Heartbeat { w: usize },
    Finish { w: usize, pick: usize },
    Leave { w: usize },
    Commit { n: usize },
    Storage { available: bool },
    Tick { secs: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize).prop_map(|c| Op::Submit { c }),
        1 => (0..3usize, 0..64usize).prop_map(|(c, pick)| Op::Cancel { c, pick }),
        2 => (0..3usize).prop_map(|c| Op::Read { c }),
        1 => (0..3usize).prop_map(|c| Op::Text { c }),
        1 => (0..2usize).prop_map(|w| Op::Join { w }),
        2 => (0..2usize).prop_map(|w| Op::Heartbeat { w }),
        3 => (0..2usize, 0..8usize).prop_map(|(w, pick)| Op::Finish { w, pick }),
        1 => (0..2usize).prop_map(|w| Op::Leave { w }),
        4 => (1..3usize).prop_map(|n| Op::Commit { n }),
        1 => proptest::bool::weighted(0.6).prop_map(|available| Op::Storage { available }),
        1 => (1..20u8).prop_map(|secs| Op::Tick { secs }),
    ]
}

/// The core, the outbox in front of it, and a store that commits when told.
struct Harness {
    core: Core,
    outbox: Outbox<Sent>,
    now: Now,
    next_conn: ConnId,
    next_message: u64,
    /// Per connection, the next `seq` to push and the last non-overtaking
    /// one released.
    pushed: HashMap<ConnId, u64>,
    released_seq: HashMap<ConnId, u64>,
    /// Batches handed to the store and not yet committed, oldest first.
    uncommitted: VecDeque<Batch>,
    committed: u64,
    db: Db,
    clients: Vec<ConnId>,
    /// Worker conns by worker number, while connected.
    workers: BTreeMap<usize, ConnId>,
    /// Assignments a worker has received and not finished: (task, attempt).
    running: BTreeMap<usize, Vec<(String, u32)>>,
    /// Requests whose reply promises a committed state: message id to what
    /// the committed record must show.
    promises: HashMap<String, Promise>,
    submitted: Vec<String>,
}

#[derive(Debug)]
enum Promise {
    /// The submitted task (its id is in the ack) is stored.
    Submitted,
    /// The task is stored as cancelled.
    Cancelled(String),
}

impl Harness {
    fn new() -> Harness {
        let config = CoreConfig {
            auth: crate::core::AuthPolicy::off(),
            ..CoreConfig::default()
        };
        let mut harness = Harness {
            core: Core::new(config, vec![], vec![], T0),
            outbox: Outbox::default(),
            now: T0,
            next_conn: 1,
            next_message: 1,
            pushed: HashMap::new(),
            released_seq: HashMap::new(),
            uncommitted: VecDeque::new(),
            committed: 0,
            db: Db::default(),
            clients: Vec::new(),
            workers: BTreeMap::new(),
            running: BTreeMap::new(),
            promises: HashMap::new(),
            submitted: Vec::new(),
        };
        for _ in 0..3 {
            let conn = harness.connect();
            harness.clients.push(conn);
        }
        // One client watches every event.
        let watcher = harness.clients[0];
        harness.request(watcher, Message::Subscribe(Subscribe::default()));
        harness
    }

    fn connect(&mut self) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&(conn as u64).to_le_bytes());
        self.core
            .handle_connect(self.now, conn, None, protocol::auth::Nonce(nonce));
        conn
    }

    fn request(&mut self, conn: ConnId, message: Message) -> String {
        let id = format!("m{}", self.next_message);
        self.next_message += 1;
        let envelope = Envelope::new(message).with_id(id.clone());
        self.core.handle_message(self.now, conn, envelope);
        self.settle();
        id
    }

    fn disconnect(&mut self, conn: ConnId) {
        self.outbox.forget(conn);
        self.core.handle_disconnect(self.now, conn);
        if let Some((&w, _)) = self.workers.iter().find(|(_, &c)| c == conn) {
            self.workers.remove(&w);
            self.running.remove(&w);
        }
    }

    /// What the event loop's `settle` does: outputs into the outbox,
    /// the batch to the store, then release what has committed.
    fn settle(&mut self) {
        for _ in 0..100 {
            let mut outputs = Vec::new();
            self.core.drain_outputs(self.now, &mut outputs);
            if let Some(batch) = self.core.take_batch() {
                self.uncommitted.push_back(batch);
            }
            let mut closing = Vec::new();
            let mut outputs = VecDeque::from(outputs);
            while let Some(output) = outputs.pop_front() {
                match output {
                    // The store's reader sees only what has committed:
                    // a finished task leaves the core once its write
                    // has, so the reply must not miss a change.
                    Output::Read(read) => {
                        answer_read(&mut self.core, &self.db, self.now, *read, &mut outputs);
                    }
                    Output::Send {
                        conn,
                        payload,
                        after_batch,
                        overtake,
                    } => {
                        let envelope = match payload {
                            Payload::Json(envelope) => Some(envelope),
                            Payload::Event(shared) => Some(std::sync::Arc::unwrap_or_clone(shared)),
                            Payload::HeartbeatAck(_) | Payload::Text(_) => None,
                        };
                        let seq = self.pushed.entry(conn).or_default();
                        *seq += 1;
                        let sent = Sent {
                            seq: *seq,
                            after_batch,
                            overtake,
                            envelope,
                        };
                        if let Some(sent) = self.outbox.push(conn, after_batch, overtake, sent) {
                            self.deliver(conn, sent);
                        }
                    }
                    Output::Close { conn } => closing.push(conn),
                    Output::Trusted { .. } => {}
                }
            }
            let mut ready = Vec::new();
            self.outbox.release(|conn, sent| ready.push((conn, sent)));
            let idle = ready.is_empty() && closing.is_empty();
            for (conn, sent) in ready {
                self.deliver(conn, sent);
            }
            for conn in closing {
                self.disconnect(conn);
            }
            if idle {
                return;
            }
        }
        panic!("the master did not go idle");
    }

    /// A message reaches its peer: check the rule, and let a worker answer
    /// its assignment.
    fn deliver(&mut self, conn: ConnId, sent: Sent) {
        let waits_for = sent.after_batch.unwrap_or(0);
        assert!(
            waits_for <= self.committed,
            "a message waiting for batch {waits_for} left on connection {conn} \
             when only batch {} had committed: {:?}",
            self.committed,
            sent.envelope
        );
        if !sent.overtake {
            let last = self.released_seq.entry(conn).or_default();
            assert!(
                sent.seq > *last,
                "connection {conn}: message {} left after message {last}",
                sent.seq
            );
            *last = sent.seq;
        }
        let Some(envelope) = sent.envelope else {
            return;
        };
        match &envelope.message {
            Message::Ack(ack) => self.check_promise(ack),
            Message::TaskAssign(assign) => {
                let task_id = assign
                    .task
                    .task_id
                    .clone()
                    .expect("an assigned task has an id");
                // An assignment waits for no commit (a worker's result for an
                // attempt the store lost is fenced off by its number), so
                // only its order is checked.
                if let Some((&w, _)) = self.workers.iter().find(|(_, &c)| c == conn) {
                    self.running
                        .entry(w)
                        .or_default()
                        .push((task_id, assign.attempt));
                    let reply = Envelope::new(Message::Ack(Ack::new(
                        envelope.message_id.clone(),
                        json!({}),
                    )))
                    .from_sender(worker_id(w));
                    self.core.handle_message(self.now, conn, reply);
                }
            }
            _ => {}
        }
    }

    fn check_promise(&self, ack: &Ack) {
        let Some(promise) = ack
            .original_message_id
            .as_ref()
            .and_then(|id| self.promises.get(id))
        else {
            return;
        };
        match promise {
            Promise::Submitted => {
                let task_id = ack.result.fields().get("task_id").cloned();
                let task_id = task_id.as_ref().and_then(|id| id.as_str());
                let task_id = task_id.expect("a submit's ack names its task");
                assert!(
                    self.db.tasks.contains_key(task_id),
                    "the submit of {task_id} was acknowledged before it was committed"
                );
            }
            Promise::Cancelled(task_id) => {
                let state = self.db.tasks.get(task_id).map(|task| task.state);
                assert_eq!(
                    state,
                    Some(TaskState::Cancelled),
                    "the cancel of {task_id} was acknowledged before it was committed"
                );
            }
        }
    }

    fn commit(&mut self, n: usize) {
        for _ in 0..n {
            let Some(batch) = self.uncommitted.pop_front() else {
                break;
            };
            self.db.apply(&batch);
            self.committed = batch.id;
            self.outbox.handle_committed(batch.id);
            // As the event loop does: finished tasks whose write has
            // committed leave the core's memory.
            self.core.handle_committed(batch.id);
        }
        self.settle();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Submit { c } => {
                // A client-chosen id, so later ops can name the task before
                // its ack has left.
                let task_id = format!("t{}", self.submitted.len());
                let submit = TaskSubmit {
                    tasks: vec![with_id(&task_id)],
                    batch: false,
                };
                let id = self.request(self.clients[c], Message::TaskSubmit(submit));
                self.promises.insert(id, Promise::Submitted);
                self.submitted.push(task_id);
            }
            Op::Cancel { c, pick } => {
                if self.submitted.is_empty() {
                    return;
                }
                let task_id = self.submitted[pick % self.submitted.len()].clone();
                let cancel = TaskCancel {
                    task_id: task_id.clone(),
                    attempt: None,
                };
                let id = self.request(self.clients[c], Message::TaskCancel(cancel));
                self.promises.insert(id, Promise::Cancelled(task_id));
            }
            Op::Read { c } => {
                self.request(self.clients[c], Message::Status);
            }
            Op::Text { c } => {
                self.core.handle_text(self.now, self.clients[c], "status");
                self.settle();
            }
            Op::Join { w } => {
                if self.workers.contains_key(&w) {
                    return;
                }
                let conn = self.connect();
                self.workers.insert(w, conn);
                let envelope = Envelope::new(Message::Register(register(2)))
                    .with_id(format!("join{w}"))
                    .from_sender(worker_id(w));
                self.core.handle_message(self.now, conn, envelope);
                self.settle();
            }
            Op::Heartbeat { w } => {
                let Some(&conn) = self.workers.get(&w) else {
                    return;
                };
                let envelope = Envelope::new(Message::Heartbeat(Heartbeat::default()))
                    .with_id(format!("hb{}", self.next_message))
                    .from_sender(worker_id(w));
                self.next_message += 1;
                self.core.handle_message(self.now, conn, envelope);
                self.settle();
            }
            Op::Finish { w, pick } => {
                let Some(&conn) = self.workers.get(&w) else {
                    return;
                };
                let running = self.running.entry(w).or_default();
                if running.is_empty() {
                    return;
                }
                let (task_id, attempt) = running.remove(pick % running.len());
                let result = TaskResult {
                    task_id,
                    attempt: Some(attempt),
                    status: ResultStatus::Completed,
                    execution_time: None,
                    result: json!({ "output": "x", "exit_code": 0 }),
                    error: None,
                };
                let envelope = Envelope::new(Message::TaskResult(result))
                    .with_id(format!("r{}", self.next_message))
                    .from_sender(worker_id(w));
                self.next_message += 1;
                self.core.handle_message(self.now, conn, envelope);
                self.settle();
            }
            Op::Leave { w } => {
                if let Some(&conn) = self.workers.get(&w) {
                    self.disconnect(conn);
                    self.settle();
                }
            }
            Op::Commit { n } => self.commit(n),
            Op::Storage { available } => {
                self.core.set_storage_available(available);
                self.settle();
            }
            Op::Tick { secs } => {
                self.now.monotonic += Duration::from_secs(secs.into());
                self.now.unix_ms += i64::from(secs) * 1000;
                self.core.handle_tick(self.now);
                self.settle();
            }
        }
    }
}

fn worker_id(w: usize) -> String {
    format!("w{w}")
}

fn run(ops: &[Op]) {
    let mut harness = Harness::new();
    for op in ops {
        harness.apply(op);
    }
    // Once the store is back and has committed everything, nothing is
    // left waiting.
    harness.core.set_storage_available(true);
    harness.settle();
    while !harness.uncommitted.is_empty() {
        harness.commit(1);
    }
    for conn in 1..harness.next_conn {
        assert!(
            !harness.outbox.is_holding(conn),
            "connection {conn} still holds messages after every batch committed"
        );
    }
}

proptest! {
    // 256 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_message_leaves_before_its_commit(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

/// The rule itself, on a fixed history: a reply held for a batch leaves
/// only once that batch commits, behind nothing and ahead of nothing.
#[test]
fn a_submit_ack_waits_for_its_batch() {
    let mut harness = Harness::new();
    harness.apply(&Op::Submit { c: 1 });
    let conn = harness.clients[1];
    assert!(
        harness.outbox.is_holding(conn),
        "the ack waits for its commit"
    );
    harness.apply(&Op::Read { c: 1 });
    harness.apply(&Op::Commit { n: 1 });
    assert!(
        !harness.outbox.is_holding(conn),
        "the commit released both replies"
    );
    assert_eq!(harness.released_seq.get(&conn), Some(&2));
}
