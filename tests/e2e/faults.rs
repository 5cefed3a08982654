//! Fault injection with the real binaries: the proofs of
//! `docs/guarantees.md` that need processes to die, stop or run out of disk.
//!
//! - kill -9 of the master, repeatedly, under load: nothing acknowledged is
//!   lost, each task ends once, executions stay within attempts;
//! - kill -9 of a worker mid-task: the task completes on another one;
//! - SIGSTOP of a worker past its lease: its late result is fenced;
//! - a full disk (a file-size limit on the master, and a real tmpfs that
//!   fills up): no ack, refusals, reads go on, recovery by itself, a sound
//!   database; a read-only data dir refuses a start (exit 73);
//! - a worker's outbox across a restart of the master: recorded once.
//!
//! Waits end on events. The only sleeps are in
//! `worker_outbox_results_are_recorded_once_across_a_master_restart`,
//! which must know that a task's process has finished while the master is
//! down, something no event can say (see there).

use protocol::{
    Ack, ErrorCode, Event, Message, Subscribe, TaskRef, TaskSpec, TaskState, TaskSubmit, TaskView,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tests::{
    check_database, lift_file_size_limit, shared_dir, signal, unconfined_worker_config, Client,
    MasterProcess, WorkerProcess, PATIENCE,
};

const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

fn setup() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// A worker whose `shell` tasks may write to the test's shared dir.
fn start_worker(master: SocketAddr, id: &str, slots: usize, config: &Path) -> WorkerProcess {
    let config = config.to_string_lossy().into_owned();
    WorkerProcess::start(master, id, slots, &["--config", &config])
}

/// Subscribes to every event on a new connection.
fn subscriber(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    client
        .request(Message::Subscribe(Subscribe::default()))
        .expect("subscribe");
    client
}

fn shell(task_id: &str, command: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("shell", json!({ "command": command }));
    spec.task_id = Some(task_id.to_string());
    spec
}

fn submit(client: &mut Client, spec: TaskSpec) -> Ack {
    let id = spec.task_id.clone().unwrap_or_default();
    client
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .unwrap_or_else(|err| panic!("submit {id}: {} ({})", err.error, err.code))
}

fn task_status(client: &mut Client, task_id: &str) -> TaskView {
    let ack = client
        .request(Message::TaskStatus(TaskRef {
            task_id: task_id.to_string(),
        }))
        .unwrap_or_else(|err| panic!("task_status {task_id}: {}", err.error));
    let reply: protocol::TaskReply = ack.result.parse().expect("a task view");
    reply.task
}

/// The status of every id, asked on one connection in pipelined chunks;
/// ids the master does not know are left out.
fn statuses(addr: SocketAddr, ids: &BTreeSet<String>) -> BTreeMap<String, TaskView> {
    let mut client = Client::connect(addr);
    let mut views = BTreeMap::new();
    let ids: Vec<&String> = ids.iter().collect();
    for chunk in ids.chunks(200) {
        let mut asked: BTreeMap<String, String> = BTreeMap::new();
        for id in chunk {
            let message_id = client.send(
                Message::TaskStatus(TaskRef {
                    task_id: id.to_string(),
                }),
                None,
            );
            asked.insert(message_id, id.to_string());
        }
        while !asked.is_empty() {
            match client.next_message().message {
                Message::Ack(ack) => {
                    let key = ack.original_message_id.clone().unwrap_or_default();
                    let id = asked.remove(&key).expect("a reply to a question asked");
                    let reply: protocol::TaskReply = ack.result.parse().expect("a task view");
                    let view = reply.task;
                    assert_eq!(view.task_id, id);
                    views.insert(id, view);
                }
                Message::Error(error) => {
                    let key = error.original_message_id.clone().unwrap_or_default();
                    let id = asked.remove(&key).expect("a reply to a question asked");
                    assert_eq!(
                        error.code,
                        ErrorCode::NotFound,
                        "task_status {id}: {error:?}"
                    );
                }
                other => panic!("unexpected message: {other:?}"),
            }
        }
    }
    views
}

/// Waits for the next event `want` accepts, calling `seen` on every event
/// on the way (including the one returned).
fn wait_event_seeing(
    events: &mut Client,
    mut seen: impl FnMut(&Event),
    mut want: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "no matching event in time");
        if let Message::Event(event) = events.next_message().message {
            seen(&event);
            if want(&event) {
                return event;
            }
        }
    }
}

fn is_assigned(event: &Event, task: &str, device: &str, attempt: u32) -> bool {
    matches!(event, Event::TaskAssigned { task_id, device_id, attempt: a }
        if task_id == task && device_id == device && *a == attempt)
}

fn is_finished(event: &Event, task: &str) -> bool {
    matches!(event, Event::TaskFinished { task: view } if view.task_id == task)
}

fn finished_view(event: Event) -> TaskView {
    match event {
        Event::TaskFinished { task } => *task,
        other => panic!("not task_finished: {other:?}"),
    }
}

fn wait_joined(events: &mut Client, device: &str) {
    wait_all_joined(events, &[device]);
}

/// Waits until every device in `devices` has joined, in any order.
fn wait_all_joined(events: &mut Client, devices: &[&str]) {
    let mut waiting: BTreeSet<&str> = devices.iter().copied().collect();
    while !waiting.is_empty() {
        if let Event::DeviceJoined { device_id } =
            events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }))
        {
            waiting.remove(device_id.as_str());
        }
    }
}

fn output_of(view: &TaskView) -> Value {
    view.result
        .as_ref()
        .map_or(Value::Null, |result| result["output"].clone())
}

/// How many times each line occurs in a file (a missing file is empty).
fn line_counts(path: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

fn env_or(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {text:?}")),
        Err(_) => default,
    }
}

// ----- kill -9 of the master under load -----

const BATCH: usize = 100;

/// Counts the restarts of the master, so that a client that lost it knows
/// when to connect again: each restart bumps the count once the new master
/// listens.
#[derive(Default)]
struct Generation {
    count: Mutex<u64>,
    bumped: Condvar,
}

impl Generation {
    fn current(&self) -> u64 {
        *self.count.lock().expect("the lock")
    }

    fn bump(&self) {
        *self.count.lock().expect("the lock") += 1;
        self.bumped.notify_all();
    }

    fn wait_past(&self, seen: u64) {
        let guard = self.count.lock().expect("the lock");
        let (guard, timeout) = self
            .bumped
            .wait_timeout_while(guard, PATIENCE, |count| *count <= seen)
            .expect("the lock");
        assert!(
            !timeout.timed_out(),
            "the master was not restarted in time (generation {})",
            *guard
        );
    }

    /// Connects to the master, waiting for a restart when it is down.
    fn connect(&self, addr: SocketAddr) -> (Client, u64) {
        loop {
            let seen = self.current();
            match Client::try_connect(addr) {
                Ok(client) => return (client, seen),
                // The master of generation `seen` is dead (it listened
                // before `seen` was published): wait for the next one.
                Err(_) => self.wait_past(seen),
            }
        }
    }
}

/// What the submitter did.
#[derive(Debug, Default)]
struct SubmitterReport {
    /// Batches sent again after the connection broke before their ack.
    resent_batches: usize,
    /// Of those, batches whose tasks the master already had (the ack had
    /// been lost, not the batch).
    already_known: usize,
}

/// What the main thread of the kill -9 test hears about.
enum Progress {
    /// A batch was acknowledged: these ids go into the client's ledger.
    Acked(Vec<String>),
    /// A subscriber saw a task finish.
    Finished(Box<TaskView>),
}

/// Submits `batches` batches of shell tasks, each appending its id to
/// `ledger` when it runs, and reports each batch's ids once its ack
/// arrived. A broken connection means a dead master: it waits for the
/// restart and sends the same batch again (client-chosen ids make that
/// safe).
fn submit_batches(
    addr: SocketAddr,
    batches: usize,
    ledger: &Path,
    generation: &Generation,
    progress: &mpsc::Sender<Progress>,
) -> SubmitterReport {
    let mut report = SubmitterReport::default();
    let (mut client, mut seen) = generation.connect(addr);
    for batch in 0..batches {
        let ids: Vec<String> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|n| format!("f-{n}"))
            .collect();
        let tasks: Vec<TaskSpec> = ids
            .iter()
            .map(|id| {
                shell(
                    id,
                    &format!("echo {id} >> '{}' && echo {id}", ledger.display()),
                )
            })
            .collect();
        let mut resent = false;
        let ack = loop {
            let message = Message::TaskSubmit(TaskSubmit {
                tasks: tasks.clone(),
                batch: true,
            });
            match client.try_request(message) {
                Ok(Ok(ack)) => break ack,
                Ok(Err(error)) => panic!("batch {batch} refused: {} ({})", error.error, error.code),
                Err(_) => {
                    generation.wait_past(seen);
                    (client, seen) = generation.connect(addr);
                    resent = true;
                }
            }
        };
        let batch: protocol::BatchSubmitted = ack.result.parse().expect("a batch's ids");
        let returned = batch.task_ids;
        assert_eq!(returned, ids, "the ack names the batch's tasks in order");
        if resent {
            report.resent_batches += 1;
            if batch.message == format!("{BATCH} tasks accepted (0 new)") {
                report.already_known += 1;
            }
        }
        if progress.send(Progress::Acked(returned)).is_err() {
            break;
        }
    }
    report
}

/// Subscribes on a new connection and forwards every `task_finished` until
/// the master goes away.
fn collect_finished(addr: SocketAddr, into: mpsc::Sender<Progress>) -> thread::JoinHandle<()> {
    let mut events = subscriber(addr);
    thread::spawn(move || {
        while let Ok(envelope) = events.try_next_message() {
            if let Message::Event(Event::TaskFinished { task }) = envelope.message {
                if into.send(Progress::Finished(task)).is_err() {
                    return;
                }
            }
        }
    })
}

/// Five times (or `RETIRE_FAULT_KILLS`), the master is killed with SIGKILL
/// and restarted on the same port and data, while a client submits 3,000
/// (or `RETIRE_FAULT_TASKS`) tasks in batches and two workers run them.
/// The kills are spread over submitting and running: kill n comes when
/// acknowledged plus finished tasks pass n/(kills+2) of twice the total.
#[test]
fn kill_9_the_master_five_times_under_load_loses_nothing() {
    let started = Instant::now();
    let kills = env_or("RETIRE_FAULT_KILLS", 5);
    let batches = env_or("RETIRE_FAULT_TASKS", 3000).div_ceil(BATCH).max(1);
    let total = batches * BATCH;
    let dir = setup();
    let shared = shared_dir(dir.path(), "shared");
    let ledger = shared.join("ledger");
    let data = dir.path().join("data");
    let config = unconfined_worker_config(dir.path());
    let flags = ["--lease-grace", "10"];

    let mut master = MasterProcess::start_with(&data, "127.0.0.1:0", &flags);
    let addr = master.addr;
    let (progress_tx, progress_rx) = mpsc::channel::<Progress>();
    let mut collectors = vec![collect_finished(addr, progress_tx.clone())];
    let mut joins = subscriber(addr);
    let _workers = [
        start_worker(addr, "crash-a", 4, &config),
        start_worker(addr, "crash-b", 4, &config),
    ];
    wait_all_joined(&mut joins, &["crash-a", "crash-b"]);
    drop(joins);

    let generation = Arc::new(Generation::default());
    let submitter = {
        let generation = Arc::clone(&generation);
        let ledger = ledger.clone();
        let progress = progress_tx.clone();
        thread::spawn(move || submit_batches(addr, batches, &ledger, &generation, &progress))
    };

    // The client-side ledger: ids whose batch was acknowledged.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    // task_finished events seen, per task, over every master's life.
    let mut finished_events: BTreeMap<String, usize> = BTreeMap::new();
    let count = |progress: Progress,
                 acked: &mut BTreeSet<String>,
                 finished: &mut BTreeMap<String, usize>| match progress {
        Progress::Acked(ids) => acked.extend(ids),
        Progress::Finished(view) => *finished.entry(view.task_id).or_default() += 1,
    };
    // (acknowledged, seen finished) at each kill.
    let mut kill_points: Vec<(usize, usize)> = Vec::new();
    let step = 2 * total / (kills + 2);
    while acked.len() < total || kill_points.len() < kills {
        let Ok(progress) = progress_rx.recv_timeout(PATIENCE) else {
            let submitter = if submitter.is_finished() {
                format!("{:?}", submitter.join())
            } else {
                "still running".into()
            };
            panic!(
                "no progress within {PATIENCE:?}: {} acked, {} seen finished, {} kills; submitter {submitter}",
                acked.len(),
                finished_events.len(),
                kill_points.len()
            );
        };
        count(progress, &mut acked, &mut finished_events);
        let done = acked.len() + finished_events.len();
        if kill_points.len() < kills && done >= step * (kill_points.len() + 1) {
            master.kill9();
            kill_points.push((acked.len(), finished_events.len()));
            master = MasterProcess::start_with(&data, &addr.to_string(), &flags);
            assert_eq!(master.addr, addr, "the master listens on its port again");
            collectors.push(collect_finished(addr, progress_tx.clone()));
            generation.bump();
        }
    }
    let report = submitter.join().expect("the submitter finished");
    let submitted_in = started.elapsed();

    // Every acknowledged task must exist; wait until each is terminal. The
    // last master's collector subscribed before this status pass, so a task
    // that is not terminal here sends its task_finished there.
    let views = statuses(addr, &acked);
    let missing: Vec<&String> = acked.iter().filter(|id| !views.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged tasks are missing after {} kills: {:?}",
        missing.len(),
        kill_points.len(),
        &missing[..missing.len().min(20)]
    );
    let mut remaining: BTreeSet<String> = views
        .values()
        .filter(|view| !view.state.is_terminal())
        .map(|view| view.task_id.clone())
        .collect();
    while !remaining.is_empty() {
        let progress = progress_rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "{} tasks never finished, e.g. {:?}",
                remaining.len(),
                remaining.iter().take(10).collect::<Vec<_>>()
            )
        });
        if let Progress::Finished(view) = &progress {
            remaining.remove(&view.task_id);
        }
        count(progress, &mut acked, &mut finished_events);
    }
    let views = statuses(addr, &acked);
    let drained_in = started.elapsed();
    master.kill9();
    for collector in collectors {
        collector.join().expect("a collector");
    }
    drop(progress_tx);
    for progress in progress_rx.try_iter() {
        count(progress, &mut acked, &mut finished_events);
    }

    // Nothing lost, and exactly one terminal state each, with its own
    // output, reported once.
    assert_eq!(views.len(), total);
    assert_eq!(acked.len(), total);
    for (id, view) in &views {
        assert_eq!(view.state, TaskState::Completed, "{id}: {view:?}");
        assert_eq!(output_of(view), json!(format!("{id}\n")), "{id}: {view:?}");
        assert!(view.attempt >= 1, "{id}: {view:?}");
    }
    let twice: Vec<(&String, &usize)> = finished_events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks that finished more than once: {twice:?}"
    );
    // Executed at least once, and at most once per attempt.
    let executions = line_counts(&ledger);
    let strangers: Vec<&String> = executions
        .keys()
        .filter(|id| !acked.contains(*id))
        .collect();
    assert!(
        strangers.is_empty(),
        "ledger lines of no task: {strangers:?}"
    );
    for (id, view) in &views {
        let ran = executions.get(id).copied().unwrap_or(0);
        assert!(
            (1..=view.attempt as usize).contains(&ran),
            "{id} ran {ran} times in {} attempts",
            view.attempt
        );
    }

    let max_executions = executions.values().copied().max().unwrap_or(0);
    let ran_again = executions.values().filter(|n| **n > 1).count();
    let total_executions: usize = executions.values().sum();
    let max_attempt = views.values().map(|v| v.attempt).max().unwrap_or(0);
    let reattempted = views.values().filter(|v| v.attempt > 1).count();
    println!(
        "kill -9 figures: {} tasks acknowledged; {} kills of the master at (acked, seen finished) = {:?}; \
         0 acknowledged tasks missing; {} completed, each exactly once \
         ({} task_finished events seen, none twice); {} executions in all; \
         {} tasks ran more than once, at most {} times; {} tasks needed more than one attempt, \
         at most {}; {} batches resent after a kill ({} already stored); \
         all acknowledged and killed after {:.1} s, all completed after {:.1} s, total runtime {:.1} s",
        acked.len(),
        kill_points.len(),
        kill_points,
        views.len(),
        finished_events.len(),
        total_executions,
        ran_again,
        max_executions,
        reattempted,
        max_attempt,
        report.resent_batches,
        report.already_known,
        submitted_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(
        kill_points.len(),
        kills,
        "the master was killed {kills} times"
    );
}

// ----- workers that die or stop -----

#[test]
fn a_worker_killed_mid_task_hands_its_task_to_another() {
    let dir = setup();
    let shared = shared_dir(dir.path(), "shared");
    let runs = shared.join("runs");
    let config = unconfined_worker_config(dir.path());
    let master = MasterProcess::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--lease-grace", "1"],
    );
    let mut events = subscriber(master.addr);
    let mut doomed = start_worker(master.addr, "doomed", 1, &config);
    wait_joined(&mut events, "doomed");
    let mut client = Client::connect(master.addr);
    submit(
        &mut client,
        shell(
            "handed-over",
            &format!("echo $PPID >> '{}'; sleep 2; echo $PPID", runs.display()),
        ),
    );
    events.wait_event(|e| is_assigned(e, "handed-over", "doomed", 1));
    doomed.kill9();

    let heir = start_worker(master.addr, "heir", 1, &config);
    // The dead worker's lease (1 s) runs out; the task goes to the heir.
    events.wait_event(|e| is_assigned(e, "handed-over", "heir", 2));
    let task = finished_view(events.wait_event(|e| is_finished(e, "handed-over")));
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.device_id.as_deref(), Some("heir"));
    assert_eq!(task.attempt, 2);
    assert_eq!(output_of(&task), json!(format!("{}\n", heir.pid())));
    let ran = line_counts(&runs);
    assert_eq!(ran.get(&heir.pid().to_string()), Some(&1), "{ran:?}");
    let executions: usize = ran.values().sum();
    assert!((1..=2).contains(&executions), "{ran:?}");
    assert_eq!(task_status(&mut client, "handed-over"), task);
}

#[test]
fn a_stopped_worker_past_its_lease_has_its_late_result_fenced() {
    let dir = setup();
    let shared = shared_dir(dir.path(), "shared");
    let runs = shared.join("runs");
    let config = unconfined_worker_config(dir.path());
    let master = MasterProcess::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[
            "--heartbeat-interval",
            "0.2",
            "--heartbeat-timeout",
            "1",
            "--lease-grace",
            "1",
        ],
    );
    let mut events = subscriber(master.addr);
    let mut finishes: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = |event: &Event| {
        if let Event::TaskFinished { task } = event {
            *finishes.entry(task.task_id.clone()).or_default() += 1;
        }
    };
    let sleepy = start_worker(master.addr, "sleepy", 1, &config);
    wait_joined(&mut events, "sleepy");
    let mut client = Client::connect(master.addr);
    let runs_path = runs.display();
    submit(
        &mut client,
        shell(
            "fenced",
            &format!(
                "echo start $PPID >> '{runs_path}'; sleep 2; echo $PPID; echo end $PPID >> '{runs_path}'"
            ),
        ),
    );
    wait_event_seeing(&mut events, &mut count, |e| {
        is_assigned(e, "fenced", "sleepy", 1)
    });
    // Stopped, the worker sends no heartbeat: after 1 s the master drops
    // it, holds its task for the 1 s lease, then hands it on. The task's
    // own process is in its own group and goes on running.
    signal(sleepy.pid(), SIGSTOP);
    let steady = start_worker(master.addr, "steady", 1, &config);
    wait_event_seeing(&mut events, &mut count, |e| {
        is_assigned(e, "fenced", "steady", 2)
    });
    let done = finished_view(wait_event_seeing(&mut events, &mut count, |e| {
        is_finished(e, "fenced")
    }));
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert_eq!(done.device_id.as_deref(), Some("steady"));
    assert_eq!(done.attempt, 2);
    assert_eq!(output_of(&done), json!(format!("{}\n", steady.pid())));

    // The stopped worker wakes up with the result of attempt 1, comes back
    // and resends it. A task pinned to it afterwards is reported after that
    // result (the outbox goes first, and one slot runs one task at a time),
    // so once the pinned task has finished the late result has been dealt
    // with.
    signal(sleepy.pid(), SIGCONT);
    wait_event_seeing(
        &mut events,
        &mut count,
        |e| matches!(e, Event::DeviceJoined { device_id } if device_id == "sleepy"),
    );
    let mut pinned = shell("after-waking", "echo awake");
    pinned.requirements.device_id = Some("sleepy".into());
    submit(&mut client, pinned);
    let pinned = finished_view(wait_event_seeing(&mut events, &mut count, |e| {
        is_finished(e, "after-waking")
    }));
    assert_eq!(pinned.state, TaskState::Completed, "{pinned:?}");
    assert_eq!(pinned.device_id.as_deref(), Some("sleepy"));

    let ran = line_counts(&runs);
    assert!(
        ran.contains_key(&format!("end {}", sleepy.pid())),
        "the stopped worker finished attempt 1, so it had a late result: {ran:?}"
    );
    let after = task_status(&mut client, "fenced");
    assert_eq!(after, done, "the late result changed nothing");
    assert_eq!(finishes.get("fenced"), Some(&1), "{finishes:?}");
}

// ----- a full disk -----

/// The soft file-size limit of the master in the disk test: room for the
/// empty database and a few of the large tasks below.
const FILE_SIZE_LIMIT: u64 = 1 << 20;
/// The payload of each large task.
const BIG_PAYLOAD: usize = 200 * 1024;

enum Submitted {
    Sent(String),
    Acked(String),
}

fn big_task(id: &str) -> TaskSpec {
    let mut spec = TaskSpec::new("echo", json!({ "message": "x".repeat(BIG_PAYLOAD) }));
    spec.task_id = Some(id.to_string());
    spec
}

/// What `status` says about storage, asked on a fresh connection.
fn storage_state(addr: SocketAddr) -> String {
    let ack = Client::connect(addr)
        .request(Message::Status)
        .expect("status");
    let reply: protocol::StatusReply = ack.result.parse().expect("the cluster's status");
    reply.cluster_stats.storage
}

/// Waits for a storage event on `events`; on a timeout, says what `status`
/// shows meanwhile.
fn wait_storage_event(events: &mut Client, addr: SocketAddr, want: &Event) -> Event {
    loop {
        match events.try_next_message() {
            Ok(envelope) => {
                if let Message::Event(event) = envelope.message {
                    if &event == want {
                        return event;
                    }
                }
            }
            Err(err) => panic!(
                "no {want:?} event within {PATIENCE:?} ({err}); status says storage is {:?}",
                storage_state(addr)
            ),
        }
    }
}

/// Large submits under way until the store could not commit one.
struct Filled {
    /// The submits acknowledged before the failure.
    acked: BTreeSet<String>,
    /// The submit whose commit failed: sent, not acknowledged.
    pending: String,
    /// What the submitter does from now on: the ack of `pending` once the
    /// store commits it.
    log: mpsc::Receiver<Submitted>,
    submitter: thread::JoinHandle<()>,
}

/// A second connection submits large tasks one at a time until a commit
/// fails for want of room (`storage_failing` on `events`); none after
/// that. Checks that the submit whose commit failed has no ack.
fn submit_until_storage_fails(addr: SocketAddr, events: &mut Client) -> Filled {
    let stop = Arc::new(AtomicBool::new(false));
    let (log_tx, log_rx) = mpsc::channel::<Submitted>();
    let submitter = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut client = Client::connect(addr);
            for i in 0..100 {
                let id = format!("big-{i}");
                let _ = log_tx.send(Submitted::Sent(id.clone()));
                submit(&mut client, big_task(&id));
                let _ = log_tx.send(Submitted::Acked(id));
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            panic!("100 large submits never filled the file-size limit");
        })
    };
    wait_storage_event(events, addr, &Event::StorageFailing);
    stop.store(true, Ordering::SeqCst);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut last_sent = None;
    for entry in log_rx.try_iter() {
        match entry {
            Submitted::Sent(id) => last_sent = Some(id),
            Submitted::Acked(id) => {
                acked.insert(id);
            }
        }
    }
    let pending = last_sent.expect("something was submitted");
    assert!(
        !acked.contains(&pending),
        "the submit whose commit failed ({pending}) has no ack"
    );
    assert!(!acked.is_empty(), "some large submits fit before the limit");
    Filled {
        acked,
        pending,
        log: log_rx,
        submitter,
    }
}

impl Filled {
    /// Once there is room again: the store's retry commits the pending
    /// submit, which gets its ack (and nothing else was sent meanwhile).
    /// Returns every acknowledged id.
    fn recovered(self, events: &mut Client, addr: SocketAddr) -> BTreeSet<String> {
        let Filled {
            mut acked,
            pending,
            log,
            submitter,
        } = self;
        wait_storage_event(events, addr, &Event::StorageRecovered);
        let mut pending_acked = false;
        while !pending_acked {
            match log.recv_timeout(PATIENCE) {
                Ok(Submitted::Acked(id)) if id == pending => pending_acked = true,
                Ok(Submitted::Acked(id)) => panic!("an ack for {id}, not {pending}"),
                Ok(Submitted::Sent(id)) => panic!("{id} was sent before {pending} was acked"),
                Err(err) => panic!("{pending} was never acknowledged: {err}"),
            }
        }
        submitter.join().expect("the submitter finished");
        acked.insert(pending);
        acked
    }
}

/// While the store fails: a submit is refused with the retryable
/// `storage_unavailable`, `status` says so, and an acknowledged task can
/// still be read.
fn check_refusing(addr: SocketAddr, acked: &BTreeSet<String>) {
    let mut fresh = Client::connect(addr);
    let refused = fresh
        .try_request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![shell("refused", "echo no")],
            batch: false,
        }))
        .unwrap_or_else(|err| {
            panic!("no reply to a submit while storage fails within {PATIENCE:?}: {err}")
        });
    let refusal = refused.expect_err("a submit is refused while storage fails");
    assert_eq!(refusal.code, ErrorCode::StorageUnavailable, "{refusal:?}");
    assert!(refusal.code.is_retryable());
    assert_eq!(storage_state(addr), "failing");
    let first = acked.iter().next().expect("an acked task").clone();
    assert_eq!(task_status(&mut fresh, &first).state, TaskState::Queued);
}

/// After a restart on `data`, every task of `acked` is there, queued, and
/// the refused one is not.
fn check_all_there(data: &Path, acked: &BTreeSet<String>, round: &str) -> MasterProcess {
    let master = MasterProcess::start(data);
    let views = statuses(master.addr, acked);
    for id in acked {
        let view = views
            .get(id)
            .unwrap_or_else(|| panic!("{id} is missing {round}"));
        assert_eq!(view.state, TaskState::Queued, "{id} {round}");
    }
    assert!(
        !statuses(master.addr, &BTreeSet::from(["refused".to_string()])).contains_key("refused")
    );
    master
}

#[test]
fn a_disk_that_fills_up_refuses_changes_and_recovers() {
    let dir = setup();
    let data = dir.path().join("data");
    let mut master =
        MasterProcess::start_with_file_size_limit(&data, "127.0.0.1:0", &[], FILE_SIZE_LIMIT);
    let addr = master.addr;
    let mut events = subscriber(addr);
    let filled = submit_until_storage_fails(addr, &mut events);

    // Changes are refused with the retryable code; reads go on.
    check_refusing(addr, &filled.acked);

    // Room again: the store's retry commits, and the pending submit gets
    // its ack.
    lift_file_size_limit(master.pid());
    let mut acked = filled.recovered(&mut events, addr);
    assert_eq!(storage_state(addr), "ok");
    let ack = submit(
        &mut Client::connect(addr),
        shell("after-recovery", "echo yes"),
    );
    let submitted: protocol::Submitted = ack.result.parse().expect("a submit's document");
    assert!(submitted.created);
    acked.insert("after-recovery".into());
    let refused_status = Client::connect(addr)
        .request(Message::TaskStatus(TaskRef {
            task_id: "refused".into(),
        }))
        .expect_err("a refused submit created nothing");
    assert_eq!(refused_status.code, ErrorCode::NotFound);

    let status = master.terminate();
    assert!(status.success(), "SIGTERM: {status:?}");
    let check = check_database(&data);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && said.starts_with("ok:"),
        "--check: {check:?}"
    );

    // Everything acknowledged is there after a restart, and after a kill -9
    // and another restart.
    for round in ["after SIGTERM", "after kill -9"] {
        let mut master = check_all_there(&data, &acked, round);
        if round == "after SIGTERM" {
            master.kill9();
        } else {
            assert!(master.terminate().success());
        }
    }
    let check = check_database(&data);
    assert!(check.status.success(), "--check after kill -9: {check:?}");
}

// ----- a real file system that fills up, or is read-only -----

/// A tmpfs the test mounts (CI runs the tests as root) and unmounts when
/// dropped: a real file system whose size the test sets, to fill up, to
/// grow again and to make read-only, under a master.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `path`.
    /// Fails the test, loudly, if it cannot: the test needs root.
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("the mount point");
        let tmpfs = Tmpfs {
            path: path.to_path_buf(),
        };
        tmpfs.run(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ]);
        tmpfs
    }

    /// Remounts it with `options` (`size=64m`, `ro`, `rw`).
    fn remount(&self, options: &str) {
        self.run(&["-o", &format!("remount,{options}")]);
    }

    fn run(&self, args: &[&str]) {
        let output = std::process::Command::new("mount")
            .args(args)
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount {args:?} {} failed (this test mounts a tmpfs, so it runs as root, as CI does): {}",
            self.path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output();
    }
}

/// The master's data dir is on a real file system that fills up while
/// tasks are submitted (a tmpfs of 4 MiB): the failing commit is not
/// acknowledged, changes are refused while reads go on, the log names the
/// database in the data dir and the error, and once the file system is
/// grown the master commits and acknowledges the pending submit by itself.
/// Then the same file system is read-only: a start is refused with a
/// message naming it and exit status 73. Made writable again, a master
/// finds every acknowledged task.
#[test]
fn a_data_dir_on_a_file_system_that_fills_up_or_is_read_only_loses_nothing_acknowledged() {
    let dir = setup();
    let tmpfs = Tmpfs::mount(&dir.path().join("small"), "4m");
    let data = tmpfs.path.join("data");
    let log = dir.path().join("master.log");
    let mut master = MasterProcess::start_logged(&data, &[], &log);
    let addr = master.addr;
    let mut events = subscriber(addr);
    let filled = submit_until_storage_fails(addr, &mut events);
    check_refusing(addr, &filled.acked);
    let db = data.join("retire.db").display().to_string();
    let said = std::fs::read_to_string(&log).expect("the master's log");
    assert!(
        said.lines().any(|line| line.contains("commit failed")
            && line.contains(&db)
            && line.contains("full")),
        "no log line names {db} and the full disk:\n{said}"
    );

    // The disk is fixed: the file system grows.
    tmpfs.remount("size=64m");
    let acked = filled.recovered(&mut events, addr);
    assert_eq!(storage_state(addr), "ok");
    assert!(master.terminate().success());

    // Read-only: no start, a clear message and its own exit status.
    tmpfs.remount("ro");
    let refused = std::process::Command::new(tests::bin("retire-master"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run retire-master");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(73), "{stderr}");
    assert!(
        stderr.contains(&data.display().to_string()) && stderr.contains("read-only"),
        "{stderr}"
    );
    tmpfs.remount("rw");
    let mut master = check_all_there(&data, &acked, "after the disk was fixed");
    assert!(master.terminate().success());
    let check = check_database(&data);
    assert!(check.status.success(), "--check: {check:?}");
}

// ----- results in a worker's outbox across a restart of the master -----

/// Polls for `path` to exist. The only polling in these tests: a task's
/// process finishing while the master is down shows up nowhere but in the
/// files it writes.
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls (as [`wait_for_file`] does) until a file in `dir` holds `text`.
fn wait_until_a_file_holds(dir: &Path, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    let holds = || {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                std::fs::read_to_string(entry.path()).is_ok_and(|body| body.contains(text))
            })
        })
    };
    while !holds() {
        assert!(
            Instant::now() < deadline,
            "no file in {} holds {text}",
            dir.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn worker_outbox_results_are_recorded_once_across_a_master_restart() {
    let dir = setup();
    let shared = shared_dir(dir.path(), "shared");
    let starts = shared.join("starts");
    let ends = shared.join("ends");
    let config = unconfined_worker_config(dir.path());
    let data = dir.path().join("data");
    let mut master = MasterProcess::start(&data);
    let addr = master.addr;
    let mut events = subscriber(addr);
    let keeper = start_worker(addr, "keeper", 1, &config);
    wait_joined(&mut events, "keeper");
    submit(
        &mut Client::connect(addr),
        shell(
            "outboxed",
            &format!(
                "echo $PPID >> '{}'; sleep 1; echo done >> '{}'; echo done",
                starts.display(),
                ends.display()
            ),
        ),
    );
    events.wait_event(|e| is_assigned(e, "outboxed", "keeper", 1));
    // The task's process has started: kill the master under it.
    wait_for_file(&starts);
    master.kill9();
    drop(events);
    // The task ends while the master is down; its result goes to the
    // worker's outbox, which the worker's state dir shows.
    wait_for_file(&ends);
    let outbox = keeper
        .state_dir()
        .expect("the worker's own state dir")
        .join("keeper")
        .join("outbox");
    wait_until_a_file_holds(&outbox, "\"task_id\":\"outboxed\"");
    // Hold the worker while the master restarts, so the subscriber below is
    // in place before the worker can come back with its result.
    signal(keeper.pid(), SIGSTOP);
    let master = MasterProcess::start_with(&data, &addr.to_string(), &[]);
    let mut events = subscriber(master.addr);
    signal(keeper.pid(), SIGCONT);

    let mut finishes: BTreeMap<String, usize> = BTreeMap::new();
    let mut assigned_again = Vec::new();
    let mut seen = |event: &Event| match event {
        Event::TaskFinished { task } => {
            *finishes.entry(task.task_id.clone()).or_default() += 1;
        }
        Event::TaskAssigned {
            task_id, attempt, ..
        } if task_id == "outboxed" => assigned_again.push(*attempt),
        _ => {}
    };
    let done = finished_view(wait_event_seeing(&mut events, &mut seen, |e| {
        is_finished(e, "outboxed")
    }));
    assert_eq!(done.state, TaskState::Completed, "{done:?}");
    assert_eq!(output_of(&done), json!("done\n"));
    assert_eq!(done.device_id.as_deref(), Some("keeper"));
    // Anything still on its way about the task (the resent result of a
    // reassigned attempt) is handled before the result of a task pinned to
    // the same one-slot worker afterwards.
    let mut marker = shell("marker", "echo marker");
    marker.requirements.device_id = Some("keeper".into());
    submit(&mut Client::connect(addr), marker);
    wait_event_seeing(&mut events, &mut seen, |e| is_finished(e, "marker"));
    assert_eq!(
        finishes.get("outboxed"),
        Some(&1),
        "task_finished once: {finishes:?}"
    );
    let after = task_status(&mut Client::connect(addr), "outboxed");
    assert_eq!(after, done, "recorded once, never changed");
    let executions: usize = line_counts(&starts).values().sum();
    assert!(
        (1..=done.attempt as usize).contains(&executions),
        "{executions} executions in {} attempts",
        done.attempt
    );
    println!(
        "outbox across a master restart: completed at attempt {}, executed {executions} time(s), \
         assigned again after the restart: {:?}",
        done.attempt, assigned_again
    );
}
