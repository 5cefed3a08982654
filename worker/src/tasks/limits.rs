//! The limits of one run of a task, one type for all who read them: the
//! owner's config fills them in, `exec` stops a run at its timeout and caps
//! its output, and the sandbox sets the rest as rlimits before the program
//! starts. What a run actually got goes into its result as
//! [`crate::tasks::sandbox::EnforcedLimits`], a view with the wire's names.

use std::time::Duration;

/// The default cap on captured output, per stream (stdout and stderr each): 1 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Default CPU seconds per process.
pub const DEFAULT_CPU_SECS: u64 = 3600;
/// Default address space per process: 2 GiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 30;
/// Default largest file a task may write: 1 GiB.
pub const DEFAULT_FILE_SIZE_BYTES: u64 = 1 << 30;
/// Default open files per process.
pub const DEFAULT_OPEN_FILES: u64 = 256;
/// Default number of processes (and threads) a task may have at once.
pub const DEFAULT_PROCESSES: u64 = 64;

/// The limits of one run of a task: the owner's config gives them per type
/// ([`crate::tasks::config`]), `exec` enforces the timeout and the output cap,
/// and the sandbox sets the rest as rlimits. `None` leaves a limit as the
/// worker has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLimits {
    /// Wall-clock time before the whole task is stopped.
    pub timeout: Option<Duration>,
    /// CPU seconds per process (`RLIMIT_CPU`): `SIGXCPU` at the limit, `SIGKILL` a few
    /// seconds later.
    pub cpu_secs: Option<u64>,
    /// Address space per process (`RLIMIT_AS`), in bytes.
    pub memory_bytes: Option<u64>,
    /// Largest file the task may write (`RLIMIT_FSIZE`), in bytes.
    pub file_size_bytes: Option<u64>,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes and threads the task may have at once (`RLIMIT_NPROC`, see
    /// `docs/sandbox.md` for how that works unprivileged).
    pub processes: Option<u64>,
    /// Bytes of stdout, and separately of stderr, that are kept.
    pub max_output_bytes: usize,
    /// Whether the task may open TCP connections and listen on TCP ports. `false` is
    /// enforced with Landlock's network rules where the kernel has them (ABI 4, Linux
    /// 6.7); see `docs/sandbox.md` for what it blocks and what it cannot.
    pub network: bool,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            timeout: None,
            cpu_secs: Some(DEFAULT_CPU_SECS),
            memory_bytes: Some(DEFAULT_MEMORY_BYTES),
            file_size_bytes: Some(DEFAULT_FILE_SIZE_BYTES),
            open_files: Some(DEFAULT_OPEN_FILES),
            processes: Some(DEFAULT_PROCESSES),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            network: true,
        }
    }
}
