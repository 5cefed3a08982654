//! What every launch of the real binaries shares, for the end-to-end tests and the
//! bench alike: the flags that start a master or a worker, and reading the master's
//! `retire-master listening on ADDR` line. The callers choose the binary, the logs and
//! how a failure is reported (a test panics, the bench returns an error).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// What the master prints first on its standard output, followed by its address.
/// Tests and scripts read it to learn the port when they ask for port 0.
pub const LISTENING_PREFIX: &str = "retire-master listening on ";

/// Why [`wait_listening`] learnt no address.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The master's standard output was not piped to us.
    #[error("the master's standard output is not piped")]
    NotPiped,
    /// The master closed its standard output (it exited) before it listened.
    #[error("retire-master exited before it listened")]
    Exited,
    /// No listening line within the patience given.
    #[error("retire-master did not start listening within {0:?}")]
    TimedOut(Duration),
    /// The line did not hold a socket address.
    #[error("retire-master printed a bad address {0:?}")]
    BadAddress(String),
}

/// Adds to `command` what every start of a master passes: `--listen LISTEN` and
/// `--data-dir DATA_DIR`, no standard input, and standard output piped for
/// [`wait_listening`]. The caller adds its own flags and logging after it.
pub fn master_command<'a>(
    command: &'a mut Command,
    listen: &str,
    data_dir: &Path,
) -> &'a mut Command {
    command
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
}

/// A command that starts the worker `binary` joining `master` as `id` with `slots`
/// slots, with no standard input or output (it logs to standard error). The caller
/// adds the state dir, the token, its own flags and logging.
pub fn worker_command(binary: &Path, master: SocketAddr, id: &str, slots: usize) -> Command {
    let mut command = Command::new(binary);
    worker_args(&mut command, master, id, slots);
    command
}

/// Adds to `command` (a worker, run directly or under an emulator) what
/// [`worker_command`] passes: joining `master` as `id` with `slots` slots, no
/// standard input or output.
pub fn worker_args<'a>(
    command: &'a mut Command,
    master: SocketAddr,
    id: &str,
    slots: usize,
) -> &'a mut Command {
    command
        .arg("--join")
        .arg(master.to_string())
        .arg("--id")
        .arg(id)
        .arg("--slots")
        .arg(slots.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
}

/// Waits, at most `patience`, for the master `child` (started with
/// [`master_command`]) to print its listening line, and returns the address. A
/// thread keeps draining the master's standard output afterwards, so that the master
/// never blocks on a full pipe.
pub fn wait_listening(child: &mut Child, patience: Duration) -> Result<SocketAddr, LaunchError> {
    let stdout = child.stdout.take().ok_or(LaunchError::NotPiped)?;
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        let mut told = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !told {
                if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                    let _ = found.send(addr.trim().to_string());
                    told = true;
                }
            }
        }
    });
    let text = match address.recv_timeout(patience) {
        Ok(text) => text,
        Err(mpsc::RecvTimeoutError::Timeout) => return Err(LaunchError::TimedOut(patience)),
        Err(mpsc::RecvTimeoutError::Disconnected) => return Err(LaunchError::Exited),
    };
    text.parse().map_err(|_| LaunchError::BadAddress(text))
}
