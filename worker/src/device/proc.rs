//! The processes of this device as `/proc` shows them: one line of `/proc/PID/stat`,
//! and the marker the worker puts in the environment of every process it starts, so
//! that a process can be recognised after it left its group ([`crate::tasks::orphans`])
//! or after the worker itself was killed ([`crate::state::running`]).

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

/// The sandbox marker in a process's environment, if it can be read.
pub fn marker_of(pid: libc::pid_t) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARKER_ENV}=");
    environ
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
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
}
