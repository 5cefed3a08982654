//! Hostile peers against the real `retire-master` (issue 11, items 1 and
//! 2): peers that never read the replies they ask for, and a reader that
//! floods listings. The master's memory is read from `/proc/PID/status`;
//! the bounds are generous safety bounds, not performance targets (those
//! are in `docs/benchmarks.md`, scenario `attack`).

use super::{setup, start_workers, subscriber};
use protocol::{Event, ListTasks, Message, TaskSpec, TaskSubmit};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::{Client, MasterProcess};

/// The master's RSS must stay under this while it is attacked (it is about
/// 10 MiB at rest; the unchanged master passed 300 MiB within a second).
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// And fall back under this once the attackers have gone.
const RSS_AFTER_KIB: u64 = 48 * 1024;

/// How long the attacks that the master does not end itself go on.
const ATTACK: Duration = Duration::from_secs(2);

/// Whatever the attack, a reply or a round trip must come within this.
const LATENCY_BOUND: Duration = Duration::from_secs(2);

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read its status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS line")
}

/// A peer that writes `line` over and over and never reads, until the
/// master closes it (returns `true`) or `stop` is set (returns `false`).
fn non_reader(
    addr: SocketAddr,
    line: &[u8],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<bool> {
    let burst = line.repeat(1000);
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .expect("a write timeout");
        while !stop.load(Ordering::SeqCst) {
            match stream.write(&burst) {
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    })
}

/// Samples the master's RSS until every thread in `attackers` has ended;
/// returns the largest sample.
fn peak_rss_while(pid: u32, attackers: &[std::thread::JoinHandle<bool>]) -> u64 {
    let mut peak = 0;
    while attackers.iter().any(|a| !a.is_finished()) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// Waits (at most 10 s) until the master's RSS is under `bound` KiB;
/// returns the last sample.
fn rss_settles_under(pid: u32, bound: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rss = rss_kib(pid);
        if rss < bound || Instant::now() > deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stores `count` tasks of a type nobody runs (they stay queued, so every
/// listing shows them and workers stay free); returns the admin client
/// that submitted them.
fn store_unrun_tasks(addr: SocketAddr, count: usize) -> Client {
    let tasks = (0..count)
        .map(|i| TaskSpec::new("nobody-runs-this", json!({ "n": i })))
        .collect();
    let mut admin = Client::connect(addr);
    admin
        .request(Message::TaskSubmit(TaskSubmit { tasks, batch: true }))
        .expect("submit");
    admin
}

/// Submits an echo task `id` as `admin` and waits on `events` until it
/// finished; returns how long that took and how many devices left
/// meanwhile.
fn echo_round_trip(admin: &mut Client, events: &mut Client, id: &str) -> (Duration, usize) {
    let submitted = Instant::now();
    let mut spec = TaskSpec::new("echo", json!({ "message": id }));
    spec.task_id = Some(id.to_string());
    admin
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit");
    let mut left = 0;
    loop {
        match events
            .wait_event(|e| matches!(e, Event::TaskFinished { .. } | Event::DeviceLeft { .. }))
        {
            Event::TaskFinished { task } if task.task_id == id => break,
            Event::DeviceLeft { .. } => left += 1,
            _ => {}
        }
    }
    (submitted.elapsed(), left)
}

#[test]
fn strangers_that_never_read_are_held_to_a_bound_and_closed_at_the_deadline() {
    let dir = setup();
    let master = MasterProcess::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--read-only-from", "none", "--auth-deadline", "1"],
    );
    let started = Instant::now();
    // Set only if the master never closes them (the unchanged master did
    // not): the test then fails on the deadline below, not by hanging.
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..16)
        .map(|_| non_reader(master.addr, b"help\n", stop.clone()))
        .collect();
    let watchdog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(15));
            stop.store(true, Ordering::SeqCst);
        })
    };
    let peak = peak_rss_while(master.pid(), &attackers);
    let closed = attackers
        .into_iter()
        .filter(|a| a.is_finished())
        .map(|a| a.join().expect("an attacker"))
        .filter(|&closed| closed)
        .count();
    let took = started.elapsed();
    let after = rss_settles_under(master.pid(), RSS_AFTER_KIB);
    eprintln!(
        "16 non-reading strangers: peak RSS {peak} KiB, all closed after {took:?}, \
         {after} KiB after"
    );
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    // The deadline (1 s) plus the grace for a last reply (1 s), with room
    // for a slow machine; never the watchdog's 15 s.
    assert_eq!(closed, 16, "every stranger is closed at its deadline");
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    assert!(after < RSS_AFTER_KIB, "RSS {after} KiB after the attack");
    drop(watchdog);
}

#[test]
fn anonymous_readers_that_never_read_are_held_to_a_bound_and_it_is_given_back() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    // Listings worth holding: 500 queued tasks of a type nobody runs.
    let tasks = (0..500)
        .map(|i| {
            TaskSpec::new(
                "nobody-runs-this",
                json!({ "n": i, "pad": "x".repeat(200) }),
            )
        })
        .collect();
    Client::connect(master.addr)
        .request(Message::TaskSubmit(TaskSubmit { tasks, batch: true }))
        .expect("submit");
    let list = protocol::Envelope::new(Message::ListTasks(ListTasks {
        state: None,
        limit: Some(1000),
        before: None,
    }))
    .to_line();
    // Loopback may read without a token (the default `--read-only-from`).
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..4)
        .map(|_| non_reader(master.addr, &list, stop.clone()))
        .collect();
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(ATTACK);
            stop.store(true, Ordering::SeqCst);
        })
    };
    let peak = peak_rss_while(master.pid(), &attackers);
    stopper.join().expect("the stopper");
    drop(attackers);
    let after = rss_settles_under(master.pid(), RSS_AFTER_KIB);
    eprintln!("4 non-reading anonymous readers: peak RSS {peak} KiB, {after} KiB after");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    assert!(after < RSS_AFTER_KIB, "RSS {after} KiB after the attack");
    // The master still answers.
    assert!(Client::connect(master.addr)
        .request(Message::Status)
        .is_ok());
}

#[test]
fn a_listing_flood_does_not_delay_heartbeats_status_or_tasks() {
    let dir = setup();
    // Heartbeats every 250 ms, a worker is lost after 2 s of silence: a
    // master stalled by the flood would lose it.
    let master = MasterProcess::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--heartbeat-interval", "0.25", "--heartbeat-timeout", "2"],
    );
    let _worker = start_workers(master.addr, &[("steady", 1)]);
    // 2,000 stored tasks that every listing goes through (a type nobody
    // runs, so they stay queued and the worker stays free).
    let mut admin = store_unrun_tasks(master.addr, 2000);
    let mut events = subscriber(master.addr);

    // The flood: an anonymous loopback reader writes 240 KB bursts of
    // `tasks` and reads every reply.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooder = TcpStream::connect(master.addr).expect("connect");
    let mut drain = flooder.try_clone().expect("clone");
    let reading = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            drain
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("a read timeout");
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            while !stop.load(Ordering::SeqCst) {
                match drain.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => {}
                }
            }
            total
        })
    };
    let writing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            flooder
                .set_write_timeout(Some(Duration::from_millis(100)))
                .expect("a write timeout");
            let burst = b"tasks\n".repeat(40_000);
            while !stop.load(Ordering::SeqCst) {
                let _ = flooder.write(&burst);
            }
        })
    };

    let mut reader = Client::connect_anonymous(master.addr).expect("connect");
    let mut worst_status = Duration::ZERO;
    let mut worst_trip = Duration::ZERO;
    let flood_started = Instant::now();
    let mut i = 0;
    let mut lost = 0;
    while flood_started.elapsed() < ATTACK {
        let asked = Instant::now();
        reader.request(Message::Status).expect("status");
        worst_status = worst_status.max(asked.elapsed());
        let (trip, left) = echo_round_trip(&mut admin, &mut events, &format!("during-{i}"));
        lost += left;
        worst_trip = worst_trip.max(trip);
        i += 1;
    }
    stop.store(true, Ordering::SeqCst);
    writing.join().expect("the writer");
    let flooded = reading.join().expect("the reader");
    eprintln!(
        "listing flood ({flooded} bytes of listings read): worst status {worst_status:?}, \
         worst task round trip {worst_trip:?} over {i} rounds"
    );
    assert!(flooded > 0, "the flooder was answered too");
    assert!(worst_status < LATENCY_BOUND, "status took {worst_status:?}");
    assert!(
        worst_trip < LATENCY_BOUND,
        "a round trip took {worst_trip:?}"
    );
    assert_eq!(
        lost, 0,
        "the worker kept its heartbeats: never declared lost"
    );
}

/// Anonymous loopback readers in the many-readers flood (the review
/// measured a worst `status` of 375 ms with 100 of them and 900 ms with
/// 400 before every unauthenticated peer shared one work budget per turn).
const FLOODERS: usize = 200;

/// The most a worker's round trip or an admin's `status` may take while
/// they flood: generous (the master serves authenticated peers first in
/// each turn, and strangers share 4 ms of work per turn; debug builds
/// measure tens of milliseconds).
const FLOOD_LATENCY_BOUND: Duration = Duration::from_millis(500);

/// Opens `count` anonymous loopback connections that each become a reader
/// (their first `tasks` is answered), then floods `tasks\n` on all of them
/// from one thread, reading and dropping every reply, until `stop` is set;
/// returns the bytes of replies read.
fn reader_flood(
    addr: SocketAddr,
    count: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    // One at a time, so no more than a few wait to authenticate at once
    // (more than 128 would push the oldest out).
    let mut streams: Vec<(TcpStream, usize)> = (0..count)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(b"tasks\n").expect("write");
            let mut byte = [0u8; 1];
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("a read timeout");
            stream.read_exact(&mut byte).expect("the first listing");
            stream.set_nonblocking(true).expect("non-blocking");
            (stream, 0)
        })
        .collect();
    let burst = b"tasks\n".repeat(1000);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut progressed = false;
            for (stream, sent) in &mut streams {
                if let Ok(n) = stream.write(&burst[*sent..]) {
                    *sent = (*sent + n) % burst.len();
                    progressed |= n > 0;
                }
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    read += n;
                    progressed = true;
                }
            }
            if !progressed {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        read
    })
}

#[test]
fn many_flooding_readers_do_not_delay_workers_or_admins() {
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    let _worker = start_workers(master.addr, &[("steady", 1)]);
    let mut admin = store_unrun_tasks(master.addr, 200);
    let mut events = subscriber(master.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = reader_flood(master.addr, FLOODERS, stop.clone());

    let mut statuses = Vec::new();
    let mut trips = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < ATTACK {
        let asked = Instant::now();
        admin.request(Message::Status).expect("status");
        statuses.push(asked.elapsed());
        let (trip, _) = echo_round_trip(&mut admin, &mut events, &format!("among-readers-{i}"));
        trips.push(trip);
        i += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let flooded = flood.join().expect("the flood");
    statuses.sort();
    trips.sort();
    let worst_status = statuses.last().copied().unwrap_or_default();
    let worst_trip = trips.last().copied().unwrap_or_default();
    eprintln!(
        "{FLOODERS} flooding readers ({flooded} bytes of listings read): admin status median \
         {:?}, worst {worst_status:?}; task round trip median {:?}, worst {worst_trip:?}; \
         {i} rounds",
        statuses[statuses.len() / 2],
        trips[trips.len() / 2],
    );
    assert!(flooded > 0, "the readers were answered too");
    assert!(
        worst_status < FLOOD_LATENCY_BOUND,
        "status took {worst_status:?}"
    );
    assert!(
        worst_trip < FLOOD_LATENCY_BOUND,
        "a round trip took {worst_trip:?}"
    );
}

/// The master's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the master's fds")
        .count()
}

/// Waits (at most `patience`) until the master has `fds` descriptors open
/// or fewer; returns whether it got there.
fn fds_fall_to(pid: u32, fds: usize, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if open_fds(pid) <= fds {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_half_closed_non_reader_and_an_idle_reader_are_closed_and_a_quiet_watch_is_not() {
    let dir = setup();
    let master = MasterProcess::start_with(
        dir.path(),
        "127.0.0.1:0",
        &["--drain-timeout", "1", "--reader-idle-timeout", "1"],
    );
    // Replies worth queueing: each listing of these is about 50 KB.
    let tasks = (0..200)
        .map(|i| {
            TaskSpec::new(
                "nobody-runs-this",
                json!({ "n": i, "pad": "x".repeat(100) }),
            )
        })
        .collect();
    let mut admin = Client::connect(master.addr);
    admin
        .request(Message::TaskSubmit(TaskSubmit { tasks, batch: true }))
        .expect("submit");
    // A quiet `retire watch` without a token: subscribed, nothing to read.
    let mut watch = Client::connect_anonymous(master.addr).expect("connect");
    watch
        .request(Message::Subscribe(Default::default()))
        .expect("subscribe");
    let before = open_fds(master.pid());

    // An admin asks for about 16 MiB of listings (less than half its 64
    // MiB cap, so all of it is read and answered), half-closes, and never
    // reads: what the socket buffers do not take stays queued.
    let list = protocol::Envelope::new(Message::ListTasks(ListTasks {
        state: None,
        limit: Some(1000),
        before: None,
    }))
    .to_line();
    let half_closed = admin.stream();
    let mut writer = half_closed.try_clone().expect("clone");
    writer.write_all(&list.repeat(320)).expect("ask");
    writer
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    // An anonymous reader that asks once, reads its reply and goes quiet.
    let mut idle = Client::connect_anonymous(master.addr).expect("connect");
    idle.request(Message::Status).expect("status");
    let asked = Instant::now();
    let mut rest = Vec::new();
    let end = idle
        .stream()
        .try_clone()
        .expect("clone")
        .read_to_end(&mut rest);
    let idle_for = asked.elapsed();
    assert!(
        matches!(end, Ok(0)),
        "the idle reader is closed, not kept: {end:?}"
    );
    // Its idle timeout (1 s) and the loop's check; never its read timeout.
    assert!(
        idle_for < Duration::from_secs(5),
        "closed after {idle_for:?}"
    );
    // The half-closed admin goes at its drain deadline (1 s) though it
    // reads nothing: the master holds two fewer connections.
    assert!(
        fds_fall_to(master.pid(), before - 1, Duration::from_secs(5)),
        "the half-closed connection was not closed: {} fds, {before} before",
        open_fds(master.pid())
    );
    drop(writer);
    // The quiet watch outlived both timeouts and still gets events.
    let mut spec = TaskSpec::new("nobody-runs-this", json!({}));
    spec.task_id = Some("after-the-quiet".into());
    Client::connect(master.addr)
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }))
        .expect("submit");
    watch.wait_event(
        |e| matches!(e, Event::TaskSubmitted { task_id, .. } if task_id == "after-the-quiet"),
    );
}

/// Anonymous loopback watchers that never read, and one large task that
/// finishes: the master used to build a full copy of the `task_finished`
/// event (payload and result) for every watcher before counting any, so
/// 200 of them and a 900 KB payload took it to 200 MiB and held the
/// admin's `cancel` reply for 7 s. Now strangers may hold only 64
/// subscriptions, get the finished task without its payload and result,
/// and the event is encoded once.
#[test]
fn anonymous_watchers_that_never_read_do_not_multiply_a_large_event() {
    const WATCHERS: usize = 200;
    let dir = setup();
    let master = MasterProcess::start(dir.path());
    // Two that read: an anonymous one and the admin's.
    let mut reader = Client::connect_anonymous(master.addr).expect("connect");
    reader
        .request(Message::Subscribe(protocol::Subscribe::default()))
        .expect("an anonymous loopback reader may subscribe");
    let mut watcher = subscriber(master.addr);
    // The attackers: subscribed (the reply read), then never read again.
    let mut refused = 0;
    let attackers: Vec<Client> = (1..WATCHERS)
        .map(|_| {
            let mut attacker = Client::connect_anonymous(master.addr).expect("connect");
            if let Err(error) = attacker.request(Message::Subscribe(protocol::Subscribe::default()))
            {
                assert_eq!(error.code, protocol::ErrorCode::TooManyConnections);
                refused += 1;
            }
            attacker
        })
        .collect();
    let mut admin = Client::connect(master.addr);
    let payload = json!({ "pad": "x".repeat(900_000) });
    let ack = admin
        .request(Message::TaskSubmit(TaskSubmit {
            tasks: vec![TaskSpec::new("nobody-runs-this", payload.clone())],
            batch: false,
        }))
        .expect("submit");
    let submitted: protocol::Submitted = ack.result.parse().expect("a task id");
    let task_id = submitted.task_id;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pid = master.pid();
        std::thread::spawn(move || {
            let mut peak = rss_kib(pid);
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak.max(rss_kib(pid))
        })
    };
    let started = Instant::now();
    admin
        .request(Message::TaskCancel(protocol::TaskCancel {
            task_id: task_id.clone(),
            attempt: None,
        }))
        .expect("cancel");
    let took = started.elapsed();
    // The event has been fanned out by the time the master answers the
    // next request on the admin's connection.
    admin.request(Message::Status).expect("status");
    done.store(true, Ordering::SeqCst);
    let peak = sampler.join().expect("the sampler");
    eprintln!(
        "{WATCHERS} anonymous watchers ({refused} refused), a 900 KB task cancelled: \
         peak RSS {peak} KiB, cancel answered in {took:?}"
    );
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    assert!(took < LATENCY_BOUND, "cancel answered in {took:?}");
    assert!(refused > 0, "strangers' subscriptions are limited");
    // The stranger that reads learns that the task finished, without its
    // payload and result; the admin's watcher gets them.
    let finished = |event: &Event| matches!(event, Event::TaskFinished { .. });
    let Event::TaskFinished { task } = reader.wait_event(finished) else {
        unreachable!("waited for task_finished")
    };
    assert_eq!(task.task_id, task_id);
    assert_eq!(task.state, protocol::TaskState::Cancelled);
    assert_eq!(task.payload, serde_json::Value::Null);
    let Event::TaskFinished { task } = watcher.wait_event(finished) else {
        unreachable!("waited for task_finished")
    };
    assert_eq!(task.task_id, task_id);
    assert_eq!(task.payload, payload);
    drop(attackers);
}
