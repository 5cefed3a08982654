//! The processes of this device as `/proc` shows them: one line of `/proc/PID/stat`,
//! and the marker the worker puts in the environment of every process it starts, so
//! that a process can be recognised after it left its group ([`crate::tasks::orphans`])
//! or after the worker itself was killed ([`crate::state::running`]).

use std::time::{Duration, Instant};

/// The environment variable that tags every process of a sandboxed task with the
/// task's marker, so that an escaped process can still be told apart.
pub const MARKER_ENV: &str = "RETIRE_SANDBOX_ID";

/// One line of `/proc/PID/stat`, the parts the sweep and the `running` records need.
#[derive(Debug)]
pub struct ProcStat {
    pub pid: libc::pid_t,
    pub command: String,
    pub state: char,
    pub ppid: libc::pid_t,
    pub pgid: libc::pid_t,
    /// When the process started, in clock ticks since boot (field 22); with the boot
    /// id it tells a process from a later one that reused its pid.
    pub start_time: Option<u64>,
}

/// The position of `starttime` (field 22) among the fields after the command name,
/// which start at field 3 (`state`).
const START_TIME_AFTER_COMMAND: usize = 22 - 3;

/// Parses `/proc/PID/stat`. The command name is in parentheses and may itself contain
/// spaces and parentheses, so the fields after it are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let (pid, command) = head.split_once(" (")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    // Three fields are read: `state`, `ppid` and `pgid`.
    let start_time = fields
        .nth(START_TIME_AFTER_COMMAND - 3)
        .and_then(|field| field.parse().ok());
    Some(ProcStat {
        pid: pid.trim().parse().ok()?,
        command: command.to_string(),
        state,
        ppid,
        pgid,
        start_time,
    })
}

/// How long [`marker_of`] keeps looking at a process whose environment it could not
/// read whole because the process is in the middle of an `exec` (1 s). The window is
/// short, but a preempted `exec` on a loaded machine can hold it open for a while; a
/// process whose environment reads whole (even an empty one) is never waited for.
pub const ENVIRON_SETTLE: Duration = Duration::from_secs(1);

/// The pause between two looks at an environment that is being replaced (1 ms).
const ENVIRON_RETRY_PAUSE: Duration = Duration::from_millis(1);

/// The position of `flags` (field 9) among the fields after the command name.
const FLAGS_AFTER_COMMAND: usize = 9 - 3;

/// The position of `endcode` (field 27) among the fields after the command name.
const END_CODE_AFTER_COMMAND: usize = 27 - 3;

/// The position of `env_start` (field 50) among the fields after the command name;
/// `env_end` (field 51) follows it.
const ENV_START_AFTER_COMMAND: usize = 50 - 3;

/// `PF_EXITING` in the `flags` field: the process is exiting and has no memory left.
const PF_EXITING: u64 = 0x0000_0004;

/// `PF_KTHREAD` in the `flags` field: a kernel thread, which never has an environment.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The sandbox marker in a process's environment, if it can be read.
///
/// While a process is in the middle of an `exec`, `/proc/PID/environ` does not show its
/// environment whole: the new memory has none yet (the read is empty), and a read that
/// began before the `exec` stops where the old memory went away (the read is cut
/// short, possibly inside the marker). An escaped process that is just starting its
/// program would then look unmarked, and a task's sweep would leave it running. So a
/// read is trusted only when it is as long as the environment `/proc/PID/stat` shows
/// afterwards, and is made again (for at most [`ENVIRON_SETTLE`]) while the process is
/// alive and the two disagree.
pub fn marker_of(pid: libc::pid_t) -> Option<String> {
    let give_up = Instant::now() + ENVIRON_SETTLE;
    loop {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        match environ_read(&stat, environ.len()) {
            EnvironRead::Whole | EnvironRead::Unknowable => return marker_in(&environ),
            EnvironRead::Partial if Instant::now() >= give_up => return marker_in(&environ),
            EnvironRead::Partial => std::thread::sleep(ENVIRON_RETRY_PAUSE),
        }
    }
}

/// The marker among the complete (NUL-terminated) entries of an environment, so that a
/// read cut short never yields a marker cut short.
fn marker_in(environ: &[u8]) -> Option<String> {
    let prefix = format!("{MARKER_ENV}=");
    let complete = match environ.iter().rposition(|byte| *byte == 0) {
        Some(last_nul) => &environ[..last_nul],
        None => &[],
    };
    complete
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// What a read of `/proc/PID/environ` is worth, judged from the `/proc/PID/stat` line
/// read just after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvironRead {
    /// The read is exactly as long as the process's environment.
    Whole,
    /// The process runs, and the read is shorter or longer than its environment, or
    /// its new program is not set up yet (`env_end` or `endcode` still 0; the kernel
    /// sets `endcode` after the environment, which passes through an empty state on
    /// the way): it is in the middle of an `exec`.
    Partial,
    /// The process is a zombie, exiting or a kernel thread (it has no environment any
    /// more), or the line has no environment bounds (an old kernel): reading again
    /// would not help.
    Unknowable,
}

/// Judges a read of `read_len` bytes of a process's environment by its stat line.
fn environ_read(stat: &str, read_len: usize) -> EnvironRead {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return EnvironRead::Unknowable;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
    };
    let (Some(state), Some(flags), Some(end_code), Some(env_start), Some(env_end)) = (
        fields.first(),
        number(FLAGS_AFTER_COMMAND),
        number(END_CODE_AFTER_COMMAND),
        number(ENV_START_AFTER_COMMAND),
        number(ENV_START_AFTER_COMMAND + 1),
    ) else {
        return EnvironRead::Unknowable;
    };
    if matches!(*state, "Z" | "X") || flags & (PF_EXITING | PF_KTHREAD) != 0 {
        return EnvironRead::Unknowable;
    }
    let whole = env_end != 0
        && end_code != 0
        && u64::try_from(read_len).is_ok_and(|len| env_end.checked_sub(env_start) == Some(len));
    if whole {
        EnvironRead::Whole
    } else {
        EnvironRead::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let stat = parse_stat("42 (my (odd) prog) S 7 42 42 0 -1 4194560 0 0").expect("parses");
        assert_eq!(stat.pid, 42);
        assert_eq!(stat.command, "my (odd) prog");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 7);
        assert_eq!(stat.pgid, 42);
        assert_eq!(stat.start_time, None);
        let full = "7 (sh) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 2498560 221";
        assert_eq!(parse_stat(full).expect("parses").start_time, Some(123_456));
        assert!(parse_stat("garbage").is_none());
    }

    /// A `/proc/PID/stat` line with the given state, flags, `endcode` and environment
    /// bounds.
    fn stat_line_with_code(
        state: char,
        flags: u64,
        end_code: u64,
        env_start: u64,
        env_end: u64,
    ) -> String {
        // Fields 4 to 8, `flags` (9), 10 to 26 as zeros, `endcode` (27), 28 to 49 as zeros.
        let zeros = |n: usize| vec!["0"; n].join(" ");
        format!(
            "7 (my (odd) prog) {state} 1 7 7 0 -1 {flags} {} {end_code} {} {env_start} {env_end} 0",
            zeros(26 - 10 + 1),
            zeros(49 - 28 + 1)
        )
    }

    /// A stat line of a process whose program is set up (`endcode` is not 0).
    fn stat_line(state: char, flags: u64, env_start: u64, env_end: u64) -> String {
        stat_line_with_code(state, flags, 4096, env_start, env_end)
    }

    #[test]
    fn a_read_is_whole_only_when_as_long_as_the_environment() {
        let check = |line: String, read_len: usize, expect: EnvironRead| {
            assert_eq!(
                environ_read(&line, read_len),
                expect,
                "{line} ({read_len} bytes)"
            );
        };
        check(
            stat_line('S', 0x40_0000, 1000, 1200),
            200,
            EnvironRead::Whole,
        );
        // A process whose environment really is empty.
        check(stat_line('S', 0, 1000, 1000), 0, EnvironRead::Whole);
        // The middle of an `exec`: the new memory has no environment yet, or an
        // environment still empty on its way to being set up (`endcode` comes after).
        check(stat_line('R', 0, 0, 0), 0, EnvironRead::Partial);
        check(
            stat_line_with_code('R', 0, 0, 1000, 1000),
            0,
            EnvironRead::Partial,
        );
        check(
            stat_line_with_code('R', 0, 0, 1000, 1200),
            200,
            EnvironRead::Partial,
        );
        // A read cut short, or one of the program before an `exec`.
        check(stat_line('S', 0, 1000, 1200), 32, EnvironRead::Partial);
        check(stat_line('S', 0, 1000, 1200), 0, EnvironRead::Partial);
        check(stat_line('S', 0, 1000, 1200), 300, EnvironRead::Partial);
        check(stat_line('Z', 0, 0, 0), 0, EnvironRead::Unknowable);
        check(stat_line('X', 0, 0, 0), 0, EnvironRead::Unknowable);
        check(stat_line('R', PF_EXITING, 0, 0), 0, EnvironRead::Unknowable);
        check(stat_line('S', PF_KTHREAD, 0, 0), 0, EnvironRead::Unknowable);
        // A line too short to hold the bounds (an old kernel) is never waited for.
        check(
            "7 (sh) S 1 7 7 0 -1 0".to_string(),
            0,
            EnvironRead::Unknowable,
        );
        check("garbage".to_string(), 0, EnvironRead::Unknowable);
    }

    #[test]
    fn only_complete_entries_yield_a_marker() {
        let check = |environ: &[u8], expect: Option<&str>| {
            assert_eq!(marker_in(environ).as_deref(), expect, "{environ:?}");
        };
        check(b"A=1\0RETIRE_SANDBOX_ID=abc\0B=2\0", Some("abc"));
        check(b"RETIRE_SANDBOX_ID=abc\0", Some("abc"));
        // Cut short inside the marker, or before its end.
        check(b"A=1\0RETIRE_SANDBOX_ID=ab", None);
        check(b"RETIRE_SANDBOX_ID=abc", None);
        check(b"A=1\0", None);
        check(b"", None);
    }

    #[test]
    fn the_marker_of_a_process_that_keeps_exec_ing_is_always_found() {
        // A process that replaces its program over and over spends part of its time in
        // the middle of an `exec`, when the kernel shows an empty environment. An
        // escaped process that starts its program while a task's sweep looks at it is
        // in the same state. Without looking again, a few percent of these reads came
        // back empty (measured: 28 to 146 of 500), so all of these finding the marker
        // shows that the passing state is waited out.
        const LOOKS: usize = 2000;
        let directory = tempfile::tempdir().expect("temp dir");
        let script = directory.path().join("again.sh");
        std::fs::write(&script, "exec /bin/sh \"$0\"\n").expect("script written");
        let marker = format!("proc-test-{:016x}", fastrand::u64(..));
        let mut child = std::process::Command::new("/bin/sh")
            .arg(&script)
            .env(MARKER_ENV, &marker)
            .spawn()
            .expect("spawn");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        let found = |pid| marker_of(pid).as_deref() == Some(marker.as_str());
        // Until the child's first `exec` it carries this process's environment.
        let give_up = Instant::now() + Duration::from_secs(10);
        while !found(pid) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        let misses = (0..LOOKS).filter(|_| !found(pid)).count();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(misses, 0, "the marker was missed {misses} times in {LOOKS}");
    }
}
