//! Logging for both daemons: the usual `env_logger` lines on a terminal or in a file,
//! and lines journald understands when systemd connected standard error to the journal.
//!
//! journald stamps every line with its own time, so a timestamp of ours is noise there,
//! and it reads a `<N>` prefix (syslog's priority numbers) as the line's priority, which
//! is what `journalctl -p warning` filters on. Without the prefix every line would be
//! logged at the unit's default priority (info), warnings and errors included.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

/// The variable systemd sets to `DEVICE:INODE` of the stream it connected to the journal.
pub const JOURNAL_STREAM: &str = "JOURNAL_STREAM";

/// Level logged when `RUST_LOG` says nothing.
pub const DEFAULT_LEVEL: &str = "info";

/// Whether [`init`] found standard error connected to the journal; set once.
static TO_JOURNAL: OnceLock<bool> = OnceLock::new();

/// syslog's priority number for a log level (`<3>` is an error, `<4>` a warning, `<6>`
/// information, `<7>` debugging), as journald reads it from the start of a line.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether standard error is the stream systemd connected to the journal.
///
/// `JOURNAL_STREAM` alone is not enough: it is inherited, so a daemon started from a
/// shell inside a unit (or by a test run from one) sees it while its standard error goes
/// elsewhere. As systemd's documentation advises, the device and inode it names must be
/// those of standard error itself.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os(JOURNAL_STREAM) else {
        return false;
    };
    let Some((device, inode)) = value
        .to_str()
        .and_then(|text| text.split_once(':'))
        .and_then(|(device, inode)| {
            Some((device.parse::<u64>().ok()?, inode.parse::<u64>().ok()?))
        })
    else {
        return false;
    };
    // A duplicate of the descriptor, so that reading its metadata needs no unsafe code
    // and closing it leaves standard error open.
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
}

/// Sets up the `log` macros for a daemon: the level comes from `RUST_LOG` (default
/// [`DEFAULT_LEVEL`]). On the journal ([`stderr_is_journal`]) every line is
/// `<N>TARGET: MESSAGE` (a multi-line message gets the prefix on each of its lines);
/// anywhere else it is `env_logger`'s usual line with a timestamp.
pub fn init() {
    let journal = *TO_JOURNAL.get_or_init(stderr_is_journal);
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LEVEL));
    if journal {
        builder.format(|out, record| {
            let priority = syslog_priority(record.level());
            let message = record.args().to_string();
            let mut lines = message.split('\n');
            let first = lines.next().unwrap_or_default();
            writeln!(out, "<{priority}>{}: {first}", record.target())?;
            for line in lines {
                writeln!(out, "<{priority}>{line}")?;
            }
            Ok(())
        });
    }
    builder.init();
}

/// The prefix for a line written straight to standard error at `level` (an error a
/// daemon prints as it exits, after logging is over): `<N>` on the journal, nothing
/// elsewhere. Decided by [`init`]; empty before it.
pub fn stderr_prefix(level: log::Level) -> String {
    if TO_JOURNAL.get().copied().unwrap_or(false) {
        format!("<{}>", syslog_priority(level))
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_has_its_syslog_priority() {
        let check = |level, expect| assert_eq!(syslog_priority(level), expect, "{level}");
        check(log::Level::Error, 3);
        check(log::Level::Warn, 4);
        check(log::Level::Info, 6);
        check(log::Level::Debug, 7);
        check(log::Level::Trace, 7);
    }
}
