//! The `retire` command-line client, as a library.
//!
//! - [`client`] is a blocking client for the master's TCP port; other
//!   crates' tests use it to drive a real master. [`lines`] is its framing
//!   (a socket, the line codec, reads with a deadline), which the
//!   end-to-end tests' own client shares.
//! - [`args`] is the command line, [`commands`] runs each subcommand, and
//!   [`table`] prints aligned tables for people.
//! - [`run`] ties them together; the `retire` binary only parses the command
//!   line, calls it, and turns its [`Error`] into an exit code.

pub mod args;
pub mod client;
pub mod commands;
pub mod lines;
pub mod require;
pub mod table;

use args::{Cli, Command, DevicesAction};
use client::{Client, ClientError};
use commands::Output;
use protocol::auth::{Token, TokenKind};
use protocol::{ListDevices, ListTasks};
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

/// The exit codes of `retire`; [`args::EXIT_CODES_HELP`] explains them.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The awaited task failed, or the output could not be written.
    pub const TASK_FAILED: u8 = 1;
    /// A usage error (clap's own code).
    pub const USAGE: u8 = 2;
    /// The master cannot be reached, the connection was lost, or a reply
    /// did not come within `--timeout`.
    pub const UNREACHABLE: u8 = 3;
    /// The master answered with an error, or with a reply that cannot be
    /// read.
    pub const MASTER_ERROR: u8 = 4;
    /// `--wait-timeout` expired before the task finished.
    pub const WAIT_TIMED_OUT: u8 = 5;
    /// The awaited task timed out and reported no exit code (as `timeout(1)`).
    pub const TASK_TIMED_OUT: u8 = 124;
    /// The awaited task was cancelled and reported no exit code (as after
    /// Ctrl-C in a shell).
    pub const TASK_CANCELLED: u8 = 130;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the master failed, or the master answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `--wait-timeout` expired; the task keeps running.
    #[error(
        "stopped waiting for task {task_id} after {}; it keeps running (see `retire task {task_id}`)",
        humantime::format_duration(Duration::from_secs(.after.as_secs()))
    )]
    WaitTimedOut {
        /// The task waited for.
        task_id: String,
        /// How long the client waited.
        after: Duration,
    },
    /// Standard output or standard error could not be written.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// `--token` (RETIRE_TOKEN) is not an admin token.
    #[error("invalid --token (RETIRE_TOKEN): {0}")]
    Token(protocol::auth::AuthError),
    /// `--token-file` (RETIRE_TOKEN_FILE) could not be read.
    #[error("cannot read the admin token from {}", .path.display())]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Runs the command line `cli`, printing to `out` and `err`, and returns the
/// exit code of a command that succeeded (with `submit --wait`, the task's).
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, Error> {
    let mut client = Client::connect(&cli.master, cli.reply_timeout)?;
    let token = match (&cli.token, &cli.token_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => {
            Some(
                std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        (None, None) => None,
    };
    if let Some(token) = token {
        let token = Token::parse(TokenKind::Admin, &token).map_err(Error::Token)?;
        client.authenticate_admin(&token)?;
    }
    let mut output = Output {
        out,
        err,
        json: cli.json,
        now: SystemTime::now(),
    };
    let output = &mut output;
    match &cli.command {
        Command::Submit(submit) => commands::submit(&mut client, submit, output),
        Command::Status => commands::status(&mut client, output),
        Command::Devices {
            action: Some(DevicesAction::Revoke { device_id }),
            ..
        } => commands::revoke(&mut client, device_id, output),
        Command::Devices {
            action: None,
            role,
            status,
            limit,
            before,
        } => {
            let filter = ListDevices {
                role: role.clone(),
                status: status.clone(),
                limit: *limit,
                before: before.clone(),
            };
            commands::devices(&mut client, filter, output)
        }
        Command::Device { device_id } => commands::device(&mut client, device_id, output),
        Command::Tasks {
            state,
            limit,
            before,
        } => {
            let filter = ListTasks {
                state: *state,
                limit: *limit,
                before: before.clone(),
            };
            commands::tasks(&mut client, filter, output)
        }
        Command::Task { task_id } => commands::task(&mut client, task_id, output),
        Command::Cancel { task_id } => commands::cancel(&mut client, task_id, output),
        Command::Retry { task_id } => commands::retry(&mut client, task_id, output),
        Command::Delete { task_id } => commands::delete(&mut client, task_id, output),
        Command::Drain { device_id } => commands::drain(&mut client, device_id, output),
        Command::Watch => commands::watch(&mut client, output),
        Command::Prune { before } => commands::prune(&mut client, *before, output),
        Command::Strategy { name } => commands::strategy(&mut client, *name, output),
    }
}
