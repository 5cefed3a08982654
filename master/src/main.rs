//! `retire-master`: parses flags and environment, sets up logging and
//! signals, binds the listener and calls [`master::run`].

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use master::core::{parse_network, AuthPolicy, CoreConfig, Secrets};
use master::{Config, Shutdown, Synchronous};
use protocol::auth::TokenKind;
use protocol::text::{seconds_to_duration, Shortest};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The Retire-Cluster master: registry, queue and scheduler for your idle devices.
///
/// Every flag can also be set through the environment variable shown; a flag
/// wins over the environment, which wins over the default.
#[derive(Parser, Debug)]
#[command(name = "retire-master", version)]
struct Args {
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
    #[arg(long, env = "RETIRE_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    heartbeat_interval: f64,

    /// Seconds of silence after which a worker is considered gone.
    #[arg(long, env = "RETIRE_HEARTBEAT_TIMEOUT", default_value_t = 15.0)]
    heartbeat_timeout: f64,

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
    #[arg(long, env = "RETIRE_TIMEOUT_GRACE", default_value_t = 10.0)]
    timeout_grace: f64,

    /// Seconds the master holds the tasks of a worker it lost (one that
    /// keeps running them while away) before it requeues them.
    #[arg(long, env = "RETIRE_LEASE_GRACE", default_value_t = 60.0)]
    lease_grace: f64,

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
    #[arg(long, env = "RETIRE_AUTH_DEADLINE", default_value_t = 5.0)]
    auth_deadline: f64,

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
    #[arg(long, env = "RETIRE_DRAIN_TIMEOUT", default_value_t = master::DEFAULT_DRAIN_TIMEOUT.as_secs_f64())]
    drain_timeout: f64,

    /// Seconds an anonymous reader may go without a request and without
    /// taking any of its replies before it is closed. A subscriber with
    /// nothing waiting (a quiet `retire watch`) is never idle.
    #[arg(long, env = "RETIRE_READER_IDLE_TIMEOUT", default_value_t = master::DEFAULT_READER_IDLE_TIMEOUT.as_secs_f64())]
    reader_idle_timeout: f64,

    /// Manage the tokens instead of running the master.
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// What `retire-master` can do besides running.
#[derive(clap::Subcommand, Debug)]
enum Subcommand {
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

/// The authentication settings from the flags; authentication may be off
/// only on a loopback address.
fn auth_policy(args: &Args, listen: SocketAddr) -> Result<AuthPolicy> {
    if args.no_auth && !listen.ip().is_loopback() {
        bail!(
            "--no-auth is refused on {listen}: without authentication anyone who reaches the \
             port runs code on every worker; listen on 127.0.0.1 or keep authentication on"
        );
    }
    let read_only_from = args
        .read_only_from
        .iter()
        .map(|text| text.trim())
        .filter(|text| !text.is_empty() && *text != "none")
        .map(|text| parse_network(text).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()
        .context("--read-only-from")?;
    Ok(AuthPolicy {
        required: !args.no_auth,
        allow_legacy_workers: args.allow_legacy_workers,
        read_only_from,
        deadline: seconds("auth-deadline", args.auth_deadline)?,
        max_unauthenticated: args.max_unauthenticated.max(1),
    })
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

fn seconds(name: &str, value: f64) -> Result<Duration> {
    seconds_to_duration(value, Shortest::AboveZero).map_err(|error| anyhow!("--{name} {error}"))
}

/// Refuses a limit below the smallest the master can work with, naming the
/// flag, rather than raising it behind the user's back.
fn at_least(flag: &str, value: usize, minimum: usize) -> anyhow::Result<usize> {
    if value < minimum {
        bail!("--{flag} must be at least {minimum}, got {value}");
    }
    Ok(value)
}

fn main() {
    daemon::logging::init();
    if let Err(err) = real_main() {
        let prefix = daemon::logging::stderr_prefix(log::Level::Error);
        eprintln!("{prefix}retire-master: error: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    let listen = args.listen.unwrap_or_else(|| {
        if args.dev {
            SocketAddr::from(([127, 0, 0, 1], protocol::DEFAULT_PORT))
        } else {
            SocketAddr::from(([0, 0, 0, 0], protocol::DEFAULT_PORT))
        }
    });
    let data_dir = match (&args.data_dir, args.dev) {
        (Some(dir), _) => dir.clone(),
        (None, true) => PathBuf::from(".retire-dev"),
        (None, false) => PathBuf::from("/var/lib/retire-cluster"),
    };
    if args.check {
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
    let auth = auth_policy(&args, listen)?;
    let synchronous = Synchronous::parse(&args.synchronous).with_context(|| {
        format!(
            "--synchronous must be normal or full, got {:?}",
            args.synchronous
        )
    })?;
    let core = CoreConfig {
        heartbeat_interval: seconds("heartbeat-interval", args.heartbeat_interval)?,
        heartbeat_timeout: seconds("heartbeat-timeout", args.heartbeat_timeout)?,
        default_max_retries: args.default_max_retries,
        timeout_grace: seconds("timeout-grace", args.timeout_grace)?,
        lease_grace: seconds("lease-grace", args.lease_grace)?,
        auth,
        ..CoreConfig::default()
    };
    if core.heartbeat_timeout <= core.heartbeat_interval {
        bail!("--heartbeat-timeout must be longer than --heartbeat-interval");
    }
    let config = Config {
        data_dir: data_dir.clone(),
        core,
        max_line: at_least("max-line", args.max_line, 1024)?,
        max_connections: at_least("max-connections", args.max_connections, 1)?,
        pre_auth_max_line: at_least("pre-auth-max-line", args.pre_auth_max_line, 256)?,
        max_pending_output: at_least("max-pending-output", args.max_pending_output, 64 * 1024)?,
        max_total_output: at_least("max-total-output", args.max_total_output, 1024 * 1024)?,
        synchronous,
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        reader_idle_timeout: seconds("reader-idle-timeout", args.reader_idle_timeout)?,
    };
    // The database and the secrets exist before the master listens, so the
    // commands printed below already work. A first start is a missing
    // database (an empty or unreadable one stops here with an error).
    let opened = master::open(&data_dir, synchronous, config.core.auth.required)
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
    let local_worker = if args.dev {
        let stop = worker::StopHandle::new();
        let worker_config = worker::WorkerConfig {
            master: bound.to_string(),
            device_id: Some("local".into()),
            slots: args.dev_slots,
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
