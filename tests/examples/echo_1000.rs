//! Times 1,000 `echo` tasks end to end on a real master with two real
//! workers on loopback: submitted one request at a time (each ack waits for
//! its commit) and as one batch, until every result is recorded.
//!
//! Build the binaries first, then run it with the same profile:
//! `cargo build --release --workspace --bins && cargo run --release -p tests --example echo_1000`

use protocol::{Event, Message, Subscribe, TaskSpec, TaskSubmit};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Instant;
use tests::{Client, MasterProcess, WorkerProcess};

const N_TASKS: usize = 1000;

fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let master = MasterProcess::start(dir.path());
    let mut events = Client::connect(master.addr);
    events
        .request(Message::Subscribe(Subscribe::default()))
        .expect("subscribe");
    let _workers: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|id| WorkerProcess::start(master.addr, id, 4, &[]))
        .collect();
    let mut joined = 0;
    while joined < 2 {
        events.wait_event(|e| matches!(e, Event::DeviceJoined { .. }));
        joined += 1;
    }
    let mut client = Client::connect(master.addr);
    for batch in [false, true] {
        let started = Instant::now();
        let specs: Vec<TaskSpec> = (0..N_TASKS)
            .map(|i| TaskSpec::new("echo", json!({ "message": i })))
            .collect();
        let mut ids = BTreeSet::new();
        if batch {
            let ack = client
                .request(Message::TaskSubmit(TaskSubmit {
                    tasks: specs,
                    batch: true,
                }))
                .expect("batch submit");
            let batch: protocol::BatchSubmitted = ack.result.parse().expect("a batch's ids");
            ids.extend(batch.task_ids);
        } else {
            for spec in specs {
                let ack = client
                    .request(Message::TaskSubmit(TaskSubmit {
                        tasks: vec![spec],
                        batch: false,
                    }))
                    .expect("submit");
                let submitted: protocol::Submitted = ack.result.parse().expect("a task id");
                ids.insert(submitted.task_id);
            }
        }
        let submitted = started.elapsed();
        while !ids.is_empty() {
            if let Event::TaskFinished { task } =
                events.wait_event(|e| matches!(e, Event::TaskFinished { .. }))
            {
                ids.remove(&task.task_id);
            }
        }
        let total = started.elapsed();
        println!(
            "{N_TASKS} echo tasks, {}: all acked in {:.3} s, all results recorded in {:.3} s ({:.0} tasks/s)",
            if batch { "one batch submit" } else { "one submit per request" },
            submitted.as_secs_f64(),
            total.as_secs_f64(),
            N_TASKS as f64 / total.as_secs_f64()
        );
    }
}
