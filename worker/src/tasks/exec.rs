//! Running an external command with a timeout, cancellation and capped output.
//!
//! Every command runs as the leader of its own process group, so that stopping it stops
//! everything it started too: on timeout or cancellation the whole group gets `SIGTERM`,
//! then `SIGKILL` after [`KILL_GRACE_PERIOD`]. Even a command that ends normally has its
//! group killed afterwards, so a task cannot leave background processes behind in it.
//!
//! A process that leaves the group (with `setsid`, say) is caught too: the worker is a
//! child subreaper, so such a process becomes the worker's child once its parent dies,
//! and it is killed when its task ends (see the `orphans` module and `docs/sandbox.md`).
//!
//! Three helper threads serve each run: two keep reading stdout and stderr (a child
//! whose pipe fills up would otherwise block for ever) while keeping only the first
//! [`TaskLimits::max_output_bytes`] of each, and one blocks in `wait4()` and reports the
//! exit, with the CPU time and peak memory the kernel accounted, over a channel. The
//! calling thread sleeps in a `select!` on that channel, the [`CancelToken`] and the
//! deadline, so no one polls.

use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};

use crate::state::running::Ledger;
use crate::tasks::orphans::{self, SpawnGuard};
use rustix::io::Errno;
use rustix::process::{kill_process_group, Pid, Signal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// How long a command gets between `SIGTERM` and `SIGKILL` when it is stopped: long
/// enough for a well-behaved program to flush and clean up, short enough that a stuck
/// task does not hold a worker slot.
pub const KILL_GRACE_PERIOD: Duration = Duration::from_millis(500);

use crate::tasks::limits::TaskLimits;

/// How long to keep waiting for the output pipes to close once the process group is
/// dead. Only a process that escaped the group (with `setsid`, say) can still hold them
/// open by then; its output is given up on rather than letting it hold the task for ever.
pub const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(1);

/// The size of each read from a child's output pipe.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The shell of a POSIX system, tried first for [`Command::Shell`].
const POSIX_SHELL: &str = "/bin/sh";

/// Android's own shell, tried after Termux's `$PREFIX/bin/sh` (Android has no `/bin`).
const ANDROID_SHELL: &str = "/system/bin/sh";

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A shell command line, run with `sh -c`.
    Shell(String),
    /// A program and its arguments, run directly without a shell; the first element is
    /// the program, looked up on the `PATH` when it contains no `/`.
    Argv(Vec<String>),
}

/// A flag that asks a running command (or anything else holding a clone) to stop.
///
/// Clones share the flag. Cancelling is permanent and wakes every thread waiting on the
/// token at once: the token holds the only sender of a channel that is never sent on,
/// and cancelling drops that sender, which disconnects the channel for every receiver.
#[derive(Debug, Clone)]
pub struct CancelToken {
    shared: Arc<CancelShared>,
}

#[derive(Debug)]
struct CancelShared {
    cancelled: AtomicBool,
    /// Dropped (set to `None`) by `cancel`, which disconnects `disconnected_on_cancel`.
    sender: Mutex<Option<Sender<()>>>,
    disconnected_on_cancel: Receiver<()>,
}

impl CancelToken {
    /// Creates a token that is not cancelled.
    pub fn new() -> CancelToken {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        CancelToken {
            shared: Arc::new(CancelShared {
                cancelled: AtomicBool::new(false),
                sender: Mutex::new(Some(sender)),
                disconnected_on_cancel: receiver,
            }),
        }
    }

    /// Cancels the token and wakes everything waiting on it. Cancelling twice is harmless.
    pub fn cancel(&self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        // A poisoned lock only means another thread panicked while cancelling; the
        // `Option` inside is still valid, so carry on and drop the sender.
        let sender = self
            .shared
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
    }

    /// Tells whether the token has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Blocks until the token is cancelled or `timeout` passes, and tells whether it was
    /// cancelled. Built-in tasks that just wait (such as `sleep`) use this to stay
    /// cancellable without polling.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        // The channel never carries a message, so `recv_timeout` returns only when the
        // sender is dropped by `cancel` or the timeout passes.
        let _ = self.shared.disconnected_on_cancel.recv_timeout(timeout);
        self.is_cancelled()
    }

    /// A receiver that becomes ready (disconnected) once the token is cancelled, for use
    /// in a `crossbeam_channel::select!` next to other events.
    pub(crate) fn cancelled_receiver(&self) -> &Receiver<()> {
        &self.shared.disconnected_on_cancel
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

/// What happened when a command ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The exit code, when the command exited on its own rather than by a signal.
    pub exit_code: Option<i32>,
    /// The signal that ended the command, when one did (also after a timeout or cancel).
    pub signal: Option<i32>,
    /// Standard output, up to the cap, with invalid UTF-8 replaced by U+FFFD.
    pub stdout: String,
    /// Standard error, up to the cap, with invalid UTF-8 replaced by U+FFFD.
    pub stderr: String,
    /// Whether stdout was longer than the cap (or could not be read to its end).
    pub stdout_truncated: bool,
    /// Whether stderr was longer than the cap (or could not be read to its end).
    pub stderr_truncated: bool,
    /// Whether the command was stopped because it reached its timeout.
    pub timed_out: bool,
    /// Whether the command was stopped (or never started) because of its [`CancelToken`].
    pub cancelled: bool,
    /// How long the command ran, from just before the spawn until it was reaped.
    pub elapsed: Duration,
    /// User plus system CPU time of the command and of the descendants it waited for,
    /// as the kernel accounted them (`wait4`); `None` when it never ran.
    pub cpu_time: Option<Duration>,
    /// The largest resident set size of the command or of one of the descendants it
    /// waited for, in bytes (`ru_maxrss`); `None` when it never ran.
    pub peak_memory_bytes: Option<u64>,
    /// How many processes that had left the command's process group were found still
    /// running and killed when it ended.
    pub orphans_killed: usize,
}

impl ExecOutcome {
    /// Tells whether the command ran to the end and exited with code 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && !self.cancelled
    }
}

/// Why a command could not be run at all (as opposed to running and failing, which is an
/// [`ExecOutcome`] with a non-zero exit code).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// [`Command::Argv`] was given with no program.
    #[error("the command has no program: its argument list is empty")]
    EmptyArgv,
    /// The program could not be started: it does not exist, is not executable, ...
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program that was to be started.
        program: String,
        /// Why the operating system refused.
        #[source]
        source: io::Error,
    },
    /// The run could not be recorded in the state dir (see [`crate::state::running`]), so it
    /// was not started.
    #[error("could not record the run of `{program}` in the state dir: {source}")]
    Record {
        /// The program that was to be started.
        program: String,
        /// Why the record could not be written.
        #[source]
        source: io::Error,
    },
    /// A helper thread could not be started (the process is out of threads or memory).
    /// The command, if it had started, has been killed.
    #[error("could not start a helper thread for `{program}`: {source}")]
    Thread {
        /// The program that was being run.
        program: String,
        /// Why the thread could not be created.
        #[source]
        source: io::Error,
    },
    /// Waiting for the command to end failed; its process group has been killed.
    #[error("could not wait for `{program}` to end: {source}")]
    Wait {
        /// The program that was being run.
        program: String,
        /// Why waiting failed.
        #[source]
        source: io::Error,
    },
}

/// Runs `cmd` to completion, or until `limits.timeout` passes or `cancel` is cancelled,
/// and returns what it did.
///
/// The command's stdin is `/dev/null`; its environment and working directory are this
/// process's. If `cancel` is already cancelled, nothing is started and the outcome says
/// `cancelled`.
pub fn run(
    cmd: &Command,
    limits: &TaskLimits,
    cancel: &CancelToken,
) -> Result<ExecOutcome, ExecError> {
    let command = match cmd {
        Command::Shell(script) => {
            let mut command = std::process::Command::new(shell_program());
            command.arg("-c").arg(script);
            command
        }
        Command::Argv(argv) => {
            let (program, arguments) = argv.split_first().ok_or(ExecError::EmptyArgv)?;
            let mut command = std::process::Command::new(program);
            command.args(arguments);
            command
        }
    };
    run_configured(command, Stdio::null(), limits, cancel, None)
}

/// Runs an already configured [`std::process::Command`] the way [`run`] does.
///
/// This is the hook for callers that need more than [`run`] offers (a cleared
/// environment, a private working directory, resource limits set in `pre_exec`). This
/// function sets stdin to `stdin`, and overrides stdout, stderr and the process group;
/// everything else set on `command` is kept. The command (with whatever its `pre_exec`
/// closures hold) is dropped right after the spawn, so that file descriptors meant only
/// for the child are closed in this process at once.
///
/// The run's processes get [`MARKER_ENV`] set to a value unique to the run, so that one
/// that leaves the process group is still recognised as this run's.
///
/// With a `ledger`, the run is recorded in the worker's state dir from before the spawn
/// until its group is dead, so that a later start of the worker kills it if this one
/// dies first (see [`crate::state::running`]).
pub fn run_configured(
    mut command: std::process::Command,
    stdin: Stdio,
    limits: &TaskLimits,
    cancel: &CancelToken,
    ledger: Option<&Ledger>,
) -> Result<ExecOutcome, ExecError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let started = Instant::now();
    if cancel.is_cancelled() {
        return Ok(ExecOutcome {
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: false,
            cancelled: true,
            elapsed: started.elapsed(),
            cpu_time: None,
            peak_memory_bytes: None,
            orphans_killed: 0,
        });
    }
    orphans::become_subreaper();
    let marker = new_marker();
    command.env(MARKER_ENV, &marker);
    // Before the spawn, so no process of the run exists without its record. Dropped
    // (removing the record) at the end of this function, after the group is killed.
    let mut record = match ledger.map(|ledger| ledger.begin(&marker)).transpose() {
        Ok(record) => record.flatten(),
        Err(source) => {
            return Err(ExecError::Record {
                program: program.clone(),
                source,
            })
        }
    };

    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Group id 0 makes the child the leader of a new group whose id is its pid, so
        // that one `killpg` reaches everything it starts (unless that escapes with
        // `setsid`).
        .process_group(0);
    let guard = SpawnGuard::lock();
    let spawned = command.spawn();
    drop(command);
    let mut child = spawned.map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    let process_group = ProcessGroup::of(&child);
    guard.register(process_group.id, Some(marker));
    if let Some(record) = &mut record {
        record.started(process_group.id);
    }

    // From here on, every early return must kill the group and reap the child, or it
    // would be left running (and later as a zombie) with nobody watching it.
    let output_readers = match start_output_readers(&mut child, &program, limits.max_output_bytes) {
        Ok(readers) => readers,
        Err(error) => {
            process_group.signal(Signal::KILL);
            // The child was just killed, so this wait returns at once; its result adds
            // nothing to the thread error being reported.
            let _ = wait_with_usage(process_group.id);
            orphans::unregister(process_group.id);
            return Err(error);
        }
    };
    // On failure `spawn_waiter` has already killed the group and reaped the child.
    let exit_receiver = spawn_waiter(child, &program).inspect_err(|_| {
        orphans::unregister(process_group.id);
    })?;

    let deadline = limits
        .timeout
        .map_or_else(crossbeam_channel::never, crossbeam_channel::after);
    let mut timed_out = false;
    let mut cancelled = false;
    let wait_result = crossbeam_channel::select! {
        recv(exit_receiver) -> message => flatten_exit(message),
        recv(deadline) -> _ => {
            timed_out = true;
            stop_group(process_group, &exit_receiver)
        },
        recv(cancel.cancelled_receiver()) -> _ => {
            cancelled = true;
            stop_group(process_group, &exit_receiver)
        },
    };

    // The leader is gone; anything it left running in its group goes too, so that a task
    // cannot outlive its slot through a background process, and so does anything that
    // left the group and has become this process's child.
    process_group.signal(Signal::KILL);
    let orphans_killed = orphans::unregister_and_sweep(process_group.id);
    let elapsed = started.elapsed();

    let (status, usage) = wait_result.map_err(|source| ExecError::Wait {
        program: program.clone(),
        source,
    })?;
    let (stdout, stderr) = output_readers.collect_output(Instant::now() + OUTPUT_DRAIN_GRACE);
    Ok(ExecOutcome {
        exit_code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&stdout.bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.bytes).into_owned(),
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        timed_out,
        cancelled,
        elapsed,
        cpu_time: Some(usage.cpu_time),
        peak_memory_bytes: Some(usage.peak_memory_bytes),
        orphans_killed,
    })
}

/// The name of the environment variable that tags a sandboxed run's processes.
pub const MARKER_ENV: &str = crate::device::proc::MARKER_ENV;

/// A marker no other run uses: the pid, a random number drawn once per process (so a
/// later process with the same pid, a restarted worker say, never repeats an earlier
/// one's markers; the `running` records rely on that) and a sequence number.
fn new_marker() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}{seq}", marker_prefix())
}

/// What every marker this process hands out starts with: its pid and a random number
/// drawn once, so that neither a later worker that gets the same pid nor anything else
/// that sets the variable makes markers the sweep would take for this worker's own.
pub(crate) fn marker_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!("{}-{:016x}-", std::process::id(), fastrand::u64(..)))
}

/// What the kernel accounted for a reaped child.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_time: Duration,
    peak_memory_bytes: u64,
}

/// What the waiter thread reports: the exit status and the accounting of the leader.
type Exit = io::Result<(ExitStatus, Usage)>;

/// Waits for the child `pid` with `wait4`, which also returns its resource usage
/// (std's `Child::wait` does not). This stays a libc call: rustix's `waitpid` and
/// `waitid` do not return the resource usage.
fn wait_with_usage(pid: libc::pid_t) -> Exit {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid places for wait4 to write to.
        let result = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if result == pid {
            let seconds = |time: libc::timeval| {
                Duration::from_secs(u64::try_from(time.tv_sec).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(time.tv_usec).unwrap_or(0))
            };
            return Ok((
                ExitStatus::from_raw(status),
                Usage {
                    cpu_time: seconds(usage.ru_utime) + seconds(usage.ru_stime),
                    // Linux reports ru_maxrss in kibibytes.
                    peak_memory_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
                },
            ));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Returns the shell used for [`Command::Shell`], the first that exists of: `/bin/sh`
/// (every POSIX system), Termux's `$PREFIX/bin/sh` (Android has no `/bin`; Termux's
/// shell sees Termux's programs), Android's `/system/bin/sh`; else plain `sh`, looked up
/// on the task's `PATH`.
pub fn shell_program() -> PathBuf {
    let candidates = [
        PathBuf::from(POSIX_SHELL),
        crate::device::profile::termux_prefix().join("bin/sh"),
        PathBuf::from(ANDROID_SHELL),
    ];
    candidates
        .into_iter()
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from("sh"))
}

/// The process group a child leads, for signalling all its members at once.
#[derive(Debug, Clone, Copy)]
struct ProcessGroup {
    id: libc::pid_t,
}

impl ProcessGroup {
    /// The group of a child spawned with `process_group(0)`, whose id is the child's pid.
    fn of(child: &Child) -> ProcessGroup {
        // Pids fit in `pid_t` on every Unix; the conversion cannot lose anything real.
        let id = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
        ProcessGroup { id }
    }

    /// Sends `signal` to every process in the group. A group that no longer exists
    /// (`ESRCH`) is what we want anyway; any other failure is only logged, because there
    /// is nothing more the caller could do about it.
    fn signal(self, signal: Signal) {
        // Never signal group 0 or 1 (our own group, or init's) if a pid were ever odd.
        let Some(group) = Pid::from_raw(self.id).filter(|_| self.id > 1) else {
            return;
        };
        if let Err(error) = kill_process_group(group, signal) {
            if error != Errno::SRCH {
                let signal = signal.as_raw();
                log::warn!(
                    "could not send signal {signal} to process group {}: {error}",
                    self.id
                );
            }
        }
    }
}

/// Asks the group to stop with `SIGTERM`, gives it [`KILL_GRACE_PERIOD`], then kills it
/// with `SIGKILL`, and returns the leader's exit status once it has been reaped.
fn stop_group(process_group: ProcessGroup, exit_receiver: &Receiver<Exit>) -> Exit {
    process_group.signal(Signal::TERM);
    match exit_receiver.recv_timeout(KILL_GRACE_PERIOD) {
        Ok(result) => result,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
            process_group.signal(Signal::KILL);
            flatten_exit(exit_receiver.recv())
        }
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(waiter_vanished()),
    }
}

/// Turns what the waiter thread sent (or its disappearance) into one result.
fn flatten_exit(message: Result<Exit, crossbeam_channel::RecvError>) -> Exit {
    message.unwrap_or_else(|_| Err(waiter_vanished()))
}

/// The error reported when the waiter thread ended without sending the exit status,
/// which only happens if it panicked.
fn waiter_vanished() -> io::Error {
    io::Error::other("the thread waiting for the child ended without reporting its exit")
}

/// Moves the child to a thread that blocks in `wait()` and sends the result, so that the
/// caller can wait for the exit, a timeout and a cancel all at once.
fn spawn_waiter(child: Child, program: &str) -> Result<Receiver<Exit>, ExecError> {
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let process_group = ProcessGroup::of(&child);
    // The child is shared with the closure through an `Option` so that, if the thread
    // cannot be created, it can be taken back here, killed and reaped.
    let shared_child = Arc::new(Mutex::new(Some(child)));
    let child_for_thread = Arc::clone(&shared_child);
    let spawned = thread::Builder::new()
        .name("exec-wait".to_string())
        .spawn(move || {
            let child = child_for_thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(child) = child {
                // The receiver may be gone if the caller returned early; the child has
                // been reaped all the same, which is what this thread is for. The std
                // `Child` is only dropped: it never waits on its own.
                let _ = sender.send(wait_with_usage(ProcessGroup::of(&child).id));
            }
        });
    match spawned {
        Ok(_) => Ok(receiver),
        Err(source) => {
            process_group.signal(Signal::KILL);
            let child = shared_child
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if child.is_some() {
                let _ = wait_with_usage(process_group.id);
            }
            Err(ExecError::Thread {
                program: program.to_string(),
                source,
            })
        }
    }
}

/// What a reader thread has kept of one output stream.
#[derive(Debug, Default)]
struct CapturedStream {
    bytes: Vec<u8>,
    truncated: bool,
}

/// The two output reader threads of one run.
struct OutputReaders {
    stdout: Arc<Mutex<CapturedStream>>,
    stderr: Arc<Mutex<CapturedStream>>,
    /// Disconnects when both readers have finished (each holds a sender it never uses).
    all_done: Receiver<()>,
}

impl OutputReaders {
    /// Waits until both streams reach end-of-file or `deadline` passes, and returns what
    /// was captured. A stream whose reader was still going at the deadline is marked
    /// truncated, since its end was never seen.
    fn collect_output(self, deadline: Instant) -> (CapturedStream, CapturedStream) {
        let finished = matches!(
            self.all_done.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if !finished {
            log::warn!(
                "output pipes still open {OUTPUT_DRAIN_GRACE:?} after the command's process \
                 group ended; a process that left the group holds them, so the rest of its \
                 output is dropped"
            );
        }
        let take = |stream: &Mutex<CapturedStream>| {
            let mut captured =
                std::mem::take(&mut *stream.lock().unwrap_or_else(PoisonError::into_inner));
            captured.truncated |= !finished;
            captured
        };
        (take(&self.stdout), take(&self.stderr))
    }
}

/// Starts one reader thread for each of the child's output pipes.
fn start_output_readers(
    child: &mut Child,
    program: &str,
    max_output_bytes: usize,
) -> Result<OutputReaders, ExecError> {
    let (done_sender, all_done) = crossbeam_channel::bounded::<()>(0);
    let stdout = Arc::new(Mutex::new(CapturedStream::default()));
    let stderr = Arc::new(Mutex::new(CapturedStream::default()));
    let thread_error = |source| ExecError::Thread {
        program: program.to_string(),
        source,
    };
    if let Some(pipe) = child.stdout.take() {
        spawn_reader(
            "exec-stdout",
            pipe,
            Arc::clone(&stdout),
            max_output_bytes,
            done_sender.clone(),
        )
        .map_err(thread_error)?;
    }
    if let Some(pipe) = child.stderr.take() {
        spawn_reader(
            "exec-stderr",
            pipe,
            Arc::clone(&stderr),
            max_output_bytes,
            done_sender.clone(),
        )
        .map_err(thread_error)?;
    }
    drop(done_sender);
    Ok(OutputReaders {
        stdout,
        stderr,
        all_done,
    })
}

/// Starts a thread that reads `pipe` to its end, keeping the first `max_bytes` in
/// `captured` and discarding the rest. It never stops reading early, because a child
/// whose pipe is full blocks and would then never finish on its own.
fn spawn_reader(
    name: &str,
    mut pipe: impl Read + Send + 'static,
    captured: Arc<Mutex<CapturedStream>>,
    max_bytes: usize,
    done: Sender<()>,
) -> io::Result<()> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Holding `done` until the thread ends is what tells the collector we finished.
            let _done = done;
            let mut buffer = vec![0u8; READ_CHUNK_BYTES];
            loop {
                let read = match pipe.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        log::debug!("reading a child's output failed: {error}");
                        captured
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .truncated = true;
                        break;
                    }
                };
                let mut stream = captured.lock().unwrap_or_else(PoisonError::into_inner);
                let room = max_bytes.saturating_sub(stream.bytes.len());
                let kept = read.min(room);
                stream.bytes.extend_from_slice(&buffer[..kept]);
                if kept < read {
                    stream.truncated = true;
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::limits::DEFAULT_MAX_OUTPUT_BYTES;
    use std::path::Path;

    fn shell(script: &str) -> Command {
        Command::Shell(script.to_string())
    }

    fn with_timeout(timeout: Duration) -> TaskLimits {
        TaskLimits {
            timeout: Some(timeout),
            ..TaskLimits::default()
        }
    }

    fn run_simply(command: &Command) -> ExecOutcome {
        run(command, &TaskLimits::default(), &CancelToken::new()).expect("command runs")
    }

    /// Tells whether a process is gone for good: no such pid, or a zombie. A killed
    /// grandchild whose parent already died is re-parented to pid 1, and in a container
    /// pid 1 may never reap it, so a zombie counts as gone (it runs no code any more).
    fn process_is_gone(pid: libc::pid_t) -> bool {
        // Signal 0 only checks whether the process exists; nothing is sent.
        let Some(process) = Pid::from_raw(pid) else {
            return false;
        };
        if let Err(error) = rustix::process::test_kill_process(process) {
            return error == Errno::SRCH;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the first field after the parenthesised command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, Some("Z") | Some("X"))
    }

    /// How long the timeout tests give a script to set its trap or write its pid file
    /// before the timeout strikes: a shell on a loaded two-core machine can take more
    /// than the few hundred milliseconds that suffice when it is idle, and a timeout
    /// that strikes first kills the script before it is what the test is about.
    const TIME_TO_GET_READY: Duration = Duration::from_secs(3);

    /// The bound on how long a timed-out run and the death of its processes may take:
    /// far less than the two-minute `sleep` they would otherwise wait for, and far more
    /// than a loaded machine needs to deliver a signal.
    const LONG_BEFORE_THE_SLEEP_ENDS: Duration = Duration::from_secs(60);

    /// Polls until `condition` holds or `limit` passes, and tells whether it held.
    fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let give_up = Instant::now() + limit;
        while Instant::now() < give_up {
            if condition() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        condition()
    }

    fn read_pid(path: &Path) -> libc::pid_t {
        let text = std::fs::read_to_string(path).expect("pid file written");
        text.trim().parse().expect("pid file holds a pid")
    }

    #[test]
    fn echo_captures_stdout_and_exit_code_zero() {
        let outcome = run_simply(&shell("echo hi"));
        assert_eq!(outcome.stdout, "hi\n");
        assert_eq!(outcome.stderr, "");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(outcome.signal, None);
        assert!(outcome.succeeded());
        assert!(!outcome.timed_out && !outcome.cancelled);
        assert!(!outcome.stdout_truncated && !outcome.stderr_truncated);
    }

    #[test]
    fn exit_code_is_reported() {
        let outcome = run_simply(&shell("exit 3"));
        assert_eq!(outcome.exit_code, Some(3));
        assert_eq!(outcome.signal, None);
        assert!(!outcome.succeeded());
    }

    #[test]
    fn stderr_is_captured_separately() {
        let outcome = run_simply(&shell("echo out; echo err >&2"));
        assert_eq!(outcome.stdout, "out\n");
        assert_eq!(outcome.stderr, "err\n");
    }

    #[test]
    fn death_by_signal_is_reported() {
        let outcome = run_simply(&shell("kill -9 $$"));
        assert_eq!(outcome.exit_code, None);
        assert_eq!(outcome.signal, Some(libc::SIGKILL));
        assert!(!outcome.timed_out && !outcome.cancelled);
    }

    #[test]
    fn argv_runs_without_a_shell() {
        let command = Command::Argv(vec![
            "printf".to_string(),
            "%s|%s".to_string(),
            "a b".to_string(),
            "$HOME".to_string(),
        ]);
        let outcome = run_simply(&command);
        assert_eq!(outcome.exit_code, Some(0));
        // No shell means no word splitting and no variable expansion.
        assert_eq!(outcome.stdout, "a b|$HOME");
    }

    #[test]
    fn stdin_is_empty() {
        let outcome = run_simply(&shell("wc -c"));
        assert_eq!(outcome.stdout.trim(), "0");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let command = Command::Argv(vec!["/nonexistent/retire-cluster-no-such-program".into()]);
        match run(&command, &TaskLimits::default(), &CancelToken::new()) {
            Err(ExecError::Spawn { program, source }) => {
                assert_eq!(program, "/nonexistent/retire-cluster-no-such-program");
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }

    #[test]
    fn empty_argv_is_an_error() {
        let result = run(
            &Command::Argv(Vec::new()),
            &TaskLimits::default(),
            &CancelToken::new(),
        );
        assert!(matches!(result, Err(ExecError::EmptyArgv)), "{result:?}");
    }

    #[test]
    fn timeout_kills_a_long_sleep() {
        let outcome = run(
            &shell("sleep 120"),
            &with_timeout(Duration::from_millis(200)),
            &CancelToken::new(),
        )
        .expect("command runs");
        assert!(outcome.timed_out);
        assert!(!outcome.cancelled);
        assert_eq!(outcome.exit_code, None);
        assert_eq!(outcome.signal, Some(libc::SIGTERM));
        assert!(outcome.elapsed >= Duration::from_millis(200), "{outcome:?}");
        assert!(outcome.elapsed < LONG_BEFORE_THE_SLEEP_ENDS, "{outcome:?}");
    }

    #[test]
    fn timeout_escalates_to_sigkill_when_sigterm_is_ignored() {
        let outcome = run(
            &shell("trap '' TERM; sleep 120; echo not reached"),
            &with_timeout(TIME_TO_GET_READY),
            &CancelToken::new(),
        )
        .expect("command runs");
        assert!(outcome.timed_out);
        assert_eq!(outcome.signal, Some(libc::SIGKILL));
        assert!(outcome.elapsed >= TIME_TO_GET_READY + KILL_GRACE_PERIOD);
        assert!(outcome.elapsed < LONG_BEFORE_THE_SLEEP_ENDS, "{outcome:?}");
    }

    #[test]
    fn timeout_kills_grandchildren_that_ignore_sigterm() {
        let directory = tempfile::tempdir().expect("temp dir");
        let pid_file = directory.path().join("grandchild.pid");
        let script = format!(
            "sh -c 'trap \"\" TERM; sleep 120' & echo $! > '{}'; wait",
            pid_file.display()
        );
        let outcome = run(
            &shell(&script),
            &with_timeout(TIME_TO_GET_READY),
            &CancelToken::new(),
        )
        .expect("command runs");
        assert!(outcome.timed_out);
        assert!(outcome.elapsed < LONG_BEFORE_THE_SLEEP_ENDS, "{outcome:?}");
        let grandchild = read_pid(&pid_file);
        assert!(
            eventually(LONG_BEFORE_THE_SLEEP_ENDS, || process_is_gone(grandchild)),
            "grandchild {grandchild} survived the timeout"
        );
    }

    #[test]
    fn background_process_is_killed_after_a_normal_exit() {
        let directory = tempfile::tempdir().expect("temp dir");
        let pid_file = directory.path().join("background.pid");
        // The background sleep's output goes to /dev/null so that only the process
        // group clean-up, not the pipe, is what this test depends on.
        let script = format!(
            "sleep 30 >/dev/null 2>&1 & echo $! > '{}'; echo done",
            pid_file.display()
        );
        let outcome = run_simply(&shell(&script));
        assert_eq!(outcome.stdout, "done\n");
        assert_eq!(outcome.exit_code, Some(0));
        let background = read_pid(&pid_file);
        assert!(
            eventually(Duration::from_secs(5), || process_is_gone(background)),
            "background process {background} outlived its task"
        );
    }

    #[test]
    fn a_process_that_escapes_the_group_with_setsid_is_killed_at_the_end() {
        let directory = tempfile::tempdir().expect("temp dir");
        let pid_file = directory.path().join("escaped.pid");
        let handshake = directory.path().join("handshake");
        // `setsid` moves the sleep out of the process group, so killing the group cannot
        // reach it, and it keeps stdout open. The outer shell blocks on a FIFO until the
        // escapee has left the group, because killing the group after a normal exit
        // would otherwise win the race. Once the outer shell exits, the escapee becomes
        // this process's child (it is a subreaper), and the sweep kills it.
        let script = format!(
            "mkfifo '{handshake}'; \
             setsid sh -c 'echo $$ > \"{handshake}\"; exec sleep 30' & \
             read escaped < '{handshake}'; echo $escaped > '{pid_file}'; echo started",
            handshake = handshake.display(),
            pid_file = pid_file.display(),
        );
        let before = Instant::now();
        let outcome = run_simply(&shell(&script));
        let waited = before.elapsed();
        let escaped = read_pid(&pid_file);
        let gone = process_is_gone(escaped);
        if !gone {
            // This only cleans up the test's process.
            if let Some(process) = Pid::from_raw(escaped) {
                let _ = rustix::process::kill_process(process, Signal::KILL);
            }
        }
        assert!(gone, "the escaped process {escaped} outlived its task");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(outcome.stdout, "started\n", "{outcome:?}");
        assert!(!outcome.stdout_truncated, "{outcome:?}");
        assert!(outcome.orphans_killed >= 1, "{outcome:?}");
        assert!(
            waited < OUTPUT_DRAIN_GRACE + Duration::from_secs(5),
            "waited {waited:?} for the escaped process"
        );
    }

    #[test]
    fn cpu_time_and_peak_memory_are_reported() {
        let outcome = run_simply(&shell(
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; head -c 20000000 /dev/zero | tail -c 1 >/dev/null",
        ));
        assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
        assert!(
            outcome.cpu_time.expect("cpu time") > Duration::ZERO,
            "{outcome:?}"
        );
        // `tail` holds at least a few megabytes while it reads; the shell's own RSS is
        // far smaller, so this proves the descendants' peak is counted.
        assert!(
            outcome.peak_memory_bytes.expect("peak") > 1_000_000,
            "{outcome:?}"
        );
    }

    #[test]
    fn output_over_the_cap_is_truncated_and_the_child_still_finishes() {
        let outcome = run(
            &shell("head -c 3000000 /dev/zero; echo tail >&2"),
            &TaskLimits {
                timeout: Some(Duration::from_secs(30)),
                max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                ..TaskLimits::default()
            },
            &CancelToken::new(),
        )
        .expect("command runs");
        // Exit code 0 and no timeout prove the reader kept draining past the cap.
        assert_eq!(outcome.exit_code, Some(0));
        assert!(!outcome.timed_out);
        assert_eq!(outcome.stdout.len(), DEFAULT_MAX_OUTPUT_BYTES);
        assert!(outcome.stdout_truncated);
        assert_eq!(outcome.stderr, "tail\n");
        assert!(!outcome.stderr_truncated);
    }

    #[test]
    fn small_cap_keeps_exactly_the_first_bytes() {
        let outcome = run(
            &shell("printf 0123456789"),
            &TaskLimits {
                timeout: None,
                max_output_bytes: 4,
                ..TaskLimits::default()
            },
            &CancelToken::new(),
        )
        .expect("command runs");
        assert_eq!(outcome.stdout, "0123");
        assert!(outcome.stdout_truncated);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let outcome = run_simply(&shell("printf 'a\\377b'"));
        assert_eq!(outcome.stdout, "a\u{FFFD}b");
    }

    #[test]
    fn cancel_from_another_thread_stops_a_long_sleep() {
        let directory = tempfile::tempdir().expect("temp dir");
        let started_marker = directory.path().join("started");
        let cancel = CancelToken::new();
        let canceller = {
            let cancel = cancel.clone();
            let started_marker = started_marker.clone();
            thread::spawn(move || {
                // Cancel only once the command is really running, so that the test
                // exercises stopping a live process rather than the not-started path.
                let started = eventually(Duration::from_secs(10), || started_marker.exists());
                cancel.cancel();
                started
            })
        };
        let script = format!("touch '{}'; exec sleep 30", started_marker.display());
        let outcome = run(&shell(&script), &TaskLimits::default(), &cancel).expect("runs");
        assert!(canceller.join().expect("canceller thread"), "never started");
        assert!(outcome.cancelled);
        assert!(!outcome.timed_out);
        assert_eq!(outcome.signal, Some(libc::SIGTERM));
        assert!(outcome.elapsed < Duration::from_secs(10), "{outcome:?}");
    }

    #[test]
    fn already_cancelled_token_starts_nothing() {
        let directory = tempfile::tempdir().expect("temp dir");
        let marker = directory.path().join("ran");
        let cancel = CancelToken::new();
        cancel.cancel();
        let script = format!("touch '{}'", marker.display());
        let outcome = run(&shell(&script), &TaskLimits::default(), &cancel).expect("runs");
        assert!(outcome.cancelled);
        assert_eq!(outcome.exit_code, None);
        assert!(!marker.exists());
    }

    #[test]
    fn cancel_token_is_shared_by_clones_and_wakes_waiters() {
        let token = CancelToken::new();
        let clone = token.clone();
        assert!(!clone.is_cancelled());
        assert!(!token.wait_timeout(Duration::from_millis(1)));
        let waiter = {
            let clone = clone.clone();
            thread::spawn(move || clone.wait_timeout(Duration::from_secs(30)))
        };
        let before = Instant::now();
        token.cancel();
        token.cancel();
        assert!(waiter.join().expect("waiter thread"));
        assert!(before.elapsed() < Duration::from_secs(10));
        assert!(clone.is_cancelled());
        assert!(clone.wait_timeout(Duration::from_secs(30)));
    }

    #[test]
    fn errors_name_the_program() {
        let error = ExecError::Spawn {
            program: "frobnicate".to_string(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(error.to_string().contains("frobnicate"), "{error}");
    }
}
