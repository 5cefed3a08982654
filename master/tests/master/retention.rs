//! Retention on a running master: finished tasks past their age are
//! deleted by the store thread on its own, `status` stops counting them,
//! their views are gone, and live and young tasks stay.

use super::setup;
use super::{connect, reply};
use master::core::records::{Batch, EncodedTask, StoreOp, TaskRecord};
use master::store::retention::Retention;
use master::store::{Store, Synchronous};
use protocol::{TaskSpec, TaskState};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Tasks `(id, state, finished at)` written straight into the database.
fn write(dir: &std::path::Path, tasks: &[(&str, TaskState, i64)]) {
    let mut store = Store::open(dir, Synchronous::Normal).expect("open");
    let ops = tasks
        .iter()
        .enumerate()
        .map(|(i, (id, state, at))| {
            let mut record = TaskRecord::queued(
                id.to_string(),
                i as u64 + 1,
                TaskSpec::new("echo", json!({})),
                1,
            );
            record.state = *state;
            record.finished_unix_ms = state.is_terminal().then_some(*at);
            StoreOp::PutTask(EncodedTask::new(&record, &mut Vec::new()))
        })
        .collect();
    store.commit(&[Batch { id: 1, ops }]).expect("commit");
}

fn ask(addr: std::net::SocketAddr, line: Value) -> Value {
    let (mut reader, mut writer) = connect(addr);
    writeln!(writer, "{line}").expect("send");
    reply(&mut reader)
}

#[test]
fn a_running_master_prunes_old_finished_tasks_and_status_follows() {
    let data = tempfile::tempdir().expect("temp dir");
    let (old, young) = (now_ms() - 3_600_000, now_ms() + 3_600_000);
    write(
        data.path(),
        &[
            ("old-done", TaskState::Completed, old),
            ("old-failed", TaskState::Failed, old),
            ("old-dead", TaskState::DeadLetter, old),
            ("young-done", TaskState::Completed, young),
            ("old-queued", TaskState::Queued, old),
        ],
    );
    let dir = data.path().to_path_buf();
    let master = setup(move |config| {
        config.data_dir = dir;
        config.retention = Retention {
            retention: Duration::from_millis(300),
            retention_failed: Duration::from_millis(300),
        };
    });
    let status = || ask(master.addr, json!({"message_type": "status"}));
    let counts = |status: &Value| {
        let tasks = &status["data"]["result"]["cluster_stats"]["tasks"];
        (
            tasks["completed"].clone(),
            tasks["failed"].clone(),
            tasks["dead_letter"].clone(),
            tasks["queued"].clone(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = counts(&status());
        if now == (json!(1), json!(0), json!(0), json!(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "never pruned: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let view = |id: &str| {
        ask(
            master.addr,
            json!({"message_type": "task_status", "data": {"task_id": id}}),
        )
    };
    assert_eq!(view("old-done")["data"]["code"], "not_found");
    assert_eq!(view("old-dead")["data"]["code"], "not_found");
    assert_eq!(
        view("young-done")["data"]["result"]["task"]["state"],
        "completed"
    );
    assert_eq!(
        view("old-queued")["data"]["result"]["task"]["state"],
        "queued"
    );
}
