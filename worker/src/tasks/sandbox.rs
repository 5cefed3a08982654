//! The sandbox every external process of a task runs in.
//!
//! [`exec`] gives each command its own process group, a timeout, cancel,
//! capped output, and the kill of everything it started (including processes that left
//! the group). On top of that, a [`Sandbox`] gives each run:
//!
//! - a private working directory (also `HOME` and `TMPDIR`), removed afterwards;
//! - stdin from `/dev/null`, or from the task's payload for handlers;
//! - a cleared environment with only [`ENV_ALLOWLIST`] (plus what the owner adds)
//!   passed through, so no credential of the worker reaches a task;
//! - resource limits set in the child before `exec`: CPU seconds, address space, file
//!   size, open files, no core dumps, and a bound on the number of processes;
//! - `no_new_privs`, and Landlock where the kernel offers it, deny by default: the task
//!   reads only the system directories ([`SYSTEM_READ`]) and what the owner adds,
//!   writes only its own directory (and what the owner adds), cannot signal processes
//!   outside its sandbox (ABI 6 and later) and, for types whose network the owner
//!   turned off, cannot use TCP (ABI 4 and later);
//! - a different, unprivileged user when the worker itself runs as root.
//!
//! Each run reports what was actually enforced ([`Enforcement`]), because the platform
//! decides part of it: Android forbids Landlock (its seccomp policy kills a process that
//! calls it), older kernels lack it, and a process bound means little for root.
//! `docs/sandbox.md` has the table.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;

use serde::Serialize;

use crate::state::running::Ledger;
use crate::tasks::exec::{self, CancelToken, ExecError, ExecOutcome};
use crate::tasks::limits::TaskLimits;
use rustix::process::{Resource, Rlimit};

/// Environment variables passed from the worker to a task when they are set. Everything
/// else, including every credential the worker holds, is dropped. `LC_*` variables pass
/// too. The Android names are what Termux programs need to find their runtime.
pub const ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "PREFIX",
    "TERMUX_VERSION",
    "ANDROID_ROOT",
    "ANDROID_DATA",
    "ANDROID_ART_ROOT",
    "ANDROID_I18N_ROOT",
    "ANDROID_TZDATA_ROOT",
    "ANDROID_RUNTIME_ROOT",
    "BOOTCLASSPATH",
];

/// The `PATH` a task gets when the worker has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The user and group id tasks run as when the worker runs as root (`nobody`).
pub const DEFAULT_TASK_ID: u32 = 65534;

/// The file descriptor on which a handler can write progress lines.
pub const PROGRESS_FD: libc::c_int = 3;

/// The longest progress line kept; longer lines are cut.
pub const MAX_PROGRESS_LINE: usize = 4096;

/// The system directories a task may read and execute from under Landlock (those that
/// exist here): programs, libraries, configuration, and the kernel's views. Nothing
/// else is readable unless the owner adds it (`[sandbox] read`): not `/home`, `/root`,
/// `/tmp`, `/var`, `/run`, `/mnt` or `/media`.
pub const SYSTEM_READ: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys",
];

/// Device files every task may read and write (with their ioctls).
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Files in [`SYSTEM_READ`] that are often symbolic links to a place outside it, whose
/// targets a task may read too: `/etc/resolv.conf` points into `/run` under
/// systemd-resolved and NetworkManager, and name resolution needs it.
pub const FOLLOWED_LINKS: &[&str] = &["/etc/resolv.conf", "/etc/localtime"];

/// How the owner set the sandbox up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Where the private task directories are made.
    pub work_dir: PathBuf,
    /// Whether to confine tasks with Landlock where the kernel offers it.
    pub landlock: bool,
    /// The user and group tasks run as when the worker runs as root.
    pub task_user: (u32, u32),
    /// More environment variables to pass through, beyond [`ENV_ALLOWLIST`].
    pub pass_env: Vec<String>,
    /// More paths tasks may read and execute from, beyond [`SYSTEM_READ`].
    pub read: Vec<PathBuf>,
    /// More paths tasks may read and write, beyond their own directory.
    pub write: Vec<PathBuf>,
    /// Whether tasks may use TCP unless their type says otherwise.
    pub network: bool,
}

/// The directory for temporary files: `$TMPDIR` when set (Termux sets it to
/// `$PREFIX/tmp`), else `/tmp`, else, where there is no `/tmp` (Android), Termux's
/// `$PREFIX/tmp` when it exists.
pub fn temp_dir() -> PathBuf {
    if std::env::var_os("TMPDIR").is_some_and(|dir| !dir.is_empty()) {
        return std::env::temp_dir();
    }
    let tmp = PathBuf::from("/tmp");
    let termux = crate::device::profile::termux_prefix().join("tmp");
    if !tmp.is_dir() && termux.is_dir() {
        termux
    } else {
        tmp
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let euid = rustix::process::geteuid().as_raw();
        SandboxConfig {
            work_dir: temp_dir().join(format!("retire-worker-{euid}")),
            landlock: true,
            task_user: (DEFAULT_TASK_ID, DEFAULT_TASK_ID),
            pass_env: Vec::new(),
            read: Vec::new(),
            write: Vec::new(),
            network: true,
        }
    }
}

/// The paths a task may reach under Landlock besides its own directory, those of the
/// configuration that exist on this device, worked out once when the sandbox is made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskPaths {
    /// Read and execute.
    pub read: Vec<PathBuf>,
    /// Read and write, for device files.
    pub devices: Vec<PathBuf>,
    /// Read and write everything beneath.
    pub write: Vec<PathBuf>,
}

impl TaskPaths {
    /// The system's paths ([`SYSTEM_READ`], [`DEVICES`], the targets of
    /// [`FOLLOWED_LINKS`]) and the owner's, each kept only when it exists (Landlock
    /// needs to open it).
    pub fn new(config: &SandboxConfig) -> TaskPaths {
        let existing = |paths: Vec<PathBuf>| -> Vec<PathBuf> {
            let mut kept: Vec<PathBuf> = Vec::new();
            for path in paths {
                if path.exists() && !kept.contains(&path) {
                    kept.push(path);
                }
            }
            kept
        };
        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        for link in FOLLOWED_LINKS {
            if let Ok(target) = fs::canonicalize(link) {
                read.push(target);
            }
        }
        read.extend(config.read.iter().cloned());
        TaskPaths {
            read: existing(read),
            devices: existing(DEVICES.iter().map(PathBuf::from).collect()),
            write: existing(config.write.clone()),
        }
    }

    /// Whether a task may read `path` under these rules: it is beneath a readable or
    /// writable path (compared after resolving symbolic links where they exist).
    pub fn reaches(&self, path: &Path) -> bool {
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.read
            .iter()
            .chain(&self.write)
            .chain(&self.devices)
            .any(|allowed| {
                let allowed = fs::canonicalize(allowed).unwrap_or_else(|_| allowed.clone());
                path.starts_with(allowed)
            })
    }
}

/// How well the sandbox guards the device's owner from a task, as the device's profile
/// carries it (`sandbox` in `register`) and `--require sandbox=LEVEL` asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxLevel {
    /// Nothing beyond file permissions: a task can read every file of the worker's
    /// user and signal the worker (no Landlock: an old kernel, Android, or turned off).
    None,
    /// Landlock confines files (a task reads only the system directories and writes
    /// only its own directory) but the kernel's ABI is older than 6: a task of the
    /// worker's own user can still signal the worker.
    Partial,
    /// Landlock ABI 6 or later: files confined, no signals or abstract Unix sockets
    /// outside the sandbox, TCP rules available.
    Full,
}

impl SandboxLevel {
    /// The name on the wire: `none`, `partial` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxLevel::None => "none",
            SandboxLevel::Partial => "partial",
            SandboxLevel::Full => "full",
        }
    }

    fn of(landlock: &LandlockState) -> SandboxLevel {
        match landlock {
            LandlockState::Enforced => SandboxLevel::Full,
            LandlockState::PartiallyEnforced => SandboxLevel::Partial,
            _ => SandboxLevel::None,
        }
    }
}

/// What a run's network access was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkState {
    /// The task had the device's network.
    Allowed,
    /// TCP bind and connect were refused by Landlock (UDP, ICMP and pathname Unix
    /// sockets were not: see `docs/sandbox.md`).
    TcpDenied,
    /// The owner turned the network off for this type, but the kernel cannot enforce it
    /// (no Landlock, or an ABI older than 4): the task had the network.
    NotEnforced,
}

/// The first Landlock ABI with TCP rules (Linux 6.7).
pub const LANDLOCK_NETWORK_ABI: u8 = 4;

/// Why a sandboxed command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The working directory could not be prepared.
    #[error("could not prepare the task directory {path}: {source}")]
    TaskDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The Landlock ruleset could not be built although the kernel supports Landlock.
    #[error("could not build the Landlock ruleset: {0}")]
    Landlock(String),
    /// The progress pipe could not be made.
    #[error("could not create the progress pipe: {0}")]
    Pipe(#[source] io::Error),
    /// Running the command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The shared default sandbox could not be made.
    #[error("the sandbox is not available: {0}")]
    Unavailable(String),
}

/// Whether Landlock confines tasks on this device, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum LandlockState {
    /// Every requested restriction is enforced.
    Enforced,
    /// The kernel enforces an older Landlock ABI: writes outside the task directory are
    /// still refused, some newer rights (truncate, signal scoping …) are not.
    PartiallyEnforced,
    /// The kernel does not offer Landlock (too old, or not enabled at boot).
    Unavailable(String),
    /// The owner turned it off in the configuration.
    Disabled,
    /// Android: calling Landlock would kill the worker, so it is never called.
    NotOnAndroid,
}

impl LandlockState {
    /// Whether Landlock confines the tasks at all.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            LandlockState::Enforced | LandlockState::PartiallyEnforced
        )
    }
}

/// The resource limits a run actually got (after capping at the worker's own hard
/// limits), for the result: the wire's view of a [`TaskLimits`], with its names
/// and units (`result.sandbox.limits` in `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnforcedLimits {
    /// CPU seconds per process.
    pub cpu_secs: Option<u64>,
    /// Address space per process, bytes.
    pub memory_bytes: Option<u64>,
    /// Largest file, bytes.
    pub file_size_bytes: Option<u64>,
    /// Open files per process.
    pub open_files: Option<u64>,
    /// Processes and threads of the task at once; `None` when not bounded (a task
    /// running as root, which the kernel exempts).
    pub processes: Option<u64>,
    /// Core dumps are always off.
    pub core_dumps: bool,
    /// Captured bytes per output stream.
    pub output_bytes: usize,
    /// Wall-clock limit, seconds.
    pub timeout_secs: Option<f64>,
}

/// What the sandbox enforced for one run; it goes into the task's result as `sandbox`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enforcement {
    /// The command ran in its own session and process group, killed as a whole.
    pub process_group: bool,
    /// Processes that leave the group are caught (the worker is a child subreaper).
    pub escapees_caught: bool,
    /// A private working directory was made and removed.
    pub private_dir: bool,
    /// The environment was cleared down to the allowlist.
    pub clean_env: bool,
    /// `no_new_privs` was set (setuid programs cannot gain privileges).
    pub no_new_privs: bool,
    /// The user id the task ran as.
    pub uid: u32,
    /// Filesystem confinement.
    pub landlock: LandlockState,
    /// The kernel's Landlock ABI, when it has Landlock.
    pub landlock_abi: Option<u8>,
    /// How well the owner was guarded: `full`, `partial` or `none`.
    pub level: SandboxLevel,
    /// Whether the task had the network.
    pub network: NetworkState,
    /// Resource limits.
    pub limits: EnforcedLimits,
}

/// A command to run in the sandbox.
pub struct SandboxCommand {
    /// The program: a path, or a name looked up on the task's `PATH`.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Bytes for stdin; `None` gives `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Extra environment variables for this run (after the allowlist).
    pub env: Vec<(String, String)>,
    /// When set, the command gets a pipe on fd [`PROGRESS_FD`] (and
    /// `RETIRE_PROGRESS_FD` says so), and every line written to it is given to this
    /// callback, cut to [`MAX_PROGRESS_LINE`] bytes.
    pub progress: Option<Box<dyn FnMut(String) + Send>>,
    /// A short name for the task directory (the task id, say).
    pub label: String,
    /// Where the run is recorded while it runs, so that the next start of a worker
    /// killed meanwhile kills it (see [`crate::state::running`]); `None` records nothing.
    pub ledger: Option<Arc<Ledger>>,
}

impl SandboxCommand {
    /// A command with arguments, stdin from `/dev/null` and no progress channel.
    pub fn new(program: impl Into<OsString>, args: Vec<OsString>) -> SandboxCommand {
        SandboxCommand {
            program: program.into(),
            args,
            stdin: None,
            env: Vec::new(),
            progress: None,
            label: "task".to_string(),
            ledger: None,
        }
    }
}

impl std::fmt::Debug for SandboxCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// The outcome of a sandboxed run.
#[derive(Debug, Clone)]
pub struct SandboxOutcome {
    /// What the process did.
    pub exec: ExecOutcome,
    /// What the sandbox enforced.
    pub enforcement: Enforcement,
    /// The limits that stopped the task, as far as can be told (`memory`, `cpu`,
    /// `file_size`, `processes`, `open_files`); empty when none did.
    pub limits_hit: Vec<&'static str>,
}

/// Runs commands in the sandbox. Made once per worker; cheap to share.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    landlock: LandlockState,
    landlock_abi: Option<u8>,
    paths: TaskPaths,
    /// The user and group to switch to, when the worker is root.
    switch_user: Option<(u32, u32)>,
    task_path: String,
}

impl Sandbox {
    /// Prepares the sandbox: makes the work directory, probes Landlock once, makes the
    /// worker a child subreaper and non-dumpable (so that a task running as the same
    /// user cannot read the worker's memory or environment through `/proc`).
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let is_root = rustix::process::geteuid().is_root();
        let switch_user = is_root.then_some(config.task_user);
        make_work_dir(&config.work_dir, switch_user.is_some())?;
        if let Err(error) =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        {
            log::warn!(
                "could not make the worker non-dumpable: {}",
                io::Error::from(error)
            );
        }
        crate::tasks::orphans::become_subreaper();
        for path in config.read.iter().chain(&config.write) {
            if !path.exists() {
                log::warn!(
                    "[sandbox] names {}, which does not exist: tasks get no access to it",
                    path.display()
                );
            }
        }
        let paths = TaskPaths::new(&config);
        let (landlock, landlock_abi) = if !config.landlock {
            (LandlockState::Disabled, None)
        } else {
            // A system call policy that kills on Landlock's calls (Android's, a unit's
            // `SystemCallFilter=`) would take the worker down: a child tries them first.
            let trial = crate::tasks::probe::landlock();
            let android = crate::device::profile::is_android();
            log::info!("Landlock's system calls: {}", trial.describe());
            match trial {
                _ if android => (LandlockState::NotOnAndroid, None),
                crate::tasks::probe::ProbeOutcome::Survived => {
                    let probe = landlock::probe(&config.work_dir, &paths);
                    (probe.state, probe.abi)
                }
                other => (LandlockState::Unavailable(other.describe()), None),
            }
        };
        let task_path = std::env::var("PATH")
            .ok()
            .filter(|path| !path.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        let sandbox = Sandbox {
            config,
            landlock,
            landlock_abi,
            paths,
            switch_user,
            task_path,
        };
        sandbox.announce();
        Ok(sandbox)
    }

    /// Says at start, in the log, what the sandbox can and cannot do here: an info line
    /// when the owner is fully guarded, a warning naming what a task can still reach
    /// otherwise.
    fn announce(&self) {
        let user = self.switch_user.map_or(String::new(), |(uid, gid)| {
            format!("; tasks run as uid {uid} gid {gid}")
        });
        let abi = self.landlock_abi.map_or_else(
            || "no Landlock".to_string(),
            |abi| format!("Landlock ABI {abi}"),
        );
        let dir = self.config.work_dir.display();
        match self.level() {
            SandboxLevel::Full => log::info!(
                "sandbox: full ({abi}): tasks read only the system directories{}, write only \
                 their own directory in {dir}, and cannot signal the worker{user}",
                self.extra_paths()
            ),
            SandboxLevel::Partial => log::warn!(
                "sandbox: partial ({abi}, 6 or later needed for all of it): tasks read only the \
                 system directories{} and write only their own directory in {dir}, but a task \
                 running as the worker's user can signal the worker{}{user}",
                self.extra_paths(),
                if self.landlock_abi.unwrap_or(0) < LANDLOCK_NETWORK_ABI {
                    "; `network = false` cannot be enforced"
                } else {
                    ""
                }
            ),
            SandboxLevel::None => log::warn!(
                "sandbox: none (Landlock {}): tasks can read every file this worker's user can \
                 read (the owner's home, the worker's key in its state dir), write wherever \
                 that user can, and signal the worker; `network = false` cannot be enforced; \
                 tasks still get a private directory in {dir}, a clean environment and \
                 resource limits{user}",
                match &self.landlock {
                    LandlockState::Unavailable(reason) => format!("unavailable: {reason}"),
                    LandlockState::Disabled => "turned off by `[sandbox] landlock = false`".into(),
                    LandlockState::NotOnAndroid => "is never called on Android".into(),
                    other => format!("{other:?}"),
                }
            ),
        }
    }

    fn extra_paths(&self) -> String {
        let list = |paths: &[PathBuf]| {
            paths
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut extra = String::new();
        if !self.config.read.is_empty() {
            extra.push_str(&format!(" and {}", list(&self.config.read)));
        }
        if !self.config.write.is_empty() {
            extra.push_str(&format!(" (and may write {})", list(&self.config.write)));
        }
        extra
    }

    /// How well the sandbox guards the owner on this device.
    pub fn level(&self) -> SandboxLevel {
        SandboxLevel::of(&self.landlock)
    }

    /// The kernel's Landlock ABI, when it has Landlock and the worker uses it.
    pub fn landlock_abi(&self) -> Option<u8> {
        self.landlock_abi
    }

    /// Whether a task could read `path`: always without Landlock (only file permissions
    /// stand in its way), else when a rule reaches it.
    pub fn exposes(&self, path: &Path) -> bool {
        !self.landlock.is_active() || self.paths.reaches(path)
    }

    /// Whether the network can be taken away from a task here (Landlock's TCP rules).
    pub fn can_deny_network(&self) -> bool {
        self.landlock.is_active() && self.landlock_abi.unwrap_or(0) >= LANDLOCK_NETWORK_ABI
    }

    /// A sandbox with the default configuration, made on first use and shared by
    /// everything in this process that asks for it.
    pub fn shared_default() -> Result<Arc<Sandbox>, String> {
        static SHARED: OnceLock<Result<Arc<Sandbox>, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                Sandbox::new(SandboxConfig::default())
                    .map(Arc::new)
                    .map_err(|error| error.to_string())
            })
            .clone()
    }

    /// Whether Landlock confines tasks here, and if not, why.
    pub fn landlock(&self) -> &LandlockState {
        &self.landlock
    }

    /// The configuration the sandbox was made with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The `PATH` tasks get.
    pub fn task_path(&self) -> &str {
        &self.task_path
    }

    /// Runs `command` in the sandbox with `limits` until it ends, times out or is
    /// cancelled.
    pub fn run(
        &self,
        command: SandboxCommand,
        limits: &TaskLimits,
        cancel: &CancelToken,
    ) -> Result<SandboxOutcome, SandboxError> {
        let SandboxCommand {
            program,
            args,
            stdin,
            env,
            progress,
            label,
            ledger,
        } = command;
        let task_dir = TaskDir::create(&self.config.work_dir, &label, self.switch_user)?;
        let stdin = match stdin {
            None => Stdio::null(),
            Some(bytes) => Stdio::from(task_dir.stdin_file(&bytes)?),
        };

        let mut std_command = std::process::Command::new(&program);
        std_command
            .args(&args)
            .current_dir(&task_dir.path)
            .env_clear();
        for (key, value) in std::env::vars_os() {
            let Some(name) = key.to_str() else { continue };
            if name != "PATH" && self.passes(name) {
                std_command.env(&key, &value);
            }
        }
        std_command
            .env("PATH", &self.task_path)
            .env("HOME", &task_dir.path)
            .env("TMPDIR", &task_dir.path)
            .env("RETIRE_TASK_DIR", &task_dir.path);
        for (key, value) in &env {
            std_command.env(key, value);
        }
        if let Some((uid, gid)) = self.switch_user {
            std_command.uid(uid).gid(gid);
        }
        let uid = self
            .switch_user
            .map_or_else(|| rustix::process::getuid().as_raw(), |(uid, _)| uid);

        let rlimits = RlimitPlan::new(limits, uid);
        let (progress_pipe, progress_done) = match progress {
            Some(callback) => {
                reserve_progress_fd();
                let (read_end, write_end) = pipe().map_err(SandboxError::Pipe)?;
                let done = spawn_progress_reader(read_end, callback).map_err(SandboxError::Pipe)?;
                std_command.env("RETIRE_PROGRESS_FD", PROGRESS_FD.to_string());
                (Some(write_end), Some(done))
            }
            None => (None, None),
        };
        let ruleset = if self.landlock.is_active() {
            Some(
                landlock::ruleset(&task_dir.path, &self.paths, limits.network)
                    .map_err(SandboxError::Landlock)?,
            )
        } else {
            None
        };
        let network = match (limits.network, self.can_deny_network()) {
            (true, _) => NetworkState::Allowed,
            (false, true) => NetworkState::TcpDenied,
            (false, false) => NetworkState::NotEnforced,
        };
        install_pre_exec(&mut std_command, rlimits.clone(), progress_pipe, ruleset);

        let outcome = exec::run_configured(std_command, stdin, limits, cancel, ledger.as_deref())?;
        if let Some(done) = progress_done {
            // Every progress line goes out before the result: wait for the reader to see
            // the end of the pipe, which comes as soon as the task's processes are gone.
            let _ = done.recv_timeout(exec::OUTPUT_DRAIN_GRACE);
        }
        drop(task_dir);

        let enforcement = Enforcement {
            process_group: true,
            escapees_caught: crate::tasks::orphans::become_subreaper(),
            private_dir: true,
            clean_env: true,
            no_new_privs: true,
            uid,
            landlock: self.landlock.clone(),
            landlock_abi: self.landlock_abi,
            level: self.level(),
            network,
            limits: EnforcedLimits {
                cpu_secs: rlimits.cpu_secs,
                memory_bytes: rlimits.memory_bytes,
                file_size_bytes: rlimits.file_size_bytes,
                open_files: rlimits.open_files,
                processes: rlimits.processes,
                core_dumps: false,
                output_bytes: limits.max_output_bytes,
                timeout_secs: limits.timeout.map(|timeout| timeout.as_secs_f64()),
            },
        };
        let limits_hit = limits_hit(&outcome, &enforcement.limits);
        Ok(SandboxOutcome {
            exec: outcome,
            enforcement,
            limits_hit,
        })
    }

    fn passes(&self, name: &str) -> bool {
        ENV_ALLOWLIST.contains(&name)
            || name.starts_with("LC_")
            || self.config.pass_env.iter().any(|pass| pass == name)
    }
}

/// Makes the directory that holds the task directories. When tasks run as another
/// user it must be traversable by them (but not listable).
fn make_work_dir(work_dir: &Path, other_user: bool) -> Result<(), SandboxError> {
    let error = |source| SandboxError::TaskDir {
        path: work_dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(work_dir)
        .map_err(error)?;
    // A directory someone else made first (in a shared /tmp, say) could be swapped or
    // watched by them: refuse it rather than run tasks in it.
    let owner = fs::symlink_metadata(work_dir).map_err(error)?;
    let euid = rustix::process::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&owner) != euid || !owner.is_dir() {
        return Err(error(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is not a directory owned by the worker's user",
        )));
    }
    let mode = if other_user { 0o711 } else { 0o700 };
    fs::set_permissions(work_dir, fs::Permissions::from_mode(mode)).map_err(error)
}

/// A task's private directory; removed when dropped.
struct TaskDir {
    path: PathBuf,
}

impl TaskDir {
    fn create(
        work_dir: &Path,
        label: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<TaskDir, SandboxError> {
        let safe_label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let path = work_dir.join(format!("{safe_label}-{:016x}", fastrand::u64(..)));
        let error = |source| SandboxError::TaskDir {
            path: path.clone(),
            source,
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(error)?;
        let task_dir = TaskDir { path };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&task_dir.path, Some(uid), Some(gid)).map_err(|source| {
                SandboxError::TaskDir {
                    path: task_dir.path.clone(),
                    source,
                }
            })?;
        }
        Ok(task_dir)
    }

    /// Writes `bytes` to a file next to the task directory (outside it, so the task
    /// cannot swap it), opens it for reading and unlinks it: the open file is stdin.
    fn stdin_file(&self, bytes: &[u8]) -> Result<File, SandboxError> {
        let path = self.path.with_extension("stdin");
        let error = |source| SandboxError::TaskDir {
            path: path.clone(),
            source,
        };
        let mut file = File::create(&path).map_err(error)?;
        file.write_all(bytes).map_err(error)?;
        drop(file);
        let file = File::open(&path).map_err(error)?;
        fs::remove_file(&path).map_err(error)?;
        Ok(file)
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.path).is_ok() {
            return;
        }
        // A task may have taken the write or search permission off its own
        // subdirectories; give them back and try once more.
        make_removable(&self.path);
        if let Err(error) = fs::remove_dir_all(&self.path) {
            log::warn!(
                "could not remove the task directory {}: {error}",
                self.path.display()
            );
        }
    }
}

fn make_removable(path: &Path) {
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                make_removable(&entry.path());
            }
        }
    }
}

/// The resource limits to set in the child, worked out in the parent so that the
/// child only makes system calls.
#[derive(Debug, Clone)]
struct RlimitPlan {
    cpu_secs: Option<u64>,
    memory_bytes: Option<u64>,
    file_size_bytes: Option<u64>,
    open_files: Option<u64>,
    processes: Option<u64>,
    /// The `RLIMIT_NPROC` value: the user's current count plus the task's budget.
    nproc_value: Option<u64>,
}

/// How much CPU time past the soft limit (`SIGXCPU`) before the kernel sends `SIGKILL`.
const CPU_HARD_MARGIN_SECS: u64 = 2;

impl RlimitPlan {
    fn new(limits: &TaskLimits, uid: u32) -> RlimitPlan {
        let cap = |resource, wanted: Option<u64>| {
            wanted.map(|wanted| wanted.min(current_hard_limit(resource)))
        };
        // RLIMIT_NPROC counts every process and thread of the task's real user, not only
        // the task's, and the kernel ignores it for root. So the bound is the user's
        // current count plus the task's budget.
        let (processes, nproc_value) = match limits.processes {
            Some(budget) if uid != 0 => {
                let value = count_user_tasks(uid)
                    .saturating_add(budget)
                    .min(current_hard_limit(Resource::Nproc));
                (Some(budget), Some(value))
            }
            _ => (None, None),
        };
        RlimitPlan {
            cpu_secs: cap(Resource::Cpu, limits.cpu_secs),
            memory_bytes: cap(Resource::As, limits.memory_bytes),
            file_size_bytes: cap(Resource::Fsize, limits.file_size_bytes),
            open_files: cap(Resource::Nofile, limits.open_files),
            processes,
            nproc_value,
        }
    }

    /// Applies the plan in the child. Only system calls: this runs between fork and
    /// exec.
    fn apply(&self) -> io::Result<()> {
        set_rlimit(Resource::Core, 0, 0)?;
        if let Some(secs) = self.cpu_secs {
            set_rlimit(
                Resource::Cpu,
                secs,
                secs.saturating_add(CPU_HARD_MARGIN_SECS)
                    .min(current_hard_limit(Resource::Cpu)),
            )?;
        }
        for (resource, value) in [
            (Resource::As, self.memory_bytes),
            (Resource::Fsize, self.file_size_bytes),
            (Resource::Nofile, self.open_files),
            (Resource::Nproc, self.nproc_value),
        ] {
            if let Some(value) = value {
                set_rlimit(resource, value, value)?;
            }
        }
        Ok(())
    }
}

/// The hard limit on `resource` in this process; `u64::MAX` when there is none.
fn current_hard_limit(resource: Resource) -> u64 {
    rustix::process::getrlimit(resource)
        .maximum
        .unwrap_or(u64::MAX)
}

/// Sets `resource` to `soft` (at most `hard`) and `hard`; `u64::MAX` is no limit. Only a
/// system call, so it may run between fork and exec.
fn set_rlimit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let limit = |value: u64| (value != u64::MAX).then_some(value);
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: limit(soft.min(hard)),
            maximum: limit(hard),
        },
    )?;
    Ok(())
}

/// Counts the processes and threads whose real user is `uid`, the number
/// `RLIMIT_NPROC` is compared with.
fn count_user_tasks(uid: u32) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut count = 0u64;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let mut real_uid = None;
        let mut threads = 1;
        for line in status.lines() {
            if let Some(rest) = line.strip_prefix("Uid:") {
                real_uid = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u32>().ok());
            } else if let Some(rest) = line.strip_prefix("Threads:") {
                threads = rest.trim().parse().unwrap_or(1);
            }
        }
        if real_uid == Some(uid) {
            count += threads;
        }
    }
    count
}

/// A pipe whose two ends are closed on exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Reads progress lines until every writer has closed the pipe. The returned receiver
/// disconnects when the thread has ended.
fn spawn_progress_reader(
    read_end: OwnedFd,
    mut callback: Box<dyn FnMut(String) + Send>,
) -> io::Result<crossbeam_channel::Receiver<()>> {
    let (done_sender, done) = crossbeam_channel::bounded::<()>(0);
    thread::Builder::new()
        .name("task-progress".into())
        .spawn(move || {
            // Dropped when the thread ends, which disconnects `done`.
            let _done = done_sender;
            let mut reader = BufReader::new(File::from(read_end));
            loop {
                let mut line = Vec::new();
                // Lines are read at most MAX_PROGRESS_LINE at a time, so that a task
                // writing no newline cannot make the worker buffer without end.
                let read = (&mut reader)
                    .take(MAX_PROGRESS_LINE as u64)
                    .read_until(b'\n', &mut line);
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if line.last() != Some(&b'\n') {
                            // Skip the rest of an overlong line.
                            let mut rest = Vec::new();
                            if reader.read_until(b'\n', &mut rest).is_err() {
                                return;
                            }
                        }
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        if !text.is_empty() {
                            callback(text);
                        }
                    }
                }
            }
        })?;
    Ok(done)
}

/// What the child does between fork and exec, in this order: resource limits,
/// `no_new_privs`, Landlock, then the progress descriptor.
///
/// The progress pipe goes onto fd [`PROGRESS_FD`] last, because `dup2` silently closes
/// whatever the child had there, and that can be a descriptor the child still needs:
/// descriptors are shared by every thread of the worker, so another thread can free
/// fd 3 between the creation of the progress pipe and the spawn, and the Landlock
/// ruleset (or std's pipe that reports a failed exec) is then given fd 3. Applying the
/// ruleset first means the `dup2` can no longer pull it from under
/// `landlock_restrict_self`; [`reserve_progress_fd`] keeps fd 3 out of the way of
/// std's pipe.
fn install_pre_exec(
    command: &mut std::process::Command,
    rlimits: RlimitPlan,
    progress_write_end: Option<OwnedFd>,
    ruleset: Option<landlock::Ruleset>,
) {
    // The ruleset is consumed by `restrict_self`, but the closure may be called more
    // than once in principle; a mutex around an `Option` hands it out once. Only the
    // child ever locks it, so it is never contended.
    let ruleset = Mutex::new(ruleset);
    let closure = move || {
        rlimits.apply()?;
        rustix::thread::set_no_new_privs(true)?;
        let taken = ruleset
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(ruleset) = taken {
            landlock::restrict(ruleset)?;
        }
        if let Some(write_end) = &progress_write_end {
            let fd = write_end.as_raw_fd();
            if fd == PROGRESS_FD {
                // dup2 onto itself keeps close-on-exec; clear it instead.
                rustix::io::fcntl_setfd(write_end, rustix::io::FdFlags::empty())?;
            } else {
                // This stays a libc call: rustix's `dup2` wants the target as an
                // `OwnedFd`, and fd 3 in the child belongs to no such value (it is the
                // parent's placeholder, inherited); making one would take an unsafe
                // `from_raw_fd` and a `forget` instead of this one call.
                // SAFETY: dup2 on a descriptor this process owns, onto a number.
                if unsafe { libc::dup2(fd, PROGRESS_FD) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes system calls (setrlimit, prctl,
    // landlock_restrict_self, dup2, fcntl; rustix's are raw system calls too) and takes an uncontended lock: nothing that
    // allocates or could deadlock after fork. Its errors are all OS errors (std
    // reports any other kind as EINVAL).
    unsafe {
        command.pre_exec(closure);
    }
}

/// Makes fd [`PROGRESS_FD`] this process's own for good, when it is free, with a
/// close-on-exec placeholder. The descriptors std creates during a spawn (the pipe on
/// which the child reports a failed exec, in particular) then never get fd 3, where the
/// child's `dup2` of the progress pipe would close them. The child's copy of the
/// placeholder is what that `dup2` replaces. When something else holds fd 3, nothing is
/// reserved (the next call tries again); the child still works, as Landlock is applied
/// before the `dup2`.
fn reserve_progress_fd() {
    static RESERVED: OnceLock<OwnedFd> = OnceLock::new();
    if RESERVED.get().is_some() {
        return;
    }
    // std opens with O_CLOEXEC.
    let Ok(null) = File::open("/dev/null") else {
        return;
    };
    let placeholder = if null.as_raw_fd() == PROGRESS_FD {
        OwnedFd::from(null)
    } else {
        // F_DUPFD_CLOEXEC takes the lowest free descriptor from PROGRESS_FD up, in one
        // step: it never replaces a descriptor someone else holds (dup2 would).
        let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(&null, PROGRESS_FD) else {
            return;
        };
        fd
    };
    if placeholder.as_raw_fd() == PROGRESS_FD {
        // Only one holder of fd 3 at a time, so no other thread can have set it since.
        let _ = RESERVED.set(placeholder);
    }
}

/// Which limits most likely stopped the run. Signals say it for sure (`SIGXCPU`,
/// `SIGXFSZ`); memory, processes and open files show up as failed allocations, forks
/// and opens, recognised in stderr or, for memory, by a peak close to the limit.
fn limits_hit(outcome: &ExecOutcome, limits: &EnforcedLimits) -> Vec<&'static str> {
    let mut hit = Vec::new();
    if outcome.timed_out || outcome.cancelled || outcome.succeeded() {
        return hit;
    }
    let stderr = outcome.stderr.to_ascii_lowercase();
    let says = |needles: &[&str]| needles.iter().any(|needle| stderr.contains(needle));
    let cpu_time_reached = match (limits.cpu_secs, outcome.cpu_time) {
        (Some(limit), Some(used)) => used.as_secs() >= limit,
        _ => false,
    };
    if outcome.signal == Some(libc::SIGXCPU)
        || (outcome.signal == Some(libc::SIGKILL) && cpu_time_reached)
    {
        hit.push("cpu");
    }
    if outcome.signal == Some(libc::SIGXFSZ) || says(&["file too large"]) {
        hit.push("file_size");
    }
    let near_memory_limit = match (limits.memory_bytes, outcome.peak_memory_bytes) {
        (Some(limit), Some(peak)) => peak.saturating_mul(10) >= limit.saturating_mul(8),
        _ => false,
    };
    if limits.memory_bytes.is_some()
        && (near_memory_limit
            || says(&[
                "memoryerror",
                "cannot allocate memory",
                "out of memory",
                "memory exhausted",
                "bad_alloc",
                "memory allocation of",
            ]))
    {
        hit.push("memory");
    }
    if limits.processes.is_some()
        && says(&[
            "fork: retry",
            "fork: resource temporarily unavailable",
            "cannot fork",
            "can't fork",
            "resource temporarily unavailable",
        ])
    {
        hit.push("processes");
    }
    if says(&["too many open files"]) {
        hit.push("open_files");
    }
    hit
}

/// Landlock, where it is compiled in.
#[cfg(all(target_os = "linux", not(target_os = "android")))]
mod landlock {
    use std::io;
    use std::path::Path;

    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, LandlockStatus,
        Ruleset as LandlockRuleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
        Scope, ABI,
    };

    use super::{LandlockState, TaskPaths};

    /// The Landlock ABI whose rights the worker asks for. Kernels with an older ABI
    /// enforce what they know (best effort); the probe reports that as partial.
    const ABI_WANTED: ABI = ABI::V6;

    /// A ruleset ready to be applied in the child.
    pub type Ruleset = RulesetCreated;

    /// What the probe found: the state, and the kernel's ABI when it has Landlock.
    pub struct Probe {
        /// Whether Landlock confines tasks.
        pub state: LandlockState,
        /// The Landlock ABI the kernel offers (as far as the crate knows them).
        pub abi: Option<u8>,
    }

    /// Builds the ruleset of one run: deny by default; read and execute in `paths.read`,
    /// read and write the devices of `paths.devices` and everything in `paths.write` and
    /// `task_dir`; no signals to processes outside the sandbox and no abstract Unix
    /// sockets outside it (ABI 6); with `network` false, no TCP bind or connect (ABI 4).
    pub fn ruleset(task_dir: &Path, paths: &TaskPaths, network: bool) -> Result<Ruleset, String> {
        build(task_dir, paths, network).map_err(|error| error.to_string())
    }

    fn build(
        task_dir: &Path,
        paths: &TaskPaths,
        network: bool,
    ) -> Result<RulesetCreated, landlock::RulesetError> {
        let read = AccessFs::from_read(ABI_WANTED) | AccessFs::IoctlDev;
        let device =
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
        let all = AccessFs::from_all(ABI_WANTED);
        let mut ruleset = LandlockRuleset::default()
            .handle_access(all)?
            .scope(Scope::from_all(ABI_WANTED))?;
        if !network {
            // Handled with no port allowed: every TCP bind and connect is refused.
            ruleset = ruleset.handle_access(AccessNet::from_all(ABI_WANTED))?;
        }
        ruleset
            .create()?
            .add_rules(path_beneath_rules(&paths.read, read))?
            .add_rules(path_beneath_rules(&paths.devices, device))?
            .add_rules(path_beneath_rules(&paths.write, all))?
            .add_rules(path_beneath_rules([task_dir], all))
    }

    /// Applies `ruleset` to the calling thread (in the child, before exec).
    ///
    /// This runs between fork and exec, so it must not allocate, and its error must be
    /// an OS error: std reports any other kind from the child as EINVAL. The error is
    /// the errno of the failed call (`prctl` or `landlock_restrict_self`), or `EPERM`
    /// when the crate gives none.
    pub fn restrict(ruleset: Ruleset) -> io::Result<()> {
        match ruleset.restrict_self() {
            Ok(_) => Ok(()),
            Err(error) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
                while let Some(current) = cause {
                    if let Some(code) = current
                        .downcast_ref::<io::Error>()
                        .and_then(io::Error::raw_os_error)
                    {
                        return Err(io::Error::from_raw_os_error(code));
                    }
                    cause = current.source();
                }
                Err(io::Error::from_raw_os_error(libc::EPERM))
            }
        }
    }

    /// Finds out what Landlock enforces here by applying the strictest ruleset a task
    /// can get (network off) to a short-lived thread of its own (Landlock and
    /// `no_new_privs` are per thread, so the rest of the worker is not affected).
    pub fn probe(work_dir: &Path, paths: &TaskPaths) -> Probe {
        let work_dir = work_dir.to_path_buf();
        let paths = paths.clone();
        let probe = std::thread::Builder::new()
            .name("landlock-probe".into())
            .spawn(move || build(&work_dir, &paths, false).map(RulesetCreated::restrict_self));
        let joined = match probe {
            Ok(handle) => handle.join(),
            Err(error) => {
                return Probe {
                    state: LandlockState::Unavailable(format!("probe failed: {error}")),
                    abi: None,
                }
            }
        };
        match joined {
            Ok(Ok(Ok(status))) => {
                let abi = match status.landlock {
                    LandlockStatus::Available {
                        effective_abi,
                        kernel_abi,
                    } => kernel_abi
                        .and_then(|abi| u8::try_from(abi).ok())
                        .or(Some(effective_abi as u8)),
                    _ => None,
                };
                let state = match status.ruleset {
                    RulesetStatus::FullyEnforced => LandlockState::Enforced,
                    RulesetStatus::PartiallyEnforced => LandlockState::PartiallyEnforced,
                    RulesetStatus::NotEnforced => LandlockState::Unavailable(format!(
                        "the kernel does not enforce Landlock ({:?})",
                        status.landlock
                    )),
                };
                Probe { state, abi }
            }
            Ok(Ok(Err(error))) | Ok(Err(error)) => Probe {
                state: LandlockState::Unavailable(format!("Landlock failed: {error}")),
                abi: None,
            },
            Err(_) => Probe {
                state: LandlockState::Unavailable("the Landlock probe panicked".into()),
                abi: None,
            },
        }
    }
}

/// Landlock is compiled out on Android (and is Linux-only anyway).
#[cfg(not(all(target_os = "linux", not(target_os = "android"))))]
mod landlock {
    use std::io;
    use std::path::Path;

    use super::{LandlockState, TaskPaths};

    /// Never built: nothing to apply.
    pub enum Ruleset {}

    /// What the probe found.
    pub struct Probe {
        pub state: LandlockState,
        pub abi: Option<u8>,
    }

    pub fn ruleset(
        _task_dir: &Path,
        _paths: &TaskPaths,
        _network: bool,
    ) -> Result<Ruleset, String> {
        Err("Landlock is not compiled into this worker".into())
    }

    pub fn restrict(ruleset: Ruleset) -> io::Result<()> {
        match ruleset {}
    }

    pub fn probe(_work_dir: &Path, _paths: &TaskPaths) -> Probe {
        Probe {
            state: LandlockState::NotOnAndroid,
            abi: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Arc<Sandbox> {
        Sandbox::shared_default().expect("the default sandbox")
    }

    fn sh(script: &str) -> SandboxCommand {
        SandboxCommand::new("sh", vec!["-c".into(), script.into()])
    }

    fn run(command: SandboxCommand, limits: &TaskLimits) -> SandboxOutcome {
        sandbox()
            .run(command, limits, &CancelToken::new())
            .expect("the command runs")
    }

    #[test]
    fn the_task_runs_in_a_private_directory_that_is_removed_afterwards() {
        let outcome = run(
            sh("pwd; echo \"$HOME|$TMPDIR\"; touch made-here && echo ok"),
            &TaskLimits::default(),
        );
        assert_eq!(outcome.exec.exit_code, Some(0), "{outcome:?}");
        let mut lines = outcome.exec.stdout.lines();
        let dir = PathBuf::from(lines.next().expect("pwd"));
        assert!(dir.starts_with(&sandbox().config().work_dir), "{dir:?}");
        assert_eq!(
            lines.next(),
            Some(format!("{}|{}", dir.display(), dir.display()).as_str())
        );
        assert_eq!(lines.next(), Some("ok"));
        assert!(!dir.exists(), "{dir:?} was not removed");
    }

    #[test]
    fn a_work_dir_owned_by_someone_else_is_refused() {
        if !rustix::process::geteuid().is_root() {
            // Only root can make a directory owned by another user to test with; an
            // unprivileged run checks the symlink case below instead.
            println!("NOTE: not root; the foreign-owner case of the work dir is not tested");
        } else {
            let dir = tempfile::tempdir().expect("temp dir");
            let foreign = dir.path().join("foreign");
            fs::create_dir(&foreign).expect("mkdir");
            std::os::unix::fs::chown(&foreign, Some(DEFAULT_TASK_ID), Some(DEFAULT_TASK_ID))
                .expect("chown");
            assert!(make_work_dir(&foreign, true).is_err());
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        assert!(make_work_dir(&link, false).is_err(), "a symlink is refused");
        assert!(make_work_dir(&dir.path().join("fresh"), false).is_ok());
    }

    #[test]
    fn limits_are_set_before_exec() {
        let limits = TaskLimits {
            cpu_secs: Some(7),
            memory_bytes: Some(300 << 20),
            file_size_bytes: Some(5 << 20),
            open_files: Some(33),
            ..TaskLimits::default()
        };
        let outcome = run(
            sh("ulimit -t; ulimit -v; ulimit -f; ulimit -n; ulimit -c"),
            &limits,
        );
        let expect = format!("7\n{}\n{}\n33\n0\n", 300 * 1024, 5 * 1024 * 2);
        assert_eq!(outcome.exec.stdout, expect, "{outcome:?}");
        assert_eq!(outcome.enforcement.limits.open_files, Some(33));
    }

    #[test]
    fn stdin_carries_the_given_bytes_or_nothing() {
        let mut command = sh("cat");
        command.stdin = Some(b"{\"a\":1}".to_vec());
        assert_eq!(
            run(command, &TaskLimits::default()).exec.stdout,
            "{\"a\":1}"
        );
        assert_eq!(
            run(sh("wc -c"), &TaskLimits::default()).exec.stdout.trim(),
            "0"
        );
    }

    /// A directory with a file in it that any user may read and a directory that any
    /// user may write, so that only Landlock (not file permissions, when tasks run as
    /// `nobody` under a root worker) keeps a task out.
    fn open_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        fs::write(dir.path().join("secret"), "owner-secret\n").expect("write");
        fs::set_permissions(dir.path().join("secret"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        dir
    }

    fn sandbox_with(work: &Path, change: impl FnOnce(&mut SandboxConfig)) -> Sandbox {
        let mut config = SandboxConfig {
            work_dir: work.join("work"),
            ..SandboxConfig::default()
        };
        change(&mut config);
        Sandbox::new(config).expect("the sandbox")
    }

    fn run_in(sandbox: &Sandbox, script: &str, limits: &TaskLimits) -> SandboxOutcome {
        sandbox
            .run(sh(script), limits, &CancelToken::new())
            .expect("the command runs")
    }

    /// The level follows Landlock's state, and so does what a task may read: the
    /// system's directories and devices, not a file elsewhere that its user could read.
    #[test]
    fn under_landlock_a_task_reads_only_the_system_and_its_own_directory() {
        let elsewhere = open_dir();
        let work = tempfile::tempdir().expect("temp dir");
        let sandbox = sandbox_with(work.path(), |_| {});
        let secret = elsewhere.path().join("secret");
        let script = format!(
            "head -c 4 /dev/urandom | wc -c; head -1 /proc/cpuinfo >/dev/null && echo proc; \
             cat /etc/passwd >/dev/null && echo etc; ls /usr/bin >/dev/null && echo usr; \
             echo err >&2; echo mine > mine && cat mine; \
             cat '{}' || echo refused-read; echo x > '{}/written' || echo refused-write; \
             ls .. || echo refused-list",
            secret.display(),
            elsewhere.path().display()
        );
        let outcome = run_in(&sandbox, &script, &TaskLimits::default());
        let output = &outcome.exec.stdout;
        assert!(
            output.starts_with("4\nproc\netc\nusr\nmine\n"),
            "{outcome:?}"
        );
        assert_eq!(
            outcome.exec.stderr.lines().next(),
            Some("err"),
            "{outcome:?}"
        );
        assert_eq!(
            outcome.enforcement.level,
            SandboxLevel::of(sandbox.landlock())
        );
        if sandbox.landlock().is_active() {
            assert!(!output.contains("owner-secret"), "{outcome:?}");
            for refused in ["refused-read", "refused-write", "refused-list"] {
                assert!(output.contains(refused), "{refused}: {outcome:?}");
            }
            assert!(!elsewhere.path().join("written").exists());
            assert!(sandbox.exposes(Path::new("/etc/hostname")));
            assert!(!sandbox.exposes(&secret));
        } else {
            println!(
                "NOTE: no Landlock here ({:?}); only the level is checked",
                sandbox.landlock()
            );
            assert_eq!(outcome.enforcement.level, SandboxLevel::None);
        }
    }

    /// `[sandbox] read` and `write` open more paths: the first to read only, the second
    /// to read and write.
    #[test]
    fn the_owners_extra_paths_are_readable_and_writable_as_configured() {
        let readable = open_dir();
        let writable = open_dir();
        let work = tempfile::tempdir().expect("temp dir");
        let sandbox = sandbox_with(work.path(), |config| {
            config.read = vec![readable.path().to_path_buf()];
            config.write = vec![writable.path().to_path_buf()];
        });
        let script = format!(
            "cat '{r}/secret'; echo no > '{r}/new' || echo refused-write; \
             cat '{w}/secret'; echo yes > '{w}/new' && echo wrote",
            r = readable.path().display(),
            w = writable.path().display()
        );
        let outcome = run_in(&sandbox, &script, &TaskLimits::default());
        let output = &outcome.exec.stdout;
        assert!(
            output.starts_with("owner-secret\n") && output.contains("owner-secret\nwrote"),
            "{outcome:?}"
        );
        assert_eq!(
            fs::read_to_string(writable.path().join("new")).expect("written"),
            "yes\n"
        );
        if sandbox.landlock().is_active() {
            assert!(output.contains("refused-write"), "{outcome:?}");
            assert!(!readable.path().join("new").exists());
        }
    }

    /// With the network off, a TCP connection to a listener on loopback is refused
    /// where the kernel has Landlock's TCP rules; with it on, it reaches the listener.
    #[test]
    fn network_off_refuses_tcp_where_the_kernel_can() {
        let work = tempfile::tempdir().expect("temp dir");
        let sandbox = sandbox_with(work.path(), |_| {});
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let script = format!(
            "bash -c 'echo hello > /dev/tcp/127.0.0.1/{port}' && echo connected || echo refused"
        );
        for network in [true, false] {
            let limits = TaskLimits {
                network,
                ..TaskLimits::default()
            };
            let outcome = run_in(&sandbox, &script, &limits);
            // The task has ended, so a connection it made is waiting to be accepted.
            let accepted = listener.accept().is_ok();
            let expect_refused = !network && sandbox.can_deny_network();
            assert_eq!(
                outcome.exec.stdout.trim(),
                if expect_refused {
                    "refused"
                } else {
                    "connected"
                },
                "network {network}: {outcome:?}"
            );
            assert_eq!(accepted, !expect_refused, "network {network}");
            let state = match (network, sandbox.can_deny_network()) {
                (true, _) => NetworkState::Allowed,
                (false, true) => NetworkState::TcpDenied,
                (false, false) => NetworkState::NotEnforced,
            };
            assert_eq!(outcome.enforcement.network, state);
        }
    }

    #[test]
    fn progress_lines_reach_the_callback() {
        let (sender, received) = crossbeam_channel::unbounded();
        let mut command = sh("echo half >&$RETIRE_PROGRESS_FD; echo '{\"fraction\":1}' >&3");
        command.progress = Some(Box::new(move |line| {
            let _ = sender.send(line);
        }));
        let outcome = run(command, &TaskLimits::default());
        assert_eq!(outcome.exec.exit_code, Some(0), "{outcome:?}");
        let lines: Vec<String> = received.iter().collect();
        assert_eq!(lines, ["half", "{\"fraction\":1}"]);
    }
}
