//! `retire-master backup FILE`: a copy of the live database taken while a
//! master runs and takes work, restored into a new data dir; and the
//! targets it refuses, each with its exit status.

use super::{setup, start_workers, subscriber, task_status, wait_finished};
use protocol::{Message, TaskSpec, TaskState, TaskSubmit};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tests::{bin, Client, MasterProcess, PATIENCE};

/// `retire-master backup FILE --data-dir DIR`, with no settings from the
/// test's environment.
fn backup(data_dir: &Path, file: &Path) -> Output {
    let mut command = Command::new(bin("retire-master"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RETIRE_") {
            command.env_remove(name);
        }
    }
    command
        .arg("backup")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run retire-master backup")
}

/// Copies a file or a directory tree (the secrets folder) from `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("an entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).expect("copy");
    }
}

#[test]
fn a_backup_taken_under_load_restores_every_acknowledged_task() {
    let dir = setup();
    let data = dir.path().join("data");
    let master = MasterProcess::start(&data);
    let addr = master.addr;
    let _workers = start_workers(addr, &[("b1", 2)]);
    let mut events = subscriber(addr);

    // Work that finishes before the backup: its results must be in it.
    let mut client = Client::connect(addr);
    let ack = client
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: (0..20)
                .map(|i| TaskSpec::new("echo", json!({ "message": format!("done-{i}") })))
                .collect(),
            batch: true,
        }))
        .expect("batch submit");
    let batch: protocol::BatchSubmitted = ack.result.parse().expect("a batch's ids");
    let finished: BTreeSet<String> = batch.task_ids.into_iter().collect();
    wait_finished(&mut events, &finished);

    // Work that goes on during the backup: a thread submits one task at a
    // time (workers run them) and records each id once it is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, acked_rx) = std::sync::mpsc::channel::<String>();
    let submitter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(addr);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let ack = client
                    .request(Message::TaskSubmit(TaskSubmit {
                        tasks: vec![TaskSpec::new("echo", json!({ "message": i }))],
                        batch: false,
                    }))
                    .expect("submit during the backup");
                let submitted: protocol::Submitted = ack.result.parse().expect("a task id");
                if acked_tx.send(submitted.task_id).is_err() {
                    return;
                }
                i += 1;
            }
        })
    };
    let mut acked: Vec<String> = (0..50)
        .map(|_| acked_rx.recv_timeout(PATIENCE).expect("submits are acked"))
        .collect();
    acked.extend(acked_rx.try_iter());
    let acked_before = acked.len();

    let file = dir.path().join("copy.db");
    let output = backup(&data, &file);
    assert!(
        output.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("backed up"),
        "{output:?}"
    );
    // Work did not stop: submissions keep being acknowledged after it.
    for _ in 0..20 {
        acked.push(acked_rx.recv_timeout(PATIENCE).expect("work goes on"));
    }
    stop.store(true, Ordering::SeqCst);
    drop(acked_rx);
    submitter.join().expect("the submitter");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("the copy").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the copy is private");
    for companion in ["copy.db-journal", "copy.db-wal", "copy.db-shm"] {
        assert!(
            !dir.path().join(companion).exists(),
            "{companion} left behind"
        );
    }

    // The same target again is refused, and the copy is left as it was.
    let size = std::fs::metadata(&file).expect("the copy").len();
    let again = backup(&data, &file);
    assert_eq!(again.status.code(), Some(73), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    assert_eq!(std::fs::metadata(&file).expect("the copy").len(), size);

    // Restore: the copy as the database of a new data dir (with the
    // secrets folder, as the README says), and a master started on it.
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).expect("mkdir");
    copy_tree(&file, &restored.join("retire.db"));
    copy_tree(&data.join("secrets"), &restored.join("secrets"));
    drop(master);
    let master = MasterProcess::start(&restored);
    let mut client = Client::connect(master.addr);
    for id in &finished {
        let task = task_status(&mut client, id);
        assert_eq!(task.state, TaskState::Completed, "{id} kept its result");
        assert!(task.result.is_some(), "{id}");
    }
    let mut queued = BTreeSet::new();
    for id in &acked[..acked_before] {
        // Acknowledged before the backup began: in the copy, live or done.
        let task = task_status(&mut client, id);
        match task.state {
            // Running on the first master's worker when the copy was
            // taken: held on a lease for it, as after any restart.
            TaskState::Completed | TaskState::Assigned | TaskState::Running => {}
            TaskState::Queued => {
                queued.insert(id.clone());
            }
            other => panic!("{id} is {other:?}"),
        }
    }
    // The restored master runs the work that was still queued in the copy.
    let mut events = subscriber(master.addr);
    let _workers = start_workers(master.addr, &[("b2", 2)]);
    let done = wait_finished(&mut events, &queued);
    assert!(done.values().all(|task| task.state == TaskState::Completed));
}

/// Runs `backup` on `data_dir` to `target` and checks its exit status and
/// that its error names the problem.
fn check_refused(data_dir: &Path, target: &Path, code: i32, says: &str) {
    let output = backup(data_dir, target);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{target:?}: {stderr}");
    assert!(stderr.contains(says), "{target:?}: {stderr}");
    assert!(!output.status.success());
}

#[test]
fn a_backup_refuses_a_missing_database_and_targets_it_cannot_create() {
    let dir = setup();
    let data = dir.path().join("data");
    // No database yet.
    check_refused(&data, &dir.path().join("a.db"), 66, "no database at");
    assert!(!dir.path().join("a.db").exists(), "nothing is left behind");

    let master = MasterProcess::start(&data);
    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, "keep me").expect("write");
    check_refused(&data, &existing, 73, "already exists");
    assert_eq!(std::fs::read_to_string(&existing).expect("read"), "keep me");
    check_refused(
        &data,
        &dir.path().join("missing-dir").join("a.db"),
        73,
        "cannot create the backup target",
    );
    check_refused(&data, dir.path(), 73, "already exists");
    drop(master);
}
