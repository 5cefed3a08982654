//! `retire-worker`: joins a Retire-Cluster master and runs the tasks it hands out.
//!
//! This binary is thin glue: it reads flags and environment variables, sets up logging
//! and signal handling, and calls [`worker::run`]. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use daemon::settings::{Given, SettingsError, SettingsFile};
use protocol::auth::{Token, TokenKind};
use protocol::text::{parse_duration, DurationError, Shortest};
use worker::device::profile;
use worker::settings::{policy_lines, WorkerSettings};
use worker::{scrub, Handlers, StopHandle, WorkerConfig};

/// Join a Retire-Cluster master and run the tasks it hands out.
///
/// Every setting but the join token can also be in the config file, under the
/// flag's name with `_` for `-` (`tags` for `--tag`): a flag wins over the
/// environment, which wins over the file, which wins over the default.
// The settings are read from the matches as typed (`Given`) and picked by
// `WorkerSettings`; clap only checks them here, so most fields are not read.
#[derive(Debug, Parser)]
#[command(name = "retire-worker", version)]
#[allow(dead_code)]
struct Args {
    /// The master's worker port to join (required here, in the environment or in
    /// the config file). A NAME.local host is asked for over mDNS; `auto` finds a
    /// master that announces itself on the LAN and proves the join token.
    #[arg(long, env = "RETIRE_JOIN", value_name = "HOST:PORT|auto")]
    join: Option<String>,
    /// The id to register under [default: hostname plus a machine-id prefix].
    #[arg(long, env = "RETIRE_DEVICE_ID", value_name = "NAME")]
    id: Option<String>,
    /// How many tasks to run at once [default: one per CPU].
    #[arg(long, env = "RETIRE_SLOTS", value_name = "N")]
    slots: Option<usize>,
    /// The role to register with.
    #[arg(long, env = "RETIRE_ROLE", value_name = "R", default_value = "worker")]
    role: String,
    /// A tag to register with; repeat the flag for more (the variable takes a comma-separated list).
    #[arg(
        long = "tag",
        env = "RETIRE_TAGS",
        value_name = "T",
        value_delimiter = ','
    )]
    tags: Vec<String>,
    /// A TOML file with these settings and the owner's policy, sandbox set-up and
    /// limits (see docs/sandbox.md).
    #[arg(long, env = "RETIRE_CONFIG", value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Accept only these task types (comma-separated); overrides the config file.
    #[arg(
        long,
        env = "RETIRE_ALLOW_TYPES",
        value_name = "TYPES",
        value_delimiter = ','
    )]
    allow_types: Option<Vec<String>>,
    /// Refuse these task types (comma-separated); overrides the config file.
    #[arg(
        long,
        env = "RETIRE_DENY_TYPES",
        value_name = "TYPES",
        value_delimiter = ','
    )]
    deny_types: Option<Vec<String>>,
    /// A folder of custom handlers: an executable per task type, named after it.
    #[arg(long, env = "RETIRE_HANDLERS", value_name = "DIR")]
    handlers: Option<PathBuf>,
    /// Where to keep results until the master acknowledges them (in DIR/DEVICE-ID/outbox)
    /// [default: $XDG_STATE_HOME/retire-worker, else (or where that cannot be created)
    /// ~/.local/state/retire-worker].
    #[arg(long, env = "RETIRE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// On SIGTERM/SIGINT, seconds (or a duration like 1m30s) to wait for running tasks before handing them back to
    /// the master (a second signal leaves at once).
    #[arg(
        long,
        env = "RETIRE_DRAIN_TIMEOUT",
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_seconds
    )]
    drain_timeout: Duration,
    /// The master's join token (`retire-master token show` prints it). Needed to enroll
    /// once; afterwards the worker proves its own key, kept in DIR/DEVICE-ID/. Pass it
    /// in the environment: on the command line every local user can read it (the
    /// worker masks it at start and warns).
    #[arg(
        long,
        env = "RETIRE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Read the join token from this file instead (a token on the command line shows in
    /// `ps`).
    #[arg(
        long,
        env = "RETIRE_JOIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// Drop the master key this worker pinned when it enrolled, then join: with the join
    /// token it enrolls again (the device keeps its own key). For a master that was set
    /// up again; a worker given the token does this by itself once the new master has
    /// proven the token.
    #[arg(long)]
    forget_master: bool,
    /// Read the battery and temperature sensors under this directory instead of /sys.
    /// For tests, which give the worker a fake sysfs tree; hidden from --help.
    #[arg(long, value_name = "PATH", hide = true)]
    sysfs_root: Option<PathBuf>,
    /// Show the configuration instead of joining.
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// What `retire-worker` can do besides joining.
#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Print the effective configuration, every setting with its value and where it
    /// came from (flag, env, file PATH:LINE or default), the join token redacted.
    Config,
}

/// Parses a non-negative duration: seconds (fractions allowed) or a duration like `1m30s`.
fn parse_seconds(text: &str) -> Result<Duration, DurationError> {
    parse_duration(text, Shortest::Zero)
}

fn main() -> ExitCode {
    daemon::logging::init();
    let command = Args::command();
    let matches = command.clone().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    protect_join_token(args.token.is_some());
    let given = Given::from_matches(&command, &matches, &["config"]);
    match run(args, &given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let prefix = daemon::logging::stderr_prefix(log::Level::Error);
            eprintln!("{prefix}retire-worker: error: {error:#}");
            // A configuration mistake has its own status (see the README).
            ExitCode::from(daemon::settings::exit_code(error.as_ref(), 1))
        }
    }
}

/// Takes the join token out of what other processes can read about this one, before
/// any thread or task starts (see [`worker::scrub`]): its value is masked in the
/// argument and environment areas (`/proc/PID/cmdline`, `/proc/PID/environ`), the
/// variable is removed so that no child inherits it, and the worker becomes
/// non-dumpable. A token on the command line was visible until now and stays in the
/// shell's history, so that gets a warning.
fn protect_join_token(have_token: bool) {
    let on_command_line = std::env::args_os().skip(1).any(|arg| {
        let arg = arg.to_string_lossy();
        arg == scrub::TOKEN_FLAG || arg.starts_with(&format!("{}=", scrub::TOKEN_FLAG))
    });
    if on_command_line {
        log::warn!(
            "the join token was given on the command line, where every user of this machine \
             can read it (ps, /proc/PID/cmdline) and the shell history keeps it; it is masked \
             from now on, but pass it as {} or with --token-file instead, and remove it once \
             the worker has enrolled",
            scrub::TOKEN_VARIABLE
        );
    }
    if have_token {
        match scrub::scrub_join_token() {
            Ok(scrubbed) => log::debug!("join token masked: {scrubbed:?}"),
            Err(error) => log::warn!(
                "could not mask the join token in this process's arguments and environment: \
                 {error}"
            ),
        }
        // Tasks start with a cleared environment anyway; this keeps the variable from
        // any child, whatever the configuration passes through. No other thread runs
        // yet.
        std::env::remove_var(scrub::TOKEN_VARIABLE);
    }
    if let Err(error) = scrub::make_non_dumpable() {
        log::warn!("could not make the worker non-dumpable: {error}");
    }
}

/// Reads the join token from `--token` (`RETIRE_JOIN_TOKEN`) or `--token-file`.
fn join_token(text: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<Token>> {
    match (text, file) {
        (Some(text), _) => Token::parse(TokenKind::Join, &text)
            .map(Some)
            .context("invalid --token (RETIRE_JOIN_TOKEN)"),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the join token from {}", path.display()))?;
            Token::parse(TokenKind::Join, &text)
                .map(Some)
                .with_context(|| format!("invalid join token in {}", path.display()))
        }
        (None, None) => Ok(None),
    }
}

fn run(mut args: Args, given: &Given) -> anyhow::Result<()> {
    let file = args.config.as_deref().map(SettingsFile::read).transpose()?;
    let (settings, execution) = WorkerSettings::resolve(given, file.as_ref())?;
    if let Some(Subcommand::Config) = args.command {
        match &file {
            Some(file) => println!("# config file: {}", file.path().display()),
            None => println!("# no config file (--config PATH or RETIRE_CONFIG)"),
        }
        let mut lines = settings.lines();
        lines.extend(policy_lines(&execution, file.as_ref()));
        print!("{}", daemon::settings::render(&lines));
        return Ok(());
    }
    let Some(join) = settings.join.value else {
        return Err(SettingsError::Missing {
            key: "join".into(),
            how: "--join HOST:PORT, RETIRE_JOIN or `join` in the config file".into(),
        }
        .into());
    };
    if let Some(path) = &settings.token_file.value {
        if worker::tasks::sandbox::TaskPaths::new(&execution.sandbox).reaches(path) {
            log::warn!(
                "the token file {} lies where tasks may read it (under a system directory or \
                 a `[sandbox] read` path): delete it once this worker has enrolled",
                path.display()
            );
        }
    }
    // The text of the token is not kept past this point.
    let token = join_token(args.token.take(), settings.token_file.value.as_deref())?;
    let device_id = match settings.id.value {
        Some(id) => id,
        None => profile::default_device_id(&profile::collect()),
    };
    let stop = StopHandle::new();
    watch_signals(stop.clone()).context("could not install the SIGINT/SIGTERM handler")?;
    let config = WorkerConfig {
        master: join.clone(),
        device_id: Some(device_id.clone()),
        slots: settings.slots.value,
        role: settings.role.value,
        tags: settings
            .tags
            .value
            .into_iter()
            .filter(|tag| !tag.trim().is_empty())
            .collect(),
        state_dir: settings.state_dir.value,
        drain_timeout: settings.drain_timeout.value.0,
        token,
        forget_master: args.forget_master,
        notify: true,
        sysfs_root: args
            .sysfs_root
            .unwrap_or_else(|| PathBuf::from(worker::device::power::SYSFS_ROOT)),
    };
    config.validate().context("invalid configuration")?;
    println!("retire-worker: joining master {join} as {device_id}");
    worker::run_with(config, execution, Handlers::new(), stop)
        .with_context(|| format!("could not run a worker for {join}"))
}

/// Turns the first SIGINT or SIGTERM into a graceful leave (drain, then goodbye; bounded
/// by `--drain-timeout`) and the second into an immediate one (goodbye, hand back the
/// running tasks, cancel them), for an operator who will not wait.
fn watch_signals(stop: StopHandle) -> anyhow::Result<()> {
    daemon::watch_signals(move |signal, _count| {
        if stop.is_stopped_now() {
            log::debug!("received signal {signal} while already stopping");
        } else if stop.is_stopped() {
            log::warn!("received signal {signal} again, leaving at once");
            stop.stop_now();
        } else {
            log::info!("received signal {signal}, draining (send it again to leave at once)");
            stop.stop();
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` shows clap's defaults while `WorkerSettings` picks the values:
    /// the two must agree, setting by setting.
    #[test]
    fn the_help_shows_the_defaults_the_worker_uses() {
        let given = Given::clap_defaults(&Args::command(), &[]);
        let (shown, _) = WorkerSettings::resolve(&given, None).expect("valid defaults");
        let (used, _) = WorkerSettings::resolve(&Given::new(), None).expect("valid defaults");
        for (shown, used) in shown.lines().into_iter().zip(used.lines()) {
            assert_eq!(
                shown.value, used.value,
                "--help shows another default for {}",
                shown.key
            );
        }
    }
}
