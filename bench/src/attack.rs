//! Scenario `attack`: what hostile peers can make the master hold and how
//! long they can make others wait (issue 11, items 1 and 2).
//!
//! - `help`: N connections with a small receive buffer send `help\n` in a
//!   loop and never read, against a master with `--read-only-from none`
//!   (strangers that never authenticate).
//! - `list`: N loopback readers (anonymous, default flags) send
//!   `list_tasks` with the largest limit in a loop and never read.
//! - `flood`: with T tasks stored, K anonymous loopback readers write
//!   bursts of `tasks\n` as fast as the master takes them (reading the
//!   replies); meanwhile another client times `status` and a worker's
//!   round trip (submit -> `task_finished`).
//! - `history`: with a database of many finished tasks (filled as
//!   `history` fills it), K anonymous loopback readers flood the reads
//!   the store answers (`list_tasks` pages of 1,000 below a cursor deep in
//!   the history, `task_status` of finished tasks), timed as `flood` is.
//! - `watch`: W anonymous loopback connections (default flags) subscribe
//!   to every event and never read again; the admin submits a task with
//!   a 900 KB payload and cancels it, and the `cancel` is timed while the
//!   `task_finished` event fans out. The peak is the master's `VmHWM`.
//!
//! For `help` and `list` the master's RSS is sampled every 200 ms; the
//! master is killed if it passes [`RSS_KILL_KIB`], so the run never takes
//! the machine down. After the attackers close, RSS is read again once it
//! has had time to be given back.

use crate::client::Conn;
use crate::procs::{Master, ProcSample, Worker};
use crate::report::{mib, percentile, round, Report};
use anyhow::{bail, Context, Result};
use protocol::{Envelope, ListTasks, Message, TaskSpec, TaskSubmit};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The master is killed when its RSS passes this (3 GiB), and the run
/// records when.
pub const RSS_KILL_KIB: u64 = 3 * 1024 * 1024;

/// The receive buffer the non-reading attackers ask for.
const SMALL_RCVBUF: i32 = 4096;

/// How long one `status` or round trip may take before it is given up on
/// (and reported as longer than this).
const REQUEST_PATIENCE: Duration = Duration::from_secs(60);

/// Bytes of `tasks\n` lines in one flood burst (the 240 KB).
const BURST: usize = 240 * 1000;

/// Which attack or attacks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Non-reading `help` senders, `--read-only-from none`.
    Help,
    /// Non-reading loopback `list_tasks` readers, default flags.
    List,
    /// A listing flood while others are timed.
    Flood,
    /// Non-reading anonymous watchers and one large task finishing.
    Watch,
    /// Reads of the history the store answers, flooded, on a database of
    /// many finished tasks.
    History,
    /// All five in turn.
    All,
}

/// How the attack scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Which phase.
    pub phase: Phase,
    /// Seconds each attack lasts.
    pub duration: Duration,
    /// Connections of the `help` attack.
    pub help_conns: usize,
    /// Readers of the `list` attack.
    pub readers: usize,
    /// Tasks stored before the `list` attack.
    pub list_tasks: usize,
    /// Tasks stored before the `flood`.
    pub flood_tasks: usize,
    /// Connections that flood listings.
    pub flooders: usize,
    /// Anonymous watchers of the `watch` attack.
    pub watchers: usize,
    /// How long RSS is given to fall after the attackers close.
    pub after_close: Duration,
    /// Finished tasks in the database of the `history` attack.
    pub history_tasks: usize,
    /// Bytes of each of their results.
    pub history_result_bytes: usize,
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    let mut report = Report::new("attack");
    report.note(format!(
        "{} s per attack; master killed past {}",
        params.duration.as_secs_f64(),
        mib(RSS_KILL_KIB)
    ));
    if matches!(params.phase, Phase::Help | Phase::All) {
        memory_attack(params, Attack::Help, &mut report)?;
    }
    if matches!(params.phase, Phase::List | Phase::All) {
        memory_attack(params, Attack::List, &mut report)?;
    }
    if matches!(params.phase, Phase::Flood | Phase::All) {
        flood(params, &mut report)?;
    }
    if matches!(params.phase, Phase::Watch | Phase::All) {
        watch(params, &mut report)?;
    }
    if matches!(params.phase, Phase::History | Phase::All) {
        history_flood(params, &mut report)?;
    }
    Ok(report)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Attack {
    Help,
    List,
}

/// Starts a master with authentication on (the bench's usual master runs
/// with `--no-auth`), plus `extra` flags.
fn start_authenticated(dir: &Path, extra: &[&str]) -> Result<Master> {
    let flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Master::start_authenticated(dir, &flags)
}

/// Reads a token the master keeps in `DATA_DIR/secrets/`.
fn token(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join("db").join("secrets").join(file);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("read {}", path.display()))?
        .trim()
        .to_string())
}

/// A connection authenticated as admin with the text command `auth`.
fn admin(addr: SocketAddr, dir: &Path) -> Result<Conn> {
    let mut conn = Conn::connect(addr)?;
    conn.send_raw(format!("auth {}\n", token(dir, "admin.token")?).as_bytes())?;
    loop {
        let line = conn.next_line()?;
        if line == b"." {
            return Ok(conn);
        }
        if line.starts_with(b"error") {
            bail!("auth refused: {}", String::from_utf8_lossy(line));
        }
    }
}

/// Stores `count` echo tasks and waits until a worker has run them all;
/// returns the worker (it stays for the round trips).
fn store_tasks(master: &Master, dir: &Path, count: usize) -> Result<(Worker, Conn)> {
    let mut conn = admin(master.addr, dir)?;
    conn.subscribe()?;
    let worker =
        Worker::start_with_token(dir, master.addr, "bench-w0", 8, &token(dir, "join.token")?)?;
    conn.wait_joined(1)?;
    // One batch at a time, reading everything that comes meanwhile (as a
    // well-behaved client does), counting the tasks that finished.
    let mut finished = 0;
    let mut sent = 0;
    while sent < count {
        let n = (count - sent).min(protocol::message::MAX_BATCH);
        let tasks = (0..n)
            .map(|i| TaskSpec::new("echo", json!({ "message": sent + i })))
            .collect();
        let id = format!("store-{sent}");
        conn.send(&id, Message::TaskSubmit(TaskSubmit { tasks, batch: true }))?;
        sent += n;
        loop {
            let value = conn.next_value()?;
            if value["message_type"] == "error" {
                bail!("storing tasks: {}", value["data"]);
            }
            if value["message_type"] == "event" && value["data"]["event"] == "task_finished" {
                finished += 1;
            }
            if value["message_type"] == "ack" && value["data"]["original_message_id"] == id {
                break;
            }
        }
    }
    while finished < count {
        let value = conn.next_value()?;
        if value["message_type"] == "event" && value["data"]["event"] == "task_finished" {
            finished += 1;
        }
    }
    Ok((worker, conn))
}

/// Asks for a small receive buffer, so the kernel holds little for the
/// peer and the master's own buffers are what grows.
fn shrink_receive_buffer(stream: &TcpStream) {
    let size = SMALL_RCVBUF;
    // SAFETY: setsockopt reads an int we own, on a socket we own.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Whether an I/O error only means the timeout passed.
fn timed_out(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Writes `burst` again and again until `stop` (returns `false`) or until
/// the master closes the connection (returns `true`).
fn write_until(stream: &mut TcpStream, burst: &[u8], stop: &AtomicBool) -> bool {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    while !stop.load(Ordering::SeqCst) {
        match stream.write(burst) {
            Ok(_) => {}
            Err(err) if timed_out(&err) => {}
            Err(_) => return true,
        }
    }
    false
}

/// One non-reading attacker: writes `line` in bursts until `stop`, never
/// reads. Counts itself in `closed` when the master closes it.
fn non_reader(
    addr: SocketAddr,
    line: Vec<u8>,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        shrink_receive_buffer(&stream);
        if write_until(&mut stream, &line.repeat(256), &stop) {
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
}

fn memory_attack(params: &Params, attack: Attack, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let (name, master, line, conns) = match attack {
        Attack::Help => {
            let master = start_authenticated(dir.path(), &["--read-only-from", "none"])?;
            ("help", master, b"help\n".to_vec(), params.help_conns)
        }
        Attack::List => {
            let master = start_authenticated(dir.path(), &[])?;
            let line = Envelope::new(Message::ListTasks(ListTasks {
                state: None,
                limit: Some(1000),
                before: None,
            }))
            .with_id("l")
            .to_line();
            ("list", master, line, params.readers)
        }
    };
    let mut _kept = None;
    if attack == Attack::List && params.list_tasks > 0 {
        _kept = Some(store_tasks(&master, dir.path(), params.list_tasks)?);
    }

    let pid = master.pid();
    let addr = master.addr;
    let mut master = Some(master);
    let before = ProcSample::of(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..conns)
        .map(|_| non_reader(addr, line.clone(), stop.clone(), closed.clone()))
        .collect();
    let started = Instant::now();
    let mut peak = 0;
    let mut killed_at = None;
    while started.elapsed() < params.duration {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(sample) = ProcSample::of(pid) else {
            break;
        };
        peak = peak.max(sample.rss_kib);
        if sample.rss_kib > RSS_KILL_KIB {
            killed_at = Some(started.elapsed().as_secs_f64());
            master = None;
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        let _ = thread.join();
    }
    let closed_by_master = closed.load(Ordering::SeqCst);
    let label = match attack {
        Attack::Help => format!("{conns} non-reading `help` senders, --read-only-from none"),
        Attack::List => format!(
            "{conns} non-reading loopback `list_tasks` readers, {} tasks stored",
            params.list_tasks
        ),
    };
    report.note(format!("{name}: {label}"));
    report.info(format!("{name}: RSS before"), mib(before.rss_kib));
    match killed_at {
        Some(at) => {
            report.info(
                format!("{name}: peak RSS"),
                format!("> {} at {at:.1} s (killed)", mib(RSS_KILL_KIB)),
            );
            report.set(&format!("{name}_killed_at_secs"), round(at, 1));
        }
        None => {
            std::thread::sleep(params.after_close);
            let after = ProcSample::of(pid)?;
            let peak = peak.max(after.peak_rss_kib);
            report.info(format!("{name}: peak RSS"), mib(peak));
            report.info(
                format!(
                    "{name}: RSS {} s after they closed",
                    params.after_close.as_secs_f64()
                ),
                mib(after.rss_kib),
            );
            report.set(&format!("{name}_peak_rss_kib"), peak);
            report.set(&format!("{name}_after_close_rss_kib"), after.rss_kib);
            if let Some(master) = master.as_mut() {
                if !master.running() {
                    bail!("the master died: {}", master.log_tail());
                }
            }
        }
    }
    report.info(
        format!("{name}: attackers closed by the master"),
        format!("{closed_by_master} of {conns}"),
    );
    report.set(&format!("{name}_closed_by_master"), closed_by_master);
    report.set(&format!("{name}_before_rss_kib"), before.rss_kib);
    Ok(())
}

/// Sends a JSON `status` and waits for its ack; returns the time taken,
/// or `None` past [`REQUEST_PATIENCE`].
fn timed_status(conn: &mut Conn, id: &str) -> Option<Duration> {
    let started = Instant::now();
    conn.request(id, Message::Status).ok()?;
    Some(started.elapsed())
}

/// Submits one echo task and waits for its `task_finished` event.
fn timed_round_trip(conn: &mut Conn, id: &str) -> Option<Duration> {
    let started = Instant::now();
    let mut spec = TaskSpec::new("echo", json!({ "message": id }));
    spec.task_id = Some(id.to_string());
    let submit = Message::TaskSubmit(TaskSubmit {
        tasks: vec![spec],
        batch: false,
    });
    conn.send(&format!("sub-{id}"), submit).ok()?;
    loop {
        let value = conn.next_value().ok()?;
        if value["message_type"] == "event"
            && value["data"]["event"] == "task_finished"
            && value["data"]["task"]["task_id"] == id
        {
            return Some(started.elapsed());
        }
    }
}

fn flood(params: &Params, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let master = start_authenticated(dir.path(), &[])?;
    let (_worker, admin) = store_tasks(&master, dir.path(), params.flood_tasks)?;
    let burst = b"tasks\n".repeat(BURST / 6);
    report.note(format!(
        "flood: {} tasks stored, {} anonymous loopback connection(s) writing {} KB bursts of `tasks\\n` and reading",
        params.flood_tasks,
        params.flooders,
        BURST / 1000
    ));
    measure_flood(params, &master, admin, &burst, "flood", report)
}

/// The `history` attack: a database of `history_tasks` finished tasks
/// (filled as `bench history` fills it, with results of
/// `history_result_bytes`), a real master on it with a worker, and
/// anonymous readers flooding the reads the store answers: `list_tasks`
/// pages of 1,000 completed tasks starting deep in the history and
/// `task_status` of finished tasks spread over it.
fn history_flood(params: &Params, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let total = params.history_tasks.max(1);
    let result_bytes = params.history_result_bytes;
    let per_transaction = ((64 << 20) / (result_bytes + 600)).clamp(1, 50_000);
    let filled = crate::history::fill_with(dir.path(), total, per_transaction, |n| {
        crate::history::record_with_result(n, true, 1_700_000_000_000, result_bytes)
    })?;
    let master = start_authenticated(dir.path(), &[])?;
    let mut admin = admin(master.addr, dir.path())?;
    admin.subscribe()?;
    let worker = Worker::start_with_token(
        dir.path(),
        master.addr,
        "bench-w0",
        8,
        &token(dir.path(), "join.token")?,
    )?;
    admin.wait_joined(1)?;
    // A burst of requests for tasks all over the history: a page of the
    // largest size below a cursor deep in it, then one finished task.
    let mut burst = Vec::new();
    let mut n: usize = 12_345;
    while burst.len() < BURST {
        n = (n * 7919 + 104_729) % total;
        let page = Envelope::new(Message::ListTasks(ListTasks {
            state: Some(protocol::TaskState::Completed),
            limit: Some(1000),
            before: Some(crate::history::task_id(n)),
        }))
        .to_line();
        burst.extend_from_slice(&page);
        let status = Envelope::new(Message::TaskStatus(protocol::TaskRef {
            task_id: crate::history::task_id((n * 31) % total),
        }))
        .to_line();
        burst.extend_from_slice(&status);
    }
    report.note(format!(
        "history: {total} finished tasks in the database (results of {result_bytes} B, filled in {:.0} s), {} anonymous loopback connection(s) writing {} KB bursts of `list_tasks` (completed, limit 1000, a cursor deep in the history) and `task_status` of finished tasks, and reading",
        filled.as_secs_f64(),
        params.flooders,
        burst.len() / 1000
    ));
    measure_flood(params, &master, admin, &burst, "history", report)?;
    drop(worker);
    Ok(())
}

/// Floods `master` with `burst` from `params.flooders` anonymous
/// connections that read what they are sent, while an anonymous reader
/// times `status` and `admin` (subscribed, with a worker joined) times a
/// task's round trip, again and again for `params.duration`; reports the
/// figures under `name`.
fn measure_flood(
    params: &Params,
    master: &Master,
    mut admin: Conn,
    burst: &[u8],
    name: &str,
    report: &mut Report,
) -> Result<()> {
    admin.set_patience(REQUEST_PATIENCE);
    let mut reader = Conn::connect(master.addr)?;
    reader.set_patience(REQUEST_PATIENCE);
    // Baseline, before the flood.
    let quiet_status = timed_status(&mut reader, "quiet");
    let quiet_trip = timed_round_trip(&mut admin, "quiet-trip");

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..params.flooders {
        let mut stream = TcpStream::connect(master.addr)?;
        let mut drain = stream.try_clone()?;
        let stop_reading = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = drain.set_read_timeout(Some(Duration::from_millis(200)));
            while !stop_reading.load(Ordering::SeqCst) {
                match drain.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(err) if timed_out(&err) => {}
                    Err(_) => return,
                }
            }
        }));
        let stop_writing = stop.clone();
        let burst = burst.to_vec();
        threads.push(std::thread::spawn(move || {
            write_until(&mut stream, &burst, &stop_writing);
        }));
    }
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut trips = Vec::new();
    let mut gave_up = false;
    let mut i = 0;
    while started.elapsed() < params.duration && !gave_up {
        i += 1;
        match timed_status(&mut reader, &format!("s{i}")) {
            Some(took) => statuses.push(took.as_secs_f64() * 1e3),
            None => gave_up = true,
        }
        match timed_round_trip(&mut admin, &format!("trip-{i}")) {
            Some(took) => trips.push(took.as_secs_f64() * 1e3),
            None => gave_up = true,
        }
    }
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        let _ = thread.join();
    }
    let cpu = ProcSample::of(master.pid())?;
    let ms = |d: Option<Duration>| {
        d.map_or(format!("> {} s", REQUEST_PATIENCE.as_secs()), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1e3)
        })
    };
    report.info(format!("{name}: status, no flood"), ms(quiet_status));
    report.info(format!("{name}: round trip, no flood"), ms(quiet_trip));
    for (what, values) in [("status", &mut statuses), ("round trip", &mut trips)] {
        values.sort_by(f64::total_cmp);
        let max = values.last().copied().unwrap_or(0.0);
        report.info(
            format!("{name}: {what} p50 / max ({} samples)", values.len()),
            format!("{:.1} / {:.1} ms", percentile(values, 50.0), max),
        );
        let key = what.replace(' ', "_");
        report.set(
            &format!("{name}_{key}_p50_ms"),
            round(percentile(values, 50.0), 1),
        );
        report.set(&format!("{name}_{key}_max_ms"), round(max, 1));
    }
    if gave_up {
        report.info(
            format!("{name}: gave up"),
            format!("a request took > {} s", REQUEST_PATIENCE.as_secs()),
        );
        report.set(&format!("{name}_gave_up"), true);
    }
    report.info(
        format!("{name}: master CPU, whole run"),
        format!("{:.1} s", cpu.cpu_secs),
    );
    Ok(())
}

/// The payload of the task whose `task_finished` the `watch` attack fans
/// out (the 900 KB).
const WATCH_PAYLOAD: usize = 900 * 1000;

/// An anonymous loopback connection that subscribes to every event, reads
/// the reply, and never reads again; with whether the master accepted the
/// subscription (the connection is kept all the same).
fn idle_watcher(addr: SocketAddr) -> Result<(TcpStream, bool)> {
    let mut stream = TcpStream::connect(addr)?;
    shrink_receive_buffer(&stream);
    stream.set_read_timeout(Some(REQUEST_PATIENCE))?;
    stream.write_all(b"{\"message_type\":\"subscribe\",\"data\":{}}\n")?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            bail!("the master closed a watcher before answering");
        }
        reply.push(byte[0]);
    }
    let value: serde_json::Value =
        serde_json::from_slice(&reply).context("a subscribe reply that is not JSON")?;
    Ok((stream, value["message_type"] == "ack"))
}

fn watch(params: &Params, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let master = start_authenticated(dir.path(), &[])?;
    let pid = master.pid();
    let before = ProcSample::of(pid)?;
    let mut watchers = Vec::with_capacity(params.watchers);
    let mut subscribed = 0;
    for _ in 0..params.watchers {
        let (stream, accepted) = idle_watcher(master.addr)?;
        subscribed += usize::from(accepted);
        watchers.push(stream);
    }
    let mut admin = admin(master.addr, dir.path())?;
    admin.set_patience(REQUEST_PATIENCE);
    let mut spec = TaskSpec::new(
        "nobody-runs-this",
        json!({ "pad": "x".repeat(WATCH_PAYLOAD) }),
    );
    spec.task_id = Some("large".to_string());
    admin.request(
        "submit",
        Message::TaskSubmit(TaskSubmit {
            tasks: vec![spec],
            batch: false,
        }),
    )?;
    let started = Instant::now();
    let cancelled = admin
        .request(
            "cancel",
            Message::TaskCancel(protocol::TaskCancel {
                task_id: "large".to_string(),
                attempt: None,
            }),
        )
        .map(|_| started.elapsed());
    // The fan-out is over once the next request on the admin's connection
    // is answered.
    let status = timed_status(&mut admin, "after");
    let after = ProcSample::of(pid)?;
    drop(watchers);
    report.note(format!(
        "watch: {} anonymous loopback watchers that never read, a {} KB task cancelled",
        params.watchers,
        WATCH_PAYLOAD / 1000
    ));
    report.info(
        "watch: subscriptions accepted",
        format!("{subscribed} of {}", params.watchers),
    );
    report.info("watch: RSS before", mib(before.rss_kib));
    report.info("watch: peak RSS", mib(after.peak_rss_kib));
    let ms = |d: &Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    match &cancelled {
        Ok(took) => report.info("watch: admin's cancel answered in", ms(took)),
        Err(err) => report.info("watch: admin's cancel", format!("failed: {err}")),
    }
    if let Some(took) = &status {
        report.info("watch: the next status answered in", ms(took));
        report.set("watch_status_ms", round(took.as_secs_f64() * 1e3, 1));
    }
    report.set("watch_subscribed", subscribed);
    report.set("watch_before_rss_kib", before.rss_kib);
    report.set("watch_peak_rss_kib", after.peak_rss_kib);
    if let Ok(took) = cancelled {
        report.set("watch_cancel_ms", round(took.as_secs_f64() * 1e3, 1));
    }
    Ok(())
}
