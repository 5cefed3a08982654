//! Starting the real `retire-master` and `retire-worker` binaries, and
//! reading what a process costs from `/proc`.

use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use tests::launch::{master_command, wait_listening, worker_command};

/// Environment variable that overrides where the cluster's binaries are
/// looked for (by default: the directory of the `bench` executable).
pub const BIN_DIR_VAR: &str = "RETIRE_BENCH_BIN_DIR";

/// Where workers keep their state, when set (see [`Worker::start`]).
pub const STATE_DIR_VAR: &str = "RETIRE_STATE_DIR";

/// How long the master may take to print its listening line.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The path of one of the cluster's binaries: next to the `bench`
/// executable (so a release bench runs release binaries and a debug bench
/// debug ones), or in `$RETIRE_BENCH_BIN_DIR`.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("the bench cannot find its own path")?;
            // target/<profile>/bench, or target/<profile>/deps/bench-HASH.
            let mut dir = exe
                .parent()
                .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        let profile = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let build = if profile == "debug" {
            "cargo build --workspace --bins"
        } else {
            "cargo build --release --workspace --bins"
        };
        bail!(
            "{} is missing: build the cluster's binaries first, with the bench's profile: \
             `{build}` (or point {BIN_DIR_VAR} at a directory that holds them)",
            path.display()
        );
    }
    Ok(path)
}

/// A running binary of the cluster with its log file, killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `retire-master`, killed when dropped.
pub struct Master {
    process: Process,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Deref for Master {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Master {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Master {
    /// Starts a master on `127.0.0.1:0` with its database in `dir/db` and
    /// its log in `dir/master.log`, plus `extra` flags; waits for its
    /// `retire-master listening on ADDR` line.
    pub fn start(dir: &Path, extra: &[String]) -> Result<Master> {
        // The scenarios measure the steady state. Authentication costs
        // one handshake when a connection opens and nothing per message
        // after it, so it is left out here (its cost under a flood is
        // measured by the e2e security tests).
        let mut flags = vec!["--no-auth".to_string()];
        flags.extend_from_slice(extra);
        Master::spawn(dir, &flags)
    }

    /// Starts a master like [`Master::start`] but with authentication on,
    /// as it runs by default (the `attack` scenario: who may do what
    /// before authenticating is what it measures). Its tokens are in
    /// `dir/db/secrets/`.
    pub fn start_authenticated(dir: &Path, extra: &[String]) -> Result<Master> {
        Master::spawn(dir, extra)
    }

    fn spawn(dir: &Path, extra: &[String]) -> Result<Master> {
        let log = dir.join("master.log");
        let stderr = std::fs::File::create(&log).context("create the master's log")?;
        let mut command = Command::new(binary("retire-master")?);
        let child = master_command(&mut command, "127.0.0.1:0", &dir.join("db"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .current_dir(dir)
            .stderr(stderr)
            .spawn()
            .context("start retire-master")?;
        let mut process = Process { child, log };
        match wait_listening(&mut process.child, START_PATIENCE) {
            Ok(addr) => Ok(Master { process, addr }),
            Err(error) => bail!("{error}; its log says:\n{}", process.log_tail()),
        }
    }
}

/// A running `retire-worker`, killed when dropped.
pub struct Worker(Process);

impl Deref for Worker {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.0
    }
}

impl DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.0
    }
}

impl Worker {
    /// Starts a worker joining `master` as `id` with `slots` slots; its log
    /// goes to `dir/ID.log` and its state (the outbox) to `dir/state`, or,
    /// when `$RETIRE_STATE_DIR` is set (to put the outbox on another disk,
    /// such as tmpfs), to a directory named after `dir` inside it. Either
    /// way two bench runs at once never share a worker's state dir, which
    /// its lock would refuse.
    pub fn start(dir: &Path, master: SocketAddr, id: &str, slots: usize) -> Result<Worker> {
        Worker::spawn(dir, master, id, slots, None)
    }

    /// Starts a worker like [`Worker::start`] that enrolls with the join
    /// token `token` (given through the environment, as the printed join
    /// command does), for a master with authentication on.
    pub fn start_with_token(
        dir: &Path,
        master: SocketAddr,
        id: &str,
        slots: usize,
        token: &str,
    ) -> Result<Worker> {
        Worker::spawn(dir, master, id, slots, Some(token))
    }

    fn spawn(
        dir: &Path,
        master: SocketAddr,
        id: &str,
        slots: usize,
        token: Option<&str>,
    ) -> Result<Worker> {
        let log = dir.join(format!("{id}.log"));
        let stderr = std::fs::File::create(&log).context("create the worker's log")?;
        let state_dir = match std::env::var_os(STATE_DIR_VAR) {
            Some(base) => Path::new(&base).join(dir.file_name().unwrap_or_default()),
            None => dir.join("state"),
        };
        let mut command = worker_command(&binary("retire-worker")?, master, id, slots);
        if let Some(token) = token {
            command.env("RETIRE_JOIN_TOKEN", token);
        }
        let child = command
            .arg("--state-dir")
            .arg(&state_dir)
            .env("RUST_LOG", "warn")
            .current_dir(dir)
            .stderr(stderr)
            .spawn()
            .context("start retire-worker")?;
        Ok(Worker(Process { child, log }))
    }
}

/// What a process has cost so far, from `/proc/PID`.
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    /// User plus system CPU time, in seconds (10 ms resolution).
    pub cpu_secs: f64,
    /// Resident set size now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size, in KiB.
    pub peak_rss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Context switches of all its threads, voluntary and not: each
    /// voluntary one is a wake-up after a sleep.
    pub context_switches: u64,
    /// Per thread: its name, CPU seconds and context switches.
    pub per_thread: Vec<(String, f64, u64)>,
}

impl ProcSample {
    /// CPU seconds and context switches of each thread between `before`
    /// and `self`, by thread name (threads of one name are added up),
    /// busiest first.
    pub fn threads_since(&self, before: &ProcSample) -> Vec<(String, f64, u64)> {
        let total = |sample: &ProcSample| {
            let mut by_name: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
            for (name, cpu, switches) in &sample.per_thread {
                let entry = by_name.entry(name.clone()).or_default();
                entry.0 += cpu;
                entry.1 += switches;
            }
            by_name
        };
        let earlier = total(before);
        let mut out: Vec<(String, f64, u64)> = total(self)
            .into_iter()
            .map(|(name, (cpu, switches))| {
                let (cpu0, switches0) = earlier.get(&name).copied().unwrap_or_default();
                (name, cpu - cpu0, switches.saturating_sub(switches0))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

impl ProcSample {
    /// Reads the process's current figures.
    pub fn of(pid: u32) -> Result<ProcSample> {
        let cpu_secs = cpu_of(&format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        let mut sample = ProcSample {
            cpu_secs,
            rss_kib: status_field(&status, "VmRSS:"),
            peak_rss_kib: status_field(&status, "VmHWM:"),
            threads: status_field(&status, "Threads:"),
            context_switches: 0,
            per_thread: Vec::new(),
        };
        // /proc/PID/status counts the main thread only; sum every thread.
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let dir = task.path();
                let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
                    continue;
                };
                let switches = status_field(&status, "voluntary_ctxt_switches:")
                    + status_field(&status, "nonvoluntary_ctxt_switches:");
                sample.context_switches += switches;
                let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                let cpu = cpu_of(&dir.join("stat").to_string_lossy()).unwrap_or(0.0);
                sample
                    .per_thread
                    .push((name.trim().to_string(), cpu, switches));
            }
        }
        Ok(sample)
    }
}

/// User plus system CPU seconds from a `stat` file.
fn cpu_of(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name may hold spaces and parentheses: fields are
    // counted after the last ')'. Field 3 (state) is the first there.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("odd {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("odd {path}"))
    };
    // utime is field 14 and stime field 15, i.e. 11 and 12 after state.
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks_per_sec())
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) this bench process has used so far.
pub fn own_cpu_secs() -> f64 {
    ProcSample::of(std::process::id()).map_or(0.0, |s| s.cpu_secs)
}

/// Raises this process's soft limit on open files to its hard limit (the
/// processes it starts inherit it); returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
