//! Scenario 3: many simulated lightweight workers, each a real socket
//! that registers and then heartbeats once a second, all driven by one mio
//! loop in the bench process. Measures what the master spends on them,
//! and (with `--ramp`) the largest count the machine holds.

use crate::procs::{own_cpu_secs, raise_nofile_limit, Master, ProcSample};
use crate::report::{mib, percentile, round, thousands, Report};
use anyhow::{bail, Context, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The targets for 10,000 workers: percent of one core, and KiB.
pub const TARGET_CPU_PERCENT: f64 = 25.0;
/// See [`TARGET_CPU_PERCENT`].
pub const TARGET_RSS_KIB: u64 = 64 * 1024;

/// How often each simulated worker heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Connections being opened or registered at once.
const CONNECTING_AT_ONCE: usize = 256;
/// How long registering a level of workers may take.
const REGISTER_PATIENCE: Duration = Duration::from_secs(60);
/// Descriptors the master and the bench keep for other things than the
/// simulated workers' sockets.
const FD_RESERVE: u64 = 32;
/// A level holds when no worker was dropped, nine heartbeats in ten were
/// answered within the window, and 99 % of them within this.
const HOLD_P99_LIMIT_MS: f64 = 1000.0;

/// How the connections scenario runs.
#[derive(Debug, Clone)]
pub struct Params {
    /// Simulated workers (without `ramp`).
    pub workers: usize,
    /// How long they heartbeat while the master is measured.
    pub duration: Duration,
    /// Instead: add `step` workers at a time, hold each level for `hold`,
    /// until the machine does not hold a level or `max` is reached.
    pub ramp: bool,
    /// Workers added per level when ramping.
    pub step: usize,
    /// How long each level is held and measured when ramping.
    pub hold: Duration,
    /// The most workers the ramp tries.
    pub max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Registering,
    Live,
    Dead,
}

struct Sim {
    stream: TcpStream,
    state: State,
    out: Vec<u8>,
    partial: Vec<u8>,
    heartbeat_sent: Option<Instant>,
    seq: u64,
}

/// What happened in a window of time.
#[derive(Debug, Default, Clone)]
struct Window {
    sent: u64,
    acked: u64,
    latencies_ms: Vec<f64>,
}

struct Fleet {
    poll: Poll,
    events: Events,
    addr: SocketAddr,
    sims: Vec<Sim>,
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    buf: Vec<u8>,
    window: Window,
    live: usize,
    pending: usize,
    dead: usize,
    errors: u64,
    first_error: Option<String>,
    connect_error: Option<String>,
}

impl Fleet {
    fn new(addr: SocketAddr) -> Result<Fleet> {
        Ok(Fleet {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            addr,
            sims: Vec::new(),
            due: BinaryHeap::new(),
            buf: vec![0; 64 * 1024],
            window: Window::default(),
            live: 0,
            pending: 0,
            dead: 0,
            errors: 0,
            first_error: None,
            connect_error: None,
        })
    }

    /// Opens connections until `target` exist (registered or on their
    /// way), a few hundred at a time, and waits until all are registered.
    fn grow_to(&mut self, target: usize) -> Result<()> {
        let started = Instant::now();
        while self.live < target {
            while self.sims.len() < target
                && self.pending < CONNECTING_AT_ONCE
                && self.connect_error.is_none()
            {
                self.open()?;
            }
            if self.connect_error.is_some() && self.pending == 0 {
                return Ok(());
            }
            if self.dead > 0 {
                return Ok(());
            }
            if started.elapsed() > REGISTER_PATIENCE {
                bail!(
                    "only {} of {target} simulated workers registered within {REGISTER_PATIENCE:?}",
                    self.live
                );
            }
            self.turn(Duration::from_millis(10))?;
        }
        Ok(())
    }

    fn open(&mut self) -> Result<()> {
        let index = self.sims.len();
        let mut stream = match TcpStream::connect(self.addr) {
            Ok(stream) => stream,
            Err(err) => {
                self.connect_error = Some(format!("connect #{index}: {err}"));
                return Ok(());
            }
        };
        self.poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.sims.push(Sim {
            stream,
            state: State::Connecting,
            out: Vec::new(),
            partial: Vec::new(),
            heartbeat_sent: None,
            seq: 0,
        });
        self.pending += 1;
        Ok(())
    }

    /// Runs the loop until `until`.
    fn run_until(&mut self, until: Instant) -> Result<()> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            self.turn((until - now).min(Duration::from_millis(50)))?;
        }
    }

    /// One poll, its events, and the heartbeats that are due.
    fn turn(&mut self, max_wait: Duration) -> Result<()> {
        let now = Instant::now();
        let wait = match self.due.peek() {
            Some(Reverse((at, _))) => at.saturating_duration_since(now).min(max_wait),
            None => max_wait,
        };
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            })
            .collect();
        for (index, readable, writable) in ready {
            if writable {
                self.on_writable(index);
            }
            if readable {
                self.on_readable(index);
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, index))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if self.sims[index].state != State::Live {
                continue;
            }
            self.heartbeat(index, now);
            self.due.push(Reverse((at + HEARTBEAT_EVERY, index)));
        }
        Ok(())
    }

    fn on_writable(&mut self, index: usize) {
        if self.sims[index].state == State::Connecting {
            let sim = &mut self.sims[index];
            match sim.stream.take_error() {
                Ok(None) => {}
                Ok(Some(err)) | Err(err) => {
                    self.connect_error = Some(format!("connect #{index}: {err}"));
                    self.kill(index);
                    return;
                }
            }
            match sim.stream.peer_addr() {
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::NotConnected => return,
                Err(err) => {
                    self.connect_error = Some(format!("connect #{index}: {err}"));
                    self.kill(index);
                    return;
                }
            }
            let _ = sim.stream.set_nodelay(true);
            sim.state = State::Registering;
            let line = register_line(index);
            self.sims[index].out.extend_from_slice(line.as_bytes());
        }
        self.flush(index);
    }

    fn flush(&mut self, index: usize) {
        let sim = &mut self.sims[index];
        while !sim.out.is_empty() {
            match sim.stream.write(&sim.out) {
                Ok(0) => {
                    self.kill(index);
                    return;
                }
                Ok(n) => {
                    sim.out.drain(..n);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.kill(index);
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, index: usize) {
        loop {
            let sim = &mut self.sims[index];
            if sim.state == State::Dead {
                return;
            }
            match sim.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.kill(index);
                    return;
                }
                Ok(n) => {
                    let mut start = 0;
                    let mut lines = Vec::new();
                    for (i, &byte) in self.buf[..n].iter().enumerate() {
                        if byte == b'\n' {
                            let mut line = std::mem::take(&mut sim.partial);
                            line.extend_from_slice(&self.buf[start..i]);
                            lines.push(line);
                            start = i + 1;
                        }
                    }
                    sim.partial.extend_from_slice(&self.buf[start..n]);
                    for line in lines {
                        self.on_line(index, &line);
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.kill(index);
                    return;
                }
            }
        }
    }

    fn on_line(&mut self, index: usize, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let sim = &mut self.sims[index];
        if text.contains("\"heartbeat_received\":true") {
            self.window.acked += 1;
            if let Some(sent) = sim.heartbeat_sent.take() {
                self.window
                    .latencies_ms
                    .push(sent.elapsed().as_secs_f64() * 1e3);
            }
        } else if text.contains("\"message\":\"registered ") {
            if sim.state == State::Registering {
                sim.state = State::Live;
                self.pending -= 1;
                self.live += 1;
                // Spread the first heartbeats over a second, as workers
                // that joined at different times would be.
                let phase = Duration::from_millis((index as u64 * 7919) % 1000);
                self.due.push(Reverse((Instant::now() + phase, index)));
            }
        } else if text.contains("\"message_type\":\"error\"") {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(text.into_owned());
            }
        }
    }

    fn heartbeat(&mut self, index: usize, now: Instant) {
        let sim = &mut self.sims[index];
        sim.seq += 1;
        let line = heartbeat_line(index, sim.seq);
        let was_empty = sim.out.is_empty();
        sim.out.extend_from_slice(line.as_bytes());
        if sim.heartbeat_sent.is_none() {
            sim.heartbeat_sent = Some(now);
        }
        self.window.sent += 1;
        if was_empty {
            self.flush(index);
        }
    }

    fn kill(&mut self, index: usize) {
        let sim = &mut self.sims[index];
        match sim.state {
            State::Dead => return,
            State::Live => self.live -= 1,
            State::Connecting | State::Registering => self.pending -= 1,
        }
        sim.state = State::Dead;
        let _ = self.poll.registry().deregister(&mut sim.stream);
        self.dead += 1;
    }

    fn take_window(&mut self) -> Window {
        std::mem::take(&mut self.window)
    }
}

fn register_line(index: usize) -> String {
    let line = json!({
        "message_type": "register",
        "sender_id": format!("sim-{index}"),
        "message_id": format!("reg-{index}"),
        "data": {
            "device_info": {
                "architecture": "x86_64",
                "hostname": format!("sim-{index}"),
                "platform": "linux",
                "role": "worker"
            },
            "hardware_specs": {
                "cpu_cores": 1,
                "disk_space": 8_589_934_592u64,
                "memory_total": 1_073_741_824u64
            },
            "task_types": ["echo"],
            "slots": 1
        }
    });
    format!("{line}\n")
}

fn heartbeat_line(index: usize, seq: u64) -> String {
    // The shape this project's worker sends.
    format!(
        "{{\"message_type\":\"heartbeat\",\"sender_id\":\"sim-{index}\",\"message_id\":\"hb-{index}-{seq}\",\
         \"data\":{{\"active_tasks\":0,\"status\":\"online\",\"system_metrics\":{{\"cpu_usage\":1.5,\
         \"disk_usage\":40.2,\"load_average\":[0.1,0.2,0.3],\"memory_usage\":30.0,\"uptime\":{seq}.0}}}}}}\n"
    )
}

/// One measured level.
struct Level {
    workers: usize,
    secs: f64,
    master_cpu_percent: f64,
    master_rss_kib: u64,
    master_rss_start_kib: u64,
    bench_cpu_percent: f64,
    sent: u64,
    acked: u64,
    p50_ms: f64,
    p99_ms: f64,
    connect_secs: f64,
}

impl Level {
    fn holds(&self) -> bool {
        self.acked as f64 >= 0.9 * self.sent as f64 && self.p99_ms <= HOLD_P99_LIMIT_MS
    }

    fn json(&self) -> Value {
        json!({
            "workers": self.workers,
            "secs": round(self.secs, 2),
            "master_cpu_percent": round(self.master_cpu_percent, 2),
            "master_rss_kib": self.master_rss_kib,
            "master_rss_start_kib": self.master_rss_start_kib,
            "bench_cpu_percent": round(self.bench_cpu_percent, 2),
            "heartbeats_sent": self.sent,
            "heartbeats_acked": self.acked,
            "ack_p50_ms": round(self.p50_ms, 3),
            "ack_p99_ms": round(self.p99_ms, 3),
            "connect_secs": round(self.connect_secs, 2),
        })
    }
}

fn measure(
    fleet: &mut Fleet,
    master: &mut Master,
    secs: Duration,
    connect_secs: f64,
) -> Result<Level> {
    fleet.take_window();
    let before = ProcSample::of(master.pid())?;
    let bench_before = own_cpu_secs();
    let started = Instant::now();
    fleet.run_until(started + secs)?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = ProcSample::of(master.pid())?;
    let bench_cpu = own_cpu_secs() - bench_before;
    let mut window = fleet.take_window();
    window.latencies_ms.sort_by(f64::total_cmp);
    Ok(Level {
        workers: fleet.live,
        secs: elapsed,
        master_cpu_percent: (after.cpu_secs - before.cpu_secs) / elapsed * 100.0,
        master_rss_kib: after.rss_kib,
        master_rss_start_kib: before.rss_kib,
        bench_cpu_percent: bench_cpu / elapsed * 100.0,
        sent: window.sent,
        acked: window.acked,
        p50_ms: percentile(&window.latencies_ms, 50.0),
        p99_ms: percentile(&window.latencies_ms, 99.0),
        connect_secs,
    })
}

fn start_master(dir: &std::path::Path, max_connections: usize) -> Result<Master> {
    Master::start(
        dir,
        &["--max-connections".into(), max_connections.to_string()],
    )
}

/// The master's last log lines, for a reason to stop.
fn last_log_lines(master: &Master) -> String {
    let tail = master.log_tail();
    let lines: Vec<&str> = tail.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "; the master's log ends: {}",
        lines[lines.len().saturating_sub(3)..].join(" | ")
    )
}

/// Runs the scenario.
pub fn run(params: &Params) -> Result<Report> {
    let nofile = raise_nofile_limit()?;
    if params.ramp {
        return ramp(params, nofile);
    }
    let dir = tempfile::tempdir().context("a temp dir")?;
    let mut master = start_master(dir.path(), params.workers.max(10_000) + 64)?;
    let mut fleet = Fleet::new(master.addr)?;
    let started = Instant::now();
    fleet.grow_to(params.workers)?;
    if fleet.live < params.workers {
        bail!(
            "only {} of {} simulated workers registered ({}; {} closed); master log:\n{}",
            fleet.live,
            params.workers,
            fleet.connect_error.as_deref().unwrap_or("no connect error"),
            fleet.dead,
            master.log_tail()
        );
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the first round of heartbeats (and the registrations' commits)
    // pass before measuring.
    fleet.run_until(Instant::now() + Duration::from_secs(2).min(params.duration))?;
    let level = measure(&mut fleet, &mut master, params.duration, connect_secs)?;
    if fleet.dead > 0 || !master.running() {
        bail!(
            "{} simulated workers lost their connection; master log:\n{}",
            fleet.dead,
            master.log_tail()
        );
    }

    let mut report = Report::new("connections");
    report.note(format!(
        "{} simulated workers, 1 heartbeat/s each, measured for {:.0} s",
        params.workers, level.secs
    ));
    report.info(
        "time to connect and register all",
        format!("{connect_secs:.2} s"),
    );
    let target_applies = params.workers >= 10_000;
    let cpu = format!("{:.1} % of a core", level.master_cpu_percent);
    let rss = format!(
        "{} (at the start {})",
        mib(level.master_rss_kib),
        mib(level.master_rss_start_kib)
    );
    if target_applies {
        report.target(
            "master CPU",
            cpu,
            "<= 25 % (10,000 workers)",
            level.master_cpu_percent <= TARGET_CPU_PERCENT,
        );
        report.target(
            "master RSS",
            rss,
            "<= 64 MiB (10,000 workers)",
            level.master_rss_kib <= TARGET_RSS_KIB,
        );
    } else {
        report.info("master CPU", cpu);
        report.info("master RSS", rss);
    }
    report.info(
        "heartbeats sent / acknowledged",
        format!(
            "{} / {}",
            thousands(level.sent as f64),
            thousands(level.acked as f64)
        ),
    );
    report.info(
        "heartbeat ack p50 / p99",
        format!("{:.2} / {:.2} ms", level.p50_ms, level.p99_ms),
    );
    report.info(
        "bench CPU",
        format!("{:.1} % of a core", level.bench_cpu_percent),
    );
    report.set("open_files_limit", nofile);
    for (key, value) in level.json().as_object().into_iter().flatten() {
        report.set(key, value.clone());
    }
    report.set("target_cpu_percent", TARGET_CPU_PERCENT);
    report.set("target_rss_kib", TARGET_RSS_KIB);
    Ok(report)
}

fn ramp(params: &Params, nofile: u64) -> Result<Report> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    // The connection limit is raised out of the way: the ramp looks for
    // what the machine holds, not for the configured limit.
    let mut master = start_master(dir.path(), params.max.saturating_add(64))?;
    let mut fleet = Fleet::new(master.addr)?;
    let step = params.step.max(1);
    // The master and the bench each hold one descriptor per worker, under
    // the same limit; a few more are the master's database, poller and
    // logs. Past this the ramp would only measure the limit.
    let fd_cap = usize::try_from(nofile.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    let max = params.max.min(fd_cap);
    let mut levels: Vec<Level> = Vec::new();
    let mut target = step.min(max);
    let stop = loop {
        let started = Instant::now();
        if let Err(err) = fleet.grow_to(target) {
            break format!("{err:#}{}", last_log_lines(&master));
        }
        let connect_secs = started.elapsed().as_secs_f64();
        if fleet.live < target {
            break format!(
                "stopped at {} workers: {}{}{}",
                fleet.live,
                fleet.connect_error.as_deref().unwrap_or(if fleet.dead > 0 {
                    "the master closed connections"
                } else {
                    "workers did not register"
                }),
                fleet
                    .first_error
                    .as_deref()
                    .map(|e| format!("; the master said {e}"))
                    .unwrap_or_default(),
                last_log_lines(&master),
            );
        }
        fleet.run_until(Instant::now() + Duration::from_secs(1).min(params.hold))?;
        let level = measure(&mut fleet, &mut master, params.hold, connect_secs)?;
        let holds = level.holds() && fleet.dead == 0 && master.running();
        let summary = format!(
            "{} workers: master {:.1} % CPU, {}; p99 ack {:.1} ms",
            level.workers,
            level.master_cpu_percent,
            mib(level.master_rss_kib),
            level.p99_ms
        );
        levels.push(level);
        if !holds {
            break format!("did not hold ({summary}){}", last_log_lines(&master));
        }
        if target >= max {
            break if max < params.max {
                format!(
                    "reached the open-file limit: {nofile} descriptors for the master and for the bench, \
                     less {FD_RESERVE} for their other files"
                )
            } else {
                format!("reached --max {max}")
            };
        }
        target = (target + step).min(max);
    };
    let held: Vec<&Level> = levels.iter().filter(|l| l.holds()).collect();
    let largest = held.last().map_or(0, |l| l.workers);

    let mut report = Report::new("connections-ramp");
    report.note(format!(
        "+{step} simulated workers per level, each held {:?}; open-file limit {nofile}",
        params.hold
    ));
    for level in &levels {
        report.info(
            format!("{} workers", thousands(level.workers as f64)),
            format!(
                "{:.1} % CPU, {}, ack p99 {:.1} ms",
                level.master_cpu_percent,
                mib(level.master_rss_kib),
                level.p99_ms
            ),
        );
    }
    report.info("largest count held", thousands(largest as f64));
    report.detail(format!("the ramp stopped: {stop}"));
    report.set("open_files_limit", nofile);
    report.set("step", step);
    report.set("largest_held", largest);
    report.set("stopped_because", stop);
    report.set("levels", levels.iter().map(Level::json).collect::<Vec<_>>());
    Ok(report)
}
