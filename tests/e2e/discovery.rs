//! `.local` names and `--join auto` (issue 14) with real mDNS between the real
//! binaries, each test in a network namespace (and UTS namespace, for its own host
//! name) that it creates: multicast stays on that namespace's loopback, so the tests
//! never touch the real LAN and never hear each other. They need root (CI is root)
//! and `unshare`; without them they fail, never skip.

use super::{setup, subscriber};
use protocol::{Event, SERVICE_TYPE};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tests::{bin, read_tokens, retire, MasterProcess, PATIENCE};

/// Set in the child that runs a test's body inside its namespaces.
const IN_NETNS: &str = "RETIRE_TEST_IN_NETNS";

/// The host name each test gives its UTS namespace: the master announces
/// `HOST_NAME.local`, a name no resolver outside the namespace knows.
const HOST_NAME: &str = "retire-mdns-test";

/// Runs the test `name` of this module in new network and UTS namespaces: returns
/// `true` inside them (the caller runs the body), and `false` in the parent, after
/// the child passed. Fails loudly when the namespaces cannot be made.
fn in_namespaces(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        set_up_namespace();
        return true;
    }
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let output = Command::new("unshare")
        .args(["--net", "--uts", "--"])
        .arg(test_binary)
        .args([
            "--exact",
            &format!("discovery::{name}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run `unshare` (util-linux) to make a network namespace: {error}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the test in its own network namespace failed ({}); it needs root and `unshare --net`:\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the test did not run inside the namespace:\n{stdout}"
    );
    false
}

/// Inside the new namespaces: loopback up with multicast on and a route for it, and
/// the test's own host name.
fn set_up_namespace() {
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
    ] {
        let status = Command::new("ip")
            .args(args)
            .status()
            .unwrap_or_else(|error| panic!("cannot run `ip` (iproute2): {error}"));
        assert!(status.success(), "ip {args:?} failed: {status}");
    }
    std::fs::write("/proc/sys/kernel/hostname", HOST_NAME)
        .expect("set the UTS namespace's host name");
}

/// A master that listens on every address of the namespace (so it announces itself;
/// only loopback exists here), with debug logs in `log`.
fn announced_master(data_dir: &Path) -> MasterProcess {
    MasterProcess::start_with(data_dir, "0.0.0.0:0", &[])
}

/// Starts `retire-worker --join JOIN` as `id` with the join token of the master in
/// `data_dir`, its state in `state`, its debug log in `log`.
fn worker(join: &str, id: &str, token_from: &Path, state: &Path, log: &Path) -> Child {
    let tokens = read_tokens(token_from).expect("the master's tokens");
    Command::new(bin("retire-worker"))
        .args(["--join", join, "--id", id, "--slots", "1", "--state-dir"])
        .arg(state)
        .env("RETIRE_JOIN_TOKEN", tokens.join)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("the worker's log"))
        .spawn()
        .expect("start retire-worker")
}

/// Waits for `id` to join the master `events` is subscribed to; on failure shows the
/// worker's log.
fn wait_joined(events: &mut tests::Client, id: &str, log: &Path) {
    let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        events.wait_event(|e| matches!(e, Event::DeviceJoined { device_id } if device_id == id));
    }));
    if let Err(panic) = joined {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        eprintln!("--- the worker's log\n{text}");
        std::panic::resume_unwind(panic);
    }
}

/// The devices a master knows, from `retire devices --json`.
fn device_ids(master: SocketAddr) -> Vec<String> {
    let output = retire(master, &["devices", "--json"]);
    assert!(output.status.success(), "retire devices: {output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    reply["devices"]
        .as_array()
        .expect("a device list")
        .iter()
        .filter_map(|device| device["device_id"].as_str())
        .map(str::to_string)
        .collect()
}

/// A worker given `--join retire-mdns-test.local:PORT` finds the master through
/// mDNS: the system's resolver does not know the name, the master's announcement
/// answers it.
#[test]
fn a_worker_joins_a_local_name_through_mdns() {
    if !in_namespaces("a_worker_joins_a_local_name_through_mdns") {
        return;
    }
    let name = format!("{HOST_NAME}.local");
    assert!(
        (name.as_str(), 80).to_socket_addrs().is_err(),
        "the system's resolver must not know {name}, or the test proves nothing"
    );
    let dir = setup();
    let data = dir.path().join("data");
    let master = announced_master(&data);
    let mut events = subscriber(master.addr);
    let log = dir.path().join("worker.log");
    let join = format!("{name}:{}", master.addr.port());
    let mut child = worker(&join, "pi", &data, &dir.path().join("state"), &log);
    wait_joined(&mut events, "pi", &log);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("the worker's log");
    assert!(
        text.lines().any(
            |line| line.contains(&format!("{name}. is [127.0.0.1")) && line.ends_with("(mDNS)")
        ),
        "the worker did not resolve {name} through mDNS:\n{text}"
    );
}

/// An impostor announcing `_retire._tcp`, plain or a real master with another join
/// token, never gets the worker: `--join auto` skips them and enrolls with the master
/// that proves the token. The plain one, which sends no challenge, never sees a proof.
#[test]
fn join_auto_skips_impostors_and_enrolls_with_the_master_that_proves_the_token() {
    if !in_namespaces("join_auto_skips_impostors_and_enrolls_with_the_master_that_proves_the_token")
    {
        return;
    }
    let dir = setup();
    let real_data = dir.path().join("real");
    let real = announced_master(&real_data);
    let other = announced_master(&dir.path().join("other"));
    assert_ne!(
        read_tokens(&real_data).map(|tokens| tokens.join),
        read_tokens(&dir.path().join("other")).map(|tokens| tokens.join),
        "the two masters have different join tokens"
    );

    // A plain TCP listener, announced under a name that sorts before the masters',
    // so the worker's first attempt goes to it: it reads what the worker says and
    // closes.
    let plain = TcpListener::bind("127.0.0.1:0").expect("bind the plain impostor");
    let plain_port = plain.local_addr().expect("its address").port();
    let (heard_sender, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in plain.incoming() {
            let Ok(mut stream) = stream else { break };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut bytes = Vec::new();
            let _ = stream.by_ref().take(64 * 1024).read_to_end(&mut bytes);
            if heard_sender
                .send(String::from_utf8_lossy(&bytes).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let announcer = mdns_sd::ServiceDaemon::new().expect("the impostor's mDNS daemon");
    let service = mdns_sd::ServiceInfo::new(
        SERVICE_TYPE,
        "0 impostor",
        "impostor.local.",
        "127.0.0.1",
        plain_port,
        None,
    )
    .expect("the impostor's service");
    announcer.register(service).expect("announce the impostor");

    // Wait (on mDNS itself) until all three are announced, so the worker's first
    // search finds every one of them.
    let browser = mdns_sd::ServiceDaemon::new().expect("the test's mDNS daemon");
    let found = browser.browse(SERVICE_TYPE).expect("browse");
    let mut names = std::collections::BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    while names.len() < 3 {
        match found.recv_deadline(deadline) {
            Ok(mdns_sd::ServiceEvent::ServiceResolved(service)) => {
                names.insert(service.get_fullname().to_string());
            }
            Ok(_) => {}
            Err(error) => panic!("only {names:?} were announced: {error}"),
        }
    }

    let mut events = subscriber(real.addr);
    let log = dir.path().join("worker.log");
    let state = dir.path().join("state");
    let mut child = worker("auto", "pi", &real_data, &state, &log);
    wait_joined(&mut events, "pi", &log);

    let said = heard
        .recv_timeout(PATIENCE)
        .expect("the worker tried the plain impostor first");
    assert!(said.contains("auth_hello"), "{said}");
    assert!(
        !said.contains("auth_proof"),
        "a proof went to the impostor: {said}"
    );
    assert_eq!(device_ids(real.addr), vec!["pi".to_string()]);
    assert!(
        device_ids(other.addr).is_empty(),
        "the master with another join token enrolled the worker"
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("the worker's log");
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("connected to auto at"))
        .collect();
    assert!(
        lines
            .first()
            .is_some_and(|line| line.contains(&format!(":{plain_port}"))),
        "the first connection was not to the plain impostor:\n{text}"
    );
    let _ = announcer.shutdown();
    let _ = browser.shutdown();
}

/// With only an impostor announced (a real master with another join token), `--join
/// auto` enrolls nowhere and stops, saying why; the master that holds the worker's
/// token runs with `--no-announce`, so the worker never hears of it.
#[test]
fn join_auto_refuses_a_master_that_cannot_prove_the_token_and_no_announce_hides_one() {
    if !in_namespaces(
        "join_auto_refuses_a_master_that_cannot_prove_the_token_and_no_announce_hides_one",
    ) {
        return;
    }
    let dir = setup();
    let real_data = dir.path().join("real");
    let real = MasterProcess::start_with(&real_data, "0.0.0.0:0", &["--no-announce"]);
    let other = announced_master(&dir.path().join("other"));
    let log = dir.path().join("worker.log");
    let mut child = worker("auto", "pi", &real_data, &dir.path().join("state"), &log);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the worker") {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker is still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).expect("the worker's log");
    assert!(!status.success(), "{status}\n{text}");
    assert!(
        text.contains("check the join token"),
        "the worker did not say why:\n{text}"
    );
    assert!(
        !text.contains(&format!(":{}", real.addr.port())),
        "the worker found the master that does not announce itself:\n{text}"
    );
    assert!(device_ids(other.addr).is_empty());
    assert!(device_ids(real.addr).is_empty());
}
