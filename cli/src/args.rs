//! The command line, as clap derive types, and the parsers of its values.
//!
//! Values are checked here, while clap still knows which flag they came
//! from, so that a bad one is a usage error (exit code 2) that names it.

use crate::require::{parse_requirement, Requirement, KEYS};
use clap::{Args, Parser, Subcommand};
use protocol::text::{DurationError, Shortest};
use protocol::types::validate_id;
use protocol::{DeviceStatus, PlacementStrategy, Priority, TaskState};
use serde_json::Value;
use std::time::Duration;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (with --wait: the task completed with exit code 0)
  1  the task failed (with --wait; a task that reports its own exit code
     exits with that code instead), or the output could not be written
  2  usage error: unknown flag, missing or invalid value
  3  cannot reach the master, the connection was lost, or the master did
     not answer within --timeout
  4  the master answered with an error; it is printed as
     `error: <text> (<code>)`, or the reply could not be read
  5  --wait-timeout expired before the task finished (it keeps running)
With --wait a task that timed out exits with 124 and a cancelled one with
130, unless the task reported an exit code of its own.";

/// The `retire` command line.
#[derive(Debug, Parser)]
#[command(
    name = "retire",
    version,
    about = "Submit and inspect work on a Retire-Cluster master",
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// The master's TCP address.
    #[arg(
        long,
        global = true,
        env = "RETIRE_MASTER",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    pub master: String,

    /// The admin token (`retire-master token show` prints it). Without it,
    /// only reads work, and only from addresses the master lets read
    /// without a token (loopback by default).
    #[arg(
        long,
        global = true,
        env = "RETIRE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Read the admin token from this file instead (a token on the command
    /// line shows in `ps`).
    #[arg(
        long,
        global = true,
        env = "RETIRE_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    pub token_file: Option<std::path::PathBuf>,

    /// Print the master's JSON result instead of a table.
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to wait for the connection and for each reply, in seconds
    /// or as `1m30s`. Give it before the subcommand: `submit --timeout` is
    /// the task's own timeout.
    #[arg(long = "timeout", value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    pub reply_timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a task and print its id (or, with --wait, its output).
    #[command(after_long_help = EXIT_CODES_HELP)]
    Submit(SubmitArgs),
    /// Show cluster totals.
    Status,
    /// List devices (or `devices revoke ID`).
    Devices {
        /// What to do to a device.
        #[command(subcommand)]
        action: Option<DevicesAction>,
        /// Only devices of this role.
        #[arg(long)]
        role: Option<String>,
        /// Only devices with this status (online, draining, offline).
        #[arg(long, value_parser = parse_device_status)]
        status: Option<String>,
        /// At most this many, newest registered first (default 500, at
        /// most 1,000).
        #[arg(long, value_name = "N", value_parser = parse_limit)]
        limit: Option<usize>,
        /// Only devices registered before this one: the next page, from the
        /// id the previous page named (`more: retire devices --before ID`).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Show one device.
    Device {
        /// The device's id.
        device_id: String,
    },
    /// List tasks, newest first.
    Tasks {
        /// Only tasks in this state (queued, assigned, running, completed,
        /// failed, timed_out, cancelled).
        #[arg(long, value_parser = parse_task_state)]
        state: Option<TaskState>,
        /// At most this many (default 100, at most 1,000).
        #[arg(long, value_name = "N", value_parser = parse_limit)]
        limit: Option<usize>,
        /// Only tasks older than this one: the next page, from the id the
        /// previous page named (`more: retire tasks --before ID`).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Show one task with its result.
    Task {
        /// The task's id.
        task_id: String,
    },
    /// Cancel a task.
    Cancel {
        /// The task's id.
        task_id: String,
    },
    /// Queue a failed, timed-out, cancelled or dead-lettered task again,
    /// with a fresh retry budget (`retire tasks --state dead_letter` lists
    /// the dead letters).
    Retry {
        /// The task's id.
        task_id: String,
    },
    /// Delete one dead letter for good (`retire tasks --state dead_letter`
    /// lists them); a task in any other state is refused. Needs the admin
    /// token.
    Delete {
        /// The dead letter's task id.
        task_id: String,
    },
    /// Give a device no new work; its running tasks finish.
    Drain {
        /// The device's id.
        device_id: String,
    },
    /// Print every cluster event as it happens, until interrupted.
    Watch,
    /// Show the master's placement strategy, or switch it (admin token):
    /// least_loaded, round_robin, fewest_tasks, random, weighted or
    /// energy_aware. A switch takes effect from the next assignment on and
    /// is kept across restarts (docs/placement.md).
    Strategy {
        /// The strategy to switch to; none shows the current one.
        #[arg(value_name = "NAME", value_parser = parse_strategy)]
        name: Option<PlacementStrategy>,
    },
    /// Delete the finished tasks (completed, failed, timed out, cancelled,
    /// dead-lettered) that finished before a date or longer ago than an age,
    /// now rather than at their retention; live tasks are never deleted.
    /// Needs the admin token.
    Prune {
        /// A date (`2026-12-01`, UTC midnight, or RFC 3339 like
        /// `2026-12-01T12:00:00Z`) or an age (`7d`, `12h`, `90m`).
        #[arg(long, value_name = "DATE|AGE", value_parser = parse_cutoff)]
        before: Cutoff,
    },
}

/// `retire prune --before`: a point in time, or an age counted back from
/// when the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Milliseconds since the Unix epoch.
    At(i64),
    /// Older than this.
    Age(Duration),
}

impl Cutoff {
    /// The cutoff in milliseconds since the Unix epoch, with `now` for an
    /// age.
    pub fn unix_ms(self, now: std::time::SystemTime) -> i64 {
        let ms = |time: std::time::SystemTime| {
            time.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64)
        };
        match self {
            Cutoff::At(unix_ms) => unix_ms,
            Cutoff::Age(age) => ms(now).saturating_sub(age.as_millis() as i64),
        }
    }
}

/// A date (`YYYY-MM-DD`, RFC 3339) or a positive age (`7d`, `12h`, seconds).
fn parse_cutoff(text: &str) -> Result<Cutoff, String> {
    let text = text.trim();
    let date = if text.len() == 10 {
        humantime::parse_rfc3339_weak(&format!("{text} 00:00:00"))
    } else {
        humantime::parse_rfc3339_weak(text)
    };
    if let Ok(time) = date {
        let unix_ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("{text} is before 1970"))?
            .as_millis() as i64;
        return Ok(Cutoff::At(unix_ms));
    }
    parse_duration(text).map(Cutoff::Age).map_err(|_| {
        format!("expected a date (2026-12-01, or RFC 3339) or an age (7d, 12h), got {text:?}")
    })
}

/// What `retire devices` can do to one device.
#[derive(Debug, Subcommand)]
pub enum DevicesAction {
    /// Cut a device off at once and for good: its credential stops working,
    /// its connection closes and its tasks go back to the queue.
    Revoke {
        /// The device's id.
        device_id: String,
    },
}

/// The flags of `retire submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The task type (echo, sleep, shell, …); `shell` when a command follows `--`.
    #[arg(
        long = "type",
        value_name = "TYPE",
        required_unless_present = "command"
    )]
    pub task_type: Option<String>,

    /// The handler's input, as JSON.
    #[arg(long, value_name = "JSON", value_parser = parse_json, conflicts_with = "command")]
    pub payload: Option<Value>,

    /// low, normal, high, urgent, or 0 to 100.
    #[arg(long, value_name = "P", default_value = "normal", value_parser = parse_priority)]
    pub priority: Priority,

    /// How long the task may run before it is killed, in seconds or as `5m`.
    #[arg(long = "timeout", value_name = "SECS", value_parser = parse_duration)]
    pub task_timeout: Option<Duration>,

    /// Where the task may run; repeatable. KEY is one of the requirement keys.
    #[arg(long = "require", value_name = "KEY=VALUE", value_parser = parse_require, long_help = require_help())]
    pub requirements: Vec<Requirement>,

    /// How many times a failed attempt is retried.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,

    /// Place this task by another strategy than the master's: least_loaded,
    /// round_robin, fewest_tasks, random, weighted or energy_aware.
    #[arg(long, value_name = "NAME", value_parser = parse_strategy)]
    pub strategy: Option<PlacementStrategy>,

    /// Choose the task's id; submitting the same id again does not queue it twice.
    #[arg(long = "id", value_name = "ID", value_parser = parse_task_id)]
    pub task_id: Option<String>,

    /// Wait for the task, print its output and exit with its exit code.
    #[arg(long)]
    pub wait: bool,

    /// Stop waiting after this long (the task keeps running), in seconds or as `10m`.
    #[arg(long, value_name = "SECS", value_parser = parse_duration, requires = "wait")]
    pub wait_timeout: Option<Duration>,

    /// A command to run as a `shell` task, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn require_help() -> String {
    format!(
        "Where the task may run; repeatable. KEY is one of: {KEYS}. \
         `tag` adds to the required tags; other keys take the last value given."
    )
}

/// A duration given as seconds (`90`, `0.5`) or in humantime form (`1m30s`);
/// it must be positive.
fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    protocol::text::parse_duration(text, Shortest::AboveZero)
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|err| format!("invalid JSON: {err}"))
}

fn parse_strategy(text: &str) -> Result<PlacementStrategy, String> {
    text.parse()
        .map_err(|why: protocol::types::UnknownStrategy| why.to_string())
}

fn parse_priority(text: &str) -> Result<Priority, String> {
    Priority::parse(text)
        .ok_or_else(|| format!("expected low, normal, high, urgent or 0-100, got {text:?}"))
}

fn parse_require(text: &str) -> Result<Requirement, String> {
    parse_requirement(text)
}

fn parse_task_id(text: &str) -> Result<String, String> {
    validate_id("the task id", text)?;
    Ok(text.to_string())
}

/// A page size: a listing of no entries would show nothing and name no
/// next page, so 0 is refused rather than answered with an empty table.
fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!(
            "expected a whole number of at least 1, got {text:?}"
        )),
        Ok(limit) => Ok(limit),
    }
}

fn parse_task_state(text: &str) -> Result<TaskState, String> {
    TaskState::parse(text).ok_or_else(|| {
        let names: Vec<&str> = TaskState::ALL.iter().map(|state| state.as_str()).collect();
        format!("expected one of {}, got {text:?}", names.join(", "))
    })
}

fn parse_device_status(text: &str) -> Result<String, String> {
    DeviceStatus::parse(text)
        .map(|status| status.as_str().to_string())
        .ok_or_else(|| format!("expected online, draining or offline, got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `retire prune --before`: a date (UTC midnight), an RFC 3339 time or
    /// an age; anything else is refused.
    #[test]
    fn prune_takes_a_date_or_an_age() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        fn check(text: &str, now: std::time::SystemTime, expect: Option<i64>) {
            let parsed = parse_cutoff(text).map(|cutoff| cutoff.unix_ms(now));
            assert_eq!(parsed.as_ref().ok().copied(), expect, "{text}: {parsed:?}");
        }
        check("2026-12-01", now, Some(1_796_083_200_000));
        check("2026-12-01T12:00:00Z", now, Some(1_796_126_400_000));
        check("7d", now, Some(1_800_000_000_000 - 7 * 86_400_000));
        check("12h", now, Some(1_800_000_000_000 - 12 * 3_600_000));
        check("90", now, Some(1_800_000_000_000 - 90_000));
        check("0", now, None);
        check("-3d", now, None);
        check("yesterday", now, None);
        check("2026-13-01", now, None);
        let argv = ["retire", "prune", "--before", "soon"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    fn submit(args: &[&str]) -> Result<SubmitArgs, clap::error::ErrorKind> {
        let argv = ["retire", "submit"].iter().chain(args);
        match Cli::try_parse_from(argv).map_err(|err| err.kind())?.command {
            Command::Submit(submit) => Ok(submit),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn submit_flags() {
        use clap::error::ErrorKind;
        let parsed = submit(&["--", "ls", "-l", "/tmp"]).expect("a command is enough");
        assert_eq!(parsed.task_type, None);
        assert_eq!(parsed.command, ["ls", "-l", "/tmp"]);

        let parsed = submit(&[
            "--type",
            "echo",
            "--payload",
            r#"{"message":"hi"}"#,
            "--priority",
            "high",
            "--timeout",
            "1m",
            "--require",
            "tag=gpu",
            "--require",
            "arch=arm",
            "--id",
            "job-1",
            "--wait",
            "--wait-timeout",
            "30",
        ])
        .expect("valid flags");
        assert_eq!(parsed.task_type.as_deref(), Some("echo"));
        assert_eq!(parsed.payload, Some(serde_json::json!({"message": "hi"})));
        assert_eq!(parsed.priority, Priority::HIGH);
        assert_eq!(parsed.task_timeout, Some(Duration::from_secs(60)));
        assert_eq!(parsed.requirements.len(), 2);
        assert_eq!(parsed.task_id.as_deref(), Some("job-1"));
        assert_eq!(parsed.wait_timeout, Some(Duration::from_secs(30)));

        assert_eq!(submit(&[]).err(), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(
            submit(&["--"]).err(),
            Some(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            submit(&["--payload", "{}", "--", "ls"]).err(),
            Some(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            submit(&["--type", "echo", "--payload", "{nope"]).err(),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(
            submit(&["--type", "echo", "--require", "gpu=1"]).err(),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(
            submit(&["--type", "echo", "--id", "has space"]).err(),
            Some(ErrorKind::ValueValidation)
        );
        assert_eq!(
            submit(&["--type", "echo", "--wait-timeout", "5"]).err(),
            Some(ErrorKind::MissingRequiredArgument)
        );
    }

    #[test]
    fn listing_limits_are_at_least_one() {
        for (args, parses) in [
            (["retire", "tasks", "--limit", "1"], true),
            (["retire", "tasks", "--limit", "0"], false),
            (["retire", "tasks", "--limit", "three"], false),
            (["retire", "devices", "--limit", "500"], true),
            (["retire", "devices", "--limit", "0"], false),
        ] {
            let outcome = Cli::try_parse_from(args);
            assert_eq!(outcome.is_ok(), parses, "{args:?}: {outcome:?}");
            if let Err(error) = outcome {
                assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
                assert!(error.to_string().contains("at least 1"), "{error}");
            }
        }
    }

    #[test]
    fn global_flags() {
        let cli = Cli::try_parse_from([
            "retire",
            "--timeout",
            "2.5",
            "tasks",
            "--json",
            "--master",
            "nas:9000",
        ])
        .expect("valid flags");
        assert_eq!(cli.reply_timeout, Duration::from_millis(2500));
        assert!(cli.json);
        assert_eq!(cli.master, "nas:9000");
    }

    /// `retire strategy [NAME]` and `submit --strategy NAME` take the
    /// strategies' names and nothing else.
    #[test]
    fn strategy_names_are_checked_where_they_are_typed() {
        let strategy = |args: &[&str]| {
            let argv = ["retire", "strategy"].iter().chain(args);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Strategy { name }) => Ok(name),
                Ok(other) => panic!("parsed as {other:?}"),
                Err(error) => Err(error.kind()),
            }
        };
        assert_eq!(strategy(&[]), Ok(None));
        assert_eq!(
            strategy(&["energy_aware"]),
            Ok(Some(PlacementStrategy::EnergyAware))
        );
        assert_eq!(
            strategy(&["fastest"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        let args = submit(&["--type", "echo", "--strategy", "round_robin"]).expect("valid");
        let task = crate::commands::build_task(&args);
        assert_eq!(task.strategy, Some(PlacementStrategy::RoundRobin));
        let plain = crate::commands::build_task(&submit(&["--type", "echo"]).expect("valid"));
        assert_eq!(plain.strategy, None);
        assert!(submit(&["--type", "echo", "--strategy", "fastest"]).is_err());
    }
}
