//! Enrolling again (issue 14): a worker that pinned a master's key meets a
//! master set up anew at the same address (a fresh data dir, so a new key
//! and no record of the device). Given that master's join token, it enrolls
//! again once the master has proven the token and runs its tasks; without a
//! token it keeps refusing and stops after three refusals, as before;
//! `--forget-master` drops the pinned key on purpose.

use super::{setup, subscriber, wait_finished};
use protocol::{Event, Message, TaskSpec, TaskState, TaskSubmit};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tests::{Client, MasterProcess, TokenVia, WorkerOptions, WorkerProcess};

/// The worker's id in these tests.
const DEVICE: &str = "mover";

fn master_pub(state: &Path) -> String {
    std::fs::read_to_string(state.join(DEVICE).join("master.pub")).unwrap_or_default()
}

/// Starts the worker on `state` joining `master`, with `extra` flags.
fn start_worker(
    master: SocketAddr,
    state: &Path,
    token_via: TokenVia,
    extra: &[&str],
    log: PathBuf,
) -> WorkerProcess {
    let state_arg = state.to_string_lossy().into_owned();
    let mut args = vec!["--state-dir", state_arg.as_str()];
    args.extend_from_slice(extra);
    WorkerProcess::start_with(
        master,
        DEVICE,
        1,
        &args,
        WorkerOptions {
            token_via,
            log: Some(log),
            ..WorkerOptions::default()
        },
    )
}

/// Runs an echo task on the worker and checks that it completed there.
fn echo_runs_on_the_worker(master: SocketAddr, events: &mut Client, task_id: &str) {
    let mut spec = TaskSpec::new("echo", json!({ "message": task_id }));
    spec.task_id = Some(task_id.to_string());
    spec.requirements.device_id = Some(DEVICE.to_string());
    Client::connect(master)
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit");
    let task = wait_finished(events, &BTreeSet::from([task_id.to_string()]))
        .remove(task_id)
        .expect("finished");
    assert_eq!(task.state, TaskState::Completed, "{task:?}");
    assert_eq!(task.device_id.as_deref(), Some(DEVICE));
}

/// Enrolls the worker with a first master, then replaces that master with a
/// fresh one on the same address; returns the new master and the pinned key
/// the worker kept from the first.
fn enrolled_then_master_set_up_again(dir: &Path, state: &Path) -> (MasterProcess, String) {
    let mut first = MasterProcess::start(&dir.join("first"));
    let mut events = subscriber(first.addr);
    let mut worker = start_worker(
        first.addr,
        state,
        TokenVia::Environment,
        &[],
        dir.join("enroll.log"),
    );
    events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == DEVICE));
    worker.kill9();
    let pinned = master_pub(state);
    assert!(!pinned.is_empty(), "the first master's key is pinned");
    let addr = first.addr.to_string();
    first.terminate();
    // The same address, a new data dir: a new key, and no record of the device.
    let second = MasterProcess::start_with(&dir.join("second"), &addr, &[]);
    (second, pinned)
}

/// Without a token the worker refuses the new master three times and stops,
/// pinning nothing; given the new master's token it enrolls again, pins the
/// new key (warning with both keys) and runs tasks.
#[test]
fn a_worker_given_the_token_enrolls_again_with_a_master_set_up_anew() {
    let dir = setup();
    let state = dir.path().join("state");
    let (master, pinned) = enrolled_then_master_set_up_again(dir.path(), &state);

    let no_token_log = dir.path().join("no-token.log");
    let mut refusing = start_worker(
        master.addr,
        &state,
        TokenVia::Nothing,
        &[],
        no_token_log.clone(),
    );
    let status = refusing
        .wait_exit()
        .expect("without a token the worker stops after three refusals");
    assert!(!status.success(), "{status:?}");
    assert_eq!(master_pub(&state), pinned, "nothing new is pinned");
    let logged = std::fs::read_to_string(&no_token_log).expect("the worker's log");
    assert!(
        logged.contains("refusal 1 of 3") && logged.contains("--forget-master"),
        "the worker says what to do: {logged}"
    );

    // With the new master's join token (the default of `WorkerOptions`).
    let mut events = subscriber(master.addr);
    let log = dir.path().join("token.log");
    let _worker = start_worker(master.addr, &state, TokenVia::Environment, &[], log.clone());
    let enrolled = events.wait_event(|e| matches!(e, Event::DeviceEnrolled { .. }));
    assert!(
        matches!(&enrolled, Event::DeviceEnrolled { device_id, .. } if device_id == DEVICE),
        "{enrolled:?}"
    );
    events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == DEVICE));
    let now_pinned = master_pub(&state);
    assert!(
        !now_pinned.is_empty() && now_pinned != pinned,
        "the new master's key replaced {pinned}"
    );
    let logged = std::fs::read_to_string(&log).expect("the worker's log");
    assert!(
        logged.contains("enrolled again") && logged.contains(pinned.trim()),
        "the worker names the key it replaced: {logged}"
    );
    echo_runs_on_the_worker(master.addr, &mut events, "after-reenroll");
}

/// `--forget-master` drops the pinned key at start; with the token the
/// worker enrolls with the new master at once, keeping its device key.
#[test]
fn forget_master_drops_the_pinned_key_and_enrolls_with_the_token() {
    let dir = setup();
    let state = dir.path().join("state");
    let (master, pinned) = enrolled_then_master_set_up_again(dir.path(), &state);
    let device_key = std::fs::read(state.join(DEVICE).join("identity.key")).expect("device key");

    let mut events = subscriber(master.addr);
    let log = dir.path().join("forget.log");
    let _worker = start_worker(
        master.addr,
        &state,
        TokenVia::Environment,
        &["--forget-master"],
        log.clone(),
    );
    events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == DEVICE));
    let now_pinned = master_pub(&state);
    assert!(
        !now_pinned.is_empty() && now_pinned != pinned,
        "the new master's key is pinned"
    );
    assert_eq!(
        std::fs::read(state.join(DEVICE).join("identity.key")).expect("device key"),
        device_key,
        "the device keeps its own key"
    );
    let logged = std::fs::read_to_string(&log).expect("the worker's log");
    assert!(
        logged.contains("--forget-master: dropped the pinned master key"),
        "{logged}"
    );
    // It enrolled at once: no refusal of its old key first.
    assert!(
        !logged.contains("does not accept this device's key"),
        "{logged}"
    );
    echo_runs_on_the_worker(master.addr, &mut events, "after-forget");
}
