//! Keeps the join token out of reach of the worker's tasks and of other local users.
//!
//! `/proc/PID/cmdline` is readable by every user of the machine, tasks included, and
//! shows the bytes the kernel placed at the top of the process's stack at `execve`:
//! a token given as `--token` would stay readable there for the worker's whole life.
//! `/proc/PID/environ` shows the environment area the same way; it is readable only by
//! the process's own user and root, and not even by its own user once the process is
//! non-dumpable ([`make_non_dumpable`]). So the worker, before anything else:
//!
//! 1. overwrites the value of every `--token` argument, and of `RETIRE_JOIN_TOKEN` in
//!    its environment, in place with `*` ([`scrub_join_token`]), after the flags were
//!    read; `ps` then shows `--token ********…`;
//! 2. becomes non-dumpable, so that a process of the same user (a task, when the worker
//!    does not run as root) can neither open `/proc/PID/environ` or `/proc/PID/mem` nor
//!    attach a debugger.
//!
//! How the bytes are found and written. `std::env::args` returns copies, so the
//! original argument strings must be located another way. Two were considered:
//!
//! - a function in `.init_array`, which glibc calls with `argc`, `argv` and `envp`.
//!   musl calls these functions without arguments, and the worker ships as a static
//!   musl binary, so this would read garbage exactly where it matters most;
//! - the kernel's own record of the areas, `arg_start`, `arg_end`, `env_start` and
//!   `env_end` in `/proc/self/stat` (fields 48 to 51, Linux 3.5 and later), read and
//!   written through `/proc/self/mem`. This works with any C library (or none), needs
//!   no `unsafe` code, and the kernel checks every address: a wrong one fails with an
//!   error instead of corrupting memory.
//!
//! The second is used. Before writing, the worker reads the area back and checks that
//! it is what it expects (the arguments as `std::env::args_os` gave them, NUL-separated
//! strings), so it never writes over something it does not understand. Writing to
//! `/proc/self/mem` needs the process to be dumpable when it does not run as root (the
//! file belongs to root otherwise), which is why scrubbing comes first and
//! [`make_non_dumpable`] second.
//!
//! What this does not cover: the token was visible from `execve` until the scrub (a
//! few milliseconds), and it stays in the shell history of whoever typed it. Hence
//! the printed join command passes it in the environment, and the warning.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The command-line flag that carries the join token.
pub const TOKEN_FLAG: &str = "--token";
/// The environment variable that carries the join token.
pub const TOKEN_VARIABLE: &str = "RETIRE_JOIN_TOKEN";
/// The byte written over every byte of a scrubbed value.
const MASK: u8 = b'*';

/// What [`scrub_join_token`] overwrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scrubbed {
    /// Values of `--token` in the arguments.
    pub in_arguments: usize,
    /// Values of `RETIRE_JOIN_TOKEN` in the environment area.
    pub in_environment: usize,
}

/// Why the token could not be scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    /// `/proc/self/stat` or `/proc/self/mem` could not be used.
    #[error("{path}: {source}")]
    Proc {
        /// The file.
        path: &'static str,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/stat` does not have the fields, or the area does not hold the
    /// arguments this process was started with (something rewrote it).
    #[error("{0}")]
    Unexpected(String),
}

/// Overwrites the join token's value in this process's argument and environment
/// areas, so `/proc/PID/cmdline` and `/proc/PID/environ` no longer show it. Call it
/// once, early, before other threads start, after the flags were parsed (later
/// calls to `std::env::args` see the masked values) and before [`make_non_dumpable`].
pub fn scrub_join_token() -> Result<Scrubbed, ScrubError> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|source| ScrubError::Proc {
        path: "/proc/self/stat",
        source,
    })?;
    let areas = areas_from_stat(&stat).ok_or_else(|| {
        ScrubError::Unexpected("/proc/self/stat has no argument and environment areas".into())
    })?;
    let mem = File::options()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .map_err(|source| ScrubError::Proc {
            path: "/proc/self/mem",
            source,
        })?;
    let mem_error = |source| ScrubError::Proc {
        path: "/proc/self/mem",
        source,
    };

    let arguments = read_area(&mem, &areas.arguments).map_err(mem_error)?;
    let expected: Vec<u8> = std::env::args_os()
        .flat_map(|arg| {
            let mut bytes = std::os::unix::ffi::OsStringExt::into_vec(arg);
            bytes.push(0);
            bytes
        })
        .collect();
    if arguments != expected {
        return Err(ScrubError::Unexpected(
            "the argument area does not hold this process's arguments".into(),
        ));
    }
    let in_arguments = argument_values(&arguments);
    let environment = read_area(&mem, &areas.environment).map_err(mem_error)?;
    let in_environment = variable_values(&environment);
    for (area, values, bytes) in [
        (&areas.arguments, &in_arguments, &arguments),
        (&areas.environment, &in_environment, &environment),
    ] {
        for value in values.iter().filter(|value| !value.is_empty()) {
            let mask = vec![MASK; value.len()];
            if bytes[value.clone()] == mask[..] {
                continue;
            }
            mem.write_all_at(&mask, area.start + value.start as u64)
                .map_err(mem_error)?;
        }
    }
    Ok(Scrubbed {
        in_arguments: in_arguments.len(),
        in_environment: in_environment.len(),
    })
}

/// Makes the worker non-dumpable: processes of its own user (its tasks, when it does
/// not run as root) can no longer read its memory or environment through `/proc` or
/// attach a debugger, and it leaves no core dump. Returns the error of `prctl`.
pub fn make_non_dumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// The process's argument and environment areas, as addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Areas {
    arguments: Range<u64>,
    environment: Range<u64>,
}

/// Reads `arg_start`, `arg_end`, `env_start` and `env_end` (fields 48 to 51) from the
/// text of `/proc/PID/stat`. The second field, the command name, is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted from the last
/// `)`, which is followed by field 3.
fn areas_from_stat(stat: &str) -> Option<Areas> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let arguments = field(48)?..field(49)?;
    let environment = field(50)?..field(51)?;
    let sane = |range: &Range<u64>| range.start > 0 && range.start <= range.end;
    (sane(&arguments) && sane(&environment)).then_some(Areas {
        arguments,
        environment,
    })
}

/// The bytes of one area, read through `/proc/self/mem`.
fn read_area(mem: &File, area: &Range<u64>) -> io::Result<Vec<u8>> {
    let length = usize::try_from(area.end - area.start)
        .map_err(|_| io::Error::other("the area is too large"))?;
    let mut bytes = vec![0; length];
    mem.read_exact_at(&mut bytes, area.start)?;
    Ok(bytes)
}

/// Each NUL-terminated string of `area` with its place (an unterminated last one
/// included).
fn strings(area: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut offset = 0;
    area.split(|&byte| byte == 0).map(move |string| {
        let start = offset;
        offset += string.len() + 1;
        (start, string)
    })
}

/// Where the values of the token flag are in an argument area: the argument after
/// `--token`, and what follows `--token=`. Arguments after `--` are operands, not
/// flags, and are left alone.
fn argument_values(area: &[u8]) -> Vec<Range<usize>> {
    let flag = TOKEN_FLAG.as_bytes();
    let mut values = Vec::new();
    let mut take_next = false;
    for (start, argument) in strings(area).skip(1) {
        if take_next {
            values.push(start..start + argument.len());
            take_next = false;
        } else if argument == b"--" {
            break;
        } else if argument == flag {
            take_next = true;
        } else if argument.starts_with(flag) && argument.get(flag.len()) == Some(&b'=') {
            values.push(start + flag.len() + 1..start + argument.len());
        }
    }
    values
}

/// Where the values of the token variable are in an environment area.
fn variable_values(area: &[u8]) -> Vec<Range<usize>> {
    let prefix = format!("{TOKEN_VARIABLE}=");
    strings(area)
        .filter(|(_, variable)| variable.starts_with(prefix.as_bytes()))
        .map(|(start, variable)| start + prefix.len()..start + variable.len())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The area with the found values masked, as text with `|` for NUL.
    fn masked(area: &str, find: fn(&[u8]) -> Vec<Range<usize>>) -> String {
        let mut bytes = area.replace('|', "\0").into_bytes();
        for value in find(&bytes) {
            bytes[value].fill(MASK);
        }
        String::from_utf8(bytes).expect("text").replace('\0', "|")
    }

    #[test]
    fn token_flags_are_found_in_arguments() {
        let check = |area: &str, expect: &str| {
            assert_eq!(masked(area, argument_values), expect, "{area}");
        };
        check(
            "retire-worker|--join|nas:8080|--token|rc-join-ab|",
            "retire-worker|--join|nas:8080|--token|**********|",
        );
        check(
            "retire-worker|--token=rc-join-ab|--id|pi|",
            "retire-worker|--token=**********|--id|pi|",
        );
        check(
            "retire-worker|--token|a|--token=bc|--token|",
            "retire-worker|--token|*|--token=**|--token|",
        );
        // Not the flag: another flag, the program's own name, an operand.
        check(
            "--token|retire-worker|--token-file|t|--tokens|x|--|--token|y|",
            "--token|retire-worker|--token-file|t|--tokens|x|--|--token|y|",
        );
        check("retire-worker|--token|", "retire-worker|--token|");
    }

    #[test]
    fn the_token_variable_is_found_in_the_environment() {
        let check = |area: &str, expect: &str| {
            assert_eq!(masked(area, variable_values), expect, "{area}");
        };
        check(
            "HOME=/root|RETIRE_JOIN_TOKEN=rc-join-ab|PATH=/bin|",
            "HOME=/root|RETIRE_JOIN_TOKEN=**********|PATH=/bin|",
        );
        check(
            "RETIRE_JOIN_TOKEN_FILE=/etc/join|XRETIRE_JOIN_TOKEN=a|RETIRE_JOIN_TOKEN=|",
            "RETIRE_JOIN_TOKEN_FILE=/etc/join|XRETIRE_JOIN_TOKEN=a|RETIRE_JOIN_TOKEN=|",
        );
    }

    #[test]
    fn areas_are_read_from_proc_stat() {
        let tail: String = (4..=52).map(|field| format!(" {field}")).collect();
        let stat = format!("1234 (a (b) c) S{tail}");
        assert_eq!(
            areas_from_stat(&stat),
            Some(Areas {
                arguments: 48..49,
                environment: 50..51
            })
        );
        assert_eq!(areas_from_stat("1234 (short) S 1 2 3"), None);
        assert_eq!(areas_from_stat("no parenthesis"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
        let areas = areas_from_stat(&own).expect("this process's areas");
        assert!(areas.arguments.start < areas.arguments.end, "{areas:?}");
    }
}
