//! Helpers for the end-to-end tests: start the real `retire-master`,
//! `retire-worker` and `retire` binaries on loopback in temp dirs, and talk
//! to the master over a real socket.
//!
//! The binaries are found next to the test executable's directory
//! (`target/<profile>/`). `cargo test --workspace` builds them, because
//! each of their crates has an integration test.

pub mod http;
pub mod launch;

use cli::lines::{Lines, LinesError};
use launch::{master_command, wait_listening, worker_args};
use protocol::auth::{ClientHandshake, Method, Nonce, Proof, Token, TokenKind, Transcript};
use protocol::{Ack, Envelope, ErrorReply, Event, Frame, Message};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails. Waits end
/// as soon as their event arrives; this only bounds a broken run.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/e2e-HASH → target/<profile>/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// A program to start: one of the binaries, run directly, or a cross-built
/// one under a user-mode emulator (`qemu-aarch64-static BINARY`, see
/// `tests/e2e/emulation.rs`).
#[derive(Debug, Clone)]
pub struct Program {
    program: OsString,
    leading: Vec<OsString>,
}

impl Program {
    /// The workspace's binary `name`, run directly (see [`bin`]).
    pub fn native(name: &str) -> Program {
        Program {
            program: bin(name).into_os_string(),
            leading: Vec::new(),
        }
    }

    /// The program and arguments of `command`, to which each start adds its
    /// own (an emulator's command line that names the binary it runs).
    pub fn from_command(command: &Command) -> Program {
        Program {
            program: command.get_program().to_os_string(),
            leading: command.get_args().map(|arg| arg.to_os_string()).collect(),
        }
    }

    /// A new command that starts it.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.leading);
        command
    }
}

/// The tokens of a master the tests started.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The join token, for workers.
    pub join: String,
    /// The admin token, for clients.
    pub admin: String,
}

/// The tokens of every master started by this test process, by address, so
/// that [`WorkerProcess::start`], [`retire`] and [`Client::connect`] can
/// authenticate without each test passing tokens around.
static TOKENS: Mutex<Vec<(SocketAddr, Tokens)>> = Mutex::new(Vec::new());

/// The tokens of the master listening on `addr`, when it has any.
pub fn tokens_for(addr: SocketAddr) -> Option<Tokens> {
    let tokens = TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokens
        .iter()
        .rev()
        .find(|(known, _)| *known == addr)
        .map(|(_, tokens)| tokens.clone())
}

/// Reads the tokens a master keeps in `data_dir/secrets/`.
pub fn read_tokens(data_dir: &Path) -> Option<Tokens> {
    let read = |file: &str| {
        std::fs::read_to_string(data_dir.join("secrets").join(file))
            .ok()
            .map(|text| text.trim().to_string())
    };
    Some(Tokens {
        join: read("join.token")?,
        admin: read("admin.token")?,
    })
}

fn remember_tokens(addr: SocketAddr, tokens: Tokens) {
    let mut known = TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    known.retain(|(other, _)| *other != addr);
    known.push((addr, tokens));
}

/// A running `retire-master` process.
pub struct MasterProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl MasterProcess {
    /// Starts a master on `127.0.0.1:0` with its database in `data_dir`.
    pub fn start(data_dir: &Path) -> MasterProcess {
        MasterProcess::start_with(data_dir, "127.0.0.1:0", &[])
    }

    /// Starts a master listening on `listen` with extra flags.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> MasterProcess {
        MasterProcess::start_program(&Program::native("retire-master"), data_dir, listen, extra)
    }

    /// Starts `program` (a master binary, perhaps under an emulator) like
    /// [`MasterProcess::start_with`].
    pub fn start_program(
        program: &Program,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> MasterProcess {
        let mut command = program.command();
        command.stderr(Stdio::inherit());
        MasterProcess::spawn(command, data_dir, listen, extra)
    }

    /// Starts a master like [`MasterProcess::start_with`] with debug logging
    /// written to `log`.
    pub fn start_logged(data_dir: &Path, extra: &[&str], log: &Path) -> MasterProcess {
        let mut command = Command::new(bin("retire-master"));
        let file = std::fs::File::create(log).expect("create the master's log");
        command.stderr(file).env("RETIRE_TEST_MASTER_LOG", "debug");
        MasterProcess::spawn(command, data_dir, "127.0.0.1:0", extra)
    }

    /// Starts a master like [`MasterProcess::start_with`], under a soft
    /// file-size limit (`RLIMIT_FSIZE`) of about `max_file_bytes`: a shell
    /// sets the limit and then `exec`s the master, so [`MasterProcess::pid`]
    /// is the master's own pid (for `prlimit`, see
    /// [`lift_file_size_limit`]). Only its database files are regular
    /// files; its stderr goes through a pipe to the test's stderr, so its
    /// logs cannot hit the limit.
    pub fn start_with_file_size_limit(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        max_file_bytes: u64,
    ) -> MasterProcess {
        // `ulimit -f` counts 512-byte blocks in a POSIX shell.
        let blocks = max_file_bytes.div_ceil(512).max(1);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -S -f {blocks} && exec \"$0\" \"$@\""))
            .arg(bin("retire-master"))
            .stderr(Stdio::piped());
        let mut master = MasterProcess::spawn(command, data_dir, listen, extra);
        if let Some(stderr) = master.child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                }
            });
        }
        master
    }

    fn spawn(mut command: Command, data_dir: &Path, listen: &str, extra: &[&str]) -> MasterProcess {
        // `start_logged` asks for debug logs; otherwise only warnings reach
        // the test's output.
        let log_level: String = command
            .get_envs()
            .find(|(key, _)| *key == "RETIRE_TEST_MASTER_LOG")
            .and_then(|(_, value)| value)
            .map_or_else(
                || "warn".into(),
                |value| value.to_string_lossy().into_owned(),
            );
        let mut child = master_command(&mut command, listen, data_dir)
            .args(extra)
            .env("RUST_LOG", log_level)
            // A `--dev` master's local worker keeps its outbox in the default state dir:
            // keep it inside the test's data dir, not in the real home.
            .env("XDG_STATE_HOME", data_dir.join("xdg-state"))
            .spawn()
            .expect("start retire-master");
        let addr = wait_listening(&mut child, PATIENCE).expect("retire-master listens");
        if !extra.contains(&"--no-auth") {
            if let Some(tokens) = read_tokens(data_dir) {
                remember_tokens(addr, tokens);
            }
        }
        MasterProcess {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Kills the master with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), libc_sigterm());
        self.child.wait().expect("wait for retire-master")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Runs `retire-master --check --data-dir DIR` (SQLite's `integrity_check`
/// on a database no master has open) and returns its output.
pub fn check_database(data_dir: &Path) -> Output {
    Command::new(bin("retire-master"))
        .arg("--check")
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run retire-master --check")
}

/// Lifts the file-size limit of the running process `pid` with util-linux's
/// `prlimit`, as an operator freeing disk space would make writes succeed
/// again.
pub fn lift_file_size_limit(pid: u32) {
    let output = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--fsize=unlimited:unlimited")
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        output.status.success(),
        "prlimit --pid {pid} --fsize=unlimited:unlimited failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn libc_sigterm() -> i32 {
    15
}

/// Sends `signal` to `pid` with the `kill` command (keeps this crate free
/// of unsafe code).
pub fn signal(pid: u32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A running `retire-worker` process.
pub struct WorkerProcess {
    child: Child,
    /// Its device id.
    pub id: String,
    /// Its state dir (the outbox), when the test did not pass `--state-dir` itself.
    _state: Option<tempfile::TempDir>,
}

impl WorkerProcess {
    /// Starts a worker joining `master` as `id` with `slots` slots. Unless `extra` has
    /// a `--state-dir`, the worker keeps its state in a temp dir of its own (deleted
    /// with the `WorkerProcess`), never in the real home.
    pub fn start(master: SocketAddr, id: &str, slots: usize, extra: &[&str]) -> WorkerProcess {
        WorkerProcess::start_with(master, id, slots, extra, WorkerOptions::default())
    }

    /// The state dir the worker was given, when the test did not pass
    /// `--state-dir` itself (its own temp dir).
    pub fn state_dir(&self) -> Option<&Path> {
        self._state.as_ref().map(tempfile::TempDir::path)
    }

    /// Starts a worker like [`WorkerProcess::start`], with `options`.
    pub fn start_with(
        master: SocketAddr,
        id: &str,
        slots: usize,
        extra: &[&str],
        options: WorkerOptions,
    ) -> WorkerProcess {
        let state = if extra.contains(&"--state-dir") {
            None
        } else {
            Some(tempfile::tempdir().expect("a temp state dir for the worker"))
        };
        let state_args: Vec<&Path> = state.iter().map(tempfile::TempDir::path).collect();
        let mut command = match &options.program {
            Some(program) => program.command(),
            None => Command::new(bin("retire-worker")),
        };
        worker_args(&mut command, master, id, slots);
        let token = options
            .join_token
            .or_else(|| tokens_for(master).map(|tokens| tokens.join));
        match (token, options.token_via) {
            (Some(token), TokenVia::Environment) => {
                command.env("RETIRE_JOIN_TOKEN", token);
            }
            (Some(token), TokenVia::Argv) => {
                command.arg("--token").arg(token);
            }
            (_, TokenVia::Nothing) | (None, _) => {}
        }
        command.envs(options.env.iter().map(|(key, value)| (key, value)));
        if let Some((uid, gid)) = options.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let (log_level, stderr) = match &options.log {
            Some(path) => (
                "debug",
                Stdio::from(std::fs::File::create(path).expect("create the worker's log")),
            ),
            None => ("warn", Stdio::inherit()),
        };
        let child = command
            .args(
                state_args
                    .iter()
                    .flat_map(|dir| [Path::new("--state-dir"), dir]),
            )
            .args(extra)
            .env("RUST_LOG", log_level)
            .stderr(stderr)
            .spawn()
            .expect("start retire-worker");
        WorkerProcess {
            child,
            id: id.to_string(),
            _state: state,
        }
    }

    /// Waits (at most [`PATIENCE`]) for the worker to exit on its own and
    /// returns its exit status; `None` if it is still running.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the worker with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How [`WorkerProcess::start_with`] starts a worker.
#[derive(Debug, Default, Clone)]
pub struct WorkerOptions {
    /// The join token to give it (default: its master's, when known).
    pub join_token: Option<String>,
    /// How it gets the join token.
    pub token_via: TokenVia,
    /// Write its debug log here instead of to the test's stderr.
    pub log: Option<PathBuf>,
    /// Run it as this user and group (the test must be root to switch).
    pub run_as: Option<(u32, u32)>,
    /// Extra environment variables (`NOTIFY_SOCKET`, say).
    pub env: Vec<(String, String)>,
    /// The worker to run (default: the workspace's `retire-worker`, directly).
    pub program: Option<Program>,
}

/// How a test hands a worker its join token.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TokenVia {
    /// `RETIRE_JOIN_TOKEN` in its environment, as the master's printed command does.
    #[default]
    Environment,
    /// `--token TOKEN` on its command line, as older printed commands did.
    Argv,
    /// No token at all (a worker that enrolled before).
    Nothing,
}

/// Writes a worker config file into `dir` (returns its path, for
/// `--config`) that lets `shell` tasks write to files outside their private
/// task directory: Landlock off and no process bound (which also spares a
/// scan of `/proc` per task). A worker running as root runs its tasks as
/// `nobody`, so the files tasks write must be in a directory anyone can
/// write to: see [`shared_dir`].
pub fn unconfined_worker_config(dir: &Path) -> PathBuf {
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        "[sandbox]\nlandlock = false\n\n[limits]\nprocesses = 0\n",
    )
    .expect("write the worker config");
    path
}

/// Makes `dir/name`, a directory every user may write to (and makes `dir`
/// searchable by every user), for files that tasks write.
pub fn shared_dir(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let shared = dir.join(name);
    std::fs::create_dir_all(&shared).expect("make the shared dir");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    shared
}

/// Runs the `retire` CLI against `master` and returns its output.
pub fn retire(master: SocketAddr, args: &[&str]) -> Output {
    retire_with(&Program::native("retire"), master, args)
}

/// Runs `program` (a `retire` binary, perhaps under an emulator) like
/// [`retire`].
pub fn retire_with(program: &Program, master: SocketAddr, args: &[&str]) -> Output {
    let mut command = program.command();
    if let Some(tokens) = tokens_for(master) {
        command.env("RETIRE_TOKEN", tokens.admin);
    }
    command
        .arg("--master")
        .arg(master.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run retire")
}

/// A JSON-lines client on a real socket, for tests.
pub struct Client {
    lines: Lines,
    pending: std::collections::VecDeque<Envelope>,
    next_id: u64,
}

impl Client {
    /// Connects to the master, authenticated as admin when the master has
    /// tokens.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).expect("connect to the master")
    }

    /// Connects to the master as [`Client::connect`] does, or says why it
    /// could not.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let mut client = Client::connect_anonymous(addr)?;
        if let Some(tokens) = tokens_for(addr) {
            let token = Token::parse(TokenKind::Admin, &tokens.admin)
                .map_err(|err| std::io::Error::other(err.to_string()))?;
            client
                .authenticate_admin(&token)?
                .map_err(|error| std::io::Error::other(error.error))?;
        }
        Ok(client)
    }

    /// Proves the admin token and checks the master's proof; the outer
    /// error is I/O, the inner one the master's refusal.
    pub fn authenticate_admin(&mut self, token: &Token) -> std::io::Result<Result<(), ErrorReply>> {
        let (handshake, reply) = match self.handshake(Method::Admin, |t| t.client_mac(token))? {
            Ok(done) => done,
            Err(error) => return Ok(Err(error)),
        };
        assert!(
            handshake.master_proves(token, &reply.result.fields()),
            "the master proves it holds the admin token"
        );
        Ok(Ok(()))
    }

    /// Proves the key of the enrolled device `device_id` (its seed as hex,
    /// as the worker keeps it in `identity.key`); the outer error is I/O,
    /// the inner one the master's refusal.
    pub fn authenticate_device(
        &mut self,
        device_id: &str,
        key_seed: &str,
    ) -> std::io::Result<Result<(), ErrorReply>> {
        let key = protocol::auth::KeyPair::parse(key_seed)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let method = Method::Device {
            device_id: device_id.to_string(),
        };
        Ok(self
            .handshake(method, |t| t.device_signature(&key))?
            .map(|_| ()))
    }

    /// Sends `auth_hello` and `auth_proof` (computed by `prove`); returns
    /// the handshake and the master's `ack` to the proof.
    fn handshake(
        &mut self,
        method: Method,
        prove: impl FnOnce(&Transcript) -> Proof,
    ) -> std::io::Result<Result<(ClientHandshake, Ack), ErrorReply>> {
        let nonce = Nonce(std::array::from_fn(|_| fastrand::u8(..)));
        let mut handshake = ClientHandshake::new(method, nonce);
        let ack = match self.try_request(Message::AuthHello(handshake.hello()))? {
            Ok(ack) => ack,
            Err(error) => return Ok(Err(error)),
        };
        let proof = handshake
            .prove(&ack.result.fields(), prove)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let reply = self.try_request(Message::AuthProof(proof))?;
        Ok(reply.map(|ack| (handshake, ack)))
    }

    /// Connects without authenticating.
    pub fn connect_anonymous(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        // For tests that read `stream()` themselves; `Lines` sets its own per read.
        stream.set_read_timeout(Some(PATIENCE))?;
        Ok(Client {
            lines: Lines::new(stream, protocol::DEFAULT_MAX_LINE),
            pending: Default::default(),
            next_id: 0,
        })
    }

    /// The connection's socket, for tests that read, write or shut it
    /// down themselves.
    pub fn stream(&self) -> &TcpStream {
        self.lines.stream()
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.lines.write(bytes, None).expect("write to the master");
    }

    /// Sends a message with a fresh `message_id`; returns that id.
    pub fn send(&mut self, message: Message, sender: Option<&str>) -> String {
        self.try_send(message, sender).expect("write to the master")
    }

    /// Like [`Client::send`], returning write errors (a master that died).
    pub fn try_send(&mut self, message: Message, sender: Option<&str>) -> std::io::Result<String> {
        self.next_id += 1;
        let id = format!("test-{}", self.next_id);
        let mut envelope = Envelope::new(message).with_id(id.clone());
        envelope.sender_id = sender.map(str::to_string);
        self.lines.write(&envelope.to_line(), None)?;
        Ok(id)
    }

    /// Reads the next message (an event or a reply).
    pub fn next_message(&mut self) -> Envelope {
        self.try_next_message().expect("read from the master")
    }

    /// Like [`Client::next_message`], returning read errors: a closed
    /// connection (`UnexpectedEof`), a reset, or nothing within
    /// [`PATIENCE`] (`WouldBlock`/`TimedOut`).
    pub fn try_next_message(&mut self) -> std::io::Result<Envelope> {
        if let Some(envelope) = self.pending.pop_front() {
            return Ok(envelope);
        }
        match self.lines.next_frame(Some(Instant::now() + PATIENCE)) {
            Ok(Some(Frame::Json(bytes))) => {
                Ok(Envelope::decode(&bytes).expect("the master sends valid messages"))
            }
            Ok(Some(Frame::Text(text))) => panic!("unexpected text from the master: {text}"),
            Ok(None) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing from the master within {PATIENCE:?}"),
            )),
            Err(LinesError::Closed) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the master closed the connection",
            )),
            Err(LinesError::Io(err)) => Err(err),
            Err(LinesError::Decode(err)) => panic!("a short line: {err}"),
        }
    }

    /// Sends a request and waits for its reply, keeping events for later.
    pub fn request(&mut self, message: Message) -> Result<Ack, ErrorReply> {
        self.request_as(message, None)
    }

    /// Like [`Client::request`] with a `sender_id`.
    pub fn request_as(
        &mut self,
        message: Message,
        sender: Option<&str>,
    ) -> Result<Ack, ErrorReply> {
        self.try_request_as(message, sender)
            .expect("talk to the master")
    }

    /// Like [`Client::request`], returning I/O errors (a master that died)
    /// instead of panicking.
    pub fn try_request(&mut self, message: Message) -> std::io::Result<Result<Ack, ErrorReply>> {
        self.try_request_as(message, None)
    }

    /// Like [`Client::request_as`], returning I/O errors.
    pub fn try_request_as(
        &mut self,
        message: Message,
        sender: Option<&str>,
    ) -> std::io::Result<Result<Ack, ErrorReply>> {
        let id = self.try_send(message, sender)?;
        let mut skipped = Vec::new();
        let reply = loop {
            let envelope = self.try_next_message()?;
            match envelope.message {
                Message::Ack(ack) if ack.original_message_id.as_deref() == Some(id.as_str()) => {
                    break Ok(ack)
                }
                Message::Error(error)
                    if error.original_message_id.as_deref() == Some(id.as_str()) =>
                {
                    break Err(error)
                }
                _ => skipped.push(envelope),
            }
        };
        for envelope in skipped.into_iter().rev() {
            self.pending.push_front(envelope);
        }
        Ok(reply)
    }

    /// Waits for the next event that `want` accepts, discarding others.
    pub fn wait_event(&mut self, mut want: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "no matching event in time");
            if let Message::Event(event) = self.next_message().message {
                if want(&event) {
                    return event;
                }
            }
        }
    }
}

/// Sends one text command on a fresh connection and returns the reply's
/// body (the lines before the lone `.`).
pub fn text_command(addr: SocketAddr, command: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the master");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("set a read timeout");
    stream
        .write_all(format!("{command}\n").as_bytes())
        .expect("send the command");
    read_text_reply(&mut BufReader::new(stream))
}

/// Reads one text reply: lines up to a lone `.`, dropping the extra `.`
/// of lines that start with `..`.
pub fn read_text_reply(reader: &mut impl BufRead) -> String {
    let mut body = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read a reply line");
        assert!(
            n > 0,
            "the connection closed before the final `.`: {body:?}"
        );
        let line = line.trim_end_matches(['\r', '\n']);
        if line == "." {
            return body;
        }
        body.push_str(
            line.strip_prefix('.')
                .filter(|rest| rest.starts_with('.'))
                .unwrap_or(line),
        );
        body.push('\n');
    }
}
