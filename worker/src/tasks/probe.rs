//! Trying a risky system call in a throw-away child process before the worker makes it.
//!
//! A seccomp policy may kill a process for a single system call it does not allow:
//! Android's app policy delivers `SIGSYS` for any call outside its allowlist, and a
//! systemd unit's `SystemCallFilter=` kills by default too. Landlock's three calls
//! (`landlock_create_ruleset`, `landlock_add_rule`, `landlock_restrict_self`) are new
//! enough to be missing from such lists, and a kill would take the whole worker down at
//! start. So before the sandbox calls them in the worker, [`landlock`] makes the same
//! calls in a forked child and watches how it ends: killed by a signal means the calls
//! are forbidden here and the worker never makes them.
//!
//! The worker's other system calls are old and in every such allowlist: `prctl`
//! (`PR_SET_DUMPABLE`, `PR_SET_CHILD_SUBREAPER`, `PR_SET_NO_NEW_PRIVS`), `prlimit64`,
//! `flock`, `wait4`, `kill`, `setpgid`, `setsid`, `clone` (musl's `posix_spawn` and
//! `fork`), `faccessat`. Neither the worker nor musl calls `pidfd_open`, `clone3` or
//! `close_range`. The list is in docs/termux.md.

use std::io;

/// How a probe child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The child made the calls and exited (whatever the calls returned): they are
    /// allowed, and the in-process code reads their results itself.
    Survived,
    /// The child was killed by this signal: a system call policy forbids the calls.
    Killed(i32),
    /// The probe could not be run (fork or wait failed); the calls were not tried.
    NotRun(String),
}

impl ProbeOutcome {
    /// Says in words how the probe ended, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            ProbeOutcome::Survived => "a probe child made the calls and lived".to_string(),
            ProbeOutcome::Killed(signal) => format!(
                "a probe child making the calls was killed by signal {signal}{}: this system's \
                 call policy (seccomp) forbids them",
                if *signal == libc::SIGSYS {
                    " (SIGSYS)"
                } else {
                    ""
                }
            ),
            ProbeOutcome::NotRun(error) => format!("the probe child could not run: {error}"),
        }
    }
}

/// Makes Landlock's three system calls in a forked child (query the ABI, create a
/// ruleset handling execution, add a rule for `/`, restrict itself) and tells how the
/// child ended.
pub fn landlock() -> ProbeOutcome {
    in_child(landlock_calls)
}

/// Forks; the child runs `calls` and exits with status 0, the parent waits for it.
///
/// The child of a process with threads may only make async-signal-safe calls: `calls`
/// makes raw system calls and nothing else (no allocation, no lock, no Rust I/O).
fn in_child(calls: fn()) -> ProbeOutcome {
    // SAFETY: the child runs only `calls` (raw system calls) and `_exit`, which are
    // async-signal-safe, so it touches no lock or allocator state another thread of
    // the parent might have held at the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return ProbeOutcome::NotRun(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: setrlimit and _exit are plain system calls; a child killed by SIGSYS
        // must leave no core file behind.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            calls();
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child just forked, writing its status to a local.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        if waited == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return ProbeOutcome::NotRun(format!("waitpid: {error}"));
        }
    }
    if libc::WIFSIGNALED(status) {
        ProbeOutcome::Killed(libc::WTERMSIG(status))
    } else {
        ProbeOutcome::Survived
    }
}

/// Landlock's calls, as the sandbox makes them, with raw system calls (run in the
/// probe child only). The results do not matter: only a kill does.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn landlock_calls() {
    /// `LANDLOCK_CREATE_RULESET_VERSION`: asks for the ABI instead of a ruleset.
    const CREATE_RULESET_VERSION: libc::c_uint = 1;
    /// `LANDLOCK_ACCESS_FS_EXECUTE`, the one right the probe's ruleset handles.
    const ACCESS_FS_EXECUTE: u64 = 1;
    /// `LANDLOCK_RULE_PATH_BENEATH`.
    const RULE_PATH_BENEATH: libc::c_int = 1;
    /// `struct landlock_path_beneath_attr`, packed as the kernel declares it.
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    // SAFETY: raw system calls with valid pointers to locals; each failure is
    // ignored (a kernel without Landlock answers ENOSYS or EOPNOTSUPP).
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u64>(),
            0usize,
            CREATE_RULESET_VERSION,
        );
        let handled: u64 = ACCESS_FS_EXECUTE;
        let ruleset = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &handled as *const u64,
            std::mem::size_of::<u64>(),
            0 as libc::c_uint,
        );
        let root = libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        let rule = PathBeneath {
            allowed_access: ACCESS_FS_EXECUTE,
            parent_fd: root,
        };
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset as libc::c_int,
            RULE_PATH_BENEATH,
            &rule as *const PathBeneath,
            0 as libc::c_uint,
        );
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset as libc::c_int,
            0 as libc::c_uint,
        );
    }
}

/// No Landlock outside Linux: nothing to try.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn landlock_calls() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_exits_survived_and_one_killed_by_a_signal_says_which() {
        assert_eq!(in_child(|| {}), ProbeOutcome::Survived);
        // SAFETY: raising a signal in the probe child only.
        let killed = in_child(|| unsafe {
            libc::raise(libc::SIGSYS);
        });
        assert_eq!(killed, ProbeOutcome::Killed(libc::SIGSYS));
        assert!(
            killed.describe().contains("SIGSYS"),
            "{}",
            killed.describe()
        );
    }

    #[test]
    fn landlock_calls_are_allowed_on_this_machine() {
        // This machine has no seccomp policy against Landlock (the e2e test
        // `termux::*` runs the worker under one that kills).
        assert_eq!(landlock(), ProbeOutcome::Survived);
    }
}
