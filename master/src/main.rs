//! `retire-master`: parses flags and environment, sets up logging and
//! signals, binds the listener and calls [`master::run`].

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use daemon::settings::{Given, SettingsFile};
use master::config::Settings;
use master::core::Secrets;
use master::{Shutdown, Synchronous};
use protocol::auth::TokenKind;
use protocol::text::Shortest;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The Retire-Cluster master: registry, queue and scheduler for your idle devices.
///
/// Every flag can also be set through the environment variable shown, and in
/// the config file under its name with `_` for `-`: a flag wins over the
/// environment, which wins over the file, which wins over the default
/// (`retire-master config` shows the outcome).
// The settings are read from the matches as typed (`Given`) and picked by
// `master::config`; clap only checks them here, so most fields are not read.
#[derive(Parser, Debug)]
#[command(name = "retire-master", version)]
#[allow(dead_code)]
struct Args {
    /// A TOML file of settings, keys named like the flags (`data_dir`,
    /// `heartbeat_interval`, `read_only_from = [...]`; see the README).
    #[arg(long, env = "RETIRE_CONFIG", value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    /// Address to listen on for workers, clients and netcat.
    #[arg(long, env = "RETIRE_LISTEN")]
    listen: Option<SocketAddr>,

    /// Directory for the database (created if missing, 0700). Also accepted
    /// after `token ACTION`.
    #[arg(long, env = "RETIRE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// Development mode: listen on 127.0.0.1:8080, keep data in ./.retire-dev,
    /// and run a local worker in this process.
    #[arg(long)]
    dev: bool,

    /// Seconds between worker heartbeats (told to workers at registration).
    #[arg(long, env = "RETIRE_HEARTBEAT_INTERVAL", default_value = "5", value_parser = parse_seconds)]
    heartbeat_interval: Duration,

    /// Seconds of silence after which a worker is considered gone.
    #[arg(long, env = "RETIRE_HEARTBEAT_TIMEOUT", default_value = "15", value_parser = parse_seconds)]
    heartbeat_timeout: Duration,

    /// Longest line a peer may send, in bytes.
    #[arg(long, env = "RETIRE_MAX_LINE", default_value_t = master::DEFAULT_MAX_LINE)]
    max_line: usize,

    /// Most connections open at once.
    #[arg(long, env = "RETIRE_MAX_CONNECTIONS", default_value_t = master::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// SQLite synchronous mode: `normal` (survives a crash of the master) or
    /// `full` (also survives power loss).
    #[arg(long, env = "RETIRE_SYNCHRONOUS", default_value = "normal")]
    synchronous: String,

    /// Retries a task gets when it does not set `max_retries` itself.
    #[arg(long, env = "RETIRE_DEFAULT_MAX_RETRIES", default_value_t = 0)]
    default_max_retries: u32,

    /// Seconds past a task's timeout before the master itself gives up on
    /// the attempt.
    #[arg(long, env = "RETIRE_TIMEOUT_GRACE", default_value = "10", value_parser = parse_seconds)]
    timeout_grace: Duration,

    /// Seconds the master holds the tasks of a worker it lost (one that
    /// keeps running them while away) before it requeues them.
    #[arg(long, env = "RETIRE_LEASE_GRACE", default_value = "60", value_parser = parse_seconds)]
    lease_grace: Duration,

    /// Check the database in --data-dir (SQLite's integrity_check, and that
    /// every task and device record reads back), print the verdict and
    /// exit: 0 when it is sound, 1 when it is not (quarantined records
    /// are listed).
    #[arg(long)]
    check: bool,

    /// Slots of the local worker in --dev mode (default: number of cores).
    #[arg(long, env = "RETIRE_DEV_SLOTS")]
    dev_slots: Option<usize>,

    /// Turn authentication off: anyone who reaches the port may run code on
    /// every worker. Refused unless --listen is a loopback address.
    #[arg(long, env = "RETIRE_NO_AUTH")]
    no_auth: bool,

    /// Accept older workers that cannot authenticate: they may register,
    /// heartbeat, report their own tasks and ask for status, never submit.
    #[arg(long, env = "RETIRE_ALLOW_LEGACY_WORKERS")]
    allow_legacy_workers: bool,

    /// Addresses that may read (status, devices, tasks, task, watch) without
    /// a token, as ADDRESS or ADDRESS/PREFIX, comma-separated; `none` for
    /// nobody. Changes always need the admin token.
    #[arg(
        long,
        env = "RETIRE_READ_ONLY_FROM",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1"
    )]
    read_only_from: Vec<String>,

    /// Seconds a new connection has to authenticate (or, from a read-only
    /// address, to start reading).
    #[arg(long, env = "RETIRE_AUTH_DEADLINE", default_value = "5", value_parser = parse_seconds)]
    auth_deadline: Duration,

    /// Most connections waiting to authenticate at once; past it the one
    /// that waited longest is closed.
    #[arg(long, env = "RETIRE_MAX_UNAUTHENTICATED", default_value_t = master::core::DEFAULT_MAX_UNAUTHENTICATED)]
    max_unauthenticated: usize,

    /// Longest line a peer may send before it has authenticated, in bytes.
    #[arg(long, env = "RETIRE_PRE_AUTH_MAX_LINE", default_value_t = master::DEFAULT_PRE_AUTH_MAX_LINE)]
    pre_auth_max_line: usize,

    /// Most bytes queued for one authenticated peer (replies it has not
    /// read yet); past half of it the peer is not read, past it the
    /// connection is closed. Peers that have not authenticated get 1 MiB.
    #[arg(long, env = "RETIRE_MAX_PENDING_OUTPUT", default_value_t = master::DEFAULT_MAX_PENDING_OUTPUT)]
    max_pending_output: usize,

    /// Most bytes queued for all peers together; past it the connection
    /// with the largest backlog is closed. Peers that have not
    /// authenticated share 32 MiB of it.
    #[arg(long, env = "RETIRE_MAX_TOTAL_OUTPUT", default_value_t = master::DEFAULT_MAX_TOTAL_OUTPUT)]
    max_total_output: usize,

    /// Seconds a connection whose peer half-closed has to take the replies
    /// still queued for it; then it is closed.
    #[arg(long, env = "RETIRE_DRAIN_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    drain_timeout: Duration,

    /// Seconds an anonymous reader may go without a request and without
    /// taking any of its replies before it is closed. A subscriber with
    /// nothing waiting (a quiet `retire watch`) is never idle.
    #[arg(long, env = "RETIRE_READER_IDLE_TIMEOUT", default_value = "600", value_parser = parse_seconds)]
    reader_idle_timeout: Duration,

    /// Seconds a Server-Sent Events stream (`/api/v1/events`,
    /// `/stream/devices`, `/stream/logs`) may stay silent before the master
    /// sends it a `: keep-alive` comment, so proxies and browsers keep it open.
    #[arg(long, env = "RETIRE_SSE_KEEP_ALIVE", default_value = "15", value_parser = parse_seconds)]
    sse_keep_alive: Duration,

    /// Age after which a finished task that completed or was cancelled is
    /// deleted from the database (seconds or a duration like `30d`, `12h`).
    /// Pruning runs in small batches between commits, and the file shrinks.
    #[arg(long, env = "RETIRE_RETENTION", default_value = "30d", value_parser = parse_seconds)]
    retention: Duration,

    /// Age after which a failed, timed-out or dead-lettered task is deleted:
    /// kept longer by default, for whoever comes back to look at them.
    #[arg(long, env = "RETIRE_RETENTION_FAILED", default_value = "90d", value_parser = parse_seconds)]
    retention_failed: Duration,

    /// How the master chooses a device for a task: least_loaded,
    /// round_robin, fewest_tasks, random, weighted or energy_aware (see
    /// docs/placement.md). Only until `retire strategy NAME` sets one,
    /// which is kept across restarts.
    #[arg(long, env = "RETIRE_STRATEGY", default_value = "least_loaded")]
    strategy: String,
    /// Do not announce this master on the LAN. By default it announces
    /// `_retire._tcp` and HOSTNAME.local over mDNS, so that `retire-worker
    /// --join auto` finds it (a master on a loopback address announces
    /// nothing).
    #[arg(long, env = "RETIRE_NO_ANNOUNCE")]
    no_announce: bool,

    /// Manage the tokens or show the configuration instead of running the master.
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// What `retire-master` can do besides running.
#[derive(clap::Subcommand, Debug)]
enum Subcommand {
    /// Print the effective configuration, every key with its value and where
    /// it came from (flag, env, file PATH:LINE or default), then check it.
    Config,
    /// Check the database in --data-dir, as --check does.
    Check,
    /// Copy the database in --data-dir to FILE while the master runs
    /// (SQLite's online backup; work goes on). FILE must not exist. Exit
    /// status 66: no database; 73: FILE exists or cannot be created; 74:
    /// the copy failed (nothing is left behind).
    Backup {
        /// Where the copy goes (a new file, mode 0600).
        file: PathBuf,
    },
    /// Show or replace the tokens in --data-dir (creating them if missing).
    Token {
        /// `show` (the default), `rotate-join` (new workers need the new
        /// token; enrolled ones stay) or `rotate-admin`.
        #[arg(default_value = "show")]
        action: TokenAction,
    },
}

/// `retire-master token ACTION`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum TokenAction {
    /// Print both tokens and the commands that use them.
    Show,
    /// Replace the join token.
    RotateJoin,
    /// Replace the admin token.
    RotateAdmin,
}

/// The address workers should join: the listening one, or this machine's
/// LAN address when it listens on every interface.
fn advertised(listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    // Connecting a UDP socket sends nothing; it only picks the interface
    // the machine would route through.
    let lan = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|socket| {
            socket.connect(("192.0.2.1", 9))?;
            socket.local_addr()
        })
        .map(|address| address.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified());
    match lan {
        Some(ip) => SocketAddr::new(ip, listen.port()).to_string(),
        None => format!("THIS-HOST:{}", listen.port()),
    }
}

/// Starts announcing the master on `bound` unless `off`; what happened is logged.
fn announce(bound: SocketAddr, off: bool) -> Option<master::announce::Announcer> {
    if off {
        log::info!("not announced on the LAN (--no-announce)");
        return None;
    }
    match master::announce::start(bound) {
        Ok(Some(announcer)) => {
            log::info!(
                "announced on the LAN as {:?}: `retire-worker --join auto` finds this master",
                announcer.fullname()
            );
            Some(announcer)
        }
        Ok(None) => {
            log::info!("not announced on the LAN: {bound} is a loopback address");
            None
        }
        Err(error) => {
            log::warn!(
                "could not announce this master on the LAN ({error}); workers can still join \
                 it by address, but not with --join auto"
            );
            None
        }
    }
}

/// Prints the commands that use the tokens. The join token goes in the
/// worker's environment, not on its command line: every user of a device,
/// tasks included, can read a process's command line (`ps`,
/// `/proc/PID/cmdline`), while its environment is readable by its own user
/// and root only, and by nobody else once the worker is non-dumpable, which
/// it makes itself at start.
fn print_commands(secrets: &Secrets, address: &str) {
    println!("join a worker (the token is needed once; the worker keeps its own key):");
    println!(
        "  RETIRE_JOIN_TOKEN={} retire-worker --join {address}",
        secrets.join.reveal()
    );
    println!("use the CLI:");
    println!(
        "  export RETIRE_MASTER={address} RETIRE_TOKEN={}",
        secrets.admin.reveal()
    );
}

/// Prints the commands that use the tokens, naming the token files instead
/// of printing the tokens.
fn print_commands_by_file(data_dir: &std::path::Path, address: &str) {
    let dir = master::credentials::secrets_dir(data_dir);
    println!(
        "tokens are in {} (readable by this user only); on a terminal, `retire-master token show` prints these commands with them",
        dir.display()
    );
    println!(
        "join a worker: copy {} to the device (keep it private; delete it once the worker has enrolled), then:",
        dir.join("join.token").display()
    );
    println!("  retire-worker --join {address} --token-file join.token");
    println!("use the CLI:");
    println!(
        "  export RETIRE_MASTER={address} RETIRE_TOKEN_FILE={}",
        dir.join("admin.token").display()
    );
}

/// Reads a duration as every duration setting takes it (seconds or `1m30s`);
/// `master::config` checks the ones that must be longer than zero.
fn parse_seconds(text: &str) -> Result<Duration, protocol::text::DurationError> {
    protocol::text::parse_duration(text, Shortest::Zero)
}

fn main() -> ExitCode {
    daemon::logging::init();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let prefix = daemon::logging::stderr_prefix(log::Level::Error);
            eprintln!("{prefix}retire-master: error: {err:#}");
            // A configuration mistake, a refused backup and a read-only
            // data dir have their own statuses (see the README).
            let files = err
                .chain()
                .find_map(|cause| cause.downcast_ref::<master::MasterError>())
                .and_then(master::MasterError::exit_code);
            let code = match err.downcast_ref::<master::store::backup::BackupError>() {
                Some(backup) => backup.exit_code(),
                None => files.unwrap_or_else(|| daemon::settings::exit_code(err.as_ref(), 1)),
            };
            ExitCode::from(code)
        }
    }
}

fn real_main() -> Result<()> {
    let command = Args::command();
    let matches = command.clone().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let given = Given::from_matches(&command, &matches, &["config", "dev", "check"]);
    let file = args.config.as_deref().map(SettingsFile::read).transpose()?;
    let settings = Settings::resolve(&given, file.as_ref(), args.dev)?;
    if let Some(Subcommand::Config) = args.command {
        match &file {
            Some(file) => println!("# config file: {}", file.path().display()),
            None => println!("# no config file (--config PATH or RETIRE_CONFIG)"),
        }
        print!("{}", daemon::settings::render(&settings.lines()));
        settings.config()?;
        return Ok(());
    }
    let listen = settings.listen.value;
    let data_dir = settings.data_dir.value.clone();
    if args.check || matches!(args.command, Some(Subcommand::Check)) {
        // Never creates a database: a missing one is an error here.
        let store = master::store::Store::open_existing(&data_dir, Synchronous::Normal)
            .with_context(|| format!("opening the database in {}", data_dir.display()))?;
        let verdict = store.integrity_check().context("running integrity_check")?;
        if verdict.is_ok() {
            let unreadable = store
                .unreadable_records()
                .context("reading every record back")?;
            if !unreadable.is_empty() {
                for row in &unreadable {
                    println!("unreadable {} record {}: {}", row.table, row.id, row.reason);
                }
                bail!(
                    "{} records in {} cannot be read back: they are (or at the next start will be) \
                     quarantined, and the master serves the rest",
                    unreadable.len(),
                    data_dir.join(master::store::DB_FILE).display()
                );
            }
        }
        return match verdict {
            Ok(()) => {
                println!(
                    "ok: {} passes integrity_check",
                    data_dir.join(master::store::DB_FILE).display()
                );
                Ok(())
            }
            Err(problem) => bail!("the database is damaged: {problem}"),
        };
    }
    if let Some(Subcommand::Backup { file }) = &args.command {
        let copied = master::store::backup::backup(&data_dir, file)?;
        println!(
            "backed up {} to {} ({} pages, {} bytes)",
            data_dir.join(master::store::DB_FILE).display(),
            file.display(),
            copied.pages,
            copied.bytes
        );
        return Ok(());
    }
    if let Some(Subcommand::Token { action }) = args.command {
        let secrets = match action {
            TokenAction::Show => master::credentials::load_or_create(&data_dir),
            TokenAction::RotateJoin => master::credentials::rotate(&data_dir, TokenKind::Join),
            TokenAction::RotateAdmin => master::credentials::rotate(&data_dir, TokenKind::Admin),
        }
        .with_context(|| format!("the tokens in {}", data_dir.display()))?;
        match action {
            TokenAction::Show => {}
            TokenAction::RotateJoin => println!(
                "new join token: workers that already enrolled stay; new ones need this one \
                 (a running master uses it for its next connections). If the old one leaked, \
                 look at `retire devices` for enrollments you do not recognise (ENROLLED, \
                 FROM) and revoke them: `retire devices revoke ID`"
            ),
            TokenAction::RotateAdmin => {
                println!("new admin token: connections already open stay; new ones need this one")
            }
        }
        print_commands(&secrets, &advertised(listen));
        return Ok(());
    }
    let config = settings.config()?;
    // The database and the secrets exist before the master listens, so the
    // commands printed below already work. A first start is a missing
    // database (an empty or unreadable one stops here with an error).
    let opened = master::open(&data_dir, config.synchronous, config.core.auth.required)
        .with_context(|| format!("the data in {}", data_dir.display()))?;
    // `master::run` opens the database again.
    drop(opened.store);
    let (first_start, secrets) = (opened.first_start, opened.secrets);
    let listener = daemon::listen(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;

    // With a file-size limit (RLIMIT_FSIZE) reached, the kernel would kill
    // the master with SIGXFSZ. Handling the signal makes the write fail
    // with EFBIG instead, which the store treats like a full disk: no ack,
    // retry, recover.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .context("installing the SIGXFSZ handler")?;
    let shutdown = Shutdown::new();
    let on_signal = shutdown.clone();
    daemon::watch_signals(move |signal, count| {
        if count == 1 {
            log::info!("signal {signal} received; stopping (send it again to stop at once)");
            on_signal.trigger();
        } else {
            // A second signal means the operator will not wait. Nothing
            // unacknowledged is lost by exiting, and everything
            // acknowledged is already on disk.
            log::warn!("signal {signal} received again; exiting now");
            std::process::exit(130);
        }
    })
    .context("installing signal handlers")?;

    // Tests and scripts read this first line to learn the port when they
    // ask for port 0.
    println!("retire-master listening on {bound}");
    log::info!("data in {}", data_dir.display());
    // Tokens go to a terminal on the first start (and in --dev), never to
    // the log. When standard output is not a terminal (systemd, Docker, a
    // pipe) it may well be a log, so the commands name the files instead.
    let to_terminal = std::io::stdout().is_terminal();
    match &secrets {
        Some(secrets) if (first_start || args.dev) && to_terminal => {
            print_commands(secrets, &advertised(bound));
        }
        Some(_) if first_start || args.dev => {
            print_commands_by_file(&data_dir, &advertised(bound));
        }
        Some(_) => println!(
            "authentication is on: `retire-master token show --data-dir {}` prints the tokens",
            data_dir.display()
        ),
        None => println!("authentication is OFF: only use this on a machine you alone use"),
    }
    // The announcement runs on the mDNS daemon's own thread until the master
    // stops; a failure leaves the master running, reachable by its address.
    let _announcer = announce(bound, settings.no_announce.value);
    let local_worker = if args.dev {
        let stop = worker::StopHandle::new();
        let worker_config = worker::WorkerConfig {
            master: bound.to_string(),
            device_id: Some("local".into()),
            slots: settings.dev_slots.value,
            // The local worker keeps its outbox with the master's data, so
            // `--dev` leaves nothing in the home directory.
            state_dir: Some(data_dir.join("worker-state")),
            token: secrets.as_ref().map(|secrets| secrets.join.clone()),
            ..worker::WorkerConfig::default()
        };
        let handle_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("local-worker".into())
            .spawn(move || {
                if let Err(err) = worker::run(worker_config, handle_stop) {
                    log::error!("local worker: {err}");
                }
            })
            .context("starting the local worker")?;
        println!(
            "dev mode: a local worker runs in this process; data in {}",
            data_dir.display()
        );
        println!("submit work from another terminal:");
        let token = match &secrets {
            Some(secrets) if to_terminal => format!("RETIRE_TOKEN={} ", secrets.admin.reveal()),
            Some(_) => format!(
                "RETIRE_TOKEN=$(cat {}) ",
                master::credentials::secrets_dir(&data_dir)
                    .join("admin.token")
                    .display()
            ),
            None => String::new(),
        };
        println!(
            "  {token}cargo run -p cli -- --master {bound} submit --wait -- echo hello from the cluster"
        );
        println!("  cargo run -p cli -- --master {bound} devices");
        println!(
            "or by hand:  nc {} {}   then type: help",
            bound.ip(),
            bound.port()
        );
        println!("stop with Ctrl-C");
        Some((stop, thread))
    } else {
        None
    };

    let result = master::run(listener, config, shutdown);
    if let Some((stop, thread)) = local_worker {
        stop.stop();
        let _ = thread.join();
    }
    result.context("master stopped with an error")?;
    log::info!("stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` shows clap's defaults while `master::config` picks the
    /// values: the two must agree, key by key.
    #[test]
    fn the_help_shows_the_defaults_the_master_uses() {
        let given = Given::clap_defaults(&Args::command(), &["dev", "check"]);
        let shown = Settings::resolve(&given, None, false).expect("valid defaults");
        let used = Settings::resolve(&Given::new(), None, false).expect("valid defaults");
        for (shown, used) in shown.lines().into_iter().zip(used.lines()) {
            assert_eq!(
                shown.value, used.value,
                "--help shows another default for {}",
                shown.key
            );
        }
    }
}
