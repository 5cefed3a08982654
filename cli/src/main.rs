//! `retire`: the command-line client of Retire-Cluster.
//!
//! All the work happens in the `cli` library; this file parses the command
//! line, runs it, and maps the library's errors to exit codes (listed in
//! `retire --help` and in the crate's README).

use clap::Parser;
use cli::args::Cli;
use cli::client::ClientError;
use cli::{exit, Error};
use std::io::{self, ErrorKind};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli::run(&cli, &mut io::stdout().lock(), &mut io::stderr().lock());
    match result {
        Ok(code) => ExitCode::from(code),
        // A reader that went away (`retire tasks | head`) is not a failure.
        Err(Error::Output(err)) if err.kind() == ErrorKind::BrokenPipe => ExitCode::from(exit::OK),
        Err(error) => {
            let code = exit_code(&error);
            eprintln!("error: {:#}", report(error, &cli.master));
            ExitCode::from(code)
        }
    }
}

fn exit_code(error: &Error) -> u8 {
    match error {
        Error::Client(ClientError::Master { .. } | ClientError::Protocol(_)) => exit::MASTER_ERROR,
        Error::Client(
            ClientError::Connect { .. }
            | ClientError::Closed
            | ClientError::Io { .. }
            | ClientError::ReplyTimeout { .. },
        ) => exit::UNREACHABLE,
        Error::WaitTimedOut { .. } => exit::WAIT_TIMED_OUT,
        Error::Output(_) => exit::TASK_FAILED,
        Error::Token(_) | Error::TokenFile { .. } => exit::USAGE,
    }
}

/// Adds what the user can act on. A master's error is printed exactly as
/// `<text> (<code>)`, which scripts may match.
fn report(error: Error, master: &str) -> anyhow::Error {
    match error {
        Error::Client(ClientError::Connect { .. }) => anyhow::Error::new(error)
            .context("cannot reach the master (set --master or RETIRE_MASTER)"),
        Error::Client(
            ClientError::Closed | ClientError::Io { .. } | ClientError::ReplyTimeout { .. },
        ) => anyhow::Error::new(error).context(format!("connection to {master}")),
        Error::Client(ClientError::Protocol(_)) => {
            anyhow::Error::new(error).context(format!("master at {master}"))
        }
        _ => anyhow::Error::new(error),
    }
}
